//! Problem-details responses (RFC 9457) as axum responses.

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::Value;

/// An `application/problem+json` response; `extra` fields are merged in.
pub fn problem_response(
    status: StatusCode,
    problem_type: &str,
    title: &str,
    detail: &str,
    extra: Option<Value>,
) -> Response<Body> {
    gate402_paywall::responses::problem(status, problem_type, title, detail, extra).map(Body::from)
}

/// What is wrong with a query string its endpoint cannot read, for a
/// `400`'s detail: serde's words (`duplicate field `path``), without
/// axum's opening ones.
pub(crate) fn query_unfit(rejection: &axum::extract::rejection::QueryRejection) -> String {
    let text = rejection.body_text();
    let said = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    format!("the query string does not fit: {said}")
}
