//! A service's `[[services.prices]]` rules and its `pricer = { … }`: prices
//! that depend on the request ([`gate402_paywall::pricing`]).

use std::time::Duration;

use axum::http::Method;
use gate402_paywall::pricing::{
    ParamPath, PerUnit, PriceRule, PricerConfig, Pricing, UnitSource, ValueMatch, MAX_PRICE_SATS,
};
use serde::Deserialize;
use toml::Value;

use super::check::{not_a_price, Checker};
use super::{join, Auth, PricedService, Sells};

/// One `[[services.prices]]` rule as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    methods: Option<Vec<String>>,
    path: Option<String>,
    params: Option<Value>,
    query: Option<Value>,
    body: Option<Value>,
    min_body_bytes: Option<i64>,
    max_body_bytes: Option<i64>,
    price_sats: Option<i64>,
    per: Option<Value>,
    /// A service's key written after its first rule, which TOML reads
    /// into that rule: reported as such.
    pricer: Option<Value>,
}

/// A rule's `per = { … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPer {
    body: Option<String>,
    query: Option<String>,
    body_bytes: Option<bool>,
    every: Option<i64>,
    price_sats: Option<i64>,
}

/// A service's `pricer = { … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricer {
    url: Option<String>,
    timeout_ms: Option<i64>,
    fallback: Option<i64>,
    cache_secs: Option<i64>,
}

/// How long a pricer may take, unless configured.
const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// How long a pricer's answer is kept at most, unless configured.
const DEFAULT_CACHE_SECS: u64 = 60;

impl Checker {
    /// `prices` and `pricer` of the service at `path`, checked against
    /// what it sells; `None` when it has neither.
    pub(super) fn pricing(
        &mut self,
        path: &str,
        prices: Option<Value>,
        pricer: Option<Value>,
        priced: &PricedService,
    ) -> Option<Pricing> {
        if prices.is_none() && pricer.is_none() {
            return None;
        }
        let key = if prices.is_some() { "prices" } else { "pricer" };
        if priced.sells != Sells::Request {
            self.error(
                &join(path, key),
                "only a service with sells = \"request\" is priced per request (a pass or a balance keeps price_sats)",
            );
        }
        if priced.auth == Auth::Off {
            self.error(
                &join(path, key),
                "a service with auth = \"off\" has no price",
            );
        }
        let mut pricing = Pricing::default();
        if let Some(prices) = prices {
            pricing.rules = self.price_rules(&join(path, "prices"), prices, priced);
        }
        if let Some(pricer) = pricer {
            pricing.pricer = self.pricer(&join(path, "pricer"), pricer, priced.price_sats);
        }
        Some(pricing)
    }

    fn price_rules(&mut self, path: &str, value: Value, service: &PricedService) -> Vec<PriceRule> {
        let Value::Array(list) = value else {
            self.error(path, "expected an array of tables ([[services.prices]])");
            return Vec::new();
        };
        let mut rules = Vec::new();
        for (i, entry) in list.into_iter().enumerate() {
            let at = format!("{path}[{i}]");
            if let Some(rule) = self.price_rule(&at, entry, service) {
                rules.push(rule);
            }
        }
        rules
    }

    fn price_rule(
        &mut self,
        path: &str,
        value: Value,
        service: &PricedService,
    ) -> Option<PriceRule> {
        let at = |key: &str| join(path, key);
        let raw: RawRule = self.section(path, value)?;
        if raw.pricer.is_some() {
            self.error(
                &at("pricer"),
                "belongs to the service: write pricer = { … } before its first [[services.prices]]",
            );
        }
        let mut rule = PriceRule::default();
        for (i, method) in raw.methods.iter().flatten().enumerate() {
            let at_method = format!("{}[{i}]", at("methods"));
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => {
                    self.warn_unregistered(&at_method, method, &m);
                    rule.methods.push(m);
                }
                Err(_) => self.error(&at_method, format!("{method:?} is not an HTTP method")),
            }
        }
        let taken = |m: &Method| gate402_paywall::route::method_matches(&service.methods, m);
        if !rule.methods.is_empty() && !rule.methods.iter().any(taken) {
            let names = |methods: &[Method]| {
                methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.error(
                &at("methods"),
                format!(
                    "{} never reach this service, which takes {} only: the rule never applies",
                    names(&rule.methods),
                    names(&service.methods)
                ),
            );
        }
        if let Some(text) = &raw.path {
            match ParamPath::parse(text) {
                Ok(pattern) if !pattern.may_match_under(&service.path) => self.error(
                    &at("path"),
                    format!(
                        "{text:?} matches no path of its service ({}): a rule prices its service's requests only",
                        service.path.as_written()
                    ),
                ),
                Ok(pattern) => rule.path = Some(pattern),
                Err(e) => self.error(&at("path"), e),
            }
        }
        if let Some(params) = raw.params {
            rule.params = self.value_matches(&at("params"), params);
            match &rule.path {
                None if raw.path.is_none() => self.error(
                    &at("params"),
                    "path parameters need a path that names them, as in path = \"/v1/{model}/*\"",
                ),
                None => {}
                Some(pattern) => {
                    for m in &rule.params {
                        if !pattern.names().any(|n| n == m.key) {
                            self.error(
                                &join(&at("params"), &m.key),
                                format!(
                                    "path {:?} names no {{{}}}",
                                    raw.path.as_deref().unwrap_or(""),
                                    m.key
                                ),
                            );
                        }
                    }
                }
            }
        }
        if let Some(query) = raw.query {
            rule.query = self.value_matches(&at("query"), query);
        }
        if let Some(body) = raw.body {
            rule.body = self.value_matches(&at("body"), body);
            for m in &rule.body {
                if !m.key.starts_with('/') {
                    self.error(
                        &join(&at("body"), &m.key),
                        format!("{:?} is not a JSON pointer (RFC 6901: \"/model\")", m.key),
                    );
                }
            }
        }
        rule.min_body_bytes = self.byte_count(&at("min_body_bytes"), raw.min_body_bytes);
        rule.max_body_bytes = self.byte_count(&at("max_body_bytes"), raw.max_body_bytes);
        if let (Some(min), Some(max)) = (rule.min_body_bytes, rule.max_body_bytes) {
            if min > max {
                self.error(
                    &at("min_body_bytes"),
                    format!("{min} is more than max_body_bytes {max}"),
                );
            }
        }
        // With a per-unit part, the fixed part may be nothing.
        let least = if raw.per.is_some() { 0 } else { 1 };
        if let Some(per) = raw.per {
            rule.per = self.per(&at("per"), per);
        }
        match raw.price_sats {
            Some(p) if (least..=MAX_PRICE_SATS as i64).contains(&p) => rule.price_sats = p as u64,
            Some(p) => self.error(&at("price_sats"), not_a_price(p)),
            None => self.error(
                &at("price_sats"),
                "is required: the price when the rule matches",
            ),
        }
        Some(rule)
    }

    /// `{ name = "value" }` or `{ name = ["a", "b"] }`: strings, numbers
    /// and booleans, compared by their text.
    fn value_matches(&mut self, path: &str, value: Value) -> Vec<ValueMatch> {
        let Some(table) = self.table(path, value) else {
            return Vec::new();
        };
        let mut matches = Vec::new();
        for (key, value) in table {
            let list = match value {
                Value::Array(list) => list,
                one => vec![one],
            };
            let written = list.len();
            let mut values = Vec::new();
            for value in list {
                match value {
                    Value::String(s) => values.push(s),
                    Value::Integer(n) => values.push(n.to_string()),
                    Value::Boolean(b) => values.push(b.to_string()),
                    other => self.error(
                        &join(path, &key),
                        format!("{other} is not a string, a whole number or a boolean"),
                    ),
                }
            }
            if written == 0 {
                self.error(&join(path, &key), "names no value");
            }
            matches.push(ValueMatch { key, values });
        }
        matches
    }

    fn byte_count(&mut self, path: &str, value: Option<i64>) -> Option<u64> {
        let n = value?;
        u64::try_from(n)
            .map_err(|_| self.error(path, format!("{n} is not a number of bytes")))
            .ok()
    }

    /// `per = { body = "/pointer" | query = "name" | body_bytes = true,
    /// every = N, price_sats = N }`.
    fn per(&mut self, path: &str, value: Value) -> Option<PerUnit> {
        let raw: RawPer = self.section(path, value)?;
        let mut sources = Vec::new();
        if let Some(pointer) = raw.body {
            if !pointer.starts_with('/') {
                self.error(
                    &join(path, "body"),
                    format!("{pointer:?} is not a JSON pointer (RFC 6901: \"/max_tokens\")"),
                );
            }
            sources.push(UnitSource::Body(pointer));
        }
        if let Some(name) = raw.query {
            sources.push(UnitSource::Query(name));
        }
        match raw.body_bytes {
            Some(true) => sources.push(UnitSource::BodyBytes),
            Some(false) => self.error(&join(path, "body_bytes"), "is true or left out"),
            None => {}
        }
        if sources.len() != 1 {
            self.error(
                path,
                "names its count with one of body = \"/pointer\", query = \"name\" or body_bytes = true",
            );
        }
        let every = match raw.every {
            None => 1,
            Some(n) if (1..=MAX_PRICE_SATS as i64).contains(&n) => n as u64,
            Some(n) => {
                self.error(
                    &join(path, "every"),
                    format!("{n} is not a positive number of units"),
                );
                1
            }
        };
        let price_sats = match raw.price_sats {
            Some(p) if (1..=MAX_PRICE_SATS as i64).contains(&p) => p as u64,
            Some(p) => {
                self.error(&join(path, "price_sats"), not_a_price(p));
                1
            }
            None => {
                self.error(
                    &join(path, "price_sats"),
                    "is required: the price of every `every` units",
                );
                1
            }
        };
        Some(PerUnit {
            source: sources.into_iter().next()?,
            every,
            price_sats,
        })
    }

    /// `pricer = { url, timeout_ms, fallback, cache_secs }`; the fallback
    /// is the service's price unless given.
    fn pricer(&mut self, path: &str, value: Value, default_sats: u64) -> Option<PricerConfig> {
        let raw: RawPricer = self.section(path, value)?;
        let url = match raw.url {
            Some(url) => match url.parse::<axum::http::Uri>() {
                Ok(uri) if uri.authority().is_some_and(|a| !super::port_is_valid(a)) => {
                    self.error(&join(path, "url"), super::no_valid_port(&url));
                    None
                }
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some_and(|h| !h.is_empty()) =>
                {
                    Some(url)
                }
                _ => {
                    self.error(
                        &join(path, "url"),
                        format!("{:?} is not an http[s]:// URL", super::redacted_url(&url)),
                    );
                    None
                }
            },
            None => {
                self.error(&join(path, "url"), "is required: where the pricer answers");
                None
            }
        };
        let timeout_ms = match raw.timeout_ms {
            None => DEFAULT_TIMEOUT_MS,
            Some(ms) if (1..=60_000).contains(&ms) => ms as u64,
            Some(_) => {
                self.error(&join(path, "timeout_ms"), "must be between 1 and 60000");
                DEFAULT_TIMEOUT_MS
            }
        };
        let fallback_sats = match raw.fallback {
            None => default_sats,
            Some(p) if (1..=MAX_PRICE_SATS as i64).contains(&p) => p as u64,
            Some(p) => {
                self.error(&join(path, "fallback"), not_a_price(p));
                default_sats
            }
        };
        let cache_secs = match raw.cache_secs {
            None => DEFAULT_CACHE_SECS,
            Some(s) if (0..=86_400).contains(&s) => s as u64,
            Some(_) => {
                self.error(&join(path, "cache_secs"), "must be between 0 and 86400");
                DEFAULT_CACHE_SECS
            }
        };
        Some(PricerConfig {
            url: url?,
            timeout: Duration::from_millis(timeout_ms),
            fallback_sats,
            cache_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use gate402_paywall::pricing::{PriceRequest, UnitSource};

    use super::super::GatewayConfig;
    use super::*;

    fn parse(services: &str) -> Result<GatewayConfig, Vec<String>> {
        GatewayConfig::parse(services, |_| None).map_err(|e| e.0)
    }

    #[test]
    fn rules_and_a_pricer_are_read() {
        let config = parse(
            r#"
            [[services]]
            name = "chat"
            path = "/v1/*"
            upstream = "http://127.0.0.1:9"
            price_sats = 10
            [[services.prices]]
            methods = ["post"]
            path = "/v1/{model}/*"
            params = { model = ["gpt-4", "gpt-5"] }
            query = { n = 2, stream = true }
            body = { "/model" = "gpt-4" }
            min_body_bytes = 1
            max_body_bytes = 100
            price_sats = 50
            [[services.prices]]
            price_sats = 0
            per = { body = "/max_tokens", every = 100, price_sats = 1 }
            [[services]]
            name = "priced"
            path = "/p"
            upstream = "http://127.0.0.1:9"
            price_sats = 7
            pricer = { url = "http://127.0.0.1:9/price" }
            "#,
        )
        .unwrap();
        let pricing = config.services[0].priced.pricing.as_ref().unwrap();
        let rule = &pricing.rules[0];
        assert_eq!(rule.methods, [Method::POST]);
        assert_eq!(rule.params[0].values, ["gpt-4", "gpt-5"]);
        assert_eq!(rule.query.len(), 2);
        assert!(rule.query.iter().any(|m| m.key == "n" && m.values == ["2"]));
        assert!(rule
            .query
            .iter()
            .any(|m| m.key == "stream" && m.values == ["true"]));
        assert_eq!(
            (rule.min_body_bytes, rule.max_body_bytes),
            (Some(1), Some(100))
        );
        let per = pricing.rules[1].per.as_ref().unwrap();
        assert_eq!(per.source, UnitSource::Body("/max_tokens".into()));
        let body = br#"{"max_tokens": 150}"#;
        let price = pricing.rule_price(&PriceRequest {
            method: &Method::POST,
            path: "/v1/other/x",
            query: None,
            body: Some(body),
            body_len: body.len() as u64,
            encoding: None,
            form: false,
        });
        assert_eq!(price, Ok(Some(2)));
        let pricer = config.services[1].priced.pricing.as_ref().unwrap();
        let pricer = pricer.pricer.as_ref().unwrap();
        assert_eq!(pricer.fallback_sats, 7, "the service's price unless given");
        assert_eq!(pricer.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(pricer.cache_secs, DEFAULT_CACHE_SECS);
        assert!(config
            .services
            .iter()
            .all(|s| s.priced.sale().starts_with("priced per request")));
    }

    /// What one invoice cannot carry is refused before it is served (not
    /// a 503 "the Lightning node is unavailable" on every request).
    #[test]
    fn what_an_invoice_cannot_carry_is_refused() {
        let long_name = "n".repeat(65);
        let text = format!(
            r#"
            [[services]]
            name = "{long_name}"
            path = "/a"
            upstream = "http://127.0.0.1:9"
            price_sats = 2100000000000000
            [[services]]
            name = "b"
            path = "/b"
            upstream = "http://127.0.0.1:9"
            price_sats = 100000000
            description = "{}"
            pricer = {{ url = "http://127.0.0.1:9/price", fallback = 100000001 }}
            [[services.prices]]
            price_sats = 100000001
            [[services]]
            name = "{}"
            path = "/c"
            upstream = "http://127.0.0.1:9"
            price_sats = 1
            description = "{}"
            "#,
            "é".repeat(320),
            "n".repeat(64),
            "d".repeat(639),
        );
        let errors = parse(&text).unwrap_err();
        let expected = [
            "services[0].name: is 65 characters long; a name has at most 64",
            "services[0].price_sats: 2100000000000000 is not a positive number of satoshis up to 100000000",
            "services[1].description: is 640 bytes long",
            "services[1].pricer.fallback: 100000001 is not a positive number of satoshis up to 100000000",
            "services[1].prices[0].price_sats: 100000001 is not a positive number",
        ];
        super::super::tests::assert_errors(&errors, &expected);
    }

    #[test]
    fn an_mcp_tool_priced_above_one_invoice_is_refused() {
        let errors = parse(
            r#"
            [mcp_proxy]
            url = "http://127.0.0.1:9/mcp"
            default_price_sats = 100000001
            prices = { search = 100000000, render = 2100000000000000 }
            "#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "mcp_proxy.default_price_sats: 100000001 sat is more than 100000000 sat (1 BTC, the most one invoice asks)",
                "mcp_proxy.prices.render: 2100000000000000 sat is more than 100000000 sat (1 BTC, the most one invoice asks)",
            ]
        );
    }

    #[test]
    fn every_mistake_with_its_key_path() {
        let errors = parse(
            r#"
            [[services]]
            name = "a"
            path = "/a/*"
            price_sats = 10
            [[services.prices]]
            methods = ["G ET"]
            path = "/a/{x}/{x}"
            params = { y = "1" }
            body = { "model" = "gpt-4", "/n" = 1.5 }
            min_body_bytes = 10
            max_body_bytes = 5
            colour = "red"
            [[services.prices]]
            path = "/a/{x}"
            params = { y = "1" }
            price_sats = 0
            [[services.prices]]
            params = { a = "1" }
            pricer = { url = "http://127.0.0.1:9/price" }
            per = { query = "n", body_bytes = true, every = 0 }
            [[services]]
            name = "b"
            path = "/b"
            price_sats = 10
            sells = "pass"
            pricer = { url = "ftp://x", timeout_ms = 0, fallback = -1, cache_secs = 100000, retries = 3 }
            [[services]]
            name = "c"
            path = "/c"
            price_sats = 10
            prices = { price_sats = 1 }
            "#,
        )
        .unwrap_err();
        let expected = [
            "services[0].prices[0].methods[0]: \"G ET\" is not an HTTP method",
            "services[0].prices[0].path: \"/a/{x}/{x}\" is not a path pattern",
            "services[0].prices[0].body.model: \"model\" is not a JSON pointer",
            "services[0].prices[0].body./n: 1.5 is not a string",
            "services[0].prices[0].min_body_bytes: 10 is more than max_body_bytes 5",
            "services[0].prices[0].colour: unknown field",
            "services[0].prices[0].price_sats: is required",
            "services[0].prices[1].params.y: path \"/a/{x}\" names no {y}",
            "services[0].prices[1].price_sats: 0 is not a positive number",
            "services[0].prices[2].params: path parameters need a path",
            "services[0].prices[2].pricer: belongs to the service",
            "services[0].prices[2].per: names its count with one of",
            "services[0].prices[2].per.every: 0 is not a positive number",
            "services[0].prices[2].per.price_sats: is required",
            "services[1].pricer: only a service with sells = \"request\"",
            "services[1].pricer.url: \"ftp://x\" is not an http[s]:// URL",
            "services[1].pricer.timeout_ms: must be between 1 and 60000",
            "services[1].pricer.fallback: -1 is not a positive number",
            "services[1].pricer.cache_secs: must be between 0 and 86400",
            "services[1].pricer.retries: unknown field",
            "services[2].prices: expected an array of tables",
        ];
        for needle in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(needle)),
                "{needle:?} missing from {errors:#?}"
            );
        }
    }
}
