//! [`Store`] on SQLite.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{InvoiceRecord, ReceiptRecord, Reservation, Store, StoreError, TokenRecord};

/// Schema versions, in order; `PRAGMA user_version` says how many ran.
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
];

/// SQLite, one file; safe for several processes on one machine.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        }
        let mut conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))?
        .map_err(db)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO tokens (token_id, root_key, payment_hash, service, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![&t.token_id[..], &t.root_key[..], &t.payment_hash[..], t.service, t.created_at as i64],
            )
            .map(drop)
        })
        .await
    }

    async fn root_key(&self, token_id: &[u8; 32]) -> Result<Option<[u8; 32]>, StoreError> {
        let id = *token_id;
        let key: Option<Vec<u8>> = self
            .with(move |c| {
                c.query_row(
                    "SELECT root_key FROM tokens WHERE token_id = ?1",
                    [&id[..]],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        Ok(key.and_then(|k| k.try_into().ok()))
    }

    async fn revoke_token(&self, token_id: &[u8; 32]) -> Result<bool, StoreError> {
        let id = *token_id;
        self.with(move |c| {
            c.execute("DELETE FROM tokens WHERE token_id = ?1", [&id[..]])
                .map(|n| n == 1)
        })
        .await
    }

    async fn put_invoice(&self, invoice: &InvoiceRecord) -> Result<(), StoreError> {
        let i = invoice.clone();
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO invoices (payment_hash, bolt11, amount_msat, service, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![&i.payment_hash[..], i.bolt11, i.amount_msat as i64, i.service, i.created_at as i64, i.expires_at as i64],
            )
            .map(drop)
        })
        .await
    }

    async fn invoice(&self, payment_hash: &[u8; 32]) -> Result<Option<InvoiceRecord>, StoreError> {
        let hash = *payment_hash;
        self.with(move |c| {
            c.query_row(
                "SELECT bolt11, amount_msat, service, created_at, expires_at FROM invoices WHERE payment_hash = ?1",
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

    async fn reserve_challenge(
        &self,
        challenge_id: &str,
        holder: &str,
        expires_at: u64,
        lease_until: u64,
        now: u64,
    ) -> Result<Reservation, StoreError> {
        let (id, holder) = (challenge_id.to_owned(), holder.to_owned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(bool, i64)> = tx
                .query_row(
                    "SELECT consumed, lease_until FROM challenges WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?)),
                )
                .optional()?;
            let outcome = match row {
                Some((true, _)) => Reservation::Consumed,
                Some((false, lease)) if lease as u64 > now => Reservation::InFlight,
                Some((false, _)) => {
                    tx.execute(
                        "UPDATE challenges SET lease_until = ?2, holder = ?3 WHERE id = ?1",
                        params![id, lease_until as i64, holder],
                    )?;
                    Reservation::Acquired
                }
                None => {
                    tx.execute(
                        "INSERT INTO challenges (id, lease_until, expires_at, holder)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![id, lease_until as i64, expires_at as i64, holder],
                    )?;
                    Reservation::Acquired
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn commit_challenge(&self, challenge_id: &str, now: u64) -> Result<(), StoreError> {
        let id = challenge_id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE challenges SET consumed = 1, consumed_at = ?2 WHERE id = ?1",
                params![id, now as i64],
            )
            .map(drop)
        })
        .await
    }

    async fn release_challenge(&self, challenge_id: &str) -> Result<(), StoreError> {
        let id = challenge_id.to_owned();
        self.with(move |c| {
            c.execute(
                "DELETE FROM challenges WHERE id = ?1 AND consumed = 0",
                [id],
            )
            .map(drop)
        })
        .await
    }

    async fn release_leases_of(&self, holder: &str) -> Result<u64, StoreError> {
        let holder = holder.to_owned();
        self.with(move |c| {
            c.execute(
                "DELETE FROM challenges WHERE holder = ?1 AND consumed = 0",
                [holder],
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn count_freebie(&self, client: &str, service: &str) -> Result<u64, StoreError> {
        let (client, service) = (client.to_owned(), service.to_owned());
        self.with(move |c| {
            c.query_row(
                "INSERT INTO freebies (client, service, used) VALUES (?1, ?2, 1)
                 ON CONFLICT (client, service) DO UPDATE SET used = used + 1
                 RETURNING used",
                params![client, service],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn put_receipt(&self, receipt: &ReceiptRecord) -> Result<(), StoreError> {
        let r = receipt.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO receipts (payment_hash, scheme, challenge_id, service, amount_msat, served_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![&r.payment_hash[..], r.scheme, r.challenge_id, r.service, r.amount_msat as i64, r.served_at as i64],
            )
            .map(drop)
        })
        .await
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        self.with(move |c| {
            c.execute(
                "DELETE FROM challenges WHERE expires_at < ?1 AND consumed = 1",
                [now as i64],
            )
            .map(|n| n as u64)
        })
        .await
    }
}
