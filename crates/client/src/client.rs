//! The auto-paying HTTP client: [`Payer`] holds the flow, [`Client`] runs
//! it over a plain `reqwest::Client`, [`crate::PaymentMiddleware`] inside
//! a `reqwest-middleware` stack.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gate402_l402::caveat::{Caveat, VALID_UNTIL_SUFFIX};
use gate402_lightning::{PayError, PaymentOutcome, PaymentStatus};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Request, Response, StatusCode};

use crate::ledger::{BeginError, PaymentState, PendingPayment};
use crate::wallet::may_be_in_flight;
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

impl Prefer {
    /// The scheme's name as the ledger keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Prefer::L402 => "L402",
            Prefer::Mpp => "Payment",
        }
    }
}

/// What a fetch produced.
// One per request and moved once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Fetched {
    /// The final response, and the ledger entry if this request paid.
    Response(Response, Option<PaymentEntry>),
    /// `--no-pay`: the offer, unpaid.
    Offer(Box<Offer>),
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request could not be sent.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// A middleware further down the stack failed.
    #[error("{0}")]
    Middleware(Box<dyn std::error::Error + Send + Sync>),
    /// The 402 cannot be read.
    #[error("unusable 402: {0}")]
    Offer(#[from] OfferError),
    /// The offer breaks the policy; nothing was paid.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Paying failed; nothing was paid.
    #[error("payment failed: {0}")]
    Pay(#[from] PayError),
    /// A payment was sent and its outcome is not known yet; it stays
    /// pending in the ledger and the next request for this endpoint
    /// finishes it instead of paying again.
    #[error("payment {0} is still in flight; it is recorded as pending and the next request to this endpoint will finish it instead of paying again")]
    InFlight(String),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The request cannot be repeated after a 402 (a streaming body).
    #[error("the request body cannot be sent twice")]
    NotRepeatable,
}

impl From<BeginError> for FetchError {
    fn from(e: BeginError) -> Self {
        match e {
            BeginError::Refused(r) => FetchError::Refused(r),
            BeginError::Ledger(l) => FetchError::Ledger(l),
        }
    }
}

/// The paying flow, independent of how requests are sent: a wallet, a
/// policy, a ledger.
pub struct Payer {
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

/// The client of `gate402 get`: a [`Payer`] over a `reqwest::Client`.
pub struct Client {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The paying flow.
    pub payer: Payer,
}

impl Client {
    /// Sends `request`; pays a 402 within the policy and retries.
    pub async fn fetch(&self, request: Request) -> Result<Fetched, FetchError> {
        self.payer
            .fetch_with(request, |r| async { Ok(self.http.execute(r).await?) })
            .await
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a request goes, in the units the ledger keys on.
pub(crate) struct Endpoint {
    pub(crate) url: String,
    pub(crate) origin: String,
    pub(crate) host: String,
    pub(crate) path: String,
}

impl Endpoint {
    pub(crate) fn of(url: &reqwest::Url) -> Self {
        Self {
            url: url.to_string(),
            origin: url.origin().ascii_serialization(),
            host: url.host_str().unwrap_or_default().to_ascii_lowercase(),
            path: url.path().to_owned(),
        }
    }
}

fn with_authorization(request: &Request, authorization: &str) -> Result<Request, FetchError> {
    let mut attempt = request.try_clone().ok_or(FetchError::NotRepeatable)?;
    if let Ok(value) = HeaderValue::from_str(authorization) {
        attempt.headers_mut().insert(AUTHORIZATION, value);
    }
    Ok(attempt)
}

/// How long to keep asking about a payment that may be in flight.
const RESOLVE_FOR: Duration = Duration::from_secs(30);

impl Payer {
    /// Sends `request` with `send`; pays a 402 within the policy and
    /// retries. Requests for one endpoint (origin and path) pay one at a
    /// time, across processes sharing the ledger, so concurrent requests
    /// share one L402 token instead of paying twice.
    pub async fn fetch_with<S, F>(&self, request: Request, send: S) -> Result<Fetched, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let endpoint = Endpoint::of(request.url());
        if let Some(answer) = self.with_cached_token(&request, &endpoint, &send).await? {
            return Ok(Fetched::Response(answer, None));
        }
        let response = send(request.try_clone().ok_or(FetchError::NotRepeatable)?).await?;
        if response.status() != StatusCode::PAYMENT_REQUIRED {
            return Ok(Fetched::Response(response, None));
        }
        let offer = Offer::from_headers(response.headers())?;
        if !self.pay {
            return Ok(Fetched::Offer(Box::new(offer)));
        }
        // Refuse before waiting for anyone else's payment.
        self.policy.check(&offer, SystemTime::now())?;
        let _lock = self
            .ledger
            .lock_endpoint(&endpoint.origin, &endpoint.path)
            .await?;
        // Whoever held the lock may have bought a token meanwhile.
        if let Some(answer) = self.with_cached_token(&request, &endpoint, &send).await? {
            return Ok(Fetched::Response(answer, None));
        }
        // A payment an earlier run left pending is finished, not repeated.
        for pending in self
            .ledger
            .pending(Some((&endpoint.origin, &endpoint.path)))?
        {
            if let Some(fetched) = self.resume(pending, &request, &endpoint, &send).await? {
                return Ok(fetched);
            }
        }
        self.policy.check(&offer, SystemTime::now())?;
        let scheme = self.scheme_for(&offer);
        let (mut entry, outcome) = self.pay(&endpoint, &offer, scheme).await?;
        let answer = self
            .answer(
                &request, &endpoint, &offer, scheme, &mut entry, &outcome, &send,
            )
            .await?;
        Ok(Fetched::Response(answer, Some(entry)))
    }

    /// Pays `offer`'s invoice for `endpoint`: written to the ledger as
    /// pending (within the budget) before it is sent, settled or failed
    /// once its outcome is known, resolved through the wallet when that
    /// is not known at once. The caller holds the endpoint's lock.
    pub(crate) async fn pay(
        &self,
        endpoint: &Endpoint,
        offer: &Offer,
        scheme: Prefer,
    ) -> Result<(PaymentEntry, PaymentOutcome), FetchError> {
        let mut entry = PaymentEntry {
            id: 0,
            url: endpoint.url.clone(),
            origin: endpoint.origin.clone(),
            host: endpoint.host.clone(),
            path: endpoint.path.clone(),
            scheme: scheme.as_str().into(),
            amount_msat: offer.amount_msat().unwrap_or_default(),
            fee_msat: 0,
            payment_hash: hex::encode(offer.invoice.payment_hash()),
            receipt: None,
            status: PaymentState::Pending,
            error: None,
            created_at: now(),
        };
        entry.id = self.ledger.begin_payment(
            &entry,
            &offer.bolt11,
            &offer.challenges,
            &self.policy.budget,
        )?;
        let paid = self
            .wallet
            .pay(
                &endpoint.origin,
                &offer.bolt11,
                self.policy.max_fee_sats * 1000,
            )
            .await;
        let outcome = match paid {
            Ok(outcome) => outcome,
            Err(error) if may_be_in_flight(&error) => {
                match self
                    .await_outcome(&endpoint.origin, &entry.payment_hash, &offer.bolt11)
                    .await?
                {
                    PaymentStatus::Succeeded(outcome) => outcome,
                    PaymentStatus::Pending => return Err(FetchError::InFlight(entry.payment_hash)),
                    PaymentStatus::Failed(_) | PaymentStatus::Unknown => {
                        self.ledger.fail_payment(entry.id, &error.to_string())?;
                        return Err(error.into());
                    }
                }
            }
            Err(error) => {
                self.ledger.fail_payment(entry.id, &error.to_string())?;
                return Err(error.into());
            }
        };
        self.settle(&mut entry, &outcome)?;
        Ok((entry, outcome))
    }

    /// Marks a payment paid, in the ledger and in `entry`.
    fn settle(
        &self,
        entry: &mut PaymentEntry,
        outcome: &PaymentOutcome,
    ) -> Result<(), LedgerError> {
        self.ledger
            .settle_payment(entry.id, outcome.amount_msat, outcome.fee_msat)?;
        entry.amount_msat = outcome.amount_msat;
        entry.fee_msat = outcome.fee_msat;
        entry.status = PaymentState::Paid;
        Ok(())
    }

    /// Tries the cached token for this endpoint, if any. `None`: no token,
    /// or the server no longer takes it (then it is forgotten).
    async fn with_cached_token<S, F>(
        &self,
        request: &Request,
        endpoint: &Endpoint,
        send: &S,
    ) -> Result<Option<Response>, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let Some(token) = self
            .ledger
            .token_for(&endpoint.origin, &endpoint.path, now())?
        else {
            return Ok(None);
        };
        let answer = send(with_authorization(request, &token.authorization)?).await?;
        if matches!(
            answer.status(),
            StatusCode::PAYMENT_REQUIRED | StatusCode::UNAUTHORIZED
        ) {
            // Expired or revoked: forget it and pay for a new one.
            self.ledger.remove_tokens(&token.payment_hash)?;
            return Ok(None);
        }
        Ok(Some(answer))
    }

    pub(crate) fn scheme_for(&self, offer: &Offer) -> Prefer {
        match (self.prefer, &offer.l402, &offer.payment) {
            (Some(Prefer::Mpp), _, Some(_)) | (None, None, Some(_)) => Prefer::Mpp,
            (None, Some(_), Some(_)) if !offer.l402_first => Prefer::Mpp,
            _ => Prefer::L402,
        }
    }

    /// Asks the wallet how a payment ended, for up to [`RESOLVE_FOR`].
    async fn await_outcome(
        &self,
        origin: &str,
        payment_hash: &str,
        bolt11: &str,
    ) -> Result<PaymentStatus, FetchError> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(payment_hash, &mut hash)
            .map_err(|_| LedgerError::corrupt(format!("payment hash {payment_hash:?}")))?;
        let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
        loop {
            let status = self.wallet.resolve(origin, &hash, bolt11).await?;
            if status != PaymentStatus::Pending || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Finds out how a payment an earlier run left pending ended: paid →
    /// settled in the ledger and returned with its offer, to answer it
    /// now; failed or never sent → marked failed (`None`); still in
    /// flight → [`FetchError::InFlight`].
    pub(crate) async fn finish_pending(
        &self,
        pending: PendingPayment,
    ) -> Result<Option<(PaymentEntry, PaymentOutcome, Offer)>, FetchError> {
        let mut entry = pending.entry;
        let outcome = match self
            .await_outcome(&entry.origin, &entry.payment_hash, &pending.bolt11)
            .await?
        {
            PaymentStatus::Succeeded(outcome) => outcome,
            PaymentStatus::Pending => return Err(FetchError::InFlight(entry.payment_hash)),
            PaymentStatus::Failed(reason) => {
                self.ledger.fail_payment(entry.id, &reason)?;
                return Ok(None);
            }
            PaymentStatus::Unknown => {
                self.ledger
                    .fail_payment(entry.id, "the wallet never sent it")?;
                return Ok(None);
            }
        };
        self.settle(&mut entry, &outcome)?;
        let offer = Offer::from_challenges(pending.challenges.iter().map(String::as_str))?;
        Ok(Some((entry, outcome, offer)))
    }

    /// Finishes a pending payment and answers the request with it.
    async fn resume<S, F>(
        &self,
        pending: PendingPayment,
        request: &Request,
        endpoint: &Endpoint,
        send: &S,
    ) -> Result<Option<Fetched>, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let Some((mut entry, outcome, offer)) = self.finish_pending(pending).await? else {
            return Ok(None);
        };
        let scheme = if entry.scheme == Prefer::Mpp.as_str() && offer.payment.is_some() {
            Prefer::Mpp
        } else {
            Prefer::L402
        };
        let answer = self
            .answer(
                request, endpoint, &offer, scheme, &mut entry, &outcome, send,
            )
            .await?;
        Ok(Some(Fetched::Response(answer, Some(entry))))
    }

    /// Retries `request` with the paid credential; keeps the receipt and,
    /// for L402, the token.
    #[allow(clippy::too_many_arguments)]
    async fn answer<S, F>(
        &self,
        request: &Request,
        endpoint: &Endpoint,
        offer: &Offer,
        scheme: Prefer,
        entry: &mut PaymentEntry,
        outcome: &PaymentOutcome,
        send: &S,
    ) -> Result<Response, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let authorization = match scheme {
            Prefer::L402 => offer.l402_authorization(&outcome.preimage),
            Prefer::Mpp => offer.payment_authorization(&outcome.preimage),
        }
        .unwrap_or_default();
        if scheme == Prefer::L402 {
            // Kept before the retry: a paid token outlives a failed retry.
            let expires_at = offer.l402.as_ref().and_then(|c| {
                c.macaroon
                    .first_party_caveats()
                    .filter_map(Caveat::parse)
                    .filter(|c| c.condition.ends_with(VALID_UNTIL_SUFFIX))
                    .filter_map(|c| c.value.parse::<u64>().ok())
                    .min()
            });
            let token = CachedToken {
                origin: endpoint.origin.clone(),
                path: endpoint.path.clone(),
                payment_hash: entry.payment_hash.clone(),
                authorization: authorization.clone(),
                expires_at,
            };
            self.ledger.cache_token(&token, now())?;
        }
        let answer = send(with_authorization(request, &authorization)?).await?;
        let receipt = answer
            .headers()
            .get(gate402_mpp::RECEIPT_HEADER)
            .and_then(|v| v.to_str().ok());
        entry.scheme = scheme.as_str().into();
        self.ledger
            .attach_receipt(entry.id, &entry.scheme, receipt)?;
        entry.receipt = receipt.map(str::to_owned).or(entry.receipt.take());
        Ok(answer)
    }
}
