//! What pays: a Lightning backend, or a sandbox gateway's payer.

use std::sync::Arc;
use std::time::Duration;

use gate402_lightning::{
    InvoiceRequest, InvoiceStatus, LightningBackend, LightningError, Network, PayError,
    PaymentOutcome, PaymentStatus,
};
use gate402_lightning_sandbox::http::{ClientError, InvoiceResponse, INVOICE_PATH};

/// How long one payment may take before it is treated as in flight.
pub const PAY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a session's return invoice lives: the most the draft allows
/// (30 days), since the refund comes whenever the session closes.
pub const RETURN_INVOICE_EXPIRY_SECS: u32 = 30 * 24 * 3600;

/// An invoice without an amount that the wallet is paid on: where a
/// session's unspent balance is refunded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnInvoice {
    /// The BOLT11 string.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: [u8; 32],
}

/// The client's wallet.
#[derive(Clone)]
pub enum Wallet {
    /// The sandbox payer of the gateway that sent the 402 (`POST
    /// /sandbox/pay` on the URL's origin), as the payer whose secret is
    /// derived from this one for that origin (which alone is told a paid
    /// invoice's preimage again). Regtest test money only.
    Sandbox(reqwest::Client, String),
    /// A Lightning node or wallet (ldk, LND, Core Lightning, NWC) behind
    /// the backend trait.
    Node(Arc<dyn LightningBackend>),
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wallet::Sandbox(..) => f.write_str("Wallet::Sandbox"),
            Wallet::Node(_) => f.write_str("Wallet::Node"),
        }
    }
}

/// Whether a failed `pay` may still have sent money: then the payment is
/// resolved through its status, never sent again.
pub fn may_be_in_flight(error: &PayError) -> bool {
    matches!(
        error,
        PayError::StillPending(_)
            | PayError::Backend(LightningError::Timeout(_) | LightningError::Unavailable(_))
    )
}

impl Wallet {
    /// The sandbox payer, with its own HTTP client and a secret made for
    /// this process (a payment it loses the answer of is recovered only by
    /// this process; see [`Wallet::sandbox_as`]).
    pub fn sandbox() -> Self {
        Self::sandbox_as(Self::new_sandbox_payer())
    }

    /// A new sandbox payer secret: 64 random hex digits.
    pub fn new_sandbox_payer() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    /// The sandbox payer as the payer whose secret is `payer` (16 to 256
    /// bytes): kept across runs, it lets a later run recover the preimage
    /// of a payment whose answer was lost.
    pub fn sandbox_as(payer: String) -> Self {
        Self::sandbox_with(reqwest::Client::builder(), payer)
    }

    /// [`Wallet::sandbox_as`] with an HTTP client built from `http` (its
    /// connect and read timeouts, say), each payment within
    /// [`PAY_TIMEOUT`] at most.
    pub fn sandbox_with(http: reqwest::ClientBuilder, payer: String) -> Self {
        Wallet::Sandbox(http.timeout(PAY_TIMEOUT).build().unwrap_or_default(), payer)
    }

    /// The network this wallet pays on.
    pub async fn network(&self) -> Result<Network, PayError> {
        match self {
            Wallet::Sandbox(..) => Ok(gate402_lightning_sandbox::NETWORK),
            Wallet::Node(node) => Ok(node.network().await?),
        }
    }

    /// Pays `bolt11`; `origin` is where a sandbox payer lives. An invoice
    /// paid before is not paid again: its outcome is returned.
    pub async fn pay(
        &self,
        origin: &str,
        bolt11: &str,
        max_fee_msat: u64,
    ) -> Result<PaymentOutcome, PayError> {
        let paid = match self {
            Wallet::Sandbox(http, secret) => {
                let payer = sandbox_payer_for(secret, origin);
                match gate402_lightning_sandbox::http::pay_as(http, origin, bolt11, None, &payer)
                    .await
                {
                    Ok(paid) | Err(ClientError::AlreadyPaid(paid)) => paid.outcome(),
                    // Never sent: nothing was paid.
                    Err(e @ ClientError::Unreachable { .. }) => {
                        Err(PayError::NotSent(e.to_string()))
                    }
                    // Reached and its answer lost: it may have paid
                    // (asked again, never paid again).
                    Err(e @ ClientError::Lost { .. }) => Err(PayError::Backend(
                        LightningError::Unavailable(e.to_string()),
                    )),
                    Err(e) => Err(PayError::Rejected(e.to_string())),
                }
            }
            Wallet::Node(node) => node.pay(bolt11, max_fee_msat, PAY_TIMEOUT).await,
        };
        let outcome = match paid {
            Err(PayError::AlreadyPaid(outcome)) => outcome,
            other => other?,
        };
        self.proven(bolt11, outcome)
    }

    /// `outcome` as the invoice proves it: its preimage must be the
    /// payment hash's (a wallet, or a sandbox payer run by the very server
    /// being paid, that answers another has proven nothing, and the
    /// credential built on it would fail); the sandbox's amount is the
    /// invoice's, whatever its payer says, and it charges no fee (so a
    /// payer cannot book more against the budgets than was asked).
    ///
    /// # Errors
    ///
    /// [`PayError::Rejected`] when the preimage is not the invoice's.
    fn proven(
        &self,
        bolt11: &str,
        mut outcome: PaymentOutcome,
    ) -> Result<PaymentOutcome, PayError> {
        use sha2::{Digest, Sha256};
        let invoice = gate402_bolt11::Invoice::parse(bolt11)
            .map_err(|e| PayError::Rejected(format!("the invoice paid does not parse: {e}")))?;
        if <[u8; 32]>::from(Sha256::digest(outcome.preimage)) != invoice.payment_hash() {
            return Err(PayError::Rejected(
                "the payer answered a preimage that is not the invoice's (its hash is not the payment hash): nothing is proven paid".into(),
            ));
        }
        if let (Wallet::Sandbox(..), Some(amount_msat)) = (self, invoice.amount_msat()) {
            outcome.amount_msat = amount_msat;
            outcome.fee_msat = 0;
        }
        Ok(outcome)
    }

    /// How a payment that may have been sent ended. The sandbox payer has
    /// no status of its own; asking it to pay again is safe, as it pays an
    /// invoice once and answers the same preimage after.
    pub async fn resolve(
        &self,
        origin: &str,
        hash: &[u8; 32],
        bolt11: &str,
    ) -> Result<PaymentStatus, PayError> {
        match self {
            Wallet::Sandbox(..) => match self.pay(origin, bolt11, 0).await {
                Ok(outcome) => Ok(PaymentStatus::Succeeded(outcome)),
                Err(e) if may_be_in_flight(&e) => Ok(PaymentStatus::Pending),
                Err(e) => Ok(PaymentStatus::Failed(e.to_string())),
            },
            Wallet::Node(node) => match node.payment_status(hash).await? {
                PaymentStatus::Succeeded(outcome) => {
                    Ok(PaymentStatus::Succeeded(self.proven(bolt11, outcome)?))
                }
                other => Ok(other),
            },
        }
    }

    /// An invoice without an amount for a session's refund, valid for
    /// [`RETURN_INVOICE_EXPIRY_SECS`]: from the sandbox of the gateway at
    /// `origin` (`POST /sandbox/invoice`), or from the node.
    ///
    /// # Errors
    ///
    /// [`LightningError::Unsupported`] from a wallet that cannot issue
    /// invoices without an amount (Nostr Wallet Connect); otherwise the
    /// node's or the sandbox's error.
    pub async fn return_invoice(&self, origin: &str) -> Result<ReturnInvoice, LightningError> {
        match self {
            Wallet::Sandbox(http, _) => {
                let url = format!("{}{INVOICE_PATH}", origin.trim_end_matches('/'));
                let body = gate402_lightning_sandbox::http::InvoiceRequest {
                    memo: Some("gate402 session refund".into()),
                    expiry_secs: Some(RETURN_INVOICE_EXPIRY_SECS),
                };
                let issued: InvoiceResponse =
                    sandbox_json(http.post(&url).json(&body), &url).await?;
                let bolt11 = issued.invoice.ok_or_else(|| {
                    LightningError::Protocol(format!("{url} answered no invoice"))
                })?;
                let payment_hash = hash_of(&issued.payment_hash)?;
                // Checked before a deposit is paid against it: the server
                // answering is the one the refund is owed by.
                let unusable = |why: &str| {
                    LightningError::Protocol(format!("{url} answered a return invoice {why}"))
                };
                let invoice = gate402_bolt11::Invoice::parse(&bolt11)
                    .map_err(|e| unusable(&format!("that does not decode ({e})")))?;
                if invoice.payment_hash() != payment_hash {
                    return Err(unusable("of another payment hash than it named"));
                }
                if invoice.amount_msat().is_some() {
                    return Err(unusable(
                        "with an amount (a refund's is the server's to set)",
                    ));
                }
                if invoice.expires_at() <= crate::payer::now() + 60 {
                    return Err(unusable("that expires within a minute"));
                }
                Ok(ReturnInvoice {
                    bolt11,
                    payment_hash,
                })
            }
            Wallet::Node(node) => {
                let created = node
                    .create_invoice(InvoiceRequest {
                        amount_msat: 0,
                        memo: "gate402 session refund".into(),
                        expiry_secs: RETURN_INVOICE_EXPIRY_SECS,
                    })
                    .await?;
                Ok(ReturnInvoice {
                    bolt11: created.bolt11,
                    payment_hash: created.payment_hash,
                })
            }
        }
    }

    /// Where a return invoice of this wallet stands (what a refund
    /// delivered, once settled). `None` when the wallet cannot see its
    /// invoices.
    ///
    /// # Errors
    ///
    /// The node's or the sandbox's error.
    pub async fn received(
        &self,
        origin: &str,
        payment_hash: &[u8; 32],
    ) -> Result<Option<InvoiceStatus>, LightningError> {
        match self {
            Wallet::Sandbox(http, _) => {
                let url = format!(
                    "{}{INVOICE_PATH}/{}",
                    origin.trim_end_matches('/'),
                    hex::encode(payment_hash)
                );
                let seen: InvoiceResponse = match sandbox_json(http.get(&url), &url).await {
                    Ok(seen) => seen,
                    // Not this sandbox's invoice, or no sandbox: nothing seen.
                    Err(LightningError::Unsupported(_)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                Ok(Some(match seen.status.as_str() {
                    "settled" => InvoiceStatus::Settled {
                        amount_msat: seen.amount_msat.unwrap_or_default(),
                        preimage: None,
                    },
                    "canceled" => InvoiceStatus::Canceled,
                    _ => InvoiceStatus::Open,
                }))
            }
            Wallet::Node(node) => match node.invoice_status(payment_hash).await {
                Ok(status) => Ok(Some(status)),
                Err(LightningError::Unsupported(_)) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
}

/// Sends a request to a sandbox invoice endpoint and reads its JSON
/// answer; a refusal carries the problem's detail.
async fn sandbox_json<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<T, LightningError> {
    let response = request
        .send()
        .await
        .map_err(|e| LightningError::Unavailable(format!("{url}: {e}")))?;
    let status = response.status();
    let body = crate::body::read_bounded(response)
        .await
        .map_err(|e| LightningError::Unavailable(format!("{url}: {e}")))?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        // No sandbox there (a gateway on a real node), or none of its
        // invoices: nothing it can do for this wallet.
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(LightningError::Unsupported(format!(
                "{url} (404): {detail}"
            )));
        }
        return Err(LightningError::Rejected(format!(
            "{url} ({status}): {detail}"
        )));
    }
    serde_json::from_slice(&body).map_err(|e| LightningError::Protocol(format!("{url}: {e}")))
}

fn hash_of(text: &str) -> Result<[u8; 32], LightningError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash)
        .map_err(|_| LightningError::Protocol(format!("payment hash {text:?}")))?;
    Ok(hash)
}

/// The payer secret shown to the sandbox at `origin`: one of its own,
/// The payer secret a sandbox wallet of `secret` sends to the payer at
/// `origin` (`http://127.0.0.1:8402`): SHA-256 of the wallet's secret and
/// the origin, so that no server learns the secret another origin's payer
/// answers to (a server's own `/sandbox/pay` sees what it is sent).
pub fn sandbox_payer_for(secret: &str, origin: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"gate402 sandbox payer\n");
    hash.update(secret.as_bytes());
    hash.update(b"\n");
    hash.update(origin.as_bytes());
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sandbox payer run by the server being paid, answering `answer`.
    async fn lying_payer(answer: serde_json::Value) -> String {
        let app = axum::Router::new().route(
            gate402_lightning_sandbox::http::PATH,
            axum::routing::post(move || {
                let answer = answer.clone();
                async move { axum::Json(answer) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        origin
    }

    #[test]
    fn each_origin_sees_a_payer_secret_of_its_own() {
        let secret = Wallet::new_sandbox_payer();
        let a = sandbox_payer_for(&secret, "http://127.0.0.1:1");
        assert_eq!(a, sandbox_payer_for(&secret, "http://127.0.0.1:1"));
        assert_ne!(a, sandbox_payer_for(&secret, "http://127.0.0.1:2"));
        assert_ne!(a, secret);
        assert_eq!(a.len(), 64);
    }

    #[tokio::test]
    async fn a_payment_is_what_its_invoice_proves() {
        let preimage = [7u8; 32];
        let bolt11 = crate::tests::invoice(preimage, 600);
        let wallet = Wallet::sandbox();
        // Another preimage proves nothing paid.
        let origin = lying_payer(serde_json::json!({
            "preimage": hex::encode([8u8; 32]),
            "amount_msat": 2_000,
        }))
        .await;
        let refused = wallet.pay(&origin, &bolt11, 0).await.unwrap_err();
        assert!(
            refused.to_string().contains("not the invoice's"),
            "{refused}"
        );
        // The invoice's preimage with a grown amount: the invoice's amount.
        let origin = lying_payer(serde_json::json!({
            "preimage": hex::encode(preimage),
            "amount_msat": 10_000_000,
        }))
        .await;
        let outcome = wallet.pay(&origin, &bolt11, 0).await.unwrap();
        assert_eq!((outcome.amount_msat, outcome.fee_msat), (2_000, 0));
    }
}
