//! Single use, fenced: the one place that keys and holds claims on
//! payments.
//!
//! A single-use payment is claimed under its canonical identity (the
//! payment hash, never text a caller spelled) by one request of one
//! replica, with a token made for that claim alone: only that holder can
//! renew, commit or release it, so a request that outlived its lease can
//! never release or spend a claim another request took over. While a
//! response streams, the claim's lease is renewed, however long the
//! stream. The claim is committed when the response body has been sent or
//! the client left after the upstream had the request (an answer's last
//! bytes wait until the commit is written, however long the store is out
//! of reach: [`Claim::commit_written`]), released when the
//! upstream failed or the request ended before reaching it (pay for
//! success), and every commit or release is tracked so that a graceful
//! shutdown finishes them all before the process exits. A replica killed
//! with claims held releases them at its next start
//! ([`Claims::release_abandoned`]): their clients paid and were never
//! answered, and are served on their retry.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gate402_store::{AfterFailure, ClaimHolder, Reservation, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::Batch;
use crate::clock::unix_now;
use crate::detached::Detached;

/// Served claims waiting to be recorded as spent, and the answers whose
/// last bytes wait for that (told whether it was written, each at the
/// index of its claim).
#[derive(Default)]
struct Commits {
    claims: Vec<(String, ClaimHolder)>,
    /// When each claim's payment can no longer be presented.
    expiries: Vec<u64>,
    written: Vec<Option<tokio::sync::oneshot::Sender<bool>>>,
}

impl Commits {
    fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    fn merge(&mut self, other: Commits) {
        self.claims.extend(other.claims);
        self.expiries.extend(other.expiries);
        self.written.extend(other.written);
    }
}

/// A claim as its spend writes it: the key, its holder, and when its
/// payment can no longer be presented, so that a claim the store lost can
/// be taken again ([`Claims::spend_lost`]).
#[derive(Debug, Clone)]
struct Spending {
    key: String,
    holder: ClaimHolder,
    expires_at: u64,
}

/// How many times an upstream may fail on one payment before the payment
/// counts as spent: enough for a client to retry a passing fault for free,
/// few enough that a request which makes the upstream fail or time out
/// after acting on it cannot have it act any number of times for one
/// payment.
pub const FAILURES_PER_PAYMENT: u32 = 3;

/// The canonical key of a single-use payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimKey(String);

impl ClaimKey {
    /// The key of the payment with this hash, whichever door it came
    /// through.
    pub fn payment(hash: &[u8; 32]) -> Self {
        Self(format!("p:{}", gate402_mpp::lightning::hex32(hash)))
    }

    /// The key of one `Idempotency-Key` under a payment that is not single
    /// use (a pass): the key is hashed, so any length fits the column.
    pub fn idempotent(hash: &[u8; 32], idempotency_key: &str) -> Self {
        use sha2::Digest;
        let key = sha2::Sha256::digest(idempotency_key.as_bytes());
        Self(format!("i:{}:{}", hex::encode(hash), hex::encode(key)))
    }

    /// Whether it is a payment's own key ([`ClaimKey::payment`]).
    pub fn is_payment(&self) -> bool {
        self.0.starts_with("p:")
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a claim was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The payment was spent already.
    #[error("this credential has already been used; pay the new challenge")]
    Consumed,
    /// Another request holds it now.
    #[error("this credential is being used by another request")]
    InFlight,
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A claim this replica holds.
struct Held {
    holder: ClaimHolder,
    /// Its request was answered and its commit waits for its batch: a
    /// replay is told it is spent, not in flight.
    served: bool,
}

/// The claims of one replica.
pub struct Claims {
    store: Arc<dyn Store>,
    replica: String,
    lease: Duration,
    /// Claims held now, for the renewer, by key.
    held: Mutex<HashMap<String, Held>>,
    /// Claims served and waiting to be recorded as spent: still held (and
    /// renewed) until their batch is written.
    commits: Batch<Commits>,
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Claims taken before claims were keyed by payment hash are still
    /// checked under their challenge id until this time (unix seconds).
    legacy_until: AtomicU64,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("replica", &self.replica)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Claims {
    /// Claims of `replica` in `store`, each leased for `lease` and renewed
    /// while held. Starts the renewer; call within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// The store's, when it cannot say whether legacy claims remain.
    pub async fn new(
        store: Arc<dyn Store>,
        replica: String,
        lease: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        let legacy_until = store.legacy_claims_until().await?;
        let claims = Arc::new(Self {
            store,
            replica,
            lease: lease.max(Duration::from_secs(1)),
            held: Mutex::new(HashMap::new()),
            commits: Batch::new(),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            legacy_until: AtomicU64::new(legacy_until),
        });
        let renewer = Arc::downgrade(&claims);
        let stop = claims.stop.clone();
        let every = claims.lease / 3;
        claims.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let Some(claims) = renewer.upgrade() else {
                    return;
                };
                claims.renew_all().await;
            }
        });
        let committer = claims.clone();
        claims.tracker.spawn(async move {
            let claims = &committer;
            claims
                .commits
                // No linger: answers wait for their commits. Those that
                // come while a batch is written go in the next one.
                .run(
                    claims.stop.clone(),
                    Duration::ZERO,
                    true,
                    Commits::is_empty,
                    Commits::merge,
                    |batch| claims.commit_batch(batch),
                )
                .await;
        });
        Ok(claims)
    }

    /// Records a batch of served claims as spent; answers what could not
    /// be written.
    async fn commit_batch(&self, batch: Commits) -> Option<Commits> {
        let held = match self.store.commit_claims(&batch.claims, unix_now()).await {
            Ok(held) => held,
            Err(e) => {
                // Still held and renewed: written on the next try.
                tracing::warn!(error = %e, claims = batch.claims.len(), "cannot record served claims; retrying");
                return Some(batch);
            }
        };
        let Commits {
            claims,
            expiries,
            written,
        } = batch;
        let mut again = Commits::default();
        let spends = claims.into_iter().zip(expiries).zip(written).zip(held);
        for ((((key, holder), expires_at), written), held) in spends {
            let claim = Spending {
                key,
                holder,
                expires_at,
            };
            let spent = if held {
                true
            } else {
                match spend_lost(&*self.store, self.lease, &claim).await {
                    Ok(spent) => spent,
                    Err(e) => {
                        tracing::warn!(key = claim.key, error = %e, "cannot take a lost claim again; retrying");
                        again.claims.push((claim.key, claim.holder));
                        again.expiries.push(expires_at);
                        again.written.push(written);
                        continue;
                    }
                }
            };
            // Forgotten before its answer's last bytes go: a replay after
            // them asks the store, which has it spent.
            self.forget(&claim.key, &claim.holder);
            if !spent {
                tracing::error!(
                    key = claim.key,
                    "a served claim was no longer held by its request"
                );
            }
            // Not held (taken over after a whole lease out of reach, or
            // claimed by another request once the store lost it): its
            // answer's last bytes do not go.
            if let Some(written) = written {
                let _ = written.send(spent);
            }
        }
        (!again.is_empty()).then_some(again)
    }

    /// This replica's name in the store.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The lease of each claim.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Releases the claims this replica held when it last stopped (a
    /// process killed mid-request). Call once at start, before serving.
    ///
    /// # Errors
    ///
    /// The store's.
    pub async fn release_abandoned(&self) -> Result<u64, StoreError> {
        self.store.release_claims_of(&self.replica).await
    }

    /// Claims the payment `key` for one request. `expires_at` is when the
    /// credential stops verifying (the row may be forgotten then);
    /// `legacy_id`, the MPP challenge id, is also checked against claims
    /// recorded before claims were keyed by payment hash.
    ///
    /// # Errors
    ///
    /// [`ClaimError::Consumed`] or [`ClaimError::InFlight`] when another
    /// request has it; [`ClaimError::Store`] when the store cannot answer.
    pub async fn claim(
        self: &Arc<Self>,
        key: &ClaimKey,
        expires_at: u64,
        legacy_id: Option<&str>,
    ) -> Result<Claim, ClaimError> {
        let now = unix_now();
        if let Some(id) = legacy_id {
            if now < self.legacy_until.load(Ordering::Relaxed)
                && self.store.legacy_consumed(id).await?
            {
                return Err(ClaimError::Consumed);
            }
        }
        // Served here, its commit not yet written: spent. Asked before the
        // store too, since the commit may land (and the claim leave this
        // map) while the store is answering that it is in flight.
        if self.is_served_here(&key.0) {
            return Err(ClaimError::Consumed);
        }
        let holder = ClaimHolder {
            replica: self.replica.clone(),
            token: hex::encode(rand::random::<[u8; 16]>()),
        };
        let lease_until = now + self.lease.as_secs();
        let call = {
            let (store, key, holder) = (self.store.clone(), key.0.clone(), holder.clone());
            async move {
                store
                    .claim(&key, &holder, expires_at, lease_until, now)
                    .await
            }
        };
        // Taken after its request left (its client closed the connection):
        // given back at once.
        let give_back = {
            let (claims, key, holder) = (self.clone(), key.0.clone(), holder.clone());
            move |taken: Result<Reservation, StoreError>| {
                if matches!(taken, Ok(Reservation::Acquired)) {
                    let claim = Spending {
                        key,
                        holder,
                        expires_at,
                    };
                    claims.finish(claim, Outcome::Release);
                }
            }
        };
        let taken = match Detached::new(&self.tracker, call, give_back).await {
            Ok(taken) => taken,
            Err(e) => {
                // It may have been taken and only the store's answer lost:
                // given back (by this request's token, so nothing else),
                // lest the client's own payment be refused as in use
                // until the lease ends.
                self.release_unsure(key.0.clone(), holder);
                return Err(e.into());
            }
        };
        match taken {
            Reservation::Acquired => {}
            Reservation::Consumed => return Err(ClaimError::Consumed),
            // Served here, its commit not yet written: spent all the same.
            Reservation::InFlight if self.is_served_here(&key.0) => {
                return Err(ClaimError::Consumed)
            }
            Reservation::InFlight => return Err(ClaimError::InFlight),
        }
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key.0.clone(),
            Held {
                holder: holder.clone(),
                served: false,
            },
        );
        Ok(Claim {
            claims: self.clone(),
            key: key.0.clone(),
            holder,
            expires_at,
            on_drop: Some(Outcome::Release),
        })
    }

    /// Releases a claim this request may hold, in the background, tried
    /// until the store answers (or the claims stop).
    fn release_unsure(self: &Arc<Self>, key: String, holder: ClaimHolder) {
        let claims = self.clone();
        self.tracker.spawn(async move {
            let release = || claims.store.release_claim(&key, &holder);
            let _ = crate::retry::until_written(release, &claims.stop).await;
        });
    }

    /// Whether a request of this replica was served with `key`, whose
    /// commit is not yet written.
    fn is_served_here(&self, key: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|h| h.served)
    }

    async fn renew_all(&self) {
        let held: Vec<(String, ClaimHolder)> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, h)| (k.clone(), h.holder.clone()))
            .collect();
        let lease_until = unix_now() + self.lease.as_secs();
        for (key, holder) in held {
            match self.store.renew_claim(&key, &holder, lease_until).await {
                Ok(true) => {}
                Ok(false) => {
                    // Finished meanwhile, or lost while the store was out
                    // of reach for a whole lease.
                    let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
                    if map.get(&key).is_some_and(|h| h.holder == holder) {
                        map.remove(&key);
                        tracing::error!(
                            key,
                            "a claim was lost while its response was still streaming"
                        );
                    }
                }
                Err(e) => tracing::warn!(key, error = %e, "cannot renew a claim; retrying"),
            }
        }
    }

    /// Marks a claim served: renewed until its commit is written.
    fn mark_served(&self, key: &str, holder: &ClaimHolder) {
        let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = map.get_mut(key).filter(|h| h.holder == *holder) {
            held.served = true;
        }
    }

    /// Puts a served claim in the next batch of commits; `written` is told
    /// once that batch is written.
    fn queue_commit(&self, claim: Spending, written: Option<tokio::sync::oneshot::Sender<bool>>) {
        self.mark_served(&claim.key, &claim.holder);
        self.commits.add(|pending| {
            pending.claims.push((claim.key, claim.holder));
            pending.expiries.push(claim.expires_at);
            pending.written.push(written);
        });
    }

    fn finish(self: &Arc<Self>, claim: Spending, outcome: Outcome) {
        if outcome == Outcome::Commit {
            self.queue_commit(claim, None);
            return;
        }
        let claims = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.tracker.spawn_on(
                    async move { claims.finish_now(&claim, outcome).await },
                    &runtime,
                );
            }
            // Only outside a runtime (never under a server): the lease
            // lapses, or the next start releases it.
            Err(_) => tracing::error!(key = claim.key, ?outcome, "no runtime to finish a claim on"),
        }
    }

    /// Stops renewing a claim this request is finishing.
    fn forget(&self, key: &str, holder: &ClaimHolder) {
        let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|h| h.holder == *holder) {
            map.remove(key);
        }
    }

    async fn finish_now(&self, claim: &Spending, outcome: Outcome) -> bool {
        let key = claim.key.as_str();
        self.forget(key, &claim.holder);
        let call = {
            let (store, claim, lease) = (self.store.clone(), claim.clone(), self.lease);
            async move {
                let (key, holder) = (claim.key.as_str(), &claim.holder);
                match outcome {
                    Outcome::Commit => match store.commit_claim(key, holder, unix_now()).await {
                        Ok(false) => spend_lost(&*store, lease, &claim).await,
                        committed => committed,
                    },
                    Outcome::Release => store.release_claim(key, holder).await,
                }
            }
        };
        // Finished even if the request is dropped meanwhile.
        let result = Detached::new(&self.tracker, call, drop).await;
        match result {
            Ok(true) => true,
            Ok(false) => {
                tracing::error!(
                    key,
                    ?outcome,
                    "the claim was no longer held by this request"
                );
                false
            }
            Err(e) => {
                // The lease lapses and the claim is taken over or released
                // at the next start: the client is served on its retry.
                tracing::error!(key, ?outcome, error = %e, "cannot record a claim's outcome");
                false
            }
        }
    }

    /// Stops renewing, writes every pending commit, waits for every
    /// release. Call after the server stopped serving.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Spends a served claim whose spend found it not held. A claim the store
/// lost is taken again by its holder and spent, unless another request
/// took or spent the payment since: PostgreSQL writes claims without
/// waiting for its disk (the spend, which waits, makes them durable), so a
/// crash of the database loses the last of them, and their answers,
/// served, would be cut and given back. Ok(false): another request has
/// the payment (taken over after a whole lease out of reach, or claimed
/// once it was lost); that one is served, not this.
async fn spend_lost(
    store: &dyn Store,
    lease: Duration,
    claim: &Spending,
) -> Result<bool, StoreError> {
    let now = unix_now();
    let lease_until = now + lease.as_secs();
    let (key, holder) = (claim.key.as_str(), &claim.holder);
    match store
        .claim(key, holder, claim.expires_at, lease_until, now)
        .await?
    {
        Reservation::Acquired => store.commit_claim(key, holder, unix_now()).await,
        Reservation::Consumed | Reservation::InFlight => Ok(false),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Commit,
    Release,
}

/// A held claim. Dropped as it is, it is released: the request ended
/// before it reached the upstream. [`Claim::served`] turns it into one
/// that commits when dropped, from the moment the upstream has the request
/// (the guard of the call, then of the response body).
#[derive(Debug)]
pub struct Claim {
    claims: Arc<Claims>,
    key: String,
    holder: ClaimHolder,
    /// When its payment can no longer be presented (unix seconds).
    expires_at: u64,
    on_drop: Option<Outcome>,
}

impl Claim {
    /// What its spend writes, the key taken out of it.
    fn take_served(&mut self) -> Spending {
        Spending {
            key: std::mem::take(&mut self.key),
            holder: self.holder.clone(),
            expires_at: self.expires_at,
        }
    }

    /// The claimed key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token this claim is held under: what a response kept for it
    /// records, so that it is replayed only once this claim is spent.
    pub fn holder_token(&self) -> &str {
        &self.holder.token
    }

    /// Spends the payment now.
    pub async fn commit(mut self) -> bool {
        self.on_drop = None;
        let claim = self.take_served();
        self.claims.finish_now(&claim, Outcome::Commit).await
    }

    /// Spends the payment with the next batch of commits, and is ready once
    /// that is written, however long the store is out of reach: `true`;
    /// `false` when it was not (the batch given up at a stop, or the claim
    /// taken over after a whole lease out of reach). The last bytes of a
    /// paid answer wait for it and go only on `true`: a gateway killed
    /// (or stopped with the store out of reach) after its client had the
    /// whole answer has spent the payment, where a commit not yet written
    /// would be lost, and the claim released at the next start would
    /// serve the credential again.
    pub fn commit_written(mut self) -> impl Future<Output = bool> + Send + 'static {
        self.on_drop = None;
        let (told, written) = tokio::sync::oneshot::channel();
        let claim = self.take_served();
        self.claims.queue_commit(claim, Some(told));
        async move { written.await.unwrap_or(false) }
    }

    /// [`Claim::commit_written`] for a claim whose request also holds a
    /// debit from a balance (`debit`, keeping `kept_msat` of it): both
    /// are written in one store call ([`Store::commit_claim_with_debit`]),
    /// started now, and the future is ready once it is written: `true`
    /// when the claim was still held. A crash then cannot leave the claim
    /// spent and the debit held, given back at the next start while the
    /// key's kept answer is replayed.
    pub(crate) fn commit_with_debit(
        mut self,
        debit: ClaimHolder,
        kept_msat: Option<u64>,
    ) -> impl Future<Output = bool> + Send + 'static {
        self.on_drop = None;
        let claim = self.take_served();
        let claims = self.claims.clone();
        claims.mark_served(&claim.key, &claim.holder);
        let (told, written) = tokio::sync::oneshot::channel();
        let write = {
            let claims = claims.clone();
            async move {
                let key = claim.key.as_str();
                let (store, lease, spending, debit) =
                    (&*claims.store, claims.lease, &claim, &debit);
                let spend = move || async move {
                    let now = unix_now();
                    match store
                        .commit_claim_with_debit(key, &spending.holder, debit, kept_msat, now)
                        .await
                    {
                        // The debit is kept either way: the claim alone
                        // is taken again.
                        Ok(false) => spend_lost(store, lease, spending).await,
                        committed => committed,
                    }
                };
                let held = match crate::retry::until_written(spend, &claims.stop).await {
                    Ok(true) => true,
                    Ok(false) => {
                        tracing::error!(key, "a served claim was no longer held by its request");
                        false
                    }
                    Err(e) => {
                        tracing::error!(key, error = %e, "cannot record a served claim and its debit");
                        false
                    }
                };
                claims.forget(key, &claim.holder);
                let _ = told.send(held);
            }
        };
        // Written on its task even if not waited for to the end.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                claims.tracker.spawn_on(write, &runtime);
            }
            Err(_) => tracing::error!("no runtime to spend a claim and its debit on"),
        }
        async move { written.await.unwrap_or(false) }
    }

    /// Whether dropping it spends the payment ([`Claim::served`]).
    pub(crate) fn commits_on_drop(&self) -> bool {
        self.on_drop == Some(Outcome::Commit)
    }

    /// Frees the payment now (the upstream failed).
    pub async fn release(mut self) -> bool {
        self.on_drop = None;
        let claim = self.take_served();
        self.claims.finish_now(&claim, Outcome::Release).await
    }

    /// Frees the payment after the upstream had the request and failed,
    /// counting the failure: the [`FAILURES_PER_PAYMENT`]-th spends it
    /// instead ([`AfterFailure::Spent`]). [`AfterFailure::Released`]: the
    /// payment is still good for a retry (also when the store could not
    /// record the failure: the claim's lease then lapses).
    pub async fn fail(mut self) -> AfterFailure {
        self.on_drop = None;
        self.claims.forget(&self.key, &self.holder);
        let call = {
            let store = self.claims.store.clone();
            let (key, holder) = (self.key.clone(), self.holder.clone());
            async move {
                store
                    .fail_claim(&key, &holder, FAILURES_PER_PAYMENT, unix_now())
                    .await
            }
        };
        // Finished even if the request is dropped meanwhile.
        let result = Detached::new(&self.claims.tracker, call, drop).await;
        match result {
            Ok(AfterFailure::Released) => AfterFailure::Released,
            Ok(AfterFailure::Spent) => {
                tracing::warn!(
                    key = self.key,
                    failures = FAILURES_PER_PAYMENT,
                    "the upstream failed on this payment too many times; it is spent"
                );
                AfterFailure::Spent
            }
            Ok(AfterFailure::NotHeld) => {
                tracing::error!(
                    key = self.key,
                    "the claim was no longer held by this request"
                );
                AfterFailure::NotHeld
            }
            Err(e) => {
                // As for a lost release: the lease lapses and the claim is
                // taken over, or the next start releases it.
                tracing::error!(key = self.key, error = %e, "cannot record an upstream failure on a claim");
                AfterFailure::Released
            }
        }
    }

    /// The upstream has the request: from now on dropping the claim spends
    /// the payment (the answer went out, or the client left); only an
    /// explicit [`Claim::release`] frees it.
    pub fn served(mut self) -> Self {
        self.on_drop = Some(Outcome::Commit);
        self
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(outcome) = self.on_drop.take() {
            let claim = self.take_served();
            self.claims.finish(claim, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_store(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(gate402_store::SqliteStore::open(&dir.join("claims.sqlite3")).unwrap())
    }

    /// The claims of replica `name`, leased for 30 s.
    async fn replica(store: &Arc<dyn Store>, name: &str) -> Arc<Claims> {
        Claims::new(store.clone(), name.into(), Duration::from_secs(30))
            .await
            .unwrap()
    }

    /// With the store out of reach, an answer's last bytes wait for its
    /// commit as long as the outage lasts (they went after 5 s, and a
    /// replica killed or stopped then served the credential again at its
    /// next start); a stop that cannot write it says so, and they never go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_waits_for_its_commit_as_long_as_the_store_is_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path());
        let claims = replica(&store, "r1").await;
        let claim = claims
            .claim(&ClaimKey::payment(&[1; 32]), u64::MAX / 2, None)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        assert!(claim.served().commit_written().await);
        assert!(started.elapsed() < Duration::from_secs(1));
        let claim = claims
            .claim(&ClaimKey::payment(&[2; 32]), u64::MAX / 2, None)
            .await
            .unwrap();
        store.close().await;
        let mut written = Box::pin(claim.served().commit_written());
        assert!(
            tokio::time::timeout(Duration::from_secs(8), written.as_mut())
                .await
                .is_err(),
            "the last bytes went with the commit unwritten"
        );
        claims.shutdown().await;
        assert!(!written.await, "given up at the stop: said unwritten");
    }

    /// A served claim whose row the store lost (as a PostgreSQL crash
    /// loses the claims written just before it: they do not wait for the
    /// disk) is taken again and spent, by the batch and by a spend of its
    /// own: its answer, served, goes whole and the payment is spent. Before,
    /// its spend marked nothing: the answer was cut, its payment given
    /// back. Here the row goes by a release under the claim's own holder.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_served_claim_the_store_lost_is_taken_again_and_spent() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path());
        let claims = replica(&store, "r1").await;
        let lose = async |claim: &Claim| {
            let holder = ClaimHolder {
                replica: "r1".into(),
                token: claim.holder_token().to_owned(),
            };
            assert!(store.release_claim(claim.key(), &holder).await.unwrap());
        };
        for (n, batched) in [(1u8, true), (2, false)] {
            let key = ClaimKey::payment(&[n; 32]);
            let claim = claims.claim(&key, u64::MAX / 2, None).await.unwrap();
            lose(&claim).await;
            let spent = if batched {
                claim.served().commit_written().await
            } else {
                claim.served().commit().await
            };
            assert!(spent, "batched: {batched}: the lost claim was not spent");
            assert!(
                matches!(
                    claims.claim(&key, u64::MAX / 2, None).await,
                    Err(ClaimError::Consumed)
                ),
                "batched: {batched}: the payment is not spent"
            );
        }
    }

    /// A lost claim that another request took since is that request's:
    /// the first holder's spend does not take it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_claim_another_request_took_is_not_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path());
        let (r1, r2) = (replica(&store, "r1").await, replica(&store, "r2").await);
        let key = ClaimKey::payment(&[3; 32]);
        let first = r1.claim(&key, u64::MAX / 2, None).await.unwrap();
        let holder = ClaimHolder {
            replica: "r1".into(),
            token: first.holder_token().to_owned(),
        };
        assert!(store.release_claim(first.key(), &holder).await.unwrap());
        let second = r2.claim(&key, u64::MAX / 2, None).await.unwrap();
        assert!(!first.served().commit_written().await);
        assert!(second.served().commit_written().await);
        assert!(matches!(
            r1.claim(&key, u64::MAX / 2, None).await,
            Err(ClaimError::Consumed)
        ));
    }
}
