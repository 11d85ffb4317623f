//! `/admin/api/payments`, `/admin/api/revenue`, `/admin/api/log`: what was
//! paid, earned and changed, across every replica sharing the store.
//!
//! A payment is dated by the first request it served; revenue counts each
//! payment once (a deposit into a balance, a pass, a single request), in
//! satoshis and millisatoshis; refunds of balances count when their
//! session closes and its refund succeeded, and `net` is revenue less
//! refunds. Conversion is payments over 402s issued in
//! the same window and service: how many 402s led to a payment.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gate402_paywall::unix_now;
use gate402_store::PaymentQuery;
use serde::Deserialize;
use serde_json::{json, Value};

use super::payment::payment_json;
use super::{problem, store_unavailable, AdminState};

/// The most payments one search answers.
const MAX_LIMIT: u64 = 1000;

/// `since` and `until`, as [`gate402_paywall::time_bound`] reads them;
/// else what they take, for a `400`.
fn bounds(
    since: Option<String>,
    until: Option<String>,
    now: u64,
) -> Result<(Option<u64>, Option<u64>), String> {
    let bound = |name: &str, text: Option<String>| {
        text.map(|text| gate402_paywall::time_bound(&text, now))
            .transpose()
            .map_err(|e| format!("{name}={e}"))
    };
    Ok((bound("since", since)?, bound("until", until)?))
}

/// A `limit` parameter: 1 to [`MAX_LIMIT`], 100 when absent; else what it
/// takes, for a `400`.
pub(super) fn limit(limit: Option<u64>) -> Result<u64, String> {
    match limit.unwrap_or(100) {
        limit @ 1..=MAX_LIMIT => Ok(limit),
        _ => Err(format!("limit must be between 1 and {MAX_LIMIT}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PaymentsQuery {
    since: Option<String>,
    until: Option<String>,
    service: Option<String>,
    scheme: Option<String>,
    payment_hash: Option<String>,
    limit: Option<u64>,
}

/// `GET /admin/api/payments?since=&until=&service=&scheme=&payment_hash=&limit=`
/// (times as [`gate402_paywall::time_bound`] reads them: unix seconds, an
/// RFC 3339 time, or `24h` back from now; default the last 24 hours, 100
/// payments, newest first).
pub(super) async fn payments(
    State(state): State<AdminState>,
    query: Result<Query<PaymentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return super::query_problem(&e),
    };
    let now = unix_now();
    let payment_hash = match q.payment_hash.as_deref().map(super::payment::hash_of) {
        None => None,
        Some(Ok(hash)) => Some(hash),
        Some(Err(message)) => return problem(StatusCode::BAD_REQUEST, &message),
    };
    // As the client spells schemes too (`mpp`), in any case.
    let scheme = match q.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("l402" | "lsat") => Some("L402"),
        Some("payment" | "mpp") => Some("Payment"),
        Some("x402") => Some("x402"),
        Some("paymentid") => Some("paymentId"),
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "scheme={:?}: use L402, Payment (or mpp), x402 or paymentId",
                    q.scheme.unwrap_or_default()
                ),
            )
        }
    };
    let ((since, until), limit) =
        match bounds(q.since, q.until, now).and_then(|b| Ok((b, limit(q.limit)?))) {
            Ok(read) => read,
            Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
        };
    let query = PaymentQuery {
        // A payment hash finds its payment whenever it was.
        since: since.unwrap_or(if payment_hash.is_some() {
            0
        } else {
            now.saturating_sub(86_400)
        }),
        until: until.unwrap_or(u64::MAX),
        service: q.service,
        scheme: scheme.map(str::to_owned),
        payment_hash,
        // One more than asked for says whether the list was cut.
        limit: limit + 1,
    };
    if query.since >= query.until {
        return problem(StatusCode::BAD_REQUEST, "since must be before until");
    }
    match state.store().payments(&query).await {
        Ok(mut rows) => {
            let more = rows.len() as u64 > limit;
            rows.truncate(limit as usize);
            Json(json!({
                "payments": rows.iter().map(payment_json).collect::<Vec<_>>(),
                "more": more,
            }))
            .into_response()
        }
        Err(e) => store_unavailable(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevenueQuery {
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
}

/// Revenue less refunds (msat). Refunds are dated by their session's
/// close, so a bucket's may be negative.
pub(super) fn net_msat(revenue_msat: u64, refunded_msat: u64) -> i64 {
    let net = i128::from(revenue_msat) - i128::from(refunded_msat);
    net.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[derive(Default)]
struct Sums {
    payments: u64,
    amount_msat: u64,
    refunded_msat: u64,
    served: u64,
    challenges: u64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.payments += other.payments;
        self.amount_msat += other.amount_msat;
        self.refunded_msat += other.refunded_msat;
        self.served += other.served;
        self.challenges += other.challenges;
    }

    fn json(&self) -> Value {
        let net_msat = net_msat(self.amount_msat, self.refunded_msat);
        json!({
            "payments": self.payments,
            "revenue_sats": self.amount_msat / 1000,
            "revenue_msat": self.amount_msat,
            "refunded_sats": self.refunded_msat / 1000,
            "refunded_msat": self.refunded_msat,
            "net_sats": net_msat / 1000,
            "net_msat": net_msat,
            "served": self.served,
            "challenges": self.challenges,
            "conversion": (self.challenges > 0)
                .then(|| self.payments as f64 / self.challenges as f64),
        })
    }
}

/// The most buckets one revenue report holds.
const MAX_BUCKETS: u64 = 10_000;

/// `GET /admin/api/revenue?since=&until=&by=hour|day`: buckets per
/// service, totals per service and overall. Default: the last 24 hours by
/// hour (`by=day`: the last 30 days); a span of more than
/// [`MAX_BUCKETS`] hours with no `by` is reported by day, and one of
/// more than [`MAX_BUCKETS`] days in buckets of several days
/// (`bucket_secs` says how long a bucket is). Bounds are rounded out to
/// whole buckets.
pub(super) async fn revenue(
    State(state): State<AdminState>,
    query: Result<Query<RevenueQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return super::query_problem(&e),
    };
    let now = unix_now();
    let (since, until) = match bounds(q.since, q.until, now) {
        Ok(bounds) => bounds,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
    };
    let until = until.unwrap_or(now + 1);
    let width: u64 = match q.by.as_deref() {
        Some("hour") => 3600,
        Some("day") => 86_400,
        // Unasked: by hour, unless the span asked for holds more hours
        // than a report has buckets; then by day, or by as many days a
        // bucket as keep any span (`since=0`) within them.
        None => match since.map(|since| until.saturating_sub(since)) {
            Some(span) if span / 3600 > MAX_BUCKETS => {
                86_400 * (span / 86_400).div_ceil(MAX_BUCKETS).max(1)
            }
            _ => 3600,
        },
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("by={other:?}: use hour or day"),
            )
        }
    };
    let since = since
        .unwrap_or_else(|| until.saturating_sub(if width == 3600 { 86_400 } else { 30 * 86_400 }));
    if since >= until {
        return problem(StatusCode::BAD_REQUEST, "since must be before until");
    }
    if (until - since) / width > MAX_BUCKETS {
        let by = if width == 3600 { "hour" } else { "day" };
        return problem(
            StatusCode::BAD_REQUEST,
            &format!(
                "{} {by}s asked for, by {by}: at most {MAX_BUCKETS}; ask for a shorter span{}",
                (until - since) / width,
                if width == 3600 { " or by day" } else { "" }
            ),
        );
    }
    let (since, until) = (since / width * width, until.div_ceil(width) * width);
    let (paid, issued) = match (
        state.store().revenue(since, until, width).await,
        state.store().challenge_counts(since, until).await,
    ) {
        (Ok(paid), Ok(issued)) => (paid, issued),
        (Err(e), _) | (_, Err(e)) => return store_unavailable(&e),
    };
    let mut buckets: BTreeMap<(u64, String), Sums> = BTreeMap::new();
    for row in paid {
        let sums = buckets.entry((row.start, row.service)).or_default();
        sums.payments += row.payments;
        sums.amount_msat += row.amount_msat;
        sums.refunded_msat += row.refunded_msat;
        sums.served += row.served;
    }
    for count in issued {
        let start = count.hour / width * width;
        buckets
            .entry((start, count.service))
            .or_default()
            .challenges += count.count;
    }
    let mut services: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut total = Sums::default();
    for ((_, service), sums) in &buckets {
        services.entry(service.as_str()).or_default().add(sums);
        total.add(sums);
    }
    let with = |mut value: Value, key: &str, extra: Value| {
        value[key] = extra;
        value
    };
    Json(json!({
        "since": since,
        "until": until,
        "by": if width == 3600 { "hour" } else { "day" },
        "bucket_secs": width,
        "buckets": buckets
            .iter()
            .map(|((start, service), sums)| {
                with(with(sums.json(), "start", json!(start)), "service", json!(service))
            })
            .collect::<Vec<_>>(),
        "services": services
            .iter()
            .map(|(service, sums)| with(sums.json(), "service", json!(service)))
            .collect::<Vec<_>>(),
        "total": total.json(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    limit: Option<u64>,
}

/// `GET /admin/api/log?limit=`: the latest changes, newest first.
pub(super) async fn log(
    State(state): State<AdminState>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return super::query_problem(&e),
    };
    let limit = match limit(q.limit) {
        Ok(limit) => limit,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
    };
    match state.store().admin_log(limit).await {
        Ok(entries) => Json(json!({
            "entries": entries
                .iter()
                .map(|e| json!({
                    "at": e.at,
                    "who": e.who,
                    "action": e.action,
                    "target": e.target,
                    "detail": serde_json::from_str::<Value>(&e.detail).unwrap_or(Value::Null),
                }))
                .collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => store_unavailable(&e),
    }
}
