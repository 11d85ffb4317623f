//! `gate402 serve` as a process: the demo defaults, JSON logs, SIGHUP
//! reload, SIGTERM shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], data: &std::path::Path) -> Serve {
    let child = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Serve(child)
}

async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn signal(child: &Child, name: &str) {
    assert!(Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

#[tokio::test]
async fn zero_config_serves_the_demo_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let mut serve = start(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("localhost:{admin_port}"),
        ],
        dir.path(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    // The admin API where --admin-listen put it, behind its credential.
    let admin = reqwest::get(format!("http://127.0.0.1:{admin_port}/admin/api/services"))
        .await
        .unwrap();
    assert_eq!(admin.status(), 401);
    let mut banner = String::new();
    BufReader::new(serve.0.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.contains("TEST MONEY"), "{banner}");
    let response = reqwest::get(format!("{base}/api/weather?city=Oslo"))
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    assert_eq!(
        reqwest::get(format!("{base}/api/hello"))
            .await
            .unwrap()
            .status(),
        200
    );
    signal(&serve.0, "TERM");
    let status = serve.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sighup_reloads_services_and_logs_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gate402.toml");
    let write = |price: u64| {
        std::fs::write(
            &config,
            format!("[[services]]\nname = \"thing\"\npath = \"/thing\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = {price}\n"),
        )
        .unwrap()
    };
    write(3);
    let mut serve = start(
        &[
            "--log-format",
            "json",
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        dir.path(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let price = || async {
        let body: serde_json::Value = reqwest::get(format!("{base}/thing"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["price"]["amount"].as_str().unwrap().to_owned()
    };
    assert_eq!(price().await, "3");
    write(8);
    signal(&serve.0, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while price().await != "8" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the price");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken config is refused and the running one kept.
    std::fs::write(&config, "[[services]]\nname = \"thing\"\n").unwrap();
    signal(&serve.0, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(price().await, "8");
    // So is a file caught truncated to nothing: the service still sells.
    std::fs::write(&config, "").unwrap();
    signal(&serve.0, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(price().await, "8");
    signal(&serve.0, "TERM");
    assert!(serve.0.wait().unwrap().success());
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut serve.0.stderr.take().unwrap(), &mut logs).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "SIGHUP: services reloaded"),
        "{logs}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("config rejected")),
        "{logs}"
    );
}

/// `gate402 demo`, the README's first command: the whole payment loop on
/// the embedded defaults, then a metered session topped up mid-stream and
/// refunded on close.
#[test]
fn the_demo_runs_the_payment_loop_and_a_refunded_session() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "7. replay the L402 token",
        "Payment intent=\"session\": 1 sat a token, deposit 5 sat",
        "event payment-need-topup",
        "topUp: 200 OK {\"status\":\"ok\"}",
        "event payment-receipt",
        "[DONE]",
        "\"refundStatus\":\"succeeded\"",
        "\"status\":\"settled\"",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
