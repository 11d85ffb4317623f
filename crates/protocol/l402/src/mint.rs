//! Minting new tokens.

use crate::caveat::Caveat;
use crate::macaroon::hmac;
use crate::{Identifier, Macaroon, PaymentHash, TokenId};

/// The secret a token's signature chain starts from: either random and kept
/// by the server under the token id (deleting it revokes the token), or
/// derived from a server secret and the token id ([`RootKeySecrets`]), so
/// that issuing a token stores nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RootKey(pub [u8; 32]);

impl RootKey {
    /// A fresh key from the operating system's randomness.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(..)")
    }
}

/// A freshly minted token and what the server must keep of it.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The macaroon to send in the challenge.
    pub macaroon: Macaroon,
    /// Its identifier (the token id is the root key's storage key).
    pub identifier: Identifier,
    /// Its root key, to store under `identifier.token_id`.
    pub root_key: RootKey,
}

/// Mints a token for `payment_hash` with a random token id and root key.
pub fn mint(payment_hash: PaymentHash, location: &str, caveats: &[Caveat]) -> Minted {
    mint_with(
        RootKey::random(),
        rand::random(),
        payment_hash,
        location,
        caveats,
    )
}

/// Mints with a given root key and token id (deterministic, for tests and
/// for servers that derive keys themselves).
pub fn mint_with(
    root_key: RootKey,
    token_id: TokenId,
    payment_hash: PaymentHash,
    location: &str,
    caveats: &[Caveat],
) -> Minted {
    let identifier = Identifier::new(payment_hash, token_id);
    let mut macaroon = Macaroon::new(&root_key.0, identifier.to_bytes().to_vec(), location);
    for caveat in caveats {
        macaroon.add_first_party_caveat(caveat.to_string());
    }
    Minted {
        macaroon,
        identifier,
        root_key,
    }
}

/// Server secrets that derive root keys from token ids: the current one
/// mints, it and the previous ones verify, so a rotation does not void
/// tokens in flight. A 402 then costs no storage, and replicas sharing the
/// secret honour each other's tokens without a shared table.
#[derive(Clone)]
pub struct RootKeySecrets {
    secrets: Vec<[u8; 32]>,
}

impl std::fmt::Debug for RootKeySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootKeySecrets({} secrets)", self.secrets.len())
    }
}

/// Keeps derived root keys apart from anything else the same server secret
/// signs (MPP challenge ids use it too).
const DERIVATION_LABEL: &[u8] = b"gate402 L402 root key secret v1";

impl RootKeySecrets {
    /// Derives from the server's current secret.
    pub fn new(current: &[u8]) -> Self {
        Self {
            secrets: vec![hmac(current, DERIVATION_LABEL)],
        }
    }

    /// Adds a previous server secret that still verifies but no longer mints.
    pub fn with_previous(mut self, previous: &[u8]) -> Self {
        self.secrets.push(hmac(previous, DERIVATION_LABEL));
        self
    }

    /// Mints a token for `payment_hash` with a random token id and the root
    /// key the current secret derives for it: nothing to store.
    pub fn mint(&self, payment_hash: PaymentHash, location: &str, caveats: &[Caveat]) -> Minted {
        let token_id: TokenId = rand::random();
        mint_with(
            self.derive(0, &token_id),
            token_id,
            payment_hash,
            location,
            caveats,
        )
    }

    /// The root keys `token_id` may have been minted with, current secret first.
    pub fn candidates<'a>(&'a self, token_id: &'a TokenId) -> impl Iterator<Item = RootKey> + 'a {
        (0..self.secrets.len()).map(|i| self.derive(i, token_id))
    }

    fn derive(&self, secret: usize, token_id: &TokenId) -> RootKey {
        RootKey(hmac(&self.secrets[secret], token_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_depend_on_the_secret_and_the_token_id() {
        let a = RootKeySecrets::new(b"first secret");
        let minted = a.mint([1; 32], "lsat", &[]);
        let id = minted.identifier.token_id;
        assert_eq!(a.candidates(&id).next(), Some(minted.root_key.clone()));
        // Another token id, or another secret, gives another key.
        assert_ne!(a.candidates(&[0; 32]).next(), Some(minted.root_key.clone()));
        let b = RootKeySecrets::new(b"second secret");
        assert_ne!(b.candidates(&id).next(), Some(minted.root_key.clone()));
        // After a rotation the old secret still verifies, second in line.
        let rotated = b.with_previous(b"first secret");
        let keys: Vec<RootKey> = rotated.candidates(&id).collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1], minted.root_key);
        assert!(minted.macaroon.verify_signature(&keys[1].0));
        assert!(!minted.macaroon.verify_signature(&keys[0].0));
    }
}
