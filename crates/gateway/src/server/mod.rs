//! `gate402 serve`: the paywall in front of the proxy, plus health,
//! metrics, discovery, paid MCP tools and (on the sandbox) the sandbox
//! payer; and its life: start, reload, graceful stop.
//!
//! - [`data_dir`]: the lock, the replica's name, the secrets (private);
//! - `front`: which requests are the gateway's own endpoints and which
//!   go to the paywalled proxy;
//! - [`listen`]: connections, bounded in time and number.

pub(crate) mod cors;
pub mod data_dir;
mod front;
pub mod listen;
mod reload;

pub use reload::Reloader;

/// The health check's path.
const HEALTH_PATH: &str = "/healthz";

/// The metrics' path, when public (`server.public_metrics`).
const METRICS_PATH: &str = "/metrics";

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use gate402_paywall::{ObservedBackend, ObservedStore, Paywall, PricedService};
use gate402_store::{PostgresStore, SecretCheck, SqliteStore, Store};
use tokio_util::sync::CancellationToken;

use crate::config::{GatewayConfig, ServiceConfig, StoreConfig};
use crate::discovery;
use crate::lightning::Connected;
use crate::mcp::{McpAccess, PaidTools};
use crate::proxy::Proxy;
use crate::services::ServicesHandle;
use data_dir::DataDir;

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    paywall: Paywall,
    services: ServicesHandle,
    /// `[admin]` as started, for [`Reloader`].
    admin_config: crate::config::AdminConfig,
    /// The settings only a restart changes, as started.
    started_rest: Vec<(&'static str, String)>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    purge: tokio::task::JoinHandle<()>,
    sync: tokio::task::JoinHandle<()>,
    /// Ends with an error when another process took this replica's name.
    name: tokio::task::JoinHandle<Result<()>>,
    admin: Option<crate::admin::AdminListener>,
    _data_dir: DataDir,
}

#[derive(Clone)]
struct AppState {
    paywall: Paywall,
    mcp: Option<PaidTools>,
    name: Arc<str>,
    realm: Arc<str>,
    discovery: Arc<crate::config::DiscoveryConfig>,
    /// The node's id, asked of the backend once it answers.
    node_pubkey: Arc<tokio::sync::OnceCell<String>>,
}

fn priced(services: &[ServiceConfig]) -> Vec<PricedService> {
    services.iter().map(|s| s.priced.clone()).collect()
}

impl Gateway {
    /// Starts everything the config describes; state goes under `data_dir`.
    ///
    /// # Errors
    ///
    /// When the backend, the store, the data dir or the listener cannot
    /// be set up.
    pub async fn start(config: &GatewayConfig, data_dir: &Path) -> Result<Self> {
        data_dir::create_private_dir(data_dir)?;
        let connected = config.lightning.connect(data_dir).await?;
        Self::start_with(config, data_dir, connected).await
    }

    /// Starts with a backend that is already running (the config's
    /// `[lightning]` table is then not used).
    ///
    /// # Errors
    ///
    /// As [`Gateway::start`].
    pub async fn start_with(
        config: &GatewayConfig,
        data_dir: &Path,
        connected: Connected,
    ) -> Result<Self> {
        let data_dir = DataDir::open(data_dir)?;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Sqlite(_) => Arc::new(SqliteStore::open(
                &config.store.sqlite_path(data_dir.path()),
            )?),
            StoreConfig::Postgres(url) => Arc::new(
                PostgresStore::connect(url)
                    .await
                    .context("store: connecting to PostgreSQL")?,
            ),
        };
        // Every store and Lightning call is timed (and traced inside a
        // request) through these, into the paywall's metrics.
        let paywall_metrics = Arc::new(gate402_paywall::Metrics::default());
        let store: Arc<dyn Store> = Arc::new(ObservedStore::new(
            store,
            paywall_metrics.clone(),
            match &config.store {
                StoreConfig::Sqlite(_) => "sqlite",
                StoreConfig::Postgres(_) => "postgresql",
            },
        ));
        let backend_name = if connected.sandbox.is_some() {
            "sandbox"
        } else {
            config.lightning.name()
        };
        let backend = Arc::new(ObservedBackend::new(
            connected.backend,
            paywall_metrics.clone(),
            backend_name,
        ));
        let secret = match &config.mpp.secret {
            Some(secret) => secret.clone(),
            None => data_dir.secret("mpp_secret")?,
        };
        let mut builder = Paywall::builder(backend, store.clone(), &secret)?
            .metrics(paywall_metrics)
            .replica(data_dir.replica())
            .realm(config.mpp.realm.clone())
            .invoice_expiry_secs(config.invoice_expiry_secs)
            .services(priced(&config.services))
            .limits(config.limits)
            .trusted_proxies(config.server.trusted())
            .max_body_bytes(config.server.max_body_bytes)
            .idempotency(config.server.idempotency())
            .claim_lease(Duration::from_secs(config.claim_lease_secs));
        for previous in &config.mpp.previous_secrets {
            builder = builder.previous_secret(previous)?;
        }
        if connected.sandbox.is_some() {
            builder = builder.test_money(gate402_lightning_sandbox::TEST_MONEY);
        }
        let paywall = builder.build().await?;
        let replica = data_dir.replica();
        // A predecessor killed a moment ago holds it until the database
        // notices its connection closed.
        let mut held = false;
        for _ in 0..15 {
            held = store
                .hold_replica(replica)
                .await
                .context("taking this replica's name in the store")?;
            if held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !held {
            anyhow::bail!(
                "another gateway is running as replica {replica:?} on this store (was its data dir copied?); \
                 starting would release the payments it is serving: give each replica its own data dir, \
                 or delete {} from this one",
                data_dir.path().join("replica_id").display()
            );
        }
        let check = secret_check(&secret, &config.mpp.previous_secrets, &config.mpp.realm);
        if let Err(e) = refuse_disagreeing_secrets(store.as_ref(), replica, &check).await {
            // The name given back at once, for a start with other secrets.
            store.close().await;
            return Err(e);
        }
        let released = paywall
            .release_abandoned_claims()
            .await
            .context("releasing the claims of the previous run")?;
        if released > 0 {
            tracing::warn!(
                released,
                "released payments left in flight when this gateway last stopped; their clients may retry"
            );
        }
        if !gate402_paywall::issue::charges_on(paywall.network()) {
            tracing::warn!(
                network = %paywall.network(),
                "the Lightning charge method names no such network: 402s offer L402 only"
            );
        }
        for warning in &config.warnings {
            tracing::warn!("config: {warning}");
        }
        let proxy =
            Proxy::new(&config.services, config.server.trusted()).context("upstream TLS")?;
        let services = ServicesHandle::new(paywall.clone(), proxy.clone(), config);
        // What the admin API changed (prices, revocations) applies before
        // the first request is served.
        let mut sync = crate::admin::sync::Sync::new(paywall.clone(), services.clone());
        sync.catch_up()
            .await
            .context("catching up with the admin API's changes in the store")?;
        // The public port first: a gateway that cannot take it starts no
        // admin listener, says none is listening, writes no admin.json.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", config.listen))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let admin = crate::admin::listen(
            &config.admin,
            data_dir.path(),
            &data_dir.secret(crate::admin::SECRET_FILE)?,
            paywall.clone(),
            services.clone(),
            stop.clone(),
        )
        .await?;
        let sync =
            tokio::spawn(sync.run(Duration::from_secs(config.admin.sync_secs), stop.clone()));
        let mcp = PaidTools::from_config(config, &services.running(), &paywall, &proxy).await?;
        if let (Some(tools), None) = (&mcp, &config.mcp_proxy) {
            services.price_tools(config.tools.clone(), tools.clone());
        }
        let state = AppState {
            paywall: paywall.clone(),
            mcp: mcp.clone(),
            name: config.name.as_str().into(),
            realm: config.mpp.realm.as_str().into(),
            discovery: Arc::new(config.discovery.clone()),
            node_pubkey: Arc::default(),
        };
        let mut routes = Router::new()
            .route(HEALTH_PATH, get(healthz))
            .route(discovery::SERVICES_PATH, get(l402_services))
            .route(discovery::OPENAPI_PATH, get(openapi))
            .route(discovery::MANIFEST_PATH, get(l402_manifest))
            .route(discovery::QUOTE_PATH, get(l402_quote))
            .route(crate::mcp::WELL_KNOWN_PATH, get(well_known_mcp));
        if config.server.public_metrics {
            routes = routes.route(METRICS_PATH, get(metrics));
        }
        let mut app = routes.with_state(state);
        if let Some(tools) = mcp {
            let access = McpAccess::new(&config.mcp, &config.server.cors_origins, config.listen);
            app = app.merge(crate::mcp::router(tools, &config.mcp, &access, &paywall));
        }
        if let Some(sandbox) = connected.sandbox {
            app = app.merge(gate402_lightning_sandbox::http::router(sandbox));
        }
        // The 402s come from the paywall crate; the link to the manifest is
        // this program's to add.
        let paywalled = tower::ServiceBuilder::new()
            .layer(tower::layer::layer_fn(crate::proxy::RefuseUpgrades))
            .layer(tower::util::MapResponseLayer::new(link_manifest_on_402))
            .layer(paywall.layer())
            .service(proxy.clone());
        let app = front::Front::new(app.fallback_service(paywalled.clone()), paywalled);
        let tls = match &config.tls {
            None => None,
            Some(tls) => Some(listen::tls_acceptor(&tls.cert, &tls.key).context("tls")?),
        };
        let limits = listen::Limits {
            header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(config.server.idle_timeout_secs),
            max_connections: config
                .server
                .max_connections
                .unwrap_or_else(listen::max_connections_for_fd_limit),
            max_per_client: config.server.max_connections_per_client,
            trusted: config.server.trusted(),
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
        };
        let server = match cors::layer(&config.server.cors_origins) {
            Some(cors) => tokio::spawn(listen::serve(
                listener,
                tls,
                cors::ForPages::new(cors, app),
                limits,
                stop.clone(),
            )),
            None => tokio::spawn(listen::serve(listener, tls, app, limits, stop.clone())),
        };
        let name = tokio::spawn(keep_replica_name(
            store.clone(),
            replica.to_owned(),
            stop.clone(),
        ));
        let retention = config.receipts_retention_days * 86_400;
        let purge = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(600)).await;
                let now = gate402_paywall::unix_now();
                if let Err(e) = store.purge_expired(now).await {
                    tracing::warn!(error = %e, "purging expired claims failed");
                }
                // A paymentId's invoice is looked up for a day after it was
                // made; a day more covers replicas whose clocks disagree.
                let invoices_before =
                    now.saturating_sub(crate::mcp::PAYMENT_ID_LIFETIME_SECS + 86_400);
                if let Err(e) = store
                    .purge_records(invoices_before, now.saturating_sub(retention))
                    .await
                {
                    tracing::warn!(error = %e, "purging old invoices and receipts failed");
                }
            }
        });
        tracing::info!(%addr, backend = config.lightning.name(), services = services.running().len(), test_money = paywall.test_money().is_some(), "gate402 listening");
        Ok(Self {
            addr,
            services,
            admin_config: config.admin.clone(),
            started_rest: reload::restart_only(config),
            paywall,
            stop,
            server,
            purge,
            sync,
            name,
            admin,
            _data_dir: data_dir,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API listens, unless `[admin] enabled = false`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr())
    }

    /// The paywall.
    pub fn paywall(&self) -> &Paywall {
        &self.paywall
    }

    /// What replaces the services on a reload.
    pub fn services_handle(&self) -> ServicesHandle {
        self.services.clone()
    }

    /// What applies a config file again (on SIGHUP): the services, the
    /// tools and the admin listener's credentials.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            services: self.services.clone(),
            admin: self.admin.as_ref().map(|a| a.handle()),
            started: self.admin_config.clone(),
            started_rest: self.started_rest.clone(),
        }
    }

    /// Stops accepting, lets requests in flight finish (for the grace
    /// period), records every pending claim outcome and receipt, and
    /// returns.
    ///
    /// # Errors
    ///
    /// When the listener had failed.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after [`Gateway::shutdown_handle`] is
    /// cancelled), then finishes what [`Gateway::shutdown`] finishes.
    ///
    /// # Errors
    ///
    /// When the listener had failed.
    pub async fn wait(self) -> Result<()> {
        let served = self.server.await;
        self.purge.abort();
        let named = self.name.await;
        let _ = self.sync.await;
        if let Some(admin) = self.admin {
            admin.wait().await;
        }
        // Paid requests still at their upstreams are waited for as long as
        // an upstream may take to answer (then it is a 504): each is
        // settled by its answer, not left in flight.
        let longest = self
            .services
            .running()
            .iter()
            .filter_map(|s| s.upstream.as_ref().map(|u| u.response_timeout))
            .max()
            .unwrap_or_default();
        self.paywall
            .shutdown_within(longest.max(Duration::from_secs(60)) + Duration::from_secs(5))
            .await;
        // Last: everything above may still have written to it.
        self.paywall.store().close().await;
        served??;
        named?
    }

    /// Cancelling it starts a graceful stop.
    pub fn shutdown_handle(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// How often a running gateway checks that it still holds its replica
/// name in the store.
const NAME_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Keeps this replica's name held ([`gate402_store::Store::hold_replica`])
/// until `stop`: a store that let it go (PostgreSQL dropped the connection
/// holding it) is asked to take it again. If another process took it
/// meanwhile, two gateways run under one name: this one stops, and ends
/// with an error.
async fn keep_replica_name(
    store: Arc<dyn gate402_store::Store>,
    replica: String,
    stop: CancellationToken,
) -> Result<()> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(NAME_CHECK_EVERY) => {}
        }
        match store.hold_replica(&replica).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(%replica, "another gateway took this replica's name on the store; stopping");
                stop.cancel();
                anyhow::bail!(
                    "another gateway took replica name {replica:?} on this store while this one ran (was its data dir copied?); stopped"
                );
            }
            // Asked again at the next round; claims fail meanwhile anyway.
            Err(e) => tracing::warn!(error = %e, "store: cannot check this replica's name"),
        }
    }
}

/// How long a health check waits for the store.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = tokio::time::timeout(HEALTH_TIMEOUT, state.paywall.store().ping()).await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))),
        failed => {
            if let Ok(Err(e)) = failed {
                tracing::warn!(error = %e, "health check: the store does not answer");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable", "store": "unavailable"})),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::admin::metrics_response(&state.paywall)
}

async fn well_known_mcp(State(state): State<AppState>) -> axum::response::Response {
    match &state.mcp {
        Some(tools) => Json(crate::mcp::describe(tools, &state.name).await).into_response(),
        None => crate::problem::problem_response(
            axum::http::StatusCode::NOT_FOUND,
            "about:blank",
            "Not Found",
            "this gateway serves no MCP tools (configure [[tools]] or [mcp_proxy])",
            None,
        ),
    }
}

/// A 402 names the L402 manifest (`rel="l402-manifest"`), so a client
/// that met a price can read the whole catalog.
fn link_manifest_on_402<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    if response.status() == StatusCode::PAYMENT_REQUIRED {
        response.headers_mut().append(
            header::LINK,
            header::HeaderValue::from_static(discovery::MANIFEST_LINK),
        );
    }
    response
}

/// A discovery document: cacheable for five minutes, readable from any
/// origin (it is public catalog data), linked to the L402 manifest.
fn discovery_document(doc: serde_json::Value) -> axum::response::Response {
    (
        [
            (header::CACHE_CONTROL, discovery::CACHE_CONTROL),
            (header::LINK, discovery::MANIFEST_LINK),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        Json(doc),
    )
        .into_response()
}

impl AppState {
    fn about(&self) -> discovery::About<'_> {
        discovery::About {
            name: &self.name,
            realm: &self.realm,
            discovery: &self.discovery,
            mpp: gate402_paywall::issue::charges_on(self.paywall.network()),
        }
    }
}

async fn l402_services(State(state): State<AppState>) -> axum::response::Response {
    discovery_document(discovery::l402_services(
        &state.about(),
        state.paywall.routes().services(),
    ))
}

async fn openapi(State(state): State<AppState>) -> axum::response::Response {
    discovery_document(discovery::openapi(
        &state.about(),
        state.paywall.routes().services(),
    ))
}

/// How long the manifest waits for the node's id.
const NODE_INFO_TIMEOUT: Duration = Duration::from_secs(2);

async fn l402_manifest(State(state): State<AppState>) -> axum::response::Response {
    let pubkey = state
        .node_pubkey
        .get_or_try_init(|| async {
            let info = tokio::time::timeout(NODE_INFO_TIMEOUT, state.paywall.backend().node_info())
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(hex::encode(info.pubkey))
        })
        .await;
    // Without it the manifest is still right, only less checkable; the
    // next request asks again.
    let pubkey = match pubkey {
        Ok(pubkey) => Some(pubkey.as_str()),
        Err(error) => {
            tracing::warn!(%error, "L402 manifest: the Lightning backend gave no node id");
            None
        }
    };
    discovery_document(discovery::manifest(
        &state.about(),
        pubkey,
        state.paywall.routes().services(),
    ))
}

#[derive(serde::Deserialize)]
struct QuoteQuery {
    path: Option<String>,
    method: Option<String>,
    /// The quoted request's own query, for a price that depends on it.
    query: Option<String>,
}

/// `GET /l402/quote?path=…&method=…`: the price of the route a request
/// with that path and method (on this host) would take.
async fn l402_quote(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<QuoteQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use gate402_paywall::route::{request_host, RequestPath};
    let bad_request = |detail: &str| {
        crate::problem::problem_response(
            StatusCode::BAD_REQUEST,
            "about:blank",
            "Bad Request",
            detail,
            None,
        )
    };
    let axum::extract::Query(query) = match query {
        Ok(query) => query,
        Err(e) => return bad_request(&crate::problem::query_unfit(&e)),
    };
    let Some(text) = query.path else {
        return bad_request("give the route as ?path=/some/path (and &method=GET)");
    };
    // Priced as the request's own query would be, so it is one a request
    // target could carry: a pricer is never shown what no request has.
    if let Some(q) = &query.query {
        if !q.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
            return bad_request(
                "query: write it as in a request target (visible ASCII, no #; percent-encode the rest, and that again inside ?query=)",
            );
        }
    }
    let path = match RequestPath::parse(&text) {
        Ok(path) => path,
        Err(e) => return bad_request(&format!("path: {e}")),
    };
    let method = match query
        .method
        .as_deref()
        .unwrap_or("GET")
        .parse::<axum::http::Method>()
    {
        Ok(method) if gate402_paywall::route::echoes_request(&method) => {
            return bad_request("method: the gateway answers it itself (405), never sells it")
        }
        Ok(method) => method,
        Err(_) => return bad_request("method: not an HTTP method"),
    };
    let host = match request_host(&uri, &headers) {
        Ok(host) => host,
        Err(e) => return bad_request(&format!("host: {e}")),
    };
    let routes = state.paywall.routes();
    let service = match routes.find(host.as_deref(), &method, &path) {
        Ok(service) => service,
        Err(e) => return bad_request(&e.to_string()),
    };
    let mut response = match service {
        Some(service) if state.about().sells(service) => {
            let quoted = discovery::quote(&state.about(), service, path.as_str(), &method);
            // What the request itself would be refused for, so is its quote.
            let price = match state
                .paywall
                .quote(
                    service,
                    &method,
                    path.as_str(),
                    query.query.as_deref(),
                    &headers,
                )
                .await
            {
                Ok(price) => price,
                Err(e) => return bad_request(&e.to_string()),
            };
            Json(discovery::with_price(quoted, service, price)).into_response()
        }
        Some(_) | None => crate::problem::problem_response(
            StatusCode::NOT_FOUND,
            "about:blank",
            "Not Found",
            &format!("no priced service takes {method} {}", path.as_str()),
            None,
        ),
    };
    let headers = response.headers_mut();
    // A reload may change a price: ask again rather than reuse.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    headers.insert(
        header::LINK,
        header::HeaderValue::from_static(discovery::MANIFEST_LINK),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

/// What this replica's MPP secrets derive for [`SecretCheck`], with its
/// realm: HMAC-SHA256 of a fixed label and the realm under each, so that
/// no secret is stored. A challenge names its realm and is verified
/// against the verifier's own, so replicas of other realms refuse each
/// other's MPP credentials as replicas of other secrets do.
fn secret_check(secret: &str, previous: &[String], realm: &str) -> SecretCheck {
    use hmac::{KeyInit as _, Mac as _};
    let of = |secret: &str| -> [u8; 32] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"gate402 replica secret check\0");
        mac.update(realm.as_bytes());
        mac.finalize().into_bytes().into()
    };
    let current = of(secret);
    SecretCheck {
        current,
        accepted: std::iter::once(current)
            .chain(previous.iter().map(|p| of(p)))
            .collect(),
    }
}

/// Records this replica's [`SecretCheck`] and refuses to start beside a
/// running replica whose secrets do not agree with it: each would refuse
/// the credentials the other issues, and a client paying through one and
/// retrying through the other would lose its payment. Recorded before it
/// looks, so that of two started together each sees the other.
async fn refuse_disagreeing_secrets(
    store: &dyn Store,
    replica: &str,
    check: &SecretCheck,
) -> Result<()> {
    store
        .put_secret_check(replica, check)
        .await
        .context("recording what this replica's MPP secret derives")?;
    let checks = store
        .secret_checks()
        .await
        .context("reading what the other replicas' MPP secrets derive")?;
    for (other, theirs) in checks {
        if other == replica || check.agrees_with(&theirs) {
            continue;
        }
        if store
            .replica_running(&other)
            .await
            .context("asking whether another replica runs")?
        {
            anyhow::bail!(
                "replica {other:?} runs on this store with an MPP secret or realm that does not agree with this one's: \
                 each would refuse the credentials the other issues (L402 401, MPP 402), and clients paying \
                 through one and retrying through the other would lose their payments. Give every replica \
                 the same [mpp] secret and realm; to replace the secret, first add the new one to previous_secrets \
                 on every replica, then make it the secret with the old one in previous_secrets; to change the \
                 realm, stop every replica first"
            );
        }
    }
    Ok(())
}
