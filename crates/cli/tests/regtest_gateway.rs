//! The gateway on the `ldk` backend, end to end on a real regtest network:
//! a client node pays the 402s over a real channel, gets 200 with L402 and
//! then with MPP, and both receipts decode with `gate402 decode`; then a
//! prepaid session is opened, spent and closed, its unspent balance
//! refunded over the channel.

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
            // The merchant's side too, to refund a session's balance.
            push_msat: 100_000_000,
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

    // A prepaid session on the demo's chat balance (1 sat a question, 20
    // sat deposit): opened, spent, closed, and the unspent balance refunded
    // over the channel to the payer's amountless return invoice.
    let chat = format!("http://{}/api/chat?prompt=hi", gateway.addr());
    let unpaid = client.get(&chat).send().await.unwrap();
    assert_eq!(unpaid.status(), StatusCode::PAYMENT_REQUIRED);
    let session = unpaid
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| gate402_mpp::challenge::parse_payment_challenges(v).unwrap_or_default())
        .find(|c| c.intent.as_str() == "session")
        .expect("a session challenge");
    let request = gate402_mpp::challenge::decode_request(&session).unwrap();
    let deposit = payer
        .pay(
            request["depositInvoice"].as_str().unwrap(),
            10_000,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(deposit.amount_msat, 20_000);
    let refund_to = payer
        .create_invoice(gate402_lightning::InvoiceRequest {
            amount_msat: 0,
            memo: "session refund".into(),
            expiry_secs: 3600,
        })
        .await
        .unwrap();
    let id = request["paymentHash"].as_str().unwrap().to_owned();
    let preimage = hex::encode(deposit.preimage);
    let send = |payload: serde_json::Value| {
        let credential = gate402_mpp::PaymentCredential::new(session.to_echo(), payload);
        client
            .get(&chat)
            .header(
                AUTHORIZATION,
                gate402_mpp::credential::to_authorization(&credential),
            )
            .send()
    };
    let opened = send(serde_json::json!({"action": "open", "preimage": preimage,
                                         "returnInvoice": refund_to.bolt11}))
    .await
    .unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    for _ in 0..2 {
        let served =
            send(serde_json::json!({"action": "bearer", "sessionId": id, "preimage": preimage}))
                .await
                .unwrap();
        assert_eq!(served.status(), StatusCode::OK);
    }
    let closed: serde_json::Value =
        send(serde_json::json!({"action": "close", "sessionId": id, "preimage": preimage}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        closed,
        serde_json::json!({"status": "closed", "refundSats": 17, "refundStatus": "succeeded"})
    );
    let refunded = payer
        .wait_invoice(&refund_to.payment_hash, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(
            refunded,
            gate402_lightning::InvoiceStatus::Settled {
                amount_msat: 17_000,
                ..
            }
        ),
        "{refunded:?}"
    );
    gateway.shutdown().await.unwrap();
}
