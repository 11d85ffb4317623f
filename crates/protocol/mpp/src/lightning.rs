//! The Lightning payment method (draft-lightning-charge): what a charge
//! request holds, what the client proves with, and the receipt it earns.

use serde::{Deserialize, Serialize};

/// The method name.
pub const METHOD: &str = "lightning";
/// The one-shot intent.
pub const CHARGE: &str = "charge";
/// The only currency unit of the method.
pub const CURRENCY: &str = "sat";

/// The Bitcoin network an invoice lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Bitcoin mainnet.
    Mainnet,
    /// testnet3/testnet4.
    Testnet,
    /// Signet.
    Signet,
    /// Local regtest.
    Regtest,
}

impl Network {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mainnet" | "bitcoin" => Ok(Network::Mainnet),
            "testnet" => Ok(Network::Testnet),
            "signet" => Ok(Network::Signet),
            "regtest" => Ok(Network::Regtest),
            other => Err(format!("unknown network {other:?}")),
        }
    }
}

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
                payment_hash: hex::encode(payment_hash),
                network,
            },
        }
    }

    /// The amount as a number, if it is a canonical decimal.
    pub fn amount_sats(&self) -> Option<u64> {
        let n: u64 = self.amount.parse().ok()?;
        (n.to_string() == self.amount).then_some(n)
    }

    /// The payment hash as bytes, if it is 64 hex digits.
    pub fn payment_hash(&self) -> Option<[u8; 32]> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&self.method_details.payment_hash, &mut hash).ok()?;
        Some(hash)
    }

    /// As JSON, for [`crate::challenge::NewChallenge::request`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
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
            preimage: hex::encode(preimage),
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
