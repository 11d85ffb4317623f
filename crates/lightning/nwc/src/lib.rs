//! Nostr Wallet Connect (NIP-47) as a Lightning backend: [`Nwc`] reaches a
//! wallet through a Nostr relay, given the wallet's
//! `nostr+walletconnect://` connection string, and serves
//! [`LightningBackend`] on top of it.
//!
//! NIP-47 is thinner than the trait in places; this backend says so rather
//! than papering over it:
//!
//! - `pay_invoice` carries no fee cap, so `max_fee_msat` cannot be enforced
//!   through the protocol: the wallet's own limits apply. A fee above the cap
//!   is logged, and the payment is still reported, because it happened.
//! - `get_info` need not name the wallet's node; then [`Nwc::node_info`]
//!   fails (a [`NodeInfo`] needs a node id, and the wallet service's Nostr
//!   key is not one) while paying still works, see [`Nwc::reported_network`].
//! - A request the wallet does not answer in time may still have been
//!   carried out: an unanswered payment is [`PayError::StillPending`].
//! - `make_invoice` requires an amount, so [`Nwc::create_invoice`] cannot
//!   make an invoice without one (amount 0): it answers
//!   [`LightningError::Unsupported`] without asking the wallet. Paying such
//!   an invoice works: [`Nwc::pay_amount`] sends `pay_invoice`'s `amount`.
//! - A wallet tells a balance (`get_balance`), not its chain funds or
//!   channels: [`Nwc::liquidity`] reports that balance alone. Its invoices
//!   come from `list_transactions` ([`Nwc::recent_invoices`]). Both methods
//!   are optional in NIP-47: a wallet without them gets
//!   [`LightningError::Unsupported`].
//!
//! [`service`] is the other side of the protocol: a NIP-47 wallet service in
//! front of any of our backends.

pub mod service;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use gate402_lightning::{
    check_payable, check_payable_amount, hash_hex, CreatedInvoice, InvoiceRequest, InvoiceState,
    InvoiceStatus, InvoiceSummary, LightningBackend, LightningError, Liquidity, Network, NodeInfo,
    PayError, PaymentHash, PaymentOutcome, PaymentStatus, Preimage,
};
use nostr_sdk::nips::nip47::{
    self, ErrorCode, GetInfoResponse, ListTransactionsRequest, LookupInvoiceRequest,
    LookupInvoiceResponse, MakeInvoiceRequest, NIP47Error, NostrWalletConnectURI,
    PayInvoiceRequest, PayInvoiceResponse, TransactionState, TransactionType,
    NOSTR_WALLET_CONNECT_URI_SCHEME,
};
use nostr_sdk::{PublicKey, RelayUrl, SecretKey, Url};
use nwc::{NostrWalletConnectOptions, NWC};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// How long a request waits for the wallet's answer unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often [`Nwc::wait_invoice`] asks the wallet again: NIP-47
/// notifications are optional for wallets, lookups are not.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How to reach the wallet: `[lightning] backend = "nwc"`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NwcConfig {
    /// The connection string the wallet gave:
    /// `nostr+walletconnect://<wallet key>?relay=wss://…&secret=<hex>`.
    /// Its secret lets anyone holding it spend: keep it like a password.
    pub uri: String,
    /// Seconds to wait for the wallet's answer to a request
    /// ([`DEFAULT_TIMEOUT`] if unset). A payment waits no longer than its
    /// caller's timeout either.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl std::fmt::Debug for NwcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NwcConfig")
            .field("uri", &redact(&self.uri))
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// The connection string with every query value but the relays and the
/// lightning address hidden: listing what to keep, rather than what to
/// hide, also covers a secret spelled in an unexpected way.
fn redact(uri: &str) -> String {
    let Some((base, query)) = uri.split_once('?') else {
        return uri.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("relay" | "lud16", _)) => pair.to_owned(),
            Some((key, _)) => format!("{key}=<redacted>"),
            None => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Says what is wrong with a connection string that does not parse,
/// without repeating any of it (it may hold the secret).
fn diagnose(text: &str) -> String {
    const SHAPE: &str =
        "expected nostr+walletconnect://<wallet public key>?relay=wss://…&secret=<64 hex digits>";
    let Ok(url) = Url::parse(text) else {
        return format!("the NWC connection string is not a URI ({SHAPE})");
    };
    if url.scheme() != NOSTR_WALLET_CONNECT_URI_SCHEME {
        return format!(
            "the NWC connection string does not start with {NOSTR_WALLET_CONNECT_URI_SCHEME}:// ({SHAPE})"
        );
    }
    if url
        .host_str()
        .is_none_or(|key| PublicKey::from_hex(key).is_err())
    {
        return format!(
            "the NWC connection string does not name the wallet's public key (64 hex digits) after {NOSTR_WALLET_CONNECT_URI_SCHEME}://"
        );
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    if !pairs
        .iter()
        .any(|(key, value)| key == "relay" && RelayUrl::parse(value).is_ok())
    {
        return "the NWC connection string has no usable relay= parameter (a ws:// or wss:// URL)"
            .into();
    }
    match pairs.iter().find(|(key, _)| key == "secret") {
        None => "the NWC connection string has no secret= parameter".into(),
        Some((_, secret)) if SecretKey::from_hex(secret).is_err() => {
            "the NWC connection string's secret= is not a valid key (64 hex digits)".into()
        }
        Some(_) => format!("the NWC connection string is not valid ({SHAPE})"),
    }
}

/// A wallet reached over Nostr Wallet Connect.
pub struct Nwc {
    client: NWC,
    wallet: PublicKey,
    relays: Vec<RelayUrl>,
    timeout: Duration,
    /// What the wallet said about its network the first time it was asked
    /// (`None`: it does not say); a wallet does not change chains.
    network: OnceLock<Option<Network>>,
}

impl std::fmt::Debug for Nwc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nwc")
            .field("wallet", &self.wallet.to_hex())
            .field(
                "relays",
                &self.relays.iter().map(RelayUrl::as_str).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Nwc {
    /// Reads the connection string and prepares the client. Nothing is sent
    /// yet: the relays are reached on the first request.
    pub fn connect(config: &NwcConfig) -> Result<Self, LightningError> {
        let text = config.uri.trim();
        let uri = NostrWalletConnectURI::parse(text)
            .map_err(|_| LightningError::Unavailable(diagnose(text)))?;
        let timeout = match config.timeout_secs {
            None => DEFAULT_TIMEOUT,
            Some(0) => {
                return Err(LightningError::Unavailable(
                    "NWC timeout_secs must be at least 1".into(),
                ))
            }
            Some(secs) => Duration::from_secs(secs),
        };
        Ok(Self {
            wallet: uri.public_key,
            relays: uri.relays.clone(),
            client: NWC::with_opts(uri, NostrWalletConnectOptions::new().timeout(timeout)),
            timeout,
            network: OnceLock::new(),
        })
    }

    /// The network the wallet says it is on, `None` if it does not say.
    /// Asked once, then remembered. Unlike [`Nwc::node_info`], this works
    /// with wallets that keep their node id to themselves.
    pub async fn reported_network(&self) -> Result<Option<Network>, LightningError> {
        if let Some(network) = self.network.get() {
            return Ok(*network);
        }
        let info = self.get_info().await?;
        self.remember_network(&info)
    }

    async fn get_info(&self) -> Result<GetInfoResponse, LightningError> {
        self.client
            .get_info()
            .await
            .map_err(|e| self.lightning_error(e))
    }

    fn remember_network(&self, info: &GetInfoResponse) -> Result<Option<Network>, LightningError> {
        let network = match info.network.as_deref() {
            None => None,
            Some(name) => Some(
                name.to_ascii_lowercase()
                    .parse::<Network>()
                    .map_err(|e| LightningError::Protocol(format!("NWC get_info: {e}")))?,
            ),
        };
        // A concurrent first call may have won; both read the same wallet.
        let _ = self.network.set(network);
        Ok(network)
    }

    async fn lookup(&self, hash: &PaymentHash) -> Result<LookupInvoiceResponse, nwc::Error> {
        self.client
            .lookup_invoice(LookupInvoiceRequest {
                payment_hash: Some(hash_hex(hash)),
                invoice: None,
            })
            .await
    }

    /// As [`Nwc::lightning_error`], a wallet that does not serve the
    /// method (`NOT_IMPLEMENTED`) being [`LightningError::Unsupported`].
    fn optional_method_error(&self, method: &str, error: nwc::Error) -> LightningError {
        match error {
            nwc::Error::NIP47(nip47::Error::ErrorCode(NIP47Error {
                code: ErrorCode::NotImplemented,
                message,
            })) => {
                LightningError::Unsupported(format!("the NWC wallet has no {method}: {message}"))
            }
            other => self.lightning_error(other),
        }
    }

    fn lightning_error(&self, error: nwc::Error) -> LightningError {
        match error {
            nwc::Error::NIP47(nip47::Error::ErrorCode(e)) => wallet_error(e),
            nwc::Error::NIP47(e) => LightningError::Protocol(format!("NWC: {e}")),
            nwc::Error::Pool(e) => LightningError::Unavailable(format!("NWC relay: {e}")),
            nwc::Error::PrematureExit | nwc::Error::Timeout => LightningError::Unavailable(
                format!("the NWC wallet did not answer within {:?}", self.timeout),
            ),
            nwc::Error::Handler(e) => LightningError::Protocol(format!("NWC: {e}")),
        }
    }

    /// What a wallet's error code on `pay_invoice` means for the payment.
    ///
    /// `PAYMENT_FAILED` covers everything from "no route" to "already paid"
    /// to "gave up waiting while the HTLC is still out", so the wallet's
    /// record of the payment decides first; then a message that mentions a
    /// route is [`PayError::NoRoute`], anything else [`PayError::Rejected`].
    async fn refusal(
        &self,
        error: NIP47Error,
        hash: &PaymentHash,
        max_fee_msat: u64,
        waited: Duration,
        deadline: Instant,
    ) -> PayError {
        let NIP47Error { code, message } = error;
        match code {
            ErrorCode::InsufficientBalance => PayError::InsufficientBalance(message),
            ErrorCode::PaymentFailed | ErrorCode::Other | ErrorCode::Internal => {
                match tokio::time::timeout_at(deadline, self.payment_status(hash)).await {
                    Ok(Ok(PaymentStatus::Succeeded(outcome))) => {
                        return PayError::AlreadyPaid(outcome)
                    }
                    Ok(Ok(PaymentStatus::Pending)) => return PayError::StillPending(waited),
                    _ => {}
                }
                if code == ErrorCode::Internal {
                    PayError::Backend(LightningError::Unavailable(format!(
                        "NWC wallet internal error: {message}"
                    )))
                } else if message.to_ascii_lowercase().contains("route") {
                    PayError::NoRoute {
                        max_fee_msat,
                        reason: message,
                    }
                } else {
                    PayError::Rejected(format!("{message} [{}]", code_name(code)))
                }
            }
            ErrorCode::RateLimited
            | ErrorCode::QuotaExceeded
            | ErrorCode::Restricted
            | ErrorCode::Unauthorized
            | ErrorCode::NotImplemented
            | ErrorCode::NotFound => PayError::Rejected(format!(
                "the NWC wallet refused to pay ({}): {message}",
                code_name(code)
            )),
        }
    }

    /// `pay_invoice`, with `amount` set to `chosen_msat` when given (an
    /// invoice without an amount); see [`Nwc::pay`].
    async fn send(
        &self,
        bolt11: &str,
        chosen_msat: Option<u64>,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        let waited = timeout.min(self.timeout);
        let deadline = Instant::now() + waited;
        let network = match self.network.get() {
            Some(network) => *network,
            None => tokio::time::timeout_at(deadline, self.reported_network())
                .await
                .map_err(|_| {
                    LightningError::Unavailable(format!(
                        "the NWC wallet did not say its network within {waited:?}"
                    ))
                })??,
        };
        let network = match network {
            Some(network) => network,
            // The wallet does not say: the invoice's network is the only
            // one there is to check against.
            None => gate402_bolt11::Invoice::parse(bolt11)
                .map_err(|e| PayError::InvalidInvoice(e.to_string()))?
                .network(),
        };
        let now = SystemTime::now();
        let (invoice, amount_msat) = match chosen_msat {
            None => {
                let invoice = check_payable(bolt11, network, now)?;
                let amount_msat = invoice.amount_msat().ok_or(PayError::NoAmount)?;
                (invoice, amount_msat)
            }
            Some(amount_msat) => (
                check_payable_amount(bolt11, network, amount_msat, now)?,
                amount_msat,
            ),
        };
        let hash = invoice.payment_hash();
        let mut request = PayInvoiceRequest::new(bolt11);
        request.amount = chosen_msat;
        let sent = tokio::time::timeout_at(deadline, self.client.pay_invoice(request)).await;
        match sent {
            // Dropping the request does not recall it: it may still be paid.
            Err(_) | Ok(Err(nwc::Error::PrematureExit | nwc::Error::Timeout)) => {
                Err(PayError::StillPending(waited))
            }
            Ok(Ok(paid)) => outcome(&paid, &hash, amount_msat, max_fee_msat),
            Ok(Err(nwc::Error::NIP47(nip47::Error::ErrorCode(e)))) => {
                Err(self.refusal(e, &hash, max_fee_msat, waited, deadline).await)
            }
            // The relays took nothing: the request never reached the wallet.
            Ok(Err(e @ nwc::Error::Pool(_))) => Err(PayError::Backend(self.lightning_error(e))),
            // An answer that cannot be read may still be a payment made.
            Ok(Err(e)) => match tokio::time::timeout_at(deadline, self.payment_status(&hash)).await
            {
                Ok(Ok(PaymentStatus::Succeeded(outcome))) => Ok(outcome),
                Ok(Ok(PaymentStatus::Pending)) => Err(PayError::StillPending(waited)),
                _ => Err(PayError::Backend(self.lightning_error(e))),
            },
        }
    }
}

/// The wire name of an error code.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::RateLimited => "RATE_LIMITED",
        ErrorCode::NotImplemented => "NOT_IMPLEMENTED",
        ErrorCode::InsufficientBalance => "INSUFFICIENT_BALANCE",
        ErrorCode::PaymentFailed => "PAYMENT_FAILED",
        ErrorCode::NotFound => "NOT_FOUND",
        ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
        ErrorCode::Restricted => "RESTRICTED",
        ErrorCode::Unauthorized => "UNAUTHORIZED",
        ErrorCode::Internal => "INTERNAL",
        ErrorCode::Other => "OTHER",
    }
}

/// A wallet's error code on anything but a payment.
fn wallet_error(error: NIP47Error) -> LightningError {
    let message = format!("{} [{}]", error.message, code_name(error.code));
    match error.code {
        ErrorCode::Unauthorized | ErrorCode::Restricted => LightningError::Unauthorized(message),
        ErrorCode::NotFound => LightningError::NotFound(message),
        ErrorCode::Internal => LightningError::Unavailable(message),
        ErrorCode::RateLimited
        | ErrorCode::QuotaExceeded
        | ErrorCode::NotImplemented
        | ErrorCode::InsufficientBalance
        | ErrorCode::PaymentFailed
        | ErrorCode::Other => LightningError::Rejected(message),
    }
}

fn is_not_found(error: &nwc::Error) -> bool {
    matches!(
        error,
        nwc::Error::NIP47(nip47::Error::ErrorCode(NIP47Error {
            code: ErrorCode::NotFound,
            ..
        }))
    )
}

/// A preimage the wallet sent, checked against the payment hash: a wallet
/// cannot claim a payment it did not make.
fn preimage_for(text: &str, hash: &PaymentHash) -> Result<Preimage, LightningError> {
    let preimage: Preimage = hex::decode(text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| LightningError::Protocol("NWC preimage is not 32 bytes of hex".into()))?;
    if <[u8; 32]>::from(Sha256::digest(preimage)) != *hash {
        return Err(LightningError::Protocol(format!(
            "NWC preimage does not hash to payment hash {}",
            hash_hex(hash)
        )));
    }
    Ok(preimage)
}

/// An outgoing payment as the wallet records it.
fn payment_of(
    tx: &LookupInvoiceResponse,
    hash: &PaymentHash,
) -> Result<PaymentStatus, LightningError> {
    if tx.transaction_type == Some(TransactionType::Incoming) {
        // An invoice the wallet issued: it made no payment with this hash.
        return Ok(PaymentStatus::Unknown);
    }
    // A preimage that hashes right proves the payment, whatever the state says.
    if let Some(preimage) = tx.preimage.as_deref() {
        return Ok(PaymentStatus::Succeeded(PaymentOutcome {
            preimage: preimage_for(preimage, hash)?,
            fee_msat: tx.fees_paid,
            amount_msat: tx.amount,
        }));
    }
    Ok(match tx.state {
        Some(TransactionState::Settled) => {
            return Err(LightningError::Protocol(
                "the NWC wallet reports the payment settled but gives no preimage".into(),
            ))
        }
        // Wallets predating `state` say nothing; "pending" keeps a caller
        // from paying twice.
        Some(TransactionState::Pending) | None => PaymentStatus::Pending,
        Some(TransactionState::Failed) => {
            PaymentStatus::Failed("the NWC wallet reports the payment failed".into())
        }
        Some(TransactionState::Expired) => {
            PaymentStatus::Failed("the NWC wallet reports the payment expired".into())
        }
    })
}

/// An invoice the wallet issued, as it records it.
fn invoice_of(
    tx: &LookupInvoiceResponse,
    hash: &PaymentHash,
) -> Result<InvoiceStatus, LightningError> {
    if tx.transaction_type == Some(TransactionType::Outgoing) {
        // A payment the wallet made: it issued no invoice with this hash.
        return Err(LightningError::NotFound(hash_hex(hash)));
    }
    let settled = || -> Result<InvoiceStatus, LightningError> {
        Ok(InvoiceStatus::Settled {
            amount_msat: tx.amount,
            preimage: tx
                .preimage
                .as_deref()
                .map(|p| preimage_for(p, hash))
                .transpose()?,
        })
    };
    match tx.state {
        Some(TransactionState::Settled) => settled(),
        Some(TransactionState::Pending) => Ok(InvoiceStatus::Open),
        Some(TransactionState::Expired | TransactionState::Failed) => Ok(InvoiceStatus::Canceled),
        // Wallets predating `state`: the timestamps tell.
        None if tx.settled_at.is_some() => settled(),
        None if tx.expires_at.is_some_and(|at| at.as_secs() <= unix_now()) => {
            Ok(InvoiceStatus::Canceled)
        }
        None => Ok(InvoiceStatus::Open),
    }
}

/// An incoming transaction of `list_transactions`, as a listed invoice;
/// `None` for an outgoing one (a wallet may list them whatever was asked).
fn summary_of(tx: &LookupInvoiceResponse) -> Result<Option<InvoiceSummary>, LightningError> {
    if tx.transaction_type == Some(TransactionType::Outgoing) {
        return Ok(None);
    }
    let payment_hash: PaymentHash = hex::decode(&tx.payment_hash)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            LightningError::Protocol("NWC list_transactions: a payment_hash is not 32 bytes".into())
        })?;
    let expired = || tx.expires_at.is_some_and(|at| at.as_secs() <= unix_now());
    let state = match tx.state {
        Some(TransactionState::Settled) => InvoiceState::Settled,
        Some(TransactionState::Expired | TransactionState::Failed) => InvoiceState::Canceled,
        Some(TransactionState::Pending) => InvoiceState::Open,
        // Wallets predating `state`: the timestamps tell.
        None if tx.settled_at.is_some() => InvoiceState::Settled,
        None if expired() => InvoiceState::Canceled,
        None => InvoiceState::Open,
    };
    let amount = Some(tx.amount).filter(|&a| a > 0);
    let created_at = tx.created_at.as_secs();
    Ok(Some(InvoiceSummary {
        payment_hash,
        // One amount: asked for while open, received once settled.
        amount_msat: if state == InvoiceState::Settled {
            None
        } else {
            amount
        },
        received_msat: if state == InvoiceState::Settled {
            amount
        } else {
            None
        },
        state,
        created_at: (created_at > 0).then_some(created_at),
        settled_at: tx.settled_at.map(|t| t.as_secs()),
        expires_at: tx.expires_at.map(|t| t.as_secs()),
        description: tx.description.clone(),
    }))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A successful `pay_invoice` answer, checked.
fn outcome(
    paid: &PayInvoiceResponse,
    hash: &PaymentHash,
    amount_msat: u64,
    max_fee_msat: u64,
) -> Result<PaymentOutcome, PayError> {
    let preimage = preimage_for(&paid.preimage, hash).map_err(|e| match e {
        LightningError::Protocol(reason) => PayError::Rejected(reason),
        other => PayError::Backend(other),
    })?;
    let fee_msat = paid.fees_paid.unwrap_or(0);
    if fee_msat > max_fee_msat {
        // NIP-47 cannot pass the cap to the wallet; the money is gone, so
        // the payment stands and the overrun is only reported.
        tracing::warn!(
            fee_msat,
            max_fee_msat,
            payment_hash = %hash_hex(hash),
            "the NWC wallet paid more in fees than the cap"
        );
    }
    Ok(PaymentOutcome {
        preimage,
        fee_msat,
        amount_msat,
    })
}

#[async_trait]
impl LightningBackend for Nwc {
    /// Sends `make_invoice`. An amount of 0 is refused with
    /// [`LightningError::Unsupported`] before anything is sent: NIP-47
    /// requires an amount.
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        if request.amount_msat == 0 {
            return Err(LightningError::Unsupported(
                "NWC cannot create an invoice without an amount: NIP-47 make_invoice requires one"
                    .into(),
            ));
        }
        let made = self
            .client
            .make_invoice(MakeInvoiceRequest {
                amount: request.amount_msat,
                description: Some(request.memo),
                description_hash: None,
                expiry: Some(request.expiry_secs.into()),
            })
            .await
            .map_err(|e| self.lightning_error(e))?;
        let invoice = gate402_bolt11::Invoice::parse(&made.invoice).map_err(|e| {
            LightningError::Protocol(format!("NWC make_invoice answered a bad invoice: {e}"))
        })?;
        let payment_hash = invoice.payment_hash();
        if made
            .payment_hash
            .as_deref()
            .is_some_and(|h| !h.eq_ignore_ascii_case(&hash_hex(&payment_hash)))
        {
            return Err(LightningError::Protocol(
                "NWC make_invoice answered a payment hash that is not the invoice's".into(),
            ));
        }
        if invoice.amount_msat() != Some(request.amount_msat) {
            return Err(LightningError::Protocol(format!(
                "NWC make_invoice answered an invoice for {:?} msat, not {}",
                invoice.amount_msat(),
                request.amount_msat
            )));
        }
        Ok(CreatedInvoice {
            bolt11: made.invoice,
            payment_hash,
            expires_at: invoice.expires_at(),
        })
    }

    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        match self.lookup(hash).await {
            Ok(tx) => invoice_of(&tx, hash),
            Err(e) if is_not_found(&e) => Err(LightningError::NotFound(hash_hex(hash))),
            Err(e) => Err(self.lightning_error(e)),
        }
    }

    /// Looks the invoice up every quarter second until the deadline.
    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError> {
        let poll = async {
            loop {
                let status = self.invoice_status(hash).await?;
                if status != InvoiceStatus::Open {
                    return Ok(status);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        };
        tokio::time::timeout(timeout, poll)
            .await
            .unwrap_or(Err(LightningError::Timeout(timeout)))
    }

    /// Checks the invoice against the wallet's network, then sends
    /// `pay_invoice` and waits up to the smaller of `timeout` and the
    /// configured timeout. `max_fee_msat` is not enforced (see the crate
    /// documentation).
    ///
    /// No answer in time is [`PayError::StillPending`]. A wallet error is
    /// read against the wallet's record of the payment first (succeeded:
    /// [`PayError::AlreadyPaid`]; in flight: `StillPending`); then
    /// `INSUFFICIENT_BALANCE` is [`PayError::InsufficientBalance`], a
    /// `PAYMENT_FAILED` that mentions a route [`PayError::NoRoute`], and
    /// the rest (including limits and permissions) [`PayError::Rejected`].
    /// A preimage that does not hash to the payment hash is `Rejected` too.
    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.send(bolt11, None, max_fee_msat, timeout).await
    }

    /// As [`Nwc::pay`], with `pay_invoice`'s `amount` set to `amount_msat`.
    /// A wallet that does not take an amount refuses (read as `pay` reads
    /// any refusal).
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.send(bolt11, Some(amount_msat), max_fee_msat, timeout)
            .await
    }

    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        match self.lookup(hash).await {
            Ok(tx) => payment_of(&tx, hash),
            Err(e) if is_not_found(&e) => Ok(PaymentStatus::Unknown),
            Err(e) => Err(self.lightning_error(e)),
        }
    }

    /// `get_balance`: the balance the wallet reports, as
    /// [`Liquidity::lightning_balance_msat`]; NIP-47 tells nothing of the
    /// chain, channels or inbound liquidity, so the rest is `None`.
    async fn liquidity(&self) -> Result<Liquidity, LightningError> {
        let balance = self
            .client
            .get_balance()
            .await
            .map_err(|e| self.optional_method_error("get_balance", e))?;
        Ok(Liquidity {
            lightning_balance_msat: Some(balance),
            ..Liquidity::default()
        })
    }

    /// `list_transactions` for incoming transactions, unpaid ones
    /// included, newest first. NIP-47 keeps one amount per transaction:
    /// the amount asked for while open, received once settled.
    async fn recent_invoices(&self, limit: usize) -> Result<Vec<InvoiceSummary>, LightningError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let listed = self
            .client
            .list_transactions(ListTransactionsRequest {
                from: None,
                until: None,
                limit: Some(u64::try_from(limit).unwrap_or(u64::MAX)),
                offset: None,
                unpaid: Some(true),
                transaction_type: Some(TransactionType::Incoming),
            })
            .await
            .map_err(|e| self.optional_method_error("list_transactions", e))?;
        let mut invoices = Vec::new();
        for tx in &listed {
            invoices.extend(summary_of(tx)?);
        }
        invoices.sort_by_key(|i| std::cmp::Reverse(i.created_at));
        invoices.truncate(limit);
        Ok(invoices)
    }

    /// The network the wallet reports; an error when it does not say.
    async fn network(&self) -> Result<Network, LightningError> {
        self.reported_network().await?.ok_or_else(|| {
            LightningError::Protocol(
                "the NWC wallet's get_info does not say which network it is on".into(),
            )
        })
    }

    /// Needs the wallet to report both its network and its node id; a
    /// wallet that keeps its node id to itself gets a
    /// [`LightningError::Protocol`] error (see [`Nwc::reported_network`]).
    async fn node_info(&self) -> Result<NodeInfo, LightningError> {
        let info = self.get_info().await?;
        let network = self.remember_network(&info)?.ok_or_else(|| {
            LightningError::Protocol(
                "NWC get_info does not say which network the wallet is on".into(),
            )
        })?;
        let pubkey = info.pubkey.as_deref().ok_or_else(|| {
            LightningError::Protocol(
                "NWC get_info gives no node public key: this wallet does not reveal its node id"
                    .into(),
            )
        })?;
        let pubkey: [u8; 33] = hex::decode(pubkey)
            .ok()
            .and_then(|key| key.try_into().ok())
            .ok_or_else(|| {
                LightningError::Protocol(
                    "NWC get_info's pubkey is not a 33-byte node id in hex".into(),
                )
            })?;
        Ok(NodeInfo {
            network,
            pubkey,
            backend: "nwc",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4";
    const SECRET: &str = "71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c";

    fn config(uri: &str) -> NwcConfig {
        NwcConfig {
            uri: uri.into(),
            timeout_secs: None,
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let uri = format!(
            "nostr+walletconnect://{KEY}?relay=wss%3A%2F%2Frelay.example&secret={SECRET}&lud16=a%40b.c"
        );
        let shown = format!("{:?}", config(&uri));
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("secret=<redacted>") && shown.contains("relay=wss"));
        let client = Nwc::connect(&config(&uri)).expect("valid URI");
        let shown = format!("{client:?}");
        assert!(!shown.contains(SECRET) && shown.contains(KEY), "{shown}");
    }

    #[test]
    fn bad_uris_say_what_is_wrong_without_the_secret() {
        let cases = [
            (SECRET.to_string(), "not a URI"),
            (
                format!("nostrwalletconnect://{KEY}?relay=wss://r.example&secret={SECRET}"),
                "does not start with",
            ),
            (
                format!("nostr+walletconnect://npub?relay=wss://r.example&secret={SECRET}"),
                "public key",
            ),
            (
                format!("nostr+walletconnect://{KEY}?secret={SECRET}"),
                "relay=",
            ),
            (
                format!("nostr+walletconnect://{KEY}?relay=https://r.example&secret={SECRET}"),
                "relay=",
            ),
            (
                format!("nostr+walletconnect://{KEY}?relay=wss://r.example"),
                "no secret=",
            ),
            (
                format!("nostr+walletconnect://{KEY}?relay=wss://r.example&secret={SECRET}00"),
                "not a valid key",
            ),
        ];
        for (uri, expected) in cases {
            let err = Nwc::connect(&config(&uri)).expect_err(&uri).to_string();
            assert!(err.contains(expected), "{uri}: {err}");
            assert!(!err.contains(SECRET), "{err}");
        }
        let zero = NwcConfig {
            uri: format!("nostr+walletconnect://{KEY}?relay=wss://r.example&secret={SECRET}"),
            timeout_secs: Some(0),
        };
        assert!(Nwc::connect(&zero).is_err());
    }

    #[test]
    fn config_is_strict() {
        let parsed: Result<NwcConfig, _> =
            serde_json::from_str(r#"{"uri": "x", "timeout_secs": 5}"#);
        assert_eq!(parsed.expect("valid").timeout_secs, Some(5));
        let typo: Result<NwcConfig, _> = serde_json::from_str(r#"{"uri": "x", "timeout": 5}"#);
        assert!(typo.is_err());
    }

    fn tx(kind: Option<TransactionType>, state: Option<TransactionState>) -> LookupInvoiceResponse {
        LookupInvoiceResponse {
            transaction_type: kind,
            state,
            invoice: None,
            description: None,
            description_hash: None,
            preimage: None,
            payment_hash: String::new(),
            amount: 5_000,
            fees_paid: 3,
            created_at: nostr_sdk::Timestamp::from_secs(0),
            expires_at: None,
            settled_at: None,
            metadata: None,
        }
    }

    #[test]
    fn lookups_read_as_the_trait_means() {
        let preimage = [9u8; 32];
        let hash: PaymentHash = Sha256::digest(preimage).into();
        let mut settled = tx(
            Some(TransactionType::Outgoing),
            Some(TransactionState::Settled),
        );
        assert!(
            payment_of(&settled, &hash).is_err(),
            "settled without preimage"
        );
        settled.preimage = Some(hex::encode(preimage));
        assert_eq!(
            payment_of(&settled, &hash).unwrap(),
            PaymentStatus::Succeeded(PaymentOutcome {
                preimage,
                fee_msat: 3,
                amount_msat: 5_000
            })
        );
        assert!(payment_of(&settled, &[0; 32]).is_err(), "wrong preimage");
        assert_eq!(
            payment_of(&tx(None, None), &hash).unwrap(),
            PaymentStatus::Pending
        );
        assert!(matches!(
            payment_of(&tx(None, Some(TransactionState::Failed)), &hash).unwrap(),
            PaymentStatus::Failed(_)
        ));
        assert_eq!(
            payment_of(&tx(Some(TransactionType::Incoming), None), &hash).unwrap(),
            PaymentStatus::Unknown
        );
        assert!(matches!(
            invoice_of(&tx(Some(TransactionType::Outgoing), None), &hash),
            Err(LightningError::NotFound(_))
        ));
        assert_eq!(
            invoice_of(&tx(None, Some(TransactionState::Expired)), &hash).unwrap(),
            InvoiceStatus::Canceled
        );
        let mut old = tx(None, None);
        old.settled_at = Some(nostr_sdk::Timestamp::from_secs(1));
        assert!(invoice_of(&old, &hash).unwrap().is_settled());
    }
}
