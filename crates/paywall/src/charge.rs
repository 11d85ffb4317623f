//! What one request is charged, and what its credential paid: the
//! paywall's side of [`crate::pricing`] (its rules, its HTTP pricer and the
//! cache of the pricer's answers), with the request's body read within the
//! body budget and the node asked when a token does not say.

use std::sync::Arc;

use bytes::Bytes;
use gate402_mpp::verify::ChargeCredential;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;

use crate::body::{read_whole, BodyError, BoxError};
use crate::credentials::CredentialScheme;
use crate::paywall::Paywall;
use crate::pricing::{
    at_price, content_encoding, l402_amount, too_dear, too_little, PriceRequest, Unquotable,
    MAX_PRICE_SATS,
};
use crate::responses::{self, Refusal};
use crate::route::{PricedService, Sells};
use crate::verify::Verified;

impl Paywall {
    /// The service as priced for this request: for a dynamically priced
    /// service, a copy whose `price_sats` is this request's price (its body
    /// read, within the body limit, when a rule or the pricer needs it);
    /// any other service as it is. Only a request that presents a
    /// credential (`paid`) waits for room in the body budget; an unpaid one
    /// finding it spent gets a 503 at once, as its challenge would.
    ///
    /// # Errors
    ///
    /// The answer for a body that could not be read (413, also for a body
    /// over the limit when a rule looks into its fields; 400; 503 busy);
    /// a 400 for what a rule depends on that cannot be read one way only
    /// ([`Unreadable`](crate::pricing::Unreadable): a query parameter given twice, a body that is not
    /// strict JSON, a count that is not a plain whole number…), and for a
    /// request whose rules price it above [`MAX_PRICE_SATS`].
    pub async fn priced<B>(
        &self,
        service: Arc<PricedService>,
        request: &mut Request<B>,
        paid: bool,
    ) -> Result<Arc<PricedService>, Response<Bytes>>
    where
        B: Body<Data = Bytes> + From<Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let Some(pricing) = service.pricing.as_ref().filter(|_| service.is_dynamic()) else {
            return Ok(service);
        };
        let declared = request.body().size_hint().lower();
        let encoding = content_encoding(request.headers());
        // A body whose fields an upstream may read as query parameters.
        let merged = pricing.reads_query()
            && request.body().size_hint().exact() != Some(0)
            && crate::body::has_fields(request.headers());
        let body = if pricing.reads_body() || merged {
            match read_whole(request, &self.inner.bodies, paid).await {
                Ok(body) => Some(body),
                // Unread, its fields cannot decide a price: a body too large
                // would otherwise buy the default price for any request.
                Err(BodyError::TooLarge) if !pricing.reads_fields() && !merged => None,
                Err(e) => return Err(self.inner.bodies.refusal(e)),
            }
        } else {
            None
        };
        let form = crate::body::declares_form(request.headers())
            || (crate::body::untyped(request.headers())
                && body
                    .as_deref()
                    .is_some_and(|b| pricing.form_names_a_field(b)));
        let view = PriceRequest {
            method: request.method(),
            path: request.uri().path(),
            query: request.uri().query(),
            body: body.as_deref(),
            body_len: body.as_ref().map_or(declared, |b| b.len() as u64),
            encoding: encoding.as_deref(),
            form,
        };
        let price = match pricing.rule_price(&view) {
            Err(unreadable) => return Err(responses::bad_request(&unreadable.to_string())),
            Ok(Some(price)) if price > MAX_PRICE_SATS => {
                return Err(responses::bad_request(&too_dear()))
            }
            Ok(Some(price)) => price,
            Ok(None) => match &pricing.pricer {
                Some(pricer) => {
                    let vouched = self.client_of(request).is_some_and(|client| {
                        client.via_trusted_proxy(&self.inner.trusted_proxies)
                    });
                    let shown = crate::pricing::shown_headers(request.headers(), vouched)
                        .map_err(|e| responses::bad_request(&e.to_string()))?;
                    self.inner
                        .pricers
                        .price(&service.name, pricer, &view, shown, &self.inner.metrics)
                        .await
                }
                None => service.price_sats,
            },
        };
        Ok(if price == service.price_sats {
            service
        } else {
            at_price(&service, price)
        })
    }

    /// What a request to `service` with this method, path, query and
    /// headers, and no body, is asked: the quote endpoint's answer, in
    /// sat. `None` when its price depends on a body it would send (a POST,
    /// PUT or PATCH to a service whose rules or pricer read the body).
    ///
    /// # Errors
    ///
    /// [`Unquotable`] where the request itself would be refused with a
    /// 400 (and these words): a query parameter a rule reads that cannot be
    /// read one way only (given twice, a count that is not a plain whole
    /// number…), or a price above [`MAX_PRICE_SATS`].
    pub async fn quote(
        &self,
        service: &PricedService,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Option<u64>, Unquotable> {
        let Some(pricing) = service.pricing.as_ref().filter(|_| service.is_dynamic()) else {
            return Ok(Some(service.price_sats));
        };
        if crate::body::binds_body(method) && pricing.reads_body() {
            return Ok(None);
        }
        let view = PriceRequest {
            method,
            path,
            query,
            body: Some(&[]),
            body_len: 0,
            encoding: None,
            form: false,
        };
        Ok(Some(match pricing.rule_price(&view)? {
            Some(price) if price > MAX_PRICE_SATS => return Err(Unquotable::TooDear),
            Some(price) => price,
            None => match &pricing.pricer {
                Some(pricer) => {
                    // A quote believes no forwarding header: the pricer is
                    // shown what a direct request shows.
                    let shown = crate::pricing::shown_headers(headers, false)?;
                    self.inner
                        .pricers
                        .price(&service.name, pricer, &view, shown, &self.inner.metrics)
                        .await
                }
                None => service.price_sats,
            },
        }))
    }

    /// For a credential that buys one request (every MPP charge and x402
    /// payment, an L402 token with a `<service>_uses` caveat), the service
    /// as paid: its price the amount the credential's invoice asked for,
    /// once that is at least this request's price, whether the price is
    /// dynamic or fixed (raised since it was bought, or the service made
    /// anew under its name). An L402 token tells it by its
    /// `<service>_amount` caveat, an MPP charge by its challenge, an x402
    /// payment by its invoice (told by its verification); only a
    /// token minted without the caveat asks the node what its invoice was
    /// paid. A pass and a balance are honoured at what they were bought
    /// for.
    ///
    /// # Errors
    ///
    /// A 402 refusal (`payment-insufficient`) for a credential that paid
    /// less, or a 503 when the node cannot say what its invoice was paid.
    pub(crate) async fn paid_for(
        &self,
        service: &Arc<PricedService>,
        scheme: CredentialScheme,
        value: &str,
        verified: &Verified,
    ) -> Result<Arc<PricedService>, Result<Refusal, Response<Bytes>>> {
        if !verified.single_use || verified.balance.is_some() || service.sells == Sells::Balance {
            return Ok(service.clone());
        }
        // Told by verification where it could (not parsed again here).
        let told = verified.paid_sats.or_else(|| match scheme {
            CredentialScheme::L402 => l402_amount(&service.name, value),
            CredentialScheme::Payment => crate::verify::Verifier::parse_payment(value)
                .ok()
                .and_then(|c| ChargeCredential::read(&c).amount_sats()),
            // Told by verification (its invoice's amount).
            CredentialScheme::X402 => None,
        });
        let paid = match told {
            Some(paid) => paid,
            None => match self.backend().invoice_status(&verified.payment_hash).await {
                Ok(gate402_lightning::InvoiceStatus::Settled { amount_msat, .. }) => {
                    amount_msat / 1000
                }
                Ok(_) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "cannot ask the node what an invoice was paid");
                    return Err(Err(responses::unavailable("the Lightning node")));
                }
            },
        };
        if paid < service.price_sats {
            return Err(Ok(too_little(paid, service)));
        }
        Ok(if paid == service.price_sats {
            service.clone()
        } else {
            at_price(service, paid)
        })
    }
}
