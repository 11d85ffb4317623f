//! `[[services]]` and `[[tools]]`, each entry read on its own so that one
//! bad entry does not hide the mistakes in the others.

use axum::http::{HeaderName, HeaderValue, Method};
use gate402_paywall::route::RequestPath;
use serde::Deserialize;
use toml::{Table, Value};

/// Fields an upstream's `headers` may not set: the gateway sets them for
/// each request it sends (a fixed `Content-Length` cut every body to it,
/// a fixed `Host` or `Transfer-Encoding` would misframe requests), and
/// the hop-by-hop ones describe one connection (RFC 9110 §7.6.1).
const FRAMED_BY_THE_GATEWAY: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// The longest a token may be sold for: 100 years of seconds.
const MAX_TOKEN_LIFETIME_SECS: i64 = 100 * 31_557_600;

use super::check::{not_a_price, Checker};
use super::{
    join, segment_prefix, Auth, HostPattern, Meter, PathPattern, PricedService, Rewrite, Schemes,
    Sells, ServiceConfig, ToolConfig, UpstreamConfig, Usage,
};

/// One `[[services]]` entry as written. Everything is optional here so
/// that a missing key is reported in words ("is required") and a value out
/// of range with the rule it breaks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    host: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
    upstream: Option<String>,
    price_sats: Option<i64>,
    auth: Option<String>,
    schemes: Option<Value>,
    sells: Option<String>,
    token_lifetime_secs: Option<i64>,
    deposit_units: Option<i64>,
    idle_timeout_secs: Option<i64>,
    meter: Option<String>,
    topup_wait_secs: Option<i64>,
    usage_header: Option<String>,
    usage_field: Option<String>,
    max_units: Option<i64>,
    capabilities: Option<Vec<String>>,
    headers: Option<Value>,
    rewrite: Option<Value>,
    upstream_tls: Option<Value>,
    connect_timeout_secs: Option<i64>,
    response_timeout_secs: Option<i64>,
    description: Option<String>,
    prices: Option<Value>,
    pricer: Option<Value>,
}

/// A service's `upstream_tls = { … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<std::path::PathBuf>,
    client_cert: Option<std::path::PathBuf>,
    client_key: Option<std::path::PathBuf>,
}

/// A service's `rewrite = { … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    strip_prefix: Option<String>,
    add_prefix: Option<String>,
}

/// The most a price may be: what one invoice may ask.
const MAX_PRICE_SATS: i64 = gate402_paywall::pricing::MAX_PRICE_SATS as i64;

/// The longest a service's name may be, in characters: it is in every
/// token's caveats and every challenge's scope.
const MAX_NAME_CHARS: usize = 64;

impl Checker {
    /// `schemes`: `"both"` (L402 and MPP), `"l402"`, `"mpp"`, `"x402"`,
    /// `"all"`, or a list of `"l402"`, `"mpp"` and `"x402"`.
    /// `meter = "usage"`: where the upstream reports units, and the most
    /// one request may use.
    fn usage(
        &mut self,
        at: &dyn Fn(&str) -> String,
        header: Option<&str>,
        field: Option<String>,
        max_units: Option<i64>,
    ) -> Usage {
        let header = header.and_then(|name| match HeaderName::try_from(name) {
            Ok(name) => Some(name),
            Err(_) => {
                self.error(
                    &at("usage_header"),
                    format!("{name:?} is not a header name"),
                );
                None
            }
        });
        if let Some(pointer) = &field {
            if pointer.is_empty() {
                self.warnings.push(format!(
                    "{}: \"\" points at the whole body (or the whole of a stream event): only a bare number there is a report; an object is none, and each request is charged max_units (\"/usage/total_tokens\" points into one)",
                    at("usage_field")
                ));
            } else if !pointer.starts_with('/') {
                self.error(
                    &at("usage_field"),
                    format!(
                        "{pointer:?} is not a JSON pointer (RFC 6901: \"/usage/total_tokens\")"
                    ),
                );
            }
        }
        if header.is_none() && field.is_none() {
            self.error(
                &at("meter"),
                "meter = \"usage\" needs usage_header, usage_field or both: where the upstream reports the units",
            );
        }
        let max_units = match max_units {
            Some(n) if (1..=1_000_000).contains(&n) => n as u64,
            Some(_) => {
                self.error(&at("max_units"), "must be between 1 and 1000000");
                1
            }
            None => {
                self.error(
                    &at("max_units"),
                    "is required with meter = \"usage\": the units one request may use, held from the balance before it is served",
                );
                1
            }
        };
        Usage {
            header,
            field,
            max_units,
        }
    }

    fn schemes(&mut self, at: &str, value: Value) -> Schemes {
        const WORDS: &str = "\"both\", \"all\", \"l402\", \"mpp\", \"x402\" or a list of \"l402\", \"mpp\" and \"x402\"";
        let words: Vec<String> = match value {
            Value::String(word) => match word.as_str() {
                "both" => return Schemes::BOTH,
                "all" => return Schemes::ALL,
                _ => vec![word],
            },
            Value::Array(list) => list
                .into_iter()
                .map(|v| v.as_str().map(str::to_owned).unwrap_or_default())
                .collect(),
            other => {
                self.error(at, format!("{other} is not {WORDS}"));
                return Schemes::BOTH;
            }
        };
        let mut schemes = Schemes {
            l402: false,
            mpp: false,
            x402: false,
        };
        for word in &words {
            match word.as_str() {
                "l402" => schemes.l402 = true,
                "mpp" => schemes.mpp = true,
                "x402" => schemes.x402 = true,
                other => {
                    self.error(at, format!("{other:?} is not {WORDS}"));
                    return Schemes::BOTH;
                }
            }
        }
        if words.is_empty() {
            self.error(at, "names no scheme");
            return Schemes::BOTH;
        }
        schemes
    }
    /// `[[services]]`: the services that could be read, names unique.
    pub(super) fn services(&mut self, value: Value) -> Vec<ServiceConfig> {
        let mut services: Vec<ServiceConfig> = Vec::new();
        // Where each was written (`services[N]`): those that could not be
        // read are left out of `services`.
        let mut written: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (path, table) in self.entries("services", value) {
            let Some(service) = self.service(&path, table) else {
                continue;
            };
            if !seen.insert(service.name().to_owned()) {
                self.error(
                    &join(&path, "name"),
                    format!("{:?} is used by an earlier service", service.name()),
                );
            }
            // The first route that matches wins: one that an earlier route
            // takes every request of is never reached (its price would be
            // shown in discovery and never asked).
            if let Some(earlier) = hidden_by(&services, &service) {
                self.error(
                    &join(&path, "path"),
                    format!(
                        "{}; put the narrower route first",
                        never_reached(&service, &written[earlier], &services[earlier])
                    ),
                );
            }
            services.push(service);
            written.push(path);
        }
        services
    }

    pub(super) fn service(&mut self, path: &str, table: Table) -> Option<ServiceConfig> {
        let at = |key: &str| join(path, key);
        // What was written, whether or not it could be read: a key of the
        // wrong type is reported as such, not as missing.
        let written = |key: &str| table.contains_key(key);
        let (has_name, has_path, has_price) =
            (written("name"), written("path"), written("price_sats"));
        let raw: RawService = self.section(path, Value::Table(table))?;

        match &raw.name {
            None if !has_name => self.error(&at("name"), "is required"),
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
            Some(n) if n.chars().count() > MAX_NAME_CHARS => self.error(
                &at("name"),
                format!(
                    "is {} characters long; a name has at most {MAX_NAME_CHARS}",
                    n.chars().count()
                ),
            ),
            _ => {}
        }
        let pattern = match &raw.path {
            Some(p) if !p.starts_with('/') => {
                self.error(&at("path"), format!("{p:?} must start with /"));
                None
            }
            Some(p) => match PathPattern::parse(p) {
                // A dot segment is resolved as a request's is: said, not
                // done silently (`/premium/../x` would sell `/x`).
                Ok(pattern) if p.split('/').any(|s| s == "." || s == "..") => {
                    self.error(
                        &at("path"),
                        format!(
                            "{p:?} has a dot segment; write the path it means, {:?}",
                            pattern.as_written()
                        ),
                    );
                    None
                }
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    self.error(&at("path"), e);
                    None
                }
            },
            None if !has_path => {
                self.error(&at("path"), "is required");
                None
            }
            None => None,
        };
        let mut priced = PricedService::new(raw.name.as_deref().unwrap_or("?"), "/", 0);
        // A path in error is not checked against again (as `/`).
        let path_read = pattern.is_some();
        if let Some(pattern) = pattern {
            priced.path = pattern;
        }
        if let Some(host) = &raw.host {
            match HostPattern::parse(host) {
                Ok(pattern) => priced.host = Some(pattern),
                Err(e) => self.error(&at("host"), e),
            }
        }
        for (i, method) in raw.methods.iter().flatten().enumerate() {
            let at_method = format!("{}[{i}]", at("methods"));
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(m) if gate402_paywall::route::echoes_request(&m) => self.error(
                    &at_method,
                    format!("{method:?} is never served: it would echo the request back, the headers added for the upstream with it"),
                ),
                Ok(m) => {
                    self.warn_unregistered(&at_method, method, &m);
                    priced.methods.push(m);
                }
                Err(_) => self.error(&at_method, format!("{method:?} is not an HTTP method")),
            }
        }
        // The gateway forwards every request it sells: without an upstream
        // it would sell requests it can only answer 503.
        if raw.upstream.is_none() {
            self.error(
                &at("upstream"),
                "is required: the http:// or https:// URL the service's requests go to",
            );
        }
        // Written, whether or not it could be used (its own error says why).
        let upstream_written = raw.upstream.is_some();
        let mut upstream = raw
            .upstream
            .and_then(|url| self.upstream(&at("upstream"), &url));
        if let Some(auth) = &raw.auth {
            let words: Vec<&str> = auth.split_whitespace().collect();
            priced.auth = match words.as_slice() {
                ["on"] => Auth::On,
                ["off"] => Auth::Off,
                ["freebie", n] if n.parse::<u64>() == Ok(0) => {
                    self.warnings.push(format!(
                        "{}: {auth:?} gives no free calls; it is \"on\"",
                        at("auth")
                    ));
                    Auth::On
                }
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
        // A free route charges nothing: its price is only a placeholder.
        let free = raw.auth.as_deref().map(str::trim) == Some("off");
        match raw.price_sats {
            Some(p) if (1..=MAX_PRICE_SATS).contains(&p) => priced.price_sats = p as u64,
            Some(p) => self.error(&at("price_sats"), not_a_price(p)),
            None if free && !has_price => priced.price_sats = 1,
            // Not said of a service whose `auth` was wrong: it may have
            // meant "off".
            None if !has_price && !self.said(&at("auth")) => {
                self.error(&at("price_sats"), "is required (or auth = \"off\")")
            }
            None => {}
        }
        if free {
            if let Some(price) = raw.price_sats.filter(|p| *p > 0) {
                self.warnings.push(format!(
                    "{}: \"off\" serves every request free: price_sats = {price} is charged to no one (auth = \"on\" charges it)",
                    at("auth")
                ));
            }
        }
        if let Some(schemes) = raw.schemes {
            priced.schemes = self.schemes(&at("schemes"), schemes);
        }
        if let Some(secs) = raw.token_lifetime_secs {
            // Bounded: a token's `_valid_until` is unix seconds that
            // clients read as a signed 64-bit time.
            if !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&secs) {
                self.error(
                    &at("token_lifetime_secs"),
                    format!("must be between 1 and {MAX_TOKEN_LIFETIME_SECS} (100 years)"),
                );
            } else {
                priced.token_lifetime_secs = secs as u64;
            }
        }
        // A service that stated a token lifetime sold passes before
        // `sells` existed, and keeps doing so unless it says otherwise.
        priced.sells = match raw.sells.as_deref() {
            None if raw.token_lifetime_secs.is_some() => Sells::Pass,
            None | Some("request") => Sells::Request,
            Some("pass") => Sells::Pass,
            Some("balance") => Sells::Balance,
            Some(other) => {
                self.error(
                    &at("sells"),
                    format!("{other:?} is not \"request\", \"pass\" or \"balance\""),
                );
                Sells::Request
            }
        };
        if free && raw.sells.is_some() && priced.sells != Sells::Request {
            self.error(
                &at("sells"),
                "a service with auth = \"off\" is free and sells nothing: remove one of the two",
            );
        }
        for (key, value, min, max) in [
            ("deposit_units", raw.deposit_units, 1, 1_000_000),
            ("idle_timeout_secs", raw.idle_timeout_secs, 10, 1_000_000),
            ("topup_wait_secs", raw.topup_wait_secs, 1, 600),
        ] {
            let Some(value) = value else { continue };
            if priced.sells != Sells::Balance {
                self.error(&at(key), "only a service with sells = \"balance\" takes it");
            } else if !(min..=max).contains(&value) {
                self.error(&at(key), format!("must be between {min} and {max}"));
            } else if key == "deposit_units" {
                priced.deposit_units = value as u64;
            } else if key == "idle_timeout_secs" {
                priced.session_idle_secs = value as u64;
            } else {
                priced.topup_wait_secs = value as u64;
            }
        }
        match raw.meter.as_deref() {
            None | Some("request") => {}
            Some("events" | "usage") if priced.sells != Sells::Balance => self.error(
                &at("meter"),
                "only a service with sells = \"balance\" is metered",
            ),
            Some("events") => priced.meter = Meter::Events,
            Some("usage") => {
                priced.meter = Meter::Usage(self.usage(
                    &at,
                    raw.usage_header.as_deref(),
                    raw.usage_field.clone(),
                    raw.max_units,
                ));
            }
            Some(other) => self.error(
                &at("meter"),
                format!("{other:?} is not \"request\", \"events\" or \"usage\""),
            ),
        }
        if let Meter::Usage(usage) = &priced.meter {
            if usage.max_units > priced.deposit_units {
                self.error(
                    &at("max_units"),
                    format!(
                        "{} is more than deposit_units ({}): a request holds max_units from the balance, so a deposit could never pay for one",
                        usage.max_units, priced.deposit_units
                    ),
                );
            } else if usage.max_units > 1 && priced.schemes.l402() {
                // Once less than max_units are left a request is refused,
                // and an L402 balance is never refunded.
                self.warnings.push(format!(
                    "{}: a request holds {} units, so an L402 balance (never refunded) leaves up to {} of each deposit's {} units unused once fewer than that are left, and its client pays a new deposit; MPP sessions refund what is left (schemes = [\"mpp\"] sells through them alone), or lower max_units",
                    at("max_units"),
                    usage.max_units,
                    usage.max_units - 1,
                    priced.deposit_units,
                ));
            }
        }
        if !matches!(priced.meter, Meter::Usage(_)) {
            for (key, set) in [
                ("usage_header", raw.usage_header.is_some()),
                ("usage_field", raw.usage_field.is_some()),
                ("max_units", raw.max_units.is_some()),
            ] {
                if set {
                    self.error(&at(key), "only a service with meter = \"usage\" takes it");
                }
            }
        }
        if priced.sells == Sells::Balance && priced.schemes.x402() {
            self.error(
                &at("schemes"),
                "x402 buys one request: a service that sells a balance takes L402 and MPP",
            );
        }
        if priced.sells == Sells::Balance && priced.deposit_sats() > MAX_PRICE_SATS as u64 {
            self.error(
                &at("deposit_units"),
                format!("the deposit is more than {MAX_PRICE_SATS} sat (1 BTC, the most one invoice asks)"),
            );
        }
        if raw.capabilities.is_some() {
            self.warnings.push(format!(
                "{}: ignored: capabilities are no longer minted into tokens (nothing enforced them)",
                at("capabilities")
            ));
        }
        let headers = raw
            .headers
            .map(|value| self.headers(&at("headers"), value))
            .unwrap_or_default();
        let rewrite = raw
            .rewrite
            .and_then(|value| {
                let path = path_read.then_some(&priced.path);
                self.rewrite(&at("rewrite"), value, path)
            })
            .unwrap_or_default();
        if let Some(description) = raw.description {
            if description.chars().any(|c| c.is_control()) {
                self.error(&at("description"), "may not contain control characters");
            }
            let most = gate402_paywall::issue::MAX_DESCRIPTION_BYTES;
            if description.len() > most {
                self.error(
                    &at("description"),
                    format!(
                        "is {} bytes long; it is the memo of every invoice, which holds at most {most} bytes (BOLT11)",
                        description.len()
                    ),
                );
            }
            priced.description = description;
        }
        let tls = raw
            .upstream_tls
            .and_then(|value| self.upstream_tls(&at("upstream_tls"), value));
        let mut timeout = |key: &str, value: Option<i64>| {
            value.and_then(|secs| match u64::try_from(secs) {
                Ok(secs) if (1..=3600).contains(&secs) => {
                    Some(std::time::Duration::from_secs(secs))
                }
                _ => {
                    self.error(&at(key), "must be between 1 and 3600");
                    None
                }
            })
        };
        let connect_timeout = timeout("connect_timeout_secs", raw.connect_timeout_secs);
        let response_timeout = timeout("response_timeout_secs", raw.response_timeout_secs);
        let upstream_settings = !headers.is_empty()
            || rewrite != Rewrite::default()
            || tls.is_some()
            || connect_timeout.is_some()
            || response_timeout.is_some();
        match &mut upstream {
            Some(upstream) => {
                upstream.headers = headers;
                upstream.rewrite = rewrite;
                if let Some(tls) = tls {
                    // The scheme is read case-insensitively, as the proxy reads it.
                    if !upstream
                        .url
                        .get(..8)
                        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
                    {
                        self.error(&at("upstream_tls"), "applies to an https:// upstream only");
                    } else if let Some(host) = upstream
                        .url
                        .parse::<axum::http::Uri>()
                        .ok()
                        .and_then(|u| u.host().map(str::to_owned))
                    {
                        let (errors, warnings) = crate::tls::pin_findings(&tls, &host);
                        let key = join(&at("upstream_tls"), "ca");
                        for error in errors {
                            self.error(&key, error);
                        }
                        self.warnings
                            .extend(warnings.into_iter().map(|w| format!("{key}: {w}")));
                    }
                    upstream.tls = tls;
                }
                if let Some(t) = connect_timeout {
                    upstream.connect_timeout = t;
                }
                if let Some(t) = response_timeout {
                    upstream.response_timeout = t;
                }
            }
            None if upstream_settings && !upstream_written => self.error(
                path,
                "headers, rewrite, upstream_tls and timeouts apply to an upstream; this service has none",
            ),
            None => {}
        }
        priced.pricing = self
            .pricing(path, raw.prices, raw.pricer, &priced)
            .map(std::sync::Arc::new);
        raw.name.map(|_| ServiceConfig { priced, upstream })
    }

    /// Warns of `method` (written as `written`, at `path`) when IANA's
    /// registry does not know it: likely a typo, which requests would have
    /// to repeat to match.
    pub(super) fn warn_unregistered(&mut self, path: &str, written: &str, method: &Method) {
        if REGISTERED_METHODS.contains(&method.as_str()) {
            return;
        }
        let likely =
            closest_method(method).map_or(String::new(), |m| format!(" (did you mean {m:?}?)"));
        self.warnings.push(format!(
            "{path}: {written:?} is no registered HTTP method{likely}; requests are matched by it as written"
        ));
    }

    /// `upstream`: HTTP or HTTPS to a host, with an optional base path.
    /// A password in it is never repeated in an error.
    fn upstream(&mut self, path: &str, url: &str) -> Option<UpstreamConfig> {
        match url.parse::<axum::http::Uri>() {
            Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => self.error(
                path,
                format!(
                    "{:?} holds user info (user:password@), which is not sent: give the upstream its credentials in headers (headers = {{ Authorization = \"Basic …\" }})",
                    super::redacted_url(url)
                ),
            ),
            Ok(uri) if uri.authority().is_some_and(|a| !super::port_is_valid(a)) => {
                self.error(path, super::no_valid_port(url))
            }
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|h| !h.is_empty())
                    && uri.query().is_none()
                    && !url.contains('#') =>
            {
                return Some(UpstreamConfig::new(url));
            }
            Ok(uri) if uri.query().is_some() || url.contains('#') => self.error(
                path,
                format!(
                    "{:?} has a query or fragment, which an upstream URL cannot carry (each request's own query is forwarded): give it as http[s]://host[:port][/path], and fixed parameters as headers",
                    super::redacted_url(url)
                ),
            ),
            _ => self.error(
                path,
                format!(
                    "{:?} is not an http[s]://host[:port][/path] URL",
                    super::redacted_url(url)
                ),
            ),
        }
        None
    }

    /// `upstream_tls = { ca, client_cert, client_key }`, each file read as
    /// the proxy will read it.
    fn upstream_tls(&mut self, path: &str, value: Value) -> Option<crate::tls::UpstreamTls> {
        let raw: RawUpstreamTls = self.section(path, value)?;
        let tls = crate::tls::UpstreamTls {
            ca: raw.ca,
            client_cert: raw.client_cert,
            client_key: raw.client_key,
        };
        match crate::tls::client_config(&tls) {
            Ok(_) => {
                let expires = tls.client_cert.as_deref().map(crate::tls::expires_at);
                if let Some(Ok(at)) = expires {
                    self.check_expiry(&join(path, "client_cert"), at, "the upstream", true);
                }
                Some(tls)
            }
            Err(e) => {
                // Said under the key that names the file.
                let key = match &e {
                    crate::tls::TlsError::File { setting, .. } => join(path, setting),
                    crate::tls::TlsError::Config(_) => path.to_owned(),
                };
                self.error(&key, e);
                None
            }
        }
    }

    /// `headers = { Name = "value" }`, added upstream.
    /// `headers = { name = "value" }`: fields added to every request sent
    /// upstream, none of those [`FRAMED_BY_THE_GATEWAY`].
    fn headers(&mut self, path: &str, value: Value) -> Vec<(HeaderName, HeaderValue)> {
        let Some(table) = self.table(path, value) else {
            return Vec::new();
        };
        let mut headers = Vec::new();
        for (name, value) in table {
            let key = join(path, &name);
            let header = HeaderName::from_bytes(name.as_bytes());
            let value = value.as_str().map(HeaderValue::from_str);
            match (header, value) {
                (Ok(h), _) if FRAMED_BY_THE_GATEWAY.contains(&h.as_str()) => self.error(
                    &key,
                    "is the gateway's to set for each request (the host, the length and framing of the body, the connection)",
                ),
                (Ok(h), Some(Ok(v))) => headers.push((h, v)),
                (Err(_), _) => self.error(&key, "not a valid header name"),
                _ => self.error(&key, "value must be a string a header can carry"),
            }
        }
        headers
    }

    /// `rewrite = { strip_prefix, add_prefix }`, both in normal form; what
    /// is stripped must be whole segments at the start of the service's
    /// path (`pattern`, `None` when the path was in error), or it would
    /// never apply.
    fn rewrite(
        &mut self,
        path: &str,
        value: Value,
        pattern: Option<&PathPattern>,
    ) -> Option<Rewrite> {
        let raw: RawRewrite = self.section(path, value)?;
        let mut prefix = |key: &str, text: Option<String>| -> Option<String> {
            let text = text?;
            match RequestPath::parse(&text) {
                Ok(p) => Some(p.as_str().trim_end_matches('/').to_owned()),
                Err(e) => {
                    self.error(&join(path, key), format!("{text:?}: {e}"));
                    None
                }
            }
        };
        let rewrite = Rewrite {
            strip_prefix: prefix("strip_prefix", raw.strip_prefix).filter(|p| !p.is_empty()),
            add_prefix: prefix("add_prefix", raw.add_prefix).filter(|p| !p.is_empty()),
        };
        if let (Some(strip), Some(pattern)) = (&rewrite.strip_prefix, pattern) {
            if !segment_prefix(pattern.stem(), strip) {
                self.error(
                    &join(path, "strip_prefix"),
                    format!(
                        "{strip:?} must be the start of path {:?} (whole segments)",
                        pattern.as_written()
                    ),
                );
            }
        }
        Some(rewrite)
    }

    /// `[[tools]]`: the tools that could be read, each checked against the
    /// services it calls and the tools before it.
    pub(super) fn tools(&mut self, value: Value, services: &[ServiceConfig]) -> Vec<ToolConfig> {
        let mut tools: Vec<ToolConfig> = Vec::new();
        let routes = gate402_paywall::route::Routes::new(services.iter().map(|s| s.priced.clone()));
        for (path, table) in self.entries("tools", value) {
            if let Some(mut tool) = self.section::<ToolConfig>(&path, Value::Table(table)) {
                // `post` is POST to the upstream, not a method of its own.
                if let Some(method) = tool.method.as_mut() {
                    let upper = method.to_ascii_uppercase();
                    if ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
                        .contains(&upper.as_str())
                    {
                        *method = upper;
                    }
                }
                self.tool(&tool, &path, services, &tools);
                self.tool_route(&tool, &path, services, &routes);
                tools.push(tool);
            }
        }
        tools
    }

    /// A tool must be one its service can sell at its price
    /// ([`ToolConfig::sale_fault`]).
    fn tool_route(
        &mut self,
        tool: &ToolConfig,
        path: &str,
        services: &[ServiceConfig],
        routes: &gate402_paywall::route::Routes,
    ) {
        if let Some((key, fault)) = tool.sale_fault(services, routes) {
            self.error(&join(path, key), fault);
        }
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
        if tool.name == super::CREATE_PAYMENT || earlier.iter().any(|t| t.name == tool.name) {
            self.error(&join(path, "name"), format!("{:?} is taken", tool.name));
        }
        // A tool is always sold (MCP has no free door of its own here): its
        // price is a service's, with the same bounds.
        let most = MAX_PRICE_SATS as u64;
        if let Some(price) = tool.price_sats.filter(|p| !(1..=most).contains(p)) {
            self.error(&join(path, "price_sats"), not_a_price(price));
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
                    // Sold at its service's price, it calls what that
                    // service sells: another path of the upstream may be a
                    // dearer service's.
                    (Some(p), pattern)
                        if RequestPath::parse(p).is_ok_and(|n| !pattern.matches(&n)) =>
                    {
                        self.error(
                            &join(path, "path"),
                            format!(
                                "{p:?} is not a path of service {:?} ({}): a tool calls what its service sells",
                                tool.service,
                                pattern.as_written()
                            ),
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
        } else if let Err(e) = crate::mcp::upstreams::input_validator(&tool.input_schema) {
            self.error(
                &join(path, "input_schema"),
                format!("is not a JSON Schema: {e}"),
            );
        }
    }
}

/// The methods of IANA's HTTP Method Registry (RFC 9110 §16.1), and
/// `PURGE`, which caches take.
const REGISTERED_METHODS: [&str; 41] = [
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "OPTIONS",
    "ORDERPATCH",
    "PATCH",
    "POST",
    "PRI",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "TRACE",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

/// The common method `method` is most likely a typo of (one letter added,
/// dropped, changed or two swapped), if any.
fn closest_method(method: &Method) -> Option<&'static str> {
    const COMMON: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    COMMON
        .into_iter()
        .find(|common| strsim::damerau_levenshtein(common, method.as_str()) == 1)
}

/// The first of `earlier` (routed in that order, before `later`) that
/// takes every request `later` would match, if any: `later` is then never
/// reached, and its price shown in discovery is never asked.
pub(crate) fn hidden_by<'a>(
    earlier: impl IntoIterator<Item = &'a ServiceConfig>,
    later: &ServiceConfig,
) -> Option<usize> {
    earlier
        .into_iter()
        .position(|earlier| takes_every_request_of(&earlier.priced, &later.priced))
}

/// What is said of `later`, hidden by `earlier` (written at `earlier_at`).
pub(crate) fn never_reached(
    later: &ServiceConfig,
    earlier_at: &str,
    earlier: &ServiceConfig,
) -> String {
    format!(
        "{:?} is never reached: {earlier_at} ({:?}, {}) comes first and takes every request it would",
        later.priced.path.as_written(),
        earlier.name(),
        earlier.priced.path.as_written(),
    )
}

/// Whether `earlier`, routed first, takes every request `later` would
/// match: its host, its methods and its path.
fn takes_every_request_of(earlier: &PricedService, later: &PricedService) -> bool {
    let hosts = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(a), Some(b)) => a.covers(b),
        (Some(_), None) => false,
    };
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty()
            && later
                .methods
                .iter()
                .all(|m| gate402_paywall::route::method_matches(&earlier.methods, m)));
    hosts && methods && earlier.path.covers(&later.path)
}
