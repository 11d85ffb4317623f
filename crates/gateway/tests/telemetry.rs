//! Traces and call timings end to end: a gateway on the sandbox, a real
//! upstream, and an OTLP/HTTP collector of the test's own that decodes
//! what the exporter posts.
//!
//! Each test installs its subscriber for its own thread only (the
//! runtime of `#[tokio::test]` runs every task on that thread), so the
//! tests of this file do not see each other's spans. They run one at a
//! time all the same: `tracing` caches per call site whether anyone wants
//! it, for every thread at once, and a site first met on the thread of a
//! test without a subscriber can stay off for a while on the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use gate402_client::Offer;
use gate402_gateway::config::{Schemes, ServiceConfig};
use gate402_gateway::telemetry::Telemetry;
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_lightning_sandbox::http::pay_via;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{json, Value};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;

/// The trace and span of a caller that sends `traceparent`.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Held by each test for its whole run (see the top of the file).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A span as the collector received it, with its resource's service name.
#[derive(Debug, Clone)]
struct Received {
    service_name: String,
    span: Span,
}

impl Received {
    fn name(&self) -> &str {
        &self.span.name
    }

    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    fn kind(&self) -> i32 {
        self.span.kind
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// An OTLP/HTTP collector on loopback: `POST /v1/traces`, protobuf.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    posts: Arc<Mutex<usize>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let posts: Arc<Mutex<usize>> = Arc::default();
        let (kept, counted) = (spans.clone(), posts.clone());
        let app = Router::new().route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| {
                let (kept, counted) = (kept.clone(), counted.clone());
                async move {
                    assert_eq!(
                        headers["content-type"], "application/x-protobuf",
                        "OTLP/HTTP protobuf"
                    );
                    // The exporter is built without compression.
                    assert!(headers.get("content-encoding").is_none());
                    *counted.lock().unwrap() += 1;
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut kept = kept.lock().unwrap();
                    for resource_spans in request.resource_spans {
                        let service_name = resource_spans
                            .resource
                            .as_ref()
                            .and_then(|r| attr(&r.attributes, "service.name"))
                            .unwrap_or_default();
                        for scope in resource_spans.scope_spans {
                            for span in scope.spans {
                                kept.push(Received {
                                    service_name: service_name.clone(),
                                    span,
                                });
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let addr = serve(app).await;
        Self { addr, spans, posts }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    fn posts(&self) -> usize {
        *self.posts.lock().unwrap()
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The upstream: `/weather` echoes the headers it got, `/broken` fails.
async fn upstream() -> String {
    let app = Router::new()
        .route(
            "/weather",
            get(|headers: HeaderMap| async move {
                let headers: HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                Json(json!({ "headers": headers }))
            }),
        )
        .route(
            "/broken",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }),
        );
    format!("http://{}", serve(app).await)
}

/// A config from `telemetry` (the `[telemetry]` table's body, read as
/// `gate402 serve` reads it, with no `OTEL_*` variable set) selling
/// `/weather` (L402, MPP and x402) and `/broken`.
fn config(telemetry: &str, upstream: &str) -> GatewayConfig {
    let mut config =
        GatewayConfig::parse(&format!("[telemetry]\n{telemetry}\n"), |_| None).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let mut weather = ServiceConfig::proxied("weather", "/weather", 10, upstream);
    weather.priced.schemes = Schemes::ALL;
    let broken = ServiceConfig::proxied("broken", "/broken", 10, upstream);
    config.services = vec![weather, broken];
    config
}

/// A gateway and a client of it.
struct Harness {
    gateway: Gateway,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(config: &GatewayConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Gateway::start(config, dir.path()).await.unwrap();
        Self {
            gateway,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    /// The 402 of `path`, paid on the sandbox: its offer and preimage.
    async fn buy(&self, path: &str) -> (Offer, reqwest::header::HeaderMap, [u8; 32]) {
        let unpaid = self.client.get(self.url(path)).send().await.unwrap();
        assert_eq!(unpaid.status(), StatusCode::PAYMENT_REQUIRED);
        let offer = Offer::from_headers(unpaid.headers()).unwrap();
        let paid = pay_via(
            &self.client,
            &format!("http://{}", self.gateway.addr()),
            &offer.bolt11,
        )
        .await
        .unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        (offer, unpaid.headers().clone(), preimage)
    }

    async fn get(&self, path: &str, header: (&str, &str)) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header(header.0, header.1)
            .send()
            .await
            .unwrap()
    }
}

/// x402's `payment-signature` for the offer in a 402's headers.
fn x402_signature(unpaid: &reqwest::header::HeaderMap) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let required: Value =
        serde_json::from_slice(&b64.decode(unpaid["payment-required"].as_bytes()).unwrap())
            .unwrap();
    let accepted = &required["accepts"][0];
    b64.encode(
        json!({"x402Version": 2, "scheme": "exact", "network": "lightning",
               "payload": {"invoice": accepted["extra"]["invoice"]}, "accepted": accepted})
        .to_string(),
    )
}

/// Sends what is left to send and stops the exporter (it blocks: off the
/// runtime's thread, which must keep serving the collector).
async fn flush(telemetry: Telemetry) {
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap()
        .unwrap();
}

/// What the log writer wrote.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_paid_request_is_one_trace_of_its_route_payment_store_node_and_upstream() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let collector = Collector::start().await;
    let upstream = upstream().await;
    let config = config(
        &format!(
            "otlp_endpoint = \"{}\"\nservice_name = \"paid-weather\"",
            collector.url()
        ),
        &upstream,
    );
    let telemetry = Telemetry::start(&config.telemetry).unwrap().unwrap();
    let log = LogBuffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(LevelFilter::INFO),
        )
        .with(telemetry.layer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = Harness::start(&config).await;

    // Paid through x402: the node is asked whether its invoice settled.
    let (offer, unpaid, _) = h.buy("/weather").await;
    let paid = h
        .get("/weather", ("payment-signature", &x402_signature(&unpaid)))
        .await;
    assert_eq!(paid.status(), StatusCode::OK);
    let echoed: Value = paid.json().await.unwrap();
    let hash = hex::encode(offer.invoice.payment_hash());

    // Paid through L402: its preimage and macaroon must appear nowhere.
    // The caller's trace is joined; its "not sampled" flag does not
    // overrule the ratio.
    let (offer_l402, _, preimage) = h.buy("/weather").await;
    let l402 = offer_l402.l402_authorization(&preimage).unwrap();
    let paid_l402 = h
        .client
        .get(h.url("/weather"))
        .header("authorization", &l402)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00"))
        .send()
        .await
        .unwrap();
    assert_eq!(paid_l402.status(), StatusCode::OK);
    // A failing upstream: the warning logged inside the request names its
    // trace.
    let (offer_broken, _, preimage_broken) = h.buy("/broken").await;
    let broken = offer_broken.l402_authorization(&preimage_broken).unwrap();
    assert_eq!(
        h.get("/broken", ("authorization", &broken)).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );

    h.gateway.shutdown().await.unwrap();
    flush(telemetry).await;
    let spans = collector.spans();
    assert!(spans.iter().all(|s| s.service_name == "paid-weather"));

    // The 402 of the x402 payment: a trace of its own, naming the invoice
    // offered, with the node's create_invoice (a 402 writes nothing to the
    // store).
    let challenge = spans
        .iter()
        .find(|s| {
            s.name() == "GET /weather"
                && s.attr("http.response.status_code").as_deref() == Some("402")
                && s.attr("gate402.payment_hash").as_deref() == Some(hash.as_str())
        })
        .unwrap_or_else(|| panic!("no 402 span offering {hash}: {spans:#?}"));
    let children_of = |parent: &Received| -> Vec<Received> {
        spans
            .iter()
            .filter(|s| s.span.parent_span_id == parent.span.span_id)
            .cloned()
            .collect()
    };
    let names =
        |spans: &[Received]| -> Vec<String> { spans.iter().map(|s| s.name().to_owned()).collect() };
    let issued = children_of(challenge);
    assert!(
        names(&issued).contains(&"lightning.create_invoice".to_owned()),
        "{:?}",
        names(&issued)
    );

    // The paid request: one server span with the service, the scheme and
    // the payment hash, and under it the store's claim, the node's
    // invoice_status and the upstream, all in its trace.
    let request = spans
        .iter()
        .find(|s| {
            s.attr("gate402.auth.scheme").as_deref() == Some("x402")
                && s.attr("http.response.status_code").as_deref() == Some("200")
        })
        .unwrap_or_else(|| panic!("no paid x402 request span: {spans:#?}"));
    assert_eq!(request.name(), "GET /weather");
    assert_eq!(request.kind(), SpanKind::Server as i32);
    assert!(request.span.parent_span_id.is_empty(), "a root span");
    for (key, value) in [
        ("gate402.service", "weather"),
        ("gate402.payment_hash", hash.as_str()),
        ("http.request.method", "GET"),
        ("http.route", "/weather"),
        ("url.path", "/weather"),
    ] {
        assert_eq!(request.attr(key).as_deref(), Some(value), "{key}");
    }
    let children = children_of(request);
    assert!(children
        .iter()
        .all(|c| c.span.trace_id == request.span.trace_id));
    let child = |name: &str| {
        children
            .iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no {name} under the request: {:?}", names(&children)))
    };
    let claim = child("store.claim");
    assert_eq!(claim.kind(), SpanKind::Client as i32);
    assert_eq!(claim.attr("db.system.name").as_deref(), Some("sqlite"));
    assert_eq!(claim.attr("db.operation.name").as_deref(), Some("claim"));
    let node = child("lightning.invoice_status");
    assert_eq!(
        node.attr("gate402.lightning.backend").as_deref(),
        Some("sandbox")
    );
    let upstream_span = child("GET");
    assert_eq!(upstream_span.kind(), SpanKind::Client as i32);
    assert_eq!(
        upstream_span.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        upstream_span.attr("server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        upstream_span.attr("gate402.service").as_deref(),
        Some("weather")
    );
    // The upstream was told the trace: W3C traceparent, the upstream
    // span as its parent.
    let traceparent = echoed["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            hex::encode(&request.span.trace_id),
            hex::encode(&upstream_span.span.span_id)
        )
    );

    // Nothing secret in any span: no preimage, no macaroon, no credential.
    let macaroon = l402
        .trim_start_matches("L402 ")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let dumped = format!("{spans:?}");
    for secret in [
        hex::encode(preimage),
        macaroon,
        hex::encode(preimage_broken),
    ] {
        assert!(!dumped.contains(&secret), "a span holds a secret");
    }
    let l402_request = spans
        .iter()
        .find(|s| s.attr("gate402.auth.scheme").as_deref() == Some("L402"))
        .expect("the L402 request's span");
    assert_eq!(
        l402_request.attr("gate402.payment_hash"),
        Some(hex::encode(offer_l402.invoice.payment_hash()))
    );
    assert_eq!(hex::encode(&l402_request.span.trace_id), CALLER_TRACE);
    assert_eq!(hex::encode(&l402_request.span.parent_span_id), CALLER_SPAN);

    // The failed request: an error span, and its warning logged with its
    // trace id.
    let failed = spans
        .iter()
        .find(|s| {
            s.attr("gate402.service").as_deref() == Some("broken")
                && s.kind() == SpanKind::Server as i32
                && s.attr("http.response.status_code").as_deref() == Some("500")
        })
        .expect("the failed request's span");
    assert_eq!(
        failed.span.status.as_ref().map(|s| s.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );
    let trace_id = hex::encode(&failed.span.trace_id);
    let logged = log.text();
    let warning = logged
        .lines()
        .find(|l| l.contains("upstream failed"))
        .unwrap_or_else(|| panic!("no warning logged: {logged}"));
    assert!(
        warning.contains(&format!("trace_id={trace_id}")),
        "{warning}"
    );
    assert!(!logged.contains(&hex::encode(preimage_broken)));
}

#[tokio::test]
async fn without_an_endpoint_or_with_nothing_sampled_nothing_is_sent() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let collector = Collector::start().await;
    let upstream = upstream().await;

    // No endpoint (and no OTEL_EXPORTER_OTLP_ENDPOINT): no exporter at all.
    let off = config("service_name = \"quiet\"", &upstream);
    assert!(Telemetry::start(&off.telemetry).unwrap().is_none());

    // An endpoint, but a sample ratio of 0: spans are made, none kept.
    let unsampled = config(
        &format!(
            "otlp_endpoint = \"{}\"\nsample_ratio = 0.0",
            collector.url()
        ),
        &upstream,
    );
    let telemetry = Telemetry::start(&unsampled.telemetry).unwrap().unwrap();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(telemetry.layer()));
    let h = Harness::start(&unsampled).await;
    let (offer, _, preimage) = h.buy("/weather").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    // A caller's "sampled" flag does not overrule the ratio either.
    let served = h
        .client
        .get(h.url("/weather"))
        .header("authorization", &l402)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let echoed: Value = served.json().await.unwrap();
    // The upstream is told the caller's trace, not sampled here.
    let traceparent = echoed["headers"]["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{CALLER_TRACE}-")) && traceparent.ends_with("-00"),
        "{traceparent}"
    );
    h.gateway.shutdown().await.unwrap();
    flush(telemetry).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(collector.spans().len(), 0, "{:#?}", collector.spans());
    assert_eq!(collector.posts(), 0);
}

/// `count` of the histogram `name` for `call`, from `/metrics`.
fn histogram_count(metrics: &str, name: &str, call: &str) -> u64 {
    let prefix = format!("{name}_count{{call=\"{call}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn store_and_lightning_calls_are_timed_at_metrics() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let upstream = upstream().await;
    // Telemetry off: the histograms do not depend on it. Metrics on the
    // serving port, as `public_metrics` puts them.
    let mut config = config("", &upstream);
    config.server.public_metrics = true;
    let h = Harness::start(&config).await;
    let (offer, _, preimage) = h.buy("/weather").await;
    let l402 = offer.l402_authorization(&preimage).unwrap();
    assert_eq!(
        h.get("/weather", ("authorization", &l402)).await.status(),
        StatusCode::OK
    );
    let metrics = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, call) in [
        ("gate402_store_call_duration_seconds", "claim"),
        ("gate402_store_call_duration_seconds", "release_claims_of"),
        ("gate402_lightning_call_duration_seconds", "create_invoice"),
    ] {
        assert!(
            histogram_count(&metrics, name, call) >= 1,
            "{name}{{call={call}}}"
        );
    }
    assert!(
        metrics
            .contains("gate402_store_call_duration_seconds_bucket{le=\"0.0001\",call=\"claim\"}")
            || metrics.contains(
                "gate402_store_call_duration_seconds_bucket{call=\"claim\",le=\"0.0001\"}"
            )
    );
    assert!(metrics.contains("# TYPE gate402_lightning_call_duration_seconds histogram"));
    h.gateway.shutdown().await.unwrap();
}
