//! The gateway's config file: TOML, with `${ENV}` expanded in its string
//! values, checked whole so that every mistake is reported at once with its
//! key path.
//!
//! Each table (and each `[[services]]` or `[[tools]]` entry) is
//! deserialized on its own (`check`, `services`), so one bad entry does not
//! hide the mistakes in the others; the rules serde cannot say (ranges,
//! patterns, references between sections) are checked after.

mod check;
mod env;
mod prices;
mod services;

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::http::{HeaderName, HeaderValue};
use gate402_paywall::route::RequestPath;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::lightning::LightningConfig;
use check::Checker;

pub use check::overlap_warnings;
pub use env::expand_env;
pub(crate) use services::{hidden_by, never_reached};

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8402";

/// The free MCP tool the gateway adds to sell `paymentId`s; a configured
/// tool may not take its name.
pub const CREATE_PAYMENT: &str = "create_payment";

/// Everything the gateway runs with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS certificate and key (PEM), when the gateway terminates TLS.
    pub tls: Option<TlsConfig>,
    /// The Lightning backend.
    pub lightning: LightningConfig,
    /// Where shared state lives.
    pub store: StoreConfig,
    /// MPP challenge binding.
    pub mpp: MppConfig,
    /// Seconds an invoice (and so a 402) stays payable.
    pub invoice_expiry_secs: u32,
    /// Name shown in discovery documents.
    pub name: String,
    /// The priced services; the first that matches a request wins.
    pub services: Vec<ServiceConfig>,
    /// The paid MCP tools served at `/mcp`, each calling a service.
    pub tools: Vec<ToolConfig>,
    /// Another MCP server whose tools `/mcp` serves, priced here.
    pub mcp_proxy: Option<McpProxyConfig>,
    /// Rate limits and the cap on unpaid invoices.
    pub limits: gate402_paywall::LimitsConfig,
    /// Connections, timeouts, trusted proxies.
    pub server: ServerConfig,
    /// Who may reach `/mcp`, and its sessions.
    pub mcp: McpConfig,
    /// Seconds a claim on a payment is leased (renewed while its response
    /// streams): how long a replica that died mid-request keeps its
    /// claims from the others (`[store] claim_lease_secs`).
    pub claim_lease_secs: u64,
    /// Days a receipt row is kept (`[store] receipts_retention_days`).
    pub receipts_retention_days: u64,
    /// What the discovery documents say beyond routes and prices.
    pub discovery: DiscoveryConfig,
    /// Where traces go (`[telemetry]`); off by default.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The operator's admin API.
    pub admin: AdminConfig,
    /// The `[[services]]` tables as written, before `${NAME}` expansion
    /// (so no secret from the environment is in them): what the admin API
    /// shows and edits. Empty for services made in code.
    pub service_tables: Vec<Table>,
    /// What is allowed but risky, for `serve --check` and the log.
    pub warnings: Vec<String>,
}

/// `[discovery]`: what the discovery documents (`/openapi.json`'s
/// `x-service-info`, the L402 manifest) say about the API that its routes
/// and prices cannot.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Up to 5 categories (`compute`, `data`, `search`…), for registries.
    #[serde(default)]
    pub categories: Vec<String>,
    /// The API's landing page: `docs.homepage`, the manifest's provider URI.
    #[serde(default)]
    pub homepage: Option<String>,
    /// Its API reference documentation: `docs.apiReference`.
    #[serde(default)]
    pub docs: Option<String>,
    /// Its documentation for language models (an `llms.txt`): `docs.llms`.
    #[serde(default)]
    pub llms: Option<String>,
}

/// `[admin]`: the operator's admin API and dashboard, on a listener of
/// their own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether it runs (default: yes).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where it listens (default `127.0.0.1:0`: loopback, a port chosen
    /// at start and written to `admin.json` in the data dir).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Seconds between checks of the store for changes other replicas
    /// made (services, revocations); default 1.
    #[serde(default = "one")]
    pub sync_secs: u64,
    /// Named bearer credentials besides the data dir's (`local`).
    #[serde(default)]
    pub credentials: Vec<AdminCredential>,
    /// The dashboard warns when the node can be paid less than this more
    /// (inbound liquidity, satoshis); default 50 000.
    #[serde(default = "default_low_inbound")]
    pub low_inbound_sats: u64,
}

/// A named admin credential; its name is logged with every change made
/// with it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCredential {
    /// Who it is (`ops`, `ci`…).
    pub name: String,
    /// The bearer secret, at least 32 characters.
    pub secret: String,
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredential")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_admin_listen(),
            sync_secs: 1,
            credentials: Vec::new(),
            low_inbound_sats: default_low_inbound(),
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

fn default_low_inbound() -> u64 {
    50_000
}

fn default_admin_listen() -> String {
    "127.0.0.1:0".into()
}

/// `[mcp_proxy]`: the paywall in front of another MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpProxyConfig {
    /// The upstream over streamable HTTP (`http://host:port/mcp`)…
    #[serde(default)]
    pub url: Option<String>,
    /// …or a program speaking MCP on stdio, with its arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The price of a tool `prices` does not name (default: free).
    #[serde(default)]
    pub default_price_sats: Option<u64>,
    /// Prices per tool; 0 makes a tool free.
    #[serde(default)]
    pub prices: std::collections::HashMap<String, u64>,
    /// Seconds a tool call may take before it fails, its payment unspent
    /// (default [`DEFAULT_TOOL_CALL_TIMEOUT_SECS`]).
    #[serde(default)]
    pub call_timeout_secs: Option<u64>,
    /// Environment variables set for `command` (values may hold
    /// `${NAME}`). The command gets no other of the gateway's but
    /// [`COMMAND_ENV`] and `pass_env`: its tools answer paying clients,
    /// and the gateway's environment holds its secrets.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Names of the gateway's environment variables passed on to
    /// `command` as they are.
    #[serde(default)]
    pub pass_env: Vec<String>,
}

/// The gateway's environment variables an `[mcp_proxy]` command gets
/// without asking (what finding and running a program, and trusting a
/// TLS server, need).
pub const COMMAND_ENV: [&str; 10] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// How long a call to an `[mcp_proxy]` upstream may take, by default
/// (seconds).
pub const DEFAULT_TOOL_CALL_TIMEOUT_SECS: u64 = 120;

/// A paid MCP tool, `[[tools]]`: it calls a priced service's upstream.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// The tool's name (letters, digits, `_`, `-`; up to 64).
    pub name: String,
    /// What it does, for the agent choosing tools.
    pub description: String,
    /// The `[[services]]` entry it calls: its upstream, rewrite and headers.
    pub service: String,
    /// HTTP method (default: the service's first, else GET). GET and
    /// DELETE send the arguments as the query string, others as a JSON body.
    #[serde(default)]
    pub method: Option<String>,
    /// Path to call (default: the service's path, when it is exact).
    #[serde(default)]
    pub path: Option<String>,
    /// JSON Schema of the arguments (default: any object).
    #[serde(default = "any_object")]
    pub input_schema: serde_json::Value,
    /// Price per call (default: the service's).
    #[serde(default)]
    pub price_sats: Option<u64>,
}

fn any_object() -> serde_json::Value {
    serde_json::json!({"type": "object"})
}

impl ToolConfig {
    /// Why this tool cannot be sold at its service's price over `services`
    /// as they are (`routes` made from them), as the field at fault and
    /// the words: the request it makes is one HTTP routes to another
    /// service (a dearer one: `/api/premium/x` under `/api/*` next to
    /// `/api/premium/*`) or to none (a method the service does not sell),
    /// or its service charges per event or unit used, which a call paid
    /// before it runs cannot, and the tool has no price of its own. `None`
    /// when it can be sold (or its service is missing, or its path is not
    /// its service's: other faults, told where the config is read).
    pub fn sale_fault(
        &self,
        services: &[ServiceConfig],
        routes: &gate402_paywall::route::Routes,
    ) -> Option<(&'static str, String)> {
        use gate402_paywall::route::RequestPath;
        let service = services.iter().find(|s| s.name() == self.service)?;
        if service.priced.meter != gate402_paywall::Meter::Request && self.price_sats.is_none() {
            return Some((
                "price_sats",
                format!(
                    "service {:?} charges per event or unit used, which a tool call paid before it runs cannot: give the tool a price_sats of its own",
                    self.service
                ),
            ));
        }
        let called = self.paid_service(service);
        let target = RequestPath::parse(called.priced.path.stem()).ok()?;
        let method = called
            .priced
            .methods
            .first()
            .cloned()
            .unwrap_or(axum::http::Method::GET);
        if !service.priced.path.matches(&target) {
            return None;
        }
        // A host the service's pattern matches.
        let host = service
            .priced
            .host
            .as_ref()
            .map(|h| h.as_written().replace('*', "tool"));
        let key = if self.path.is_some() {
            "path"
        } else {
            "method"
        };
        match routes.find(host.as_deref(), &method, &target) {
            Ok(Some(routed)) if routed.name == self.service => None,
            Ok(Some(routed)) => Some((
                key,
                format!(
                    "{method} {} is sold by service {:?} over HTTP, not by {:?}: a tool calls what its service sells",
                    target.as_str(),
                    routed.name,
                    self.service
                ),
            )),
            Ok(None) => Some((
                key,
                format!(
                    "{method} {} is not sold by service {:?} (its methods: {}): a tool calls what its service sells",
                    target.as_str(),
                    self.service,
                    service
                        .priced
                        .methods
                        .iter()
                        .map(axum::http::Method::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Err(_) => None,
        }
    }

    /// The service that prices and charges calls to this tool: the called
    /// service's upstream settings, under the name `mcp/<tool>`, the
    /// tool's price and description, paid with MPP (MCP carries no L402).
    pub fn paid_service(&self, called: &ServiceConfig) -> ServiceConfig {
        let mut service = called.clone();
        let priced = &mut service.priced;
        priced.name = tool_books_name(&self.name);
        priced.price_sats = self.price_sats.unwrap_or(called.priced.price_sats);
        priced.description = self.description.clone();
        priced.schemes = Schemes::MPP;
        priced.sells = Sells::Request;
        if let Some(path) = &self.path {
            priced.path = PathPattern::Exact(path.clone());
        }
        if let Some(method) = self.method.as_deref().and_then(|m| m.parse().ok()) {
            priced.methods = vec![method];
        }
        service
    }
}

/// The name the books, challenges and payments of MCP tool `tool` go
/// under (`mcp/<tool>`): a payment for one tool buys no other.
pub fn tool_books_name(tool: &str) -> String {
    format!("mcp/{tool}")
}

/// TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// Which store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite at this path (default `<data dir>/gate402.sqlite3`).
    Sqlite(Option<PathBuf>),
    /// PostgreSQL at this URL, shared by every replica.
    Postgres(String),
}

/// MPP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MppConfig {
    /// The realm of every challenge (usually the API's host).
    pub realm: String,
    /// The id-binding secret (at least 32 bytes). When unset, one is made
    /// and kept in the data directory; replicas must share one.
    pub secret: Option<String>,
    /// Earlier secrets, still accepted after a rotation.
    pub previous_secrets: Vec<String>,
}

pub use crate::tls::UpstreamTls;
pub use gate402_paywall::client::{ForwardedHeader, TrustedProxies};
pub use gate402_paywall::route::{HostPattern, PathPattern};
pub use gate402_paywall::{Auth, Meter, PricedService, Schemes, Sells, Usage};

/// How the path is changed on its way upstream. Applied to the normalized
/// path only, and only at segment boundaries, so the upstream path never
/// leaves `add_prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Removed from the front of the path (normal form, no trailing `/`).
    pub strip_prefix: Option<String>,
    /// Then put in front of it (normal form, no trailing `/`).
    pub add_prefix: Option<String>,
}

impl Rewrite {
    /// The upstream path for a normalized request path.
    pub fn apply(&self, path: &RequestPath) -> String {
        let path = path.as_str();
        let rest = match self.strip_prefix.as_deref() {
            Some(prefix) if segment_prefix(path, prefix) => &path[prefix.len()..],
            _ => path,
        };
        // The prefix's own path is the added prefix's own path (`/v1/fc`
        // to `/cheap`, as nginx's `proxy_pass` to a URI does): a framework
        // that routes `/cheap` and `/cheap/` apart (Flask, Express's strict
        // routing) answers the one it was asked for.
        match (self.add_prefix.as_deref(), rest) {
            (Some(prefix), rest) => format!("{prefix}{rest}"),
            (None, "") => "/".to_owned(),
            (None, rest) => rest.to_owned(),
        }
    }
}

/// Whether `prefix` is `path` or a run of its whole segments (ASCII case
/// ignored, as routes are matched).
pub(crate) fn segment_prefix(path: &str, prefix: &str) -> bool {
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// Where a service's paid requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Its base URL, `http[s]://host[:port][/base]` without a trailing `/`.
    pub url: String,
    /// Headers added upstream (an API key the client never sees).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Path rewrite.
    pub rewrite: Rewrite,
    /// Roots and client certificate, for `https://`.
    pub tls: UpstreamTls,
    /// How long to wait for a connection.
    pub connect_timeout: std::time::Duration,
    /// How long to wait for the response headers.
    pub response_timeout: std::time::Duration,
}

/// The default time to connect to an upstream.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// The default time for an upstream's response headers.
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 30;

impl UpstreamConfig {
    /// An upstream at `url` with no headers, no rewrite, default TLS and
    /// timeouts.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            headers: Vec::new(),
            rewrite: Rewrite::default(),
            tls: UpstreamTls::default(),
            connect_timeout: std::time::Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
            response_timeout: std::time::Duration::from_secs(DEFAULT_RESPONSE_TIMEOUT_SECS),
        }
    }
}

/// One `[[services]]` entry: what is sold (the paywall's part) and where
/// its requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The route, price and payment rules.
    pub priced: PricedService,
    /// The upstream (unset when the paywall guards an app of its own).
    pub upstream: Option<UpstreamConfig>,
}

impl ServiceConfig {
    /// A service for `path` at `price_sats`, every other setting default.
    pub fn new(name: &str, path: &str, price_sats: u64) -> Self {
        Self {
            priced: PricedService::new(name, path, price_sats),
            upstream: None,
        }
    }

    /// A service proxied to `upstream`.
    pub fn proxied(name: &str, path: &str, price_sats: u64, upstream: &str) -> Self {
        Self {
            priced: PricedService::new(name, path, price_sats),
            upstream: Some(UpstreamConfig::new(upstream)),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.priced.name
    }
}

/// `[server]`: connections, timeouts and who the clients are.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Seconds a client has to send a request's headers.
    #[serde(default = "ServerConfig::default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may go without a byte read or written (idle
    /// keep-alive, or a client that stopped reading) before it is closed.
    #[serde(default = "ServerConfig::default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Connections open at once, all clients together (default: what the
    /// process's file limit allows, at most 10 000).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address (an IPv6 /64);
    /// trusted proxies are exempt.
    #[serde(default = "ServerConfig::default_per_client")]
    pub max_connections_per_client: usize,
    /// Seconds a graceful stop waits for requests in flight.
    #[serde(default = "ServerConfig::default_grace")]
    pub shutdown_grace_secs: u64,
    /// Proxies (CIDRs) whose forwarding header names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header they append to: `x-forwarded-for` or `forwarded`.
    #[serde(default)]
    pub forwarded_header: ForwardedHeaderName,
    /// The largest body (bytes) of a paid POST, PUT or PATCH that is read
    /// to bind it to its payment (the MPP challenge's `digest`); a larger
    /// one gets a challenge without it. Default 1 MiB.
    #[serde(default = "ServerConfig::default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The largest response body (bytes) kept for a paid request that
    /// carries `Idempotency-Key`, to be replayed on its retry; a larger
    /// one is served and not kept. 0 turns `Idempotency-Key` off. Default
    /// 1 MiB.
    #[serde(default = "ServerConfig::default_idempotent_response_bytes")]
    pub idempotent_response_max_bytes: usize,
    /// Seconds a kept response is replayed (never past its credential's
    /// end). Default 86400.
    #[serde(default = "ServerConfig::default_idempotency_keep")]
    pub idempotency_keep_secs: u64,
    /// Whether `/metrics` is also served on this listener, to anyone. Off
    /// by default: the metrics count payments and revenue per service,
    /// which are the operator's to read (on the admin listener,
    /// `/admin/api/metrics`, with an admin credential).
    #[serde(default)]
    pub public_metrics: bool,
    /// Web origins (`https://app.example.com`, or `*` for any) whose pages
    /// may call the gateway from a browser (CORS): preflights answered,
    /// and the 402's challenges, receipts and `Retry-After` readable by
    /// their scripts. Empty (the default): no CORS fields.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

/// `forwarded_header` as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaderName {
    /// `X-Forwarded-For`.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

impl ServerConfig {
    fn default_header_read_timeout() -> u64 {
        10
    }
    fn default_idle_timeout() -> u64 {
        60
    }
    fn default_per_client() -> usize {
        64
    }
    fn default_grace() -> u64 {
        30
    }
    fn default_max_body_bytes() -> usize {
        gate402_paywall::DEFAULT_MAX_BODY_BYTES
    }
    fn default_idempotent_response_bytes() -> usize {
        gate402_paywall::idempotency::DEFAULT_MAX_RESPONSE_BYTES
    }
    fn default_idempotency_keep() -> u64 {
        gate402_paywall::idempotency::DEFAULT_KEEP_FOR.as_secs()
    }

    /// How paid responses are kept for `Idempotency-Key`, as the paywall
    /// takes it.
    pub fn idempotency(&self) -> gate402_paywall::IdempotencyConfig {
        gate402_paywall::IdempotencyConfig {
            max_response_bytes: self.idempotent_response_max_bytes,
            keep_for: std::time::Duration::from_secs(self.idempotency_keep_secs),
        }
    }

    /// The trusted proxies, as the paywall takes them.
    pub fn trusted(&self) -> TrustedProxies {
        TrustedProxies {
            networks: self.trusted_proxies.clone(),
            header: match self.forwarded_header {
                ForwardedHeaderName::XForwardedFor => ForwardedHeader::XForwardedFor,
                ForwardedHeaderName::Forwarded => ForwardedHeader::Forwarded,
            },
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: Self::default_header_read_timeout(),
            idle_timeout_secs: Self::default_idle_timeout(),
            max_connections: None,
            max_connections_per_client: Self::default_per_client(),
            shutdown_grace_secs: Self::default_grace(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeaderName::default(),
            max_body_bytes: Self::default_max_body_bytes(),
            idempotent_response_max_bytes: Self::default_idempotent_response_bytes(),
            idempotency_keep_secs: Self::default_idempotency_keep(),
            public_metrics: false,
            cors_origins: Vec::new(),
        }
    }
}

/// `[mcp]`: who may reach `/mcp`, and how many sessions it keeps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Host names (or `host:port`) `/mcp` answers to; DNS rebinding from a
    /// browser is refused. Default: loopback names when listening on
    /// loopback, any host otherwise.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins (`https://app.example.com`) allowed to call `/mcp`;
    /// a request carrying another `Origin` is refused. Default: none when
    /// listening on loopback (any `Origin` is refused), any otherwise.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Sessions open at once; an `initialize` past it gets 503.
    #[serde(default = "McpConfig::default_max_sessions")]
    pub max_sessions: usize,
    /// Sessions one client address (IPv6: one /64) may hold; past it 429.
    #[serde(default = "McpConfig::default_sessions_per_client")]
    pub max_sessions_per_client: usize,
    /// Seconds a session may stay unused before it is closed.
    #[serde(default = "McpConfig::default_session_idle")]
    pub session_idle_secs: u64,
    /// The largest request body `/mcp` reads (bytes); past it 413.
    #[serde(default = "McpConfig::default_request_bytes")]
    pub max_request_bytes: usize,
    /// Requests `/mcp` serves at once, all clients together; past it 503.
    #[serde(default = "McpConfig::default_in_flight")]
    pub max_requests_in_flight: usize,
    /// Requests one client may have in flight at `/mcp`; past it 429.
    #[serde(default = "McpConfig::default_in_flight_per_client")]
    pub max_requests_in_flight_per_client: usize,
}

impl McpConfig {
    fn default_max_sessions() -> usize {
        1000
    }
    fn default_sessions_per_client() -> usize {
        16
    }
    fn default_session_idle() -> u64 {
        300
    }
    fn default_request_bytes() -> usize {
        1 << 20
    }
    fn default_in_flight() -> usize {
        128
    }
    fn default_in_flight_per_client() -> usize {
        16
    }
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: None,
            allowed_origins: None,
            max_sessions: Self::default_max_sessions(),
            max_sessions_per_client: Self::default_sessions_per_client(),
            session_idle_secs: Self::default_session_idle(),
            max_request_bytes: Self::default_request_bytes(),
            max_requests_in_flight: Self::default_in_flight(),
            max_requests_in_flight_per_client: Self::default_in_flight_per_client(),
        }
    }
}

impl GatewayConfig {
    /// The built-in defaults: sandbox backend, SQLite, no services.
    pub fn default_with_services(services: Vec<ServiceConfig>) -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            tls: None,
            lightning: LightningConfig::default(),
            store: StoreConfig::Sqlite(None),
            mpp: MppConfig {
                realm: "gate402".into(),
                secret: None,
                previous_secrets: Vec::new(),
            },
            invoice_expiry_secs: 600,
            name: "gate402".into(),
            services,
            tools: Vec::new(),
            mcp_proxy: None,
            limits: Default::default(),
            server: ServerConfig::default(),
            mcp: McpConfig::default(),
            claim_lease_secs: gate402_paywall::DEFAULT_CLAIM_LEASE.as_secs(),
            receipts_retention_days: 90,
            discovery: DiscoveryConfig::default(),
            telemetry: Default::default(),
            admin: AdminConfig::default(),
            service_tables: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// One `[[services]]` table from elsewhere than the file (the admin
    /// API): `${NAME}` expanded with `env` and checked as the file's
    /// tables are, each error and warning prefixed with `path`. Answers
    /// the service and its warnings (a price on a free route, say).
    ///
    /// # Errors
    ///
    /// Every problem found, with its key path.
    pub fn service_from_table(
        table: &Table,
        path: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(ServiceConfig, Vec<String>), ConfigErrors> {
        let mut table = table.clone();
        let mut check = Checker::default();
        env::expand(&mut table, path, &env, &mut check.errors);
        let service = check.service(path, table);
        match service {
            Some(service) if check.errors.is_empty() => Ok((service, check.warnings)),
            _ => Err(ConfigErrors(check.errors)),
        }
    }

    /// Reads, expands and checks a config file. Every problem is in the
    /// error, one per line, each with its key path.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::load_with_warnings(path).0
    }

    /// Reads and checks the config file at `path` as [`Self::load`] does,
    /// with its warnings also when it has errors (in the config when it
    /// has none), as `serve --check` shows them.
    pub fn load_with_warnings(path: &Path) -> (Result<Self, ConfigErrors>, Vec<String>) {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_with_warnings(&text, |name| std::env::var(name).ok()),
            Err(e) => (Err(ConfigErrors(vec![e.to_string()])), Vec::new()),
        }
    }

    /// The warnings that hang on the addresses the gateway listens at: the
    /// sandbox reachable beyond loopback (anyone there pays its invoices
    /// for nothing), the admin API on a non-loopback address (plain HTTP).
    pub fn address_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if matches!(
            self.lightning,
            crate::lightning::LightningConfig::Sandbox(_)
        ) && !self.listen.ip().is_loopback()
        {
            warnings.push(format!(
                "lightning: the sandbox backend takes test money (it is also the default with no [lightning] table): anyone who reaches {} pays its invoices at /sandbox/pay for nothing, so every paid route is free to them; set [lightning] to sell for real",
                self.listen
            ));
        }
        if let Ok(addr) = listen_addr(&self.admin.listen) {
            if self.admin.enabled && !addr.ip().is_loopback() {
                warnings.push(format!(
                    "admin.listen: {addr} is not a loopback address: the admin API speaks plain HTTP, so its bearer secrets cross the network in the clear (put a TLS proxy in front, or keep it on loopback)"
                ));
            }
        }
        warnings
    }

    /// `admin.listen: …` when the admin API would listen on the gateway's
    /// own port (as `--listen` or `--admin-listen` may set them, after the
    /// file was checked).
    pub fn admin_port_clash(&self) -> Option<String> {
        admin_port_clash(&self.admin, self.listen).map(|clash| format!("admin.listen: {clash}"))
    }

    /// Listens at `listen` and the admin API at `admin`, where given,
    /// instead of where the file says (`serve --listen`,
    /// `--admin-listen`), with the warnings on those addresses made
    /// again ([`Self::address_warnings`]).
    pub fn listen_at(&mut self, listen: Option<SocketAddr>, admin: Option<SocketAddr>) {
        let before = self.address_warnings();
        self.warnings.retain(|w| !before.contains(w));
        if let Some(listen) = listen {
            self.listen = listen;
        }
        if let Some(admin) = admin {
            self.admin.listen = admin.to_string();
        }
        let now = self.address_warnings();
        self.warnings.extend(now);
    }

    /// Parses config text; `env` resolves `${NAME}` in string values.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        Self::parse_with_warnings(text, env).0
    }

    /// Parses config text as [`Self::parse`] does, with its warnings also
    /// when it has errors.
    pub fn parse_with_warnings(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> (Result<Self, ConfigErrors>, Vec<String>) {
        let mut root = match parse_toml(text) {
            Ok(root) => root,
            Err(e) => return (Err(e), Vec::new()),
        };
        let written: Vec<Table> = match root.get("services") {
            Some(Value::Array(entries)) => entries
                .iter()
                .filter_map(|entry| entry.as_table().cloned())
                .collect(),
            _ => Vec::new(),
        };
        let mut check = Checker::default();
        env::expand(&mut root, "", &env, &mut check.errors);
        let mut config = check.config(root);
        // The standard OpenTelemetry variables, where the file is silent.
        if let Err(e) = config.telemetry.inherit_env(&env) {
            check.errors.push(e);
        }
        config.service_tables = written;
        check.warn_risky(&config);
        config.warnings = std::mem::take(&mut check.warnings);
        if check.errors.is_empty() {
            let warnings = config.warnings.clone();
            (Ok(config), warnings)
        } else {
            (Err(ConfigErrors(check.errors)), config.warnings)
        }
    }
}

/// Parses TOML text into a table; a syntax error names its line.
fn parse_toml(text: &str) -> Result<Table, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let span = e
            .span()
            .map(|span| span.start.min(text.len())..span.end.min(text.len()));
        // Counted by line ends: a span at the start of a line is on it.
        let line = span
            .clone()
            .map(|span| text[..span.start].matches('\n').count() + 1);
        // A key given twice is named (the span is its second place).
        let key = span
            .map(|span| text[span].trim())
            .filter(|key| e.message() == "duplicate key" && !key.is_empty() && !key.contains('\n'));
        let mut message = e.message().to_owned();
        if let Some(key) = key {
            message = format!("{message} `{key}`");
        }
        if let Some(line) = line {
            message = format!("{message} (line {line})");
        }
        ConfigErrors(vec![message])
    })
}

/// Parses a config file of the same family as the gateway's (the
/// client's): TOML, `${NAME}` expanded in its string values, then
/// deserialized with every error's key path.
pub fn parse_with_env<T: DeserializeOwned>(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigErrors> {
    let mut root = parse_toml(text)?;
    let mut check = Checker::default();
    env::expand(&mut root, "", &env, &mut check.errors);
    let value = check.section("", Value::Table(root));
    match value {
        Some(value) if check.errors.is_empty() => Ok(value),
        _ => Err(ConfigErrors(check.errors)),
    }
}

/// A listening address: an IP address and a port (`127.0.0.1:8402`,
/// `[::1]:8402`), or `localhost` and a port for `127.0.0.1`.
///
/// # Errors
///
/// What it should look like: for another host name, or no port.
pub fn listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    let loopback = text
        .strip_prefix("localhost:")
        .and_then(|port| port.parse::<u16>().ok())
        .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    loopback.or_else(|| text.parse().ok()).ok_or_else(|| {
        format!("{text:?} is not an address like 127.0.0.1:8402 (an IP address or localhost, and a port)")
    })
}

/// Every problem found in a config, each prefixed with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The problems of the file at `path`, one per line, each after the
    /// file's name (`gate402.toml: services[0].path: …`).
    pub fn in_file(&self, path: &Path) -> String {
        let lines: Vec<String> = self
            .0
            .iter()
            .map(|error| format!("{}: {error}", path.display()))
            .collect();
        lines.join("\n")
    }
}

impl StoreConfig {
    /// The SQLite path, defaulting into the data directory.
    pub fn sqlite_path(&self, data_dir: &Path) -> PathBuf {
        match self {
            StoreConfig::Sqlite(Some(path)) => path.clone(),
            StoreConfig::Sqlite(None) | StoreConfig::Postgres(_) => {
                data_dir.join("gate402.sqlite3")
            }
        }
    }
}

/// Why the admin API cannot listen where `admin` says, beside a gateway
/// on `listen`: the same port.
fn admin_port_clash(admin: &AdminConfig, listen: SocketAddr) -> Option<String> {
    let addr = listen_addr(&admin.listen).ok()?;
    (admin.enabled && addr.port() != 0 && addr.port() == listen.port())
        .then(|| format!("{addr} is the gateway's own port: the admin API needs one of its own"))
}

/// `key` under `path`, as errors name it (`services[0].name`).
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Whether `authority` names its port well: not at all, or in digits, 1
/// to 65535, after the host's `:`. The `http` crate reads a port it cannot
/// parse (`:109543`, a bare `:`) as none, and a connection to it then goes
/// to the scheme's default port instead of failing.
pub(crate) fn port_is_valid(authority: &axum::http::uri::Authority) -> bool {
    let text = authority.as_str();
    let (_, port) = gate402_paywall::route::split_port(text.rsplit('@').next().unwrap_or(text));
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok_and(|p| p != 0)
        }
    }
}

/// The error for `url`, whose port [`port_is_valid`] refuses.
pub(crate) fn no_valid_port(url: &str) -> String {
    format!(
        "{:?} names no valid port: give one from 1 to 65535, or none for the scheme's own (80, 443)",
        redacted_url(url)
    )
}

/// `url` as an error or a log line may repeat it: user info
/// (`user:password@`) is replaced by `…@`, and a query (which may hold an
/// API key) by `?…`, whether the rest parses or not.
pub(crate) fn redacted_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let shown = match url[start..end].rfind('@') {
        Some(at) => format!("{}…{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    };
    let query = shown[start.min(shown.len())..].find('?').map(|i| start + i);
    match query {
        Some(at) => format!("{}?…", &shown[..at]),
        None => shown,
    }
}

#[cfg(test)]
mod tests;
