//! The paywall: a tower [`Layer`] that answers unpaid requests to priced
//! routes with `402` (one invoice, an L402 and an MPP challenge), and lets
//! paid ones through to the service it wraps, with a `Payment-Receipt`.
//!
//! Pay for success: a credential counts as spent only when the wrapped
//! service answered without a server error. If the upstream fails (5xx,
//! timeout, refused connection) the MPP challenge is released and the L402
//! token keeps its standing, so the client retries without paying again.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use gate402_l402::caveat::{Caveat, RequestContext, Service};
use gate402_l402::{
    verify as verify_l402, L402Challenge, L402Credential, RootKey, RootKeySecrets, Scheme,
    VerifyError as L402VerifyError,
};
use gate402_lightning::{InvoiceRequest, LightningBackend, Network};
use gate402_mpp::accept::AcceptPayment;
use gate402_mpp::challenge::{to_header, ChallengeKey, NewChallenge};
use gate402_mpp::lightning::{ChargeRequest, CHARGE, METHOD};
use gate402_mpp::problem::ProblemType;
use gate402_mpp::verify::{scope_opaque, verify_lightning_charge, ExpectedCharge};
use gate402_mpp::{PaymentChallenge, PaymentCredential, Receipt};
use gate402_store::{ReceiptRecord, Reservation, Store};
use serde_json::json;
use tower::Layer;

use crate::config::{Auth, ServiceConfig};
use crate::limits::{Limited, Limits, LimitsConfig};
use crate::metrics::Metrics;
use crate::problem::problem_response;
use crate::proxy::{MatchedService, UPSTREAM_TIMEOUT};

/// The largest credential read: a genuine L402 token or MPP credential is
/// a few hundred bytes; a bigger one is refused before any parsing.
const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// How long a request may hold an MPP challenge before another may take it.
const LEASE_SECS: u64 = UPSTREAM_TIMEOUT.as_secs() + 60;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The paywall's state, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct Paywall {
    inner: Arc<State>,
}

struct State {
    services: RwLock<Arc<Vec<Arc<ServiceConfig>>>>,
    backend: Arc<dyn LightningBackend>,
    network: Network,
    test_money: bool,
    store: Arc<dyn Store>,
    key: ChallengeKey,
    root_keys: RootKeySecrets,
    replica: String,
    realm: String,
    invoice_expiry_secs: u32,
    metrics: Arc<Metrics>,
    limits: Limits,
}

/// What the paywall needs to run.
pub struct PaywallParts {
    /// Creates invoices.
    pub backend: Arc<dyn LightningBackend>,
    /// Keeps root keys and consumed challenges.
    pub store: Arc<dyn Store>,
    /// Binds MPP challenge ids.
    pub key: ChallengeKey,
    /// Derives L402 root keys, so that a 402 stores nothing.
    pub root_keys: RootKeySecrets,
    /// Names this gateway's claims on MPP challenges in the store; stable
    /// across restarts, so a restarted replica releases the claims its
    /// killed predecessor left (see [`Paywall::release_abandoned_claims`]).
    pub replica: String,
    /// The MPP realm.
    pub realm: String,
    /// How long a 402 stays payable.
    pub invoice_expiry_secs: u32,
    /// The priced services, first match wins.
    pub services: Vec<ServiceConfig>,
    /// Where counters go.
    pub metrics: Arc<Metrics>,
    /// Rate limits and the cap on unpaid invoices.
    pub limits: LimitsConfig,
}

impl Paywall {
    /// A paywall over `parts`; asks the backend for its network.
    pub async fn new(parts: PaywallParts) -> anyhow::Result<Self> {
        let info = parts.backend.node_info().await?;
        Ok(Self {
            inner: Arc::new(State {
                services: RwLock::new(Arc::new(parts.services.into_iter().map(Arc::new).collect())),
                backend: parts.backend,
                network: info.network,
                test_money: info.backend == "sandbox",
                store: parts.store,
                key: parts.key,
                root_keys: parts.root_keys,
                replica: parts.replica,
                realm: parts.realm,
                invoice_expiry_secs: parts.invoice_expiry_secs,
                metrics: parts.metrics,
                limits: Limits::new(&parts.limits),
            }),
        })
    }

    /// Releases the claims on MPP challenges this replica held when it last
    /// stopped: a process killed mid-request leaves them held, and their
    /// clients, who paid and were never answered, retry. Call once at start,
    /// before serving. Returns how many were released.
    pub async fn release_abandoned_claims(&self) -> Result<u64, gate402_store::StoreError> {
        self.inner
            .store
            .release_leases_of(&self.inner.replica)
            .await
    }

    /// The layer to wrap an app or the proxy with.
    pub fn layer(&self) -> PaywallLayer {
        PaywallLayer(self.clone())
    }

    /// The current services.
    pub fn services(&self) -> Arc<Vec<Arc<ServiceConfig>>> {
        self.inner
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the services (config reload); requests in flight finish
    /// with the services they started with.
    pub fn set_services(&self, services: Vec<ServiceConfig>) {
        *self
            .inner
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner()) =
            Arc::new(services.into_iter().map(Arc::new).collect());
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn route(
        &self,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
    ) -> Option<Arc<ServiceConfig>> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                h.rsplit_once(':')
                    .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                    .map_or(h, |(host, _)| host)
            });
        self.services()
            .iter()
            .find(|s| s.matches(host, method, path))
            .cloned()
    }
}

/// [`Layer`] that puts the paywall in front of a service.
#[derive(Clone)]
pub struct PaywallLayer(Paywall);

impl<S> Layer<S> for PaywallLayer {
    type Service = PaywallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaywallService {
            paywall: self.0.clone(),
            inner,
        }
    }
}

/// The paywall around an inner service.
#[derive(Clone)]
pub struct PaywallService<S> {
    paywall: Paywall,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for PaywallService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let paywall = self.paywall.clone();
        Box::pin(async move { Ok(paywall.handle(request, inner).await) })
    }
}

/// A payment credential found on a request.
enum Presented {
    L402(String),
    Payment(String),
}

fn presented(headers: &HeaderMap) -> Option<Presented> {
    let candidates = [header::AUTHORIZATION.as_str(), "payment-authorization"];
    candidates.iter().find_map(|name| {
        let value = headers.get(*name)?.to_str().ok()?.trim();
        let scheme = value.split([' ', '\t']).next()?;
        if Scheme::from_name(scheme).is_some() {
            Some(Presented::L402(value.to_owned()))
        } else if scheme.eq_ignore_ascii_case(gate402_mpp::SCHEME) {
            Some(Presented::Payment(value.to_owned()))
        } else {
            None
        }
    })
}

async fn call<S>(mut inner: S, request: Request<Body>) -> Response<Body>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    match inner.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// A refusal: the status, the problem type, and what went wrong.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) problem: ProblemType,
    pub(crate) detail: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, problem: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            status,
            problem,
            detail: detail.into(),
        }
    }
}

impl Paywall {
    async fn handle<S>(&self, mut request: Request<Body>, inner: S) -> Response<Body>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let Some(service) = self.route(request.headers(), request.method(), request.uri().path())
        else {
            return call(inner, request).await;
        };
        request
            .extensions_mut()
            .insert(MatchedService(service.clone()));
        let client = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        if let Err(limited) = self.inner.limits.admit(client, &service.name) {
            self.inner.metrics.rejected("rate-limited");
            return too_many_requests(&limited);
        }
        match service.auth {
            Auth::Off => return call(inner, request).await,
            Auth::Freebie(free) if presented(request.headers()).is_none() => {
                let client = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
                match self.inner.store.count_freebie(&client, &service.name).await {
                    Ok(used) if used <= free => return call(inner, request).await,
                    Ok(_) => {}
                    Err(e) => return unavailable(&format!("store: {e}")),
                }
            }
            Auth::Freebie(_) | Auth::On => {}
        }
        let refusal = match presented(request.headers()) {
            Some(Presented::L402(value) | Presented::Payment(value))
                if value.len() > MAX_CREDENTIAL_BYTES =>
            {
                Refusal::new(
                    StatusCode::PAYMENT_REQUIRED,
                    ProblemType::MalformedCredential,
                    format!(
                        "the credential is {} bytes; the limit is {MAX_CREDENTIAL_BYTES}",
                        value.len()
                    ),
                )
            }
            None => Refusal::new(
                StatusCode::PAYMENT_REQUIRED,
                ProblemType::PaymentRequired,
                format!(
                    "{} costs {} sat per call",
                    service.description, service.price_sats
                ),
            ),
            Some(Presented::L402(value)) => match self.check_l402(&service, &value).await {
                Ok(payment_hash) => {
                    return self
                        .serve(&service, request, inner, "L402", payment_hash, None)
                        .await
                        .0;
                }
                Err(refusal) => refusal,
            },
            Some(Presented::Payment(value)) => match self.check_mpp(&service, &value).await {
                Ok((payment_hash, challenge_id, expires_at)) => {
                    return self
                        .serve_mpp(
                            &service,
                            request,
                            inner,
                            payment_hash,
                            challenge_id,
                            expires_at,
                        )
                        .await;
                }
                Err(refusal) => refusal,
            },
        };
        if refusal.problem != ProblemType::PaymentRequired {
            self.inner.metrics.rejected(refusal.problem.code());
        }
        self.challenge(&service, request.headers(), client, refusal)
            .await
    }

    /// Verifies an L402 credential; returns the paid hash.
    async fn check_l402(&self, service: &ServiceConfig, value: &str) -> Result<[u8; 32], Refusal> {
        let unauthorized =
            |problem, detail: String| Refusal::new(StatusCode::UNAUTHORIZED, problem, detail);
        if !service.schemes.l402() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ProblemType::MethodUnsupported,
                "this service does not accept L402; use the Payment scheme",
            ));
        }
        let credential = L402Credential::from_authorization(value)
            .map_err(|e| unauthorized(ProblemType::MalformedCredential, e.to_string()))?;
        let identifier = credential
            .identifier()
            .map_err(|e| unauthorized(ProblemType::MalformedCredential, e.to_string()))?;
        let ctx = RequestContext::new(service.name.clone());
        let mut verified = Err(L402VerifyError::Signature);
        for root_key in self.inner.root_keys.candidates(&identifier.token_id) {
            verified = verify_l402(&credential, &root_key, &ctx, &[]);
            if !matches!(verified, Err(L402VerifyError::Signature)) {
                break;
            }
        }
        if matches!(verified, Err(L402VerifyError::Signature)) {
            // Tokens minted before root keys were derived have their key stored.
            verified = match self.inner.store.root_key(&identifier.token_id).await {
                Ok(Some(key)) => verify_l402(&credential, &RootKey(key), &ctx, &[]),
                Ok(None) => Err(L402VerifyError::Signature),
                Err(e) => {
                    return Err(Refusal::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ProblemType::PaymentRequired,
                        format!("store: {e}"),
                    ))
                }
            };
        }
        match verified {
            Ok(id) => Ok(id.payment_hash),
            Err(e) if e.is_expired() => Err(Refusal::new(
                StatusCode::PAYMENT_REQUIRED,
                ProblemType::PaymentExpired,
                format!("{e}; pay the new challenge"),
            )),
            Err(L402VerifyError::Signature) => Err(unauthorized(
                ProblemType::VerificationFailed,
                "unknown or revoked L402 token (its signature does not verify)".into(),
            )),
            Err(e) => Err(unauthorized(ProblemType::VerificationFailed, e.to_string())),
        }
    }

    /// Verifies an MPP `Authorization` value statelessly; returns hash,
    /// challenge id, expiry.
    async fn check_mpp(
        &self,
        service: &ServiceConfig,
        value: &str,
    ) -> Result<([u8; 32], String, u64), Refusal> {
        if !service.schemes.mpp() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ProblemType::MethodUnsupported,
                "this service does not accept the Payment scheme; use L402",
            ));
        }
        let credential = gate402_mpp::credential::parse_authorization(value).map_err(|e| {
            Refusal::new(
                StatusCode::PAYMENT_REQUIRED,
                ProblemType::MalformedCredential,
                e.to_string(),
            )
        })?;
        self.verify_payment(service, &credential)
    }

    /// Verifies a parsed MPP credential for `service` (price, realm,
    /// network, the scope it was issued for, the preimage); returns hash,
    /// challenge id, expiry. Stateless: single use is the reservation's job.
    pub(crate) fn verify_payment(
        &self,
        service: &ServiceConfig,
        credential: &PaymentCredential,
    ) -> Result<([u8; 32], String, u64), Refusal> {
        let expected = ExpectedCharge {
            realm: &self.inner.realm,
            amount_sats: service.price_sats,
            network: self.inner.network,
            digest: None,
            scope: Some(&service.name),
        };
        let verified = verify_lightning_charge(
            &self.inner.key,
            credential,
            &expected,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            let problem = e.problem_type();
            let status =
                StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::PAYMENT_REQUIRED);
            Refusal::new(status, problem, e.to_string())
        })?;
        let expires_at = verified.expires.map_or(
            unix_now() + u64::from(self.inner.invoice_expiry_secs),
            |t| t.unix_timestamp().max(0) as u64,
        );
        Ok((verified.payment_hash, verified.challenge_id, expires_at))
    }

    /// Claims a single-use payment (an MPP challenge id, or any key that
    /// names one payment) for one request, across every gateway sharing
    /// the store. `Ok(())`: this request holds it until [`Paywall::finish`].
    pub(crate) async fn reserve(&self, key: &str, expires_at: u64) -> Result<(), Refusal> {
        let now = unix_now();
        match self
            .inner
            .store
            .reserve_challenge(key, &self.inner.replica, expires_at, now + LEASE_SECS, now)
            .await
        {
            Err(e) => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemType::PaymentRequired,
                format!("store: {e}"),
            )),
            Ok(Reservation::Acquired) => Ok(()),
            Ok(Reservation::Consumed) => {
                self.inner.metrics.rejected("replayed-credential");
                Err(Refusal::new(
                    StatusCode::PAYMENT_REQUIRED,
                    ProblemType::InvalidChallenge,
                    "this credential has already been used; pay the new challenge",
                ))
            }
            Ok(Reservation::InFlight) => {
                self.inner.metrics.rejected("replayed-credential");
                Err(Refusal::new(
                    StatusCode::PAYMENT_REQUIRED,
                    ProblemType::InvalidChallenge,
                    "this credential is being used by another request",
                ))
            }
        }
    }

    /// Ends a reservation: spent when the request was served, released
    /// (usable again) when the upstream failed.
    pub(crate) async fn finish(&self, key: &str, served: bool) {
        let store = &self.inner.store;
        let outcome = if served {
            store.commit_challenge(key, unix_now()).await
        } else {
            store.release_challenge(key).await
        };
        if let Err(e) = outcome {
            tracing::error!(key, error = %e, "cannot record the challenge outcome");
        }
    }

    /// Claims the challenge, serves, then commits it or, if the upstream
    /// failed, releases it. The commit waits for the response body to be
    /// sent (or abandoned by the client): a gateway killed before that
    /// leaves the claim to be released at restart, and the client that
    /// paid and got no answer is served on its retry.
    async fn serve_mpp<S>(
        &self,
        service: &ServiceConfig,
        request: Request<Body>,
        inner: S,
        payment_hash: [u8; 32],
        challenge_id: String,
        expires_at: u64,
    ) -> Response<Body>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        if let Err(refusal) = self.reserve(&challenge_id, expires_at).await {
            if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
                return unavailable(&refusal.detail);
            }
            let client = request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            return self
                .challenge(service, request.headers(), client, refusal)
                .await;
        }
        let (response, served) = self
            .serve(
                service,
                request,
                inner,
                "Payment",
                payment_hash,
                Some(&challenge_id),
            )
            .await;
        if !served {
            self.finish(&challenge_id, false).await;
            return response;
        }
        let commit = CommitOnDrop {
            paywall: self.clone(),
            key: challenge_id,
        };
        response.map(|body| {
            // The closure owns the guard, so it drops with the body.
            Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                let _ = &commit;
                frame
            }))
        })
    }

    /// Calls the wrapped service; on success adds the receipt. Returns the
    /// response and whether it counts as served (no server error).
    async fn serve<S>(
        &self,
        service: &ServiceConfig,
        request: Request<Body>,
        inner: S,
        scheme: &str,
        payment_hash: [u8; 32],
        challenge_id: Option<&str>,
    ) -> (Response<Body>, bool)
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    {
        let started = Instant::now();
        let mut response = call(inner, request).await;
        self.inner
            .metrics
            .upstream(&service.name, started.elapsed().as_secs_f64());
        if response.status().is_server_error() {
            tracing::warn!(
                service = %service.name,
                status = %response.status(),
                scheme,
                test_money = self.inner.test_money,
                "upstream failed; the payment stays unspent"
            );
            return (response, false);
        }
        let receipt = self
            .record_paid(service, scheme, payment_hash, challenge_id)
            .await;
        if let Ok(value) = HeaderValue::from_str(&gate402_mpp::receipt::to_header(&receipt)) {
            response
                .headers_mut()
                .insert(gate402_mpp::RECEIPT_HEADER, value);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
        (response, true)
    }

    /// Counts and records a served paid request; returns its receipt.
    pub(crate) async fn record_paid(
        &self,
        service: &ServiceConfig,
        scheme: &str,
        payment_hash: [u8; 32],
        challenge_id: Option<&str>,
    ) -> Receipt {
        let now = time::OffsetDateTime::now_utc();
        let receipt = gate402_mpp::receipt::lightning(&payment_hash, challenge_id, now);
        self.inner
            .metrics
            .paid(&service.name, scheme, service.price_sats);
        let record = ReceiptRecord {
            payment_hash,
            scheme: scheme.to_owned(),
            challenge_id: challenge_id.map(str::to_owned),
            service: service.name.clone(),
            amount_msat: service.price_sats * 1000,
            served_at: now.unix_timestamp().max(0) as u64,
        };
        if let Err(e) = self.inner.store.put_receipt(&record).await {
            tracing::error!(error = %e, "cannot record a receipt");
        }
        tracing::info!(
            service = %service.name,
            scheme,
            payment_hash = %hex::encode(payment_hash),
            test_money = self.inner.test_money,
            "paid request served"
        );
        receipt
    }

    /// Creates an invoice for `service` and the challenges that point at
    /// it: an L402 token when `l402` (and the service takes L402), an MPP
    /// charge bound to the service's name when `mpp` (and it takes MPP).
    /// Stores nothing: the token's root key is derived and the MPP
    /// challenge is HMAC-bound, so an unpaid flood costs the store nothing.
    pub(crate) async fn issue(
        &self,
        service: &ServiceConfig,
        l402: bool,
        mpp: bool,
    ) -> Result<Issued, String> {
        let state = &self.inner;
        let now = unix_now();
        let created = state
            .backend
            .create_invoice(InvoiceRequest {
                amount_msat: service.price_sats * 1000,
                memo: service.description.clone(),
                expiry_secs: state.invoice_expiry_secs,
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot create an invoice");
                format!("the Lightning backend cannot create an invoice: {e}")
            })?;
        let mut issued = Issued {
            bolt11: created.bolt11.clone(),
            payment_hash: created.payment_hash,
            expires_at: created.expires_at,
            l402: None,
            payment: None,
        };
        if l402 && service.schemes.l402() {
            let mut caveats = vec![
                Caveat::services(&[Service::new(service.name.clone())]),
                Caveat::valid_until(&service.name, now + service.token_lifetime_secs),
            ];
            if !service.capabilities.is_empty() {
                let capabilities: Vec<&str> =
                    service.capabilities.iter().map(String::as_str).collect();
                caveats.push(Caveat::capabilities(&service.name, &capabilities));
            }
            let minted = state.root_keys.mint(
                created.payment_hash,
                gate402_l402::DEFAULT_LOCATION,
                &caveats,
            );
            issued.l402 = Some(L402Challenge {
                macaroon: minted.macaroon,
                invoice: created.bolt11.clone(),
            });
        }
        if mpp && service.schemes.mpp() {
            let request = ChargeRequest::new(
                service.price_sats,
                Some(service.description.clone()),
                &created.bolt11,
                &created.payment_hash,
                state.network,
            )
            .to_value();
            let expires = time::OffsetDateTime::from_unix_timestamp(
                created
                    .expires_at
                    .min(now + u64::from(state.invoice_expiry_secs)) as i64,
            )
            .ok();
            let opaque = scope_opaque(&service.name);
            issued.payment = Some(state.key.issue(NewChallenge {
                realm: &state.realm,
                method: METHOD,
                intent: CHARGE,
                request: &request,
                expires,
                digest: None,
                description: Some(&service.description),
                opaque: Some(&opaque),
            }));
        }
        state.metrics.challenge(&service.name);
        Ok(issued)
    }

    /// Whether invoices are test money (the sandbox backend).
    pub(crate) fn test_money(&self) -> bool {
        self.inner.test_money
    }

    /// The Lightning backend.
    pub(crate) fn backend(&self) -> &Arc<dyn LightningBackend> {
        &self.inner.backend
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Whether `client` may be handed one more invoice.
    pub(crate) fn admit_unpaid(&self, client: Option<std::net::IpAddr>) -> Result<(), Limited> {
        let admitted = self.inner.limits.admit_unpaid(client);
        if admitted.is_err() {
            self.inner.metrics.rejected("unpaid-invoices");
        }
        admitted
    }

    /// A fresh invoice and its challenges, in a problem response (or a
    /// 429 when `client` holds too many unpaid invoices).
    async fn challenge(
        &self,
        service: &ServiceConfig,
        request_headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
        refusal: Refusal,
    ) -> Response<Body> {
        if let Err(limited) = self.admit_unpaid(client) {
            return too_many_requests(&limited);
        }
        let accept = request_headers
            .get(gate402_mpp::ACCEPT_PAYMENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| AcceptPayment::parse(v).ok());
        let mpp_wanted = accept
            .as_ref()
            .is_none_or(|a| a.accepts(METHOD, CHARGE) || !service.schemes.l402());
        let issued = match self.issue(service, true, mpp_wanted).await {
            Ok(issued) => issued,
            Err(detail) => return unavailable(&detail),
        };
        let l402_lines: Vec<String> = issued
            .l402
            .iter()
            .flat_map(|c| [c.to_header(Scheme::L402), c.to_header(Scheme::Lsat)])
            .collect();
        let payment_line = issued.payment.as_ref().and_then(|c| to_header(c).ok());
        // L402 first for the clients that read only the first challenge,
        // unless the client said it speaks MPP.
        let mut lines = Vec::new();
        if accept.is_some() {
            lines.extend(payment_line.iter().cloned());
            lines.extend(l402_lines);
        } else {
            lines.extend(l402_lines);
            lines.extend(payment_line.iter().cloned());
        }
        let schemes: Vec<&str> = [
            (issued.l402.is_some(), "L402"),
            (payment_line.is_some(), "MPP"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let mut extra = json!({
            "price": {"amount": service.price_sats.to_string(), "currency": "sat"},
            "description": service.description,
            "invoice": issued.bolt11,
            "paymentHash": hex::encode(issued.payment_hash),
            "schemes": schemes,
            "howToPay": "Pay the Lightning invoice, then retry with `Authorization: L402 <macaroon>:<preimage>` or `Authorization: Payment <credential>` (the challenges are in WWW-Authenticate).",
        });
        if let Some(challenge) = &issued.payment {
            extra["challengeId"] = challenge.id.clone().into();
        }
        if self.inner.test_money {
            extra["testMoney"] = gate402_lightning_sandbox::TEST_MONEY.into();
        }
        let mut response = problem_response(
            refusal.status,
            &refusal.problem.uri(),
            refusal.problem.title(),
            &refusal.detail,
            Some(extra),
        );
        let headers = response.headers_mut();
        for line in lines {
            if let Ok(value) = HeaderValue::from_str(&line) {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// Commits a claimed challenge when dropped, along with the response body
/// it guards: after the last frame went out, or when the client went away
/// mid-body (it was served all the same).
struct CommitOnDrop {
    paywall: Paywall,
    key: String,
}

impl Drop for CommitOnDrop {
    fn drop(&mut self) {
        let paywall = self.paywall.clone();
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { paywall.finish(&key, true).await });
            }
            // Only outside a runtime (never under the server); the claim
            // is then released at the next start.
            Err(_) => tracing::error!(key, "no runtime to record a served challenge on"),
        }
    }
}

/// An invoice and the challenges issued for it.
pub(crate) struct Issued {
    /// The invoice.
    pub(crate) bolt11: String,
    /// Its payment hash.
    pub(crate) payment_hash: [u8; 32],
    /// When it expires (unix seconds).
    pub(crate) expires_at: u64,
    /// The L402 challenge, when issued.
    pub(crate) l402: Option<L402Challenge>,
    /// The MPP challenge, when issued.
    pub(crate) payment: Option<PaymentChallenge>,
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds, at least 1).
fn too_many_requests(limited: &Limited) -> Response<Body> {
    let mut response = problem_response(
        StatusCode::TOO_MANY_REQUESTS,
        "about:blank",
        "Too Many Requests",
        &limited.detail,
        None,
    );
    let seconds = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn unavailable(detail: &str) -> Response<Body> {
    let mut response = problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "about:blank",
        "Service Unavailable",
        detail,
        None,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}
