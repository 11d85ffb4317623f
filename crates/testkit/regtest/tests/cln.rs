//! The `cln` backend against a real Core Lightning node (lightningd and
//! clnrest, built from source by `scripts/build-cln`) with a real channel
//! to an ldk-node node on regtest: the backend contract both ways, and the
//! node's own errors as the backend reports them.

use std::time::Duration;

use gate402_lightning::contract::{self, Pair};
use gate402_lightning::{InvoiceRequest, LightningBackend, LightningError, PayError};
use gate402_lightning_remote::cln::{Cln, ClnConfig};
use gate402_regtest::cln::ClnNode;
use gate402_regtest::{ChannelSpec, RegtestNetwork};

fn backend(node: &ClnNode, rune: &str) -> Cln {
    Cln::new(&ClnConfig {
        url: node.rest_url.clone(),
        rune: Some(rune.to_owned()),
        rune_path: None,
        tls_cert_path: Some(node.ca_pem()),
    })
    .expect("a clnrest client")
}

fn request(amount_msat: u64) -> InvoiceRequest {
    InvoiceRequest {
        amount_msat,
        memo: "gate402 against Core Lightning".into(),
        expiry_secs: 600,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn core_lightning_keeps_the_backend_contract_and_reports_its_errors() {
    // Node 0 pays through the channel; node 1 is known to nobody.
    let network = RegtestNetwork::start(2, &[] as &[ChannelSpec]).await;
    let node = network.add_cln(0, 1_000_000, 400_000_000).await;
    let cln = backend(&node, &node.rune);
    let info = cln.node_info().await.expect("clnrest answers over TLS");
    assert_eq!(info.backend, "cln");
    assert_eq!(hex::encode(info.pubkey), node.id);

    let ldk = network.nodes[0].node.as_ref();
    contract::run_all(&Pair {
        receiver: &cln,
        payer: ldk,
    })
    .await;
    contract::run_all(&Pair {
        receiver: ldk,
        payer: &cln,
    })
    .await;

    // No route: an invoice of a node it has no path to.
    let stranger = network.nodes[1]
        .node
        .create_invoice(request(5_000))
        .await
        .unwrap();
    match cln
        .pay(&stranger.bolt11, 1_000, Duration::from_secs(10))
        .await
    {
        Err(PayError::NoRoute { .. }) => {}
        other => panic!("no route to a stranger: {other:?}\n{}", node.log_tail()),
    }
    // More than its side of the channel holds.
    let dear = ldk.create_invoice(request(900_000_000)).await.unwrap();
    match cln.pay(&dear.bolt11, 1_000, Duration::from_secs(10)).await {
        Err(PayError::InsufficientBalance(_) | PayError::NoRoute { .. }) => {}
        other => panic!("more than it has: {other:?}\n{}", node.log_tail()),
    }
    // A rune for getinfo alone: invoices are refused as unauthorized, and
    // so is waiting on one.
    let rune = node.cli(&["createrune", "restrictions=[[\"method=getinfo\"]]"])["rune"]
        .as_str()
        .unwrap()
        .to_owned();
    let limited = backend(&node, &rune);
    assert!(limited.node_info().await.is_ok());
    match limited.create_invoice(request(1_000)).await {
        Err(LightningError::Unauthorized(_)) => {}
        other => panic!("{other:?}"),
    }
    let open = cln.create_invoice(request(1_000)).await.unwrap();
    match limited
        .wait_invoice(&open.payment_hash, Duration::from_secs(5))
        .await
    {
        Err(LightningError::Unauthorized(_)) => {}
        other => panic!("{other:?}"),
    }
    // Another CA than clnrest's: refused, and said so.
    let elsewhere = ClnNode::start(&network.bitcoind).await;
    let wrong = Cln::new(&ClnConfig {
        url: node.rest_url.clone(),
        rune: Some(node.rune.clone()),
        rune_path: None,
        tls_cert_path: Some(elsewhere.ca_pem()),
    })
    .unwrap();
    match wrong.node_info().await {
        Err(LightningError::Unavailable(message)) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
