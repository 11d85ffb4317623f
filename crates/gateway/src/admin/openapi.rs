//! `GET /admin/api/openapi.json`: the admin API described in OpenAPI 3.1,
//! served without a credential (it holds no data).

use axum::Json;
use serde_json::{json, Value};

fn op(summary: &str, params: &[(&str, &str, &str)], body: Option<&str>) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|(name, place, description)| {
            json!({
                "name": name,
                "in": place,
                "required": *place == "path",
                "description": description,
                "schema": {"type": "string"},
            })
        })
        .collect();
    let mut op = json!({
        "summary": summary,
        "parameters": parameters,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {}}},
            "400": {"$ref": "#/components/responses/Problem"},
            "401": {"$ref": "#/components/responses/Problem"},
            "404": {"$ref": "#/components/responses/Problem"},
            "422": {"$ref": "#/components/responses/Problem"},
            "503": {"$ref": "#/components/responses/Problem"},
        },
    });
    if let Some(body) = body {
        op["requestBody"] = json!({
            "required": true,
            "description": body,
            "content": {"application/json": {"schema": {"type": "object"}}},
        });
    }
    op
}

/// `GET /admin/api/metrics`: text, not JSON.
fn metrics() -> Value {
    let mut op = op(
        "The Prometheus metrics (OpenMetrics text): 402s, payments, revenue, rejections, upstream, store and Lightning call times",
        &[],
        None,
    );
    op["responses"]["200"]["content"] =
        json!({ gate402_paywall::Metrics::CONTENT_TYPE: {"schema": {"type": "string"}} });
    op
}

/// The document.
pub(super) async fn document() -> Json<Value> {
    let name = [("name", "path", "the service's name")];
    let token = [(
        "token",
        "path",
        "a payment hash (64 hex digits) or an L402 macaroon (base64)",
    )];
    let session = [("id", "path", "the deposit's payment hash (64 hex digits)")];
    let table = "the service's [[services]] table as JSON: the config file's keys";
    Json(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "gate402 admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Services, payments, revenue, tokens, sessions and the Lightning node of a gate402 gateway. Every change applies to every replica sharing the store and is logged with the credential's name.",
        },
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": {
            "/admin/api/services": {"get": op("Every running service, with its 402s, payments and revenue of the last 24 hours", &[], None)},
            "/admin/api/services/{name}": {
                "get": op("One service", &name, None),
                "put": op("Create the service, or replace its whole table", &name, Some(table)),
                "patch": op("Change some keys of the service's table (null removes one)", &name, Some("the keys to change, e.g. {\"price_sats\": 12}")),
                "delete": op("Delete the service, even when the config file names it", &name, None),
            },
            "/admin/api/services/{name}/disable": {"post": op("Answer 503 on the service's route, charging nothing", &name, None)},
            "/admin/api/services/{name}/enable": {"post": op("Serve the service again", &name, None)},
            "/admin/api/services/{name}/reset": {"post": op("Hand the service back to the config file: the admin API's changes to it no longer apply", &name, None)},
            "/admin/api/payments": {"get": op("Payments, newest first; `more` is true when `limit` cut the list", &[
                ("since", "query", "unix seconds (default: 24 hours ago)"),
                ("until", "query", "unix seconds"),
                ("service", "query", "a service's name"),
                ("scheme", "query", "L402, Payment or x402"),
                ("payment_hash", "query", "64 hex digits"),
                ("limit", "query", "1 to 1000 (default 100)"),
            ], None)},
            "/admin/api/revenue": {"get": op("Payments, revenue, refunds, net, 402s and conversion per service and bucket", &[
                ("since", "query", "unix seconds"),
                ("until", "query", "unix seconds"),
                ("by", "query", "hour or day; unset: by hour, by day past 10,000 hours, by several days past 10,000 days (bucket_secs)"),
            ], None)},
            "/admin/api/tokens/{token}": {"get": op("A payment's record, revocation and balance", &token, None)},
            "/admin/api/tokens/{token}/revoke": {"post": op("Refuse every credential of this payment from now on", &token, None)},
            "/admin/api/sessions": {"get": op("The open prepaid balances: how many, their sum (what is owed until spent or refunded), the most recently used; and the refunds still owed (pending, or failed: to pay by hand), counted, summed, the longest owed", &[
                ("limit", "query", "1 to 1000 (default 100)"),
            ], None)},
            "/admin/api/sessions/{id}": {"get": op("A prepaid balance", &session, None)},
            "/admin/api/sessions/{id}/close": {"post": op("Close a balance and refund what is left to its return invoice", &session, None)},
            "/admin/api/node": {"get": op("The Lightning node: backend, funds, channels, inbound liquidity, recent invoices", &[], None)},
            "/admin/api/log": {"get": op("The latest admin changes, newest first", &[("limit", "query", "1 to 1000 (default 100)")], None)},
            "/admin/api/metrics": {"get": metrics()},
            "/admin/api/login-links": {"post": op("A dashboard login link usable for 120 seconds", &[], None)},
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the data dir's admin_secret (named local) or an [admin] credential"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": super::auth::COOKIE_NAME, "description": "the dashboard's, from a login link; changes also need the x-gate402-admin header"},
            },
            "responses": {
                "Problem": {"description": "RFC 9457 problem details", "content": {"application/problem+json": {}}},
            },
        },
    }))
}
