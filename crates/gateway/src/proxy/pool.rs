//! Kept-alive HTTP/1.1 connections to one upstream origin: the one place
//! that connects (TCP, then TLS for `https://`, within the connect
//! timeout), hands a request an idle connection or a new one, and takes
//! the connection back once it can carry the next request.
//!
//! Our own rather than hyper-util's pooled client: that client looks its
//! pool up by origin under a SipHash for every request, and turns the
//! target into origin form again; here each upstream holds its pool, and
//! that costed about a tenth of a free request's instructions. Only what
//! the proxy needs is built: HTTP/1.1 (upstreams are asked nothing else),
//! the most recently used connection first, idle ones closed after
//! [`IDLE_TIMEOUT`], a request that a reused connection closed before
//! taking it sent again on another (the upstream never had it), and one
//! that may be sent twice sent again on a new connection when an idle
//! one failed it as it went out (the upstream's keep-alive ran out).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response, Uri};
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::tls::{TlsError, UpstreamTls};

/// How long a connection may wait in the pool for its next request.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection idles before a request on it is kept to be sent
/// again should the upstream close it as the request goes out. Under load
/// a connection is reused within microseconds and nothing is copied; an
/// upstream closing one that idled less than this is not guarded against.
const IDLE_BEFORE_RESEND: Duration = Duration::from_millis(1);

/// A copy of `request` to send again, when it may be sent twice: an
/// idempotent method (RFC 9110 §9.2.2) and no body.
fn resendable(request: &Request<Body>) -> Option<Request<Body>> {
    use hyper::body::Body as _;
    let idempotent = matches!(
        *request.method(),
        axum::http::Method::GET
            | axum::http::Method::HEAD
            | axum::http::Method::OPTIONS
            | axum::http::Method::PUT
            | axum::http::Method::DELETE
    );
    if !idempotent || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// No connection could be made (nor a TLS session on it) within the
    /// connect timeout: the upstream never had the request.
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed the request. `sent` is whether any of it
    /// went out (a request handed back unsent never reached the upstream).
    #[error("sending to the upstream: {error}")]
    Send {
        #[source]
        error: hyper::Error,
        sent: bool,
    },
}

impl SendError {
    /// Whether the upstream may have had any of the request.
    pub(super) fn reached(&self) -> bool {
        matches!(self, Self::Send { sent: true, .. })
    }

    /// Whether the upstream answered with something that does not parse
    /// as an HTTP response (two different lengths, say).
    pub(super) fn malformed_answer(&self) -> bool {
        matches!(self, Self::Send { error, sent: true } if error.is_parse())
    }
}

/// Whether `error` is the upstream refusing the TLS handshake, with an
/// alert that only a handshake ends with (its certificate checks; TLS 1.3
/// §4.4.2.4, RFC 8446 §6.2). Under TLS 1.3 a server checks the client's
/// certificate after the client has finished its side of the handshake
/// and sent the request, so the refusal comes instead of an answer; a
/// server reads no application data on a handshake it refused.
fn handshake_refused(error: &hyper::Error) -> bool {
    use rustls::AlertDescription as Alert;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(mut e) = cause {
        // An I/O error's source is its inner error's source: the inner
        // error itself is taken out to be looked at.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            e = inner;
        }
        if let Some(rustls::Error::AlertReceived(alert)) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                alert,
                Alert::HandshakeFailure
                    | Alert::BadCertificate
                    | Alert::UnsupportedCertificate
                    | Alert::CertificateRevoked
                    | Alert::CertificateExpired
                    | Alert::CertificateUnknown
                    | Alert::UnknownCA
                    | Alert::AccessDenied
                    | Alert::CertificateRequired
            );
        }
        cause = e.source();
    }
    false
}

/// A connection waiting for its next request.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// The pooled connections to one upstream origin.
pub(super) struct Pool {
    connector: ConnectWithin<HttpsConnector<HttpConnector>>,
    /// `scheme://authority`, what the connector is asked for.
    origin: Uri,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Whether the task that closes idle connections runs.
    reaping: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// A pool for `origin`'s scheme and authority with these TLS settings
    /// (plain `http://` too), each connection made within
    /// `connect_timeout`.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when the TLS files cannot be used.
    pub(super) fn new(
        tls: &UpstreamTls,
        connect_timeout: Duration,
        origin: &super::Origin,
    ) -> Result<Self, TlsError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config(tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let (scheme, authority) = (origin.scheme.clone(), origin.authority.clone());
        let mut origin = axum::http::uri::Parts::default();
        origin.scheme = Some(scheme);
        origin.authority = Some(authority);
        origin.path_and_query = Some(axum::http::uri::PathAndQuery::from_static("/"));
        Ok(Self {
            connector: ConnectWithin {
                inner: https,
                limit: connect_timeout,
            },
            origin: Uri::from_parts(origin).expect("a scheme and an authority make a URI"),
            idle: Mutex::new(Vec::new()),
            reaping: Default::default(),
        })
    }

    /// Sends `request` (its target in origin form, its `Host` set) on an
    /// idle connection or a new one; `connected` is called once a
    /// connection has it, before any of it is written.
    ///
    /// # Errors
    ///
    /// [`SendError`]: connecting failed, or the connection failed the
    /// request.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
        connected: impl FnOnce(),
    ) -> Result<Response<hyper::body::Incoming>, SendError> {
        let mut connected = Some(connected);
        // Set once an idle connection failed a request that is sent again.
        let mut fresh = false;
        loop {
            let idle = if fresh { None } else { self.take_idle() };
            let (mut sender, idled) = match idle {
                Some((sender, since)) => (sender, Some(since.elapsed())),
                // Boxed: a connection is made rarely, and its future (the
                // TLS stream inside, over 2 KB) would otherwise widen every
                // request's future, moved whole wherever it is.
                None => (
                    Box::pin(self.connect()).await.map_err(SendError::Connect)?,
                    None,
                ),
            };
            if let Some(connected) = connected.take() {
                connected();
            }
            // An upstream whose keep-alive runs out closes the connection
            // as the request goes out on it: the request failed, though
            // the upstream most likely never read it. One that may be
            // sent twice (RFC 9110 §9.2.2: idempotent, and no body to
            // send again) is then sent once more on a new connection,
            // rather than counted as the upstream failing on a payment.
            let again = idled
                .filter(|idled| *idled >= IDLE_BEFORE_RESEND)
                .and_then(|_| resendable(&request));
            let mut failed = match sender.try_send_request(request).await {
                Ok(response) => {
                    self.give_back(sender);
                    return Ok(response);
                }
                Err(failed) => failed,
            };
            request = match (failed.take_message(), again) {
                // Closed by the upstream while it idled: the request never
                // left, another connection may carry it.
                (Some(unsent), _) if idled.is_some() => unsent,
                (None, Some(copy)) => {
                    tracing::debug!(error = %failed.error(), "an idle upstream connection failed a request as it went out; sent again on a new one");
                    fresh = true;
                    copy
                }
                (unsent, _) => {
                    let error = failed.into_error();
                    // A new connection whose handshake the upstream then
                    // refused never had the request, though it went out.
                    let sent = unsent.is_none() && !(idled.is_none() && handshake_refused(&error));
                    return Err(SendError::Send { sent, error });
                }
            };
        }
    }

    /// The most recently used idle connection still open, if any, and
    /// since when it idled.
    fn take_idle(&self) -> Option<(SendRequest<Body>, Instant)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some((sender, since));
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        use tower::ServiceExt;
        let io = self.connector.clone().oneshot(self.origin.clone()).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            // Upgrades are read so that a `101` is answered, not a hang;
            // the proxy refuses to carry one.
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "an upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Takes `sender` back once it can carry another request: at once
    /// when its answer has been read whole, else when it has.
    fn give_back(self: &Arc<Self>, mut sender: SendRequest<Body>) {
        if sender.is_ready() {
            self.put(sender);
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let ready = std::future::poll_fn(|cx| sender.poll_ready(cx)).await;
            if let (Ok(()), Some(pool)) = (ready, pool.upgrade()) {
                pool.put(sender);
            }
        });
    }

    fn put(self: &Arc<Self>, sender: SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        drop(idle);
        if !self
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes the connections idle for [`IDLE_TIMEOUT`] or more, and those
    /// the upstream closed.
    fn close_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
    }
}

/// Closes `pool`'s idle connections as they time out, for as long as
/// the pool is in use (a reload that drops it ends this).
async fn reap(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 4);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.close_idle(),
            None => return,
        }
    }
}

/// A connector that connects (TCP, then TLS for `https://`) within one
/// deadline, the service's connect timeout. hyper's own covers the TCP
/// connect alone: a TLS handshake that stalled ran on into the response
/// timeout, and was counted as an upstream failing on a request that it
/// never had (a paid request's failures spend its payment).
#[derive(Clone)]
struct ConnectWithin<C> {
    inner: C,
    limit: Duration,
}

/// Connecting took longer than the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connecting (the TLS handshake included) took longer than {0:?}")]
struct ConnectTimedOut(Duration);

impl<C> tower::Service<Uri> for ConnectWithin<C>
where
    C: tower::Service<Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (connecting, limit) = (self.inner.call(uri), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(ConnectTimedOut(limit).into()),
            }
        })
    }
}
