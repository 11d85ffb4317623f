//! Prices that depend on the request: rules matched in order (method, path
//! parameters, query parameters, JSON body fields, body size, with an
//! optional per-unit part), then an HTTP pricer, then the service's own
//! `price_sats`.
//!
//! The price decided for a request is the amount of its challenge (the
//! invoice, the L402 token's `<service>_amount` caveat, the MPP charge's
//! `amount`). A paid retry is priced again, and a credential whose invoice
//! asked less than that price is refused with a fresh challenge at the
//! right one: a credential bought for a cheap request never pays for a dear
//! one. Only a service that sells single requests ([`Sells::Request`]) is
//! priced per request; a pass or a balance keeps its `price_sats`.
//!
//! Pricing never fails a request with a 5xx: a pricer that is down, slow or
//! answers garbage gives way to its fallback price, with a warning in the
//! log and a `gate402_pricer_fallbacks` count.
//!
//! Nor does it guess: where a rule depends on a body field, a query
//! parameter or a count, and the request carries there something that
//! cannot be read one way only (a body that is not strict UTF-8 JSON, a
//! compressed body, a key given twice, a count that is not a plain whole
//! number, a query key that differs from the rule's only by case), the
//! request gets a 400 saying what to send instead, never the default
//! price: an upstream may read it as the dear value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gate402_l402::caveat::Caveat;
use gate402_l402::L402Credential;
use gate402_mpp::problem::ProblemType;
use gate402_mpp::verify::ChargeCredential;
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::responses::Refusal;
use crate::route::{
    decode_again, name_reads_as, reads_as, PathPattern, PricedService, RequestPath, Sells,
};

/// The most one invoice may ask, in satoshis: 1 BTC. `serve --check`
/// refuses a price, fallback or deposit above it; a request whose rules
/// price it above it gets a 400, and a pricer answer above it is garbage
/// (its fallback is asked).
pub const MAX_PRICE_SATS: u64 = 100_000_000;

/// The suffix of the caveat that carries the amount (sat) an L402 token's
/// invoice asked for: `<service>_amount=<sats>`, minted on every token
/// that buys one request (gate402's own; peers skip it), so that its
/// price is checked without asking the node.
pub const AMOUNT_SUFFIX: &str = "_amount";

/// The most pricer answers kept at once.
const CACHE_ENTRIES: usize = 10_000;

/// The largest pricer answer read, in bytes.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// An `expires` at least this large is a unix time; below it, seconds.
const UNIX_TIME_FROM: u64 = 1_000_000_000;

/// Request headers never sent to a pricer: credentials and cookies.
const PRIVATE_HEADERS: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "payment-authorization",
    "payment-signature",
    "x-payment",
    "cookie",
    "cookie2",
];

/// How a service's price is decided per request: its rules, in order, the
/// first that matches deciding; then its pricer, when it has one; then its
/// `price_sats`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pricing {
    /// Tried in order.
    pub rules: Vec<PriceRule>,
    /// Asked when no rule matches.
    pub pricer: Option<PricerConfig>,
}

/// One price rule: every condition given must hold (none given: it always
/// matches); its price is then `price_sats`, plus the [`PerUnit`] part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriceRule {
    /// The request's method is one of these (any when empty).
    pub methods: Vec<Method>,
    /// The request's path matches this pattern, which names the path
    /// parameters `params` looks at.
    pub path: Option<ParamPath>,
    /// Path parameters (named in `path`) with the values that match.
    pub params: Vec<ValueMatch>,
    /// Query parameters with the values that match.
    pub query: Vec<ValueMatch>,
    /// JSON body fields (RFC 6901 pointers, `/model`) with the values that
    /// match: a string field by its text, a number or boolean by its JSON
    /// form (`4`, `true`).
    pub body: Vec<ValueMatch>,
    /// The body has at least this many bytes.
    pub min_body_bytes: Option<u64>,
    /// The body has at most this many bytes.
    pub max_body_bytes: Option<u64>,
    /// The price (sat), or its fixed part with `per`.
    pub price_sats: u64,
    /// A part priced by a count the request carries.
    pub per: Option<PerUnit>,
}

/// A named value and the values it may have for a rule to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueMatch {
    /// The parameter name, or the JSON pointer.
    pub key: String,
    /// Any of these matches.
    pub values: Vec<String>,
}

/// `price_sats` per `every` units (rounded up) of a count the request
/// carries: with `every = 100` and `price_sats = 1`, a `max_tokens` of 250
/// costs 3 sat. A request that does not carry the count (or carries
/// something else than a whole number) does not match the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerUnit {
    /// Where the count is.
    pub source: UnitSource,
    /// Units per step (at least 1).
    pub every: u64,
    /// The price of a step, in satoshis.
    pub price_sats: u64,
}

/// Where a [`PerUnit`] count is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitSource {
    /// A JSON body field (an RFC 6901 pointer) holding a whole number.
    Body(String),
    /// A query parameter holding a whole number.
    Query(String),
    /// The body's size in bytes.
    BodyBytes,
}

/// Where an HTTP pricer is and how it is asked.
///
/// gate402 POSTs it `{service, method, path, query, headers, body_digest}`
/// (headers without credentials or cookies; `body_digest` the RFC 9530
/// `sha-256=:…:` of the body, as MPP binds it, or `null` for a body too
/// large to read) and reads `{"price": <sat>, "expires": <unix seconds, or
/// seconds from now>}` (`expires` optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricerConfig {
    /// The pricer's URL (`http://` or `https://`).
    pub url: String,
    /// How long an answer may take.
    pub timeout: Duration,
    /// The price (sat) used when the pricer fails, is slow or answers
    /// garbage.
    pub fallback_sats: u64,
    /// The longest an answer is kept, in seconds (0: never kept): until its
    /// `expires`, but never longer than this.
    pub cache_secs: u64,
}

/// A path pattern with named parameters: `/v1/images/{size}/*`; `{name}`
/// takes one whole segment, a last `*` any rest. Fixed segments compare
/// without regard to ASCII case, as routes do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamPath {
    segments: Vec<PathSegment>,
    rest: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Fixed(String),
    Param(String),
}

/// Why a pricing setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// A path pattern that is not one.
    #[error("{0:?} is not a path pattern (/fixed/{{name}}/*): {1}")]
    Path(String, &'static str),
}

impl ParamPath {
    /// Parses `/a/{name}/b` or `/a/{name}/*`.
    ///
    /// # Errors
    ///
    /// [`PricingError::Path`] for a pattern that does not start with `/`,
    /// a `*` that is not the whole last segment, a parameter named twice or
    /// not in letters, digits, `_` and `-`, or braces elsewhere.
    pub fn parse(text: &str) -> Result<Self, PricingError> {
        let bad = |why| PricingError::Path(text.to_owned(), why);
        let body = text
            .strip_prefix('/')
            .ok_or_else(|| bad("it must start with /"))?;
        let mut parts: Vec<&str> = body.split('/').collect();
        let rest = parts.last() == Some(&"*");
        if rest {
            parts.pop();
        }
        if parts.last() == Some(&"") {
            parts.pop();
        }
        let mut segments = Vec::new();
        for part in parts {
            if part.contains('*') {
                return Err(bad("* is allowed only as the whole last segment"));
            }
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => {
                    let valid = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if !valid {
                        return Err(bad("a parameter is named in letters, digits, _ or -"));
                    }
                    if segments
                        .iter()
                        .any(|s| matches!(s, PathSegment::Param(n) if n == name))
                    {
                        return Err(bad("a parameter is named twice"));
                    }
                    PathSegment::Param(name.to_owned())
                }
                None if part.contains(['{', '}']) => {
                    return Err(bad("a parameter takes a whole segment, as in /{name}"))
                }
                None if part == "." || part == ".." => {
                    return Err(bad(
                        "a dot segment (. or ..) is resolved before any rule sees the path: write the path it leads to",
                    ))
                }
                // In the normal form requests are matched in (`é` as
                // `%C3%A9`, `%78` as `x`): as written, it never matched.
                None => match RequestPath::parse(&format!("/{part}")) {
                    Ok(normal) if !normal.as_str()[1..].contains('/') => {
                        PathSegment::Fixed(normal.as_str()[1..].to_owned())
                    }
                    _ => return Err(bad("a segment no request path has")),
                },
            };
            segments.push(segment);
        }
        Ok(Self { segments, rest })
    }

    /// The names of its parameters.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            PathSegment::Param(name) => Some(name.as_str()),
            PathSegment::Fixed(_) => None,
        })
    }

    /// Whether some path that `service` routes matches this too: a rule
    /// for which none does never prices anything (its service's requests
    /// are the only ones its rules see).
    /// Both are in normal form, so they compare as written.
    pub fn may_match_under(&self, service: &PathPattern) -> bool {
        let stem = match service {
            PathPattern::Exact(exact) => return self.captures(exact).is_some(),
            PathPattern::Prefix(prefix) => prefix.trim_matches('/'),
        };
        let fixed: Vec<&str> = if stem.is_empty() {
            Vec::new()
        } else {
            stem.split('/').collect()
        };
        // Paths under the prefix have its segments first, then any.
        let long_enough = self.rest || self.segments.len() >= fixed.len();
        long_enough
            && self
                .segments
                .iter()
                .zip(&fixed)
                .all(|(segment, part)| match segment {
                    PathSegment::Fixed(name) => name.eq_ignore_ascii_case(part),
                    PathSegment::Param(_) => true,
                })
    }

    /// The parameters of `path` (normal form), when it matches.
    pub fn captures<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let parts: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        let fits = if self.rest {
            parts.len() >= self.segments.len()
        } else {
            parts.len() == self.segments.len()
        };
        if !fits {
            return None;
        }
        let mut captured = Vec::new();
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                PathSegment::Fixed(fixed) if fixed.eq_ignore_ascii_case(part) => {}
                PathSegment::Fixed(_) => return None,
                PathSegment::Param(name) if !part.is_empty() => {
                    captured.push((name.as_str(), *part))
                }
                PathSegment::Param(_) => return None,
            }
        }
        Some(captured)
    }
}

/// What the rules see of a request.
#[derive(Debug, Clone, Copy)]
pub struct PriceRequest<'a> {
    /// Its method.
    pub method: &'a Method,
    /// Its path, in normal form.
    pub path: &'a str,
    /// Its query, as sent.
    pub query: Option<&'a str>,
    /// Its body, when read (`None`: too large to read, so no body field
    /// matches).
    pub body: Option<&'a [u8]>,
    /// Its body's size in bytes (the declared one when too large to read).
    pub body_len: u64,
    /// Its `Content-Encoding`, when it names anything but `identity`: a
    /// body so encoded cannot be priced by its fields or its size.
    pub encoding: Option<&'a str>,
    /// Whether an upstream may read its body as a form, whatever JSON it
    /// also is: its `Content-Type` declares one (a form or any
    /// `multipart/*` type, read as PHP and Rack read it), or it has none
    /// (Rack reads a form then) and the body read as a form has a field a
    /// rule looks at.
    pub form: bool,
}

/// What a rule depends on that the request carries in a form that cannot
/// be read one way only; the words of its 400, saying what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(String);

/// The `Content-Encoding` of a request, when it names anything but
/// `identity` (its values joined as sent).
pub fn content_encoding(headers: &HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    let identity = values
        .iter()
        .flat_map(|v| v.split(','))
        .all(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity"));
    (!identity).then(|| values.join(", "))
}

/// A JSON value read strictly: an object that names a key twice is an
/// error (serde_json keeps the last value, some upstreams the first), as
/// is a number that is not finite. serde_json's own limits hold (UTF-8,
/// nesting at most 128 deep).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} is given twice in one object"
                )));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Whether `body` is JSON in which some object, at any depth, names a
/// member twice: serde_json keeps the last value, other readers the
/// first, so a message read two ways is refused rather than read one.
pub fn names_a_member_twice(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
        && serde_json::from_slice::<Strict>(body).is_err()
}

/// The JSON of a body a rule looks into: `None` when there is none (no
/// body read, or only whitespace).
fn strict_json(body: Option<&[u8]>, encoding: Option<&str>) -> Result<Option<Value>, Unreadable> {
    let Some(body) = body.filter(|b| !b.trim_ascii().is_empty()) else {
        return Ok(None);
    };
    let how = "the price depends on its fields: send it as UTF-8 JSON, uncompressed, without a byte order mark, each key once per object, numbers finite, nested at most 128 deep";
    if let Some(encoding) = encoding {
        return Err(Unreadable(format!(
            "the request body is sent with content-encoding {encoding:?}; {how}"
        )));
    }
    let why = if body.starts_with(b"\xEF\xBB\xBF") {
        "it starts with a byte order mark".to_owned()
    } else if body.starts_with(b"\xFE\xFF") || body.starts_with(b"\xFF\xFE") || body.contains(&0) {
        "it is not UTF-8 (UTF-16?)".to_owned()
    } else if let Err(e) = std::str::from_utf8(body) {
        format!("it is not UTF-8 ({e})")
    } else {
        match serde_json::from_slice::<Strict>(body) {
            Ok(Strict(value)) => return Ok(Some(value)),
            Err(e) => format!("it is not JSON gate402 can read ({e})"),
        }
    };
    Err(Unreadable(format!(
        "the request body cannot be read: {why}; {how}"
    )))
}

/// The keys a JSON pointer names, unescaped (`/a~1b/c` is `a/b`, `c`).
fn pointer_keys(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
}

/// Whether `tokens` (a JSON pointer's) reach a value in `value` once every
/// array on the way may stand for any of its items, nested arrays too.
fn through_arrays(value: &Value, tokens: &[String]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return true;
    };
    match value {
        Value::Object(fields) => fields
            .get(token.as_str())
            .is_some_and(|field| through_arrays(field, rest)),
        Value::Array(items) => {
            let by_index = token
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .is_some_and(|item| through_arrays(item, rest));
            by_index || items.iter().any(|item| through_arrays(item, tokens))
        }
        _ => false,
    }
}

/// The values `tokens` (a JSON pointer's) reach in `value` when an index
/// into an array stands for every item of it, into `out`.
fn at_every_item<'v>(value: &'v Value, tokens: &[String], out: &mut Vec<&'v Value>) {
    let Some((token, rest)) = tokens.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Value::Object(fields) => {
            if let Some(field) = fields.get(token.as_str()) {
                at_every_item(field, rest, out);
            }
        }
        Value::Array(items) if token.parse::<usize>().is_ok() => {
            items.iter().for_each(|item| at_every_item(item, rest, out));
        }
        _ => {}
    }
}

/// Refuses an object key on the way to `pointer` that reads as the
/// pointer's ([`name_reads_as`]): some upstreams match keys without regard
/// to case (Go's `encoding/json`), and would read `{"Model": …}` or
/// `{"modeſ": …}` as `/model`.
fn case_conflict(json: &Value, pointer: &str) -> Result<(), Unreadable> {
    let mut at = json;
    for token in pointer_keys(pointer) {
        let next = match at {
            Value::Object(object) => {
                if let Some(key) = object.keys().find(|k| name_reads_as(k, &token)) {
                    return Err(Unreadable(format!(
                        "the request body names {key:?}, which differs from {token:?} (at {pointer}) only by case, spaces, invisible characters or Unicode forms; the price depends on it: send it as {token:?}"
                    )));
                }
                object.get(&token)
            }
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// A count in a query parameter: ASCII digits only (a count too large for
/// 64 bits counts as the most there is, and so costs too much).
fn query_count(name: &str, value: &str) -> Result<u64, Unreadable> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Unreadable(format!(
            "query parameter {name:?} is {value:?}; the price depends on it: send a whole number in ASCII digits, without sign, spaces or fraction ({name}=100)"
        )));
    }
    Ok(value.parse().unwrap_or(u64::MAX))
}

/// A count in a JSON body field: a whole number of 0 or more, written
/// without fraction or exponent; `None` when the field is absent or null.
fn body_count(pointer: &str, value: Option<&Value>) -> Result<Option<u64>, Unreadable> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            Unreadable(format!(
                "the count at {pointer} in the request body is {value}; the price depends on it: send a whole number of 0 or more, without sign, fraction or exponent, not in quotes (100000)"
            ))
        }),
    }
}

/// A request's query parameters and JSON body, each parsed once.
struct Parsed<'a> {
    request: &'a PriceRequest<'a>,
    query: OnceLock<Vec<(String, String)>>,
    /// The query as an upstream decoding it before splitting it reads it;
    /// `None` when it has no encoded `&`, `=` or `;` (then it reads alike).
    decoded_first: OnceLock<Option<Vec<(String, String)>>>,
    json: OnceLock<Result<Option<Value>, Unreadable>>,
}

impl<'a> Parsed<'a> {
    fn new(request: &'a PriceRequest<'a>) -> Self {
        Self {
            request,
            query: OnceLock::new(),
            decoded_first: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    fn query_pairs(&self) -> &[(String, String)] {
        self.query.get_or_init(|| {
            form_urlencoded::parse(self.request.query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
    }

    /// The values of query parameter `name` as an upstream that decodes
    /// the whole query before splitting it (at `&` and `;`) reads them,
    /// when that differs from how it is split here: an encoded `&`, `=` or
    /// `;` is a delimiter there (`x%3D1%26tier%3Dgold` is `x=1&tier=gold`),
    /// and an encoded `#` ends it (`tier=gold%23x` is `tier=gold`).
    fn query_decoded_first(&self, name: &str) -> Option<Vec<&str>> {
        let pairs = self.decoded_first.get_or_init(|| {
            let raw = self.request.query.unwrap_or("");
            let encoded_delimiter = raw.as_bytes().windows(3).any(|w| {
                w[0] == b'%'
                    && matches!(
                        (w[1], w[2].to_ascii_lowercase()),
                        (b'2', b'6' | b'3') | (b'3', b'd' | b'b')
                    )
            });
            let decoded = decode_again(raw).filter(|_| encoded_delimiter)?;
            let decoded = decoded
                .split('#')
                .next()
                .unwrap_or_default()
                .replace(';', "&");
            Some(
                form_urlencoded::parse(decoded.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            )
        });
        let values: Vec<&str> = pairs
            .as_ref()?
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        let split_here = self
            .query_pairs()
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        (!values.iter().copied().eq(split_here)).then_some(values)
    }

    /// The one value of query parameter `name`; `None` when absent or
    /// given more than once (an upstream may read either, so none decides
    /// a price).
    fn query(&self, name: &str) -> Option<&str> {
        let mut values = self.query_pairs().iter().filter(|(k, _)| k == name);
        let (_, value) = values.next()?;
        values.next().is_none().then_some(value.as_str())
    }

    /// The field at `pointer` of the JSON body.
    fn field(&self, pointer: &str) -> Result<Option<&Value>, Unreadable> {
        if self.request.form {
            return Err(Unreadable(format!(
                "the request body is declared a form (or has no content-type and reads as a form with that field), and the price depends on its JSON field {pointer}: send it as application/json"
            )));
        }
        let json = self
            .json
            .get_or_init(|| strict_json(self.request.body, self.request.encoding));
        match json {
            Ok(Some(json)) => {
                case_conflict(json, pointer)?;
                let field = json.pointer(pointer);
                // Not there as written, but there once an array on the way
                // is read as its items: a batch (an upstream taking one
                // answers each item), or a list an upstream takes an item
                // of (`{"opts":[{"tier":"gold"}]}` for `/opts/tier`).
                let through = || through_arrays(json, &pointer_keys(pointer).collect::<Vec<_>>());
                if field.is_none() && through() {
                    return Err(Unreadable(if json.is_array() {
                        format!(
                            "the request body is a JSON array (a batch to upstreams that take one) whose items have the field {pointer}, and the price depends on it: send one item a request, as a JSON object"
                        )
                    } else {
                        format!(
                            "the request body has the field {pointer} only inside an array (a list an upstream may take an item of), and the price depends on it: send it at {pointer} itself"
                        )
                    }));
                }
                Ok(field)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e.clone()),
        }
    }

    /// The texts at `pointer` in every item of the arrays its index
    /// tokens pass through (`/a/0/b` in `{"a":[{"b":"y"},{"b":"x"}]}`
    /// reaches `y` and `x`); empty for a pointer without an index or a
    /// body that is not JSON. Call after [`Self::field`].
    fn in_every_item(&self, pointer: &str) -> Vec<Cow<'_, str>> {
        let tokens: Vec<String> = pointer_keys(pointer).collect();
        let mut texts = Vec::new();
        if tokens.iter().any(|t| t.parse::<usize>().is_ok()) {
            if let Some(Ok(Some(json))) = self.json.get() {
                let mut reached = Vec::new();
                at_every_item(json, &tokens, &mut reached);
                texts.extend(reached.into_iter().filter_map(field_text));
            }
        }
        texts
    }

    /// The body's size, for a rule that depends on it.
    fn body_len(&self) -> Result<u64, Unreadable> {
        match self.request.encoding {
            Some(encoding) if self.request.body_len > 0 => Err(Unreadable(format!(
                "the request body is sent with content-encoding {encoding:?}; the price depends on its size: send it uncompressed"
            ))),
            _ => Ok(self.request.body_len),
        }
    }

    /// Why the query cannot decide a price of `pricing`: a parameter a
    /// rule looks at given more than once (an upstream may read either),
    /// or given under a name that differs from the rule's only by case
    /// (an upstream may not tell them apart).
    fn query_conflict(&self, pricing: &Pricing) -> Option<Unreadable> {
        let raw = self.request.query.unwrap_or("");
        pricing.query_names().find_map(|name| {
            let pairs = self.query_pairs();
            // Some upstreams also split a query at `;` (`x=1;quality=hd`,
            // `quality=hd;x`): the parameter must read the same either way.
            if raw.contains(';') {
                let ampersands = raw.replace(';', "&");
                let split_at_semicolons = form_urlencoded::parse(ampersands.as_bytes())
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned());
                let split_at_ampersands = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone());
                if !split_at_semicolons.eq(split_at_ampersands) {
                    return Some(Unreadable(format!(
                        "the query has a raw ';', and the price depends on {name:?}: separate parameters with '&' and spell a ';' in a value as %3B"
                    )));
                }
            }
            if pairs.iter().filter(|(k, _)| k == name).count() > 1 {
                return Some(Unreadable(format!(
                    "query parameter {name:?} is given more than once; the price depends on it: give it once"
                )));
            }
            pairs
                .iter()
                .find(|(k, _)| name_reads_as(k, name))
                .map(|(k, _)| {
                    Unreadable(format!(
                        "query parameter {k:?} differs from {name:?}, which the price depends on, only by case, spaces, invisible characters or Unicode forms: send it as {name:?}"
                    ))
                })
        })
    }
}

/// A JSON field's value as a rule compares it: a string by its text,
/// numbers and booleans by their JSON form; objects, arrays and null by
/// nothing.
fn field_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(_) | Value::Bool(_) => Some(Cow::Owned(value.to_string())),
        _ => None,
    }
}

/// The texts of the scalars (strings, numbers, booleans) in `value`, at
/// any depth, into `out`.
fn scalars<'v>(value: &'v Value, out: &mut Vec<Cow<'v, str>>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| scalars(item, out)),
        Value::Object(fields) => fields.values().for_each(|field| scalars(field, out)),
        _ => out.extend(field_text(value)),
    }
}

/// The first of `readings` that is one of a rule's `values`, or may read
/// as one ([`one_of`]'s refusal).
fn rule_value<'r>(
    values: &[String],
    mut readings: impl Iterator<Item = &'r str>,
    what: &dyn Fn() -> String,
) -> Option<&'r str> {
    readings.find(|r| one_of(values, Some(r), what).unwrap_or(true))
}

/// Whether `value` is one of a rule's `values`: exactly, or not at all.
///
/// # Errors
///
/// [`Unreadable`] when it is none of them but an upstream may read it as
/// one ([`reads_as`]): `HD`, `hd `, `hd\0`, `%2568d` for `hd`. `what`
/// names where it was (`query parameter "quality"`).
fn one_of(
    values: &[String],
    value: Option<&str>,
    what: &dyn Fn() -> String,
) -> Result<bool, Unreadable> {
    let Some(value) = value else {
        return Ok(false);
    };
    if values.iter().any(|w| w == value) {
        return Ok(true);
    }
    // An upstream that reads booleans loosely (Pydantic, Spring, Rails)
    // reads `1`, `yes`, `on`, `t` or `y` as `true`.
    if let Some(w) = values.iter().find(|w| same_boolean(value, w)) {
        return Err(Unreadable(format!(
            "{} is {value:?}, which reads as {w} to upstreams that read booleans loosely; the price depends on it: send it as {w}",
            what()
        )));
    }
    // An upstream that compares numbers (JavaScript, Python, most JSON
    // frameworks) reads `5.0`, `5e0`, `05`, `+5` or `0x5` as `5`.
    if let Some(w) = values.iter().find(|w| same_number(value, w)) {
        return Err(Unreadable(format!(
            "{} is {value:?}, which reads as the number {w} to upstreams that compare numbers; the price depends on it: send it as {w:?}",
            what()
        )));
    }
    // An upstream that decodes a value once or twice more (`%2568d`,
    // IIS's `%u0068d`, a body's `%25u0068d`) reads another one.
    let variants: Vec<String> = std::iter::successors(Some(value.to_owned()), |v| decode_again(v))
        .take(3)
        .collect();
    // An upstream that parses a value as JSON (`"hd"`, `["hd"]`) or strips
    // its quotes (`'hd'`) reads what it holds.
    let unwrapped = variants
        .iter()
        .flat_map(|v| unwrapped(v))
        .collect::<Vec<_>>();
    if let Some(w) = values
        .iter()
        .find(|w| unwrapped.iter().any(|u| u == *w || reads_as(u, w)))
    {
        return Err(Unreadable(format!(
            "{} is {value:?}, which holds {w:?} to upstreams that parse it as JSON or strip its quotes; the price depends on it: send it as {w:?}",
            what()
        )));
    }
    let found = values
        .iter()
        .find(|w| variants.iter().any(|v| reads_as(v, w)));
    match found {
        Some(w) => Err(Unreadable(format!(
            "{} is {value:?}, which reads as {w:?} to some upstreams (case, spaces, control or invisible characters, Unicode forms, a second decoding); the price depends on it: send it as {w:?}",
            what()
        ))),
        None => Ok(false),
    }
}

/// What `value` holds to an upstream that parses it as JSON or strips its
/// quotes: the scalars of a JSON string, array or object, or the text
/// inside one pair of quotes; nothing for any other value.
fn unwrapped(value: &str) -> Vec<String> {
    let text = value.trim_matches(|c: char| c.is_ascii_whitespace());
    if !text.starts_with(['"', '\'', '[', '{']) {
        return Vec::new();
    }
    if let Ok(json) = serde_json::from_str::<Value>(text) {
        let mut held = Vec::new();
        scalars(&json, &mut held);
        return held.into_iter().map(Cow::into_owned).collect();
    }
    ['"', '\'']
        .iter()
        .find_map(|q| text.strip_prefix(*q)?.strip_suffix(*q))
        .map(|inner| vec![inner.to_owned()])
        .unwrap_or_default()
}

/// Whether `value` (not `wanted` itself) reads as the boolean `wanted`
/// (`true` or `false`) to an upstream that reads booleans loosely: any
/// case of Pydantic's and Spring's spellings (`1`, `yes`, `on`, `t`, `y`;
/// `0`, `no`, `off`, `f`, `n`), a number equal to 1 or 0.
fn same_boolean(value: &str, wanted: &str) -> bool {
    let spellings: &[&str] = match wanted {
        "true" => &["true", "1", "yes", "on", "t", "y"],
        "false" => &["false", "0", "no", "off", "f", "n"],
        _ => return false,
    };
    let text = value.trim_matches(|c: char| c.is_ascii_whitespace());
    let number = if wanted == "true" { 1.0 } else { 0.0 };
    spellings.iter().any(|s| text.eq_ignore_ascii_case(s))
        || text.parse::<f64>().is_ok_and(|n| n == number)
}

/// Whether `value` reads as the number `wanted` is (a rule's value that
/// is a finite number) in some upstream's reading: spaces around it, a
/// `+`, leading zeros, a fraction or exponent (`5.0`, `5e0`), `_` between
/// digits (Python), a `0x`, `0o` or `0b` prefix (JavaScript's `Number`).
fn same_number(value: &str, wanted: &str) -> bool {
    let Some(wanted) = wanted.parse::<f64>().ok().filter(|w| w.is_finite()) else {
        return false;
    };
    let text = value.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let radix = |prefix: &str, radix: u32| {
        let rest = digits
            .get(..2)
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| &digits[2..])?;
        u64::from_str_radix(rest, radix).ok().map(|n| n as f64)
    };
    let read = radix("0x", 16)
        .or_else(|| radix("0o", 8))
        .or_else(|| radix("0b", 2))
        .or_else(|| {
            // `_` only between digits, as Python takes it.
            let bytes = digits.as_bytes();
            let joined = bytes.iter().enumerate().all(|(i, b)| {
                *b != b'_'
                    || (i > 0
                        && i + 1 < bytes.len()
                        && bytes[i - 1].is_ascii_digit()
                        && bytes[i + 1].is_ascii_digit())
            });
            // Not `inf` or `nan`, which Rust reads too.
            let plain = digits.bytes().all(|b| {
                b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-' | b'_')
            });
            (joined && plain && !digits.is_empty())
                .then(|| digits.replace('_', "").parse::<f64>().ok())
                .flatten()
        });
    read.is_some_and(|n| (if negative { -n } else { n }) == wanted)
}

/// Refuses a value that is a list to upstreams that split a value at
/// commas, holding one of a rule's `values` (Spring binds `tier=gold,x`,
/// and a path variable `/t/gold,x`, to a list whose first item is
/// `gold`).
fn comma_list(
    values: &[String],
    value: Option<&str>,
    what: &dyn Fn() -> String,
) -> Result<(), Unreadable> {
    let Some(value) = value.filter(|v| v.contains(',') && !values.iter().any(|w| w == v)) else {
        return Ok(());
    };
    match rule_value(values, value.split(',').map(str::trim), what) {
        Some(item) => Err(Unreadable(format!(
            "{} is {value:?}, a list to upstreams that split at commas, holding {item:?}, a value the price depends on: send it alone",
            what()
        ))),
        None => Ok(()),
    }
}

/// Refuses a path parameter that reads as one of a rule's `values` with
/// a format after a dot (`large.json`): Rails routes (`/:size(.:format)`)
/// and others that take a format suffix read it as `large`; so do those
/// that fold Unicode first (`large．json`).
fn format_suffix(
    values: &[String],
    value: Option<&str>,
    what: &dyn Fn() -> String,
) -> Result<(), Unreadable> {
    let Some(value) = value else {
        return Ok(());
    };
    let readings = (!value.is_ascii()).then(|| crate::route::ascii_readings(value));
    for reading in std::iter::once(value).chain(readings.iter().flatten().map(String::as_str)) {
        let Some((stem, _)) = reading.split_once('.') else {
            continue;
        };
        if one_of(values, Some(stem), what).unwrap_or(true) {
            return Err(Unreadable(format!(
                "{} is {value:?}, which some upstreams read as {stem:?} and a format; the price depends on it: send it as {stem:?}",
                what()
            )));
        }
    }
    Ok(())
}

/// Refuses a path parameter that reads as one of a rule's `values` once
/// a `+` in it is read as a space (`large+`, `large%2B`), as upstreams
/// that decode a path as a form value do (PHP's `urldecode`, Python's
/// `unquote_plus`).
fn plus_as_space(
    values: &[String],
    value: Option<&str>,
    what: &dyn Fn() -> String,
) -> Result<(), Unreadable> {
    let Some(value) = value.filter(|v| v.contains('+')) else {
        return Ok(());
    };
    let spaced = value.replace('+', " ");
    match one_of(values, Some(&spaced), what) {
        Ok(false) => Ok(()),
        _ => Err(Unreadable(format!(
            "{} is {value:?}, which reads as {:?} to upstreams that decode '+' in a path as a space; the price depends on it: send it without '+'",
            what(),
            spaced.trim()
        ))),
    }
}

impl PriceRule {
    /// The price of `request` under this rule, if it matches; saturating,
    /// so it may be more than [`MAX_PRICE_SATS`].
    fn price(
        &self,
        request: &PriceRequest<'_>,
        parsed: &Parsed<'_>,
    ) -> Result<Option<u64>, Unreadable> {
        // As routes match methods: case ignored, HEAD with GET (an
        // upstream may run its GET handler for either).
        if !crate::route::method_matches(&self.methods, request.method) {
            return Ok(None);
        }
        if let Some(path) = &self.path {
            let Some(captured) = path.captures(request.path) else {
                // Nor when an upstream folding Unicode reads the path as
                // one this rule prices (`/v1/ｉmages/large`).
                let parsed = crate::route::RequestPath::parse(request.path).ok();
                let forms = parsed
                    .as_ref()
                    .and_then(|p| p.compatibility_forms().ok().flatten())
                    .unwrap_or_default();
                if let Some(form) = forms.iter().find(|f| path.captures(f.as_str()).is_some()) {
                    return Err(Unreadable(format!(
                        "the path reads as {form} to some upstreams (Unicode folded to ASCII), which a price rule depends on: send it as {form}"
                    )));
                }
                // Nor when one that takes a format after a dot in the last
                // segment (Rails' `(.:format)`) reads it, or a folded
                // reading of it (`/v1/large．json`), as such a path.
                if let Some(cut) = parsed
                    .iter()
                    .chain(&forms)
                    .filter_map(crate::route::RequestPath::format_stem)
                    .find(|cut| path.captures(cut).is_some())
                {
                    return Err(Unreadable(format!(
                        "the path reads as {cut} and a format to some upstreams, which a price rule depends on: send it as {cut}"
                    )));
                }
                return Ok(None);
            };
            // Captured from the normal form: compared as the upstream
            // decodes it (`caf%C3%A9` is `café`).
            let param = |name: &str| {
                captured
                    .iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, value)| crate::route::decode_normal(value))
            };
            for m in &self.params {
                // Routes match without regard to case: an upstream may too.
                let what = || format!("path parameter {{{}}}", m.key);
                let value = param(&m.key);
                if !one_of(&m.values, value.as_deref(), &what)? {
                    comma_list(&m.values, value.as_deref(), &what)?;
                    format_suffix(&m.values, value.as_deref(), &what)?;
                    plus_as_space(&m.values, value.as_deref(), &what)?;
                    return Ok(None);
                }
            }
        } else if !self.params.is_empty() {
            return Ok(None);
        }
        for m in &self.query {
            let what = || format!("query parameter {:?}", m.key);
            let value = parsed.query(&m.key);
            // What some upstream reads instead, refused when it is (or may
            // read as) a rule's value: a list, and the query as one that
            // decodes it before splitting it reads it.
            comma_list(&m.values, value, &what)?;
            if let Some(values) = parsed.query_decoded_first(&m.key) {
                if let Some(read) = rule_value(&m.values, values.into_iter(), &what) {
                    return Err(Unreadable(format!(
                        "the query has an encoded '&', '=', ';' or '#' (%26, %3D, %3B, %23), and an upstream that decodes it before splitting it reads {} as {read:?}, a value the price depends on: send it as a parameter of its own",
                        what()
                    )));
                }
            }
            if !one_of(&m.values, value, &what)? {
                return Ok(None);
            }
        }
        if self.min_body_bytes.is_some() || self.max_body_bytes.is_some() {
            let len = parsed.body_len()?;
            if self.min_body_bytes.is_some_and(|min| len < min)
                || self.max_body_bytes.is_some_and(|max| len > max)
            {
                return Ok(None);
            }
        }
        for m in &self.body {
            let field = parsed.field(&m.key)?;
            let what = || format!("body field {:?}", m.key);
            // An array or object holding a rule's value reads as it to some
            // upstream: loosely comparing code (`["gpt-4"] == "gpt-4"` in
            // JavaScript), one that takes a list's first or any item, or a
            // query language's operator (`{"$eq": "gpt-4"}`).
            if let Some(held_in @ (Value::Array(_) | Value::Object(_))) = field {
                let shape = if held_in.is_array() {
                    "an array"
                } else {
                    "an object"
                };
                let mut held = Vec::new();
                scalars(held_in, &mut held);
                let what = || format!("body field {:?}, {shape},", m.key);
                if let Some(item) = rule_value(&m.values, held.iter().map(|h| h.as_ref()), &what) {
                    return Err(Unreadable(format!(
                        "{} holds {item:?}, a value the price depends on: send it as {item:?} alone, not in {shape}",
                        what()
                    )));
                }
            }
            let text = field.and_then(field_text);
            if !one_of(&m.values, text.as_deref(), &what)? {
                // Another item holding a rule's value at the field's place
                // is what an upstream taking every item, or another one,
                // acts on.
                let others = parsed.in_every_item(&m.key);
                if let Some(item) = rule_value(&m.values, others.iter().map(|t| t.as_ref()), &what)
                {
                    return Err(Unreadable(format!(
                        "{} reads one item of an array, and another item holds {item:?} there, a value the price depends on (an upstream may act on every item, or another one): send one item, or the same value in each",
                        what()
                    )));
                }
                return Ok(None);
            }
        }
        let Some(per) = &self.per else {
            return Ok(Some(self.price_sats));
        };
        let units = match &per.source {
            UnitSource::Body(pointer) => body_count(pointer, parsed.field(pointer)?)?,
            UnitSource::Query(name) => parsed
                .query(name)
                .map(|value| query_count(name, value))
                .transpose()?,
            UnitSource::BodyBytes => Some(parsed.body_len()?),
        };
        let Some(units) = units else {
            return Ok(None);
        };
        let steps = units.div_ceil(per.every.max(1));
        Ok(Some(
            self.price_sats
                .saturating_add(steps.saturating_mul(per.price_sats)),
        ))
    }

    /// Whether it looks into the body (its JSON fields).
    fn reads_fields(&self) -> bool {
        !self.body.is_empty()
            || self
                .per
                .as_ref()
                .is_some_and(|p| matches!(p.source, UnitSource::Body(_)))
    }

    /// Whether it looks at the body.
    fn reads_body(&self) -> bool {
        !self.body.is_empty()
            || self.min_body_bytes.is_some()
            || self.max_body_bytes.is_some()
            || self
                .per
                .as_ref()
                .is_some_and(|p| !matches!(p.source, UnitSource::Query(_)))
    }
}

impl Pricing {
    /// The price (sat) of the first rule that matches `request`, if one
    /// does: at least 1, and more than [`MAX_PRICE_SATS`] when the request
    /// asks for that much (a caller refuses it).
    ///
    /// # Errors
    ///
    /// [`Unreadable`] when a rule tried depends on a body field, a query
    /// parameter or a count that the request carries in a form that cannot
    /// be read one way only.
    pub fn rule_price(&self, request: &PriceRequest<'_>) -> Result<Option<u64>, Unreadable> {
        self.decide(request, &Parsed::new(request))
    }

    fn decide(
        &self,
        request: &PriceRequest<'_>,
        parsed: &Parsed<'_>,
    ) -> Result<Option<u64>, Unreadable> {
        if let Some(conflict) = parsed.query_conflict(self) {
            return Err(conflict);
        }
        // Frameworks that merge the query into the body's parameters
        // (Rails' `params`, PHP's `$_REQUEST`) read a body field there.
        let pairs = parsed.query_pairs();
        if let Some((key, name)) = self.body_keys().find_map(|key| {
            pairs
                .iter()
                .find(|(name, _)| *name == key || name_reads_as(name, &key))
                .map(|(name, _)| (key, name.clone()))
        }) {
            return Err(Unreadable(format!(
                "query parameter {name:?} stands for the body field {key:?}, which the price depends on, to upstreams that merge query and body: send it in the body only"
            )));
        }
        // And the other way round: a body field that such frameworks read
        // as a query parameter a rule looks at.
        if let Some(body) = request.body.filter(|_| self.reads_query()) {
            let fields = crate::body::field_names(body);
            let stands_for = self.query_names().find_map(|name| {
                fields
                    .iter()
                    .find(|field| *field == name || name_reads_as(field, name))
                    .map(|field| (field, name))
            });
            if let Some((field, name)) = stands_for {
                return Err(Unreadable(format!(
                    "body field {field:?} stands for the query parameter {name:?}, which the price depends on, to upstreams that merge query and body: send it in the query only"
                )));
            }
        }
        for rule in &self.rules {
            if let Some(price) = rule.price(request, parsed)? {
                return Ok(Some(price.max(1)));
            }
        }
        Ok(None)
    }

    /// Whether deciding a price needs the request body: a rule looks at it,
    /// or the pricer is sent its digest.
    pub fn reads_body(&self) -> bool {
        self.pricer.is_some() || self.rules.iter().any(PriceRule::reads_body)
    }

    /// Whether a rule looks into the body's JSON fields: a body too large
    /// to read cannot be priced then.
    pub fn reads_fields(&self) -> bool {
        self.rules.iter().any(PriceRule::reads_fields)
    }

    /// Whether `body`, read as a form, has a field a rule looks at
    /// (`model=gpt-4` inside `{"note":"&model=gpt-4&"}`), spelled so or as
    /// PHP would read it ([`name_reads_as`]).
    pub(crate) fn form_names_a_field(&self, body: &[u8]) -> bool {
        form_urlencoded::parse(body).any(|(name, _)| {
            self.body_keys()
                .any(|key| name == key || name_reads_as(&name, &key))
        })
    }

    /// The top-level body fields the rules look at (`model` of
    /// `/model`), as JSON pointers spell them.
    fn body_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.rules.iter().flat_map(|rule| {
            rule.body
                .iter()
                .map(|m| m.key.as_str())
                .chain(rule.per.iter().filter_map(|p| match &p.source {
                    UnitSource::Body(pointer) => Some(pointer.as_str()),
                    _ => None,
                }))
                .filter_map(|pointer| pointer_keys(pointer).next())
        })
    }

    /// Whether a rule looks at the query: a request's body is then read
    /// for its field names, as some upstreams read those as query
    /// parameters.
    pub(crate) fn reads_query(&self) -> bool {
        self.query_names().next().is_some()
    }

    /// The methods the rules name.
    pub fn methods(&self) -> impl Iterator<Item = &Method> {
        self.rules.iter().flat_map(|rule| rule.methods.iter())
    }

    /// The query parameters the rules look at.
    fn query_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().flat_map(|rule| {
            rule.query
                .iter()
                .map(|m| m.key.as_str())
                .chain(rule.per.iter().filter_map(|p| match &p.source {
                    UnitSource::Query(name) => Some(name.as_str()),
                    _ => None,
                }))
        })
    }
}

fn clamp(price: u64) -> u64 {
    price.clamp(1, MAX_PRICE_SATS)
}

/// Why a request has no quote: the 400 the request itself would get.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unquotable {
    /// A query parameter a rule reads cannot be read one way only.
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    /// Its rules price it above [`MAX_PRICE_SATS`].
    #[error("{}", too_dear())]
    TooDear,
    /// Its pricer could not be shown a header.
    #[error(transparent)]
    Unshowable(#[from] UnshowableHeader),
}

/// The 400's words for a request priced above [`MAX_PRICE_SATS`].
pub(crate) fn too_dear() -> String {
    format!(
        "this request would cost more than the maximum of {MAX_PRICE_SATS} sat (1 BTC) one invoice asks; ask for less (a smaller count)"
    )
}

/// What gate402 POSTs to a pricer.
#[derive(Debug, Serialize)]
struct PricerQuestion<'a> {
    service: &'a str,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: serde_json::Map<String, Value>,
    body_digest: Option<&'a str>,
}

/// What a pricer answers.
#[derive(Debug, Deserialize)]
struct PricerAnswer {
    price: u64,
    expires: Option<u64>,
}

/// Why a pricer's answer was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    Timeout,
    Unreachable,
    Status,
    Garbage,
}

impl Fallback {
    fn as_str(self) -> &'static str {
        match self {
            Fallback::Timeout => "timeout",
            Fallback::Unreachable => "error",
            Fallback::Status => "status",
            Fallback::Garbage => "garbage",
        }
    }
}

/// What a pricer's answer over its size limit is said to be.
fn too_long() -> String {
    format!("an answer of more than {MAX_ANSWER_BYTES} bytes")
}

/// The innermost cause of a failed exchange (`Connection refused`), which
/// names no URL: a pricer's may carry a key in its query.
fn innermost(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut cause: &dyn std::error::Error = &error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// What a pricer answer is kept by: the service, method, path and query,
/// body digest, and a digest of the headers it was shown (a pricer may
/// price by any of them).
type CacheKey = (String, String, String, String, [u8; 32]);

/// The HTTP client of pricers and the answers they gave, shared by every
/// service.
#[derive(Default)]
pub(crate) struct Pricers {
    client: OnceLock<Option<reqwest::Client>>,
    cache: Mutex<HashMap<CacheKey, (u64, Instant)>>,
}

impl std::fmt::Debug for Pricers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pricers")
    }
}

impl Pricers {
    fn client(&self) -> Option<&reqwest::Client> {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    // A pricer is asked, not followed elsewhere.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| tracing::error!(error = %e, "cannot build the pricer client"))
                    .ok()
            })
            .as_ref()
    }

    fn cached(&self, key: &CacheKey) -> Option<u64> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(price, _)| *price)
    }

    fn keep(&self, key: CacheKey, price: u64, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, until)| *until > now);
        }
        if cache.len() < CACHE_ENTRIES || cache.contains_key(&key) {
            cache.insert(key, (price, now + ttl));
        }
    }

    /// Asks the pricer; the price and how long it may be kept.
    async fn ask(
        &self,
        config: &PricerConfig,
        question: &PricerQuestion<'_>,
    ) -> Result<(u64, Duration), (Fallback, String)> {
        let client = self
            .client()
            .ok_or((Fallback::Unreachable, "no HTTP client".to_owned()))?;
        let sent = client
            .post(&config.url)
            .timeout(config.timeout)
            .json(question)
            .send();
        let read = async {
            let response = sent.await?;
            if !response.status().is_success() {
                return Ok(Err((
                    Fallback::Status,
                    format!("answered {}", response.status()),
                )));
            }
            if response
                .content_length()
                .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
            {
                return Ok(Err((Fallback::Garbage, too_long())));
            }
            response.bytes().await.map(Ok)
        };
        let timeout = || {
            (
                Fallback::Timeout,
                format!("no answer within {:?}", config.timeout),
            )
        };
        // The whole exchange within the timeout, body included.
        let bytes = match tokio::time::timeout(config.timeout, read).await {
            Err(_) => return Err(timeout()),
            Ok(Err(e)) if e.is_timeout() => return Err(timeout()),
            Ok(Err(e)) => return Err((Fallback::Unreachable, innermost(e))),
            Ok(Ok(Err(failed))) => return Err(failed),
            Ok(Ok(Ok(bytes))) => bytes,
        };
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err((Fallback::Garbage, too_long()));
        }
        let answer: PricerAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| (Fallback::Garbage, format!("not a price: {e}")))?;
        if !(1..=MAX_PRICE_SATS).contains(&answer.price) {
            return Err((
                Fallback::Garbage,
                format!("price {} is not 1 to {MAX_PRICE_SATS} sat", answer.price),
            ));
        }
        let most = Duration::from_secs(config.cache_secs);
        let ttl = match answer.expires {
            None => most,
            Some(at) if at >= UNIX_TIME_FROM => {
                Duration::from_secs(at.saturating_sub(crate::clock::unix_now())).min(most)
            }
            Some(secs) => Duration::from_secs(secs).min(most),
        };
        Ok((answer.price, ttl))
    }

    /// The pricer's price for `request` with the headers it is `shown`
    /// ([`shown_headers`]), kept or asked; its fallback when it fails.
    pub(crate) async fn price(
        &self,
        name: &str,
        config: &PricerConfig,
        request: &PriceRequest<'_>,
        shown: serde_json::Map<String, Value>,
        metrics: &crate::metrics::Metrics,
    ) -> u64 {
        let digest = request.body.map(gate402_mpp::verify::body_digest);
        let target = match request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.to_owned(),
        };
        let shown_digest: [u8; 32] = {
            use sha2::Digest;
            // In order of name: the same fields sent in another order are
            // the same question.
            let sorted: std::collections::BTreeMap<&String, &Value> = shown.iter().collect();
            let text = serde_json::to_vec(&sorted).unwrap_or_default();
            sha2::Sha256::digest(text).into()
        };
        let key: CacheKey = (
            name.to_owned(),
            request.method.as_str().to_owned(),
            target,
            digest.clone().unwrap_or_default(),
            shown_digest,
        );
        let pricers = self;
        if let Some(price) = pricers.cached(&key) {
            return price;
        }
        let question = PricerQuestion {
            service: name,
            method: request.method.as_str(),
            path: request.path,
            query: request.query,
            headers: shown,
            body_digest: digest.as_deref(),
        };
        match pricers.ask(config, &question).await {
            Ok((price, ttl)) => {
                pricers.keep(key, price, ttl);
                price
            }
            Err((fallback, cause)) => {
                // Its host only: a URL may carry a key in its query.
                let pricer = reqwest::Url::parse(&config.url)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                tracing::warn!(
                    service = name,
                    pricer,
                    reason = fallback.as_str(),
                    cause,
                    fallback_sats = config.fallback_sats,
                    "the pricer gave no price; the fallback price is asked"
                );
                metrics.pricer_fallback(name, fallback.as_str());
                clamp(config.fallback_sats)
            }
        }
    }
}

/// A request header a pricer cannot be shown as the upstream may read
/// it, so the request cannot be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnshowableHeader {
    /// A value that is not visible ASCII (obs-text, raw bytes): it would
    /// reach the upstream unseen.
    #[error(
        "a header value is not visible ASCII, and this service's price is decided from its headers"
    )]
    NotAscii,
    /// One name sent in two spellings that CGI-style upstreams read as one
    /// (`X-Tier` and `X_Tier` are both `HTTP_X_TIER`): which value it
    /// takes is its own.
    #[error(
        "header {0:?} is also sent as {1:?}, which upstreams read as one header; send it once (this service's price is decided from its headers)"
    )]
    Respelled(String, String),
}

/// The request headers a pricer sees: all but credentials and cookies,
/// and the forwarding ones unless `vouched` for by a trusted proxy;
/// repeated fields joined with `, `; each under its name with `-` for
/// `_` and `.` (`X_Tier` is shown as `x-tier`), as CGI-style upstreams
/// read it, so that a pricer that prices by `x-tier` sees it however
/// spelled.
///
/// # Errors
///
/// [`UnshowableHeader::NotAscii`] when a value of any header but
/// credentials and cookies is not visible ASCII;
/// [`UnshowableHeader::Respelled`] when two of its names read as one.
pub(crate) fn shown_headers(
    headers: &HeaderMap,
    vouched: bool,
) -> Result<serde_json::Map<String, Value>, UnshowableHeader> {
    let mut shown = serde_json::Map::new();
    // The name each shown name was sent as.
    let mut sent_as: crate::FastMap<String, &str> = Default::default();
    for name in headers.keys() {
        if PRIVATE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let values = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str())
            .collect::<Result<Vec<&str>, _>>()
            .map_err(|_| UnshowableHeader::NotAscii)?;
        if vouched || !crate::client::is_forwarding_header(name) {
            let read_as = name.as_str().replace(['_', '.'], "-");
            if let Some(other) = sent_as.insert(read_as.clone(), name.as_str()) {
                return Err(UnshowableHeader::Respelled(
                    other.to_owned(),
                    name.as_str().to_owned(),
                ));
            }
            shown.insert(read_as, values.join(", ").into());
        }
    }
    Ok(shown)
}

/// The same service at another price.
pub(crate) fn at_price(service: &PricedService, price_sats: u64) -> Arc<PricedService> {
    let mut priced = service.clone();
    priced.price_sats = price_sats;
    Arc::new(priced)
}

/// The caveat that records what an L402 token's invoice asked for.
pub(crate) fn amount_caveat(service: &PricedService) -> Caveat {
    Caveat::new(
        format!("{}{AMOUNT_SUFFIX}", service.name),
        service.invoice_sats().to_string(),
    )
}

/// The amount (sat) an L402 token's invoice asked for: its first
/// `<service>_amount` caveat (the one minted; a holder may only append).
pub(crate) fn l402_amount(service: &str, value: &str) -> Option<u64> {
    let credential = L402Credential::from_authorization(value).ok()?;
    let condition = format!("{service}{AMOUNT_SUFFIX}");
    let first = credential
        .token()
        .first_party_caveats()
        .filter_map(Caveat::parse)
        .find(|c| c.condition == condition)?;
    first.value.parse().ok()
}

/// The refusal of a credential that paid less than this request costs.
pub(crate) fn too_little(paid: u64, service: &PricedService) -> Refusal {
    let why = if service.is_dynamic() {
        "its price depends on what it asks for"
    } else {
        "the price was raised since it was bought"
    };
    Refusal::new(
        StatusCode::PAYMENT_REQUIRED,
        ProblemType::PaymentInsufficient,
        format!(
            "this credential paid {paid} sat, but this request costs {} sat ({why}); pay the new challenge",
            service.price_sats
        ),
    )
}

/// The service an MPP charge credential is verified against: at the
/// amount its challenge asked (bound by its id), so that a price changed
/// since it was issued does not make it another challenge. Whether that
/// amount covers this request's price is [`Paywall::paid_for`]'s to say
/// once it is verified (its scope first: a credential of another service
/// is refused as such); for a dynamic price it is said here already, as
/// a credential for a cheaper request is bound to another body. A
/// balance's session is not a charge: it is left as it is.
///
/// # Errors
///
/// A 402 refusal (`payment-insufficient`) when a dynamic price is more
/// than it asked.
pub(crate) fn as_charged<'s>(
    service: &'s PricedService,
    charge: &ChargeCredential<'_>,
) -> Result<Cow<'s, PricedService>, Refusal> {
    if service.sells == Sells::Balance {
        return Ok(Cow::Borrowed(service));
    }
    // Only read here: verification, which follows, refuses a request its
    // challenge id does not bind.
    match charge.amount_sats() {
        Some(paid) if paid < service.price_sats && service.is_dynamic() => {
            Err(too_little(paid, service))
        }
        Some(paid) if paid == service.price_sats => Ok(Cow::Borrowed(service)),
        Some(paid) => {
            let mut charged = service.clone();
            charged.price_sats = paid;
            Ok(Cow::Owned(charged))
        }
        // Garbage: verification refuses it in its own words.
        None => Ok(Cow::Borrowed(service)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(price_sats: u64) -> PriceRule {
        PriceRule {
            price_sats,
            ..PriceRule::default()
        }
    }

    fn matches(values: &[&str], key: &str) -> Vec<ValueMatch> {
        vec![ValueMatch {
            key: key.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }]
    }

    fn price(pricing: &Pricing, method: Method, target: &str, body: &str) -> Option<u64> {
        read(pricing, method, target, body.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn read(
        pricing: &Pricing,
        method: Method,
        target: &str,
        body: &[u8],
    ) -> Result<Option<u64>, Unreadable> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        pricing.rule_price(&PriceRequest {
            method: &method,
            path,
            query,
            body: Some(body),
            body_len: body.len() as u64,
            encoding: None,
            form: false,
        })
    }

    /// A number a rule names is read one way only: another spelling of it,
    /// which an upstream comparing numbers reads as it, is refused rather
    /// than priced at the default.
    #[test]
    fn a_number_in_a_rule_is_read_one_way_only() {
        let pricing = Pricing {
            rules: vec![
                PriceRule {
                    body: matches(&["5"], "/level"),
                    ..rule(100)
                },
                PriceRule {
                    query: matches(&["5"], "lvl"),
                    ..rule(80)
                },
            ],
            pricer: None,
        };
        assert_eq!(
            price(&pricing, Method::POST, "/x", r#"{"level":5}"#),
            Some(100)
        );
        assert_eq!(price(&pricing, Method::GET, "/x?lvl=5", ""), Some(80));
        for body in [
            r#"{"level":5.0}"#,
            r#"{"level":5e0}"#,
            r#"{"level":50e-1}"#,
            r#"{"level":"05"}"#,
            r#"{"level":" 5"}"#,
        ] {
            let refused = read(&pricing, Method::POST, "/x", body.as_bytes()).unwrap_err();
            assert!(
                refused.to_string().contains("reads as the number 5"),
                "{body}: {refused}"
            );
        }
        for target in [
            "/x?lvl=05",
            "/x?lvl=%2B5",
            "/x?lvl=5.0",
            "/x?lvl=0x5",
            "/x?lvl=0b101",
        ] {
            let refused = read(&pricing, Method::GET, target, b"").unwrap_err();
            assert!(
                refused.to_string().contains("reads as the number 5"),
                "{target}: {refused}"
            );
        }
        // Other numbers, and words, are other values.
        for target in [
            "/x?lvl=6",
            "/x?lvl=5_0",
            "/x?lvl=inf",
            "/x?lvl=five",
            "/x?lvl=0x",
        ] {
            assert_eq!(price(&pricing, Method::GET, target, ""), None, "{target}");
        }
    }

    #[test]
    fn the_first_rule_that_matches_decides() {
        let pricing = Pricing {
            rules: vec![
                PriceRule {
                    body: matches(&["gpt-4", "gpt-5"], "/model"),
                    ..rule(50)
                },
                PriceRule {
                    methods: vec![Method::DELETE],
                    ..rule(7)
                },
                PriceRule {
                    query: matches(&["hd"], "quality"),
                    ..rule(30)
                },
                PriceRule {
                    min_body_bytes: Some(10),
                    ..rule(20)
                },
            ],
            pricer: None,
        };
        let post = |target, body| price(&pricing, Method::POST, target, body);
        assert_eq!(post("/x", r#"{"model":"gpt-4"}"#), Some(50));
        assert_eq!(post("/x", r#"{"model":"gpt-5"}"#), Some(50));
        assert_eq!(post("/x", r#"{"model":"small"}"#), Some(20));
        // A query parameter standing for a body field a rule reads.
        for target in ["/x?model=gpt-4", "/x?Model=gpt-4", "/x?model[]=gpt-4"] {
            let refused = read(&pricing, Method::POST, target, b"{}").unwrap_err();
            assert!(
                refused.to_string().contains("body only"),
                "{target}: {refused}"
            );
        }
        assert_eq!(post("/x?other=1", "{}"), None);
        // Values an upstream may read as a dear one are refused, not priced
        // by the next rule.
        for body in [
            r#"{"model":"GPT-4"}"#,
            r#"{"model":"gpt-4 "}"#,
            r#"{"model":"gpt-4\u0000"}"#,
            r#"{"model":"\tgpt-5"}"#,
            r#"{"model":"gpt-4\u00ad"}"#,
            r#"{"model":"g\u0301pt-4"}"#,
            r#"{"model":"gpt\u200b-4"}"#,
            r#"{"model":"gpt-4\u00e9"}"#,
            r#"{"model":"gpt-4\u02bc"}"#,
            r#"{"model":["gpt-4"]}"#,
            r#"{"mo\u01c6el":"gpt-4"}"#,
            r#"{"model\u02bc":"gpt-4"}"#,
            r#"{"model":"g\u03c0t-4"}"#,
            r#"{"model":"gpt\u25004"}"#,
            r#"{"model":"%25u0067pt-4"}"#,
            r#"{"mod\u03b5l":"gpt-4"}"#,
        ] {
            let refused = read(&pricing, Method::POST, "/x", body.as_bytes()).unwrap_err();
            assert!(
                refused.to_string().contains("send it as"),
                "{body}: {refused}"
            );
        }
        assert_eq!(post("/x?quality=hd", "{}"), Some(30));
        assert_eq!(post("/x?quality=sd", "{}"), None);
        assert_eq!(price(&pricing, Method::DELETE, "/x", ""), Some(7));
        assert_eq!(post("/x", "{}"), None);
        // No body: no field matches.
        assert_eq!(post("/x", ""), None);
        // Not JSON: not read as any field, and not priced by default.
        let form = read(&pricing, Method::POST, "/x", b"model=gpt-4").unwrap_err();
        assert!(form.to_string().contains("not JSON"), "{form}");
    }

    /// Whatever gate402 cannot read one way only, where a body rule looks,
    /// is refused: an upstream may read it as the dear value.
    #[test]
    fn a_body_that_is_not_strict_json_is_refused_not_priced_by_default() {
        let pricing = Pricing {
            rules: vec![PriceRule {
                body: matches(&["gpt-4"], "/model"),
                ..rule(50)
            }],
            pricer: None,
        };
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep = format!(r#"{{"model":"gpt-4","x":{deep}}}"#);
        let utf16: Vec<u8> =
            r#"{"model":"gpt-4"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let bom = [b"\xEF\xBB\xBF".as_slice(), br#"{"model":"gpt-4"}"#].concat();
        let cases: [(&[u8], &str); 11] = [
            (&bom, "byte order mark"),
            (&utf16, "not UTF-8"),
            (br#"{"model":"gpt-4","x":NaN}"#, "not JSON"),
            (br#"{"model":"gpt-4","x":1e999}"#, "not JSON"),
            (deep.as_bytes(), "not JSON"),
            (br#"{"model":"gpt-4","model":"gpt-3"}"#, "given twice"),
            (br#"{"a":{"k":1,"k":2},"model":"x"}"#, "given twice"),
            (br#"{"Model":"gpt-4"}"#, "only by case"),
            (br#"{"model":"gpt-3","MODEL":"gpt-4"}"#, "only by case"),
            (br#"{"mo\u00addel":"gpt-4"}"#, "only by case"),
            (br#"{" model":"gpt-4"}"#, "only by case"),
        ];
        for (body, why) in cases {
            let refused = read(&pricing, Method::POST, "/", body).unwrap_err();
            assert!(
                refused.to_string().contains(why),
                "{}: {refused}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            price(&pricing, Method::POST, "/", r#" {"model":"gpt-4"} "#),
            Some(50)
        );
        // Compressed: neither its fields nor its size can be read.
        let gzip = PriceRequest {
            method: &Method::POST,
            path: "/",
            query: None,
            body: Some(b"\x1f\x8b"),
            body_len: 2,
            encoding: Some("gzip"),
            form: false,
        };
        let refused = pricing.rule_price(&gzip).unwrap_err();
        assert!(refused.to_string().contains("\"gzip\""), "{refused}");
        // A form that is also JSON: the upstream reads it as a form.
        let json_form = PriceRequest {
            form: true,
            encoding: None,
            body: Some(br#""&model=gpt-4&""#),
            body_len: 16,
            ..gzip
        };
        let refused = pricing.rule_price(&json_form).unwrap_err();
        assert!(refused.to_string().contains("declared a form"), "{refused}");
        let sized = Pricing {
            rules: vec![PriceRule {
                min_body_bytes: Some(1000),
                ..rule(25)
            }],
            pricer: None,
        };
        assert!(sized.rule_price(&gzip).is_err());
    }

    #[test]
    fn a_query_key_that_differs_only_by_case_is_refused() {
        let pricing = Pricing {
            rules: vec![PriceRule {
                query: matches(&["hd"], "quality"),
                ..rule(30)
            }],
            pricer: None,
        };
        assert_eq!(price(&pricing, Method::GET, "/?quality=hd", ""), Some(30));
        assert_eq!(price(&pricing, Method::GET, "/?other=hd", ""), None);
        assert_eq!(price(&pricing, Method::GET, "/?quality=sd", ""), None);
        assert_eq!(price(&pricing, Method::GET, "/?quality=hdr", ""), None);
        assert_eq!(price(&pricing, Method::GET, "/?x=a;b", ""), None);
        assert_eq!(
            price(&pricing, Method::GET, "/?quality=hd&x=a;b", ""),
            Some(30)
        );
        // Spelled in a value, a `;` is `%3B`; unless decoding the query
        // first makes it a rule's value.
        assert_eq!(price(&pricing, Method::GET, "/?quality=sd%3Bx", ""), None);
        assert_eq!(
            price(&pricing, Method::GET, "/?quality=hd&x=a%3Bb%26c", ""),
            Some(30)
        );
        for target in [
            "/?Quality=hd",
            "/?QUALITY=hd&quality=sd",
            "/?quality=sd&quality=hd",
            // Values an upstream may read as `hd`, and a `;` it may split at.
            "/?quality=HD",
            "/?quality=hd+",
            "/?quality=%20hd",
            "/?quality=hd%00",
            "/?quality=hd%00x",
            "/?quality=h%01d",
            "/?quality=%EF%BD%88d",
            "/?x=1;quality=hd",
            "/?quality=sd;quality=hd",
            "/?quality=hd;x",
            "/?quality=hd;",
            "/?quality=h%C2%ADd",
            "/?quality=hd%E2%80%8B",
            "/?quality=h%CC%81d",
            "/?%20quality=hd",
            "/?quality%00=hd",
            "/?quality=h%C7%86",
            "/?quality=h%CA%BCd",
            "/?quality%CA%BC=hd",
            "/?quality%C3%A9=hd",
            "/?quality=hd%C3%A9",
            "/?quality[]=hd",
            "/?quality[0]=hd",
            "/?quality=%2568d",
            "/?quality=%25u0068d",
            // Decoded before it is split, or split at its commas.
            "/?quality=hd%3Bx",
            "/?x%3D1%26quality%3Dhd",
            "/?quality=hd,x",
            "/?quality=h%CE%B4",
            "/?quality=%D2%BBd",
            "/?qu%CE%B1lity=hd",
        ] {
            assert!(
                read(&pricing, Method::GET, target, b"").is_err(),
                "{target}"
            );
        }
    }

    /// The largest count is refused by its price, never wrapped round.
    #[test]
    fn a_count_too_large_costs_more_than_the_maximum() {
        let pricing = Pricing {
            rules: vec![PriceRule {
                per: Some(PerUnit {
                    source: UnitSource::Body("/max_tokens".into()),
                    every: 1,
                    price_sats: 1,
                }),
                ..rule(5)
            }],
            pricer: None,
        };
        let post = |body: &str| price(&pricing, Method::POST, "/", body).unwrap();
        assert!(post(r#"{"max_tokens":18446744073709551615}"#) > MAX_PRICE_SATS);
        assert_eq!(post(r#"{"max_tokens":99999995}"#), MAX_PRICE_SATS);
        let by_query = Pricing {
            rules: vec![PriceRule {
                per: Some(PerUnit {
                    source: UnitSource::Query("n".into()),
                    every: 1,
                    price_sats: 10,
                }),
                ..rule(0)
            }],
            pricer: None,
        };
        let get = |target| price(&by_query, Method::GET, target, "").unwrap();
        assert!(get("/?n=1844674407370955161") > MAX_PRICE_SATS);
        assert!(get("/?n=99999999999999999999999") > MAX_PRICE_SATS);
    }

    #[test]
    fn numbers_and_booleans_match_by_their_json_form() {
        let pricing = Pricing {
            rules: vec![
                PriceRule {
                    body: matches(&["4"], "/n"),
                    ..rule(4)
                },
                PriceRule {
                    body: matches(&["true"], "/stream"),
                    ..rule(9)
                },
            ],
            pricer: None,
        };
        assert_eq!(price(&pricing, Method::POST, "/", r#"{"n":4}"#), Some(4));
        assert_eq!(price(&pricing, Method::POST, "/", r#"{"n":"4"}"#), Some(4));
        assert_eq!(
            price(&pricing, Method::POST, "/", r#"{"stream":true}"#),
            Some(9)
        );
        // An array or object holding a rule's value reads as it to some
        // upstream; one holding none is no rule's.
        for body in [
            r#"{"n":[4]}"#,
            r#"{"n":[4,5]}"#,
            r#"{"n":[5,"4"]}"#,
            r#"{"n":[[4]]}"#,
            r#"{"n":{"$eq":4}}"#,
            r#"[{"n":4}]"#,
            r#"[{"n":5}]"#,
        ] {
            assert!(
                read(&pricing, Method::POST, "/", body.as_bytes()).is_err(),
                "{body}"
            );
        }
        assert_eq!(price(&pricing, Method::POST, "/", r#"{"n":[5,6]}"#), None);
        assert_eq!(price(&pricing, Method::POST, "/", r#"[{"m":4}]"#), None);
    }

    #[test]
    fn a_per_unit_part_rounds_up_and_needs_its_count() {
        let pricing = Pricing {
            rules: vec![PriceRule {
                per: Some(PerUnit {
                    source: UnitSource::Body("/max_tokens".into()),
                    every: 100,
                    price_sats: 1,
                }),
                ..rule(5)
            }],
            pricer: None,
        };
        let post = |body| price(&pricing, Method::POST, "/", body);
        assert_eq!(post(r#"{"max_tokens":250}"#), Some(8));
        assert_eq!(post(r#"{"max_tokens":200}"#), Some(7));
        assert_eq!(post(r#"{"max_tokens":0}"#), Some(5));
        assert_eq!(post("{}"), None);
        assert_eq!(post(r#"{"max_tokens":null}"#), None);
        // A count that is there but not a plain whole number is refused.
        for count in [
            "-3",
            "\"many\"",
            "\"100000\"",
            "1e5",
            "100000.0",
            "-100000",
            "[1]",
        ] {
            let body = format!(r#"{{"max_tokens":{count}}}"#);
            let refused = read(&pricing, Method::POST, "/", body.as_bytes()).unwrap_err();
            assert!(
                refused.to_string().contains("/max_tokens"),
                "{count}: {refused}"
            );
        }
        let huge = Pricing {
            rules: vec![PriceRule {
                per: Some(PerUnit {
                    source: UnitSource::Query("n".into()),
                    every: 1,
                    price_sats: u64::MAX,
                }),
                ..rule(0)
            }],
            pricer: None,
        };
        assert_eq!(price(&huge, Method::GET, "/?n=3", ""), Some(u64::MAX));
        // Nothing costs nothing: a free price is 1 sat.
        assert_eq!(price(&huge, Method::GET, "/?n=0", ""), Some(1));
        for count in [
            "+100",
            "%20100",
            "%EF%BC%91%EF%BC%90%EF%BC%90",
            "",
            "1.5",
            "-1",
        ] {
            let target = format!("/?n={count}");
            let refused = read(&huge, Method::GET, &target, b"").unwrap_err();
            assert!(refused.to_string().contains("\"n\""), "{count}: {refused}");
        }
    }

    #[test]
    fn a_member_named_twice_is_found_at_any_depth() {
        for twice in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"params":{"arguments":{"model":"gpt-4","model":"gpt-3"}}}"#,
            br#"[{"x":{"_meta":{"k":1,"k":2}}}]"#,
        ] {
            assert!(
                names_a_member_twice(twice),
                "{}",
                String::from_utf8_lossy(twice)
            );
        }
        for once in [&br#"{"a":1,"b":{"a":2}}"#[..], b"[1,2]", b"not json", b""] {
            assert!(
                !names_a_member_twice(once),
                "{}",
                String::from_utf8_lossy(once)
            );
        }
    }

    /// Why a pricer gave no price is said, without its URL (its query may
    /// hold a key): the log said only `error`.
    #[tokio::test]
    async fn a_pricer_that_fails_says_why_without_its_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/price?key=hunter2", closed.local_addr().unwrap());
        drop(closed);
        let config = PricerConfig {
            url,
            timeout: Duration::from_secs(5),
            fallback_sats: 1,
            cache_secs: 0,
        };
        let question = PricerQuestion {
            service: "s",
            method: "GET",
            path: "/",
            query: None,
            headers: serde_json::Map::new(),
            body_digest: None,
        };
        let (reason, cause) = Pricers::default()
            .ask(&config, &question)
            .await
            .unwrap_err();
        assert_eq!(reason.as_str(), "error");
        assert!(cause.to_lowercase().contains("refused"), "{cause}");
        assert!(!cause.contains("hunter2"), "{cause}");
    }

    #[test]
    fn path_parameters_are_captured_by_name() {
        let pattern = ParamPath::parse("/v1/images/{size}/*").unwrap();
        assert_eq!(pattern.names().collect::<Vec<_>>(), ["size"]);
        assert_eq!(
            pattern.captures("/V1/images/large/cat.png"),
            Some(vec![("size", "large")])
        );
        assert_eq!(
            pattern.captures("/v1/images/large"),
            Some(vec![("size", "large")])
        );
        assert_eq!(pattern.captures("/v1/images"), None);
        assert_eq!(pattern.captures("/v1/videos/large/x"), None);
        let exact = ParamPath::parse("/m/{model}").unwrap();
        assert_eq!(exact.captures("/m/a/b"), None);
        assert_eq!(exact.captures("/m/a/"), Some(vec![("model", "a")]));
        for bad in ["v1", "/a/*/b", "/{}", "/{a}/{a}", "/x{a}", "/{a b}"] {
            assert!(ParamPath::parse(bad).is_err(), "{bad}");
        }
        let pricing = Pricing {
            rules: vec![PriceRule {
                path: Some(pattern),
                params: matches(&["large", "huge"], "size"),
                ..rule(40)
            }],
            pricer: None,
        };
        assert_eq!(
            price(&pricing, Method::GET, "/v1/images/huge/x", ""),
            Some(40)
        );
        assert_eq!(price(&pricing, Method::GET, "/v1/images/small/x", ""), None);
        for lookalike in [
            "/v1/images/Huge/x",
            "/v1/images/%EF%BD%8C%EF%BD%81%EF%BD%92%EF%BD%87%EF%BD%85/x",
            "/v1/images/lar%C2%ADge/x",
            "/v1/images/hug%C3%A9/x",
            "/v1/images/huge%CA%BC/x",
            "/v1/%EF%BD%89mages/huge/x",
            "/v1/images%E2%82%AC/huge/x",
            "/v1/image%C5%BF/huge/x",
            "/v1/im%CE%B1ges/huge/x",
            "/v1/images/hug%CE%B5/x",
            "/v1/images/h%D9%AA75ge/x",
        ] {
            let refused = read(&pricing, Method::GET, lookalike, b"").unwrap_err();
            assert!(
                refused.to_string().contains("reads as"),
                "{lookalike}: {refused}"
            );
        }
        // A value written with an accent matches its own spelling.
        let accented = Pricing {
            rules: vec![PriceRule {
                path: Some(ParamPath::parse("/v1/{style}").unwrap()),
                params: matches(&["café"], "style"),
                ..rule(9)
            }],
            pricer: None,
        };
        assert_eq!(price(&accented, Method::GET, "/v1/caf%C3%A9", ""), Some(9));
    }

    /// A rule's path is read in the normal form requests are matched in,
    /// as a service's is: written with an accent or a needless escape, it
    /// never matched, and its requests were priced at the default.
    #[test]
    fn a_rule_path_is_read_in_normal_form() {
        let captures = |rule: &str, path: &str| {
            let normal = RequestPath::parse(path).unwrap();
            ParamPath::parse(rule)
                .unwrap()
                .captures(normal.as_str())
                .is_some()
        };
        assert!(captures("/café/y", "/café/y"));
        assert!(captures("/café/y", "/caf%C3%A9/y"));
        assert!(captures("/caf%c3%a9/{id}", "/café/1"));
        assert!(captures("/v1/%78", "/v1/x"));
        assert!(!captures("/café/y", "/cafe/y"));
        for dotted in ["/v1/a/./b", "/v1/../v2/a", "/v1/{m}/.."] {
            assert!(ParamPath::parse(dotted).is_err(), "{dotted}");
        }
        assert!(ParamPath::parse("/v1/a%2Fb").is_err());
    }

    #[test]
    fn a_rule_path_outside_its_service_is_told() {
        let rule = |text: &str| ParamPath::parse(text).unwrap();
        let service = |text: &str| PathPattern::parse(text).unwrap();
        for (rule_path, service_path) in [
            ("/v1/{model}/*", "/v1/*"),
            ("/v1/{model}/*", "/*"),
            ("/V1/images", "/v1/*"),
            ("/v1", "/v1/*"),
            ("/{version}/images", "/v2/*"),
            ("/v1/{model}", "/v1/large"),
            ("/*", "/api/deep/*"),
            ("/api/{a}/*", "/api/x/y/*"),
            ("/café/y", "/café/*"),
            ("/caf%C3%A9/{x}", "/café/*"),
        ] {
            assert!(
                rule(rule_path).may_match_under(&service(service_path)),
                "{rule_path} under {service_path}"
            );
        }
        for (rule_path, service_path) in [
            ("/v2/{model}/*", "/v1/*"),
            ("/v1/{model}", "/v1/large/x"),
            ("/api", "/api/x/*"),
            ("/api/{a}", "/api/x/y/*"),
            ("/other", "/api"),
            ("/cafe/y", "/café/*"),
        ] {
            assert!(
                !rule(rule_path).may_match_under(&service(service_path)),
                "{rule_path} under {service_path}"
            );
        }
    }

    /// A token minted before every single-use token carried its amount:
    /// the node's settled invoice tells what it paid.
    #[tokio::test]
    async fn a_token_without_its_amount_is_checked_against_the_node() {
        use tower::ServiceExt;

        let fixed = PricedService::new("chat", "/chat", 10);
        let fixture = crate::fixture::paywall([fixed.clone()]).await;
        let (paywall, sandbox) = (&fixture.paywall, &fixture.sandbox);
        let app = axum::Router::new()
            .route("/chat", axum::routing::post(|| async { "answered" }))
            .layer(paywall.layer());
        let doors = crate::Doors {
            l402: true,
            mpp: false,
            x402: false,
        };
        let token = || async {
            let issued = paywall.issue(&fixed, doors).await.unwrap();
            let paid = sandbox.settle(&issued.bolt11).unwrap();
            let minted = issued.l402.unwrap().macaroon;
            let amount = format!("chat{AMOUNT_SUFFIX}");
            let old: Vec<Caveat> = minted
                .first_party_caveats()
                .filter_map(Caveat::parse)
                .filter(|c| c.condition != amount)
                .collect();
            assert!(
                old.len() < minted.first_party_caveats().count(),
                "minted with its amount"
            );
            let macaroon = paywall
                .inner
                .issuer
                .root_keys
                .mint(issued.payment_hash, gate402_l402::DEFAULT_LOCATION, &old)
                .macaroon
                .to_base64();
            format!("L402 {macaroon}:{}", hex::encode(paid.preimage))
        };
        let (cheap, dear) = (token().await, token().await);
        // Now 50 sat for a gpt-4 body.
        let mut dynamic = fixed.clone();
        dynamic.pricing = Some(Arc::new(Pricing {
            rules: vec![PriceRule {
                body: matches(&["gpt-4"], "/model"),
                ..rule(50)
            }],
            pricer: None,
        }));
        paywall.set_services([dynamic]);
        let send = |authorization: String, body: &'static str| {
            let request = http::Request::post("/chat")
                .header("authorization", authorization)
                .body(axum::body::Body::from(body))
                .unwrap();
            app.clone().oneshot(request)
        };
        let refused = send(cheap.clone(), r#"{"model":"gpt-4"}"#).await.unwrap();
        assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
        let body = http_body_util::BodyExt::collect(refused.into_body())
            .await
            .unwrap()
            .to_bytes();
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("paid 10 sat"),
            "{problem}"
        );
        assert_eq!(problem["price"]["amount"], "50");
        let served = send(cheap, r#"{"model":"small"}"#).await.unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        // Paid 10, and 10 is what a cheap request costs.
        let served = send(dear, "{}").await.unwrap();
        assert_eq!(served.status(), StatusCode::OK);
        paywall.shutdown().await;
    }

    #[test]
    fn credentials_cookies_and_unvouched_forwarding_are_not_shown_to_a_pricer() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer x".parse().unwrap());
        headers.insert("cookie", "a=b".parse().unwrap());
        headers.append("accept", "a/b".parse().unwrap());
        headers.append("accept", "c/d".parse().unwrap());
        headers.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        headers.insert("forwarded", "for=6.6.6.6".parse().unwrap());
        headers.insert("x_forwarded_for", "6.6.6.6".parse().unwrap());
        headers.insert("x-forwarded-user", "admin".parse().unwrap());
        headers.insert("x-original-uri", "/admin".parse().unwrap());
        headers.insert("remote-user", "admin".parse().unwrap());
        let shown = shown_headers(&headers, false).unwrap();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown["accept"], "a/b, c/d");
        // Shown as CGI-style upstreams read them; two spellings of one
        // name refused.
        let mut respelled = HeaderMap::new();
        respelled.insert("x_tier", "gold".parse().unwrap());
        respelled.insert("x.region", "eu".parse().unwrap());
        let shown = shown_headers(&respelled, false).unwrap();
        assert_eq!(shown["x-tier"], "gold");
        assert_eq!(shown["x-region"], "eu");
        respelled.insert("x-tier", "bronze".parse().unwrap());
        assert!(matches!(
            shown_headers(&respelled, false),
            Err(UnshowableHeader::Respelled(..))
        ));
        // Neither shown nor left out: refused.
        for name in ["x-tier", "x-forwarded-host"] {
            let mut headers = headers.clone();
            headers.insert(name, http::HeaderValue::from_bytes(b"premium\xff").unwrap());
            assert!(shown_headers(&headers, false).is_err(), "{name}");
        }
        headers.insert("cookie", http::HeaderValue::from_bytes(b"\xff").unwrap());
        // Vouched for by a trusted proxy, forwarding headers are shown,
        // each in one spelling.
        assert!(shown_headers(&headers, true).is_err(), "x_forwarded_for");
        headers.remove("x_forwarded_for");
        let shown = shown_headers(&headers, true).unwrap();
        assert_eq!(shown.len(), 6);
        assert_eq!(shown["x-forwarded-for"], "6.6.6.6");
    }
}
