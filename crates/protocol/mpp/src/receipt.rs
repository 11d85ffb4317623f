//! `Payment-Receipt` values.

use mpp::protocol::core::ReceiptStatus;

use crate::base64url::{self, JsonError};
use crate::Receipt;

/// The key under which a receipt names the challenge it settles.
pub const CHALLENGE_ID: &str = "challengeId";

/// The receipt of a settled Lightning charge: `reference` is the payment
/// hash (never the preimage), `challengeId` the challenge it settles.
pub fn lightning(
    payment_hash: &[u8; 32],
    challenge_id: Option<&str>,
    at: time::OffsetDateTime,
) -> Receipt {
    let mut extensions = serde_json::Map::new();
    if let Some(id) = challenge_id.filter(|id| !id.is_empty()) {
        extensions.insert(CHALLENGE_ID.into(), id.into());
    }
    Receipt {
        status: ReceiptStatus::Success,
        method: crate::lightning::METHOD.into(),
        timestamp: crate::format_time(at),
        reference: crate::lightning::hex32(payment_hash),
        external_id: None,
        subscription_id: None,
        extensions,
    }
}

/// The receipt of a closed session (draft-lightning-session-00 §Receipt):
/// `reference` is the session id, with `refundSats` (left out when zero)
/// and `refundStatus` (`succeeded`, `failed` or `skipped`).
pub fn session_close(
    session_id: &[u8; 32],
    refund_sats: u64,
    refund_status: &str,
    at: time::OffsetDateTime,
) -> Receipt {
    let mut receipt = lightning(session_id, None, at);
    if refund_sats > 0 {
        receipt
            .extensions
            .insert("refundSats".into(), refund_sats.into());
    }
    receipt
        .extensions
        .insert("refundStatus".into(), refund_status.into());
    receipt
}

/// The header value: base64url (no padding) of the receipt JSON.
pub fn to_header(receipt: &Receipt) -> String {
    base64url::encode(&serde_json::to_vec(receipt).unwrap_or_default())
}

/// [`to_header`] of [`lightning`]'s receipt, the same bytes, written
/// directly rather than built as a [`Receipt`] and serialized: every paid
/// request answers with one, and serde's way (a map for the extensions,
/// every string escaped) was about 4% of a paid L402 request's
/// instructions. A challenge id other than base64url (none this gateway
/// issues) goes the long way, which escapes it.
pub fn lightning_header(
    payment_hash: &[u8; 32],
    challenge_id: Option<&str>,
    at: time::OffsetDateTime,
) -> String {
    let id = challenge_id.filter(|id| !id.is_empty());
    let plain = |id: &str| {
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !id.is_none_or(plain) {
        return to_header(&lightning(payment_hash, challenge_id, at));
    }
    // Room for the timestamp, the reference and a 43-character id.
    let mut json = String::with_capacity(168);
    for part in [
        &crate::format_time(at),
        r#"","reference":""#,
        &crate::lightning::hex32(payment_hash),
        "\"",
    ] {
        json.push_str(part);
    }
    if let Some(id) = id {
        json.push_str(r#","challengeId":""#);
        json.push_str(id);
        json.push('"');
    }
    json.push('}');
    let mut header = String::with_capacity(OPENING_BASE64.len() + json.len() * 4 / 3 + 4);
    header.push_str(OPENING_BASE64);
    base64url::encode_onto(json.as_bytes(), &mut header);
    header
}

/// The base64url of what every [`lightning_header`] receipt's JSON opens
/// with, up to its timestamp's value
/// (`{"status":"success","method":"lightning","timestamp":"`): 54 bytes, a
/// multiple of 3, so this is the header's fixed first 72 characters and
/// only the rest is encoded per receipt.
const OPENING_BASE64: &str =
    "eyJzdGF0dXMiOiJzdWNjZXNzIiwibWV0aG9kIjoibGlnaHRuaW5nIiwidGltZXN0YW1wIjoi";

/// Any receipt-shaped value as JSON (session events included).
pub fn decode_json(header: &str) -> Result<serde_json::Value, JsonError> {
    base64url::decode_json_object(header.trim())
}

/// A payment receipt, typed.
pub fn parse(header: &str) -> Result<Receipt, JsonError> {
    let value = decode_json(header)?;
    serde_json::from_value(value).map_err(|e| JsonError::Json(e.to_string()))
}

/// The `challengeId` a receipt carries.
pub fn challenge_id(receipt: &Receipt) -> Option<&str> {
    receipt.extensions.get(CHALLENGE_ID)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPENING: &str = r#"{"status":"success","method":"lightning","timestamp":""#;

    #[test]
    fn the_opening_encodes_on_its_own() {
        assert_eq!(OPENING.len() % 3, 0, "an encoding that others can follow");
        assert_eq!(base64url::encode(OPENING.as_bytes()), OPENING_BASE64);
        let method = format!(r#""method":"{}""#, crate::lightning::METHOD);
        assert!(OPENING.contains(&method), "{OPENING}");
    }

    proptest! {
        #[test]
        fn formatted_receipt_parses_back(hash in any::<[u8; 32]>(), id in proptest::option::of("[A-Za-z0-9_-]{1,43}"), secs in 0i64..4_000_000_000) {
            let at = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let receipt = lightning(&hash, id.as_deref(), at);
            let back = parse(&to_header(&receipt)).unwrap();
            prop_assert_eq!(back.reference, hex::encode(hash));
            prop_assert_eq!(challenge_id(&receipt), id.as_deref());
            prop_assert_eq!(crate::parse_time(&back.timestamp), Some(at));
            prop_assert_eq!(serde_json::to_value(&receipt).unwrap(), decode_json(&to_header(&receipt)).unwrap());
        }

        #[test]
        fn a_receipt_written_directly_is_the_serialized_one(
            hash in any::<[u8; 32]>(),
            id in proptest::option::of(prop_oneof!["[A-Za-z0-9_-]{0,43}", any::<String>(), "[a-z\"\\\\\u{0}-\u{1f}]{1,8}"]),
            secs in 0i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
        ) {
            let at = time::OffsetDateTime::from_unix_timestamp(secs).unwrap().replace_nanosecond(nanos).unwrap();
            prop_assert_eq!(
                lightning_header(&hash, id.as_deref(), at),
                to_header(&lightning(&hash, id.as_deref(), at))
            );
        }
    }
}
