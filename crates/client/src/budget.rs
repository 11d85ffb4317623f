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
    /// Per domain.
    #[serde(default)]
    pub domains: BTreeMap<String, Limits>,
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
