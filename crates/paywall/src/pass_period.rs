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
use gate402_store::{PaymentQuery, Store, StoreError};
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
    /// When the pass paid by `payment_hash` was first used: as kept here,
    /// else as the store counted it (another replica's first use, or this
    /// one's before a restart), else `now`, this request being its first.
    ///
    /// # Errors
    ///
    /// The store's, when it cannot be read.
    pub(crate) async fn started(
        &self,
        store: &dyn Store,
        payment_hash: &[u8; 32],
        now: u64,
    ) -> Result<u64, StoreError> {
        if let Some(at) = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(payment_hash)
        {
            return Ok(*at);
        }
        let counted = store
            .payments(&PaymentQuery {
                since: 0,
                until: u64::MAX,
                payment_hash: Some(*payment_hash),
                limit: 1,
                ..PaymentQuery::default()
            })
            .await?;
        let at = counted
            .first()
            .map_or(now, |row| row.first_served_at.min(now));
        let mut kept = self.0.write().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= STARTS_KEPT {
            kept.clear();
        }
        // Two first requests at once keep the earlier.
        Ok(*kept
            .entry(*payment_hash)
            .and_modify(|kept| *kept = (*kept).min(at))
            .or_insert(at))
    }
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

    #[test]
    fn a_pass_ends_its_seconds_after_its_first_use() {
        assert!(ended(60, 1000, 1059).is_none());
        let refusal = ended(60, 1000, 1060).expect("ended");
        assert_eq!(refusal.problem, ProblemType::PaymentExpired);
        assert!(ended(u64::MAX, 1000, u64::MAX - 1).is_none());
        assert!(ended(0, 1000, 1000).is_some());
    }
}
