//! `gate402 decode` from the command line, on every kind of value a 402
//! exchange produces (made here with the protocol crates and a real signed
//! regtest invoice), on every challenge of the public MPP vectors (whose
//! requests are often placeholders), and on malformed ones.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use gate402_l402::caveat::{Caveat, Service};
use gate402_l402::{mint, L402Challenge, L402Credential, Scheme};
use gate402_mpp::challenge::{to_header, ChallengeKey, NewChallenge};
use gate402_mpp::lightning::{ChargeRequest, Network, PreimagePayload, CHARGE, METHOD};
use gate402_mpp::{base64url, credential, receipt, PaymentCredential};
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use serde_json::Value;
use sha2::Digest;

const PREIMAGE: [u8; 32] = [0x5a; 32];

struct Exchange {
    www_authenticate_l402: String,
    www_authenticate_payment: String,
    l402_authorization: String,
    payment_authorization: String,
    receipt: String,
    invoice: String,
    macaroon: String,
    payment_hash: String,
}

fn invoice(amount_msat: u64, hash: [u8; 32]) -> String {
    let secp = Secp256k1::new();
    let key = SecretKey::from_slice(&[0x11; 32]).unwrap();
    InvoiceBuilder::new(Currency::Regtest)
        .description("Weather report".into())
        .payment_hash(sha256::Hash::from_byte_array(hash))
        .payment_secret(PaymentSecret([3; 32]))
        .current_timestamp()
        .min_final_cltv_expiry_delta(18)
        .amount_milli_satoshis(amount_msat)
        .expiry_time(Duration::from_secs(3600))
        .build_signed(|h| secp.sign_ecdsa_recoverable(h, &key))
        .unwrap()
        .to_string()
}

fn exchange() -> Exchange {
    let hash: [u8; 32] = sha2::Sha256::digest(PREIMAGE).into();
    let invoice = invoice(21_000, hash);
    let minted = mint(
        hash,
        "lsat",
        &[
            Caveat::services(&[Service::new("weather")]),
            Caveat::valid_until("weather", 4_000_000_000),
        ],
    );
    let l402 = L402Challenge {
        macaroon: minted.macaroon.clone(),
        invoice: invoice.clone(),
    };
    let request = ChargeRequest::new(
        21,
        Some("Weather report".into()),
        &invoice,
        &hash,
        Network::Regtest,
    )
    .to_value();
    let payment = ChallengeKey::new("decode-test-secret-of-32-bytes-or-more")
        .unwrap()
        .issue(NewChallenge {
            realm: "api.example.com",
            method: METHOD,
            intent: CHARGE,
            request: &request,
            expires: Some(time::OffsetDateTime::now_utc() + time::Duration::minutes(10)),
            digest: None,
            description: Some("Weather report"),
            opaque: None,
            header: None,
        });
    let l402_credential = L402Credential {
        scheme: Scheme::L402,
        macaroons: vec![minted.macaroon.clone()],
        preimage: PREIMAGE,
    };
    let payment_credential =
        PaymentCredential::new(payment.to_echo(), PreimagePayload::new(&PREIMAGE));
    Exchange {
        www_authenticate_l402: l402.to_header(Scheme::L402),
        www_authenticate_payment: to_header(&payment).unwrap(),
        l402_authorization: l402_credential.to_authorization(),
        payment_authorization: credential::to_authorization(&payment_credential),
        receipt: receipt::to_header(&receipt::lightning(
            &hash,
            Some(&payment.id),
            time::OffsetDateTime::now_utc(),
        )),
        invoice,
        macaroon: minted.macaroon.to_base64(),
        payment_hash: hex::encode(hash),
    }
}

fn gate402(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gate402 runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn decode_json(value: &str) -> Value {
    let out = gate402(&["decode", "--json", value], None);
    assert!(
        out.status.success(),
        "decode {value}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn decode_text(value: &str) -> String {
    let out = gate402(&["decode", value], None);
    assert!(
        out.status.success(),
        "decode {value}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn both_challenges_in_one_line_and_in_several() {
    let x = exchange();
    let joined = format!(
        "{}, {}",
        x.www_authenticate_l402, x.www_authenticate_payment
    );
    let lines = format!(
        "WWW-Authenticate: {}\nWWW-Authenticate: {}\n",
        x.www_authenticate_l402, x.www_authenticate_payment
    );
    for report in [decode_json(&joined), decode_json(&lines)] {
        assert_eq!(report["kind"], "www-authenticate");
        let [l402, payment] = report["challenges"].as_array().unwrap().as_slice() else {
            panic!("two challenges expected: {report}");
        };
        assert_eq!(l402["scheme"], "L402");
        assert_eq!(l402["params"]["version"], "0");
        assert_eq!(l402["macaroon"]["location"], "lsat");
        assert_eq!(l402["macaroon"]["identifier"]["version"], 0);
        assert_eq!(
            l402["macaroon"]["identifier"]["payment_hash"],
            x.payment_hash
        );
        assert_eq!(l402["macaroon"]["caveats"][0], "services=weather:0");
        assert_eq!(l402["invoice"]["amount_msat"], 21_000);
        assert_eq!(l402["invoice"]["network"], "regtest");
        assert_eq!(l402["invoice_matches_macaroon"], true);
        assert_eq!(payment["scheme"], "Payment");
        assert_eq!(payment["params"]["method"], "lightning");
        assert_eq!(payment["request"]["amount"], "21");
        assert_eq!(
            payment["request"]["methodDetails"]["paymentHash"],
            x.payment_hash
        );
        assert_eq!(payment["invoice"]["description"], "Weather report");
        assert_eq!(payment["invoice_matches_request"], true);
        assert_eq!(payment["expired"], false);
    }
    let text = decode_text(&joined);
    assert!(text.contains("invoice_matches_macaroon: yes"), "{text}");
    assert!(
        text.contains(&format!("payment_hash: {}", x.payment_hash)),
        "{text}"
    );
}

/// `curl -si URL | gate402 decode -`: the status line, the other fields
/// and the body are passed over; so is an earlier response of a redirect.
#[test]
fn a_response_as_curl_prints_it() {
    let x = exchange();
    let response = format!(
        "HTTP/1.1 302 Found\r\nLocation: /paid\r\n\r\nHTTP/1.1 402 Payment Required\r\ncontent-type: application/problem+json\r\nwww-authenticate: {}\r\nWWW-Authenticate: {}\r\ncontent-length: 2\r\n\r\n{{}}\n",
        x.www_authenticate_l402, x.www_authenticate_payment
    );
    let out = gate402(&["decode", "--json", "-"], Some(&response));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "www-authenticate");
    let schemes: Vec<&str> = report["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["scheme"].as_str().unwrap())
        .collect();
    assert_eq!(schemes, ["L402", "Payment"]);
    // A paid answer: its receipt.
    let paid = format!(
        "HTTP/1.1 200 OK\r\nPayment-Receipt: {}\r\ncontent-length: 2\r\n\r\n{{}}\n",
        x.receipt
    );
    let out = gate402(&["decode", "--json", "-"], Some(&paid));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "receipt");
    assert_eq!(report["receipt"]["reference"], x.payment_hash);
    let out = gate402(
        &["decode", "-"],
        Some("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no WWW-Authenticate or Payment-Receipt field"),
        "{stderr}"
    );
}

#[test]
fn l402_authorization() {
    let x = exchange();
    let report = decode_json(&format!("Authorization: {}", x.l402_authorization));
    assert_eq!(report["kind"], "authorization");
    assert_eq!(report["scheme"], "L402");
    assert_eq!(report["preimage"], hex::encode(PREIMAGE));
    assert_eq!(report["preimage_matches_payment_hash"], true);
    assert_eq!(
        report["macaroons"][0]["identifier"]["payment_hash"],
        x.payment_hash
    );
    let lsat = decode_json(&x.l402_authorization.replacen("L402", "LSAT", 1));
    assert_eq!(lsat["scheme"], "LSAT");
}

#[test]
fn payment_authorization() {
    let x = exchange();
    let report = decode_json(&x.payment_authorization);
    assert_eq!(report["scheme"], "Payment");
    assert_eq!(
        report["credential"]["payload"]["preimage"],
        hex::encode(PREIMAGE)
    );
    assert_eq!(report["request"]["currency"], "sat");
    assert_eq!(report["invoice_matches_request"], true);
    assert_eq!(report["preimage_matches_payment_hash"], true);
}

#[test]
fn receipt_macaroon_and_invoice() {
    let x = exchange();
    let report = decode_json(&x.receipt);
    assert_eq!(report["kind"], "receipt");
    assert_eq!(report["receipt"]["reference"], x.payment_hash);
    assert_eq!(report["receipt"]["status"], "success");
    assert!(report["receipt"]["challengeId"].is_string());
    assert_eq!(
        decode_json(&format!("Payment-Receipt: {}", x.receipt))["kind"],
        "receipt"
    );

    let report = decode_json(&x.macaroon);
    assert_eq!(report["kind"], "macaroon");
    assert_eq!(report["format"], "v2");
    assert_eq!(report["caveats"][1], "weather_valid_until=4000000000");

    let report = decode_json(&x.invoice);
    assert_eq!(report["kind"], "invoice");
    assert_eq!(report["amount_msat"], 21_000);
    assert_eq!(report["payment_hash"], x.payment_hash);
    assert_eq!(report["description"], "Weather report");
    assert_eq!(report["expiry_secs"], 3600);
    assert_eq!(report["expired"], false);
}

#[test]
fn grpc_metadata_macaroon() {
    let x = exchange();
    let mut macaroon = gate402_l402::Macaroon::from_base64(&x.macaroon).unwrap();
    macaroon.add_first_party_caveat(format!("preimage={}", hex::encode(PREIMAGE)));
    let report = decode_json(&hex::encode(macaroon.to_bytes()));
    assert_eq!(report["form"], "grpc-metadata");
    assert_eq!(report["preimage_matches_payment_hash"], true);
}

#[test]
fn standard_input() {
    let x = exchange();
    let out = gate402(
        &["decode", "--json", "-"],
        Some(&format!("{}\n", x.invoice)),
    );
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "invoice");
}

#[test]
fn malformed_values_exit_2_with_one_line() {
    let x = exchange();
    let bad_preimage = format!("{}00", x.l402_authorization);
    let truncated_macaroon = x.macaroon[..x.macaroon.len() / 2].to_owned();
    let mut bad_invoice = x.invoice.clone();
    bad_invoice.truncate(bad_invoice.len() - 3);
    let cases: &[(&str, &str)] = &[
        ("", "nothing to decode"),
        ("hello", "not a WWW-Authenticate"),
        ("L402 garbage:00", "macaroon 1"),
        (&bad_preimage, "preimage"),
        ("Payment !!!", "base64url"),
        ("Payment e29vcHN9", "JSON"),
        (&truncated_macaroon, "macaroon"),
        (&bad_invoice, "BOLT11"),
        (
            "WWW-Authenticate: L402 macaroon=\"unterminated",
            "unterminated",
        ),
        ("Payment-Receipt: eyJub3QganNvbg", "Payment-Receipt"),
        ("Authorization: Bearer abc", "not L402"),
    ];
    for (value, needle) in cases {
        let out = gate402(&["decode", value], None);
        assert_eq!(out.status.code(), Some(2), "{value:?} should fail");
        assert!(out.stdout.is_empty(), "{value:?} printed to stdout");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{value:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{value:?}: {stderr:?} lacks {needle:?}"
        );
    }
    // A cause is said once: named in the text, it is not its source again.
    for value in ["Payment x", "Payment !!!"] {
        let stderr = String::from_utf8(gate402(&["decode", value], None).stderr).unwrap();
        assert_eq!(
            stderr.matches("invalid base64url").count(),
            1,
            "{value:?}: {stderr}"
        );
    }
}

/// An inner layer that did not decode: `{"error": "…"}` in its place.
fn layer_error(report: &Value, key: &str) -> String {
    report[key]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{key} should be an error field: {report}"))
        .to_owned()
}

#[test]
fn broken_inner_layers_are_fields_of_their_layer() {
    let x = exchange();
    // A macaroon cut short and no invoice: the challenge still shows.
    let report = decode_json("L402 macaroon=\"AgE\"");
    let l402 = &report["challenges"][0];
    assert_eq!(l402["params"]["macaroon"], "AgE");
    assert!(!layer_error(l402, "macaroon").is_empty());
    assert!(
        layer_error(l402, "invoice").contains("no invoice"),
        "{l402}"
    );

    // A request that is not JSON (the vectors' placeholder).
    let placeholder = "Payment id=\"a\", realm=\"r\", method=\"lightning\", intent=\"charge\", request=\"Q0hBUkdF\"";
    let report = decode_json(placeholder);
    let payment = &report["challenges"][0];
    assert_eq!(payment["params"]["id"], "a");
    assert_eq!(payment["params"]["request"], "Q0hBUkdF");
    assert!(
        layer_error(payment, "request").starts_with("not JSON"),
        "{payment}"
    );
    let text = decode_text(placeholder);
    assert!(text.contains("  request: error: not JSON"), "{text}");
    assert!(text.contains("intent: charge"), "{text}");

    // JSON, but not a charge request; then a charge whose invoice is not one.
    let payment_with = |request: &Value| {
        let encoded = base64url::encode(&serde_json::to_vec(request).unwrap());
        format!("Payment id=\"a\", realm=\"r\", method=\"lightning\", intent=\"charge\", request=\"{encoded}\", expires=\"soon\"")
    };
    let report = decode_json(&payment_with(&serde_json::json!({"amount": "100"})));
    let payment = &report["challenges"][0];
    assert_eq!(payment["request"]["amount"], "100");
    assert!(layer_error(payment, "method_details").starts_with("not a Lightning charge request"));
    assert!(layer_error(payment, "expired").contains("RFC 3339"));
    let request = serde_json::json!({
        "amount": "100", "currency": "sat",
        "methodDetails": {"invoice": "lnbc1u1pexample", "paymentHash": "bc230847", "network": "mainnet"},
    });
    let report = decode_json(&payment_with(&request));
    let payment = &report["challenges"][0];
    assert_eq!(payment["request"], request);
    assert!(!layer_error(payment, "invoice").is_empty());
    assert!(payment.get("invoice_matches_request").is_none());
    let text = decode_text(&payment_with(&request));
    assert!(text.contains("  invoice: error: "), "{text}");

    // A credential echoing a request that is not JSON.
    let mut echoed =
        serde_json::to_value(credential::parse_authorization(&x.payment_authorization).unwrap())
            .unwrap();
    echoed["challenge"]["request"] = "Q0hBUkdF".into();
    let report = decode_json(&format!(
        "Payment {}",
        base64url::encode(&serde_json::to_vec(&echoed).unwrap())
    ));
    assert_eq!(report["credential"]["challenge"]["request"], "Q0hBUkdF");
    assert!(layer_error(&report, "request").starts_with("not JSON"));
}

#[test]
fn a_session_challenge_shows_its_request() {
    let hash: [u8; 32] = sha2::Sha256::digest(PREIMAGE).into();
    let deposit = invoice(60_000, hash);
    let request = serde_json::json!({
        "amount": "3",
        "currency": "sat",
        "depositAmount": "20",
        "depositInvoice": deposit,
        "idleTimeout": "300",
        "paymentHash": hex::encode(hash),
        "unitType": "token",
    });
    let challenge = ChallengeKey::new("decode-test-secret-of-32-bytes-or-more")
        .unwrap()
        .issue(NewChallenge {
            realm: "api.example.com",
            method: METHOD,
            intent: "session",
            request: &request,
            expires: None,
            digest: None,
            description: Some("Inference session"),
            opaque: None,
            header: None,
        });
    let header = to_header(&challenge).unwrap();
    let report = decode_json(&header);
    let session = &report["challenges"][0];
    assert_eq!(session["params"]["intent"], "session");
    assert_eq!(session["params"]["description"], "Inference session");
    assert_eq!(session["request"], request);
    assert_eq!(session["invoice"]["amount_msat"], 60_000);
    assert_eq!(session["invoice_matches_request"], true);
    let text = decode_text(&header);
    assert!(text.contains("intent: session"), "{text}");
    assert!(
        text.contains(&format!("depositInvoice: {deposit}")),
        "{text}"
    );
}

/// This crate's directory, read when the test runs rather than when it was
/// built: a build cache shared with a checkout elsewhere keeps the other
/// checkout's path in a test that was not rebuilt.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn vectors() -> Value {
    let path = std::env::var_os("GATE402_MPP_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir().join("../../../shared/vectors/aperture-mpp-vectors.json")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the conformance vectors at {}: {e}",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("vectors are JSON")
}

/// What each challenge of a decoded list must show: its parameters as
/// tokenized, and for a `Payment` challenge each layer that decodes, or
/// the reason it does not in that layer's place.
fn check_decoded(name: &str, header: &str, report: &Value, text: &str) {
    let tokenized = gate402_http_auth::parse_challenges(header).unwrap();
    let decoded = report["challenges"].as_array().unwrap();
    assert_eq!(decoded.len(), tokenized.len(), "{name}: {report}");
    for (c, d) in tokenized.iter().zip(decoded) {
        assert_eq!(d["scheme"], c.scheme.as_str(), "{name}");
        for (key, value) in c.params.iter() {
            let key = key.to_ascii_lowercase();
            if c.param(&key) == Some(value) {
                assert_eq!(d["params"][&key], value, "{name}: {key}");
                if !value.contains('\n') {
                    assert!(
                        text.contains(&format!("{key}: {value}\n")),
                        "{name}: {key} in {text}"
                    );
                }
            }
        }
        if !c.is_scheme("Payment") {
            continue;
        }
        let Ok(payment) = gate402_mpp::challenge::from_challenge(c) else {
            assert!(
                d["error"].as_str().unwrap().contains("lacks"),
                "{name}: {d}"
            );
            assert!(
                text.contains("error: Payment challenge lacks"),
                "{name}: {text}"
            );
            continue;
        };
        match base64url::decode_json_object(payment.request.raw()) {
            Ok(request) => assert_eq!(d["request"], request, "{name}"),
            Err(_) => {
                assert!(!layer_error(d, "request").is_empty(), "{name}: {d}");
                assert!(text.contains("request: error: "), "{name}: {text}");
            }
        }
        if let Some(invoice) = d["request"]["methodDetails"]["invoice"]
            .as_str()
            .or(d["request"]["depositInvoice"].as_str())
        {
            if gate402_bolt11::Invoice::parse(invoice).is_err() {
                assert!(!layer_error(d, "invoice").is_empty(), "{name}: {d}");
                assert!(text.contains("invoice: error: "), "{name}: {text}");
            }
        }
    }
}

#[test]
fn every_vector_challenge_and_list_decodes() {
    let vectors = vectors();
    let mut seen = 0;
    for case in vectors["challengeHeaders"].as_array().unwrap() {
        let (name, header) = (&case["name"], case["header"].as_str().unwrap());
        let report = decode_json(header);
        let text = decode_text(header);
        check_decoded(&name.to_string(), header, &report, &text);
        let shown = &report["challenges"][0]["params"];
        for (key, value) in case["params"].as_object().unwrap() {
            assert_eq!(&shown[key], value, "{name}: {key}");
        }
        seen += 1;
    }
    for case in vectors["challengeLists"].as_array().unwrap() {
        let (name, header) = (&case["name"], case["header"].as_str().unwrap());
        let report = decode_json(header);
        let text = decode_text(header);
        check_decoded(&name.to_string(), header, &report, &text);
        // Every challenge the vectors expect is there, parameters and all.
        for expected in case["challenges"].as_array().into_iter().flatten() {
            let found = report["challenges"].as_array().unwrap().iter().any(|d| {
                expected
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(key, value)| &d["params"][key] == value)
            });
            assert!(found, "{name}: {expected} not in {report}");
        }
        seen += 1;
    }
    assert_eq!(seen, 17, "every challenge and list case was run");
}

/// Runs `gate402 ARGS` with its standard output a pipe whose reader has
/// already gone (`… | head` after `head` left): every write to it fails.
fn with_reader_gone(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .args(args)
        .env_remove("GATE402_CLIENT_CONFIG")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_stopped_reading_ends_a_command_quietly() {
    let x = exchange();
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[[services]]\nname = \"api\"\npath = \"/api\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 5\n",
    )
    .unwrap();
    let config = config.path().to_str().unwrap();
    let commands: [&[&str]; 5] = [
        &["decode", &x.macaroon],
        &["decode", "--json", &x.invoice],
        &["--data-dir", data, "serve", "--check", "--config", config],
        &["--data-dir", data, "receipts", "--json"],
        &["--data-dir", data, "sessions", "list", "--json"],
    ];
    for args in commands {
        // What it prints when someone reads it...
        let read = Command::new(env!("CARGO_BIN_EXE_gate402"))
            .args(args)
            .env_remove("GATE402_CLIENT_CONFIG")
            .output()
            .unwrap();
        assert!(
            read.status.success() && !read.stdout.is_empty(),
            "{args:?} prints nothing to read: {}",
            String::from_utf8_lossy(&read.stderr)
        );
        // ...and when no one does: status 0, no panic, no message.
        let gone = with_reader_gone(args);
        let stderr = String::from_utf8_lossy(&gone.stderr);
        assert_eq!(gone.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// What a server wrote (a challenge's realm and description, a request's
/// fields) is shown with its control characters replaced: a hostile 402
/// cannot retitle, recolour or rewrite the terminal through `decode`.
#[test]
fn a_servers_words_cannot_drive_the_terminal() {
    use base64::Engine as _;
    let hostile = "\u{1b}]0;PWNED\u{7}\u{1b}[31mred\r\u{1b}[2K";
    let request = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::json!({"amount": hostile, "currency": "sat"}).to_string());
    let challenge = format!(
        "Payment id=\"x\", realm=\"{hostile}\", method=\"lightning\", intent=\"charge\", request=\"{request}\", description=\"{hostile}\""
    );
    let shown = decode_text(&challenge);
    for control in ['\u{1b}', '\u{7}', '\r'] {
        assert!(!shown.contains(control), "{control:?} in {shown:?}");
    }
    assert!(shown.contains("PWNED"), "{shown}");
}
