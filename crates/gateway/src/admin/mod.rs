//! The operator's side: an admin API (JSON over HTTP, errors as RFC 9457
//! problem bodies, its OpenAPI document at `/admin/api/openapi.json`) and
//! the dashboard built on it at `/admin/`, on a listener of their own
//! (loopback by default); and the sync that makes every replica sharing
//! the store apply the changes made through any of them.
//!
//! - [`auth`]: named bearer secrets, login links and the dashboard cookie;
//! - `services`: list, create, update, disable, enable, delete;
//! - `reports`: payments, revenue, 402s and conversion;
//! - `tokens`: show and revoke a payment's credentials, close sessions;
//! - `node`: the Lightning node's funds, channels and invoices;
//! - `metrics`: the Prometheus metrics (public only with
//!   `[server] public_metrics`);
//! - [`sync`]: changes and revocations in from the store, 402 counts out.
//!
//! Every change is written to the store's admin log with the name of the
//! credential that made it, and logged (target `gate402::admin`).

pub mod auth;
mod dashboard;
mod node;
mod openapi;
mod payment;
mod reports;
mod services;
pub mod sync;
mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gate402_paywall::{unix_now, Paywall};
use gate402_store::{AuditEntry, Store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use auth::{Credentials, LOCAL_ADMIN};

use crate::config::AdminConfig;
use crate::problem::problem_response;
use crate::services::ServicesHandle;

/// The file in the data dir where a running gateway says where its admin
/// API listens: `{"url": "http://127.0.0.1:PORT"}`.
pub const ADMIN_FILE: &str = "admin.json";

/// The file in the data dir holding the `local` admin credential.
pub const SECRET_FILE: &str = "admin_secret";

/// The header the dashboard sends with every change: a page of another
/// site cannot, so a cookie alone never changes anything.
pub const CHANGE_HEADER: &str = "x-gate402-admin";

/// What the admin handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    paywall: Paywall,
    services: ServicesHandle,
    /// Swapped whole by [`AdminHandle::reload`].
    credentials: Arc<ArcSwap<Credentials>>,
    /// Where the listener is, for login links.
    base_url: Arc<str>,
    low_inbound_sats: Arc<AtomicU64>,
    /// Login codes already traded for a cookie on this replica.
    redeemed: Arc<auth::Redeemed>,
}

/// The settings of a running admin listener that change without a
/// restart (on SIGHUP): its credentials and `low_inbound_sats`.
#[derive(Clone)]
pub struct AdminHandle {
    credentials: Arc<ArcSwap<Credentials>>,
    low_inbound_sats: Arc<AtomicU64>,
}

impl std::fmt::Debug for AdminHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminHandle")
            .field("credentials", &self.credentials.load())
            .finish_non_exhaustive()
    }
}

impl AdminHandle {
    /// Applies `config`'s credentials and `low_inbound_sats` at once: a
    /// credential removed or given another secret stops working for the
    /// next call, and so do the login links and dashboard cookies made
    /// with it. The data dir's `local` credential stays. `config` is
    /// taken as checked (by [`crate::GatewayConfig::load`]).
    pub fn reload(&self, config: &AdminConfig) {
        let running = self.credentials.load_full();
        self.credentials
            .store(Arc::new(running.with_configured(&config.credentials)));
        self.low_inbound_sats
            .store(config.low_inbound_sats, Ordering::Relaxed);
    }
}

impl AdminState {
    fn store(&self) -> &Arc<dyn Store> {
        self.paywall.store()
    }

    /// Writes a change to the admin log and the process log.
    async fn audit(&self, who: &Who, action: &str, target: &str, detail: Value) {
        tracing::info!(target: "gate402::admin", who = %who.name, action, target, %detail, "admin change");
        let entry = AuditEntry {
            at: unix_now(),
            who: who.name.clone(),
            action: action.into(),
            target: target.into(),
            detail: detail.to_string(),
        };
        if let Err(e) = self.store().log_admin(&entry).await {
            tracing::error!(error = %e, action, "store: cannot write the admin log");
        }
    }
}

/// The admin credential a request was made with.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    /// Its name.
    pub name: String,
    /// Through the dashboard's cookie rather than a bearer secret.
    pub cookie: bool,
    /// The credentials it was checked against: what is made for it (a
    /// login link) is signed with those, so that a reload between the
    /// check and the signature cannot hand a replaced secret a link
    /// under the new ones.
    pub credentials: Arc<Credentials>,
}

/// The running admin listener.
pub struct AdminListener {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    file: PathBuf,
    handle: AdminHandle,
}

impl AdminListener {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What changes in it without a restart.
    pub fn handle(&self) -> AdminHandle {
        self.handle.clone()
    }

    /// Waits for it to stop (after the gateway's stop was cancelled) and
    /// removes `admin.json`.
    pub async fn wait(self) {
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Starts the admin listener of `config` (unless disabled), with the data
/// dir's credential (made on first start, owner-only) and the configured
/// ones; writes `admin.json` into `data_dir`.
///
/// # Errors
///
/// When the address cannot be bound or the data dir written.
pub(crate) async fn listen(
    config: &AdminConfig,
    data_dir: &Path,
    local_secret: &str,
    paywall: Paywall,
    services: ServicesHandle,
    stop: CancellationToken,
) -> Result<Option<AdminListener>> {
    if !config.enabled {
        return Ok(None);
    }
    let addr: SocketAddr = crate::config::listen_addr(&config.listen)
        .map_err(|e| anyhow::anyhow!("admin.listen: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin.listen: cannot bind {addr}"))?;
    let addr = listener.local_addr()?;
    let base_url: Arc<str> = format!("http://{addr}").into();
    let handle = AdminHandle {
        credentials: Arc::new(ArcSwap::from_pointee(Credentials::new(
            local_secret,
            &config.credentials,
        ))),
        low_inbound_sats: Arc::new(AtomicU64::new(config.low_inbound_sats)),
    };
    let state = AdminState {
        paywall,
        services,
        credentials: handle.credentials.clone(),
        base_url: base_url.clone(),
        low_inbound_sats: handle.low_inbound_sats.clone(),
        redeemed: Arc::default(),
    };
    let app = router(state);
    let file = data_dir.join(ADMIN_FILE);
    crate::server::data_dir::write_private(
        &file,
        serde_json::json!({ "url": &*base_url })
            .to_string()
            .as_bytes(),
    )?;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    tracing::info!(url = %base_url, "admin API and dashboard listening (/admin/)");
    Ok(Some(AdminListener {
        addr,
        task,
        file,
        handle,
    }))
}

fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/services", get(services::list))
        .route(
            "/services/{name}",
            get(services::show)
                .put(services::put)
                .patch(services::patch)
                .delete(services::delete),
        )
        .route("/services/{name}/disable", post(services::disable))
        .route("/services/{name}/enable", post(services::enable))
        .route("/services/{name}/reset", post(services::reset))
        .route("/payments", get(reports::payments))
        .route("/revenue", get(reports::revenue))
        .route("/tokens/{token}", get(tokens::show))
        .route("/tokens/{token}/revoke", post(tokens::revoke))
        .route("/sessions", get(tokens::sessions))
        .route("/sessions/{id}", get(tokens::session))
        .route("/sessions/{id}/close", post(tokens::close_session))
        .route("/node", get(node::node))
        .route("/log", get(reports::log))
        .route("/metrics", get(metrics))
        .route("/login-links", post(login_link))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .route("/admin/api/openapi.json", get(openapi::document))
        .nest("/admin/api", api)
        .route("/admin/login", get(login))
        .merge(dashboard::router())
        .fallback(not_found)
        .with_state(state)
}

/// `GET /admin/api/metrics`: the Prometheus metrics, for the operator's
/// scraper (`authorization` with an admin credential).
async fn metrics(State(state): State<AdminState>) -> Response {
    metrics_response(&state.paywall)
}

/// The paywall's metrics as a response (OpenMetrics text), wherever they
/// are served.
pub(crate) fn metrics_response(paywall: &Paywall) -> Response {
    (
        [(header::CONTENT_TYPE, gate402_paywall::Metrics::CONTENT_TYPE)],
        paywall.metrics().render(),
    )
        .into_response()
}

/// Lets a request through with its [`Who`], or answers 401.
async fn authenticate(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = unix_now();
    let headers = request.headers();
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        // Which of two would count is a guess the caller should not make.
        return problem(
            StatusCode::BAD_REQUEST,
            "send one Authorization header, not several",
        );
    }
    let credentials = state.credentials.load_full();
    let who = match bearer(headers) {
        Some(secret) => credentials.bearer(secret).map(|name| Who {
            name: name.to_owned(),
            cookie: false,
            credentials: credentials.clone(),
        }),
        None => match cookie(headers) {
            Some(value) => {
                let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
                if changes && !headers.contains_key(CHANGE_HEADER) {
                    return problem(
                        StatusCode::FORBIDDEN,
                        &format!("a change made with the dashboard's cookie must carry the {CHANGE_HEADER} header"),
                    );
                }
                credentials.cookie(value, now).map(|name| Who {
                    name,
                    cookie: true,
                    credentials: credentials.clone(),
                })
            }
            None => None,
        },
    };
    match who {
        Some(who) => {
            request.extensions_mut().insert(who);
            next.run(request).await
        }
        None => {
            let detail = if bearer(request.headers()).is_some() {
                "this admin credential is not one the gateway knows: Authorization: Bearer <secret> (the data dir's admin_secret, or one of [admin] credentials)"
            } else if cookie(request.headers()).is_some() {
                "the dashboard's session has ended or is not this gateway's: log in again"
            } else {
                "an admin credential is required: Authorization: Bearer <secret> (the data dir's admin_secret, or one of [admin] credentials)"
            };
            let mut response = problem(StatusCode::UNAUTHORIZED, detail);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gate402-admin\""),
            );
            response
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == auth::COOKIE_NAME).then_some(value)
        })
}

/// `POST /admin/api/login-links`: a dashboard link usable once, for
/// [`auth::LOGIN_LINK_SECS`]. Only a bearer secret makes one: the
/// dashboard's cookie would otherwise renew itself for ever.
async fn login_link(
    State(state): State<AdminState>,
    axum::Extension(who): axum::Extension<Who>,
) -> Response {
    if who.cookie {
        return problem(
            StatusCode::FORBIDDEN,
            "a login link is made with an admin bearer secret (gate402 admin open), not with the dashboard's cookie",
        );
    }
    let now = unix_now();
    let code = who.credentials.login_code(&who.name, now);
    Json(serde_json::json!({
        "url": format!("{}/admin/login?code={code}", state.base_url),
        "expires_at": now + auth::LOGIN_LINK_SECS,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

/// `GET /admin/login?code=…`: trades a login link for the dashboard's
/// cookie and goes to the dashboard.
async fn login(
    State(state): State<AdminState>,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    let now = unix_now();
    // One snapshot checks the link and signs the cookie.
    let credentials = state.credentials.load_full();
    let Some(name) = query
        .code
        .as_deref()
        .and_then(|code| state.redeemed.redeem(&credentials, code, now))
    else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "this login link is not valid or has expired: make another with `gate402 admin open`",
        );
    };
    let cookie = format!(
        "{}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={}",
        auth::COOKIE_NAME,
        credentials.cookie_for(&name, now),
        auth::COOKIE_SECS
    );
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/admin/")
        .header(header::SET_COOKIE, cookie)
        .body(Body::empty())
        .expect("valid response")
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "no such admin resource")
}

/// The one path parameter of an admin route (a service's name, a
/// token, a session id), percent-decoded. One that does not decode to
/// text (`%00%ff`) is refused with a 400 problem body, as every admin
/// error is, not with the router's plain text.
pub(crate) struct Segment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(segment)) => Ok(Self(segment)),
            Err(rejection) => Err(problem(StatusCode::BAD_REQUEST, &rejection.body_text())),
        }
    }
}

/// A `400` for a query string that does not fit its endpoint's.
pub(crate) fn query_problem(rejection: &axum::extract::rejection::QueryRejection) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        &crate::problem::query_unfit(rejection),
    )
}

/// A problem body with the status's title.
pub(crate) fn problem(status: StatusCode, detail: &str) -> Response {
    problem_response(
        status,
        "about:blank",
        status.canonical_reason().unwrap_or("Error"),
        detail,
        None,
    )
}

/// A problem body with extra members (`errors`, say).
pub(crate) fn problem_with(status: StatusCode, detail: &str, extra: Value) -> Response {
    problem_response(
        status,
        "about:blank",
        status.canonical_reason().unwrap_or("Error"),
        detail,
        Some(extra),
    )
}

/// 503 when the store does not answer.
pub(crate) fn store_unavailable(e: &gate402_store::StoreError) -> Response {
    tracing::error!(error = %e, "admin: the store does not answer");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store does not answer; retry shortly",
    )
}
