//! The reverse proxy behind the paywall: forwards a routed request to its
//! service's upstream (`http://` or `https://`, connections pooled),
//! streaming bodies both ways.
//!
//! It forwards the path the paywall matched (normalized, then rewritten
//! only at segment boundaries), never the raw request target. Forwarding
//! headers are passed on only from trusted proxies; from anyone else they
//! are replaced, so the upstream never takes a client's word for who it is.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use gate402_paywall::route::{request_port, RequestPath};
use gate402_paywall::{
    ClientAddr, ClientPresence, NotReached, OtherMethods, PartlySent, Routed, TrustedProxies,
};
use hyper::body::Body as _;
use tracing::Instrument;

use pool::{BoxError, Pool, SendError};

use crate::config::{Rewrite, ServiceConfig, UpstreamConfig};
use crate::problem::problem_response;
use crate::server::listen::{AwaitingUpstream, WaitingGuard};
use crate::tls::{TlsError, UpstreamTls};

mod pool;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the message's few names, removing only those present
    // (a response from a kept-alive upstream always has `Connection`):
    // removing each hop-by-hop name in turn hashed every one of them, on
    // each request and each response. The names `Connection` lists are
    // read once, not again for every field.
    let listed: Vec<&[u8]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
        .collect();
    let removed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            // Also in the `_` and `.` spellings a CGI-style upstream
            // reads as the `-` ones.
            gate402_paywall::fields::is_one_of(name, &HOP_BY_HOP)
                || listed
                    .iter()
                    .any(|item| item.eq_ignore_ascii_case(name.as_str().as_bytes()))
        })
        .cloned()
        .collect();
    for name in removed {
        headers.remove(name);
    }
}

/// How many [`UPSTREAM_IDENTITY`] names.
const IDENTITY_FIELDS: usize = 5;

/// Response fields that name the upstream's software and version, or the
/// hosts behind the gateway: not the client's business (nginx hides
/// `Server`), and RFC 9110 §7.6.3 says a gateway through a firewall
/// should not forward the names and ports in `Via`.
const UPSTREAM_IDENTITY: [HeaderName; IDENTITY_FIELDS] = [
    header::SERVER,
    header::VIA,
    HeaderName::from_static("x-powered-by"),
    HeaderName::from_static("x-aspnet-version"),
    HeaderName::from_static("x-aspnetmvc-version"),
];

/// Removes the [`UPSTREAM_IDENTITY`] fields from an upstream's response,
/// in one pass over its names and with no allocation (every response of
/// most upstreams has `Server`).
fn hide_upstream_identity(headers: &mut HeaderMap) {
    let mut found: [Option<HeaderName>; IDENTITY_FIELDS] = Default::default();
    let named = headers
        .keys()
        .filter(|name| UPSTREAM_IDENTITY.contains(name));
    for (slot, name) in found.iter_mut().zip(named) {
        *slot = Some(name.clone());
    }
    for name in found.into_iter().flatten() {
        headers.remove(name);
    }
}

/// An error and its causes, outermost first (`client error (Connect):
/// invalid peer certificate: UnknownIssuer`): hyper's own text names only
/// the stage that failed. A cause whose text its error already ends with
/// (an `io::Error` wrapping one of hyper's, say) is said once.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// One service's upstream and the pool of connections to it.
struct Upstream {
    config: UpstreamConfig,
    /// Its URL taken apart once, not for every request, with its pool;
    /// `None` when it does not parse (every request is then refused).
    origin: Option<(Origin, Arc<Pool>)>,
}

/// A client's address as `X-Forwarded-For` gives it. An IPv4 address is
/// written by hand: through `Display` it cost more than the rest of the
/// forwarded fields together, on every request.
fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let (mut len, mut digits) = (0, itoa::Buffer::new());
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let digits = digits.format(octet).as_bytes();
                text[len..len + digits.len()].copy_from_slice(digits);
                len += digits.len();
            }
            HeaderValue::from_bytes(&text[..len]).expect("digits and dots")
        }
        std::net::IpAddr::V6(v6) => {
            HeaderValue::try_from(v6.to_string()).expect("an IPv6 address is visible ASCII")
        }
    }
}

/// An upstream URL's parts that every forwarded request repeats.
struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// The `Host` it is sent.
    host: HeaderValue,
    /// The base path before the forwarded one (empty for none).
    base: String,
}

impl Origin {
    fn parse(url: &str) -> Option<Self> {
        let uri: Uri = url.parse().ok()?;
        let parts = uri.into_parts();
        let (scheme, authority) = (parts.scheme?, parts.authority?);
        if !crate::config::port_is_valid(&authority) {
            return None;
        }
        let base = match parts.path_and_query {
            Some(base) if base.as_str() != "/" => base.as_str().to_owned(),
            _ => String::new(),
        };
        Some(Self {
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            scheme,
            authority,
            base,
        })
    }

    /// Whether `authority` (with the upstream's scheme) is the upstream's.
    fn is_upstream(&self, authority: &Authority) -> bool {
        authority.host().eq_ignore_ascii_case(self.authority.host())
            && port_or_default(authority, &self.scheme)
                == port_or_default(&self.authority, &self.scheme)
    }

    /// An upstream answer's `Location` (or `Content-Location`) as the
    /// client is to see it (nginx's `proxy_redirect default`): one at the
    /// upstream itself, absolute (`http://10.0.0.7:8080/v1/x`), without
    /// its scheme (`//10.0.0.7:8080/v1/x`, or with a backslash for a slash,
    /// as browsers read it: `/\10.0.0.7:8080/v1/x`) or a path (`/v1/x`),
    /// names the route's own path when it is under what the route forwards
    /// to (`/weather/x`), and one outside that is left as a path on the
    /// gateway. The upstream's address is not the client's to know, nor to
    /// go around the paywall by. `None`: as it is (another host, a relative
    /// reference, a path outside the route).
    fn public_location(&self, rewrite: &Rewrite, location: &str) -> Option<String> {
        let read: String;
        let (path, absolute) = match location.as_bytes() {
            [b'/' | b'\\', b'/' | b'\\', ..] => {
                let rest = &location[2..];
                let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
                if !self.is_upstream(&rest[..end].parse().ok()?) {
                    return None;
                }
                // As a browser reads it: every backslash a slash.
                read = rest[end..].replace('\\', "/");
                (read.as_str(), true)
            }
            [b'/', ..] => (location, false),
            _ => {
                let uri: Uri = location.parse().ok()?;
                let same = uri.scheme() == Some(&self.scheme)
                    && uri.authority().is_some_and(|a| self.is_upstream(a));
                if !same {
                    return None;
                }
                let start = location.find("://")? + 3;
                let rest = &location[start..];
                (rest.find(['/', '?', '#']).map_or("/", |i| &rest[i..]), true)
            }
        };
        let forwarded = format!(
            "{}{}",
            self.base,
            rewrite.add_prefix.as_deref().unwrap_or("")
        );
        let path_only = &path[..path.find(['?', '#']).unwrap_or(path.len())];
        if !crate::config::segment_prefix(path_only, &forwarded) {
            return absolute.then(|| gateway_path(path));
        }
        Some(gateway_path(&format!(
            "{}{}",
            rewrite.strip_prefix.as_deref().unwrap_or(""),
            &path[forwarded.len()..]
        )))
    }

    /// The upstream's target for `path` (normal form) and `query`, in
    /// origin form as HTTP/1.1 sends it to an origin server.
    fn target(&self, path: &str, query: Option<&str>) -> Option<PathAndQuery> {
        let mut target =
            String::with_capacity(self.base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        target.push_str(&self.base);
        target.push_str(path);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        PathAndQuery::try_from(target).ok()
    }
}

/// `path` (with its query and fragment) as a path on the gateway: one
/// slash before it, never two, which would name a host (`//elsewhere/x`).
fn gateway_path(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

/// The port `authority` names, or `scheme`'s own.
fn port_or_default(authority: &Authority, scheme: &Scheme) -> Option<u16> {
    authority.port_u16().or(match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })
}

type Upstreams = HashMap<String, Arc<Upstream>>;

/// The tower service that proxies a routed request to its upstream.
#[derive(Clone)]
pub struct Proxy {
    upstreams: Arc<ArcSwap<Upstreams>>,
    trusted: TrustedProxies,
}

/// The upstreams of `services`; services with the same origin, TLS
/// settings and connect timeout share one pool of connections.
fn upstreams(services: &[ServiceConfig]) -> Result<Upstreams, TlsError> {
    type PoolKey = (Scheme, Authority, UpstreamTls, Duration);
    let mut pools: HashMap<PoolKey, Arc<Pool>> = HashMap::new();
    let mut upstreams = HashMap::new();
    for service in services {
        let Some(config) = &service.upstream else {
            continue;
        };
        let origin = match Origin::parse(&config.url) {
            None => None,
            Some(origin) => {
                let key = (
                    origin.scheme.clone(),
                    origin.authority.clone(),
                    config.tls.clone(),
                    config.connect_timeout,
                );
                let pool = match pools.get(&key) {
                    Some(pool) => pool.clone(),
                    None => {
                        let made =
                            Arc::new(Pool::new(&config.tls, config.connect_timeout, &origin)?);
                        pools.insert(key, made.clone());
                        made
                    }
                };
                Some((origin, pool))
            }
        };
        upstreams.insert(
            service.name().to_owned(),
            Arc::new(Upstream {
                origin,
                config: config.clone(),
            }),
        );
    }
    Ok(upstreams)
}

impl Proxy {
    /// A proxy to the upstreams of `services`, believing forwarding
    /// headers from `trusted` proxies only.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when an upstream's TLS files cannot be used.
    pub fn new(services: &[ServiceConfig], trusted: TrustedProxies) -> Result<Self, TlsError> {
        Ok(Self {
            upstreams: Arc::new(ArcSwap::from_pointee(upstreams(services)?)),
            trusted,
        })
    }

    /// Replaces the upstreams (a config reload).
    ///
    /// # Errors
    ///
    /// [`TlsError`]; the running upstreams are then kept.
    pub fn set_services(&self, services: &[ServiceConfig]) -> Result<(), TlsError> {
        self.upstreams.store(Arc::new(upstreams(services)?));
        Ok(())
    }

    /// Forwards `request` to the upstream of the service named `service`,
    /// at `path` (normal form). A service removed since the request was
    /// routed (a reload in between) answers `503`: a server error, so a
    /// payment the request carried is released, not spent on nothing.
    pub async fn forward_to(
        &self,
        service: &str,
        path: &RequestPath,
        request: Request<Body>,
    ) -> Response<Body> {
        let upstream = self.upstreams.load().get(service).cloned();
        let Some(upstream) = upstream else {
            return not_reached(problem_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "about:blank",
                "Service Unavailable",
                "this service was removed while the request was on its way; nothing was charged",
                None,
            ));
        };
        self.forward(&upstream, path, request).await
    }

    async fn forward(
        &self,
        upstream: &Upstream,
        path: &RequestPath,
        request: Request<Body>,
    ) -> Response<Body> {
        let origin = upstream.origin.as_ref();
        let upstream = &upstream.config;
        let (mut parts, body) = request.into_parts();
        let path = upstream.rewrite.apply(path);
        let target = origin.and_then(|(origin, pool)| {
            Some((origin, pool, origin.target(&path, parts.uri.query())?))
        });
        let Some((origin, pool, target)) = target else {
            return not_reached(problem_response(
                StatusCode::BAD_REQUEST,
                "about:blank",
                "Bad Request",
                "the request target cannot be forwarded",
                None,
            ));
        };
        strip_hop_by_hop(&mut parts.headers);
        let client = parts.extensions.get::<ClientAddr>().copied();
        let vouched = client.is_some_and(|c| c.via_trusted_proxy(&self.trusted));
        if !vouched {
            gate402_paywall::remove_forwarding_headers(&mut parts.headers);
        }
        if let Some(client) = client {
            parts
                .headers
                .append(X_FORWARDED_FOR, ip_header_value(client.peer));
        }
        // The host the request was routed by, with the port it named.
        let routed_host = parts
            .extensions
            .get::<Routed>()
            .and_then(|r| r.host.as_deref())
            .map(|host| {
                let mut value = String::with_capacity(host.len() + 6);
                value.push_str(host);
                if let Some(port) = request_port(&parts.uri, &parts.headers) {
                    value.push(':');
                    value.push_str(itoa::Buffer::new().format(port));
                }
                value
            });
        if let Some(host) = routed_host.and_then(|h| HeaderValue::try_from(h).ok()) {
            parts.headers.insert(X_FORWARDED_HOST, host);
        }
        if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
            let tls = parts
                .extensions
                .get::<crate::server::listen::ServedOverTls>()
                .is_some_and(|t| t.0);
            let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
            parts.headers.insert(X_FORWARDED_PROTO, proto);
        }
        join_cookies(&mut parts.headers);
        parts.headers.insert(header::HOST, origin.host.clone());
        if !upstream.headers.is_empty() {
            // A client's own spelling of a field set here (`X_Api_Key` for
            // `X-Api-Key`) would reach a CGI-style upstream as that field,
            // beside the value set here.
            gate402_paywall::fields::remove_where(&mut parts.headers, |name| {
                upstream.headers.iter().any(|(set, _)| {
                    gate402_paywall::fields::is_one_of(name, std::slice::from_ref(set))
                })
            });
        }
        for (name, value) in &upstream.headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        let service = parts.extensions.get::<Routed>().map(|r| &*r.service.name);
        let span = crate::telemetry::upstream_span(
            &parts.method,
            &origin.scheme,
            &origin.authority,
            target.path(),
            service,
        );
        crate::telemetry::propagate(&span, &mut parts.headers);
        parts.uri = Uri::from(target);
        parts.version = axum::http::Version::HTTP_11;
        let waiting = parts
            .extensions
            .get::<crate::server::listen::AwaitingUpstream>()
            .cloned();
        // The client's upload is the client's time: the response timeout,
        // and the wait that keeps its connection from idling, start once
        // the body has been sent (a slow upload was a timeout counted
        // against the upstream, and its third spent the payment).
        // None: no body to send (most requests; nothing to allocate).
        let upload = (!body.is_end_stream()).then(|| Arc::new(Upload::default()));
        let body = match &upload {
            None => body,
            Some(upload) => Body::new(Sending {
                body,
                upload: upload.clone(),
            }),
        };
        let presence = parts.extensions.get::<ClientPresence>().cloned();
        let request = Request::from_parts(parts, body);
        let connected = std::sync::atomic::AtomicBool::new(false);
        let answer = async {
            let sending = pool.send(request, || {
                connected.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            // Pinned here and lent: held once in this future, not also
            // in the one that races it against the client leaving.
            tokio::pin!(sending);
            let response = unless_left_unsent(sending, presence, &connected);
            tokio::pin!(response);
            tokio::select! {
                answered = &mut response => Ok(answered),
                () = Upload::sent(upload.as_deref()) => {
                    let _waiting = waiting.as_ref().map(AwaitingUpstream::enter);
                    tokio::time::timeout(upstream.response_timeout, &mut response).await
                }
            }
        }
        .instrument(span.clone())
        .await;
        // None: never sent, its client gone; read by nobody, what it
        // carried is given back.
        let Some(answer) = answer.transpose() else {
            crate::telemetry::upstream_answered(&span, Err("client left"));
            return not_reached(problem_response(
                StatusCode::BAD_GATEWAY,
                "about:blank",
                "Bad Gateway",
                "the client left before the request was sent upstream; nothing was charged",
                None,
            ));
        };
        crate::telemetry::upstream_answered(
            &span,
            match &answer {
                Err(_) => Err("timeout"),
                Ok(Err(_)) => Err("unreachable"),
                Ok(Ok(response)) => Ok(response.status()),
            },
        );
        match answer {
            Err(_) => problem_response(
                StatusCode::GATEWAY_TIMEOUT,
                "about:blank",
                "Gateway Timeout",
                "the upstream did not answer in time",
                None,
            ),
            // The client's own body broke off or was malformed (a chunk
            // that does not parse): its fault, so a 400. But a body is
            // only read once a connection has the request, so the
            // upstream had its head and maybe part of the body, and may
            // have acted on them: it counts as a failure on what paid
            // for it, given back at most a few times.
            Ok(Err(e)) if client_body_failed(&e) => {
                tracing::debug!(error = %e, "the request body broke off on its way upstream");
                let mut response = problem_response(
                    StatusCode::BAD_REQUEST,
                    "about:blank",
                    "Bad Request",
                    "the request body broke off or was malformed after the upstream had part of the request; what paid for it is given back, unless this happened to it too often",
                    None,
                );
                response.extensions_mut().insert(PartlySent);
                response
            }
            // Not connected, or handed back unsent: it never had the
            // request. Any later error (the connection closed after the
            // request went out) may come after the upstream acted on it.
            Ok(Err(e)) if !e.reached() => {
                tracing::warn!(upstream = %upstream.url, error = with_causes(&e), "upstream unreachable");
                not_reached(problem_response(
                    StatusCode::BAD_GATEWAY,
                    "about:blank",
                    "Bad Gateway",
                    "the upstream could not be reached",
                    None,
                ))
            }
            Ok(Err(e)) if e.malformed_answer() => {
                tracing::warn!(upstream = %upstream.url, error = with_causes(&e), "the upstream's answer is not HTTP that can be read");
                problem_response(
                    StatusCode::BAD_GATEWAY,
                    "about:blank",
                    "Bad Gateway",
                    "the upstream answered with a malformed response",
                    None,
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %upstream.url, error = with_causes(&e), "the upstream's connection failed with the request");
                problem_response(
                    StatusCode::BAD_GATEWAY,
                    "about:blank",
                    "Bad Gateway",
                    "the upstream's connection failed after it had the request, before it answered",
                    None,
                )
            }
            // Switched to another protocol the client never asked for (its
            // Upgrade is not forwarded): nothing the proxy can carry.
            Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                tracing::warn!(upstream = %upstream.url, "the upstream switched protocols; answered 502");
                problem_response(
                    StatusCode::BAD_GATEWAY,
                    "about:blank",
                    "Bad Gateway",
                    "the upstream answered with a protocol switch, which the gateway does not carry",
                    None,
                )
            }
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                // Framed two ways: read as chunked (RFC 9112 §6.3), so the
                // length is not the body's, and would cut it short.
                if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                strip_hop_by_hop(&mut parts.headers);
                hide_upstream_identity(&mut parts.headers);
                for field in [header::LOCATION, header::CONTENT_LOCATION] {
                    if let Some(public) = parts
                        .headers
                        .get(&field)
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| origin.public_location(&upstream.rewrite, l))
                        .and_then(|l| HeaderValue::try_from(l).ok())
                    {
                        parts.headers.insert(field, public);
                    }
                }
                // The upstream's HTTP version is its connection's, not the
                // client's: an HTTP/1.0 answer kept as such is written to
                // the client as HTTP/1.0, its connection then closed.
                parts.version = axum::http::Version::default();
                let body = Receiving {
                    body,
                    upload,
                    waiting,
                    guard: None,
                    pause: None,
                    limit: upstream.response_timeout,
                };
                Response::from_parts(parts, Body::new(body))
            }
        }
    }
}

/// `sending` (the pool's call), given up if the client leaves before a
/// connection has been given to the request (`None`): it may still be
/// connecting, and a connection made after the client left would carry a
/// request whose answer nobody reads, and spend its payment. Once a
/// connection has it (`connected`), the request is on its way and runs to
/// its end. Without `presence` (a request that spends nothing), simply
/// `sending`.
async fn unless_left_unsent<F: Future>(
    sending: F,
    presence: Option<ClientPresence>,
    connected: &std::sync::atomic::AtomicBool,
) -> Option<F::Output> {
    let Some(presence) = presence else {
        return Some(sending.await);
    };
    let left_unsent = async {
        presence.left().await;
        if connected.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        sent = sending => Some(sent),
        () = left_unsent => None,
    }
}

/// Joins the `Cookie` fields of a request into one, `; ` between them: an
/// HTTP/2 client may split its cookies over several, and an HTTP/1.1
/// upstream (which many read the first of only) must get one (RFC 9113
/// §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// The `501` answer to a request that asks to switch protocols
/// (`Upgrade: websocket` and the like), given before it is charged;
/// `None` for any other request. The proxy forwards HTTP exchanges only
/// (`Upgrade` is hop-by-hop), so the upstream would answer it as plain
/// HTTP (`426`), or switch with no tunnel behind, and the payment be spent
/// on it. `h2c`, which the server itself may take, passes.
pub fn refuse_upgrades(request: &Request<Body>) -> Option<Response<Body>> {
    let upgrades = request
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .any(|protocol| !protocol.eq_ignore_ascii_case("h2c"));
    upgrades.then(|| {
        problem_response(
            StatusCode::NOT_IMPLEMENTED,
            "about:blank",
            "Not Implemented",
            "the gateway does not switch protocols (WebSocket and other upgrades): only HTTP requests are sold and forwarded; nothing was charged",
            None,
        )
    })
}

/// [`refuse_upgrades`] in front of a service (the paywall): refused
/// requests are answered here, the others passed on, their answers' bodies
/// boxed into axum's [`Body`]. A service of its own rather than axum's
/// `middleware::from_fn`, which clones the service and boxes a future on
/// every request: about 1.3% of a free request's instructions.
#[derive(Clone)]
pub struct RefuseUpgrades<S>(pub S);

impl<S, B> tower::Service<Request<Body>> for RefuseUpgrades<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response<Body>, S::Error>>,
        futures_util::future::MapOk<S::Future, fn(Response<B>) -> Response<Body>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        use futures_util::TryFutureExt;
        match refuse_upgrades(&request) {
            Some(refusal) => futures_util::future::Either::Left(std::future::ready(Ok(refusal))),
            None => futures_util::future::Either::Right(
                self.0
                    .call(request)
                    .map_ok((|r: Response<B>| r.map(Body::new)) as fn(_) -> _),
            ),
        }
    }
}

/// A request body on its way upstream that says when it has been sent
/// whole, or has broken off ([`Upload`]).
struct Sending {
    body: Body,
    upload: Arc<Upload>,
}

/// Whether a request's body has been sent (whole, or as far as it went
/// before breaking off), and the one waiting to be woken when it has (the
/// wait for the response timeout to start, then the answer): until then a
/// pause in the answer may be the upstream waiting for the rest of the
/// body, which is the client's time.
#[derive(Default)]
struct Upload {
    done: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl Upload {
    fn finish(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// When `upload` is done (at once for none: a request without body).
    async fn sent(upload: Option<&Upload>) {
        if let Some(upload) = upload {
            std::future::poll_fn(|cx| match upload.done(cx) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            })
            .await;
        }
    }

    /// Whether it is done; if not, `cx` is woken when it is.
    fn done(&self, cx: &Context<'_>) -> bool {
        use std::sync::atomic::Ordering;
        if self.done.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.done.load(Ordering::Acquire)
    }
}

impl hyper::body::Body for Sending {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            self.upload.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The upstream's answer on its way to the client. While the upstream
/// sends nothing the client's connection is not idle (a pause longer than
/// the idle timeout cut the client off mid-answer and spent the payment),
/// and a pause longer than the response timeout ends the body with an
/// error: the upstream failed on the request.
struct Receiving {
    body: hyper::body::Incoming,
    /// The request's body: while the client is still sending it, a pause
    /// is neither timed nor kept from idling (an upstream that answers as
    /// it reads waits for the client, whose stalled upload made the
    /// upstream look failed and got its payment given back).
    upload: Option<Arc<Upload>>,
    waiting: Option<AwaitingUpstream>,
    guard: Option<WaitingGuard>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
}

/// The upstream paused its answer longer than the response timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of its answer for {0:?}")]
struct Paused(Duration);

impl hyper::body::Body for Receiving {
    type Data = axum::body::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                if this.upload.as_ref().is_some_and(|u| !u.done(cx)) {
                    this.guard = None;
                    this.pause = None;
                    return Poll::Pending;
                }
                if this.guard.is_none() {
                    this.guard = this.waiting.as_ref().map(AwaitingUpstream::enter);
                }
                let limit = this.limit;
                let pause = this
                    .pause
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.guard = None;
                this.pause = None;
                tracing::warn!(limit = ?limit, "the upstream paused its answer longer than the response timeout");
                Poll::Ready(Some(Err(Paused(limit).into())))
            }
            polled => {
                this.guard = None;
                this.pause = None;
                polled.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether sending failed because the request's body, as the client sent
/// it, failed to stream (hyper's "user body" error), rather than the
/// upstream or the connection to it.
fn client_body_failed(error: &SendError) -> bool {
    matches!(error, SendError::Send { error, .. } if error.is_user())
}

/// Marks a response as made before the upstream had the request.
fn not_reached(mut response: Response<Body>) -> Response<Body> {
    response.extensions_mut().insert(NotReached);
    response
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move {
            let Some(routed) = request.extensions().get::<Routed>().cloned() else {
                if let Some(OtherMethods(allowed)) = request.extensions().get::<OtherMethods>() {
                    let answer = gate402_paywall::responses::served_for(request.method(), allowed);
                    return Ok(answer.map(Body::from));
                }
                return Ok(problem_response(
                    StatusCode::NOT_FOUND,
                    "about:blank",
                    "Not Found",
                    "no service is configured for this path",
                    None,
                ));
            };
            Ok(proxy
                .forward_to(&routed.service.name, &routed.path, request)
                .await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream built without the config's check (the tower layer's
    /// `UpstreamConfig::new`) whose port is not one has no origin to
    /// connect to, rather than the scheme's default port.
    #[test]
    fn an_upstream_whose_port_is_not_a_port_has_no_origin() {
        for url in [
            "http://127.0.0.1:109543",
            "https://localhost:",
            "http://h:0/v1",
        ] {
            assert!(Origin::parse(url).is_none(), "{url}");
        }
        let origin = Origin::parse("https://localhost:8443/v1").expect("an origin");
        assert_eq!(origin.authority.port_u16(), Some(8443));
    }

    /// An error that says its cause's words is not followed by them again
    /// (`tcp connect error: tcp connect error: Connection refused`).
    #[test]
    fn a_cause_already_said_is_said_once() {
        #[derive(Debug)]
        struct Layer(&'static str, Option<Box<Layer>>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|l| l as _)
            }
        }
        let refused = Layer("Connection refused", None);
        let chain = Layer(
            "client error (Connect)",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer(
                    "tcp connect error",
                    Some(Box::new(refused)),
                ))),
            ))),
        );
        assert_eq!(
            with_causes(&chain),
            "client error (Connect): tcp connect error: Connection refused"
        );
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, X-Secret ,keep-alive"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "s"),
            ("x-other", "o"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            // As a CGI-style upstream reads `Proxy-Authorization`.
            ("proxy_authorization", "L402 m:p"),
            ("transfer.encoding", "chunked"),
            ("x-kept", "k"),
            ("x-secretive", "k"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-kept", "x-secretive"]);
        let mut plain = HeaderMap::new();
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.20.3.4",
            "192.168.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip), ip.to_string().as_str());
        }
    }

    /// Cookies an HTTP/2 client split over several fields reach the
    /// upstream in one (two `Cookie:` lines, of which frameworks read one).
    #[test]
    fn cookies_are_joined_into_one_field() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().count(), 1);
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }

    /// A request routed to a service that a reload removed on its way
    /// gets a server error, on which the paywall releases its payment.
    #[tokio::test]
    async fn a_service_removed_on_the_way_is_a_server_error() {
        let proxy = Proxy::new(&[], TrustedProxies::default()).unwrap();
        let path = RequestPath::parse("/gone").unwrap();
        let response = proxy
            .forward_to("gone", &path, Request::new(Body::empty()))
            .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
