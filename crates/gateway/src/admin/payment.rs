//! A payment as the admin API names and shows it: the hash an operator
//! gives (hex, or a token that holds it) and the JSON of its row.

use gate402_store::PaymentRow;
use serde_json::{json, Value};

/// The payment hash a token names: 64 hex digits, or an L402 macaroon
/// (alone, as `<macaroon>:<preimage>`, or with its scheme).
///
/// # Errors
///
/// A message saying what the text is not.
pub(super) fn hash_of(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() == 64 {
        if let Ok(bytes) = hex::decode(text) {
            return Ok(bytes.try_into().expect("32 bytes"));
        }
    }
    if let Some(short) = short_hex(text) {
        return Err(format!(
            "a payment hash is 64 hex digits, this is {short}: the paying client prints it \
             whole (`gate402 tokens show <prefix>`, `gate402 receipts --json`)"
        ));
    }
    let token = text
        .split_once(' ')
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("L402") || scheme.eq_ignore_ascii_case("LSAT")
        })
        .map_or(text, |(_, token)| token.trim());
    let macaroon = token
        .split_once(':')
        .map_or(token, |(macaroon, _)| macaroon);
    let macaroon = gate402_l402::Macaroon::from_base64(macaroon)
        .map_err(|_| "not a payment hash (64 hex digits) nor an L402 macaroon".to_owned())?;
    gate402_l402::Identifier::from_bytes(macaroon.identifier())
        .map(|id| id.payment_hash)
        .map_err(|e| format!("the macaroon's identifier is not an L402 one: {e}"))
}

/// How many digits a hex text shorter than a payment hash has: the
/// 16-digit prefix a client prints, given where the whole hash is needed.
pub(super) fn short_hex(text: &str) -> Option<usize> {
    (!text.is_empty() && text.len() < 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(text.len())
}

/// A payment as the admin API shows it (hash in hex, amounts in sat and
/// msat, times in unix seconds).
pub(super) fn payment_json(row: &PaymentRow) -> Value {
    json!({
        "payment_hash": hex::encode(row.payment_hash),
        "service": row.service,
        "scheme": row.scheme,
        "amount_sats": row.amount_msat / 1000,
        "amount_msat": row.amount_msat,
        "first_served_at": row.first_served_at,
        "last_served_at": row.last_served_at,
        "served": row.served,
    })
}
