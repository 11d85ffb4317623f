//! CORS for pages that call the gateway from a browser (`[server]
//! cors_origins`): tower-http's layer, told which origins may call and
//! which of the gateway's fields their scripts may read.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, Uri};
use futures_util::future::Either;
use tower::util::MapResponse;
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, Cors, CorsLayer, ExposeHeaders};

/// What a paying page's script must read: a 402's challenges
/// (`WWW-Authenticate`, x402's `PAYMENT-REQUIRED`), a paid answer's
/// receipts (`Payment-Receipt`, x402's `PAYMENT-RESPONSE`), when to ask
/// again (`Retry-After`), the manifest's link, and the MCP session an
/// `initialize` at `/mcp` opens (`Mcp-Session-Id`, sent back on each call).
const EXPOSED: [&str; 7] = [
    "www-authenticate",
    "payment-receipt",
    "payment-required",
    "payment-response",
    "retry-after",
    "link",
    "mcp-session-id",
];

/// How long (seconds) a browser may keep a preflight's answer.
const MAX_AGE_SECS: u64 = 600;

/// One configured origin as a browser sends it: `*`, or `scheme://host`
/// with a port only when it is not the scheme's own, in lower case, with
/// no path.
///
/// # Errors
///
/// What is wrong with it, and how to write it.
pub(crate) fn origin(text: &str) -> Result<HeaderValue, String> {
    let header =
        || HeaderValue::from_str(text).map_err(|_| format!("{text:?} cannot be a header value"));
    if text == "*" {
        return header();
    }
    let shape = || {
        format!("{text:?} is not an origin: write it as a browser sends it, https://app.example.com (a scheme and a host, a port only when not the scheme's own; no path, lower case), or \"*\" for any")
    };
    let uri: Uri = text.parse().map_err(|_| shape())?;
    let scheme = uri.scheme_str().ok_or_else(shape)?;
    let authority = uri.authority().ok_or_else(shape)?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(shape()),
    };
    if text != format!("{scheme}://{authority}")
        || authority.as_str().contains('@')
        || authority.port_u16() == Some(default_port)
        || text != text.to_ascii_lowercase()
    {
        return Err(shape());
    }
    header()
}

/// The layer for `origins` (each checked by [`origin`]), or `None` when
/// there are none. Requests carry no cookies: a page pays with the
/// `Authorization` it sets itself, so credentials are not allowed.
pub(crate) fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| origin(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(AllowMethods::mirror_request())
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(ExposeHeaders::list(
                EXPOSED.iter().map(|name| HeaderName::from_static(name)),
            ))
            .max_age(std::time::Duration::from_secs(MAX_AGE_SECS)),
    )
}

/// An answer's fields as the gateway's CORS answers them: the upstream's
/// own `Access-Control-*` are dropped, so that its
/// `Access-Control-Allow-Credentials: true` never rides along with the
/// origin the gateway grants (a page would read cookie-bearing answers).
type Stripped<S> = MapResponse<S, fn(Response<Body>) -> Response<Body>>;

fn strip_upstream_cors(mut response: Response<Body>) -> Response<Body> {
    let theirs: Vec<HeaderName> = response
        .headers()
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in theirs {
        response.headers_mut().remove(name);
    }
    response
}

/// `app` with CORS for requests from pages (those with an `Origin`); any
/// other request, an `OPTIONS` among them, reaches `app` as it came
/// (tower-http answers every `OPTIONS` as a preflight).
#[derive(Clone)]
pub(crate) struct ForPages<S> {
    cors: Cors<Stripped<S>>,
    app: S,
}

impl<S: Clone> ForPages<S> {
    pub(crate) fn new(layer: CorsLayer, app: S) -> Self {
        let stripped: Stripped<S> = MapResponse::new(
            app.clone(),
            strip_upstream_cors as fn(Response<Body>) -> Response<Body>,
        );
        Self {
            cors: layer.layer(stripped),
            app,
        }
    }
}

impl<S> Service<Request<Body>> for ForPages<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<
        <Cors<Stripped<S>> as Service<Request<Body>>>::Future,
        <S as Service<Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both wrap clones of one ready-when-called service.
        self.app.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.headers().contains_key(header::ORIGIN) {
            let mut cors = self.cors.clone();
            Either::Left(cors.call(request))
        } else {
            Either::Right(self.app.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_written_as_browsers_send_them() {
        for good in [
            "*",
            "https://app.example.com",
            "http://127.0.0.1:8080",
            "https://[::1]:8443",
        ] {
            assert!(origin(good).is_ok(), "{good}");
        }
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/x",
            "https://App.example.com",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "app.example.com",
            "ftp://app.example.com",
            "https://user@app.example.com",
            "https://app.example.com?x",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
