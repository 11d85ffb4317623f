//! The client's audit trail and token cache, in SQLite in its data dir.
//!
//! A payment is written down as `pending` before anything is sent, inside
//! the same transaction that checks the budget, and marked `paid` or
//! `failed` once its outcome is known. An interrupted run therefore leaves
//! a pending row that names the invoice, and the next run asks the wallet
//! how it ended instead of paying again.
//!
//! MPP sessions live here too: what a later call (or process) needs to
//! spend from one (its id, the deposit's preimage, the challenge to echo,
//! the return invoice), and the refunds of the closed ones.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::budget::{Budget, Window};
use crate::{Refusal, RequestKey};

/// Schema versions, in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE payments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        url TEXT NOT NULL,
        origin TEXT NOT NULL,
        scheme TEXT NOT NULL,
        amount_msat INTEGER NOT NULL,
        fee_msat INTEGER NOT NULL,
        payment_hash TEXT NOT NULL,
        receipt TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        origin TEXT NOT NULL,
        path TEXT NOT NULL,
        payment_hash TEXT NOT NULL,
        authorization TEXT NOT NULL,
        expires_at INTEGER,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (origin, path, payment_hash)
    );",
    "ALTER TABLE payments ADD COLUMN status TEXT NOT NULL DEFAULT 'paid';
    ALTER TABLE payments ADD COLUMN host TEXT NOT NULL DEFAULT '';
    ALTER TABLE payments ADD COLUMN path TEXT NOT NULL DEFAULT '';
    ALTER TABLE payments ADD COLUMN bolt11 TEXT;
    ALTER TABLE payments ADD COLUMN challenges TEXT;
    ALTER TABLE payments ADD COLUMN error TEXT;
    CREATE INDEX payments_by_status ON payments (status, origin, path);
    CREATE INDEX payments_by_time ON payments (created_at);",
    // Tokens keyed by what they buy: the method as well as the path, and
    // the services of their macaroon. Rows from before keep an empty
    // method, which stands for any.
    "CREATE TABLE tokens_by_route (
        origin TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        services TEXT,
        payment_hash TEXT NOT NULL,
        authorization TEXT NOT NULL,
        expires_at INTEGER,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (origin, method, path, payment_hash)
    );
    INSERT INTO tokens_by_route (origin, method, path, services, payment_hash, authorization, expires_at, created_at)
        SELECT origin, '', path, NULL, payment_hash, authorization, expires_at, created_at FROM tokens;
    DROP TABLE tokens;
    ALTER TABLE tokens_by_route RENAME TO tokens;
    CREATE INDEX tokens_by_services ON tokens (origin, services);",
    // x402's offer, to answer it once a pending payment completes; the
    // Idempotency-Key of the request paid for, and that request's digest.
    // A token's request still without an answer: its Idempotency-Key and
    // digest.
    "ALTER TABLE payments ADD COLUMN payment_required TEXT;
    ALTER TABLE payments ADD COLUMN idempotency_key TEXT;
    ALTER TABLE payments ADD COLUMN request_digest TEXT;
    ALTER TABLE tokens ADD COLUMN idempotency_key TEXT;
    ALTER TABLE tokens ADD COLUMN request_digest TEXT;",
    // MPP sessions (draft-lightning-session-00): the deposit's preimage is
    // their bearer secret, kept like the tokens, owner only. A session may
    // serve several routes of its service. Deposits and top-ups are
    // payments naming their session; refunds are kept apart.
    "ALTER TABLE payments ADD COLUMN session_id TEXT;
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        host TEXT NOT NULL,
        realm TEXT NOT NULL,
        services TEXT,
        preimage TEXT NOT NULL,
        challenge TEXT NOT NULL,
        unit_sats INTEGER NOT NULL,
        deposit_sats INTEGER NOT NULL,
        spent_sats INTEGER NOT NULL DEFAULT 0,
        idle_timeout_secs INTEGER,
        return_invoice TEXT,
        return_hash TEXT,
        opened INTEGER NOT NULL DEFAULT 0,
        opened_at INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        closed_at INTEGER,
        close_reason TEXT
    );
    CREATE TABLE session_routes (
        origin TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        session_id TEXT NOT NULL,
        PRIMARY KEY (origin, method, path, session_id)
    );
    CREATE INDEX sessions_by_service ON sessions (origin, realm, services);
    CREATE TABLE refunds (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        url TEXT NOT NULL,
        origin TEXT NOT NULL,
        host TEXT NOT NULL,
        refund_msat INTEGER NOT NULL,
        status TEXT NOT NULL,
        received_msat INTEGER,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
    // MPP credentials kept until served, in the field their challenge named.
    "ALTER TABLE tokens ADD COLUMN field TEXT NOT NULL DEFAULT 'Authorization';",
    // The request a kept MPP credential pays for (its digest): sent with
    // that request only.
    "ALTER TABLE tokens ADD COLUMN bound_to TEXT;",
    // A payment hash is looked up before every payment (paid for another
    // origin?) and when a receipt is booked.
    "CREATE INDEX payments_by_hash ON payments (payment_hash);",
    // The run (process) that began or settled a payment: what one run
    // paid is told apart from what runs beside it on the same ledger paid.
    "ALTER TABLE payments ADD COLUMN run TEXT;",
    // Whether a paid top-up's `topUp` was answered: 1 credited, 0
    // refused, NULL never answered (sent again before another is paid);
    // 2: its session closed, it opened a session of its own.
    // Top-ups booked before this column were credited when a receipt came
    // back ('MPP session top-up' is `TOP_UP_SCHEME`).
    "ALTER TABLE payments ADD COLUMN top_up_credited INTEGER;
    UPDATE payments SET top_up_credited = 1
        WHERE scheme = 'MPP session top-up' AND receipt IS NOT NULL;",
];

/// Whether a refund as recorded (`refund_msat`, its `status`, what
/// arrived) can change no more: `succeeded` with what it said arrived or
/// nothing owed, or `skipped` (no return invoice). Any other (`pending`,
/// `failed`; `unknown`, words that were no figure or a session the server
/// did not know; `disputed`, more than was deposited) is asked about
/// again: a server that answers sense later, and a refund that arrives
/// later, are booked.
pub fn refund_is_final(refund_msat: u64, status: &str, received_msat: Option<u64>) -> bool {
    match status {
        "skipped" => true,
        "succeeded" => refund_msat == 0 || received_msat.is_some_and(|r| r >= refund_msat),
        _ => false,
    }
}

/// This process's run id, random: the `run` of the payments it begins or
/// settles.
fn this_run() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| hex::encode(rand::random::<[u8; 8]>()))
}

/// Why the ledger failed.
#[derive(Debug, thiserror::Error)]
#[error("client ledger: {0}")]
pub struct LedgerError(String);

impl LedgerError {
    /// A row that does not hold what the ledger writes.
    pub fn corrupt(what: String) -> Self {
        Self(format!("corrupt entry: {what}"))
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<std::io::Error> for LedgerError {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentState {
    /// Sent (or about to be) and not yet known to have ended.
    Pending,
    /// Paid: the preimage is known.
    Paid,
    /// Failed for good: nothing left the wallet.
    Failed,
}

impl PaymentState {
    fn parse(text: &str) -> Self {
        match text {
            "pending" => PaymentState::Pending,
            "failed" => PaymentState::Failed,
            _ => PaymentState::Paid,
        }
    }
}

/// One payment (and, once served, its receipt).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PaymentEntry {
    /// Row id.
    pub id: i64,
    /// The URL paid for.
    pub url: String,
    /// Its origin (`scheme://host:port`), the unit of the token cache.
    pub origin: String,
    /// Its host, the unit of per-domain budgets.
    pub host: String,
    /// Its path.
    pub path: String,
    /// The scheme answered with: `L402`, `Payment` (MPP) or `x402`.
    pub scheme: String,
    /// What was paid (or is being paid).
    pub amount_msat: u64,
    /// Routing fees.
    pub fee_msat: u64,
    /// The invoice's payment hash, hex.
    pub payment_hash: String,
    /// The `Payment-Receipt` received, if any (for x402 without one, its
    /// `PAYMENT-RESPONSE`).
    pub receipt: Option<String>,
    /// Where it stands.
    pub status: PaymentState,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When (unix seconds).
    pub created_at: u64,
    /// The MPP session it opened or topped up (its id, hex), for a
    /// session's deposit or top-up.
    pub session: Option<String>,
}

/// What a pending payment needs to be finished by a later run: the
/// invoice, the 402's offer to answer once the preimage is known, and the
/// `Idempotency-Key` of the request it pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPayment {
    /// The ledger row.
    pub entry: PaymentEntry,
    /// The invoice being paid.
    pub bolt11: String,
    /// The 402's `WWW-Authenticate` values.
    pub challenges: Vec<String>,
    /// The 402's `PAYMENT-REQUIRED` value (x402), when it had one.
    pub payment_required: Option<String>,
    /// The key the paid request goes out with, when it has one the client
    /// made: a retry of the same request in a later run sends it again.
    pub request_key: Option<RequestKey>,
}

/// A paid L402 token kept for reuse, or a paid MPP credential kept until
/// it is served (its request was answered with a server error, or not at
/// all: the gateway left it unspent for a retry).
///
/// Tokens are kept per origin, method and path, with the services their
/// macaroon names: one gateway prices several services under one origin
/// (two on one path, split by method, among them), and a token is valid
/// for its own only. One token may be kept for several routes of its
/// service, a row each.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CachedToken {
    /// The origin it was bought from.
    pub origin: String,
    /// The method it was bought for (empty: kept before methods were, any).
    pub method: String,
    /// The path it was bought for.
    pub path: String,
    /// The macaroon's `services` caveats, when it has them.
    pub services: Option<String>,
    /// Its payment hash, hex (names it in `gate402 tokens`).
    pub payment_hash: String,
    /// The credential as sent (`L402 …`, `Payment …`).
    pub authorization: String,
    /// The header field it is sent in: `Authorization`, or
    /// `Payment-Authorization` where an MPP challenge named that field.
    pub field: String,
    /// For an MPP credential, the request it was bought for (a digest of
    /// its method, URL and body, [`crate::RequestKey::digest`]; of a tool
    /// call, its tool and arguments): its challenge binds the body and its
    /// price may depend on the query or arguments, so it is sent with that
    /// request alone (another would be refused, and the credential lost
    /// with it). `None` for an L402 token, which pays for its route.
    pub bound_to: Option<String>,
    /// Its `_valid_until` (unix seconds), when it has one.
    pub expires_at: Option<u64>,
    /// The key of a request sent with it that got no answer (lost in
    /// transit, or the run ended first): the same request sent again with
    /// the token, in this run or a later one, carries the same key, so an
    /// API that keeps answers by key replays the first one instead of
    /// acting twice.
    #[serde(skip)]
    pub unanswered: Option<RequestKey>,
}

impl CachedToken {
    /// The key it was last sent with, unanswered, when `own` (this run's
    /// key for the request at hand) was made for the same request: that
    /// request is then its retry, and goes with that key.
    pub fn unanswered_for(&self, own: Option<&RequestKey>) -> Option<&RequestKey> {
        self.unanswered
            .as_ref()
            .filter(|kept| own.is_some_and(|own| kept.request_digest == own.request_digest))
    }

    /// Whether it pays for one request (an MPP credential, or an L402
    /// token whose macaroon has a `<service>_uses` caveat): once a request
    /// with it is served, it is spent.
    pub fn single_use(&self) -> bool {
        use gate402_l402::caveat::{Caveat, USES_SUFFIX};
        let mpp = self
            .authorization
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("Payment "));
        mpp || gate402_l402::L402Credential::from_authorization(&self.authorization).is_ok_and(
            |token| {
                token
                    .token()
                    .first_party_caveats()
                    .filter_map(Caveat::parse)
                    .any(|c| c.condition.ends_with(USES_SUFFIX))
            },
        )
    }
}

/// An MPP session the client opened, as kept in the ledger.
///
/// Its preimage is the bearer secret of the deposit (never serialized);
/// the balance is the client's own count (deposits less the unit price of
/// each request served), exact for a balance spent per request, an
/// estimate for one metered as a stream flows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredSession {
    /// The session id: the payment hash of the deposit that opened it, hex.
    pub id: String,
    /// The origin it was opened at (`scheme://host:port`).
    pub origin: String,
    /// The method of the request that opened it.
    pub method: String,
    /// The path of the request that opened it.
    pub path: String,
    /// The origin's host (the unit of per-domain budgets).
    pub host: String,
    /// The challenge's `realm`.
    pub realm: String,
    /// The `services` caveats of the L402 token offered with it, when one
    /// was: another route of the same service may spend the session too.
    pub services: Option<String>,
    /// The deposit's preimage, hex: the bearer secret.
    #[serde(skip)]
    pub preimage: String,
    /// The challenge echoed in `bearer` and `close` (a `ChallengeEcho` as
    /// JSON): the one the session was opened with.
    #[serde(skip)]
    pub challenge: String,
    /// The price of one unit, in satoshis.
    pub unit_sats: u64,
    /// Deposited so far (the opening deposit and every top-up), in
    /// satoshis.
    pub deposit_sats: u64,
    /// Spent so far as the client counts it, in satoshis.
    pub spent_sats: u64,
    /// The server's idle timeout, in seconds, when it stated one.
    pub idle_timeout_secs: Option<u64>,
    /// The amountless invoice the unspent balance is refunded to.
    pub return_invoice: Option<String>,
    /// Its payment hash, hex.
    pub return_hash: Option<String>,
    /// Whether the server answered the `open` (until then the next call
    /// sends `open` again rather than `bearer`).
    pub opened: bool,
    /// When it was opened (unix seconds).
    pub opened_at: u64,
    /// When it last served a request (unix seconds).
    pub last_used_at: u64,
    /// When the client took it as closed (unix seconds), if it has.
    pub closed_at: Option<u64>,
    /// Why it was taken as closed: `close`, `idle`, `closed by the
    /// server`, ….
    pub close_reason: Option<String>,
}

impl StoredSession {
    /// What is left as the client counts it, in satoshis.
    pub fn balance_sats(&self) -> u64 {
        self.deposit_sats.saturating_sub(self.spent_sats)
    }

    /// Whether it has been idle past the server's idle timeout at `now`
    /// (unix seconds): the server closes and refunds it on its own then.
    pub fn idle_at(&self, now: u64) -> bool {
        self.idle_timeout_secs
            .is_some_and(|idle| now >= self.last_used_at.saturating_add(idle))
    }
}

/// The [`Refund::reason`] of a session the server had closed before the
/// client asked (idle on the server, or closed by its operator).
pub const CLOSED_BY_THE_SERVER: &str = "closed by the server";

/// The refund of a closed session, as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refund {
    /// Row id.
    pub id: i64,
    /// The session's id, hex.
    pub session: String,
    /// Where the session was opened (origin and path).
    pub url: String,
    /// Its origin.
    pub origin: String,
    /// Its host.
    pub host: String,
    /// What the server says it refunded, in millisatoshis (at most what
    /// the session was deposited).
    pub refund_msat: u64,
    /// The server's `refundStatus`: `succeeded`, `failed`, `skipped`
    /// (nothing left) or `pending`; `unknown` when it said another word
    /// or none; or `disputed` when it said it refunded more than was ever
    /// deposited (the deposit is recorded).
    pub status: String,
    /// What the wallet saw arrive on the return invoice, in
    /// millisatoshis, when it can see its invoices (not NWC).
    pub received_msat: Option<u64>,
    /// Why the session was closed: `close` (asked for), `idle` (past its
    /// idle timeout), [`CLOSED_BY_THE_SERVER`].
    pub reason: String,
    /// When (unix seconds).
    pub created_at: u64,
}

impl Refund {
    /// What the server says it refunded, in whole satoshis (rounded down).
    pub fn refund_sats(&self) -> u64 {
        self.refund_msat / 1000
    }
}

/// Held while one endpoint is being paid for; dropping it lets the next
/// request (in this process or another) in. An OS file lock, so a process
/// killed while holding it releases it.
#[derive(Debug)]
pub struct EndpointLock {
    _file: std::fs::File,
}

/// The ledger.
pub struct Ledger {
    conn: Mutex<Connection>,
    locks: PathBuf,
}

const COLUMNS: &str = "id, url, origin, host, path, scheme, amount_msat, fee_msat, payment_hash, \
    receipt, status, error, created_at, bolt11, challenges, payment_required, idempotency_key, \
    request_digest, session_id";

/// Puts the ledger in WAL mode. Switching needs the database to itself,
/// and SQLite answers "database is locked" at once, without waiting, when
/// another process opening the same new ledger holds it: that is retried
/// for up to 30 seconds, as every other wait on the ledger is.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

impl Ledger {
    /// Opens (creating and migrating) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        // Cached L402 tokens are bearer credentials: owner only, from the
        // start (SQLite gives its -wal and -shm files the database's mode).
        {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| LedgerError(format!("{}: {e}", dir.display())))?;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .and_then(|file| file.set_permissions(private))
                .map_err(|e| LedgerError(format!("{}: {e}", path.display())))?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        set_wal(&conn)?;
        // Read the version inside the write transaction: processes opening
        // a new ledger at once must not both run the same migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for sql in MIGRATIONS.iter().skip(applied) {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len().max(applied))?;
        tx.commit()?;
        Ok(Self {
            conn: Mutex::new(conn),
            locks: dir.join("locks"),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for, and takes, the lock of one endpoint (`origin` + `path`).
    pub async fn lock_endpoint(
        &self,
        origin: &str,
        path: &str,
    ) -> Result<EndpointLock, LedgerError> {
        let file = self.endpoint_lock_file(origin, path)?;
        // Asked again and again, not waited for on a blocking thread: a
        // run stopped meanwhile (`--max-time`, Ctrl-C) ends at once,
        // where a thread blocked taking the lock held the runtime's
        // shutdown until the other run let it go.
        let mut wait = std::time::Duration::from_millis(5);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(EndpointLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
    }

    /// Waits for, and takes, the lock of the services `services` of
    /// `origin` (an L402 `services` caveat's value): held while a token
    /// good on all their routes (a pass, a balance) is bought, so that a
    /// run on another of their routes waits and takes it instead of
    /// buying its own. Taken after an endpoint's lock, never before one.
    pub async fn lock_services(
        &self,
        origin: &str,
        services: &str,
    ) -> Result<EndpointLock, LedgerError> {
        // No path is named so: paths begin with `/`.
        self.lock_endpoint(origin, &format!("services={services}"))
            .await
    }

    /// Takes the lock of one endpoint if nobody holds it: `None` while a
    /// request of that endpoint pays or is being answered.
    pub fn try_lock_endpoint(
        &self,
        origin: &str,
        path: &str,
    ) -> Result<Option<EndpointLock>, LedgerError> {
        let file = self.endpoint_lock_file(origin, path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(EndpointLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    fn endpoint_lock_file(&self, origin: &str, path: &str) -> Result<std::fs::File, LedgerError> {
        // Owner only, as the ledger: their names say which endpoints the
        // user pays for (to anyone who can guess the URL).
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.locks)?;
        let name = hex::encode(&Sha256::digest(format!("{origin}\n{path}"))[..16]);
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.locks.join(name + ".lock"))?)
    }

    /// Checks `payment`'s entry against the budget and, if it fits,
    /// records the payment as pending (whatever its entry's status), in one
    /// transaction: two processes cannot both fit into the last of a
    /// budget. Returns the new row's id.
    ///
    /// # Errors
    ///
    /// [`BeginError::Refused`] when a budget would be exceeded, or when the
    /// payment hash was paid (or is being paid) for another origin.
    pub fn begin_payment(
        &self,
        payment: &PendingPayment,
        budget: &Budget,
    ) -> Result<i64, BeginError> {
        let entry = &payment.entry;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another origin's first: it must not learn the preimage.
        let paid_before: Option<(String, String)> = tx
            .query_row(
                "SELECT origin, url FROM payments
                 WHERE payment_hash = ?1 AND status != 'failed'
                 ORDER BY origin = ?2 LIMIT 1",
                params![entry.payment_hash, entry.origin],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match paid_before {
            Some((origin, _)) if origin != entry.origin => {
                return Err(BeginError::Refused(Refusal::PaidForAnotherOrigin {
                    origin,
                }))
            }
            Some((_, url)) => return Err(BeginError::Refused(Refusal::PaidBefore { url })),
            None => {}
        }
        for (scope, window, limit_sats) in budget.limits_for(&entry.host) {
            let since = window.since(entry.created_at);
            let spent_msat: i64 = match &scope {
                Some(host) => tx.query_row(
                    "SELECT COALESCE(SUM(amount_msat + fee_msat), 0) FROM payments
                     WHERE status != 'failed' AND created_at >= ?1 AND host = ?2",
                    params![since as i64, host],
                    |r| r.get(0),
                )?,
                None => tx.query_row(
                    "SELECT COALESCE(SUM(amount_msat + fee_msat), 0) FROM payments
                     WHERE status != 'failed' AND created_at >= ?1",
                    params![since as i64],
                    |r| r.get(0),
                )?,
            };
            let spent_sats = (spent_msat as u64).div_ceil(1000);
            let price_sats = entry.amount_msat.div_ceil(1000);
            if spent_sats + price_sats > limit_sats {
                return Err(BeginError::Refused(Refusal::OverBudget {
                    budget: window.describe(scope.as_deref()),
                    spent_sats,
                    price_sats,
                    limit_sats,
                }));
            }
        }
        tx.execute(
            "INSERT INTO payments (url, origin, host, path, scheme, amount_msat, fee_msat, payment_hash, status, created_at, bolt11, challenges, payment_required, idempotency_key, request_digest, session_id, run)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, 'pending', ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                entry.url,
                entry.origin,
                entry.host,
                entry.path,
                entry.scheme,
                entry.amount_msat as i64,
                entry.payment_hash,
                entry.created_at as i64,
                payment.bolt11,
                serde_json::to_string(&payment.challenges).unwrap_or_default(),
                payment.payment_required,
                payment.request_key.as_ref().map(|k| &k.value),
                payment.request_key.as_ref().map(|k| &k.request_digest),
                entry.session,
                this_run(),
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// Marks a pending payment paid, with what it cost.
    pub fn settle_payment(
        &self,
        id: i64,
        amount_msat: u64,
        fee_msat: u64,
    ) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE payments SET status = 'paid', amount_msat = ?2, fee_msat = ?3, error = NULL, run = ?4 WHERE id = ?1",
            params![id, amount_msat as i64, fee_msat as i64, this_run()],
        )?;
        Ok(())
    }

    /// Marks a pending payment failed (nothing was paid).
    pub fn fail_payment(&self, id: i64, error: &str) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE payments SET status = 'failed', error = ?2 WHERE id = ?1 AND status = 'pending'",
            params![id, error],
        )?;
        Ok(())
    }

    /// Attaches the receipt a paid request got, and the scheme it used.
    pub fn attach_receipt(
        &self,
        id: i64,
        scheme: &str,
        receipt: Option<&str>,
    ) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE payments SET receipt = COALESCE(?2, receipt), scheme = ?3 WHERE id = ?1",
            params![id, receipt, scheme],
        )?;
        Ok(())
    }

    /// Notes that payment `id` funds session `session` (a top-up whose
    /// session closed before it was credited, taken to open a session of
    /// its own).
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be written.
    pub fn note_payment_session(&self, id: i64, session: &str) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE payments SET session_id = ?2 WHERE id = ?1",
            params![id, session],
        )?;
        Ok(())
    }

    /// The payments this process began or settled since payment `id` was
    /// recorded, oldest first: with [`Ledger::last_payment_id`] taken
    /// before, what a run paid, not what other runs on the same ledger paid
    /// meanwhile.
    pub fn payments_after(&self, id: i64) -> Result<Vec<PaymentEntry>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM payments WHERE id > ?1 AND run = ?2 ORDER BY id"
        ))?;
        let rows = statement.query_map(params![id, this_run()], |r| pending(r).map(|p| p.entry))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The id of the newest payment recorded (0 when none): what a run
    /// pays is recorded after it ([`PaymentEntry::id`] grows).
    pub fn last_payment_id(&self) -> Result<i64, LedgerError> {
        Ok(self
            .conn()
            .query_row("SELECT coalesce(max(id), 0) FROM payments", [], |r| {
                r.get(0)
            })?)
    }

    /// Payments since `since` (unix seconds), oldest first.
    pub fn payments(&self, since: u64) -> Result<Vec<PaymentEntry>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM payments WHERE created_at >= ?1 ORDER BY id"
        ))?;
        let rows = statement.query_map([since as i64], |r| pending(r).map(|p| p.entry))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Pending payments for one endpoint, oldest first (all endpoints when
    /// `origin` is `None`).
    pub fn pending(
        &self,
        endpoint: Option<(&str, &str)>,
    ) -> Result<Vec<PendingPayment>, LedgerError> {
        let conn = self.conn();
        let (origin, path) = endpoint.unwrap_or_default();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM payments WHERE status = 'pending'
             AND (?1 = '' OR (origin = ?1 AND path = ?2)) ORDER BY id"
        ))?;
        let rows = statement.query_map(params![origin, path], pending)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The payments this run (this process) began that are still
    /// pending, oldest first: what it leaves pending if it stops now, not
    /// what earlier or concurrent runs left.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read.
    pub fn pending_of_this_run(&self) -> Result<Vec<PendingPayment>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM payments WHERE status = 'pending' AND run = ?1 ORDER BY id"
        ))?;
        let rows = statement.query_map([this_run()], pending)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest payment of `payment_hash` (hex), whatever its state,
    /// with what it was begun for.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn payment_by_hash(
        &self,
        payment_hash: &str,
    ) -> Result<Option<PendingPayment>, LedgerError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM payments WHERE payment_hash = ?1 ORDER BY id DESC LIMIT 1"
                ),
                [payment_hash],
                pending,
            )
            .optional()?)
    }

    /// Keeps a paid L402 token (or an MPP credential not yet served) for
    /// its route.
    pub fn cache_token(&self, token: &CachedToken, now: u64) -> Result<(), LedgerError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO tokens (origin, method, path, services, payment_hash, authorization, expires_at, created_at, idempotency_key, request_digest, field, bound_to) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                token.origin,
                token.method,
                token.path,
                token.services,
                token.payment_hash,
                token.authorization,
                token.expires_at.map(|t| t as i64),
                now as i64,
                token.unanswered.as_ref().map(|k| &k.value),
                token.unanswered.as_ref().map(|k| &k.request_digest),
                token.field,
                token.bound_to,
            ],
        )?;
        Ok(())
    }

    /// The newest unexpired token kept for `method` and `path` at
    /// `origin` (one kept for the method first, then one kept before
    /// methods were) that may go with the request of digest `request`
    /// (an L402 token, or an MPP credential bound to that request).
    /// Expired tokens are forgotten on the way.
    pub fn token_for(
        &self,
        origin: &str,
        method: &str,
        path: &str,
        request: &str,
        now: u64,
    ) -> Result<Option<CachedToken>, LedgerError> {
        self.newest_token(
            "origin = ?1 AND path = ?3 AND (method = ?2 OR method = '')
             AND (bound_to IS NULL OR bound_to = ?4)
             ORDER BY method = '', created_at DESC, rowid DESC",
            params![origin, method, path, request],
            now,
        )
    }

    /// The newest unexpired token from `origin` that buys `services` (its
    /// macaroon's `services` caveats), whatever route it was kept for: the
    /// one kept last, of those kept in the same second.
    pub fn token_for_services(
        &self,
        origin: &str,
        services: &str,
        now: u64,
    ) -> Result<Option<CachedToken>, LedgerError> {
        self.newest_token(
            "origin = ?1 AND services = ?2 ORDER BY created_at DESC, rowid DESC",
            params![origin, services],
            now,
        )
    }

    /// The first unexpired token that `filter` (a `WHERE` clause and its
    /// `ORDER BY`) selects, once expired tokens are forgotten.
    fn newest_token(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
        now: u64,
    ) -> Result<Option<CachedToken>, LedgerError> {
        let conn = self.conn();
        forget_expired(&conn, now)?;
        Ok(conn
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE {filter} LIMIT 1"),
                params,
                token,
            )
            .optional()?)
    }

    /// Notes that a request with `key` is out with the token of
    /// `payment_hash` (on every route it is kept for) and has no answer
    /// yet; it replaces any request noted before.
    pub fn note_unanswered(&self, payment_hash: &str, key: &RequestKey) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE tokens SET idempotency_key = ?2, request_digest = ?3 WHERE payment_hash = ?1",
            params![payment_hash, key.value, key.request_digest],
        )?;
        Ok(())
    }

    /// Notes that the request with `key` sent with the token of
    /// `payment_hash` was answered (a request noted since is left as it is).
    pub fn note_answered(&self, payment_hash: &str, key: &RequestKey) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE tokens SET idempotency_key = NULL, request_digest = NULL
             WHERE payment_hash = ?1 AND idempotency_key = ?2",
            params![payment_hash, key.value],
        )?;
        Ok(())
    }

    /// Forgets one token for the route it was kept for (its other routes
    /// keep it: a refusal on one says nothing of another).
    pub fn forget_token(&self, token: &CachedToken) -> Result<(), LedgerError> {
        self.conn().execute(
            "DELETE FROM tokens WHERE origin = ?1 AND method = ?2 AND path = ?3 AND payment_hash = ?4",
            params![token.origin, token.method, token.path, token.payment_hash],
        )?;
        Ok(())
    }

    /// Forgets every token of one payment, on every route (a single-use
    /// token once it was used).
    pub fn forget_payment_tokens(&self, payment_hash: &str) -> Result<(), LedgerError> {
        self.conn().execute(
            "DELETE FROM tokens WHERE payment_hash = ?1",
            params![payment_hash],
        )?;
        Ok(())
    }

    /// Every cached token.
    pub fn tokens(&self) -> Result<Vec<CachedToken>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at"
        ))?;
        let rows = statement.query_map([], token)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets tokens whose payment hash starts with `prefix` (all when empty).
    pub fn remove_tokens(&self, prefix: &str) -> Result<usize, LedgerError> {
        Ok(self.conn().execute(
            // Compared as text, not as a LIKE pattern (`%` and `_` would
            // match any hash).
            "DELETE FROM tokens WHERE substr(payment_hash, 1, length(?1)) = ?1",
            [prefix],
        )?)
    }

    /// Keeps a session (before its `open` is sent: a run that dies
    /// before the answer finds it, and opens it again) for the route it
    /// was opened on.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn keep_session(&self, session: &StoredSession) -> Result<(), LedgerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"),
            params![
                session.id,
                session.origin,
                session.method,
                session.path,
                session.host,
                session.realm,
                session.services,
                session.preimage,
                session.challenge,
                session.unit_sats as i64,
                session.deposit_sats as i64,
                session.spent_sats as i64,
                session.idle_timeout_secs.map(|s| s as i64),
                session.return_invoice,
                session.return_hash,
                session.opened,
                session.opened_at as i64,
                session.last_used_at as i64,
                session.closed_at.map(|t| t as i64),
                session.close_reason,
            ],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO session_routes (origin, method, path, session_id) VALUES (?1, ?2, ?3, ?4)",
            params![session.origin, session.method, session.path, session.id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The newest open session kept for `method` and `path` at `origin`.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn session_for_route(
        &self,
        origin: &str,
        method: &str,
        path: &str,
    ) -> Result<Option<StoredSession>, LedgerError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE closed_at IS NULL AND id IN
                     (SELECT session_id FROM session_routes WHERE origin = ?1 AND method = ?2 AND path = ?3)
                     ORDER BY opened_at DESC LIMIT 1"
                ),
                params![origin, method, path],
                stored_session,
            )
            .optional()?)
    }

    /// The newest open session at `origin` in `realm` whose L402 services
    /// are `services` and unit price `unit_sats`: one of the same service,
    /// opened on another route.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn session_for_service(
        &self,
        origin: &str,
        realm: &str,
        services: &str,
        unit_sats: u64,
    ) -> Result<Option<StoredSession>, LedgerError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE closed_at IS NULL
                     AND origin = ?1 AND realm = ?2 AND services = ?3 AND unit_sats = ?4
                     ORDER BY opened_at DESC LIMIT 1"
                ),
                params![origin, realm, services, unit_sats as i64],
                stored_session,
            )
            .optional()?)
    }

    /// Keeps session `id` for one more route of its service.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn add_session_route(
        &self,
        id: &str,
        origin: &str,
        method: &str,
        path: &str,
    ) -> Result<(), LedgerError> {
        self.conn().execute(
            "INSERT OR IGNORE INTO session_routes (origin, method, path, session_id) VALUES (?1, ?2, ?3, ?4)",
            params![origin, method, path, id],
        )?;
        Ok(())
    }

    /// Sessions, oldest first: the open ones, or all.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn sessions(&self, include_closed: bool) -> Result<Vec<StoredSession>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE ?1 OR closed_at IS NULL ORDER BY opened_at, id"
        ))?;
        let rows = statement.query_map([include_closed], stored_session)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that the server answered a session's `open`.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn note_session_opened(&self, id: &str) -> Result<(), LedgerError> {
        self.conn()
            .execute("UPDATE sessions SET opened = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Notes a request served from session `id`: `spent_sats` more spent
    /// (0 when the server gave the debit back), last used at `now`.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn note_session_spent(
        &self,
        id: &str,
        spent_sats: u64,
        now: u64,
    ) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE sessions SET spent_sats = spent_sats + ?2, last_used_at = MAX(last_used_at, ?3) WHERE id = ?1",
            params![id, spent_sats as i64, now as i64],
        )?;
        Ok(())
    }

    /// Sets what session `id` spent to what its server reported at its
    /// close (its deposits less the refund), over what was counted a
    /// request at a time: a usage-metered service charges the units its
    /// upstream reports, which the client does not see.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn note_session_settled(&self, id: &str, spent_sats: u64) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE sessions SET spent_sats = ?2 WHERE id = ?1",
            params![id, spent_sats as i64],
        )?;
        Ok(())
    }

    /// Books top-up payment `id` credited to its session: its receipt, and
    /// `deposit_sats` added to the session's deposit, together (a run
    /// killed between the two would leave the session's deposit short).
    /// Once: `false` when it was booked already.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn credit_top_up(
        &self,
        id: i64,
        receipt: Option<&str>,
        deposit_sats: u64,
    ) -> Result<bool, LedgerError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let credited = tx.execute(
            "UPDATE payments SET receipt = COALESCE(?2, receipt), top_up_credited = 1
             WHERE id = ?1 AND top_up_credited IS NULL",
            params![id, receipt],
        )? == 1;
        if credited {
            tx.execute(
                "UPDATE sessions SET deposit_sats = deposit_sats + ?2
                 WHERE id = (SELECT session_id FROM payments WHERE id = ?1)",
                params![id, deposit_sats as i64],
            )?;
        }
        tx.commit()?;
        Ok(credited)
    }

    /// Notes that the server refused top-up payment `id`: it is not sent
    /// to its session again.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn note_top_up_refused(&self, id: i64) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE payments SET top_up_credited = 0 WHERE id = ?1 AND top_up_credited IS NULL",
            [id],
        )?;
        Ok(())
    }

    /// The paid top-ups of session `id` whose `topUp` was never answered
    /// (the run was killed, or the answer lost), oldest first: to be sent
    /// again before another top-up is paid.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read.
    pub fn unanswered_top_ups(&self, id: &str) -> Result<Vec<PendingPayment>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM payments WHERE session_id = ?1 AND scheme = 'MPP session top-up'
             AND status = 'paid' AND top_up_credited IS NULL ORDER BY id"
        ))?;
        let rows = statement.query_map([id], pending)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Top-ups paid for a session of `origin` that closed before they
    /// were credited (never answered, or refused as it had closed), begun
    /// for requests to `path`, oldest first: unspent, each may open a
    /// session of its own.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read.
    pub fn orphan_top_ups(
        &self,
        origin: &str,
        path: &str,
    ) -> Result<Vec<PendingPayment>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM payments WHERE origin = ?1 AND path = ?2
             AND scheme = 'MPP session top-up' AND status = 'paid'
             AND (top_up_credited IS NULL OR top_up_credited = 0)
             AND session_id IN (SELECT id FROM sessions WHERE closed_at IS NOT NULL)
             ORDER BY id"
        ))?;
        let rows = statement.query_map(params![origin, path], pending)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Notes that top-up payment `id`, its session closed, was taken to
    /// open a session of its own: not taken again.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be written.
    pub fn note_top_up_reused(&self, id: i64) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE payments SET top_up_credited = 2 WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Replaces the challenge session `id` echoes (one that verifies
    /// where the kept one no longer does).
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn note_session_challenge(&self, id: &str, challenge: &str) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE sessions SET challenge = ?2 WHERE id = ?1",
            params![id, challenge],
        )?;
        Ok(())
    }

    /// Takes session `id` as closed at `now`, for `reason`. `false` when
    /// it was already.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn close_session(&self, id: &str, now: u64, reason: &str) -> Result<bool, LedgerError> {
        Ok(self.conn().execute(
            "UPDATE sessions SET closed_at = ?2, close_reason = ?3 WHERE id = ?1 AND closed_at IS NULL",
            params![id, now as i64, reason],
        )? == 1)
    }

    /// Records the refund of a closed session; returns its row id.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn record_refund(&self, refund: &Refund) -> Result<i64, LedgerError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO refunds (session_id, url, origin, host, refund_msat, status, received_msat, reason, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                refund.session,
                refund.url,
                refund.origin,
                refund.host,
                refund.refund_msat as i64,
                refund.status,
                refund.received_msat.map(|m| m as i64),
                refund.reason,
                refund.created_at as i64,
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Books what a later `close` of session `refund.session` said of its
    /// refund (and what arrived) over the newest refund recorded for it,
    /// unless that one was final already: `succeeded` with its amount
    /// arrived, `skipped` or `disputed`. Its id, or `None` when nothing
    /// was updated.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn update_refund(&self, refund: &Refund) -> Result<Option<i64>, LedgerError> {
        let conn = self.conn();
        let newest: Option<(i64, u64, String, Option<u64>)> = conn
            .query_row(
                "SELECT id, refund_msat, status, received_msat FROM refunds
                 WHERE session_id = ?1 ORDER BY id DESC LIMIT 1",
                [&refund.session],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, i64>(1)? as u64,
                        r.get(2)?,
                        r.get::<_, Option<i64>>(3)?.map(|m| m as u64),
                    ))
                },
            )
            .optional()?;
        let Some((id, refund_msat, status, received)) = newest else {
            return Ok(None);
        };
        if refund_is_final(refund_msat, &status, received) {
            return Ok(None);
        }
        conn.execute(
            "UPDATE refunds SET refund_msat = ?2, status = ?3, received_msat = ?4 WHERE id = ?1",
            params![
                id,
                refund.refund_msat as i64,
                refund.status,
                refund.received_msat.map(|m| m as i64),
            ],
        )?;
        Ok(Some(id))
    }

    /// Refunds since `since` (unix seconds), oldest first.
    ///
    /// # Errors
    ///
    /// [`LedgerError`] when the ledger cannot be read or written.
    pub fn refunds(&self, since: u64) -> Result<Vec<Refund>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, session_id, url, origin, host, refund_msat, status, received_msat, reason, created_at
             FROM refunds WHERE created_at >= ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([since as i64], |r| {
            Ok(Refund {
                id: r.get(0)?,
                session: r.get(1)?,
                url: r.get(2)?,
                origin: r.get(3)?,
                host: r.get(4)?,
                refund_msat: r.get::<_, i64>(5)? as u64,
                status: r.get(6)?,
                received_msat: r.get::<_, Option<i64>>(7)?.map(|m| m as u64),
                reason: r.get(8)?,
                created_at: r.get::<_, i64>(9)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Why a payment could not be begun.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    /// The budget does not allow it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl From<rusqlite::Error> for BeginError {
    fn from(e: rusqlite::Error) -> Self {
        BeginError::Ledger(e.into())
    }
}

impl Window {
    fn since(self, now: u64) -> u64 {
        match self {
            Window::Hour => now.saturating_sub(3600),
            Window::Day => now.saturating_sub(86_400),
            Window::Total => 0,
        }
    }
}

fn pending(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingPayment> {
    let challenges: Option<String> = r.get(14)?;
    Ok(PendingPayment {
        entry: PaymentEntry {
            id: r.get(0)?,
            url: r.get(1)?,
            origin: r.get(2)?,
            host: r.get(3)?,
            path: r.get(4)?,
            scheme: r.get(5)?,
            amount_msat: r.get::<_, i64>(6)? as u64,
            fee_msat: r.get::<_, i64>(7)? as u64,
            payment_hash: r.get(8)?,
            receipt: r.get(9)?,
            status: PaymentState::parse(&r.get::<_, String>(10)?),
            error: r.get(11)?,
            created_at: r.get::<_, i64>(12)? as u64,
            session: r.get(18)?,
        },
        bolt11: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
        challenges: challenges
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
        payment_required: r.get(15)?,
        request_key: match (r.get(16)?, r.get(17)?) {
            (Some(value), Some(request_digest)) => Some(RequestKey {
                value,
                request_digest,
            }),
            _ => None,
        },
    })
}

const TOKEN_COLUMNS: &str = "origin, method, path, services, payment_hash, authorization, \
    expires_at, idempotency_key, request_digest, field, bound_to";

fn token(r: &rusqlite::Row<'_>) -> rusqlite::Result<CachedToken> {
    Ok(CachedToken {
        origin: r.get(0)?,
        method: r.get(1)?,
        path: r.get(2)?,
        services: r.get(3)?,
        payment_hash: r.get(4)?,
        authorization: r.get(5)?,
        expires_at: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        unanswered: match (r.get(7)?, r.get(8)?) {
            (Some(value), Some(request_digest)) => Some(RequestKey {
                value,
                request_digest,
            }),
            _ => None,
        },
        field: r.get(9)?,
        bound_to: r.get(10)?,
    })
}

const SESSION_COLUMNS: &str = "id, origin, method, path, host, realm, services, preimage, \
    challenge, unit_sats, deposit_sats, spent_sats, idle_timeout_secs, return_invoice, return_hash, \
    opened, opened_at, last_used_at, closed_at, close_reason";

fn stored_session(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSession> {
    Ok(StoredSession {
        id: r.get(0)?,
        origin: r.get(1)?,
        method: r.get(2)?,
        path: r.get(3)?,
        host: r.get(4)?,
        realm: r.get(5)?,
        services: r.get(6)?,
        preimage: r.get(7)?,
        challenge: r.get(8)?,
        unit_sats: r.get::<_, i64>(9)? as u64,
        deposit_sats: r.get::<_, i64>(10)? as u64,
        spent_sats: r.get::<_, i64>(11)? as u64,
        idle_timeout_secs: r.get::<_, Option<i64>>(12)?.map(|s| s as u64),
        return_invoice: r.get(13)?,
        return_hash: r.get(14)?,
        opened: r.get(15)?,
        opened_at: r.get::<_, i64>(16)? as u64,
        last_used_at: r.get::<_, i64>(17)? as u64,
        closed_at: r.get::<_, Option<i64>>(18)?.map(|t| t as u64),
        close_reason: r.get(19)?,
    })
}

/// Expired tokens buy nothing any more.
fn forget_expired(conn: &Connection, now: u64) -> Result<(), LedgerError> {
    conn.execute(
        "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        [now as i64],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payment of `amount_msat` to `host`, with no offer to answer.
    fn payment(host: &str, amount_msat: u64, created_at: u64) -> PendingPayment {
        PendingPayment {
            entry: entry(host, amount_msat, created_at),
            bolt11: String::new(),
            challenges: Vec::new(),
            payment_required: None,
            request_key: None,
        }
    }

    fn entry(host: &str, amount_msat: u64, created_at: u64) -> PaymentEntry {
        PaymentEntry {
            id: 0,
            url: format!("https://{host}/x"),
            origin: format!("https://{host}"),
            host: host.into(),
            path: "/x".into(),
            scheme: "L402".into(),
            amount_msat,
            fee_msat: 0,
            // Its own hash: one hash paid for two origins is refused.
            payment_hash: {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(format!(
                    "{host} {amount_msat} {created_at}"
                )))
            },
            receipt: None,
            status: PaymentState::Pending,
            error: None,
            created_at,
            session: None,
        }
    }

    /// A server that offers an invoice over a payment hash paid for another
    /// origin is refused before the wallet is asked (which would answer
    /// with that payment's preimage); nor is it paid or booked again for
    /// its own origin (the budgets would count it twice); a failed payment
    /// gave nothing away, and the same origin may offer it again.
    #[test]
    fn a_payment_hash_paid_for_another_origin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let budget = Budget::default();
        let at = |host: &str, hash: &str| {
            let mut begun = payment(host, 1_000, 1_000_000);
            begun.entry.payment_hash = hash.to_owned();
            begun
        };
        let (paid, failed) = ("aa".repeat(32), "bb".repeat(32));
        let first = ledger
            .begin_payment(&at("a.example", &paid), &budget)
            .unwrap();
        ledger.settle_payment(first, 1_000, 0).unwrap();
        let refused = ledger.begin_payment(&at("b.example", &paid), &budget);
        assert!(
            matches!(
                &refused,
                Err(BeginError::Refused(Refusal::PaidForAnotherOrigin { origin }))
                    if origin == "https://a.example"
            ),
            "{refused:?}"
        );
        // Nor paid or booked twice for its own origin.
        let again = ledger.begin_payment(&at("a.example", &paid), &budget);
        assert!(
            matches!(&again, Err(BeginError::Refused(Refusal::PaidBefore { .. }))),
            "{again:?}"
        );
        let lost = ledger
            .begin_payment(&at("a.example", &failed), &budget)
            .unwrap();
        ledger.fail_payment(lost, "no route").unwrap();
        ledger
            .begin_payment(&at("b.example", &failed), &budget)
            .unwrap();
    }

    /// What a run paid is its own: another run on the same ledger paying
    /// meanwhile (a row another process began and settled) is not among
    /// them. Runs refused by a budget told other runs' payments as their
    /// own, "paid … the next run sends it again".
    #[test]
    fn a_runs_payments_are_its_own_not_its_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let budget = Budget::default();
        let before = ledger.last_payment_id().unwrap();
        let neighbours = ledger
            .begin_payment(&payment("a.example", 10_000, 1_000), &budget)
            .unwrap();
        ledger.settle_payment(neighbours, 10_000, 0).unwrap();
        ledger
            .conn()
            .execute(
                "UPDATE payments SET run = 'another process' WHERE id = ?1",
                [neighbours],
            )
            .unwrap();
        let own = ledger
            .begin_payment(&payment("a.example", 20_000, 1_001), &budget)
            .unwrap();
        ledger.settle_payment(own, 20_000, 0).unwrap();
        let ids: Vec<i64> = ledger
            .payments_after(before)
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, [own]);
    }

    #[test]
    fn budgets_count_pending_and_paid_but_not_failed_payments() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let budget: Budget = toml::from_str(
            "per_hour_sats = 100\ntotal_sats = 200\n[domains.\"a.example\"]\nper_day_sats = 60",
        )
        .unwrap();
        let now = 1_000_000;
        let first = ledger
            .begin_payment(&payment("a.example", 50_000, now), &budget)
            .unwrap();
        // 50 + 20 > 60 for a.example's day.
        let refused = ledger.begin_payment(&payment("a.example", 20_000, now), &budget);
        assert!(
            matches!(
                refused,
                Err(BeginError::Refused(Refusal::OverBudget {
                    spent_sats: 50,
                    limit_sats: 60,
                    ..
                }))
            ),
            "{refused:?}"
        );
        // Another domain is under the hourly budget only: 50 + 50 fits, then 1 more does not.
        ledger
            .begin_payment(&payment("b.example", 50_000, now), &budget)
            .unwrap();
        let refused = ledger.begin_payment(&payment("b.example", 1_000, now), &budget);
        assert!(
            matches!(
                refused,
                Err(BeginError::Refused(Refusal::OverBudget {
                    limit_sats: 100,
                    ..
                }))
            ),
            "{refused:?}"
        );
        // A failed payment frees its share; an hour later the hourly window is empty
        // but the total still counts.
        ledger.fail_payment(first, "no route").unwrap();
        ledger
            .begin_payment(&payment("a.example", 40_000, now), &budget)
            .unwrap();
        let later = now + 3601;
        ledger
            .begin_payment(&payment("c.example", 100_000, later), &budget)
            .unwrap();
        let much_later = later + 3601;
        let refused = ledger.begin_payment(&payment("c.example", 11_000, much_later), &budget);
        assert!(
            matches!(
                refused,
                Err(BeginError::Refused(Refusal::OverBudget {
                    limit_sats: 200,
                    spent_sats: 190,
                    ..
                }))
            ),
            "{refused:?}"
        );
        assert_eq!(ledger.pending(None).unwrap().len(), 3);
    }

    #[test]
    fn a_pending_payment_keeps_its_offer_and_request_key() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let mut begun = payment("a.example", 1_000, 10);
        begun.bolt11 = "lnbcrt1".into();
        begun.challenges = vec!["L402 macaroon=\"m\", invoice=\"lnbcrt1\"".into()];
        begun.payment_required = Some("eyJ4NDAyVmVyc2lvbiI6Mn0=".into());
        begun.request_key = Some(RequestKey {
            value: "\"k\"".into(),
            request_digest: "ab".repeat(32),
        });
        begun.entry.id = ledger.begin_payment(&begun, &Budget::default()).unwrap();
        assert_eq!(ledger.pending(None).unwrap(), [begun.clone()]);
        // Without them, as rows written before they were kept read.
        let bare = payment("a.example", 1_000, 11);
        ledger.settle_payment(begun.entry.id, 1_000, 0).unwrap();
        let id = ledger.begin_payment(&bare, &Budget::default()).unwrap();
        let found = ledger.pending(None).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].entry.id, id);
        assert_eq!(
            (
                found[0].payment_required.clone(),
                found[0].request_key.clone()
            ),
            (None, None)
        );
    }

    fn kept(
        method: &str,
        path: &str,
        services: &str,
        hash: &str,
        expires_at: Option<u64>,
    ) -> CachedToken {
        CachedToken {
            origin: "https://a".into(),
            method: method.into(),
            path: path.into(),
            services: Some(services.into()),
            payment_hash: hash.into(),
            authorization: format!("L402 {hash}"),
            field: "Authorization".into(),
            bound_to: None,
            expires_at,
            unanswered: None,
        }
    }

    #[test]
    fn tokens_are_kept_and_forgotten_per_route() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        let read = kept("GET", "/x", "read:0", "aa", None);
        let write = kept("POST", "/x", "write:0", "bb", Some(2_000));
        ledger.cache_token(&read, 100).unwrap();
        ledger.cache_token(&write, 101).unwrap();
        let found = |method| {
            ledger
                .token_for("https://a", method, "/x", "", 1_000)
                .unwrap()
        };
        assert_eq!(found("GET"), Some(read.clone()));
        assert_eq!(found("POST"), Some(write.clone()));
        assert_eq!(found("PUT"), None);
        // The same token kept for a second route of its service.
        let docs = CachedToken {
            path: "/y".into(),
            ..read.clone()
        };
        ledger.cache_token(&docs, 102).unwrap();
        assert_eq!(
            ledger
                .token_for_services("https://a", "read:0", 1_000)
                .unwrap(),
            Some(docs.clone())
        );
        // A prefix is text, not a pattern.
        assert_eq!(ledger.remove_tokens("%").unwrap(), 0);
        assert_eq!(ledger.remove_tokens("_").unwrap(), 0);
        // Forgotten on one route, kept on the others.
        ledger.forget_token(&docs).unwrap();
        assert_eq!(found("GET"), Some(read.clone()));
        assert_eq!(
            ledger
                .token_for_services("https://a", "read:0", 1_000)
                .unwrap(),
            Some(read)
        );
        // A request out with a token, unanswered, is noted on each of its
        // routes until it is answered.
        let key = RequestKey {
            value: "\"k\"".into(),
            request_digest: "d".into(),
        };
        ledger.note_unanswered("bb", &key).unwrap();
        assert_eq!(found("POST").unwrap().unanswered, Some(key.clone()));
        assert_eq!(found("GET").unwrap().unanswered, None);
        let other = RequestKey {
            value: "\"other\"".into(),
            ..key.clone()
        };
        ledger.note_answered("bb", &other).unwrap();
        assert_eq!(found("POST").unwrap().unanswered, Some(key.clone()));
        ledger.note_answered("bb", &key).unwrap();
        assert_eq!(found("POST").unwrap().unanswered, None);
        // Expired: gone.
        assert_eq!(
            ledger
                .token_for("https://a", "POST", "/x", "", 2_000)
                .unwrap(),
            None
        );
        assert_eq!(ledger.tokens().unwrap().len(), 1);
    }

    #[test]
    fn tokens_kept_before_methods_were_apply_to_any_method() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&MIGRATIONS[..2].join(";")).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO tokens (origin, path, payment_hash, authorization, expires_at, created_at)
                 VALUES ('https://a', '/x', 'cc', 'L402 cc', NULL, 1)",
                [],
            )
            .unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        for method in ["GET", "POST"] {
            let token = ledger
                .token_for("https://a", method, "/x", "", 10)
                .unwrap()
                .unwrap();
            assert_eq!(
                (token.method.as_str(), token.authorization.as_str()),
                ("", "L402 cc")
            );
        }
        // One kept for the method comes first.
        ledger
            .cache_token(&kept("GET", "/x", "read:0", "dd", None), 20)
            .unwrap();
        let token = ledger
            .token_for("https://a", "GET", "/x", "", 30)
            .unwrap()
            .unwrap();
        assert_eq!(token.payment_hash, "dd");
    }

    fn session(id: &str, path: &str, opened_at: u64) -> StoredSession {
        StoredSession {
            id: id.into(),
            origin: "https://a".into(),
            method: "GET".into(),
            path: path.into(),
            host: "a".into(),
            realm: "a".into(),
            services: Some("chat:0".into()),
            preimage: "11".repeat(32),
            challenge: "{}".into(),
            unit_sats: 1,
            deposit_sats: 20,
            spent_sats: 0,
            idle_timeout_secs: Some(300),
            return_invoice: None,
            return_hash: None,
            opened: false,
            opened_at,
            last_used_at: opened_at,
            closed_at: None,
            close_reason: None,
        }
    }

    #[test]
    fn sessions_are_kept_per_route_spent_topped_up_and_closed_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite3")).unwrap();
        ledger.keep_session(&session("s1", "/chat", 100)).unwrap();
        let route = |path| ledger.session_for_route("https://a", "GET", path).unwrap();
        assert_eq!(route("/chat").unwrap().id, "s1");
        assert_eq!(route("/other"), None);
        assert_eq!(
            ledger
                .session_for_route("https://a", "POST", "/chat")
                .unwrap(),
            None
        );
        // Another route of the service finds it by its services and price,
        // and keeps it once it served there.
        let found = ledger
            .session_for_service("https://a", "a", "chat:0", 1)
            .unwrap();
        assert_eq!(found.unwrap().id, "s1");
        assert_eq!(
            ledger
                .session_for_service("https://a", "a", "chat:0", 2)
                .unwrap(),
            None
        );
        ledger
            .add_session_route("s1", "https://a", "GET", "/other")
            .unwrap();
        assert_eq!(route("/other").unwrap().id, "s1");

        ledger.note_session_opened("s1").unwrap();
        ledger.note_session_spent("s1", 1, 150).unwrap();
        ledger.note_session_spent("s1", 0, 140).unwrap();
        // A top-up, paid: unanswered until credited, then booked once.
        let mut top_up = payment("a", 20_000, 120);
        top_up.entry.scheme = crate::TOP_UP_SCHEME.into();
        top_up.entry.session = Some("s1".into());
        let id = ledger.begin_payment(&top_up, &Budget::default()).unwrap();
        assert!(
            ledger.unanswered_top_ups("s1").unwrap().is_empty(),
            "pending"
        );
        ledger.settle_payment(id, 20_000, 0).unwrap();
        let unanswered = ledger.unanswered_top_ups("s1").unwrap();
        assert_eq!(unanswered.len(), 1);
        assert_eq!(unanswered[0].entry.id, id);
        assert!(ledger.credit_top_up(id, Some("r"), 20).unwrap());
        assert!(!ledger.credit_top_up(id, Some("r"), 20).unwrap());
        assert!(ledger.unanswered_top_ups("s1").unwrap().is_empty());
        let kept = route("/chat").unwrap();
        assert!(kept.opened);
        assert_eq!((kept.deposit_sats, kept.spent_sats), (40, 1));
        assert_eq!((kept.balance_sats(), kept.last_used_at), (39, 150));
        assert!(!kept.idle_at(449) && kept.idle_at(450));
        // What the server reported at a close stands over what was counted.
        ledger.note_session_settled("s1", 21).unwrap();
        assert_eq!(route("/chat").unwrap().balance_sats(), 19);
        ledger.note_session_settled("s1", 1).unwrap();

        // The newest open one serves a route.
        ledger.keep_session(&session("s2", "/chat", 200)).unwrap();
        assert_eq!(route("/chat").unwrap().id, "s2");
        assert!(ledger.close_session("s2", 300, "close").unwrap());
        assert!(!ledger.close_session("s2", 301, "idle").unwrap());
        assert_eq!(route("/chat").unwrap().id, "s1");
        let all = ledger.sessions(true).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[1].closed_at, all[1].close_reason.as_deref()),
            (Some(300), Some("close"))
        );
        assert_eq!(ledger.sessions(false).unwrap().len(), 1);

        let mut refund = Refund {
            id: 0,
            session: "s2".into(),
            url: "https://a/chat".into(),
            origin: "https://a".into(),
            host: "a".into(),
            refund_msat: 19_000,
            status: "succeeded".into(),
            received_msat: Some(19_000),
            reason: "close".into(),
            created_at: 300,
        };
        refund.id = ledger.record_refund(&refund).unwrap();
        assert_eq!(ledger.refunds(0).unwrap(), [refund]);
        assert!(ledger.refunds(301).unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_endpoint_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = std::sync::Arc::new(Ledger::open(&dir.path().join("l.sqlite3")).unwrap());
        let held = ledger.lock_endpoint("https://a", "/x").await.unwrap();
        let other = ledger.lock_endpoint("https://a", "/y").await.unwrap();
        let waiting = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.lock_endpoint("https://a", "/x").await.map(|_| ()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the same endpoint waits");
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        drop(other);
    }

    #[tokio::test]
    async fn the_ledger_and_its_locks_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("client");
        let ledger = Ledger::open(&home.join("ledger.sqlite3")).unwrap();
        let _held = ledger.lock_endpoint("https://a", "/x").await.unwrap();
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&home.join("ledger.sqlite3")), 0o600);
        let locks = home.join("locks");
        assert_eq!(mode(&locks), 0o700);
        for lock in std::fs::read_dir(&locks).unwrap() {
            assert_eq!(mode(&lock.unwrap().path()), 0o600);
        }
    }
}
