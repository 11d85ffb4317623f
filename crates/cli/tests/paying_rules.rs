//! What `gate402 get` pays, to whom, and with which credential where:
//! challenges read as the official SDKs read them, expired ones refused
//! before paying, mixed-case invoices refused, tokens kept for what they
//! buy, redirects paid by the origin that asks, a request's own
//! `Authorization` kept when the challenge names `Payment-Authorization`,
//! and x402 offers paid where nothing else is offered, once checked
//! against their invoice.

mod common;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_l402::{mint, L402Challenge, Scheme};
use gate402_mpp::lightning::{ChargeRequest, Network};
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use serde_json::{json, Value};

use common::{gate402, payments};

/// A stub origin: it issues invoices of its own, pays them from its
/// `/sandbox/pay` as the sandbox does, and notes every credential it sees.
#[derive(Clone, Default)]
struct Origin {
    next: Arc<AtomicU8>,
    /// Payment hash → preimage, of every invoice issued.
    issued: Arc<Mutex<HashMap<[u8; 32], [u8; 32]>>>,
    /// Payment hashes paid through `/sandbox/pay`.
    paid: Arc<Mutex<Vec<[u8; 32]>>>,
    /// Challenge id → the `request` and `opaque` it was sent with.
    challenges: Arc<Mutex<HashMap<String, Sent>>>,
    /// `(path, Authorization, Payment-Authorization)` of every request.
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A challenge's `request` and `opaque`, as sent.
type Sent = (String, Option<String>);

/// A request's path, `Authorization` and `Payment-Authorization`.
type Seen = (String, Option<String>, Option<String>);

/// How a stub route's Payment challenge is written.
#[derive(Clone, Copy)]
struct Charge {
    encode: fn(&[u8]) -> String,
    /// `expires`, or `None` for ten minutes from now.
    expires: Option<&'static str>,
    invoice_expiry_secs: u64,
    /// `request` as sent, instead of the encoded charge.
    raw_request: Option<&'static str>,
    header: Option<&'static str>,
}

impl Default for Charge {
    fn default() -> Self {
        Self {
            encode: |b| URL_SAFE_NO_PAD.encode(b),
            expires: None,
            invoice_expiry_secs: 600,
            raw_request: None,
            header: None,
        }
    }
}

fn signed_invoice(preimage: [u8; 32], amount_msat: u64, expiry_secs: u64) -> String {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x33; 32]).unwrap();
    InvoiceBuilder::new(Currency::Regtest)
        .description("stub".into())
        .payment_hash(sha256::Hash::hash(&preimage))
        .payment_secret(PaymentSecret([1; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(18)
        .amount_milli_satoshis(amount_msat)
        .expiry_time(Duration::from_secs(expiry_secs))
        .build_signed(|h| secp.sign_ecdsa_recoverable(h, &key))
        .unwrap()
        .to_string()
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Origin {
    /// A new invoice of `sats`: its text and payment hash.
    fn invoice(&self, sats: u64, expiry_secs: u64) -> (String, [u8; 32]) {
        let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let preimage = [n; 32];
        let hash = sha256::Hash::hash(&preimage).to_byte_array();
        self.issued.lock().unwrap().insert(hash, preimage);
        (signed_invoice(preimage, sats * 1000, expiry_secs), hash)
    }

    fn note(&self, path: &str, headers: &HeaderMap) {
        self.seen.lock().unwrap().push((
            path.to_owned(),
            text(headers, "authorization"),
            text(headers, "payment-authorization"),
        ));
    }

    /// Whether `value` (`L402 <mac>:<preimage>` or `Payment <credential>`)
    /// proves payment of one of this origin's invoices.
    fn proves_payment(&self, value: &str) -> Result<(), String> {
        let preimage_hex = if let Some(l402) = value.strip_prefix("L402 ") {
            l402.rsplit(':').next().unwrap_or_default().to_owned()
        } else {
            let credential =
                gate402_mpp::credential::parse_authorization(value).map_err(|e| e.to_string())?;
            let echo = &credential.challenge;
            let (request, opaque) = self
                .challenges
                .lock()
                .unwrap()
                .get(&echo.id)
                .cloned()
                .ok_or("unknown challenge")?;
            if echo.request.raw() != request {
                return Err(format!(
                    "request echoed as {:?}, sent as {request:?}",
                    echo.request.raw()
                ));
            }
            if echo.opaque.as_ref().map(|o| o.raw().to_owned()) != opaque {
                return Err("opaque not echoed as sent".into());
            }
            credential.payload["preimage"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&preimage_hex, &mut preimage).map_err(|e| e.to_string())?;
        let hash = sha256::Hash::hash(&preimage).to_byte_array();
        if self.paid.lock().unwrap().contains(&hash) {
            Ok(())
        } else {
            Err("not paid".into())
        }
    }

    /// A 402 with a Payment-only challenge written as `charge` says.
    fn payment_402(&self, sats: u64, charge: Charge) -> Response {
        let (invoice, hash) = self.invoice(sats, charge.invoice_expiry_secs);
        let id = hex::encode(hash);
        let request = match charge.raw_request {
            Some(raw) => raw.to_owned(),
            None => {
                // A description that makes the standard alphabet differ
                // from the URL-safe one, and the text need padding.
                let json = (0..)
                    .map(|n| {
                        let value = ChargeRequest::new(
                            sats,
                            Some(format!("stub \u{fbff}{}", "~".repeat(n))),
                            invoice.clone(),
                            &hash,
                            Network::Regtest,
                        );
                        serde_json::to_vec(&value).unwrap()
                    })
                    .find(|json| {
                        let standard = STANDARD.encode(json);
                        standard.ends_with('=') && standard.contains(['+', '/'])
                    })
                    .unwrap();
                (charge.encode)(&json)
            }
        };
        let opaque = (charge.encode)(br#"{"order":"7?"}"#);
        let expires = charge.expires.map(str::to_owned).unwrap_or_else(|| {
            gate402_mpp::format_time(time::OffsetDateTime::now_utc() + time::Duration::minutes(10))
        });
        let mut params = vec![
            ("id", id.as_str()),
            ("realm", "stub"),
            ("method", "lightning"),
            ("intent", "charge"),
            ("request", request.as_str()),
            ("expires", expires.as_str()),
            ("opaque", opaque.as_str()),
        ];
        if let Some(header) = charge.header {
            params.push(("header", header));
        }
        self.challenges
            .lock()
            .unwrap()
            .insert(id.clone(), (request.clone(), Some(opaque.clone())));
        let challenge = gate402_http_auth::format_challenge("Payment", params).unwrap();
        (
            StatusCode::PAYMENT_REQUIRED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response()
    }

    /// Whether `value`, a `payment-signature`, presents one of this
    /// origin's invoices that was paid.
    fn proves_x402(&self, value: &str) -> Result<(), String> {
        let payment = gate402_x402::parse_signature(value).map_err(|e| e.to_string())?;
        let invoice =
            gate402_bolt11::Invoice::parse(&payment.payload.invoice).map_err(|e| e.to_string())?;
        if self.paid.lock().unwrap().contains(&invoice.payment_hash()) {
            Ok(())
        } else {
            Err("not paid".into())
        }
    }

    /// A 402 with x402's `PAYMENT-REQUIRED` alone, offering an invoice of
    /// `sats` as gate402's gateway does; `edit` changes the offer's JSON
    /// before it is sent.
    fn x402_402(&self, sats: u64, edit: fn(&mut Value)) -> Response {
        let (invoice, _) = self.invoice(sats, 600);
        let valid_until = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let mut offer = json!({
            "x402Version": 2,
            "resource": {"url": "/stub"},
            "accepts": [{
                "scheme": "exact",
                "network": "lightning",
                "amount": (sats * 1000).to_string(),
                "asset": "BTC",
                "payTo": "02".repeat(33),
                "maxTimeoutSeconds": 600,
                "extra": {
                    "paymentMethod": "lightning",
                    "invoice": invoice,
                    "network": "regtest",
                    "validUntil": valid_until,
                    "binding": "stub",
                },
            }],
        });
        edit(&mut offer);
        (
            StatusCode::PAYMENT_REQUIRED,
            [("payment-required", gate402_x402::encode(&offer))],
        )
            .into_response()
    }

    /// A 402 with an L402 challenge.
    fn l402_402(&self, sats: u64) -> Response {
        let (invoice, hash) = self.invoice(sats, 600);
        let challenge = L402Challenge {
            macaroon: mint(hash, "lsat", &[]).macaroon,
            invoice,
        }
        .to_header(Scheme::L402);
        (
            StatusCode::PAYMENT_REQUIRED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response()
    }

    /// A route that serves `served` to a paid request, and otherwise
    /// answers with `ask`.
    fn paid_route(
        &self,
        path: &'static str,
        served: &'static str,
        ask: impl Fn(&Origin) -> Response + Clone + Send + Sync + 'static,
    ) -> MethodRouter {
        let origin = self.clone();
        get(move |headers: HeaderMap| {
            let origin = origin.clone();
            let ask = ask.clone();
            async move {
                origin.note(path, &headers);
                if let Some(signature) = text(&headers, "payment-signature") {
                    return match origin.proves_x402(&signature) {
                        Ok(()) => (StatusCode::OK, served).into_response(),
                        Err(why) => (StatusCode::UNAUTHORIZED, why).into_response(),
                    };
                }
                let credential = text(&headers, "payment-authorization")
                    .or_else(|| text(&headers, "authorization"))
                    .filter(|v| v.starts_with("L402 ") || v.starts_with("Payment "));
                match credential.map(|c| origin.proves_payment(&c)) {
                    Some(Ok(())) => (StatusCode::OK, served).into_response(),
                    Some(Err(why)) => (StatusCode::UNAUTHORIZED, why).into_response(),
                    None => ask(&origin),
                }
            }
        })
    }

    /// Its `/sandbox/pay`, and `routes`, on a loopback port: the base URL
    /// (with `host` as the host).
    async fn serve(&self, host: &str, routes: Router) -> String {
        let origin = self.clone();
        let pay = post(move |Json(body): Json<Value>| {
            let origin = origin.clone();
            async move {
                let invoice =
                    gate402_bolt11::Invoice::parse(body["invoice"].as_str().unwrap()).unwrap();
                let hash = invoice.payment_hash();
                let Some(preimage) = origin.issued.lock().unwrap().get(&hash).copied() else {
                    return (
                        StatusCode::NOT_FOUND,
                        Json(json!({"detail": "not an invoice of this origin"})),
                    );
                };
                origin.paid.lock().unwrap().push(hash);
                (
                    StatusCode::OK,
                    Json(json!({
                        "preimage": hex::encode(preimage),
                        "amount_msat": invoice.amount_msat(),
                    })),
                )
            }
        });
        let app = routes.route("/sandbox/pay", pay);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(axum::serve(listener, app).into_future());
        format!("http://{host}:{port}")
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn payment_challenges_are_read_as_the_official_sdks_read_them() {
    let origin = Origin::default();
    let charge = |encode: fn(&[u8]) -> String| {
        move |o: &Origin| {
            o.payment_402(
                2,
                Charge {
                    encode,
                    ..Charge::default()
                },
            )
        }
    };
    let routes = Router::new()
        .route(
            "/standard-padded",
            origin.paid_route("/standard-padded", "paid", charge(|b| STANDARD.encode(b))),
        )
        .route(
            "/url-safe-padded",
            origin.paid_route("/url-safe-padded", "paid", charge(|b| URL_SAFE.encode(b))),
        )
        .route(
            "/standard-unpadded",
            origin.paid_route(
                "/standard-unpadded",
                "paid",
                charge(|b| STANDARD.encode(b).trim_end_matches('=').to_owned()),
            ),
        );
    let base = origin.serve("127.0.0.1", routes).await;
    let client = tempfile::tempdir().unwrap();
    for path in ["/standard-padded", "/url-safe-padded", "/standard-unpadded"] {
        let out = gate402(client.path(), &["get", "-s", &format!("{base}{path}")]).await;
        assert!(out.status.success(), "{path}: {}", stderr(&out));
        // The stub serves only a credential that echoes `request` and
        // `opaque` exactly as they were sent.
        assert_eq!(String::from_utf8_lossy(&out.stdout), "paid", "{path}");
    }
    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    assert!(ledger
        .iter()
        .all(|p| p["status"] == "paid" && p["scheme"] == "Payment"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_challenge_is_refused_naming_its_parameter_once() {
    let origin = Origin::default();
    let routes = Router::new()
        .route(
            "/not-base64",
            origin.paid_route("/not-base64", "paid", |o| {
                o.payment_402(
                    2,
                    Charge {
                        raw_request: Some("%%%"),
                        ..Charge::default()
                    },
                )
            }),
        )
        .route(
            "/odd-header",
            origin.paid_route("/odd-header", "paid", |o| {
                o.payment_402(
                    2,
                    Charge {
                        header: Some("X-Pay"),
                        ..Charge::default()
                    },
                )
            }),
        );
    let base = origin.serve("127.0.0.1", routes).await;
    let client = tempfile::tempdir().unwrap();
    for (path, reason) in [
        ("/not-base64", "Payment challenge parameter request: not base64"),
        (
            "/odd-header",
            "Payment challenge parameter header: \"X-Pay\" is neither Authorization nor Payment-Authorization",
        ),
    ] {
        let out = gate402(client.path(), &["get", &format!("{base}{path}")]).await;
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{path}: {stderr}");
        assert_eq!(stderr.matches(reason).count(), 1, "{path}: {stderr}");
        assert_eq!(
            stderr.matches("L402 or Lightning Payment challenge").count(),
            1,
            "{path}: {stderr}"
        );
    }
    assert!(payments(client.path()).await.is_empty());
    assert!(origin.paid.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_or_unreadable_expires_is_refused_before_paying() {
    let origin = Origin::default();
    let charge = |expires: Option<&'static str>, invoice_expiry_secs: u64| {
        move |o: &Origin| {
            o.payment_402(
                2,
                Charge {
                    expires,
                    invoice_expiry_secs,
                    ..Charge::default()
                },
            )
        }
    };
    let routes = Router::new()
        .route(
            "/past",
            origin.paid_route("/past", "paid", charge(Some("2020-01-01T00:00:00Z"), 600)),
        )
        .route(
            "/unreadable",
            origin.paid_route("/unreadable", "paid", charge(Some("in a minute"), 600)),
        )
        // The challenge runs for years, its invoice for one second.
        .route(
            "/invoice-first",
            origin.paid_route(
                "/invoice-first",
                "paid",
                charge(Some("2099-01-01T00:00:00Z"), 1),
            ),
        );
    let base = origin.serve("127.0.0.1", routes).await;
    let client = tempfile::tempdir().unwrap();
    let invoice_first = format!("{base}/invoice-first");
    for (url, needle) in [
        (
            format!("{base}/past"),
            "refused: the Payment challenge expired at 2020-01-01T00:00:00Z",
        ),
        (
            format!("{base}/unreadable"),
            "refused: the Payment challenge says it expires at \"in a minute\", which is not a time; taken as expired",
        ),
    ] {
        let out = gate402(client.path(), &["get", &url]).await;
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(6), "{url}: {stderr}");
        assert!(stderr.contains(needle), "{url}: {stderr}");
    }
    // The earlier of the two decides, and is the one named.
    let out = gate402_slow_402(client.path(), &invoice_first).await;
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("refused: the invoice expired at"),
        "{stderr}"
    );
    assert!(payments(client.path()).await.is_empty(), "nothing booked");
    assert!(origin.paid.lock().unwrap().is_empty(), "nothing paid");
}

/// `gate402 get URL` once the invoice of the 402 it gets has expired: the
/// stub's invoices there last a second, so the test waits past it first
/// by asking through a proxy that holds the 402 back.
async fn gate402_slow_402(data: &std::path::Path, url: &str) -> std::process::Output {
    let upstream = url.to_owned();
    let held = get(move || {
        let upstream = upstream.clone();
        async move {
            let answer = reqwest::get(&upstream).await.unwrap();
            let challenge = answer.headers()[header::WWW_AUTHENTICATE].clone();
            tokio::time::sleep(Duration::from_millis(2_100)).await;
            (
                StatusCode::PAYMENT_REQUIRED,
                [(header::WWW_AUTHENTICATE, challenge)],
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, Router::new().route("/held", held)).into_future());
    gate402(data, &["get", &format!("{base}/held")]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_case_invoices_are_refused_by_decode_and_sandbox_pay() {
    let (gateway, base, _upstream) = demo_gateway().await;
    let answer = reqwest::get(format!("{base}/api/weather")).await.unwrap();
    let offer = gate402_client::Offer::from_headers(answer.headers()).unwrap();
    let invoice = offer.bolt11.clone();
    assert!(invoice.starts_with("lnbcrt"), "{invoice}");
    // Five letters of the data part upper-cased.
    let mut mixed: Vec<char> = invoice.chars().collect();
    let letters: Vec<usize> = (12..mixed.len())
        .filter(|&i| mixed[i].is_ascii_lowercase())
        .take(5)
        .collect();
    for i in letters {
        mixed[i] = mixed[i].to_ascii_uppercase();
    }
    let mixed: String = mixed.into_iter().collect();
    let dir = tempfile::tempdir().unwrap();

    let out = gate402(dir.path(), &["decode", &mixed]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("mixed case"), "{}", stderr(&out));
    let out = gate402(dir.path(), &["sandbox", "pay", "--url", &base, &mixed]).await;
    assert!(!out.status.success(), "paid a mixed-case invoice");
    assert!(stderr(&out).contains("mixed case"), "{}", stderr(&out));

    // All uppercase is an invoice; and it was not paid before.
    let upper = invoice.to_uppercase();
    let out = gate402(dir.path(), &["decode", &upper]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = gate402(dir.path(), &["sandbox", "pay", "--url", &base, &upper]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    gateway.shutdown().await.unwrap();
}

async fn demo_gateway() -> (Gateway, String, tokio::task::JoinHandle<()>) {
    let (upstream, task) = gate402_gateway::demo::start_upstream().await.unwrap();
    let config = gate402_gateway::demo::config(upstream);
    let dir = tempfile::tempdir().unwrap().keep();
    let gateway = Gateway::start(&config, &dir).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    (gateway, base, task)
}

/// A gateway (sandbox backend) with `services` (TOML `[[services]]`
/// tables, `UPSTREAM` standing for the upstream's URL) in front of
/// `upstream`.
async fn gateway_with(services: &str, upstream: Router) -> (Gateway, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, upstream).into_future());
    let mut config = GatewayConfig::parse(&services.replace("UPSTREAM", &up), |_| None).unwrap();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let dir = tempfile::tempdir().unwrap().keep();
    let gateway = Gateway::start(&config, &dir).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    (gateway, base)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_kept_for_what_they_buy() {
    let upstream = Router::new()
        .route(
            "/thing",
            get(|| async { "read" }).post(|| async { "written" }),
        )
        .route("/docs/{*page}", get(|| async { "docs" }));
    let (gateway, base) = gateway_with(
        r#"
[[services]]
name = "read"
path = "/thing"
methods = ["GET"]
upstream = "UPSTREAM"
price_sats = 5
sells = "pass"
[[services]]
name = "write"
path = "/thing"
methods = ["POST"]
upstream = "UPSTREAM"
price_sats = 7
sells = "pass"
[[services]]
name = "docs"
path = "/docs/*"
methods = ["GET"]
upstream = "UPSTREAM"
price_sats = 3
sells = "pass"
"#,
        upstream,
    )
    .await;
    let client = tempfile::tempdir().unwrap();
    let thing = format!("{base}/thing");
    for (method, expected) in [
        ("get", "read"),
        ("post", "written"),
        ("get", "read"),
        ("post", "written"),
        ("get", "read"),
    ] {
        let out = gate402(client.path(), &[method, "-s", &thing]).await;
        assert!(out.status.success(), "{method}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
    let ledger = payments(client.path()).await;
    let total: u64 = ledger
        .iter()
        .map(|p| p["amount_msat"].as_u64().unwrap())
        .sum();
    assert_eq!(
        (ledger.len(), total),
        (2, 12_000),
        "one token for GET, one for POST: {ledger:?}"
    );
    // A token of a prefix service buys each of its paths.
    for page in ["a", "b", "a"] {
        let out = gate402(
            client.path(),
            &["get", "-s", &format!("{base}/docs/{page}")],
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "docs");
    }
    assert_eq!(payments(client.path()).await.len(), 3);
    let tokens = gate402(client.path(), &["tokens", "list"]).await;
    let listed = String::from_utf8_lossy(&tokens.stdout).into_owned();
    assert!(listed.contains(&format!("GET {base}/thing")), "{listed}");
    assert!(listed.contains(&format!("POST {base}/thing")), "{listed}");
    assert!(listed.contains(&format!("GET {base}/docs/b")), "{listed}");
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_target_is_paid_by_and_booked_under_its_own_origin() {
    let first = Origin::default();
    let second = Origin::default();
    let second_base = second
        .serve(
            "localhost",
            Router::new().route(
                "/paid",
                second.paid_route("/paid", "served", |o| o.l402_402(3)),
            ),
        )
        .await;
    let target = format!("{second_base}/paid");
    let first_base = first
        .serve(
            "127.0.0.1",
            Router::new().route(
                "/go",
                get({
                    let first = first.clone();
                    move |headers: HeaderMap| async move {
                        first.note("/go", &headers);
                        (StatusCode::FOUND, [(header::LOCATION, target)])
                    }
                }),
            ),
        )
        .await;
    let client = tempfile::tempdir().unwrap();
    // A budget the first host's payments would break at once.
    std::fs::write(
        client.path().join("client.toml"),
        "[budget.domains.\"127.0.0.1\"]\nper_day_sats = 1\n",
    )
    .unwrap();
    let go = format!("{first_base}/go");
    for _ in 0..2 {
        let out = gate402(
            client.path(),
            &["get", "-s", "-L", "-H", "Authorization: Bearer k", &go],
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "served");
    }
    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 1, "the second run used the token: {ledger:?}");
    assert_eq!(ledger[0]["host"], "localhost");
    assert_eq!(ledger[0]["origin"], second_base);
    assert_eq!(ledger[0]["url"], format!("{second_base}/paid"));
    assert_eq!(second.paid.lock().unwrap().len(), 1);
    assert!(first.paid.lock().unwrap().is_empty());
    // The first origin saw the user's key and nothing else; the second
    // never saw it.
    for (_, authorization, payment) in first.seen.lock().unwrap().iter() {
        assert_eq!(authorization.as_deref(), Some("Bearer k"));
        assert!(payment.is_none());
    }
    for (_, authorization, _) in second.seen.lock().unwrap().iter() {
        assert!(
            authorization
                .as_deref()
                .is_none_or(|a| a.starts_with("L402 ")),
            "{authorization:?}"
        );
    }
    // A per-domain budget applies to the origin that asks.
    let capped = tempfile::tempdir().unwrap();
    std::fs::write(
        capped.path().join("client.toml"),
        "[budget.domains.\"localhost\"]\nper_day_sats = 1\n",
    )
    .unwrap();
    let out = gate402(capped.path(), &["get", "-L", &go]).await;
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("per-day budget for localhost"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_never_follows_a_redirect_to_another_origin() {
    let first = Origin::default();
    let second = Origin::default();
    let second_base = second
        .serve(
            "localhost",
            Router::new().route(
                "/landing",
                get({
                    let second = second.clone();
                    move |headers: HeaderMap| async move {
                        second.note("/landing", &headers);
                        "landed"
                    }
                }),
            ),
        )
        .await;
    let landing = format!("{second_base}/landing");
    // Paid requests are sent on with a 307, which keeps the request as it is.
    let moved = {
        let first = first.clone();
        get(move |headers: HeaderMap| {
            let first = first.clone();
            let landing = landing.clone();
            async move {
                first.note("/moved", &headers);
                let credential = text(&headers, "payment-authorization")
                    .or_else(|| text(&headers, "authorization"))
                    .filter(|v| v.starts_with("Payment "));
                match credential.map(|c| first.proves_payment(&c)) {
                    Some(Ok(())) => (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::LOCATION, landing)],
                    )
                        .into_response(),
                    _ => first.payment_402(
                        2,
                        Charge {
                            header: text(&headers, "authorization")
                                .map(|_| "Payment-Authorization"),
                            ..Charge::default()
                        },
                    ),
                }
            }
        })
    };
    let first_base = first
        .serve("127.0.0.1", Router::new().route("/moved", moved))
        .await;
    let client = tempfile::tempdir().unwrap();
    for own in [None, Some("Authorization: Bearer k")] {
        let mut args = vec!["get", "-s", "-L"];
        args.extend(own.iter().flat_map(|h| ["-H", *h]));
        let url = format!("{first_base}/moved");
        args.push(&url);
        let out = gate402(client.path(), &args).await;
        assert!(out.status.success(), "{own:?}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "landed");
    }
    let seen = second.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for (_, authorization, payment) in seen {
        assert!(authorization.is_none(), "{authorization:?}");
        assert!(payment.is_none(), "{payment:?}");
    }
    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 2);
    assert!(ledger.iter().all(|p| p["host"] == "127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_in_authorization_reaches_the_upstream_and_the_credential_goes_in_payment_authorization(
) {
    let upstream = Router::new().route(
        "/keyed",
        get(|headers: HeaderMap| async move {
            match text(&headers, "authorization") {
                Some(key) if key == "Bearer k" => (StatusCode::OK, key),
                other => (StatusCode::UNAUTHORIZED, format!("{other:?}")),
            }
        }),
    );
    let (gateway, base) = gateway_with(
        r#"
[[services]]
name = "keyed"
path = "/keyed"
upstream = "UPSTREAM"
price_sats = 4
"#,
        upstream,
    )
    .await;
    let client = tempfile::tempdir().unwrap();
    let url = format!("{base}/keyed");
    for prefer in [None, Some("mpp"), Some("l402")] {
        let mut args = vec!["get", "-s", "-H", "Authorization: Bearer k"];
        args.extend(prefer.iter().flat_map(|p| ["--prefer", *p]));
        args.push(&url);
        let out = gate402(client.path(), &args).await;
        assert!(out.status.success(), "{prefer:?}: {}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Bearer k",
            "{prefer:?}"
        );
    }
    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    assert!(
        ledger.iter().all(|p| p["scheme"] == "Payment"),
        "{ledger:?}"
    );
    gateway.shutdown().await.unwrap();

    // Where only L402 is offered, its token takes Authorization's place
    // whether bought now or before: it is bought once.
    let origin = Origin::default();
    let base = origin
        .serve(
            "127.0.0.1",
            Router::new().route(
                "/l402",
                origin.paid_route("/l402", "served", |o| o.l402_402(2)),
            ),
        )
        .await;
    let client = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = gate402(
            client.path(),
            &[
                "get",
                "-s",
                "-H",
                "Authorization: Bearer k",
                &format!("{base}/l402"),
            ],
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "served");
    }
    assert_eq!(payments(client.path()).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_x402_only_route_is_paid_once_through_x402() {
    let (gateway, base, _upstream) = demo_gateway().await;
    let client = tempfile::tempdir().unwrap();
    let url = format!("{base}/api/x402/weather?city=Oslo");
    let out = gate402(client.path(), &["get", "--no-pay", &url]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offer["schemes"], json!(["x402"]));
    assert_eq!(offer["price_sats"], 10);

    let out = gate402(client.path(), &["get", "--json", &url]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], 200, "{report}");
    let body: Value = serde_json::from_str(report["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["city"], "Oslo");
    assert_eq!(report["payment"]["scheme"], "x402");
    // The gateway's answer to an x402 payment names what was paid.
    let answered = STANDARD
        .decode(report["headers"]["payment-response"].as_str().unwrap())
        .unwrap();
    let answered: Value = serde_json::from_slice(&answered).unwrap();
    assert_eq!(answered["success"], true);
    assert_eq!(answered["transaction"], report["payment"]["payment_hash"]);

    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 1, "paid once: {ledger:?}");
    assert_eq!(ledger[0]["scheme"], "x402");
    assert_eq!(ledger[0]["amount_msat"], 10_000);
    assert_eq!(ledger[0]["status"], "paid");
    assert!(ledger[0]["receipt"].is_string(), "{ledger:?}");

    // Where L402 and MPP are offered too, one of them is answered, unless
    // x402 is asked for.
    let every_door = format!("{base}/api/weather?city=Oslo");
    for prefer in [None, Some("x402")] {
        let mut args = vec!["get", "-s"];
        args.extend(prefer.iter().flat_map(|p| ["--prefer", *p]));
        args.push(&every_door);
        let out = gate402(client.path(), &args).await;
        assert!(out.status.success(), "{prefer:?}: {}", stderr(&out));
    }
    let ledger = payments(client.path()).await;
    let schemes: Vec<_> = ledger.iter().map(|p| p["scheme"].clone()).collect();
    assert_eq!(schemes, [json!("x402"), json!("L402"), json!("x402")]);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_x402_offer_that_disagrees_with_its_invoice_or_has_ended_is_refused_before_paying() {
    let origin = Origin::default();
    let routes = Router::new()
        .route(
            "/x402",
            origin.paid_route("/x402", "paid", |o| o.x402_402(2, |_| {})),
        )
        .route(
            "/cheaper",
            origin.paid_route("/cheaper", "paid", |o| {
                o.x402_402(2, |offer| offer["accepts"][0]["amount"] = "1000".into())
            }),
        )
        .route(
            "/other-network",
            origin.paid_route("/other-network", "paid", |o| {
                o.x402_402(2, |offer| {
                    offer["accepts"][0]["extra"]["network"] = "mainnet".into()
                })
            }),
        )
        .route(
            "/ended",
            origin.paid_route("/ended", "paid", |o| {
                o.x402_402(2, |offer| {
                    offer["accepts"][0]["extra"]["validUntil"] = 1_600_000_000.into()
                })
            }),
        );
    let base = origin.serve("127.0.0.1", routes).await;
    let client = tempfile::tempdir().unwrap();
    // The offer as it should be is paid: the refusals below are the
    // offers' own.
    let out = gate402(client.path(), &["get", "-s", &format!("{base}/x402")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "paid");
    for (path, code, needle) in [
        (
            "/cheaper",
            1,
            "the x402 offer: invoice is for 2000 msat, expected 1000 msat",
        ),
        (
            "/other-network",
            1,
            "the x402 offer: invoice is for regtest, expected mainnet",
        ),
        (
            "/ended",
            6,
            "refused: the x402 offer (validUntil) expired at 2020-09-13T12:26:40Z",
        ),
    ] {
        let out = gate402(client.path(), &["get", &format!("{base}{path}")]).await;
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{path}: {stderr}");
        assert!(stderr.contains(needle), "{path}: {stderr}");
    }
    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["scheme"], "x402");
    assert_eq!(ledger[0]["amount_msat"], 2_000);
    assert_eq!(origin.paid.lock().unwrap().len(), 1, "nothing else paid");
}

/// A server that answers a paid retry with another 402 whose body is large
/// and drives the terminal: the message shows its first kilobyte, with
/// every control character replaced, and the body is written out whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_402_after_paying_is_told_without_its_control_characters_or_its_bulk() {
    let origin = Origin::default();
    let hostile = format!(
        "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[32mgate402: refund of 10 sat received\u{1b}[0m{}",
        "A".repeat(200_000)
    );
    let refusal = hostile.clone();
    let never = {
        let origin = origin.clone();
        get(move |headers: HeaderMap| {
            let origin = origin.clone();
            let refusal = refusal.clone();
            async move {
                match text(&headers, "authorization") {
                    Some(_) => (StatusCode::PAYMENT_REQUIRED, refusal).into_response(),
                    None => origin.payment_402(2, Charge::default()),
                }
            }
        })
    };
    let base = origin
        .serve("127.0.0.1", Router::new().route("/never", never))
        .await;
    let client = tempfile::tempdir().unwrap();
    let body = client.path().join("body");
    let out = gate402(
        client.path(),
        &[
            "get",
            "-o",
            body.to_str().unwrap(),
            &format!("{base}/never"),
        ],
    )
    .await;
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("still 402 after paying:"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}'),
        "{stderr:?}"
    );
    assert!(stderr.contains("refund of 10 sat received"), "{stderr}");
    assert!(stderr.len() < 4_000, "{} bytes of stderr", stderr.len());
    assert_eq!(std::fs::read_to_string(&body).unwrap(), hostile);
    // The same outcome with --json writes the document and fails too (it
    // exited 0); with --fail it is an HTTP error answer, exit 22, nothing
    // written (the body went to the file).
    let out = gate402(client.path(), &["get", "--json", &format!("{base}/never")]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], 402);
    let failed = client.path().join("failed");
    let out = gate402(
        client.path(),
        &[
            "get",
            "-f",
            "-o",
            failed.to_str().unwrap(),
            &format!("{base}/never"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(22), "{:?}", out.stderr);
    assert!(!failed.exists(), "-f wrote the error answer");
}
