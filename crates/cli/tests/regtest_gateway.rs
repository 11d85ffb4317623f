//! The gateway on the `ldk` backend, end to end on a real regtest network:
//! a client node pays the 402s over a real channel, gets 200 with L402 and
//! then with MPP, and both receipts decode with `gate402 decode`.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gate402_client::Offer;
use gate402_lightning::LightningBackend;
use gate402_regtest::{ChannelSpec, RegtestNetwork};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;

async fn offer(response: reqwest::Response) -> Offer {
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    Offer::from_headers(response.headers()).unwrap()
}

fn decode(receipt: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .args(["decode", "--json", &format!("Payment-Receipt: {receipt}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_pays_the_gateway_on_regtest() {
    let network = RegtestNetwork::start(
        2,
        &[ChannelSpec {
            from: 0,
            to: 1,
            capacity_sats: 500_000,
            push_msat: 0,
            announced: false,
        }],
    )
    .await;
    let payer = network.nodes[0].node.clone();
    let merchant: Arc<dyn LightningBackend> = network.nodes[1].node.clone();

    let (gateway, _dir) = common::demo_gateway_on(merchant).await;
    let url = format!("http://{}/api/weather?city=Reykjavik", gateway.addr());
    let client = reqwest::Client::new();

    // L402.
    let first = offer(client.get(&url).send().await.unwrap()).await;
    assert_eq!(first.invoice.network(), gate402_bolt11::Network::Regtest);
    let paid = payer
        .pay(&first.bolt11, 10_000, Duration::from_secs(60))
        .await
        .unwrap();
    let response = client
        .get(&url)
        .header(
            AUTHORIZATION,
            first.l402_authorization(&paid.preimage).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let l402_receipt = response.headers()["payment-receipt"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["city"], "Reykjavik");

    // MPP, a second request, a second invoice.
    let second = offer(client.get(&url).send().await.unwrap()).await;
    assert_ne!(second.bolt11, first.bolt11);
    let paid = payer
        .pay(&second.bolt11, 10_000, Duration::from_secs(60))
        .await
        .unwrap();
    let response = client
        .get(&url)
        .header(
            AUTHORIZATION,
            second.payment_authorization(&paid.preimage).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mpp_receipt = response.headers()["payment-receipt"]
        .to_str()
        .unwrap()
        .to_owned();

    let decoded = decode(&l402_receipt);
    assert_eq!(decoded["kind"], "receipt");
    assert_eq!(
        decoded["receipt"]["reference"],
        hex::encode(first.invoice.payment_hash())
    );
    let decoded = decode(&mpp_receipt);
    assert_eq!(
        decoded["receipt"]["reference"],
        hex::encode(second.invoice.payment_hash())
    );
    assert_eq!(
        decoded["receipt"]["challengeId"],
        second.payment.as_ref().unwrap().id.as_str()
    );
    gateway.shutdown().await.unwrap();
}
