//! The SQLite store keeps its page cache after another SQLite connection
//! in the same process has read much (the sandbox's invoices under a burst
//! of unpaid requests, a Lightning node's own database).
//!
//! SQLite built with `SQLITE_ENABLE_MEMORY_MANAGEMENT` (libsqlite3-sys's
//! bundled build turns it on) pools the page caches of all connections of
//! a process. A connection at its own limit takes the pool's least
//! recently used page, whoever's it is; one under its limit, when the pool
//! is full, frees each page it reads as soon as it is done with it. So
//! once a busy connection has taken the idle writer's pages and the writer
//! has filled the pool again, the writer keeps a fraction of its cache for
//! good and reads every page of every statement again: sixteen reads a
//! paid request instead of one. The workspace builds SQLite without that
//! option (`.cargo/config.toml`): each connection has a cache of its own.
//!
//! A test binary of its own: other tests' stores would share the pool.

#![cfg(target_os = "linux")]

use gate402_store::{ClaimHolder, Reservation, SqliteStore, Store, StoredResponse};

/// Bytes the store's writer thread has read so far.
fn writer_reads() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() == "gate402-sqlite" {
            let io = std::fs::read_to_string(task.join("io")).unwrap();
            let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
            return line["rchar:".len()..].trim().parse().unwrap();
        }
    }
    panic!("no store writer thread in this process");
}

/// Writes `count` kept responses of a page each, under keys `prefix:N`.
async fn write_pages(store: &SqliteStore, prefix: &str, count: usize) {
    for i in 0..count {
        store
            .put_response(&StoredResponse {
                claim_key: format!("{prefix}:{i}"),
                idempotency_key: "k".into(),
                fingerprint: [0; 32],
                status: 200,
                headers: vec![],
                body: vec![7; 4_000],
                expires_at: 4_000_000_000,
                holder_token: None,
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_writer_keeps_its_cache_after_another_connection_read_much() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("gate402.sqlite3")).unwrap();
    let holder = ClaimHolder {
        replica: "r".into(),
        token: "t".into(),
    };
    assert!(matches!(
        store
            .claim("p:held", &holder, 4_000_000_000, 4_000_000_000, 1)
            .await,
        Ok(Reservation::Acquired)
    ));
    // More pages than the writer's cache may keep (8 MiB).
    write_pages(&store, "a", 3_000).await;

    // Meanwhile idle, the writer's pages are the least recently used when
    // another connection reads a database larger than every cache.
    let other = rusqlite::Connection::open(dir.path().join("other.sqlite3")).unwrap();
    other
        .execute_batch(
            "CREATE TABLE t (b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
             INSERT INTO t SELECT randomblob(3500) FROM n;",
        )
        .unwrap();
    let read: i64 = other
        .query_row("SELECT sum(length(b)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(read, 6_000 * 3_500);

    // The writer works again: more pages.
    write_pages(&store, "b", 1_000).await;

    // The same lookup, again and again: its few pages stay in the cache.
    let before = writer_reads();
    for _ in 0..200 {
        assert!(matches!(
            store
                .claim("p:held", &holder, 4_000_000_000, 4_000_000_000, 1)
                .await,
            Ok(Reservation::InFlight)
        ));
    }
    let read = writer_reads() - before;
    assert!(
        read < 100 * 4096,
        "200 lookups of one row read {read} bytes: the writer's cache did not keep their pages"
    );
}
