//! The paywall as a tower [`Layer`]: every request has its target
//! normalized and its credentials stripped; a request to a priced service
//! is served only once paid, with a `Payment-Receipt`.
//!
//! Pay for success: a single-use payment counts as spent once the wrapped
//! service has the request, unless it fails: a 5xx or an error of the
//! wrapped service leaves the payment unspent, and the client retries
//! without paying again. A client that leaves after the request was handed
//! on (before the answer, or while it streams) has spent it: the upstream
//! may have acted on the request, and a released payment would buy any
//! number of upstream calls, each cut off before its answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use gate402_mpp::accept::AcceptPayment;
use gate402_mpp::lightning::{CHARGE, METHOD};
use gate402_mpp::problem::ProblemType;
use gate402_mpp::session::SESSION;
use gate402_mpp::verify::ChargeCredential;
use http::header::CACHE_CONTROL;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::body::{binds_body, read_whole, BodyError, BoxError};
use crate::claims::{Claim, ClaimError, ClaimKey};
use crate::client::{client_addr, ClientAddr, PeerAddr};
use crate::credentials::{
    self, CredentialField, CredentialScheme, Presented, PAYMENT_AUTHORIZATION_NAME,
};
use crate::detached::Detached;
use crate::idempotency::{self, Keep, Partial, Read};
use crate::issue::{Binding, Doors};
use crate::meter::{self, Metered, MeteredBody, UsageScan};
use crate::paywall::Paywall;
use crate::responses::{self, Refusal};
use crate::route::{request_host, RequestPath};
use crate::route::{Auth, Meter, PricedService, Sells};
use crate::sessions::{Halt, Hold, Step};
use crate::verify::{Verified, Verifier};
use gate402_store::AfterFailure;

/// `Request-Range`, the range field of an old draft of HTTP/1.1.
const REQUEST_RANGE: http::HeaderName = http::HeaderName::from_static("request-range");

/// What a request to a service metered by its answer's body may not ask
/// of the upstream: an encoding (its events and report could not be read)
/// or a part.
const UNMETERABLE_ASKS: [http::HeaderName; 4] = [
    http::header::ACCEPT_ENCODING,
    http::header::RANGE,
    http::header::IF_RANGE,
    REQUEST_RANGE,
];

/// Put into a request's extensions by the paywall: the priced service it
/// was routed to and the host it named. The request's URI path is then
/// the normalized one, which is what a proxy forwards.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The service.
    pub service: Arc<PricedService>,
    /// The host the request named, in normal form.
    pub host: Option<String>,
    /// The path matched, in normal form, with what the route names spelled
    /// as the route spells it ([`crate::route::PathPattern::respell`]): the one to price
    /// and forward.
    pub path: RequestPath,
}

/// Put into a response's extensions by the service behind the paywall
/// when the request never reached the upstream (it could not be
/// connected to, or the service was removed on the way): the payment is
/// given back without counting as one of the upstream's failures on it
/// ([`crate::claims::FAILURES_PER_PAYMENT`]), whatever the status.
#[derive(Debug, Clone, Copy)]
pub struct NotReached;

/// Put into a response's extensions by the service behind the paywall
/// when the upstream had the request only in part: its body, as the
/// client sent it, broke off or did not parse on the way. Whatever the
/// status (the client's fault, a `400`), it counts as one of the
/// upstream's failures on the payment
/// ([`crate::claims::FAILURES_PER_PAYMENT`]): the upstream may have acted
/// on what it read, and a client that keeps cutting its uploads short
/// must not buy any number of runs with one payment.
#[derive(Debug, Clone, Copy)]
pub struct PartlySent;

/// Put by the paywall into the extensions of a request that spends (a
/// payment, a debit, a counted free call): tells the service behind it
/// when the request's client has left (hyper dropped the request) while
/// the call goes on, so that what it spends is settled by what the
/// upstream made of it. A request not yet sent when its client
/// left should not be sent at all (answered with [`NotReached`]): the
/// upstream's answer would reach nobody, and the payment be spent on it.
#[derive(Debug, Clone)]
pub struct ClientPresence(tokio_util::sync::CancellationToken);

impl ClientPresence {
    /// Resolves once the client has left; never while it waits.
    pub async fn left(&self) {
        self.0.cancelled().await;
    }

    /// Puts a presence into `request`; the client counts as gone once the
    /// guard is dropped (with the request's future, when the client
    /// leaves; or once the call is over, when nothing listens any more).
    fn put_in<B>(request: &mut Request<B>) -> tokio_util::sync::DropGuard {
        let presence = tokio_util::sync::CancellationToken::new();
        request
            .extensions_mut()
            .insert(ClientPresence(presence.clone()));
        presence.drop_guard()
    }
}

/// Put into a request's extensions by the paywall when no service takes
/// it under its method but some service takes its path under others
/// (these, in the order configured): a server answers `405` with them as
/// `Allow` (RFC 9110 §15.5.6) rather than `404`.
#[derive(Debug, Clone)]
pub struct OtherMethods(pub Vec<http::Method>);

/// Put into a request's extensions once it was admitted to the unpaid
/// invoice it asks for: its challenge does not count it again.
#[derive(Debug, Clone, Copy)]
struct UnpaidAdmitted;

/// [`Layer`] that puts the paywall in front of a service.
#[derive(Clone, Debug)]
pub struct PaywallLayer(Paywall);

impl PaywallLayer {
    /// The layer of `paywall`.
    pub fn new(paywall: Paywall) -> Self {
        Self(paywall)
    }
}

impl<S> Layer<S> for PaywallLayer {
    type Service = PaywallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaywallService {
            paywall: self.0.clone(),
            inner,
        }
    }
}

/// What a paid request spends: a claimed payment (or `Idempotency-Key`),
/// a debit from a balance, or both. Dropped before the upstream has the
/// request, both are given back.
#[derive(Debug, Default)]
pub(crate) struct Spend {
    claim: Option<Claim>,
    hold: Option<Hold>,
    /// For a payment's own claim: what the books record if its
    /// upstream's failures spend it unserved (boxed: a spend travels with
    /// every paid answer's body).
    unserved: Option<Box<Unserved>>,
}

/// A payment that its upstream's failures may spend before it served
/// anything: the node kept the money, so it is recorded as a payment that
/// served no request (revenue, the admin API's payments), not left out.
/// Its record is made only then: no text is copied for the usual request.
#[derive(Debug)]
struct Unserved {
    paywall: Paywall,
    service: Arc<PricedService>,
    scheme: &'static str,
    payment_hash: [u8; 32],
}

impl meter::FirstEvent for Spend {
    fn give_back(self) {
        self.fail_broken_answer();
    }
}

impl Spend {
    /// Neither a claim nor a debit: a pass, reusable until it expires.
    fn spends_nothing(&self) -> bool {
        self.claim.is_none() && self.hold.is_none()
    }

    fn served(mut self) -> Self {
        Self {
            claim: self.claim.take().map(Claim::served),
            hold: self.hold.take().map(Hold::served),
            unserved: self.unserved.take(),
        }
    }

    /// Spends what the request holds, written to the store before this is
    /// ready (see [`Claim::commit_written`]): a paid answer's last bytes
    /// wait for it, and go only when it was written (`true`).
    async fn settle(mut self) -> bool {
        if let Some(both) = self.spend_together() {
            return both.await;
        }
        let claim = async {
            match self.claim.take() {
                Some(claim) => claim.commit_written().await,
                None => true,
            }
        };
        let hold = async {
            match self.hold.take() {
                Some(hold) => hold.settle().await,
                None => true,
            }
        };
        let (claim, hold) = tokio::join!(claim, hold);
        claim && hold
    }

    /// A claim and a debit both held (a keyed request on a balance) are
    /// spent in one write, started now: a crash between two writes left
    /// the claim spent and the debit held, given back at the next start
    /// while the key's kept answer was replayed, a unit served free.
    /// Ready with whether it was written and the claim still held.
    fn spend_together(&mut self) -> Option<impl Future<Output = bool> + Send + 'static> {
        if self.claim.is_none() || self.hold.is_none() {
            return None;
        }
        let (claim, hold) = (self.claim.take()?, self.hold.take()?);
        let (debit, kept_msat) = hold.into_kept();
        Some(claim.commit_with_debit(debit, kept_msat))
    }

    async fn release(mut self) {
        if let Some(claim) = self.claim.take() {
            claim.release().await;
        }
        if let Some(hold) = self.hold.take() {
            hold.release().await;
        }
    }

    /// [`Spend::fail`] for an answer that broke off while it was sent
    /// (the upstream's connection closed mid-body, or its body failed):
    /// not served, so not spent on the first such failure. Run on a task of
    /// its own, since a body's poll cannot wait for the store.
    fn fail_broken_answer(self) {
        tracing::warn!("the upstream's answer broke off while it was sent; counted as the upstream failing on this payment");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                self.fail().await;
            });
        }
    }

    /// The upstream had the request and failed: the payment is given back
    /// unless this was its last allowed failure. True when it was.
    async fn fail(mut self) -> bool {
        let claim_unspent = match self.claim.take() {
            Some(claim) => match claim.fail().await {
                AfterFailure::Released => true,
                AfterFailure::Spent => {
                    if let Some(u) = self.unserved.take() {
                        u.paywall
                            .record_unserved(&u.service, u.scheme, &u.payment_hash);
                    }
                    false
                }
                AfterFailure::NotHeld => false,
            },
            None => true,
        };
        let hold_unspent = match self.hold.take() {
            Some(hold) => hold.fail().await,
            None => true,
        };
        claim_unspent && hold_unspent
    }
}

impl Drop for Spend {
    /// Served and dropped (its client left mid-answer): spent as
    /// [`Spend::settle`] spends it, a claim and a debit in one write.
    /// Otherwise each is given back or kept as it drops.
    fn drop(&mut self) {
        let served = self.claim.as_ref().is_some_and(Claim::commits_on_drop)
            && self.hold.as_ref().is_some_and(Hold::keeps_on_drop);
        if served {
            drop(self.spend_together());
        }
    }
}

/// What a paid request with an `Idempotency-Key` comes to.
enum Kept {
    /// Serve it, keeping its response when there is a key to keep it by.
    Serve(Option<Keep>),
    /// Its response was kept: here it is again.
    Replay(Response<Bytes>),
}

/// The paywall around an inner service.
#[derive(Clone, Debug)]
pub struct PaywallService<S> {
    paywall: Paywall,
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PaywallService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + Unpin + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<PaywallBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Take the service that was polled ready; leave a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let paywall = self.paywall.clone();
        let span = crate::observe::request_span(&request);
        let head = request.method() == http::Method::HEAD;
        Box::pin(async move {
            // In a box of its own: the paywall's future is several KiB,
            // and held inline it made this one as big, copied whole when
            // it was built and boxed (a quarter of the free route's
            // instructions, counted by `scripts/instructions`).
            let answer = Box::pin(paywall.handle(request, inner))
                .instrument(span.clone())
                .await;
            crate::observe::responded(&span, answer.as_ref().ok().map(Response::status));
            if head {
                answer.map(PaywallBody::headless)
            } else {
                answer
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body: the wrapped service's (holding what the request
    /// spends, a claim or a debit, committed once it has been sent), or the
    /// paywall's own answer.
    pub struct PaywallBody<B> {
        // Dropped before `spend`: a usage scan cut short sets its units
        // before the spend is settled.
        #[pin]
        inner: Inner<B>,
        spend: Option<Spend>,
        // The answer's end, held while its spend is written.
        settling: Option<Settling>,
        // A data frame of an answer of unknown length, held back for at
        // most HOLD_FOR: if the end comes meanwhile (it mostly comes with
        // the last data), the spend is written before that frame leaves,
        // as for an answer of known length.
        held: Option<HeldFrame>,
        // The held frame's time, kept for the next one.
        hold_timer: Option<Pin<Box<tokio::time::Sleep>>>,
        // What the wrapped body gave after a held frame (`None`: its end),
        // to give on the next poll.
        next: Option<Option<Result<Frame<Bytes>, BoxError>>>,
    }
}

/// The answer's last frame or end, as the wrapped body gave it, once what
/// it spends was written; an error instead when that could not be written
/// (a stop with the store out of reach): the client does not get the
/// whole answer, so that the payment, given back at the next start, is not
/// served twice.
fn last_unless_unwritten(
    last: Option<Result<Frame<Bytes>, BoxError>>,
    written: bool,
) -> Option<Result<Frame<Bytes>, BoxError>> {
    if written {
        return last;
    }
    Some(Err(
        "the payment's spend could not be written; the answer is cut short".into(),
    ))
}

/// A data frame held back to see whether the answer's end follows it.
struct HeldFrame {
    frame: Frame<Bytes>,
    /// Whether the hold timer runs for it.
    timed: bool,
}

/// How long a held frame waits for the next frame or the end before it
/// leaves anyway. A time, not a count of the runtime's turns: on a busy
/// machine the upstream connection's task, which brings the end written
/// with the last data, may not run for a few milliseconds. A stream that
/// pauses has each pause's last event delayed by at most this.
const HOLD_FOR: std::time::Duration = std::time::Duration::from_millis(25);

/// The last frame of a paid answer (or its end), held until what the
/// request spends is written to the store: a gateway killed once its
/// client has the whole answer has spent the payment.
struct Settling {
    /// Whether it was written.
    written: Pin<Box<dyn Future<Output = bool> + Send>>,
    /// The frame, or the end (`None`), as the wrapped body gave it.
    last: Option<Result<Frame<Bytes>, BoxError>>,
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Wrapped { #[pin] body: B },
        Own { bytes: Option<Bytes> },
        // Read in part to be kept, then not: what was read, then the rest.
        Partial { partial: Partial<B> },
        // An event stream charged per event, passed on by its meter.
        Metered { metered: MeteredBody },
        // Read as it passes for the units it reports.
        Scanned { #[pin] body: B, scan: UsageScan },
    }
}

impl<B> Inner<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// The next frame of the answer; a usage scan reads it as it passes.
    fn poll_next_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match self.project() {
            InnerProj::Wrapped { body } => body.poll_frame(cx),
            InnerProj::Own { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            InnerProj::Partial { partial } => partial.poll_frame(cx),
            InnerProj::Scanned { mut body, scan } => {
                let polled = body.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            scan.feed(data);
                        }
                        // A body of known length ends with its last frame:
                        // hyper does not poll it again.
                        if body.is_end_stream() {
                            scan.finish();
                        }
                    }
                    Poll::Ready(None) => scan.finish(),
                    _ => {}
                }
                polled
            }
            InnerProj::Metered { metered } => {
                return std::pin::Pin::new(metered)
                    .poll_next(cx)
                    .map(|b| b.map(|b| b.map(Frame::data)));
            }
        };
        polled.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    /// Whether its data frames may be held back for the end ([`HOLD_FOR`]):
    /// the upstream's answer, of unknown length. (One of known length ends
    /// with its last frame; a metered stream is charged as it goes.)
    fn holds_frames(&self) -> bool {
        match self {
            Inner::Wrapped { body } | Inner::Scanned { body, .. } => {
                body.size_hint().exact().is_none()
            }
            Inner::Partial { partial } => partial.size_hint().exact().is_none(),
            Inner::Own { .. } | Inner::Metered { .. } => false,
        }
    }
}

impl<B: Body<Data = Bytes>> Inner<B> {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Wrapped { body } => body.is_end_stream(),
            Inner::Own { bytes } => bytes.is_none(),
            Inner::Partial { partial } => partial.is_end_stream(),
            Inner::Metered { .. } => false,
            Inner::Scanned { body, .. } => body.is_end_stream(),
        }
    }
}

impl<B> PaywallBody<B> {
    /// `inner`, spending `spend` once it has been sent.
    fn of(inner: Inner<B>, spend: Option<Spend>) -> Self {
        Self {
            inner,
            spend,
            settling: None,
            held: None,
            hold_timer: None,
            next: None,
        }
    }

    fn partial(partial: Partial<B>, spend: Option<Spend>) -> Self {
        Self::of(Inner::Partial { partial }, spend)
    }

    fn scanned(body: B, scan: UsageScan, spend: Option<Spend>) -> Self {
        Self::of(Inner::Scanned { body, scan }, spend)
    }

    fn metered(metered: MeteredBody) -> Self {
        Self::of(Inner::Metered { metered }, None)
    }

    fn wrapped(body: B, spend: Option<Spend>) -> Self {
        Self::of(Inner::Wrapped { body }, spend)
    }

    fn own(bytes: Bytes) -> Self {
        let bytes = (!bytes.is_empty()).then_some(bytes);
        Self::of(Inner::Own { bytes }, None)
    }
}

/// Its errors are boxed: an event stream the upstream cuts off is cut off
/// for the client with the upstream's error, which the meter passes on
/// from the task that charges it.
impl<B> Body for PaywallBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(settling) = this.settling.as_mut() {
                let written = std::task::ready!(settling.written.as_mut().poll(cx));
                let last = this.settling.take().and_then(|s| s.last);
                return Poll::Ready(last_unless_unwritten(last, written));
            }
            let polled = match this.next.take() {
                Some(next) => Poll::Ready(next),
                None => this.inner.as_mut().poll_next_frame(cx),
            };
            let mut last_held = false;
            let polled = match (this.held.take(), polled) {
                (None, polled) => polled,
                (Some(held), Poll::Pending) => {
                    let deadline = || tokio::time::Instant::now() + HOLD_FOR;
                    let timer = match this.hold_timer {
                        Some(timer) if held.timed => timer,
                        Some(timer) => {
                            timer.as_mut().reset(deadline());
                            timer
                        }
                        None => this
                            .hold_timer
                            .insert(Box::pin(tokio::time::sleep_until(deadline()))),
                    };
                    // The end has not come in time: the frame goes.
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Ok(held.frame)));
                    }
                    *this.held = Some(HeldFrame {
                        timed: true,
                        ..held
                    });
                    return Poll::Pending;
                }
                (Some(held), Poll::Ready(next)) => {
                    last_held = next.is_none();
                    *this.next = Some(next);
                    Poll::Ready(Some(Ok(held.frame)))
                }
            };
            // All handed over (a body of known length ends with its last
            // frame: hyper does not poll it again): spend the payment before
            // that frame is written, and write the spend first, so that a
            // client holding its whole answer finds its credential spent, not
            // in use, even if this gateway dies the next moment.
            let ended = last_held
                || match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => this.inner.as_ref().get_ref().is_end_stream(),
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(spend) = this.spend.take() {
                            spend.fail_broken_answer();
                        }
                        false
                    }
                    Poll::Pending => false,
                };
            let unspent = this.spend.as_ref().is_some_and(|s| !s.spends_nothing());
            let polled = match polled {
                Poll::Ready(Some(Ok(frame)))
                    if !ended
                        && !last_held
                        && unspent
                        && this.next.is_none()
                        && frame.is_data()
                        && this.inner.as_ref().get_ref().holds_frames() =>
                {
                    *this.held = Some(HeldFrame {
                        frame,
                        timed: false,
                    });
                    continue;
                }
                polled => polled,
            };
            let spend = if ended { this.spend.take() } else { None };
            return match (polled, spend.filter(|s| !s.spends_nothing())) {
                (Poll::Ready(last), Some(spend)) => {
                    let mut written = Box::pin(spend.settle());
                    if let Poll::Ready(written) = written.as_mut().poll(cx) {
                        return Poll::Ready(last_unless_unwritten(last, written));
                    }
                    *this.settling = Some(Settling { written, last });
                    Poll::Pending
                }
                (polled, _) => polled,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not while an end or a frame is held, nor while a spend is
        // unwritten: hyper polls a body that says it is at its end no more.
        self.settling.is_none()
            && self.held.is_none()
            && self.spend.as_ref().is_none_or(Spend::spends_nothing)
            && match &self.next {
                Some(next) => next.is_none(),
                None => self.inner.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Wrapped { body } => body.size_hint(),
            Inner::Own { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Partial { partial } => partial.size_hint(),
            Inner::Metered { .. } => SizeHint::default(),
            Inner::Scanned { body, .. } => body.size_hint(),
        }
    }
}

impl<B> PaywallBody<B> {
    /// An answer to HEAD: a body the paywall wrote (a refusal, a 402, a
    /// kept response) taken out, its length kept ([`crate::head`]). What
    /// the wrapped service wrote is its own to answer HEAD with.
    fn headless(response: Response<Self>) -> Response<Self> {
        let (mut parts, mut body) = response.into_parts();
        if let Inner::Own { bytes } = &mut body.inner {
            let exact = bytes.take().map_or(0, |b| b.len() as u64);
            crate::head::keep_length(parts.status, &mut parts.headers, Some(exact));
        }
        Response::from_parts(parts, body)
    }
}

fn own<B>(response: Response<Bytes>) -> Response<PaywallBody<B>> {
    response.map(PaywallBody::own)
}

/// Whether a request's `Transfer-Encoding` names a coding besides
/// `chunked` (`gzip, chunked`): the server takes off the chunks only, and
/// the still-coded bytes would be forwarded as if they were the body.
fn has_foreign_transfer_coding(headers: &HeaderMap) -> bool {
    crate::fields::list_items(headers, &http::header::TRANSFER_ENCODING)
        .any(|coding| !coding.eq_ignore_ascii_case(b"chunked"))
}

/// Whether a response's body comes in a content coding (gzip, br…).
fn is_encoded(headers: &HeaderMap) -> bool {
    crate::fields::list_items(headers, &http::header::CONTENT_ENCODING)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"))
}

/// Puts `path` (normal form) and the original query into the request's
/// URI, unless it is there already; `false` when the URI cannot hold it.
fn put_path<B>(request: &mut Request<B>, path: &RequestPath) -> bool {
    let uri = request.uri();
    if path.as_str() == uri.path() {
        return true;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.as_str().to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    let Ok(path_and_query) = PathAndQuery::try_from(path_and_query) else {
        return false;
    };
    parts.path_and_query = Some(path_and_query);
    match Uri::from_parts(parts) {
        Ok(uri) => {
            *request.uri_mut() = uri;
            true
        }
        Err(_) => false,
    }
}

/// Said of a request whose normal path cannot be put in its URI.
const UNFORWARDABLE: &str = "the request target cannot be forwarded";

/// `private`, merged into the upstream's `Cache-Control`: a paid answer
/// must never be stored by a shared cache and handed to someone who did
/// not pay (`public` and `s-maxage` are dropped).
fn make_private(headers: &mut HeaderMap) {
    match headers.entry(CACHE_CONTROL) {
        // The usual case: nothing to merge with.
        http::header::Entry::Vacant(field) => {
            field.insert(HeaderValue::from_static("private"));
        }
        http::header::Entry::Occupied(_) => merge_private(headers),
    }
    drop_targeted_cache_fields(headers);
}

/// Merges `private` into the `Cache-Control` directives, less `public`
/// and `s-maxage`.
fn merge_private(headers: &mut HeaderMap) {
    let directives: Vec<String> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_owned())
        .filter(|d| {
            let name = d
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            !d.is_empty() && name != "public" && name != "s-maxage"
        })
        .collect();
    let private = directives.iter().any(|d| {
        let d = d.to_ascii_lowercase();
        d == "private" || d == "no-store"
    });
    let mut merged = directives;
    if !private {
        merged.push("private".into());
    }
    if let Ok(value) = HeaderValue::from_str(&merged.join(", ")) {
        headers.insert(CACHE_CONTROL, value);
    }
}

fn drop_targeted_cache_fields(headers: &mut HeaderMap) {
    // Fields that tell one kind of cache to ignore Cache-Control: CDNs'
    // targeted fields (RFC 9213: CDN-Cache-Control and vendors'
    // *-CDN-Cache-Control), Fastly's Surrogate-Control, Akamai's
    // Edge-Control, nginx's X-Accel-Expires.
    crate::fields::remove_where(headers, |name| {
        let name = name.as_str();
        (name.ends_with("-cache-control") && name != "cache-control")
            || matches!(
                name,
                "surrogate-control" | "edge-control" | "x-accel-expires"
            )
    });
}

/// How many times a pass's first use waits 10 ms for its payment's claim
/// held by another request, before answering `409`.
const PASS_CLAIM_WAITS: u32 = 100;

impl Paywall {
    /// Whether the L402 pass `verified` (one minted with
    /// `<service>_pass_secs`) is still within its period, counted from its
    /// first use ([`crate::pass_period`]); anything else is.
    ///
    /// # Errors
    ///
    /// [`Halt::Refuse`] (402 `payment-expired`, with a fresh challenge)
    /// once the period is over; [`Halt::Answer`] (500, retry) when the
    /// store cannot say when it began: nothing is spent.
    pub(crate) async fn in_pass_period(
        &self,
        service: &PricedService,
        scheme: &'static str,
        verified: &Verified,
    ) -> Result<(), Halt> {
        let Some(secs) = verified.pass_secs else {
            return Ok(());
        };
        let now = crate::clock::unix_now();
        let started = match self.inner.pass_starts.kept(&verified.payment_hash) {
            Some(started) => started,
            None => self.pass_started(service, scheme, verified, now).await?,
        };
        match crate::pass_period::ended(secs, started, now) {
            Some(refusal) => Err(Halt::Refuse(refusal)),
            None => Ok(()),
        }
    }

    /// When the pass `verified` was first used, read from the store or
    /// written there now ([`crate::pass_period::PassStarts::started`]):
    /// once per pass and replica.
    ///
    /// Its invoice buys the pass or one request through another door (an
    /// MPP charge, x402), whichever is used first: a first use takes the
    /// payment's single-use claim and spends it once the start is written,
    /// so that the pass's own first use, on any replica, is told from a
    /// request another door served (whose claim is spent with no pass's
    /// row before it).
    async fn pass_started(
        &self,
        service: &PricedService,
        scheme: &'static str,
        verified: &Verified,
        now: u64,
    ) -> Result<u64, Halt> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "store: cannot read or write when a pass was first used");
            Halt::Answer(responses::payment_unavailable())
        };
        let key = ClaimKey::payment(&verified.payment_hash);
        let mut waited = 0;
        let claim = loop {
            match self
                .inner
                .claims
                .claim(&key, verified.expires_at, None)
                .await
            {
                Ok(claim) => break Some(claim),
                Err(ClaimError::Consumed) => break None,
                // Another first use writing the start, or a request of
                // another door under way: the first is over in moments.
                Err(ClaimError::InFlight) if waited < PASS_CLAIM_WAITS => {
                    waited += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(ClaimError::InFlight) => {
                    return Err(Halt::Answer(responses::in_flight(
                        self.inner.claims.lease(),
                    )))
                }
                Err(ClaimError::Store(e)) => return Err(unavailable(&e)),
            }
        };
        let Some(claim) = claim else {
            let row =
                crate::pass_period::recorded(self.inner.store.as_ref(), &verified.payment_hash)
                    .await
                    .map_err(|e| unavailable(&e))?;
            return match row {
                // Its own first use wrote its row before spending.
                Some(row) if row.scheme == scheme => Ok(self
                    .inner
                    .pass_starts
                    .keep(verified.payment_hash, row.first_served_at.min(now))),
                _ => Err(Halt::Refuse(Refusal::new(
                    StatusCode::PAYMENT_REQUIRED,
                    ProblemType::InvalidChallenge,
                    "this invoice was spent on one request through another door (an MPP charge or x402), so it starts no pass; pay the new challenge",
                ))),
            };
        };
        let first_use = gate402_store::PaymentRecord {
            payment_hash: verified.payment_hash,
            service: service.name.clone(),
            scheme: scheme.to_owned(),
            amount_msat: service.price_sats * 1000,
            at: now,
            served: 0,
        };
        let (started, written) = self
            .inner
            .pass_starts
            .started(self.inner.store.as_ref(), &first_use)
            .await
            .map_err(|e| unavailable(&e))?;
        // Its row's first write: the payment is counted here, not when
        // the count is written after the answer.
        if written {
            self.count_new_payment(&first_use);
        }
        // Dropped unspent on an error above: released. Not recorded as
        // spent: the lease lapses, and the row written keeps the pass.
        if !claim.commit().await {
            tracing::warn!("a pass's first use could not spend its payment at the other doors");
        }
        Ok(started)
    }

    /// The layer to wrap an app or a proxy with.
    pub fn layer(&self) -> PaywallLayer {
        PaywallLayer::new(self.clone())
    }

    /// The client of a request, from its socket peer (our [`PeerAddr`] or
    /// axum's `ConnectInfo`) and, behind trusted proxies, its forwarding
    /// header.
    pub fn client_of<B>(&self, request: &Request<B>) -> Option<ClientAddr> {
        self.client_from(request.extensions(), request.headers())
    }

    /// [`Paywall::client_of`] for a request taken apart.
    pub fn client_from(
        &self,
        extensions: &http::Extensions,
        headers: &HeaderMap,
    ) -> Option<ClientAddr> {
        let peer = extensions
            .get::<PeerAddr>()
            .map(|p| p.0)
            .or_else(|| connect_info(extensions))?;
        Some(client_addr(peer.ip(), headers, &self.inner.trusted_proxies))
    }

    async fn handle<S, ReqBody, ResBody>(
        &self,
        mut request: Request<ReqBody>,
        inner: S,
    ) -> Result<Response<PaywallBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Body<Data = Bytes> + From<Bytes> + Send + Unpin + 'static,
        ReqBody::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let presented = credentials::take(request.headers_mut());
        // Presents a credential: may wait for room to read its body.
        let paid = matches!(presented, Ok(Some(_)));
        crate::route::strip_overrides(request.headers_mut());
        if let Some(method) = crate::route::canonical_method(request.method()) {
            *request.method_mut() = method;
        }
        if has_foreign_transfer_coding(request.headers()) {
            return Ok(own(responses::bad_request(
                "Transfer-Encoding may be chunked alone: another transfer coding (gzip, …) would reach the upstream as the body itself; send Content-Encoding instead",
            )));
        }
        let path = match RequestPath::parse(request.uri().path()) {
            Ok(path) => path,
            Err(e) => return Ok(own(responses::bad_request(&e.to_string()))),
        };
        let host = match request_host(request.uri(), request.headers()) {
            Ok(host) => host,
            Err(e) => return Ok(own(responses::bad_request(&e.to_string()))),
        };
        if crate::route::echoes_request(request.method()) {
            let allowed = self.routes().allowed(host.as_deref(), &path);
            return Ok(own(responses::method_not_allowed(
                request.method(),
                &allowed,
            )));
        }
        if !put_path(&mut request, &path) {
            return Ok(own(responses::bad_request(UNFORWARDABLE)));
        }
        let client = self.client_of(&request);
        if let Some(client) = client {
            request.extensions_mut().insert(client);
        }
        let routes = self.routes();
        if request.method().as_str().eq_ignore_ascii_case("POST")
            && routes.method_decides(host.as_deref(), &path)
        {
            if let Err(answer) = self.refuse_method_override(&mut request, paid).await {
                return Ok(own(answer));
            }
        }
        let service = match routes.find(host.as_deref(), request.method(), &path) {
            Ok(Some(service)) => service.clone(),
            Ok(None) => {
                let allowed = routes.allowed(host.as_deref(), &path);
                if !allowed.is_empty() {
                    request.extensions_mut().insert(OtherMethods(allowed));
                }
                return call(inner, request).await;
            }
            Err(e) => return Ok(own(responses::bad_request(&e.to_string()))),
        };
        // Priced, forwarded and logged as the route spells what it names.
        let path = service.path.respell(&path).unwrap_or(path);
        if !put_path(&mut request, &path) {
            return Ok(own(responses::bad_request(UNFORWARDABLE)));
        }
        crate::observe::routed(request.method(), &service);
        request.extensions_mut().insert(Routed {
            service: service.clone(),
            host,
            path,
        });
        let client_key = client.map(|c| c.key());
        if let Err(limited) = self.admit(client_key, &service.name) {
            return Ok(own(responses::too_many_requests(&limited)));
        }
        // A free call needs no price; a request without a credential is
        // admitted to its invoice before it is priced, so that a client
        // over the unpaid cap costs no body read and no pricer call.
        if let (Auth::Freebie(free), Ok(None)) = (service.auth, &presented) {
            let who = client_key.map_or_else(|| "unknown".to_owned(), |k| k.to_string());
            match self.count_freebie(&who, &service.name, free).await {
                Ok(used) if used <= free => {
                    return self
                        .call_free(inner, request, &who, &service.name, free)
                        .await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "store: cannot count a free call");
                    return Ok(own(responses::unavailable("the payment store")));
                }
            }
        }
        // A credential too large to read is answered as no credential.
        let unpaid = matches!(
            presented,
            Ok(None) | Err(credentials::CredentialError::TooLarge(_))
        );
        if unpaid && matches!(service.auth, Auth::On | Auth::Freebie(_)) {
            if let Err(limited) = self.admit_unpaid(client_key) {
                return Ok(own(responses::too_many_requests(&limited)));
            }
            request.extensions_mut().insert(UnpaidAdmitted);
        }
        // This request's price, where it depends on the request: what its
        // challenge asks and what its credential must have paid.
        let service = match self.priced(service, &mut request, paid).await {
            Ok(service) => service,
            Err(answer) => return Ok(own(answer)),
        };
        let presented = match (service.auth, presented) {
            (Auth::Off, _) => return call(inner, request).await,
            (Auth::Disabled, _) => return Ok(own(responses::disabled(&service.name))),
            (_, Err(e)) => {
                let refusal = match e {
                    credentials::CredentialError::TooLarge(_) => Refusal::new(
                        StatusCode::PAYMENT_REQUIRED,
                        ProblemType::MalformedCredential,
                        e.to_string(),
                    ),
                    _ => {
                        self.inner.metrics.rejected(ProblemType::BadRequest.code());
                        return Ok(own(responses::refused(&Refusal::new(
                            StatusCode::BAD_REQUEST,
                            ProblemType::BadRequest,
                            e.to_string(),
                        ))));
                    }
                };
                return Ok(own(self
                    .challenge(&service, &mut request, client, refusal)
                    .await));
            }
            (_, Ok(presented)) => presented,
        };
        let Some(Presented {
            scheme,
            value,
            field,
        }) = presented
        else {
            let refusal = Refusal::payment_required(&service);
            return Ok(own(self
                .challenge(&service, &mut request, client, refusal)
                .await));
        };
        crate::observe::scheme(scheme.name());
        // Whether the request spends from a balance (an MPP session or an
        // L402 token naming one) rather than a payment of its own.
        let mut from_balance = false;
        let verified = match scheme {
            CredentialScheme::L402 => self.verify_l402(&service, &value),
            CredentialScheme::X402 => self.verify_x402(&service, &value).await,
            CredentialScheme::Payment => {
                let arrived_in = (field == CredentialField::PaymentAuthorization)
                    .then_some(PAYMENT_AUTHORIZATION_NAME);
                match Verifier::parse_payment(&value) {
                    Err(refusal) => Err(refusal),
                    Ok(credential) if credential.challenge.intent.as_str() == SESSION => {
                        match self.session_step(&service, &credential).await {
                            Step::Spend(verified) => {
                                from_balance = true;
                                Ok(verified)
                            }
                            Step::Halt(Halt::Refuse(refusal)) => Err(refusal),
                            Step::Halt(Halt::Answer(answer)) => return Ok(own(answer)),
                        }
                    }
                    Ok(credential) => {
                        // The body its challenge may bind: read (up to the
                        // limit) to be checked, then forwarded as read.
                        let bound = credential.challenge.digest.is_some();
                        let body = if bound || binds_body(request.method()) {
                            match read_whole(&mut request, &self.inner.bodies, true).await {
                                Ok(body) => Some(body),
                                // Too large to have been bound when issued.
                                Err(BodyError::TooLarge) if !bound => None,
                                Err(e) => return Ok(own(self.inner.bodies.refusal(e))),
                            }
                        } else {
                            None
                        };
                        // Its request decoded once, for its price and its check.
                        let charge = ChargeCredential::read(&credential);
                        crate::pricing::as_charged(&service, &charge).and_then(|charged| {
                            self.inner.verifier.payment(
                                &charged,
                                &charge,
                                arrived_in,
                                body.as_deref(),
                            )
                        })
                    }
                }
            }
        };
        let verified = match verified.and_then(|verified| self.unrevoked(verified)) {
            Ok(verified) => verified,
            Err(refusal) => {
                self.inner.metrics.rejected(refusal.problem.code());
                return Ok(own(self
                    .challenge(&service, &mut request, client, refusal)
                    .await));
            }
        };
        if let Err(halt) = self
            .in_pass_period(&service, scheme.name(), &verified)
            .await
        {
            // What it was answered within its period is its own.
            if let Ok(Kept::Replay(replayed)) = self.keep(&mut request, &verified).await {
                return Ok(own(replayed));
            }
            return Ok(own(self
                .halt_answer(halt, &service, &mut request, client)
                .await));
        }
        // Paid at least this request's price (a dynamic price), and
        // counted at what it paid.
        let mut service = match self.paid_for(&service, scheme, &value, &verified).await {
            Ok(service) => service,
            Err(Ok(refusal)) => {
                // What it was answered when it paid the price then is its
                // own: a replay under its Idempotency-Key is not priced again.
                if let Ok(Kept::Replay(replayed)) = self.keep(&mut request, &verified).await {
                    return Ok(own(replayed));
                }
                self.inner.metrics.rejected(refusal.problem.code());
                return Ok(own(self
                    .challenge(&service, &mut request, client, refusal)
                    .await));
            }
            Err(Err(answer)) => return Ok(own(answer)),
        };
        let scheme_name = scheme.name();
        crate::observe::payment_hash(&verified.payment_hash);
        if let Some(deposit) = verified.balance {
            // An L402 token naming a balance opens it on first use.
            if let Err(halt) = self.open_balance(&service, &verified, deposit).await {
                return Ok(own(self
                    .halt_answer(halt, &service, &mut request, client)
                    .await));
            }
            from_balance = true;
        }
        let keep = match self.keep(&mut request, &verified).await {
            Ok(Kept::Serve(keep)) => keep,
            Ok(Kept::Replay(replayed)) => {
                // A closed session refuses everything, its kept answers
                // too, through `bearer` as through its L402 token (whose
                // balance is looked up above).
                if from_balance {
                    if let Err(halt) = self.session_open(&verified.payment_hash).await {
                        return Ok(own(self
                            .halt_answer(halt, &service, &mut request, client)
                            .await));
                    }
                }
                return Ok(own(replayed));
            }
            Err(answer) => return Ok(own(answer)),
        };
        // A pass has nothing to claim, unless a response is to be kept for
        // its Idempotency-Key: then the key is claimed, so that two
        // requests with it never both reach the upstream.
        let claim_key = match &keep {
            Some(keep) => Some(keep.claim_key.clone()),
            None => verified
                .single_use
                .then(|| ClaimKey::payment(&verified.payment_hash)),
        };
        // The key of a kept response is remembered as long as the response.
        let claim_ends = keep.as_ref().map_or(verified.expires_at, |k| {
            k.expires_at.max(verified.expires_at)
        });
        let claim = match claim_key {
            None => None,
            Some(claim_key) => match self.claim_under(&claim_key, &verified, claim_ends).await {
                Ok(claim) => Some(claim),
                Err(ClaimError::Store(e)) => {
                    tracing::error!(error = %e, "store: cannot claim a payment");
                    return Ok(own(responses::payment_unavailable()));
                }
                Err(e) => {
                    if let Some(keep) = &keep {
                        if let Some(answer) = self
                            .after_refused_claim(keep, &e, verified.single_use)
                            .await
                        {
                            return Ok(own(answer));
                        }
                    }
                    if matches!(e, ClaimError::InFlight) {
                        return Ok(own(responses::in_flight(self.inner.claims.lease())));
                    }
                    let refusal = Refusal::new(
                        StatusCode::PAYMENT_REQUIRED,
                        ProblemType::InvalidChallenge,
                        e.to_string(),
                    );
                    return Ok(own(self
                        .challenge(&service, &mut request, client, refusal)
                        .await));
                }
            },
        };
        // Spent after the kept response was looked for: a replay spends
        // nothing.
        let hold = if from_balance {
            match self.debit(&service, &verified.payment_hash).await {
                Ok((hold, at_session_price)) => {
                    service = at_session_price;
                    Some(hold)
                }
                Err(halt) => {
                    drop(claim);
                    return Ok(own(self
                        .halt_answer(halt, &service, &mut request, client)
                        .await));
                }
            }
        } else {
            None
        };
        // A payment's own claim (not an Idempotency-Key's under a pass).
        let unserved = (verified.single_use && claim.is_some() && hold.is_none()).then(|| {
            Box::new(Unserved {
                paywall: self.clone(),
                service: service.clone(),
                scheme: scheme_name,
                payment_hash: verified.payment_hash,
            })
        });
        let spend = Spend {
            claim,
            hold,
            unserved,
        };
        if keep.is_none() {
            return self
                .serve(
                    &service,
                    request,
                    inner,
                    scheme_name,
                    &verified,
                    spend,
                    None,
                )
                .await;
        }
        // Detached from the connection: a client that leaves must not stop
        // the answer it paid for from being kept for its retry.
        let paywall = self.clone();
        let serving = async move {
            paywall
                .serve(
                    &service,
                    request,
                    inner,
                    scheme_name,
                    &verified,
                    spend,
                    keep,
                )
                .await
        };
        let task = self.inner.requests.spawn(serving.in_current_span());
        match task.await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, "serving a paid request with an Idempotency-Key failed");
                Ok(own(responses::unavailable("the upstream")))
            }
        }
    }

    /// Refuses a POST that names another method in a `_method` query
    /// parameter or body field ([`crate::route::is_method_override`]): the
    /// upstream would act on a method this request was not routed and
    /// priced by. Reads a form or JSON body for it (within the body limit;
    /// only a request that presents a credential, `paid`, waits for room
    /// in the body budget: an unpaid one finding it spent gets a 503 at
    /// once, so that slow senders filling it hold up no one else's 402).
    async fn refuse_method_override<B>(
        &self,
        request: &mut Request<B>,
        paid: bool,
    ) -> Result<(), Response<Bytes>>
    where
        B: Body<Data = Bytes> + From<Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let refused = || {
            responses::bad_request(&format!(
                "the request names a method in {:?}, which some upstreams act on instead of the request's own: send the method itself",
                crate::route::METHOD_OVERRIDE_PARAM
            ))
        };
        let query = request.uri().query().unwrap_or("");
        if form_urlencoded::parse(query.as_bytes())
            .any(|(name, _)| crate::route::is_method_override(&name))
        {
            return Err(refused());
        }
        if !crate::body::has_fields(request.headers()) {
            return Ok(());
        }
        let body = read_whole(request, &self.inner.bodies, paid)
            .await
            .map_err(|e| self.inner.bodies.refusal(e))?;
        if crate::body::field_names(&body)
            .iter()
            .any(|name| crate::route::is_method_override(name))
        {
            return Err(refused());
        }
        Ok(())
    }

    /// The answer to a request halted before the upstream: its own, or a
    /// refusal with a fresh challenge.
    async fn halt_answer<B>(
        &self,
        halt: Halt,
        service: &PricedService,
        request: &mut Request<B>,
        client: Option<ClientAddr>,
    ) -> Response<Bytes>
    where
        B: Body<Data = Bytes> + From<Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        match halt {
            Halt::Answer(answer) => answer,
            Halt::Refuse(refusal) => {
                self.inner.metrics.rejected(refusal.problem.code());
                self.challenge(service, request, client, refusal).await
            }
        }
    }

    /// Whether the paid request carries an `Idempotency-Key` whose response
    /// is to be kept ([`Kept::Serve`] with it), was kept already
    /// ([`Kept::Replay`]), or is not honoured (`Serve(None)`). Reads the
    /// body whole to fingerprint the request.
    async fn keep<B>(
        &self,
        request: &mut Request<B>,
        verified: &Verified,
    ) -> Result<Kept, Response<Bytes>>
    where
        B: Body<Data = Bytes> + From<Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let config = &self.inner.idempotency;
        // A credential anyone who saw the offer can send (x402 without a
        // preimage) must not fetch what its payer was answered.
        if !config.on() || !verified.proven {
            return Ok(Kept::Serve(None));
        }
        let key = match idempotency::requested(request.headers()) {
            Ok(Some(key)) => key,
            Ok(None) => return Ok(Kept::Serve(None)),
            Err(detail) => return Err(responses::bad_request(detail)),
        };
        let body = match read_whole(request, &self.inner.bodies, true).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                // Served, not kept: a body this large is not read whole.
                tracing::debug!(
                    "a request body too large to fingerprint: its response is not kept"
                );
                return Ok(Kept::Serve(None));
            }
            Err(e) => return Err(self.inner.bodies.refusal(e)),
        };
        let now = crate::clock::unix_now();
        let claim_key = if verified.single_use {
            ClaimKey::payment(&verified.payment_hash)
        } else {
            ClaimKey::idempotent(&verified.payment_hash, &key)
        };
        // Never past the end of the credential: it cannot be presented
        // for the replay then. A session's has no end of its own (0): it is
        // refused once the session closes.
        let ends = match verified.expires_at {
            0 => u64::MAX,
            at => at.max(now),
        };
        let keep = Keep {
            fingerprint: idempotency::fingerprint(request.method(), request.uri(), &body),
            expires_at: now.saturating_add(config.keep_for.as_secs()).min(ends),
            claim_key,
            key,
        };
        match self.kept(&keep).await {
            Ok(Some(replayed)) => Ok(Kept::Replay(replayed)),
            Ok(None) => Ok(Kept::Serve(Some(keep))),
            Err(answer) => Err(answer),
        }
    }

    /// The response kept for `keep`'s key, replayed (or a 422 for another
    /// request under it).
    async fn kept(&self, keep: &Keep) -> Result<Option<Response<Bytes>>, Response<Bytes>> {
        match self
            .store()
            .stored_response(keep.claim_key.as_str(), &keep.key, crate::clock::unix_now())
            .await
        {
            Ok(stored) => Ok(stored.map(|stored| keep.replay(stored))),
            Err(e) => {
                tracing::error!(error = %e, "store: cannot look up a kept response");
                Err(responses::payment_unavailable())
            }
        }
    }

    /// The answer to a request with an `Idempotency-Key` whose claim was
    /// refused: the response kept meanwhile, a 409 while the first request
    /// with the key is served, a 409 when its response was not kept under a
    /// pass; `None` (the usual 402) for a spent single-use payment whose
    /// response was not kept under this key.
    async fn after_refused_claim(
        &self,
        keep: &Keep,
        refused: &ClaimError,
        single_use: bool,
    ) -> Option<Response<Bytes>> {
        match self.kept(keep).await {
            Ok(Some(replayed)) => return Some(replayed),
            Ok(None) => {}
            Err(answer) => return Some(answer),
        }
        match refused {
            ClaimError::InFlight => Some(idempotency::in_progress()),
            ClaimError::Consumed if !single_use => Some(idempotency::not_kept()),
            _ => None,
        }
    }

    /// An event stream from a balance, charged per event as it passes
    /// ([`Metered`]); `paid_first` (the request's own debit, or nothing
    /// when it was given back) is kept until the stream ends.
    fn metered<B, G>(
        &self,
        service: &PricedService,
        verified: &Verified,
        mut parts: http::response::Parts,
        body: B,
        paid_first: G,
    ) -> Response<PaywallBody<B>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        G: meter::FirstEvent,
    {
        let metered = Metered {
            paywall: self.clone(),
            session: verified.payment_hash,
            service: service.name.clone(),
            price_sats: service.price_sats,
            topup_wait: std::time::Duration::from_secs(service.topup_wait_secs),
        };
        // Its length is the meter's to decide now.
        parts.headers.remove(http::header::CONTENT_LENGTH);
        let rx = metered.start(body, paid_first);
        Response::from_parts(parts, PaywallBody::metered(MeteredBody::new(rx)))
    }

    /// Calls the wrapped service for a verified payment; on success adds
    /// the receipt and hands the claim to the body.
    #[allow(clippy::too_many_arguments)]
    async fn serve<S, ReqBody, ResBody>(
        &self,
        service: &Arc<PricedService>,
        mut request: Request<ReqBody>,
        mut inner: S,
        scheme: &'static str,
        verified: &Verified,
        spend: Spend,
        keep: Option<Keep>,
    ) -> Result<Response<PaywallBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let started = Instant::now();
        // Counted as it passes: compressed, its events and reports could
        // not be read, and the client would get them for nothing.
        let reads_body = spend.hold.is_some() && service.meter.reads_body();
        if reads_body {
            // Nor in part: a range leaves out the report (an answer that
            // reports none costs one unit). `Request-Range` is the range
            // of an old draft that Apache httpd and Squid still honour.
            // Each also in its `_` spelling, which a CGI-style upstream
            // reads as the `-` one (`Accept_Encoding: gzip`).
            let headers = request.headers_mut();
            crate::fields::remove_all_of(headers, &UNMETERABLE_ASKS);
            headers.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        // An answer without a body reports nothing, and is never read to
        // an end: not scanned, it costs one unit, not the most held.
        let head = request.method() == http::Method::HEAD;
        // From here the upstream has the request and may act on it: a
        // client that leaves before the answer has spent its payment (else
        // one payment would buy any number of upstream calls, each cut off
        // before its answer). So the call, and what its outcome settles,
        // run to their end even if the client leaves meanwhile: cut off
        // while it waited for a connection, a request the upstream never
        // had would keep its spend, and one it failed on would not be
        // given back.
        let from_balance = spend.hold.is_some();
        let delivered = if spend.spends_nothing() {
            // A pass with no Idempotency-Key claimed: no claim or debit,
            // so a client that leaves loses nothing and leaves nothing to
            // settle. Its call is the request's own, as on a route with
            // `auth = "off"`, and ends with it.
            Delivered::settle(inner.call(request).await, spend.served(), &service.meter).await
        } else {
            let _present = ClientPresence::put_in(&mut request);
            // RFC 9110, section 9.2.2: sent again, no effect beyond the first.
            let repeatable = request.method().is_idempotent();
            let call = inner.call(request);
            let metered = Arc::clone(service);
            let delivered =
                async move { Delivered::settle(call.await, spend.served(), &metered.meter).await };
            // A client that left once the upstream answered has spent its
            // payment (or its balance's debit): the books count it served.
            let (paywall, left_service, hash) =
                (self.clone(), Arc::clone(service), verified.payment_hash);
            let left = move |delivered: Delivered<_, _>| {
                let Delivered::Answered(answer, spend) = delivered else {
                    return;
                };
                // Cut off by this gateway's own stop, not by its client: a
                // request whose repeat does nothing more (a GET) is given
                // back, to be answered on its retry; one that acted (a
                // POST) stays spent, as its retry would act again.
                if repeatable
                    && paywall
                        .inner
                        .stopping
                        .load(std::sync::atomic::Ordering::Relaxed)
                {
                    drop(answer);
                    paywall.inner.requests.spawn(spend.release());
                    return;
                }
                // Usage the answer reports in its body was never read: the
                // most held, as for a client that stops reading.
                if let (Meter::Usage(usage), Some(units)) = (
                    &left_service.meter,
                    spend.hold.as_ref().and_then(Hold::units),
                ) {
                    let reported = meter::header_report(usage, Response::headers(&answer), &units);
                    if !reported && usage.field.is_some() && !head {
                        meter::charge_most(&units);
                    }
                }
                let now = time::OffsetDateTime::now_utc();
                paywall.count_answered(&left_service, scheme, &hash, spend.hold.is_some(), now);
            };
            Detached::new(&self.inner.requests, delivered, left).await
        };
        if !matches!(delivered, Delivered::Errored(_)) {
            self.inner
                .metrics
                .upstream(&service.name, started.elapsed().as_secs_f64());
        }
        let (response, spend) = match delivered {
            Delivered::Errored(e) => return Err(e),
            Delivered::NotReached(response) => {
                return Ok(response.map(|body| PaywallBody::wrapped(body, None)))
            }
            Delivered::Failed { response, unspent } => {
                tracing::warn!(
                    service = %service.name,
                    status = %response.status(),
                    scheme,
                    unspent,
                    "upstream failed; the payment stays unspent unless it failed on it too often"
                );
                if from_balance
                    && service.meter == Meter::Events
                    && meter::is_event_stream(response.headers())
                {
                    // The request's own debit is given back, but the
                    // events a failing upstream streams are content all
                    // the same: each after the first is charged, as in
                    // any stream.
                    let (parts, body) = response.into_parts();
                    return Ok(self.metered(service, verified, parts, body, ()));
                }
                return Ok(response.map(|body| PaywallBody::wrapped(body, None)));
            }
            Delivered::Answered(response, spend) => (response, spend),
        };
        if reads_body && is_encoded(response.headers()) {
            let unspent = spend.fail().await;
            tracing::warn!(
                service = %service.name,
                unspent,
                "the upstream encoded a metered response although it was asked not to: not served"
            );
            return Ok(own(responses::problem(
                StatusCode::BAD_GATEWAY,
                "about:blank",
                "Bad Gateway",
                "the upstream's response came compressed, and what it costs is read from it; it was not served",
                None,
            )));
        }
        let now = time::OffsetDateTime::now_utc();
        // A balance's revenue was counted with its deposit; its receipt
        // names the session.
        self.count_answered(
            service,
            scheme,
            &verified.payment_hash,
            spend.hold.is_some(),
            now,
        );
        let receipt = gate402_mpp::receipt::lightning_header(
            &verified.payment_hash,
            verified.challenge_id.as_deref(),
            now,
        );
        let (mut parts, body) = response.into_parts();
        if let Ok(value) = HeaderValue::from_str(&receipt) {
            parts.headers.insert(gate402_mpp::RECEIPT_HEADER, value);
        }
        if scheme == "x402" {
            if let Ok(value) =
                HeaderValue::from_str(&crate::x402::response_header(&verified.payment_hash))
            {
                parts.headers.insert(gate402_x402::PAYMENT_RESPONSE, value);
            }
        }
        make_private(&mut parts.headers);
        // Usage reported in a header is known now; in the body, once read.
        let units = spend.hold.as_ref().and_then(Hold::units);
        let mut usage_field = None;
        if let (Meter::Usage(usage), Some(units)) = (&service.meter, &units) {
            meter::header_report(usage, &parts.headers, units);
            usage_field = usage.field.clone();
        }
        // An empty body of known length (`Content-Length: 0`) too: hyper
        // sends it whole with the head and never reads it.
        let bodiless = head
            || body.is_end_stream()
            || parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        if spend.hold.is_some()
            && service.meter == Meter::Events
            && meter::is_event_stream(&parts.headers)
            && !bodiless
        {
            return Ok(self.metered(service, verified, parts, body, spend));
        }
        // A part of a body whatever was asked (the range was not passed
        // on): its report cannot be read whole.
        if parts.status == StatusCode::PARTIAL_CONTENT && usage_field.is_some() {
            if let Some(units) = &units {
                meter::charge_most(units);
            }
            usage_field = None;
        }
        let scan = match (usage_field, units) {
            (Some(pointer), Some(units)) if !bodiless => Some(UsageScan::new(
                pointer,
                units,
                meter::is_event_stream(&parts.headers),
            )),
            _ => None,
        };
        let Some(keep) = keep.filter(|_| idempotency::keepable(&parts.headers)) else {
            // An answer with no body is whole with its head: the spend is
            // written before it leaves.
            if bodiless {
                if !spend.settle().await {
                    return Ok(own(responses::payment_unavailable()));
                }
                return Ok(Response::from_parts(
                    parts,
                    PaywallBody::wrapped(body, None),
                ));
            }
            let body = match scan {
                Some(scan) => PaywallBody::scanned(body, scan, Some(spend)),
                None => PaywallBody::wrapped(body, Some(spend)),
            };
            return Ok(Response::from_parts(parts, body));
        };
        match idempotency::read(body, self.inner.idempotency.max_response_bytes).await {
            Read::Whole(bytes) => {
                if let Some(mut scan) = scan {
                    scan.feed(&bytes);
                    scan.finish();
                }
                // Kept before the answer leaves: a client that never gets it
                // finds it on its retry. Its spend is written before it leaves.
                // Replayed only once this claim is spent: not after a
                // restart gave the payment back and it was served again.
                let record = keep.record(
                    parts.status,
                    &parts.headers,
                    &bytes,
                    spend.claim.as_ref().map(Claim::holder_token),
                );
                if let Err(e) = self.store().put_response(&record).await {
                    tracing::error!(error = %e, "store: cannot keep a paid response for its Idempotency-Key");
                }
                if !spend.settle().await {
                    return Ok(own(responses::payment_unavailable()));
                }
                Ok(Response::from_parts(parts, PaywallBody::own(bytes)))
            }
            Read::Partial(partial) => {
                tracing::info!(
                    service = %service.name,
                    "a paid response too large to keep for its Idempotency-Key is served, not kept"
                );
                Ok(Response::from_parts(
                    parts,
                    PaywallBody::partial(partial, Some(spend)),
                ))
            }
            Read::Broken => {
                // Nothing whole to keep or send: the upstream failed, and
                // pays for nothing (the retry runs it again).
                let unspent = spend.fail().await;
                tracing::warn!(service = %service.name, unspent, "the upstream's paid response broke off");
                let detail = if unspent {
                    "the upstream's response broke off; the payment was not spent, retry it"
                } else {
                    "the upstream's response broke off; the upstream failed on this payment too often, and it is spent"
                };
                Ok(own(responses::problem(
                    StatusCode::BAD_GATEWAY,
                    "about:blank",
                    "Bad Gateway",
                    detail,
                    None,
                )))
            }
        }
    }

    /// A fresh invoice and its challenges in a problem response; a 429
    /// when the client holds too many unpaid invoices, a 503 when the
    /// node cannot make one. The MPP challenge names `Payment-Authorization`
    /// when the request's `Authorization` carries something else, and
    /// binds the body of a POST, PUT or PATCH by its digest.
    async fn challenge<B>(
        &self,
        service: &PricedService,
        request: &mut Request<B>,
        client: Option<ClientAddr>,
        refusal: Refusal,
    ) -> Response<Bytes>
    where
        B: Body<Data = Bytes> + From<Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let admitted = request
            .extensions_mut()
            .remove::<UnpaidAdmitted>()
            .is_some();
        if !admitted {
            if let Err(limited) = self.admit_unpaid(client.map(|c| c.key())) {
                return responses::too_many_requests(&limited);
            }
        }
        let accept = request
            .headers()
            .get(gate402_mpp::ACCEPT_PAYMENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| AcceptPayment::parse(v).ok());
        let intent = if service.sells == Sells::Balance {
            SESSION
        } else {
            CHARGE
        };
        let mpp = accept
            .as_ref()
            .is_none_or(|a| a.accepts(METHOD, intent) || !service.schemes.l402());
        // An `Authorization` left after the credentials were taken is the
        // upstream's own (an API key): the credential goes in the other field.
        let header = request
            .headers()
            .contains_key(http::header::AUTHORIZATION)
            .then_some(PAYMENT_AUTHORIZATION_NAME);
        // A body too large to read is not bound; one that broke off, or
        // that finds the body budget spent, gets no challenge at all (one
        // binding no body would refuse this very body when paid: a 503,
        // to come back).
        // A session pays for many requests: no one body is bound to it.
        let digest = if mpp
            && service.schemes.mpp()
            && service.sells != Sells::Balance
            && binds_body(request.method())
        {
            match read_whole(request, &self.inner.bodies, false).await {
                Ok(body) => Some(gate402_mpp::verify::body_digest(&body)),
                // Too large to bind: the challenge pays for one call with a
                // body too large to read.
                Err(BodyError::TooLarge | BodyError::Overflowed) => None,
                // Nothing issued rather than a challenge binding no body,
                // which would then refuse this very body.
                Err(e) => return self.inner.bodies.refusal(e),
            }
        } else {
            None
        };
        let binding = Binding {
            header,
            digest: digest.as_deref(),
            resource: Some(request.uri().path_and_query().map_or("/", |p| p.as_str())),
        };
        match self
            .issue_for(
                service,
                Doors {
                    l402: true,
                    mpp,
                    x402: true,
                },
                binding,
            )
            .await
        {
            Ok(issued) => {
                crate::observe::payment_hash(&issued.payment_hash);
                responses::payment_required(
                    &issued,
                    service,
                    &refusal,
                    accept.is_some(),
                    self.test_money(),
                )
            }
            Err(_) => responses::unavailable("the Lightning node"),
        }
    }
}

impl Paywall {
    /// Counts a free call of `client` on `service` ([`Store::count_freebie`]);
    /// one counted within `free` after its client left is given back
    /// uncounted.
    ///
    /// # Errors
    ///
    /// The store's.
    ///
    /// [`Store::count_freebie`]: gate402_store::Store::count_freebie
    async fn count_freebie(
        &self,
        client: &str,
        service: &str,
        free: u64,
    ) -> Result<u64, gate402_store::StoreError> {
        let (store, client, service) =
            (self.store().clone(), client.to_owned(), service.to_owned());
        let call = {
            let (store, client, service) = (store.clone(), client.clone(), service.clone());
            async move { store.count_freebie(&client, &service).await }
        };
        let tracker = self.inner.background.clone();
        let give_back = move |counted: Result<u64, gate402_store::StoreError>| {
            if matches!(counted, Ok(used) if used <= free) {
                tracker.spawn(async move {
                    if let Err(e) = store.return_freebie(&client, &service, free, false).await {
                        tracing::error!(error = %e, "store: cannot give back a free call");
                    }
                });
            }
        };
        Detached::new(&self.inner.requests, call, give_back).await
    }

    /// Forwards a free call; one that did not succeed is given back (pay
    /// for success, as for paid calls: [`UpstreamOutcome`]): uncounted if
    /// it never reached the upstream, else at most `free` times per client
    /// and service. Run to its end even if the client leaves meanwhile, as
    /// a paid call is ([`Paywall::serve`]).
    async fn call_free<S, ReqBody, ResBody>(
        &self,
        mut inner: S,
        mut request: Request<ReqBody>,
        client: &str,
        service: &str,
        free: u64,
    ) -> Result<Response<PaywallBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResBody: Send + 'static,
    {
        let _present = ClientPresence::put_in(&mut request);
        let call = inner.call(request);
        let (store, client, service) =
            (self.store().clone(), client.to_owned(), service.to_owned());
        let settled = async move {
            let response = call.await;
            let reached = match response.as_ref().map(UpstreamOutcome::of) {
                Ok(UpstreamOutcome::Answered) => return response,
                Ok(UpstreamOutcome::NotReached) => false,
                Ok(UpstreamOutcome::Failed) | Err(_) => true,
            };
            match store.return_freebie(&client, &service, free, reached).await {
                Ok(given_back) if reached => tracing::warn!(
                    service,
                    given_back,
                    "upstream failed on a free call; given back unless it failed on this client's too often"
                ),
                Ok(_) => tracing::warn!(service, "upstream not reached on a free call; given back"),
                Err(e) => tracing::error!(error = %e, "store: cannot give back a free call"),
            }
            response
        };
        let mut response = Detached::new(&self.inner.requests, settled, drop).await?;
        // What a paid service serves free to one client is still sold to
        // the rest: no shared cache may keep it for them.
        make_private(response.headers_mut());
        Ok(response.map(|body| PaywallBody::wrapped(body, None)))
    }
}

/// What the upstream made of a paid request, with its spend settled by
/// that outcome ([`UpstreamOutcome`]).
// One per request and moved once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Delivered<R, E> {
    /// The wrapped service failed: counted as the upstream failing.
    Errored(E),
    /// The upstream never had it: given back, uncounted.
    NotReached(R),
    /// A server error: given back unless the upstream failed on this
    /// payment too often (`unspent` false).
    Failed { response: R, unspent: bool },
    /// An answer: the spend is still held, kept once the answer is sent.
    Answered(R, Spend),
}

impl<B, E> Delivered<Response<B>, E> {
    /// `meter`: the service's, whose usage header a failed answer may
    /// report in too.
    async fn settle(answer: Result<Response<B>, E>, spend: Spend, meter: &Meter) -> Self {
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                spend.fail().await;
                return Self::Errored(e);
            }
        };
        match UpstreamOutcome::of(&response) {
            UpstreamOutcome::NotReached => {
                spend.release().await;
                Self::NotReached(response)
            }
            UpstreamOutcome::Failed => {
                // A failure it makes too many of is kept: at what it used.
                if let (Meter::Usage(usage), Some(units)) =
                    (meter, spend.hold.as_ref().and_then(Hold::units))
                {
                    meter::header_report(usage, response.headers(), &units);
                }
                let unspent = spend.fail().await;
                Self::Failed { response, unspent }
            }
            UpstreamOutcome::Answered => Self::Answered(response, spend),
        }
    }
}

/// What the upstream made of a request: the one rule of pay for success,
/// for paid, free and MCP tool calls alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// It never had the request ([`NotReached`]): given back, uncounted.
    NotReached,
    /// It had the request and answered with a server error, or had only
    /// part of it ([`PartlySent`]): given back, counted among its
    /// failures.
    Failed,
    /// It answered: what was paid is spent.
    Answered,
}

impl UpstreamOutcome {
    /// The outcome `response` (from the service behind the paywall) tells.
    pub fn of<B>(response: &Response<B>) -> Self {
        let extensions = response.extensions();
        if extensions.get::<NotReached>().is_some() {
            Self::NotReached
        } else if response.status().is_server_error() || extensions.get::<PartlySent>().is_some() {
            Self::Failed
        } else {
            Self::Answered
        }
    }
}

async fn call<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<PaywallBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let response = inner.call(request).await?;
    Ok(response.map(|body| PaywallBody::wrapped(body, None)))
}

/// axum's `ConnectInfo<SocketAddr>`, for apps served by `axum::serve`.
#[cfg(feature = "axum")]
fn connect_info(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(not(feature = "axum"))]
fn connect_info(_: &http::Extensions) -> Option<std::net::SocketAddr> {
    None
}
