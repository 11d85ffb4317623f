//! The sandbox's invoices in SQLite.
//!
//! A new invoice is kept in memory and written with the others made in
//! the same quarter second, in one transaction, by a thread that wakes
//! when one arrives and waits [`WRITE_EVERY`] for more (and sleeps while
//! none do), or at once by any read or settlement of this process, or when
//! the store is dropped: a flood of 402s costs one commit per batch, not
//! one per invoice. Another process sharing the file sees an invoice once
//! it is written. Test money: an invoice made in the last quarter second
//! before a crash may be forgotten, and its payer told it is unknown.
//!
//! Unpaid invoices are deleted a day after they expired
//! ([`FORGET_UNPAID_AFTER_SECS`]), by the same thread while it writes new
//! ones: the file holds what was paid and what may still be asked about,
//! not every 402 ever answered. Paid invoices are kept.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
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
    // Invoices found by the first 8 bytes of their payment hash (then the
    // whole hash) instead of a key of all 32: the index a batch of new
    // invoices writes to is 2.4 times smaller, so more of a batch's random
    // hashes share its pages (see [`WRITE_EVERY`]). Random 32-byte hashes
    // made by this sandbox do not repeat; the key only checked that.
    "CREATE TABLE invoices_by_prefix (
        payment_hash BLOB NOT NULL,
        preimage BLOB NOT NULL,
        bolt11 TEXT NOT NULL,
        amount_msat INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        settled_at INTEGER,
        paid_msat INTEGER,
        payer_hash BLOB
     );
     INSERT INTO invoices_by_prefix
        SELECT payment_hash, preimage, bolt11, amount_msat, created_at, expires_at,
               settled_at, paid_msat, payer_hash
        FROM invoices ORDER BY rowid;
     DROP TABLE invoices;
     ALTER TABLE invoices_by_prefix RENAME TO invoices;
     CREATE INDEX invoices_hash_prefix ON invoices (substr(payment_hash, 1, 8));",
    // Unpaid invoices by expiry, to delete those long expired (see
    // [`FORGET_UNPAID_AFTER_SECS`]) whatever the order they were made in.
    // New invoices expire in about the order made: they land on the last
    // pages of this index, which a batch shares.
    "CREATE INDEX invoices_unpaid_expiry ON invoices (expires_at) WHERE settled_at IS NULL;",
];

/// Finds the rows of the payment hash `?1` through `invoices_hash_prefix`.
const BY_HASH: &str = "substr(payment_hash, 1, 8) = substr(?1, 1, 8) AND payment_hash = ?1";

pub(crate) struct Store {
    conn: Mutex<Connection>,
    pending: Arc<Pending>,
}

/// Invoices made and not written yet, shared with the writer thread.
#[derive(Default)]
struct Pending {
    rows: Mutex<Vec<InvoiceRow>>,
    /// Signalled when the first row arrives, and when the store goes.
    arrived: Condvar,
    gone: AtomicBool,
}

impl Pending {
    fn rows(&self) -> MutexGuard<'_, Vec<InvoiceRow>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long the writer thread lets new invoices gather before it writes.
/// Payment hashes are random, so each invoice lands on its own page of
/// the hash's index once the table is large, and a batch writes every page
/// it touched whole to the log: the larger the batch, the more invoices
/// share a page. Measured on a file of 317,000 invoices under a flood of
/// 402s: 20 ms wrote 9 KiB an invoice to disk and 250 ms 7 KiB, and the
/// gateway answered 8% more 402s (a sandbox that stored nothing, 23%).
const WRITE_EVERY: Duration = Duration::from_millis(250);

/// How long after it expired an unpaid invoice is deleted (seconds). Until
/// then its status is `Canceled`; after, the sandbox no longer knows it (a
/// payer is still told it expired: the invoice says when). A day, as long
/// as the gateway honours the payment ids of MCP tools, which it checks
/// against the invoice's status.
const FORGET_UNPAID_AFTER_SECS: u64 = 24 * 3600;

/// How often, at most, the writer thread deletes the unpaid invoices due
/// ([`FORGET_UNPAID_AFTER_SECS`]).
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// Invoices deleted per transaction of [`Store::forget_unpaid`]: the
/// connection is given back between two, so pays and lookups wait for one
/// at most.
const FORGET_ROWS: i64 = 1_000;

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
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            // With its version, all or nothing: a migration of several
            // statements stopped halfway would be run again on its own
            // leftovers.
            let tx = conn.transaction()?;
            tx.execute_batch(migration)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        let store = Arc::new(Self {
            conn: Mutex::new(conn),
            pending: Arc::default(),
        });
        let (writer, pending) = (Arc::downgrade(&store), store.pending.clone());
        // Ends with the store; a failure to start leaves reads to write.
        let _ = std::thread::Builder::new()
            .name("sandbox-invoices".into())
            .spawn(move || write_pending_until_gone(writer, &pending));
        Ok(store)
    }

    /// Writes what is pending; call with the connection locked.
    fn write_rows(pending: &Pending, conn: &mut Connection) -> rusqlite::Result<()> {
        let rows = std::mem::take(&mut *pending.rows());
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
        Self::write_rows(&self.pending, &mut conn)?;
        Ok(conn)
    }

    pub fn insert(&self, row: InvoiceRow) {
        let mut rows = self.pending.rows();
        rows.push(row);
        if rows.len() == 1 {
            self.pending.arrived.notify_one();
        }
    }

    pub fn get(&self, hash: &[u8; 32]) -> rusqlite::Result<Option<InvoiceRow>> {
        self.conn()?
            .query_row(
                &format!("SELECT {COLUMNS} FROM invoices WHERE {BY_HASH}"),
                [&hash[..]],
                read_row,
            )
            .optional()
    }

    /// The last `limit` invoices written, newest first (the later written
    /// first among those made in the same second). Read backwards by row,
    /// not sorted by time: the table holds every paid invoice ever, and a
    /// sort of all of it would hold the connection for as long.
    pub fn recent(&self, limit: usize) -> rusqlite::Result<Vec<InvoiceRow>> {
        let conn = self.conn()?;
        let mut select = conn.prepare_cached(&recent_sql())?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = select
            .query_map([limit], read_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // Written in the order made, but another process's batch may land
        // after a later one of this process's. Stable: the later written
        // stays first among equals.
        rows.sort_by_key(|row| std::cmp::Reverse(row.created_at));
        Ok(rows)
    }

    /// Deletes up to [`FORGET_ROWS`] unpaid invoices that expired
    /// [`FORGET_UNPAID_AFTER_SECS`] or more before `now`, the longest expired
    /// first, found through `invoices_unpaid_expiry` (an invoice that lives
    /// long holds up none of the others). Answers how many it deleted: as
    /// many as [`FORGET_ROWS`] says more may be due.
    ///
    /// # Errors
    ///
    /// SQLite's; nothing is deleted then.
    fn forget_unpaid(&self, now: u64) -> rusqlite::Result<usize> {
        let due = i64::try_from(now.saturating_sub(FORGET_UNPAID_AFTER_SECS)).unwrap_or(i64::MAX);
        self.conn()?
            .prepare_cached(FORGET)?
            .execute(params![due, FORGET_ROWS])
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
            &format!(
                "UPDATE invoices SET settled_at = ?2, paid_msat = ?3, payer_hash = ?4
                 WHERE {BY_HASH} AND settled_at IS NULL"
            ),
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

/// [`Store::forget_unpaid`]'s statement: unpaid invoices expired at `?1`
/// or before, `?2` at most, through `invoices_unpaid_expiry`.
const FORGET: &str = "DELETE FROM invoices WHERE rowid IN (
        SELECT rowid FROM invoices
        WHERE settled_at IS NULL AND expires_at <= ?1
        ORDER BY expires_at LIMIT ?2)";

/// What [`read_row`] reads, in its order.
const COLUMNS: &str = "payment_hash, preimage, bolt11, amount_msat, created_at, expires_at, settled_at, paid_msat, payer_hash";

/// [`Store::recent`]'s rows: the last `?1` written, backwards by row.
fn recent_sql() -> String {
    format!("SELECT {COLUMNS} FROM invoices ORDER BY rowid DESC LIMIT ?1")
}

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

/// The writer thread: once an invoice is pending, waits [`WRITE_EVERY`]
/// for others and writes them all, and every [`FORGET_EVERY`] deletes the
/// unpaid invoices due; sleeps while none is pending; ends when the store
/// is dropped.
fn write_pending_until_gone(store: Weak<Store>, pending: &Pending) {
    let mut forgot_at: Option<std::time::Instant> = None;
    loop {
        {
            let rows = pending.rows();
            let _rows = pending
                .arrived
                .wait_while(rows, |rows| {
                    rows.is_empty() && !pending.gone.load(Ordering::Acquire)
                })
                .unwrap_or_else(|e| e.into_inner());
        }
        if pending.gone.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(WRITE_EVERY);
        let Some(store) = store.upgrade() else {
            return;
        };
        let written = store.conn().map(drop);
        if let Err(e) = written {
            tracing::warn!(error = %e, "sandbox: cannot write new invoices; retrying");
        }
        if forgot_at.is_some_and(|at| at.elapsed() < FORGET_EVERY) {
            continue;
        }
        forgot_at = Some(std::time::Instant::now());
        loop {
            match store.forget_unpaid(crate::unix_now()) {
                Ok(deleted) => {
                    if deleted > 0 {
                        tracing::debug!(
                            deleted,
                            "sandbox: unpaid invoices a day past their expiry deleted"
                        );
                    }
                    if deleted < FORGET_ROWS as usize || pending.gone.load(Ordering::Acquire) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox: cannot delete expired unpaid invoices; retrying later");
                    break;
                }
            }
        }
    }
}

impl Drop for Store {
    /// Writes what is pending, and lets the writer thread go.
    fn drop(&mut self) {
        {
            // Under the lock, so that the thread cannot miss it between
            // its check and its wait.
            let _rows = self.pending.rows();
            self.pending.gone.store(true, Ordering::Release);
            self.pending.arrived.notify_all();
        }
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = Self::write_rows(&self.pending, conn) {
            tracing::warn!(error = %e, "sandbox: cannot write the last new invoices");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by each test for its whole run: a store's writer thread is
    /// found by its name, and a store of another test running beside it
    /// would be taken for it.
    fn one_at_a_time() -> MutexGuard<'static, ()> {
        static TESTS: Mutex<()> = Mutex::new(());
        TESTS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The steps of `sql`'s query plan.
    fn plan(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn row(byte: u8) -> InvoiceRow {
        InvoiceRow {
            payment_hash: [byte; 32],
            preimage: [byte; 32],
            bolt11: format!("lnbcrt{byte}"),
            amount_msat: 1_000,
            created_at: 1,
            expires_at: u64::MAX >> 1,
            settled_at: None,
            paid_msat: None,
            payer_hash: None,
        }
    }

    /// The ids of this process's threads named like the writer.
    fn writer_threads() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| {
                let task = task.ok()?.path();
                let comm = std::fs::read_to_string(task.join("comm")).ok()?;
                comm.starts_with("sandbox-invoice")
                    .then(|| task.file_name()?.to_str().map(str::to_owned))?
            })
            .collect()
    }

    fn voluntary_switches(tid: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// With nothing to write, the writer thread sleeps; an invoice wakes
    /// it, and it writes that invoice without any read asking.
    #[test]
    fn the_writer_sleeps_until_an_invoice_arrives() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let before = writer_threads();
        let store = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        // Its thread, named once it runs (another test's store may come
        // and go meanwhile: waited for until only this one is new).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let tid = loop {
            let new: Vec<String> = writer_threads()
                .into_iter()
                .filter(|t| !before.contains(t))
                .collect();
            match &new[..] {
                [tid] => break tid.clone(),
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => panic!("the store's writer thread: {new:?}"),
            }
        };
        let idle = voluntary_switches(&tid);
        std::thread::sleep(Duration::from_millis(300));
        let woke = voluntary_switches(&tid) - idle;
        assert!(
            woke <= 1,
            "woke {woke} times in 300 ms with nothing to write"
        );
        store.insert(row(7));
        let deadline = std::time::Instant::now() + WRITE_EVERY * 100;
        while !store.pending.rows().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(WRITE_EVERY);
        }
        assert!(store.pending.rows().is_empty(), "not written");
        assert!(voluntary_switches(&tid) > idle);
    }

    /// Dropped, the store writes what is still pending: an invoice made
    /// just before a graceful stop is known after it.
    #[test]
    fn a_dropped_store_writes_what_is_pending() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let store = Store::open(&path).unwrap();
        store.insert(row(9));
        drop(store);
        let store = Store::open(&path).unwrap();
        assert!(store.get(&[9; 32]).unwrap().is_some());
    }

    /// A file of the previous schema (keyed by the whole payment hash)
    /// keeps every invoice, paid or not, in its order, and each is found,
    /// and paid once, by its hash.
    #[test]
    fn invoices_of_the_previous_schema_are_kept() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..3] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            let insert = "INSERT INTO invoices (payment_hash, preimage, bolt11, amount_msat, created_at, expires_at, settled_at, paid_msat, payer_hash)
                          VALUES (?1, ?2, ?3, 1000, 5, 9999999999, ?4, ?5, ?6)";
            let rows = [
                (1u8, "lnbcrt1", None::<i64>, None::<i64>, None::<[u8; 32]>),
                (2, "lnbcrt2", Some(7), Some(900), Some([3; 32])),
            ];
            for (byte, bolt11, settled_at, paid_msat, payer_hash) in rows {
                let payer_hash = payer_hash.as_ref().map(|h| &h[..]);
                let (hash, preimage) = ([byte; 32], [byte + 10; 32]);
                conn.execute(
                    insert,
                    params![
                        &hash[..],
                        &preimage[..],
                        bolt11,
                        settled_at,
                        paid_msat,
                        payer_hash
                    ],
                )
                .unwrap();
            }
        }
        let store = Store::open(&path).unwrap();
        let open = store.get(&[1; 32]).unwrap().unwrap();
        assert_eq!(
            (open.preimage, open.bolt11.as_str(), open.settled_at),
            ([11; 32], "lnbcrt1", None)
        );
        let paid = store.get(&[2; 32]).unwrap().unwrap();
        assert_eq!(
            (
                paid.preimage,
                paid.settled_at,
                paid.paid_msat,
                paid.payer_hash
            ),
            ([12; 32], Some(7), Some(900), Some([3; 32]))
        );
        assert!(store.get(&[4; 32]).unwrap().is_none());
        let order: Vec<String> = store
            .recent(10)
            .unwrap()
            .into_iter()
            .map(|r| r.bolt11)
            .collect();
        assert_eq!(order, ["lnbcrt2", "lnbcrt1"]);
        assert!(store.settle(&[1; 32], 8, 1000, None).unwrap());
        assert!(!store.settle(&[1; 32], 9, 1000, None).unwrap());
        assert!(!store.settle(&[2; 32], 9, 1000, None).unwrap());
        drop(store);
        let version: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    /// Written with these expiries, in this order; a `Some` is paid then.
    fn written(store: &Store, rows: &[(u8, u64, Option<u64>)]) {
        for &(byte, expires_at, _) in rows {
            store.insert(InvoiceRow {
                expires_at,
                ..row(byte)
            });
        }
        drop(store.conn().unwrap());
        for &(byte, _, settled_at) in rows {
            if let Some(at) = settled_at {
                assert!(store.settle(&[byte; 32], at, 1_000, None).unwrap());
            }
        }
    }

    fn known(store: &Store, bytes: &[u8]) -> Vec<bool> {
        bytes
            .iter()
            .map(|b| store.get(&[*b; 32]).unwrap().is_some())
            .collect()
    }

    /// Unpaid invoices a day past their expiry are deleted, whatever was
    /// made before them (an open invoice that lives 30 days held up every
    /// later one); paid ones are kept however old.
    #[test]
    fn unpaid_invoices_are_deleted_a_day_after_they_expire() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let now = 10_000_000;
        let day = FORGET_UNPAID_AFTER_SECS;
        written(
            &store,
            &[
                (1, 100, None),
                (2, 100, Some(50)),
                (3, now - day, None),
                (4, now - day + 10, None),
                (5, 120, None),
            ],
        );
        assert_eq!(store.forget_unpaid(now).unwrap(), 3);
        assert_eq!(
            known(&store, &[1, 2, 3, 4, 5]),
            [false, true, false, true, false]
        );
        assert_eq!(store.forget_unpaid(now + 10).unwrap(), 1);
        assert_eq!(
            known(&store, &[1, 2, 3, 4, 5]),
            [false, true, false, false, false]
        );
        let paid = store.get(&[2; 32]).unwrap().unwrap();
        assert_eq!(paid.settled_at, Some(50));
        // Nothing left to delete: the paid one stays.
        assert_eq!(store.forget_unpaid(now + day * 10).unwrap(), 0);
        assert_eq!(known(&store, &[2]), [true]);
        // Found through the index of unpaid invoices by expiry, not a scan.
        let conn = store.conn().unwrap();
        let plan = plan(&conn, FORGET, params![1, 1]);
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX invoices_unpaid_expiry")),
            "{plan:?}"
        );
    }

    /// One call deletes a bounded number of invoices.
    #[test]
    fn a_deletion_is_bounded() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let count = FORGET_ROWS as usize + 5;
        for i in 0..count {
            let mut hash = [0; 32];
            hash[..8].copy_from_slice(&(i as u64).to_be_bytes());
            store.insert(InvoiceRow {
                payment_hash: hash,
                expires_at: 1,
                ..row(0)
            });
        }
        let now = FORGET_UNPAID_AFTER_SECS + 10;
        assert_eq!(store.forget_unpaid(now).unwrap(), FORGET_ROWS as usize);
        assert_eq!(store.forget_unpaid(now).unwrap(), 5);
        let left: i64 = store
            .conn()
            .unwrap()
            .query_row("SELECT count(*) FROM invoices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    /// The writer thread deletes what is due when it writes new invoices.
    #[test]
    fn the_writer_deletes_unpaid_invoices_due() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let store = Store::open(&path).unwrap();
        written(&store, &[(1, 5, None), (2, 5, Some(4))]);
        store.insert(row(3));
        // Watched through a connection of its own: a read of the store
        // would write the new invoice itself.
        let watch = Connection::open(&path).unwrap();
        let first_bytes = || -> Vec<u8> {
            watch
                .prepare("SELECT payment_hash FROM invoices ORDER BY rowid")
                .unwrap()
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .unwrap()
                .map(|hash| hash.unwrap()[0])
                .collect()
        };
        let deadline = std::time::Instant::now() + WRITE_EVERY * 100;
        while first_bytes() != [2, 3] && std::time::Instant::now() < deadline {
            std::thread::sleep(WRITE_EVERY / 5);
        }
        assert_eq!(known(&store, &[1, 2, 3]), [false, true, true]);
    }

    /// The newest invoices are read backwards by row, with no sort of the
    /// table; among those made in the same second, the later written first.
    #[test]
    fn recent_invoices_are_read_backwards_without_a_sort() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        for (byte, created_at) in [(1, 5), (2, 7), (3, 7), (4, 6)] {
            store.insert(InvoiceRow {
                created_at,
                ..row(byte)
            });
        }
        let order: Vec<u8> = store
            .recent(3)
            .unwrap()
            .iter()
            .map(|r| r.payment_hash[0])
            .collect();
        assert_eq!(order, [3, 2, 4]);
        let conn = store.conn().unwrap();
        let plan = plan(&conn, &recent_sql(), [3]);
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    /// Looking an invoice up by its hash, to read or to pay it, goes
    /// through the prefix index, never a scan of the table.
    #[test]
    fn invoices_are_found_through_the_prefix_index() {
        let _one_at_a_time = one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let conn = store.conn().unwrap();
        for sql in [
            format!("SELECT {COLUMNS} FROM invoices WHERE {BY_HASH}"),
            format!("UPDATE invoices SET settled_at = 1 WHERE {BY_HASH} AND settled_at IS NULL"),
        ] {
            let plan = plan(&conn, &sql, [&[5u8; 32][..]]);
            assert!(
                plan.iter()
                    .any(|step| step.contains("USING INDEX invoices_hash_prefix")),
                "{sql}: {plan:?}"
            );
        }
    }
}
