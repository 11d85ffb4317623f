//! `gate402 get` on the demo's prepaid chat balance (20 sat deposit, 1 sat
//! a question), each call a process of its own: through an MPP session
//! (`--session`, or `sessions = true` in the client config) two deposits
//! pay for 25 calls and `gate402 sessions close` refunds the other 15 sat
//! to the sandbox return invoice; through the L402 token (the default) the
//! token is reused until the balance runs out; a cap below the deposit
//! opens nothing, and a service sold per request is paid per call.

mod common;

use common::{gate402, ok_json, payments};
use gate402_gateway::{demo, Gateway};
use serde_json::Value;

async fn demo_gateway() -> (Gateway, String, tempfile::TempDir) {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&demo::config(upstream), dir.path())
        .await
        .unwrap();
    let base = format!("http://{}", gateway.addr());
    (gateway, base, dir)
}

/// A service described, and a realm named, past ASCII: the challenges
/// carry them as UTF-8, and `--session` opens an MPP session all the same
/// (it used to drop the challenges and buy the balance through L402,
/// which is never refunded).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_opens_whatever_the_words_of_its_challenge() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo::config(upstream);
    config.mpp.realm = "api.acmé.test".into();
    for service in &mut config.services {
        service.priced.description = "Sprachmodell – größte Antwort".into();
    }
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let client = tempfile::tempdir().unwrap();
    let url = format!("http://{}/api/chat?prompt=q", gateway.addr());
    let out = gate402(client.path(), &["get", "--session", &url]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("could not be followed"), "{stderr}");
    assert_eq!(
        amounts(&payments(client.path()).await),
        [("MPP session".to_owned(), 20_000)]
    );
    gateway.shutdown().await.unwrap();
}

/// `gate402 get -s ARGS… URL`, asserting it succeeded and answered the
/// prompt.
async fn ask(data: &std::path::Path, args: &[&str], url: &str, prompt: &str) {
    let mut all = vec!["get", "-s"];
    all.extend_from_slice(args);
    all.push(url);
    let out = gate402(data, &all).await;
    assert!(
        out.status.success(),
        "gate402 {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["prompt"], prompt);
}

fn amounts(paid: &[Value]) -> Vec<(String, u64)> {
    paid.iter()
        .map(|p| {
            assert_eq!(p["status"], "paid", "{p}");
            (
                p["scheme"].as_str().unwrap().to_owned(),
                p["amount_msat"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_serves_25_calls_for_two_deposits_and_close_refunds_the_rest() {
    let (gateway, base, _dir) = demo_gateway().await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    for i in 0..25 {
        let prompt = format!("q{i}");
        let url = format!("{base}/api/chat?prompt={prompt}");
        ask(data, &["--session"], &url, &prompt).await;
    }
    // The deposit, spent by 20 calls in 20 processes; one top-up for the
    // other 5.
    let paid = payments(data).await;
    assert_eq!(
        amounts(&paid),
        [
            ("MPP session".to_owned(), 20_000),
            ("MPP session top-up".to_owned(), 20_000)
        ]
    );
    assert_eq!(paid[0]["session"], paid[1]["session"]);
    let session_id = paid[0]["session"].as_str().unwrap().to_owned();
    let listed = ok_json(data, &["sessions", "list", "--json"]).await;
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{listed}");
    let session = &sessions[0];
    assert_eq!(session["id"], session_id.as_str());
    assert_eq!(
        (
            session["deposit_sats"].as_u64(),
            session["spent_sats"].as_u64(),
            session["balance_sats"].as_u64(),
            session["idle_timeout_secs"].as_u64(),
        ),
        (Some(40), Some(25), Some(15), Some(300))
    );
    assert_eq!(session["idle"], false);
    assert!(
        session.get("preimage").is_none(),
        "no secret in the listing"
    );
    let return_hash = session["return_hash"].as_str().unwrap().to_owned();

    let closed = ok_json(data, &["sessions", "close", &session_id[..12]]).await;
    assert_eq!(closed["refundSats"], 15, "{closed}");
    assert_eq!(closed["refundStatus"], "succeeded");
    assert_eq!(closed["receivedMsat"], 15_000);
    // The ledger: two payments of 20 sat, one refund of 15.
    let receipts = ok_json(data, &["receipts", "--json"]).await;
    let refunds = receipts["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{receipts}");
    assert_eq!(refunds[0]["session"], session_id.as_str());
    assert_eq!(refunds[0]["refund_msat"], 15_000);
    assert_eq!(refunds[0]["status"], "succeeded");
    assert_eq!(refunds[0]["reason"], "close");
    let totals = &receipts["totals"][0];
    assert_eq!(
        (
            totals["payments"].as_u64(),
            totals["amount_msat"].as_u64(),
            totals["refunded_msat"].as_u64()
        ),
        (Some(2), Some(40_000), Some(15_000))
    );
    // The refund is on the sandbox's return invoice.
    let refund: Value = reqwest::get(format!("{base}/sandbox/invoice/{return_hash}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refund["status"], "settled", "{refund}");
    assert_eq!(refund["amount_msat"], 15_000);
    let listed = ok_json(data, &["sessions", "list", "--json"]).await;
    assert_eq!(listed["sessions"], serde_json::json!([]));
    // Listed with the closed ones: its balance went back to the wallet.
    let listed = ok_json(data, &["sessions", "list", "--json", "--all"]).await;
    let session = &listed["sessions"][0];
    assert_eq!(session["id"], session_id.as_str(), "{listed}");
    assert_eq!(
        (
            session["balance_sats"].as_u64(),
            session["refund_sats"].as_u64(),
            session["refund_status"].as_str(),
            session["received_msat"].as_u64(),
        ),
        (Some(0), Some(15), Some("succeeded"), Some(15_000)),
        "{listed}"
    );
    let out = gate402(data, &["sessions", "list", "--all"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("balance 0 of 40 sat deposited")
            && text.contains("closed (close), refunded 15 sat (succeeded)"),
        "{text}"
    );
    // Nothing left to close: said with its refund, as recorded.
    let again = ok_json(data, &["sessions", "close", &session_id]).await;
    assert_eq!(again["alreadyClosed"], true, "{again}");
    assert_eq!(again["refundSats"], 15, "{again}");
    assert_eq!(again["closeReason"], "close", "{again}");
    // A time as the server's close says one: RFC 3339, not unix seconds.
    assert!(
        again["closedAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{again}"
    );
    let out = gate402(data, &["sessions", "close", "ffffffff"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no open session"));
    gateway.shutdown().await.unwrap();
}

/// A session the server closed for idleness before the client asked is
/// said to be closed already at the client's first `sessions close`, as
/// at its second: when, why, and its refund (the first said it as a close
/// of its own).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_server_closed_is_said_closed_already_at_the_first_close() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = demo::config(upstream);
    for service in &mut config.services {
        service.priced.session_idle_secs = 1;
    }
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    ask(
        data,
        &["--session"],
        &format!("{base}/api/chat?prompt=q"),
        "q",
    )
    .await;
    let session_id = payments(data).await[0]["session"]
        .as_str()
        .unwrap()
        .to_owned();
    // Idle in whole seconds: past 1 s for certain after 2.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    gateway.paywall().close_idle_sessions().await;
    for _ in 0..2 {
        let closed = ok_json(data, &["sessions", "close", &session_id]).await;
        assert_eq!(closed["alreadyClosed"], true, "{closed}");
        assert_eq!(closed["closeReason"], "closed by the server", "{closed}");
        assert_eq!(closed["refundSats"], 19, "{closed}");
        assert!(
            closed["closedAt"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{closed}"
        );
    }
    gateway.shutdown().await.unwrap();
}

/// A TCP front of `target` that passes connections on until `hang` is
/// set, and from then holds new ones without a byte of answer. Its base URL.
async fn front_that_may_hang(
    target: std::net::SocketAddr,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let hang = hang.load(std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if hang {
                    let mut held = client;
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut held, &mut sink).await;
                    return;
                }
                let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    base
}

/// `sessions close` against a server that never answers gives up after
/// `--read-timeout` (saying it timed out) or `--max-time` (exit 28), and
/// the session stays open for a close that is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_close_that_gets_no_answer_gives_up_on_its_timeouts_and_keeps_the_session() {
    let (gateway, _base, _dir) = demo_gateway().await;
    let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let front = front_that_may_hang(gateway.addr(), hang.clone()).await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    ask(
        data,
        &["--session"],
        &format!("{front}/api/chat?prompt=q0"),
        "q0",
    )
    .await;
    let listed = ok_json(data, &["sessions", "list", "--json"]).await;
    let id = listed["sessions"][0]["id"].as_str().unwrap().to_owned();
    hang.store(true, std::sync::atomic::Ordering::SeqCst);

    let started = std::time::Instant::now();
    let out = gate402(data, &["sessions", "close", &id, "--read-timeout", "2"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    let out = gate402(
        data,
        &[
            "sessions",
            "close",
            &id,
            "--read-timeout",
            "0",
            "--max-time",
            "2",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(28), "{stderr}");
    assert!(stderr.contains("gave up after --max-time 2 s"), "{stderr}");

    hang.store(false, std::sync::atomic::Ordering::SeqCst);
    let closed = ok_json(data, &["sessions", "close", &id]).await;
    assert_eq!(closed["refundSats"], 19, "{closed}");
    assert_eq!(closed["refundStatus"], "succeeded", "{closed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_the_l402_token_spends_the_balance_until_it_runs_out() {
    let (gateway, base, _dir) = demo_gateway().await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    for i in 0..21 {
        let prompt = format!("q{i}");
        ask(
            data,
            &[],
            &format!("{base}/api/chat?prompt={prompt}"),
            &prompt,
        )
        .await;
    }
    // One token per deposit: reused by 20 processes, then a new one.
    let paid = payments(data).await;
    assert_eq!(
        amounts(&paid),
        [("L402".to_owned(), 20_000), ("L402".to_owned(), 20_000)]
    );
    let receipts = ok_json(data, &["receipts", "--json"]).await;
    assert_eq!(receipts["totals"][0]["payments"], 2);
    assert_eq!(receipts["totals"][0]["amount_msat"], 40_000);
    assert_eq!(receipts["refunds"], serde_json::json!([]));
    let listed = ok_json(data, &["sessions", "list", "--json", "--all"]).await;
    assert_eq!(listed["sessions"], serde_json::json!([]));

    // The client config may make sessions the default; --no-session
    // overrides it.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("client.toml"), "sessions = true\n").unwrap();
    let url = format!("{base}/api/chat?prompt=x");
    ask(other.path(), &["--no-session"], &url, "x").await;
    let other_again = tempfile::tempdir().unwrap();
    std::fs::write(other_again.path().join("client.toml"), "sessions = true\n").unwrap();
    ask(other_again.path(), &[], &url, "x").await;
    assert_eq!(
        amounts(&payments(other.path()).await),
        [("L402".to_owned(), 20_000)]
    );
    assert_eq!(
        amounts(&payments(other_again.path()).await),
        [("MPP session".to_owned(), 20_000)]
    );
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cap_below_the_deposit_opens_no_session_and_pays_nothing() {
    let (gateway, base, _dir) = demo_gateway().await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let out = gate402(
        data,
        &[
            "get",
            "--session",
            "--max-cost",
            "10",
            &format!("{base}/api/chat?prompt=x"),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the deposit of a prepaid balance is 20 sat, above the cap of 10 sat"),
        "{stderr}"
    );
    assert!(payments(data).await.is_empty());
    // Its L402 balance: the deposit too, said so.
    let url = format!("{base}/api/chat?prompt=x");
    let out = gate402(data, &["get", "--no-session", "--max-cost", "10", &url]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the deposit of a prepaid balance is 20 sat"),
        "{stderr}"
    );
    assert!(payments(data).await.is_empty());
    let listed = ok_json(data, &["sessions", "list", "--json", "--all"]).await;
    assert_eq!(listed["sessions"], serde_json::json!([]));
    // A service sold per request offers no session: --session pays it as
    // ever, once per call.
    let weather = format!("{base}/api/weather?city=Oslo");
    for _ in 0..2 {
        let out = gate402(data, &["get", "-s", "--session", &weather]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        amounts(&payments(data).await),
        [("L402".to_owned(), 10_000), ("L402".to_owned(), 10_000)]
    );
    gateway.shutdown().await.unwrap();
}
