//! Server-side verification of a Lightning charge credential.
//!
//! Stateless checks only: the id binding, expiry, the terms of the echoed
//! request against what the route charges now, and the preimage. Marking
//! the challenge consumed, atomically with the decision to serve, is the
//! store's job.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::base64url::{decode_json_object, decode_object};
use crate::challenge::{ChallengeKey, IdInput};
use crate::lightning::{ChargeRequest, Network, PreimagePayload, CHARGE, CURRENCY, METHOD};
use crate::problem::ProblemType;
use crate::PaymentCredential;

/// What the route charges now.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedCharge<'a> {
    /// The realm this server issues challenges in.
    pub realm: &'a str,
    /// The route's price.
    pub amount_sats: u64,
    /// The network of this server's Lightning node.
    pub network: Network,
    /// This request's body, when its method has one bound (POST, PUT,
    /// PATCH) and it was read: checked against the challenge's `digest`
    /// (RFC 9530 `sha-256=:<base64>:`, or mppx's colon-less form), and the
    /// `digest` of an echo that left it out recomputed from it.
    pub body: Option<&'a [u8]>,
    /// What the challenge was issued for (a service, a tool), when the
    /// server binds challenges to one: the `scope` entry of its `opaque`
    /// (see [`scope_opaque`]). Without it, a credential bought for one
    /// route would pay for any other at the same price. (Servers that bind
    /// the scope in the key instead, with [`ChallengeKey::scoped`], leave
    /// it `None`.)
    pub scope: Option<&'a str>,
    /// The field the credential arrived in, when not `Authorization`
    /// (`Payment-Authorization`): it must be the one its challenge named.
    pub arrived_in: Option<&'a str>,
}

/// The key of the `opaque` entry that names what a challenge is for.
pub const SCOPE_KEY: &str = "scope";

/// The `opaque` map that binds a challenge to `scope`.
pub fn scope_opaque(scope: &str) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([(SCOPE_KEY.to_owned(), scope.to_owned())])
}

/// The RFC 9530 `Content-Digest` value of a body, as a challenge's `digest`:
/// `sha-256=:<base64>:`.
pub fn body_digest(body: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
    )
}

/// A credential that passed every stateless check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCharge {
    /// The challenge it settles (the key to consume it under).
    pub challenge_id: String,
    /// The paid invoice's hash (the receipt's reference).
    pub payment_hash: [u8; 32],
    /// What was paid.
    pub amount_sats: u64,
    /// When the challenge expires; it need not be remembered past this.
    pub expires: Option<time::OffsetDateTime>,
}

/// Why a well-formed credential does not pay for this request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A method or intent other than `lightning`/`charge`.
    #[error("method {method}/{intent} is not offered here")]
    MethodUnsupported {
        /// Echoed method.
        method: String,
        /// Echoed intent.
        intent: String,
    },
    /// The id does not verify under any of our secrets.
    #[error("challenge was not issued by this server for this route, or was altered")]
    UnknownChallenge,
    /// Issued for another realm.
    #[error("challenge is for realm {0:?}")]
    WrongRealm(String),
    /// `expires` is not RFC 3339.
    #[error("challenge expires {0:?} is not an RFC 3339 time")]
    BadExpires(String),
    /// `expires` has passed.
    #[error("challenge expired at {0}")]
    Expired(String),
    /// The echoed request is not a Lightning charge request.
    #[error("challenge request is not a Lightning charge: {0}")]
    Request(String),
    /// The price differs from what the route charges now.
    #[error("challenge charges {charged} sat, this route charges {expected} sat")]
    Amount {
        /// Echoed amount.
        charged: String,
        /// Current price.
        expected: u64,
    },
    /// Currency other than `sat`, or a network other than ours.
    #[error("challenge terms do not match this route: {0}")]
    Terms(String),
    /// The body digest differs.
    #[error("challenge is bound to another request body")]
    Digest,
    /// Sent in another field than its challenge named (`header`).
    #[error("the credential must be sent in {expected}, not {arrived}")]
    WrongField {
        /// The field the challenge named.
        expected: String,
        /// The field it came in.
        arrived: String,
    },
    /// Issued for another service or tool.
    #[error("challenge was issued for {issued:?}, not {expected:?}")]
    WrongScope {
        /// The scope in the challenge (empty: none).
        issued: String,
        /// This route's.
        expected: String,
    },
    /// The payload is not `{"preimage": <64 lowercase hex>}`.
    #[error("payload is not a Lightning preimage")]
    Payload,
    /// A session credential's payload is none of the session's actions
    /// (draft-lightning-session-00): why, in the parser's words (the
    /// action unknown, a field missing or of another type).
    #[error("session payload: {0}")]
    SessionPayload(String),
    /// `sha256(preimage) != paymentHash`.
    #[error("preimage does not match the payment hash")]
    Preimage,
}

impl VerifyError {
    /// The problem type to answer with.
    pub fn problem_type(&self) -> ProblemType {
        match self {
            VerifyError::MethodUnsupported { .. } => ProblemType::MethodUnsupported,
            VerifyError::UnknownChallenge => ProblemType::InvalidChallenge,
            VerifyError::WrongRealm(_)
            | VerifyError::WrongField { .. }
            | VerifyError::Terms(_)
            | VerifyError::Digest
            | VerifyError::WrongScope { .. } => ProblemType::InvalidChallenge,
            VerifyError::BadExpires(_) | VerifyError::Request(_) => {
                ProblemType::MalformedCredential
            }
            VerifyError::Expired(_) => ProblemType::PaymentExpired,
            VerifyError::Amount { charged, expected } => match charged.parse::<u64>() {
                Ok(charged) if charged < *expected => ProblemType::PaymentInsufficient,
                _ => ProblemType::InvalidChallenge,
            },
            VerifyError::Payload | VerifyError::SessionPayload(_) => ProblemType::InvalidPayload,
            VerifyError::Preimage => ProblemType::LightningInvalidPreimage,
        }
    }
}

/// A Lightning charge credential with its echoed `request` (base64url
/// JSON holding the invoice, a few hundred bytes) decoded once: what a
/// server reads before verifying (the amount, to charge a dynamic price)
/// and what verifying checks are then the same decoding.
#[derive(Debug)]
pub struct ChargeCredential<'c> {
    credential: &'c PaymentCredential,
    /// The request, or why it does not decode (checked after the id).
    request: Result<ChargeRequest, String>,
}

impl<'c> ChargeCredential<'c> {
    /// Decodes `credential`'s echoed request; a request that does not
    /// decode is refused by [`verify_charge`], after the id is checked.
    pub fn read(credential: &'c PaymentCredential) -> Self {
        let request = decode_object(credential.challenge.request.raw()).map_err(|e| e.to_string());
        Self {
            credential,
            request,
        }
    }

    /// The amount its request asks (sat), if it decodes and the amount is
    /// spelled canonically; not verified (the id may not bind it).
    pub fn amount_sats(&self) -> Option<u64> {
        self.request.as_ref().ok()?.amount_sats()
    }
}

/// Checks a Lightning charge credential against this route, at `now`.
///
/// # Errors
///
/// The first check it fails, as [`verify_charge`].
pub fn verify_lightning_charge(
    key: &ChallengeKey,
    credential: &PaymentCredential,
    expected: &ExpectedCharge<'_>,
    now: time::OffsetDateTime,
) -> Result<VerifiedCharge, VerifyError> {
    verify_charge(key, &ChargeCredential::read(credential), expected, now)
}

/// Checks a charge credential read with [`ChargeCredential::read`] against
/// this route, at `now`: method and intent, the challenge id (under `key`),
/// realm, field, expiry, the request's terms, digest, scope, preimage.
///
/// # Errors
///
/// The first check it fails ([`VerifyError`]).
pub fn verify_charge(
    key: &ChallengeKey,
    charge: &ChargeCredential<'_>,
    expected: &ExpectedCharge<'_>,
    now: time::OffsetDateTime,
) -> Result<VerifiedCharge, VerifyError> {
    let credential = charge.credential;
    let echo = &credential.challenge;
    if echo.method.as_str() != METHOD || echo.intent.as_str() != CHARGE {
        return Err(VerifyError::MethodUnsupported {
            method: echo.method.to_string(),
            intent: echo.intent.as_str().to_owned(),
        });
    }
    // Deployed clients drop optional parameters from their echo (Alby's
    // lightning-tools keeps six): a `digest` or `header` left out is
    // recomputed from the request, and the id says whether it was issued so.
    let mut input = IdInput::of_echo(echo);
    let computed: Option<String>;
    if !key.verifies(&echo.id, &input) {
        computed = expected.body.map(body_digest);
        let dropped = (input.digest.is_none() && computed.is_some())
            || (input.header.is_none() && expected.arrived_in.is_some());
        input.digest = input.digest.or(computed.as_deref());
        input.header = input.header.or(expected.arrived_in);
        if !dropped || !key.verifies(&echo.id, &input) {
            return Err(VerifyError::UnknownChallenge);
        }
    }
    verify_bound(charge, &input, expected, now)
}

/// The checks after the id: `input` holds the bound parameters as issued.
fn verify_bound(
    charge: &ChargeCredential<'_>,
    input: &IdInput<'_>,
    expected: &ExpectedCharge<'_>,
    now: time::OffsetDateTime,
) -> Result<VerifiedCharge, VerifyError> {
    let credential = charge.credential;
    let echo = &credential.challenge;
    if echo.realm != expected.realm {
        return Err(VerifyError::WrongRealm(echo.realm.clone()));
    }
    let field = |h: Option<&str>| {
        mpp::protocol::core::advertised_credential_header(h)
            .map_or("Authorization", |_| "Payment-Authorization")
            .to_owned()
    };
    let (named, arrived) = (field(input.header), field(expected.arrived_in));
    if !named.eq_ignore_ascii_case(&arrived) {
        return Err(VerifyError::WrongField {
            expected: named,
            arrived,
        });
    }
    let expires = match echo.expires.as_deref() {
        None => None,
        Some(text) => {
            let at = crate::parse_time(text).ok_or_else(|| VerifyError::BadExpires(text.into()))?;
            if now >= at {
                return Err(VerifyError::Expired(text.into()));
            }
            Some(at)
        }
    };
    let request = charge
        .request
        .as_ref()
        .map_err(|e| VerifyError::Request(e.clone()))?;
    if request.amount_sats() != Some(expected.amount_sats) {
        return Err(VerifyError::Amount {
            charged: request.amount.clone(),
            expected: expected.amount_sats,
        });
    }
    if request.currency != CURRENCY {
        return Err(VerifyError::Terms(format!(
            "currency {:?}",
            request.currency
        )));
    }
    if request.method_details.network != expected.network {
        return Err(VerifyError::Terms(format!(
            "network {}",
            request.method_details.network
        )));
    }
    match input.digest {
        Some(digest) => {
            let matches = expected
                .body
                .is_some_and(|body| mpp::body_digest::verify(digest, body));
            if !matches {
                return Err(VerifyError::Digest);
            }
        }
        // Issued for a request without a body (a GET): it pays for no body,
        // not for whatever a POST sends with it. (A body too large to bind
        // is not read: `body` is `None` then.)
        None if expected.body.is_some_and(|body| !body.is_empty()) => {
            return Err(VerifyError::Digest);
        }
        None => {}
    }
    if let Some(scope) = expected.scope {
        // The opaque is bound by the id, verified above: it is ours.
        let issued = echo
            .opaque
            .as_ref()
            .and_then(|o| decode_json_object(o.raw()).ok())
            .and_then(|o| o.get(SCOPE_KEY)?.as_str().map(str::to_owned))
            .unwrap_or_default();
        if issued != scope {
            return Err(VerifyError::WrongScope {
                issued,
                expected: scope.to_owned(),
            });
        }
    }
    let payment_hash = request
        .payment_hash()
        .ok_or_else(|| VerifyError::Request("paymentHash is not 64 hex digits".into()))?;
    let preimage = serde_json::from_value::<PreimagePayload>(credential.payload.clone())
        .ok()
        .and_then(|p| p.bytes())
        .ok_or(VerifyError::Payload)?;
    let hash: [u8; 32] = Sha256::digest(preimage).into();
    if !bool::from(hash.ct_eq(&payment_hash)) {
        return Err(VerifyError::Preimage);
    }
    Ok(VerifiedCharge {
        challenge_id: echo.id.clone(),
        payment_hash,
        amount_sats: expected.amount_sats,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::challenge::NewChallenge;
    use crate::credential::{parse_authorization, to_authorization};
    use time::{Duration, OffsetDateTime};

    const PREIMAGE: [u8; 32] = [0xab; 32];
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn expected(amount_sats: u64) -> ExpectedCharge<'static> {
        ExpectedCharge {
            realm: "api.test",
            amount_sats,
            network: Network::Regtest,
            body: None,
            scope: None,
            arrived_in: None,
        }
    }

    fn credential(amount_sats: u64, preimage: [u8; 32]) -> PaymentCredential {
        let hash: [u8; 32] = Sha256::digest(PREIMAGE).into();
        let request =
            ChargeRequest::new(amount_sats, None, "lnbcrt1", &hash, Network::Regtest).to_value();
        let challenge = ChallengeKey::new(SECRET).unwrap().issue(NewChallenge {
            realm: "api.test",
            method: METHOD,
            intent: CHARGE,
            request: &request,
            expires: Some(now() + Duration::minutes(10)),
            digest: None,
            description: None,
            opaque: None,
            header: None,
        });
        let credential =
            PaymentCredential::new(challenge.to_echo(), PreimagePayload::new(&preimage));
        // Through the wire and back, as a server sees it.
        parse_authorization(&to_authorization(&credential)).unwrap()
    }

    #[test]
    fn accepts_a_paid_credential() {
        let key = ChallengeKey::new(SECRET).unwrap();
        let ok = verify_lightning_charge(&key, &credential(100, PREIMAGE), &expected(100), now())
            .unwrap();
        assert_eq!(ok.amount_sats, 100);
        assert_eq!(ok.payment_hash, <[u8; 32]>::from(Sha256::digest(PREIMAGE)));
    }

    #[test]
    fn a_charge_read_once_verifies_as_the_credential_does() {
        let key = ChallengeKey::new(SECRET).unwrap();
        let paid = credential(100, PREIMAGE);
        let read = ChargeCredential::read(&paid);
        assert_eq!(read.amount_sats(), Some(100));
        assert_eq!(
            verify_charge(&key, &read, &expected(100), now()),
            verify_lightning_charge(&key, &paid, &expected(100), now())
        );
        assert_eq!(
            verify_charge(&key, &read, &expected(5), now()).unwrap_err(),
            VerifyError::Amount {
                charged: "100".into(),
                expected: 5
            }
        );

        // A request that is JSON but no charge request: it has no amount
        // to read, and the id is checked before it is refused.
        let mut odd = paid.clone();
        odd.challenge.request = mpp::protocol::core::Base64UrlJson::from_raw(
            crate::base64url::encode(br#"{"amount":"100"}"#),
        );
        let read = ChargeCredential::read(&odd);
        assert_eq!(read.amount_sats(), None);
        assert_eq!(
            verify_charge(&key, &read, &expected(100), now()).unwrap_err(),
            VerifyError::UnknownChallenge
        );
        odd.challenge.id = key.id_for(&IdInput::of_echo(&odd.challenge));
        let read = ChargeCredential::read(&odd);
        assert!(matches!(
            verify_charge(&key, &read, &expected(100), now()),
            Err(VerifyError::Request(_))
        ));
    }

    #[test]
    fn rejects_each_fault() {
        let key = ChallengeKey::new(SECRET).unwrap();
        let check = |c: &PaymentCredential, e: &ExpectedCharge<'_>, at| {
            verify_lightning_charge(&key, c, e, at)
        };

        let cheap = credential(1, PREIMAGE);
        let err = check(&cheap, &expected(100), now()).unwrap_err();
        assert_eq!(
            err.problem_type(),
            ProblemType::PaymentInsufficient,
            "{err}"
        );

        let err = check(&credential(100, [1; 32]), &expected(100), now()).unwrap_err();
        assert_eq!(err, VerifyError::Preimage);
        assert_eq!(err.problem_type(), ProblemType::LightningInvalidPreimage);

        let err = check(&cheap, &expected(1), now() + Duration::minutes(11)).unwrap_err();
        assert_eq!(err.problem_type(), ProblemType::PaymentExpired);

        let other_key = ChallengeKey::new("another secret of 32 bytes or more!!").unwrap();
        assert_eq!(
            verify_lightning_charge(&other_key, &cheap, &expected(1), now()).unwrap_err(),
            VerifyError::UnknownChallenge
        );

        let mut wrong_realm = expected(1);
        wrong_realm.realm = "other";
        assert!(matches!(
            check(&cheap, &wrong_realm, now()),
            Err(VerifyError::WrongRealm(_))
        ));

        let mut mainnet = expected(1);
        mainnet.network = Network::Mainnet;
        assert!(matches!(
            check(&cheap, &mainnet, now()),
            Err(VerifyError::Terms(_))
        ));

        let mut tampered = cheap.clone();
        tampered.challenge.expires = Some("2099-01-01T00:00:00Z".into());
        assert_eq!(
            check(&tampered, &expected(1), now()).unwrap_err(),
            VerifyError::UnknownChallenge
        );

        let mut bad_payload = cheap.clone();
        bad_payload.payload = serde_json::json!({"preimage": hex::encode(PREIMAGE).to_uppercase()});
        assert_eq!(
            check(&bad_payload, &expected(1), now()).unwrap_err(),
            VerifyError::Payload
        );

        let mut session = cheap.clone();
        session.challenge.intent = "session".into();
        let err = check(&session, &expected(1), now()).unwrap_err();
        assert_eq!(err.problem_type().status(), 400);

        // Bound to a scope: only that scope accepts it.
        let scoped = scoped_credential("weather");
        let mut weather = expected(100);
        weather.scope = Some("weather");
        assert!(check(&scoped, &weather, now()).is_ok());
        let mut translate = expected(100);
        translate.scope = Some("translate");
        assert_eq!(
            check(&scoped, &translate, now()).unwrap_err(),
            VerifyError::WrongScope {
                issued: "weather".into(),
                expected: "translate".into()
            }
        );
        // An unscoped challenge does not pass where a scope is required.
        assert!(matches!(
            check(
                &cheap,
                &{
                    let mut e = expected(1);
                    e.scope = Some("weather");
                    e
                },
                now()
            ),
            Err(VerifyError::WrongScope { .. })
        ));
    }

    fn scoped_credential(scope: &str) -> PaymentCredential {
        let hash: [u8; 32] = Sha256::digest(PREIMAGE).into();
        let request = ChargeRequest::new(100, None, "lnbcrt1", &hash, Network::Regtest).to_value();
        let opaque = scope_opaque(scope);
        let challenge = ChallengeKey::new(SECRET).unwrap().issue(NewChallenge {
            realm: "api.test",
            method: METHOD,
            intent: CHARGE,
            request: &request,
            expires: Some(now() + Duration::minutes(10)),
            digest: None,
            description: None,
            opaque: Some(&opaque),
            header: None,
        });
        let credential =
            PaymentCredential::new(challenge.to_echo(), PreimagePayload::new(&PREIMAGE));
        parse_authorization(&to_authorization(&credential)).unwrap()
    }

    /// A credential for a challenge issued under `key`, echoed the way the
    /// client `trim` says.
    fn issued_under(
        key: &ChallengeKey,
        header: Option<&str>,
        trim: impl FnOnce(&mut crate::ChallengeEcho),
    ) -> PaymentCredential {
        issued_for_body(key, header, None, trim)
    }

    /// [`issued_under`], the challenge binding a body by `digest`.
    fn issued_for_body(
        key: &ChallengeKey,
        header: Option<&str>,
        digest: Option<&str>,
        trim: impl FnOnce(&mut crate::ChallengeEcho),
    ) -> PaymentCredential {
        let hash: [u8; 32] = Sha256::digest(PREIMAGE).into();
        let request = ChargeRequest::new(100, None, "lnbcrt1", &hash, Network::Regtest).to_value();
        let challenge = key.issue(NewChallenge {
            realm: "api.test",
            method: METHOD,
            intent: CHARGE,
            request: &request,
            expires: Some(now() + Duration::minutes(10)),
            digest,
            description: Some("Weather"),
            opaque: None,
            header,
        });
        let mut echo = challenge.to_echo();
        trim(&mut echo);
        let credential = PaymentCredential::new(echo, PreimagePayload::new(&PREIMAGE));
        parse_authorization(&to_authorization(&credential)).unwrap()
    }

    #[test]
    fn a_scoped_key_binds_its_scope_whatever_the_client_echoes() {
        let key = ChallengeKey::new(SECRET).unwrap();
        // What Alby's client sends back: no opaque, no description.
        let bare = issued_under(&key.scoped("weather"), None, |echo| {
            echo.opaque = None;
            echo.description = None;
        });
        let check = |k: &ChallengeKey| verify_lightning_charge(k, &bare, &expected(100), now());
        assert!(check(&key.scoped("weather")).is_ok());
        assert_eq!(
            check(&key.scoped("forecast")).unwrap_err(),
            VerifyError::UnknownChallenge
        );
        assert_eq!(check(&key).unwrap_err(), VerifyError::UnknownChallenge);
        // A rotation keeps scoped challenges in flight verifying.
        let rotated = ChallengeKey::new("a new secret, at least thirty-two bytes")
            .unwrap()
            .with_previous(SECRET)
            .unwrap();
        assert!(check(&rotated.scoped("weather")).is_ok());
    }

    #[test]
    fn the_header_parameter_is_bound_and_names_the_field() {
        let key = ChallengeKey::new(SECRET).unwrap();
        let field = Some("Payment-Authorization");
        let credential = issued_under(&key, field, |_| {});
        assert_eq!(credential.challenge.header.as_deref(), field);
        // The id is the SDKs': realm|method|intent|request|expires|digest|header|opaque.
        let echo = &credential.challenge;
        let sdk = mpp::protocol::core::compute_challenge_id_with_header(
            SECRET,
            &echo.realm,
            echo.method.as_str(),
            echo.intent.as_str(),
            echo.request.raw(),
            echo.expires.as_deref(),
            None,
            None,
            field,
        );
        assert_eq!(echo.id, sdk);
        assert!(IdInput::of_echo(echo)
            .hmac_input()
            .ends_with("|Payment-Authorization|"));
        let arrived = |arrived_in| {
            let mut e = expected(100);
            e.arrived_in = arrived_in;
            verify_lightning_charge(&key, &credential, &e, now())
        };
        assert!(arrived(field).is_ok());
        assert!(matches!(arrived(None), Err(VerifyError::WrongField { .. })));
        // A client that drops `header` from its echo is still understood
        // where the challenge said, and nowhere else.
        let dropped = issued_under(&key, field, |echo| echo.header = None);
        let dropped_in = |arrived_in| {
            let mut e = expected(100);
            e.arrived_in = arrived_in;
            verify_lightning_charge(&key, &dropped, &e, now())
        };
        assert!(dropped_in(field).is_ok());
        assert_eq!(dropped_in(None).unwrap_err(), VerifyError::UnknownChallenge);
        // `Authorization` named outright is the default, not bound.
        let plain = issued_under(&key, Some("Authorization"), |_| {});
        assert!(verify_lightning_charge(&key, &plain, &expected(100), now()).is_ok());
    }

    #[test]
    fn a_bound_body_must_be_the_one_sent() {
        let key = ChallengeKey::new(SECRET).unwrap();
        let body = br#"{"city":"Paris"}"#;
        let rfc = body_digest(body);
        assert!(rfc.starts_with("sha-256=:") && rfc.ends_with(':'), "{rfc}");
        let with_body = |credential: &PaymentCredential, body: Option<&[u8]>| {
            let mut e = expected(100);
            e.body = body;
            verify_lightning_charge(&key, credential, &e, now())
        };
        // The RFC 9530 form we issue, and the colon-less form mppx issues.
        for digest in [rfc.clone(), mpp::body_digest::compute(body)] {
            let credential = issued_for_body(&key, None, Some(&digest), |_| {});
            assert!(with_body(&credential, Some(body)).is_ok(), "{digest}");
            assert_eq!(
                with_body(&credential, Some(br#"{"city":"Rome"}"#)).unwrap_err(),
                VerifyError::Digest
            );
            assert_eq!(
                with_body(&credential, None).unwrap_err(),
                VerifyError::Digest
            );
        }
        // An echo without the digest: recomputed from the body sent, which
        // the id then binds.
        let dropped = issued_for_body(&key, None, Some(&rfc), |echo| echo.digest = None);
        assert!(with_body(&dropped, Some(body)).is_ok());
        assert_eq!(
            with_body(&dropped, Some(b"another body")).unwrap_err(),
            VerifyError::UnknownChallenge
        );
        assert_eq!(
            with_body(&dropped, None).unwrap_err(),
            VerifyError::UnknownChallenge
        );
        // A challenge that bound no body pays for a request without one
        // (it was issued for a GET), or with one too large to read (the
        // server then has none to show), never for a body it could check.
        let unbound = issued_for_body(&key, None, None, |_| {});
        assert!(with_body(&unbound, None).is_ok());
        assert!(with_body(&unbound, Some(b"")).is_ok());
        assert_eq!(
            with_body(&unbound, Some(body)).unwrap_err(),
            VerifyError::Digest
        );
    }
}
