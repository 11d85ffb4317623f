//! [`Store`] on SQLite.

use std::path::Path;
use std::sync::mpsc;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::{
    decode_headers, encode_headers, AfterFailure, ClaimHolder, ClosedIdle, ClosedSession, Closing,
    Debit, InvoiceRecord, NewSession, OpenSessions, Opened, OwedRefund, PaymentRecord, RefundsOwed,
    Reservation, SessionRecord, Store, StoreError, StoredResponse, TopUp, REFUND_OWED,
};
use crate::{
    AdminVersions, AuditEntry, ChallengeCount, PaymentQuery, PaymentRow, RevenueBucket, Revocation,
    SecretCheck, ServiceChange, ServiceState,
};

/// Schema versions, in order; `PRAGMA user_version` says how many ran.
/// Append only: a database keeps whatever a released version made of it.
/// So `tokens` stays although nothing reads it any more (L402 root keys
/// are derived from a secret now).
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tokens (
        token_id BLOB PRIMARY KEY,
        root_key BLOB NOT NULL,
        payment_hash BLOB NOT NULL,
        service TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE invoices (
        payment_hash BLOB PRIMARY KEY,
        bolt11 TEXT NOT NULL,
        amount_msat INTEGER NOT NULL,
        service TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE TABLE challenges (
        id TEXT PRIMARY KEY,
        consumed INTEGER NOT NULL DEFAULT 0,
        lease_until INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        consumed_at INTEGER
     );
     CREATE TABLE receipts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        payment_hash BLOB NOT NULL,
        scheme TEXT NOT NULL,
        challenge_id TEXT,
        service TEXT NOT NULL,
        amount_msat INTEGER NOT NULL,
        served_at INTEGER NOT NULL
     );
     CREATE TABLE freebies (
        client TEXT NOT NULL,
        service TEXT NOT NULL,
        used INTEGER NOT NULL,
        PRIMARY KEY (client, service)
     );",
    "ALTER TABLE challenges ADD COLUMN holder TEXT;
     CREATE INDEX challenges_holder ON challenges (holder) WHERE consumed = 0;",
    // Claims fenced by a token of their holder (`holder` is its replica).
    // Rows from before were keyed by MPP challenge id: `legacy` defaults to
    // 1 so that they, and any row a process of the previous version still
    // writes, are legacy; claims from now on set it to 0.
    "ALTER TABLE challenges ADD COLUMN holder_token TEXT;
     ALTER TABLE challenges ADD COLUMN legacy INTEGER NOT NULL DEFAULT 1;
     CREATE INDEX challenges_legacy ON challenges (expires_at) WHERE legacy = 1 AND consumed = 1;
     CREATE TABLE payments (
        payment_hash BLOB PRIMARY KEY,
        service TEXT NOT NULL,
        scheme TEXT NOT NULL,
        amount_msat INTEGER NOT NULL,
        first_served_at INTEGER NOT NULL
     );",
    // Old invoices and receipts are purged by age.
    "CREATE INDEX invoices_created_at ON invoices (created_at);
     CREATE INDEX receipts_served_at ON receipts (served_at);",
    // A payment's row counts what it served (receipts are no longer
    // written one per request).
    "ALTER TABLE payments ADD COLUMN served INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE payments ADD COLUMN last_served_at INTEGER;",
    // Claims are looked up by holder only when a replica starts: a scan
    // then costs less than keeping the index on every claim and commit.
    "DROP INDEX challenges_holder;",
    // Paid responses kept for retries with the same Idempotency-Key.
    "CREATE TABLE responses (
        claim_key TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        status INTEGER NOT NULL,
        headers BLOB NOT NULL,
        body BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (claim_key, idempotency_key)
     );
     CREATE INDEX responses_expires_at ON responses (expires_at);",
    // Prepaid balances: each deposit's payment hash credits one session
    // once (`session_credits`); debits of requests in flight are held
    // until served (`session_debits`).
    "CREATE TABLE sessions (
        id BLOB PRIMARY KEY,
        service TEXT NOT NULL,
        deposit_msat INTEGER NOT NULL,
        spent_msat INTEGER NOT NULL DEFAULT 0,
        return_invoice TEXT,
        idle_secs INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        closed_at INTEGER,
        refund_msat INTEGER,
        refund_status TEXT
     );
     CREATE INDEX sessions_open ON sessions (last_used_at) WHERE closed_at IS NULL;
     CREATE TABLE session_credits (
        payment_hash BLOB PRIMARY KEY,
        session BLOB NOT NULL,
        amount_msat INTEGER NOT NULL,
        at INTEGER NOT NULL
     );
     CREATE TABLE session_debits (
        token TEXT PRIMARY KEY,
        replica TEXT NOT NULL,
        session BLOB NOT NULL,
        amount_msat INTEGER NOT NULL
     );",
    // The admin API: services changed at runtime (the latest change of
    // each), revoked payments, 402s per service and hour, and its log.
    "CREATE TABLE admin_services (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        body TEXT,
        created INTEGER NOT NULL,
        version INTEGER NOT NULL,
        at INTEGER NOT NULL,
        by_name TEXT NOT NULL
     );
     CREATE TABLE revocations (
        payment_hash BLOB PRIMARY KEY,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        by_name TEXT NOT NULL
     );
     CREATE TABLE challenge_counts (
        service TEXT NOT NULL,
        hour INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (service, hour)
     );
     CREATE TABLE admin_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
     );
     CREATE INDEX payments_first_served_at ON payments (first_served_at);",
    // A claim given back keeps its row: it counts the upstream's failures
    // on its payment.
    "ALTER TABLE challenges ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX challenges_released ON challenges (expires_at) WHERE consumed = 0 AND holder IS NULL;
     ALTER TABLE sessions ADD COLUMN failed_msat INTEGER NOT NULL DEFAULT 0;",
    // When a refund was last taken to be paid: one still owed (its payer
    // died, it failed, it was in flight) is taken again later.
    "ALTER TABLE sessions ADD COLUMN refund_taken_at INTEGER;
     CREATE INDEX sessions_refund_owed ON sessions (coalesce(refund_taken_at, closed_at))
         WHERE refund_status IN ('pending', 'failed');",
    // The unit price a session was opened at: spent at it whatever the
    // service's price later.
    "ALTER TABLE sessions ADD COLUMN unit_msat INTEGER;",
    // Sessions are looked up by return invoice when one is opened.
    "CREATE INDEX sessions_return_invoice ON sessions (return_invoice);",
    // Free calls given back after the upstream failed on them.
    "ALTER TABLE freebies ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;",
    // The revenue report sums the refunds paid in its window.
    "CREATE INDEX sessions_refunded ON sessions (closed_at) WHERE refund_status = 'succeeded';",
    // What each replica derives from its MPP secrets: replicas that would
    // refuse each other's credentials are told apart at start.
    "CREATE TABLE replica_secrets (
        replica TEXT PRIMARY KEY,
        current BLOB NOT NULL,
        accepted BLOB NOT NULL
     );",
    // The claim holder that kept a response: it is replayed only if that
    // holder's spend was written (rows from before have none).
    "ALTER TABLE responses ADD COLUMN holder_token TEXT;",
];

/// Removes a held debit: its session and amount, if `holder` held one.
fn take_debit(c: &Connection, holder: &ClaimHolder) -> rusqlite::Result<Option<(Vec<u8>, i64)>> {
    c.prepare_cached(
        "DELETE FROM session_debits WHERE token = ?1 AND replica = ?2 RETURNING session, amount_msat",
    )?
    .query_row(params![holder.token, holder.replica], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

/// Keeps the debit `holder` held, `kept_msat` of it when given (the rest
/// back to its session, if still open); the session is idle from `now`.
fn keep_debit(
    c: &Connection,
    holder: &ClaimHolder,
    kept_msat: Option<u64>,
    now: u64,
) -> rusqlite::Result<()> {
    if let Some((session, held)) = take_debit(c, holder)? {
        let back = kept_msat.map_or(0, |kept| (held as u64).saturating_sub(kept));
        c.prepare_cached(
            "UPDATE sessions SET spent_msat = spent_msat - ?2, last_used_at = MAX(last_used_at, ?3)
             WHERE id = ?1 AND closed_at IS NULL",
        )?
        .execute(params![session, back as i64, now as i64])?;
    }
    Ok(())
}

/// Marks a claim spent ([`commit_with`]).
const COMMIT_CLAIM: &str =
    "UPDATE challenges SET consumed = 1, consumed_at = coalesce(consumed_at, ?4)
     WHERE id = ?1 AND holder = ?2 AND holder_token = ?3";

/// Marks the claim on `key` spent at `now` if `holder` holds it: whether
/// it did.
fn commit_one(c: &Connection, key: &str, holder: &ClaimHolder, now: u64) -> rusqlite::Result<bool> {
    commit_with(&mut *c.prepare_cached(COMMIT_CLAIM)?, key, holder, now)
}

/// [`commit_one`] with [`COMMIT_CLAIM`] prepared once for a batch.
fn commit_with(
    commit: &mut rusqlite::Statement<'_>,
    key: &str,
    holder: &ClaimHolder,
    now: u64,
) -> rusqlite::Result<bool> {
    commit
        .execute(params![key, holder.replica, holder.token, now as i64])
        .map(|n| n == 1)
}

/// Whether session `id` is open with a debit held (a request in flight).
fn open_with_debits(c: &Connection, id: &[u8; 32]) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = ?1 AND closed_at IS NULL)
            AND EXISTS (SELECT 1 FROM session_debits WHERE session = ?1)",
    )?
    .query_row([&id[..]], |r| r.get(0))
}

/// The sessions `clause` (a `WHERE` condition and its `ORDER BY`) picks,
/// at most `limit`.
fn sessions_where(
    c: &Connection,
    clause: &str,
    limit: u64,
) -> rusqlite::Result<Vec<SessionRecord>> {
    let ids: Vec<Vec<u8>> = c
        .prepare_cached(&format!("SELECT id FROM sessions WHERE {clause} LIMIT ?1"))?
        .query_map([limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut sessions = Vec::with_capacity(ids.len());
    for id in ids {
        if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
            sessions.extend(read_session(c, &id)?);
        }
    }
    Ok(sessions)
}

/// A session row, if there is one.
fn read_session(c: &Connection, id: &[u8; 32]) -> rusqlite::Result<Option<SessionRecord>> {
    c.prepare_cached(
        "SELECT service, deposit_msat, spent_msat, return_invoice, idle_secs, last_used_at, closed_at, refund_msat, refund_status, unit_msat FROM sessions WHERE id = ?1",
    )?
    .query_row([&id[..]], |r| {
        let closed_at: Option<i64> = r.get(6)?;
        Ok(SessionRecord {
            id: *id,
            service: r.get(0)?,
            deposit_msat: r.get::<_, i64>(1)? as u64,
            spent_msat: r.get::<_, i64>(2)? as u64,
            return_invoice: r.get(3)?,
            idle_secs: r.get::<_, i64>(4)? as u64,
            last_used_at: r.get::<_, i64>(5)? as u64,
            unit_msat: r.get::<_, Option<i64>>(9)?.map(|u| u as u64),
            closed: match closed_at {
                None => None,
                Some(at) => Some(ClosedSession {
                    at: at as u64,
                    refund_msat: r.get::<_, Option<i64>>(7)?.unwrap_or(0) as u64,
                    refund_status: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                }),
            },
        })
    })
    .optional()
}

/// SQLite, one file; safe for several processes on one machine.
#[derive(Clone)]
pub struct SqliteStore {
    /// Calls for the store's one thread, which owns the connection.
    jobs: mpsc::Sender<Box<dyn Job>>,
    /// The checkpointer's thread, joined by [`Store::close`].
    checkpointer: std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The database file's path, beside which a replica's name is locked.
    path: std::path::PathBuf,
    /// The lock on this process's replica name ([`Store::hold_replica`]).
    replica: std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>,
}

impl SqliteStore {
    /// Takes the lock on the name `replica`, a file beside the database,
    /// if no process holds it; `None` when one does. Held as long as the
    /// file is.
    fn try_replica_name(&self, replica: &str) -> Result<Option<std::fs::File>, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        // Replica names are hex; anything else is left out of the name.
        let name: String = replica
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let mut lock = self.path.clone().into_os_string();
        lock.push(format!(".replica-{name}.lock"));
        let failed =
            |e: std::io::Error| StoreError::Database(format!("{}: {e}", lock.to_string_lossy()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&lock)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
        }
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |what: &Path, e: std::io::Error| {
            StoreError::Database(format!("{}: {e}", what.display()))
        };
        // Receipts and payments are nobody else's business: a directory
        // made here is the owner's only, and the file is 0600 from its
        // first byte (SQLite gives its -wal and -shm files the same mode).
        {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io(dir, e))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .and_then(|file| file.set_permissions(std::fs::Permissions::from_mode(0o600)))
                .map_err(|e| io(path, e))?;
        }
        let mut conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        // Small on purpose: a B-tree split that renumbers pages parks one
        // at the lock page's number (262,145 with 4 KiB pages), and at the
        // end of that transaction SQLite scans every slot of its page cache
        // to drop it. Claims on random keys split pages in most batches, so
        // the scan runs nearly every commit and costs as much as the cache
        // is big. Pages it drops are read back from the system's cache.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(db)?;
        // Pooled page caches let any busier connection in the process take
        // this cache for good (tests/page_cache.rs); the workspace builds
        // SQLite without them (.cargo/config.toml), a build elsewhere may not.
        let pooled: bool = conn
            .query_row(
                "SELECT sqlite_compileoption_used('ENABLE_MEMORY_MANAGEMENT')",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        if pooled {
            tracing::warn!(
                "SQLite was built with SQLITE_ENABLE_MEMORY_MANAGEMENT: the store's page cache \
                 is shared with every other SQLite connection in the process and may be lost \
                 to them; build with LIBSQLITE3_FLAGS=-USQLITE_ENABLE_MEMORY_MANAGEMENT"
            );
        }
        // The log is copied into the database by a thread of its own
        // (`checkpointer`): done by the writer, every copy and its sync
        // would hold up the batch that filled the log, and every request
        // waiting on it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
            .map_err(db)?;
        // Each call runs in a savepoint, whose journal of the pages it
        // changed would otherwise spill to a temporary file per batch.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        // Every statement a request runs stays prepared.
        conn.set_prepared_statement_cache_capacity(64);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(db)?;
        let applied: usize = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", version + 1)
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        let copier = Connection::open(path).map_err(db)?;
        copier.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        let (writing, written) = mpsc::channel::<()>();
        let log = LogFrames::default();
        let thread = |name: &str| std::thread::Builder::new().name(name.into());
        let started =
            |e: std::io::Error| StoreError::Database(format!("starting the store's thread: {e}"));
        let copied = log.clone();
        let checkpointing = thread("gate402-sqlite-checkpoint")
            .spawn(move || checkpointer(copier, written, CHECKPOINT_EVERY, copied))
            .map_err(started)?;
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        thread("gate402-sqlite")
            .spawn(move || {
                writer(conn, queue, log);
                drop(writing);
            })
            .map_err(started)?;
        Ok(Self {
            jobs,
            checkpointer: std::sync::Arc::new(std::sync::Mutex::new(Some(checkpointing))),
            path: path.to_owned(),
            replica: Default::default(),
        })
    }

    /// Runs `f` on the store's thread, in the next batch, and waits for
    /// the batch to commit. `f` runs in a savepoint of its own, so that if
    /// it fails after some of its writes, they are undone and the rest of
    /// the batch is kept.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call(f, true).await
    }

    /// [`Self::with`] for an `f` that writes with one statement at most:
    /// SQLite makes a statement all or nothing by itself, so `f` needs no
    /// savepoint, which would copy every page it changes (the hot calls,
    /// a claim per single-use request, are of this kind).
    async fn with_one<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call(f, false).await
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        savepoint: bool,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(Call {
                f,
                reply,
                savepoint,
            }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Database("the store's thread has stopped".into())
}

/// How long a connection waits for another process's lock on the file
/// (or a checkpoint's) before answering busy.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The writer's page cache (KiB): large enough for the interior pages
/// of every index and the pages of the largest batch (256 served
/// payments), small enough that the scan described where it is set
/// stays short.
const CACHE_KIB: i64 = 8 * 1024;

/// How many calls at most share one transaction.
const MAX_BATCH: usize = 256;

/// How long the writer lets calls gather before a batch when it is busy
/// (the call came within [`BUSY_GAP`] of the last batch's commit). A batch
/// costs its locks and its commit whatever it holds, and a busy gateway
/// would otherwise commit two or three calls at a time.
const GATHER: std::time::Duration = std::time::Duration::from_micros(50);

/// A call this soon after the last commit finds the writer busy; one
/// later is answered without waiting for others.
const BUSY_GAP: std::time::Duration = std::time::Duration::from_millis(1);

/// How often the log is copied into the database while the writer runs.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Log frames (a page each, 4 KiB by default) past which the writer starts
/// the log over between two batches: under writes that never pause,
/// copying alone never lets it start over, and it would grow without end.
const RESTART_AT_FRAMES: i64 = 16_384;

/// What a log file is cut back to when it starts over (bytes).
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// The log's length in frames, as the checkpointer last saw it.
type LogFrames = std::sync::Arc<std::sync::atomic::AtomicI64>;

/// The checkpointer: copies the write-ahead log into the database file
/// `every` so often ([`CHECKPOINT_EVERY`]) on a connection of its own,
/// without holding up the writer (SQLite's passive checkpoint), and tells
/// the writer how long the log is (`log`). Ends when `writer` hangs up,
/// after a last checkpoint that empties the log. What it copies was
/// committed already: a crash at any point loses nothing the writer
/// answered (the log is replayed at the next open).
fn checkpointer(
    conn: Connection,
    writer: mpsc::Receiver<()>,
    every: std::time::Duration,
    log: LogFrames,
) {
    loop {
        let last = matches!(
            writer.recv_timeout(every),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        let mode = if last { "TRUNCATE" } else { "PASSIVE" };
        match checkpoint(&conn, mode).map_err(db) {
            Ok(frames) => log.store(frames, std::sync::atomic::Ordering::Relaxed),
            // Another process's checkpoint: the next round copies what
            // this one left.
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::debug!(error = %e, "sqlite checkpoint deferred")
            }
            Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed; retrying"),
        }
        if last {
            return;
        }
    }
}

/// Starts the log over if the checkpointer found it `restart_at` frames
/// long or longer. Run by the writer between batches, holding nothing: a
/// checkpointer would wait for the writer's lock for ever under writes
/// that never pause. It copies only what the checkpointer has not yet, so
/// it holds up the next batch briefly.
fn start_over_if_long(conn: &Connection, log: &LogFrames, restart_at: i64) {
    use std::sync::atomic::Ordering;
    if log.load(Ordering::Relaxed) < restart_at {
        return;
    }
    match checkpoint(conn, "RESTART") {
        Ok(frames) => log.store(frames, Ordering::Relaxed),
        Err(e) => tracing::warn!(error = %db(e), "sqlite log restart deferred"),
    }
}

/// Runs one checkpoint in `mode`; answers how many frames the log holds.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        r.get::<_, i64>(1)
    })
}

/// One call waiting for the store's thread.
trait Job: Send {
    /// Whether it must run in a savepoint of its own (it may write with
    /// more than one statement).
    fn savepoint(&self) -> bool;
    /// Runs it inside the batch's transaction.
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Outcome>;
    /// Answers it without running it (the batch could not start).
    fn refuse(self: Box<Self>, error: StoreError);
    /// Whether the writer stops after its batch.
    fn closes(&self) -> bool {
        false
    }
}

/// The last call: the writer answers it once its batch has committed,
/// then stops.
struct Close(oneshot::Sender<Result<(), StoreError>>);

impl Job for Close {
    fn savepoint(&self) -> bool {
        false
    }

    fn run(self: Box<Self>, _: &Connection) -> Box<dyn Outcome> {
        Box::new(Done {
            result: Ok(()),
            reply: self.0,
        })
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let _ = self.0.send(Err(error));
    }

    fn closes(&self) -> bool {
        true
    }
}

/// What a call did, to be sent once its batch has committed.
trait Outcome: Send {
    /// Whether the call failed (its savepoint is then rolled back).
    fn failed(&self) -> bool;
    /// Answers the caller: the call's result, or the commit's failure.
    fn send(self: Box<Self>, committed: Result<(), StoreError>);
}

struct Call<F, T> {
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
    savepoint: bool,
}

struct Done<T> {
    result: rusqlite::Result<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for Call<F, T>
where
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    T: Send + 'static,
{
    fn savepoint(&self) -> bool {
        self.savepoint
    }

    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Outcome> {
        Box::new(Done {
            result: (self.f)(conn),
            reply: self.reply,
        })
    }

    fn refuse(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

impl<T: Send + 'static> Outcome for Done<T> {
    fn failed(&self) -> bool {
        self.result.is_err()
    }

    fn send(self: Box<Self>, committed: Result<(), StoreError>) {
        let Done { result, reply } = *self;
        let _ = reply.send(committed.and_then(|()| result.map_err(db)));
    }
}

/// The store's thread: takes every call waiting, runs them in one
/// transaction, commits once, then answers them all. A call that may write
/// more than once runs in a savepoint; any other is one statement, all or
/// nothing by itself: either way one failing call leaves the others whole.
/// Under load many requests share one commit (when busy, the writer lets
/// calls gather for [`GATHER`] first); a lone request waits for nothing.
/// Calls are answered only after their commit, so nothing is
/// acknowledged that a crash could lose. The thread ends when the last
/// handle on the store is dropped, or after the batch that holds a
/// [`Close`].
fn writer(mut conn: Connection, queue: mpsc::Receiver<Box<dyn Job>>, log: LogFrames) {
    let mut last_batch: Option<std::time::Instant> = None;
    while let Ok(first) = queue.recv() {
        start_over_if_long(&conn, &log, RESTART_AT_FRAMES);
        if last_batch.is_some_and(|at| at.elapsed() < BUSY_GAP) {
            std::thread::sleep(GATHER);
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // IMMEDIATE takes the write lock first: another process on the
        // file waits, so what a call reads is still so when it writes.
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let error = db(e);
                for job in batch {
                    job.refuse(error.clone_error());
                }
                continue;
            }
        };
        let closing = batch.iter().any(|job| job.closes());
        let mut outcomes = Vec::with_capacity(batch.len());
        let run = |sql: &str| {
            tx.prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map(drop)
        };
        for job in batch {
            if !job.savepoint() {
                outcomes.push(job.run(&tx));
                continue;
            }
            let outcome = match run("SAVEPOINT call") {
                Ok(()) => {
                    let outcome = job.run(&tx);
                    if outcome.failed() {
                        let _ = run("ROLLBACK TO call");
                    }
                    let _ = run("RELEASE call");
                    outcome
                }
                Err(e) => {
                    job.refuse(db(e));
                    continue;
                }
            };
            outcomes.push(outcome);
        }
        let committed = tx.commit().map_err(db);
        last_batch = Some(std::time::Instant::now());
        for outcome in outcomes {
            outcome.send(
                committed
                    .as_ref()
                    .map(|_| ())
                    .map_err(StoreError::clone_error),
            );
        }
        if closing {
            return;
        }
    }
}

/// `StoreError` is not `Clone`; one failure is answered to every call of
/// its batch.
trait CloneError {
    fn clone_error(&self) -> Self;
}

impl CloneError for StoreError {
    fn clone_error(&self) -> Self {
        match self {
            StoreError::Database(m) => StoreError::Database(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Box::new(Close(reply))).is_ok() {
            let _ = answer.await;
        }
        let checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(checkpointer) = checkpointer {
            // Its last checkpoint empties the log; closing the last
            // connection then removes the log's files.
            let _ = tokio::task::spawn_blocking(move || checkpointer.join()).await;
        }
    }

    /// Processes sharing the file (`[store] path` outside a data dir)
    /// lock a file beside it named after the replica; the system lets the
    /// lock go when the process ends.
    async fn hold_replica(&self, replica: &str) -> Result<bool, StoreError> {
        let mut held = self.replica.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return Ok(true);
        }
        let taken = self.try_replica_name(replica)?;
        let running = taken.is_some();
        *held = taken;
        Ok(running)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Reading the header takes a read lock on the file: a database
        // locked up or gone answers an error, not a cached value.
        self.with(|c| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)))
            .await
            .map(drop)
    }

    async fn put_invoice(&self, invoice: &InvoiceRecord) -> Result<(), StoreError> {
        let i = invoice.clone();
        self.with_one(move |c| {
            c.prepare_cached(
                "INSERT OR IGNORE INTO invoices (payment_hash, bolt11, amount_msat, service, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(
                params![&i.payment_hash[..], i.bolt11, i.amount_msat as i64, i.service, i.created_at as i64, i.expires_at as i64],
            )
            .map(drop)
        })
        .await
    }

    async fn invoice(&self, payment_hash: &[u8; 32]) -> Result<Option<InvoiceRecord>, StoreError> {
        let hash = *payment_hash;
        self.with_one(move |c| {
            c.prepare_cached(
                "SELECT bolt11, amount_msat, service, created_at, expires_at FROM invoices WHERE payment_hash = ?1",
            )?
            .query_row(
                [&hash[..]],
                |r| {
                    Ok(InvoiceRecord {
                        payment_hash: hash,
                        bolt11: r.get(0)?,
                        amount_msat: r.get::<_, i64>(1)? as u64,
                        service: r.get(2)?,
                        created_at: r.get::<_, i64>(3)? as u64,
                        expires_at: r.get::<_, i64>(4)? as u64,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        expires_at: u64,
        lease_until: u64,
        now: u64,
    ) -> Result<Reservation, StoreError> {
        let (key, holder) = (key.to_owned(), holder.clone());
        self.with_one(move |tx| {
            // The batch's transaction holds the write lock: the row read is
            // still the row when written.
            let row: Option<(bool, i64)> = tx
                .prepare_cached("SELECT consumed, lease_until FROM challenges WHERE id = ?1")?
                .query_row(
                    [&key],
                    |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?)),
                )
                .optional()?;
            let outcome = match row {
                Some((true, _)) => Reservation::Consumed,
                Some((false, lease)) if lease as u64 > now => Reservation::InFlight,
                Some((false, _)) => {
                    tx.prepare_cached(
                        "UPDATE challenges
                         SET lease_until = ?2, holder = ?3, holder_token = ?4, legacy = 0
                         WHERE id = ?1",
                    )?
                    .execute(params![key, lease_until as i64, holder.replica, holder.token])?;
                    Reservation::Acquired
                }
                None => {
                    tx.prepare_cached(
                        "INSERT INTO challenges (id, lease_until, expires_at, holder, holder_token, legacy)
                         VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                    )?
                    .execute(params![key, lease_until as i64, expires_at as i64, holder.replica, holder.token])?;
                    Reservation::Acquired
                }
            };
            Ok(outcome)
        })
        .await
    }

    async fn renew_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        lease_until: u64,
    ) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.clone());
        self.with_one(move |c| {
            c.prepare_cached(
                "UPDATE challenges SET lease_until = ?4
                 WHERE id = ?1 AND holder = ?2 AND holder_token = ?3",
            )?
            .execute(params![
                key,
                holder.replica,
                holder.token,
                lease_until as i64
            ])
            .map(|n| n == 1)
        })
        .await
    }

    async fn commit_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.clone());
        self.with_one(move |c| commit_one(c, &key, &holder, now))
            .await
    }

    async fn commit_claims(
        &self,
        claims: &[(String, ClaimHolder)],
        now: u64,
    ) -> Result<Vec<bool>, StoreError> {
        let claims = claims.to_vec();
        self.with(move |c| {
            let mut commit = c.prepare_cached(COMMIT_CLAIM)?;
            claims
                .iter()
                .map(|(key, holder)| commit_with(&mut commit, key, holder, now))
                .collect()
        })
        .await
    }

    async fn commit_claim_with_debit(
        &self,
        key: &str,
        holder: &ClaimHolder,
        debit: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (key, holder, debit) = (key.to_owned(), holder.clone(), debit.clone());
        // One savepoint: both or neither.
        self.with(move |c| {
            keep_debit(c, &debit, kept_msat, now)?;
            commit_one(c, &key, &holder, now)
        })
        .await
    }

    async fn release_claim(&self, key: &str, holder: &ClaimHolder) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.clone());
        self.with_one(move |c| {
            let args = params![key, holder.replica, holder.token];
            let deleted = c
                .prepare_cached(
                    "DELETE FROM challenges
                     WHERE id = ?1 AND holder = ?2 AND holder_token = ?3 AND consumed = 0
                       AND failures = 0",
                )?
                .execute(args)?;
            if deleted == 1 {
                return Ok(true);
            }
            c.prepare_cached(
                "UPDATE challenges SET holder = NULL, holder_token = NULL, lease_until = 0
                 WHERE id = ?1 AND holder = ?2 AND holder_token = ?3 AND consumed = 0",
            )?
            .execute(args)
            .map(|n| n == 1)
        })
        .await
    }

    async fn fail_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        spend_at: u32,
        now: u64,
    ) -> Result<AfterFailure, StoreError> {
        let (key, holder) = (key.to_owned(), holder.clone());
        self.with_one(move |c| {
            c.prepare_cached(
                "UPDATE challenges
                 SET failures = failures + 1, holder = NULL, holder_token = NULL, lease_until = 0,
                     consumed = (failures + 1 >= ?4),
                     consumed_at = CASE WHEN failures + 1 >= ?4 THEN ?5 ELSE consumed_at END
                 WHERE id = ?1 AND holder = ?2 AND holder_token = ?3 AND consumed = 0
                 RETURNING consumed",
            )?
            .query_row(
                params![key, holder.replica, holder.token, spend_at, now as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|consumed| match consumed {
                None => AfterFailure::NotHeld,
                Some(0) => AfterFailure::Released,
                Some(_) => AfterFailure::Spent,
            })
        })
        .await
    }

    async fn release_claims_of(&self, replica: &str) -> Result<u64, StoreError> {
        let replica = replica.to_owned();
        // As `release_claim` does, claim by claim: a row that counts
        // failures is kept, given back.
        self.with(move |c| {
            let deleted = c
                .prepare_cached(
                    "DELETE FROM challenges WHERE holder = ?1 AND consumed = 0 AND failures = 0",
                )?
                .execute([&replica])?;
            let kept = c
                .prepare_cached(
                    "UPDATE challenges SET holder = NULL, holder_token = NULL, lease_until = 0
                     WHERE holder = ?1 AND consumed = 0",
                )?
                .execute([&replica])?;
            Ok((deleted + kept) as u64)
        })
        .await
    }

    async fn legacy_claims_until(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT coalesce(max(expires_at), 0) FROM challenges WHERE legacy = 1 AND consumed = 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|t| t as u64)
        })
        .await
    }

    async fn legacy_consumed(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with_one(move |c| {
            c.prepare_cached(
                "SELECT 1 FROM challenges WHERE id = ?1 AND legacy = 1 AND consumed = 1",
            )?
            .query_row([id], |_| Ok(()))
            .optional()
            .map(|row| row.is_some())
        })
        .await
    }

    async fn record_payments(&self, payments: &[PaymentRecord]) -> Result<Vec<bool>, StoreError> {
        let payments = payments.to_vec();
        self.with(move |c| {
            // A plain insert for a new payment, the usual case: an upsert
            // with RETURNING needs a statement journal, which costs more
            // than the row.
            let mut insert = c.prepare_cached(
                "INSERT INTO payments (payment_hash, service, scheme, amount_msat, first_served_at, last_served_at, served)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
                 ON CONFLICT (payment_hash) DO NOTHING",
            )?;
            let mut add = c.prepare_cached(
                "UPDATE payments
                 SET served = served + ?2, last_served_at = max(coalesce(last_served_at, 0), ?3),
                     amount_msat = CASE WHEN amount_msat = 0 THEN ?4 ELSE amount_msat END
                 WHERE payment_hash = ?1",
            )?;
            payments
                .iter()
                .map(|p| {
                    let hash = &p.payment_hash[..];
                    let (at, served) = (p.at as i64, p.served as i64);
                    let new = insert.execute(params![
                        hash,
                        p.service,
                        p.scheme,
                        p.amount_msat as i64,
                        at,
                        served
                    ])? == 1;
                    if !new {
                        add.execute(params![hash, served, at, p.amount_msat as i64])?;
                    }
                    Ok(new)
                })
                .collect()
        })
        .await
    }

    async fn count_freebie(&self, client: &str, service: &str) -> Result<u64, StoreError> {
        let (client, service) = (client.to_owned(), service.to_owned());
        self.with_one(move |c| {
            c.prepare_cached(
                "INSERT INTO freebies (client, service, used) VALUES (?1, ?2, 1)
                 ON CONFLICT (client, service) DO UPDATE SET used = used + 1
                 RETURNING used",
            )?
            .query_row(params![client, service], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
        })
        .await
    }

    async fn return_freebie(
        &self,
        client: &str,
        service: &str,
        free: u64,
        reached: bool,
    ) -> Result<bool, StoreError> {
        let (client, service) = (client.to_owned(), service.to_owned());
        let free = free.min(i64::MAX as u64) as i64;
        // `used` counts the calls refused over `free` too: taken down to
        // what the free calls left make it.
        self.with_one(move |c| {
            c.prepare_cached(
                "UPDATE freebies SET used = min(used, ?3) - 1, failed = failed + ?4
                 WHERE client = ?1 AND service = ?2 AND used > 0 AND ?3 > 0
                   AND (NOT ?4 OR failed < ?3)",
            )?
            .execute(params![client, service, free, reached])
            .map(|n| n == 1)
        })
        .await
    }

    async fn put_response(&self, response: &StoredResponse) -> Result<(), StoreError> {
        let r = response.clone();
        self.with_one(move |c| {
            c.prepare_cached(
                "INSERT INTO responses (claim_key, idempotency_key, fingerprint, status, headers, body, expires_at, holder_token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (claim_key, idempotency_key) DO UPDATE SET
                    fingerprint = excluded.fingerprint, status = excluded.status,
                    headers = excluded.headers, body = excluded.body, expires_at = excluded.expires_at,
                    holder_token = excluded.holder_token
                 WHERE NOT EXISTS
                    (SELECT 1 FROM challenges WHERE id = excluded.claim_key AND consumed = 1)",
            )?
            .execute(params![
                r.claim_key,
                r.idempotency_key,
                &r.fingerprint[..],
                i64::from(r.status),
                encode_headers(&r.headers),
                r.body,
                r.expires_at as i64,
                r.holder_token
            ])
            .map(drop)
        })
        .await
    }

    async fn stored_response(
        &self,
        claim_key: &str,
        idempotency_key: &str,
        now: u64,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let (claim_key, idempotency_key) = (claim_key.to_owned(), idempotency_key.to_owned());
        self.with_one(move |c| {
            c.prepare_cached(
                "SELECT fingerprint, status, headers, body, expires_at, holder_token FROM responses
                 WHERE claim_key = ?1 AND idempotency_key = ?2 AND expires_at >= ?3
                   AND EXISTS (SELECT 1 FROM challenges c WHERE c.id = ?1 AND c.consumed = 1
                       AND (responses.holder_token IS NULL OR c.holder_token = responses.holder_token))",
            )?
            .query_row(params![claim_key, idempotency_key, now as i64], |r| {
                let fingerprint: Vec<u8> = r.get(0)?;
                Ok(StoredResponse {
                    claim_key: claim_key.clone(),
                    idempotency_key: idempotency_key.clone(),
                    fingerprint: fingerprint.try_into().unwrap_or([0; 32]),
                    status: u16::try_from(r.get::<_, i64>(1)?).unwrap_or(500),
                    headers: decode_headers(&r.get::<_, Vec<u8>>(2)?),
                    body: r.get(3)?,
                    expires_at: r.get::<_, i64>(4)? as u64,
                    holder_token: r.get(5)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn open_session(&self, session: &NewSession) -> Result<Opened, StoreError> {
        let n = session.clone();
        self.with(move |c| {
            let credited: Option<Vec<u8>> = c
                .prepare_cached("SELECT session FROM session_credits WHERE payment_hash = ?1")?
                .query_row([&n.id[..]], |r| r.get(0))
                .optional()?;
            if credited.as_deref().is_some_and(|s| s != &n.id[..]) {
                return Ok(Opened::DepositSpent);
            }
            let known = read_session(c, &n.id)?;
            let names_an_invoice = n.return_invoice.is_some()
                && known.as_ref().is_none_or(|s| s.return_invoice.is_none());
            if names_an_invoice {
                let taken = c
                    .prepare_cached(
                        "SELECT 1 FROM sessions WHERE return_invoice = ?1 AND id <> ?2 LIMIT 1",
                    )?
                    .exists(params![n.return_invoice, &n.id[..]])?;
                if taken {
                    return Ok(Opened::ReturnInvoiceTaken);
                }
            }
            if let Some(known) = known {
                if names_an_invoice {
                    c.prepare_cached(
                        "UPDATE sessions SET return_invoice = ?2 WHERE id = ?1 AND return_invoice IS NULL",
                    )?
                    .execute(params![&n.id[..], n.return_invoice])?;
                }
                return Ok(Opened::Existing(known));
            }
            c.prepare_cached(
                "INSERT INTO sessions (id, service, deposit_msat, return_invoice, idle_secs, last_used_at, unit_msat) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                &n.id[..],
                n.service,
                n.deposit_msat as i64,
                n.return_invoice,
                n.idle_secs as i64,
                n.now as i64,
                n.unit_msat as i64
            ])?;
            c.prepare_cached(
                "INSERT INTO session_credits (payment_hash, session, amount_msat, at) VALUES (?1, ?1, ?2, ?3)",
            )?
            .execute(params![&n.id[..], n.deposit_msat as i64, n.now as i64])?;
            Ok(Opened::New)
        })
        .await
    }

    async fn session(&self, id: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        let id = *id;
        self.with(move |c| read_session(c, &id)).await
    }

    async fn open_sessions(&self, limit: u64) -> Result<OpenSessions, StoreError> {
        self.with(move |c| {
            let (count, balance_msat) = c.query_row(
                "SELECT count(*), coalesce(sum(deposit_msat - spent_msat), 0) FROM sessions WHERE closed_at IS NULL",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?;
            let sessions =
                sessions_where(c, "closed_at IS NULL ORDER BY last_used_at DESC", limit)?;
            Ok(OpenSessions {
                count,
                balance_msat,
                sessions,
            })
        })
        .await
    }

    async fn refunds_owed(&self, limit: u64) -> Result<RefundsOwed, StoreError> {
        self.with(move |c| {
            let (count, refund_msat) = c.query_row(
                &format!(
                    "SELECT count(*), coalesce(sum(refund_msat), 0) FROM sessions WHERE {REFUND_OWED}"
                ),
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )?;
            let sessions = sessions_where(c, &format!("{REFUND_OWED} ORDER BY closed_at"), limit)?;
            Ok(RefundsOwed {
                count,
                refund_msat,
                sessions,
            })
        })
        .await
    }

    async fn debit(
        &self,
        id: &[u8; 32],
        service: &str,
        units: u64,
        unit_msat: u64,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<Debit, StoreError> {
        let (id, holder, service) = (*id, holder.clone(), service.to_owned());
        self.with(move |c| {
            let done: Option<(i64, i64)> = c
                .prepare_cached(
                    "UPDATE sessions SET spent_msat = spent_msat + ?2 * coalesce(unit_msat, ?5), last_used_at = ?3
                     WHERE id = ?1 AND service = ?4 AND closed_at IS NULL
                       AND deposit_msat - spent_msat >= ?2 * coalesce(unit_msat, ?5)
                     RETURNING deposit_msat - spent_msat, coalesce(unit_msat, ?5)",
                )?
                .query_row(
                    params![&id[..], units as i64, now as i64, service, unit_msat as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((left, unit)) = done {
                c.prepare_cached(
                    "INSERT INTO session_debits (token, replica, session, amount_msat) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![holder.token, holder.replica, &id[..], units as i64 * unit])?;
                return Ok(Debit::Done {
                    balance_msat: left as u64,
                    unit_msat: unit as u64,
                });
            }
            Ok(match read_session(c, &id)? {
                None => Debit::NotFound,
                Some(s) if s.service != service => Debit::NotFound,
                Some(s) if s.closed.is_some() => Debit::Closed,
                Some(s) => Debit::Insufficient {
                    spent_msat: s.spent_msat,
                    balance_msat: s.balance_msat(),
                    held_msat: c
                        .prepare_cached(
                            "SELECT COALESCE(SUM(amount_msat), 0) FROM session_debits WHERE session = ?1",
                        )?
                        .query_row([&id[..]], |r| r.get::<_, i64>(0))?
                        .max(0) as u64,
                    unit_msat: s.unit_msat.unwrap_or(unit_msat),
                },
            })
        })
        .await
    }

    async fn settle_debit(
        &self,
        holder: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<(), StoreError> {
        let holder = holder.clone();
        self.with(move |c| keep_debit(c, &holder, kept_msat, now))
            .await
    }

    async fn undo_debit(&self, holder: &ClaimHolder) -> Result<bool, StoreError> {
        let holder = holder.clone();
        self.with(move |c| {
            let held = take_debit(c, &holder)?;
            let Some((session, amount)) = held else {
                return Ok(false);
            };
            c.prepare_cached(
                "UPDATE sessions SET spent_msat = spent_msat - ?2 WHERE id = ?1 AND closed_at IS NULL",
            )?
            .execute(params![session, amount])?;
            Ok(true)
        })
        .await
    }

    async fn fail_debit(
        &self,
        holder: &ClaimHolder,
        spend_at: u32,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<AfterFailure, StoreError> {
        let holder = holder.clone();
        self.with(move |c| {
            let held = take_debit(c, &holder)?;
            let Some((session, amount)) = held else {
                return Ok(AfterFailure::NotHeld);
            };
            c.prepare_cached(
                "UPDATE sessions SET last_used_at = MAX(last_used_at, ?2) WHERE id = ?1 AND closed_at IS NULL",
            )?
            .execute(params![session, now as i64])?;
            let given = c
                .prepare_cached(
                    "UPDATE sessions SET spent_msat = spent_msat - ?2, failed_msat = failed_msat + ?2
                     WHERE id = ?1 AND closed_at IS NULL
                       AND failed_msat + ?2 <= (?3 - 1) * spent_msat",
                )?
                .execute(params![session, amount, spend_at])?;
            if given == 1 {
                return Ok(AfterFailure::Released);
            }
            let back = kept_msat.map_or(0, |kept| (amount as u64).saturating_sub(kept));
            if back > 0 {
                c.prepare_cached(
                    "UPDATE sessions SET spent_msat = spent_msat - ?2 WHERE id = ?1 AND closed_at IS NULL",
                )?
                .execute(params![session, back as i64])?;
            }
            Ok(AfterFailure::Spent)
        })
        .await
    }

    async fn undo_debits_of(&self, replica: &str) -> Result<u64, StoreError> {
        let replica = replica.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE sessions SET spent_msat = spent_msat - (
                    SELECT COALESCE(SUM(amount_msat), 0) FROM session_debits
                    WHERE session_debits.session = sessions.id AND replica = ?1)
                 WHERE closed_at IS NULL
                   AND id IN (SELECT session FROM session_debits WHERE replica = ?1)",
                [&replica],
            )?;
            c.execute("DELETE FROM session_debits WHERE replica = ?1", [&replica])
                .map(|n| n as u64)
        })
        .await
    }

    async fn has_held_debits(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        let id = *id;
        self.with(move |c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM session_debits WHERE session = ?1)")?
                .query_row([&id[..]], |r| r.get(0))
        })
        .await
    }

    async fn debit_holders(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            c.prepare_cached("SELECT DISTINCT replica FROM session_debits")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn replica_running(&self, replica: &str) -> Result<bool, StoreError> {
        Ok(self.try_replica_name(replica)?.is_none())
    }

    async fn undo_debits_of_stopped(&self, replica: &str) -> Result<Option<u64>, StoreError> {
        // Held while the debits go back: no process starts as it meanwhile.
        let Some(_name) = self.try_replica_name(replica)? else {
            return Ok(None);
        };
        self.undo_debits_of(replica).await.map(Some)
    }

    async fn top_up(
        &self,
        id: &[u8; 32],
        payment_hash: &[u8; 32],
        amount_msat: u64,
        now: u64,
    ) -> Result<TopUp, StoreError> {
        let (id, hash) = (*id, *payment_hash);
        self.with(move |c| {
            let credited: Option<Vec<u8>> = c
                .prepare_cached("SELECT session FROM session_credits WHERE payment_hash = ?1")?
                .query_row([&hash[..]], |r| r.get(0))
                .optional()?;
            if let Some(session) = credited {
                return Ok(if session == id[..] {
                    TopUp::AlreadyCredited
                } else {
                    TopUp::DepositSpent
                });
            }
            let deposit: Option<i64> = c
                .prepare_cached(
                    "UPDATE sessions SET deposit_msat = deposit_msat + ?2, last_used_at = ?3
                     WHERE id = ?1 AND closed_at IS NULL RETURNING deposit_msat",
                )?
                .query_row(params![&id[..], amount_msat as i64, now as i64], |r| r.get(0))
                .optional()?;
            let Some(deposit) = deposit else {
                return Ok(match read_session(c, &id)? {
                    None => TopUp::NotFound,
                    Some(_) => TopUp::Closed,
                });
            };
            c.prepare_cached(
                "INSERT INTO session_credits (payment_hash, session, amount_msat, at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![&hash[..], &id[..], amount_msat as i64, now as i64])?;
            Ok(TopUp::Credited {
                deposit_msat: deposit as u64,
            })
        })
        .await
    }

    async fn close_session(
        &self,
        id: &[u8; 32],
        now: u64,
        unless_in_flight: bool,
    ) -> Result<Closing, StoreError> {
        let id = *id;
        self.with(move |c| {
            if unless_in_flight && open_with_debits(c, &id)? {
                return Ok(Closing::InFlight);
            }
            let closed: Option<(i64, Option<String>)> = c
                .prepare_cached(
                    "UPDATE sessions SET closed_at = coalesce(closed_at, ?2),
                        refund_msat = CASE WHEN closed_at IS NULL THEN MAX(deposit_msat - spent_msat, 0) ELSE refund_msat END,
                        refund_status = 'pending', refund_taken_at = ?2
                     WHERE id = ?1 AND (closed_at IS NULL OR (refund_status = 'failed' AND return_invoice IS NOT NULL))
                     RETURNING refund_msat, return_invoice",
                )?
                .query_row(params![&id[..], now as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((refund, return_invoice)) = closed {
                return Ok(Closing::Closed {
                    refund_msat: refund as u64,
                    return_invoice,
                });
            }
            Ok(match read_session(c, &id)? {
                None => Closing::NotFound,
                Some(s) => Closing::AlreadyClosed(s),
            })
        })
        .await
    }

    async fn record_refund(&self, id: &[u8; 32], status: &str) -> Result<(), StoreError> {
        let (id, status) = (*id, status.to_owned());
        self.with(move |c| {
            c.prepare_cached("UPDATE sessions SET refund_status = ?2 WHERE id = ?1")?
                .execute(params![&id[..], status])
                .map(drop)
        })
        .await
    }

    async fn take_owed_refunds(
        &self,
        taken_before: u64,
        now: u64,
        limit: u64,
    ) -> Result<Vec<OwedRefund>, StoreError> {
        self.with_one(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "UPDATE sessions SET refund_status = 'pending', refund_taken_at = ?2
                 WHERE id IN (
                     SELECT id FROM sessions
                     WHERE {REFUND_OWED} AND coalesce(refund_taken_at, closed_at) < ?1
                     ORDER BY coalesce(refund_taken_at, closed_at) LIMIT ?3)
                 RETURNING id, refund_msat, return_invoice"
            ))?;
            let owed = stmt
                .query_map(
                    params![taken_before as i64, now as i64, limit as i64],
                    |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(owed.into_iter().filter_map(OwedRefund::from_row).collect())
        })
        .await
    }

    async fn close_idle_sessions(
        &self,
        now: u64,
        limit: u64,
    ) -> Result<Vec<ClosedIdle>, StoreError> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "UPDATE sessions SET closed_at = ?1,
                    refund_msat = MAX(deposit_msat - spent_msat, 0),
                    refund_status = 'pending', refund_taken_at = ?1
                 WHERE id IN (
                     SELECT id FROM sessions
                     WHERE closed_at IS NULL AND last_used_at + idle_secs < ?1
                       AND NOT EXISTS (SELECT 1 FROM session_debits WHERE session_debits.session = sessions.id)
                     LIMIT ?2)
                 RETURNING id, refund_msat, return_invoice",
            )?;
            let closed = stmt
                .query_map(params![now as i64, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(closed.into_iter().filter_map(ClosedIdle::from_row).collect())
        })
        .await
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let claims = c
                .prepare_cached("DELETE FROM challenges WHERE expires_at < ?1 AND consumed = 1")?
                .execute([now as i64])?;
            let released = c
                .prepare_cached(
                    "DELETE FROM challenges WHERE expires_at < ?1 AND consumed = 0 AND holder IS NULL",
                )?
                .execute([now as i64])?;
            let responses = c
                .prepare_cached("DELETE FROM responses WHERE expires_at < ?1")?
                .execute([now as i64])?;
            Ok((claims + released + responses) as u64)
        })
        .await
    }

    async fn purge_records(
        &self,
        created_before: u64,
        served_before: u64,
    ) -> Result<u64, StoreError> {
        self.with(move |c| {
            let invoices = c.execute(
                "DELETE FROM invoices WHERE created_at < ?1",
                [created_before as i64],
            )?;
            let receipts = c.execute(
                "DELETE FROM receipts WHERE served_at < ?1",
                [served_before as i64],
            )?;
            Ok((invoices + receipts) as u64)
        })
        .await
    }

    async fn put_service_change(&self, change: &ServiceChange) -> Result<u64, StoreError> {
        let change = change.clone();
        self.with(move |c| {
            let version: i64 = c.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM admin_services",
                [],
                |r| r.get(0),
            )?;
            c.execute(
                "INSERT INTO admin_services (name, state, body, created, version, at, by_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state, body = excluded.body,
                 created = excluded.created, version = excluded.version, at = excluded.at,
                 by_name = excluded.by_name",
                params![
                    change.name,
                    change.state.as_str(),
                    change.table,
                    change.created,
                    version,
                    change.at as i64,
                    change.by
                ],
            )?;
            Ok(version as u64)
        })
        .await
    }

    async fn service_changes(&self) -> Result<Vec<ServiceChange>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT name, state, body, version, at, by_name, created FROM admin_services ORDER BY version",
            )?;
            let rows = statement.query_map([], |r| {
                let state: String = r.get(1)?;
                Ok(ServiceChange {
                    name: r.get(0)?,
                    state: ServiceState::parse(&state).unwrap_or(ServiceState::Disabled),
                    table: r.get(2)?,
                    created: r.get(6)?,
                    version: r.get::<_, i64>(3)? as u64,
                    at: r.get::<_, i64>(4)? as u64,
                    by: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn put_secret_check(&self, replica: &str, check: &SecretCheck) -> Result<(), StoreError> {
        let (replica, current, accepted) =
            (replica.to_owned(), check.current, check.accepted.concat());
        self.with(move |c| {
            c.execute(
                "INSERT INTO replica_secrets (replica, current, accepted) VALUES (?1, ?2, ?3)
                 ON CONFLICT (replica) DO UPDATE SET current = excluded.current, accepted = excluded.accepted",
                rusqlite::params![replica, &current[..], accepted],
            )
            .map(drop)
        })
        .await
    }

    async fn secret_checks(&self) -> Result<Vec<(String, SecretCheck)>, StoreError> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT replica, current, accepted FROM replica_secrets")?;
            let rows = statement.query_map([], |r| {
                let current: Vec<u8> = r.get(1)?;
                let accepted: Vec<u8> = r.get(2)?;
                Ok((r.get(0)?, crate::secret_check(&current, &accepted)))
            })?;
            rows.filter_map(|row| {
                row.map(|(name, check)| check.map(|c| (name, c)))
                    .transpose()
            })
            .collect()
        })
        .await
    }

    async fn revoke(&self, payment_hash: &[u8; 32], at: u64, by: &str) -> Result<bool, StoreError> {
        let (hash, by) = (*payment_hash, by.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT INTO revocations (payment_hash, seq, at, by_name)
                 SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3 FROM revocations WHERE true
                 ON CONFLICT (payment_hash) DO NOTHING",
                params![&hash[..], at as i64, by],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn revocations(&self, after: u64) -> Result<Vec<Revocation>, StoreError> {
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT payment_hash, seq, at, by_name FROM revocations WHERE seq > ?1 ORDER BY seq",
            )?;
            let rows = statement.query_map([after as i64], |r| {
                Ok(Revocation {
                    payment_hash: hash_column(r, 0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    at: r.get::<_, i64>(2)? as u64,
                    by: r.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn admin_versions(&self) -> Result<AdminVersions, StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT (SELECT COALESCE(MAX(version), 0) FROM admin_services),
                        (SELECT COALESCE(MAX(seq), 0) FROM revocations)",
            )?
            .query_row([], |r| {
                Ok(AdminVersions {
                    services: r.get::<_, i64>(0)? as u64,
                    revocations: r.get::<_, i64>(1)? as u64,
                })
            })
        })
        .await
    }

    async fn add_challenge_counts(&self, counts: &[ChallengeCount]) -> Result<(), StoreError> {
        let counts = counts.to_vec();
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "INSERT INTO challenge_counts (service, hour, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT (service, hour) DO UPDATE SET count = count + excluded.count",
            )?;
            for count in counts {
                statement.execute(params![
                    count.service,
                    count.hour as i64,
                    count.count as i64
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn challenge_counts(
        &self,
        since: u64,
        until: u64,
    ) -> Result<Vec<ChallengeCount>, StoreError> {
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT service, hour, count FROM challenge_counts
                 WHERE hour >= ?1 AND hour < ?2 ORDER BY hour, service",
            )?;
            let rows = statement.query_map([since as i64, until as i64], |r| {
                Ok(ChallengeCount {
                    service: r.get(0)?,
                    hour: r.get::<_, i64>(1)? as u64,
                    count: r.get::<_, i64>(2)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn payments(&self, query: &PaymentQuery) -> Result<Vec<PaymentRow>, StoreError> {
        let q = query.clone();
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT payment_hash, service, scheme, amount_msat, first_served_at,
                        COALESCE(last_served_at, first_served_at), served
                 FROM payments
                 WHERE first_served_at >= ?1 AND first_served_at < ?2
                   AND (?3 IS NULL OR service = ?3) AND (?4 IS NULL OR scheme = ?4)
                   AND (?5 IS NULL OR payment_hash = ?5)
                 ORDER BY first_served_at DESC, payment_hash LIMIT ?6",
            )?;
            let hash = q.payment_hash.map(|h| h.to_vec());
            let rows = statement.query_map(
                params![
                    q.since as i64,
                    q.until.min(i64::MAX as u64) as i64,
                    q.service,
                    q.scheme,
                    hash,
                    q.limit.min(i64::MAX as u64) as i64
                ],
                |r| {
                    Ok(PaymentRow {
                        payment_hash: hash_column(r, 0)?,
                        service: r.get(1)?,
                        scheme: r.get(2)?,
                        amount_msat: r.get::<_, i64>(3)? as u64,
                        first_served_at: r.get::<_, i64>(4)? as u64,
                        last_served_at: r.get::<_, i64>(5)? as u64,
                        served: r.get::<_, i64>(6)? as u64,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    async fn revenue(
        &self,
        since: u64,
        until: u64,
        bucket_secs: u64,
    ) -> Result<Vec<RevenueBucket>, StoreError> {
        let width = bucket_secs.max(1) as i64;
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT service, bucket, SUM(payments), SUM(amount), SUM(served), SUM(refunded)
                 FROM (
                    SELECT service, (first_served_at / ?3) * ?3 AS bucket, 1 AS payments,
                           amount_msat AS amount, served, 0 AS refunded
                    FROM payments WHERE first_served_at >= ?1 AND first_served_at < ?2
                    UNION ALL
                    SELECT service, (closed_at / ?3) * ?3, 0, 0, 0, (refund_msat / 1000) * 1000
                    FROM sessions WHERE refund_status = 'succeeded'
                        AND closed_at >= ?1 AND closed_at < ?2
                 )
                 GROUP BY service, bucket ORDER BY bucket, service",
            )?;
            let rows = statement.query_map(
                params![since as i64, until.min(i64::MAX as u64) as i64, width],
                |r| {
                    Ok(RevenueBucket {
                        service: r.get(0)?,
                        start: r.get::<_, i64>(1)? as u64,
                        payments: r.get::<_, i64>(2)? as u64,
                        amount_msat: r.get::<_, i64>(3)? as u64,
                        served: r.get::<_, i64>(4)? as u64,
                        refunded_msat: r.get::<_, i64>(5)? as u64,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    async fn log_admin(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO admin_log (at, who, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.at as i64, e.who, e.action, e.target, e.detail],
            )
            .map(|_| ())
        })
        .await
    }

    async fn admin_log(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT at, who, action, target, detail FROM admin_log ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = statement.query_map([limit.min(i64::MAX as u64) as i64], |r| {
                Ok(AuditEntry {
                    at: r.get::<_, i64>(0)? as u64,
                    who: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

/// A 32-byte hash column.
fn hash_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<[u8; 32]> {
    let bytes: Vec<u8> = row.get(index)?;
    bytes.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Blob,
            "not a 32-byte hash".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the writer commits reaches the database file itself, not only
    /// its log, while the store runs.
    #[tokio::test]
    async fn the_log_is_copied_into_the_database_while_running() {
        let (_dir, path, _store, _holder) = claimed_in_a_new_store().await;
        let sql = "SELECT count(*) FROM challenges WHERE id = 'p:1'";
        // A few checkpoints' time, more on a loaded machine.
        let deadline = std::time::Instant::now() + CHECKPOINT_EVERY * 50;
        while !matches!(try_in_the_file_alone(&path, sql), Ok(1))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
        assert_eq!(in_the_file_alone(&path, sql), 1);
    }

    /// A store in a new file, holding claim `p:1`: its directory (removed
    /// when dropped), its path, itself and the claim's holder.
    async fn claimed_in_a_new_store() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        SqliteStore,
        ClaimHolder,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let store = SqliteStore::open(&path).unwrap();
        let holder = ClaimHolder {
            replica: "r".into(),
            token: "t".into(),
        };
        store.claim("p:1", &holder, 100, 50, 10).await.unwrap();
        (dir, path, store, holder)
    }

    /// `sql`'s answer from a copy of the database file alone, as a copy
    /// without its log would have it.
    fn in_the_file_alone(path: &Path, sql: &str) -> i64 {
        try_in_the_file_alone(path, sql).unwrap()
    }

    /// [`in_the_file_alone`], or its error (no table yet, before the first
    /// checkpoint).
    fn try_in_the_file_alone(path: &Path, sql: &str) -> rusqlite::Result<i64> {
        let copy = path.with_extension("copy");
        std::fs::copy(path, &copy).unwrap();
        let answer = Connection::open(&copy).and_then(|c| c.query_row(sql, [], |r| r.get(0)));
        std::fs::remove_file(&copy).unwrap();
        answer
    }

    /// Closed, the store leaves everything in the database file and no
    /// log beside it, and answers no more calls.
    #[tokio::test]
    async fn closing_leaves_the_database_file_whole() {
        let (_dir, path, store, holder) = claimed_in_a_new_store().await;
        assert!(store.commit_claim("p:1", &holder, 11).await.unwrap());
        store.close().await;
        let log = path.with_extension("sqlite3-wal");
        assert!(!log.exists(), "the log is still there after close");
        let spent = in_the_file_alone(&path, "SELECT consumed FROM challenges WHERE id = 'p:1'");
        assert_eq!(spent, 1);
        assert!(store.ping().await.is_err());
        store.close().await;
    }

    /// Under writes that never pause, the log still starts over: it stays
    /// near the length it is started over at instead of growing with
    /// every write.
    #[test]
    fn the_log_stays_bounded_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.pragma_update(None, "journal_size_limit", 0).unwrap();
        writer.busy_timeout(BUSY_TIMEOUT).unwrap();
        writer
            .execute_batch("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB)")
            .unwrap();
        let copier = Connection::open(&path).unwrap();
        copier.busy_timeout(BUSY_TIMEOUT).unwrap();
        let (alive, hung_up) = mpsc::channel();
        let log = LogFrames::default();
        let copied = log.clone();
        let copying = std::thread::spawn(move || {
            checkpointer(copier, hung_up, std::time::Duration::from_millis(5), copied)
        });
        let wal = dir.path().join("s.sqlite3-wal");
        let mut largest = 0;
        for i in 0..3_000u32 {
            let key: [u8; 32] = rand_key(i);
            writer
                .execute("INSERT INTO t VALUES (?1, zeroblob(200))", [&key[..]])
                .unwrap();
            start_over_if_long(&writer, &log, 64);
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        drop(alive);
        copying.join().unwrap();
        // Each insert commits a page or more: 3,000 of them would leave
        // a log of about 12 MiB if it never started over.
        assert!(largest < 4 << 20, "the log grew to {largest} bytes");
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 3_000);
    }

    /// A key spread over the index as payment hashes are.
    fn rand_key(i: u32) -> [u8; 32] {
        let mut key = [0u8; 32];
        let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for byte in &mut key {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        key
    }

    /// A failing call leaves the rest of its batch whole, whether it ran in
    /// a savepoint (several writes, the first undone) or as one statement.
    #[tokio::test]
    async fn a_failing_call_leaves_its_batch_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        store
            .with(|c| c.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
            .await
            .unwrap();
        let insert = |x: i64| move |c: &Connection| c.execute("INSERT INTO t VALUES (?1)", [x]);
        store.with_one(insert(1)).await.unwrap();
        // The first call holds the thread while the others queue: they are
        // one batch.
        let (_, two_writes, one_write, fine) = tokio::join!(
            store.with(|_| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                Ok(())
            }),
            store.with(|c| {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                c.execute("INSERT INTO t VALUES (1)", [])
            }),
            store.with_one(insert(1)),
            store.with_one(insert(3)),
        );
        assert!(two_writes.is_err());
        assert!(one_write.is_err());
        assert_eq!(fine.unwrap(), 1);
        let rows = store
            .with_one(|c| {
                c.prepare("SELECT x FROM t ORDER BY x")?
                    .query_map([], |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .unwrap();
        assert_eq!(rows, [1, 3]);
    }
}
