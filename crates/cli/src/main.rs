//! `gate402`: the command-line front of the gate402 workspace.
//!
//! Subcommands are thin: each parses its arguments, calls into the library
//! crates, and turns errors into messages and exit codes. `anyhow` lives
//! here and nowhere below.

mod decode;
mod report;

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
}

/// Exit code for input that cannot be decoded (the same as a usage error).
pub const EXIT_MALFORMED: u8 = 2;

impl Cli {
    /// The data directory: `--data-dir`, else `GATE402_DATA_DIR`, else the
    /// platform's data directory (`~/.local/share/gate402` on Linux).
    #[allow(dead_code)] // the first stateful subcommands arrive with the gateway
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
    match cli.command {
        Command::Decode(args) => decode::run(&args),
    }
}
