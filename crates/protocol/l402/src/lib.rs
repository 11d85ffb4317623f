//! L402: the Lightning HTTP 402 protocol of Lightning Labs (formerly LSAT).
//!
//! A server answers an unpaid request with a macaroon whose identifier
//! commits to a Lightning payment hash, plus the invoice for that hash. The
//! client pays, learns the preimage, and presents `macaroon:preimage`. This
//! crate holds every piece of that with no I/O: the macaroon codec and HMAC
//! chain ([`Macaroon`]), the 66-byte [`Identifier`], the caveat language and
//! its satisfiers ([`caveat`]), challenge formatting and parsing
//! ([`L402Challenge`]), authorization parsing ([`L402Credential`]) and
//! verification ([`verify`]).
//!
//! Where the written specs and the deployed peers (go-macaroon, LND,
//! Aperture, lnget) disagree, this crate follows the peers.

pub mod caveat;
mod challenge;
mod credential;
mod identifier;
mod macaroon;
mod mint;
mod verify;

pub use caveat::{Caveat, RequestContext, Satisfier, Service};
pub use challenge::{challenges_in, ChallengeError, L402Challenge, Scheme};
pub use credential::{CredentialError, L402Credential};
pub use identifier::{Identifier, IdentifierError, TokenId};
pub use macaroon::{
    decode_base64, FirstPartyCaveats, Macaroon, MacaroonCaveat, MacaroonError, MacaroonFormat,
};
pub use mint::{mint, Minted, RootKey, RootKeySecrets};
pub use verify::{verify, VerifyError};

/// A Lightning payment preimage (32 bytes).
pub type Preimage = [u8; 32];

/// A Lightning payment hash, `sha256(preimage)`.
pub type PaymentHash = [u8; 32];

/// The location Aperture writes into its macaroons, kept for compatibility.
pub const DEFAULT_LOCATION: &str = "lsat";
