//! The `Authorization: L402 <macaroon>:<preimage>` credential.

use gate402_http_auth::parse_credentials;

use crate::caveat::Caveat;
use crate::{Identifier, IdentifierError, Macaroon, MacaroonError, Preimage, Scheme};

/// The condition under which gRPC clients put the preimage into the macaroon.
const PREIMAGE_CAVEAT: &str = "preimage";

/// A paid L402 token as a client presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L402Credential {
    /// `L402` or the legacy `LSAT`.
    pub scheme: Scheme,
    /// The token first, then any discharge macaroons.
    pub macaroons: Vec<Macaroon>,
    /// The preimage of the invoice the token commits to.
    pub preimage: Preimage,
}

/// Why an `Authorization` value is not a usable L402 credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not even a well-formed `Authorization` value.
    #[error("malformed Authorization header: {0}")]
    Header(#[from] gate402_http_auth::Error),
    /// Another scheme.
    #[error("scheme {0:?} is not L402 or LSAT")]
    NotL402(String),
    /// No `:` between macaroons and preimage.
    #[error("L402 credential has no ':<preimage>' part")]
    MissingPreimage,
    /// No macaroon before the `:`.
    #[error("L402 credential has no macaroon")]
    MissingMacaroon,
    /// A macaroon that does not decode (position counts from 1).
    #[error("L402 macaroon {index}: {error}")]
    Macaroon {
        /// Position in the list, from 1.
        index: usize,
        /// What is wrong with it.
        error: MacaroonError,
    },
    /// The preimage is not 64 hex digits.
    #[error("L402 preimage must be 64 hex digits")]
    Preimage,
    /// gRPC metadata value that is not hex.
    #[error("gRPC macaroon metadata is not hex")]
    MetadataHex,
    /// gRPC macaroon without the `preimage=` caveat.
    #[error("gRPC macaroon carries no preimage caveat")]
    MissingPreimageCaveat,
}

impl L402Credential {
    /// Parses `L402|LSAT <b64 mac>[,<b64 mac>...]:<hex preimage>`, macaroons
    /// in standard or URL-safe base64, padded or not.
    pub fn from_authorization(value: &str) -> Result<Self, CredentialError> {
        let credentials = parse_credentials(value)?;
        let scheme = Scheme::from_name(credentials.scheme)
            .ok_or_else(|| CredentialError::NotL402(credentials.scheme.to_owned()))?;
        let (macaroons, preimage) = credentials
            .rest
            .rsplit_once(':')
            .ok_or(CredentialError::MissingPreimage)?;
        if macaroons.trim().is_empty() {
            return Err(CredentialError::MissingMacaroon);
        }
        let macaroons = macaroons
            .split(',')
            .map(str::trim)
            .enumerate()
            .map(|(i, text)| {
                Macaroon::from_base64(text).map_err(|error| CredentialError::Macaroon {
                    index: i + 1,
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            scheme,
            macaroons,
            preimage: parse_preimage(preimage.trim())?,
        })
    }

    /// The gRPC form: the `macaroon` (legacy) or `token` metadata value is
    /// the hex macaroon, with the preimage added as a `preimage=<hex>` caveat.
    pub fn from_grpc_metadata(value: &str) -> Result<Self, CredentialError> {
        let bytes = hex::decode(value.trim()).map_err(|_| CredentialError::MetadataHex)?;
        let macaroon = Macaroon::from_bytes(&bytes)
            .map_err(|error| CredentialError::Macaroon { index: 1, error })?;
        let preimage = macaroon
            .first_party_caveats()
            .filter_map(Caveat::parse)
            .filter(|c| c.condition == PREIMAGE_CAVEAT)
            .last()
            .ok_or(CredentialError::MissingPreimageCaveat)?;
        Ok(Self {
            scheme: Scheme::L402,
            preimage: parse_preimage(&preimage.value)?,
            macaroons: vec![macaroon],
        })
    }

    /// The `Authorization` value: macaroons in standard padded base64, the
    /// preimage in lowercase hex.
    pub fn to_authorization(&self) -> String {
        let macaroons: Vec<String> = self.macaroons.iter().map(Macaroon::to_base64).collect();
        format!(
            "{} {}:{}",
            self.scheme,
            macaroons.join(","),
            hex::encode(self.preimage)
        )
    }

    /// The token (the first macaroon).
    pub fn token(&self) -> &Macaroon {
        &self.macaroons[0]
    }

    /// The token's identifier, whose token id names its root key.
    pub fn identifier(&self) -> Result<Identifier, IdentifierError> {
        Identifier::from_bytes(self.token().identifier())
    }
}

fn parse_preimage(text: &str) -> Result<Preimage, CredentialError> {
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(text, &mut preimage).map_err(|_| CredentialError::Preimage)?;
    Ok(preimage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;

    fn token() -> Macaroon {
        Macaroon::new(
            b"root",
            Identifier::new([1; 32], [2; 32]).to_bytes().to_vec(),
            "lsat",
        )
    }

    #[test]
    fn every_accepted_form() {
        let mac = token();
        let std = mac.to_base64();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.to_bytes());
        let pre = "ab".repeat(32);
        for (value, scheme, count) in [
            (format!("L402 {std}:{pre}"), Scheme::L402, 1),
            (format!("LSAT {std}:{pre}"), Scheme::Lsat, 1),
            (
                format!("l402 {url}:{}", pre.to_uppercase()),
                Scheme::L402,
                1,
            ),
            (format!("L402 {std},{url}:{pre}"), Scheme::L402, 2),
            (format!("L402 {std}, {std} : {pre}"), Scheme::L402, 2),
        ] {
            let c = L402Credential::from_authorization(&value).unwrap();
            assert_eq!(c.scheme, scheme, "{value}");
            assert_eq!(c.macaroons.len(), count, "{value}");
            assert_eq!(c.token(), &mac);
            assert_eq!(c.preimage, [0xab; 32]);
        }
    }

    #[test]
    fn grpc_metadata_form() {
        let mut mac = token();
        let pre = "cd".repeat(32);
        mac.add_first_party_caveat(format!("preimage={pre}"));
        let c = L402Credential::from_grpc_metadata(&hex::encode(mac.to_bytes())).unwrap();
        assert_eq!(c.preimage, [0xcd; 32]);
        assert_eq!(
            L402Credential::from_grpc_metadata(&hex::encode(token().to_bytes())),
            Err(CredentialError::MissingPreimageCaveat)
        );
        assert_eq!(
            L402Credential::from_grpc_metadata("zz"),
            Err(CredentialError::MetadataHex)
        );
    }

    #[test]
    fn rejections() {
        let std = token().to_base64();
        let pre = "ab".repeat(32);
        let cases = [
            (
                "Bearer abc".to_owned(),
                CredentialError::NotL402("Bearer".into()),
            ),
            (format!("L402 {std}"), CredentialError::MissingPreimage),
            (format!("L402 :{pre}"), CredentialError::MissingMacaroon),
            (format!("L402 {std}:abc"), CredentialError::Preimage),
            (
                format!("L402 {std}:{}", "ab".repeat(33)),
                CredentialError::Preimage,
            ),
            (
                format!("L402 {std}:{}", "zz".repeat(32)),
                CredentialError::Preimage,
            ),
            // Hex in one spelling only: no `0x` prefix (a hex decoder that
            // strips one would make a second spelling of every token).
            (format!("L402 {std}:0x{pre}"), CredentialError::Preimage),
            (format!("L402 {std}:0X{pre}"), CredentialError::Preimage),
            (
                format!("L402 AgE:{pre}"),
                CredentialError::Macaroon {
                    index: 1,
                    error: MacaroonError::Truncated("varint"),
                },
            ),
            (
                format!("L402 {std},!!:{pre}"),
                CredentialError::Macaroon {
                    index: 2,
                    error: MacaroonError::Base64,
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                L402Credential::from_authorization(&value),
                Err(expected),
                "{value}"
            );
        }
    }

    proptest! {
        #[test]
        fn formatted_credential_parses_back(
            ids in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..80), 1..3),
            preimage in any::<[u8; 32]>(),
            lsat in any::<bool>(),
        ) {
            let credential = L402Credential {
                scheme: if lsat { Scheme::Lsat } else { Scheme::L402 },
                macaroons: ids.into_iter().map(|id| Macaroon::new(b"k", id, "lsat")).collect(),
                preimage,
            };
            prop_assert_eq!(L402Credential::from_authorization(&credential.to_authorization()).unwrap(), credential);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,300}") {
            let _ = L402Credential::from_authorization(&s);
        }
    }
}
