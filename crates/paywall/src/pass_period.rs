//! A pass's period: `<service>_pass_secs` from its first use.
//!
//! A pass's invoice may be paid any time before it expires, so a period
//! counted from the invoice (as `_valid_until` is) gives a short pass the
//! invoice's whole expiry on top. Its period runs from its first use
//! instead: the first request served with its payment, which the store's
//! payment row keeps (`first_served_at`) for every replica. `_valid_until`
//! still ends it.

use std::sync::RwLock;

use gate402_mpp::problem::ProblemType;
use gate402_store::{PaymentQuery, PaymentRecord, PaymentRow, Store, StoreError};
use http::StatusCode;

use crate::responses::Refusal;

/// When passes were first used (unix seconds), by payment hash: read from
/// the store once per pass and replica, not on every request. Bounded (at
/// most [`STARTS_KEPT`]) and emptied when full: a start not kept is read
/// again.
#[derive(Default)]
pub(crate) struct PassStarts(RwLock<crate::FastMap<[u8; 32], u64>>);

/// How many starts [`PassStarts`] keeps.
const STARTS_KEPT: usize = 4096;

impl PassStarts {
    /// When the pass paid by `payment_hash` was first used, if kept here:
    /// what every request of a pass asks, so it costs a map lookup only.
    pub(crate) fn kept(&self, payment_hash: &[u8; 32]) -> Option<u64> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(payment_hash)
            .copied()
    }

    /// When the pass `first_use` pays for was first used, once it is not
    /// [`PassStarts::kept`]: as the store has it (another replica's first use, or this
    /// one's before a restart), else now (`first_use.at`), this request
    /// being its first, written to the store before it is served (with
    /// `served` 0: the request is counted as any other), so that neither
    /// another replica nor this one after a crash starts it again.
    ///
    /// Also whether this call wrote the payment's row (its first write:
    /// the payment is to be counted).
    ///
    /// # Errors
    ///
    /// The store's, when it cannot be read or written.
    pub(crate) async fn started(
        &self,
        store: &dyn Store,
        first_use: &PaymentRecord,
    ) -> Result<(u64, bool), StoreError> {
        let hash = first_use.payment_hash;
        let now = first_use.at;
        let first_served = |row: Option<PaymentRow>| row.map(|row| row.first_served_at);
        let (at, written) = match first_served(recorded(store, &hash).await?) {
            Some(at) => (at.min(now), false),
            // Written by this request, or by another's first use meanwhile
            // (then read again: the earlier one).
            None if store.record_payment(first_use).await? => (now, true),
            None => (
                first_served(recorded(store, &hash).await?)
                    .unwrap_or(now)
                    .min(now),
                false,
            ),
        };
        Ok((self.keep(hash, at), written))
    }

    /// Keeps `at` as when the pass paid by `hash` began, unless an
    /// earlier start is kept (two first requests at once keep the
    /// earlier), and returns the start kept.
    pub(crate) fn keep(&self, hash: [u8; 32], at: u64) -> u64 {
        let mut kept = self.0.write().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= STARTS_KEPT {
            kept.clear();
        }
        *kept
            .entry(hash)
            .and_modify(|kept| *kept = (*kept).min(at))
            .or_insert(at)
    }
}

/// The store's row of payment `hash`, if it has one: when it first
/// served, and through which scheme.
///
/// # Errors
///
/// The store's.
pub(crate) async fn recorded(
    store: &dyn Store,
    hash: &[u8; 32],
) -> Result<Option<PaymentRow>, StoreError> {
    let counted = store
        .payments(&PaymentQuery {
            since: 0,
            until: u64::MAX,
            payment_hash: Some(*hash),
            limit: 1,
            ..PaymentQuery::default()
        })
        .await?;
    Ok(counted.into_iter().next())
}

/// The refusal of a pass whose period of `secs` from `started` is over at
/// `now`, if it is.
pub(crate) fn ended(secs: u64, started: u64, now: u64) -> Option<Refusal> {
    let end = started.saturating_add(secs);
    (now >= end).then(|| {
        Refusal::new(
            StatusCode::PAYMENT_REQUIRED,
            ProblemType::PaymentExpired,
            format!(
                "this pass of {secs} s began at its first use ({started}, unix seconds) and ended at {end}; pay the new challenge"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first use is in the store before the request is served: a
    /// replica that did not see it, or this one after a crash, reads it.
    #[tokio::test]
    async fn a_first_use_is_written_before_it_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = gate402_store::SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        let first_use = |at| PaymentRecord {
            payment_hash: [9; 32],
            service: "pass".into(),
            scheme: "L402".into(),
            amount_msat: 3_000,
            at,
            served: 0,
        };
        let here = PassStarts::default();
        assert_eq!(
            here.started(&store, &first_use(1_000)).await.unwrap(),
            (1_000, true),
            "written, to be counted"
        );
        assert_eq!(
            here.started(&store, &first_use(1_200)).await.unwrap(),
            (1_000, false)
        );
        let elsewhere = PassStarts::default();
        assert_eq!(
            elsewhere.started(&store, &first_use(1_500)).await.unwrap(),
            (1_000, false)
        );
    }

    #[test]
    fn a_pass_ends_its_seconds_after_its_first_use() {
        assert!(ended(60, 1000, 1059).is_none());
        let refusal = ended(60, 1000, 1060).expect("ended");
        assert_eq!(refusal.problem, ProblemType::PaymentExpired);
        assert!(ended(u64::MAX, 1000, u64::MAX - 1).is_none());
        assert!(ended(0, 1000, 1000).is_some());
    }
}
