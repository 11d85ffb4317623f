//! RFC 9110 authentication headers, for every scheme at once.
//!
//! A `402` from gate402 carries an `L402` and a `Payment` challenge, either
//! as separate `WWW-Authenticate` lines or comma-joined in one (the Fetch
//! standard joins repeated lines that way). This crate turns such a value
//! into a list of [`Challenge`]s without knowing what any scheme means, and
//! formats challenges back. Scheme-specific validation (is `request` JSON?
//! is the macaroon base64?) happens a layer up, in `gate402-l402` and
//! `gate402-mpp`, so that one malformed offer never hides the others.
//!
//! The `mpp` crate has a tokenizer of its own, but it validates the `Payment`
//! parameters while it tokenizes and does not read other schemes, so a line
//! carrying `L402` and `Payment` side by side needs this one.
//!
//! No I/O happens here.

mod challenge;
mod credentials;

pub use challenge::{format_challenge, parse_challenges, Challenge, ChallengeParams};
pub use credentials::{parse_credentials, Credentials};

/// Why a header value could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The value is empty or only whitespace.
    #[error("empty header value")]
    Empty,
    /// A quoted string has no closing quote.
    #[error("unterminated quoted string at byte {0}")]
    UnterminatedQuote(usize),
    /// A character that has no place at that position.
    #[error("unexpected character {found:?} at byte {at}")]
    Unexpected {
        /// Byte offset of the character.
        at: usize,
        /// The character found there.
        found: char,
    },
    /// An auth-param appeared before any scheme name.
    #[error("parameter {0:?} appears before any scheme name")]
    ParamWithoutScheme(String),
    /// An auth-param after a `token68`, which takes none.
    #[error("parameter {0:?} follows a token68 challenge")]
    ParamAfterToken68(String),
    /// A parameter has a name but no value.
    #[error("parameter {0:?} has no value")]
    MissingValue(String),
    /// A scheme or parameter name is not an RFC 9110 token.
    #[error("{0:?} is not a valid token")]
    InvalidToken(String),
    /// A value holds a control character, which no header can carry.
    #[error("value of {0:?} contains a control character")]
    ControlCharacter(String),
}

/// `tchar` from RFC 9110 §5.6.2.
pub(crate) fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Characters of `token68` (RFC 9110 §11.2), not counting the trailing `=`.
pub(crate) fn is_token68_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/".contains(c)
}

/// Whether `s` is a non-empty RFC 9110 token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_tchar)
}
