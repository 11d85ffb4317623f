//! Discovery on a running gateway: `/openapi.json` as
//! draft-payment-discovery-01 shapes it (and as mppx's own validator reads
//! it), `/.well-known/l402-services`, the L402 manifest and its quote
//! endpoint, and the `Link` to the manifest on discovery documents and 402s;
//! the demo's x402 routes listed with their x402 offers.

use std::path::PathBuf;

use axum::http::Method;
use gate402_gateway::config::{Auth, DiscoveryConfig, Schemes, ServiceConfig};
use gate402_gateway::discovery::MANIFEST_LINK;
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_paywall::{Meter, Usage};
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, LINK};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Discovery {
    gateway: Gateway,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Nothing listens there: a 402 is answered before any upstream is asked.
const UPSTREAM: &str = "http://127.0.0.1:9";

fn services() -> Vec<ServiceConfig> {
    let weather = ServiceConfig::proxied("weather", "/weather", 10, UPSTREAM);
    let mut maps = ServiceConfig::proxied("maps", "/maps/*", 20, UPSTREAM);
    maps.priced.methods = vec![Method::GET];
    maps.priced.schemes = Schemes::L402;
    maps.priced.description = "Map tiles".into();
    maps.priced = maps.priced.pass(86_400);
    let mut submit = ServiceConfig::proxied("submit", "/submit", 5, UPSTREAM);
    submit.priced.methods = vec![Method::POST];
    submit.priced.schemes = Schemes::MPP;
    submit.priced.auth = Auth::Freebie(2);
    let mut status = ServiceConfig::proxied("status", "/status", 0, UPSTREAM);
    status.priced.auth = Auth::Off;
    vec![weather, maps, submit, status]
}

impl Discovery {
    /// The demo gateway: the weather through every door, and through x402
    /// alone at `/api/x402/weather`.
    async fn demo() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let upstream = UPSTREAM.trim_start_matches("http://").parse().unwrap();
        let gateway = Gateway::start(&gate402_gateway::demo::config(upstream), dir.path())
            .await
            .unwrap();
        Self {
            gateway,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = GatewayConfig::default_with_services(services());
        config.name = "Weather Inc".into();
        config.discovery = DiscoveryConfig {
            categories: vec!["data".into(), "search".into()],
            homepage: Some("https://weather.example".into()),
            docs: Some("/docs".into()),
            llms: Some("https://weather.example/llms.txt".into()),
        };
        Self::with_config(config, dir).await
    }

    /// A gateway on `config`, listening on a free port, its data in `dir`.
    async fn with_config(mut config: GatewayConfig, dir: tempfile::TempDir) -> Self {
        config.listen = "127.0.0.1:0".parse().unwrap();
        let gateway = Gateway::start(&config, dir.path()).await.unwrap();
        Self {
            gateway,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A discovery document, after checking what every one carries.
    async fn document(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert_eq!(headers[CACHE_CONTROL], "max-age=300", "{path}");
        assert_eq!(headers[LINK], MANIFEST_LINK, "{path}");
        assert_eq!(headers[CONTENT_TYPE], "application/json", "{path}");
        assert_eq!(headers["access-control-allow-origin"], "*", "{path}");
        response.json().await.unwrap()
    }

    async fn quote(&self, query: &str) -> (StatusCode, Value) {
        let response = self.get(&format!("/l402/quote?{query}")).await;
        let status = response.status();
        if status != StatusCode::OK {
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                "application/problem+json",
                "{query}"
            );
        }
        (status, response.json().await.unwrap())
    }
}

fn operations(openapi: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    out
}

#[tokio::test]
async fn openapi_offers_each_paid_operation_with_its_402() {
    let d = Discovery::start().await;
    let openapi = d.document("/openapi.json").await;
    let offer = |scheme: &str, amount: &str, description: &str| {
        json!({
            "intent": "charge", "method": "lightning", "amount": amount,
            "currency": "sat", "description": description, "scheme": scheme,
            "sells": "request",
        })
    };
    // A pass's L402 offer says how long it lasts.
    let pass = |mut offer: Value| {
        offer["sells"] = "pass".into();
        offer["passSeconds"] = 86_400.into();
        offer
    };
    let paths = &openapi["paths"];
    // A service that names no methods charges every one it forwards.
    for method in ["get", "post", "put", "patch", "delete"] {
        assert_eq!(
            paths["/weather"][method]["x-payment-info"],
            json!({"offers": [offer("Payment", "10", "weather"), offer("L402", "10", "weather")]})
        );
    }
    assert_eq!(
        paths["/maps/{rest}"]["get"]["x-payment-info"],
        json!({"offers": [pass(offer("L402", "20", "Map tiles"))]})
    );
    assert!(paths["/maps/{rest}"].get("post").is_none());
    assert_eq!(
        paths["/submit"]["post"]["x-payment-info"],
        json!({"offers": [offer("Payment", "5", "submit")]})
    );
    assert!(paths.get("/status").is_none(), "a free route is no offer");

    let ops = operations(&openapi);
    assert_eq!(ops.len(), 7);
    for (path, method, operation) in &ops {
        let info = operation["x-payment-info"].as_object().unwrap();
        assert_eq!(
            info.keys().collect::<Vec<_>>(),
            ["offers"],
            "{method} {path}: offers only, never mixed with the flat form"
        );
        let declared = &operation["responses"]["402"];
        assert!(declared["description"].is_string(), "{method} {path}");
        assert!(declared["headers"]["WWW-Authenticate"].is_object());
        assert_eq!(
            operation.get("requestBody").is_some(),
            ["post", "put", "patch"].contains(&method.as_str()),
            "{method} {path}"
        );
    }

    let info = &openapi["x-service-info"];
    assert_eq!(info["categories"], json!(["data", "search"]));
    assert_eq!(
        info["docs"],
        json!({
            "apiReference": "/docs",
            "homepage": "https://weather.example",
            "llms": "https://weather.example/llms.txt",
        })
    );
    assert_eq!(openapi["openapi"], "3.1.0");
    assert_eq!(openapi["info"]["title"], "Weather Inc");

    let services = d.document("/.well-known/l402-services").await;
    assert_eq!(services["homepage"], "https://weather.example");
    let names: Vec<_> = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weather", "maps", "submit"]);
}

#[tokio::test]
async fn without_a_discovery_table_nothing_is_made_up() {
    let config = GatewayConfig::default_with_services(services());
    let d = Discovery::with_config(config, tempfile::tempdir().unwrap()).await;
    let openapi = d.document("/openapi.json").await;
    assert!(openapi["x-service-info"].get("categories").is_none());
    assert!(openapi["x-service-info"].get("docs").is_none());
    let manifest = d.document("/.well-known/l402.json").await;
    assert!(manifest["provider"].get("uri").is_none());
    assert_eq!(manifest["provider"]["name"], "gate402");
}

#[tokio::test]
async fn the_l402_manifest_lists_what_l402_buys() {
    let d = Discovery::start().await;
    let manifest = d.document("/.well-known/l402.json").await;
    let node = d.gateway.paywall().backend().node_info().await.unwrap();
    assert_eq!(manifest["version"], "1.0");
    assert_eq!(
        manifest["provider"],
        json!({
            "name": "Weather Inc",
            "uri": "https://weather.example",
            "node_pubkey": hex::encode(node.pubkey),
        })
    );
    assert_eq!(manifest["currencies"], json!(["msat"]));
    assert_eq!(manifest["macaroon_versions"], json!([0]));
    assert_eq!(manifest["payment_methods"], json!(["bolt11"]));
    assert_eq!(manifest["quote_endpoint"], "/l402/quote");
    assert_eq!(manifest["openapi"], "/openapi.json");
    let fixed = |msat: u64| json!({"model": "fixed", "price_msat": msat});
    // submit takes MPP only, status is free: neither sells a token.
    assert_eq!(
        manifest["services"],
        json!([
            {
                "name": "weather",
                "description": "weather",
                "tiers": [{"tier": 0, "name": "base"}],
                "capabilities": [],
                "resources": [
                    {"path": "/weather", "method": "GET", "pricing": fixed(10_000)},
                    {"path": "/weather", "method": "POST", "pricing": fixed(10_000)},
                    {"path": "/weather", "method": "PUT", "pricing": fixed(10_000)},
                    {"path": "/weather", "method": "PATCH", "pricing": fixed(10_000)},
                    {"path": "/weather", "method": "DELETE", "pricing": fixed(10_000)},
                ],
                "sells": "request",
            },
            {
                "name": "maps",
                "description": "Map tiles",
                "tiers": [{"tier": 0, "name": "base"}],
                "capabilities": [],
                "resources": [
                    {"path": "/maps/{rest}", "method": "GET", "pricing": fixed(20_000)},
                ],
                "sells": "pass",
                "passSeconds": 86_400,
            },
        ])
    );
    let caveats = manifest["caveats"].as_object().unwrap();
    let mut conditions: Vec<_> = caveats.keys().collect();
    conditions.sort();
    assert_eq!(
        conditions,
        [
            "maps_pass",
            "maps_pass_secs",
            "maps_valid_until",
            "services",
            "weather_amount",
            "weather_uses",
            "weather_valid_until"
        ]
    );
    // A per-request token says so in its macaroon, and so does a pass.
    assert_eq!(caveats["weather_uses"]["type"], "count");
    assert_eq!(caveats["maps_pass"]["type"], "flag");
    assert_eq!(caveats["maps_pass_secs"]["attenuation"], "shorter");
    assert_eq!(caveats["weather_amount"]["type"], "amount");
    assert_eq!(caveats["services"]["type"], "service_list");
    assert_eq!(caveats["maps_valid_until"]["type"], "timestamp");
    assert_eq!(caveats["maps_valid_until"]["attenuation"], "earlier");

    // Every resource's quote agrees with the manifest and the OpenAPI offer.
    let openapi = d.document("/openapi.json").await;
    for service in manifest["services"].as_array().unwrap() {
        for resource in service["resources"].as_array().unwrap() {
            let template = resource["path"].as_str().unwrap();
            let method = resource["method"].as_str().unwrap();
            let path = template.replace("{rest}", "tile/1");
            let (status, quote) = d.quote(&format!("path={path}&method={method}")).await;
            assert_eq!(status, StatusCode::OK, "{quote}");
            assert_eq!(quote["service"], service["name"]);
            assert_eq!(quote["pricing"], resource["pricing"]);
            let offers = &openapi["paths"][template][method.to_ascii_lowercase()]["x-payment-info"]
                ["offers"];
            let sats: u64 = offers[0]["amount"].as_str().unwrap().parse().unwrap();
            assert_eq!(resource["pricing"]["price_msat"], sats * 1000);
        }
    }
}

#[tokio::test]
async fn quotes() {
    let d = Discovery::start().await;
    let (status, quote) = d.quote("path=/weather").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        quote,
        json!({
            "service": "weather",
            "path": "/weather",
            "method": "GET",
            "price_msat": 10_000,
            "pricing": {"model": "fixed", "price_msat": 10_000},
            "amount": "10",
            "currency": "sat",
            "protocols": ["L402", "MPP"],
            "description": "weather",
            "sells": "request",
        })
    );
    // Routed as a request would be: normalized, case-folded, any method
    // the service takes.
    let (_, quote) = d.quote("path=/maps/./a/../tile%2D1&method=get").await;
    assert_eq!(quote["service"], "maps");
    assert_eq!(quote["path"], "/maps/tile-1");
    assert_eq!(quote["price_msat"], 20_000);
    assert_eq!(quote["sells"], "pass");
    assert_eq!(quote["passSeconds"], 86_400);
    let (_, quote) = d.quote("path=/submit&method=POST").await;
    assert_eq!(quote["protocols"], json!(["MPP"]));
    assert_eq!(quote["freeCalls"], 2);

    for query in [
        "path=/nowhere",
        "path=/status",
        "path=/submit&method=GET",
        "path=/maps/x&method=POST",
    ] {
        let (status, problem) = d.quote(query).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{query}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("no priced service"),
            "{query}: {problem}"
        );
    }
    // An encoded `/` (sent as %252F, %2F once the query is decoded) is as
    // ambiguous here as in a request.
    for query in [
        "",
        "method=GET",
        "path=weather",
        "path=/a%252Fb",
        "path=/weather&method=G%20T",
        // Answered by the gateway itself (405), never sold.
        "path=/weather&method=TRACE",
        "path=/weather&method=track",
    ] {
        let (status, problem) = d.quote(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
    }
    // A query the endpoint cannot read says why.
    let (status, problem) = d.quote("path=/a&path=/b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("does not fit") && detail.contains("duplicate field `path`"),
        "{problem}"
    );
    let response = d.get("/l402/quote?path=/weather").await;
    assert_eq!(response.headers()[LINK], MANIFEST_LINK);
    assert_eq!(response.headers()[CACHE_CONTROL], "no-cache");
}

#[tokio::test]
async fn a_402_links_the_manifest() {
    let d = Discovery::start().await;
    for (method, path) in [
        (Method::GET, "/weather"),
        (Method::POST, "/weather"),
        (Method::GET, "/maps/x"),
    ] {
        let response = d
            .client
            .request(method.clone(), d.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED, "{path}");
        let links: Vec<_> = response.headers().get_all(LINK).iter().collect();
        assert_eq!(links, [MANIFEST_LINK], "{method} {path}");
        assert!(!response.headers()["www-authenticate"].is_empty());
    }
    // Only a 402 gains the link.
    let response = d.get("/nowhere").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(response.headers().get(LINK).is_none());
}

#[tokio::test]
async fn a_service_sold_through_x402_alone_is_listed_with_its_x402_offer() {
    let d = Discovery::demo().await;
    let openapi = d.document("/openapi.json").await;
    assert_eq!(
        openapi["x-service-info"]["protocols"],
        json!(["L402", "MPP", "x402"])
    );
    let offers = |path: &str| -> Vec<Value> {
        openapi["paths"][path]["get"]["x-payment-info"]["offers"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} is not listed"))
            .clone()
    };
    let alone = offers("/api/x402/weather");
    assert_eq!(
        alone,
        [json!({
            "intent": "charge", "method": "lightning", "amount": "10",
            "currency": "sat", "description": "Weather report over x402 (demo)",
            "scheme": "x402", "sells": "request",
        })]
    );
    let schemes =
        |offers: Vec<Value>| -> Vec<Value> { offers.iter().map(|o| o["scheme"].clone()).collect() };
    assert_eq!(
        schemes(offers("/api/weather")),
        [json!("Payment"), json!("L402"), json!("x402")]
    );
    // Its 402 carries PAYMENT-REQUIRED, and no challenge.
    let declared = &openapi["paths"]["/api/x402/weather"]["get"]["responses"]["402"]["headers"];
    assert!(declared["PAYMENT-REQUIRED"].is_object(), "{declared}");
    assert!(declared.get("WWW-Authenticate").is_none(), "{declared}");
    let answered = d.get("/api/x402/weather").await;
    assert_eq!(answered.status(), StatusCode::PAYMENT_REQUIRED);
    assert!(answered.headers().contains_key("payment-required"));
    assert!(!answered.headers().contains_key("www-authenticate"));
    let declared = &openapi["paths"]["/api/weather"]["get"]["responses"]["402"]["headers"];
    assert!(declared["PAYMENT-REQUIRED"].is_object() && declared["WWW-Authenticate"].is_object());

    let services = d.document("/.well-known/l402-services").await;
    assert_eq!(services["protocols"], json!(["L402", "MPP", "x402"]));
    assert_eq!(
        services["authentication"]["x402"]["header"],
        "payment-signature: <base64 JSON>"
    );
    let listed = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "weather-x402")
        .expect("weather-x402 listed");
    assert_eq!(listed["protocols"], json!(["x402"]));
    assert_eq!(listed["endpoint"], "/api/x402/weather");

    let (status, quote) = d.quote("path=/api/x402/weather").await;
    assert_eq!(status, StatusCode::OK, "{quote}");
    assert_eq!(quote["protocols"], json!(["x402"]));
    assert_eq!(quote["price_msat"], 10_000);

    // No L402 token buys it: the L402 manifest leaves it out.
    let manifest = d.document("/.well-known/l402.json").await;
    let names: Vec<_> = manifest["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"weather"), "{names:?}");
    assert!(!names.contains(&"weather-x402"), "{names:?}");
    assert!(manifest["caveats"]
        .get("weather-x402_valid_until")
        .is_none());
}

/// Where scripts/test installed mppx (its pinned version).
fn mppx() -> PathBuf {
    const HOW: &str = "./scripts/test installs it into $GATE402_CACHE/npm/mppx-discovery and sets \
         GATE402_MPPX_DISCOVERY; by hand, copy crates/gateway/tests/mppx-discovery/package.json \
         into a directory, run `npm install --prefix <directory>` and point \
         GATE402_MPPX_DISCOVERY at it";
    let Some(dir) = std::env::var_os("GATE402_MPPX_DISCOVERY").map(PathBuf::from) else {
        panic!("GATE402_MPPX_DISCOVERY is not set: {HOW}");
    };
    assert!(
        dir.join("node_modules/mppx/package.json").exists(),
        "GATE402_MPPX_DISCOVERY={} holds no mppx: {HOW}",
        dir.display()
    );
    dir
}

#[tokio::test]
async fn mppx_validates_the_openapi_document() {
    let mppx = mppx();
    let d = Discovery::start().await;
    let openapi = d.document("/openapi.json").await;
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("openapi.json");
    std::fs::write(&ours, serde_json::to_vec(&openapi).unwrap()).unwrap();
    // The same document spoilt as the draft forbids: the validator must see it.
    let mut spoilt = openapi.clone();
    spoilt["paths"]["/weather"]["get"]["x-payment-info"]["amount"] = "10".into();
    let spoilt_path = dir.path().join("spoilt.json");
    std::fs::write(&spoilt_path, serde_json::to_vec(&spoilt).unwrap()).unwrap();
    // The demo's, with x402 offers beside the others and alone.
    let demo = Discovery::demo().await.document("/openapi.json").await;
    let demo_path = dir.path().join("demo.json");
    std::fs::write(&demo_path, serde_json::to_vec(&demo).unwrap()).unwrap();

    // Read when the test runs: a test binary kept in a build cache shared
    // with a checkout elsewhere holds that checkout's path.
    let crate_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let script = PathBuf::from(crate_dir).join("tests/mppx-discovery/validate.mjs");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .arg(&mppx)
        .arg(&ours)
        .arg(&spoilt_path)
        .arg(&demo_path)
        .output()
        .await
        .expect("node runs mppx's validator");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        results[0]["issues"],
        json!([]),
        "mppx finds fault with /openapi.json"
    );
    let spoilt_issues = results[1]["issues"].as_array().unwrap();
    assert!(
        spoilt_issues
            .iter()
            .any(|i| i["severity"] == "error" && i["message"].as_str().unwrap().contains("mix")),
        "{spoilt_issues:?}"
    );
    assert_eq!(
        results[2]["issues"],
        json!([]),
        "mppx finds fault with the demo's /openapi.json"
    );
}

/// A balance says what it is charged for, and a usage-metered one what
/// each request holds from it (so a client can size its deposit and tell
/// when a balance is too low for one more request): in every discovery
/// document and in the 402 itself.
#[tokio::test]
async fn a_metered_balance_states_its_meter_and_what_a_request_holds() {
    let mut chat = ServiceConfig::proxied("chat", "/chat", 1, UPSTREAM);
    chat.priced = chat.priced.balance(200);
    chat.priced.meter = Meter::Usage(Usage {
        header: Some(axum::http::HeaderName::from_static("x-usage")),
        field: None,
        max_units: 50,
    });
    let mut stream = ServiceConfig::proxied("stream", "/stream", 1, UPSTREAM);
    stream.priced = stream.priced.balance(20);
    stream.priced.meter = Meter::Events;
    let config = GatewayConfig::default_with_services(vec![chat, stream]);
    let d = Discovery::with_config(config, tempfile::tempdir().unwrap()).await;
    let openapi = d.document("/openapi.json").await;
    for (path, meter, max_units) in [
        ("/chat", "usage", json!(50)),
        ("/stream", "events", Value::Null),
    ] {
        let offers = &openapi["paths"][path]["get"]["x-payment-info"]["offers"];
        let offers = offers.as_array().unwrap();
        assert!(!offers.is_empty(), "{openapi}");
        for offer in offers {
            assert_eq!(offer["sells"], "balance", "{offer}");
            assert_eq!(offer["meter"], meter, "{offer}");
            assert_eq!(offer["maxUnits"], max_units, "{offer}");
        }
        let unpaid = d.get(path).await;
        assert_eq!(unpaid.status(), StatusCode::PAYMENT_REQUIRED);
        let unpaid: Value = unpaid.json().await.unwrap();
        assert_eq!(unpaid["meter"], meter, "{unpaid}");
        assert_eq!(unpaid["maxUnits"], max_units, "{unpaid}");
    }
    for document in ["/.well-known/l402-services", "/.well-known/l402.json"] {
        let text = d.document(document).await.to_string();
        assert!(text.contains(r#""maxUnits":50"#), "{document}: {text}");
        assert!(text.contains(r#""meter":"events""#), "{document}: {text}");
    }
}
