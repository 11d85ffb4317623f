//! Who the client is: the address limits, freebies and the unpaid-invoice
//! cap are counted against.
//!
//! Behind a load balancer every connection comes from the balancer, so the
//! address is read from the forwarding header it appends, but only as far
//! as hops are trusted: the right-most address not in `trusted_proxies` is
//! the client (anything left of it was written by that client and proves
//! nothing). Without trusted proxies the socket's peer is the client, and
//! forwarding headers from clients are not believed. IPv6 clients are
//! counted per /64, the smallest block one subscriber usually holds.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// The socket peer of a request, put in its extensions by the server
/// (axum's `ConnectInfo<SocketAddr>` is read too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Which forwarding header the trusted proxies append to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, AWS ELB).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name.
    pub fn name(self) -> HeaderName {
        match self {
            ForwardedHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardedHeader::Forwarded => http::header::FORWARDED,
        }
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Their networks.
    pub networks: Vec<IpNet>,
    /// The header they append the client's address to.
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// The client of a request, as the paywall counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client's address.
    pub ip: IpAddr,
    /// The socket peer: the client itself, or the nearest proxy.
    pub peer: IpAddr,
}

impl ClientAddr {
    /// Whether the peer is a trusted proxy (its forwarding headers are
    /// then passed on; a client's own are not).
    pub fn via_trusted_proxy(&self, trusted: &TrustedProxies) -> bool {
        trusted.contains(self.peer)
    }

    /// The key limits count under: the address, IPv6 per /64.
    pub fn key(&self) -> ClientKey {
        ClientKey::of(self.ip)
    }
}

/// A client as limits count it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// One IPv4 address.
    V4([u8; 4]),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl ClientKey {
    /// The key of `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::V4(octets) => write!(f, "{}", std::net::Ipv4Addr::from(*octets)),
            ClientKey::V6(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64))
            }
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Fields that say who the client is or how it came, named in full: the
/// standard one, the de facto ones and CDNs' own ([`is_forwarding_header`]
/// adds whole families by prefix); the path prefix or target and the host
/// that some apps route by instead of the request's (Flask's
/// ReverseProxied recipe takes `X-Script-Name`, Azure App Service's
/// `Disguised-Host`, IIS's `X-Waws-Unencoded-Url`); what other proxies
/// vouch a client certificate or user with (WebLogic, Jetty, Keycloak
/// gatekeeper, Vouch, Shibboleth); and `Proxy`, which CGI-style servers
/// read as `HTTP_PROXY` (httpoxy: an upstream would send its own calls
/// through the client's proxy). Sorted, for a binary search.
const FORWARDING_NAMES: [&str; 99] = [
    "base-url",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "client-ip",
    "disguised-host",
    "eppn",
    "fastly-client-ip",
    "forward-host",
    "forwarded",
    "forwarded-for",
    "front-end-https",
    "gap-auth",
    "host-override",
    "original-url",
    "path-info",
    "proxy",
    "proxy-auth-cert",
    "proxy-ssl-id",
    "request-target",
    "request-uri",
    "script-name",
    "script-url",
    "true-client-ip",
    "via",
    "was-default-hostname",
    "wl-proxy-client-cert",
    "wl-proxy-ssl",
    "x-apigateway-context",
    "x-apigateway-event",
    "x-arr-clientcert",
    "x-arr-ssl",
    "x-auth-email",
    "x-auth-groups",
    "x-auth-roles",
    "x-auth-subject",
    "x-auth-user",
    "x-auth-userid",
    "x-auth-username",
    "x-base-path",
    "x-base-url",
    "x-client-cert",
    "x-client-dn",
    "x-client-ip",
    "x-client-verify",
    "x-cluster-client-ip",
    "x-email",
    "x-forward-host",
    "x-forward-prefix",
    "x-forwarded",
    "x-groups",
    "x-host",
    "x-host-override",
    "x-http-destinationurl",
    "x-http-host-override",
    "x-ingress-path",
    "x-jwt-assertion",
    "x-jwt-claims",
    "x-jwt-payload",
    "x-matched-path",
    "x-ms-original-url",
    "x-orig-host",
    "x-orig-uri",
    "x-orig-url",
    "x-originating-ip",
    "x-path-info",
    "x-preferred-username",
    "x-proxied-https",
    "x-proxy-host",
    "x-proxy-prefix",
    "x-proxy-user",
    "x-proxyuser-ip",
    "x-real-host",
    "x-real-ip",
    "x-request-path",
    "x-request-target",
    "x-request-uri",
    "x-request-url",
    "x-rewrite-path",
    "x-roles",
    "x-rstudio-root-path",
    "x-scheme",
    "x-script-name",
    "x-script-path",
    "x-script-url",
    "x-serverless-authorization",
    "x-ssl",
    "x-unencoded-url",
    "x-uri",
    "x-url-scheme",
    "x-user",
    "x-user-email",
    "x-user-id",
    "x-user-name",
    "x-userinfo",
    "x-username",
    "x-virtual-host",
    "x-vouch-user",
    "x-waws-unencoded-url",
    "x-webauth-user",
];

/// Families of such fields, by prefix: `X-Forwarded-*` (`-Uri`, `-User`,
/// `-Client-Cert`, …), the original target as a front proxy saw it
/// (`X-Original-URI`), Envoy's own, the client certificate as a TLS
/// terminator passes it, the user an authenticating proxy vouches for
/// (oauth2-proxy, Authelia, AWS ALB, Google IAP, Azure App Service,
/// Grafana's auth proxy), and what CDNs and platforms set for the apps
/// behind them (Cloudflare's `CF-*`, Access's user among them; Fastly,
/// Akamai, CloudFront's viewer, App Engine's user, Azure Front Door's
/// `X-Azure-FDID` that apps check to know the traffic came through it,
/// Vercel's, Fly's; Next.js's internal `X-Middleware-Subrequest`, which
/// skips its middleware, `X-Invoke-*` and `X-Nextjs-*`), the user or
/// claims an identity-aware proxy or API gateway passes (Authentik,
/// Pomerium, Kong's consumer, Google's API gateways, Azure's tokens,
/// Hasura's session), a client certificate (RFC 9440
/// `Client-Cert`), a service mesh's identity and routing (Linkerd, Istio,
/// SPIFFE), and what makes Rack or nginx serve an internal file
/// (`X-Sendfile-Type`, `X-Accel-*`). An upstream behind such a proxy
/// believes them.
const FORWARDING_PREFIXES: [&str; 48] = [
    "x-forwarded-",
    "x-original-",
    "x-envoy-",
    "x-ssl-",
    "ssl-client-",
    "x-remote-",
    "remote-",
    "x-auth-request-",
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-ms-client-principal",
    "x-authenticated-",
    "cf-",
    "fastly-",
    "akamai-",
    "cloudfront-viewer-",
    "x-appengine-",
    "x-azure-",
    "x-vercel-",
    "x-now-",
    "x-middleware-",
    "x-invoke-",
    "ali-cdn-",
    "fly-",
    "x-nextjs-",
    "x-prerender-",
    "x-akamai-",
    "x-authentik-",
    "x-pomerium-",
    "x-consumer-",
    "x-credential-",
    "x-anonymous-consumer",
    "x-endpoint-api-userinfo",
    "x-apigateway-api-userinfo",
    "x-ms-token-",
    "x-hasura-",
    "client-cert",
    "l5d-",
    "x-istio-",
    "x-spiffe-",
    "x-sendfile-",
    "x-accel-",
    "x-userinfo-",
    "$ws",
    "x-amzn-mtls-",
    "tailscale-",
    "x-webauth-",
    "shib-",
];

/// Words that name a client's address in a field's name, whatever the
/// vendor (`Proxy-Client-IP`, `WL-Proxy-Client-IP`, `X-Custom-IP-
/// Authorization`, `X-Azure-ClientIP`).
const ADDRESS_WORDS: [&str; 10] = [
    "ip",
    "ipv6",
    "clientip",
    "socketip",
    "realip",
    "userip",
    "remoteip",
    "sourceip",
    "peerip",
    "connectingip",
];

/// Whether `name` says who the client is or how it came (the standard
/// `Forwarded`, the de facto `X-Forwarded-*` family, CDNs' client address,
/// a TLS terminator's client certificate, an authenticating proxy's user,
/// any field with a word naming an address: `-IP`, `ClientIP`, or a
/// client's, remote's or viewer's `Address`), also when spelled with `_`
/// for `-` (CGI-style servers read both alike): believed only from trusted
/// proxies; from anyone else such a field reaches neither the upstream nor
/// a pricer.
pub fn is_forwarding_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    let is = |name: &str| {
        FORWARDING_NAMES.binary_search(&name).is_ok()
            || FORWARDING_PREFIXES.iter().any(|p| name.starts_with(p))
            || names_an_address(name)
    };
    if name.contains(['_', '.']) || name.ends_with('-') {
        // CGI-style servers read `_` as `-`, some frameworks `.` too;
        // words only, however many separators.
        let words: Vec<&str> = name
            .split(['-', '_', '.'])
            .filter(|w| !w.is_empty())
            .collect();
        is(&words.join("-"))
    } else {
        is(name)
    }
}

/// Whether a field's name (lower case, `-` between words) has a word that
/// names an address (`ip`, `clientip`) or says it was forwarded
/// (`Z-Forwarded-For`), or an `address`, `addr` or `port` after whose it
/// is (`X-Client-Address`, `True-Client-Port`).
fn names_an_address(name: &str) -> bool {
    let mut before = "";
    name.split('-').any(|word| {
        let whose = matches!(
            before,
            "client" | "remote" | "viewer" | "peer" | "real" | "source" | "user" | "true"
        );
        before = word;
        ADDRESS_WORDS.contains(&word)
            || word == "forwarded"
            || (whose && matches!(word, "addr" | "address" | "port"))
    })
}

/// Removes every field [`is_forwarding_header`] names from `headers`.
pub fn remove_forwarding_headers(headers: &mut HeaderMap) {
    crate::fields::remove_where(headers, is_forwarding_header);
}

/// The client of a request from `peer` with `headers`.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> ClientAddr {
    let peer = canonical(peer);
    let mut client = peer;
    if trusted.contains(peer) {
        let hops = forwarded_hops(headers, trusted.header);
        // Right to left: the last hop each trusted proxy vouches for.
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if trusted.contains(*ip) => client = *ip,
                Some(ip) => {
                    client = canonical(*ip);
                    break;
                }
                // `unknown` or an obfuscated name: the nearest trusted hop
                // is all that is known.
                None => break,
            }
        }
    }
    ClientAddr { ip: client, peer }
}

/// The hops of the forwarding header, left to right, across all its
/// fields; `None` for a hop that is no address. A field that does not
/// parse (an unclosed quoted string, which would hide what a proxy
/// appended after it) makes the whole header one unknown hop.
fn forwarded_hops(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(header.name()) {
        let Some(elements) = value
            .to_str()
            .ok()
            .and_then(|t| split_outside_quotes(t, ','))
        else {
            return vec![None];
        };
        for element in elements {
            let hop = match header {
                ForwardedHeader::XForwardedFor => parse_node(element.trim()),
                ForwardedHeader::Forwarded => {
                    let Some(pairs) = split_outside_quotes(element, ';') else {
                        return vec![None];
                    };
                    pairs
                        .into_iter()
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
                }
            };
            hops.push(hop);
        }
    }
    hops
}

/// Splits at `separator` outside quoted strings (RFC 9110 §5.6.4, with
/// `\` escapes); `None` when a quoted string is left open.
fn split_outside_quotes(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_names_are_sorted_for_their_search() {
        assert!(FORWARDING_NAMES.windows(2).all(|w| w[0] < w[1]));
        for name in [
            "proxy",
            "x-script-name",
            "disguised-host",
            "$wsra",
            "x-webauth-email",
        ] {
            assert!(
                is_forwarding_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        // API keys of the upstream's own pass.
        for name in ["x-auth-token", "x-api-key", "proxy-connection-id"] {
            assert!(
                !is_forwarding_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
    }

    fn trusted(nets: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies {
            networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
            header,
        }
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A word naming an address marks a field, whatever its vendor; a
    /// word that only contains one does not.
    #[test]
    fn fields_naming_an_address_are_forwarding_fields() {
        let forwarding =
            |name: &str| is_forwarding_header(&HeaderName::from_bytes(name.as_bytes()).unwrap());
        for name in [
            "proxy-client-ip",
            "wl-proxy-client-ip",
            "x-custom-ip-authorization",
            "x-azure-clientip",
            "x-cdn-client-ipv6",
            "x-client-address",
            "x-viewer-addr",
            "x_socketip",
            "z-forwarded-for",
            "x.forwarded.for",
            "forwarded_",
            "x-real-port",
            "true-client-port",
            "client-cert-chain",
            "x-authentik-email",
            "x-consumer-username",
            "x-sendfile-type",
            "l5d-dst-override",
        ] {
            assert!(forwarding(name), "{name}");
        }
        for name in [
            "x-client-id",
            "x-ship-date",
            "zip",
            "x-zip-code",
            "x-address-line",
            "x-api-key",
            "x-request-id",
            "x-port-number",
            "x-api-version",
        ] {
            assert!(!forwarding(name), "{name}");
        }
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let lb = trusted(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // The client forged the first entry; the balancer appended the real one.
        let h = headers("x-forwarded-for", &["6.6.6.6, 203.0.113.7", "10.0.0.2"]);
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &lb).ip, ip("203.0.113.7"));
        // Not from a trusted proxy: the header is not believed.
        assert_eq!(
            client_addr(ip("198.51.100.1"), &h, &lb).ip,
            ip("198.51.100.1")
        );
        // Without trusted proxies, never.
        let none = TrustedProxies::default();
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &none).ip, ip("10.0.0.1"));
        // A header with nothing but trusted hops: the left-most of them.
        let h = headers("x-forwarded-for", &["10.0.0.9"]);
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &lb).ip, ip("10.0.0.9"));
        // An unknown hop: the nearest trusted one.
        let h = headers("x-forwarded-for", &["unknown"]);
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &lb).ip, ip("10.0.0.1"));
        // The other header is ignored when the proxies append to this one.
        let h = headers("forwarded", &["for=6.6.6.6"]);
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &lb).ip, ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_elements() {
        let lb = trusted(&["10.0.0.0/8", "fd00::/8"], ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &[r#"for=6.6.6.6, For="[2001:db8:cafe::17]:4711";proto=https, for=10.1.1.1;by=x"#],
        );
        assert_eq!(
            client_addr(ip("fd00::1"), &h, &lb).ip,
            ip("2001:db8:cafe::17")
        );
        // A client's unclosed quote would swallow what the proxy appended
        // to the same line: the header is not believed at all.
        let lb = trusted(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        for forged in [
            r#"for=10.0.0.7;x=", for=9.9.9.9"#,
            r#"for="10.0.0.7\", for=9.9.9.9"#,
        ] {
            let h = headers("forwarded", &[forged]);
            assert_eq!(
                client_addr(ip("10.0.0.1"), &h, &lb).ip,
                ip("10.0.0.1"),
                "{forged}"
            );
        }
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_v4_as_v4() {
        let a = ClientKey::of(ip("2001:db8:1:2::1"));
        let b = ClientKey::of(ip("2001:db8:1:2:ffff::9"));
        let c = ClientKey::of(ip("2001:db8:1:3::1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.1")),
            ClientKey::of(ip("192.0.2.1"))
        );
    }
}
