//! Where tool calls go: priced HTTP services (`[[tools]]`), or another MCP
//! server (`[mcp_proxy]`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Method, Request};
use gate402_mpp::mcp::{PAYMENT_REQUIRED_CODE, PAYMENT_VERIFICATION_FAILED_CODE};
use gate402_paywall::route::{PathPattern, RequestPath};
use gate402_paywall::{Auth, PricedService, UpstreamOutcome};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ErrorData, JsonObject, Tool,
};
use rmcp::service::{Peer, RunningService};
use rmcp::RoleClient;
use serde_json::Value;

use super::{Caller, Pricing, ToolFailure, ToolUpstream};
use crate::config::{McpProxyConfig, ServiceConfig, ToolConfig};
use crate::proxy::Proxy;

/// The largest upstream answer turned into a tool result.
const MAX_RESULT_BYTES: usize = 8 << 20;

/// Tools that call priced HTTP services (`[[tools]]`), made again from
/// their entries whenever the services change ([`HttpTools::set`]).
pub struct HttpTools {
    tools: ArcSwap<Vec<HttpTool>>,
    proxy: Proxy,
}

struct HttpTool {
    tool: Tool,
    /// Its input schema, compiled: a call whose arguments it refuses is
    /// refused before it is charged.
    schema: Arc<jsonschema::Validator>,
    /// The paid service it is priced by, the very one in the [`Pricing`]
    /// made with it: a call checked against another (a reload in between)
    /// is not run.
    paid: Arc<PricedService>,
    /// The service whose upstream it calls.
    service: String,
    method: Method,
    path: RequestPath,
}

impl HttpTools {
    /// The configured tools over `services`, called through `proxy`; each
    /// tool's paid service is in the returned [`Pricing`].
    pub fn new(tools: &[ToolConfig], services: &[ServiceConfig], proxy: Proxy) -> (Self, Pricing) {
        let http = Self {
            tools: ArcSwap::default(),
            proxy,
        };
        let pricing = http.set(tools, services);
        (http, pricing)
    }

    /// Makes the tools of `tools` over `services` as they now run (each
    /// calls its own path and method, else its service's), for the next
    /// call on; answers what they cost: the tool's own price, else its
    /// service's. A tool is left out, and priced as not served, when its
    /// service is disabled or gone (what the paywall no longer sells over
    /// HTTP is not sold over MCP either) or, without a path of its own,
    /// now matches a prefix (an admin API change: the file's check would
    /// refuse it).
    pub fn set(&self, tools: &[ToolConfig], services: &[ServiceConfig]) -> Pricing {
        let mut made = Vec::new();
        let mut prices = Vec::new();
        let mut unavailable = Vec::new();
        // As the services run now: an admin API change may have given a
        // tool's request to a dearer service, or metered its own.
        let routes = gate402_paywall::route::Routes::new(services.iter().map(|s| s.priced.clone()));
        for config in tools {
            if let Some((_, fault)) = config.sale_fault(services, &routes) {
                tracing::warn!(tool = %config.name, %fault, "the tool is not sold until its entry or its service changes");
                unavailable.push(config.name.clone());
                continue;
            }
            match make(config, services) {
                Some(tool) => {
                    prices.push((config.name.clone(), tool.paid.clone()));
                    made.push(tool);
                }
                None => unavailable.push(config.name.clone()),
            }
        }
        self.tools.store(Arc::new(made));
        Pricing::new(prices).without(unavailable)
    }
}

/// The tool of `config` over `services`, with the service that charges
/// for it; `None` when it is not served now.
fn make(config: &ToolConfig, services: &[ServiceConfig]) -> Option<HttpTool> {
    let called = services.iter().find(|s| s.name() == config.service)?;
    if called.priced.auth == Auth::Disabled {
        return None;
    }
    let paid = config.paid_service(called).priced;
    if !matches!(paid.path, PathPattern::Exact(_)) {
        tracing::warn!(
            tool = %config.name,
            service = %config.service,
            "the tool's service now matches a prefix: the tool is not sold until it names its path"
        );
        return None;
    }
    // The config checked that a tool's path is in normal form.
    let path = RequestPath::parse(paid.path.stem()).ok()?;
    let schema = match &config.input_schema {
        Value::Object(schema) => schema.clone(),
        _ => JsonObject::new(),
    };
    // The config checked that it compiles.
    let validator = input_validator(&Value::Object(schema.clone()))
        .map_err(|e| tracing::warn!(tool = %config.name, error = %e, "the tool's input schema does not compile: the tool is not sold"))
        .ok()?;
    let tool = HttpTool {
        schema: Arc::new(validator),
        tool: Tool::new(
            config.name.clone(),
            config.description.clone(),
            Arc::new(schema),
        ),
        service: called.name().to_owned(),
        method: paid.methods.first().cloned().unwrap_or(Method::GET),
        path,
        paid: Arc::new(paid),
    };
    Some(tool)
}

impl HttpTools {
    /// The HTTP request a call of tool `name` with `arguments` makes (its
    /// method and path; the arguments as the query of a GET, HEAD or
    /// DELETE, else as a JSON body), and the name of the service it calls;
    /// `None` when no tool has that name.
    ///
    /// # Errors
    ///
    /// `-32602` for an argument named like a method override (`_method`)
    /// or arguments that make no request.
    pub fn request(
        &self,
        name: &str,
        arguments: &JsonObject,
    ) -> Option<Result<(Request<Body>, String), ErrorData>> {
        let tools = self.tools.load();
        let tool = tools.iter().find(|t| t.tool.name == name)?;
        Some(request_for(tool, arguments).map(|request| (request, tool.service.clone())))
    }

    /// Checks the arguments of a call of tool `name` as
    /// [`HttpTools::request`] does, without making the request.
    ///
    /// # Errors
    ///
    /// `-32602` for an argument named like a method override (`_method`).
    pub fn check_arguments(&self, name: &str, arguments: &JsonObject) -> Result<(), ErrorData> {
        let tools = self.tools.load();
        match tools.iter().find(|t| t.tool.name == name) {
            Some(tool) => refuse_method_override(tool, arguments),
            None => Ok(()),
        }
    }

    /// Checks the arguments of a call of tool `name` against its input
    /// schema: a call that cannot do what it is for is not charged.
    ///
    /// # Errors
    ///
    /// `-32602` naming the first argument the schema refuses, and why.
    pub fn check_schema(&self, name: &str, arguments: &JsonObject) -> Result<(), ErrorData> {
        let tools = self.tools.load();
        match tools.iter().find(|t| t.tool.name == name) {
            Some(tool) => check_arguments(&tool.schema, arguments),
            None => Ok(()),
        }
    }
}

/// Checks a call's `arguments` against its tool's input schema.
///
/// # Errors
///
/// `-32602` naming the first argument the schema refuses, and why.
pub(crate) fn check_arguments(
    schema: &jsonschema::Validator,
    arguments: &JsonObject,
) -> Result<(), ErrorData> {
    let given = Value::Object(arguments.clone());
    let refused = schema.iter_errors(&given).next().map(|error| {
        let at = error.instance_path().to_string();
        let at = if at.is_empty() {
            "arguments".to_owned()
        } else {
            format!("argument {at}")
        };
        format!("{at}: {error} (the tool's input schema; nothing was charged)")
    });
    match refused {
        Some(why) => Err(ErrorData::invalid_params(why, None)),
        None => Ok(()),
    }
}

/// A tool's input schema, compiled to check a call's arguments before it
/// is charged: `format` is checked too (an `email` that is none), which
/// JSON Schema leaves to the validator's choice.
///
/// # Errors
///
/// Why `schema` is not one (an unknown type, a `$ref` that cannot be
/// resolved here: nothing is fetched).
pub(crate) fn input_validator(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| e.to_string())
}

/// The HTTP request a call of `tool` makes: its method and path, the
/// arguments as the query of a GET, HEAD or DELETE, else as a JSON body.
///
/// # Errors
///
/// `-32602` for an argument named like a method override (`_method`),
/// or arguments that make no request.
fn request_for(tool: &HttpTool, arguments: &JsonObject) -> Result<Request<Body>, ErrorData> {
    refuse_method_override(tool, arguments)?;
    let in_query = matches!(tool.method, Method::GET | Method::DELETE | Method::HEAD);
    let mut uri = tool.path.as_str().to_owned();
    let mut request = Request::builder().method(tool.method.clone());
    let body = if in_query {
        if !arguments.is_empty() {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(arguments.iter().map(|(k, v)| (k, query_value(v))))
                .finish();
            uri = format!("{uri}?{query}");
        }
        Body::empty()
    } else {
        // A type for the body there is (a GET with one would be read by
        // some upstreams as sending JSON).
        request = request.header(header::CONTENT_TYPE, "application/json");
        Body::from(Value::Object(arguments.clone()).to_string())
    };
    request
        .uri(uri)
        .header(header::ACCEPT, "application/json")
        .body(body)
        .map_err(|e| ErrorData::invalid_params(format!("arguments: {e}"), None))
}

/// Refuses an argument named like a method override (`_method`), which an
/// upstream reading it would act on instead of the tool's own method.
fn refuse_method_override(tool: &HttpTool, arguments: &JsonObject) -> Result<(), ErrorData> {
    match arguments
        .keys()
        .find(|name| gate402_paywall::route::is_method_override(name))
    {
        Some(name) => Err(ErrorData::invalid_params(
            format!(
                "argument {name:?} names a method, which some upstreams act on instead of the tool's own ({}): leave it out",
                tool.method
            ),
            None,
        )),
        None => Ok(()),
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
        Ok(self.tools.load().iter().map(|t| t.tool.clone()).collect())
    }

    async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        priced: Option<&Arc<PricedService>>,
        caller: &Caller,
    ) -> Result<CallToolResult, ToolFailure> {
        let tools = self.tools.load_full();
        let tool = tools.iter().find(|t| t.tool.name == name).ok_or_else(|| {
            ToolFailure::NotReached(ErrorData::invalid_params(
                format!("no tool named {name:?}"),
                None,
            ))
        })?;
        if priced.is_some_and(|priced| !Arc::ptr_eq(priced, &tool.paid)) {
            return Err(ToolFailure::NotReached(ErrorData::internal_error(
                format!("tool {name:?} changed while the call was on its way; nothing was charged, call again"),
                None,
            )));
        }
        let mut request =
            request_for(tool, &arguments.unwrap_or_default()).map_err(ToolFailure::NotReached)?;
        caller.add_to(&mut request);
        let response = self
            .proxy
            .forward_to(&tool.service, &tool.path, request)
            .await;
        let status = response.status();
        let outcome = UpstreamOutcome::of(&response);
        let reached = outcome != UpstreamOutcome::NotReached;
        let failed = |message: String| {
            let error = ErrorData::internal_error(message, None);
            if reached {
                ToolFailure::Failed(error)
            } else {
                ToolFailure::NotReached(error)
            }
        };
        let bytes = axum::body::to_bytes(response.into_body(), MAX_RESULT_BYTES)
            .await
            .map_err(|e| failed(format!("upstream body: {e}")))?;
        if outcome != UpstreamOutcome::Answered {
            return Err(failed(format!(
                "the upstream failed ({status}); the payment was not spent, call again with it"
            )));
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

/// Another MCP server, reached as a client (stdio child or HTTP). A
/// connection that has closed (a child that exited, a server that went
/// away) is opened again, the command started again, at the next listing
/// or call: one crash does not leave the proxy selling calls that can
/// only fail.
pub struct McpUpstream {
    config: McpProxyConfig,
    connection: ArcSwap<Connection>,
    /// Held while the connection is opened again: one opens it, the
    /// calls that find it closed meanwhile wait for that one.
    reopening: tokio::sync::Mutex<()>,
    /// How long one tool call may take: a server that never answers must
    /// not hold a paid call (and its claim) for ever.
    call_timeout: Duration,
}

/// A running rmcp client and what keeps it running (a child process).
struct Connection {
    peer: Peer<RoleClient>,
    _running: RunningService<RoleClient, ()>,
}

/// How long the upstream of `config` may take to answer one request, a
/// call or `initialize`: one that never answers must not hold a paid call
/// (and its claim), nor the proxy's start, for ever.
fn answer_timeout(config: &McpProxyConfig) -> Duration {
    Duration::from_secs(
        config
            .call_timeout_secs
            .unwrap_or(crate::config::DEFAULT_TOOL_CALL_TIMEOUT_SECS),
    )
}

/// Starts the command of `config`, or opens its URL, and initializes
/// within [`answer_timeout`].
async fn open(config: &McpProxyConfig) -> anyhow::Result<Connection> {
    let within = answer_timeout(config);
    use anyhow::Context;
    use rmcp::ServiceExt;
    let (initialized, what) = match (&config.command, &config.url) {
        (Some(command), _) => {
            let (program, args) = command
                .split_first()
                .context("mcp_proxy.command names no program")?;
            let mut child = tokio::process::Command::new(program);
            // rmcp kills the command from a task it spawns when dropped; a
            // process that exits right after (a start given up) would
            // leave it running, holding the pipes it inherited.
            child.args(args).kill_on_drop(true);
            // Its tools answer paying clients: none of the gateway's
            // secrets (the MPP secret, admin credentials, an upstream's
            // API key in the environment) goes with it unasked.
            child.env_clear();
            for name in crate::config::COMMAND_ENV
                .iter()
                .copied()
                .chain(config.pass_env.iter().map(String::as_str))
            {
                if let Some(value) = std::env::var_os(name) {
                    child.env(name, value);
                }
            }
            child.envs(&config.env);
            let transport = rmcp::transport::TokioChildProcess::new(child)
                .with_context(|| format!("starting the MCP server {program:?}"))?;
            let what = format!("the MCP server {program:?}");
            (
                tokio::time::timeout(within, ().serve(transport)).await,
                what,
            )
        }
        (None, Some(url)) => {
            let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.clone());
            let what = format!("the MCP server at {}", crate::config::redacted_url(url));
            (
                tokio::time::timeout(within, ().serve(transport)).await,
                what,
            )
        }
        (None, None) => anyhow::bail!("mcp_proxy needs url or command"),
    };
    let running = match initialized {
        Ok(running) => running.with_context(|| format!("{what} did not initialize"))?,
        Err(_) => anyhow::bail!(
            "{what} did not answer initialize within {} s (mcp_proxy.call_timeout_secs)",
            within.as_secs()
        ),
    };
    Ok(Connection {
        peer: running.peer().clone(),
        _running: running,
    })
}

impl McpUpstream {
    /// Connects to the upstream of `[mcp_proxy]`: starts its command, or
    /// opens its URL, and initializes.
    ///
    /// # Errors
    ///
    /// When the command cannot start, or the server does not initialize
    /// within `call_timeout_secs`.
    pub async fn connect(config: &McpProxyConfig) -> anyhow::Result<Self> {
        let connection = open(config).await?;
        Ok(Self {
            config: config.clone(),
            connection: ArcSwap::from_pointee(connection),
            reopening: tokio::sync::Mutex::new(()),
            call_timeout: answer_timeout(config),
        })
    }

    /// The connection's peer, the connection opened again first when it
    /// has closed.
    ///
    /// # Errors
    ///
    /// `-32603` when it cannot be opened again (nothing was charged).
    async fn peer(&self) -> Result<Peer<RoleClient>, ErrorData> {
        let open_peer = || {
            let current = self.connection.load();
            (!current.peer.is_transport_closed()).then(|| current.peer.clone())
        };
        if let Some(peer) = open_peer() {
            return Ok(peer);
        }
        let _turn = self.reopening.lock().await;
        if let Some(peer) = open_peer() {
            return Ok(peer);
        }
        tracing::warn!("the upstream MCP server's connection closed; opening it again");
        match open(&self.config).await {
            Ok(connection) => {
                let peer = connection.peer.clone();
                self.connection.store(Arc::new(connection));
                tracing::info!("the upstream MCP server is back");
                Ok(peer)
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot open the upstream MCP server again");
                Err(ErrorData::internal_error(
                    "the upstream MCP server is down (it is tried again at the next call); nothing was charged",
                    None,
                ))
            }
        }
    }
}

fn upstream_error(e: rmcp::ServiceError) -> ErrorData {
    match e {
        // A payment the upstream asks for itself: a client would take its
        // challenge for the gateway's and pay an invoice the upstream
        // chose. Not passed on.
        rmcp::ServiceError::McpError(error)
            if [PAYMENT_REQUIRED_CODE, PAYMENT_VERIFICATION_FAILED_CODE].contains(&error.code.0) =>
        {
            ErrorData::internal_error(
                format!(
                    "the upstream MCP server asked for a payment of its own ({}); that is not passed on, and the payment was not spent",
                    error.code.0
                ),
                None,
            )
        }
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
        self.peer()
            .await?
            .list_all_tools()
            .await
            .map_err(upstream_error)
    }

    async fn call(
        &self,
        name: &str,
        arguments: Option<JsonObject>,
        _priced: Option<&Arc<PricedService>>,
        _caller: &Caller,
    ) -> Result<CallToolResult, ToolFailure> {
        let mut request = CallToolRequestParams::new(name.to_owned());
        request.arguments = arguments;
        let peer = self.peer().await.map_err(ToolFailure::NotReached)?;
        match tokio::time::timeout(self.call_timeout, peer.call_tool(request)).await {
            Ok(answered) => answered.map_err(|e| ToolFailure::Failed(upstream_error(e))),
            // It had the call: a failure on its payment, as a 5xx is.
            Err(_) => Err(ToolFailure::Failed(ErrorData::internal_error(
                format!(
                    "the upstream MCP server did not answer within {} s; the payment was not spent",
                    self.call_timeout.as_secs()
                ),
                None,
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream's own payment errors are not passed on (a client would
    /// pay the upstream's invoice); its other errors are.
    #[test]
    fn an_upstreams_own_payment_challenge_is_not_passed_on() {
        for code in [PAYMENT_REQUIRED_CODE, PAYMENT_VERIFICATION_FAILED_CODE] {
            let asked = ErrorData::new(
                rmcp::model::ErrorCode(code),
                "pay me too",
                Some(serde_json::json!({"challenges": [{"request": {"invoice": "lnbcrt1…"}}]})),
            );
            let passed = upstream_error(rmcp::ServiceError::McpError(asked));
            assert_eq!(passed.code, rmcp::model::ErrorCode::INTERNAL_ERROR);
            assert!(passed.data.is_none());
            assert!(passed.message.contains("not passed on"), "{passed:?}");
        }
        let bad = ErrorData::invalid_params("no such city", None);
        let passed = upstream_error(rmcp::ServiceError::McpError(bad.clone()));
        assert_eq!(passed, bad);
    }

    /// A call priced before a reload and run after it is not run against
    /// the reloaded tool: its payment was checked against the old price.
    #[tokio::test]
    async fn a_call_priced_before_a_reload_is_not_run_after_it() {
        // Nothing listens on port 9: a call that ran would be refused.
        let services = [ServiceConfig::proxied("w", "/w", 5, "http://127.0.0.1:9")];
        let tool = ToolConfig {
            name: "weather".into(),
            description: "The weather".into(),
            service: "w".into(),
            method: None,
            path: None,
            input_schema: serde_json::json!({"type": "object"}),
            price_sats: None,
        };
        let proxy = Proxy::new(&services, Default::default()).unwrap();
        let (tools, pricing) = HttpTools::new(std::slice::from_ref(&tool), &services, proxy);
        let crate::mcp::pricing::ToolPrice::Paid(old) = pricing.price("weather", "") else {
            panic!("the tool is priced");
        };
        let dearer = ToolConfig {
            price_sats: Some(50),
            ..tool
        };
        let _ = tools.set(std::slice::from_ref(&dearer), &services);
        match tools
            .call("weather", None, Some(&old), &Caller::default())
            .await
        {
            Err(ToolFailure::NotReached(e)) => {
                assert!(e.message.contains("changed"), "{e:?}")
            }
            other => panic!("run at the old price: {other:?}"),
        }
    }

    /// A tool's input schema checks formats too, as a call's arguments
    /// are checked before it is charged.
    #[test]
    fn an_input_schema_checks_formats() {
        let validator = input_validator(&serde_json::json!({
            "type": "object",
            "properties": {"e": {"type": "string", "format": "email"}},
        }))
        .unwrap();
        assert!(validator.is_valid(&serde_json::json!({"e": "a@example.com"})));
        assert!(!validator.is_valid(&serde_json::json!({"e": "notanemail"})));
    }

    /// A tool's arguments go in the query of a GET, HEAD or DELETE, which
    /// then says no body type; else in a JSON body, which it names.
    #[test]
    fn a_body_type_is_named_only_with_a_body() {
        let tool = |method: Method| HttpTool {
            tool: Tool::new("t", "t", Arc::new(JsonObject::new())),
            schema: Arc::new(input_validator(&serde_json::json!({})).unwrap()),
            paid: Arc::new(PricedService::new("t", "/t", 1)),
            service: "t".into(),
            method,
            path: RequestPath::parse("/t").unwrap(),
        };
        let mut arguments = JsonObject::new();
        arguments.insert("city".into(), "Oslo".into());
        let get = request_for(&tool(Method::GET), &arguments).unwrap();
        assert_eq!(get.uri(), "/t?city=Oslo");
        assert!(get.headers().get(header::CONTENT_TYPE).is_none());
        let post = request_for(&tool(Method::POST), &arguments).unwrap();
        assert_eq!(post.headers()[header::CONTENT_TYPE], "application/json");
    }
}
