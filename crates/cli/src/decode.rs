//! `gate402 decode`: everything in a 402 exchange, taken apart.

use std::io::Read;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use gate402_bolt11::{Description, Invoice};
use gate402_http_auth::{parse_challenges, Challenge};
use gate402_l402::caveat::Caveat;
use gate402_l402::{Identifier, L402Credential, Macaroon, MacaroonFormat, Scheme};
use gate402_mpp::lightning::ChargeRequest;
use gate402_mpp::session::SESSION;
use gate402_mpp::{base64url, challenge as mpp_challenge, credential as mpp_credential};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Arguments of `gate402 decode`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,

    /// A WWW-Authenticate, Authorization or Payment-Receipt value (a
    /// leading header name is allowed), a macaroon (base64, or hex as gRPC
    /// sends it), or a BOLT11 invoice. `-` reads standard input.
    value: String,
}

/// Runs the subcommand.
pub fn run(args: &Args) -> ExitCode {
    let input = if args.value == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            errln!("gate402 decode: cannot read standard input: {e}");
            return ExitCode::from(crate::EXIT_MALFORMED);
        }
        text
    } else {
        args.value.clone()
    };
    match decode(&input, SystemTime::now()) {
        Ok(report) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                out!("{}", crate::report::to_text(&failures_inline(report)));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            errln!(
                "gate402 decode: {}",
                crate::output::terminal_safe(&one_line(&format!("{error:#}")))
            );
            ExitCode::from(crate::EXIT_MALFORMED)
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An inner layer that does not decode, in place of its value: the layers
/// around it still show, and what broke is said where it broke.
fn failed(error: impl std::fmt::Display) -> Value {
    json!({ "error": one_line(&error.to_string()) })
}

/// For text output: each failed layer on one line (`request: error: …`).
fn failures_inline(value: Value) -> Value {
    match value {
        Value::Object(map) => match map.get("error") {
            Some(Value::String(e)) if map.len() == 1 => Value::String(format!("error: {e}")),
            _ => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, failures_inline(v)))
                    .collect(),
            ),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(failures_inline).collect()),
        other => other,
    }
}

/// Which header a value came from, when the user pasted its name too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    WwwAuthenticate,
    Authorization,
    Receipt,
}

fn strip_header_name(input: &str) -> (Option<Header>, &str) {
    if let Some((name, rest)) = input.split_once(':') {
        let header = match name.trim().to_ascii_lowercase().as_str() {
            "www-authenticate" => Some(Header::WwwAuthenticate),
            "authorization" | "payment-authorization" => Some(Header::Authorization),
            "payment-receipt" => Some(Header::Receipt),
            _ => None,
        };
        if header.is_some() {
            return (header, rest.trim());
        }
    }
    (None, input)
}

/// Decodes any 402 value into one report.
pub fn decode(input: &str, now: SystemTime) -> Result<Value> {
    let input = input.trim();
    if input.is_empty() {
        bail!("nothing to decode");
    }
    if input.contains('\n') {
        return decode_lines(input, now);
    }
    let (header, value) = strip_header_name(input);
    match header {
        Some(Header::WwwAuthenticate) => decode_challenges(value, now),
        Some(Header::Authorization) => decode_authorization(value, now),
        Some(Header::Receipt) => decode_receipt(value),
        None => guess(value, now),
    }
}

/// Several lines: a whole response as `curl -i` prints it, or each a
/// `WWW-Authenticate` value (with or without the header name); their
/// challenges are read as one list.
fn decode_lines(input: &str, now: SystemTime) -> Result<Value> {
    if input.starts_with("HTTP/") {
        return decode_response(input, now);
    }
    let mut values = Vec::new();
    for line in input.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match strip_header_name(line) {
            (Some(Header::WwwAuthenticate) | None, value) => values.push(value),
            _ => bail!("several lines given, but not all are WWW-Authenticate values"),
        }
    }
    decode_challenges(&values.join(", "), now)
}

/// A response as `curl -i` prints it (its status line, its fields, a
/// blank line, its body; `-L` prints each response of a redirect so):
/// the `WWW-Authenticate` fields of its last head, or else (a paid answer)
/// its `Payment-Receipt`.
fn decode_response(input: &str, now: SystemTime) -> Result<Value> {
    let mut values = Vec::new();
    let mut receipt = None;
    let mut in_head = false;
    for line in input.lines().map(|l| l.trim_end_matches('\r')) {
        if !in_head {
            if line.starts_with("HTTP/") {
                values.clear();
                receipt = None;
                in_head = true;
            }
            continue;
        }
        if line.trim().is_empty() {
            in_head = false;
            continue;
        }
        match strip_header_name(line) {
            (Some(Header::WwwAuthenticate), value) => values.push(value),
            (Some(Header::Receipt), value) => receipt = Some(value),
            _ => {}
        }
    }
    match receipt {
        Some(receipt) if values.is_empty() => decode_receipt(receipt),
        _ if values.is_empty() => {
            bail!("the response has no WWW-Authenticate or Payment-Receipt field")
        }
        _ => decode_challenges(&values.join(", "), now),
    }
}

fn guess(value: &str, now: SystemTime) -> Result<Value> {
    let lower = value.to_ascii_lowercase();
    if (lower.starts_with("ln") || lower.starts_with("lightning:")) && !value.contains(' ') {
        let invoice = Invoice::parse(value).context("BOLT11 invoice")?;
        return Ok(with_kind("invoice", invoice_report(&invoice, now)));
    }
    if value.contains([' ', '\t']) {
        return if looks_like_credentials(value) {
            decode_authorization(value, now)
        } else {
            decode_challenges(value, now)
        };
    }
    decode_bare(value, now)
}

/// `L402 <mac>:<preimage>` and `Payment <token68>` are credentials; the
/// same schemes with auth-params are challenges.
fn looks_like_credentials(value: &str) -> bool {
    let scheme = value.split([' ', '\t']).next().unwrap_or("");
    let is_payment = scheme.eq_ignore_ascii_case(gate402_mpp::SCHEME);
    if Scheme::from_name(scheme).is_none() && !is_payment {
        return false;
    }
    match parse_challenges(value) {
        Ok(list) => list.len() == 1 && list[0].token68.is_some(),
        Err(_) => true,
    }
}

/// A value without a scheme: a receipt, a bare credential token, or a macaroon.
fn decode_bare(value: &str, now: SystemTime) -> Result<Value> {
    if let Ok(json) = base64url::decode_json_object(value) {
        if json.get("challenge").is_some() {
            return decode_authorization(&format!("{} {value}", gate402_mpp::SCHEME), now);
        }
        return Ok(json!({"kind": "receipt", "receipt": json}));
    }
    if let Ok(macaroon) = Macaroon::from_base64(value) {
        return Ok(with_kind("macaroon", macaroon_report(&macaroon)));
    }
    if let Ok(credential) = L402Credential::from_grpc_metadata(value) {
        return Ok(l402_credential_report(&credential, "grpc-metadata"));
    }
    if let Some(macaroon) = hex::decode(value)
        .ok()
        .and_then(|b| Macaroon::from_bytes(&b).ok())
    {
        return Ok(with_kind("macaroon", macaroon_report(&macaroon)));
    }
    // Name the most likely culprit.
    if let Err(e) = Macaroon::from_base64(value) {
        if value.starts_with("Ag") || value.starts_with("MDA") {
            return Err(anyhow!(e).context("macaroon"));
        }
    }
    if value.starts_with("ey") {
        let e = base64url::decode_json_object(value).unwrap_err();
        return Err(anyhow!(e).context("receipt"));
    }
    bail!(
        "not a WWW-Authenticate, Authorization or Payment-Receipt value, a macaroon or a BOLT11 invoice"
    )
}

fn with_kind(kind: &str, report: Value) -> Value {
    let mut map = Map::new();
    map.insert("kind".into(), kind.into());
    if let Value::Object(fields) = report {
        map.extend(fields);
    }
    Value::Object(map)
}

/// A challenge list that tokenizes is shown whole: each challenge with its
/// parameters, and each inner layer that does not decode as an error in
/// its place (vectors and real servers send placeholder requests).
fn decode_challenges(value: &str, now: SystemTime) -> Result<Value> {
    let list = parse_challenges(value).context("WWW-Authenticate")?;
    let challenges: Vec<Value> = list.iter().map(|c| challenge_report(c, now)).collect();
    Ok(json!({"kind": "www-authenticate", "challenges": challenges}))
}

fn params(c: &Challenge) -> Value {
    let mut map = Map::new();
    for (name, value) in c.params.iter() {
        map.entry(name.to_ascii_lowercase())
            .or_insert_with(|| value.into());
    }
    Value::Object(map)
}

fn challenge_report(c: &Challenge, now: SystemTime) -> Value {
    let mut report = Map::new();
    report.insert("scheme".into(), c.scheme.clone().into());
    if let Some(token) = &c.token68 {
        report.insert("token68".into(), token.clone().into());
    }
    if !c.params.is_empty() {
        report.insert("params".into(), params(c));
    }
    if Scheme::from_name(&c.scheme).is_some() {
        l402_challenge(c, now, &mut report);
    } else if c.is_scheme(gate402_mpp::SCHEME) {
        payment_challenge(c, now, &mut report);
    }
    Value::Object(report)
}

/// The macaroon and the invoice of an L402 challenge, each on its own.
fn l402_challenge(c: &Challenge, now: SystemTime, report: &mut Map<String, Value>) {
    let macaroon = match c.param("macaroon").or_else(|| c.param("token")) {
        None => Err(anyhow!("no macaroon (or token) parameter")),
        Some(text) => Macaroon::from_base64(text).map_err(anyhow::Error::from),
    };
    let invoice = match c.param("invoice") {
        None => Err(anyhow!("no invoice parameter")),
        Some(text) => Invoice::parse(text).map_err(anyhow::Error::from),
    };
    report.insert(
        "macaroon".into(),
        macaroon.as_ref().map_or_else(failed, macaroon_report),
    );
    report.insert(
        "invoice".into(),
        invoice
            .as_ref()
            .map_or_else(failed, |i| invoice_report(i, now)),
    );
    if let (Ok(macaroon), Ok(invoice)) = (&macaroon, &invoice) {
        let matches = Identifier::from_bytes(macaroon.identifier())
            .map(|id| id.payment_hash == invoice.payment_hash())
            .unwrap_or(false);
        report.insert("invoice_matches_macaroon".into(), matches.into());
    }
}

/// A `Payment` challenge, layer by layer: the challenge itself, its
/// request JSON, the method's details, the invoice.
fn payment_challenge(c: &Challenge, now: SystemTime, report: &mut Map<String, Value>) {
    let payment = match mpp_challenge::from_challenge(c) {
        Ok(payment) => payment,
        Err(e) => {
            report.insert("error".into(), e.to_string().into());
            return;
        }
    };
    let request = mpp_challenge::decode_request(&payment);
    report.insert(
        "request".into(),
        request
            .clone()
            .unwrap_or_else(|e| failed(request_error(&e))),
    );
    if let Some(opaque) = &payment.opaque {
        let opaque = base64url::decode_json_object(opaque.raw());
        report.insert("opaque".into(), opaque.unwrap_or_else(failed));
    }
    if let Some(expires) = &payment.expires {
        let expired = match gate402_mpp::parse_time(expires) {
            Some(at) => (SystemTime::from(at) <= now).into(),
            None => failed(format!("expires {expires:?} is not an RFC 3339 time")),
        };
        report.insert("expired".into(), expired);
    }
    if let Ok(request) = request {
        method_details(
            payment.method.as_str(),
            payment.intent.as_str(),
            &request,
            now,
            report,
        );
    }
}

/// Why a `request` is not a JSON object, said by what it is instead.
fn request_error(e: &base64url::JsonError) -> String {
    match e {
        base64url::JsonError::Base64(e) => format!("not base64url: {e}"),
        base64url::JsonError::Json(e) => format!("not JSON: {e}"),
        base64url::JsonError::NotAnObject => "JSON, but not an object".into(),
    }
}

/// The `request` of a Lightning session (draft-lightning-session-00):
/// only what locates and backs its deposit invoice, so that a request
/// lacking the rest (which [`gate402_mpp::session::SessionRequest`]
/// requires) still shows its invoice.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionRequest {
    deposit_invoice: String,
    payment_hash: String,
}

/// The method details of a Lightning request (charge or session) and the
/// invoice inside them, each reported in place when it does not decode.
/// Returns the payment hash the request names, for checking a preimage.
fn method_details(
    method: &str,
    intent: &str,
    request: &Value,
    now: SystemTime,
    report: &mut Map<String, Value>,
) -> Option<[u8; 32]> {
    if method != gate402_mpp::lightning::METHOD {
        return None;
    }
    match intent {
        gate402_mpp::lightning::CHARGE => {
            let charge = match serde_json::from_value::<ChargeRequest>(request.clone()) {
                Ok(charge) => charge,
                Err(e) => {
                    report.insert(
                        "method_details".into(),
                        failed(format!("not a Lightning charge request: {e}")),
                    );
                    return None;
                }
            };
            match Invoice::parse(&charge.method_details.invoice) {
                Ok(invoice) => {
                    report.insert("invoice".into(), invoice_report(&invoice, now));
                    let agrees = match charge.check_invoice() {
                        Ok(_) => Value::Bool(true),
                        Err(e) => Value::String(e.to_string()),
                    };
                    report.insert("invoice_matches_request".into(), agrees);
                }
                Err(e) => {
                    report.insert("invoice".into(), failed(e));
                }
            }
            charge.payment_hash()
        }
        SESSION => {
            let session = match serde_json::from_value::<SessionRequest>(request.clone()) {
                Ok(session) => session,
                Err(e) => {
                    report.insert(
                        "method_details".into(),
                        failed(format!("not a Lightning session request: {e}")),
                    );
                    return None;
                }
            };
            let mut hash = [0u8; 32];
            let hash = hex::decode_to_slice(&session.payment_hash, &mut hash)
                .ok()
                .map(|()| hash);
            match Invoice::parse(&session.deposit_invoice) {
                Ok(invoice) => {
                    report.insert("invoice".into(), invoice_report(&invoice, now));
                    let agrees = if hash == Some(invoice.payment_hash()) {
                        Value::Bool(true)
                    } else {
                        "the deposit invoice's payment hash is not the request's paymentHash".into()
                    };
                    report.insert("invoice_matches_request".into(), agrees);
                }
                Err(e) => {
                    report.insert("invoice".into(), failed(e));
                }
            }
            hash
        }
        // Other intents have shapes of their own; the request shows as is.
        _ => None,
    }
}

fn decode_authorization(value: &str, now: SystemTime) -> Result<Value> {
    let scheme = value.split([' ', '\t']).next().unwrap_or("");
    if Scheme::from_name(scheme).is_some() {
        let credential = L402Credential::from_authorization(value)?;
        return Ok(l402_credential_report(&credential, "authorization"));
    }
    if scheme.eq_ignore_ascii_case(gate402_mpp::SCHEME) {
        let credential = mpp_credential::parse_authorization(value)?;
        let mut report = Map::new();
        report.insert("kind".into(), "authorization".into());
        report.insert("scheme".into(), gate402_mpp::SCHEME.into());
        report.insert("credential".into(), serde_json::to_value(&credential)?);
        let echoed = &credential.challenge;
        let request = match base64url::decode_json_object(echoed.request.raw()) {
            Ok(request) => request,
            Err(e) => {
                report.insert("request".into(), failed(request_error(&e)));
                return Ok(Value::Object(report));
            }
        };
        report.insert("request".into(), request.clone());
        let hash = method_details(
            echoed.method.as_str(),
            echoed.intent.as_str(),
            &request,
            now,
            &mut report,
        );
        let preimage = credential.payload.get("preimage").and_then(Value::as_str);
        if let (Some(hash), Some(preimage)) = (hash, preimage) {
            let matches = hex::decode(preimage)
                .map(|p| <[u8; 32]>::from(Sha256::digest(p)) == hash)
                .unwrap_or(false);
            report.insert("preimage_matches_payment_hash".into(), matches.into());
        }
        return Ok(Value::Object(report));
    }
    bail!("Authorization scheme {scheme:?} is not L402, LSAT or Payment")
}

fn l402_credential_report(credential: &L402Credential, form: &str) -> Value {
    let hash: [u8; 32] = Sha256::digest(credential.preimage).into();
    let matches = credential
        .identifier()
        .map(|id| id.payment_hash == hash)
        .unwrap_or(false);
    json!({
        "kind": "authorization",
        "scheme": credential.scheme.as_str(),
        "form": form,
        "macaroons": credential.macaroons.iter().map(macaroon_report).collect::<Vec<_>>(),
        "preimage": hex::encode(credential.preimage),
        "preimage_sha256": hex::encode(hash),
        "preimage_matches_payment_hash": matches,
    })
}

fn decode_receipt(value: &str) -> Result<Value> {
    let receipt = gate402_mpp::receipt::decode_json(value).context("Payment-Receipt")?;
    Ok(json!({"kind": "receipt", "receipt": receipt}))
}

fn macaroon_report(macaroon: &Macaroon) -> Value {
    let identifier = match Identifier::from_bytes(macaroon.identifier()) {
        Ok(id) => json!({
            "version": id.version,
            "payment_hash": hex::encode(id.payment_hash),
            "token_id": hex::encode(id.token_id),
        }),
        Err(e) => json!({"hex": hex::encode(macaroon.identifier()), "error": e.to_string()}),
    };
    let caveats: Vec<Value> = macaroon
        .caveats()
        .iter()
        .map(|c| {
            let text = match std::str::from_utf8(&c.id) {
                Ok(text) if Caveat::parse(&c.id).is_some() => text.to_owned(),
                _ => format!("0x{}", hex::encode(&c.id)),
            };
            match &c.location {
                Some(location) if c.is_third_party() => {
                    json!({"third_party": text, "location": location})
                }
                _ if c.is_third_party() => json!({"third_party": text}),
                _ => text.into(),
            }
        })
        .collect();
    json!({
        "format": match macaroon.format() { MacaroonFormat::V1 => "v1", MacaroonFormat::V2 => "v2" },
        "location": macaroon.location(),
        "identifier": identifier,
        "caveats": caveats,
        "signature": hex::encode(macaroon.signature()),
    })
}

fn invoice_report(invoice: &Invoice, now: SystemTime) -> Value {
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut report = Map::new();
    report.insert("network".into(), invoice.network().as_str().into());
    report.insert("amount_msat".into(), invoice.amount_msat().into());
    report.insert(
        "payment_hash".into(),
        hex::encode(invoice.payment_hash()).into(),
    );
    match invoice.description() {
        Description::Text(text) => report.insert("description".into(), text.into()),
        Description::Hash(hash) => {
            report.insert("description_hash".into(), hex::encode(hash).into())
        }
    };
    report.insert("payee".into(), hex::encode(invoice.payee()).into());
    report.insert(
        "created_at".into(),
        crate::output::when(invoice.timestamp()).into(),
    );
    report.insert("expiry_secs".into(), invoice.expiry_secs().into());
    report.insert(
        "expires_at".into(),
        crate::output::when(invoice.expires_at()).into(),
    );
    report.insert("expired".into(), (invoice.expires_at() <= now_secs).into());
    Value::Object(report)
}
