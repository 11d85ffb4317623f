//! The paying side of a 402.
//!
//! [`Offer::from_challenges`] reads every `WWW-Authenticate` value of a
//! 402, keeps the first usable L402 challenge and the first Lightning
//! `Payment` charge, decodes the invoice itself and checks that the
//! challenges agree with it (the invoice is authoritative). After paying,
//! [`Offer::l402_authorization`] and [`Offer::payment_authorization`] give
//! the `Authorization` value to retry with.
//!
//! On top of that, [`Client`] is the auto-paying HTTP client of
//! `gate402 get`: it checks an offer against the [`Policy`] before paying
//! (amount, cap, network, expiry, [`Budget`]), pays with a [`Wallet`],
//! retries, keeps paid L402 tokens per origin and path for reuse and
//! records every payment and receipt in the [`Ledger`]. The same flow runs
//! inside a `reqwest-middleware` stack as [`PaymentMiddleware`], and for
//! paid MCP tools as [`Payer::call_tool`].
//!
//! Around the payment itself: it is written to the ledger as pending
//! before it is sent; requests for one endpoint pay one at a time (a file
//! lock next to the ledger, so across processes too); a payment whose
//! outcome is not known is resolved through the wallet, never sent again.

mod budget;
mod client;
mod ledger;
mod mcp;
mod middleware;
mod policy;
mod wallet;

pub use budget::{Budget, Limits, Window};
pub use client::{Client, FetchError, Fetched, Payer, Prefer};
pub use ledger::{
    BeginError, CachedToken, EndpointLock, Ledger, LedgerError, PaymentEntry, PaymentState,
    PendingPayment,
};
pub use mcp::{McpCallError, ToolCall};
pub use middleware::PaymentMiddleware;
pub use policy::{Policy, Refusal};
pub use wallet::{Wallet, PAY_TIMEOUT};

use gate402_bolt11::Invoice;
use gate402_http_auth::parse_challenges;
use gate402_l402::{challenges_in, Identifier, L402Challenge, L402Credential, Scheme};
use gate402_mpp::lightning::{ChargeRequest, PreimagePayload, CHARGE, METHOD};
use gate402_mpp::{PaymentChallenge, PaymentCredential};

/// What a 402 offers: one invoice, and the schemes that accept its preimage.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The L402 challenge, if offered.
    pub l402: Option<L402Challenge>,
    /// The MPP Lightning charge challenge, if offered.
    pub payment: Option<PaymentChallenge>,
    /// The invoice, decoded and checked.
    pub invoice: Invoice,
    /// The invoice as sent.
    pub bolt11: String,
    /// Whether the L402 challenge came before the Payment one.
    pub l402_first: bool,
    /// The `WWW-Authenticate` values it was read from (kept with a pending
    /// payment, to answer them once it completes).
    pub challenges: Vec<String>,
}

/// Why a 402 cannot be paid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The header does not parse.
    #[error("malformed WWW-Authenticate: {0}")]
    Header(#[from] gate402_http_auth::Error),
    /// Neither a usable L402 nor a Lightning Payment challenge.
    #[error("no L402 or Lightning Payment challenge offered")]
    NothingPayable,
    /// The invoice does not decode.
    #[error("invoice: {0}")]
    Invoice(String),
    /// A challenge disagrees with the invoice.
    #[error("challenge disagrees with its invoice: {0}")]
    Mismatch(String),
}

impl Offer {
    /// Reads an offer from the `WWW-Authenticate` values of a 402.
    pub fn from_challenges<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, OfferError> {
        let mut list = Vec::new();
        let mut challenges = Vec::new();
        for value in values {
            list.extend(parse_challenges(value)?);
            challenges.push(value.to_owned());
        }
        let l402 = challenges_in(&list).find_map(Result::ok).map(|(_, c)| c);
        let l402_first = list
            .iter()
            .find(|c| Scheme::from_name(&c.scheme).is_some() || c.is_scheme(gate402_mpp::SCHEME))
            .is_some_and(|c| Scheme::from_name(&c.scheme).is_some());
        let payment = gate402_mpp::challenge::parse_payment_challenges(
            &list
                .iter()
                .filter_map(|c| c.to_header().ok())
                .collect::<Vec<_>>()
                .join(", "),
        )
        .ok()
        .and_then(|found| {
            found
                .into_iter()
                .find(|c| c.method.as_str() == METHOD && c.intent.as_str() == CHARGE)
        });
        let charge = payment
            .as_ref()
            .and_then(|p| gate402_mpp::challenge::decode_request(p).ok())
            .and_then(|v| serde_json::from_value::<ChargeRequest>(v).ok());
        let bolt11 = match (&l402, &charge) {
            (Some(l402), _) => l402.invoice.clone(),
            (None, Some(charge)) => charge.method_details.invoice.clone(),
            (None, None) => return Err(OfferError::NothingPayable),
        };
        let invoice = Invoice::parse(&bolt11).map_err(|e| OfferError::Invoice(e.to_string()))?;
        if let Some(l402) = &l402 {
            let id = Identifier::from_bytes(l402.macaroon.identifier())
                .map_err(|e| OfferError::Mismatch(format!("L402 macaroon: {e}")))?;
            if id.payment_hash != invoice.payment_hash() {
                return Err(OfferError::Mismatch(
                    "the L402 macaroon is for another payment hash".into(),
                ));
            }
        }
        if let Some(charge) = &charge {
            let backed = charge
                .check_invoice()
                .map_err(|e| OfferError::Mismatch(e.to_string()))?;
            if backed.payment_hash() != invoice.payment_hash() {
                return Err(OfferError::Mismatch(
                    "the Payment challenge is for another invoice".into(),
                ));
            }
        }
        Ok(Self {
            l402,
            payment: payment.filter(|_| charge.is_some()),
            invoice,
            bolt11,
            l402_first,
            challenges,
        })
    }

    /// Reads an offer from a 402's headers (every `WWW-Authenticate` line).
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Result<Self, OfferError> {
        Self::from_challenges(
            headers
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )
    }

    /// The price in millisatoshis (every offer here has one).
    pub fn amount_msat(&self) -> Option<u64> {
        self.invoice.amount_msat()
    }

    /// `L402 <macaroon>:<preimage>`, if L402 was offered.
    pub fn l402_authorization(&self, preimage: &[u8; 32]) -> Option<String> {
        let l402 = self.l402.as_ref()?;
        Some(
            L402Credential {
                scheme: Scheme::L402,
                macaroons: vec![l402.macaroon.clone()],
                preimage: *preimage,
            }
            .to_authorization(),
        )
    }

    /// `Payment <credential>`, if MPP was offered.
    pub fn payment_authorization(&self, preimage: &[u8; 32]) -> Option<String> {
        let challenge = self.payment.as_ref()?;
        let credential =
            PaymentCredential::new(challenge.to_echo(), PreimagePayload::new(preimage));
        Some(gate402_mpp::credential::to_authorization(&credential))
    }
}
