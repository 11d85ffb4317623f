//! `gate402`: the command-line front of the gate402 workspace.
//!
//! Subcommands are thin: each parses its arguments, calls into the library
//! crates, and turns errors into messages and exit codes. `anyhow` lives
//! here and nowhere below.

mod decode;
mod lightning;
mod node;
mod report;
mod sandbox;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lightning paywall for HTTP APIs: L402 and MPP over one invoice.
#[derive(Debug, Parser)]
#[command(name = "gate402", version, about, long_about = None)]
struct Cli {
    /// Where gate402 keeps its state (keys, tokens, receipts).
    #[arg(long, global = true, env = "GATE402_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode a 402 artifact: a WWW-Authenticate, Authorization or
    /// Payment-Receipt value, a macaroon, or a BOLT11 invoice.
    Decode(decode::Args),
    /// Operate the embedded ldk Lightning node.
    Node {
        /// Config file with an `[lightning]` table, `backend = "ldk"`.
        #[arg(long, short, env = "GATE402_CONFIG", value_name = "FILE")]
        config: PathBuf,
        #[command(subcommand)]
        command: node::NodeCommand,
    },
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
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => dirs::data_dir()
                .map(|d| d.join("gate402"))
                .ok_or_else(|| anyhow::anyhow!("no platform data directory; pass --data-dir")),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Decode(args) = &cli.command {
        return decode::run(args);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Decode(_) => unreachable!("decode runs without a runtime"),
        Command::Node { config, command } => node::run(config, &cli.data_dir()?, command).await,
        Command::Sandbox { command } => sandbox::run(command).await,
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("gate402: {error:#}");
    ExitCode::FAILURE
}
