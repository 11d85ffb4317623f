//! Writes that need not hold up a response's head (a spent claim, whose
//! answer's last bytes wait for it; a served payment), gathered while the
//! previous batch is being written and written together: at low load a
//! batch is one write and waits for nothing; under load one store round
//! trip carries many.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Pending writes of one kind.
pub(crate) struct Batch<T> {
    pending: Mutex<T>,
    wake: Notify,
}

/// How often a batch that failed is tried again before giving up on it
/// (at a stop, or after this many failures in a row).
const ATTEMPTS: u32 = 5;

impl<T: Default + Send> Batch<T> {
    pub(crate) fn new() -> Self {
        Self {
            pending: Mutex::new(T::default()),
            wake: Notify::new(),
        }
    }

    /// Adds to the pending writes.
    pub(crate) fn add(&self, add: impl FnOnce(&mut T)) {
        add(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        self.wake.notify_one();
    }

    fn take(&self) -> T {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes batches with `write` until `stop`, then writes what is left,
    /// waiting `linger` after the first pending write for others to join.
    /// `write` answers what it could not write (the store is out of
    /// reach), which is tried again a little later: for ever while
    /// running when `keep_trying`, else a few times; a few times at a stop.
    pub(crate) async fn run<W, F>(
        &self,
        stop: CancellationToken,
        linger: Duration,
        keep_trying: bool,
        is_empty: impl Fn(&T) -> bool,
        merge: impl Fn(&mut T, T),
        mut write: W,
    ) where
        W: FnMut(T) -> F,
        F: Future<Output = Option<T>>,
    {
        let mut failures = 0;
        loop {
            let mut stopping = tokio::select! {
                () = self.wake.notified() => false,
                () = stop.cancelled() => true,
            };
            if !stopping && !linger.is_zero() {
                // Let more gather: one write for many.
                stopping = tokio::select! {
                    () = tokio::time::sleep(linger) => false,
                    () = stop.cancelled() => true,
                };
            }
            let items = self.take();
            if !is_empty(&items) {
                match write(items).await {
                    None => failures = 0,
                    Some(left) => {
                        failures += 1;
                        if keep_trying || failures < ATTEMPTS {
                            self.add(|pending| merge(pending, left));
                            tokio::time::sleep(Duration::from_millis(200 << failures.min(4))).await;
                        } else {
                            tracing::error!(
                                "the store did not take a batch after {ATTEMPTS} attempts; dropped"
                            );
                            failures = 0;
                        }
                    }
                }
            }
            if stopping {
                // What arrived meanwhile, then done.
                let mut failures = 0;
                loop {
                    let items = self.take();
                    if is_empty(&items) {
                        return;
                    }
                    if let Some(left) = write(items).await {
                        failures += 1;
                        if failures >= ATTEMPTS {
                            tracing::error!("the store did not take the last batch; dropped");
                            return;
                        }
                        self.add(|pending| merge(pending, left));
                    }
                }
            }
        }
    }
}
