//! Core Lightning end to end on a real regtest network (lightningd and
//! clnrest built from source by `scripts/build-cln`): `gate402 serve` with
//! `backend = "cln"` issues invoices that an ldk-node node pays over a
//! real channel, L402 and MPP both served; then `gate402 get` with a Core
//! Lightning wallet pays a gateway on the ldk-node node.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{ok_json, payments};
use gate402_client::Offer;
use gate402_lightning::LightningBackend;
use gate402_regtest::{free_port, ChannelSpec, RegtestNetwork};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::Value;

/// `gate402 serve` as a user runs it, stopped when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn core_lightning_serves_and_pays_on_regtest() {
    let network = RegtestNetwork::start(1, &[] as &[ChannelSpec]).await;
    // Core Lightning funds the channel and pushes half to the ldk node, so
    // that each can pay the other.
    let cln = network.add_cln(0, 1_000_000, 500_000_000).await;
    let ldk = network.nodes[0].node.clone();

    // The gateway on Core Lightning, from a config file.
    let (upstream, _task) = gate402_gateway::demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gate402.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n\
             [lightning]\nbackend = \"cln\"\nurl = \"{url}\"\nrune = \"{rune}\"\ntls_cert_path = \"{ca}\"\n\
             [[services]]\nname = \"weather\"\npath = \"/weather\"\nupstream = \"http://{upstream}\"\nprice_sats = 21\n",
            url = cln.rest_url,
            rune = cln.rune,
            ca = cln.ca_pem().display(),
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .args(["serve", "--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _served = Served(
        Command::new(env!("CARGO_BIN_EXE_gate402"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/weather?city=Lima");
    let client = reqwest::Client::new();
    let mut first = None;
    for _ in 0..100 {
        if let Ok(response) = client.get(&url).send().await {
            first = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.expect("gate402 serve listens");
    assert_eq!(first.status(), StatusCode::PAYMENT_REQUIRED);
    for door in ["L402", "Payment"] {
        let offer = Offer::from_headers(client.get(&url).send().await.unwrap().headers()).unwrap();
        // Core Lightning's invoice, for the price.
        assert_eq!(hex::encode(offer.invoice.payee()), cln.id);
        assert_eq!(offer.invoice.amount_msat(), Some(21_000));
        let paid = ldk
            .pay(&offer.bolt11, 10_000, Duration::from_secs(60))
            .await
            .unwrap();
        let credential = match door {
            "L402" => offer.l402_authorization(&paid.preimage),
            _ => offer.payment_authorization(&paid.preimage),
        }
        .unwrap();
        let response = client
            .get(&url)
            .header(AUTHORIZATION, &credential)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{door}");
        assert!(response.headers().contains_key("payment-receipt"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["city"], "Lima");
        // One request per payment (the service is sold per request).
        let again = client
            .get(&url)
            .header(AUTHORIZATION, &credential)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED, "{door}");
    }

    // `gate402 get` whose wallet is the Core Lightning node, paying a
    // gateway on the ldk node.
    let merchant: Arc<dyn LightningBackend> = ldk.clone();
    let (gateway, _gw_dir) = common::demo_gateway_on(merchant).await;
    let wallet = tempfile::tempdir().unwrap();
    let data = wallet.path();
    std::fs::write(
        data.join("client.toml"),
        format!(
            "max_fee_sats = 5\n[lightning]\nbackend = \"cln\"\nurl = \"{}\"\nrune = \"{}\"\ntls_cert_path = \"{}\"\n",
            cln.rest_url,
            cln.rune,
            cln.ca_pem().display()
        ),
    )
    .unwrap();
    let weather = format!("http://{}/api/weather?city=Quito", gateway.addr());
    for prefer in ["l402", "mpp"] {
        let body = ok_json(data, &["get", "-s", "--prefer", prefer, &weather]).await;
        assert_eq!(body["city"], "Quito");
    }
    let paid = payments(data).await;
    assert_eq!(paid.len(), 2, "{paid:?}");
    for payment in &paid {
        assert_eq!(payment["status"], "paid", "{payment}");
        assert_eq!(payment["amount_msat"], 10_000);
    }
    gateway.shutdown().await.unwrap();
}
