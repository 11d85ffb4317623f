//! The running node.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use gate402_lightning::{
    check_payable, check_payable_amount, short_channel_id, ChannelInfo, CreatedInvoice,
    InvoiceRequest, InvoiceState, InvoiceStatus, InvoiceSummary, LightningBackend, LightningError,
    Liquidity, Network, NodeInfo, OnchainBalance, PayError, PaymentHash, PaymentOutcome,
    PaymentStatus,
};
use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::config::{BackgroundSyncConfig, ElectrumSyncConfig, EsploraSyncConfig};
use ldk_node::lightning::ln::channelmanager::PaymentId;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning::routing::router::RouteParametersConfig;
use ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use ldk_node::payment::{PaymentDetails, PaymentDirection, PaymentKind};
use ldk_node::{Builder, Event, Node, NodeError, UserChannelId};
use tokio::sync::watch;

use crate::config::{ChainSource, LdkConfig};

/// Why the node could not start or an operator action failed.
#[derive(Debug, thiserror::Error)]
pub enum LdkError {
    /// A config value that does not parse.
    #[error("invalid ldk config {key}: {reason}")]
    Config {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The node could not be built from its config and data dir.
    #[error("cannot build the LDK node: {0}")]
    Build(String),
    /// The node refused an action.
    #[error("LDK node: {0}")]
    Node(#[from] NodeError),
}

/// A channel, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelSummary {
    /// Local id, used to close it.
    pub user_channel_id: String,
    /// The peer.
    pub counterparty: String,
    /// Total size.
    pub capacity_sats: u64,
    /// What we can send.
    pub outbound_msat: u64,
    /// What we can receive.
    pub inbound_msat: u64,
    /// Confirmed and reestablished with the peer.
    pub usable: bool,
    /// Confirmations of the funding transaction.
    pub confirmations: Option<u32>,
    /// The funding transaction, once negotiated.
    pub funding_txid: Option<String>,
}

/// Balances, in satoshis.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Balances {
    /// All on-chain funds.
    pub onchain_total_sats: u64,
    /// On-chain funds that can be spent now.
    pub onchain_spendable_sats: u64,
    /// Funds in channels.
    pub lightning_sats: u64,
}

/// The embedded node. Stops when dropped.
pub struct LdkNode {
    node: Arc<Node>,
    network: Network,
    /// Bumped on every node event: waiters re-check the payment store.
    changes: watch::Receiver<u64>,
    /// Why outgoing payments failed, by payment hash (the store keeps only
    /// the status).
    failures: Arc<Mutex<HashMap<[u8; 32], String>>>,
    events: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LdkNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdkNode")
            .field("node_id", &self.node.node_id().to_string())
            .finish()
    }
}

fn ldk_network(network: Network) -> ldk_node::bitcoin::Network {
    match network {
        Network::Mainnet => ldk_node::bitcoin::Network::Bitcoin,
        Network::Testnet => ldk_node::bitcoin::Network::Testnet,
        Network::Signet => ldk_node::bitcoin::Network::Signet,
        Network::Regtest => ldk_node::bitcoin::Network::Regtest,
    }
}

fn socket_address(key: &'static str, text: &str) -> Result<SocketAddress, LdkError> {
    SocketAddress::from_str(text).map_err(|e| LdkError::Config {
        key,
        reason: format!("{text:?}: {e:?}"),
    })
}

/// How long `pay` waits for a channel to become usable after a start.
const CHANNEL_READY_WAIT: Duration = Duration::from_secs(20);

impl LdkNode {
    /// Builds and starts the node. Needs a multi-threaded tokio runtime.
    pub async fn start(config: &LdkConfig) -> Result<Self, LdkError> {
        let config = config.clone();
        let node = tokio::task::spawn_blocking(move || build(&config))
            .await
            .map_err(|e| LdkError::Build(e.to_string()))??;
        let network = node_network(&node);
        let (sender, changes) = watch::channel(0u64);
        let failures = Arc::new(Mutex::new(HashMap::new()));
        let events = tokio::spawn(event_loop(node.clone(), sender, failures.clone()));
        Ok(Self {
            node,
            network,
            changes,
            failures,
            events,
        })
    }

    /// Stops the node (also done on drop).
    pub async fn stop(&self) {
        self.events.abort();
        let node = self.node.clone();
        let _ = tokio::task::spawn_blocking(move || node.stop()).await;
    }

    /// The node id, hex.
    pub fn node_id(&self) -> String {
        self.node.node_id().to_string()
    }

    /// The first address the node listens on.
    pub fn listen_address(&self) -> Option<String> {
        self.node
            .listening_addresses()
            .and_then(|a| a.first().map(ToString::to_string))
    }

    /// A fresh on-chain address to fund the node.
    pub fn new_address(&self) -> Result<String, LdkError> {
        Ok(self.node.onchain_payment().new_address()?.to_string())
    }

    /// Syncs the wallets with the chain now.
    pub async fn sync(&self) -> Result<(), LdkError> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.sync_wallets())
            .await
            .map_err(|e| LdkError::Build(e.to_string()))??;
        Ok(())
    }

    /// Opens a channel of `amount_sats` to `node_id@address`, pushing
    /// `push_msat` to the peer. An announced channel is public and can
    /// forward payments for others (it needs `alias` and `listen` set);
    /// an unannounced one serves only this node's own payments. Returns the
    /// local channel id.
    pub fn open_channel(
        &self,
        node_id: &str,
        address: &str,
        amount_sats: u64,
        push_msat: Option<u64>,
        announce: bool,
    ) -> Result<String, LdkError> {
        let peer = PublicKey::from_str(node_id).map_err(|e| LdkError::Config {
            key: "node_id",
            reason: e.to_string(),
        })?;
        let address = socket_address("address", address)?;
        let id = if announce {
            self.node
                .open_announced_channel(peer, address, amount_sats, push_msat, None)?
        } else {
            self.node
                .open_channel(peer, address, amount_sats, push_msat, None)?
        };
        Ok(id.0.to_string())
    }

    /// Closes a channel cooperatively, or by force.
    pub fn close_channel(&self, user_channel_id: &str, force: bool) -> Result<(), LdkError> {
        let id = u128::from_str(user_channel_id).map_err(|e| LdkError::Config {
            key: "user_channel_id",
            reason: e.to_string(),
        })?;
        let channel = self
            .node
            .list_channels()
            .into_iter()
            .find(|c| c.user_channel_id.0 == id)
            .ok_or(LdkError::Node(NodeError::ChannelClosingFailed))?;
        let user_channel_id = UserChannelId(id);
        if force {
            self.node
                .force_close_channel(&user_channel_id, channel.counterparty_node_id, None)?;
        } else {
            self.node
                .close_channel(&user_channel_id, channel.counterparty_node_id)?;
        }
        Ok(())
    }

    /// Every channel.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        self.node
            .list_channels()
            .into_iter()
            .map(|c| ChannelSummary {
                user_channel_id: c.user_channel_id.0.to_string(),
                counterparty: c.counterparty_node_id.to_string(),
                capacity_sats: c.channel_value_sats,
                outbound_msat: c.outbound_capacity_msat,
                inbound_msat: c.inbound_capacity_msat,
                usable: c.is_usable,
                confirmations: c.confirmations,
                funding_txid: c.funding_txo.map(|o| o.txid.to_string()),
            })
            .collect()
    }

    /// On-chain and Lightning balances.
    pub fn balances(&self) -> Balances {
        let b = self.node.list_balances();
        Balances {
            onchain_total_sats: b.total_onchain_balance_sats,
            onchain_spendable_sats: b.spendable_onchain_balance_sats,
            lightning_sats: b.total_lightning_balance_sats,
        }
    }

    /// How many public channels the node's network graph knows (gossip).
    pub fn graph_channel_count(&self) -> usize {
        self.node.network_graph().list_channels().len()
    }

    /// How many channel directions the node's graph has a fee update for.
    pub fn graph_update_count(&self) -> usize {
        let graph = self.node.network_graph();
        graph
            .list_channels()
            .into_iter()
            .filter_map(|scid| graph.channel(scid))
            .map(|c| usize::from(c.one_to_two.is_some()) + usize::from(c.two_to_one.is_some()))
            .sum()
    }

    /// Sends fresh channel updates for this node's announced channels (by
    /// raising the base fee one msat: an unchanged config sends nothing).
    /// A peer drops an update for a channel it has not seen announced yet,
    /// and the first update often outruns the announcement; this one comes
    /// after it.
    pub fn reannounce_channel_fees(&self) -> Result<(), LdkError> {
        for channel in self.node.list_channels() {
            if !channel.is_announced {
                continue;
            }
            let mut config = channel.config;
            config.forwarding_fee_base_msat += 1;
            self.node.update_channel_config(
                &channel.user_channel_id,
                channel.counterparty_node_id,
                config,
            )?;
        }
        Ok(())
    }

    /// A node just started has channels whose peers are not connected
    /// again yet; paying then would fail to find a route. Waits up to
    /// `timeout` until one channel is usable (at once when none exists or
    /// one already is).
    async fn await_usable_channel(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let channels = self.node.list_channels();
            if channels.is_empty()
                || channels.iter().any(|c| c.is_usable)
                || tokio::time::Instant::now() >= deadline
            {
                return;
            }
            self.next_change(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the next node event (or `timeout`), for callers that poll
    /// channels or balances.
    pub async fn next_change(&self, timeout: Duration) {
        let mut changes = self.changes.clone();
        let _ = tokio::time::timeout(timeout, changes.changed()).await;
    }

    fn payment(&self, hash: &PaymentHash) -> Option<PaymentDetails> {
        self.node.payment(&PaymentId(*hash))
    }

    /// Waits until `done` returns `Some` for the payment, re-checking on
    /// every node event and at least every 500 ms.
    async fn wait_for<T>(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
        done: impl Fn(Option<PaymentDetails>) -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(result) = done(self.payment(hash)) {
                return Some(result);
            }
            let tick = tokio::time::sleep(Duration::from_millis(500));
            tokio::select! {
                _ = changes.changed() => {}
                _ = tick => {}
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    fn failure_reason(&self, hash: &PaymentHash) -> String {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
            .unwrap_or_else(|| "payment failed".into())
    }

    fn outgoing_status(&self, details: Option<PaymentDetails>) -> PaymentStatus {
        let Some(details) = details.filter(|d| d.direction == PaymentDirection::Outbound) else {
            return PaymentStatus::Unknown;
        };
        match details.status {
            ldk_node::payment::PaymentStatus::Pending => PaymentStatus::Pending,
            ldk_node::payment::PaymentStatus::Succeeded => match preimage_of(&details.kind) {
                Some(preimage) => PaymentStatus::Succeeded(PaymentOutcome {
                    preimage,
                    fee_msat: details.fee_paid_msat.unwrap_or(0),
                    amount_msat: details.amount_msat.unwrap_or(0),
                }),
                None => PaymentStatus::Pending,
            },
            ldk_node::payment::PaymentStatus::Failed => {
                let hash = hash_of(&details.kind).unwrap_or([0; 32]);
                PaymentStatus::Failed(self.failure_reason(&hash))
            }
        }
    }

    /// Sends a checked invoice (with `amount_msat` when given, for an
    /// invoice without an amount) unless this node already paid it or is
    /// paying it, and waits up to `timeout` for the outcome.
    async fn send(
        &self,
        invoice: &gate402_bolt11::Invoice,
        amount_msat: Option<u64>,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        let hash = invoice.payment_hash();
        self.await_usable_channel(timeout.min(CHANNEL_READY_WAIT))
            .await;
        match self.outgoing_status(self.payment(&hash)) {
            PaymentStatus::Succeeded(outcome) => return Err(PayError::AlreadyPaid(outcome)),
            PaymentStatus::Pending => {}
            PaymentStatus::Unknown | PaymentStatus::Failed(_) => {
                let params = RouteParametersConfig {
                    max_total_routing_fee_msat: Some(max_fee_msat),
                    ..RouteParametersConfig::default()
                };
                let payments = self.node.bolt11_payment();
                let sent = match amount_msat {
                    None => payments.send(invoice.raw(), Some(params)),
                    Some(amount_msat) => {
                        payments.send_using_amount(invoice.raw(), amount_msat, Some(params))
                    }
                };
                match sent {
                    Ok(_) | Err(NodeError::DuplicatePayment) => {}
                    Err(NodeError::InsufficientFunds) => {
                        return Err(PayError::InsufficientBalance(
                            "not enough outbound capacity".into(),
                        ))
                    }
                    Err(NodeError::PaymentSendingFailed) => {
                        // Route finding runs inside `send` (and
                        // `send_using_amount`); expiry was checked above, so
                        // what failed is finding a route.
                        let reason = "RouteNotFound".to_owned();
                        self.failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(hash, reason.clone());
                        return Err(PayError::NoRoute {
                            max_fee_msat,
                            reason,
                        });
                    }
                    Err(NodeError::InvalidInvoice) => {
                        return Err(PayError::InvalidInvoice(
                            "the node refused the invoice".into(),
                        ))
                    }
                    Err(e) => return Err(PayError::Backend(unavailable(e))),
                }
            }
        }
        let status = self
            .wait_for(&hash, timeout, |details| {
                match self.outgoing_status(details) {
                    PaymentStatus::Pending => None,
                    other => Some(other),
                }
            })
            .await;
        match status {
            Some(PaymentStatus::Succeeded(outcome)) => Ok(outcome),
            Some(PaymentStatus::Failed(reason)) => Err(match reason.as_str() {
                "RouteNotFound" | "RetriesExhausted" => PayError::NoRoute {
                    max_fee_msat,
                    reason,
                },
                "PaymentExpired" => PayError::InvoiceExpired(invoice.expires_at()),
                _ => PayError::Rejected(reason),
            }),
            Some(PaymentStatus::Unknown) => Err(PayError::Backend(LightningError::Protocol(
                "the node lost track of the payment".into(),
            ))),
            Some(PaymentStatus::Pending) | None => Err(PayError::StillPending(timeout)),
        }
    }
}

impl Drop for LdkNode {
    fn drop(&mut self) {
        self.events.abort();
        // Stop before the data directory can go away. Stopping blocks, which
        // a runtime worker may do only through `block_in_place`.
        // An error here means it was already stopped.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.node.stop().ok());
            }
            Ok(_) => {
                let node = self.node.clone();
                std::thread::spawn(move || node.stop().ok());
            }
            Err(_) => {
                self.node.stop().ok();
            }
        }
    }
}

fn node_network(node: &Node) -> Network {
    match node.config().network {
        ldk_node::bitcoin::Network::Bitcoin => Network::Mainnet,
        ldk_node::bitcoin::Network::Signet => Network::Signet,
        ldk_node::bitcoin::Network::Regtest => Network::Regtest,
        _ => Network::Testnet,
    }
}

fn build(config: &LdkConfig) -> Result<Arc<Node>, LdkError> {
    let mut builder = Builder::new();
    builder.set_network(ldk_network(config.network));
    let data_dir = config.data_dir.as_ref().ok_or(LdkError::Config {
        key: "data_dir",
        reason: "not set".into(),
    })?;
    builder.set_storage_dir_path(data_dir.to_string_lossy().into_owned());
    let sync = config.sync_interval_secs.map(|secs| BackgroundSyncConfig {
        onchain_wallet_sync_interval_secs: secs.max(1),
        lightning_wallet_sync_interval_secs: secs.max(1),
        fee_rate_cache_update_interval_secs: secs.max(1),
    });
    match &config.chain_source {
        ChainSource::Esplora { url } => {
            let sync = sync.map(|s| EsploraSyncConfig {
                background_sync_config: Some(s),
            });
            builder.set_chain_source_esplora(url.clone(), sync);
        }
        ChainSource::Electrum { url } => {
            let sync = sync.map(|s| ElectrumSyncConfig {
                background_sync_config: Some(s),
            });
            builder.set_chain_source_electrum(url.clone(), sync);
        }
        ChainSource::BitcoindRpc {
            host,
            port,
            user,
            password,
        } => {
            builder.set_chain_source_bitcoind_rpc(
                host.clone(),
                *port,
                user.clone(),
                password.clone(),
            );
        }
    }
    if !config.listen.is_empty() {
        let addresses = config
            .listen
            .iter()
            .map(|a| socket_address("listen", a))
            .collect::<Result<Vec<_>, _>>()?;
        builder
            .set_listening_addresses(addresses)
            .map_err(|e| LdkError::Build(e.to_string()))?;
    }
    if let Some(alias) = &config.alias {
        builder
            .set_node_alias(alias.clone())
            .map_err(|e| LdkError::Build(e.to_string()))?;
    }
    if let Some(lsp) = &config.lsp {
        let node_id = PublicKey::from_str(&lsp.node_id).map_err(|e| LdkError::Config {
            key: "lsp.node_id",
            reason: e.to_string(),
        })?;
        let address = socket_address("lsp.address", &lsp.address)?;
        builder.set_liquidity_source_lsps2(node_id, address, lsp.token.clone());
    }
    // LDK logs through the `log` facade into the process's own logging.
    builder.set_log_facade_logger();
    let node = builder
        .build()
        .map_err(|e| LdkError::Build(e.to_string()))?;
    node.start()?;
    Ok(Arc::new(node))
}

async fn event_loop(
    node: Arc<Node>,
    changes: watch::Sender<u64>,
    failures: Arc<Mutex<HashMap<[u8; 32], String>>>,
) {
    loop {
        let event = node.next_event_async().await;
        match &event {
            Event::PaymentFailed {
                payment_hash: Some(hash),
                reason,
                ..
            } => {
                let reason = reason.map_or_else(|| "payment failed".into(), |r| format!("{r:?}"));
                tracing::info!(payment_hash = %hex::encode(hash.0), %reason, "payment failed");
                failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hash.0, reason);
            }
            Event::PaymentReceived {
                payment_hash,
                amount_msat,
                ..
            } => {
                tracing::info!(payment_hash = %hex::encode(payment_hash.0), amount_msat, "payment received");
            }
            Event::ChannelReady {
                channel_id,
                counterparty_node_id,
                ..
            } => {
                tracing::info!(%channel_id, counterparty = ?counterparty_node_id, "channel ready");
            }
            Event::ChannelClosed {
                channel_id, reason, ..
            } => {
                tracing::info!(%channel_id, ?reason, "channel closed");
            }
            _ => {}
        }
        if let Err(e) = node.event_handled() {
            tracing::warn!("cannot mark LDK event handled: {e}");
        }
        changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn preimage_of(kind: &PaymentKind) -> Option<[u8; 32]> {
    match kind {
        PaymentKind::Bolt11 { preimage, .. } | PaymentKind::Bolt11Jit { preimage, .. } => {
            preimage.map(|p| p.0)
        }
        _ => None,
    }
}

fn hash_of(kind: &PaymentKind) -> Option<[u8; 32]> {
    match kind {
        PaymentKind::Bolt11 { hash, .. } | PaymentKind::Bolt11Jit { hash, .. } => Some(hash.0),
        _ => None,
    }
}

fn unavailable(e: NodeError) -> LightningError {
    match e {
        NodeError::NotRunning => LightningError::Unavailable("the LDK node is not running".into()),
        other => LightningError::Rejected(other.to_string()),
    }
}

#[async_trait]
impl LightningBackend for LdkNode {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        let description = Description::new(request.memo)
            .map_err(|e| LightningError::Rejected(format!("memo: {e}")))?;
        let description = Bolt11InvoiceDescription::Direct(description);
        let payments = self.node.bolt11_payment();
        // Amount 0: ldk-node's "variable amount" invoice, which encodes none.
        let invoice = match request.amount_msat {
            0 => payments.receive_variable_amount(&description, request.expiry_secs),
            amount_msat => payments.receive(amount_msat, &description, request.expiry_secs),
        }
        .map_err(unavailable)?;
        let expires_at = invoice
            .duration_since_epoch()
            .as_secs()
            .saturating_add(invoice.expiry_time().as_secs());
        Ok(CreatedInvoice {
            bolt11: invoice.to_string(),
            payment_hash: *invoice.payment_hash().as_ref(),
            expires_at,
        })
    }

    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        let details = self
            .payment(hash)
            .filter(|d| d.direction == PaymentDirection::Inbound)
            .ok_or_else(|| LightningError::NotFound(hex::encode(hash)))?;
        Ok(inbound_status(&details))
    }

    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError> {
        let result = self
            .wait_for(hash, timeout, |details| match details {
                Some(d) if d.direction == PaymentDirection::Inbound => {
                    let status = inbound_status(&d);
                    (status != InvoiceStatus::Open).then_some(status)
                }
                _ => None,
            })
            .await;
        match result {
            Some(status) => Ok(status),
            // An invoice this node never issued is reported as such.
            None => self
                .invoice_status(hash)
                .await
                .and(Err(LightningError::Timeout(timeout))),
        }
    }

    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        let invoice = check_payable(bolt11, self.network, SystemTime::now())?;
        self.send(&invoice, None, max_fee_msat, timeout).await
    }

    /// ldk-node's `send_using_amount`, which pays an invoice without an
    /// amount.
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        let invoice = check_payable_amount(bolt11, self.network, amount_msat, SystemTime::now())?;
        self.send(&invoice, Some(amount_msat), max_fee_msat, timeout)
            .await
    }

    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        Ok(self.outgoing_status(self.payment(hash)))
    }

    async fn node_info(&self) -> Result<NodeInfo, LightningError> {
        Ok(NodeInfo {
            network: self.network,
            pubkey: self.node.node_id().serialize(),
            backend: "ldk",
        })
    }

    /// From ldk-node's `list_balances` and `list_channels`. The on-chain
    /// wallet gives a total and what is spendable (less the anchor-channel
    /// reserve), not confirmed and unconfirmed apart. The Lightning balance
    /// is ldk-node's `total_lightning_balance_sats`, which also counts
    /// funds still to be claimed from closed channels. A channel's
    /// outbound and inbound are LDK's `outbound_capacity_msat` and
    /// `inbound_capacity_msat`.
    async fn liquidity(&self) -> Result<Liquidity, LightningError> {
        let balances = self.node.list_balances();
        let channels = self
            .node
            .list_channels()
            .into_iter()
            .map(|c| ChannelInfo {
                peer_node_id: c.counterparty_node_id.to_string(),
                channel_id: Some(c.channel_id.to_string()),
                short_channel_id: c.short_channel_id.map(short_channel_id),
                capacity_sat: c.channel_value_sats,
                outbound_msat: c.outbound_capacity_msat,
                inbound_msat: c.inbound_capacity_msat,
                usable: c.is_usable,
                public: c.is_announced,
            })
            .collect();
        let onchain = OnchainBalance {
            total_sat: balances.total_onchain_balance_sats,
            confirmed_sat: None,
            unconfirmed_sat: None,
            spendable_sat: Some(balances.spendable_onchain_balance_sats),
        };
        Ok(Liquidity::from_channels(
            Some(onchain),
            Some(balances.total_lightning_balance_sats.saturating_mul(1000)),
            channels,
        ))
    }

    /// From ldk-node's payment store (`list_payments`): its BOLT11
    /// invoices, newest update first. The store keeps no invoice text, so
    /// `description`, `created_at` and `expires_at` are `None`; it keeps
    /// one amount, which becomes the amount received once paid (then
    /// `amount_msat` is `None`, `received_msat` set); `settled_at` is the
    /// time of the store's last update of a paid invoice. An unpaid
    /// invoice stays open in the store after it expires.
    async fn recent_invoices(&self, limit: usize) -> Result<Vec<InvoiceSummary>, LightningError> {
        let mut invoices: Vec<(u64, InvoiceSummary)> = self
            .node
            .list_payments_with_filter(|p| p.direction == PaymentDirection::Inbound)
            .into_iter()
            .filter_map(|p| {
                let payment_hash = hash_of(&p.kind)?;
                let (state, amount_msat, received_msat, settled_at) = match p.status {
                    ldk_node::payment::PaymentStatus::Pending => {
                        (InvoiceState::Open, p.amount_msat, None, None)
                    }
                    ldk_node::payment::PaymentStatus::Succeeded => (
                        InvoiceState::Settled,
                        None,
                        p.amount_msat,
                        Some(p.latest_update_timestamp),
                    ),
                    ldk_node::payment::PaymentStatus::Failed => {
                        (InvoiceState::Canceled, p.amount_msat, None, None)
                    }
                };
                let summary = InvoiceSummary {
                    payment_hash,
                    amount_msat,
                    received_msat,
                    state,
                    created_at: None,
                    settled_at,
                    expires_at: None,
                    description: None,
                };
                Some((p.latest_update_timestamp, summary))
            })
            .collect();
        invoices.sort_by_key(|(updated, _)| std::cmp::Reverse(*updated));
        Ok(invoices
            .into_iter()
            .take(limit)
            .map(|(_, summary)| summary)
            .collect())
    }
}

fn inbound_status(details: &PaymentDetails) -> InvoiceStatus {
    match details.status {
        ldk_node::payment::PaymentStatus::Pending => InvoiceStatus::Open,
        ldk_node::payment::PaymentStatus::Succeeded => InvoiceStatus::Settled {
            amount_msat: details.amount_msat.unwrap_or(0),
            preimage: preimage_of(&details.kind),
        },
        ldk_node::payment::PaymentStatus::Failed => InvoiceStatus::Canceled,
    }
}
