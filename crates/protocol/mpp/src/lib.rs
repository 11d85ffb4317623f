//! The `Payment` HTTP authentication scheme (MPP) and its Lightning method.
//!
//! The wire types come from the official `mpp` crate ([`PaymentChallenge`],
//! [`ChallengeEcho`], [`PaymentCredential`], [`Receipt`], the challenge-id
//! HMAC, `Accept-Payment` ranking, problem details), with default features
//! off. What it does not cover, or covers in a way that does not fit, is
//! ours, each with the reason at its definition:
//!
//! - [`base64url`]: a strict decoder (one spelling per payload);
//! - [`challenge::parse_payment_challenges`]: tokenizing alongside `L402`
//!   and validating `request` only after splitting;
//! - [`lightning`]: the Lightning charge method (request, payload, receipt);
//! - [`verify`]: the server-side checks of a Lightning charge credential,
//!   bound to the service or tool it was issued for.
//!
//! No I/O happens here; consuming a credential exactly once is the store's
//! job, a layer up.

pub mod accept;
pub mod base64url;
pub mod challenge;
pub mod credential;
pub mod jcs;
pub mod lightning;
pub mod problem;
pub mod receipt;
pub mod session;
pub mod verify;

pub use mpp::error::PaymentErrorDetails;
pub use mpp::protocol::core::{ChallengeEcho, PaymentChallenge, PaymentCredential, Receipt};

/// The MCP payment transport's wire helpers (`-32042` errors with the
/// challenge `request` as a JSON object, credentials and receipts in
/// `_meta`), as the official `mpp` crate implements them.
pub use mpp::mcp;

/// The auth-scheme name.
pub const SCHEME: &str = "Payment";
/// The response header that carries the receipt.
pub const RECEIPT_HEADER: &str = "Payment-Receipt";
/// The request header with which a client states the methods it speaks.
pub const ACCEPT_PAYMENT_HEADER: &str = "Accept-Payment";

/// Formats a time the way challenges and receipts carry it: RFC 3339, UTC,
/// whole seconds (`2026-03-15T12:05:00Z`).
pub fn format_time(at: time::OffsetDateTime) -> String {
    let at = at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}
