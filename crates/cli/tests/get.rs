//! `gate402 get` against our own gateway (sandbox backend) and against a
//! stub that sends 402s no wallet should pay.

use std::future::IntoFuture;
use std::process::{Command, Output};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use gate402_gateway::{demo, Gateway, GatewayConfig};
use gate402_l402::{mint, L402Challenge, Scheme};
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use serde_json::Value;

fn gate402(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

async fn run(data: &std::path::Path, args: &[&str]) -> Output {
    let (data, args): (std::path::PathBuf, Vec<String>) = (
        data.to_owned(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        gate402(&data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

async fn payments(data: &std::path::Path) -> Vec<Value> {
    let out = run(data, &["receipts", "--json"]).await;
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["payments"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn pays_once_reuses_the_token_and_keeps_a_ledger() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config =
        GatewayConfig::default_with_services(demo::services(&format!("http://{upstream}")));
    config.listen = "127.0.0.1:0".parse().unwrap();
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let client = tempfile::tempdir().unwrap();
    let data = client.path();

    let weather = format!("{base}/api/weather?city=Oslo");
    for _ in 0..2 {
        let out = run(data, &["get", "-s", &weather]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["city"], "Oslo");
    }
    let paid = payments(data).await;
    assert_eq!(
        paid.len(),
        1,
        "the second call reused the L402 token: {paid:?}"
    );
    assert_eq!(paid[0]["scheme"], "L402");
    assert_eq!(paid[0]["amount_msat"], 10_000);
    assert!(paid[0]["receipt"].is_string());
    let tokens = run(data, &["tokens", "list"]).await;
    assert!(String::from_utf8_lossy(&tokens.stdout).contains("/api/weather"));

    let out = run(
        data,
        &[
            "post",
            "--json",
            "--prefer",
            "mpp",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"text":"a b","to":"fr"}"#,
            &format!("{base}/api/translate"),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], 200);
    assert_eq!(report["payment"]["scheme"], "Payment");
    let receipt =
        gate402_mpp::receipt::parse(report["payment"]["receipt"].as_str().unwrap()).unwrap();
    assert!(gate402_mpp::receipt::challenge_id(&receipt).is_some());

    // Over the cap: refused with its exit code, nothing paid.
    let out = run(
        data,
        &[
            "post",
            "--max-cost",
            "5",
            "-d",
            "{}",
            &format!("{base}/api/translate"),
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("above the cap of 5 sat"));
    // --no-pay: the offer, nothing paid.
    let out = run(data, &["get", "--no-pay", &format!("{base}/api/events")]).await;
    assert!(out.status.success());
    let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offer["price_sats"], 5);
    assert_eq!(offer["schemes"], serde_json::json!(["L402", "MPP"]));
    assert_eq!(
        payments(data).await.len(),
        2,
        "refusals and --no-pay paid nothing"
    );
    let out = run(data, &["tokens", "clear"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1"));
    gateway.shutdown().await.unwrap();
}

/// A 402 with an L402 challenge for `invoice` (whose hash the macaroon takes).
fn challenge_for(invoice: &str) -> String {
    let hash = gate402_bolt11::Invoice::parse(invoice)
        .unwrap()
        .payment_hash();
    let minted = mint(hash, "lsat", &[]);
    L402Challenge {
        macaroon: minted.macaroon,
        invoice: invoice.to_owned(),
    }
    .to_header(Scheme::L402)
}

fn invoice(currency: Currency, amount_msat: Option<u64>, expiry_secs: u64) -> String {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x21; 32]).unwrap();
    let builder = InvoiceBuilder::new(currency)
        .description("stub".into())
        .payment_hash(sha256::Hash::from_byte_array([7; 32]))
        .payment_secret(PaymentSecret([1; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(18)
        .expiry_time(Duration::from_secs(expiry_secs));
    let signed = match amount_msat {
        Some(amount) => builder
            .amount_milli_satoshis(amount)
            .build_signed(|h| secp.sign_ecdsa_recoverable(h, &key)),
        None => builder.build_signed(|h| secp.sign_ecdsa_recoverable(h, &key)),
    };
    signed.unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_what_it_must_not_pay() {
    let mainnet = invoice(Currency::Bitcoin, Some(1_000), 600);
    let no_amount = invoice(Currency::Regtest, None, 600);
    let expiring = invoice(Currency::Regtest, Some(1_000), 1);
    let stub = Router::new()
        .route(
            "/mainnet",
            get(move || {
                let c = challenge_for(&mainnet);
                async move {
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, c)],
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/no-amount",
            get(move || {
                let c = challenge_for(&no_amount);
                async move {
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, c)],
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/expired",
            get(move || {
                let c = challenge_for(&expiring);
                async move {
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, c)],
                    )
                        .into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, stub).into_future());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let client = tempfile::tempdir().unwrap();
    for (path, code, needle) in [
        (
            "/mainnet",
            5,
            "the invoice is for mainnet, the wallet is on regtest",
        ),
        ("/no-amount", 4, "has no amount"),
        ("/expired", 6, "expired"),
    ] {
        let out = run(client.path(), &["get", &format!("{base}{path}")]).await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(payments(client.path()).await.is_empty(), "nothing paid");
}
