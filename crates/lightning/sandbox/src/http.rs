//! `POST /sandbox/pay`: the sandbox payer over HTTP, and its client; and
//! `POST /sandbox/invoice`, which issues invoices without an amount (a
//! client's return invoice for a session's refund, in test money), with
//! `GET /sandbox/invoice/<payment hash>` to see what was paid to one.
//!
//! A gateway running on the sandbox mounts [`router`]; `gate402 sandbox pay`
//! and the sandbox wallet call it with [`pay_via`], and [`pay_amount_via`]
//! pays an invoice without an amount.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use gate402_lightning::{PayError, PaymentOutcome};
use serde::{Deserialize, Serialize};

use crate::Sandbox;

/// The endpoint's path.
pub const PATH: &str = "/sandbox/pay";

/// The request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PayRequest {
    /// A BOLT11 invoice this sandbox issued.
    pub invoice: String,
    /// Millisatoshis to pay an invoice that encodes no amount; absent for
    /// one that does (which is paid its own amount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_msat: Option<u64>,
    /// A secret of the payer's own (16 to 256 bytes): asking to pay an
    /// invoice it paid before answers its preimage again only with the same
    /// secret, so that a payer that lost the answer recovers it and nobody
    /// else who saw the invoice learns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// The answer: the preimage that proves payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayResponse {
    /// 64 lowercase hex digits.
    pub preimage: String,
    /// What the payment delivered: the invoice's amount, or the one the
    /// request gave.
    pub amount_msat: u64,
}

impl PayResponse {
    /// The outcome, with the preimage decoded.
    pub fn outcome(&self) -> Result<PaymentOutcome, PayError> {
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&self.preimage, &mut preimage)
            .map_err(|_| PayError::Rejected("the sandbox answered a bad preimage".into()))?;
        Ok(PaymentOutcome {
            preimage,
            fee_msat: 0,
            amount_msat: self.amount_msat,
        })
    }
}

/// The path that issues return invoices.
pub const INVOICE_PATH: &str = "/sandbox/invoice";

/// The body of `POST /sandbox/invoice` (all optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InvoiceRequest {
    /// The description; default "return invoice".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    /// Seconds until it expires; default one day, at most 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_secs: Option<u32>,
}

/// An issued invoice, or where one stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceResponse {
    /// The BOLT11 string (absent when asking for its status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// Its payment hash, 64 lowercase hex digits.
    pub payment_hash: String,
    /// `open`, `settled` or `canceled`.
    pub status: String,
    /// What was paid to it (msat), once settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_msat: Option<u64>,
}

/// The longest a return invoice may live: the draft asks for 30 days.
const MAX_EXPIRY_SECS: u32 = 30 * 24 * 3600;

/// The sandbox routes (`POST /sandbox/pay`, `POST /sandbox/invoice`,
/// `GET /sandbox/invoice/<payment hash>`), to merge into a gateway's
/// router.
pub fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route(PATH, post(pay))
        .route(INVOICE_PATH, post(issue))
        .route(
            &format!("{INVOICE_PATH}/{{hash}}"),
            axum::routing::get(status),
        )
        .with_state(sandbox)
}

/// Issues an invoice without an amount: test money flows back only to
/// invoices of this sandbox, so a client on the sandbox gets its return
/// invoice here. Only amountless ones: a priced invoice is the gateway's to
/// issue.
async fn issue(
    State(sandbox): State<Sandbox>,
    body: Result<Json<InvoiceRequest>, JsonRejection>,
) -> Response {
    use gate402_lightning::LightningBackend as _;
    let request = match body {
        Ok(Json(request)) => request,
        // No JSON body at all: every default.
        Err(JsonRejection::MissingJsonContentType(_)) => InvoiceRequest::default(),
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "body must be JSON {{\"memo\": \"…\", \"expiry_secs\": 1 to 2592000}}, both optional: {}",
                    rejection.body_text()
                ),
            )
        }
    };
    let expiry_secs = request.expiry_secs.unwrap_or(24 * 3600);
    if expiry_secs == 0 || expiry_secs > MAX_EXPIRY_SECS {
        return problem(
            StatusCode::BAD_REQUEST,
            "expiry_secs must be between 1 and 2592000 (30 days)",
        );
    }
    let memo = request.memo.unwrap_or_else(|| "return invoice".into());
    if memo.len() > 256 {
        return problem(StatusCode::BAD_REQUEST, "memo must be at most 256 bytes");
    }
    match sandbox
        .create_invoice(gate402_lightning::InvoiceRequest {
            amount_msat: 0,
            memo,
            expiry_secs,
        })
        .await
    {
        Ok(created) => Json(InvoiceResponse {
            invoice: Some(created.bolt11),
            payment_hash: hex::encode(created.payment_hash),
            status: "open".into(),
            amount_msat: None,
        })
        .into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn status(
    State(sandbox): State<Sandbox>,
    axum::extract::Path(hash): axum::extract::Path<String>,
) -> Response {
    use gate402_lightning::{InvoiceStatus, LightningBackend as _};
    let mut bytes = [0u8; 32];
    if hash.len() != 64 || hex::decode_to_slice(&hash, &mut bytes).is_err() {
        return problem(
            StatusCode::BAD_REQUEST,
            "the path ends with a payment hash: 64 hex digits",
        );
    }
    let (status, amount_msat) = match sandbox.invoice_status(&bytes).await {
        Ok(InvoiceStatus::Open) => ("open", None),
        Ok(InvoiceStatus::Settled { amount_msat, .. }) => ("settled", Some(amount_msat)),
        Ok(InvoiceStatus::Canceled) => ("canceled", None),
        Err(gate402_lightning::LightningError::NotFound(_)) => {
            return problem(
                StatusCode::NOT_FOUND,
                "this sandbox has no such invoice: it never issued it, or it expired unpaid more than a day ago",
            )
        }
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    Json(InvoiceResponse {
        invoice: None,
        payment_hash: hash.to_ascii_lowercase(),
        status: status.into(),
        amount_msat,
    })
    .into_response()
}

async fn pay(
    State(sandbox): State<Sandbox>,
    body: Result<Json<PayRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "body must be JSON {{\"invoice\": \"lnbcrt…\"}}, with \"amount_msat\" for an invoice without an amount: {}",
                    rejection.body_text()
                ),
            )
        }
    };
    if request
        .payer
        .as_ref()
        .is_some_and(|p| !(16..=256).contains(&p.len()))
    {
        return problem(StatusCode::BAD_REQUEST, "payer must be 16 to 256 bytes");
    }
    let settled = match sandbox.settle_for(
        &request.invoice,
        request.amount_msat,
        request.payer.as_deref(),
    ) {
        Ok(settled) => settled,
        Err(another) => return problem(StatusCode::CONFLICT, &another.to_string()),
    };
    match settled {
        Ok(outcome) => Json(PayResponse {
            preimage: hex::encode(outcome.preimage),
            amount_msat: outcome.amount_msat,
        })
        .into_response(),
        // Paying twice is answered with what the first payment got, to the
        // payer that made it, so that it can recover a lost answer.
        Err(PayError::AlreadyPaid(outcome)) => (
            StatusCode::CONFLICT,
            Json(PayResponse {
                preimage: hex::encode(outcome.preimage),
                amount_msat: outcome.amount_msat,
            }),
        )
            .into_response(),
        Err(error) => {
            let status = match &error {
                PayError::Rejected(_) => StatusCode::FORBIDDEN,
                PayError::InvoiceExpired(_) => StatusCode::GONE,
                PayError::Backend(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            problem(status, &error.to_string())
        }
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// Why the sandbox payer could not pay.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be connected to (TCP or TLS): the request
    /// never went out, so nothing was paid.
    #[error("cannot reach the sandbox payer at {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The gateway refused (its problem detail).
    #[error("sandbox payer refused ({status}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem detail.
        detail: String,
    },
    /// The invoice was paid before; this is what that payment got.
    #[error("the invoice was already paid (its preimage is {})", .0.preimage)]
    AlreadyPaid(PayResponse),
    /// The payer took the request and its answer was lost (cut off,
    /// timed out, or a success that cannot be read): whether it paid is
    /// not known, and must be asked again, never taken as a failure.
    #[error("the sandbox payer's answer at {url} was lost: {reason}")]
    Lost {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Asks the sandbox payer of the gateway at `base_url` to pay `invoice`
/// for its own amount.
///
/// # Errors
///
/// [`ClientError::AlreadyPaid`] with what the first payment got;
/// [`ClientError::Refused`] with the sandbox's reason (an invoice without
/// an amount among them); [`ClientError::Unreachable`];
/// [`ClientError::Lost`] when the answer did not arrive whole (it may have
/// paid).
pub async fn pay_via(
    client: &reqwest::Client,
    base_url: &str,
    invoice: &str,
) -> Result<PayResponse, ClientError> {
    post_pay(client, base_url, invoice, None, None).await
}

/// [`pay_via`] (or, with `amount_msat`, [`pay_amount_via`]) as the payer
/// whose secret is `payer`: paying again an invoice it paid answers
/// [`ClientError::AlreadyPaid`] with the first payment's preimage; one paid
/// by another payer is [`ClientError::Refused`] with status 409.
///
/// # Errors
///
/// As [`pay_via`].
pub async fn pay_as(
    client: &reqwest::Client,
    base_url: &str,
    invoice: &str,
    amount_msat: Option<u64>,
    payer: &str,
) -> Result<PayResponse, ClientError> {
    post_pay(client, base_url, invoice, amount_msat, Some(payer)).await
}

/// Asks the sandbox payer of the gateway at `base_url` to pay
/// `amount_msat` (millisatoshis) to `invoice`, which must encode no amount.
///
/// # Errors
///
/// As [`pay_via`]; an invoice that encodes an amount, or an amount of 0,
/// is [`ClientError::Refused`] with status 400.
pub async fn pay_amount_via(
    client: &reqwest::Client,
    base_url: &str,
    invoice: &str,
    amount_msat: u64,
) -> Result<PayResponse, ClientError> {
    post_pay(client, base_url, invoice, Some(amount_msat), None).await
}

async fn post_pay(
    client: &reqwest::Client,
    base_url: &str,
    invoice: &str,
    amount_msat: Option<u64>,
    payer: Option<&str>,
) -> Result<PayResponse, ClientError> {
    let url = format!("{}{PATH}", base_url.trim_end_matches('/'));
    let response = client
        .post(&url)
        .json(&PayRequest {
            invoice: invoice.to_owned(),
            amount_msat,
            payer: payer.map(str::to_owned),
        })
        .send()
        .await;
    let lost = |reason: String| ClientError::Lost {
        url: url.clone(),
        reason,
    };
    let response = response.map_err(|e| {
        // Not connected (TCP or TLS): the request never went out. Any
        // other failure may come after the payer took it.
        if e.is_connect() {
            ClientError::Unreachable {
                url: url.clone(),
                reason: gate402_lightning::with_causes(&e),
            }
        } else {
            lost(gate402_lightning::with_causes(&e))
        }
    })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| lost(e.to_string()))?;
    if status == reqwest::StatusCode::CONFLICT {
        if let Ok(paid) = serde_json::from_slice(&body) {
            return Err(ClientError::AlreadyPaid(paid));
        }
    }
    if !status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("detail")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(ClientError::Refused {
            status: status.as_u16(),
            detail,
        });
    }
    serde_json::from_slice(&body).map_err(|e| lost(format!("a success that cannot be read: {e}")))
}
