//! Every replica applies what the admin API changed through any replica
//! sharing its store: each `[admin] sync_secs` it compares the store's
//! versions of service changes and revocations with what it applied, and
//! catches up; and it adds the 402s it issued since the last time to the
//! store's hourly counts (the revenue report's conversion reads them).
//! A replica catches up once before it serves, so a restarted one never
//! serves a revoked token or an old price.

use std::collections::HashMap;
use std::time::Duration;

use gate402_paywall::{unix_now, Paywall};
use gate402_store::{ChallengeCount, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::services::{ServicesError, ServicesHandle};

/// Why catching up failed; the replica keeps what it applied before.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The changed services do not pass this replica's checks (an
    /// environment variable unset here, say).
    #[error("the admin API's services do not apply here: {0}")]
    Services(#[from] ServicesError),
}

/// Installs the store's service changes.
///
/// # Errors
///
/// [`SyncError`]; nothing changes then.
pub async fn services(handle: &ServicesHandle, store: &dyn Store) -> Result<(), SyncError> {
    let changes = store.service_changes().await?;
    handle.apply(changes)?;
    Ok(())
}

/// One replica's catching up.
pub struct Sync {
    paywall: Paywall,
    services: ServicesHandle,
    /// The last revocation applied.
    revoked_seq: u64,
    /// A service version that failed to apply, not to log every tick.
    failed: Option<u64>,
    /// 402s counted into the store so far, per service.
    counted: HashMap<String, u64>,
}

impl Sync {
    /// Nothing applied yet.
    pub fn new(paywall: Paywall, services: ServicesHandle) -> Self {
        Self {
            paywall,
            services,
            revoked_seq: 0,
            failed: None,
            counted: HashMap::new(),
        }
    }

    fn store(&self) -> &dyn Store {
        self.paywall.store().as_ref()
    }

    /// Applies what changed in the store since last time.
    ///
    /// # Errors
    ///
    /// [`SyncError`]; what was applied before stays.
    pub async fn catch_up(&mut self) -> Result<(), SyncError> {
        let versions = self.store().admin_versions().await?;
        if versions.revocations > self.revoked_seq {
            let revoked = self.store().revocations(self.revoked_seq).await?;
            if let Some(last) = revoked.last() {
                self.revoked_seq = last.seq;
            }
            self.paywall
                .revoke(revoked.into_iter().map(|r| r.payment_hash));
        }
        if versions.services != self.services.version() && self.failed != Some(versions.services) {
            if let Err(e) = services(&self.services, self.store()).await {
                self.failed = Some(versions.services);
                return Err(e);
            }
            self.failed = None;
        }
        Ok(())
    }

    /// Adds the 402s issued since the last call to the store's count of
    /// this hour.
    ///
    /// # Errors
    ///
    /// When the store does not answer; the counts are added next time.
    pub async fn flush_counts(&mut self) -> Result<(), StoreError> {
        let hour = unix_now() / 3600 * 3600;
        let issued = self.paywall.metrics().challenges_issued();
        let counts: Vec<ChallengeCount> = issued
            .iter()
            .filter_map(|(service, total)| {
                let before = self.counted.get(service).copied().unwrap_or(0);
                (*total > before).then(|| ChallengeCount {
                    service: service.clone(),
                    hour,
                    count: total - before,
                })
            })
            .collect();
        if counts.is_empty() {
            return Ok(());
        }
        self.store().add_challenge_counts(&counts).await?;
        self.counted.extend(issued);
        Ok(())
    }

    /// Catches up and counts every `every` until `stop`, then counts once
    /// more.
    pub async fn run(mut self, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "admin sync: cannot catch up with the store");
            }
            if let Err(e) = self.flush_counts().await {
                tracing::warn!(error = %e, "admin sync: cannot count 402s into the store");
            }
        }
        if let Err(e) = self.flush_counts().await {
            tracing::warn!(error = %e, "admin sync: the last 402s were not counted");
        }
    }
}
