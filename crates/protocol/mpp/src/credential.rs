//! `Authorization: Payment <base64url JSON>` credentials.

use gate402_http_auth::parse_credentials;

use crate::base64url::{self, Base64UrlError};
use crate::PaymentCredential;

/// Why an `Authorization` value is not a well-formed Payment credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not even a well-formed `Authorization` value.
    #[error("malformed Authorization header: {0}")]
    Header(#[from] gate402_http_auth::Error),
    /// Another scheme.
    #[error("scheme {0:?} is not Payment")]
    NotPayment(String),
    /// Nothing after the scheme.
    #[error("Payment credential is empty")]
    Empty,
    /// Not strict base64url. Named in the text, not as a source: an
    /// error chain printed whole (`{:#}`) said it twice.
    #[error("Payment credential: {0}")]
    Base64(Base64UrlError),
    /// Not the credential JSON shape.
    #[error("Payment credential JSON: {0}")]
    Json(String),
    /// A required challenge field is empty.
    #[error("Payment credential echoes an empty challenge {0}")]
    EmptyField(&'static str),
    /// No `payload` object.
    #[error("Payment credential has no payload object")]
    MissingPayload,
}

impl From<Base64UrlError> for CredentialError {
    fn from(error: Base64UrlError) -> Self {
        Self::Base64(error)
    }
}

/// Parses `Payment <token>`: strict base64url of the credential JSON, the
/// echoed challenge complete, a payload object present.
///
/// Our own rather than `mpp::parse_authorization`, whose base64 decoding is
/// lenient (see [`crate::base64url`]) and which lets a missing `payload`
/// through as `null`.
pub fn parse_authorization(value: &str) -> Result<PaymentCredential, CredentialError> {
    let credentials = parse_credentials(value)?;
    if !credentials.is_scheme(crate::SCHEME) {
        return Err(CredentialError::NotPayment(credentials.scheme.to_owned()));
    }
    if credentials.rest.is_empty() {
        return Err(CredentialError::Empty);
    }
    let json = base64url::decode(credentials.rest)?;
    let credential: PaymentCredential =
        serde_json::from_slice(&json).map_err(|e| CredentialError::Json(e.to_string()))?;
    let echo = &credential.challenge;
    for (name, value) in [
        ("id", echo.id.as_str()),
        ("realm", echo.realm.as_str()),
        ("method", echo.method.as_str()),
        ("intent", echo.intent.as_str()),
        ("request", echo.request.raw()),
    ] {
        if value.is_empty() {
            return Err(CredentialError::EmptyField(name));
        }
    }
    if !credential.payload.is_object() {
        return Err(CredentialError::MissingPayload);
    }
    Ok(credential)
}

/// Formats a credential as an `Authorization` value.
pub fn to_authorization(credential: &PaymentCredential) -> String {
    let json = serde_json::to_vec(credential).unwrap_or_default();
    format!("{} {}", crate::SCHEME, base64url::encode(&json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::{ChallengeKey, NewChallenge};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn formatted_credential_parses_back(preimage in any::<[u8; 32]>(), source in proptest::option::of("did:key:[a-zA-Z0-9]{10,40}")) {
            let request = serde_json::json!({"amount": "21", "currency": "sat"});
            let challenge = ChallengeKey::new("0123456789abcdef0123456789abcdef").unwrap().issue(NewChallenge {
                realm: "r", method: "lightning", intent: "charge", request: &request,
                expires: None, digest: None, description: Some("d"), opaque: None, header: None,
            });
            let mut credential = PaymentCredential::new(challenge.to_echo(), serde_json::json!({"preimage": hex::encode(preimage)}));
            credential.source = source;
            let back = parse_authorization(&to_authorization(&credential)).unwrap();
            prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&credential).unwrap());
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_authorization(&s);
        }
    }
}
