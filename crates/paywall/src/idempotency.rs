//! Idempotent paid requests: the one place that reads `Idempotency-Key`,
//! keeps a paid response, and replays it.
//!
//! The Payment scheme (draft-httpauth-payment, "Idempotency") says a server
//! SHOULD honour `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header)
//! on paid requests: an agent that paid, sent a POST and lost the answer
//! must be able to retry without the upstream acting twice and without
//! paying twice. So a paid request carrying the field has its response
//! (status, header fields with the receipt, body up to a limit) kept with
//! its payment in the store, under the claim it was served by; a retry with
//! the same key and the same credential gets that response again, marked
//! `Idempotent-Replayed: true`, without reaching the upstream. The same key
//! with another request (method, target or body) is refused with 422.
//!
//! A single-use payment is already claimed once; a pass (an L402 token
//! good for a period) is claimed once per key, so that two concurrent
//! requests with one key never both reach the upstream. A response larger
//! than the limit, with trailers, slower than 30 s, or an event stream, is
//! served but not kept.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gate402_store::StoredResponse;
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::claims::ClaimKey;
use crate::responses::problem;

/// The request field (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Put on a response replayed from the store.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The longest key taken, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The largest response body kept, unless configured: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// How long a kept response is replayed, unless configured: 24 hours.
pub const DEFAULT_KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// How paid responses are kept for retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// The largest body kept, in bytes; 0 turns `Idempotency-Key` off
    /// (the field is then forwarded and nothing is kept).
    pub max_response_bytes: usize,
    /// How long a kept response is replayed (it also ends when its
    /// credential can no longer be presented).
    pub keep_for: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            keep_for: DEFAULT_KEEP_FOR,
        }
    }
}

impl IdempotencyConfig {
    pub(crate) fn on(&self) -> bool {
        self.max_response_bytes > 0
    }
}

/// The key a request carries: `Ok(None)` without one.
///
/// The field is a structured-field string (`"…"`, RFC 8941); a bare token
/// is taken too, as several SDKs send it so.
///
/// # Errors
///
/// The words of a 400: more than one field, an empty or over-long key, or
/// one with characters outside printable ASCII (space to `~`).
pub(crate) fn requested(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    const BAD: &str = "Idempotency-Key must be one string of 1 to 255 printable ASCII characters";
    const BAD_BARE: &str = "Idempotency-Key must be one string (\"…\") or one token of letters, digits and !#$%&'*+-.^_`|~:/= (no comma, semicolon or space)";
    if values.next().is_some() {
        return Err("Idempotency-Key may be sent once");
    }
    let text = value.to_str().map_err(|_| BAD)?.trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"').ok_or(BAD)?;
            let mut key = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => key.push(
                        chars
                            .next()
                            .filter(|c| matches!(c, '"' | '\\'))
                            .ok_or(BAD)?,
                    ),
                    '"' => return Err(BAD),
                    c => key.push(c),
                }
            }
            key
        }
        // A bare key is one token: with a comma, a `;` or a space an
        // upstream reading the field as RFC 8941 does sees a list or
        // parameters, and keys the request differently from here.
        None if text.bytes().all(is_bare_key_byte) => text.to_owned(),
        None => return Err(BAD_BARE),
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| (b' '..=b'~').contains(&b))
    {
        return Err(BAD);
    }
    Ok(Some(key))
}

/// Whether `byte` may be in a key sent bare: a token's (RFC 9110
/// `tchar`), with `:`, `/` and `=` (base64 keys).
fn is_bare_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/=".contains(&byte)
}

/// SHA-256 over what makes a request the same request: its method, its
/// target (normalized path and query) and its body.
pub(crate) fn fingerprint(method: &Method, uri: &Uri, body: &[u8]) -> [u8; 32] {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(target.as_bytes());
    hash.update(b"\n");
    hash.update(Sha256::digest(body));
    hash.finalize().into()
}

/// A request whose response is to be kept: under which claim and key, for
/// which request, until when.
#[derive(Debug, Clone)]
pub(crate) struct Keep {
    pub(crate) claim_key: ClaimKey,
    pub(crate) key: String,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) expires_at: u64,
}

impl Keep {
    /// The record of a response with these parts and whole body.
    pub(crate) fn record(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &Bytes,
        holder_token: Option<&str>,
    ) -> StoredResponse {
        StoredResponse {
            claim_key: self.claim_key.as_str().to_owned(),
            idempotency_key: self.key.clone(),
            fingerprint: self.fingerprint,
            status: status.as_u16(),
            headers: headers
                .iter()
                .filter(|(name, _)| !hop_by_hop(name))
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            expires_at: self.expires_at,
            holder_token: holder_token.map(str::to_owned),
        }
    }

    /// The kept response again, or a 422 when `stored` answered another
    /// request under the same key.
    pub(crate) fn replay(&self, stored: StoredResponse) -> Response<Bytes> {
        if stored.fingerprint != self.fingerprint {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "about:blank",
                "Unprocessable Content",
                "this Idempotency-Key was used with another request (method, target or body); send a new key",
                None,
            );
        }
        let mut response = Response::new(Bytes::from(stored.body));
        *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
        let headers = response.headers_mut();
        for (name, value) in stored.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::from_bytes(&value))
            {
                headers.append(name, value);
            }
        }
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
        response
    }
}

/// `409 Conflict` with `Retry-After`: a request with this key and
/// credential is being served now (draft-ietf-httpapi-idempotency-key-header
/// §2.6); its response will be replayed once kept.
pub(crate) fn in_progress() -> Response<Bytes> {
    let mut response = problem(
        StatusCode::CONFLICT,
        "about:blank",
        "Conflict",
        "a request with this Idempotency-Key and credential is being served; retry shortly to get its response",
        None,
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `409 Conflict`: the request under this key was served, but its response
/// was not kept (an event stream, too large or slow, or with trailers), so it
/// cannot be replayed.
pub(crate) fn not_kept() -> Response<Bytes> {
    problem(
        StatusCode::CONFLICT,
        "about:blank",
        "Conflict",
        "the request with this Idempotency-Key was served and its response was not kept (an event stream, too large or too slow to keep, or with trailers); send a new key to make a new request",
        None,
    )
}

/// Fields that describe one connection, not the response.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// A response body read for keeping.
pub(crate) enum Read<B> {
    /// All of it, within the limit.
    Whole(Bytes),
    /// Not keepable (over the limit, trailers, or slower than
    /// [`READ_FOR`]): what was read, then the rest, to be sent as it comes.
    Partial(Partial<B>),
    /// It failed while being read.
    Broken,
}

/// What was read of a body, and the rest of it.
pub(crate) struct Partial<B> {
    frames: VecDeque<Frame<Bytes>>,
    rest: Pin<Box<B>>,
}

/// How long a response body may take to arrive whole to be kept; a slower
/// one (a stream) is passed on as it comes from then on.
pub(crate) const READ_FOR: Duration = Duration::from_secs(30);

/// Whether a response with these fields is kept at all: an event stream is
/// a stream, to be passed on event by event, never held back.
pub(crate) fn keepable(headers: &HeaderMap) -> bool {
    !headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// Reads `body` whole when it is at most `limit` bytes of data and arrives
/// within [`READ_FOR`].
pub(crate) async fn read<B: Body<Data = Bytes>>(body: B, limit: usize) -> Read<B> {
    let mut rest = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut size = 0usize;
    let deadline = tokio::time::Instant::now() + READ_FOR;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, rest.frame()).await else {
            break;
        };
        match next {
            None => {
                let mut whole = BytesMut::with_capacity(size);
                for frame in frames {
                    if let Ok(data) = frame.into_data() {
                        whole.extend_from_slice(&data);
                    }
                }
                return Read::Whole(whole.freeze());
            }
            Some(Ok(frame)) => {
                let keepable = frame.data_ref().map(|d| {
                    size += d.len();
                    size <= limit
                });
                frames.push_back(frame);
                if keepable != Some(true) {
                    break;
                }
            }
            Some(Err(_)) => return Read::Broken,
        }
    }
    Read::Partial(Partial { frames, rest })
}

impl<B: Body<Data = Bytes>> Partial<B> {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return std::task::Poll::Ready(Some(Ok(frame)));
        }
        self.rest.as_mut().poll_frame(cx)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }

    pub(crate) fn size_hint(&self) -> http_body::SizeHint {
        let read: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_key_is_a_structured_string_or_a_bare_token() {
        assert_eq!(requested(&HeaderMap::new()), Ok(None));
        assert_eq!(
            requested(&with("\"8e03978e-40d5\"")),
            Ok(Some("8e03978e-40d5".into()))
        );
        assert_eq!(requested(&with("abc123")), Ok(Some("abc123".into())));
        // Quoted, anything printable is one key.
        assert_eq!(requested(&with("\"kA,kB\"")), Ok(Some("kA,kB".into())));
        for bare in ["8e03978e-40d5-4b1e", "01J9ZQ7X", "YWJj+/Zg==", "urn:k:1"] {
            assert_eq!(requested(&with(bare)), Ok(Some(bare.into())), "{bare}");
        }
        assert_eq!(requested(&with(r#""a\"b""#)), Ok(Some("a\"b".into())));
        for bad in [
            "\"\"", "\"open", r#""a"b""#, r#""a\b""#, "kA,kB", "kA, kB", "k;v=1", "a b",
        ] {
            assert!(requested(&with(bad)).is_err(), "{bad}");
        }
        assert!(requested(&with(&"k".repeat(MAX_KEY_LEN + 1))).is_err());
        let mut twice = with("a");
        twice.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert!(requested(&twice).is_err());
    }

    #[test]
    fn the_same_request_has_the_same_fingerprint() {
        let uri: Uri = "/api/image?size=2".parse().unwrap();
        let one = fingerprint(&Method::POST, &uri, b"{\"prompt\":\"cat\"}");
        assert_eq!(
            one,
            fingerprint(&Method::POST, &uri, b"{\"prompt\":\"cat\"}")
        );
        assert_ne!(
            one,
            fingerprint(&Method::POST, &uri, b"{\"prompt\":\"dog\"}")
        );
        assert_ne!(
            one,
            fingerprint(&Method::PUT, &uri, b"{\"prompt\":\"cat\"}")
        );
        let other: Uri = "/api/image?size=3".parse().unwrap();
        assert_ne!(
            one,
            fingerprint(&Method::POST, &other, b"{\"prompt\":\"cat\"}")
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_sent_whole_but_not_kept() {
        let small = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        assert!(matches!(read(small, 10).await, Read::Whole(b) if b == "0123456789"));
        let large = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let Read::Partial(mut partial) = read(large, 9).await else {
            panic!("kept a body over the limit");
        };
        let sent = std::future::poll_fn(|cx| partial.poll_frame(cx)).await;
        assert_eq!(sent.unwrap().unwrap().into_data().unwrap(), "0123456789");
        assert!(partial.is_end_stream());
    }
}
