//! x402 (version 2) for a Lightning invoice, as Alby's lightning-tools 9
//! pays it while the Lightning scheme is being settled in the open
//! (coinbase/x402 issues 1311 and 2861): the server's `PAYMENT-REQUIRED`
//! header is base64 JSON whose `accepts[]` holds an entry with
//! `extra.paymentMethod = "lightning"`, `extra.invoice` the BOLT11 and
//! `amount` the invoice's amount in millisatoshis as a string; the client
//! pays and retries with a `payment-signature` header, base64 JSON of
//! `{x402Version, scheme, network, payload: {invoice}, accepted}` (no
//! preimage: the server asks its node whether the invoice is settled, or
//! checks `payload.preimage` when a client sends one). `PAYMENT-RESPONSE`
//! answers a paid request.
//!
//! The offer is bound to what it is for by `extra.binding`, an HMAC under
//! the server's key of the service, the exact invoice (so its payee, hash,
//! amount and times are the server's, not a re-encoding a client made) and
//! `extra.validUntil`, which the client echoes in `accepted`: an invoice
//! bought for one service pays for no other, and for no longer.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header of the server's offer.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// The header of the client's payment.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// The header of the server's answer to a paid request.
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// The version spoken.
pub const VERSION: u64 = 2;
/// `extra.paymentMethod` of a Lightning entry.
pub const LIGHTNING: &str = "lightning";
/// The `scheme` of the entry: the exact amount of the invoice.
pub const SCHEME: &str = "exact";

/// `PAYMENT-REQUIRED`'s JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// [`VERSION`].
    pub x402_version: u64,
    /// Why payment is required, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is being paid for (required by x402 v2 readers such as mppx's).
    pub resource: ResourceInfo,
    /// The ways to pay.
    pub accepts: Vec<Requirements>,
}

/// `resource` of `PAYMENT-REQUIRED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    /// The resource's URL (here the request target as received).
    pub url: String,
    /// What it is, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One way to pay: here, one Lightning invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirements {
    /// [`SCHEME`].
    pub scheme: String,
    /// `lightning` (the Bitcoin network is in `extra.network`).
    pub network: String,
    /// The invoice's amount in millisatoshis, as a decimal string.
    pub amount: String,
    /// `BTC`.
    pub asset: String,
    /// The payee's node id (hex).
    pub pay_to: String,
    /// Seconds the invoice stays payable.
    pub max_timeout_seconds: u64,
    /// The Lightning details.
    pub extra: LightningExtra,
}

/// `extra` of a Lightning entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LightningExtra {
    /// [`LIGHTNING`].
    pub payment_method: String,
    /// The BOLT11 invoice.
    pub invoice: String,
    /// `mainnet`, `testnet`, `signet` or `regtest`.
    #[serde(default)]
    pub network: String,
    /// Until when a payment of this offer is honoured (unix seconds).
    #[serde(default)]
    pub valid_until: u64,
    /// What binds the offer to its service, invoice and time: see
    /// [`binding`].
    #[serde(default)]
    pub binding: String,
}

/// `payment-signature`'s JSON, as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// [`VERSION`].
    pub x402_version: u64,
    /// The entry's scheme.
    #[serde(default)]
    pub scheme: String,
    /// The entry's network.
    #[serde(default)]
    pub network: String,
    /// What was paid.
    pub payload: Paid,
    /// The entry the client paid, echoed.
    pub accepted: Requirements,
}

/// `payload` of a Lightning payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    /// The paid invoice.
    pub invoice: String,
    /// Its preimage (hex), when the client sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preimage: Option<String>,
}

/// `PAYMENT-RESPONSE`'s JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResponse {
    /// `true`.
    pub success: bool,
    /// The payment hash (hex).
    pub transaction: String,
    /// `lightning`.
    pub network: String,
}

/// Why a `payment-signature` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X402Error {
    /// Not base64.
    #[error("payment-signature is not base64")]
    Base64,
    /// Not the JSON of a payment.
    #[error("payment-signature is not an x402 payment: {0}")]
    Json(String),
    /// Another version.
    #[error("x402Version {0} is not supported (2 is)")]
    Version(u64),
    /// Not a Lightning payment.
    #[error("the payment is not a Lightning one (extra.paymentMethod = {0:?})")]
    NotLightning(String),
    /// The paid invoice is not the one offered.
    #[error("payload.invoice is not the invoice of the accepted offer")]
    OtherInvoice,
}

/// Base64 (standard alphabet, padded) of `value`'s JSON, as the headers
/// carry it.
pub fn encode<T: Serialize>(value: &T) -> String {
    STANDARD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Reads a `payment-signature` value.
///
/// # Errors
///
/// [`X402Error`] when it is not a version-2 Lightning payment of the
/// invoice it accepted.
pub fn parse_signature(value: &str) -> Result<PaymentPayload, X402Error> {
    let bytes = decode_base64(value.trim()).ok_or(X402Error::Base64)?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| X402Error::Json(e.to_string()))?;
    let payment: PaymentPayload =
        serde_json::from_value(json).map_err(|e| X402Error::Json(e.to_string()))?;
    if payment.x402_version != VERSION {
        return Err(X402Error::Version(payment.x402_version));
    }
    if payment.accepted.extra.payment_method != LIGHTNING {
        return Err(X402Error::NotLightning(
            payment.accepted.extra.payment_method.clone(),
        ));
    }
    if payment.payload.invoice.trim() != payment.accepted.extra.invoice.trim() {
        return Err(X402Error::OtherInvoice);
    }
    Ok(payment)
}

/// Why a `PAYMENT-REQUIRED` value offers nothing a Lightning payer can
/// pay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequiredError {
    /// Not base64.
    #[error("PAYMENT-REQUIRED is not base64")]
    Base64,
    /// Not the JSON of an offer.
    #[error("PAYMENT-REQUIRED is not an x402 offer: {0}")]
    Json(String),
    /// Another version.
    #[error("PAYMENT-REQUIRED has x402Version {0}; 2 is supported")]
    Version(u64),
    /// No entry of `accepts` is a Lightning one that reads.
    #[error("PAYMENT-REQUIRED accepts no Lightning payment")]
    NoLightning,
}

/// The Lightning entry of a `PAYMENT-REQUIRED` offer, as a payer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightningOffer {
    /// The entry, read.
    pub requirements: Requirements,
    /// The entry exactly as received, echoed whole in `accepted`: a server
    /// may compare it with what it offered, fields this crate does not
    /// know included.
    pub accepted: Value,
}

impl LightningOffer {
    /// The `payment-signature` value answering this offer once its invoice
    /// is paid: base64 JSON of `{x402Version, scheme, network, payload:
    /// {invoice, preimage}, accepted}`. `preimage` (32 bytes, sent as hex)
    /// is optional in x402's Lightning payload; with it a server checks the
    /// payment without asking its node.
    pub fn signature(&self, preimage: Option<&[u8; 32]>) -> String {
        let payload = Paid {
            invoice: self.requirements.extra.invoice.clone(),
            preimage: preimage.map(hex::encode),
        };
        let json = serde_json::json!({
            "x402Version": VERSION,
            "scheme": self.requirements.scheme,
            "network": self.requirements.network,
            "payload": payload,
            "accepted": self.accepted,
        });
        encode(&json)
    }
}

/// Reads a `PAYMENT-REQUIRED` value (base64 in either alphabet, padded or
/// not) and returns its first Lightning entry; entries for other assets
/// and networks are passed over.
///
/// # Errors
///
/// [`RequiredError`] when it is not version-2 JSON or has no Lightning
/// entry that reads as [`Requirements`].
pub fn parse_required(value: &str) -> Result<LightningOffer, RequiredError> {
    let bytes = decode_base64(value.trim()).ok_or(RequiredError::Base64)?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|e| RequiredError::Json(e.to_string()))?;
    let version = json
        .get("x402Version")
        .and_then(Value::as_u64)
        .ok_or_else(|| RequiredError::Json("no x402Version".into()))?;
    if version != VERSION {
        return Err(RequiredError::Version(version));
    }
    let accepts = json
        .get("accepts")
        .and_then(Value::as_array)
        .ok_or_else(|| RequiredError::Json("no accepts list".into()))?;
    accepts
        .iter()
        .filter(|entry| entry["extra"]["paymentMethod"] == LIGHTNING)
        .find_map(|entry| {
            let requirements = serde_json::from_value(entry.clone()).ok()?;
            Some(LightningOffer {
                requirements,
                accepted: entry.clone(),
            })
        })
        .ok_or(RequiredError::NoLightning)
}

/// Base64 in either alphabet, padded or not (clients differ): the `mpp`
/// crate's lenient reader, which reads bytes, whatever the protocol.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    mpp::base64url_decode(text).ok()
}

/// What an offer binds: the service it sells, its invoice exactly as
/// issued (BOLT11, compared in lower case) and until when it is honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound<'a> {
    /// The service's name.
    pub service: &'a str,
    /// The invoice.
    pub invoice: &'a str,
    /// Unix seconds.
    pub valid_until: u64,
}

/// The binding of an offer: hex HMAC-SHA256 under `key` of [`Bound`].
pub fn binding(key: &[u8], bound: Bound<'_>) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"gate402 x402 v2\0");
    mac.update(bound.service.as_bytes());
    mac.update(b"\0");
    mac.update(bound.invoice.trim().to_ascii_lowercase().as_bytes());
    mac.update(b"\0");
    mac.update(&bound.valid_until.to_be_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `presented` is the binding of `bound` (in constant time).
pub fn binding_holds(key: &[u8], bound: Bound<'_>, presented: &str) -> bool {
    let expected = binding(key, bound);
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirements(invoice: &str) -> Requirements {
        Requirements {
            scheme: SCHEME.into(),
            network: LIGHTNING.into(),
            amount: "10000".into(),
            asset: "BTC".into(),
            pay_to: "02ab".into(),
            max_timeout_seconds: 600,
            extra: LightningExtra {
                payment_method: LIGHTNING.into(),
                invoice: invoice.into(),
                network: "regtest".into(),
                valid_until: 99,
                binding: "b".into(),
            },
        }
    }

    #[test]
    fn a_signature_as_lightning_tools_builds_it_is_read() {
        // JSON.stringify({x402Version: 2, scheme, network, payload: {invoice}, accepted})
        let accepted = requirements("lnbcrt1");
        let json = serde_json::json!({
            "x402Version": 2,
            "scheme": "exact",
            "network": "lightning",
            "payload": {"invoice": "lnbcrt1"},
            "accepted": accepted,
        });
        let value = STANDARD.encode(json.to_string());
        let payment = parse_signature(&value).unwrap();
        assert_eq!(payment.accepted, accepted);
        assert!(payment.payload.preimage.is_none());
        // URL-safe and unpadded spellings read the same.
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
        assert_eq!(parse_signature(&url_safe).unwrap(), payment);

        let mut other = json.clone();
        other["payload"]["invoice"] = "lnbcrt2".into();
        assert_eq!(
            parse_signature(&STANDARD.encode(other.to_string())),
            Err(X402Error::OtherInvoice)
        );
        let mut old = json.clone();
        old["x402Version"] = 1.into();
        assert_eq!(
            parse_signature(&STANDARD.encode(old.to_string())),
            Err(X402Error::Version(1))
        );
        let mut usdc = json;
        usdc["accepted"]["extra"]["paymentMethod"] = "eip3009".into();
        assert!(matches!(
            parse_signature(&STANDARD.encode(usdc.to_string())),
            Err(X402Error::NotLightning(_))
        ));
        assert_eq!(parse_signature("!!"), Err(X402Error::Base64));
    }

    #[test]
    fn an_offer_is_read_and_answered_with_its_entry_echoed_whole() {
        let mut lightning = serde_json::to_value(requirements("lnbcrt1")).unwrap();
        // A field this crate does not know is echoed all the same.
        lightning["extra"]["note"] = "kept".into();
        let usdc = serde_json::json!({
            "scheme": "exact", "network": "eip155:8453", "amount": "10000",
            "asset": "0xa0b8", "payTo": "0x01", "maxTimeoutSeconds": 60,
            "extra": {"name": "USDC", "version": "2"},
        });
        let offer = serde_json::json!({
            "x402Version": 2,
            "resource": {"url": "/weather"},
            "accepts": [usdc, lightning],
        });
        let read = parse_required(&encode(&offer)).unwrap();
        assert_eq!(read.requirements, requirements("lnbcrt1"));
        assert_eq!(read.accepted, lightning);

        let signature = read.signature(Some(&[7; 32]));
        let payment = parse_signature(&signature).unwrap();
        assert_eq!(payment.accepted, requirements("lnbcrt1"));
        assert_eq!(payment.payload.invoice, "lnbcrt1");
        assert_eq!(payment.payload.preimage, Some(hex::encode([7; 32])));
        assert_eq!(
            (payment.scheme.as_str(), payment.network.as_str()),
            (SCHEME, LIGHTNING)
        );
        let sent: Value = serde_json::from_slice(&STANDARD.decode(&signature).unwrap()).unwrap();
        assert_eq!(sent["accepted"], lightning);
        let bare: Value =
            serde_json::from_slice(&STANDARD.decode(read.signature(None)).unwrap()).unwrap();
        assert_eq!(bare["payload"], serde_json::json!({"invoice": "lnbcrt1"}));

        let mut old = offer.clone();
        old["x402Version"] = 1.into();
        assert_eq!(
            parse_required(&encode(&old)),
            Err(RequiredError::Version(1))
        );
        let mut usdc_only = offer;
        usdc_only["accepts"] = serde_json::json!([usdc]);
        assert_eq!(
            parse_required(&encode(&usdc_only)),
            Err(RequiredError::NoLightning)
        );
        assert_eq!(parse_required("!!"), Err(RequiredError::Base64));
    }

    #[test]
    fn the_binding_names_service_invoice_and_time() {
        let bound = Bound {
            service: "svc",
            invoice: "lnbcrt1abc",
            valid_until: 1000,
        };
        let b = binding(b"key", bound);
        assert!(binding_holds(b"key", bound, &b));
        assert!(binding_holds(
            b"key",
            Bound {
                invoice: "LNBCRT1ABC",
                ..bound
            },
            &b
        ));
        for other in [
            Bound {
                service: "other",
                ..bound
            },
            Bound {
                invoice: "lnbcrt1abd",
                ..bound
            },
            Bound {
                valid_until: 1001,
                ..bound
            },
        ] {
            assert!(!binding_holds(b"key", other, &b), "{other:?}");
        }
        assert!(!binding_holds(b"other key", bound, &b));
    }
}
