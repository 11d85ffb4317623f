//! The Lightning session intent (draft-lightning-session-00): a deposit
//! paid once, then spent a unit price per request with the deposit's
//! preimage as a bearer secret, topped up with further invoices, and closed
//! with the unspent balance refunded to an amountless return invoice.
//!
//! Wire types and stateless checks only; the balance itself lives in a
//! store.

use gate402_bolt11::{Invoice, Network};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::base64url::decode_object;
use crate::challenge::{ChallengeKey, IdInput};
use crate::lightning::{CURRENCY, METHOD};
use crate::verify::VerifyError;
use crate::PaymentCredential;

/// The intent name.
pub const SESSION: &str = "session";

/// The deposit, in units, when a server sets none (the draft's
/// recommendation).
pub const DEFAULT_DEPOSIT_UNITS: u64 = 20;

/// The idle timeout the draft recommends, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;

/// The `request` of a session challenge. Numbers are decimal strings, as
/// the draft has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRequest {
    /// Price of one unit, in satoshis.
    pub amount: String,
    /// Always `sat`.
    pub currency: String,
    /// What is being paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What a unit is (`request`, `token`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_type: Option<String>,
    /// The invoice that opens or tops up a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposit_invoice: Option<String>,
    /// The deposit invoice's payment hash, lowercase hex.
    pub payment_hash: String,
    /// The deposit, in satoshis (the invoice's amount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposit_amount: Option<String>,
    /// Seconds of inactivity after which the server closes a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

impl SessionRequest {
    /// A session offer: units of `unit_sats`, a deposit of `deposit_sats`
    /// payable with `invoice`.
    pub fn new(
        unit_sats: u64,
        deposit_sats: u64,
        description: Option<String>,
        invoice: impl Into<String>,
        payment_hash: &[u8; 32],
        idle_timeout_secs: u64,
    ) -> Self {
        Self {
            amount: unit_sats.to_string(),
            currency: CURRENCY.to_owned(),
            description,
            unit_type: Some("request".into()),
            deposit_invoice: Some(invoice.into()),
            payment_hash: crate::lightning::hex32(payment_hash),
            deposit_amount: Some(deposit_sats.to_string()),
            idle_timeout: Some(idle_timeout_secs.to_string()),
        }
    }

    /// The unit price, if a canonical decimal.
    pub fn unit_sats(&self) -> Option<u64> {
        canonical(&self.amount)
    }

    /// The deposit, if stated as a canonical decimal.
    pub fn deposit_sats(&self) -> Option<u64> {
        canonical(self.deposit_amount.as_deref()?)
    }

    /// The payment hash as bytes, if 64 hex digits.
    pub fn payment_hash(&self) -> Option<[u8; 32]> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&self.payment_hash, &mut hash).ok()?;
        Some(hash)
    }

    /// As JSON, for [`crate::challenge::NewChallenge::request`].
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

fn canonical(text: &str) -> Option<u64> {
    let n: u64 = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

/// A session credential's payload: what the client does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum SessionAction {
    /// Opens a session with the paid deposit; refunds go to
    /// `return_invoice` (BOLT11 with no amount).
    Open {
        /// The deposit's preimage, hex.
        preimage: String,
        /// Where the unspent balance is paid on close.
        return_invoice: String,
    },
    /// Spends from the session.
    Bearer {
        /// The session: its deposit's payment hash, hex.
        session_id: String,
        /// The deposit's preimage, hex.
        preimage: String,
    },
    /// Adds a paid deposit to the session.
    TopUp {
        /// The session.
        session_id: String,
        /// The preimage of the top-up's invoice (the echoed challenge's).
        top_up_preimage: String,
    },
    /// Closes the session; the unspent balance is refunded.
    Close {
        /// The session.
        session_id: String,
        /// The deposit's preimage, hex.
        preimage: String,
    },
}

impl SessionAction {
    /// The action's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            SessionAction::Open { .. } => "open",
            SessionAction::Bearer { .. } => "bearer",
            SessionAction::TopUp { .. } => "topUp",
            SessionAction::Close { .. } => "close",
        }
    }
}

/// A session credential that passed the stateless checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSession {
    /// The echoed challenge's id.
    pub challenge_id: String,
    /// The echoed challenge's terms, as issued (bound by its id).
    pub request: SessionRequest,
    /// The action.
    pub action: SessionAction,
}

/// Checks a session credential against `key` (this route's) and `realm`:
/// the echoed challenge was issued here, unaltered, and, when
/// `unexpired` (open and top-up, which spend its invoice), has not
/// expired.
///
/// # Errors
///
/// [`VerifyError`]: another method or intent, an id that does not verify,
/// another realm, an expired challenge ([`VerifyError::Expired`]), a request
/// or payload that is not a session's.
pub fn verify_session(
    key: &ChallengeKey,
    credential: &PaymentCredential,
    realm: &str,
    unexpired: impl Fn(&SessionAction) -> bool,
    now: time::OffsetDateTime,
) -> Result<VerifiedSession, VerifyError> {
    let echo = &credential.challenge;
    if echo.method.as_str() != METHOD || echo.intent.as_str() != SESSION {
        return Err(VerifyError::MethodUnsupported {
            method: echo.method.to_string(),
            intent: echo.intent.as_str().to_owned(),
        });
    }
    if !key.verifies(&echo.id, &IdInput::of_echo(echo)) {
        return Err(VerifyError::UnknownChallenge);
    }
    if echo.realm != realm {
        return Err(VerifyError::WrongRealm(echo.realm.clone()));
    }
    let action: SessionAction = serde_json::from_value(credential.payload.clone())
        .map_err(|e| VerifyError::SessionPayload(e.to_string()))?;
    if unexpired(&action) {
        if let Some(text) = echo.expires.as_deref() {
            let at = crate::parse_time(text).ok_or_else(|| VerifyError::BadExpires(text.into()))?;
            if now >= at {
                return Err(VerifyError::Expired(text.into()));
            }
        }
    }
    let request: SessionRequest =
        decode_object(echo.request.raw()).map_err(|e| VerifyError::Request(e.to_string()))?;
    if request.currency != CURRENCY {
        return Err(VerifyError::Terms(format!(
            "currency {:?}",
            request.currency
        )));
    }
    Ok(VerifiedSession {
        challenge_id: echo.id.clone(),
        request,
        action,
    })
}

/// The payment hash a hex preimage proves, if it is 64 lowercase hex
/// digits.
pub fn preimage_hash(preimage: &str) -> Option<[u8; 32]> {
    let bytes = crate::lightning::PreimagePayload {
        preimage: preimage.to_owned(),
    }
    .bytes()?;
    Some(Sha256::digest(bytes).into())
}

/// Whether `preimage` (hex) proves `hash`, in constant time.
pub fn proves(preimage: &str, hash: &[u8; 32]) -> bool {
    preimage_hash(preimage).is_some_and(|h| bool::from(h.ct_eq(hash)))
}

/// A session id (hex) as bytes, if 64 hex digits.
pub fn session_id(text: &str) -> Option<[u8; 32]> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(id)
}

/// Why a return invoice is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReturnInvoiceError {
    /// It does not decode as BOLT11.
    #[error("the return invoice is not a BOLT11 invoice: {0}")]
    Invalid(String),
    /// It asks for an amount: the server decides the refund.
    #[error("the return invoice must not encode an amount")]
    HasAmount,
    /// It is for another network.
    #[error("the return invoice is for {0}, this server pays on {1}")]
    Network(Network, Network),
    /// It expired (at this unix time): no refund could be paid to it.
    #[error("the return invoice expired at unix time {0}; send a fresh one")]
    Expired(u64),
}

/// Checks an `open` action's return invoice: BOLT11 on `network`, with no
/// amount (or an explicit zero), not expired at `now`. Returns it in its
/// one spelling ([`Invoice::canonical`]), the one to keep and compare:
/// the same invoice in upper case, or with its signature's other form,
/// would otherwise pass for another.
///
/// # Errors
///
/// [`ReturnInvoiceError`].
pub fn check_return_invoice(
    bolt11: &str,
    network: Network,
    now: std::time::SystemTime,
) -> Result<String, ReturnInvoiceError> {
    let invoice = Invoice::parse(bolt11).map_err(|e| ReturnInvoiceError::Invalid(e.to_string()))?;
    if invoice.is_expired_at(now) {
        return Err(ReturnInvoiceError::Expired(invoice.expires_at()));
    }
    if invoice.amount_msat().is_some_and(|a| a > 0) {
        return Err(ReturnInvoiceError::HasAmount);
    }
    if invoice.network() != network {
        return Err(ReturnInvoiceError::Network(invoice.network(), network));
    }
    Ok(invoice.canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_the_draft_spells_them() {
        let open: SessionAction = serde_json::from_str(
            r#"{"action":"open","preimage":"aa","returnInvoice":"lnbc1p","extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            open,
            SessionAction::Open {
                preimage: "aa".into(),
                return_invoice: "lnbc1p".into()
            }
        );
        let top_up: SessionAction =
            serde_json::from_str(r#"{"action":"topUp","sessionId":"ab","topUpPreimage":"cd"}"#)
                .unwrap();
        assert_eq!(top_up.name(), "topUp");
        assert_eq!(
            serde_json::to_value(&top_up).unwrap(),
            serde_json::json!({"action":"topUp","sessionId":"ab","topUpPreimage":"cd"})
        );
        assert!(
            serde_json::from_str::<SessionAction>(r#"{"action":"bearer","preimage":"aa"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<SessionAction>(r#"{"preimage":"aa"}"#).is_err());
    }

    #[test]
    fn the_request_has_the_drafts_fields() {
        let request = SessionRequest::new(3, 60, None, "lnbc600n1p", &[0xaa; 32], 300);
        let value = request.to_value();
        assert_eq!(value["amount"], "3");
        assert_eq!(value["depositAmount"], "60");
        assert_eq!(value["depositInvoice"], "lnbc600n1p");
        assert_eq!(value["idleTimeout"], "300");
        assert_eq!(value["paymentHash"], "aa".repeat(32));
        assert_eq!(request.unit_sats(), Some(3));
        assert_eq!(request.deposit_sats(), Some(60));
    }

    #[test]
    fn a_preimage_proves_its_hash_only() {
        let preimage = "ab".repeat(32);
        let hash: [u8; 32] = Sha256::digest([0xabu8; 32]).into();
        assert!(proves(&preimage, &hash));
        assert!(!proves(&"ac".repeat(32), &hash));
        assert!(!proves(&preimage.to_uppercase(), &hash));
        assert!(!proves("ab", &hash));
    }
}
