//! The client's audit trail and token cache, in SQLite in its data dir.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

/// Schema versions, in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &["CREATE TABLE payments (
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
    );"];

/// Why the ledger failed.
#[derive(Debug, thiserror::Error)]
#[error("client ledger: {0}")]
pub struct LedgerError(String);

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        Self(e.to_string())
    }
}

/// One payment (and, once served, its receipt).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PaymentEntry {
    /// Row id.
    pub id: i64,
    /// The URL paid for.
    pub url: String,
    /// Its origin (`scheme://host:port`), the unit of budgets and tokens.
    pub origin: String,
    /// `L402` or `Payment`.
    pub scheme: String,
    /// What was paid.
    pub amount_msat: u64,
    /// Routing fees.
    pub fee_msat: u64,
    /// The invoice's payment hash, hex.
    pub payment_hash: String,
    /// The `Payment-Receipt` received, if any.
    pub receipt: Option<String>,
    /// When (unix seconds).
    pub created_at: u64,
}

/// A paid L402 token kept for reuse.
///
/// Tokens are kept per origin and path: one gateway prices several
/// services under one origin, and a token is valid for its own only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CachedToken {
    /// The origin it was bought from.
    pub origin: String,
    /// The path it was bought for.
    pub path: String,
    /// Its payment hash, hex (names it in `gate402 tokens`).
    pub payment_hash: String,
    /// The `Authorization` value.
    pub authorization: String,
    /// Its `_valid_until` (unix seconds), when it has one.
    pub expires_at: Option<u64>,
}

/// The ledger.
pub struct Ledger {
    conn: Mutex<Connection>,
}

impl Ledger {
    /// Opens (creating and migrating) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| LedgerError(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (version, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", version + 1)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a payment; returns its id.
    pub fn record_payment(&self, entry: &PaymentEntry) -> Result<i64, LedgerError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO payments (url, origin, scheme, amount_msat, fee_msat, payment_hash, receipt, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![entry.url, entry.origin, entry.scheme, entry.amount_msat as i64, entry.fee_msat as i64, entry.payment_hash, entry.receipt, entry.created_at as i64],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Attaches the receipt a paid request got.
    pub fn attach_receipt(&self, id: i64, scheme: &str, receipt: &str) -> Result<(), LedgerError> {
        self.conn().execute(
            "UPDATE payments SET receipt = ?2, scheme = ?3 WHERE id = ?1",
            params![id, receipt, scheme],
        )?;
        Ok(())
    }

    /// Payments since `since` (unix seconds), oldest first.
    pub fn payments(&self, since: u64) -> Result<Vec<PaymentEntry>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, url, origin, scheme, amount_msat, fee_msat, payment_hash, receipt, created_at
             FROM payments WHERE created_at >= ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([since as i64], |r| {
            Ok(PaymentEntry {
                id: r.get(0)?,
                url: r.get(1)?,
                origin: r.get(2)?,
                scheme: r.get(3)?,
                amount_msat: r.get::<_, i64>(4)? as u64,
                fee_msat: r.get::<_, i64>(5)? as u64,
                payment_hash: r.get(6)?,
                receipt: r.get(7)?,
                created_at: r.get::<_, i64>(8)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps a paid L402 token for `origin`.
    pub fn cache_token(&self, token: &CachedToken, now: u64) -> Result<(), LedgerError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO tokens (origin, path, payment_hash, authorization, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![token.origin, token.path, token.payment_hash, token.authorization, token.expires_at.map(|t| t as i64), now as i64],
        )?;
        Ok(())
    }

    /// The newest unexpired token for `origin` and `path`.
    pub fn token_for(
        &self,
        origin: &str,
        path: &str,
        now: u64,
    ) -> Result<Option<CachedToken>, LedgerError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT origin, path, payment_hash, authorization, expires_at FROM tokens
                 WHERE origin = ?1 AND path = ?2 AND (expires_at IS NULL OR expires_at > ?3)
                 ORDER BY created_at DESC LIMIT 1",
                params![origin, path, now as i64],
                token,
            )
            .optional()?)
    }

    /// Every cached token.
    pub fn tokens(&self) -> Result<Vec<CachedToken>, LedgerError> {
        let conn = self.conn();
        let mut statement = conn.prepare("SELECT origin, path, payment_hash, authorization, expires_at FROM tokens ORDER BY created_at")?;
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

fn token(r: &rusqlite::Row<'_>) -> rusqlite::Result<CachedToken> {
    Ok(CachedToken {
        origin: r.get(0)?,
        path: r.get(1)?,
        payment_hash: r.get(2)?,
        authorization: r.get(3)?,
        expires_at: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
    })
}
