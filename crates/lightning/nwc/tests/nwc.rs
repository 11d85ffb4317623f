//! The NWC backend against a real NIP-47 conversation: an in-process relay,
//! our wallet service in front of a sandbox, and the `Nwc` client. The
//! backend contract runs unchanged, with NWC paying and with NWC receiving
//! (where NIP-47 cannot make an invoice without an amount).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use gate402_lightning::contract::{self, Pair};
use gate402_lightning::{
    ChannelInfo, CreatedInvoice, InvoiceRequest, InvoiceState, InvoiceStatus, LightningBackend,
    LightningError, Liquidity, Network, NodeInfo, PayError, PaymentHash, PaymentOutcome,
    PaymentStatus,
};
use gate402_lightning_nwc::service::{WalletService, ENCRYPTION};
use gate402_lightning_nwc::{Nwc, NwcConfig};
use gate402_lightning_sandbox::Sandbox;
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use nostr_relay_builder::MockRelay;
use nostr_sdk::nips::nip44;
use nostr_sdk::nips::nip47::{self, ErrorCode, NostrWalletConnectURI, Request, Response};
use nostr_sdk::prelude::{ReqExitPolicy, StreamExt};
use nostr_sdk::{Client, EventBuilder, Filter, JsonUtil, Keys, Kind, Tag, TagKind};

/// A relay, a sandbox, a wallet service over the sandbox, and a client.
struct Setup {
    relay: MockRelay,
    sandbox: Sandbox,
    service: WalletService,
    nwc: Nwc,
    _dir: tempfile::TempDir,
}

async fn setup(timeout_secs: u64) -> Setup {
    let relay = MockRelay::run().await.expect("relay");
    let url = relay.url().await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::open(dir.path()).unwrap();
    let service = WalletService::spawn(url.as_str(), Arc::new(sandbox.clone()))
        .await
        .expect("service");
    let nwc = Nwc::connect(&NwcConfig {
        uri: service.uri(),
        timeout_secs: Some(timeout_secs),
    })
    .expect("client");
    Setup {
        relay,
        sandbox,
        service,
        nwc,
        _dir: dir,
    }
}

fn request(amount_msat: u64) -> InvoiceRequest {
    InvoiceRequest {
        amount_msat,
        memo: "nwc test".into(),
        expiry_secs: 600,
    }
}

/// An invoice on `currency` from a node nobody here runs.
fn foreign_invoice(currency: Currency) -> String {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x11; 32]).unwrap();
    InvoiceBuilder::new(currency)
        .description("elsewhere".into())
        .payment_hash(sha256::Hash::hash(b"elsewhere"))
        .payment_secret(PaymentSecret([42; 32]))
        .amount_milli_satoshis(1_000)
        .current_timestamp()
        .min_final_cltv_expiry_delta(144)
        .build_signed(|m| secp.sign_ecdsa_recoverable(m, &key))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_with_nwc_paying() {
    let s = setup(30).await;
    contract::run_all(&Pair {
        receiver: &s.sandbox,
        payer: &s.nwc,
    })
    .await;
    s.service.shutdown().await;
    s.relay.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_with_nwc_receiving() {
    let s = setup(30).await;
    let info = s.nwc.node_info().await.expect("node info");
    assert_eq!(info.backend, "nwc");
    assert_eq!(info.network, Network::Regtest);
    assert_eq!(info.pubkey, s.sandbox.pubkey());
    contract::run_all_amount_only_receiver(&Pair {
        receiver: &s.nwc,
        payer: &s.sandbox,
    })
    .await;
    s.service.shutdown().await;
    s.relay.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_errors() {
    let s = setup(30).await;

    // Another network: refused here, before anything is sent.
    let mainnet = foreign_invoice(Currency::Bitcoin);
    match s.nwc.pay(&mainnet, 1_000, Duration::from_secs(10)).await {
        Err(PayError::WrongNetwork { invoice, node }) => {
            assert_eq!((invoice, node), (Network::Mainnet, Network::Regtest));
        }
        other => panic!("expected WrongNetwork, got {other:?}"),
    }

    // A regtest invoice the sandbox did not issue: the wallet's
    // PAYMENT_FAILED comes back as a rejection.
    let stranger = foreign_invoice(Currency::Regtest);
    match s.nwc.pay(&stranger, 1_000, Duration::from_secs(10)).await {
        Err(PayError::Rejected(reason)) => assert!(reason.contains("sandbox"), "{reason}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    let hash = sha256::Hash::hash(b"elsewhere").to_byte_array();
    assert_eq!(
        s.nwc.payment_status(&hash).await.unwrap(),
        PaymentStatus::Unknown
    );
    assert_eq!(
        s.nwc.payment_status(&[0x42; 32]).await.unwrap(),
        PaymentStatus::Unknown
    );
    assert!(matches!(
        s.nwc.invoice_status(&[0x42; 32]).await,
        Err(LightningError::NotFound(_))
    ));

    // A bad connection string names the problem and not the secret.
    let uri = NostrWalletConnectURI::parse(s.service.uri()).unwrap();
    let secret = uri.secret.to_secret_hex();
    let broken = s.service.uri().replace("relay=", "rellay=");
    let err = Nwc::connect(&NwcConfig {
        uri: broken,
        timeout_secs: None,
    })
    .expect_err("no relay")
    .to_string();
    assert!(err.contains("relay="), "{err}");
    assert!(!err.contains(&secret), "{err}");

    s.service.shutdown().await;
    s.relay.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_payment_is_still_pending() {
    let s = setup(30).await;
    // Learn the network while the service is up: that takes no payment.
    s.nwc.node_info().await.expect("node info");
    let created = s.sandbox.create_invoice(request(2_000)).await.unwrap();
    s.service.shutdown().await;

    let started = Instant::now();
    let paid = s
        .nwc
        .pay(&created.bolt11, 1_000, Duration::from_secs(1))
        .await;
    assert!(matches!(paid, Err(PayError::StillPending(_))), "{paid:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    s.relay.shutdown();
}

/// The service answers in the cipher the request used, advertises both,
/// and answers NOT_IMPLEMENTED what it cannot serve: here `get_balance`,
/// the sandbox's test money being unlimited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_speaks_nip44_and_refuses_what_it_lacks() {
    let s = setup(30).await;
    let url = s.relay.url().await;
    let uri = NostrWalletConnectURI::parse(s.service.uri()).unwrap();

    // nwc's own client, for a method our backend cannot answer here.
    let raw = nwc::NWC::with_opts(
        uri.clone(),
        nwc::NostrWalletConnectOptions::new().timeout(Duration::from_secs(10)),
    );
    match raw.get_balance().await {
        Err(nwc::Error::NIP47(nip47::Error::ErrorCode(e))) => {
            assert_eq!(e.code, ErrorCode::NotImplemented)
        }
        other => panic!("expected NOT_IMPLEMENTED, got {other:?}"),
    }
    raw.shutdown().await;

    let app_keys = Keys::new(uri.secret.clone());
    let app = Client::new(app_keys.clone());
    app.add_relay(url.clone()).await.unwrap();
    app.connect().await;
    let info = app
        .fetch_events(
            Filter::new()
                .kind(Kind::WalletConnectInfo)
                .author(uri.public_key),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .first_owned()
        .expect("info event");
    let encryption = info
        .tags
        .find(TagKind::custom("encryption"))
        .and_then(|t| t.content())
        .expect("encryption tag");
    assert_eq!(encryption, ENCRYPTION);
    assert!(info.content.split(' ').any(|m| m == "pay_invoice"));

    let content = nip44::encrypt(
        &uri.secret,
        &uri.public_key,
        Request::get_info().as_json(),
        nip44::Version::V2,
    )
    .unwrap();
    let request = EventBuilder::new(Kind::WalletConnectRequest, content)
        .tag(Tag::public_key(uri.public_key))
        .tag(Tag::custom(TagKind::custom("encryption"), ["nip44_v2"]))
        .sign_with_keys(&app_keys)
        .unwrap();
    // The response is ephemeral: subscribe before sending, and wait for
    // the event rather than the end of stored events.
    let mut answers = app
        .pool()
        .stream_events(
            Filter::new()
                .kind(Kind::WalletConnectResponse)
                .author(uri.public_key)
                .event(request.id),
            Duration::from_secs(10),
            ReqExitPolicy::WaitForEvents(1),
        )
        .await
        .unwrap();
    app.send_event(&request).await.unwrap();
    let answer = answers.next().await.expect("answer");
    let plain = nip44::decrypt(&uri.secret, &answer.pubkey, &answer.content).unwrap();
    let info = Response::from_json(&plain).unwrap().to_get_info().unwrap();
    assert_eq!(info.network.as_deref(), Some("regtest"));
    assert_eq!(info.pubkey, Some(hex::encode(s.sandbox.pubkey())));

    app.shutdown().await;
    s.service.shutdown().await;
    s.relay.shutdown();
}

/// The sandbox, reporting the liquidity of a node with channels: what a
/// service in front of a real node answers `get_balance` from.
struct WithChannels {
    sandbox: Sandbox,
    liquidity: Liquidity,
}

#[async_trait::async_trait]
impl LightningBackend for WithChannels {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        self.sandbox.create_invoice(request).await
    }
    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        self.sandbox.invoice_status(hash).await
    }
    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError> {
        self.sandbox.wait_invoice(hash, timeout).await
    }
    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.sandbox.pay(bolt11, max_fee_msat, timeout).await
    }
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.sandbox
            .pay_amount(bolt11, amount_msat, max_fee_msat, timeout)
            .await
    }
    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        self.sandbox.payment_status(hash).await
    }
    async fn node_info(&self) -> Result<NodeInfo, LightningError> {
        self.sandbox.node_info().await
    }
    async fn liquidity(&self) -> Result<Liquidity, LightningError> {
        Ok(self.liquidity.clone())
    }
}

/// Balance and invoices over NIP-47: `get_balance` is what the node can
/// pay now (nothing at all in front of the sandbox, whose money is
/// unlimited), `list_transactions` lists the backend's invoices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_and_recent_invoices() {
    let s = setup(30).await;
    match s.nwc.liquidity().await {
        Err(LightningError::Unsupported(message)) => {
            assert!(message.contains("unlimited"), "{message}")
        }
        other => panic!("the sandbox has no balance to tell: {other:?}"),
    }

    let paid = s.nwc.create_invoice(request(5_000)).await.unwrap();
    let open = s
        .sandbox
        .create_invoice(InvoiceRequest {
            amount_msat: 7_000,
            memo: "still open".into(),
            expiry_secs: 600,
        })
        .await
        .unwrap();
    s.sandbox.settle(&paid.bolt11).unwrap();
    let recent = s.nwc.recent_invoices(10).await.unwrap();
    let hashes: Vec<_> = recent.iter().map(|i| i.payment_hash).collect();
    assert_eq!(hashes, [open.payment_hash, paid.payment_hash]);
    assert_eq!(recent[0].state, InvoiceState::Open);
    assert_eq!(recent[0].amount_msat, Some(7_000));
    assert_eq!(recent[0].description.as_deref(), Some("still open"));
    assert_eq!(recent[0].expires_at, Some(open.expires_at));
    assert_eq!(
        recent[0].created_at.map(|at| at + 600),
        Some(open.expires_at)
    );
    assert_eq!(recent[1].state, InvoiceState::Settled);
    assert_eq!(recent[1].received_msat, Some(5_000));
    assert!(recent[1].settled_at.is_some());
    assert_eq!(recent[1].description.as_deref(), Some("nwc test"));
    let newest = s.nwc.recent_invoices(1).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].payment_hash, open.payment_hash);

    // NIP-47's defaults: settled invoices only unless `unpaid`; the
    // service lists no outgoing payments.
    let uri = NostrWalletConnectURI::parse(s.service.uri()).unwrap();
    let raw = nwc::NWC::with_opts(
        uri,
        nwc::NostrWalletConnectOptions::new().timeout(Duration::from_secs(10)),
    );
    let settled = raw
        .list_transactions(nip47::ListTransactionsRequest::default())
        .await
        .unwrap();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].payment_hash, hex::encode(paid.payment_hash));
    assert_eq!(settled[0].amount, 5_000);
    let outgoing = raw
        .list_transactions(nip47::ListTransactionsRequest {
            transaction_type: Some(nip47::TransactionType::Outgoing),
            unpaid: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(outgoing.is_empty());
    raw.shutdown().await;

    // In front of a node with channels: what it can pay now.
    let url = s.relay.url().await;
    let node = WithChannels {
        sandbox: s.sandbox.clone(),
        liquidity: Liquidity::from_channels(
            None,
            Some(900_000_000),
            vec![ChannelInfo {
                peer_node_id: format!("02{}", "ab".repeat(32)),
                channel_id: None,
                short_channel_id: Some("103x1x0".into()),
                capacity_sat: 1_000_000,
                outbound_msat: 585_000_000,
                inbound_msat: 90_000_000,
                usable: true,
                public: false,
            }],
        ),
    };
    let service = WalletService::spawn(url.as_str(), Arc::new(node))
        .await
        .unwrap();
    let wallet = Nwc::connect(&NwcConfig {
        uri: service.uri(),
        timeout_secs: Some(30),
    })
    .unwrap();
    let liquidity = wallet.liquidity().await.unwrap();
    assert_eq!(
        liquidity,
        Liquidity {
            lightning_balance_msat: Some(585_000_000),
            ..Liquidity::default()
        }
    );
    service.shutdown().await;
    s.service.shutdown().await;
    s.relay.shutdown();
}
