//! How a paid fetch fails: [`FetchError`], with [`SessionError`] for what
//! went wrong on an MPP session.

use gate402_lightning::{LightningError, PayError};

use crate::ledger::BeginError;
use crate::{LedgerError, OfferError, Refusal};

/// Why a fetch failed.
///
/// A variant that prints what it wraps does not also give it as its
/// source: an error chain (`{:#}`) would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request could not be sent.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// A middleware further down the stack failed.
    #[error("{0}")]
    Middleware(Box<dyn std::error::Error + Send + Sync>),
    /// The 402 cannot be read.
    #[error("unusable 402: {0}")]
    Offer(OfferError),
    /// The offer breaks the policy; nothing was paid.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Paying failed; nothing was paid.
    #[error("payment failed: {0}")]
    Pay(PayError),
    /// A payment was sent and its outcome is not known yet; it stays
    /// pending in the ledger and the next request for this endpoint
    /// finishes it instead of paying again.
    #[error("payment {0} is still in flight; it is recorded as pending and the next request to this endpoint will finish it instead of paying again")]
    InFlight(String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An MPP session could not be used as the draft has it.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The request cannot be repeated after a 402 (a streaming body).
    #[error("the request body cannot be sent twice")]
    NotRepeatable,
    /// The HTTP stack followed a redirect to the URL that asked for
    /// payment, and which method the redirect left the request with is
    /// not known, so it cannot be repeated there.
    #[error("{to} asked for payment after a redirect from {from}, which a {method} request may not survive unchanged; let the payer follow redirects (Client::fetch_following) to pay it")]
    RedirectedRequest {
        /// The URL requested.
        from: String,
        /// The URL that answered 402.
        to: String,
        /// The request's method.
        method: String,
    },
    /// More redirects than allowed.
    #[error("stopped after {0} redirects")]
    TooManyRedirects(usize),
}

impl From<OfferError> for FetchError {
    fn from(e: OfferError) -> Self {
        FetchError::Offer(e)
    }
}

impl From<PayError> for FetchError {
    fn from(e: PayError) -> Self {
        FetchError::Pay(e)
    }
}

impl From<BeginError> for FetchError {
    fn from(e: BeginError) -> Self {
        match e {
            BeginError::Refused(r) => FetchError::Refused(r),
            BeginError::Ledger(l) => FetchError::Ledger(l),
        }
    }
}

/// Why a session could not be used as the draft has it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The server refused a session action. `paid` names a payment made
    /// for it (a deposit or top-up, by payment hash) that it did not take.
    #[error("the server refused the session's {action}: {problem}{}", paid_note(.paid))]
    Refused {
        /// `open`, `topUp`, `close`.
        action: &'static str,
        /// The problem type and detail it answered.
        problem: String,
        /// The payment hash of what was paid for it, if anything was.
        paid: Option<String>,
    },
    /// The server answered an action with something the draft does not
    /// have it answer.
    #[error("unexpected answer to the session's {action}: HTTP {status}")]
    Unexpected {
        /// `topUp`, `close`.
        action: &'static str,
        /// The status received.
        status: u16,
    },
    /// The balance ran out and the 402 offers no session challenge to top
    /// it up with.
    #[error("the session's balance ran out and the server offers no session challenge to top it up with")]
    NoTopUp,
    /// The answer to `action` is not the JSON document it must be (or
    /// did not come within [`crate::body::BODY_LIMIT`] bytes and
    /// [`crate::body::BODY_WITHIN`]).
    #[error("the server's answer to the session's {action} is not a JSON document (read: at most 64 KiB, within 30 s)")]
    Unreadable {
        /// `close`.
        action: &'static str,
    },
    /// A `close` of a session the server never opened (its `open` got an
    /// error or no answer, and the server knows no such session): there
    /// is nothing to close and nothing refunded; its deposit is still good,
    /// and the next request to its route sends `open` with it.
    #[error("the server never opened session {session} (its open got no answer it took): its deposit is still good and is kept; the next request to {route} opens the session with it")]
    NotOpened {
        /// The session's id (its deposit's payment hash), hex.
        session: String,
        /// Where it is opened.
        route: String,
    },
    /// The wallet could not issue the return invoice.
    #[error("return invoice: {0}")]
    Wallet(LightningError),
}

fn paid_note(paid: &Option<String>) -> String {
    paid.as_ref().map_or_else(String::new, |hash| {
        format!(" (payment {hash} was made for it and is recorded in the ledger)")
    })
}
