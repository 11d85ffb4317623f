//! Traces and call timings.
//!
//! - [`request_span`]: the span of each request the paywall handles, with
//!   fields named after OpenTelemetry's HTTP server semantic conventions
//!   (`http.request.method`, `url.path`, `http.route`,
//!   `http.response.status_code`) and the paywall's own
//!   (`gate402.service`, `gate402.auth.scheme`, `gate402.payment_hash`);
//! - [`ObservedStore`] and [`ObservedBackend`]: a [`Store`] and a
//!   [`LightningBackend`] that time every call into a histogram of
//!   [`Metrics`] and, inside a request, into a child span.
//!
//! Spans are `tracing` spans at INFO (`otel.*` fields are read by
//! `tracing-opentelemetry`). With no subscriber that wants them, a span
//! costs a callsite check and nothing is allocated. No field ever holds a
//! credential, preimage, macaroon or secret: the payment hash, public in
//! the invoice, is the only payment datum recorded.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gate402_lightning::{
    CreatedInvoice, InvoiceRequest, InvoiceStatus, InvoiceSummary, LightningBackend,
    LightningError, Liquidity, Network, NodeInfo, PayError, PaymentHash, PaymentOutcome,
    PaymentStatus,
};
use gate402_store::{
    AdminVersions, AfterFailure, AuditEntry, ChallengeCount, ClaimHolder, ClosedIdle, Closing,
    Debit, InvoiceRecord, NewSession, OpenSessions, Opened, OwedRefund, PaymentQuery,
    PaymentRecord, PaymentRow, RefundsOwed, Reservation, RevenueBucket, Revocation, ServiceChange,
    SessionRecord, Store, StoreError, StoredResponse, TopUp,
};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::{display, Empty};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::Metrics;
use crate::route::PricedService;

/// The span of one request, named `request` (its OpenTelemetry name is
/// the method, then `{method} {route}` once routed), server kind. When an
/// OpenTelemetry layer records it, it joins the trace a W3C `traceparent`
/// names (as the caller's child), and its trace id is also its `trace_id`
/// field, so that log lines written inside the request carry it.
pub fn request_span<B>(request: &http::Request<B>) -> Span {
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        url.path = request.uri().path(),
        http.route = Empty,
        http.response.status_code = Empty,
        gate402.service = Empty,
        gate402.auth.scheme = Empty,
        gate402.payment_hash = Empty,
        trace_id = Empty,
    );
    if !span.is_disabled() {
        let caller = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        if caller.span().span_context().is_valid() {
            // Only fails on a span already started, which this one is not.
            let _ = span.set_parent(caller);
        }
        let context = span.context();
        let trace = context.span().span_context().trace_id();
        if trace != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", display(trace));
        }
    }
    span
}

/// Records on the current request span the service `method` was routed
/// to, and its route; its OpenTelemetry name becomes `{method} {route}`.
pub(crate) fn routed(method: &http::Method, service: &PricedService) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    let route = service.path.as_written();
    span.record("gate402.service", service.name.as_str());
    span.record("http.route", route.as_str());
    // Started when first entered, the span takes no new `otel.name`: it
    // is renamed through its OpenTelemetry handle.
    let context = span.context();
    let traced = context.span();
    if traced.span_context().is_valid() {
        traced.update_name(format!("{method} {route}"));
    }
}

/// Records on the current request span the scheme of the credential
/// presented (`L402`, `Payment`, `x402`); never the credential.
pub(crate) fn scheme(scheme: &'static str) {
    Span::current().record("gate402.auth.scheme", scheme);
}

/// Records on the current request span the payment hash the request
/// paid with, or was offered an invoice for.
pub(crate) fn payment_hash(hash: &[u8; 32]) {
    Span::current().record("gate402.payment_hash", display(Hex(hash)));
}

/// Records the answer on `span`: its status, and an error for a 5xx or
/// no answer at all (server spans leave 4xx unset, as the conventions say).
pub(crate) fn responded(span: &Span, status: Option<http::StatusCode>) {
    if span.is_disabled() {
        return;
    }
    if let Some(status) = status {
        span.record("http.response.status_code", status.as_u16());
    }
    if status.is_none_or(|s| s.is_server_error()) {
        span.record("otel.status_code", "ERROR");
    }
}

/// A request's header fields, as OpenTelemetry's propagators read them.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Lowercase hex, written without a string of its own.
struct Hex<'a>(&'a [u8; 32]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The OpenTelemetry `error.type` of a failed call: its variant, never
/// its message (which may quote what the node or database said).
trait ErrorType {
    fn error_type(&self) -> &'static str;
}

impl ErrorType for StoreError {
    fn error_type(&self) -> &'static str {
        match self {
            StoreError::Database(_) => "database",
            StoreError::Unavailable(_) => "unavailable",
        }
    }
}

impl ErrorType for LightningError {
    fn error_type(&self) -> &'static str {
        match self {
            LightningError::Unavailable(_) => "unavailable",
            LightningError::Unauthorized(_) => "unauthorized",
            LightningError::Rejected(_) => "rejected",
            LightningError::NotFound(_) => "not_found",
            LightningError::Timeout(_) => "timeout",
            LightningError::Protocol(_) => "protocol",
            LightningError::Unsupported(_) => "unsupported",
        }
    }
}

impl ErrorType for PayError {
    fn error_type(&self) -> &'static str {
        match self {
            PayError::InvalidInvoice(_) => "invalid_invoice",
            PayError::WrongNetwork { .. } => "wrong_network",
            PayError::InvoiceExpired(_) => "invoice_expired",
            PayError::NoAmount => "no_amount",
            PayError::InvoiceHasAmount(_) => "invoice_has_amount",
            PayError::ZeroAmount => "zero_amount",
            PayError::AmountTooLarge(_) => "amount_too_large",
            PayError::NoRoute { .. } => "no_route",
            PayError::NotSent(_) => "not_sent",
            PayError::Rejected(_) => "rejected",
            PayError::AlreadyPaid(_) => "already_paid",
            PayError::InsufficientBalance(_) => "insufficient_balance",
            PayError::StillPending(_) => "still_pending",
            PayError::Backend(e) => e.error_type(),
        }
    }
}

/// Which histogram a call goes to.
#[derive(Clone, Copy)]
enum Component {
    Store,
    Lightning,
}

/// Runs `call`: timed into its histogram and, inside a traced request, a
/// child `span` (calls made outside one, by background work, start no
/// trace of their own). `name` is the span's OpenTelemetry name,
/// `<component>.<method>`; the histogram's label is the method.
async fn timed<T, E: ErrorType>(
    metrics: &Metrics,
    component: Component,
    name: &'static str,
    span: impl FnOnce(&Span) -> Span,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let parent = Span::current();
    let span = if parent.is_none() {
        Span::none()
    } else {
        span(&parent)
    };
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    let elapsed: Duration = started.elapsed();
    let method = name.split_once('.').map_or(name, |(_, method)| method);
    match component {
        Component::Store => metrics.store_call(method, elapsed),
        Component::Lightning => metrics.lightning_call(method, elapsed),
    }
    if let Err(e) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", e.error_type());
    }
    result
}

/// A [`Store`] that times every call into
/// `gate402_store_call_duration_seconds{call}` and, inside a request, into
/// a child span (`store.<method>`, client kind, `db.system.name`,
/// `db.operation.name`).
///
/// Every method is forwarded, those with a default body too: a default
/// left in place would answer for the wrapped store's own. A method added
/// to [`Store`] must be added here.
pub struct ObservedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    system: &'static str,
}

impl ObservedStore {
    /// Wraps `inner`, whose database is `system` (OpenTelemetry's
    /// `db.system.name`: `sqlite`, `postgresql`); timings go to `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>, system: &'static str) -> Self {
        Self {
            inner,
            metrics,
            system,
        }
    }

    async fn timed<T>(
        &self,
        name: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let system = self.system;
        let span = |parent: &Span| {
            tracing::info_span!(
                parent: parent,
                "store",
                otel.name = name,
                otel.kind = "client",
                otel.status_code = Empty,
                error.type = Empty,
                db.system.name = system,
                db.operation.name = name.trim_start_matches("store."),
            )
        };
        timed(&self.metrics, Component::Store, name, span, call).await
    }
}

#[async_trait]
impl Store for ObservedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("store.ping", self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn hold_replica(&self, replica: &str) -> Result<bool, StoreError> {
        self.timed("store.hold_replica", self.inner.hold_replica(replica))
            .await
    }

    async fn put_invoice(&self, invoice: &InvoiceRecord) -> Result<(), StoreError> {
        self.timed("store.put_invoice", self.inner.put_invoice(invoice))
            .await
    }

    async fn invoice(&self, payment_hash: &[u8; 32]) -> Result<Option<InvoiceRecord>, StoreError> {
        self.timed("store.invoice", self.inner.invoice(payment_hash))
            .await
    }

    async fn claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        expires_at: u64,
        lease_until: u64,
        now: u64,
    ) -> Result<Reservation, StoreError> {
        self.timed(
            "store.claim",
            self.inner.claim(key, holder, expires_at, lease_until, now),
        )
        .await
    }

    async fn renew_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        lease_until: u64,
    ) -> Result<bool, StoreError> {
        self.timed(
            "store.renew_claim",
            self.inner.renew_claim(key, holder, lease_until),
        )
        .await
    }

    async fn commit_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.timed(
            "store.commit_claim",
            self.inner.commit_claim(key, holder, now),
        )
        .await
    }

    async fn commit_claims(
        &self,
        claims: &[(String, ClaimHolder)],
        now: u64,
    ) -> Result<Vec<bool>, StoreError> {
        self.timed("store.commit_claims", self.inner.commit_claims(claims, now))
            .await
    }

    async fn commit_claim_with_debit(
        &self,
        key: &str,
        holder: &ClaimHolder,
        debit: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.timed(
            "store.commit_claim_with_debit",
            self.inner
                .commit_claim_with_debit(key, holder, debit, kept_msat, now),
        )
        .await
    }

    async fn release_claim(&self, key: &str, holder: &ClaimHolder) -> Result<bool, StoreError> {
        self.timed("store.release_claim", self.inner.release_claim(key, holder))
            .await
    }

    async fn fail_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        spend_at: u32,
        now: u64,
    ) -> Result<AfterFailure, StoreError> {
        self.timed(
            "store.fail_claim",
            self.inner.fail_claim(key, holder, spend_at, now),
        )
        .await
    }

    async fn release_claims_of(&self, replica: &str) -> Result<u64, StoreError> {
        self.timed(
            "store.release_claims_of",
            self.inner.release_claims_of(replica),
        )
        .await
    }

    async fn legacy_claims_until(&self) -> Result<u64, StoreError> {
        self.timed(
            "store.legacy_claims_until",
            self.inner.legacy_claims_until(),
        )
        .await
    }

    async fn legacy_consumed(&self, id: &str) -> Result<bool, StoreError> {
        self.timed("store.legacy_consumed", self.inner.legacy_consumed(id))
            .await
    }

    async fn record_payments(&self, payments: &[PaymentRecord]) -> Result<Vec<bool>, StoreError> {
        self.timed(
            "store.record_payments",
            self.inner.record_payments(payments),
        )
        .await
    }

    async fn record_payment(&self, payment: &PaymentRecord) -> Result<bool, StoreError> {
        self.timed("store.record_payment", self.inner.record_payment(payment))
            .await
    }

    async fn count_freebie(&self, client: &str, service: &str) -> Result<u64, StoreError> {
        self.timed(
            "store.count_freebie",
            self.inner.count_freebie(client, service),
        )
        .await
    }

    async fn return_freebie(
        &self,
        client: &str,
        service: &str,
        free: u64,
        reached: bool,
    ) -> Result<bool, StoreError> {
        self.timed(
            "store.return_freebie",
            self.inner.return_freebie(client, service, free, reached),
        )
        .await
    }

    async fn put_response(&self, response: &StoredResponse) -> Result<(), StoreError> {
        self.timed("store.put_response", self.inner.put_response(response))
            .await
    }

    async fn stored_response(
        &self,
        claim_key: &str,
        idempotency_key: &str,
        now: u64,
    ) -> Result<Option<StoredResponse>, StoreError> {
        self.timed(
            "store.stored_response",
            self.inner.stored_response(claim_key, idempotency_key, now),
        )
        .await
    }

    async fn open_session(&self, session: &NewSession) -> Result<Opened, StoreError> {
        self.timed("store.open_session", self.inner.open_session(session))
            .await
    }

    async fn session(&self, id: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        self.timed("store.session", self.inner.session(id)).await
    }

    async fn open_sessions(&self, limit: u64) -> Result<OpenSessions, StoreError> {
        self.timed("store.open_sessions", self.inner.open_sessions(limit))
            .await
    }

    async fn refunds_owed(&self, limit: u64) -> Result<RefundsOwed, StoreError> {
        self.timed("store.refunds_owed", self.inner.refunds_owed(limit))
            .await
    }

    async fn debit(
        &self,
        id: &[u8; 32],
        service: &str,
        units: u64,
        unit_msat: u64,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<Debit, StoreError> {
        self.timed(
            "store.debit",
            self.inner.debit(id, service, units, unit_msat, holder, now),
        )
        .await
    }

    async fn settle_debit(
        &self,
        holder: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.timed(
            "store.settle_debit",
            self.inner.settle_debit(holder, kept_msat, now),
        )
        .await
    }

    async fn undo_debit(&self, holder: &ClaimHolder) -> Result<bool, StoreError> {
        self.timed("store.undo_debit", self.inner.undo_debit(holder))
            .await
    }

    async fn fail_debit(
        &self,
        holder: &ClaimHolder,
        spend_at: u32,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<AfterFailure, StoreError> {
        self.timed(
            "store.fail_debit",
            self.inner.fail_debit(holder, spend_at, kept_msat, now),
        )
        .await
    }

    async fn undo_debits_of(&self, replica: &str) -> Result<u64, StoreError> {
        self.timed("store.undo_debits_of", self.inner.undo_debits_of(replica))
            .await
    }

    async fn has_held_debits(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        self.timed("store.has_held_debits", self.inner.has_held_debits(id))
            .await
    }

    async fn debit_holders(&self) -> Result<Vec<String>, StoreError> {
        self.timed("store.debit_holders", self.inner.debit_holders())
            .await
    }

    async fn put_secret_check(
        &self,
        replica: &str,
        check: &gate402_store::SecretCheck,
    ) -> Result<(), StoreError> {
        self.timed(
            "store.put_secret_check",
            self.inner.put_secret_check(replica, check),
        )
        .await
    }

    async fn secret_checks(&self) -> Result<Vec<(String, gate402_store::SecretCheck)>, StoreError> {
        self.timed("store.secret_checks", self.inner.secret_checks())
            .await
    }

    async fn replica_running(&self, replica: &str) -> Result<bool, StoreError> {
        self.timed("store.replica_running", self.inner.replica_running(replica))
            .await
    }

    async fn undo_debits_of_stopped(&self, replica: &str) -> Result<Option<u64>, StoreError> {
        self.timed(
            "store.undo_debits_of_stopped",
            self.inner.undo_debits_of_stopped(replica),
        )
        .await
    }

    async fn top_up(
        &self,
        id: &[u8; 32],
        payment_hash: &[u8; 32],
        amount_msat: u64,
        now: u64,
    ) -> Result<TopUp, StoreError> {
        self.timed(
            "store.top_up",
            self.inner.top_up(id, payment_hash, amount_msat, now),
        )
        .await
    }

    async fn close_session(
        &self,
        id: &[u8; 32],
        now: u64,
        unless_in_flight: bool,
    ) -> Result<Closing, StoreError> {
        self.timed(
            "store.close_session",
            self.inner.close_session(id, now, unless_in_flight),
        )
        .await
    }

    async fn record_refund(&self, id: &[u8; 32], status: &str) -> Result<(), StoreError> {
        self.timed("store.record_refund", self.inner.record_refund(id, status))
            .await
    }

    async fn take_owed_refunds(
        &self,
        taken_before: u64,
        now: u64,
        limit: u64,
    ) -> Result<Vec<OwedRefund>, StoreError> {
        self.timed(
            "store.take_owed_refunds",
            self.inner.take_owed_refunds(taken_before, now, limit),
        )
        .await
    }

    async fn close_idle_sessions(
        &self,
        now: u64,
        limit: u64,
    ) -> Result<Vec<ClosedIdle>, StoreError> {
        self.timed(
            "store.close_idle_sessions",
            self.inner.close_idle_sessions(now, limit),
        )
        .await
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        self.timed("store.purge_expired", self.inner.purge_expired(now))
            .await
    }

    async fn purge_records(
        &self,
        created_before: u64,
        served_before: u64,
    ) -> Result<u64, StoreError> {
        self.timed(
            "store.purge_records",
            self.inner.purge_records(created_before, served_before),
        )
        .await
    }

    async fn put_service_change(&self, change: &ServiceChange) -> Result<u64, StoreError> {
        self.timed(
            "store.put_service_change",
            self.inner.put_service_change(change),
        )
        .await
    }

    async fn service_changes(&self) -> Result<Vec<ServiceChange>, StoreError> {
        self.timed("store.service_changes", self.inner.service_changes())
            .await
    }

    async fn revoke(&self, payment_hash: &[u8; 32], at: u64, by: &str) -> Result<bool, StoreError> {
        self.timed("store.revoke", self.inner.revoke(payment_hash, at, by))
            .await
    }

    async fn revocations(&self, after: u64) -> Result<Vec<Revocation>, StoreError> {
        self.timed("store.revocations", self.inner.revocations(after))
            .await
    }

    async fn admin_versions(&self) -> Result<AdminVersions, StoreError> {
        self.timed("store.admin_versions", self.inner.admin_versions())
            .await
    }

    async fn add_challenge_counts(&self, counts: &[ChallengeCount]) -> Result<(), StoreError> {
        self.timed(
            "store.add_challenge_counts",
            self.inner.add_challenge_counts(counts),
        )
        .await
    }

    async fn challenge_counts(
        &self,
        since: u64,
        until: u64,
    ) -> Result<Vec<ChallengeCount>, StoreError> {
        self.timed(
            "store.challenge_counts",
            self.inner.challenge_counts(since, until),
        )
        .await
    }

    async fn payments(&self, query: &PaymentQuery) -> Result<Vec<PaymentRow>, StoreError> {
        self.timed("store.payments", self.inner.payments(query))
            .await
    }

    async fn revenue(
        &self,
        since: u64,
        until: u64,
        bucket_secs: u64,
    ) -> Result<Vec<RevenueBucket>, StoreError> {
        self.timed(
            "store.revenue",
            self.inner.revenue(since, until, bucket_secs),
        )
        .await
    }

    async fn log_admin(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.timed("store.log_admin", self.inner.log_admin(entry))
            .await
    }

    async fn admin_log(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.timed("store.admin_log", self.inner.admin_log(limit))
            .await
    }
}

/// A [`LightningBackend`] that times every call into
/// `gate402_lightning_call_duration_seconds{call}` and, inside a request,
/// into a child span (`lightning.<method>`, client kind,
/// `gate402.lightning.backend`). Never records an invoice, a preimage or
/// a node's credentials.
///
/// Every method is forwarded, those with a default body too: a default
/// left in place would answer for the wrapped backend's own. A method
/// added to [`LightningBackend`] must be added here.
pub struct ObservedBackend {
    inner: Arc<dyn LightningBackend>,
    metrics: Arc<Metrics>,
    backend: &'static str,
}

impl ObservedBackend {
    /// Wraps `inner`, named `backend` in spans (`sandbox`, `lnd`…);
    /// timings go to `metrics`.
    pub fn new(
        inner: Arc<dyn LightningBackend>,
        metrics: Arc<Metrics>,
        backend: &'static str,
    ) -> Self {
        Self {
            inner,
            metrics,
            backend,
        }
    }

    async fn timed<T, E: ErrorType>(
        &self,
        name: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let backend = self.backend;
        let span = |parent: &Span| {
            tracing::info_span!(
                parent: parent,
                "lightning",
                otel.name = name,
                otel.kind = "client",
                otel.status_code = Empty,
                error.type = Empty,
                gate402.lightning.backend = backend,
            )
        };
        timed(&self.metrics, Component::Lightning, name, span, call).await
    }
}

#[async_trait]
impl LightningBackend for ObservedBackend {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        self.timed(
            "lightning.create_invoice",
            self.inner.create_invoice(request),
        )
        .await
    }

    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        self.timed("lightning.invoice_status", self.inner.invoice_status(hash))
            .await
    }

    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError> {
        self.timed(
            "lightning.wait_invoice",
            self.inner.wait_invoice(hash, timeout),
        )
        .await
    }

    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.timed(
            "lightning.pay",
            self.inner.pay(bolt11, max_fee_msat, timeout),
        )
        .await
    }

    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.timed(
            "lightning.pay_amount",
            self.inner
                .pay_amount(bolt11, amount_msat, max_fee_msat, timeout),
        )
        .await
    }

    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        self.timed("lightning.payment_status", self.inner.payment_status(hash))
            .await
    }

    async fn node_info(&self) -> Result<NodeInfo, LightningError> {
        self.timed("lightning.node_info", self.inner.node_info())
            .await
    }

    async fn liquidity(&self) -> Result<Liquidity, LightningError> {
        self.timed("lightning.liquidity", self.inner.liquidity())
            .await
    }

    async fn recent_invoices(&self, limit: usize) -> Result<Vec<InvoiceSummary>, LightningError> {
        self.timed(
            "lightning.recent_invoices",
            self.inner.recent_invoices(limit),
        )
        .await
    }

    async fn network(&self) -> Result<Network, LightningError> {
        self.timed("lightning.network", self.inner.network()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` of a call's histogram in the exposition.
    fn count(metrics: &Metrics, name: &str, call: &str) -> u64 {
        metrics
            .sample(&format!("{name}_count{{call=\"{call}\"}}"))
            .unwrap_or(0)
    }

    /// The methods with a default body reach the wrapped backend's own:
    /// the sandbox reports its liquidity and invoices, which the trait's
    /// defaults would call unsupported.
    #[tokio::test]
    async fn a_backend_is_forwarded_every_call_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = gate402_lightning_sandbox::Sandbox::open(dir.path()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let observed = ObservedBackend::new(Arc::new(sandbox), metrics.clone(), "sandbox");
        assert!(observed.liquidity().await.unwrap().unlimited);
        let created = observed
            .create_invoice(InvoiceRequest {
                amount_msat: 1_000,
                memo: "observed".into(),
                expiry_secs: 600,
            })
            .await
            .unwrap();
        let listed = observed.recent_invoices(10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].payment_hash, created.payment_hash);
        assert_eq!(observed.network().await.unwrap(), Network::Regtest);
        let unknown = observed.invoice_status(&[7; 32]).await;
        assert!(matches!(unknown, Err(LightningError::NotFound(_))));
        let name = "gate402_lightning_call_duration_seconds";
        for call in [
            "liquidity",
            "create_invoice",
            "recent_invoices",
            "network",
            "invoice_status",
        ] {
            assert_eq!(count(&metrics, name, call), 1, "{call}");
        }
    }

    #[tokio::test]
    async fn a_store_is_forwarded_every_call_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = gate402_store::SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        let metrics = Arc::new(Metrics::default());
        let observed = ObservedStore::new(Arc::new(sqlite), metrics.clone(), "sqlite");
        let payment = PaymentRecord {
            payment_hash: [1; 32],
            service: "weather".into(),
            scheme: "L402".into(),
            amount_msat: 10_000,
            at: 1,
            served: 1,
        };
        assert!(observed.record_payment(&payment).await.unwrap());
        assert!(!observed.record_payment(&payment).await.unwrap());
        assert_eq!(observed.invoice(&[1; 32]).await.unwrap(), None);
        let name = "gate402_store_call_duration_seconds";
        assert_eq!(count(&metrics, name, "record_payment"), 2);
        assert_eq!(count(&metrics, name, "invoice"), 1);
        // The default record_payment was not used: it would go through
        // this wrapper's record_payments.
        assert_eq!(count(&metrics, name, "record_payments"), 0);
    }
}
