//! The store's guarantees, on SQLite.

use std::sync::Arc;

use gate402_store::{InvoiceRecord, Reservation, SqliteStore, Store, TokenRecord};

fn token(id: u8) -> TokenRecord {
    TokenRecord {
        token_id: [id; 32],
        root_key: [id ^ 0xff; 32],
        payment_hash: [1; 32],
        service: "svc".into(),
        created_at: 1,
    }
}

#[tokio::test]
async fn tokens_survive_reopening_and_can_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate402.sqlite3");
    SqliteStore::open(&path)
        .unwrap()
        .put_token(&token(7))
        .await
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.root_key(&[7; 32]).await.unwrap(),
        Some([7 ^ 0xff; 32])
    );
    assert_eq!(store.root_key(&[8; 32]).await.unwrap(), None);
    assert!(store.revoke_token(&[7; 32]).await.unwrap());
    assert_eq!(store.root_key(&[7; 32]).await.unwrap(), None);
}

#[tokio::test]
async fn a_challenge_is_served_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
    assert_eq!(
        store.reserve_challenge("c", 1000, 100, 10).await.unwrap(),
        Reservation::Acquired
    );
    assert_eq!(
        store.reserve_challenge("c", 1000, 100, 10).await.unwrap(),
        Reservation::InFlight
    );
    // Upstream failed: released, the same credential works again.
    store.release_challenge("c").await.unwrap();
    assert_eq!(
        store.reserve_challenge("c", 1000, 100, 10).await.unwrap(),
        Reservation::Acquired
    );
    store.commit_challenge("c", 11).await.unwrap();
    assert_eq!(
        store.reserve_challenge("c", 1000, 100, 12).await.unwrap(),
        Reservation::Consumed
    );
    store.release_challenge("c").await.unwrap();
    assert_eq!(
        store.reserve_challenge("c", 1000, 100, 12).await.unwrap(),
        Reservation::Consumed,
        "release never undoes a commit"
    );
    // A holder that died: its lease runs out and the claim is taken over.
    assert_eq!(
        store.reserve_challenge("d", 1000, 100, 10).await.unwrap(),
        Reservation::Acquired
    );
    assert_eq!(
        store.reserve_challenge("d", 1000, 300, 200).await.unwrap(),
        Reservation::Acquired
    );
    // Consumed and expired challenges are purged.
    assert_eq!(store.purge_expired(2000).await.unwrap(), 1);
}

#[tokio::test]
async fn concurrent_claims_acquire_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    // Two handles, as two gateway processes would have.
    let stores = [
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    ];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store
                .reserve_challenge("same", 1000, 100, 10)
                .await
                .unwrap()
        }));
    }
    let mut acquired = 0;
    for task in tasks {
        if task.await.unwrap() == Reservation::Acquired {
            acquired += 1;
        }
    }
    assert_eq!(acquired, 1);
}

#[tokio::test]
async fn freebies_count_per_client_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
    assert_eq!(store.count_freebie("1.2.3.4", "a").await.unwrap(), 1);
    assert_eq!(store.count_freebie("1.2.3.4", "a").await.unwrap(), 2);
    assert_eq!(store.count_freebie("1.2.3.4", "b").await.unwrap(), 1);
    assert_eq!(store.count_freebie("5.6.7.8", "a").await.unwrap(), 1);
}

#[tokio::test]
async fn invoices_are_found_by_payment_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
    let record = InvoiceRecord {
        payment_hash: [3; 32],
        bolt11: "lnbcrt1…".into(),
        amount_msat: 5_000,
        service: "mcp/weather".into(),
        created_at: 10,
        expires_at: 610,
    };
    store.put_invoice(&record).await.unwrap();
    assert_eq!(store.invoice(&[3; 32]).await.unwrap(), Some(record));
    assert_eq!(store.invoice(&[4; 32]).await.unwrap(), None);
}
