//! The sandbox's invoices in SQLite.
//!
//! A new invoice is kept in memory and written with the others made in
//! the same moment, in one transaction, by a thread that runs every few
//! milliseconds, or at once by any read or settlement: a flood of 402s
//! costs one commit per batch, not one per invoice. Test money: an
//! invoice made in the last milliseconds before a crash may be forgotten,
//! and its payer told it is unknown.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use gate402_lightning::InvoiceStatus;
use rusqlite::{params, Connection, OptionalExtension};

/// Schema versions, applied in order; `PRAGMA user_version` records how far.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE invoices (
        payment_hash BLOB PRIMARY KEY,
        preimage BLOB NOT NULL,
        bolt11 TEXT NOT NULL,
        amount_msat INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        settled_at INTEGER
    )",
    // What a payment delivered: an invoice without an amount (amount_msat
    // 0) is paid whatever its payer chose.
    "ALTER TABLE invoices ADD COLUMN paid_msat INTEGER",
    // Who paid (the hash of the secret its payer sent over HTTP): only that
    // payer is told the preimage again.
    "ALTER TABLE invoices ADD COLUMN payer_hash BLOB",
];

pub(crate) struct Store {
    conn: Mutex<Connection>,
    /// Invoices made and not written yet.
    pending: Mutex<Vec<InvoiceRow>>,
}

/// How often the writer thread writes what is pending.
const WRITE_EVERY: Duration = Duration::from_millis(20);

pub(crate) struct InvoiceRow {
    pub payment_hash: [u8; 32],
    pub preimage: [u8; 32],
    pub bolt11: String,
    /// What the invoice asks for; 0 for an invoice without an amount.
    pub amount_msat: u64,
    pub created_at: u64,
    pub expires_at: u64,
    pub settled_at: Option<u64>,
    /// What its payment delivered, once paid.
    pub paid_msat: Option<u64>,
    /// The hash of the secret its HTTP payer sent, once paid by one.
    pub payer_hash: Option<[u8; 32]>,
}

impl InvoiceRow {
    /// What its payment delivered; rows settled before `paid_msat` existed
    /// were paid their own amount.
    pub fn received_msat(&self) -> u64 {
        self.paid_msat.unwrap_or(self.amount_msat)
    }

    pub fn status(&self, now: u64) -> InvoiceStatus {
        match self.settled_at {
            Some(_) => InvoiceStatus::Settled {
                amount_msat: self.received_msat(),
                preimage: Some(self.preimage),
            },
            None if now >= self.expires_at => InvoiceStatus::Canceled,
            None => InvoiceStatus::Open,
        }
    }
}

impl Store {
    pub fn open(path: &Path) -> rusqlite::Result<Arc<Self>> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(migration)?;
            conn.pragma_update(None, "user_version", i + 1)?;
        }
        let store = Arc::new(Self {
            conn: Mutex::new(conn),
            pending: Mutex::new(Vec::new()),
        });
        let writer = Arc::downgrade(&store);
        // Ends with the store; a failure to start leaves reads to write.
        let _ = std::thread::Builder::new()
            .name("sandbox-invoices".into())
            .spawn(move || write_pending_until_gone(writer));
        Ok(store)
    }

    /// Writes what is pending; call with the connection locked.
    fn write_pending(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        let rows = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if rows.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO invoices (payment_hash, preimage, bolt11, amount_msat, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for row in &rows {
                insert.execute(params![
                    &row.payment_hash[..],
                    &row.preimage[..],
                    row.bolt11,
                    row.amount_msat as i64,
                    row.created_at as i64,
                    row.expires_at as i64
                ])?;
            }
        }
        tx.commit()
    }

    /// The connection, with every pending invoice written.
    fn conn(&self) -> rusqlite::Result<std::sync::MutexGuard<'_, Connection>> {
        // A panic while holding the lock leaves SQLite consistent; go on.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        self.write_pending(&mut conn)?;
        Ok(conn)
    }

    pub fn insert(&self, row: InvoiceRow) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(row);
    }

    pub fn get(&self, hash: &[u8; 32]) -> rusqlite::Result<Option<InvoiceRow>> {
        self.conn()?
            .query_row(
                &format!("SELECT {COLUMNS} FROM invoices WHERE payment_hash = ?1"),
                [&hash[..]],
                read_row,
            )
            .optional()
    }

    /// Up to `limit` invoices, newest first (the later written first among
    /// those made in the same second).
    pub fn recent(&self, limit: usize) -> rusqlite::Result<Vec<InvoiceRow>> {
        let conn = self.conn()?;
        let mut select = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invoices ORDER BY created_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = select.query_map([limit], read_row)?;
        rows.collect()
    }

    /// Marks an invoice paid with `paid_msat` by the payer whose secret
    /// hashes to `payer_hash`; `false` if it already was (one payment only).
    pub fn settle(
        &self,
        hash: &[u8; 32],
        now: u64,
        paid_msat: u64,
        payer_hash: Option<[u8; 32]>,
    ) -> rusqlite::Result<bool> {
        let changed = self.conn()?.execute(
            "UPDATE invoices SET settled_at = ?2, paid_msat = ?3, payer_hash = ?4
             WHERE payment_hash = ?1 AND settled_at IS NULL",
            params![
                &hash[..],
                now as i64,
                paid_msat as i64,
                payer_hash.as_ref().map(|h| &h[..])
            ],
        )?;
        Ok(changed == 1)
    }
}

/// What [`read_row`] reads, in its order.
const COLUMNS: &str = "payment_hash, preimage, bolt11, amount_msat, created_at, expires_at, settled_at, paid_msat, payer_hash";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InvoiceRow> {
    let hash: Vec<u8> = r.get(0)?;
    let preimage: Vec<u8> = r.get(1)?;
    Ok(InvoiceRow {
        payment_hash: hash.try_into().unwrap_or([0; 32]),
        preimage: preimage.try_into().unwrap_or([0; 32]),
        bolt11: r.get(2)?,
        amount_msat: r.get::<_, i64>(3)? as u64,
        created_at: r.get::<_, i64>(4)? as u64,
        expires_at: r.get::<_, i64>(5)? as u64,
        settled_at: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        paid_msat: r.get::<_, Option<i64>>(7)?.map(|m| m as u64),
        payer_hash: r
            .get::<_, Option<Vec<u8>>>(8)?
            .and_then(|h| h.try_into().ok()),
    })
}

/// The writer thread: writes what is pending every [`WRITE_EVERY`] until
/// the store is dropped.
fn write_pending_until_gone(store: Weak<Store>) {
    loop {
        std::thread::sleep(WRITE_EVERY);
        let Some(store) = store.upgrade() else {
            return;
        };
        let written = store.conn().map(drop);
        if let Err(e) = written {
            tracing::warn!(error = %e, "sandbox: cannot write new invoices; retrying");
        }
    }
}
