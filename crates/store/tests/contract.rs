//! The store's guarantees, on SQLite and on PostgreSQL (a real server,
//! started by the test).

use std::sync::Arc;

use gate402_postgres_testkit::TestPostgres;
use gate402_store::{InvoiceRecord, PostgresStore, Reservation, SqliteStore, Store, TokenRecord};

fn token(id: u8) -> TokenRecord {
    TokenRecord {
        token_id: [id; 32],
        root_key: [id ^ 0xff; 32],
        payment_hash: [1; 32],
        service: "svc".into(),
        created_at: 1,
    }
}

/// Two handles on one database, as two gateway replicas have.
type Pair = [Arc<dyn Store>; 2];

async fn tokens_are_shared_and_can_be_revoked([a, b]: &Pair) {
    a.put_token(&token(7)).await.unwrap();
    assert_eq!(b.root_key(&[7; 32]).await.unwrap(), Some([7 ^ 0xff; 32]));
    assert_eq!(b.root_key(&[8; 32]).await.unwrap(), None);
    assert!(b.revoke_token(&[7; 32]).await.unwrap());
    assert_eq!(a.root_key(&[7; 32]).await.unwrap(), None);
}

async fn a_challenge_is_served_once([store, _]: &Pair) {
    let claim = |id: &'static str, lease, now| store.reserve_challenge(id, "r1", 1000, lease, now);
    assert_eq!(claim("c", 100, 10).await.unwrap(), Reservation::Acquired);
    assert_eq!(claim("c", 100, 10).await.unwrap(), Reservation::InFlight);
    // Upstream failed: released, the same credential works again.
    store.release_challenge("c").await.unwrap();
    assert_eq!(claim("c", 100, 10).await.unwrap(), Reservation::Acquired);
    store.commit_challenge("c", 11).await.unwrap();
    assert_eq!(claim("c", 100, 12).await.unwrap(), Reservation::Consumed);
    store.release_challenge("c").await.unwrap();
    assert_eq!(
        claim("c", 100, 12).await.unwrap(),
        Reservation::Consumed,
        "release never undoes a commit"
    );
    // A holder that died: its lease runs out and the claim is taken over.
    assert_eq!(claim("d", 100, 10).await.unwrap(), Reservation::Acquired);
    assert_eq!(claim("d", 300, 200).await.unwrap(), Reservation::Acquired);
    // Consumed and expired challenges are purged.
    assert_eq!(store.purge_expired(2000).await.unwrap(), 1);
}

async fn a_restarted_holder_releases_its_claims([a, b]: &Pair) {
    let claim = |store: &Arc<dyn Store>, id: &'static str, holder: &'static str| {
        let store = store.clone();
        async move {
            store
                .reserve_challenge(id, holder, 1000, 100, 10)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(a, "x", "killed").await, Reservation::Acquired);
    assert_eq!(claim(a, "y", "killed").await, Reservation::Acquired);
    assert_eq!(claim(b, "z", "alive").await, Reservation::Acquired);
    // "killed" served y before it died; x was in flight.
    a.commit_challenge("y", 11).await.unwrap();
    assert_eq!(claim(b, "x", "alive").await, Reservation::InFlight);
    assert_eq!(a.release_leases_of("killed").await.unwrap(), 1);
    assert_eq!(claim(b, "x", "alive").await, Reservation::Acquired);
    assert_eq!(claim(b, "y", "alive").await, Reservation::Consumed);
    // Another holder's claims stay held.
    assert_eq!(claim(a, "z", "killed").await, Reservation::InFlight);
}

async fn concurrent_claims_acquire_once(stores: &Pair) {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store
                .reserve_challenge("same", if i % 2 == 0 { "a" } else { "b" }, 1000, 100, 10)
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

async fn freebies_count_per_client_and_service([a, b]: &Pair) {
    assert_eq!(a.count_freebie("1.2.3.4", "a").await.unwrap(), 1);
    assert_eq!(b.count_freebie("1.2.3.4", "a").await.unwrap(), 2);
    assert_eq!(a.count_freebie("1.2.3.4", "b").await.unwrap(), 1);
    assert_eq!(a.count_freebie("5.6.7.8", "a").await.unwrap(), 1);
}

async fn invoices_are_found_by_payment_hash([a, b]: &Pair) {
    let record = InvoiceRecord {
        payment_hash: [3; 32],
        bolt11: "lnbcrt1…".into(),
        amount_msat: 5_000,
        service: "mcp/weather".into(),
        created_at: 10,
        expires_at: 610,
    };
    a.put_invoice(&record).await.unwrap();
    assert_eq!(b.invoice(&[3; 32]).await.unwrap(), Some(record));
    assert_eq!(b.invoice(&[4; 32]).await.unwrap(), None);
}

async fn keeps_the_contract(stores: Pair) {
    tokens_are_shared_and_can_be_revoked(&stores).await;
    a_challenge_is_served_once(&stores).await;
    a_restarted_holder_releases_its_claims(&stores).await;
    concurrent_claims_acquire_once(&stores).await;
    freebies_count_per_client_and_service(&stores).await;
    invoices_are_found_by_payment_hash(&stores).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate402.sqlite3");
    keeps_the_contract([
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    ])
    .await;
    // And what it keeps survives reopening.
    SqliteStore::open(&path)
        .unwrap()
        .put_token(&token(9))
        .await
        .unwrap();
    assert!(SqliteStore::open(&path)
        .unwrap()
        .root_key(&[9; 32])
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_keeps_the_contract() {
    let postgres = TestPostgres::start().await;
    // Two replicas starting at once: the migration runs once.
    let (a, b) = tokio::join!(
        PostgresStore::connect(&postgres.url),
        PostgresStore::connect(&postgres.url)
    );
    keeps_the_contract([Arc::new(a.unwrap()), Arc::new(b.unwrap())]).await;
    // Reconnecting finds the schema in place and the data kept.
    let again = PostgresStore::connect(&postgres.url).await.unwrap();
    assert!(again.invoice(&[3; 32]).await.unwrap().is_some());
}
