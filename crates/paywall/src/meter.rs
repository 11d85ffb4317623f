//! Metered event streams (draft-lightning-session-00 §Streaming): a
//! server-sent event stream served from a balance is charged per event, as
//! it flows.
//!
//! The request's own debit pays for the first event; each further event is
//! debited before it is passed on. When the balance runs out the client
//! gets a `payment-need-topup` event (`sessionId`, `balanceSpent`,
//! `balanceRequired`) and the stream is held, upstream and all, until a
//! top-up covers the next event or the wait ends with `session-timeout`.
//! Before the stream ends (and before a closing `data: [DONE]`), a
//! `payment-receipt` event says what it cost (`spent`, `units`).

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gate402_store::{ClaimHolder, Debit};
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::body::BoxError;
use crate::clock::unix_now;
use crate::paywall::Paywall;

/// How often a held stream looks for a top-up.
const TOPUP_POLL: Duration = Duration::from_millis(250);

/// Whether a response is an event stream.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The end of the first whole event in `buffer`: past the line break of
/// the blank line that ends it. Lines end at CRLF, LF or a lone CR
/// (WHATWG HTML, server-sent events, §9.2.6). A CR last in `buffer` may be
/// the first half of a CRLF still to come: it ends its line only `at_end`
/// of the stream.
fn event_end(buffer: &[u8], at_end: bool) -> Option<usize> {
    let mut line_start = 0;
    let mut i = 0;
    while i < buffer.len() {
        let byte = buffer[i];
        if byte != b'\n' && byte != b'\r' {
            i += 1;
            continue;
        }
        let mut next = i + 1;
        if byte == b'\r' {
            match buffer.get(next) {
                Some(b'\n') => next += 1,
                None if !at_end => return None,
                _ => {}
            }
        }
        if i == line_start {
            return Some(next);
        }
        line_start = next;
        i = next;
    }
    None
}

/// The lines of an event, however they end (an empty piece between the
/// halves of a CRLF is an empty line, which says nothing).
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    event.split(|b| *b == b'\n' || *b == b'\r')
}

/// A byte order mark, which a stream may start with (and a reader skips).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Whether an event carries data (comments and keep-alives are free).
fn has_data(event: &[u8]) -> bool {
    lines(event).any(|line| line.strip_prefix(BOM).unwrap_or(line).starts_with(b"data"))
}

/// Whether an event is the `data: [DONE]` that ends an LLM stream: its
/// data is `[DONE]` and nothing else. A reader joins an event's data lines
/// into one message, so `[DONE]` beside other data lines is content, and
/// charged.
fn is_done(event: &[u8]) -> bool {
    let mut data = lines(event).filter_map(|line| {
        let line = line.strip_prefix(BOM).unwrap_or(line);
        match line.strip_prefix(b"data")? {
            [] => Some(&[][..]),
            [b':', b' ', value @ ..] | [b':', value @ ..] => Some(value),
            // Another field whose name starts with "data".
            _ => None,
        }
    });
    data.next() == Some(b"[DONE]") && data.next().is_none()
}

fn sse(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Charges a stream: one event at a time from the session's balance.
pub(crate) struct Metered {
    pub(crate) paywall: Paywall,
    pub(crate) session: [u8; 32],
    pub(crate) service: String,
    pub(crate) price_sats: u64,
    pub(crate) topup_wait: Duration,
}

impl Metered {
    /// Passes `body` on through the returned channel, charging each event
    /// after the first. `paid_first`, the request's own debit that paid for
    /// the first event, is kept when the stream ends, and given back when
    /// the upstream broke the stream off before any event.
    pub(crate) fn start<B, G>(self, body: B, paid_first: G) -> mpsc::Receiver<Passed>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        G: FirstEvent,
    {
        let (tx, rx) = mpsc::channel(16);
        let tracker = self.paywall.inner.background.clone();
        tracker.spawn(async move {
            if self.run(body, tx, G::PAID).await {
                paid_first.give_back();
            }
        });
        rx
    }

    /// True when the upstream broke the stream off before any event:
    /// the request's own debit, which paid for the first, is given back.
    /// `first_paid`: whether that debit stands (it was given back already
    /// for a failing upstream's stream).
    async fn run<B>(&self, body: B, tx: mpsc::Sender<Passed>, first_paid: bool) -> bool
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut body = Box::pin(body);
        let mut buffer = BytesMut::new();
        let mut units = Tally {
            events: 0,
            first_paid,
        };
        // What the upstream broke off with: what was charged stands.
        let mut cut: Option<BoxError> = None;
        loop {
            let frame = match body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    cut = Some(e.into());
                    break;
                }
                None => break,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = event_end(&buffer, false) {
                let event = buffer.split_to(end).freeze();
                if !self.pass(event, &mut units, &tx).await {
                    return false;
                }
            }
        }
        while let Some(end) = event_end(&buffer, true) {
            let event = buffer.split_to(end).freeze();
            if !self.pass(event, &mut units, &tx).await {
                return false;
            }
        }
        // An event the stream ended in the middle of is charged as one
        // (a reader that is no browser takes it), and ended, so that the
        // receipt is an event of its own. One the upstream broke off in is
        // neither passed on nor charged.
        if !buffer.is_empty() && cut.is_none() {
            buffer.extend_from_slice(b"\n\n");
            if !self.pass(buffer.freeze(), &mut units, &tx).await {
                return false;
            }
        }
        // Nothing passed before the break: nothing is charged.
        let unpaid = cut.is_some() && units.events == 0;
        let charged = if unpaid { 0 } else { units.charged() };
        let _ = tx.send(Ok(self.receipt(charged))).await;
        // Broken off for the client too, after its receipt: a stream that
        // ends cleanly would read as whole.
        if let Some(e) = cut {
            let _ = tx.send(Err(e)).await;
        }
        unpaid
    }

    /// Passes one whole event on, charging it if it carries data (the
    /// first was paid with the request). False: the stream ends here (it
    /// was its `[DONE]`, no top-up came, or the client left).
    async fn pass(&self, event: Bytes, units: &mut Tally, tx: &mpsc::Sender<Passed>) -> bool {
        if has_data(&event) {
            if is_done(&event) {
                let _ = tx.send(Ok(self.receipt(units.charged()))).await;
                let _ = tx.send(Ok(event)).await;
                return false;
            }
            if units.events > 0 && !self.charge(tx).await {
                // Ended for want of a top-up: still told its cost.
                let _ = tx.send(Ok(self.receipt(units.charged()))).await;
                return false;
            }
            units.events += 1;
        }
        // The client left: nothing more is charged.
        tx.send(Ok(event)).await.is_ok()
    }

    /// Debits one event; when the balance is out, asks for a top-up and
    /// holds the stream until one covers it. False: the stream ends (no
    /// top-up in time, the session closed, or the client left).
    async fn charge(&self, tx: &mpsc::Sender<Passed>) -> bool {
        let store = self.paywall.store();
        let price_msat = self.price_sats.saturating_mul(1000);
        let deadline = tokio::time::Instant::now() + self.topup_wait;
        let mut asked = false;
        loop {
            let holder = ClaimHolder {
                replica: self.paywall.inner.claims.replica().to_owned(),
                token: hex::encode(rand::random::<[u8; 16]>()),
            };
            let spent_msat = match store
                .debit(
                    &self.session,
                    &self.service,
                    1,
                    price_msat,
                    &holder,
                    unix_now(),
                )
                .await
            {
                Ok(Debit::Done { .. }) => {
                    // Kept at once: the event goes out now.
                    if let Err(e) = store.settle_debit(&holder, None, unix_now()).await {
                        tracing::warn!(error = %e, "store: cannot settle a stream's debit");
                    }
                    return true;
                }
                Ok(Debit::Insufficient { spent_msat, .. }) => spent_msat,
                Ok(Debit::Closed | Debit::NotFound) => {
                    // Closed meanwhile: what it spent is on its record.
                    let spent_msat = match store.session(&self.session).await {
                        Ok(Some(session)) => session.spent_msat,
                        _ => 0,
                    };
                    let _ = tx.send(Ok(self.timeout_event(spent_msat / 1000))).await;
                    return false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store: cannot charge a stream's event");
                    0
                }
            };
            if !asked {
                asked = true;
                let need = sse(
                    "payment-need-topup",
                    &json!({
                        "sessionId": hex::encode(self.session),
                        "balanceSpent": spent_msat / 1000,
                        "balanceRequired": self.price_sats,
                    }),
                );
                if tx.send(Ok(need)).await.is_err() {
                    return false;
                }
            }
            // Out of time, or its session is being closed here: no top-up
            // is coming.
            if tokio::time::Instant::now() >= deadline || self.paywall.is_closing(&self.session) {
                let _ = tx.send(Ok(self.timeout_event(spent_msat / 1000))).await;
                return false;
            }
            if tx.is_closed() {
                return false;
            }
            tokio::time::sleep(TOPUP_POLL).await;
        }
    }

    fn timeout_event(&self, spent_sats: u64) -> Bytes {
        sse(
            "session-timeout",
            &json!({
                "sessionId": hex::encode(self.session),
                "balanceSpent": spent_sats,
                "balanceRequired": self.price_sats,
            }),
        )
    }

    /// The `payment-receipt` event of a stream charged `units` events.
    fn receipt(&self, units: u64) -> Bytes {
        sse(
            "payment-receipt",
            &json!({
                "method": "lightning",
                "reference": hex::encode(self.session),
                "status": "success",
                "timestamp": gate402_mpp::format_time(time::OffsetDateTime::now_utc()),
                "spent": units.saturating_mul(self.price_sats),
                "units": units,
            }),
        )
    }
}

/// The events a stream passed on, and what they cost.
struct Tally {
    /// Events with data passed on.
    events: u64,
    /// Whether the request's own debit paid for the first.
    first_paid: bool,
}

impl Tally {
    /// Events charged: the first is paid by the request's debit (which
    /// stands even for a stream without any), or free when that debit was
    /// given back (a failing upstream's stream).
    fn charged(&self) -> u64 {
        if self.first_paid {
            self.events.max(1)
        } else {
            self.events.saturating_sub(1)
        }
    }
}

/// What the charging task passes on: the stream's bytes, then the
/// upstream's error if it broke off.
pub(crate) type Passed = Result<Bytes, BoxError>;

/// What paid for a stream's first event (the request's own debit), given
/// back when the upstream broke the stream off before any.
pub(crate) trait FirstEvent: Send + 'static {
    /// Whether it was paid (false: given back already, the first event
    /// free).
    const PAID: bool = true;

    /// Gives it back, as for the upstream failing on it.
    fn give_back(self);
}

/// Given back already (a failing upstream's stream).
impl FirstEvent for () {
    const PAID: bool = false;
    fn give_back(self) {}
}

/// The body of a metered stream: what the charging task passes on.
pub(crate) struct MeteredBody {
    rx: mpsc::Receiver<Passed>,
    /// The upstream's error, held back for one poll: a server that finds
    /// its body failed drops the connection at once, with whatever it has
    /// not yet written (the receipt just before it).
    held: Option<BoxError>,
}

impl MeteredBody {
    pub(crate) fn new(rx: mpsc::Receiver<Passed>) -> Self {
        Self { rx, held: None }
    }

    pub(crate) fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Passed>> {
        let this = self.get_mut();
        if let Some(e) = this.held.take() {
            return std::task::Poll::Ready(Some(Err(e)));
        }
        match this.rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(Err(e))) => {
                // Pending once, so that what came before is written first.
                this.held = Some(e);
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            polled => polled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_counts_the_events_charged() {
        let tally = |events, first_paid| Tally { events, first_paid }.charged();
        // The request's debit paid for the first, even without any.
        assert_eq!((tally(0, true), tally(1, true), tally(4, true)), (1, 1, 4));
        // Given back (a failing upstream): the first is free.
        assert_eq!(
            (tally(0, false), tally(1, false), tally(4, false)),
            (0, 0, 3)
        );
    }

    #[test]
    fn events_are_cut_at_blank_lines() {
        let stream =
            b"data: a\n\n: keep-alive\n\nevent: x\r\ndata: b\r\n\r\ndata: [DONE]\n\npartial";
        let mut rest: &[u8] = stream;
        let mut events = Vec::new();
        while let Some(end) = event_end(rest, false) {
            events.push(&rest[..end]);
            rest = &rest[end..];
        }
        assert_eq!(events.len(), 4);
        assert!(has_data(events[0]));
        assert!(!has_data(events[1]), "a comment is free");
        assert!(has_data(events[2]));
        assert!(is_done(events[3]));
        assert_eq!(rest, b"partial");
    }

    /// Only an event whose whole data is `[DONE]` ends a stream free: a
    /// reader hands `[DONE]` beside other data lines on as one message.
    #[test]
    fn done_is_an_event_whose_only_data_is_done() {
        let events: [(&[u8], bool); 12] = [
            (b"data: [DONE]", true),
            (b"data:[DONE]", true),
            (b"event: end\ndata: [DONE]", true),
            (b"\xEF\xBB\xBFdata: [DONE]", true),
            (b"id: 7\r\ndata: [DONE]\r\n", true),
            (b"data: PPPP\ndata: [DONE]", false),
            (b"data: [DONE]\ndata: more", false),
            (b"data: [DONE]\ndata:", false),
            (b"data\ndata: [DONE]", false),
            (b"data: [DONE] ", false),
            (b"data:  [DONE]", false),
            (b"datax: [DONE]", false),
        ];
        for (event, done) in events {
            assert_eq!(is_done(event), done, "{:?}", String::from_utf8_lossy(event));
        }
    }

    /// Every line ending a reader honours ends an event: a lone CR too,
    /// however the reads cut the stream (a CR last in a read waits for the
    /// next, which may hold its LF).
    #[test]
    fn events_end_at_any_line_break_a_reader_honours() {
        for (stream, want) in [
            (&b"data: 1\r\rdata: 2\r\r"[..], 2),
            (b"data: 1\n\rdata: 2\n\r", 2),
            (b"data: 1\r\r\ndata: 2\r\r\n", 2),
            (b"data: 1\r\n\ndata: 2\n\r\n", 2),
            (b"\xEF\xBB\xBFdata: 1\n\ndata: 2\n\n", 2),
        ] {
            for cut in 1..=stream.len() {
                let mut buffer = Vec::new();
                let mut events = Vec::new();
                for read in stream.chunks(cut) {
                    buffer.extend_from_slice(read);
                    while let Some(end) = event_end(&buffer, false) {
                        events.push(buffer.drain(..end).collect::<Vec<u8>>());
                    }
                }
                while let Some(end) = event_end(&buffer, true) {
                    events.push(buffer.drain(..end).collect::<Vec<u8>>());
                }
                let charged = events.iter().filter(|e| has_data(e)).count();
                assert_eq!(charged, want, "{stream:?} read {cut} at a time: {events:?}");
            }
        }
    }
}

/// The most of a JSON response body read for its reported usage.
const MAX_USAGE_BODY: usize = 1 << 20;

/// Reads the units a response reports at a JSON pointer, from its events
/// (the last that has it counts) or its JSON body, as it passes.
///
/// A body not seen to its end (the client stopped reading it, or it was
/// too large to read) had its report go unread: it is charged the most the
/// request held, whatever an event reported before it stopped. So a
/// client cannot take what it paid a unit for by leaving just before the
/// report (an LLM stream's usage comes last), nor for an early running
/// count (a first event's `0`).
pub(crate) struct UsageScan {
    pointer: String,
    units: crate::sessions::Units,
    sse: bool,
    buffer: BytesMut,
    /// A JSON body larger than [`MAX_USAGE_BODY`] is not read.
    overflowed: bool,
    /// The body ended and was read.
    finished: bool,
}

impl UsageScan {
    pub(crate) fn new(pointer: String, units: crate::sessions::Units, sse: bool) -> Self {
        Self {
            pointer,
            units,
            sse,
            buffer: BytesMut::new(),
            overflowed: false,
            finished: false,
        }
    }

    /// Reads the next part of the body.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if !self.sse {
            if self.buffer.len() + data.len() > MAX_USAGE_BODY {
                self.overflowed = true;
                self.buffer.clear();
            }
            if !self.overflowed {
                self.buffer.extend_from_slice(data);
            }
            return;
        }
        self.buffer.extend_from_slice(data);
        self.read_events(false);
        // An event larger than a JSON body may be is not usage.
        if self.buffer.len() > MAX_USAGE_BODY {
            self.buffer.clear();
        }
    }

    /// Reads the reports of the whole events buffered (`at_end` of the
    /// stream, the last one too, ended or not).
    fn read_events(&mut self, at_end: bool) {
        while let Some(end) = event_end(&self.buffer, at_end) {
            let event = self.buffer.split_to(end).freeze();
            self.read_event(&event);
        }
        if at_end && !self.buffer.is_empty() {
            let event = std::mem::take(&mut self.buffer);
            self.read_event(&event);
        }
    }

    fn read_event(&mut self, event: &[u8]) {
        let data: Vec<&[u8]> = lines(event)
            .map(|l| l.strip_prefix(BOM).unwrap_or(l))
            .filter_map(|l| l.strip_prefix(b"data:"))
            .map(|l| l.strip_prefix(b" ").unwrap_or(l))
            .collect();
        self.read(&data.join(&b'\n'));
    }

    /// The body ended: a JSON body is read now (one too large to read is
    /// charged as unread).
    pub(crate) fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.sse {
            self.read_events(true);
            return;
        }
        if self.overflowed {
            self.unread();
        } else {
            let body = std::mem::take(&mut self.buffer);
            self.read(&body);
        }
    }

    /// Reads one JSON document's report; false when it is not JSON.
    ///
    /// One that sets out to be JSON and cannot be read whole (nested
    /// deeper than the parser goes, bytes after its end, two documents,
    /// a number beyond what a float holds) may hold a report all the
    /// same: charged the most held, so that an answer made unreadable
    /// (an upstream that echoes what it is sent) cannot cost one unit.
    fn read(&mut self, json: &[u8]) -> bool {
        // As `JSON.parse` after `Response.json()` and Python's readers take
        // it (RFC 8259 lets a parser ignore one).
        let json = json.strip_prefix(BOM).unwrap_or(json);
        let value = match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(value) => value,
            Err(_) if sets_out_as_json(json) => {
                self.unread();
                return true;
            }
            Err(_) => return false,
        };
        drop(value);
        if let Some(units) = report_at(json, &self.pointer) {
            self.units
                .store(units, std::sync::atomic::Ordering::Release);
        }
        true
    }

    /// No report could be read: the most held is kept.
    fn unread(&self) {
        charge_most(&self.units);
    }
}

impl Drop for UsageScan {
    /// Not read to its end: a JSON body that parses whole was all there;
    /// otherwise (an event stream cut short among them, whatever its
    /// events reported so far) the most held is kept.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let whole = !self.sse && !self.overflowed && {
            let body = std::mem::take(&mut self.buffer);
            self.read(&body)
        };
        if !whole {
            self.unread();
        }
    }
}

/// Whether `text` begins as a JSON object or array does (an LLM stream's
/// closing `[DONE]` aside): text that does not (an HTML page, a word)
/// reports nothing.
fn sets_out_as_json(text: &[u8]) -> bool {
    let text = text.trim_ascii();
    match text.first() {
        Some(b'{') => true,
        Some(b'[') => text != b"[DONE]",
        _ => false,
    }
}

/// A report that says units were used but not how many a whole number of
/// them is: charged the most the request held (the stored units are
/// capped at `max_units`), never one unit.
const UNREADABLE_REPORT: u64 = crate::sessions::UNREPORTED - 1;

/// Charges the most `units` held: a report was made (or may have been)
/// that cannot be read whole, such as a part of a body (`206`).
pub(crate) fn charge_most(units: &crate::sessions::Units) {
    units.store(UNREADABLE_REPORT, std::sync::atomic::Ordering::Release);
}

/// The units the JSON document `json` (read whole already) reports at
/// `pointer` (RFC 6901): [`value_units`] of the value there; `None` when
/// there is none. A member on the way named twice in one object reads two
/// ways (a parser keeps the first or the last): [`UNREADABLE_REPORT`].
///
/// Walked over the document's text rather than a parsed value, which
/// would keep one of two members of one name and read a number as a
/// float (`1e-400` as 0).
fn report_at(json: &[u8], pointer: &str) -> Option<u64> {
    use serde_json::value::RawValue;
    let mut at: &RawValue = serde_json::from_slice(json).ok()?;
    if !pointer.is_empty() {
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = token.replace("~1", "/").replace("~0", "~");
            let text = at.get().trim_start();
            at = if text.starts_with('{') {
                let Members(members) = serde_json::from_str(text).ok()?;
                let mut named = members.into_iter().filter(|(name, _)| *name == token);
                let first = named.next()?.1;
                if named.next().is_some() {
                    return Some(UNREADABLE_REPORT);
                }
                first
            } else if text.starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
                let index: usize = token.parse().ok().filter(|_| {
                    token == "0" || !token.starts_with('0') && !token.starts_with('+')
                })?;
                *items.get(index)?
            } else {
                return None;
            };
        }
    }
    value_units(at.get().trim())
}

/// An object's members in order, those of one name twice included.
struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// The units a JSON value's text reports: `null` nothing (`None`); a
/// number rounded up to a whole one, exactly (`1e-400` is 1, `4.0…01` is
/// 5, `-0` is 0); anything else, a negative number, or one larger than a
/// `u64`: [`UNREADABLE_REPORT`].
fn value_units(text: &str) -> Option<u64> {
    if text == "null" {
        return None;
    }
    Some(ceil_units(text).map_or(UNREADABLE_REPORT, |n| n.min(UNREADABLE_REPORT)))
}

/// A JSON number's text rounded up to a whole number of units, computed
/// on its digits (no float): `None` when it is no JSON number, is below
/// zero, or is larger than a `u64`.
fn ceil_units(text: &str) -> Option<u64> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole)
        || (whole.len() > 1 && whole.starts_with('0'))
        || fraction.is_some_and(|f| !digits(f))
    {
        return None;
    }
    // The exponent, held to a range past which the answer cannot change.
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let (sign, e) = match e.as_bytes().first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if !digits(e) {
                return None;
            }
            let e = e.trim_start_matches('0');
            sign * if e.len() > 6 {
                1_000_000
            } else {
                e.parse().unwrap_or(0)
            }
        }
    };
    let fraction = fraction.unwrap_or("");
    let all: String = format!("{whole}{fraction}");
    let significant = all.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    if negative {
        return None;
    }
    // The value is `significant` × 10^`scale`.
    let scale = exponent - fraction.len() as i64;
    let count = significant.len() as i64;
    let (whole_digits, rest) = if scale >= 0 {
        if count + scale > 20 {
            return None;
        }
        (format!("{significant}{}", "0".repeat(scale as usize)), "")
    } else if -scale >= count {
        (String::new(), significant)
    } else {
        let cut = (count + scale) as usize;
        (significant[..cut].to_owned(), &significant[cut..])
    };
    if whole_digits.len() > 20 {
        return None;
    }
    let whole: u128 = if whole_digits.is_empty() {
        0
    } else {
        whole_digits.parse().ok()?
    };
    let rounded = whole + u128::from(rest.bytes().any(|b| b != b'0'));
    u64::try_from(rounded).ok()
}

/// Stores in `units` what `headers` report in `usage`'s header, when it
/// names one and they do; whether they did.
pub(crate) fn header_report(
    usage: &crate::route::Usage,
    headers: &HeaderMap,
    units: &crate::sessions::Units,
) -> bool {
    let reported = usage
        .header
        .as_ref()
        .and_then(|name| header_units(headers, name));
    if let Some(n) = reported {
        units.store(n, std::sync::atomic::Ordering::Release);
    }
    reported.is_some()
}

/// The units in a response header, read as a JSON number is
/// ([`ceil_units`]: a fraction rounded up); anything else it holds (not a
/// number, or the field given twice) [`UNREADABLE_REPORT`]; `None` when
/// absent or empty.
pub(crate) fn header_units(headers: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let text = values.next()?.to_str().map(str::trim).unwrap_or("?");
    if values.next().is_some() {
        return Some(UNREADABLE_REPORT);
    }
    if text.is_empty() {
        return None;
    }
    Some(ceil_units(text).map_or(UNREADABLE_REPORT, |n| n.min(UNREADABLE_REPORT)))
}

#[cfg(test)]
mod usage_tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_last_event_that_reports_usage_counts() {
        let units = Arc::new(AtomicU64::new(crate::sessions::UNREPORTED));
        let mut scan = UsageScan::new("/usage/total_tokens".into(), units.clone(), true);
        scan.feed(b"data: {\"token\":\"a\"}\n\ndata: {\"usage\":{\"total_tokens\":3}}\n");
        assert_eq!(units.load(Ordering::Acquire), crate::sessions::UNREPORTED);
        scan.feed(b"\ndata: {\"usage\":{\"total_tokens\":");
        assert_eq!(units.load(Ordering::Acquire), 3);
        scan.feed(b"12}}\r\n\r\ndata: [DONE]\n\n");
        scan.finish();
        assert_eq!(units.load(Ordering::Acquire), 12);
    }

    #[test]
    fn a_report_that_is_no_count_is_charged_the_most_held() {
        let scan = |body: &str| {
            let units = Arc::new(AtomicU64::new(crate::sessions::UNREPORTED));
            let mut scan = UsageScan::new("/usage".into(), units.clone(), false);
            scan.feed(body.as_bytes());
            scan.finish();
            units.load(Ordering::Acquire)
        };
        assert_eq!(scan(r#"{"usage":7}"#), 7);
        assert_eq!(scan(r#"{"usage":7.2}"#), 8);
        assert_eq!(scan(r#"{"usage":null}"#), crate::sessions::UNREPORTED);
        assert_eq!(scan(r#"{"other":1}"#), crate::sessions::UNREPORTED);
        for garbage in [
            r#"{"usage":10000000000000000000000}"#,
            r#"{"usage":-3}"#,
            r#"{"usage":"7"}"#,
            r#"{"usage":{}}"#,
            r#"{"usage":18446744073709551615}"#,
        ] {
            assert_eq!(scan(garbage), UNREADABLE_REPORT, "{garbage}");
        }
        let name = http::HeaderName::from_static("x-usage");
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), value.parse().unwrap());
            header_units(&headers, &name)
        };
        assert_eq!(header(" 12 "), Some(12));
        assert_eq!(header(""), None);
        // Read as the JSON field is: a fraction rounded up.
        assert_eq!(header("2.5"), Some(3));
        assert_eq!(header("3.0"), Some(3));
        assert_eq!(header("1e3"), Some(1000));
        for garbage in [
            "10000000000000000000000",
            "1e400",
            "-1",
            "many",
            "+5",
            "0x5",
        ] {
            assert_eq!(header(garbage), Some(UNREADABLE_REPORT), "{garbage}");
        }
        assert_eq!(scan(r#"{"usage":1e400}"#), UNREADABLE_REPORT);
        // JSON that cannot be read whole may hold a report: the most held.
        let deep = format!(
            r#"{{"usage":9,"x":{}{}}}"#,
            "[".repeat(129),
            "]".repeat(129)
        );
        for unreadable in [
            deep.as_str(),
            "{\"usage\":9}\nX",
            r#"{"usage":2}{"usage":9}"#,
            r#"[{"usage":9}"#,
        ] {
            assert_eq!(scan(unreadable), UNREADABLE_REPORT, "{unreadable}");
        }
        // Text that is no JSON reports nothing.
        assert_eq!(scan("<html>an answer</html>"), crate::sessions::UNREPORTED);
        assert_eq!(scan("an answer"), crate::sessions::UNREPORTED);
        // Given twice, it reads two ways.
        let mut twice = HeaderMap::new();
        twice.append(name.clone(), "1".parse().unwrap());
        twice.append(name.clone(), "9".parse().unwrap());
        assert_eq!(header_units(&twice, &name), Some(UNREADABLE_REPORT));
        assert_eq!(header_units(&HeaderMap::new(), &name), None);
    }

    /// The units a JSON body reports at `pointer`, read whole.
    fn reads(pointer: &str, body: &str) -> u64 {
        let units = Arc::new(AtomicU64::new(crate::sessions::UNREPORTED));
        let mut scan = UsageScan::new(pointer.into(), units.clone(), false);
        scan.feed(body.as_bytes());
        scan.finish();
        units.load(Ordering::Acquire)
    }

    /// A report read exactly, not through a float: a tiny fraction is a
    /// unit, digits past a float's precision still round up, a tiny
    /// negative is no count.
    #[test]
    fn a_report_is_rounded_up_exactly() {
        let name = http::HeaderName::from_static("x-usage");
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), value.parse().unwrap());
            header_units(&headers, &name)
        };
        let field = |text: &str| {
            reads(
                "/usage/total_tokens",
                &format!(r#"{{"usage":{{"total_tokens":{text}}}}}"#),
            )
        };
        for (text, units) in [
            ("1e-400", 1),
            ("4.00000000000000000001", 5),
            ("0.0000", 0),
            ("-0", 0),
            ("-0.0e5", 0),
            ("25E-1", 3),
            ("1.5e1", 15),
            ("1e18", 1_000_000_000_000_000_000),
            ("123456789e-9999999999999", 1),
        ] {
            assert_eq!(header(text), Some(units), "{text}");
            assert_eq!(field(text), units, "{text}");
        }
        for garbage in [
            "-1e-400",
            "-0.5",
            "1e20",
            "1e999999999",
            "01",
            "1.",
            ".5",
            "1e",
            "--1",
        ] {
            assert_eq!(header(garbage), Some(UNREADABLE_REPORT), "{garbage}");
        }
        for garbage in ["-1e-400", "-0.5", "1e20"] {
            assert_eq!(field(garbage), UNREADABLE_REPORT, "{garbage}");
        }
    }

    /// A member on the way to the report named twice in one object reads
    /// two ways: the most held, whichever comes last; one of the same name
    /// elsewhere is another member.
    #[test]
    fn a_report_named_twice_is_charged_the_most_held() {
        let pointer = "/usage/total_tokens";
        for twice in [
            r#"{"usage":{"total_tokens":5,"total_tokens":0}}"#,
            r#"{"usage":{"total_tokens":0,"total_tokens":5}}"#,
            r#"{"usage":{"total_tokens":5},"usage":{"total_tokens":0}}"#,
            r#"{"usage":{"total_tokens":0},"usage":{}}"#,
        ] {
            assert_eq!(reads(pointer, twice), UNREADABLE_REPORT, "{twice}");
        }
        let elsewhere =
            r#"{"usage":{"total_tokens":5},"other":{"total_tokens":0,"total_tokens":1}}"#;
        assert_eq!(reads(pointer, elsewhere), 5);
        let escaped = "/choices/1/n~1a~0b";
        assert_eq!(
            reads(escaped, r#"{"choices":[{"n/a~b":1},{"n/a~b":7}]}"#),
            7
        );
        assert_eq!(
            reads(escaped, r#"{"choices":[{"n/a~b":1}]}"#),
            crate::sessions::UNREPORTED
        );
        assert_eq!(reads("", "3.2"), 4);
    }

    #[test]
    fn a_body_not_read_to_its_end_keeps_the_most_held() {
        let scanned = |sse: bool, parts: &[&[u8]], finish: bool| {
            let units = Arc::new(AtomicU64::new(crate::sessions::UNREPORTED));
            let mut scan = UsageScan::new("/usage".into(), units.clone(), sse);
            for part in parts {
                scan.feed(part);
            }
            if finish {
                scan.finish();
            }
            drop(scan);
            units.load(Ordering::Acquire)
        };
        // Cut short before the report: the most held.
        assert_eq!(
            scanned(false, &[b"{\"answer\":\"hi\",\"us"], false),
            UNREADABLE_REPORT
        );
        assert_eq!(
            scanned(true, &[b"data: {\"token\":1}\n\n"], false),
            UNREADABLE_REPORT
        );
        // Nor a report read before the end (it may be an early running
        // count, no final one); a whole body is read.
        assert_eq!(
            scanned(true, &[b"data: {\"usage\":2}\n\ndata: x"], false),
            UNREADABLE_REPORT
        );
        assert_eq!(scanned(false, &[b"{\"usage\":4}"], false), 4);
        // A byte order mark before it, as a reader skips it.
        assert_eq!(scanned(false, &[b"\xEF\xBB\xBF{\"usage\":4}"], true), 4);
        assert_eq!(
            scanned(false, &[b"{\"none\":4}"], false),
            crate::sessions::UNREPORTED
        );
        // Too large to read: the most held, not one unit.
        let large = vec![b' '; MAX_USAGE_BODY + 1];
        assert_eq!(
            scanned(false, &[&large, b"{\"usage\":4}"], true),
            UNREADABLE_REPORT
        );
        // Seen to its end without a report: one unit, as before.
        assert_eq!(
            scanned(true, &[b"data: x\n\n"], true),
            crate::sessions::UNREPORTED
        );
        assert_eq!(
            scanned(true, &[b"data: {\"token\":1}\n\ndata: [DONE]\n\n"], true),
            crate::sessions::UNREPORTED
        );
        // An event that cannot be read whole: the most held, unless a
        // later one reports.
        let deep = format!(
            "data: {{\"usage\":9,\"x\":{}{}}}\n\n",
            "[".repeat(129),
            "]".repeat(129)
        );
        assert_eq!(scanned(true, &[deep.as_bytes()], true), UNREADABLE_REPORT);
        assert_eq!(
            scanned(true, &[deep.as_bytes(), b"data: {\"usage\":3}\n\n"], true),
            3
        );
        // Events ended by lone CRs, and a last one the stream ended in.
        assert_eq!(
            scanned(true, &[b"data: x\r\rdata: {\"usage\":4}\r\r"], true),
            4
        );
        assert_eq!(scanned(true, &[b"data: x\n\ndata: {\"usage\":5}"], true), 5);
    }

    #[test]
    fn a_json_body_reports_usage_once_whole() {
        let units = Arc::new(AtomicU64::new(crate::sessions::UNREPORTED));
        let mut scan = UsageScan::new("/usage/total_tokens".into(), units.clone(), false);
        scan.feed(b"{\"answer\":\"hi\",\"usage\":{\"total");
        scan.feed(b"_tokens\":7}}");
        assert_eq!(units.load(Ordering::Acquire), crate::sessions::UNREPORTED);
        scan.finish();
        assert_eq!(units.load(Ordering::Acquire), 7);
        let mut headers = HeaderMap::new();
        headers.insert("x-usage", http::HeaderValue::from_static(" 42 "));
        assert_eq!(
            header_units(&headers, &http::HeaderName::from_static("x-usage")),
            Some(42)
        );
    }
}
