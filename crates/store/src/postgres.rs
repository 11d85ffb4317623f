//! [`Store`] on PostgreSQL: one database shared by every gateway replica,
//! so a payment is served and counted exactly once across them.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};

use crate::{
    decode_headers, encode_headers, AfterFailure, ClaimHolder, ClosedIdle, ClosedSession, Closing,
    Debit, InvoiceRecord, NewSession, OpenSessions, Opened, OwedRefund, PaymentRecord, RefundsOwed,
    Reservation, SessionRecord, Store, StoreError, StoredResponse, TopUp, REFUND_OWED,
};
use crate::{
    AdminVersions, AuditEntry, ChallengeCount, PaymentQuery, PaymentRow, RevenueBucket, Revocation,
    SecretCheck, ServiceChange, ServiceState,
};

/// Schema versions, in order; `gate402_schema` says how many ran.
/// Append only: a database keeps whatever a released version made of it.
/// So `tokens` stays although nothing reads it any more (L402 root keys
/// are derived from a secret now).
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tokens (
        token_id BYTEA PRIMARY KEY,
        root_key BYTEA NOT NULL,
        payment_hash BYTEA NOT NULL,
        service TEXT NOT NULL,
        created_at BIGINT NOT NULL
     );
     CREATE TABLE invoices (
        payment_hash BYTEA PRIMARY KEY,
        bolt11 TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        service TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
     );
     CREATE TABLE challenges (
        id TEXT PRIMARY KEY,
        consumed BOOLEAN NOT NULL DEFAULT FALSE,
        lease_until BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        consumed_at BIGINT
     );
     CREATE INDEX challenges_expiry ON challenges (expires_at) WHERE consumed;
     CREATE TABLE receipts (
        id BIGSERIAL PRIMARY KEY,
        payment_hash BYTEA NOT NULL,
        scheme TEXT NOT NULL,
        challenge_id TEXT,
        service TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        served_at BIGINT NOT NULL
     );
     CREATE TABLE freebies (
        client TEXT NOT NULL,
        service TEXT NOT NULL,
        used BIGINT NOT NULL,
        PRIMARY KEY (client, service)
     );",
    "ALTER TABLE challenges ADD COLUMN holder TEXT;
     CREATE INDEX challenges_holder ON challenges (holder) WHERE NOT consumed;",
    // Claims fenced by a token of their holder (`holder` is its replica).
    // Rows from before were keyed by MPP challenge id: `legacy` defaults to
    // true so that they, and any row a replica of the previous version
    // still writes during a rolling upgrade, are legacy; claims from now
    // on set it to false.
    "ALTER TABLE challenges ADD COLUMN holder_token TEXT;
     ALTER TABLE challenges ADD COLUMN legacy BOOLEAN NOT NULL DEFAULT TRUE;
     CREATE INDEX challenges_legacy ON challenges (expires_at) WHERE legacy AND consumed;
     CREATE TABLE payments (
        payment_hash BYTEA PRIMARY KEY,
        service TEXT NOT NULL,
        scheme TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        first_served_at BIGINT NOT NULL
     );",
    // Old invoices and receipts are purged by age.
    "CREATE INDEX invoices_created_at ON invoices (created_at);
     CREATE INDEX receipts_served_at ON receipts (served_at);",
    // A payment's row counts what it served (receipts are no longer
    // written one per request).
    "ALTER TABLE payments ADD COLUMN served BIGINT NOT NULL DEFAULT 1;
     ALTER TABLE payments ADD COLUMN last_served_at BIGINT;",
    // Claims are looked up by holder only when a replica starts: a scan
    // then costs less than keeping the index on every claim and commit.
    "DROP INDEX challenges_holder;",
    // Paid responses kept for retries with the same Idempotency-Key.
    "CREATE TABLE responses (
        claim_key TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        fingerprint BYTEA NOT NULL,
        status INTEGER NOT NULL,
        headers BYTEA NOT NULL,
        body BYTEA NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (claim_key, idempotency_key)
     );
     CREATE INDEX responses_expires_at ON responses (expires_at);",
    // Prepaid balances: each deposit's payment hash credits one session
    // once (`session_credits`); debits of requests in flight are held
    // until served (`session_debits`).
    "CREATE TABLE sessions (
        id BYTEA PRIMARY KEY,
        service TEXT NOT NULL,
        deposit_msat BIGINT NOT NULL,
        spent_msat BIGINT NOT NULL DEFAULT 0,
        return_invoice TEXT,
        idle_secs BIGINT NOT NULL,
        last_used_at BIGINT NOT NULL,
        closed_at BIGINT,
        refund_msat BIGINT,
        refund_status TEXT
     );
     CREATE INDEX sessions_open ON sessions (last_used_at) WHERE closed_at IS NULL;
     CREATE TABLE session_credits (
        payment_hash BYTEA PRIMARY KEY,
        session BYTEA NOT NULL,
        amount_msat BIGINT NOT NULL,
        at BIGINT NOT NULL
     );
     CREATE TABLE session_debits (
        token TEXT PRIMARY KEY,
        replica TEXT NOT NULL,
        session BYTEA NOT NULL,
        amount_msat BIGINT NOT NULL
     );",
    // The admin API: services changed at runtime (the latest change of
    // each), revoked payments, 402s per service and hour, and its log.
    // One sequence orders service changes and revocations across replicas.
    "CREATE SEQUENCE admin_seq;
     CREATE TABLE admin_services (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        body TEXT,
        created BOOLEAN NOT NULL,
        version BIGINT NOT NULL,
        at BIGINT NOT NULL,
        by_name TEXT NOT NULL
     );
     CREATE TABLE revocations (
        payment_hash BYTEA PRIMARY KEY,
        seq BIGINT NOT NULL,
        at BIGINT NOT NULL,
        by_name TEXT NOT NULL
     );
     CREATE TABLE challenge_counts (
        service TEXT NOT NULL,
        hour BIGINT NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (service, hour)
     );
     CREATE TABLE admin_log (
        id BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
     );
     CREATE INDEX payments_first_served_at ON payments (first_served_at);",
    // Spending a claim sets `consumed` and `consumed_at` alone. While an
    // index named `consumed`, even in its predicate, that update added an
    // entry to every index of the table; with none, and room kept on each
    // page for the new version (fillfactor), it is a heap-only update.
    // Claim keys are ASCII: bytewise comparison orders them as well as a
    // collation does, for less on every index lookup.
    "DROP INDEX challenges_expiry;
     DROP INDEX challenges_legacy;
     ALTER TABLE challenges ALTER COLUMN id TYPE TEXT COLLATE \"C\";
     ALTER TABLE challenges SET (fillfactor = 45);
     CREATE INDEX challenges_expires_at ON challenges (expires_at);
     CREATE INDEX challenges_legacy ON challenges (expires_at) WHERE legacy;",
    // A claim given back keeps its row: it counts the upstream's failures
    // on its payment.
    "ALTER TABLE challenges ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE sessions ADD COLUMN failed_msat BIGINT NOT NULL DEFAULT 0;",
    // When a refund was last taken to be paid: one still owed (its payer
    // died, it failed, it was in flight) is taken again later.
    "ALTER TABLE sessions ADD COLUMN refund_taken_at BIGINT;
     CREATE INDEX sessions_refund_owed ON sessions ((coalesce(refund_taken_at, closed_at)))
         WHERE refund_status IN ('pending', 'failed');",
    // The unit price a session was opened at: spent at it whatever the
    // service's price later.
    "ALTER TABLE sessions ADD COLUMN unit_msat BIGINT;",
    // Sessions are looked up by return invoice when one is opened.
    "CREATE INDEX sessions_return_invoice ON sessions (return_invoice);",
    // Free calls given back after the upstream failed on them.
    "ALTER TABLE freebies ADD COLUMN failed BIGINT NOT NULL DEFAULT 0;",
    // The revenue report sums the refunds paid in its window.
    "CREATE INDEX sessions_refunded ON sessions (closed_at) WHERE refund_status = 'succeeded';",
    // What each replica derives from its MPP secrets: replicas that would
    // refuse each other's credentials are told apart at start.
    "CREATE TABLE replica_secrets (
        replica TEXT PRIMARY KEY,
        current BYTEA NOT NULL,
        accepted BYTEA NOT NULL
     );",
    // The claim holder that kept a response: it is replayed only if that
    // holder's spend was written (rows from before have none).
    "ALTER TABLE responses ADD COLUMN holder_token TEXT;",
];

/// The sessions `clause` (a `WHERE` condition and its `ORDER BY`) picks,
/// at most `limit`.
async fn sessions_where(
    conn: &mut sqlx::PgConnection,
    clause: &str,
    limit: u64,
) -> Result<Vec<SessionRecord>, StoreError> {
    let ids: Vec<Vec<u8>> =
        sqlx::query_scalar(&format!("SELECT id FROM sessions WHERE {clause} LIMIT $1"))
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    let mut sessions = Vec::with_capacity(ids.len());
    for id in ids {
        if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
            sessions.extend(read_session(&mut *conn, &id).await?);
        }
    }
    Ok(sessions)
}

/// A session row, if there is one.
async fn read_session(
    conn: &mut sqlx::PgConnection,
    id: &[u8; 32],
) -> Result<Option<SessionRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT service, deposit_msat, spent_msat, return_invoice, idle_secs, last_used_at, closed_at, refund_msat, refund_status, unit_msat
         FROM sessions WHERE id = $1",
    )
    .bind(&id[..])
    .fetch_optional(conn)
    .await
    .map_err(db)?;
    row.map(|r| {
        let closed_at: Option<i64> = r.try_get(6)?;
        Ok(SessionRecord {
            id: *id,
            service: r.try_get(0)?,
            deposit_msat: r.try_get::<i64, _>(1)? as u64,
            spent_msat: r.try_get::<i64, _>(2)? as u64,
            return_invoice: r.try_get(3)?,
            idle_secs: r.try_get::<i64, _>(4)? as u64,
            last_used_at: r.try_get::<i64, _>(5)? as u64,
            unit_msat: r.try_get::<Option<i64>, _>(9)?.map(|u| u as u64),
            closed: match closed_at {
                None => None,
                Some(at) => Some(ClosedSession {
                    at: at as u64,
                    refund_msat: r.try_get::<Option<i64>, _>(7)?.unwrap_or(0) as u64,
                    refund_status: r.try_get::<Option<String>, _>(8)?.unwrap_or_default(),
                }),
            },
        })
    })
    .transpose()
    .map_err(db)
}

/// Any number fixed for the advisory lock that serializes migrations of
/// replicas starting together.
const MIGRATION_LOCK: i64 = 0x0067_6174_6534_3032;

/// The advisory lock key of the replica named `$1`: 8 bytes of the name's
/// hash, made by the server so that every version of the gateway makes
/// the same key.
const REPLICA_LOCK_KEY: &str =
    "('x' || substr(md5('gate402 replica ' || $1), 1, 16))::bit(64)::bigint";

/// The advisory lock key of return invoice `$1` (BOLT11): opens naming
/// one invoice take turns, so that one session alone names it.
const RETURN_INVOICE_LOCK_KEY: &str =
    "('x' || substr(md5('gate402 return invoice ' || $1), 1, 16))::bit(64)::bigint";

/// Whether a session other than `id` names `return_invoice`.
async fn named_elsewhere(
    conn: &mut PgConnection,
    return_invoice: &str,
    id: &[u8; 32],
) -> Result<bool, StoreError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM sessions WHERE return_invoice = $1 AND id <> $2 LIMIT 1")
            .bind(return_invoice)
            .bind(&id[..])
            .fetch_optional(conn)
            .await
            .map_err(db)?;
    Ok(found.is_some())
}

/// How long a held replica name's connection may take to answer before it
/// counts as lost.
const REPLICA_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection holding this process's replica name, and its server
/// process (to tell it from another gateway's once the connection is
/// lost).
struct HeldName {
    connection: PgConnection,
    backend: i32,
}

/// How long to keep trying to reach the database at start.
const CONNECT_FOR: Duration = Duration::from_secs(30);

/// PostgreSQL through a connection pool; clones share it.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Claims waiting for the claim writer, which sends all that wait in
    /// one statement: each commit waits for the WAL to reach the disk, so
    /// one commit for many claims is what lets a busy gateway keep up.
    claims: tokio::sync::mpsc::UnboundedSender<ClaimCall>,
    /// The connection that records served claims as spent.
    commits: std::sync::Arc<tokio::sync::Mutex<Held>>,
    /// The connection holding this process's replica name
    /// ([`Store::hold_replica`]), out of the pool for as long as it runs.
    replica: std::sync::Arc<tokio::sync::Mutex<Option<HeldName>>>,
}

/// A connection kept by one writer of hot batches across them. The pool
/// tests a connection with a round trip to the server each time it is
/// taken and again each time it is given back, which costs the server
/// more than a batch's own statement; a kept connection is tested once,
/// when taken. One that failed is closed, and the next batch takes a
/// fresh one.
struct Held {
    pool: PgPool,
    connection: Option<PoolConnection<Postgres>>,
}

impl Held {
    fn new(pool: PgPool) -> Self {
        Self {
            pool,
            connection: None,
        }
    }

    /// Whether a connection is kept: one taken for an earlier batch, which
    /// the server may have closed since (a restart, `pg_terminate_backend`,
    /// an idle timeout), so that its next use fails.
    fn keeps(&self) -> bool {
        self.connection.is_some()
    }

    /// Runs `write` on the kept connection, taking one first if none is
    /// kept; closes it if `write` fails.
    async fn write<T>(
        &mut self,
        write: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            slot => slot.insert(self.pool.acquire().await.map_err(db)?),
        };
        let written = write(connection).await;
        if written.is_err() {
            if let Some(mut failed) = self.connection.take() {
                failed.close_on_drop();
            }
        }
        written
    }
}

/// One claim waiting to be written.
struct ClaimCall {
    key: String,
    holder: ClaimHolder,
    expires_at: u64,
    lease_until: u64,
    now: u64,
    reply: tokio::sync::oneshot::Sender<Result<Reservation, StoreError>>,
}

/// Claims at most in one statement.
const MAX_CLAIM_BATCH: usize = 256;

/// A claim this soon after the claim writer's last statement finds it
/// busy; one later is written at once.
const BUSY_GAP: Duration = Duration::from_millis(1);

/// How often a busy claim writer lets the other tasks of its runtime
/// thread run before it takes the claims waiting: requests already under
/// way reach their claims and share the statement and its commit. On the
/// benchmark this doubles a statement's claims (about 10 to 20) and takes
/// a few microseconds off the server's CPU per claim (median 38.5 to 36 µs
/// a paid MPP request), for a few microseconds of the writer's thread.
const GATHER_YIELDS: u32 = 8;

fn db(e: sqlx::Error) -> StoreError {
    match e {
        // Lost or unavailable connections heal: the pool reconnects.
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        // The server ended the connection (SQLSTATE class 57, operator
        // intervention: a shutdown, `pg_terminate_backend`) or lost it
        // (class 08): the same.
        sqlx::Error::Database(ref error)
            if error
                .code()
                .is_some_and(|code| code.starts_with("57") || code.starts_with("08")) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host/db`), retrying for a
    /// while if the database is not up yet, and migrates the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + CONNECT_FOR;
        let pool = loop {
            match PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
            {
                Ok(pool) => break pool,
                Err(e) => match db(e) {
                    StoreError::Unavailable(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    error => return Err(error),
                },
            }
        };
        // One writer, not several: claims that arrive while its statement
        // is out join the next, so under load each statement (and each
        // commit) carries more of them, for less of the server's CPU per
        // claim than two writers with half-size batches.
        let (claims, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_claims(Held::new(claim_pool(url)?), queue));
        let commits = std::sync::Arc::new(tokio::sync::Mutex::new(Held::new(pool.clone())));
        let store = Self {
            pool,
            claims,
            commits,
            replica: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS gate402_schema (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let applied: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM gate402_schema")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let applied = applied.unwrap_or(0) as usize;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db)?;
            sqlx::query("INSERT INTO gate402_schema (version) VALUES ($1)")
                .bind(i as i32 + 1)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }
}

/// The claim writer's own connections, which commit without waiting for
/// the WAL to reach the disk (`synchronous_commit = off`). A claim is only
/// a lease until its spend: the spend ([`Store::commit_claims`] and the
/// like, on connections that do wait) flushes the WAL up to its own
/// commit, and with it every claim written before. A claim the server
/// loses in a crash before that flush is not there for its spend, whose
/// update then finds nothing to mark ([`Store::commit_claim`] answers
/// `false`, as for a claim another request took over); its holder then
/// claims the payment again and spends it, unless another request took
/// or spent it meanwhile, which is then the one served. What a claim
/// refuses (in flight, spent) was read, not written. This saves the paid
/// MPP request one of its two waits for the disk.
///
/// # Errors
///
/// [`StoreError::Database`] if `url` does not parse.
fn claim_pool(url: &str) -> Result<PgPool, StoreError> {
    let options = url
        .parse::<PgConnectOptions>()
        .map_err(db)?
        .options([("synchronous_commit", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// The claim writer: takes every claim waiting (up to a batch), writes
/// them in one statement, answers them, and again, until the store is
/// dropped.
async fn write_claims(mut held: Held, mut queue: tokio::sync::mpsc::UnboundedReceiver<ClaimCall>) {
    let mut last_written: Option<tokio::time::Instant> = None;
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        if last_written.is_some_and(|at| at.elapsed() < BUSY_GAP) {
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        let mut batch = vec![first];
        while batch.len() < MAX_CLAIM_BATCH {
            match queue.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) => break,
            }
        }
        // A kept connection that fails as lost is tried once more on a
        // fresh one, rather than failing every request of the batch. (Run
        // twice, a claim the first run wrote after all finds itself held:
        // in flight, refused for its lease, never served twice.)
        let kept = held.keeps();
        let mut written = held.write(async |c| claim_batch(c, &batch).await).await;
        if kept && matches!(written, Err(StoreError::Unavailable(_))) {
            written = held.write(async |c| claim_batch(c, &batch).await).await;
        }
        last_written = Some(tokio::time::Instant::now());
        match written {
            Ok(answers) => {
                for (call, answer) in batch.into_iter().zip(answers) {
                    let _ = call.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for call in batch {
                    let _ = call.reply.send(Err(match &e {
                        StoreError::Database(m) => StoreError::Database(m.clone()),
                        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                    }));
                }
            }
        }
    }
}

/// Claims a batch in one statement: a new claim, or the takeover of a
/// lapsed one, under the row locks of ON CONFLICT, so concurrent replicas
/// cannot both acquire. A key asked for twice in the batch goes in once;
/// the second asker finds it in flight (or spent).
async fn claim_batch(
    connection: &mut PgConnection,
    batch: &[ClaimCall],
) -> Result<Vec<Reservation>, StoreError> {
    // In key order: two replicas' batches that hold the same new keys
    // then lock them in the same order, and cannot deadlock whatever
    // order their requests came in.
    let mut first: std::collections::BTreeMap<&str, &ClaimCall> = Default::default();
    for call in batch {
        first.entry(call.key.as_str()).or_insert(call);
    }
    let unique: Vec<&ClaimCall> = first.values().copied().collect();
    let keys: Vec<&str> = unique.iter().map(|c| c.key.as_str()).collect();
    let leases: Vec<i64> = unique.iter().map(|c| c.lease_until as i64).collect();
    let expiries: Vec<i64> = unique.iter().map(|c| c.expires_at as i64).collect();
    let replicas: Vec<&str> = unique.iter().map(|c| c.holder.replica.as_str()).collect();
    let tokens: Vec<&str> = unique.iter().map(|c| c.holder.token.as_str()).collect();
    // A lease counts as lapsed only if it lapsed before the earliest call.
    let now = unique.iter().map(|c| c.now).min().unwrap_or(0) as i64;
    let acquired: Vec<String> = sqlx::query_scalar(
        "INSERT INTO challenges (id, lease_until, expires_at, holder, holder_token, legacy)
         SELECT id, lease, expiry, holder, token, FALSE
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[])
             AS u(id, lease, expiry, holder, token)
         ON CONFLICT (id) DO UPDATE
            SET lease_until = EXCLUDED.lease_until,
                holder = EXCLUDED.holder,
                holder_token = EXCLUDED.holder_token,
                legacy = FALSE
         WHERE NOT challenges.consumed AND challenges.lease_until <= $6
         RETURNING id",
    )
    .bind(&keys)
    .bind(&leases)
    .bind(&expiries)
    .bind(&replicas)
    .bind(&tokens)
    .bind(now)
    .fetch_all(&mut *connection)
    .await
    .map_err(db)?;
    let acquired: std::collections::HashSet<&str> = acquired.iter().map(String::as_str).collect();
    let refused: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !acquired.contains(k))
        .collect();
    let consumed: std::collections::HashSet<String> = if refused.is_empty() {
        Default::default()
    } else {
        // Planned anew, as `commit_claims`'s update is, for the same reason.
        sqlx::query_scalar("SELECT id FROM challenges WHERE id = ANY($1) AND consumed")
            .persistent(false)
            .bind(&refused)
            .fetch_all(&mut *connection)
            .await
            .map_err(db)?
            .into_iter()
            .collect()
    };
    Ok(batch
        .iter()
        .map(|call| {
            let key = call.key.as_str();
            let is_first = std::ptr::eq(first[key], call);
            if consumed.contains(key) {
                Reservation::Consumed
            } else if is_first && acquired.contains(key) {
                Reservation::Acquired
            } else {
                // Held by another request (or released between the two
                // statements: then the client retries and gets it).
                Reservation::InFlight
            }
        })
        .collect())
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn close(&self) {
        if let Some(held) = self.replica.lock().await.take() {
            let _ = sqlx::Connection::close(held.connection).await;
        }
    }

    async fn hold_replica(&self, replica: &str) -> Result<bool, StoreError> {
        let mut held = self.replica.lock().await;
        // Asked again while running: the lock lives as long as its
        // connection, which the server may have closed (a restart, an
        // idle or admin kill) and let the lock go with it.
        let mut zombie = None;
        if let Some(name) = held.as_mut() {
            let alive = tokio::time::timeout(
                REPLICA_CHECK_TIMEOUT,
                sqlx::query("SELECT 1").execute(&mut name.connection),
            )
            .await;
            if matches!(alive, Ok(Ok(_))) {
                return Ok(true);
            }
            zombie = Some(name.backend);
            *held = None;
        }
        let mut connection = self.pool.acquire().await.map_err(db)?.detach();
        let (taken, backend): (bool, i32) = sqlx::query_as(&format!(
            "SELECT pg_try_advisory_lock({REPLICA_LOCK_KEY}), pg_backend_pid()"
        ))
        .bind(replica)
        .fetch_one(&mut connection)
        .await
        .map_err(db)?;
        if taken {
            *held = Some(HeldName {
                connection,
                backend,
            });
            return Ok(true);
        }
        // Still held by the server process of the connection this process
        // lost (the server has not noticed it is gone): ours, not another
        // gateway's. It is ended so that the name can be taken again.
        if let Some(zombie) = zombie {
            let holder: Option<i32> = sqlx::query_scalar(&format!(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
                   AND ((classid::bigint << 32) | objid::bigint) = {REPLICA_LOCK_KEY}"
            ))
            .bind(replica)
            .fetch_optional(&mut connection)
            .await
            .map_err(db)?;
            if holder == Some(zombie) {
                tracing::warn!(
                    backend = zombie,
                    "this replica's name is held by its own lost connection; ending it"
                );
                let _: Option<bool> = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                    .bind(zombie)
                    .fetch_optional(&mut connection)
                    .await
                    .map_err(db)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn put_invoice(&self, invoice: &InvoiceRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO invoices (payment_hash, bolt11, amount_msat, service, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&invoice.payment_hash[..])
        .bind(&invoice.bolt11)
        .bind(invoice.amount_msat as i64)
        .bind(&invoice.service)
        .bind(invoice.created_at as i64)
        .bind(invoice.expires_at as i64)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db)
    }

    async fn invoice(&self, payment_hash: &[u8; 32]) -> Result<Option<InvoiceRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT bolt11, amount_msat, service, created_at, expires_at FROM invoices WHERE payment_hash = $1",
        )
        .bind(&payment_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(InvoiceRecord {
                payment_hash: *payment_hash,
                bolt11: r.try_get(0)?,
                amount_msat: r.try_get::<i64, _>(1)? as u64,
                service: r.try_get(2)?,
                created_at: r.try_get::<i64, _>(3)? as u64,
                expires_at: r.try_get::<i64, _>(4)? as u64,
            })
        })
        .transpose()
        .map_err(db)
    }

    async fn claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        expires_at: u64,
        lease_until: u64,
        now: u64,
    ) -> Result<Reservation, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = ClaimCall {
            key: key.to_owned(),
            holder: holder.clone(),
            expires_at,
            lease_until,
            now,
            reply,
        };
        let stopped = || StoreError::Database("the claim writer has stopped".into());
        self.claims.send(call).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn renew_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        lease_until: u64,
    ) -> Result<bool, StoreError> {
        sqlx::query(
            "UPDATE challenges SET lease_until = $4
             WHERE id = $1 AND holder = $2 AND holder_token = $3",
        )
        .bind(key)
        .bind(&holder.replica)
        .bind(&holder.token)
        .bind(lease_until as i64)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db)
    }

    async fn commit_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<bool, StoreError> {
        commit_one(key, holder, now)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(db)
    }

    async fn commit_claim_with_debit(
        &self,
        key: &str,
        holder: &ClaimHolder,
        debit: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        keep_debit(debit, kept_msat, now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let held = commit_one(key, holder, now)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected()
            == 1;
        tx.commit().await.map_err(db)?;
        Ok(held)
    }

    async fn commit_claims(
        &self,
        claims: &[(String, ClaimHolder)],
        now: u64,
    ) -> Result<Vec<bool>, StoreError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // In key order, as claims are taken: the planner's usual nested
        // loop over the keys then locks rows in that order too, so that a
        // commit and a batch taking over some of its lapsed claims do not
        // deadlock (a commit that still fails is tried again).
        let mut sorted: Vec<&(String, ClaimHolder)> = claims.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<&str> = sorted.iter().map(|(k, _)| k.as_str()).collect();
        let replicas: Vec<&str> = sorted.iter().map(|(_, h)| h.replica.as_str()).collect();
        let tokens: Vec<&str> = sorted.iter().map(|(_, h)| h.token.as_str()).collect();
        // Planned anew each time (not a prepared statement): a plan kept
        // from when the table was small joins the batch against a scan of
        // every claim, however many the table holds by then.
        let statement = sqlx::query_scalar(
            "UPDATE challenges AS c
             SET consumed = TRUE, consumed_at = coalesce(c.consumed_at, $4)
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(id, holder, token)
             WHERE c.id = u.id AND c.holder = u.holder AND c.holder_token = u.token
             RETURNING c.id",
        )
        .persistent(false)
        .bind(&keys)
        .bind(&replicas)
        .bind(&tokens)
        .bind(now as i64);
        // A commit that fails is tried again by its caller's batch.
        let committed: Vec<String> = self
            .commits
            .lock()
            .await
            .write(async |c| statement.fetch_all(c).await.map_err(db))
            .await?;
        let committed: std::collections::HashSet<&str> =
            committed.iter().map(String::as_str).collect();
        Ok(claims
            .iter()
            .map(|(k, _)| committed.contains(k.as_str()))
            .collect())
    }

    async fn release_claim(&self, key: &str, holder: &ClaimHolder) -> Result<bool, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM challenges
             WHERE id = $1 AND holder = $2 AND holder_token = $3 AND NOT consumed
               AND failures = 0",
        )
        .bind(key)
        .bind(&holder.replica)
        .bind(&holder.token)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        if deleted.rows_affected() == 1 {
            return Ok(true);
        }
        sqlx::query(
            "UPDATE challenges SET holder = NULL, holder_token = NULL, lease_until = 0
             WHERE id = $1 AND holder = $2 AND holder_token = $3 AND NOT consumed",
        )
        .bind(key)
        .bind(&holder.replica)
        .bind(&holder.token)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db)
    }

    async fn fail_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        spend_at: u32,
        now: u64,
    ) -> Result<AfterFailure, StoreError> {
        let consumed: Option<bool> = sqlx::query_scalar(
            "UPDATE challenges
             SET failures = failures + 1, holder = NULL, holder_token = NULL, lease_until = 0,
                 consumed = (failures + 1 >= $4),
                 consumed_at = CASE WHEN failures + 1 >= $4 THEN $5 ELSE consumed_at END
             WHERE id = $1 AND holder = $2 AND holder_token = $3 AND NOT consumed
             RETURNING consumed",
        )
        .bind(key)
        .bind(&holder.replica)
        .bind(&holder.token)
        .bind(spend_at as i32)
        .bind(now as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(match consumed {
            None => AfterFailure::NotHeld,
            Some(false) => AfterFailure::Released,
            Some(true) => AfterFailure::Spent,
        })
    }

    async fn release_claims_of(&self, replica: &str) -> Result<u64, StoreError> {
        // As `release_claim` does, claim by claim: a row that counts
        // failures is kept, given back. The two sets are disjoint, so one
        // statement changes each row once.
        sqlx::query_scalar(
            "WITH deleted AS (
                DELETE FROM challenges
                WHERE holder = $1 AND NOT consumed AND failures = 0
                RETURNING 1
             ), kept AS (
                UPDATE challenges SET holder = NULL, holder_token = NULL, lease_until = 0
                WHERE holder = $1 AND NOT consumed AND failures > 0
                RETURNING 1
             )
             SELECT (SELECT count(*) FROM deleted) + (SELECT count(*) FROM kept)",
        )
        .bind(replica)
        .fetch_one(&self.pool)
        .await
        .map(|n: i64| n as u64)
        .map_err(db)
    }

    async fn legacy_claims_until(&self) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(max(expires_at), 0) FROM challenges WHERE legacy AND consumed",
        )
        .fetch_one(&self.pool)
        .await
        .map(|t| t as u64)
        .map_err(db)
    }

    async fn legacy_consumed(&self, id: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM challenges WHERE id = $1 AND legacy AND consumed)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    async fn record_payments(&self, payments: &[PaymentRecord]) -> Result<Vec<bool>, StoreError> {
        if payments.is_empty() {
            return Ok(Vec::new());
        }
        // Rows are locked in payment hash order, so that replicas writing
        // the same payments at once cannot deadlock.
        let mut sorted: Vec<&PaymentRecord> = payments.iter().collect();
        sorted.sort_unstable_by_key(|p| p.payment_hash);
        let column =
            |f: fn(&PaymentRecord) -> i64| sorted.iter().map(|p| f(p)).collect::<Vec<i64>>();
        let hashes: Vec<Vec<u8>> = sorted.iter().map(|p| p.payment_hash.to_vec()).collect();
        let services: Vec<&str> = sorted.iter().map(|p| p.service.as_str()).collect();
        let schemes: Vec<&str> = sorted.iter().map(|p| p.scheme.as_str()).collect();
        // One statement for the batch; `xmax = 0` tells a row this
        // statement inserted from one it updated.
        let rows = sqlx::query(
            "INSERT INTO payments (payment_hash, service, scheme, amount_msat, first_served_at, last_served_at, served)
             SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $5::bigint[], $6::bigint[])
             ON CONFLICT (payment_hash) DO UPDATE
                SET served = payments.served + EXCLUDED.served,
                    last_served_at = GREATEST(payments.last_served_at, EXCLUDED.last_served_at),
                    amount_msat = CASE WHEN payments.amount_msat = 0
                        THEN EXCLUDED.amount_msat ELSE payments.amount_msat END
             RETURNING payment_hash, (xmax = 0) AS inserted",
        )
        .bind(&hashes)
        .bind(&services)
        .bind(&schemes)
        .bind(column(|p| p.amount_msat as i64))
        .bind(column(|p| p.at as i64))
        .bind(column(|p| p.served as i64))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let inserted: std::collections::HashMap<Vec<u8>, bool> = rows
            .iter()
            .map(|r| (r.get::<Vec<u8>, _>(0), r.get::<bool, _>(1)))
            .collect();
        Ok(payments
            .iter()
            .map(|p| inserted.get(&p.payment_hash[..]).copied().unwrap_or(false))
            .collect())
    }

    async fn count_freebie(&self, client: &str, service: &str) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO freebies (client, service, used) VALUES ($1, $2, 1)
             ON CONFLICT (client, service) DO UPDATE SET used = freebies.used + 1
             RETURNING used",
        )
        .bind(client)
        .bind(service)
        .fetch_one(&self.pool)
        .await
        .map(|n| n as u64)
        .map_err(db)
    }

    async fn return_freebie(
        &self,
        client: &str,
        service: &str,
        free: u64,
        reached: bool,
    ) -> Result<bool, StoreError> {
        // As SQLite's: the calls refused over `free` count for nothing.
        sqlx::query(
            "UPDATE freebies SET used = LEAST(used, $3) - 1, failed = failed + $4::int
             WHERE client = $1 AND service = $2 AND used > 0 AND $3 > 0
               AND (NOT $4 OR failed < $3)",
        )
        .bind(client)
        .bind(service)
        .bind(free.min(i64::MAX as u64) as i64)
        .bind(reached)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db)
    }

    async fn put_response(&self, response: &StoredResponse) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO responses (claim_key, idempotency_key, fingerprint, status, headers, body, expires_at, holder_token)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (claim_key, idempotency_key) DO UPDATE SET
                fingerprint = excluded.fingerprint, status = excluded.status,
                headers = excluded.headers, body = excluded.body, expires_at = excluded.expires_at,
                holder_token = excluded.holder_token
             WHERE NOT EXISTS
                (SELECT 1 FROM challenges WHERE id = excluded.claim_key AND consumed)",
        )
        .bind(&response.claim_key)
        .bind(&response.idempotency_key)
        .bind(&response.fingerprint[..])
        .bind(i32::from(response.status))
        .bind(encode_headers(&response.headers))
        .bind(&response.body)
        .bind(response.expires_at as i64)
        .bind(&response.holder_token)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db)
    }

    async fn stored_response(
        &self,
        claim_key: &str,
        idempotency_key: &str,
        now: u64,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let row = sqlx::query(
            "SELECT fingerprint, status, headers, body, expires_at, holder_token FROM responses
             WHERE claim_key = $1 AND idempotency_key = $2 AND expires_at >= $3
               AND EXISTS (SELECT 1 FROM challenges c WHERE c.id = $1 AND c.consumed
                   AND (responses.holder_token IS NULL OR c.holder_token = responses.holder_token))",
        )
        .bind(claim_key)
        .bind(idempotency_key)
        .bind(now as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| {
            let fingerprint: Vec<u8> = r.try_get(0)?;
            let headers: Vec<u8> = r.try_get(2)?;
            Ok(StoredResponse {
                claim_key: claim_key.to_owned(),
                idempotency_key: idempotency_key.to_owned(),
                fingerprint: fingerprint.try_into().unwrap_or([0; 32]),
                status: u16::try_from(r.try_get::<i32, _>(1)?).unwrap_or(500),
                headers: decode_headers(&headers),
                body: r.try_get(3)?,
                expires_at: r.try_get::<i64, _>(4)? as u64,
                holder_token: r.try_get(5)?,
            })
        })
        .transpose()
        .map_err(db)
    }

    async fn open_session(&self, session: &NewSession) -> Result<Opened, StoreError> {
        let n = session;
        let mut tx = self.pool.begin().await.map_err(db)?;
        if let Some(invoice) = &n.return_invoice {
            sqlx::query(&format!(
                "SELECT pg_advisory_xact_lock({RETURN_INVOICE_LOCK_KEY})"
            ))
            .bind(invoice)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        // The credit row is the one fence: whoever inserts it for this hash
        // first decides which session the deposit opened or topped up.
        let inserted = sqlx::query(
            "INSERT INTO session_credits (payment_hash, session, amount_msat, at)
             VALUES ($1, $1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&n.id[..])
        .bind(n.deposit_msat as i64)
        .bind(n.now as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if inserted == 0 {
            let session: Vec<u8> =
                sqlx::query_scalar("SELECT session FROM session_credits WHERE payment_hash = $1")
                    .bind(&n.id[..])
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
            if session != n.id[..] {
                return Ok(Opened::DepositSpent);
            }
            let known = read_session(&mut tx, &n.id).await?;
            if let (Some(invoice), Some(None)) = (
                &n.return_invoice,
                known.as_ref().map(|s| s.return_invoice.as_ref()),
            ) {
                if named_elsewhere(&mut tx, invoice, &n.id).await? {
                    return Ok(Opened::ReturnInvoiceTaken);
                }
            }
            sqlx::query(
                "UPDATE sessions SET return_invoice = $2 WHERE id = $1 AND return_invoice IS NULL",
            )
            .bind(&n.id[..])
            .bind(&n.return_invoice)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            return Ok(known.map_or(Opened::DepositSpent, Opened::Existing));
        }
        if let Some(invoice) = &n.return_invoice {
            if named_elsewhere(&mut tx, invoice, &n.id).await? {
                return Ok(Opened::ReturnInvoiceTaken);
            }
        }
        sqlx::query(
            "INSERT INTO sessions (id, service, deposit_msat, return_invoice, idle_secs, last_used_at, unit_msat)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&n.id[..])
        .bind(&n.service)
        .bind(n.deposit_msat as i64)
        .bind(&n.return_invoice)
        .bind(n.idle_secs as i64)
        .bind(n.now as i64)
        .bind(n.unit_msat as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Opened::New)
    }

    async fn session(&self, id: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        read_session(&mut conn, id).await
    }

    async fn open_sessions(&self, limit: u64) -> Result<OpenSessions, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let (count, balance_msat): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(deposit_msat - spent_msat), 0)::bigint FROM sessions WHERE closed_at IS NULL",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
        let sessions = sessions_where(
            &mut conn,
            "closed_at IS NULL ORDER BY last_used_at DESC",
            limit,
        )
        .await?;
        Ok(OpenSessions {
            count: count as u64,
            balance_msat: balance_msat as u64,
            sessions,
        })
    }

    async fn refunds_owed(&self, limit: u64) -> Result<RefundsOwed, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let (count, refund_msat): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), coalesce(sum(refund_msat), 0)::bigint FROM sessions WHERE {REFUND_OWED}"
        ))
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
        let sessions = sessions_where(
            &mut conn,
            &format!("{REFUND_OWED} ORDER BY closed_at"),
            limit,
        )
        .await?;
        Ok(RefundsOwed {
            count: count as u64,
            refund_msat: refund_msat as u64,
            sessions,
        })
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
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE sessions SET spent_msat = spent_msat + $2 * coalesce(unit_msat, $5), last_used_at = $3
             WHERE id = $1 AND service = $4 AND closed_at IS NULL
               AND deposit_msat - spent_msat >= $2 * coalesce(unit_msat, $5)
             RETURNING deposit_msat - spent_msat, coalesce(unit_msat, $5)",
        )
        .bind(&id[..])
        .bind(units as i64)
        .bind(now as i64)
        .bind(service)
        .bind(unit_msat as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some((left, unit)) = done else {
            let known = read_session(&mut tx, id).await?;
            return Ok(match known {
                None => Debit::NotFound,
                Some(s) if s.service != service => Debit::NotFound,
                Some(s) if s.closed.is_some() => Debit::Closed,
                Some(s) => {
                    let held: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(SUM(amount_msat), 0)::BIGINT FROM session_debits WHERE session = $1",
                    )
                    .bind(&id[..])
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
                    Debit::Insufficient {
                        spent_msat: s.spent_msat,
                        balance_msat: s.balance_msat(),
                        held_msat: held.max(0) as u64,
                        unit_msat: s.unit_msat.unwrap_or(unit_msat),
                    }
                }
            });
        };
        sqlx::query(
            "INSERT INTO session_debits (token, replica, session, amount_msat) VALUES ($1, $2, $3, $4)",
        )
        .bind(&holder.token)
        .bind(&holder.replica)
        .bind(&id[..])
        .bind(units as i64 * unit)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Debit::Done {
            balance_msat: left as u64,
            unit_msat: unit as u64,
        })
    }

    async fn settle_debit(
        &self,
        holder: &ClaimHolder,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<(), StoreError> {
        keep_debit(holder, kept_msat, now)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn undo_debit(&self, holder: &ClaimHolder) -> Result<bool, StoreError> {
        let undone = sqlx::query(
            "WITH held AS (
                DELETE FROM session_debits WHERE token = $1 AND replica = $2
                RETURNING session, amount_msat)
             UPDATE sessions SET spent_msat = spent_msat - held.amount_msat
             FROM held WHERE sessions.id = held.session AND sessions.closed_at IS NULL
             RETURNING 1",
        )
        .bind(&holder.token)
        .bind(&holder.replica)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(undone.is_some())
    }

    async fn fail_debit(
        &self,
        holder: &ClaimHolder,
        spend_at: u32,
        kept_msat: Option<u64>,
        now: u64,
    ) -> Result<AfterFailure, StoreError> {
        let (held, given, session, amount): (i64, i64, Option<Vec<u8>>, Option<i64>) =
            sqlx::query_as(
                "WITH held AS (
                DELETE FROM session_debits WHERE token = $1 AND replica = $2
                RETURNING session, amount_msat),
             given AS (
                UPDATE sessions
                SET spent_msat = spent_msat - held.amount_msat,
                    failed_msat = failed_msat + held.amount_msat,
                    last_used_at = GREATEST(last_used_at, $4)
                FROM held WHERE sessions.id = held.session AND sessions.closed_at IS NULL
                  AND sessions.failed_msat + held.amount_msat <= ($3 - 1) * sessions.spent_msat
                RETURNING 1)
             SELECT (SELECT count(*) FROM held), (SELECT count(*) FROM given),
                (SELECT session FROM held LIMIT 1), (SELECT amount_msat FROM held LIMIT 1)",
            )
            .bind(&holder.token)
            .bind(&holder.replica)
            .bind(i64::from(spend_at))
            .bind(now as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        if let (Some(session), 0) = (session, given) {
            // Kept, not given back: the session's idle time starts again
            // all the same (a row changes once per statement, so apart),
            // and what the failed answer did not use goes back.
            let back = kept_msat.map_or(0, |kept| {
                (amount.unwrap_or(0).max(0) as u64).saturating_sub(kept)
            });
            sqlx::query(
                "UPDATE sessions SET last_used_at = GREATEST(last_used_at, $2),
                    spent_msat = spent_msat - $3
                 WHERE id = $1 AND closed_at IS NULL",
            )
            .bind(session)
            .bind(now as i64)
            .bind(back as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        }
        Ok(match (held, given) {
            (0, _) => AfterFailure::NotHeld,
            (_, 0) => AfterFailure::Spent,
            _ => AfterFailure::Released,
        })
    }

    async fn undo_debits_of(&self, replica: &str) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let n = undo_debits_in(&mut tx, replica).await?;
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    async fn has_held_debits(&self, id: &[u8; 32]) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM session_debits WHERE session = $1)")
            .bind(&id[..])
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    async fn debit_holders(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT DISTINCT replica FROM session_debits")
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    async fn replica_running(&self, replica: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let free = take_free_name(&mut tx, replica).await?;
        tx.rollback().await.map_err(db)?;
        Ok(!free)
    }

    async fn undo_debits_of_stopped(&self, replica: &str) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        if !take_free_name(&mut tx, replica).await? {
            tx.rollback().await.map_err(db)?;
            return Ok(None);
        }
        let n = undo_debits_in(&mut tx, replica).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(n))
    }

    async fn top_up(
        &self,
        id: &[u8; 32],
        payment_hash: &[u8; 32],
        amount_msat: u64,
        now: u64,
    ) -> Result<TopUp, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted = sqlx::query(
            "INSERT INTO session_credits (payment_hash, session, amount_msat, at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&payment_hash[..])
        .bind(&id[..])
        .bind(amount_msat as i64)
        .bind(now as i64)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if inserted == 0 {
            let session: Vec<u8> =
                sqlx::query_scalar("SELECT session FROM session_credits WHERE payment_hash = $1")
                    .bind(&payment_hash[..])
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
            return Ok(if session == id[..] {
                TopUp::AlreadyCredited
            } else {
                TopUp::DepositSpent
            });
        }
        let deposit: Option<i64> = sqlx::query_scalar(
            "UPDATE sessions SET deposit_msat = deposit_msat + $2, last_used_at = $3
             WHERE id = $1 AND closed_at IS NULL RETURNING deposit_msat",
        )
        .bind(&id[..])
        .bind(amount_msat as i64)
        .bind(now as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(deposit) = deposit else {
            // Nothing credited: the credit row goes with the transaction.
            let known = read_session(&mut tx, id).await?;
            tx.rollback().await.map_err(db)?;
            return Ok(match known {
                None => TopUp::NotFound,
                Some(_) => TopUp::Closed,
            });
        };
        tx.commit().await.map_err(db)?;
        Ok(TopUp::Credited {
            deposit_msat: deposit as u64,
        })
    }

    async fn close_session(
        &self,
        id: &[u8; 32],
        now: u64,
        unless_in_flight: bool,
    ) -> Result<Closing, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        if unless_in_flight {
            // The session's row first, as a debit takes it: a debit under
            // way is waited for, and the next statement sees its hold.
            let open: Option<bool> = sqlx::query_scalar(
                "SELECT closed_at IS NULL FROM sessions WHERE id = $1 FOR UPDATE",
            )
            .bind(&id[..])
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM session_debits WHERE session = $1)",
            )
            .bind(&id[..])
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            if open == Some(true) && held {
                return Ok(Closing::InFlight);
            }
        }
        let closed: Option<(i64, Option<String>)> = sqlx::query_as(
            "UPDATE sessions SET closed_at = coalesce(closed_at, $2),
                refund_msat = CASE WHEN closed_at IS NULL THEN GREATEST(deposit_msat - spent_msat, 0) ELSE refund_msat END,
                refund_status = 'pending', refund_taken_at = $2
             WHERE id = $1 AND (closed_at IS NULL OR (refund_status = 'failed' AND return_invoice IS NOT NULL))
             RETURNING refund_msat, return_invoice",
        )
        .bind(&id[..])
        .bind(now as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if let Some((refund, return_invoice)) = closed {
            return Ok(Closing::Closed {
                refund_msat: refund as u64,
                return_invoice,
            });
        }
        Ok(match self.session(id).await? {
            None => Closing::NotFound,
            Some(s) => Closing::AlreadyClosed(s),
        })
    }

    async fn record_refund(&self, id: &[u8; 32], status: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET refund_status = $2 WHERE id = $1")
            .bind(&id[..])
            .bind(status)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn take_owed_refunds(
        &self,
        taken_before: u64,
        now: u64,
        limit: u64,
    ) -> Result<Vec<OwedRefund>, StoreError> {
        // SKIP LOCKED: replicas asking at once take different rows; the
        // outer WHERE is checked again on the locked row.
        let owed: Vec<(Vec<u8>, i64, String)> = sqlx::query_as(&format!(
            "UPDATE sessions SET refund_status = 'pending', refund_taken_at = $2
             WHERE id IN (
                 SELECT id FROM sessions
                 WHERE {REFUND_OWED} AND coalesce(refund_taken_at, closed_at) < $1
                 ORDER BY coalesce(refund_taken_at, closed_at) LIMIT $3
                 FOR UPDATE SKIP LOCKED)
               AND refund_status IN ('pending', 'failed')
               AND coalesce(refund_taken_at, closed_at) < $1
             RETURNING id, refund_msat, return_invoice"
        ))
        .bind(taken_before as i64)
        .bind(now as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(owed.into_iter().filter_map(OwedRefund::from_row).collect())
    }

    async fn close_idle_sessions(
        &self,
        now: u64,
        limit: u64,
    ) -> Result<Vec<ClosedIdle>, StoreError> {
        // A debit at the same moment updates the session's row (its
        // last_used_at): the close waits for it and checks the row again,
        // and finds it no longer idle. SKIP LOCKED: replicas closing at
        // once take different rows.
        let closed: Vec<(Vec<u8>, i64, Option<String>)> = sqlx::query_as(
            "UPDATE sessions SET closed_at = $1,
                refund_msat = GREATEST(deposit_msat - spent_msat, 0),
                refund_status = 'pending', refund_taken_at = $1
             WHERE id IN (
                 SELECT id FROM sessions
                 WHERE closed_at IS NULL AND last_used_at + idle_secs < $1
                   AND NOT EXISTS (SELECT 1 FROM session_debits WHERE session_debits.session = sessions.id)
                 LIMIT $2 FOR UPDATE SKIP LOCKED)
               AND closed_at IS NULL AND last_used_at + idle_secs < $1
               AND NOT EXISTS (SELECT 1 FROM session_debits WHERE session_debits.session = sessions.id)
             RETURNING id, refund_msat, return_invoice",
        )
        .bind(now as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(closed
            .into_iter()
            .filter_map(ClosedIdle::from_row)
            .collect())
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        let claims = sqlx::query(
            "DELETE FROM challenges WHERE expires_at < $1 AND (consumed OR holder IS NULL)",
        )
        .bind(now as i64)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        let responses = sqlx::query("DELETE FROM responses WHERE expires_at < $1")
            .bind(now as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(claims + responses)
    }

    async fn purge_records(
        &self,
        created_before: u64,
        served_before: u64,
    ) -> Result<u64, StoreError> {
        let invoices = sqlx::query("DELETE FROM invoices WHERE created_at < $1")
            .bind(created_before as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        let receipts = sqlx::query("DELETE FROM receipts WHERE served_at < $1")
            .bind(served_before as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(invoices + receipts)
    }

    async fn put_service_change(&self, change: &ServiceChange) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO admin_services (name, state, body, created, version, at, by_name)
             VALUES ($1, $2, $3, $6, nextval('admin_seq'), $4, $5)
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, body = excluded.body,
             created = excluded.created, version = excluded.version, at = excluded.at,
             by_name = excluded.by_name
             RETURNING version",
        )
        .bind(&change.name)
        .bind(change.state.as_str())
        .bind(&change.table)
        .bind(change.at as i64)
        .bind(&change.by)
        .bind(change.created)
        .fetch_one(&self.pool)
        .await
        .map(|v| v as u64)
        .map_err(db)
    }

    async fn service_changes(&self) -> Result<Vec<ServiceChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, state, body, version, at, by_name, created FROM admin_services ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get(1)?;
                Ok(ServiceChange {
                    name: r.try_get(0)?,
                    state: ServiceState::parse(&state).unwrap_or(ServiceState::Disabled),
                    table: r.try_get(2)?,
                    created: r.try_get(6)?,
                    version: r.try_get::<i64, _>(3)? as u64,
                    at: r.try_get::<i64, _>(4)? as u64,
                    by: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)
    }

    async fn put_secret_check(&self, replica: &str, check: &SecretCheck) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replica_secrets (replica, current, accepted) VALUES ($1, $2, $3)
             ON CONFLICT (replica) DO UPDATE SET current = excluded.current, accepted = excluded.accepted",
        )
        .bind(replica)
        .bind(&check.current[..])
        .bind(check.accepted.concat())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn secret_checks(&self) -> Result<Vec<(String, SecretCheck)>, StoreError> {
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT replica, current, accepted FROM replica_secrets")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, current, accepted)| {
                crate::secret_check(&current, &accepted).map(|check| (name, check))
            })
            .collect())
    }

    async fn revoke(&self, payment_hash: &[u8; 32], at: u64, by: &str) -> Result<bool, StoreError> {
        sqlx::query(
            "INSERT INTO revocations (payment_hash, seq, at, by_name)
             VALUES ($1, nextval('admin_seq'), $2, $3) ON CONFLICT (payment_hash) DO NOTHING",
        )
        .bind(&payment_hash[..])
        .bind(at as i64)
        .bind(by)
        .execute(&self.pool)
        .await
        .map(|done| done.rows_affected() == 1)
        .map_err(db)
    }

    async fn revocations(&self, after: u64) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT payment_hash, seq, at, by_name FROM revocations WHERE seq > $1 ORDER BY seq",
        )
        .bind(after as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(Revocation {
                    payment_hash: hash_column(r, 0)?,
                    seq: r.try_get::<i64, _>(1)? as u64,
                    at: r.try_get::<i64, _>(2)? as u64,
                    by: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)
    }

    async fn admin_versions(&self) -> Result<AdminVersions, StoreError> {
        let (services, revocations): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(version), 0) FROM admin_services),
                    (SELECT COALESCE(MAX(seq), 0) FROM revocations)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(AdminVersions {
            services: services as u64,
            revocations: revocations as u64,
        })
    }

    async fn add_challenge_counts(&self, counts: &[ChallengeCount]) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        // In key order, as `record_payments`, for the same reason.
        let mut sorted: Vec<&ChallengeCount> = counts.iter().collect();
        sorted.sort_unstable_by(|a, b| (&a.service, a.hour).cmp(&(&b.service, b.hour)));
        let services: Vec<&str> = sorted.iter().map(|c| c.service.as_str()).collect();
        let hours: Vec<i64> = sorted.iter().map(|c| c.hour as i64).collect();
        let added: Vec<i64> = sorted.iter().map(|c| c.count as i64).collect();
        sqlx::query(
            "INSERT INTO challenge_counts (service, hour, count)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[])
             ON CONFLICT (service, hour) DO UPDATE SET count = challenge_counts.count + excluded.count",
        )
        .bind(services)
        .bind(hours)
        .bind(added)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(db)
    }

    async fn challenge_counts(
        &self,
        since: u64,
        until: u64,
    ) -> Result<Vec<ChallengeCount>, StoreError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT service, hour, count FROM challenge_counts
             WHERE hour >= $1 AND hour < $2 ORDER BY hour, service",
        )
        .bind(since as i64)
        .bind(until.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(service, hour, count)| ChallengeCount {
                service,
                hour: hour as u64,
                count: count as u64,
            })
            .collect())
    }

    async fn payments(&self, query: &PaymentQuery) -> Result<Vec<PaymentRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT payment_hash, service, scheme, amount_msat, first_served_at,
                    COALESCE(last_served_at, first_served_at), served
             FROM payments
             WHERE first_served_at >= $1 AND first_served_at < $2
               AND ($3::text IS NULL OR service = $3) AND ($4::text IS NULL OR scheme = $4)
               AND ($5::bytea IS NULL OR payment_hash = $5)
             ORDER BY first_served_at DESC, payment_hash LIMIT $6",
        )
        .bind(query.since as i64)
        .bind(query.until.min(i64::MAX as u64) as i64)
        .bind(&query.service)
        .bind(&query.scheme)
        .bind(query.payment_hash.map(|h| h.to_vec()))
        .bind(query.limit.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(PaymentRow {
                    payment_hash: hash_column(r, 0)?,
                    service: r.try_get(1)?,
                    scheme: r.try_get(2)?,
                    amount_msat: r.try_get::<i64, _>(3)? as u64,
                    first_served_at: r.try_get::<i64, _>(4)? as u64,
                    last_served_at: r.try_get::<i64, _>(5)? as u64,
                    served: r.try_get::<i64, _>(6)? as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)
    }

    async fn revenue(
        &self,
        since: u64,
        until: u64,
        bucket_secs: u64,
    ) -> Result<Vec<RevenueBucket>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT service, bucket, SUM(payments)::bigint, SUM(amount)::bigint,
                    SUM(served)::bigint, SUM(refunded)::bigint
             FROM (
                SELECT service, (first_served_at / $3) * $3 AS bucket, 1 AS payments,
                       amount_msat AS amount, served, 0 AS refunded
                FROM payments WHERE first_served_at >= $1 AND first_served_at < $2
                UNION ALL
                SELECT service, (closed_at / $3) * $3, 0, 0, 0, (refund_msat / 1000) * 1000
                FROM sessions WHERE refund_status = 'succeeded'
                    AND closed_at >= $1 AND closed_at < $2
             ) AS both_ways
             GROUP BY service, bucket ORDER BY bucket, service",
        )
        .bind(since as i64)
        .bind(until.min(i64::MAX as u64) as i64)
        .bind(bucket_secs.max(1) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(
                |(service, start, payments, amount, served, refunded)| RevenueBucket {
                    service,
                    start: start as u64,
                    payments: payments as u64,
                    amount_msat: amount as u64,
                    served: served as u64,
                    refunded_msat: refunded as u64,
                },
            )
            .collect())
    }

    async fn log_admin(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO admin_log (at, who, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(entry.at as i64)
        .bind(&entry.who)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.detail)
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(db)
    }

    async fn admin_log(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT at, who, action, target, detail FROM admin_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(at, who, action, target, detail)| AuditEntry {
                at: at as u64,
                who,
                action,
                target,
                detail,
            })
            .collect())
    }
}

/// A 32-byte hash column.
fn hash_column(row: &sqlx::postgres::PgRow, index: usize) -> Result<[u8; 32], sqlx::Error> {
    let bytes: Vec<u8> = row.try_get(index)?;
    bytes.try_into().map_err(|_| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: "not a 32-byte hash".into(),
    })
}

/// Takes the name `replica` for the while of `tx` if no process holds it
/// (as [`Store::hold_replica`] does, for as long as it runs): a lock the
/// name's holder has is one this transaction cannot take. False when held.
async fn take_free_name(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    replica: &str,
) -> Result<bool, StoreError> {
    sqlx::query_scalar(&format!(
        "SELECT pg_try_advisory_xact_lock({REPLICA_LOCK_KEY})"
    ))
    .bind(replica)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)
}

/// The statement that marks the claim on `key` spent at `now` if
/// `holder` holds it (one row affected when it did).
fn commit_one<'q>(key: &'q str, holder: &'q ClaimHolder, now: u64) -> PgQuery<'q> {
    sqlx::query(
        "UPDATE challenges SET consumed = TRUE, consumed_at = coalesce(consumed_at, $4)
         WHERE id = $1 AND holder = $2 AND holder_token = $3",
    )
    .bind(key)
    .bind(&holder.replica)
    .bind(&holder.token)
    .bind(now as i64)
}

/// The statement that keeps the debit `holder` held, `kept_msat` of it
/// when given. One statement: the hold goes, what it held beyond
/// `kept_msat` goes back to an open session, and the session's idle time
/// starts again at `now`.
fn keep_debit(holder: &ClaimHolder, kept_msat: Option<u64>, now: u64) -> PgQuery<'_> {
    sqlx::query(
        "WITH held AS (
            DELETE FROM session_debits WHERE token = $1 AND replica = $2
            RETURNING session, amount_msat)
         UPDATE sessions SET spent_msat = spent_msat - (held.amount_msat - LEAST(held.amount_msat, $3)),
            last_used_at = GREATEST(last_used_at, $4)
         FROM held WHERE sessions.id = held.session AND sessions.closed_at IS NULL",
    )
    .bind(&holder.token)
    .bind(&holder.replica)
    .bind(kept_msat.map_or(i64::MAX, |k| k.min(i64::MAX as u64) as i64))
    .bind(now as i64)
}

/// A statement with its arguments bound.
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Gives back, in `tx`, every debit `replica` holds. Returns how many.
async fn undo_debits_in(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    replica: &str,
) -> Result<u64, StoreError> {
    sqlx::query(
        "UPDATE sessions SET spent_msat = spent_msat - held.amount
         FROM (SELECT session, SUM(amount_msat) AS amount FROM session_debits
               WHERE replica = $1 GROUP BY session) AS held
         WHERE sessions.id = held.session AND sessions.closed_at IS NULL",
    )
    .bind(replica)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(sqlx::query("DELETE FROM session_debits WHERE replica = $1")
        .bind(replica)
        .execute(&mut **tx)
        .await
        .map_err(db)?
        .rows_affected())
}
