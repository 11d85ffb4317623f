//! What a 402 offers: one invoice and the challenges issued for it (made
//! by [`crate::issue`], answered by [`crate::responses`] and x402's offer).

use gate402_l402::L402Challenge;
use gate402_mpp::PaymentChallenge;

/// An invoice and the challenges issued for it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The BOLT11 invoice.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: [u8; 32],
    /// When it expires (unix seconds).
    pub expires_at: u64,
    /// The L402 challenge, when issued.
    pub l402: Option<L402Challenge>,
    /// The MPP challenge (a charge, or a session for a balance), when
    /// issued.
    pub payment: Option<PaymentChallenge>,
    /// x402's offer of the invoice (`PAYMENT-REQUIRED`), when issued.
    pub x402: Option<gate402_x402::PaymentRequired>,
}
