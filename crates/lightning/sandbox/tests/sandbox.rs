//! The sandbox against the backend contract, its refusals, its HTTP payer,
//! and a restart.

use std::future::IntoFuture;
use std::time::Duration;

use gate402_lightning::contract::{self, Pair};
use gate402_lightning::{InvoiceRequest, InvoiceStatus, LightningBackend, PayError};
use gate402_lightning_sandbox::http::{pay_amount_via, pay_as, pay_via, router, ClientError};
use gate402_lightning_sandbox::Sandbox;
use sha2::Digest;

fn request(amount_msat: u64) -> InvoiceRequest {
    InvoiceRequest {
        amount_msat,
        memo: "test".into(),
        expiry_secs: 600,
    }
}

#[tokio::test]
async fn keeps_the_backend_contract() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::open(dir.path()).unwrap();
    contract::run_all(&Pair {
        receiver: &sandbox,
        payer: &sandbox,
    })
    .await;
}

#[tokio::test]
async fn refuses_invoices_it_did_not_issue() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let issuer = Sandbox::open(a.path()).unwrap();
    let other = Sandbox::open(b.path()).unwrap();
    let created = issuer.create_invoice(request(1_000)).await.unwrap();
    match other.settle(&created.bolt11) {
        Err(PayError::Rejected(reason)) => assert!(reason.contains("only invoices it issued")),
        outcome => panic!("expected a refusal, got {outcome:?}"),
    }
    // BOLT11 spec example: mainnet, expired, someone else's.
    let foreign = "lnbc2500u1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu9qrsgquk0rl77nj30yxdy8j9vdx85fkpmdla2087ne0xh8nhedh8w27kyke0lp53ut353s06fv3qfegext0eh0ymjpf39tuven09sam30g4vgpfna3rh";
    assert!(matches!(issuer.settle(foreign), Err(PayError::Rejected(_))));
    assert!(matches!(
        issuer.settle("lnbcrt1garbage"),
        Err(PayError::InvalidInvoice(_))
    ));
}

#[tokio::test]
async fn restart_loses_no_invoice() {
    let dir = tempfile::tempdir().unwrap();
    let (paid, open, pubkey) = {
        let sandbox = Sandbox::open(dir.path()).unwrap();
        let paid = sandbox.create_invoice(request(2_000)).await.unwrap();
        let open = sandbox.create_invoice(request(3_000)).await.unwrap();
        sandbox.settle(&paid.bolt11).unwrap();
        (paid, open, sandbox.pubkey())
    };
    let reopened = Sandbox::open(dir.path()).unwrap();
    assert_eq!(reopened.pubkey(), pubkey, "same node key after restart");
    assert!(reopened
        .invoice_status(&paid.payment_hash)
        .await
        .unwrap()
        .is_settled());
    assert_eq!(
        reopened.invoice_status(&open.payment_hash).await.unwrap(),
        InvoiceStatus::Open
    );
    let outcome = reopened.settle(&open.bolt11).unwrap();
    assert_eq!(
        <[u8; 32]>::from(sha2::Sha256::digest(outcome.preimage)),
        open.payment_hash
    );
    assert!(matches!(
        reopened.settle(&paid.bolt11),
        Err(PayError::AlreadyPaid(_))
    ));
}

#[tokio::test]
async fn http_payer() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(sandbox.clone())).into_future());
    let client = reqwest::Client::new();

    let created = sandbox.create_invoice(request(7_000)).await.unwrap();
    let wait = sandbox.wait_invoice(&created.payment_hash, Duration::from_secs(10));
    let me = "the payer's own secret, 64 bytes would do as well";
    let (paid, settled) = tokio::join!(pay_as(&client, &url, &created.bolt11, None, me), wait);
    let paid = paid.unwrap();
    assert_eq!(paid.amount_msat, 7_000);
    let preimage = hex::decode(&paid.preimage).unwrap();
    assert_eq!(
        <[u8; 32]>::from(sha2::Sha256::digest(&preimage)),
        created.payment_hash
    );
    assert!(settled.unwrap().is_settled());

    // Paying again pays nothing and answers what the first payment got, to
    // its payer alone: someone else who saw the invoice learns nothing.
    match pay_as(&client, &url, &created.bolt11, None, me).await {
        Err(ClientError::AlreadyPaid(again)) => assert_eq!(again, paid),
        other => panic!("{other:?}"),
    }
    for other in [
        pay_as(
            &client,
            &url,
            &created.bolt11,
            None,
            "someone else's secret",
        )
        .await,
        pay_via(&client, &url, &created.bolt11).await,
    ] {
        match other {
            Err(ClientError::Refused {
                status: 409,
                detail,
            }) => {
                assert!(!detail.contains(&paid.preimage), "{detail}");
                assert!(detail.contains("another payer"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
    match pay_via(&client, &url, "lnbc1nope").await {
        Err(ClientError::Refused { status: 400, .. }) => {}
        other => panic!("{other:?}"),
    }
    let raw = client
        .post(format!("{url}/sandbox/pay"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(raw.headers()["content-type"], "application/problem+json");
    match pay_via(&client, "http://127.0.0.1:1", &created.bolt11).await {
        Err(ClientError::Unreachable { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_payer_pays_an_invoice_without_an_amount() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(sandbox.clone())).into_future());
    let client = reqwest::Client::new();

    let refund = sandbox.create_invoice(request(0)).await.unwrap();
    // Without an amount there is nothing to pay, and zero is no amount.
    for refused in [
        pay_via(&client, &url, &refund.bolt11).await,
        pay_amount_via(&client, &url, &refund.bolt11, 0).await,
    ] {
        match refused {
            Err(ClientError::Refused { status: 400, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    let priced = sandbox.create_invoice(request(3_000)).await.unwrap();
    match pay_amount_via(&client, &url, &priced.bolt11, 3_000).await {
        Err(ClientError::Refused {
            status: 400,
            detail,
        }) => {
            assert!(detail.contains("3000 msat"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sandbox.invoice_status(&priced.payment_hash).await.unwrap(),
        InvoiceStatus::Open
    );

    let paid = pay_amount_via(&client, &url, &refund.bolt11, 4_321_000)
        .await
        .unwrap();
    assert_eq!(paid.amount_msat, 4_321_000);
    match sandbox.invoice_status(&refund.payment_hash).await.unwrap() {
        InvoiceStatus::Settled { amount_msat, .. } => assert_eq!(amount_msat, 4_321_000),
        other => panic!("{other:?}"),
    }
    match pay_amount_via(&client, &url, &refund.bolt11, 1_000).await {
        Err(ClientError::Refused { status: 409, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn amount_paid_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let refund = {
        let sandbox = Sandbox::open(dir.path()).unwrap();
        let refund = sandbox.create_invoice(request(0)).await.unwrap();
        sandbox.settle_amount(&refund.bolt11, 8_000).unwrap();
        refund
    };
    let reopened = Sandbox::open(dir.path()).unwrap();
    match reopened.invoice_status(&refund.payment_hash).await.unwrap() {
        InvoiceStatus::Settled { amount_msat, .. } => assert_eq!(amount_msat, 8_000),
        other => panic!("{other:?}"),
    }
    match reopened.settle_amount(&refund.bolt11, 9_000) {
        Err(PayError::AlreadyPaid(first)) => assert_eq!(first.amount_msat, 8_000),
        other => panic!("{other:?}"),
    }
}

/// A client on the sandbox gets its return invoice over HTTP (no amount,
/// so the payer chooses it) and sees what was paid to it.
#[tokio::test]
async fn return_invoices_are_issued_and_watched_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(sandbox.clone())).into_future());
    let client = reqwest::Client::new();
    let issued: serde_json::Value = client
        .post(format!("{url}/sandbox/invoice"))
        .json(&serde_json::json!({"memo": "refund", "expiry_secs": 600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bolt11 = issued["invoice"].as_str().unwrap();
    let invoice = gate402_bolt11::Invoice::parse(bolt11).unwrap();
    assert_eq!(invoice.amount_msat(), None, "no amount");
    let hash = issued["payment_hash"].as_str().unwrap();
    assert_eq!(hash, hex::encode(invoice.payment_hash()));
    let watch = || async {
        client
            .get(format!("{url}/sandbox/invoice/{hash}"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(watch().await["status"], "open");
    sandbox
        .pay_amount(bolt11, 7_000, 0, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let settled = watch().await;
    assert_eq!(settled["status"], "settled");
    assert_eq!(settled["amount_msat"], 7_000);
    for (path, status) in [
        (format!("/sandbox/invoice/{}", "00".repeat(32)), 404),
        ("/sandbox/invoice/xyz".to_owned(), 400),
    ] {
        let response = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    let too_long = client
        .post(format!("{url}/sandbox/invoice"))
        .json(&serde_json::json!({"expiry_secs": 99_999_999}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status().as_u16(), 400);
    // A body that is not one: a problem, as every other error here.
    for body in [
        r#"{"expiry_secs": -1}"#,
        r#"{"expiry_secs": 18446744073709551615}"#,
        "{",
    ] {
        let refused = client
            .post(format!("{url}/sandbox/invoice"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 400, "{body}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
    }
    // No body at all: the defaults.
    let plain = client
        .post(format!("{url}/sandbox/invoice"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 200);
}

/// The invoices hold their preimages: the sandbox's directory and database
/// are its owner's alone, even in a directory made world-readable before.
#[cfg(unix)]
#[test]
fn the_sandbox_keeps_its_preimages_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sandbox_dir = dir.path().join("sandbox");
    std::fs::create_dir(&sandbox_dir).unwrap();
    std::fs::set_permissions(&sandbox_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _sandbox = Sandbox::open(&sandbox_dir).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sandbox_dir), 0o700);
    assert_eq!(mode(&sandbox_dir.join("invoices.sqlite3")), 0o600);
    assert_eq!(mode(&sandbox_dir.join("node_key")), 0o600);
    // SQLite's own files beside it hold the same preimages.
    for side in ["invoices.sqlite3-wal", "invoices.sqlite3-shm"] {
        assert_eq!(mode(&sandbox_dir.join(side)), 0o600, "{side}");
    }
    // A key left readable by others (by an earlier version, or by hand) is
    // made private when the sandbox opens again.
    drop(_sandbox);
    let key = sandbox_dir.join("node_key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _sandbox = Sandbox::open(&sandbox_dir).unwrap();
    assert_eq!(mode(&key), 0o600);
}

/// The sandbox says its money is unlimited rather than inventing channels,
/// and lists its invoices newest first, as they stand.
#[tokio::test]
async fn reports_unlimited_liquidity_and_lists_its_invoices() {
    use gate402_lightning::{InvoiceState, Liquidity};
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::open(dir.path()).unwrap();
    let liquidity = sandbox.liquidity().await.unwrap();
    assert_eq!(liquidity, Liquidity::unlimited());
    assert!(liquidity.channels.is_none() && liquidity.onchain.is_none());
    assert!(liquidity.inbound_msat.is_none() && liquidity.outbound_msat.is_none());

    assert!(sandbox.recent_invoices(10).await.unwrap().is_empty());
    let paid = sandbox.create_invoice(request(2_000)).await.unwrap();
    let open = sandbox.create_invoice(request(3_000)).await.unwrap();
    let any = sandbox
        .create_invoice(InvoiceRequest {
            amount_msat: 0,
            memo: "any amount".into(),
            expiry_secs: 600,
        })
        .await
        .unwrap();
    sandbox.settle(&paid.bolt11).unwrap();
    sandbox.settle_amount(&any.bolt11, 4_321).unwrap();

    let recent = sandbox.recent_invoices(10).await.unwrap();
    let hashes: Vec<_> = recent.iter().map(|i| i.payment_hash).collect();
    assert_eq!(
        hashes,
        [any.payment_hash, open.payment_hash, paid.payment_hash]
    );
    let (any_row, open_row, paid_row) = (&recent[0], &recent[1], &recent[2]);
    assert_eq!(any_row.state, InvoiceState::Settled);
    assert_eq!(any_row.amount_msat, None, "asked for no amount");
    assert_eq!(any_row.received_msat, Some(4_321));
    assert_eq!(any_row.description.as_deref(), Some("any amount"));
    assert_eq!(open_row.state, InvoiceState::Open);
    assert_eq!(open_row.amount_msat, Some(3_000));
    assert_eq!((open_row.received_msat, open_row.settled_at), (None, None));
    assert_eq!(open_row.description.as_deref(), Some("test"));
    assert_eq!(open_row.expires_at, Some(open.expires_at));
    assert_eq!(open_row.created_at.map(|t| t + 600), Some(open.expires_at));
    assert_eq!(paid_row.state, InvoiceState::Settled);
    assert_eq!(paid_row.received_msat, Some(2_000));
    assert!(paid_row.settled_at.is_some());

    let newest = sandbox.recent_invoices(1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].payment_hash, any.payment_hash);
    assert!(sandbox.recent_invoices(0).await.unwrap().is_empty());

    // An expired invoice is listed as canceled.
    let short = sandbox
        .create_invoice(InvoiceRequest {
            amount_msat: 1_000,
            memo: "short".into(),
            expiry_secs: 1,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let newest = sandbox.recent_invoices(1).await.unwrap();
    assert_eq!(newest[0].payment_hash, short.payment_hash);
    assert_eq!(newest[0].state, InvoiceState::Canceled);
}
