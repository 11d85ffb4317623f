//! Prepaid balances: the one place that opens, spends, tops up, closes and
//! refunds them (draft-lightning-session-00, and L402 tokens that name a
//! balance).
//!
//! A balance is a session keyed by the payment hash of the deposit that
//! opened it. Its deposit is credited once, whichever door presents it
//! first: the MPP session intent's `open` (with a return invoice for the
//! refund) or an L402 token with a `<service>_balance` caveat (the same
//! invoice, the same preimage). Each request spends the service's price,
//! atomically in the store across replicas; the debit is held until the
//! request is served and given back when the upstream fails (pay for
//! success) or the replica is killed mid-request. `topUp` credits a further
//! paid deposit once; `close`, or the idle timeout, closes the session once
//! and pays the unspent balance to the return invoice, once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gate402_lightning::{InvoiceStatus, LightningError, PayError, PaymentStatus};
use gate402_mpp::problem::ProblemType;
use gate402_mpp::session::{
    check_return_invoice, proves, session_id, verify_session, SessionAction, VerifiedSession,
};
use gate402_mpp::PaymentCredential;
use gate402_store::{
    AfterFailure, ClaimHolder, ClosedIdle, Closing, Debit, NewSession, Opened, Store, StoreError,
    TopUp,
};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::unix_now;
use crate::detached::Detached;
use crate::paywall::Paywall;
use crate::responses::{self, Refusal};
use crate::route::{Meter, PricedService};
use crate::verify::Verified;

/// How long a refund payment may take before it is reported pending.
const REFUND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a close waits for the session's requests in flight.
const CLOSE_WAITS_FOR: Duration = Duration::from_secs(30);

/// How often a close waiting for them looks again.
const CLOSE_POLL: Duration = Duration::from_millis(200);

/// How long after a refund was last taken one still owed is taken again
/// (seconds): well past [`REFUND_TIMEOUT`], so that a payer still at work
/// is never doubled.
const REFUND_RETRY_SECS: u64 = 300;

/// What a session credential comes to.
pub(crate) enum Step {
    /// Serve the request from this session's balance.
    Spend(Verified),
    /// Go no further.
    Halt(Halt),
}

/// A request that does not reach the upstream.
pub(crate) enum Halt {
    /// Answered here (`topUp`, `close`, the store out of reach).
    Answer(Response<Bytes>),
    /// Refused, with a fresh challenge.
    Refuse(Refusal),
}

fn refused(problem: ProblemType, detail: impl Into<String>) -> Halt {
    Halt::Refuse(Refusal::new(StatusCode::PAYMENT_REQUIRED, problem, detail))
}

/// The refusal of a request on a closed session.
fn closed() -> Halt {
    refused(
        ProblemType::LightningSessionClosed,
        "this session is closed; pay a fresh deposit",
    )
}

fn refuse(problem: ProblemType, detail: impl Into<String>) -> Step {
    Step::Halt(refused(problem, detail))
}

/// What a session spend stands on: the session, the challenge echoed.
fn spending(id: [u8; 32], challenge_id: Option<String>) -> Verified {
    Verified {
        payment_hash: id,
        challenge_id,
        expires_at: 0,
        single_use: false,
        balance: None,
        proven: true,
        paid_sats: None,
        pass_secs: None,
    }
}

/// A debit held for one request: kept once the upstream has the request,
/// given back when the upstream fails or the request never reached it.
pub(crate) struct Hold {
    store: Arc<dyn Store>,
    holder: ClaimHolder,
    tracker: TaskTracker,
    /// The paywall stopping: its outcome is no longer tried again.
    stop: CancellationToken,
    /// What dropping it does: give back (not served yet) or keep.
    keep_on_drop: bool,
    done: bool,
    /// For a service metered by reported usage: what is kept of the hold.
    usage: Option<UsageCount>,
}

/// The units a response reported, [`UNREPORTED`] until it does.
pub(crate) type Units = Arc<AtomicU64>;

/// No units reported (yet).
pub(crate) const UNREPORTED: u64 = u64::MAX;

/// How a hold on the most a request may use becomes what it used.
struct UsageCount {
    units: Units,
    unit_msat: u64,
    max_units: u64,
}

impl UsageCount {
    /// What is kept: the units reported (at most the most held), or one
    /// unit when none were.
    fn kept_msat(&self) -> u64 {
        let units = match self.units.load(Ordering::Acquire) {
            UNREPORTED => 1,
            n => n.min(self.max_units),
        };
        units.saturating_mul(self.unit_msat)
    }

    /// What is kept of a failed request's hold when its failure is kept:
    /// the units its answer reported, at least one (a kept failure that
    /// cost nothing would leave the failures a balance buys unbounded), or
    /// (`None`) all of it when none were, as for a report that cannot be
    /// read.
    fn failed_kept_msat(&self) -> Option<u64> {
        match self.units.load(Ordering::Acquire) {
            UNREPORTED => None,
            n => Some(n.clamp(1, self.max_units).saturating_mul(self.unit_msat)),
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("token", &self.holder.token)
            .finish_non_exhaustive()
    }
}

impl Hold {
    /// A debit `holder` holds from a balance: given back when dropped as
    /// it is.
    fn new(
        store: Arc<dyn Store>,
        holder: ClaimHolder,
        tracker: TaskTracker,
        stop: CancellationToken,
        usage: Option<UsageCount>,
    ) -> Self {
        Self {
            store,
            holder,
            tracker,
            stop,
            keep_on_drop: false,
            done: false,
            usage,
        }
    }

    /// Where the units a response reports go, for a service metered by
    /// usage.
    pub(crate) fn units(&self) -> Option<Units> {
        self.usage.as_ref().map(|u| u.units.clone())
    }

    /// The upstream has the request: from now on dropping it keeps the
    /// debit; only [`Hold::release`] gives it back.
    pub(crate) fn served(mut self) -> Self {
        self.keep_on_drop = true;
        self
    }

    /// Gives the debit back after the upstream had the request and
    /// failed, unless the session had as much given back for failures as
    /// it may ([`crate::claims::FAILURES_PER_PAYMENT`]). True when given
    /// back. Kept, a request metered by usage keeps what its failed answer
    /// reported in its header (read into [`Hold::units`] first).
    pub(crate) async fn fail(mut self) -> bool {
        self.done = true;
        let spend_at = crate::claims::FAILURES_PER_PAYMENT;
        let kept_msat = self.usage.as_ref().and_then(UsageCount::failed_kept_msat);
        let call = {
            let (store, holder) = (self.store.clone(), self.holder.clone());
            async move {
                store
                    .fail_debit(&holder, spend_at, kept_msat, unix_now())
                    .await
            }
        };
        // Finished even if the request is dropped meanwhile.
        match Detached::new(&self.tracker, call, drop).await {
            Ok(AfterFailure::Released) => true,
            Ok(AfterFailure::Spent) => {
                tracing::warn!(
                    "the upstream failed too often on this session's requests; the debit is kept"
                );
                false
            }
            Ok(AfterFailure::NotHeld) => false,
            Err(e) => {
                // Given back at this replica's next start.
                tracing::error!(error = %e, "cannot give a debit back to its session");
                true
            }
        }
    }

    /// Keeps the debit (the answer was sent), written before this is
    /// ready, however long the store is out of reach: `true`; `false` when
    /// it was not (the paywall stopped first). The last bytes of a paid
    /// answer wait for it and go only on `true`, as for a claim
    /// ([`crate::claims::Claim::commit_written`]), since a replica that
    /// starts again gives back the debits it left unsettled.
    pub(crate) async fn settle(mut self) -> bool {
        self.done = true;
        // Written on its task even if not waited for to the end.
        match Detached::new(&self.tracker, self.outcome_call(true), drop).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, keep = true, "cannot record a debit's outcome; its answer is cut short");
                false
            }
        }
    }

    /// Who holds the debit and what keeping it keeps (for a service
    /// metered by usage, what its response reported, read now), for a
    /// write that keeps it together with a claim
    /// ([`crate::claims::Claim::commit_with_debit`]); this hold then
    /// writes nothing itself.
    pub(crate) fn into_kept(mut self) -> (ClaimHolder, Option<u64>) {
        self.done = true;
        let kept_msat = self.usage.as_ref().map(UsageCount::kept_msat);
        (self.holder.clone(), kept_msat)
    }

    /// Whether dropping it keeps the debit ([`Hold::served`]).
    pub(crate) fn keeps_on_drop(&self) -> bool {
        self.keep_on_drop
    }

    /// The store call that keeps the debit (`keep`: for a service metered
    /// by usage, what its response reported, read now) or gives it back,
    /// tried until written.
    fn outcome_call(
        &self,
        keep: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (store, holder, stop) = (self.store.clone(), self.holder.clone(), self.stop.clone());
        let kept_msat = self.usage.as_ref().map(UsageCount::kept_msat);
        async move {
            if keep {
                let kept = || store.settle_debit(&holder, kept_msat, unix_now());
                crate::retry::until_written(kept, &stop).await
            } else {
                let undone = || store.undo_debit(&holder);
                crate::retry::until_written(undone, &stop).await.map(drop)
            }
        }
    }

    /// Gives the debit back now (the request never reached the upstream).
    pub(crate) async fn release(mut self) {
        self.done = true;
        let call = self.outcome_call(false);
        if let Err(e) = Detached::new(&self.tracker, call, drop).await {
            // Given back at this replica's next start.
            tracing::error!(error = %e, "cannot give a debit back to its session");
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let keep = self.keep_on_drop;
        let call = self.outcome_call(keep);
        let finish = async move {
            if let Err(e) = call.await {
                tracing::error!(error = %e, keep, "cannot record a debit's outcome");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.tracker.spawn_on(finish, &runtime);
            }
            Err(_) => tracing::error!("no runtime to finish a debit on"),
        }
    }
}

/// A `close` of a session closed before answers its refund as recorded
/// (sats, status); one of nothing was `skipped` even while the first
/// close is still recording it (`pending` until then).
fn closed_before(closed: Option<gate402_store::ClosedSession>) -> (u64, String) {
    match closed {
        Some(closed) if closed.refund_msat >= 1000 => {
            (closed.refund_msat / 1000, closed.refund_status)
        }
        _ => (0, "skipped".into()),
    }
}

/// A close's mark on its session ([`Paywall::is_closing`]), taken off
/// when it is dropped.
struct ClosingMark {
    paywall: Paywall,
    id: [u8; 32],
}

impl ClosingMark {
    fn mark(paywall: &Paywall, id: &[u8; 32]) -> Self {
        let closing = &paywall.inner.closing;
        closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*id);
        Self {
            paywall: paywall.clone(),
            id: *id,
        }
    }
}

impl Drop for ClosingMark {
    fn drop(&mut self) {
        let closing = &self.paywall.inner.closing;
        closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// The JSON answer of `topUp` and `close`, with its receipt.
fn answer(body: serde_json::Value, receipt: &gate402_mpp::Receipt) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    if let Ok(value) = HeaderValue::from_str(&gate402_mpp::receipt::to_header(receipt)) {
        headers.insert(gate402_mpp::RECEIPT_HEADER, value);
    }
    response
}

fn now_time() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl Paywall {
    /// Acts on an MPP session credential for `service`.
    pub(crate) async fn session_step(
        &self,
        service: &PricedService,
        credential: &PaymentCredential,
    ) -> Step {
        let state = &self.inner;
        let key = state.verifier.challenge_keys.scoped(&service.name);
        // Open and topUp spend the echoed challenge's invoice: it must not
        // have expired. Bearer and close only name the session.
        let unexpired = |a: &SessionAction| {
            matches!(a, SessionAction::Open { .. } | SessionAction::TopUp { .. })
        };
        let verified = match verify_session(
            &key,
            credential,
            &state.verifier.realm,
            unexpired,
            now_time(),
        ) {
            Ok(verified) => verified,
            Err(gate402_mpp::verify::VerifyError::Expired(at)) => {
                return refuse(
                    ProblemType::LightningChallengeExpired,
                    format!("the challenge expired at {at}; pay a fresh one"),
                )
            }
            Err(e) => {
                let problem = e.problem_type();
                let status =
                    StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::PAYMENT_REQUIRED);
                return Step::Halt(Halt::Refuse(Refusal::new(status, problem, e.to_string())));
            }
        };
        let VerifiedSession {
            challenge_id,
            request,
            action,
        } = verified;
        let challenge_id = Some(challenge_id);
        match action {
            SessionAction::Open {
                preimage,
                return_invoice,
            } => {
                let (Some(hash), Some(deposit)) = (request.payment_hash(), request.deposit_sats())
                else {
                    return refuse(
                        ProblemType::LightningMalformedCredential,
                        "the challenge's request has no paymentHash or depositAmount",
                    );
                };
                if !proves(&preimage, &hash) {
                    return refuse(
                        ProblemType::LightningInvalidPreimage,
                        "the preimage does not match the deposit's payment hash",
                    );
                }
                // Before anything is written: a revoked deposit opens no
                // session and names no return invoice.
                if self.is_revoked(&hash) {
                    return Step::Halt(Halt::Refuse(crate::paywall::revoked()));
                }
                // Kept in its one spelling, so that no other session names
                // it in another and is refunded to it too.
                let return_invoice = match check_return_invoice(
                    &return_invoice,
                    state.network,
                    std::time::SystemTime::now(),
                ) {
                    Ok(canonical) => canonical,
                    Err(e) => {
                        return refuse(ProblemType::LightningInvalidReturnInvoice, e.to_string())
                    }
                };
                // A retry of this open may name it, its refund paid since.
                if let Some(why) = self.return_invoice_paid(&return_invoice).await {
                    if !matches!(self.store().session(&hash).await, Ok(Some(_))) {
                        return refuse(ProblemType::LightningInvalidReturnInvoice, why);
                    }
                }
                // At the unit price the client was offered (bound by the
                // challenge's id), whatever the service's price now.
                let unit = request.unit_sats().unwrap_or(service.price_sats);
                let opened = self
                    .open(
                        service,
                        hash,
                        deposit,
                        unit,
                        Some(return_invoice),
                        "Payment",
                    )
                    .await;
                match opened {
                    Ok(()) => Step::Spend(spending(hash, challenge_id)),
                    Err(halt) => Step::Halt(halt),
                }
            }
            SessionAction::Bearer {
                session_id: id,
                preimage,
            } => match session_id(&id) {
                Some(id) if proves(&preimage, &id) => Step::Spend(spending(id, challenge_id)),
                _ => refuse(
                    ProblemType::LightningInvalidPreimage,
                    "the preimage does not prove this session",
                ),
            },
            SessionAction::TopUp {
                session_id: id,
                top_up_preimage,
            } => {
                let (Some(id), Some(hash), Some(deposit)) = (
                    session_id(&id),
                    request.payment_hash(),
                    request.deposit_sats(),
                ) else {
                    return refuse(
                        ProblemType::LightningMalformedCredential,
                        "a top-up names a session and echoes a deposit challenge",
                    );
                };
                if !proves(&top_up_preimage, &hash) {
                    return refuse(
                        ProblemType::LightningInvalidPreimage,
                        "the top-up preimage does not match the challenge's payment hash",
                    );
                }
                // A revoked balance takes no more money.
                if self.is_revoked(&id) || self.is_revoked(&hash) {
                    return Step::Halt(Halt::Refuse(crate::paywall::revoked()));
                }
                self.top_up(service, id, hash, deposit, challenge_id.as_deref())
                    .await
            }
            SessionAction::Close {
                session_id: id,
                preimage,
            } => match session_id(&id) {
                Some(id) if proves(&preimage, &id) => self.close(service, id).await,
                _ => refuse(
                    ProblemType::LightningInvalidPreimage,
                    "the preimage does not prove this session",
                ),
            },
        }
    }

    /// Opens the balance an L402 token names, on its first use (later uses
    /// find it open). Its `<service>_balance` caveat may have been appended
    /// by the holder to a token sold as something else (a pass): so first
    /// the node must say that the token's invoice paid that deposit.
    ///
    /// # Errors
    ///
    /// The step to answer with: closed, a deposit spent elsewhere, a
    /// deposit the invoice did not pay (402), or a 503 when the store or
    /// the node cannot answer.
    pub(crate) async fn open_balance(
        &self,
        service: &PricedService,
        verified: &Verified,
        deposit_sats: u64,
    ) -> Result<(), Halt> {
        let id = verified.payment_hash;
        match self.store().session(&id).await {
            Ok(Some(session)) if session.closed.is_some() => Err(closed()),
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                self.deposit_paid(&id, deposit_sats).await?;
                self.open(service, id, deposit_sats, service.price_sats, None, "L402")
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, "store: cannot look up a session");
                Err(Halt::Answer(responses::payment_unavailable()))
            }
        }
    }

    /// Whether session `id` is still open (or unknown here).
    ///
    /// # Errors
    ///
    /// 402 `session-closed` once closed; a 503 when the store cannot
    /// answer.
    pub(crate) async fn session_open(&self, id: &[u8; 32]) -> Result<(), Halt> {
        match self.store().session(id).await {
            Ok(Some(session)) if session.closed.is_some() => Err(closed()),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "store: cannot look up a session");
                Err(Halt::Answer(responses::payment_unavailable()))
            }
        }
    }

    /// Whether the invoice of payment `hash` was paid at least
    /// `deposit_sats`, as the node says.
    async fn deposit_paid(&self, hash: &[u8; 32], deposit_sats: u64) -> Result<(), Halt> {
        match self.backend().invoice_status(hash).await {
            Ok(InvoiceStatus::Settled { amount_msat, .. })
                if amount_msat >= deposit_sats.saturating_mul(1000) =>
            {
                Ok(())
            }
            Ok(InvoiceStatus::Settled { amount_msat, .. }) => Err(refused(
                ProblemType::VerificationFailed,
                format!(
                    "this token names a balance of {deposit_sats} sat; its invoice paid {} sat",
                    amount_msat / 1000
                ),
            )),
            Ok(_) => Err(refused(
                ProblemType::VerificationFailed,
                "this token's invoice is not paid",
            )),
            // Issued by another replica's node: a deployment where
            // replicas selling balances through L402 do not share one.
            Err(LightningError::NotFound(_)) => {
                tracing::warn!(
                    "a balance's L402 token names an invoice this node did not issue; replicas that sell balances through L402 must share one Lightning node"
                );
                Err(Halt::Answer(responses::retry_later(
                    "this replica's Lightning node did not issue this token's invoice, so it cannot tell what the invoice paid; retry shortly (nothing was charged)",
                )))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot ask the node what a deposit's invoice was paid");
                Err(Halt::Answer(responses::unavailable("the Lightning node")))
            }
        }
    }

    /// Opens session `id` on `service` with a deposit, spent at
    /// `unit_sats` a unit.
    async fn open(
        &self,
        service: &PricedService,
        id: [u8; 32],
        deposit_sats: u64,
        unit_sats: u64,
        return_invoice: Option<String>,
        scheme: &'static str,
    ) -> Result<(), Halt> {
        // An L402 balance has no refund path until an MPP `open` names a
        // return invoice: it is not closed for idleness before its token
        // ends.
        let idle_secs = if return_invoice.is_some() {
            service.session_idle_secs
        } else {
            service.session_idle_secs.max(service.token_lifetime_secs)
        };
        let opened = self
            .store()
            .open_session(&NewSession {
                id,
                service: service.name.clone(),
                deposit_msat: deposit_sats.saturating_mul(1000),
                return_invoice,
                idle_secs,
                unit_msat: unit_sats.saturating_mul(1000),
                now: unix_now(),
            })
            .await;
        match opened {
            Ok(Opened::New) => {
                self.record_deposit(service, scheme, id, deposit_sats)
                    .await;
                Ok(())
            }
            Ok(Opened::Existing(session)) if session.closed.is_some() => Err(closed()),
            Ok(Opened::Existing(_)) => Ok(()),
            Ok(Opened::DepositSpent) => Err(refused(
                ProblemType::InvalidChallenge,
                "this deposit topped up another session",
            )),
            Ok(Opened::ReturnInvoiceTaken) => Err(refused(
                ProblemType::LightningInvalidReturnInvoice,
                "this return invoice is another session's, and an invoice is paid once: make a new one",
            )),
            Err(e) => {
                tracing::error!(error = %e, "store: cannot open a session");
                Err(Halt::Answer(responses::payment_unavailable()))
            }
        }
    }

    /// Spends one request's hold from session `id` at the unit price the
    /// session was opened at (one opened before that was recorded, at the
    /// service's price). Answers the hold and `service` at that price.
    ///
    /// # Errors
    ///
    /// The step to answer with: not enough left, closed, unknown, or the
    /// store out of reach.
    pub(crate) async fn debit(
        &self,
        service: &Arc<PricedService>,
        id: &[u8; 32],
    ) -> Result<(Hold, Arc<PricedService>), Halt> {
        let holder = ClaimHolder {
            replica: self.inner.claims.replica().to_owned(),
            token: hex::encode(rand::random::<[u8; 16]>()),
        };
        // A request metered by usage holds the most it may use.
        let units = service.held_units();
        let call = {
            let (store, id, name, holder) = (
                self.store().clone(),
                *id,
                service.name.clone(),
                holder.clone(),
            );
            let unit_msat = service.price_sats.saturating_mul(1000);
            async move {
                store
                    .debit(&id, &name, units, unit_msat, &holder, unix_now())
                    .await
            }
        };
        let (store, tracker) = (self.store().clone(), self.inner.background.clone());
        let stop = self.inner.stop.clone();
        // Debited after its request left (its client closed the
        // connection): its hold, dropped as it is, gives it back.
        let give_back = {
            let (store, holder, tracker, stop) =
                (store.clone(), holder.clone(), tracker.clone(), stop.clone());
            move |debited: Result<Debit, StoreError>| {
                if matches!(debited, Ok(Debit::Done { .. })) {
                    drop(Hold::new(store, holder, tracker, stop, None));
                }
            }
        };
        match Detached::new(&self.inner.requests, call, give_back).await {
            Ok(Debit::Done { unit_msat, .. }) => {
                let service = match unit_msat / 1000 {
                    unit if unit != service.price_sats => crate::pricing::at_price(service, unit),
                    _ => service.clone(),
                };
                let usage = match &service.meter {
                    Meter::Usage(usage) => Some(UsageCount {
                        units: Arc::new(AtomicU64::new(UNREPORTED)),
                        unit_msat,
                        max_units: usage.max_units.max(1),
                    }),
                    _ => None,
                };
                Ok((Hold::new(store, holder, tracker, stop, usage), service))
            }
            // Metered by usage, requests in flight hold the most they may
            // use and give back the rest: enough once they settle, so it
            // is asked again, not paid. (Other holds are what their
            // requests spend: given back only on a failure.)
            Ok(Debit::Insufficient {
                balance_msat,
                held_msat,
                unit_msat,
                ..
            }) if matches!(service.meter, Meter::Usage(_))
                && held_msat > 0
                && balance_msat.saturating_add(held_msat) >= units.saturating_mul(unit_msat) =>
            {
                Err(Halt::Answer(responses::balance_held()))
            }
            Ok(Debit::Insufficient {
                balance_msat,
                unit_msat,
                ..
            }) => Err(refused(
                ProblemType::LightningInsufficientBalance,
                format!(
                    "the session has {} sat left and this request holds {} sat; top it up with the new challenge's invoice",
                    balance_msat / 1000,
                    units.saturating_mul(unit_msat) / 1000
                ),
            )),
            Ok(Debit::Closed) => Err(closed()),
            Ok(Debit::NotFound) => Err(refused(
                ProblemType::LightningSessionNotFound,
                "no session of this service has this id; open one with the challenge's deposit",
            )),
            Err(e) => {
                tracing::error!(error = %e, "store: cannot spend from a session");
                // The debit may have been written and only its answer
                // lost: given back (by its holder's token, so nothing
                // else), lest the balance stay short until this
                // replica's next start.
                drop(Hold::new(store, holder, tracker, stop, None));
                Err(Halt::Answer(responses::payment_unavailable()))
            }
        }
    }

    async fn top_up(
        &self,
        service: &PricedService,
        id: [u8; 32],
        hash: [u8; 32],
        deposit_sats: u64,
        challenge_id: Option<&str>,
    ) -> Step {
        if let Err(step) = self.of_service(service, &id).await {
            return step;
        }
        // Credited when it opened the session: answered `ok`, it credited
        // nothing and said so to no one.
        if hash == id {
            return refuse(
                ProblemType::InvalidChallenge,
                "this payment is the session's own deposit, credited when it opened; a top-up pays a fresh challenge",
            );
        }
        let credited = self
            .store()
            .top_up(&id, &hash, deposit_sats.saturating_mul(1000), unix_now())
            .await;
        match credited {
            Ok(TopUp::Credited { .. }) => {
                self.record_deposit(service, "Payment", hash, deposit_sats)
                    .await;
            }
            // A retry: answered as the first time, credited once, unless
            // the session was closed since (it refuses everything).
            Ok(TopUp::AlreadyCredited) => {
                if let Ok(Some(session)) = self.store().session(&id).await {
                    if session.closed.is_some() {
                        return refuse(
                            ProblemType::LightningSessionClosed,
                            "this session is closed; this top-up was credited before the close, and its refund counted it",
                        );
                    }
                }
            }
            Ok(TopUp::DepositSpent) => {
                return refuse(
                    ProblemType::InvalidChallenge,
                    "this payment opened or topped up another session",
                )
            }
            Ok(TopUp::Closed) => return refuse(
                ProblemType::LightningSessionClosed,
                "this session is closed; the top-up's payment is unspent and may open a session",
            ),
            Ok(TopUp::NotFound) => {
                return refuse(
                    ProblemType::LightningSessionNotFound,
                    "no session has this id",
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "store: cannot top up a session");
                return Step::Halt(Halt::Answer(responses::payment_unavailable()));
            }
        }
        let receipt = gate402_mpp::receipt::lightning(&id, challenge_id, now_time());
        Step::Halt(Halt::Answer(answer(json!({"status": "ok"}), &receipt)))
    }

    /// Whether session `id` was opened on `service`: another service's
    /// requests, through either door and whatever the action, find no
    /// such session.
    async fn of_service(&self, service: &PricedService, id: &[u8; 32]) -> Result<(), Step> {
        match self.store().session(id).await {
            Ok(Some(session)) if session.service == service.name => Ok(()),
            Ok(_) => Err(refuse(
                ProblemType::LightningSessionNotFound,
                "no session has this id",
            )),
            Err(e) => {
                tracing::error!(error = %e, "store: cannot read a session");
                Err(Step::Halt(Halt::Answer(responses::payment_unavailable())))
            }
        }
    }

    async fn close(&self, service: &PricedService, id: [u8; 32]) -> Step {
        if let Err(step) = self.of_service(service, &id).await {
            return step;
        }
        let (refund_sats, status, closed_at) = match self.close_session(&id).await {
            Ok(Some(SessionClose::Closed {
                refund_sats,
                status,
            })) => (refund_sats, status, None),
            // Asked again (or closed idle, or by the operator): the first
            // answer, refunded once, and when it was closed.
            Ok(Some(SessionClose::AlreadyClosed(session))) => {
                let at = session.closed.as_ref().map(|c| c.at);
                let (refund_sats, status) = closed_before(session.closed);
                (refund_sats, status, at)
            }
            Ok(None) => {
                return refuse(
                    ProblemType::LightningSessionNotFound,
                    "no session has this id",
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "store: cannot close a session");
                return Step::Halt(Halt::Answer(responses::payment_unavailable()));
            }
        };
        let receipt = gate402_mpp::receipt::session_close(&id, refund_sats, &status, now_time());
        let mut body =
            json!({"status": "closed", "refundSats": refund_sats, "refundStatus": status});
        if let Some(at) =
            closed_at.and_then(|at| time::OffsetDateTime::from_unix_timestamp(at as i64).ok())
        {
            body["closedAt"] = json!(gate402_mpp::format_time(at));
        }
        Step::Halt(Halt::Answer(answer(body, &receipt)))
    }

    /// Closes session `id` once its requests in flight have finished
    /// (their debits settled or given back), waiting up to
    /// [`CLOSE_WAITS_FOR`]: what they give back then (a failed request's
    /// debit, the unused part of a usage hold, settled just after its
    /// answer left) reaches the refund. Whether one is in flight is
    /// decided with the close itself ([`Store::close_session`]), so that
    /// a request debiting it at the same moment is waited for too. A
    /// request that outlasts the wait is closed under: what it would give
    /// back is lost to the refund.
    async fn close_when_settled(&self, id: &[u8; 32]) -> Result<Closing, StoreError> {
        let deadline = tokio::time::Instant::now() + CLOSE_WAITS_FOR;
        // A metered stream of it waiting here for a top-up that the
        // close makes pointless ends now, not after its wait.
        let _closing = ClosingMark::mark(self, id);
        loop {
            let waits = tokio::time::Instant::now() < deadline;
            match self.store().close_session(id, unix_now(), waits).await? {
                Closing::InFlight => tokio::time::sleep(CLOSE_POLL).await,
                closing => return Ok(closing),
            }
        }
    }

    /// Whether a close here waits for session `id`'s requests.
    pub(crate) fn is_closing(&self, id: &[u8; 32]) -> bool {
        self.inner
            .closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Pays a closed session's unspent balance to its return invoice, once
    /// (only the call that closed it gets here), and records how it went.
    /// Answers the refund in sats and its status.
    async fn refund(
        &self,
        id: &[u8; 32],
        refund_msat: u64,
        return_invoice: Option<&str>,
    ) -> (u64, String) {
        let refund_sats = refund_msat / 1000;
        let status = match return_invoice {
            _ if refund_sats == 0 => "skipped",
            None => {
                tracing::warn!(session = %hex::encode(id), refund_sats, "a closed balance has no return invoice to refund to");
                "failed"
            }
            Some(invoice) => {
                // The routing fee is the gateway's, within 1% and 10 sat.
                let max_fee_msat = refund_sats * 10 + 10_000;
                match self
                    .backend()
                    .pay_amount(invoice, refund_sats * 1000, max_fee_msat, REFUND_TIMEOUT)
                    .await
                {
                    Ok(_) => "succeeded",
                    Err(PayError::StillPending(_)) => "pending",
                    Err(e) => {
                        tracing::warn!(session = %hex::encode(id), refund_sats, error = %e, "a session's refund failed");
                        "failed"
                    }
                }
            }
        };
        self.record_refund(id, status).await;
        (refund_sats, status.to_owned())
    }

    /// Closes the session `id` now (the operator's close) and refunds its
    /// unspent balance to its return invoice, once across replicas.
    /// Answers the refund in sats and how it went (`succeeded`; `failed`,
    /// also when no return invoice is known; `pending`; `skipped` when
    /// nothing was left), or the record of a session closed before (`None`
    /// when there is none).
    ///
    /// # Errors
    ///
    /// When the store cannot answer; nothing changed then.
    pub async fn close_session(
        &self,
        id: &[u8; 32],
    ) -> Result<Option<SessionClose>, gate402_store::StoreError> {
        // Carried to its end if the caller leaves meanwhile: a session
        // closed without its refund paid would wait for the round that
        // takes up refunds still owed.
        let closing = {
            let (paywall, id) = (self.clone(), *id);
            async move { paywall.close_now(&id).await }
        };
        Detached::new(&self.inner.requests, closing, drop).await
    }

    async fn close_now(
        &self,
        id: &[u8; 32],
    ) -> Result<Option<SessionClose>, gate402_store::StoreError> {
        Ok(match self.close_when_settled(id).await? {
            Closing::NotFound | Closing::InFlight => None,
            Closing::AlreadyClosed(record) => Some(SessionClose::AlreadyClosed(record)),
            Closing::Closed {
                refund_msat,
                return_invoice,
            } => {
                let (refund_sats, status) = self
                    .refund(id, refund_msat, return_invoice.as_deref())
                    .await;
                Some(SessionClose::Closed {
                    refund_sats,
                    status,
                })
            }
        })
    }

    /// Closes and refunds the sessions idle past their timeout (none with
    /// a request in flight: [`Store::close_idle_sessions`]). Only the
    /// replica whose close wins refunds one.
    pub(crate) async fn close_idle(&self) {
        // First: a stopped replica's holds would keep its sessions from
        // ever being idle.
        self.give_back_debits_of_stopped().await;
        match self.store().close_idle_sessions(unix_now(), 100).await {
            Ok(closed) => {
                for ClosedIdle {
                    id,
                    refund_msat,
                    return_invoice,
                } in closed
                {
                    let (refund_sats, status) = self
                        .refund(&id, refund_msat, return_invoice.as_deref())
                        .await;
                    tracing::info!(session = %hex::encode(id), refund_sats, status, "an idle session was closed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "store: cannot close idle sessions"),
        }
        self.settle_owed_refunds().await;
    }

    /// Gives back the debits of replicas that stopped and did not start
    /// again. A replica's holds come back at its own next start; one that
    /// never starts again (a lost machine, a data dir gone) would keep
    /// them, and its sessions from ever being idle. A replica seen
    /// stopped (no process holds its name) for a claim lease is taken for
    /// gone, as its claims are, and its debits are given back with its
    /// name held, so that it cannot start meanwhile.
    async fn give_back_debits_of_stopped(&self) {
        let store = self.store();
        let holders = match store.debit_holders().await {
            Ok(holders) => holders,
            Err(e) => {
                tracing::warn!(error = %e, "store: cannot list the replicas holding debits");
                return;
            }
        };
        let own = self.inner.claims.replica();
        let mut stopped = Vec::new();
        for replica in holders.into_iter().filter(|r| r != own) {
            match store.replica_running(&replica).await {
                Ok(false) => stopped.push(replica),
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "store: cannot tell whether a replica runs");
                    return;
                }
            }
        }
        let now = std::time::Instant::now();
        let lease = self.inner.claims.lease();
        let due: Vec<String> = {
            let mut since = self
                .inner
                .stopped_since
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            since.retain(|replica, _| stopped.contains(replica));
            stopped
                .into_iter()
                .filter(|replica| {
                    let seen = *since.entry(replica.clone()).or_insert(now);
                    now.duration_since(seen) >= lease
                })
                .collect()
        };
        for replica in due {
            match store.undo_debits_of_stopped(&replica).await {
                Ok(Some(debits)) => tracing::warn!(
                    %replica,
                    debits,
                    "gave back the debits of a replica that stopped and did not start again"
                ),
                // It started again meanwhile, and gave them back itself.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "store: cannot give a stopped replica's debits back")
                }
            }
        }
    }

    /// Why a return invoice can take no refund: this node paid it already,
    /// or is paying it, or issued it and was paid (the sandbox, whose
    /// wallets are one node's) (an invoice is paid once; the store knows
    /// only the sessions' own). `None` when the node knows of no payment,
    /// or cannot say (the refund asks again before it pays).
    async fn return_invoice_paid(&self, bolt11: &str) -> Option<&'static str> {
        let invoice = gate402_bolt11::Invoice::parse(bolt11).ok()?;
        let hash = invoice.payment_hash();
        match self.backend().payment_status(&hash).await {
            Ok(PaymentStatus::Succeeded(_)) => {
                return Some(
                    "this node has paid this return invoice already, and an invoice is paid once: make a new one",
                )
            }
            Ok(PaymentStatus::Pending) => {
                return Some(
                    "this node is paying this return invoice, and an invoice is paid once: make a new one",
                )
            }
            Ok(PaymentStatus::Unknown | PaymentStatus::Failed(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the node cannot say whether it paid a return invoice: the session opens");
            }
        }
        // Another node's invoice is not found: nothing to say.
        match self.backend().invoice_status(&hash).await {
            Ok(InvoiceStatus::Settled { .. }) => Some(
                "this return invoice was paid already (its node says so), and an invoice is paid once: make a new one",
            ),
            _ => None,
        }
    }

    /// Takes up the refunds still owed ([`REFUND_RETRY_SECS`] after they
    /// were last taken): one whose payer died before paying or recording
    /// it, one in flight when its payer stopped waiting, one that failed.
    /// The node says first whether it paid the return invoice already, so
    /// that nothing is refunded twice; one whose return invoice expired
    /// stays `failed` for the operator.
    async fn settle_owed_refunds(&self) {
        let now = unix_now();
        let owed = match self
            .store()
            .take_owed_refunds(now.saturating_sub(REFUND_RETRY_SECS), now, 100)
            .await
        {
            Ok(owed) => owed,
            Err(e) => {
                tracing::warn!(error = %e, "store: cannot look for refunds still owed");
                return;
            }
        };
        for owed in owed {
            let session = hex::encode(owed.id);
            let invoice = match gate402_bolt11::Invoice::parse(&owed.return_invoice) {
                Ok(invoice) => invoice,
                Err(e) => {
                    tracing::warn!(%session, error = %e, "a refund's return invoice does not parse");
                    self.record_refund(&owed.id, "failed").await;
                    continue;
                }
            };
            let status = match self.backend().payment_status(&invoice.payment_hash()).await {
                // Paid this refund's amount. (Another amount: paid for
                // another session naming the same return invoice, which
                // can be paid once: this refund is owed still.)
                Ok(PaymentStatus::Succeeded(paid))
                    if paid.amount_msat == owed.refund_msat / 1000 * 1000 =>
                {
                    "succeeded"
                }
                Ok(PaymentStatus::Succeeded(_)) => {
                    tracing::warn!(%session, refund_sats = owed.refund_msat / 1000, "a refund is owed but its return invoice was paid for another session; pay it by hand");
                    "failed"
                }
                Ok(PaymentStatus::Pending) => "pending",
                Ok(PaymentStatus::Unknown | PaymentStatus::Failed(_))
                    if invoice.is_expired_at(std::time::SystemTime::now()) =>
                {
                    tracing::warn!(%session, refund_sats = owed.refund_msat / 1000, "a refund is owed but its return invoice expired; pay it by hand");
                    "failed"
                }
                Ok(PaymentStatus::Unknown | PaymentStatus::Failed(_)) => {
                    let (refund_sats, status) = self
                        .refund(&owed.id, owed.refund_msat, Some(&owed.return_invoice))
                        .await;
                    tracing::info!(%session, refund_sats, status, "a refund still owed was tried again");
                    continue;
                }
                // Asked again at the next round.
                Err(e) => {
                    tracing::warn!(%session, error = %e, "the node cannot say whether a refund was paid");
                    "pending"
                }
            };
            self.record_refund(&owed.id, status).await;
        }
    }

    /// Records how a refund went; one that succeeded is counted then,
    /// whichever way it was paid.
    async fn record_refund(&self, id: &[u8; 32], status: &str) {
        if let Err(e) = self.store().record_refund(id, status).await {
            tracing::error!(error = %e, "store: cannot record a refund");
            return;
        }
        if status != "succeeded" {
            return;
        }
        match self.store().session(id).await {
            Ok(Some(session)) => {
                let sats = session.closed.map_or(0, |c| c.refund_msat / 1000);
                self.inner.metrics.refunded(&session.service, sats);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "store: cannot read a refunded session"),
        }
    }
}

/// What [`Paywall::close_session`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionClose {
    /// Closed by this call: the refund in sats and how it went.
    Closed {
        /// The unspent balance refunded, in satoshis.
        refund_sats: u64,
        /// `succeeded`, `failed`, `pending` or `skipped`.
        status: String,
    },
    /// Closed before; its record.
    AlreadyClosed(gate402_store::SessionRecord),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Closes that meet a close still recording its refund of nothing say
    /// `skipped`, as the first does, not `pending`.
    #[test]
    fn a_close_asked_again_says_a_refund_of_nothing_was_skipped() {
        let closed = |refund_msat: u64, status: &str| {
            closed_before(Some(gate402_store::ClosedSession {
                at: 1,
                refund_msat,
                refund_status: status.into(),
            }))
        };
        assert_eq!(closed(0, "pending"), (0, "skipped".into()));
        assert_eq!(closed(999, "pending"), (0, "skipped".into()));
        assert_eq!(closed(5_000, "pending"), (5, "pending".into()));
        assert_eq!(closed(5_000, "succeeded"), (5, "succeeded".into()));
        assert_eq!(closed_before(None), (0, "skipped".into()));
    }

    /// A request dropped while its debit is being taken (its client left)
    /// holds nothing from the balance: the debit, taken anyway, is given
    /// back.
    #[tokio::test]
    async fn a_debit_whose_request_left_is_given_back() {
        let chat = Arc::new(PricedService::new("chat", "/chat", 2).balance(5));
        let fixture = crate::fixture::paywall([(*chat).clone()]).await;
        let paywall = &fixture.paywall;
        let id = [9; 32];
        let opened = paywall
            .store()
            .open_session(&NewSession {
                id,
                service: "chat".into(),
                deposit_msat: 10_000,
                return_invoice: None,
                idle_secs: 600,
                unit_msat: 2_000,
                now: unix_now(),
            })
            .await
            .unwrap();
        assert_eq!(opened, Opened::New);
        let spent = || async {
            let session = paywall.store().session(&id).await.unwrap().unwrap();
            session.spent_msat
        };
        // Polled once (the store has the call), then dropped.
        let mut debit = Box::pin(paywall.debit(&chat, &id));
        tokio::select! {
            biased;
            _ = &mut debit => panic!("the store answered within one poll"),
            () = std::future::ready(()) => {}
        }
        drop(debit);
        let mut waited = Duration::ZERO;
        while spent().await != 0 && waited < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        assert_eq!(spent().await, 0, "the debit of a request that left is held");
    }
}
