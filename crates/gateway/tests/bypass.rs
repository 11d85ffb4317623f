//! Attempts to get priced content free, or for a cheaper price, through
//! the gateway in front of upstreams that normalize paths: python's
//! `http.server`, and a lenient upstream that does what lenient servers
//! do, all of it (decodes every `%XX` until nothing changes, reads `\` as
//! `/`, drops `;params`, resolves dot segments, merges `//`, folds case).
//!
//! Requests go out as raw bytes over HTTP/1.0 and 1.1 (a high-level client
//! would resolve `..` and re-encode before sending) and over h2c with
//! prior knowledge, unpaid and with genuine 1-sat credentials for the cheap
//! service. Every case is a row; a failure names its row, protocol and
//! credential, and all failures are reported together.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures_util::StreamExt;
use gate402_client::Offer;
use gate402_gateway::config::{Auth, HostPattern, Rewrite, ServiceConfig};
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_lightning_sandbox::http::pay_via;
use gate402_paywall::LimitsConfig;
use http_body_util::Empty;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

mod common;

/// What must never come back to someone who paid less than 1000 sat.
const MARKERS: [&str; 2] = ["PREMIUM-SECRET", "ADMIN-SECRET"];

/// The tree both upstreams serve.
const FILES: [(&str, &str); 4] = [
    ("premium/secret.txt", "PREMIUM-SECRET: sold for 1000 sat\n"),
    ("admin/secret.txt", "ADMIN-SECRET: sold for 1000 sat\n"),
    ("cheap/note.txt", "CHEAP-NOTE: sold for 1 sat\n"),
    ("public/readme.txt", "PUBLIC-README: free\n"),
];

/// Long enough for a loaded machine, short enough to call a hang a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Requests in flight at once (the per-client connection cap is 64).
const IN_FLIGHT: usize = 8;

// ---------------------------------------------------------------------------
// Upstreams

/// python's `http.server` over a temporary tree; killed when dropped.
struct Python {
    addr: SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn write_tree(root: &Path) {
    for (name, body) in FILES {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

impl Python {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path());
        // Port 0 and read the port back: no race for a free port.
        let mut child = tokio::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .arg("--directory")
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(ANSWER_WITHIN, lines.next_line())
            .await
            .expect("python3 -m http.server starts")
            .unwrap()
            .expect("python3 -m http.server says where it listens");
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port: u16 = line
            .split_once(" port ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        // Its stdout stays open so that a late print cannot kill it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
            _dir: dir,
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// One round of decoding as the most lenient servers do it: `%XX`, IIS's
/// `%uXXXX`, then overlong UTF-8 (`%c0%ae` is `.` to old decoders).
fn lenient_decode(input: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex_at = |from: usize, n: usize| -> Option<u32> {
                let digits = input.get(from..from + n)?;
                digits
                    .iter()
                    .try_fold(0u32, |v, b| Some(v << 4 | u32::from(hex_digit(*b)?)))
            };
            if let Some(v) = hex_at(i + 1, 2) {
                bytes.push(v as u8);
                i += 3;
                continue;
            }
            if matches!(input.get(i + 1), Some(b'u' | b'U')) {
                if let Some(c) = hex_at(i + 2, 4).and_then(char::from_u32) {
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    i += 6;
                    continue;
                }
            }
        }
        bytes.push(input[i]);
        i += 1;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let cont = |k: usize| bytes.get(i + k).is_some_and(|b| b & 0xc0 == 0x80);
        match bytes[i] {
            0xc0 | 0xc1 if cont(1) => {
                out.push((bytes[i] & 0x1f) << 6 | (bytes[i + 1] & 0x3f));
                i += 2;
            }
            0xe0 if cont(1) && bytes[i + 1] & 0x3f <= 1 && cont(2) => {
                out.push((bytes[i + 1] & 0x3f) << 6 | (bytes[i + 2] & 0x3f));
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The path a lenient server reads a request path as: the union of what
/// real ones do, and of a decoding proxy in front of a decoding app.
fn lenient_path(raw: &str) -> String {
    let mut bytes = raw.as_bytes().to_vec();
    for _ in 0..4 {
        let decoded = lenient_decode(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    // NUL ends a file name for C's file API; a server that decodes, then
    // parses the result as a URL again, ends the path at `?` or `#`.
    if let Some(end) = bytes.iter().position(|b| matches!(b, 0 | b'?' | b'#')) {
        bytes.truncate(end);
    }
    // Compatibility forms folded, as some frameworks do (`．．` is `..`,
    // `／` is `/`, `ｐ` is `p`), then Windows' best-fit reading of what
    // has no such form: accents dropped, `ı` as `i`, `∕` and `⁄` as `/`,
    // `∖` as `\`; then what is still not ASCII dropped, as slugifying
    // code does (a soft hyphen or a zero-width space vanishes).
    let text: String = {
        use unicode_normalization::char::is_combining_mark;
        use unicode_normalization::UnicodeNormalization;
        String::from_utf8_lossy(&bytes)
            .nfkd()
            .filter(|c| !is_combining_mark(*c))
            .map(|c| match c {
                '\u{0131}' => 'i',
                '\u{03C0}' => 'p',
                '\u{03B1}' => 'a',
                '\u{2215}' | '\u{2044}' => '/',
                '\u{2216}' | '\u{00A5}' | '\u{20A9}' => '\\',
                c => c,
            })
            .filter(char::is_ascii)
            .collect()
    };
    let text = text.replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    for segment in text.split('/') {
        // Servlet containers drop `;params` from every segment; Windows
        // drops trailing dots and spaces from file names, and reads
        // `name::$DATA` or `name:$I30:$INDEX_ALLOCATION` (an NTFS stream)
        // as `name`.
        let segment = segment.split(';').next().unwrap_or("");
        let segment = match segment {
            "." | ".." => segment,
            name if name.contains(":$") => name.split(':').next().unwrap_or(""),
            name => name.trim_end_matches(['.', ' ']),
        };
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => {
                let long = long_name(&segments, s);
                segments.push(long.unwrap_or(s).to_lowercase());
            }
        }
    }
    format!("/{}", segments.join("/"))
}

/// The name an 8.3 short name (`PREMIU~1`, `SECRET~1.TXT`) stands for
/// among the [`FILES`] under `parents`, as Windows reads one: the `n`-th
/// name there whose first characters (and extension's) are the short
/// one's. IIS cannot run here; this is its reading, made by hand.
fn long_name(parents: &[String], short: &str) -> Option<&'static str> {
    let (base, extension) = short.split_once('.').unwrap_or((short, ""));
    let (prefix, n) = base.rsplit_once('~')?;
    let n: usize = n.parse().ok()?;
    let depth = parents.len();
    let mut names: Vec<&str> = FILES
        .iter()
        .filter_map(|(path, _)| {
            let parts: Vec<&str> = path.split('/').collect();
            let under = parts.len() > depth
                && parts[..depth]
                    .iter()
                    .zip(parents)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b));
            under.then(|| parts[depth])
        })
        .filter(|name| {
            let (name_base, name_extension) = name.split_once('.').unwrap_or((name, ""));
            name_base.to_uppercase().starts_with(&prefix.to_uppercase())
                && name_extension
                    .to_uppercase()
                    .starts_with(&extension.to_uppercase())
        })
        .collect();
    names.dedup();
    names.get(n.checked_sub(1)?).copied()
}

/// Serves [`FILES`] at whatever [`lenient_path`] makes of the request, and
/// echoes what it received.
async fn lenient(request: Request<Body>) -> Response {
    let received = request
        .uri()
        .path_and_query()
        .map_or("", |p| p.as_str())
        .to_owned();
    let resolved = lenient_path(request.uri().path());
    let file = FILES
        .iter()
        .find(|(name, _)| resolved == format!("/{name}"))
        .map(|(_, body)| *body);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let status = if file.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let echo = json!({
        "received": received,
        "resolved": resolved,
        "headers": headers,
        "file": file,
    });
    (status, Json(echo)).into_response()
}

async fn start_lenient() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(lenient);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// An upstream for the rows to go through.
enum Upstream {
    Python(Box<Python>),
    Lenient(SocketAddr),
}

impl Upstream {
    fn addr(&self) -> SocketAddr {
        match self {
            Upstream::Python(p) => p.addr,
            Upstream::Lenient(addr) => *addr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    fn name(&self) -> &'static str {
        match self {
            Upstream::Python(_) => "python http.server",
            Upstream::Lenient(_) => "lenient upstream",
        }
    }
}

// ---------------------------------------------------------------------------
// Gateways

fn free(name: &str, path: &str, upstream: &str) -> ServiceConfig {
    let mut s = ServiceConfig::proxied(name, path, 1, upstream);
    s.priced.auth = Auth::Off;
    s
}

/// The layout; with `rewritten`, `cheap` is sold at `/v1/fc/*` and
/// forwarded under `/cheap`. `admin` is priced like `premium` so that
/// climbing out of `/cheap` into it is a bypass too.
fn services(upstream: &str, rewritten: bool) -> Vec<ServiceConfig> {
    let cheap = if rewritten {
        let mut s = ServiceConfig::proxied("cheap", "/v1/fc/*", 1, upstream);
        s.upstream.as_mut().unwrap().rewrite = Rewrite {
            strip_prefix: Some("/v1/fc".into()),
            add_prefix: Some("/cheap".into()),
        };
        s
    } else {
        ServiceConfig::proxied("cheap", "/cheap/*", 1, upstream)
    };
    vec![
        ServiceConfig::proxied("premium", "/premium/*", 1000, upstream),
        ServiceConfig::proxied("admin", "/admin/*", 1000, upstream),
        cheap,
        free("public", "/public/*", upstream),
        free("rest", "/*", upstream),
    ]
}

/// A running gateway, with a wallet of credentials for its cheap service.
struct Deployed {
    label: String,
    gateway: Gateway,
    wallet: Wallet,
    _dir: tempfile::TempDir,
}

async fn deploy(label: String, services: Vec<ServiceConfig>, cheap_path: &str) -> Deployed {
    let dir = tempfile::tempdir().unwrap();
    let mut config = GatewayConfig::default_with_services(services);
    // Sold as passes: the attacker's one L402 token then serves every
    // attempt, the strongest position to attack from.
    for service in &mut config.services {
        service.priced = service.priced.clone().pass(3600);
    }
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.mpp.realm = "api.test".into();
    // Hundreds of unpaid requests from one address are the point here.
    config.limits = LimitsConfig {
        client_requests_per_second: None,
        service_requests_per_second: None,
        unpaid_invoices_per_minute: None,
    };
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let wallet = Wallet::open(gateway.addr(), cheap_path).await;
    Deployed {
        label,
        gateway,
        wallet,
        _dir: dir,
    }
}

/// Genuine credentials bought at one path of a gateway: a reusable L402
/// token, and single-use MPP credentials bought as they get spent.
struct Wallet {
    base: String,
    path: String,
    http: reqwest::Client,
    l402: String,
    unspent_mpp: Mutex<Vec<String>>,
    bought: AtomicUsize,
}

impl Wallet {
    async fn open(addr: SocketAddr, path: &str) -> Self {
        let mut wallet = Self {
            base: format!("http://{addr}"),
            path: path.to_owned(),
            http: reqwest::Client::new(),
            l402: String::new(),
            unspent_mpp: Mutex::new(Vec::new()),
            bought: AtomicUsize::new(0),
        };
        // The pass's invoice buys the pass alone: its MPP credential is
        // spent by the pass's first use, so MPP credentials are bought on
        // invoices of their own.
        let (offer, preimage) = wallet.buy().await;
        wallet.l402 = offer.l402_authorization(&preimage).unwrap();
        wallet
    }

    async fn buy(&self) -> (Offer, [u8; 32]) {
        let response = self
            .http
            .get(format!("{}{}", self.base, self.path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 402, "{} is priced", self.path);
        let offer = Offer::from_headers(response.headers()).unwrap();
        let paid = pay_via(&self.http, &self.base, &offer.bolt11)
            .await
            .unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        self.bought.fetch_add(1, Ordering::Relaxed);
        (offer, preimage)
    }

    /// An MPP credential no request has spent yet.
    async fn mpp(&self) -> String {
        if let Some(credential) = self.unspent_mpp.lock().unwrap().pop() {
            return credential;
        }
        let (offer, preimage) = self.buy().await;
        offer.payment_authorization(&preimage).unwrap()
    }

    /// The `Authorization` field for `credential`, and the MPP credential
    /// to give back with [`Wallet::unspent`] if it was one.
    async fn present(&self, credential: Credential) -> (Vec<(String, String)>, Option<String>) {
        let mpp = match credential {
            Credential::CheapMpp => Some(self.mpp().await),
            _ => None,
        };
        let value = match credential {
            Credential::Unpaid => None,
            Credential::CheapL402 => Some(self.l402.clone()),
            Credential::CheapMpp => mpp.clone(),
        };
        let fields = value.map(|v| ("Authorization".to_owned(), v));
        (fields.into_iter().collect(), mpp)
    }

    /// Back to the wallet, unless a receipt says it was spent.
    fn unspent(&self, credential: String, answer: &Answer) {
        if answer.header("payment-receipt").is_none() {
            self.unspent_mpp.lock().unwrap().push(credential);
        }
    }
}

// ---------------------------------------------------------------------------
// Raw clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http10,
    Http11,
    H2c,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Http10 => "HTTP/1.0",
            Proto::Http11 => "HTTP/1.1",
            Proto::H2c => "h2c",
        })
    }
}

const PROTOCOLS: [Proto; 3] = [Proto::Http10, Proto::Http11, Proto::H2c];

/// A response as it came back.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A marker anywhere in the answer, headers included.
    fn marker(&self) -> Option<&'static str> {
        let body = self.text();
        MARKERS
            .into_iter()
            .find(|m| body.contains(m) || self.headers.iter().any(|(_, v)| v.contains(m)))
    }

    /// Where the lenient upstream says the request went.
    fn upstream_saw(&self) -> String {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(echo) if echo.get("received").is_some() => format!(
                "upstream received {} and read it as {}",
                echo["received"], echo["resolved"]
            ),
            _ => format!("body {:?}", clip(&self.text(), 160)),
        }
    }

    fn echo(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn clip(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// Why no answer can be judged.
enum Unanswered {
    /// The request cannot be put into this protocol: the absolute form or
    /// a `:path` that `http::Uri` refuses (as the server's parser would)
    /// over h2.
    Inexpressible,
    /// Anything else: a dropped connection, a reset, a hang.
    Failed(String),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(body, b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = body.get(end + 2..).unwrap_or_default();
    }
    out
}

/// Writes `request` as is and reads until the server closes.
async fn send_raw(addr: SocketAddr, request: &[u8]) -> Result<Answer, Unanswered> {
    let failed = |e: String| Unanswered::Failed(e);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(request).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw).await {
            Ok(_) => {}
            Err(_) if !raw.is_empty() => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(raw)
    };
    let raw = tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {ANSWER_WITHIN:?}")))?
        .map_err(failed)?;
    let Some(end) = find(&raw, b"\r\n\r\n") else {
        return Err(failed(format!(
            "no complete response: {:?}",
            String::from_utf8_lossy(&raw)
        )));
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| failed(format!("no status line: {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = &raw[end + 4..];
    Ok(Answer {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        },
        headers,
    })
}

/// `GET target` over HTTP/1.x as raw bytes: with `Host` and
/// `Connection: close` for 1.1, without `Host` for 1.0 (as old clients).
fn h1_request(proto: Proto, host: &str, target: &[u8], headers: &[(String, String)]) -> Vec<u8> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    match proto {
        Proto::Http10 => request.extend_from_slice(b" HTTP/1.0\r\n"),
        _ => request.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n").as_bytes(),
        ),
    }
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// `GET target` over h2c with prior knowledge, on a connection of its own
/// so that a reset cannot take other requests with it. The `:path` is the
/// target as written, not normalized.
async fn send_h2(
    addr: SocketAddr,
    authority: Option<&str>,
    target: &[u8],
    headers: &[(String, String)],
) -> Result<Answer, Unanswered> {
    let target = std::str::from_utf8(target).map_err(|_| Unanswered::Inexpressible)?;
    let mut uri = Uri::builder();
    if let Some(authority) = authority {
        uri = uri.scheme("http").authority(authority);
    }
    let uri = uri
        .path_and_query(target)
        .build()
        .map_err(|_| Unanswered::Inexpressible)?;
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|_| Unanswered::Inexpressible)?;
    let exchange = async {
        let (parts, body) = common::h2c(addr, request).await?;
        Ok::<_, String>(Answer {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        })
    };
    tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .map_err(|_| Unanswered::Failed(format!("no answer within {ANSWER_WITHIN:?}")))?
        .map_err(Unanswered::Failed)
}

/// Sends `GET target` to `addr` over `proto`, naming `addr` as the host.
async fn send(
    proto: Proto,
    addr: SocketAddr,
    target: &Target,
    headers: &[(String, String)],
) -> Result<Answer, Unanswered> {
    let host = addr.to_string();
    match (proto, target) {
        (Proto::H2c, Target::Origin(path)) => send_h2(addr, Some(&host), path, headers).await,
        // h2 has no absolute form: the origin-form row is the same request.
        (Proto::H2c, Target::Absolute(_)) => Err(Unanswered::Inexpressible),
        (_, Target::Origin(path)) => send_raw(addr, &h1_request(proto, &host, path, headers)).await,
        (_, Target::Absolute(path)) => {
            let mut absolute = format!("http://{host}").into_bytes();
            absolute.extend_from_slice(path);
            send_raw(addr, &h1_request(proto, &host, &absolute, headers)).await
        }
    }
}

// ---------------------------------------------------------------------------
// The attack table

/// A request target, as bytes on the wire.
#[derive(Clone)]
enum Target {
    /// `GET /path`.
    Origin(Vec<u8>),
    /// `GET http://host/path` (HTTP/1 only).
    Absolute(Vec<u8>),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Origin(p) => write!(f, "{}", p.escape_ascii()),
            Target::Absolute(p) => write!(f, "http://host{}", p.escape_ascii()),
        }
    }
}

/// Spellings of `..` that some upstream resolves.
const DOT_DOTS: [&str; 18] = [
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e.",
    "..;",
    "..;x",
    "..%3b",
    "..%3B",
    "%2e%2e%3b",
    "..%00",
    "..%20",
    "%252e%252e",
    "%25%32%65%25%32%65",
    "%c0%ae%c0%ae",
    "%e0%80%ae%e0%80%ae",
    "%u002e%u002e",
    "..%2500",
];

/// Spellings of `/` between segments.
const SEPARATORS: [&str; 7] = ["\\", "%2f", "%2F", "%5c", "%252f", "%25%32%66", "%c0%af"];

/// Spellings of the `premium` segment that some upstream reads as
/// `premium`; a gateway that reads one as something else serves it free.
const PREMIUM_NAMES: [&str; 42] = [
    "premium::$INDEX_ALLOCATION",
    "premium:$i30:$INDEX_ALLOCATION",
    "premium::%24DATA",
    "PREMIU~1",
    "premiu~1",
    "premium%3F",
    "premium%3fx",
    "premium%23",
    "premium%23x",
    "premium...",
    "premium.%20",
    "premium%20%20",
    "%70remium",
    "%70%72%65%6d%69%75%6d",
    "premiu%6D",
    "PREMIUM",
    "Premium",
    "pReMiUm",
    "premium;x",
    "premium;",
    "premium%3b",
    "premium%3Bx",
    "premium%00",
    "premium%00x",
    "premium%20",
    "premium%09",
    "premium.",
    "premium%2e",
    "premium%2f",
    "premium%5c",
    "premium\\",
    "premium%2fx%2f..",
    "%2570remium",
    "%25%37%30remium",
    "%u0070remium",
    "%c1%b0remium",
    "x/../premium",
    "x/%2e%2e/premium",
    "x/..%3b/premium",
    "./premium",
    "%2e/premium",
    "premium/.",
];

/// Spellings of `secret.txt` under `/premium/`: all priced, none may be
/// served unpaid or err.
const FILE_NAMES: [&str; 15] = [
    "secret.txt::$DATA",
    "SECRET~1.TXT",
    "secret.txt%20",
    "secret.txt;x",
    "secret.txt%3b",
    "secret.txt%00",
    "secret.txt%00.png",
    "secret.txt/",
    "secret.txt/.",
    "SECRET.TXT",
    "./secret.txt",
    "%73ecret.txt",
    "secret.txt?../x",
    "secret.txt?/../../public/readme.txt",
    "secret.txt#x",
];

fn origin(path: impl Into<Vec<u8>>) -> Target {
    Target::Origin(path.into())
}

fn attack_targets() -> Vec<Target> {
    let mut rows = Vec::new();
    // The issue's own list.
    for path in [
        "/public/../premium/secret.txt",
        "/public/%2e%2e/premium/secret.txt",
        "/%70remium/secret.txt",
        "/PREMIUM/secret.txt",
        "//premium/secret.txt",
        "/premium//secret.txt",
        "/./premium/secret.txt",
        "/public/..;/premium/secret.txt",
        "/premium;x/secret.txt",
        "/public%2f..%2fpremium/secret.txt",
        "/public\\..\\premium\\secret.txt",
        "/%252e%252e/premium",
        "/premium%00/secret.txt",
        "/premium/secret.txt%20",
        "/public/.%2e/premium/secret.txt",
        "/premium/./secret.txt",
        "/cheap/../premium/secret.txt",
        "/v1/fc/../../admin/secret.txt",
        "/v1/fc/..%2f..%2fadmin/secret.txt",
        "/public/%c0%ae%c0%ae/premium/secret.txt",
        "/premium/secret.txt?../x",
        "/premium/secret.txt#x",
        // Unicode compatibility characters a folding upstream reads as
        // `.`, `/` or plain letters.
        "/public/%EF%BC%8E%EF%BC%8E/premium/secret.txt",
        "/public/..%EF%BC%8Fpremium/secret.txt",
        "/public/%E2%80%A5/premium/secret.txt",
        "/public/%EF%B9%92%EF%B9%92/premium/secret.txt",
        "/%EF%BD%90remium/secret.txt",
        "/%EF%BD%90%EF%BD%92%EF%BD%85%EF%BD%8D%EF%BD%89%EF%BD%95%EF%BD%8D/secret.txt",
        "/cheap/%EF%BC%8E%EF%BC%8E/premium/secret.txt",
        "/v1/fc/%EF%BC%8E%EF%BC%8E/%EF%BC%8E%EF%BC%8E/admin/secret.txt",
        "/public%EF%BC%BC..%EF%BC%BCpremium/secret.txt",
        // Best-fit readings: letters with an accent or without a dot, and
        // slashes that are mathematical signs.
        "/prem%C4%B1um/secret.txt",
        "/PREM%C4%B0UM/secret.txt",
        "/pr%C4%93mium/secret.txt",
        "/pre%CC%81mium/secret.txt",
        "/%C4%81dmin/secret.txt",
        "/public/..%E2%88%95premium/secret.txt",
        "/public%E2%88%95..%E2%88%95premium/secret.txt",
        "/public%E2%81%84..%E2%81%84premium/secret.txt",
        "/public%E2%88%96..%E2%88%96premium%E2%88%96secret.txt",
        "/cheap%E2%88%95..%E2%88%95premium/secret.txt",
        // Invisible or unreadable characters a slugifying upstream drops.
        "/pre%C2%ADmium/secret.txt",
        "/pre%E2%80%8Bmium/secret.txt",
        "/%EF%BB%BFpremium/secret.txt",
        "/pre%E2%82%ACmium/secret.txt",
        "/adm%F3%A0%80%A1in/secret.txt",
        // Read one way by best-fit and another by a slugifier: `ŉ` is
        // `ʼn`, and `ʼ` is `'` to one and nothing to the other.
        "/admi%C5%89/secret.txt",
        "/admin%CA%BC/secret.txt",
        "/premium%CA%BC/secret.txt",
        // Best-fit's Greek letters and the yen and won signs (`\` in the
        // Japanese and Korean code pages), and IIS's `%u` behind a `%25`.
        "/%CF%80remium/secret.txt",
        "/%CE%B1dmin/secret.txt",
        "/public/..%C2%A5premium/secret.txt",
        "/public/..%E2%82%A9premium/secret.txt",
        "/%25u0070remium/secret.txt",
        "/public/%25u002e%25u002e/premium/secret.txt",
        // Above the root, and no path at all.
        "/../premium/secret.txt",
        "/public/../../premium/secret.txt",
        "*",
        "premium/secret.txt",
    ] {
        rows.push(origin(path));
    }
    // Out of a free or a cheap prefix, one `..` at a time.
    for dots in DOT_DOTS {
        for from in ["/public", "/cheap"] {
            rows.push(origin(format!("{from}/{dots}/premium/secret.txt")));
        }
        // Out of the rewritten cheap prefix, past the `/cheap` it is
        // forwarded under.
        rows.push(origin(format!("/v1/fc/{dots}/{dots}/admin/secret.txt")));
        rows.push(origin(format!(
            "/v1/fc/x/{dots}/{dots}/{dots}/premium/secret.txt"
        )));
    }
    for sep in SEPARATORS {
        rows.push(origin(format!("/public{sep}..{sep}premium{sep}secret.txt")));
        rows.push(origin(format!(
            "/v1/fc{sep}..{sep}..{sep}admin{sep}secret.txt"
        )));
    }
    for name in PREMIUM_NAMES {
        rows.push(origin(format!("/{name}/secret.txt")));
    }
    for name in [
        "ADMIN",
        "%61dmin",
        "admin;x",
        "admin%3b",
        "admin%00",
        "%2561dmin",
        "%25%36%31dmin",
    ] {
        rows.push(origin(format!("/{name}/secret.txt")));
    }
    for file in FILE_NAMES {
        rows.push(origin(format!("/premium/{file}")));
    }
    for path in [
        "/public/../premium/secret.txt",
        "/public/..%3b/premium/secret.txt",
        "/%70remium/secret.txt",
        "//premium/secret.txt",
        "/cheap/../premium/secret.txt",
        "/v1/fc/../../admin/secret.txt",
    ] {
        rows.push(Target::Absolute(path.into()));
    }
    // Bytes no client library would send.
    for path in [
        &b"/premium\x00/secret.txt"[..],
        b"/public/\xc0\xae\xc0\xae/premium/secret.txt",
        b"/pr\xc3\xa9mium/../premium/secret.txt",
        b"/premium\t/secret.txt",
        b"/premium /secret.txt",
        b"/premium%0d%0aX-Y: z/secret.txt",
        b"/premium\r/secret.txt",
    ] {
        rows.push(origin(path));
    }
    rows
}

#[derive(Debug, Clone, Copy)]
enum Credential {
    Unpaid,
    CheapL402,
    CheapMpp,
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::Unpaid => "no credential",
            Credential::CheapL402 => "a 1-sat L402 token",
            Credential::CheapMpp => "a 1-sat MPP credential",
        })
    }
}

const CREDENTIALS: [Credential; 3] = [
    Credential::Unpaid,
    Credential::CheapL402,
    Credential::CheapMpp,
];

/// What any answer must be: no marker, and a refusal that is a 4xx the
/// gateway means (an upstream's own 2xx/3xx for a free path is fine).
fn judge(answer: &Answer) -> Option<String> {
    if let Some(marker) = answer.marker() {
        return Some(format!(
            "BYPASS: {marker} served with status {}; {}",
            answer.status,
            answer.upstream_saw()
        ));
    }
    match answer.status {
        200..=399 | 400 | 401 | 402 | 404 => None,
        status => Some(format!(
            "status {status} (want 400/401/402/404); {}",
            answer.upstream_saw()
        )),
    }
}

/// Tallies of one run through the table.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    inexpressible: AtomicUsize,
}

/// A row of one gateway: its label, number and target.
type RowId = (String, usize, String);

/// One failed attempt: the row, why it failed, and over what.
struct Failure {
    row: RowId,
    why: String,
    how: String,
}

async fn attempt(
    deployed: &Deployed,
    row: usize,
    target: &Target,
    proto: Proto,
    credential: Credential,
    tally: &Tally,
) -> Option<Failure> {
    let wallet = &deployed.wallet;
    let (headers, mpp) = wallet.present(credential).await;
    let answer = send(proto, deployed.gateway.addr(), target, &headers).await;
    let failure = |why: String| Failure {
        row: (deployed.label.clone(), row, target.to_string()),
        why,
        how: format!("{proto} with {credential}"),
    };
    match answer {
        Err(Unanswered::Inexpressible) => {
            if let Some(credential) = mpp {
                wallet.unspent_mpp.lock().unwrap().push(credential);
            }
            tally.inexpressible.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(Unanswered::Failed(why)) => {
            tally.sent.fetch_add(1, Ordering::Relaxed);
            Some(failure(why))
        }
        Ok(answer) => {
            tally.sent.fetch_add(1, Ordering::Relaxed);
            if let Some(credential) = mpp {
                wallet.unspent(credential, &answer);
            }
            judge(&answer).map(failure)
        }
    }
}

/// The cheap credentials must really buy the cheap note: otherwise the
/// credential columns of the table prove nothing.
async fn check_controls(deployed: &Deployed, cheap_path: &str) {
    let addr = deployed.gateway.addr();
    let label = &deployed.label;
    for credential in [deployed.wallet.l402.clone(), deployed.wallet.mpp().await] {
        let headers = vec![("Authorization".to_owned(), credential)];
        let answer = send(Proto::Http11, addr, &origin(cheap_path), &headers)
            .await
            .unwrap_or_else(|_| panic!("[{label}] answers {cheap_path}"));
        assert!(
            answer.status == 200 && answer.text().contains("CHEAP-NOTE"),
            "[{label}] a cheap credential at {cheap_path} got {}: {}",
            answer.status,
            answer.upstream_saw()
        );
    }
}

/// One line per failing row, with every protocol and credential it
/// failed with.
fn by_row(failures: Vec<Failure>) -> Vec<String> {
    let mut rows: BTreeMap<(RowId, String), Vec<String>> = BTreeMap::new();
    for Failure { row, why, how } in failures {
        rows.entry((row, why)).or_default().push(how);
    }
    let every = PROTOCOLS.len() * CREDENTIALS.len();
    rows.into_iter()
        .map(|(((label, row, target), why), mut how)| {
            how.sort();
            let how = if how.len() == every {
                "every protocol, with every credential".to_owned()
            } else {
                how.join("; ")
            };
            format!("[{label}] row {row} {target}: {why}\n    over {how}")
        })
        .collect()
}

/// Sends every row over every protocol with every credential; returns the
/// failures and how many requests went out.
async fn run_table(deployed: &Deployed, targets: &[Target]) -> (Vec<Failure>, usize, usize) {
    let tally = Tally::default();
    let cases: Vec<(usize, &Target, Proto, Credential)> = targets
        .iter()
        .enumerate()
        .flat_map(|(row, target)| {
            PROTOCOLS.into_iter().flat_map(move |proto| {
                CREDENTIALS
                    .into_iter()
                    .map(move |credential| (row, target, proto, credential))
            })
        })
        .collect();
    let tally_ref = &tally;
    let failures: Vec<Failure> = futures_util::stream::iter(cases)
        .map(|(row, target, proto, credential)| {
            attempt(deployed, row, target, proto, credential, tally_ref)
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    (
        failures,
        tally.sent.load(Ordering::Relaxed),
        tally.inexpressible.load(Ordering::Relaxed),
    )
}

/// Raw targets that reach the premium file when sent straight to an
/// upstream: the gateway is what stands between them and the content.
const LEAKY_STRAIGHT_TO_PYTHON: [&str; 3] = [
    "/public/../premium/secret.txt",
    "/public/%2e%2e/premium/secret.txt",
    "/public%2f..%2fpremium/secret.txt",
];

const LEAKY_STRAIGHT_TO_LENIENT: [&str; 8] = [
    "/public/../premium/secret.txt",
    "/PREMIUM/secret.txt",
    "/public/..;/premium/secret.txt",
    "/public/..%3b/premium/secret.txt",
    "/public%2f..%2fpremium/secret.txt",
    "/public\\..\\premium\\secret.txt",
    "/public/%25%32%65%25%32%65/premium/secret.txt",
    "/public/%c0%ae%c0%ae/premium/secret.txt",
];

async fn path_attacks(upstream: Upstream) {
    let leaky: &[&str] = match upstream {
        Upstream::Python(_) => &LEAKY_STRAIGHT_TO_PYTHON,
        Upstream::Lenient(_) => &LEAKY_STRAIGHT_TO_LENIENT,
    };
    for path in leaky {
        let answer = send(Proto::Http11, upstream.addr(), &origin(*path), &[])
            .await
            .unwrap_or_else(|_| panic!("{} answers {path}", upstream.name()));
        assert!(
            answer.marker().is_some(),
            "{} straight: {path} should reach the premium file, got {}",
            upstream.name(),
            answer.status
        );
    }

    let targets = attack_targets();
    let mut failures = Vec::new();
    let mut sent = 0;
    let mut inexpressible = 0;
    for (rewritten, cheap_path) in [(false, "/cheap/note.txt"), (true, "/v1/fc/note.txt")] {
        let label = format!(
            "{}, cheap at {}",
            upstream.name(),
            if rewritten { "/v1/fc/*" } else { "/cheap/*" }
        );
        let deployed = deploy(label, services(&upstream.url(), rewritten), cheap_path).await;
        check_controls(&deployed, cheap_path).await;
        let (found, n, skipped) = run_table(&deployed, &targets).await;
        failures.extend(found);
        sent += n;
        inexpressible += skipped;
        eprintln!(
            "[{}] {} rows x {} protocols x {} credentials: {n} requests sent, {skipped} not expressible over h2, {} MPP credentials bought",
            deployed.label,
            targets.len(),
            PROTOCOLS.len(),
            CREDENTIALS.len(),
            deployed.wallet.bought.load(Ordering::Relaxed),
        );
        deployed.gateway.shutdown().await.unwrap();
    }
    let attempts = failures.len();
    let rows = by_row(failures);
    assert!(
        rows.is_empty(),
        "{attempts} of {sent} attempts failed ({inexpressible} not expressible over h2), in {} rows:\n{}",
        rows.len(),
        rows.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_attacks_through_python_http_server() {
    path_attacks(Upstream::Python(Box::new(Python::start().await))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_attacks_through_a_lenient_upstream() {
    path_attacks(Upstream::Lenient(start_lenient().await)).await;
}

// ---------------------------------------------------------------------------
// Hosts

/// HTTP/1.x requests naming `api.example.com` in some spelling, or
/// ambiguously: row, request line, header lines (1.1 requests also get
/// `Connection: close`).
const H1_HOSTS: [&str; 28] = [
    "Host                        | GET /premium/secret.txt HTTP/1.1 | Host: api.example.com",
    "Host, trailing dot          | GET /premium/secret.txt HTTP/1.1 | Host: api.example.com.",
    "Host, case and port         | GET /premium/secret.txt HTTP/1.1 | Host: API.EXAMPLE.COM:8402",
    "Host, dot and port          | GET /premium/secret.txt HTTP/1.1 | Host: Api.Example.Com.:80",
    "Host, empty port            | GET /premium/secret.txt HTTP/1.1 | Host: api.example.com:",
    "Host, padded                | GET /premium/secret.txt HTTP/1.1 | Host: \\t api.example.com \\t",
    "Host, two trailing dots     | GET /premium/secret.txt HTTP/1.1 | Host: api.example.com..",
    "Host, encoded dot           | GET /premium/secret.txt HTTP/1.1 | Host: api%2eexample.com",
    "Host, userinfo              | GET /premium/secret.txt HTTP/1.1 | Host: x@api.example.com",
    "Host, a list                | GET /premium/secret.txt HTTP/1.1 | Host: other.test, api.example.com",
    "Host, then another          | GET /premium/secret.txt HTTP/1.1 | Host: api.example.com | Host: b.test",
    "another, then Host          | GET /premium/secret.txt HTTP/1.1 | Host: b.test | Host: api.example.com",
    "Host twice                  | GET /premium/secret.txt HTTP/1.1 | Host: api.example.com | Host: api.example.com",
    "Host, case path             | GET /PREMIUM/secret.txt HTTP/1.1 | Host: api.example.com",
    "Host, dotted path           | GET /public/../premium/secret.txt HTTP/1.1 | Host: api.example.com",
    "no Host                     | GET /premium/secret.txt HTTP/1.1",
    "empty Host                  | GET /premium/secret.txt HTTP/1.1 | Host:",
    "HTTP/1.0, no Host           | GET /premium/secret.txt HTTP/1.0",
    "HTTP/1.0, Host              | GET /premium/secret.txt HTTP/1.0 | Host: api.example.com",
    "absolute form               | GET http://api.example.com/premium/secret.txt HTTP/1.1 | Host: api.example.com",
    "absolute form, no Host      | GET http://api.example.com/premium/secret.txt HTTP/1.1",
    "absolute form, odd spelling | GET http://API.Example.COM.:8402/premium/secret.txt HTTP/1.1 | Host: api.example.com",
    "absolute form, odd, no Host | GET http://API.Example.COM.:8402/premium/secret.txt HTTP/1.1",
    "absolute form, https        | GET https://api.example.com/premium/secret.txt HTTP/1.1 | Host: api.example.com",
    "absolute form vs Host       | GET http://api.example.com/premium/secret.txt HTTP/1.1 | Host: other.test",
    "Host vs absolute form       | GET http://other.test/premium/secret.txt HTTP/1.1 | Host: api.example.com",
    "absolute form, userinfo     | GET http://x@api.example.com/premium/secret.txt HTTP/1.1 | Host: api.example.com",
    "absolute form, HTTP/1.0     | GET http://api.example.com/premium/secret.txt HTTP/1.0",
];

/// The same over h2c: row, `:authority` (`-` for none), `host` fields,
/// `:path`. With no `:authority` hyper's client sends no `:scheme` either,
/// and the server resets the stream: a refusal too.
const H2_HOSTS: [&str; 10] = [
    ":authority                   | api.example.com      |                            | /premium/secret.txt",
    ":authority, trailing dot     | api.example.com.     |                            | /premium/secret.txt",
    ":authority, case and port    | API.EXAMPLE.COM:8402 |                            | /premium/secret.txt",
    ":authority, case path        | api.example.com      |                            | /PREMIUM/secret.txt",
    ":authority and the same host | api.example.com      | api.example.com            | /premium/secret.txt",
    ":authority vs host           | api.example.com      | other.test                 | /premium/secret.txt",
    "host vs :authority           | other.test           | api.example.com            | /premium/secret.txt",
    ":authority, two hosts        | api.example.com      | api.example.com other.test | /premium/secret.txt",
    "no :authority, host          | -                    | api.example.com            | /premium/secret.txt",
    "no :authority, no host       | -                    |                            | /premium/secret.txt",
];

/// The cells of a table row.
fn cells(row: &str) -> Vec<&str> {
    row.split(" | ").map(str::trim).collect()
}

/// A host-bound paid service before a free catch-all: whatever spelling
/// names the bound host, or names it ambiguously, gets 402 or 400, never
/// the catch-all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_spellings_never_reach_the_free_catch_all() {
    let upstream = start_lenient().await;
    let url = format!("http://{upstream}");
    let mut premium = ServiceConfig::proxied("premium", "/premium/*", 1000, &url);
    premium.priced.host = Some(HostPattern::parse("api.example.com").unwrap());
    let deployed = deploy(
        "host-bound premium".into(),
        vec![
            premium,
            ServiceConfig::proxied("cheap", "/cheap/*", 1, &url),
            free("rest", "/*", &url),
        ],
        "/cheap/note.txt",
    )
    .await;
    let addr = deployed.gateway.addr();

    // The catch-all really serves the file to another host: only the
    // route stands in the way.
    let other = h1_request(Proto::Http11, "other.test", b"/premium/secret.txt", &[]);
    let answer = send_raw(addr, &other).await.ok().unwrap();
    assert!(answer.marker().is_some(), "the catch-all serves other.test");

    let mut failures = Vec::new();
    for credential in CREDENTIALS {
        for row in H1_HOSTS {
            let (authorization, mpp) = deployed.wallet.present(credential).await;
            // Cells are trimmed: a tab at either end is written `\t`.
            let cells = cells(row);
            let mut request = String::new();
            for line in &cells[1..] {
                request.push_str(&line.replace("\\t", "\t"));
                request.push_str("\r\n");
            }
            for (name, value) in authorization {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            if cells[1].ends_with("HTTP/1.1") {
                request.push_str("Connection: close\r\n");
            }
            request.push_str("\r\n");
            let answer = send_raw(addr, request.as_bytes()).await;
            let name = format!("host row {:?} with {credential}", cells[0]);
            judge_host(&deployed.wallet, name, mpp, answer, &mut failures);
        }
        for row in H2_HOSTS {
            let (authorization, mpp) = deployed.wallet.present(credential).await;
            let cells = cells(row);
            let authority = Some(cells[1]).filter(|a| *a != "-");
            let headers: Vec<(String, String)> = cells[2]
                .split_whitespace()
                .map(|h| ("host".to_owned(), h.to_owned()))
                .chain(authorization)
                .collect();
            let answer = send_h2(addr, authority, cells[3].as_bytes(), &headers).await;
            let name = format!("host row {:?} over h2c with {credential}", cells[0]);
            judge_host(&deployed.wallet, name, mpp, answer, &mut failures);
        }
    }
    deployed.gateway.shutdown().await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} host cases failed:\n{}",
        failures.len(),
        (H1_HOSTS.len() + H2_HOSTS.len()) * CREDENTIALS.len(),
        failures.join("\n")
    );
}

/// A host case must get 402, or 400 when the host is ambiguous (401 for
/// the cheap token at the premium route).
fn judge_host(
    wallet: &Wallet,
    name: String,
    mpp: Option<String>,
    answer: Result<Answer, Unanswered>,
    failures: &mut Vec<String>,
) {
    match answer {
        Ok(answer) => {
            if let Some(credential) = mpp {
                wallet.unspent(credential, &answer);
            }
            if let Some(marker) = answer.marker() {
                failures.push(format!(
                    "{name}: BYPASS: {marker} served with status {}; {}",
                    answer.status,
                    answer.upstream_saw()
                ));
            } else if !matches!(answer.status, 400..=402) {
                failures.push(format!(
                    "{name}: status {} (want 402, or 400 when ambiguous); {}",
                    answer.status,
                    answer.upstream_saw()
                ));
            }
        }
        Err(Unanswered::Failed(why)) if why.starts_with("h2: ") => {
            if let Some(credential) = mpp {
                wallet.unspent_mpp.lock().unwrap().push(credential);
            }
        }
        Err(Unanswered::Failed(why)) => failures.push(format!("{name}: {why}")),
        Err(Unanswered::Inexpressible) => failures.push(format!("{name}: cannot be sent")),
    }
}

// ---------------------------------------------------------------------------
// Credentials and forwarding headers

/// The echoed header values that give away a credential: one of ours in
/// any field, or a `Payment-Authorization` at all.
fn leaked(echo: &Value, secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let Some(headers) = echo["headers"].as_object() else {
        return vec!["no echo".into()];
    };
    for (name, values) in headers {
        for value in values.as_array().into_iter().flatten() {
            let value = value.as_str().unwrap_or("");
            if name == "payment-authorization"
                || secrets.iter().any(|s| !s.is_empty() && value.contains(s))
            {
                found.push(format!("{name}: {}", clip(value, 60)));
            }
        }
    }
    found
}

/// The distinctive part of a credential: what follows its scheme.
fn secret_part(credential: &str) -> String {
    let rest = credential.split_once(' ').map_or(credential, |(_, r)| r);
    clip(rest.trim(), 40).to_owned()
}

/// Credential fields (`\t` is a tab): `{l402}` is a genuine reusable token
/// (`macaroon:preimage`), `{mpp}` an unspent MPP credential (after its
/// scheme), `{forged}` the token with another preimage. Row, whether a
/// priced request is served, fields. The MPP credential's challenge named
/// no `header`, so it is accepted from `Authorization` only
/// (draft-httpauth-payment-01); either way it never reaches the upstream.
const CREDENTIAL_ROWS: [&str; 44] = [
    "Authorization: L402            | served  | Authorization: L402 {l402}",
    "Payment-Authorization: L402    | served  | Payment-Authorization: L402 {l402}",
    "Payment-Authorization: Payment | refused | Payment-Authorization: Payment {mpp}",
    "Authorization: Payment         | served  | Authorization: Payment {mpp}",
    "l402                           | served  | Authorization: l402 {l402}",
    "LSAT                           | served  | Authorization: LSAT {l402}",
    "Payment-Authorization: lsat    | served  | payment-authorization: lsat {l402}",
    "padded                         | served  | Authorization:    L402 {l402}",
    "Bearer, then L402              | served  | Authorization: Bearer k | Authorization: L402 {l402}",
    "L402, then Bearer              | served  | Authorization: L402 {l402} | Authorization: Bearer k",
    "Bearer, Payment-Auth.: L402    | served  | Authorization: Bearer k | Payment-Authorization: L402 {l402}",
    "Bearer, Payment-Auth.: Payment | refused | Authorization: Bearer k | Payment-Authorization: Payment {mpp}",
    "L402 in both fields            | refused | Authorization: L402 {l402} | Payment-Authorization: L402 {l402}",
    "L402 and Payment               | refused | Authorization: L402 {l402} | Payment-Authorization: Payment {mpp}",
    "Payment-Authorization: Bearer  | refused | Payment-Authorization: Bearer k",
    "tab after the scheme           | refused | Authorization: L402\\t{l402}",
    "forged preimage                | refused | Authorization: L402 {forged}",
    "Bearer, L402 in one value      | refused | Authorization: Bearer k, L402 {l402}",
    "Basic, Payment in one value    | refused | Authorization: Basic eA==,Payment {mpp}",
    "Bearer, x, lsat in one value   | refused | Authorization: Bearer k, x, lsat {l402}",
    "gRPC metadata, as Aperture     | refused | Grpc-Metadata-Macaroon: {l402}",
    "Macaroon, as Aperture          | refused | Macaroon: {l402}",
    "Bearer; L402 in one value      | refused | Authorization: Bearer k; L402 {l402}",
    "Bearer L402 in one value       | refused | Authorization: Bearer k L402 {l402}",
    "Digest quoting L402            | refused | Authorization: Digest x=\"L402 {l402}\"",
    "Bearer Payment in one value    | refused | Authorization: Bearer k Payment {mpp}",
    "Bearer|L402 in one value       | refused | Authorization: Bearer k|L402 {l402}",
    "Bearer/L402 in one value       | refused | Authorization: Bearer k/L402 {l402}",
    "gRPC metadata, with _ for -    | refused | Grpc_Metadata_Macaroon: {l402}",
    "Payment_Authorization          | refused | Payment_Authorization: L402 {l402}",
    "L402 with no space             | refused | Authorization: L402{l402}",
    "Bearer,L402= in one value      | refused | Authorization: Bearer k,L402={l402}",
    "Bearer L402: in one value      | refused | Authorization: Bearer k L402:{l402}",
    "Bearer; Payment= in one value  | refused | Authorization: Bearer k; Payment={mpp}",
    "Payment with no space          | refused | Authorization: Payment{mpp}",
    "Payment: as if a field name    | refused | Authorization: Payment: {mpp}",
    "Payment. in one value          | refused | Authorization: Payment.{mpp}",
    "Bearer+Payment+ in one value   | refused | Authorization: Bearer k+Payment+{mpp}",
    "Bearer%20Payment%20            | refused | Authorization: Bearer k%20Payment%20{mpp}",
    "L402. in one value             | refused | Authorization: L402.{l402}",
    "Payment.Authorization          | refused | Payment.Authorization: L402 {l402}",
    "gRPC metadata authorization    | refused | Grpc-Metadata-Authorization: L402 {l402}",
    "a token with no scheme         | refused | Authorization: {l402}",
    "an MPP credential, no scheme   | refused | Authorization: {mpp}",
];

/// A reusable L402 token in every field and spelling, and MPP credentials,
/// to a priced and to a free route: the upstream never sees one, while an
/// API key of its own in `Authorization` goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_credentials_never_reach_the_upstream() {
    let upstream = start_lenient().await;
    let deployed = deploy(
        "credentials".into(),
        services(&format!("http://{upstream}"), false),
        "/cheap/note.txt",
    )
    .await;
    let addr = deployed.gateway.addr();
    let wallet = &deployed.wallet;
    let token = wallet.l402.strip_prefix("L402 ").unwrap().to_owned();
    let preimage = token.rsplit(':').next().unwrap().to_owned();
    let forged = token.replace(&preimage, &"0".repeat(64));

    let mut failures = Vec::new();
    for row in CREDENTIAL_ROWS {
        let cells = cells(row);
        let (name, served) = (cells[0], cells[1] == "served");
        for (path, priced) in [("/cheap/note.txt", true), ("/public/readme.txt", false)] {
            for proto in [Proto::Http11, Proto::H2c] {
                let mpp = wallet.mpp().await;
                let headers: Vec<(String, String)> = cells[2..]
                    .iter()
                    .map(|field| {
                        let (name, value) = field.split_once(':').unwrap();
                        let value = value
                            .strip_prefix(' ')
                            .unwrap_or(value)
                            .replace("\\t", "\t")
                            .replace("{l402}", &token)
                            .replace("{mpp}", mpp.strip_prefix("Payment ").unwrap())
                            .replace("{forged}", &forged);
                        (name.to_owned(), value)
                    })
                    .collect();
                let secrets = [secret_part(&token), preimage.clone(), secret_part(&mpp)];
                let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
                let row = format!("{name:?} to {path} over {proto}");
                let answer = match send(proto, addr, &origin(path), &headers).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        failures.push(format!("{row}: no answer"));
                        continue;
                    }
                };
                wallet.unspent(mpp, &answer);
                let echo = answer.echo();
                let reached = echo.get("received").is_some();
                if reached {
                    let leaks = leaked(&echo, &secrets);
                    if !leaks.is_empty() {
                        failures.push(format!("{row}: the upstream saw {leaks:?}"));
                    }
                }
                if (served || !priced) && (answer.status != 200 || !reached) {
                    failures.push(format!(
                        "{row}: status {}, want 200: {}",
                        answer.status,
                        answer.upstream_saw()
                    ));
                }
                if !(200..500).contains(&answer.status) {
                    failures.push(format!("{row}: status {}", answer.status));
                }
                let api_key = headers
                    .iter()
                    .any(|(f, v)| f.eq_ignore_ascii_case("authorization") && v == "Bearer k");
                let forwarded = &echo["headers"]["authorization"];
                if reached && api_key && *forwarded != json!(["Bearer k"]) {
                    failures.push(format!(
                        "{row}: the upstream's own key arrived as {forwarded}, want [\"Bearer k\"]"
                    ));
                }
            }
        }
    }
    deployed.gateway.shutdown().await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} credential cases failed:\n{}",
        failures.len(),
        CREDENTIAL_ROWS.len() * 4,
        failures.join("\n")
    );
}

/// With no trusted proxies, what a client says about itself is dropped:
/// the upstream sees the socket peer in `X-Forwarded-For`, the gateway's
/// own scheme in `X-Forwarded-Proto`, and nothing the client sent in
/// `Forwarded`, `X-Real-IP`, the other `X-Forwarded-*` or the fields other
/// proxies vouch with (`X-Original-URI`, a client certificate, a user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_clients_are_not_believed() {
    let upstream = start_lenient().await;
    let deployed = deploy(
        "forwarding".into(),
        services(&format!("http://{upstream}"), false),
        "/cheap/note.txt",
    )
    .await;
    let addr = deployed.gateway.addr();
    let lies: Vec<(&str, &str)> = vec![
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7, 127.0.0.1"),
        ("Forwarded", "for=6.6.6.6;host=evil.test;proto=https"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.test"),
        ("X-Forwarded-Proto", "https-evil"),
        ("X-Forwarded-Port", "6666"),
        ("X-Forwarded", "for=6.6.6.6"),
        ("Client-IP", "6.6.6.6"),
        ("X-Originating-IP", "6.6.6.6"),
        ("X-ProxyUser-Ip", "6.6.6.6"),
        ("Via", "1.1 evil.test"),
        // Read by upstreams behind other proxies: the target as a front
        // proxy saw it, the scheme, a TLS terminator's client
        // certificate, the user an authenticating proxy vouches for.
        ("X-Forwarded-Uri", "/evil.test"),
        ("X-Forwarded-Url", "http://evil.test/"),
        ("X-Forwarded-Method", "evil.test"),
        ("X-Forwarded-Server", "evil.test"),
        ("X-Forwarded-Scheme", "https-evil"),
        ("X-Forwarded-Ssl", "on evil.test"),
        ("X-Forwarded-Client-Cert", "By=evil.test"),
        ("X-Forwarded-User", "admin@evil.test"),
        ("X-Forwarded-Email", "admin@evil.test"),
        ("X-Forwarded-Access-Token", "evil.test"),
        ("X-Original-URI", "/evil.test"),
        ("X-Original-Host", "evil.test"),
        ("X-Host", "evil.test"),
        ("X-HTTP-Host-Override", "evil.test"),
        ("X-Envoy-Original-Path", "/evil.test"),
        ("X-Envoy-External-Address", "6.6.6.6"),
        ("X-Client-Cert", "evil.test"),
        ("Ssl-Client-Cert", "evil.test"),
        ("X-Ssl-Client-Cert", "evil.test"),
        ("Remote-User", "admin@evil.test"),
        ("X-Remote-User", "admin@evil.test"),
        ("X-Remote-Addr", "6.6.6.6"),
        ("X-Auth-Request-User", "admin@evil.test"),
        ("X-Amzn-Oidc-Identity", "admin@evil.test"),
        ("Front-End-Https", "on evil.test"),
        ("X-Url-Scheme", "https-evil"),
        ("X_Forwarded_User", "admin@evil.test"),
        // Other vendors' client address and user, and what platforms set
        // for the apps behind them.
        ("Proxy-Client-IP", "6.6.6.6"),
        ("WL-Proxy-Client-IP", "6.6.6.6"),
        ("CloudFront-Viewer-Address", "6.6.6.6:443"),
        ("X-Appengine-User-Ip", "6.6.6.6"),
        ("Ali-CDN-Real-IP", "6.6.6.6"),
        ("X-Azure-ClientIP", "6.6.6.6"),
        ("X-Azure-SocketIP", "6.6.6.6"),
        ("X-Azure-FDID", "evil.test"),
        ("X-Vercel-Forwarded-For", "6.6.6.6"),
        ("X-Custom-IP-Authorization", "6.6.6.6"),
        ("X-Client-Address", "6.6.6.6"),
        ("X-Auth-User", "admin@evil.test"),
        ("X-WebAuth-User", "admin@evil.test"),
        ("CF-Access-Authenticated-User-Email", "admin@evil.test"),
        ("X-Middleware-Subrequest", "evil.test"),
        ("X-Invoke-Path", "/evil.test"),
        ("X-Matched-Path", "/evil.test"),
        ("X-Authentik-Email", "admin@evil.test"),
        ("X-Pomerium-Claim-Email", "admin@evil.test"),
        ("X-Consumer-Username", "admin@evil.test"),
        ("X-Endpoint-Api-Userinfo", "evil.test"),
        ("X-MS-Token-Aad-Id-Token", "evil.test"),
        ("X-Jwt-Payload", "evil.test"),
        ("X-User-Id", "admin@evil.test"),
        ("X-Hasura-Role", "admin@evil.test"),
        ("Client-Cert", ":evil.test:"),
        ("X-Client-DN", "CN=evil.test"),
        ("X-Sendfile-Type", "X-Accel-Redirect evil.test"),
        ("X-Accel-Mapping", "/evil.test=/internal/"),
        ("L5d-Dst-Override", "evil.test:80"),
        ("X-Real-Port", "6666"),
        ("True-Client-Port", "6666"),
        ("Fly-Region", "evil.test"),
        ("Z-Forwarded-For", "6.6.6.6"),
        ("X.Forwarded.For", "6.6.6.6"),
        ("Forwarded_", "for=6.6.6.6"),
        // A path prefix or target, a host, as some apps read them.
        ("X-Script-Name", "/evil.test"),
        ("Script-Name", "/evil.test"),
        ("X_Script_Name", "/evil.test"),
        ("X-Request-Uri", "/evil.test"),
        ("Request-Uri", "/evil.test"),
        ("X-Host-Override", "evil.test"),
        ("X-Real-Host", "evil.test"),
        ("X-Http-DestinationURL", "http://evil.test/"),
        ("Proxy", "http://evil.test:6666"),
        ("X-Ingress-Path", "/evil.test"),
        ("X-Base-Url", "http://evil.test/"),
        ("X-Path-Info", "/evil.test"),
        ("X-Waws-Unencoded-Url", "/evil.test"),
        ("Disguised-Host", "evil.test"),
        ("X-Forward-Host", "evil.test"),
        ("$WSRA", "6.6.6.6"),
        ("$WSSN", "evil.test"),
        ("WL-Proxy-Client-Cert", "evil.test"),
        ("X-Amzn-Mtls-Clientcert", "evil.test"),
        ("Tailscale-User-Login", "admin@evil.test"),
        ("X-Auth-Username", "admin@evil.test"),
        ("X-Webauth-Email", "admin@evil.test"),
        ("Shib-Session-Id", "evil.test"),
        ("X-Vouch-User", "admin@evil.test"),
    ];
    let telltales = ["6.6.6.6", "7.7.7.7", "evil.test", "https-evil", "6666"];
    // Many at once, in as few requests as the header count limit allows.
    let mut variants: Vec<(&str, Vec<(String, String)>)> = lies
        .chunks(60)
        .map(|some| {
            let some = some
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            ("many of them", some)
        })
        .collect();
    for (name, value) in &lies {
        variants.push((name, vec![((*name).to_owned(), (*value).to_owned())]));
    }
    // Naming it hop-by-hop must not take the gateway's own value with it.
    variants.push((
        "Connection names X-Forwarded-For",
        vec![
            ("X-Forwarded-For".into(), "6.6.6.6".into()),
            ("Connection".into(), "x-forwarded-for, x-real-ip".into()),
        ],
    ));

    let l402 = deployed.wallet.l402.clone();
    let mut failures = Vec::new();
    for (variant, headers) in &variants {
        for (path, paid) in [("/public/readme.txt", false), ("/cheap/note.txt", true)] {
            for proto in PROTOCOLS {
                let mut headers = headers.clone();
                if paid {
                    headers.push(("Authorization".into(), l402.clone()));
                }
                // h2 has no Connection field.
                if proto == Proto::H2c {
                    headers.retain(|(n, _)| n != "Connection");
                }
                let row = format!("{variant:?} to {path} over {proto}");
                let answer = match send(proto, addr, &origin(path), &headers).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        failures.push(format!("{row}: no answer"));
                        continue;
                    }
                };
                let echo = answer.echo();
                if answer.status != 200 || echo.get("received").is_none() {
                    failures.push(format!("{row}: status {}, want 200", answer.status));
                    continue;
                }
                let seen = &echo["headers"];
                if seen["x-forwarded-for"] != json!(["127.0.0.1"]) {
                    failures.push(format!(
                        "{row}: X-Forwarded-For arrived as {}, want [\"127.0.0.1\"]",
                        seen["x-forwarded-for"]
                    ));
                }
                if seen["x-forwarded-proto"] != json!(["http"]) {
                    failures.push(format!(
                        "{row}: X-Forwarded-Proto arrived as {}, want [\"http\"]",
                        seen["x-forwarded-proto"]
                    ));
                }
                for name in ["forwarded", "x-real-ip", "x-forwarded-port"] {
                    if !seen[name].is_null() {
                        failures.push(format!("{row}: the upstream saw {name}: {}", seen[name]));
                    }
                }
                for (name, values) in seen.as_object().into_iter().flatten() {
                    let text = values.to_string();
                    if let Some(t) = telltales.iter().find(|t| text.contains(*t)) {
                        failures.push(format!(
                            "{row}: the client's {t:?} reached the upstream in {name}"
                        ));
                    }
                }
            }
        }
    }
    deployed.gateway.shutdown().await.unwrap();
    assert!(
        failures.is_empty(),
        "{} forwarding cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Paying still works

/// A genuine premium token and MPP credential get the premium body, at
/// `/premium/secret.txt` and at `/PREMIUM/secret.txt` (the same service;
/// the lenient upstream folds case); an MPP credential only once; neither
/// buys `admin`, though it costs the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_requests_get_the_premium_body() {
    let upstream = start_lenient().await;
    let deployed = deploy(
        "paid".into(),
        services(&format!("http://{upstream}"), false),
        "/cheap/note.txt",
    )
    .await;
    let addr = deployed.gateway.addr();
    let premium = Wallet::open(addr, "/premium/secret.txt").await;
    let mut failures = Vec::new();
    for proto in PROTOCOLS {
        for path in ["/premium/secret.txt", "/PREMIUM/secret.txt"] {
            for credential in ["L402", "MPP"] {
                let value = match credential {
                    "L402" => premium.l402.clone(),
                    _ => premium.mpp().await,
                };
                let headers = vec![("Authorization".to_owned(), value.clone())];
                let row = format!("{path} over {proto} with a premium {credential} credential");
                match send(proto, addr, &origin(path), &headers).await {
                    Ok(a)
                        if a.status == 200
                            && a.text().contains("PREMIUM-SECRET")
                            && a.header("payment-receipt").is_some() => {}
                    Ok(a) => {
                        failures.push(format!("{row}: status {}: {}", a.status, a.upstream_saw()))
                    }
                    Err(_) => failures.push(format!("{row}: no answer")),
                }
                let admin = send(proto, addr, &origin("/admin/secret.txt"), &headers).await;
                match admin {
                    Ok(a) if matches!(a.status, 401 | 402) && a.marker().is_none() => {}
                    Ok(a) => failures.push(format!(
                        "{row}, at /admin/secret.txt: status {}: {}",
                        a.status,
                        a.upstream_saw()
                    )),
                    Err(_) => failures.push(format!("{row}, at /admin/secret.txt: no answer")),
                }
                if credential == "MPP" {
                    // Served once: the same credential again buys nothing
                    // (402; 409 while the first answer's end is still
                    // being recorded).
                    match send(proto, addr, &origin(path), &headers).await {
                        Ok(a) if matches!(a.status, 402 | 409) && a.marker().is_none() => {}
                        Ok(a) => failures.push(format!(
                            "{row}, replayed: status {}: {}",
                            a.status,
                            a.upstream_saw()
                        )),
                        Err(_) => failures.push(format!("{row}, replayed: no answer")),
                    }
                }
            }
        }
    }
    deployed.gateway.shutdown().await.unwrap();
    assert!(
        failures.is_empty(),
        "{} paid cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
