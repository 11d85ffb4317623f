//! Discovery documents generated from the services:
//! `/.well-known/l402-services` (the shape deployed L402 directories read),
//! `/openapi.json` (draft-payment-discovery-01: `x-service-info`, and
//! `x-payment-info` offers on every paid operation), and the L402 manifest
//! `/.well-known/l402.json` with its quote endpoint (L402 discovery, as
//! Aperture proposes it). All advisory: the 402 itself is authoritative.
//!
//! A service sold through x402 alone is listed wherever a service sold
//! through MPP alone is (the service list, OpenAPI, quotes), and left out
//! of the L402 manifest, which lists what L402 tokens buy.

use std::sync::Arc;

use axum::http::Method;
use serde_json::{json, Map, Value};

use gate402_l402::caveat::{
    BALANCE_SUFFIX, PASS_SECS_SUFFIX, PASS_SUFFIX, USES_SUFFIX, VALID_UNTIL_SUFFIX,
};
use gate402_paywall::route::PathPattern;
use gate402_paywall::{Auth, PricedService, Sells};

use crate::config::DiscoveryConfig;

/// Where the L402 manifest is served.
pub const MANIFEST_PATH: &str = "/.well-known/l402.json";
/// Where a route's price is answered.
pub const QUOTE_PATH: &str = "/l402/quote";
/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where the deployed-shape service list is served.
pub const SERVICES_PATH: &str = "/.well-known/l402-services";
/// The `Link` value that points clients holding any 402 or discovery
/// document at the manifest.
pub const MANIFEST_LINK: &str = "</.well-known/l402.json>; rel=\"l402-manifest\"";
/// Discovery documents change only on a reload; the draft recommends five
/// minutes.
pub const CACHE_CONTROL: &str = "max-age=300";

/// What the documents say about the gateway as a whole.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    /// The name shown.
    pub name: &'a str,
    /// The realm of its MPP challenges.
    pub realm: &'a str,
    /// Categories and documentation links.
    pub discovery: &'a DiscoveryConfig,
    /// Whether its 402s carry MPP challenges at all: the Lightning charge
    /// method names no testnet, so a testnet gateway sells L402 alone.
    pub mpp: bool,
}

impl About<'_> {
    fn l402(&self, service: &PricedService) -> bool {
        service.schemes.l402()
    }

    fn mpp(&self, service: &PricedService) -> bool {
        self.mpp && service.schemes.mpp()
    }

    fn x402(&self, service: &PricedService) -> bool {
        service.schemes.x402()
    }

    /// The protocols a service's 402 carries here.
    fn protocols(&self, service: &PricedService) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.l402(service) {
            out.push("L402");
        }
        if self.mpp(service) {
            out.push("MPP");
        }
        if self.x402(service) {
            out.push("x402");
        }
        out
    }

    /// The protocols any 402 of this gateway can carry: L402, MPP unless
    /// the network rules it out, and x402 when a service it sells takes it
    /// (x402 is off unless a service asks for it).
    fn gateway_protocols(&self, services: &[Arc<PricedService>]) -> Vec<&'static str> {
        let mut out = vec!["L402"];
        if self.mpp {
            out.push("MPP");
        }
        if services.iter().any(|s| paid(s) && self.x402(s)) {
            out.push("x402");
        }
        out
    }

    /// Paid, and payable here with at least one protocol.
    pub fn sells(&self, service: &PricedService) -> bool {
        paid(service) && (self.l402(service) || self.mpp(service) || self.x402(service))
    }
}

/// The methods a service charges for: those it names, or (naming none)
/// every method a request is forwarded with (`HEAD` goes with `GET`).
fn methods(service: &PricedService) -> Vec<String> {
    if service.methods.is_empty() {
        ["GET", "POST", "PUT", "PATCH", "DELETE"]
            .map(String::from)
            .to_vec()
    } else {
        service.methods.iter().map(ToString::to_string).collect()
    }
}

/// Sold now: neither free nor switched off by the operator.
fn paid(service: &PricedService) -> bool {
    !matches!(service.auth, Auth::Off | Auth::Disabled)
}

fn price_msat(service: &PricedService) -> u64 {
    service.price_sats.saturating_mul(1000)
}

/// Whether the price depends on the request (rules or a pricer): the
/// documents then show no amount, and the 402 of a request names its own.
fn dynamic(service: &PricedService) -> bool {
    service.is_dynamic()
}

/// `{"amount": N, "type": "fixed"}`, or for a dynamic price
/// `{"amount": null, "type": "dynamic", "default": N, "quote": …}`, N
/// what a request no rule decides is asked ([`PricedService::default_sats`]).
fn listed_pricing(service: &PricedService) -> Value {
    if dynamic(service) {
        json!({"amount": null, "currency": "sat", "type": "dynamic", "default": service.default_sats(), "quote": QUOTE_PATH})
    } else {
        json!({"amount": service.price_sats, "currency": "sat", "type": "fixed"})
    }
}

/// The L402 manifest's and the quote's `pricing`: fixed at `price_msat`,
/// or dynamic (its default stated, the 402 authoritative).
fn manifest_pricing(service: &PricedService) -> Value {
    if dynamic(service) {
        json!({"model": "dynamic", "default_msat": service.default_sats().saturating_mul(1000), "quote_endpoint": QUOTE_PATH})
    } else {
        json!({"model": "fixed", "price_msat": price_msat(service)})
    }
}

/// What one payment buys ([`PricedService::sale_terms`]).
fn sale(service: &PricedService) -> Value {
    serde_json::to_value(service.sale_terms()).unwrap_or_default()
}

/// `into` with the entries of [`sale`] added.
fn with_sale(mut into: Value, service: &PricedService) -> Value {
    if let (Value::Object(map), Value::Object(sale)) = (&mut into, sale(service)) {
        map.extend(sale);
    }
    into
}

/// The path as an OpenAPI template: a prefix route takes the rest of the
/// path as one parameter.
fn template(path: &PathPattern) -> String {
    match path {
        PathPattern::Exact(p) => p.clone(),
        PathPattern::Prefix(p) => format!("{p}{{rest}}"),
    }
}

/// `/.well-known/l402-services`.
pub fn l402_services(about: &About<'_>, services: &[Arc<PricedService>]) -> Value {
    let listed: Vec<Value> = services
        .iter()
        .filter(|s| about.sells(s))
        .map(|s| {
            let entry = json!({
                "id": s.name,
                "name": s.name,
                "description": s.description,
                "endpoint": s.path.as_written(),
                "method": methods(s).join(","),
                "pricing": listed_pricing(s),
                "protocols": about.protocols(s),
                "freeCalls": match s.auth { Auth::Freebie(n) => n, _ => 0 },
            });
            with_sale(entry, s)
        })
        .collect();
    let protocols = about.gateway_protocols(services);
    let mut doc = json!({
        "name": about.name,
        "protocols": protocols,
        "payment_network": "lightning",
        "services": listed,
        "authentication": {
            "protocols_supported": protocols,
            "l402": {"spec": "https://github.com/lightninglabs/L402", "header": "Authorization: L402 <macaroon>:<preimage>", "manifest": MANIFEST_PATH},
        },
    });
    if about.mpp {
        doc["authentication"]["mpp"] = json!({"spec": "https://paymentauth.org", "realm": about.realm, "methods": ["lightning/charge"], "header": "Authorization: Payment <credential>"});
    }
    if protocols.contains(&"x402") {
        doc["authentication"]["x402"] = json!({"spec": "https://github.com/coinbase/x402", "version": 2, "offer": "PAYMENT-REQUIRED: <base64 JSON>", "header": "payment-signature: <base64 JSON>"});
    }
    if let Some(homepage) = &about.discovery.homepage {
        doc["homepage"] = homepage.as_str().into();
    }
    doc
}

/// One offer per scheme the service takes, each a Lightning charge of its
/// price; `scheme` tells an L402 client its offer from an MPP or an x402
/// one.
fn offers(about: &About<'_>, service: &PricedService) -> Vec<Value> {
    // A dynamic price has no amount here (draft-payment-discovery-01):
    // the quote endpoint and the request's own 402 tell it.
    let amount = (!dynamic(service)).then(|| service.price_sats.to_string());
    let offer = |scheme: &str| {
        let mut offer = json!({
            "intent": "charge",
            "method": "lightning",
            "amount": amount,
            "currency": "sat",
            "description": service.description,
            "scheme": scheme,
        });
        if amount.is_none() {
            offer["quote"] = QUOTE_PATH.into();
        }
        offer
    };
    let mut offers = Vec::new();
    // What each offer buys: an MPP charge one request; an L402 token what
    // the service sells.
    if about.mpp(service) {
        let mut mpp = offer(gate402_mpp::SCHEME);
        if service.sells == Sells::Balance {
            // The session intent: `amount` per unit, the deposit stated.
            mpp["intent"] = gate402_mpp::session::SESSION.into();
            mpp = with_sale(mpp, service);
        } else {
            mpp["sells"] = Sells::Request.as_str().into();
        }
        offers.push(mpp);
    }
    if about.l402(service) {
        offers.push(with_sale(offer("L402"), service));
    }
    // An x402 payment, like an MPP charge, is spent on one request.
    if about.x402(service) {
        let mut x402 = offer("x402");
        x402["sells"] = Sells::Request.as_str().into();
        offers.push(x402);
    }
    offers
}

/// The `402` response an operation declares: the fields its offer comes
/// in, for the schemes the service takes.
fn payment_required(about: &About<'_>, service: &PricedService) -> Value {
    let mut headers = Map::new();
    let mut carried = Vec::new();
    if about.l402(service) || about.mpp(service) {
        headers.insert(
            "WWW-Authenticate".into(),
            json!({"description": "The challenges", "schema": {"type": "string"}}),
        );
        carried.push("its challenges in WWW-Authenticate");
    }
    if about.x402(service) {
        headers.insert(
            "PAYMENT-REQUIRED".into(),
            json!({"description": "The x402 offer (base64 JSON)", "schema": {"type": "string"}}),
        );
        carried.push("its x402 offer in PAYMENT-REQUIRED");
    }
    headers.insert(
        "Link".into(),
        json!({"description": "The L402 manifest (rel=\"l402-manifest\")", "schema": {"type": "string"}}),
    );
    json!({
        "description": format!("Payment Required: one Lightning invoice and {}", carried.join(" and ")),
        "headers": headers,
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    })
}

/// `x-service-info`: categories and documentation links where configured,
/// plus what the gateway itself knows.
fn service_info(about: &About<'_>, services: &[Arc<PricedService>]) -> Value {
    let discovery = about.discovery;
    let mut info = Map::new();
    if !discovery.categories.is_empty() {
        info.insert("categories".into(), json!(discovery.categories));
    }
    let mut docs = Map::new();
    for (key, value) in [
        ("apiReference", &discovery.docs),
        ("homepage", &discovery.homepage),
        ("llms", &discovery.llms),
    ] {
        if let Some(value) = value {
            docs.insert(key.into(), value.as_str().into());
        }
    }
    if !docs.is_empty() {
        info.insert("docs".into(), Value::Object(docs));
    }
    info.insert("name".into(), about.name.into());
    info.insert("protocols".into(), json!(about.gateway_protocols(services)));
    info.insert("payment_network".into(), "lightning".into());
    info.insert("l402Manifest".into(), MANIFEST_PATH.into());
    Value::Object(info)
}

/// `/openapi.json`: one operation per priced method and path.
pub fn openapi(about: &About<'_>, services: &[Arc<PricedService>]) -> Value {
    let mut paths = Map::new();
    for service in services.iter().filter(|s| about.sells(s)) {
        let parameters = match &service.path {
            PathPattern::Exact(_) => json!([]),
            PathPattern::Prefix(_) => {
                json!([{"name": "rest", "in": "path", "required": true, "schema": {"type": "string"}}])
            }
        };
        let entry = paths
            .entry(template(&service.path))
            .or_insert_with(|| json!({}));
        for method in methods(service) {
            let mut operation = json!({
                "operationId": format!("{}_{}", service.name, method.to_ascii_lowercase()),
                "summary": service.description,
                "parameters": parameters,
                "x-payment-info": {"offers": offers(about, service)},
                "responses": {
                    "200": {"description": "The paid response, with a Payment-Receipt header"},
                    "402": payment_required(about, service),
                },
            });
            // The body is the upstream's business and goes to it as sent.
            if matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
                operation["requestBody"] = json!({
                    "description": "Passed to the API as sent",
                    "required": false,
                    "content": {"*/*": {"schema": {}}},
                });
            }
            // The first service that takes a route is the one requests meet.
            let key = method.to_ascii_lowercase();
            if entry.get(&key).is_none() {
                entry[key] = operation;
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": about.name, "version": "1"},
        "x-service-info": service_info(about, services),
        "paths": paths,
    })
}

/// `/.well-known/l402.json`: the services that sell L402 tokens, each
/// resource at its fixed price, and the caveats their tokens carry.
pub fn manifest(
    about: &About<'_>,
    node_pubkey: Option<&str>,
    services: &[Arc<PricedService>],
) -> Value {
    let mut provider = Map::new();
    provider.insert("name".into(), about.name.into());
    if let Some(uri) = &about.discovery.homepage {
        provider.insert("uri".into(), uri.as_str().into());
    }
    if let Some(pubkey) = node_pubkey {
        provider.insert("node_pubkey".into(), pubkey.into());
    }
    let sold: Vec<&Arc<PricedService>> = services
        .iter()
        .filter(|s| paid(s) && about.l402(s))
        .collect();
    let catalog: Vec<Value> = sold
        .iter()
        .map(|s| {
            let resources: Vec<Value> = methods(s)
                .into_iter()
                .map(|method| {
                    json!({
                        "path": template(&s.path),
                        "method": method,
                        "pricing": manifest_pricing(s),
                    })
                })
                .collect();
            let entry = json!({
                "name": s.name,
                "description": s.description,
                // Tokens are minted `services=<name>:0`, with no capabilities.
                "tiers": [{"tier": 0, "name": "base"}],
                "capabilities": [],
                "resources": resources,
            });
            with_sale(entry, s)
        })
        .collect();
    let mut caveats = Map::new();
    caveats.insert(
        "services".into(),
        json!({"type": "service_list", "attenuation": "subset", "description": "The services a token pays for, each name:tier"}),
    );
    let caveat = |kind: &str, attenuation: &str, description: String| json!({"type": kind, "attenuation": attenuation, "description": description});
    for s in &sold {
        let name = &s.name;
        caveats.insert(
            format!("{name}{VALID_UNTIL_SUFFIX}"),
            caveat(
                "timestamp",
                "earlier",
                format!("Unix time the token stops working on {name}"),
            ),
        );
        if s.sells == Sells::Pass {
            caveats.insert(
                format!("{name}{PASS_SUFFIX}"),
                caveat(
                    "flag",
                    "fixed",
                    format!(
                        "Marks the token a pass on {name}, good until {name}{VALID_UNTIL_SUFFIX}"
                    ),
                ),
            );
            caveats.insert(
                format!("{name}{PASS_SECS_SUFFIX}"),
                caveat(
                    "duration",
                    "shorter",
                    format!("Seconds the pass on {name} lasts from its first use"),
                ),
            );
        }
        if s.sells == Sells::Balance {
            caveats.insert(
                format!("{name}{BALANCE_SUFFIX}"),
                caveat(
                    "amount",
                    "smaller",
                    format!("The deposit (sat) of the balance the token spends on {name}, a request at a time"),
                ),
            );
        }
        if s.sells == Sells::Request {
            caveats.insert(
                format!("{name}{USES_SUFFIX}"),
                caveat(
                    "count",
                    "fewer",
                    format!("Requests the token pays for on {name} (1: a token per request)"),
                ),
            );
            caveats.insert(
                format!("{name}{}", gate402_paywall::pricing::AMOUNT_SUFFIX),
                caveat(
                    "amount",
                    "none",
                    format!("The amount (sat) the token's invoice asked; a request to {name} that costs more refuses it"),
                ),
            );
        }
    }
    json!({
        "version": "1.0",
        "provider": provider,
        "currencies": ["msat"],
        "macaroon_versions": [0],
        "payment_methods": ["bolt11"],
        "quote_endpoint": QUOTE_PATH,
        "openapi": OPENAPI_PATH,
        "services": catalog,
        "caveats": caveats,
    })
}

/// The answer of the quote endpoint for the service `path` and `method`
/// route to.
pub fn quote(about: &About<'_>, service: &PricedService, path: &str, method: &Method) -> Value {
    let mut quote = json!({
        "service": service.name,
        "path": path,
        "method": method.as_str(),
        "price_msat": (!dynamic(service)).then(|| price_msat(service)),
        "pricing": manifest_pricing(service),
        "amount": (!dynamic(service)).then(|| service.price_sats.to_string()),
        "currency": "sat",
        "protocols": about.protocols(service),
        "description": service.description,
    });
    if let Auth::Freebie(n) = service.auth {
        quote["freeCalls"] = n.into();
    }
    if dynamic(service) {
        quote["detail"] = "The price depends on the request (its method, path, query and body): send it, and its 402 names its price.".into();
    }
    with_sale(quote, service)
}

/// A [`quote`] of a dynamically priced service with the price decided for
/// the request described (`?path`, `&method`, `&query`, no body), when it
/// could be: `amount` and `price_msat` then hold it, and `pricing` says
/// `quoted`.
pub fn with_price(mut quote: Value, service: &PricedService, price_sats: Option<u64>) -> Value {
    if let (true, Some(sats)) = (dynamic(service), price_sats) {
        let msat = sats.saturating_mul(1000);
        quote["amount"] = sats.to_string().into();
        quote["price_msat"] = msat.into();
        quote["pricing"]["price_msat"] = msat.into();
        quote["pricing"]["quoted"] = true.into();
        quote["detail"] =
            "The price of this request without a body; its 402 is authoritative.".into();
    }
    quote
}

#[cfg(test)]
mod tests {
    use gate402_paywall::Schemes;

    use super::*;

    fn services() -> Vec<Arc<PricedService>> {
        let both = PricedService::new("both", "/both", 3);
        let mut mpp = PricedService::new("mpp", "/mpp", 4);
        mpp.schemes = Schemes::MPP;
        let mut l402 = PricedService::new("l402", "/l402/*", 5);
        l402.schemes = Schemes::L402;
        [both, mpp, l402].into_iter().map(Arc::new).collect()
    }

    fn about(mpp: bool) -> About<'static> {
        static DISCOVERY: DiscoveryConfig = DiscoveryConfig {
            categories: Vec::new(),
            homepage: None,
            docs: None,
            llms: None,
        };
        About {
            name: "test",
            realm: "test",
            discovery: &DISCOVERY,
            mpp,
        }
    }

    fn schemes_offered(doc: &Value, path: &str) -> Vec<String> {
        doc["paths"][path]["get"]["x-payment-info"]["offers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["scheme"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn each_offer_is_a_scheme_the_402_carries() {
        let doc = openapi(&about(true), &services());
        assert_eq!(schemes_offered(&doc, "/both"), ["Payment", "L402"]);
        assert_eq!(schemes_offered(&doc, "/mpp"), ["Payment"]);
        assert_eq!(schemes_offered(&doc, "/l402/{rest}"), ["L402"]);
        assert_eq!(doc["x-service-info"]["protocols"], json!(["L402", "MPP"]));
    }

    /// x402 is listed where a service takes it, and in the gateway's
    /// protocols only then; never in the L402 manifest without L402.
    #[test]
    fn x402_is_offered_where_a_service_takes_it() {
        let about = about(true);
        assert_eq!(about.gateway_protocols(&services()), ["L402", "MPP"]);
        let mut alone = PricedService::new("alone", "/alone", 6);
        alone.schemes = Schemes::X402;
        let mut all = PricedService::new("all", "/all", 7);
        all.schemes = Schemes::ALL;
        let mut with = services();
        with.extend([alone, all].map(Arc::new));
        assert!(about.sells(&with[3]));
        let doc = openapi(&about, &with);
        assert_eq!(schemes_offered(&doc, "/alone"), ["x402"]);
        assert_eq!(schemes_offered(&doc, "/all"), ["Payment", "L402", "x402"]);
        assert_eq!(
            doc["x-service-info"]["protocols"],
            json!(["L402", "MPP", "x402"])
        );
        let listed = l402_services(&about, &with);
        assert_eq!(listed["protocols"], json!(["L402", "MPP", "x402"]));
        assert_eq!(listed["services"].as_array().unwrap().len(), 5);
        let sold = manifest(&about, None, &with);
        let names: Vec<_> = sold["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["both", "l402", "all"]);
        // A free service that would take x402 offers nothing.
        let mut free = PricedService::new("free", "/free", 1);
        free.schemes = Schemes::X402;
        free.auth = Auth::Off;
        assert!(!about.sells(&free));
        assert_eq!(about.gateway_protocols(&[Arc::new(free)]), ["L402", "MPP"]);
    }

    /// On testnet the paywall sends no MPP challenge, so discovery offers
    /// none, and a service sold by MPP alone is not for sale at all.
    #[test]
    fn a_testnet_gateway_offers_l402_alone() {
        let about = about(false);
        let doc = openapi(&about, &services());
        assert_eq!(schemes_offered(&doc, "/both"), ["L402"]);
        assert!(doc["paths"].get("/mpp").is_none());
        assert_eq!(doc["x-service-info"]["protocols"], json!(["L402"]));
        let listed = l402_services(&about, &services());
        assert_eq!(listed["protocols"], json!(["L402"]));
        assert!(listed["authentication"].get("mpp").is_none());
        assert_eq!(listed["services"].as_array().unwrap().len(), 2);
        let quoted = quote(&about, &services()[0], "/both", &Method::GET);
        assert_eq!(quoted["protocols"], json!(["L402"]));
        assert!(!about.sells(&services()[1]));
    }
}
