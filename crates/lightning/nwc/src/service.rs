//! A NIP-47 wallet service in front of any [`LightningBackend`]: it listens
//! on one relay for one client's requests and carries them out on the
//! backend, so NWC apps (and [`crate::Nwc`]) can pay and invoice through it.
//!
//! It serves `pay_invoice` (with `amount`, an invoice without an amount
//! too), `make_invoice` (an amount is required), `lookup_invoice`,
//! `get_info`, `get_balance` (what the backend can pay now: its usable
//! outbound liquidity, see [`LightningBackend::liquidity`]) and
//! `list_transactions` (the invoices the backend issued, see
//! [`LightningBackend::recent_invoices`]; it lists no outgoing payments);
//! anything else is answered `NOT_IMPLEMENTED`, and so is `get_balance` in
//! front of a backend with no balance to tell (the sandbox's test money is
//! unlimited). Requests are
//! read in NIP-04 or NIP-44 v2, whichever the request says, and answered in
//! the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gate402_lightning::{
    encoded_amount, hash_hex, InvoiceRequest, InvoiceState, InvoiceStatus, InvoiceSummary,
    LightningBackend, LightningError, PayError, PaymentHash, PaymentStatus,
};
use nostr_sdk::nips::nip47::{
    ErrorCode, GetBalanceResponse, GetInfoResponse, ListTransactionsRequest, LookupInvoiceRequest,
    LookupInvoiceResponse, MakeInvoiceRequest, MakeInvoiceResponse, Method, NIP47Error,
    NostrWalletConnectURI, PayInvoiceRequest, PayInvoiceResponse, Request, RequestParams, Response,
    ResponseResult, TransactionState, TransactionType,
};
use nostr_sdk::nips::{nip04, nip44};
use nostr_sdk::{
    Client, Event, EventBuilder, Filter, JsonUtil, Keys, Kind, PublicKey, RelayPoolNotification,
    RelayUrl, SecretKey, Tag, TagKind, Timestamp,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::{JoinHandle, JoinSet};

/// The methods served, as advertised in the info event and `get_info`.
pub const METHODS: [Method; 6] = [
    Method::PayInvoice,
    Method::MakeInvoice,
    Method::LookupInvoice,
    Method::GetInfo,
    Method::GetBalance,
    Method::ListTransactions,
];

/// How many transactions `list_transactions` answers when asked for no
/// `limit`, and at most.
pub const LIST_LIMIT: usize = 100;

/// The ciphers accepted, preferred first (the info event's `encryption` tag).
pub const ENCRYPTION: &str = "nip44_v2 nip04";

/// How long [`WalletService::spawn`] waits for the relay connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long what the service learned about an invoice is kept after it
/// expires; lookups still work after that, with fewer details.
const KEEP_AFTER_EXPIRY_SECS: u64 = 24 * 3600;

/// How the service pays and invoices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOptions {
    /// The routing fee cap handed to the backend for every payment: NIP-47
    /// clients cannot set one, so the service does.
    pub max_fee_msat: u64,
    /// How long a payment may take before the answer is "still in flight".
    pub pay_timeout: Duration,
    /// Invoice lifetime when `make_invoice` gives no `expiry`.
    pub default_expiry_secs: u32,
}

impl Default for ServiceOptions {
    /// 10 sat of fees, 60 s per payment, invoices valid for an hour.
    fn default() -> Self {
        Self {
            max_fee_msat: 10_000,
            pay_timeout: Duration::from_secs(60),
            default_expiry_secs: 3600,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The relay address is not a `ws://` or `wss://` URL.
    #[error("relay URL {url:?}: {reason}")]
    RelayUrl {
        /// The address given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The relay refused or could not be reached.
    #[error("relay {url}: {reason}")]
    Relay {
        /// The relay.
        url: String,
        /// The relay's or the connection's words.
        reason: String,
    },
}

/// A running wallet service. Stops when dropped.
pub struct WalletService {
    uri: NostrWalletConnectURI,
    client: Client,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for WalletService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletService")
            .field("wallet", &self.uri.public_key.to_hex())
            .field(
                "relays",
                &self
                    .uri
                    .relays
                    .iter()
                    .map(RelayUrl::as_str)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl WalletService {
    /// Starts a service on `relay_url` with [`ServiceOptions::default`].
    pub async fn spawn(
        relay_url: &str,
        backend: Arc<dyn LightningBackend>,
    ) -> Result<Self, ServiceError> {
        Self::spawn_with(relay_url, backend, ServiceOptions::default()).await
    }

    /// Starts a service on `relay_url`, with fresh keys for itself and for
    /// its one client (whose secret is in [`WalletService::uri`]). When this
    /// returns, the service is listening: requests sent from now on are
    /// answered.
    pub async fn spawn_with(
        relay_url: &str,
        backend: Arc<dyn LightningBackend>,
        options: ServiceOptions,
    ) -> Result<Self, ServiceError> {
        let relay = RelayUrl::parse(relay_url).map_err(|e| ServiceError::RelayUrl {
            url: relay_url.to_owned(),
            reason: e.to_string(),
        })?;
        let relay_error = |reason: String| ServiceError::Relay {
            url: relay.to_string(),
            reason,
        };
        let keys = Keys::generate();
        let client_keys = Keys::generate();
        let client = Client::new(keys.clone());
        client
            .add_relay(relay.clone())
            .await
            .map_err(|e| relay_error(e.to_string()))?;
        client.connect().await;
        client.wait_for_connection(CONNECT_TIMEOUT).await;

        // Requests are ephemeral events, never stored: only a subscription
        // already open sees them, and the notification channel does not
        // replay, so take the receiver before subscribing.
        let notifications = client.notifications();
        let requests = Filter::new()
            .kind(Kind::WalletConnectRequest)
            .author(client_keys.public_key())
            .pubkey(keys.public_key())
            .since(Timestamp::now());
        let subscribed = client
            .subscribe(requests, None)
            .await
            .map_err(|e| relay_error(e.to_string()))?;
        if subscribed.success.is_empty() {
            return Err(relay_error(format!(
                "subscribing failed: {:?}",
                subscribed.failed
            )));
        }
        // Sent on the same connection after the subscription and awaited
        // until the relay acknowledges it: the subscription is live by then.
        let methods: Vec<&str> = METHODS.iter().map(Method::as_str).collect();
        let info = EventBuilder::new(Kind::WalletConnectInfo, methods.join(" "))
            .tag(Tag::custom(TagKind::custom("encryption"), [ENCRYPTION]));
        let published = client
            .send_event_builder(info)
            .await
            .map_err(|e| relay_error(e.to_string()))?;
        if published.success.is_empty() {
            return Err(relay_error(format!(
                "publishing the info event failed: {:?}",
                published.failed
            )));
        }

        let uri = NostrWalletConnectURI::new(
            keys.public_key(),
            vec![relay],
            client_keys.secret_key().clone(),
            None,
        );
        let wallet = Arc::new(Wallet {
            client: client.clone(),
            keys,
            client_pubkey: client_keys.public_key(),
            backend,
            options,
            known: Mutex::default(),
        });
        Ok(Self {
            uri,
            client,
            task: tokio::spawn(serve(wallet, notifications)),
        })
    }

    /// The connection string to give the client:
    /// `nostr+walletconnect://…&secret=…`. It holds the client's secret, which
    /// lets anyone holding it spend through this service.
    pub fn uri(&self) -> String {
        self.uri.to_string()
    }

    /// The service's Nostr public key, hex.
    pub fn public_key(&self) -> String {
        self.uri.public_key.to_hex()
    }

    /// Stops serving (requests in progress are abandoned; a payment already
    /// handed to the backend goes on there) and disconnects from the relay.
    pub async fn shutdown(self) {
        self.task.abort();
        self.client.shutdown().await;
    }
}

impl Drop for WalletService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the service needs to answer a request.
struct Wallet {
    client: Client,
    keys: Keys,
    client_pubkey: PublicKey,
    backend: Arc<dyn LightningBackend>,
    options: ServiceOptions,
    /// Invoices seen through this service, by hash: which way the money
    /// goes (a backend that both paid and issued a hash, like the sandbox
    /// paying itself, cannot tell), and the invoice for the details.
    known: Mutex<HashMap<PaymentHash, Known>>,
}

#[derive(Clone)]
struct Known {
    direction: TransactionType,
    invoice: gate402_bolt11::Invoice,
}

/// Receives requests until aborted; each runs in its own task so a slow
/// payment does not hold up the rest. Aborting drops the set, which aborts
/// the requests in progress.
async fn serve(
    wallet: Arc<Wallet>,
    mut notifications: tokio::sync::broadcast::Receiver<RelayPoolNotification>,
) {
    let mut requests = JoinSet::new();
    loop {
        match notifications.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => {
                if event.kind == Kind::WalletConnectRequest
                    && event.pubkey == wallet.client_pubkey
                    && !event.is_expired()
                {
                    requests.spawn(answer(wallet.clone(), *event));
                }
            }
            Ok(RelayPoolNotification::Shutdown) | Err(RecvError::Closed) => break,
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "NWC service fell behind; requests were lost");
            }
        }
        while requests.try_join_next().is_some() {}
    }
}

/// NIP-47 payload encryption, per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    Nip04,
    Nip44V2,
}

impl Cipher {
    /// A request without an `encryption` tag is NIP-04 (NIP-47's rule for
    /// older clients).
    fn of(event: &Event) -> Option<Self> {
        match event
            .tags
            .find(TagKind::custom("encryption"))
            .and_then(|t| t.content())
        {
            None | Some("nip04") => Some(Self::Nip04),
            Some("nip44_v2") => Some(Self::Nip44V2),
            Some(_) => None,
        }
    }

    fn decrypt(self, key: &SecretKey, peer: &PublicKey, payload: &str) -> Result<String, String> {
        match self {
            Self::Nip04 => nip04::decrypt(key, peer, payload).map_err(|e| e.to_string()),
            Self::Nip44V2 => nip44::decrypt(key, peer, payload).map_err(|e| e.to_string()),
        }
    }

    fn encrypt(self, key: &SecretKey, peer: &PublicKey, plain: &str) -> Result<String, String> {
        match self {
            Self::Nip04 => nip04::encrypt(key, peer, plain).map_err(|e| e.to_string()),
            Self::Nip44V2 => {
                nip44::encrypt(key, peer, plain, nip44::Version::V2).map_err(|e| e.to_string())
            }
        }
    }
}

/// Carries out one request and publishes the answer, logging what cannot
/// be answered at all.
async fn answer(wallet: Arc<Wallet>, event: Event) {
    if let Err(e) = try_answer(&wallet, &event).await {
        tracing::warn!(request = %event.id, "NWC service could not answer: {e}");
    }
}

async fn try_answer(wallet: &Wallet, event: &Event) -> Result<(), String> {
    let cipher = Cipher::of(event).ok_or("unsupported encryption")?;
    let key = wallet.keys.secret_key();
    let plain = cipher.decrypt(key, &event.pubkey, &event.content)?;
    let response = match Request::from_json(&plain) {
        Ok(request) => {
            let method = request.method;
            match wallet.handle(method, request.params).await {
                Ok(result) => Response {
                    result_type: method,
                    error: None,
                    result: Some(result),
                },
                Err(error) => Response {
                    result_type: method,
                    error: Some(error),
                    result: None,
                },
            }
            .as_json()
        }
        Err(_) => unreadable(&plain).ok_or("request is not NIP-47 JSON")?,
    };
    let content = cipher.encrypt(key, &event.pubkey, &response)?;
    // The client finds its answer by these two tags.
    let mut builder = EventBuilder::new(Kind::WalletConnectResponse, content)
        .tag(Tag::public_key(event.pubkey))
        .tag(Tag::event(event.id));
    if cipher == Cipher::Nip44V2 {
        builder = builder.tag(Tag::custom(TagKind::custom("encryption"), ["nip44_v2"]));
    }
    wallet
        .client
        .send_event_builder(builder)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The answer to a request whose method this crate's NIP-47 types do not
/// know (or whose parameters do not parse), written by hand because
/// [`Response`] cannot name an unknown method.
fn unreadable(plain: &str) -> Option<String> {
    let request: serde_json::Value = serde_json::from_str(plain).ok()?;
    let method = request.get("method")?.as_str()?;
    let error = match method.parse::<Method>() {
        Err(_) => error(
            ErrorCode::NotImplemented,
            format!("{method} is not supported"),
        ),
        Ok(_) => error(ErrorCode::Other, format!("malformed {method} parameters")),
    };
    Some(serde_json::json!({ "result_type": method, "error": error }).to_string())
}

fn error(code: ErrorCode, message: impl Into<String>) -> NIP47Error {
    NIP47Error {
        code,
        message: message.into(),
    }
}

/// A backend failure outside payments, as a NIP-47 error.
fn backend_error(e: LightningError) -> NIP47Error {
    let code = match e {
        LightningError::NotFound(_) => ErrorCode::NotFound,
        LightningError::Rejected(_) => ErrorCode::Other,
        LightningError::Unsupported(_) => ErrorCode::NotImplemented,
        LightningError::Unavailable(_)
        | LightningError::Unauthorized(_)
        | LightningError::Timeout(_)
        | LightningError::Protocol(_) => ErrorCode::Internal,
    };
    error(code, e.to_string())
}

/// A failed payment, as a NIP-47 error. `INTERNAL` where the payment may
/// still be out (the client should look it up, not pay again), since
/// `PAYMENT_FAILED` reads as final.
fn pay_error(e: PayError) -> NIP47Error {
    let code = match e {
        PayError::InsufficientBalance(_) => ErrorCode::InsufficientBalance,
        PayError::NoRoute { .. }
        | PayError::NotSent(_)
        | PayError::Rejected(_)
        | PayError::AlreadyPaid(_) => ErrorCode::PaymentFailed,
        PayError::InvalidInvoice(_)
        | PayError::WrongNetwork { .. }
        | PayError::InvoiceExpired(_)
        | PayError::NoAmount
        | PayError::InvoiceHasAmount(_)
        | PayError::ZeroAmount
        | PayError::AmountTooLarge(_) => ErrorCode::Other,
        PayError::StillPending(_) | PayError::Backend(_) => ErrorCode::Internal,
    };
    error(code, e.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Wallet {
    async fn handle(
        &self,
        method: Method,
        params: RequestParams,
    ) -> Result<ResponseResult, NIP47Error> {
        match params {
            RequestParams::PayInvoice(p) => {
                self.pay_invoice(p).await.map(ResponseResult::PayInvoice)
            }
            RequestParams::MakeInvoice(p) => {
                self.make_invoice(p).await.map(ResponseResult::MakeInvoice)
            }
            RequestParams::LookupInvoice(p) => self
                .lookup_invoice(p)
                .await
                .map(ResponseResult::LookupInvoice),
            RequestParams::GetInfo => self.get_info().await.map(ResponseResult::GetInfo),
            RequestParams::GetBalance => self.get_balance().await.map(ResponseResult::GetBalance),
            RequestParams::ListTransactions(p) => self
                .list_transactions(p)
                .await
                .map(ResponseResult::ListTransactions),
            _ => Err(error(
                ErrorCode::NotImplemented,
                format!("{method} is not supported"),
            )),
        }
    }

    fn remember(&self, invoice: &gate402_bolt11::Invoice, direction: TransactionType) {
        let now = unix_now();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|_, k| {
            k.invoice
                .expires_at()
                .saturating_add(KEEP_AFTER_EXPIRY_SECS)
                > now
        });
        known.insert(
            invoice.payment_hash(),
            Known {
                direction,
                invoice: invoice.clone(),
            },
        );
    }

    fn known(&self, hash: &PaymentHash) -> Option<Known> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    async fn pay_invoice(&self, p: PayInvoiceRequest) -> Result<PayInvoiceResponse, NIP47Error> {
        let invoice = gate402_bolt11::Invoice::parse(&p.invoice)
            .map_err(|e| error(ErrorCode::Other, e.to_string()))?;
        // Before paying, so a lookup during the payment finds it outgoing.
        self.remember(&invoice, TransactionType::Outgoing);
        let (max_fee_msat, timeout) = (self.options.max_fee_msat, self.options.pay_timeout);
        let paid = match p.amount {
            // Some clients repeat the invoice's own amount: that is a plain payment.
            None => self.backend.pay(&p.invoice, max_fee_msat, timeout).await,
            Some(amount) if Some(amount) == encoded_amount(&invoice) => {
                self.backend.pay(&p.invoice, max_fee_msat, timeout).await
            }
            // An invoice without an amount; one with another amount is
            // refused by the backend, before anything is sent.
            Some(amount) => {
                self.backend
                    .pay_amount(&p.invoice, amount, max_fee_msat, timeout)
                    .await
            }
        };
        let outcome = paid.map_err(pay_error)?;
        Ok(PayInvoiceResponse {
            preimage: hex::encode(outcome.preimage),
            fees_paid: Some(outcome.fee_msat),
        })
    }

    async fn make_invoice(&self, p: MakeInvoiceRequest) -> Result<MakeInvoiceResponse, NIP47Error> {
        if p.description_hash.is_some() {
            return Err(error(
                ErrorCode::NotImplemented,
                "invoices with a description hash are not supported",
            ));
        }
        if p.amount == 0 {
            return Err(error(ErrorCode::Other, "an amount is required"));
        }
        let expiry_secs = p.expiry.map_or(self.options.default_expiry_secs, |secs| {
            u32::try_from(secs).unwrap_or(u32::MAX)
        });
        let created = self
            .backend
            .create_invoice(InvoiceRequest {
                amount_msat: p.amount,
                memo: p.description.clone().unwrap_or_default(),
                expiry_secs,
            })
            .await
            .map_err(backend_error)?;
        let invoice = gate402_bolt11::Invoice::parse(&created.bolt11)
            .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
        self.remember(&invoice, TransactionType::Incoming);
        Ok(MakeInvoiceResponse {
            invoice: created.bolt11,
            payment_hash: Some(hash_hex(&created.payment_hash)),
            description: p.description,
            description_hash: None,
            preimage: None,
            amount: Some(p.amount),
            created_at: Some(Timestamp::from_secs(invoice.timestamp())),
            expires_at: Some(Timestamp::from_secs(created.expires_at)),
        })
    }

    /// Finds the hash among the payments, then the invoices, unless this
    /// service saw which it is.
    async fn lookup_invoice(
        &self,
        p: LookupInvoiceRequest,
    ) -> Result<LookupInvoiceResponse, NIP47Error> {
        let given = p
            .invoice
            .as_deref()
            .map(gate402_bolt11::Invoice::parse)
            .transpose()
            .map_err(|e| error(ErrorCode::Other, e.to_string()))?;
        let hash: PaymentHash = match (p.payment_hash.as_deref(), &given) {
            (Some(hash), _) => hex::decode(hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| error(ErrorCode::Other, "payment_hash is not 32 bytes of hex"))?,
            (None, Some(invoice)) => invoice.payment_hash(),
            (None, None) => {
                return Err(error(ErrorCode::Other, "give a payment_hash or an invoice"))
            }
        };
        let known = self.known(&hash);
        let invoice = known.as_ref().map(|k| k.invoice.clone()).or(given);
        let tx = Transaction {
            hash,
            invoice: invoice.as_ref(),
        };
        let not_found = || {
            error(
                ErrorCode::NotFound,
                format!("no payment or invoice with hash {}", hash_hex(&hash)),
            )
        };
        match known.map(|k| k.direction) {
            Some(TransactionType::Incoming) => {
                let status = self
                    .backend
                    .invoice_status(&hash)
                    .await
                    .map_err(backend_error)?;
                Ok(tx.incoming(&status))
            }
            Some(TransactionType::Outgoing) => {
                match self
                    .backend
                    .payment_status(&hash)
                    .await
                    .map_err(backend_error)?
                {
                    PaymentStatus::Unknown => Err(not_found()),
                    status => Ok(tx.outgoing(&status)),
                }
            }
            None => match self
                .backend
                .payment_status(&hash)
                .await
                .map_err(backend_error)?
            {
                PaymentStatus::Unknown => match self.backend.invoice_status(&hash).await {
                    Ok(status) => Ok(tx.incoming(&status)),
                    Err(LightningError::NotFound(_)) => Err(not_found()),
                    Err(e) => Err(backend_error(e)),
                },
                status => Ok(tx.outgoing(&status)),
            },
        }
    }

    /// The backend's usable outbound liquidity: what it can pay now.
    async fn get_balance(&self) -> Result<GetBalanceResponse, NIP47Error> {
        let liquidity = self.backend.liquidity().await.map_err(backend_error)?;
        if liquidity.unlimited {
            return Err(error(
                ErrorCode::NotImplemented,
                "this wallet's test money is unlimited: it has no balance to tell",
            ));
        }
        let balance = liquidity
            .outbound_msat
            .or(liquidity.lightning_balance_msat)
            .ok_or_else(|| {
                error(
                    ErrorCode::NotImplemented,
                    "the wallet cannot tell its balance",
                )
            })?;
        Ok(GetBalanceResponse { balance })
    }

    /// The invoices the backend issued, newest first, as NIP-47 says:
    /// settled ones only unless `unpaid`, created within `from`..=`until`,
    /// `offset` skipped, at most `limit` ([`LIST_LIMIT`]). Outgoing
    /// payments are not listed: asked for those alone, the list is empty.
    async fn list_transactions(
        &self,
        p: ListTransactionsRequest,
    ) -> Result<Vec<LookupInvoiceResponse>, NIP47Error> {
        if p.transaction_type == Some(TransactionType::Outgoing) {
            return Ok(Vec::new());
        }
        let limit = p
            .limit
            .map_or(LIST_LIMIT, |l| usize::try_from(l).unwrap_or(usize::MAX))
            .min(LIST_LIMIT);
        let offset = p
            .offset
            .map_or(0, |o| usize::try_from(o).unwrap_or(usize::MAX));
        let unpaid = p.unpaid.unwrap_or(false);
        let filtered = !unpaid || p.from.is_some() || p.until.is_some();
        // Filters drop rows after the backend's limit: then read further.
        let wanted = offset.saturating_add(limit);
        let read = if filtered {
            wanted.max(10 * LIST_LIMIT)
        } else {
            wanted
        };
        let invoices = self
            .backend
            .recent_invoices(read)
            .await
            .map_err(backend_error)?;
        let created = |i: &InvoiceSummary| i.created_at.unwrap_or(0);
        Ok(invoices
            .iter()
            .filter(|i| unpaid || i.state == InvoiceState::Settled)
            .filter(|i| p.from.is_none_or(|from| created(i) >= from.as_secs()))
            .filter(|i| p.until.is_none_or(|until| created(i) <= until.as_secs()))
            .skip(offset)
            .take(limit)
            .map(listed)
            .collect())
    }

    async fn get_info(&self) -> Result<GetInfoResponse, NIP47Error> {
        let info = self.backend.node_info().await.map_err(backend_error)?;
        Ok(GetInfoResponse {
            alias: Some(format!("gate402 ({})", info.backend)),
            color: None,
            pubkey: Some(hex::encode(info.pubkey)),
            // Our names are NIP-47's: mainnet, testnet, signet, regtest.
            network: Some(info.network.as_str().to_owned()),
            block_height: None,
            block_hash: None,
            methods: METHODS.to_vec(),
            notifications: Vec::new(),
        })
    }
}

/// An invoice the backend listed, as a NIP-47 incoming transaction.
fn listed(invoice: &InvoiceSummary) -> LookupInvoiceResponse {
    let state = match invoice.state {
        InvoiceState::Open => TransactionState::Pending,
        InvoiceState::Settled => TransactionState::Settled,
        InvoiceState::Canceled => TransactionState::Expired,
    };
    LookupInvoiceResponse {
        transaction_type: Some(TransactionType::Incoming),
        state: Some(state),
        invoice: None,
        description: invoice.description.clone(),
        description_hash: None,
        preimage: None,
        payment_hash: hash_hex(&invoice.payment_hash),
        amount: invoice.received_msat.or(invoice.amount_msat).unwrap_or(0),
        fees_paid: 0,
        // Required by NIP-47; the epoch when the backend keeps no time.
        created_at: Timestamp::from_secs(invoice.created_at.unwrap_or(0)),
        expires_at: invoice.expires_at.map(Timestamp::from_secs),
        settled_at: invoice.settled_at.map(Timestamp::from_secs),
        metadata: None,
    }
}

/// Builds `lookup_invoice` answers for one hash.
struct Transaction<'a> {
    hash: PaymentHash,
    invoice: Option<&'a gate402_bolt11::Invoice>,
}

impl Transaction<'_> {
    fn response(
        &self,
        direction: TransactionType,
        state: TransactionState,
        amount_msat: Option<u64>,
    ) -> LookupInvoiceResponse {
        let (description, description_hash) = match self.invoice.map(|i| i.description()) {
            Some(gate402_bolt11::Description::Text(text)) => (Some(text), None),
            Some(gate402_bolt11::Description::Hash(hash)) => (None, Some(hex::encode(hash))),
            None => (None, None),
        };
        LookupInvoiceResponse {
            transaction_type: Some(direction),
            state: Some(state),
            invoice: self.invoice.map(|i| i.raw().to_string()),
            description,
            description_hash,
            preimage: None,
            payment_hash: hash_hex(&self.hash),
            amount: amount_msat
                .or_else(|| self.invoice.and_then(|i| i.amount_msat()))
                .unwrap_or(0),
            fees_paid: 0,
            // Required by NIP-47; unknown without the invoice, so the epoch.
            created_at: Timestamp::from_secs(self.invoice.map_or(0, |i| i.timestamp())),
            expires_at: self.invoice.map(|i| Timestamp::from_secs(i.expires_at())),
            settled_at: None,
            metadata: None,
        }
    }

    fn incoming(&self, status: &InvoiceStatus) -> LookupInvoiceResponse {
        let incoming = TransactionType::Incoming;
        match status {
            InvoiceStatus::Open => self.response(incoming, TransactionState::Pending, None),
            InvoiceStatus::Canceled => self.response(incoming, TransactionState::Expired, None),
            InvoiceStatus::Settled {
                amount_msat,
                preimage,
            } => LookupInvoiceResponse {
                preimage: preimage.map(hex::encode),
                ..self.response(incoming, TransactionState::Settled, Some(*amount_msat))
            },
        }
    }

    fn outgoing(&self, status: &PaymentStatus) -> LookupInvoiceResponse {
        let outgoing = TransactionType::Outgoing;
        match status {
            PaymentStatus::Unknown | PaymentStatus::Pending => {
                self.response(outgoing, TransactionState::Pending, None)
            }
            PaymentStatus::Failed(_) => self.response(outgoing, TransactionState::Failed, None),
            PaymentStatus::Succeeded(outcome) => LookupInvoiceResponse {
                preimage: Some(hex::encode(outcome.preimage)),
                fees_paid: outcome.fee_msat,
                ..self.response(
                    outgoing,
                    TransactionState::Settled,
                    Some(outcome.amount_msat),
                )
            },
        }
    }
}
