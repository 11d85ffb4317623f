//! Verification: does a presented credential pay for this service?
//! Stateless checks only (signatures, terms, preimages); single use is the
//! claim's job ([`crate::claims`]).

use gate402_l402::caveat::{self, RequestContext, Sale};
use gate402_l402::{verify as verify_l402, L402Credential, RootKeySecrets, VerifyError};
use gate402_lightning::Network;
use gate402_mpp::challenge::ChallengeKey;
use gate402_mpp::problem::ProblemType;
use gate402_mpp::verify::{
    verify_charge, ChargeCredential, ExpectedCharge, VerifyError as MppVerifyError,
};
use gate402_mpp::PaymentCredential;
use http::StatusCode;

use crate::clock::unix_now;
use crate::responses::Refusal;
use crate::route::PricedService;

/// A credential that pays for the service it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The paid invoice's hash.
    pub payment_hash: [u8; 32],
    /// The MPP challenge it settles (`None` for L402).
    pub challenge_id: Option<String>,
    /// Until when its single use must be remembered (unix seconds): past
    /// this the credential no longer verifies anyway.
    pub expires_at: u64,
    /// Whether it serves one request only (to be claimed): every MPP
    /// credential, and an L402 token minted for a per-request service
    /// (its `<service>_uses` caveat). An L402 token without it is a pass.
    pub single_use: bool,
    /// The deposit (sats) of the prepaid balance an L402 token names (its
    /// `<service>_balance` caveat): it spends from that balance, keyed by
    /// its payment hash, instead of being claimed.
    pub balance: Option<u64>,
    /// Whether the credential itself proves the payment (it carries the
    /// preimage). An x402 payment without one does not: anyone who saw the
    /// offer can send it, so no kept response is replayed to it.
    pub proven: bool,
    /// What its invoice asked (sats) when verifying it told: an MPP
    /// charge's `amount` (checked to be the price it was verified at), an
    /// x402 payment's price. `None` where it is read when needed (an L402
    /// token's `<service>_amount` caveat) or does not matter (a pass, a
    /// balance).
    pub paid_sats: Option<u64>,
    /// How long an L402 pass lasts from its first use (seconds, its
    /// `<service>_pass_secs` caveat); `None` for anything else, and for a
    /// pass minted without it (bounded by its `_valid_until` alone).
    pub pass_secs: Option<u64>,
}

/// Checks credentials against the gateway's secrets and terms.
pub(crate) struct Verifier {
    pub(crate) challenge_keys: std::sync::Arc<ScopedKeys>,
    pub(crate) root_keys: RootKeySecrets,
    pub(crate) realm: String,
    pub(crate) network: Network,
    pub(crate) invoice_expiry_secs: u32,
    pub(crate) passes: Passes,
}

/// L402 tokens that are not single use (passes, balances) verified
/// already, by their exact `Authorization` value.
///
/// A pass is presented on request after request, and its macaroon's
/// parse, HMAC chain, preimage and caveat checks give the same answer
/// every time but for the clock: a value verified for a service verifies
/// for it again until its expiry, which is checked on every use (an
/// expired one goes through the whole check, for its refusal). The root
/// keys never change while the gateway runs; revocations and prices are
/// checked after verification, on every request. Only values that
/// verified are kept, so nobody fills this without paying; but a holder
/// can spell one pass many ways (caveats it appends), so it is bounded
/// (at most [`PASSES_KEPT`] values, each within
/// [`crate::credentials::MAX_CREDENTIAL_BYTES`]) and emptied
/// when full rather than ordered by use: a value not kept is only checked
/// in full again.
#[derive(Default)]
pub(crate) struct Passes(std::sync::RwLock<crate::FastMap<String, Pass>>);

/// How many verified values [`Passes`] keeps.
const PASSES_KEPT: usize = 1024;

/// The MPP challenge key, and the key scoped to each service
/// ([`ChallengeKey::scoped`]) derived once per service name rather than on
/// every challenge issued and every credential verified (an HMAC and an
/// allocation per secret each time). Service names come from the
/// configuration, the admin API or an upstream's list of MCP tools, not
/// from a client's request; still, at most [`SCOPES_KEPT`] are kept (the
/// first ones asked for), and a name beyond them has its key derived each
/// time, as before.
pub(crate) struct ScopedKeys {
    key: ChallengeKey,
    scoped: std::sync::RwLock<crate::FastMap<String, std::sync::Arc<ChallengeKey>>>,
}

/// How many scoped keys [`ScopedKeys`] keeps.
const SCOPES_KEPT: usize = 1024;

impl ScopedKeys {
    pub(crate) fn new(key: ChallengeKey) -> Self {
        Self {
            key,
            scoped: Default::default(),
        }
    }

    /// The key itself, unscoped: what challenges issued before scopes
    /// were bound in the key verify under.
    pub(crate) fn unscoped(&self) -> &ChallengeKey {
        &self.key
    }

    /// The key scoped to `scope` (a service's name).
    pub(crate) fn scoped(&self, scope: &str) -> std::sync::Arc<ChallengeKey> {
        let kept = self.scoped.read().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = kept.get(scope) {
            return key.clone();
        }
        drop(kept);
        let key = std::sync::Arc::new(self.key.scoped(scope));
        let mut kept = self.scoped.write().unwrap_or_else(|e| e.into_inner());
        if kept.len() < SCOPES_KEPT {
            kept.insert(scope.to_owned(), key.clone());
        }
        key
    }
}

/// A verified value and the service it verified for.
struct Pass {
    service: String,
    grant: Grant,
}

/// What a verified token grants, less the clock.
#[derive(Clone, Copy)]
struct Grant {
    payment_hash: [u8; 32],
    valid_until: Option<u64>,
    balance: Option<u64>,
    pass_secs: Option<u64>,
}

impl Passes {
    /// What `value` grants if it verified for `service` before and has not
    /// expired since.
    fn get(&self, value: &str, service: &str) -> Option<Grant> {
        let passes = self.0.read().unwrap_or_else(|e| e.into_inner());
        let pass = passes.get(value)?;
        let fresh = pass
            .grant
            .valid_until
            .is_none_or(|until| unix_now() < until);
        (pass.service == service && fresh).then_some(pass.grant)
    }

    fn keep(&self, value: &str, pass: Pass) {
        let mut passes = self.0.write().unwrap_or_else(|e| e.into_inner());
        if passes.len() >= PASSES_KEPT {
            passes.clear();
        }
        passes.insert(value.to_owned(), pass);
    }
}

impl Verifier {
    /// An `L402 <macaroon>:<preimage>` value for `service`.
    pub(crate) fn l402(&self, service: &PricedService, value: &str) -> Result<Verified, Refusal> {
        let unauthorized =
            |problem, detail: String| Refusal::new(StatusCode::UNAUTHORIZED, problem, detail);
        if !service.schemes.l402() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ProblemType::MethodUnsupported,
                "this service does not accept L402; use the Payment scheme",
            ));
        }
        if let Some(grant) = self.passes.get(value, &service.name) {
            return Ok(self.granted(service, grant, false));
        }
        let credential = L402Credential::from_authorization(value)
            .map_err(|e| unauthorized(ProblemType::MalformedCredential, e.to_string()))?;
        let identifier = credential
            .identifier()
            .map_err(|e| unauthorized(ProblemType::MalformedCredential, e.to_string()))?;
        let ctx = RequestContext::new(service.name.clone());
        let mut verified = Err(VerifyError::Signature);
        for root_key in self.root_keys.candidates(&identifier.token_id) {
            verified = verify_l402(&credential, &root_key, &ctx, &[]);
            if !matches!(verified, Err(VerifyError::Signature)) {
                break;
            }
        }
        match verified {
            Ok(id) => {
                // What the token says it buys decides, not today's config:
                // a token sold as a pass stays one, a single-use token
                // stays single use, whatever the service sells now.
                let caveats = || credential.token().first_party_caveats();
                let terms = caveat::terms(caveats(), &service.name);
                // A holder may append caveats of either kind: the first
                // says what was sold; a balance on a token that names none
                // before (a pass) opens only if its invoice paid it
                // (`open_balance`).
                let sale = caveat::sold_as(caveats(), &service.name);
                let single_use = sale == Sale::Requests;
                let grant = Grant {
                    payment_hash: id.payment_hash,
                    valid_until: terms.valid_until,
                    balance: terms.balance.filter(|_| sale == Sale::Balance),
                    pass_secs: terms.pass_secs.filter(|_| sale == Sale::Pass),
                };
                if !single_use {
                    let service = service.name.clone();
                    self.passes.keep(value, Pass { service, grant });
                }
                Ok(self.granted(service, grant, single_use))
            }
            Err(e) if e.is_expired() => Err(Refusal::new(
                StatusCode::PAYMENT_REQUIRED,
                ProblemType::PaymentExpired,
                format!("{e}; pay the new challenge"),
            )),
            Err(VerifyError::Signature) => Err(unauthorized(
                ProblemType::VerificationFailed,
                "unknown or revoked L402 token (its signature does not verify)".into(),
            )),
            Err(e) => Err(unauthorized(ProblemType::VerificationFailed, e.to_string())),
        }
    }

    /// A `Payment <credential>` value, parsed.
    pub(crate) fn parse_payment(value: &str) -> Result<PaymentCredential, Refusal> {
        gate402_mpp::credential::parse_authorization(value).map_err(|e| {
            Refusal::new(
                StatusCode::PAYMENT_REQUIRED,
                ProblemType::MalformedCredential,
                e.to_string(),
            )
        })
    }

    /// A parsed MPP credential for `service`: price, realm, network, the
    /// scope it was issued for, the field it `arrived_in` (`None`:
    /// `Authorization`), the request `body` when its challenge binds one,
    /// the preimage.
    pub(crate) fn payment(
        &self,
        service: &PricedService,
        charge: &ChargeCredential<'_>,
        arrived_in: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Verified, Refusal> {
        if !service.schemes.mpp() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ProblemType::MethodUnsupported,
                "this service does not accept the Payment scheme; use L402",
            ));
        }
        let expected = ExpectedCharge {
            realm: &self.realm,
            amount_sats: service.price_sats,
            network: self.network,
            body,
            scope: None,
            arrived_in,
        };
        let now = time::OffsetDateTime::now_utc();
        let scoped = self.challenge_keys.scoped(&service.name);
        let verified = match verify_charge(&scoped, charge, &expected, now) {
            // Issued before scopes were bound in the key: the scope is in
            // `opaque`, under the gateway's own key.
            Err(MppVerifyError::UnknownChallenge) => {
                let legacy = ExpectedCharge {
                    scope: Some(&service.name),
                    ..expected
                };
                verify_charge(self.challenge_keys.unscoped(), charge, &legacy, now)
            }
            verified => verified,
        };
        let verified = verified.map_err(|e| {
            let problem = e.problem_type();
            let status =
                StatusCode::from_u16(problem.status()).unwrap_or(StatusCode::PAYMENT_REQUIRED);
            Refusal::new(status, problem, e.to_string())
        })?;
        let expires_at = verified
            .expires
            .map_or(unix_now() + u64::from(self.invoice_expiry_secs), |t| {
                t.unix_timestamp().max(0) as u64
            });
        Ok(Verified {
            payment_hash: verified.payment_hash,
            challenge_id: Some(verified.challenge_id),
            expires_at: self.remembered_until(service, expires_at),
            single_use: true,
            balance: None,
            proven: true,
            paid_sats: Some(verified.amount_sats),
            pass_secs: None,
        })
    }

    /// What a verified L402 token grants for `service`, as [`Verified`].
    fn granted(&self, service: &PricedService, grant: Grant, single_use: bool) -> Verified {
        Verified {
            payment_hash: grant.payment_hash,
            challenge_id: None,
            expires_at: self.remembered_until(service, grant.valid_until.unwrap_or(0)),
            single_use,
            balance: grant.balance,
            proven: true,
            paid_sats: None,
            pass_secs: grant.pass_secs,
        }
    }

    /// Until when a payment's single use must be remembered, whichever door
    /// spent it: past the end of every credential of its invoice, not only
    /// of the one presented. One invoice's credentials are minted together
    /// (the MPP challenge ends with the invoice, the L402 token and the x402
    /// offer `token_lifetime_secs` after it), so a payment spent through the
    /// shortest-lived door is not forgotten while a longer-lived door of the
    /// same invoice still verifies.
    pub(crate) fn remembered_until(&self, service: &PricedService, own: u64) -> u64 {
        own.max(unix_now() + u64::from(self.invoice_expiry_secs) + service.token_lifetime_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_key_is_derived_once_and_is_the_keys_own_scope() {
        let key = ChallengeKey::new("0123456789abcdef0123456789abcdef").unwrap();
        let keys = ScopedKeys::new(key.clone());
        let input = gate402_mpp::challenge::IdInput {
            realm: "api.test",
            method: "lightning",
            intent: "charge",
            request: "e30",
            expires: None,
            digest: None,
            header: None,
            opaque: None,
        };
        let weather = keys.scoped("weather");
        let id = key.scoped("weather").id_for(&input);
        assert!(weather.verifies(&id, &input));
        assert!(!keys.scoped("forecast").verifies(&id, &input));
        assert!(!keys.unscoped().verifies(&id, &input));
        assert!(std::sync::Arc::ptr_eq(&weather, &keys.scoped("weather")));
        for n in 0..SCOPES_KEPT + 1 {
            keys.scoped(&n.to_string());
        }
        assert_eq!(keys.scoped.read().unwrap().len(), SCOPES_KEPT);
        // Kept before the bound was reached; one past it still derived.
        assert!(std::sync::Arc::ptr_eq(&weather, &keys.scoped("weather")));
        let beyond = keys.scoped(&SCOPES_KEPT.to_string());
        let expected = key.scoped(&SCOPES_KEPT.to_string()).id_for(&input);
        assert!(beyond.verifies(&expected, &input));
    }

    fn pass(service: &str, valid_until: Option<u64>) -> Pass {
        Pass {
            service: service.into(),
            grant: Grant {
                payment_hash: [7; 32],
                valid_until,
                balance: None,
                pass_secs: None,
            },
        }
    }

    #[test]
    fn a_kept_pass_answers_for_its_service_until_it_expires() {
        let passes = Passes::default();
        let now = unix_now();
        passes.keep("L402 a:b", pass("weather", Some(now + 60)));
        passes.keep("L402 c:d", pass("weather", Some(now)));
        passes.keep("L402 e:f", pass("weather", None));
        assert!(passes.get("L402 a:b", "weather").is_some());
        assert!(passes.get("L402 a:b", "maps").is_none());
        assert!(passes.get("L402 a:b ", "weather").is_none());
        assert!(passes.get("L402 c:d", "weather").is_none(), "expired");
        assert!(passes.get("L402 e:f", "weather").is_some());
    }

    #[test]
    fn passes_are_bounded() {
        let passes = Passes::default();
        for i in 0..PASSES_KEPT * 2 + 1 {
            passes.keep(&format!("L402 {i}"), pass("weather", None));
        }
        let kept = passes.0.read().unwrap().len();
        assert!((1..=PASSES_KEPT).contains(&kept), "{kept}");
    }
}
