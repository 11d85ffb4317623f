//! `gate402 sandbox pay`: pay an invoice of a sandbox gateway with its
//! built-in payer. Test money.

use anyhow::Result;
use clap::Subcommand;
use gate402_lightning_sandbox::http::{pay_as, ClientError};

/// The gateway's default listen address, where the payer is by default.
pub const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:8402";

/// Sandbox commands.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Pay a sandbox invoice and print `{"preimage", "amount_msat"}`.
    Pay {
        /// The gateway running the sandbox backend.
        #[arg(long, default_value = DEFAULT_GATEWAY_URL)]
        url: String,
        /// The BOLT11 invoice (from a 402).
        invoice: String,
    },
}

/// Runs a sandbox command; `data_dir` keeps this client's payer secret, so
/// that paying an invoice again answers the preimage it got the first time.
pub async fn run(command: &SandboxCommand, data_dir: &std::path::Path) -> Result<()> {
    match command {
        SandboxCommand::Pay { url, invoice } => {
            // Read here first, so that what is refused is refused whatever
            // the gateway at `url` would accept.
            gate402_bolt11::Invoice::parse(invoice)?;
            let origin = reqwest::Url::parse(url)
                .map_err(|e| anyhow::anyhow!("--url {url:?}: {e}"))?
                .origin()
                .ascii_serialization();
            let secret = crate::fetch::sandbox_payer(data_dir)?;
            let payer = gate402_client::sandbox_payer_for(&secret, &origin);
            let http = reqwest::Client::new();
            let paid = match pay_as(&http, url, invoice.trim(), None, &payer).await {
                Ok(paid) | Err(ClientError::AlreadyPaid(paid)) => paid,
                Err(e) => return Err(e.into()),
            };
            outln!("{}", serde_json::to_string_pretty(&paid)?);
            Ok(())
        }
    }
}
