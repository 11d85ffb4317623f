//! Verifying a presented L402 credential.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::caveat::{self, CaveatError, RequestContext, Satisfier};
use crate::{Identifier, IdentifierError, L402Credential, RootKey};

/// Why a well-formed L402 credential does not authorize a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The identifier is not a known L402 identifier.
    #[error("token identifier: {0}")]
    Identifier(#[from] IdentifierError),
    /// Discharge macaroons were sent, but L402 tokens have no third-party caveats.
    #[error("{0} unexpected discharge macaroon(s)")]
    UnexpectedDischarge(usize),
    /// The token carries a third-party caveat.
    #[error("token carries a third-party caveat")]
    ThirdPartyCaveat,
    /// The HMAC chain does not hold for the root key.
    #[error("token signature is invalid")]
    Signature,
    /// `sha256(preimage)` is not the identifier's payment hash.
    #[error("preimage does not match the token's payment hash")]
    Preimage,
    /// A caveat refuses the request.
    #[error(transparent)]
    Caveat(#[from] CaveatError),
}

impl VerifyError {
    /// Whether the token was good but its time is up: the client should pay
    /// for a new one rather than fix its credential.
    pub fn is_expired(&self) -> bool {
        matches!(self, VerifyError::Caveat(CaveatError::Expired { .. }))
    }
}

/// Verifies a credential against the root key stored under its token id:
/// the signature chain, the preimage against the payment hash (both in
/// constant time), then the caveats for `ctx` plus any `extra` satisfiers
/// (application constraints). Returns the token's identifier.
pub fn verify(
    credential: &L402Credential,
    root_key: &RootKey,
    ctx: &RequestContext,
    extra: &[&dyn Satisfier],
) -> Result<Identifier, VerifyError> {
    let token = credential.token();
    if credential.macaroons.len() > 1 {
        return Err(VerifyError::UnexpectedDischarge(
            credential.macaroons.len() - 1,
        ));
    }
    if token.caveats().iter().any(|c| c.is_third_party()) {
        return Err(VerifyError::ThirdPartyCaveat);
    }
    if !token.verify_signature(&root_key.0) {
        return Err(VerifyError::Signature);
    }
    let identifier = Identifier::from_bytes(token.identifier())?;
    let hash: [u8; 32] = Sha256::digest(credential.preimage).into();
    if !bool::from(hash.ct_eq(&identifier.payment_hash)) {
        return Err(VerifyError::Preimage);
    }
    caveat::check_request(token.first_party_caveats(), ctx, extra)?;
    Ok(identifier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caveat::{Caveat, Service};
    use crate::mint::mint_with;
    use crate::{Macaroon, Scheme};
    use std::time::{Duration, UNIX_EPOCH};

    const PREIMAGE: [u8; 32] = [9; 32];

    fn credential(caveats: &[Caveat]) -> (L402Credential, RootKey) {
        let hash: [u8; 32] = Sha256::digest(PREIMAGE).into();
        let minted = mint_with(RootKey([5; 32]), [6; 32], hash, "lsat", caveats);
        (
            L402Credential {
                scheme: Scheme::L402,
                macaroons: vec![minted.macaroon],
                preimage: PREIMAGE,
            },
            minted.root_key,
        )
    }

    fn ctx(now: u64) -> RequestContext {
        RequestContext {
            service: "weather".into(),
            capability: None,
            now: UNIX_EPOCH + Duration::from_secs(now),
        }
    }

    #[test]
    fn accepts_a_good_token() {
        let (c, key) = credential(&[
            Caveat::services(&[Service::new("weather")]),
            Caveat::valid_until("weather", 1000),
        ]);
        let id = verify(&c, &key, &ctx(10), &[]).unwrap();
        assert_eq!(id.token_id, [6; 32]);
    }

    #[test]
    fn rejects_each_fault() {
        let (good, key) = credential(&[Caveat::valid_until("weather", 1000)]);

        assert_eq!(
            verify(&good, &RootKey([0; 32]), &ctx(10), &[]),
            Err(VerifyError::Signature)
        );

        let mut wrong_preimage = good.clone();
        wrong_preimage.preimage = [8; 32];
        assert_eq!(
            verify(&wrong_preimage, &key, &ctx(10), &[]),
            Err(VerifyError::Preimage)
        );

        let err = verify(&good, &key, &ctx(1000), &[]).unwrap_err();
        assert!(err.is_expired(), "{err}");

        // A client that strips a caveat breaks the chain.
        let stripped = Macaroon::new(&key.0, good.token().identifier().to_vec(), "lsat");
        let mut tampered = good.clone();
        tampered.macaroons = vec![stripped.clone()];
        assert!(
            verify(&tampered, &key, &ctx(2000), &[]).is_ok(),
            "untampered base chain"
        );
        let mut forged = stripped;
        forged.add_first_party_caveat("weather_valid_until=99999");
        let mut bytes = forged.to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        tampered.macaroons = vec![Macaroon::from_bytes(&bytes).unwrap()];
        assert_eq!(
            verify(&tampered, &key, &ctx(10), &[]),
            Err(VerifyError::Signature)
        );

        let mut with_discharge = good.clone();
        with_discharge.macaroons.push(good.token().clone());
        assert_eq!(
            verify(&with_discharge, &key, &ctx(10), &[]),
            Err(VerifyError::UnexpectedDischarge(1))
        );
    }

    #[test]
    fn client_may_attenuate_but_not_widen() {
        let (mut c, key) = credential(&[Caveat::valid_until("weather", 1000)]);
        let mut narrowed = c.token().clone();
        narrowed.add_first_party_caveat("weather_valid_until=500");
        c.macaroons = vec![narrowed.clone()];
        assert!(verify(&c, &key, &ctx(400), &[]).unwrap().version == 0);
        assert!(verify(&c, &key, &ctx(600), &[]).unwrap_err().is_expired());

        let mut widened = c.token().clone();
        widened.add_first_party_caveat("weather_valid_until=5000");
        c.macaroons = vec![widened];
        assert!(matches!(
            verify(&c, &key, &ctx(400), &[]),
            Err(VerifyError::Caveat(CaveatError::Widened(_)))
        ));
    }

    #[test]
    fn application_constraints() {
        struct MaxSize(u64);
        impl Satisfier for MaxSize {
            fn condition(&self) -> &str {
                "upload_max_mb"
            }
            fn satisfy_previous(&self, previous: &str, current: &str) -> Result<(), CaveatError> {
                let ok = current.parse::<u64>().ok() <= previous.parse::<u64>().ok();
                ok.then_some(())
                    .ok_or(CaveatError::Widened("upload_max_mb".into()))
            }
            fn satisfy_final(&self, value: &str) -> Result<(), CaveatError> {
                match value.parse::<u64>() {
                    Ok(max) if self.0 <= max => Ok(()),
                    _ => Err(CaveatError::Constraint {
                        condition: "upload_max_mb".into(),
                        reason: format!("{} MB requested", self.0),
                    }),
                }
            }
        }
        let (c, key) = credential(&[Caveat::new("upload_max_mb", "10")]);
        assert!(verify(&c, &key, &ctx(0), &[&MaxSize(5)]).is_ok());
        assert!(matches!(
            verify(&c, &key, &ctx(0), &[&MaxSize(50)]),
            Err(VerifyError::Caveat(CaveatError::Constraint { .. }))
        ));
    }
}
