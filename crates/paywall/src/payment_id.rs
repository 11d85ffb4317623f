//! `paymentId`: a bearer credential for one payment, for clients that
//! speak neither L402 nor MPP (MCP's `create_payment` flow).
//!
//! The payment hash alone cannot be the credential: it is printed in the
//! invoice and seen by every node that routes the payment, so whoever saw
//! the invoice could spend what someone else paid for. The id is the hash
//! followed by a MAC of it under a key derived from the gateway's secret:
//! only the caller `create_payment` answered can present it, and every
//! replica sharing the secret can check it without the store.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Bytes of MAC after the hash (the id is 48 bytes, 96 hex digits).
const MAC_BYTES: usize = 16;
const LABEL: &[u8] = b"gate402 paymentId";

/// Why a `paymentId` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PaymentIdError {
    /// Not 96 hex digits.
    #[error("a paymentId is the 96 hex digits create_payment returned")]
    Malformed,
    /// The MAC does not verify under any of the gateway's secrets.
    #[error("this paymentId was not issued by this gateway")]
    Forged,
}

/// Issues and checks `paymentId`s.
#[derive(Clone)]
pub struct PaymentIds {
    /// The current key first, then those of previous secrets.
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for PaymentIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PaymentIds({} keys)", self.keys.len())
    }
}

fn mac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

impl PaymentIds {
    /// Ids under `secret` (the gateway's).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            keys: vec![mac(secret, LABEL)],
        }
    }

    /// Also accepts ids made under a previous secret.
    pub fn with_previous(mut self, secret: &[u8]) -> Self {
        self.keys.push(mac(secret, LABEL));
        self
    }

    /// The id of the payment with this hash (lower-case hex).
    pub fn issue(&self, payment_hash: &[u8; 32]) -> String {
        let tag = mac(&self.keys[0], payment_hash);
        let mut id = hex::encode(payment_hash);
        id.push_str(&hex::encode(&tag[..MAC_BYTES]));
        id
    }

    /// The payment hash an id names, once its MAC verifies (hex in either
    /// case; the hash, not the spelling, is what is spent).
    ///
    /// # Errors
    ///
    /// [`PaymentIdError`].
    pub fn verify(&self, id: &str) -> Result<[u8; 32], PaymentIdError> {
        let mut bytes = [0u8; 32 + MAC_BYTES];
        hex::decode_to_slice(id, &mut bytes).map_err(|_| PaymentIdError::Malformed)?;
        let (hash, tag) = bytes.split_at(32);
        let hash: [u8; 32] = hash.try_into().map_err(|_| PaymentIdError::Malformed)?;
        let known = self
            .keys
            .iter()
            .any(|key| bool::from(mac(key, &hash)[..MAC_BYTES].ct_eq(tag)));
        if known {
            Ok(hash)
        } else {
            Err(PaymentIdError::Forged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_issued_ids_verify() {
        let ids = PaymentIds::new(b"a secret of at least thirty-two bytes");
        let hash = [7u8; 32];
        let id = ids.issue(&hash);
        assert_eq!(id.len(), 96);
        assert_eq!(ids.verify(&id), Ok(hash));
        assert_eq!(ids.verify(&id.to_ascii_uppercase()), Ok(hash));
        // The bare hash, as anyone who saw the invoice knows it.
        assert_eq!(
            ids.verify(&hex::encode(hash)),
            Err(PaymentIdError::Malformed)
        );
        let mut forged = id.clone();
        forged.replace_range(95.., "0");
        if forged == id {
            forged.replace_range(95.., "1");
        }
        assert_eq!(ids.verify(&forged), Err(PaymentIdError::Forged));
        // Another gateway's id, and a rotation.
        let other = PaymentIds::new(b"another secret, thirty-two bytes long");
        assert_eq!(other.verify(&id), Err(PaymentIdError::Forged));
        let rotated = other.with_previous(b"a secret of at least thirty-two bytes");
        assert_eq!(rotated.verify(&id), Ok(hash));
    }
}
