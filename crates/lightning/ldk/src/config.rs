//! How to run the embedded node.

use std::path::PathBuf;

use gate402_lightning::Network;
use serde::{Deserialize, Serialize};

/// Where the node learns about the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChainSource {
    /// An Esplora HTTP API (`https://blockstream.info/api`).
    Esplora {
        /// Base URL.
        url: String,
    },
    /// An Electrum server (`ssl://electrum.blockstream.info:50002`).
    Electrum {
        /// Server URL.
        url: String,
    },
    /// A Bitcoin Core node's JSON-RPC.
    BitcoindRpc {
        /// Host name or address.
        host: String,
        /// RPC port.
        port: u16,
        /// RPC user.
        user: String,
        /// RPC password.
        password: String,
    },
}

/// An LSPS2 service that opens channels just in time for inbound payments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LspConfig {
    /// The LSP's node id (hex).
    pub node_id: String,
    /// Its address, `host:port`.
    pub address: String,
    /// An access token, if the LSP wants one.
    #[serde(default)]
    pub token: Option<String>,
}

/// Everything the embedded node needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdkConfig {
    /// The chain.
    pub network: Network,
    /// Where chain data comes from.
    pub chain_source: ChainSource,
    /// Where keys, channel state and payments live. Back it up. Unset in a
    /// config file means `<gate402 data dir>/ldk` ([`LdkConfig::or_data_dir`]).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Addresses to accept peer connections on (`0.0.0.0:9735`).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Node alias (needed only to announce channels).
    #[serde(default)]
    pub alias: Option<String>,
    /// Optional LSPS2 liquidity source.
    #[serde(default)]
    pub lsp: Option<LspConfig>,
    /// How often to sync the wallets with the chain, in seconds (default 30;
    /// tests use 1).
    #[serde(default)]
    pub sync_interval_secs: Option<u64>,
}

impl LdkConfig {
    /// Fills in the data directory when the config left it unset.
    pub fn or_data_dir(mut self, default: impl FnOnce() -> PathBuf) -> Self {
        if self.data_dir.is_none() {
            self.data_dir = Some(default());
        }
        self
    }
}
