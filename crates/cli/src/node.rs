//! `gate402 node`: operating the embedded ldk node (info, funding address,
//! balances, channels). The node runs for the length of the command, so
//! stop a gateway that uses the same data directory first.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;

use gate402_gateway::lightning::{start_ldk, LightningConfig};
use gate402_gateway::GatewayConfig;

use crate::client_config::ClientConfig;

/// What to do with the node.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Backend, network and node id; works with every backend, so it also
    /// checks that LND or Core Lightning answers with these credentials.
    Info,
    /// A new on-chain address to fund the node.
    Address,
    /// On-chain and Lightning balances.
    Balance,
    /// Every channel.
    Channels,
    /// Open a channel.
    Open {
        /// The peer, `NODE_ID@HOST:PORT`.
        peer: String,
        /// Channel size in satoshis.
        amount_sats: u64,
        /// Give this much to the peer at open (msat).
        #[arg(long)]
        push_msat: Option<u64>,
        /// Announce the channel (to route for others; needs alias and listen).
        #[arg(long)]
        announce: bool,
    },
    /// Close a channel by its id (from `channels`).
    Close {
        /// The `user_channel_id`.
        channel: String,
        /// Force-close unilaterally.
        #[arg(long)]
        force: bool,
    },
}

/// The `[lightning]` table of a gateway config or, failing that, of a
/// client config (the wallet of `gate402 get`).
fn lightning_of(path: &Path, data_dir: &Path) -> Result<LightningConfig> {
    match GatewayConfig::load(path) {
        Ok(config) => Ok(config.lightning),
        Err(gateway_errors) => match ClientConfig::load(Some(path), data_dir) {
            Ok(ClientConfig {
                lightning: Some(lightning),
                ..
            }) => Ok(lightning),
            Ok(_) => bail!("{}: no [lightning] table", path.display()),
            Err(_) => Err(anyhow::anyhow!("{}", gateway_errors.in_file(path))),
        },
    }
}

/// Runs a node command with the `[lightning]` table of `config` (a gateway
/// or a client config).
pub async fn run(config: &Path, data_dir: &Path, command: &NodeCommand) -> Result<()> {
    let lightning = lightning_of(config, data_dir)?;
    if let NodeCommand::Info = command {
        let backend = lightning.connect(data_dir).await?.backend;
        let info = backend.node_info().await?;
        let output = json!({
            "backend": info.backend,
            "network": info.network,
            "node_id": hex::encode(info.pubkey),
        });
        outln!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(());
    }
    let LightningConfig::Ldk(ldk) = &lightning else {
        bail!(
            "gate402 node manages the embedded ldk node, but the config's lightning backend is {:?}",
            lightning.name()
        );
    };
    let node = start_ldk(ldk, data_dir).await?;
    let output = match command {
        NodeCommand::Info => unreachable!("answered above for every backend"),
        NodeCommand::Address => json!({"address": node.new_address()?}),
        NodeCommand::Balance => {
            node.sync().await.context("syncing with the chain")?;
            serde_json::to_value(node.balances())?
        }
        NodeCommand::Channels => serde_json::to_value(node.channels())?,
        NodeCommand::Open {
            peer,
            amount_sats,
            push_msat,
            announce,
        } => {
            let (node_id, address) = peer
                .split_once('@')
                .context("peer must be NODE_ID@HOST:PORT")?;
            node.sync().await.context("syncing with the chain")?;
            let id = node.open_channel(node_id, address, *amount_sats, *push_msat, *announce)?;
            // Give the funding negotiation time to finish before stopping.
            for _ in 0..60 {
                let funded = node
                    .channels()
                    .iter()
                    .any(|c| c.user_channel_id == id && c.funding_txid.is_some());
                if funded {
                    break;
                }
                node.next_change(std::time::Duration::from_millis(500))
                    .await;
            }
            let channel = node
                .channels()
                .into_iter()
                .find(|c| c.user_channel_id == id);
            json!({"user_channel_id": id, "channel": channel})
        }
        NodeCommand::Close { channel, force } => {
            node.close_channel(channel, *force)?;
            json!({"closing": channel, "force": force})
        }
    };
    node.stop().await;
    outln!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}
