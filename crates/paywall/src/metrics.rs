//! Prometheus metrics of the paywall. Revenue counts payments (the first
//! request each payment served), not requests: a reusable token's second
//! call and a refused replay earn nothing.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

type Labels = Vec<(&'static str, String)>;

/// The label of a store or Lightning call's histogram: the trait method's
/// name, known at compile time, so observing one builds no label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

/// The counters and histograms `/metrics` exports.
pub struct Metrics {
    registry: Registry,
    challenges: Family<Labels, Counter>,
    verified: Family<Labels, Counter>,
    payments: Family<Labels, Counter>,
    revenue: Family<Labels, Counter>,
    refunded: Family<Labels, Counter>,
    rejections: Family<Labels, Counter>,
    upstream: Family<Labels, Histogram>,
    store_calls: Family<CallLabels, Histogram>,
    lightning_calls: Family<CallLabels, Histogram>,
    pricer_fallbacks: Family<Labels, Counter>,
    /// The hot counters of each service, resolved once: the families
    /// would build and hash a label set on every request.
    hot: std::sync::RwLock<crate::FastMap<String, Arc<Hot>>>,
}

/// One service's per-request counters.
struct Hot {
    challenges: Counter,
    upstream: Histogram,
    /// Served, by scheme; others go through the family.
    served_l402: Counter,
    served_payment: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gate402");
        let challenges = Family::<Labels, Counter>::default();
        let verified = Family::<Labels, Counter>::default();
        let payments = Family::<Labels, Counter>::default();
        let revenue = Family::<Labels, Counter>::default();
        let refunded = Family::<Labels, Counter>::default();
        let rejections = Family::<Labels, Counter>::default();
        let upstream = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "challenges_issued",
            "402 challenges issued, per service",
            challenges.clone(),
        );
        registry.register(
            "payments_verified",
            "Paid requests served, per service and scheme",
            verified.clone(),
        );
        registry.register(
            "payments",
            "Payments received (counted at the first request each served), per service and scheme",
            payments.clone(),
        );
        registry.register(
            "revenue_sats",
            "Satoshis received, per service (once per payment)",
            revenue.clone(),
        );
        registry.register(
            "refunded_sats",
            "Satoshis refunded from prepaid balances, per service (counted when a refund succeeds)",
            refunded.clone(),
        );
        registry.register(
            "rejections",
            "Refused credentials, per reason",
            rejections.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Upstream response time, per service",
            upstream.clone(),
        );
        // A store call takes from tens of microseconds (SQLite, cached)
        // to seconds (a PostgreSQL failover): 100 µs to 6.6 s.
        let store_calls = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        // A node answers in milliseconds, a payment or a wait for one in
        // seconds to a minute: 1 ms to 65 s.
        let lightning_calls = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        registry.register(
            "store_call_duration_seconds",
            "Time of each call into the store, per call (the Store method)",
            store_calls.clone(),
        );
        registry.register(
            "lightning_call_duration_seconds",
            "Time of each call into the Lightning backend, per call (the LightningBackend method)",
            lightning_calls.clone(),
        );
        let pricer_fallbacks = Family::<Labels, Counter>::default();
        registry.register(
            "pricer_fallbacks",
            "Requests priced at a pricer's fallback, per service and reason (timeout, error, status, garbage)",
            pricer_fallbacks.clone(),
        );
        Self {
            registry,
            challenges,
            verified,
            payments,
            revenue,
            refunded,
            rejections,
            upstream,
            store_calls,
            lightning_calls,
            pricer_fallbacks,
            hot: Default::default(),
        }
    }
}

impl Metrics {
    /// The `Content-Type` of what [`Metrics::render`] returns.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    fn hot(&self, service: &str) -> Arc<Hot> {
        if let Some(hot) = self
            .hot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
        {
            return hot.clone();
        }
        let served = |scheme: &str| {
            self.verified
                .get_or_create(&vec![
                    ("service", service.to_owned()),
                    ("scheme", scheme.to_owned()),
                ])
                .clone()
        };
        let hot = Arc::new(Hot {
            challenges: self
                .challenges
                .get_or_create(&vec![("service", service.to_owned())])
                .clone(),
            upstream: self
                .upstream
                .get_or_create(&vec![("service", service.to_owned())])
                .clone(),
            served_l402: served("L402"),
            served_payment: served("Payment"),
        });
        self.hot
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(service.to_owned())
            .or_insert(hot)
            .clone()
    }

    /// A 402 was sent for `service`.
    pub fn challenge(&self, service: &str) {
        self.hot(service).challenges.inc();
    }

    /// The 402s issued so far per service, since this process started.
    pub fn challenges_issued(&self) -> Vec<(String, u64)> {
        self.hot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(service, hot)| (service.clone(), hot.challenges.get()))
            .collect()
    }

    /// A paid request to `service` was served.
    pub fn served(&self, service: &str, scheme: &str) {
        match scheme {
            "L402" => self.hot(service).served_l402.inc(),
            "Payment" => self.hot(service).served_payment.inc(),
            other => self
                .verified
                .get_or_create(&vec![
                    ("service", service.to_owned()),
                    ("scheme", other.to_owned()),
                ])
                .inc(),
        };
    }

    /// A payment of `sats` for `service` served its first request.
    pub fn payment(&self, service: &str, scheme: &str, sats: u64) {
        self.payments
            .get_or_create(&vec![
                ("service", service.to_owned()),
                ("scheme", scheme.to_owned()),
            ])
            .inc();
        self.revenue
            .get_or_create(&vec![("service", service.to_owned())])
            .inc_by(sats);
    }

    /// A refund of `sats` from a balance of `service` succeeded.
    pub fn refunded(&self, service: &str, sats: u64) {
        self.refunded
            .get_or_create(&vec![("service", service.to_owned())])
            .inc_by(sats);
    }

    /// A credential was refused.
    pub fn rejected(&self, reason: &str) {
        self.rejections
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// The upstream of `service` answered after `seconds`.
    pub fn upstream(&self, service: &str, seconds: f64) {
        self.hot(service).upstream.observe(seconds);
    }

    /// A request to `service` was priced at its pricer's fallback, for
    /// `reason`.
    pub fn pricer_fallback(&self, service: &str, reason: &str) {
        self.pricer_fallbacks
            .get_or_create(&vec![
                ("service", service.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// A call into the store (`call`: the `Store` method) took `elapsed`.
    pub fn store_call(&self, call: &'static str, elapsed: std::time::Duration) {
        self.store_calls
            .get_or_create(&CallLabels { call })
            .observe(elapsed.as_secs_f64());
    }

    /// A call into the Lightning backend (`call`: the `LightningBackend`
    /// method) took `elapsed`.
    pub fn lightning_call(&self, call: &'static str, elapsed: std::time::Duration) {
        self.lightning_calls
            .get_or_create(&CallLabels { call })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition format (OpenMetrics 1.0; served with
    /// [`Metrics::CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The value of one `series` (its name and labels as rendered), for
    /// tests; `None` when it was never counted.
    #[cfg(test)]
    pub(crate) fn sample(&self, series: &str) -> Option<u64> {
        let prefix = format!("{series} ");
        self.render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|n| n.trim().parse().unwrap()))
    }
}
