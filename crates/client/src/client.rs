//! The auto-paying HTTP client.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gate402_l402::caveat::{Caveat, VALID_UNTIL_SUFFIX};
use gate402_lightning::PayError;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;

use crate::{
    CachedToken, Ledger, LedgerError, Offer, OfferError, PaymentEntry, Policy, Refusal, Wallet,
};

/// Which scheme to answer with when both are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// `Authorization: L402 …` (reusable token).
    L402,
    /// `Authorization: Payment …` (single use).
    Mpp,
}

/// What a fetch produced.
// One per request and moved once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Fetched {
    /// The final response, and the ledger entry if this request paid.
    Response(reqwest::Response, Option<PaymentEntry>),
    /// `--no-pay`: the offer, unpaid.
    Offer(Box<Offer>),
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request could not be sent.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The 402 cannot be read.
    #[error("unusable 402: {0}")]
    Offer(#[from] OfferError),
    /// The offer breaks the policy; nothing was paid.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Paying failed.
    #[error("payment failed: {0}")]
    Pay(#[from] PayError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The request cannot be repeated after a 402 (a streaming body).
    #[error("the request body cannot be sent twice")]
    NotRepeatable,
}

/// The client: a wallet, a policy, a ledger.
pub struct Client {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// What pays.
    pub wallet: Wallet,
    /// What may be paid.
    pub policy: Policy,
    /// Payments, receipts, tokens.
    pub ledger: Arc<Ledger>,
    /// Scheme preference (default: the first offered).
    pub prefer: Option<Prefer>,
    /// When false, a 402 is returned as an offer instead of paid.
    pub pay: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn origin(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

impl Client {
    /// Sends `request`; pays a 402 within the policy and retries.
    pub async fn fetch(&self, request: reqwest::Request) -> Result<Fetched, FetchError> {
        let origin = origin(request.url());
        let path = request.url().path().to_owned();
        let url = request.url().to_string();
        let mut response = None;
        if let Some(token) = self.ledger.token_for(&origin, &path, now())? {
            let mut attempt = request.try_clone().ok_or(FetchError::NotRepeatable)?;
            if let Ok(value) = HeaderValue::from_str(&token.authorization) {
                attempt.headers_mut().insert(AUTHORIZATION, value);
            }
            let answer = self.http.execute(attempt).await?;
            if !matches!(
                answer.status(),
                StatusCode::PAYMENT_REQUIRED | StatusCode::UNAUTHORIZED
            ) {
                return Ok(Fetched::Response(answer, None));
            }
            // Expired or revoked: forget it and pay for a new one.
            self.ledger.remove_tokens(&token.payment_hash)?;
            if answer.status() == StatusCode::PAYMENT_REQUIRED {
                response = Some(answer);
            }
        }
        let response = match response {
            Some(answer) => answer,
            None => {
                let attempt = request.try_clone().ok_or(FetchError::NotRepeatable)?;
                self.http.execute(attempt).await?
            }
        };
        if response.status() != StatusCode::PAYMENT_REQUIRED {
            return Ok(Fetched::Response(response, None));
        }
        let offer = Offer::from_headers(response.headers())?;
        if !self.pay {
            return Ok(Fetched::Offer(Box::new(offer)));
        }
        self.policy.check(&offer, SystemTime::now())?;
        let scheme = match (self.prefer, &offer.l402, &offer.payment) {
            (Some(Prefer::Mpp), _, Some(_)) | (None, None, Some(_)) => Prefer::Mpp,
            (None, Some(_), Some(_)) if !offer.l402_first => Prefer::Mpp,
            _ => Prefer::L402,
        };
        let outcome = self
            .wallet
            .pay(
                &self.http,
                &origin,
                &offer.bolt11,
                self.policy.max_fee_sats * 1000,
            )
            .await?;
        let mut entry = PaymentEntry {
            id: 0,
            url,
            origin: origin.clone(),
            scheme: match scheme {
                Prefer::L402 => "L402".into(),
                Prefer::Mpp => "Payment".into(),
            },
            amount_msat: outcome.amount_msat,
            fee_msat: outcome.fee_msat,
            payment_hash: hex::encode(offer.invoice.payment_hash()),
            receipt: None,
            created_at: now(),
        };
        // Recorded before the retry: whatever happens next, the payment is known.
        entry.id = self.ledger.record_payment(&entry)?;
        let authorization = match scheme {
            Prefer::L402 => offer.l402_authorization(&outcome.preimage),
            Prefer::Mpp => offer.payment_authorization(&outcome.preimage),
        }
        .unwrap_or_default();
        let mut retry = request.try_clone().ok_or(FetchError::NotRepeatable)?;
        if let Ok(value) = HeaderValue::from_str(&authorization) {
            retry.headers_mut().insert(AUTHORIZATION, value);
        }
        let answer = self.http.execute(retry).await?;
        if let Some(receipt) = answer
            .headers()
            .get(gate402_mpp::RECEIPT_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            self.ledger
                .attach_receipt(entry.id, &entry.scheme, receipt)?;
            entry.receipt = Some(receipt.to_owned());
        }
        if scheme == Prefer::L402 && answer.status().is_success() {
            let expires_at = offer.l402.as_ref().and_then(|c| {
                c.macaroon
                    .first_party_caveats()
                    .filter_map(Caveat::parse)
                    .filter(|c| c.condition.ends_with(VALID_UNTIL_SUFFIX))
                    .filter_map(|c| c.value.parse::<u64>().ok())
                    .min()
            });
            let token = CachedToken {
                origin,
                path,
                payment_hash: entry.payment_hash.clone(),
                authorization,
                expires_at,
            };
            self.ledger.cache_token(&token, now())?;
        }
        Ok(Fetched::Response(answer, Some(entry)))
    }
}
