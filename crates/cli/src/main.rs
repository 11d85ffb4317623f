//! `gate402`: the command-line front of the gate402 workspace.
//!
//! Subcommands are thin: each parses its arguments, calls into the library
//! crates, and turns errors into messages and exit codes. `anyhow` lives
//! here and nowhere below.

#[macro_use]
mod output;

mod admin;
mod client_config;
mod decode;
mod demo;
mod fetch;
mod mcp;
mod node;
mod report;
mod sandbox;
mod serve;
mod sessions;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gate402_gateway::telemetry::Telemetry;
use gate402_gateway::GatewayConfig;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lightning paywall for HTTP APIs: L402 and MPP over one invoice.
#[derive(Debug, Parser)]
#[command(name = "gate402", version, about, long_about = None)]
struct Cli {
    /// Where gate402 keeps its state (keys, tokens, receipts).
    #[arg(long, global = true, env = "GATE402_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Log format: text or json.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode a 402 artifact: a WWW-Authenticate, Authorization or
    /// Payment-Receipt value, a macaroon, or a BOLT11 invoice.
    Decode(decode::Args),
    /// Run the gateway: with no config, the sandbox in front of a demo API.
    Serve(serve::Args),
    /// Run the whole payment loop once and print each step.
    Demo(demo::Args),
    /// GET a URL, paying a 402 within --max-cost.
    Get(fetch::FetchArgs),
    /// POST to a URL, paying a 402 within --max-cost.
    Post(fetch::FetchArgs),
    /// PUT to a URL, paying a 402 within --max-cost.
    Put(fetch::FetchArgs),
    /// PATCH a URL, paying a 402 within --max-cost.
    Patch(fetch::FetchArgs),
    /// DELETE a URL, paying a 402 within --max-cost.
    Delete(fetch::FetchArgs),
    /// The L402 tokens `get` keeps for reuse.
    Tokens {
        #[command(subcommand)]
        command: fetch::TokensCommand,
    },
    /// Every payment `get` made, with its receipt, and totals per host.
    Receipts(fetch::ReceiptsArgs),
    /// The MPP sessions `get --session` opened: list them, close them.
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Paid MCP tools: `mcp call URL TOOL --args JSON`.
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
    },
    /// Put the paywall in front of another MCP server (stdio or HTTP).
    McpProxy(mcp::ProxyArgs),
    /// Operate the embedded ldk Lightning node.
    Node {
        /// Config file with an `[lightning]` table, `backend = "ldk"`.
        #[arg(long, short, env = "GATE402_CONFIG", value_name = "FILE")]
        config: PathBuf,
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// A running gateway's admin API: services, prices, revenue, tokens,
    /// sessions, the node, a dashboard login link.
    Admin(admin::Args),
    /// The sandbox backend's payer (test money).
    Sandbox {
        #[command(subcommand)]
        command: sandbox::SandboxCommand,
    },
}

/// Exit code for input that cannot be decoded (the same as a usage error).
pub const EXIT_MALFORMED: u8 = 2;

impl Cli {
    /// The data directory: `--data-dir`, else `GATE402_DATA_DIR`, else the
    /// platform's data directory (`~/.local/share/gate402` on Linux).
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir()
                .map(|d| d.join("gate402"))
                .ok_or_else(|| anyhow::anyhow!("no platform data directory; pass --data-dir"))?,
        };
        // Said of the directory, not of the first file read in it.
        if dir.exists() && !dir.is_dir() {
            anyhow::bail!(
                "the data dir {} is not a directory (--data-dir or GATE402_DATA_DIR)",
                dir.display()
            );
        }
        Ok(dir)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Decode(args) => return decode::run(args),
        Command::Serve(args) if args.check => return serve::check(args),
        Command::Serve(args) if args.example_config => {
            use std::io::Write as _;
            // A closed reader (`| head`) was given what it asked for.
            let _ = std::io::stdout().write_all(serve::EXAMPLE_CONFIG.as_bytes());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    // The demo prints its own story; only problems are logged over it.
    let quiet = !matches!(
        cli.command,
        Command::Serve(_) | Command::Node { .. } | Command::McpProxy(_)
    );
    // A gateway's config is read first: its [telemetry] shapes the log.
    let (loaded, telemetry) = match &cli.command {
        Command::Serve(args) => match serve_telemetry(args) {
            Ok(started) => started,
            Err(e) => return fail(e),
        },
        _ => (None, None),
    };
    init_logging(&cli.log_format, quiet, telemetry.as_ref());
    let code = run_command(&cli, loaded);
    // After the runtime is gone: sending the last spans blocks.
    if let Some(telemetry) = telemetry {
        if let Err(e) = telemetry.shutdown() {
            errln!("gate402: {e}");
        }
    }
    code
}

/// `gate402 serve`'s config file, read, and its traces' exporter, started
/// when it names a collector.
fn serve_telemetry(
    args: &serve::Args,
) -> anyhow::Result<(Option<GatewayConfig>, Option<Telemetry>)> {
    let loaded = serve::load(args)?;
    let telemetry = Telemetry::start(&serve::telemetry(loaded.as_ref())?)?;
    Ok((loaded, telemetry))
}

fn run_command(cli: &Cli, loaded: Option<GatewayConfig>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let fetch = match &cli.command {
        Command::Get(a) => Some(("GET", a)),
        Command::Post(a) => Some(("POST", a)),
        Command::Put(a) => Some(("PUT", a)),
        Command::Patch(a) => Some(("PATCH", a)),
        Command::Delete(a) => Some(("DELETE", a)),
        _ => None,
    };
    if let Some((method, args)) = fetch {
        return match cli.data_dir() {
            Ok(dir) => runtime.block_on(fetch::run(method, args, &dir)),
            Err(e) => fail(e),
        };
    }
    // A close may be stopped (Ctrl-C, --max-time) as a paying command is.
    if let Command::Sessions {
        command: command @ sessions::SessionsCommand::Close { timeouts, .. },
    } = &cli.command
    {
        return match cli.data_dir() {
            Ok(dir) => runtime.block_on(fetch::run_paying(
                &dir,
                false,
                timeouts.max_time,
                sessions::run(command, &dir),
            )),
            Err(e) => fail(e),
        };
    }
    if let Command::Mcp { command } = &cli.command {
        return match cli.data_dir() {
            Ok(dir) => runtime.block_on(mcp::run(command, &dir)),
            Err(e) => fail(e),
        };
    }
    match runtime.block_on(run(cli, loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn run(cli: &Cli, loaded: Option<GatewayConfig>) -> anyhow::Result<()> {
    match &cli.command {
        Command::Decode(_) => unreachable!("decode runs without a runtime"),
        Command::Serve(args) => serve::run(args, loaded, &cli.data_dir()?).await,
        Command::Demo(args) => demo::run(args, &cli.data_dir()?).await,
        Command::Node { config, command } => node::run(config, &cli.data_dir()?, command).await,
        Command::Sandbox { command } => sandbox::run(command, &cli.data_dir()?).await,
        Command::Admin(args) => admin::run(args, &cli.data_dir()?).await,
        Command::Tokens { command } => fetch::tokens(command, &cli.data_dir()?),
        Command::Receipts(args) => fetch::receipts(args, &cli.data_dir()?),
        Command::Sessions { command } => sessions::run(command, &cli.data_dir()?).await,
        Command::McpProxy(args) => mcp::proxy(args, &cli.data_dir()?).await,
        Command::Mcp { .. } => unreachable!("mcp commands are dispatched above"),
        Command::Get(_)
        | Command::Post(_)
        | Command::Put(_)
        | Command::Patch(_)
        | Command::Delete(_) => {
            unreachable!("fetches are dispatched above")
        }
    }
}

/// Logs to stderr (`RUST_LOG` filters; default: info for gate402, warnings
/// for the rest), as text or one JSON object per line. With `telemetry`,
/// gate402's spans are exported too, and a line logged inside a request
/// carries its span's fields (its `trace_id` among them); without, spans
/// are off altogether, so that they cost nothing.
fn init_logging(format: &str, quiet: bool, telemetry: Option<&Telemetry>) {
    let default = if quiet {
        // rmcp logs a failed connection of `mcp call` as an error of its
        // own, a debug dump, before the command's one-line message.
        "error,rmcp=off,rustls_platform_verifier=off"
    } else {
        // rmcp warns on every JSON-RPC error answered, and an unpaid call is
        // one; the platform's certificate verifier logs a certificate it
        // refuses as an error of its own before the command's message.
        "warn,rmcp=error,rustls_platform_verifier=off,gate402=info,gate402_gateway=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let traced = telemetry.is_some();
    let filter = filter
        .and(filter_fn(move |metadata| traced || metadata.is_event()))
        .and(filter_fn(|metadata| !tells_request_contents(metadata)));
    // Colours for a terminal only: a file or a log collector would keep
    // the escape codes as text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let log = if format == "json" {
        log.json().boxed()
    } else {
        log.boxed()
    };
    // An absent layer (`None`) still says it wants every span, and the
    // registry would then make one per request for nobody: the exporter's
    // place is filtered to nothing when there is none.
    let traces = telemetry
        .map(Telemetry::layer)
        .with_filter(filter_fn(move |_| traced));
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(traces)
        .init();
}

/// Whether an event may hold what a request carried: rmcp logs every
/// JSON-RPC message it receives, tool arguments and all (a `paymentId`
/// among them), at DEBUG and below. Those are never written, whatever
/// `RUST_LOG` asks.
fn tells_request_contents(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target().starts_with("rmcp") && *metadata.level() > tracing::Level::INFO
}

fn fail(error: anyhow::Error) -> ExitCode {
    let text = format!("{error:#}");
    errln!("gate402: {}", output::terminal_safe(&text));
    if let Some(hint) = output::hint_for(&text) {
        errln!("gate402: {hint}");
    }
    ExitCode::FAILURE
}
