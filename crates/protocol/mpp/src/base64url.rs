//! Strict base64url (RFC 4648 §5).
//!
//! `mpp::base64url_decode` is lenient on purpose: it takes the standard
//! alphabet and drops `=` wherever it stands. A lenient decoder gives one
//! payload several spellings, so a credential could be replayed under a new
//! string; the conformance vectors demand rejection, so decoding is ours.
//! Encoding (no padding) is the same either way.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Why a string is not strict base64url.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base64UrlError {
    /// Padding in the middle, too much of it, or to a wrong length.
    #[error("invalid base64url padding")]
    Padding,
    /// A character outside the URL-safe alphabet, a dangling character or
    /// non-zero trailing bits.
    #[error("invalid base64url: {0}")]
    Invalid(String),
}

/// Encodes without padding.
pub fn encode(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// [`encode`] appended to `out`: after an encoding of a multiple of 3
/// bytes, the encoding of the two inputs joined.
pub fn encode_onto(data: &[u8], out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(data, out);
}

/// Decodes the URL-safe alphabet; padding is accepted only where and as
/// much as it belongs. No whitespace, no standard alphabet, no non-zero
/// trailing bits.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64UrlError> {
    let body = match text.find('=') {
        None => text,
        Some(at) => {
            let (body, padding) = text.split_at(at);
            let expected = (4 - body.len() % 4) % 4;
            if !padding.bytes().all(|b| b == b'=') || padding.len() != expected {
                return Err(Base64UrlError::Padding);
            }
            body
        }
    };
    URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| Base64UrlError::Invalid(e.to_string()))
}

/// Decodes and parses JSON that must be an object.
pub fn decode_json_object(text: &str) -> Result<serde_json::Value, JsonError> {
    let bytes = decode(text)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| JsonError::Json(e.to_string()))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(JsonError::NotAnObject)
    }
}

/// Decodes JSON that must be an object straight into `T`, without the
/// tree of [`decode_json_object`].
///
/// # Errors
///
/// As [`decode_json_object`]'s; a JSON object that is not a `T` is
/// [`JsonError::Json`].
pub fn decode_object<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, JsonError> {
    let bytes = decode(text)?;
    // A struct would also take a JSON array of its fields.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            Ok(_) => Err(JsonError::NotAnObject),
            Err(e) => Err(JsonError::Json(e.to_string())),
        };
    }
    serde_json::from_slice(&bytes).map_err(|e| JsonError::Json(e.to_string()))
}

/// Why a base64url JSON value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not strict base64url.
    #[error(transparent)]
    Base64(#[from] Base64UrlError),
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("JSON is not an object")]
    NotAnObject,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_object_decodes_into_a_struct_and_nothing_else_does() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Amount {
            amount: String,
        }
        let text = |json: &str| encode(json.as_bytes());
        assert_eq!(
            decode_object::<Amount>(&text(r#" {"amount":"5","x":1}"#)).unwrap(),
            Amount { amount: "5".into() }
        );
        // Serde takes a struct's fields from an array; a request is an object.
        assert_eq!(
            decode_object::<Amount>(&text(r#"["5"]"#)).unwrap_err(),
            JsonError::NotAnObject
        );
        assert!(matches!(
            decode_object::<Amount>(&text("[5")).unwrap_err(),
            JsonError::Json(_)
        ));
        assert!(matches!(
            decode_object::<Amount>(&text(r#"{"amt":"5"}"#)).unwrap_err(),
            JsonError::Json(_)
        ));
        assert!(matches!(
            decode_object::<Amount>("e30=!").unwrap_err(),
            JsonError::Base64(_)
        ));
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let text = encode(&data);
            prop_assert_eq!(decode(&text).unwrap(), data);
        }

        #[test]
        fn never_panics(s in "\\PC{0,100}") {
            let _ = decode(&s);
        }
    }
}
