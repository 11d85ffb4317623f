//! A real Core Lightning node (`lightningd` with its `clnrest` plugin,
//! built by `scripts/build-cln`) on the harness's regtest chain.
//!
//! The binaries come from `GATE402_CLN` (the directory holding
//! `lightningd`), or from the cache `scripts/build-cln` fills. A missing
//! binary fails the test: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{free_port, Bitcoind, RegtestNetwork, RPC_PASSWORD, RPC_USER};

/// The Core Lightning release the tests run.
pub const CLN_VERSION: &str = "v26.06.6";

fn lightningd_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATE402_CLN") {
        return PathBuf::from(dir);
    }
    let dir = crate::cache_dir().join(format!("cln/{CLN_VERSION}/lightningd"));
    assert!(
        dir.join("lightningd").exists(),
        "lightningd not found in {}: run scripts/build-cln (scripts/test does) or set GATE402_CLN",
        dir.display()
    );
    dir
}

/// A running `lightningd` with `clnrest` on loopback.
pub struct ClnNode {
    child: Child,
    dir: tempfile::TempDir,
    cli: PathBuf,
    /// Its node id (hex).
    pub id: String,
    /// `id@127.0.0.1:port`, for peers.
    pub address: String,
    /// clnrest's address, `https://localhost:port` (its certificate names
    /// `localhost`).
    pub rest_url: String,
    /// A rune with every permission.
    pub rune: String,
}

impl ClnNode {
    /// Starts a node syncing from `bitcoind` and waits until its RPC and
    /// clnrest answer.
    pub async fn start(bitcoind: &Bitcoind) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = lightningd_dir();
        let root = bin.parent().expect("the build tree").to_owned();
        let cli = root.join("cli/lightning-cli");
        let ln_port = free_port();
        let rest_port = free_port();
        let child = Command::new(bin.join("lightningd"))
            .arg("--network=regtest")
            .arg(format!("--lightning-dir={}", dir.path().display()))
            .arg(format!("--bitcoin-rpcuser={RPC_USER}"))
            .arg(format!("--bitcoin-rpcpassword={RPC_PASSWORD}"))
            .arg("--bitcoin-rpcconnect=127.0.0.1")
            .arg(format!("--bitcoin-rpcport={}", bitcoind.rpc_port))
            .arg(format!(
                "--bitcoin-cli={}",
                crate::bitcoind_path()
                    .with_file_name("bitcoin-cli")
                    .display()
            ))
            .arg(format!("--addr=127.0.0.1:{ln_port}"))
            .arg(format!("--clnrest-port={rest_port}"))
            .arg("--clnrest-host=127.0.0.1")
            .arg(format!("--log-file={}", dir.path().join("log").display()))
            .arg("--log-level=debug")
            // Blocks seen within a second, not the default 30.
            .arg("--developer")
            .arg("--dev-bitcoind-poll=1")
            // Its gRPC plugin listens on one fixed port (9736) and, being
            // marked important, stops the node when a second node cannot
            // bind it; the tests use clnrest alone.
            .arg("--disable-plugin=cln-grpc")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lightningd starts");
        let mut node = Self {
            child,
            dir,
            cli,
            id: String::new(),
            address: String::new(),
            rest_url: format!("https://localhost:{rest_port}"),
            rune: String::new(),
        };
        let mut info = None;
        for _ in 0..300 {
            if let Ok(answer) = node.try_cli(&["getinfo"]) {
                info = Some(answer);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let info = info
            .unwrap_or_else(|| panic!("lightningd did not answer; its log:\n{}", node.log_tail()));
        node.id = info["id"].as_str().expect("node id").to_owned();
        node.address = format!("{}@127.0.0.1:{ln_port}", node.id);
        node.rune = node.cli(&["createrune"])["rune"]
            .as_str()
            .expect("rune")
            .to_owned();
        for _ in 0..300 {
            if node.ca_pem().exists()
                && std::net::TcpStream::connect(("127.0.0.1", rest_port)).is_ok()
            {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("clnrest did not listen; the log:\n{}", node.log_tail());
    }

    /// clnrest's CA certificate, which signed its server certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("regtest/ca.pem")
    }

    /// The node's data directory.
    pub fn lightning_dir(&self) -> &Path {
        self.dir.path()
    }

    fn try_cli(&self, args: &[&str]) -> Result<Value, String> {
        let output = Command::new(&self.cli)
            .arg("--network=regtest")
            .arg(format!("--lightning-dir={}", self.dir.path().display()))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
    }

    /// Runs `lightning-cli ARGS` and returns its JSON; panics on error.
    pub fn cli(&self, args: &[&str]) -> Value {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("lightning-cli {}: {e}", args.join(" ")))
    }

    /// Like [`ClnNode::cli`], the error kept.
    pub fn cli_result(&self, args: &[&str]) -> Result<Value, String> {
        self.try_cli(args)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The spendable on-chain balance it sees, in satoshis.
    pub fn onchain_sats(&self) -> u64 {
        self.cli(&["listfunds"])["outputs"]
            .as_array()
            .map(|outputs| {
                outputs
                    .iter()
                    .filter(|o| o["status"] == "confirmed")
                    .filter_map(|o| o["amount_msat"].as_u64())
                    .sum::<u64>()
                    / 1000
            })
            .unwrap_or(0)
    }

    /// Whether its channel with `peer` (a node id) is open and usable.
    pub fn channel_ready(&self, peer: &str) -> bool {
        self.cli(&["listpeerchannels", peer])["channels"]
            .as_array()
            .is_some_and(|channels| {
                channels
                    .iter()
                    .any(|c| c["state"] == "CHANNELD_NORMAL" && c["peer_connected"] == true)
            })
    }
}

impl Drop for ClnNode {
    fn drop(&mut self) {
        let _ = self.try_cli(&["stop"]);
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RegtestNetwork {
    /// Starts a Core Lightning node on this chain, funds it, and opens a
    /// channel of `capacity_sats` from it to node `peer`, pushing
    /// `push_msat` there so that both sides can pay; returns once the
    /// channel is usable on both sides.
    pub async fn add_cln(&self, peer: usize, capacity_sats: u64, push_msat: u64) -> ClnNode {
        let cln = ClnNode::start(&self.bitcoind).await;
        let address = cln.cli(&["newaddr", "bech32"])["bech32"]
            .as_str()
            .expect("an address")
            .to_owned();
        self.bitcoind.mine(1, &address).await;
        self.mine(100).await;
        self.until("Core Lightning sees its coinbase", || {
            cln.onchain_sats() > 0
        })
        .await;
        let peer_node = &self.nodes[peer];
        cln.cli(&[
            "connect",
            &format!("{}@{}", peer_node.node.node_id(), peer_node.address()),
        ]);
        cln.cli(&[
            "-k",
            "fundchannel",
            &format!("id={}", peer_node.node.node_id()),
            &format!("amount={capacity_sats}"),
            &format!("push_msat={push_msat}"),
            "announce=false",
        ]);
        self.mine(6).await;
        let id = cln.id.clone();
        self.until("the Core Lightning channel usable on both sides", || {
            cln.channel_ready(&peer_node.node.node_id())
                && peer_node
                    .node
                    .channels()
                    .iter()
                    .any(|c| c.usable && c.counterparty == id)
        })
        .await;
        cln
    }
}
