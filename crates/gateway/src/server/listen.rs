//! Accepting connections: HTTP/1.0, 1.1 and 2 (cleartext or TLS with
//! ALPN), each connection bounded in time and in number.
//!
//! A client that never finishes its headers, goes quiet, or stops reading
//! its answer would otherwise hold a socket (and a file descriptor) for
//! ever; enough of them starve everyone. So: a deadline for the headers
//! (and the TLS handshake), an idle timeout (no byte read or written, in
//! either direction, with a request in flight or not), a cap on
//! connections per client address and one on all connections together,
//! sized from the process's file limit. On a graceful stop, connections
//! finish their requests in flight for a grace period, then are closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use gate402_paywall::{ClientKey, PeerAddr, TrustedProxies};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

/// How connections are bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// To send the request headers (and finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// Without a byte read or written before the connection is closed.
    pub idle_timeout: Duration,
    /// Open connections, all clients together.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: one /64).
    pub max_per_client: usize,
    /// Exempt from the per-client cap (every client arrives through them).
    pub trusted: TrustedProxies,
    /// How long a graceful stop waits for requests in flight.
    pub grace: Duration,
}

/// File descriptors kept for everything but client connections: the
/// store, the node, log files.
const RESERVED_FDS: u64 = 64;

/// The most connections the file limit allows: each may hold a second
/// descriptor for its upstream request.
pub fn max_connections_for_fd_limit() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let usable = limit.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(usable.clamp(16, 10_000)).unwrap_or(10_000)
}

/// Counts the connections of each client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<ClientKey, usize>>);

/// One connection's place in [`PerClient`], given back on drop.
struct Slot {
    table: Arc<PerClient>,
    key: Option<ClientKey>,
}

impl PerClient {
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
        if limits.trusted.contains(ip) {
            return Some(Slot {
                table: self.clone(),
                key: None,
            });
        }
        let key = ClientKey::of(ip);
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = table.entry(key).or_default();
        if *count >= limits.max_per_client {
            return None;
        }
        *count += 1;
        Some(Slot {
            table: self.clone(),
            key: Some(key),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut table = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = table.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    table.remove(&key);
                }
            }
        }
    }
}

/// What [`serve`] serves: a service of every request of a connection
/// (the gateway serves its own endpoints and its proxy as one; an
/// [`axum::Router`] is one), cloned for each connection.
pub trait App: Answers + Clone + Send + Sync + 'static {}

impl<S: Answers + Clone + Send + Sync + 'static> App for S {}

/// A service that answers every request (it never fails), in a future
/// that may move between threads.
pub trait Answers: Service<Request, Response = Response, Error = Infallible, Future: Send> {}

impl<S> Answers for S where
    S: Service<Request, Response = Response, Error = Infallible, Future: Send>
{
}

/// Serves `app` on `listener` until `stop` is cancelled, then stops
/// accepting, lets connections finish for the grace period, and closes
/// the rest.
///
/// # Errors
///
/// Only when the listener itself fails for good.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: S,
    limits: Limits,
    stop: CancellationToken,
) -> io::Result<()>
where
    S: App,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let limits = Arc::new(limits);
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.map_err(io::Error::other)?,
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: wait for some to free up.
                tracing::warn!(error = %e, "cannot accept a connection; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = per_client.admit(peer.ip(), &limits) else {
            tracing::debug!(%peer, "too many connections from this client; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, limits) = (app.clone(), tls.clone(), limits.clone());
        let (stop, closing) = (stop.clone(), closing.clone());
        connections.spawn(async move {
            let _held = (permit, slot);
            match tls {
                None => connection(stream, peer, false, app, &limits, stop, closing).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            connection(stream, peer, true, app, &limits, stop, closing).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("closing the connections still open after the grace period");
        closing.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// Errors of one connection that leave the listener fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Whether a request came over TLS to this gateway, put in its extensions
/// by the server: the proxy tells the upstream (`X-Forwarded-Proto`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServedOverTls(pub bool);

/// Serves one connection until it ends, idles out, or is closed by a stop.
async fn connection<I, S>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    app: S,
    limits: &Limits,
    stop: CancellationToken,
    closing: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: App,
{
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let decided = Arc::new(AtomicBool::new(false));
    let header_block = Arc::new(AtomicU64::new(0));
    let io = Watched {
        inner: io,
        started,
        activity: activity.clone(),
        head: Vec::with_capacity(PREFACE.len()),
        decided: decided.clone(),
        frames: None,
        header_block: header_block.clone(),
    };
    // Requests whose upstream has them and has not answered: the
    // connection is not idle meanwhile (the upstream's response timeout
    // may be longer than the idle timeout, and a paid request cut there
    // would be spent unanswered).
    let waiting = AwaitingUpstream(Arc::new(AtomicU64::new(0)));
    let counter = waiting.clone();
    let service = app.map_request(move |request: hyper::Request<hyper::body::Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        // The paywall's own extension alone, not axum's `ConnectInfo` as
        // well: nothing here extracts that, and each extension inserted
        // costs every request.
        request.extensions_mut().insert(PeerAddr(peer));
        request.extensions_mut().insert(ServedOverTls(tls));
        request.extensions_mut().insert(counter.clone());
        request
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        // Until its first bytes tell HTTP/1 from HTTP/2, no HTTP timer
        // watches a connection: a client silent from the start, or one that
        // stops inside the HTTP/2 preface, gets the header deadline here.
        let undecided = !decided.load(Ordering::Relaxed);
        let to_decide = limits.header_read_timeout.saturating_sub(started.elapsed());
        if undecided && to_decide.is_zero() {
            tracing::debug!(%peer, "no request within the header timeout; closed");
            return;
        }
        let idle_for = if waiting.0.load(Ordering::Relaxed) > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(
                (started.elapsed().as_millis() as u64)
                    .saturating_sub(activity.load(Ordering::Relaxed)),
            )
        };
        let mut wait = limits.idle_timeout.saturating_sub(idle_for);
        if wait.is_zero() {
            tracing::debug!(%peer, "connection idle; closed");
            return;
        }
        if undecided {
            wait = wait.min(to_decide);
        }
        // An HTTP/2 header block gets the header deadline too, however
        // slowly its CONTINUATION frames keep the connection busy.
        let block_since = header_block.load(Ordering::Relaxed);
        if block_since > 0 {
            let open_for = Duration::from_millis(
                (started.elapsed().as_millis() as u64).saturating_sub(block_since - 1),
            );
            let left = limits.header_read_timeout.saturating_sub(open_for);
            if left.is_zero() {
                tracing::debug!(%peer, "an HTTP/2 header block not ended within the header timeout; closed");
                return;
            }
            wait = wait.min(left);
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = closing.cancelled() => return,
        }
    }
}

/// The requests of one connection whose upstream has them and has not
/// answered, put in each request's extensions by the server; the proxy
/// counts its wait ([`AwaitingUpstream::enter`]), and the connection is
/// not closed as idle while any waits.
#[derive(Debug, Clone)]
pub(crate) struct AwaitingUpstream(Arc<AtomicU64>);

impl AwaitingUpstream {
    /// Counts one request as waiting for as long as the guard lives.
    pub(crate) fn enter(&self) -> WaitingGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(self.0.clone())
    }
}

/// One request waiting for its upstream ([`AwaitingUpstream::enter`]).
pub(crate) struct WaitingGuard(Arc<AtomicU64>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bytes an HTTP/2 client opens with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An I/O stream that notes when a byte last went through it, and whether
/// its first bytes have told which HTTP version the client speaks.
struct Watched<I> {
    inner: I,
    started: Instant,
    /// Milliseconds after `started`.
    activity: Arc<AtomicU64>,
    /// The first bytes read, up to the length of the HTTP/2 preface.
    head: Vec<u8>,
    /// Set once `head` is the whole preface or stops matching it.
    decided: Arc<AtomicBool>,
    /// The frames read after an HTTP/2 preface.
    frames: Option<Frames>,
    /// When the header block being read began (milliseconds after
    /// `started`, plus one), 0 when none is open.
    header_block: Arc<AtomicU64>,
}

/// Frame boundaries of an HTTP/2 stream as it is read (RFC 9113 §4.1): a
/// 9-byte header (24-bit length, type, flags, stream) and its payload.
#[derive(Default)]
struct Frames {
    header: [u8; 9],
    /// Bytes of `header` read so far.
    have: usize,
    /// Bytes of the current frame's payload still to come.
    payload_left: usize,
}

/// HTTP/2 frame types and the flag that ends a header block (RFC 9113
/// §6.2, §6.10).
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl Frames {
    /// Reads on through `bytes`, telling `frame` the type and flags of
    /// each frame whose header is complete.
    fn feed(&mut self, mut bytes: &[u8], mut frame: impl FnMut(u8, u8)) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (self.header.len() - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == self.header.len() {
                let h = self.header;
                self.have = 0;
                self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                frame(h[3], h[4]);
            }
        }
    }
}

impl<I> Watched<I> {
    fn touch(&self) {
        self.activity
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn note_head(&mut self, read: &[u8]) {
        if self.frames.is_some() {
            self.note_frames(read);
            return;
        }
        if self.head.len() == PREFACE.len() || self.decided.load(Ordering::Relaxed) {
            return;
        }
        let room = PREFACE.len() - self.head.len();
        self.head.extend_from_slice(&read[..read.len().min(room)]);
        if self.head.len() == PREFACE.len() || !PREFACE.starts_with(&self.head) {
            self.decided.store(true, Ordering::Relaxed);
        }
        if self.head == PREFACE {
            self.frames = Some(Frames::default());
            self.note_frames(&read[read.len().min(room)..]);
        }
    }

    /// Notes when a header block begins and ends.
    fn note_frames(&mut self, read: &[u8]) {
        let (Some(frames), block) = (self.frames.as_mut(), &self.header_block) else {
            return;
        };
        let now = self.started.elapsed().as_millis() as u64 + 1;
        frames.feed(read, |kind, flags| {
            let ended = flags & END_HEADERS != 0;
            match kind {
                HEADERS | CONTINUATION if ended => block.store(0, Ordering::Relaxed),
                HEADERS => block.store(now, Ordering::Relaxed),
                _ => {}
            }
        });
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
            self.note_head(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS acceptor for the certificate chain and key in these PEM files,
/// offering HTTP/2 and HTTP/1.1 by ALPN.
///
/// # Errors
///
/// When a file cannot be read or holds no usable certificate or key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, crate::tls::TlsError> {
    crate::tls::server_config(cert, key).map(tokio_rustls::TlsAcceptor::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut bytes = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn frames_are_told_apart_however_the_reads_cut_them() {
        let mut stream = frame(0x4, 0, &[0; 6]); // SETTINGS
        stream.extend(frame(HEADERS, 0, &[0x82; 300]));
        stream.extend(frame(CONTINUATION, 0, &[0x84]));
        stream.extend(frame(CONTINUATION, END_HEADERS, &[]));
        for cut in [1, 2, 7, 9, 10, 64, stream.len()] {
            let mut frames = Frames::default();
            let mut seen = Vec::new();
            for read in stream.chunks(cut) {
                frames.feed(read, |kind, flags| seen.push((kind, flags)));
            }
            assert_eq!(
                seen,
                [
                    (0x4, 0),
                    (HEADERS, 0),
                    (CONTINUATION, 0),
                    (CONTINUATION, END_HEADERS)
                ],
                "reads of {cut}"
            );
        }
    }
}
