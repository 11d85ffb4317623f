//! The store's guarantees, on SQLite and on PostgreSQL (a real server,
//! started by the test), on a fresh database and on one upgraded from the
//! schema released before claims were fenced.

use std::sync::Arc;

use gate402_postgres_testkit::TestPostgres;
use gate402_store::{
    AfterFailure, AuditEntry, ChallengeCount, ClaimHolder, ClosedIdle, Closing, Debit,
    InvoiceRecord, NewSession, Opened, OwedRefund, PaymentQuery, PaymentRecord, PostgresStore,
    Reservation, ServiceChange, ServiceState, SqliteStore, Store, StoreError, StoredResponse,
    TopUp,
};

/// Two handles on one database, as two gateway replicas have.
type Pair = [Arc<dyn Store>; 2];

/// A key as callers make them: `p:` and a payment hash in lowercase hex.
fn key(n: u8) -> String {
    format!("p:{}", format!("{n:02x}").repeat(32))
}

fn holder(replica: &str, token: &str) -> ClaimHolder {
    ClaimHolder {
        replica: replica.into(),
        token: token.into(),
    }
}

fn payment(hash: u8, service: &str) -> PaymentRecord {
    PaymentRecord {
        payment_hash: [hash; 32],
        service: service.into(),
        scheme: "Payment".into(),
        amount_msat: 5_000,
        at: 10,
        served: 1,
    }
}

async fn the_database_answers_a_ping([a, b]: &Pair) {
    a.ping().await.unwrap();
    b.ping().await.unwrap();
}

async fn a_payment_is_served_once([a, b]: &Pair) {
    use Reservation::*;
    let (k, h1, h2) = (key(1), holder("r1", "t1"), holder("r2", "t2"));
    assert_eq!(a.claim(&k, &h1, 1000, 100, 10).await.unwrap(), Acquired);
    assert_eq!(b.claim(&k, &h2, 1000, 100, 10).await.unwrap(), InFlight);
    // Only the holder releases it: its replica and its token both.
    assert!(!b.release_claim(&k, &h2).await.unwrap());
    assert!(!b.release_claim(&k, &holder("r2", "t1")).await.unwrap());
    assert!(!b.release_claim(&k, &holder("r1", "t2")).await.unwrap());
    assert_eq!(b.claim(&k, &h2, 1000, 100, 10).await.unwrap(), InFlight);
    // Upstream failed: released, the same payment works again.
    assert!(a.release_claim(&k, &h1).await.unwrap());
    assert_eq!(b.claim(&k, &h2, 1000, 100, 10).await.unwrap(), Acquired);
    assert!(
        !a.commit_claim(&k, &h1, 11).await.unwrap(),
        "a released claim is not committed by its former holder"
    );
    assert_eq!(a.claim(&k, &h1, 1000, 100, 11).await.unwrap(), InFlight);
    assert!(b.commit_claim(&k, &h2, 11).await.unwrap());
    assert_eq!(a.claim(&k, &h1, 1000, 100, 12).await.unwrap(), Consumed);
    assert!(
        b.commit_claim(&k, &h2, 13).await.unwrap(),
        "committing again is not a lost claim"
    );
    assert!(
        !b.release_claim(&k, &h2).await.unwrap(),
        "release never undoes a commit"
    );
    assert_eq!(a.claim(&k, &h1, 1000, 100, 13).await.unwrap(), Consumed);
    // A consumed claim has no lease to lapse.
    assert_eq!(a.claim(&k, &h1, 1000, 300, 200).await.unwrap(), Consumed);
}

async fn a_lapsed_claim_is_fenced_from_its_old_holder([a, b]: &Pair) {
    use Reservation::*;
    // One replica, two requests: the token tells them apart.
    let (k, first, second, third) = (
        key(2),
        holder("r1", "a"),
        holder("r1", "b"),
        holder("r2", "c"),
    );
    assert_eq!(a.claim(&k, &first, 1000, 100, 10).await.unwrap(), Acquired);
    // The first request hangs past its lease; the second takes over.
    assert_eq!(
        b.claim(&k, &second, 1000, 300, 200).await.unwrap(),
        Acquired
    );
    // The first one's late failure does not free the second one's claim.
    assert!(!a.release_claim(&k, &first).await.unwrap());
    assert_eq!(a.claim(&k, &third, 1000, 300, 200).await.unwrap(), InFlight);
    // Nor does its late success consume it.
    assert!(!a.commit_claim(&k, &first, 201).await.unwrap());
    assert_eq!(a.claim(&k, &third, 1000, 300, 201).await.unwrap(), InFlight);
    assert!(!a.renew_claim(&k, &first, 1000).await.unwrap());
    // The second one still holds it, renews and commits.
    assert!(b.renew_claim(&k, &second, 500).await.unwrap());
    assert_eq!(a.claim(&k, &third, 1000, 600, 400).await.unwrap(), InFlight);
    assert!(b.commit_claim(&k, &second, 450).await.unwrap());
    assert_eq!(a.claim(&k, &third, 1000, 600, 450).await.unwrap(), Consumed);
}

async fn renewing_extends_the_lease([a, b]: &Pair) {
    use Reservation::*;
    let (k, streaming, other) = (key(3), holder("r1", "s"), holder("r2", "o"));
    assert_eq!(
        a.claim(&k, &streaming, 1000, 100, 10).await.unwrap(),
        Acquired
    );
    assert!(a.renew_claim(&k, &streaming, 300).await.unwrap());
    assert_eq!(b.claim(&k, &other, 1000, 400, 200).await.unwrap(), InFlight);
    // Renewed to 300, not for good.
    assert_eq!(b.claim(&k, &other, 1000, 400, 300).await.unwrap(), Acquired);
    assert!(!a.renew_claim(&k, &streaming, 500).await.unwrap());
}

async fn a_restarted_replica_releases_its_claims([a, b]: &Pair) {
    use Reservation::*;
    let (x, w, y, z) = (key(4), key(5), key(6), key(7));
    assert_eq!(
        a.claim(&x, &holder("killed", "1"), 1000, 100, 10)
            .await
            .unwrap(),
        Acquired
    );
    assert_eq!(
        a.claim(&w, &holder("killed", "2"), 1000, 100, 10)
            .await
            .unwrap(),
        Acquired
    );
    assert_eq!(
        a.claim(&y, &holder("killed", "3"), 1000, 100, 10)
            .await
            .unwrap(),
        Acquired
    );
    assert_eq!(
        b.claim(&z, &holder("alive", "4"), 1000, 100, 10)
            .await
            .unwrap(),
        Acquired
    );
    // "killed" served y before it died; x and w were in flight.
    assert!(a
        .commit_claim(&y, &holder("killed", "3"), 11)
        .await
        .unwrap());
    let alive = holder("alive", "5");
    assert_eq!(b.claim(&x, &alive, 1000, 100, 12).await.unwrap(), InFlight);
    assert_eq!(a.release_claims_of("killed").await.unwrap(), 2);
    assert_eq!(b.claim(&x, &alive, 1000, 100, 12).await.unwrap(), Acquired);
    assert_eq!(b.claim(&w, &alive, 1000, 100, 12).await.unwrap(), Acquired);
    assert_eq!(b.claim(&y, &alive, 1000, 100, 12).await.unwrap(), Consumed);
    // Another replica's claims stay held.
    let restarted = holder("killed", "6");
    assert_eq!(
        a.claim(&z, &restarted, 1000, 100, 12).await.unwrap(),
        InFlight
    );
    assert_eq!(a.release_claims_of("nobody").await.unwrap(), 0);
}

async fn concurrent_claims_acquire_once(stores: &Pair) {
    let k = key(8);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (store, k) = (stores[i % 2].clone(), k.clone());
        let holder = holder(if i % 2 == 0 { "a" } else { "b" }, &i.to_string());
        tasks.push(tokio::spawn(async move {
            store.claim(&k, &holder, 1000, 100, 10).await.unwrap()
        }));
    }
    let (mut acquired, mut in_flight) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Reservation::Acquired => acquired += 1,
            Reservation::InFlight => in_flight += 1,
            Reservation::Consumed => {}
        }
    }
    assert_eq!((acquired, in_flight), (1, 63));
}

async fn an_upstream_fails_on_one_payment_a_bounded_number_of_times([a, b]: &Pair) {
    use Reservation::*;
    let k = key(20);
    let (h1, h2, h3, h4) = (
        holder("r1", "f1"),
        holder("r2", "f2"),
        holder("r1", "f3"),
        holder("r2", "f4"),
    );
    assert_eq!(a.claim(&k, &h1, 500, 100, 10).await.unwrap(), Acquired);
    // Only its holder counts a failure on it.
    assert_eq!(
        b.fail_claim(&k, &h2, 3, 11).await.unwrap(),
        AfterFailure::NotHeld
    );
    assert_eq!(
        a.fail_claim(&k, &h1, 3, 11).await.unwrap(),
        AfterFailure::Released
    );
    assert_eq!(
        a.fail_claim(&k, &h1, 3, 11).await.unwrap(),
        AfterFailure::NotHeld,
        "a failure is counted once"
    );
    // Given back: any replica takes it again at once.
    assert_eq!(b.claim(&k, &h2, 500, 100, 11).await.unwrap(), Acquired);
    assert_eq!(
        b.fail_claim(&k, &h2, 3, 12).await.unwrap(),
        AfterFailure::Released
    );
    // A request that never reached the upstream gives it back without
    // counting, and without forgetting the failures counted before.
    assert_eq!(a.claim(&k, &h3, 500, 100, 12).await.unwrap(), Acquired);
    assert!(a.release_claim(&k, &h3).await.unwrap());
    assert_eq!(b.claim(&k, &h4, 500, 100, 13).await.unwrap(), Acquired);
    assert_eq!(
        b.fail_claim(&k, &h4, 3, 13).await.unwrap(),
        AfterFailure::Spent,
        "the third failure spends it"
    );
    assert_eq!(a.claim(&k, &h1, 500, 100, 14).await.unwrap(), Consumed);
    // A replica killed while it held a claim with failures counted gives
    // the claim back at its next start, failures and all.
    let counted = key(22);
    assert_eq!(
        a.claim(&counted, &h1, 500, 100, 10).await.unwrap(),
        Acquired
    );
    assert_eq!(
        a.fail_claim(&counted, &h1, 3, 11).await.unwrap(),
        AfterFailure::Released
    );
    assert_eq!(
        b.claim(&counted, &h2, 500, 100, 11).await.unwrap(),
        Acquired
    );
    assert_eq!(
        b.fail_claim(&counted, &h2, 3, 12).await.unwrap(),
        AfterFailure::Released
    );
    let crashed = holder("crashed", "f5");
    assert_eq!(
        a.claim(&counted, &crashed, 500, 100, 12).await.unwrap(),
        Acquired
    );
    assert_eq!(a.release_claims_of("crashed").await.unwrap(), 1);
    assert_eq!(
        b.claim(&counted, &h4, 500, 100, 13).await.unwrap(),
        Acquired
    );
    assert_eq!(
        b.fail_claim(&counted, &h4, 3, 13).await.unwrap(),
        AfterFailure::Spent,
        "the failures counted before the kill still count"
    );
    // A given-back row is purged once its payment expired, failures and
    // all (it is no longer presented).
    let released = key(21);
    assert_eq!(
        a.claim(&released, &h1, 50, 100, 10).await.unwrap(),
        Acquired
    );
    assert_eq!(
        a.fail_claim(&released, &h1, 3, 11).await.unwrap(),
        AfterFailure::Released
    );
    assert!(a.purge_expired(60).await.unwrap() >= 1);
    for (n, h) in [h2, h3].iter().enumerate() {
        assert_eq!(a.claim(&released, h, 50, 100, 61).await.unwrap(), Acquired);
        assert_eq!(
            a.fail_claim(&released, h, 3, 61).await.unwrap(),
            AfterFailure::Released,
            "failure {} after the purge",
            n + 1
        );
    }
}

async fn consumed_claims_are_purged_after_expiry([a, _]: &Pair) {
    use Reservation::*;
    let (spent, held, later) = (key(9), key(10), key(11));
    let h = holder("r1", "p");
    assert_eq!(a.claim(&spent, &h, 50, 100, 10).await.unwrap(), Acquired);
    assert!(a.commit_claim(&spent, &h, 11).await.unwrap());
    assert_eq!(a.claim(&held, &h, 50, 100, 10).await.unwrap(), Acquired);
    assert_eq!(a.claim(&later, &h, 70, 100, 10).await.unwrap(), Acquired);
    assert!(a.commit_claim(&later, &h, 11).await.unwrap());
    assert_eq!(a.purge_expired(60).await.unwrap(), 1);
    let other = holder("r2", "q");
    assert_eq!(
        a.claim(&spent, &other, 50, 100, 61).await.unwrap(),
        Acquired
    );
    assert_eq!(a.claim(&held, &other, 50, 100, 61).await.unwrap(), InFlight);
    assert_eq!(
        a.claim(&later, &other, 70, 100, 61).await.unwrap(),
        Consumed
    );
}

async fn payments_are_counted_once(stores: &Pair) {
    let [a, b] = stores;
    assert!(a.record_payment(&payment(5, "svc")).await.unwrap());
    assert!(!a.record_payment(&payment(5, "svc")).await.unwrap());
    assert!(!b.record_payment(&payment(5, "svc")).await.unwrap());
    assert!(
        !b.record_payment(&payment(5, "other")).await.unwrap(),
        "one payment, whatever it is used for"
    );
    assert!(b.record_payment(&payment(6, "svc")).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store.record_payment(&payment(7, "svc")).await.unwrap()
        }));
    }
    let mut first = 0;
    for task in tasks {
        if task.await.unwrap() {
            first += 1;
        }
    }
    assert_eq!(first, 1);
    // A batch: new and known payments together, each answered in order.
    let batch = [payment(8, "svc"), payment(5, "svc"), payment(9, "svc")];
    let mut counted = batch.clone();
    counted[1].served = 40;
    assert_eq!(
        a.record_payments(&counted).await.unwrap(),
        [true, false, true]
    );
    assert_eq!(b.record_payments(&batch).await.unwrap(), [false; 3]);
    assert!(a.record_payments(&[]).await.unwrap().is_empty());

    // A balance's requests counted (amount 0) before its deposit is
    // written, by another replica: the deposit's amount is kept.
    let served = PaymentRecord {
        amount_msat: 0,
        served: 2,
        ..payment(10, "svc")
    };
    let deposit = PaymentRecord {
        amount_msat: 50_000,
        served: 0,
        ..payment(10, "svc")
    };
    assert!(a.record_payment(&served).await.unwrap());
    assert!(!b.record_payment(&deposit).await.unwrap());
    assert!(!a.record_payment(&served).await.unwrap());
    let query = PaymentQuery {
        since: 0,
        until: u64::MAX,
        service: None,
        scheme: None,
        payment_hash: Some([10; 32]),
        limit: 10,
    };
    let rows = b.payments(&query).await.unwrap();
    let [row] = &rows[..] else {
        panic!("one row for the balance");
    };
    assert_eq!((row.amount_msat, row.served), (50_000, 4));
    // A pass served after a price change is counted at the price it was
    // first written at, whatever later counts of it carry.
    let dearer = PaymentRecord {
        amount_msat: 60_000,
        ..served.clone()
    };
    assert!(!b.record_payment(&dearer).await.unwrap());
    let rows = a.payments(&query).await.unwrap();
    assert_eq!((rows[0].amount_msat, rows[0].served), (50_000, 6));
}

async fn claims_are_committed_in_batches([a, b]: &Pair) {
    use Reservation::{Acquired, Consumed, InFlight};
    let (r1, r2) = (holder("r1", "t1"), holder("r1", "t2"));
    let keys = ["p:batch-1", "p:batch-2", "p:batch-3"];
    assert_eq!(
        a.claim(keys[0], &r1, 1000, 100, 10).await.unwrap(),
        Acquired
    );
    assert_eq!(
        b.claim(keys[1], &r2, 1000, 100, 10).await.unwrap(),
        Acquired
    );
    // The third is not held at all; the second is held by another token.
    let committed = a
        .commit_claims(
            &[
                (keys[0].to_owned(), r1.clone()),
                (keys[1].to_owned(), r1.clone()),
                (keys[2].to_owned(), r1.clone()),
            ],
            11,
        )
        .await
        .unwrap();
    assert_eq!(committed, [true, false, false]);
    assert_eq!(
        b.claim(keys[0], &r2, 1000, 100, 12).await.unwrap(),
        Consumed
    );
    assert_eq!(
        b.claim(keys[1], &r1, 1000, 100, 12).await.unwrap(),
        InFlight
    );
    assert_eq!(
        b.commit_claims(&[(keys[1].to_owned(), r2.clone())], 13)
            .await
            .unwrap(),
        [true]
    );
    assert!(a.commit_claims(&[], 14).await.unwrap().is_empty());
}

async fn new_claims_are_not_legacy([a, b]: &Pair) {
    // Committed by the cases above.
    assert!(!a.legacy_consumed(&key(1)).await.unwrap());
    assert!(!b.legacy_consumed(&key(2)).await.unwrap());
    assert_eq!(a.legacy_claims_until().await.unwrap(), 0);
}

async fn freebies_count_per_client_and_service([a, b]: &Pair) {
    assert_eq!(a.count_freebie("1.2.3.4", "a").await.unwrap(), 1);
    assert_eq!(b.count_freebie("1.2.3.4", "a").await.unwrap(), 2);
    assert_eq!(a.count_freebie("1.2.3.4", "b").await.unwrap(), 1);
    assert_eq!(a.count_freebie("5.6.7.8", "a").await.unwrap(), 1);

    // A call that failed is given back; failures at most as many times
    // as there are free calls (2 here), calls that never reached the
    // upstream any number of times.
    assert!(b.return_freebie("1.2.3.4", "a", 2, true).await.unwrap());
    assert!(a.return_freebie("1.2.3.4", "a", 2, true).await.unwrap());
    assert!(!a.return_freebie("1.2.3.4", "a", 2, true).await.unwrap());
    assert_eq!(a.count_freebie("1.2.3.4", "a").await.unwrap(), 1);
    assert!(!b.return_freebie("1.2.3.4", "a", 2, true).await.unwrap());
    for _ in 0..3 {
        assert!(a.return_freebie("1.2.3.4", "a", 2, false).await.unwrap());
        assert_eq!(b.count_freebie("1.2.3.4", "a").await.unwrap(), 1);
    }
    // Never below none used, nor for a client that used none.
    assert!(a.return_freebie("1.2.3.4", "a", 2, false).await.unwrap());
    assert!(!a.return_freebie("1.2.3.4", "a", 2, false).await.unwrap());
    assert!(!a.return_freebie("9.9.9.9", "a", 2, false).await.unwrap());

    // One free call: while it is in flight, two more are refused (counted
    // over it); it fails and is given back, and the next call is free.
    assert_eq!(a.count_freebie("5.6.7.8", "a").await.unwrap(), 2);
    assert_eq!(b.count_freebie("5.6.7.8", "a").await.unwrap(), 3);
    assert!(a.return_freebie("5.6.7.8", "a", 1, true).await.unwrap());
    assert_eq!(b.count_freebie("5.6.7.8", "a").await.unwrap(), 1);
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

async fn old_invoices_are_purged([a, b]: &Pair) {
    let invoice = |byte: u8, created_at: u64| InvoiceRecord {
        payment_hash: [byte; 32],
        bolt11: "lnbcrt1…".into(),
        amount_msat: 1_000,
        service: "mcp/weather".into(),
        created_at,
        expires_at: created_at + 600,
    };
    a.put_invoice(&invoice(9, 100)).await.unwrap();
    a.put_invoice(&invoice(10, 1_000)).await.unwrap();
    assert!(b.purge_records(500, 500).await.unwrap() >= 1);
    assert_eq!(a.invoice(&[9; 32]).await.unwrap(), None);
    assert!(a.invoice(&[10; 32]).await.unwrap().is_some());
    // Nothing older is left: the newer rows stay.
    assert_eq!(b.purge_records(500, 500).await.unwrap(), 0);
    assert!(a.purge_records(2_000, 2_000).await.unwrap() >= 1);
    assert_eq!(a.invoice(&[10; 32]).await.unwrap(), None);
}

fn stored(
    claim: &str,
    idempotency_key: &str,
    body: &str,
    expires_at: u64,
    holder_token: Option<&str>,
) -> StoredResponse {
    StoredResponse {
        claim_key: claim.into(),
        idempotency_key: idempotency_key.into(),
        fingerprint: [7; 32],
        status: 201,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            (
                "payment-receipt".into(),
                b"eyJzdGF0dXMiOiJzdWNjZXNzIn0".to_vec(),
            ),
        ],
        body: body.as_bytes().to_vec(),
        expires_at,
        holder_token: holder_token.map(str::to_owned),
    }
}

/// A response kept under a claim is found, on every replica, once the
/// holder that kept it has spent the claim: before that it is not its
/// payment's answer (a replica stopped between the two writes has the
/// claim given back), nor after the claim was given back and spent by
/// another serve (under another key), and the write of the request served
/// again under its key replaces it. Once spent, the first stays.
async fn kept_responses_are_shared_found_once_spent_and_expire([a, b]: &Pair) {
    use Reservation::Acquired;
    let k = key(40);
    let (h1, h2) = (holder("r1", "t1"), holder("r2", "t2"));
    assert_eq!(a.claim(&k, &h1, 1000, 100, 10).await.unwrap(), Acquired);
    for key in ["k-1", "k-2"] {
        a.put_response(&stored(&k, key, "{\"n\":1}", 500, Some("t1")))
            .await
            .unwrap();
    }
    assert_eq!(b.stored_response(&k, "k-1", 100).await.unwrap(), None);
    assert!(a.release_claim(&k, &h1).await.unwrap());
    assert_eq!(b.claim(&k, &h2, 1000, 100, 10).await.unwrap(), Acquired);
    let second = stored(&k, "k-1", "{\"n\":2}", 500, Some("t2"));
    b.put_response(&second).await.unwrap();
    assert!(b.commit_claim(&k, &h2, 11).await.unwrap());
    assert_eq!(
        a.stored_response(&k, "k-1", 100).await.unwrap(),
        Some(second.clone())
    );
    // Kept by the holder whose claim was given back: not this payment's
    // answer.
    assert_eq!(a.stored_response(&k, "k-2", 100).await.unwrap(), None);
    // Another replica's later write under the spent claim changes nothing.
    a.put_response(&stored(&k, "k-1", "{\"n\":3}", 900, Some("t3")))
        .await
        .unwrap();
    assert_eq!(
        b.stored_response(&k, "k-1", 100).await.unwrap(),
        Some(second)
    );
    assert_eq!(b.stored_response(&k, "k-3", 100).await.unwrap(), None);
    assert_eq!(b.stored_response(&key(41), "k-1", 100).await.unwrap(), None);
    // Past its end it is neither found nor kept.
    assert_eq!(a.stored_response(&k, "k-1", 501).await.unwrap(), None);
    assert!(a.purge_expired(501).await.unwrap() >= 1);
    a.put_response(&stored(&k, "k-1", "{}", 900, Some("t2")))
        .await
        .unwrap();
    assert_eq!(
        b.stored_response(&k, "k-1", 600)
            .await
            .unwrap()
            .map(|r| r.body),
        Some(b"{}".to_vec())
    );
    // One kept before holders were recorded with it: found once spent.
    let legacy = key(42);
    assert_eq!(
        a.claim(&legacy, &h1, 1000, 100, 10).await.unwrap(),
        Acquired
    );
    a.put_response(&stored(&legacy, "k-1", "{}", 500, None))
        .await
        .unwrap();
    assert!(a.commit_claim(&legacy, &h1, 11).await.unwrap());
    assert!(b
        .stored_response(&legacy, "k-1", 100)
        .await
        .unwrap()
        .is_some());
}

fn new_session(id: u8, deposit_msat: u64, return_invoice: Option<&str>) -> NewSession {
    NewSession {
        id: [id; 32],
        service: "chat".into(),
        deposit_msat,
        return_invoice: return_invoice.map(str::to_owned),
        idle_secs: 300,
        unit_msat: 1_000,
        now: 1_000,
    }
}

/// The open sessions are counted and summed on every replica, the most
/// recently used listed first; a closed one is not.
async fn open_sessions_are_counted_and_listed([a, b]: &Pair) {
    let before = b.open_sessions(1000).await.unwrap();
    for (id, deposit, used) in [(230, 7_000, 5_000), (231, 3_000, 6_000)] {
        let opened = NewSession {
            now: used,
            ..new_session(id, deposit, None)
        };
        assert_eq!(a.open_session(&opened).await.unwrap(), Opened::New);
    }
    let open = b.open_sessions(1000).await.unwrap();
    assert_eq!(open.count, before.count + 2);
    assert_eq!(open.balance_msat, before.balance_msat + 10_000);
    let newest = b.open_sessions(1).await.unwrap();
    assert_eq!(newest.sessions.len(), 1);
    assert!(open.sessions.iter().any(|s| s.id == [230; 32]));
    a.close_session(&[231; 32], 7_000, false).await.unwrap();
    let open = b.open_sessions(1000).await.unwrap();
    assert_eq!(open.count, before.count + 1);
    assert_eq!(open.balance_msat, before.balance_msat + 7_000);
    assert!(open.sessions.iter().all(|s| s.id != [231; 32]));
}

/// The refunds still owed are counted, summed and listed on every replica:
/// pending and failed ones to a return invoice, not one paid, nor one of a
/// session with no return invoice (an L402 balance: nowhere to pay it).
async fn refunds_owed_are_counted_and_listed([a, b]: &Pair) {
    let before = b.refunds_owed(1000).await.unwrap();
    for (id, invoice) in [
        (190, Some("lnbcrt1owed190")),
        (191, Some("lnbcrt1owed191")),
        (192, Some("lnbcrt1owed192")),
        (193, None),
    ] {
        assert_eq!(
            a.open_session(&new_session(id, 5_000, invoice))
                .await
                .unwrap(),
            Opened::New
        );
        a.close_session(&[id; 32], 2_000, false).await.unwrap();
    }
    a.record_refund(&[191; 32], "failed").await.unwrap();
    a.record_refund(&[192; 32], "succeeded").await.unwrap();
    let owed = b.refunds_owed(1000).await.unwrap();
    assert_eq!(owed.count, before.count + 2);
    assert_eq!(owed.refund_msat, before.refund_msat + 10_000);
    let listed: Vec<u8> = owed.sessions.iter().map(|s| s.id[0]).collect();
    assert!(listed.contains(&190) && listed.contains(&191), "{listed:?}");
    assert!(
        !listed.contains(&192) && !listed.contains(&193),
        "{listed:?}"
    );
    assert_eq!(b.refunds_owed(1).await.unwrap().sessions.len(), 1);
}

/// A balance gives back failed requests' debits while what it gave back
/// stays within twice what it spent, the failed request's own debit
/// counted: two from the start, then two more for each debit kept.
async fn a_balance_gives_back_failures_up_to_twice_its_spending([a, b]: &Pair) {
    let id = [72; 32];
    assert_eq!(
        a.open_session(&new_session(72, 10_000, None))
            .await
            .unwrap(),
        Opened::New
    );
    let mut n = 0;
    let mut debit = |store: &Arc<dyn Store>| {
        n += 1;
        let (store, h) = (store.clone(), holder("r", &format!("f{n}")));
        async move {
            let done = store.debit(&id, "chat", 1, 1_000, &h, 1_001).await.unwrap();
            assert!(matches!(done, Debit::Done { .. }), "{done:?}");
            h
        }
    };
    for (i, store) in [a, b].into_iter().enumerate() {
        let h = debit(store).await;
        assert_eq!(
            store.fail_debit(&h, 3, None, 1_100).await.unwrap(),
            AfterFailure::Released,
            "free failure {i}"
        );
        assert_eq!(
            store.fail_debit(&h, 3, None, 1_100).await.unwrap(),
            AfterFailure::NotHeld
        );
    }
    let h = debit(a).await;
    assert_eq!(
        a.fail_debit(&h, 3, None, 1_100).await.unwrap(),
        AfterFailure::Spent,
        "the third failure with nothing spent is kept"
    );
    let spent = |s: &Arc<dyn Store>| {
        let s = s.clone();
        async move { s.session(&id).await.unwrap().unwrap().spent_msat }
    };
    assert_eq!(spent(b).await, 1_000);
    // What was kept, the failure's and a served request's, earns two
    // failures given back each.
    let h = debit(b).await;
    b.settle_debit(&h, None, 1_100).await.unwrap();
    for _ in 0..4 {
        let h = debit(a).await;
        assert_eq!(
            a.fail_debit(&h, 3, None, 1_100).await.unwrap(),
            AfterFailure::Released
        );
    }
    let h = debit(a).await;
    assert_eq!(
        a.fail_debit(&h, 3, None, 1_100).await.unwrap(),
        AfterFailure::Spent
    );
    assert_eq!(spent(a).await, 3_000);
    // A kept failure that reported what it used keeps that, not all it
    // held; a given-back one gives all back whatever it reported.
    for after in [
        AfterFailure::Released,
        AfterFailure::Released,
        AfterFailure::Spent,
    ] {
        let h = debit(b).await;
        assert_eq!(b.fail_debit(&h, 3, Some(300), 1_100).await.unwrap(), after);
    }
    assert_eq!(spent(a).await, 3_300);
}

async fn a_balance_is_credited_once_spent_atomically_and_refunded_once([a, b]: &Pair) {
    let (r1, r2) = (holder("r1", "d1"), holder("r2", "d2"));
    assert_eq!(
        a.open_session(&new_session(60, 10_000, None))
            .await
            .unwrap(),
        Opened::New
    );
    // Opened again (a retry, or the other door): nothing credited twice; a
    // return invoice given now is kept.
    let again = b
        .open_session(&new_session(60, 10_000, Some("lnbcrt1refund")))
        .await
        .unwrap();
    assert!(matches!(again, Opened::Existing(s) if s.deposit_msat == 10_000));
    let session = a.session(&[60; 32]).await.unwrap().unwrap();
    assert_eq!(session.return_invoice.as_deref(), Some("lnbcrt1refund"));
    assert_eq!(session.unit_msat, Some(1_000));
    assert_eq!(
        a.debit(&[60; 32], "chat", 4, 1_000, &r1, 1_001)
            .await
            .unwrap(),
        Debit::Done {
            balance_msat: 6_000,
            unit_msat: 1_000
        }
    );
    assert_eq!(
        // At the unit price it was opened at, whatever the price now.
        b.debit(&[60; 32], "chat", 4, 7_000, &r2, 1_002)
            .await
            .unwrap(),
        Debit::Done {
            balance_msat: 2_000,
            unit_msat: 1_000
        }
    );
    assert_eq!(
        a.debit(&[60; 32], "chat", 4, 1_000, &holder("r1", "d3"), 1_003)
            .await
            .unwrap(),
        // Both debits still held by their requests, on either replica.
        Debit::Insufficient {
            spent_msat: 8_000,
            balance_msat: 2_000,
            held_msat: 8_000,
            unit_msat: 1_000
        }
    );
    // The upstream failed for one: given back; the other is kept.
    assert!(b.undo_debit(&r2).await.unwrap());
    assert!(!b.undo_debit(&r2).await.unwrap(), "given back once");
    a.settle_debit(&r1, None, 1_003).await.unwrap();
    assert!(!a.undo_debit(&r1).await.unwrap(), "a settled debit stays");
    assert_eq!(
        a.session(&[60; 32]).await.unwrap().unwrap().spent_msat,
        4_000
    );
    // Held the most, kept what was used: the rest goes back.
    assert_eq!(
        b.debit(&[60; 32], "chat", 2, 1_000, &holder("r2", "d6"), 1_003)
            .await
            .unwrap(),
        Debit::Done {
            balance_msat: 4_000,
            unit_msat: 1_000
        }
    );
    b.settle_debit(&holder("r2", "d6"), Some(500), 1_003)
        .await
        .unwrap();
    assert_eq!(
        a.session(&[60; 32]).await.unwrap().unwrap().spent_msat,
        4_500
    );
    assert!(!b.undo_debit(&holder("r2", "d6")).await.unwrap());
    // ... and never more than was held.
    assert_eq!(
        b.debit(&[60; 32], "chat", 1, 1_000, &holder("r2", "d7"), 1_003)
            .await
            .unwrap(),
        Debit::Done {
            balance_msat: 4_500,
            unit_msat: 1_000
        }
    );
    b.settle_debit(&holder("r2", "d7"), Some(9_999), 1_003)
        .await
        .unwrap();
    assert_eq!(
        a.session(&[60; 32]).await.unwrap().unwrap().spent_msat,
        5_500
    );
    // A top-up credits once, and only the session it was paid for.
    assert_eq!(
        b.top_up(&[60; 32], &[61; 32], 5_000, 1_004).await.unwrap(),
        TopUp::Credited {
            deposit_msat: 15_000
        }
    );
    assert_eq!(
        a.top_up(&[60; 32], &[61; 32], 5_000, 1_005).await.unwrap(),
        TopUp::AlreadyCredited
    );
    assert_eq!(
        a.open_session(&new_session(61, 5_000, None)).await.unwrap(),
        Opened::DepositSpent,
        "a top-up's payment cannot open a session of its own"
    );
    assert_eq!(
        a.top_up(&[62; 32], &[60; 32], 10_000, 1_005).await.unwrap(),
        TopUp::DepositSpent,
        "a deposit cannot top up another session"
    );
    assert_eq!(
        a.top_up(&[63; 32], &[64; 32], 10_000, 1_005).await.unwrap(),
        TopUp::NotFound
    );
    // Another service's requests find no such session.
    assert_eq!(
        a.debit(&[60; 32], "other", 1, 1_000, &holder("r1", "d9"), 1_006)
            .await
            .unwrap(),
        Debit::NotFound
    );
    // A replica killed mid-request: its held debits are given back.
    assert_eq!(
        a.debit(&[60; 32], "chat", 1, 1_000, &holder("dead", "d4"), 1_006)
            .await
            .unwrap(),
        Debit::Done {
            balance_msat: 8_500,
            unit_msat: 1_000
        }
    );
    assert_eq!(b.undo_debits_of("dead").await.unwrap(), 1);
    // One that never starts again: its debits are given back by another,
    // its name held meanwhile; a running one's (`r-held`, held by `a`
    // since the start) are not.
    for (store, replica, token) in [(a, "r-held", "d8"), (b, "gone", "d9")] {
        assert!(matches!(
            store
                .debit(&[60; 32], "chat", 1, 1_000, &holder(replica, token), 1_006)
                .await
                .unwrap(),
            Debit::Done { .. }
        ));
    }
    let mut holders = a.debit_holders().await.unwrap();
    holders.sort();
    assert_eq!(holders, ["gone", "r-held"]);
    assert!(a.replica_running("r-held").await.unwrap());
    assert!(b.replica_running("r-held").await.unwrap());
    assert!(!b.replica_running("gone").await.unwrap());
    assert_eq!(b.undo_debits_of_stopped("r-held").await.unwrap(), None);
    assert_eq!(b.undo_debits_of_stopped("gone").await.unwrap(), Some(1));
    assert!(
        !a.replica_running("gone").await.unwrap(),
        "its name is let go"
    );
    assert!(a.undo_debit(&holder("r-held", "d8")).await.unwrap());
    assert_eq!(
        a.session(&[60; 32]).await.unwrap().unwrap().spent_msat,
        5_500
    );
    // A request in flight keeps its session open however long it runs,
    // and the session is idle from when the request ended.
    assert_eq!(
        a.debit(&[60; 32], "chat", 1, 1_000, &holder("r1", "long"), 1_007)
            .await
            .unwrap(),
        Debit::Done {
            balance_msat: 8_500,
            unit_msat: 1_000
        }
    );
    assert_eq!(b.close_idle_sessions(1_400, 10).await.unwrap(), vec![]);
    assert!(b.has_held_debits(&[60; 32]).await.unwrap());
    a.settle_debit(&holder("r1", "long"), Some(0), 1_390)
        .await
        .unwrap();
    assert!(!b.has_held_debits(&[60; 32]).await.unwrap());
    assert_eq!(b.close_idle_sessions(1_600, 10).await.unwrap(), vec![]);
    // Idle past its timeout: closed once, refunded once.
    let (x, y) = tokio::join!(
        a.close_idle_sessions(1_700, 10),
        b.close_idle_sessions(1_700, 10)
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()].concat(),
        vec![ClosedIdle {
            id: [60; 32],
            refund_msat: 9_500,
            return_invoice: Some("lnbcrt1refund".into())
        }]
    );
    assert!(matches!(
        a.close_session(&[60; 32], 1_700, false).await.unwrap(),
        Closing::AlreadyClosed(_)
    ));
    // A refund that failed (no route, say) is tried again when the
    // session is closed again, by one caller alone; one that succeeded is
    // not.
    a.record_refund(&[60; 32], "failed").await.unwrap();
    let (x, y) = tokio::join!(
        a.close_session(&[60; 32], 1_450, false),
        b.close_session(&[60; 32], 1_450, false)
    );
    let retried: Vec<Closing> = [x.unwrap(), y.unwrap()]
        .into_iter()
        .filter(|c| matches!(c, Closing::Closed { .. }))
        .collect();
    assert_eq!(
        retried,
        vec![Closing::Closed {
            refund_msat: 9_500,
            return_invoice: Some("lnbcrt1refund".into())
        }]
    );
    // Still owed once the retry delay has passed since it was last taken
    // (at 1 450), and taken by one caller alone; then not before the
    // delay passes again.
    assert_eq!(a.take_owed_refunds(1_450, 1_460, 10).await.unwrap(), vec![]);
    let (x, y) = tokio::join!(
        a.take_owed_refunds(1_451, 1_470, 10),
        b.take_owed_refunds(1_451, 1_470, 10)
    );
    let taken: Vec<OwedRefund> = [x.unwrap(), y.unwrap()].concat();
    assert_eq!(
        taken,
        vec![OwedRefund {
            id: [60; 32],
            refund_msat: 9_500,
            return_invoice: "lnbcrt1refund".into()
        }]
    );
    assert_eq!(a.take_owed_refunds(1_470, 1_480, 10).await.unwrap(), vec![]);
    a.record_refund(&[60; 32], "failed").await.unwrap();
    assert_eq!(a.take_owed_refunds(1_471, 1_480, 10).await.unwrap(), taken);
    a.record_refund(&[60; 32], "succeeded").await.unwrap();
    assert_eq!(b.take_owed_refunds(2_000, 2_000, 10).await.unwrap(), vec![]);
    let Closing::AlreadyClosed(done) = b.close_session(&[60; 32], 1_500, false).await.unwrap()
    else {
        panic!("closed twice");
    };
    let end = done.closed.unwrap();
    assert_eq!(
        (end.refund_msat, end.refund_status.as_str()),
        (9_500, "succeeded")
    );
    assert_eq!(
        a.debit(&[60; 32], "chat", 1, 1_000, &holder("r1", "d5"), 1_501)
            .await
            .unwrap(),
        Debit::Closed
    );
    assert_eq!(
        a.top_up(&[60; 32], &[65; 32], 1_000, 1_501).await.unwrap(),
        TopUp::Closed
    );
    assert_eq!(
        a.open_session(&new_session(65, 1_000, None)).await.unwrap(),
        Opened::New,
        "a top-up refused for a closed session leaves its payment unspent"
    );
    assert_eq!(b.close_idle_sessions(9_999, 10).await.unwrap().len(), 1);
    assert_eq!(
        a.close_session(&[66; 32], 1, false).await.unwrap(),
        Closing::NotFound
    );
}

/// Two replicas spending one balance at once never spend more than it
/// holds.
/// A keyed request on a balance spends its claim and keeps its debit in
/// one write, which answers whether the claim was still held.
async fn a_claim_and_its_debit_are_spent_in_one_write([a, b]: &Pair) {
    use Reservation::{Acquired, Consumed};
    let id = [67; 32];
    assert_eq!(
        a.open_session(&new_session(67, 10_000, None))
            .await
            .unwrap(),
        Opened::New
    );
    let (claim, debit) = (holder("rw", "claim-1"), holder("rw", "debit-1"));
    let k = "p:with-debit-1";
    assert_eq!(a.claim(k, &claim, 1000, 100, 20).await.unwrap(), Acquired);
    let held = a.debit(&id, "chat", 3, 1_000, &debit, 20).await.unwrap();
    assert!(
        matches!(
            held,
            Debit::Done {
                balance_msat: 7_000,
                ..
            }
        ),
        "{held:?}"
    );
    // Kept 1 unit of the 3 held; the rest goes back.
    assert!(b
        .commit_claim_with_debit(k, &claim, &debit, Some(1_000), 21)
        .await
        .unwrap());
    assert_eq!(
        a.claim(k, &holder("rx", "t"), 1000, 100, 22).await.unwrap(),
        Consumed
    );
    assert_eq!(a.session(&id).await.unwrap().unwrap().spent_msat, 1_000);
    assert!(!a.undo_debit(&debit).await.unwrap(), "kept, not held");
    assert!(
        b.commit_claim_with_debit(k, &claim, &debit, Some(1_000), 23)
            .await
            .unwrap(),
        "written again: still spent, nothing kept twice"
    );
    assert_eq!(a.session(&id).await.unwrap().unwrap().spent_msat, 1_000);
    assert_eq!(a.undo_debits_of("rw").await.unwrap(), 0);

    // A claim its request no longer held: answered so; the debit is kept
    // all the same, as a settled debit is.
    let (claim, debit) = (holder("rw", "claim-2"), holder("rw", "debit-2"));
    let k = "p:with-debit-2";
    assert_eq!(a.claim(k, &claim, 1000, 100, 24).await.unwrap(), Acquired);
    a.debit(&id, "chat", 1, 1_000, &debit, 24).await.unwrap();
    assert!(!b
        .commit_claim_with_debit(k, &holder("rw", "not-its-holder"), &debit, None, 25)
        .await
        .unwrap());
    assert_eq!(a.session(&id).await.unwrap().unwrap().spent_msat, 2_000);
    assert!(!a.undo_debit(&debit).await.unwrap(), "kept, not held");
    assert!(
        a.release_claim(k, &claim).await.unwrap(),
        "still its holder's"
    );
}

/// A close asked to wait for requests in flight leaves a session with a
/// debit held open, and closes it once the debit is settled.
async fn a_close_waits_for_a_debit_held([a, b]: &Pair) {
    let id = [68; 32];
    assert_eq!(
        a.open_session(&new_session(68, 10_000, None))
            .await
            .unwrap(),
        Opened::New
    );
    let r = holder("rc", "in-flight");
    a.debit(&id, "chat", 3, 1_000, &r, 30).await.unwrap();
    assert_eq!(
        b.close_session(&id, 31, true).await.unwrap(),
        Closing::InFlight
    );
    assert!(a.session(&id).await.unwrap().unwrap().closed.is_none());
    // The request failed: its debit goes back, then the close refunds all.
    assert!(a.undo_debit(&r).await.unwrap());
    assert_eq!(
        b.close_session(&id, 32, true).await.unwrap(),
        Closing::Closed {
            refund_msat: 10_000,
            return_invoice: None
        }
    );
    assert!(matches!(
        b.close_session(&id, 33, true).await.unwrap(),
        Closing::AlreadyClosed(_)
    ));
    assert_eq!(
        b.close_session(&[69; 32], 33, true).await.unwrap(),
        Closing::NotFound
    );
}

async fn concurrent_debits_never_overdraw(stores: &Pair) {
    let a = &stores[0];
    a.open_session(&new_session(70, 10_000, None))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = stores[i % 2].clone();
        let holder = holder("r", &format!("c{i}"));
        tasks.push(tokio::spawn(async move {
            store
                .debit(&[70; 32], "chat", 1, 1_000, &holder, 2_000)
                .await
                .unwrap()
        }));
    }
    let mut done = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Debit::Done { .. }) {
            done += 1;
        }
    }
    assert_eq!(done, 10);
    assert_eq!(
        a.session(&[70; 32]).await.unwrap().unwrap().spent_msat,
        10_000
    );
}

/// A return invoice names one session (an invoice is paid once): an open
/// naming another session's writes nothing and spends no deposit, and of
/// opens naming one new invoice at once on both stores, one takes it.
async fn a_return_invoice_names_one_session(stores: &Pair) {
    let [a, b] = stores;
    let mine = Some("lnbcrt1mine");
    assert_eq!(
        a.open_session(&new_session(80, 5_000, mine)).await.unwrap(),
        Opened::New
    );
    assert_eq!(
        b.open_session(&new_session(81, 5_000, mine)).await.unwrap(),
        Opened::ReturnInvoiceTaken
    );
    assert_eq!(b.session(&[81; 32]).await.unwrap(), None);
    assert_eq!(
        b.open_session(&new_session(81, 5_000, None)).await.unwrap(),
        Opened::New,
        "the deposit was not spent"
    );
    // Named later, by a session that has none: refused the same way.
    assert_eq!(
        a.open_session(&new_session(81, 5_000, mine)).await.unwrap(),
        Opened::ReturnInvoiceTaken
    );
    assert_eq!(
        a.session(&[81; 32]).await.unwrap().unwrap().return_invoice,
        None
    );
    assert!(matches!(
        b.open_session(&new_session(80, 5_000, mine)).await.unwrap(),
        Opened::Existing(s) if s.return_invoice.as_deref() == mine
    ));
    let mut tasks = Vec::new();
    for id in 90..106u8 {
        let store = stores[usize::from(id % 2)].clone();
        tasks.push(tokio::spawn(async move {
            store
                .open_session(&new_session(id, 5_000, Some("lnbcrt1raced")))
                .await
                .unwrap()
        }));
    }
    let mut opened = Vec::new();
    for task in tasks {
        opened.push(task.await.unwrap());
    }
    assert_eq!(
        opened.iter().filter(|o| **o == Opened::New).count(),
        1,
        "{opened:?}"
    );
    assert!(opened
        .iter()
        .all(|o| matches!(o, Opened::New | Opened::ReturnInvoiceTaken)));
}

fn change(name: &str, state: ServiceState, table: Option<&str>) -> ServiceChange {
    ServiceChange {
        name: name.into(),
        state,
        table: table.map(Into::into),
        created: state == ServiceState::Active,
        version: 0,
        at: 100,
        by: "ops".into(),
    }
}

async fn admin_changes_are_shared_and_ordered([a, b]: &Pair) {
    let v0 = a.admin_versions().await.unwrap();
    assert_eq!(v0, b.admin_versions().await.unwrap());
    let table = r#"{"name":"weather","price_sats":7}"#;
    let v1 = a
        .put_service_change(&change("weather", ServiceState::Active, Some(table)))
        .await
        .unwrap();
    let v2 = b
        .put_service_change(&change("news", ServiceState::Disabled, Some("{}")))
        .await
        .unwrap();
    assert!(
        v1 > v0.services && v2 > v1,
        "versions grow: {v0:?} {v1} {v2}"
    );
    // The latest change of a service replaces the one before.
    let v3 = b
        .put_service_change(&change("weather", ServiceState::Deleted, None))
        .await
        .unwrap();
    assert!(v3 > v2);
    let changes = a.service_changes().await.unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].name, "news");
    assert_eq!(changes[0].state, ServiceState::Disabled);
    assert!(!changes[0].created);
    assert_eq!(changes[1].name, "weather");
    assert_eq!(changes[1].state, ServiceState::Deleted);
    assert_eq!(changes[1].table, None);
    assert!(!changes[1].created, "the latest change says");
    b.put_service_change(&change("news", ServiceState::Reset, None))
        .await
        .unwrap();
    assert_eq!(
        a.service_changes().await.unwrap()[1].state,
        ServiceState::Reset
    );
    assert_eq!(changes[1].version, v3);
    assert!(b.admin_versions().await.unwrap().services > v3);

    // A payment is revoked once; replicas catch up by sequence.
    let before = a.admin_versions().await.unwrap().revocations;
    assert!(a.revoke(&[0x31; 32], 200, "ops").await.unwrap());
    assert!(!b.revoke(&[0x31; 32], 201, "other").await.unwrap());
    assert!(b.revoke(&[0x32; 32], 202, "ops").await.unwrap());
    let all = b.revocations(before).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.payment_hash[0]).collect::<Vec<_>>(),
        [0x31, 0x32]
    );
    assert_eq!(all[0].by, "ops");
    let last = a.admin_versions().await.unwrap().revocations;
    assert_eq!(last, all[1].seq);
    assert!(a.revocations(last).await.unwrap().is_empty());

    // 402 counts add up per service and hour, from any replica.
    let count = |service: &str, hour: u64, count: u64| ChallengeCount {
        service: service.into(),
        hour,
        count,
    };
    a.add_challenge_counts(&[count("weather", 3600, 5), count("news", 3600, 1)])
        .await
        .unwrap();
    b.add_challenge_counts(&[count("weather", 3600, 2), count("weather", 7200, 4)])
        .await
        .unwrap();
    b.add_challenge_counts(&[]).await.unwrap();
    assert_eq!(
        a.challenge_counts(3600, 7200).await.unwrap(),
        [count("news", 3600, 1), count("weather", 3600, 7)]
    );
    assert_eq!(b.challenge_counts(0, 10_800).await.unwrap().len(), 3);

    // The log, newest first.
    for (i, action) in ["service.update", "token.revoke"].iter().enumerate() {
        let entry = AuditEntry {
            at: 300 + i as u64,
            who: "ops".into(),
            action: (*action).into(),
            target: "weather".into(),
            detail: "{}".into(),
        };
        [a, b][i].log_admin(&entry).await.unwrap();
    }
    let log = a.admin_log(1).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, "token.revoke");
    assert_eq!(b.admin_log(10).await.unwrap().len(), 2);
}

async fn payments_are_searched_and_summed([a, b]: &Pair) {
    let paid = |hash: u8, service: &str, scheme: &str, at: u64, served: u64| PaymentRecord {
        payment_hash: [hash; 32],
        service: service.into(),
        scheme: scheme.into(),
        amount_msat: 1_000 * u64::from(hash),
        at,
        served,
    };
    let day = 86_400 * 100;
    a.record_payments(&[
        paid(1, "weather", "L402", day + 10, 1),
        paid(2, "weather", "Payment", day + 3_700, 3),
        paid(3, "news", "Payment", day + 3_800, 1),
    ])
    .await
    .unwrap();
    let window = |service: Option<&str>, scheme: Option<&str>| PaymentQuery {
        since: day,
        until: day + 86_400,
        service: service.map(Into::into),
        scheme: scheme.map(Into::into),
        payment_hash: None,
        limit: 100,
    };
    let found = b.payments(&window(None, None)).await.unwrap();
    assert_eq!(
        found.iter().map(|p| p.payment_hash[0]).collect::<Vec<_>>(),
        [3, 2, 1],
        "newest first"
    );
    assert_eq!(found[1].served, 3);
    assert_eq!(found[1].amount_msat, 2_000);
    let weather = b.payments(&window(Some("weather"), None)).await.unwrap();
    assert_eq!(weather.len(), 2);
    let mpp = b
        .payments(&window(Some("weather"), Some("Payment")))
        .await
        .unwrap();
    assert_eq!(mpp.len(), 1);
    let one = b
        .payments(&PaymentQuery {
            payment_hash: Some([3; 32]),
            ..window(None, None)
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].service, "news");
    let limited = b
        .payments(&PaymentQuery {
            limit: 1,
            ..window(None, None)
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);

    // Sessions opened in the first hour and closed in the second, their unspent
    // balance refunded: counted when the refund succeeded, not before.
    // A refund is paid in whole satoshis: 5 500 msat left are 5 sat paid.
    for (id, refund) in [(240, "succeeded"), (241, "failed"), (242, "pending")] {
        let opened = NewSession {
            service: "weather".into(),
            now: day + 20,
            ..new_session(id, 5_500, Some(&format!("lnbcrt1back{id}")))
        };
        assert_eq!(b.open_session(&opened).await.unwrap(), Opened::New);
        let closed = a
            .close_session(&[id; 32], day + 3_900, false)
            .await
            .unwrap();
        assert!(matches!(
            closed,
            Closing::Closed {
                refund_msat: 5_500,
                ..
            }
        ));
        b.record_refund(&[id; 32], refund).await.unwrap();
    }
    let hourly = a.revenue(day, day + 86_400, 3_600).await.unwrap();
    let row = |service: &str, start: u64| {
        hourly
            .iter()
            .find(|r| r.service == service && r.start == start)
            .cloned()
    };
    let first = row("weather", day).unwrap();
    assert_eq!(
        (first.payments, first.amount_msat, first.served),
        (1, 1_000, 1)
    );
    assert_eq!(first.refunded_msat, 0);
    let second = row("weather", day + 3_600).unwrap();
    assert_eq!(
        (second.payments, second.amount_msat, second.refunded_msat),
        (1, 2_000, 5_000)
    );
    assert_eq!(row("news", day + 3_600).unwrap().amount_msat, 3_000);
    assert_eq!(row("news", day + 3_600).unwrap().refunded_msat, 0);
    assert_eq!(hourly.len(), 3);
    let daily = b.revenue(day, day + 86_400, 86_400).await.unwrap();
    let weather_day = daily.iter().find(|r| r.service == "weather").unwrap();
    assert_eq!(
        (
            weather_day.payments,
            weather_day.amount_msat,
            weather_day.served,
            weather_day.refunded_msat
        ),
        (2, 3_000, 4, 5_000)
    );
}

/// A replica's name is held by one process (store) at a time: a copy of
/// its data dir cannot run beside it.
async fn a_replica_name_is_held_by_one_process([a, b]: &Pair) {
    assert!(a.hold_replica("r-held").await.unwrap());
    assert!(a.hold_replica("r-held").await.unwrap(), "held already");
    assert!(!b.hold_replica("r-held").await.unwrap());
    assert!(b.hold_replica("r-other").await.unwrap());
}

/// What each replica derives from its secrets is shared, one row a
/// replica, the latest kept.
async fn secret_checks_are_shared_one_per_replica([a, b]: &Pair) {
    let check = |n: u8, accepted: &[u8]| gate402_store::SecretCheck {
        current: [n; 32],
        accepted: accepted.iter().map(|m| [*m; 32]).collect(),
    };
    a.put_secret_check("r-s1", &check(1, &[1])).await.unwrap();
    b.put_secret_check("r-s2", &check(2, &[2, 1]))
        .await
        .unwrap();
    a.put_secret_check("r-s1", &check(3, &[3, 2]))
        .await
        .unwrap();
    let mut seen = b.secret_checks().await.unwrap();
    seen.retain(|(name, _)| name.starts_with("r-s"));
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        seen,
        vec![
            ("r-s1".into(), check(3, &[3, 2])),
            ("r-s2".into(), check(2, &[2, 1]))
        ]
    );
    assert!(
        !check(3, &[3, 2]).agrees_with(&check(2, &[2, 1])),
        "2 does not take 3"
    );
    assert!(check(3, &[3, 2]).agrees_with(&check(2, &[2, 3])));
}

async fn keeps_the_contract(stores: &Pair) {
    the_database_answers_a_ping(stores).await;
    a_replica_name_is_held_by_one_process(stores).await;
    secret_checks_are_shared_one_per_replica(stores).await;
    a_payment_is_served_once(stores).await;
    a_lapsed_claim_is_fenced_from_its_old_holder(stores).await;
    renewing_extends_the_lease(stores).await;
    a_restarted_replica_releases_its_claims(stores).await;
    concurrent_claims_acquire_once(stores).await;
    consumed_claims_are_purged_after_expiry(stores).await;
    an_upstream_fails_on_one_payment_a_bounded_number_of_times(stores).await;
    kept_responses_are_shared_found_once_spent_and_expire(stores).await;
    refunds_owed_are_counted_and_listed(stores).await;
    a_balance_is_credited_once_spent_atomically_and_refunded_once(stores).await;
    a_balance_gives_back_failures_up_to_twice_its_spending(stores).await;
    a_claim_and_its_debit_are_spent_in_one_write(stores).await;
    a_close_waits_for_a_debit_held(stores).await;
    concurrent_debits_never_overdraw(stores).await;
    open_sessions_are_counted_and_listed(stores).await;
    a_return_invoice_names_one_session(stores).await;
    payments_are_counted_once(stores).await;
    claims_are_committed_in_batches(stores).await;
    new_claims_are_not_legacy(stores).await;
    freebies_count_per_client_and_service(stores).await;
    admin_changes_are_shared_and_ordered(stores).await;
    payments_are_searched_and_summed(stores).await;
    // Before the invoice the reopened database is checked for is put.
    old_invoices_are_purged(stores).await;
    invoices_are_found_by_payment_hash(stores).await;
}

/// On a database the previous release left with `LEGACY_ROWS`: claims
/// keyed by MPP challenge id, two consumed, one in flight for the replica
/// `old` that was stopped for the upgrade.
async fn legacy_claims_are_honoured([a, b]: &Pair) {
    assert_eq!(
        a.legacy_claims_until().await.unwrap(),
        5000,
        "the latest expiry of the consumed ones"
    );
    assert!(b.legacy_consumed("ch-old").await.unwrap());
    assert!(b.legacy_consumed("ch-older").await.unwrap());
    assert!(!b.legacy_consumed("ch-in-flight").await.unwrap());
    assert!(!b.legacy_consumed("ch-unknown").await.unwrap());
    // A claim made now is not legacy, whatever its expiry.
    let (k, h) = (key(12), holder("new", "n"));
    assert_eq!(
        a.claim(&k, &h, 8000, 100, 10).await.unwrap(),
        Reservation::Acquired
    );
    assert!(a.commit_claim(&k, &h, 11).await.unwrap());
    assert_eq!(b.legacy_claims_until().await.unwrap(), 5000);
    assert!(!b.legacy_consumed(&k).await.unwrap());
    // The old replica's claim in flight goes when it restarts.
    assert_eq!(a.release_claims_of("old").await.unwrap(), 1);
    // Legacy claims are purged like any.
    assert_eq!(a.purge_expired(4000).await.unwrap(), 1);
    assert!(!b.legacy_consumed("ch-older").await.unwrap());
    assert_eq!(b.legacy_claims_until().await.unwrap(), 5000);
    assert_eq!(a.purge_expired(6000).await.unwrap(), 1);
    assert_eq!(b.legacy_claims_until().await.unwrap(), 0);
}

/// What the previous release wrote: consumed claims and one in flight.
const LEGACY_ROWS: &str = "
    INSERT INTO challenges (id, consumed, lease_until, expires_at, consumed_at, holder) VALUES
        ('ch-older', TRUE, 100, 3000, 20, 'old'),
        ('ch-old', TRUE, 100, 5000, 30, 'old'),
        ('ch-in-flight', FALSE, 10000, 9000, NULL, 'old');";

/// A replica of the previous release still running during a rolling
/// upgrade writes claims the way it always did.
const CLAIM_OF_AN_OLD_REPLICA: &str = "
    INSERT INTO challenges (id, lease_until, expires_at, holder) VALUES ('ch-late', 100, 6500, 'old');
    UPDATE challenges SET consumed = TRUE, consumed_at = 40 WHERE id = 'ch-late';";

/// The SQLite schema as released before claims were fenced (version 2).
const SQLITE_SCHEMA_2: &str = "
    CREATE TABLE tokens (
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
    );
    ALTER TABLE challenges ADD COLUMN holder TEXT;
    CREATE INDEX challenges_holder ON challenges (holder) WHERE consumed = 0;
    PRAGMA user_version = 2;";

/// The PostgreSQL schema as released before claims were fenced (version 2).
const POSTGRES_SCHEMA_2: &str = "
    CREATE TABLE tokens (
        token_id BYTEA PRIMARY KEY,
        root_key BYTEA NOT NULL,
        payment_hash BYTEA NOT NULL,
        service TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE invoices (
        payment_hash BYTEA PRIMARY KEY,
        bolt11 TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        service TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE challenges (
        id TEXT PRIMARY KEY,
        consumed BOOLEAN NOT NULL DEFAULT FALSE,
        lease_until BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        consumed_at BIGINT
    );
    CREATE INDEX challenges_expiry ON challenges (expires_at) WHERE consumed;
    CREATE TABLE receipts (
        id BIGSERIAL PRIMARY KEY,
        payment_hash BYTEA NOT NULL,
        scheme TEXT NOT NULL,
        challenge_id TEXT,
        service TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        served_at BIGINT NOT NULL
    );
    CREATE TABLE freebies (
        client TEXT NOT NULL,
        service TEXT NOT NULL,
        used BIGINT NOT NULL,
        PRIMARY KEY (client, service)
    );
    ALTER TABLE challenges ADD COLUMN holder TEXT;
    CREATE INDEX challenges_holder ON challenges (holder) WHERE NOT consumed;
    CREATE TABLE gate402_schema (version INTEGER NOT NULL);
    INSERT INTO gate402_schema (version) VALUES (1), (2);";

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate402.sqlite3");
    keeps_the_contract(&[
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    ])
    .await;
    // And what it keeps survives reopening.
    let again = SqliteStore::open(&path).unwrap();
    assert!(again.invoice(&[3; 32]).await.unwrap().is_some());
    assert!(!again.record_payment(&payment(5, "svc")).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_keeps_the_contract() {
    let postgres = TestPostgres::start().await;
    // Two replicas starting at once: the migration runs once.
    let (a, b) = tokio::join!(
        PostgresStore::connect(&postgres.url),
        PostgresStore::connect(&postgres.url)
    );
    keeps_the_contract(&[Arc::new(a.unwrap()), Arc::new(b.unwrap())]).await;
    // Reconnecting finds the schema in place and the data kept.
    let again = PostgresStore::connect(&postgres.url).await.unwrap();
    assert!(again.invoice(&[3; 32]).await.unwrap().is_some());
    assert!(!again.record_payment(&payment(5, "svc")).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_upgrade_keeps_legacy_claims() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate402.sqlite3");
    let old = rusqlite::Connection::open(&path).unwrap();
    old.execute_batch(SQLITE_SCHEMA_2).unwrap();
    old.execute_batch(LEGACY_ROWS).unwrap();
    let stores: Pair = [
        Arc::new(SqliteStore::open(&path).unwrap()),
        Arc::new(SqliteStore::open(&path).unwrap()),
    ];
    legacy_claims_are_honoured(&stores).await;
    // The upgraded database keeps the whole contract.
    keeps_the_contract(&stores).await;
    old.execute_batch(CLAIM_OF_AN_OLD_REPLICA).unwrap();
    assert_eq!(stores[0].legacy_claims_until().await.unwrap(), 6500);
    assert!(stores[1].legacy_consumed("ch-late").await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_upgrade_keeps_legacy_claims() {
    let postgres = TestPostgres::start().await;
    let old = sqlx::PgPool::connect(&postgres.url).await.unwrap();
    sqlx::raw_sql(POSTGRES_SCHEMA_2)
        .execute(&old)
        .await
        .unwrap();
    sqlx::raw_sql(LEGACY_ROWS).execute(&old).await.unwrap();
    // Two upgraded replicas starting at once: the migration runs once.
    let (a, b) = tokio::join!(
        PostgresStore::connect(&postgres.url),
        PostgresStore::connect(&postgres.url)
    );
    let stores: Pair = [Arc::new(a.unwrap()), Arc::new(b.unwrap())];
    legacy_claims_are_honoured(&stores).await;
    keeps_the_contract(&stores).await;
    sqlx::raw_sql(CLAIM_OF_AN_OLD_REPLICA)
        .execute(&old)
        .await
        .unwrap();
    assert_eq!(stores[0].legacy_claims_until().await.unwrap(), 6500);
    assert!(stores[1].legacy_consumed("ch-late").await.unwrap());
}

/// Claims and their commits go through connections the store keeps
/// across batches: after the database restarts, each fails at most once,
/// as unavailable, is replaced, and nothing written before or after is
/// lost or written twice.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_kept_connections_heal_after_a_restart() {
    /// `call`'s answer once the connections it may meet have healed.
    async fn healed<T, F: std::future::Future<Output = Result<T, StoreError>>>(
        mut call: impl FnMut() -> F,
    ) -> T {
        for _ in 0..4 {
            match call().await {
                Ok(answer) => return answer,
                Err(StoreError::Unavailable(_)) => {}
                Err(e) => panic!("not an outage: {e}"),
            }
        }
        call().await.expect("a kept connection does not heal")
    }

    let mut postgres = TestPostgres::start().await;
    let store = PostgresStore::connect(&postgres.url).await.unwrap();
    let (before, after) = (key(1), key(2));
    let (other, third) = (key(3), holder("r", "3"));
    let (first, second, later) = (holder("r", "1"), holder("r", "2"), holder("r", "4"));
    // The claim writer's and the committer's connections are kept.
    let claims = tokio::join!(
        store.claim(&before, &first, 1000, 100, 10),
        store.claim(&other, &third, 1000, 100, 10),
    );
    assert_eq!(claims.0.unwrap(), Reservation::Acquired);
    assert_eq!(claims.1.unwrap(), Reservation::Acquired);
    let spent = [(before.clone(), first.clone())];
    assert_eq!(store.commit_claims(&spent, 11).await.unwrap(), vec![true]);

    postgres.stop();
    postgres.restart().await;

    let claimed = healed(|| store.claim(&after, &second, 1000, 100, 12)).await;
    assert_eq!(claimed, Reservation::Acquired);
    let spent = [(after.clone(), second.clone())];
    assert_eq!(healed(|| store.commit_claims(&spent, 13)).await, vec![true]);
    for key in [&before, &after] {
        let again = healed(|| store.claim(key, &later, 1000, 100, 200)).await;
        assert_eq!(again, Reservation::Consumed);
    }
}

/// A claim leaves the flush of the write-ahead log to its spend: claims
/// alone make the server write its log a few times, their spends once
/// each. A claim the server lost before that flush (as a crash can lose
/// it) is not there for its spend, which then marks nothing, so a new
/// claim acquires the payment and it is served once.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_claims_leave_the_flush_to_their_spends() {
    const CLAIMS: u8 = 40;
    let postgres = TestPostgres::start().await;
    // The WAL writer's own writes, every 10 s at most, out of the count.
    postgres.sql("ALTER SYSTEM SET wal_writer_delay = '10s'");
    postgres.sql("SELECT pg_reload_conf()");
    // The log writes of every connection so far, counted once each has
    // ended and reported them.
    let log_writes = || {
        postgres.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        );
        for _ in 0..200 {
            let others = postgres.sql(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            );
            if others.trim() == "0" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let writes = postgres.sql("SELECT wal_write FROM pg_stat_wal");
        writes.trim().parse::<u64>().expect("a count of log writes")
    };

    let store = PostgresStore::connect(&postgres.url).await.unwrap();
    let claims: Vec<(String, ClaimHolder)> = (0..CLAIMS)
        .map(|n| (key(n), holder("r", &n.to_string())))
        .collect();
    // One claim at a time: each its own statement and transaction.
    let before = log_writes();
    for (k, h) in &claims {
        let claimed = store.claim(k, h, 1000, 100, 10).await.unwrap();
        assert_eq!(claimed, Reservation::Acquired);
    }
    let claimed = log_writes() - before;
    assert!(
        claimed < u64::from(CLAIMS) / 2,
        "{CLAIMS} claims wrote the log {claimed} times"
    );

    let (lost, kept) = claims.split_first().unwrap();
    postgres.sql(&format!("DELETE FROM challenges WHERE id = '{}'", lost.0));
    let before = log_writes();
    // The committer's kept connection was ended with the others: its
    // first spend fails as unavailable, as after a restart, and is sent
    // again (as the committer's batch would).
    let spend = async |spent: &(String, ClaimHolder), now| match store
        .commit_claims(std::slice::from_ref(spent), now)
        .await
    {
        Err(StoreError::Unavailable(_)) => {
            store.commit_claims(std::slice::from_ref(spent), now).await
        }
        answer => answer,
    };
    for spent in kept {
        assert_eq!(spend(spent, 11).await.unwrap(), vec![true]);
    }
    let spends = log_writes() - before;
    assert!(
        spends >= u64::from(CLAIMS) - 1,
        "{} spends wrote the log {spends} times",
        CLAIMS - 1
    );
    assert_eq!(
        spend(lost, 12).await.unwrap(),
        vec![false],
        "a lost claim was spent"
    );
    let again = store
        .claim(&lost.0, &holder("r", "again"), 1000, 100, 13)
        .await;
    assert_eq!(again.unwrap(), Reservation::Acquired);
}

/// Spending a claim rewrites no index entry: the commit is a heap-only
/// update, which is what keeps PostgreSQL's work per paid request small.
/// It stops being one as soon as an index names `consumed` (even in a
/// predicate) or a page has no room for the new version.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_spends_claims_in_place() {
    const CLAIMS: u8 = 50;
    let postgres = TestPostgres::start().await;
    let store = PostgresStore::connect(&postgres.url).await.unwrap();
    let spent: Vec<(String, ClaimHolder)> = (0..CLAIMS)
        .map(|n| (key(n), holder("r", &n.to_string())))
        .collect();
    for (k, h) in &spent {
        let claimed = store.claim(k, h, 1000, 100, 10).await.unwrap();
        assert_eq!(claimed, Reservation::Acquired);
    }
    let committed = store.commit_claims(&spent, 11).await.unwrap();
    assert_eq!(committed, vec![true; CLAIMS as usize]);
    for (k, h) in &spent {
        let again = store.claim(k, h, 1000, 100, 12).await.unwrap();
        assert_eq!(again, Reservation::Consumed);
    }

    // Counters reach the statistics views within a second or so of a
    // transaction's end.
    let stats = sqlx::PgPool::connect(&postgres.url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (updated, in_place) = loop {
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'challenges'",
        )
        .fetch_one(&stats)
        .await
        .unwrap();
        if counts.0 >= i64::from(CLAIMS) || std::time::Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(updated, i64::from(CLAIMS), "every claim was spent once");
    assert_eq!(in_place, updated, "a spent claim added index entries");
}

/// A batch of spent claims finds its rows through the primary key however
/// much the table grew since the store first spent some: a plan kept from
/// when the table was nearly empty scans all of it for every batch.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_spends_claims_by_key_however_the_table_grew() {
    const BATCH: u32 = 40;
    let postgres = TestPostgres::start().await;
    let store = PostgresStore::connect(&postgres.url).await.unwrap();
    // Batches as a busy gateway commits them, each of `BATCH` claims.
    let spend = |batch: u32| {
        let store = &store;
        async move {
            let spent: Vec<(String, ClaimHolder)> = (batch * BATCH..(batch + 1) * BATCH)
                .map(|n| (format!("p:{n:064x}"), holder("r", &n.to_string())))
                .collect();
            for (k, h) in &spent {
                let claimed = store.claim(k, h, 1000, 100, 10).await.unwrap();
                assert_eq!(claimed, Reservation::Acquired);
            }
            let committed = store.commit_claims(&spent, 11).await.unwrap();
            assert_eq!(committed, vec![true; BATCH as usize]);
        }
    };
    // While the table is nearly empty: more than the five runs after
    // which PostgreSQL may keep one plan for a statement.
    for batch in 0..8 {
        spend(batch).await;
    }
    let stats = sqlx::PgPool::connect(&postgres.url).await.unwrap();
    sqlx::query(
        "INSERT INTO challenges (id, lease_until, expires_at, holder, holder_token, legacy)
         SELECT 'x:' || g, 0, 1000, 'other', 't', FALSE FROM generate_series(1, 50000) AS g",
    )
    .execute(&stats)
    .await
    .unwrap();
    // Counters reach the statistics views some seconds after a
    // transaction's end: wait until they show every claim spent so far.
    let counts = |updated: u32| {
        let stats = &stats;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let (scans, done): (i64, i64) = sqlx::query_as(
                    "SELECT seq_scan, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'challenges'",
                )
                .fetch_one(stats)
                .await
                .unwrap();
                if done >= i64::from(updated) {
                    break scans;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the statistics never showed {updated} claims spent"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    let scans_before = counts(8 * BATCH).await;
    for batch in 8..13 {
        spend(batch).await;
    }
    let scans_after = counts(13 * BATCH).await;
    assert_eq!(
        scans_after - scans_before,
        0,
        "spending 5 batches of claims scanned the whole table"
    );
}

/// Runs `a` and `b`, each a batch written by its own replica, while
/// another transaction holds a lock that both batches need (taken by
/// `hold`); lets it go once both wait on a lock, then returns their
/// results. Batches that lock their rows in the order they were given
/// then deadlock when given the same rows in opposite orders.
async fn behind_one_lock<T: Send + 'static>(
    url: &str,
    hold: &str,
    a: impl std::future::Future<Output = T> + Send + 'static,
    b: impl std::future::Future<Output = T> + Send + 'static,
) -> (T, T) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut holding = pool.begin().await.unwrap();
    sqlx::raw_sql(hold).execute(&mut *holding).await.unwrap();
    let (a, b) = (tokio::spawn(a), tokio::spawn(b));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the two batches never both waited on a lock ({waiting} waiting)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    holding.rollback().await.unwrap();
    (a.await.unwrap(), b.await.unwrap())
}

/// Two replicas claiming the same new keys in opposite orders at once:
/// every key is acquired by exactly one of them, and neither batch fails.
#[tokio::test]
async fn postgres_claim_batches_in_opposite_orders_do_not_deadlock() {
    let postgres = TestPostgres::start().await;
    let a = Arc::new(PostgresStore::connect(&postgres.url).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&postgres.url).await.unwrap());
    let keys = [key(1), key(2), key(3)];
    // One batch each: on this runtime's one thread, a store's three
    // claims are all queued before its writer runs.
    let claims = |store: Arc<PostgresStore>, [x, y, z]: [String; 3], replica: &'static str| async move {
        let h = holder(replica, "1");
        let (x, y, z) = tokio::join!(
            store.claim(&x, &h, 1000, 100, 10),
            store.claim(&y, &h, 1000, 100, 10),
            store.claim(&z, &h, 1000, 100, 10)
        );
        vec![x, y, z]
    };
    let [k1, k2, k3] = keys.clone();
    let forward = claims(a, [k1.clone(), k2.clone(), k3.clone()], "a");
    let backward = claims(b, [k3, k2, k1], "b");
    // The middle key is held by a transaction that inserted it and has
    // not ended: both batches wait on it with one key already theirs.
    let hold = format!(
        "INSERT INTO challenges (id, lease_until, expires_at) VALUES ('{}', 0, 1000)",
        keys[1]
    );
    let (forward, backward) = behind_one_lock(&postgres.url, &hold, forward, backward).await;
    let forward: Vec<Reservation> = forward.into_iter().map(Result::unwrap).collect();
    let mut backward: Vec<Reservation> = backward.into_iter().map(Result::unwrap).collect();
    backward.reverse();
    for (i, (f, b)) in forward.iter().zip(&backward).enumerate() {
        let acquired = [f, b]
            .iter()
            .filter(|r| ***r == Reservation::Acquired)
            .count();
        assert_eq!(acquired, 1, "key {i}: {f:?} and {b:?}");
    }
}

/// Two replicas counting the same payments in opposite orders at once:
/// neither fails, and every serving is counted.
#[tokio::test]
async fn postgres_payment_batches_in_opposite_orders_do_not_deadlock() {
    let postgres = TestPostgres::start().await;
    let a = Arc::new(PostgresStore::connect(&postgres.url).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&postgres.url).await.unwrap());
    let payments = [payment(1, "s"), payment(2, "s"), payment(3, "s")];
    a.record_payments(&payments).await.unwrap();
    let write = |store: Arc<PostgresStore>, payments: Vec<PaymentRecord>| async move {
        store.record_payments(&payments).await
    };
    let forward = write(a.clone(), payments.to_vec());
    let backward = write(b, payments.iter().rev().cloned().collect());
    let hold = format!(
        "SELECT 1 FROM payments WHERE payment_hash = '\\x{}' FOR UPDATE",
        "02".repeat(32)
    );
    let (forward, backward) = behind_one_lock(&postgres.url, &hold, forward, backward).await;
    assert_eq!(forward.unwrap(), vec![false; 3]);
    assert_eq!(backward.unwrap(), vec![false; 3]);
    let all = PaymentQuery {
        until: u64::MAX,
        limit: 10,
        ..PaymentQuery::default()
    };
    let rows = a.payments(&all).await.unwrap();
    let served: Vec<u64> = rows.iter().map(|r| r.served).collect();
    assert_eq!(served, vec![3, 3, 3]);
}

/// Two replicas adding 402 counts of the same services in opposite
/// orders at once: neither fails, and every count is added.
#[tokio::test]
async fn postgres_challenge_count_batches_in_opposite_orders_do_not_deadlock() {
    let postgres = TestPostgres::start().await;
    let a = Arc::new(PostgresStore::connect(&postgres.url).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&postgres.url).await.unwrap());
    let counts: Vec<ChallengeCount> = ["a", "b", "c"]
        .iter()
        .map(|service| ChallengeCount {
            service: (*service).into(),
            hour: 3600,
            count: 1,
        })
        .collect();
    a.add_challenge_counts(&counts).await.unwrap();
    let add = |store: Arc<PostgresStore>, counts: Vec<ChallengeCount>| async move {
        store.add_challenge_counts(&counts).await
    };
    let forward = add(a.clone(), counts.clone());
    let backward = add(b, counts.iter().rev().cloned().collect());
    let hold = "SELECT 1 FROM challenge_counts WHERE service = 'b' FOR UPDATE";
    let (forward, backward) = behind_one_lock(&postgres.url, hold, forward, backward).await;
    forward.unwrap();
    backward.unwrap();
    let added: Vec<u64> = a
        .challenge_counts(0, 7200)
        .await
        .unwrap()
        .iter()
        .map(|c| c.count)
        .collect();
    assert_eq!(added, vec![3, 3, 3]);
}
