//! The gateway end to end on loopback: sandbox backend, SQLite store, a
//! real upstream, real HTTP. Each test starts its own gateway.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::sse::{Event, Sse};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use gate402_client::Offer;
use gate402_gateway::config::{Auth, Rewrite, Schemes, ServiceConfig};
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_lightning_sandbox::http::pay_via;
use gate402_paywall::LimitsConfig;
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;

/// Echoes the request, streams SSE, and can be stopped and restarted on
/// the same port.
struct Upstream {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Names its software in `Server` and `X-Powered-By`, and the proxies
/// before it in `Via`, as many upstreams do.
async fn echo(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ([(&'static str, &'static str); 5], Json<Value>) {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let echoed = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    (
        [
            ("server", "EchoServer/0.1 Python/3.11"),
            ("x-powered-by", "Express"),
            ("x-aspnet-version", "4.0.30319"),
            ("x-aspnetmvc-version", "5.2"),
            ("via", "1.1 lb.internal:8080 (nginx), 1.1 10.0.0.7"),
        ],
        Json(echoed),
    )
}

/// Requests the upstream's `/slow` received.
static SLOW_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Requests the upstream's `/boom` (a 500 after acting) and `/stall` (an
/// answer later than the gateway waits) received.
static BOOM_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static STALL_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Requests the upstream's `/partial` (which acts on a request as soon as
/// it has its head) received.
static PARTIAL_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Texts the upstream's `/sms` sent, by every test of this file (they
/// run at once: each counts its own texts, [`sms_sent`]).
static SMS_SENT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Texts the upstream's `/sms/slow` received (it sends them 1.2 s later).
static SLOW_SMS_RECEIVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// How many of the texts sent were one of `texts`.
/// Waits until `condition` holds, at most 20 s (a loaded machine's
/// worst, not a measure of speed).
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sms_sent(texts: &[&str]) -> usize {
    let sent = SMS_SENT.lock().unwrap();
    sent.iter().filter(|t| texts.contains(&t.as_str())).count()
}

async fn send_sms(body: Bytes) -> impl axum::response::IntoResponse {
    // Numbered among the texts with the same words: each test's own.
    let n = {
        let text = String::from_utf8_lossy(&body).into_owned();
        let mut sent = SMS_SENT.lock().unwrap();
        sent.push(text.clone());
        sent.iter().filter(|t| **t == text).count()
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    (
        axum::http::StatusCode::CREATED,
        [("x-sms-id", format!("sms-{n}"))],
        format!("sent #{n}: {}", String::from_utf8_lossy(&body)),
    )
}

/// An answer that pauses `ms` milliseconds between its two halves.
async fn paused(axum::extract::Path(ms): axum::extract::Path<u64>) -> axum::body::Body {
    let halves =
        stream::iter([("first half, ", 0), ("second half", ms)]).then(|(half, wait)| async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok::<_, Infallible>(Bytes::from_static(half.as_bytes()))
        });
    axum::body::Body::from_stream(halves)
}

fn upstream_app() -> Router {
    Router::new()
        .route("/sms", any(send_sms))
        .route(
            "/sms/slow",
            any(|body: Bytes| async move {
                let text = String::from_utf8_lossy(&body).into_owned();
                SLOW_SMS_RECEIVED.lock().unwrap().push(text);
                tokio::time::sleep(Duration::from_millis(1200)).await;
                send_sms(body).await
            }),
        )
        .route("/pause/{ms}", any(paused))
        .route("/pass/sms", any(send_sms))
        .route(
            "/slow",
            any(|| async {
                SLOW_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(800)).await;
                "done, slowly"
            }),
        )
        .route(
            "/boom",
            any(|| async {
                BOOM_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "acted, then failed",
                )
            }),
        )
        .route(
            "/partial",
            any(|body: axum::body::Body| async move {
                PARTIAL_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match axum::body::to_bytes(body, usize::MAX).await {
                    Ok(body) => format!("uploaded {} bytes", body.len()),
                    Err(_) => "acted on part of an upload".to_owned(),
                }
            }),
        )
        .route(
            "/stall",
            any(|| async {
                STALL_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "too late"
            }),
        )
        .route(
            "/cached",
            get(|| async {
                (
                    [
                        ("cache-control", "public, max-age=60, s-maxage=600"),
                        ("cdn-cache-control", "public, max-age=600"),
                        ("cloudflare-cdn-cache-control", "max-age=600"),
                        ("surrogate-control", "max-age=600"),
                        ("x-accel-expires", "600"),
                    ],
                    "cache me",
                )
            }),
        )
        .route(
            "/credentialed",
            get(|| async {
                (
                    [
                        ("access-control-allow-origin", "https://other.example"),
                        ("access-control-allow-credentials", "true"),
                    ],
                    "cookie-bearing",
                )
            }),
        )
        .route(
            "/v1/redirect/{n}",
            get(
                |axum::extract::Path(n): axum::extract::Path<usize>, headers: HeaderMap| async move {
                    let host = headers["host"].to_str().unwrap().to_owned();
                    let (location, _) = REDIRECTS[n];
                    let location = location
                        .replace("{self}", &format!("http://{host}"))
                        .replace("{host}", &host);
                    (
                        axum::http::StatusCode::FOUND,
                        [
                            ("location", location.clone()),
                            ("content-location", location),
                        ],
                        "moved",
                    )
                },
            ),
        )
        .route(
            "/sse",
            get(|| async {
                let events = stream::iter(1..=3).then(|i| async move {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    Ok::<_, Infallible>(Event::default().data(format!("event {i}")))
                });
                Sse::new(events)
            }),
        )
        .fallback(any(echo))
}

/// The upstream's `/v1/redirect/{n}` answers a 302 to the first, in
/// `Location` and `Content-Location` (where `{self}` is its own origin,
/// `{host}` its host and port); a client of `/free/*` (forwarded to
/// `/v1/*`) is to be sent to the second.
const REDIRECTS: [(&str, &str); 15] = [
    ("//{host}/v1/landing?x=1", "/free/landing?x=1"),
    ("/\\{host}/v1/landing", "/free/landing"),
    ("\\\\{host}\\v1\\landing", "/free/landing"),
    ("//{host}", "/"),
    ("//{host}?x=1", "/?x=1"),
    (
        "//elsewhere.example/v1/landing",
        "//elsewhere.example/v1/landing",
    ),
    ("{self}//elsewhere.example/x", "/elsewhere.example/x"),
    ("{self}/v1/landing?x=1#top", "/free/landing?x=1#top"),
    ("/v1/landing", "/free/landing"),
    ("{self}/v1", "/free"),
    ("{self}/V1/Landing", "/free/Landing"),
    ("{self}/v1x/landing", "/v1x/landing"),
    ("{self}", "/"),
    (
        "https://elsewhere.example/v1/landing",
        "https://elsewhere.example/v1/landing",
    ),
    ("landing", "landing"),
];

impl Upstream {
    async fn start(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, upstream_app())
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Harness {
    gateway: Gateway,
    upstream: Upstream,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start(configure: impl FnOnce(&str) -> Vec<ServiceConfig>) -> Self {
        Self::start_limited(configure, LimitsConfig::default()).await
    }

    async fn start_limited(
        configure: impl FnOnce(&str) -> Vec<ServiceConfig>,
        limits: LimitsConfig,
    ) -> Self {
        Self::start_configured(configure, |config| config.limits = limits).await
    }

    async fn start_configured(
        configure: impl FnOnce(&str) -> Vec<ServiceConfig>,
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let upstream = Upstream::start("127.0.0.1:0".parse().unwrap()).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = GatewayConfig::default_with_services(configure(&upstream.url()));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.mpp.realm = "api.test".into();
        adjust(&mut config);
        let gateway = Gateway::start(&config, dir.path()).await.unwrap();
        Self {
            gateway,
            upstream,
            client: reqwest::Client::new(),
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    /// The metrics, where they are by default: on the admin listener,
    /// with the data dir's admin credential.
    async fn metrics(&self) -> String {
        let admin = self.gateway.admin_addr().expect("the admin API listens");
        let secret = std::fs::read_to_string(self.dir.path().join("admin_secret")).unwrap();
        let response = self
            .client
            .get(format!("http://{admin}/admin/api/metrics"))
            .bearer_auth(secret.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    fn base(&self) -> String {
        format!("http://{}", self.gateway.addr())
    }

    async fn offer(&self, response: reqwest::Response) -> Offer {
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        Offer::from_headers(response.headers()).unwrap()
    }

    /// GET without credentials, pay the 402; returns the offer and preimage.
    async fn buy(&self, path: &str) -> (Offer, [u8; 32]) {
        let offer = self
            .offer(self.client.get(self.url(path)).send().await.unwrap())
            .await;
        self.pay(offer).await
    }

    /// POST `body` without credentials, pay the 402 (its MPP challenge binds
    /// the body); returns the offer and preimage.
    async fn buy_post(&self, path: &str, body: &'static str) -> (Offer, [u8; 32]) {
        let offer = self
            .offer(
                self.client
                    .post(self.url(path))
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        self.pay(offer).await
    }

    async fn pay(&self, offer: Offer) -> (Offer, [u8; 32]) {
        let paid = pay_via(&self.client, &self.base(), &offer.bolt11)
            .await
            .unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        (offer, preimage)
    }

    async fn get(&self, path: &str, authorization: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header(AUTHORIZATION, authorization)
            .send()
            .await
            .unwrap()
    }
}

fn service(name: &str, path: &str, price: u64, upstream: &str) -> ServiceConfig {
    let mut s = ServiceConfig::proxied(name, path, price, upstream);
    s.priced.description = format!("{name} service");
    s
}

#[tokio::test]
async fn unpaid_request_gets_one_invoice_and_both_challenges() {
    let h = Harness::start(|up| vec![service("weather", "/weather", 10, up)]).await;
    let response = h.client.get(h.url("/weather")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let lines: Vec<String> = response
        .headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        lines[0].starts_with("L402 macaroon=\""),
        "L402 first: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("Payment ")));
    // Separate lines and one comma-joined line read the same.
    let separate = Offer::from_challenges(lines.iter().map(String::as_str)).unwrap();
    let joined = lines.join(", ");
    let together = Offer::from_challenges([joined.as_str()]).unwrap();
    assert_eq!(separate.bolt11, together.bolt11);
    assert_eq!(
        separate.payment.as_ref().unwrap().id,
        together.payment.as_ref().unwrap().id
    );
    assert_eq!(separate.amount_msat(), Some(10_000));
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/payment-required"
    );
    assert_eq!(body["price"]["amount"], "10");
    assert_eq!(body["invoice"], separate.bolt11);
    assert!(body["testMoney"].as_str().unwrap().contains("TEST MONEY"));

    // A client that says it speaks MPP gets the Payment challenge first.
    let response = h
        .client
        .get(h.url("/weather"))
        .header("accept-payment", "lightning/charge")
        .send()
        .await
        .unwrap();
    let first = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(first.starts_with("Payment "), "{first}");
}

/// What a `Payment-Receipt` names: the paid invoice's hash.
/// A redirect of the upstream's to itself names the route, never the
/// upstream's address (which the client would otherwise learn, and could
/// use to go around the paywall): nginx's `proxy_redirect default`.
#[tokio::test]
async fn a_redirect_to_the_upstream_itself_names_the_route() {
    let h = Harness::start(|up| {
        let mut free = service("free", "/free/*", 1, up);
        free.priced.auth = Auth::Off;
        free.upstream.as_mut().unwrap().rewrite = Rewrite {
            strip_prefix: Some("/free".into()),
            add_prefix: Some("/v1".into()),
        };
        vec![free]
    })
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (n, (sent, seen)) in REDIRECTS.iter().enumerate() {
        let response = client
            .get(h.url(&format!("/free/redirect/{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{sent}");
        for field in ["location", "content-location"] {
            let location = response.headers()[field].to_str().unwrap();
            assert_eq!(location, *seen, "{field}: {sent}");
            assert!(
                !location.contains(&h.upstream.addr.to_string()),
                "{field}: {sent}"
            );
        }
    }
}

/// Browsers: with `cors_origins`, a page of a listed origin has its
/// preflight answered (not a 402) and may read a 402's challenges and a
/// paid answer's receipt; a page of another origin may not; without the
/// setting there are no CORS fields at all.
#[tokio::test]
async fn pages_of_listed_origins_may_pay_from_a_browser() {
    const PAGE: &str = "https://app.example.com";
    let h = Harness::start_configured(
        |up| {
            let mut free = service("free", "/free/*", 1, up);
            free.priced.auth = Auth::Off;
            free.upstream.as_mut().unwrap().rewrite = Rewrite {
                strip_prefix: Some("/free".into()),
                add_prefix: None,
            };
            vec![service("weather", "/weather", 10, up), free]
        },
        |c| c.server.cors_origins = vec![PAGE.into()],
    )
    .await;
    let from = |origin: &str, request: reqwest::RequestBuilder| request.header("origin", origin);
    let preflight = from(
        PAGE,
        h.client
            .request(reqwest::Method::OPTIONS, h.url("/weather")),
    )
    .header("access-control-request-method", "GET")
    .header("access-control-request-headers", "authorization")
    .send()
    .await
    .unwrap();
    assert_eq!(preflight.status(), StatusCode::OK);
    let field = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default()
    };
    assert_eq!(field(&preflight, "access-control-allow-origin"), PAGE);
    assert!(field(&preflight, "access-control-allow-headers").contains("authorization"));
    assert!(preflight
        .headers()
        .get("access-control-allow-credentials")
        .is_none());

    let unpaid = from(PAGE, h.client.get(h.url("/weather")))
        .send()
        .await
        .unwrap();
    assert_eq!(field(&unpaid, "access-control-allow-origin"), PAGE);
    assert!(field(&unpaid, "access-control-expose-headers").contains("www-authenticate"));
    let offer = h.offer(unpaid).await;
    let (offer, preimage) = h.pay(offer).await;
    let paid = from(PAGE, h.client.get(h.url("/weather")))
        .header(AUTHORIZATION, credential("MPP", &offer, &preimage))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::OK);
    assert_eq!(field(&paid, "access-control-allow-origin"), PAGE);
    assert!(field(&paid, "access-control-expose-headers").contains("payment-receipt"));
    assert!(paid.headers().contains_key("payment-receipt"));

    // The upstream's own CORS fields never ride along with the gateway's
    // grant: its `Allow-Credentials` would let the page read answers
    // made with the user's cookies.
    let credentialed = from(PAGE, h.client.get(h.url("/free/credentialed")))
        .send()
        .await
        .unwrap();
    assert_eq!(field(&credentialed, "access-control-allow-origin"), PAGE);
    assert!(credentialed
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    assert_eq!(credentialed.text().await.unwrap(), "cookie-bearing");

    let elsewhere = from("https://evil.example", h.client.get(h.url("/weather")))
        .send()
        .await
        .unwrap();
    assert!(elsewhere
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let plain = Harness::start(|up| vec![service("weather", "/weather", 10, up)]).await;
    let unpaid = from(PAGE, plain.client.get(plain.url("/weather")))
        .send()
        .await
        .unwrap();
    assert!(unpaid
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // An OPTIONS that no page sent is the API's, as without CORS.
    let options = |h: &Harness| {
        h.client
            .request(reqwest::Method::OPTIONS, h.url("/weather"))
            .send()
    };
    let (with, without) = (options(&h).await.unwrap(), options(&plain).await.unwrap());
    assert_eq!(with.status(), without.status());
    assert_eq!(with.status(), StatusCode::PAYMENT_REQUIRED);
}

fn receipt_reference(response: &reqwest::Response) -> String {
    let receipt = response.headers()["payment-receipt"].to_str().unwrap();
    gate402_mpp::receipt::parse(receipt).unwrap().reference
}

/// The same credential with a caveat of the holder's own added: other
/// bytes, the same payment.
fn attenuated(l402: &str) -> String {
    let mut credential = gate402_l402::L402Credential::from_authorization(l402).unwrap();
    credential.macaroons[0].add_first_party_caveat(b"note=mine".to_vec());
    credential.to_authorization()
}

/// A service sold per request (the default): one payment, one request,
/// through either door and in any spelling of the L402 token.
/// Routes match regardless of ASCII case; the part a route matched goes
/// upstream as the route spells it, so a case-sensitive upstream serves
/// what was paid for (it was sent the client's spelling, answered 404, and
/// the payment was spent on that).
#[tokio::test]
async fn a_paid_request_in_another_case_reaches_the_route_as_configured() {
    let h = Harness::start(|up| {
        vec![
            service("weather", "/Weather", 10, up),
            service("files", "/Files/*", 10, up),
        ]
    })
    .await;
    for (asked, forwarded) in [
        ("/wEATHER/", "/Weather/"),
        ("/FILES/Report.PDF", "/Files/Report.PDF"),
    ] {
        let (offer, preimage) = h.buy(asked).await;
        let l402 = offer.l402_authorization(&preimage).unwrap();
        let served = h.get(asked, &l402).await;
        assert_eq!(served.status(), StatusCode::OK, "{asked}");
        let echoed: Value = served.json().await.unwrap();
        assert_eq!(echoed["path"], forwarded, "{echoed}");
    }
}

#[tokio::test]
async fn a_per_request_payment_serves_one_request_through_either_door() {
    let h = Harness::start(|up| vec![service("weather", "/weather", 10, up)]).await;
    let unpaid = h.client.get(h.url("/weather")).send().await.unwrap();
    let body: Value = unpaid.json().await.unwrap();
    assert_eq!(body["sells"], "request");
    assert!(body.get("passSeconds").is_none(), "{body}");

    // L402 first: served once, then every spelling of it is spent, and so
    // is the MPP credential for the same invoice.
    let (offer, preimage) = h.buy("/weather").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let first = h.get("/weather", &l402).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        receipt_reference(&first),
        hex::encode(offer.invoice.payment_hash())
    );
    let lsat = l402.replacen("L402 ", "LSAT ", 1);
    let payment = offer.payment_authorization(&preimage).unwrap();
    for (spelling, replay) in [
        ("the same token", l402.clone()),
        ("LSAT", lsat),
        ("attenuated", attenuated(&l402)),
        ("the MPP credential of its invoice", payment),
    ] {
        let response = h.get("/weather", &replay).await;
        assert_eq!(
            response.status(),
            StatusCode::PAYMENT_REQUIRED,
            "{spelling} served twice"
        );
        assert!(response.headers().get(WWW_AUTHENTICATE).is_some());
    }

    // MPP first: the L402 token of the same invoice is then spent too.
    let (offer, preimage) = h.buy("/weather").await;
    let payment = offer.payment_authorization(&preimage).unwrap();
    assert_eq!(h.get("/weather", &payment).await.status(), StatusCode::OK);
    let replay = h.get("/weather", &payment).await;
    assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = replay.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/invalid-challenge"
    );
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(
        h.get("/weather", &l402).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );

    // Concurrent uses of one token: exactly one is served.
    let (offer, preimage) = h.buy("/weather").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let uses = (0..8).map(|_| h.get("/weather", &l402));
    let served = futures_util::future::join_all(uses)
        .await
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(served, 1);
}

/// A service sold as a pass: the L402 token serves until its period ends;
/// an MPP charge still serves one request.
#[tokio::test]
async fn a_pass_serves_its_period_through_l402_and_one_request_through_mpp() {
    let h = Harness::start(|up| {
        let mut news = service("news", "/news", 10, up);
        news.priced = news.priced.pass(600);
        vec![news]
    })
    .await;
    let unpaid = h.client.get(h.url("/news")).send().await.unwrap();
    let body: Value = unpaid.json().await.unwrap();
    assert_eq!(body["sells"], "pass");
    assert_eq!(body["passSeconds"], 600);

    let (offer, preimage) = h.buy("/news").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    for _ in 0..3 {
        let response = h.get("/news", &l402).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            receipt_reference(&response),
            hex::encode(offer.invoice.payment_hash())
        );
    }
    let (offer, preimage) = h.buy("/news").await;
    let payment = offer.payment_authorization(&preimage).unwrap();
    let response = h.get("/news", &payment).await;
    assert_eq!(response.status(), StatusCode::OK);
    let receipt =
        gate402_mpp::receipt::parse(response.headers()["payment-receipt"].to_str().unwrap())
            .unwrap();
    assert_eq!(
        gate402_mpp::receipt::challenge_id(&receipt),
        Some(offer.payment.as_ref().unwrap().id.as_str())
    );
    let replay = h.get("/news", &payment).await;
    assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(
        replay.headers().get(WWW_AUTHENTICATE).is_some(),
        "a fresh challenge"
    );
}

/// A pass lasts its seconds from its first use, not from its invoice:
/// paid and left unused it keeps them all, and once used it ends on time
/// (the invoice's expiry is not added to it), with a fresh challenge.
#[tokio::test]
async fn a_pass_lasts_its_seconds_from_its_first_use() {
    let h = Harness::start(|up| {
        let mut news = service("news", "/news", 10, up);
        news.priced = news.priced.pass(4);
        vec![news]
    })
    .await;
    let (offer, preimage) = h.buy("/news").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    tokio::time::sleep(Duration::from_millis(4100)).await;
    // Counted in whole seconds from the second of the first use: at
    // least 3 s of real time for the uses, over at most 4 s after it
    // (1 s more for a check in whole seconds).
    assert_eq!(h.get("/news", &l402).await.status(), StatusCode::OK);
    let first_use = tokio::time::Instant::now();
    assert_eq!(h.get("/news", &l402).await.status(), StatusCode::OK);
    tokio::time::sleep_until(first_use + Duration::from_millis(5100)).await;
    let ended = h.get("/news", &l402).await;
    assert_eq!(ended.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(
        ended.headers().get(WWW_AUTHENTICATE).is_some(),
        "a fresh challenge"
    );
    let problem: Value = ended.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("payment-expired"),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("first use"),
        "{problem}"
    );
}

/// A pass's invoice buys the pass or one request through the MPP door,
/// whichever is used first, never both: the MPP credential served one
/// request and the L402 token of the same invoice then served the whole
/// pass, and after a pass the MPP credential served one more request.
#[tokio::test]
async fn a_pass_invoice_buys_the_pass_or_one_mpp_request_not_both() {
    let h = Harness::start(|up| {
        let mut news = service("news", "/news", 10, up);
        news.priced = news.priced.pass(600);
        vec![news]
    })
    .await;
    let problem = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let problem: Value = response.json().await.unwrap();
        problem["detail"].as_str().unwrap().to_owned()
    };
    // The MPP door first: one request, and no pass.
    let (offer, preimage) = h.buy("/news").await;
    let mpp = offer.payment_authorization(&preimage).unwrap();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(h.get("/news", &mpp).await.status(), StatusCode::OK);
    let refused = problem(h.get("/news", &l402).await).await;
    assert!(refused.contains("starts no pass"), "{refused}");
    problem(h.get("/news", &mpp).await).await;
    // The pass first: the MPP credential of its invoice is spent.
    let (offer, preimage) = h.buy("/news").await;
    let mpp = offer.payment_authorization(&preimage).unwrap();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(h.get("/news", &l402).await.status(), StatusCode::OK);
    let refused = problem(h.get("/news", &mpp).await).await;
    assert!(refused.contains("already been used"), "{refused}");
    assert_eq!(h.get("/news", &l402).await.status(), StatusCode::OK);
    // Its first uses at once all start it.
    let (offer, preimage) = h.buy("/news").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let statuses = futures_util::future::join_all(
        (0..8).map(|_| async { h.get("/news", &l402).await.status() }),
    )
    .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

/// What a token was sold as decides, not what the service sells today: a
/// config change neither spends passes already sold nor turns sold
/// single-use tokens into passes.
#[tokio::test]
async fn a_token_keeps_what_it_was_sold_as_across_a_reload() {
    let h = Harness::start(|up| vec![service("weather", "/weather", 10, up)]).await;
    let (offer, preimage) = h.buy("/weather").await;
    let single = offer.l402_authorization(&preimage).unwrap();
    let mut weather = service("weather", "/weather", 10, &h.upstream.url());
    let reload = |weather: &ServiceConfig| {
        h.gateway
            .services_handle()
            .set(std::slice::from_ref(weather))
            .unwrap()
    };
    weather.priced = weather.priced.clone().pass(600);
    reload(&weather);
    let (offer, preimage) = h.buy("/weather").await;
    let pass = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(h.get("/weather", &single).await.status(), StatusCode::OK);
    assert_eq!(
        h.get("/weather", &single).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    weather.priced.sells = gate402_gateway::config::Sells::Request;
    reload(&weather);
    for _ in 0..2 {
        assert_eq!(h.get("/weather", &pass).await.status(), StatusCode::OK);
    }
}

/// A client that hangs up once the upstream has its request has spent the
/// payment: otherwise one payment would buy any number of upstream calls
/// (each a side effect, a computation), each cut off before its answer.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_has_spent_its_payment() {
    let h = Harness::start(|up| vec![service("slow", "/slow", 3, up)]).await;
    let slow_calls = || SLOW_CALLS.load(std::sync::atomic::Ordering::SeqCst);
    for door in ["L402", "Payment"] {
        let before = slow_calls();
        let (offer, preimage) = h.buy_post("/slow", "send one SMS").await;
        let credential = credential(door, &offer, &preimage);
        let cut = tokio::spawn(
            h.client
                .post(h.url("/slow"))
                .header(AUTHORIZATION, &credential)
                .body("send one SMS")
                .send(),
        );
        // It gives up once the upstream has the request (800 ms before
        // the answer).
        until("the upstream to have the request", || slow_calls() > before).await;
        cut.abort();
        assert!(
            cut.await.is_err_and(|e| e.is_cancelled()),
            "{door}: the client gave up first"
        );
        // Once the cut request has been served to its end, it is spent.
        for _ in 0..2 {
            let again = past_conflict(|| {
                h.client
                    .post(h.url("/slow"))
                    .header(AUTHORIZATION, &credential)
                    .body("send one SMS")
                    .send()
            })
            .await;
            assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED, "{door}");
        }
        let retry = h.get("/slow", &credential).await;
        assert_eq!(retry.status(), StatusCode::PAYMENT_REQUIRED, "{door}");
        assert_eq!(
            slow_calls() - before,
            1,
            "{door}: the upstream ran once for one payment"
        );
        // The node has the money and the upstream served it: in the books.
        let recorded = booked(&h, offer.invoice.payment_hash()).await;
        let [payment] = recorded.as_slice() else {
            panic!("{door}: the spent payment is not in the books: {recorded:?}");
        };
        assert_eq!((payment.served, payment.amount_msat), (1, 3_000), "{door}");
    }
}

/// The books' rows of payment `hash`, once written (served payments are
/// written in batches), or none after 5 s.
async fn booked(h: &Harness, hash: [u8; 32]) -> Vec<gate402_store::PaymentRow> {
    let query = gate402_store::PaymentQuery {
        since: 0,
        until: u64::MAX,
        service: None,
        scheme: None,
        payment_hash: Some(hash),
        limit: 10,
    };
    for _ in 0..50 {
        let recorded = h.gateway.paywall().store().payments(&query).await.unwrap();
        if !recorded.is_empty() {
            return recorded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Vec::new()
}

/// The credential `door` (`L402` or `Payment`) answers `offer` with.
fn credential(door: &str, offer: &Offer, preimage: &[u8; 32]) -> String {
    match door {
        "L402" => offer.l402_authorization(preimage),
        _ => offer.payment_authorization(preimage),
    }
    .unwrap()
}

/// Reads `served`'s content, "hello world", and finds the payment of
/// `offer` spent in the store `db` once it has all of it; then its end.
async fn whole_only_once_spent(
    mut served: reqwest::Response,
    db: &rusqlite::Connection,
    offer: &Offer,
    what: &str,
) {
    let mut content = Vec::new();
    while content.len() < b"hello world".len() {
        let chunk = served.chunk().await.unwrap().expect("more content");
        content.extend_from_slice(&chunk);
    }
    let consumed: i64 = db
        .query_row(
            "SELECT consumed FROM challenges WHERE id = ?1",
            [format!("p:{}", hex::encode(offer.invoice.payment_hash()))],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(content, b"hello world");
    assert_eq!(
        consumed, 1,
        "{what}: all its content out, its claim not written spent"
    );
    assert_eq!(served.chunk().await.unwrap(), None);
}

/// A paid answer is whole at its client only once what it spends is
/// written: a gateway killed the next moment has spent the payment (a
/// claim whose commit still waited for its batch would be released at the
/// next start and the credential served again; a debit left unsettled
/// would be given back). Read from the store's file at the moment the
/// client has the whole answer, for answers with a body and without
/// (HEAD), through both doors and from a balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_answer_is_whole_only_once_its_spend_is_written() {
    let h = Harness::start(|up| {
        let mut balance = service("balance", "/balance", 3, up);
        balance.priced = balance.priced.balance(50);
        vec![service("echo", "/echo", 3, up), balance]
    })
    .await;
    let db = rusqlite::Connection::open_with_flags(
        h.dir.path().join("gate402.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let consumed = |hash: [u8; 32]| -> i64 {
        db.query_row(
            "SELECT consumed FROM challenges WHERE id = ?1",
            [format!("p:{}", hex::encode(hash))],
            |r| r.get(0),
        )
        .unwrap()
    };
    for door in ["L402", "Payment"] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            for n in 0..10 {
                let (offer, preimage) = h.buy("/echo").await;
                let served = h
                    .client
                    .request(method.clone(), h.url("/echo"))
                    .header(AUTHORIZATION, credential(door, &offer, &preimage))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(served.status(), StatusCode::OK, "{door} {method} #{n}");
                served.bytes().await.unwrap();
                assert_eq!(
                    consumed(offer.invoice.payment_hash()),
                    1,
                    "{door} {method} #{n}: answered whole, its claim not written spent"
                );
            }
        }
    }
    let (offer, preimage) = h.buy("/balance").await;
    let token = credential("L402", &offer, &preimage);
    for n in 0..20 {
        let served = h.get("/balance", &token).await;
        assert_eq!(served.status(), StatusCode::OK, "#{n}");
        served.bytes().await.unwrap();
        let unsettled: i64 = db
            .query_row("SELECT count(*) FROM session_debits", [], |r| r.get(0))
            .unwrap();
        assert_eq!(unsettled, 0, "#{n}: answered whole, its debit not settled");
    }
}

/// The same for an answer of unknown length (chunked) whose last data
/// comes with its end: its last data leave only once the claim is
/// written, so a client that has every byte of the content (before the
/// chunked end) finds the credential spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_has_all_its_content_only_once_its_spend_is_written() {
    let chunked = raw_upstream(
        |_| {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_vec()
        },
        Duration::ZERO,
    );
    let h = Harness::start(move |_| vec![service("chunked", "/chunked", 3, &chunked)]).await;
    let db = rusqlite::Connection::open_with_flags(
        h.dir.path().join("gate402.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    for door in ["L402", "Payment"] {
        for n in 0..10 {
            let (offer, preimage) = h.buy("/chunked").await;
            let served = h
                .get("/chunked", &credential(door, &offer, &preimage))
                .await;
            assert_eq!(served.status(), StatusCode::OK, "{door} #{n}");
            whole_only_once_spent(served, &db, &offer, &format!("{door} #{n}")).await;
        }
    }
}

/// An answer of unknown length whose end comes a moment after its last
/// data (the upstream's connection task not yet run on a busy machine, a
/// stream that waits a little before it ends) still has all its content at
/// the client only once its spend is written: the last data is held for a
/// time, not for a count of the runtime's turns. Here the layer guards an
/// app whose stream ends 2 ms after its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_end_comes_a_moment_late_is_whole_only_once_spent() {
    let dir = tempfile::tempdir().unwrap();
    let (paywall, sandbox) = joke_paywall(dir.path()).await;
    let late_end = || async {
        let content = stream::once(async { Ok::<_, Infallible>(Bytes::from("hello world")) });
        let end = stream::once(tokio::time::sleep(Duration::from_millis(2)))
            .filter_map(|()| std::future::ready(None::<Result<Bytes, Infallible>>));
        axum::body::Body::from_stream(content.chain(end))
    };
    let app: Router = Router::new()
        .route("/joke", get(late_end))
        .layer(paywall.layer())
        .merge(gate402_lightning_sandbox::http::router(sandbox));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // Each write leaves at once, not when the last is acknowledged.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        tcp.set_nodelay(true).unwrap();
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("s.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let client = reqwest::Client::new();
    for door in ["L402", "Payment"] {
        for n in 0..5 {
            let (offer, preimage) = bought_at(&client, &base, "/joke").await;
            let served = client
                .get(format!("{base}/joke"))
                .header(AUTHORIZATION, credential(door, &offer, &preimage))
                .send()
                .await
                .unwrap();
            assert_eq!(served.status(), StatusCode::OK, "{door} #{n}");
            whole_only_once_spent(served, &db, &offer, &format!("{door} #{n}")).await;
        }
    }
}

/// A credential replayed right after its request was answered (its body
/// read to the end) is told it was used, not that another request is
/// using it (its commit may not be written yet; a body of known length is
/// not polled after its last frame, so the claim was let go only when the
/// server dropped it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_right_after_the_answer_is_told_the_credential_was_used() {
    let h = Harness::start(|up| vec![service("echo", "/echo", 3, up)]).await;
    for door in ["L402", "Payment"] {
        for n in 0..25 {
            let (offer, preimage) = h.buy("/echo").await;
            let credential = credential(door, &offer, &preimage);
            let served = h.get("/echo", &credential).await;
            assert_eq!(served.status(), StatusCode::OK);
            served.bytes().await.unwrap();
            let replay = h.get("/echo", &credential).await;
            let status = replay.status();
            let body = replay.text().await.unwrap();
            assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{door} #{n}: {body}");
            assert!(body.contains("already been used"), "{door} #{n}: {body}");
        }
    }
}

/// A client that sends a paid request and closes its connection at once,
/// while the request's claim is still being taken, leaves the payment
/// free: retried, it is served (or, had the request reached the upstream,
/// spent), never refused as in use by another request until the claim's
/// lease runs out.
#[tokio::test]
async fn a_client_that_leaves_while_its_claim_is_taken_can_retry_at_once() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(|up| vec![service("echo", "/echo", 3, up)]).await;
    for door in ["L402", "Payment"] {
        for n in 0..10 {
            let (offer, preimage) = h.buy("/echo").await;
            let credential = credential(door, &offer, &preimage);
            let mut socket = tokio::net::TcpStream::connect(h.gateway.addr())
                .await
                .unwrap();
            let request =
                format!("GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: {credential}\r\n\r\n");
            socket.write_all(request.as_bytes()).await.unwrap();
            drop(socket);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let response = h.get("/echo", &credential).await;
                let status = response.status();
                let body = response.text().await.unwrap();
                if status == StatusCode::OK || body.contains("already been used") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{door} #{n}: still held 5 s after its client left: {body}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An upstream reached over TLS that takes connections and never answers
/// their handshake: a request to it waits for its connection until the
/// connect timeout, and never reaches it.
struct Unresponsive {
    url: String,
    accepted: tokio::sync::watch::Receiver<usize>,
}

impl Unresponsive {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (count, accepted) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                count.send_modify(|n| *n += 1);
            }
        });
        Self { url, accepted }
    }

    /// Sends a GET of `path` (with `authorization`) to `h` and closes the
    /// connection once the gateway is connecting to this upstream for it.
    async fn leave(&mut self, h: &Harness, path: &str, authorization: Option<&str>) {
        use tokio::io::AsyncWriteExt;
        let before = *self.accepted.borrow();
        let mut socket = tokio::net::TcpStream::connect(h.gateway.addr())
            .await
            .unwrap();
        let authorization = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{authorization}\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            self.accepted.wait_for(|&n| n > before),
        )
        .await
        .expect("the gateway connects to the upstream")
        .unwrap();
        drop(socket);
    }
}

/// A client that leaves while the gateway still waits for a connection to
/// the upstream has spent nothing: its request never reached the upstream
/// (once the attempt gives up, its payment through either door, its debit
/// from a balance, its free call are all given back, as they are for a
/// client that waits for the 502).
#[tokio::test]
async fn a_client_that_leaves_before_the_upstream_has_its_request_spends_nothing() {
    let mut silent = Unresponsive::start().await;
    let h = Harness::start(|_| {
        let stalled = |name: &str, path: &str| {
            let mut s = service(name, path, 3, &silent.url);
            s.upstream.as_mut().unwrap().connect_timeout = Duration::from_secs(1);
            s
        };
        let mut balance = stalled("balance", "/balance");
        balance.priced = balance.priced.balance(5);
        let mut free = stalled("free", "/free");
        free.priced.auth = Auth::Freebie(1);
        vec![stalled("paid", "/paid"), balance, free]
    })
    .await;
    // Each attempt gives up after the connect timeout (1 s); what it
    // held until then is answered 409.
    let deadline = || Instant::now() + Duration::from_secs(10);
    for door in ["L402", "Payment"] {
        let (offer, preimage) = h.buy("/paid").await;
        let credential = credential(door, &offer, &preimage);
        silent.leave(&h, "/paid", Some(&credential)).await;
        let retry = retried(&h, "/paid", &credential).await;
        let status = retry.status();
        let body = retry.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{door}: {body}");
    }

    let (offer, preimage) = h.buy("/balance").await;
    let credential = credential("L402", &offer, &preimage);
    // Opened by a client that waits: nothing spent.
    let opened = h.get("/balance", &credential).await;
    assert_eq!(opened.status(), StatusCode::BAD_GATEWAY);
    let spent = || async {
        let id = offer.invoice.payment_hash();
        let session = h.gateway.paywall().store().session(&id).await.unwrap();
        session.expect("the balance was opened").spent_msat
    };
    assert_eq!(spent().await, 0);
    for _ in 0..2 {
        silent.leave(&h, "/balance", Some(&credential)).await;
    }
    let until = deadline();
    while spent().await > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        spent().await,
        0,
        "debits of requests that never reached the upstream"
    );

    // One free call: used by a client that left, it is given back.
    // (Refused as over the one free call until it is given back.)
    silent.leave(&h, "/free", None).await;
    let until = deadline();
    let again = loop {
        let again = h.client.get(h.url("/free")).send().await.unwrap();
        if again.status() != StatusCode::PAYMENT_REQUIRED || Instant::now() > until {
            break again;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        again.status(),
        StatusCode::BAD_GATEWAY,
        "the free call is still free"
    );
}

/// A client that leaves halfway through its upload has not spent its
/// payment: the upstream never had the whole request, so it is given back
/// for a retry (counted, as for a client whose body breaks off while it
/// stays, among the few failures a payment is given back for).
#[tokio::test]
async fn a_client_that_leaves_halfway_through_its_upload_can_retry() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(|up| vec![service("echo", "/echo", 3, up)]).await;
    let (offer, preimage) = h.buy_post("/echo", "0123456789").await;
    let credential = credential("L402", &offer, &preimage);
    let mut socket = tokio::net::TcpStream::connect(h.gateway.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: {credential}\r\nContent-Length: 10\r\n\r\n01234"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(socket);
    let retry = past_conflict(|| {
        h.client
            .post(h.url("/echo"))
            .header(AUTHORIZATION, &credential)
            .body("0123456789")
            .send()
    })
    .await;
    let status = retry.status();
    let body = retry.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A paid request whose body breaks off after the upstream had its head
/// (and part of the body) may have made it act: the payment is given back
/// for a retry, but as for an upstream that fails, not any number of
/// times, or cutting uploads short would buy any number of runs.
#[tokio::test]
async fn uploads_that_keep_breaking_off_spend_the_payment() {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(|up| vec![service("partial", "/partial", 3, up)]).await;
    let (offer, preimage) = h.buy_post("/partial", "hello").await;
    let credential = credential("L402", &offer, &preimage);
    let before = PARTIAL_CALLS.load(SeqCst);
    let tries = gate402_paywall::FAILURES_PER_PAYMENT as usize;
    for attempt in 1..=tries {
        let mut socket = tokio::net::TcpStream::connect(h.gateway.addr())
            .await
            .unwrap();
        let head = format!(
            "POST /partial HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {credential}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        // The upstream has the request before its next chunk fails to
        // parse.
        until("the upstream to have the request", || {
            PARTIAL_CALLS.load(SeqCst) - before == attempt
        })
        .await;
        socket.write_all(b"ZZ\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
            .await
            .expect("answered")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("broke off"),
            "attempt {attempt}: {answer}"
        );
        assert_eq!(
            PARTIAL_CALLS.load(SeqCst) - before,
            attempt,
            "the upstream acted on attempt {attempt}"
        );
    }
    let spent = h
        .client
        .post(h.url("/partial"))
        .header(AUTHORIZATION, &credential)
        .body("hello")
        .send()
        .await
        .unwrap();
    let status = spent.status();
    let body = spent.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::PAYMENT_REQUIRED,
        "after {tries} broken uploads the payment is spent: {body}"
    );
    assert_eq!(PARTIAL_CALLS.load(SeqCst) - before, tries);
}

/// A paid POST whose answer is lost is not lost: with `Idempotency-Key`
/// its retry gets the kept response and receipt, and the upstream acted
/// once, through each door and for a pass; the key with another body is
/// refused, and a second request with it while the first is served waits.
#[tokio::test]
async fn a_paid_request_with_an_idempotency_key_survives_a_lost_answer() {
    let h = Harness::start(|up| {
        let mut pass = service("sms-pass", "/pass/sms", 3, up);
        pass.priced = pass.priced.pass(600);
        vec![service("sms", "/sms", 3, up), pass]
    })
    .await;
    let sent = || sms_sent(&["hello", "another text"]);
    for (door, path) in [("L402", "/sms"), ("Payment", "/sms"), ("L402", "/pass/sms")] {
        let (offer, preimage) = h.buy_post(path, "hello").await;
        let credential = credential(door, &offer, &preimage);
        let key = format!("\"{door}{path}\"");
        let post = |client: &reqwest::Client, body: &'static str| {
            client
                .post(h.url(path))
                .header(AUTHORIZATION, &credential)
                .header("idempotency-key", &key)
                .body(body)
                .send()
        };
        let before = sent();
        // The answer is lost: its client leaves once the upstream has
        // the request (and answers 800 ms later).
        let cut = tokio::spawn(post(&h.client, "hello"));
        until("the upstream to have the request", || sent() > before).await;
        cut.abort();
        // While the first is still served, a retry waits for it.
        let early = post(&h.client, "hello").await.unwrap();
        assert_eq!(early.status(), StatusCode::CONFLICT, "{door} {path}");
        assert!(early.headers().contains_key("retry-after"));
        for _ in 0..2 {
            let replay = past_conflict(|| post(&h.client, "hello")).await;
            assert_eq!(replay.status(), StatusCode::CREATED, "{door} {path}");
            assert_eq!(replay.headers()["idempotent-replayed"], "true");
            assert_eq!(
                replay.headers()["x-sms-id"],
                format!("sms-{}", before + 1).as_str()
            );
            assert_eq!(
                receipt_reference(&replay),
                hex::encode(offer.invoice.payment_hash())
            );
            assert_eq!(
                replay.text().await.unwrap(),
                format!("sent #{}: hello", before + 1)
            );
        }
        // The method in another case is the same request (it is sent on
        // as POST): replayed, not refused as another request.
        let lower = past_conflict(|| {
            h.client
                .request(reqwest::Method::from_bytes(b"post").unwrap(), h.url(path))
                .header(AUTHORIZATION, &credential)
                .header("idempotency-key", &key)
                .body("hello")
                .send()
        })
        .await;
        assert_eq!(lower.status(), StatusCode::CREATED, "{door} {path}: post");
        assert_eq!(lower.headers()["idempotent-replayed"], "true");
        // One key, another body: 422; through MPP the credential itself
        // pays for the body its challenge bound, so it is refused first.
        let other = post(&h.client, "another text").await.unwrap();
        let refused = match door {
            "Payment" => StatusCode::PAYMENT_REQUIRED,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        assert_eq!(
            other.status(),
            refused,
            "{door} {path}: one key, another body"
        );
        assert_eq!(sent() - before, 1, "{door} {path}: the upstream acted once");
    }
    // Without the key, a spent per-request payment is spent.
    let (offer, preimage) = h.buy_post("/sms", "x").await;
    let credential = offer.payment_authorization(&preimage).unwrap();
    let once = h
        .client
        .post(h.url("/sms"))
        .header(AUTHORIZATION, &credential)
        .header("idempotency-key", "k1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(once.status(), StatusCode::CREATED);
    let again = h
        .client
        .post(h.url("/sms"))
        .header(AUTHORIZATION, &credential)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED);
    // A malformed key is refused before anything is spent.
    let (offer, preimage) = h.buy_post("/sms", "x").await;
    let credential = offer.payment_authorization(&preimage).unwrap();
    for bad in ["\"\"", "\"open", "k\u{7f}"] {
        let refused = h
            .client
            .post(h.url("/sms"))
            .header(AUTHORIZATION, &credential)
            .header("idempotency-key", bad)
            .body("x")
            .send()
            .await;
        if let Ok(refused) = refused {
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
    let served = h
        .client
        .post(h.url("/sms"))
        .header(AUTHORIZATION, &credential)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::CREATED);
}

/// A kept response goes back only to a credential that proves the
/// payment: an x402 payment without a preimage (which anyone who saw the
/// offer can send) gets no replay of what the payer was answered.
#[tokio::test]
async fn a_kept_response_is_not_replayed_to_a_credential_without_a_secret() {
    let h = Harness::start(|up| {
        let mut sms = service("sms", "/sms", 3, up);
        sms.priced.schemes = Schemes::ALL;
        vec![sms]
    })
    .await;
    let (offer, preimage) = h.buy("/sms").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let served = h
        .client
        .post(h.url("/sms"))
        .header(AUTHORIZATION, &l402)
        .header("idempotency-key", "\"victim-key\"")
        .body("private text")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::CREATED);
    let sent_before = sms_sent(&["private text"]);
    let seen_offer = offer.x402.as_ref().expect("an x402 offer").signature(None);
    let stolen = h
        .client
        .post(h.url("/sms"))
        .header("payment-signature", &seen_offer)
        .header("idempotency-key", "\"victim-key\"")
        .body("private text")
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(stolen.headers().get("idempotent-replayed").is_none());
    assert!(!stolen.text().await.unwrap().contains("private text"));
    assert_eq!(
        sms_sent(&["private text"]),
        sent_before,
        "nor was the upstream called again"
    );
    // The payer, with its preimage, still gets its answer again.
    let replay = h
        .client
        .post(h.url("/sms"))
        .header(AUTHORIZATION, &l402)
        .header("idempotency-key", "\"victim-key\"")
        .body("private text")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
}

/// A challenge issued for a request without a body (a GET) pays for no
/// body: its credential on a POST with one is refused, the upstream never
/// sees the body, and the payment stays unspent for the request it was for.
#[tokio::test]
async fn a_get_challenge_does_not_pay_for_a_post_body() {
    let h = Harness::start(|up| vec![service("sms", "/sms", 3, up)]).await;
    let (offer, preimage) = h.buy("/sms").await;
    let payment = offer.payment_authorization(&preimage).unwrap();
    let smuggled_body = r#"{"amount":1000000}"#;
    let sent_before = sms_sent(&[smuggled_body]);
    let smuggled = h
        .client
        .post(h.url("/sms"))
        .header(AUTHORIZATION, &payment)
        .body(smuggled_body)
        .send()
        .await
        .unwrap();
    assert_eq!(smuggled.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(sms_sent(&[smuggled_body]), sent_before);
    let body_less = h
        .client
        .post(h.url("/sms"))
        .header(AUTHORIZATION, &payment)
        .send()
        .await
        .unwrap();
    assert_eq!(body_less.status(), StatusCode::CREATED);
}

/// A gateway selling `name` on `path` at `price` sat through every door,
/// x402's included.
async fn start_with_x402(name: &str, path: &str, price: u64) -> Harness {
    Harness::start(|up| {
        let mut priced = service(name, path, price, up);
        priced.priced.schemes = gate402_gateway::config::Schemes::ALL;
        vec![priced]
    })
    .await
}

/// A 402's x402 offer: the first of its `accepts`.
fn x402_accepted(unpaid: &reqwest::Response) -> Value {
    use base64::Engine as _;
    let required: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(unpaid.headers()["payment-required"].as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(required["x402Version"], 2, "{required}");
    required["accepts"][0].clone()
}

/// An x402 payment of the offer `accepted`, without a preimage (the node
/// is asked whether its invoice was paid).
fn x402_payment(accepted: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(
        json!({"x402Version": 2, "scheme": "exact", "network": "lightning",
               "payload": {"invoice": accepted["extra"]["invoice"]}, "accepted": accepted})
        .to_string(),
    )
}

/// x402's door on the same invoice: the offer is bound to its service and
/// price, paid only once the node holds the invoice as settled, served
/// once, and its header never reaches the upstream.
#[tokio::test]
async fn x402_payments_are_bound_settled_and_single_use() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let h = Harness::start(|up| {
        let mut cheap = service("cheap", "/cheap", 1, up);
        cheap.priced.schemes = gate402_gateway::config::Schemes::ALL;
        let mut dear = service("dear", "/dear", 1, up);
        dear.priced.schemes = gate402_gateway::config::Schemes::ALL;
        vec![cheap, dear]
    })
    .await;
    // Configured services leave x402 off unless asked.
    let plain = Harness::start(|up| vec![service("plain", "/plain", 1, up)]).await;
    let unpaid = plain.client.get(plain.url("/plain")).send().await.unwrap();
    assert!(unpaid.headers().get("payment-required").is_none());

    let unpaid = h.client.get(h.url("/cheap?x=1")).send().await.unwrap();
    assert_eq!(unpaid.status(), StatusCode::PAYMENT_REQUIRED);
    let required: Value = serde_json::from_slice(
        &b64.decode(unpaid.headers()["payment-required"].as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(required["x402Version"], 2);
    assert_eq!(required["resource"]["url"], "/cheap?x=1");
    let accepted = required["accepts"][0].clone();
    assert_eq!(accepted["amount"], "1000");
    assert_eq!(accepted["extra"]["paymentMethod"], "lightning");
    let offer = Offer::from_headers(unpaid.headers()).unwrap();
    assert_eq!(accepted["extra"]["invoice"], offer.bolt11.as_str());
    let pay_with = |path: &'static str, value: String| {
        h.client
            .get(h.url(path))
            .header("payment-signature", value)
            .send()
    };
    // Not paid yet: the node says so.
    let early = pay_with("/cheap", x402_payment(&accepted)).await.unwrap();
    assert_eq!(early.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = early.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/payment-action-required"
    );
    pay_via(&h.client, &h.base(), &offer.bolt11).await.unwrap();
    // Another service at the same price: not its offer.
    let elsewhere = pay_with("/dear", x402_payment(&accepted)).await.unwrap();
    assert_eq!(elsewhere.status(), StatusCode::PAYMENT_REQUIRED);
    // Another amount claimed for it: not its offer either.
    let mut inflated = accepted.clone();
    inflated["amount"] = "1".into();
    inflated["extra"]["binding"] = "00".into();
    let forged = pay_with("/cheap", x402_payment(&inflated)).await.unwrap();
    assert_eq!(forged.status(), StatusCode::PAYMENT_REQUIRED);
    // A preimage that is not the invoice's: said so (the invoice is paid),
    // and nothing is spent.
    let wrong = b64.encode(
        json!({"x402Version": 2, "scheme": "exact", "network": "lightning",
               "payload": {"invoice": accepted["extra"]["invoice"], "preimage": "00".repeat(32)},
               "accepted": accepted})
        .to_string(),
    );
    let wrong = pay_with("/cheap", wrong).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(
        body["type"], "https://paymentauth.org/problems/lightning/invalid-preimage",
        "{body}"
    );

    let served = pay_with("/cheap", x402_payment(&accepted)).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let response: Value = serde_json::from_slice(
        &b64.decode(served.headers()["payment-response"].as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(response["success"], true);
    assert_eq!(
        response["transaction"],
        hex::encode(offer.invoice.payment_hash())
    );
    assert!(served.headers().contains_key("payment-receipt"));
    let echoed: Value = served.json().await.unwrap();
    assert!(
        echoed["headers"].get("payment-signature").is_none(),
        "the upstream saw the payment: {echoed}"
    );
    let replay = pay_with("/cheap", x402_payment(&accepted)).await.unwrap();
    assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);
}

/// An x402 payment of an invoice the node no longer knows (the sandbox
/// forgets an unpaid invoice a day after it expires; some nodes delete
/// canceled invoices): a 402 that says so, not a server error.
#[tokio::test]
async fn an_x402_payment_of_an_invoice_the_node_forgot_is_refused() {
    let h = start_with_x402("cheap", "/cheap", 1).await;
    let unpaid = h.client.get(h.url("/cheap")).send().await.unwrap();
    assert_eq!(unpaid.status(), StatusCode::PAYMENT_REQUIRED);
    let accepted = x402_accepted(&unpaid);
    let hash = Offer::from_headers(unpaid.headers())
        .unwrap()
        .invoice
        .payment_hash();
    // Forgotten once written (new invoices are written in batches).
    let sandbox =
        rusqlite::Connection::open(h.dir.path().join("sandbox/invoices.sqlite3")).unwrap();
    sandbox.busy_timeout(Duration::from_secs(5)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let deleted = sandbox
            .execute("DELETE FROM invoices WHERE payment_hash = ?1", [&hash[..]])
            .unwrap();
        if deleted == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the invoice was never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = h
        .client
        .get(h.url("/cheap"))
        .header("payment-signature", x402_payment(&accepted))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["type"], "https://paymentauth.org/problems/payment-expired",
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no record of this invoice"),
        "{body}"
    );
}

/// A payment spent through its shortest-lived door (MPP's challenge ends
/// with the invoice) is remembered as long as its longest-lived door (the
/// L402 token and the x402 offer, an hour after): purging expired claims
/// in between frees nothing for a second request.
#[tokio::test]
async fn a_spent_payment_outlives_every_door_of_its_invoice() {
    let h = start_with_x402("weather", "/weather", 2).await;
    let unpaid = h.client.get(h.url("/weather")).send().await.unwrap();
    let accepted = x402_accepted(&unpaid);
    let offer = Offer::from_headers(unpaid.headers()).unwrap();
    let paid = pay_via(&h.client, &h.base(), &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let mpp = offer.payment_authorization(&preimage).unwrap();
    let served = h.get("/weather", &mpp).await;
    assert_eq!(served.status(), StatusCode::OK);
    served.bytes().await.unwrap();
    // The claim is committed once the body is out, in a batch: waited for
    // (until then the store has it held, and a probe finds it in flight).
    let key = gate402_paywall::claims::ClaimKey::payment(&offer.invoice.payment_hash());
    let probe = gate402_store::ClaimHolder {
        replica: "probe".into(),
        token: "probe".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = gate402_paywall::unix_now();
        let store = h.gateway.paywall().store();
        match store
            .claim(key.as_str(), &probe, now + 3600, now + 1, now)
            .await
        {
            Ok(gate402_store::Reservation::Consumed) => break,
            Ok(gate402_store::Reservation::InFlight) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("the served payment's claim: {other:?}"),
        }
    }
    // Past the invoice's (and so the MPP challenge's) end, before the token's.
    let later = gate402_paywall::unix_now() + 600 + 60;
    h.gateway
        .paywall()
        .store()
        .purge_expired(later)
        .await
        .unwrap();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(
        h.get("/weather", &l402).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    let x402 = h
        .client
        .get(h.url("/weather"))
        .header("payment-signature", x402_payment(&accepted))
        .send()
        .await
        .unwrap();
    assert_eq!(x402.status(), StatusCode::PAYMENT_REQUIRED);
    // A later end written into a paid offer breaks its binding.
    let unpaid = h.client.get(h.url("/weather")).send().await.unwrap();
    let mut fresh = x402_accepted(&unpaid);
    pay_via(
        &h.client,
        &h.base(),
        fresh["extra"]["invoice"].as_str().unwrap(),
    )
    .await
    .unwrap();
    fresh["extra"]["validUntil"] = (fresh["extra"]["validUntil"].as_u64().unwrap() + 86_400).into();
    let forged = h
        .client
        .get(h.url("/weather"))
        .header("payment-signature", x402_payment(&fresh))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn cheap_challenge_does_not_unlock_an_expensive_route() {
    let h = Harness::start(|up| {
        vec![
            service("cheap", "/cheap", 1, up),
            service("dear", "/dear", 100, up),
        ]
    })
    .await;
    let (offer, preimage) = h.buy("/cheap").await;
    let payment = offer.payment_authorization(&preimage).unwrap();
    let response = h.get("/dear", &payment).await;
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = response.json().await.unwrap();
    // Its id was made under the cheap route's key: not a challenge of this one.
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/invalid-challenge"
    );
    // The L402 token is bound to its service the same way.
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(
        h.get("/dear", &l402).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // And the cheap route still takes it.
    assert_eq!(h.get("/cheap", &payment).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn expired_and_tampered_tokens() {
    // A token lasts its lifetime counted from its invoice's expiry, in
    // whole seconds from the second it was issued in: 2 + 4 s, at least
    // 5 s of real time, so a slow machine's purchase and checks fit.
    let h = Harness::start_configured(
        |up| {
            let mut s = service("brief", "/brief", 5, up);
            s.priced.token_lifetime_secs = 4;
            vec![s]
        },
        |config| config.invoice_expiry_secs = 2,
    )
    .await;
    let (offer, preimage) = h.buy("/brief").await;
    let bought = tokio::time::Instant::now();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(h.get("/brief", &l402).await.status(), StatusCode::OK);

    // Tampered: one bit of the macaroon's signature flipped.
    let mut macaroon = offer.l402.as_ref().unwrap().macaroon.to_bytes();
    *macaroon.last_mut().unwrap() ^= 1;
    let tampered = format!("L402 {}:{}", base64_std(&macaroon), hex::encode(preimage));
    let response = h.get("/brief", &tampered).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get(WWW_AUTHENTICATE).is_some());
    // Wrong preimage.
    let wrong = offer.l402_authorization(&[0; 32]).unwrap();
    assert_eq!(
        h.get("/brief", &wrong).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Garbage.
    assert_eq!(
        h.get("/brief", "L402 garbage:zz").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.get("/brief", "Payment !!!").await.status(),
        StatusCode::PAYMENT_REQUIRED
    );

    // Issued before `bought`, so over at most 6 s after it; 1 s more for
    // a check in whole seconds.
    tokio::time::sleep_until(bought + Duration::from_millis(7100)).await;
    let response = h.get("/brief", &l402).await;
    assert_eq!(
        response.status(),
        StatusCode::PAYMENT_REQUIRED,
        "expired token: pay again"
    );
    assert!(
        response.headers().get(WWW_AUTHENTICATE).is_some(),
        "with a fresh challenge"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/payment-expired"
    );
}

/// A pass is checked in full once, then known by its value; what the
/// clock and the route decide is decided again on every use: once used,
/// it is still refused on another service, and once expired.
#[tokio::test]
async fn a_pass_used_before_is_refused_elsewhere_and_once_expired() {
    // It lasts its lifetime counted from its invoice's expiry, in whole
    // seconds from the second it was issued in: 2 + 4 s, at least 5 s of
    // real time, so a slow machine's purchase and uses fit inside it.
    let h = Harness::start_configured(
        |up| {
            let mut brief = service("brief", "/brief", 5, up);
            brief.priced.sells = gate402_paywall::Sells::Pass;
            brief.priced.token_lifetime_secs = 4;
            let mut other = service("other", "/other", 5, up);
            other.priced.sells = gate402_paywall::Sells::Pass;
            vec![brief, other]
        },
        |config| config.invoice_expiry_secs = 2,
    )
    .await;
    let (offer, preimage) = h.buy("/brief").await;
    let bought = tokio::time::Instant::now();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    for _ in 0..3 {
        assert_eq!(h.get("/brief", &l402).await.status(), StatusCode::OK);
    }
    assert_eq!(
        h.get("/other", &l402).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(h.get("/brief", &l402).await.status(), StatusCode::OK);
    // Issued before `bought`, so over at most 6 s after it; 1 s more for
    // a check in whole seconds.
    tokio::time::sleep_until(bought + Duration::from_millis(7100)).await;
    let response = h.get("/brief", &l402).await;
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://paymentauth.org/problems/payment-expired"
    );
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn freebies_are_counted_per_client() {
    let h = Harness::start(|up| {
        let mut s = service("taste", "/taste", 3, up);
        s.priced.auth = Auth::Freebie(2);
        vec![s]
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            h.client.get(h.url("/taste")).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        h.client.get(h.url("/taste")).send().await.unwrap().status(),
        StatusCode::PAYMENT_REQUIRED
    );
}

/// A free call is paid for by its success, as a paid one is: one the
/// upstream failed on is given back (at most as many times as there are
/// free calls: it may have acted), one that never reached it always.
#[tokio::test]
async fn free_calls_that_fail_are_given_back() {
    let mut h = Harness::start(|up| {
        let mut boom = service("boom", "/boom", 3, up);
        boom.priced.auth = Auth::Freebie(2);
        let mut taste = service("taste", "/taste", 3, up);
        taste.priced.auth = Auth::Freebie(2);
        vec![boom, taste]
    })
    .await;
    let status = |h: &Harness, path: &'static str| {
        let request = h.client.get(h.url(path));
        async move { request.send().await.unwrap().status() }
    };
    // Two failures given back, two more counted: the upstream had four
    // free calls, twice the two a client has.
    for attempt in 1..=4 {
        assert_eq!(
            status(&h, "/boom").await,
            StatusCode::INTERNAL_SERVER_ERROR,
            "free call {attempt}"
        );
    }
    assert_eq!(status(&h, "/boom").await, StatusCode::PAYMENT_REQUIRED);

    let addr = h.upstream.addr;
    h.upstream.stop().await;
    for _ in 0..5 {
        assert_eq!(status(&h, "/taste").await, StatusCode::BAD_GATEWAY);
    }
    h.upstream = Upstream::start(addr).await;
    for _ in 0..2 {
        assert_eq!(status(&h, "/taste").await, StatusCode::OK);
    }
    assert_eq!(status(&h, "/taste").await, StatusCode::PAYMENT_REQUIRED);
}

#[tokio::test]
async fn proxy_preserves_the_request_and_hides_the_credential() {
    let h = Harness::start(|up| {
        let mut s = service("api", "/api/*", 2, up);
        s.priced.methods = vec![Method::POST];
        let up = s.upstream.as_mut().unwrap();
        up.rewrite = Rewrite {
            strip_prefix: Some("/api".into()),
            add_prefix: Some("/v2".into()),
        };
        up.headers = vec![(
            "x-api-key".parse().unwrap(),
            "upstream-secret".parse().unwrap(),
        )];
        s.priced.schemes = Schemes::MPP;
        vec![s]
    })
    .await;
    let offer = h
        .offer(
            h.client
                .post(h.url("/api/items?x=1"))
                .body(r#"{"name":"widget"}"#)
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert!(offer.l402.is_none(), "mpp only");
    let paid = pay_via(&h.client, &h.base(), &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let response = h
        .client
        .post(h.url("/api/items?x=1"))
        .header(
            AUTHORIZATION,
            offer.payment_authorization(&preimage).unwrap(),
        )
        .header("x-custom", "kept")
        .header("x-original-url", "/admin")
        .header("x-http-method-override", "DELETE")
        .header("true-client-ip", "6.6.6.6")
        .header("cf-connecting-ip", "6.6.6.6")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        // The operator's field in a client's CGI spelling: replaced too.
        .header("x_api_key", "the client's own")
        .header("x.api.key", "the client's own")
        .body(r#"{"name":"widget"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Nor the hosts behind it (RFC 9110 §7.6.3: a gateway through a
    // firewall should not forward their names and ports).
    for field in [
        "server",
        "x-powered-by",
        "x-aspnet-version",
        "x-aspnetmvc-version",
        "via",
    ] {
        assert!(
            response.headers().get(field).is_none(),
            "the upstream's software or hosts reached the client: {field}: {:?}",
            response.headers().get(field)
        );
    }
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v2/items");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body"], r#"{"name":"widget"}"#);
    assert_eq!(echo["headers"]["x-custom"], "kept");
    assert_eq!(echo["headers"]["x-api-key"], "upstream-secret");
    assert!(
        echo["headers"].get("authorization").is_none(),
        "credential not forwarded"
    );
    assert!(
        echo["headers"].get("x-hop").is_none(),
        "hop-by-hop header dropped"
    );
    assert!(echo["headers"]["x-forwarded-for"].is_string());
    for name in [
        "x-original-url",
        "x-http-method-override",
        "true-client-ip",
        "cf-connecting-ip",
        "x_api_key",
        "x.api.key",
    ] {
        assert!(
            echo["headers"].get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    // A GET matches no service (methods = POST): nothing is proxied, and
    // the answer names the methods the path is served for (it was a 404,
    // as for a path no service takes).
    let wrong_method = h.client.get(h.url("/api/items")).send().await.unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let problem: Value = wrong_method.json().await.unwrap();
    assert_eq!(
        problem["detail"], "this path is served for POST, not for GET",
        "{problem}"
    );
    assert_eq!(
        h.client
            .get(h.url("/elsewhere"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn server_sent_events_arrive_event_by_event() {
    let h = Harness::start(|up| vec![service("stream", "/sse", 1, up)]).await;
    let (offer, preimage) = h.buy("/sse").await;
    let response = h
        .get("/sse", &offer.l402_authorization(&preimage).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let mut stream = response.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        if chunk.windows(6).any(|w| w == b"event ") {
            arrivals.push(started.elapsed());
        }
    }
    assert!(
        text.contains("event 1") && text.contains("event 3"),
        "{text}"
    );
    assert!(
        arrivals.len() >= 3,
        "events arrived in {} chunks: {arrivals:?}",
        arrivals.len()
    );
    assert!(
        arrivals[2] - arrivals[0] >= Duration::from_millis(1000),
        "not buffered: {arrivals:?}"
    );
}

/// An upstream that had a paid request and failed (a 5xx, or no answer
/// before the gateway's timeout) may have acted on it: the payment is
/// given back for a retry, but not any number of times.
#[tokio::test]
async fn an_upstream_that_keeps_failing_on_one_payment_spends_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let h = Harness::start(|up| {
        let mut stall = service("stall", "/stall", 2, up);
        stall.upstream.as_mut().unwrap().response_timeout = Duration::from_millis(300);
        vec![service("boom", "/boom", 2, up), stall]
    })
    .await;
    let tries = gate402_paywall::FAILURES_PER_PAYMENT as usize;
    for (path, calls, status) in [
        ("/boom", &BOOM_CALLS, StatusCode::INTERNAL_SERVER_ERROR),
        ("/stall", &STALL_CALLS, StatusCode::GATEWAY_TIMEOUT),
    ] {
        for door in ["L402", "Payment"] {
            let (offer, preimage) = h.buy(path).await;
            let credential = credential(door, &offer, &preimage);
            let before = calls.load(SeqCst);
            for attempt in 1..=tries {
                let failed = h.get(path, &credential).await;
                assert_eq!(failed.status(), status, "{path} {door} attempt {attempt}");
                assert!(failed.headers().get("payment-receipt").is_none());
            }
            let spent = h.get(path, &credential).await;
            assert_eq!(
                spent.status(),
                StatusCode::PAYMENT_REQUIRED,
                "{path} {door}: after {tries} failures the payment is spent"
            );
            assert_eq!(
                calls.load(SeqCst) - before,
                tries,
                "{path} {door}: the upstream had {tries} tries on one payment, no more"
            );
            // The node kept the money: the books show the payment, which
            // served no request.
            let recorded = booked(&h, offer.invoice.payment_hash()).await;
            let [payment] = recorded.as_slice() else {
                panic!("{path} {door}: the spent payment is not in the books: {recorded:?}");
            };
            assert_eq!(payment.served, 0, "{path} {door}");
            assert_eq!(payment.amount_msat, 2_000, "{path} {door}");
        }
    }
}

#[tokio::test]
async fn upstream_down_after_payment_keeps_the_credential() {
    let mut h = Harness::start(|up| vec![service("flaky", "/flaky", 7, up)]).await;
    let (offer, preimage) = h.buy("/flaky").await;
    let payment = offer.payment_authorization(&preimage).unwrap();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let addr = h.upstream.addr;
    h.upstream.stop().await;
    let down = h.get("/flaky", &payment).await;
    assert_eq!(down.status(), StatusCode::BAD_GATEWAY);
    assert!(down.headers().get("payment-receipt").is_none());
    // An upstream that cannot be connected to never had the request:
    // retries against it cost nothing, however many.
    for _ in 0..2 * gate402_paywall::FAILURES_PER_PAYMENT {
        for credential in [&payment, &l402] {
            assert_eq!(
                h.get("/flaky", credential).await.status(),
                StatusCode::BAD_GATEWAY
            );
        }
    }
    h.upstream = Upstream::start(addr).await;
    let back = h.get("/flaky", &payment).await;
    assert_eq!(
        back.status(),
        StatusCode::OK,
        "the same MPP credential works once the upstream is back"
    );
    for spent in [&payment, &l402] {
        assert_eq!(
            h.get("/flaky", spent).await.status(),
            StatusCode::PAYMENT_REQUIRED,
            "and only once, through either door"
        );
    }

    // The same for a per-request L402 token.
    let (offer, preimage) = h.buy("/flaky").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    h.upstream.stop().await;
    assert_eq!(
        h.get("/flaky", &l402).await.status(),
        StatusCode::BAD_GATEWAY
    );
    h.upstream = Upstream::start(addr).await;
    assert_eq!(h.get("/flaky", &l402).await.status(), StatusCode::OK);
    assert_eq!(
        h.get("/flaky", &l402).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
}

#[tokio::test]
async fn discovery_health_and_metrics() {
    let h = Harness::start(|up| {
        let mut weather = service("weather", "/weather", 10, up);
        weather.priced = weather.priced.pass(600);
        vec![weather, service("maps", "/maps/*", 20, up)]
    })
    .await;
    let services: Value = h
        .client
        .get(h.url("/.well-known/l402-services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(services["protocols"], json!(["L402", "MPP"]));
    assert_eq!(services["services"][0]["pricing"]["amount"], 10);
    assert_eq!(services["services"][1]["endpoint"], "/maps/*");
    // What a payment buys, said before paying.
    assert_eq!(services["services"][0]["sells"], "pass");
    assert_eq!(services["services"][0]["passSeconds"], 600);
    assert_eq!(services["services"][1]["sells"], "request");
    let openapi: Value = h
        .client
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let offer = &openapi["paths"]["/weather"]["get"]["x-payment-info"]["offers"][0];
    assert_eq!(offer["amount"], "10");
    assert_eq!(offer["method"], "lightning");
    assert_eq!(
        openapi["paths"]["/weather"]["get"]["x-payment-info"]["offers"][1]["sells"],
        "pass"
    );
    assert!(openapi["paths"]["/maps/{rest}"]["get"]["responses"]["402"].is_object());
    assert_eq!(
        h.client
            .get(h.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (offer, preimage) = h.buy("/weather").await;
    // A pass: three requests served, one payment received.
    for _ in 0..3 {
        assert_eq!(
            h.get("/weather", &offer.l402_authorization(&preimage).unwrap())
                .await
                .status(),
            StatusCode::OK
        );
    }
    // Revenue is booked once the payment row is written, after the answer.
    let mut metrics = String::new();
    for _ in 0..250 {
        metrics = h.metrics().await;
        if metrics.contains("gate402_revenue_sats_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains("gate402_challenges_issued_total{service=\"weather\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gate402_payments_verified_total{service=\"weather\",scheme=\"L402\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gate402_payments_total{service=\"weather\",scheme=\"L402\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gate402_revenue_sats_total{service=\"weather\"} 10"),
        "{metrics}"
    );
    // Payments and revenue are the operator's: not on the serving port
    // unless `public_metrics` says so, and not without a credential.
    let public = h.client.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    assert!(!public.text().await.unwrap().contains("gate402_"));
    let admin = h.gateway.admin_addr().unwrap();
    let anonymous = h
        .client
        .get(format!("http://{admin}/admin/api/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(!anonymous.text().await.unwrap().contains("gate402_"));
}

/// The offer of `path` on the app at `base`, paid through its sandbox:
/// the offer and the preimage.
async fn bought_at(client: &reqwest::Client, base: &str, path: &str) -> (Offer, [u8; 32]) {
    let unpaid = client.get(format!("{base}{path}")).send().await.unwrap();
    let offer = Offer::from_headers(unpaid.headers()).unwrap();
    let paid = pay_via(client, base, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    (offer, preimage)
}

/// A paywall of its own (the layer used without the gateway) that sells
/// `/joke` for 3 sat, on a sandbox backend and a SQLite store in `dir`.
async fn joke_paywall(
    dir: &std::path::Path,
) -> (gate402_paywall::Paywall, gate402_lightning_sandbox::Sandbox) {
    use gate402_paywall::{Paywall, PricedService};
    use std::sync::Arc;
    let sandbox = gate402_lightning_sandbox::Sandbox::open(dir).unwrap();
    let store = gate402_store::SqliteStore::open(&dir.join("s.sqlite3")).unwrap();
    let paywall = Paywall::builder(
        Arc::new(sandbox.clone()),
        Arc::new(store),
        "a secret of at least thirty-two bytes!!",
    )
    .unwrap()
    .realm("app.test")
    .services([PricedService::new("joke", "/joke", 3)])
    .build()
    .await
    .unwrap();
    (paywall, sandbox)
}

#[tokio::test]
async fn the_layer_guards_an_axum_app() {
    let dir = tempfile::tempdir().unwrap();
    let (paywall, sandbox) = joke_paywall(dir.path()).await;
    // The few lines an app adds:
    let app: Router = Router::new()
        .route("/joke", get(|| async { "a paid joke" }))
        .route("/free", get(|| async { "free" }))
        .layer(paywall.layer())
        .merge(gate402_lightning_sandbox::http::router(sandbox));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{base}/free"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "free"
    );
    let (offer, preimage) = bought_at(&client, &base, "/joke").await;
    let response = client
        .get(format!("{base}/joke"))
        .header(AUTHORIZATION, offer.l402_authorization(&preimage).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("payment-receipt"));
    assert_eq!(response.text().await.unwrap(), "a paid joke");
}

#[tokio::test]
async fn a_token_paid_before_a_restart_still_works() {
    let upstream = Upstream::start("127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = GatewayConfig::default_with_services(vec![service(
        "weather",
        "/weather",
        4,
        &upstream.url(),
    )]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let client = reqwest::Client::new();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let mut bought = Vec::new();
    for _ in 0..2 {
        let response = client.get(format!("{base}/weather")).send().await.unwrap();
        let offer = Offer::from_headers(response.headers()).unwrap();
        let paid = pay_via(&client, &base, &offer.bolt11).await.unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        bought.push((offer, preimage));
    }
    gateway.shutdown().await.unwrap();

    // Same data directory: same store, same MPP secret, same sandbox.
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let [(first, first_preimage), (second, second_preimage)] = &bought[..] else {
        unreachable!()
    };
    for (authorization, status) in [
        (first.l402_authorization(first_preimage), StatusCode::OK),
        (
            second.payment_authorization(second_preimage),
            StatusCode::OK,
        ),
        // One request per payment, whichever door it came through.
        (
            first.payment_authorization(first_preimage),
            StatusCode::PAYMENT_REQUIRED,
        ),
    ] {
        let response = client
            .get(format!("{base}/weather"))
            .header(AUTHORIZATION, authorization.unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
    }
}

/// A paid request still at the upstream when a stop's grace period ends
/// is settled by what the upstream answers before the gateway exits, not
/// left in flight to be released at the next start and sent upstream again
/// whatever it did: one that acted (a POST) is spent, its answer kept for
/// its Idempotency-Key; one whose repeat does nothing more (a GET) is
/// given back, answered on its retry (the stop cut it, not its client).
#[tokio::test]
async fn a_paid_request_cut_off_by_a_stop_is_settled_before_the_gateway_exits() {
    let upstream = Upstream::start("127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        GatewayConfig::default_with_services(vec![service("sms", "/sms/slow", 3, &upstream.url())]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.server.shutdown_grace_secs = 1;
    let client = reqwest::Client::new();
    for (method, keyed, text) in [
        (reqwest::Method::POST, true, "sent as a stop began"),
        (reqwest::Method::POST, false, "sent as a stop began, no key"),
        (reqwest::Method::GET, false, "read as a stop began"),
    ] {
        let gateway = Gateway::start(&config, dir.path()).await.unwrap();
        let base = format!("http://{}", gateway.addr());
        let send = |base: &str| {
            client
                .request(method.clone(), format!("{base}/sms/slow"))
                .body(text)
        };
        let unpaid = send(&base).send().await.unwrap();
        let offer = Offer::from_headers(unpaid.headers()).unwrap();
        let paid = pay_via(&client, &base, &offer.bolt11).await.unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        let credential = offer.l402_authorization(&preimage).unwrap();
        let paid = |base: &str| {
            let request = send(base).header(AUTHORIZATION, &credential);
            match keyed {
                true => request.header("idempotency-key", "\"cut-by-a-stop\""),
                false => request,
            }
            .send()
        };
        let cut = tokio::spawn(paid(&base));
        until("the upstream to have the request", || {
            SLOW_SMS_RECEIVED.lock().unwrap().iter().any(|t| t == text)
        })
        .await;
        gateway.shutdown().await.unwrap();
        assert!(cut.await.unwrap().is_err(), "{text}: cut off by the stop");
        assert_eq!(sms_sent(&[text]), 1, "{text}");

        let gateway = Gateway::start(&config, dir.path()).await.unwrap();
        let again = paid(&format!("http://{}", gateway.addr())).await.unwrap();
        match (method.clone(), keyed) {
            (reqwest::Method::POST, true) => {
                assert_eq!(again.status(), StatusCode::CREATED, "{text}");
                assert_eq!(again.headers()["idempotent-replayed"], "true", "{text}");
                assert_eq!(sms_sent(&[text]), 1, "{text}: sent once");
            }
            (reqwest::Method::POST, false) => {
                assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED, "{text}");
                assert_eq!(sms_sent(&[text]), 1, "{text}: sent once");
            }
            _ => {
                assert_eq!(again.status(), StatusCode::CREATED, "{text}: answered");
                assert!(again.headers().get("idempotent-replayed").is_none());
                // Spent now: once answered, it answers no more.
                let spent = paid(&format!("http://{}", gateway.addr())).await.unwrap();
                assert_eq!(spent.status(), StatusCode::PAYMENT_REQUIRED, "{text}");
            }
        }
        gateway.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let h = Harness::start(|up| vec![service("stream", "/sse", 1, up)]).await;
    let (offer, preimage) = h.buy("/sse").await;
    let response = h
        .get("/sse", &offer.l402_authorization(&preimage).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let Harness {
        gateway, client, ..
    } = h;
    let addr = gateway.addr();
    let stopping = tokio::spawn(gateway.shutdown());
    // The stream started before the shutdown completes in full...
    let body = response.text().await.unwrap();
    assert!(body.contains("event 3"), "{body}");
    stopping.await.unwrap().unwrap();
    // ...and nothing new is accepted after it.
    assert!(client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn terminates_tls_with_the_configured_certificate() {
    let upstream = Upstream::start("127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut free = service("free", "/free", 1, &upstream.url());
    free.priced.auth = Auth::Off;
    let mut config = GatewayConfig::default_with_services(vec![
        service("weather", "/weather", 4, &upstream.url()),
        free,
    ]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.tls = Some(gate402_gateway::config::TlsConfig {
        cert: cert.clone(),
        key,
    });
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", gateway.addr())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/weather", gateway.addr().port());
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    // The upstream is told the scheme and the host and port the client
    // named.
    let free = format!("https://localhost:{}/free", gateway.addr().port());
    let echo: Value = client
        .get(&free)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        echo["headers"]["x-forwarded-host"],
        format!("localhost:{}", gateway.addr().port())
    );
    // Plain HTTP to the TLS port is not served.
    assert!(reqwest::get(format!("http://{}/weather", gateway.addr()))
        .await
        .map(|r| r.status() != StatusCode::PAYMENT_REQUIRED)
        .unwrap_or(true));
    gateway.shutdown().await.unwrap();
}

#[tokio::test]
async fn unpaid_invoices_are_capped_per_client_and_paid_traffic_flows() {
    let h = Harness::start_limited(
        |up| vec![service("data", "/data", 3, up)],
        LimitsConfig {
            client_requests_per_second: None,
            service_requests_per_second: None,
            unpaid_invoices_per_minute: Some(3.0),
        },
    )
    .await;
    let (offer, preimage) = h.buy("/data").await;
    for _ in 0..2 {
        let response = h.client.get(h.url("/data")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    }
    // A fourth invoice within the minute: 429, no invoice.
    let response = h.client.get(h.url("/data")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("unpaid invoices"));
    // Paying is not limited: the paid token still gets through.
    let response = h
        .get("/data", &offer.l402_authorization(&preimage).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = h.metrics().await;
    assert!(metrics.contains("reason=\"unpaid-invoices\""), "{metrics}");
}

#[tokio::test]
async fn requests_are_rate_limited_per_client_and_service() {
    let h = Harness::start_limited(
        |up| {
            let mut free = service("free", "/free", 1, up);
            free.priced.auth = Auth::Off;
            vec![free, service("other", "/other", 1, up)]
        },
        LimitsConfig {
            client_requests_per_second: Some(1.0),
            service_requests_per_second: None,
            unpaid_invoices_per_minute: None,
        },
    )
    .await;
    // A burst of two, then 429 with Retry-After.
    for _ in 0..2 {
        let response = h.client.get(h.url("/free")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = h.client.get(h.url("/free")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    // Another service has its own bucket.
    let response = h.client.get(h.url("/other")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    // And the bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = h.client.get(h.url("/free")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_told_apart_and_others_cannot_pose() {
    let limits = LimitsConfig {
        client_requests_per_second: None,
        service_requests_per_second: None,
        unpaid_invoices_per_minute: Some(2.0),
    };
    let from = |h: &Harness, forwarded_for: &str| {
        h.client
            .get(h.url("/data"))
            .header("x-forwarded-for", forwarded_for)
            .send()
    };
    // The gateway sits behind a balancer on 127.0.0.1.
    let behind = Harness::start_configured(
        |up| vec![service("data", "/data", 3, up)],
        |config| {
            config.limits = limits;
            config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        },
    )
    .await;
    for _ in 0..2 {
        let response = from(&behind, "198.51.100.1").await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    }
    // The same client, with an entry of its own forged in front: still itself.
    let forged = from(&behind, "6.6.6.6, 198.51.100.1").await.unwrap();
    assert_eq!(forged.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another client behind the same balancer has its own allowance, and
    // IPv6 clients are counted per /64.
    let other = from(&behind, "198.51.100.2").await.unwrap();
    assert_eq!(other.status(), StatusCode::PAYMENT_REQUIRED);
    for (address, expected) in [
        ("2001:db8:1:2::1", StatusCode::PAYMENT_REQUIRED),
        ("2001:db8:1:2::2", StatusCode::PAYMENT_REQUIRED),
        ("2001:db8:1:2:ffff::3", StatusCode::TOO_MANY_REQUESTS),
    ] {
        assert_eq!(
            from(&behind, address).await.unwrap().status(),
            expected,
            "{address}"
        );
    }

    // Not behind a trusted proxy: the header is the client's word, ignored.
    let direct = Harness::start_limited(|up| vec![service("data", "/data", 3, up)], limits).await;
    let statuses = [
        from(&direct, "198.51.100.1").await.unwrap().status(),
        from(&direct, "198.51.100.2").await.unwrap().status(),
        from(&direct, "198.51.100.3").await.unwrap().status(),
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::PAYMENT_REQUIRED,
            StatusCode::PAYMENT_REQUIRED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn a_paid_answer_is_never_left_to_shared_caches() {
    let h = Harness::start(|up| {
        vec![
            service("cached", "/cached", 2, up),
            service("echo", "/echo", 2, up),
        ]
    })
    .await;
    // An upstream that says nothing of caching: private all the same.
    let (offer, preimage) = h.buy("/echo").await;
    let response = h
        .get("/echo", &offer.l402_authorization(&preimage).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "private");
    let (offer, preimage) = h.buy("/cached").await;
    let response = h
        .get("/cached", &offer.l402_authorization(&preimage).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "max-age=60, private");
    for targeted in [
        "cdn-cache-control",
        "cloudflare-cdn-cache-control",
        "surrogate-control",
        "x-accel-expires",
    ] {
        assert!(response.headers().get(targeted).is_none(), "{targeted}");
    }
}

/// Nor is a free call's answer on a paid service: a shared cache would
/// serve it to everyone, free calls spent or not.
#[tokio::test]
async fn a_free_call_of_a_paid_service_is_never_left_to_shared_caches() {
    let h = Harness::start(|up| {
        let mut taste = service("cached", "/cached", 2, up);
        taste.priced.auth = Auth::Freebie(1);
        vec![taste]
    })
    .await;
    let response = h.client.get(h.url("/cached")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "max-age=60, private");
    for targeted in ["cdn-cache-control", "surrogate-control", "x-accel-expires"] {
        assert!(response.headers().get(targeted).is_none(), "{targeted}");
    }
}

/// A `Payment` credential for `challenge`, its echo trimmed by `trim` as a
/// client might.
fn payment_credential(
    challenge: &gate402_mpp::PaymentChallenge,
    preimage: &[u8; 32],
    trim: impl FnOnce(&mut gate402_mpp::ChallengeEcho),
) -> String {
    let mut echo = challenge.to_echo();
    trim(&mut echo);
    let credential = gate402_mpp::PaymentCredential::new(
        echo,
        gate402_mpp::lightning::PreimagePayload::new(preimage),
    );
    gate402_mpp::credential::to_authorization(&credential)
}

#[tokio::test]
async fn clients_that_echo_less_and_challenges_from_before_the_scope_moved_into_the_key() {
    let secret = "a shared secret of at least thirty-two bytes";
    let h = Harness::start_configured(
        |up| {
            vec![
                service("weather", "/weather", 10, up),
                service("forecast", "/forecast", 10, up),
            ]
        },
        |config| config.mpp.secret = Some(secret.into()),
    )
    .await;
    // Alby's lightning-tools echoes id, realm, method, intent, request and
    // expires only: no opaque, no description.
    let (offer, preimage) = h.buy("/weather").await;
    let challenge = offer.payment.as_ref().unwrap();
    assert!(challenge.opaque.is_none(), "the scope is in the key now");
    let bare = payment_credential(challenge, &preimage, |echo| {
        echo.opaque = None;
        echo.description = None;
    });
    // Not on another service at the same price...
    let elsewhere = h.get("/forecast", &bare).await;
    assert_eq!(elsewhere.status(), StatusCode::PAYMENT_REQUIRED);
    // ...on its own.
    assert_eq!(h.get("/weather", &bare).await.status(), StatusCode::OK);

    // A challenge issued before the change: the scope in `opaque`, the id
    // under the gateway's own key. Still honoured, still only for its service.
    let (offer, preimage) = h.buy("/weather").await;
    let issued = offer.payment.as_ref().unwrap();
    let request = gate402_mpp::challenge::decode_request(issued).unwrap();
    let opaque = gate402_mpp::verify::scope_opaque("weather");
    let legacy = gate402_mpp::challenge::ChallengeKey::new(secret)
        .unwrap()
        .issue(gate402_mpp::challenge::NewChallenge {
            realm: &issued.realm,
            method: "lightning",
            intent: "charge",
            request: &request,
            expires: issued.expires.as_deref().and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            }),
            digest: None,
            description: None,
            opaque: Some(&opaque),
            header: None,
        });
    let old = payment_credential(&legacy, &preimage, |_| {});
    assert_eq!(
        h.get("/forecast", &old).await.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    assert_eq!(h.get("/weather", &old).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_api_key_in_authorization_moves_the_credential_to_payment_authorization() {
    let h = Harness::start(|up| vec![service("keyed", "/keyed", 3, up)]).await;
    let ask = || {
        h.client
            .get(h.url("/keyed"))
            .header(AUTHORIZATION, "Bearer upstream-api-key")
            .send()
    };
    let offer = h.offer(ask().await.unwrap()).await;
    let challenge = offer.payment.clone().unwrap();
    assert_eq!(challenge.header.as_deref(), Some("Payment-Authorization"));
    let paid = pay_via(&h.client, &h.base(), &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let credential = payment_credential(&challenge, &preimage, |_| {});
    // In the field its challenge did not name: refused, and not spent.
    let wrong = h.get("/keyed", &credential).await;
    assert_eq!(wrong.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = wrong.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Payment-Authorization"),
        "{body}"
    );
    let answer = h
        .client
        .get(h.url("/keyed"))
        .header(AUTHORIZATION, "Bearer upstream-api-key")
        .header("payment-authorization", &credential)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("private"));
    let echo: Value = answer.json().await.unwrap();
    assert_eq!(echo["headers"]["authorization"], "Bearer upstream-api-key");
    assert!(echo["headers"].get("payment-authorization").is_none());
}

#[tokio::test]
async fn a_paid_body_is_bound_by_its_digest() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let h = Harness::start_configured(
        |up| vec![service("submit", "/submit", 4, up)],
        |config| config.server.max_body_bytes = 64,
    )
    .await;
    let post = |body: reqwest::Body, credential: Option<&str>| {
        let mut request = h.client.post(h.url("/submit")).body(body);
        if let Some(credential) = credential {
            request = request.header(AUTHORIZATION, credential);
        }
        request.send()
    };
    let buy = |response: reqwest::Response| async {
        let offer = h.offer(response).await;
        let paid = pay_via(&h.client, &h.base(), &offer.bolt11).await.unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        (offer.payment.unwrap(), preimage)
    };
    let paris = r#"{"city":"Paris"}"#;
    let (challenge, preimage) = buy(post(paris.into(), None).await.unwrap()).await;
    let digest = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(paris))
    );
    assert_eq!(challenge.digest.as_deref(), Some(digest.as_str()));
    let credential = payment_credential(&challenge, &preimage, |_| {});

    // Another body: refused, and the credential is not spent.
    let rome = post(r#"{"city":"Rome"}"#.into(), Some(&credential))
        .await
        .unwrap();
    assert_eq!(rome.status(), StatusCode::PAYMENT_REQUIRED);
    let problem: Value = rome.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("body"),
        "{problem}"
    );
    // A body over the limit, declared or streamed: 413, nothing spent.
    let large = post("x".repeat(100).into(), Some(&credential))
        .await
        .unwrap();
    assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = stream::iter(["x".repeat(40), "x".repeat(40)].map(Ok::<_, Infallible>));
    let streamed = post(reqwest::Body::wrap_stream(chunks), Some(&credential))
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The body paid for, streamed without a length: served once, forwarded
    // as sent.
    let chunks = stream::iter([r#"{"city":"#, r#""Paris"}"#].map(Ok::<_, Infallible>));
    let served = post(reqwest::Body::wrap_stream(chunks), Some(&credential))
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let echo: Value = served.json().await.unwrap();
    assert_eq!(echo["body"], paris);
    let replay = post(paris.into(), Some(&credential)).await.unwrap();
    assert_eq!(replay.status(), StatusCode::PAYMENT_REQUIRED);

    // A client that leaves `digest` out of its echo (Alby's keeps six
    // parameters): recomputed from the body it sends.
    let (challenge, preimage) = buy(post(paris.into(), None).await.unwrap()).await;
    let bare = payment_credential(&challenge, &preimage, |echo| {
        echo.digest = None;
        echo.opaque = None;
        echo.description = None;
    });
    let rome = post(r#"{"city":"Rome"}"#.into(), Some(&bare))
        .await
        .unwrap();
    assert_eq!(rome.status(), StatusCode::PAYMENT_REQUIRED);
    let served = post(paris.into(), Some(&bare)).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);

    // A body too large to bind gets a challenge without a digest, and is
    // forwarded whole once paid.
    let large = "y".repeat(100);
    let (challenge, preimage) = buy(post(large.clone().into(), None).await.unwrap()).await;
    assert!(challenge.digest.is_none());
    let credential = payment_credential(&challenge, &preimage, |_| {});
    let served = post(large.clone().into(), Some(&credential)).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let echo: Value = served.json().await.unwrap();
    assert_eq!(echo["body"], large);

    // GET binds no body; no challenge outlives its invoice.
    let offer = h
        .offer(h.client.get(h.url("/submit")).send().await.unwrap())
        .await;
    let challenge = offer.payment.unwrap();
    assert!(challenge.digest.is_none());
    let invoice = gate402_bolt11::Invoice::parse(&offer.bolt11).unwrap();
    let expires = time::OffsetDateTime::parse(
        challenge.expires.as_deref().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires.unix_timestamp() as u64 <= invoice.expires_at());
}

#[tokio::test]
async fn problems_of_draft_httpauth_payment_01() {
    let h = Harness::start(|up| vec![service("weather", "/weather", 3, up)]).await;
    // Two credentials: a malformed request, no invoice would help.
    let (offer, preimage) = h.buy("/weather").await;
    let credential = offer.payment_authorization(&preimage).unwrap();
    let two = h
        .client
        .get(h.url("/weather"))
        .header(AUTHORIZATION, &credential)
        .header("payment-authorization", &credential)
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), StatusCode::BAD_REQUEST);
    assert!(two.headers().get(WWW_AUTHENTICATE).is_none());
    let problem: Value = two.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("/bad-request"),
        "{problem}"
    );
    // A payload that is no preimage: invalid-payload, with a fresh challenge.
    let challenge = offer.payment.as_ref().unwrap();
    let mut wrong = gate402_mpp::PaymentCredential::new(
        challenge.to_echo(),
        gate402_mpp::lightning::PreimagePayload::new(&preimage),
    );
    wrong.payload = json!({"preimage": "not hex"});
    let answer = h
        .get(
            "/weather",
            &gate402_mpp::credential::to_authorization(&wrong),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(answer.headers().get(WWW_AUTHENTICATE).is_some());
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/invalid-payload"),
        "{problem}"
    );
    // Neither spent the payment.
    assert_eq!(
        h.get("/weather", &credential).await.status(),
        StatusCode::OK
    );
}

/// An upstream speaking raw HTTP/1: reads each request's head, writes
/// `answer(n)` (`n` counting the requests from 0), holds the connection
/// `hold`, then closes it. Its URL.
fn raw_upstream(
    answer: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static,
    hold: Duration,
) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((mut stream, _)) = listener.accept().await {
            let (answer, count) = (answer.clone(), count.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let bytes = answer(count.fetch_add(1, Ordering::SeqCst));
                let _ = stream.write_all(&bytes).await;
                tokio::time::sleep(hold).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

/// An upstream that reads the request and closes without answering had
/// it (and may have acted on it): its `502` says so rather than that it
/// could not be reached, and it counts as one of the payment's failures.
#[tokio::test]
async fn an_upstream_that_closes_without_answering_had_the_request() {
    let upstream = raw_upstream(|_| Vec::new(), Duration::ZERO);
    let h = Harness::start(|_| vec![service("drop", "/drop", 5, &upstream)]).await;
    let (offer, preimage) = h.buy("/drop").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    for attempt in 1..=gate402_paywall::FAILURES_PER_PAYMENT {
        let failed = retried(&h, "/drop", &l402).await;
        assert_eq!(
            failed.status(),
            StatusCode::BAD_GATEWAY,
            "attempt {attempt}"
        );
        let body = failed.text().await.unwrap();
        assert!(
            body.contains("after it had the request"),
            "attempt {attempt}: {body}"
        );
    }
    let spent = retried(&h, "/drop", &l402).await;
    assert_eq!(spent.status(), StatusCode::PAYMENT_REQUIRED);
}

/// An answer framed two ways, `Content-Length` and chunked, is read as
/// chunked (RFC 9112 §6.3: the transfer coding wins) and passed on without
/// the length, whole: it was cut to the length's 3 bytes, and the payment
/// spent. One with two different lengths is no answer: its `502` says the
/// upstream's answer was malformed, not that its connection failed.
#[tokio::test]
async fn an_answer_framed_two_ways_is_passed_on_whole_or_called_malformed() {
    let chunked = raw_upstream(
        |_| {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec()
        },
        Duration::ZERO,
    );
    let lengths = raw_upstream(
        |_| b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        Duration::ZERO,
    );
    let h = Harness::start(|_| {
        vec![
            service("chunked", "/chunked", 5, &chunked),
            service("lengths", "/lengths", 5, &lengths),
        ]
    })
    .await;
    let (offer, preimage) = h.buy("/chunked").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let answer = retried(&h, "/chunked", &l402).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "hello");

    let (offer, preimage) = h.buy("/lengths").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let failed = retried(&h, "/lengths", &l402).await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    let body = failed.text().await.unwrap();
    assert!(body.contains("malformed"), "{body}");
}

/// An upstream that closes a kept-alive connection as the next request
/// arrives on it (its keep-alive ran out) most likely never read it: a
/// paid request that may be sent twice (a `GET`, no body) is sent again on
/// a new connection and served, spending nothing more; a `POST` is not
/// sent twice, and counts as the upstream failing on it.
#[tokio::test]
async fn a_request_an_idle_connection_fails_as_it_goes_out_is_sent_again_if_it_may_be() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    // Answers the first request of each connection and keeps it open; on
    // the next one, closes it unanswered.
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    SEEN.fetch_add(1, SeqCst);
                    if answered {
                        return;
                    }
                    answered = true;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let h = Harness::start(|_| {
        let mut free = service("free", "/free/*", 1, &upstream);
        free.priced.auth = Auth::Off;
        vec![service("paid", "/paid", 5, &upstream), free]
    })
    .await;
    let warm = |h: &Harness| h.client.get(h.url("/free/warm")).send();
    let (offer, preimage) = h.buy("/paid").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(warm(&h).await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = SEEN.load(SeqCst);
    let served = h.get("/paid", &l402).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.text().await.unwrap(), "ok");
    assert_eq!(
        SEEN.load(SeqCst) - before,
        2,
        "failed once, then sent again"
    );
    assert_eq!(
        h.get("/paid", &l402).await.status(),
        StatusCode::PAYMENT_REQUIRED,
        "served once"
    );

    let (offer, preimage) = h.buy_post("/paid", "hello").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(warm(&h).await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = SEEN.load(SeqCst);
    let failed = h
        .client
        .post(h.url("/paid"))
        .header(AUTHORIZATION, &l402)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(SEEN.load(SeqCst) - before, 1, "a POST is not sent twice");
}

/// `h.get(path, credential)` again until the payment is no longer in
/// flight (its failure is recorded just after the answer that failed), for
/// up to 5 s.
async fn retried(h: &Harness, path: &str, credential: &str) -> reqwest::Response {
    past_conflict(|| {
        h.client
            .get(h.url(path))
            .header(AUTHORIZATION, credential)
            .send()
    })
    .await
}

/// `send` again while it is answered `409` (what it pays with is still
/// held by a request being served or settled), for up to 10 s; the first
/// other answer.
async fn past_conflict<F>(send: impl Fn() -> F) -> reqwest::Response
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = send().await.unwrap();
        if response.status() != StatusCode::CONFLICT || Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream that answers in HTTP/1.0 (no length, the end of the body
/// its close) does not make the gateway answer its own HTTP/1.1 clients
/// in HTTP/1.0 and close their connections: two requests go over one
/// client connection, each answered `HTTP/1.1`.
#[tokio::test]
async fn an_http_1_0_upstream_leaves_the_client_connection_alone() {
    let upstream = raw_upstream(
        |_| b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold server".to_vec(),
        Duration::ZERO,
    );
    let h = Harness::start(|_| {
        let mut free = service("old", "/old", 1, &upstream);
        free.priced.auth = Auth::Off;
        vec![free]
    })
    .await;
    let stream = tokio::net::TcpStream::connect(h.gateway.addr())
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for attempt in 1..=2 {
        let request = axum::http::Request::get("/old")
            .header("host", h.gateway.addr().to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap_or_else(|e| {
            panic!("request {attempt} on the kept connection: {e}");
        });
        assert_eq!(
            response.version(),
            axum::http::Version::HTTP_11,
            "{attempt}"
        );
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"old server");
    }
}

/// An upstream that answers 1 000 bytes of the 100 000 it announced and
/// closes has failed on the request: the payment is given back as for any
/// upstream failure (it was spent, the cut answer counted as served), and
/// the retry is served whole, once.
#[tokio::test]
async fn an_answer_cut_off_by_the_upstream_is_not_spent() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let upstream = raw_upstream(
        move |n| {
            count.fetch_add(1, Ordering::SeqCst);
            // The first answer breaks off; the next ones are whole.
            let size = if n == 0 { 1_000 } else { 100_000 };
            let mut answer =
                b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n".to_vec();
            answer.extend(std::iter::repeat_n(b'x', size));
            answer
        },
        Duration::ZERO,
    );
    let h = Harness::start(|_| vec![service("cut", "/cut", 5, &upstream)]).await;
    let (offer, preimage) = h.buy("/cut").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let first = h.get("/cut", &l402).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.bytes().await.is_err(), "the first answer broke off");
    let retry = retried(&h, "/cut", &l402).await;
    assert_eq!(retry.status(), StatusCode::OK, "the payment was given back");
    assert_eq!(retry.bytes().await.unwrap().len(), 100_000);
    assert_eq!(
        h.get("/cut", &l402).await.status(),
        StatusCode::PAYMENT_REQUIRED,
        "and served once"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 2);
}

/// A paid answer whose upstream pauses mid-body longer than the server's
/// idle timeout reaches the client whole: the connection waiting for its
/// upstream is not idle (it was cut at the idle timeout, the payment
/// spent). A pause longer than the response timeout is the upstream
/// failing: the body ends with an error and the payment is not spent.
#[tokio::test]
async fn a_pause_in_the_upstreams_answer_is_the_upstreams() {
    let h = Harness::start_configured(
        |up| {
            let mut s = service("pauses", "/pause/*", 5, up);
            s.upstream.as_mut().unwrap().response_timeout = Duration::from_secs(5);
            vec![s]
        },
        |config| config.server.idle_timeout_secs = 1,
    )
    .await;
    let (offer, preimage) = h.buy("/pause/2000").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let whole = h.get("/pause/2000", &l402).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(
        whole.text().await.unwrap(),
        "first half, second half",
        "the answer arrived whole across a pause longer than the idle timeout"
    );

    let (offer, preimage) = h.buy("/pause/8000").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let cut = h.get("/pause/8000", &l402).await;
    assert_eq!(cut.status(), StatusCode::OK);
    assert!(
        cut.bytes().await.is_err(),
        "a pause past the response timeout ends it"
    );
    let retry = retried(&h, "/pause/8000", &l402).await;
    assert_eq!(
        retry.status(),
        StatusCode::OK,
        "and the payment was not spent"
    );
}

/// A slow upload is the client's time: the response timeout starts once
/// the body has been sent. A paid POST whose 4-byte body takes 3 s to
/// arrive, to a service with a response timeout of 1 s, is served (it was
/// a 504 counted against the upstream, and the third spent the payment).
#[tokio::test]
async fn a_slow_upload_is_not_the_upstreams_timeout() {
    let h = Harness::start(|up| {
        let mut s = service("upload", "/upload", 5, up);
        s.upstream.as_mut().unwrap().response_timeout = Duration::from_secs(1);
        vec![s]
    })
    .await;
    let (offer, preimage) = h.buy("/upload").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let trickle = stream::iter(["a", "b", "c", "d"]).then(|part| async move {
        tokio::time::sleep(Duration::from_millis(750)).await;
        Ok::<_, Infallible>(Bytes::from_static(part.as_bytes()))
    });
    let answer = h
        .client
        .post(h.url("/upload"))
        .header(AUTHORIZATION, &l402)
        .header("content-length", "4")
        .body(reqwest::Body::wrap_stream(trickle))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let echoed: Value = answer.json().await.unwrap();
    assert_eq!(echoed["body"], "abcd", "{echoed}");
}

/// A request to switch protocols (a WebSocket) is refused with `501`
/// before it is charged: the proxy carries HTTP exchanges only, and the
/// upstream answered it `426` (or switched with nothing behind), the
/// payment spent. `h2c` is left to the server. An upstream that switches
/// protocols unasked is a `502`, its payment not spent.
#[tokio::test]
async fn a_protocol_switch_is_neither_sold_nor_charged() {
    let h = Harness::start(|up| vec![service("ws", "/ws", 5, up)]).await;
    let upgrade = |credential: Option<&str>, protocol: &'static str| {
        let mut request = h
            .client
            .get(h.url("/ws"))
            .header("connection", "Upgrade")
            .header("upgrade", protocol)
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13");
        if let Some(credential) = credential {
            request = request.header(AUTHORIZATION, credential);
        }
        request.send()
    };
    assert_eq!(
        upgrade(None, "websocket").await.unwrap().status(),
        StatusCode::NOT_IMPLEMENTED,
        "not offered for sale"
    );
    assert_eq!(
        upgrade(None, "h2c").await.unwrap().status(),
        StatusCode::PAYMENT_REQUIRED
    );
    let (offer, preimage) = h.buy("/ws").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let refused = upgrade(Some(&l402), "WebSocket").await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(
        h.get("/ws", &l402).await.status(),
        StatusCode::OK,
        "not charged"
    );

    // An upstream that switches protocols without being asked.
    let upstream = raw_upstream(
        |_| {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec()
        },
        Duration::from_secs(5),
    );
    let h = Harness::start(|_| vec![service("switch", "/switch", 5, &upstream)]).await;
    let (offer, preimage) = h.buy("/switch").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(
        h.get("/switch", &l402).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        h.get("/switch", &l402).await.status(),
        StatusCode::BAD_GATEWAY,
        "the payment was not spent on it"
    );
}

/// An upstream that answers while it reads the request waits for the
/// client's upload: a client that stalls its upload mid-answer makes no
/// pause of the upstream's. Its stall longer than the response timeout
/// (1 s here) got the answer ended as the upstream failing and the
/// payment given back (a client could read nearly all of an answer three
/// times for one payment); now the answer arrives whole once the upload
/// does, and the payment is spent.
#[tokio::test]
async fn a_stalled_upload_is_not_a_pause_of_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                let mut answered = false;
                // Half the answer once the head is in, the rest once the
                // whole 10-byte body is.
                loop {
                    let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n");
                    if let Some(end) = head_end {
                        if !answered {
                            answered = true;
                            let half = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
                            let _ = stream.write_all(half).await;
                        }
                        if seen.len() >= end + 4 + 10 {
                            let _ = stream.write_all(b"world").await;
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    let h = Harness::start(|_| {
        let mut s = service("reads", "/reads", 5, &upstream);
        s.upstream.as_mut().unwrap().response_timeout = Duration::from_secs(1);
        vec![s]
    })
    .await;
    let (offer, preimage) = h.buy("/reads").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let mut client = tokio::net::TcpStream::connect(h.gateway.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /reads HTTP/1.1\r\nHost: {}\r\nAuthorization: {l402}\r\nContent-Length: 10\r\n\r\n12345",
        h.gateway.addr()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"hello") {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.write_all(b"67890").await.unwrap();
    let read_rest = async {
        while !answer.ends_with(b"world") {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read_rest).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        text.ends_with("helloworld"),
        "the answer arrived whole: {text}"
    );
    assert_eq!(
        retried(&h, "/reads", &l402).await.status(),
        StatusCode::PAYMENT_REQUIRED,
        "served whole, the payment is spent"
    );
}

/// A HEAD request over h2c with prior knowledge: status, fields and the
/// body's bytes, or why the stream did not end cleanly.
async fn head_h2(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let mut request = axum::http::Request::head(format!("http://{addr}{path}"));
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    let request = request.body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let (parts, body) = common::h2c(addr, request).await?;
    Ok((parts.status.as_u16(), parts.headers, body))
}

/// HEAD answers with a GET's fields and no body, over both HTTP versions:
/// the gateway's own endpoints, a 402, a proxied free route and a paid
/// request. HTTP/2 has no framing that drops a body a HEAD answer carries:
/// one sent anyway ends the stream with a protocol error.
#[tokio::test]
async fn head_requests_get_fields_and_no_body_over_either_http_version() {
    let h = Harness::start(|up| {
        let mut free = service("free", "/free", 0, up);
        free.priced.auth = Auth::Off;
        let mut stream = service("stream", "/sse", 0, up);
        stream.priced.auth = Auth::Off;
        vec![service("weather", "/weather", 10, up), free, stream]
    })
    .await;
    let addr = h.gateway.addr();

    for path in ["/healthz", "/free", "/sse"] {
        let (status, fields, body) = head_h2(addr, path, None).await.expect(path);
        assert_eq!(status, 200, "{path}");
        assert!(body.is_empty(), "{path}: {body:?}");
        let h1 = h.client.head(h.url(path)).send().await.unwrap();
        assert_eq!(h1.status(), StatusCode::OK, "{path}");
        // A stream's length is unknown, never 0; the others' are known.
        for fields in [&fields, h1.headers()] {
            let length = fields.get("content-length");
            if path == "/sse" {
                assert!(length.is_none(), "{path}: {fields:?}");
            } else {
                assert!(length.is_some_and(|l| l != "0"), "{path}: {fields:?}");
            }
        }
    }

    let (status, fields, body) = head_h2(addr, "/weather", None).await.expect("402");
    assert_eq!(status, 402);
    assert!(body.is_empty(), "{body:?}");
    assert!(fields.get(WWW_AUTHENTICATE).is_some(), "{fields:?}");
    let length: usize = fields["content-length"].to_str().unwrap().parse().unwrap();
    assert!(length > 0, "a GET's length: {fields:?}");
    let h1 = h.client.head(h.url("/weather")).send().await.unwrap();
    assert_eq!(h1.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(h1.headers().contains_key("content-length"), "{h1:?}");

    // Paid over HTTP/1.1: served once, then spent.
    let (offer, preimage) = h.pay(Offer::from_headers(h1.headers()).unwrap()).await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let paid = h
        .client
        .head(h.url("/weather"))
        .header(AUTHORIZATION, &l402);
    let paid = paid.send().await.unwrap();
    assert_eq!(paid.status(), StatusCode::OK);
    assert!(paid.headers().contains_key("payment-receipt"), "{paid:?}");
    let replay = h
        .client
        .head(h.url("/weather"))
        .header(AUTHORIZATION, &l402);
    assert_eq!(
        replay.send().await.unwrap().status(),
        StatusCode::PAYMENT_REQUIRED
    );

    // Paid over HTTP/2: served once, with a receipt and no body; then spent.
    let offer = Offer::from_headers(&fields).unwrap();
    let (offer, preimage) = h.pay(offer).await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let (status, fields, body) = head_h2(addr, "/weather", Some(&l402)).await.expect("paid");
    assert_eq!(status, 200);
    assert!(body.is_empty(), "{body:?}");
    assert!(fields.get("payment-receipt").is_some(), "{fields:?}");
    let (status, _, _) = head_h2(addr, "/weather", Some(&l402))
        .await
        .expect("replay");
    assert_eq!(status, 402, "served twice");

    // The admin listener's answers: a refusal, and paths without a route.
    let admin = h.gateway.admin_addr().unwrap();
    for path in ["/admin/api/metrics", "/admin/nowhere", "/elsewhere"] {
        let (status, _, body) = head_h2(admin, path, None).await.expect(path);
        assert!(status >= 400, "{path}: {status}");
        assert!(body.is_empty(), "{path}: {status} {body:?}");
    }
}

/// The layer around a whole app (not through `Router::layer`, where axum
/// drops HEAD bodies for its own routes), served over HTTP/2: its own
/// answers to HEAD (a 402, a 400) carry their fields and no body, and a
/// paid HEAD is served once.
#[tokio::test]
async fn the_layer_around_a_whole_app_answers_head_without_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let (paywall, sandbox) = joke_paywall(dir.path()).await;
    let app = Router::new()
        .route("/joke", get(|| async { "a paid joke" }))
        .merge(gate402_lightning_sandbox::http::router(sandbox));
    let app = tower::ServiceBuilder::new()
        .map_response(|response: axum::http::Response<_>| response.map(axum::body::Body::new))
        .layer(paywall.layer())
        .service(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    tokio::spawn(async move {
        axum::serve(listener, tower::make::Shared::new(app))
            .await
            .unwrap()
    });
    let client = reqwest::Client::new();

    let get = client.get(format!("{base}/joke")).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::PAYMENT_REQUIRED);
    let get_length = get.bytes().await.unwrap().len();
    let (status, fields, body) = head_h2(addr, "/joke", None).await.expect("402");
    assert_eq!(status, 402);
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(fields["content-length"], get_length.to_string().as_str());
    let (status, _, body) = head_h2(addr, "/jo%2Fke", None).await.expect("400");
    assert_eq!(status, 400);
    assert!(body.is_empty(), "{body:?}");

    let offer = Offer::from_headers(&fields).unwrap();
    let paid = pay_via(&client, &base, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let (status, fields, body) = head_h2(addr, "/joke", Some(&l402)).await.expect("paid");
    assert_eq!(status, 200);
    assert!(body.is_empty(), "{body:?}");
    assert!(fields.get("payment-receipt").is_some(), "{fields:?}");
    let (status, _, body) = head_h2(addr, "/joke", Some(&l402)).await.expect("replay");
    assert_eq!(status, 402, "served twice");
    assert!(body.is_empty(), "{body:?}");
}
