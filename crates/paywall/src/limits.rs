//! Abuse limits (GCRA buckets from the `governor` crate): requests per
//! client and service, per service, and the invoices one client may be
//! handed while it pays none of them.
//!
//! Kept in memory, so each replica limits on its own: the limits bound
//! what one gateway process spends (invoices, upstream calls), which is
//! what they are for.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::client::ClientKey;

/// The limits, as configured. Every limit is optional; zero turns one off.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second one client may make to one service (bursts up
    /// to twice that).
    #[serde(default)]
    pub client_requests_per_second: Option<f64>,
    /// Requests per second one service takes from all clients together.
    #[serde(default)]
    pub service_requests_per_second: Option<f64>,
    /// New invoices (402s) one client may get per minute; paid requests
    /// do not count. Without it an unpaid flood fills the node with
    /// invoices.
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

/// Why a request was limited, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// What to tell the client.
    pub detail: String,
    /// When a retry may pass.
    pub retry_after: Duration,
}

/// A keyed limiter that forgets idle keys now and then.
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    calls: AtomicU32,
}

/// How many checks between sweeps of idle keys.
const SWEEP_EVERY: u32 = 4096;

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    /// `rate` per second, bursts up to `burst`; `None` when off.
    fn new(rate: Option<f64>, burst: impl Fn(f64) -> f64) -> Option<Self> {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
        let period = Duration::from_secs_f64(1.0 / rate);
        let burst = NonZeroU32::new(burst(rate).clamp(1.0, f64::from(u32::MAX)) as u32)?;
        let quota = Quota::with_period(period)?.allow_burst(burst);
        Some(Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            calls: AtomicU32::new(0),
        })
    }

    /// `Err` is how long until `key` may pass.
    fn take(&self, key: &K) -> Result<(), Duration> {
        if self.calls.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The limits of one gateway. Cheap to share.
pub struct Limits {
    client: Option<Keyed<(ClientKey, Arc<str>)>>,
    service: Option<Keyed<Arc<str>>>,
    unpaid: Option<Keyed<ClientKey>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("client", &self.client.is_some())
            .field("service", &self.service.is_some())
            .field("unpaid", &self.unpaid.is_some())
            .finish()
    }
}

impl Limits {
    /// Limits as configured.
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            client: Keyed::new(config.client_requests_per_second, |r| 2.0 * r),
            service: Keyed::new(config.service_requests_per_second, |r| 2.0 * r),
            // A minute's worth at once, refilling evenly.
            unpaid: Keyed::new(config.unpaid_invoices_per_minute.map(|n| n / 60.0), |r| {
                r * 60.0
            }),
        }
    }

    /// Admits a request of `client` to `service`, or says why not.
    pub fn admit(&self, client: Option<ClientKey>, service: &str) -> Result<(), Limited> {
        if self.service.is_none() && self.client.is_none() {
            return Ok(());
        }
        let service: Arc<str> = Arc::from(service);
        if let Some(limiter) = &self.service {
            limiter.take(&service).map_err(|retry_after| Limited {
                detail: format!("{service} is taking too many requests; retry later"),
                retry_after,
            })?;
        }
        if let (Some(limiter), Some(client)) = (&self.client, client) {
            limiter
                .take(&(client, service.clone()))
                .map_err(|retry_after| Limited {
                    detail: format!("too many requests to {service} from {client}; slow down"),
                    retry_after,
                })?;
        }
        Ok(())
    }

    /// Admits one more unpaid invoice for `client`, or says why not.
    pub fn admit_unpaid(&self, client: Option<ClientKey>) -> Result<(), Limited> {
        let (Some(limiter), Some(client)) = (&self.unpaid, client) else {
            return Ok(());
        };
        limiter.take(&client).map_err(|retry_after| Limited {
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

    fn key(last: u8) -> Option<ClientKey> {
        Some(ClientKey::of(std::net::IpAddr::from([127, 0, 0, last])))
    }

    #[test]
    fn buckets_burst_then_refuse_per_key() {
        let limits = Limits::new(&LimitsConfig {
            client_requests_per_second: Some(2.0),
            service_requests_per_second: None,
            unpaid_invoices_per_minute: Some(3.0),
        });
        let service = "s";
        for _ in 0..4 {
            limits.admit(key(1), service).unwrap();
        }
        let limited = limits.admit(key(1), service).unwrap_err();
        assert!(
            limited.retry_after > Duration::ZERO
                && limited.retry_after <= Duration::from_millis(500)
        );
        limits.admit(key(2), service).unwrap();
        for _ in 0..3 {
            limits.admit_unpaid(key(1)).unwrap();
        }
        assert!(limits.admit_unpaid(key(1)).is_err());
        limits.admit_unpaid(key(2)).unwrap();
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = Limits::new(&LimitsConfig {
            client_requests_per_second: Some(0.0),
            service_requests_per_second: None,
            unpaid_invoices_per_minute: Some(0.0),
        });
        for _ in 0..1000 {
            limits.admit(key(1), "s").unwrap();
            limits.admit_unpaid(key(1)).unwrap();
        }
    }
}
