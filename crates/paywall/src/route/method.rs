//! The rules about the request method: the method routed and priced is the
//! one the upstream acts on, and no method that echoes the request (with
//! the headers the gateway adds for the upstream) is forwarded.

use http::Method;

/// Headers some upstreams read the path or the method from instead of the
/// request line (IIS and Symfony's `X-Original-URL`, method overrides): a
/// request routed to a free service could name a paid one through them.
/// No client may send them; they are removed from every request.
const OVERRIDES: [http::HeaderName; 7] = [
    http::HeaderName::from_static("x-original-url"),
    http::HeaderName::from_static("x-rewrite-url"),
    http::HeaderName::from_static("x-override-url"),
    http::HeaderName::from_static("x-http-method-override"),
    http::HeaderName::from_static("x-http-method"),
    http::HeaderName::from_static("x-method-override"),
    http::HeaderName::from_static("x-original-method"),
];

/// The parameter that Rails (`Rack::MethodOverride`, a form body), Laravel
/// and Symfony (the query, a form or JSON body) and Express's
/// `method-override` read the method from instead of the request line.
pub const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Removes the headers that name another path or method (`X-Original-URL`,
/// `X-HTTP-Method-Override` and their kin) from a request.
pub fn strip_overrides(headers: &mut http::HeaderMap) {
    crate::fields::remove_all_of(headers, &OVERRIDES);
}

/// Whether a query parameter or body field named `name` overrides the
/// method to some upstream: [`METHOD_OVERRIDE_PARAM`] however spelled (an
/// upstream may read `_METHOD`, `_method[]` or a fullwidth `＿method`
/// as it).
pub fn is_method_override(name: &str) -> bool {
    // Most names are nothing like it: only those holding "method" (in
    // some reading) are compared the long way.
    let plain = name.is_ascii()
        && !name
            .as_bytes()
            .windows(6)
            .any(|w| w.eq_ignore_ascii_case(b"method"));
    !plain && (name == METHOD_OVERRIDE_PARAM || super::name_reads_as(name, METHOD_OVERRIDE_PARAM))
}

/// Whether a service that lists `methods` takes a request with `method`:
/// HEAD goes with GET (upstreams answer it as a GET without the body), and
/// case is ignored (some upstreams fold it).
pub fn method_matches(methods: &[Method], method: &Method) -> bool {
    methods.is_empty()
        || methods.iter().any(|m| {
            m.as_str().eq_ignore_ascii_case(method.as_str())
                || (*m == Method::GET && method.as_str().eq_ignore_ascii_case("HEAD"))
        })
}

/// The standard method `method` spells in another case (`post` is
/// `POST`), if any: routes and prices ignore case, so the upstream is sent
/// the method it was priced as, and a retry spelled otherwise is the same
/// request.
pub fn canonical_method(method: &Method) -> Option<Method> {
    if !method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(method.as_str()))
}

/// Whether `method` asks the server to send the request back (`TRACE`,
/// IIS's `TRACK`), however cased: its answer would show the client the
/// headers added for the upstream (an API key among them). Such requests
/// are answered by the gateway, never forwarded.
pub fn echoes_request(method: &Method) -> bool {
    ["TRACE", "TRACK"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_overrides_are_known_however_spelled() {
        for name in [
            "_method",
            "_METHOD",
            "_method[]",
            " _method",
            "＿method",
            "_meth\u{AD}od",
        ] {
            assert!(is_method_override(name), "{name:?}");
        }
        for name in ["method", "quality", "x_method", "methods"] {
            assert!(!is_method_override(name), "{name:?}");
        }
    }

    #[test]
    fn trace_and_track_echo_the_request() {
        for m in ["TRACE", "trace", "Track"] {
            assert!(
                echoes_request(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        assert!(!echoes_request(&Method::GET));
    }
}
