//! Routing: which priced service a request is for.
//!
//! A request is routed on its normalized path ([`RequestPath`], the same
//! one the upstream receives) and the host it names ([`request_host`]),
//! never on raw text. Paths are compared without regard to ASCII case and
//! an exact route also matches its path with a trailing `/`: frameworks
//! that fold case or ignore a trailing slash (Express, ASP.NET) would
//! otherwise serve a priced resource under a spelling no route claims.

mod fold;
mod host;
mod method;
mod service;
mod target;

use std::sync::Arc;

use http::Method;

pub use fold::{ascii_readings, decode_again, name_reads_as, reads_as, READINGS};
pub use host::{normal_name, request_host, request_port, split_port, HostError};
pub use method::{
    canonical_method, echoes_request, is_method_override, method_matches, strip_overrides,
    METHOD_OVERRIDE_PARAM,
};
pub use service::{Auth, Meter, PricedService, SaleTerms, Schemes, Sells, Usage};
pub use target::{decode_normal, RequestPath, TargetError};

/// A path pattern: exact (`/weather`) or a prefix (`/api/*`, `/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// This path, with or without a trailing `/` (normal form).
    Exact(String),
    /// This prefix, ending with `/`, and everything under it; `/` is all.
    Prefix(String),
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// `*` elsewhere than as the whole last segment.
    #[error("{0:?}: * is allowed only as the last segment, as in /api/*")]
    Star(String),
    /// Not a path the normal form keeps as written.
    #[error("{0:?} is not a usable path: {1}")]
    Path(String, TargetError),
    /// Not a host name or `*.domain`.
    #[error("{0:?} is not a host name (api.example.com) or a wildcard (*.example.com)")]
    Host(String),
}

impl PathPattern {
    /// Parses `/exact` or `/prefix/*`, in normal form (`/%70ath` is
    /// `/path`).
    ///
    /// # Errors
    ///
    /// [`PatternError::Star`] for a misplaced `*`, [`PatternError::Path`]
    /// for a path no request could be normalized to.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let (path, prefix) = match text.strip_suffix('*') {
            Some(p) if p.ends_with('/') => (p, true),
            Some(_) => return Err(PatternError::Star(text.to_owned())),
            None => (text, false),
        };
        if path.contains('*') {
            return Err(PatternError::Star(text.to_owned()));
        }
        let normal =
            RequestPath::parse(path).map_err(|e| PatternError::Path(text.to_owned(), e))?;
        let normal = normal.as_str();
        Ok(if prefix {
            let mut p = normal.trim_end_matches('/').to_owned();
            p.push('/');
            PathPattern::Prefix(p)
        } else {
            PathPattern::Exact(normal.to_owned())
        })
    }

    /// Whether `path` is under this pattern.
    pub fn matches(&self, path: &RequestPath) -> bool {
        let path = path.as_str();
        match self {
            PathPattern::Exact(p) => same_path(trim_slash(p), trim_slash(path)),
            PathPattern::Prefix(prefix) => {
                starts_with_ignore_case(path, prefix) || same_path(path, trim_slash(prefix))
            }
        }
    }

    /// `path`, which this pattern matched, with the part the pattern names
    /// written as the pattern spells it and the rest as the client wrote
    /// it; `None` when `path` spells it so already (the usual case). Routes
    /// match regardless of ASCII case, but what a request is priced and
    /// forwarded as is the route's resource, not the client's spelling of
    /// it: a case-sensitive upstream would answer `/WEATHER` with a `404`
    /// on a spent payment, and a pricer that compares paths as that
    /// upstream does would price it as another resource.
    pub fn respell(&self, path: &RequestPath) -> Option<RequestPath> {
        let stem = self.stem();
        let text = path.as_str();
        let named = stem != "/"
            && starts_with_ignore_case(text, stem)
            && matches!(text.as_bytes().get(stem.len()), None | Some(b'/'));
        if !named || text.starts_with(stem) {
            return None;
        }
        RequestPath::parse(&format!("{stem}{}", &text[stem.len()..])).ok()
    }

    /// The pattern as a config writes it.
    pub fn as_written(&self) -> String {
        match self {
            PathPattern::Exact(p) => p.clone(),
            PathPattern::Prefix(p) => format!("{p}*"),
        }
    }

    /// The fixed part: the exact path, or the prefix without its `/`.
    pub fn stem(&self) -> &str {
        match self {
            PathPattern::Exact(p) => trim_slash(p),
            PathPattern::Prefix(p) => trim_slash(p),
        }
    }

    /// The pattern as folding upstreams read it, one per reading of
    /// [`ascii_readings`] (see [`RequestPath::compatibility_forms`]):
    /// itself for any ASCII pattern.
    pub fn readings(&self) -> Vec<PathPattern> {
        let stem = match self {
            PathPattern::Exact(p) | PathPattern::Prefix(p) => p,
        };
        let forms = RequestPath::parse(stem)
            .ok()
            .and_then(|p| p.compatibility_forms().ok().flatten());
        let Some(forms) = forms else {
            return vec![self.clone(); fold::READINGS];
        };
        forms
            .into_iter()
            .map(|f| match self {
                PathPattern::Exact(_) => PathPattern::Exact(f.as_str().to_owned()),
                PathPattern::Prefix(_) => {
                    let mut p = f.as_str().trim_end_matches('/').to_owned();
                    p.push('/');
                    PathPattern::Prefix(p)
                }
            })
            .collect()
    }

    /// Whether some path matches both patterns.
    pub fn overlaps(&self, other: &PathPattern) -> bool {
        match (self, other) {
            (PathPattern::Exact(a), PathPattern::Exact(b)) => {
                same_path(trim_slash(a), trim_slash(b))
            }
            (PathPattern::Prefix(p), PathPattern::Exact(e))
            | (PathPattern::Exact(e), PathPattern::Prefix(p)) => {
                starts_with_ignore_case(e, p) || same_path(trim_slash(e), trim_slash(p))
            }
            (PathPattern::Prefix(a), PathPattern::Prefix(b)) => {
                starts_with_ignore_case(a, b) || starts_with_ignore_case(b, a)
            }
        }
    }
}

impl PathPattern {
    /// Whether every path `other` matches, this matches too (case
    /// ignored, as routes match): a route after this one with `other`
    /// could never be reached through it.
    pub fn covers(&self, other: &PathPattern) -> bool {
        match (self, other) {
            (PathPattern::Exact(a), PathPattern::Exact(b)) => {
                same_path(trim_slash(a), trim_slash(b))
            }
            (PathPattern::Exact(_), PathPattern::Prefix(_)) => false,
            (PathPattern::Prefix(p), PathPattern::Exact(e) | PathPattern::Prefix(e)) => {
                starts_with_ignore_case(e, p) || same_path(trim_slash(e), trim_slash(p))
            }
        }
    }
}

fn trim_slash(p: &str) -> &str {
    match p.strip_suffix('/') {
        Some("") | None => p,
        Some(trimmed) => trimmed,
    }
}

/// Whether two routings are to the same service (or both to none).
fn same(a: Option<&Arc<PricedService>>, b: Option<&Arc<PricedService>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn same_path(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A host pattern: a name (`api.example.com`) or every name under a
/// domain (`*.example.com`), in normal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    name: String,
    wildcard: bool,
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`.
    ///
    /// # Errors
    ///
    /// [`PatternError::Host`] when it is neither.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let (domain, wildcard) = match text.strip_prefix("*.") {
            Some(domain) => (domain, true),
            None => (text, false),
        };
        let name = normal_name(domain).ok_or_else(|| PatternError::Host(text.to_owned()))?;
        Ok(Self { name, wildcard })
    }

    /// Whether a host in normal form (see [`request_host`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        if self.wildcard {
            host.len() > self.name.len() + 1
                && host.ends_with(self.name.as_str())
                && host.as_bytes()[host.len() - self.name.len() - 1] == b'.'
        } else {
            host == self.name
        }
    }

    /// Whether every host `other` matches, this matches too: the same
    /// pattern, or a wildcard over `other`'s name (`*.example.com` covers
    /// `a.example.com` and `*.a.example.com`).
    pub fn covers(&self, other: &HostPattern) -> bool {
        self == other || (self.wildcard && self.matches(&other.name))
    }

    /// The pattern as written, in normal form.
    pub fn as_written(&self) -> String {
        if self.wildcard {
            format!("*.{}", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// Why a request cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path is served on a named host and the request names none: it
    /// must not fall through to a service meant for any host.
    #[error("this path is served on a named host; send a Host header")]
    HostRequired,
    /// Read with Unicode compatibility characters folded (as some
    /// upstreams do), the path names another service, or cannot be read.
    #[error("the path names another resource once Unicode compatibility characters are folded")]
    Ambiguous,
    /// Read without its format suffix (as Rails' `(.:format)` reads
    /// `/premium.json`: `/premium`), the path names another service.
    #[error("without its format suffix the path names another resource, and upstreams that take a format suffix (Rails' (.:format)) would serve that one: ask for it by that path")]
    FormatSuffix,
}

/// The priced services, in order; the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    services: Vec<Arc<PricedService>>,
    /// Each service's path pattern as each kind of folding upstream reads
    /// it, so that a route written in `café` is not refused for its own
    /// spelling.
    folded: Vec<Vec<PathPattern>>,
    /// Every method a service or price rule names: where there is none,
    /// the method decides nothing.
    named_methods: Vec<Method>,
}

impl Routes {
    /// A table over `services`, first match wins.
    pub fn new(services: impl IntoIterator<Item = PricedService>) -> Self {
        let services: Vec<Arc<PricedService>> = services.into_iter().map(Arc::new).collect();
        let folded = services.iter().map(|s| s.path.readings()).collect();
        let mut named_methods: Vec<Method> = services
            .iter()
            .flat_map(|s| {
                s.methods
                    .iter()
                    .chain(s.pricing.iter().flat_map(|p| p.methods()))
            })
            .cloned()
            .collect();
        named_methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        named_methods.dedup();
        Self {
            services,
            folded,
            named_methods,
        }
    }

    /// The services, in order.
    pub fn services(&self) -> &[Arc<PricedService>] {
        &self.services
    }

    /// Whether a POST to `path` would be routed or priced otherwise under
    /// another method: then an upstream that takes the method from a
    /// `_method` parameter ([`is_method_override`]) must not be sent one.
    pub fn method_decides(&self, host: Option<&str>, path: &RequestPath) -> bool {
        if self.named_methods.is_empty() {
            return false;
        }
        let Ok(posted) = self.find(host, &Method::POST, path) else {
            return true;
        };
        if posted.is_some_and(|s| {
            s.pricing
                .as_ref()
                .is_some_and(|p| p.methods().next().is_some())
        }) {
            return true;
        }
        self.named_methods
            .iter()
            .chain([&Method::GET])
            .any(|method| match (posted, self.find(host, method, path)) {
                (Some(a), Ok(Some(b))) => !Arc::ptr_eq(a, b),
                (None, Ok(None)) => false,
                _ => true,
            })
    }

    /// The methods under which some service takes `path` on `host`, for a
    /// request no service takes under its own method (the `Allow` of a
    /// `405`): a service's methods as configured, `HEAD` with `GET`, in
    /// the order first named; the common ones for a service that names
    /// none (it takes any: only a method never forwarded, `TRACE`, gets
    /// here then). Empty when no service takes the path at all.
    pub fn allowed(&self, host: Option<&str>, path: &RequestPath) -> Vec<Method> {
        let mut allowed: Vec<Method> = Vec::new();
        for service in &self.services {
            let on_host = match (&service.host, host) {
                (None, _) => true,
                (Some(pattern), Some(host)) => pattern.matches(host),
                (Some(_), None) => false,
            };
            if !on_host || !service.path.matches(path) {
                continue;
            }
            const ANY: [Method; 6] = [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ];
            let named = if service.methods.is_empty() {
                &ANY[..]
            } else {
                &service.methods[..]
            };
            for method in named {
                let with_head = (*method == Method::GET).then_some(Method::HEAD);
                for method in std::iter::once(method.clone()).chain(with_head) {
                    if !allowed.contains(&method) {
                        allowed.push(method);
                    }
                }
            }
        }
        allowed
    }

    /// The service a request is for, `None` when no service claims it.
    ///
    /// # Errors
    ///
    /// [`RouteError::HostRequired`] when the request names no host and a
    /// host-bound service would take it by path and method.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &RequestPath,
    ) -> Result<Option<&Arc<PricedService>>, RouteError> {
        let found = self.find_exactly(host, method, path, None)?;
        if self.stem_routes_elsewhere(host, method, path, found, None)? {
            return Err(RouteError::FormatSuffix);
        }
        // An upstream that folds `ｐｒｅｍｉｕｍ` or `prēmium` into `premium`
        // must not be reached through a route that only the unfolded
        // spelling matches, whichever way it folds; nor, once folded, be
        // read without a format suffix that only folding made
        // (`/premium．json` is `/premium.json`, then `/premium`).
        let forms = match path.compatibility_forms() {
            Ok(None) => return Ok(found),
            Ok(Some(forms)) => forms,
            Err(_) => return Err(RouteError::Ambiguous),
        };
        for (reading, folded) in forms.iter().enumerate() {
            if !same(
                found,
                self.find_exactly(host, method, folded, Some(reading))?,
            ) {
                return Err(RouteError::Ambiguous);
            }
            if self.stem_routes_elsewhere(host, method, folded, found, Some(reading))? {
                return Err(RouteError::FormatSuffix);
            }
        }
        Ok(found)
    }

    /// Whether `path` without its format suffix is routed to another
    /// service than `found` (under the patterns of `reading`, as
    /// [`Self::find_exactly`]). An upstream that reads `/premium.json` as
    /// `/premium` must not be reached through a route that only the
    /// suffixed spelling matches, unless that route names the suffixed
    /// path itself (`/feed.xml`: the operator priced that spelling). Only
    /// a pattern whose fixed part is the stem or the path itself can match
    /// one of the two and not the other (a prefix ends with `/`): the stem
    /// is routed again only when there is one.
    fn stem_routes_elsewhere(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &RequestPath,
        found: Option<&Arc<PricedService>>,
        reading: Option<usize>,
    ) -> Result<bool, RouteError> {
        let Some(stem) = path.format_stem() else {
            return Ok(false);
        };
        let whole = trim_slash(path.as_str());
        let pattern = |i: usize| match reading {
            Some(r) => &self.folded[i][r],
            None => &self.services[i].path,
        };
        let named = found.is_some_and(|s| {
            self.services
                .iter()
                .position(|t| Arc::ptr_eq(s, t))
                .is_some_and(|i| same_path(pattern(i).stem(), whole))
        });
        let told_apart = !named
            && (0..self.services.len()).any(|i| {
                let fixed = pattern(i).stem();
                same_path(fixed, stem) || same_path(fixed, whole)
            });
        match told_apart.then(|| RequestPath::parse(stem).ok()).flatten() {
            Some(stem) => Ok(!same(
                found,
                self.find_exactly(host, method, &stem, reading)?,
            )),
            None => Ok(false),
        }
    }

    fn find_exactly(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &RequestPath,
        reading: Option<usize>,
    ) -> Result<Option<&Arc<PricedService>>, RouteError> {
        for (service, folded) in self.services.iter().zip(&self.folded) {
            let pattern = match reading {
                Some(i) => &folded[i],
                None => &service.path,
            };
            if !method_matches(&service.methods, method) || !pattern.matches(path) {
                continue;
            }
            match (&service.host, host) {
                (None, _) => return Ok(Some(service)),
                (Some(pattern), Some(host)) if pattern.matches(host) => return Ok(Some(service)),
                (Some(_), Some(_)) => {}
                (Some(_), None) => return Err(RouteError::HostRequired),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> RequestPath {
        RequestPath::parse(p).unwrap()
    }

    /// The name of the service a `GET` of `p` (no host) is routed to.
    fn routed(routes: &Routes, p: &str) -> Result<Option<String>, RouteError> {
        routes
            .find(None, &Method::GET, &path(p))
            .map(|s| s.map(|s| s.name.clone()))
    }

    /// Asserts that each of `refused` is refused as a format suffix and
    /// each of `served` routed to its service.
    fn assert_suffixes(routes: &Routes, refused: &[&str], served: &[(&str, &str)]) {
        for p in refused {
            assert_eq!(routed(routes, p), Err(RouteError::FormatSuffix), "{p}");
        }
        for (p, service) in served {
            assert_eq!(routed(routes, p), Ok(Some((*service).into())), "{p}");
        }
    }

    /// What a route names is written as the route spells it, the rest as
    /// the client did; a path spelled so already is left alone.
    #[test]
    fn a_matched_path_is_respelled_as_its_route() {
        let respelled = |pattern: &str, asked: &str| {
            let pattern = PathPattern::parse(pattern).unwrap();
            assert!(pattern.matches(&path(asked)), "{asked}");
            pattern.respell(&path(asked)).map(|p| p.as_str().to_owned())
        };
        for (pattern, asked, spelled) in [
            ("/api/Weather", "/API/WEATHER", Some("/api/Weather")),
            ("/api/Weather", "/Api/weather/", Some("/api/Weather/")),
            ("/api/Weather", "/api/Weather", None),
            ("/api/Weather", "/api/Weather/", None),
            ("/Files/*", "/FILES/Report.PDF", Some("/Files/Report.PDF")),
            ("/Files/*", "/files", Some("/Files")),
            ("/Files/*", "/Files/a/B", None),
            ("/T/%7eUser/*", "/t/~user/X", Some("/T/~User/X")),
            ("/*", "/ANY/Thing", None),
        ] {
            assert_eq!(
                respelled(pattern, asked).as_deref(),
                spelled,
                "{pattern} {asked}"
            );
        }
    }

    #[test]
    fn patterns_agree_with_lenient_upstreams() {
        let exact = PathPattern::parse("/weather").unwrap();
        for p in ["/weather", "/weather/", "/WEATHER", "/Weather/"] {
            assert!(exact.matches(&path(p)), "{p}");
        }
        assert!(!exact.matches(&path("/weatherx")));
        let prefix = PathPattern::parse("/api/*").unwrap();
        for p in ["/api", "/api/", "/API/x/y", "/api/x"] {
            assert!(prefix.matches(&path(p)), "{p}");
        }
        assert!(!prefix.matches(&path("/apix")));
        assert!(PathPattern::parse("/*")
            .unwrap()
            .matches(&path("/anything/at/all")));
        assert_eq!(
            PathPattern::parse("/%70remium/*").unwrap(),
            PathPattern::Prefix("/premium/".into())
        );
        assert!(PathPattern::parse("/a*b").is_err());
        assert!(PathPattern::parse("/a/*/b").is_err());
        assert!(PathPattern::parse("/a/../b").is_ok());
        assert!(PathPattern::parse("/a;b").is_err());
    }

    #[test]
    fn overlaps() {
        let p = |s| PathPattern::parse(s).unwrap();
        assert!(p("/*").overlaps(&p("/premium/*")));
        assert!(p("/premium/x").overlaps(&p("/premium/*")));
        assert!(p("/Premium").overlaps(&p("/premium/")));
        assert!(!p("/public/*").overlaps(&p("/premium/*")));
    }

    #[test]
    fn covers() {
        let p = |s| PathPattern::parse(s).unwrap();
        assert!(p("/*").covers(&p("/premium/*")));
        assert!(p("/a").covers(&p("/A/")));
        assert!(p("/premium/*").covers(&p("/premium")));
        assert!(p("/premium/*").covers(&p("/Premium/x/*")));
        assert!(!p("/premium/x").covers(&p("/premium/*")));
        assert!(!p("/premium/*").covers(&p("/premiums")));
        assert!(!p("/a").covers(&p("/b")));
    }

    #[test]
    fn host_patterns_cover() {
        let h = |s| HostPattern::parse(s).unwrap();
        assert!(h("*.example.com").covers(&h("a.example.com")));
        assert!(h("*.example.com").covers(&h("*.a.example.com")));
        assert!(h("*.example.com").covers(&h("*.Example.com.")));
        assert!(h("A.example.com").covers(&h("a.example.com")));
        assert!(!h("*.example.com").covers(&h("example.com")));
        assert!(!h("a.example.com").covers(&h("*.example.com")));
        assert!(!h("*.a.example.com").covers(&h("*.example.com")));
    }

    #[test]
    fn hosts() {
        let exact = HostPattern::parse("API.example.com.").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("eu.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("evilexample.com"));
        assert!(HostPattern::parse("a b").is_err());
    }

    #[test]
    fn methods() {
        assert!(method_matches(&[Method::GET], &Method::HEAD));
        assert!(method_matches(
            &[Method::GET],
            &Method::from_bytes(b"get").unwrap()
        ));
        assert!(!method_matches(&[Method::GET], &Method::POST));
        assert!(method_matches(&[], &Method::DELETE));
    }

    #[test]
    fn lookalikes_of_a_priced_path_are_refused_and_its_own_spelling_is_not() {
        let routes = Routes::new([
            PricedService::new("premium", "/premium/*", 1000),
            PricedService::new("cafe", "/caf%C3%A9/*", 5),
            PricedService::free("rest", "/*"),
        ]);
        let name = |p: &str| routed(&routes, p);
        for p in [
            "/prem%C4%B1um/a",
            "/PREM%C4%B0UM/a",
            "/pr%C4%93mium/a",
            "/pre%CC%81mium/a",
            "/x/..%E2%88%95premium/a",
            "/x%E2%88%96..%E2%88%96premium%E2%88%96a",
            "/%EF%BD%90remium/a",
            "/pre%C2%ADmium/a",
            "/pre%E2%81%A0mium/a",
            "/premium%CA%BC/a",
            "/pr%C3%A9emium/a",
            "/%C3%A9/premium/a",
            "/p%C7%84remium/a",
        ] {
            assert_eq!(name(p), Err(RouteError::Ambiguous), "{p}");
        }
        assert_eq!(name("/caf%C3%A9/menu"), Ok(Some("cafe".into())));
        // The decomposed spelling of `café`: an upstream that composes it
        // serves the priced route, which this spelling does not match.
        assert_eq!(name("/cafe%CC%81/menu"), Err(RouteError::Ambiguous));
        assert_eq!(name("/premium/a"), Ok(Some("premium".into())));
        assert_eq!(name("/prix/%C3%A9t%C3%A9"), Ok(Some("rest".into())));
    }

    #[test]
    fn a_format_suffix_that_reaches_another_service_is_refused() {
        let routes = Routes::new([
            PricedService::new("premium", "/premium/*", 50),
            PricedService::new("write", "/api/write", 30),
            PricedService::new("files", "/files/*", 2),
            PricedService::new("cheap", "/*", 1),
        ]);
        assert_suffixes(
            &routes,
            &[
                "/premium.json",
                "/premium.xml/",
                "/PREMIUM.json",
                "/api/write.json",
                "/api/write.v1.json",
            ],
            &[
                ("/premium/a.json", "premium"),
                ("/files/report.pdf", "files"),
                ("/index.html", "cheap"),
                ("/.well-known/x", "cheap"),
                ("/api/.env", "cheap"),
            ],
        );
        // Unclaimed, it must not be a priced route without its suffix
        // either: a layer passes it to the app unpaid.
        let routes = Routes::new([PricedService::new("premium", "/premium", 50)]);
        assert_eq!(
            routes.find(None, &Method::GET, &path("/premium.json")),
            Err(RouteError::FormatSuffix)
        );
        assert_eq!(
            routes.find(None, &Method::GET, &path("/other.json")),
            Ok(None)
        );
        // A route that names the suffixed path itself is the operator's
        // price for that spelling.
        let routes = Routes::new([
            PricedService::new("feed", "/feed.xml", 5),
            PricedService::new("reports", "/reports.v1/*", 5),
            PricedService::new("cheap", "/*", 1),
        ]);
        let name = |p: &str| routed(&routes, p);
        assert_eq!(name("/feed.xml"), Ok(Some("feed".into())));
        assert_eq!(name("/reports.v1/"), Ok(Some("reports".into())));
        assert_eq!(name("/reports.v1/a.json"), Ok(Some("reports".into())));
    }

    /// A dot that only folding Unicode makes (a full-width `．`, a small
    /// `﹒`, a one-dot leader `․`) is a format suffix to an upstream that
    /// folds first: the free route must not reach the paid one so.
    #[test]
    fn a_format_suffix_made_by_folding_that_reaches_another_service_is_refused() {
        let routes = Routes::new([
            PricedService::new("premium", "/premium", 10),
            PricedService::new("write", "/api/write", 30),
            PricedService::new("cheap", "/*", 1),
        ]);
        assert_suffixes(
            &routes,
            &[
                "/premium%EF%BC%8Ejson",
                "/premium%EF%B9%92json",
                "/premium%E2%80%A4xml",
                "/PREMIUM%EF%BC%8Ejson/",
                "/api/write%EF%BC%8Ev1.json",
                "/%EF%BD%90remium.json",
            ],
            &[("/index%EF%BC%8Ehtml", "cheap"), ("/premium", "premium")],
        );
    }

    #[test]
    fn a_request_without_host_never_falls_through() {
        let mut bound = PricedService::new("premium", "/premium/*", 1000);
        bound.host = Some(HostPattern::parse("api.example.com").unwrap());
        let routes = Routes::new([bound, PricedService::free("rest", "/*")]);
        let p = path("/premium/secret");
        assert_eq!(
            routes
                .find(None, &Method::GET, &p)
                .map(|s| s.map(|s| s.name.clone())),
            Err(RouteError::HostRequired)
        );
        let found = routes
            .find(Some("api.example.com"), &Method::GET, &p)
            .unwrap();
        assert_eq!(found.unwrap().name, "premium");
        let other = routes.find(Some("other.test"), &Method::GET, &p).unwrap();
        assert_eq!(other.unwrap().name, "rest");
        let free = routes.find(None, &Method::GET, &path("/x")).unwrap();
        assert_eq!(free.unwrap().name, "rest");
    }

    #[test]
    fn a_path_served_under_other_methods_names_them() {
        let mut read = PricedService::new("read", "/items/*", 1);
        read.methods = vec![Method::GET];
        let mut write = PricedService::new("write", "/items/*", 5);
        write.methods = vec![Method::POST, Method::GET];
        let mut bound = PricedService::new("bound", "/items/*", 5);
        bound.methods = vec![Method::DELETE];
        bound.host = Some(HostPattern::parse("admin.example.com").unwrap());
        let routes = Routes::new([read, write, bound]);
        let p = path("/items/1");
        assert_eq!(routes.find(None, &Method::PUT, &p).unwrap(), None);
        assert_eq!(
            routes.allowed(None, &p),
            [Method::GET, Method::HEAD, Method::POST]
        );
        assert_eq!(
            routes.allowed(Some("admin.example.com"), &p),
            [Method::GET, Method::HEAD, Method::POST, Method::DELETE]
        );
        assert!(routes.allowed(None, &path("/other")).is_empty());
    }
}
