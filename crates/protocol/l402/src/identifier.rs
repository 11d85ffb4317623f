//! The 66-byte L402 macaroon identifier.

use crate::PaymentHash;

/// Random id of one L402 token; the key under which its root key is kept.
pub type TokenId = [u8; 32];

/// `version (u16, big-endian) | payment hash (32) | token id (32)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identifier {
    /// Always 0: the only version deployed.
    pub version: u16,
    /// The hash of the invoice that pays for this token.
    pub payment_hash: PaymentHash,
    /// Random, unique per token.
    pub token_id: TokenId,
}

/// Why identifier bytes are not an L402 identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// Shorter than the two version bytes.
    #[error("identifier has {0} bytes, too short for a version")]
    TooShort(usize),
    /// A version this implementation does not know.
    #[error("unknown identifier version {0}")]
    UnknownVersion(u16),
    /// Version 0 with the wrong length.
    #[error("identifier has {0} bytes, expected 66")]
    Length(usize),
}

impl Identifier {
    /// The encoded length of a version 0 identifier.
    pub const LEN: usize = 66;

    /// A version 0 identifier.
    pub fn new(payment_hash: PaymentHash, token_id: TokenId) -> Self {
        Self {
            version: 0,
            payment_hash,
            token_id,
        }
    }

    /// The 66-byte encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..2].copy_from_slice(&self.version.to_be_bytes());
        out[2..34].copy_from_slice(&self.payment_hash);
        out[34..].copy_from_slice(&self.token_id);
        out
    }

    /// Decodes and checks version and length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentifierError> {
        let [hi, lo, rest @ ..] = bytes else {
            return Err(IdentifierError::TooShort(bytes.len()));
        };
        let version = u16::from_be_bytes([*hi, *lo]);
        if version != 0 {
            return Err(IdentifierError::UnknownVersion(version));
        }
        if rest.len() != 64 {
            return Err(IdentifierError::Length(bytes.len()));
        }
        let mut payment_hash = [0u8; 32];
        let mut token_id = [0u8; 32];
        payment_hash.copy_from_slice(&rest[..32]);
        token_id.copy_from_slice(&rest[32..]);
        Ok(Self {
            version,
            payment_hash,
            token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        let id = Identifier::new([0xaa; 32], [0xbb; 32]);
        let bytes = id.to_bytes();
        assert_eq!(&bytes[..2], &[0, 0]);
        assert_eq!(&bytes[2..34], &[0xaa; 32]);
        assert_eq!(&bytes[34..], &[0xbb; 32]);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Identifier::from_bytes(&[0]),
            Err(IdentifierError::TooShort(1))
        );
        assert_eq!(
            Identifier::from_bytes(&[0, 1]),
            Err(IdentifierError::UnknownVersion(1))
        );
        assert_eq!(
            Identifier::from_bytes(&[0; 65]),
            Err(IdentifierError::Length(65))
        );
        assert_eq!(
            Identifier::from_bytes(&[0; 67]),
            Err(IdentifierError::Length(67))
        );
    }

    proptest! {
        #[test]
        fn round_trips(hash in any::<[u8; 32]>(), token in any::<[u8; 32]>()) {
            let id = Identifier::new(hash, token);
            prop_assert_eq!(Identifier::from_bytes(&id.to_bytes()).unwrap(), id);
        }
    }
}
