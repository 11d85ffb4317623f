//! `gate402 get` against our own gateway (sandbox backend) and against a
//! stub that sends 402s no wallet should pay.

use std::future::IntoFuture;
use std::process::{Command, Output};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use gate402_gateway::config::{Rewrite, ServiceConfig};
use gate402_gateway::{demo, Gateway};
use gate402_l402::{mint, Caveat, L402Challenge, Scheme, Service};
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use serde_json::Value;

fn gate402(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

async fn run(data: &std::path::Path, args: &[&str]) -> Output {
    let (data, args): (std::path::PathBuf, Vec<String>) = (
        data.to_owned(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        gate402(&data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// `gate402 --data-dir DATA ARGS…` started, its output piped.
fn spawn(data: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Ctrl-C sent to `child`, and what it printed as it ended.
async fn interrupt(child: std::process::Child) -> Output {
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

async fn payments(data: &std::path::Path) -> Vec<Value> {
    let out = run(data, &["receipts", "--json"]).await;
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["payments"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn pays_per_request_or_per_pass_and_keeps_a_ledger() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(upstream);
    // The demo's weather again, sold as a pass of an hour at /daily/.
    let mut daily = ServiceConfig::proxied("daily", "/daily/*", 7, &format!("http://{upstream}"));
    daily.priced = daily.priced.pass(3600);
    daily.upstream.as_mut().unwrap().rewrite = Rewrite {
        strip_prefix: Some("/daily".into()),
        add_prefix: None,
    };
    config.services.insert(0, daily);
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let client = tempfile::tempdir().unwrap();
    let data = client.path();

    // Per request: each call pays, and no token is kept.
    let weather = format!("{base}/api/weather?city=Oslo");
    // A pass: the first call pays, the token serves the rest of the hour.
    let daily = format!("{base}/daily/weather?city=Oslo");
    for url in [&weather, &weather, &daily, &daily, &daily] {
        let out = run(data, &["get", "-s", url]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["city"], "Oslo");
    }
    let paid = payments(data).await;
    assert_eq!(paid.len(), 3, "two requests and one pass: {paid:?}");
    assert!(paid.iter().all(|p| p["scheme"] == "L402"), "{paid:?}");
    let total: u64 = paid
        .iter()
        .map(|p| p["amount_msat"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2 * 10_000 + 7_000);
    // The ledger's totals say the same: two per-request payments, one pass.
    let out = run(data, &["receipts", "--json"]).await;
    let receipts: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipts["totals"][0]["payments"], 3, "{receipts}");
    assert_eq!(receipts["totals"][0]["amount_msat"], 27_000);
    assert!(paid.iter().all(|p| p["receipt"].is_string()), "{paid:?}");
    let tokens = run(data, &["tokens", "list"]).await;
    let tokens = String::from_utf8_lossy(&tokens.stdout);
    assert!(tokens.contains("/daily/weather"), "{tokens}");
    // When it expires, as a date (it was unix seconds): an hour after its
    // first use, not an hour after its invoice's expiry.
    assert!(tokens.contains("expires 20"), "{tokens}");
    let hash = tokens.split_whitespace().next().unwrap();
    let shown = run(data, &["tokens", "show", hash]).await;
    let token: Value = serde_json::from_slice(&shown.stdout).unwrap();
    let expires = token["expires_at"].as_u64().unwrap();
    let now = gate402_paywall::unix_now();
    assert!(
        expires <= now + 3600 && expires + 120 > now + 3600,
        "{token}"
    );
    // --json names the earlier payment that answered when none was made
    // (`"payment": null` said nothing of the pass used).
    let out = run(data, &["get", "--json", &daily]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["payment"], Value::Null, "{report}");
    assert_eq!(report["earlier_payment"]["via"], "token", "{report}");
    let pass_hash = report["earlier_payment"]["payment_hash"].as_str().unwrap();
    assert!(pass_hash.starts_with(hash), "{report}");
    // A pass paid through MPP buys one request: said, with how to buy it.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run(elsewhere.path(), &["get", "--prefer", "mpp", &daily]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("sells a pass of 3600 s through L402; paid with Payment, this payment buys this one request"),
        "{stderr}"
    );
    let out = run(elsewhere.path(), &["get", &format!("{base}/daily/x")]).await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains("sells a pass"));
    let out = run(data, &["get", "--no-pay", &format!("{base}/daily/other")]).await;
    let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offer["sells"], "pass", "{offer}");
    assert_eq!(offer["pass_secs"], 3600, "{offer}");
    let receipts = run(data, &["receipts"]).await;
    let receipts = String::from_utf8_lossy(&receipts.stdout);
    assert!(receipts.starts_with("20"), "{receipts}");
    assert!(
        !tokens.contains("/api/weather"),
        "a spent token is kept: {tokens}"
    );

    let out = run(
        data,
        &[
            "post",
            "--json",
            "--prefer",
            "mpp",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"text":"a b","to":"fr"}"#,
            &format!("{base}/api/translate"),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], 200);
    assert_eq!(report["payment"]["scheme"], "Payment");
    assert_eq!(report["earlier_payment"], Value::Null, "{report}");
    let receipt =
        gate402_mpp::receipt::parse(report["payment"]["receipt"].as_str().unwrap()).unwrap();
    assert!(gate402_mpp::receipt::challenge_id(&receipt).is_some());

    // Over the cap: refused with its exit code, nothing paid.
    let out = run(
        data,
        &[
            "post",
            "--max-cost",
            "5",
            "-d",
            "{}",
            &format!("{base}/api/translate"),
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("above the cap of 5 sat"));
    // --no-pay: the offer, nothing paid.
    let out = run(data, &["get", "--no-pay", &format!("{base}/api/events")]).await;
    assert!(out.status.success());
    let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offer["price_sats"], 5);
    assert_eq!(offer["schemes"], serde_json::json!(["L402", "MPP"]));
    // What a balance sells: its deposit and unit price, through both doors.
    let out = run(
        data,
        &["get", "--no-pay", &format!("{base}/api/chat?prompt=hi")],
    )
    .await;
    let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offer["sells"], "balance", "{offer}");
    assert_eq!(
        (offer["deposit_sats"].clone(), offer["unit_sats"].clone()),
        (serde_json::json!(20), serde_json::json!(1)),
        "{offer}"
    );
    assert_eq!(offer["schemes"], serde_json::json!(["L402", "MPP"]));
    let out = run(
        data,
        &["get", "--no-pay", &format!("{base}/api/weather?city=Oslo")],
    )
    .await;
    let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offer["sells"], "request", "{offer}");
    assert_eq!(
        payments(data).await.len(),
        4,
        "refusals and --no-pay paid nothing"
    );
    // Removing a token that is not there is an error, as showing it is.
    let absent = "0".repeat(64);
    for command in ["show", "remove"] {
        let out = run(data, &["tokens", command, &absent]).await;
        assert_eq!(out.status.code(), Some(1), "tokens {command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no token {absent}")));
        // What is no hash's start is said so: it matched any token (an
        // empty one, or `%` and `_`, which the ledger read as patterns).
        for not_a_hash in ["", "%", "_", "zz"] {
            let out = run(data, &["tokens", command, not_a_hash]).await;
            assert_eq!(
                out.status.code(),
                Some(1),
                "tokens {command} {not_a_hash:?}"
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("is not a payment hash"),
                "tokens {command} {not_a_hash:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let out = run(data, &["tokens", "clear"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1"));
    // An empty list says so (it printed nothing at all).
    let out = run(data, &["tokens", "list"]).await;
    assert!(out.status.success() && out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "gate402: no tokens kept\n"
    );
    // --since takes a date as the lists print it; none since says so.
    let out = run(data, &["receipts", "--since", "1970-01-01T00:00:00Z"]).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("total"))
            .count(),
        4
    );
    let out = run(data, &["receipts", "--since", "2999-01-01T00:00:00Z"]).await;
    assert!(out.status.success() && out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "gate402: no payments booked\n"
    );
    // --no-pay sends no kept token: a balance's would spend a unit (and a
    // POST would act upstream); the offer is printed.
    let chat = format!("{base}/api/chat?prompt=hi");
    let out = run(data, &["get", &chat]).await;
    assert!(out.status.success());
    let out = run(data, &["get", "--no-pay", &chat]).await;
    let offer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offer["sells"], "balance", "{offer}");
    let out = run(data, &["get", "--json", &chat]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["earlier_payment"]["via"], "token", "{report}");
    assert_eq!(payments(data).await.len(), 5);
    gateway.shutdown().await.unwrap();
}

/// A 402 with an L402 challenge for `invoice` (whose hash the macaroon takes).
fn challenge_for(invoice: &str) -> String {
    let hash = gate402_bolt11::Invoice::parse(invoice)
        .unwrap()
        .payment_hash();
    let minted = mint(hash, "lsat", &[]);
    L402Challenge {
        macaroon: minted.macaroon,
        invoice: invoice.to_owned(),
    }
    .to_header(Scheme::L402)
}

/// An MPP charge of 1 sat payable with `invoice`, alone (no L402).
fn payment_challenge_for(invoice: &str) -> String {
    let hash = gate402_bolt11::Invoice::parse(invoice)
        .unwrap()
        .payment_hash();
    let request = gate402_mpp::lightning::ChargeRequest::new(
        1,
        None,
        invoice,
        &hash,
        gate402_mpp::lightning::Network::Regtest,
    )
    .to_value();
    let key =
        gate402_mpp::challenge::ChallengeKey::new("a stub's secret, of thirty-two bytes at least")
            .unwrap();
    let challenge = key.issue(gate402_mpp::challenge::NewChallenge {
        realm: "stub",
        method: gate402_mpp::lightning::METHOD,
        intent: gate402_mpp::lightning::CHARGE,
        request: &request,
        expires: None,
        digest: None,
        description: None,
        opaque: None,
        header: None,
    });
    gate402_mpp::challenge::to_header(&challenge).unwrap()
}

fn invoice(currency: Currency, amount_msat: Option<u64>, expiry_secs: u64) -> String {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x21; 32]).unwrap();
    let builder = InvoiceBuilder::new(currency)
        .description("stub".into())
        .payment_hash(sha256::Hash::from_byte_array([7; 32]))
        .payment_secret(PaymentSecret([1; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(18)
        .expiry_time(Duration::from_secs(expiry_secs));
    let signed = match amount_msat {
        Some(amount) => builder
            .amount_milli_satoshis(amount)
            .build_signed(|h| secp.sign_ecdsa_recoverable(h, &key)),
        None => builder.build_signed(|h| secp.sign_ecdsa_recoverable(h, &key)),
    };
    signed.unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_what_it_must_not_pay() {
    let mainnet = invoice(Currency::Bitcoin, Some(1_000), 600);
    let no_amount = invoice(Currency::Regtest, None, 600);
    let no_amount_mpp = no_amount.clone();
    let expiring = invoice(Currency::Regtest, Some(1_000), 1);
    let stub = Router::new()
        .route(
            "/mainnet",
            get(move || {
                let c = challenge_for(&mainnet);
                async move {
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, c)],
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/no-amount",
            get(move || {
                let c = challenge_for(&no_amount);
                async move {
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, c)],
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/no-amount-mpp",
            get(move || {
                let c = payment_challenge_for(&no_amount_mpp);
                async move {
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, c)],
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/expired",
            get(move || {
                let c = challenge_for(&expiring);
                async move {
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, c)],
                    )
                        .into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, stub).into_future());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let client = tempfile::tempdir().unwrap();
    for (path, code, needle) in [
        (
            "/mainnet",
            5,
            "the invoice is for mainnet, the wallet is on regtest",
        ),
        ("/no-amount", 4, "has no amount"),
        ("/no-amount-mpp", 4, "has no amount"),
        ("/expired", 6, "expired"),
    ] {
        let out = run(client.path(), &["get", &format!("{base}{path}")]).await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(payments(client.path()).await.is_empty(), "nothing paid");
}

async fn demo_gateway() -> (Gateway, String, tokio::task::JoinHandle<()>) {
    let (upstream, task) = demo::start_upstream().await.unwrap();
    let config = demo::config(upstream);
    let dir = tempfile::tempdir().unwrap().keep();
    let gateway = Gateway::start(&config, &dir).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    (gateway, base, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_in_the_client_config_refuse_with_exit_8() {
    let (gateway, base, _upstream) = demo_gateway().await;
    let client = tempfile::tempdir().unwrap();
    std::fs::write(
        client.path().join("client.toml"),
        "[budget]\nper_hour_sats = 100\n[budget.domains.\"127.0.0.1\"]\nper_day_sats = 30\n",
    )
    .unwrap();
    let out = run(
        client.path(),
        &["get", "-s", &format!("{base}/api/weather?city=Oslo")],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 10 sat spent; 25 more would make 35 of the domain's 30 a day.
    let out = run(
        client.path(),
        &["post", "-d", "{}", &format!("{base}/api/translate")],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "25 sat would exceed the per-day budget for 127.0.0.1 of 30 sat (10 sat spent)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        payments(client.path()).await.len(),
        1,
        "the refusal paid nothing"
    );
    // A typo in the config is an error, not an unlimited budget.
    std::fs::write(
        client.path().join("client.toml"),
        "[budget]\nper_day_sat = 30\n",
    )
    .unwrap();
    let out = run(client.path(), &["get", &format!("{base}/api/weather")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("per_day_sat"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gateway.shutdown().await.unwrap();
}

/// An origin whose 402s carry a fresh invoice each time and whose sandbox
/// payer takes `delay_ms` to pay, as a payment in flight does.
#[derive(Clone, Default)]
struct SlowPayer {
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// How many answers to a payment to cut off (after paying).
    cut: std::sync::Arc<std::sync::atomic::AtomicU8>,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
    issued: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// How many invoices to have issued before paying one (for up to
    /// 10 s), as well as `delay_ms`.
    pay_after_issued: std::sync::Arc<std::sync::atomic::AtomicU8>,
    paid: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

/// Invoice number `n` pays `n` msat… times 1000, with preimage `[n; 32]`.
fn numbered_invoice(n: u8) -> String {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x21; 32]).unwrap();
    InvoiceBuilder::new(Currency::Regtest)
        .description("slow".into())
        .payment_hash(sha256::Hash::hash(&[n; 32]))
        .payment_secret(PaymentSecret([1; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(18)
        .amount_milli_satoshis(3_000)
        .build_signed(|h| secp.sign_ecdsa_recoverable(h, &key))
        .unwrap()
        .to_string()
}

/// A slow origin whose payer answers nothing for an hour: its state and
/// base URL.
async fn stalled_origin() -> (SlowPayer, String) {
    let state = SlowPayer::default();
    state
        .delay_ms
        .store(3_600_000, std::sync::atomic::Ordering::SeqCst);
    let base = slow_origin(state.clone()).await;
    (state, base)
}

async fn slow_origin(state: SlowPayer) -> String {
    use axum::extract::State;
    use axum::http::HeaderMap;
    // `/paid` sells a token for itself; `/pass/*` one for every path of
    // its service (a pass: its macaroon names `services=pass:0`).
    async fn paid(
        s: SlowPayer,
        headers: HeaderMap,
        caveats: &[Caveat],
    ) -> axum::response::Response {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if let Some(&n) = s
            .paid
            .lock()
            .unwrap()
            .iter()
            .find(|n| auth.starts_with("L402 ") && auth.ends_with(&hex::encode([**n; 32])))
        {
            return (StatusCode::OK, format!("served for invoice {n}")).into_response();
        }
        let n = s.issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let invoice = numbered_invoice(n);
        let hash = gate402_bolt11::Invoice::parse(&invoice)
            .unwrap()
            .payment_hash();
        let challenge = L402Challenge {
            macaroon: mint(hash, "lsat", caveats).macaroon,
            invoice,
        }
        .to_header(Scheme::L402);
        (
            StatusCode::PAYMENT_REQUIRED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response()
    }
    let app = Router::new()
        .route(
            "/paid",
            get(|State(s): State<SlowPayer>, headers: HeaderMap| paid(s, headers, &[])),
        )
        .route(
            "/pass/{name}",
            get(
                |State(s): State<SlowPayer>, headers: HeaderMap| async move {
                    let services = [Caveat::services(&[Service::new("pass")])];
                    paid(s, headers, &services).await
                },
            ),
        )
        .route(
            "/sandbox/pay",
            axum::routing::post(
                |State(s): State<SlowPayer>, axum::Json(body): axum::Json<Value>| async move {
                    let delay = s.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let issued = s.pay_after_issued.load(std::sync::atomic::Ordering::SeqCst);
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while s.issued.load(std::sync::atomic::Ordering::SeqCst) < issued
                        && std::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if s.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                        return (
                            StatusCode::FORBIDDEN,
                            axum::Json(serde_json::json!({"detail": "refused by the stub"})),
                        )
                            .into_response();
                    }
                    let invoice =
                        gate402_bolt11::Invoice::parse(body["invoice"].as_str().unwrap()).unwrap();
                    let n = (1..=u8::MAX)
                        .find(|n| {
                            sha256::Hash::hash(&[*n; 32]).to_byte_array() == invoice.payment_hash()
                        })
                        .unwrap();
                    // As the sandbox does: a second payment of one invoice is
                    // answered with the first one's preimage, and pays nothing.
                    let status = {
                        let mut paid = s.paid.lock().unwrap();
                        if paid.contains(&n) {
                            StatusCode::CONFLICT
                        } else {
                            paid.push(n);
                            StatusCode::OK
                        }
                    };
                    let answer = serde_json::json!({
                        "preimage": hex::encode([n; 32]),
                        "amount_msat": 3_000,
                    })
                    .to_string();
                    let cut = s
                        .cut
                        .fetch_update(
                            std::sync::atomic::Ordering::SeqCst,
                            std::sync::atomic::Ordering::SeqCst,
                            |n| n.checked_sub(1),
                        )
                        .is_ok();
                    if cut {
                        // Paid, and the answer broken off halfway.
                        let half = answer[..answer.len() / 2].to_owned();
                        let parts: Vec<Result<String, std::io::Error>> =
                            vec![Ok(half), Err(std::io::Error::other("cut"))];
                        let parts = futures_util::StreamExt::then(
                            futures_util::stream::iter(parts),
                            |part| async move {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                part
                            },
                        );
                        return (status, axum::body::Body::from_stream(parts)).into_response();
                    }
                    (status, [(header::CONTENT_TYPE, "application/json")], answer).into_response()
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app).into_future());
    base
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_a_payment_leaves_it_pending_and_the_next_run_finishes_it() {
    let (state, base) = stalled_origin().await;
    let client = tempfile::tempdir().unwrap();
    let url = format!("{base}/paid");
    let child = spawn(client.path(), &["get", &url]);
    // Wait until the payment is written down and under way.
    let mut pending = Vec::new();
    for _ in 0..100 {
        pending = payments(client.path()).await;
        if !pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pending.len(),
        1,
        "the payment is in the ledger before it is sent"
    );
    assert_eq!(pending[0]["status"], "pending");
    let out = interrupt(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("is pending"), "{stderr}");
    assert!(state.paid.lock().unwrap().is_empty());

    // The payer answers again. The next run gets a 402 for invoice 2, but
    // finishes invoice 1 instead of paying invoice 2.
    state.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let out = run(client.path(), &["get", &url]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "served for invoice 1");
    assert_eq!(*state.paid.lock().unwrap(), vec![1], "invoice 1 only");
    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["status"], "paid");
    assert_eq!(ledger[0]["amount_msat"], 3_000);
}

/// A run stopped with payments pending lists only its own in `--json`'s
/// `pending`: it listed every pending payment in the ledger, another
/// endpoint's left by an earlier run included.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_run_lists_only_what_it_left_pending() {
    let (_state, base) = stalled_origin().await;
    let client = tempfile::tempdir().unwrap();
    let out = run(
        client.path(),
        &["get", "--json", "--max-time", "2", &format!("{base}/paid")],
    )
    .await;
    assert_eq!(out.status.code(), Some(28));
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["pending"].as_array().unwrap().len(), 1, "{first}");
    let out = run(
        client.path(),
        &[
            "get",
            "--json",
            "--max-time",
            "2",
            &format!("{base}/pass/x"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(28));
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pending = second["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{second}");
    assert!(
        pending[0]["path"].as_str().unwrap().starts_with("/pass"),
        "{second}"
    );
    assert_eq!(payments(client.path()).await.len(), 2);
    // Counted apart from what was paid: whether they were is not known.
    let out = run(client.path(), &["receipts", "--json"]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let totals = &report["totals"][0];
    assert_eq!(totals["payments"], 0, "{report}");
    assert_eq!(totals["amount_msat"], 0, "{report}");
    assert_eq!(totals["pending"], 2, "{report}");
    assert_eq!(totals["pending_msat"], 6_000, "{report}");
}

/// `gate402 get` of each of `urls(base)` (a slow origin's, whose payer
/// takes a second and pays nothing before every run has its 402), run at
/// once on one data dir; each succeeded. The origin's state, the data dir
/// and the outputs.
async fn gets_at_once(
    urls: impl Fn(&str) -> Vec<String>,
) -> (SlowPayer, tempfile::TempDir, Vec<Output>) {
    let state = SlowPayer::default();
    state
        .delay_ms
        .store(1_000, std::sync::atomic::Ordering::SeqCst);
    let base = slow_origin(state.clone()).await;
    let urls = urls(&base);
    state
        .pay_after_issued
        .store(urls.len() as u8, std::sync::atomic::Ordering::SeqCst);
    let client = tempfile::tempdir().unwrap();
    let children: Vec<_> = urls
        .iter()
        .map(|url| spawn(client.path(), &["get", "-s", url]))
        .collect();
    let mut outs = Vec::new();
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outs.push(out);
    }
    assert!(
        state.issued.load(std::sync::atomic::Ordering::SeqCst) as usize >= urls.len(),
        "every process met a 402"
    );
    (state, client, outs)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_gets_of_one_paid_url_pay_once() {
    // Each payment takes a second, and none completes before all four
    // processes have their 402: one pays, the others wait on the
    // endpoint's lock and then use the token it bought.
    let (state, client, outs) = gets_at_once(|base| vec![format!("{base}/paid"); 4]).await;
    for out in outs {
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("served for invoice"));
    }
    assert_eq!(state.paid.lock().unwrap().len(), 1, "one payment");
    let paid = payments(client.path()).await;
    assert_eq!(paid.len(), 1, "four concurrent gets, one payment: {paid:?}");
    assert_eq!(paid[0]["status"], "paid");
}

/// Runs at once on different paths of one pass: one buys it, the others
/// wait for it and take its token (each bought a pass of its own).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_gets_on_the_paths_of_one_pass_buy_it_once() {
    let (_, client, _) = gets_at_once(|base| {
        ["a", "b", "c", "d"]
            .iter()
            .map(|path| format!("{base}/pass/{path}"))
            .collect()
    })
    .await;
    let paid = payments(client.path()).await;
    assert_eq!(
        paid.len(),
        1,
        "four paths of one pass, one payment: {paid:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_payment_exits_7_and_is_recorded_failed() {
    let state = SlowPayer::default();
    state
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let base = slow_origin(state.clone()).await;
    let client = tempfile::tempdir().unwrap();
    let out = run(client.path(), &["get", &format!("{base}/paid")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("refused by the stub"), "{stderr}");
    let ledger = payments(client.path()).await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["status"], "failed");
    let out = run(client.path(), &["receipts", "--json"]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["totals"],
        serde_json::json!([]),
        "a failed payment costs nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_that_times_out_is_resolved_not_repeated() {
    use gate402_client::{Budget, Client, Fetched, Ledger, Payer, Policy, Wallet};
    let state = SlowPayer::default();
    state
        .delay_ms
        .store(3_000, std::sync::atomic::Ordering::SeqCst);
    let base = slow_origin(state.clone()).await;
    // The payer answers again after 1.5 s; the wallet gives up after 1 s.
    tokio::spawn({
        let state = state.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            state.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ledger = std::sync::Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = Client {
        http: reqwest::Client::new(),
        payer: Payer {
            wallet: Wallet::Sandbox(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(1))
                    .build()
                    .unwrap(),
                Wallet::new_sandbox_payer(),
            ),
            policy: Policy {
                max_cost_sats: 10,
                max_fee_sats: 0,
                network: gate402_lightning_sandbox::NETWORK,
                budget: Budget::default(),
            },
            ledger: ledger.clone(),
            prefer: None,
            pay: true,
            sessions: false,
        },
    };
    let request = client.http.get(format!("{base}/paid")).build().unwrap();
    let Fetched::Response(response, Some(entry)) = client.fetch(request).await.unwrap() else {
        panic!("expected a paid response");
    };
    assert_eq!(response.text().await.unwrap(), "served for invoice 1");
    assert_eq!(entry.amount_msat, 3_000);
    assert_eq!(
        *state.paid.lock().unwrap(),
        vec![1],
        "one invoice, paid once"
    );
    assert_eq!(
        state.issued.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no second 402 was paid for"
    );
    let ledger = ledger.payments(0).unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].status, gate402_client::PaymentState::Paid);
}

/// The demo gateway with `flaky`, 10 sat a request at `/flaky/*`, in
/// front of `app`; and its data dir.
async fn flaky_gateway(app: Router) -> (Gateway, tempfile::TempDir) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    let (demo_upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(demo_upstream);
    config.services.insert(
        0,
        ServiceConfig::proxied("flaky", "/flaky/*", 10, &format!("http://{upstream}")),
    );
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    (gateway, dir)
}

/// Pay for success, as the client sees it: a paid request whose upstream
/// fails (a 500 through the gateway, which leaves the payment unspent) is
/// answered on the next run with the same credential, not paid again; an
/// MPP credential, once served, is spent, and the next request pays.
#[tokio::test(flavor = "multi_thread")]
async fn a_paid_request_the_upstream_failed_is_served_on_the_next_run_unpaid() {
    // The first call of each path fails, the others are served.
    let calls: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
        Default::default();
    let counted = calls.clone();
    let app = Router::new().route(
        "/{*rest}",
        get(move |uri: axum::http::Uri| async move {
            let n = {
                let mut calls = counted.lock().unwrap();
                let n = calls.entry(uri.path().to_owned()).or_default();
                *n += 1;
                *n
            };
            if n == 1 {
                (StatusCode::INTERNAL_SERVER_ERROR, "down\n".to_owned())
            } else {
                (StatusCode::OK, format!("served, call {n}\n"))
            }
        }),
    );
    let (gateway, _gw_dir) = flaky_gateway(app).await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    for scheme in ["mpp", "l402"] {
        let url = format!("http://{}/flaky/{scheme}", gateway.addr());
        let paid_here = || async {
            payments(data)
                .await
                .into_iter()
                .filter(|p| p["url"] == url.as_str())
                .collect::<Vec<_>>()
        };
        let args = ["get", "--prefer", scheme, &url];
        let get = || run(data, &args);
        let out = get().await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "down\n", "{scheme}");
        assert_eq!(paid_here().await.len(), 1, "{scheme}");
        // The next run sends the credential again: served, nothing paid.
        let out = get().await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "served, call 2\n",
            "{scheme}: {stderr}"
        );
        assert!(!stderr.contains("paid"), "{scheme}: {stderr}");
        let paid = paid_here().await;
        assert_eq!(
            paid.len(),
            1,
            "{scheme}: one payment for one answer: {paid:?}"
        );
        assert!(paid[0]["receipt"].is_string(), "{scheme}: {paid:?}");
        // Spent now: the next request pays.
        let out = get().await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "served, call 3\n",
            "{scheme}"
        );
        assert_eq!(paid_here().await.len(), 2, "{scheme}");
    }
    let tokens = run(data, &["tokens", "list"]).await;
    let tokens = String::from_utf8_lossy(&tokens.stdout);
    assert!(
        !tokens.contains("Payment"),
        "a served credential is kept: {tokens}"
    );
    gateway.shutdown().await.unwrap();
}

/// A kept MPP credential goes only with the request it was bought for:
/// its challenge binds the body. Another body pays anew and leaves it
/// kept (sent with it, it was refused and forgotten, unspent); the same
/// body later is served with it, unpaid.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_credential_goes_only_with_the_request_it_was_bought_for() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let app = Router::new().route(
        "/{*rest}",
        axum::routing::post(move |body: String| async move {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == 1 {
                (StatusCode::INTERNAL_SERVER_ERROR, "down\n".to_owned())
            } else {
                (StatusCode::OK, format!("served {body}\n"))
            }
        }),
    );
    let (gateway, _gw_dir) = flaky_gateway(app).await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let url = format!("http://{}/flaky/x", gateway.addr());
    let post = |body: &'static str| {
        let url = url.clone();
        async move { run(data, &["post", "--prefer", "mpp", "-d", body, &url]).await }
    };
    assert_eq!(String::from_utf8_lossy(&post("A").await.stdout), "down\n");
    let out = post("B").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "served B\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(payments(data).await.len(), 2, "B pays for itself");
    let out = post("A").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "served A\n",
        "{stderr}"
    );
    assert!(!stderr.contains("paid"), "{stderr}");
    assert_eq!(payments(data).await.len(), 2, "A was paid for once");
    gateway.shutdown().await.unwrap();
}

/// A preference the server's offer cannot meet is said, not followed
/// silently.
#[tokio::test(flavor = "multi_thread")]
async fn a_preference_that_cannot_be_followed_is_said() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(upstream);
    for service in &mut config.services {
        service.priced.schemes = gate402_paywall::route::Schemes::BOTH;
    }
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = format!("http://{}/api/weather?city=Oslo", gateway.addr());
    let out = run(data.path(), &["get", "--prefer", "x402", &url]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--prefer x402 could not be followed"),
        "{stderr}"
    );
    let out = run(data.path(), &["get", "--prefer", "mpp", &url]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("--prefer"),
        "{stderr}"
    );
    gateway.shutdown().await.unwrap();
}

/// A timeout beyond what the clock can count ahead is refused with the
/// other bad arguments, before anything is sent (it made the client panic
/// once a request was under way, a payment made for it included).
#[test]
fn a_timeout_beyond_the_clock_is_refused_before_anything_is_sent() {
    let data = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    for (flag, value) in [
        ("--read-timeout", "18446744073709551615"),
        ("--read-timeout", "9300000000000000000"),
        ("--connect-timeout", "18446744073709551615"),
        ("--connect-timeout", "0"),
    ] {
        for command in [
            &["get", flag, value, &url][..],
            &["mcp", "call", flag, value, &url, "ping"],
        ] {
            let out = gate402(data.path(), command);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
            assert!(
                stderr.contains(flag) && !stderr.contains("panicked"),
                "{command:?}: {stderr}"
            );
        }
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "nothing was sent");
}

/// A server that stalls (says nothing after the request, or stops within
/// its body) does not hold the client for ever: it gives up after
/// `--read-timeout` seconds of silence with an error and a non-zero exit.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_server_is_given_up_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = vec![0; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                if String::from_utf8_lossy(&request[..n]).starts_with("GET /body") {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                        )
                        .await;
                }
                // Then nothing, the connection kept open.
                tokio::time::sleep(Duration::from_secs(600)).await;
                drop(socket);
            });
        }
    });
    let data = tempfile::tempdir().unwrap();
    for path in ["/silent", "/body"] {
        let url = format!("http://{addr}{path}");
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            run(data.path(), &["get", "-s", "--read-timeout", "2", &url]),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: still waiting after 30 s"));
        assert!(!out.status.success(), "{path}");
        assert!(started.elapsed() < Duration::from_secs(15), "{path}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("timed out"), "{path}: {stderr}");
    }
}

/// A paid request whose answer does not come within `--read-timeout` says
/// what it paid, and that the server may have spent it.
#[tokio::test(flavor = "multi_thread")]
async fn a_paid_request_that_times_out_says_what_it_paid() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let slow_received = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = slow_received.clone();
    let app = Router::new().route(
        "/{*rest}",
        get(move |uri: axum::http::Uri| async move {
            if uri.path().ends_with("/slow") {
                counted.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            "answer"
        }),
    );
    let (gateway, _dir) = flaky_gateway(app).await;
    let data = tempfile::tempdir().unwrap();
    let base = format!("http://{}/flaky", gateway.addr());
    // A payment of an earlier run is not said by a later one that fails
    // without paying.
    let out = run(data.path(), &["get", &format!("{base}/fast")]).await;
    assert!(out.status.success());
    let out = run(
        data.path(),
        &["get", "--max-cost", "1", &format!("{base}/other")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("paid"), "{stderr}");
    let url = format!("{base}/slow");
    let out = run(data.path(), &["get", "--read-timeout", "3", &url]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(stderr.contains("paid 10 sat"), "{stderr}");
    assert!(stderr.contains("failed after it was paid for"), "{stderr}");
    // Interrupted while the paid request waits for its answer: said too.
    let child = spawn(
        data.path(),
        &["get", "--json", &format!("{base}/again/slow")],
    );
    // Once the upstream has the paid request (answered 5 s later).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while slow_received.load(SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = interrupt(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("paid 10 sat"), "{stderr}");
    assert!(stderr.contains("before the interrupt"), "{stderr}");
    // With --json, a document says it too (standard output was empty).
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["error"]["kind"], "interrupted", "{said}");
    assert_eq!(said["payments"][0]["amount_msat"], 10_000, "{said}");
    gateway.shutdown().await.unwrap();
}

/// A run waiting for another run's payment on the same endpoint (its
/// lock) is stopped by `--max-time` on time: it waited until the other let
/// the lock go (a hostile server holding the other's payment held every
/// run to that endpoint, past their `--max-time` and Ctrl-C).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_waiting_for_another_runs_payment_stops_at_its_max_time() {
    let (gateway, base, _upstream) = demo_gateway().await;
    let data = tempfile::tempdir().unwrap();
    let ledger_dir = data.path().join("client");
    std::fs::create_dir_all(&ledger_dir).unwrap();
    let ledger = gate402_client::Ledger::open(&ledger_dir.join("ledger.sqlite3")).unwrap();
    // Another run paying for this endpoint holds its lock.
    let _held = ledger.lock_endpoint(&base, "/api/weather").await.unwrap();
    let started = std::time::Instant::now();
    let url = format!("{base}/api/weather?city=Oslo");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        run(data.path(), &["get", "--max-time", "2", &url]),
    )
    .await
    .expect("stopped by --max-time while it waited");
    let waited = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(28),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    gateway.shutdown().await.unwrap();
}

/// A reader gone from standard error (a closed pipe) does not turn the
/// command's own exit status into a panic's (101): over the cap is still
/// 3, a server that cannot be reached still 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stderr_leaves_the_exit_status_alone() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let config = demo::config(upstream);
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    // Port 9 (discard), which no test binds: a free port picked here could
    // be taken by another test's server before the run (it answered: 0).
    let unreachable = "http://127.0.0.1:9/".to_owned();
    let dear = format!("http://{}/api/weather?city=Oslo", gateway.addr());
    for (args, code) in [
        (vec!["get", "--max-cost", "1", dear.as_str()], 3),
        (vec!["get", unreachable.as_str()], 1),
    ] {
        let data = data.path().to_owned();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let status = tokio::task::spawn_blocking(move || {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            Command::new(env!("CARGO_BIN_EXE_gate402"))
                .arg("--data-dir")
                .arg(&data)
                .args(&owned)
                .stdout(std::process::Stdio::null())
                .stderr(writer)
                .status()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

/// Runs at once on the paths of one per-request service, sharing one data
/// dir, each pay for and get their own answer: none presents a token
/// another run bought and has not been answered for yet (which the
/// gateway answers 409, in use, printed as if it were the answer).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_runs_on_one_service_each_pay_and_are_served() {
    let app = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        "thought"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    let mut config =
        gate402_gateway::GatewayConfig::default_with_services(vec![ServiceConfig::proxied(
            "req",
            "/req/*",
            3,
            &format!("http://{upstream}"),
        )]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let runs: Vec<_> = (0..12)
        .map(|i| {
            let url = format!("http://{}/req/p{}", gateway.addr(), i % 4);
            let data = data.path().to_owned();
            tokio::spawn(async move { run(&data, &["get", "-s", "-i", &url]).await })
        })
        .collect();
    for run in runs {
        let out = run.await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("HTTP/1.1 200"), "{stdout}");
    }
    assert_eq!(payments(data.path()).await.len(), 12);
}

/// `--fail` (`-f`) and `--fail-with-body`, as curl's: an HTTP error answer
/// (paid for or not) exits 22, with the body withheld (its start told on
/// standard error) or written; anything else is unchanged. Without them
/// an error answer exits 0, as before.
#[tokio::test(flavor = "multi_thread")]
async fn fail_exits_22_on_an_http_error_answer() {
    let app = Router::new().route(
        "/{*rest}",
        get(|uri: axum::http::Uri| async move {
            match uri.path() {
                "/flaky/missing" => (StatusCode::NOT_FOUND, "no such item\n"),
                _ => (StatusCode::OK, "here\n"),
            }
        }),
    );
    let (gateway, _gw_dir) = flaky_gateway(app).await;
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    let missing = format!("http://{}/flaky/missing", gateway.addr());
    let found = format!("http://{}/flaky/found", gateway.addr());
    let unrouted = format!("http://{}/nothing/here", gateway.addr());

    let out = run(data, &["get", "-s", &missing]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no such item\n");

    let out = run(data, &["get", "-s", "-f", &missing]).await;
    assert_eq!(out.status.code(), Some(22));
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the server answered 404 Not Found: no such item"),
        "{stderr}"
    );

    let out = run(data, &["get", "-s", "--fail-with-body", &missing]).await;
    assert_eq!(out.status.code(), Some(22));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no such item\n");

    let out = run(data, &["get", "--json", "--fail", &missing]).await;
    assert_eq!(out.status.code(), Some(22));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], 404);

    // Unpaid: the gateway's own 404.
    let out = run(data, &["get", "-s", "-f", &unrouted]).await;
    assert_eq!(out.status.code(), Some(22));

    let out = run(data, &["get", "-s", "-f", &found]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "here\n");
    // Every paid answer was booked, the failed ones too.
    assert_eq!(payments(data).await.len(), 5);
}

/// `--read-timeout` bounds each call to the sandbox payer too (the server
/// being paid): one that never answers is given up after it, the payment
/// asked about for up to 30 s more (each asking bounded as well), then kept
/// pending (exit 9) for a later run to resolve. The payment alone took
/// 60 s, whatever `--read-timeout` said.
#[tokio::test(flavor = "multi_thread")]
async fn the_read_timeout_bounds_the_sandbox_payer() {
    let state = SlowPayer::default();
    state
        .delay_ms
        .store(600_000, std::sync::atomic::Ordering::SeqCst);
    let base = slow_origin(state.clone()).await;
    let client = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = run(
        client.path(),
        &["get", "--read-timeout", "1", &format!("{base}/paid")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}: {stderr}",
        started.elapsed()
    );
    let pending = payments(client.path()).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["status"], "pending", "{pending:?}");
}

/// A sandbox payer that paid and whose answer was then lost (broken off
/// halfway) leaves the payment's outcome unknown: it is asked again and
/// found paid, and the request is served on that payment. It was booked
/// `failed` (exit 7) and the next run paid another invoice.
#[tokio::test(flavor = "multi_thread")]
async fn a_payment_whose_answer_was_lost_is_asked_again_not_failed() {
    let state = SlowPayer::default();
    state.cut.store(1, std::sync::atomic::Ordering::SeqCst);
    let base = slow_origin(state.clone()).await;
    let client = tempfile::tempdir().unwrap();
    let out = run(client.path(), &["get", "-s", &format!("{base}/paid")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "served for invoice 1");
    assert_eq!(
        *state.paid.lock().unwrap(),
        vec![1],
        "one invoice, paid once"
    );
    let paid = payments(client.path()).await;
    assert_eq!(paid.len(), 1, "{paid:?}");
    assert_eq!(paid[0]["status"], "paid", "{paid:?}");
}

/// A server that offers again an invoice this client has paid (here on
/// every path: one canned 402) is refused before the wallet is asked: the
/// payment was booked a second time, counted twice against the budgets,
/// and reported as paid again, though nothing moved.
#[tokio::test(flavor = "multi_thread")]
async fn an_invoice_offered_again_is_not_paid_or_booked_twice() {
    use axum::extract::Path;
    use axum::http::HeaderMap;
    let paid = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = paid.clone();
    let app = Router::new()
        .route(
            "/{name}",
            get(move |Path(name): Path<String>, headers: HeaderMap| {
                let invoice = numbered_invoice(1);
                async move {
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if name == "canned" && auth.ends_with(&hex::encode([1u8; 32])) {
                        return (StatusCode::OK, "canned answer").into_response();
                    }
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        [(header::WWW_AUTHENTICATE, challenge_for(&invoice))],
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/sandbox/pay",
            axum::routing::post(move || async move {
                let again = served.swap(true, std::sync::atomic::Ordering::SeqCst);
                let status = if again {
                    StatusCode::CONFLICT
                } else {
                    StatusCode::OK
                };
                let answer = serde_json::json!({
                    "preimage": hex::encode([1u8; 32]),
                    "amount_msat": 3_000,
                });
                (status, axum::Json(answer)).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app).into_future());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let out = run(data, &["get", &format!("{base}/canned")]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(paid.load(std::sync::atomic::Ordering::SeqCst));
    for path in ["/cannedB", "/cannedC"] {
        let out = run(data, &["get", &format!("{base}{path}")]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {stderr}");
        assert!(stderr.contains("paid by this client before"), "{stderr}");
    }
    let payments = payments(data).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
}

/// `-k` holds for the sandbox payer too (the gateway being paid): it was
/// asked without it, failed its TLS handshake on every try for 30 s, and
/// the payment, never sent, was kept `pending` (exit 9). A payer that
/// cannot be connected to has been sent nothing: the payment fails at
/// once (exit 7) and is not kept pending.
#[tokio::test(flavor = "multi_thread")]
async fn insecure_holds_for_the_sandbox_payer_and_an_unsent_payment_fails() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(upstream);
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    config.tls = Some(gate402_gateway::config::TlsConfig {
        cert: cert_file,
        key: key_file,
    });
    let gateway = Gateway::start(&config, &dir.path().join("gateway"))
        .await
        .unwrap();
    let url = format!(
        "https://localhost:{}/api/weather?city=Oslo",
        gateway.addr().port()
    );
    let client = tempfile::tempdir().unwrap();
    let data = client.path();
    // Refused without -k: one message, and how to trust such a server.
    let out = run(data, &["get", &url]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("SSL_CERT_FILE") && !stderr.contains("rustls_platform_verifier"),
        "{stderr}"
    );
    // A URL whose scheme the port does not speak is told which to use.
    let plain = url.replacen("https://", "http://", 1);
    let out = run(data, &["get", &plain]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("use an https:// URL"), "{stderr}");
    let out = run(data, &["get", &format!("https://{upstream}/api/weather")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("use an http:// URL"), "{stderr}");
    let out = run(data, &["get", "-k", &url]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paid = payments(data).await;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0]["status"], "paid");

    gateway.shutdown().await.unwrap();

    // A server that answers its 402 and then takes no connection: the
    // payer is never reached, and the payment fails at once.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        drop(listener);
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let answer = format!(
            "HTTP/1.1 402 Payment Required\r\nWWW-Authenticate: {}\r\nContent-Length: 0\r\n\r\n",
            challenge_for(&numbered_invoice(2))
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let started = std::time::Instant::now();
    let out = run(data, &["get", &format!("{base}/paid")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("not sent"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    let paid = payments(data).await;
    assert_eq!(paid.len(), 2, "{paid:?}");
    assert_eq!(paid[1]["status"], "failed", "{paid:?}");
}

/// A ledger others could read is made private and said so: it holds
/// kept tokens (bearer credentials). It was made private silently.
#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_others_could_read_is_made_private_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let out = run(data, &["receipts"]).await;
    assert!(out.status.success());
    let ledger = data.join("client").join("ledger.sqlite3");
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(data, &["receipts"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("was readable by other users"), "{stderr}");
    let mode = std::fs::metadata(&ledger).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = run(data, &["receipts"]).await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains("readable"));
    // A get says it too: it had made the ledger private before looking.
    std::fs::set_permissions(&ledger, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(data, &["get", "http://127.0.0.1:9/x"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("was readable by other users"), "{stderr}");
    let mode = std::fs::metadata(&ledger).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// With `--json`, a run that ends in an error prints a JSON document
/// saying why (its kind, exit code and message) on standard output; it
/// printed nothing there, and a program reading it had an exit code only.
#[tokio::test(flavor = "multi_thread")]
async fn json_says_why_a_run_failed() {
    let (gateway, base, _task) = demo_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{base}/api/weather?city=Oslo");
    let out = run(dir.path(), &["get", "--json", "--max-cost", "1", &url]).await;
    assert_eq!(out.status.code(), Some(3));
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["error"]["kind"], "refused");
    assert_eq!(said["error"]["exit_code"], 3);
    assert!(said["error"]["message"]
        .as_str()
        .unwrap()
        .contains("above the cap"));
    // A document the command printed itself is not followed by another.
    let out = run(dir.path(), &["get", "--json", "--no-pay", &url]).await;
    assert!(out.status.success());
    let _: Value = serde_json::from_slice(&out.stdout).unwrap();
    gateway.shutdown().await.unwrap();
}

/// A server's words quoted in an error cannot pass for the client's own
/// lines: a 500 whose body was `gate402: paid 0 sat` lines printed each on
/// a line of its own, as if the client had said so.
#[tokio::test(flavor = "multi_thread")]
async fn a_servers_lines_in_an_error_are_set_apart() {
    let app = Router::new().fallback(|| async {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "oops\ngate402: paid 0 sat\ngate402: refund of 5000 sat received\n",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    let client = tempfile::tempdir().unwrap();
    let out = run(client.path(), &["get", "-f", &format!("http://{addr}/x")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(22), "{stderr}");
    assert!(stderr.contains("paid 0 sat"), "{stderr}");
    assert!(
        stderr
            .lines()
            .filter(|line| line.starts_with("gate402:"))
            .all(|line| !line.contains("paid 0 sat") && !line.contains("refund of")),
        "{stderr}"
    );
}

/// A front of the demo gateway that answers every paid retry (a request
/// with `Authorization`) with `status` and a body that never ends: chunks
/// as fast as they are taken, or, when `drip`, a byte every 100 ms. Its
/// base URL.
async fn endless_front(gateway: String, drip: bool, status: StatusCode) -> String {
    use axum::body::Body;
    let app = Router::new().fallback(move |request: axum::extract::Request| {
        let gateway = gateway.clone();
        async move {
            if request.headers().contains_key(header::AUTHORIZATION) {
                let chunks = futures_util::stream::unfold((), move |()| async move {
                    if drip {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let chunk = if drip { "x" } else { "spent, pay again " };
                    Some((
                        Ok::<_, std::io::Error>(chunk.repeat(if drip { 1 } else { 512 })),
                        (),
                    ))
                });
                return (status, Body::from_stream(chunks)).into_response();
            }
            let target = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let mut forwarded =
                reqwest::Client::new().request(parts.method, format!("{gateway}{target}"));
            for (name, value) in &parts.headers {
                if name != header::HOST {
                    forwarded = forwarded.header(name, value);
                }
            }
            let answered = forwarded.body(body).send().await.unwrap();
            let mut answer = axum::http::Response::builder().status(answered.status());
            for (name, value) in answered.headers() {
                answer = answer.header(name, value);
            }
            answer
                .body(Body::from(answered.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app).into_future());
    base
}

/// A 402 after paying whose body never ends cannot hold a `--json` run:
/// its first 64 KiB are the document's body and the run ends, "still 402
/// after paying"; written out (as any body is, streamed) it is cut short by
/// `--max-time`, and so is one sent a byte at a time (which
/// `--read-timeout` never gives up): the run says what was paid and exits
/// 28.
#[tokio::test(flavor = "multi_thread")]
async fn a_402_after_paying_without_end_cannot_hold_the_run() {
    let (gateway, _, _task) = demo_gateway().await;
    let gateway_url = format!("http://{}", gateway.addr());
    let fast = endless_front(gateway_url.clone(), false, StatusCode::PAYMENT_REQUIRED).await;
    let data = tempfile::tempdir().unwrap();
    let url = format!("{fast}/api/weather?city=oslo");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        run(data.path(), &["get", "--json", &url]),
    )
    .await
    .expect("the run ended");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("still 402 after paying"), "{stderr}");
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["body"].as_str().map(str::len), Some(64 * 1024));
    let url = format!("{fast}/api/weather?city=bergen");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            data.path(),
            &["get", "-o", "/dev/null", "--max-time", "3", &url],
        ),
    )
    .await
    .expect("the run ended");
    assert_eq!(out.status.code(), Some(28));
    let drip = endless_front(gateway_url.clone(), true, StatusCode::PAYMENT_REQUIRED).await;
    let url = format!("{drip}/api/weather?city=tromso");
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        run(
            data.path(),
            &[
                "get",
                "--json",
                "--read-timeout",
                "2",
                "--max-time",
                "3",
                &url,
            ],
        ),
    )
    .await
    .expect("the run ended");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(28), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(stderr.contains("gave up after --max-time 3 s"), "{stderr}");
    assert!(stderr.contains("before --max-time ran out"), "{stderr}");
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["error"]["kind"], "timeout", "{said}");
    assert_eq!(said["payments"].as_array().map(Vec::len), Some(1), "{said}");
    // Answered (200) and then cut short: the per-request token was spent
    // and is not kept, and the run says so (not that it is sent again).
    let served = endless_front(gateway_url, true, StatusCode::OK).await;
    let url = format!("{served}/api/weather?city=bodo");
    let out = run(
        data.path(),
        &["get", "-o", "/dev/null", "--max-time", "3", &url],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(28), "{stderr}");
    assert!(
        stderr.contains("nothing is kept for a next run"),
        "{stderr}"
    );
    assert!(!stderr.contains("sends it again"), "{stderr}");
    gateway.shutdown().await.unwrap();
}

/// A field value with bytes past ASCII is shown (`-i`, `--json`), not
/// left empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_field_value_past_ascii_is_shown() {
    let app = Router::new().route(
        "/",
        get(|| async {
            let value = axum::http::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap();
            (
                [(axum::http::HeaderName::from_static("x-name"), value)],
                "ok",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, app).into_future());
    let data = tempfile::tempdir().unwrap();
    let out = run(data.path(), &["get", "-i", &url]).await;
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("x-name: caf\u{e9}"), "{stdout}");
    let out = run(data.path(), &["get", "--json", &url]).await;
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["headers"]["x-name"], "caf\u{e9}", "{said}");
}

/// A data dir that is a file is said to be one, whatever the command,
/// not as the first file that could not be read in it.
#[test]
fn a_data_dir_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notadir");
    std::fs::write(&file, "x").unwrap();
    for args in [
        &["get", "http://127.0.0.1:9/"][..],
        &["receipts"],
        &["serve"],
    ] {
        let out = gate402(&file, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains(&format!(
                "the data dir {} is not a directory",
                file.display()
            )),
            "{args:?}: {stderr}"
        );
    }
}
