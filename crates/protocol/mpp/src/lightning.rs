//! The Lightning payment method (draft-lightning-charge): what a charge
//! request holds, what the client proves with, and the receipt it earns.

use gate402_bolt11::{CheckError, Expect, Invoice, ParseError};
use serde::{Deserialize, Serialize};

pub use gate402_bolt11::Network;

/// The method name.
pub const METHOD: &str = "lightning";
/// The one-shot intent.
pub const CHARGE: &str = "charge";
/// The only currency unit of the method.
pub const CURRENCY: &str = "sat";

/// The `request` of a Lightning charge challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeRequest {
    /// Price in satoshis, as a decimal string.
    pub amount: String,
    /// Always `sat`.
    pub currency: String,
    /// What is being paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The invoice that settles this charge.
    pub method_details: MethodDetails,
}

/// `methodDetails` of a Lightning charge request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodDetails {
    /// The BOLT11 invoice; authoritative, clients decode it themselves.
    pub invoice: String,
    /// Its payment hash, lowercase hex.
    pub payment_hash: String,
    /// Its network.
    pub network: Network,
}

/// 32 bytes (a payment hash, a preimage) in the method's one spelling: 64
/// lowercase hex digits. Written through `hex`'s table rather than its
/// char-by-char `encode`: a paid request spells its payment hash several
/// times (receipt, claim key, challenge).
pub fn hex32(bytes: &[u8; 32]) -> String {
    let mut digits = [0u8; 64];
    hex::encode_to_slice(bytes, &mut digits).expect("32 bytes are 64 hex digits");
    std::str::from_utf8(&digits)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// An `amount` in satoshis: a decimal string in its one canonical
/// spelling (no sign, no leading zero, no exponent), else `None`.
pub fn amount_sats(amount: &str) -> Option<u64> {
    let n: u64 = amount.parse().ok()?;
    (n.to_string() == amount).then_some(n)
}

impl ChargeRequest {
    /// A charge of `amount_sats` payable with `invoice`.
    pub fn new(
        amount_sats: u64,
        description: Option<String>,
        invoice: impl Into<String>,
        payment_hash: &[u8; 32],
        network: Network,
    ) -> Self {
        Self {
            amount: amount_sats.to_string(),
            currency: CURRENCY.to_owned(),
            description,
            method_details: MethodDetails {
                invoice: invoice.into(),
                payment_hash: hex32(payment_hash),
                network,
            },
        }
    }

    /// The amount as a number, if it is a canonical decimal.
    pub fn amount_sats(&self) -> Option<u64> {
        amount_sats(&self.amount)
    }

    /// The payment hash as bytes, if it is 64 hex digits.
    pub fn payment_hash(&self) -> Option<[u8; 32]> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&self.method_details.payment_hash, &mut hash).ok()?;
        Some(hash)
    }

    /// Decodes the invoice and checks that it says what the request says:
    /// amount, payment hash and network. The invoice is authoritative, so a
    /// client pays only after this passes.
    pub fn check_invoice(&self) -> Result<Invoice, InvoiceMismatch> {
        let invoice = Invoice::parse(&self.method_details.invoice)?;
        let amount_sats = self.amount_sats().ok_or(InvoiceMismatch::Amount)?;
        let payment_hash = self.payment_hash().ok_or(InvoiceMismatch::PaymentHash)?;
        invoice.check(&Expect {
            amount_msat: Some(amount_sats.saturating_mul(1000)),
            payment_hash: Some(payment_hash),
            network: Some(self.method_details.network),
            ..Expect::default()
        })?;
        Ok(invoice)
    }

    /// As JSON, for [`crate::challenge::NewChallenge::request`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A charge request whose invoice does not back it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceMismatch {
    /// The invoice does not decode.
    #[error(transparent)]
    Invoice(#[from] ParseError),
    /// `amount` is not a decimal number of satoshis.
    #[error("request amount is not a decimal number of satoshis")]
    Amount,
    /// `paymentHash` is not 64 hex digits.
    #[error("request paymentHash is not 64 hex digits")]
    PaymentHash,
    /// The invoice disagrees with the request.
    #[error("invoice disagrees with the request: {0}")]
    Disagrees(#[from] CheckError),
}

/// The credential payload of a Lightning charge: the preimage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreimagePayload {
    /// 64 lowercase hex digits.
    pub preimage: String,
}

impl PreimagePayload {
    /// The payload for a preimage.
    pub fn new(preimage: &[u8; 32]) -> Self {
        Self {
            preimage: hex32(preimage),
        }
    }

    /// The preimage bytes, if the payload is 64 lowercase hex digits.
    pub fn bytes(&self) -> Option<[u8; 32]> {
        if self.preimage.len() != 64
            || !self
                .preimage
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.preimage, &mut out).ok()?;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hex32_is_lowercase_hex_and_reads_back(bytes in any::<[u8; 32]>()) {
            let digits = hex32(&bytes);
            prop_assert_eq!(&digits, &hex::encode(bytes));
            prop_assert_eq!(PreimagePayload { preimage: digits }.bytes(), Some(bytes));
        }
    }
}
