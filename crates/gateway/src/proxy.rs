//! The reverse proxy behind the paywall: forwards a request to its
//! service's upstream, streaming bodies both ways.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::ServiceConfig;
use crate::problem::problem_response;

/// Put into request extensions by the paywall: the service that matched.
#[derive(Debug, Clone)]
pub struct MatchedService(pub Arc<ServiceConfig>);

/// How long to wait for an upstream's response headers.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// The tower service that proxies to the matched service's upstream.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
}

impl Default for Proxy {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Proxy {
    /// Forwards `request` to `service`'s upstream.
    pub async fn forward(&self, service: &ServiceConfig, request: Request<Body>) -> Response<Body> {
        let Some(upstream) = &service.upstream else {
            return problem_response(
                StatusCode::NOT_FOUND,
                "about:blank",
                "Not Found",
                "this service has no upstream",
                None,
            );
        };
        let (mut parts, body) = request.into_parts();
        let path = service.rewrite.apply(parts.uri.path());
        let target = match parts.uri.query() {
            Some(q) => format!("{upstream}{path}?{q}"),
            None => format!("{upstream}{path}"),
        };
        let Ok(uri) = target.parse::<Uri>() else {
            return problem_response(
                StatusCode::BAD_REQUEST,
                "about:blank",
                "Bad Request",
                "request path cannot be forwarded",
                None,
            );
        };
        let client_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        // The payment credential is for the gateway, not the upstream.
        let is_payment = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_whitespace().next())
            .is_some_and(|scheme| {
                ["l402", "lsat", "payment"].contains(&scheme.to_ascii_lowercase().as_str())
            });
        if is_payment {
            parts.headers.remove(header::AUTHORIZATION);
        }
        if let Some(authority) = uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, host);
            }
        }
        if let Some(host) = client_host {
            parts.headers.insert("x-forwarded-host", host);
        }
        if let Some(addr) = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        {
            if let Ok(ip) = HeaderValue::from_str(&addr.0.ip().to_string()) {
                parts.headers.append("x-forwarded-for", ip);
            }
        }
        for (name, value) in &service.headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        parts.uri = uri;
        parts.version = axum::http::Version::HTTP_11;
        let request = Request::from_parts(parts, body);
        match tokio::time::timeout(UPSTREAM_TIMEOUT, self.client.request(request)).await {
            Err(_) => problem_response(
                StatusCode::GATEWAY_TIMEOUT,
                "about:blank",
                "Gateway Timeout",
                "the upstream did not answer in time",
                None,
            ),
            Ok(Err(e)) => {
                tracing::warn!(service = %service.name, error = %e, "upstream unreachable");
                problem_response(
                    StatusCode::BAD_GATEWAY,
                    "about:blank",
                    "Bad Gateway",
                    "the upstream could not be reached",
                    None,
                )
            }
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
        }
    }
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move {
            let Some(MatchedService(service)) =
                request.extensions().get::<MatchedService>().cloned()
            else {
                return Ok(problem_response(
                    StatusCode::NOT_FOUND,
                    "about:blank",
                    "Not Found",
                    "no service is configured for this path",
                    None,
                ));
            };
            Ok(proxy.forward(&service, request).await)
        })
    }
}
