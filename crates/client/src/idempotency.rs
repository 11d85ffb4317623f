//! `Idempotency-Key` on paid requests (draft-ietf-httpapi-idempotency-key-header):
//! a paid request whose method is not idempotent carries a key, the same
//! one on every retry of that request, so that an API which deduplicates
//! by it performs the operation once however often the client has to
//! send it.

use reqwest::header::HeaderValue;
use reqwest::{Method, Request};
use sha2::{Digest, Sha256};

/// The request field.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The key a paid request goes out with, and what it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The field's value: a Structured Field String (RFC 8941, quoted, as
    /// the draft requires) holding a random UUID (version 4).
    pub value: String,
    /// [`RequestKey::digest`] of the request it was made for: a key is
    /// never reused for a request with other content, which the draft
    /// forbids.
    pub request_digest: String,
}

impl RequestKey {
    /// A fresh key for `request`, when it needs one: its method is not
    /// idempotent (RFC 9110, section 9.2.2: not GET, HEAD, OPTIONS, TRACE,
    /// PUT or DELETE) and it carries no `Idempotency-Key` of its own, which
    /// is left as it is.
    pub fn for_request(request: &Request) -> Option<Self> {
        if idempotent(request.method()) || request.headers().contains_key(IDEMPOTENCY_KEY) {
            return None;
        }
        Some(Self {
            value: format!("\"{}\"", uuid_v4(rand::random())),
            request_digest: Self::digest(request),
        })
    }

    /// SHA-256 (hex) of `request`'s method, URL and body: equal for a
    /// retry of the same request. A streaming body, which cannot be read
    /// here, counts as one no other request has.
    pub fn digest(request: &Request) -> String {
        let mut hash = Sha256::new();
        hash.update(request.method().as_str());
        hash.update(b"\n");
        hash.update(request.url().as_str());
        hash.update(b"\n");
        match request.body().map(|body| body.as_bytes()) {
            None => hash.update(b"no body"),
            Some(Some(bytes)) => {
                hash.update(b"body\n");
                hash.update(bytes);
            }
            Some(None) => hash.update(rand::random::<[u8; 32]>()),
        }
        hex::encode(hash.finalize())
    }

    /// The key `request` carries, if any, with its digest.
    pub(crate) fn of(request: &Request) -> Option<Self> {
        let value = request.headers().get(IDEMPOTENCY_KEY)?.to_str().ok()?;
        Some(Self {
            value: value.to_owned(),
            request_digest: Self::digest(request),
        })
    }

    /// Sets the key on `request`, replacing any set before.
    pub(crate) fn apply(&self, request: &mut Request) {
        if let Ok(value) = HeaderValue::from_str(&self.value) {
            request.headers_mut().insert(IDEMPOTENCY_KEY, value);
        }
    }
}

/// Whether repeating a request with `method` has the effect of sending it
/// once (RFC 9110, section 9.2.2).
fn idempotent(method: &Method) -> bool {
    method.is_idempotent()
}

/// `bytes` as a version 4 (random) UUID, RFC 9562.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, body: &'static str) -> Request {
        let mut request = Request::new(method, "http://127.0.0.1:1/x".parse().unwrap());
        *request.body_mut() = Some(body.into());
        request
    }

    #[test]
    fn only_a_request_that_is_not_idempotent_and_has_no_key_gets_one() {
        for method in [Method::POST, Method::PATCH] {
            let key = RequestKey::for_request(&request(method.clone(), "{}")).unwrap();
            let inner = key.value.trim_matches('"');
            assert_eq!(key.value.len(), inner.len() + 2, "{method}: quoted");
            assert_eq!(inner.len(), 36, "{inner}");
            assert_eq!(&inner[14..15], "4", "{inner}: version 4");
            assert!("89ab".contains(&inner[19..20]), "{inner}: RFC variant");
        }
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert_eq!(RequestKey::for_request(&request(method, "")), None);
        }
        let mut own = request(Method::POST, "{}");
        own.headers_mut()
            .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("mine"));
        assert_eq!(RequestKey::for_request(&own), None);
    }

    #[test]
    fn keys_differ_and_digests_tell_requests_apart() {
        let a = RequestKey::for_request(&request(Method::POST, "{}")).unwrap();
        let b = RequestKey::for_request(&request(Method::POST, "{}")).unwrap();
        assert_ne!(a.value, b.value);
        assert_eq!(a.request_digest, b.request_digest);
        let other_body = RequestKey::digest(&request(Method::POST, "{\"a\":1}"));
        let other_method = RequestKey::digest(&request(Method::PATCH, "{}"));
        assert_ne!(a.request_digest, other_body);
        assert_ne!(a.request_digest, other_method);
    }
}
