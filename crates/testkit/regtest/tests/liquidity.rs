//! Liquidity, channels and recent invoices as the `ldk` and `cln` backends
//! report them, on a real regtest network: the figures are checked against
//! the channels the test opened and the payments it made.

use std::time::Duration;

use gate402_lightning::{ChannelInfo, InvoiceRequest, InvoiceState, LightningBackend, Liquidity};
use gate402_lightning_remote::cln::{Cln, ClnConfig};
use gate402_regtest::{ChannelSpec, RegtestNetwork};

/// Every channel the tests open.
const CAPACITY_SAT: u64 = 1_000_000;
/// What the funder hands the peer at open, so both sides are above their
/// reserve (1% of the capacity) and every payment moves both figures.
const PUSH_MSAT: u64 = 100_000_000;
/// What the tests pay.
const PAYMENT_MSAT: u64 = 10_000_000;

fn request(amount_msat: u64, memo: &str) -> InvoiceRequest {
    InvoiceRequest {
        amount_msat,
        memo: memo.into(),
        expiry_secs: 600,
    }
}

/// The node's one channel with `peer`.
fn channel_with(liquidity: &Liquidity, peer: &str) -> ChannelInfo {
    let channels = liquidity.channels.as_ref().expect("a channel list");
    let mut with_peer = channels.iter().filter(|c| c.peer_node_id == peer);
    let channel = with_peer.next().expect("a channel with the peer").clone();
    assert!(with_peer.next().is_none(), "one channel with the peer");
    channel
}

/// Polls `backend.liquidity()` until `done` holds (a payment's HTLC is
/// resolved a moment after the invoice settles), for up to 30 s.
async fn liquidity_once(
    backend: &dyn LightningBackend,
    what: &str,
    done: impl Fn(&Liquidity) -> bool,
) -> Liquidity {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let liquidity = backend.liquidity().await.expect("liquidity");
        if done(&liquidity) {
            return liquidity;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}; last seen {liquidity:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ldk_reports_its_channels_balances_and_invoices() {
    const PAYER: usize = 0;
    const PAYEE: usize = 1;
    let network = RegtestNetwork::start(
        2,
        &[ChannelSpec {
            from: PAYER,
            to: PAYEE,
            capacity_sats: CAPACITY_SAT,
            push_msat: PUSH_MSAT,
            announced: true,
        }],
    )
    .await;
    let payer = network.nodes[PAYER].node.as_ref();
    let payee = network.nodes[PAYEE].node.as_ref();

    let payee_before = payee.liquidity().await.unwrap();
    let payer_before = payer.liquidity().await.unwrap();
    assert!(!payee_before.unlimited);
    let seen_by_payee = channel_with(&payee_before, &payer.node_id());
    let seen_by_payer = channel_with(&payer_before, &payee.node_id());
    for channel in [&seen_by_payee, &seen_by_payer] {
        assert_eq!(channel.capacity_sat, CAPACITY_SAT);
        assert!(channel.usable && channel.public, "{channel:?}");
        assert_eq!(channel.channel_id.as_ref().map(String::len), Some(64));
        let scid = channel
            .short_channel_id
            .as_deref()
            .expect("confirmed: a short id");
        assert_eq!(scid.split('x').count(), 3, "{scid}");
        assert!(
            channel.inbound_msat + channel.outbound_msat < CAPACITY_SAT * 1000,
            "reserves are not spendable: {channel:?}"
        );
    }
    assert_eq!(seen_by_payee.channel_id, seen_by_payer.channel_id);
    assert_eq!(
        seen_by_payee.short_channel_id,
        seen_by_payer.short_channel_id
    );
    // The pushed amount, less the payer's reserve (1%), is what the payee can send.
    assert_eq!(seen_by_payee.outbound_msat, PUSH_MSAT - CAPACITY_SAT * 10);
    assert_eq!(
        payee_before.outbound_msat,
        Some(seen_by_payee.outbound_msat)
    );
    assert_eq!(payee_before.inbound_msat, Some(seen_by_payee.inbound_msat));
    assert_eq!(payee_before.lightning_balance_msat, Some(PUSH_MSAT));
    // The payer mined its funding coins and spent part on the channel.
    let onchain = payer_before.onchain.expect("an on-chain wallet");
    assert!(onchain.total_sat > 0, "{onchain:?}");
    assert!(onchain
        .spendable_sat
        .is_some_and(|s| s <= onchain.total_sat));
    assert_eq!(payee_before.onchain.map(|o| o.total_sat), Some(0));

    let invoice = payee
        .create_invoice(request(PAYMENT_MSAT, "liquidity"))
        .await
        .unwrap();
    payer
        .pay(&invoice.bolt11, 10_000, Duration::from_secs(60))
        .await
        .expect("payment over the direct channel");
    let payee_after = liquidity_once(payee, "the payee's channel updated", |l| {
        l.outbound_msat != payee_before.outbound_msat
    })
    .await;
    let payer_after = liquidity_once(payer, "the payer's channel updated", |l| {
        l.outbound_msat != payer_before.outbound_msat
    })
    .await;
    let payee_channel = channel_with(&payee_after, &payer.node_id());
    assert_eq!(
        payee_channel.inbound_msat,
        seen_by_payee.inbound_msat - PAYMENT_MSAT
    );
    assert_eq!(
        payee_channel.outbound_msat,
        seen_by_payee.outbound_msat + PAYMENT_MSAT
    );
    assert_eq!(
        payee_after.inbound_msat,
        payee_before.inbound_msat.map(|i| i - PAYMENT_MSAT)
    );
    assert_eq!(
        payee_after.outbound_msat,
        payee_before.outbound_msat.map(|o| o + PAYMENT_MSAT)
    );
    assert_eq!(
        payee_after.lightning_balance_msat,
        Some(PUSH_MSAT + PAYMENT_MSAT)
    );
    assert_eq!(
        payer_after.outbound_msat,
        payer_before.outbound_msat.map(|o| o - PAYMENT_MSAT)
    );
    assert_eq!(
        payer_after.inbound_msat,
        payer_before.inbound_msat.map(|i| i + PAYMENT_MSAT)
    );

    // Recent invoices, newest first: an open one made after the paid one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let open = payee
        .create_invoice(request(3_000_000, "still open"))
        .await
        .unwrap();
    let recent = payee.recent_invoices(10).await.unwrap();
    assert_eq!(recent.len(), 2, "{recent:#?}");
    assert_eq!(recent[0].payment_hash, open.payment_hash);
    assert_eq!(recent[0].state, InvoiceState::Open);
    assert_eq!(recent[0].amount_msat, Some(3_000_000));
    assert_eq!(recent[1].payment_hash, invoice.payment_hash);
    assert_eq!(recent[1].state, InvoiceState::Settled);
    assert_eq!(recent[1].received_msat, Some(PAYMENT_MSAT));
    assert!(recent[1].settled_at.is_some());
    assert_eq!(payee.recent_invoices(1).await.unwrap().len(), 1);
    // The payer issued none: its outgoing payment is not an invoice.
    assert!(payer.recent_invoices(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn core_lightning_reports_its_channels_balances_and_invoices() {
    let network = RegtestNetwork::start(1, &[] as &[ChannelSpec]).await;
    let node = network.add_cln(0, CAPACITY_SAT, PUSH_MSAT).await;
    let cln = Cln::new(&ClnConfig {
        url: node.rest_url.clone(),
        rune: Some(node.rune.clone()),
        rune_path: None,
        tls_cert_path: Some(node.ca_pem()),
    })
    .expect("a clnrest client");
    let ldk = network.nodes[0].node.as_ref();

    let before = cln.liquidity().await.expect("liquidity over clnrest");
    assert!(!before.unlimited);
    let channel = channel_with(&before, &ldk.node_id());
    assert_eq!(channel.capacity_sat, CAPACITY_SAT);
    assert!(channel.usable, "{channel:?}");
    assert!(!channel.public, "opened with announce=false");
    assert_eq!(
        before.lightning_balance_msat,
        Some(CAPACITY_SAT * 1000 - PUSH_MSAT)
    );
    assert_eq!(before.outbound_msat, Some(channel.outbound_msat));
    assert_eq!(before.inbound_msat, Some(channel.inbound_msat));
    assert!(
        channel.outbound_msat > 0 && channel.inbound_msat > 0,
        "{channel:?}"
    );
    // The same channel as the LDK node sees it.
    let seen_by_ldk = channel_with(&ldk.liquidity().await.unwrap(), &node.id);
    assert_eq!(seen_by_ldk.channel_id, channel.channel_id);
    assert_eq!(seen_by_ldk.short_channel_id, channel.short_channel_id);
    assert!(channel.short_channel_id.is_some());
    // What is left of the coinbase after funding the channel, confirmed.
    let onchain = before.onchain.expect("listfunds");
    assert!(onchain.total_sat > 0, "{onchain:?}");
    assert_eq!(onchain.confirmed_sat, Some(node.onchain_sats()));
    assert_eq!(onchain.unconfirmed_sat, Some(0));

    let invoice = cln
        .create_invoice(request(PAYMENT_MSAT, "liquidity over clnrest"))
        .await
        .unwrap();
    ldk.pay(&invoice.bolt11, 10_000, Duration::from_secs(60))
        .await
        .expect("the LDK node pays Core Lightning");
    let after = liquidity_once(&cln, "the Core Lightning channel updated", |l| {
        l.lightning_balance_msat != before.lightning_balance_msat
            && l.outbound_msat != before.outbound_msat
    })
    .await;
    let updated = channel_with(&after, &ldk.node_id());
    assert_eq!(updated.inbound_msat, channel.inbound_msat - PAYMENT_MSAT);
    // Core Lightning opened the channel, so what it can send is net of the
    // commitment fee, which follows the feerate it updates as blocks come
    // (by some sats here); its balance moves by the exact amount.
    let off_by = updated
        .outbound_msat
        .abs_diff(channel.outbound_msat + PAYMENT_MSAT);
    assert!(
        off_by <= 100_000,
        "outbound moved by {} msat",
        updated.outbound_msat as i64 - channel.outbound_msat as i64
    );
    assert_eq!(
        after.lightning_balance_msat,
        before.lightning_balance_msat.map(|b| b + PAYMENT_MSAT)
    );

    let open = cln
        .create_invoice(request(3_000_000, "still open"))
        .await
        .unwrap();
    let recent = cln.recent_invoices(10).await.expect("listinvoices");
    assert_eq!(recent.len(), 2, "{recent:#?}");
    assert_eq!(recent[0].payment_hash, open.payment_hash);
    assert_eq!(recent[0].state, InvoiceState::Open);
    assert_eq!(recent[0].amount_msat, Some(3_000_000));
    assert_eq!(recent[0].expires_at, Some(open.expires_at));
    assert_eq!(recent[0].description.as_deref(), Some("still open"));
    assert_eq!(recent[1].payment_hash, invoice.payment_hash);
    assert_eq!(recent[1].state, InvoiceState::Settled);
    assert_eq!(recent[1].amount_msat, Some(PAYMENT_MSAT));
    assert_eq!(recent[1].received_msat, Some(PAYMENT_MSAT));
    assert!(recent[1].settled_at >= recent[1].created_at && recent[1].created_at.is_some());
    let newest = cln.recent_invoices(1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].payment_hash, open.payment_hash);
}
