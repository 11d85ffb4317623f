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
    InvoiceRequest, LightningBackend, LightningError, Network, PayError, PaymentStatus,
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
/// and answers methods it does not serve with NOT_IMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_speaks_nip44_and_refuses_what_it_lacks() {
    let s = setup(30).await;
    let url = s.relay.url().await;
    let uri = NostrWalletConnectURI::parse(s.service.uri()).unwrap();

    // nwc's own client, for a method our backend does not use.
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
