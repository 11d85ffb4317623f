//! Request bodies read whole to bind them to a payment: an MPP challenge
//! for a POST, PUT or PATCH carries the digest of its body
//! (draft-httpauth-payment-01), and the credential is checked against the
//! body it comes with.
//!
//! Reading buffers what is otherwise streamed, so it is bounded three ways:
//! the size of one body, the time it may take to arrive, and the bytes all
//! requests hold at once (a budget, so that many slow senders cannot fill
//! memory), of which one client may hold a share (so that one client's
//! slow senders cannot keep everyone else's paid requests waiting).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::{ClientAddr, ClientKey};

/// What a request body's error turns into.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a body bound to a payment may take to arrive.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The 400's words for a body that could not be read.
const BODY_BROKEN: &str = "the request body broke off, or stalled past 30 s";

/// How many of the largest bodies may be held at once, at least.
const BODIES_AT_ONCE: usize = 64;

/// The budget is counted in KiB: a semaphore's permits are a `u32`.
const UNIT: usize = 1024;

/// The part of the budget one client may hold at once: a quarter, so that
/// filling it takes four clients (addresses, or IPv6 /64s).
const SHARE_OF_ONE_CLIENT: u32 = 4;

/// Whether a request of `method` has its body bound to its payment
/// (draft-httpauth-payment-01: POST, PUT and PATCH, however cased: an
/// upstream may upper-case the method).
pub(crate) fn binds_body(method: &Method) -> bool {
    [Method::POST, Method::PUT, Method::PATCH]
        .iter()
        .any(|m| m.as_str().eq_ignore_ascii_case(method.as_str()))
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Over the limit by its declared length; the body is untouched.
    TooLarge,
    /// Went over the limit while being read (no length was declared); what
    /// was read is gone, so the request cannot be forwarded.
    Overflowed,
    /// It broke off, failed, or stalled past [`BODY_READ_TIMEOUT`].
    Broken,
    /// The budget for bodies held at once is spent, or the client's share
    /// of it.
    Busy,
}

/// The limit on one body and the budget for all bodies read at once.
pub(crate) struct Bodies {
    limit: usize,
    budget: Arc<Semaphore>,
    /// What each client holds of the budget now (units).
    held: Arc<Mutex<HashMap<ClientKey, u32>>>,
    /// The most one client may hold (units).
    share: u32,
}

/// A client's hold on its share, given back when dropped.
struct Share {
    held: Arc<Mutex<HashMap<ClientKey, u32>>>,
    client: ClientKey,
    units: u32,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(units) = held.get_mut(&self.client) {
            *units = units.saturating_sub(self.units);
            if *units == 0 {
                held.remove(&self.client);
            }
        }
    }
}

impl Bodies {
    /// Bodies of at most `limit` bytes, [`BODIES_AT_ONCE`] of the largest
    /// at once (64 MiB in all at the default 1 MiB limit), a quarter of
    /// that for one client ([`SHARE_OF_ONE_CLIENT`]).
    pub(crate) fn new(limit: usize) -> Self {
        let most = limit.div_ceil(UNIT).max(1);
        let units = (most * BODIES_AT_ONCE).min(Semaphore::MAX_PERMITS);
        let share = u32::try_from(units).unwrap_or(u32::MAX) / SHARE_OF_ONE_CLIENT;
        Self {
            limit,
            budget: Arc::new(Semaphore::new(units)),
            held: Arc::default(),
            share: share.max(u32::try_from(most).unwrap_or(u32::MAX)),
        }
    }

    /// Takes `units` of `client`'s share; [`BodyError::Busy`] past it. A
    /// request of no known client (a layer without a socket peer) takes
    /// none.
    fn share_of(&self, client: Option<ClientKey>, units: u32) -> Result<Option<Share>, BodyError> {
        let Some(client) = client else {
            return Ok(None);
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let holds = held.entry(client).or_insert(0);
        if holds.saturating_add(units) > self.share {
            if *holds == 0 {
                held.remove(&client);
            }
            return Err(BodyError::Busy);
        }
        *holds += units;
        Ok(Some(Share {
            held: self.held.clone(),
            client,
            units,
        }))
    }

    /// The answer to a request whose body could not be read: `413` over
    /// the limit, `503` with the budget spent, `400` broken off.
    pub(crate) fn refusal(&self, error: BodyError) -> http::Response<Bytes> {
        match error {
            BodyError::TooLarge | BodyError::Overflowed => {
                crate::responses::payload_too_large(self.limit)
            }
            BodyError::Busy => crate::responses::busy(),
            BodyError::Broken => crate::responses::bad_request(BODY_BROKEN),
        }
    }

    fn units(&self, bytes: usize) -> u32 {
        let most = self.limit.div_ceil(UNIT).max(1);
        u32::try_from(bytes.div_ceil(UNIT).clamp(1, most)).unwrap_or(u32::MAX)
    }
}

/// Reads a request's body whole, within [`BODY_READ_TIMEOUT`], and puts it
/// back as read, to be forwarded. Past the budget, a reader that may
/// `wait` waits (within the same deadline), another gets
/// [`BodyError::Busy`] at once; past its client's share, every reader
/// gets it at once (waiting would only wait for the client itself).
pub(crate) async fn read_whole<B>(
    request: &mut Request<B>,
    bodies: &Bodies,
    wait: bool,
) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + From<Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let hint = request.body().size_hint();
    if hint.lower() > bodies.limit as u64 {
        return Err(BodyError::TooLarge);
    }
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let expected = hint
        .upper()
        .map_or(bodies.limit, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let units = bodies.units(expected);
    let client = request
        .extensions()
        .get::<ClientAddr>()
        .map(ClientAddr::key);
    let _share = bodies.share_of(client, units)?;
    let _held: OwnedSemaphorePermit = if wait {
        tokio::time::timeout_at(deadline, bodies.budget.clone().acquire_many_owned(units))
            .await
            .map_err(|_| BodyError::Busy)?
            .map_err(|_| BodyError::Busy)?
    } else {
        bodies
            .budget
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| BodyError::Busy)?
    };
    let body = std::mem::replace(request.body_mut(), B::from(Bytes::new()));
    let read = http_body_util::Limited::new(body, bodies.limit).collect();
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            *request.body_mut() = B::from(bytes.clone());
            Ok(bytes)
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::Overflowed),
        Ok(Err(_)) | Err(_) => Err(BodyError::Broken),
    }
}

/// The media types of a request's `Content-Type` fields as PHP and Rack
/// read them: lower-cased, each cut at its first `;`, `,` or space
/// (`application/x-www-form-urlencoded, application/json` is a form); an
/// empty one for a field with nothing before that.
fn media_types(headers: &http::HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers
        .get_all(http::header::CONTENT_TYPE)
        .iter()
        .map(|value| {
            let value = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
            let media = value
                .split(|c: char| matches!(c, ';' | ',') || c.is_ascii_whitespace())
                .find(|part| !part.is_empty())
                .unwrap_or("")
                .to_owned();
            (media, value)
        })
}

/// Whether these `headers` declare a form body, as the frameworks that
/// read a form's fields decide it: a `Content-Type` whose media type
/// ([`media_types`]) is `application/x-www-form-urlencoded` or any
/// `multipart/*` type.
pub(crate) fn declares_form(headers: &http::HeaderMap) -> bool {
    media_types(headers).any(|(media, _)| {
        media == "application/x-www-form-urlencoded" || media.starts_with("multipart/")
    })
}

/// Whether a body sent with these `headers` may have fields that
/// frameworks merge into a request's parameters (Rails' `params`, PHP's
/// `$_REQUEST`, Laravel's input): no `Content-Type` or an empty one (Rack
/// parses a POST without one as a form); a declared form
/// ([`declares_form`]); or a value holding `/json` or `+json` anywhere
/// (Laravel's `isJson`).
pub(crate) fn has_fields(headers: &http::HeaderMap) -> bool {
    untyped(headers)
        || declares_form(headers)
        || media_types(headers).any(|(_, value)| value.contains("/json") || value.contains("+json"))
}

/// Whether these `headers` give a body no type: no `Content-Type`, or one
/// with nothing before its first `;`, `,` or space. Rack parses such a
/// POST's body as a form.
pub(crate) fn untyped(headers: &http::HeaderMap) -> bool {
    let mut types = media_types(headers).peekable();
    types.peek().is_none() || types.any(|(media, _)| media.is_empty())
}

/// The names of a body's top-level fields as the frameworks that merge
/// them into a request's parameters may read them, whatever its declared
/// type: its pairs read as a form (`a=1&b=2`), the `name` of every
/// `Content-Disposition` header a multipart part may declare (folded
/// lines joined; a line inside a part's content counts too), and its keys
/// read as a JSON object. More names than any one parser would find,
/// never fewer.
pub(crate) fn field_names(body: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = form_urlencoded::parse(body)
        .map(|(name, _)| name.into_owned())
        .collect();
    if let Ok(object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        names.extend(object.into_iter().map(|(key, _)| key));
    }
    // Header lines, a line that starts with a space or a tab continuing
    // the one before (PHP and Werkzeug unfold part headers).
    let mut lines: Vec<String> = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        match lines.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => lines.push(line.to_owned()),
        }
    }
    for line in &lines {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if !field.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        names.extend(value.split(';').skip(1).filter_map(|param| {
            let (key, value) = param.split_once('=')?;
            let key = key.trim();
            let value = value.trim().trim_matches('"');
            // RFC 7578 forbids `name*`; RFC 5987 readers take it anyway.
            match key.to_ascii_lowercase().as_str() {
                "name" => Some(value.to_owned()),
                "name*" => Some(value.rsplit("''").next().unwrap_or(value).to_owned()),
                _ => None,
            }
        }));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &'static str) -> Request<http_body_util::Full<Bytes>> {
        Request::new(http_body_util::Full::new(Bytes::from_static(
            body.as_bytes(),
        )))
    }

    #[tokio::test]
    async fn a_body_is_read_and_put_back() {
        let bodies = Bodies::new(16);
        let mut r = request("hello");
        assert_eq!(read_whole(&mut r, &bodies, false).await.unwrap(), "hello");
        let again = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(again, "hello");
        let mut large = request("more than sixteen bytes");
        assert_eq!(
            read_whole(&mut large, &bodies, false).await.unwrap_err(),
            BodyError::TooLarge
        );
        let untouched = large.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(untouched, "more than sixteen bytes");
    }

    #[tokio::test]
    async fn the_budget_bounds_what_is_held_at_once() {
        let bodies = Bodies::new(UNIT);
        let all = bodies.budget.clone().acquire_many_owned(64).await.unwrap();
        let mut r = request("x");
        assert_eq!(
            read_whole(&mut r, &bodies, false).await.unwrap_err(),
            BodyError::Busy
        );
        drop(all);
        assert_eq!(read_whole(&mut r, &bodies, false).await.unwrap(), "x");
    }

    #[tokio::test]
    async fn one_client_holds_a_quarter_of_the_budget_at_most() {
        let bodies = Bodies::new(UNIT);
        let from = |ip: [u8; 4]| {
            let ip = std::net::IpAddr::from(ip);
            let mut r = request("x");
            r.extensions_mut().insert(ClientAddr { ip, peer: ip });
            r
        };
        let hog = ClientKey::of([10, 0, 0, 1].into());
        let shares: Vec<Share> = (0..16)
            .map(|_| bodies.share_of(Some(hog), 1).unwrap().unwrap())
            .collect();
        assert_eq!(
            read_whole(&mut from([10, 0, 0, 1]), &bodies, true)
                .await
                .unwrap_err(),
            BodyError::Busy
        );
        assert_eq!(
            read_whole(&mut from([10, 0, 0, 2]), &bodies, true)
                .await
                .unwrap(),
            "x"
        );
        drop(shares);
        assert_eq!(
            read_whole(&mut from([10, 0, 0, 1]), &bodies, true)
                .await
                .unwrap(),
            "x"
        );
        assert!(bodies.held.lock().unwrap().is_empty());
    }

    #[test]
    fn field_names_of_forms_multipart_and_json() {
        let has = |body: &[u8], name: &str| field_names(body).iter().any(|n| n == name);
        assert!(has(b"a=1&quality=hd", "quality"));
        let multipart = b"--b\r\nContent-Disposition: form-data; name=\"quality\"\r\n\r\nhd\r\n--b\r\ncontent-disposition: form-data; name*=utf-8''_method\r\n\r\nPUT\r\n--b--\r\n";
        assert!(has(multipart, "quality") && has(multipart, "_method"));
        let folded =
            b"--b\r\nContent-Disposition: form-data;\r\n name=\"quality\"\r\n\r\nhd\r\n--b--\r\n";
        assert!(has(folded, "quality"));
        let folded =
            b"--b\r\nContent-Disposition: form-data;\r\n\tname=\"_method\"\r\n\r\nPUT\r\n--b--\r\n";
        assert!(has(folded, "_method"));
        assert!(has(br#"{"quality":"hd","n":{"x":1}}"#, "quality"));
        assert!(!has(br#"{"n":{"quality":1}}"#, "quality"));
    }

    #[test]
    fn bodies_frameworks_parse_have_fields() {
        let with = |types: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for t in types {
                headers.append(http::header::CONTENT_TYPE, t.parse().unwrap());
            }
            has_fields(&headers)
        };
        for types in [
            &[][..],
            &[""],
            &["application/x-www-form-urlencoded, text/plain"],
            &["application/x-www-form-urlencoded x"],
            &["multipart/mixed; boundary=b"],
            &["application/json, text/plain"],
            &["text/plain; x=/json"],
            &["text/plain; charset=\"+json\""],
            &["Application/JSON"],
        ] {
            assert!(with(types), "{types:?}");
        }
        for types in [
            &["application/octet-stream"][..],
            &["image/png"],
            &["text/plain"],
        ] {
            assert!(!with(types), "{types:?}");
        }
    }

    #[test]
    fn a_form_is_declared_as_php_and_rack_read_the_type() {
        let declares = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            declares_form(&headers)
        };
        for value in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            "application/x-www-form-urlencoded, application/json",
            "application/x-www-form-urlencoded application/json",
            "application/x-www-form-urlencoded\tapplication/json",
            "multipart/form-data; boundary=b",
            "multipart/mixed, application/json",
        ] {
            assert!(declares(value), "{value}");
        }
        for value in [
            "application/json",
            "application/json, application/x-www-form-urlencoded",
            "text/plain",
        ] {
            assert!(!declares(value), "{value}");
        }
    }
}
