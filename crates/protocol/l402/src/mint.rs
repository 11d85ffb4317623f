//! Minting new tokens.

use crate::caveat::Caveat;
use crate::{Identifier, Macaroon, PaymentHash, TokenId};

/// The secret a token's signature chain starts from: random, one per token,
/// kept by the server under the token id. Deleting it revokes the token.
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
