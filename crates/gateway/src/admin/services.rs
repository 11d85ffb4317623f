//! `/admin/api/services`: the running services, and changes to them that
//! every replica applies (through the store, within `[admin] sync_secs`).
//!
//! A service is written as its `[[services]]` table in JSON, the config
//! file's keys; `${NAME}` stays unexpanded in the store and is expanded by
//! each replica, so secrets kept in the environment never reach the store.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use gate402_paywall::route::PathPattern;
use gate402_paywall::{unix_now, Auth};
use gate402_store::{ServiceChange, ServiceState};
use serde_json::{json, Map, Value};
use toml::Table;

use super::{problem, problem_with, store_unavailable, AdminState, Segment, Who};
use crate::config::ConfigErrors;
use crate::services::{ServiceView, Source};

/// What a header value shows as when it holds a literal (not `${NAME}`).
const REDACTED: &str = "<redacted>";

/// `GET /admin/api/services`: every running service with its counts over
/// the last 24 hours (all replicas), its `[[tools]]`' calls included.
pub(super) async fn list(State(state): State<AdminState>) -> Response {
    let now = unix_now();
    let since = now.saturating_sub(86_400);
    let (revenue, challenges) = match (
        state.store().revenue(since, now + 1, 86_400 * 2).await,
        state
            .store()
            .challenge_counts(since - since % 3600, now + 1)
            .await,
    ) {
        (Ok(revenue), Ok(challenges)) => (revenue, challenges),
        (Err(e), _) | (_, Err(e)) => return store_unavailable(&e),
    };
    let services: Vec<Value> = state
        .services
        .views()
        .iter()
        .map(|view| {
            let name = view.config.name();
            // With its MCP tools' calls, booked under names of their own.
            let tools = state.services.tools_booked_for(name);
            let counted = |service: &str| service == name || tools.iter().any(|t| t == service);
            let paid = revenue.iter().filter(|r| counted(&r.service));
            let (payments, msat, refunded_msat) = paid.fold((0, 0, 0), |(n, m, back), r| {
                (n + r.payments, m + r.amount_msat, back + r.refunded_msat)
            });
            let issued: u64 = challenges
                .iter()
                .filter(|c| counted(&c.service))
                .map(|c| c.count)
                .sum();
            let mut shown = describe(view);
            shown["last_24h"] = json!({
                "challenges": issued,
                "payments": payments,
                "revenue_sats": msat / 1000,
                "refunded_sats": refunded_msat / 1000,
                "net_sats": super::reports::net_msat(msat, refunded_msat) / 1000,
            });
            shown
        })
        .collect();
    Json(json!({ "services": services, "warnings": state.services.warnings() })).into_response()
}

/// `GET /admin/api/services/{name}`.
pub(super) async fn show(State(state): State<AdminState>, Segment(name): Segment) -> Response {
    match state.services.view(&name) {
        Some(view) => Json(describe(&view)).into_response(),
        None => no_such(&name),
    }
}

/// `PUT /admin/api/services/{name}`: creates the service, or replaces its
/// whole table.
pub(super) async fn put(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(name): Segment,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let table = match table_of(body, &name) {
        Ok(table) => table,
        Err((StatusCode::UNPROCESSABLE_ENTITY, detail)) => {
            return unfit(ConfigErrors(vec![detail]))
        }
        Err((status, detail)) => return problem(status, &detail),
    };
    let existing = state.services.view(&name);
    let existed = existing.is_some();
    // Replacing keeps a service where it is; a new one is the API's own.
    let created = existing.is_none_or(|view| view.source == Source::Admin);
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let action = if existed {
        "service.replace"
    } else {
        "service.create"
    };
    let to = Change {
        state: ServiceState::Active,
        table: Some(table),
        created,
    };
    change(&state, &who, &name, to, action, status).await
}

/// `PATCH /admin/api/services/{name}`: merges the keys sent into the
/// service's table (`{"price_sats": 12}`); `null` removes a key.
pub(super) async fn patch(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(name): Segment,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(view) = state.services.view(&name) else {
        return no_such(&name);
    };
    let Some(mut table) = view.table.clone() else {
        return problem(
            StatusCode::CONFLICT,
            &format!("the service {name:?} is made in code and has no table to change: PUT a whole table to replace it"),
        );
    };
    let keys = match body {
        Ok(Json(Value::Object(keys))) => keys,
        Ok(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object of the service's keys",
            )
        }
        Err(e) => return problem(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    if keys.contains_key("name") && keys["name"] != json!(name) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a service cannot be renamed: create the new name and delete this one",
        );
    }
    if let Err(detail) = merge_patch(&mut table, keys, &format!("services.{name}")) {
        return unfit(ConfigErrors(vec![detail]));
    }
    if let Err(detail) = no_redacted(&table, &name) {
        return unfit(ConfigErrors(vec![detail]));
    }
    let to = Change {
        state: view.state,
        table: Some(table),
        created: view.source == Source::Admin,
    };
    change(&state, &who, &name, to, "service.update", StatusCode::OK).await
}

/// Applies a JSON merge patch (RFC 7396) to a table: an object merges
/// into the table under its key, `null` removes a key, anything else
/// replaces it.
///
/// # Errors
///
/// A value TOML cannot hold, with its key path under `at`.
fn merge_patch(table: &mut Table, patch: Map<String, Value>, at: &str) -> Result<(), String> {
    for (key, value) in patch {
        let path = format!("{at}.{key}");
        match value {
            Value::Null => {
                table.remove(&key);
            }
            Value::Object(inner) => {
                let mut nested = match table.remove(&key) {
                    Some(toml::Value::Table(nested)) => nested,
                    _ => Table::new(),
                };
                merge_patch(&mut nested, inner, &path)?;
                table.insert(key, toml::Value::Table(nested));
            }
            other => {
                let value = toml::Value::try_from(&other).map_err(|_| toml_error(&path, &other))?;
                table.insert(key, value);
            }
        }
    }
    Ok(())
}

/// Why `value`, at `path`, is not a TOML value: a number too large for
/// it, or a `null` inside an array (TOML has no null).
fn toml_error(path: &str, value: &Value) -> String {
    fn why_not(value: &Value) -> Option<String> {
        match value {
            Value::Number(n)
                if n.as_i64().is_none() && n.as_f64().is_none_or(|f| f.fract() == 0.0) =>
            {
                Some(format!(
                    "{n} is more than TOML holds (integers up to 9223372036854775807)"
                ))
            }
            Value::Null => Some("null inside an array is not a TOML value".into()),
            Value::Array(items) => items.iter().find_map(why_not),
            Value::Object(fields) => fields.values().find_map(why_not),
            _ => None,
        }
    }
    let why = why_not(value).unwrap_or_else(|| "not a value TOML can hold".into());
    format!("{path}: {why}")
}

/// The `422` of a change that does not pass the config's checks, its
/// problems listed in `errors`.
fn unfit(errors: ConfigErrors) -> Response {
    problem_with(
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("the service does not pass the config's checks: {errors}"),
        json!({ "errors": errors.0 }),
    )
}

/// `POST /admin/api/services/{name}/disable`: the route stays, answering
/// 503, so that no broader route takes its requests.
pub(super) async fn disable(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(name): Segment,
) -> Response {
    switch(state, who, name, ServiceState::Disabled, "service.disable").await
}

/// `POST /admin/api/services/{name}/enable`.
pub(super) async fn enable(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(name): Segment,
) -> Response {
    switch(state, who, name, ServiceState::Active, "service.enable").await
}

/// `DELETE /admin/api/services/{name}`: gone, even when the config file
/// names it (until created again).
pub(super) async fn delete(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(name): Segment,
) -> Response {
    let Some(view) = state.services.view(&name) else {
        return no_such(&name);
    };
    let to = Change {
        state: ServiceState::Deleted,
        table: None,
        created: view.source == Source::Admin,
    };
    change(&state, &who, &name, to, "service.delete", StatusCode::OK).await
}

async fn switch(
    state: AdminState,
    who: Who,
    name: String,
    to: ServiceState,
    action: &str,
) -> Response {
    let Some(view) = state.services.view(&name) else {
        return no_such(&name);
    };
    // The table in force goes with the change, so that every replica
    // disables the same service, whatever its own config file says.
    let to = Change {
        state: to,
        created: view.source == Source::Admin,
        table: view.table,
    };
    change(&state, &who, &name, to, action, StatusCode::OK).await
}

/// `POST /admin/api/services/{name}/reset`: hands the service back to the
/// config file, dropping every change the admin API made to it (a
/// service the API created is then gone, unless the file names it).
pub(super) async fn reset(
    State(state): State<AdminState>,
    Extension(who): Extension<Who>,
    Segment(name): Segment,
) -> Response {
    if !state.services.changed(&name) {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("the admin API has made no change to a service named {name:?}"),
        );
    }
    let to = Change {
        state: ServiceState::Reset,
        table: None,
        created: false,
    };
    change(&state, &who, &name, to, "service.reset", StatusCode::OK).await
}

/// What a change makes of a service.
struct Change {
    state: ServiceState,
    table: Option<Table>,
    created: bool,
}

/// Checks a change against what runs, writes it to the store, applies it
/// here at once (the other replicas within their sync), logs it. The
/// answer is the service as it now runs, with what is risky about the
/// services after the change (`warnings`).
async fn change(
    state: &AdminState,
    who: &Who,
    name: &str,
    to: Change,
    action: &str,
    status: StatusCode,
) -> Response {
    if let Some(table) = &to.table {
        if let Err(detail) = references_allowed(table, &format!("services.{name}")) {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, &detail);
        }
    }
    let json_table = match &to.table {
        Some(table) => match serde_json::to_string(table) {
            Ok(json) => Some(json),
            Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        },
        None => None,
    };
    let change = ServiceChange {
        name: name.to_owned(),
        state: to.state,
        table: json_table,
        created: to.created,
        version: 0,
        at: unix_now(),
        by: who.name.clone(),
    };
    if let Err(errors) = state.services.check(&change) {
        return unfit(errors);
    }
    if let Err(e) = state.store().put_service_change(&change).await {
        return store_unavailable(&e);
    }
    if let Err(e) = super::sync::services(&state.services, state.store().as_ref()).await {
        tracing::error!(error = %e, "admin: a change was stored but not applied here yet");
    }
    state
        .audit(
            who,
            action,
            name,
            json!({ "state": to.state.as_str(), "table": to.table.as_ref().map(redacted) }),
        )
        .await;
    let mut shown = match state.services.view(name) {
        Some(view) => describe(&view),
        None => json!({ "name": name, "state": to.state.as_str() }),
    };
    shown["warnings"] = json!(state.services.warnings());
    (status, Json(shown)).into_response()
}

/// The keys of a table written through the API where `${NAME}` may name
/// an environment variable: where a secret belongs (the upstream, its
/// headers, the pricer). Elsewhere, in a description say, it would be
/// published in every 402.
fn references_allowed(table: &Table, at: &str) -> Result<(), String> {
    fn walk(value: &toml::Value, path: &str, allowed: bool) -> Result<(), String> {
        match value {
            toml::Value::String(text) if text.contains("${") && !allowed => Err(format!(
                "{path}: ${{NAME}} is expanded only in upstream, headers and pricer.url when written through the admin API"
            )),
            toml::Value::Table(table) => table
                .iter()
                .try_for_each(|(k, v)| walk(v, &format!("{path}.{k}"), allowed)),
            toml::Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, &format!("{path}[{i}]"), allowed)),
            _ => Ok(()),
        }
    }
    for (key, value) in table {
        let allowed = matches!(key.as_str(), "upstream" | "headers");
        if key == "pricer" {
            if let toml::Value::Table(pricer) = value {
                for (k, v) in pricer {
                    walk(v, &format!("{at}.pricer.{k}"), k == "url")?;
                }
                continue;
            }
        }
        walk(value, &format!("{at}.{key}"), allowed)?;
    }
    Ok(())
}

/// A service's table from a request body: a JSON object whose `name`, if
/// given, is the one in the path. Refused with a status and why.
fn table_of(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
    name: &str,
) -> Result<Table, (StatusCode, String)> {
    let mut object: Map<String, Value> = match body {
        Ok(Json(Value::Object(object))) => object,
        Ok(_) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object: the service's [[services]] table".into(),
            ))
        }
        Err(e) => return Err((StatusCode::BAD_REQUEST, e.body_text())),
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), json!(name));
        }
        Some(given) if given == &json!(name) => {}
        Some(given) => {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the table's name ({given}) is not {name:?}, the service this request names"
                ),
            ))
        }
    }
    let mut table = Table::new();
    let keys: Map<String, Value> = object
        .into_iter()
        .map(|(key, value)| {
            if value.is_null() {
                Err(format!(
                    "services.{name}.{key}: null is not a TOML value: leave the key out"
                ))
            } else {
                Ok((key, value))
            }
        })
        .collect::<Result<_, _>>()
        .map_err(|detail| (StatusCode::UNPROCESSABLE_ENTITY, detail))?;
    merge_patch(&mut table, keys, &format!("services.{name}"))
        .map_err(|detail| (StatusCode::UNPROCESSABLE_ENTITY, detail))?;
    no_redacted(&table, name).map_err(|detail| (StatusCode::UNPROCESSABLE_ENTITY, detail))?;
    Ok(table)
}

/// Refuses a table that still holds a redacted header value: it was read
/// back from this API, and writing it would replace the secret.
fn no_redacted(table: &Table, name: &str) -> Result<(), String> {
    let Some(toml::Value::Table(headers)) = table.get("headers") else {
        return Ok(());
    };
    match headers.iter().find(|(_, v)| v.as_str() == Some(REDACTED)) {
        Some((header, _)) => Err(format!(
            "services.{name}.headers.{header}: give the value (or ${{NAME}}) instead of {REDACTED:?}"
        )),
        None => Ok(()),
    }
}

fn no_such(name: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        &format!("no service is named {name:?}"),
    )
}

/// A table as shown: header values written literally are redacted (they
/// often hold the upstream's credentials); `${NAME}` references are shown.
fn redacted(table: &Table) -> Value {
    let mut shown = serde_json::to_value(table).unwrap_or(Value::Null);
    if let Some(Value::Object(headers)) = shown.get_mut("headers") {
        for value in headers.values_mut() {
            let reference = value
                .as_str()
                .is_some_and(|v| v.starts_with("${") && v.ends_with('}'));
            if !reference {
                *value = json!(REDACTED);
            }
        }
    }
    if let Some(Value::String(url)) = shown.pointer_mut("/pricer/url") {
        *url = without_secrets(url);
    }
    shown
}

/// A URL without its user info and query, where keys often hide.
fn without_secrets(url: &str) -> String {
    if url.starts_with("${") {
        return url.to_owned();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_owned();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or_default();
    let hidden = authority.contains('@') || url.contains('?');
    format!(
        "{scheme}://{host}{path}{}",
        if hidden {
            " (credentials redacted)"
        } else {
            ""
        }
    )
}

/// A running service as the API shows it.
pub(super) fn describe(view: &ServiceView) -> Value {
    let priced = &view.config.priced;
    let auth = match priced.auth {
        Auth::On => "on".to_owned(),
        Auth::Off => "off".to_owned(),
        Auth::Freebie(n) => format!("freebie:{n}"),
        Auth::Disabled => "disabled".to_owned(),
    };
    let path = match &priced.path {
        PathPattern::Exact(path) => path.clone(),
        PathPattern::Prefix(prefix) => format!("{prefix}*"),
    };
    let schemes: Vec<&str> = [
        (priced.schemes.l402, "l402"),
        (priced.schemes.mpp, "mpp"),
        (priced.schemes.x402, "x402"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    json!({
        "name": priced.name,
        "state": view.state.as_str(),
        "source": view.source,
        "path": path,
        "host": priced.host.as_ref().map(|h| h.as_written()),
        "methods": priced.methods.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "price_sats": priced.price_sats,
        "auth": auth,
        "schemes": schemes,
        "sells": priced.sells.as_str(),
        "description": priced.description,
        "upstream": view.config.upstream.as_ref().map(|u| u.url.clone()),
        "table": view.table.as_ref().map(redacted),
        "changed": view.change.as_ref().map(|c| json!({
            "at": c.at,
            "by": c.by,
            "version": c.version,
        })),
    })
}
