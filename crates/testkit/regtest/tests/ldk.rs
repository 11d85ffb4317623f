//! The `ldk` backend on a real regtest network: bitcoind, three ldk-node
//! nodes, real channels, real payments.
//!
//! payer (0) ──► router (1) ──► merchant (2)
//!
//! The router's channel to the merchant is announced, so the router forwards
//! over it for the LDK default fee (1 sat base): what the fee-cap check needs.

use std::time::Duration;

use gate402_lightning::contract::{self, Pair};
use gate402_lightning::{InvoiceRequest, LightningBackend, PayError, PaymentStatus};
use gate402_regtest::{ChannelSpec, RegtestNetwork};
use sha2::Digest;

const PAYER: usize = 0;
const ROUTER: usize = 1;
const MERCHANT: usize = 2;

fn request(amount_msat: u64) -> InvoiceRequest {
    InvoiceRequest {
        amount_msat,
        memo: "regtest".into(),
        expiry_secs: 600,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ldk_backend_on_a_real_regtest_network() {
    let mut network = RegtestNetwork::start(
        3,
        &[
            ChannelSpec {
                from: PAYER,
                to: ROUTER,
                capacity_sats: 1_000_000,
                push_msat: 0,
                announced: false,
            },
            ChannelSpec {
                from: ROUTER,
                to: MERCHANT,
                capacity_sats: 1_000_000,
                push_msat: 0,
                announced: true,
            },
        ],
    )
    .await;

    // The backend contract, over the direct channel payer → router.
    contract::run_all(&Pair {
        receiver: network.nodes[ROUTER].node.as_ref(),
        payer: network.nodes[PAYER].node.as_ref(),
    })
    .await;

    // Through the router, whose forwarding fee is above a zero cap.
    let merchant = &network.nodes[MERCHANT].node;
    let payer = &network.nodes[PAYER].node;
    let invoice = merchant.create_invoice(request(50_000)).await.unwrap();
    match payer.pay(&invoice.bolt11, 0, Duration::from_secs(60)).await {
        Err(PayError::NoRoute {
            max_fee_msat: 0,
            reason,
        }) => {
            assert!(reason.contains("Route"), "{reason}")
        }
        other => panic!("a zero fee cap must fail with NoRoute, got {other:?}"),
    }
    assert!(matches!(
        payer.payment_status(&invoice.payment_hash).await.unwrap(),
        PaymentStatus::Failed(_)
    ));
    // Failed for good, so paying again under a sufficient cap is allowed.
    let paid = payer
        .pay(&invoice.bolt11, 5_000, Duration::from_secs(60))
        .await
        .expect("payment through the router");
    assert!(
        paid.fee_msat > 0 && paid.fee_msat <= 5_000,
        "fee {}",
        paid.fee_msat
    );
    assert_eq!(
        <[u8; 32]>::from(sha2::Sha256::digest(paid.preimage)),
        invoice.payment_hash
    );
    assert!(merchant
        .wait_invoice(&invoice.payment_hash, Duration::from_secs(30))
        .await
        .unwrap()
        .is_settled());

    // A restart loses no invoice state: one settled before it, one paid after it.
    let settled_before = invoice.payment_hash;
    let open_before = merchant.create_invoice(request(20_000)).await.unwrap();
    let node = network.nodes.remove(MERCHANT);
    let node = node.restart().await;
    network.nodes.insert(MERCHANT, node);
    let merchant = &network.nodes[MERCHANT].node;
    assert!(merchant
        .invoice_status(&settled_before)
        .await
        .unwrap()
        .is_settled());
    network
        .until("merchant channel usable after restart", || {
            network.nodes[MERCHANT]
                .node
                .channels()
                .iter()
                .any(|c| c.usable)
        })
        .await;
    let paid = network.nodes[PAYER]
        .node
        .pay(&open_before.bolt11, 5_000, Duration::from_secs(60))
        .await
        .expect("invoice issued before the restart is payable after it");
    assert!(network.nodes[MERCHANT]
        .node
        .wait_invoice(&open_before.payment_hash, Duration::from_secs(30))
        .await
        .unwrap()
        .is_settled());
    assert_eq!(
        <[u8; 32]>::from(sha2::Sha256::digest(paid.preimage)),
        open_before.payment_hash
    );
}
