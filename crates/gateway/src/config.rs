//! The gateway's config file: TOML, with `${ENV}` substitution, checked
//! whole so that every mistake is reported at once with its key path.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::http::{HeaderName, HeaderValue, Method};
use gate402_paywall::route::RequestPath;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::lightning::LightningConfig;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8402";

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
    /// What is allowed but risky, for `serve --check` and the log.
    pub warnings: Vec<String>,
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
}

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
    /// The service that prices and charges calls to this tool: the called
    /// service's upstream settings, under the name `mcp/<tool>`, the
    /// tool's price and description, paid with MPP (MCP carries no L402).
    pub fn paid_service(&self, called: &ServiceConfig) -> ServiceConfig {
        let mut service = called.clone();
        let priced = &mut service.priced;
        priced.name = format!("mcp/{}", self.name);
        priced.price_sats = self.price_sats.unwrap_or(called.priced.price_sats);
        priced.description = self.description.clone();
        priced.schemes = Schemes::Mpp;
        if let Some(path) = &self.path {
            priced.path = PathPattern::Exact(path.clone());
        }
        if let Some(method) = self.method.as_deref().and_then(|m| m.parse().ok()) {
            priced.methods = vec![method];
        }
        service
    }
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

pub use gate402_paywall::client::{ForwardedHeader, TrustedProxies};
pub use gate402_paywall::route::{HostPattern, PathPattern};
pub use gate402_paywall::{Auth, PricedService, Schemes};

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
        let rest = if rest.is_empty() { "/" } else { rest };
        match self.add_prefix.as_deref() {
            Some(prefix) => format!("{prefix}{rest}"),
            None => rest.to_owned(),
        }
    }
}

/// Whether `prefix` is `path` or a run of its whole segments (ASCII case
/// ignored, as routes are matched).
fn segment_prefix(path: &str, prefix: &str) -> bool {
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// Where a service's paid requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Its base URL, `http://host[:port][/base]` without a trailing `/`.
    pub url: String,
    /// Headers added upstream (an API key the client never sees).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Path rewrite.
    pub rewrite: Rewrite,
}

impl UpstreamConfig {
    /// An upstream at `url` with no headers and no rewrite.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            headers: Vec::new(),
            rewrite: Rewrite::default(),
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
    /// Seconds a session may stay unused before it is closed.
    #[serde(default = "McpConfig::default_session_idle")]
    pub session_idle_secs: u64,
}

impl McpConfig {
    fn default_max_sessions() -> usize {
        1000
    }
    fn default_session_idle() -> u64 {
        300
    }
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: None,
            allowed_origins: None,
            max_sessions: Self::default_max_sessions(),
            session_idle_secs: Self::default_session_idle(),
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
            warnings: Vec::new(),
        }
    }

    /// Reads, substitutes and checks a config file. Every problem is in the
    /// error, one per line, each with its key path.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        Self::parse(&text, |name| std::env::var(name).ok())
    }

    /// Parses config text; `env` resolves `${NAME}`.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut check = Checker::default();
        let text = substitute_env(text, &env, &mut check);
        let root: Table = match toml::from_str(&text) {
            Ok(root) => root,
            Err(e) => {
                check.error("", e.message().to_owned() + &location(&text, e.span()));
                return Err(ConfigErrors(check.errors));
            }
        };
        let mut config = check.config(&root);
        check.warn_risky(&config);
        config.warnings = std::mem::take(&mut check.warnings);
        if check.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(check.errors))
        }
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        format!(
            " (line {})",
            text[..s.start.min(text.len())].lines().count().max(1)
        )
    })
    .unwrap_or_default()
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

/// Replaces `${NAME}` with the variable's value outside comments, as the
/// gateway config does; every unset variable is reported. For other config
/// files of the same family (the client's).
pub fn expand_env(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigErrors> {
    let mut check = Checker::default();
    let text = substitute_env(text, &env, &mut check);
    if check.errors.is_empty() {
        Ok(text)
    } else {
        Err(ConfigErrors(check.errors))
    }
}

/// Replaces `${NAME}` with the variable's value; an unset one is an
/// error. Comments are left alone, so a commented-out line may mention a
/// variable that is not set.
fn substitute_env(
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
    check: &mut Checker,
) -> String {
    let mut out = String::with_capacity(text.len());
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let (code, comment) = line.split_at(comment_start(line).unwrap_or(line.len()));
        let mut rest = code;
        while let Some(start) = rest.find("${") {
            let Some(end) = rest[start..].find('}') else {
                break;
            };
            out.push_str(&rest[..start]);
            let name = &rest[start + 2..start + end];
            match env(name) {
                Some(value) => out.push_str(&value),
                None => check.error(
                    "",
                    format!(
                        "line {}: environment variable {name} is not set",
                        number + 1
                    ),
                ),
            }
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    out
}

/// Where a TOML comment starts on a line: the first `#` outside a string.
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return Some(i),
            None => {}
        }
    }
    None
}

#[derive(Default)]
struct Checker {
    errors: Vec<String>,
    warnings: Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Checker {
    fn error(&mut self, path: &str, message: impl Display) {
        if path.is_empty() {
            self.errors.push(message.to_string());
        } else {
            self.errors.push(format!("{path}: {message}"));
        }
    }

    fn get<T: DeserializeOwned>(&mut self, table: &Table, path: &str, key: &str) -> Option<T> {
        let value = table.get(key)?;
        match value.clone().try_into() {
            Ok(v) => Some(v),
            Err(e) => {
                let message = e.to_string();
                self.error(
                    &join(path, key),
                    message.lines().last().unwrap_or(&message).trim(),
                );
                None
            }
        }
    }

    fn table<'a>(&mut self, table: &'a Table, path: &str, key: &str) -> Option<&'a Table> {
        match table.get(key)? {
            Value::Table(t) => Some(t),
            other => {
                self.error(
                    &join(path, key),
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, table: &Table, path: &str, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                self.error(
                    &join(path, key),
                    format!("unknown key (expected one of: {})", known.join(", ")),
                );
            }
        }
    }

    fn config(&mut self, root: &Table) -> GatewayConfig {
        self.unknown_keys(
            root,
            "",
            &[
                "listen",
                "tls",
                "lightning",
                "store",
                "mpp",
                "invoice_expiry_secs",
                "name",
                "services",
                "tools",
                "mcp_proxy",
                "limits",
                "server",
                "mcp",
            ],
        );
        let mut config = GatewayConfig::default_with_services(Vec::new());
        if let Some(listen) = self.get::<String>(root, "", "listen") {
            match listen.parse() {
                Ok(addr) => config.listen = addr,
                Err(_) => self.error(
                    "listen",
                    format!("{listen:?} is not an address like 127.0.0.1:8402"),
                ),
            }
        }
        if let Some(tls) = self.table(root, "", "tls") {
            self.unknown_keys(tls, "tls", &["cert", "key"]);
            let cert = self.get::<PathBuf>(tls, "tls", "cert");
            let key = self.get::<PathBuf>(tls, "tls", "key");
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    for (k, p) in [("tls.cert", &cert), ("tls.key", &key)] {
                        if !p.exists() {
                            self.error(k, format!("{} does not exist", p.display()));
                        }
                    }
                    config.tls = Some(TlsConfig { cert, key });
                }
                _ => self.error("tls", "needs both cert and key"),
            }
        }
        if root.contains_key("lightning") {
            if let Some(lightning) = self.get::<LightningConfig>(root, "", "lightning") {
                match lightning.check() {
                    Ok(()) => config.lightning = lightning,
                    Err(e) => self.error("", format!("{e:#}")),
                }
            }
        }
        if let Some(store) = self.table(root, "", "store") {
            self.unknown_keys(store, "store", &["kind", "path", "url", "claim_lease_secs"]);
            if let Some(secs) = self.get::<i64>(store, "store", "claim_lease_secs") {
                match u64::try_from(secs) {
                    Ok(secs) if (1..=3600).contains(&secs) => config.claim_lease_secs = secs,
                    _ => self.error("store.claim_lease_secs", "must be between 1 and 3600"),
                }
            }
            match self.get::<String>(store, "store", "kind").as_deref() {
                None | Some("sqlite") => {
                    config.store = StoreConfig::Sqlite(self.get(store, "store", "path"));
                }
                Some("postgres") => match self.get::<String>(store, "store", "url") {
                    Some(url)
                        if url.starts_with("postgres://") || url.starts_with("postgresql://") =>
                    {
                        config.store = StoreConfig::Postgres(url);
                    }
                    Some(_) => self.error(
                        "store.url",
                        "expected postgres://user:password@host/database",
                    ),
                    None => self.error(
                        "store.url",
                        "kind = \"postgres\" needs url = \"postgres://…\"",
                    ),
                },
                Some(other) => self.error(
                    "store.kind",
                    format!("unknown store {other:?} (expected sqlite or postgres)"),
                ),
            }
        }
        let shared_store = matches!(config.store, StoreConfig::Postgres(_));
        if shared_store && root.get("mpp").and_then(|m| m.get("secret")).is_none() {
            self.error(
                "mpp.secret",
                "replicas sharing a PostgreSQL store must share the MPP secret: set it (32 bytes or more, e.g. secret = \"${GATE402_MPP_SECRET}\")",
            );
        }
        if let Some(mpp) = self.table(root, "", "mpp") {
            self.unknown_keys(mpp, "mpp", &["realm", "secret", "previous_secrets"]);
            if let Some(realm) = self.get::<String>(mpp, "mpp", "realm") {
                if realm.is_empty() || realm.chars().any(|c| c.is_control()) {
                    self.error(
                        "mpp.realm",
                        "must be non-empty text without control characters",
                    );
                }
                config.mpp.realm = realm;
            }
            config.mpp.secret = self.get(mpp, "mpp", "secret");
            config.mpp.previous_secrets =
                self.get(mpp, "mpp", "previous_secrets").unwrap_or_default();
            let secrets = config
                .mpp
                .secret
                .iter()
                .map(|s| ("mpp.secret".to_owned(), s));
            let previous = config
                .mpp
                .previous_secrets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("mpp.previous_secrets[{i}]"), s));
            for (path, secret) in secrets.chain(previous).collect::<Vec<_>>() {
                if secret.len() < gate402_mpp::challenge::MIN_SECRET_LEN {
                    self.error(
                        &path,
                        format!(
                            "must be at least {} bytes (got {})",
                            gate402_mpp::challenge::MIN_SECRET_LEN,
                            secret.len()
                        ),
                    );
                }
            }
        }
        if let Some(expiry) = self.get::<i64>(root, "", "invoice_expiry_secs") {
            match u32::try_from(expiry) {
                Ok(secs) if (60..=86_400).contains(&secs) => config.invoice_expiry_secs = secs,
                _ => self.error("invoice_expiry_secs", "must be between 60 and 86400"),
            }
        }
        if let Some(name) = self.get::<String>(root, "", "name") {
            config.name = name;
        }
        match root.get("services") {
            None => {}
            Some(Value::Array(list)) => {
                for (i, entry) in list.iter().enumerate() {
                    let path = format!("services[{i}]");
                    match entry {
                        Value::Table(t) => {
                            if let Some(service) = self.service(t, &path) {
                                config.services.push(service);
                            }
                        }
                        _ => self.error(&path, "expected a table ([[services]])"),
                    }
                }
            }
            Some(_) => self.error("services", "expected an array of tables ([[services]])"),
        }
        let mut seen = std::collections::HashSet::new();
        for (i, service) in config.services.iter().enumerate() {
            if !seen.insert(service.name().to_owned()) {
                self.error(
                    &format!("services[{i}].name"),
                    format!("{:?} is used by an earlier service", service.name()),
                );
            }
        }
        if root.contains_key("limits") {
            if let Some(limits) = self.get::<gate402_paywall::LimitsConfig>(root, "", "limits") {
                for (key, value) in [
                    (
                        "client_requests_per_second",
                        limits.client_requests_per_second,
                    ),
                    (
                        "service_requests_per_second",
                        limits.service_requests_per_second,
                    ),
                    (
                        "unpaid_invoices_per_minute",
                        limits.unpaid_invoices_per_minute,
                    ),
                ] {
                    if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                        self.error(&join("limits", key), "must be a number, 0 or more (0: off)");
                    }
                }
                config.limits = limits;
            }
        }
        if root.contains_key("server") {
            if let Some(server) = self.get::<ServerConfig>(root, "", "server") {
                for (key, value) in [
                    ("header_read_timeout_secs", server.header_read_timeout_secs),
                    ("idle_timeout_secs", server.idle_timeout_secs),
                    ("shutdown_grace_secs", server.shutdown_grace_secs),
                ] {
                    if !(1..=86_400).contains(&value) {
                        self.error(&join("server", key), "must be between 1 and 86400");
                    }
                }
                if server.max_connections == Some(0) || server.max_connections_per_client == 0 {
                    self.error("server", "connection limits must be 1 or more");
                }
                config.server = server;
            }
        }
        if root.contains_key("mcp") {
            if let Some(mcp) = self.get::<McpConfig>(root, "", "mcp") {
                if mcp.max_sessions == 0 || mcp.session_idle_secs == 0 {
                    self.error(
                        "mcp",
                        "max_sessions and session_idle_secs must be 1 or more",
                    );
                }
                for (i, origin) in mcp.allowed_origins.iter().flatten().enumerate() {
                    if !(origin.starts_with("http://")
                        || origin.starts_with("https://")
                        || origin == "null")
                    {
                        self.error(
                            &format!("mcp.allowed_origins[{i}]"),
                            format!("{origin:?} is not an origin like https://app.example.com"),
                        );
                    }
                }
                config.mcp = mcp;
            }
        }
        if root.contains_key("mcp_proxy") {
            if let Some(proxy) = self.get::<McpProxyConfig>(root, "", "mcp_proxy") {
                match (&proxy.url, &proxy.command) {
                    (Some(_), Some(_)) | (None, None) => {
                        self.error("mcp_proxy", "give either url or command, not both")
                    }
                    (Some(url), None)
                        if !url.starts_with("http://") && !url.starts_with("https://") =>
                    {
                        self.error("mcp_proxy.url", format!("{url:?} is not an http(s) URL"))
                    }
                    (None, Some(command)) if command.is_empty() => {
                        self.error("mcp_proxy.command", "names no program")
                    }
                    _ => {}
                }
                config.mcp_proxy = Some(proxy);
            }
        }
        if root.contains_key("tools") {
            if let Some(tools) = self.get::<Vec<ToolConfig>>(root, "", "tools") {
                for (i, tool) in tools.iter().enumerate() {
                    self.tool(tool, &format!("tools[{i}]"), &config.services, &tools[..i]);
                }
                config.tools = tools;
            }
        }
        config
    }

    fn tool(
        &mut self,
        tool: &ToolConfig,
        path: &str,
        services: &[ServiceConfig],
        earlier: &[ToolConfig],
    ) {
        let valid_name = !tool.name.is_empty()
            && tool.name.len() <= 64
            && tool
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            self.error(
                &join(path, "name"),
                format!("{:?}: use 1 to 64 letters, digits, _ or -", tool.name),
            );
        }
        if tool.name == crate::mcp::CREATE_PAYMENT || earlier.iter().any(|t| t.name == tool.name) {
            self.error(&join(path, "name"), format!("{:?} is taken", tool.name));
        }
        match services.iter().find(|s| s.name() == tool.service) {
            None => self.error(
                &join(path, "service"),
                format!("no [[services]] entry is named {:?}", tool.service),
            ),
            Some(service) => {
                if service.upstream.is_none() {
                    self.error(
                        &join(path, "service"),
                        format!("service {:?} has no upstream to call", tool.service),
                    );
                }
                match (&tool.path, &service.priced.path) {
                    (Some(p), _) if !p.starts_with('/') => {
                        self.error(&join(path, "path"), format!("{p:?} must start with /"))
                    }
                    (Some(p), _) if RequestPath::parse(p).map(|n| n.as_str() != p).unwrap_or(true) => {
                        self.error(
                            &join(path, "path"),
                            format!("{p:?} is not a path in normal form (no dot segments, %XX only where needed)"),
                        )
                    }
                    (None, PathPattern::Prefix(_)) => self.error(
                        &join(path, "path"),
                        format!(
                            "service {:?} matches a prefix; say which path the tool calls",
                            tool.service
                        ),
                    ),
                    _ => {}
                }
            }
        }
        if let Some(method) = &tool.method {
            if method.parse::<Method>().is_err() || method.is_empty() {
                self.error(
                    &join(path, "method"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
        }
        if tool.input_schema.get("type").and_then(|t| t.as_str()) != Some("object") {
            self.error(
                &join(path, "input_schema"),
                "must be a JSON Schema of an object ({ type = \"object\", properties = … })",
            );
        }
    }

    fn service(&mut self, t: &Table, path: &str) -> Option<ServiceConfig> {
        self.unknown_keys(
            t,
            path,
            &[
                "name",
                "host",
                "path",
                "methods",
                "upstream",
                "price_sats",
                "auth",
                "schemes",
                "token_lifetime_secs",
                "capabilities",
                "headers",
                "rewrite",
                "description",
            ],
        );
        let at = |key: &str| join(path, key);
        let name = self.get::<String>(t, path, "name");
        match &name {
            None if !t.contains_key("name") => self.error(&at("name"), "is required"),
            Some(n)
                if n.is_empty()
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                self.error(
                    &at("name"),
                    format!("{n:?} must be letters, digits, - or _"),
                )
            }
            _ => {}
        }
        let pattern = match self.get::<String>(t, path, "path") {
            Some(p) if !p.starts_with('/') => {
                self.error(&at("path"), format!("{p:?} must start with /"));
                None
            }
            Some(p) => PathPattern::parse(&p)
                .map_err(|e| self.error(&at("path"), e))
                .ok(),
            None if !t.contains_key("path") => {
                self.error(&at("path"), "is required");
                None
            }
            None => None,
        };
        let mut priced = PricedService::new(name.as_deref().unwrap_or("?"), "/", 0);
        if let Some(pattern) = pattern {
            priced.path = pattern;
        }
        if let Some(host) = self.get::<String>(t, path, "host") {
            match HostPattern::parse(&host) {
                Ok(pattern) => priced.host = Some(pattern),
                Err(e) => self.error(&at("host"), e),
            }
        }
        for (i, method) in self
            .get::<Vec<String>>(t, path, "methods")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => priced.methods.push(m),
                Err(_) => self.error(
                    &format!("{}[{i}]", at("methods")),
                    format!("{method:?} is not an HTTP method"),
                ),
            }
        }
        let mut upstream = None;
        if let Some(url) = self.get::<String>(t, path, "upstream") {
            match url.parse::<axum::http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http"))
                        && uri.authority().is_some()
                        && uri.query().is_none() =>
                {
                    upstream = Some(UpstreamConfig::new(&url));
                }
                Ok(uri) if matches!(uri.scheme_str(), Some("https")) => self.error(
                    &at("upstream"),
                    "https upstreams are not supported yet; use http:// on a trusted network",
                ),
                _ => self.error(
                    &at("upstream"),
                    format!("{url:?} is not an http://host[:port][/path] URL"),
                ),
            }
        }
        match self.get::<i64>(t, path, "price_sats") {
            Some(p) if p > 0 && p <= 21_000_000 * 100_000_000 => priced.price_sats = p as u64,
            Some(p) => self.error(
                &at("price_sats"),
                format!("{p} is not a positive number of satoshis"),
            ),
            None if !t.contains_key("price_sats") => self.error(&at("price_sats"), "is required"),
            None => {}
        }
        if let Some(auth) = self.get::<String>(t, path, "auth") {
            let words: Vec<&str> = auth.split_whitespace().collect();
            priced.auth = match words.as_slice() {
                ["on"] => Auth::On,
                ["off"] => Auth::Off,
                ["freebie", n] if n.parse::<u64>().is_ok() => Auth::Freebie(n.parse().unwrap_or(0)),
                _ => {
                    self.error(
                        &at("auth"),
                        format!("{auth:?} is not \"on\", \"off\" or \"freebie N\""),
                    );
                    Auth::On
                }
            };
        }
        if let Some(schemes) = self.get::<String>(t, path, "schemes") {
            priced.schemes = match schemes.as_str() {
                "both" => Schemes::Both,
                "l402" => Schemes::L402,
                "mpp" => Schemes::Mpp,
                other => {
                    self.error(
                        &at("schemes"),
                        format!("{other:?} is not \"l402\", \"mpp\" or \"both\""),
                    );
                    Schemes::Both
                }
            };
        }
        if let Some(secs) = self.get::<i64>(t, path, "token_lifetime_secs") {
            if secs <= 0 {
                self.error(&at("token_lifetime_secs"), "must be positive");
            } else {
                priced.token_lifetime_secs = secs as u64;
            }
        }
        if t.contains_key("capabilities") {
            let _: Option<Vec<String>> = self.get(t, path, "capabilities");
            self.warnings.push(format!(
                "{}: ignored: capabilities are no longer minted into tokens (nothing enforced them)",
                at("capabilities")
            ));
        }
        let mut headers = Vec::new();
        if let Some(table) = self.table(t, path, "headers") {
            for (name, value) in table {
                let key = format!("{}.{name}", at("headers"));
                let header = HeaderName::from_bytes(name.as_bytes());
                let value = value.as_str().map(HeaderValue::from_str);
                match (header, value) {
                    (Ok(h), Some(Ok(v))) => headers.push((h, v)),
                    (Err(_), _) => self.error(&key, "not a valid header name"),
                    _ => self.error(&key, "value must be a string a header can carry"),
                }
            }
        }
        let mut rewrite = Rewrite::default();
        if let Some(table) = self.table(t, path, "rewrite") {
            let rpath = at("rewrite");
            self.unknown_keys(table, &rpath, &["strip_prefix", "add_prefix"]);
            let mut prefix = |key: &str| -> Option<String> {
                let text: String = self.get(table, &rpath, key)?;
                match RequestPath::parse(&text) {
                    Ok(p) => Some(p.as_str().trim_end_matches('/').to_owned()),
                    Err(e) => {
                        self.error(&join(&rpath, key), format!("{text:?}: {e}"));
                        None
                    }
                }
            };
            rewrite.strip_prefix = prefix("strip_prefix").filter(|p| !p.is_empty());
            rewrite.add_prefix = prefix("add_prefix").filter(|p| !p.is_empty());
            if let Some(strip) = &rewrite.strip_prefix {
                if !segment_prefix(priced.path.stem(), strip) {
                    self.error(
                        &join(&rpath, "strip_prefix"),
                        format!(
                            "{strip:?} must be the start of path {:?} (whole segments)",
                            priced.path.as_written()
                        ),
                    );
                }
            }
        }
        if let Some(description) = self.get::<String>(t, path, "description") {
            if description.chars().any(|c| c.is_control()) {
                self.error(&at("description"), "may not contain control characters");
            }
            priced.description = description;
        }
        match &mut upstream {
            Some(upstream) => {
                upstream.headers = headers;
                upstream.rewrite = rewrite;
            }
            None if !headers.is_empty() || rewrite != Rewrite::default() => self.error(
                path,
                "headers and rewrite apply to an upstream; this service has none",
            ),
            None => {}
        }
        name.map(|_| ServiceConfig { priced, upstream })
    }

    /// Risky but valid: free routes that overlap paid ones (an upstream
    /// that serves one resource under several spellings may hand a paid
    /// one out through the free route), and tools nobody priced.
    fn warn_risky(&mut self, config: &GatewayConfig) {
        let services = &config.services;
        for (i, free) in services.iter().enumerate() {
            if free.priced.charges() {
                continue;
            }
            for (j, paid) in services.iter().enumerate() {
                let hosts_meet = match (&free.priced.host, &paid.priced.host) {
                    (Some(a), Some(b)) => {
                        a == b
                            || a.as_written().starts_with("*.")
                            || b.as_written().starts_with("*.")
                    }
                    _ => true,
                };
                if !paid.priced.charges()
                    || !hosts_meet
                    || !free.priced.path.overlaps(&paid.priced.path)
                {
                    continue;
                }
                let shared_upstream = match (&free.upstream, &paid.upstream) {
                    (Some(a), Some(b)) => a.url == b.url,
                    _ => false,
                };
                let why = if i < j {
                    "comes first, so it takes requests meant for"
                } else {
                    "catches what does not match"
                };
                self.warnings.push(format!(
                    "services[{i}] ({:?}, free, {}) {why} services[{j}] ({:?}, paid, {}){}",
                    free.priced.name,
                    free.priced.path.as_written(),
                    paid.priced.name,
                    paid.priced.path.as_written(),
                    if shared_upstream {
                        "; they share an upstream, which may serve a paid resource under a spelling only the free route matches (a file extension, an alias)"
                    } else {
                        ""
                    }
                ));
            }
        }
        if let Some(proxy) = &config.mcp_proxy {
            if proxy.default_price_sats.is_none() {
                self.warnings.push(
                    "mcp_proxy: no default_price_sats: tools not named in prices are refused (name a tool with 0 to make it free)".into(),
                );
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "API_KEY").then(|| "sekret".to_owned())
    }

    #[test]
    fn a_full_config() {
        let config = GatewayConfig::parse(
            r#"
            listen = "0.0.0.0:9000"
            name = "Weather Inc"
            invoice_expiry_secs = 900
            [mpp]
            realm = "api.weather.test"
            secret = "0123456789abcdef0123456789abcdef"
            [[services]]
            name = "forecast"
            host = "*.weather.test"
            path = "/v1/forecast/*"
            methods = ["get"]
            upstream = "http://127.0.0.1:9001/"
            price_sats = 21
            auth = "freebie 3"
            schemes = "l402"
            token_lifetime_secs = 60
            capabilities = ["read"]
            description = "Forecasts"
            headers = { "X-Api-Key" = "${API_KEY}" }
            rewrite = { strip_prefix = "/v1", add_prefix = "/internal" }
            "#,
            env,
        )
        .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        let s = &config.services[0];
        let up = s.upstream.as_ref().unwrap();
        assert_eq!(s.priced.auth, Auth::Freebie(3));
        assert_eq!(s.priced.schemes, Schemes::L402);
        assert_eq!(up.headers[0].1, "sekret");
        assert_eq!(up.url, "http://127.0.0.1:9001");
        let path = |p| RequestPath::parse(p).unwrap();
        assert_eq!(
            up.rewrite.apply(&path("/v1/forecast/oslo")),
            "/internal/forecast/oslo"
        );
        assert!(config.warnings.iter().any(|w| w.contains("capabilities")));
        let routes = gate402_paywall::route::Routes::new([s.priced.clone()]);
        let find =
            |host, method: &Method, p| routes.find(Some(host), method, &path(p)).unwrap().is_some();
        assert!(find("eu.weather.test", &Method::GET, "/v1/forecast/oslo"));
        assert!(!find("weather.test", &Method::GET, "/v1/forecast/oslo"));
        assert!(!find("eu.weather.test", &Method::POST, "/v1/forecast/oslo"));
        assert!(!find("eu.weather.test", &Method::GET, "/v1/other"));
    }

    #[test]
    fn rewrites_never_leave_their_prefix() {
        let rewrite = Rewrite {
            strip_prefix: Some("/v1/fc".into()),
            add_prefix: Some("/cheap".into()),
        };
        let path = |p| RequestPath::parse(p).unwrap();
        assert_eq!(rewrite.apply(&path("/v1/fc/x")), "/cheap/x");
        assert_eq!(rewrite.apply(&path("/V1/FC")), "/cheap/");
        // Not at a segment boundary: nothing is stripped.
        assert_eq!(rewrite.apply(&path("/v1/fcadmin")), "/cheap/v1/fcadmin");
        // Dot segments are resolved before: the service never matches.
        assert_eq!(
            path("/v1/fc/../../admin/secret.txt").as_str(),
            "/admin/secret.txt"
        );
        let errors = GatewayConfig::parse(
            "[[services]]\nname = \"a\"\npath = \"/v1/*\"\nprice_sats = 1\nupstream = \"http://127.0.0.1:9\"\nrewrite = { strip_prefix = \"/v1/fc\" }\n",
            env,
        )
        .unwrap_err();
        assert!(
            errors.to_string().contains("rewrite.strip_prefix"),
            "{errors}"
        );
    }

    #[test]
    fn every_error_with_its_key_path() {
        let errors = GatewayConfig::parse(
            r#"
            listen = "nowhere"
            colour = "blue"
            [lightning]
            backend = "sandbox"
            network = "mainnet"
            [mpp]
            secret = "short"
            [[services]]
            path = "api/*"
            price_sats = -5
            auth = "sometimes"
            [[services]]
            name = "b"
            path = "/b"
            price_sats = 1
            upstream = "ftp://x"
            headers = { "X-Key" = "${MISSING}" }
            "#,
            env,
        )
        .unwrap_err()
        .0;
        let expected = [
            "line 18: environment variable MISSING is not set",
            "colour: unknown key",
            "listen: \"nowhere\" is not an address",
            "test money on regtest",
            "mpp.secret: must be at least 32 bytes",
            "services[0].name: is required",
            "services[0].path: \"api/*\" must start with /",
            "services[0].price_sats: -5 is not a positive number",
            "services[0].auth: \"sometimes\"",
            "services[1].upstream: \"ftp://x\"",
        ];
        for needle in expected {
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{needle:?} missing from {errors:#?}"
            );
        }
    }

    #[test]
    fn substitution_skips_comments_and_strings_keep_hashes() {
        let config = GatewayConfig::parse(
            "# ${UNSET} in a comment is fine\nname = \"a # b ${API_KEY}\" # ${UNSET_TOO}\n",
            env,
        )
        .unwrap();
        assert_eq!(config.name, "a # b sekret");
    }

    #[test]
    fn patterns() {
        assert_eq!(
            Rewrite {
                strip_prefix: Some("/api".into()),
                add_prefix: None
            }
            .apply(&RequestPath::parse("/api").unwrap()),
            "/"
        );
    }
}
