//! What pays: a Lightning backend, or a sandbox gateway's payer.

use std::sync::Arc;
use std::time::Duration;

use gate402_lightning::{
    LightningBackend, LightningError, Network, PayError, PaymentOutcome, PaymentStatus,
};
use gate402_lightning_sandbox::http::ClientError;

/// How long one payment may take before it is treated as in flight.
pub const PAY_TIMEOUT: Duration = Duration::from_secs(60);

/// The client's wallet.
#[derive(Clone)]
pub enum Wallet {
    /// The sandbox payer of the gateway that sent the 402 (`POST
    /// /sandbox/pay` on the URL's origin). Regtest test money only.
    Sandbox(reqwest::Client),
    /// A Lightning node or wallet (ldk, LND, Core Lightning, NWC) behind
    /// the backend trait.
    Node(Arc<dyn LightningBackend>),
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wallet::Sandbox(_) => f.write_str("Wallet::Sandbox"),
            Wallet::Node(_) => f.write_str("Wallet::Node"),
        }
    }
}

/// Whether a failed `pay` may still have sent money: then the payment is
/// resolved through its status, never sent again.
pub fn may_be_in_flight(error: &PayError) -> bool {
    matches!(
        error,
        PayError::StillPending(_)
            | PayError::Backend(LightningError::Timeout(_) | LightningError::Unavailable(_))
    )
}

impl Wallet {
    /// The sandbox payer, with its own HTTP client.
    pub fn sandbox() -> Self {
        Wallet::Sandbox(
            reqwest::Client::builder()
                .timeout(PAY_TIMEOUT)
                .build()
                .unwrap_or_default(),
        )
    }

    /// The network this wallet pays on.
    pub async fn network(&self) -> Result<Network, PayError> {
        match self {
            Wallet::Sandbox(_) => Ok(gate402_lightning_sandbox::NETWORK),
            Wallet::Node(node) => Ok(node.network().await?),
        }
    }

    /// Pays `bolt11`; `origin` is where a sandbox payer lives. An invoice
    /// paid before is not paid again: its outcome is returned.
    pub async fn pay(
        &self,
        origin: &str,
        bolt11: &str,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, PayError> {
        let paid = match self {
            Wallet::Sandbox(http) => {
                match gate402_lightning_sandbox::http::pay_via(http, origin, bolt11).await {
                    Ok(paid) | Err(ClientError::AlreadyPaid(paid)) => paid.outcome(),
                    Err(e @ ClientError::Unreachable { .. }) => Err(PayError::Backend(
                        LightningError::Unavailable(e.to_string()),
                    )),
                    Err(e) => Err(PayError::Rejected(e.to_string())),
                }
            }
            Wallet::Node(node) => node.pay(bolt11, max_fee_msat, PAY_TIMEOUT).await,
        };
        match paid {
            Err(PayError::AlreadyPaid(outcome)) => Ok(outcome),
            other => other,
        }
    }

    /// How a payment that may have been sent ended. The sandbox payer has
    /// no status of its own; asking it to pay again is safe, as it pays an
    /// invoice once and answers the same preimage after.
    pub async fn resolve(
        &self,
        origin: &str,
        hash: &[u8; 32],
        bolt11: &str,
    ) -> Result<PaymentStatus, PayError> {
        match self {
            Wallet::Sandbox(_) => match self.pay(origin, bolt11, 0).await {
                Ok(outcome) => Ok(PaymentStatus::Succeeded(outcome)),
                Err(e) if may_be_in_flight(&e) => Ok(PaymentStatus::Pending),
                Err(e) => Ok(PaymentStatus::Failed(e.to_string())),
            },
            Wallet::Node(node) => Ok(node.payment_status(hash).await?),
        }
    }
}
