//! The gateway's config file: TOML, with `${ENV}` substitution, checked
//! whole so that every mistake is reported at once with its key path.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::http::{HeaderName, HeaderValue, Method};
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
    pub limits: crate::limits::LimitsConfig,
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
        service.name = format!("mcp/{}", self.name);
        service.price_sats = self.price_sats.unwrap_or(called.price_sats);
        service.description = self.description.clone();
        service.schemes = Schemes::Mpp;
        if let Some(path) = &self.path {
            service.path = PathPattern::Exact(path.clone());
        }
        if let Some(method) = self.method.as_deref().and_then(|m| m.parse().ok()) {
            service.methods = vec![method];
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

/// Whether a service charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Every call pays.
    On,
    /// No paywall.
    Off,
    /// This many free calls per client IP, then pay.
    Freebie(u64),
}

/// Which schemes a service offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schemes {
    /// L402 and MPP, one invoice.
    Both,
    /// L402 only.
    L402,
    /// MPP only.
    Mpp,
}

impl Schemes {
    /// Whether L402 is offered.
    pub fn l402(self) -> bool {
        matches!(self, Schemes::Both | Schemes::L402)
    }

    /// Whether MPP is offered.
    pub fn mpp(self) -> bool {
        matches!(self, Schemes::Both | Schemes::Mpp)
    }
}

/// A path pattern: exact (`/weather`) or prefix (`/api/*`, `/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// The path, exactly.
    Exact(String),
    /// Any path under this prefix (which ends with `/`, or is empty for all).
    Prefix(String),
}

impl PathPattern {
    fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with /"));
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => Ok(PathPattern::Prefix(prefix.to_owned())),
            Some(_) => Err(format!(
                "{text:?}: * is allowed only as the last segment, as in /api/*"
            )),
            None if text.contains('*') => Err(format!("{text:?}: * is allowed only at the end")),
            None => Ok(PathPattern::Exact(text.to_owned())),
        }
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(prefix) => {
                path.starts_with(prefix.as_str()) || path == prefix.trim_end_matches('/')
            }
        }
    }

    /// The pattern as written.
    pub fn as_written(&self) -> String {
        match self {
            PathPattern::Exact(p) => p.clone(),
            PathPattern::Prefix(p) => format!("{p}*"),
        }
    }
}

/// A host pattern: exact (`api.example.com`) or a wildcard (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    /// Whether `host` (without port) matches, case-insensitively.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == self.0,
        }
    }
}

/// How the path is changed on its way upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Removed from the front of the path.
    pub strip_prefix: Option<String>,
    /// Then put in front of it.
    pub add_prefix: Option<String>,
}

impl Rewrite {
    /// The upstream path for a request path.
    pub fn apply(&self, path: &str) -> String {
        let stripped = match &self.strip_prefix {
            Some(prefix) => path.strip_prefix(prefix.as_str()).unwrap_or(path),
            None => path,
        };
        let joined = format!("{}{stripped}", self.add_prefix.as_deref().unwrap_or(""));
        if joined.starts_with('/') {
            joined
        } else {
            format!("/{joined}")
        }
    }
}

/// One priced service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Unique name: the L402 `services` caveat and the metrics label.
    pub name: String,
    /// Host the service answers on (any host when unset).
    pub host: Option<HostPattern>,
    /// Path pattern.
    pub path: PathPattern,
    /// HTTP methods (all when empty).
    pub methods: Vec<Method>,
    /// Where to proxy to (unset when the paywall wraps an app).
    pub upstream: Option<String>,
    /// Price per call.
    pub price_sats: u64,
    /// Charging mode.
    pub auth: Auth,
    /// Offered schemes.
    pub schemes: Schemes,
    /// How long an L402 token stays valid (`<service>_valid_until`).
    pub token_lifetime_secs: u64,
    /// Capabilities minted into L402 tokens.
    pub capabilities: Vec<String>,
    /// Headers added upstream (an API key the client never sees).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Path rewrite.
    pub rewrite: Rewrite,
    /// Used in invoices, challenges and discovery.
    pub description: String,
}

impl ServiceConfig {
    /// A service for `path` at `price_sats`, every other setting default.
    pub fn new(name: &str, path: &str, price_sats: u64) -> Self {
        Self {
            name: name.to_owned(),
            host: None,
            path: PathPattern::parse(path).unwrap_or(PathPattern::Exact(path.to_owned())),
            methods: Vec::new(),
            upstream: None,
            price_sats,
            auth: Auth::On,
            schemes: Schemes::Both,
            token_lifetime_secs: 3600,
            capabilities: Vec::new(),
            headers: Vec::new(),
            rewrite: Rewrite::default(),
            description: name.to_owned(),
        }
    }

    /// Whether a request is for this service.
    pub fn matches(&self, host: Option<&str>, method: &Method, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some(host)) => pattern.matches(host),
            (Some(_), None) => false,
        };
        host_ok
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.path.matches(path)
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
        let config = check.config(&root);
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
            self.unknown_keys(store, "store", &["kind", "path", "url"]);
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
            if !seen.insert(service.name.clone()) {
                self.error(
                    &format!("services[{i}].name"),
                    format!("{:?} is used by an earlier service", service.name),
                );
            }
        }
        if root.contains_key("limits") {
            if let Some(limits) = self.get::<crate::limits::LimitsConfig>(root, "", "limits") {
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
        match services.iter().find(|s| s.name == tool.service) {
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
                match (&tool.path, &service.path) {
                    (Some(p), _) if !p.starts_with('/') => {
                        self.error(&join(path, "path"), format!("{p:?} must start with /"))
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
            Some(p) => PathPattern::parse(&p)
                .map_err(|e| self.error(&at("path"), e))
                .ok(),
            None if !t.contains_key("path") => {
                self.error(&at("path"), "is required");
                None
            }
            None => None,
        };
        let mut service = ServiceConfig::new(name.as_deref().unwrap_or("?"), "/", 0);
        if let Some(pattern) = pattern {
            service.path = pattern;
        }
        if let Some(host) = self.get::<String>(t, path, "host") {
            service.host = Some(HostPattern(host.to_ascii_lowercase()));
        }
        for (i, method) in self
            .get::<Vec<String>>(t, path, "methods")
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => service.methods.push(m),
                Err(_) => self.error(
                    &format!("{}[{i}]", at("methods")),
                    format!("{method:?} is not an HTTP method"),
                ),
            }
        }
        if let Some(upstream) = self.get::<String>(t, path, "upstream") {
            match upstream.parse::<axum::http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http")) && uri.authority().is_some() =>
                {
                    service.upstream = Some(upstream.trim_end_matches('/').to_owned())
                }
                Ok(uri) if matches!(uri.scheme_str(), Some("https")) => self.error(
                    &at("upstream"),
                    "https upstreams are not supported yet; use http:// on a trusted network",
                ),
                _ => self.error(
                    &at("upstream"),
                    format!("{upstream:?} is not an http://host[:port] URL"),
                ),
            }
        }
        match self.get::<i64>(t, path, "price_sats") {
            Some(p) if p > 0 && p <= 21_000_000 * 100_000_000 => service.price_sats = p as u64,
            Some(p) => self.error(
                &at("price_sats"),
                format!("{p} is not a positive number of satoshis"),
            ),
            None if !t.contains_key("price_sats") => self.error(&at("price_sats"), "is required"),
            None => {}
        }
        if let Some(auth) = self.get::<String>(t, path, "auth") {
            let words: Vec<&str> = auth.split_whitespace().collect();
            service.auth = match words.as_slice() {
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
            service.schemes = match schemes.as_str() {
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
                service.token_lifetime_secs = secs as u64;
            }
        }
        let capabilities: Vec<String> = self.get(t, path, "capabilities").unwrap_or_default();
        for (i, c) in capabilities.iter().enumerate() {
            if c.is_empty() || c.contains([',', '=']) {
                self.error(
                    &format!("{}[{i}]", at("capabilities")),
                    format!("{c:?} may not be empty or contain , or ="),
                );
            }
        }
        service.capabilities = capabilities;
        if let Some(headers) = self.table(t, path, "headers") {
            for (name, value) in headers {
                let key = format!("{}.{name}", at("headers"));
                let header = HeaderName::from_bytes(name.as_bytes());
                let value = value.as_str().map(HeaderValue::from_str);
                match (header, value) {
                    (Ok(h), Some(Ok(v))) => service.headers.push((h, v)),
                    (Err(_), _) => self.error(&key, "not a valid header name"),
                    _ => self.error(&key, "value must be a string a header can carry"),
                }
            }
        }
        if let Some(rewrite) = self.table(t, path, "rewrite") {
            let rpath = at("rewrite");
            self.unknown_keys(rewrite, &rpath, &["strip_prefix", "add_prefix"]);
            service.rewrite = Rewrite {
                strip_prefix: self.get(rewrite, &rpath, "strip_prefix"),
                add_prefix: self.get(rewrite, &rpath, "add_prefix"),
            };
        }
        if let Some(description) = self.get::<String>(t, path, "description") {
            if description.chars().any(|c| c.is_control()) {
                self.error(&at("description"), "may not contain control characters");
            }
            service.description = description;
        }
        name.map(|_| service)
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
        assert_eq!(s.auth, Auth::Freebie(3));
        assert_eq!(s.schemes, Schemes::L402);
        assert_eq!(s.headers[0].1, "sekret");
        assert_eq!(s.upstream.as_deref(), Some("http://127.0.0.1:9001"));
        assert_eq!(
            s.rewrite.apply("/v1/forecast/oslo"),
            "/internal/forecast/oslo"
        );
        assert!(s.matches(Some("eu.weather.test"), &Method::GET, "/v1/forecast/oslo"));
        assert!(!s.matches(Some("weather.test"), &Method::GET, "/v1/forecast/oslo"));
        assert!(!s.matches(Some("eu.weather.test"), &Method::POST, "/v1/forecast/oslo"));
        assert!(!s.matches(Some("eu.weather.test"), &Method::GET, "/v1/other"));
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
        let p = PathPattern::parse("/api/*").unwrap();
        assert!(
            p.matches("/api/x") && p.matches("/api/") && p.matches("/api") && !p.matches("/apix")
        );
        assert!(PathPattern::parse("/a*b").is_err());
        assert!(PathPattern::parse("/*").unwrap().matches("/anything"));
        assert_eq!(
            Rewrite {
                strip_prefix: Some("/api".into()),
                add_prefix: None
            }
            .apply("/api"),
            "/"
        );
    }
}
