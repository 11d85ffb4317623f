//! A real regtest Lightning network for the integration tests: `bitcoind`
//! (built by `scripts/build-bitcoind`) and ldk-node nodes with channels
//! between them, and a Core Lightning node beside them when a test asks
//! ([`cln::ClnNode`], built by `scripts/build-cln`). Everything lives in temporary directories and on loopback
//! ports, and stops when dropped.
//!
//! The `bitcoind` binary comes from `GATE402_BITCOIND`, or from the cache
//! that `scripts/build-bitcoind` fills. A missing binary fails the test: it
//! is never skipped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gate402_lightning_ldk::{ChainSource, LdkConfig, LdkNode};
use serde_json::{json, Value};

pub mod cln;

/// The RPC credentials of every test bitcoind.
const RPC_USER: &str = "gate402";
const RPC_PASSWORD: &str = "gate402";

/// A free TCP port on loopback, never one this process was handed
/// before: the port is let go for a server started next, and the kernel
/// may hand it out again meanwhile to a test running beside.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Where `scripts/build-*` cache what they build.
fn cache_dir() -> PathBuf {
    std::env::var_os("GATE402_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gate402")))
        .expect("HOME or GATE402_CACHE")
}

fn bitcoind_path() -> PathBuf {
    if let Some(path) = std::env::var_os("GATE402_BITCOIND") {
        return PathBuf::from(path);
    }
    let path = cache_dir().join("bitcoind/0.4.1/bin/bitcoind");
    assert!(
        path.exists(),
        "bitcoind not found at {}: run scripts/build-bitcoind (scripts/test does) or set GATE402_BITCOIND",
        path.display()
    );
    path
}

/// A regtest bitcoind without a wallet (mining pays to node addresses).
pub struct Bitcoind {
    child: Child,
    _dir: tempfile::TempDir,
    /// JSON-RPC port on 127.0.0.1.
    pub rpc_port: u16,
    client: reqwest::Client,
}

impl Bitcoind {
    /// Starts bitcoind and waits until its RPC answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let rpc_port = free_port();
        let p2p_port = free_port();
        let child = Command::new(bitcoind_path())
            .arg("-regtest")
            .arg(format!("-datadir={}", dir.path().display()))
            .arg(format!("-rpcport={rpc_port}"))
            .arg(format!("-port={p2p_port}"))
            .arg("-rpcbind=127.0.0.1")
            .arg("-rpcallowip=127.0.0.1")
            .arg(format!("-rpcuser={RPC_USER}"))
            .arg(format!("-rpcpassword={RPC_PASSWORD}"))
            .arg("-server=1")
            .arg("-listen=0")
            .arg("-fallbackfee=0.0002")
            .arg("-txindex=1")
            .arg("-printtoconsole=0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bitcoind starts");
        let bitcoind = Self {
            child,
            _dir: dir,
            rpc_port,
            client: reqwest::Client::new(),
        };
        for _ in 0..200 {
            if bitcoind
                .try_rpc("getblockchaininfo", json!([]))
                .await
                .is_ok()
            {
                return bitcoind;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("bitcoind RPC did not come up on port {rpc_port}");
    }

    async fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let response = self
            .client
            .post(format!("http://127.0.0.1:{}/", self.rpc_port))
            .basic_auth(RPC_USER, Some(RPC_PASSWORD))
            .json(&json!({"jsonrpc": "1.0", "id": "gate402", "method": method, "params": params}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match &body["error"] {
            Value::Null => Ok(body["result"].clone()),
            error => Err(error.to_string()),
        }
    }

    /// Calls an RPC method; panics on error.
    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params)
            .await
            .unwrap_or_else(|e| panic!("bitcoind {method}: {e}"))
    }

    /// Mines `blocks` blocks paying to `address`.
    pub async fn mine(&self, blocks: u64, address: &str) {
        self.rpc("generatetoaddress", json!([blocks, address]))
            .await;
    }

    /// The current height.
    pub async fn height(&self) -> u64 {
        self.rpc("getblockcount", json!([]))
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// The chain source config that points a node here.
    pub fn chain_source(&self) -> ChainSource {
        ChainSource::BitcoindRpc {
            host: "127.0.0.1".into(),
            port: self.rpc_port,
            user: RPC_USER.into(),
            password: RPC_PASSWORD.into(),
        }
    }
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ldk-node node in a temporary directory.
pub struct TestNode {
    /// The node (shared, so a gateway under test can use it as its backend).
    pub node: Arc<LdkNode>,
    /// Its config (to restart it on the same data).
    pub config: LdkConfig,
    dir: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node syncing from `bitcoind`, listening on a free port.
    pub async fn start(bitcoind: &Bitcoind) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = LdkConfig {
            network: gate402_lightning_ldk_network(),
            chain_source: bitcoind.chain_source(),
            data_dir: Some(dir.path().join("ldk")),
            listen: vec![format!("127.0.0.1:{}", free_port())],
            // An alias (with the listen address) makes ldk-node forward to
            // private channels, which the routing node of the tests must.
            alias: Some(format!("gate402-test-{}", free_port())),
            lsp: None,
            sync_interval_secs: Some(1),
        };
        let node = Arc::new(LdkNode::start(&config).await.expect("node starts"));
        Self { node, config, dir }
    }

    /// Stops the node and starts it again on the same data directory.
    pub async fn restart(self) -> Self {
        let Self { node, config, dir } = self;
        node.stop().await;
        drop(node);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let node = Arc::new(LdkNode::start(&config).await.expect("node restarts"));
        Self { node, config, dir }
    }

    /// `node_id@host:port`, the way peers are named.
    pub fn address(&self) -> String {
        self.node.listen_address().expect("listening")
    }
}

fn gate402_lightning_ldk_network() -> gate402_lightning::Network {
    gate402_lightning::Network::Regtest
}

/// A channel to open: `from` funds `capacity_sats` and pushes `push_msat` to `to`.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSpec {
    /// Index of the funding node.
    pub from: usize,
    /// Index of the peer.
    pub to: usize,
    /// Channel size.
    pub capacity_sats: u64,
    /// Given to the peer at open, so it can pay back.
    pub push_msat: u64,
    /// Public, so that `from` forwards payments over it for others.
    pub announced: bool,
}

/// bitcoind plus nodes with usable channels.
pub struct RegtestNetwork {
    /// The nodes, in the order asked for.
    pub nodes: Vec<TestNode>,
    /// The chain (dropped last).
    pub bitcoind: Bitcoind,
}

impl RegtestNetwork {
    /// Starts `node_count` nodes, funds every node that opens a channel by
    /// mining to it, opens the channels, and mines until all are usable.
    pub async fn start(node_count: usize, channels: &[ChannelSpec]) -> Self {
        let bitcoind = Bitcoind::start().await;
        let mut nodes = Vec::new();
        for _ in 0..node_count {
            nodes.push(TestNode::start(&bitcoind).await);
        }
        let network = Self { nodes, bitcoind };
        let mut funders: Vec<usize> = channels.iter().map(|c| c.from).collect();
        funders.sort_unstable();
        funders.dedup();
        for &i in &funders {
            let address = network.nodes[i].node.new_address().unwrap();
            network.bitcoind.mine(1, &address).await;
        }
        let burn = network.nodes[0].node.new_address().unwrap();
        network.bitcoind.mine(100, &burn).await;
        for &i in &funders {
            network
                .until(&format!("node {i} sees its coinbase"), || {
                    network.nodes[i].node.balances().onchain_spendable_sats > 0
                })
                .await;
        }
        for spec in channels {
            let peer = &network.nodes[spec.to];
            network.nodes[spec.from]
                .node
                .open_channel(
                    &peer.node.node_id(),
                    &peer.address(),
                    spec.capacity_sats,
                    Some(spec.push_msat),
                    spec.announced,
                )
                .expect("open channel");
            // One funding transaction at a time: the next may spend this one's change.
            network
                .until("funding transaction negotiated", || {
                    network.nodes[spec.from]
                        .node
                        .channels()
                        .iter()
                        .any(|c| c.counterparty == peer.node.node_id() && c.funding_txid.is_some())
                })
                .await;
            network.mine(1).await;
        }
        network.mine(6).await;
        network
            .until("every channel usable on both sides", || {
                channels.iter().all(|spec| {
                    let a = &network.nodes[spec.from].node;
                    let b = &network.nodes[spec.to].node;
                    a.channels()
                        .iter()
                        .any(|c| c.usable && c.counterparty == b.node_id())
                        && b.channels()
                            .iter()
                            .any(|c| c.usable && c.counterparty == a.node_id())
                })
            })
            .await;
        let announced = channels.iter().filter(|c| c.announced).count();
        if announced > 0 {
            network
                .until("announced channels gossiped to every node", || {
                    network
                        .nodes
                        .iter()
                        .all(|n| n.node.graph_channel_count() >= announced)
                })
                .await;
            // Updates sent before a peer knew the channel were dropped by it;
            // send them again now that every graph has the announcement.
            for node in &network.nodes {
                node.node.reannounce_channel_fees().expect("channel update");
            }
            network
                .until("fee updates for both directions in every graph", || {
                    network
                        .nodes
                        .iter()
                        .all(|n| n.node.graph_update_count() >= 2 * announced)
                })
                .await;
        }
        network
    }

    /// Mines `blocks` and lets the nodes catch up.
    pub async fn mine(&self, blocks: u64) {
        let address = self.nodes[0].node.new_address().unwrap();
        self.bitcoind.mine(blocks, &address).await;
        for node in &self.nodes {
            let _ = node.node.sync().await;
        }
    }

    /// Polls `condition` (every node event or 250 ms) for up to 120 s.
    pub async fn until(&self, what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !condition() {
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
