//! The gateway as separate `gate402 serve` processes under faults and
//! floods:
//!
//! - crash: two replicas on one PostgreSQL database (a real server, started
//!   here) serve a load of paid MPP requests; one is killed with SIGKILL in
//!   the middle and restarted. No credential is served twice, no 5xx;
//!   every credential sent with an `Idempotency-Key` (half of them) is
//!   answered 200 exactly once, and one sent without is lost only if the
//!   kill cut its answer after its spend was written (the moment the
//!   README names: nothing but its client's retry under a key can bring
//!   that answer back).
//! - flood: 100 000 unpaid requests. The gateway's store does not grow (a
//!   402 writes nothing), its memory stays flat, and paid requests sent
//!   meanwhile are all served.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use common::free_port;
use gate402_client::Offer;
use gate402_lightning_sandbox::http::pay_via;
use gate402_postgres_testkit::TestPostgres;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use tokio::task::JoinSet;

const SECRET: &str = "a shared secret of at least thirty-two bytes";
const CREDENTIAL_HEADER: &str = "x-test-credential";

/// A `gate402 serve` process; killed with the test.
struct Replica {
    child: Child,
    base: String,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Replica {
    async fn start(data: &Path, config_text: &str) -> Self {
        let port = free_port();
        std::fs::create_dir_all(data).unwrap();
        let config = data.join("gateway.toml");
        let text = format!("listen = \"127.0.0.1:{port}\"\n{config_text}");
        std::fs::write(&config, text).unwrap();
        let log = data.join("gateway.log");
        let replica = Self {
            child: launch(data, &config, &log),
            base: format!("http://127.0.0.1:{port}"),
            data: data.to_owned(),
            config,
            log,
        };
        replica.wait_healthy().await;
        replica
    }

    /// Starts it again, on the same data dir and port.
    async fn restart(&mut self) {
        self.child = launch(&self.data, &self.config, &self.log);
        self.wait_healthy().await;
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("{}/healthz", self.base))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "gateway did not come up: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// Resident memory in KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn launch(data: &Path, config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// An upstream that takes a while per request (so requests are in flight
/// when a replica dies) and counts the calls per credential.
async fn start_upstream(delay: Duration) -> (u16, Arc<Mutex<Vec<u32>>>) {
    let calls = Arc::new(Mutex::new(vec![0u32; 4096]));
    let app = Router::new()
        .route(
            "/work",
            get(
                |State((calls, delay)): State<(Arc<Mutex<Vec<u32>>>, Duration)>,
                 headers: HeaderMap| async move {
                    if let Some(n) = headers
                        .get(CREDENTIAL_HEADER)
                        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                    {
                        calls.lock().unwrap()[n] += 1;
                    }
                    tokio::time::sleep(delay).await;
                    "{\"done\":true}"
                },
            ),
        )
        .with_state((calls.clone(), delay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, calls)
}

/// Whether the load sends credential `n` with an `Idempotency-Key` (as
/// `gate402 get` does): half of them, each half tried first at A for
/// half its credentials (the load starts credential `n` at replica `n % 2`).
fn keyed(n: usize) -> bool {
    n % 4 < 2
}

fn service(upstream: u16) -> String {
    format!(
        "[[services]]\nname = \"work\"\npath = \"/work\"\nupstream = \"http://127.0.0.1:{upstream}\"\nprice_sats = 2\ndescription = \"Work\"\n"
    )
}

/// Buys one credential from `base` (its sandbox pays).
async fn buy(http: &reqwest::Client, base: &str) -> Offer {
    let response = http.get(format!("{base}/work")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    Offer::from_headers(response.headers()).unwrap()
}

async fn preimage(http: &reqwest::Client, base: &str, offer: &Offer) -> [u8; 32] {
    let paid = pay_via(http, base, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    preimage
}

/// How the load saw one credential end.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicUsize,
    /// Refused as already spent without ever being answered 200: lost
    /// (the credentials, by number).
    lost: Mutex<Vec<usize>>,
    server_errors: AtomicUsize,
    cut: AtomicUsize,
    retried_in_flight: AtomicUsize,
    /// Answered with the response kept for its key.
    replayed: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_paid_load_loses_nothing_and_serves_nothing_twice() {
    const CREDENTIALS: usize = 400;
    const WORKERS: usize = 16;
    let postgres = TestPostgres::start().await;
    let (upstream, calls) = start_upstream(Duration::from_millis(40)).await;
    let config = format!(
        "[mpp]\nrealm = \"crash.test\"\nsecret = \"{SECRET}\"\n[store]\nkind = \"postgres\"\nurl = \"{}\"\n[limits]\nunpaid_invoices_per_minute = 0\n{}",
        postgres.url,
        service(upstream)
    );
    let dir = tempfile::tempdir().unwrap();
    let mut a = Replica::start(&dir.path().join("a"), &config).await;
    let b = Replica::start(&dir.path().join("b"), &config).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Paid in advance, half from each replica.
    let mut credentials = Vec::new();
    for i in 0..CREDENTIALS {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let offer = buy(&http, base).await;
        let preimage = preimage(&http, base, &offer).await;
        credentials.push(offer.payment_authorization(&preimage).unwrap());
    }
    let credentials = Arc::new(credentials);
    let bases = Arc::new([a.base.clone(), b.base.clone()]);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Tally::default());
    let in_flight_at_a = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(Mutex::new(vec![0u32; CREDENTIALS]));
    // The credentials an attempt at A ended for without an answer.
    let cut_at_a = Arc::new(Mutex::new(vec![false; CREDENTIALS]));

    let mut load = JoinSet::new();
    for _ in 0..WORKERS {
        let (http, credentials, bases, next, tally, in_flight_at_a, served, cut_at_a) = (
            http.clone(),
            credentials.clone(),
            bases.clone(),
            next.clone(),
            tally.clone(),
            in_flight_at_a.clone(),
            served.clone(),
            cut_at_a.clone(),
        );
        load.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= CREDENTIALS {
                    return;
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                for attempt in 0.. {
                    assert!(Instant::now() < deadline, "credential {n} never served");
                    let replica = (n + attempt) % 2;
                    if replica == 0 {
                        in_flight_at_a.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut request = http
                        .get(format!("{}/work", bases[replica]))
                        .header(AUTHORIZATION, &credentials[n])
                        .header(CREDENTIAL_HEADER, n.to_string());
                    if keyed(n) {
                        request = request.header("idempotency-key", format!("\"work-{n}\""));
                    }
                    let result = request.send().await;
                    // An answer is had once its body is read whole: a
                    // head whose body the kill cut off is an answer lost,
                    // whose credential the restarted replica serves again
                    // (or, once its spend was written, replays under its
                    // key).
                    let answer = match result {
                        Ok(response) => {
                            let status = response.status();
                            if response.headers().contains_key("idempotent-replayed") {
                                tally.replayed.fetch_add(1, Ordering::SeqCst);
                            }
                            response.text().await.map(|body| (status, body))
                        }
                        Err(e) => Err(e),
                    };
                    if replica == 0 {
                        in_flight_at_a.fetch_sub(1, Ordering::SeqCst);
                    }
                    match answer {
                        Ok((StatusCode::OK, _)) => {
                            tally.ok.fetch_add(1, Ordering::SeqCst);
                            served.lock().unwrap()[n] += 1;
                            break;
                        }
                        // Held by another request (one A was killed in,
                        // until its restart releases it); a key's 409 says
                        // so in words of its own.
                        Ok((StatusCode::CONFLICT, body))
                            if body.contains("being used by another request")
                                || body
                                    .contains("Idempotency-Key and credential is being served") =>
                        {
                            tally.retried_in_flight.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((StatusCode::PAYMENT_REQUIRED, body))
                            if body.contains("already been used") =>
                        {
                            tally.lost.lock().unwrap().push(n);
                            break;
                        }
                        Ok((status, body)) if status.is_server_error() => {
                            tally.server_errors.fetch_add(1, Ordering::SeqCst);
                            eprintln!("credential {n}: {status} {body}");
                        }
                        Ok((status, body)) => panic!("credential {n}: {status} {body}"),
                        Err(_) => {
                            tally.cut.fetch_add(1, Ordering::SeqCst);
                            if replica == 0 {
                                cut_at_a.lock().unwrap()[n] = true;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }

    // Kill A once a third of the credentials are served, with requests in
    // flight on it; restart it on the same data dir and port.
    while tally.ok.load(Ordering::SeqCst) < CREDENTIALS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut in_flight_at_kill = 0;
    while in_flight_at_kill == 0 {
        in_flight_at_kill = in_flight_at_a.load(Ordering::SeqCst);
    }
    a.kill();
    let served_at_kill = tally.ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.restart().await;
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }

    let served = served.lock().unwrap().clone();
    let calls = calls.lock().unwrap()[..CREDENTIALS].to_vec();
    let cut_at_a = cut_at_a.lock().unwrap().clone();
    let lost = tally.lost.lock().unwrap().clone();
    let called_again = calls.iter().filter(|c| **c > 1).count();
    eprintln!(
        "killed A with {in_flight_at_kill} requests in flight after {served_at_kill} were served; \
         {} cut connections, {} retries while a claim was held, {called_again} credentials \
         reached the upstream twice (cut before the answer); {} answered with the response \
         kept for their key, {} sent without a key lost (cut after their spend)",
        tally.cut.load(Ordering::SeqCst),
        tally.retried_in_flight.load(Ordering::SeqCst),
        tally.replayed.load(Ordering::SeqCst),
        lost.len(),
    );
    for (n, times) in served.iter().enumerate() {
        if keyed(n) {
            assert_eq!(
                *times, 1,
                "credential {n} (with a key) answered 200 {times} times"
            );
        } else {
            assert!(*times <= 1, "credential {n} answered 200 {times} times");
        }
    }
    // A credential without a key is lost only if A was killed after its
    // spend was written and before its answer's last bytes left: the
    // upstream had it, and A cut its answer.
    for n in &lost {
        assert!(!keyed(*n), "credential {n}, sent with a key, was lost");
        assert!(
            cut_at_a[*n] && calls[*n] >= 1 && served[*n] == 0,
            "credential {n} lost, though A never cut its answer"
        );
    }
    assert_eq!(tally.server_errors.load(Ordering::SeqCst), 0, "5xx answers");
    assert!(
        tally.cut.load(Ordering::SeqCst) > 0,
        "the kill cut no request"
    );
    assert!(calls.iter().all(|c| *c >= 1));
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.contains("released payments left in flight"),
        "the restarted replica released its predecessor's claims: {log}"
    );
    // Replays after the dust settled are refused on both replicas, every
    // credential's: those A answered just before it was killed too (their
    // commits were written before their answers ended, so A's restart
    // released none of them).
    for (n, credential) in credentials.iter().enumerate() {
        for base in bases.iter() {
            let response = http
                .get(format!("{base}/work"))
                .header(AUTHORIZATION, credential)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::PAYMENT_REQUIRED,
                "credential {n}, answered 200 before, replayed at {base}"
            );
        }
    }
    drop(b);
}

/// Rows per table of the gateway's SQLite store, read while it runs.
fn store_rows(data: &Path) -> Vec<(String, i64)> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("gate402.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut rows: Vec<(String, i64)> = ["tokens", "invoices", "challenges", "receipts", "payments"]
        .iter()
        .map(|table| {
            let rows = db
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            (table.to_string(), rows)
        })
        .collect();
    let served = db
        .query_row("SELECT coalesce(sum(served), 0) FROM payments", [], |r| {
            r.get(0)
        })
        .unwrap();
    rows.push(("requests served".into(), served));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_flood_stores_nothing_keeps_memory_flat_and_paid_requests_flow() {
    const FLOOD: usize = 100_000;
    const WARM_UP: usize = 10_000;
    const CONNECTIONS: usize = 32;
    let (upstream, _calls) = start_upstream(Duration::ZERO).await;
    // The cap on unpaid invoices is off: every request gets a full 402.
    // The paid client holds a pass, one token for the whole flood.
    let config = format!(
        "[mpp]\nrealm = \"flood.test\"\n[limits]\nunpaid_invoices_per_minute = 0\n{}sells = \"pass\"\n",
        service(upstream)
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = Replica::start(dir.path(), &config).await;
    let http = reqwest::Client::new();
    let offer = buy(&http, &gateway.base).await;
    let preimage = preimage(&http, &gateway.base, &offer).await;
    let token = offer.l402_authorization(&preimage).unwrap();

    let sent = Arc::new(AtomicUsize::new(0));
    let flooding = Arc::new(AtomicBool::new(true));
    let mut flood = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (http, sent, url) = (http.clone(), sent.clone(), format!("{}/work", gateway.base));
        flood.spawn(async move {
            while sent.fetch_add(1, Ordering::SeqCst) < FLOOD {
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
                response.bytes().await.unwrap();
            }
        });
    }
    let paid = {
        let (http, flooding, url) = (
            http.clone(),
            flooding.clone(),
            format!("{}/work", gateway.base),
        );
        tokio::spawn(async move {
            let mut served = 0;
            while flooding.load(Ordering::SeqCst) {
                let response = http
                    .get(&url)
                    .header(AUTHORIZATION, &token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::OK,
                    "a paid request during the flood"
                );
                served += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            served
        })
    };

    while sent.load(Ordering::SeqCst) < WARM_UP {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warm_rss = gateway.rss_kib();
    while let Some(done) = flood.join_next().await {
        done.unwrap();
    }
    let end_rss = gateway.rss_kib();
    flooding.store(false, Ordering::SeqCst);
    let paid = paid.await.unwrap();
    // Served payments are counted in batches, after the answers.
    let mut rows = store_rows(dir.path());
    for _ in 0..250 {
        if rows
            .last()
            .is_some_and(|(_, served)| *served == paid as i64)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        rows = store_rows(dir.path());
    }
    eprintln!(
        "{FLOOD} unpaid requests: gateway RSS {warm_rss} KiB after {WARM_UP}, {end_rss} KiB at the end; \
         store rows {rows:?}; {paid} paid requests served meanwhile"
    );
    assert!(
        end_rss < warm_rss + 16 * 1024,
        "memory grew from {warm_rss} KiB to {end_rss} KiB"
    );
    assert_eq!(
        rows,
        [
            ("tokens", 0),
            ("invoices", 0),
            // The pass's own claim: its first use spends its invoice at
            // the other doors.
            ("challenges", 1),
            ("receipts", 0),
            ("payments", 1),
            ("requests served", paid as i64)
        ]
        .map(|(table, n)| (table.to_owned(), n)),
        "a 402 stores nothing; the one payment counts every request it served"
    );
    assert!(
        paid >= 10,
        "only {paid} paid requests went through the flood"
    );
}
