//! The paying flow as a `reqwest-middleware` middleware, for Rust programs
//! that already build their HTTP client with a middleware stack.

use std::sync::Arc;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::{FetchError, Fetched, Payer};

/// Pays a 402 within the [`Payer`]'s policy and retries, with the same
/// token cache and ledger as `gate402 get`; with [`Payer::sessions`] on,
/// opens, spends from, tops up and closes MPP sessions as `gate402 get
/// --session` does (close one with [`PaymentMiddleware::payer`] and
/// [`Payer::close_session`]).
///
/// ```no_run
/// # async fn example(payer: gate402_client::Payer) -> Result<(), Box<dyn std::error::Error>> {
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(gate402_client::PaymentMiddleware::new(payer))
///     .build();
/// let weather = client.get("https://api.example.com/weather").send().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PaymentMiddleware {
    payer: Arc<Payer>,
}

impl PaymentMiddleware {
    /// Wraps a payer; its `pay` flag is ignored (a middleware always pays).
    pub fn new(payer: Payer) -> Self {
        Self {
            payer: Arc::new(Payer { pay: true, ..payer }),
        }
    }

    /// The payer it pays with: its ledger (sessions kept, payments,
    /// refunds), and [`Payer::close_session`].
    pub fn payer(&self) -> &Payer {
        &self.payer
    }
}

#[async_trait::async_trait]
impl Middleware for PaymentMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let base = extensions.clone();
        let send = |request: Request| {
            let next = next.clone();
            let mut extensions = base.clone();
            async move {
                next.run(request, &mut extensions)
                    .await
                    .map_err(|e| match e {
                        reqwest_middleware::Error::Reqwest(e) => FetchError::Http(e),
                        reqwest_middleware::Error::Middleware(e) => {
                            FetchError::Middleware(e.into())
                        }
                    })
            }
        };
        match self.payer.fetch_with(request, send).await {
            Ok(Fetched::Response(response, _)) => Ok(response),
            Ok(Fetched::Offer(_)) => unreachable!("a middleware payer always pays"),
            Err(FetchError::Http(e)) => Err(e.into()),
            Err(e) => Err(reqwest_middleware::Error::middleware(e)),
        }
    }
}
