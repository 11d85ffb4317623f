//! Reading the config's tables and checking what serde cannot: ranges,
//! formats and the rules between sections. Errors and warnings are
//! collected, never returned early, so `serve --check` shows them all.

use std::fmt::Display;
use std::path::PathBuf;

use gate402_paywall::route::{PathPattern, RequestPath};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::{
    join, AdminConfig, DiscoveryConfig, GatewayConfig, McpConfig, McpProxyConfig, ServerConfig,
    StoreConfig, TlsConfig,
};
use crate::lightning::LightningConfig;
use crate::telemetry::TelemetryConfig;
use crate::LOCAL_ADMIN;

/// A serde message with the Rust type it expected said in words
/// (`expected i64` → `expected a whole number`): the reader wrote TOML.
fn in_words(message: &str) -> String {
    const TYPES: [(&str, &str); 12] = [
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i16", "expected a whole number"),
        ("expected i8", "expected a whole number"),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected u32", "expected a whole number of 0 or more"),
        ("expected u16", "expected a whole number of 0 or more"),
        ("expected u8", "expected a whole number of 0 or more"),
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a borrowed string", "expected a string"),
    ];
    let mut message = message.to_owned();
    for (rust, words) in TYPES {
        if let Some(at) = message.find(rust) {
            let end = at + rust.len();
            // `expected u64` but not `expected u6400…`.
            if !message[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                message.replace_range(at..end, words);
            }
        }
    }
    message
}

/// The top level. Each table is read on its own after, so a mistake in one
/// does not hide those in the others.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    listen: Option<String>,
    tls: Option<Value>,
    lightning: Option<Value>,
    store: Option<Value>,
    mpp: Option<Value>,
    invoice_expiry_secs: Option<i64>,
    name: Option<String>,
    services: Option<Value>,
    tools: Option<Value>,
    mcp_proxy: Option<Value>,
    limits: Option<Value>,
    server: Option<Value>,
    mcp: Option<Value>,
    discovery: Option<Value>,
    telemetry: Option<Value>,
    admin: Option<Value>,
}

/// `[tls]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// `[store]`; which keys apply depends on `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    path: Option<PathBuf>,
    url: Option<String>,
    claim_lease_secs: Option<i64>,
    receipts_retention_days: Option<i64>,
}

/// `[mpp]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMpp {
    realm: Option<String>,
    secret: Option<String>,
    previous_secrets: Option<Vec<String>>,
}

/// How close to its expiry a listener's certificate is warned of.
const CERT_EXPIRY_WARNING_DAYS: i64 = 14;

/// What was found wrong, and what is allowed but risky.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) errors: Vec<String>,
    pub(super) warnings: Vec<String>,
}

impl Checker {
    pub(super) fn error(&mut self, path: &str, message: impl Display) {
        if path.is_empty() {
            self.errors.push(message.to_string());
        } else {
            self.errors.push(format!("{path}: {message}"));
        }
    }

    /// Warns of the certificate at `key` (the listener's, or one the
    /// gateway presents to an upstream) that expired, or expires within
    /// [`CERT_EXPIRY_WARNING_DAYS`], at `at` (unix seconds): `who` refuses
    /// an expired one. An expired one is an error when `refused` (a client
    /// certificate: the upstream may refuse it with an answer of its own,
    /// nginx's 400, which spends the payment), else the gateway starts all
    /// the same.
    pub(super) fn check_expiry(&mut self, key: &str, at: i64, who: &str, refused: bool) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let when = time::OffsetDateTime::from_unix_timestamp(at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| at.to_string());
        if at <= now {
            let said = format!("the certificate expired at {when}: {who} refuses it; renew it");
            if refused {
                self.error(key, said);
            } else {
                self.warnings.push(format!("{key}: {said}"));
            }
        } else if at - now < CERT_EXPIRY_WARNING_DAYS * 86_400 {
            self.warnings.push(format!(
                "{key}: the certificate expires at {when}, in {} days; renew it",
                (at - now) / 86_400
            ));
        }
    }

    /// Whether an error was said of `path` already (an unset `${NAME}`,
    /// say): a check of its value would only repeat it.
    pub(super) fn said(&self, path: &str) -> bool {
        self.errors.iter().any(|e| {
            e.strip_prefix(path)
                .is_some_and(|rest| rest.starts_with(": "))
        })
    }

    /// Deserializes the table at `path`, reporting each unknown key and
    /// each value of the wrong type. Serde stops at the first, so the key
    /// at fault is dropped and the rest read again: one typo does not hide
    /// the next. That a dropped key is then missing is not news, and is
    /// not reported.
    pub(super) fn section<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        let mut table = self.table(path, value)?;
        let mut dropped: Vec<String> = Vec::new();
        loop {
            let e = match serde_path_to_error::deserialize(Value::Table(table.clone())) {
                Ok(value) => return Some(value),
                Err(e) => e,
            };
            let key = match e.path().iter().next() {
                Some(Segment::Map { key }) if table.contains_key(key) => Some(key.clone()),
                _ => None,
            };
            let echo = key.is_none()
                && dropped
                    .iter()
                    .any(|k| e.inner().message() == format!("missing field `{k}`"));
            if !echo {
                self.serde_error(path, &e);
            }
            let key = key?;
            table.remove(&key);
            dropped.push(key);
        }
    }

    /// `[lightning]`: its `backend`, then that backend's keys read as a
    /// section, so that each error names its key (`lightning.network`);
    /// read as one tagged enum, serde loses the path to the key.
    fn lightning(&mut self, value: Value) -> Option<LightningConfig> {
        let mut table = self.table("lightning", value)?;
        let backend = match table.remove("backend") {
            Some(Value::String(backend)) => backend,
            Some(other) => {
                let found = format!("expected a string, found {}", other.type_str());
                self.error("lightning.backend", found);
                return None;
            }
            None => {
                self.error(
                    "lightning.backend",
                    "is required: sandbox, ldk, lnd, cln or nwc",
                );
                return None;
            }
        };
        let table = Value::Table(table);
        match backend.as_str() {
            "sandbox" => self
                .section("lightning", table)
                .map(LightningConfig::Sandbox),
            "ldk" => self.section("lightning", table).map(LightningConfig::Ldk),
            "lnd" => self.section("lightning", table).map(LightningConfig::Lnd),
            "cln" => self.section("lightning", table).map(LightningConfig::Cln),
            "nwc" => self.section("lightning", table).map(LightningConfig::Nwc),
            other => {
                self.error(
                    "lightning.backend",
                    format!("{other:?} is not sandbox, ldk, lnd, cln or nwc"),
                );
                None
            }
        }
    }

    /// `value` as the table it must be.
    pub(super) fn table(&mut self, path: &str, value: Value) -> Option<Table> {
        match value {
            Value::Table(table) => Some(table),
            other => {
                self.error(
                    path,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn serde_error(&mut self, path: &str, e: &serde_path_to_error::Error<toml::de::Error>) {
        let mut at = path.to_owned();
        for segment in e.path() {
            match segment {
                Segment::Seq { index } => at.push_str(&format!("[{index}]")),
                Segment::Map { key } | Segment::Enum { variant: key } => at = join(&at, key),
                Segment::Unknown => at = join(&at, "?"),
            }
        }
        self.error(&at, in_words(e.inner().message().trim_end()));
    }

    /// The entries of the array of tables at `path` (`[[services]]`), each
    /// with its own path.
    pub(super) fn entries(&mut self, path: &str, value: Value) -> Vec<(String, Table)> {
        let Value::Array(list) = value else {
            self.error(path, format!("expected an array of tables ([[{path}]])"));
            return Vec::new();
        };
        let mut entries = Vec::new();
        for (i, entry) in list.into_iter().enumerate() {
            let at = format!("{path}[{i}]");
            match entry {
                Value::Table(table) => entries.push((at, table)),
                _ => self.error(&at, format!("expected a table ([[{path}]])")),
            }
        }
        entries
    }

    /// The whole config, from the parsed (and expanded) file.
    pub(super) fn config(&mut self, root: Table) -> GatewayConfig {
        let mut config = GatewayConfig::default_with_services(Vec::new());
        let Some(raw) = self.section::<RawRoot>("", Value::Table(root)) else {
            return config;
        };
        if let Some(listen) = raw.listen {
            match super::listen_addr(&listen) {
                Ok(addr) => config.listen = addr,
                Err(e) => self.error("listen", e),
            }
        }
        if let Some(tls) = raw.tls.and_then(|v| self.section::<RawTls>("tls", v)) {
            match (tls.cert, tls.key) {
                (Some(cert), Some(key)) => {
                    let mut missing = false;
                    for (k, p) in [("tls.cert", &cert), ("tls.key", &key)] {
                        if !p.exists() {
                            missing = true;
                            self.error(k, format!("{} does not exist", p.display()));
                        }
                    }
                    // Read as the listener will read them: a file that
                    // holds no certificate, or a key of another one, is
                    // said here, not at the start.
                    if !missing {
                        match crate::tls::server_config(&cert, &key) {
                            Err(e @ crate::tls::TlsError::File { setting, .. }) => {
                                self.error(&format!("tls.{setting}"), e);
                            }
                            Err(e) => self.error("tls", e),
                            Ok(_) => {
                                if let Ok(at) = crate::tls::expires_at(&cert) {
                                    self.check_expiry("tls.cert", at, "every client", false);
                                }
                            }
                        }
                    }
                    config.tls = Some(TlsConfig { cert, key });
                }
                _ => self.error("tls", "needs both cert and key"),
            }
        }
        if let Some(lightning) = raw.lightning.and_then(|v| self.lightning(v)) {
            match lightning.check() {
                Ok(()) => config.lightning = lightning,
                Err(e) => self.error("", format!("{e:#}")),
            }
        }
        if let Some(store) = raw.store.and_then(|v| self.section::<RawStore>("store", v)) {
            self.store(store, &mut config);
        }
        // Whether a secret is written at all: one of the wrong type is
        // reported by [mpp] itself.
        let secret_set = raw.mpp.as_ref().and_then(|m| m.get("secret")).is_some();
        if matches!(config.store, StoreConfig::Postgres(_)) && !secret_set {
            self.error(
                "mpp.secret",
                "replicas sharing a PostgreSQL store must share the MPP secret: set it (32 bytes or more, e.g. secret = \"${GATE402_MPP_SECRET}\")",
            );
        }
        if let Some(mpp) = raw.mpp.and_then(|v| self.section::<RawMpp>("mpp", v)) {
            self.mpp(mpp, &mut config);
        }
        if let Some(expiry) = raw.invoice_expiry_secs {
            match u32::try_from(expiry) {
                Ok(secs) if (60..=86_400).contains(&secs) => config.invoice_expiry_secs = secs,
                _ => self.error("invoice_expiry_secs", "must be between 60 and 86400"),
            }
        }
        if let Some(name) = raw.name {
            config.name = name;
        }
        if let Some(services) = raw.services {
            config.services = self.services(services);
        }
        if let Some(limits) = raw.limits.and_then(|v| self.section("limits", v)) {
            self.limits(&limits);
            config.limits = limits;
        }
        if let Some(server) = raw.server.and_then(|v| self.section("server", v)) {
            self.server(&server);
            config.server = server;
        }
        if let Some(mcp) = raw.mcp.and_then(|v| self.section("mcp", v)) {
            self.mcp(&mcp);
            config.mcp = mcp;
        }
        if let Some(proxy) = raw.mcp_proxy.and_then(|v| self.section("mcp_proxy", v)) {
            self.mcp_proxy(&proxy);
            config.mcp_proxy = Some(proxy);
        }
        if let Some(tools) = raw.tools {
            config.tools = self.tools(tools, &config.services);
        }
        if let Some(admin) = raw.admin.and_then(|v| self.section("admin", v)) {
            self.admin(&admin, config.listen);
            config.admin = admin;
        }
        if let Some(discovery) = raw.discovery.and_then(|v| self.section("discovery", v)) {
            self.discovery(&discovery);
            config.discovery = discovery;
        }
        if let Some(telemetry) = raw.telemetry.and_then(|v| self.section("telemetry", v)) {
            self.telemetry(&telemetry);
            config.telemetry = telemetry;
        }
        config
    }

    fn admin(&mut self, admin: &AdminConfig, listen: std::net::SocketAddr) {
        let addr = super::listen_addr(&admin.listen);
        if let Err(e) = &addr {
            self.error("admin.listen", e.clone());
        }
        if let Some(clash) = super::admin_port_clash(admin, listen) {
            self.error("admin.listen", clash);
        }
        if !(1..=3600).contains(&admin.sync_secs) {
            self.error("admin.sync_secs", "must be between 1 and 3600");
        }
        let mut names = std::collections::HashSet::new();
        for (i, credential) in admin.credentials.iter().enumerate() {
            let at = format!("admin.credentials[{i}]");
            if credential.name.is_empty() || credential.name == LOCAL_ADMIN {
                self.error(
                    &format!("{at}.name"),
                    format!("must be set and not {LOCAL_ADMIN:?} (the data dir's credential)"),
                );
            } else if !names.insert(credential.name.as_str()) {
                self.error(&format!("{at}.name"), "is used by an earlier credential");
            }
            if self.said(&format!("{at}.secret")) {
                // Unset: said once, not also as too short.
            } else if credential.secret.len() < 32 {
                self.error(
                    &format!("{at}.secret"),
                    "must be at least 32 characters (e.g. secret = \"${GATE402_ADMIN_SECRET}\")",
                );
            } else if credential.secret.trim() != credential.secret {
                // A bearer secret is read trimmed: this one could never match.
                self.error(
                    &format!("{at}.secret"),
                    "must not start or end with whitespace (no Authorization header could carry it)",
                );
            } else if admin.credentials[..i]
                .iter()
                .any(|earlier| earlier.secret == credential.secret)
            {
                // The log names who made each change: one secret, one name.
                self.error(
                    &format!("{at}.secret"),
                    "is the secret of an earlier credential: give each its own",
                );
            }
        }
    }

    fn store(&mut self, store: RawStore, config: &mut GatewayConfig) {
        if let Some(secs) = store.claim_lease_secs {
            match u64::try_from(secs) {
                Ok(secs) if (1..=3600).contains(&secs) => config.claim_lease_secs = secs,
                _ => self.error("store.claim_lease_secs", "must be between 1 and 3600"),
            }
        }
        if let Some(days) = store.receipts_retention_days {
            match u64::try_from(days) {
                Ok(days) if (1..=36_500).contains(&days) => config.receipts_retention_days = days,
                _ => self.error(
                    "store.receipts_retention_days",
                    "must be between 1 and 36500",
                ),
            }
        }
        match store.kind.as_deref() {
            None | Some("sqlite") => config.store = StoreConfig::Sqlite(store.path),
            Some("postgres") => match store.url {
                Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
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

    fn mpp(&mut self, mpp: RawMpp, config: &mut GatewayConfig) {
        if let Some(realm) = mpp.realm {
            if realm.is_empty() || realm.chars().any(|c| c.is_control()) {
                self.error(
                    "mpp.realm",
                    "must be non-empty text without control characters",
                );
            }
            config.mpp.realm = realm;
        }
        config.mpp.secret = mpp.secret;
        config.mpp.previous_secrets = mpp.previous_secrets.unwrap_or_default();
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
        let min = gate402_mpp::challenge::MIN_SECRET_LEN;
        for (path, secret) in secrets.chain(previous) {
            if secret.len() < min {
                self.error(
                    &path,
                    format!("must be at least {min} bytes (got {})", secret.len()),
                );
            }
        }
    }

    fn limits(&mut self, limits: &gate402_paywall::LimitsConfig) {
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
    }

    fn server(&mut self, server: &ServerConfig) {
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
        if server.max_body_bytes == 0 {
            self.error(
                &join("server", "max_body_bytes"),
                "must be 1 or more (bytes of a paid body read to bind it to its payment)",
            );
        }
        // Kept responses sit in the store: bounded, like request bodies.
        if server.idempotent_response_max_bytes > 64 << 20 {
            self.error(
                &join("server", "idempotent_response_max_bytes"),
                "must be at most 67108864 (64 MiB), or 0 to turn Idempotency-Key off",
            );
        }
        if !(1..=30 * 86_400).contains(&server.idempotency_keep_secs) {
            self.error(
                &join("server", "idempotency_keep_secs"),
                "must be between 1 and 2592000 (30 days)",
            );
        }
        for (i, origin) in server.cors_origins.iter().enumerate() {
            if let Err(why) = crate::server::cors::origin(origin) {
                self.error(&format!("server.cors_origins[{i}]"), why);
            }
        }
    }

    fn mcp(&mut self, mcp: &McpConfig) {
        for (key, value) in [
            ("max_sessions", mcp.max_sessions),
            ("max_sessions_per_client", mcp.max_sessions_per_client),
            ("session_idle_secs", mcp.session_idle_secs as usize),
            ("max_request_bytes", mcp.max_request_bytes),
            ("max_requests_in_flight", mcp.max_requests_in_flight),
            (
                "max_requests_in_flight_per_client",
                mcp.max_requests_in_flight_per_client,
            ),
        ] {
            if value == 0 {
                self.error(&join("mcp", key), "must be 1 or more");
            }
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
    }

    fn telemetry(&mut self, telemetry: &TelemetryConfig) {
        if let Some(endpoint) = &telemetry.otlp_endpoint {
            if let Err(e) = crate::telemetry::check_endpoint(endpoint) {
                self.error("telemetry.otlp_endpoint", e);
            }
        }
        if let Some(name) = &telemetry.service_name {
            if let Err(e) = crate::telemetry::check_service_name(name) {
                self.error("telemetry.service_name", e);
            }
        }
        if !(0.0..=1.0).contains(&telemetry.sample_ratio) {
            self.error(
                "telemetry.sample_ratio",
                "must be between 0.0 (no request traced) and 1.0 (every request)",
            );
        }
    }

    fn discovery(&mut self, discovery: &DiscoveryConfig) {
        // draft-payment-discovery-01: registries keep at most 5.
        if discovery.categories.len() > 5 {
            self.error("discovery.categories", "at most 5 categories");
        }
        for (i, category) in discovery.categories.iter().enumerate() {
            let at = format!("discovery.categories[{i}]");
            if category.is_empty() {
                self.error(&at, "must not be empty");
            } else if !category
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                self.warnings.push(format!(
                    "{at}: {category:?}: categories are lowercase words joined by - (data, developer-tools)"
                ));
            }
        }
        for (key, value) in [
            ("homepage", &discovery.homepage),
            ("docs", &discovery.docs),
            ("llms", &discovery.llms),
        ] {
            let Some(value) = value else { continue };
            // What discovery readers (mppx's among them) take: an absolute
            // URL, or a path on this origin.
            let absolute = ["http://", "https://"]
                .iter()
                .any(|scheme| value.len() > scheme.len() && value.starts_with(scheme));
            if !(absolute || value.starts_with('/'))
                || value.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                self.error(
                    &join("discovery", key),
                    format!("{value:?} is not an http(s) URL or a path starting with /"),
                );
            }
        }
    }

    fn mcp_proxy(&mut self, proxy: &McpProxyConfig) {
        match (&proxy.url, &proxy.command) {
            (Some(_), Some(_)) => self.error("mcp_proxy", "give either url or command, not both"),
            (None, None) => self.error(
                "mcp_proxy",
                "names no MCP server: give url (streamable HTTP) or command (stdio)",
            ),
            (Some(url), None) if !url.starts_with("http://") && !url.starts_with("https://") => {
                self.error(
                    "mcp_proxy.url",
                    format!("{:?} is not an http(s) URL", super::redacted_url(url)),
                )
            }
            (Some(url), None)
                if url
                    .parse::<axum::http::Uri>()
                    .ok()
                    .and_then(|uri| uri.authority().map(|a| !super::port_is_valid(a)))
                    == Some(true) =>
            {
                self.error("mcp_proxy.url", super::no_valid_port(url))
            }
            (None, Some(command)) if command.is_empty() => {
                self.error("mcp_proxy.command", "names no program")
            }
            _ => {}
        }
        if let Some(secs) = proxy.call_timeout_secs.filter(|s| !(1..=3600).contains(s)) {
            self.error(
                "mcp_proxy.call_timeout_secs",
                format!("{secs} must be between 1 and 3600"),
            );
        }
        // Each paid call is an invoice of its price.
        let most = gate402_paywall::pricing::MAX_PRICE_SATS;
        let too_dear =
            |p: u64| format!("{p} sat is more than {most} sat (1 BTC, the most one invoice asks)");
        if let Some(p) = proxy.default_price_sats.filter(|p| *p > most) {
            self.error("mcp_proxy.default_price_sats", too_dear(p));
        }
        let mut dear: Vec<(&String, &u64)> =
            proxy.prices.iter().filter(|(_, p)| **p > most).collect();
        dear.sort();
        for (tool, p) in dear {
            self.error(&join("mcp_proxy.prices", tool), too_dear(*p));
        }
    }

    /// Risky but valid: free routes that overlap paid ones (see
    /// [`overlap_warnings`]), tools nobody priced, every address trusted
    /// as a proxy, and metrics served nowhere.
    pub(super) fn warn_risky(&mut self, config: &GatewayConfig) {
        if config.services.is_empty() && config.mcp_proxy.is_none() {
            self.warnings.push(
                "no [[services]]: the gateway sells nothing (every request gets 404); add one, or run `gate402 serve` without --config for the demo".into(),
            );
        }
        self.warnings.extend(overlap_warnings(&config.services));
        self.warnings.extend(config.address_warnings());
        // `/docs/` reads like a folder, but only `*` makes a prefix.
        for (i, service) in config.services.iter().enumerate() {
            if let PathPattern::Exact(path) = &service.priced.path {
                if path.len() > 1 && path.ends_with('/') {
                    self.warnings.push(format!(
                        "services[{i}].path: {path:?} is the one path {:?} (with or without its trailing /), not what is under it; write \"{path}*\" for that",
                        service.priced.path.stem()
                    ));
                }
            }
        }
        if let Some(all) = config
            .server
            .trusted_proxies
            .iter()
            .find(|net| net.prefix_len() == 0)
        {
            self.warnings.push(format!(
                "server.trusted_proxies: {all} trusts every address to name its client: any client can claim to be another, so per-client limits and free calls count what it claims; name your proxies' addresses"
            ));
        }
        if !config.admin.enabled && !config.server.public_metrics {
            self.warnings.push(
                "metrics are served nowhere: they are on the admin listener (/admin/api/metrics), which [admin] enabled = false turns off; [server] public_metrics = true serves them to anyone at /metrics".into(),
            );
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

/// Routes that overlap, in route order: free routes that overlap paid
/// ones (an upstream that serves one resource under several spellings may
/// hand a paid one out through the free route), and a paid route that
/// comes first and takes part of a later paid one's requests at its own
/// price. Risky but valid; `serve --check` and the admin API warn.
pub fn overlap_warnings(services: &[super::ServiceConfig]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (i, free) in services.iter().enumerate() {
        if free.priced.charges() {
            continue;
        }
        for (j, paid) in services.iter().enumerate() {
            let hosts_meet = hosts_meet(&free.priced, &paid.priced);
            if !paid.priced.charges() {
                continue;
            }
            let shared_upstream = match (&free.upstream, &paid.upstream) {
                (Some(a), Some(b)) => {
                    upstream_server(&a.url).is_some_and(|s| Some(s) == upstream_server(&b.url))
                }
                _ => false,
            };
            let why = if hosts_meet && free.priced.path.overlaps(&paid.priced.path) {
                let order = if i < j {
                    "comes first, so it takes requests meant for"
                } else {
                    "catches what does not match"
                };
                let shared = if shared_upstream {
                    "; they share an upstream, which may serve a paid resource under a spelling only the free route matches (a file extension, an alias)"
                } else {
                    ""
                };
                (order, shared)
            } else if shared_upstream && forwarded_overlap(free, paid) {
                // Apart as routes, but forwarded to the same upstream
                // paths: `/public/*` without `/public` is everything the
                // upstream serves, `/premium/a` included; so is an upstream
                // URL with a base path. Hosts do not keep them apart: the
                // upstream is sent its own host either way.
                (
                    "is forwarded to the upstream paths of",
                    " on the same upstream (by a rewrite, a base path, or on another host): the paid resources are served free through it",
                )
            } else {
                continue;
            };
            warnings.push(format!(
                "services[{i}] ({:?}, free, {}) {} services[{j}] ({:?}, paid, {}){}{}",
                free.priced.name,
                free.priced.path.as_written(),
                why.0,
                paid.priced.name,
                paid.priced.path.as_written(),
                why.1,
                methods_left_free(free, paid),
            ));
        }
    }
    for (j, later) in services.iter().enumerate() {
        for (i, earlier) in services[..j].iter().enumerate() {
            let (a, b) = (&earlier.priced, &later.priced);
            // A narrower route listed first is the way to write it; one
            // that takes all of the later one's requests is refused.
            if a.charges()
                && b.charges()
                && hosts_meet(a, b)
                && methods_meet(&a.methods, &b.methods)
                && a.path.overlaps(&b.path)
                && !b.path.covers(&a.path)
            {
                warnings.push(format!(
                    "services[{i}] ({:?}, {}, {} sat) comes first, so it takes requests meant for services[{j}] ({:?}, {}, {} sat) and sells them on its own terms: put the narrower route first",
                    a.name,
                    a.path.as_written(),
                    a.price_sats,
                    b.name,
                    b.path.as_written(),
                    b.price_sats,
                ));
            }
        }
    }
    warnings
}

/// Whether two services may answer on one host.
fn hosts_meet(a: &gate402_paywall::PricedService, b: &gate402_paywall::PricedService) -> bool {
    match (&a.host, &b.host) {
        (Some(a), Some(b)) => {
            a == b || a.as_written().starts_with("*.") || b.as_written().starts_with("*.")
        }
        _ => true,
    }
}

/// Whether two method lists (empty: every method) share one.
fn methods_meet(a: &[axum::http::Method], b: &[axum::http::Method]) -> bool {
    a.is_empty()
        || b.is_empty()
        || b.iter()
            .any(|m| gate402_paywall::route::method_matches(a, m))
}

/// What a free route adds to a warning about a paid one restricted by
/// `methods`: the paid path's other methods are not the paid service's,
/// so they fall through to the free route (an upstream that answers
/// `POST` as it answers `GET` serves the paid resource free).
fn methods_left_free(free: &super::ServiceConfig, paid: &super::ServiceConfig) -> String {
    let paid_methods = &paid.priced.methods;
    if paid_methods.is_empty() {
        return String::new();
    }
    let free_takes_others = free.priced.methods.is_empty()
        || free
            .priced
            .methods
            .iter()
            .any(|m| !gate402_paywall::route::method_matches(paid_methods, m));
    if !free_takes_others {
        return String::new();
    }
    let named: Vec<&str> = paid_methods.iter().map(|m| m.as_str()).collect();
    format!(
        "; the paid one charges only for {}: its path's other methods reach the upstream through the free route",
        named.join(", ")
    )
}

/// The server an upstream URL names, however spelled: scheme, host and
/// port, with case, a default port and the spellings of one address set
/// aside (`127.1`, `0x7f000001` and `2130706433` are `127.0.0.1`; every
/// loopback address, `localhost` and `0.0.0.0` are one).
fn upstream_server(url: &str) -> Option<(String, String, u16)> {
    let uri: axum::http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.trim_matches(['[', ']']).to_ascii_lowercase();
    let ip = host
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| loose_ipv4(&host).map(std::net::IpAddr::V4));
    let host = match ip.map(|ip| ip.to_canonical()) {
        Some(ip) if ip.is_loopback() || ip.is_unspecified() => "loopback".to_owned(),
        Some(ip) => ip.to_string(),
        None if host.trim_end_matches('.') == "localhost" => "loopback".to_owned(),
        None => host.trim_end_matches('.').to_owned(),
    };
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some((scheme, host, port))
}

/// An IPv4 address as `inet_aton` reads it, which URL parsers and
/// resolvers follow: one to four parts, each decimal, `0x` hex or
/// `0`-led octal, the last filling the remaining bytes (`127.1`).
fn loose_ipv4(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let number = |part: &str| -> Option<u64> {
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            u64::from_str_radix(hex, 16).ok()
        } else if part.len() > 1 && part.starts_with('0') {
            u64::from_str_radix(&part[1..], 8).ok()
        } else {
            part.parse().ok()
        }
    };
    let numbers: Vec<u64> = parts.iter().map(|p| number(p)).collect::<Option<_>>()?;
    let (last, head) = numbers.split_last()?;
    if head.iter().any(|n| *n > 255) || *last >= 1u64 << (8 * (5 - numbers.len())) {
        return None;
    }
    let value = head
        .iter()
        .enumerate()
        .fold(*last, |acc, (i, n)| acc | n << (8 * (3 - i)));
    Some(std::net::Ipv4Addr::from(u32::try_from(value).ok()?))
}

/// The paths at its upstream server that a service's route is forwarded
/// to: the upstream URL's base path, then the pattern with its rewrite
/// applied (`/public/*` stripped of `/public` is `/*`), in each reading of
/// a server that folds Unicode (the first is as written).
fn upstream_patterns(service: &super::ServiceConfig) -> Vec<PathPattern> {
    let Some(upstream) = &service.upstream else {
        return Vec::new();
    };
    let base = upstream
        .url
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| RequestPath::parse(uri.path()).ok())
        .map(|base| base.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let pattern = &service.priced.path;
    let Ok(stem) = RequestPath::parse(pattern.stem()) else {
        return Vec::new();
    };
    let forwarded = format!("{base}{}", upstream.rewrite.apply(&stem));
    let written = match pattern {
        PathPattern::Exact(_) => forwarded,
        PathPattern::Prefix(_) => format!("{}/*", forwarded.trim_end_matches('/')),
    };
    match PathPattern::parse(&written) {
        Ok(pattern) => {
            let mut readings = vec![pattern.clone()];
            readings.extend(pattern.readings());
            readings
        }
        Err(_) => Vec::new(),
    }
}

/// Whether a free and a paid service reach shared paths at one upstream
/// server, as written or as a server folding Unicode reads them.
fn forwarded_overlap(free: &super::ServiceConfig, paid: &super::ServiceConfig) -> bool {
    let (a, b) = (upstream_patterns(free), upstream_patterns(paid));
    // The first is as written: each reading against the same reading.
    a.iter().zip(&b).any(|(a, b)| a.overlaps(b))
}

/// Why `price` (satoshis) is not a price: the bounds every price shares.
pub(super) fn not_a_price(price: impl Display) -> String {
    let most = gate402_paywall::pricing::MAX_PRICE_SATS;
    format!("{price} is not a positive number of satoshis up to {most} (1 BTC, the most one invoice asks)")
}
