//! Discovery documents generated from the services:
//! `/.well-known/l402-services` and `/openapi.json` with `x-payment-info`.

use serde_json::{json, Map, Value};

use gate402_paywall::route::PathPattern;
use gate402_paywall::{Auth, PricedService};

fn schemes(service: &PricedService) -> Vec<&'static str> {
    let mut out = Vec::new();
    if service.schemes.l402() {
        out.push("L402");
    }
    if service.schemes.mpp() {
        out.push("MPP");
    }
    out
}

fn methods(service: &PricedService) -> Vec<String> {
    if service.methods.is_empty() {
        vec!["GET".into(), "POST".into()]
    } else {
        service.methods.iter().map(ToString::to_string).collect()
    }
}

fn paid(service: &PricedService) -> bool {
    service.auth != Auth::Off
}

/// `/.well-known/l402-services`.
pub fn l402_services(name: &str, realm: &str, services: &[std::sync::Arc<PricedService>]) -> Value {
    let services: Vec<Value> = services
        .iter()
        .filter(|s| paid(s))
        .map(|s| {
            json!({
                "id": s.name,
                "name": s.name,
                "description": s.description,
                "endpoint": s.path.as_written(),
                "method": methods(s).join(","),
                "pricing": {"amount": s.price_sats, "currency": "sat", "type": "fixed"},
                "protocols": schemes(s),
                "freeCalls": match s.auth { Auth::Freebie(n) => n, _ => 0 },
            })
        })
        .collect();
    json!({
        "name": name,
        "protocols": ["L402", "MPP"],
        "payment_network": "lightning",
        "services": services,
        "authentication": {
            "protocols_supported": ["L402", "MPP"],
            "l402": {"spec": "https://github.com/lightninglabs/L402", "header": "Authorization: L402 <macaroon>:<preimage>"},
            "mpp": {"spec": "https://paymentauth.org", "realm": realm, "methods": ["lightning/charge"], "header": "Authorization: Payment <credential>"},
        },
    })
}

/// `/openapi.json`: one operation per priced method and path.
pub fn openapi(name: &str, services: &[std::sync::Arc<PricedService>]) -> Value {
    let mut paths = Map::new();
    for service in services.iter().filter(|s| paid(s)) {
        let (path, parameters) = match &service.path {
            PathPattern::Exact(p) => (p.clone(), json!([])),
            PathPattern::Prefix(p) => (
                format!("{p}{{rest}}"),
                json!([{"name": "rest", "in": "path", "required": true, "schema": {"type": "string"}}]),
            ),
        };
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        for method in methods(service) {
            entry[method.to_ascii_lowercase()] = json!({
                "operationId": format!("{}_{}", service.name, method.to_ascii_lowercase()),
                "summary": service.description,
                "parameters": parameters,
                "x-payment-info": {
                    "intent": "charge",
                    "method": "lightning",
                    "amount": service.price_sats.to_string(),
                    "currency": "sat",
                    "description": service.description,
                    "protocols": schemes(service),
                },
                "responses": {
                    "200": {"description": "The paid response, with a Payment-Receipt header"},
                    "402": {
                        "description": "Payment Required: one Lightning invoice, L402 and MPP challenges in WWW-Authenticate",
                        "content": {"application/problem+json": {"schema": {"type": "object"}}},
                    },
                },
            });
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": name, "version": "1"},
        "x-service-info": {"name": name, "protocols": ["L402", "MPP"], "payment_network": "lightning"},
        "paths": paths,
    })
}
