//! `gate402 serve`: the paywall in front of the proxy, plus health,
//! metrics, discovery and (on the sandbox) the sandbox payer.

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
use axum_server::tls_rustls::RustlsConfig;
use gate402_l402::RootKeySecrets;
use gate402_mpp::challenge::ChallengeKey;
use gate402_store::{PostgresStore, SqliteStore, Store};
use tower::Layer;

use crate::config::{GatewayConfig, StoreConfig};
use crate::discovery;
use crate::lightning::Connected;
use crate::mcp::PaidTools;
use crate::metrics::Metrics;
use crate::paywall::{Paywall, PaywallParts};
use crate::proxy::Proxy;

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    paywall: Paywall,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    purge: tokio::task::JoinHandle<()>,
    /// Held for the gateway's life: one gateway per data dir.
    _data_dir_lock: std::fs::File,
}

#[derive(Clone)]
struct AppState {
    paywall: Paywall,
    mcp: Option<PaidTools>,
    name: Arc<str>,
    realm: Arc<str>,
    store: Arc<dyn Store>,
}

/// The gateway's secret (from the config, or made once and kept in the
/// data dir) and the previous ones: they bind MPP challenge ids and derive
/// L402 root keys.
fn secrets(config: &GatewayConfig, data_dir: &Path) -> Result<(ChallengeKey, RootKeySecrets)> {
    let secret = match &config.mpp.secret {
        Some(secret) => secret.clone(),
        None => {
            let path = data_dir.join("mpp_secret");
            match std::fs::read_to_string(&path) {
                Ok(secret) => secret.trim().to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let secret = hex::encode(rand::random::<[u8; 32]>());
                    std::fs::create_dir_all(data_dir)?;
                    std::fs::write(&path, &secret)
                        .with_context(|| format!("writing {}", path.display()))?;
                    secret
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
    };
    let mut key = ChallengeKey::new(secret.clone())?;
    let mut root_keys = RootKeySecrets::new(secret.as_bytes());
    for previous in &config.mpp.previous_secrets {
        key = key.with_previous(previous.clone())?;
        root_keys = root_keys.with_previous(previous.as_bytes());
    }
    Ok((key, root_keys))
}

/// This replica's name in the store, made once and kept in the data dir,
/// and the lock that keeps a second gateway off the same data dir (it
/// would release this one's claims at its start). The lock holds while the
/// returned file is open.
fn replica_id(data_dir: &Path) -> Result<(String, std::fs::File)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let lock_path = data_dir.join("gateway.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "another gateway is running on the data dir {}; give each replica its own --data-dir",
            data_dir.display()
        );
    }
    let path = data_dir.join("replica_id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        Ok(_) => anyhow::bail!("{} is empty; delete it to make a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = hex::encode(rand::random::<[u8; 16]>());
            std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
            id
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok((id, lock))
}

impl Gateway {
    /// Starts everything the config describes; state goes under `data_dir`.
    pub async fn start(config: &GatewayConfig, data_dir: &Path) -> Result<Self> {
        let connected = config.lightning.connect(data_dir).await?;
        Self::start_with(config, data_dir, connected).await
    }

    /// Starts with a backend that is already running (the config's
    /// `[lightning]` table is then not used).
    pub async fn start_with(
        config: &GatewayConfig,
        data_dir: &Path,
        connected: Connected,
    ) -> Result<Self> {
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Sqlite(_) => {
                Arc::new(SqliteStore::open(&config.store.sqlite_path(data_dir))?)
            }
            StoreConfig::Postgres(url) => Arc::new(
                PostgresStore::connect(url)
                    .await
                    .context("store: connecting to PostgreSQL")?,
            ),
        };
        let (key, root_keys) = secrets(config, data_dir)?;
        let (replica, lock) = replica_id(data_dir)?;
        let paywall = Paywall::new(PaywallParts {
            backend: connected.backend,
            store: store.clone(),
            key,
            root_keys,
            replica,
            realm: config.mpp.realm.clone(),
            invoice_expiry_secs: config.invoice_expiry_secs,
            services: config.services.clone(),
            metrics: Arc::new(Metrics::default()),
            limits: config.limits,
        })
        .await
        .context("asking the Lightning backend for its network")?;
        let released = paywall
            .release_abandoned_claims()
            .await
            .context("releasing the claims of the previous run")?;
        if released > 0 {
            tracing::warn!(
                released,
                "released MPP credentials left in flight when this gateway last stopped; their clients may retry"
            );
        }
        let mcp = PaidTools::from_config(config, &paywall).await?;
        let state = AppState {
            paywall: paywall.clone(),
            mcp: mcp.clone(),
            name: config.name.as_str().into(),
            realm: config.mpp.realm.as_str().into(),
            store: store.clone(),
        };
        let mut app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/.well-known/l402-services", get(l402_services))
            .route("/openapi.json", get(openapi))
            .route("/.well-known/mcp", get(well_known_mcp))
            .with_state(state);
        if let Some(tools) = mcp {
            app = app.merge(crate::mcp::router(tools));
        }
        if let Some(sandbox) = connected.sandbox {
            app = app.merge(gate402_lightning_sandbox::http::router(sandbox));
        }
        let app = app.fallback_service(paywall.layer().layer(Proxy::default()));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (shutdown, mut stop) = tokio::sync::watch::channel(false);
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let task = match &config.tls {
            None => tokio::spawn(async move {
                axum::serve(listener, service)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    })
                    .await
            }),
            Some(tls) => {
                // Several crypto providers are linked in (ring, aws-lc);
                // rustls needs to be told which one serves.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let rustls = RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                    .await
                    .with_context(|| {
                        format!(
                            "tls: cannot load {} and {}",
                            tls.cert.display(),
                            tls.key.display()
                        )
                    })?;
                let handle = axum_server::Handle::new();
                let stopper = handle.clone();
                tokio::spawn(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                    stopper.graceful_shutdown(Some(Duration::from_secs(30)));
                });
                let listener = listener.into_std()?;
                tokio::spawn(async move {
                    axum_server::from_tcp_rustls(listener, rustls)?
                        .handle(handle)
                        .serve(service)
                        .await
                })
            }
        };
        let purge = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(600)).await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if let Err(e) = store.purge_expired(now).await {
                    tracing::warn!(error = %e, "purging expired challenges failed");
                }
            }
        });
        let test_money = matches!(
            config.lightning,
            crate::lightning::LightningConfig::Sandbox(_)
        );
        tracing::info!(%addr, backend = config.lightning.name(), services = config.services.len(), test_money, "gate402 listening");
        Ok(Self {
            addr,
            paywall,
            shutdown,
            task,
            purge,
            _data_dir_lock: lock,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The paywall (to reload services).
    pub fn paywall(&self) -> &Paywall {
        &self.paywall
    }

    /// Stops accepting, lets requests in flight finish, and returns.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.purge.abort();
        self.task.await??;
        Ok(())
    }

    /// Waits until the server stops on its own (it does not, short of an error).
    pub async fn wait(self) -> Result<()> {
        self.purge.abort();
        self.task.await??;
        Ok(())
    }

    /// A handle that triggers a graceful shutdown.
    pub fn shutdown_handle(&self) -> tokio::sync::watch::Sender<bool> {
        self.shutdown.clone()
    }
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    // Healthy when the store answers.
    match state.store.root_key(&[0; 32]).await {
        Ok(_) => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "store": e.to_string()})),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.paywall.metrics().render(),
    )
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

async fn l402_services(State(state): State<AppState>) -> impl IntoResponse {
    Json(discovery::l402_services(
        &state.name,
        &state.realm,
        &state.paywall.services(),
    ))
}

async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    Json(discovery::openapi(&state.name, &state.paywall.services()))
}
