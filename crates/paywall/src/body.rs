//! Request bodies read whole to bind them to a payment: an MPP challenge
//! for a POST, PUT or PATCH carries the digest of its body
//! (draft-httpauth-payment-01), and the credential is checked against the
//! body it comes with.
//!
//! Reading buffers what is otherwise streamed, so it is bounded three ways:
//! the size of one body, the time it may take to arrive, and the bytes all
//! requests hold at once (a budget, so that many slow senders cannot fill
//! memory).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a request body's error turns into.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a body bound to a payment may take to arrive.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The 400's words for a body that could not be read.
pub(crate) const BODY_BROKEN: &str = "the request body broke off, or stalled past 30 s";

/// How many of the largest bodies may be held at once, at least.
const BODIES_AT_ONCE: usize = 64;

/// The budget is counted in KiB: a semaphore's permits are a `u32`.
const UNIT: usize = 1024;

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
    /// The budget for bodies held at once is spent.
    Busy,
}

/// The limit on one body and the budget for all bodies read at once.
pub(crate) struct Bodies {
    limit: usize,
    budget: Arc<Semaphore>,
}

impl Bodies {
    /// Bodies of at most `limit` bytes, [`BODIES_AT_ONCE`] of the largest
    /// at once (64 MiB in all at the default 1 MiB limit).
    pub(crate) fn new(limit: usize) -> Self {
        let units = (limit.div_ceil(UNIT).max(1) * BODIES_AT_ONCE).min(Semaphore::MAX_PERMITS);
        Self {
            limit,
            budget: Arc::new(Semaphore::new(units)),
        }
    }

    /// The largest body read, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn units(&self, bytes: usize) -> u32 {
        let most = self.limit.div_ceil(UNIT).max(1);
        u32::try_from(bytes.div_ceil(UNIT).clamp(1, most)).unwrap_or(u32::MAX)
    }
}

/// Reads a request's body whole, within [`BODY_READ_TIMEOUT`], and puts it
/// back as read, to be forwarded. Past the budget, a reader that may
/// `wait` waits (within the same deadline), another gets
/// [`BodyError::Busy`] at once.
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

/// Whether `headers` declare a body whose fields frameworks merge into a
/// request's parameters (Rails' `params`, PHP's `$_REQUEST`, Laravel's
/// input): a form, or JSON.
pub(crate) fn has_fields(headers: &http::HeaderMap) -> bool {
    crate::pricing::is_form(headers)
        || headers
            .get_all(http::header::CONTENT_TYPE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let media = v.split(';').next().unwrap_or("").trim();
                media.len() >= 4 && media[media.len() - 4..].eq_ignore_ascii_case("json")
            })
}

/// The names of a body's top-level fields as the frameworks that merge
/// them into a request's parameters read them: a form's (`a=1&b=2`, and
/// the `name` of every `Content-Disposition` line, which a multipart part
/// declares; a line inside a part's content counts too), or, when `form`
/// is false, a JSON object's keys. More names than a parser would find,
/// never fewer.
pub(crate) fn field_names(body: &[u8], form: bool) -> Vec<String> {
    if !form {
        return serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .map(|object| object.into_iter().map(|(key, _)| key).collect())
            .unwrap_or_default();
    }
    let mut names: Vec<String> = form_urlencoded::parse(body)
        .map(|(name, _)| name.into_owned())
        .collect();
    for line in body.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
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

    #[test]
    fn field_names_of_forms_multipart_and_json() {
        assert_eq!(field_names(b"a=1&quality=hd", true), ["a", "quality"]);
        let multipart = b"--b\r\nContent-Disposition: form-data; name=\"quality\"\r\n\r\nhd\r\n--b\r\ncontent-disposition: form-data; name*=utf-8''_method\r\n\r\nPUT\r\n--b--\r\n";
        let names = field_names(multipart, true);
        assert!(names.iter().any(|n| n == "quality"), "{names:?}");
        assert!(names.iter().any(|n| n == "_method"), "{names:?}");
        let mut keys = field_names(br#"{"quality":"hd","n":{"x":1}}"#, false);
        keys.sort();
        assert_eq!(keys, ["n", "quality"]);
        assert!(field_names(b"[1,2]", false).is_empty());
        assert!(field_names(b"not json", false).is_empty());
    }
}
