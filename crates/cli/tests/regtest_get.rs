//! `gate402 get` paying our own gateway on a real regtest network, with
//! each scheme, from the CLI's own embedded ldk wallet: the wallet is
//! funded on chain, opens a channel to the gateway's node, and pays real
//! invoices over it; a second call within the token's lifetime pays
//! nothing. Then the same from a Nostr Wallet Connect wallet: a local
//! relay and a NIP-47 wallet service backed by another regtest node.

mod common;

use std::sync::Arc;

use common::{gate402, gate402_with_env, ok_json, payments};

use gate402_lightning::LightningBackend;
use gate402_regtest::{free_port, ChannelSpec, RegtestNetwork};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_pays_the_gateway_on_regtest_with_each_scheme() {
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
    let merchant: Arc<dyn LightningBackend> = network.nodes[1].node.clone();
    let (gateway, _gw_dir) = common::demo_gateway_on(merchant).await;
    let base = format!("http://{}", gateway.addr());

    // The CLI's wallet: its own ldk node, from client.toml in its data dir.
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    std::fs::write(
        data.join("client.toml"),
        format!(
            "max_fee_sats = 5\n[lightning]\nbackend = \"ldk\"\nnetwork = \"regtest\"\nlisten = [\"127.0.0.1:{}\"]\nsync_interval_secs = 1\n\
             [lightning.chain_source]\nkind = \"bitcoind_rpc\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"gate402\"\npassword = \"gate402\"\n",
            free_port(),
            network.bitcoind.rpc_port
        ),
    )
    .unwrap();
    let config = data.join("client.toml");
    let config = config.to_str().unwrap();
    let address = ok_json(data, &["node", "--config", config, "address"]).await;
    network
        .bitcoind
        .mine(101, address["address"].as_str().unwrap())
        .await;
    let merchant = &network.nodes[1];
    let target = format!("{}@{}", merchant.node.node_id(), merchant.address());
    ok_json(
        data,
        &["node", "--config", config, "open", &target, "200000"],
    )
    .await;
    network.mine(6).await;

    // L402, then the same URL again: the weather is sold per request, so
    // each call pays, and each is a real payment.
    let weather = format!("{base}/api/weather?city=Lima");
    for _ in 0..2 {
        let out = gate402(data, &["get", "-s", "--prefer", "l402", &weather]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["city"], "Lima");
    }
    let paid = payments(data).await;
    assert_eq!(paid.len(), 2, "one payment per call: {paid:?}");
    for payment in &paid {
        assert_eq!(payment["scheme"], "L402");
        assert_eq!(payment["status"], "paid");
        assert_eq!(payment["amount_msat"], 10_000);
    }
    assert_ne!(paid[0]["payment_hash"], paid[1]["payment_hash"]);

    // MPP on another service: a real payment, a receipt naming its challenge.
    let report = ok_json(
        data,
        &[
            "post",
            "--json",
            "--prefer",
            "mpp",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"text":"hola","to":"en"}"#,
            &format!("{base}/api/translate"),
        ],
    )
    .await;
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["payment"]["scheme"], "Payment");
    let receipt =
        gate402_mpp::receipt::parse(report["payment"]["receipt"].as_str().unwrap()).unwrap();
    assert!(gate402_mpp::receipt::challenge_id(&receipt).is_some());
    let paid = payments(data).await;
    assert_eq!(paid.len(), 3, "{paid:?}");
    assert_eq!(paid[2]["amount_msat"], 25_000);

    // The gateway's node holds every invoice as settled, for what was asked.
    for (payment, amount_msat) in paid.iter().zip([10_000, 10_000, 25_000]) {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(payment["payment_hash"].as_str().unwrap(), &mut hash).unwrap();
        match network.nodes[1].node.invoice_status(&hash).await.unwrap() {
            gate402_lightning::InvoiceStatus::Settled {
                amount_msat: received,
                ..
            } => assert_eq!(received, amount_msat),
            other => panic!("{other:?}"),
        }
    }

    // Nostr Wallet Connect: a relay run here, a wallet service in front of
    // node 0 (which has its own channel to the gateway's node), and a
    // client whose client.toml holds only the connection string.
    let relay = nostr_relay_builder::MockRelay::run().await.unwrap();
    let service = gate402_lightning_nwc::service::WalletService::spawn(
        relay.url().await.as_str(),
        network.nodes[0].node.clone(),
    )
    .await
    .unwrap();
    let nwc_client = tempfile::tempdir().unwrap();
    let data = nwc_client.path();
    std::fs::write(
        data.join("client.toml"),
        "[lightning]\nbackend = \"nwc\"\nuri = \"${TEST_NWC_URI}\"\n",
    )
    .unwrap();
    let weather = format!("{base}/api/weather?city=Quito");
    for _ in 0..2 {
        let uri = service.uri();
        let out = gate402_with_env(data, &["get", "-s", &weather], &[("TEST_NWC_URI", &uri)]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["city"], "Quito");
    }
    let paid = payments(data).await;
    assert_eq!(paid.len(), 2, "one payment per call: {paid:?}");
    for payment in &paid {
        assert_eq!(payment["status"], "paid");
        let mut hash = [0u8; 32];
        hex::decode_to_slice(payment["payment_hash"].as_str().unwrap(), &mut hash).unwrap();
        match network.nodes[0].node.payment_status(&hash).await.unwrap() {
            gate402_lightning::PaymentStatus::Succeeded(outcome) => {
                assert_eq!(outcome.amount_msat, 10_000)
            }
            other => panic!("node 0 made the payment: {other:?}"),
        }
    }
    service.shutdown().await;
    gateway.shutdown().await.unwrap();
}
