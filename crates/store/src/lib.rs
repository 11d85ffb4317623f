//! The gateway's state, behind one trait: [`Store`].
//!
//! What must survive a restart and be shared by every replica of a
//! gateway: the invoices issued, the claims on single-use payments (so a
//! payment is served once), the payments counted, the receipts given out,
//! the freebie counters, prepaid balances, kept responses, and what the
//! admin API changed (services, revocations, 402 counts, its log). Two
//! backends, each behind a feature (both on by default): `SqliteStore`
//! (feature `sqlite`), a file in the data directory, and `PostgresStore`
//! (feature `postgres`), shared by several replicas. Without them the crate is the trait and its records, for code
//! that takes any store.

mod admin;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use async_trait::async_trait;

pub use admin::{
    AdminVersions, AuditEntry, ChallengeCount, PaymentQuery, PaymentRow, RevenueBucket, Revocation,
    ServiceChange, ServiceState,
};

#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// An invoice put into a 402.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRecord {
    /// Its payment hash.
    pub payment_hash: [u8; 32],
    /// The BOLT11 string.
    pub bolt11: String,
    /// The amount.
    pub amount_msat: u64,
    /// The service it charges for.
    pub service: String,
    /// When it was issued (unix seconds).
    pub created_at: u64,
    /// When it expires (unix seconds).
    pub expires_at: u64,
}

/// Requests a payment served: one row per payment, made the first time it
/// serves (counted once for revenue), then a count of what it served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// The paid invoice's hash: what makes it one payment.
    pub payment_hash: [u8; 32],
    /// The service it paid for.
    pub service: String,
    /// `L402` or `Payment`.
    pub scheme: String,
    /// The amount.
    pub amount_msat: u64,
    /// When it served the last of `served` (unix seconds).
    pub at: u64,
    /// Requests served since it was last recorded. A balance's requests
    /// are counted on its session's first deposit (whose payment hash is
    /// the session's id); a record of them alone has `amount_msat` 0, and
    /// the deposit's amount is kept whichever is written first. A top-up
    /// is recorded with 0. Once a payment's amount is written (not 0), it
    /// is never changed.
    pub served: u64,
}

/// A paid response kept for retries that carry the same `Idempotency-Key`
/// (draft-ietf-httpapi-idempotency-key-header), so that a client whose
/// answer was lost gets it again without the upstream being called twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The claim the request was served under: the payment's, or for a
    /// pass, one made for this key alone.
    pub claim_key: String,
    /// The `Idempotency-Key` the client sent, as sent.
    pub idempotency_key: String,
    /// SHA-256 over the request's method, target and body: a retry must
    /// send the same request.
    pub fingerprint: [u8; 32],
    /// The status code.
    pub status: u16,
    /// The response's header fields, in order, with the receipt.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body.
    pub body: Vec<u8>,
    /// When it may be forgotten (unix seconds).
    pub expires_at: u64,
    /// The token of the claim holder that served it: it is replayed only
    /// if that holder's spend was written, not after a payment given back
    /// and served again (under another key, or none). `None` for a
    /// response kept before holders were recorded with it.
    pub holder_token: Option<String>,
}

/// A prepaid balance: draft-lightning-session-00's session, also what an
/// L402 token naming a balance spends. Keyed by the payment hash of the
/// deposit that opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The opening deposit's payment hash.
    pub id: [u8; 32],
    /// The service it was opened on.
    pub service: String,
    /// Everything deposited, top-ups included (msat).
    pub deposit_msat: u64,
    /// Everything spent (msat), requests in flight included.
    pub spent_msat: u64,
    /// Where the unspent balance is refunded (BOLT11 without an amount);
    /// none for a balance opened through L402 until an MPP `open` names one.
    pub return_invoice: Option<String>,
    /// Seconds of inactivity after which it is closed and refunded.
    pub idle_secs: u64,
    /// When it was last opened, spent from or topped up (unix seconds).
    pub last_used_at: u64,
    /// The price of one unit it was opened at (msat): what each request
    /// or event spends from it, whatever the service's price later.
    /// `None` for a session opened before it was recorded.
    pub unit_msat: Option<u64>,
    /// Set once it is closed.
    pub closed: Option<ClosedSession>,
}

impl SessionRecord {
    /// What is left to spend (msat).
    pub fn balance_msat(&self) -> u64 {
        self.deposit_msat.saturating_sub(self.spent_msat)
    }
}

/// The open sessions: the balances the operator owes until they are
/// spent or refunded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenSessions {
    /// How many are open.
    pub count: u64,
    /// What is left to spend in all of them (msat).
    pub balance_msat: u64,
    /// The most recently used, at most the limit asked for.
    pub sessions: Vec<SessionRecord>,
}

/// The refunds still owed: closed balances whose unspent part is not
/// yet paid back to their return invoice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefundsOwed {
    /// How many.
    pub count: u64,
    /// What they come to (msat).
    pub refund_msat: u64,
    /// The longest owed first, at most the limit asked for.
    pub sessions: Vec<SessionRecord>,
}

/// Which sessions owe a refund still, in the SQL both stores speak: closed
/// with at least 1 sat left and a return invoice, and not paid (`pending`,
/// or `failed`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const REFUND_OWED: &str = "closed_at IS NOT NULL AND return_invoice IS NOT NULL
    AND refund_msat >= 1000 AND refund_status IN ('pending', 'failed')";

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSession {
    /// When (unix seconds).
    pub at: u64,
    /// The unspent balance at that moment (msat).
    pub refund_msat: u64,
    /// `pending` until the refund was tried, then `succeeded`, `failed` or
    /// `skipped`.
    pub refund_status: String,
}

/// A session to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    /// The deposit's payment hash: the session's id.
    pub id: [u8; 32],
    /// The service it is opened on.
    pub service: String,
    /// The deposit (msat).
    pub deposit_msat: u64,
    /// Where refunds go, if known.
    pub return_invoice: Option<String>,
    /// Its idle timeout (seconds).
    pub idle_secs: u64,
    /// The price of one unit (msat), as the client was offered it.
    pub unit_msat: u64,
    /// Now (unix seconds).
    pub now: u64,
}

/// What opening a session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Made now, with its deposit.
    New,
    /// It was open (or closed) already: nothing credited again. A return
    /// invoice given now is kept if it had none.
    Existing(SessionRecord),
    /// Its deposit already topped up another session.
    DepositSpent,
    /// Another session names the return invoice given (BOLT11) as where
    /// its refund goes, and an invoice is paid once: nothing was written,
    /// the deposit is unspent.
    ReturnInvoiceTaken,
}

/// What spending from a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debit {
    /// Spent; this much is left (msat).
    Done {
        /// The balance after it.
        balance_msat: u64,
        /// The unit price charged (msat).
        unit_msat: u64,
    },
    /// Not enough left; nothing spent.
    Insufficient {
        /// Spent so far (msat).
        spent_msat: u64,
        /// Left (msat).
        balance_msat: u64,
        /// Held by requests in flight (msat; counted in `spent_msat` until
        /// they settle, and what they do not use comes back).
        held_msat: u64,
        /// The unit price it would have been charged (msat).
        unit_msat: u64,
    },
    /// The session is closed.
    Closed,
    /// No such session.
    NotFound,
}

/// What topping a session up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopUp {
    /// Credited; everything deposited now (msat).
    Credited {
        /// The session's deposits after it.
        deposit_msat: u64,
    },
    /// This payment was credited to this session before (a retry).
    AlreadyCredited,
    /// This payment opened or topped up another session.
    DepositSpent,
    /// The session is closed.
    Closed,
    /// No such session.
    NotFound,
}

/// What closing a session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    /// Closed now (or a failed refund taken to be tried again), by this
    /// call alone: refund this much to this invoice.
    Closed {
        /// The unspent balance (msat).
        refund_msat: u64,
        /// Where to refund it, if known.
        return_invoice: Option<String>,
    },
    /// It was closed before.
    AlreadyClosed(SessionRecord),
    /// Left open: a request of it is in flight (a debit held), and the
    /// close was asked to wait for it.
    InFlight,
    /// No such session.
    NotFound,
}

/// A session closed for being idle ([`Store::close_idle_sessions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedIdle {
    /// The session.
    pub id: [u8; 32],
    /// The unspent balance to refund (msat).
    pub refund_msat: u64,
    /// Where to refund it (BOLT11 without an amount), if the session named
    /// one.
    pub return_invoice: Option<String>,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl ClosedIdle {
    /// From a row of (id, refund msat, return invoice); `None` for an id
    /// that is not 32 bytes.
    fn from_row((id, refund_msat, return_invoice): (Vec<u8>, i64, Option<String>)) -> Option<Self> {
        Some(Self {
            id: id.try_into().ok()?,
            refund_msat: refund_msat as u64,
            return_invoice,
        })
    }
}

/// A closed session's refund still owed, taken by one caller to be paid
/// ([`Store::take_owed_refunds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedRefund {
    /// The session.
    pub id: [u8; 32],
    /// The unspent balance to refund (msat).
    pub refund_msat: u64,
    /// Where to refund it (BOLT11 without an amount).
    pub return_invoice: String,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl OwedRefund {
    /// From a row of (id, refund msat, return invoice); `None` for an id
    /// that is not 32 bytes.
    fn from_row((id, refund_msat, return_invoice): (Vec<u8>, i64, String)) -> Option<Self> {
        Some(Self {
            id: id.try_into().ok()?,
            refund_msat: refund_msat as u64,
            return_invoice,
        })
    }
}

/// What a replica derives from its MPP secrets, so that replicas sharing
/// a store can tell whether they verify each other's credentials without
/// showing each other a secret: each value is HMAC-SHA256 of a fixed label
/// under one secret (32 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCheck {
    /// Of the secret it issues challenges and tokens under.
    pub current: [u8; 32],
    /// Of every secret it verifies under: the current one and its
    /// `previous_secrets`.
    pub accepted: Vec<[u8; 32]>,
}

/// A [`SecretCheck`] as stored: 32 bytes, and a whole number of 32-byte
/// values; `None` for anything else.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn secret_check(current: &[u8], accepted: &[u8]) -> Option<SecretCheck> {
    if !accepted.len().is_multiple_of(32) {
        return None;
    }
    Some(SecretCheck {
        current: current.try_into().ok()?,
        accepted: accepted
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect(),
    })
}

impl SecretCheck {
    /// Whether each of the two verifies what the other issues.
    pub fn agrees_with(&self, other: &SecretCheck) -> bool {
        self.accepted.contains(&other.current) && other.accepted.contains(&self.current)
    }
}

/// Who holds a claim: the replica (stable across restarts, from the data
/// dir) and a random token made for this one claim, so that only the
/// request that took a claim can renew, commit or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHolder {
    /// The replica, so that a restarted one can drop what its killed
    /// predecessor held ([`Store::release_claims_of`]).
    pub replica: String,
    /// Made for this claim alone.
    pub token: String,
}

/// The outcome of claiming a single-use payment for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// This request holds it now: serve, then commit (or release on failure).
    Acquired,
    /// Another request holds it and has not finished.
    InFlight,
    /// It has been served already.
    Consumed,
}

/// What became of a claim whose upstream failed ([`Store::fail_claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Given back: the same payment is good for another request.
    Released,
    /// That was its last allowed failure: the payment is spent.
    Spent,
    /// `holder` did not hold it (its lease lapsed and it was taken over,
    /// or it was finished already).
    NotHeld,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, migrated or queried.
    #[error("store: {0}")]
    Database(String),
    /// The database is unreachable for now; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The gateway's shared state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers if the database does: a cheap query for the health check.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finishes the store's own work before the process exits; call last,
    /// once nothing writes any more. SQLite commits what it was given,
    /// copies its write-ahead log into the database file and removes the
    /// log, so that the file alone holds everything; calls after it fail
    /// (on every clone of the store). Others do nothing.
    async fn close(&self) {}

    /// Takes the name `replica` for this process (one name per store), for
    /// as long as it runs: `false` when another process holds it. Two
    /// processes claiming under one name (a data dir copied with its
    /// `replica_id`) would each release, at start, the claims of requests
    /// the other is serving, so a gateway that cannot take its name does
    /// not start, and one that finds it taken while running stops. Asked
    /// again, it checks that the name is still held and takes it again if
    /// the store let it go. PostgreSQL holds a session advisory lock,
    /// released with the connection when the process ends (a `kill -9`
    /// too) or the server drops it; SQLite a lock on a file beside the
    /// database, released when the process ends.
    ///
    /// # Errors
    ///
    /// When the store cannot be asked.
    async fn hold_replica(&self, replica: &str) -> Result<bool, StoreError>;

    /// Records an issued invoice.
    async fn put_invoice(&self, invoice: &InvoiceRecord) -> Result<(), StoreError>;

    /// An issued invoice, by payment hash.
    async fn invoice(&self, payment_hash: &[u8; 32]) -> Result<Option<InvoiceRecord>, StoreError>;

    /// Claims the payment behind `key` (made canonical by the caller) for
    /// one request, atomically across every process sharing the database.
    /// A claim whose lease has lapsed (its holder died or hangs) is taken
    /// over, and from then on only the new holder can renew, commit or
    /// release it. `expires_at` is when the payment can no longer be
    /// presented, after which a consumed claim may be purged.
    async fn claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        expires_at: u64,
        lease_until: u64,
        now: u64,
    ) -> Result<Reservation, StoreError>;

    /// Extends a held claim's lease (a long response body is still
    /// streaming). Ok(false): not held by `holder` any more.
    async fn renew_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        lease_until: u64,
    ) -> Result<bool, StoreError>;

    /// Marks the payment spent, only if `holder` still holds it. Ok(false):
    /// it did not (lease lapsed and taken, or released). Committing again
    /// is Ok(true), so a retry after a lost reply does not look like a
    /// lost claim.
    async fn commit_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// [`Store::commit_claim`] for several claims at once (each key once),
    /// in one round trip; answers, in order, whether each holder still
    /// held its claim.
    async fn commit_claims(
        &self,
        claims: &[(String, ClaimHolder)],
        now: u64,
    ) -> Result<Vec<bool>, StoreError>;

    /// [`Store::commit_claim`] and [`Store::settle_debit`] (of the debit
    /// `debit` holds, keeping `kept_msat` of it) in one write, for a
    /// request that holds both (a request on a balance with an
    /// `Idempotency-Key`): a crash between two writes left the claim spent
    /// and the debit held, and the debit was given back at the next start
    /// while the key's kept answer was replayed, a unit served free.
    /// Answers whether `holder` still held its claim; the debit is kept
    /// either way. Writing it again is Ok(true), as for `commit_claim`.
    async fn commit_claim_with_debit(
        &self,
        key: &str,
        holder: &ClaimHolder,
        debit: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Frees the claim, only if `holder` holds it and it is not consumed:
    /// the request never reached the upstream. Failures counted by
    /// [`Store::fail_claim`] are kept.
    async fn release_claim(&self, key: &str, holder: &ClaimHolder) -> Result<bool, StoreError>;

    /// Frees the claim after its upstream had the request and failed (pay
    /// for success), counting the failure, only if `holder` holds it and
    /// it is not consumed. The `spend_at`-th failure of one payment spends
    /// it instead (at `now`, unix seconds): an upstream that may have
    /// acted on a request it failed must not be made to act on one
    /// payment any number of times.
    async fn fail_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        spend_at: u32,
        now: u64,
    ) -> Result<AfterFailure, StoreError>;

    /// Releases every unconsumed claim of `replica` whatever its token
    /// (called at start: the previous process of this replica was killed,
    /// and the clients of its unfinished requests retry). A claim whose
    /// payment has upstream failures counted keeps them, as with
    /// [`Store::release_claim`]. Returns how many.
    async fn release_claims_of(&self, replica: &str) -> Result<u64, StoreError>;

    /// The latest `expires_at` of consumed legacy claims (0 when none):
    /// until then, callers also check [`Store::legacy_consumed`]. Legacy
    /// claims were keyed by MPP challenge id, before claims were fenced.
    async fn legacy_claims_until(&self) -> Result<u64, StoreError>;

    /// Whether a legacy claim with this id was consumed.
    async fn legacy_consumed(&self, id: &str) -> Result<bool, StoreError>;

    /// Records what payments served, several at once (each hash once):
    /// a payment seen for the first time (across every replica) gets its
    /// row, a known one adds to its count. Answers, in order, whether each
    /// payment was new, so that revenue is counted per payment, not per
    /// served request.
    async fn record_payments(&self, payments: &[PaymentRecord]) -> Result<Vec<bool>, StoreError>;

    /// [`Store::record_payments`] for one payment.
    async fn record_payment(&self, payment: &PaymentRecord) -> Result<bool, StoreError> {
        let new = self.record_payments(std::slice::from_ref(payment)).await?;
        Ok(new.first().copied().unwrap_or(false))
    }

    /// Counts one more free call for `client` on `service`; returns the
    /// count including this one.
    async fn count_freebie(&self, client: &str, service: &str) -> Result<u64, StoreError>;

    /// Gives back a free call of `client` on `service` (which gives `free`
    /// per client) counted by [`Store::count_freebie`] that did not
    /// succeed (pay for success, as for paid calls). One that never
    /// reached the upstream is given back uncounted; one the upstream had
    /// and failed on (`reached`) is counted, and given back only while
    /// fewer than `free` were: an upstream that may have acted on a failed
    /// call must not be made to act any number of times for free. The
    /// calls refused as over `free` while it was in flight count for
    /// nothing then. Returns whether it was given back.
    async fn return_freebie(
        &self,
        client: &str,
        service: &str,
        free: u64,
        reached: bool,
    ) -> Result<bool, StoreError>;

    /// Keeps a paid response for retries with its `Idempotency-Key`,
    /// written before its claim is spent. One kept under a claim that is
    /// not spent (its replica stopped between the two writes, and the claim
    /// was given back) is replaced; one under a spent claim stays.
    async fn put_response(&self, response: &StoredResponse) -> Result<(), StoreError>;

    /// The response kept under `claim_key` and `idempotency_key`, unless
    /// it expired before `now` (unix seconds) or its claim is not spent by
    /// the holder that kept it: a response whose payment was given back is
    /// not that payment's answer (the serve that spent it answered another
    /// way), and replaying it would serve the payment twice.
    async fn stored_response(
        &self,
        claim_key: &str,
        idempotency_key: &str,
        now: u64,
    ) -> Result<Option<StoredResponse>, StoreError>;

    /// Opens a session with its deposit, once: the deposit's payment hash
    /// credits exactly one session, once, across every replica.
    /// A return invoice names one session: an open naming one that
    /// another session names writes nothing
    /// ([`Opened::ReturnInvoiceTaken`]), decided atomically with the
    /// write, so that two opens naming one new invoice at once cannot
    /// both take it.
    async fn open_session(&self, session: &NewSession) -> Result<Opened, StoreError>;

    /// A session, open or closed.
    async fn session(&self, id: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError>;

    /// The open sessions: how many, their balances summed, and the `limit`
    /// most recently used.
    async fn open_sessions(&self, limit: u64) -> Result<OpenSessions, StoreError>;

    /// The refunds still owed (closed sessions with at least 1 sat to
    /// refund to a return invoice, `pending` or `failed`): how many, their
    /// sum, and the `limit` closed longest ago.
    async fn refunds_owed(&self, limit: u64) -> Result<RefundsOwed, StoreError>;

    /// Spends `units` from an open session of `service` (another
    /// service's session is [`Debit::NotFound`]) at the unit price it was
    /// opened at (`unit_msat` for a session opened before unit prices
    /// were recorded), atomically: never below zero, whatever other
    /// replicas spend at once. Answers the unit price charged. The debit
    /// is held by `holder` until [`Store::settle_debit`] (served) or
    /// [`Store::undo_debit`] (the upstream failed: pay for success).
    async fn debit(
        &self,
        id: &[u8; 32],
        service: &str,
        units: u64,
        unit_msat: u64,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<Debit, StoreError>;

    /// Keeps a held debit: its request was served (at `now`, unix
    /// seconds, from when the session is idle again). With `kept_msat`,
    /// keeps that much of it (at most all) and gives the rest back to the
    /// session (a request that held the most it may use, and used less),
    /// unless the session was closed meanwhile.
    async fn settle_debit(
        &self,
        holder: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Gives a held debit back to its session, unless the session was
    /// closed meanwhile (its refund is computed already). Ok(false): no such
    /// held debit.
    async fn undo_debit(&self, holder: &ClaimHolder) -> Result<bool, StoreError>;

    /// Gives a held debit back after its upstream had the request and
    /// failed, unless the session has had as much given back for failures
    /// as `spend_at - 1` times what it spent: then the debit is kept, so a
    /// balance buys at most `spend_at` runs per request it pays for of a
    /// request that makes the upstream fail. `Released`: given back;
    /// `Spent`: kept (or the session was closed meanwhile); `NotHeld`: no
    /// such held debit. The session is idle from `now` (unix seconds).
    /// Kept, it keeps `kept_msat` of the debit when given (at most all: a
    /// request that held the most it may use, and whose failed answer
    /// reported what it used) and gives the rest back, as
    /// [`Store::settle_debit`] does.
    async fn fail_debit(
        &self,
        holder: &ClaimHolder,
        spend_at: u32,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<AfterFailure, StoreError>;

    /// Gives back every debit `replica` held (its process was killed
    /// mid-request: pay for success). Returns how many.
    async fn undo_debits_of(&self, replica: &str) -> Result<u64, StoreError>;

    /// Whether session `id` has a debit held (a request of it in flight).
    async fn has_held_debits(&self, id: &[u8; 32]) -> Result<bool, StoreError>;

    /// The replicas that hold debits now (requests in flight), by name.
    async fn debit_holders(&self) -> Result<Vec<String>, StoreError>;

    /// Whether a process runs as `replica`: holds its name, as
    /// [`Store::hold_replica`] takes it.
    async fn replica_running(&self, replica: &str) -> Result<bool, StoreError>;

    /// Gives back every debit `replica` held if no process runs as it
    /// (a replica killed and never started again), its name held for the
    /// while so that none can start as it meanwhile. `None` when one runs.
    async fn undo_debits_of_stopped(&self, replica: &str) -> Result<Option<u64>, StoreError>;

    /// Adds the deposit paid with `payment_hash` (msat) to an open session,
    /// once: the payment credits exactly one session, once.
    async fn top_up(
        &self,
        id: &[u8; 32],
        payment_hash: &[u8; 32],
        amount_msat: u64,
        now: u64,
    ) -> Result<TopUp, StoreError>;

    /// Closes a session; only the call that closes it learns the refund,
    /// so a balance is refunded once whoever else closes it at once. A
    /// session closed before whose refund to its return invoice `failed`
    /// is taken again the same way (its status back to `pending`, by one
    /// caller alone): closing it again tries the refund again. (One with
    /// no return invoice has nowhere to be refunded to.)
    ///
    /// With `unless_in_flight`, an open session with a debit held (a
    /// request of it in flight) is left open ([`Closing::InFlight`]),
    /// decided atomically with the close: a request that debits the
    /// session at the same moment either finds it closed or is waited
    /// for, so that what it gives back (a failed request's debit, the
    /// unused part of a usage hold) reaches the refund.
    async fn close_session(
        &self,
        id: &[u8; 32],
        now: u64,
        unless_in_flight: bool,
    ) -> Result<Closing, StoreError>;

    /// Records how a closed session's refund went.
    async fn record_refund(&self, id: &[u8; 32], status: &str) -> Result<(), StoreError>;

    /// Refunds still owed and last taken (closed, or taken here) before
    /// `taken_before` (unix seconds): `pending` ones whose payer may have
    /// died or whose payment was still in flight, and `failed` ones, of
    /// sessions with a return invoice and at least 1 sat to refund; at
    /// most `limit`, the longest waiting first. Each is taken for this
    /// caller alone (it is `pending` again, taken at `now`): another
    /// replica asking at the same time gets the others.
    async fn take_owed_refunds(
        &self,
        taken_before: u64,
        now: u64,
        limit: u64,
    ) -> Result<Vec<OwedRefund>, StoreError>;

    /// Closes open sessions idle past their timeout at `now`, at most
    /// `limit`, and answers each one's refund (each is closed by one
    /// caller alone, as by [`Store::close_session`]). A session with a
    /// debit held (a request, or an event stream, still in flight) is not
    /// idle, however long ago that request began: closed then, the part
    /// of the hold its request gives back would be lost to the refund.
    /// Decided in the close's own write, so that a request debiting at
    /// that moment either keeps the session open or finds it closed.
    async fn close_idle_sessions(
        &self,
        now: u64,
        limit: u64,
    ) -> Result<Vec<ClosedIdle>, StoreError>;

    /// Drops consumed claims and kept responses past their expiry (the
    /// payment can no longer be presented). Returns how many.
    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError>;

    /// Drops invoices recorded before `created_before` (unix seconds) and
    /// receipts (rows earlier versions wrote per request) served before
    /// `served_before`: a table that only grows would let unpaid
    /// `create_payment` calls fill the disk. Returns how many rows went.
    async fn purge_records(
        &self,
        created_before: u64,
        served_before: u64,
    ) -> Result<u64, StoreError>;

    /// Records the change of one service (its `version` is ignored) and
    /// returns the version it was given, larger than any before.
    async fn put_service_change(&self, change: &ServiceChange) -> Result<u64, StoreError>;

    /// The latest change of every service ever changed, oldest first.
    async fn service_changes(&self) -> Result<Vec<ServiceChange>, StoreError>;

    /// Records `replica`'s [`SecretCheck`], over the one it recorded
    /// before.
    async fn put_secret_check(&self, replica: &str, check: &SecretCheck) -> Result<(), StoreError>;

    /// Every replica's latest [`SecretCheck`], by replica name (running
    /// or not: ask [`Store::replica_running`]).
    async fn secret_checks(&self) -> Result<Vec<(String, SecretCheck)>, StoreError>;

    /// Revokes a payment; `false` when it already was.
    async fn revoke(&self, payment_hash: &[u8; 32], at: u64, by: &str) -> Result<bool, StoreError>;

    /// Revocations with a `seq` above `after`, in order.
    async fn revocations(&self, after: u64) -> Result<Vec<Revocation>, StoreError>;

    /// The latest versions of the service changes and revocations.
    async fn admin_versions(&self) -> Result<AdminVersions, StoreError>;

    /// Adds 402 counts to their service's hour.
    async fn add_challenge_counts(&self, counts: &[ChallengeCount]) -> Result<(), StoreError>;

    /// The 402 counts of the hours starting in `[since, until)`.
    async fn challenge_counts(
        &self,
        since: u64,
        until: u64,
    ) -> Result<Vec<ChallengeCount>, StoreError>;

    /// The payments `query` selects, newest first.
    async fn payments(&self, query: &PaymentQuery) -> Result<Vec<PaymentRow>, StoreError>;

    /// Payments first served in `[since, until)`, and refunds of sessions
    /// closed then, summed per service in buckets `bucket_secs` wide
    /// (aligned to the unix epoch).
    async fn revenue(
        &self,
        since: u64,
        until: u64,
        bucket_secs: u64,
    ) -> Result<Vec<RevenueBucket>, StoreError>;

    /// Appends to the admin log.
    async fn log_admin(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// The latest `limit` admin log entries, newest first.
    async fn admin_log(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Header fields as one column: `name:value` lines. Neither part can hold
/// a line feed, nor a name a colon (RFC 9110 field syntax).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// The fields of [`encode_headers`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn decode_headers(column: &[u8]) -> Vec<(String, Vec<u8>)> {
    column
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            Some((name.to_owned(), line[colon + 1..].to_vec()))
        })
        .collect()
}

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
mod tests {
    #[test]
    fn header_fields_survive_their_column() {
        let headers = vec![
            ("content-type".to_owned(), b"application/json".to_vec()),
            ("x-odd".to_owned(), b"a:b, \xff".to_vec()),
            ("x-empty".to_owned(), Vec::new()),
        ];
        assert_eq!(
            super::decode_headers(&super::encode_headers(&headers)),
            headers
        );
    }
}
