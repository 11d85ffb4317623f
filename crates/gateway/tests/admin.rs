//! The admin API on its own listener, on the sandbox and SQLite: its
//! credentials (the data dir's, a configured one, the dashboard's cookie
//! from a login link), services changed at runtime with the config's
//! checks, payments and revenue after paid traffic, one token revoked,
//! a balance closed with its refund, the node, and the log of who changed
//! what.

use std::time::Duration;

use gate402_client::Offer;
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_lightning_sandbox::http::pay_via;
use reqwest::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OPS_SECRET: &str = "an ops secret of at least thirty-two characters";

struct Harness {
    gateway: Gateway,
    http: reqwest::Client,
    admin: String,
    secret: String,
    config: GatewayConfig,
    dir: tempfile::TempDir,
}

async fn upstream() -> String {
    let app = axum::Router::new().fallback(|| async { "upstream answer" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

impl Harness {
    async fn start() -> Self {
        Self::start_adjusted(|_| {}).await
    }

    /// [`Harness::start`] with the config changed by `adjust` first.
    async fn start_adjusted(adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        let upstream = upstream().await;
        let text = format!(
            r#"
listen = "127.0.0.1:0"

[admin]
credentials = [{{ name = "ops", secret = "{OPS_SECRET}" }}]

[[services]]
name = "weather"
path = "/api/weather"
price_sats = 10
upstream = "{upstream}"
headers = {{ "x-api-key" = "upstream-secret-key" }}

[[services]]
name = "pass"
path = "/api/pass"
price_sats = 3
sells = "pass"
upstream = "{upstream}"

[[services]]
name = "chat"
path = "/api/chat"
price_sats = 2
sells = "balance"
deposit_units = 5
upstream = "{upstream}"

[[services]]
name = "everything"
path = "/api/*"
price_sats = 1
auth = "off"
upstream = "{upstream}"
"#
        );
        let mut config = GatewayConfig::parse(&text, |_| None).unwrap();
        adjust(&mut config);
        Self::start_in(config, tempfile::tempdir().unwrap()).await
    }

    async fn start_in(config: GatewayConfig, dir: tempfile::TempDir) -> Self {
        let gateway = Gateway::start(&config, dir.path()).await.unwrap();
        let admin = format!("http://{}", gateway.admin_addr().expect("admin listens"));
        let secret = std::fs::read_to_string(dir.path().join("admin_secret")).unwrap();
        Self {
            gateway,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            admin,
            secret,
            config,
            dir,
        }
    }

    /// Stops the gateway and starts it again on the same data dir.
    async fn restart(self) -> Self {
        self.gateway.shutdown().await.unwrap();
        Self::start_in(self.config, self.dir).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.secret, method, path, body).await
    }

    async fn call_as(
        &self,
        secret: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/admin/api{path}", self.admin))
            .bearer_auth(secret);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    /// A 402 for `path`, its invoice paid: the offer and the preimage.
    async fn buy(&self, path: &str) -> (Offer, [u8; 32]) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let offer = Offer::from_headers(response.headers()).unwrap();
        let paid = pay_via(&self.http, &self.url(""), &offer.bolt11)
            .await
            .unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        (offer, preimage)
    }

    /// [`Harness::buy`], the token used once through L402 (200).
    async fn buy_and_use(&self, path: &str) -> (Offer, [u8; 32]) {
        let (offer, preimage) = self.buy(path).await;
        let token = offer.l402_authorization(&preimage).unwrap();
        assert_eq!(self.send(path, &token).await, StatusCode::OK, "{path}");
        (offer, preimage)
    }

    async fn send(&self, path: &str, authorization: &str) -> StatusCode {
        self.http
            .get(self.url(path))
            .header(AUTHORIZATION, authorization)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// The price of the next 402 on `path`, in sats, from its invoice.
    async fn price(&self, path: &str) -> u64 {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED, "{path}");
        let offer = Offer::from_headers(response.headers()).unwrap();
        offer.amount_msat().unwrap() / 1000
    }
}

/// Polls `check` until it holds (payments and counts are written in the
/// background), for up to 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_needs_a_credential_and_names_who_used_it() {
    let h = Harness::start().await;
    // Its address and the local credential are in the data dir, owner only.
    let found: Value =
        serde_json::from_str(&std::fs::read_to_string(h.dir.path().join("admin.json")).unwrap())
            .unwrap();
    assert_eq!(found["url"], json!(h.admin));
    use std::os::unix::fs::PermissionsExt;
    for file in ["admin.json", "admin_secret"] {
        let mode = std::fs::metadata(h.dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Not on the paid listener.
    let response = h
        .http
        .get(h.url("/admin/api/services"))
        .send()
        .await
        .unwrap();
    assert_ne!(response.status(), StatusCode::OK);

    for secret in [None, Some("wrong"), Some(&h.secret[1..])] {
        let mut request = h.http.get(format!("{}/admin/api/services", h.admin));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(WWW_AUTHENTICATE));
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        // A wrong secret is told it is wrong, not that one is required.
        let problem: serde_json::Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        let told = if secret.is_some() {
            "this admin credential is not one the gateway knows"
        } else {
            "an admin credential is required"
        };
        assert!(detail.starts_with(told), "{secret:?}: {detail}");
    }
    let (status, _) = h
        .call_as(
            OPS_SECRET,
            reqwest::Method::POST,
            "/services/weather/disable",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(reqwest::Method::POST, "/services/weather/enable", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let log = h.get("/log").await;
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries[0]["who"], "local");
    assert_eq!(entries[0]["action"], "service.enable");
    assert_eq!(entries[1]["who"], "ops");
    assert_eq!(entries[1]["action"], "service.disable");
    assert_eq!(entries[1]["target"], "weather");

    // The OpenAPI document describes it, without a credential.
    let document: Value = h
        .http
        .get(format!("{}/admin/api/openapi.json", h.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/admin/api/services/{name}"]["patch"].is_object());

    // A login link gives the dashboard's cookie; the cookie reads, and
    // changes only with the dashboard's header.
    let link = h.call(reqwest::Method::POST, "/login-links", None).await.1;
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/admin/login?code=", h.admin)));
    let response = h.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/admin/");
    let set = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let response = h
        .http
        .get(format!("{}/admin/api/services", h.admin))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let disable = format!("{}/admin/api/services/pass/disable", h.admin);
    let response = h
        .http
        .post(&disable)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = h
        .http
        .post(&disable)
        .header(COOKIE, &cookie)
        .header("x-gate402-admin", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A forged or spent code gives nothing.
    let response = h
        .http
        .get(format!("{}/admin/login?code=forged.code", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = h
        .http
        .get(format!("{}/admin/api/services", h.admin))
        .header(COOKIE, "gate402_admin=forged.cookie")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("the dashboard's session has ended"),
        "{problem}"
    );

    // The dashboard's page, script and style come with a strict policy.
    let page = h
        .http
        .get(format!("{}/admin/", h.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("/admin/app.js"));

    // A path parameter that is not text gets a problem body like every
    // other admin error.
    for path in ["/tokens/%00%ff", "/services/%ff", "/sessions/%ff"] {
        let (status, body) = h.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }

    let dir = h.dir.path().to_owned();
    h.gateway.shutdown().await.unwrap();
    assert!(!dir.join("admin.json").exists(), "removed at shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn services_change_at_runtime_with_the_configs_checks() {
    let h = Harness::start().await;
    let services = h.get("/services").await;
    let weather = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "weather")
        .unwrap()
        .clone();
    assert_eq!(weather["price_sats"], 10);
    assert_eq!(weather["source"], "file");
    assert_eq!(weather["table"]["price_sats"], 10);
    // The upstream's key is not shown.
    assert_eq!(weather["table"]["headers"]["x-api-key"], "<redacted>");
    assert!(!services.to_string().contains("upstream-secret-key"));

    // A price change: the next 402 carries it.
    assert_eq!(h.price("/api/weather").await, 10);
    let (status, body) = h
        .call(
            reqwest::Method::PATCH,
            "/services/weather",
            Some(json!({"price_sats": 12})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["price_sats"], 12);
    assert_eq!(body["changed"]["by"], "local");
    assert_eq!(h.price("/api/weather").await, 12);
    // The upstream still gets its key (kept, not redacted, in the change).
    h.buy_and_use("/api/weather").await;
    // A price on a route made free is charged to no one: said, as the
    // file's check says it.
    let (status, body) = h
        .call(
            reqwest::Method::PUT,
            "/services/open",
            Some(json!({"path": "/api/open", "auth": "off", "upstream": "http://127.0.0.1:9"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h
        .call(
            reqwest::Method::PATCH,
            "/services/open",
            Some(json!({"price_sats": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("services.open.auth: \"off\" serves every request free: price_sats = 5 is charged to no one")),
        "{body}"
    );
    let (status, body) = h
        .call(reqwest::Method::DELETE, "/services/open", None)
        .await;
    assert!(status.is_success(), "{body}");

    // The config's checks, with key paths; nothing changes.
    for (patch, expected) in [
        (json!({"price_sats": "lots"}), "services.weather.price_sats"),
        (json!({"sells": "forever"}), "services.weather.sells"),
        (json!({"surprise": 1}), "surprise"),
        (json!({"headers": {"x-api-key": "<redacted>"}}), "x-api-key"),
        (
            json!({"token_lifetime_secs": 9_223_372_036_854_775_808u64}),
            "services.weather.token_lifetime_secs: 9223372036854775808 is more than TOML holds",
        ),
        (
            json!({"methods": ["GET", null]}),
            "services.weather.methods: null inside an array",
        ),
    ] {
        let (status, body) = h
            .call(
                reqwest::Method::PATCH,
                "/services/weather",
                Some(patch.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{patch}: {body}");
        assert!(body.to_string().contains(expected), "{patch}: {body}");
        // Listed as the config's checks list their errors.
        assert!(body["errors"].is_array(), "{patch}: {body}");
    }
    assert_eq!(h.price("/api/weather").await, 12);
    for (method, path, body, expected) in [
        (
            reqwest::Method::PATCH,
            "/services/nothing",
            json!({"price_sats": 1}),
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::PATCH,
            "/services/weather",
            json!([1]),
            StatusCode::BAD_REQUEST,
        ),
        (
            reqwest::Method::PATCH,
            "/services/weather",
            json!({"name": "other"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            reqwest::Method::PUT,
            "/services/news",
            json!({"name": "other"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            reqwest::Method::PUT,
            "/services/news",
            json!({"path": "/api/news"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, answer) = h.call(method.clone(), path, Some(body.clone())).await;
        assert_eq!(status, expected, "{method} {path} {body}: {answer}");
        assert!(answer["detail"].is_string(), "a problem body: {answer}");
    }

    // Disabled: 503, charging nothing, and the catch-all free route does
    // not take its requests.
    let (status, _) = h
        .call(reqwest::Method::POST, "/services/weather/disable", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = h.http.get(h.url("/api/weather")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.text().await.unwrap().contains("disabled"));
    let (status, _) = h
        .call(reqwest::Method::POST, "/services/weather/enable", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.price("/api/weather").await, 12, "enabled with its price");

    // Created at runtime, then deleted (the free catch-all answers again).
    let (status, body) = h
        .call(
            reqwest::Method::PUT,
            "/services/news",
            Some(json!({"path": "/api/news", "price_sats": 4, "upstream": "${NEWS_UPSTREAM}"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an unset variable: {body}"
    );
    assert!(body.to_string().contains("NEWS_UPSTREAM"), "{body}");
    let upstream = upstream().await;
    let (status, body) = h
        .call(
            reqwest::Method::PUT,
            "/services/news",
            Some(json!({"path": "/api/news", "price_sats": 4, "upstream": upstream})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["source"], "admin");
    assert_eq!(h.price("/api/news").await, 4);
    // A route that would hide another (the admin API's own come first) is
    // refused as the file's check refuses it: a catch-all over the file's
    // paid routes, a path moved onto one, an admin route under another.
    for (method, path, body, hidden) in [
        (
            reqwest::Method::PUT,
            "/services/cheap",
            json!({"path": "/api/*", "price_sats": 1, "upstream": upstream}),
            "services.weather.path",
        ),
        (
            reqwest::Method::PATCH,
            "/services/news",
            json!({"path": "/api/weather"}),
            "services.weather.path",
        ),
        (
            reqwest::Method::PUT,
            "/services/later",
            json!({"path": "/api/news", "methods": ["GET"], "price_sats": 50, "upstream": upstream}),
            "services.later.path",
        ),
    ] {
        let (status, answer) = h.call(method.clone(), path, Some(body.clone())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {path}: {answer}"
        );
        let detail = answer["detail"].as_str().unwrap();
        assert!(
            detail.contains(hidden) && detail.contains("is never reached"),
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(h.price("/api/weather").await, 12);
    assert_eq!(h.price("/api/news").await, 4);
    let (status, _) = h
        .call(reqwest::Method::DELETE, "/services/news", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = h.http.get(h.url("/api/news")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the free catch-all");
    let (status, _) = h
        .call(reqwest::Method::DELETE, "/services/news", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A restart keeps the changes: they live in the store.
    let h = h.restart().await;
    assert_eq!(h.price("/api/weather").await, 12);
    assert_eq!(h.get("/services/weather").await["changed"]["by"], "local");
    h.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn paid_traffic_shows_in_payments_and_revenue_and_one_token_is_revoked() {
    let h = Harness::start().await;
    // Three 402s on the weather, two paid (L402, then MPP); a pass bought.
    let (weather, _) = h.buy_and_use("/api/weather").await;
    let (mpp, mpp_preimage) = h.buy("/api/weather").await;
    assert_eq!(
        h.send(
            "/api/weather",
            &mpp.payment_authorization(&mpp_preimage).unwrap()
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(h.price("/api/weather").await, 10);
    let (pass, pass_preimage) = h.buy("/api/pass").await;
    let pass_token = pass.l402_authorization(&pass_preimage).unwrap();
    for _ in 0..3 {
        assert_eq!(h.send("/api/pass", &pass_token).await, StatusCode::OK);
    }

    eventually("four payments and four 402s in the store", || async {
        let payments = h.get("/payments").await;
        let revenue = h.get("/revenue").await;
        payments["payments"].as_array().unwrap().len() == 3
            && revenue["total"]["challenges"] == 4
            && revenue["total"]["served"] == 5
    })
    .await;
    let payments = h.get("/payments").await["payments"].clone();
    let weather_hash = hex::encode(weather.invoice.payment_hash());
    let row = payments
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["payment_hash"] == json!(weather_hash))
        .unwrap();
    assert_eq!(row["service"], "weather");
    assert_eq!(row["scheme"], "L402");
    assert_eq!(row["amount_sats"], 10);
    let by_scheme = h.get("/payments?service=weather&scheme=Payment").await;
    assert_eq!(by_scheme["payments"].as_array().unwrap().len(), 1);
    // As the client spells schemes, and times as operators write them.
    for query in [
        "service=weather&scheme=mpp",
        "service=weather&scheme=payment&since=24h",
        "service=weather&scheme=MPP&since=2020-01-01T00:00:00Z&until=1h",
    ] {
        let (status, found) = h
            .call(reqwest::Method::GET, &format!("/payments?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{query}: {found}");
        let expected = usize::from(!query.contains("until=1h"));
        assert_eq!(
            found["payments"].as_array().unwrap().len(),
            expected,
            "{query}: {found}"
        );
    }
    assert_eq!(
        h.get("/revenue?since=2h").await["total"]["revenue_sats"],
        23
    );
    // Payments made with an MCP paymentId are listed under that scheme.
    let by_id = h.get("/payments?scheme=paymentid").await;
    assert_eq!(by_id["payments"].as_array().unwrap().len(), 0, "{by_id}");
    // Every path the API serves is described.
    let described = h.get("/openapi.json").await.to_string();
    assert!(described.contains("/admin/api/services/{name}/reset"));
    let by_hash = h
        .get(&format!("/payments?payment_hash={weather_hash}"))
        .await;
    assert_eq!(by_hash["payments"].as_array().unwrap().len(), 1);
    // A list cut by its limit says so; one that is whole does not.
    let cut = h.get("/payments?limit=2").await;
    assert_eq!(cut["payments"].as_array().unwrap().len(), 2, "{cut}");
    assert_eq!(cut["more"], true, "{cut}");
    let whole = h.get("/payments?limit=3").await;
    assert_eq!(whole["payments"].as_array().unwrap().len(), 3, "{whole}");
    assert_eq!(whole["more"], false, "{whole}");

    let revenue = h.get("/revenue?by=hour").await;
    assert_eq!(revenue["total"]["revenue_sats"], 23);
    assert_eq!(revenue["total"]["payments"], 3);
    let weather_sums = revenue["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "weather")
        .unwrap();
    assert_eq!(weather_sums["revenue_sats"], 20);
    assert_eq!(weather_sums["challenges"], 3);
    let conversion = weather_sums["conversion"].as_f64().unwrap();
    assert!((conversion - 2.0 / 3.0).abs() < 1e-9, "{conversion}");
    let daily = h.get("/revenue?by=day").await;
    assert_eq!(daily["total"]["revenue_sats"], 23);
    // All time, with no `by`: totals over any span, in buckets of several
    // days past 10,000 of them.
    let all_time = h.get("/revenue?since=0").await;
    assert_eq!(all_time["total"]["revenue_sats"], 23, "{all_time}");
    assert!(
        all_time["bucket_secs"].as_u64().unwrap() > 86_400,
        "{all_time}"
    );
    assert_eq!(all_time["by"], "day", "{all_time}");
    for bad in [
        "/revenue?by=week",
        "/revenue?since=10&until=5",
        "/payments?limit=0",
        "/payments?payment_hash=zz",
        "/payments?bogus=1",
        "/payments?since=yesterday",
        "/payments?scheme=lightning",
        "/revenue?until=24x",
        "/log?limit=0",
        "/log?limit=5000",
    ] {
        let (status, body) = h.call(reqwest::Method::GET, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            !body.to_string().contains("Failed to deserialize"),
            "{bad}: {body}"
        );
    }
    let services = h.get("/services").await;
    let pass_row = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pass")
        .unwrap();
    assert_eq!(pass_row["last_24h"]["payments"], 1);
    assert_eq!(pass_row["last_24h"]["revenue_sats"], 3);

    // One pass token revoked by its macaroon; another pass still works.
    let macaroon = pass_token
        .strip_prefix("L402 ")
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let shown = h.get(&format!("/tokens/{}", urlencode(&macaroon))).await;
    assert_eq!(shown["revoked"], false);
    assert_eq!(shown["payment"]["served"], 3);
    let (other, other_preimage) = h.buy("/api/pass").await;
    let other_token = other.l402_authorization(&other_preimage).unwrap();
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/tokens/{}/revoke", urlencode(&macaroon)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["already"], false);
    assert_eq!(
        h.send("/api/pass", &pass_token).await,
        StatusCode::PAYMENT_REQUIRED
    );
    assert_eq!(h.send("/api/pass", &other_token).await, StatusCode::OK);
    let shown = h
        .get(&format!(
            "/tokens/{}",
            hex::encode(pass.invoice.payment_hash())
        ))
        .await;
    assert_eq!(shown["revoked"], true);
    let (_, again) = h
        .call(
            reqwest::Method::POST,
            &format!(
                "/tokens/{}/revoke",
                hex::encode(pass.invoice.payment_hash())
            ),
            None,
        )
        .await;
    assert_eq!(again["already"], true);
    // Its MPP spelling too: an unused payment revoked is refused at both doors.
    let (unused, unused_preimage) = h.buy("/api/weather").await;
    h.call(
        reqwest::Method::POST,
        &format!(
            "/tokens/{}/revoke",
            hex::encode(unused.invoice.payment_hash())
        ),
        None,
    )
    .await;
    for credential in [
        unused.payment_authorization(&unused_preimage).unwrap(),
        unused.l402_authorization(&unused_preimage).unwrap(),
    ] {
        assert_eq!(
            h.send("/api/weather", &credential).await,
            StatusCode::PAYMENT_REQUIRED
        );
    }
    let (status, _) = h
        .call(reqwest::Method::POST, "/tokens/not-a-token/revoke", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The 16-digit prefix a client prints is told where the whole hash is.
    let (status, problem) = h
        .call(
            reqwest::Method::GET,
            &format!("/tokens/{}", &weather_hash[..16]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("this is 16") && detail.contains("gate402 tokens show"),
        "{detail}"
    );
    // Revocations survive a restart.
    let h = h.restart().await;
    assert_eq!(
        h.send("/api/pass", &pass_token).await,
        StatusCode::PAYMENT_REQUIRED
    );
    assert_eq!(h.send("/api/pass", &other_token).await, StatusCode::OK);
    h.gateway.shutdown().await.unwrap();
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_balance_is_closed_and_refunded_by_the_operator() {
    let h = Harness::start().await;
    // A 10 sat balance (5 units of 2) opened through L402, two requests.
    let (offer, preimage) = h.buy("/api/chat").await;
    let token = offer.l402_authorization(&preimage).unwrap();
    for _ in 0..2 {
        assert_eq!(h.send("/api/chat", &token).await, StatusCode::OK);
    }
    let id = hex::encode(offer.invoice.payment_hash());
    let session = h.get(&format!("/sessions/{id}")).await;
    assert_eq!(session["deposit_msat"], 10_000);
    assert_eq!(session["balance_msat"], 6_000);
    assert_eq!(session["closed"], Value::Null);
    // The books count the balance's requests on its deposit, whose
    // revenue is the whole deposit, once.
    eventually("the balance's two requests on its deposit", || async {
        let payments = h.get(&format!("/payments?payment_hash={id}")).await;
        payments["payments"][0]["served"] == 2
    })
    .await;
    let payments = h.get("/payments").await;
    let rows = payments["payments"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{payments}");
    assert_eq!(rows[0]["amount_msat"], 10_000, "{payments}");
    let revenue = h.get("/revenue").await;
    assert_eq!(revenue["total"]["served"], 2, "{revenue}");
    assert_eq!(revenue["total"]["payments"], 1, "{revenue}");
    // What is owed: the open balances.
    let open = h.get("/sessions").await;
    assert_eq!(
        (open["open"].as_u64(), open["balance_msat"].as_u64()),
        (Some(1), Some(6_000))
    );
    assert_eq!(open["sessions"][0]["id"], id.as_str(), "{open}");
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/sessions/{id}/close"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["refund_sats"], 6);
    // No return invoice was given through L402: nothing could be paid.
    assert_eq!(body["refund_status"], "failed");
    assert_eq!(
        h.send("/api/chat", &token).await,
        StatusCode::PAYMENT_REQUIRED
    );
    let (status, body) = h
        .call(
            reqwest::Method::POST,
            &format!("/sessions/{id}/close"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "closed once: {body}");
    let open = h.get("/sessions").await;
    assert_eq!(
        (open["open"].as_u64(), open["balance_msat"].as_u64()),
        (Some(0), Some(0))
    );
    // Nothing left to spend, what was left is the refund's.
    let session = h.get(&format!("/sessions/{id}")).await;
    assert_eq!(session["balance_msat"], 0, "{session}");
    assert_eq!(session["closed"]["refund_msat"], 6_000, "{session}");
    let (status, _) = h
        .call(
            reqwest::Method::GET,
            &format!("/sessions/{}", "00".repeat(32)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.call(reqwest::Method::GET, "/sessions/xyz", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, problem) = h
        .call(
            reqwest::Method::GET,
            &format!("/sessions/{}", &id[..16]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("this is 16") && detail.contains("gate402 sessions list --json"),
        "{detail}"
    );
    let log = h.get("/log").await;
    assert_eq!(log["entries"][0]["action"], "session.close");
    h.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_view_says_what_the_sandbox_is() {
    let h = Harness::start().await;
    let (offer, _) = h.buy_and_use("/api/weather").await;
    let node = h.get("/node").await;
    assert_eq!(node["backend"], "sandbox");
    assert_eq!(node["network"], "regtest");
    assert_eq!(node["pubkey"].as_str().unwrap().len(), 66);
    assert_eq!(node["liquidity"]["unlimited"], true);
    assert_eq!(
        node["low_inbound"], false,
        "unlimited test money is never low"
    );
    let paid = hex::encode(offer.invoice.payment_hash());
    let invoices = node["recent_invoices"]
        .as_array()
        .expect("the sandbox lists its invoices");
    let listed = invoices
        .iter()
        .find(|i| i["payment_hash"] == json!(paid))
        .unwrap();
    assert_eq!(listed["state"], "settled");
    assert_eq!(listed["amount_msat"], 10_000);
    h.gateway.shutdown().await.unwrap();
}

/// A page of a headless Chromium (the distribution's package, started
/// here), driven over the DevTools protocol.
struct Browser {
    process: std::process::Child,
    page: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        use std::io::BufRead;
        let program = std::env::var("GATE402_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let mut process = std::process::Command::new(&program)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1280,1700",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} (scripts/test installs the chromium package; GATE402_CHROMIUM names another): {e}")
            });
        let stderr = std::io::BufReader::new(process.stderr.take().unwrap());
        let port = stderr
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let rest = line.split("DevTools listening on ws://127.0.0.1:").nth(1)?;
                rest.split('/').next()?.parse::<u16>().ok()
            })
            .expect("chromium says where DevTools listens");
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page")["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .to_owned();
        let (page, _) = tokio_tungstenite::connect_async(page).await.unwrap();
        Self {
            process,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    async fn command(&mut self, method: &str, params: Value) -> Value {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.page.send(Message::text(message)).await.unwrap();
        loop {
            let Some(Ok(Message::Text(text))) = self.page.next().await else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page (one that throws, on
    /// a page still loading, is not), for up to 15 s.
    async fn until(&mut self, expression: &str) {
        for _ in 0..150 {
            let result = self
                .command(
                    "Runtime.evaluate",
                    json!({"expression": expression, "returnByValue": true}),
                )
                .await;
            if result["result"]["value"] == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never made this true: {expression}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_what_the_api_says_and_edits_a_price_in_headless_chromium() {
    let h = Harness::start().await;
    // Paid traffic: two weather payments, a pass used three times, and one
    // 402 left unpaid.
    for _ in 0..2 {
        h.buy_and_use("/api/weather").await;
    }
    let (pass, preimage) = h.buy("/api/pass").await;
    for _ in 0..3 {
        assert_eq!(
            h.send("/api/pass", &pass.l402_authorization(&preimage).unwrap())
                .await,
            StatusCode::OK
        );
    }
    assert_eq!(h.price("/api/weather").await, 10);
    eventually("the traffic counted in the store", || async {
        let revenue = h.get("/revenue").await;
        revenue["total"]["payments"] == 3 && revenue["total"]["challenges"] == 4
    })
    .await;
    let revenue = h.get("/revenue").await;
    let services = h.get("/services").await;

    let link = h.call(reqwest::Method::POST, "/login-links", None).await.1;
    let mut browser = Browser::start().await;
    browser
        .command("Page.navigate", json!({"url": link["url"]}))
        .await;
    browser
        .until("location.pathname === '/admin/' && document.body.dataset.loaded !== undefined")
        .await;

    // The figures shown are the API's.
    let shown = browser
        .eval(
            r#"({
                revenue: document.querySelector('#revenue-total').textContent,
                refunded: document.querySelector('#refunded-total').textContent,
                payments: document.querySelector('#payments-total').textContent,
                challenges: document.querySelector('#challenges-total').textContent,
                conversion: document.querySelector('#conversion-total').textContent,
                inbound: document.querySelector('#inbound').textContent,
                bars: [...document.querySelectorAll('#revenue-chart rect')]
                    .reduce((sum, bar) => sum + Number(bar.dataset.sats), 0),
                rows: Object.fromEntries([...document.querySelectorAll('#services tbody tr')].map(row => [
                    row.dataset.service,
                    {
                        price: row.querySelector('input.price')?.value ?? 'free',
                        payments: row.querySelector('.payments').textContent,
                        revenue: row.querySelector('.revenue').textContent,
                        challenges: row.querySelector('.challenges').textContent,
                        state: row.querySelector('.state').firstChild.textContent,
                    },
                ])),
                recent: [...document.querySelectorAll('#payments tbody tr')].map(row => row.dataset.paymentHash),
            })"#,
        )
        .await;
    assert_eq!(
        shown["revenue"],
        revenue["total"]["revenue_sats"].to_string()
    );
    assert_eq!(shown["revenue"], "23");
    assert_eq!(shown["refunded"], "0");
    assert_eq!(shown["payments"], "3");
    assert_eq!(shown["challenges"], "4");
    assert_eq!(shown["conversion"], "75.0 %");
    assert_eq!(shown["bars"], 23, "the chart's bars add up to the revenue");
    assert_eq!(shown["inbound"], "unlimited");
    for service in services["services"].as_array().unwrap() {
        let name = service["name"].as_str().unwrap();
        let row = &shown["rows"][name];
        let price = if service["auth"] == "off" {
            "free".to_owned()
        } else {
            service["price_sats"].to_string()
        };
        assert_eq!(row["price"], price, "{name}");
        assert_eq!(
            row["payments"],
            service["last_24h"]["payments"].to_string(),
            "{name}"
        );
        assert_eq!(
            row["revenue"],
            service["last_24h"]["revenue_sats"].to_string(),
            "{name}"
        );
        assert_eq!(
            row["challenges"],
            service["last_24h"]["challenges"].to_string(),
            "{name}"
        );
        assert_eq!(row["state"], service["state"], "{name}");
    }
    assert_eq!(shown["rows"]["weather"]["revenue"], "20");
    let api_recent: Vec<Value> = h.get("/payments?limit=20").await["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payment_hash"].clone())
        .collect();
    assert_eq!(shown["recent"], json!(api_recent));

    // A price edited in the page: the next 402 carries it.
    browser
        .eval(
            r#"(() => {
                const row = document.querySelector('#services tr[data-service="weather"]');
                row.querySelector('input.price').value = '13';
                row.querySelector('button.save').click();
                return true;
            })()"#,
        )
        .await;
    browser
        .until("document.querySelector('#status').textContent.includes('price set to 13')")
        .await;
    assert_eq!(h.price("/api/weather").await, 13);
    assert_eq!(
        h.get("/log").await["entries"][0]["action"],
        "service.update"
    );

    // A screenshot, for the README.
    browser
        .until("document.querySelector('#services tr[data-service=\"weather\"] input.price').value === '13'")
        .await;
    let shot = browser
        .command(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )
        .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let path = std::env::var("GATE402_SCREENSHOT").map_or_else(
        |_| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"),
        std::path::PathBuf::from,
    );
    std::fs::write(&path, &png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());

    // Signed out (no cookie), the page says how to sign in.
    browser
        .command("Network.clearBrowserCookies", json!({}))
        .await;
    browser
        .command(
            "Page.navigate",
            json!({"url": format!("{}/admin/", h.admin)}),
        )
        .await;
    browser
        .until("!document.querySelector('#login').hidden")
        .await;
    drop(browser);
    h.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_merge_stay_where_they_were_made_and_hand_back_to_the_file() {
    let h = Harness::start().await;
    // A merge patch: a header added, the upstream's key kept.
    let (status, body) = h
        .call(
            reqwest::Method::PATCH,
            "/services/weather",
            Some(json!({"headers": {"x-extra": "1"}, "price_sats": 11})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["table"]["headers"]["x-api-key"], "<redacted>");
    assert_eq!(body["table"]["headers"]["x-extra"], "<redacted>");
    let (status, body) = h
        .call(
            reqwest::Method::PATCH,
            "/services/weather",
            Some(json!({"headers": {"x-extra": null}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["table"]["headers"].get("x-extra").is_none(), "{body}");
    assert_eq!(body["table"]["headers"]["x-api-key"], "<redacted>");

    // Environment variables only where secrets belong.
    let (status, body) = h
        .call(
            reqwest::Method::PATCH,
            "/services/weather",
            Some(json!({"description": "${HOME}"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("services.weather.description"),
        "{body}"
    );

    // Handed back to the file: its price again; nothing left to reset.
    assert_eq!(h.price("/api/weather").await, 11);
    let (status, _) = h
        .call(reqwest::Method::POST, "/services/weather/reset", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.price("/api/weather").await, 10);
    assert_eq!(h.get("/services/weather").await["changed"], Value::Null);
    let (status, _) = h
        .call(reqwest::Method::POST, "/services/weather/reset", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A deleted file service comes back the same way.
    h.call(reqwest::Method::DELETE, "/services/pass", None)
        .await;
    assert_eq!(
        h.http
            .get(h.url("/api/pass"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (status, _) = h
        .call(reqwest::Method::POST, "/services/pass/reset", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.price("/api/pass").await, 3);

    // A service the API created stays first when the file gains an entry
    // of the same name: that entry is not run, and a warning says so.
    let upstream = upstream().await;
    let (status, _) = h
        .call(
            reqwest::Method::PUT,
            "/services/vip",
            Some(json!({"path": "/api/vip/*", "price_sats": 500, "upstream": upstream})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut config = h.config.clone();
    let with_vip = GatewayConfig::parse(
        &format!(
            "[[services]]\nname = \"vip\"\npath = \"/api/*\"\nprice_sats = 1\nupstream = \"{upstream}\"\n"
        ),
        |_| None,
    )
    .unwrap();
    config.services.insert(0, with_vip.services[0].clone());
    config
        .service_tables
        .insert(0, with_vip.service_tables[0].clone());
    let h = Harness { config, ..h }.restart().await;
    assert_eq!(h.price("/api/vip/x").await, 500);
    assert_eq!(h.price("/api/weather").await, 10, "the file's vip runs not");
    let services = h.get("/services").await;
    let warnings = services["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("\"vip\" is not run")),
        "{warnings:?}"
    );
    h.gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_link_opens_one_dashboard_and_a_cookie_makes_no_links() {
    let h = Harness::start().await;
    let link = h.call(reqwest::Method::POST, "/login-links", None).await.1;
    let url = link["url"].as_str().unwrap();
    let first = h.http.get(url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let again = h.http.get(url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "used once");
    let cookie = first.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let response = h
        .http
        .post(format!("{}/admin/api/login-links", h.admin))
        .header(COOKIE, &cookie)
        .header("x-gate402-admin", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Problems everywhere: a second close, an unknown scheme.
    let (status, body) = h
        .call(reqwest::Method::GET, "/payments?scheme=bogus", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    h.gateway.shutdown().await.unwrap();
}

/// A reload names each change it leaves for a restart, and applies the
/// rest: here the admin listener's address and sync period, and tools on
/// a gateway that started without an MCP server.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_names_what_waits_for_a_restart() {
    let h = Harness::start().await;
    let mut config = h.config.clone();
    config.admin.listen = "127.0.0.1:1".into();
    config.admin.sync_secs = 5;
    config.admin.low_inbound_sats = 12_345;
    config.tools.push(weather_tool("weather"));
    let later = h.gateway.reloader().reload(&config).unwrap();
    assert_eq!(later.len(), 3, "{later:?}");
    assert!(later[0].starts_with("admin.listen: still"), "{later:?}");
    assert!(
        later[1].starts_with("admin.sync_secs: still 1"),
        "{later:?}"
    );
    assert!(later[2].starts_with("tools: none are sold"), "{later:?}");
    assert_eq!(h.get("/node").await["low_inbound_sats"], 12_345);

    // Turning the admin API off and moving it: both wait, both are named.
    let mut moved = h.config.clone();
    moved.admin.enabled = false;
    moved.admin.listen = "127.0.0.1:2".into();
    let later = h.gateway.reloader().reload(&moved).unwrap();
    assert!(later[0].starts_with("admin.enabled: true"), "{later:?}");
    assert!(later[1].starts_with("admin.listen: still"), "{later:?}");

    // A service the admin API changed keeps its change over the file's
    // table, and the reload says so (a new price in the file did nothing,
    // without a word).
    let (status, _) = h
        .call(
            reqwest::Method::PATCH,
            "/services/weather",
            Some(json!({"price_sats": 3})),
        )
        .await;
    assert!(status.is_success(), "{status}");
    let later = h.gateway.reloader().reload(&h.config).unwrap();
    assert!(
        later
            .iter()
            .any(|l| l.starts_with("services.weather: the admin API's changes stay on top")),
        "{later:?}"
    );

    // A file caught half-written names no service: it is not applied.
    let mut emptied = h.config.clone();
    emptied.services.clear();
    emptied.tools.clear();
    let refused = h.gateway.reloader().reload(&emptied).unwrap_err();
    assert!(
        refused.to_string().contains("names no [[services]]"),
        "{refused}"
    );
    assert!(
        !h.gateway.services_handle().running().is_empty(),
        "the running services stay"
    );
    h.gateway.shutdown().await.unwrap();
}

/// A call of an MCP tool, booked under the tool's own name (its payments
/// are bound to it), is counted in its service's row of the services
/// view: the rows add up to the totals.
#[tokio::test(flavor = "multi_thread")]
async fn a_tools_calls_are_counted_in_its_services_row() {
    let h = Harness::start_adjusted(|config| config.tools.push(weather_tool("forecast"))).await;
    let call = gate402_store::PaymentRecord {
        payment_hash: [0xab; 32],
        service: "mcp/forecast".into(),
        scheme: "Payment".into(),
        amount_msat: 10_000,
        at: gate402_paywall::unix_now(),
        served: 1,
    };
    let store = h.gateway.paywall().store();
    assert!(store.record_payment(&call).await.unwrap());
    let services = h.get("/services").await;
    let row = |name: &str| {
        services["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["last_24h"]
            .clone()
    };
    assert_eq!(row("weather")["payments"], 1, "{services}");
    assert_eq!(row("weather")["revenue_sats"], 10, "{services}");
    assert_eq!(row("pass")["payments"], 0, "{services}");
    let revenue = h.get("/revenue").await;
    assert_eq!(revenue["total"]["revenue_sats"], 10, "{revenue}");
    h.gateway.shutdown().await.unwrap();
}

/// A tool `name` calling the service `weather`.
fn weather_tool(name: &str) -> gate402_gateway::config::ToolConfig {
    gate402_gateway::config::ToolConfig {
        name: name.into(),
        description: "The weather".into(),
        service: "weather".into(),
        method: None,
        path: None,
        input_schema: json!({"type": "object"}),
        price_sats: None,
    }
}
