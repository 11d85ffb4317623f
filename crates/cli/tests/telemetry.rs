//! `gate402 serve` exports its traces as a process: `[telemetry]` read
//! from the config file, spans sent to an OTLP/HTTP collector (the test's
//! own), the last of them on SIGTERM, and log lines inside a request
//! naming its trace. The spans themselves are checked field by field in
//! the gateway's tests; here the protobuf bodies are only searched for
//! what must be in them.

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use common::{free_port, ServeProcess};

/// Every body posted to `/v1/traces`, as received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Bytes>>>);

impl Collector {
    /// Listens on loopback; returns its base URL.
    async fn start(&self) -> String {
        let bodies = self.0.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let bodies = bodies.clone();
                async move {
                    bodies.lock().unwrap().push(body);
                    [("content-type", "application/x-protobuf")]
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    /// Every body, one after the other.
    fn received(&self) -> Vec<u8> {
        self.0.lock().unwrap().concat()
    }
}

/// Whether `needle` occurs in `haystack`.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A paid service and a free one, both in front of an upstream nobody
/// listens on; `telemetry` is the config's `[telemetry]` table, if any.
fn config(telemetry: &str) -> String {
    let dead = free_port();
    format!(
        "{telemetry}
[[services]]
name = \"weather\"
path = \"/weather\"
upstream = \"http://127.0.0.1:{dead}\"
price_sats = 10

[[services]]
name = \"gone\"
path = \"/gone\"
upstream = \"http://127.0.0.1:{dead}\"
price_sats = 1
auth = \"off\"
"
    )
}

/// `text` without its ANSI colours.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('\x1b') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

/// A 402, then a free request whose upstream cannot be reached (logged
/// inside the request); then SIGTERM. Returns what the gateway logged,
/// without colours.
async fn run(root: &std::path::Path, config: &str) -> String {
    let mut gateway = ServeProcess::start(root, config).await;
    let unpaid = reqwest::get(format!("{}/weather", gateway.base))
        .await
        .unwrap();
    assert_eq!(unpaid.status(), 402);
    let gone = reqwest::get(format!("{}/gone", gateway.base))
        .await
        .unwrap();
    assert_eq!(gone.status(), 502);
    let status = gateway.terminate().await;
    assert!(status.success(), "{status:?}: {}", gateway.log_text());
    plain(&gateway.log_text())
}

#[tokio::test]
async fn serve_sends_its_spans_by_the_time_it_exits_and_logs_name_their_trace() {
    let collector = Collector::default();
    let url = collector.start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = run(
        dir.path(),
        &config(&format!(
            "[telemetry]\notlp_endpoint = \"{url}\"\nservice_name = \"traced-gateway\"\n"
        )),
    )
    .await;

    // The batch is sent on SIGTERM: well before its 5 s schedule.
    let received = collector.received();
    for expected in [
        "traced-gateway",
        "GET /weather",
        "lightning.create_invoice",
        "GET /gone",
        "unreachable",
    ] {
        assert!(
            holds(&received, expected.as_bytes()),
            "{expected:?} not exported"
        );
    }
    // The warning logged inside the unreachable request names its trace,
    // and that trace is the one exported.
    let warning = log
        .lines()
        .find(|l| l.contains("upstream unreachable"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    let trace_id = warning
        .split("trace_id=")
        .nth(1)
        .and_then(|rest| rest.get(..32))
        .unwrap_or_else(|| panic!("no trace id in {warning}"));
    assert!(
        holds(&received, &hex::decode(trace_id).unwrap()),
        "trace {trace_id} was not exported"
    );
}

#[tokio::test]
async fn serve_without_telemetry_logs_no_spans() {
    let dir = tempfile::tempdir().unwrap();
    let log = run(dir.path(), &config("")).await;
    let warning = log
        .lines()
        .find(|l| l.contains("upstream unreachable"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(!warning.contains("trace_id"), "{warning}");
    assert!(!warning.contains("request{"), "{warning}");
}
