//! `gate402 mcp call`: call a paid MCP tool, paying under the same caps,
//! wallet and ledger as `gate402 get`; and `gate402 mcp-proxy`: the
//! paywall in front of another MCP server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use gate402_client::{McpCallError, ToolCall};
use gate402_gateway::config::McpProxyConfig;
use gate402_gateway::GatewayConfig;
use serde_json::json;

use crate::fetch::{print_offer, report_payment, run_paying, PayOptions, Timeouts};

/// `gate402 mcp …`.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Call a tool of an MCP server (streamable HTTP), paying what it asks.
    Call(CallArgs),
}

/// `gate402 mcp call URL TOOL --args JSON`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The server's MCP endpoint (`https://host/mcp`).
    #[arg(value_parser = crate::fetch::valid(crate::fetch::http_url))]
    pub url: String,
    /// The tool's name.
    pub tool: String,
    /// The arguments, a JSON object.
    #[arg(long, default_value = "{}", value_name = "JSON", value_parser = crate::fetch::valid(json_object))]
    pub args: String,
    /// Print the whole result (content, structuredContent, _meta) and the payment as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long the server may take.
    #[command(flatten)]
    pub timeouts: Timeouts,
    /// Spending limits and the wallet.
    #[command(flatten)]
    pub pay: PayOptions,
}

/// An `--args` value: a JSON object.
fn json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        _ => bail!("--args must be a JSON object, as in --args '{{\"city\": \"Oslo\"}}'"),
    }
}

/// Runs an `mcp` command.
pub async fn run(command: &McpCommand, data_dir: &Path) -> ExitCode {
    match command {
        McpCommand::Call(args) => {
            run_paying(
                data_dir,
                args.json,
                args.timeouts.max_time,
                call(args, data_dir),
            )
            .await
        }
    }
}

async fn call(args: &CallArgs, data_dir: &Path) -> Result<()> {
    let url = crate::fetch::http_url(&args.url)?;
    let arguments = json_object(&args.args)?;
    // A tool call pays per call: MCP has no session door.
    let payer = args
        .pay
        .payer(None, Some(false), args.timeouts, false, data_dir)
        .await?;
    let http = args
        .timeouts
        .http_client(false, gate402_client::mcp_redirect_policy())?;
    let within = (args.timeouts.read_timeout > 0)
        .then(|| std::time::Duration::from_secs(args.timeouts.read_timeout));
    let called = match payer
        .call_tool(http, within, &url, &args.tool, arguments)
        .await
    {
        // Paid, then failed: the payment is told all the same.
        Err(McpCallError::AfterPayment { error, payment }) => {
            if !args.json {
                report_payment(&payment);
            }
            return Err(McpCallError::AfterPayment { error, payment }.into());
        }
        called => called?,
    };
    let (result, payment, earlier) = match called {
        ToolCall::Offer(offer) => return print_offer(&offer),
        ToolCall::Result(result, payment, earlier) => (result, payment, earlier),
    };
    if args.json {
        // Answered with a credential an earlier call paid for: which
        // payment, as `get --json` says it (`payment` null).
        let earlier = earlier.map(|e| json!({"payment_hash": e.payment_hash, "via": e.via}));
        let report = json!({"result": result, "payment": payment, "earlier_payment": earlier});
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some(paid) = &payment {
            report_payment(paid);
        }
        if let Some(earlier) = &earlier {
            errln!(
                "gate402: answered with the credential an earlier call bought (payment {}); nothing charged now",
                earlier.payment_hash
            );
        }
        for block in &result.content {
            match block.as_text() {
                Some(text) => outln!("{}", text.text),
                None => outln!("{}", serde_json::to_string(block)?),
            }
        }
    }
    if result.is_error == Some(true) {
        bail!("the tool reported an error");
    }
    Ok(())
}

/// `gate402 mcp-proxy`: the paywall in front of another MCP server.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// A gateway config with an `[mcp_proxy]` table (and listen,
    /// lightning, store, mpp as for `serve`).
    #[arg(long, short, env = "GATE402_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The upstream MCP server over streamable HTTP (instead of the config's).
    #[arg(long, value_name = "URL", conflicts_with = "command")]
    pub url: Option<String>,
    /// The price of every tool, in satoshis (instead of the config's default).
    #[arg(long, value_name = "SATS")]
    pub price: Option<u64>,
    /// Listen address, overriding the config's.
    #[arg(long, value_name = "ADDR", value_parser = crate::serve::listen_addr)]
    pub listen: Option<SocketAddr>,
    /// The admin API's listen address, overriding `[admin] listen`.
    #[arg(long, value_name = "ADDR", value_parser = crate::serve::listen_addr)]
    pub admin_listen: Option<SocketAddr>,
    /// The upstream MCP server as a command speaking stdio, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Builds the config and runs the gateway with `/mcp` in front of the upstream.
pub async fn proxy(args: &ProxyArgs, data_dir: &Path) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => GatewayConfig::load(path).map_err(|e| anyhow!("{}", e.in_file(path)))?,
        None => GatewayConfig::default_with_services(Vec::new()),
    };
    with_args(args, &mut config);
    let proxy = config.mcp_proxy.as_ref();
    if proxy.is_none_or(|p| p.url.is_none() && p.command.is_none()) {
        bail!("no upstream MCP server: give --url URL, `-- COMMAND ARGS…`, or [mcp_proxy] in --config");
    }
    if proxy.is_none_or(|p| p.default_price_sats.is_none() && p.prices.is_empty()) {
        bail!("no prices: give --price SATS or [mcp_proxy] prices in --config (every tool would be free)");
    }
    let banner = |url: &str| {
        format!(
            "gate402 mcp-proxy on {url}/mcp ({})",
            match &config.mcp_proxy {
                Some(McpProxyConfig {
                    url: Some(upstream),
                    ..
                }) => format!("upstream {upstream}"),
                Some(McpProxyConfig {
                    command: Some(command),
                    ..
                }) => format!("upstream `{}` on stdio", command.join(" ")),
                _ => String::new(),
            }
        )
    };
    let kept = args.clone();
    crate::serve::serve(
        &config,
        args.config.clone(),
        Some(&banner),
        Box::new(move |config| with_args(&kept, config)),
        data_dir,
    )
    .await
}

/// `config` as `args` change it (the upstream server, its price, where
/// to listen): when it starts, and when a reload reads the file again.
fn with_args(args: &ProxyArgs, config: &mut GatewayConfig) {
    let mut proxy = config.mcp_proxy.take().unwrap_or_default();
    if let Some(url) = &args.url {
        proxy = McpProxyConfig {
            url: Some(url.clone()),
            command: None,
            ..proxy
        };
    }
    if !args.command.is_empty() {
        proxy = McpProxyConfig {
            url: None,
            command: Some(args.command.clone()),
            ..proxy
        };
    }
    if let Some(price) = args.price {
        proxy.default_price_sats = Some(price);
    }
    config.mcp_proxy = Some(proxy);
    crate::serve::listen_at(config, args.listen, args.admin_listen);
}
