//! Problem-details responses.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

/// An `application/problem+json` response; `extra` fields are merged in.
pub fn problem_response(
    status: StatusCode,
    problem_type: &str,
    title: &str,
    detail: &str,
    extra: Option<Value>,
) -> Response<Body> {
    let mut body = json!({
        "type": problem_type,
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(Value::Object(extra)), Value::Object(map)) = (extra, &mut body) {
        map.extend(extra);
    }
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(gate402_mpp::problem::CONTENT_TYPE),
    );
    response
}
