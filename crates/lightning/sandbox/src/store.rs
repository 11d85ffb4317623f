//! The sandbox's invoices in SQLite.

use std::path::Path;
use std::sync::Mutex;

use gate402_lightning::InvoiceStatus;
use rusqlite::{params, Connection, OptionalExtension};

/// Schema versions, applied in order; `PRAGMA user_version` records how far.
const MIGRATIONS: &[&str] = &["CREATE TABLE invoices (
        payment_hash BLOB PRIMARY KEY,
        preimage BLOB NOT NULL,
        bolt11 TEXT NOT NULL,
        amount_msat INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        settled_at INTEGER
    )"];

pub(crate) struct Store {
    conn: Mutex<Connection>,
}

pub(crate) struct InvoiceRow {
    pub payment_hash: [u8; 32],
    pub preimage: [u8; 32],
    pub bolt11: String,
    pub amount_msat: u64,
    pub created_at: u64,
    pub expires_at: u64,
    pub settled_at: Option<u64>,
}

impl InvoiceRow {
    pub fn status(&self, now: u64) -> InvoiceStatus {
        match self.settled_at {
            Some(_) => InvoiceStatus::Settled {
                amount_msat: self.amount_msat,
                preimage: Some(self.preimage),
            },
            None if now >= self.expires_at => InvoiceStatus::Canceled,
            None => InvoiceStatus::Open,
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(migration)?;
            conn.pragma_update(None, "user_version", i + 1)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent; go on.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, row: &InvoiceRow) -> rusqlite::Result<()> {
        self.conn().execute(
            "INSERT INTO invoices (payment_hash, preimage, bolt11, amount_msat, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &row.payment_hash[..],
                &row.preimage[..],
                row.bolt11,
                row.amount_msat as i64,
                row.created_at as i64,
                row.expires_at as i64
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, hash: &[u8; 32]) -> rusqlite::Result<Option<InvoiceRow>> {
        self.conn()
            .query_row(
                "SELECT preimage, bolt11, amount_msat, created_at, expires_at, settled_at
                 FROM invoices WHERE payment_hash = ?1",
                [&hash[..]],
                |r| {
                    let preimage: Vec<u8> = r.get(0)?;
                    Ok(InvoiceRow {
                        payment_hash: *hash,
                        preimage: preimage.try_into().unwrap_or([0; 32]),
                        bolt11: r.get(1)?,
                        amount_msat: r.get::<_, i64>(2)? as u64,
                        created_at: r.get::<_, i64>(3)? as u64,
                        expires_at: r.get::<_, i64>(4)? as u64,
                        settled_at: r.get::<_, Option<i64>>(5)?.map(|t| t as u64),
                    })
                },
            )
            .optional()
    }

    /// Marks an invoice paid; `false` if it already was (one payment only).
    pub fn settle(&self, hash: &[u8; 32], now: u64) -> rusqlite::Result<bool> {
        let changed = self.conn().execute(
            "UPDATE invoices SET settled_at = ?2 WHERE payment_hash = ?1 AND settled_at IS NULL",
            params![&hash[..], now as i64],
        )?;
        Ok(changed == 1)
    }
}
