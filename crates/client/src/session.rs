//! The MPP session intent on the paying side (draft-lightning-session-00).
//!
//! With sessions on ([`crate::Payer::sessions`]), a 402 that offers
//! `intent="session"` is answered by paying its deposit and sending `open`
//! with a return invoice of the wallet; the session is kept in the ledger,
//! so later requests to the same service, in this process or another, send
//! `bearer` instead of paying. When the server answers
//! `insufficient-balance`, the fresh challenge of that 402 is paid and sent
//! as `topUp`, and the request goes again. A session the server closed or
//! no longer knows is forgotten and a new one opened. One idle past the
//! server's idle timeout is closed before it would be used (the server
//! refunds it on its own by then; `close` answers what it refunded), and
//! [`crate::Payer::close_session`] closes one on request.
//!
//! Deposits and top-ups are payments like any other: checked against the
//! cap and the budgets (the deposit is what is paid, not the unit price),
//! written to the ledger as pending before they are sent, and finished
//! rather than paid again by a later run. Refunds are recorded as the
//! server reports them, with what the wallet saw arrive when it can see
//! its invoices.

use std::future::Future;
use std::time::SystemTime;

use gate402_bolt11::Invoice;
use gate402_http_auth::parse_challenges;
use gate402_lightning::{InvoiceStatus, LightningError, PaymentOutcome, PaymentStatus};
use gate402_mpp::lightning::METHOD;
use gate402_mpp::problem::ProblemType;
use gate402_mpp::session::{SessionAction, SessionRequest, SESSION};
use gate402_mpp::{ChallengeEcho, PaymentChallenge, PaymentCredential};
use reqwest::header::{
    HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use reqwest::{Method, Request, Response, ResponseBuilderExt as _, StatusCode, Url};

use crate::error::SessionError;
use crate::ledger::{PaymentState, PendingPayment, Refund, StoredSession};
use crate::payer::{
    new_entry, now, past_held_balance, refused, send_paid, with_credential, Endpoint,
};
use crate::wallet::ReturnInvoice;
use crate::{
    FetchError, Fetched, LedgerError, Offer, OfferError, Payer, PaymentEntry, Prefer, Refusal,
    RequestKey, IDEMPOTENCY_KEY, PAYMENT_AUTHORIZATION,
};

/// The ledger's scheme for the deposit that opens a session.
pub const SESSION_SCHEME: &str = "MPP session";

/// The ledger's scheme for a top-up of a session.
pub const TOP_UP_SCHEME: &str = "MPP session top-up";

/// How often one request may go out on a session (a retry after another
/// process's top-up, an earlier run's top-up sent again, a top-up, a
/// challenge that no longer verifies) before its last answer is handed
/// back.
const SPEND_ATTEMPTS: usize = 5;

/// A Lightning session challenge of a 402 (`intent="session"`), read and
/// checked against its deposit invoice.
#[derive(Debug, Clone)]
pub struct SessionOffer {
    /// The challenge, echoed exactly as received.
    pub challenge: PaymentChallenge,
    /// Its decoded `request`.
    pub request: SessionRequest,
    /// The deposit invoice, decoded.
    pub invoice: Invoice,
    /// The deposit invoice as sent.
    pub bolt11: String,
    /// The price of one unit (`amount`), in satoshis.
    pub unit_sats: u64,
    /// The deposit (`depositAmount`, the invoice's amount), in satoshis.
    pub deposit_sats: u64,
    /// Seconds of inactivity after which the server closes the session
    /// (`idleTimeout`), when stated.
    pub idle_timeout_secs: Option<u64>,
    /// The `services` caveats of the L402 token offered beside it, if any:
    /// what names the service across its routes.
    pub services: Option<String>,
    /// The `WWW-Authenticate` values it was read from.
    pub challenges: Vec<String>,
}

impl SessionOffer {
    /// Reads the first Lightning session challenge of a 402's
    /// `WWW-Authenticate` values. `Ok(None)` when none is offered.
    ///
    /// # Errors
    ///
    /// [`OfferError::Header`] when a value does not parse;
    /// [`OfferError::Mismatch`] when the session challenge cannot be read
    /// or disagrees with its deposit invoice (`depositAmount` against the
    /// invoice's amount, `paymentHash` against its payment hash).
    pub fn from_challenges<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<Self>, OfferError> {
        let challenges: Vec<String> = values.into_iter().map(str::to_owned).collect();
        let mut found = None;
        'values: for value in &challenges {
            for c in parse_challenges(value)? {
                if !c.is_scheme(gate402_mpp::SCHEME) {
                    continue;
                }
                let Ok(challenge) = gate402_mpp::challenge::from_challenge(&c) else {
                    continue;
                };
                if challenge.method.as_str() == METHOD && challenge.intent.as_str() == SESSION {
                    found = Some(challenge);
                    break 'values;
                }
            }
        }
        let Some(challenge) = found else {
            return Ok(None);
        };
        let services = Offer::from_challenges(challenges.iter().map(String::as_str))
            .ok()
            .and_then(|o| o.l402_services());
        read_session(challenge, challenges, services)
            .map(Some)
            .map_err(|why| OfferError::Mismatch(format!("the session challenge: {why}")))
    }

    /// Reads the session challenge of a 402's headers, as
    /// [`SessionOffer::from_challenges`].
    ///
    /// # Errors
    ///
    /// As [`SessionOffer::from_challenges`].
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, OfferError> {
        Self::from_challenges(crate::challenge_values(headers))
    }

    /// The field its credentials go in: [`PAYMENT_AUTHORIZATION`] when the
    /// challenge's `header` names it, else `Authorization`.
    pub fn field(&self) -> &'static str {
        field_for(self.challenge.header.as_deref())
    }
}

fn field_for(header: Option<&str>) -> &'static str {
    match header {
        Some(h) if h.eq_ignore_ascii_case(PAYMENT_AUTHORIZATION) => PAYMENT_AUTHORIZATION,
        _ => "Authorization",
    }
}

fn read_session(
    challenge: PaymentChallenge,
    challenges: Vec<String>,
    services: Option<String>,
) -> Result<SessionOffer, String> {
    if let Some(header) = &challenge.header {
        if !header.is_empty()
            && !header.eq_ignore_ascii_case("Authorization")
            && !header.eq_ignore_ascii_case(PAYMENT_AUTHORIZATION)
        {
            return Err(format!(
                "header {header:?} is neither Authorization nor {PAYMENT_AUTHORIZATION}"
            ));
        }
    }
    let json = crate::decode_json_object(challenge.request.raw())
        .map_err(|why| format!("request: {why}"))?;
    let request: SessionRequest =
        serde_json::from_value(json).map_err(|e| format!("request: {e}"))?;
    if request.currency != gate402_mpp::lightning::CURRENCY {
        return Err(format!("currency {:?} is not sat", request.currency));
    }
    let unit_sats = request
        .unit_sats()
        .ok_or_else(|| format!("amount {:?} is not a number of sat", request.amount))?;
    let bolt11 = request.deposit_invoice.clone().ok_or("no depositInvoice")?;
    let invoice = Invoice::parse(&bolt11).map_err(|e| format!("depositInvoice: {e}"))?;
    let deposit_sats = request.deposit_sats().ok_or("no depositAmount in sat")?;
    let deposit_msat = deposit_sats
        .checked_mul(1000)
        .ok_or("depositAmount is too large")?;
    if invoice.amount_msat() != Some(deposit_msat) {
        return Err(format!(
            "depositAmount is {deposit_sats} sat, the deposit invoice asks for {}",
            invoice
                .amount_msat()
                .map_or("no amount".into(), |a| format!("{a} msat"))
        ));
    }
    if request.payment_hash() != Some(invoice.payment_hash()) {
        return Err("paymentHash is not the deposit invoice's".into());
    }
    let idle_timeout_secs = match request.idle_timeout.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| format!("idleTimeout {text:?} is not a number of seconds"))?,
        ),
    };
    Ok(SessionOffer {
        challenge,
        request,
        invoice,
        bolt11,
        unit_sats,
        deposit_sats,
        idle_timeout_secs,
        services,
        challenges,
    })
}

/// A refusal (402 or 401), read whole so that its problem type can be
/// told while the response can still be handed on.
pub(crate) struct Rejection {
    status: StatusCode,
    headers: HeaderMap,
    url: Url,
    body: Vec<u8>,
    problem: Option<String>,
    detail: Option<String>,
}

impl Rejection {
    pub(crate) async fn read(response: Response) -> Result<Self, FetchError> {
        let status = response.status();
        let headers = response.headers().clone();
        let url = response.url().clone();
        let body = crate::body::read_bounded(response).await?;
        let json = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let text = |key: &str| {
            json.as_ref()
                .and_then(|j| j[key].as_str())
                .map(str::to_owned)
        };
        Ok(Self {
            status,
            headers,
            url,
            problem: text("type"),
            detail: text("detail"),
            body,
        })
    }

    pub(crate) fn is(&self, problem: ProblemType) -> bool {
        self.problem.as_deref() == Some(problem.uri().as_str())
    }

    fn describe(&self) -> String {
        let problem = self
            .problem
            .clone()
            .unwrap_or_else(|| format!("HTTP {}", self.status.as_u16()));
        match &self.detail {
            Some(detail) => format!("{problem} ({detail})"),
            None => problem,
        }
    }

    fn offer(&self) -> Result<Option<SessionOffer>, OfferError> {
        SessionOffer::from_headers(&self.headers)
    }

    fn into_response(self) -> Response {
        let mut builder = http::Response::builder().status(self.status).url(self.url);
        if let Some(headers) = builder.headers_mut() {
            *headers = self.headers;
        }
        builder
            .body(self.body)
            .map(Response::from)
            .unwrap_or_else(|_| Response::from(http::Response::new(Vec::new())))
    }
}

/// How a request sent on a session came out.
// One per request and moved once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sessioned {
    /// Answered: served, or refused in a way that is not the session's to
    /// mend; with the top-up it paid, if any.
    Answered(Response, Option<PaymentEntry>),
    /// The session is gone (closed, unknown to the server, idle): the 402
    /// the server answered meanwhile, with its fresh challenge, if any.
    Ended(Option<Response>),
}

/// How a top-up came out.
#[allow(clippy::large_enum_variant)]
enum ToppedUp {
    /// Credited to the session.
    Credited(PaymentEntry),
    /// An earlier run's top-up, paid and never answered, credited now
    /// (nothing paid by this one).
    Resent,
    /// Paid, and refused by the server: the payment, its outcome, the
    /// challenges it answered, and the refusal.
    Refused(PaymentEntry, PaymentOutcome, Vec<String>, Rejection),
}

fn credential(echo: &ChallengeEcho, action: &SessionAction) -> String {
    gate402_mpp::credential::to_authorization(&PaymentCredential::new(echo.clone(), action))
}

fn echo_of(session: &StoredSession) -> Result<ChallengeEcho, LedgerError> {
    serde_json::from_str(&session.challenge)
        .map_err(|e| LedgerError::corrupt(format!("session {}: challenge: {e}", session.id)))
}

/// What a session action that is no request of its own goes out as: the
/// request's method, URL and fields, without its body or
/// `Idempotency-Key` (the server answers `topUp` and `close` itself).
fn control_request(request: &Request) -> Request {
    let mut control = Request::new(request.method().clone(), request.url().clone());
    *control.headers_mut() = request.headers().clone();
    let headers = control.headers_mut();
    for name in [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        CONTENT_ENCODING,
        TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers.remove(IDEMPOTENCY_KEY);
    control
}

/// Whether `session`'s credentials may go with `request`: not in place of
/// an `Authorization` of the request's own (an API key), unless its
/// challenge names `Payment-Authorization`.
fn fits(request: &Request, session: &StoredSession) -> Result<bool, LedgerError> {
    let own = request
        .headers()
        .contains_key(reqwest::header::AUTHORIZATION);
    Ok(!own || field_for(echo_of(session)?.header.as_deref()) == PAYMENT_AUTHORIZATION)
}

fn receipt_of(response: &Response) -> Option<String> {
    response
        .headers()
        .get(gate402_mpp::RECEIPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The session offer a payment was begun for, from the challenges it
/// kept.
fn session_offer_of(payment: &PendingPayment) -> Option<SessionOffer> {
    SessionOffer::from_challenges(payment.challenges.iter().map(String::as_str))
        .ok()
        .flatten()
}

/// Whether `answer` to a request on a session took a unit from it: not a
/// server error (which gives the debit back: pay for success), not `409`
/// (it took none), not an answer with no receipt (a `429` of a rate limit
/// in front of the paywall, say).
fn took_a_unit(answer: &Response) -> bool {
    !(answer.status().is_server_error()
        || answer.status() == StatusCode::CONFLICT
        || !answer.headers().contains_key(gate402_mpp::RECEIPT_HEADER))
}

/// Whether `answer` to an `open` shows the session opened: not a server
/// error (the gateway answers one when it could not write the session, and
/// leaves the deposit unspent), not `409` or `429` (held, or a limit in
/// front of the paywall). Otherwise the next request sends `open` again
/// with the same deposit: a session opened already takes it as `bearer`.
fn took_the_open(answer: &Response) -> bool {
    let status = answer.status();
    !(status.is_server_error()
        || status == StatusCode::CONFLICT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

impl Payer {
    /// Sends `request` on `session` (kept for this route): `bearer`, or
    /// `open` again when the server never answered the first; tops the
    /// session up when the server says its balance ran out. The caller
    /// holds the endpoint's lock when `locked`; a top-up takes it
    /// otherwise. A session idle past its timeout is closed first.
    pub(crate) async fn spend<S, F>(
        &self,
        session: StoredSession,
        request: &Request,
        endpoint: &Endpoint,
        locked: bool,
        send: &S,
    ) -> Result<Sessioned, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let mut session = session;
        if !fits(request, &session)? {
            return Ok(Sessioned::Ended(None));
        }
        if session.idle_at(now()) {
            self.close_with(&session, "idle", send).await?;
            return Ok(Sessioned::Ended(None));
        }
        let mut echo = echo_of(&session)?;
        let mut echo_replaced = false;
        let mut lock = None;
        let mut paid = None;
        let mut last = None;
        for _ in 0..SPEND_ATTEMPTS {
            let action = if session.opened {
                SessionAction::Bearer {
                    session_id: session.id.clone(),
                    preimage: session.preimage.clone(),
                }
            } else {
                SessionAction::Open {
                    preimage: session.preimage.clone(),
                    return_invoice: session.return_invoice.clone().unwrap_or_default(),
                }
            };
            let field = field_for(echo.header.as_deref());
            let paying = credential(&echo, &action);
            let answer = past_held_balance(|| send_paid(request, field, &paying, send)).await?;
            if !refused(answer.status()) {
                if !session.opened && took_the_open(&answer) {
                    self.ledger.note_session_opened(&session.id)?;
                }
                if echo_replaced {
                    let text = serde_json::to_string(&echo).unwrap_or_default();
                    self.ledger.note_session_challenge(&session.id, &text)?;
                }
                let spent = if took_a_unit(&answer) {
                    session.unit_sats
                } else {
                    0
                };
                self.ledger.note_session_spent(&session.id, spent, now())?;
                let mut answer = answer;
                answer.extensions_mut().insert(crate::EarlierPayment {
                    payment_hash: session.id.clone(),
                    via: "session",
                });
                return Ok(Sessioned::Answered(answer, paid));
            }
            let rejection = Rejection::read(answer).await?;
            if rejection.is(ProblemType::LightningInsufficientBalance) {
                if paid.is_some() {
                    // Topped up for this request already, and still short:
                    // one request pays one top-up at most (a server that
                    // asks again and again would have it pay without end).
                    last = Some(rejection);
                    break;
                }
                if !locked && lock.is_none() {
                    // Another request may be topping it up: wait for it,
                    // then ask again before paying.
                    lock = Some(
                        self.ledger
                            .lock_endpoint(&endpoint.origin, &endpoint.path)
                            .await?,
                    );
                    last = Some(rejection);
                    continue;
                }
                let offer = rejection.offer()?.ok_or(SessionError::NoTopUp)?;
                match self
                    .top_up(&session, &offer, request, endpoint, send)
                    .await?
                {
                    ToppedUp::Credited(entry) => {
                        session.deposit_sats += offer.deposit_sats;
                        paid = Some(entry);
                        last = Some(rejection);
                        continue;
                    }
                    ToppedUp::Resent => {
                        last = Some(rejection);
                        continue;
                    }
                    ToppedUp::Refused(entry, outcome, challenges, refusal) => {
                        // Closed meanwhile, say: the top-up's payment is
                        // unspent. It opens a session of its own (refunded
                        // at its close) where the server offers one and the
                        // wallet can take the refund; else its invoice's
                        // L402 token buys a balance of its own.
                        self.end(&session, &refusal, send).await?;
                        let reopen =
                            SessionOffer::from_challenges(challenges.iter().map(String::as_str))
                                .ok()
                                .flatten();
                        if let Some(reopen) = reopen {
                            if let Ok(return_invoice) =
                                self.wallet.return_invoice(&endpoint.origin).await
                            {
                                let opened = self
                                    .open_paid(
                                        request,
                                        endpoint,
                                        &reopen,
                                        entry,
                                        outcome,
                                        return_invoice,
                                        send,
                                    )
                                    .await?;
                                return Ok(match opened {
                                    Fetched::Response(answer, entry) => {
                                        Sessioned::Answered(answer, entry)
                                    }
                                    Fetched::Offer(_) => Sessioned::Ended(None),
                                });
                            }
                        }
                        let mut entry = entry;
                        let answer = self
                            .through_l402(
                                request,
                                endpoint,
                                &challenges,
                                &mut entry,
                                &outcome,
                                "topUp",
                                &refusal,
                                send,
                            )
                            .await?;
                        return Ok(Sessioned::Answered(answer, Some(entry)));
                    }
                }
            }
            if self.end(&session, &rejection, send).await? {
                return Ok(Sessioned::Ended(Some(rejection.into_response())));
            }
            if session.opened && !echo_replaced {
                if let Some(fresh) = rejection.offer()? {
                    // The kept challenge may no longer verify (the server
                    // changed its secret); `bearer` names the session by
                    // its id, so a fresh challenge of the service does.
                    echo = fresh.challenge.to_echo();
                    echo_replaced = true;
                    last = Some(rejection);
                    continue;
                }
            }
            if !session.opened {
                // Its `open` is refused for good: the deposit is spent
                // through the L402 door of the same invoice, if it can be.
                self.ledger
                    .close_session(&session.id, now(), "open refused")?;
                if let Some((mut entry, challenges)) = self.deposit_of(&session)? {
                    let outcome = self.outcome_of(&session, &entry)?;
                    let answer = self
                        .through_l402(
                            request,
                            endpoint,
                            &challenges,
                            &mut entry,
                            &outcome,
                            "open",
                            &rejection,
                            send,
                        )
                        .await?;
                    return Ok(Sessioned::Answered(answer, Some(entry)));
                }
                return Ok(Sessioned::Ended(Some(rejection.into_response())));
            }
            last = Some(rejection);
            break;
        }
        // Out of attempts, or refused for a reason that is not the
        // session's to mend: the last answer is the caller's.
        Ok(match last {
            Some(rejection) => Sessioned::Answered(rejection.into_response(), paid),
            None => Sessioned::Ended(None),
        })
    }

    /// Takes `session` as ended when `rejection` says the server closed it
    /// (then `close` answers what it refunded, recorded) or does not know
    /// it. `true` when it did.
    async fn end<S, F>(
        &self,
        session: &StoredSession,
        rejection: &Rejection,
        send: &S,
    ) -> Result<bool, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        if rejection.is(ProblemType::LightningSessionClosed) {
            // Closed by the server (idle, or by another holder of the
            // preimage); asked again, it answers the same refund.
            self.close_with(session, crate::ledger::CLOSED_BY_THE_SERVER, send)
                .await?;
            return Ok(true);
        }
        if rejection.is(ProblemType::LightningSessionNotFound) {
            self.ledger
                .close_session(&session.id, now(), "unknown to the server")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Sends `request` with a session kept for another route of the same
    /// service (`bearer`); when it is served, or spent out (then it is
    /// topped up as on its own route: the top-up is the entry returned),
    /// the session is kept for this route too. `None`: refused here
    /// otherwise, or idle (the session is left as it is).
    async fn spend_elsewhere<S, F>(
        &self,
        session: &StoredSession,
        request: &Request,
        endpoint: &Endpoint,
        send: &S,
    ) -> Result<Option<(Response, Option<PaymentEntry>)>, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        if !session.opened || session.idle_at(now()) || !fits(request, session)? {
            return Ok(None);
        }
        let echo = echo_of(session)?;
        let action = SessionAction::Bearer {
            session_id: session.id.clone(),
            preimage: session.preimage.clone(),
        };
        let field = field_for(echo.header.as_deref());
        let answer = send_paid(request, field, &credential(&echo, &action), send).await?;
        let add_route = || {
            self.ledger.add_session_route(
                &session.id,
                &endpoint.origin,
                &endpoint.method,
                &endpoint.path,
            )
        };
        if refused(answer.status()) {
            if !Rejection::read(answer)
                .await?
                .is(ProblemType::LightningInsufficientBalance)
            {
                return Ok(None);
            }
            // Spent out: topped up as on a route of its own (this one now),
            // not left behind for a new session's deposit.
            add_route()?;
            return match self
                .spend(session.clone(), request, endpoint, true, send)
                .await?
            {
                Sessioned::Answered(answer, paid) => Ok(Some((answer, paid))),
                Sessioned::Ended(_) => Ok(None),
            };
        }
        add_route()?;
        let spent = if answer.status().is_server_error() {
            0
        } else {
            session.unit_sats
        };
        self.ledger.note_session_spent(&session.id, spent, now())?;
        Ok(Some((answer, None)))
    }

    /// Answers a 402 that offers a session: within the cap and budgets,
    /// with a return invoice from the wallet (refused before paying when
    /// it cannot issue one), under the endpoint's lock (a session another
    /// request opened meanwhile is used instead; a deposit an earlier run
    /// left pending is finished instead of paying a new one), pays the
    /// deposit and sends `open`.
    pub(crate) async fn open_session<S, F>(
        &self,
        request: &Request,
        endpoint: &Endpoint,
        key: Option<&RequestKey>,
        offer: SessionOffer,
        send: &S,
    ) -> Result<Fetched, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        self.policy.check_deposit(&offer, SystemTime::now())?;
        // Asked before anything is paid: a wallet that cannot take the
        // refund refuses the session.
        let return_invoice = match self.wallet.return_invoice(&endpoint.origin).await {
            Ok(invoice) => invoice,
            Err(LightningError::Unsupported(reason)) => {
                return Err(Refusal::NoReturnInvoice { reason }.into())
            }
            Err(e) => return Err(SessionError::Wallet(e).into()),
        };
        let _lock = self
            .ledger
            .lock_endpoint(&endpoint.origin, &endpoint.path)
            .await?;
        if let Some(session) =
            self.ledger
                .session_for_route(&endpoint.origin, &endpoint.method, &endpoint.path)?
        {
            if let Sessioned::Answered(answer, paid) =
                self.spend(session, request, endpoint, true, send).await?
            {
                return Ok(Fetched::Response(answer, paid));
            }
        }
        if let Some(services) = &offer.services {
            if let Some(session) = self.ledger.session_for_service(
                &endpoint.origin,
                &offer.challenge.realm,
                services,
                offer.unit_sats,
            )? {
                if let Some((answer, paid)) = self
                    .spend_elsewhere(&session, request, endpoint, send)
                    .await?
                {
                    return Ok(Fetched::Response(answer, paid));
                }
            }
        }
        if let Some((kept, entry, outcome, reused)) = self.earlier_deposit(endpoint).await? {
            let opened = self
                .open_paid(
                    request,
                    endpoint,
                    &kept,
                    entry,
                    outcome,
                    return_invoice,
                    send,
                )
                .await?;
            // A top-up an earlier run paid (and said it paid) opened it:
            // nothing paid now, said as an earlier payment is.
            return Ok(match opened {
                Fetched::Response(mut answer, Some(entry)) if reused => {
                    self.ledger
                        .note_payment_session(entry.id, &entry.payment_hash)?;
                    answer.extensions_mut().insert(crate::EarlierPayment {
                        payment_hash: entry.payment_hash,
                        via: "session",
                    });
                    Fetched::Response(answer, None)
                }
                opened => opened,
            });
        }
        // The lock may have been a while coming.
        self.policy.check_deposit(&offer, SystemTime::now())?;
        let begun = PendingPayment {
            entry: new_entry(
                endpoint,
                SESSION_SCHEME,
                offer.deposit_sats * 1000,
                hex::encode(offer.invoice.payment_hash()),
                Some(hex::encode(offer.invoice.payment_hash())),
            ),
            bolt11: offer.bolt11.clone(),
            challenges: offer.challenges.clone(),
            payment_required: None,
            request_key: key.cloned(),
        };
        let (entry, outcome) = self.pay_begun(begun).await?;
        self.open_paid(
            request,
            endpoint,
            &offer,
            entry,
            outcome,
            return_invoice,
            send,
        )
        .await
    }

    /// A deposit paid before for this route and not spent, to open its
    /// session with instead of paying one again: a deposit an earlier run
    /// left pending (finished now), else a top-up paid for a session that
    /// closed before it was credited (the server lets it open a session).
    /// `true` with a reused top-up.
    async fn earlier_deposit(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Option<(SessionOffer, PaymentEntry, PaymentOutcome, bool)>, FetchError> {
        let route = (endpoint.origin.as_str(), endpoint.path.as_str());
        for pending in self.ledger.pending(Some(route))? {
            let Some(kept) =
                session_offer_of(&pending).filter(|_| pending.entry.scheme == SESSION_SCHEME)
            else {
                continue;
            };
            if let Some((entry, outcome)) = self.finish_payment(&pending).await? {
                return Ok(Some((kept, entry, outcome, false)));
            }
        }
        for orphan in self.ledger.orphan_top_ups(route.0, route.1)? {
            let Some(kept) = session_offer_of(&orphan) else {
                continue;
            };
            self.ledger.note_top_up_reused(orphan.entry.id)?;
            let entry = orphan.entry;
            if let PaymentStatus::Succeeded(outcome) = self
                .await_outcome(&entry.origin, &entry.payment_hash, &orphan.bolt11)
                .await?
            {
                return Ok(Some((kept, entry, outcome, true)));
            }
        }
        Ok(None)
    }

    /// Keeps the session the paid deposit opens, then sends `open` with
    /// `request`. Refused, the deposit is spent through its L402 token
    /// instead, when one was offered.
    #[allow(clippy::too_many_arguments)]
    async fn open_paid<S, F>(
        &self,
        request: &Request,
        endpoint: &Endpoint,
        offer: &SessionOffer,
        entry: PaymentEntry,
        outcome: PaymentOutcome,
        return_invoice: ReturnInvoice,
        send: &S,
    ) -> Result<Fetched, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let mut entry = entry;
        let at = now();
        let session = StoredSession {
            id: hex::encode(offer.invoice.payment_hash()),
            origin: endpoint.origin.clone(),
            method: endpoint.method.clone(),
            path: endpoint.path.clone(),
            host: endpoint.host.clone(),
            realm: offer.challenge.realm.clone(),
            services: offer.services.clone(),
            preimage: hex::encode(outcome.preimage),
            challenge: serde_json::to_string(&offer.challenge.to_echo()).unwrap_or_default(),
            unit_sats: offer.unit_sats,
            deposit_sats: offer.deposit_sats,
            spent_sats: 0,
            idle_timeout_secs: offer.idle_timeout_secs,
            return_invoice: Some(return_invoice.bolt11.clone()),
            return_hash: Some(hex::encode(return_invoice.payment_hash)),
            opened: false,
            opened_at: at,
            last_used_at: at,
            closed_at: None,
            close_reason: None,
        };
        // Kept before `open` goes out: a run that never sees the answer
        // leaves the next one the preimage, to open it again.
        self.ledger.keep_session(&session)?;
        let action = SessionAction::Open {
            preimage: session.preimage.clone(),
            return_invoice: return_invoice.bolt11,
        };
        let echo = offer.challenge.to_echo();
        let paying = credential(&echo, &action);
        // A `409` (held by requests in flight) is asked again, as on `bearer`.
        let answer = past_held_balance(|| send_paid(request, offer.field(), &paying, send)).await?;
        if refused(answer.status()) {
            let rejection = Rejection::read(answer).await?;
            self.ledger
                .close_session(&session.id, now(), "open refused")?;
            let answer = self
                .through_l402(
                    request,
                    endpoint,
                    &offer.challenges,
                    &mut entry,
                    &outcome,
                    "open",
                    &rejection,
                    send,
                )
                .await?;
            return Ok(Fetched::Response(answer, Some(entry)));
        }
        if took_the_open(&answer) {
            self.ledger.note_session_opened(&session.id)?;
        }
        let spent = if took_a_unit(&answer) {
            session.unit_sats
        } else {
            0
        };
        self.ledger.note_session_spent(&session.id, spent, now())?;
        let receipt = receipt_of(&answer);
        self.ledger
            .attach_receipt(entry.id, SESSION_SCHEME, receipt.as_deref())?;
        entry.scheme = SESSION_SCHEME.into();
        entry.receipt = receipt.or(entry.receipt);
        Ok(Fetched::Response(answer, Some(entry)))
    }

    /// Pays the top-up `offer` asks for (within the cap and budgets) and
    /// sends `topUp`. A top-up of this session an earlier run left pending
    /// is finished and sent instead; one it paid and never had answered
    /// (killed, or the answer lost) is sent again first: the server
    /// credits a payment once, so a second `topUp` of it is answered as
    /// the first was.
    async fn top_up<S, F>(
        &self,
        session: &StoredSession,
        offer: &SessionOffer,
        request: &Request,
        endpoint: &Endpoint,
        send: &S,
    ) -> Result<ToppedUp, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        self.policy.check_deposit(offer, SystemTime::now())?;
        if self.resend_top_ups(session, request, send).await? > 0 {
            return Ok(ToppedUp::Resent);
        }
        for pending in self.pending_top_ups(&session.id)? {
            let Some(kept) = session_offer_of(&pending) else {
                continue;
            };
            if let Some((entry, outcome)) = self.finish_payment(&pending).await? {
                return self
                    .send_top_up(session, &kept, entry, outcome, request, send)
                    .await;
            }
        }
        let begun = PendingPayment {
            entry: new_entry(
                endpoint,
                TOP_UP_SCHEME,
                offer.deposit_sats * 1000,
                hex::encode(offer.invoice.payment_hash()),
                Some(session.id.clone()),
            ),
            bolt11: offer.bolt11.clone(),
            challenges: offer.challenges.clone(),
            payment_required: None,
            request_key: None,
        };
        let (entry, outcome) = self.pay_begun(begun).await?;
        self.send_top_up(session, offer, entry, outcome, request, send)
            .await
    }

    /// The top-ups of session `id` left pending (their outcome unknown).
    fn pending_top_ups(&self, id: &str) -> Result<Vec<PendingPayment>, LedgerError> {
        let mut pending = self.ledger.pending(None)?;
        pending
            .retain(|p| p.entry.scheme == TOP_UP_SCHEME && p.entry.session.as_deref() == Some(id));
        Ok(pending)
    }

    /// Sends `topUp` again for each top-up of `session` an earlier run
    /// paid and never had answered: the sats credited by them (the
    /// server credits a payment once and answers a second `topUp` of it
    /// as the first). One refused is noted and not sent again.
    async fn resend_top_ups<S, F>(
        &self,
        session: &StoredSession,
        request: &Request,
        send: &S,
    ) -> Result<u64, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let mut credited = 0;
        for unanswered in self.ledger.unanswered_top_ups(&session.id)? {
            let Some(kept) = session_offer_of(&unanswered) else {
                continue;
            };
            let entry = unanswered.entry;
            let PaymentStatus::Succeeded(outcome) = self
                .await_outcome(&entry.origin, &entry.payment_hash, &unanswered.bolt11)
                .await?
            else {
                continue;
            };
            if let ToppedUp::Credited(_) = self
                .send_top_up(session, &kept, entry, outcome, request, send)
                .await?
            {
                credited += kept.deposit_sats;
            }
        }
        Ok(credited)
    }

    async fn send_top_up<S, F>(
        &self,
        session: &StoredSession,
        offer: &SessionOffer,
        entry: PaymentEntry,
        outcome: PaymentOutcome,
        request: &Request,
        send: &S,
    ) -> Result<ToppedUp, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let mut entry = entry;
        let action = SessionAction::TopUp {
            session_id: session.id.clone(),
            top_up_preimage: hex::encode(outcome.preimage),
        };
        let echo = offer.challenge.to_echo();
        let answer = send_paid(
            &control_request(request),
            offer.field(),
            &credential(&echo, &action),
            send,
        )
        .await?;
        let status = answer.status();
        if status == StatusCode::OK {
            let receipt = receipt_of(&answer);
            self.ledger
                .credit_top_up(entry.id, receipt.as_deref(), offer.deposit_sats)?;
            entry.receipt = receipt.or(entry.receipt);
            return Ok(ToppedUp::Credited(entry));
        }
        if refused(status) {
            self.ledger.note_top_up_refused(entry.id)?;
            let rejection = Rejection::read(answer).await?;
            return Ok(ToppedUp::Refused(
                entry,
                outcome,
                offer.challenges.clone(),
                rejection,
            ));
        }
        Err(SessionError::Unexpected {
            action: "topUp",
            status: status.as_u16(),
        }
        .into())
    }

    /// Answers `request` through the L402 door of a deposit the session
    /// door refused for `action`: the same invoice, so the same balance,
    /// without a refund. An error naming the payment when no L402 token
    /// was offered for it.
    #[allow(clippy::too_many_arguments)]
    async fn through_l402<S, F>(
        &self,
        request: &Request,
        endpoint: &Endpoint,
        challenges: &[String],
        entry: &mut PaymentEntry,
        outcome: &PaymentOutcome,
        action: &'static str,
        rejection: &Rejection,
        send: &S,
    ) -> Result<Response, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let offer = Offer::from_challenges(challenges.iter().map(String::as_str))
            .ok()
            .filter(|o| {
                o.l402.is_some() && hex::encode(o.invoice.payment_hash()) == entry.payment_hash
            });
        let Some(offer) = offer else {
            return Err(SessionError::Refused {
                action,
                problem: rejection.describe(),
                paid: Some(entry.payment_hash.clone()),
            }
            .into());
        };
        self.answer(
            request,
            endpoint,
            &offer,
            Prefer::L402,
            entry,
            outcome,
            send,
        )
        .await
    }

    /// The ledger's record of the deposit that opened `session`, with the
    /// challenges it answered, if it is there and paid.
    fn deposit_of(
        &self,
        session: &StoredSession,
    ) -> Result<Option<(PaymentEntry, Vec<String>)>, LedgerError> {
        Ok(self
            .ledger
            .payment_by_hash(&session.id)?
            .filter(|p| p.entry.status == PaymentState::Paid)
            .map(|p| (p.entry, p.challenges)))
    }

    /// The outcome of the deposit that opened `session`, from what the
    /// ledger keeps.
    fn outcome_of(
        &self,
        session: &StoredSession,
        entry: &PaymentEntry,
    ) -> Result<PaymentOutcome, LedgerError> {
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&session.preimage, &mut preimage)
            .map_err(|_| LedgerError::corrupt(format!("session {}: preimage", session.id)))?;
        Ok(PaymentOutcome {
            preimage,
            fee_msat: entry.fee_msat,
            amount_msat: entry.amount_msat,
        })
    }

    /// Closes `session` with `send`: `close` to where it was opened; it is
    /// taken as closed and its refund recorded as the server reports it
    /// (with what the wallet saw arrive on the return invoice, when it can
    /// see it). A session the server does not know is taken as closed,
    /// with nothing refunded that the client can tell. The refund is
    /// recorded once, by whichever run takes the session as closed first
    /// (its `id` is 0 for the others).
    pub(crate) async fn close_with<S, F>(
        &self,
        session: &StoredSession,
        reason: &str,
        send: &S,
    ) -> Result<Refund, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let echo = echo_of(session)?;
        let url = Url::parse(&format!("{}{}", session.origin, session.path))
            .map_err(|e| LedgerError::corrupt(format!("session {}: URL: {e}", session.id)))?;
        let method = Method::from_bytes(session.method.as_bytes()).unwrap_or(Method::GET);
        // A top-up paid and never answered is credited before the close,
        // so that the refund returns it (one left pending is finished
        // first; one still in flight is left to a later run).
        for pending in self.pending_top_ups(&session.id)? {
            match self.finish_payment(&pending).await {
                Ok(_) | Err(FetchError::InFlight(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut session = session.clone();
        // One the server cannot take now (an error) does not keep the
        // session open: once it is closed, the top-up opens a session of
        // its own.
        session.deposit_sats += self
            .resend_top_ups(&session, &Request::new(method.clone(), url.clone()), send)
            .await
            .unwrap_or(0);
        let session = &session;
        let action = SessionAction::Close {
            session_id: session.id.clone(),
            preimage: session.preimage.clone(),
        };
        let request = with_credential(
            &Request::new(method, url.clone()),
            field_for(echo.header.as_deref()),
            &credential(&echo, &action),
        )?;
        let answer = send(request).await?;
        let status = answer.status();
        // A session the server closed before (idle, or by its operator)
        // says when: booked then, as closed by the server.
        let mut closed_before = None;
        let (refund_sats, refund_status) = if status == StatusCode::OK {
            let closed: serde_json::Value =
                serde_json::from_slice(&crate::body::read_bounded(answer).await?)
                    .map_err(|_| SessionError::Unreadable { action: "close" })?;
            // Said still open (or anything but closed): not closed, and
            // nothing booked as refunded.
            if let Some(said) = closed.get("status").filter(|s| *s != "closed") {
                return Err(SessionError::Refused {
                    action: "close",
                    problem: format!(
                        "the answer says the session's status is {said}, not \"closed\""
                    ),
                    paid: None,
                }
                .into());
            }
            closed_before = closed["closedAt"]
                .as_str()
                .and_then(gate402_mpp::parse_time)
                .map(|at| (at.unix_timestamp().max(0) as u64).min(now()));
            // Left out: nothing refunded. Given but no whole number of sat
            // (`-5`, `1.5`, `"5"`): not a figure to book as refunded.
            let refund_sats = match &closed["refundSats"] {
                serde_json::Value::Null => Some(0),
                given => given.as_u64(),
            };
            (
                refund_sats,
                closed["refundStatus"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
            )
        } else if refused(status) {
            let rejection = Rejection::read(answer).await?;
            if !rejection.is(ProblemType::LightningSessionNotFound) {
                return Err(SessionError::Refused {
                    action: "close",
                    problem: rejection.describe(),
                    paid: None,
                }
                .into());
            }
            // Never opened: its deposit is not spent, and is kept for the
            // next request to open the session with (taken as closed, it
            // was written off and the next request paid a new deposit).
            if !session.opened {
                return Err(SessionError::NotOpened {
                    session: session.id.clone(),
                    route: url.to_string(),
                }
                .into());
            }
            (Some(0), "unknown".to_owned())
        } else {
            return Err(SessionError::Unexpected {
                action: "close",
                status: status.as_u16(),
            }
            .into());
        };
        // Another run that closed it at once has recorded the same refund.
        let (closed_at, reason) = match closed_before {
            Some(at) => (at, crate::ledger::CLOSED_BY_THE_SERVER),
            None => (now(), reason),
        };
        let first = self.ledger.close_session(&session.id, closed_at, reason)?;
        let received_msat = match (&session.return_hash, refund_sats != Some(0)) {
            (Some(hash), true) => self.received_on(&session.origin, hash).await,
            _ => None,
        };
        let (refund_msat, mut refund_status) =
            as_recorded(refund_sats, refund_status, session.deposit_sats);
        // What arrived is at most what was deposited: more is not this
        // session's refund to book.
        let deposit_msat = session.deposit_sats.saturating_mul(1000);
        let received_msat = received_msat.map(|received| {
            if received > deposit_msat {
                refund_status = "disputed".to_owned();
            }
            received.min(deposit_msat)
        });
        let mut refund = Refund {
            id: 0,
            session: session.id.clone(),
            url: url.to_string(),
            origin: session.origin.clone(),
            host: session.host.clone(),
            refund_msat,
            status: refund_status,
            received_msat,
            reason: reason.to_owned(),
            created_at: now(),
        };
        if !first {
            // Closed before (its refund pending, failed, or not arrived
            // when last asked): what the server and the wallet say now.
            if let Some(id) = self.ledger.update_refund(&refund)? {
                refund.id = id;
            }
        } else {
            refund.id = self.ledger.record_refund(&refund)?;
            // The server's word on what was spent (a usage-metered
            // service charges what its upstream reports, unseen here).
            if let Some(refund_sats) = refund_sats.filter(|r| *r <= session.deposit_sats) {
                self.ledger
                    .note_session_settled(&session.id, session.deposit_sats - refund_sats)?;
            }
        }
        Ok(refund)
    }

    /// What the wallet has received on its return invoice `hash` (hex),
    /// if it can tell: nothing while it is open (a refund paid settles
    /// the invoice before the server hears it succeeded).
    async fn received_on(&self, origin: &str, hash: &str) -> Option<u64> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hash, &mut bytes).ok()?;
        match self.wallet.received(origin, &bytes).await {
            Ok(Some(InvoiceStatus::Settled { amount_msat, .. })) => Some(amount_msat),
            Ok(Some(InvoiceStatus::Open | InvoiceStatus::Canceled)) => Some(0),
            _ => None,
        }
    }

    /// Closes `session` (one of [`crate::Ledger::sessions`]) on request:
    /// sends `close` with `http`, takes it as closed, and records and
    /// returns its refund.
    ///
    /// # Errors
    ///
    /// [`FetchError::Http`] when the server cannot be reached (the session
    /// is kept open); [`FetchError::Session`] when it refuses or answers
    /// something else; [`FetchError::Ledger`].
    pub async fn close_session(
        &self,
        http: &reqwest::Client,
        session: &StoredSession,
    ) -> Result<Refund, FetchError> {
        self.close_with(session, "close", &|request| async move {
            Ok::<_, FetchError>(http.execute(request).await?)
        })
        .await
    }
}

/// A refund as the ledger records it: what the server says it refunded
/// (msat) and its `refundStatus` (`unknown` for one the protocol has not:
/// a server's words are not kept), unless it says more than was ever
/// deposited (`deposit_sats`): then the deposit, as `disputed` (a server
/// cannot book a refund it could not have owed). A figure that is no
/// whole number of sat (`None`) is 0, `unknown`.
fn as_recorded(refund_sats: Option<u64>, status: String, deposit_sats: u64) -> (u64, String) {
    let Some(refund_sats) = refund_sats else {
        return (0, "unknown".to_owned());
    };
    if refund_sats > deposit_sats {
        return (deposit_sats.saturating_mul(1000), "disputed".to_owned());
    }
    let status = match status.as_str() {
        "succeeded" | "failed" | "skipped" | "pending" => status,
        _ => "unknown".to_owned(),
    };
    (refund_sats.saturating_mul(1000), status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::invoice;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    /// A session challenge over `bolt11` (2 sat) with `request` edited.
    fn session_challenge(bolt11: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let hash = Invoice::parse(bolt11).unwrap().payment_hash();
        let mut request = SessionRequest::new(1, 2, None, bolt11, &hash, 300).to_value();
        edit(&mut request);
        let request = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&request).unwrap());
        gate402_http_auth::format_challenge(
            "Payment",
            [
                ("id", "an-id"),
                ("realm", "test"),
                ("method", "lightning"),
                ("intent", "session"),
                ("request", request.as_str()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_session_challenge_is_read_and_checked_against_its_deposit_invoice() {
        let bolt11 = invoice([7; 32], 600);
        let header = session_challenge(&bolt11, |_| {});
        let offer = SessionOffer::from_challenges([header.as_str()])
            .unwrap()
            .unwrap();
        assert_eq!(
            (offer.unit_sats, offer.deposit_sats, offer.idle_timeout_secs),
            (1, 2, Some(300))
        );
        assert_eq!(offer.bolt11, bolt11);
        assert_eq!(offer.field(), "Authorization");
        // None offered: none read.
        assert!(SessionOffer::from_challenges(["Basic realm=\"x\""])
            .unwrap()
            .is_none());
        for (edit, why) in [
            (
                Box::new(|r: &mut serde_json::Value| r["depositAmount"] = "3".into())
                    as Box<dyn FnOnce(&mut serde_json::Value)>,
                "depositAmount is 3 sat, the deposit invoice asks for 2000 msat",
            ),
            (
                Box::new(|r: &mut serde_json::Value| r["paymentHash"] = "00".repeat(32).into()),
                "paymentHash is not the deposit invoice's",
            ),
            (
                Box::new(|r: &mut serde_json::Value| r["currency"] = "usd".into()),
                "currency \"usd\" is not sat",
            ),
            (
                Box::new(|r: &mut serde_json::Value| {
                    r.as_object_mut().unwrap().remove("depositInvoice");
                }),
                "no depositInvoice",
            ),
        ] {
            let header = session_challenge(&bolt11, edit);
            let error = SessionOffer::from_challenges([header.as_str()])
                .unwrap_err()
                .to_string();
            assert!(error.ends_with(why), "{error}");
        }
    }

    #[test]
    fn a_deposit_above_the_cap_is_refused_with_the_cap_exit_code() {
        let bolt11 = invoice([8; 32], 600);
        let header = session_challenge(&bolt11, |_| {});
        let offer = SessionOffer::from_challenges([header.as_str()])
            .unwrap()
            .unwrap();
        let mut policy = crate::Policy {
            max_cost_sats: 2,
            max_fee_sats: 0,
            network: gate402_bolt11::Network::Regtest,
            budget: crate::Budget::default(),
        };
        assert_eq!(policy.check_deposit(&offer, SystemTime::now()), Ok(2_000));
        policy.max_cost_sats = 1;
        let refused = policy.check_deposit(&offer, SystemTime::now()).unwrap_err();
        assert_eq!(refused.exit_code(), 3);
        assert_eq!(
            refused,
            Refusal::OverCap {
                price_sats: 2,
                max_sats: 1,
                deposit: true,
            }
        );
    }

    #[test]
    fn a_refund_larger_than_every_deposit_is_recorded_as_disputed() {
        assert_eq!(
            as_recorded(Some(5), "succeeded".into(), 20),
            (5_000, "succeeded".to_owned())
        );
        assert_eq!(
            as_recorded(Some(5_000), "succeeded".into(), 20),
            (20_000, "disputed".to_owned())
        );
        assert_eq!(
            as_recorded(Some(5), "\u{1b}[31msucceeded".into(), 20),
            (5_000, "unknown".to_owned())
        );
        // A figure that is no whole number of sat (-5, 1.5, "5") is not
        // booked as a refund that succeeded.
        assert_eq!(
            as_recorded(None, "succeeded".into(), 20),
            (0, "unknown".to_owned())
        );
    }
}
