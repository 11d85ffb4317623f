//! Prepaid balances through both doors, on the sandbox: the MPP session
//! intent (draft-lightning-session-00: open, bearer, topUp, close with a
//! real refund payment) and L402 tokens that name a balance; one deposit is
//! one balance whichever door spends it, every request spends its price,
//! a failed upstream spends nothing, and idle sessions are refunded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::any;
use gate402_client::Offer;
use gate402_gateway::config::ServiceConfig;
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_lightning::{InvoiceRequest, InvoiceStatus};
use gate402_lightning_sandbox::http::{pay_amount_via, pay_via};
use gate402_mpp::{PaymentChallenge, PaymentCredential};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Harness {
    gateway: Gateway,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Runs of the upstream's `/broken`, which always fails after acting.
static BROKEN_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Requests the upstream's `/counted` answered.
static COUNTED_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Requests the upstream's `/kept` answered.
static KEPT_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Requests the upstream's `/complete/slow` and `/complete/slow-header`
/// received (each answered 1.5 s later).
static SLOW_USAGE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The `Accept-Encoding` the upstream's `/stream/gzip` was sent.
static STREAM_ENCODINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

const THE_ANSWER: &str = "{\"token\":\"the whole answer\"}";
const USAGE_0: &str = "{\"usage\":{\"total_tokens\":0}}";
const USAGE_3: &str = "{\"usage\":{\"total_tokens\":3}}";

/// An event stream of `events`, those from `late` on sent after a pause
/// of 3 s.
fn events_late_from(events: &'static [&'static str], late: usize) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let events =
        futures_util::stream::iter(events.iter().enumerate()).then(move |(i, data)| async move {
            if i == late {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Ok::<_, std::convert::Infallible>(axum::response::sse::Event::default().data(*data))
        });
    axum::response::sse::Sse::new(events).into_response()
}

/// Seven events (the last `[DONE]`), as an event stream's body.
fn seven_events() -> String {
    (1..=7)
        .map(|i| match i {
            7 => "data: [DONE]\n\n".to_owned(),
            i => format!("data: tok-{i}\n\n"),
        })
        .collect()
}

/// An event stream, gzipped when `gzip`, as compression middleware sends
/// it.
fn event_stream(gzip: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    let events = seven_events();
    if !gzip {
        return ([("content-type", "text/event-stream")], events).into_response();
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, events.as_bytes()).unwrap();
    (
        [
            ("content-type", "text/event-stream"),
            ("content-encoding", "gzip"),
        ],
        encoder.finish().unwrap(),
    )
        .into_response()
}

/// An upstream with `/chat` (answers), `/flaky` (fails its first two
/// calls), `/broken` (always fails).
/// An event stream that sends `parts` apart (so that each is sent before
/// the break) and is then broken off by its upstream.
fn broken_stream(parts: Vec<&'static str>) -> impl axum::response::IntoResponse {
    use futures_util::StreamExt;
    let parts = parts
        .into_iter()
        .map(Ok)
        .chain(std::iter::once(Err(std::io::Error::other("broke off"))));
    let parts = futures_util::stream::iter(parts).then(|part| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        part
    });
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(parts),
    )
}

async fn upstream(failures: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new()
        .route(
            "/stream/gzip",
            any(|headers: axum::http::HeaderMap| async move {
                // Read as a CGI-style server reads fields: `_` for `-`,
                // the values of both spellings joined.
                let asked = ["accept-encoding", "accept_encoding"]
                    .iter()
                    .flat_map(|name| headers.get_all(*name))
                    .map(|v| v.to_str().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(", ");
                let gzip = asked.contains("gzip");
                STREAM_ENCODINGS.lock().unwrap().push(asked);
                event_stream(gzip)
            }),
        )
        .route("/stream/gzip-always", any(|| async { event_stream(true) }))
        // Its head, then broken off before any event.
        .route(
            "/stream/cut-early",
            any(|| async { broken_stream(vec![": hello\n\n"]) }),
        )
        // Three events and half of a fourth, then broken off.
        .route(
            "/stream/cut",
            any(|| async {
                broken_stream(vec![
                    "data: tok-1\n\ndata: tok-2\n\n",
                    "data: tok-3\n\ndata: tok-",
                ])
            }),
        )
        .route(
            "/failing/stream",
            any(|| async {
                use axum::response::IntoResponse;
                let mut failed = event_stream(false);
                *failed.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                failed.into_response()
            }),
        )
        // A running count first (0), the answer, then after a pause its
        // final usage.
        .route(
            "/complete/running-usage",
            any(|| async { events_late_from(&[USAGE_0, THE_ANSWER, USAGE_3, "[DONE]"], 2) }),
        )
        // The answer first; its usage only after a pause.
        .route(
            "/complete/late-usage",
            any(|| async { events_late_from(&[THE_ANSWER, USAGE_3, "[DONE]"], 1) }),
        )
        // Its whole answer, usage in a header and in the body, after a
        // pause.
        .route("/complete/slow", any(slow_usage))
        // A whole answer with nothing in it: `Content-Length: 0`.
        .route("/complete/empty", any(|| async {}))
        .route("/complete/slow-header", any(slow_usage))
        .route("/chat", any(|| async { "an answer" }))
        .route("/slow/quick", any(|| async { "an answer" }))
        .route(
            "/slow/failing",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down")
            }),
        )
        .route(
            "/counted",
            any(|| async {
                COUNTED_RUNS.fetch_add(1, Ordering::SeqCst);
                "an answer"
            }),
        )
        .route(
            "/kept",
            any(|| async {
                KEPT_RUNS.fetch_add(1, Ordering::SeqCst);
                "an answer"
            }),
        )
        .route(
            "/complete",
            any(|| async {
                (
                    [("x-usage-tokens", "7")],
                    axum::Json(json!({"answer": "hi", "usage": {"total_tokens": 7}})),
                )
            }),
        )
        // As a static file server answers: a range in part (206), a
        // match of its tag with no body (304).
        .route(
            "/complete/ranged",
            any(
                |headers: axum::http::HeaderMap, uri: axum::http::Uri| async move {
                    use axum::response::IntoResponse;
                    // `?part`: a part whatever was asked.
                    let forced = (uri.query() == Some("part"))
                        .then(|| axum::http::HeaderValue::from_static("bytes=1-"));
                    let body = json!({"answer": "hi", "usage": {"total_tokens": 7}}).to_string();
                    if headers.contains_key("if-none-match") {
                        return axum::http::StatusCode::NOT_MODIFIED.into_response();
                    }
                    // Apache httpd honours the old `Request-Range` as
                    // `Range`; a CGI-style server reads `_` for `-`.
                    let from = headers
                        .get("range")
                        .or_else(|| headers.get("request-range"))
                        .or_else(|| headers.get("request_range"))
                        .or(forced.as_ref())
                        .and_then(|r| r.to_str().ok())
                        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
                    match from {
                        Some(n) if n < body.len() => (
                            axum::http::StatusCode::PARTIAL_CONTENT,
                            [(
                                "content-range",
                                format!("bytes {n}-{}/{}", body.len() - 1, body.len()),
                            )],
                            body[n..].to_owned(),
                        )
                            .into_response(),
                        _ => ([("content-type", "application/json")], body).into_response(),
                    }
                },
            ),
        )
        .route(
            "/complete/stream",
            any(|| async {
                let events = [
                    "{\"token\":\"a\"}",
                    "{\"token\":\"b\"}",
                    "{\"usage\":{\"total_tokens\":4}}",
                    "[DONE]",
                ]
                .map(|data| {
                    Ok::<_, std::convert::Infallible>(
                        axum::response::sse::Event::default().data(data),
                    )
                });
                axum::response::sse::Sse::new(futures_util::stream::iter(events))
            }),
        )
        .route(
            "/stream",
            any(|| async {
                use futures_util::StreamExt;
                let tokens = futures_util::stream::iter(1..=7).then(|i| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let data = if i == 7 {
                        "[DONE]".to_owned()
                    } else {
                        format!("tok-{i}")
                    };
                    Ok::<_, std::convert::Infallible>(
                        axum::response::sse::Event::default().data(data),
                    )
                });
                axum::response::sse::Sse::new(tokens)
            }),
        )
        // Fails, saying what it used before it did.
        .route(
            "/complete/failing",
            any(|| async {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    [("x-usage-tokens", "3")],
                    "used 3 units, then failed",
                )
            }),
        )
        // Fails, saying it used nothing.
        .route(
            "/complete/failing-free",
            any(|| async {
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    [("x-usage-tokens", "0")],
                    "used nothing, then failed",
                )
            }),
        )
        .route(
            "/broken",
            any(|| async {
                BROKEN_RUNS.fetch_add(1, Ordering::SeqCst);
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "acted, then failed",
                )
            }),
        )
        .route(
            "/flaky",
            any(move || {
                let failures = failures.clone();
                async move {
                    if failures.fetch_add(1, Ordering::SeqCst) < 2 {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down")
                    } else {
                        (axum::http::StatusCode::OK, "up")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn balance(name: &str, path: &str, price: u64, units: u64, upstream: &str) -> ServiceConfig {
    let mut service = ServiceConfig::proxied(name, path, price, upstream);
    service.priced = service.priced.balance(units);
    service
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut Vec<ServiceConfig>)) -> Self {
        Self::start_with(adjust, |_| {}).await
    }

    /// [`Harness::start`], the gateway's config adjusted too.
    async fn start_with(
        adjust: impl FnOnce(&mut Vec<ServiceConfig>),
        adjust_config: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
        let mut services = vec![
            balance("chat", "/chat", 2, 5, &upstream),
            balance("flaky", "/flaky", 2, 2, &upstream),
            {
                let mut stream = balance("stream", "/stream", 1, 3, &upstream);
                stream.priced.meter = gate402_gateway::config::Meter::Events;
                stream.priced.topup_wait_secs = 3;
                stream
            },
        ];
        adjust(&mut services);
        let mut config = GatewayConfig::default_with_services(services);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.mpp.realm = "api.test".into();
        adjust_config(&mut config);
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::start(&config, dir.path()).await.unwrap();
        Self {
            gateway,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    /// A 402 for `path`: its session challenge and its decoded request.
    async fn challenge(&self, path: &str) -> (PaymentChallenge, Value, reqwest::header::HeaderMap) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let headers = response.headers().clone();
        let session = session_challenge(&headers).expect("a session challenge");
        let request = gate402_mpp::challenge::decode_request(&session).unwrap();
        (session, request, headers)
    }

    /// A 402 for `path` paid through its L402 challenge.
    async fn buy(&self, path: &str) -> Bought {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let offer = Offer::from_headers(response.headers()).unwrap();
        let session = session_challenge(response.headers());
        let paid = pay_via(
            &self.http,
            &format!("http://{}", self.gateway.addr()),
            &offer.bolt11,
        )
        .await
        .unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        let l402 = offer.l402_authorization(&preimage).unwrap();
        Bought {
            offer,
            paid,
            l402,
            session,
        }
    }

    /// Pays a challenge's deposit invoice; its preimage, hex.
    async fn pay(&self, request: &Value) -> String {
        let invoice = request["depositInvoice"].as_str().unwrap();
        pay_via(
            &self.http,
            &format!("http://{}", self.gateway.addr()),
            invoice,
        )
        .await
        .unwrap()
        .preimage
    }

    /// `GET path` with the L402 credential `l402`.
    async fn get_paid(&self, path: &str, l402: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header(AUTHORIZATION, l402)
            .send()
            .await
            .unwrap()
    }

    /// `GET /admin/api{path}`, as text.
    async fn admin_text(&self, path: &str) -> String {
        let admin = format!("http://{}/admin/api", self.gateway.admin_addr().unwrap());
        let secret = std::fs::read_to_string(self._dir.path().join("admin_secret")).unwrap();
        self.http
            .get(format!("{admin}{path}"))
            .bearer_auth(secret.trim())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET /admin/api{path}`, as JSON.
    async fn admin(&self, path: &str) -> Value {
        serde_json::from_str(&self.admin_text(path).await).unwrap()
    }

    /// What is left of the balance `session` (hex) once it reads `settled`,
    /// or after 3 s, as the admin API shows it (msat).
    async fn balance_once(&self, session: &str, settled: u64) -> u64 {
        let mut left = 0;
        for _ in 0..60 {
            let shown = self.admin(&format!("/sessions/{session}")).await;
            left = shown["balance_msat"].as_u64().unwrap_or(u64::MAX);
            if left == settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        left
    }

    /// Asserts that the return invoice `hash` was paid exactly `msat`: a
    /// real refund of the unspent balance.
    async fn assert_refunded(&self, hash: &[u8; 32], msat: u64) {
        let status = self
            .gateway
            .paywall()
            .backend()
            .invoice_status(hash)
            .await
            .unwrap();
        assert!(
            matches!(status, InvoiceStatus::Settled { amount_msat, .. } if amount_msat == msat),
            "{status:?}"
        );
    }

    /// An amountless invoice of the gateway's own node (its sandbox), as a
    /// client's return invoice.
    async fn return_invoice(&self) -> (String, [u8; 32]) {
        self.return_invoice_expiring(3600).await
    }

    /// [`Harness::return_invoice`], expiring after `expiry_secs`.
    async fn return_invoice_expiring(&self, expiry_secs: u32) -> (String, [u8; 32]) {
        let created = self
            .gateway
            .paywall()
            .backend()
            .create_invoice(InvoiceRequest {
                amount_msat: 0,
                memo: "refund".into(),
                expiry_secs,
            })
            .await
            .unwrap();
        (created.bolt11, created.payment_hash)
    }

    /// A session opened on `path` with a fresh return invoice (answered
    /// 200): its challenge, its id (hex), its preimage, and the return
    /// invoice with its payment hash.
    async fn open_session(&self, path: &str) -> OpenSession {
        let (challenge, request, _) = self.challenge(path).await;
        let preimage = self.pay(&request).await;
        let session = request["paymentHash"].as_str().unwrap().to_owned();
        let (refund_to, refund_hash) = self.return_invoice().await;
        let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
        assert_eq!(
            self.send(path, &challenge, open).await.status(),
            StatusCode::OK
        );
        OpenSession {
            challenge,
            session,
            preimage,
            refund_to,
            refund_hash,
        }
    }

    /// The statuses of `n` GETs of `path` with `authorization`, in turn.
    async fn statuses(&self, path: &str, authorization: &str, n: usize) -> Vec<u16> {
        let mut statuses = Vec::new();
        for _ in 0..n {
            let response = self
                .http
                .get(self.url(path))
                .header(AUTHORIZATION, authorization)
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        statuses
    }

    async fn send(
        &self,
        path: &str,
        challenge: &PaymentChallenge,
        payload: Value,
    ) -> reqwest::Response {
        let credential = PaymentCredential::new(challenge.to_echo(), payload);
        self.http
            .get(self.url(path))
            .header(
                AUTHORIZATION,
                gate402_mpp::credential::to_authorization(&credential),
            )
            .send()
            .await
            .unwrap()
    }
}

/// What [`Harness::open_session`] opened.
struct OpenSession {
    challenge: PaymentChallenge,
    session: String,
    preimage: String,
    refund_to: String,
    refund_hash: [u8; 32],
}

/// A paid 402: its offer, the payment, the L402 credential, and the
/// session challenge of the same invoice.
struct Bought {
    offer: Offer,
    paid: gate402_lightning_sandbox::http::PayResponse,
    l402: String,
    session: Option<PaymentChallenge>,
}

/// The session challenge among a 402's `WWW-Authenticate` fields.
fn session_challenge(headers: &reqwest::header::HeaderMap) -> Option<PaymentChallenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| gate402_mpp::challenge::parse_payment_challenges(v).unwrap_or_default())
        .find(|c| c.intent.as_str() == "session")
}

async fn problem(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(
        response.headers().contains_key(WWW_AUTHENTICATE),
        "a fresh challenge comes with it"
    );
    let body: Value = response.json().await.unwrap();
    body["type"].as_str().unwrap_or_default().to_owned()
}

fn lightning(problem: &str) -> String {
    format!("https://paymentauth.org/problems/lightning/{problem}")
}

#[tokio::test]
async fn a_session_is_opened_spent_topped_up_and_refunded_exactly() {
    let h = Harness::start(|_| {}).await;
    let (challenge, request, _) = h.challenge("/chat").await;
    assert_eq!(request["amount"], "2");
    assert_eq!(request["depositAmount"], "10");
    let unpaid: Value = h
        .http
        .get(h.url("/chat"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unpaid["sells"], "balance");
    assert_eq!(unpaid["depositSats"], 10);

    let preimage = h.pay(&request).await;
    let session = request["paymentHash"].as_str().unwrap().to_owned();
    let (refund_to, refund_hash) = h.return_invoice().await;

    // An invoice with an amount is no return invoice.
    let (amounted, _, _) = h.challenge("/chat").await;
    let bad = h
        .send(
            "/chat",
            &challenge,
            json!({"action": "open", "preimage": preimage,
                   "returnInvoice": gate402_mpp::challenge::decode_request(&amounted).unwrap()["depositInvoice"]}),
        )
        .await;
    assert_eq!(problem(bad).await, lightning("invalid-return-invoice"));
    // Nor is an expired one: no refund could be paid to it.
    let (expired, _) = h.return_invoice_expiring(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = h
        .send(
            "/chat",
            &challenge,
            json!({"action": "open", "preimage": preimage, "returnInvoice": expired}),
        )
        .await;
    assert_eq!(problem(late).await, lightning("invalid-return-invoice"));

    // Open: the deposit of 10 sat, 5 requests at 2 sat; the open is one.
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    let opened = h.send("/chat", &challenge, open.clone()).await;
    assert_eq!(opened.status(), StatusCode::OK);
    let receipt =
        gate402_mpp::receipt::parse(opened.headers()["payment-receipt"].to_str().unwrap()).unwrap();
    assert_eq!(receipt.reference, session);
    assert_eq!(opened.text().await.unwrap(), "an answer");
    // The same open again (a retry) credits nothing more: it spends.
    assert_eq!(
        h.send("/chat", &challenge, open).await.status(),
        StatusCode::OK
    );
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    for _ in 0..3 {
        assert_eq!(
            h.send("/chat", &challenge, bearer.clone()).await.status(),
            StatusCode::OK
        );
    }
    let out = h.send("/chat", &challenge, bearer.clone()).await;
    assert_eq!(problem(out).await, lightning("insufficient-balance"));

    // Someone else's preimage proves nothing.
    let forged = json!({"action": "bearer", "sessionId": session, "preimage": "00".repeat(32)});
    assert_eq!(
        problem(h.send("/chat", &challenge, forged).await).await,
        lightning("invalid-preimage")
    );

    // Top up with a fresh challenge's invoice: credited once, however often
    // it is sent.
    let (fresh, fresh_request, _) = h.challenge("/chat").await;
    let top_up_preimage = h.pay(&fresh_request).await;
    let top_up = json!({"action": "topUp", "sessionId": session, "topUpPreimage": top_up_preimage});
    for _ in 0..2 {
        let topped = h.send("/chat", &fresh, top_up.clone()).await;
        assert_eq!(topped.status(), StatusCode::OK);
        assert!(topped.headers().contains_key("payment-receipt"));
        assert_eq!(
            topped.json::<Value>().await.unwrap(),
            json!({"status": "ok"})
        );
    }
    // The session's own deposit tops up nothing, and says so (it answered
    // `ok`).
    let own_deposit = json!({"action": "topUp", "sessionId": session, "topUpPreimage": preimage});
    let refused = h.send("/chat", &challenge, own_deposit).await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    let said = refused.text().await.unwrap();
    assert!(said.contains("the session's own deposit"), "{said}");
    // The top-up's payment cannot open a session of its own.
    let (other_refund, _) = h.return_invoice().await;
    let stolen =
        json!({"action": "open", "preimage": top_up_preimage, "returnInvoice": other_refund});
    let refused = h.send("/chat", &fresh, stolen).await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);

    // Two more requests: 4 of the 10 topped up are spent.
    for _ in 0..2 {
        assert_eq!(
            h.send("/chat", &challenge, bearer.clone()).await.status(),
            StatusCode::OK
        );
    }
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    for again in [false, true] {
        let closed = h.send("/chat", &challenge, close.clone()).await;
        assert_eq!(closed.status(), StatusCode::OK);
        let receipt = gate402_mpp::receipt::decode_json(
            closed.headers()["payment-receipt"].to_str().unwrap(),
        )
        .unwrap();
        assert_eq!(receipt["refundSats"], 6);
        assert_eq!(receipt["refundStatus"], "succeeded");
        let mut closed = closed.json::<Value>().await.unwrap();
        // Asked again: when it was closed, too.
        assert_eq!(closed["closedAt"].take().is_string(), again, "{closed}");
        assert_eq!(
            closed,
            json!({"status": "closed", "refundSats": 6, "refundStatus": "succeeded", "closedAt": null})
        );
    }
    // The refund was a real payment to the return invoice, of exactly the
    // unspent balance.
    h.assert_refunded(&refund_hash, 6_000).await;
    assert_eq!(
        problem(h.send("/chat", &challenge, bearer).await).await,
        lightning("session-closed")
    );
    // The top-up sent again: closed too, though it was credited before.
    let again = problem(h.send("/chat", &fresh, top_up).await).await;
    assert_eq!(again, lightning("session-closed"));
    // The admin report counts both deposits as revenue and the refund
    // against it (deposits are written in batches: wait for both).
    let mut total = Value::Null;
    for _ in 0..60 {
        total = h.admin("/revenue").await["total"].clone();
        if total["payments"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (
            &total["revenue_sats"],
            &total["refunded_sats"],
            &total["net_sats"]
        ),
        (&json!(20), &json!(6), &json!(14)),
        "{total}"
    );
    let metrics = h.admin_text("/metrics").await;
    assert!(
        metrics.contains("gate402_refunded_sats_total{service=\"chat\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_l402_balance_token_and_the_mpp_session_spend_one_balance() {
    let h = Harness::start(|_| {}).await;
    let Bought {
        offer, paid, l402, ..
    } = h.buy("/chat").await;
    assert_eq!(offer.invoice.amount_msat(), Some(10_000), "the deposit");
    let get = |authorization: String| {
        h.http
            .get(h.url("/chat"))
            .header(AUTHORIZATION, authorization)
            .send()
    };
    for _ in 0..2 {
        let served = get(l402.clone()).await.unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        let receipt =
            gate402_mpp::receipt::parse(served.headers()["payment-receipt"].to_str().unwrap())
                .unwrap();
        assert_eq!(receipt.reference, hex::encode(offer.invoice.payment_hash()));
    }
    // The same deposit through the MPP door: the same balance, 3 left.
    let (challenge, _, _) = h.challenge("/chat").await;
    let bearer = json!({"action": "bearer", "sessionId": hex::encode(offer.invoice.payment_hash()),
                        "preimage": paid.preimage});
    for _ in 0..3 {
        assert_eq!(
            h.send("/chat", &challenge, bearer.clone()).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        problem(get(l402.clone()).await.unwrap()).await,
        lightning("insufficient-balance")
    );
    assert_eq!(
        problem(h.send("/chat", &challenge, bearer).await).await,
        lightning("insufficient-balance")
    );
    // A holder cannot raise the balance its token names.
    let raised = {
        let mut credential = gate402_l402::L402Credential::from_authorization(&l402).unwrap();
        credential.macaroons[0].add_first_party_caveat(b"chat_balance=1000000".to_vec());
        credential.to_authorization()
    };
    assert_eq!(
        problem(get(raised).await.unwrap()).await,
        lightning("insufficient-balance")
    );
}

#[tokio::test]
async fn a_failed_upstream_spends_nothing_from_a_balance() {
    let h = Harness::start(|_| {}).await;
    let Bought { l402, .. } = h.buy("/flaky").await;
    // Two failures given back, then the deposit's two requests, then none.
    assert_eq!(
        h.statuses("/flaky", &l402, 5).await,
        [500, 500, 200, 200, 402]
    );
}

/// A request that makes the upstream fail after acting on it cannot buy
/// any number of runs with one deposit: failures are given back while
/// they stay within twice what the balance spent, failed requests' own
/// debits counted, so a deposit for two requests buys six failed runs.
#[tokio::test]
async fn a_balance_buys_a_bounded_number_of_failed_runs() {
    let h = Harness::start(|services| {
        let upstream = services[0].upstream.as_ref().unwrap().url.clone();
        services.push(balance("broken", "/broken", 2, 2, &upstream));
    })
    .await;
    let Bought { l402, .. } = h.buy("/broken").await;
    assert_eq!(
        h.statuses("/broken", &l402, 9).await,
        [500, 500, 500, 500, 500, 500, 402, 402, 402]
    );
    assert_eq!(BROKEN_RUNS.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn an_idle_session_is_closed_and_refunded() {
    let h = Harness::start(|services| services[0].priced.session_idle_secs = 1).await;
    let OpenSession {
        challenge,
        session,
        preimage,
        refund_hash,
        ..
    } = h.open_session("/chat").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    h.gateway.paywall().close_idle_sessions().await;
    h.assert_refunded(&refund_hash, 8_000).await;
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    assert_eq!(
        problem(h.send("/chat", &challenge, bearer).await).await,
        lightning("session-closed")
    );
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    let mut closed: Value = h
        .send("/chat", &challenge, close)
        .await
        .json()
        .await
        .unwrap();
    // Closed before the client asked: said when.
    let closed_at = closed["closedAt"].take();
    let at = gate402_mpp::parse_time(closed_at.as_str().unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert!(
        at <= now && now - at < time::Duration::seconds(10),
        "{closed_at}"
    );
    assert_eq!(
        closed,
        json!({"status": "closed", "refundSats": 8, "refundStatus": "succeeded", "closedAt": null})
    );
}

/// A session is not idle while one of its requests is in flight, however
/// long it runs: closed then, what the request gives back (its whole
/// debit, when the upstream fails) would be lost to the refund. It is idle
/// from when that request ended.
#[tokio::test]
async fn a_session_with_a_request_in_flight_is_not_idle() {
    let h = Harness::start(|services| {
        let upstream = services[0].upstream.as_ref().unwrap().url.clone();
        let mut slow = balance("slow", "/slow/*", 2, 5, &upstream);
        slow.priced.session_idle_secs = 1;
        services.push(slow);
    })
    .await;
    let OpenSession {
        challenge,
        session,
        preimage,
        refund_hash,
        ..
    } = h.open_session("/slow/quick").await;
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    let failing = h.send("/slow/failing", &challenge, bearer.clone());
    let idle_rounds = async {
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        h.gateway.paywall().close_idle_sessions().await;
    };
    let (failed, ()) = tokio::join!(failing, idle_rounds);
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // Just ended: not idle yet.
    h.gateway.paywall().close_idle_sessions().await;
    assert_eq!(
        h.send("/slow/quick", &challenge, bearer).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    h.gateway.paywall().close_idle_sessions().await;
    // 10 sat, less the open's request and the last one: the failed
    // request's debit came back.
    h.assert_refunded(&refund_hash, 6_000).await;
}

/// A close decides whether the session has a request in flight together
/// with the close itself: a request that debited the session just after a
/// close looked for one, and just before its refund was computed, had its
/// debit counted as spent, and what it gave back afterwards (a failed
/// request's debit here) was lost to the refund. Here the session's row
/// is locked so that the request's debit and then the close wait behind
/// it, in that order.
#[tokio::test(flavor = "multi_thread")]
async fn a_close_waits_for_a_request_that_debited_just_before_it() {
    let postgres = gate402_postgres_testkit::TestPostgres::start().await;
    let h = Harness::start_with(
        |services| {
            let upstream = services[0].upstream.as_ref().unwrap().url.clone();
            services.push(balance("slow", "/slow/*", 2, 5, &upstream));
        },
        |config| {
            config.store = gate402_gateway::config::StoreConfig::Postgres(postgres.url.clone())
        },
    )
    .await;
    let OpenSession {
        challenge,
        session,
        preimage,
        refund_hash,
        ..
    } = h.open_session("/slow/quick").await;
    let waiting = async |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while postgres
            .sql("SELECT count(*) FROM pg_locks WHERE NOT granted")
            .trim()
            .parse::<usize>()
            .unwrap()
            < n
        {
            assert!(Instant::now() < deadline, "fewer than {n} waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut lock = postgres.session();
    lock.run("BEGIN; SELECT 1 FROM sessions FOR UPDATE;");
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    let failing = tokio::spawn({
        let request = h.http.get(h.url("/slow/failing")).header(
            AUTHORIZATION,
            gate402_mpp::credential::to_authorization(&PaymentCredential::new(
                challenge.to_echo(),
                bearer,
            )),
        );
        async move { request.send().await.unwrap().status() }
    });
    waiting(1).await;
    let (close_challenge, _, _) = h.challenge("/slow/quick").await;
    let closing = tokio::spawn({
        let request = h.http.get(h.url("/slow/quick")).header(
            AUTHORIZATION,
            gate402_mpp::credential::to_authorization(&PaymentCredential::new(
                close_challenge.to_echo(),
                json!({"action": "close", "sessionId": session, "preimage": preimage}),
            )),
        );
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    waiting(2).await;
    lock.run("ROLLBACK;");
    assert_eq!(failing.await.unwrap(), StatusCode::INTERNAL_SERVER_ERROR);
    let closed = closing.await.unwrap();
    // 10 sat, less the open's request: the failed request's debit came
    // back before the refund.
    assert_eq!(closed["refundSats"], 8, "{closed}");
    h.assert_refunded(&refund_hash, 8_000).await;
}

/// A refund still owed is paid by the background round once its payer
/// is long gone, and never twice: a session closed by a replica that died
/// before paying (`pending`, nothing paid) is refunded; one whose refund
/// was paid before its payer died is recorded `succeeded`, not paid again
/// (the node is asked first); one just taken, whose payer may still be at
/// work, is left alone; one whose return invoice someone else paid (1 sat),
/// or the node paid another amount (another session's refund to the same
/// invoice), is not taken for refunded: it stays `failed`.
#[tokio::test]
async fn a_refund_still_owed_is_paid_later_and_never_twice() {
    let h = Harness::start(|_| {}).await;
    let store = h.gateway.paywall().store();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let opened = h.open_session("/chat").await;
        let mut id = [0u8; 32];
        hex::decode_to_slice(&opened.session, &mut id).unwrap();
        sessions.push((id, opened.refund_to, opened.refund_hash));
    }
    let [died_before_paying, died_after_paying, at_work, paid_by_another, paid_for_another] =
        &sessions[..]
    else {
        unreachable!()
    };
    let base = format!("http://{}", h.gateway.addr());
    pay_amount_via(&h.http, &base, &paid_by_another.1, 1_000)
        .await
        .unwrap();
    let backend = h.gateway.paywall().backend();
    backend
        .pay_amount(&died_after_paying.1, 8_000, 0, Duration::from_secs(5))
        .await
        .unwrap();
    // Paid by the node, but 3 sat: the refund of another session that
    // named the same return invoice.
    backend
        .pay_amount(&paid_for_another.1, 3_000, 0, Duration::from_secs(5))
        .await
        .unwrap();

    // Each closed as a replica does before it pays (the refund of the
    // second was paid, its payer died before recording it).
    let closed_at = [now - 600, now - 600, now, now - 600, now - 600];
    for ((id, _, _), closed_at) in sessions.iter().zip(closed_at) {
        assert!(matches!(
            store.close_session(id, closed_at, false).await.unwrap(),
            gate402_store::Closing::Closed {
                refund_msat: 8_000,
                ..
            }
        ));
    }
    h.gateway.paywall().close_idle_sessions().await;
    let status = |id: [u8; 32]| async move {
        let record = store.session(&id).await.unwrap().unwrap();
        record.closed.unwrap().refund_status
    };
    h.assert_refunded(&died_before_paying.2, 8_000).await;
    assert_eq!(status(died_before_paying.0).await, "succeeded");
    h.assert_refunded(&died_after_paying.2, 8_000).await;
    assert_eq!(status(died_after_paying.0).await, "succeeded");
    assert_eq!(
        backend.invoice_status(&at_work.2).await.unwrap(),
        InvoiceStatus::Open
    );
    assert_eq!(status(at_work.0).await, "pending");
    assert_eq!(status(paid_by_another.0).await, "failed");
    assert_eq!(status(paid_for_another.0).await, "failed");
    // The operator sees what is still owed: the one at work and the two
    // failed, 8 sat each.
    let owed = &h.admin("/sessions").await["refunds_owed"];
    assert_eq!(owed["count"], 3, "{owed}");
    assert_eq!(owed["refund_msat"], 24_000, "{owed}");
    let listed: Vec<&str> = owed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for (id, _, _) in [at_work, paid_by_another, paid_for_another] {
        assert!(listed.contains(&hex::encode(id).as_str()), "{owed}");
    }
}

/// A bearer request with an `Idempotency-Key` is answered again from its
/// kept response later, as through the other doors: the upstream acts
/// once, the balance is charged once. (Kept until the session
/// credential's end, which it has not, the response was gone within a
/// second and the retry got `409`.)
#[tokio::test]
async fn a_bearer_request_with_an_idempotency_key_is_replayed_later() {
    let h = Harness::start(|services| {
        let mut kept = balance("kept", "/kept", 2, 5, "http://127.0.0.1:9");
        kept.upstream = services[0].upstream.clone();
        services.push(kept);
    })
    .await;
    let OpenSession {
        challenge,
        session,
        preimage,
        ..
    } = h.open_session("/kept").await;
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    let credential = gate402_mpp::credential::to_authorization(&PaymentCredential::new(
        challenge.to_echo(),
        bearer,
    ));
    let post = || {
        h.http
            .post(h.url("/kept"))
            .header(AUTHORIZATION, &credential)
            .header("idempotency-key", "\"k1\"")
            .body("send it")
            .send()
    };
    let before = KEPT_RUNS.load(Ordering::SeqCst);
    assert_eq!(post().await.unwrap().status(), StatusCode::OK);
    // 10 sat deposited: 2 for the open's request, 2 for this one.
    assert_eq!(h.balance_once(&session, 6_000).await, 6_000);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let again = post().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(KEPT_RUNS.load(Ordering::SeqCst), before + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.balance_once(&session, 6_000).await, 6_000);
    // Closed, it refuses everything, its kept answers too (as its L402
    // token does).
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    assert_eq!(
        h.send("/kept", &challenge, close).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        problem(post().await.unwrap()).await,
        lightning("session-closed")
    );
}

/// A session is spent at the unit price it was opened at: the operator
/// raising the service's price (to 7 sat) or lowering it (to 1) changes
/// what new sessions pay, not open ones. (A bearer request was charged the
/// amount of whichever challenge it echoed: 7 after agreeing to 2, or 1.)
#[tokio::test]
async fn a_session_is_spent_at_the_price_it_was_opened_at() {
    let configured = std::sync::Mutex::new(Vec::new());
    let h = Harness::start(|services| *configured.lock().unwrap() = services.clone()).await;
    let (challenge, request, _) = h.challenge("/chat").await;
    assert_eq!(request["amount"], "2");
    let preimage = h.pay(&request).await;
    let session = request["paymentHash"].as_str().unwrap().to_owned();
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    assert_eq!(
        h.send("/chat", &challenge, open).await.status(),
        StatusCode::OK
    );
    assert_eq!(h.balance_once(&session, 8_000).await, 8_000);
    let mut raised = configured.into_inner().unwrap();
    raised[0].priced.price_sats = 7;
    h.gateway.services_handle().set(&raised).unwrap();
    // Whichever challenge of the service a bearer request echoes (a
    // bearer names the session only): here a fresh one, at 7.
    let (fresh, offered, _) = h.challenge("/chat").await;
    assert_eq!(offered["amount"], "7");
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    assert_eq!(
        h.send("/chat", &fresh, bearer.clone()).await.status(),
        StatusCode::OK
    );
    assert_eq!(h.balance_once(&session, 6_000).await, 6_000);
    // And lowered, the open session still spends 2 (an old challenge at 2
    // or a fresh one at 1 alike).
    let mut lowered = raised.clone();
    lowered[0].priced.price_sats = 1;
    h.gateway.services_handle().set(&lowered).unwrap();
    let (fresh, _, _) = h.challenge("/chat").await;
    assert_eq!(
        h.send("/chat", &fresh, bearer).await.status(),
        StatusCode::OK
    );
    assert_eq!(h.balance_once(&session, 4_000).await, 4_000);
}

/// A return invoice is one session's: an invoice is paid once, so a
/// second session naming it could never be refunded (and the node's
/// payment of it for the first would be taken for the second's). Its
/// `open` is refused, the deposit unspent: opened with an invoice of its
/// own, it serves.
#[tokio::test]
async fn a_return_invoice_is_one_sessions() {
    let h = Harness::start(|_| {}).await;
    let first = h.open_session("/chat").await;
    let (challenge, request, _) = h.challenge("/chat").await;
    let preimage = h.pay(&request).await;
    // In any spelling of it: upper case (as QR codes carry it), or a
    // `lightning:` URI.
    for spelled in [
        first.refund_to.clone(),
        first.refund_to.to_ascii_uppercase(),
        format!("lightning:{}", first.refund_to),
    ] {
        let shared = json!({"action": "open", "preimage": preimage, "returnInvoice": spelled});
        assert_eq!(
            problem(h.send("/chat", &challenge, shared).await).await,
            lightning("invalid-return-invoice"),
            "{spelled}"
        );
    }
    // Nor one this node paid already (not a session's: by hand, or for a
    // session forgotten since), nor one its issuing node, this one, knows
    // as paid (the sandbox's wallets are one node's; paid by another of
    // them): a refund to either could never be paid.
    let (paid, _) = h.return_invoice().await;
    h.gateway
        .paywall()
        .backend()
        .pay_amount(&paid, 1_000, 0, Duration::from_secs(5))
        .await
        .unwrap();
    let (settled, _) = h.return_invoice().await;
    let base = format!("http://{}", h.gateway.addr());
    pay_amount_via(&h.http, &base, &settled, 1_000)
        .await
        .unwrap();
    for (taken, said) in [
        (paid, "paid this return invoice"),
        (settled, "was paid already"),
    ] {
        let open = json!({"action": "open", "preimage": preimage, "returnInvoice": taken});
        let refused = h.send("/chat", &challenge, open).await;
        assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
        let refused: Value = refused.json().await.unwrap();
        assert_eq!(
            refused["type"],
            lightning("invalid-return-invoice"),
            "{refused}"
        );
        assert!(
            refused["detail"].as_str().unwrap().contains(said),
            "{refused}"
        );
    }
    let (own, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": own});
    assert_eq!(
        h.send("/chat", &challenge, open).await.status(),
        StatusCode::OK
    );
}

/// Another service's challenge reaches no session of this one, whatever
/// the action: a top-up paid on `flaky` is not credited to a `chat`
/// session (and stays unspent), and a close through `flaky` closes
/// nothing.
#[tokio::test]
async fn another_services_challenge_tops_up_and_closes_no_session() {
    let h = Harness::start(|_| {}).await;
    let OpenSession {
        challenge,
        session,
        preimage,
        ..
    } = h.open_session("/chat").await;
    let (other, other_request, _) = h.challenge("/flaky").await;
    let top_up_preimage = h.pay(&other_request).await;
    let top_up = json!({"action": "topUp", "sessionId": session, "topUpPreimage": top_up_preimage});
    assert_eq!(
        problem(h.send("/flaky", &other, top_up).await).await,
        lightning("session-not-found")
    );
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    assert_eq!(
        problem(h.send("/flaky", &other, close.clone()).await).await,
        lightning("session-not-found")
    );
    assert_eq!(h.balance_once(&session, 8_000).await, 8_000);
    let closed: Value = h
        .send("/chat", &challenge, close)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(closed["refundSats"], 8, "{closed}");
}

/// Reads server-sent events from a response as they come: (event, data).
struct Events {
    stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>,
    >,
    buffer: String,
}

impl Events {
    fn of(response: reqwest::Response) -> Self {
        Self {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> Option<(String, String)> {
        use futures_util::StreamExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let mut name = "message".to_owned();
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = v.trim().to_owned();
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((name, data));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("the stream stalled")?
                .ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A session opened on `/stream` (a 3 sat deposit, a return invoice
/// named): its challenge, id, preimage and the stream the open answered.
async fn open_stream(h: &Harness) -> (PaymentChallenge, String, String, Events) {
    let (challenge, request, _) = h.challenge("/stream").await;
    assert_eq!(request["depositAmount"], "3");
    let preimage = h.pay(&request).await;
    let session = request["paymentHash"].as_str().unwrap().to_owned();
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    let response = h.send("/stream", &challenge, open).await;
    assert_eq!(response.status(), StatusCode::OK);
    (challenge, session, preimage, Events::of(response))
}

#[tokio::test]
async fn a_metered_stream_stops_at_the_balance_and_resumes_after_a_top_up() {
    // Time for a top-up's round trips on a loaded machine.
    let h = Harness::start(|services| services[2].priced.topup_wait_secs = 30).await;
    let (challenge, session, preimage, mut events) = open_stream(&h).await;
    for i in 1..=3 {
        assert_eq!(
            events.next().await.unwrap(),
            ("message".into(), format!("tok-{i}"))
        );
    }
    // Three events for the 3 sat deposit; then the stream asks and waits.
    let (name, data) = events.next().await.unwrap();
    assert_eq!(name, "payment-need-topup");
    let need: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        need,
        json!({"sessionId": session, "balanceSpent": 3, "balanceRequired": 1})
    );
    // Topped up while the stream is held: it resumes where it stopped.
    let (fresh, fresh_request, _) = h.challenge("/stream").await;
    let top_up_preimage = h.pay(&fresh_request).await;
    let top_up = json!({"action": "topUp", "sessionId": session, "topUpPreimage": top_up_preimage});
    assert_eq!(
        h.send("/stream", &fresh, top_up).await.status(),
        StatusCode::OK
    );
    for i in 4..=6 {
        assert_eq!(
            events.next().await.unwrap(),
            ("message".into(), format!("tok-{i}"))
        );
    }
    let (name, data) = events.next().await.unwrap();
    assert_eq!(name, "payment-receipt");
    let receipt: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (receipt["spent"].as_u64(), receipt["units"].as_u64()),
        (Some(6), Some(6))
    );
    assert_eq!(receipt["reference"], session.as_str());
    assert_eq!(
        events.next().await.unwrap(),
        ("message".into(), "[DONE]".into())
    );
    assert_eq!(events.next().await, None);

    // The balance is spent: the next stream is refused before it starts.
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    assert_eq!(
        problem(h.send("/stream", &challenge, bearer).await).await,
        lightning("insufficient-balance")
    );
}

#[tokio::test]
async fn a_metered_stream_without_a_top_up_ends_with_session_timeout() {
    let h = Harness::start(|_| {}).await;
    let (challenge, session, preimage, mut events) = open_stream(&h).await;
    let mut names = Vec::new();
    let mut last = Value::Null;
    while let Some((name, data)) = events.next().await {
        names.push(name);
        last = serde_json::from_str(&data).unwrap_or_default();
    }
    // The final event says what the stream cost (draft-lightning-session
    // §Streaming), however it ended.
    assert_eq!(
        names,
        [
            "message",
            "message",
            "message",
            "payment-need-topup",
            "session-timeout",
            "payment-receipt"
        ]
    );
    assert_eq!((&last["spent"], &last["units"]), (&json!(3), &json!(3)));
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    let closed: Value = h
        .send("/stream", &challenge, close)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        closed,
        json!({"status": "closed", "refundSats": 0, "refundStatus": "skipped"})
    );
}

/// A stream waiting for a top-up when its session is closed (a close
/// waits for the session's requests in flight, but not for ever; or
/// another replica closed it) ends with `session-timeout`, which says
/// what the balance spent.
#[tokio::test]
async fn a_stream_whose_session_closes_while_it_waits_says_what_was_spent() {
    let h = Harness::start(|services| services[2].priced.topup_wait_secs = 60).await;
    let (_, session, _, mut events) = open_stream(&h).await;
    let mut names = Vec::new();
    while let Some((name, _)) = events.next().await {
        names.push(name.clone());
        if name == "payment-need-topup" {
            break;
        }
    }
    assert_eq!(names.len(), 4, "{names:?}");
    // Closed as a close does once its wait for the stream has run out.
    let id: [u8; 32] = hex::decode(&session).unwrap().try_into().unwrap();
    let closing = h.gateway.paywall().store().close_session(&id, 1, false);
    assert!(matches!(
        closing.await.unwrap(),
        gate402_store::Closing::Closed { .. }
    ));
    let mut ended = Vec::new();
    while let Some(event) = events.next().await {
        ended.push(event);
    }
    let (name, data) = &ended[0];
    assert_eq!(name, "session-timeout", "{ended:?}");
    let timeout: Value = serde_json::from_str(data).unwrap();
    assert_eq!(timeout["balanceSpent"], 3, "{timeout}");
}

/// A close of a session whose metered stream waits for a top-up ends the
/// wait: the stream says `session-timeout` with what was spent, and the
/// close answers at once (it waited out the top-up wait, or its own 30 s).
#[tokio::test]
async fn a_close_ends_its_sessions_stream_waiting_for_a_top_up() {
    let h = Harness::start(|services| services[2].priced.topup_wait_secs = 60).await;
    let (challenge, session, preimage, mut events) = open_stream(&h).await;
    while let Some((name, _)) = events.next().await {
        if name == "payment-need-topup" {
            break;
        }
    }
    let asked = Instant::now();
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    let (closed, rest) = tokio::join!(h.send("/stream", &challenge, close), async {
        let mut rest = Vec::new();
        while let Some(event) = events.next().await {
            rest.push(event);
        }
        rest
    });
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        closed.json::<Value>().await.unwrap(),
        json!({"status": "closed", "refundSats": 0, "refundStatus": "skipped"})
    );
    let names: Vec<&str> = rest.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["session-timeout", "payment-receipt"], "{rest:?}");
    let timeout: Value = serde_json::from_str(&rest[0].1).unwrap();
    assert_eq!(timeout["balanceSpent"], 3, "{timeout}");
}

/// An event stream a failing upstream (a 5xx) sends is charged per event
/// all the same, past the first: the request's own debit is given back
/// (pay for success), but its events are content; its receipt counts the
/// events charged. (Passed on unmetered,
/// a 3-sat deposit bought any number of such streams.)
#[tokio::test]
async fn a_failing_upstreams_event_stream_is_charged_per_event() {
    let h = Harness::start(|services| {
        let mut failing = balance("failing", "/failing/stream", 1, 3, "http://127.0.0.1:9");
        failing.upstream = services[0].upstream.clone();
        failing.priced.meter = gate402_gateway::config::Meter::Events;
        failing.priced.topup_wait_secs = 1;
        services.push(failing);
    })
    .await;
    let (challenge, request, _) = h.challenge("/failing/stream").await;
    let preimage = h.pay(&request).await;
    let session = request["paymentHash"].as_str().unwrap().to_owned();
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    let answer = h.send("/failing/stream", &challenge, open).await;
    assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let mut events = Events::of(answer);
    let mut names = Vec::new();
    let mut receipt = None;
    while let Some((name, data)) = events.next().await {
        if name == "payment-receipt" {
            receipt = Some(serde_json::from_str::<Value>(&data).unwrap());
        }
        names.push(name);
    }
    // The first event free, three charged: the deposit.
    let messages = names.iter().filter(|n| *n == "message").count();
    assert_eq!(messages, 4, "{names:?}");
    // Its receipt says what was charged (it said 4: the free event too).
    let receipt = receipt.unwrap_or_else(|| panic!("no receipt: {names:?}"));
    assert_eq!(
        (&receipt["spent"], &receipt["units"]),
        (&json!(3), &json!(3)),
        "{receipt}"
    );
    assert!(
        names.contains(&"payment-need-topup".to_owned()),
        "{names:?}"
    );
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    let closed: Value = h
        .send("/failing/stream", &challenge, close)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(closed["refundSats"], 0, "{closed}");
}

/// An event stream the upstream breaks off is broken off for the client
/// too, after a receipt of the events it was charged (the half event at
/// the break is neither passed on nor charged). It ended cleanly, its
/// receipt saying success: the client could not tell it was cut.
#[tokio::test]
async fn a_metered_stream_the_upstream_breaks_off_is_broken_off_for_the_client() {
    use futures_util::StreamExt;
    let h = Harness::start(|services| {
        for (name, path) in [("cut", "/stream/cut"), ("early", "/stream/cut-early")] {
            let mut cut = balance(name, path, 1, 5, "http://127.0.0.1:9");
            cut.upstream = services[0].upstream.clone();
            cut.priced.meter = gate402_gateway::config::Meter::Events;
            services.push(cut);
        }
    })
    .await;
    let (challenge, request, _) = h.challenge("/stream/cut").await;
    let preimage = h.pay(&request).await;
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    let answer = h.send("/stream/cut", &challenge, open).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let mut stream = answer.bytes_stream();
    let mut text = String::new();
    let mut broken = false;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream stalled")
    {
        match chunk {
            Ok(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    assert!(broken, "the stream ended as if whole: {text}");
    assert!(text.contains("data: tok-3\n\n"), "{text}");
    assert!(!text.contains("data: tok-\n"), "half an event: {text}");
    let receipt = text
        .split("\n\n")
        .find_map(|event| event.strip_prefix("event: payment-receipt\ndata: "))
        .unwrap_or_else(|| panic!("no receipt: {text}"));
    let receipt: Value = serde_json::from_str(receipt).unwrap();
    assert_eq!(receipt["units"], 3, "{receipt}");

    // Broken off before any event: the request's own debit is given back
    // (it was charged one event).
    let (challenge, request, _) = h.challenge("/stream/cut-early").await;
    let preimage = h.pay(&request).await;
    let session = request["paymentHash"].as_str().unwrap().to_owned();
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    let answer = h.send("/stream/cut-early", &challenge, open).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let text = answer.text().await.unwrap_or_default();
    assert!(!text.contains("\"units\":1"), "{text}");
    // Given back on a task of its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let close = json!({"action": "close", "sessionId": session, "preimage": preimage});
    let closed: Value = h
        .send("/stream/cut-early", &challenge, close)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(closed["refundSats"], 5, "{closed}");
}

/// A holder may append caveats to a token, of any kind, but that changes
/// nothing it was sold as: a token sold for one request still serves one,
/// a pass naming a balance opens none (even one its invoice paid: the pass
/// is still served, as a pass), and a balance's token stays that balance.
#[tokio::test]
async fn appended_caveats_change_nothing_a_token_was_sold_as() {
    let h = Harness::start(|services| {
        let upstream = services[0].upstream.clone();
        let mut one = ServiceConfig::proxied("one", "/complete", 3, "http://127.0.0.1:9");
        one.upstream = upstream.clone();
        let mut day = ServiceConfig::proxied("day", "/complete/stream", 3, "http://127.0.0.1:9");
        day.priced = day.priced.pass(3600);
        day.upstream = upstream;
        services.extend([one, day]);
    })
    .await;
    let appended = |l402: &str, caveat: &str| {
        let mut credential = gate402_l402::L402Credential::from_authorization(l402).unwrap();
        credential.macaroons[0].add_first_party_caveat(caveat.as_bytes().to_vec());
        credential.to_authorization()
    };
    let request = h.buy("/complete").await;
    let forged = appended(&request.l402, "one_balance=1000");
    assert_eq!(h.statuses("/complete", &forged, 3).await, [200, 402, 402]);
    assert_eq!(h.statuses("/complete", &request.l402, 1).await, [402]);

    let pass = h.buy("/complete/stream").await;
    // Named a balance its invoice did not pay, or one it did (3 sat):
    // served as the pass it is, and so is the pass itself.
    for caveat in ["day_balance=100000", "day_balance=3"] {
        let forged = appended(&pass.l402, caveat);
        assert_eq!(
            h.statuses("/complete/stream", &forged, 2).await,
            [200, 200],
            "{caveat}"
        );
    }
    assert_eq!(
        h.statuses("/complete/stream", &pass.l402, 2).await,
        [200, 200]
    );
    let id = pass.offer.invoice.payment_hash();
    let opened = h.gateway.paywall().store().session(&id).await.unwrap();
    assert!(opened.is_none(), "a balance was opened for the pass");

    // Nor does an appended `uses` make a balance's token buy a request of
    // its own: both spend the one balance (10 sat, 5 requests).
    let balance = h.buy("/chat").await;
    let forged = appended(&balance.l402, "chat_uses=1");
    assert_eq!(h.statuses("/chat", &forged, 3).await, [200, 200, 200]);
    assert_eq!(h.statuses("/chat", &balance.l402, 3).await, [200, 200, 402]);
}

/// Requests whose clients close the connection at once, while their
/// debit is being taken, spend nothing from the balance unless they
/// reached the upstream: the deposit buys exactly its requests, counted
/// at the upstream.
#[tokio::test]
async fn a_client_that_leaves_while_its_debit_is_taken_spends_nothing() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(|services| {
        let mut counted = balance("counted", "/counted", 2, 5, "http://127.0.0.1:9");
        counted.upstream = services[0].upstream.clone();
        services.push(counted);
    })
    .await;
    let bought = h.buy("/counted").await;
    for _ in 0..10 {
        let mut socket = tokio::net::TcpStream::connect(h.gateway.addr())
            .await
            .unwrap();
        let request = format!(
            "GET /counted HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
            bought.l402
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        drop(socket);
    }
    // Settled: every debit taken was spent on a run at the upstream or
    // given back (2 sat a run).
    let id = bought.offer.invoice.payment_hash();
    let settled = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let session = h.gateway.paywall().store().session(&id).await.unwrap();
            let spent = session.map_or(0, |s| s.spent_msat);
            let runs = COUNTED_RUNS.load(Ordering::SeqCst) as u64;
            if spent == runs * 2000 {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "{spent} msat spent for {runs} runs at the upstream"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = settled().await;
    // Spent to its end by a client that stays (a request refused while a
    // debit that is then given back was still held is tried again).
    let (mut served, mut tries) = (0, 0);
    while settled().await < 5 && tries < 10 {
        tries += 1;
        if h.statuses("/counted", &bought.l402, 1).await == [200] {
            served += 1;
        }
    }
    assert_eq!(
        settled().await,
        5,
        "the deposit buys 5 runs: {left} reached the upstream as their clients left, {served} after"
    );
    assert_eq!(h.statuses("/counted", &bought.l402, 1).await, [402]);
}

#[tokio::test]
async fn a_balance_is_its_minted_deposit_spent_on_its_own_service() {
    let h = Harness::start(|_| {}).await;
    let Bought {
        offer, paid, l402, ..
    } = h.buy("/chat").await;
    // First used with a lowered (and a malformed) balance appended: the
    // session still holds the 10 sat deposit, 5 requests.
    let lowered = {
        let mut credential = gate402_l402::L402Credential::from_authorization(&l402).unwrap();
        credential.macaroons[0].add_first_party_caveat(b"chat_balance=2".to_vec());
        credential.macaroons[0].add_first_party_caveat(b"chat_balance=abc".to_vec());
        credential.to_authorization()
    };
    let mut served = 0;
    for _ in 0..6 {
        let response = h.get_paid("/chat", &lowered).await;
        if response.status() == StatusCode::OK {
            served += 1;
        }
    }
    assert_eq!(served, 5);
    // Another balance service of the same gateway: not this session's.
    let (other, _, _) = h.challenge("/flaky").await;
    let session = hex::encode(offer.invoice.payment_hash());
    let elsewhere = json!({"action": "bearer", "sessionId": session, "preimage": paid.preimage});
    assert_eq!(
        problem(h.send("/flaky", &other, elsewhere).await).await,
        lightning("session-not-found")
    );
}

fn usage(
    name: &str,
    path: &str,
    header: Option<&'static str>,
    field: Option<&str>,
    upstream: &str,
) -> ServiceConfig {
    let mut service = balance(name, path, 1, 20, upstream);
    service.priced.meter = gate402_gateway::config::Meter::Usage(gate402_gateway::config::Usage {
        header: header.map(axum::http::HeaderName::from_static),
        field: field.map(str::to_owned),
        max_units: 10,
    });
    service
}

/// A harness with these services metered by usage besides its own, each
/// `(name, path, usage header, usage field)` on the test upstream.
async fn metered_by_usage(metered: &[(&str, &str, Option<&'static str>, Option<&str>)]) -> Harness {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    Harness::start(|services| {
        for &(name, path, header, field) in metered {
            services.push(usage(name, path, header, field, &upstream));
        }
    })
    .await
}

/// Buys a balance through its L402 token: the token, the session's id and
/// preimage, and the session challenge of the same 402 (the same invoice),
/// through which an MPP `open` names a return invoice for it.
async fn balance_with_refund(
    h: &Harness,
    path: &str,
) -> (String, String, String, PaymentChallenge) {
    let bought = h.buy(path).await;
    (
        bought.l402,
        hex::encode(bought.offer.invoice.payment_hash()),
        bought.paid.preimage,
        bought.session.expect("a session challenge"),
    )
}

async fn close(h: &Harness, path: &str, session: &str, preimage: &str) -> Value {
    let (challenge, _, _) = h.challenge(path).await;
    h.send(
        path,
        &challenge,
        json!({"action": "close", "sessionId": session, "preimage": preimage}),
    )
    .await
    .json()
    .await
    .unwrap()
}

/// A failure kept (the third of a balance that spent nothing) keeps what
/// the failed answer reported it used in its header, not the most the
/// request held.
#[tokio::test]
async fn a_kept_failure_is_charged_the_usage_it_reported() {
    let h =
        metered_by_usage(&[("failing", "/complete/failing", Some("x-usage-tokens"), None)]).await;
    let (l402, session, preimage, _) = balance_with_refund(&h, "/complete/failing").await;
    assert_eq!(
        h.statuses("/complete/failing", &l402, 3).await,
        [500, 500, 500]
    );
    // 20 sat deposited, 3 kept (not the 10 held). (Bought through its
    // L402 token, it names no return invoice: the refund is owed.)
    let closed = close(&h, "/complete/failing", &session, &preimage).await;
    assert_eq!(closed["refundSats"], 17, "{closed}");
}

/// A kept failure whose answer reports that it used nothing keeps one
/// unit all the same: kept failures that cost nothing would let a balance
/// buy failed runs without end.
#[tokio::test]
async fn a_kept_failure_that_reports_nothing_used_costs_a_unit() {
    let h = metered_by_usage(&[(
        "failing",
        "/complete/failing-free",
        Some("x-usage-tokens"),
        None,
    )])
    .await;
    let (l402, _, _, _) = balance_with_refund(&h, "/complete/failing-free").await;
    // 20 units, 10 held a request: two failures given back, then one
    // unit kept a failure and one more given back for each 5 kept (what
    // is given back stays within twice what is spent), until fewer than
    // 10 are left to hold.
    let mut expected = vec![500; 15];
    expected.push(402);
    assert_eq!(
        h.statuses("/complete/failing-free", &l402, 16).await,
        expected
    );
}

/// A balance metered by the units the upstream reports: each request holds
/// the most it may use (10 units), and keeps what it used (7 in a header,
/// 4 in the stream's last usage event).
#[tokio::test]
async fn a_balance_is_charged_the_usage_the_upstream_reports() {
    let h = metered_by_usage(&[
        ("header", "/complete", Some("x-usage-tokens"), None),
        (
            "stream-usage",
            "/complete/stream",
            None,
            Some("/usage/total_tokens"),
        ),
    ])
    .await;
    // 20 sat: 7 + 7 used; the third request cannot hold 10 of the 6 left.
    let (l402, session, preimage, challenge) = balance_with_refund(&h, "/complete").await;
    for _ in 0..2 {
        let served = h.get_paid("/complete", &l402).await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(served.json::<Value>().await.unwrap()["answer"], "hi");
    }
    let third = h.get_paid("/complete", &l402).await;
    assert_eq!(problem(third).await, lightning("insufficient-balance"));
    // The refund (through the MPP door, which names a return invoice)
    // shows what was kept.
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    let reopened = h.send("/complete", &challenge, open).await;
    assert_eq!(problem(reopened).await, lightning("insufficient-balance"));
    assert_eq!(
        close(&h, "/complete", &session, &preimage).await,
        json!({"status": "closed", "refundSats": 6, "refundStatus": "succeeded"})
    );

    // A stream: the units of its last usage event.
    let (l402, session, preimage, challenge) = balance_with_refund(&h, "/complete/stream").await;
    let streamed = h.get_paid("/complete/stream", &l402).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(streamed.text().await.unwrap().contains("[DONE]"));
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    // Opening again spends a request (it holds 10 and reports 4 again).
    let again = h.send("/complete/stream", &challenge, open).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.text().await.unwrap().contains("total_tokens"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        close(&h, "/complete/stream", &session, &preimage).await,
        json!({"status": "closed", "refundSats": 12, "refundStatus": "succeeded"})
    );
}

/// Usage reported in a JSON body is charged however the body is framed
/// (with a length, hyper reads no further than its last byte); a client
/// that leaves before the report keeps no more than it held.
#[tokio::test]
async fn usage_in_the_body_is_charged_whatever_its_framing_or_the_client_does() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let field = Some("/usage/total_tokens");
    let h = Harness::start(|services| {
        services.push(usage("json", "/complete", None, field, &upstream));
        services.push(usage("empty", "/complete/empty", None, field, &upstream));
        services.push(usage(
            "late",
            "/complete/late-usage",
            None,
            field,
            &upstream,
        ));
        services.push(usage(
            "running",
            "/complete/running-usage",
            None,
            field,
            &upstream,
        ));
    })
    .await;
    // 20 sat: one request holds 10, and keeps the 7 its body reports.
    let (l402, session, _, _) = balance_with_refund(&h, "/complete").await;
    let served = h.get_paid("/complete", &l402).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert!(served.headers().contains_key("content-length"));
    assert_eq!(served.json::<Value>().await.unwrap()["answer"], "hi");
    assert_eq!(h.balance_once(&session, 13_000).await, 13_000);

    // An empty body, whole with its head, reports nothing: one unit, not
    // the most held (it was never read to an end before).
    let (l402, session, _, _) = balance_with_refund(&h, "/complete/empty").await;
    for _ in 0..2 {
        let served = h.get_paid("/complete/empty", &l402).await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_eq!(served.headers()["content-length"], "0");
        assert!(served.bytes().await.unwrap().is_empty());
    }
    assert_eq!(h.balance_once(&session, 18_000).await, 18_000);

    // The answer read, the connection closed before the usage event.
    let (l402, session, _, _) = balance_with_refund(&h, "/complete/late-usage").await;
    let mut streamed = h.get_paid("/complete/late-usage", &l402).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let first = streamed.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("the whole answer"));
    drop(streamed);
    // Held 10 while in flight; once the upstream's pause is over, settled.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(h.balance_once(&session, 10_000).await, 10_000);

    // Nor after an early report: a running count (0) is no final one
    // (it was charged: the answer for nothing).
    let (l402, session, _, _) = balance_with_refund(&h, "/complete/running-usage").await;
    let mut streamed = h.get_paid("/complete/running-usage", &l402).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let mut read = String::new();
    while !read.contains("the whole answer") {
        let chunk = streamed.chunk().await.unwrap().unwrap();
        read.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(streamed);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(h.balance_once(&session, 10_000).await, 10_000);
}

/// An answer after a pause, its usage (7) in a header and in the body.
async fn slow_usage() -> ([(&'static str, &'static str); 1], &'static str) {
    SLOW_USAGE_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (
        [("x-usage-tokens", "7")],
        "{\"answer\":\"hi\",\"usage\":{\"total_tokens\":7}}",
    )
}

/// A client that leaves before the answer has spent what the answer
/// reports: the header's report when usage comes in a header, the most
/// held when it comes in the body, never read (it was charged one unit,
/// so that leaving early bought metered work at the price of none).
#[tokio::test]
async fn a_client_that_leaves_before_a_metered_answer_is_charged_its_report_or_the_most() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let h = Harness::start(|services| {
        services.push(usage(
            "body",
            "/complete/slow",
            None,
            Some("/usage/total_tokens"),
            &upstream,
        ));
        services.push(usage(
            "header",
            "/complete/slow-header",
            Some("x-usage-tokens"),
            None,
            &upstream,
        ));
    })
    .await;
    for (path, left_msat) in [
        ("/complete/slow", 10_000),
        ("/complete/slow-header", 13_000),
    ] {
        let (l402, session, _, _) = balance_with_refund(&h, path).await;
        let runs = SLOW_USAGE_RUNS.load(Ordering::SeqCst);
        let gone = tokio::spawn(h.http.get(h.url(path)).header(AUTHORIZATION, &l402).send());
        // It leaves once the upstream has the request.
        let deadline = Instant::now() + Duration::from_secs(20);
        while SLOW_USAGE_RUNS.load(Ordering::SeqCst) == runs {
            assert!(
                Instant::now() < deadline,
                "{path}: never reached the upstream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gone.abort();
        assert!(
            gone.await.is_err_and(|e| e.is_cancelled()),
            "{path}: left before the answer"
        );
        assert_eq!(
            h.balance_once(&session, left_msat).await,
            left_msat,
            "{path}"
        );
    }
}

/// A request to a balance metered by the usage its answer's body reports
/// gets the whole body or none: a `Range` is not passed on (the part it
/// asked for would leave the report out and cost one unit), and an answer
/// that has no body (to `HEAD`, a `304`) reports nothing and costs one
/// unit, not the most held.
#[tokio::test]
async fn usage_in_the_body_is_read_whole_or_charged_one_unit_without_one() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let field = Some("/usage/total_tokens");
    let h = Harness::start(|services| {
        services.push(usage("ranged", "/complete/ranged", None, field, &upstream));
    })
    .await;
    // 20 sat, each request holding 10: a range (7 kept), a HEAD and a
    // 304 (1 each), another range (7).
    let (l402, session, _, _) = balance_with_refund(&h, "/complete/ranged").await;
    let url = h.url("/complete/ranged");
    let get = |extra: &[(&'static str, &'static str)]| {
        let mut request = h.http.get(&url).header(AUTHORIZATION, &l402);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.send()
    };
    let served = get(&[("range", "bytes=1-"), ("if-range", "\"tag\"")])
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.json::<Value>().await.unwrap()["answer"], "hi");
    assert_eq!(h.balance_once(&session, 13_000).await, 13_000);
    let head = h.http.head(&url).header(AUTHORIZATION, &l402).send();
    assert_eq!(head.await.unwrap().status(), StatusCode::OK);
    assert_eq!(h.balance_once(&session, 12_000).await, 12_000);
    let unchanged = get(&[("if-none-match", "\"tag\"")]).await.unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(h.balance_once(&session, 11_000).await, 11_000);
    let served = get(&[("range", "bytes=0-0,1-")]).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.json::<Value>().await.unwrap()["answer"], "hi");
    assert_eq!(h.balance_once(&session, 4_000).await, 4_000);

    // The old draft's `Request-Range` neither; a part sent unasked costs
    // the most held, its report unread.
    let (l402, session, _, _) = balance_with_refund(&h, "/complete/ranged").await;
    let served = h
        .http
        .get(&url)
        .header(AUTHORIZATION, &l402)
        .header("request-range", "bytes=1-")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(h.balance_once(&session, 13_000).await, 13_000);
    let part = h
        .http
        .get(format!("{url}?part"))
        .header(AUTHORIZATION, &l402)
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert!(!part.text().await.unwrap().is_empty());
    assert_eq!(h.balance_once(&session, 3_000).await, 3_000);

    // Nor in the `_` spellings a CGI-style server reads as the `-` ones.
    let (l402, session, _, _) = balance_with_refund(&h, "/complete/ranged").await;
    let served = h
        .http
        .get(&url)
        .header(AUTHORIZATION, &l402)
        .header("request_range", "bytes=1-")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.json::<Value>().await.unwrap()["answer"], "hi");
    assert_eq!(h.balance_once(&session, 13_000).await, 13_000);
}

/// A stream metered per event is asked for unencoded (gzip would hide its
/// events from the meter and give them away); one the upstream encodes
/// anyway is not served, and costs nothing.
#[tokio::test]
async fn a_metered_stream_is_never_passed_on_encoded() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let h = Harness::start(|services| {
        for (name, path) in [("gz", "/stream/gzip"), ("gz-always", "/stream/gzip-always")] {
            let mut stream = balance(name, path, 1, 3, &upstream);
            stream.priced.meter = gate402_gateway::config::Meter::Events;
            stream.priced.topup_wait_secs = 1;
            services.push(stream);
        }
    })
    .await;
    let (l402, session, _, _) = balance_with_refund(&h, "/stream/gzip").await;
    let streamed = h
        .http
        .get(h.url("/stream/gzip"))
        .header(AUTHORIZATION, &l402)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(!streamed.headers().contains_key("content-encoding"));
    let text = streamed.text().await.unwrap();
    assert_eq!(
        STREAM_ENCODINGS.lock().unwrap().last().map(String::as_str),
        Some("identity")
    );
    assert_eq!(text.matches("data: tok-").count(), 3, "{text}");
    assert!(text.contains("payment-need-topup"), "{text}");
    assert_eq!(h.balance_once(&session, 0).await, 0);
    // Nor when asked for in the `_` spelling a CGI-style server reads as
    // `Accept-Encoding`.
    let (l402, session, _, _) = balance_with_refund(&h, "/stream/gzip").await;
    let streamed = h
        .http
        .get(h.url("/stream/gzip"))
        .header(AUTHORIZATION, &l402)
        .header("accept_encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    assert_eq!(
        STREAM_ENCODINGS.lock().unwrap().last().map(String::as_str),
        Some("identity")
    );
    let text = streamed.text().await.unwrap();
    assert_eq!(text.matches("data: tok-").count(), 3, "{text}");
    assert_eq!(h.balance_once(&session, 0).await, 0);

    let (l402, session, _, _) = balance_with_refund(&h, "/stream/gzip-always").await;
    let refused = h.get_paid("/stream/gzip-always", &l402).await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    assert!(!refused.text().await.unwrap().contains("tok-"));
    assert_eq!(h.balance_once(&session, 3_000).await, 3_000);
}

/// The operator closes an open session through the admin API: the unspent
/// balance is paid to its return invoice once, and the session spends no
/// more.
#[tokio::test]
async fn the_operator_closes_a_session_and_its_balance_is_refunded_once() {
    let h = Harness::start(|_| {}).await;
    let OpenSession {
        challenge,
        session,
        preimage,
        refund_hash,
        ..
    } = h.open_session("/chat").await;

    let admin = format!("http://{}/admin/api", h.gateway.admin_addr().unwrap());
    let secret = std::fs::read_to_string(h._dir.path().join("admin_secret")).unwrap();
    let shown: Value = h
        .http
        .get(format!("{admin}/sessions/{session}"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["balance_msat"], 8_000);
    assert_eq!(shown["has_return_invoice"], true);
    let close = || {
        h.http
            .post(format!("{admin}/sessions/{session}/close"))
            .bearer_auth(&secret)
            .send()
    };
    let closed = close().await.unwrap();
    assert_eq!(closed.status(), StatusCode::OK);
    let closed: Value = closed.json().await.unwrap();
    assert_eq!(closed["refund_sats"], 8);
    assert_eq!(closed["refund_status"], "succeeded");
    assert_eq!(close().await.unwrap().status(), StatusCode::CONFLICT);
    h.assert_refunded(&refund_hash, 8_000).await;
    let bearer = json!({"action": "bearer", "sessionId": session, "preimage": preimage});
    let refused = h.send("/chat", &challenge, bearer).await;
    assert_eq!(problem(refused).await, lightning("session-closed"));
}

/// A revoked deposit opens no session and names no return invoice (so
/// nothing is refunded to an invoice chosen after the revocation), and a
/// revoked session takes no top-up.
#[tokio::test]
async fn a_revoked_deposit_opens_nothing_and_a_revoked_session_takes_no_top_up() {
    let h = Harness::start(|_| {}).await;
    let (challenge, request, _) = h.challenge("/chat").await;
    let preimage = h.pay(&request).await;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(request["paymentHash"].as_str().unwrap(), &mut hash).unwrap();
    h.gateway.paywall().revoke([hash]);
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    let refused = h.send("/chat", &challenge, open).await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(refused.text().await.unwrap().contains("revoked"));
    let store = h.gateway.paywall().store();
    assert_eq!(
        store.session(&hash).await.unwrap(),
        None,
        "no session was opened"
    );

    // A session opened, then revoked: its top-up is refused, uncredited.
    let OpenSession { session, .. } = h.open_session("/chat").await;
    let mut id = [0u8; 32];
    hex::decode_to_slice(&session, &mut id).unwrap();
    h.gateway.paywall().revoke([id]);
    let (top_up, top_up_request, _) = h.challenge("/chat").await;
    let top_up_preimage = h.pay(&top_up_request).await;
    let refused = h
        .send(
            "/chat",
            &top_up,
            json!({"action": "topUp", "sessionId": session, "topUpPreimage": top_up_preimage}),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    let record = store.session(&id).await.unwrap().unwrap();
    assert_eq!(record.deposit_msat, 10_000, "the top-up was not credited");
}

/// A session payload that is none of the session's actions is told
/// precisely what is wrong with it (the action unknown, a field missing
/// or of another type), not that it is no Lightning preimage; its deposit
/// stays unspent.
#[tokio::test]
async fn a_malformed_session_payload_is_told_what_is_wrong() {
    let h = Harness::start(|_| {}).await;
    let (challenge, request, _) = h.challenge("/chat").await;
    let preimage = h.pay(&request).await;
    for (payload, needle) in [
        (
            json!({"action": "open", "preimage": preimage}),
            "returnInvoice",
        ),
        (
            json!({"action": "open", "preimage": preimage, "returnInvoice": 7}),
            "expected a string",
        ),
        (json!({"action": "reopen", "preimage": preimage}), "reopen"),
    ] {
        let response = h.send("/chat", &challenge, payload.clone()).await;
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let body: Value = response.json().await.unwrap();
        assert!(
            body["type"].as_str().unwrap().ends_with("/invalid-payload"),
            "{payload}: {body}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{payload}: {detail}");
        assert!(!detail.contains("preimage"), "{payload}: {detail}");
    }
    let (refund_to, _) = h.return_invoice().await;
    let open = json!({"action": "open", "preimage": preimage, "returnInvoice": refund_to});
    assert_eq!(
        h.send("/chat", &challenge, open).await.status(),
        StatusCode::OK,
        "the deposit was not spent"
    );
}

/// A replica that stopped mid-request and never starts again does not
/// keep its debits, nor its sessions from being idle: once it has been
/// seen stopped for a claim lease, the next round gives them back (and
/// the session is then closed as idle, refunded in full); a running
/// replica's (this one's) are left alone.
#[tokio::test]
async fn the_debits_of_a_replica_that_never_returns_are_given_back() {
    let h = Harness::start_with(
        |services| services[0].priced.session_idle_secs = 1,
        |config| config.claim_lease_secs = 1,
    )
    .await;
    let OpenSession {
        session,
        refund_hash,
        ..
    } = h.open_session("/chat").await;
    let mut id = [0u8; 32];
    hex::decode_to_slice(&session, &mut id).unwrap();
    let store = h.gateway.paywall().store();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let own = h.gateway.paywall().replica().to_owned();
    for (replica, token) in [("gone", "t1"), (own.as_str(), "t2")] {
        let holder = gate402_store::ClaimHolder {
            replica: replica.into(),
            token: token.into(),
        };
        assert!(matches!(
            store
                .debit(&id, "chat", 1, 2_000, &holder, now)
                .await
                .unwrap(),
            gate402_store::Debit::Done { .. }
        ));
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // First seen stopped: not yet.
    h.gateway.paywall().close_idle_sessions().await;
    assert_eq!(h.balance_once(&session, 4_000).await, 4_000);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    h.gateway.paywall().close_idle_sessions().await;
    assert_eq!(
        h.balance_once(&session, 6_000).await,
        6_000,
        "gone's came back"
    );
    // This replica's request is still in flight: not idle.
    assert!(store.session(&id).await.unwrap().unwrap().closed.is_none());
    let own_hold = gate402_store::ClaimHolder {
        replica: own,
        token: "t2".into(),
    };
    assert!(store.undo_debit(&own_hold).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    h.gateway.paywall().close_idle_sessions().await;
    h.assert_refunded(&refund_hash, 8_000).await;
}

/// A close waits for the session's requests in flight: what a
/// usage-metered request gives back as it ends (it holds 10 units and
/// reports 3) reaches the refund, where a close under it refunded without
/// the 7 units it gave back.
#[tokio::test]
async fn a_close_waits_for_the_requests_in_flight() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let h = Harness::start(|services| {
        services.push(usage(
            "late",
            "/complete/late-usage",
            None,
            Some("/usage/total_tokens"),
            &upstream,
        ));
    })
    .await;
    let (l402, session, _, _) = balance_with_refund(&h, "/complete/late-usage").await;
    let mut id = [0u8; 32];
    hex::decode_to_slice(&session, &mut id).unwrap();
    let read = async {
        let streamed = h.get_paid("/complete/late-usage", &l402).await;
        assert_eq!(streamed.status(), StatusCode::OK);
        streamed.text().await.unwrap()
    };
    let close = async {
        // Closed once the request holds its 10 units (its usage comes
        // after 3 s).
        let store = h.gateway.paywall().store();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store.has_held_debits(&id).await.unwrap() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        h.gateway.paywall().close_session(&id).await.unwrap()
    };
    let (text, closed) = tokio::join!(read, close);
    assert!(text.contains("total_tokens"), "{text}");
    match closed {
        Some(gate402_paywall::SessionClose::Closed { refund_sats, .. }) => {
            assert_eq!(refund_sats, 17, "20 sat, less the 3 units used")
        }
        other => panic!("{other:?}"),
    }
}

/// A request on a balance whose funds requests in flight hold (each
/// usage-metered one holds the most it may use) is answered `409` with
/// `Retry-After`, nothing charged: what they do not use comes back. It was
/// a `402 insufficient-balance` asking for a top-up, and a client paid a
/// new deposit, leaving the balance it had.
#[tokio::test]
async fn a_balance_held_by_requests_in_flight_asks_for_a_retry_not_a_top_up() {
    let upstream = upstream(Arc::new(AtomicUsize::new(0))).await;
    let path = "/complete/late-usage";
    let h = Harness::start(|services| {
        services.push(usage(
            "late",
            path,
            None,
            Some("/usage/total_tokens"),
            &upstream,
        ));
    })
    .await;
    let (l402, _, _, _) = balance_with_refund(&h, path).await;
    // 20 sat: two requests hold 10 each while their usage is late (their
    // answers' heads have come, their usage comes 3 s later).
    let first = h.get_paid(path, &l402).await;
    let second = h.get_paid(path, &l402).await;
    let third = h.get_paid(path, &l402).await;
    let (status, retry) = (third.status(), third.headers().get("retry-after").cloned());
    let body = third.text().await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(retry.unwrap(), "1");
    assert!(body.contains("held by requests in flight"), "{body}");
    for answer in [first, second] {
        assert_eq!(answer.status(), StatusCode::OK);
        let text = answer.text().await.unwrap();
        assert!(text.contains("total_tokens"), "{text}");
    }
    // Each kept the 3 units it reported: 14 sat left, enough for it now.
    let again = h.get_paid(path, &l402).await;
    assert_eq!(again.status(), StatusCode::OK);
}
