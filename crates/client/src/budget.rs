//! Persistent spending budgets: per hour, per day and in total, overall
//! and per domain. The ledger checks them when a payment begins.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One set of limits, in satoshis; an absent one does not apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Spent in the last 60 minutes.
    pub per_hour_sats: Option<u64>,
    /// Spent in the last 24 hours.
    pub per_day_sats: Option<u64>,
    /// Spent ever (as the ledger remembers it).
    pub total_sats: Option<u64>,
}

/// The `[budget]` table of the client config: overall limits, and limits
/// per domain (the URL's host) under `[budget.domains."host"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Overall, in the last 60 minutes.
    pub per_hour_sats: Option<u64>,
    /// Overall, in the last 24 hours.
    pub per_day_sats: Option<u64>,
    /// Overall, ever.
    pub total_sats: Option<u64>,
    /// Per domain: keyed by a URL's host alone (`api.example.com`,
    /// `127.0.0.1`, `[::1]`).
    #[serde(default, deserialize_with = "domains")]
    pub domains: BTreeMap<String, Limits>,
}

/// `[budget.domains]`, each key a host as URLs name it: one with a scheme,
/// a port or a path would match no payment, and its budget would silently
/// not apply.
fn domains<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Limits>, D::Error> {
    let domains = BTreeMap::<String, Limits>::deserialize(deserializer)?;
    for name in domains.keys() {
        // The host a URL with this key after its scheme has: the key must
        // be that host alone.
        let rest = name
            .split_once("://")
            .map_or(name.as_str(), |(_, rest)| rest);
        let url = reqwest::Url::parse(&format!("http://{rest}")).ok();
        let host = url.as_ref().and_then(reqwest::Url::host_str);
        if host.is_none_or(|host| !host.eq_ignore_ascii_case(name)) {
            return Err(serde::de::Error::custom(format!(
                "{name:?} is not a host name: a domain's budget is keyed by the URL's host alone ({:?}), without scheme, port or path",
                host.unwrap_or(rest)
            )));
        }
    }
    Ok(domains)
}

/// A budget's time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last 60 minutes.
    Hour,
    /// The last 24 hours.
    Day,
    /// Everything in the ledger.
    Total,
}

impl Window {
    /// `per-day budget for example.com`, for messages.
    pub fn describe(self, host: Option<&str>) -> String {
        let window = match self {
            Window::Hour => "per-hour budget",
            Window::Day => "per-day budget",
            Window::Total => "total budget",
        };
        match host {
            Some(host) => format!("{window} for {host}"),
            None => window.to_owned(),
        }
    }
}

impl Limits {
    fn windows(self) -> impl Iterator<Item = (Window, u64)> {
        [
            (Window::Hour, self.per_hour_sats),
            (Window::Day, self.per_day_sats),
            (Window::Total, self.total_sats),
        ]
        .into_iter()
        .filter_map(|(window, limit)| Some((window, limit?)))
    }
}

impl Budget {
    /// The overall limits.
    pub fn overall(&self) -> Limits {
        Limits {
            per_hour_sats: self.per_hour_sats,
            per_day_sats: self.per_day_sats,
            total_sats: self.total_sats,
        }
    }

    /// Every limit a payment to `host` is under: `(Some(host), …)` for the
    /// domain's own, `(None, …)` for the overall ones.
    pub fn limits_for(&self, host: &str) -> Vec<(Option<String>, Window, u64)> {
        let domain = self
            .domains
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
            .map(|(name, limits)| (name.to_ascii_lowercase(), *limits));
        let mut all: Vec<_> = self
            .overall()
            .windows()
            .map(|(window, limit)| (None, window, limit))
            .collect();
        if let Some((name, limits)) = domain {
            all.extend(
                limits
                    .windows()
                    .map(|(window, limit)| (Some(name.clone()), window, limit)),
            );
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A domain key that no payment's host could be (a scheme, a port, a
    /// path) is an error naming the host it should be, not a budget that
    /// silently never applies.
    #[test]
    fn a_domain_is_a_host_alone() {
        for name in ["api.example.com", "127.0.0.1", "LOCALHOST", "[::1]"] {
            let text = format!("[domains.\"{name}\"]\nper_day_sats = 1\n");
            let budget: Budget = toml::from_str(&text).unwrap();
            assert_eq!(
                budget.limits_for(&name.to_ascii_lowercase()).len(),
                1,
                "{name}"
            );
        }
        for (name, host) in [
            ("127.0.0.1:18500", "127.0.0.1"),
            ("http://127.0.0.1", "127.0.0.1"),
            ("https://api.example.com:8443/v1", "api.example.com"),
            ("[::1]:8080", "[::1]"),
            ("api.example.com/x", "api.example.com"),
        ] {
            let text = format!("[domains.\"{name}\"]\nper_day_sats = 1\n");
            let error = toml::from_str::<Budget>(&text).unwrap_err().to_string();
            assert!(
                error.contains("is not a host name") && error.contains(&format!("({host:?})")),
                "{name}: {error}"
            );
        }
    }
}
