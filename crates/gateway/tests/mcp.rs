//! Paid MCP tools at `/mcp`, with an rmcp client: the payment transport
//! (-32042, credential in `_meta`, receipt in the result's `_meta`) and
//! the `paymentId` flow, each bound to its tool and spent once.

use gate402_gateway::config::ToolConfig;
use gate402_gateway::{demo, Gateway};
use gate402_lightning_sandbox::http::pay_via;
use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorCode, RequestMetaObject};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceError, ServiceExt};
use serde_json::{json, Value};

const CREDENTIAL: &str = "org.paymentauth/credential";
const RECEIPT: &str = "org.paymentauth/receipt";

struct Harness {
    gateway: Gateway,
    /// The config it started with.
    config: gate402_gateway::GatewayConfig,
    base: String,
    client: RunningService<RoleClient, ()>,
    http: reqwest::Client,
}

async fn start() -> Harness {
    start_limited(Default::default()).await
}

async fn start_limited(limits: gate402_paywall::LimitsConfig) -> Harness {
    start_with(|config| config.limits = limits).await
}

async fn start_with(adjust: impl FnOnce(&mut gate402_gateway::GatewayConfig)) -> Harness {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(upstream);
    adjust(&mut config);
    // A second tool on the same service at the same price: only the
    // binding of a payment to its tool tells them apart.
    config.tools.push(ToolConfig {
        name: "forecast".into(),
        description: "Tomorrow's weather (demo)".into(),
        ..config.tools[0].clone()
    });
    let dir = tempfile::tempdir().unwrap().keep();
    let gateway = Gateway::start(&config, &dir).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let client = ()
        .serve(StreamableHttpClientTransport::from_uri(format!(
            "{base}/mcp"
        )))
        .await
        .unwrap();
    Harness {
        gateway,
        config,
        base,
        client,
        http: reqwest::Client::new(),
    }
}

/// The harness, the demo's weather service priced by `pricing`: the TOML
/// of its `pricer` or `[[services.prices]]` (its default is 10 sat).
async fn start_priced(pricing: &str) -> Harness {
    let text = format!(
        "[[services]]\nname = \"weather\"\npath = \"/api/weather\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 10\n{pricing}\n"
    );
    let parsed = gate402_gateway::GatewayConfig::parse(&text, |_| None).unwrap();
    let pricing = parsed.services[0].priced.pricing.clone();
    assert!(pricing.is_some());
    start_with(|config| {
        let weather = config
            .services
            .iter_mut()
            .find(|s| s.name() == "weather")
            .unwrap();
        weather.priced.pricing = pricing;
    })
    .await
}

fn call(tool: &str, arguments: Value, credential: Option<Value>) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = arguments.as_object().cloned();
    if let Some(credential) = credential {
        let mut meta = RequestMetaObject::new();
        meta.insert(CREDENTIAL.to_owned(), credential);
        params.meta = Some(meta);
    }
    params
}

impl Harness {
    async fn call(&self, params: CallToolRequestParams) -> Result<CallToolResult, (i32, Value)> {
        match self.client.call_tool(params).await {
            Ok(result) => Ok(result),
            Err(ServiceError::McpError(e)) => Err((e.code.0, e.data.unwrap_or_default())),
            Err(other) => panic!("{other:?}"),
        }
    }

    /// The message of the `-32602` (invalid params) that `params` gets;
    /// anything else, a result included, fails the test.
    async fn refused(&self, params: CallToolRequestParams) -> String {
        match self.client.call_tool(params).await {
            Err(ServiceError::McpError(e)) => {
                assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{e:?}");
                e.message.into_owned()
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    /// `/.well-known/mcp`.
    async fn described(&self) -> Value {
        let response = self.http.get(format!("{}/.well-known/mcp", self.base));
        response.send().await.unwrap().json().await.unwrap()
    }

    /// Pays a -32042's challenge; returns the credential.
    async fn pay(&self, data: &Value) -> Value {
        let challenge = data["challenges"][0].clone();
        let invoice = challenge["request"]["methodDetails"]["invoice"]
            .as_str()
            .unwrap();
        let paid = pay_via(&self.http, &self.base, invoice).await.unwrap();
        json!({"challenge": challenge, "payload": {"preimage": paid.preimage}})
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_are_paid_with_a_credential_in_meta() {
    let h = start().await;
    let tools = h.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        ["weather", "translate", "forecast", "create_payment"]
    );
    assert_eq!(
        tools[0].meta.as_ref().unwrap()["org.paymentauth/price"]["amount"],
        "10"
    );
    assert_eq!(tools[0].input_schema["required"], json!(["city"]));

    // Arguments the tool's input schema refuses: -32602, no challenge.
    for (arguments, why) in [
        (json!({}), "\"city\" is a required property"),
        (json!({"city": 5}), "argument /city"),
    ] {
        let message = h.refused(call("weather", arguments.clone(), None)).await;
        assert!(message.contains(why), "{arguments}: {message}");
        assert!(message.contains("nothing was charged"), "{message}");
    }

    // Unpaid: -32042 with one challenge whose request is a JSON object.
    let (code, data) = h
        .call(call("weather", json!({"city": "Oslo"}), None))
        .await
        .unwrap_err();
    assert_eq!(code, -32042);
    assert_eq!(data["httpStatus"], 402);
    let challenge = &data["challenges"][0];
    assert_eq!(challenge["method"], "lightning");
    assert_eq!(challenge["request"]["amount"], "10");
    assert!(challenge["request"].is_object());

    // Paid: the result, and a receipt naming the challenge and the payment.
    let credential = h.pay(&data).await;
    let result = h
        .call(call(
            "weather",
            json!({"city": "Oslo"}),
            Some(credential.clone()),
        ))
        .await
        .unwrap();
    assert_eq!(result.structured_content.as_ref().unwrap()["city"], "Oslo");
    let receipt = &result.meta.as_ref().unwrap()[RECEIPT];
    assert_eq!(receipt["status"], "success");
    assert_eq!(receipt["challengeId"], challenge["id"]);
    assert_eq!(
        receipt["reference"],
        challenge["request"]["methodDetails"]["paymentHash"]
    );

    // Spent: a second use gets -32043 and a fresh challenge.
    let (code, data) = h
        .call(call("weather", json!({"city": "Oslo"}), Some(credential)))
        .await
        .unwrap_err();
    assert_eq!(code, -32043);
    assert_ne!(data["challenges"][0]["id"], challenge["id"]);
    assert!(data["problem"]["detail"]
        .as_str()
        .unwrap()
        .contains("already been used"));

    // Bound to its tool: a weather credential does not pay for forecast,
    // the same price on the same service notwithstanding.
    let (_, data) = h
        .call(call("weather", json!({"city": "Rome"}), None))
        .await
        .unwrap_err();
    let credential = h.pay(&data).await;
    let (code, data) = h
        .call(call(
            "forecast",
            json!({"city": "Rome"}),
            Some(credential.clone()),
        ))
        .await
        .unwrap_err();
    assert_eq!(code, -32043);
    assert!(
        data["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("not issued by this server for this route"),
        "{data}"
    );
    // Still unspent for the tool it was bought for.
    h.call(call("weather", json!({"city": "Rome"}), Some(credential)))
        .await
        .unwrap();

    // Malformed: -32602.
    let (code, _) = h
        .call(call(
            "weather",
            json!({"city": "Rome"}),
            Some(json!("not an object")),
        ))
        .await
        .unwrap_err();
    assert_eq!(code, -32602);

    // Discovery.
    let described = h.described().await;
    assert_eq!(described["protocols"], json!(["L402", "MPP"]));
    assert_eq!(described["tools"][1]["name"], "translate");
    assert_eq!(described["tools"][1]["price"]["amount"], "25");
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

/// A tool's upstream is told who called, as for the same request over
/// HTTP: `X-Forwarded-For` names the MCP client, and a client that names
/// another address itself (no trusted proxy) is not believed.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_tells_the_upstream_its_client() {
    let echo = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let field = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        axum::Json(json!({
            "city": "Oslo",
            "forwarded_for": field("x-forwarded-for"),
            "forwarded": field("forwarded"),
            "real_ip": field("x-real-ip"),
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, echo).await });
    let h = start_with(|config| {
        let weather = config
            .services
            .iter_mut()
            .find(|s| s.name() == "weather")
            .unwrap();
        weather.upstream.as_mut().unwrap().url = format!("http://{addr}");
    })
    .await;
    let (_, data) = h
        .call(call("weather", json!({"city": "Oslo"}), None))
        .await
        .unwrap_err();
    let credential = h.pay(&data).await;
    let result = h
        .call(call("weather", json!({"city": "Oslo"}), Some(credential)))
        .await
        .unwrap();
    let seen = result.structured_content.unwrap();
    assert_eq!(seen["forwarded_for"], "127.0.0.1", "{seen}");

    let spoofed: std::collections::HashMap<_, _> = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
    ]
    .into_iter()
    .map(|(name, value)| {
        (
            axum::http::HeaderName::from_static(name),
            axum::http::HeaderValue::from_static(value),
        )
    })
    .collect();
    let config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            format!("{}/mcp", h.base),
        )
        .custom_headers(spoofed);
    let liar = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
    let unpaid = liar
        .call_tool(call("weather", json!({"city": "Oslo"}), None))
        .await
        .unwrap_err();
    let ServiceError::McpError(unpaid) = unpaid else {
        panic!("{unpaid:?}")
    };
    let credential = h.pay(&unpaid.data.unwrap()).await;
    let result = liar
        .call_tool(call("weather", json!({"city": "Oslo"}), Some(credential)))
        .await
        .unwrap();
    let seen = result.structured_content.unwrap();
    assert_eq!(
        (&seen["forwarded_for"], &seen["forwarded"], &seen["real_ip"]),
        (&json!("127.0.0.1"), &Value::Null, &Value::Null),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_id_pays_for_one_call_of_its_tool() {
    let h = start().await;
    let created = h
        .call(call("create_payment", json!({"tool": "weather"}), None))
        .await
        .unwrap();
    let created = created.structured_content.unwrap();
    assert_eq!(created["amountSats"], 10);
    let payment_id = created["paymentId"].as_str().unwrap().to_owned();

    // Not paid yet.
    let (code, data) = h
        .call(call(
            "weather",
            json!({"city": "Lima", "paymentId": payment_id}),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(code, -32043);
    assert!(data["problem"]["detail"]
        .as_str()
        .unwrap()
        .contains("not paid yet"));
    // Told to pay that payment, not the fresh challenge beside it.
    let hint = data["problem"]["hint"].as_str().unwrap();
    assert!(
        hint.starts_with("this call was paid by paymentId"),
        "{hint}"
    );
    assert!(
        data["problem"]["type"]
            .as_str()
            .unwrap()
            .ends_with("/payment-action-required"),
        "{data}"
    );

    pay_via(&h.http, &h.base, created["invoice"].as_str().unwrap())
        .await
        .unwrap();
    // Whoever saw the invoice knows its payment hash; that spends nothing,
    // nor does the hash with a MAC of its own making.
    let hash = payment_id[..64].to_owned();
    for (stolen, expected, needle) in [
        (hash.clone(), -32602, "96 hex digits"),
        (
            format!("{hash}{}", "0".repeat(32)),
            -32043,
            "unknown paymentId",
        ),
    ] {
        let (code, data) = h
            .call(call(
                "weather",
                json!({"city": "Lima", "paymentId": stolen}),
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(code, expected, "{data}");
        assert!(
            data["problem"]["detail"].as_str().unwrap().contains(needle),
            "{data}"
        );
    }
    // With a credential as well: refused before either is read, and
    // neither is spent (the credential serves a call after).
    let (_, unpaid) = h
        .call(call("weather", json!({"city": "Oslo"}), None))
        .await
        .unwrap_err();
    let credential = h.pay(&unpaid).await;
    let message = h
        .refused(call(
            "weather",
            json!({"city": "Lima", "paymentId": payment_id}),
            Some(credential.clone()),
        ))
        .await;
    assert!(
        message.contains("both a paymentId and a credential"),
        "{message}"
    );
    let result = h
        .call(call("weather", json!({"city": "Oslo"}), Some(credential)))
        .await
        .unwrap();
    assert_eq!(result.structured_content.as_ref().unwrap()["city"], "Oslo");
    // On another tool: refused, and not spent by the attempt.
    let (code, data) = h
        .call(call(
            "forecast",
            json!({"city": "Lima", "paymentId": payment_id}),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(code, -32043);
    assert!(
        data["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("pays for weather"),
        "{data}"
    );
    let result = h
        .call(call(
            "weather",
            json!({"city": "Lima", "paymentId": payment_id}),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(result.structured_content.as_ref().unwrap()["city"], "Lima");
    // The receipt names the payment: the hash the id begins with.
    assert_eq!(
        result.meta.as_ref().unwrap()[RECEIPT]["reference"],
        payment_id[..64]
    );
    // Once only.
    let (code, data) = h
        .call(call(
            "weather",
            json!({"city": "Lima", "paymentId": payment_id}),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(code, -32043);
    assert!(data["problem"]["detail"]
        .as_str()
        .unwrap()
        .contains("already been used"));
    // However it is spelled: the claim is the payment's, not the text's.
    let upper = payment_id.to_ascii_uppercase();
    let mixed: String = payment_id
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    for spelling in [upper, mixed] {
        let (code, data) = h
            .call(call(
                "weather",
                json!({"city": "Lima", "paymentId": spelling}),
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(code, -32043, "{spelling}: {data}");
        assert!(data["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("already been used"));
    }
    // A free-form mistake is a clear error.
    let (code, _) = h
        .call(call("create_payment", json!({"tool": "nope"}), None))
        .await
        .unwrap_err();
    assert_eq!(code, ErrorCode::INVALID_PARAMS.0);
    // An id another replica issued through a node this one does not
    // share: said so, not blamed on the store.
    let store = h.gateway.paywall().store();
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&payment_id[..64], &mut hash).unwrap();
    let issued = store.invoice(&hash).await.unwrap().unwrap();
    let elsewhere = gate402_store::InvoiceRecord {
        payment_hash: [7; 32],
        ..issued
    };
    store.put_invoice(&elsewhere).await.unwrap();
    let foreign = h.gateway.paywall().payment_ids().issue(&[7; 32]);
    match h
        .client
        .call_tool(call(
            "weather",
            json!({"city": "Lima", "paymentId": foreign}),
            None,
        ))
        .await
    {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INTERNAL_ERROR, "{e:?}");
            assert!(e.message.contains("did not issue"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unpaid_calls_share_the_cap_on_unpaid_invoices() {
    let h = start_limited(gate402_paywall::LimitsConfig {
        client_requests_per_second: None,
        service_requests_per_second: None,
        unpaid_invoices_per_minute: Some(2.0),
    })
    .await;
    h.call(call("create_payment", json!({"tool": "weather"}), None))
        .await
        .unwrap();
    let (code, _) = h
        .call(call("weather", json!({"city": "Oslo"}), None))
        .await
        .unwrap_err();
    assert_eq!(code, -32042);
    let (code, data) = h
        .call(call("weather", json!({"city": "Oslo"}), None))
        .await
        .unwrap_err();
    assert_eq!(code, -32029, "{data}");
    assert_eq!(data["httpStatus"], 429);
    assert!(data["retryAfter"].as_u64().unwrap() >= 1);
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_mcp_server_refuses_foreign_hosts_and_browser_origins() {
    let h = start().await;
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    });
    let post = |host: &str, origin: Option<&str>| {
        let mut request = h
            .http
            .post(format!("{}/mcp", h.base))
            .header("host", host)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let port = h.gateway.addr().port();
    // DNS rebinding: a page on evil.example resolved to 127.0.0.1.
    let rebound = post(&format!("evil.example:{port}"), None).await.unwrap();
    assert!(rebound.status().is_client_error(), "{}", rebound.status());
    let cross_site = post(&format!("127.0.0.1:{port}"), Some("https://evil.example"))
        .await
        .unwrap();
    assert!(
        cross_site.status().is_client_error(),
        "{}",
        cross_site.status()
    );
    let local = post(&format!("127.0.0.1:{port}"), None).await.unwrap();
    assert!(local.status().is_success(), "{}", local.status());
    // The loopback name written whole, with its root dot, is loopback too
    // (it got 403).
    let rooted = post(&format!("localhost.:{port}"), None).await.unwrap();
    assert!(rooted.status().is_success(), "{}", rooted.status());
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_take_every_session_nor_send_a_huge_body() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(upstream);
    config.mcp.max_sessions_per_client = 3;
    config.mcp.max_request_bytes = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let url = format!("http://{}/mcp", gateway.addr());
    let http = reqwest::Client::new();
    let initialize = |body: String| {
        http.post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let message = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    })
    .to_string();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let response = initialize(message.clone()).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        sessions.push(
            response.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let refused = initialize(message.clone()).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // Closing one gives its place back.
    let closed = http
        .delete(&url)
        .header("mcp-session-id", &sessions[0])
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    let again = initialize(message.clone()).await.unwrap();
    assert!(again.status().is_success(), "{}", again.status());
    // A body past the limit is refused before it is read whole.
    let huge = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(128 * 1024)
    );
    let too_big = http
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &sessions[1])
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    gateway.shutdown().await.unwrap();
}

/// A payment the operator revoked pays for no tool call, whether it is
/// presented as a `paymentId` or as a credential in `_meta`.
/// A tool whose upstream had the call and failed leaves its payment
/// unspent for a retry, but not forever: the third failure spends it, so
/// a call that makes the upstream fail buys at most three runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_whose_upstream_keeps_failing_spends_its_payment_on_the_third_failure() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let failing = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/boom",
        axum::routing::any(|| async {
            RUNS.fetch_add(1, SeqCst);
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "acted, then failed",
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let h = start_with(|config| {
        config
            .services
            .push(gate402_gateway::config::ServiceConfig::proxied(
                "boom", "/boom", 10, &failing,
            ));
        config.tools.push(ToolConfig {
            name: "boom".into(),
            description: "Acts, then fails".into(),
            service: "boom".into(),
            method: Some("GET".into()),
            path: None,
            input_schema: json!({"type": "object"}),
            price_sats: None,
        });
    })
    .await;
    let (code, data) = h.call(call("boom", json!({}), None)).await.unwrap_err();
    assert_eq!(code, -32042, "{data}");
    let credential = h.pay(&data).await;
    let tries = gate402_paywall::FAILURES_PER_PAYMENT as usize;
    for attempt in 1..=tries {
        let (code, data) = h
            .call(call("boom", json!({}), Some(credential.clone())))
            .await
            .unwrap_err();
        assert_eq!(
            code,
            ErrorCode::INTERNAL_ERROR.0,
            "attempt {attempt}: {data}"
        );
    }
    let (code, data) = h
        .call(call("boom", json!({}), Some(credential)))
        .await
        .unwrap_err();
    assert_eq!(code, -32043, "spent after {tries} failures: {data}");
    assert!(
        data["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("already been used"),
        "{data}"
    );
    assert_eq!(
        RUNS.load(SeqCst),
        tries,
        "the upstream ran {tries} times, no more"
    );
}

#[tokio::test]
async fn a_revoked_payment_pays_for_no_tool_call() {
    let h = start().await;
    let created = h
        .call(call("create_payment", json!({"tool": "weather"}), None))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    let payment_id = created["paymentId"].as_str().unwrap().to_owned();
    pay_via(&h.http, &h.base, created["invoice"].as_str().unwrap())
        .await
        .unwrap();
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&payment_id[..64], &mut hash).unwrap();
    h.gateway.paywall().revoke([hash]);
    let (code, data) = h
        .call(call(
            "weather",
            json!({"city": "Lima", "paymentId": payment_id}),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(code, -32043, "{data}");
    assert!(
        data["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{data}"
    );

    let (_, challenge) = h
        .call(call("weather", json!({"city": "Lima"}), None))
        .await
        .unwrap_err();
    let credential = h.pay(&challenge).await;
    let invoice = challenge["challenges"][0]["request"]["methodDetails"]["invoice"]
        .as_str()
        .unwrap();
    let paid = gate402_bolt11::Invoice::parse(invoice)
        .unwrap()
        .payment_hash();
    h.gateway.paywall().revoke([paid]);
    let (code, data) = h
        .call(call("weather", json!({"city": "Lima"}), Some(credential)))
        .await
        .unwrap_err();
    assert_eq!(code, -32043, "{data}");
    assert!(
        data["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{data}"
    );
}

/// A tool without a price of its own charges its service's price as the
/// service runs: when the operator changes the service (a SIGHUP or the
/// admin API install services this way), `tools/list`, discovery and the
/// next challenge follow; a credential bought at the old price is refused
/// and stays unspent; and the tools of a disabled service are not sold.
#[tokio::test(flavor = "multi_thread")]
async fn tools_follow_the_price_and_state_of_their_service() {
    let h = start().await;
    let weather = || json!({"city": "Oslo"});
    let (_, offered) = h.call(call("weather", weather(), None)).await.unwrap_err();
    assert_eq!(offered["challenges"][0]["request"]["amount"], "10");
    let bought_cheap = h.pay(&offered).await;

    let services = h.gateway.services_handle();
    let mut running = services.running();
    let at = running.iter().position(|s| s.name() == "weather").unwrap();
    let enabled = running[at].priced.auth;
    running[at].priced.price_sats = 25;
    services.set(&running).unwrap();

    let listed = h.client.list_all_tools().await.unwrap();
    for name in ["weather", "forecast"] {
        let tool = listed.iter().find(|t| t.name == name).unwrap();
        assert_eq!(
            tool.meta.as_ref().unwrap()["org.paymentauth/price"]["amount"],
            "25",
            "{name}"
        );
    }
    let described = h.described().await;
    assert_eq!(described["tools"][0]["price"]["amount"], "25");
    let (code, refused) = h
        .call(call("weather", weather(), Some(bought_cheap)))
        .await
        .unwrap_err();
    assert_eq!(code, -32043, "{refused}");
    assert_eq!(refused["challenges"][0]["request"]["amount"], "25");
    let created = h
        .call(call("create_payment", json!({"tool": "forecast"}), None))
        .await
        .unwrap();
    assert_eq!(created.structured_content.unwrap()["amountSats"], 25);
    let bought = h.pay(&refused).await;
    let served = h.call(call("weather", weather(), Some(bought))).await;
    assert!(served.is_ok(), "{served:?}");

    running[at].priced.auth = gate402_paywall::Auth::Disabled;
    services.set(&running).unwrap();
    let listed = h.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["translate", "create_payment"]);
    for params in [
        call("weather", weather(), None),
        call("create_payment", json!({"tool": "forecast"}), None),
    ] {
        let message = h.refused(params).await;
        assert!(message.contains("disabled"), "{message}");
    }
    // Enabled again, at its price then.
    running[at].priced.auth = enabled;
    services.set(&running).unwrap();
    let (_, offered) = h.call(call("weather", weather(), None)).await.unwrap_err();
    assert_eq!(offered["challenges"][0]["request"]["amount"], "25");
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

/// A reload (SIGHUP) sells the file's `[[tools]]` as now written: a tool
/// added is listed and charged its own price, one changed is described and
/// priced anew, and one removed is no longer sold.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_sells_the_tools_as_the_file_now_writes_them() {
    let h = start().await;
    let mut config = h.config.clone();
    config.tools.retain(|t| t.name != "forecast");
    let translate = config
        .tools
        .iter_mut()
        .find(|t| t.name == "translate")
        .unwrap();
    translate.description = "Translation, now with a price of its own".into();
    translate.price_sats = Some(7);
    config.tools.push(ToolConfig {
        name: "weather_now".into(),
        description: "The weather this minute".into(),
        service: "weather".into(),
        method: None,
        path: None,
        input_schema: json!({"type": "object", "required": ["city"]}),
        price_sats: Some(3),
    });
    let later = h.gateway.reloader().reload(&config).unwrap();
    assert!(later.is_empty(), "{later:?}");

    let listed = h.client.list_all_tools().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        ["weather", "translate", "weather_now", "create_payment"]
    );
    let price = |name: &str| {
        let tool = listed.iter().find(|t| t.name == name).unwrap();
        tool.meta.as_ref().unwrap()["org.paymentauth/price"]["amount"].clone()
    };
    assert_eq!(price("weather"), "10");
    assert_eq!(price("translate"), "7");
    assert_eq!(price("weather_now"), "3");
    let translate = listed.iter().find(|t| t.name == "translate").unwrap();
    assert!(
        translate
            .description
            .as_deref()
            .unwrap()
            .starts_with("Translation, now with a price of its own"),
        "{translate:?}"
    );
    let now = listed.iter().find(|t| t.name == "weather_now").unwrap();
    assert_eq!(now.input_schema["required"], json!(["city"]));
    let described = h.described().await;
    assert!(
        described["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "weather_now" && t["price"]["amount"] == "3"),
        "{described}"
    );

    let message = h
        .refused(call("forecast", json!({"city": "Oslo"}), None))
        .await;
    assert!(message.contains("no tool named"), "{message}");
    let (code, offered) = h
        .call(call("weather_now", json!({"city": "Oslo"}), None))
        .await
        .unwrap_err();
    assert_eq!(code, -32042);
    assert_eq!(offered["challenges"][0]["request"]["amount"], "3");
    let bought = h.pay(&offered).await;
    let served = h
        .call(call("weather_now", json!({"city": "Oslo"}), Some(bought)))
        .await
        .unwrap();
    assert!(served.structured_content.is_some(), "{served:?}");
    // Its service removed, a tool the file still names is not made, and
    // a call says why.
    let services = h.gateway.services_handle();
    let mut running = services.running();
    running.retain(|s| s.name() != "translate");
    services.set(&running).unwrap();
    let message = h
        .refused(call("translate", json!({"text": "hi"}), None))
        .await;
    assert!(message.contains("removed"), "{message}");
    // Its service made a prefix by the admin API, a tool without a path
    // of its own is not sold (the file's check would refuse it).
    let at = running.iter().position(|s| s.name() == "weather").unwrap();
    running[at].priced.path = gate402_paywall::route::PathPattern::Prefix("/api/weather/".into());
    services.set(&running).unwrap();
    let listed = h.client.list_all_tools().await.unwrap();
    assert!(!listed.iter().any(|t| t.name == "weather"), "{listed:?}");
    let message = h
        .refused(call("weather", json!({"city": "Oslo"}), None))
        .await;
    assert!(message.contains("prefix"), "{message}");
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

/// A tool on a service whose price depends on the request is charged
/// what the request the call makes costs over HTTP (its arguments as the
/// query): a dear call is not bought at the service's base price, through
/// either way of paying; and an argument naming a method (`_method`) is
/// refused before anything is paid.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_is_charged_what_its_request_costs_over_http() {
    let h =
        start_priced("[[services.prices]]\nquery = { city = \"Tokyo\" }\nprice_sats = 40").await;
    let city = |name: &str| json!({ "city": name });
    // Listed at the price no rule changes, saying its arguments may.
    let listed = h.client.list_all_tools().await.unwrap();
    let weather = listed.iter().find(|t| t.name == "weather").unwrap();
    let described = weather.description.as_deref().unwrap_or_default();
    assert!(
        described.contains("10 sat per call unless its arguments are priced otherwise"),
        "{described}"
    );
    let fixed = listed.iter().find(|t| t.name == "translate").unwrap();
    assert!(
        !fixed
            .description
            .as_deref()
            .unwrap_or_default()
            .contains("unless"),
        "{fixed:?}"
    );

    let (_, cheap) = h
        .call(call("weather", city("Oslo"), None))
        .await
        .unwrap_err();
    assert_eq!(cheap["challenges"][0]["request"]["amount"], "10");
    let (_, dear) = h
        .call(call("weather", city("Tokyo"), None))
        .await
        .unwrap_err();
    assert_eq!(dear["challenges"][0]["request"]["amount"], "40");
    // Bought for a cheap call, refused for a dear one (and kept unspent).
    let bought_cheap = h.pay(&cheap).await;
    let (code, refused) = h
        .call(call("weather", city("Tokyo"), Some(bought_cheap.clone())))
        .await
        .unwrap_err();
    assert_eq!(code, -32043, "{refused}");
    assert_eq!(refused["challenges"][0]["request"]["amount"], "40");
    h.call(call("weather", city("Oslo"), Some(bought_cheap)))
        .await
        .unwrap();
    let bought = h.pay(&dear).await;
    h.call(call("weather", city("Tokyo"), Some(bought)))
        .await
        .unwrap();

    // paymentId: priced by the arguments it is created for; one made
    // without them is for the base price, and pays for no dear call.
    let created = h
        .call(call(
            "create_payment",
            json!({"tool": "weather", "arguments": city("Tokyo")}),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(created.structured_content.unwrap()["amountSats"], 40);
    let base = h
        .call(call("create_payment", json!({"tool": "weather"}), None))
        .await
        .unwrap()
        .structured_content
        .unwrap();
    assert_eq!(base["amountSats"], 10);
    pay_via(&h.http, &h.base, base["invoice"].as_str().unwrap())
        .await
        .unwrap();
    let (code, refused) = h
        .call(call(
            "weather",
            json!({"city": "Tokyo", "paymentId": base["paymentId"]}),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(code, -32043, "{refused}");
    assert!(
        refused["problem"]["detail"]
            .as_str()
            .unwrap()
            .contains("less than the price"),
        "{refused}"
    );

    let message = h
        .refused(call(
            "weather",
            json!({"city": "Oslo", "_method": "DELETE"}),
            None,
        ))
        .await;
    assert!(message.contains("_method"), "{message}");
    // An argument wrapping the dear value (its query would read
    // `["Tokyo"]`) is refused, not charged the base price: by the tool's
    // schema here (a string), by the price rules where the schema allows
    // it (what HTTP refuses).
    let message = h
        .refused(call("weather", json!({"city": ["Tokyo"]}), None))
        .await;
    assert!(message.contains("argument /city"), "{message}");
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

/// A tool's price follows the services as they run: a service the admin
/// API adds in front of the tool's path (a dearer one) takes the tool off
/// sale rather than leave that path on sale at the old price; and a pricer
/// is told the name of the service the tool calls, as over HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_is_not_sold_below_what_http_charges_after_a_change() {
    // A pricer that knows the weather service by name, and nothing else.
    let pricer = axum::Router::new().route(
        "/price",
        axum::routing::post(|body: axum::Json<Value>| async move {
            let price = if body["service"] == "weather" { 40 } else { 3 };
            axum::Json(json!({ "price": price }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pricer_url = format!("http://{}/price", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, pricer).await.unwrap() });
    let h = start_priced(&format!(
        "pricer = {{ url = \"{pricer_url}\", fallback = 10 }}"
    ))
    .await;
    let city = json!({"city": "Oslo"});
    let (_, offered) = h
        .call(call("weather", city.clone(), None))
        .await
        .unwrap_err();
    assert_eq!(offered["challenges"][0]["request"]["amount"], "40");

    // A dearer service in front of the tool's path for GET, the tool's
    // service taking POST there too (a service left never reached is
    // refused): over HTTP the tool's request is the dearer one's; the
    // tool is no longer sold.
    let services = h.gateway.services_handle();
    let mut running = services.running();
    let weather = running.iter_mut().find(|s| s.name() == "weather").unwrap();
    weather.priced.methods = vec![axum::http::Method::GET, axum::http::Method::POST];
    let weather = weather.clone();
    let mut dear = gate402_gateway::config::ServiceConfig::proxied(
        "dear",
        "/api/weather",
        500,
        &weather.upstream.as_ref().unwrap().url,
    );
    dear.priced.description = "Dear".into();
    dear.priced.methods = vec![axum::http::Method::GET];
    running.insert(0, dear);
    services.set(&running).unwrap();
    let message = h.refused(call("weather", city.clone(), None)).await;
    assert!(message.contains("not served now"), "{message}");
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

/// A page of a `cors_origins` origin may use `/mcp` from a browser: the
/// loopback gateway lets it in (it lets in no page by default), and its
/// script may read the `Mcp-Session-Id` that `initialize` opens.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_a_cors_origin_may_call_mcp() {
    const PAGE: &str = "https://app.example.com";
    let h = start_with(|config| config.server.cors_origins = vec![PAGE.into()]).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "page", "version": "1"}}});
    let send = |origin: &'static str| {
        h.http
            .post(format!("{}/mcp", h.base))
            .header("origin", origin)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
    };
    let page = send(PAGE).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers().contains_key("mcp-session-id"));
    let exposed = page.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.to_ascii_lowercase().contains("mcp-session-id"),
        "{exposed}"
    );
    // Only that origin: not another site, nor the same host on another
    // port or scheme.
    for other in [
        "https://evil.example",
        "https://app.example.com:9999",
        "http://app.example.com",
        "https://app.example.com.evil.example",
    ] {
        assert_eq!(send(other).await.unwrap().status(), 403, "{other}");
    }
    // An allowed one first and another after it: refused.
    let twice = h
        .http
        .post(format!("{}/mcp", h.base))
        .header("origin", PAGE)
        .header("origin", "https://evil.example")
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 403);
    h.client.cancel().await.unwrap();
    h.gateway.shutdown().await.unwrap();
}

/// Two calls with one JSON-RPC id at once in one session (which MCP
/// forbids): the library answers both on one channel, and a paid call's
/// result was lost after its payment was spent, the session with it.
/// The second is refused at once (`-32600`); the first is answered with
/// its result, its payment spent once, and the session lives on.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_in_flight_in_its_session_is_refused_and_the_first_answered() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::any(|| async {
            RUNS.fetch_add(1, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
            "slow answer"
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let h = start_with(|config| {
        config
            .services
            .push(gate402_gateway::config::ServiceConfig::proxied(
                "slow", "/slow", 10, &slow,
            ));
        config.tools.push(ToolConfig {
            name: "slow".into(),
            description: "Thinks".into(),
            service: "slow".into(),
            method: Some("GET".into()),
            path: None,
            input_schema: json!({"type": "object"}),
            price_sats: None,
        });
    })
    .await;
    let (code, data) = h.call(call("slow", json!({}), None)).await.unwrap_err();
    assert_eq!(code, -32042, "{data}");
    let credential = h.pay(&data).await;

    let url = format!("{}/mcp", h.base);
    let post = |session: Option<String>, message: Value| {
        let mut request = h
            .http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        async move {
            let response = request.body(message.to_string()).send().await.unwrap();
            let session = response
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned());
            (session, response.text().await.unwrap())
        }
    };
    let (session, _) = post(
        None,
        json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        }),
    )
    .await;
    let session = session.expect("a session");
    post(
        Some(session.clone()),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let tool_call = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "slow", "arguments": {}, "_meta": {CREDENTIAL: credential}},
    });
    let first = tokio::spawn(post(Some(session.clone()), tool_call.clone()));
    // The second is sent while the upstream has the first (3 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while RUNS.load(SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (_, second) = post(Some(session.clone()), tool_call.clone()).await;
    assert!(second.contains("-32600"), "{second}");
    assert!(second.contains("still being answered"), "{second}");
    let (_, first) = first.await.unwrap();
    assert!(first.contains("slow answer"), "{first}");
    assert_eq!(RUNS.load(SeqCst), 1);
    // The session lives on, and the id may be used again once answered.
    let (_, again) = post(
        Some(session),
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
    )
    .await;
    assert!(again.contains("\"slow\""), "{again}");
}

/// A JSON body that is no one JSON-RPC message (a batch array, a member
/// named twice) is a bad request (`400`, `-32600`), not a wrong media
/// type (`415`, as the MCP library answers it).
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_no_one_message_is_a_bad_request() {
    let h = start().await;
    let url = format!("{}/mcp", h.base);
    for body in [
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{},"params":{}}"#,
    ] {
        let response = h
            .http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let said: Value = response.json().await.unwrap();
        assert_eq!(said["error"]["code"], -32600, "{said}");
    }
}

/// A member named twice deeper in a message (in a tool's `arguments`, in
/// `_meta`, in `params`) is refused as one at its top is: the library
/// read the last (`"Tokyo"`), an upstream might read the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_named_twice_anywhere_in_a_message_is_refused() {
    let h = start().await;
    let url = format!("{}/mcp", h.base);
    let post = |body: String, session: Option<&str>| {
        let mut request = h
            .http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-03-26")
            .body(body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let opened = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "twice", "version": "0"}}})
        .to_string(),
        None,
    )
    .await
    .unwrap();
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
        Some(&session),
    )
    .await
    .unwrap();
    for body in [
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"weather","arguments":{"city":"Oslo","city":"Tokyo"}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"weather","arguments":{"city":"Oslo"},"_meta":{"a":1,"a":2}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"weather","name":"translate","arguments":{"city":"Oslo"}}}"#,
    ] {
        let response = post(body.to_owned(), Some(&session)).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let said: Value = response.json().await.unwrap();
        assert_eq!(said["error"]["code"], -32600, "{said}");
    }
}
