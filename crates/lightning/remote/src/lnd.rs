//! LND over its REST API.
//!
//! Configured the way Aperture users already configure LND: the REST
//! address, a macaroon (a file, or LND's macaroon directory, from which
//! `admin.macaroon` is used: paying needs it), and the node's `tls.cert`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use gate402_lightning::{
    check_payable, check_payable_amount, short_channel_id, ChannelInfo, CreatedInvoice,
    InvoiceRequest, InvoiceState, InvoiceStatus, InvoiceSummary, LightningBackend, LightningError,
    Liquidity, Network, NodeInfo, OnchainBalance, PayError, PaymentHash, PaymentOutcome,
    PaymentStatus,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{self, RemoteError};
use crate::http::{self, read_json_lines, unavailable};

/// How to reach LND.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LndConfig {
    /// REST address, `https://127.0.0.1:8080`.
    pub url: String,
    /// A macaroon file (`admin.macaroon`).
    #[serde(default)]
    pub macaroon_path: Option<PathBuf>,
    /// LND's macaroon directory (Aperture's `macdir`); `admin.macaroon` in it is used.
    #[serde(default)]
    pub macaroon_dir: Option<PathBuf>,
    /// LND's `tls.cert` (Aperture's `tlspath`), pinned: the node must
    /// present exactly this certificate. The system roots if absent.
    #[serde(default)]
    pub tls_cert_path: Option<PathBuf>,
    /// Whether invoices carry route hints to the node's private channels.
    #[serde(default)]
    pub route_hints: RouteHints,
}

/// `route_hints`: whether invoices carry hints to private channels
/// (LND's `private` flag, off by default there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteHints {
    /// When the node has no active public channel: without hints nobody
    /// could route to it. Asked again every minute.
    #[default]
    Auto,
    /// Always (the node's private channels are named in every invoice).
    Always,
    /// Never.
    Never,
}

/// How long the answer to "does the node have a public channel?" is kept.
const PUBLIC_CHANNELS_TTL: Duration = Duration::from_secs(60);

/// The LND backend.
#[derive(Debug, Clone)]
pub struct Lnd {
    client: reqwest::Client,
    base: String,
    macaroon: String,
    route_hints: RouteHints,
    /// When it was last asked, and whether it had an active public channel.
    public: Arc<Mutex<Option<(Instant, bool)>>>,
}

/// The header through which LND's REST gateway takes the macaroon.
pub const MACAROON_HEADER: &str = "Grpc-Metadata-macaroon";

impl Lnd {
    /// Reads the macaroon and certificate and prepares the client.
    pub fn new(config: &LndConfig) -> Result<Self, RemoteError> {
        let macaroon_path = match (&config.macaroon_path, &config.macaroon_dir) {
            (Some(path), _) => path.clone(),
            (None, Some(dir)) => dir.join("admin.macaroon"),
            (None, None) => return Err(RemoteError::NoCredential("macaroon_path or macaroon_dir")),
        };
        Ok(Self {
            client: http::client(config.tls_cert_path.as_deref(), http::Trust::Pinned)?,
            base: http::base_url(&config.url)?,
            macaroon: hex::encode(error::read(&macaroon_path)?),
            route_hints: config.route_hints,
            public: Arc::default(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header(MACAROON_HEADER, &self.macaroon)
    }

    /// Whether new invoices should carry hints to private channels.
    async fn private_invoices(&self) -> bool {
        match self.route_hints {
            RouteHints::Always => return true,
            RouteHints::Never => return false,
            RouteHints::Auto => {}
        }
        if let Some((at, public)) = *self.public.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < PUBLIC_CHANNELS_TTL {
                return !public;
            }
        }
        let answer = self
            .call(
                Route::ListChannels,
                self.request(
                    reqwest::Method::GET,
                    "/v1/channels?active_only=true&public_only=true",
                ),
            )
            .await;
        let public = match answer {
            Ok(answer) => answer["channels"].as_array().is_some_and(|c| !c.is_empty()),
            // Hints to nothing cost nothing; a missing hint costs the sale.
            Err(_) => false,
        };
        *self.public.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), public));
        !public
    }

    /// Sends a request to a server-streaming route; a non-2xx answer (LND
    /// sends "already paid" or "in transition" as a 409 before any result
    /// line) is an error.
    async fn stream(
        &self,
        route: Route,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, LightningError> {
        let response = request.send().await.map_err(unavailable)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(lnd_error(route, status, &body))
    }

    /// Sends a request and returns the JSON body of a 2xx answer.
    async fn call(
        &self,
        route: Route,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, LightningError> {
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        let body: Value = response.json().await.map_err(unavailable)?;
        if status.is_success() {
            return Ok(body);
        }
        Err(lnd_error(route, status.as_u16(), &body))
    }

    /// Sends a checked invoice through `/v2/router/send` (with `amt_msat`
    /// when `amount_msat` is given) and reads the outcome.
    async fn send(
        &self,
        bolt11: &str,
        invoice: &gate402_bolt11::Invoice,
        amount_msat: Option<u64>,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        let mut body = json!({
            "payment_request": bolt11,
            "fee_limit_msat": max_fee_msat.to_string(),
            "timeout_seconds": timeout.as_secs().clamp(1, i32::MAX as u64),
            "no_inflight_updates": true,
        });
        if let Some(amount_msat) = amount_msat {
            body["amt_msat"] = amount_msat.to_string().into();
        }
        let send = async {
            let response = self
                .stream(
                    Route::Pay,
                    self.request(reqwest::Method::POST, "/v2/router/send")
                        .json(&body),
                )
                .await?;
            read_json_lines(response, |line| {
                if let Some(error) = line.get("error") {
                    return Some(Err(lnd_error(Route::Pay, 500, error)));
                }
                match payment_status(line.get("result")?) {
                    PaymentStatus::Pending | PaymentStatus::Unknown => None,
                    done => Some(Ok(done)),
                }
            })
            .await?
            .unwrap_or(Ok(PaymentStatus::Pending))
        };
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(5), send).await;
        match outcome {
            Err(_) | Ok(Ok(PaymentStatus::Pending | PaymentStatus::Unknown)) => {
                Err(PayError::StillPending(timeout))
            }
            Ok(Ok(PaymentStatus::Succeeded(outcome))) => Ok(outcome),
            Ok(Ok(PaymentStatus::Failed(reason))) => Err(match reason.as_str() {
                "FAILURE_REASON_NO_ROUTE" => PayError::NoRoute {
                    max_fee_msat,
                    reason,
                },
                "FAILURE_REASON_INSUFFICIENT_BALANCE" => PayError::InsufficientBalance(reason),
                _ => PayError::Rejected(reason),
            }),
            Ok(Err(LightningError::Rejected(message))) if message.contains("already paid") => {
                match self.payment_status(&invoice.payment_hash()).await? {
                    PaymentStatus::Succeeded(outcome) => Err(PayError::AlreadyPaid(outcome)),
                    _ => Err(PayError::Rejected(message)),
                }
            }
            // Another payment of this invoice is in flight (a retry while
            // LND still pays): it is pending, never failed, never paid twice.
            Ok(Err(LightningError::Rejected(message))) if message.contains("in transition") => {
                match self.payment_status(&invoice.payment_hash()).await? {
                    PaymentStatus::Succeeded(outcome) => Err(PayError::AlreadyPaid(outcome)),
                    PaymentStatus::Failed(reason) => Err(PayError::Rejected(reason)),
                    PaymentStatus::Pending | PaymentStatus::Unknown => {
                        Err(PayError::StillPending(timeout))
                    }
                }
            }
            Ok(Err(e)) => Err(PayError::Backend(e)),
        }
    }
}

/// What a call does, and the macaroon permission LND checks for it.
#[derive(Debug, Clone, Copy)]
enum Route {
    Info,
    CreateInvoice,
    LookUpInvoice,
    WaitInvoice,
    Pay,
    TrackPayment,
    ListChannels,
    ChainBalance,
    ChannelBalance,
    ListInvoices,
}

impl Route {
    fn needs(self) -> (&'static str, &'static str) {
        match self {
            Route::Info => ("reading the node's info", "info:read"),
            Route::CreateInvoice => ("creating an invoice", "invoices:write"),
            Route::LookUpInvoice => ("looking up an invoice", "invoices:read"),
            Route::WaitInvoice => ("waiting on an invoice", "invoices:read"),
            Route::Pay => ("paying", "offchain:write"),
            Route::TrackPayment => ("looking up a payment", "offchain:read"),
            Route::ListChannels => ("listing channels", "offchain:read"),
            Route::ChainBalance => ("reading the on-chain balance", "onchain:read"),
            Route::ChannelBalance => ("reading the channel balance", "offchain:read"),
            Route::ListInvoices => ("listing invoices", "invoices:read"),
        }
    }
}

/// Maps a grpc-gateway error body (`{"code", "message"}`, wrapped in
/// `{"error": …}` on streaming routes) to our errors.
fn lnd_error(route: Route, status: u16, body: &Value) -> LightningError {
    let error = body.get("error").unwrap_or(body);
    let message = error["message"].as_str().unwrap_or("").to_owned();
    let code = error["code"].as_i64().unwrap_or(0);
    if message.contains("permission denied") {
        // LND says no more than this (code 2, HTTP 500).
        let (doing, permission) = route.needs();
        return LightningError::Unauthorized(format!(
            "LND denied {doing}: the macaroon lacks {permission}. admin.macaroon has every \
             permission gate402 uses; invoice.macaroon lacks info:read and cannot pay; \
             readonly.macaroon cannot create invoices or pay"
        ));
    }
    if status == 401
        || status == 403
        || code == 16
        || code == 7
        || message.contains("macaroon")
        || message.contains("verification failed")
    {
        LightningError::Unauthorized(message)
    } else if status == 404 || code == 5 {
        LightningError::NotFound(message)
    } else {
        LightningError::Rejected(format!("LND ({status}, code {code}): {message}"))
    }
}

#[derive(Deserialize)]
struct LndInvoice {
    #[serde(default)]
    state: String,
    #[serde(default)]
    amt_paid_msat: Option<StringOrNumber>,
    #[serde(default)]
    r_preimage: Option<String>,
}

/// LND's REST gateway sends 64-bit integers as strings; accept either.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    String(String),
    Number(u64),
}

impl StringOrNumber {
    fn value(&self) -> u64 {
        match self {
            StringOrNumber::String(s) => s.parse().unwrap_or(0),
            StringOrNumber::Number(n) => *n,
        }
    }
}

fn number(value: &Value) -> u64 {
    serde_json::from_value::<StringOrNumber>(value.clone())
        .map(|n| n.value())
        .unwrap_or(0)
}

fn invoice_status(invoice: &LndInvoice) -> InvoiceStatus {
    match invoice.state.as_str() {
        "SETTLED" => InvoiceStatus::Settled {
            amount_msat: invoice
                .amt_paid_msat
                .as_ref()
                .map_or(0, StringOrNumber::value),
            preimage: invoice
                .r_preimage
                .as_deref()
                .and_then(|p| STANDARD.decode(p).ok())
                .and_then(|p| p.try_into().ok()),
        },
        "CANCELED" => InvoiceStatus::Canceled,
        _ => InvoiceStatus::Open,
    }
}

/// Reads a `Payment` message of the router into a status.
fn payment_status(payment: &Value) -> PaymentStatus {
    match payment["status"].as_str().unwrap_or("") {
        "SUCCEEDED" => {
            let preimage = payment["payment_preimage"]
                .as_str()
                .and_then(|p| hex::decode(p).ok())
                .and_then(|p| <[u8; 32]>::try_from(p).ok());
            match preimage {
                Some(preimage) => PaymentStatus::Succeeded(PaymentOutcome {
                    preimage,
                    fee_msat: number(&payment["fee_msat"]),
                    amount_msat: number(&payment["value_msat"]),
                }),
                None => PaymentStatus::Failed("LND reported success without a preimage".into()),
            }
        }
        "FAILED" => PaymentStatus::Failed(
            payment["failure_reason"]
                .as_str()
                .unwrap_or("FAILURE_REASON_ERROR")
                .to_owned(),
        ),
        _ => PaymentStatus::Pending,
    }
}

fn path_hash(hash: &PaymentHash) -> String {
    URL_SAFE.encode(hash)
}

/// A channel of `/v1/channels` (`lnrpc.Channel`). What it can send is its
/// balance less the reserve its peer makes it keep
/// (`local_chan_reserve_sat`); what it can receive, the peer's balance less
/// the peer's reserve. LND keeps the commitment fee out of the funder's
/// `local_balance` already.
fn lnd_channel(channel: &Value) -> Result<ChannelInfo, LightningError> {
    let sat = |key: &str| number(&channel[key]);
    let msat = |balance: &str, reserve: &str| sat(balance).saturating_sub(sat(reserve)) * 1000;
    let peer_node_id = channel["remote_pubkey"]
        .as_str()
        .filter(|k| k.len() == 66 && hex::decode(k).is_ok())
        .ok_or_else(|| LightningError::Protocol("LND channel without remote_pubkey".into()))?;
    let scid = number(&channel["chan_id"]);
    Ok(ChannelInfo {
        peer_node_id: peer_node_id.to_ascii_lowercase(),
        channel_id: channel["channel_point"].as_str().and_then(bolt2_channel_id),
        short_channel_id: (scid != 0).then(|| short_channel_id(scid)),
        capacity_sat: sat("capacity"),
        outbound_msat: msat("local_balance", "local_chan_reserve_sat"),
        inbound_msat: msat("remote_balance", "remote_chan_reserve_sat"),
        usable: channel["active"].as_bool().unwrap_or(false),
        public: !channel["private"].as_bool().unwrap_or(false),
    })
}

/// The BOLT 2 channel id of a funding outpoint `txid:index` (the txid as
/// displayed, byte-reversed): the txid's bytes XOR the index in the last two.
fn bolt2_channel_id(channel_point: &str) -> Option<String> {
    let (txid, index) = channel_point.split_once(':')?;
    let mut id: [u8; 32] = hex::decode(txid).ok()?.try_into().ok()?;
    id.reverse();
    let index: u16 = index.parse().ok()?;
    id[30] ^= (index >> 8) as u8;
    id[31] ^= (index & 0xff) as u8;
    Some(hex::encode(id))
}

/// An invoice of `/v1/invoices` (`lnrpc.Invoice`); `ACCEPTED` (a hold
/// invoice whose payment waits) is open.
fn lnd_invoice_summary(invoice: &Value) -> Option<InvoiceSummary> {
    let payment_hash = invoice["r_hash"]
        .as_str()
        .and_then(|h| STANDARD.decode(h).ok())
        .and_then(|h| <[u8; 32]>::try_from(h).ok())?;
    let state = match invoice["state"].as_str()? {
        "SETTLED" => InvoiceState::Settled,
        "CANCELED" => InvoiceState::Canceled,
        _ => InvoiceState::Open,
    };
    let nonzero = |key: &str| Some(number(&invoice[key])).filter(|&n| n > 0);
    let created_at = nonzero("creation_date");
    Some(InvoiceSummary {
        payment_hash,
        amount_msat: nonzero("value_msat"),
        received_msat: (state == InvoiceState::Settled).then(|| number(&invoice["amt_paid_msat"])),
        state,
        created_at,
        settled_at: nonzero("settle_date"),
        expires_at: created_at.map(|at| at.saturating_add(number(&invoice["expiry"]))),
        description: invoice["memo"]
            .as_str()
            .filter(|m| !m.is_empty())
            .map(str::to_owned),
    })
}

#[async_trait]
impl LightningBackend for Lnd {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        // value_msat 0 is LND's invoice without an amount.
        let body = json!({
            "memo": request.memo,
            "value_msat": request.amount_msat.to_string(),
            "expiry": request.expiry_secs.to_string(),
            "private": self.private_invoices().await,
        });
        let answer = self
            .call(
                Route::CreateInvoice,
                self.request(reqwest::Method::POST, "/v1/invoices")
                    .json(&body),
            )
            .await?;
        let bolt11 = answer["payment_request"]
            .as_str()
            .ok_or_else(|| LightningError::Protocol("no payment_request".into()))?;
        let invoice = gate402_bolt11::Invoice::parse(bolt11)
            .map_err(|e| LightningError::Protocol(e.to_string()))?;
        Ok(CreatedInvoice {
            bolt11: bolt11.to_owned(),
            payment_hash: invoice.payment_hash(),
            expires_at: invoice.expires_at(),
        })
    }

    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        let answer = self
            .call(
                Route::LookUpInvoice,
                self.request(
                    reqwest::Method::GET,
                    &format!("/v1/invoice/{}", hex::encode(hash)),
                ),
            )
            .await?;
        let invoice: LndInvoice =
            serde_json::from_value(answer).map_err(|e| LightningError::Protocol(e.to_string()))?;
        Ok(invoice_status(&invoice))
    }

    /// Looks the invoice up (LND lets anyone subscribe to an invoice it
    /// does not know, and then says nothing until the timeout), then follows
    /// `/v2/invoices/subscribe/{hash}`; if the stream ends early, falls back
    /// to looking the invoice up until the deadline.
    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let known = self.invoice_status(hash).await?;
        if known != InvoiceStatus::Open {
            return Ok(known);
        }
        let subscribe = async {
            let response = self
                .stream(
                    Route::WaitInvoice,
                    self.request(
                        reqwest::Method::GET,
                        &format!("/v2/invoices/subscribe/{}", path_hash(hash)),
                    ),
                )
                .await?;
            read_json_lines(response, |line| {
                let invoice: LndInvoice =
                    serde_json::from_value(line.get("result")?.clone()).ok()?;
                let status = invoice_status(&invoice);
                (status != InvoiceStatus::Open).then_some(status)
            })
            .await
        };
        match tokio::time::timeout_at(deadline, subscribe).await {
            Err(_) => return Err(LightningError::Timeout(timeout)),
            Ok(Ok(Some(status))) => return Ok(status),
            Ok(Err(e @ (LightningError::NotFound(_) | LightningError::Unauthorized(_)))) => {
                return Err(e)
            }
            Ok(_) => {}
        }
        loop {
            let status = self.invoice_status(hash).await?;
            if status != InvoiceStatus::Open {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LightningError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        let network = self.node_info().await?.network;
        let invoice = check_payable(bolt11, network, SystemTime::now())?;
        self.send(bolt11, &invoice, None, max_fee_msat, timeout)
            .await
    }

    /// As [`LightningBackend::pay`], with `amt_msat` set: LND requires it for an
    /// invoice without an amount (and refuses it for one with an amount,
    /// which is refused here before asking).
    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        let network = self.node_info().await?.network;
        let invoice = check_payable_amount(bolt11, network, amount_msat, SystemTime::now())?;
        self.send(bolt11, &invoice, Some(amount_msat), max_fee_msat, timeout)
            .await
    }

    /// Asks the router to track the payment; no final answer within a
    /// second means it is still in flight.
    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        let track = async {
            let response = self
                .stream(
                    Route::TrackPayment,
                    self.request(
                        reqwest::Method::GET,
                        &format!(
                            "/v2/router/track/{}?no_inflight_updates=true",
                            path_hash(hash)
                        ),
                    ),
                )
                .await?;
            read_json_lines(response, |line| {
                if let Some(error) = line.get("error") {
                    return Some(Err(lnd_error(Route::TrackPayment, 500, error)));
                }
                Some(Ok(payment_status(line.get("result")?)))
            })
            .await?
            .unwrap_or(Ok(PaymentStatus::Pending))
        };
        match tokio::time::timeout(Duration::from_secs(1), track).await {
            Err(_) => Ok(PaymentStatus::Pending),
            Ok(Err(LightningError::NotFound(_))) => Ok(PaymentStatus::Unknown),
            Ok(result) => result,
        }
    }

    /// From `GET /v1/balance/blockchain` (total, confirmed, unconfirmed;
    /// spendable is confirmed less locked and less the anchor-channel
    /// reserve), `GET /v1/balance/channels` (the Lightning balance: its
    /// `local_balance`) and `GET /v1/channels` (open channels, active or
    /// not; channels still being opened are not listed). Needs the
    /// `onchain:read` and `offchain:read` permissions.
    async fn liquidity(&self) -> Result<Liquidity, LightningError> {
        let get = |path: &str| self.request(reqwest::Method::GET, path);
        let (chain, balance, channels) = tokio::try_join!(
            self.call(Route::ChainBalance, get("/v1/balance/blockchain")),
            self.call(Route::ChannelBalance, get("/v1/balance/channels")),
            self.call(Route::ListChannels, get("/v1/channels")),
        )?;
        let confirmed = number(&chain["confirmed_balance"]);
        let held = number(&chain["locked_balance"])
            .saturating_add(number(&chain["reserved_balance_anchor_chan"]));
        let onchain = OnchainBalance {
            total_sat: number(&chain["total_balance"]),
            confirmed_sat: Some(confirmed),
            unconfirmed_sat: Some(number(&chain["unconfirmed_balance"])),
            spendable_sat: Some(confirmed.saturating_sub(held)),
        };
        let lightning_balance_msat = match &balance["local_balance"]["msat"] {
            Value::Null => number(&balance["balance"]).saturating_mul(1000),
            msat => number(msat),
        };
        let channels = channels["channels"]
            .as_array()
            .map(|list| list.iter().map(lnd_channel).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default();
        Ok(Liquidity::from_channels(
            Some(onchain),
            Some(lightning_balance_msat),
            channels,
        ))
    }

    /// `GET /v1/invoices?reversed=true&num_max_invoices=N`: the newest
    /// invoices, whatever their state. Needs `invoices:read`.
    async fn recent_invoices(&self, limit: usize) -> Result<Vec<InvoiceSummary>, LightningError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let answer = self
            .call(
                Route::ListInvoices,
                self.request(
                    reqwest::Method::GET,
                    &format!("/v1/invoices?reversed=true&num_max_invoices={limit}"),
                ),
            )
            .await?;
        let list = answer["invoices"]
            .as_array()
            .ok_or_else(|| LightningError::Protocol("LND invoices: no invoices list".into()))?;
        // LND answers the page oldest first.
        let mut indexed = list
            .iter()
            .map(|invoice| {
                lnd_invoice_summary(invoice)
                    .map(|summary| (number(&invoice["add_index"]), summary))
                    .ok_or_else(|| LightningError::Protocol(format!("LND invoice: {invoice}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        indexed.sort_by_key(|(index, _)| std::cmp::Reverse(*index));
        Ok(indexed
            .into_iter()
            .take(limit)
            .map(|(_, summary)| summary)
            .collect())
    }

    async fn node_info(&self) -> Result<NodeInfo, LightningError> {
        let info = self
            .call(
                Route::Info,
                self.request(reqwest::Method::GET, "/v1/getinfo"),
            )
            .await?;
        let pubkey = info["identity_pubkey"]
            .as_str()
            .and_then(|k| hex::decode(k).ok())
            .and_then(|k| <[u8; 33]>::try_from(k).ok())
            .ok_or_else(|| LightningError::Protocol("identity_pubkey".into()))?;
        let network = info["chains"][0]["network"]
            .as_str()
            .and_then(|n| n.parse::<Network>().ok())
            .ok_or_else(|| LightningError::Protocol("chains[0].network".into()))?;
        Ok(NodeInfo {
            network,
            pubkey,
            backend: "lnd",
        })
    }
}
