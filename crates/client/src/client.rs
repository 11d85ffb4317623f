//! The auto-paying HTTP client: [`Payer::fetch_with`] runs the flow (a
//! cached token, a session, or a 402 paid and answered), [`Client`] runs
//! it over a plain `reqwest::Client`, [`crate::PaymentMiddleware`] inside
//! a `reqwest-middleware` stack.

use gate402_mpp::problem::ProblemType;
use std::future::Future;
use std::time::SystemTime;

use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, LOCATION,
    PROXY_AUTHORIZATION, TRANSFER_ENCODING,
};
use reqwest::{Method, Request, Response, StatusCode, Url};

use crate::error::FetchError;
use crate::ledger::{EndpointLock, PendingPayment};
use crate::payer::{
    now, pending_offer, refused, spends, with_credential, Endpoint, Fetched, Payer, Prefer,
};
use crate::session::{SessionOffer, Sessioned, TOP_UP_SCHEME};
use crate::{
    CachedToken, Offer, PaymentEntry, Refund, RequestKey, StoredSession, IDEMPOTENCY_KEY,
    PAYMENT_AUTHORIZATION,
};

/// The client of `gate402 get`: a [`Payer`] over a `reqwest::Client`.
pub struct Client {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The paying flow.
    pub payer: Payer,
}

impl Client {
    /// Sends `request`; pays a 402 within the policy and retries.
    pub async fn fetch(&self, request: Request) -> Result<Fetched, FetchError> {
        self.payer
            .fetch_with(request, |r| async { Ok(self.http.execute(r).await?) })
            .await
    }

    /// Closes `session` (see [`Payer::close_session`]) with this client's
    /// HTTP client.
    ///
    /// # Errors
    ///
    /// As [`Payer::close_session`].
    pub async fn close_session(&self, session: &StoredSession) -> Result<Refund, FetchError> {
        self.payer.close_session(&self.http, session).await
    }

    /// Like [`Client::fetch`], following up to `max_redirects` redirects
    /// itself (build `http` not to follow them), so that each hop is a
    /// request of its own to the payer: a 402 is paid to, and booked
    /// under, the origin that sent it, and a credential is presented only
    /// to the origin it was bought from. A hop to another origin carries
    /// none of the request's own credentials either (`Authorization`,
    /// `Payment-Authorization`, cookies), as curl and browsers do.
    ///
    /// The hops are one request: together they pay at most the policy's
    /// `max_cost_sats` (a hop after one that paid may pay only what is
    /// left of it), so a server cannot charge again behind each redirect.
    /// The entry returned is the last payment's; see
    /// [`Client::fetch_following_reporting`] for each of them.
    pub async fn fetch_following(
        &self,
        request: Request,
        max_redirects: usize,
    ) -> Result<Fetched, FetchError> {
        self.fetch_following_reporting(request, max_redirects, |_| {})
            .await
    }

    /// Like [`Client::fetch_following`], calling `paid` with every
    /// payment as it is made: a hop after it may still fail, and the
    /// money is gone all the same.
    pub async fn fetch_following_reporting(
        &self,
        request: Request,
        max_redirects: usize,
        mut on_paid: impl FnMut(&PaymentEntry),
    ) -> Result<Fetched, FetchError> {
        let mut request = request;
        let mut paid = None;
        let mut spent_msat: u64 = 0;
        for _ in 0..=max_redirects {
            let kept = request.try_clone();
            let mut payer = self.payer.clone();
            let cap_sats = payer.policy.max_cost_sats;
            let spent_sats = spent_msat.div_ceil(1000);
            payer.policy.max_cost_sats = cap_sats.saturating_sub(spent_sats);
            let fetched = payer
                .fetch_with(request, |r| async { Ok(self.http.execute(r).await?) })
                .await
                .map_err(|e| match e {
                    // Said as what is left of the request's cap.
                    FetchError::Refused(crate::Refusal::OverCap {
                        price_sats,
                        max_sats,
                        ..
                    }) if spent_sats > 0 => FetchError::Refused(crate::Refusal::OverCapAfterHops {
                        price_sats,
                        left_sats: max_sats,
                        cap_sats,
                        spent_sats,
                    }),
                    e => e,
                })?;
            let (response, entry) = match fetched {
                Fetched::Response(response, entry) => (response, entry),
                offer @ Fetched::Offer(_) => return Ok(offer),
            };
            if let Some(entry) = &entry {
                spent_msat = spent_msat.saturating_add(entry.amount_msat);
                on_paid(entry);
            }
            paid = entry.or(paid);
            let next = match (max_redirects, kept) {
                (0, _) | (_, None) => None,
                (_, Some(kept)) => redirected(kept, &response),
            };
            match next {
                Some(next) => request = next,
                None => return Ok(Fetched::Response(response, paid)),
            }
        }
        Err(FetchError::TooManyRedirects(max_redirects))
    }
}

/// The request a redirect asks for, as browsers and curl make it: 303
/// turns anything but HEAD into a GET, 301 and 302 turn a POST into one
/// (without its body), 307 and 308 keep both. `None` when `response` is
/// no redirect to follow.
fn redirected(mut request: Request, response: &Response) -> Option<Request> {
    let status = response.status();
    let to_get = match status {
        StatusCode::SEE_OTHER => request.method() != Method::HEAD,
        StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND => request.method() == Method::POST,
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => false,
        _ => return None,
    };
    let location = response.headers().get(LOCATION)?.to_str().ok()?;
    let next = response.url().join(location).ok()?;
    if !matches!(next.scheme(), "http" | "https") {
        return None;
    }
    if to_get {
        *request.method_mut() = Method::GET;
        *request.body_mut() = None;
        for name in [
            CONTENT_TYPE,
            CONTENT_LENGTH,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
        ] {
            request.headers_mut().remove(name);
        }
    }
    Some(moved(request, next))
}

/// `request` sent to `url` instead; its own credentials stay behind when
/// `url` is another origin.
fn moved(mut request: Request, url: Url) -> Request {
    if url.origin() != request.url().origin() {
        let headers = request.headers_mut();
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE] {
            headers.remove(name);
        }
        headers.remove(PAYMENT_AUTHORIZATION);
        headers.remove(gate402_x402::PAYMENT_SIGNATURE);
    }
    *request.url_mut() = url;
    request
}

/// Whether the request carries an `Authorization` of its own (an API
/// key, say): an L402 token in its place takes it away.
fn carries_authorization(request: &Request) -> bool {
    request.headers().contains_key(AUTHORIZATION)
}

/// Whether a pending payment was for what `offer` sells, as far as their
/// L402 macaroons tell (when either has no `services`, it is taken to be).
fn buys_the_same(pending: &PendingPayment, offer: &Offer) -> bool {
    let earlier = pending_offer(pending).ok().and_then(|o| o.l402_services());
    match (earlier, offer.l402_services()) {
        (Some(earlier), Some(now)) => earlier == now,
        _ => true,
    }
}

/// The scheme to answer a resumed payment's offer with: the one it was
/// begun for, if that offer has it, else the first the offer has.
fn resumed_scheme(recorded: &str, offer: &Offer) -> Prefer {
    let all = [Prefer::L402, Prefer::Mpp, Prefer::X402];
    all.into_iter()
        .find(|s| s.as_str() == recorded && offer.offers(*s))
        .or_else(|| all.into_iter().find(|s| offer.offers(*s)))
        .unwrap_or(Prefer::L402)
}

impl Payer {
    /// Sends `request` with `send`; pays a 402 within the policy and
    /// retries. Requests for one endpoint (origin and path) pay one at a
    /// time, across processes sharing the ledger, so concurrent requests
    /// share one L402 token instead of paying twice.
    ///
    /// The 402 is paid to the URL that sent it: when the HTTP stack
    /// followed a redirect on its own, the request is repeated there (a
    /// GET or HEAD only; see [`Client::fetch_following`]).
    ///
    /// With [`Payer::sessions`] on, a session kept for the route is spent
    /// first, and a 402 that offers a session opens one (see
    /// [`crate::SessionOffer`]).
    pub async fn fetch_with<S, F>(&self, request: Request, send: S) -> Result<Fetched, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let endpoint = Endpoint::of_request(&request);
        // Every paid attempt of this request carries the same key; the
        // unpaid one none, as it is not performed.
        let key = RequestKey::for_request(&request);
        let mut request = request;
        if let Some(key) = &key {
            key.apply(&mut request);
        }
        // A session kept for this route answers first; one that has ended
        // leaves the 402 the server answered, with a fresh challenge.
        let mut offered = None;
        if self.sessions && self.pay {
            if let Some(session) =
                self.ledger
                    .session_for_route(&endpoint.origin, &endpoint.method, &endpoint.path)?
            {
                match self
                    .spend(session, &request, &endpoint, false, &send)
                    .await?
                {
                    Sessioned::Answered(answer, paid) => {
                        return Ok(Fetched::Response(answer, paid))
                    }
                    Sessioned::Ended(refusal) => offered = refusal,
                }
            }
        }
        let response = match offered {
            Some(refusal) => refusal,
            None => {
                // Without paying, nothing kept is spent either: the offer
                // is what was asked for.
                if self.pay {
                    if let Some(answer) = self
                        .with_cached_token(&request, &endpoint, false, false, key.as_ref(), &send)
                        .await?
                    {
                        return Ok(Fetched::Response(answer, None));
                    }
                }
                let mut unpaid = request.try_clone().ok_or(FetchError::NotRepeatable)?;
                if key.is_some() {
                    unpaid.headers_mut().remove(IDEMPOTENCY_KEY);
                }
                send(unpaid).await?
            }
        };
        if response.status() != StatusCode::PAYMENT_REQUIRED {
            return Ok(Fetched::Response(response, None));
        }
        let (request, endpoint) = if response.url() == request.url() {
            (request, endpoint)
        } else {
            if !matches!(*request.method(), Method::GET | Method::HEAD) {
                return Err(FetchError::RedirectedRequest {
                    from: request.url().to_string(),
                    to: response.url().to_string(),
                    method: request.method().to_string(),
                });
            }
            let request = moved(request, response.url().clone());
            let endpoint = Endpoint::of_request(&request);
            (request, endpoint)
        };
        if self.sessions && self.pay {
            if let Some(offer) = SessionOffer::from_headers(response.headers())? {
                // A balance's L402 token kept for another route of the
                // service is spent first: it cannot be refunded, a
                // session's deposit can.
                if let Ok(kept) = Offer::from_headers(response.headers()) {
                    if let Some(answer) = self
                        .with_service_token(&request, &endpoint, &kept, false, key.as_ref(), &send)
                        .await?
                    {
                        return Ok(Fetched::Response(answer, None));
                    }
                }
                return self
                    .open_session(&request, &endpoint, key.as_ref(), offer, &send)
                    .await;
            }
        }
        let offer = Offer::from_headers(response.headers())?;
        if !self.pay {
            return Ok(Fetched::Offer(Box::new(offer)));
        }
        let own_authorization = carries_authorization(&request);
        // A token may take the place of the request's own Authorization
        // only where paying would too (no challenge names another field).
        let over_own = !(own_authorization
            && offer.payment.is_some()
            && offer.payment_field() == PAYMENT_AUTHORIZATION);
        // Refuse before waiting for anyone else's payment.
        let now = SystemTime::now();
        self.policy
            .check(&offer, self.scheme_for(&offer, own_authorization, now), now)?;
        let _lock = self
            .ledger
            .lock_endpoint(&endpoint.origin, &endpoint.path)
            .await?;
        // Whoever held the lock may have bought a token meanwhile.
        if let Some(answer) = self
            .with_cached_token(&request, &endpoint, over_own, true, key.as_ref(), &send)
            .await?
        {
            return Ok(Fetched::Response(answer, None));
        }
        // A payment an earlier run left pending is finished, not repeated;
        // one for another service on this path (another method) is left
        // to a request it buys.
        for pending in self
            .ledger
            .pending(Some((&endpoint.origin, &endpoint.path)))?
        {
            // A top-up is the session's to finish: its payment opens nothing.
            if pending.entry.scheme == TOP_UP_SCHEME || !buys_the_same(&pending, &offer) {
                continue;
            }
            if let Some(fetched) = self
                .resume(pending, &request, &endpoint, key.as_ref(), &send)
                .await?
            {
                return Ok(fetched);
            }
        }
        // A token bought on another route of the same service buys this
        // one too; a run buying one there meanwhile is waited for.
        let _services_lock = match offer.l402_services() {
            Some(services) if !offer.l402_single_use() => Some(
                self.ledger
                    .lock_services(&endpoint.origin, &services)
                    .await?,
            ),
            _ => None,
        };
        if let Some(answer) = self
            .with_service_token(&request, &endpoint, &offer, over_own, key.as_ref(), &send)
            .await?
        {
            return Ok(Fetched::Response(answer, None));
        }
        let now = SystemTime::now();
        let scheme = self.scheme_for(&offer, own_authorization, now);
        self.policy.check(&offer, scheme, now)?;
        let (mut entry, outcome) = self.pay(&endpoint, &offer, scheme, key.as_ref()).await?;
        let answer = self
            .answer(
                &request, &endpoint, &offer, scheme, &mut entry, &outcome, &send,
            )
            .await?;
        Ok(Fetched::Response(answer, Some(entry)))
    }

    /// Sends `request` with a kept token in its field. A retry
    /// of a request that went out with the token and got no answer (the
    /// digest of `own_key`, the key this run made for it, is the one
    /// noted with the token) carries that request's key instead; the key
    /// sent is noted with the token until an answer comes.
    async fn present<S, F>(
        &self,
        request: &Request,
        token: &CachedToken,
        own_key: Option<&RequestKey>,
        send: &S,
    ) -> Result<Response, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let once = || async {
            let mut attempt = with_credential(request, &token.field, &token.authorization)?;
            if let Some(kept) = token.unanswered_for(own_key) {
                kept.apply(&mut attempt);
            }
            let sent = RequestKey::of(&attempt);
            if let Some(sent) = &sent {
                self.ledger.note_unanswered(&token.payment_hash, sent)?;
            }
            let mut answer = send(attempt).await?;
            if let Some(sent) = sent.as_ref().filter(|_| spends(answer.status())) {
                self.ledger.note_answered(&token.payment_hash, sent)?;
            }
            answer.extensions_mut().insert(crate::EarlierPayment {
                payment_hash: token.payment_hash.clone(),
                via: "token",
            });
            Ok(answer)
        };
        // A per-request token answered `409` is held: by another request
        // (which this one does not wait for: it pays its own), or by its
        // own, sent by a run stopped before the answer, whose answer is
        // waited for as a held balance's is.
        if token.single_use() && token.unanswered_for(own_key).is_none() {
            return once().await;
        }
        crate::payer::past_held_balance(once).await
    }

    /// Whether this run may present `token`: `None` when it is a
    /// per-request token whose own request another run is paying for or
    /// waiting on (it holds the lock of the token's route; taken first
    /// here, the token would leave that request paid for and refused).
    /// Otherwise the route's lock, taken for as long as the token is used
    /// (none for a pass, or when this run holds it already: `locked`).
    fn free_to_present(
        &self,
        token: &CachedToken,
        locked: bool,
    ) -> Result<Option<Option<EndpointLock>>, FetchError> {
        if !token.single_use() || locked {
            return Ok(Some(None));
        }
        Ok(self
            .ledger
            .try_lock_endpoint(&token.origin, &token.path)?
            .map(Some))
    }

    /// Tries the token kept for this endpoint's route, if any. `None`: no
    /// token, the route refused it (then it is forgotten there), or it is
    /// a per-request token another request holds (answered `409`, or,
    /// unless this run holds the endpoint's lock (`locked`), another run
    /// holds the lock: it pays or waits for its answer). A request with an
    /// `Authorization` of its own gets one only when `over_own`.
    async fn with_cached_token<S, F>(
        &self,
        request: &Request,
        endpoint: &Endpoint,
        over_own: bool,
        locked: bool,
        own_key: Option<&RequestKey>,
        send: &S,
    ) -> Result<Option<Response>, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        if carries_authorization(request) && !over_own {
            return Ok(None);
        }
        let Some(token) = self.ledger.token_for(
            &endpoint.origin,
            &endpoint.method,
            &endpoint.path,
            &RequestKey::digest(request),
            now(),
        )?
        else {
            return Ok(None);
        };
        let Some(_owner) = self.free_to_present(&token, locked)? else {
            return Ok(None);
        };
        let answer = self.present(request, &token, own_key, send).await?;
        if refused(answer.status()) {
            // Expired or revoked, if the route it was kept for said so; a
            // refusal from where a redirect led says nothing of it. A
            // balance spent out is spent on every route; a token paid for
            // less than the price now is unspent, good again if the price
            // comes back down.
            if answer.url() == request.url() {
                let rejection = crate::session::Rejection::read(answer).await.ok();
                let is = |problem| rejection.as_ref().is_some_and(|r| r.is(problem));
                if is(ProblemType::LightningInsufficientBalance) {
                    self.ledger.forget_payment_tokens(&token.payment_hash)?;
                } else if !is(ProblemType::PaymentInsufficient) {
                    self.ledger.forget_token(&token)?;
                }
            }
            return Ok(None);
        }
        // Held by another request: this one pays its own, unless it is the
        // retry of the request the token was bought for (paying again
        // would run that request twice: its answer is waited for).
        let retry = token.unanswered_for(own_key).is_some();
        if token.single_use() && !retry && answer.status() == StatusCode::CONFLICT {
            return Ok(None);
        }
        if !spends(answer.status()) {
            return Ok(Some(answer));
        }
        if token.single_use() {
            // An MPP credential kept after a server error: served now, so
            // spent.
            self.ledger.forget_payment_tokens(&token.payment_hash)?;
        }
        let receipt = answer
            .headers()
            .get(gate402_mpp::RECEIPT_HEADER)
            .and_then(|v| v.to_str().ok());
        self.keep_first_receipt(&token.payment_hash, receipt)?;
        Ok(Some(answer))
    }

    /// Tries a token kept for another route that buys the service this
    /// 402 is for (its L402 macaroon names the same `services`), and keeps
    /// it for this route too when it is taken. A refusal here forgets
    /// nothing: the token may still be good where it was bought.
    async fn with_service_token<S, F>(
        &self,
        request: &Request,
        endpoint: &Endpoint,
        offer: &Offer,
        over_own: bool,
        own_key: Option<&RequestKey>,
        send: &S,
    ) -> Result<Option<Response>, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let Some(services) = offer.l402_services() else {
            return Ok(None);
        };
        if carries_authorization(request) && !over_own {
            return Ok(None);
        }
        // A balance spent out is forgotten and the next newest tried: a
        // deposit paid on one path and spent on others leaves none behind.
        let mut spent_out = 0;
        let (token, answer) = loop {
            let Some(token) = self
                .ledger
                .token_for_services(&endpoint.origin, &services, now())?
            else {
                return Ok(None);
            };
            let Some(_owner) = self.free_to_present(&token, false)? else {
                return Ok(None);
            };
            let answer = self.present(request, &token, own_key, send).await?;
            // Refused, or held by another request (`409`): this request
            // pays its own.
            if answer.status() == StatusCode::CONFLICT {
                return Ok(None);
            }
            if refused(answer.status()) {
                if spent_out < MAX_SPENT_OUT && is_spent_out(answer).await {
                    self.ledger.forget_payment_tokens(&token.payment_hash)?;
                    spent_out += 1;
                    continue;
                }
                return Ok(None);
            }
            break (token, answer);
        };
        if token.single_use() && spends(answer.status()) {
            // A per-request token kept unspent (its request failed): served
            // here, so spent everywhere it is kept.
            self.ledger.forget_payment_tokens(&token.payment_hash)?;
            return Ok(Some(answer));
        }
        if answer.url() == request.url() {
            let token = CachedToken {
                method: endpoint.method.clone(),
                path: endpoint.path.clone(),
                // Answered: nothing to send again.
                unanswered: None,
                ..token
            };
            self.ledger.cache_token(&token, now())?;
        }
        Ok(Some(answer))
    }

    /// Finishes a pending payment and answers the request with it. When
    /// the request is the one the payment was begun for (`own_key`, the
    /// key this run made, has the digest kept with it), it goes out with
    /// the key kept: to the API it is a retry of that request.
    async fn resume<S, F>(
        &self,
        pending: PendingPayment,
        request: &Request,
        endpoint: &Endpoint,
        own_key: Option<&RequestKey>,
        send: &S,
    ) -> Result<Option<Fetched>, FetchError>
    where
        S: Fn(Request) -> F + Sync,
        F: Future<Output = Result<Response, FetchError>> + Send,
    {
        let kept = pending
            .request_key
            .clone()
            .filter(|kept| own_key.is_some_and(|own| own.request_digest == kept.request_digest));
        let begun_for = pending.request_key.clone();
        let Some((mut entry, outcome, offer)) = self.finish_pending(pending).await? else {
            return Ok(None);
        };
        let scheme = resumed_scheme(&entry.scheme, &offer);
        // An MPP credential pays for the request it was begun for (its
        // body is bound): kept for that one, and this request pays its own.
        if let (Prefer::Mpp, Some(theirs), None) = (scheme, begun_for, &kept) {
            self.keep_for(&theirs, endpoint, &offer, &entry, &outcome)?;
            return Ok(None);
        }
        let retried;
        let request = match kept {
            Some(kept) => {
                let mut again = request.try_clone().ok_or(FetchError::NotRepeatable)?;
                kept.apply(&mut again);
                retried = again;
                &retried
            }
            None => request,
        };
        let answer = self
            .answer(
                request, endpoint, &offer, scheme, &mut entry, &outcome, send,
            )
            .await?;
        Ok(Some(Fetched::Response(answer, Some(entry))))
    }
}

impl Payer {
    /// Keeps the MPP credential of `entry`, a payment finished for a
    /// request this run is not sending, for that request (`theirs`: its
    /// key and digest): a run sending it presents the credential, unpaid,
    /// under that key.
    fn keep_for(
        &self,
        theirs: &RequestKey,
        endpoint: &Endpoint,
        offer: &Offer,
        entry: &PaymentEntry,
        outcome: &gate402_lightning::PaymentOutcome,
    ) -> Result<(), FetchError> {
        let token = CachedToken {
            origin: endpoint.origin.clone(),
            method: endpoint.method.clone(),
            path: endpoint.path.clone(),
            services: None,
            payment_hash: entry.payment_hash.clone(),
            authorization: offer
                .payment_authorization(&outcome.preimage)
                .unwrap_or_default(),
            field: offer.payment_field().to_owned(),
            bound_to: Some(theirs.request_digest.clone()),
            expires_at: offer.payment_expires_at(),
            unanswered: Some(theirs.clone()),
        };
        self.ledger.cache_token(&token, crate::payer::now())?;
        Ok(())
    }
}

/// How many spent-out balances one request forgets before it pays its
/// own: the ledger keeps a token per deposit, and a run may hold several.
const MAX_SPENT_OUT: usize = 8;

/// Whether a refusal says the token's balance is spent out
/// (`insufficient-balance`): no route will take it again.
async fn is_spent_out(answer: Response) -> bool {
    crate::session::Rejection::read(answer)
        .await
        .is_ok_and(|rejection| rejection.is(ProblemType::LightningInsufficientBalance))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tests::{invoice, l402_challenge, payment_challenge, x402_required};
    use crate::Budget;
    use crate::{Ledger, Policy, Wallet};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use reqwest::ResponseBuilderExt as _;

    fn payer(prefer: Option<Prefer>, dir: &std::path::Path) -> Payer {
        Payer {
            wallet: Wallet::sandbox(),
            policy: Policy {
                max_cost_sats: 10,
                max_fee_sats: 0,
                network: gate402_bolt11::Network::Regtest,
                budget: Budget::default(),
            },
            ledger: Arc::new(Ledger::open(&dir.join("l.sqlite3")).unwrap()),
            prefer,
            pay: true,
            sessions: false,
        }
    }

    #[test]
    fn the_scheme_keeps_the_requests_own_authorization_and_passes_over_expired_challenges() {
        let dir = tempfile::tempdir().unwrap();
        let bolt11 = invoice([5; 32], 600);
        let offer = |payment_params: &[(&str, &str)]| {
            let header = format!(
                "{}, {}",
                l402_challenge(&bolt11, &[]),
                payment_challenge(&bolt11, |b| URL_SAFE_NO_PAD.encode(b), payment_params)
            );
            Offer::from_challenges([header.as_str()]).unwrap()
        };
        let now = SystemTime::now();
        let keyed = offer(&[("header", "Payment-Authorization")]);
        let plain = offer(&[]);
        let expired = offer(&[("expires", "2020-01-01T00:00:00Z")]);
        for (prefer, offer, own, expected) in [
            (None, &keyed, false, Prefer::L402),
            (None, &keyed, true, Prefer::Mpp),
            (Some(Prefer::L402), &keyed, true, Prefer::Mpp),
            (Some(Prefer::Mpp), &keyed, false, Prefer::Mpp),
            // Without `header` the credential would take Authorization's
            // place either way: the preference stands.
            (Some(Prefer::L402), &plain, true, Prefer::L402),
            (Some(Prefer::Mpp), &expired, false, Prefer::L402),
        ] {
            let payer = payer(prefer, dir.path());
            assert_eq!(
                payer.scheme_for(offer, own, now),
                expected,
                "{prefer:?}, own Authorization {own}"
            );
        }
        // Nothing else to answer with: MPP, which the policy then refuses.
        let alone = payment_challenge(
            &bolt11,
            |b| URL_SAFE_NO_PAD.encode(b),
            &[("expires", "2020-01-01T00:00:00Z")],
        );
        let alone = Offer::from_challenges([alone.as_str()]).unwrap();
        assert_eq!(
            payer(None, dir.path()).scheme_for(&alone, false, now),
            Prefer::Mpp
        );
    }

    #[test]
    fn x402_is_answered_when_asked_for_or_when_nothing_else_can_be() {
        let dir = tempfile::tempdir().unwrap();
        let bolt11 = invoice([6; 32], 600);
        let live = x402_required(&bolt11, 2_000, 4_000_000_000);
        let ended = x402_required(&bolt11, 2_000, 1_600_000_000);
        let l402 = l402_challenge(&bolt11, &[]);
        let mpp = payment_challenge(
            &bolt11,
            |b| URL_SAFE_NO_PAD.encode(b),
            &[("header", "Payment-Authorization")],
        );
        let both = format!("{mpp}, {l402}");
        let now = SystemTime::now();
        for (prefer, challenges, required, own, expected) in [
            (None, "", &live, false, Prefer::X402),
            (Some(Prefer::L402), "", &live, false, Prefer::X402),
            (None, l402.as_str(), &live, false, Prefer::L402),
            (None, both.as_str(), &live, false, Prefer::Mpp),
            (
                Some(Prefer::X402),
                l402.as_str(),
                &live,
                false,
                Prefer::X402,
            ),
            (
                Some(Prefer::X402),
                l402.as_str(),
                &ended,
                false,
                Prefer::L402,
            ),
            // MPP in Payment-Authorization keeps the request's own
            // Authorization, whatever the preference.
            (Some(Prefer::X402), both.as_str(), &live, true, Prefer::Mpp),
            // Nothing else: x402, which the policy then refuses.
            (None, "", &ended, false, Prefer::X402),
        ] {
            let challenges: Vec<&str> =
                [challenges].into_iter().filter(|c| !c.is_empty()).collect();
            let offer = Offer::from_parts(challenges, Some(required)).unwrap();
            assert_eq!(
                payer(prefer, dir.path()).scheme_for(&offer, own, now),
                expected,
                "{prefer:?}"
            );
        }
        assert_eq!(
            resumed_scheme("x402", &Offer::from_parts([], Some(&live)).unwrap()),
            Prefer::X402
        );
        let all = Offer::from_parts([both.as_str()], Some(&live)).unwrap();
        for scheme in [Prefer::L402, Prefer::Mpp, Prefer::X402] {
            assert_eq!(resumed_scheme(scheme.as_str(), &all), scheme);
        }
    }

    fn redirect(status: u16, from: &str, to: &str) -> Response {
        http::Response::builder()
            .status(status)
            .url(Url::parse(from).unwrap())
            .header(LOCATION, to)
            .body("")
            .unwrap()
            .into()
    }

    #[test]
    fn a_redirect_is_followed_as_browsers_do_and_keeps_credentials_to_their_origin() {
        let http = reqwest::Client::new();
        let post = || {
            http.post("http://127.0.0.1:1/a")
                .header(AUTHORIZATION, "Bearer k")
                .header(PAYMENT_AUTHORIZATION, "Payment x")
                .header(COOKIE, "c=1")
                .header(CONTENT_TYPE, "application/json")
                .body("{}")
                .build()
                .unwrap()
        };
        let from = "http://127.0.0.1:1/a";
        for (status, method, body) in [
            (301, "GET", false),
            (302, "GET", false),
            (303, "GET", false),
            (307, "POST", true),
            (308, "POST", true),
        ] {
            // Same origin: the request's own credentials go along.
            let next = redirected(post(), &redirect(status, from, "/b")).unwrap();
            assert_eq!(next.url().as_str(), "http://127.0.0.1:1/b");
            assert_eq!(next.method().as_str(), method, "{status}");
            assert_eq!(next.body().is_some(), body, "{status}");
            assert_eq!(next.headers().contains_key(CONTENT_TYPE), body, "{status}");
            assert_eq!(next.headers()[AUTHORIZATION], "Bearer k");
            // Another origin (another port is one): none of them.
            let next = redirected(post(), &redirect(status, from, "http://127.0.0.1:2/b")).unwrap();
            for name in [AUTHORIZATION, COOKIE] {
                assert!(!next.headers().contains_key(&name), "{status} {name}");
            }
            assert!(
                !next.headers().contains_key(PAYMENT_AUTHORIZATION),
                "{status}"
            );
        }
        assert!(redirected(post(), &redirect(304, from, "/b")).is_none());
        assert!(redirected(post(), &redirect(302, from, "ftp://x/")).is_none());
    }
}
