//! The embedded Lightning backend: a self-custodial `ldk-node` node running
//! inside the gateway (or the client), behind [`LightningBackend`](gate402_lightning::LightningBackend).
//!
//! [`LdkConfig`] says which network, which chain source (Esplora, Electrum
//! or bitcoind RPC), where the node keeps its keys and state, where it
//! listens, and optionally which LSPS2 service supplies inbound liquidity.
//! [`LdkNode`] runs the node and adds what an operator needs beyond the
//! trait: on-chain address, channels, balances.

mod config;
mod node;

pub use config::{ChainSource, LdkConfig, LspConfig};
pub use node::{Balances, ChannelSummary, LdkError, LdkNode};
