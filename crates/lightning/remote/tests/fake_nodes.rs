//! LND and Core Lightning are not run here: these tests drive the `lnd`
//! and `cln` backends against local HTTPS servers that answer as the
//! nodes' REST APIs do (paths, auth headers, JSON shapes, error bodies and
//! statuses, TLS certificates made from the nodes' own templates). Behind
//! both fakes, a sandbox issues and settles real regtest invoices, so the
//! backend contract runs unchanged.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use gate402_lightning::contract::{self, Pair};
use gate402_lightning::{
    InvoiceRequest, InvoiceState, InvoiceStatus, InvoiceSummary, LightningBackend, LightningError,
    PayError, PaymentOutcome,
};
use gate402_lightning_remote::cln::{Cln, ClnConfig};
use gate402_lightning_remote::lnd::{Lnd, LndConfig};
use gate402_lightning_sandbox::Sandbox;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};

/// What the fake network charges to route a payment.
const ROUTING_FEE_MSAT: u64 = 1_000;

/// An invoice a fake node issued: its payment hash and BOLT11 string.
type Issued = ([u8; 32], String);

/// The shared state of a fake node: the sandbox that plays the network,
/// and what this node paid.
#[derive(Clone)]
struct Fake {
    network: Sandbox,
    secret: String,
    /// Other credentials the node knows, each with what it may do (LND:
    /// macaroon permissions; Core Lightning: RPC methods).
    limited: Arc<HashMap<String, Vec<&'static str>>>,
    paid: Arc<Mutex<HashMap<[u8; 32], PaymentOutcome>>>,
    /// Payments still on their way (LND: another send of one is refused
    /// as "in transition", tracking it says nothing yet).
    in_flight: Arc<Mutex<HashSet<[u8; 32]>>>,
    labels: Arc<Mutex<HashMap<String, [u8; 32]>>>,
    /// The most this node can send at once.
    spendable_msat: u64,
    /// Core Lightning with `xpay-handle-pay=true`: a failed `pay` is 209.
    xpay: bool,
    /// LND: whether it has an active public channel.
    public_channel: bool,
    /// LND: the `private` flag of each invoice asked for.
    private_flags: Arc<Mutex<Vec<bool>>>,
    /// The invoices this node issued, oldest first: LND's `add_index` and
    /// Core Lightning's `created_index` are the position plus one.
    issued: Arc<Mutex<Vec<Issued>>>,
    /// Core Lightning: invoices deleted (`delinvoice`, `autoclean`); their
    /// `created_index` is not given again.
    deleted: Arc<Mutex<HashSet<[u8; 32]>>>,
    /// What read-only calls answer, by LND path or Core Lightning method,
    /// in the node's own shapes: balances, channels, funds.
    canned: Arc<HashMap<&'static str, Value>>,
}

impl Fake {
    fn new(network: Sandbox, secret: &str) -> Self {
        Self {
            network,
            secret: secret.into(),
            limited: Arc::default(),
            paid: Arc::default(),
            in_flight: Arc::default(),
            labels: Arc::default(),
            spendable_msat: u64::MAX,
            xpay: false,
            public_channel: false,
            private_flags: Arc::default(),
            issued: Arc::default(),
            deleted: Arc::default(),
            canned: Arc::default(),
        }
    }

    fn with_canned(mut self, key: &'static str, answer: Value) -> Self {
        Arc::make_mut(&mut self.canned).insert(key, answer);
        self
    }

    /// What the sandbox knows of an invoice: amount, times, description.
    async fn facts(&self, hash: &[u8; 32]) -> Option<InvoiceSummary> {
        let all = self.network.recent_invoices(usize::MAX).await.ok()?;
        all.into_iter().find(|i| i.payment_hash == *hash)
    }

    /// Its position in [`Fake::issued`] plus one, and its BOLT11 string.
    fn issued_as(&self, hash: &[u8; 32]) -> Option<(u64, String)> {
        let issued = self.issued.lock().unwrap();
        let position = issued.iter().position(|(h, _)| h == hash)?;
        Some((position as u64 + 1, issued[position].1.clone()))
    }

    fn issue(&self, hash: [u8; 32], bolt11: &str) {
        self.issued.lock().unwrap().push((hash, bolt11.to_owned()));
    }

    fn with_limited(mut self, credential: &str, may: &[&'static str]) -> Self {
        Arc::make_mut(&mut self.limited).insert(credential.into(), may.to_vec());
        self
    }

    /// Pays through the sandbox, charging the fake routing fee; `amount_msat`
    /// pays an invoice without an amount.
    fn pay(
        &self,
        bolt11: &str,
        amount_msat: Option<u64>,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, String> {
        if max_fee_msat < ROUTING_FEE_MSAT {
            return Err("no route".into());
        }
        let invoice = gate402_bolt11::Invoice::parse(bolt11).map_err(|e| e.to_string())?;
        let hash = invoice.payment_hash();
        if self.paid.lock().unwrap().contains_key(&hash) {
            return Err("already paid".into());
        }
        if self.in_flight.lock().unwrap().contains(&hash) {
            return Err("in flight".into());
        }
        let sending = amount_msat.or(invoice.amount_msat()).unwrap_or(0);
        if sending + ROUTING_FEE_MSAT > self.spendable_msat {
            return Err("insufficient funds".into());
        }
        let settled = match amount_msat {
            None => self.network.settle(bolt11),
            Some(amount_msat) => self.network.settle_amount(bolt11, amount_msat),
        };
        let mut outcome = settled.map_err(|e| e.to_string())?;
        outcome.fee_msat = ROUTING_FEE_MSAT;
        self.paid.lock().unwrap().insert(hash, outcome.clone());
        Ok(outcome)
    }
}

/// A fake node's TLS: the certificate file a client is configured with,
/// and the server's side.
struct NodeTls {
    cert_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn server_config(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    Arc::new(config)
}

/// LND's `tls.cert` template: one self-signed P-256 certificate marked
/// `CA:TRUE` (key usages keyCertSign, digitalSignature, keyEncipherment),
/// for `localhost` and the loopback address.
fn lnd_tls(dir: &FsPath, name: &str) -> NodeTls {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_file = dir.join(format!("{name}-tls.cert"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    NodeTls {
        cert_file,
        server: server_config(vec![cert.der().clone()], &key),
    }
}

/// clnrest's: a CA (`ca.pem`, what clients are given) and a separate leaf
/// it signed for `cln` and `localhost`.
fn cln_tls(dir: &FsPath, name: &str) -> NodeTls {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params =
        CertificateParams::new(vec!["cln".to_owned(), "localhost".to_owned()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let cert_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&cert_file, ca.pem()).unwrap();
    NodeTls {
        cert_file,
        server: server_config(vec![leaf.der().clone(), ca.der().clone()], &leaf_key),
    }
}

/// Serves `router` over TLS on a loopback port.
async fn serve(router: Router, tls: &NodeTls) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
                    .await;
            });
        }
    });
    addr
}

fn hash_from_hex(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

// ---------------------------------------------------------------- LND ----

fn lnd_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message, "details": []})),
    )
        .into_response()
}

/// An error of a server-streaming route: LND wraps those in `{"error": …}`.
fn lnd_stream_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {
            "code": code,
            "message": message,
            "http_code": status.as_u16(),
            "http_status": status.canonical_reason(),
            "details": [],
        }})),
    )
        .into_response()
}

/// The error LND answers for a missing or wrong macaroon, or one without
/// `permission`, if it would (on a streaming route when `streaming`).
fn lnd_refusal(
    fake: &Fake,
    headers: &HeaderMap,
    permission: &str,
    streaming: bool,
) -> Option<Response> {
    let error = if streaming {
        lnd_stream_error
    } else {
        lnd_error
    };
    let macaroon = headers
        .get("Grpc-Metadata-macaroon")
        .and_then(|v| v.to_str().ok());
    let refused = match macaroon {
        Some(m) if m == fake.secret => return None,
        Some(m) => match fake.limited.get(m) {
            Some(may) if may.contains(&permission) => return None,
            Some(_) => "permission denied",
            None => "verification failed: signature mismatch after caveat verification",
        },
        None => "expected 1 macaroon, got 0",
    };
    Some(error(StatusCode::INTERNAL_SERVER_ERROR, 2, refused))
}

async fn lnd_invoice_json(fake: &Fake, hash: &[u8; 32]) -> Option<Value> {
    let status = fake.network.invoice_status(hash).await.ok()?;
    let (state, paid, preimage) = match status {
        InvoiceStatus::Open => ("OPEN", 0, None),
        InvoiceStatus::Canceled => ("CANCELED", 0, None),
        InvoiceStatus::Settled {
            amount_msat,
            preimage,
        } => ("SETTLED", amount_msat, preimage),
    };
    let facts = fake.facts(hash).await?;
    let created_at = facts.created_at.unwrap_or(0);
    let (add_index, bolt11) = fake.issued_as(hash).unwrap_or_default();
    Some(json!({
        "memo": facts.description.unwrap_or_default(),
        "r_hash": STANDARD.encode(hash),
        // LND makes the preimage itself and sends it whatever the state.
        "r_preimage": STANDARD.encode(preimage.unwrap_or([0x5a; 32])),
        "value": (facts.amount_msat.unwrap_or(0) / 1000).to_string(),
        "value_msat": facts.amount_msat.unwrap_or(0).to_string(),
        "settled": state == "SETTLED",
        "creation_date": created_at.to_string(),
        "settle_date": facts.settled_at.unwrap_or(0).to_string(),
        "payment_request": bolt11,
        "expiry": facts.expires_at.map_or(0, |at| at - created_at).to_string(),
        "add_index": add_index.to_string(),
        "settle_index": "0",
        "amt_paid_sat": (paid / 1000).to_string(),
        "amt_paid_msat": paid.to_string(),
        "state": state,
        "is_keysend": false,
    }))
}

fn lnd_payment_json(hash: &[u8; 32], outcome: &PaymentOutcome) -> Value {
    json!({"result": {
        "payment_hash": hex::encode(hash),
        "value_msat": outcome.amount_msat.to_string(),
        "payment_preimage": hex::encode(outcome.preimage),
        "status": "SUCCEEDED",
        "fee_msat": outcome.fee_msat.to_string(),
        "failure_reason": "FAILURE_REASON_NONE",
    }})
}

fn lnd_router(fake: Fake) -> Router {
    async fn getinfo(State(fake): State<Fake>, headers: HeaderMap) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "info:read", false) {
            return r;
        }
        Json(json!({
            "identity_pubkey": hex::encode(fake.network.pubkey()),
            "alias": "fake-lnd",
            "chains": [{"chain": "bitcoin", "network": "regtest"}],
            "synced_to_chain": true,
        }))
        .into_response()
    }
    async fn add_invoice(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "invoices:write", false) {
            return r;
        }
        let (Some(memo), Some(value_msat), Some(expiry)) = (
            body["memo"].as_str(),
            body["value_msat"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok()),
            body["expiry"].as_str().and_then(|v| v.parse::<u32>().ok()),
        ) else {
            return lnd_error(StatusCode::BAD_REQUEST, 3, "invalid invoice request");
        };
        fake.private_flags
            .lock()
            .unwrap()
            .push(body["private"].as_bool().unwrap_or(false));
        let created = fake
            .network
            .create_invoice(InvoiceRequest {
                amount_msat: value_msat,
                memo: memo.into(),
                expiry_secs: expiry,
            })
            .await
            .unwrap();
        fake.issue(created.payment_hash, &created.bolt11);
        let (add_index, _) = fake.issued_as(&created.payment_hash).unwrap();
        Json(json!({
            "r_hash": STANDARD.encode(created.payment_hash),
            "payment_request": created.bolt11,
            "add_index": add_index.to_string(),
            "payment_addr": STANDARD.encode([0u8; 32]),
        }))
        .into_response()
    }
    /// `GET /v1/invoices`: as LND, the first 100 from the start unless
    /// `reversed`, which seeks back from the end (or `index_offset`); the
    /// page itself is always oldest first.
    async fn list_invoices(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Query(query): Query<HashMap<String, String>>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "invoices:read", false) {
            return r;
        }
        let number = |key: &str| query.get(key).and_then(|v| v.parse::<usize>().ok());
        let max = number("num_max_invoices").filter(|&n| n > 0).unwrap_or(100);
        let reversed = query.get("reversed").is_some_and(|v| v == "true");
        let hashes: Vec<[u8; 32]> = fake
            .issued
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| *h)
            .collect();
        let page: Vec<[u8; 32]> = if reversed {
            let end = number("index_offset")
                .filter(|&o| o > 0)
                .map_or(hashes.len(), |o| (o - 1).min(hashes.len()));
            hashes[end.saturating_sub(max)..end].to_vec()
        } else {
            let start = number("index_offset").unwrap_or(0).min(hashes.len());
            hashes[start..(start + max).min(hashes.len())].to_vec()
        };
        let mut invoices = Vec::new();
        for hash in &page {
            invoices.push(lnd_invoice_json(&fake, hash).await.unwrap());
        }
        let index = |i: Option<&Value>| i.map_or("0".into(), |i| i["add_index"].clone());
        Json(json!({
            "first_index_offset": index(invoices.first()),
            "last_index_offset": index(invoices.last()),
            "invoices": invoices,
        }))
        .into_response()
    }
    async fn chain_balance(State(fake): State<Fake>, headers: HeaderMap) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "onchain:read", false) {
            return r;
        }
        Json(fake.canned["/v1/balance/blockchain"].clone()).into_response()
    }
    async fn channel_balance(State(fake): State<Fake>, headers: HeaderMap) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "offchain:read", false) {
            return r;
        }
        Json(fake.canned["/v1/balance/channels"].clone()).into_response()
    }
    async fn lookup(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Path(hash): Path<String>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "invoices:read", false) {
            return r;
        }
        match hash_from_hex(&hash) {
            None => lnd_error(StatusCode::BAD_REQUEST, 3, "invalid hash"),
            Some(hash) => match lnd_invoice_json(&fake, &hash).await {
                Some(invoice) => Json(invoice).into_response(),
                None => lnd_error(StatusCode::NOT_FOUND, 5, "unable to locate invoice"),
            },
        }
    }
    async fn subscribe(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Path(hash): Path<String>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "invoices:read", true) {
            return r;
        }
        let Some(hash) = URL_SAFE
            .decode(&hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
        else {
            return lnd_stream_error(StatusCode::BAD_REQUEST, 3, "invalid hash");
        };
        // As LND: a subscription to an invoice it does not know is taken,
        // and then nothing is said.
        let stream = futures_stream(move |tx| async move {
            let mut last = String::new();
            loop {
                let Some(invoice) = lnd_invoice_json(&fake, &hash).await else {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let state = invoice["state"].as_str().unwrap().to_owned();
                if state != last {
                    if tx
                        .send(format!("{}\n", json!({"result": invoice})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    last = state;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Response::new(stream)
    }
    async fn send(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "offchain:write", true) {
            return r;
        }
        let (Some(bolt11), Some(fee_limit)) = (
            body["payment_request"].as_str(),
            body["fee_limit_msat"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok()),
        ) else {
            return lnd_stream_error(
                StatusCode::BAD_REQUEST,
                3,
                "payment_request and fee_limit_msat required",
            );
        };
        assert_eq!(body["no_inflight_updates"], true);
        let amount_msat = match body.get("amt_msat") {
            None => None,
            Some(v) => match v.as_str().and_then(|v| v.parse::<u64>().ok()) {
                Some(msat) => Some(msat),
                None => return lnd_stream_error(StatusCode::BAD_REQUEST, 3, "bad amt_msat"),
            },
        };
        // LND's checks of the amount against the invoice's.
        let encoded = gate402_bolt11::Invoice::parse(bolt11)
            .ok()
            .and_then(|i| i.amount_msat());
        match (encoded, amount_msat) {
            (Some(_), Some(_)) => {
                return lnd_stream_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    2,
                    "amount must not be specified when paying a non-zero amount invoice",
                )
            }
            (None, None) => {
                return lnd_stream_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    2,
                    "amount must be specified when paying a zero amount invoice",
                )
            }
            _ => {}
        }
        let line = match fake.pay(bolt11, amount_msat, fee_limit) {
            Ok(outcome) => {
                let hash = gate402_bolt11::Invoice::parse(bolt11)
                    .unwrap()
                    .payment_hash();
                lnd_payment_json(&hash, &outcome)
            }
            Err(e) if e == "no route" => {
                json!({"result": {"status": "FAILED", "failure_reason": "FAILURE_REASON_NO_ROUTE", "value_msat": "0", "fee_msat": "0"}})
            }
            // Refused before any result line, with the status of the error.
            Err(e) if e == "already paid" => {
                return lnd_stream_error(StatusCode::CONFLICT, 6, "invoice is already paid")
            }
            Err(e) if e == "in flight" => {
                return lnd_stream_error(StatusCode::CONFLICT, 6, "payment is in transition")
            }
            Err(e) if e == "insufficient funds" => {
                json!({"result": {"status": "FAILED", "failure_reason": "FAILURE_REASON_INSUFFICIENT_BALANCE", "value_msat": "0", "fee_msat": "0"}})
            }
            Err(e) => json!({"error": {"code": 2, "message": e, "http_code": 500}}),
        };
        Response::new(Body::from(format!("{line}\n")))
    }
    async fn track(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Path(hash): Path<String>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "offchain:read", true) {
            return r;
        }
        let Some(hash) = URL_SAFE
            .decode(&hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
        else {
            return lnd_stream_error(StatusCode::BAD_REQUEST, 3, "invalid hash");
        };
        let paid = fake.paid.lock().unwrap().get(&hash).cloned();
        match paid {
            Some(outcome) => Response::new(Body::from(format!(
                "{}\n",
                lnd_payment_json(&hash, &outcome)
            ))),
            // In flight, with no_inflight_updates: nothing until it ends.
            None if fake.in_flight.lock().unwrap().contains(&hash) => {
                Response::new(futures_stream(|tx| async move { tx.closed().await }))
            }
            None => lnd_stream_error(StatusCode::NOT_FOUND, 5, "payment isn't initiated"),
        }
    }
    async fn channels(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Query(query): Query<HashMap<String, String>>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers, "offchain:read", false) {
            return r;
        }
        let mut channels: Vec<Value> = match fake.canned.get("/v1/channels") {
            Some(answer) => answer["channels"].as_array().cloned().unwrap_or_default(),
            None if fake.public_channel => vec![
                json!({"active": true, "private": false, "chan_id": "1", "capacity": "1000000"}),
            ],
            None => vec![],
        };
        let flag = |key: &str| query.get(key).is_some_and(|v| v == "true");
        if flag("active_only") {
            channels.retain(|c| c["active"] == true);
        }
        if flag("inactive_only") {
            channels.retain(|c| c["active"] != true);
        }
        if flag("public_only") {
            channels.retain(|c| c["private"] != true);
        }
        if flag("private_only") {
            channels.retain(|c| c["private"] == true);
        }
        Json(json!({"channels": channels})).into_response()
    }
    Router::new()
        .route("/v1/getinfo", get(getinfo))
        .route("/v1/channels", get(channels))
        .route("/v1/invoices", post(add_invoice).get(list_invoices))
        .route("/v1/balance/blockchain", get(chain_balance))
        .route("/v1/balance/channels", get(channel_balance))
        .route("/v1/invoice/{hash}", get(lookup))
        .route("/v2/invoices/subscribe/{hash}", get(subscribe))
        .route("/v2/router/send", post(send))
        .route("/v2/router/track/{hash}", get(track))
        .with_state(fake)
}

/// A streaming body fed by a task, as LND's server-streaming routes answer.
fn futures_stream<F, Fut>(task: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(8);
    tokio::spawn(task(tx));
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|line| line.map(Ok::<_, std::io::Error>))
    });
    Body::from_stream(stream)
}

// ---------------------------------------------------------------- CLN ----

fn cln_error(status: StatusCode, code: i64, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

fn created(body: Value) -> Response {
    // clnrest answers successful calls with 201 Created.
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn cln_invoice_json(fake: &Fake, hash: &[u8; 32]) -> Option<Value> {
    let status = fake.network.invoice_status(hash).await.ok()?;
    let label = fake
        .labels
        .lock()
        .unwrap()
        .iter()
        .find(|(_, h)| *h == hash)
        .map(|(l, _)| l.clone())?;
    let facts = fake.facts(hash).await?;
    let (created_index, bolt11) = fake.issued_as(hash)?;
    let mut invoice = json!({
        "label": label,
        "bolt11": bolt11,
        "payment_hash": hex::encode(hash),
        "status": "unpaid",
        "description": facts.description,
        "expires_at": facts.expires_at,
        "created_index": created_index,
    });
    // An invoice for "any" amount has no amount_msat.
    if let Some(amount_msat) = facts.amount_msat {
        invoice["amount_msat"] = amount_msat.into();
    }
    match status {
        InvoiceStatus::Open => {}
        InvoiceStatus::Canceled => invoice["status"] = "expired".into(),
        InvoiceStatus::Settled {
            amount_msat,
            preimage,
        } => {
            invoice["status"] = "paid".into();
            invoice["pay_index"] = 1.into();
            invoice["amount_received_msat"] = amount_msat.into();
            invoice["paid_at"] = facts.settled_at.into();
            invoice["payment_preimage"] = preimage.map(hex::encode).into();
            invoice["updated_index"] = 1.into();
        }
    }
    Some(invoice)
}

fn cln_router(fake: Fake) -> Router {
    async fn rpc(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Path(method): Path<String>,
        Json(params): Json<Value>,
    ) -> Response {
        match headers.get("Rune").and_then(|v| v.to_str().ok()) {
            Some(r) if r == fake.secret => {}
            Some(r) => match fake.limited.get(r) {
                Some(may) if may.contains(&method.as_str()) => {}
                Some(_) => {
                    return cln_error(
                        StatusCode::UNAUTHORIZED,
                        1502,
                        &format!("Not authorized: method is not one of the rune's ({method})"),
                    )
                }
                None => {
                    return cln_error(
                        StatusCode::UNAUTHORIZED,
                        1501,
                        "Not authorized: Not derived from master",
                    )
                }
            },
            None => return cln_error(StatusCode::FORBIDDEN, 1501, "Not authorized: Missing rune"),
        }
        match method.as_str() {
            "getinfo" => created(
                json!({"id": hex::encode(fake.network.pubkey()), "alias": "fake-cln", "network": "regtest", "blockheight": 101}),
            ),
            "invoice" => {
                // "any": an invoice without an amount.
                let amount_msat = match &params["amount_msat"] {
                    Value::String(any) if any == "any" => Some(0),
                    other => other.as_u64().filter(|&msat| msat > 0),
                };
                let (Some(amount_msat), Some(label), Some(description), Some(expiry)) = (
                    amount_msat,
                    params["label"].as_str(),
                    params["description"].as_str(),
                    params["expiry"].as_u64(),
                ) else {
                    return cln_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        -32602,
                        "missing required parameter",
                    );
                };
                if fake.labels.lock().unwrap().contains_key(label) {
                    return cln_error(StatusCode::INTERNAL_SERVER_ERROR, 900, "Duplicate label");
                }
                let invoice = fake
                    .network
                    .create_invoice(InvoiceRequest {
                        amount_msat,
                        memo: description.into(),
                        expiry_secs: expiry as u32,
                    })
                    .await
                    .unwrap();
                fake.labels
                    .lock()
                    .unwrap()
                    .insert(label.into(), invoice.payment_hash);
                fake.issue(invoice.payment_hash, &invoice.bolt11);
                created(
                    json!({"payment_hash": hex::encode(invoice.payment_hash), "expires_at": invoice.expires_at, "bolt11": invoice.bolt11, "payment_secret": hex::encode([0u8; 32]), "created_index": 1}),
                )
            }
            "listinvoices" => {
                let deleted = fake.deleted.lock().unwrap().clone();
                let hashes: Vec<[u8; 32]> = match params["payment_hash"].as_str() {
                    Some(hash) => hash_from_hex(hash).into_iter().collect(),
                    // By creation: from `start` (1 if absent), at most `limit`.
                    None => {
                        if params.get("start").is_some() && params["index"] != "created" {
                            return cln_error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                -32602,
                                "start: Can only specify start with index",
                            );
                        }
                        let start = params["start"].as_u64().unwrap_or(1).max(1) as usize;
                        let limit = params["limit"].as_u64().map_or(usize::MAX, |l| l as usize);
                        let issued = fake.issued.lock().unwrap().clone();
                        issued
                            .into_iter()
                            .skip(start - 1)
                            .map(|(h, _)| h)
                            .filter(|h| !deleted.contains(h))
                            .take(limit)
                            .collect()
                    }
                };
                let mut invoices = Vec::new();
                for hash in hashes.iter().filter(|h| !deleted.contains(*h)) {
                    invoices.extend(cln_invoice_json(&fake, hash).await);
                }
                created(json!({"invoices": invoices}))
            }
            "wait" => {
                // Only the form that answers at once: the current index.
                assert_eq!(params["nextvalue"], 0, "the fake does not wait");
                if params["subsystem"] != "invoices" || params["indexname"] != "created" {
                    return cln_error(StatusCode::INTERNAL_SERVER_ERROR, -32602, "unsupported");
                }
                let created_index = fake.issued.lock().unwrap().len();
                created(json!({"subsystem": "invoices", "created": created_index}))
            }
            "listfunds" | "listpeerchannels" => match fake.canned.get(method.as_str()) {
                Some(answer) => created(answer.clone()),
                None => cln_error(StatusCode::NOT_FOUND, -32601, "Unknown command"),
            },
            "waitinvoice" => {
                let label = params["label"].as_str().unwrap_or_default().to_owned();
                let Some(hash) = fake.labels.lock().unwrap().get(&label).copied() else {
                    return cln_error(StatusCode::INTERNAL_SERVER_ERROR, -1, "Unknown invoice");
                };
                loop {
                    let invoice = cln_invoice_json(&fake, &hash).await.unwrap();
                    match invoice["status"].as_str() {
                        Some("paid") => return created(invoice),
                        Some("expired") => {
                            return cln_error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                903,
                                "invoice expired during wait",
                            )
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
            "pay" => {
                let (Some(bolt11), Some(maxfee)) =
                    (params["bolt11"].as_str(), params["maxfee"].as_u64())
                else {
                    return cln_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        -32602,
                        "missing required parameter",
                    );
                };
                assert!(params["retry_for"].as_u64().is_some());
                assert!(params["retry_for"].as_u64().unwrap() <= u64::from(u16::MAX));
                let invoice = gate402_bolt11::Invoice::parse(bolt11).unwrap();
                let hash = invoice.payment_hash();
                let amount_msat = params["amount_msat"].as_u64();
                // Core Lightning's checks of the amount against the invoice's.
                match (invoice.amount_msat(), amount_msat) {
                    (Some(_), Some(_)) => {
                        return cln_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            -32602,
                            "amount_msat: parameter unnecessary",
                        )
                    }
                    (None, None) => {
                        return cln_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            -32602,
                            "amount_msat: Invoice has no amount, need amount_msat",
                        )
                    }
                    _ => {}
                }
                let done = |outcome: PaymentOutcome| {
                    created(json!({
                        "payment_preimage": hex::encode(outcome.preimage),
                        "payment_hash": hex::encode(hash),
                        "status": "complete",
                        "amount_msat": outcome.amount_msat,
                        "amount_sent_msat": outcome.amount_msat + outcome.fee_msat,
                        "parts": 1,
                    }))
                };
                match fake.pay(bolt11, amount_msat, maxfee) {
                    Ok(outcome) => done(outcome),
                    // A completed payment is answered again, not refused.
                    Err(e) if e == "already paid" => done(fake.paid.lock().unwrap()[&hash].clone()),
                    Err(e) if e == "no route" && fake.xpay => cln_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        209,
                        "Failed after 1 attempts. We could not find a usable set of paths.",
                    ),
                    Err(e) if e == "no route" => cln_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        206,
                        &format!("Route wanted fee of {ROUTING_FEE_MSAT}msat"),
                    ),
                    Err(e) if e == "insufficient funds" => cln_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        215,
                        "We don't have enough funds to pay this invoice",
                    ),
                    Err(e) => cln_error(StatusCode::INTERNAL_SERVER_ERROR, 210, &e),
                }
            }
            "listpays" => {
                let hash = params["payment_hash"].as_str().and_then(hash_from_hex);
                let paid =
                    hash.and_then(|h| fake.paid.lock().unwrap().get(&h).cloned().map(|o| (h, o)));
                let pays: Vec<Value> = paid.into_iter().map(|(h, o)| json!({
                    "payment_hash": hex::encode(h), "status": "complete", "preimage": hex::encode(o.preimage),
                    "amount_msat": o.amount_msat, "amount_sent_msat": o.amount_msat + o.fee_msat,
                })).collect();
                created(json!({"pays": pays}))
            }
            _ => cln_error(StatusCode::NOT_FOUND, -32601, "Unknown command"),
        }
    }
    Router::new()
        .route("/v1/{method}", post(rpc))
        .with_state(fake)
}

// -------------------------------------------------------------- tests ----

const MACAROON: &[u8] = b"\x02\x01fake admin macaroon";
const RUNE: &str = "fake-rune-Z6bq4x";

/// An LND fake on HTTPS with its own `tls.cert`, and a backend pinned to it.
async fn lnd_node(fake: Fake, dir: &FsPath, name: &str, macaroon: &[u8]) -> (Lnd, String, PathBuf) {
    let tls = lnd_tls(dir, name);
    let addr = serve(lnd_router(fake), &tls).await;
    let url = format!("https://{addr}");
    let macaroon_path = dir.join(format!("{name}.macaroon"));
    std::fs::write(&macaroon_path, macaroon).unwrap();
    let lnd = Lnd::new(&LndConfig {
        url: url.clone(),
        macaroon_path: Some(macaroon_path),
        macaroon_dir: None,
        tls_cert_path: Some(tls.cert_file.clone()),
        route_hints: Default::default(),
    })
    .unwrap();
    (lnd, url, tls.cert_file)
}

async fn lnd_pair() -> (Lnd, Lnd, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let secret = hex::encode(MACAROON);
    let (merchant, url, _) = lnd_node(
        Fake::new(network.clone(), &secret),
        dir.path(),
        "merchant",
        MACAROON,
    )
    .await;
    // The payer's node is configured the Aperture way: a macaroon directory.
    let payer_tls = lnd_tls(dir.path(), "payer");
    let payer = serve(lnd_router(Fake::new(network, &secret)), &payer_tls).await;
    let macaroon_dir = dir.path().join("macaroons");
    std::fs::create_dir_all(&macaroon_dir).unwrap();
    std::fs::write(macaroon_dir.join("admin.macaroon"), MACAROON).unwrap();
    let payer = Lnd::new(&LndConfig {
        url: format!("https://{payer}"),
        macaroon_path: None,
        macaroon_dir: Some(macaroon_dir.clone()),
        tls_cert_path: Some(payer_tls.cert_file),
        route_hints: Default::default(),
    })
    .unwrap();
    (merchant, payer, dir, url)
}

/// A clnrest fake on HTTPS (a CA and its leaf), and a backend trusting the CA.
async fn cln_node(fake: Fake, dir: &FsPath, name: &str, rune: &str) -> (Cln, String) {
    let tls = cln_tls(dir, name);
    let addr = serve(cln_router(fake), &tls).await;
    let url = format!("https://localhost:{}", addr.port());
    let cln = Cln::new(&ClnConfig {
        url: url.clone(),
        rune: Some(rune.into()),
        rune_path: None,
        tls_cert_path: Some(tls.cert_file),
    })
    .unwrap();
    (cln, url)
}

async fn cln_pair() -> (Cln, Cln, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let (merchant, merchant_url) = cln_node(
        Fake::new(network.clone(), RUNE),
        dir.path(),
        "merchant",
        RUNE,
    )
    .await;
    // The payer's rune comes from a file.
    let payer_tls = cln_tls(dir.path(), "payer");
    let payer = serve(cln_router(Fake::new(network, RUNE)), &payer_tls).await;
    std::fs::write(dir.path().join("rune"), format!("{RUNE}\n")).unwrap();
    let payer = Cln::new(&ClnConfig {
        url: format!("https://localhost:{}", payer.port()),
        rune: None,
        rune_path: Some(dir.path().join("rune")),
        tls_cert_path: Some(payer_tls.cert_file),
    })
    .unwrap();
    (merchant, payer, dir, merchant_url)
}

async fn fee_cap_is_enforced(merchant: &dyn LightningBackend, payer: &dyn LightningBackend) {
    let invoice = merchant
        .create_invoice(InvoiceRequest {
            amount_msat: 9_000,
            memo: "cap".into(),
            expiry_secs: 600,
        })
        .await
        .unwrap();
    match payer
        .pay(
            &invoice.bolt11,
            ROUTING_FEE_MSAT - 1,
            Duration::from_secs(10),
        )
        .await
    {
        Err(PayError::NoRoute { max_fee_msat, .. }) => {
            assert_eq!(max_fee_msat, ROUTING_FEE_MSAT - 1)
        }
        other => panic!("expected NoRoute under the fee cap, got {other:?}"),
    }
    assert_eq!(
        merchant
            .invoice_status(&invoice.payment_hash)
            .await
            .unwrap(),
        InvoiceStatus::Open
    );
    let paid = payer
        .pay(&invoice.bolt11, ROUTING_FEE_MSAT, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(paid.fee_msat, ROUTING_FEE_MSAT);
}

#[tokio::test]
async fn lnd_keeps_the_backend_contract() {
    let (merchant, payer, _dir, _) = lnd_pair().await;
    contract::run_all(&Pair {
        receiver: &merchant,
        payer: &payer,
    })
    .await;
    fee_cap_is_enforced(&merchant, &payer).await;
    let info = merchant.node_info().await.unwrap();
    assert_eq!(info.backend, "lnd");
}

#[tokio::test]
async fn lnd_wrong_macaroon_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let fake = Fake::new(network, &hex::encode(MACAROON));
    let (_, url, cert) = lnd_node(fake, dir.path(), "node", MACAROON).await;
    let path = dir.path().join("wrong.macaroon");
    std::fs::write(&path, b"another macaroon").unwrap();
    let wrong = Lnd::new(&LndConfig {
        url,
        macaroon_path: Some(path),
        macaroon_dir: None,
        tls_cert_path: Some(cert),
        route_hints: Default::default(),
    })
    .unwrap();
    match wrong.node_info().await {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("verification failed"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(Lnd::new(&LndConfig {
        url: "127.0.0.1:8080".into(),
        macaroon_path: Some(dir.path().join("wrong.macaroon")),
        macaroon_dir: None,
        tls_cert_path: None,
        route_hints: Default::default(),
    })
    .is_err());
    assert!(Lnd::new(&LndConfig {
        url: "https://127.0.0.1:8080".into(),
        macaroon_path: Some(dir.path().join("missing")),
        macaroon_dir: None,
        tls_cert_path: None,
        route_hints: Default::default(),
    })
    .is_err());
}

/// LND's own certificate (self-signed, `CA:TRUE`) is pinned: that node is
/// reached, another certificate is refused with a message that names it.
#[tokio::test]
async fn lnd_tls_cert_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let secret = hex::encode(MACAROON);
    let (lnd, url, _) = lnd_node(
        Fake::new(network.clone(), &secret),
        dir.path(),
        "a",
        MACAROON,
    )
    .await;
    assert_eq!(lnd.node_info().await.unwrap().backend, "lnd");
    // Any name the node answers on: the certificate is its identity.
    let by_name = Lnd::new(&LndConfig {
        url: url.replace("127.0.0.1", "localhost"),
        macaroon_path: Some(dir.path().join("a.macaroon")),
        macaroon_dir: None,
        tls_cert_path: Some(dir.path().join("a-tls.cert")),
        route_hints: Default::default(),
    })
    .unwrap();
    assert!(by_name.node_info().await.is_ok());

    let other = lnd_tls(dir.path(), "b");
    let cert_b = other.cert_file.display().to_string();
    let unreachable = |tls_cert_path| {
        Lnd::new(&LndConfig {
            url: url.clone(),
            macaroon_path: Some(dir.path().join("a.macaroon")),
            macaroon_dir: None,
            tls_cert_path,
            route_hints: Default::default(),
        })
        .unwrap()
    };
    match unreachable(Some(other.cert_file.clone())).node_info().await {
        Err(LightningError::Unavailable(message)) => {
            assert!(message.contains(&cert_b), "{message}");
            assert!(message.contains("not the one in"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Without the file: the system roots, which do not know the node.
    match unreachable(None).node_info().await {
        Err(LightningError::Unavailable(message)) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A file that is not a certificate is refused when configured.
    let junk = dir.path().join("junk.cert");
    std::fs::write(&junk, "not a certificate").unwrap();
    let error = Lnd::new(&LndConfig {
        url,
        macaroon_path: Some(dir.path().join("a.macaroon")),
        macaroon_dir: None,
        tls_cert_path: Some(junk),
        route_hints: Default::default(),
    })
    .unwrap_err();
    assert!(error.to_string().contains("junk.cert"), "{error}");
}

/// A macaroon without a permission: the error names it and the macaroon
/// to use.
#[tokio::test]
async fn lnd_permission_denied_names_the_permission() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let fake = Fake::new(network, &hex::encode(MACAROON))
        .with_limited(
            &hex::encode(b"invoice"),
            &["invoices:read", "invoices:write"],
        )
        .with_limited(
            &hex::encode(b"readonly"),
            &["info:read", "invoices:read", "offchain:read"],
        );
    let (_, url, cert) = lnd_node(fake, dir.path(), "node", MACAROON).await;
    let with = |name: &str| {
        let path = dir.path().join(format!("{name}.macaroon"));
        std::fs::write(&path, name).unwrap();
        Lnd::new(&LndConfig {
            url: url.clone(),
            macaroon_path: Some(path),
            macaroon_dir: None,
            tls_cert_path: Some(cert.clone()),
            route_hints: Default::default(),
        })
        .unwrap()
    };
    let request = || InvoiceRequest {
        amount_msat: 1_000,
        memo: "m".into(),
        expiry_secs: 600,
    };
    let invoice = with("invoice");
    let created = invoice.create_invoice(request()).await.unwrap();
    match invoice.node_info().await {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("info:read"), "{message}");
            assert!(message.contains("admin.macaroon"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let readonly = with("readonly");
    assert!(readonly.invoice_status(&created.payment_hash).await.is_ok());
    match readonly.create_invoice(request()).await {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("invoices:write"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match readonly
        .pay(&created.bolt11, 5_000, Duration::from_secs(5))
        .await
    {
        Err(PayError::Backend(LightningError::Unauthorized(message))) => {
            assert!(message.contains("offchain:write"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A node with no public channel puts hints to its private ones in every
/// invoice (else no payer could route to it); one with a public channel
/// does not, unless told to.
#[tokio::test]
async fn lnd_route_hints_follow_the_channels() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let secret = hex::encode(MACAROON);
    let private = Fake::new(network.clone(), &secret);
    let mut public = Fake::new(network, &secret);
    public.public_channel = true;
    let (private_node, _, _) = lnd_node(private.clone(), dir.path(), "private", MACAROON).await;
    let (public_node, url, cert) = lnd_node(public.clone(), dir.path(), "public", MACAROON).await;
    let always = Lnd::new(&LndConfig {
        url,
        macaroon_path: Some(dir.path().join("public.macaroon")),
        macaroon_dir: None,
        tls_cert_path: Some(cert),
        route_hints: gate402_lightning_remote::lnd::RouteHints::Always,
    })
    .unwrap();
    let request = || InvoiceRequest {
        amount_msat: 1_000,
        memo: "hints".into(),
        expiry_secs: 600,
    };
    for _ in 0..2 {
        private_node.create_invoice(request()).await.unwrap();
        public_node.create_invoice(request()).await.unwrap();
    }
    always.create_invoice(request()).await.unwrap();
    assert_eq!(*private.private_flags.lock().unwrap(), [true, true]);
    assert_eq!(*public.private_flags.lock().unwrap(), [false, false, true]);
}

/// Paying an invoice LND is still paying: pending, never failed; paying a
/// paid one: the earlier payment; waiting on an unknown invoice: at once.
#[tokio::test]
async fn lnd_in_flight_and_unknown_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let secret = hex::encode(MACAROON);
    let (merchant, _, _) = lnd_node(
        Fake::new(network.clone(), &secret),
        dir.path(),
        "merchant",
        MACAROON,
    )
    .await;
    let payer_fake = Fake::new(network, &secret);
    let (payer, _, _) = lnd_node(payer_fake.clone(), dir.path(), "payer", MACAROON).await;
    let created = merchant
        .create_invoice(InvoiceRequest {
            amount_msat: 2_000,
            memo: "in flight".into(),
            expiry_secs: 600,
        })
        .await
        .unwrap();
    payer_fake
        .in_flight
        .lock()
        .unwrap()
        .insert(created.payment_hash);
    match payer
        .pay(&created.bolt11, ROUTING_FEE_MSAT, Duration::from_secs(5))
        .await
    {
        Err(PayError::StillPending(_)) => {}
        other => panic!("an in-flight payment is pending: {other:?}"),
    }
    payer_fake.in_flight.lock().unwrap().clear();
    let paid = payer
        .pay(&created.bolt11, ROUTING_FEE_MSAT, Duration::from_secs(5))
        .await
        .unwrap();
    match payer
        .pay(&created.bolt11, ROUTING_FEE_MSAT, Duration::from_secs(5))
        .await
    {
        Err(PayError::AlreadyPaid(earlier)) => assert_eq!(earlier.preimage, paid.preimage),
        other => panic!("{other:?}"),
    }
    let started = std::time::Instant::now();
    match merchant
        .wait_invoice(&[7; 32], Duration::from_secs(30))
        .await
    {
        Err(LightningError::NotFound(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?} on an invoice the node does not know",
        started.elapsed()
    );
}

#[tokio::test]
async fn cln_keeps_the_backend_contract() {
    let (merchant, payer, _dir, _) = cln_pair().await;
    contract::run_all(&Pair {
        receiver: &merchant,
        payer: &payer,
    })
    .await;
    fee_cap_is_enforced(&merchant, &payer).await;
    assert_eq!(merchant.node_info().await.unwrap().backend, "cln");
}

#[tokio::test]
async fn cln_wrong_rune_is_unauthorized() {
    let (_, _, dir, base) = cln_pair().await;
    let wrong = Cln::new(&ClnConfig {
        url: base,
        rune: Some("not-the-rune".into()),
        rune_path: None,
        tls_cert_path: Some(dir.path().join("merchant-ca.pem")),
    })
    .unwrap();
    match wrong.node_info().await {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("Not authorized"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// clnrest's CA is trusted, and it alone: another CA is refused, naming
/// the certificate problem.
#[tokio::test]
async fn cln_trusts_its_ca_alone() {
    let (merchant, _, dir, base) = cln_pair().await;
    assert_eq!(merchant.node_info().await.unwrap().backend, "cln");
    let other = cln_tls(dir.path(), "other");
    let wrong = Cln::new(&ClnConfig {
        url: base,
        rune: Some(RUNE.into()),
        rune_path: None,
        tls_cert_path: Some(other.cert_file),
    })
    .unwrap();
    match wrong.node_info().await {
        Err(LightningError::Unavailable(message)) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// Core Lightning's own errors, each as the same error LND's would be.
#[tokio::test]
async fn cln_errors_explain_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let merchant_fake = Fake::new(network.clone(), RUNE).with_limited(
        "no-wait-rune",
        &["getinfo", "invoice", "listinvoices", "listpays"],
    );
    let (merchant, merchant_url) = cln_node(merchant_fake, dir.path(), "merchant", RUNE).await;
    let mut poor = Fake::new(network.clone(), RUNE);
    poor.spendable_msat = 5_000;
    let (poor, _) = cln_node(poor, dir.path(), "poor", RUNE).await;
    let mut xpay = Fake::new(network, RUNE);
    xpay.xpay = true;
    let (xpay, _) = cln_node(xpay, dir.path(), "xpay", RUNE).await;
    let invoice = |amount_msat| {
        merchant.create_invoice(InvoiceRequest {
            amount_msat,
            memo: "m".into(),
            expiry_secs: 600,
        })
    };

    let dear = invoice(9_000).await.unwrap();
    match poor
        .pay(&dear.bolt11, ROUTING_FEE_MSAT, Duration::from_secs(5))
        .await
    {
        Err(PayError::InsufficientBalance(_)) => {}
        other => panic!("{other:?}"),
    }
    match xpay
        .pay(&dear.bolt11, ROUTING_FEE_MSAT - 1, Duration::from_secs(5))
        .await
    {
        Err(PayError::NoRoute { .. }) => {}
        other => panic!("{other:?}"),
    }
    // retry_for is a u16 in Core Lightning (the fake checks it).
    let paid = xpay
        .pay(&dear.bolt11, ROUTING_FEE_MSAT, Duration::from_secs(100_000))
        .await
        .unwrap();
    match xpay
        .pay(&dear.bolt11, ROUTING_FEE_MSAT, Duration::from_secs(5))
        .await
    {
        Err(PayError::AlreadyPaid(earlier)) => assert_eq!(earlier.preimage, paid.preimage),
        other => panic!("{other:?}"),
    }

    // A rune without waitinvoice: unauthorized, not "still open".
    let open = invoice(1_000).await.unwrap();
    let limited = Cln::new(&ClnConfig {
        url: merchant_url,
        rune: Some("no-wait-rune".into()),
        rune_path: None,
        tls_cert_path: Some(dir.path().join("merchant-ca.pem")),
    })
    .unwrap();
    match limited
        .wait_invoice(&open.payment_hash, Duration::from_secs(5))
        .await
    {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("waitinvoice"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------ liquidity, invoices ----

/// A `lnrpc.Channel` as `GET /v1/channels` answers it (amounts in sat, as
/// strings).
fn lnd_channel_json(
    peer: &str,
    channel_point: &str,
    chan_id: u64,
    (capacity, local, remote, reserve): (u64, u64, u64, u64),
    active: bool,
    private: bool,
) -> Value {
    let constraints = json!({"csv_delay": 144, "chan_reserve_sat": reserve.to_string(), "dust_limit_sat": "354", "max_pending_amt_msat": (capacity * 990).to_string(), "min_htlc_msat": "1", "max_accepted_htlcs": 483});
    json!({
        "active": active,
        "remote_pubkey": peer,
        "channel_point": channel_point,
        "chan_id": chan_id.to_string(),
        "capacity": capacity.to_string(),
        "local_balance": local.to_string(),
        "remote_balance": remote.to_string(),
        "commit_fee": (capacity - local - remote).to_string(),
        "commit_weight": "1116",
        "fee_per_kw": "2500",
        "unsettled_balance": "0",
        "total_satoshis_sent": "0",
        "total_satoshis_received": "0",
        "num_updates": "4",
        "pending_htlcs": [],
        "csv_delay": 144,
        "private": private,
        "initiator": true,
        "chan_status_flags": "ChanStatusDefault",
        "local_chan_reserve_sat": reserve.to_string(),
        "remote_chan_reserve_sat": reserve.to_string(),
        "static_remote_key": false,
        "commitment_type": "ANCHORS",
        "lifetime": "3600",
        "uptime": "3600",
        "close_address": "",
        "push_amount_sat": "0",
        "thaw_height": 0,
        "local_constraints": constraints,
        "remote_constraints": constraints,
        "alias_scids": [],
        "zero_conf": false,
        "zero_conf_confirmed_scid": "0",
        "peer_alias": "",
        "peer_scid_alias": "0",
        "memo": "",
    })
}

/// An LND node with two open channels and one inactive, an on-chain wallet
/// with locked and unconfirmed funds: every figure is read as LND means it.
#[tokio::test]
async fn lnd_reports_liquidity_and_recent_invoices() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let secret = hex::encode(MACAROON);
    let (peer_a, peer_b) = (
        format!("02{}", "aa".repeat(32)),
        format!("03{}", "bb".repeat(32)),
    );
    let txid: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
    let scid = (103u64 << 40) | (1 << 16) | 1;
    let merchant_fake = Fake::new(network.clone(), &secret)
        .with_limited(
            &hex::encode(b"readonly"),
            &["info:read", "invoices:read", "offchain:read"],
        )
        .with_canned(
            "/v1/balance/blockchain",
            json!({
                "total_balance": "1500000", "confirmed_balance": "1200000",
                "unconfirmed_balance": "300000", "locked_balance": "100000",
                "reserved_balance_anchor_chan": "20000",
                "account_balance": {"default": {"confirmed_balance": "1200000", "unconfirmed_balance": "300000"}},
            }),
        )
        .with_canned(
            "/v1/balance/channels",
            json!({
                "balance": "600000", "pending_open_balance": "0",
                "local_balance": {"sat": "600000", "msat": "600000123"},
                "remote_balance": {"sat": "1360000", "msat": "1360000000"},
                "unsettled_local_balance": {"sat": "0", "msat": "0"},
                "unsettled_remote_balance": {"sat": "0", "msat": "0"},
                "pending_open_local_balance": {"sat": "0", "msat": "0"},
                "pending_open_remote_balance": {"sat": "0", "msat": "0"},
            }),
        )
        .with_canned(
            "/v1/channels",
            json!({"channels": [
                lnd_channel_json(&peer_a, &format!("{txid}:1"), scid, (1_000_000, 400_000, 590_000, 10_000), true, false),
                lnd_channel_json(&peer_b, &format!("{}:0", "cd".repeat(32)), scid + 1, (500_000, 200_000, 295_000, 5_000), true, true),
                lnd_channel_json(&peer_a, &format!("{}:0", "ef".repeat(32)), scid + 2, (490_000, 0, 480_000, 4_900), false, false),
            ]}),
        );
    let (merchant, url, cert) = lnd_node(merchant_fake, dir.path(), "merchant", MACAROON).await;
    let (payer, _, _) = lnd_node(Fake::new(network, &secret), dir.path(), "payer", MACAROON).await;

    let liquidity = merchant.liquidity().await.unwrap();
    let onchain = liquidity.onchain.unwrap();
    assert_eq!(onchain.total_sat, 1_500_000);
    assert_eq!(onchain.confirmed_sat, Some(1_200_000));
    assert_eq!(onchain.unconfirmed_sat, Some(300_000));
    // Confirmed, less what is locked and the anchor reserve.
    assert_eq!(onchain.spendable_sat, Some(1_080_000));
    assert_eq!(liquidity.lightning_balance_msat, Some(600_000_123));
    let channels = liquidity.channels.clone().unwrap();
    assert_eq!(channels.len(), 3);
    let first = &channels[0];
    assert_eq!(first.peer_node_id, peer_a);
    assert_eq!(first.short_channel_id.as_deref(), Some("103x1x1"));
    // BOLT 2: the txid's bytes (reversed from how it is shown) XOR the
    // output index (1) in the last two.
    let expected_id: String = (2u8..32).rev().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        first.channel_id.as_deref(),
        Some(format!("{expected_id}0101").as_str())
    );
    assert_eq!(first.capacity_sat, 1_000_000);
    assert_eq!(
        (first.outbound_msat, first.inbound_msat),
        (390_000_000, 580_000_000)
    );
    assert!(first.usable && first.public);
    assert!(channels[1].usable && !channels[1].public);
    assert_eq!(
        (channels[1].outbound_msat, channels[1].inbound_msat),
        (195_000_000, 290_000_000)
    );
    assert!(!channels[2].usable);
    assert_eq!(channels[2].outbound_msat, 0, "nothing above its reserve");
    // Totals over the active channels only.
    assert_eq!(liquidity.outbound_msat, Some(585_000_000));
    assert_eq!(liquidity.inbound_msat, Some(870_000_000));
    assert!(!liquidity.unlimited);

    // Recent invoices, newest first.
    let ask = |amount_msat, memo: &str| {
        merchant.create_invoice(InvoiceRequest {
            amount_msat,
            memo: memo.into(),
            expiry_secs: 600,
        })
    };
    let first_invoice = ask(5_000, "first").await.unwrap();
    let any = ask(0, "any amount").await.unwrap();
    let last = ask(7_000, "last").await.unwrap();
    payer
        .pay(
            &first_invoice.bolt11,
            ROUTING_FEE_MSAT,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let newest = merchant.recent_invoices(2).await.unwrap();
    let hashes: Vec<_> = newest.iter().map(|i| i.payment_hash).collect();
    assert_eq!(hashes, [last.payment_hash, any.payment_hash]);
    let all = merchant.recent_invoices(10).await.unwrap();
    assert_eq!(all.len(), 3);
    let (open, any_row, paid) = (&all[0], &all[1], &all[2]);
    assert_eq!(
        (open.state, open.amount_msat),
        (InvoiceState::Open, Some(7_000))
    );
    assert_eq!(open.description.as_deref(), Some("last"));
    assert_eq!(open.expires_at, Some(last.expires_at));
    assert_eq!(open.expires_at, open.created_at.map(|at| at + 600));
    assert_eq!((open.received_msat, open.settled_at), (None, None));
    assert_eq!(any_row.amount_msat, None, "an invoice without an amount");
    assert_eq!(paid.payment_hash, first_invoice.payment_hash);
    assert_eq!(paid.state, InvoiceState::Settled);
    assert_eq!(paid.received_msat, Some(5_000));
    assert!(paid.settled_at.is_some());
    assert!(merchant.recent_invoices(0).await.unwrap().is_empty());
    assert!(
        payer.recent_invoices(10).await.unwrap().is_empty(),
        "the payer issued none"
    );

    // A macaroon without onchain:read: the error names the permission.
    let path = dir.path().join("readonly.macaroon");
    std::fs::write(&path, "readonly").unwrap();
    let readonly = Lnd::new(&LndConfig {
        url,
        macaroon_path: Some(path),
        macaroon_dir: None,
        tls_cert_path: Some(cert),
        route_hints: Default::default(),
    })
    .unwrap();
    match readonly.liquidity().await {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("onchain:read"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(readonly.recent_invoices(1).await.unwrap().len(), 1);
}

/// A Core Lightning node's funds and channels (shapes of its own examples):
/// reserved and immature outputs, a channel whose peer is away, one being
/// opened and one closed; and its invoices read back across deleted ones.
#[tokio::test]
async fn cln_reports_liquidity_and_recent_invoices() {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let peer = format!("02{}", "22".repeat(32));
    let output = |amount_msat: u64, status: &str, reserved: bool| json!({"txid": "aa".repeat(32), "output": 1, "amount_msat": amount_msat, "scriptpubkey": "0014".to_owned() + &"11".repeat(20), "address": "bcrt1qzyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3hqqnjr", "status": status, "blockheight": 160, "reserved": reserved});
    let channel = |state: &str,
                   connected: bool,
                   private: bool,
                   scid: Option<&str>,
                   (to_us, spendable, receivable): (u64, u64, u64)| {
        let mut c = json!({
            "peer_id": peer, "peer_connected": connected, "reestablished": connected,
            "state": state, "owner": "channeld", "direction": 1,
            "channel_id": "5a".repeat(32), "funding_txid": "bb".repeat(32), "funding_outnum": 1,
            "private": private, "opener": "local",
            "funding": {"local_funds_msat": 1_000_000_000u64, "remote_funds_msat": 0, "pushed_msat": 0},
            "to_us_msat": to_us, "min_to_us_msat": to_us, "max_to_us_msat": 1_000_000_000u64,
            "total_msat": 1_000_000_000u64, "fee_base_msat": 1, "fee_proportional_millionths": 10,
            "dust_limit_msat": 546_000, "their_reserve_msat": 10_000_000, "our_reserve_msat": 10_000_000,
            "spendable_msat": spendable, "receivable_msat": receivable,
            "minimum_htlc_in_msat": 0, "minimum_htlc_out_msat": 0, "maximum_htlc_out_msat": 990_000_000,
            "their_to_self_delay": 5, "our_to_self_delay": 5, "max_accepted_htlcs": 483,
            "status": [format!("{state}:status")], "htlcs": [],
        });
        if let Some(scid) = scid {
            c["short_channel_id"] = scid.into();
        }
        c
    };
    let fake = Fake::new(network.clone(), RUNE)
        .with_limited("no-wait-rune", &["getinfo", "invoice", "listinvoices"])
        .with_canned(
            "listfunds",
            json!({
                "outputs": [
                    output(26_000_000, "confirmed", false),
                    output(27_000_000, "confirmed", true),
                    output(5_000_000, "unconfirmed", false),
                    output(625_000_000, "immature", false),
                ],
                "channels": [],
            }),
        )
        .with_canned(
            "listpeerchannels",
            json!({"channels": [
                channel("CHANNELD_NORMAL", true, false, Some("109x1x1"), (390_492_790, 363_951_708, 599_507_210)),
                channel("CHANNELD_NORMAL", false, true, Some("110x1x0"), (100_000_000, 80_000_000, 10_000_000)),
                channel("ONCHAIN", false, false, Some("111x1x0"), (50_000_000, 0, 0)),
                channel("CHANNELD_AWAITING_LOCKIN", true, false, None, (200_000_000, 0, 0)),
            ]}),
        );
    let issued = fake.clone();
    let (cln, url) = cln_node(fake, dir.path(), "merchant", RUNE).await;

    let liquidity = cln.liquidity().await.unwrap();
    let onchain = liquidity.onchain.unwrap();
    assert_eq!(
        onchain.total_sat, 683_000,
        "immature coinbase counts in the total"
    );
    assert_eq!(onchain.confirmed_sat, Some(53_000));
    assert_eq!(onchain.unconfirmed_sat, Some(5_000));
    assert_eq!(
        onchain.spendable_sat,
        Some(26_000),
        "a reserved output is not spendable"
    );
    // Not the closed channel's.
    assert_eq!(liquidity.lightning_balance_msat, Some(690_492_790));
    let channels = liquidity.channels.clone().unwrap();
    assert_eq!(channels.len(), 4);
    let normal = &channels[0];
    assert_eq!(normal.peer_node_id, peer);
    assert_eq!(normal.channel_id.as_deref(), Some("5a".repeat(32).as_str()));
    assert_eq!(normal.short_channel_id.as_deref(), Some("109x1x1"));
    assert_eq!(normal.capacity_sat, 1_000_000);
    assert_eq!(
        (normal.outbound_msat, normal.inbound_msat),
        (363_951_708, 599_507_210)
    );
    assert!(normal.usable && normal.public);
    assert!(
        !channels[1].usable && !channels[1].public,
        "its peer is away"
    );
    assert!(!channels[2].usable && !channels[3].usable);
    assert_eq!(channels[3].short_channel_id, None);
    assert_eq!(liquidity.outbound_msat, Some(363_951_708));
    assert_eq!(liquidity.inbound_msat, Some(599_507_210));

    // Five invoices; the third and fourth deleted since.
    let mut made = Vec::new();
    for (amount_msat, memo) in [
        (1_000, "one"),
        (0, "two"),
        (3_000, "three"),
        (4_000, "four"),
        (5_000, "five"),
    ] {
        made.push(
            cln.create_invoice(InvoiceRequest {
                amount_msat,
                memo: memo.into(),
                expiry_secs: 600,
            })
            .await
            .unwrap(),
        );
    }
    network.settle(&made[0].bolt11).unwrap();
    issued
        .deleted
        .lock()
        .unwrap()
        .extend([made[2].payment_hash, made[3].payment_hash]);
    let newest = cln.recent_invoices(2).await.unwrap();
    let hashes: Vec<_> = newest.iter().map(|i| i.payment_hash).collect();
    assert_eq!(hashes, [made[4].payment_hash, made[1].payment_hash]);
    let all = cln.recent_invoices(10).await.unwrap();
    let hashes: Vec<_> = all.iter().map(|i| i.payment_hash).collect();
    assert_eq!(
        hashes,
        [
            made[4].payment_hash,
            made[1].payment_hash,
            made[0].payment_hash
        ]
    );
    let (five, two, one) = (&all[0], &all[1], &all[2]);
    assert_eq!(
        (five.state, five.amount_msat),
        (InvoiceState::Open, Some(5_000))
    );
    assert_eq!(five.description.as_deref(), Some("five"));
    assert_eq!(five.expires_at, Some(made[4].expires_at));
    assert_eq!(five.created_at.map(|at| at + 600), Some(made[4].expires_at));
    assert_eq!(two.amount_msat, None, "an invoice for any amount");
    assert_eq!(one.state, InvoiceState::Settled);
    assert_eq!(one.received_msat, Some(1_000));
    assert!(one.settled_at.is_some());

    // A rune without `wait` cannot list them: said so.
    let limited = Cln::new(&ClnConfig {
        url,
        rune: Some("no-wait-rune".into()),
        rune_path: None,
        tls_cert_path: Some(dir.path().join("merchant-ca.pem")),
    })
    .unwrap();
    match limited.recent_invoices(5).await {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("wait"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match limited.liquidity().await {
        Err(LightningError::Unauthorized(_)) => {}
        other => panic!("{other:?}"),
    }
    // A release without listpeerchannels: unsupported, not an error of the node.
    let (old, _) = cln_node(Fake::new(network, RUNE), dir.path(), "old", RUNE).await;
    match old.liquidity().await {
        Err(LightningError::Unsupported(message)) => {
            assert!(message.contains("Unknown command"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
