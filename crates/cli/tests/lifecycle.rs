//! The life of a single-use MPP credential in `gate402 serve` processes,
//! against an upstream started here:
//!
//! - a response that streams longer than the claim's lease keeps its
//!   claim (renewed) and is served once;
//! - a client that stops reading holds its claim until the idle timeout
//!   closes the connection, then the payment is spent;
//! - a graceful stop records every commit before the process exits, so a
//!   restart serves nothing twice;
//! - a process killed before the answer existed leaves the payment
//!   unspent, and the retry is served;
//! - a response kept for its `Idempotency-Key` whose spend was never
//!   written is not replayed: the payment given back is served once;
//! - a keyed request on a prepaid balance (PostgreSQL) is charged once
//!   whenever a kill cuts its spend, whether its client waits for the
//!   whole answer or leaves in the middle of it;
//! - a balance's deposit is in the books before its first answer, so a
//!   kill just after it loses no revenue.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use common::{buy_l402, buy_mpp, ServeProcess};
use gate402_postgres_testkit::TestPostgres;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

const IN_FLIGHT: &str = "being used by another request";
const SPENT: &str = "already been used";

/// How long `/stream` streams, one event every [`EVENT_EVERY`].
const STREAM_FOR: Duration = Duration::from_secs(7);
const EVENT_EVERY: Duration = Duration::from_millis(250);
/// The body of `/big`: far more than the socket buffers between the
/// gateway and a client that stopped reading.
const BIG: usize = 16 << 20;
/// How long `/slow` works before it answers.
const SLOW: Duration = Duration::from_secs(2);

/// Calls the upstream received, per route.
#[derive(Default)]
struct Calls {
    stream: AtomicUsize,
    big: AtomicUsize,
    quick: AtomicUsize,
    slow: AtomicUsize,
    numbered: AtomicUsize,
}

/// The upstream: an SSE stream, a large body, a quick answer, a slow
/// one, and one that numbers its calls.
async fn start_upstream() -> (u16, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let big = Bytes::from(vec![b'x'; BIG]);
    let app = Router::new()
        .route(
            "/stream",
            get(|State(calls): State<Arc<Calls>>| async move {
                calls.stream.fetch_add(1, Ordering::SeqCst);
                let events = (STREAM_FOR.as_millis() / EVENT_EVERY.as_millis()) as usize;
                let body = futures_util::stream::unfold(0usize, move |n| async move {
                    if n == events {
                        return None;
                    }
                    if n > 0 {
                        tokio::time::sleep(EVENT_EVERY).await;
                    }
                    let last = if n + 1 == events { "last" } else { "tick" };
                    let event = format!("event: {last}\ndata: {n}\n\n");
                    Some((Ok::<_, std::io::Error>(Bytes::from(event)), n + 1))
                });
                (
                    [(CONTENT_TYPE, "text/event-stream")],
                    Body::from_stream(body),
                )
            }),
        )
        .route(
            "/big",
            get(move |State(calls): State<Arc<Calls>>| {
                let big = big.clone();
                async move {
                    calls.big.fetch_add(1, Ordering::SeqCst);
                    big
                }
            }),
        )
        .route(
            "/quick",
            get(|State(calls): State<Arc<Calls>>| async move {
                calls.quick.fetch_add(1, Ordering::SeqCst);
                "{\"done\":true}"
            }),
        )
        .route(
            "/numbered",
            get(|State(calls): State<Arc<Calls>>| async move {
                let n = calls.numbered.fetch_add(1, Ordering::SeqCst) + 1;
                format!("{{\"call\":{n}}}")
            }),
        )
        .route(
            "/slow",
            get(|State(calls): State<Arc<Calls>>| async move {
                calls.slow.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(SLOW).await;
                "{\"done\":true}"
            }),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, calls)
}

/// Each route as a priced service on `upstream`; every 402 makes a fresh
/// invoice (the tests buy and replay far more than the default allows).
fn config(upstream: u16, extra: &str) -> String {
    let mut text = format!("[limits]\nunpaid_invoices_per_minute = 0\n{extra}\n");
    for route in ["stream", "big", "quick", "slow", "numbered"] {
        text += &format!(
            "[[services]]\nname = \"{route}\"\npath = \"/{route}\"\nupstream = \"http://127.0.0.1:{upstream}\"\nprice_sats = 2\ndescription = \"{route}\"\n"
        );
    }
    text
}

/// A client that opens a new connection for every request.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends `credential` to `path`; the status and the whole body.
async fn present(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    credential: &str,
) -> (StatusCode, String) {
    let response = http
        .get(format!("{base}{path}"))
        .header(AUTHORIZATION, credential)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// The `detail` of a problem response.
fn detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// A credential another request holds: `409` with `Retry-After`, not
/// spent (a `402` would tell its client to pay again).
fn assert_in_flight(status: StatusCode, body: &str, context: &str) {
    assert_eq!(status, StatusCode::CONFLICT, "{context}: {body}");
    assert!(body.contains(IN_FLIGHT), "{context}: {body}");
}

/// Presents `credential` until the gateway calls it spent; every answer
/// on the way must be a refusal (a claim still finishing is "in use").
async fn assert_spent(http: &reqwest::Client, base: &str, path: &str, credential: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, body) = present(http, base, path, credential).await;
        if status == StatusCode::PAYMENT_REQUIRED && body.contains(SPENT) {
            return;
        }
        assert_in_flight(status, &body, "a spent credential was answered");
        assert!(
            Instant::now() < deadline,
            "the credential is still held by a finished request: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_lease_is_served_once() {
    let (upstream, calls) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = ServeProcess::start(
        dir.path(),
        &config(upstream, "[store]\nclaim_lease_secs = 2"),
    )
    .await;
    let http = fresh_connections();
    let credential = buy_mpp(&http, &gateway.base, "/stream").await;

    let (headers_tx, headers_rx) = tokio::sync::oneshot::channel();
    let stream = {
        let (http, url, credential) = (
            http.clone(),
            format!("{}/stream", gateway.base),
            credential.clone(),
        );
        tokio::spawn(async move {
            let mut response = http
                .get(url)
                .header(AUTHORIZATION, credential)
                .send()
                .await
                .unwrap();
            let status = response.status();
            headers_tx.send(Instant::now()).unwrap();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.unwrap() {
                body.extend_from_slice(&chunk);
            }
            (status, String::from_utf8(body).unwrap(), Instant::now())
        })
    };
    let started = headers_rx.await.unwrap();

    // Past the lease, twice: the claim must have been renewed.
    let mut answers = Vec::new();
    for at in [3, 5] {
        tokio::time::sleep_until((started + Duration::from_secs(at)).into()).await;
        assert!(!stream.is_finished(), "the stream ended before {at} s");
        let (status, body) = present(&http, &gateway.base, "/stream", &credential).await;
        answers.push((at, status, body));
    }
    let (status, body, ended) = stream.await.unwrap();
    let lasted = ended - started;
    eprintln!(
        "the stream lasted {lasted:?}; replays meanwhile: {:?}",
        answers
            .iter()
            .map(|(at, status, body)| (*at, status.as_u16(), detail(body)))
            .collect::<Vec<_>>()
    );
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("event: last"),
        "the stream was cut short: {body}"
    );
    assert!(lasted >= STREAM_FOR - Duration::from_secs(1));
    for (at, status, body) in &answers {
        assert_in_flight(
            *status,
            body,
            &format!("the credential was served again at {at} s while its stream ran"),
        );
    }

    assert_spent(&http, &gateway.base, "/stream", &credential).await;
    assert_eq!(calls.stream.load(Ordering::SeqCst), 1, "upstream calls");
}

/// Reads the response head from `socket`: the status line and headers,
/// and how many body bytes came in with them.
async fn read_head(socket: &mut tokio::net::TcpStream) -> (String, usize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf.len() - end - 4);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_served_once() {
    const LEASE: Duration = Duration::from_secs(2);
    const IDLE: Duration = Duration::from_secs(4);
    let (upstream, calls) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = ServeProcess::start(
        dir.path(),
        &config(
            upstream,
            &format!(
                "[store]\nclaim_lease_secs = {}\n[server]\nidle_timeout_secs = {}",
                LEASE.as_secs(),
                IDLE.as_secs()
            ),
        ),
    )
    .await;
    let http = fresh_connections();
    let credential = buy_mpp(&http, &gateway.base, "/big").await;

    // A small receive buffer: the kernel must not swallow the body for
    // the client that stopped reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stalled = socket
        .connect(format!("127.0.0.1:{}", gateway.port).parse().unwrap())
        .await
        .unwrap();
    stalled
        .write_all(
            format!(
                "GET /big HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: {credential}\r\n\r\n",
                gateway.port
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (head, mut received) = read_head(&mut stalled).await;
    let stalled_at = Instant::now();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Longer than the lease, shorter than the idle timeout: still held.
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    let (status, body) = present(&http, &gateway.base, "/big", &credential).await;
    assert_in_flight(
        status,
        &body,
        "served again while the first answer was still being sent",
    );

    // The idle timeout closes the stalled connection; the client went
    // away, so the payment is spent.
    let spent_after = loop {
        let (status, body) = present(&http, &gateway.base, "/big", &credential).await;
        if status == StatusCode::PAYMENT_REQUIRED && body.contains(SPENT) {
            break stalled_at.elapsed();
        }
        assert_in_flight(status, &body, "served twice");
        assert!(
            stalled_at.elapsed() < IDLE + Duration::from_secs(5),
            "the stalled connection still holds the credential"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Only now read again (reading earlier would wake the connection up):
    // what was already buffered, then the end.
    let mut chunk = vec![0u8; 256 * 1024];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut chunk)).await {
            Ok(Ok(0)) => break "EOF",
            Ok(Ok(n)) => received += n,
            Ok(Err(_)) => break "reset",
            Err(_) => panic!("the stalled connection was never closed ({received} bytes read)"),
        }
    };
    eprintln!(
        "stalled reader: spent {spent_after:?} after it stopped reading; \
         connection ended by {ended} after {received} of {BIG} body bytes"
    );
    assert!(received < BIG, "the whole body went out: {received} bytes");
    assert!(
        spent_after >= IDLE - Duration::from_millis(500),
        "spent {spent_after:?} after the client stopped reading, before the idle timeout"
    );
    assert_eq!(calls.big.load(Ordering::SeqCst), 1, "upstream calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_finishes_every_commit() {
    const CYCLES: usize = 3;
    const CREDENTIALS: usize = 40;
    const WORKERS: usize = 8;
    let (upstream, calls) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = ServeProcess::start(dir.path(), &config(upstream, "")).await;
    let mut served_twice = Vec::new();
    for cycle in 0..CYCLES {
        let http = reqwest::Client::new();
        let mut credentials = Vec::new();
        for _ in 0..CREDENTIALS {
            credentials.push(buy_mpp(&http, &gateway.base, "/quick").await);
        }
        let credentials = Arc::new(credentials);

        // All served, bodies read in full, from several connections at
        // once; SIGTERM right after the last answer.
        let next = Arc::new(AtomicUsize::new(0));
        let mut load = JoinSet::new();
        for _ in 0..WORKERS {
            let (http, base, credentials, next) = (
                http.clone(),
                gateway.base.clone(),
                credentials.clone(),
                next.clone(),
            );
            load.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= credentials.len() {
                        return;
                    }
                    let (status, body) = present(&http, &base, "/quick", &credentials[n]).await;
                    assert_eq!(status, StatusCode::OK, "credential {n}: {body}");
                    assert_eq!(body, "{\"done\":true}");
                }
            });
        }
        while let Some(done) = load.join_next().await {
            done.unwrap();
        }
        let status = gateway.terminate().await;
        assert!(
            status.success(),
            "cycle {cycle}: the gateway exited with {status}"
        );

        gateway.restart().await;
        let fresh = fresh_connections();
        for (n, credential) in credentials.iter().enumerate() {
            let (status, body) = present(&fresh, &gateway.base, "/quick", credential).await;
            if status == StatusCode::OK {
                served_twice.push((cycle, n));
            } else {
                assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
                assert!(
                    body.contains(SPENT),
                    "cycle {cycle}, credential {n}: {body}"
                );
            }
        }
    }
    assert!(
        served_twice.is_empty(),
        "served again after a graceful stop and a restart (cycle, credential): {served_twice:?}"
    );
    assert_eq!(calls.quick.load(Ordering::SeqCst), CYCLES * CREDENTIALS);
}

/// After a graceful stop the SQLite file alone holds everything: its
/// write-ahead log was copied in and removed, so a copy of the file (a
/// backup, a move to another machine) misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_leaves_the_store_in_one_file() {
    let (upstream, _) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = ServeProcess::start(dir.path(), &config(upstream, "")).await;
    let http = reqwest::Client::new();
    let credential = buy_mpp(&http, &gateway.base, "/quick").await;
    let (status, body) = present(&http, &gateway.base, "/quick", &credential).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let status = gateway.terminate().await;
    assert!(status.success(), "the gateway exited with {status}");
    let log = gateway.data.join("gate402.sqlite3-wal");
    assert!(
        !log.exists(),
        "{} is left after a graceful stop",
        log.display()
    );
    let copy = tempfile::tempdir().unwrap();
    let file = copy.path().join("gate402.sqlite3");
    std::fs::copy(gateway.data.join("gate402.sqlite3"), &file).unwrap();
    let spent: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM challenges WHERE consumed = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(spent, 1, "the spent credential is in the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_serves_an_unanswered_credential_on_retry() {
    let (upstream, calls) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = ServeProcess::start(dir.path(), &config(upstream, "")).await;
    let http = fresh_connections();
    let credential = buy_mpp(&http, &gateway.base, "/slow").await;

    let first = {
        let (http, base, credential) = (http.clone(), gateway.base.clone(), credential.clone());
        tokio::spawn(async move {
            http.get(format!("{base}/slow"))
                .header(AUTHORIZATION, credential)
                .send()
                .await
        })
    };
    // Killed while the upstream works: no answer exists yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.slow.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.kill();
    let first = first.await.unwrap();
    assert!(first.is_err(), "answered despite the kill: {first:?}");

    gateway.restart().await;
    let (status, body) = present(&http, &gateway.base, "/slow", &credential).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the retry of a paid, never answered request: {body}"
    );
    assert_spent(&http, &gateway.base, "/slow", &credential).await;
    assert_eq!(calls.slow.load(Ordering::SeqCst), 2, "upstream calls");
}

/// A process killed after it kept a response for its `Idempotency-Key`
/// and before it wrote the payment's spend: the restart gives the payment
/// back, so the kept response is not its answer. A retry under the key is
/// served afresh (and kept in its place), and the payment is then spent;
/// a retry under no key (or another) is served afresh too, and the key's
/// kept response is then never replayed: replaying it without a spend let
/// the same credential be served once more under no key, and replaying it
/// after another serve spent the payment gave one payment two answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_response_whose_spend_was_never_written_is_not_replayed() {
    let (upstream, calls) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = ServeProcess::start(dir.path(), &config(upstream, "")).await;
    let http = fresh_connections();
    let same_key = buy_mpp(&http, &gateway.base, "/numbered").await;
    let no_key = buy_mpp(&http, &gateway.base, "/numbered").await;
    let keyed = |http: &reqwest::Client, base: &str, credential: &str, key: &str| {
        http.get(format!("{base}/numbered"))
            .header(AUTHORIZATION, credential)
            .header("idempotency-key", format!("\"{key}\""))
            .send()
    };
    for (n, credential) in [(1, &same_key), (2, &no_key)] {
        let first = keyed(&http, &gateway.base, credential, "order-1")
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.text().await.unwrap(), format!("{{\"call\":{n}}}"));
    }

    // The state a kill between the two writes leaves: the responses kept,
    // the claims held by this replica and not spent.
    gateway.kill();
    let unspent = rusqlite::Connection::open(gateway.data.join("gate402.sqlite3"))
        .unwrap()
        .execute(
            "UPDATE challenges SET consumed = 0, consumed_at = NULL WHERE consumed = 1",
            [],
        )
        .unwrap();
    assert_eq!(unspent, 2, "the two claims, made unspent");
    gateway.restart().await;
    assert!(gateway
        .log_text()
        .contains("released payments left in flight"));

    // Under its key: served afresh, then spent, then its answer replayed.
    let retry = keyed(&http, &gateway.base, &same_key, "order-1")
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert!(
        !retry.headers().contains_key("idempotent-replayed"),
        "the retry was answered with a response whose payment was given back"
    );
    assert_eq!(retry.text().await.unwrap(), "{\"call\":3}");
    let (status, body) = present(&http, &gateway.base, "/numbered", &same_key).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert!(body.contains(SPENT), "{body}");
    let replay = keyed(&http, &gateway.base, &same_key, "order-1")
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.text().await.unwrap(), "{\"call\":3}");

    // Under no key: served afresh and spent; the key's kept answer is not
    // replayed on top of it, nor is another key served.
    let (status, body) = present(&http, &gateway.base, "/numbered", &no_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "{\"call\":4}");
    for key in ["order-1", "order-2"] {
        let after = keyed(&http, &gateway.base, &no_key, key).await.unwrap();
        assert_eq!(after.status(), StatusCode::PAYMENT_REQUIRED, "{key}");
        assert!(after.text().await.unwrap().contains(SPENT), "{key}");
    }
    assert_eq!(calls.numbered.load(Ordering::SeqCst), 4, "upstream calls");
}

/// A gateway on PostgreSQL selling a balance (5 units of 2 sats), in
/// front of an upstream that answers a request only with a permit (one
/// for the first request), and an L402 token that opened the balance.
/// `/balance?big` answers 1.5 MiB at once (past what an answer kept for
/// its key may hold, so that it is passed on as it comes) and, with the
/// permit, 2 MiB more.
struct KeyedBalance {
    postgres: TestPostgres,
    gateway: ServeProcess,
    http: reqwest::Client,
    token: String,
    permits: Arc<tokio::sync::Semaphore>,
    calls: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl KeyedBalance {
    async fn start() -> Self {
        let postgres = TestPostgres::start().await;
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/balance",
                get(
                    |State((permits, calls)): State<(
                        Arc<tokio::sync::Semaphore>,
                        Arc<AtomicUsize>,
                    )>,
                     uri: axum::http::Uri| async move {
                        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                        if uri.query() != Some("big") {
                            permits.acquire().await.unwrap().forget();
                            return Body::from(format!("{{\"call\":{n}}}"));
                        }
                        let mut first = format!("{{\"call\":{n},\"pad\":\"").into_bytes();
                        first.resize(first.len() + (3 << 19), b'x');
                        let first = Bytes::from(first);
                        let chunks = futures_util::stream::unfold(0, move |sent| {
                            let permits = permits.clone();
                            let first = first.clone();
                            async move {
                                let chunk = match sent {
                                    0 => first,
                                    1 => {
                                        permits.acquire().await.unwrap().forget();
                                        Bytes::from(vec![b'x'; 2 << 20])
                                    }
                                    2 => Bytes::from_static(b"\"}"),
                                    _ => return None,
                                };
                                Some((Ok::<_, std::io::Error>(chunk), sent + 1))
                            }
                        });
                        Body::from_stream(chunks)
                    },
                ),
            )
            .with_state((permits.clone(), calls.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let config = format!(
            "[mpp]\nsecret = \"{}\"\n[store]\nkind = \"postgres\"\nurl = \"{}\"\n[limits]\nunpaid_invoices_per_minute = 0\n\
             [[services]]\nname = \"balance\"\npath = \"/balance\"\nupstream = \"http://127.0.0.1:{upstream}\"\n\
             price_sats = 2\nsells = \"balance\"\ndeposit_units = 5\n",
            "s".repeat(32),
            postgres.url
        );
        let dir = tempfile::tempdir().unwrap();
        let gateway = ServeProcess::start(dir.path(), &config).await;
        let http = fresh_connections();
        let token = buy_l402(&http, &gateway.base, "/balance").await;
        let rig = Self {
            postgres,
            gateway,
            http,
            token,
            permits,
            calls,
            _dir: dir,
        };
        let first = rig.send("/balance", None).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(rig.spent(), "2000", "one unit of 2 sats");
        rig
    }

    fn send(
        &self,
        path: &str,
        key: Option<&str>,
    ) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        let request = self
            .http
            .get(format!("{}{path}", self.gateway.base))
            .header(AUTHORIZATION, &self.token);
        match key {
            Some(key) => request.header("idempotency-key", format!("\"{key}\"")),
            None => request,
        }
        .send()
    }

    /// What the balance spent, in msat.
    fn spent(&self) -> String {
        self.postgres
            .sql("SELECT spent_msat FROM sessions")
            .trim()
            .to_owned()
    }

    /// Waits until the upstream has had `calls` requests.
    async fn wait_for_calls(&self, calls: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.calls.load(Ordering::SeqCst) < calls {
            assert!(Instant::now() < deadline, "request {calls} never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Locks the debits' table, then lets the upstream answer with `let_go`,
    /// and waits for the spend that follows to wait for the lock and for
    /// a spend of the claim written apart from the debit's to land; then
    /// kills the gateway, ends the dead process's connections, lets go of
    /// the lock and starts the gateway again.
    async fn kill_while_the_spend_waits(&mut self, let_go: impl AsyncFnOnce(&Self)) {
        let mut lock = self.postgres.session();
        lock.run("BEGIN; LOCK TABLE session_debits IN EXCLUSIVE MODE;");
        let_go(&*self).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted";
        while self.postgres.sql(waiting).trim() == "0" {
            assert!(
                Instant::now() < deadline,
                "the spend never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let claim_spent = "SELECT count(*) FROM challenges WHERE consumed";
        let settle_by = Instant::now() + Duration::from_secs(5);
        while self.postgres.sql(claim_spent).trim() == "0" && Instant::now() < settle_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.gateway.kill();
        // The killed process's connections still wait for the lock: ended,
        // then the lock let go.
        lock.run(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'; ROLLBACK;",
        );
        drop(lock);
        self.permits.add_permits(100);
        self.gateway.restart().await;
    }

    /// No debit is left held.
    fn assert_no_debit_held(&self) {
        assert_eq!(
            self.postgres
                .sql("SELECT count(*) FROM session_debits")
                .trim(),
            "0"
        );
    }
}

/// A keyed request on a prepaid balance spends its `Idempotency-Key`'s
/// claim and keeps its debit in one write. They were two: a replica
/// killed after the claim's spend and before the debit's, with the debit
/// still held, gave the debit back at its restart and then replayed the
/// kept answer under the key, a unit served free. Here the debit's table
/// is locked when the upstream answers, so that the spend waits, and the
/// gateway is killed; after its restart the retry under the key is
/// answered, and the balance is charged for it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_on_a_balance_is_charged_once_whenever_a_kill_cuts_its_spend() {
    let mut rig = KeyedBalance::start().await;
    let keyed = tokio::spawn(rig.send("/balance", Some("order-1")));
    // Debited and at the upstream: its spend will wait for the lock.
    rig.wait_for_calls(2).await;
    rig.kill_while_the_spend_waits(async |rig| rig.permits.add_permits(1))
        .await;
    keyed.abort();

    let retry = rig.send("/balance", Some("order-1")).await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    let answer = retry.text().await.unwrap();
    assert_eq!(
        rig.spent(),
        "4000",
        "the keyed request was answered ({answer}) and charged once"
    );
    rig.assert_no_debit_held();
    let replay = rig.send("/balance", Some("order-1")).await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.text().await.unwrap(), answer);
    assert_eq!(rig.spent(), "4000", "a replay spends nothing");
}

/// The same spend when the client leaves in the middle of the answer:
/// served, so spent as it is dropped, the claim and the debit again in
/// one write. Written apart, the claim's spend landed and the debit was
/// given back at the restart: a unit served (in part) and never charged,
/// and the retry under the key refused. Now the retry is served and the
/// balance is charged for it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_on_a_balance_whose_client_leaves_mid_answer_is_charged_once() {
    let mut rig = KeyedBalance::start().await;
    let mut cut = rig.send("/balance?big", Some("order-1")).await.unwrap();
    assert_eq!(cut.status(), StatusCode::OK);
    let first = cut
        .chunk()
        .await
        .unwrap()
        .expect("the answer's first bytes");
    assert!(first.starts_with(b"{\"call\":2"), "{first:?}");
    rig.kill_while_the_spend_waits(async |rig| {
        // The client leaves; what the upstream sends next finds it gone.
        drop(cut);
        rig.permits.add_permits(1);
    })
    .await;

    let retry = rig.send("/balance?big", Some("order-1")).await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    let answer = retry.bytes().await.unwrap();
    assert!(answer.starts_with(b"{\"call\":3"), "served again");
    assert_eq!(rig.spent(), "4000", "the cut answer charged once");
    rig.assert_no_debit_held();
}

/// A balance's deposit is booked before the answer that opened it: it
/// went with the batch of served payments, which a process killed within
/// the half second before that batch is written lost, and the books then
/// never had the deposit (its session's refund counted against nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_is_booked_before_its_first_answer() {
    let (upstream, _calls) = start_upstream().await;
    let config = format!(
        "[limits]\nunpaid_invoices_per_minute = 0\n[[services]]\nname = \"balance\"\n\
         path = \"/quick\"\nupstream = \"http://127.0.0.1:{upstream}\"\nprice_sats = 2\n\
         sells = \"balance\"\ndeposit_units = 5\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = ServeProcess::start(dir.path(), &config).await;
    let http = fresh_connections();
    let token = buy_l402(&http, &gateway.base, "/quick").await;
    let (status, body) = present(&http, &gateway.base, "/quick", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    gateway.kill();
    let books: (i64, i64) = rusqlite::Connection::open(gateway.data.join("gate402.sqlite3"))
        .unwrap()
        .query_row(
            "SELECT count(*), coalesce(sum(amount_msat), 0) FROM payments",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        books,
        (1, 10_000),
        "the deposit of 5 units of 2 sat, booked"
    );
}
