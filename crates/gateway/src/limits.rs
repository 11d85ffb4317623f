//! Abuse limits: token buckets per client and service, per service, and
//! on the invoices one client may be handed while it pays none of them.
//!
//! Kept in memory, so each replica limits on its own: the limits bound
//! what one gateway process spends (invoices, upstream calls), which is
//! what they are for.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `[limits]` table. Every limit is optional; zero turns one off.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second one client IP may make to one service (bursts
    /// up to twice that).
    #[serde(default)]
    pub client_requests_per_second: Option<f64>,
    /// Requests per second one service takes from all clients together.
    #[serde(default)]
    pub service_requests_per_second: Option<f64>,
    /// New invoices (402s) one client IP may get per minute; paid requests
    /// do not count. Without it an unpaid flood fills the node with
    /// invoices and the store with rows.
    #[serde(default = "default_unpaid_per_minute")]
    pub unpaid_invoices_per_minute: Option<f64>,
}

fn default_unpaid_per_minute() -> Option<f64> {
    Some(DEFAULT_UNPAID_PER_MINUTE)
}

/// The default cap on unpaid invoices per client per minute.
pub const DEFAULT_UNPAID_PER_MINUTE: f64 = 120.0;

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            client_requests_per_second: None,
            service_requests_per_second: None,
            unpaid_invoices_per_minute: default_unpaid_per_minute(),
        }
    }
}

/// One bucket: `tokens` refill at `rate` per second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by key, all with one rate and burst.
#[derive(Debug)]
struct Buckets {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// How many idle buckets may pile up before a sweep drops the full ones.
const SWEEP_AT: usize = 10_000;

impl Buckets {
    fn new(rate: f64, burst: f64) -> Option<Self> {
        (rate > 0.0).then(|| Self {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token for `key`; `Err` is how long until one is there.
    fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            // A full bucket is the same as none: forget it.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.burst);
        bucket.at = now;
        if refilled >= 1.0 {
            bucket.tokens = refilled - 1.0;
            Ok(())
        } else {
            bucket.tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.rate))
        }
    }
}

/// Why a request was limited, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// What to tell the client.
    pub detail: String,
    /// When a retry may pass.
    pub retry_after: Duration,
}

/// The limits of one gateway.
#[derive(Debug)]
pub struct Limits {
    client: Option<Buckets>,
    service: Option<Buckets>,
    unpaid: Option<Buckets>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: &LimitsConfig) -> Self {
        let per_second = |rate: Option<f64>| rate.and_then(|r| Buckets::new(r, 2.0 * r));
        Self {
            client: per_second(config.client_requests_per_second),
            service: per_second(config.service_requests_per_second),
            // A minute's worth at once, refilling evenly.
            unpaid: config
                .unpaid_invoices_per_minute
                .and_then(|n| Buckets::new(n / 60.0, n)),
        }
    }

    /// Admits a request of `client` to `service`, or says why not.
    pub fn admit(&self, client: Option<IpAddr>, service: &str) -> Result<(), Limited> {
        let now = Instant::now();
        if let Some(buckets) = &self.service {
            buckets.take(service, now).map_err(|retry_after| Limited {
                detail: format!("{service} is taking too many requests; retry later"),
                retry_after,
            })?;
        }
        if let (Some(buckets), Some(client)) = (&self.client, client) {
            buckets
                .take(&format!("{client} {service}"), now)
                .map_err(|retry_after| Limited {
                    detail: format!("too many requests to {service} from {client}; slow down"),
                    retry_after,
                })?;
        }
        Ok(())
    }

    /// Admits one more unpaid invoice for `client`, or says why not.
    pub fn admit_unpaid(&self, client: Option<IpAddr>) -> Result<(), Limited> {
        let (Some(buckets), Some(client)) = (&self.unpaid, client) else {
            return Ok(());
        };
        buckets
            .take(&client.to_string(), Instant::now())
            .map_err(|retry_after| Limited {
                detail: format!(
                    "{client} holds too many unpaid invoices; pay one of them, or retry later"
                ),
                retry_after,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bursts_then_refills_at_its_rate() {
        let buckets = Buckets::new(2.0, 4.0).unwrap();
        let start = Instant::now();
        for _ in 0..4 {
            buckets.take("a", start).unwrap();
        }
        let wait = buckets.take("a", start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another key has its own bucket.
        buckets.take("b", start).unwrap();
        // Half a second later, one token is back, and only one.
        let later = start + Duration::from_millis(500);
        buckets.take("a", later).unwrap();
        assert!(buckets.take("a", later).is_err());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        assert!(Buckets::new(0.0, 0.0).is_none());
        let limits = Limits::new(&LimitsConfig {
            client_requests_per_second: Some(0.0),
            service_requests_per_second: None,
            unpaid_invoices_per_minute: Some(0.0),
        });
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        for _ in 0..1000 {
            limits.admit(ip, "s").unwrap();
            limits.admit_unpaid(ip).unwrap();
        }
    }
}
