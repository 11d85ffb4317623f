//! What the CLI's integration tests share: running the binary on a data
//! dir and reading its ledger.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::sync::Arc;

use gate402_gateway::lightning::Connected;
use gate402_gateway::{demo, Gateway};
use gate402_lightning::LightningBackend;
use serde_json::Value;

/// The demo gateway (services and tools) on `backend`; the directory
/// holds its state.
pub async fn demo_gateway_on(backend: Arc<dyn LightningBackend>) -> (Gateway, tempfile::TempDir) {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let connected = Connected {
        backend,
        sandbox: None,
    };
    let gateway = Gateway::start_with(&demo::config(upstream), dir.path(), connected)
        .await
        .unwrap();
    (gateway, dir)
}

/// Runs `gate402 --data-dir DATA ARGS…` off the async runtime.
pub async fn gate402(data: &Path, args: &[&str]) -> Output {
    gate402_with_env(data, args, &[]).await
}

/// Like [`gate402`], with extra environment variables.
pub async fn gate402_with_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let data: PathBuf = data.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_gate402"))
            .arg("--data-dir")
            .arg(&data)
            .args(&args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Runs `gate402`, asserts success, and parses standard output as JSON.
pub async fn ok_json(data: &Path, args: &[&str]) -> Value {
    let out = gate402(data, args).await;
    assert!(
        out.status.success(),
        "gate402 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The client ledger's payments.
pub async fn payments(data: &Path) -> Vec<Value> {
    ok_json(data, &["receipts", "--json"]).await["payments"]
        .as_array()
        .unwrap()
        .clone()
}

/// This package's directory, read when the test runs (cargo sets it), not
/// when it was compiled: a test binary reused from a build of the same
/// sources elsewhere must still find its files here.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .expect("tests run under cargo, which sets CARGO_MANIFEST_DIR")
}

/// A loopback port nothing listens on (for a server started next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
