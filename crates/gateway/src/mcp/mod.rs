//! Paid tools over the Model Context Protocol, at `/mcp` (streamable
//! HTTP, with `rmcp`).
//!
//! Two ways to pay, both for one call of one tool:
//!
//! - The MCP payment transport (draft-payment-transport-mcp): an unpaid
//!   call fails with JSON-RPC error `-32042` carrying an MPP challenge (its
//!   `request` as a JSON object); the client pays the invoice and calls
//!   again with the credential in `params._meta["org.paymentauth/credential"]`;
//!   the result carries `_meta["org.paymentauth/receipt"]`. A credential
//!   that does not verify gets `-32043` with a fresh challenge, a malformed
//!   one `-32602`.
//! - For clients that do not speak it: the free tool `create_payment`
//!   returns `{paymentId, invoice, amountSats}` for a named tool; once the
//!   invoice is paid, the client passes `paymentId` as an argument of that
//!   tool.
//!
//! Either is bound to its tool and spent once, through the same paywall
//! (store, reservations, receipts, metrics) as HTTP requests; as there,
//! a call whose upstream fails leaves the payment unspent.
//!
//! Where calls go is a [`ToolUpstream`]: the configured `[[tools]]` call
//! priced HTTP services ([`HttpTools`]); `gate402 mcp-proxy` forwards to
//! another MCP server ([`McpUpstream`]).
//!
//! - [`pricing`]: what each tool costs (unpriced tools are refused);
//! - [`upstreams`]: where calls go;
//! - [`router`](mod@router): the `/mcp` endpoint, with its host, origin, size and
//!   session limits.

pub mod pricing;
pub mod router;
pub mod upstreams;

pub use pricing::Pricing;
pub use router::{router, McpAccess};
pub use upstreams::{HttpTools, McpUpstream};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use gate402_lightning::{InvoiceStatus, LightningError};
use gate402_mpp::mcp::{
    self as wire, CREDENTIAL_META_KEY, PAYMENT_REQUIRED_CODE, PAYMENT_VERIFICATION_FAILED_CODE,
    RECEIPT_META_KEY,
};
use gate402_mpp::problem::ProblemType;
use gate402_paywall::{
    ClaimError, ClientAddr, ClientKey, Doors, Paywall, PricedService, Refusal, Verified,
};
use gate402_store::{AfterFailure, InvoiceRecord};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode, ErrorData,
    Implementation, JsonObject, ListToolsResult, MetaObject, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::{json, Value};

use crate::proxy::Proxy;
use gate402_paywall::payment_id::PaymentIdError;
use gate402_paywall::unix_now;
use pricing::ToolPrice;

pub use crate::config::CREATE_PAYMENT;
/// Where the MCP server and its priced tools are described.
pub const WELL_KNOWN_PATH: &str = "/.well-known/mcp";

/// The argument that carries a `paymentId`.
pub const PAYMENT_ID_ARG: &str = "paymentId";
/// How long a `paymentId` can be used after it was created.
pub const PAYMENT_ID_LIFETIME_SECS: u64 = 86_400;
/// The `_meta` key of a tool's price in `tools/list`.
pub const PRICE_META_KEY: &str = "org.paymentauth/price";

/// Where tool calls go.
#[async_trait]
pub trait ToolUpstream: Send + Sync + 'static {
    /// The tools, as the upstream describes them (prices are added on top).
    async fn tools(&self) -> Result<Vec<Tool>, ErrorData>;

    /// Calls a tool. `Err` means the call failed: the payment stays
    /// unspent (see [`ToolFailure`]). A tool that ran and reported an
    /// error is an `Ok` result with `is_error`, and is paid for. `priced`
    /// is the paid service the call was charged through, from the
    /// [`Pricing`] the upstream made; an upstream whose tool has changed
    /// since (a reload) answers [`ToolFailure::NotReached`].
    /// `caller` says who made the call, for an upstream that tells its
    /// own upstream.
    async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        priced: Option<&Arc<PricedService>>,
        caller: &Caller,
    ) -> Result<CallToolResult, ToolFailure>;
}

/// Who made a tool call: what the upstream of a tool that makes an HTTP
/// request is told of its client (`X-Forwarded-For` and the rest), by the
/// rules of the same request over HTTP: the client's address, and the
/// forwarding header fields it came with, which the proxy passes on only
/// from a trusted proxy.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    client: Option<ClientAddr>,
    forwarding: HeaderMap,
    tls: Option<bool>,
}

impl Caller {
    /// The caller of the MCP request with `parts`; no one known without.
    fn of(paywall: &Paywall, parts: Option<&axum::http::request::Parts>) -> Self {
        let Some(parts) = parts else {
            return Self::default();
        };
        let mut forwarding = HeaderMap::new();
        for (name, value) in &parts.headers {
            if gate402_paywall::is_forwarding_header(name) {
                forwarding.append(name.clone(), value.clone());
            }
        }
        Self {
            client: paywall.client_from(&parts.extensions, &parts.headers),
            forwarding,
            tls: parts
                .extensions
                .get::<crate::server::listen::ServedOverTls>()
                .map(|t| t.0),
        }
    }

    /// The client's address, if known.
    pub fn client(&self) -> Option<ClientAddr> {
        self.client
    }

    /// Puts the caller into a request for the proxy, which makes the
    /// upstream's forwarding header fields from it.
    pub(crate) fn add_to<B>(&self, request: &mut axum::http::Request<B>) {
        for (name, value) in &self.forwarding {
            request.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(client) = self.client {
            request.extensions_mut().insert(client);
        }
        if let Some(tls) = self.tls {
            request
                .extensions_mut()
                .insert(crate::server::listen::ServedOverTls(tls));
        }
    }
}

/// Why a tool call failed: whether the upstream had the call decides what
/// its payment comes to.
#[derive(Debug)]
pub enum ToolFailure {
    /// The call never reached the upstream (no such tool, arguments that
    /// cannot be sent, an upstream that could not be connected to): the
    /// payment is given back.
    NotReached(ErrorData),
    /// The upstream had the call and failed: the payment is given back,
    /// but the [`gate402_paywall::FAILURES_PER_PAYMENT`]-th such failure
    /// spends it.
    Failed(ErrorData),
}

impl From<ToolFailure> for ErrorData {
    fn from(failure: ToolFailure) -> Self {
        match failure {
            ToolFailure::NotReached(e) | ToolFailure::Failed(e) => e,
        }
    }
}

/// The MCP server: tools from a [`ToolUpstream`], charged through the
/// paywall.
#[derive(Clone)]
pub struct PaidTools {
    paywall: Paywall,
    upstream: Arc<dyn ToolUpstream>,
    /// Swapped whole when the services the tools call change.
    pricing: Arc<ArcSwap<Pricing>>,
    /// Tool name → description and (of a proxied MCP server's tool) its
    /// compiled input schema, as last listed: a call needs the tool's
    /// description (and whether it exists), and asking an MCP upstream
    /// for its tool list on every call would double the round trips.
    descriptions: Arc<RwLock<HashMap<String, Listed>>>,
    /// The `[[tools]]` behind `upstream`, when it is those.
    http: Option<Arc<HttpTools>>,
}

/// What a call needs to know of a listed tool.
struct Listed {
    description: String,
    /// Its input schema, checked before a call is charged: a proxied MCP
    /// server's (the `[[tools]]` check their own); `None` when it does not
    /// compile here (the upstream checks it alone then).
    schema: Option<Arc<jsonschema::Validator>>,
}

fn error(code: i32, message: impl Into<String>, data: Option<Value>) -> ErrorData {
    ErrorData::new(ErrorCode(code), message.into(), data)
}

/// JSON-RPC's server-error range: too many unpaid invoices for a client.
const RATE_LIMITED_CODE: i32 = -32029;

fn rate_limited(limited: &gate402_paywall::Limited) -> ErrorData {
    error(
        RATE_LIMITED_CODE,
        limited.detail.clone(),
        Some(
            json!({"httpStatus": 429, "retryAfter": limited.retry_after.as_secs_f64().ceil() as u64}),
        ),
    )
}

fn text_result(value: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
    result.structured_content = Some(value);
    result
}

impl PaidTools {
    /// A server over `upstream`, charging by `pricing`.
    pub fn new(paywall: Paywall, upstream: Arc<dyn ToolUpstream>, pricing: Pricing) -> Self {
        Self {
            paywall,
            upstream,
            pricing: Arc::new(ArcSwap::from_pointee(pricing)),
            descriptions: Default::default(),
            http: None,
        }
    }

    /// A server selling `[[tools]]` ([`HttpTools`]), charging by `pricing`.
    pub fn over_http(paywall: Paywall, tools: HttpTools, pricing: Pricing) -> Self {
        let tools = Arc::new(tools);
        Self {
            http: Some(tools.clone()),
            ..Self::new(paywall, tools, pricing)
        }
    }

    /// Sells `tools` over `services` as they now run, from the next call
    /// on: their names, descriptions, schemas, the path and method each
    /// calls, and their prices. Does nothing on a server that proxies
    /// another MCP server (its tools are that server's).
    pub fn set_tools(
        &self,
        tools: &[crate::config::ToolConfig],
        services: &[crate::config::ServiceConfig],
    ) {
        let Some(http) = &self.http else {
            return;
        };
        self.set_pricing(http.set(tools, services));
        // A renamed or re-described tool is looked up afresh.
        self.descriptions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Charges by `pricing` from the next call on (calls in flight keep
    /// the price they were checked against).
    fn set_pricing(&self, pricing: Pricing) {
        self.pricing.store(Arc::new(pricing));
    }

    /// The upstream's tools, remembering their descriptions.
    async fn upstream_tools(&self) -> Result<Vec<Tool>, ErrorData> {
        let tools = self.upstream.tools().await?;
        let proxied = self.http.is_none();
        *self.descriptions.write().unwrap_or_else(|e| e.into_inner()) = tools
            .iter()
            .map(|t| {
                let description = t.description.as_deref().unwrap_or_default().to_owned();
                let schema = proxied
                    .then(|| {
                        upstreams::input_validator(&Value::Object((*t.input_schema).clone()))
                            .map_err(|e| tracing::debug!(tool = %t.name, error = %e, "the upstream tool's input schema does not compile here: its calls are not checked"))
                            .ok()
                    })
                    .flatten()
                    .map(Arc::new);
                (t.name.to_string(), Listed { description, schema })
            })
            .collect();
        Ok(tools)
    }

    /// The tools with their prices, for `tools/list` and discovery.
    pub async fn priced_tools(&self) -> Result<Vec<(Tool, Option<u64>)>, ErrorData> {
        let mut tools = Vec::new();
        for mut tool in self.upstream_tools().await? {
            // The gateway's own answers that name: the upstream's could
            // never be called.
            if tool.name == CREATE_PAYMENT {
                continue;
            }
            let description = tool.description.clone().unwrap_or_default();
            let (price, dynamic) = match self.pricing.load().price(&tool.name, &description) {
                ToolPrice::Free => (None, false),
                ToolPrice::Paid(service) => (Some(service.price_sats), service.is_dynamic()),
                // Not served, so not listed.
                ToolPrice::Unpriced | ToolPrice::Unavailable => continue,
            };
            if let Some(price) = price {
                // Its service's rules or pricer price each call by its
                // arguments: the price shown is the one when none applies.
                let per_call = if dynamic {
                    format!("{price} sat per call unless its arguments are priced otherwise")
                } else {
                    format!("{price} sat per call")
                };
                tool.description = Some(
                    format!("{description} ({per_call}; pay with MPP or {CREATE_PAYMENT})").into(),
                );
                let mut meta = tool.meta.take().unwrap_or_default();
                meta.insert(
                    PRICE_META_KEY.to_owned(),
                    json!({"amount": price.to_string(), "currency": "sat", "protocols": ["MPP"]}),
                );
                tool.meta = Some(meta);
            }
            tools.push((tool, price));
        }
        Ok(tools)
    }

    /// A -32042 (or, with a refusal, -32043) error with a fresh challenge.
    /// The error of an unpaid or refused call: a fresh challenge to pay,
    /// and what to do; a call paid by `paymentId` (`by_id`) is told to pay
    /// or replace that payment, not to pay the challenge as well.
    async fn payment_error(
        &self,
        service: &PricedService,
        refusal: Option<Refusal>,
        client: Option<ClientKey>,
        by_id: bool,
    ) -> ErrorData {
        if let Err(limited) = self.paywall.admit_unpaid(client) {
            return rate_limited(&limited);
        }
        let doors = Doors {
            l402: false,
            mpp: true,
            x402: false,
        };
        let issued = match self.paywall.issue(service, doors).await {
            Ok(issued) => issued,
            Err(_) => return node_unavailable(),
        };
        let Some(challenge) = issued.payment else {
            return ErrorData::internal_error("no MPP challenge for this tool", None);
        };
        let (status, problem, detail) = match &refusal {
            None => (
                402,
                ProblemType::PaymentRequired,
                format!(
                    "{} costs {} sat per call",
                    service.description, service.price_sats
                ),
            ),
            Some(r) => (r.status.as_u16(), r.problem, r.detail.clone()),
        };
        let details = gate402_mpp::PaymentErrorDetails {
            problem_type: problem.uri(),
            title: problem.title().to_owned(),
            status,
            detail: detail.clone(),
            challenge_id: None,
            hint: Some(if by_id {
                format!(
                    "this call was paid by {PAYMENT_ID_ARG}: pay that payment's invoice if it is not paid, or get another from {CREATE_PAYMENT}; pay challenges[0] only to pay with a credential instead, and then leave {PAYMENT_ID_ARG} out"
                )
            } else {
                format!(
                    "pay the invoice in challenges[0].request.methodDetails.invoice, then call again with _meta[\"{CREDENTIAL_META_KEY}\"] = {{challenge, payload: {{preimage}}}}"
                )
            }),
        };
        let mut answer = wire::payment_required_error_with_problem(&challenge, details);
        if refusal.is_none() {
            answer.code = PAYMENT_REQUIRED_CODE;
        } else if answer.code == PAYMENT_REQUIRED_CODE {
            answer.code = PAYMENT_VERIFICATION_FAILED_CODE;
        }
        let mut data = serde_json::to_value(&answer.data).unwrap_or_default();
        if let (Some(r), Some(object)) = (&refusal, data.as_object_mut()) {
            // The draft's place for the reason, next to the SDKs' `problem`.
            object.insert(
                "failure".into(),
                json!({"reason": r.problem.code(), "detail": detail}),
            );
        }
        error(answer.code, answer.message, Some(data))
    }

    async fn create_payment(
        &self,
        arguments: Option<JsonObject>,
    ) -> Result<CallToolResult, ErrorData> {
        let tool = arguments
            .as_ref()
            .and_then(|a| a.get("tool"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ErrorData::invalid_params(
                    "create_payment needs {\"tool\": \"<name of the tool to pay for>\"}",
                    None,
                )
            })?;
        let description = self.description_of(tool).await?;
        let service = match self.pricing.load().price(tool, &description) {
            ToolPrice::Paid(service) => service,
            ToolPrice::Free => {
                return Err(ErrorData::invalid_params(
                    format!("tool {tool:?} is free; call it directly"),
                    None,
                ))
            }
            ToolPrice::Unpriced => return Err(unpriced(tool)),
            ToolPrice::Unavailable => return Err(unavailable(tool)),
        };
        // Priced for the call it will pay for, when told its arguments.
        let call = arguments
            .as_ref()
            .and_then(|a| a.get("arguments"))
            .and_then(Value::as_object);
        let service = self.priced(&service, tool, call, false).await?;
        let doors = Doors {
            l402: false,
            mpp: false,
            x402: false,
        };
        let issued = self
            .paywall
            .issue(&service, doors)
            .await
            .map_err(|_| node_unavailable())?;
        // A paymentId is looked up later: which tool it pays for, and since when.
        let record = InvoiceRecord {
            payment_hash: issued.payment_hash,
            bolt11: issued.bolt11.clone(),
            amount_msat: service.price_sats * 1000,
            service: service.name.clone(),
            created_at: unix_now(),
            expires_at: issued.expires_at,
        };
        if let Err(e) = self.paywall.store().put_invoice(&record).await {
            tracing::error!(error = %e, "store: cannot record a paymentId");
            return Err(store_unavailable());
        }
        let mut answer = json!({
            "paymentId": self.paywall.payment_ids().issue(&issued.payment_hash),
            "invoice": issued.bolt11,
            "amountSats": service.price_sats,
            "expiresAt": issued.expires_at,
            "tool": tool,
            "howToPay": format!("pay the invoice, then call {tool} with the argument {PAYMENT_ID_ARG}; one paymentId pays for one call"),
        });
        if let Some(note) = self.paywall.test_money() {
            answer["testMoney"] = note.into();
        }
        Ok(text_result(answer))
    }

    /// The description of an upstream tool; an unknown tool is an error.
    /// Asks the upstream only for a tool not seen listed (a new one).
    async fn description_of(&self, tool: &str) -> Result<String, ErrorData> {
        let known = |descriptions: &RwLock<HashMap<String, Listed>>| {
            descriptions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(tool)
                .map(|listed| listed.description.clone())
        };
        if let Some(description) = known(&self.descriptions) {
            return Ok(description);
        }
        self.upstream_tools().await?;
        known(&self.descriptions).ok_or_else(|| {
            // A tool of a removed service is not made, but was sold.
            match self.pricing.load().price(tool, "") {
                ToolPrice::Unavailable => unavailable(tool),
                _ => ErrorData::invalid_params(format!("no tool named {tool:?}"), None),
            }
        })
    }

    /// Checks a `paymentId` for `service`: its invoice is ours, for this
    /// tool, recent, and settled. The claim that follows is keyed by the
    /// payment hash, so every spelling of one id is one payment.
    async fn check_payment_id(
        &self,
        service: &PricedService,
        payment_id: &Value,
    ) -> Result<Verified, Refusal> {
        let refuse =
            |problem, detail: String| Refusal::new(StatusCode::PAYMENT_REQUIRED, problem, detail);
        // Answered as the detail says (see `refused`): nothing charged.
        let unavailable = |detail: &str| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemType::PaymentRequired,
                detail,
            )
        };
        let text = payment_id.as_str().unwrap_or_default();
        let hash = match self.paywall.payment_ids().verify(text) {
            Ok(hash) => hash,
            Err(PaymentIdError::Malformed) => {
                return Err(refuse(
                    ProblemType::MalformedCredential,
                    format!("{PAYMENT_ID_ARG} must be the 96 hex digits {CREATE_PAYMENT} returned"),
                ))
            }
            Err(PaymentIdError::Forged) => {
                return Err(refuse(
                    ProblemType::InvalidChallenge,
                    format!("unknown {PAYMENT_ID_ARG}; get one from {CREATE_PAYMENT}"),
                ))
            }
        };
        let record = match self.paywall.store().invoice(&hash).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(refuse(
                    ProblemType::InvalidChallenge,
                    format!("unknown {PAYMENT_ID_ARG}; get one from {CREATE_PAYMENT}"),
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "store: cannot look up a paymentId");
                return Err(unavailable(STORE_UNAVAILABLE));
            }
        };
        if record.service != service.name {
            return Err(refuse(
                ProblemType::InvalidChallenge,
                format!(
                    "this {PAYMENT_ID_ARG} pays for {}, not for {}",
                    record.service.trim_start_matches("mcp/"),
                    service.name.trim_start_matches("mcp/")
                ),
            ));
        }
        if unix_now() > record.created_at + PAYMENT_ID_LIFETIME_SECS {
            return Err(refuse(
                ProblemType::PaymentExpired,
                format!("this {PAYMENT_ID_ARG} is older than a day"),
            ));
        }
        match self.paywall.backend().invoice_status(&hash).await {
            Ok(InvoiceStatus::Settled { amount_msat, .. })
                if amount_msat >= service.price_sats * 1000 => {}
            Ok(InvoiceStatus::Settled { .. }) => {
                return Err(refuse(
                    ProblemType::PaymentInsufficient,
                    "the invoice was paid for less than the price".into(),
                ))
            }
            Ok(_) => {
                return Err(refuse(
                    ProblemType::PaymentActionRequired,
                    format!(
                    "the invoice of this {PAYMENT_ID_ARG} is not paid yet: pay it, then call again"
                ),
                ))
            }
            // Issued by another replica's node: replicas selling tools
            // must share one.
            Err(LightningError::NotFound(_)) => {
                tracing::warn!(
                    "a paymentId names an invoice this node did not issue; replicas that sell tools must share one Lightning node"
                );
                return Err(unavailable(
                    "this replica's Lightning node did not issue this paymentId's invoice, so it cannot tell whether it was paid; retry shortly (nothing was charged)",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "Lightning backend: cannot look up a paymentId's invoice");
                return Err(unavailable(NODE_UNAVAILABLE));
            }
        }
        Ok(Verified {
            payment_hash: hash,
            challenge_id: None,
            expires_at: record.created_at + PAYMENT_ID_LIFETIME_SECS + 3600,
            single_use: true,
            balance: None,
            proven: true,
            paid_sats: None,
            pass_secs: None,
        })
    }

    /// Serves a paid call: the payment is checked and claimed, the
    /// upstream called, the payment spent (or released on failure) and the
    /// receipt attached.
    async fn paid_call(
        &self,
        service: &Arc<PricedService>,
        name: &str,
        mut arguments: Option<JsonObject>,
        meta: &MetaObject,
        caller: &Caller,
    ) -> Result<CallToolResult, ErrorData> {
        let client = caller.client().map(|c| c.key());
        let payment_id = arguments.as_mut().and_then(|a| a.remove(PAYMENT_ID_ARG));
        let paid = payment_id.is_some() || meta.contains_key(CREDENTIAL_META_KEY);
        // Refused before either is read, so neither is spent: which one
        // the caller meant to pay with is theirs to say.
        if payment_id.is_some() && meta.contains_key(CREDENTIAL_META_KEY) {
            return Err(ErrorData::invalid_params(
                "both a paymentId and a credential",
                Some(json!({"detail": format!(
                    "pay a call with {PAYMENT_ID_ARG} or with _meta[\"{CREDENTIAL_META_KEY}\"], not both; neither was used"
                )})),
            ));
        }
        // Charged as the request it makes is charged over HTTP; the tool as
        // configured is what it calls.
        let called = service;
        let given = arguments.clone().unwrap_or_default();
        let service = &self.priced(called, name, Some(&given), paid).await?;
        let (verified, scheme) = if let Some(payment_id) = payment_id {
            let checked = self
                .check_payment_id(service, &payment_id)
                .await
                .and_then(|verified| self.paywall.unrevoked(verified));
            match checked {
                Ok(verified) => (verified, "paymentId"),
                Err(refusal) => return Err(self.refused(service, refusal, client, true).await),
            }
        } else if meta.contains_key(CREDENTIAL_META_KEY) {
            let Some(credential) = wire::extract_credential(&Value::Object(meta.0.clone())) else {
                return Err(ErrorData::invalid_params(
                    "malformed credential",
                    Some(
                        json!({"detail": format!("_meta[\"{CREDENTIAL_META_KEY}\"] must be {{challenge: {{id, realm, method, intent, request, expires}}, payload: {{preimage}}}}")}),
                    ),
                ));
            };
            match self.paywall.verify_payment(service, &credential) {
                Ok(verified) => (verified, "Payment"),
                Err(refusal) => return Err(self.refused(service, refusal, client, false).await),
            }
        } else {
            return Err(self.payment_error(service, None, client, false).await);
        };
        let claim = match self.paywall.claim(&verified).await {
            Ok(claim) => claim,
            Err(ClaimError::Store(e)) => {
                tracing::error!(error = %e, "store: cannot claim a payment");
                return Err(store_unavailable());
            }
            // Not a payment error: the credential is good and unspent.
            Err(ClaimError::InFlight) => return Err(in_flight()),
            Err(e) => {
                let detail = match e {
                    // Not "pay the new challenge": this caller pays by id.
                    ClaimError::Consumed if scheme == "paymentId" => format!(
                        "this {PAYMENT_ID_ARG} has already been used; get another from {CREATE_PAYMENT}"
                    ),
                    e => e.to_string(),
                };
                let refusal = Refusal::new(
                    StatusCode::PAYMENT_REQUIRED,
                    ProblemType::InvalidChallenge,
                    detail,
                );
                return Err(self
                    .refused(service, refusal, client, scheme == "paymentId")
                    .await);
            }
        };
        let mut result = match self
            .upstream
            .call(name, arguments, Some(called), caller)
            .await
        {
            Ok(result) => {
                claim.commit().await;
                result
            }
            Err(ToolFailure::NotReached(e)) => {
                claim.release().await;
                return Err(e);
            }
            Err(ToolFailure::Failed(mut e)) => {
                let outcome = claim.fail().await;
                if outcome == AfterFailure::Spent {
                    self.paywall
                        .record_unserved(service, scheme, &verified.payment_hash);
                }
                if outcome != AfterFailure::Released {
                    e.message =
                        "the upstream failed on this payment too many times; it is spent".into();
                }
                return Err(e);
            }
        };
        let receipt = self.paywall.record_paid(service, scheme, &verified);
        let mut receipt = serde_json::to_value(&receipt).unwrap_or_default();
        if let Some(object) = receipt.as_object_mut() {
            let id = verified
                .challenge_id
                .clone()
                .unwrap_or_else(|| hex::encode(verified.payment_hash));
            object.insert("challengeId".into(), id.into());
        }
        let mut meta = result.meta.take().unwrap_or_default();
        meta.insert(RECEIPT_META_KEY.to_owned(), receipt);
        result.meta = Some(meta);
        Ok(result)
    }

    /// A tool's service as priced for one call: a tool that calls an HTTP
    /// service is charged what that service charges over HTTP for the
    /// request the call makes (its price rules, its pricer), so that no
    /// call buys a dear request at the service's base price; any other
    /// tool is charged its flat price.
    ///
    /// # Errors
    ///
    /// `-32602` for `arguments` (a call's, or none for a payment created
    /// for any call) that the tool's input schema refuses, or whose request
    /// cannot be priced or sent (what HTTP refuses with a 400 or 413).
    async fn priced(
        &self,
        service: &Arc<PricedService>,
        name: &str,
        arguments: Option<&JsonObject>,
        paid: bool,
    ) -> Result<Arc<PricedService>, ErrorData> {
        let Some(http) = self.http.as_ref() else {
            // A proxied server's tool, checked as it lists its schema.
            let schema = self
                .descriptions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .and_then(|listed| listed.schema.clone());
            if let (Some(schema), Some(given)) = (schema, arguments) {
                upstreams::check_arguments(&schema, given)?;
            }
            return Ok(service.clone());
        };
        // A call's arguments (a payment created without them is for any).
        if let Some(given) = arguments {
            http.check_schema(name, given)?;
        }
        let none = JsonObject::new();
        let arguments = arguments.unwrap_or(&none);
        // Arguments that name a method are refused before any payment.
        if !service.is_dynamic() {
            http.check_arguments(name, arguments)?;
            return Ok(service.clone());
        }
        let Some(request) = http.request(name, arguments) else {
            return Ok(service.clone());
        };
        let (mut request, called) = request?;
        // Priced as the service it calls prices it: its pricer is told
        // that service's name, as for the same request over HTTP.
        let as_called = Arc::new(PricedService {
            name: called,
            ..(**service).clone()
        });
        let price = self
            .paywall
            .priced(as_called, &mut request, paid)
            .await
            .map_err(|refused| {
                let detail = serde_json::from_slice::<Value>(refused.body())
                    .ok()
                    .and_then(|p| p["detail"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| refused.status().to_string());
                ErrorData::invalid_params(format!("this call cannot be priced: {detail}"), None)
            })?
            .price_sats;
        Ok(if price == service.price_sats {
            service.clone()
        } else {
            Arc::new(PricedService {
                price_sats: price,
                ..(**service).clone()
            })
        })
    }

    async fn refused(
        &self,
        service: &PricedService,
        refusal: Refusal,
        client: Option<ClientKey>,
        by_id: bool,
    ) -> ErrorData {
        if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
            return ErrorData::internal_error(refusal.detail, None);
        }
        self.payment_error(service, Some(refusal), client, by_id)
            .await
    }
}

/// What a client is told when the node cannot be asked (the details go
/// to the log).
const NODE_UNAVAILABLE: &str =
    "the Lightning node is unavailable; retry shortly (nothing was charged)";

/// What a client is told when the store cannot be asked (the details go
/// to the log).
const STORE_UNAVAILABLE: &str =
    "the payment store is unavailable; retry shortly (nothing was charged)";

/// The node could not make an invoice: details go to the log, not the client.
fn node_unavailable() -> ErrorData {
    ErrorData::internal_error(NODE_UNAVAILABLE, None)
}

/// The credential is held by another call (or a replica that stopped): a
/// good credential, unspent, so not a payment error, which would have the
/// client pay again. `data.retryAfter` (seconds) says when to call again
/// with it, as HTTP's `409` does with `Retry-After`.
fn in_flight() -> ErrorData {
    ErrorData::internal_error(
        "this credential is being used by another call; it is not spent: call again with it shortly",
        Some(json!({"retryAfter": 1})),
    )
}

/// The store could not be asked: details go to the log, not the client.
fn store_unavailable() -> ErrorData {
    ErrorData::internal_error(STORE_UNAVAILABLE, None)
}

fn unavailable(tool: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("tool {tool:?} is not served now: the service it calls is disabled or removed, matches a prefix and the tool names no path of its own, or no longer sells the request the tool makes at its price (the log says why)"),
        None,
    )
}

fn unpriced(tool: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("tool {tool:?} has no price set by this gateway's operator, so it is not served"),
        None,
    )
}

impl ServerHandler for PaidTools {
    fn get_info(&self) -> ServerConfig {
        let mut payment = JsonObject::new();
        payment.insert(
            "methods".into(),
            json!({"lightning": {"intents": ["charge"]}}),
        );
        let capabilities = ServerCapabilities::builder()
            .enable_experimental_with([("payment".to_owned(), payment)].into_iter().collect())
            .enable_tools()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("gate402", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Paid tools. An unpaid call fails with {PAYMENT_REQUIRED_CODE} and an MPP challenge over a Lightning invoice; pay it and call again with the credential in _meta[\"{CREDENTIAL_META_KEY}\"], or use {CREATE_PAYMENT} and pass {PAYMENT_ID_ARG}."
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let priced = self.priced_tools().await?;
        let any_priced = priced.iter().any(|(_, price)| price.is_some());
        let mut tools: Vec<Tool> = priced.into_iter().map(|(tool, _)| tool).collect();
        if any_priced {
            let schema = json!({
                "type": "object",
                "properties": {
                    "tool": {"type": "string", "description": "the paid tool to buy one call of"},
                    "arguments": {"type": "object", "description": "the arguments of that call, when the tool's price depends on them (else it is bought at its base price)"}
                },
                "required": ["tool"],
            });
            if let Value::Object(schema) = schema {
                tools.push(Tool::new(
                    CREATE_PAYMENT,
                    "Free. Returns {paymentId, invoice, amountSats} for one call of a paid tool: pay the invoice, then pass paymentId as an argument of that tool.",
                    Arc::new(schema),
                ));
            }
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let caller = Caller::of(
            &self.paywall,
            context.extensions.get::<axum::http::request::Parts>(),
        );
        let client = caller.client().map(|c| c.key());
        let result = if name == CREATE_PAYMENT {
            if let Err(limited) = self.paywall.admit_unpaid(client) {
                return Err(rate_limited(&limited));
            }
            self.create_payment(request.arguments).await?
        } else {
            let description = self.description_of(&name).await?;
            // Bound first: the pricing's guard must not live across the call.
            let price = self.pricing.load().price(&name, &description);
            match price {
                ToolPrice::Free => {
                    // A bearer id sent to a free tool by mistake goes no
                    // further.
                    let mut arguments = request.arguments;
                    if let Some(arguments) = arguments.as_mut() {
                        arguments.remove(PAYMENT_ID_ARG);
                    }
                    self.upstream.call(&name, arguments, None, &caller).await?
                }
                ToolPrice::Paid(service) => {
                    self.paid_call(&service, &name, request.arguments, &context.meta.0, &caller)
                        .await?
                }
                ToolPrice::Unpriced => return Err(unpriced(&name)),
                ToolPrice::Unavailable => return Err(unavailable(&name)),
            }
        };
        Ok(result.into())
    }
}

impl PaidTools {
    /// The `/mcp` server the config asks for: `[mcp_proxy]`'s upstream, or
    /// the `[[tools]]` over `services` (the services as they run, admin
    /// changes included); `None` when it asks for neither.
    pub async fn from_config(
        config: &crate::config::GatewayConfig,
        services: &[crate::config::ServiceConfig],
        paywall: &Paywall,
        proxy: &Proxy,
    ) -> anyhow::Result<Option<Self>> {
        if let Some(proxy) = &config.mcp_proxy {
            let upstream = McpUpstream::connect(proxy).await?;
            if let Ok(tools) = upstream.tools().await {
                if tools.iter().any(|t| t.name == CREATE_PAYMENT) {
                    tracing::warn!(
                        tool = CREATE_PAYMENT,
                        "the upstream MCP server has a tool named as the gateway's own: it is not listed, and calls of that name buy a paymentId"
                    );
                }
            }
            let pricing = Pricing::per_tool(&proxy.prices, proxy.default_price_sats);
            return Ok(Some(Self::new(
                paywall.clone(),
                Arc::new(upstream),
                pricing,
            )));
        }
        if config.tools.is_empty() {
            return Ok(None);
        }
        let (tools, pricing) = HttpTools::new(&config.tools, services, proxy.clone());
        Ok(Some(Self::over_http(paywall.clone(), tools, pricing)))
    }
}

/// [`WELL_KNOWN_PATH`]: the server, its tools and prices, its protocols.
pub async fn describe(tools: &PaidTools, name: &str) -> Value {
    let listed = tools.priced_tools().await.unwrap_or_default();
    json!({
        "name": name,
        "endpoint": router::PATH,
        "transport": "streamable-http",
        "protocols": ["L402", "MPP"],
        "payment": {
            "mcp": {"credentialMeta": CREDENTIAL_META_KEY, "receiptMeta": RECEIPT_META_KEY, "paymentRequiredCode": PAYMENT_REQUIRED_CODE},
            "paymentId": {"tool": CREATE_PAYMENT, "argument": PAYMENT_ID_ARG},
            "methods": {"lightning": {"intents": ["charge"]}},
        },
        "tools": listed.iter().map(|(tool, price)| json!({
            "name": tool.name,
            "description": tool.description,
            "inputSchema": tool.input_schema.as_ref(),
            "price": price.map(|p| json!({"amount": p.to_string(), "currency": "sat"})),
        })).collect::<Vec<_>>(),
    })
}
