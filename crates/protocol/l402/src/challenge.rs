//! The `L402` (and legacy `LSAT`) challenge.

use gate402_http_auth::{format_challenge, Challenge};

use crate::{Macaroon, MacaroonError};

/// The two names of the scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// The current name.
    L402,
    /// The name before 2023, still sent and accepted by Aperture.
    Lsat,
}

impl Scheme {
    /// The scheme token.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::L402 => "L402",
            Scheme::Lsat => "LSAT",
        }
    }

    /// Recognizes either name, case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("L402") {
            Some(Scheme::L402)
        } else if name.eq_ignore_ascii_case("LSAT") {
            Some(Scheme::Lsat)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An L402 offer: a macaroon bound to the invoice that pays for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L402Challenge {
    /// The unpaid token.
    pub macaroon: Macaroon,
    /// The BOLT11 invoice whose payment hash the macaroon commits to.
    pub invoice: String,
}

/// Why an `L402`/`LSAT` challenge is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// The challenge is of another scheme.
    #[error("not an L402 or LSAT challenge")]
    NotL402,
    /// Neither `macaroon=` nor `token=` is present.
    #[error("L402 challenge has no macaroon or token parameter")]
    MissingMacaroon,
    /// No `invoice=`.
    #[error("L402 challenge has no invoice parameter")]
    MissingInvoice,
    /// The macaroon does not decode.
    #[error("L402 challenge macaroon: {0}")]
    Macaroon(#[from] MacaroonError),
}

impl L402Challenge {
    /// The header value, in the parameter order every deployed client reads:
    /// lnget wants `macaroon` then `invoice` first, the current spec wants
    /// `token` and `version`, Alby reads either name. `LSAT` gets only the
    /// first two, as Aperture sends it.
    pub fn to_header(&self, scheme: Scheme) -> String {
        self.header_with(scheme, &self.macaroon.to_base64())
    }

    /// The `L402` and the `LSAT` header values, in that order, the macaroon
    /// encoded once for both.
    pub fn to_headers(&self) -> [String; 2] {
        let macaroon = self.macaroon.to_base64();
        [
            self.header_with(Scheme::L402, &macaroon),
            self.header_with(Scheme::Lsat, &macaroon),
        ]
    }

    fn header_with(&self, scheme: Scheme, macaroon: &str) -> String {
        let mut params = vec![("macaroon", macaroon), ("invoice", self.invoice.as_str())];
        if scheme == Scheme::L402 {
            params.push(("token", macaroon));
            params.push(("version", "0"));
        }
        // Base64 and BOLT11 carry no control characters, so this cannot fail
        // unless the invoice string itself is corrupt.
        format_challenge(scheme.as_str(), params).unwrap_or_else(|_| scheme.as_str().to_owned())
    }

    /// Reads an `L402` or `LSAT` challenge, with `macaroon=` or `token=`,
    /// its parameters in any order.
    pub fn from_challenge(challenge: &Challenge) -> Result<(Scheme, Self), ChallengeError> {
        let scheme = Scheme::from_name(&challenge.scheme).ok_or(ChallengeError::NotL402)?;
        let macaroon = challenge
            .param("macaroon")
            .or_else(|| challenge.param("token"))
            .ok_or(ChallengeError::MissingMacaroon)?;
        let invoice = challenge
            .param("invoice")
            .ok_or(ChallengeError::MissingInvoice)?;
        Ok((
            scheme,
            Self {
                macaroon: Macaroon::from_base64(macaroon)?,
                invoice: invoice.to_owned(),
            },
        ))
    }
}

/// Every `L402`/`LSAT` challenge in a parsed list, each with its outcome.
pub fn challenges_in(
    list: &[Challenge],
) -> impl Iterator<Item = Result<(Scheme, L402Challenge), ChallengeError>> + '_ {
    list.iter()
        .filter(|c| Scheme::from_name(&c.scheme).is_some())
        .map(L402Challenge::from_challenge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate402_http_auth::parse_challenges;
    use proptest::prelude::*;

    fn sample() -> L402Challenge {
        L402Challenge {
            macaroon: Macaroon::new(b"root", vec![0; 66], "lsat"),
            invoice: "lnbcrt10n1pexample".into(),
        }
    }

    #[test]
    fn parameter_order_for_lnget() {
        let header = sample().to_header(Scheme::L402);
        assert!(header.starts_with("L402 macaroon=\"AgEEbHNhdA"), "{header}");
        let order: Vec<_> = parse_challenges(&header).unwrap()[0]
            .params
            .iter()
            .map(|(n, _)| n.to_owned())
            .collect();
        assert_eq!(order, ["macaroon", "invoice", "token", "version"]);
    }

    #[test]
    fn every_accepted_form() {
        let mac = sample().macaroon.to_base64();
        for header in [
            format!("L402 macaroon=\"{mac}\", invoice=\"lnbcrt10n1pexample\""),
            format!("L402 invoice=\"lnbcrt10n1pexample\", token=\"{mac}\", version=\"0\""),
            format!("LSAT macaroon=\"{mac}\", invoice=\"lnbcrt10n1pexample\""),
            format!("l402 token={mac}, invoice=lnbcrt10n1pexample"),
            format!("Payment id=\"x\", realm=\"r\", method=\"lightning\", intent=\"charge\", request=\"e30\", L402 macaroon=\"{mac}\", invoice=\"lnbcrt10n1pexample\""),
        ] {
            let list = parse_challenges(&header).unwrap();
            let found: Vec<_> = challenges_in(&list).collect();
            assert_eq!(found.len(), 1, "{header}");
            assert_eq!(found[0].as_ref().unwrap().1, sample(), "{header}");
        }
    }

    #[test]
    fn incomplete_challenges() {
        let list = parse_challenges("L402 invoice=\"lnbc1\", LSAT macaroon=\"AgE=\"").unwrap();
        let found: Vec<_> = challenges_in(&list).collect();
        assert_eq!(found[0], Err(ChallengeError::MissingMacaroon));
        assert_eq!(found[1], Err(ChallengeError::MissingInvoice));
        let list = parse_challenges("L402 macaroon=\"@@\", invoice=\"lnbc1\"").unwrap();
        assert_eq!(
            L402Challenge::from_challenge(&list[0]),
            Err(ChallengeError::Macaroon(MacaroonError::Base64))
        );
    }

    proptest! {
        #[test]
        fn formatted_challenge_parses_back(
            id in proptest::collection::vec(any::<u8>(), 66),
            invoice in "ln[a-z0-9]{10,80}",
            lsat in any::<bool>(),
        ) {
            let challenge = L402Challenge { macaroon: Macaroon::new(b"k", id, "lsat"), invoice };
            let scheme = if lsat { Scheme::Lsat } else { Scheme::L402 };
            let list = parse_challenges(&challenge.to_header(scheme)).unwrap();
            prop_assert_eq!(L402Challenge::from_challenge(&list[0]).unwrap(), (scheme, challenge));
        }
    }
}
