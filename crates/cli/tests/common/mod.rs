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

/// A loopback port nothing listens on (for a server started next), never
/// one handed out before in this process.
pub fn free_port() -> u16 {
    gate402_regtest::free_port()
}

/// A `gate402 serve` process on a port of its own, laid out under a root
/// directory: the data dir `root/data`, the config `root/gateway.toml`,
/// stderr appended to `root/gateway.log`. Killed with the test.
pub struct ServeProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub port: u16,
    pub data: PathBuf,
    config: PathBuf,
    pub log: PathBuf,
    /// How it is started.
    launch: Launch,
}

/// How a [`ServeProcess`] is started, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// `ulimit -n` for the process, when set.
    pub file_limit: Option<u32>,
    /// `RUST_LOG` for the process; by default the gateway's own filter.
    pub rust_log: Option<String>,
}

impl ServeProcess {
    /// Writes the config (`listen` first, then `config_text`) and starts
    /// the gateway; returns once it answers `/healthz`.
    pub async fn start(root: &Path, config_text: &str) -> Self {
        Self::start_with(root, config_text, Launch::default()).await
    }

    /// Like [`ServeProcess::start`], started as `launch` says.
    pub async fn start_with(root: &Path, config_text: &str, launch: Launch) -> Self {
        std::fs::create_dir_all(root).unwrap();
        let config = root.join("gateway.toml");
        let log = root.join("gateway.log");
        // A port free a moment ago can be taken before the gateway binds
        // it (by another test's gateway, or a connection's local port):
        // then this gateway exits, and another one may be answering on
        // the port. Only this launch's own "listening" line counts, and a
        // taken port is given up for another.
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(
                &config,
                format!("listen = \"127.0.0.1:{port}\"\n{config_text}"),
            )
            .unwrap();
            let mut process = Self {
                child: Self::spawn(&root.join("data"), &config, &log, &launch),
                base: format!("http://127.0.0.1:{port}"),
                port,
                data: root.join("data"),
                config: config.clone(),
                log: log.clone(),
                launch: launch.clone(),
            };
            let listening = process.listening_lines();
            match process.wait_healthy(listening).await {
                None => return process,
                Some(_) if process.log_text().contains("in use") => continue,
                Some(status) => panic!("gateway exited ({status}): {}", process.log_text()),
            }
        }
        panic!("no free port for the gateway after 5 tries");
    }

    fn spawn(data: &Path, config: &Path, log: &Path, launch: &Launch) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut command = match launch.file_limit {
            // `exec` keeps the pid: signals and /proc reach the gateway.
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_gate402"));
                sh
            }
            None => Command::new(env!("CARGO_BIN_EXE_gate402")),
        };
        command
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--config"])
            .arg(config)
            // The gateway's own default filter, whatever the test runs under.
            .env_remove("RUST_LOG")
            // Traces go where the config says, or nowhere.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        if let Some(filter) = &launch.rust_log {
            command.env("RUST_LOG", filter);
        }
        command.spawn().unwrap()
    }

    /// Starts it again on the same data dir, config and port.
    pub async fn restart(&mut self) {
        let listening = self.listening_lines();
        self.child = Self::spawn(&self.data, &self.config, &self.log, &self.launch);
        if let Some(status) = self.wait_healthy(listening).await {
            panic!("gateway exited ({status}): {}", self.log_text());
        }
    }

    /// How many times a gateway said it listens in this log (it is
    /// appended to by every launch).
    fn listening_lines(&self) -> usize {
        self.log_text().matches("gate402 listening").count()
    }

    /// Waits until this launch logged that it listens (a line more than
    /// `listening_before`) and `/healthz` answers; the exit status if the
    /// process ended first.
    async fn wait_healthy(&mut self, listening_before: usize) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if self.listening_lines() > listening_before
                && reqwest::get(format!("{}/healthz", self.base)).await.is_ok()
            {
                return None;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not come up: {}",
                self.log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits (up to a minute) for the process to exit.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not stop on SIGTERM: {}",
                self.log_text()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status_field(self.pid(), "VmRSS:")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One field of /proc/PID/status, trimmed.
pub fn proc_status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Buys one MPP credential for `path` from the gateway at `base` (its
/// sandbox pays): the `Authorization` value, good for one request.
pub async fn buy_mpp(http: &reqwest::Client, base: &str, path: &str) -> String {
    buy_mpp_for(http, base, http.get(format!("{base}{path}"))).await
}

/// [`buy_mpp`] for `request` as built (a POST with its body, say), paid
/// through the sandbox at `base`.
pub async fn buy_mpp_for(
    http: &reqwest::Client,
    base: &str,
    request: reqwest::RequestBuilder,
) -> String {
    let (offer, preimage) = pay_offer(http, base, request).await;
    offer.payment_authorization(&preimage).unwrap()
}

/// Buys an L402 token for `path` from the gateway at `base` (its sandbox
/// pays): the `Authorization` value.
pub async fn buy_l402(http: &reqwest::Client, base: &str, path: &str) -> String {
    let (offer, preimage) = pay_offer(http, base, http.get(format!("{base}{path}"))).await;
    offer.l402_authorization(&preimage).unwrap()
}

/// Pays the invoice of the 402 that `request` gets, through the sandbox at
/// `base`: the offer and the payment's preimage.
async fn pay_offer(
    http: &reqwest::Client,
    base: &str,
    request: reqwest::RequestBuilder,
) -> (gate402_client::Offer, [u8; 32]) {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::PAYMENT_REQUIRED);
    let offer = gate402_client::Offer::from_headers(response.headers()).unwrap();
    let paid = gate402_lightning_sandbox::http::pay_via(http, base, &offer.bolt11)
        .await
        .unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    (offer, preimage)
}
