//! `Payment` challenges: issuing with an HMAC-bound id, formatting, parsing.

use std::collections::BTreeMap;

use gate402_http_auth::{format_challenge, Challenge};
use hmac::{Hmac, KeyInit, Mac};
use mpp::protocol::core::{compute_challenge_id_with_header, Base64UrlJson, MethodName};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::base64url::{decode_json_object, JsonError};
use crate::{jcs, PaymentChallenge};

/// The shortest secret accepted: whoever guesses it can mint challenges.
pub const MIN_SECRET_LEN: usize = 32;

/// The secrets that bind challenge ids: the current one signs, it and the
/// previous ones verify, so a rotation does not void challenges in flight.
#[derive(Clone)]
pub struct ChallengeKey {
    secrets: Vec<String>,
}

/// A secret too short to be safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MPP secret must be at least {MIN_SECRET_LEN} bytes, got {0}")]
pub struct SecretTooShort(pub usize);

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChallengeKey({} secrets)", self.secrets.len())
    }
}

impl ChallengeKey {
    /// A key with one secret of at least 32 bytes.
    pub fn new(current: impl Into<String>) -> Result<Self, SecretTooShort> {
        let current = current.into();
        check_len(&current)?;
        Ok(Self {
            secrets: vec![current],
        })
    }

    /// Adds a previous secret that still verifies but no longer signs.
    pub fn with_previous(mut self, previous: impl Into<String>) -> Result<Self, SecretTooShort> {
        let previous = previous.into();
        check_len(&previous)?;
        self.secrets.push(previous);
        Ok(self)
    }

    /// The key of one scope (a service, a tool): each secret replaced by an
    /// HMAC of the scope under it. A challenge issued under one scope's
    /// key does not verify under another's, so it pays for nothing else,
    /// with no parameter a client could drop (deployed clients drop
    /// `opaque`).
    pub fn scoped(&self, scope: &str) -> ChallengeKey {
        let derive = |secret: &String| {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes any key length");
            mac.update(b"gate402 challenge scope\0");
            mac.update(scope.as_bytes());
            crate::lightning::hex32(&mac.finalize().into_bytes().into())
        };
        ChallengeKey {
            secrets: self.secrets.iter().map(derive).collect(),
        }
    }

    /// The id a challenge with these parameters gets under the current secret.
    pub fn id_for(&self, params: &IdInput<'_>) -> String {
        params.id_under(&self.secrets[0])
    }

    /// Whether `id` was issued for these parameters under any known secret,
    /// compared in constant time.
    pub fn verifies(&self, id: &str, params: &IdInput<'_>) -> bool {
        self.secrets
            .iter()
            .any(|secret| bool::from(params.id_under(secret).as_bytes().ct_eq(id.as_bytes())))
    }

    /// Issues a challenge: `request` and `opaque` in base64url JCS, the id
    /// the HMAC of every bound parameter.
    pub fn issue(&self, new: NewChallenge<'_>) -> PaymentChallenge {
        let request = Base64UrlJson::from_raw(jcs::encode_canonical(new.request));
        let opaque = new.opaque.map(|map| {
            let value = serde_json::to_value(map).unwrap_or_default();
            Base64UrlJson::from_raw(jcs::encode_canonical(&value))
        });
        let expires = new.expires.map(crate::format_time);
        let input = IdInput {
            realm: new.realm,
            method: new.method,
            intent: new.intent,
            request: request.raw(),
            expires: expires.as_deref(),
            digest: new.digest,
            header: new.header,
            opaque: opaque.as_ref().map(Base64UrlJson::raw),
        };
        let id = self.id_for(&input);
        PaymentChallenge {
            id,
            realm: new.realm.to_owned(),
            method: new.method.into(),
            intent: new.intent.into(),
            request,
            expires,
            description: new.description.map(str::to_owned),
            digest: new.digest.map(str::to_owned),
            opaque,
            header: new.header.map(str::to_owned),
        }
    }
}

fn check_len(secret: &str) -> Result<(), SecretTooShort> {
    if secret.len() < MIN_SECRET_LEN {
        Err(SecretTooShort(secret.len()))
    } else {
        Ok(())
    }
}

/// What a new challenge carries.
#[derive(Debug, Clone)]
pub struct NewChallenge<'a> {
    /// Protection space, usually the API's host.
    pub realm: &'a str,
    /// Payment method (`lightning`).
    pub method: &'a str,
    /// Payment intent (`charge`).
    pub intent: &'a str,
    /// The method's request object, canonicalized before encoding.
    pub request: &'a serde_json::Value,
    /// When the challenge stops being payable.
    pub expires: Option<time::OffsetDateTime>,
    /// Digest of the request body this challenge is bound to.
    pub digest: Option<&'a str>,
    /// Display text, not bound by the id.
    pub description: Option<&'a str>,
    /// Server correlation data, bound by the id.
    pub opaque: Option<&'a BTreeMap<String, String>>,
    /// The field the credential must come in, when not `Authorization`
    /// (`Payment-Authorization`, for requests whose `Authorization`
    /// carries something else), bound by the id.
    pub header: Option<&'a str>,
}

/// The parameters the challenge id binds, as they travel.
///
/// `id = base64url(HMAC-SHA256(secret, realm|method|intent|request|expires|digest[|header]|opaque))`,
/// absent slots empty; `header` has a slot only when it names a field other
/// than `Authorization` (draft-httpauth-payment-01, in the slot order of the
/// `mpp` crate 0.18 and mppx 0.11).
#[derive(Debug, Clone, Copy)]
pub struct IdInput<'a> {
    /// `realm`.
    pub realm: &'a str,
    /// `method`.
    pub method: &'a str,
    /// `intent`.
    pub intent: &'a str,
    /// `request`, base64url as sent.
    pub request: &'a str,
    /// `expires` as sent.
    pub expires: Option<&'a str>,
    /// `digest` as sent.
    pub digest: Option<&'a str>,
    /// `header` as sent.
    pub header: Option<&'a str>,
    /// `opaque`, base64url as sent.
    pub opaque: Option<&'a str>,
}

impl<'a> IdInput<'a> {
    /// The bound parameters of a challenge.
    pub fn of_challenge(c: &'a PaymentChallenge) -> Self {
        Self {
            realm: &c.realm,
            method: c.method.as_str(),
            intent: c.intent.as_str(),
            request: c.request.raw(),
            expires: c.expires.as_deref(),
            digest: c.digest.as_deref(),
            header: c.header.as_deref(),
            opaque: c.opaque.as_ref().map(Base64UrlJson::raw),
        }
    }

    /// The bound parameters a credential echoes.
    pub fn of_echo(e: &'a crate::ChallengeEcho) -> Self {
        Self {
            realm: &e.realm,
            method: e.method.as_str(),
            intent: e.intent.as_str(),
            request: e.request.raw(),
            expires: e.expires.as_deref(),
            digest: e.digest.as_deref(),
            header: e.header.as_deref(),
            opaque: e.opaque.as_ref().map(Base64UrlJson::raw),
        }
    }

    /// The HMAC input string (for debugging and the conformance vectors).
    pub fn hmac_input(&self) -> String {
        let mut slots = vec![
            self.realm,
            self.method,
            self.intent,
            self.request,
            self.expires.unwrap_or(""),
            self.digest.unwrap_or(""),
        ];
        let header = mpp::protocol::core::advertised_credential_header(self.header);
        if let Some(header) = &header {
            slots.push(header);
        }
        slots.push(self.opaque.unwrap_or(""));
        slots.join("|")
    }

    /// The id under one secret. Servers go through [`ChallengeKey`], which
    /// enforces the secret's length; this is for conformance checks.
    pub fn id_under(&self, secret: &str) -> String {
        compute_challenge_id_with_header(
            secret,
            self.realm,
            self.method,
            self.intent,
            self.request,
            self.expires,
            self.digest,
            self.opaque,
            self.header,
        )
    }
}

/// Formats a challenge as a `WWW-Authenticate` value, parameters in the
/// order the spec lists them.
pub fn to_header(c: &PaymentChallenge) -> Result<String, gate402_http_auth::Error> {
    let mut params = vec![
        ("id", c.id.as_str()),
        ("realm", c.realm.as_str()),
        ("method", c.method.as_str()),
        ("intent", c.intent.as_str()),
        ("request", c.request.raw()),
    ];
    let optional = [
        ("expires", c.expires.as_deref()),
        ("digest", c.digest.as_deref()),
        ("description", c.description.as_deref()),
        ("header", c.header.as_deref()),
        ("opaque", c.opaque.as_ref().map(Base64UrlJson::raw)),
    ];
    params.extend(optional.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))));
    format_challenge(crate::SCHEME, params)
}

/// A challenge's `description` as its parameter can carry it: control
/// characters (a tool's line breaks) as spaces, since a quoted string
/// holds none; the description binds nothing, so nothing else changes.
pub fn one_line(description: &str) -> std::borrow::Cow<'_, str> {
    if description.chars().any(char::is_control) {
        description
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        description.into()
    }
}

/// Why a `Payment` challenge is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Another scheme.
    #[error("not a Payment challenge")]
    NotPayment,
    /// A required parameter is absent or empty.
    #[error("Payment challenge lacks the {0} parameter")]
    Missing(&'static str),
    /// `method` is not lowercase letters.
    #[error("Payment challenge method {0:?} is not a valid method name")]
    InvalidMethod(String),
    /// `request` is not base64url JSON of an object.
    #[error("Payment challenge request: {0}")]
    Request(#[from] JsonError),
}

/// Reads one `Payment` challenge from its tokenized form. Only presence
/// and shape are checked here; [`decode_request`] checks `request`.
pub fn from_challenge(c: &Challenge) -> Result<PaymentChallenge, ChallengeError> {
    if !c.is_scheme(crate::SCHEME) {
        return Err(ChallengeError::NotPayment);
    }
    let required = |name: &'static str| {
        c.param(name)
            .filter(|v| !v.is_empty())
            .ok_or(ChallengeError::Missing(name))
    };
    let (id, realm, method, intent, request) = (
        required("id")?,
        required("realm")?,
        required("method")?,
        required("intent")?,
        required("request")?,
    );
    // `MethodName::new` lowercases, but the id binds the text as sent, so
    // anything but the canonical lowercase form is refused, not repaired.
    let method_name = MethodName::new(method);
    if method_name.as_str() != method || !method_name.is_valid() {
        return Err(ChallengeError::InvalidMethod(method.to_owned()));
    }
    let method = method_name;
    let optional = |name: &str| c.param(name).map(str::to_owned);
    Ok(PaymentChallenge {
        id: id.to_owned(),
        realm: realm.to_owned(),
        method,
        intent: intent.into(),
        request: Base64UrlJson::from_raw(request),
        expires: optional("expires"),
        description: optional("description"),
        digest: optional("digest"),
        opaque: optional("opaque").map(Base64UrlJson::from_raw),
        header: optional("header"),
    })
}

/// No usable `Payment` challenge in a header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPaymentChallenge {
    /// The header does not tokenize.
    #[error("malformed WWW-Authenticate: {0}")]
    Header(#[from] gate402_http_auth::Error),
    /// It does, but offers no complete `Payment` challenge.
    #[error("no complete Payment challenge offered")]
    None,
}

/// Every complete `Payment` challenge in a `WWW-Authenticate` value (one
/// line or several joined); incomplete offers are skipped, not fatal.
pub fn parse_payment_challenges(header: &str) -> Result<Vec<PaymentChallenge>, NoPaymentChallenge> {
    let list = gate402_http_auth::parse_challenges(header)?;
    let found: Vec<_> = list.iter().filter_map(|c| from_challenge(c).ok()).collect();
    if found.is_empty() {
        Err(NoPaymentChallenge::None)
    } else {
        Ok(found)
    }
}

/// Decodes `request` (base64url JCS of a JSON object).
pub fn decode_request(c: &PaymentChallenge) -> Result<serde_json::Value, JsonError> {
    decode_json_object(c.request.raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate402_http_auth::parse_challenges;
    use proptest::prelude::*;

    const SECRET: &str = "a secret of at least thirty-two bytes!";

    fn new<'a>(
        request: &'a serde_json::Value,
        opaque: Option<&'a BTreeMap<String, String>>,
    ) -> NewChallenge<'a> {
        NewChallenge {
            realm: "api.example.com",
            method: "lightning",
            intent: "charge",
            request,
            expires: Some(time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()),
            digest: None,
            description: Some("Weather"),
            opaque,
            header: None,
        }
    }

    #[test]
    fn issued_ids_bind_every_param_and_survive_rotation() {
        let request = serde_json::json!({"amount": "10", "currency": "sat"});
        let opaque: BTreeMap<String, String> = [("order".to_owned(), "7".to_owned())].into();
        let old = ChallengeKey::new(SECRET).unwrap();
        let c = old.issue(new(&request, Some(&opaque)));
        assert_eq!(c.expires.as_deref(), Some("2027-01-15T08:00:00Z"));
        assert!(old.verifies(&c.id, &IdInput::of_challenge(&c)));

        let rotated = ChallengeKey::new("another secret of thirty-two bytes or more")
            .unwrap()
            .with_previous(SECRET)
            .unwrap();
        assert!(rotated.verifies(&c.id, &IdInput::of_challenge(&c)));
        assert_ne!(rotated.issue(new(&request, Some(&opaque))).id, c.id);
        let retired = ChallengeKey::new("another secret of thirty-two bytes or more").unwrap();
        assert!(!retired.verifies(&c.id, &IdInput::of_challenge(&c)));

        for tamper in [
            |c: &mut PaymentChallenge| c.realm.push('x'),
            |c: &mut PaymentChallenge| c.intent = "session".into(),
            |c: &mut PaymentChallenge| c.expires = Some("2099-01-01T00:00:00Z".into()),
            |c: &mut PaymentChallenge| c.digest = Some("sha-256=:x:".into()),
            |c: &mut PaymentChallenge| c.opaque = None,
            |c: &mut PaymentChallenge| c.request = Base64UrlJson::from_raw("e30"),
        ] {
            let mut changed = c.clone();
            tamper(&mut changed);
            assert!(!old.verifies(&c.id, &IdInput::of_challenge(&changed)));
        }
        // The description is display text and not bound.
        let mut described = c.clone();
        described.description = Some("other".into());
        assert!(old.verifies(&c.id, &IdInput::of_challenge(&described)));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(ChallengeKey::new("short").unwrap_err(), SecretTooShort(5));
    }

    #[test]
    fn incomplete_or_invalid_offers() {
        let list =
            parse_challenges("Payment id=a, realm=r, method=Lightning, intent=charge, request=e30")
                .unwrap();
        assert!(matches!(
            from_challenge(&list[0]),
            Err(ChallengeError::InvalidMethod(_))
        ));
        let list = parse_challenges(
            "Payment id=\"\", realm=r, method=lightning, intent=charge, request=e30",
        )
        .unwrap();
        assert_eq!(
            from_challenge(&list[0]).unwrap_err(),
            ChallengeError::Missing("id")
        );
    }

    proptest! {
        #[test]
        fn formatted_challenge_parses_back(
            amount in 1u64..1_000_000,
            description in proptest::option::of("[^\\x00-\\x1f\\x7f]{0,30}"),
            realm in "[a-z0-9.\" \\\\]{1,20}",
            opaque in proptest::option::of(proptest::collection::btree_map("[a-z]{1,5}", "\\PC{0,10}", 0..3)),
        ) {
            let request = serde_json::json!({"amount": amount.to_string(), "currency": "sat"});
            let key = ChallengeKey::new(SECRET).unwrap();
            let mut params = new(&request, opaque.as_ref());
            params.realm = &realm;
            params.description = description.as_deref();
            let issued = key.issue(params);
            let parsed = parse_payment_challenges(&to_header(&issued).unwrap()).unwrap();
            prop_assert_eq!(parsed.len(), 1);
            let back = &parsed[0];
            prop_assert_eq!(&back.id, &issued.id);
            prop_assert_eq!(&back.realm, &issued.realm);
            prop_assert_eq!(&back.request, &issued.request);
            prop_assert_eq!(&back.expires, &issued.expires);
            prop_assert_eq!(&back.description, &issued.description);
            prop_assert_eq!(&back.opaque, &issued.opaque);
            prop_assert!(key.verifies(&back.id, &IdInput::of_challenge(back)));
            prop_assert_eq!(decode_request(back).unwrap(), request);
        }
    }
}
