//! The one service every connection is served by: a request for one of
//! the gateway's own endpoints (health, metrics, discovery, MCP, the
//! sandbox) goes through axum's router, any other straight to the
//! paywalled proxy.
//!
//! It also answers HEAD as RFC 9110 (section 9.3.2) has it, a GET's fields
//! without its body, for every response: axum does so only for its own
//! routes, and HTTP/2 has no framing that drops a body sent anyway (the
//! client resets the stream).
//!
//! The router alone would do: what it has no route for, its fallback
//! hands to the proxy. But finding no route, then matching the fallback's
//! catch-all and recording its path parameter, cost about 3% of a proxied
//! request's instructions, on every paid and free request.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::http::{Method, Request, Response};
use axum::Router;
use futures_util::future::{Either, FutureExt, Map};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

/// Where the router's routes are: every path it has a route for starts
/// with one of these (a route's own path, or the path a nested service is
/// mounted at). A path that starts with one but has no route still
/// reaches the proxy, through the router's fallback; so a prefix listed
/// in excess costs a request some time, and one missing sends a request
/// for the gateway's own endpoint to the proxy.
pub(crate) const OWN_PATHS: &[&str] = &[
    super::HEALTH_PATH,
    super::METRICS_PATH,
    crate::discovery::SERVICES_PATH,
    crate::discovery::OPENAPI_PATH,
    crate::discovery::MANIFEST_PATH,
    crate::discovery::QUOTE_PATH,
    crate::mcp::WELL_KNOWN_PATH,
    crate::mcp::router::PATH,
    gate402_lightning_sandbox::http::PATH,
    gate402_lightning_sandbox::http::INVOICE_PATH,
];

/// Whether `path` may be one of the router's ([`OWN_PATHS`]).
fn is_own(path: &str) -> bool {
    OWN_PATHS.iter().any(|own| path.starts_with(own))
}

/// What a response becomes on its way out: itself, or for a HEAD request
/// its fields alone.
type Finish = fn(Result<Response<Body>, Infallible>) -> Result<Response<Body>, Infallible>;

fn as_is(response: Result<Response<Body>, Infallible>) -> Result<Response<Body>, Infallible> {
    response
}

/// The response's fields with no body, its length kept where known
/// ([`gate402_paywall::head::keep_length`]). The body is dropped unread,
/// as HTTP/1 drops it for HEAD.
fn headless(response: Result<Response<Body>, Infallible>) -> Result<Response<Body>, Infallible> {
    let Ok(response) = response;
    let (mut parts, body) = response.into_parts();
    let exact = body.size_hint().exact();
    gate402_paywall::head::keep_length(parts.status, &mut parts.headers, exact);
    Ok(Response::from_parts(parts, Body::empty()))
}

/// The router of the gateway's own endpoints (whose fallback is `proxy`
/// too) and the paywalled proxy, as one service.
#[derive(Clone)]
pub struct Front<P> {
    own: Router,
    proxy: P,
}

impl<P> Front<P> {
    /// `own` must route only paths that start with one of [`OWN_PATHS`]
    /// and fall back to `proxy` for the rest.
    pub(crate) fn new(own: Router, proxy: P) -> Self {
        Self { own, proxy }
    }
}

impl<P> Service<Request<Body>> for Front<P>
where
    P: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Map<Either<<Router as Service<Request<Body>>>::Future, Oneshot<P, Request<Body>>>, Finish>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call takes a clone of the service it goes to, readied there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let finish: Finish = if request.method() == Method::HEAD {
            headless
        } else {
            as_is
        };
        let answer = if is_own(request.uri().path()) {
            Either::Left(self.own.call(request))
        } else {
            Either::Right(self.proxy.clone().oneshot(request))
        };
        answer.map(finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn answered_by(front: &Front<Router>, path: &str) -> String {
        let response = front
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[test]
    fn a_head_answer_drops_its_body_and_keeps_its_length() {
        let Ok(response) = headless(Ok(Response::new(Body::from("{}"))));
        assert_eq!(response.body().size_hint().exact(), Some(0), "no body");
        assert_eq!(response.headers()["content-length"], "2");
    }

    #[tokio::test]
    async fn own_paths_reach_the_router_and_the_rest_the_proxy() {
        let proxy = Router::new().fallback(|| async { "proxy" });
        let mut own = Router::new();
        for path in OWN_PATHS {
            own = own.route(path, get(|| async { "own" }));
        }
        let front = Front::new(own.fallback_service(proxy.clone()), proxy);
        for path in OWN_PATHS {
            assert_eq!(answered_by(&front, path).await, "own", "{path}");
        }
        // Under an own prefix without a route: the router's fallback.
        for path in [
            "/healthz/x",
            "/mcpx",
            "/weather",
            "/",
            "//healthz",
            "/%68ealthz",
        ] {
            assert_eq!(answered_by(&front, path).await, "proxy", "{path}");
        }
    }
}
