//! `gate402 node` on a real regtest chain: the CLI's own embedded node gets
//! an address, is funded by mining to it, opens a channel to another node,
//! and lists it.

use std::process::Command;

use gate402_regtest::{free_port, Bitcoind, TestNode};
use serde_json::Value;

fn gate402(args: &[&str], data_dir: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gate402 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn run(args: &[&str], data_dir: &std::path::Path) -> Value {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let data_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        gate402(&args, &data_dir)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_commands_on_regtest() {
    let bitcoind = Bitcoind::start().await;
    let peer = TestNode::start(&bitcoind).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gate402.toml");
    std::fs::write(
        &config,
        format!(
            "[lightning]\nbackend = \"ldk\"\nnetwork = \"regtest\"\nlisten = [\"127.0.0.1:{}\"]\nsync_interval_secs = 1\n\
             [lightning.chain_source]\nkind = \"bitcoind_rpc\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"gate402\"\npassword = \"gate402\"\n",
            free_port(),
            bitcoind.rpc_port
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let data = dir.path().join("data");

    let info = run(&["node", "--config", config, "info"], &data).await;
    assert_eq!(info["backend"], "ldk");
    assert_eq!(info["network"], "regtest");
    assert_eq!(info["node_id"].as_str().unwrap().len(), 66);
    assert!(data.join("ldk").exists(), "state under --data-dir");

    let address = run(&["node", "--config", config, "address"], &data).await;
    let address = address["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("bcrt1"), "{address}");
    bitcoind.mine(101, &address).await;

    let balance = run(&["node", "--config", config, "balance"], &data).await;
    assert!(
        balance["onchain_spendable_sats"].as_u64().unwrap() > 1_000_000,
        "{balance}"
    );

    let target = format!("{}@{}", peer.node.node_id(), peer.address());
    let opened = run(
        &["node", "--config", config, "open", &target, "200000"],
        &data,
    )
    .await;
    assert!(opened["channel"]["funding_txid"].is_string(), "{opened}");
    bitcoind.mine(6, &address).await;

    let channels = run(&["node", "--config", config, "channels"], &data).await;
    let channels = channels.as_array().unwrap();
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0]["capacity_sats"], 200_000);
    assert_eq!(channels[0]["counterparty"], peer.node.node_id());
}
