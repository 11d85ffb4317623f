//! A session's return invoice from a sandbox is checked before a deposit
//! is paid against it: one of another payment hash than named, one with
//! an amount, one that does not decode are refused, and a good one kept.

use axum::routing::post;
use axum::{Json, Router};
use gate402_client::Wallet;
use gate402_gateway::{demo, Gateway};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn a_return_invoice_is_checked_before_it_is_used() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&demo::config(upstream), dir.path())
        .await
        .unwrap();
    let base = format!("http://{}", gateway.addr());
    let http = reqwest::Client::new();
    // A good one, and an invoice with an amount (a 402's).
    let good: Value = http
        .post(format!("{base}/sandbox/invoice"))
        .json(&json!({"memo": "refund"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paid = gate402_client::Offer::from_headers(
        http.get(format!("{base}/api/weather?city=Oslo"))
            .send()
            .await
            .unwrap()
            .headers(),
    )
    .unwrap();
    let with_amount = json!({
        "invoice": paid.bolt11,
        "payment_hash": hex::encode(paid.invoice.payment_hash()),
        "status": "open",
    });
    let mut other_hash = good.clone();
    other_hash["payment_hash"] = json!("00".repeat(32));
    let mut garbled = good.clone();
    garbled["invoice"] = json!("lnbcrt1garbled");
    for (answer, said) in [
        (other_hash, "another payment hash"),
        (with_amount, "with an amount"),
        (garbled, "does not decode"),
        (good.clone(), ""),
    ] {
        let app = Router::new().route(
            "/sandbox/invoice",
            post(move || {
                let answer = answer.clone();
                async move { Json(answer) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
            listener, app,
        )));
        let got = Wallet::sandbox().return_invoice(&origin).await;
        if said.is_empty() {
            assert_eq!(got.unwrap().bolt11, good["invoice"].as_str().unwrap());
        } else {
            let error = got.expect_err(said).to_string();
            assert!(error.contains(said), "{said}: {error}");
        }
    }
    gateway.shutdown().await.unwrap();
}
