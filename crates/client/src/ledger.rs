//! The client's audit trail and token cache, in SQLite in its data dir.
//!
//! A payment is written down as `pending` before anything is sent, inside
//! the same transaction that checks the budget, and marked `paid` or
//! `failed` once its outcome is known. An interrupted run therefore leaves
//! a pending row that names the invoice, and the next run asks the wallet
//! how it ended instead of paying again.

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
];

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

/// A paid L402 token kept for reuse.
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
    /// The `Authorization` value.
    pub authorization: String,
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
    request_digest";

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
        conn.pragma_update(None, "journal_mode", "WAL")?;
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
        std::fs::create_dir_all(&self.locks)?;
        let name = hex::encode(&Sha256::digest(format!("{origin}\n{path}"))[..16]);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.locks.join(name + ".lock"))?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| LedgerError(e.to_string()))??;
        Ok(EndpointLock { _file: file })
    }

    /// Checks `payment`'s entry against the budget and, if it fits,
    /// records the payment as pending (whatever its entry's status), in one
    /// transaction: two processes cannot both fit into the last of a
    /// budget. Returns the new row's id.
    ///
    /// # Errors
    ///
    /// [`BeginError::Refused`] when a budget would be exceeded.
    pub fn begin_payment(
        &self,
        payment: &PendingPayment,
        budget: &Budget,
    ) -> Result<i64, BeginError> {
        let entry = &payment.entry;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
            "INSERT INTO payments (url, origin, host, path, scheme, amount_msat, fee_msat, payment_hash, status, created_at, bolt11, challenges, payment_required, idempotency_key, request_digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, 'pending', ?8, ?9, ?10, ?11, ?12, ?13)",
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
            "UPDATE payments SET status = 'paid', amount_msat = ?2, fee_msat = ?3, error = NULL WHERE id = ?1",
            params![id, amount_msat as i64, fee_msat as i64],
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

    /// Keeps a paid L402 token for its route.
    pub fn cache_token(&self, token: &CachedToken, now: u64) -> Result<(), LedgerError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO tokens (origin, method, path, services, payment_hash, authorization, expires_at, created_at, idempotency_key, request_digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
            ],
        )?;
        Ok(())
    }

    /// The newest unexpired token kept for `method` and `path` at
    /// `origin` (one kept for the method first, then one kept before
    /// methods were). Expired tokens are forgotten on the way.
    pub fn token_for(
        &self,
        origin: &str,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<Option<CachedToken>, LedgerError> {
        self.newest_token(
            "origin = ?1 AND path = ?3 AND (method = ?2 OR method = '')
             ORDER BY method = '', created_at DESC",
            params![origin, method, path],
            now,
        )
    }

    /// The newest unexpired token from `origin` that buys `services` (its
    /// macaroon's `services` caveats), whatever route it was kept for.
    pub fn token_for_services(
        &self,
        origin: &str,
        services: &str,
        now: u64,
    ) -> Result<Option<CachedToken>, LedgerError> {
        self.newest_token(
            "origin = ?1 AND services = ?2 ORDER BY created_at DESC",
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
            "DELETE FROM tokens WHERE payment_hash LIKE ?1 || '%'",
            [prefix],
        )?)
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
    expires_at, idempotency_key, request_digest";

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
            payment_hash: "00".repeat(32),
            receipt: None,
            status: PaymentState::Pending,
            error: None,
            created_at,
        }
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
        let found = |method| ledger.token_for("https://a", method, "/x", 1_000).unwrap();
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
            ledger.token_for("https://a", "POST", "/x", 2_000).unwrap(),
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
                .token_for("https://a", method, "/x", 10)
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
            .token_for("https://a", "GET", "/x", 30)
            .unwrap()
            .unwrap();
        assert_eq!(token.payment_hash, "dd");
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
}
