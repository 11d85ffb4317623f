//! `gate402 serve`: the gateway, from a config file or, without one, the
//! sandbox in front of the built-in demo API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use gate402_gateway::telemetry::TelemetryConfig;
use gate402_gateway::{demo, Gateway, GatewayConfig};

/// Arguments of `gate402 serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file (TOML); without one, the sandbox fronts the demo API.
    #[arg(long, short, env = "GATE402_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, overriding the config's `listen`.
    #[arg(long, value_name = "ADDR", value_parser = listen_addr)]
    pub listen: Option<SocketAddr>,
    /// The admin API's listen address, overriding `[admin] listen`
    /// (default: loopback, a port chosen at start and written to
    /// `admin.json` in the data dir).
    #[arg(long, value_name = "ADDR", value_parser = listen_addr)]
    pub admin_listen: Option<SocketAddr>,
    /// Check the config, print every error with its key path, and exit.
    #[arg(long)]
    pub check: bool,
    /// Print the commented example config (every key, with its default)
    /// and exit: `gate402 serve --example-config > gate402.toml`.
    #[arg(long, conflicts_with_all = ["config", "check", "listen", "admin_listen"])]
    pub example_config: bool,
}

/// The source tree's `examples/gate402.toml`, built in for those who have
/// only the program.
pub const EXAMPLE_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/gate402.toml"
));

/// Reads and checks the config file, if one is given: before anything
/// starts, since its `[telemetry]` decides how the program logs.
pub fn load(args: &Args) -> Result<Option<GatewayConfig>> {
    match &args.config {
        Some(path) => Ok(Some(
            GatewayConfig::load(path).map_err(|e| anyhow!("{}", e.in_file(path)))?,
        )),
        None => Ok(None),
    }
}

/// Where traces go: the file's `[telemetry]`, or without a file the
/// standard `OTEL_*` variables alone.
pub fn telemetry(loaded: Option<&GatewayConfig>) -> Result<TelemetryConfig> {
    match loaded {
        Some(config) => Ok(config.telemetry.clone()),
        None => {
            let mut telemetry = TelemetryConfig::default();
            telemetry
                .inherit_env(|name| std::env::var(name).ok())
                .map_err(|e| anyhow!("{e}"))?;
            Ok(telemetry)
        }
    }
}

/// The config read by [`load`], or the demo one when there is no file.
async fn config(
    args: &Args,
    loaded: Option<GatewayConfig>,
) -> Result<(GatewayConfig, Option<tokio::task::JoinHandle<()>>)> {
    let (mut config, demo_task) = match loaded {
        Some(config) => (config, None),
        None => {
            let (addr, task) = demo::start_upstream().await?;
            (demo::gateway_config(&format!("http://{addr}")), Some(task))
        }
    };
    command_line(args)(&mut config);
    if let Some(clash) = config.admin_port_clash() {
        bail!("{clash}");
    }
    Ok((config, demo_task))
}

/// What the command line sets over a config (`--listen`,
/// `--admin-listen`): at the start, and again on each reload.
fn command_line(args: &Args) -> Adjust {
    let (listen, admin_listen) = (args.listen, args.admin_listen);
    Box::new(move |config| listen_at(config, listen, admin_listen))
}

/// `--listen` and `--admin-listen`, when given, over `config`'s.
pub(crate) fn listen_at(
    config: &mut GatewayConfig,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
) {
    config.listen_at(listen, admin_listen);
}

/// `--check`: 0 when the config is good, 2 (errors on stderr) when not;
/// checked as `serve` would run it, `--listen` and `--admin-listen` over
/// the file's.
pub fn check(args: &Args) -> std::process::ExitCode {
    let Some(path) = args.config.as_deref() else {
        errln!("gate402 serve --check: no config given (--config FILE)");
        return std::process::ExitCode::from(2);
    };
    let (loaded, warnings) = GatewayConfig::load_with_warnings(path);
    match loaded {
        Ok(mut config) => {
            listen_at(&mut config, args.listen, args.admin_listen);
            if let Some(clash) = config.admin_port_clash() {
                errln!("{}: {clash}", path.display());
                return std::process::ExitCode::from(2);
            }
            for warning in &config.warnings {
                errln!("{}: warning: {warning}", path.display());
            }
            outln!(
                "{}: ok ({} services, {} MCP tools{}, lightning backend {}, listen {})",
                path.display(),
                config.services.len(),
                config.tools.len(),
                if config.mcp_proxy.is_some() {
                    ", an MCP proxy"
                } else {
                    ""
                },
                config.lightning.name(),
                config.listen
            );
            for service in &config.services {
                let priced = &service.priced;
                outln!("  {}: {}", priced.name, priced.sale());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                errln!("{}: {error}", path.display());
            }
            for warning in &warnings {
                errln!("{}: warning: {warning}", path.display());
            }
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs until SIGINT or SIGTERM; SIGHUP reloads the services, the tools
/// and the admin credentials from the file
/// (`loaded` is that file, read by [`load`]).
pub async fn run(args: &Args, loaded: Option<GatewayConfig>, data_dir: &Path) -> Result<()> {
    let (config, _demo) = config(args, loaded).await?;
    let banner = |url: &str| {
        let mut text = format!(
            "gate402 on {url}: sandbox Lightning backend (TEST MONEY) in front of the demo API\n\n"
        );
        text += &format!(
            "  curl -i {url}/api/weather?city=Oslo          # 402: an invoice and two challenges\n"
        );
        text +=
            &format!("  gate402 sandbox pay --url {url} <invoice>    # pay it with the sandbox\n");
        text += &format!(
            "  curl -H 'Authorization: L402 <macaroon>:<preimage>' {url}/api/weather?city=Oslo\n"
        );
        text +=
            &format!("  gate402 get {url}/api/weather?city=Oslo      # or let the client pay\n");
        text += &format!("  gate402 mcp call {url}/mcp weather --args '{{\"city\":\"Oslo\"}}'   # the same as an MCP tool\n");
        text += &format!(
            "  curl -i {url}/api/chat/stream                # a balance: an MPP session or an L402 token\n"
        );
        text += &format!(
            "  gate402 demo --url {url}                     # the whole loop and a session, step by step\n"
        );
        text += &format!("\n  discovery: {url}/.well-known/l402-services  {url}/.well-known/mcp  {url}/openapi.json  metrics: {url}/metrics\n");
        text
    };
    let banner: Option<&dyn Fn(&str) -> String> = if args.config.is_none() {
        Some(&banner)
    } else {
        None
    };
    serve(
        &config,
        args.config.clone(),
        banner,
        command_line(args),
        data_dir,
    )
    .await
}

/// What the command line changes in a config read from its file.
pub type Adjust = Box<dyn Fn(&mut GatewayConfig) + Send + Sync>;

/// Runs `config` until SIGINT or SIGTERM, printing `banner(url)` first;
/// SIGHUP reloads the services, the tools and the admin credentials from
/// `config_path` ([`gate402_gateway::server::Reloader`]), read again and
/// changed by `adjust` as the command line changed it at the start.
pub async fn serve(
    config: &GatewayConfig,
    config_path: Option<PathBuf>,
    banner: Option<&dyn Fn(&str) -> String>,
    adjust: Adjust,
    data_dir: &Path,
) -> Result<()> {
    let gateway = Gateway::start(config, data_dir).await?;
    let url = format!("http://{}", gateway.addr());
    if let Some(banner) = banner {
        // A gateway keeps serving when no one reads its banner.
        let _ = writeln!(std::io::stdout(), "{}", banner(&url));
    }
    let shutdown = gateway.shutdown_handle();
    let reloader = gateway.reloader();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut hup), Ok(mut term)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => match &config_path {
                    None => tracing::info!("SIGHUP: no config file to reload"),
                    Some(path) => match GatewayConfig::load(path).map(|mut config| {
                        adjust(&mut config);
                        config
                    }) {
                        Ok(config) => match reloader.reload(&config) {
                            Ok(later) => {
                                tracing::info!(
                                    services = config.services.len(),
                                    tools = config.tools.len(),
                                    admin_credentials = config.admin.credentials.len(),
                                    "SIGHUP: services reloaded"
                                );
                                for setting in later {
                                    tracing::warn!("SIGHUP: {setting}");
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "SIGHUP: config rejected, keeping the running one"),
                        },
                        Err(errors) => tracing::error!(%errors, "SIGHUP: config rejected, keeping the running one"),
                    },
                },
            }
        }
        tracing::info!("shutting down: finishing requests in flight");
        shutdown.cancel();
    });
    gateway.wait().await
}

/// A `--listen` value, as `listen` in a config
/// ([`gate402_gateway::config::listen_addr`]).
///
/// # Errors
///
/// What it should look like, for a host name or a missing port.
pub(crate) fn listen_addr(text: &str) -> std::result::Result<SocketAddr, String> {
    gate402_gateway::config::listen_addr(text)
}
