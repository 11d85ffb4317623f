//! Store writes that settle a request's payment (a debit kept or given
//! back, a claim given back), tried until the store takes them: one lost
//! to a store out of reach for a moment would leave a balance short, or a
//! client's own payment refused as in use, until this replica's next
//! start; a debit's keep not written would let a replica killed after its
//! client had the whole answer give it back, and serve it again.

use std::future::Future;
use std::time::Duration;

use gate402_store::StoreError;
use tokio_util::sync::CancellationToken;

/// The first wait before a write is tried again; it doubles up to
/// [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(200);
const LONGEST_WAIT: Duration = Duration::from_millis(3200);

/// Runs `write` until the store answers it, trying again a little later
/// while the store is out of reach, until `stop` (the paywall stopping):
/// then the last error.
///
/// # Errors
///
/// The store's last error, once `stop` is cancelled.
pub(crate) async fn until_written<T, F, Fut>(
    mut write: F,
    stop: &CancellationToken,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut wait = FIRST_WAIT;
    loop {
        match write().await {
            Ok(done) => return Ok(done),
            Err(e) if stop.is_cancelled() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the store did not take a payment's outcome; retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => {}
                }
                wait = (wait * 2).min(LONGEST_WAIT);
            }
        }
    }
}
