//! Issuing: one Lightning invoice and the challenges that point at it.
//!
//! Stateless: the L402 token's root key is derived from the gateway's
//! secret and the MPP challenge id is an HMAC over its terms, so a 402
//! writes nothing anywhere and an unpaid flood costs the store nothing.

use gate402_l402::caveat::{Caveat, Service};
use gate402_l402::{L402Challenge, RootKeySecrets};
use gate402_lightning::{InvoiceRequest, LightningBackend, LightningError, Network};
use gate402_mpp::challenge::NewChallenge;
use gate402_mpp::lightning::{ChargeRequest, CHARGE, METHOD};
use gate402_mpp::session::{SessionRequest, SESSION};

use crate::clock::unix_now;
use crate::issued::Issued;
use crate::route::{PricedService, Sells};
use crate::x402::X402Keys;

/// The most bytes a service's `description` may have: it is the memo of
/// its invoices, and a BOLT11 tagged field holds at most 1023 five-bit
/// words, 639 bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 639;

/// Which challenges to issue with the invoice (each only if the service
/// offers its scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doors {
    /// An L402 macaroon.
    pub l402: bool,
    /// An MPP charge.
    pub mpp: bool,
    /// An x402 offer.
    pub x402: bool,
}

/// What the MPP challenge binds besides the price and the service
/// (draft-httpauth-payment-01).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The field its credential must come in, when not `Authorization`.
    pub header: Option<&'a str>,
    /// The digest of the request body it pays for (`sha-256=:…:`).
    pub digest: Option<&'a str>,
    /// The request target, x402's `resource.url`.
    pub resource: Option<&'a str>,
}

/// Makes invoices and challenges.
pub(crate) struct Issuer {
    pub(crate) backend: std::sync::Arc<dyn LightningBackend>,
    pub(crate) network: Network,
    pub(crate) challenge_keys: std::sync::Arc<crate::verify::ScopedKeys>,
    pub(crate) root_keys: RootKeySecrets,
    pub(crate) realm: String,
    pub(crate) invoice_expiry_secs: u32,
    pub(crate) x402_keys: X402Keys,
    /// The node's id (hex), the x402 offer's `payTo`.
    pub(crate) payee: String,
}

impl Issuer {
    pub(crate) async fn issue(
        &self,
        service: &PricedService,
        doors: Doors,
        binding: Binding<'_>,
    ) -> Result<Issued, LightningError> {
        let now = unix_now();
        // Amount 0 would ask the node for an invoice without an amount,
        // which a payer pays with what it likes.
        if service.invoice_sats() == 0 {
            return Err(LightningError::Rejected(format!(
                "service {} charges 0 sat: a priced service costs at least 1 sat",
                service.name
            )));
        }
        let created = self
            .backend
            .create_invoice(InvoiceRequest {
                amount_msat: service.invoice_sats() * 1000,
                memo: memo(&service.description),
                expiry_secs: self.invoice_expiry_secs,
            })
            .await?;
        let mut issued = Issued {
            bolt11: created.bolt11.clone(),
            payment_hash: created.payment_hash,
            expires_at: created.expires_at,
            l402: None,
            payment: None,
            x402: None,
        };
        // Counted from the invoice's expiry: a token paid at the last moment
        // still lasts token_lifetime_secs. The L402 token and the x402 offer
        // of one invoice end together.
        let valid_until = now + u64::from(self.invoice_expiry_secs) + service.token_lifetime_secs;
        if doors.l402 && service.schemes.l402() {
            let mut caveats = vec![
                Caveat::services(&[Service::new(service.name.clone())]),
                Caveat::valid_until(&service.name, valid_until),
            ];
            match service.sells {
                Sells::Request => {
                    caveats.push(Caveat::uses(&service.name, 1));
                    // What this invoice asked, fixed price or not: a
                    // request priced higher (a price raised since, a
                    // dearer body) refuses the token without asking the
                    // node.
                    caveats.push(crate::pricing::amount_caveat(service));
                }
                Sells::Balance => {
                    caveats.push(Caveat::balance(&service.name, service.deposit_sats()));
                }
                Sells::Pass => {
                    caveats.push(Caveat::pass(&service.name));
                    // Its period runs from its first use, not from its
                    // invoice (which may be paid any time before expiry).
                    caveats.push(Caveat::pass_secs(
                        &service.name,
                        service.token_lifetime_secs,
                    ));
                }
            }
            let minted = self.root_keys.mint(
                created.payment_hash,
                gate402_l402::DEFAULT_LOCATION,
                &caveats,
            );
            issued.l402 = Some(L402Challenge {
                macaroon: minted.macaroon,
                invoice: created.bolt11.clone(),
            });
        }
        if doors.mpp && service.schemes.mpp() && charges_on(self.network) {
            // A balance is sold through the session intent: its invoice is
            // a deposit, not the price of one request.
            let (intent, request) = match service.sells {
                Sells::Balance => (
                    SESSION,
                    SessionRequest::new(
                        service.price_sats,
                        service.deposit_sats(),
                        Some(service.description.clone()),
                        &created.bolt11,
                        &created.payment_hash,
                        service.session_idle_secs,
                    )
                    .to_value(),
                ),
                _ => (
                    CHARGE,
                    ChargeRequest::new(
                        service.price_sats,
                        Some(service.description.clone()),
                        &created.bolt11,
                        &created.payment_hash,
                        self.network,
                    )
                    .to_value(),
                ),
            };
            // Never later than the invoice: a challenge must not outlive
            // what it asks to be paid.
            let expires = time::OffsetDateTime::from_unix_timestamp(
                created
                    .expires_at
                    .min(now + u64::from(self.invoice_expiry_secs)) as i64,
            )
            .ok();
            // Bound to its service by the key, not by a parameter a client
            // may leave out of its echo.
            issued.payment = Some(
                self.challenge_keys
                    .scoped(&service.name)
                    .issue(NewChallenge {
                        realm: &self.realm,
                        method: METHOD,
                        intent,
                        request: &request,
                        expires,
                        digest: binding.digest,
                        // A client writing a challenge sent as JSON (MCP's)
                        // back in its header form needs it on one line.
                        description: Some(&gate402_mpp::challenge::one_line(&service.description)),
                        opaque: None,
                        header: binding.header,
                    }),
            );
        }
        // x402 buys one request: it is no door to a balance.
        if doors.x402 && service.schemes.x402() && service.sells != Sells::Balance {
            issued.x402 = Some(self.x402_keys.offer(
                service,
                &issued,
                binding.resource.unwrap_or("/"),
                &self.payee,
                self.network,
                valid_until,
            ));
        }
        Ok(issued)
    }
}

/// `description` cut to what an invoice's memo holds
/// ([`MAX_DESCRIPTION_BYTES`]), at a character boundary: a description
/// from elsewhere than the checked config (an MCP upstream's tool, a
/// library caller) must not make every invoice fail.
fn memo(description: &str) -> String {
    let mut end = description.len().min(MAX_DESCRIPTION_BYTES);
    while !description.is_char_boundary(end) {
        end -= 1;
    }
    description[..end].to_owned()
}

/// Whether the Lightning charge method can name `network`:
/// draft-lightning-charge-00 knows `mainnet`, `regtest` and `signet`, so a
/// testnet gateway offers L402 alone rather than a challenge no conforming
/// client can read.
pub fn charges_on(network: Network) -> bool {
    matches!(
        network,
        Network::Mainnet | Network::Regtest | Network::Signet
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_is_cut_to_what_an_invoice_holds() {
        assert_eq!(memo("weather"), "weather");
        let long = "é".repeat(400);
        let cut = memo(&long);
        assert_eq!(cut.len(), 638, "at a character boundary");
        assert!(long.starts_with(&cut));
        assert_eq!(memo(&"a".repeat(700)).len(), MAX_DESCRIPTION_BYTES);
    }

    #[test]
    fn testnet_gets_no_lightning_charge() {
        assert!(charges_on(Network::Mainnet));
        assert!(charges_on(Network::Regtest));
        assert!(charges_on(Network::Signet));
        assert!(!charges_on(Network::Testnet));
    }
}
