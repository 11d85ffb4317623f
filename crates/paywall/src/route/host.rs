//! Which host a request names, read the same way over HTTP/1.0, 1.1 and 2.
//!
//! HTTP/2 carries the host in `:authority` (the URI's authority here), an
//! absolute-form HTTP/1.1 target in the URI too, everything else in
//! `Host`. Reading only `Host` would route an HTTP/2 request as if it named
//! no host. The name is compared in one spelling: lower case, no port, no
//! trailing dot (`API.Example.com.:443` is `api.example.com`).

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderMap, Uri};

/// Why the host of a request cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// More than one `Host` field.
    #[error("the request has more than one Host header")]
    Several,
    /// `Host` is not `host[:port]`.
    #[error("the Host header is not a host name with an optional port")]
    Malformed,
    /// The URI's authority and `Host` name different hosts.
    #[error("the request names two different hosts (its target and Host)")]
    Conflict,
    /// An absolute-form target or `:authority` that is not `host[:port]`
    /// (user info, a bad port).
    #[error("the request target's authority is not a host name with an optional port (no user@)")]
    MalformedTarget,
    /// An absolute-form target of a scheme other than `http` or `https`
    /// (`ftp://…`): no request of this server's.
    #[error("the request target's scheme is not http or https")]
    Scheme,
}

/// The host in normal form, or `None` when the request names none.
///
/// # Errors
///
/// A [`HostError`] when the request names a host ambiguously; answer it
/// with `400 Bad Request`.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<Option<String>, HostError> {
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Err(HostError::Scheme);
    }
    let from_uri = uri
        .authority()
        .map(|authority| normal(authority.as_str()))
        .transpose()
        .map_err(|_| HostError::MalformedTarget)?;
    let mut values = headers.get_all(HOST).iter();
    let from_header = match (values.next(), values.next()) {
        (Some(_), Some(_)) => return Err(HostError::Several),
        (None, _) => None,
        (Some(value), None) => {
            let text = value.to_str().map_err(|_| HostError::Malformed)?.trim();
            if text.is_empty() {
                None
            } else {
                Some(normal(text)?)
            }
        }
    };
    match (from_uri, from_header) {
        (Some(a), Some(b)) if a != b => Err(HostError::Conflict),
        (Some(host), _) | (None, Some(host)) => Ok(Some(host)),
        (None, None) => Ok(None),
    }
}

/// The port the request named with its host (the target's, else
/// `Host`'s), if any: `None` for none or one that is not a port number.
pub fn request_port(uri: &Uri, headers: &HeaderMap) -> Option<u16> {
    uri.authority().and_then(Authority::port_u16).or_else(|| {
        let text = headers.get(HOST)?.to_str().ok()?.trim();
        split_port(text).1.strip_prefix(':')?.parse().ok()
    })
}

/// `host[:port]` (`[v6]:port` too) as its host and the rest: empty, or
/// `:` and what follows (`("[::1]", ":8080")`, `("h", "")`).
pub fn split_port(text: &str) -> (&str, &str) {
    let end = match text.strip_prefix('[') {
        Some(rest) => rest.find(']').map_or(text.len(), |i| i + 2),
        None => text.rfind(':').unwrap_or(text.len()),
    };
    text.split_at(end)
}

/// `host[:port]` in normal form. Read by hand rather than parsed as an
/// [`Authority`] first (a copy, on every request): what the host may hold
/// is checked by [`normal_name`], stricter than an authority's grammar.
fn normal(text: &str) -> Result<String, HostError> {
    // `user@host` has no place in a request's authority (RFC 9110 §4.2.4).
    if text.contains('@') {
        return Err(HostError::Malformed);
    }
    let (host, port) = split_port(text);
    // Empty (`host:`) or a port number: 0 to 65535, digits only.
    let port_ok = port.strip_prefix(':').is_some_and(|digits| {
        digits.is_empty()
            || (digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u16>().is_ok())
    });
    if !port.is_empty() && !port_ok {
        return Err(HostError::Malformed);
    }
    normal_name(host).ok_or(HostError::Malformed)
}

/// A host name (no port) in normal form: lower case, no trailing dot;
/// `None` when it is not a DNS name or an IP literal.
pub fn normal_name(host: &str) -> Option<String> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let addr: std::net::Ipv6Addr = v6.parse().ok()?;
        return Some(format!("[{addr}]"));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(uri: &str, values: &[&str]) -> Result<Option<String>, HostError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(HOST, v.parse().unwrap());
        }
        request_host(&uri.parse().unwrap(), &headers)
    }

    #[test]
    fn one_spelling_whatever_the_version() {
        let want = Ok(Some("api.example.com".to_owned()));
        assert_eq!(host("/x", &["api.example.com"]), want);
        assert_eq!(host("/x", &["API.Example.COM.:8443"]), want);
        assert_eq!(host("https://api.example.com./x", &[]), want);
        assert_eq!(
            host("http://api.example.com:80/x", &["api.example.com"]),
            want
        );
        assert_eq!(host("/x", &["[::1]:8402"]), Ok(Some("[::1]".to_owned())));
        assert_eq!(host("/x", &["[::1]"]), Ok(Some("[::1]".to_owned())));
        assert_eq!(host("/x", &["a.test:"]), Ok(Some("a.test".to_owned())));
        assert_eq!(host("/x", &[]), Ok(None));
        assert_eq!(host("/x", &[""]), Ok(None));
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        assert_eq!(host("/x", &["a.test", "b.test"]), Err(HostError::Several));
        for malformed in [
            "a.test/evil",
            "user@a.test",
            "a..test",
            "a.test:port",
            "a.test:99999",
            "a.test:65536",
            "a.test:+80",
            "a:b:80",
            "[::1]x",
            "[::1",
            "[a.test]:80",
            ":80",
            "a test",
        ] {
            assert_eq!(
                host("/x", &[malformed]),
                Err(HostError::Malformed),
                "{malformed}"
            );
        }
        assert_eq!(host("/x", &["a.test:65535"]), Ok(Some("a.test".to_owned())));
        assert_eq!(
            host("http://a.test/x", &["b.test"]),
            Err(HostError::Conflict)
        );
        // The fault named where it is: the target, not Host.
        assert_eq!(
            host("http://paid.test@other.test/x", &["other.test"]),
            Err(HostError::MalformedTarget)
        );
        assert!(HostError::MalformedTarget.to_string().contains("target"));
        // A target of another scheme is no request of an HTTP server's.
        for uri in ["ftp://a.test/x", "ws://a.test/x", "gopher://a.test/x"] {
            assert_eq!(host(uri, &["a.test"]), Err(HostError::Scheme), "{uri}");
        }
        assert_eq!(
            host("HTTPS://a.test/x", &["a.test"]),
            Ok(Some("a.test".to_owned()))
        );
    }

    #[test]
    fn the_port_named_is_the_targets_else_hosts() {
        let port = |uri: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, value.parse().unwrap());
            request_port(&uri.parse().unwrap(), &headers)
        };
        assert_eq!(port("/x", "a.test:8443"), Some(8443));
        assert_eq!(port("/x", "[::1]:8402"), Some(8402));
        assert_eq!(port("/x", "a.test"), None);
        assert_eq!(port("/x", "[::1]"), None);
        assert_eq!(port("/x", "a.test:"), None);
        assert_eq!(port("http://a.test:81/x", "a.test:82"), Some(81));
    }
}
