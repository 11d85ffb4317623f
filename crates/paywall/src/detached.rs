//! Store calls a request awaits that must run to their end even if the
//! request is dropped meanwhile (its client left: hyper drops a request's
//! future at once). Cancelled, a call that takes something for the request
//! (a claim on a payment, a debit from a balance) would still take it in
//! the store, and nobody would give it back until its lease ran out (a
//! client locked out of its own payment) or a restart; one that finishes
//! (a commit, a release, a failure counted) might not happen at all. Here
//! the call runs to its end on a tracked task of its own, and what it
//! answers goes to `give_back`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::task::TaskTracker;

type Call<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type GiveBack<T> = Box<dyn FnOnce(T) + Send>;

/// A store call awaited by a request; finished in the background if the
/// request is dropped first.
pub(crate) struct Detached<T: Send + 'static> {
    call: Option<Call<T>>,
    give_back: Option<GiveBack<T>>,
    tracker: TaskTracker,
}

impl<T: Send + 'static> Detached<T> {
    /// `call`, whose result goes to `give_back` instead if this is dropped
    /// before the call is done (on a task of `tracker`, so a graceful stop
    /// waits for it).
    pub(crate) fn new(
        tracker: &TaskTracker,
        call: impl Future<Output = T> + Send + 'static,
        give_back: impl FnOnce(T) + Send + 'static,
    ) -> Self {
        Self {
            call: Some(Box::pin(call)),
            give_back: Some(Box::new(give_back)),
            tracker: tracker.clone(),
        }
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(call) = self.call.as_mut() else {
            panic!("a detached store call polled after it finished");
        };
        let done = std::task::ready!(call.as_mut().poll(cx));
        self.call = None;
        Poll::Ready(done)
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        let (Some(call), Some(give_back)) = (self.call.take(), self.give_back.take()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.tracker
                    .spawn_on(async move { give_back(call.await) }, &runtime);
            }
            // Only outside a runtime (never under a server): the lease
            // lapses, or the next start gives it back.
            Err(_) => tracing::error!("no runtime to finish a store call whose request left"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_dropped_call_still_ends_and_gives_back_what_it_took() {
        let tracker = TaskTracker::new();
        let given_back = Arc::new(AtomicU32::new(0));
        let counted = given_back.clone();
        let call = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        };
        let waiting = Detached::new(&tracker, call, move |n| {
            counted.fetch_add(n, Ordering::SeqCst);
        });
        // The request gives up before the store answers.
        assert!(tokio::time::timeout(Duration::from_millis(1), waiting)
            .await
            .is_err());
        tracker.close();
        tracker.wait().await;
        assert_eq!(given_back.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn an_awaited_call_gives_nothing_back() {
        let tracker = TaskTracker::new();
        let given_back = Arc::new(AtomicU32::new(0));
        let counted = given_back.clone();
        let answer = Detached::new(&tracker, async { 7 }, move |n| {
            counted.fetch_add(n, Ordering::SeqCst);
        })
        .await;
        assert_eq!(answer, 7);
        tracker.close();
        tracker.wait().await;
        assert_eq!(given_back.load(Ordering::SeqCst), 0);
    }
}
