//! LND and Core Lightning are not run here: these tests drive the `lnd`
//! and `cln` backends against local HTTP servers that answer as the nodes'
//! documented REST APIs do (paths, auth headers, JSON shapes, error
//! bodies). Behind both fakes, a sandbox issues and settles real regtest
//! invoices, so the backend contract runs unchanged.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use gate402_lightning::contract::{self, Pair};
use gate402_lightning::{
    InvoiceRequest, InvoiceStatus, LightningBackend, LightningError, PayError, PaymentOutcome,
};
use gate402_lightning_remote::cln::{Cln, ClnConfig};
use gate402_lightning_remote::lnd::{Lnd, LndConfig};
use gate402_lightning_sandbox::Sandbox;
use serde_json::{json, Value};

/// What the fake network charges to route a payment.
const ROUTING_FEE_MSAT: u64 = 1_000;

/// The shared state of a fake node: the sandbox that plays the network,
/// and what this node paid.
#[derive(Clone)]
struct Fake {
    network: Sandbox,
    secret: String,
    paid: Arc<Mutex<HashMap<[u8; 32], PaymentOutcome>>>,
    labels: Arc<Mutex<HashMap<String, [u8; 32]>>>,
}

impl Fake {
    fn new(network: Sandbox, secret: &str) -> Self {
        Self {
            network,
            secret: secret.into(),
            paid: Arc::default(),
            labels: Arc::default(),
        }
    }

    /// Pays through the sandbox, charging the fake routing fee.
    fn pay(&self, bolt11: &str, max_fee_msat: u64) -> Result<PaymentOutcome, String> {
        if max_fee_msat < ROUTING_FEE_MSAT {
            return Err("no route".into());
        }
        let hash = gate402_bolt11::Invoice::parse(bolt11)
            .map_err(|e| e.to_string())?
            .payment_hash();
        if self.paid.lock().unwrap().contains_key(&hash) {
            return Err("already paid".into());
        }
        let mut outcome = self.network.settle(bolt11).map_err(|e| e.to_string())?;
        outcome.fee_msat = ROUTING_FEE_MSAT;
        self.paid.lock().unwrap().insert(hash, outcome.clone());
        Ok(outcome)
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router).into_future());
    url
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

/// The error LND answers for a missing or wrong macaroon, if it would.
fn lnd_refusal(fake: &Fake, headers: &HeaderMap) -> Option<Response> {
    match headers
        .get("Grpc-Metadata-macaroon")
        .and_then(|v| v.to_str().ok())
    {
        Some(m) if m == fake.secret => None,
        Some(_) => Some(lnd_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            2,
            "verification failed: signature mismatch after caveat verification",
        )),
        None => Some(lnd_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            2,
            "expected 1 macaroon, got 0",
        )),
    }
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
    Some(json!({
        "r_hash": STANDARD.encode(hash),
        "r_preimage": preimage.map(|p| STANDARD.encode(p)),
        "state": state,
        "amt_paid_msat": paid.to_string(),
        "settled": state == "SETTLED",
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
        if let Some(r) = lnd_refusal(&fake, &headers) {
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
        if let Some(r) = lnd_refusal(&fake, &headers) {
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
        let created = fake
            .network
            .create_invoice(InvoiceRequest {
                amount_msat: value_msat,
                memo: memo.into(),
                expiry_secs: expiry,
            })
            .await
            .unwrap();
        Json(json!({
            "r_hash": STANDARD.encode(created.payment_hash),
            "payment_request": created.bolt11,
            "add_index": "1",
            "payment_addr": STANDARD.encode([0u8; 32]),
        }))
        .into_response()
    }
    async fn lookup(
        State(fake): State<Fake>,
        headers: HeaderMap,
        Path(hash): Path<String>,
    ) -> Response {
        if let Some(r) = lnd_refusal(&fake, &headers) {
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
        if let Some(r) = lnd_refusal(&fake, &headers) {
            return r;
        }
        let Some(hash) = URL_SAFE
            .decode(&hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
        else {
            return lnd_error(StatusCode::BAD_REQUEST, 3, "invalid hash");
        };
        if lnd_invoice_json(&fake, &hash).await.is_none() {
            return lnd_error(StatusCode::NOT_FOUND, 5, "unable to locate invoice");
        }
        let stream = futures_stream(move |tx| async move {
            let mut last = String::new();
            loop {
                let invoice = lnd_invoice_json(&fake, &hash).await.unwrap();
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
        if let Some(r) = lnd_refusal(&fake, &headers) {
            return r;
        }
        let (Some(bolt11), Some(fee_limit)) = (
            body["payment_request"].as_str(),
            body["fee_limit_msat"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok()),
        ) else {
            return lnd_error(
                StatusCode::BAD_REQUEST,
                3,
                "payment_request and fee_limit_msat required",
            );
        };
        assert_eq!(body["no_inflight_updates"], true);
        let line = match fake.pay(bolt11, fee_limit) {
            Ok(outcome) => {
                let hash = gate402_bolt11::Invoice::parse(bolt11)
                    .unwrap()
                    .payment_hash();
                lnd_payment_json(&hash, &outcome)
            }
            Err(e) if e == "no route" => {
                json!({"result": {"status": "FAILED", "failure_reason": "FAILURE_REASON_NO_ROUTE", "value_msat": "0", "fee_msat": "0"}})
            }
            Err(e) if e == "already paid" => {
                json!({"error": {"code": 6, "message": "invoice is already paid", "http_code": 409}})
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
        if let Some(r) = lnd_refusal(&fake, &headers) {
            return r;
        }
        let Some(hash) = URL_SAFE
            .decode(&hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
        else {
            return lnd_error(StatusCode::BAD_REQUEST, 3, "invalid hash");
        };
        let paid = fake.paid.lock().unwrap().get(&hash).cloned();
        match paid {
            Some(outcome) => Response::new(Body::from(format!(
                "{}\n",
                lnd_payment_json(&hash, &outcome)
            ))),
            None => lnd_error(StatusCode::NOT_FOUND, 5, "payment isn't initiated"),
        }
    }
    Router::new()
        .route("/v1/getinfo", get(getinfo))
        .route("/v1/invoices", post(add_invoice))
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
    let mut invoice =
        json!({"label": label, "payment_hash": hex::encode(hash), "status": "unpaid"});
    match status {
        InvoiceStatus::Open => {}
        InvoiceStatus::Canceled => invoice["status"] = "expired".into(),
        InvoiceStatus::Settled {
            amount_msat,
            preimage,
        } => {
            invoice["status"] = "paid".into();
            invoice["amount_received_msat"] = amount_msat.into();
            invoice["payment_preimage"] = preimage.map(hex::encode).into();
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
            _ => {
                return cln_error(
                    StatusCode::UNAUTHORIZED,
                    1501,
                    "Not authorized: Not derived from master",
                )
            }
        }
        match method.as_str() {
            "getinfo" => created(
                json!({"id": hex::encode(fake.network.pubkey()), "alias": "fake-cln", "network": "regtest", "blockheight": 101}),
            ),
            "invoice" => {
                let (Some(amount_msat), Some(label), Some(description), Some(expiry)) = (
                    params["amount_msat"].as_u64(),
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
                created(
                    json!({"payment_hash": hex::encode(invoice.payment_hash), "expires_at": invoice.expires_at, "bolt11": invoice.bolt11, "payment_secret": hex::encode([0u8; 32]), "created_index": 1}),
                )
            }
            "listinvoices" => {
                let hash = params["payment_hash"].as_str().and_then(hash_from_hex);
                let invoices: Vec<Value> = match hash {
                    Some(hash) => cln_invoice_json(&fake, &hash).await.into_iter().collect(),
                    None => vec![],
                };
                created(json!({"invoices": invoices}))
            }
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
                match fake.pay(bolt11, maxfee) {
                    Ok(outcome) => created(json!({
                        "payment_preimage": hex::encode(outcome.preimage),
                        "payment_hash": hex::encode(gate402_bolt11::Invoice::parse(bolt11).unwrap().payment_hash()),
                        "status": "complete",
                        "amount_msat": outcome.amount_msat,
                        "amount_sent_msat": outcome.amount_msat + outcome.fee_msat,
                        "parts": 1,
                    })),
                    Err(e) if e == "no route" => cln_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        206,
                        &format!("Route wanted fee of {ROUTING_FEE_MSAT}msat"),
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

async fn lnd_pair() -> (Lnd, Lnd, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let secret = hex::encode(MACAROON);
    let merchant = serve(lnd_router(Fake::new(network.clone(), &secret))).await;
    let payer = serve(lnd_router(Fake::new(network, &secret))).await;
    let macaroon_dir = dir.path().join("macaroons");
    std::fs::create_dir_all(&macaroon_dir).unwrap();
    std::fs::write(macaroon_dir.join("admin.macaroon"), MACAROON).unwrap();
    let config = |url: String| LndConfig {
        url,
        macaroon_path: None,
        macaroon_dir: Some(macaroon_dir.clone()),
        tls_cert_path: None,
    };
    (
        Lnd::new(&config(merchant.clone())).unwrap(),
        Lnd::new(&config(payer)).unwrap(),
        dir,
        merchant,
    )
}

async fn cln_pair() -> (Cln, Cln, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let network = Sandbox::open(&dir.path().join("network")).unwrap();
    let merchant = serve(cln_router(Fake::new(network.clone(), RUNE))).await;
    let payer = serve(cln_router(Fake::new(network, RUNE))).await;
    std::fs::write(dir.path().join("rune"), format!("{RUNE}\n")).unwrap();
    let merchant_url = merchant.clone();
    let merchant = Cln::new(&ClnConfig {
        url: merchant,
        rune: Some(RUNE.into()),
        rune_path: None,
        tls_cert_path: None,
    })
    .unwrap();
    let payer = Cln::new(&ClnConfig {
        url: payer,
        rune: None,
        rune_path: Some(dir.path().join("rune")),
        tls_cert_path: None,
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
    let (_, _, dir, base) = lnd_pair().await;
    let path = dir.path().join("wrong.macaroon");
    std::fs::write(&path, b"another macaroon").unwrap();
    let wrong = Lnd::new(&LndConfig {
        url: base,
        macaroon_path: Some(path),
        macaroon_dir: None,
        tls_cert_path: None,
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
        tls_cert_path: None
    })
    .is_err());
    assert!(Lnd::new(&LndConfig {
        url: "https://127.0.0.1:8080".into(),
        macaroon_path: Some(dir.path().join("missing")),
        macaroon_dir: None,
        tls_cert_path: None
    })
    .is_err());
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
    let (_, _, _dir, base) = cln_pair().await;
    let wrong = Cln::new(&ClnConfig {
        url: base,
        rune: Some("not-the-rune".into()),
        rune_path: None,
        tls_cert_path: None,
    })
    .unwrap();
    match wrong.node_info().await {
        Err(LightningError::Unauthorized(message)) => {
            assert!(message.contains("Not authorized"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
