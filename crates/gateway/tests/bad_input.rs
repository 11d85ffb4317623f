//! A corpus of malformed requests against the demo gateway, sent as raw
//! bytes (so invalid UTF-8, duplicated headers and broken framing reach
//! the server as written): truncated and mangled L402 tokens, MPP
//! credentials with every field wrong, odd headers, bad bodies for the
//! sandbox payer and the MCP endpoint. Each must get a 4xx (a problem
//! document with a type wherever the gateway itself answers), never a
//! 5xx, a panic or a dropped connection; afterwards a genuine paid request
//! is still served, and the genuine credential is served exactly once.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use gate402_client::Offer;
use gate402_gateway::{demo, Gateway};
use gate402_lightning_sandbox::http::pay_via;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a case must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// A 4xx problem document with a `type` (the gateway answered).
    Problem,
    /// Any 4xx (the HTTP parser or the MCP transport refused it first).
    Refused,
}

struct Case {
    name: String,
    request: Vec<u8>,
    expect: Expect,
}

const WEATHER: &str = "/api/weather?city=Oslo";

fn get_with(path: &str, headers: &[&[u8]]) -> Vec<u8> {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n").into_bytes();
    for header in headers {
        request.extend_from_slice(header);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn authorization(value: &[u8]) -> Vec<u8> {
    [b"Authorization: ".as_slice(), value].concat()
}

fn b64url(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Sends raw bytes; returns the status and the body.
async fn send(addr: std::net::SocketAddr, request: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    match read {
        Ok(Ok(_)) => {}
        // The server may close while the rest of a huge request is unread.
        Ok(Err(_)) if !answer.is_empty() => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer within 10 s".into()),
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or_else(Vec::new, |at| answer[at + 4..].to_vec());
    Ok((status, body))
}

/// The L402 and MPP parts of a paid 402, to mangle.
struct Genuine {
    macaroon: String,
    preimage: String,
    credential: String,
    credential_json: Value,
}

async fn genuine(base: &str) -> Genuine {
    let http = reqwest::Client::new();
    let response = http.get(format!("{base}{WEATHER}")).send().await.unwrap();
    let offer = Offer::from_headers(response.headers()).unwrap();
    let paid = pay_via(&http, base, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    let macaroon = l402
        .strip_prefix("L402 ")
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let credential = offer
        .payment_authorization(&preimage)
        .unwrap()
        .strip_prefix("Payment ")
        .unwrap()
        .to_owned();
    let credential_json = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&credential).unwrap())
        .expect("a credential is base64url JSON");
    Genuine {
        macaroon,
        preimage: paid.preimage,
        credential,
        credential_json,
    }
}

fn l402_cases(g: &Genuine) -> Vec<(String, Vec<u8>)> {
    let (m, p) = (g.macaroon.as_str(), g.preimage.as_str());
    let raw = URL_SAFE_NO_PAD
        .decode(m.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(m))
        .unwrap();
    let mut flipped = raw.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut other_preimage = hex::decode(p).unwrap();
    other_preimage[0] ^= 0xff;
    let values: Vec<(&str, String)> = vec![
        ("scheme only", "L402".into()),
        ("scheme and space", "L402 ".into()),
        ("lone colon", "L402 :".into()),
        ("no colon", format!("L402 {m}")),
        ("empty preimage", format!("L402 {m}:")),
        ("empty macaroon", format!("L402 :{p}")),
        ("preimage 31 bytes", format!("L402 {m}:{}", &p[..62])),
        ("preimage 33 bytes", format!("L402 {m}:{p}00")),
        ("preimage odd length", format!("L402 {m}:{}", &p[..63])),
        ("preimage not hex", format!("L402 {m}:{}", "zz".repeat(32))),
        (
            "wrong preimage",
            format!("L402 {m}:{}", hex::encode(&other_preimage)),
        ),
        (
            // A character of data, not a `=` of padding (without it the
            // base64 still spells the same token).
            "macaroon truncated by one",
            format!("L402 {}:{p}", {
                let bare = m.trim_end_matches('=');
                &bare[..bare.len() - 1]
            }),
        ),
        (
            "macaroon truncated in half",
            format!("L402 {}:{p}", &m[..m.len() / 2]),
        ),
        (
            "macaroon with garbage appended",
            format!("L402 {m}AAAA:{p}"),
        ),
        (
            "macaroon signature flipped",
            format!("L402 {}:{p}", STANDARD.encode(&flipped)),
        ),
        ("macaroon not base64", format!("L402 !!!$$$***:{p}")),
        (
            "macaroon of random bytes",
            format!("L402 {}:{p}", STANDARD.encode([7u8; 120])),
        ),
        (
            "macaroon of zeros, 6 KB",
            format!("L402 {}:{p}", STANDARD.encode(vec![0u8; 6000])),
        ),
        ("two macaroons", format!("L402 {m},{m}:{p}")),
        ("empty second macaroon", format!("L402 {m},:{p}")),
        ("three colons", format!("L402 {m}:{p}:{p}")),
        (
            "param form",
            format!("L402 macaroon=\"{m}\", preimage=\"{p}\""),
        ),
        ("LSAT with junk", "LSAT abc:def".into()),
        (
            "tab separated, wrong preimage",
            format!("L402\t{m} :{}", hex::encode(&other_preimage)),
        ),
        (
            "space inside the preimage",
            format!("L402 {m}:{} {}", &p[..32], &p[32..]),
        ),
        ("macaroon as hex", format!("L402 {}:{p}", hex::encode(&raw))),
        ("unicode in preimage", format!("L402 {m}:{}é", &p[..62])),
        (
            "lowercase scheme, wrong preimage",
            format!("l402 {m}:{}", hex::encode(&other_preimage)),
        ),
        (
            "LSAT scheme, wrong preimage",
            format!("LSAT {m}:{}", hex::encode(&other_preimage)),
        ),
    ];
    values
        .into_iter()
        .map(|(name, value)| (format!("L402: {name}"), authorization(value.as_bytes())))
        .collect()
}

fn mpp_cases(g: &Genuine) -> Vec<(String, Vec<u8>)> {
    let c = &g.credential_json;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut value = c.clone();
        edit(&mut value);
        format!("Payment {}", b64url(&value))
    };
    let cred = g.credential.as_str();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let values: Vec<(&str, String)> = vec![
        ("scheme only", "Payment".into()),
        ("scheme and space", "Payment ".into()),
        ("not base64", "Payment !!!***".into()),
        (
            "base64 of text",
            format!("Payment {}", URL_SAFE_NO_PAD.encode("hello")),
        ),
        (
            "base64 of an array",
            format!("Payment {}", b64url(&json!([1, 2]))),
        ),
        (
            "base64 of a number",
            format!("Payment {}", b64url(&json!(42))),
        ),
        ("empty object", format!("Payment {}", b64url(&json!({})))),
        (
            "truncated by one",
            format!("Payment {}", &cred[..cred.len() - 1]),
        ),
        (
            "truncated in half",
            format!("Payment {}", &cred[..cred.len() / 2]),
        ),
        (
            "space inside",
            format!("Payment {} {}", &cred[..20], &cred[20..]),
        ),
        (
            "standard alphabet, wrong preimage",
            format!(
                "Payment {}",
                STANDARD.encode({
                    let mut v = c.clone();
                    v["payload"]["preimage"] = json!("11".repeat(32));
                    v.to_string()
                })
            ),
        ),
        ("param form", format!("Payment credential=\"{cred}\"")),
        (
            "no challenge",
            with(&|v| drop(v.as_object_mut().unwrap().remove("challenge"))),
        ),
        (
            "no payload",
            with(&|v| drop(v.as_object_mut().unwrap().remove("payload"))),
        ),
        (
            "challenge is a string",
            with(&|v| v["challenge"] = json!("x")),
        ),
        ("payload is a string", with(&|v| v["payload"] = json!("x"))),
        ("no preimage", with(&|v| v["payload"] = json!({}))),
        (
            "preimage 31 bytes",
            with(&|v| v["payload"]["preimage"] = json!("ab".repeat(31))),
        ),
        (
            "preimage not hex",
            with(&|v| v["payload"]["preimage"] = json!("zz".repeat(32))),
        ),
        (
            "preimage a number",
            with(&|v| v["payload"]["preimage"] = json!(7)),
        ),
        (
            "wrong preimage",
            with(&|v| v["payload"]["preimage"] = json!("00".repeat(32))),
        ),
        (
            "challenge id changed",
            with(&|v| v["challenge"]["id"] = json!("AAAA")),
        ),
        (
            "challenge id missing",
            with(&|v| drop(v["challenge"].as_object_mut().unwrap().remove("id"))),
        ),
        (
            "realm changed",
            with(&|v| v["challenge"]["realm"] = json!("evil.example")),
        ),
        (
            "method changed",
            with(&|v| v["challenge"]["method"] = json!("tempo")),
        ),
        (
            "intent changed",
            with(&|v| v["challenge"]["intent"] = json!("session")),
        ),
        (
            "request not base64",
            with(&|v| v["challenge"]["request"] = json!("%%%")),
        ),
        (
            "request of another amount",
            with(&|v| {
                v["challenge"]["request"] =
                    json!(b64url(&json!({"amount": "1", "currency": "sat"})))
            }),
        ),
        (
            "expires garbage",
            with(&|v| v["challenge"]["expires"] = json!("yesterday")),
        ),
        (
            "expired",
            with(&|v| v["challenge"]["expires"] = json!("2001-01-01T00:00:00Z")),
        ),
        (
            "opaque not base64",
            with(&|v| v["challenge"]["opaque"] = json!("***")),
        ),
        (
            "realm a number",
            with(&|v| v["challenge"]["realm"] = json!(7)),
        ),
        (
            "huge source field",
            with(&|v| v["source"] = json!("x".repeat(40_000))),
        ),
        (
            "deeply nested",
            format!("Payment {}", URL_SAFE_NO_PAD.encode(&deep)),
        ),
    ];
    let mut cases: Vec<(String, Vec<u8>)> = values
        .into_iter()
        .map(|(name, value)| (format!("MPP: {name}"), authorization(value.as_bytes())))
        .collect();
    let duplicated_key =
        c.to_string()
            .replacen("{\"challenge\":", "{\"payload\":{},\"challenge\":", 1);
    cases.push((
        "MPP: duplicated key".into(),
        authorization(format!("Payment {}", URL_SAFE_NO_PAD.encode(duplicated_key)).as_bytes()),
    ));
    let mut invalid_utf8 = b"{\"challenge\":\"".to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(b"\"}");
    cases.push((
        "MPP: JSON with invalid UTF-8".into(),
        authorization(format!("Payment {}", URL_SAFE_NO_PAD.encode(invalid_utf8)).as_bytes()),
    ));
    cases
}

fn header_cases(g: &Genuine) -> Vec<(String, Vec<u8>, Expect)> {
    let cred = &g.credential;
    let mut cases: Vec<(String, Vec<u8>, Expect)> = vec![
        ("unknown scheme", b"Authorization: Bearer abc".to_vec()),
        ("basic auth", b"Authorization: Basic dXNlcjpwYXNz".to_vec()),
        ("empty authorization", b"Authorization: ".to_vec()),
        (
            "invalid UTF-8 in L402",
            b"Authorization: L402 \xff\xfe:\xc3\x28".to_vec(),
        ),
        (
            "invalid UTF-8 in Payment",
            b"Authorization: Payment \xff\xfe\xfd".to_vec(),
        ),
        (
            "Payment-Authorization garbage",
            b"Payment-Authorization: Payment @@@".to_vec(),
        ),
        (
            "Accept-Payment garbage",
            b"Accept-Payment: ;;;===,,".to_vec(),
        ),
        (
            "Accept-Payment invalid UTF-8",
            b"Accept-Payment: \xff\xfe".to_vec(),
        ),
        (
            "Accept-Payment 8 KB",
            [b"Accept-Payment: ".as_slice(), &[b'a'; 8000]].concat(),
        ),
        (
            "authorization 60 KB",
            [b"Authorization: Payment ".as_slice(), &[b'A'; 60_000]].concat(),
        ),
    ]
    .into_iter()
    .map(|(name, header)| {
        (
            format!("header: {name}"),
            get_with(WEATHER, &[&header]),
            Expect::Problem,
        )
    })
    .collect();
    cases.push((
        "header: two Authorization headers, both bad".into(),
        get_with(
            WEATHER,
            &[
                b"Authorization: L402 abc:def",
                b"Authorization: Payment xyz",
            ],
        ),
        Expect::Problem,
    ));
    cases.push((
        "header: a weather credential on the translate route".into(),
        format!(
            "POST /api/translate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Payment {cred}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        )
        .into_bytes(),
        Expect::Problem,
    ));
    cases.push((
        "header: 200 KB of headers".into(),
        get_with(
            WEATHER,
            &[&[b"X-Filler: ".as_slice(), &[b'a'; 200_000]].concat()],
        ),
        Expect::Refused,
    ));
    cases.push((
        "header: NUL in a value".into(),
        get_with(WEATHER, &[b"Authorization: L402 a\0b:c"]),
        Expect::Refused,
    ));
    cases.push((
        "header: no colon".into(),
        get_with(WEATHER, &[b"Authorization L402 abc"]),
        Expect::Refused,
    ));
    cases.push((
        "framing: Content-Length not a number".into(),
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: ten\r\n\r\n".to_vec(),
        Expect::Refused,
    ));
    cases.push((
        "framing: two Content-Lengths".into(),
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
        Expect::Refused,
    ));
    cases.push((
        "framing: bad chunk size".into(),
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        Expect::Refused,
    ));
    cases.push((
        "framing: garbage request line".into(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        Expect::Refused,
    ));
    cases
}

fn body_cases() -> Vec<(String, Vec<u8>, Expect)> {
    let pay = |name: &str, body: &[u8]| {
        (
            format!("sandbox payer: {name}"),
            post("/sandbox/pay", "application/json", body),
            Expect::Problem,
        )
    };
    let mcp = |name: &str, content_type: &str, body: &[u8]| {
        (
            format!("MCP: {name}"),
            post("/mcp", content_type, body),
            Expect::Refused,
        )
    };
    vec![
        pay("empty body", b""),
        pay("not JSON", b"invoice please"),
        pay("JSON array", b"[]"),
        pay("invoice missing", b"{}"),
        pay("invoice a number", b"{\"invoice\": 5}"),
        pay("invoice garbage", b"{\"invoice\": \"lnbcrt1garbage\"}"),
        pay("mainnet-looking invoice", b"{\"invoice\": \"lnbc1pvjluezsp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygspp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdpl2pkx2ctnv5sxxmmwwd5kgetjypeh2ursdae8g6twvus8g6rfwvs8qun0dfjkxaq9qrsgq357wnc5r2ueh7ck6q93dj32dlqnls087fxdwk8qakdyafkq3yap9us6v52vjjsrvywa6rt52cm9r9zqt8r2t7mlcwspyetp5h2tztugp9lfyql\"}"),
        pay("invalid UTF-8", b"{\"invoice\": \"\xff\xfe\"}"),
        pay("truncated JSON", b"{\"invoice\": \"lnbcrt"),
        pay("invoice 100 KB", format!("{{\"invoice\": \"lnbcrt{}\"}}", "q".repeat(100_000)).as_bytes()),
        mcp("not JSON", "application/json", b"hello"),
        mcp("empty body", "application/json", b""),
        mcp("JSON array of garbage", "application/json", b"[1, 2, 3]"),
        mcp("no jsonrpc version", "application/json", b"{\"id\": 1, \"method\": \"tools/list\"}"),
        mcp("call before initialize", "application/json", b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"tools/call\", \"params\": {\"name\": \"weather\"}}"),
        mcp("wrong content type", "text/plain", b"{}"),
        mcp("invalid UTF-8", "application/json", b"{\"jsonrpc\": \"\xff\"}"),
        mcp("deeply nested", "application/json", format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_malformed_input_gets_a_4xx_and_nothing_is_lost() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&demo::config(upstream), dir.path())
        .await
        .unwrap();
    let base = format!("http://{}", gateway.addr());
    let g = genuine(&base).await;

    let mut cases: Vec<Case> = Vec::new();
    for (name, header) in l402_cases(&g).into_iter().chain(mpp_cases(&g)) {
        cases.push(Case {
            name,
            request: get_with(WEATHER, &[&header]),
            expect: Expect::Problem,
        });
    }
    for (name, request, expect) in header_cases(&g).into_iter().chain(body_cases()) {
        cases.push(Case {
            name,
            request,
            expect,
        });
    }
    assert!(cases.len() >= 100, "only {} cases", cases.len());

    let mut failures = Vec::new();
    for case in &cases {
        match send(gateway.addr(), &case.request).await {
            Err(e) => failures.push(format!("{}: {e}", case.name)),
            Ok((status, _)) if !(400..500).contains(&status) => {
                failures.push(format!("{}: status {status}", case.name))
            }
            Ok((status, body)) => {
                if let Expect::Problem = case.expect {
                    let problem: Option<Value> = serde_json::from_slice(&body).ok();
                    let typed = problem
                        .as_ref()
                        .and_then(|p| p["type"].as_str())
                        .is_some_and(|t| !t.is_empty());
                    if !typed {
                        failures.push(format!(
                            "{}: {status} without a problem type: {}",
                            case.name,
                            String::from_utf8_lossy(&body)
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing was lost: the genuine payment still buys its one request,
    // through either door, and then no more.
    let http = reqwest::Client::new();
    let paid = |value: String| {
        http.get(format!("{base}{WEATHER}"))
            .header("Authorization", value)
            .send()
    };
    let l402 = format!("L402 {}:{}", g.macaroon, g.preimage);
    let mpp = format!("Payment {}", g.credential);
    assert_eq!(paid(mpp.clone()).await.unwrap().status(), 200);
    assert_eq!(paid(mpp).await.unwrap().status(), 402);
    assert_eq!(paid(l402).await.unwrap().status(), 402);
    // A transfer coding the server does not take off would reach the
    // upstream as the body: refused as such, before any price.
    let (status, body) = send(
        gateway.addr(),
        b"POST /api/translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Transfer-Encoding may be chunked alone"),
        "{body}"
    );
    eprintln!("{} malformed inputs, each refused with a 4xx", cases.len());

    // A paid request whose own chunked body breaks off on its way to the
    // upstream (a body not read first: no field a rule or `_method` could
    // hold) is the client's fault: a 400, and its payment is given back for
    // a retry, counted among the failures a payment is given back for (the
    // upstream had part of it), the third of which would spend it.
    let buy = || async {
        let unpaid = http
            .post(format!("{base}/api/translate"))
            .body("{}")
            .send()
            .await
            .unwrap();
        let offer = Offer::from_headers(unpaid.headers()).unwrap();
        let paid_for = pay_via(&http, &base, &offer.bolt11).await.unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid_for.preimage, &mut preimage).unwrap();
        offer.l402_authorization(&preimage).unwrap()
    };
    let mut token = buy().await;
    for attempt in 1..gate402_paywall::FAILURES_PER_PAYMENT {
        let request = format!(
            "POST /api/translate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {token}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{\"\r\nZZ\r\n"
        );
        let (status, body) = send(gateway.addr(), request.as_bytes()).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        // The demo upstream may refuse the type (its own 400, naming the
        // Content-Type it expects) before the body breaks: its answer was
        // served, and the payment with it; the next attempts need another.
        let refused_first = matches!(status, 400 | 415)
            && body.contains("Expected request with `Content-Type: application/json`");
        assert!(
            refused_first || (status == 400 && body.contains("request body")),
            "attempt {attempt}: {status} {body}"
        );
        if refused_first {
            token = buy().await;
        }
    }
    let served = http
        .post(format!("{base}/api/translate"))
        .header("Authorization", &token)
        .header("Content-Type", "application/json")
        .body(r#"{"text":"a b","to":"fr"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "{}", served.text().await.unwrap());
    gateway.shutdown().await.unwrap();
}
