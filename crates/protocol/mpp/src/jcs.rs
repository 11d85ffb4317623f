//! RFC 8785 JSON canonicalization (JCS).
//!
//! `serde_json_canonicalizer` (what the `mpp` crate builds on) passes every
//! canonicalization vector, including UTF-16 member ordering and
//! ECMAScript number rendering, so it is used as is.

/// The canonical form of a JSON value.
pub fn canonicalize(value: &serde_json::Value) -> String {
    serde_json_canonicalizer::to_string(value).unwrap_or_default()
}

/// Parses JSON text and returns its canonical form.
pub fn canonicalize_str(text: &str) -> Result<String, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    Ok(canonicalize(&value))
}

/// Base64url of the canonical form: how `request` and `opaque` travel.
pub fn encode_canonical(value: &serde_json::Value) -> String {
    crate::base64url::encode(canonicalize(value).as_bytes())
}
