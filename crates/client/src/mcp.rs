//! Calling paid MCP tools: the payment transport's `-32042` is paid like a
//! 402, under the same policy, budgets, lock and ledger, and the call is
//! made again with the credential in `_meta`.

use std::time::{Duration, SystemTime};

// rmcp's transport errors name the request, not why it failed (a
// timeout, say): they are said with their causes.
use gate402_lightning::with_causes;
use gate402_mpp::lightning::PreimagePayload;
use gate402_mpp::mcp::{
    self as wire, CREDENTIAL_META_KEY, PAYMENT_REQUIRED_CODE, PAYMENT_VERIFICATION_FAILED_CODE,
    RECEIPT_META_KEY,
};
use gate402_mpp::PaymentCredential;
use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject, RequestMetaObject};
use rmcp::service::{ClientInitializeError, RunningService};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceError, ServiceExt};
use serde_json::Value;

use crate::ledger::CachedToken;
use crate::payer::{now, own_receipt, Endpoint, Prefer};
use crate::{EarlierPayment, FetchError, Offer, Payer, PaymentEntry};

/// The argument a gateway's `create_payment` flow pays a call with (a
/// `paymentId`, for clients that do not speak the payment transport): a
/// call that carries one is never paid for again by this client.
const PAYMENT_ID_ARG: &str = "paymentId";

/// What a tool call produced.
// One per call and moved once: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ToolCall {
    /// The tool's result; the payment if this call paid; the earlier
    /// payment whose kept credential it was answered with, if it was (a
    /// credential an earlier call paid for and its server did not spend).
    Result(CallToolResult, Option<PaymentEntry>, Option<EarlierPayment>),
    /// The tool's price, unpaid (the payer does not pay).
    Offer(Box<Offer>),
}

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum McpCallError {
    /// The server could not be reached or did not speak MCP.
    #[error("MCP server: {0}")]
    Connect(String),
    /// The server answered the call with an error.
    #[error("tool error {code}: {message}")]
    Tool {
        /// The JSON-RPC code.
        code: i32,
        /// Its message.
        message: String,
        /// Its data.
        data: Option<Value>,
    },
    /// The payment required no Lightning charge this client can pay.
    #[error("the server asked for payment but offered no Lightning charge challenge")]
    NoLightningChallenge,
    /// Paying failed, was refused, or the ledger failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The call failed after this run paid for it. A call the server did
    /// not answer with a result (its upstream failed) leaves the
    /// credential unspent: it is kept, and the next call of the tool
    /// sends it again instead of paying.
    #[error("{error}")]
    AfterPayment {
        /// Why the call failed.
        error: Box<McpCallError>,
        /// The payment made for it.
        payment: Box<PaymentEntry>,
    },
}

/// Whether the server refused the credential (or asked for one): the
/// payment transport's two payment errors.
fn refused(error: &ServiceError) -> bool {
    matches!(error, ServiceError::McpError(e)
        if e.code.0 == PAYMENT_REQUIRED_CODE || e.code.0 == PAYMENT_VERIFICATION_FAILED_CODE)
}

/// The wait a server's error asks for before the call is made again
/// (`data.retryAfter`, seconds): a credential held by a call still under
/// way, unspent. `None` for any other error.
fn retry_after(error: &ServiceError) -> Option<std::time::Duration> {
    let ServiceError::McpError(e) = error else {
        return None;
    };
    let secs = e.data.as_ref()?.get("retryAfter")?.as_f64()?;
    secs.is_finite()
        .then(|| crate::payer::held_wait(Some(secs)))
}

fn params(tool: &str, arguments: &JsonObject, credential: Option<Value>) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = Some(arguments.clone());
    if let Some(credential) = credential {
        let mut meta = RequestMetaObject::new();
        meta.insert(CREDENTIAL_META_KEY.to_owned(), credential);
        params.meta = Some(meta);
    }
    params
}

/// Why the MCP session could not be set up: for a transport's failure,
/// what was being done and why it failed, without rmcp's type names.
fn initialize_error(error: &ClientInitializeError) -> String {
    match error {
        ClientInitializeError::TransportError { error, context } => {
            // rmcp's HTTP error names no source: the HTTP client's own
            // error is taken out to say why.
            match error
                .error
                .downcast_ref::<StreamableHttpError<reqwest::Error>>()
            {
                Some(StreamableHttpError::Client(http)) => {
                    format!("{context}: {}", with_causes(http))
                }
                _ => format!("{context}: {}", with_causes(error.error.as_ref())),
            }
        }
        other => with_causes(other),
    }
}

fn tool_error(error: ServiceError) -> McpCallError {
    match error {
        ServiceError::McpError(e) => McpCallError::Tool {
            code: e.code.0,
            message: e.message.into_owned(),
            data: e.data,
        },
        // A transport's failure, without rmcp's type names: its own error.
        ServiceError::TransportSend(e) => McpCallError::Connect(format!(
            "sending the call: {}",
            with_causes(e.error.as_ref())
        )),
        other => McpCallError::Connect(with_causes(&other)),
    }
}

/// The most redirects one MCP request follows.
const MAX_REDIRECTS: usize = 10;

/// The redirects an MCP client should follow: a `307` or `308` to the same
/// origin, at most ten. A paid call carries its credential in the body
/// (`_meta`), which another origin must never see, and a `301`–`303`
/// would drop the body.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let keeps_body = matches!(
            attempt.status(),
            reqwest::StatusCode::TEMPORARY_REDIRECT | reqwest::StatusCode::PERMANENT_REDIRECT
        );
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !keeps_body || !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// A connected MCP server, and how long a call may wait for its answer.
struct Server<'a> {
    client: &'a RunningService<RoleClient, ()>,
    within: Option<Duration>,
}

impl Server<'_> {
    /// `tools/call`, given up when not answered `within`: rmcp resumes an
    /// answer's event stream that broke off (a read timeout among the
    /// causes) for as long as the server takes the resumption, so the HTTP
    /// client's timeouts alone cannot bound a call.
    async fn call(&self, params: CallToolRequestParams) -> Result<CallToolResult, ServiceError> {
        let call = self.client.call_tool(params);
        match self.within {
            Some(within) => tokio::time::timeout(within, call)
                .await
                .unwrap_or(Err(ServiceError::Timeout { timeout: within })),
            None => call.await,
        }
    }
}

impl Payer {
    /// Calls `tool` on the MCP server at `url` (streamable HTTP) through
    /// `http`, paying what it asks within the policy, and gives up a call
    /// the server has not answered `within` (`None`: waits for ever).
    /// `http`'s own timeouts bound each HTTP exchange (rmcp's client has
    /// none); its redirects should follow [`redirect_policy`].
    ///
    /// # Errors
    ///
    /// [`McpCallError`]: the server unreachable, silent past `http`'s
    /// timeouts or not answering `within` (`Connect`; after a payment,
    /// `AfterPayment`, its credential kept for the next call), the tool's
    /// error (`Tool`), or the payment's.
    pub async fn call_tool(
        &self,
        http: reqwest::Client,
        within: Option<Duration>,
        url: &reqwest::Url,
        tool: &str,
        arguments: JsonObject,
    ) -> Result<ToolCall, McpCallError> {
        let transport = StreamableHttpClientTransport::with_client(
            http,
            StreamableHttpClientTransportConfig::with_uri(url.as_str()),
        );
        // Bounded as a call is: a server that keeps its answer's stream
        // alive with comments and never answers `initialize` would
        // otherwise hold the run, however short `http`'s read timeout.
        let initialized = match within {
            Some(within) => tokio::time::timeout(within, ().serve(transport))
                .await
                .map_err(|_| {
                    McpCallError::Connect(format!(
                        "the server did not answer initialize within {} s",
                        within.as_secs()
                    ))
                })?,
            None => ().serve(transport).await,
        };
        let client: RunningService<RoleClient, ()> =
            initialized.map_err(|e| McpCallError::Connect(initialize_error(&e)))?;
        let server = Server {
            client: &client,
            within,
        };
        let outcome = self.call_paying(&server, url, tool, &arguments).await;
        let _ = client.cancel().await;
        outcome
    }

    async fn call_paying(
        &self,
        server: &Server<'_>,
        url: &reqwest::Url,
        tool: &str,
        arguments: &JsonObject,
    ) -> Result<ToolCall, McpCallError> {
        let data = match server.call(params(tool, arguments, None)).await {
            Ok(result) => return Ok(ToolCall::Result(result, None, None)),
            // A call that pays with a paymentId pays with it or not at
            // all: a gateway reads the id before any credential, so a
            // charge paid alongside a refused id is refused too, and lost.
            Err(error) if refused(&error) && arguments.contains_key(PAYMENT_ID_ARG) => {
                return Err(tool_error(error))
            }
            Err(ServiceError::McpError(e))
                if e.code.0 == PAYMENT_REQUIRED_CODE
                    || e.code.0 == PAYMENT_VERIFICATION_FAILED_CODE =>
            {
                e.data.unwrap_or_default()
            }
            Err(other) => return Err(tool_error(other)),
        };
        let headers = header_forms(wire::extract_challenges_from_data(&data).unwrap_or_default());
        let offer =
            Offer::from_challenges(headers.iter().map(String::as_str)).map_err(FetchError::from)?;
        if offer.payment.is_none() {
            return Err(McpCallError::NoLightningChallenge);
        }
        if !self.pay {
            return Ok(ToolCall::Offer(Box::new(offer)));
        }
        self.policy
            .check(&offer, Prefer::Mpp, SystemTime::now())
            .map_err(FetchError::from)?;
        // One endpoint per tool, so the ledger, budgets and lock see calls
        // of one tool as requests to one route.
        let mut endpoint = Endpoint::of(&reqwest::Method::POST, url);
        endpoint.path = format!("{}#{tool}", endpoint.path);
        endpoint.url = format!("{url}#{tool}");
        let _lock = self
            .ledger
            .lock_endpoint(&endpoint.origin, &endpoint.path)
            .await
            .map_err(FetchError::from)?;
        // A credential an earlier call paid for and did not spend (its
        // upstream failed) is sent again, not paid for again.
        if let Some((result, earlier)) = self
            .with_kept_credential(server, &endpoint, tool, arguments)
            .await?
        {
            return Ok(ToolCall::Result(result, None, Some(earlier)));
        }
        // A payment an earlier run left pending is used, not repeated.
        let mut paid = None;
        for pending in self
            .ledger
            .pending(Some((&endpoint.origin, &endpoint.path)))
            .map_err(FetchError::from)?
        {
            if let Some(finished) = self.finish_pending(pending).await? {
                paid = Some(finished);
                break;
            }
        }
        let (mut entry, outcome, offer) = match paid {
            Some(finished) => finished,
            None => {
                let (entry, outcome) = self.pay(&endpoint, &offer, Prefer::Mpp, None).await?;
                (entry, outcome, offer)
            }
        };
        let challenge = offer
            .payment
            .as_ref()
            .ok_or(McpCallError::NoLightningChallenge)?;
        let credential =
            PaymentCredential::new(challenge.to_echo(), PreimagePayload::new(&outcome.preimage));
        // Kept until a result comes: a call that gets none leaves it unspent.
        let kept = CachedToken {
            origin: endpoint.origin.clone(),
            method: endpoint.method.clone(),
            path: endpoint.path.clone(),
            services: None,
            payment_hash: entry.payment_hash.clone(),
            authorization: gate402_mpp::credential::to_authorization(&credential),
            field: "_meta".into(),
            // Priced for these arguments: sent again with them alone.
            bound_to: Some(arguments_digest(arguments)),
            expires_at: offer.payment_expires_at(),
            unanswered: None,
        };
        self.ledger
            .cache_token(&kept, now())
            .map_err(FetchError::from)?;
        let credential = wire::credential_value(&credential)
            .map_err(|e| McpCallError::Connect(format!("credential: {e}")))?;
        let result = match server.call(params(tool, arguments, Some(credential))).await {
            Ok(result) => result,
            Err(error) => {
                return Err(McpCallError::AfterPayment {
                    error: Box::new(tool_error(error)),
                    payment: Box::new(entry),
                })
            }
        };
        self.ledger
            .forget_payment_tokens(&entry.payment_hash)
            .map_err(FetchError::from)?;
        let receipt = receipt_of(&result).filter(|r| own_receipt(r, &entry.payment_hash));
        self.ledger
            .attach_receipt(entry.id, Prefer::Mpp.as_str(), receipt.as_deref())
            .map_err(FetchError::from)?;
        entry.receipt = receipt.or(entry.receipt);
        Ok(ToolCall::Result(result, Some(entry), None))
    }

    /// Calls the tool with the credential kept for it, if there is one:
    /// `Some` with the result and that credential's payment when it was
    /// taken (then it is spent, and the receipt is its payment's); `None`
    /// when there is none or the server
    /// refused it (then it is forgotten).
    ///
    /// # Errors
    ///
    /// The server's error when the call failed again (the credential stays
    /// kept, unspent), or the ledger's.
    async fn with_kept_credential(
        &self,
        server: &Server<'_>,
        endpoint: &Endpoint,
        tool: &str,
        arguments: &JsonObject,
    ) -> Result<Option<(CallToolResult, EarlierPayment)>, McpCallError> {
        let kept = self
            .ledger
            .token_for(
                &endpoint.origin,
                &endpoint.method,
                &endpoint.path,
                &arguments_digest(arguments),
                now(),
            )
            .map_err(FetchError::from)?
            .filter(CachedToken::single_use);
        let Some(kept) = kept else {
            return Ok(None);
        };
        let credential = gate402_mpp::credential::parse_authorization(&kept.authorization)
            .ok()
            .and_then(|c| wire::credential_value(&c).ok());
        let forget = || {
            self.ledger
                .forget_payment_tokens(&kept.payment_hash)
                .map_err(FetchError::from)
        };
        let Some(credential) = credential else {
            forget()?;
            return Ok(None);
        };
        // Held by a call still under way (an earlier run's, interrupted):
        // waited for, as its end spends or frees the credential.
        let mut waits = 0;
        let result = loop {
            match server
                .call(params(tool, arguments, Some(credential.clone())))
                .await
            {
                Ok(result) => break result,
                Err(error) if refused(&error) => {
                    forget()?;
                    return Ok(None);
                }
                Err(error) => match retry_after(&error) {
                    Some(wait) if waits < crate::payer::HELD_BALANCE_WAITS => {
                        waits += 1;
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(tool_error(error)),
                },
            }
        };
        forget()?;
        self.keep_first_receipt(&kept.payment_hash, receipt_of(&result).as_deref())
            .map_err(FetchError::from)?;
        let earlier = EarlierPayment {
            payment_hash: kept.payment_hash,
            via: "token",
        };
        Ok(Some((result, earlier)))
    }
}

/// What a kept credential of a tool is bound to: its call's arguments
/// (SHA-256 of their JSON, hex), as its price may depend on them.
fn arguments_digest(arguments: &JsonObject) -> String {
    use sha2::Digest;
    let json = serde_json::to_string(arguments).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(json.as_bytes()))
}

/// The receipt a paid result carries in its `_meta`, as JSON text.
fn receipt_of(result: &CallToolResult) -> Option<String> {
    result
        .meta
        .as_ref()
        .and_then(|meta| meta.get(RECEIPT_META_KEY))
        .map(Value::to_string)
}

/// Challenges sent as JSON (in a `-32042` error's data) written in their
/// header form, to be read as HTTP's are. A description with line breaks
/// (a tool's) cannot be quoted there and binds nothing: its control
/// characters become spaces rather than the challenge being dropped.
fn header_forms(challenges: Vec<gate402_mpp::PaymentChallenge>) -> Vec<String> {
    challenges
        .into_iter()
        .filter_map(|mut c| {
            c.description = c
                .description
                .map(|d| gate402_mpp::challenge::one_line(&d).into_owned());
            gate402_mpp::challenge::to_header(&c).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// A tool's description with line breaks made its challenge unusable:
    /// `mcp call` said none was offered.
    #[test]
    fn a_challenge_whose_description_has_line_breaks_is_kept() {
        let header = r#"Payment id="x", realm="r", method="lightning", intent="charge", request="eyJhIjoxfQ""#;
        let mut challenge = gate402_mpp::challenge::parse_payment_challenges(header)
            .unwrap()
            .remove(0);
        challenge.description = Some("Weather report.\nGive a city.\u{1b}".into());
        let forms = super::header_forms(vec![challenge]);
        assert_eq!(forms.len(), 1);
        assert!(
            forms[0].contains("description=\"Weather report. Give a city. \""),
            "{forms:?}"
        );
    }
}
