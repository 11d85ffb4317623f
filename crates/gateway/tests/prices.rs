//! Prices that depend on the request, end to end: rules and an HTTP pricer
//! decide the amount of the challenge, and a credential paid for a cheaper
//! request is refused on a dearer one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::{Json, Router};
use gate402_client::Offer;
use gate402_gateway::config::ServiceConfig;
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_lightning_sandbox::http::pay_via;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Answers every request with 200 and what it was sent.
async fn start_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(any(|body: axum::body::Bytes| async move {
        format!("served: {}", String::from_utf8_lossy(&body))
    }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The services of a config written in TOML, each pointed at `upstream`.
fn services(toml: &str, upstream: &str) -> Vec<ServiceConfig> {
    let text = toml.replace("UPSTREAM", upstream);
    GatewayConfig::parse(&text, |_| None)
        .unwrap_or_else(|e| panic!("{e}"))
        .services
}

struct Harness {
    gateway: Gateway,
    client: reqwest::Client,
    upstream: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(toml: &str) -> Self {
        Self::start_configured(toml, |_| {}).await
    }

    async fn start_configured(toml: &str, adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        let upstream = start_upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = GatewayConfig::default_with_services(services(toml, &upstream));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.mpp.realm = "api.test".into();
        adjust(&mut config);
        let gateway = Gateway::start(&config, dir.path()).await.unwrap();
        Self {
            gateway,
            client: reqwest::Client::new(),
            upstream,
            _dir: dir,
        }
    }

    /// Runs the services of `toml` instead, as a config reload does.
    fn reload(&self, toml: &str) {
        self.gateway
            .services_handle()
            .set(&services(toml, &self.upstream))
            .unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .body(body.to_owned());
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request.send().await.unwrap()
    }

    async fn post(&self, path: &str, body: &str, authorization: Option<&str>) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, body, authorization)
            .await
    }

    /// The price a request is asked, checked to be the same in the problem
    /// body, the invoice (which the L402 challenge carries) and the MPP
    /// challenge.
    async fn price(&self, method: reqwest::Method, path: &str, body: &str) -> u64 {
        let (price, _) = priced(self.send(method, path, body, None).await).await;
        price
    }

    /// The detail of the 400 that `/l402/quote` answers for a GET of
    /// `target` (a path and query).
    async fn quote_refusal(&self, target: &str) -> String {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("path", path)
            .append_pair("query", query)
            .finish();
        let response = self
            .client
            .get(self.url(&format!("/l402/quote?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "quote {target}");
        let problem: Value = response.json().await.unwrap();
        problem["detail"].as_str().unwrap().to_owned()
    }

    /// POSTs `body` unpaid and pays its 402: the offer and preimage.
    async fn buy(&self, path: &str, body: &str) -> (Offer, [u8; 32]) {
        let (_, offer) = priced(self.post(path, body, None).await).await;
        let paid = pay_via(
            &self.client,
            &format!("http://{}", self.gateway.addr()),
            &offer.bolt11,
        )
        .await
        .unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        (offer, preimage)
    }
}

/// The price of a 402 and its offer: the problem body's price, the
/// invoice's amount and the MPP charge's amount, asserted to agree.
async fn priced(response: reqwest::Response) -> (u64, Offer) {
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let offer = Offer::from_headers(response.headers()).unwrap();
    assert!(offer.l402.is_some(), "an L402 challenge");
    let body: Value = response.json().await.unwrap();
    let price: u64 = body["price"]["amount"].as_str().unwrap().parse().unwrap();
    assert_eq!(offer.amount_msat(), Some(price * 1000), "the invoice");
    let challenge = offer.payment.as_ref().expect("an MPP challenge");
    let request = gate402_mpp::base64url::decode_json_object(challenge.request.raw()).unwrap();
    assert_eq!(request["amount"], price.to_string(), "the MPP charge");
    (price, offer)
}

/// What a refusal says: its problem type's last segment and its detail.
async fn refusal(response: reqwest::Response) -> (String, String, Offer) {
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let offer = Offer::from_headers(response.headers()).unwrap();
    let body: Value = response.json().await.unwrap();
    let kind = body["type"].as_str().unwrap().rsplit('/').next().unwrap();
    (
        kind.to_owned(),
        body["detail"].as_str().unwrap().to_owned(),
        offer,
    )
}

const CHAT: &str = r#"
[[services]]
name = "chat"
path = "/chat"
methods = ["POST"]
upstream = "UPSTREAM"
price_sats = 10
[[services.prices]]
body = { "/model" = "gpt-4" }
price_sats = 50
"#;

#[tokio::test]
async fn a_body_field_decides_the_price_of_the_challenge() {
    let h = Harness::start(CHAT).await;
    let post = reqwest::Method::POST;
    assert_eq!(
        h.price(post.clone(), "/chat", r#"{"model":"gpt-4"}"#).await,
        50
    );
    assert_eq!(
        h.price(post.clone(), "/chat", r#"{"model":"small"}"#).await,
        10
    );
    // Not JSON: not read as any field, so not priced by default either.
    let unread = h.post("/chat", "not json", None).await;
    assert_eq!(unread.status(), StatusCode::BAD_REQUEST);
    let unpaid = h.post("/chat", r#"{"model":"gpt-4"}"#, None).await;
    let problem: Value = unpaid.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "chat: 50 sat for this request (its price depends on the request)"
    );
}

/// A body too large to read cannot be priced by its fields: it is refused,
/// not sold at the default price.
#[tokio::test]
async fn a_body_too_large_to_read_is_not_priced_by_its_fields() {
    let pricer = start_pricer("answer").await;
    let both = format!("{CHAT}{}", priced_by(&pricer));
    let h = Harness::start_configured(&both, |c| c.server.max_body_bytes = 64).await;
    let large = json!({"model": "gpt-4", "pad": "x".repeat(100)}).to_string();
    let refused = h.post("/chat", &large, None).await;
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A pricer is asked without the digest of a body it was not sent.
    assert_eq!(h.price(reqwest::Method::POST, "/quote", &large).await, 33);
    assert!(pricer.asked.lock().unwrap()[0]["body_digest"].is_null());
}

#[tokio::test]
async fn a_credential_for_a_cheap_body_is_refused_on_a_dear_one() {
    let h = Harness::start(CHAT).await;
    let cheap = r#"{"model":"small"}"#;
    let dear = r#"{"model":"gpt-4"}"#;
    for door in ["L402", "MPP"] {
        let (offer, preimage) = h.buy("/chat", cheap).await;
        let credential = match door {
            "L402" => offer.l402_authorization(&preimage).unwrap(),
            _ => offer.payment_authorization(&preimage).unwrap(),
        };
        let (kind, detail, fresh) = refusal(h.post("/chat", dear, Some(&credential)).await).await;
        assert_eq!(kind, "payment-insufficient", "{door}: {detail}");
        assert!(
            detail.contains("paid 10 sat") && detail.contains("costs 50 sat"),
            "{door}: {detail}"
        );
        assert_eq!(
            fresh.amount_msat(),
            Some(50_000),
            "{door}: a fresh challenge at 50"
        );
        // Refused before it was spent: the body it paid for is served.
        let served = h.post("/chat", cheap, Some(&credential)).await;
        assert_eq!(served.status(), StatusCode::OK, "{door}");
        assert_eq!(served.text().await.unwrap(), format!("served: {cheap}"));
    }
    // A token paid for the dear body pays for a cheap one (L402 binds no
    // body); the MPP credential is bound to its body's digest.
    let (offer, preimage) = h.buy("/chat", dear).await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(
        h.post("/chat", cheap, Some(&l402)).await.status(),
        StatusCode::OK
    );
    let (offer, preimage) = h.buy("/chat", dear).await;
    let mpp = offer.payment_authorization(&preimage).unwrap();
    let (kind, detail, _) = refusal(h.post("/chat", cheap, Some(&mpp)).await).await;
    assert_ne!(kind, "payment-insufficient", "{detail}");
    assert_eq!(
        h.post("/chat", dear, Some(&mpp)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn query_path_method_size_and_per_unit_rules() {
    let h = Harness::start(
        r#"
        [[services]]
        name = "media"
        path = "/media/*"
        upstream = "UPSTREAM"
        price_sats = 10
        [[services.prices]]
        methods = ["DELETE"]
        price_sats = 3
        [[services.prices]]
        path = "/media/images/{size}/*"
        params = { size = ["large", "huge"] }
        price_sats = 40
        [[services.prices]]
        query = { quality = "hd" }
        price_sats = 30
        [[services.prices]]
        min_body_bytes = 1000
        price_sats = 25
        [[services.prices]]
        path = "/media/complete"
        price_sats = 5
        per = { body = "/max_tokens", every = 100, price_sats = 1 }
        [[services.prices]]
        path = "/media/café/{id}"
        price_sats = 13
        [[services.prices]]
        path = "/media/%78l"
        price_sats = 14
        "#,
    )
    .await;
    use reqwest::Method;
    let price = |method: Method, path: &'static str, body: String| {
        let h = &h;
        async move { h.price(method, path, &body).await }
    };
    assert_eq!(price(Method::DELETE, "/media/x", String::new()).await, 3);
    // Rule paths are read as requests are, in normal form: written with an
    // accent or a needless escape, they never matched (priced 10).
    assert_eq!(price(Method::GET, "/media/café/1", String::new()).await, 13);
    assert_eq!(
        price(Method::GET, "/media/caf%C3%A9/1", String::new()).await,
        13
    );
    assert_eq!(price(Method::GET, "/media/xl", String::new()).await, 14);
    assert_eq!(
        price(Method::GET, "/media/images/huge/cat.png", String::new()).await,
        40
    );
    assert_eq!(
        price(Method::GET, "/media/images/small/cat.png", String::new()).await,
        10
    );
    assert_eq!(
        price(Method::GET, "/media/x?quality=hd", String::new()).await,
        30
    );
    assert_eq!(
        price(Method::GET, "/media/x?quality=sd", String::new()).await,
        10
    );
    assert_eq!(price(Method::POST, "/media/x", "x".repeat(1000)).await, 25);
    assert_eq!(price(Method::POST, "/media/x", "x".repeat(999)).await, 10);
    let tokens = |n: u64| json!({ "max_tokens": n }).to_string();
    assert_eq!(price(Method::POST, "/media/complete", tokens(250)).await, 8);
    assert_eq!(price(Method::POST, "/media/complete", tokens(100)).await, 6);
    // No count: the rule does not match, and the default price holds.
    assert_eq!(
        price(Method::POST, "/media/complete", "{}".into()).await,
        10
    );
    // A parameter a price depends on, given twice, is refused: an upstream
    // may read either.
    let twice = h
        .send(Method::GET, "/media/x?quality=sd&quality=hd", "", None)
        .await;
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);

    // The quote endpoint prices a request without a body, its query given
    // apart; one whose price may depend on its body is not quoted.
    let quote = |q: &'static str| {
        let h = &h;
        async move {
            let url = h.url(&format!("/l402/quote?{q}"));
            let quote: Value = h
                .client
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            quote
        }
    };
    let hd = quote("path=/media/x&method=GET&query=quality%3Dhd").await;
    assert_eq!(hd["amount"], "30", "{hd}");
    assert_eq!(hd["price_msat"], 30_000);
    assert_eq!(hd["pricing"]["quoted"], true);
    let huge = quote("path=/media/images/huge/a.png").await;
    assert_eq!(huge["amount"], "40", "{huge}");
    let plain = quote("path=/media/x&method=DELETE").await;
    assert_eq!(plain["amount"], "3", "{plain}");
    let post = quote("path=/media/x&method=POST").await;
    assert!(post["amount"].is_null(), "{post}");
    assert_eq!(post["pricing"]["model"], "dynamic");
    // A query no request target carries (a line break, a raw byte, a
    // space, a fragment) is not priced.
    for bad in ["a\r\nb", "q=\u{ff}", "q=a b", "q=a#b"] {
        let detail = h.quote_refusal(&format!("/media/x?{bad}")).await;
        assert!(detail.starts_with("query:"), "{bad:?}: {detail}");
    }
}

/// A pricer on loopback: counts its calls, keeps what it was asked, and
/// answers as `mode` says.
struct Pricer {
    url: String,
    calls: Arc<AtomicUsize>,
    asked: Arc<Mutex<Vec<Value>>>,
}

async fn start_pricer(mode: &'static str) -> Pricer {
    let calls = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let (c, a) = (calls.clone(), asked.clone());
    let app = Router::new().route(
        "/price",
        post(move |Json(question): Json<Value>| {
            let (c, a) = (c.clone(), a.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                a.lock().unwrap().push(question.clone());
                match mode {
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Json(json!({"price": 99})).into_response()
                    }
                    "garbage" => (
                        [("content-type", "application/json")],
                        "{\"price\": \"lots\"}",
                    )
                        .into_response(),
                    "tier" => {
                        let premium = question["headers"]["x-tier"] == "premium";
                        Json(json!({"price": if premium { 100 } else { 2 }})).into_response()
                    }
                    _ => {
                        let long =
                            question["body_digest"].is_string() && question["query"] == "long=1";
                        Json(json!({"price": if long { 77 } else { 33 }, "expires": 60}))
                            .into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Pricer {
        url: format!("http://{addr}/price"),
        calls,
        asked,
    }
}

fn priced_by(pricer: &Pricer) -> String {
    format!(
        r#"
        [[services]]
        name = "quote"
        path = "/quote"
        upstream = "UPSTREAM"
        price_sats = 10
        pricer = {{ url = "{}", timeout_ms = 5000, fallback = 12, cache_secs = 60 }}
        "#,
        pricer.url
    )
}

/// The pricer is asked about the path the upstream is sent: what the
/// route names as the route spells it (routes ignore case), so a client
/// cannot have the dear resource priced as another by changing its case.
#[tokio::test]
async fn a_pricer_sees_the_route_spelled_as_configured() {
    let pricer = start_pricer("answer").await;
    let toml = priced_by(&pricer).replace(r#"path = "/quote""#, r#"path = "/Quote/*""#);
    let h = Harness::start(&toml).await;
    for asked in ["/qUOTE/Dear/x", "/Quote/Dear/x"] {
        h.price(reqwest::Method::GET, asked, "").await;
    }
    let asked: Vec<Value> = pricer.asked.lock().unwrap().clone();
    let paths: Vec<&str> = asked.iter().map(|q| q["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["/Quote/Dear/x"],
        "one question, kept for the second"
    );
}

#[tokio::test]
async fn a_pricer_decides_and_its_answer_is_kept() {
    let pricer = start_pricer("answer").await;
    let h = Harness::start(&priced_by(&pricer)).await;
    let ask = || async {
        h.client
            .post(h.url("/quote"))
            .header("cookie", "session=secret")
            .header("x-tier", "gold")
            .body("{\"n\":1}")
            .send()
            .await
            .unwrap()
    };
    let (first, _) = priced(ask().await).await;
    let (second, _) = priced(ask().await).await;
    assert_eq!((first, second), (33, 33));
    assert_eq!(
        pricer.calls.load(Ordering::SeqCst),
        1,
        "the second answer was kept"
    );
    let question = pricer.asked.lock().unwrap()[0].clone();
    assert_eq!(question["service"], "quote");
    assert_eq!(question["method"], "POST");
    assert_eq!(question["path"], "/quote");
    assert_eq!(question["headers"]["x-tier"], "gold");
    assert!(question["headers"].get("cookie").is_none(), "{question}");
    let digest = gate402_mpp::verify::body_digest(b"{\"n\":1}");
    assert_eq!(question["body_digest"], digest);
    // Another request is another question.
    assert_eq!(
        h.price(reqwest::Method::POST, "/quote?long=1", "{}").await,
        77
    );
    assert_eq!(pricer.calls.load(Ordering::SeqCst), 2);

    // Paid at the pricer's price, served.
    let (offer, preimage) = h.buy("/quote?long=1", "{}").await;
    let paid = h
        .post(
            "/quote?long=1",
            "{}",
            Some(&offer.l402_authorization(&preimage).unwrap()),
        )
        .await;
    assert_eq!(paid.status(), StatusCode::OK);

    // What discovery calls the default is what a request no rule decides
    // is asked: the pricer's fallback (12), never price_sats (10).
    let h = &h;
    let get = |path: &'static str| async move {
        let answer = h.client.get(h.url(path)).send().await.unwrap();
        answer.json::<Value>().await.unwrap()
    };
    let listed = get("/.well-known/l402-services").await;
    assert_eq!(listed["services"][0]["pricing"]["default"], 12, "{listed}");
    let quote = get("/l402/quote?path=/quote&method=POST").await;
    assert_eq!(quote["pricing"]["default_msat"], 12_000, "{quote}");
}

/// A pricer may price by any header it is shown: its answer for one
/// request is not kept for another that differs only in a header. (Kept
/// by method, path, query and body alone, a token bought at 2 sat for a
/// plain request was served a request the pricer prices at 100.) A
/// forwarding header from a client no trusted proxy vouches for is not
/// shown.
#[tokio::test]
async fn a_pricer_answer_is_kept_for_the_headers_it_was_shown() {
    let pricer = start_pricer("tier").await;
    let h = Harness::start(&priced_by(&pricer)).await;
    assert_eq!(h.price(reqwest::Method::POST, "/quote", "{}").await, 2);
    let (offer, preimage) = h.buy("/quote", "{}").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let premium = h
        .client
        .post(h.url("/quote"))
        .header(AUTHORIZATION, &l402)
        .header("x-tier", "premium")
        .header("x-forwarded-for", "6.6.6.6")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(premium.status(), StatusCode::PAYMENT_REQUIRED);
    let problem: Value = premium.json().await.unwrap();
    assert_eq!(problem["price"]["amount"], "100", "{problem}");
    assert_eq!(
        h.post("/quote", "{}", Some(&l402)).await.status(),
        StatusCode::OK
    );
    // A value the pricer could not be shown is refused, not priced
    // without it.
    let unshowable = h
        .client
        .post(h.url("/quote"))
        .header(
            "x-tier",
            reqwest::header::HeaderValue::from_bytes(b"premium\xff").unwrap(),
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unshowable.status(), StatusCode::BAD_REQUEST);
    let asked = pricer.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|q| q["headers"].get("x-forwarded-for").is_none()),
        "{asked:?}"
    );
}

#[tokio::test]
async fn a_slow_or_garbled_pricer_gives_way_to_its_fallback() {
    for mode in ["slow", "garbage"] {
        let pricer = start_pricer(mode).await;
        // Metrics on the serving port, as `public_metrics` puts them.
        // Slow past 2 s: the fallback, long before the pricer's 10 s.
        let toml = priced_by(&pricer).replace("timeout_ms = 5000", "timeout_ms = 2000");
        let h = Harness::start_configured(&toml, |c| c.server.public_metrics = true).await;
        let started = std::time::Instant::now();
        assert_eq!(
            h.price(reqwest::Method::POST, "/quote", "{}").await,
            12,
            "{mode}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode}: the timeout held"
        );
        assert_eq!(pricer.calls.load(Ordering::SeqCst), 1, "{mode}");
        let metrics = h
            .client
            .get(h.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let reason = if mode == "slow" { "timeout" } else { "garbage" };
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gate402_pricer_fallbacks_total")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{mode}: {metrics}"
        );
    }
    // Nobody there at all: the fallback too, never a 5xx.
    let h = Harness::start(
        r#"
        [[services]]
        name = "quote"
        path = "/quote"
        upstream = "UPSTREAM"
        price_sats = 10
        pricer = { url = "http://127.0.0.1:9/price", fallback = 14 }
        "#,
    )
    .await;
    assert_eq!(h.price(reqwest::Method::GET, "/quote", "").await, 14);
}

#[tokio::test]
async fn discovery_shows_a_dynamic_price_without_an_amount() {
    let h = Harness::start(CHAT).await;
    let openapi: Value = h
        .client
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let offers = openapi["paths"]["/chat"]["post"]["x-payment-info"]["offers"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!offers.is_empty());
    for offer in &offers {
        assert!(offer["amount"].is_null(), "{offer}");
        assert_eq!(offer["quote"], "/l402/quote");
    }
    let listed: Value = h
        .client
        .get(h.url("/.well-known/l402-services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["services"][0]["pricing"]["type"], "dynamic");
    assert!(listed["services"][0]["pricing"]["amount"].is_null());
    let quote: Value = h
        .client
        .get(h.url("/l402/quote?path=/chat&method=POST"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(quote["pricing"]["model"], "dynamic");
    assert!(quote["amount"].is_null(), "{quote}");

    // mppx's validator accepts it (./scripts/test installs it).
    let mppx = std::env::var_os("GATE402_MPPX_DISCOVERY")
        .map(PathBuf::from)
        .expect("GATE402_MPPX_DISCOVERY names where mppx is installed");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&openapi).unwrap()).unwrap();
    // Read when the test runs: a test binary kept in a build cache shared
    // with a checkout elsewhere holds that checkout's path.
    let crate_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let script = PathBuf::from(crate_dir).join("tests/mppx-discovery/validate.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .arg(&mppx)
        .arg(&file)
        .output()
        .await
        .expect("node runs mppx's validator");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results[0]["issues"], json!([]), "mppx finds fault");
}

const PREMIUM: &str = r#"
[[services]]
name = "premium"
path = "/premium"
upstream = "UPSTREAM"
schemes = "all"
price_sats = PRICE
"#;

fn premium(price: u64) -> String {
    PREMIUM.replace("PRICE", &price.to_string())
}

/// A credential that buys one request pays for a request of today's
/// price only, fixed or dynamic, whichever door it came through; a pass
/// lasts at the price it was bought for.
#[tokio::test]
async fn a_raised_fixed_price_refuses_a_single_use_credential_bought_before() {
    let h = Harness::start(&premium(5)).await;
    let (offer, preimage) = h.buy("/premium", "").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let (offer, preimage) = h.buy("/premium", "").await;
    let mpp = offer.payment_authorization(&preimage).unwrap();
    let (offer, preimage) = h.buy("/premium", "").await;
    let recreated = offer.l402_authorization(&preimage).unwrap();
    let (offer, preimage) = h.buy("/premium", "").await;
    let x402 = offer.x402_signature(&preimage).unwrap();
    let with_x402 = || async {
        h.client
            .post(h.url("/premium"))
            .header("payment-signature", &x402)
            .send()
            .await
            .unwrap()
    };

    h.reload(&premium(50));
    let (kind, detail, _) = refusal(with_x402().await).await;
    assert_eq!(kind, "payment-insufficient", "x402: {detail}");
    assert!(detail.contains("paid 5 sat"), "x402: {detail}");
    for (door, credential) in [("L402", &l402), ("MPP", &mpp)] {
        let (kind, detail, fresh) = refusal(h.post("/premium", "", Some(credential)).await).await;
        assert_eq!(kind, "payment-insufficient", "{door}: {detail}");
        assert!(
            detail.contains("paid 5 sat") && detail.contains("costs 50 sat"),
            "{door}: {detail}"
        );
        assert_eq!(fresh.amount_msat(), Some(50_000), "{door}");
    }
    // Deleted, then made anew under its name at 50: the same.
    h.reload(CHAT);
    h.reload(&premium(50));
    let (kind, _, _) = refusal(h.post("/premium", "", Some(&recreated)).await).await;
    assert_eq!(kind, "payment-insufficient");
    // Refused unspent: back at its price, each serves once.
    h.reload(&premium(5));
    for credential in [&l402, &mpp, &recreated] {
        let served = h.post("/premium", "", Some(credential)).await;
        assert_eq!(served.status(), StatusCode::OK);
        let again = h.post("/premium", "", Some(credential)).await;
        assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED);
    }
    assert_eq!(with_x402().await.status(), StatusCode::OK);
    // A credential that paid more than a lowered price serves, through
    // any door, once.
    let (l402_offer, l402_preimage) = h.buy("/premium", "").await;
    let (mpp_offer, mpp_preimage) = h.buy("/premium", "").await;
    let (x402_offer, x402_preimage) = h.buy("/premium", "").await;
    let paid_more = x402_offer.x402_signature(&x402_preimage).unwrap();
    let with_paid_more = || async {
        h.client
            .post(h.url("/premium"))
            .header("payment-signature", &paid_more)
            .send()
            .await
            .unwrap()
    };
    h.reload(&premium(3));
    for credential in [
        l402_offer.l402_authorization(&l402_preimage).unwrap(),
        mpp_offer.payment_authorization(&mpp_preimage).unwrap(),
    ] {
        let served = h.post("/premium", "", Some(&credential)).await;
        assert_eq!(served.status(), StatusCode::OK);
    }
    let served = with_paid_more().await;
    assert_eq!(served.status(), StatusCode::OK, "x402 after a price cut");
    let (kind, _, _) = refusal(with_paid_more().await).await;
    assert_eq!(kind, "invalid-challenge", "x402 spent once");

    // A token bought for a cheap request of a dynamic service, then the
    // service made fixed at 50.
    h.reload(CHAT);
    let (offer, preimage) = h.buy("/chat", r#"{"model":"small"}"#).await;
    let cheap = offer.l402_authorization(&preimage).unwrap();
    h.reload(&CHAT.replace("price_sats = 10", "price_sats = 50").replace(
        "[[services.prices]]\nbody = { \"/model\" = \"gpt-4\" }\nprice_sats = 50\n",
        "",
    ));
    let (kind, detail, _) = refusal(h.post("/chat", "{}", Some(&cheap)).await).await;
    assert_eq!(kind, "payment-insufficient", "{detail}");
    assert!(detail.contains("paid 10 sat"), "{detail}");

    // A pass lasts until it expires at the price it was bought for.
    let pass = |price: u64| {
        format!(
            "{}sells = \"pass\"\ntoken_lifetime_secs = 3600\n",
            premium(price)
        )
    };
    h.reload(&pass(5));
    let (offer, preimage) = h.buy("/premium", "").await;
    let bought = offer.l402_authorization(&preimage).unwrap();
    h.reload(&pass(50));
    for _ in 0..2 {
        let served = h.post("/premium", "", Some(&bought)).await;
        assert_eq!(served.status(), StatusCode::OK);
    }
}

/// What a single-use credential was answered under its Idempotency-Key
/// is replayed after a price raise: it paid that response's price. A new
/// request with it is still refused.
#[tokio::test]
async fn a_kept_response_is_replayed_after_a_price_raise() {
    let h = Harness::start(&premium(5)).await;
    for door in ["L402", "MPP"] {
        // (an MPP challenge binds the body it was offered for)
        let (offer, preimage) = h.buy("/premium", "once").await;
        let credential = match door {
            "L402" => offer.l402_authorization(&preimage),
            _ => offer.payment_authorization(&preimage),
        }
        .unwrap();
        let send = |key: &'static str| {
            h.client
                .post(h.url("/premium"))
                .header(AUTHORIZATION, &credential)
                .header("idempotency-key", key)
                .body("once")
                .send()
        };
        let first = send("k1").await.unwrap();
        assert_eq!(first.status(), StatusCode::OK, "{door}");
        assert_eq!(first.text().await.unwrap(), "served: once", "{door}");
        h.reload(&premium(50));
        let replayed = send("k1").await.unwrap();
        assert_eq!(replayed.status(), StatusCode::OK, "{door}");
        assert_eq!(replayed.headers()["idempotent-replayed"], "true", "{door}");
        assert_eq!(replayed.text().await.unwrap(), "served: once", "{door}");
        let (kind, _, _) = refusal(send("k2").await.unwrap()).await;
        assert_eq!(kind, "payment-insufficient", "{door}");
        h.reload(&premium(5));
    }
}

const DYN: &str = r#"
[[services]]
name = "dyn"
path = "/dyn/*"
upstream = "UPSTREAM"
price_sats = 5
[[services.prices]]
path = "/dyn/a"
body = { "/model" = "gpt-4" }
price_sats = 50
[[services.prices]]
path = "/dyn/q"
query = { quality = "hd" }
price_sats = 30
[[services.prices]]
path = "/dyn/tokens"
price_sats = 0
per = { body = "/max_tokens", every = 1, price_sats = 1 }
[[services.prices]]
path = "/dyn/n"
price_sats = 0
per = { query = "n", every = 1, price_sats = 10 }
[[services.prices]]
path = "/dyn/o"
body = { "/opts/tier" = "gold" }
price_sats = 70
[[services.prices]]
path = "/dyn/h"
query = { hires = "true" }
price_sats = 35
[[services.prices]]
path = "/dyn/i"
body = { "/messages/0/model" = "gpt-4" }
price_sats = 80
"#;

/// Where a rule looks, what gate402 cannot read one way only is refused
/// with a 400 that says what to send; it never buys the default price.
#[tokio::test]
async fn what_cannot_be_read_one_way_is_refused_not_priced_by_default() {
    let h = Harness::start(DYN).await;
    let send = |path: &'static str, body: Vec<u8>, encoding: Option<&'static str>| {
        let h = &h;
        async move {
            let mut request = h.client.post(h.url(path)).body(body);
            if let Some(encoding) = encoding {
                request = request.header("content-encoding", encoding);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let problem: Value = response.json().await.unwrap();
            (status, problem["detail"].as_str().unwrap_or("").to_owned())
        }
    };
    // Read as it should be, for reference.
    let (status, _) = send("/dyn/a", br#"{"model":"gpt-4"}"#.to_vec(), None).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        h.price(reqwest::Method::POST, "/dyn/a", r#"{"model":"gpt-4"}"#)
            .await,
        50
    );
    // A rule on one item of an array reads that item.
    for (body, price) in [
        (r#"{"messages":[{"model":"gpt-4"},{"model":"x"}]}"#, 80),
        (r#"{"messages":[{"model":"x"},{"model":"y"}]}"#, 5),
    ] {
        assert_eq!(h.price(reqwest::Method::POST, "/dyn/i", body).await, price);
    }
    let utf16: Vec<u8> = r#"{"model":"gpt-4"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let deep = format!(
        r#"{{"model":"gpt-4","x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let mut gzip = stored_gzip(br#"{"model":"gpt-4"}"#);
    let bodies: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        (
            "/dyn/a",
            [&b"\xEF\xBB\xBF"[..], br#"{"model":"gpt-4"}"#].concat(),
            None,
            "byte order mark",
        ),
        ("/dyn/a", utf16, None, "not UTF-8"),
        (
            "/dyn/a",
            br#"{"model":"gpt-4","x":NaN}"#.to_vec(),
            None,
            "not JSON",
        ),
        (
            "/dyn/a",
            br#"{"model":"gpt-4","x":1e999}"#.to_vec(),
            None,
            "not JSON",
        ),
        ("/dyn/a", deep.into_bytes(), None, "not JSON"),
        (
            "/dyn/a",
            std::mem::take(&mut gzip),
            Some("gzip"),
            "content-encoding \"gzip\"",
        ),
        (
            "/dyn/a",
            br#"{"model":"gpt-4","model":"gpt-3"}"#.to_vec(),
            None,
            "given twice",
        ),
        (
            "/dyn/a",
            br#"{"Model":"gpt-4"}"#.to_vec(),
            None,
            "only by case",
        ),
        // Sent without a content-type, which Rack reads as a form.
        (
            "/dyn/a",
            br#"{"note":"&model=gpt-4&"}"#.to_vec(),
            None,
            "declared a form",
        ),
        (
            "/dyn/a",
            br#"{"note":"&model[]=gpt-4&"}"#.to_vec(),
            None,
            "declared a form",
        ),
        // An array or object holding the dear value, and a batch.
        (
            "/dyn/a",
            br#"{"model":["gpt-4","gpt-4"]}"#.to_vec(),
            None,
            "an array",
        ),
        (
            "/dyn/a",
            br#"{"model":["x","gpt-4"]}"#.to_vec(),
            None,
            "an array",
        ),
        (
            "/dyn/a",
            br#"{"model":{"$eq":"gpt-4"}}"#.to_vec(),
            None,
            "an object",
        ),
        (
            "/dyn/a",
            br#"[{"model":"gpt-4"}]"#.to_vec(),
            None,
            "a batch",
        ),
        (
            "/dyn/tokens",
            br#"[{"max_tokens":100000}]"#.to_vec(),
            None,
            "a batch",
        ),
        (
            "/dyn/a",
            br#"[[{"model":"gpt-4"}]]"#.to_vec(),
            None,
            "a batch",
        ),
        // An array on the way to the field: a list an upstream takes an
        // item of.
        (
            "/dyn/o",
            br#"{"opts":[{"tier":"gold"}]}"#.to_vec(),
            None,
            "only inside an array",
        ),
        (
            "/dyn/o",
            br#"{"opts":[{"x":1},{"tier":"gold"}]}"#.to_vec(),
            None,
            "only inside an array",
        ),
        // Another item than the rule's holds the dear value there.
        (
            "/dyn/i",
            br#"{"messages":[{"model":"x"},{"model":"gpt-4"}]}"#.to_vec(),
            None,
            "another item holds",
        ),
        (
            "/dyn/i",
            br#"{"messages":[{"model":"x"},{"model":"GPT-4 "}]}"#.to_vec(),
            None,
            "/messages/0/model",
        ),
        (
            "/dyn/tokens",
            br#"{"max_tokens":1e5}"#.to_vec(),
            None,
            "/max_tokens",
        ),
        (
            "/dyn/tokens",
            br#"{"max_tokens":100000.0}"#.to_vec(),
            None,
            "/max_tokens",
        ),
        (
            "/dyn/tokens",
            br#"{"max_tokens":"100000"}"#.to_vec(),
            None,
            "/max_tokens",
        ),
        (
            "/dyn/tokens",
            br#"{"max_tokens":-100000}"#.to_vec(),
            None,
            "/max_tokens",
        ),
    ];
    for (path, body, encoding, why) in bodies {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (status, detail) = send(path, body, encoding).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}: {detail}");
        assert!(detail.contains(why), "{shown}: {detail}");
    }
    // JSON that is also a form, declared a form as PHP and Rack read the
    // type (cut at `;`, `,` or a space): they read `model=gpt-4`.
    for content_type in [
        "application/x-www-form-urlencoded, application/json",
        "application/x-www-form-urlencoded application/json",
        "multipart/mixed; boundary=b",
    ] {
        let response = h
            .client
            .post(h.url("/dyn/a"))
            .header("content-type", content_type)
            .body(r#"{"note":"&model=gpt-4&"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{content_type}");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("declared a form"),
            "{content_type}: {detail}"
        );
    }
    for (target, why) in [
        ("/dyn/n?n=+100", "\"n\""),
        ("/dyn/n?n=%20100", "\"n\""),
        ("/dyn/n?n=%EF%BC%91%EF%BC%90%EF%BC%90", "\"n\""),
        ("/dyn/q?Quality=hd", "only by case"),
        ("/dyn/q?quality=%22hd%22", "parse it as JSON"),
        ("/dyn/q?quality='hd'", "strip its quotes"),
        ("/dyn/q?quality=%5B%22hd%22%5D", "parse it as JSON"),
        // Rails', PHP's and qs's nested names for a body field.
        ("/dyn/o?opts[0][tier]=gold", "stands for the body field"),
        // Booleans as loosely reading upstreams read them.
        ("/dyn/h?hires=1", "read booleans loosely"),
        ("/dyn/h?hires=yes", "read booleans loosely"),
        ("/dyn/h?hires=On", "read booleans loosely"),
        // An encoded '#' ends the query to an upstream that decodes it
        // before splitting it.
        ("/dyn/q?quality=hd%23x", "%23"),
    ] {
        let response = h.client.get(h.url(target)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{target}");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{target}: {detail}");
        assert_eq!(h.quote_refusal(target).await, detail, "{target}");
    }
    // Priced above what one invoice asks: refused, not a 503 from the node.
    let max = u64::MAX.to_string();
    for (method, target, body) in [
        (
            reqwest::Method::POST,
            "/dyn/tokens",
            format!(r#"{{"max_tokens":{max}}}"#),
        ),
        (
            reqwest::Method::GET,
            "/dyn/n?n=1844674407370955161",
            String::new(),
        ),
    ] {
        let response = h.send(method.clone(), target, &body, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{target}");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("more than the maximum"),
            "{target}: {detail}"
        );
        // Its quote says so too, where it has no body to wait for.
        if method == reqwest::Method::GET {
            assert_eq!(h.quote_refusal(target).await, detail, "{target}");
        }
    }
}

/// `data` framed as gzip in one stored (uncompressed) block, its CRC left
/// zero: the gateway never inflates a body, it only sees the header.
fn stored_gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let len = data.len() as u16;
    out.push(1);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&[0; 8]);
    out
}

/// A client over its cap of unpaid invoices is refused before its request
/// is priced: the pricer is asked only for the invoices handed out.
#[tokio::test]
async fn the_unpaid_cap_is_taken_before_the_pricer_is_asked() {
    let pricer = start_pricer("answer").await;
    let toml = priced_by(&pricer).replace("cache_secs = 60", "cache_secs = 0");
    let h =
        Harness::start_configured(&toml, |c| c.limits.unpaid_invoices_per_minute = Some(5.0)).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(h.post("/quote", "{}", None).await.status());
    }
    let challenged = statuses
        .iter()
        .filter(|s| **s == StatusCode::PAYMENT_REQUIRED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((challenged, limited), (5, 15), "{statuses:?}");
    assert_eq!(pricer.calls.load(Ordering::SeqCst), 5);
}

const READ_OTHERWISE: &str = r#"
[[services]]
name = "q"
path = "/q/*"
upstream = "UPSTREAM"
price_sats = 5
[[services.prices]]
methods = ["PUT"]
price_sats = 200
[[services.prices]]
query = { quality = "hd" }
price_sats = 400
[[services.prices]]
query = { hd_mode = "on" }
price_sats = 70
[[services]]
name = "img"
path = "/img/*"
upstream = "UPSTREAM"
price_sats = 5
[[services.prices]]
path = "/img/{size}/*"
params = { size = "large" }
price_sats = 300
[[services.prices]]
path = "/img/v1/huge"
price_sats = 700
[[services]]
name = "deletes"
path = "/m/*"
methods = ["DELETE"]
upstream = "UPSTREAM"
price_sats = 100
[[services]]
name = "free"
path = "/*"
upstream = "UPSTREAM"
auth = "off"
headers = { "x-api-key" = "UPSTREAM-SECRET" }
"#;

/// What common frameworks read otherwise than the request line and query
/// say is refused, never priced by the default or served free: a query
/// parameter a rule looks at sent as a body field (Rails' `params`, PHP's
/// `$_REQUEST`), a lower-case method (Werkzeug upper-cases it), a `_method`
/// override (Rails, Laravel, Symfony), a path or a path parameter with a
/// format (Rails' `(.:format)`); and TRACE, whose echo would show the
/// upstream's API key, is answered by the gateway.
#[tokio::test]
async fn what_frameworks_read_otherwise_is_refused_or_priced_as_read() {
    let h = Harness::start(READ_OTHERWISE).await;
    let send = |method: &'static str,
                target: &'static str,
                content_type: &'static str,
                body: &'static str| {
        let h = &h;
        async move {
            let mut request = h
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    h.url(target),
                )
                .body(body);
            if !content_type.is_empty() {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    // For reference: as the rules read them.
    assert_eq!(
        h.price(reqwest::Method::GET, "/q/x?quality=hd", "").await,
        400
    );
    assert_eq!(h.price(reqwest::Method::PUT, "/q/x", "").await, 200);
    assert_eq!(h.price(reqwest::Method::GET, "/img/large", "").await, 300);
    assert_eq!(h.price(reqwest::Method::DELETE, "/m/x", "").await, 100);
    assert_eq!(h.price(reqwest::Method::POST, "/q/x", "a=1").await, 5);
    let mut failures = Vec::new();
    // A lower-case method is priced as its upper-case self.
    let put = reqwest::Method::from_bytes(b"put").unwrap();
    let price = h.price(put, "/q/x", "").await;
    if price != 200 {
        failures.push(format!("put /q/x: priced {price}, want 200"));
    }

    // Its body is bound to its payment as a POST's is.
    let lower_post = h
        .client
        .request(reqwest::Method::from_bytes(b"post").unwrap(), h.url("/q/x"))
        .body("a=1")
        .send()
        .await
        .unwrap();
    let challenges: Vec<String> = lower_post
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    if !challenges
        .iter()
        .any(|c| c.starts_with("Payment") && c.contains("digest="))
    {
        failures.push(format!("post /q/x: no digest in {challenges:?}"));
    }

    let folded =
        "--b\r\nContent-Disposition: form-data;\r\n name=\"quality\"\r\n\r\nhd\r\n--b--\r\n";
    let method_part =
        "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n";
    let multipart =
        "--b\r\nContent-Disposition: form-data; name=\"quality\"\r\n\r\nhd\r\n--b--\r\n";
    for (method, target, content_type, body, why) in [
        (
            "POST",
            "/q/x?quality=sd",
            "application/x-www-form-urlencoded",
            "quality=hd",
            "stands for the query parameter",
        ),
        (
            "POST",
            "/q/x",
            "application/json",
            r#"{"quality":"hd"}"#,
            "stands for the query parameter",
        ),
        (
            "POST",
            "/q/x",
            "application/json",
            r#"{"Quality":"hd"}"#,
            "stands for the query parameter",
        ),
        (
            "POST",
            "/q/x",
            "multipart/form-data; boundary=b",
            multipart,
            "stands for the query parameter",
        ),
        ("GET", "/img/large.json", "", "", "and a format"),
        // A '+' that upstreams decoding a path as a form read as a space.
        ("GET", "/img/large+", "", "", "'+' in a path"),
        ("GET", "/img/+large", "", "", "'+' in a path"),
        ("GET", "/img/large%2B", "", "", "'+' in a path"),
        ("GET", "/img/v1/huge.json", "", "", "and a format"),
        ("GET", "/img/v1/huge.json/", "", "", "and a format"),
        // The same, the dot one that folding Unicode makes (`．`, `﹒`, `․`).
        ("GET", "/img/large%EF%BC%8Ejson/x", "", "", "and a format"),
        ("GET", "/img/large%EF%B9%92json", "", "", "and a format"),
        ("GET", "/img/v1/huge%E2%80%A4json", "", "", "and a format"),
        ("GET", "/q%EF%BC%8Ejson", "", "", "format suffix"),
        // A format suffix on a service's own path reaches it through the
        // free catch-all.
        ("GET", "/q.json", "", "", "format suffix"),
        ("GET", "/img.xml/", "", "", "format suffix"),
        ("DELETE", "/m.json", "", "", "format suffix"),
        ("GET", "/q/x?+hd.mode=on", "", "", "differs from"),
        // Delimiters an upstream decodes before splitting the query, and
        // a list to one that splits a value at commas.
        ("GET", "/q/x?x%3D1%26quality%3Dhd", "", "", "encoded '&'"),
        ("GET", "/q/x?quality%3Dhd%26y", "", "", "encoded '&'"),
        ("GET", "/q/x?quality=hd%26x=1", "", "", "encoded '&'"),
        ("GET", "/q/x?quality=hd%3Bx", "", "", "encoded '&'"),
        ("GET", "/q/x?quality=hd,x", "", "", "split at commas"),
        ("GET", "/q/x?quality=x,%20hd", "", "", "split at commas"),
        // A path parameter too (Spring's `@PathVariable List<String>`).
        ("GET", "/img/large,x", "", "", "split at commas"),
        ("GET", "/img/x,%20large/y", "", "", "split at commas"),
        (
            "POST",
            "/q/x",
            "",
            "quality=hd",
            "stands for the query parameter",
        ),
        (
            "POST",
            "/q/x",
            "multipart/form-data; boundary=b",
            folded,
            "stands for the query parameter",
        ),
        (
            "POST",
            "/q/x",
            "application/x-www-form-urlencoded",
            "+hd.mode=on",
            "stands for the query parameter",
        ),
        ("POST", "/m/x", "", "_method=DELETE", "_method"),
        (
            "POST",
            "/m/x",
            "application/x-www-form-urlencoded, text/plain",
            "_method=DELETE",
            "_method",
        ),
        (
            "POST",
            "/m/x",
            "multipart/mixed; boundary=b",
            method_part,
            "_method",
        ),
        (
            "POST",
            "/m/x",
            "text/plain; x=/json",
            r#"{"_method":"DELETE"}"#,
            "_method",
        ),
        (
            "POST",
            "/m/x",
            "application/x-www-form-urlencoded",
            "+.method=DELETE",
            "_method",
        ),
        ("POST", "/q/x?_method=PUT", "", "", "_method"),
        ("POST", "/m/x?_method=DELETE", "", "", "_method"),
        ("POST", "/m/x?_METHOD=DELETE", "", "", "_method"),
        (
            "POST",
            "/m/x",
            "application/x-www-form-urlencoded",
            "_method=DELETE",
            "_method",
        ),
        (
            "POST",
            "/m/x",
            "application/json",
            r#"{"_method":"DELETE"}"#,
            "_method",
        ),
    ] {
        let (status, text) = send(method, target, content_type, body).await;
        if status != StatusCode::BAD_REQUEST || !text.contains(why) {
            failures.push(format!("{method} {target} {body}: {status} {text}"));
        }
    }
    // Where no route or price depends on the method, `_method` is left to
    // the upstream.
    let (status, text) = send("POST", "/other?_method=PUT", "", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    for method in ["TRACE", "trace", "TRACK"] {
        let (status, text) = send(method, "/anything", "", "").await;
        if status != StatusCode::METHOD_NOT_ALLOWED || text.contains("served:") {
            failures.push(format!("{method} /anything: {status} {text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Its 405 names what the path is served for, as every 405 must (it
    // had no Allow).
    let trace = |path: &'static str| {
        let h = &h;
        async move {
            let answer = h
                .client
                .request(reqwest::Method::TRACE, h.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
            answer.headers()["allow"].to_str().unwrap().to_owned()
        }
    };
    // The DELETE service first, then the catch-all, which names none.
    assert_eq!(
        trace("/m/x").await,
        "DELETE, GET, HEAD, POST, PUT, PATCH, OPTIONS"
    );
}
