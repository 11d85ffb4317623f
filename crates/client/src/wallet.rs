//! What pays: a Lightning backend, or a sandbox gateway's payer.

use std::sync::Arc;
use std::time::Duration;

use gate402_lightning::{LightningBackend, Network, PayError, PaymentOutcome};

/// The client's wallet.
#[derive(Clone)]
pub enum Wallet {
    /// The sandbox payer of the gateway that sent the 402 (`POST
    /// /sandbox/pay` on the URL's origin). Regtest test money only.
    Sandbox,
    /// A Lightning node (ldk, LND, Core Lightning) behind the trait.
    Node(Arc<dyn LightningBackend>),
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wallet::Sandbox => f.write_str("Wallet::Sandbox"),
            Wallet::Node(_) => f.write_str("Wallet::Node"),
        }
    }
}

impl Wallet {
    /// The network this wallet pays on.
    pub async fn network(&self) -> Result<Network, PayError> {
        match self {
            Wallet::Sandbox => Ok(gate402_lightning_sandbox::NETWORK),
            Wallet::Node(node) => Ok(node.node_info().await?.network),
        }
    }

    /// Pays `bolt11`; `origin` is where a sandbox payer lives.
    pub async fn pay(
        &self,
        http: &reqwest::Client,
        origin: &str,
        bolt11: &str,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, PayError> {
        match self {
            Wallet::Sandbox => {
                let paid = gate402_lightning_sandbox::http::pay_via(http, origin, bolt11)
                    .await
                    .map_err(|e| PayError::Rejected(e.to_string()))?;
                let mut preimage = [0u8; 32];
                hex::decode_to_slice(&paid.preimage, &mut preimage).map_err(|_| {
                    PayError::Rejected("the sandbox answered a bad preimage".into())
                })?;
                Ok(PaymentOutcome {
                    preimage,
                    fee_msat: 0,
                    amount_msat: paid.amount_msat,
                })
            }
            Wallet::Node(node) => {
                node.pay(bolt11, max_fee_msat, Duration::from_secs(60))
                    .await
            }
        }
    }
}
