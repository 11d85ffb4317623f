//! The answers the paywall gives itself: RFC 9457 problem bodies for 400,
//! 401, 402, 429 and 503. Nothing internal (database text, node errors,
//! addresses) reaches a client body; that goes to the log.

use bytes::Bytes;
use gate402_l402::L402Challenge;
use gate402_mpp::problem::ProblemType;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::issued::Issued;
use crate::limits::Limited;
use crate::route::{PricedService, Sells};

/// Why a credential does not pay for a request: the status, the problem
/// type, and what went wrong in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 401 or 402.
    pub status: StatusCode,
    /// The problem type.
    pub problem: ProblemType,
    /// What went wrong.
    pub detail: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(status: StatusCode, problem: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            status,
            problem,
            detail: detail.into(),
        }
    }

    /// No credential was presented: the plain 402.
    pub fn payment_required(service: &PricedService) -> Self {
        Self::new(
            StatusCode::PAYMENT_REQUIRED,
            ProblemType::PaymentRequired,
            format!("{}: {}", service.description, service.asked()),
        )
    }
}

/// An `application/problem+json` response; `extra` fields (an object)
/// follow the standard ones.
pub fn problem(
    status: StatusCode,
    problem_type: &str,
    title: &str,
    detail: &str,
    extra: Option<Value>,
) -> Response<Bytes> {
    let extra = extra.filter(Value::is_object);
    problem_with(status, problem_type, title, detail, &extra)
}

/// An RFC 9457 body: the standard members, then those of `extra`.
#[derive(Serialize)]
struct ProblemBody<'a, E> {
    #[serde(rename = "type")]
    problem_type: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(flatten)]
    extra: E,
}

/// [`problem`] with typed `extra` members, serialized straight to the
/// body: a 402 is answered at the rate unpaid requests arrive, so its body
/// is not built as a `Value` first.
fn problem_with<E: Serialize>(
    status: StatusCode,
    problem_type: &str,
    title: &str,
    detail: &str,
    extra: E,
) -> Response<Bytes> {
    let body = ProblemBody {
        problem_type,
        title,
        status: status.as_u16(),
        detail,
        extra,
    };
    // Strings, numbers and maps with string keys: nothing that fails.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(gate402_mpp::problem::CONTENT_TYPE),
    );
    response
}

/// `400 Bad Request` for a request the paywall cannot read unambiguously.
pub fn bad_request(detail: &str) -> Response<Bytes> {
    problem(
        StatusCode::BAD_REQUEST,
        "about:blank",
        "Bad Request",
        detail,
        None,
    )
}

/// `405` for a method that echoes the request (`TRACE`): never forwarded.
/// `allowed` are the methods its path is served for (`Allow`, which a
/// `405` always carries: RFC 9110 §15.5.6).
pub fn method_not_allowed(method: &http::Method, allowed: &[http::Method]) -> Response<Bytes> {
    not_allowed(
        &format!("{method} echoes the request and is not forwarded"),
        allowed,
    )
}

/// `405` for a request whose path is served under other methods only,
/// `allowed` (RFC 9110 §15.5.6: named in `Allow`).
pub fn served_for(method: &http::Method, allowed: &[http::Method]) -> Response<Bytes> {
    not_allowed(
        &format!(
            "this path is served for {}, not for {method}",
            allow(allowed)
        ),
        allowed,
    )
}

/// A `405` problem saying `detail`, with `allowed` as its `Allow`.
fn not_allowed(detail: &str, allowed: &[http::Method]) -> Response<Bytes> {
    let mut response = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "about:blank",
        "Method Not Allowed",
        detail,
        None,
    );
    if let Ok(value) = http::HeaderValue::from_str(&allow(allowed)) {
        response.headers_mut().insert(http::header::ALLOW, value);
    }
    response
}

fn allow(allowed: &[http::Method]) -> String {
    allowed
        .iter()
        .map(http::Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A refusal answered without a fresh challenge (a malformed request
/// around the credential: no invoice would help).
pub fn refused(refusal: &Refusal) -> Response<Bytes> {
    problem(
        refusal.status,
        &refusal.problem.uri(),
        refusal.problem.title(),
        &refusal.detail,
        None,
    )
}

/// `500` `internal-payment-error` with `Retry-After`, for a credential that
/// could not be checked because the store is out of reach: nothing is
/// wrong with it, and as it was not spent it stays good for a retry.
pub fn payment_unavailable() -> Response<Bytes> {
    let mut response = refused(&Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ProblemType::InternalPaymentError,
        "the payment store is unavailable; the credential was not spent, retry it shortly",
    ));
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// `409 Conflict` with `Retry-After` for a single-use credential another
/// request holds: it is not spent, and a retry with it is served once
/// that request is answered (or released, if it was cut off: a claim left
/// by a replica that stopped is released when it starts again, or taken
/// over once its `lease` lapses). A `402` here would tell the client to
/// pay again for what it has paid.
pub fn in_flight(lease: std::time::Duration) -> Response<Bytes> {
    let mut response = problem(
        StatusCode::CONFLICT,
        "about:blank",
        "Conflict",
        &format!(
            "this credential is being used by another request; it is not spent: retry with it shortly (one held by a replica that stopped is released when that replica starts again, or after {} s)",
            lease.as_secs()
        ),
        None,
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `409 Conflict` with `Retry-After` for a request on a usage-metered
/// balance whose funds are held by requests in flight (each holds the
/// most it may use): what they do not use comes back, so this is not a
/// `402`, which would have the client pay again for what it has.
pub fn balance_held() -> Response<Bytes> {
    let mut response = problem(
        StatusCode::CONFLICT,
        "about:blank",
        "Conflict",
        "the balance is held by requests in flight; retry shortly (nothing was charged): what they do not use comes back to it",
        None,
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `503` with `Retry-After` while too many request bodies are being read
/// to check their payment: nothing was spent.
pub fn busy() -> Response<Bytes> {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "about:blank",
        "Service Unavailable",
        "too many request bodies are being checked against their payments; retry shortly (the credential was not spent)",
        None,
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `503` for a service the operator switched off: nothing was charged,
/// and no other route serves its requests meanwhile.
pub fn disabled(service: &str) -> Response<Bytes> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "about:blank",
        "Service Unavailable",
        &format!("the service {service:?} is disabled by its operator (nothing was charged)"),
        None,
    )
}

/// `413 Content Too Large`: a paid request's body is bound to its payment
/// and read whole, up to `limit` bytes.
pub fn payload_too_large(limit: usize) -> Response<Bytes> {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "about:blank",
        "Content Too Large",
        &format!(
            "the body of a request whose payment binds it is read whole: at most {limit} bytes"
        ),
        None,
    )
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds, at least 1).
pub fn too_many_requests(limited: &Limited) -> Response<Bytes> {
    let mut response = problem(
        StatusCode::TOO_MANY_REQUESTS,
        "about:blank",
        "Too Many Requests",
        &limited.detail,
        None,
    );
    let seconds = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `503 Service Unavailable` with `Retry-After`, and no invoice: while the
/// store or the node is down nothing could verify a payment for it.
pub fn unavailable(what: &str) -> Response<Bytes> {
    retry_later(&format!(
        "{what} is unavailable; retry shortly (nothing was charged)"
    ))
}

/// `503` with `Retry-After: 5` and `detail`: nothing was charged.
pub fn retry_later(detail: &str) -> Response<Bytes> {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "about:blank",
        "Service Unavailable",
        detail,
        None,
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// What a 402's body offers beside the standard problem members.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Offer<'a> {
    price: Price<'a>,
    description: &'a str,
    invoice: &'a str,
    payment_hash: &'a str,
    schemes: &'a [&'a str],
    how_to_pay: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge_id: Option<&'a str>,
    #[serde(flatten)]
    sale: crate::route::SaleTerms,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_money: Option<&'a str>,
}

/// A price: an amount in `currency`, as a decimal string.
#[derive(Serialize)]
struct Price<'a> {
    amount: &'a str,
    currency: &'a str,
}

/// A 402 (or 401, for a refused credential) carrying a fresh invoice and
/// its challenges. L402 first for the clients that read only the first
/// challenge, unless the client said with `Accept-Payment` that it speaks
/// MPP.
pub fn payment_required(
    issued: &Issued,
    service: &PricedService,
    refusal: &Refusal,
    mpp_first: bool,
    test_money: Option<&str>,
) -> Response<Bytes> {
    let l402_lines: Vec<String> = issued
        .l402
        .iter()
        .flat_map(L402Challenge::to_headers)
        .collect();
    let payment_line = issued
        .payment
        .as_ref()
        .and_then(|c| gate402_mpp::challenge::to_header(c).ok());
    let mut lines = Vec::new();
    if mpp_first {
        lines.extend(payment_line.iter().cloned());
        lines.extend(l402_lines);
    } else {
        lines.extend(l402_lines);
        lines.extend(payment_line.iter().cloned());
    }
    let schemes: Vec<&str> = [
        (issued.l402.is_some(), "L402"),
        (payment_line.is_some(), "MPP"),
        (issued.x402.is_some(), "x402"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let payment_hash = gate402_mpp::lightning::hex32(&issued.payment_hash);
    let price = service.price_sats.to_string();
    let offer = Offer {
        price: Price {
            amount: &price,
            currency: "sat",
        },
        description: &service.description,
        invoice: &issued.bolt11,
        payment_hash: &payment_hash,
        schemes: &schemes,
        how_to_pay: how_to_pay(
            service.sells == Sells::Balance,
            issued.l402.is_some(),
            payment_line.is_some(),
            issued.x402.is_some(),
        ),
        challenge_id: issued.payment.as_ref().map(|c| c.id.as_str()),
        sale: service.sale_terms(),
        test_money,
    };
    let mut response = problem_with(
        refusal.status,
        &refusal.problem.uri(),
        refusal.problem.title(),
        &refusal.detail,
        &offer,
    );
    let headers = response.headers_mut();
    for line in lines {
        if let Ok(value) = HeaderValue::from_str(&line) {
            headers.append(WWW_AUTHENTICATE, value);
        }
    }
    if let Some(offer) = &issued.x402 {
        if let Ok(value) = HeaderValue::from_str(&gate402_x402::encode(offer)) {
            headers.insert(gate402_x402::PAYMENT_REQUIRED, value);
        }
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `howToPay` of a 402: through the doors it offers (`l402`, `mpp`,
/// `x402`), for a balance's deposit or a request's price.
fn how_to_pay(balance: bool, l402: bool, mpp: bool, x402: bool) -> &'static str {
    match (balance, l402, mpp) {
        (false, false, false) if x402 => "Pay the Lightning invoice, then retry with an x402 payment in `PAYMENT-SIGNATURE` (the offer is in `PAYMENT-REQUIRED`).",
        (true, true, true) => "Pay the Lightning invoice (a deposit), then retry with `Authorization: L402 <macaroon>:<preimage>` (spends the balance per request) or an MPP session credential (`open` with a return invoice for the refund, then `bearer`, `topUp`, `close`).",
        (true, true, false) => "Pay the Lightning invoice (a deposit), then retry with `Authorization: L402 <macaroon>:<preimage>` (spends the balance per request; not refunded).",
        (true, false, _) => "Pay the Lightning invoice (a deposit), then retry with an MPP session credential (`open` with a return invoice for the refund, then `bearer`, `topUp`, `close`).",
        (false, true, true) => "Pay the Lightning invoice, then retry with `Authorization: L402 <macaroon>:<preimage>` or `Authorization: Payment <credential>` (the challenges are in WWW-Authenticate).",
        (false, true, false) => "Pay the Lightning invoice, then retry with `Authorization: L402 <macaroon>:<preimage>` (the challenge is in WWW-Authenticate).",
        (false, false, true) => "Pay the Lightning invoice, then retry with `Authorization: Payment <credential>` (the challenge is in WWW-Authenticate).",
        (false, false, false) => "Pay the Lightning invoice, then retry with `Authorization: L402 <macaroon>:<preimage>` or `Authorization: Payment <credential>` (the challenges are in WWW-Authenticate).",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate402_mpp::challenge::{ChallengeKey, NewChallenge};

    /// Each door named only where it is offered: an MPP-only balance's 402
    /// told its client to retry with L402.
    #[test]
    fn how_to_pay_names_only_the_doors_offered() {
        for balance in [true, false] {
            for (l402, mpp) in [(true, true), (true, false), (false, true)] {
                let said = how_to_pay(balance, l402, mpp, false);
                assert_eq!(said.contains("L402"), l402, "{said}");
                assert_eq!(
                    said.contains("MPP") || said.contains("Payment <"),
                    mpp,
                    "{said}"
                );
            }
        }
        let x402 = how_to_pay(false, false, false, true);
        assert!(x402.contains("x402") && !x402.contains("L402"), "{x402}");
    }

    fn issued(challenge: bool) -> Issued {
        let request = serde_json::json!({"amount": "3", "currency": "sat"});
        let payment = challenge.then(|| {
            ChallengeKey::new("a secret of thirty-two bytes or more, for tests")
                .unwrap()
                .issue(NewChallenge {
                    realm: "api.test",
                    method: "lightning",
                    intent: "charge",
                    request: &request,
                    expires: None,
                    digest: None,
                    description: None,
                    opaque: None,
                    header: None,
                })
        });
        Issued {
            bolt11: "lnbcrt30n1\"quoted\\".into(),
            payment_hash: [0xab; 32],
            expires_at: 0,
            l402: None,
            payment,
            x402: None,
        }
    }

    fn body(response: &Response<Bytes>) -> String {
        String::from_utf8(response.body().to_vec()).unwrap()
    }

    #[test]
    fn a_402_body_has_the_standard_members_then_the_offer_in_order() {
        let service = PricedService::new("weather", "/weather", 3).pass(60);
        let issued = issued(false);
        let refusal = Refusal::new(
            StatusCode::PAYMENT_REQUIRED,
            ProblemType::PaymentRequired,
            "pay",
        );
        let response = payment_required(&issued, &service, &refusal, false, Some("sandbox"));
        let hash = "ab".repeat(32);
        assert_eq!(
            body(&response),
            format!(
                "{{\"type\":\"{}\",\"title\":\"{}\",\"status\":402,\"detail\":\"pay\",\
                 \"price\":{{\"amount\":\"3\",\"currency\":\"sat\"}},\"description\":\"weather\",\
                 \"invoice\":\"lnbcrt30n1\\\"quoted\\\\\",\"paymentHash\":\"{hash}\",\"schemes\":[],\
                 \"howToPay\":\"Pay the Lightning invoice, then retry with `Authorization: L402 <macaroon>:<preimage>` \
                 or `Authorization: Payment <credential>` (the challenges are in WWW-Authenticate).\",\
                 \"sells\":\"pass\",\"passSeconds\":60,\"testMoney\":\"sandbox\"}}",
                ProblemType::PaymentRequired.uri(),
                ProblemType::PaymentRequired.title(),
            )
        );
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            gate402_mpp::problem::CONTENT_TYPE
        );
    }

    #[test]
    fn a_402_for_a_balance_names_its_deposit_and_the_session_door() {
        let service = PricedService::new("chat", "/chat", 2).balance(5);
        let issued = issued(true);
        let response = payment_required(
            &issued,
            &service,
            &Refusal::payment_required(&service),
            true,
            None,
        );
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        let id = issued.payment.as_ref().unwrap().id.clone();
        assert_eq!(body["challengeId"], id.as_str());
        assert_eq!(body["schemes"], serde_json::json!(["MPP"]));
        assert_eq!(body["sells"], "balance");
        assert_eq!(body["depositSats"], service.deposit_sats());
        assert_eq!(body["idleTimeoutSeconds"], service.session_idle_secs);
        assert_eq!(body["meter"], "request");
        assert!(body.get("maxUnits").is_none(), "{body}");
        assert!(body["howToPay"]
            .as_str()
            .unwrap()
            .contains("session credential"));
        for absent in ["passSeconds", "testMoney"] {
            assert!(body.get(absent).is_none(), "{absent} in {body}");
        }
        let members: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(&members[..4], ["type", "title", "status", "detail"]);
    }

    #[test]
    fn other_problems_merge_only_an_object_of_extra_members() {
        let plain = problem(
            StatusCode::BAD_REQUEST,
            "about:blank",
            "Bad Request",
            "no",
            None,
        );
        assert_eq!(
            body(&plain),
            r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"no"}"#
        );
        let extra = problem(
            StatusCode::BAD_REQUEST,
            "about:blank",
            "Bad Request",
            "no",
            Some(serde_json::json!({"field": "x"})),
        );
        assert_eq!(
            body(&extra),
            r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"no","field":"x"}"#
        );
        let not_an_object = problem(
            StatusCode::BAD_REQUEST,
            "about:blank",
            "Bad Request",
            "no",
            Some(Value::String("x".into())),
        );
        assert_eq!(body(&not_an_object), body(&plain));
    }
}
