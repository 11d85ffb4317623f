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
