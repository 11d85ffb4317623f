//! MPP sessions from the paying side, against our own gateway on the
//! sandbox: the middleware opens one, spends it across requests and
//! payers sharing a ledger, tops it up when it runs out, closes it with
//! its refund recorded; an idle one is closed before it would be used; a
//! wallet that cannot take a refund opens none and pays nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gate402_client::{
    Budget, FetchError, Ledger, Payer, PaymentMiddleware, Policy, Refusal, Wallet, SESSION_SCHEME,
    TOP_UP_SCHEME,
};
use gate402_gateway::config::GatewayConfig;
use gate402_gateway::{demo, Gateway};
use gate402_lightning::{
    CreatedInvoice, InvoiceRequest, InvoiceStatus, LightningBackend, LightningError, NodeInfo,
    PayError, PaymentHash, PaymentOutcome, PaymentStatus,
};

struct Demo {
    gateway: Gateway,
    base: String,
    _dir: tempfile::TempDir,
}

/// The demo gateway, its chat balance adjusted by `chat`.
async fn demo_gateway(chat: impl FnOnce(&mut gate402_gateway::config::ServiceConfig)) -> Demo {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config: GatewayConfig = demo::config(upstream);
    chat(
        config
            .services
            .iter_mut()
            .find(|s| s.priced.name == "chat")
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    Demo {
        gateway,
        base,
        _dir: dir,
    }
}

fn payer(wallet: Wallet, ledger: Arc<Ledger>, max_cost_sats: u64) -> Payer {
    Payer {
        wallet,
        policy: Policy {
            max_cost_sats,
            max_fee_sats: 0,
            network: gate402_lightning_sandbox::NETWORK,
            budget: Budget::default(),
        },
        ledger,
        prefer: None,
        pay: true,
        sessions: true,
    }
}

fn client(payer: Payer) -> (reqwest_middleware::ClientWithMiddleware, PaymentMiddleware) {
    let middleware = PaymentMiddleware::new(payer);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware.clone())
        .build();
    (client, middleware)
}

async fn chat(client: &reqwest_middleware::ClientWithMiddleware, base: &str, prompt: &str) {
    let response = client
        .get(format!("{base}/api/chat?prompt={prompt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body.to_string().contains(prompt), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_is_opened_once_and_spent_across_requests_and_payers() {
    let demo = demo_gateway(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (first, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&first, &demo.base, "one").await;
    chat(&first, &demo.base, "two").await;
    // Another payer on the same ledger (another process, say) spends the
    // same session.
    let (second, _) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&second, &demo.base, "three").await;

    let paid = ledger.payments(0).unwrap();
    assert_eq!(paid.len(), 1, "one deposit for three requests: {paid:?}");
    assert_eq!(paid[0].scheme, SESSION_SCHEME);
    assert_eq!(paid[0].amount_msat, 20_000);
    assert!(paid[0].receipt.is_some(), "the open's receipt is kept");
    let sessions = ledger.sessions(false).unwrap();
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(Some(session.id.as_str()), paid[0].session.as_deref());
    assert_eq!(
        (session.deposit_sats, session.spent_sats, session.unit_sats),
        (20, 3, 1)
    );
    assert_eq!(session.idle_timeout_secs, Some(300));

    let refund = middleware
        .payer()
        .close_session(&reqwest::Client::new(), session)
        .await
        .unwrap();
    assert_eq!(
        (
            refund.refund_msat,
            refund.status.as_str(),
            refund.received_msat
        ),
        (17_000, "succeeded", Some(17_000))
    );
    assert_eq!(ledger.refunds(0).unwrap(), [refund]);
    assert!(ledger.sessions(false).unwrap().is_empty());
    demo.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_open_one_session_and_top_it_up_once() {
    // 3 requests a deposit: 8 at once need one deposit and two top-ups
    // (or a few more top-ups, never a second session).
    let demo = demo_gateway(|chat| chat.priced = chat.priced.clone().balance(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (client, _) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    let asked = (0..8).map(|i| {
        let client = client.clone();
        let base = demo.base.clone();
        async move { chat(&client, &base, &format!("c{i}")).await }
    });
    futures_util::future::join_all(asked).await;
    let paid = ledger.payments(0).unwrap();
    let opened: Vec<_> = paid.iter().filter(|p| p.scheme == SESSION_SCHEME).collect();
    assert_eq!(opened.len(), 1, "one session: {paid:?}");
    assert!(paid.iter().all(|p| p.session == opened[0].session));
    let session = ledger.sessions(true).unwrap();
    assert_eq!(session.len(), 1);
    assert_eq!(session[0].spent_sats, 8);
    assert_eq!(session[0].deposit_sats, 3 * paid.len() as u64);
    assert!(
        session[0].balance_sats() < 3,
        "no top-up was paid before it was needed: {paid:?}"
    );
    demo.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_wallet_tops_a_session_up_and_takes_its_refund() {
    // 3 requests a deposit: the fourth request tops up.
    let demo = demo_gateway(|chat| chat.priced = chat.priced.clone().balance(3)).await;
    let node = demo.gateway.paywall().backend().clone();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (client, middleware) = client(payer(Wallet::Node(node.clone()), ledger.clone(), 100));
    for i in 0..4 {
        chat(&client, &demo.base, &format!("q{i}")).await;
    }
    let paid = ledger.payments(0).unwrap();
    let schemes: Vec<_> = paid
        .iter()
        .map(|p| (p.scheme.as_str(), p.amount_msat))
        .collect();
    assert_eq!(schemes, [(SESSION_SCHEME, 3_000), (TOP_UP_SCHEME, 3_000)]);
    assert_eq!(paid[0].session, paid[1].session);
    let session = ledger.sessions(false).unwrap().remove(0);
    assert_eq!((session.deposit_sats, session.spent_sats), (6, 4));

    let refund = middleware
        .payer()
        .close_session(&reqwest::Client::new(), &session)
        .await
        .unwrap();
    assert_eq!(
        (refund.refund_msat, refund.status.as_str()),
        (2_000, "succeeded")
    );
    // The refund went to the node's own return invoice.
    let mut hash = [0u8; 32];
    hex::decode_to_slice(session.return_hash.unwrap(), &mut hash).unwrap();
    let status = node.invoice_status(&hash).await.unwrap();
    assert!(
        matches!(
            status,
            InvoiceStatus::Settled {
                amount_msat: 2_000,
                ..
            }
        ),
        "{status:?}"
    );
    demo.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_is_closed_and_refunded_before_a_new_one_opens() {
    let demo = demo_gateway(|chat| chat.priced.session_idle_secs = 1).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (client, _) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&client, &demo.base, "before").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    chat(&client, &demo.base, "after").await;
    let refunds = ledger.refunds(0).unwrap();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(
        (refunds[0].reason.as_str(), refunds[0].refund_msat),
        ("idle", 19_000)
    );
    assert_eq!(refunds[0].received_msat, Some(19_000));
    let paid = ledger.payments(0).unwrap();
    assert_eq!(paid.len(), 2, "a new deposit for the new session: {paid:?}");
    let all = ledger.sessions(true).unwrap();
    assert_eq!(all.len(), 2);
    let idle = all.iter().find(|s| s.closed_at.is_some()).unwrap();
    assert_eq!(idle.close_reason.as_deref(), Some("idle"));
    assert_eq!(Some(idle.id.as_str()), paid[0].session.as_deref());
    assert_eq!(ledger.sessions(false).unwrap().len(), 1);
    demo.gateway.shutdown().await.unwrap();
}

/// A session opened by one chat on the demo gateway, and what opened it.
struct OneSession {
    demo: Demo,
    _dir: tempfile::TempDir,
    ledger: Arc<Ledger>,
    client: reqwest_middleware::ClientWithMiddleware,
    middleware: PaymentMiddleware,
    session: gate402_client::StoredSession,
}

async fn one_session() -> OneSession {
    let demo = demo_gateway(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (client, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&client, &demo.base, "one").await;
    let session = ledger.sessions(false).unwrap().remove(0);
    OneSession {
        demo,
        _dir: dir,
        ledger,
        client,
        middleware,
        session,
    }
}

/// A session the server closed (its operator, or idle) before the
/// client's close asked is booked as closed by the server, when the
/// server says, not as the client's close of that moment.
#[tokio::test(flavor = "multi_thread")]
async fn a_close_of_a_session_the_server_closed_books_when_and_why() {
    let OneSession {
        demo,
        _dir,
        ledger,
        middleware,
        session,
        ..
    } = one_session().await;
    let id: [u8; 32] = hex::decode(&session.id).unwrap().try_into().unwrap();
    demo.gateway
        .paywall()
        .close_session(&id)
        .await
        .unwrap()
        .unwrap();
    let closed_then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    middleware
        .payer()
        .close_session(&reqwest::Client::new(), &session)
        .await
        .unwrap();
    let all = ledger.sessions(true).unwrap();
    let closed = all.iter().find(|s| s.id == session.id).unwrap();
    assert_eq!(closed.close_reason.as_deref(), Some("closed by the server"));
    let at = closed.closed_at.unwrap();
    assert!(
        at <= closed_then && at + 5 > closed_then,
        "{at} {closed_then}"
    );
    let refunds = ledger.refunds(0).unwrap();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].refund_msat, 19_000);
    demo.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_closed_elsewhere_is_forgotten_and_a_new_one_opened() {
    let OneSession {
        demo,
        _dir,
        ledger,
        client,
        middleware,
        session,
    } = one_session().await;
    // Closed by someone else holding the preimage: this ledger still
    // takes it as open.
    middleware
        .payer()
        .close_session(&reqwest::Client::new(), &session)
        .await
        .unwrap();
    ledger.keep_session(&session).unwrap();
    chat(&client, &demo.base, "two").await;
    let all = ledger.sessions(true).unwrap();
    assert_eq!(all.len(), 2);
    let old = all.iter().find(|s| s.id == session.id).unwrap();
    assert_eq!(old.close_reason.as_deref(), Some("closed by the server"));
    assert_eq!(ledger.sessions(false).unwrap().len(), 1);
    // The server answers the close it made, refunded once.
    let refunds = ledger.refunds(0).unwrap();
    assert_eq!(refunds.len(), 2);
    assert_eq!(refunds[1].refund_msat, 19_000);
    assert_eq!(ledger.payments(0).unwrap().len(), 2);
    demo.gateway.shutdown().await.unwrap();
}

/// A node that pays, and cannot issue invoices without an amount (as a
/// Nostr Wallet Connect wallet).
struct NoReturnInvoices(Arc<dyn LightningBackend>);

#[async_trait]
impl LightningBackend for NoReturnInvoices {
    async fn create_invoice(
        &self,
        _request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        Err(LightningError::Unsupported(
            "invoices without an amount".into(),
        ))
    }
    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        self.0.invoice_status(hash).await
    }
    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError> {
        self.0.wait_invoice(hash, timeout).await
    }
    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.0.pay(bolt11, max_fee_msat, timeout).await
    }
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.0
            .pay_amount(bolt11, amount_msat, max_fee_msat, timeout)
            .await
    }
    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        self.0.payment_status(hash).await
    }
    async fn node_info(&self) -> Result<NodeInfo, LightningError> {
        self.0.node_info().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wallet_that_cannot_take_a_refund_opens_no_session_and_pays_nothing() {
    let demo = demo_gateway(|_| {}).await;
    let node = Arc::new(NoReturnInvoices(demo.gateway.paywall().backend().clone()));
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (client, _) = client(payer(Wallet::Node(node), ledger.clone(), 100));
    let error = client
        .get(format!("{}/api/chat?prompt=x", demo.base))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("{error:?}");
    };
    let error = error.downcast::<FetchError>().unwrap();
    let FetchError::Refused(refusal @ Refusal::NoReturnInvoice { .. }) = &error else {
        panic!("{error}");
    };
    assert_eq!(refusal.exit_code(), 10);
    assert!(error.to_string().contains("L402 token"), "{error}");
    assert!(ledger.payments(0).unwrap().is_empty());
    assert!(ledger.sessions(true).unwrap().is_empty());
    demo.gateway.shutdown().await.unwrap();
}

/// A server that answers every `bearer` with `insufficient-balance` and a
/// fresh top-up challenge, and takes every `topUp`, would have a request
/// pay top-ups without end: one request pays one top-up at most. (In
/// front of the demo gateway, which issues the invoices and answers the
/// rest.)
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_always_asks_for_a_top_up_gets_one_per_request() {
    use axum::body::Body;
    use axum::http::{header, Response, StatusCode};
    let demo = demo_gateway(|chat| chat.priced = chat.priced.clone().balance(3)).await;
    let gateway = demo.base.clone();
    let hostile = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let gateway = gateway.clone();
        async move {
            let http = reqwest::Client::new();
            let action = session_action(&request);
            let target = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            match action.as_deref() {
                Some("bearer") => {
                    // A fresh challenge of the service, as a top-up's.
                    let fresh = http
                        .get(format!("{gateway}{target}"))
                        .send()
                        .await
                        .unwrap();
                    let mut answer = Response::builder().status(StatusCode::PAYMENT_REQUIRED);
                    for value in fresh.headers().get_all(header::WWW_AUTHENTICATE) {
                        answer = answer.header(header::WWW_AUTHENTICATE, value);
                    }
                    let problem = serde_json::json!({
                        "type": gate402_mpp::problem::ProblemType::LightningInsufficientBalance.uri(),
                        "status": 402,
                        "detail": "the balance ran out; top it up",
                    });
                    answer
                        .header(header::CONTENT_TYPE, "application/problem+json")
                        .body(Body::from(problem.to_string()))
                        .unwrap()
                }
                Some("topUp") => Response::new(Body::from(r#"{"status":"ok"}"#)),
                _ => forward(&gateway, request).await,
            }
        }
    });
    let base = serve(hostile).await;

    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (client, _) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    // Opened (and answered) by the first request; the second spends it.
    chat(&client, &base, "first").await;
    let answer = client
        .get(format!("{base}/api/chat?prompt=second"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 402);
    let paid = ledger.payments(0).unwrap();
    let top_ups = paid.iter().filter(|p| p.scheme == TOP_UP_SCHEME).count();
    assert_eq!(top_ups, 1, "one request, one top-up: {paid:?}");
    demo.gateway.shutdown().await.unwrap();
}

/// The session action (`open`, `bearer`, `topUp`, `close`) of the MPP
/// credential `request` carries, if any.
fn session_action(request: &axum::extract::Request) -> Option<String> {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| gate402_mpp::credential::parse_authorization(v).ok())
        .and_then(|c| c.payload["action"].as_str().map(str::to_owned))
}

/// `request` sent on to `gateway` as it came, and its answer.
async fn forward(
    gateway: &str,
    request: axum::extract::Request,
) -> axum::http::Response<axum::body::Body> {
    use axum::body::Body;
    use axum::http::{header, Response};
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut forwarded = reqwest::Client::new().request(parts.method, format!("{gateway}{target}"));
    for (name, value) in &parts.headers {
        if name != header::HOST {
            forwarded = forwarded.header(name, value);
        }
    }
    let answered = forwarded.body(body).send().await.unwrap();
    let mut answer = Response::builder().status(answered.status());
    for (name, value) in answered.headers() {
        answer = answer.header(name, value);
    }
    answer
        .body(Body::from(answered.bytes().await.unwrap()))
        .unwrap()
}

/// Serves `app` on a port of its own; its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A server that says a refund succeeded which never reached the return
/// invoice, or whose wallet (the sandbox's, its own) says more arrived
/// than was deposited: the ledger books what arrived, at most the
/// deposit, the latter `disputed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_refund_is_booked_as_it_arrived_at_most_the_deposit() {
    use axum::body::Body;
    use axum::http::{header, Response};
    let demo = demo_gateway(|_| {}).await;
    for wallet_says in [None, Some(999_999_999u64)] {
        let gateway = demo.base.clone();
        let hostile = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let gateway = gateway.clone();
            async move {
                let action = session_action(&request);
                let asks_invoice = request
                    .uri()
                    .path()
                    .strip_prefix("/sandbox/invoice/")
                    .map(str::to_owned);
                match (action.as_deref(), wallet_says) {
                    // Said, not paid.
                    (Some("close"), _) => Response::new(Body::from(
                        r#"{"status":"closed","refundSats":4,"refundStatus":"succeeded"}"#,
                    )),
                    (None, Some(amount_msat)) if asks_invoice.is_some() => Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(
                            serde_json::json!({
                                "payment_hash": asks_invoice,
                                "status": "settled",
                                "amount_msat": amount_msat,
                            })
                            .to_string(),
                        ))
                        .unwrap(),
                    _ => forward(&gateway, request).await,
                }
            }
        });
        let base = serve(hostile).await;
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
        let (client, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
        chat(&client, &base, "first").await;
        let session = ledger.sessions(false).unwrap().remove(0);
        let refund = middleware
            .payer()
            .close_session(&reqwest::Client::new(), &session)
            .await
            .unwrap();
        let booked = (refund.received_msat, refund.status.as_str());
        match wallet_says {
            None => assert_eq!(booked, (Some(0), "succeeded"), "nothing arrived"),
            Some(_) => assert_eq!(booked, (Some(20_000), "disputed"), "the deposit at most"),
        }
    }
    demo.gateway.shutdown().await.unwrap();
}

/// A `bearer` answered `429` (a rate limit in front of the paywall) took
/// no debit: the session's record counted it as a request served, and
/// went past its deposit.
#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_answered_429_spends_nothing_from_the_record() {
    use axum::body::Body;
    use axum::http::{Response, StatusCode};
    use std::sync::atomic::{AtomicBool, Ordering};
    let demo = demo_gateway(|_| {}).await;
    let gateway = demo.base.clone();
    let limited = Arc::new(AtomicBool::new(false));
    let limiting = limited.clone();
    let front = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (gateway, limiting) = (gateway.clone(), limiting.clone());
        async move {
            if limiting.load(Ordering::SeqCst)
                && session_action(&request).as_deref() == Some("bearer")
            {
                return Response::builder()
                    .status(StatusCode::TOO_MANY_REQUESTS)
                    .body(Body::from("slow down"))
                    .unwrap();
            }
            forward(&gateway, request).await
        }
    });
    let base = serve(front).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let (client, _) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&client, &base, "first").await;
    let spent = ledger.sessions(false).unwrap()[0].spent_sats;
    limited.store(true, Ordering::SeqCst);
    let answer = client
        .get(format!("{base}/api/chat?prompt=second"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
    assert_eq!(ledger.sessions(false).unwrap()[0].spent_sats, spent);
    demo.gateway.shutdown().await.unwrap();
}

/// What a front of the gateway does with a request.
enum Front {
    /// Sends it on.
    Forward,
    /// Answers it itself.
    Answer(axum::http::StatusCode, &'static str),
    /// Sends it on, then answers it itself: the gateway's answer is lost.
    ForwardThenAnswer(axum::http::StatusCode, &'static str),
}

/// A [`front`] that answers the first session `action` it sees with
/// `status` and `body` itself and forwards everything else; the flag is
/// set until that answer was given.
async fn front_answering_first(
    gateway: &str,
    action: &'static str,
    status: axum::http::StatusCode,
    body: &'static str,
) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let waiting = Arc::new(AtomicBool::new(true));
    let first = waiting.clone();
    let base = front(gateway, move |request| {
        if session_action(request).as_deref() == Some(action) && first.swap(false, Ordering::SeqCst)
        {
            Front::Answer(status, body)
        } else {
            Front::Forward
        }
    })
    .await;
    (base, waiting)
}

/// A front of `gateway` doing with each request what `decide` says; its
/// base URL.
async fn front(
    gateway: &str,
    decide: impl Fn(&axum::extract::Request) -> Front + Clone + Send + Sync + 'static,
) -> String {
    let gateway = gateway.to_owned();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (gateway, decide) = (gateway.clone(), decide.clone());
        async move {
            let (status, body) = match decide(&request) {
                Front::Forward => return forward(&gateway, request).await,
                Front::Answer(status, body) => (status, body),
                Front::ForwardThenAnswer(status, body) => {
                    forward(&gateway, request).await;
                    (status, body)
                }
            };
            axum::http::Response::builder()
                .status(status)
                .header("retry-after", "0.2")
                .body(axum::body::Body::from(body))
                .unwrap()
        }
    });
    serve(app).await
}

/// A deposit whose `open` the server never took (answered `503` by a
/// front) is not written off by a close: the close says the session was
/// never opened and keeps it, and the next call opens it with that
/// deposit. It was booked closed (refund 0, `unknown`) and the next call
/// paid a new deposit.
#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_never_opened_is_kept_by_a_close_and_opened_by_the_next_call() {
    let demo = demo_gateway(|_| {}).await;
    let (base, _) = front_answering_first(
        &demo.base,
        "open",
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "down",
    )
    .await;
    let (_dir, ledger) = fresh_ledger();
    let (client, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    let answer = client
        .get(format!("{base}/api/chat?prompt=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let session = ledger.sessions(false).unwrap().remove(0);
    assert!(!session.opened);
    let closed = middleware
        .payer()
        .close_session(&reqwest::Client::new(), &session)
        .await;
    let error = closed.expect_err("nothing to close").to_string();
    assert!(error.contains("never opened"), "{error}");
    assert_eq!(ledger.sessions(false).unwrap().len(), 1, "kept open");
    assert!(ledger.refunds(0).unwrap().is_empty());
    chat(&client, &base, "b").await;
    assert_eq!(ledger.payments(0).unwrap().len(), 1, "no second deposit");
    let session = ledger.sessions(false).unwrap().remove(0);
    assert!(session.opened);
    demo.gateway.shutdown().await.unwrap();
}

/// A ledger of its own, and the directory that holds it.
fn fresh_ledger() -> (tempfile::TempDir, Arc<Ledger>) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    (dir, ledger)
}

/// A top-up paid whose `topUp` never reached the server, or whose answer
/// never came back (a kill, a proxy's error): the next top-up sends that
/// payment again (credited once by the server, booked once here) instead
/// of paying another while the first stays unspent or unbooked; a close
/// sends it first, so that the refund returns it.
#[tokio::test(flavor = "multi_thread")]
async fn a_paid_top_up_that_went_unanswered_is_sent_again_not_paid_again() {
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: forward everything; 1: a `topUp` is dropped before the gateway;
    // 2: a `topUp` reaches the gateway, its answer is lost.
    for (breaking, then_close) in [(1u8, false), (2, false), (1, true)] {
        let demo = demo_gateway(|chat| chat.priced = chat.priced.clone().balance(3)).await;
        let mode = Arc::new(AtomicU8::new(0));
        let front_mode = mode.clone();
        let base = front(&demo.base, move |request| {
            let top_up = session_action(request).as_deref() == Some("topUp");
            match front_mode.load(Ordering::SeqCst) {
                1 if top_up => Front::Answer(StatusCode::BAD_GATEWAY, "lost"),
                2 if top_up => Front::ForwardThenAnswer(StatusCode::BAD_GATEWAY, "lost"),
                _ => Front::Forward,
            }
        })
        .await;
        let (_dir, ledger) = fresh_ledger();
        let (client, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
        for prompt in ["a", "b", "c"] {
            chat(&client, &base, prompt).await;
        }
        mode.store(breaking, Ordering::SeqCst);
        let lost = client.get(format!("{base}/api/chat?prompt=d")).send().await;
        assert!(
            lost.map_or(true, |r| r.status() != 200),
            "the top-up's answer never came"
        );
        mode.store(0, Ordering::SeqCst);
        if then_close {
            let session = ledger.sessions(false).unwrap().remove(0);
            let refund = middleware
                .payer()
                .close_session(&reqwest::Client::new(), &session)
                .await
                .unwrap();
            assert_eq!(refund.refund_msat, 3_000, "the top-up comes back");
            let paid = ledger.payments(0).unwrap();
            assert!(paid.iter().all(|p| p.receipt.is_some()), "{paid:?}");
            demo.gateway.shutdown().await.unwrap();
            continue;
        }
        for prompt in ["e", "f", "g", "h"] {
            chat(&client, &base, prompt).await;
        }
        let paid = ledger.payments(0).unwrap();
        let top_ups: Vec<_> = paid.iter().filter(|p| p.scheme == TOP_UP_SCHEME).collect();
        let session = ledger.sessions(false).unwrap().remove(0);
        // Seven requests served at 1 sat: the deposit and two top-ups of 3
        // sats each, every one credited once by the server and booked once.
        assert_eq!(
            (top_ups.len(), session.deposit_sats, session.spent_sats),
            (2, 9, 7),
            "mode {breaking}: {paid:?}"
        );
        assert!(top_ups.iter().all(|p| p.receipt.is_some()), "{top_ups:?}");
        demo.gateway.shutdown().await.unwrap();
    }
}

/// An `open` answered with a server error (the gateway could not write
/// the session, say) opened nothing: the next request sends `open` again
/// with the same deposit, rather than `bearer` on a session the server
/// does not know, which would have the deposit written off and another
/// paid.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_answered_with_a_server_error_is_sent_again_not_paid_again() {
    use axum::http::StatusCode;
    let demo = demo_gateway(|_| {}).await;
    let (base, _) = front_answering_first(
        &demo.base,
        "open",
        StatusCode::INTERNAL_SERVER_ERROR,
        "the store is unavailable",
    )
    .await;
    let (_dir, ledger) = fresh_ledger();
    let (client, _) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    let answer = client
        .get(format!("{base}/api/chat?prompt=first"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 500);
    chat(&client, &base, "second").await;
    chat(&client, &base, "third").await;
    let paid = ledger.payments(0).unwrap();
    assert_eq!(paid.len(), 1, "one deposit: {paid:?}");
    let sessions = ledger.sessions(true).unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!((sessions[0].deposit_sats, sessions[0].spent_sats), (20, 2));
    demo.gateway.shutdown().await.unwrap();
}

/// An `open` answered `409` (held by requests in flight) is asked again
/// after its `Retry-After`, as a `bearer` is, and took no unit.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_answered_409_is_asked_again_and_took_no_unit() {
    use axum::http::StatusCode;
    use std::sync::atomic::Ordering;
    let demo = demo_gateway(|_| {}).await;
    let (base, held) =
        front_answering_first(&demo.base, "open", StatusCode::CONFLICT, "held").await;
    let (_dir, ledger) = fresh_ledger();
    let (client, _) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&client, &base, "first").await;
    assert!(!held.load(Ordering::SeqCst), "the 409 was answered");
    let sessions = ledger.sessions(false).unwrap();
    assert_eq!(
        (
            sessions[0].deposit_sats,
            sessions[0].spent_sats,
            sessions[0].opened
        ),
        (20, 1, true)
    );
    assert_eq!(ledger.payments(0).unwrap().len(), 1);
    demo.gateway.shutdown().await.unwrap();
}

/// A refund booked `pending` (or `failed`, or not arrived), or as a
/// server said it in words that are no figure (`unknown`, booked 0) or
/// more than was deposited (`disputed`), is not the last word: closing the
/// session again asks the server again (it answers `close` again) and the
/// wallet what arrived, and the refund's row says what they say now (an
/// `unknown` of 0 and a `disputed` one were final, and a refund that did
/// arrive was never booked).
#[tokio::test(flavor = "multi_thread")]
async fn a_refund_not_final_is_asked_about_again() {
    for (first, booked_first) in [
        (
            r#"{"status":"closed","refundSats":19,"refundStatus":"pending"}"#,
            "pending",
        ),
        (
            r#"{"status":"closed","refundSats":-5,"refundStatus":"succeeded"}"#,
            "unknown",
        ),
        (
            r#"{"status":"closed","refundSats":100000,"refundStatus":"succeeded"}"#,
            "disputed",
        ),
    ] {
        a_refund_booked_so_is_asked_about_again(first, booked_first).await;
    }
}

async fn a_refund_booked_so_is_asked_about_again(first: &'static str, booked_first: &str) {
    use axum::http::StatusCode;
    let demo = demo_gateway(|_| {}).await;
    let (base, _) = front_answering_first(&demo.base, "close", StatusCode::OK, first).await;
    let (_dir, ledger) = fresh_ledger();
    let (client, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&client, &base, "first").await;
    let session = ledger.sessions(false).unwrap().remove(0);
    let http = reqwest::Client::new();
    let refund = middleware
        .payer()
        .close_session(&http, &session)
        .await
        .unwrap();
    assert_eq!(refund.status, booked_first);
    let closed = ledger.sessions(true).unwrap().remove(0);
    assert!(closed.closed_at.is_some());
    let again = middleware
        .payer()
        .close_session(&http, &closed)
        .await
        .unwrap();
    assert_eq!(
        (again.status.as_str(), again.received_msat),
        ("succeeded", Some(19_000))
    );
    let booked = ledger.refunds(0).unwrap();
    assert_eq!(booked.len(), 1, "{booked:?}");
    assert_eq!(
        (
            booked[0].status.as_str(),
            booked[0].received_msat,
            booked[0].refund_msat
        ),
        ("succeeded", Some(19_000), 19_000)
    );
    // Final now: asked again, it stays as it is.
    assert!(gate402_client::refund_is_final(
        19_000,
        "succeeded",
        Some(19_000)
    ));
    demo.gateway.shutdown().await.unwrap();
}

/// A `close` answered with a status other than `closed` (`open`) closes
/// nothing at the client: the session stays open and nothing is booked
/// refunded (it was taken as closed and its refund as succeeded); the next
/// close gets the server's real answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_close_answered_as_still_open_closes_nothing() {
    let demo = demo_gateway(|_| {}).await;
    let (base, _) = front_answering_first(
        &demo.base,
        "close",
        axum::http::StatusCode::OK,
        r#"{"status":"open","refundSats":2,"refundStatus":"succeeded"}"#,
    )
    .await;
    let (_dir, ledger) = fresh_ledger();
    let (client, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    chat(&client, &base, "first").await;
    let session = ledger.sessions(false).unwrap().remove(0);
    let http = reqwest::Client::new();
    let said = middleware.payer().close_session(&http, &session).await;
    let error = said.expect_err("not closed").to_string();
    assert!(error.contains("not \"closed\""), "{error}");
    assert_eq!(ledger.sessions(false).unwrap().len(), 1, "still open");
    assert!(ledger.refunds(0).unwrap().is_empty());
    let refund = middleware
        .payer()
        .close_session(&http, &session)
        .await
        .unwrap();
    assert_eq!(
        (refund.refund_msat, refund.status.as_str()),
        (19_000, "succeeded")
    );
    demo.gateway.shutdown().await.unwrap();
}

/// A top-up paid for a session that closed before it was credited (its
/// `topUp` never got through, and the session was closed meanwhile) is
/// unspent: the next call opens a session with it instead of paying a
/// deposit again.
#[tokio::test(flavor = "multi_thread")]
async fn a_top_up_whose_session_closed_first_opens_the_next_session() {
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicBool, Ordering};
    let demo = demo_gateway(|chat| chat.priced = chat.priced.clone().balance(3)).await;
    let failing = Arc::new(AtomicBool::new(false));
    let fails = failing.clone();
    let base = front(&demo.base, move |request| {
        if fails.load(Ordering::SeqCst) && session_action(request).as_deref() == Some("topUp") {
            Front::Answer(StatusCode::BAD_GATEWAY, "lost")
        } else {
            Front::Forward
        }
    })
    .await;
    let (_dir, ledger) = fresh_ledger();
    let (client, middleware) = client(payer(Wallet::sandbox(), ledger.clone(), 100));
    for prompt in ["a", "b", "c"] {
        chat(&client, &base, prompt).await;
    }
    failing.store(true, Ordering::SeqCst);
    let lost = client.get(format!("{base}/api/chat?prompt=d")).send().await;
    assert!(lost.map_or(true, |r| r.status() != 200));
    // Closed while its top-up cannot get through.
    let session = ledger.sessions(false).unwrap().remove(0);
    middleware
        .payer()
        .close_session(&reqwest::Client::new(), &session)
        .await
        .unwrap();
    failing.store(false, Ordering::SeqCst);
    let answer = client
        .get(format!("{base}/api/chat?prompt=e"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let paid = ledger.payments(0).unwrap();
    assert_eq!(
        paid.len(),
        2,
        "the deposit and the top-up, no more: {paid:?}"
    );
    let open = ledger.sessions(false).unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].id, paid[1].payment_hash, "opened by the top-up");
    assert_eq!((open[0].deposit_sats, open[0].spent_sats), (3, 1));
    // Paid by an earlier run, said so (it was this answer's payment, and
    // the ledger kept it under the closed session).
    assert_eq!(
        answer.extensions().get::<gate402_client::EarlierPayment>(),
        Some(&gate402_client::EarlierPayment {
            payment_hash: paid[1].payment_hash.clone(),
            via: "session",
        })
    );
    assert_eq!(paid[1].session.as_deref(), Some(open[0].id.as_str()));
    demo.gateway.shutdown().await.unwrap();
}
