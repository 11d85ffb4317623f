//! `gate402 serve` against clients that hold on to what they were given:
//! connections that never finish (or never begin) their request head, a
//! keep-alive connection that goes quiet, a flood of MCP `initialize`
//! requests (all at once, or all in flight together); and the secrets it
//! keeps on disk.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::{buy_mpp, buy_mpp_for, Launch, ServeProcess};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// An upstream with one quick route, `/work`.
async fn start_upstream() -> u16 {
    let app = Router::new()
        .route("/work", get(|| async { "{\"done\":true}" }))
        .route(
            "/think",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(4)).await;
                "{\"thought\":true}"
            }),
        )
        .route(
            "/post",
            axum::routing::post(|body: String| async move { body }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn service(upstream: u16) -> String {
    format!(
        "[[services]]\nname = \"work\"\npath = \"/work\"\nupstream = \"http://127.0.0.1:{upstream}\"\nprice_sats = 2\ndescription = \"Work\"\n"
    )
}

/// A client that opens a new connection for every request (each one goes
/// through the gateway's accept loop and its caps).
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Reads until the peer closes (EOF or reset) or `limit` passes; how long
/// after `since` it closed, `None` when it did not.
async fn closed_after(socket: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = since + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {} // an error answer (408) before the close
            Err(_) => return None,
        }
    }
}

fn soft_file_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_do_not_starve_paying_clients() {
    const SLOW: usize = 300;
    // Long enough that a loaded machine's paying rounds stay well under
    // it: one starved by the slow connections would wait for it.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    /// `[server] max_connections_per_client`'s default.
    const PER_CLIENT: usize = 64;
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nheader_read_timeout_secs = {}\n[limits]\nunpaid_invoices_per_minute = 0\n{}",
        HEADER_TIMEOUT.as_secs(),
        service(upstream)
    );
    let gateway = ServeProcess::start_with(
        dir.path(),
        &config,
        Launch {
            file_limit: Some(256),
            ..Launch::default()
        },
    )
    .await;
    assert_eq!(soft_file_limit(gateway.pid()), 256);

    // Each from 127.0.0.2, a request line begun and never finished.
    let target = format!("127.0.0.1:{}", gateway.port).parse().unwrap();
    let mut slow = JoinSet::new();
    for _ in 0..SLOW {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(target).await.unwrap();
        let opened = Instant::now();
        // Refused by the per-client cap, it may be closed already.
        let _ = stream.write_all(b"GET /work HT").await;
        slow.spawn(async move {
            closed_after(&mut stream, opened, HEADER_TIMEOUT + Duration::from_secs(5)).await
        });
    }

    // Meanwhile, well before the slow ones time out: buy, pay, get.
    let paying_from = Instant::now();
    let http = fresh_connections();
    let mut rounds = Vec::new();
    while rounds.len() < 3 || paying_from.elapsed() < HEADER_TIMEOUT / 2 {
        let started = Instant::now();
        let credential = buy_mpp(&http, &gateway.base, "/work").await;
        let bought = started.elapsed();
        let response = http
            .get(format!("{}/work", gateway.base))
            .header(AUTHORIZATION, credential)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "{\"done\":true}");
        rounds.push((bought, started.elapsed() - bought));
    }

    let mut closed = Vec::new();
    while let Some(done) = slow.join_next().await {
        closed.push(
            done.unwrap()
                .expect("a slow connection was never closed by the gateway"),
        );
    }
    closed.sort();
    let held: Vec<&Duration> = closed
        .iter()
        .filter(|d| **d >= HEADER_TIMEOUT / 2)
        .collect();
    eprintln!(
        "{} paid rounds (buy, paid request) during the slow connections: {rounds:?}; \
         of {SLOW} slow connections {} were held until {:?}..{:?}, the rest closed at once",
        rounds.len(),
        held.len(),
        held.first(),
        held.last(),
    );
    for (bought, served) in &rounds {
        assert!(
            *bought < HEADER_TIMEOUT - Duration::from_secs(1)
                && *served < HEADER_TIMEOUT - Duration::from_secs(1),
            "a paying client waited: bought in {bought:?}, served in {served:?}"
        );
    }
    assert!(
        !held.is_empty() && held.len() <= PER_CLIENT,
        "{} slow connections were held (at most {PER_CLIENT} from one client)",
        held.len()
    );
    assert!(
        **held.last().unwrap() < HEADER_TIMEOUT + Duration::from_secs(2),
        "a slow connection was closed only after {:?}",
        held.last().unwrap()
    );
}

/// Slow request bodies from one client (POSTs that each declare the
/// largest body and then stall) hold their client's share of the budget
/// for bodies read at once, not the whole budget: another client's unpaid
/// POST is answered at once (`402`), not held until the slow ones time
/// out, and its paid POST and paid GET are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_up_no_other_clients_request() {
    /// `[server] max_connections_per_client`'s default.
    const PER_CLIENT: usize = 64;
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[limits]\nunpaid_invoices_per_minute = 0\n{}\
         [[services]]\nname = \"post\"\npath = \"/post\"\nmethods = [\"POST\"]\nupstream = \"http://127.0.0.1:{upstream}\"\nprice_sats = 2\n",
        service(upstream)
    );
    let gateway = ServeProcess::start_with(dir.path(), &config, Launch::default()).await;
    let target = format!("127.0.0.1:{}", gateway.port).parse().unwrap();
    let http = fresh_connections();
    let post = || {
        http.post(format!("{}/post", gateway.base))
            .header("content-type", "application/json")
            .body("{\"a\":1}")
    };
    let paid_post = buy_mpp_for(&http, &gateway.base, post()).await;
    let mut stalled = Vec::new();
    for _ in 0..PER_CLIENT {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(target).await.unwrap();
        stream
            .write_all(b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{\"a\":")
            .await
            .unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let answer = post().send().await.unwrap();
    let waited = started.elapsed();
    let status = answer.status();
    // Each well within the 60 s idle timeout that a held-up request would
    // wait for, with room for a loaded machine.
    assert!(
        waited < Duration::from_secs(5),
        "an unpaid POST waited {waited:?} for another client's slow bodies ({status})"
    );
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let started = Instant::now();
    let answer = post()
        .header(AUTHORIZATION, paid_post)
        .send()
        .await
        .unwrap();
    let (status, waited) = (answer.status(), started.elapsed());
    assert_eq!(answer.text().await.unwrap(), "{\"a\":1}", "{status}");
    assert!(
        waited < Duration::from_secs(5),
        "a paid POST waited {waited:?} for another client's slow bodies"
    );
    let started = Instant::now();
    let credential = buy_mpp(&http, &gateway.base, "/work").await;
    let served = http
        .get(format!("{}/work", gateway.base))
        .header(AUTHORIZATION, credential)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(stalled);
}

/// Reads one response with a `content-length` body; returns its head.
async fn read_response(socket: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .expect("a content-length")
                .trim()
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + length {
                return head;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    const IDLE: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    // A long header timeout: only the idle timeout may close it.
    let gateway = ServeProcess::start(
        dir.path(),
        &format!(
            "[server]\nidle_timeout_secs = {}\nheader_read_timeout_secs = 30\n",
            IDLE.as_secs()
        ),
    )
    .await;
    let mut socket = TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    socket
        .write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                gateway.port
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let head = read_response(&mut socket).await;
    let answered = Instant::now();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");

    let closed = closed_after(&mut socket, answered, Duration::from_secs(10))
        .await
        .expect("the idle connection was never closed");
    eprintln!("an idle keep-alive connection was closed after {closed:?}");
    assert!(
        closed >= IDLE - Duration::from_millis(500) && closed < IDLE + Duration::from_secs(3),
        "closed {closed:?} after its last byte (idle timeout {IDLE:?})"
    );
}

/// A connection whose request the upstream is still thinking about is
/// not idle: an upstream given longer to answer (`response_timeout_secs`)
/// than the idle timeout answers a paid request, which was cut unanswered
/// (and spent) at the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waiting_for_its_upstream_is_not_idle() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = ServeProcess::start(
        dir.path(),
        &format!(
            "[server]\nidle_timeout_secs = 2\n[[services]]\nname = \"think\"\npath = \"/think\"\nupstream = \"http://127.0.0.1:{upstream}\"\nprice_sats = 2\nresponse_timeout_secs = 10\n"
        ),
    )
    .await;
    let http = reqwest::Client::new();
    let url = format!("{}/think", gateway.base);
    let credential = buy_mpp(&http, &gateway.base, "/think").await;
    let answer = http
        .get(&url)
        .header(AUTHORIZATION, &credential)
        .send()
        .await
        .expect("answered, not cut at the idle timeout");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "{\"thought\":true}");
}

/// A JSON-RPC `initialize`: what opens an MCP session.
fn initialize_request() -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "slow-clients", "version": "0"},
        },
    })
    .to_string()
}

/// One paid tool calling `/work`; at most `max_sessions` MCP sessions (the
/// test's one client may hold all of them; the per-client cap is tested in
/// the gateway's own MCP tests).
///
/// The tests' 60 connections come from one address: the per-client
/// connection cap (64 by default) gets room, as it is not what they test.
fn mcp_config(upstream: u16, max_sessions: usize) -> String {
    format!(
        "{}[[tools]]\nname = \"work\"\ndescription = \"Does the work\"\nservice = \"work\"\n[mcp]\nmax_sessions = {max_sessions}\nmax_sessions_per_client = {max_sessions}\nmax_requests_in_flight_per_client = 128\n[server]\nmax_connections_per_client = 256\n",
        service(upstream)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sessions_are_capped() {
    const MAX_SESSIONS: usize = 20;
    const INITIALIZE: usize = 60;
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = ServeProcess::start(dir.path(), &mcp_config(upstream, MAX_SESSIONS)).await;
    let rss_before = gateway.rss_kib();

    // All at once, as a flood would.
    let http = fresh_connections();
    let mut flood = JoinSet::new();
    for _ in 0..INITIALIZE {
        let (http, url, body) = (
            http.clone(),
            format!("{}/mcp", gateway.base),
            initialize_request(),
        );
        flood.spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let session = response.headers().contains_key("mcp-session-id");
            let retry_after = response.headers().contains_key("retry-after");
            let body = response.text().await.unwrap_or_default();
            (status, session, retry_after, body)
        });
    }
    let (mut sessions, mut refused) = (0, 0);
    while let Some(answer) = flood.join_next().await {
        match answer.unwrap() {
            (StatusCode::OK, true, _, _) => sessions += 1,
            (StatusCode::SERVICE_UNAVAILABLE, false, true, _) => refused += 1,
            (status, session, retry_after, body) => {
                panic!("{status} (session id: {session}, retry-after: {retry_after}): {body}")
            }
        }
    }
    let rss_after = gateway.rss_kib();
    eprintln!(
        "{INITIALIZE} initialize requests: {sessions} sessions, {refused} refused; \
         gateway RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        sessions <= MAX_SESSIONS,
        "{sessions} sessions opened, max_sessions = {MAX_SESSIONS}"
    );
    assert_eq!(sessions + refused, INITIALIZE);
    assert!(sessions > 0, "no session at all");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Reads a response head: the status code and whether it opened a session.
async fn session_answer(socket: &mut TcpStream) -> (u16, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head.contains("\r\nmcp-session-id:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sessions_are_capped_with_every_initialize_in_flight() {
    const MAX_SESSIONS: usize = 20;
    const INITIALIZE: usize = 60;
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = ServeProcess::start(dir.path(), &mcp_config(upstream, MAX_SESSIONS)).await;

    // Every request's head first, each body but its last byte: all of
    // them are in the gateway before any session exists, as when a flood
    // sends its bodies slowly.
    let body = initialize_request();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        gateway.port,
        body.len()
    );
    let mut sockets = Vec::new();
    for i in 0..INITIALIZE {
        let mut socket = TcpStream::connect(("127.0.0.1", gateway.port))
            .await
            .unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        // Every other body lags its head: the gateway then reads a head
        // alone, and a refusal there closes the connection before its body.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        socket
            .write_all(&body.as_bytes()[..body.len() - 1])
            .await
            .unwrap();
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut closed_early = 0;
    for socket in &mut sockets {
        // A request refused at its head may have been answered and closed
        // already: the last byte then meets a closed socket, and its
        // answer is still there to read.
        if let Err(e) = socket.write_all(&body.as_bytes()[body.len() - 1..]).await {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "sending the last byte: {e}"
            );
            closed_early += 1;
        }
    }
    let (mut sessions, mut refused) = (0, 0);
    for socket in &mut sockets {
        match session_answer(socket).await {
            (200, true) => sessions += 1,
            (503, false) => refused += 1,
            (status, session) => panic!("{status} (session id: {session})"),
        }
    }
    eprintln!(
        "{INITIALIZE} initialize requests in flight together: {sessions} sessions, \
         {refused} refused ({closed_early} closed before their last byte)"
    );
    assert!(
        sessions <= MAX_SESSIONS,
        "{sessions} sessions opened, max_sessions = {MAX_SESSIONS}"
    );
    assert_eq!(sessions + refused, INITIALIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_starts_its_request_is_closed_by_the_header_timeout() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    // A long idle timeout: only the header timeout may close them soon.
    let gateway = ServeProcess::start(
        dir.path(),
        &format!(
            "[server]\nheader_read_timeout_secs = {}\nidle_timeout_secs = 30\n",
            HEADER_TIMEOUT.as_secs()
        ),
    )
    .await;
    let mut probes = JoinSet::new();
    for (name, sent) in [
        ("an HTTP/1.1 request line begun", &b"GET /healthz HT"[..]),
        ("nothing", &b""[..]),
        ("an HTTP/2 preface begun", &b"PRI * HTTP/2.0\r\n"[..]),
    ] {
        let mut socket = TcpStream::connect(("127.0.0.1", gateway.port))
            .await
            .unwrap();
        socket.write_all(sent).await.unwrap();
        let opened = Instant::now();
        probes.spawn(async move {
            let closed = closed_after(&mut socket, opened, HEADER_TIMEOUT * 3).await;
            (name, closed)
        });
    }
    let mut closed = Vec::new();
    while let Some(probe) = probes.join_next().await {
        closed.push(probe.unwrap());
    }
    eprintln!(
        "closed after (None: still open after {:?}): {closed:?}",
        HEADER_TIMEOUT * 3
    );
    assert!(
        closed
            .iter()
            .all(|(_, after)| after.is_some_and(|d| d < HEADER_TIMEOUT + Duration::from_secs(3))),
        "connections that sent no complete request head within {HEADER_TIMEOUT:?} \
         (None: still open after {:?}): {closed:?}",
        HEADER_TIMEOUT * 3
    );
}

/// An HTTP/2 header block kept open by a CONTINUATION frame every 700 ms
/// gets the header timeout, as a slow HTTP/1.1 request head does: the
/// bytes keep the connection from idling, not from the deadline. (The
/// HTTP/2 library ends a block after a few CONTINUATION frames, however
/// slow: a frame every 20 s held a connection for 100 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_header_block_that_never_ends_is_closed_by_the_header_timeout() {
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let gateway = ServeProcess::start(
        dir.path(),
        &format!(
            "[server]\nheader_read_timeout_secs = {}\nidle_timeout_secs = 30\n",
            HEADER_TIMEOUT.as_secs()
        ),
    )
    .await;
    let frame = |kind: u8, flags: u8, stream: u8, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, stream];
        bytes.extend_from_slice(payload);
        bytes
    };
    let socket = TcpStream::connect(("127.0.0.1", gateway.port))
        .await
        .unwrap();
    let (mut read, mut write) = socket.into_split();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                           // HEADERS of stream 1 without END_HEADERS: `:method GET`, then one
                                           // CONTINUATION after another, each `:scheme http`.
    opening.extend(frame(0x1, 0x1, 1, &[0x82]));
    write.write_all(&opening).await.unwrap();
    let opened = Instant::now();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let field = [0x00, 0x01, b'x', 0x01, b'y'];
            if write.write_all(&frame(0x9, 0, 1, &field)).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at((opened + HEADER_TIMEOUT * 4).into(), read.read(&mut buf))
            .await
        {
            Ok(Ok(0) | Err(_)) => break Some(opened.elapsed()),
            Ok(Ok(_)) => {} // the server's SETTINGS and its ACK
            Err(_) => break None,
        }
    };
    trickle.abort();
    assert!(
        closed.is_some_and(|after| after < HEADER_TIMEOUT + Duration::from_secs(3)),
        "an HTTP/2 header block trickled for up to {:?} was closed after {closed:?}, want within the header timeout",
        HEADER_TIMEOUT * 4
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The data dir and its secrets as a running gateway left them.
fn assert_private(data: &Path) {
    assert_eq!(mode(data), 0o700, "{}", data.display());
    for file in ["mpp_secret", "replica_id"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_private_on_disk() {
    const WARNING: &str = "a secret was readable by other users";
    let dir = tempfile::tempdir().unwrap();

    let fresh = dir.path().join("fresh");
    let mut gateway = ServeProcess::start(&fresh, "").await;
    assert_private(&gateway.data);
    assert!(gateway.terminate().await.success());
    assert!(
        !gateway.log_text().contains(WARNING),
        "{}",
        gateway.log_text()
    );
    // A log written to a file holds text, not a terminal's colour codes.
    assert!(
        !gateway.log_text().contains('\u{1b}'),
        "{}",
        gateway.log_text()
    );

    // As an older version, or a hand, may have left them.
    let open = dir.path().join("open");
    let data = open.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = "ab".repeat(32);
    std::fs::write(data.join("mpp_secret"), &secret).unwrap();
    std::fs::set_permissions(
        data.join("mpp_secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut gateway = ServeProcess::start(&open, "").await;
    assert_private(&data);
    assert_eq!(
        std::fs::read_to_string(data.join("mpp_secret")).unwrap(),
        secret,
        "the secret was kept, not replaced"
    );
    assert!(gateway.terminate().await.success());
    let log = gateway.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(WARNING) && l.contains("mpp_secret")),
        "{log}"
    );
}
