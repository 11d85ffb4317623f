//! The paywall's shared state and the steps every door uses: route,
//! issue, verify, claim, record. The HTTP layer ([`crate::layer`]) and a
//! gateway's other doors (paid MCP tools) are built from these.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gate402_l402::RootKeySecrets;
use gate402_lightning::{LightningBackend, LightningError, Network};
use gate402_mpp::challenge::ChallengeKey;
use gate402_mpp::problem::ProblemType;
use gate402_mpp::{PaymentCredential, Receipt};
use gate402_store::{PaymentRecord, Store, StoreError};
use http::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::Batch;
use crate::body::Bodies;
use crate::claims::{Claim, ClaimError, ClaimKey, Claims};
use crate::client::{ClientKey, TrustedProxies};
use crate::idempotency::IdempotencyConfig;
use crate::issue::{Binding, Doors, Issuer};
use crate::issued::Issued;
use crate::limits::{Limited, Limits, LimitsConfig};
use crate::metrics::Metrics;
use crate::payment_id::PaymentIds;
use crate::responses::Refusal;
use crate::route::PricedService;
use crate::route::Routes;
use crate::verify::{ScopedKeys, Verified, Verifier};
use crate::x402::X402Keys;

/// How long a claim is leased before another replica may take it over,
/// unless renewed (it is, every third of it, while its response streams).
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(90);

/// The largest request body read to bind it to a payment, unless
/// configured: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Why a paywall cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PaywallError {
    /// The secret is shorter than [`gate402_mpp::challenge::MIN_SECRET_LEN`].
    #[error("the paywall secret must be at least {min} bytes (got {0})", min = gate402_mpp::challenge::MIN_SECRET_LEN)]
    SecretTooShort(usize),
    /// The Lightning backend did not say which network it is on.
    #[error("asking the Lightning backend for its network: {0}")]
    Lightning(#[from] LightningError),
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds a [`Paywall`]; see [`Paywall::builder`].
pub struct PaywallBuilder {
    backend: Arc<dyn LightningBackend>,
    store: Arc<dyn Store>,
    challenge_key: ChallengeKey,
    root_keys: RootKeySecrets,
    payment_ids: PaymentIds,
    x402_keys: X402Keys,
    replica: String,
    realm: String,
    invoice_expiry_secs: u32,
    services: Vec<PricedService>,
    metrics: Arc<Metrics>,
    limits: LimitsConfig,
    trusted_proxies: TrustedProxies,
    claim_lease: Duration,
    test_money: Option<String>,
    max_body_bytes: usize,
    idempotency: IdempotencyConfig,
}

impl PaywallBuilder {
    /// Adds a previous secret: challenges and tokens made under it still
    /// verify, nothing new is made under it.
    ///
    /// # Errors
    ///
    /// [`PaywallError::SecretTooShort`].
    pub fn previous_secret(mut self, secret: &str) -> Result<Self, PaywallError> {
        self.challenge_key = self
            .challenge_key
            .with_previous(secret)
            .map_err(|e| PaywallError::SecretTooShort(e.0))?;
        self.root_keys = self.root_keys.with_previous(secret.as_bytes());
        self.payment_ids = self.payment_ids.with_previous(secret.as_bytes());
        self.x402_keys = self.x402_keys.with_previous(secret.as_bytes());
        Ok(self)
    }

    /// The priced services, first match wins.
    pub fn services(mut self, services: impl IntoIterator<Item = PricedService>) -> Self {
        self.services = services.into_iter().collect();
        self
    }

    /// The MPP realm (usually the API's host); default `gate402`.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = realm.into();
        self
    }

    /// Seconds an invoice (and so a 402) stays payable; default 600.
    pub fn invoice_expiry_secs(mut self, secs: u32) -> Self {
        self.invoice_expiry_secs = secs;
        self
    }

    /// This replica's name in the store: stable across restarts, so that a
    /// restarted replica releases the claims its killed predecessor held.
    /// Default: a random one (claims of a killed process then wait out
    /// their lease).
    pub fn replica(mut self, replica: impl Into<String>) -> Self {
        self.replica = replica.into();
        self
    }

    /// Where the counters go.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Rate limits and the cap on unpaid invoices per client.
    pub fn limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// The proxies whose forwarding headers name the client.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    /// The lease of a claim; default [`DEFAULT_CLAIM_LEASE`].
    pub fn claim_lease(mut self, lease: Duration) -> Self {
        self.claim_lease = lease;
        self
    }

    /// The largest request body (bytes) read to bind it to a payment; default
    /// [`DEFAULT_MAX_BODY_BYTES`]. The MPP challenge for a POST, PUT or PATCH
    /// carries the body's digest; a larger body gets a challenge without one,
    /// and a credential whose challenge binds a body is refused with 413 when
    /// the body it comes with is larger.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How responses to paid requests carrying `Idempotency-Key` are kept
    /// for their retries; default [`IdempotencyConfig::default`] (1 MiB,
    /// 24 hours).
    pub fn idempotency(mut self, config: IdempotencyConfig) -> Self {
        self.idempotency = config;
        self
    }

    /// Says in every 402 that invoices are test money (the sandbox).
    pub fn test_money(mut self, note: impl Into<String>) -> Self {
        self.test_money = Some(note.into());
        self
    }

    /// Asks the backend for its network, starts the claim renewer.
    ///
    /// # Errors
    ///
    /// [`PaywallError::Lightning`] or [`PaywallError::Store`] when either
    /// does not answer.
    pub async fn build(self) -> Result<Paywall, PaywallError> {
        let info = self.backend.node_info().await?;
        let claims = Claims::new(self.store.clone(), self.replica, self.claim_lease).await?;
        let challenge_keys = Arc::new(ScopedKeys::new(self.challenge_key));
        let paywall = Paywall {
            inner: Arc::new(State {
                routes: ArcSwap::from_pointee(Routes::new(self.services)),
                issuer: Issuer {
                    backend: self.backend.clone(),
                    network: info.network,
                    challenge_keys: challenge_keys.clone(),
                    root_keys: self.root_keys.clone(),
                    realm: self.realm.clone(),
                    invoice_expiry_secs: self.invoice_expiry_secs,
                    x402_keys: self.x402_keys.clone(),
                    payee: hex::encode(info.pubkey),
                },
                x402_keys: self.x402_keys,
                verifier: Verifier {
                    challenge_keys,
                    root_keys: self.root_keys,
                    realm: self.realm,
                    network: info.network,
                    invoice_expiry_secs: self.invoice_expiry_secs,
                    passes: crate::verify::Passes::default(),
                },
                network: info.network,
                payment_ids: self.payment_ids,
                backend: self.backend,
                store: self.store,
                claims,
                metrics: self.metrics,
                limits: Limits::new(&self.limits),
                trusted_proxies: self.trusted_proxies,
                test_money: self.test_money,
                bodies: Bodies::new(self.max_body_bytes),
                idempotency: self.idempotency,
                pricers: Default::default(),
                revoked: ArcSwap::default(),
                pass_starts: Default::default(),
                background: TaskTracker::new(),
                requests: TaskTracker::new(),
                stopping: Default::default(),
                served: Batch::new(),
                stopped_since: Default::default(),
                closing: Default::default(),
                stop: CancellationToken::new(),
            }),
        };
        let reaper = paywall.clone();
        paywall.inner.background.spawn(async move {
            let stop = reaper.inner.stop.clone();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(REAP_EVERY) => {}
                }
                reaper.close_idle().await;
            }
        });
        let writer = paywall.clone();
        paywall.inner.background.spawn(async move {
            let state = &writer.inner;
            state
                .served
                .run(
                    state.stop.clone(),
                    SERVED_LINGER,
                    // Kept until the store takes them: a long outage lost
                    // them from the books.
                    true,
                    HashMap::is_empty,
                    merge_served,
                    |batch| writer.write_served(batch),
                )
                .await;
        });
        Ok(paywall)
    }
}

/// How long a stop waits for paid requests still at their upstreams
/// (past the grace period that closed their connections), unless told
/// ([`Paywall::shutdown_within`]).
const REQUESTS_WAIT: Duration = Duration::from_secs(60);

/// The paywall: priced routes, the Lightning backend, the store. Cheap to
/// clone; clones share everything.
#[derive(Clone)]
pub struct Paywall {
    pub(crate) inner: Arc<State>,
}

impl std::fmt::Debug for Paywall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paywall")
            .field("services", &self.inner.routes.load().services().len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct State {
    pub(crate) routes: ArcSwap<Routes>,
    pub(crate) issuer: Issuer,
    pub(crate) verifier: Verifier,
    pub(crate) x402_keys: X402Keys,
    pub(crate) network: Network,
    pub(crate) payment_ids: PaymentIds,
    pub(crate) backend: Arc<dyn LightningBackend>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) claims: Arc<Claims>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) test_money: Option<String>,
    pub(crate) bodies: Bodies,
    pub(crate) idempotency: IdempotencyConfig,
    /// Pricers' client and the answers they gave.
    pub(crate) pricers: crate::pricing::Pricers,
    /// Payments the operator revoked (their hashes): read by every paid
    /// request, replaced whole when one is added.
    revoked: ArcSwap<std::collections::HashSet<[u8; 32]>>,
    /// When the passes presented here were first used.
    pub(crate) pass_starts: crate::pass_period::PassStarts,
    /// The writer of `served`.
    pub(crate) background: TaskTracker,
    /// Paid requests' own work left running after their clients (their
    /// upstream calls, store calls that take or settle a payment): a stop
    /// waits for it before the claims it settles stop being written.
    pub(crate) requests: TaskTracker,
    /// Set when the server has stopped serving: a paid request still at
    /// its upstream was cut off by the stop, not by its client.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// What payments served, written after the responses left.
    served: Batch<Served>,
    /// Replicas holding debits seen stopped, and since when.
    pub(crate) stopped_since:
        std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Sessions a close here waits for (their requests in flight): a
    /// metered stream of one waiting for a top-up ends instead.
    pub(crate) closing: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    /// Cancelled when the paywall stops.
    pub(crate) stop: CancellationToken,
}

impl Paywall {
    /// A builder over a Lightning backend, a store, and the secret that
    /// binds MPP challenge ids and derives L402 root keys (at least 32
    /// bytes; every replica sharing a store must use the same one).
    ///
    /// # Errors
    ///
    /// [`PaywallError::SecretTooShort`].
    pub fn builder(
        backend: Arc<dyn LightningBackend>,
        store: Arc<dyn Store>,
        secret: &str,
    ) -> Result<PaywallBuilder, PaywallError> {
        let challenge_key =
            ChallengeKey::new(secret).map_err(|e| PaywallError::SecretTooShort(e.0))?;
        Ok(PaywallBuilder {
            backend,
            store,
            challenge_key,
            root_keys: RootKeySecrets::new(secret.as_bytes()),
            payment_ids: PaymentIds::new(secret.as_bytes()),
            x402_keys: X402Keys::new(secret.as_bytes()),
            replica: hex::encode(rand::random::<[u8; 16]>()),
            realm: "gate402".into(),
            invoice_expiry_secs: 600,
            services: Vec::new(),
            metrics: Arc::new(Metrics::default()),
            limits: LimitsConfig::default(),
            trusted_proxies: TrustedProxies::default(),
            claim_lease: DEFAULT_CLAIM_LEASE,
            test_money: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            idempotency: IdempotencyConfig::default(),
        })
    }

    /// The current routes.
    pub fn routes(&self) -> Arc<Routes> {
        self.inner.routes.load_full()
    }

    /// Replaces the services (a config reload); requests in flight finish
    /// with the services they started with.
    pub fn set_services(&self, services: impl IntoIterator<Item = PricedService>) {
        self.inner.routes.store(Arc::new(Routes::new(services)));
    }

    /// Refuses from now on every credential naming one of `payment_hashes`
    /// (revoked by the operator), through any scheme.
    pub fn revoke(&self, payment_hashes: impl IntoIterator<Item = [u8; 32]>) {
        let added: Vec<[u8; 32]> = payment_hashes.into_iter().collect();
        if added.is_empty() {
            return;
        }
        self.inner.revoked.rcu(|revoked| {
            let mut revoked = (**revoked).clone();
            revoked.extend(added.iter().copied());
            revoked
        });
    }

    /// Whether the operator revoked the payment `payment_hash`.
    pub fn is_revoked(&self, payment_hash: &[u8; 32]) -> bool {
        self.inner.revoked.load().contains(payment_hash)
    }

    /// `verified`, unless the operator revoked its payment: the one check
    /// every scheme's credential passes after its proof holds (the layer
    /// and [`Paywall::verify_payment`] make it; a caller that verifies a
    /// payment some other way, as MCP's `paymentId`, calls it).
    ///
    /// # Errors
    ///
    /// The [`Refusal`] to answer with: 402, verification failed.
    pub fn unrevoked(&self, verified: Verified) -> Result<Verified, Refusal> {
        if self.is_revoked(&verified.payment_hash) {
            Err(revoked())
        } else {
            Ok(verified)
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The Lightning backend.
    pub fn backend(&self) -> &Arc<dyn LightningBackend> {
        &self.inner.backend
    }

    /// Issues and checks MCP `paymentId`s.
    pub fn payment_ids(&self) -> &PaymentIds {
        &self.inner.payment_ids
    }

    /// The network of the backend's node.
    pub fn network(&self) -> Network {
        self.inner.network
    }

    /// The note on test money, when invoices are test money.
    pub fn test_money(&self) -> Option<&str> {
        self.inner.test_money.as_deref()
    }

    /// This replica's name in the store (its claims and debits are held
    /// under it).
    pub fn replica(&self) -> &str {
        self.inner.claims.replica()
    }

    /// The proxies whose forwarding headers are believed.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.inner.trusted_proxies
    }

    /// Releases the claims this replica held when its previous process
    /// was killed; call once at start, before serving. Returns how many.
    ///
    /// # Errors
    ///
    /// The store's.
    pub async fn release_abandoned_claims(&self) -> Result<u64, StoreError> {
        let claims = self.inner.claims.release_abandoned().await?;
        // Requests it was serving from balances: given back too.
        let debits = self
            .inner
            .store
            .undo_debits_of(self.inner.claims.replica())
            .await?;
        Ok(claims + debits)
    }

    /// Closes the sessions idle past their timeout and refunds their
    /// unspent balances now (it also runs every 15 s in the background).
    pub async fn close_idle_sessions(&self) {
        self.close_idle().await;
    }

    /// Finishes every pending claim outcome and record. Call after the
    /// server stopped serving, before the process exits.
    pub async fn shutdown(&self) {
        self.shutdown_within(REQUESTS_WAIT).await;
    }

    /// [`Paywall::shutdown`], waiting at most `requests_wait` for paid
    /// requests still at their upstreams (as long as an upstream may take
    /// to answer): one still there after it is left in flight, released at
    /// the next start.
    pub async fn shutdown_within(&self, requests_wait: Duration) {
        // A paid request still at its upstream when the grace period cut
        // its connection is settled by what the upstream answers (spent,
        // its answer kept for its Idempotency-Key; given back if it may be
        // repeated without effect, a GET), not left in flight to be
        // released at the next start and sent upstream again.
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.requests.close();
        if !self.inner.requests.is_empty() {
            tracing::info!(
                requests = self.inner.requests.len(),
                "waiting for paid requests still at their upstreams"
            );
        }
        if tokio::time::timeout(requests_wait, self.inner.requests.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                requests = self.inner.requests.len(),
                "paid requests still at their upstreams after {} s; their payments are released at the next start",
                requests_wait.as_secs()
            );
        }
        self.inner.claims.shutdown().await;
        self.inner.stop.cancel();
        self.inner.background.close();
        self.inner.background.wait().await;
    }

    /// Whether `client` may be handed one more invoice.
    ///
    /// # Errors
    ///
    /// [`Limited`], with when to come back.
    pub fn admit_unpaid(&self, client: Option<ClientKey>) -> Result<(), Limited> {
        let admitted = self.inner.limits.admit_unpaid(client);
        if admitted.is_err() {
            self.inner.metrics.rejected("unpaid-invoices");
        }
        admitted
    }

    /// Whether a request of `client` to `service` is within the rate
    /// limits.
    ///
    /// # Errors
    ///
    /// [`Limited`], with when to come back.
    pub fn admit(&self, client: Option<ClientKey>, service: &str) -> Result<(), Limited> {
        let admitted = self.inner.limits.admit(client, service);
        if admitted.is_err() {
            self.inner.metrics.rejected("rate-limited");
        }
        admitted
    }

    /// A fresh invoice for `service` and the challenges of `doors` that the
    /// service offers. Stores nothing.
    ///
    /// # Errors
    ///
    /// The backend's, when it cannot make an invoice (logged here).
    pub async fn issue(
        &self,
        service: &PricedService,
        doors: Doors,
    ) -> Result<Issued, LightningError> {
        self.issue_for(service, doors, Binding::default()).await
    }

    /// [`Paywall::issue`], the MPP challenge also binding the field its
    /// credential must come in and the request body it pays for.
    ///
    /// # Errors
    ///
    /// The backend's, when it cannot make an invoice (logged here).
    pub async fn issue_for(
        &self,
        service: &PricedService,
        doors: Doors,
        binding: Binding<'_>,
    ) -> Result<Issued, LightningError> {
        let issued = self
            .inner
            .issuer
            .issue(service, doors, binding)
            .await
            .map_err(|e| {
                tracing::error!(service = %service.name, error = %e, "cannot create an invoice");
                e
            })?;
        self.inner.metrics.challenge(&service.name);
        Ok(issued)
    }

    /// Checks an L402 `Authorization` value for `service`.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] to answer with.
    pub fn verify_l402(&self, service: &PricedService, value: &str) -> Result<Verified, Refusal> {
        self.inner.verifier.l402(service, value)
    }

    /// Checks an x402 `payment-signature` value for `service`: the offer
    /// this gateway made, its invoice settled on the node.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] to answer with.
    pub async fn verify_x402(
        &self,
        service: &PricedService,
        value: &str,
    ) -> Result<Verified, Refusal> {
        let mut verified = self
            .inner
            .x402_keys
            .verify(service, value, self.inner.backend.as_ref())
            .await?;
        verified.expires_at = self
            .inner
            .verifier
            .remembered_until(service, verified.expires_at);
        Ok(verified)
    }

    /// Checks a parsed MPP credential for `service` (an MCP `_meta`
    /// credential, say).
    ///
    /// # Errors
    ///
    /// The [`Refusal`] to answer with.
    pub fn verify_payment(
        &self,
        service: &PricedService,
        credential: &PaymentCredential,
    ) -> Result<Verified, Refusal> {
        self.inner
            .verifier
            .payment(
                service,
                &gate402_mpp::verify::ChargeCredential::read(credential),
                None,
                None,
            )
            .and_then(|verified| self.unrevoked(verified))
    }

    /// Claims a verified single-use payment for one request, keyed by its
    /// payment hash.
    ///
    /// # Errors
    ///
    /// [`ClaimError`]: spent, in use by another request, or the store
    /// cannot answer.
    pub async fn claim(&self, verified: &Verified) -> Result<Claim, ClaimError> {
        self.claim_under(
            &ClaimKey::payment(&verified.payment_hash),
            verified,
            verified.expires_at,
        )
        .await
    }

    /// [`Paywall::claim`] under `key` (the payment's, or one made for an
    /// `Idempotency-Key` under a pass or a balance), remembered until
    /// `expires_at` (unix seconds).
    pub(crate) async fn claim_under(
        &self,
        key: &ClaimKey,
        verified: &Verified,
        expires_at: u64,
    ) -> Result<Claim, ClaimError> {
        // Claims keyed by challenge id predate claims keyed by payment.
        let legacy_id = key
            .is_payment()
            .then_some(verified.challenge_id.as_deref())
            .flatten();
        let result = self.inner.claims.claim(key, expires_at, legacy_id).await;
        if matches!(result, Err(ClaimError::Consumed | ClaimError::InFlight)) {
            self.inner.metrics.rejected("replayed-credential");
        }
        result
    }

    /// Books a deposit into a balance (`sats`) as one payment, once: its
    /// revenue is counted when first written. Written before this is
    /// ready, not with the batch of served payments, which a crash may
    /// lose (an open or top-up is rare, and a deposit's row is what the
    /// refund of its session is set against in the books); with the store
    /// out of reach, left to that batch.
    pub(crate) async fn record_deposit(
        &self,
        service: &PricedService,
        scheme: &'static str,
        payment_hash: [u8; 32],
        sats: u64,
    ) {
        let deposit = PaymentRecord {
            payment_hash,
            service: service.name.clone(),
            scheme: scheme.to_owned(),
            amount_msat: sats.saturating_mul(1000),
            at: unix_now_secs(),
            served: 0,
        };
        match self.inner.store.record_payment(&deposit).await {
            Ok(new) => {
                if new {
                    self.count_new_payment(&deposit);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot book a deposit now; it goes with the served payments");
                self.inner.served.add(|pending| {
                    pending.entry(payment_hash).or_insert(deposit);
                });
            }
        }
    }

    /// Counts a served paid request and returns its receipt. The count
    /// is written with others after the response, so a reused token costs
    /// the store nothing per request; the first write of a payment counts
    /// its revenue (once, across replicas). A crash may lose the counts of
    /// the last moments, never money: the claim, not the count, is what
    /// makes a credential single use.
    pub fn record_paid(
        &self,
        service: &PricedService,
        scheme: &'static str,
        verified: &Verified,
    ) -> Receipt {
        let now = time::OffsetDateTime::now_utc();
        self.count_paid(service, scheme, &verified.payment_hash, now);
        gate402_mpp::receipt::lightning(
            &verified.payment_hash,
            verified.challenge_id.as_deref(),
            now,
        )
    }

    /// Counts a request answered at `now`: from the balance of session
    /// `hash` ([`Self::count_from_balance`]), or with payment `hash` of its
    /// own ([`Self::count_paid`]).
    pub(crate) fn count_answered(
        &self,
        service: &PricedService,
        scheme: &'static str,
        hash: &[u8; 32],
        from_balance: bool,
        now: time::OffsetDateTime,
    ) {
        if from_balance {
            self.count_from_balance(service, scheme, hash, now);
        } else {
            self.count_paid(service, scheme, hash, now);
        }
    }

    /// [`Self::record_paid`] without the receipt: counts a request served
    /// at `now` with payment `payment_hash` of its own (not a balance's).
    fn count_paid(
        &self,
        service: &PricedService,
        scheme: &'static str,
        payment_hash: &[u8; 32],
        now: time::OffsetDateTime,
    ) {
        let payment_hash = *payment_hash;
        let state = &self.inner;
        state.metrics.served(&service.name, scheme);
        let at = now.unix_timestamp().max(0) as u64;
        state.served.add(|pending| {
            pending
                .entry(payment_hash)
                .and_modify(|p| {
                    p.served += 1;
                    p.at = at;
                })
                .or_insert_with(|| PaymentRecord {
                    payment_hash,
                    service: service.name.clone(),
                    scheme: scheme.to_owned(),
                    amount_msat: service.price_sats * 1000,
                    at,
                    served: 1,
                });
        });
        tracing::debug!(
            service = %service.name,
            scheme,
            payment_hash = %hex::encode(payment_hash),
            "paid request served"
        );
    }

    /// Counts a request served at `now` from the balance of session `id`
    /// on the row of the session's first deposit (whose payment hash is
    /// the session's id); its revenue was counted with the deposit.
    fn count_from_balance(
        &self,
        service: &PricedService,
        scheme: &'static str,
        id: &[u8; 32],
        now: time::OffsetDateTime,
    ) {
        self.inner.metrics.served(&service.name, scheme);
        let at = now.unix_timestamp().max(0) as u64;
        self.inner.served.add(|pending| {
            pending
                .entry(*id)
                .and_modify(|p| {
                    p.served += 1;
                    p.at = at;
                })
                // The deposit's row is written already, or by another
                // replica soon: no amount here, the deposit's is kept.
                .or_insert_with(|| PaymentRecord {
                    payment_hash: *id,
                    service: service.name.clone(),
                    scheme: scheme.to_owned(),
                    amount_msat: 0,
                    at,
                    served: 1,
                });
        });
    }

    /// Counts in the metrics a payment whose row `payment` was first
    /// written now: its revenue, once across replicas.
    pub(crate) fn count_new_payment(&self, payment: &PaymentRecord) {
        // A balance's count written before its deposit (by another
        // replica) is not a payment.
        if payment.amount_msat > 0 {
            self.inner.metrics.payment(
                &payment.service,
                &payment.scheme,
                payment.amount_msat / 1000,
            );
        }
    }

    /// Records a payment for `service` (`payment_hash`, presented through
    /// `scheme`) that its upstream's failures spent
    /// ([`crate::FAILURES_PER_PAYMENT`]) before it served a request: the
    /// node kept the money, so it is written with the served payments,
    /// `served` 0, its revenue counted as a payment's.
    pub fn record_unserved(
        &self,
        service: &PricedService,
        scheme: &'static str,
        payment_hash: &[u8; 32],
    ) {
        let payment = PaymentRecord {
            payment_hash: *payment_hash,
            service: service.name.clone(),
            scheme: scheme.to_owned(),
            amount_msat: service.price_sats * 1000,
            at: crate::clock::unix_now(),
            served: 0,
        };
        self.inner.served.add(|pending| {
            pending.entry(payment.payment_hash).or_insert(payment);
        });
    }

    /// Writes a batch of served payments; counts the new ones' revenue.
    /// In payment hash order, so that the store walks its index of them
    /// once from end to end, and [`SERVED_CHUNK`] at a time, so that a
    /// large batch never holds the store's writer (and the claims of the
    /// requests waiting on it) for long. Answers what was not written.
    async fn write_served(&self, batch: Served) -> Option<Served> {
        let mut records: Vec<PaymentRecord> = batch.into_values().collect();
        records.sort_unstable_by_key(|p| p.payment_hash);
        let mut written = 0;
        for chunk in records.chunks(SERVED_CHUNK) {
            match self.inner.store.record_payments(chunk).await {
                Ok(new) => {
                    for (payment, new) in chunk.iter().zip(new) {
                        if new {
                            self.count_new_payment(payment);
                        }
                    }
                    written += chunk.len();
                }
                Err(e) => {
                    let left = records.len() - written;
                    tracing::warn!(error = %e, payments = left, "cannot record served payments; retrying");
                    return Some(
                        records
                            .into_iter()
                            .skip(written)
                            .map(|p| (p.payment_hash, p))
                            .collect(),
                    );
                }
            }
        }
        None
    }
}

fn unix_now_secs() -> u64 {
    crate::clock::unix_now()
}

/// How often idle sessions are looked for (and closed, their balance
/// refunded: [`crate::sessions`]).
const REAP_EVERY: Duration = Duration::from_secs(15);

/// How long served payments gather before they are written: revenue in
/// the metrics lags by about this much, and a process killed hard loses
/// the records of about this long (never a claim: see
/// [`Paywall::record_paid`]). Each payment's row sits at a random place
/// in the store's index (its key is a payment hash): a batch that
/// gathers longer changes each page of that index once for more
/// payments, which on a store of some size is most of what writing
/// payments costs.
const SERVED_LINGER: Duration = Duration::from_millis(500);

/// Payments written in one store call: one SQLite transaction holds its
/// single writer for the time of one chunk.
const SERVED_CHUNK: usize = 256;

/// Served payments waiting to be written, by payment hash.
type Served = crate::FastMap<[u8; 32], PaymentRecord>;

/// Adds `more` to `into`, payment by payment.
fn merge_served(into: &mut Served, more: Served) {
    for (hash, payment) in more {
        match into.entry(hash) {
            std::collections::hash_map::Entry::Occupied(mut known) => {
                let known = known.get_mut();
                known.served += payment.served;
                known.at = known.at.max(payment.at);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(payment);
            }
        }
    }
}

/// The refusal of a credential whose payment the operator revoked.
pub(crate) fn revoked() -> Refusal {
    Refusal::new(
        StatusCode::PAYMENT_REQUIRED,
        ProblemType::VerificationFailed,
        "this payment's credential was revoked by the operator",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Served payments gathered past one chunk are written in several
    /// store calls (none holds the store's writer for the whole batch),
    /// each payment once, with every request it served counted.
    #[tokio::test]
    async fn a_large_batch_of_served_payments_is_written_in_chunks_and_whole() {
        let weather = PricedService::new("weather", "/weather", 2);
        let fixture = crate::fixture::paywall([weather.clone()]).await;
        let paywall = &fixture.paywall;
        let metrics = paywall.metrics();
        let payments = 2 * SERVED_CHUNK + 3;
        let verified = |i: usize| {
            use sha2::Digest;
            Verified {
                payment_hash: sha2::Sha256::digest(i.to_be_bytes()).into(),
                challenge_id: None,
                expires_at: u64::MAX,
                single_use: true,
                balance: None,
                proven: true,
                paid_sats: Some(2),
                pass_secs: None,
            }
        };
        for i in 0..payments {
            paywall.record_paid(&weather, "Payment", &verified(i));
        }
        // One of them served a second request.
        paywall.record_paid(&weather, "Payment", &verified(7));
        paywall.shutdown().await;

        let calls =
            metrics.sample("gate402_store_call_duration_seconds_count{call=\"record_payments\"}");
        assert_eq!(calls, Some(3), "{}", metrics.render());
        assert_eq!(
            metrics.sample("gate402_payments_total{service=\"weather\",scheme=\"Payment\"}"),
            Some(payments as u64)
        );
        let rows = paywall
            .store()
            .payments(&gate402_store::PaymentQuery {
                since: 0,
                until: u64::MAX / 2,
                service: None,
                scheme: None,
                payment_hash: None,
                limit: 10_000,
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), payments);
        assert_eq!(
            rows.iter().map(|r| r.served).sum::<u64>(),
            payments as u64 + 1
        );
    }
}
