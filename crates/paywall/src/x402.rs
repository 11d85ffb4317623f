//! The x402 door: the same invoice offered in `PAYMENT-REQUIRED`, and a
//! `payment-signature` checked by asking the node whether its invoice is
//! settled (x402's Lightning payload carries no preimage).
//!
//! Stateless like the other doors: the offer is bound to its service, its
//! exact invoice and its end by an HMAC under a key derived from the
//! gateway's secret ([`gate402_x402::binding`]), so a 402 stores nothing,
//! any replica sharing the secret can check a payment, and a client cannot
//! present a re-encoded invoice (another expiry, another signer) for the
//! same payment hash. Single use is the claim's job.

use gate402_bolt11::Invoice;
use gate402_lightning::{InvoiceStatus, LightningBackend, LightningError, Network};
use gate402_mpp::problem::ProblemType;
use gate402_x402::{
    Bound, LightningExtra, PaymentRequired, Requirements, ResourceInfo, LIGHTNING, SCHEME, VERSION,
};
use hmac::{Hmac, KeyInit, Mac};
use http::StatusCode;
use sha2::{Digest, Sha256};

use crate::clock::unix_now;
use crate::issued::Issued;
use crate::responses::Refusal;
use crate::route::PricedService;
use crate::verify::Verified;

/// Said of an x402 payment whose invoice the node no longer knows. Bound
/// to this gateway's offer, so its node issued it, and nodes keep what was
/// paid: it expired unpaid and was forgotten (the sandbox forgets unpaid
/// invoices a day after they expire; some nodes delete canceled ones), or
/// another replica's node issued it.
const FORGOTTEN: &str = "the Lightning node has no record of this invoice: an unpaid invoice is \
     forgotten some time after it expires (and replicas must share one node); pay the new offer";

const LABEL: &[u8] = b"gate402 x402 binding";

/// The binding keys: the current secret's first, then previous ones'.
#[derive(Clone)]
pub(crate) struct X402Keys(Vec<[u8; 32]>);

impl std::fmt::Debug for X402Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "X402Keys({} keys)", self.0.len())
    }
}

fn derive(secret: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(LABEL);
    mac.finalize().into_bytes().into()
}

impl X402Keys {
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self(vec![derive(secret)])
    }

    pub(crate) fn with_previous(mut self, secret: &[u8]) -> Self {
        self.0.push(derive(secret));
        self
    }

    /// `PAYMENT-REQUIRED` for `issued`'s invoice, sold as `service` for the
    /// request target `resource`, honoured until `valid_until` (the L402
    /// token of the same invoice's end).
    pub(crate) fn offer(
        &self,
        service: &PricedService,
        issued: &Issued,
        resource: &str,
        payee: &str,
        network: Network,
        valid_until: u64,
    ) -> PaymentRequired {
        let amount_msat = service.price_sats * 1000;
        let expiry_secs = issued.expires_at.saturating_sub(unix_now()).max(1);
        PaymentRequired {
            x402_version: VERSION,
            error: Some(format!("{}: {}", service.description, service.asked())),
            resource: ResourceInfo {
                url: resource.to_owned(),
                description: Some(service.description.clone()),
            },
            accepts: vec![Requirements {
                scheme: SCHEME.into(),
                network: LIGHTNING.into(),
                amount: amount_msat.to_string(),
                asset: "BTC".into(),
                pay_to: payee.into(),
                max_timeout_seconds: expiry_secs,
                extra: LightningExtra {
                    payment_method: LIGHTNING.into(),
                    invoice: issued.bolt11.clone(),
                    network: network.to_string(),
                    valid_until,
                    binding: gate402_x402::binding(
                        &self.0[0],
                        Bound {
                            service: &service.name,
                            invoice: &issued.bolt11,
                            valid_until,
                        },
                    ),
                },
            }],
        }
    }

    /// Checks a `payment-signature` for `service`: an offer of this
    /// gateway for this service, its invoice exactly as issued and for at
    /// least this request's price, which `backend` holds as settled (or
    /// whose preimage the client sent). `paid_sats` is its invoice's
    /// amount.
    pub(crate) async fn verify(
        &self,
        service: &PricedService,
        value: &str,
        backend: &dyn LightningBackend,
    ) -> Result<Verified, Refusal> {
        let refuse =
            |problem, detail: String| Refusal::new(StatusCode::PAYMENT_REQUIRED, problem, detail);
        if !service.schemes.x402() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                ProblemType::MethodUnsupported,
                "this service does not accept x402",
            ));
        }
        let payment = gate402_x402::parse_signature(value)
            .map_err(|e| refuse(ProblemType::MalformedCredential, e.to_string()))?;
        let invoice = Invoice::parse(&payment.payload.invoice)
            .map_err(|e| refuse(ProblemType::MalformedCredential, e.to_string()))?;
        let hash = invoice.payment_hash();
        let amount_msat = service.price_sats * 1000;
        let extra = &payment.accepted.extra;
        let bound = Bound {
            service: &service.name,
            invoice: &payment.payload.invoice,
            valid_until: extra.valid_until,
        };
        let issued_here = self
            .0
            .iter()
            .any(|key| gate402_x402::binding_holds(key, bound, &extra.binding));
        // Its invoice's amount is what it paid (the binding covers the
        // invoice): at least this request's price serves, as a credential
        // of the other doors does after a price cut.
        let Some(invoiced_msat) = invoice.amount_msat().filter(|_| issued_here) else {
            return Err(refuse(
                ProblemType::InvalidChallenge,
                "this x402 offer was not made by this gateway for this service".into(),
            ));
        };
        if invoiced_msat < amount_msat {
            return Err(refuse(
                ProblemType::PaymentInsufficient,
                format!(
                    "this x402 payment paid {} sat, but this request costs {} sat; pay the new offer",
                    invoiced_msat / 1000,
                    service.price_sats
                ),
            ));
        }
        // Its single use is remembered until then; past it, it pays nothing.
        let expires_at = extra.valid_until;
        if unix_now() >= expires_at {
            return Err(refuse(
                ProblemType::PaymentExpired,
                "this x402 payment is too old; pay the new offer".into(),
            ));
        }
        let paid = match &payment.payload.preimage {
            Some(preimage) => {
                let proves = hex::decode(preimage)
                    .ok()
                    .is_some_and(|p| Sha256::digest(p).as_slice() == hash);
                if !proves {
                    return Err(refuse(
                        ProblemType::LightningInvalidPreimage,
                        "the preimage does not match the invoice's payment hash".into(),
                    ));
                }
                true
            }
            None => match backend.invoice_status(&hash).await {
                Ok(InvoiceStatus::Settled {
                    amount_msat: got, ..
                }) => got >= invoiced_msat,
                Ok(InvoiceStatus::Open) => {
                    return Err(refuse(
                        ProblemType::PaymentActionRequired,
                        "the invoice is not paid yet: pay it, then retry".into(),
                    ))
                }
                Ok(InvoiceStatus::Canceled) => {
                    return Err(refuse(
                        ProblemType::PaymentExpired,
                        "the invoice expired unpaid; pay the new offer".into(),
                    ))
                }
                Err(LightningError::NotFound(_)) => {
                    return Err(refuse(ProblemType::PaymentExpired, FORGOTTEN.into()))
                }
                Err(e) => {
                    tracing::error!(error = %e, "Lightning backend: cannot look up an x402 invoice");
                    return Err(Refusal::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ProblemType::InternalPaymentError,
                        "the Lightning node cannot say whether the invoice is paid; retry",
                    ));
                }
            },
        };
        if !paid {
            return Err(refuse(
                ProblemType::VerificationFailed,
                "the invoice is not paid for its price".into(),
            ));
        }
        Ok(Verified {
            payment_hash: hash,
            challenge_id: None,
            expires_at,
            single_use: true,
            balance: None,
            proven: payment.payload.preimage.is_some(),
            paid_sats: Some(invoiced_msat / 1000),
            pass_secs: None,
        })
    }
}

/// `PAYMENT-RESPONSE` for a served payment.
pub(crate) fn response_header(payment_hash: &[u8; 32]) -> String {
    gate402_x402::encode(&gate402_x402::PaymentResponse {
        success: true,
        transaction: hex::encode(payment_hash),
        network: LIGHTNING.into(),
    })
}
