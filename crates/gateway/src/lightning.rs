//! Which Lightning backend to run, from the `[lightning]` table of the
//! config file, and connecting to it.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use gate402_lightning::{LightningBackend, Network};
use gate402_lightning_ldk::{LdkConfig, LdkNode};
use gate402_lightning_nwc::{Nwc, NwcConfig};
use gate402_lightning_remote::cln::{Cln, ClnConfig};
use gate402_lightning_remote::lnd::{Lnd, LndConfig};
use gate402_lightning_sandbox::Sandbox;
use serde::Deserialize;

/// The `[lightning]` table: `backend = "sandbox" | "ldk" | "lnd" | "cln" | "nwc"`
/// and that backend's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum LightningConfig {
    /// The embedded test-money backend (the default).
    Sandbox(SandboxSection),
    /// The embedded ldk-node node.
    Ldk(LdkConfig),
    /// LND over REST.
    Lnd(LndConfig),
    /// Core Lightning over clnrest.
    Cln(ClnConfig),
    /// A wallet reached over Nostr Wallet Connect (NIP-47).
    Nwc(NwcConfig),
}

impl Default for LightningConfig {
    fn default() -> Self {
        LightningConfig::Sandbox(SandboxSection::default())
    }
}

/// `[lightning] backend = "sandbox"`: nothing to set but, optionally, the
/// network, which must then be regtest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// Only `regtest` is accepted: the sandbox is test money.
    #[serde(default)]
    pub network: Option<Network>,
}

impl LightningConfig {
    /// Rejects what cannot be meant (the sandbox on a real network) and
    /// what cannot work: a remote backend's settings are read as they
    /// would be at start (URL, rune or macaroon files, certificate, NWC
    /// URI), without contacting it.
    pub fn check(&self) -> Result<()> {
        match self {
            LightningConfig::Sandbox(SandboxSection {
                network: Some(network),
            }) if *network != Network::Regtest => bail!(
                "lightning.network: the sandbox backend is test money on regtest; it cannot run on {network}. Use backend = \"ldk\", \"lnd\" or \"cln\" for {network}"
            ),
            LightningConfig::Sandbox(_) | LightningConfig::Ldk(_) => {}
            LightningConfig::Lnd(config) => drop(Lnd::new(config).context("lightning (lnd)")?),
            LightningConfig::Cln(config) => drop(Cln::new(config).context("lightning (cln)")?),
            LightningConfig::Nwc(config) => drop(Nwc::connect(config).context("lightning (nwc)")?),
        }
        Ok(())
    }

    /// The backend's short name.
    pub fn name(&self) -> &'static str {
        match self {
            LightningConfig::Sandbox(_) => "sandbox",
            LightningConfig::Ldk(_) => "ldk",
            LightningConfig::Lnd(_) => "lnd",
            LightningConfig::Cln(_) => "cln",
            LightningConfig::Nwc(_) => "nwc",
        }
    }

    /// Starts or connects to the backend; state goes under `data_dir`.
    pub async fn connect(&self, data_dir: &Path) -> Result<Connected> {
        let backend: Arc<dyn LightningBackend> = match self {
            LightningConfig::Sandbox(_) => {
                let sandbox = Sandbox::open(&data_dir.join("sandbox"))?;
                return Ok(Connected {
                    backend: Arc::new(sandbox.clone()),
                    sandbox: Some(sandbox),
                });
            }
            LightningConfig::Ldk(config) => Arc::new(start_ldk(config, data_dir).await?),
            LightningConfig::Lnd(config) => Arc::new(Lnd::new(config)?),
            LightningConfig::Cln(config) => Arc::new(Cln::new(config)?),
            LightningConfig::Nwc(config) => Arc::new(Nwc::connect(config)?),
        };
        Ok(Connected {
            backend,
            sandbox: None,
        })
    }
}

/// A running backend.
pub struct Connected {
    /// The backend, behind the trait.
    pub backend: Arc<dyn LightningBackend>,
    /// The sandbox itself, when that is the backend (its payer gets mounted).
    pub sandbox: Option<Sandbox>,
}

/// Starts the embedded node, its data under `<data_dir>/ldk` unless set.
pub async fn start_ldk(config: &LdkConfig, data_dir: &Path) -> Result<LdkNode> {
    let config = config.clone().or_data_dir(|| data_dir.join("ldk"));
    let dir: PathBuf = config.data_dir.clone().unwrap_or_default();
    LdkNode::start(&config)
        .await
        .with_context(|| format!("starting the ldk node in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    struct ConfigFile {
        #[serde(default)]
        lightning: LightningConfig,
    }

    fn parse(text: &str) -> Result<ConfigFile> {
        let config: ConfigFile = toml::from_str(text)?;
        config.lightning.check()?;
        Ok(config)
    }

    #[test]
    fn backends() {
        assert_eq!(parse("").unwrap().lightning.name(), "sandbox");
        assert_eq!(
            parse("[lightning]\nbackend = \"sandbox\"\nnetwork = \"regtest\"")
                .unwrap()
                .lightning
                .name(),
            "sandbox"
        );
        let ldk = parse(
            "[lightning]\nbackend = \"ldk\"\nnetwork = \"signet\"\nlisten = [\"0.0.0.0:9735\"]\n[lightning.chain_source]\nkind = \"esplora\"\nurl = \"https://mempool.space/signet/api\"",
        )
        .unwrap();
        assert_eq!(ldk.lightning.name(), "ldk");
        // LND's files are read when the config is: missing ones are named.
        let err = parse("[lightning]\nbackend = \"lnd\"\nurl = \"https://127.0.0.1:8080\"\nmacaroon_dir = \"/lnd/data/chain/bitcoin/mainnet\"\ntls_cert_path = \"/lnd/tls.cert\"").unwrap_err();
        assert!(format!("{err:#}").contains("/lnd/"), "{err}");
        assert_eq!(
            parse(
                "[lightning]\nbackend = \"cln\"\nurl = \"https://127.0.0.1:3010\"\nrune = \"abc\""
            )
            .unwrap()
            .lightning
            .name(),
            "cln"
        );
        let nwc = parse("[lightning]\nbackend = \"nwc\"\nuri = \"nostr+walletconnect://b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4?relay=wss://relay.example&secret=71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c\"\ntimeout_secs = 30").unwrap();
        assert_eq!(nwc.lightning.name(), "nwc");
        assert!(!format!("{:?}", nwc.lightning).contains("71a8c14c"));
    }

    #[test]
    fn mistakes_are_refused() {
        let err = parse("[lightning]\nbackend = \"sandbox\"\nnetwork = \"mainnet\"").unwrap_err();
        assert!(err.to_string().contains("test money"), "{err}");
        assert!(parse("[lightning]\nbackend = \"eclair\"").is_err());
        assert!(
            parse("[lightning]\nbackend = \"lnd\"\nurl = \"https://x\"\nmacaroon = \"typo\"")
                .is_err()
        );
        assert!(
            parse("[lightning]\nbackend = \"ldk\"\nnetwork = \"regtest\"").is_err(),
            "chain_source is required"
        );
    }
}
