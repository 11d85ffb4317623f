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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use gate402_lightning::InvoiceStatus;
use gate402_mpp::mcp::{
    self as wire, CREDENTIAL_META_KEY, PAYMENT_REQUIRED_CODE, PAYMENT_VERIFICATION_FAILED_CODE,
    RECEIPT_META_KEY,
};
use gate402_mpp::problem::ProblemType;
use gate402_store::InvoiceRecord;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode, ErrorData,
    Implementation, JsonObject, ListToolsResult, MetaObject, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{RoleClient, RoleServer, ServerHandler};
use serde_json::{json, Value};

use crate::config::{McpProxyConfig, ServiceConfig, ToolConfig};
use crate::paywall::{unix_now, Paywall, Refusal};
use crate::proxy::Proxy;

/// The free tool that sells a `paymentId` for one call of another tool.
pub const CREATE_PAYMENT: &str = "create_payment";
/// The argument that carries a `paymentId`.
pub const PAYMENT_ID_ARG: &str = "paymentId";
/// How long a `paymentId` can be used after it was created.
const PAYMENT_ID_LIFETIME_SECS: u64 = 86_400;
/// The `_meta` key of a tool's price in `tools/list`.
pub const PRICE_META_KEY: &str = "org.paymentauth/price";
/// The largest upstream answer turned into a tool result.
const MAX_RESULT_BYTES: usize = 8 << 20;

/// Where tool calls go.
#[async_trait]
pub trait ToolUpstream: Send + Sync + 'static {
    /// The tools, as the upstream describes them (prices are added on top).
    async fn tools(&self) -> Result<Vec<Tool>, ErrorData>;

    /// Calls a tool. `Err` means the upstream failed: the payment stays
    /// unspent. A tool that ran and reported an error is an `Ok` result
    /// with `is_error`, and is paid for.
    async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> Result<CallToolResult, ErrorData>;
}

/// What each tool costs: per-tool paid services, and a default price for
/// tools not named (none: such tools are free).
#[derive(Clone, Default)]
pub struct Pricing {
    tools: HashMap<String, Arc<ServiceConfig>>,
    /// Named with price 0: free even when a default applies.
    free: std::collections::HashSet<String>,
    default_sats: Option<u64>,
}

impl Pricing {
    /// Prices from paid services named `mcp/<tool>`.
    pub fn new(services: impl IntoIterator<Item = (String, ServiceConfig)>) -> Self {
        Self {
            tools: services
                .into_iter()
                .map(|(tool, service)| (tool, Arc::new(service)))
                .collect(),
            free: Default::default(),
            default_sats: None,
        }
    }

    /// Prices per tool name, and a default for the rest (the proxy's).
    pub fn per_tool(prices: &HashMap<String, u64>, default_sats: Option<u64>) -> Self {
        let mut pricing = Self::new(
            prices
                .iter()
                .filter(|(_, price)| **price > 0)
                .map(|(tool, price)| (tool.clone(), charge(tool, *price, tool))),
        );
        pricing.free = prices
            .iter()
            .filter(|(_, price)| **price == 0)
            .map(|(tool, _)| tool.clone())
            .collect();
        pricing.default_sats = default_sats.filter(|p| *p > 0);
        pricing
    }

    /// The paid service of `tool`, `None` when it is free.
    fn service(&self, tool: &str, description: &str) -> Option<Arc<ServiceConfig>> {
        if let Some(service) = self.tools.get(tool) {
            return Some(service.clone());
        }
        if self.free.contains(tool) {
            return None;
        }
        let price = self.default_sats?;
        // A tool priced only by the default; the proxy also names it in
        // `prices` when it wants another price or none.
        Some(Arc::new(charge(tool, price, description)))
    }
}

/// A paid service that charges `price_sats` per call of `tool`, paid with MPP.
fn charge(tool: &str, price_sats: u64, description: &str) -> ServiceConfig {
    let mut service = ServiceConfig::new(&format!("mcp/{tool}"), "/mcp", price_sats);
    service.description = description.to_owned();
    service.schemes = crate::config::Schemes::Mpp;
    service
}

/// The MCP server: tools from a [`ToolUpstream`], charged through the
/// paywall.
#[derive(Clone)]
pub struct PaidTools {
    paywall: Paywall,
    upstream: Arc<dyn ToolUpstream>,
    pricing: Arc<Pricing>,
    /// Tool name → description, as last listed: a call needs the tool's
    /// description (and whether it exists), and asking an MCP upstream
    /// for its tool list on every call would double the round trips.
    descriptions: Arc<RwLock<HashMap<String, String>>>,
}

fn error(code: i32, message: impl Into<String>, data: Option<Value>) -> ErrorData {
    ErrorData::new(ErrorCode(code), message.into(), data)
}

/// JSON-RPC's server-error range: too many unpaid invoices for a client.
const RATE_LIMITED_CODE: i32 = -32029;

fn rate_limited(limited: &crate::limits::Limited) -> ErrorData {
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
            pricing: Arc::new(pricing),
            descriptions: Default::default(),
        }
    }

    /// The upstream's tools, remembering their descriptions.
    async fn upstream_tools(&self) -> Result<Vec<Tool>, ErrorData> {
        let tools = self.upstream.tools().await?;
        *self.descriptions.write().unwrap_or_else(|e| e.into_inner()) = tools
            .iter()
            .map(|t| {
                let description = t.description.as_deref().unwrap_or_default();
                (t.name.to_string(), description.to_owned())
            })
            .collect();
        Ok(tools)
    }

    /// The tools with their prices, for `tools/list` and discovery.
    pub async fn priced_tools(&self) -> Result<Vec<(Tool, Option<u64>)>, ErrorData> {
        let mut tools = Vec::new();
        for mut tool in self.upstream_tools().await? {
            let description = tool.description.clone().unwrap_or_default();
            let price = self
                .pricing
                .service(&tool.name, &description)
                .map(|s| s.price_sats);
            if let Some(price) = price {
                tool.description = Some(
                    format!(
                        "{description} ({price} sat per call; pay with MPP or {CREATE_PAYMENT})"
                    )
                    .into(),
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
    async fn payment_error(
        &self,
        service: &ServiceConfig,
        refusal: Option<Refusal>,
        client: Option<IpAddr>,
    ) -> ErrorData {
        if let Err(limited) = self.paywall.admit_unpaid(client) {
            return rate_limited(&limited);
        }
        let issued = match self.paywall.issue(service, false, true).await {
            Ok(issued) => issued,
            Err(detail) => return ErrorData::internal_error(detail, None),
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
            hint: Some(format!(
                "pay the invoice in challenges[0].request.methodDetails.invoice, then call again with _meta[\"{CREDENTIAL_META_KEY}\"] = {{challenge, payload: {{preimage}}}}"
            )),
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
        let service = self.pricing.service(tool, &description).ok_or_else(|| {
            ErrorData::invalid_params(format!("tool {tool:?} is free; call it directly"), None)
        })?;
        let issued = self
            .paywall
            .issue(&service, false, false)
            .await
            .map_err(|detail| ErrorData::internal_error(detail, None))?;
        // A paymentId is looked up later: which tool it pays for, and since when.
        let record = InvoiceRecord {
            payment_hash: issued.payment_hash,
            bolt11: issued.bolt11.clone(),
            amount_msat: service.price_sats * 1000,
            service: service.name.clone(),
            created_at: unix_now(),
            expires_at: issued.expires_at,
        };
        self.paywall
            .store()
            .put_invoice(&record)
            .await
            .map_err(|e| ErrorData::internal_error(format!("store: {e}"), None))?;
        let mut answer = json!({
            "paymentId": hex::encode(issued.payment_hash),
            "invoice": issued.bolt11,
            "amountSats": service.price_sats,
            "expiresAt": issued.expires_at,
            "tool": tool,
            "howToPay": format!("pay the invoice, then call {tool} with the argument {PAYMENT_ID_ARG}; one paymentId pays for one call"),
        });
        if self.paywall.test_money() {
            answer["testMoney"] = gate402_lightning_sandbox::TEST_MONEY.into();
        }
        Ok(text_result(answer))
    }

    /// The description of an upstream tool; an unknown tool is an error.
    /// Asks the upstream only for a tool not seen listed (a new one).
    async fn description_of(&self, tool: &str) -> Result<String, ErrorData> {
        let known = |descriptions: &RwLock<HashMap<String, String>>| {
            descriptions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(tool)
                .cloned()
        };
        if let Some(description) = known(&self.descriptions) {
            return Ok(description);
        }
        self.upstream_tools().await?;
        known(&self.descriptions)
            .ok_or_else(|| ErrorData::invalid_params(format!("no tool named {tool:?}"), None))
    }

    /// Checks a `paymentId` for `service`; returns the reservation key and
    /// the paid hash, or the refusal.
    async fn check_payment_id(
        &self,
        service: &ServiceConfig,
        payment_id: &Value,
    ) -> Result<(String, [u8; 32]), Refusal> {
        let refuse =
            |problem, detail: String| Refusal::new(StatusCode::PAYMENT_REQUIRED, problem, detail);
        let mut hash = [0u8; 32];
        let text = payment_id.as_str().unwrap_or_default();
        if hex::decode_to_slice(text, &mut hash).is_err() {
            return Err(refuse(
                ProblemType::MalformedCredential,
                format!("{PAYMENT_ID_ARG} must be the 64 hex digits {CREATE_PAYMENT} returned"),
            ));
        }
        let record = match self.paywall.store().invoice(&hash).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(refuse(
                    ProblemType::InvalidChallenge,
                    format!("unknown {PAYMENT_ID_ARG}; get one from {CREATE_PAYMENT}"),
                ))
            }
            Err(e) => {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ProblemType::PaymentRequired,
                    format!("store: {e}"),
                ))
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
                    ProblemType::PaymentRequired,
                    format!("the invoice of this {PAYMENT_ID_ARG} is not paid yet"),
                ))
            }
            Err(e) => {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ProblemType::PaymentRequired,
                    format!("Lightning backend: {e}"),
                ))
            }
        }
        let key = format!("payment-id/{text}");
        self.paywall
            .reserve(&key, record.created_at + PAYMENT_ID_LIFETIME_SECS + 3600)
            .await?;
        Ok((key, hash))
    }

    /// Serves a paid call: the payment is checked and held, the upstream
    /// called, the payment spent (or released on failure) and the receipt
    /// attached.
    async fn paid_call(
        &self,
        service: &ServiceConfig,
        name: &str,
        mut arguments: Option<JsonObject>,
        meta: &MetaObject,
        client: Option<IpAddr>,
    ) -> Result<CallToolResult, ErrorData> {
        let payment_id = arguments.as_mut().and_then(|a| a.remove(PAYMENT_ID_ARG));
        let (key, payment_hash, challenge_id) = if let Some(payment_id) = payment_id {
            match self.check_payment_id(service, &payment_id).await {
                Ok((key, hash)) => (key, hash, None),
                Err(refusal) => return Err(self.refused(service, refusal, client).await),
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
            let verified = self.paywall.verify_payment(service, &credential);
            let (hash, id, expires_at) = match verified {
                Ok(v) => v,
                Err(refusal) => return Err(self.refused(service, refusal, client).await),
            };
            if let Err(refusal) = self.paywall.reserve(&id, expires_at).await {
                return Err(self.refused(service, refusal, client).await);
            }
            (id.clone(), hash, Some(id))
        } else {
            return Err(self.payment_error(service, None, client).await);
        };
        let outcome = self.upstream.call(name, arguments).await;
        self.paywall.finish(&key, outcome.is_ok()).await;
        let mut result = outcome?;
        let scheme = if challenge_id.is_some() {
            "Payment"
        } else {
            "paymentId"
        };
        let receipt = self
            .paywall
            .record_paid(service, scheme, payment_hash, challenge_id.as_deref())
            .await;
        let mut receipt = serde_json::to_value(&receipt).unwrap_or_default();
        if let Some(object) = receipt.as_object_mut() {
            let id = challenge_id.unwrap_or_else(|| hex::encode(payment_hash));
            object.insert("challengeId".into(), id.into());
        }
        let mut meta = result.meta.take().unwrap_or_default();
        meta.insert(RECEIPT_META_KEY.to_owned(), receipt);
        result.meta = Some(meta);
        Ok(result)
    }

    async fn refused(
        &self,
        service: &ServiceConfig,
        refusal: Refusal,
        client: Option<IpAddr>,
    ) -> ErrorData {
        if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
            return ErrorData::internal_error(refusal.detail, None);
        }
        self.payment_error(service, Some(refusal), client).await
    }
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
                "properties": {"tool": {"type": "string", "description": "the paid tool to buy one call of"}},
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
        let client = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| {
                parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            })
            .map(|info| info.0.ip());
        let result = if name == CREATE_PAYMENT {
            if let Err(limited) = self.paywall.admit_unpaid(client) {
                return Err(rate_limited(&limited));
            }
            self.create_payment(request.arguments).await?
        } else {
            let description = self.description_of(&name).await?;
            match self.pricing.service(&name, &description) {
                None => self.upstream.call(&name, request.arguments).await?,
                Some(service) => {
                    self.paid_call(&service, &name, request.arguments, &context.meta.0, client)
                        .await?
                }
            }
        };
        Ok(result.into())
    }
}

/// Tools that call priced HTTP services (`[[tools]]`).
pub struct HttpTools {
    tools: Vec<HttpTool>,
    proxy: Proxy,
}

struct HttpTool {
    tool: Tool,
    /// The called service, with the tool's method and path.
    service: ServiceConfig,
    method: Method,
    path: String,
}

impl HttpTools {
    /// The configured tools over `services`; each tool's paid service is
    /// in the returned [`Pricing`].
    pub fn new(tools: &[ToolConfig], services: &[ServiceConfig]) -> (Self, Pricing) {
        let mut http = Vec::new();
        let mut prices = Vec::new();
        for config in tools {
            let Some(called) = services.iter().find(|s| s.name == config.service) else {
                continue;
            };
            let schema = match &config.input_schema {
                Value::Object(schema) => schema.clone(),
                _ => JsonObject::new(),
            };
            let paid = config.paid_service(called);
            let method = paid.methods.first().cloned().unwrap_or(Method::GET);
            let path = paid.path.as_written();
            prices.push((config.name.clone(), paid.clone()));
            http.push(HttpTool {
                tool: Tool::new(
                    config.name.clone(),
                    config.description.clone(),
                    Arc::new(schema),
                ),
                service: paid,
                method,
                path,
            });
        }
        (
            Self {
                tools: http,
                proxy: Proxy::default(),
            },
            Pricing::new(prices),
        )
    }
}

/// A JSON argument as a query value: strings as they are, the rest as JSON.
fn query_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[async_trait]
impl ToolUpstream for HttpTools {
    async fn tools(&self) -> Result<Vec<Tool>, ErrorData> {
        Ok(self.tools.iter().map(|t| t.tool.clone()).collect())
    }

    async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> Result<CallToolResult, ErrorData> {
        let tool = self
            .tools
            .iter()
            .find(|t| t.tool.name == name)
            .ok_or_else(|| ErrorData::invalid_params(format!("no tool named {name:?}"), None))?;
        let arguments = arguments.unwrap_or_default();
        let in_query = matches!(tool.method, Method::GET | Method::DELETE | Method::HEAD);
        let mut uri = tool.path.clone();
        let body = if in_query {
            if !arguments.is_empty() {
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(arguments.iter().map(|(k, v)| (k, query_value(v))))
                    .finish();
                uri = format!("{uri}?{query}");
            }
            Body::empty()
        } else {
            Body::from(Value::Object(arguments).to_string())
        };
        let request = Request::builder()
            .method(tool.method.clone())
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(body)
            .map_err(|e| ErrorData::invalid_params(format!("arguments: {e}"), None))?;
        let response = self.proxy.forward(&tool.service, request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_RESULT_BYTES)
            .await
            .map_err(|e| ErrorData::internal_error(format!("upstream body: {e}"), None))?;
        if status.is_server_error() {
            return Err(ErrorData::internal_error(
                format!(
                    "the upstream failed ({status}); the payment was not spent, call again with it"
                ),
                None,
            ));
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut result = if status.is_success() {
            CallToolResult::success(vec![ContentBlock::text(text)])
        } else {
            CallToolResult::error(vec![ContentBlock::text(format!("{status}: {text}"))])
        };
        if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(&bytes) {
            result.structured_content = Some(value);
        }
        Ok(result)
    }
}

/// Another MCP server, reached as a client (stdio child or HTTP).
pub struct McpUpstream {
    peer: Peer<RoleClient>,
    // Keeps the connection (and a child process) alive.
    _running: Box<dyn std::any::Any + Send + Sync>,
}

impl McpUpstream {
    /// Connects to the upstream of `[mcp_proxy]`: starts its command, or
    /// opens its URL.
    pub async fn connect(config: &McpProxyConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        use rmcp::ServiceExt;
        let running = match (&config.command, &config.url) {
            (Some(command), _) => {
                let (program, args) = command
                    .split_first()
                    .context("mcp_proxy.command names no program")?;
                let mut child = tokio::process::Command::new(program);
                child.args(args);
                let transport = rmcp::transport::TokioChildProcess::new(child)
                    .with_context(|| format!("starting the MCP server {program:?}"))?;
                ().serve(transport)
                    .await
                    .with_context(|| format!("the MCP server {program:?} did not initialize"))?
            }
            (None, Some(url)) => {
                let transport =
                    rmcp::transport::StreamableHttpClientTransport::from_uri(url.clone());
                ().serve(transport)
                    .await
                    .with_context(|| format!("the MCP server at {url} did not initialize"))?
            }
            (None, None) => anyhow::bail!("mcp_proxy needs url or command"),
        };
        Ok(Self::new(running.peer().clone(), Box::new(running)))
    }

    /// Over a running rmcp client; `keep` holds what keeps it running.
    pub fn new(peer: Peer<RoleClient>, keep: Box<dyn std::any::Any + Send + Sync>) -> Self {
        Self {
            peer,
            _running: keep,
        }
    }
}

fn upstream_error(e: rmcp::ServiceError) -> ErrorData {
    match e {
        // The upstream's own answer (a bad argument, an unknown tool).
        rmcp::ServiceError::McpError(error) => error,
        other => ErrorData::internal_error(
            format!("the upstream MCP server failed ({other}); the payment was not spent"),
            None,
        ),
    }
}

#[async_trait]
impl ToolUpstream for McpUpstream {
    async fn tools(&self) -> Result<Vec<Tool>, ErrorData> {
        self.peer.list_all_tools().await.map_err(upstream_error)
    }

    async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
    ) -> Result<CallToolResult, ErrorData> {
        let mut request = CallToolRequestParams::new(name.to_owned());
        request.arguments = arguments;
        self.peer.call_tool(request).await.map_err(upstream_error)
    }
}

impl PaidTools {
    /// The `/mcp` server the config asks for: `[mcp_proxy]`'s upstream, or
    /// the `[[tools]]`; `None` when it asks for neither.
    pub async fn from_config(
        config: &crate::GatewayConfig,
        paywall: &Paywall,
    ) -> anyhow::Result<Option<Self>> {
        if let Some(proxy) = &config.mcp_proxy {
            let upstream = McpUpstream::connect(proxy).await?;
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
        let (tools, pricing) = HttpTools::new(&config.tools, &config.services);
        Ok(Some(Self::new(paywall.clone(), Arc::new(tools), pricing)))
    }
}

/// The `/mcp` service for `tools`.
pub fn router(tools: PaidTools) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    // The Host check guards unauthenticated servers on localhost against
    // DNS rebinding; here every call is paid for, and gateways answer
    // under their public names.
    let config = StreamableHttpServerConfig::default().disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().nest_service("/mcp", service)
}

/// `/.well-known/mcp`: the server, its tools and prices, its protocols.
pub async fn describe(tools: &PaidTools, name: &str) -> Value {
    let listed = tools.priced_tools().await.unwrap_or_default();
    json!({
        "name": name,
        "endpoint": "/mcp",
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
