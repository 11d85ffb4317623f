//! `/admin/api/tokens/{token}` and `/admin/api/sessions/{id}`: a payment's
//! credentials, revoked one at a time (not by rotating the secret for
//! everyone), and balances closed with their refund.
//!
//! A token is named by its payment hash (64 hex digits) or by the L402
//! macaroon itself (base64, or the whole `L402 <macaroon>:<preimage>`):
//! the macaroon's identifier holds the payment hash. Revoking a payment
//! refuses every credential naming it, through L402, MPP and x402, on
//! every replica (at once here, within `[admin] sync_secs` elsewhere).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gate402_paywall::{unix_now, SessionClose};
use gate402_store::{PaymentQuery, SessionRecord};
use serde_json::{json, Value};

use super::payment::{hash_of, payment_json};
use super::{problem, store_unavailable, AdminState, Segment, Who};

/// `GET /admin/api/tokens/{token}`: the payment, whether it is revoked,
/// and its balance if it opened one.
pub(super) async fn show(State(state): State<AdminState>, Segment(token): Segment) -> Response {
    let hash = match hash_of(&token) {
        Ok(hash) => hash,
        Err(message) => return problem(StatusCode::BAD_REQUEST, &message),
    };
    let query = PaymentQuery {
        since: 0,
        until: u64::MAX,
        payment_hash: Some(hash),
        limit: 1,
        ..PaymentQuery::default()
    };
    let (payment, session) = match (
        state.store().payments(&query).await,
        state.store().session(&hash).await,
    ) {
        (Ok(payment), Ok(session)) => (payment, session),
        (Err(e), _) | (_, Err(e)) => return store_unavailable(&e),
    };
    Json(json!({
        "payment_hash": hex::encode(hash),
        "revoked": state.paywall.is_revoked(&hash),
        "payment": payment.first().map(payment_json),
        "session": session.as_ref().map(session_json),
    }))
    .into_response()
}

/// `POST /admin/api/tokens/{token}/revoke`.
pub(super) async fn revoke(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(token): Segment,
) -> Response {
    let hash = match hash_of(&token) {
        Ok(hash) => hash,
        Err(message) => return problem(StatusCode::BAD_REQUEST, &message),
    };
    let newly = match state.store().revoke(&hash, unix_now(), &who.name).await {
        Ok(newly) => newly,
        Err(e) => return store_unavailable(&e),
    };
    state.paywall.revoke([hash]);
    let hex = hex::encode(hash);
    if newly {
        state.audit(&who, "token.revoke", &hex, json!({})).await;
    }
    Json(json!({ "payment_hash": hex, "revoked": true, "already": !newly })).into_response()
}

fn session_json(session: &SessionRecord) -> Value {
    json!({
        "id": hex::encode(session.id),
        "service": session.service,
        "deposit_msat": session.deposit_msat,
        "spent_msat": session.spent_msat,
        // Nothing is left to spend once closed: what was left then is
        // the refund's.
        "balance_msat": if session.closed.is_some() { 0 } else { session.balance_msat() },
        "has_return_invoice": session.return_invoice.is_some(),
        "idle_secs": session.idle_secs,
        "last_used_at": session.last_used_at,
        "closed": session.closed.as_ref().map(|c| json!({
            "at": c.at,
            "refund_msat": c.refund_msat,
            "refund_status": c.refund_status,
        })),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionsQuery {
    limit: Option<u64>,
}

/// `GET /admin/api/sessions?limit=`: the open balances (what the operator
/// owes until they are spent or refunded): how many, their sum, and the
/// `limit` (default 100) most recently used; and the refunds still owed
/// (`refunds_owed`: pending, or failed for the operator to pay by hand),
/// counted, summed, and the `limit` longest owed.
pub(super) async fn sessions(
    State(state): State<AdminState>,
    query: Result<axum::extract::Query<SessionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let axum::extract::Query(q) = match query {
        Ok(q) => q,
        Err(e) => return super::query_problem(&e),
    };
    let limit = match super::reports::limit(q.limit) {
        Ok(limit) => limit,
        Err(message) => return problem(StatusCode::BAD_REQUEST, &message),
    };
    let store = state.store();
    match tokio::try_join!(store.open_sessions(limit), store.refunds_owed(limit)) {
        Ok((open, owed)) => Json(json!({
            "open": open.count,
            "balance_msat": open.balance_msat,
            "sessions": open.sessions.iter().map(session_json).collect::<Vec<_>>(),
            "refunds_owed": {
                "count": owed.count,
                "refund_msat": owed.refund_msat,
                "sessions": owed.sessions.iter().map(session_json).collect::<Vec<_>>(),
            },
        }))
        .into_response(),
        Err(e) => store_unavailable(&e),
    }
}

fn session_id(id: &str) -> Option<[u8; 32]> {
    hex::decode(id).ok()?.try_into().ok()
}

fn bad_session_id(id: &str) -> Response {
    let detail = match super::payment::short_hex(id) {
        Some(short) => format!(
            "a session id is its deposit's payment hash, 64 hex digits, this is {short}: \
             the paying client prints it whole (`gate402 sessions list --json`)"
        ),
        None => "a session id is its deposit's payment hash: 64 hex digits".to_owned(),
    };
    problem(StatusCode::BAD_REQUEST, &detail)
}

/// `GET /admin/api/sessions/{id}`.
pub(super) async fn session(State(state): State<AdminState>, Segment(id): Segment) -> Response {
    let Some(id) = session_id(&id) else {
        return bad_session_id(&id);
    };
    match state.store().session(&id).await {
        Ok(Some(session)) => Json(session_json(&session)).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "no session has this id"),
        Err(e) => store_unavailable(&e),
    }
}

/// `POST /admin/api/sessions/{id}/close`: closes the balance now and
/// refunds what is left to its return invoice, once across replicas.
pub(super) async fn close_session(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(id): Segment,
) -> Response {
    let Some(id) = session_id(&id) else {
        return bad_session_id(&id);
    };
    match state.paywall.close_session(&id).await {
        Ok(None) => problem(StatusCode::NOT_FOUND, "no session has this id"),
        Ok(Some(SessionClose::AlreadyClosed(record))) => super::problem_with(
            StatusCode::CONFLICT,
            "this session was closed before; its refund was decided then",
            json!({ "session": session_json(&record) }),
        ),
        Ok(Some(SessionClose::Closed {
            refund_sats,
            status,
        })) => {
            let hex = hex::encode(id);
            state
                .audit(
                    &who,
                    "session.close",
                    &hex,
                    json!({ "refund_sats": refund_sats, "refund_status": status }),
                )
                .await;
            Json(json!({
                "closed": true,
                "id": hex,
                "refund_sats": refund_sats,
                "refund_status": status,
            }))
            .into_response()
        }
        Err(e) => store_unavailable(&e),
    }
}
