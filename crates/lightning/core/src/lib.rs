//! One trait for every Lightning backend: [`LightningBackend`].
//!
//! The gateway creates invoices and learns when they are paid; the client
//! pays them. Both talk to a node only through this trait, so the sandbox,
//! the embedded LDK node, LND and Core Lightning are interchangeable and no
//! backend detail leaks upward. Every method is cancel-safe: dropping a
//! future loses nothing (a payment already handed to the node keeps going,
//! and [`LightningBackend::payment_status`] finds it again).

#[cfg(feature = "contract")]
pub mod contract;

use std::time::Duration;

use async_trait::async_trait;

pub use gate402_bolt11::Network;

/// A payment hash, `sha256(preimage)`.
pub type PaymentHash = [u8; 32];
/// A payment preimage.
pub type Preimage = [u8; 32];

/// What an invoice should ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRequest {
    /// Amount in millisatoshis. `0` asks for an invoice that encodes no
    /// amount, which the payer completes with one of its choosing (see
    /// [`LightningBackend::pay_amount`]); a backend that cannot issue such
    /// invoices answers [`LightningError::Unsupported`].
    pub amount_msat: u64,
    /// The description shown to the payer.
    pub memo: String,
    /// Seconds until the invoice expires.
    pub expiry_secs: u32,
}

/// A new invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedInvoice {
    /// The BOLT11 string.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: PaymentHash,
    /// Its expiry, unix seconds.
    pub expires_at: u64,
}

/// Where an invoice we issued stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvoiceStatus {
    /// Not paid (yet).
    Open,
    /// Paid.
    Settled {
        /// The amount received, which may exceed the invoice's.
        amount_msat: u64,
        /// The preimage, when the backend reports it.
        preimage: Option<Preimage>,
    },
    /// Canceled or expired without payment.
    Canceled,
}

impl InvoiceStatus {
    /// Whether the invoice has been paid.
    pub fn is_settled(&self) -> bool {
        matches!(self, InvoiceStatus::Settled { .. })
    }
}

/// A successful outgoing payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentOutcome {
    /// The preimage, proof of payment.
    pub preimage: Preimage,
    /// Routing fees paid.
    pub fee_msat: u64,
    /// Amount delivered to the payee.
    pub amount_msat: u64,
}

/// Where an outgoing payment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Never attempted by this node.
    Unknown,
    /// In flight.
    Pending,
    /// Completed.
    Succeeded(PaymentOutcome),
    /// Failed for good; paying again is safe.
    Failed(String),
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The chain it runs on.
    pub network: Network,
    /// Its node id, 33-byte compressed public key.
    pub pubkey: [u8; 33],
    /// A short name of the backend kind (`sandbox`, `ldk`, `lnd`, `cln`).
    pub backend: &'static str,
}

/// The node's funds and channels: what [`LightningBackend::liquidity`]
/// reports. A figure the backend cannot know is `None`, never a guess.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Liquidity {
    /// Test money without limit: the sandbox, which has no chain, no
    /// channels and no balance, and settles any invoice it issued. When
    /// `true`, every other field is `None`.
    pub unlimited: bool,
    /// The on-chain wallet, when the backend has one it can read.
    pub onchain: Option<OnchainBalance>,
    /// What the node holds on its side of all its channels, usable or not,
    /// reserves included, in millisatoshis; for a wallet behind NWC, the
    /// balance it reports (NIP-47 `get_balance`).
    pub lightning_balance_msat: Option<u64>,
    /// Every channel, pending and inactive ones included; `None` when the
    /// backend cannot list channels.
    pub channels: Option<Vec<ChannelInfo>>,
    /// How much more the node can be paid now: the sum of
    /// [`ChannelInfo::inbound_msat`] over usable channels, millisatoshis.
    pub inbound_msat: Option<u64>,
    /// How much the node can pay now: the sum of
    /// [`ChannelInfo::outbound_msat`] over usable channels, millisatoshis.
    pub outbound_msat: Option<u64>,
}

impl Liquidity {
    /// The sandbox's answer: unlimited test money, nothing else known.
    pub fn unlimited() -> Self {
        Self {
            unlimited: true,
            ..Self::default()
        }
    }

    /// A node's answer from its channel list: the inbound and outbound
    /// totals are summed over the usable channels.
    pub fn from_channels(
        onchain: Option<OnchainBalance>,
        lightning_balance_msat: Option<u64>,
        channels: Vec<ChannelInfo>,
    ) -> Self {
        let usable = channels.iter().filter(|c| c.usable);
        let (inbound, outbound) = usable.fold((0u64, 0u64), |(i, o), c| {
            (
                i.saturating_add(c.inbound_msat),
                o.saturating_add(c.outbound_msat),
            )
        });
        Self {
            unlimited: false,
            onchain,
            lightning_balance_msat,
            channels: Some(channels),
            inbound_msat: Some(inbound),
            outbound_msat: Some(outbound),
        }
    }
}

/// The node's on-chain wallet, in satoshis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnchainBalance {
    /// Everything the wallet holds, confirmed or not.
    pub total_sat: u64,
    /// Confirmed funds, when the node tells them apart.
    pub confirmed_sat: Option<u64>,
    /// Funds not confirmed yet, when the node tells them apart.
    pub unconfirmed_sat: Option<u64>,
    /// What can be spent now (opening channels, withdrawing), when the node
    /// says: confirmed funds less those locked or reserved (LDK keeps a
    /// reserve for anchor channels; LND locks and reserves outputs; Core
    /// Lightning reserves outputs for transactions in the making).
    pub spendable_sat: Option<u64>,
}

/// One channel, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The peer's node id, 66 lowercase hex digits.
    pub peer_node_id: String,
    /// The channel id (BOLT 2, 64 hex digits), when the backend reports it.
    pub channel_id: Option<String>,
    /// The short channel id, `BLOCKxTXxOUTPUT` (BOLT 7), once the funding
    /// transaction is confirmed and the backend reports it.
    pub short_channel_id: Option<String>,
    /// The funding amount, in satoshis.
    pub capacity_sat: u64,
    /// What this node can send over it now, in millisatoshis: its side of
    /// the channel less the reserve its peer requires (and, on the funder's
    /// side, the commitment fee), as the node computes it.
    pub outbound_msat: u64,
    /// What this node can receive over it now, in millisatoshis: the peer's
    /// side less the reserve this node requires, as the node computes it.
    pub inbound_msat: u64,
    /// Open, confirmed, and the peer connected: payments can cross it now.
    pub usable: bool,
    /// Announced to the network (public); unannounced channels serve only
    /// this node's own payments.
    pub public: bool,
}

/// Where an invoice stands, in a listing ([`InvoiceSummary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceState {
    /// Not paid, not expired.
    Open,
    /// Paid.
    Settled,
    /// Canceled or expired without payment.
    Canceled,
}

/// An invoice this node issued, as [`LightningBackend::recent_invoices`]
/// lists it. A field the backend does not keep is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceSummary {
    /// Its payment hash.
    pub payment_hash: PaymentHash,
    /// The amount asked for, in millisatoshis; `None` for an invoice that
    /// encodes no amount, or when the backend does not keep it.
    pub amount_msat: Option<u64>,
    /// What its payment delivered, in millisatoshis, once settled.
    pub received_msat: Option<u64>,
    /// Open, settled or canceled.
    pub state: InvoiceState,
    /// When it was created, unix seconds.
    pub created_at: Option<u64>,
    /// When it was paid, unix seconds.
    pub settled_at: Option<u64>,
    /// When it expires (or expired), unix seconds.
    pub expires_at: Option<u64>,
    /// Its description (memo); `None` when it has only a description hash
    /// or the backend does not keep it.
    pub description: Option<String>,
}

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LightningError {
    /// The node could not be reached or is not running.
    #[error("Lightning node unavailable: {0}")]
    Unavailable(String),
    /// The node refused the credentials (macaroon, rune).
    #[error("Lightning node refused authentication: {0}")]
    Unauthorized(String),
    /// The node rejected the request.
    #[error("Lightning node rejected the request: {0}")]
    Rejected(String),
    /// No invoice or payment with that hash.
    #[error("no invoice or payment with hash {0}")]
    NotFound(String),
    /// Waiting ran out of time (the operation may still complete).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The node answered something this backend cannot read.
    #[error("unexpected answer from the Lightning node: {0}")]
    Protocol(String),
    /// This backend cannot do what was asked (the node may be fine).
    #[error("not supported by this Lightning backend: {0}")]
    Unsupported(String),
}

/// An error's text followed by its causes' (`a: b: c`), each said once:
/// an HTTP client's error names the request, its causes why it failed.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = next.source();
    }
    text
}

/// All the bitcoin there will ever be (21 million), in millisatoshis: no
/// payment is larger.
pub const MAX_MONEY_MSAT: u64 = 21_000_000 * 100_000_000 * 1000;

/// Why an outgoing payment failed or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    /// The string is not a valid invoice.
    #[error("{0}")]
    InvalidInvoice(String),
    /// The invoice is for another network than this node's.
    #[error("invoice is for {invoice}, this node is on {node}")]
    WrongNetwork {
        /// The invoice's network.
        invoice: Network,
        /// The node's network.
        node: Network,
    },
    /// The invoice has expired (checked before paying).
    #[error("invoice expired at {0} (unix)")]
    InvoiceExpired(u64),
    /// An invoice without an amount (or with an amount of zero), given to
    /// [`LightningBackend::pay`]: only [`LightningBackend::pay_amount`]
    /// pays those.
    #[error("invoice has no amount")]
    NoAmount,
    /// An invoice that encodes an amount, given to
    /// [`LightningBackend::pay_amount`]: nothing was paid (pay it with
    /// [`LightningBackend::pay`], for its own amount).
    #[error(
        "invoice already asks for {0} msat; only an invoice without an amount can be paid with one"
    )]
    InvoiceHasAmount(u64),
    /// [`LightningBackend::pay_amount`] was asked to pay 0 msat.
    #[error("the amount to pay must be more than 0 msat")]
    ZeroAmount,
    /// [`LightningBackend::pay_amount`] was asked to pay more than
    /// [`MAX_MONEY_MSAT`], all the bitcoin there will ever be.
    #[error("the amount to pay, {0} msat, is more than all the bitcoin there will ever be ({MAX_MONEY_MSAT} msat)")]
    AmountTooLarge(u64),
    /// No route to the payee whose fees fit under the cap.
    #[error("no route within the fee cap of {max_fee_msat} msat: {reason}")]
    NoRoute {
        /// The cap that was applied.
        max_fee_msat: u64,
        /// The node's words.
        reason: String,
    },
    /// The payment never left: whoever pays it could not be reached
    /// (nothing was sent, so nothing can have been paid).
    #[error("the payment was not sent: {0}")]
    NotSent(String),
    /// The payee rejected the payment (unknown or already paid invoice).
    #[error("payee rejected the payment: {0}")]
    Rejected(String),
    /// This invoice was already paid by this node.
    #[error("invoice already paid")]
    AlreadyPaid(PaymentOutcome),
    /// Not enough outbound liquidity.
    #[error("insufficient balance: {0}")]
    InsufficientBalance(String),
    /// The payment is still in flight when the wait ended; it was not
    /// abandoned and must not be repeated: ask [`LightningBackend::payment_status`].
    #[error("payment still pending after {0:?}; check its status before paying again")]
    StillPending(Duration),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] LightningError),
}

/// A Lightning node as gate402 uses it.
#[async_trait]
pub trait LightningBackend: Send + Sync + 'static {
    /// Creates an invoice.
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError>;

    /// The status of an invoice this node issued.
    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError>;

    /// Waits until an invoice settles, is canceled, or `timeout` passes
    /// (then [`LightningError::Timeout`]). Cancel-safe.
    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError>;

    /// Pays an invoice, paying at most `max_fee_msat` in routing fees, and
    /// waits up to `timeout` for the outcome. An invoice this node already
    /// paid is not paid again ([`PayError::AlreadyPaid`]); one without an
    /// amount is refused ([`PayError::NoAmount`]: see
    /// [`LightningBackend::pay_amount`]).
    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError>;

    /// Pays `amount_msat` (millisatoshis, routing fees not included) to an
    /// invoice that encodes no amount, or an amount of zero: a refund to an
    /// invoice the payee made without knowing what it would get. Otherwise
    /// as [`LightningBackend::pay`]: at most `max_fee_msat` in routing
    /// fees, waits up to `timeout`, never pays an invoice this node already
    /// paid, and is cancel-safe. The outcome's `amount_msat` is
    /// `amount_msat`.
    ///
    /// # Errors
    ///
    /// Refused before anything is sent: [`PayError::ZeroAmount`] when
    /// `amount_msat` is 0, [`PayError::InvoiceHasAmount`] when the invoice
    /// asks for an amount of its own, and the refusals of
    /// [`check_payable_amount`]. Then as [`LightningBackend::pay`]:
    /// [`PayError::AlreadyPaid`] with the first payment's outcome,
    /// [`PayError::StillPending`] when the outcome is not known within
    /// `timeout`, [`PayError::NoRoute`], [`PayError::InsufficientBalance`],
    /// [`PayError::Rejected`], [`PayError::Backend`].
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError>;

    /// The status of an outgoing payment, by payment hash.
    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError>;

    /// The node's network and id.
    async fn node_info(&self) -> Result<NodeInfo, LightningError>;

    /// The node's on-chain balance, channels, and inbound and outbound
    /// liquidity. Every backend of this workspace answers it; the default,
    /// for a backend that cannot tell, is [`LightningError::Unsupported`].
    ///
    /// # Errors
    ///
    /// [`LightningError::Unsupported`] when the backend cannot tell; the
    /// node's errors otherwise ([`LightningError::Unavailable`],
    /// [`LightningError::Unauthorized`], ...).
    async fn liquidity(&self) -> Result<Liquidity, LightningError> {
        Err(LightningError::Unsupported(
            "this Lightning backend does not report its liquidity".into(),
        ))
    }

    /// Up to `limit` invoices this node issued, newest first. The default,
    /// for a backend that cannot list its invoices, is
    /// [`LightningError::Unsupported`].
    ///
    /// # Errors
    ///
    /// [`LightningError::Unsupported`] when the backend cannot list
    /// invoices; the node's errors otherwise.
    async fn recent_invoices(&self, limit: usize) -> Result<Vec<InvoiceSummary>, LightningError> {
        let _ = limit;
        Err(LightningError::Unsupported(
            "this Lightning backend does not list its invoices".into(),
        ))
    }

    /// The chain this node pays on. From [`LightningBackend::node_info`]
    /// unless the backend can tell its network without a node id (a
    /// payer only needs the network).
    async fn network(&self) -> Result<Network, LightningError> {
        Ok(self.node_info().await?.network)
    }
}

/// Decodes an invoice and refuses what no backend should attempt: a
/// malformed invoice, one for another network, one with no amount (or an
/// amount of zero), an expired one. Backends call this before handing an
/// invoice to the node in [`LightningBackend::pay`].
///
/// # Errors
///
/// [`PayError::InvalidInvoice`], [`PayError::WrongNetwork`],
/// [`PayError::NoAmount`], [`PayError::InvoiceExpired`], in that order.
pub fn check_payable(
    bolt11: &str,
    network: Network,
    now: std::time::SystemTime,
) -> Result<gate402_bolt11::Invoice, PayError> {
    let invoice = decode_for(bolt11, network)?;
    if encoded_amount(&invoice).is_none() {
        return Err(PayError::NoAmount);
    }
    unexpired(invoice, now)
}

/// [`check_payable`] for [`LightningBackend::pay_amount`]: refuses an
/// amount of 0 msat, a malformed invoice, one for another network, one that
/// encodes an amount, an expired one.
///
/// # Errors
///
/// [`PayError::ZeroAmount`], [`PayError::AmountTooLarge`], [`PayError::InvalidInvoice`],
/// [`PayError::WrongNetwork`], [`PayError::InvoiceHasAmount`],
/// [`PayError::InvoiceExpired`], in that order.
pub fn check_payable_amount(
    bolt11: &str,
    network: Network,
    amount_msat: u64,
    now: std::time::SystemTime,
) -> Result<gate402_bolt11::Invoice, PayError> {
    if amount_msat == 0 {
        return Err(PayError::ZeroAmount);
    }
    if amount_msat > MAX_MONEY_MSAT {
        return Err(PayError::AmountTooLarge(amount_msat));
    }
    let invoice = decode_for(bolt11, network)?;
    if let Some(asked) = encoded_amount(&invoice) {
        return Err(PayError::InvoiceHasAmount(asked));
    }
    unexpired(invoice, now)
}

/// The amount an invoice asks for, in millisatoshis; an explicit zero is
/// no amount (`None`), as nodes treat it.
pub fn encoded_amount(invoice: &gate402_bolt11::Invoice) -> Option<u64> {
    invoice.amount_msat().filter(|&msat| msat > 0)
}

fn decode_for(bolt11: &str, network: Network) -> Result<gate402_bolt11::Invoice, PayError> {
    let invoice = gate402_bolt11::Invoice::parse(bolt11)
        .map_err(|e| PayError::InvalidInvoice(e.to_string()))?;
    if invoice.network() != network {
        return Err(PayError::WrongNetwork {
            invoice: invoice.network(),
            node: network,
        });
    }
    Ok(invoice)
}

fn unexpired(
    invoice: gate402_bolt11::Invoice,
    now: std::time::SystemTime,
) -> Result<gate402_bolt11::Invoice, PayError> {
    if invoice.is_expired_at(now) {
        return Err(PayError::InvoiceExpired(invoice.expires_at()));
    }
    Ok(invoice)
}

/// Lowercase hex of a hash, for messages and wire formats.
pub fn hash_hex(hash: &PaymentHash) -> String {
    hex::encode(hash)
}

/// A short channel id, given as the 64-bit number LDK and LND use, in the
/// `BLOCKxTXxOUTPUT` form of BOLT 7 (3 bytes of block height, 3 of
/// transaction index, 2 of output index).
pub fn short_channel_id(scid: u64) -> String {
    format!(
        "{}x{}x{}",
        scid >> 40,
        (scid >> 16) & 0xff_ffff,
        scid & 0xffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(usable: bool, inbound_msat: u64, outbound_msat: u64) -> ChannelInfo {
        ChannelInfo {
            peer_node_id: "02".repeat(33),
            channel_id: None,
            short_channel_id: None,
            capacity_sat: 1_000,
            outbound_msat,
            inbound_msat,
            usable,
            public: false,
        }
    }

    #[test]
    fn totals_count_usable_channels_only() {
        let liquidity = Liquidity::from_channels(
            None,
            Some(7),
            vec![
                channel(true, 10, 20),
                channel(false, 100, 200),
                channel(true, 1, 2),
            ],
        );
        assert_eq!(liquidity.inbound_msat, Some(11));
        assert_eq!(liquidity.outbound_msat, Some(22));
        assert_eq!(liquidity.channels.map(|c| c.len()), Some(3));
        assert!(!liquidity.unlimited);
        let sandbox = Liquidity::unlimited();
        assert!(sandbox.unlimited && sandbox.channels.is_none() && sandbox.inbound_msat.is_none());
    }

    #[test]
    fn short_channel_ids_read_as_bolt7() {
        // 103x1x0: block 103, transaction 1, output 0.
        assert_eq!(short_channel_id((103 << 40) | (1 << 16)), "103x1x0");
        assert_eq!(short_channel_id(u64::MAX), "16777215x16777215x65535");
    }
}
