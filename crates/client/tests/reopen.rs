//! A session closed while the client tops it up: the top-up's payment,
//! unspent, opens a session of its own (refunded at its close), rather
//! than being spent through its invoice's L402 token, which no close
//! refunds.

use std::future::IntoFuture;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use gate402_client::{Client, Fetched, Ledger, Payer};
use gate402_gateway::config::ServiceConfig;
use gate402_gateway::{Gateway, GatewayConfig};

/// What the proxy forwards to: the gateway and its admin API.
#[derive(Clone)]
struct Behind {
    gateway: String,
    admin: String,
    secret: String,
}

/// The `sessionId` of a `topUp` credential in `value` (`Payment <b64>`).
fn top_up_of(value: &str) -> Option<String> {
    let token = value.strip_prefix("Payment ")?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    let credential: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let payload = &credential["payload"];
    (payload["action"] == "topUp").then(|| payload["sessionId"].as_str().map(str::to_owned))?
}

/// Forwards every request to the gateway; one carrying a `topUp` first
/// has the operator close its session, as an idle close racing it would.
async fn proxy(State(behind): State<Behind>, request: Request) -> Response {
    let http = reqwest::Client::new();
    let closing = request
        .headers()
        .values()
        .filter_map(|v| v.to_str().ok())
        .find_map(top_up_of);
    if let Some(session) = closing {
        let closed = http
            .post(format!(
                "{}/admin/api/sessions/{session}/close",
                behind.admin
            ))
            .bearer_auth(&behind.secret)
            .send()
            .await
            .unwrap();
        assert!(
            closed.status().is_success(),
            "{}",
            closed.text().await.unwrap()
        );
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut forwarded = http.request(
        parts.method.clone(),
        format!("{}{}", behind.gateway, parts.uri.path_and_query().unwrap()),
    );
    for (name, value) in &parts.headers {
        if name != "host" {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = forwarded.body(body).send().await.unwrap();
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    response
        .body(Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_top_up_refused_as_its_session_closed_opens_a_session_of_its_own() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route("/chat", get(|| async { "an answer" }));
    tokio::spawn(axum::serve(listener, app).into_future());
    // 2 sat buys two requests.
    let mut service = ServiceConfig::proxied("chat", "/chat", 1, &upstream);
    service.priced = service.priced.balance(2);
    let mut config = GatewayConfig::default_with_services(vec![service]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let behind = Behind {
        gateway: format!("http://{}", gateway.addr()),
        admin: format!("http://{}", gateway.admin_addr().expect("admin listens")),
        secret: std::fs::read_to_string(gw_dir.path().join("admin_secret"))
            .unwrap()
            .trim()
            .to_owned(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/chat", listener.local_addr().unwrap());
    let front = Router::new().fallback(proxy).with_state(behind);
    tokio::spawn(axum::serve(listener, front).into_future());

    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = Client {
        http: reqwest::Client::new(),
        payer: Payer {
            sessions: true,
            ..Payer::sandbox(ledger.clone(), 100)
        },
    };
    // Opened, spent, then topped up: the top-up finds the session closed.
    for _ in 0..3 {
        let request = client.http.get(&url).build().unwrap();
        match client.fetch(request).await.unwrap() {
            Fetched::Response(answer, _) => {
                assert_eq!(answer.status(), 200);
                assert_eq!(answer.text().await.unwrap(), "an answer");
            }
            Fetched::Offer(_) => panic!("an offer"),
        }
    }
    let payments = ledger.payments(0).unwrap();
    let schemes: Vec<&str> = payments.iter().map(|p| p.scheme.as_str()).collect();
    assert_eq!(payments.len(), 2, "{schemes:?}");
    assert!(
        schemes.iter().all(|s| !s.eq_ignore_ascii_case("L402")),
        "a payment spent through L402, which no close refunds: {schemes:?}"
    );
    let open = ledger.sessions(false).unwrap();
    assert_eq!(open.len(), 1, "the top-up's payment opened a session");
    gateway.shutdown().await.unwrap();
}
