//! The client config file (`client.toml` in the data dir, or `--config`):
//! default caps, budgets and the wallet.
//!
//! ```toml
//! max_cost_sats = 1000            # per request (--max-cost overrides)
//! max_fee_sats = 10               # routing fees per payment (--max-fee)
//! sessions = true                 # open MPP sessions for balances (--session, --no-session)
//!
//! [budget]                        # over time; pending payments count
//! per_hour_sats = 5000
//! per_day_sats = 20000
//! total_sats = 100000
//! [budget.domains."api.example.com"]
//! per_day_sats = 500
//!
//! [lightning]                     # the wallet; absent: the sandbox payer
//! backend = "nwc"
//! uri = "${NWC_URI}"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use gate402_client::Budget;
use gate402_gateway::config::parse_with_env;
use gate402_gateway::lightning::LightningConfig;
use serde::Deserialize;

/// The file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Default `--max-cost`.
    pub max_cost_sats: Option<u64>,
    /// Default `--max-fee`.
    pub max_fee_sats: Option<u64>,
    /// Default `--session` (true) or `--no-session` (false): whether `get`
    /// opens MPP sessions for prepaid balances.
    pub sessions: Option<bool>,
    /// Budgets over time.
    #[serde(default)]
    pub budget: Budget,
    /// The wallet; `None` is the sandbox payer.
    pub lightning: Option<LightningConfig>,
}

/// Where the config is read from when `--config` is not given.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("client.toml")
}

impl ClientConfig {
    /// Reads `explicit`, or the default file if it exists, or nothing.
    pub fn load(explicit: Option<&Path>, data_dir: &Path) -> Result<Self> {
        let path = match explicit {
            Some(path) => path.to_owned(),
            None => {
                let path = default_path(data_dir);
                if !path.exists() {
                    return Ok(Self::default());
                }
                path
            }
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let config: Self = parse_with_env(&text, |name| std::env::var(name).ok())
            .map_err(|e| anyhow!("{}", e.in_file(&path)))?;
        if let Some(lightning) = &config.lightning {
            lightning
                .check()
                .with_context(|| format!("{}", path.display()))?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_budgets_per_domain_and_refuses_unknown_keys() {
        let config: ClientConfig = toml::from_str(
            "max_cost_sats = 50\nsessions = true\n[budget]\nper_day_sats = 10\n[budget.domains.\"a.example\"]\ntotal_sats = 3\n",
        )
        .unwrap();
        assert_eq!(config.max_cost_sats, Some(50));
        assert_eq!(config.sessions, Some(true));
        assert_eq!(config.budget.per_day_sats, Some(10));
        assert_eq!(config.budget.domains["a.example"].total_sats, Some(3));
        let typo = toml::from_str::<ClientConfig>("[budget]\nper_day_sat = 10\n").unwrap_err();
        assert!(typo.to_string().contains("per_day_sat"), "{typo}");
    }
}
