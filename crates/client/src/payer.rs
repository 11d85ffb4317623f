//! The payer and what paying one offer takes: the [`Payer`] (wallet,
//! policy, ledger), the scheme it prefers, what a fetch answers, and the
//! steps under every paid exchange: the ledger entry of a payment, paying
//! it and settling its outcome, the credential set on the request, sending
//! it (with retries when the answer was lost) and answering a 402.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gate402_lightning::{PaymentOutcome, PaymentStatus};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, Request, Response, StatusCode, Url};

use crate::error::FetchError;
use crate::ledger::{PaymentState, PendingPayment};
use crate::policy::expiry;
use crate::wallet::may_be_in_flight;
use crate::{
    CachedToken, Ledger, LedgerError, Offer, OfferError, PaymentEntry, Policy, RequestKey, Wallet,
    PAYMENT_AUTHORIZATION,
};

/// Which scheme to answer with when several are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// `Authorization: L402 …` (reusable token).
    L402,
    /// `Authorization: Payment …` (single use).
    Mpp,
    /// `payment-signature: …` (x402; single use). Without a preference it
    /// is answered only when neither L402 nor MPP can be: their credentials
    /// prove payment by the preimage in every deployed form, x402's
    /// Lightning payment by the invoice alone in most.
    X402,
}

impl Prefer {
    /// The scheme's name as the ledger keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            Prefer::L402 => "L402",
            Prefer::Mpp => "Payment",
            Prefer::X402 => "x402",
        }
    }
}

/// On a response (its extensions) answered with what an earlier payment
/// bought, not a new one: a kept L402 token or pass, an MPP credential kept
/// after a server error, or an open session's balance. A fetch that
/// paid anew has a [`PaymentEntry`] instead ([`Fetched::Response`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierPayment {
    /// That payment's hash, hex (a session's: its id).
    pub payment_hash: String,
    /// What it bought: `"token"` or `"session"`.
    pub via: &'static str,
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

/// The paying flow, independent of how requests are sent: a wallet, a
/// policy, a ledger.
#[derive(Clone)]
pub struct Payer {
    /// What pays.
    pub wallet: Wallet,
    /// What may be paid.
    pub policy: Policy,
    /// Payments, receipts, tokens.
    pub ledger: Arc<Ledger>,
    /// Scheme preference (default: the first offered).
    pub prefer: Option<Prefer>,
    /// When false, a 402 is returned as an offer instead of paid, and no
    /// kept token or session is sent (each may spend: a per-request
    /// token's payment, a balance's units).
    pub pay: bool,
    /// Whether to use the MPP session intent (draft-lightning-session-00)
    /// when a 402 offers it: pay the deposit and open a session (with a
    /// return invoice of the wallet for the refund), spend from it on
    /// later requests to the same service, top it up within the policy,
    /// close it once idle. When false, a balance is bought through its
    /// L402 token (which has no refund), and sessions kept from before are
    /// left alone.
    pub sessions: bool,
}

impl Payer {
    /// A payer of test money: the sandbox payer of the gateway being paid
    /// ([`Wallet::sandbox`]), on its network, paying at most
    /// `max_cost_sats` a request with no fee, no budget, the first scheme
    /// offered, and no sessions (set the fields to change any of it).
    /// Its payments are written to `ledger`: the CLI's is
    /// `<data dir>/client/ledger.sqlite3`, whose tokens, budgets and locks
    /// are then shared with `gate402 get`.
    pub fn sandbox(ledger: Arc<Ledger>, max_cost_sats: u64) -> Self {
        Payer {
            wallet: Wallet::sandbox(),
            policy: Policy {
                max_cost_sats,
                max_fee_sats: 0,
                network: gate402_lightning_sandbox::NETWORK,
                budget: crate::Budget::default(),
            },
            ledger,
            prefer: None,
            pay: true,
            sessions: false,
        }
    }
}

/// Unix seconds.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A URL's host as budgets and the ledger name it: lower case, and an
/// IPv4 address written as IPv6 (`[::ffff:127.0.0.1]`) as the IPv4 address
/// it is, so that no spelling of a host escapes its domain's budget (the
/// URL parser already reads `127.1` and `2130706433` as `127.0.0.1`).
fn budget_host(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let mapped = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        .and_then(|v6| v6.to_ipv4_mapped());
    match mapped {
        Some(v4) => v4.to_string(),
        None => host.to_ascii_lowercase(),
    }
}

/// Where a request goes, in the units the ledger keys on.
pub(crate) struct Endpoint {
    pub(crate) url: String,
    pub(crate) origin: String,
    pub(crate) host: String,
    pub(crate) method: String,
    pub(crate) path: String,
}

impl Endpoint {
    pub(crate) fn of(method: &Method, url: &Url) -> Self {
        Self {
            url: url.to_string(),
            origin: url.origin().ascii_serialization(),
            host: budget_host(url),
            method: method.as_str().to_owned(),
            path: url.path().to_owned(),
        }
    }

    pub(crate) fn of_request(request: &Request) -> Self {
        Self::of(request.method(), request.url())
    }
}

/// A ledger entry for a payment about to begin for `endpoint`.
pub(crate) fn new_entry(
    endpoint: &Endpoint,
    scheme: &str,
    amount_msat: u64,
    payment_hash: String,
    session: Option<String>,
) -> PaymentEntry {
    PaymentEntry {
        id: 0,
        url: endpoint.url.clone(),
        origin: endpoint.origin.clone(),
        host: endpoint.host.clone(),
        path: endpoint.path.clone(),
        scheme: scheme.into(),
        amount_msat,
        fee_msat: 0,
        payment_hash,
        receipt: None,
        status: PaymentState::Pending,
        error: None,
        created_at: now(),
        session,
    }
}

/// A copy of `request` carrying `value` in `field`.
pub(crate) fn with_credential(
    request: &Request,
    field: &str,
    value: &str,
) -> Result<Request, FetchError> {
    let mut attempt = request.try_clone().ok_or(FetchError::NotRepeatable)?;
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(field.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        attempt.headers_mut().insert(name, value);
    }
    Ok(attempt)
}

/// Sends `request` with `credential` in `field`, and again (up to
/// [`PAID_RETRIES`] times) while it is lost in transit: each time the
/// same request, its `Idempotency-Key` included.
pub(crate) async fn send_paid<S, F>(
    request: &Request,
    field: &str,
    credential: &str,
    send: &S,
) -> Result<Response, FetchError>
where
    S: Fn(Request) -> F + Sync,
    F: Future<Output = Result<Response, FetchError>> + Send,
{
    let mut wait = PAID_RETRY_AFTER;
    for _ in 0..PAID_RETRIES {
        match send(with_credential(request, field, credential)?).await {
            Err(error) if lost_in_transit(&error) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            answered => return answered,
        }
    }
    send(with_credential(request, field, credential)?).await
}

/// How often a paid request is sent again after it was lost in transit
/// (the payment is made: giving up would lose it).
const PAID_RETRIES: u32 = 2;

/// The wait before the first of those; doubled before each next one.
const PAID_RETRY_AFTER: Duration = Duration::from_millis(500);

/// How often a request on a balance held by requests in flight (`409`),
/// or a kept credential another call holds (an MCP `retryAfter`), is
/// asked again, each after the wait the server asks for.
pub(crate) const HELD_BALANCE_WAITS: u32 = 30;

/// Sends with `send` (a request spending a balance: its L402 token or its
/// session), and again while the answer is `409`, a balance that requests
/// in flight hold (what they do not use comes back), each time after its
/// `Retry-After`, at most [`HELD_BALANCE_WAITS`] times: asked again, not
/// paid over with a new deposit or a top-up.
pub(crate) async fn past_held_balance<F>(
    mut send: impl FnMut() -> F,
) -> Result<Response, FetchError>
where
    F: Future<Output = Result<Response, FetchError>>,
{
    let mut answer = send().await?;
    for _ in 0..HELD_BALANCE_WAITS {
        if answer.status() != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(retry_after(&answer)).await;
        answer = send().await?;
    }
    Ok(answer)
}

/// How long an answer's `Retry-After` (seconds) asks to wait, between
/// 100 ms and 2 s (1 s when it says nothing readable).
fn retry_after(answer: &Response) -> Duration {
    held_wait(
        answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok()),
    )
}

/// The wait a server asked for (seconds), between 100 ms and 2 s (1 s
/// when it said nothing readable).
pub(crate) fn held_wait(secs: Option<f64>) -> Duration {
    let secs = secs.filter(|s| s.is_finite()).unwrap_or(1.0);
    Duration::from_secs_f64(secs.clamp(0.1, 2.0))
}

/// Whether a server refused the credential presented.
pub(crate) fn refused(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::PAYMENT_REQUIRED | StatusCode::UNAUTHORIZED
    )
}

/// Whether an answer to a request with a credential spent it: not a
/// refusal (`401`, `402`), not a server error (the gateway leaves the
/// payment unspent when its upstream fails), not `409` (another request
/// holds the credential) nor `429`.
pub(crate) fn spends(status: StatusCode) -> bool {
    !(refused(status)
        || status.is_server_error()
        || status == StatusCode::CONFLICT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

/// How long to keep asking about a payment that may be in flight.
const RESOLVE_FOR: Duration = Duration::from_secs(30);

impl Payer {
    /// Pays `offer`'s invoice for `endpoint`: written to the ledger as
    /// pending (within the budget, with the offer and `request_key`, the
    /// key of the request paid for) before it is sent, settled or failed
    /// once its outcome is known, resolved through the wallet when that is
    /// not known at once. The caller holds the endpoint's lock.
    pub(crate) async fn pay(
        &self,
        endpoint: &Endpoint,
        offer: &Offer,
        scheme: Prefer,
        request_key: Option<&RequestKey>,
    ) -> Result<(PaymentEntry, PaymentOutcome), FetchError> {
        let begun = PendingPayment {
            entry: new_entry(
                endpoint,
                scheme.as_str(),
                offer.amount_msat().unwrap_or_default(),
                hex::encode(offer.invoice.payment_hash()),
                None,
            ),
            bolt11: offer.bolt11.clone(),
            challenges: offer.challenges.clone(),
            payment_required: offer.payment_required.clone(),
            request_key: request_key.cloned(),
        };
        self.pay_begun(begun).await
    }

    /// Pays the invoice of `begun`: written to the ledger as pending
    /// (within the budget) before it is sent, then as [`Payer::pay`]. The
    /// caller holds the endpoint's lock.
    pub(crate) async fn pay_begun(
        &self,
        begun: PendingPayment,
    ) -> Result<(PaymentEntry, PaymentOutcome), FetchError> {
        let mut entry = begun.entry.clone();
        entry.id = self.ledger.begin_payment(&begun, &self.policy.budget)?;
        let paid = self
            .wallet
            .pay(
                &entry.origin,
                &begun.bolt11,
                self.policy.max_fee_sats * 1000,
            )
            .await;
        let outcome = match paid {
            Ok(outcome) => outcome,
            Err(error) if may_be_in_flight(&error) => {
                match self
                    .await_outcome(&entry.origin, &entry.payment_hash, &begun.bolt11)
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

    /// The scheme to answer `offer` with: one whose challenge has not
    /// expired, the one that keeps the request's own `Authorization` when
    /// it has one, then the preference, then the first of L402 and MPP
    /// offered, then x402.
    pub(crate) fn scheme_for(
        &self,
        offer: &Offer,
        own_authorization: bool,
        now: SystemTime,
    ) -> Prefer {
        let live = |scheme| offer.offers(scheme) && expiry(offer, scheme, now).is_none();
        let mpp = live(Prefer::Mpp);
        if mpp && own_authorization && offer.payment_field() == PAYMENT_AUTHORIZATION {
            return Prefer::Mpp;
        }
        if let Some(prefer) = self.prefer.filter(|p| live(*p)) {
            return prefer;
        }
        match (live(Prefer::L402), mpp) {
            (true, true) if offer.l402_first => Prefer::L402,
            (_, true) => Prefer::Mpp,
            (true, false) => Prefer::L402,
            (false, false) if live(Prefer::X402) => Prefer::X402,
            // Nothing can be paid: the policy will say why, of the first
            // offered.
            (false, false) => [Prefer::L402, Prefer::Mpp]
                .into_iter()
                .find(|s| offer.offers(*s))
                .unwrap_or(Prefer::X402),
        }
    }

    /// Asks the wallet how a payment ended, for up to [`RESOLVE_FOR`].
    pub(crate) async fn await_outcome(
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
        let Some((entry, outcome)) = self.finish_payment(&pending).await? else {
            return Ok(None);
        };
        let offer = pending_offer(&pending)?;
        Ok(Some((entry, outcome, offer)))
    }

    /// As [`Payer::finish_pending`], without reading its offer.
    pub(crate) async fn finish_payment(
        &self,
        pending: &PendingPayment,
    ) -> Result<Option<(PaymentEntry, PaymentOutcome)>, FetchError> {
        let mut entry = pending.entry.clone();
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
        Ok(Some((entry, outcome)))
    }

    /// Retries `request` with the paid credential (sent again, as it is,
    /// when it is lost in transit); keeps the receipt and, for L402, the
    /// token.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn answer<S, F>(
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
        let (field, credential) = match scheme {
            Prefer::L402 => ("Authorization", offer.l402_authorization(&outcome.preimage)),
            Prefer::Mpp => (
                offer.payment_field(),
                offer.payment_authorization(&outcome.preimage),
            ),
            Prefer::X402 => (
                gate402_x402::PAYMENT_SIGNATURE,
                offer.x402_signature(&outcome.preimage),
            ),
        };
        let credential = credential.unwrap_or_default();
        // Kept before the retry: a paid token outlives a failed retry, and
        // so does an MPP credential until it is served (a gateway that
        // answers a server error leaves it unspent, to be sent again).
        let kept = match scheme {
            Prefer::L402 => Some((
                offer.l402_services(),
                offer
                    .l402_valid_until()
                    .iter()
                    .filter_map(|(_, value)| value.parse::<u64>().ok())
                    // A pass lasts its seconds from its first use: this
                    // request, sent now.
                    .chain(
                        offer
                            .l402_sale()
                            .and_then(|(_, terms)| terms.pass_secs)
                            .map(|secs| now().saturating_add(secs)),
                    )
                    .min(),
            )),
            Prefer::Mpp => Some((None, offer.payment_expires_at())),
            Prefer::X402 => None,
        };
        let keeps = kept.is_some();
        if let Some((services, expires_at)) = kept {
            // An MPP credential pays for this very request (its body is
            // bound, its price may be the query's).
            let bound_to = (scheme == Prefer::Mpp).then(|| RequestKey::digest(request));
            // With the request's key: until it is answered, a retry of it
            // with the token is a retry, not a second request.
            let token = CachedToken {
                origin: endpoint.origin.clone(),
                method: endpoint.method.clone(),
                path: endpoint.path.clone(),
                services,
                payment_hash: entry.payment_hash.clone(),
                authorization: credential.clone(),
                field: field.to_owned(),
                bound_to,
                expires_at,
                unanswered: RequestKey::of(request),
            };
            self.ledger.cache_token(&token, now())?;
        }
        let answer = send_paid(request, field, &credential, send).await?;
        // Answered for good, not with a server error or a refusal after
        // which the request is sent again, under the same key.
        if let (true, Some(sent)) = (keeps && spends(answer.status()), RequestKey::of(request)) {
            self.ledger.note_answered(&entry.payment_hash, &sent)?;
        }
        let single_use = match scheme {
            Prefer::L402 => offer.l402_single_use(),
            Prefer::Mpp => true,
            Prefer::X402 => false,
        };
        if single_use && spends(answer.status()) {
            // Served, so spent: a per-request token buys nothing more.
            // (After a 5xx the gateway keeps it unspent for a retry.)
            self.ledger.forget_payment_tokens(&entry.payment_hash)?;
        }
        let headers = answer.headers();
        let receipt = headers
            .get(gate402_mpp::RECEIPT_HEADER)
            .or_else(|| {
                (scheme == Prefer::X402)
                    .then(|| headers.get(gate402_x402::PAYMENT_RESPONSE))
                    .flatten()
            })
            .and_then(|v| v.to_str().ok())
            .filter(|receipt| own_receipt(receipt, &entry.payment_hash));
        entry.scheme = scheme.as_str().into();
        self.ledger
            .attach_receipt(entry.id, &entry.scheme, receipt)?;
        entry.receipt = receipt.map(str::to_owned).or(entry.receipt.take());
        Ok(answer)
    }
}

impl Payer {
    /// Books `receipt` with the payment of `payment_hash` (hex) when that
    /// payment has none yet and the receipt is its ([`own_receipt`]): the
    /// answer to a kept credential, whose paid request got no receipt (its
    /// upstream failed).
    pub(crate) fn keep_first_receipt(
        &self,
        payment_hash: &str,
        receipt: Option<&str>,
    ) -> Result<(), LedgerError> {
        let Some(receipt) = receipt.filter(|r| own_receipt(r, payment_hash)) else {
            return Ok(());
        };
        let unreceipted = self
            .ledger
            .payment_by_hash(payment_hash)?
            .filter(|paid| paid.entry.receipt.is_none());
        if let Some(paid) = unreceipted {
            self.ledger
                .attach_receipt(paid.entry.id, &paid.entry.scheme, Some(receipt))?;
        }
        Ok(())
    }
}

/// The longest receipt booked: an MPP receipt is about 200 bytes.
const MAX_RECEIPT_BYTES: usize = 8192;

/// Whether `receipt` (a `Payment-Receipt` value, or a receipt as JSON, as
/// MCP carries it) may be booked with the payment of `payment_hash`
/// (hex): not when its `reference` names another payment (a server's
/// mistake, or a lie that would have the ledger show the receipt of an
/// earlier payment), nor when it says the payment did not succeed (a
/// `status` other than `success`), nor when it is over
/// [`MAX_RECEIPT_BYTES`] (the ledger is no store for a server's bytes). A
/// receipt naming no payment hash (x402's, an unreadable one) is kept as
/// sent.
pub(crate) fn own_receipt(receipt: &str, payment_hash: &str) -> bool {
    if receipt.len() > MAX_RECEIPT_BYTES {
        return false;
    }
    let value = serde_json::from_str::<serde_json::Value>(receipt)
        .ok()
        .or_else(|| gate402_mpp::receipt::decode_json(receipt).ok());
    if value
        .as_ref()
        .and_then(|v| v["status"].as_str())
        .is_some_and(|status| status != "success")
    {
        return false;
    }
    let reference = value.as_ref().and_then(|v| v["reference"].as_str());
    match reference {
        Some(reference) if reference.len() == 64 && hex::decode(reference).is_ok() => {
            reference.eq_ignore_ascii_case(payment_hash)
        }
        _ => true,
    }
}

/// Whether a request failed on its way, before any answer: sending the
/// same request again may get through. A timeout is not one (the server
/// may still be at work on the first).
pub(crate) fn lost_in_transit(error: &FetchError) -> bool {
    matches!(error, FetchError::Http(e) if (e.is_connect() || e.is_request()) && !e.is_timeout())
}

/// The offer a pending payment was begun for.
pub(crate) fn pending_offer(pending: &PendingPayment) -> Result<Offer, OfferError> {
    Offer::from_parts(
        pending.challenges.iter().map(String::as_str),
        pending.payment_required.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_naming_another_payment_is_not_this_ones() {
        let (ours, theirs) = ("ab".repeat(32), "cd".repeat(32));
        let header = |reference: &str| {
            gate402_mpp::receipt::to_header(&gate402_mpp::receipt::lightning(
                &<[u8; 32]>::try_from(hex::decode(reference).unwrap()).unwrap(),
                None,
                time::OffsetDateTime::UNIX_EPOCH,
            ))
        };
        assert!(own_receipt(&header(&ours), &ours));
        assert!(!own_receipt(&header(&theirs), &ours));
        // As MCP carries it: JSON.
        let json = |reference: &str| format!(r#"{{"status":"success","reference":"{reference}"}}"#);
        assert!(own_receipt(&json(&ours.to_uppercase()), &ours));
        assert!(!own_receipt(&json(&theirs), &ours));
        // Naming no payment hash (x402's, or unreadable): kept as sent.
        assert!(own_receipt("not a receipt", &ours));
        assert!(own_receipt(r#"{"reference":"0xabc"}"#, &ours));
        // Saying the payment failed, or too big to be one: not booked.
        assert!(!own_receipt(
            &format!(r#"{{"status":"failed","reference":"{ours}"}}"#),
            &ours
        ));
        assert!(!own_receipt(&"x".repeat(80_000), &ours));
    }

    #[test]
    fn a_host_has_one_name_for_its_budget() {
        let host = |url: &str| budget_host(&Url::parse(url).unwrap());
        for url in [
            "http://127.0.0.1:1/x",
            "http://127.1:1/x",
            "http://2130706433:1/x",
            "http://[::ffff:127.0.0.1]:1/x",
            "http://[::FFFF:7f00:1]:1/x",
        ] {
            assert_eq!(host(url), "127.0.0.1", "{url}");
        }
        assert_eq!(host("http://[::1]:1/x"), "[::1]");
        assert_eq!(host("http://API.Example.com/x"), "api.example.com");
    }
}
