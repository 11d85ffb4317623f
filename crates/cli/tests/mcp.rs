//! Paid MCP tools from the outside: the official TypeScript MCP SDK as a
//! client of the gateway's `/mcp`, `gate402 mcp call` under the client's
//! caps and ledger, and `gate402 mcp-proxy` in front of an MCP server
//! built here with rmcp.

mod common;

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{gate402, gate402_with_env, ok_json, payments, Launch, ServeProcess};
use gate402_gateway::{demo, Gateway};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::{json, Value};

async fn demo_gateway() -> (Gateway, String) {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let config = demo::config(upstream);
    let dir = tempfile::tempdir().unwrap().keep();
    let gateway = Gateway::start(&config, &dir).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    (gateway, base)
}

/// The TypeScript SDK, installed from npm once into the cache.
fn typescript_sdk() -> PathBuf {
    let cache = std::env::var_os("GATE402_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_cache().join("gate402"));
    let dir = cache.join("npm").join("mcp-ts");
    let sdk = dir.join("node_modules/@modelcontextprotocol/sdk");
    if !sdk.join("package.json").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = common::manifest_dir().join("tests/mcp-ts/package.json");
        std::fs::copy(manifest, dir.join("package.json")).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .expect("npm is needed to install @modelcontextprotocol/sdk");
        assert!(
            status.success(),
            "npm install @modelcontextprotocol/sdk failed"
        );
    }
    sdk
}

fn dirs_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_typescript_mcp_sdk_pays_for_tools() {
    let sdk = tokio::task::spawn_blocking(typescript_sdk).await.unwrap();
    let (gateway, base) = demo_gateway().await;
    let script = common::manifest_dir().join("tests/mcp-ts/client.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .arg(&base)
        .arg(&sdk)
        .output()
        .await
        .expect("node is needed for the TypeScript SDK test");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["tools"],
        json!([
            {"name": "weather", "price": "10"},
            {"name": "translate", "price": "25"},
            {"name": "create_payment", "price": null},
        ])
    );
    assert_eq!(report["unpaid"], json!({"code": -32042, "httpStatus": 402}));
    let weather: Value = serde_json::from_str(report["paid"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(weather["city"], "Oslo");
    assert_eq!(
        report["paid"]["receipt"]["challengeId"],
        report["paid"]["challengeId"]
    );
    assert_eq!(report["paid"]["receipt"]["status"], "success");
    assert_eq!(
        report["replay"],
        json!({"code": -32043, "freshChallenge": true})
    );
    assert_eq!(report["crossTool"]["code"], -32043);
    assert_eq!(report["paymentId"]["amountSats"], 10);
    assert!(report["paymentId"]["content"]
        .as_str()
        .unwrap()
        .contains("Lima"));
    assert_eq!(report["paymentId"]["receipt"]["status"], "success");
    assert_eq!(report["paymentIdReplay"]["code"], -32043);
    assert_eq!(report["paymentIdOtherTool"]["code"], -32043);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn gate402_mcp_call_pays_within_the_caps() {
    let (gateway, base) = demo_gateway().await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let mcp = format!("{base}/mcp");
    let report = ok_json(data, &weather_in_oslo(&mcp)).await;
    assert_eq!(report["result"]["structuredContent"]["city"], "Oslo");
    let receipt = &report["result"]["_meta"]["org.paymentauth/receipt"];
    assert_eq!(receipt["status"], "success");
    assert_eq!(report["payment"]["scheme"], "Payment");
    let paid = payments(data).await;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0]["amount_msat"], 10_000);
    assert_eq!(paid[0]["status"], "paid");
    assert!(paid[0]["receipt"].as_str().unwrap().contains("challengeId"));
    assert!(paid[0]["url"].as_str().unwrap().ends_with("/mcp#weather"));

    // Over the cap: refused before paying, with get's exit code.
    let out = gate402(
        data,
        &[
            "mcp",
            "call",
            &mcp,
            "translate",
            "--args",
            r#"{"text":"a","to":"fr"}"#,
            "--max-cost",
            "20",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --no-pay: the price, nothing paid.
    let offer = ok_json(
        data,
        &[
            "mcp",
            "call",
            &mcp,
            "translate",
            "--args",
            r#"{"text":"a","to":"fr"}"#,
            "--no-pay",
        ],
    )
    .await;
    assert_eq!(offer["price_sats"], 25);
    assert_eq!(offer["schemes"], json!(["MPP"]));
    // A tool the server does not have: its error, nothing paid.
    let out = gate402(data, &["mcp", "call", &mcp, "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tool named"));
    assert_eq!(payments(data).await.len(), 1);
    gateway.shutdown().await.unwrap();
}

/// An upstream whose GET `path` fails (502) its first call and answers
/// `answer <n>` to the n-th after; its address and the calls counted.
async fn failing_once(
    path: &'static str,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU32>) {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        path,
        axum::routing::get(move || async move {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == 1 {
                (axum::http::StatusCode::BAD_GATEWAY, "down".to_owned())
            } else {
                (axum::http::StatusCode::OK, format!("answer {n}"))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    (upstream, calls)
}

/// A paid tool call whose upstream fails gets an error that says the
/// payment was not spent: `gate402 mcp call` tells the payment, keeps the
/// credential, and the next call of the tool sends it again instead of
/// paying; once a result came, it is spent and the next call pays.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_whose_upstream_failed_is_answered_on_the_next_call_unpaid() {
    let (upstream, calls) = failing_once("/flaky").await;
    let (demo_upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(demo_upstream);
    config
        .services
        .push(gate402_gateway::config::ServiceConfig::proxied(
            "flaky",
            "/flaky",
            10,
            &format!("http://{upstream}"),
        ));
    config.tools.push(gate402_gateway::config::ToolConfig {
        name: "flaky".into(),
        description: "Fails once".into(),
        service: "flaky".into(),
        method: None,
        path: None,
        input_schema: json!({"type": "object"}),
        price_sats: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let mcp = format!("http://{}/mcp", gateway.addr());
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let args = ["mcp", "call", &mcp, "flaky"];
    let call = || gate402(data, &args);

    let out = call().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was not spent"), "{stderr}");
    assert!(
        stderr.contains("paid 10 sat"),
        "the payment is told: {stderr}"
    );
    assert_eq!(payments(data).await.len(), 1);

    let out = call().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer 2\n");
    assert!(!stderr.contains("paid"), "{stderr}");
    let paid = payments(data).await;
    assert_eq!(paid.len(), 1, "one payment for one answer: {paid:?}");
    assert!(paid[0]["receipt"].as_str().unwrap().contains("challengeId"));

    let out = call().await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer 3\n");
    assert_eq!(payments(data).await.len(), 2, "spent: the next call pays");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    gateway.shutdown().await.unwrap();
}

/// A kept tool credential goes only with the arguments it was bought for
/// (a tool's price may depend on them): a dearer call pays for itself and
/// leaves it kept; the cheaper call later is answered with it, unpaid.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_tool_credential_goes_only_with_its_arguments() {
    let (upstream, _) = failing_once("/priced").await;
    let file = format!(
        "[[services]]\nname = \"priced\"\npath = \"/priced\"\nupstream = \"http://{upstream}\"\nprice_sats = 10\n\
         [[services.prices]]\nquery = {{ q = \"big\" }}\nprice_sats = 50\n\
         [[tools]]\nname = \"priced\"\ndescription = \"Priced by q\"\nservice = \"priced\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = ServeProcess::start_with(dir.path(), &file, Launch::default()).await;
    let mcp = format!("{}/mcp", gateway.base);
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let call = |q: &'static str| {
        let mcp = mcp.clone();
        async move {
            let args = format!("{{\"q\":\"{q}\"}}");
            gate402(data, &["mcp", "call", &mcp, "priced", "--args", &args]).await
        }
    };
    let out = call("small").await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = call("big").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paid: Vec<u64> = payments(data)
        .await
        .iter()
        .map(|p| p["amount_msat"].as_u64().unwrap())
        .collect();
    assert_eq!(paid, [10_000, 50_000]);
    let out = call("small").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("paid"), "{stderr}");
    assert_eq!(payments(data).await.len(), 2, "small was paid for once");
}

/// An MCP server of our own: `echo` (priced by the proxy) and `ping`
/// (free through it).
#[derive(Clone)]
struct EchoServer;

impl ServerHandler for EchoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = |v: Value| Arc::new(v.as_object().unwrap().clone());
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new(
                "echo",
                "Echoes its text",
                schema(json!({"type": "object", "properties": {"text": {"type": "string"}}})),
            ),
            Tool::new("ping", "Answers pong", schema(json!({"type": "object"}))),
            Tool::new(
                "hang",
                "Answers after a minute",
                schema(json!({"type": "object"})),
            ),
            Tool::new(
                "hang-once",
                "Answers after a minute the first time, at once after",
                schema(json!({"type": "object"})),
            ),
            // Named as the gateway's own tool: never listed by the proxy.
            Tool::new(
                "create_payment",
                "The upstream's own",
                schema(json!({"type": "object"})),
            ),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = match request.name.as_ref() {
            "echo" => request
                .arguments
                .and_then(|a| a.get("text").cloned())
                .and_then(|t| t.as_str().map(str::to_owned))
                .unwrap_or_default(),
            "ping" => "pong".to_owned(),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late".to_owned()
            }
            "hang-once" => {
                static CALLED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !CALLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                "answered".to_owned()
            }
            other => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Starts `gate402 mcp-proxy ARGS… --listen` on a free port; waits until
/// it describes its tools and returns its base URL and the description.
async fn start_proxy(data: &Path, args: &[&str]) -> (tokio::process::Child, String, Value) {
    start_proxy_with_env(data, args, &[]).await
}

/// [`start_proxy`] with `envs` set for the proxy.
async fn start_proxy_with_env(
    data: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (tokio::process::Child, String, Value) {
    let port = gate402_regtest::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (options, command) = match args.iter().position(|a| *a == "--") {
        Some(i) => args.split_at(i),
        None => (args, &[][..]),
    };
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .arg("mcp-proxy")
        .args(options)
        .args(["--listen", &listen])
        .args(command)
        .envs(envs.iter().copied())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    for _ in 0..150 {
        if let Ok(response) = http.get(format!("{base}/.well-known/mcp")).send().await {
            let described = response.json().await.unwrap();
            return (child, base, described);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gate402 mcp-proxy {args:?} did not come up");
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_proxy_charges_for_a_stdio_server() {
    let sdk = tokio::task::spawn_blocking(typescript_sdk).await.unwrap();
    let script = common::manifest_dir().join("tests/mcp-ts/stdio-server.mjs");
    let dir = tempfile::tempdir().unwrap();
    let (mut proxy, base, described) = start_proxy(
        &dir.path().join("gateway"),
        &[
            "--price",
            "3",
            "--",
            "node",
            script.to_str().unwrap(),
            sdk.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(described["tools"][0]["name"], "shout", "{described}");
    assert_eq!(described["tools"][0]["price"]["amount"], "3");
    let client = tempfile::tempdir().unwrap();
    let report = ok_json(
        client.path(),
        &[
            "mcp",
            "call",
            &format!("{base}/mcp"),
            "shout",
            "--args",
            r#"{"text":"over stdio"}"#,
            "--json",
        ],
    )
    .await;
    assert_eq!(report["result"]["content"][0]["text"], "OVER STDIO");
    assert_eq!(report["payment"]["amount_msat"], 3_000);
    // A server that exits is started again for the next call: the call
    // it died in fails (its payment unspent), the next is served.
    let crashed = gate402(
        client.path(),
        &["mcp", "call", &format!("{base}/mcp"), "crash"],
    )
    .await;
    assert!(!crashed.status.success());
    let mcp = format!("{base}/mcp");
    let again = ok_json(
        client.path(),
        &tool_call(&mcp, "shout", r#"{"text":"again"}"#),
    )
    .await;
    assert_eq!(again["result"]["content"][0]["text"], "AGAIN");
    proxy.start_kill().unwrap();
    let _ = proxy.wait().await;
}

/// A command's tools answer paying clients: it gets none of the proxy's
/// environment (its secrets) but what running a program needs, what
/// `pass_env` names and what `env` sets.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_proxy_gives_its_command_no_secrets() {
    let sdk = tokio::task::spawn_blocking(typescript_sdk).await.unwrap();
    let script = common::manifest_dir().join("tests/mcp-ts/stdio-server.mjs");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[mcp_proxy]\ncommand = [\"node\", {script:?}, {sdk:?}]\ndefault_price_sats = 2\nenv = {{ GIVEN = \"${{PROXY_GIVEN}}\" }}\npass_env = [\"PASSED_ON\"]\n"
        ),
    )
    .unwrap();
    let (mut proxy, base, _) = start_proxy_with_env(
        &dir.path().join("gateway"),
        &["--config", config.to_str().unwrap()],
        &[
            ("GATEWAY_SECRET", "never-to-the-command"),
            ("PROXY_GIVEN", "given"),
            ("PASSED_ON", "passed"),
        ],
    )
    .await;
    let client = tempfile::tempdir().unwrap();
    let report = ok_json(
        client.path(),
        &tool_call(&format!("{base}/mcp"), "env", "{}"),
    )
    .await;
    let text = report["result"]["content"][0]["text"].as_str().unwrap();
    let (names, given) = text.split_once('|').unwrap();
    let names: Vec<&str> = names.split(',').collect();
    assert_eq!(given, "given", "{text}");
    assert!(
        names.contains(&"PASSED_ON") && names.contains(&"PATH"),
        "{text}"
    );
    assert!(!names.contains(&"GATEWAY_SECRET"), "{text}");
    assert!(!names.contains(&"PROXY_GIVEN"), "{text}");
    proxy.start_kill().unwrap();
    let _ = proxy.wait().await;
}

/// A server that never answers `initialize` does not hold the proxy's
/// start for ever: it stops with an error after `call_timeout_secs`.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_proxy_gives_up_a_server_that_never_initializes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[mcp_proxy]\ncommand = [\"sleep\", \"600\"]\ndefault_price_sats = 1\ncall_timeout_secs = 1\n",
    )
    .unwrap();
    let port = gate402_regtest::free_port();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gate402"))
            .arg("--data-dir")
            .arg(dir.path().join("gateway"))
            .args(["mcp-proxy", "--config", config.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("still starting after 60 s")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not answer initialize within 1 s"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_proxy_charges_for_the_tools_of_another_server() {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let upstream = StreamableHttpService::new(
        || Ok(EchoServer),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(
        axum::serve(listener, axum::Router::new().nest_service("/mcp", upstream)).into_future(),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[mcp_proxy]\nurl = \"{upstream_url}\"\ndefault_price_sats = 7\ncall_timeout_secs = 5\n[mcp_proxy.prices]\nping = 0\n"
        ),
    )
    .unwrap();
    let (mut proxy, base, described) = start_proxy(
        &dir.path().join("gateway"),
        &["--config", config.to_str().unwrap()],
    )
    .await;
    assert_eq!(described["tools"][0]["name"], "echo", "{described}");
    assert_eq!(described["tools"][0]["price"]["amount"], "7");
    assert_eq!(described["tools"][1]["price"], Value::Null, "ping is free");
    let names: Vec<&str> = described["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(!names.contains(&"create_payment"), "{names:?}");

    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let mcp = format!("{base}/mcp");
    let report = ok_json(
        data,
        &[
            "mcp",
            "call",
            &mcp,
            "echo",
            "--args",
            r#"{"text":"through the proxy"}"#,
            "--json",
        ],
    )
    .await;
    assert_eq!(report["result"]["content"][0]["text"], "through the proxy");
    assert_eq!(
        report["result"]["_meta"]["org.paymentauth/receipt"]["status"],
        "success"
    );
    assert_eq!(report["payment"]["amount_msat"], 7_000);
    let free = ok_json(data, &["mcp", "call", &mcp, "ping", "--json"]).await;
    assert_eq!(free["result"]["content"][0]["text"], "pong");
    assert_eq!(free["payment"], Value::Null);
    assert_eq!(payments(data).await.len(), 1, "only echo was paid for");
    // A call the upstream tool's input schema refuses is refused before
    // anything is charged.
    let out = gate402(
        data,
        &["mcp", "call", &mcp, "echo", "--args", r#"{"text":5}"#],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("argument /text"), "{stderr}");
    assert!(stderr.contains("nothing was charged"), "{stderr}");
    assert_eq!(
        payments(data).await.len(),
        1,
        "the refused call was not paid"
    );
    // A call the upstream never answers fails after call_timeout_secs,
    // its payment unspent (the client keeps it for the next call).
    let started = std::time::Instant::now();
    let out = gate402(data, &["mcp", "call", &mcp, "hang", "--json"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not answer within 5 s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    // --json names the payment made for it (the document said only the
    // error, and an agent took the call for unpaid).
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["error"]["exit_code"], 1, "{said}");
    let paid = said["payments"].as_array().unwrap();
    assert_eq!(paid.len(), 1, "{said}");
    assert_eq!(paid[0]["status"], "paid", "{said}");
    let tokens = gate402(data, &["tokens", "list"]).await;
    assert!(
        String::from_utf8_lossy(&tokens.stdout).contains("Payment"),
        "the unspent credential is kept"
    );
    // A call answered with the credential an earlier one paid for and did
    // not spend: nothing paid now, and --json says which payment answered
    // it (it said `payment: null` and nothing more).
    let out = gate402(data, &["mcp", "call", &mcp, "hang-once", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "the first call is not answered");
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = said["payments"][0]["payment_hash"].clone();
    assert!(first.is_string(), "{said}");
    let report = ok_json(data, &["mcp", "call", &mcp, "hang-once", "--json"]).await;
    assert_eq!(report["result"]["content"][0]["text"], "answered");
    assert_eq!(report["payment"], Value::Null, "{report}");
    assert_eq!(
        report["earlier_payment"],
        json!({"payment_hash": first, "via": "token"}),
        "{report}"
    );
    assert_eq!(payments(data).await.len(), 3, "echo, hang and hang-once");
    proxy.start_kill().unwrap();
    let _ = proxy.wait().await;
}

/// A tool whose description spans lines (as MCP servers' often do) is
/// paid for: its challenge's description could not be written as a
/// header's quoted string, and `mcp call` found no challenge offered.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_described_in_several_lines_is_paid_for() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[services]]\nname = \"weather\"\npath = \"/weather\"\nupstream = \"http://{upstream}\"\nprice_sats = 10\n[[tools]]\nname = \"weather\"\ndescription = \"\"\"The weather.\nGive a city.\"\"\"\nservice = \"weather\"\n"
    );
    let gateway = ServeProcess::start_with(dir.path(), &config, Launch::default()).await;
    let mcp = format!("{}/mcp", gateway.base);
    let client = tempfile::tempdir().unwrap();
    let out = gate402(client.path(), &weather_in_oslo(&mcp)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"]["structuredContent"]["city"], "Oslo");
    assert_eq!(report["payment"]["status"], "paid", "{report}");
}

/// Debug logs name what happened, never a credential: with
/// `RUST_LOG=debug` on both sides of a paid tool call, neither the
/// gateway's log nor `gate402 mcp call`'s stderr holds its preimage; and a
/// `paymentId` sent in a tool's arguments (a made-up one: it is logged, if
/// at all, as the request arrives, before it is checked) is not in the
/// gateway's log.
#[tokio::test(flavor = "multi_thread")]
async fn debug_logs_of_a_paid_tool_call_hold_no_credential() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[services]]\nname = \"weather\"\npath = \"/weather\"\nupstream = \"http://{upstream}\"\nprice_sats = 10\n[[tools]]\nname = \"weather\"\ndescription = \"The weather\"\nservice = \"weather\"\n"
    );
    let launch = Launch {
        rust_log: Some("debug".into()),
        ..Launch::default()
    };
    let gateway = ServeProcess::start_with(dir.path(), &config, launch).await;
    let mcp = format!("{}/mcp", gateway.base);
    let client = tempfile::tempdir().unwrap();
    let out = gate402_with_env(
        client.path(),
        &weather_in_oslo(&mcp),
        &[("RUST_LOG", "debug")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"]["structuredContent"]["city"], "Oslo");

    // A tool call with a paymentId, over plain JSON-RPC.
    let payment_id = format!("{}{}", "ab".repeat(32), "cd".repeat(16));
    let http = reqwest::Client::new();
    let post = |body: Value, session: Option<String>| {
        let mut request = http
            .post(&mcp)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-03-26")
            .body(body.to_string());
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let initialized = post(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "log-check", "version": "0"}}}),
        None,
    )
    .await
    .unwrap();
    let session = initialized.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    post(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        Some(session.clone()),
    )
    .await
    .unwrap();
    let called = post(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "weather", "arguments": {"city": "Oslo", "paymentId": payment_id}}}),
        Some(session),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        called.contains("-32602") || called.contains("-3204"),
        "{called}"
    );

    let gateway_log = gateway.log_text();
    for (who, log) in [
        ("gate402 mcp call", stderr.into_owned()),
        ("the gateway", gateway_log.clone()),
    ] {
        assert!(log.contains("DEBUG"), "{who}: debug logs were on:\n{log}");
        let leaks: Vec<&str> = log.lines().filter(|l| holds_a_preimage(l)).collect();
        assert!(
            leaks.is_empty(),
            "{who} logged a preimage:\n{}",
            leaks.join("\n")
        );
    }
    let leaks: Vec<&str> = gateway_log
        .lines()
        .filter(|l| l.contains(&payment_id))
        .collect();
    assert!(
        leaks.is_empty(),
        "the gateway logged a paymentId:\n{}",
        leaks.join("\n")
    );
}

/// Whether `line` holds a preimage's value: 64 hex digits shortly after
/// the word (a hint that names the field holds none).
fn holds_a_preimage(line: &str) -> bool {
    line.match_indices("preimage").any(|(at, _)| {
        let after: Vec<char> = line[at..].chars().skip(8).take(100).collect();
        after
            .windows(64)
            .any(|w| w.iter().all(char::is_ascii_hexdigit))
    })
}

/// `gate402 mcp call` of the demo's weather tool for Oslo, as JSON.
fn weather_in_oslo(mcp: &str) -> [&str; 7] {
    tool_call(mcp, "weather", r#"{"city":"Oslo"}"#)
}

/// `gate402 mcp call MCP TOOL --args ARGS --json`.
fn tool_call<'a>(mcp: &'a str, tool: &'a str, args: &'a str) -> [&'a str; 7] {
    ["mcp", "call", mcp, tool, "--args", args, "--json"]
}

/// Serves `EchoServer` over streamable HTTP at `/mcp` (and, moved, at
/// `/old` with a `307` to `/mcp`); returns its address.
async fn echo_server() -> std::net::SocketAddr {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let service = StreamableHttpService::new(
        || Ok(EchoServer),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let moved = || async {
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, "/mcp")],
        )
    };
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .route("/old", axum::routing::any(moved));
    tokio::spawn(axum::serve(listener, app).into_future());
    addr
}

/// A stalled MCP server does not hold `gate402 mcp call` for ever: a
/// server that accepts and says nothing, one that answers `initialize`
/// with an event stream of keep-alive comments and nothing else, and a
/// tool that answers nothing for a minute, are given up after
/// `--read-timeout` seconds.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_mcp_server_is_given_up_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/mcp", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let trickle = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trickle_url = format!("http://{}/mcp", trickle.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = trickle.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0; 8192];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    if socket.write_all(b"6\r\n: ka\n\n\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
    });
    let echo = format!("http://{}/mcp", echo_server().await);
    let data = tempfile::tempdir().unwrap();
    for (url, tool) in [
        (silent_url.as_str(), "echo"),
        (trickle_url.as_str(), "echo"),
        (echo.as_str(), "hang"),
    ] {
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(40),
            gate402(
                data.path(),
                &["mcp", "call", url, tool, "--read-timeout", "2"],
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{tool}: still waiting after 40 s"));
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{tool}: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(20), "{tool}");
        assert!(
            stderr.contains("timed out")
                || stderr.contains("timeout after")
                || stderr.contains("within 2 s"),
            "{tool}: {stderr}"
        );
    }
}

/// A moved MCP endpoint is followed only to its own origin (a `307` keeps
/// the call's body, which may hold a credential): another origin never
/// sees the call.
#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_call_follows_a_redirect_only_to_its_origin() {
    let echo = echo_server().await;
    let data = tempfile::tempdir().unwrap();
    let old = format!("http://{echo}/old");
    let moved = ok_json(data.path(), &tool_call(&old, "echo", r#"{"text":"moved"}"#)).await;
    assert_eq!(moved["result"]["content"][0]["text"], "moved");

    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn({
        let reached = reached.clone();
        async move {
            while let Ok(_socket) = elsewhere.accept().await {
                reached.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector_url = format!("http://{}/mcp", redirector.local_addr().unwrap());
    let away = move || async move {
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [(
                axum::http::header::LOCATION,
                format!("http://{elsewhere_addr}/mcp"),
            )],
        )
    };
    tokio::spawn(
        axum::serve(
            redirector,
            axum::Router::new().route("/mcp", axum::routing::any(away)),
        )
        .into_future(),
    );
    let out = gate402(data.path(), &["mcp", "call", &redirector_url, "echo"]).await;
    assert!(!out.status.success());
    assert!(
        !reached.load(std::sync::atomic::Ordering::SeqCst),
        "the call went to another origin"
    );

    // Redirected at the call itself (the session set up): not followed
    // either, and said without the MCP library's type names.
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_url = format!("http://{}/mcp", front.local_addr().unwrap());
    let relay = move |request: axum::extract::Request| async move {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        if String::from_utf8_lossy(&body).contains("tools/call") {
            let away = format!("http://{elsewhere_addr}/mcp");
            return axum::http::Response::builder()
                .status(axum::http::StatusCode::TEMPORARY_REDIRECT)
                .header(axum::http::header::LOCATION, away)
                .body(axum::body::Body::empty())
                .unwrap();
        }
        let mut sent = reqwest::Client::new().request(parts.method, format!("http://{echo}/mcp"));
        for (name, value) in &parts.headers {
            if name != axum::http::header::HOST {
                sent = sent.header(name, value);
            }
        }
        let answered = sent.body(body).send().await.unwrap();
        let mut answer = axum::http::Response::builder().status(answered.status());
        for (name, value) in answered.headers() {
            if name != axum::http::header::TRANSFER_ENCODING
                && name != axum::http::header::CONTENT_LENGTH
            {
                answer = answer.header(name, value);
            }
        }
        let body = answered.bytes().await.unwrap_or_default();
        answer.body(axum::body::Body::from(body)).unwrap()
    };
    tokio::spawn(
        axum::serve(
            front,
            axum::Router::new().route("/mcp", axum::routing::any(relay)),
        )
        .into_future(),
    );
    let out = gate402(
        data.path(),
        &tool_call(&front_url, "echo", r#"{"text":"x"}"#),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("307"), "{stderr}");
    assert!(!stderr.contains("rmcp::"), "{stderr}");
    assert!(
        !reached.load(std::sync::atomic::Ordering::SeqCst),
        "the call went to another origin"
    );
}

/// A call that pays with a `paymentId` pays with it or not at all: when
/// the gateway refuses the id (spent, not paid yet), `mcp call` reports
/// the refusal and pays no fresh charge (the gateway reads the id before
/// any credential, so a charge paid alongside it would be refused too and
/// lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_payment_id_is_reported_not_paid_over() {
    let (gateway, base) = demo_gateway().await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let mcp = format!("{base}/mcp");
    let created = ok_json(
        data,
        &tool_call(&mcp, "create_payment", r#"{"tool":"weather"}"#),
    )
    .await;
    let created = &created["result"]["structuredContent"];
    let payment_id = created["paymentId"].as_str().unwrap();
    let args = json!({"city": "Oslo", "paymentId": payment_id}).to_string();
    let argv = ["mcp", "call", &mcp, "weather", "--args", &args];
    let call = || gate402(data, &argv);

    let out = call().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not paid yet"), "{stderr}");
    assert!(payments(data).await.is_empty(), "paid over a paymentId");

    let invoice = created["invoice"].as_str().unwrap();
    let paid = gate402(data, &["sandbox", "pay", "--url", &base, invoice]).await;
    assert!(paid.status.success());
    let out = call().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Spent: the second call is refused, and nothing is paid for it.
    let out = call().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("paymentId"), "{stderr}");
    assert!(
        payments(data).await.is_empty(),
        "paid over a spent paymentId"
    );
    gateway.shutdown().await.unwrap();
}

/// A paid call cut short (`--max-time`) while the server still runs it
/// leaves its credential kept and held there: the next call of the tool
/// waits for it (the server's `retryAfter`) instead of failing with "being
/// used by another call", and is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_after_one_cut_short_waits_for_its_credential() {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = runs.clone();
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(move || async move {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            tokio::time::sleep(std::time::Duration::from_secs(8)).await;
            format!("answer {n}")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    let (demo_upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(demo_upstream);
    config
        .services
        .push(gate402_gateway::config::ServiceConfig::proxied(
            "slow",
            "/slow",
            10,
            &format!("http://{upstream}"),
        ));
    config.tools.push(gate402_gateway::config::ToolConfig {
        name: "slow".into(),
        description: "Thinks".into(),
        service: "slow".into(),
        method: None,
        path: None,
        input_schema: json!({"type": "object"}),
        price_sats: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let mcp = format!("http://{}/mcp", gateway.addr());
    let client = tempfile::tempdir().unwrap();
    let data = client.path();

    let out = gate402(data, &["mcp", "call", &mcp, "slow", "--max-time", "4"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(28), "{stderr}");
    assert!(stderr.contains("paid 10 sat"), "{stderr}");
    let out = gate402(data, &["mcp", "call", &mcp, "slow"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("answer"),
        "{stderr}"
    );
    gateway.shutdown().await.unwrap();
}
