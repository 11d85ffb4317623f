//! The `/mcp` endpoint and what bounds it: the hosts and browser origins
//! it answers, the size of a request, how many requests it serves at once,
//! and how many sessions it keeps, all clients together and per client.
//!
//! An MCP request is read whole before anything else happens to it, and a
//! session lives on the server until it idles out, so both are counted per
//! client (IPv6: per /64, behind trusted proxies: the forwarded client):
//! one client cannot fill the memory with bodies read at once, nor take
//! every session so that nobody else can open one. A request whose
//! JSON-RPC id is that of one still answered in its session is refused:
//! the library answers both on one channel, so a paid call's result could
//! be lost after its payment was spent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse as _, Response};
use gate402_paywall::{ClientKey, Paywall};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::PaidTools;
use crate::config::McpConfig;

/// Where the MCP endpoint is mounted (streamable HTTP).
pub const PATH: &str = "/mcp";

/// The `/mcp` service for `tools`, bounded by `config`, reachable as
/// `allowed` says; clients are told apart as `paywall` tells them.
pub fn router(
    tools: PaidTools,
    config: &McpConfig,
    allowed: &McpAccess,
    paywall: &Paywall,
) -> axum::Router {
    let mut server = StreamableHttpServerConfig::default();
    server = match &allowed.hosts {
        Some(hosts) => server.with_allowed_hosts(hosts.clone()),
        None => server.disable_allowed_hosts(),
    };
    server = match &allowed.origins {
        Some(origins) if origins.is_empty() => server.enforce_origin_validation(),
        Some(origins) => server.with_allowed_origins(origins.clone()),
        None => server,
    };
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(Duration::from_secs(config.session_idle_secs));
    let sessions = Arc::new(sessions);
    let service = StreamableHttpService::new(move || Ok(tools.clone()), sessions.clone(), server);
    let guard = Arc::new(Guard {
        sessions,
        origins: allowed.origins.clone(),
        paywall: paywall.clone(),
        config: config.clone(),
        book: Mutex::new(Book::default()),
    });
    axum::Router::new()
        .nest_service(
            PATH,
            tower::ServiceBuilder::new()
                .layer(tower_http::limit::RequestBodyLimitLayer::new(
                    config.max_request_bytes,
                ))
                .service(service),
        )
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let guard = guard.clone();
                async move { guard.admit(request, next).await }
            },
        ))
}

/// Who may reach `/mcp`: `None` checks nothing; `Some(empty)` origins
/// refuses every request that carries an `Origin`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpAccess {
    /// Allowed `Host` values.
    pub hosts: Option<Vec<String>>,
    /// Allowed `Origin` values.
    pub origins: Option<Vec<String>>,
}

impl McpAccess {
    /// What `config` allows, with the defaults for a gateway listening on
    /// `listen`: on loopback only loopback hosts and no browser origin
    /// (DNS rebinding and cross-site pages cannot reach a local server);
    /// elsewhere anyone, as every call is paid for. The pages that may
    /// pay from a browser (`cors_origins`, `*` for any) may call too.
    pub fn new(config: &McpConfig, cors_origins: &[String], listen: std::net::SocketAddr) -> Self {
        let loopback = listen.ip().is_loopback();
        let origins = match config
            .allowed_origins
            .clone()
            .or_else(|| loopback.then(Vec::new))
        {
            Some(_) if cors_origins.iter().any(|o| o == "*") => None,
            Some(mut origins) => {
                origins.extend(cors_origins.iter().cloned());
                Some(origins)
            }
            None => None,
        };
        Self {
            hosts: config.allowed_hosts.clone().or_else(|| {
                loopback.then(|| {
                    ["localhost", "localhost.", "127.0.0.1", "[::1]", "::1"]
                        .iter()
                        .map(|h| (*h).to_owned())
                        .collect()
                })
            }),
            origins,
        }
    }
}

/// Counts what each client holds at `/mcp`.
struct Guard {
    sessions: Arc<LocalSessionManager>,
    /// The browser origins allowed ([`McpAccess::origins`]), compared
    /// whole here: the MCP library takes an allowed origin written without
    /// a port for that origin on any port.
    origins: Option<Vec<String>>,
    paywall: Paywall,
    config: McpConfig,
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    in_flight: usize,
    in_flight_by: HashMap<ClientKey, usize>,
    /// Initializes under way: their session is made only once their body
    /// has been read, so they count against the caps from the start.
    opening: usize,
    opening_by: HashMap<ClientKey, usize>,
    /// Open sessions: who opened them, and when they were recorded (a
    /// count of records).
    owners: HashMap<String, (ClientKey, u64)>,
    sessions_by: HashMap<ClientKey, usize>,
    recorded: u64,
    /// The JSON-RPC ids of requests being answered, with their session.
    ids: HashSet<(String, String)>,
}

/// The answer to a JSON body that is not one JSON-RPC message: `400`,
/// with the JSON-RPC error a parse failure gets.
fn not_a_message() -> Response {
    invalid_request(
        StatusCode::BAD_REQUEST,
        serde_json::Value::Null,
        "the body is not one JSON-RPC message this server takes (a batch array is not taken; a member named twice is refused)",
    )
}

/// A JSON-RPC `-32600` (invalid request) error for request `id`, with
/// `message`, answered with `status`.
fn invalid_request(status: StatusCode, id: serde_json::Value, message: &str) -> Response {
    let error = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": -32600, "message": message},
    });
    (status, axum::Json(error)).into_response()
}

/// The id of a request being answered in its session, given back when
/// its answer has been sent (or dropped).
struct IdInFlight {
    guard: Arc<Guard>,
    key: (String, String),
}

impl Drop for IdInFlight {
    fn drop(&mut self) {
        let mut book = self.guard.book.lock().unwrap_or_else(|e| e.into_inner());
        book.ids.remove(&self.key);
    }
}

/// The `id` of a JSON-RPC request (one with a `method`); `None` for a
/// notification, a response, a batch or what is no JSON-RPC at all (the
/// library answers those).
fn request_id(body: &[u8]) -> Option<serde_json::Value> {
    #[derive(serde::Deserialize)]
    struct Message {
        id: Option<serde_json::Value>,
        method: Option<serde::de::IgnoredAny>,
    }
    let message: Message = serde_json::from_slice(body).ok()?;
    message.method?;
    message.id
}

/// What one request holds in the [`Book`], given back however it ends
/// (dropped included).
struct Held {
    guard: Arc<Guard>,
    client: ClientKey,
    opening: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut book = self.guard.book.lock().unwrap_or_else(|e| e.into_inner());
        book.in_flight -= 1;
        decrement(&mut book.in_flight_by, self.client);
        if self.opening {
            book.opening -= 1;
            decrement(&mut book.opening_by, self.client);
        }
    }
}

fn decrement(counts: &mut HashMap<ClientKey, usize>, key: ClientKey) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

fn refuse(status: StatusCode, detail: &str) -> Response {
    let mut response = crate::problem::problem_response(
        status,
        "about:blank",
        if status == StatusCode::TOO_MANY_REQUESTS {
            "Too Many Requests"
        } else {
            "Service Unavailable"
        },
        detail,
        None,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    response
}

impl Guard {
    async fn admit(
        self: Arc<Self>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> Response {
        let config = &self.config;
        if let Some(allowed) = &self.origins {
            // Every `Origin` field, not only the first the library reads.
            let listed = request
                .headers()
                .get_all(header::ORIGIN)
                .iter()
                .all(|origin| {
                    origin.to_str().is_ok_and(|origin| {
                        allowed
                            .iter()
                            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
                    })
                });
            if !listed {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "this origin may not call /mcp (it is not among [mcp] allowed_origins and cors_origins)",
                );
            }
        }
        let client = self
            .paywall
            .client_from(request.extensions(), request.headers())
            .map_or(ClientKey::V4([0; 4]), |c| c.key());
        // A request without a session id opens one (initialize).
        let opens =
            request.method() == Method::POST && !request.headers().contains_key("mcp-session-id");
        // Counted first, checked after: a request finishing meanwhile is
        // then counted once or twice, never not at all.
        let (held, counted_until) = {
            let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            if book.in_flight >= config.max_requests_in_flight {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "/mcp is serving as many requests as it can; retry later",
                );
            }
            if book.in_flight_by.get(&client).copied().unwrap_or(0)
                >= config.max_requests_in_flight_per_client
            {
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests to /mcp from this client at once",
                );
            }
            book.in_flight += 1;
            *book.in_flight_by.entry(client).or_default() += 1;
            if opens {
                book.opening += 1;
                *book.opening_by.entry(client).or_default() += 1;
            }
            let held = Held {
                guard: self.clone(),
                client,
                opening: opens,
            };
            (held, book.recorded)
        };
        if opens {
            let live: HashSet<String> = self
                .sessions
                .sessions
                .read()
                .await
                .keys()
                .map(|id| id.to_string())
                .collect();
            let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            book.forget_closed(&live, counted_until);
            if live.len() + book.opening > config.max_sessions {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many MCP sessions are open; retry later",
                );
            }
            let mine = book.sessions_by.get(&client).copied().unwrap_or(0)
                + book.opening_by.get(&client).copied().unwrap_or(0);
            if mine > config.max_sessions_per_client {
                return refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "this client holds too many MCP sessions; close one (DELETE /mcp) or let one idle out",
                );
            }
        }
        let sent_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        let (request, id_in_flight) = match self.hold_id(request).await {
            Ok(held) => held,
            Err(refused) => return refused,
        };
        let mut response = next.run(request).await;
        // The library answers a JSON body it cannot take as one JSON-RPC
        // message (a batch array, a message of two `params`) with 415, as
        // if the media type were wrong.
        if sent_json && response.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            response = not_a_message();
        }
        let response = match id_in_flight {
            // Held until the answer's stream has been sent.
            Some(id) => response.map(|body| {
                use futures_util::StreamExt as _;
                axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
                    let _ = &id;
                    chunk
                }))
            }),
            None => response,
        };
        if opens {
            let id = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok());
            if let Some(id) = id {
                let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
                book.recorded += 1;
                let entry = (client, book.recorded);
                if book.owners.insert(id.to_owned(), entry).is_none() {
                    *book.sessions_by.entry(client).or_default() += 1;
                }
            }
        }
        drop(held);
        response
    }
}

impl Guard {
    /// Reads the body of a request in a session (within
    /// `max_request_bytes`) and takes its JSON-RPC id, if it has one, as
    /// being answered: the request rebuilt, and what gives the id back.
    ///
    /// # Errors
    ///
    /// The answer when the body is too large (`413`) or breaks off
    /// (`400`), or its id is that of a request still answered in its
    /// session (a JSON-RPC error, `-32600`).
    async fn hold_id(
        self: &Arc<Self>,
        request: axum::extract::Request,
    ) -> Result<(axum::extract::Request, Option<IdInFlight>), Response> {
        let session = request
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(session) = session.filter(|_| request.method() == Method::POST) else {
            return Ok((request, None));
        };
        let (parts, body) = request.into_parts();
        let body = match axum::body::to_bytes(body, self.config.max_request_bytes).await {
            Ok(body) => body,
            Err(e) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                let status = if too_large {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return Err(status.into_response());
            }
        };
        // Read by the library with the last of a member named twice (in
        // `arguments`, `_meta`), by an upstream perhaps with the first.
        if gate402_paywall::pricing::names_a_member_twice(&body) {
            return Err(not_a_message());
        }
        let held = match request_id(&body) {
            Some(id) => {
                let key = (session, id.to_string());
                let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
                if !book.ids.insert(key.clone()) {
                    return Err(invalid_request(
                        StatusCode::OK,
                        id,
                        "a request with this id is still being answered in this session; give each request an id of its own",
                    ));
                }
                Some(IdInFlight {
                    guard: self.clone(),
                    key,
                })
            }
            None => None,
        };
        Ok((
            axum::extract::Request::from_parts(parts, axum::body::Body::from(body)),
            held,
        ))
    }
}

impl Book {
    /// Stops counting sessions that closed or idled out: those recorded
    /// before `live` was read that it does not hold.
    fn forget_closed(&mut self, live: &HashSet<String>, recorded_before: u64) {
        let closed: Vec<String> = self
            .owners
            .iter()
            .filter(|(id, (_, at))| *at <= recorded_before && !live.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in closed {
            if let Some((client, _)) = self.owners.remove(&id) {
                decrement(&mut self.sessions_by, client);
            }
        }
    }
}
