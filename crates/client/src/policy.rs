//! What the client may pay, checked before anything is paid.

use std::time::SystemTime;

use gate402_bolt11::Network;

use crate::{Budget, Offer};

/// Spending limits: per request here, over time in the [`Budget`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// The most a request may cost, in satoshis.
    pub max_cost_sats: u64,
    /// The most routing fees a payment may take, in satoshis.
    pub max_fee_sats: u64,
    /// The wallet's network; invoices for another are refused.
    pub network: Network,
    /// Limits over time, overall and per domain.
    pub budget: Budget,
}

/// Why an offer is refused before paying. Each has its own exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The invoice has no amount.
    #[error("refused: the invoice has no amount")]
    NoAmount,
    /// Above `--max-cost`.
    #[error(
        "refused: the price is {price_sats} sat, above the cap of {max_sats} sat (--max-cost)"
    )]
    OverCap {
        /// Asked for.
        price_sats: u64,
        /// Allowed.
        max_sats: u64,
    },
    /// On another network than the wallet's.
    #[error("refused: the invoice is for {invoice}, the wallet is on {wallet}")]
    WrongNetwork {
        /// The invoice's.
        invoice: Network,
        /// The wallet's.
        wallet: Network,
    },
    /// Already expired.
    #[error("refused: the invoice expired at {0} (unix)")]
    Expired(u64),
    /// Paying would exceed a budget of the client config.
    #[error("refused: {price_sats} sat would exceed the {budget} of {limit_sats} sat ({spent_sats} sat spent)")]
    OverBudget {
        /// Which budget, e.g. `per-day budget for api.example.com`.
        budget: String,
        /// Already spent (or in flight) in its window.
        spent_sats: u64,
        /// Asked for.
        price_sats: u64,
        /// Allowed in the window.
        limit_sats: u64,
    },
}

impl Refusal {
    /// The process exit code `gate402 get` uses for this refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            Refusal::OverCap { .. } => 3,
            Refusal::NoAmount => 4,
            Refusal::WrongNetwork { .. } => 5,
            Refusal::Expired(_) => 6,
            Refusal::OverBudget { .. } => 8,
        }
    }
}

impl Policy {
    /// Checks an offer; `Ok` means it may be paid.
    pub fn check(&self, offer: &Offer, now: SystemTime) -> Result<u64, Refusal> {
        let invoice = &offer.invoice;
        if invoice.network() != self.network {
            return Err(Refusal::WrongNetwork {
                invoice: invoice.network(),
                wallet: self.network,
            });
        }
        let amount_msat = invoice.amount_msat().ok_or(Refusal::NoAmount)?;
        if invoice.is_expired_at(now) {
            return Err(Refusal::Expired(invoice.expires_at()));
        }
        let price_sats = amount_msat.div_ceil(1000);
        if price_sats > self.max_cost_sats {
            return Err(Refusal::OverCap {
                price_sats,
                max_sats: self.max_cost_sats,
            });
        }
        Ok(amount_msat)
    }
}
