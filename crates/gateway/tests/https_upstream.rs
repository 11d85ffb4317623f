//! `https://` upstreams: a local TLS upstream with its own CA (and, for
//! mutual TLS, its own client CA), reached through the gateway on a free
//! and a paid route; refused, with a body that names no address, when
//! the gateway does not trust it or cannot prove who it is.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use gate402_client::Offer;
use gate402_gateway::config::{Auth, ServiceConfig, UpstreamTls};
use gate402_gateway::{Gateway, GatewayConfig};
use gate402_lightning_sandbox::http::pay_via;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::StatusCode;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA, and what it signs.
struct Ca {
    pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `names`, signed by `ca`: its PEM chain and key.
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A TLS upstream answering `/hello` and `/paid`; with `client_ca`, it
/// takes only clients whose certificate that CA signed.
async fn tls_upstream(server_ca: &Ca, client_ca: Option<&Ca>) -> SocketAddr {
    tls_upstream_after(server_ca, client_ca, Duration::ZERO)
        .await
        .0
}

/// [`tls_upstream`], beginning each TLS handshake `delay` after it took
/// the connection; with the count of `/paid` requests it has answered.
async fn tls_upstream_after(
    server_ca: &Ca,
    client_ca: Option<&Ca>,
    delay: Duration,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &server_ca.issuer).unwrap();
    serve_tls(cert.der().clone(), &key, client_ca, delay).await
}

/// A TLS upstream presenting `cert` (of `key`), as [`tls_upstream_after`].
async fn serve_tls(
    cert: CertificateDer<'static>,
    key: &KeyPair,
    client_ca: Option<&Ca>,
    delay: Duration,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            vec![cert],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let served = Arc::new(AtomicUsize::new(0));
    let counted = served.clone();
    let app = Router::new()
        .route("/hello", get(|| async { "hello over TLS" }))
        .route(
            "/paid",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "paid answer over TLS" }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (addr, served)
}

/// Upstream TLS settings that trust `ca` alone (its PEM written into
/// `dir`).
fn trusting(dir: &Path, ca: &Ca) -> UpstreamTls {
    UpstreamTls {
        ca: Some(write(dir, "ca.pem", &ca.pem)),
        ..UpstreamTls::default()
    }
}

/// An `Authorization` value for `/paid` on the gateway at `base`: its
/// 402's offer, paid through the gateway's sandbox.
async fn bought(client: &reqwest::Client, base: &str) -> String {
    let unpaid = client.get(format!("{base}/paid")).send().await.unwrap();
    assert_eq!(unpaid.status(), StatusCode::PAYMENT_REQUIRED);
    let offer = Offer::from_headers(unpaid.headers()).unwrap();
    let paid = pay_via(client, base, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    offer.payment_authorization(&preimage).unwrap()
}

/// `/paid` on the gateway at `base` with `credential`: its status and body.
async fn paid(client: &reqwest::Client, base: &str, credential: &str) -> (StatusCode, String) {
    let answer = client
        .get(format!("{base}/paid"))
        .header("authorization", credential)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    (status, answer.text().await.unwrap())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn gateway(upstream: SocketAddr, tls: UpstreamTls, dir: &Path) -> Gateway {
    gateway_waiting(upstream, tls, dir, Duration::from_secs(30)).await
}

/// [`gateway`], its upstreams given `response_timeout` to answer.
async fn gateway_waiting(
    upstream: SocketAddr,
    tls: UpstreamTls,
    dir: &Path,
    response_timeout: Duration,
) -> Gateway {
    let url = format!("https://localhost:{}", upstream.port());
    let mut free = ServiceConfig::proxied("hello", "/hello", 1, &url);
    free.priced.auth = Auth::Off;
    let paid = ServiceConfig::proxied("paid", "/paid", 3, &url);
    let mut services = vec![free, paid];
    for service in &mut services {
        let upstream = service.upstream.as_mut().unwrap();
        upstream.tls = tls.clone();
        upstream.connect_timeout = Duration::from_secs(2);
        upstream.response_timeout = response_timeout;
    }
    let mut config = GatewayConfig::default_with_services(services);
    config.listen = "127.0.0.1:0".parse().unwrap();
    Gateway::start(&config, &dir.join("gateway")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_behind_its_own_ca_free_and_paid() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca();
    let upstream = tls_upstream(&server_ca, None).await;
    let tls = trusting(dir.path(), &server_ca);
    let gateway = gateway(upstream, tls, dir.path()).await;
    let base = format!("http://{}", gateway.addr());
    let client = reqwest::Client::new();
    let free = client.get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(free.status(), StatusCode::OK);
    assert_eq!(free.text().await.unwrap(), "hello over TLS");

    let credential = bought(&client, &base).await;
    let answer = client
        .get(format!("{base}/paid"))
        .header("authorization", credential)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(answer.headers().contains_key("payment-receipt"));
    assert_eq!(answer.text().await.unwrap(), "paid answer over TLS");
    gateway.shutdown().await.unwrap();
}

/// An upstream with a self-signed certificate, pinned as its service's
/// `ca` (which `serve --check` takes), is reached; another self-signed
/// certificate for the same name is not.
#[tokio::test]
async fn a_self_signed_upstream_pinned_as_its_ca_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let self_signed = || {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        (params.self_signed(&key).unwrap(), key)
    };
    let (pinned, key) = self_signed();
    let (upstream, _) = serve_tls(pinned.der().clone(), &key, None, Duration::ZERO).await;
    let tls = UpstreamTls {
        ca: Some(write(dir.path(), "pinned.pem", &pinned.pem())),
        ..UpstreamTls::default()
    };
    let gateway = gateway(upstream, tls.clone(), dir.path()).await;
    let free = reqwest::get(format!("http://{}/hello", gateway.addr()))
        .await
        .unwrap();
    assert_eq!(free.status(), StatusCode::OK);
    assert_eq!(free.text().await.unwrap(), "hello over TLS");
    gateway.shutdown().await.unwrap();

    let (other, key) = self_signed();
    let (impostor, _) = serve_tls(other.der().clone(), &key, None, Duration::ZERO).await;
    let gateway = self::gateway(impostor, tls, dir.path()).await;
    let refused = reqwest::get(format!("http://{}/hello", gateway.addr()))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    gateway.shutdown().await.unwrap();
}

/// A client that leaves while the gateway is still connecting to the
/// upstream (here in the TLS handshake, which the upstream begins only
/// after a second) has spent nothing: the connection made after it left
/// does not carry its request, and its credential is served in full.
/// (Before, the request went out once connected and its answer, which
/// nobody read, spent the payment.)
#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_client_left_while_connecting_is_not_sent() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca();
    let (upstream, served) =
        tls_upstream_after(&server_ca, None, Duration::from_millis(1000)).await;
    let tls = trusting(dir.path(), &server_ca);
    let gateway = gateway(upstream, tls, dir.path()).await;
    let base = format!("http://{}", gateway.addr());
    let client = reqwest::Client::new();
    let credential = bought(&client, &base).await;

    let mut socket = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let request = format!("GET /paid HTTP/1.1\r\nHost: x\r\nAuthorization: {credential}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(socket);
    // The handshake ends about a second after it began; the request
    // would have been answered well within two more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        served.load(Ordering::SeqCst),
        0,
        "a request whose client had left was sent"
    );
    let (status, body) = paid(&client, &base, &credential).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "paid answer over TLS");
    assert_eq!(served.load(Ordering::SeqCst), 1);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_upstream_is_a_502_that_names_no_address() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream(&ca(), None).await;
    // The Web PKI roots do not know this upstream's private CA.
    let gateway = gateway(upstream, UpstreamTls::default(), dir.path()).await;
    let response = reqwest::get(format!("http://{}/hello", gateway.addr()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("127.0.0.1")
            && !body.contains("localhost")
            && !body.contains(&upstream.port().to_string()),
        "{body}"
    );
    gateway.shutdown().await.unwrap();
}

/// An upstream that takes the TCP connection and never answers the TLS
/// handshake never had the request: each try is a `502` within the connect
/// timeout, and the payment stays the client's however many tries (it was
/// a `504` after the response timeout, counted as the upstream failing on
/// the request: the third spent the payment).
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_tls_handshake_is_not_connected_and_keeps_the_payment() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled = listener.local_addr().unwrap();
    let (held, mut release) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = held.send(stream);
        }
    });
    let tls = trusting(dir.path(), &ca());
    let gateway = gateway_waiting(stalled, tls, dir.path(), Duration::from_secs(6)).await;
    let base = format!("http://{}", gateway.addr());
    let client = reqwest::Client::new();
    let credential = bought(&client, &base).await;
    for attempt in 1..=4 {
        let started = std::time::Instant::now();
        let (status, body) = paid(&client, &base, &credential).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "try {attempt}: {body}");
        assert!(took < Duration::from_secs(5), "try {attempt} took {took:?}");
        assert!(!body.contains(&stalled.port().to_string()), "{body}");
    }
    release.close();
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (ca(), ca());
    let upstream = tls_upstream(&server_ca, Some(&client_ca)).await;
    let ca_file = write(dir.path(), "ca.pem", &server_ca.pem);
    let (cert, key) = leaf(&client_ca, &["gate402"]);
    let tls = UpstreamTls {
        ca: Some(ca_file.clone()),
        client_cert: Some(write(dir.path(), "client.pem", &cert)),
        client_key: Some(write(dir.path(), "client.key", &key)),
    };
    let with_cert = gateway(upstream, tls, dir.path()).await;
    let response = reqwest::get(format!("http://{}/hello", with_cert.addr()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    with_cert.shutdown().await.unwrap();

    // Without one, the upstream refuses the handshake: 502. Under TLS 1.3
    // it says so (an alert) only after the request went out on the
    // connection, unread: the upstream never had it, so a paid request is
    // refused as unreached however often (three failures spent it before).
    let other = tempfile::tempdir().unwrap();
    let tls = UpstreamTls {
        ca: Some(ca_file),
        ..UpstreamTls::default()
    };
    let without = gateway(upstream, tls, other.path()).await;
    let base = format!("http://{}", without.addr());
    let response = reqwest::get(format!("{base}/hello")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let client = reqwest::Client::new();
    let credential = bought(&client, &base).await;
    for attempt in 1..=4 {
        let (status, body) = paid(&client, &base, &credential).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "try {attempt}: {body}");
        assert!(
            body.contains("could not be reached"),
            "try {attempt}: {body}"
        );
    }
    without.shutdown().await.unwrap();
}

/// A config of one service at `https://api.internal:8443`, with the
/// settings `extra` (TOML lines).
fn https_service(extra: &str) -> String {
    format!(
        "[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nupstream = \"https://api.internal:8443\"\n{extra}\n"
    )
}

/// DER: `tag`, its length, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n @ 0..=127 => out.push(n as u8),
        n @ 128..=255 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// An X.509 version 1 certificate (no version field, no extensions) for
/// `key`, self-signed with it, and valid: such old certificates are still
/// issued by some internal tooling. rcgen writes version 3 only.
fn x509_v1(key: &KeyPair) -> String {
    use rcgen::{PublicKeyData, SigningKey};
    let ecdsa_sha256 = der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
    let algorithm = der(0x30, &ecdsa_sha256);
    let common_name = [der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"client")].concat();
    let name = der(0x30, &der(0x31, &der(0x30, &common_name)));
    let validity = der(
        0x30,
        &[der(0x17, b"250101000000Z"), der(0x17, b"491231235959Z")].concat(),
    );
    let tbs = der(
        0x30,
        &[
            der(0x02, &[0x01]),
            algorithm.clone(),
            name.clone(),
            validity,
            name,
            key.subject_public_key_info(),
        ]
        .concat(),
    );
    let signature = [&[0u8][..], &key.sign(&tbs).unwrap()].concat();
    let certificate = der(0x30, &[tbs, algorithm, der(0x03, &signature)].concat());
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(certificate);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// `serve --check` says what is wrong with an upstream's client
/// certificate, its key and its CA bundle, under the setting that names
/// the file; a client certificate that expired, or soon will, is warned
/// of. Each case passed the check, or was said under another name.
#[test]
fn serve_check_says_what_is_wrong_with_a_client_certificate_or_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let config = |tls: &str| https_service(&format!("upstream_tls = {{ {tls} }}"));
    let errors = |tls: String| match GatewayConfig::parse(&config(&tls), |_| None) {
        Ok(_) => panic!("{tls}: passed the check"),
        Err(e) => e.to_string(),
    };
    let authority = ca();
    let (leaf_pem, leaf_key) = leaf(&authority, &["api.internal"]);
    let leaf_file = write(dir.path(), "leaf.pem", &leaf_pem);
    let leaf_key_file = write(dir.path(), "leaf.key", &leaf_key);

    // A server's certificate that a CA signed, given as the CA.
    let said = errors(format!("ca = {leaf_file:?}"));
    assert!(
        said.contains("services[0].upstream_tls.ca:")
            && said.contains("neither a CA's nor self-signed"),
        "{said}"
    );
    // The CA itself, and a self-signed certificate, pass.
    let ca_file = write(dir.path(), "ca.pem", &authority.pem);
    let (parsed, warnings) =
        GatewayConfig::parse_with_warnings(&config(&format!("ca = {ca_file:?}")), |_| None);
    assert!(
        parsed.is_ok() && warnings.is_empty(),
        "{parsed:?} {warnings:?}"
    );
    let pinned = CertificateParams::new(vec!["api.internal".to_owned()])
        .unwrap()
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap();
    let pinned_file = write(dir.path(), "pinned.pem", &pinned.pem());
    let (parsed, warnings) =
        GatewayConfig::parse_with_warnings(&config(&format!("ca = {pinned_file:?}")), |_| None);
    assert!(
        parsed.is_ok() && warnings.is_empty(),
        "{parsed:?} {warnings:?}"
    );
    // A pin TLS refuses from api.internal: for another name, for none.
    for (names, file) in [
        (vec!["other.example".to_owned()], "other.pem"),
        (vec![], "none.pem"),
    ] {
        let pin = CertificateParams::new(names)
            .unwrap()
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap();
        let said = errors(format!("ca = {:?}", write(dir.path(), file, &pin.pem())));
        assert!(
            said.contains("services[0].upstream_tls.ca:")
                && said.contains("TLS refuses it from api.internal"),
            "{file}: {said}"
        );
    }
    // A CA's certificate naming the upstream (openssl req -x509 makes
    // them so): warned of, since presented by the upstream itself TLS
    // refuses it.
    let mut params = CertificateParams::new(vec!["api.internal".to_owned()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pin = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let (parsed, warnings) = GatewayConfig::parse_with_warnings(
        &config(&format!(
            "ca = {:?}",
            write(dir.path(), "ca-pin.pem", &ca_pin.pem())
        )),
        |_| None,
    );
    assert!(parsed.is_ok(), "{parsed:?}");
    assert!(
        warnings.len() == 1
            && warnings[0].starts_with("services[0].upstream_tls.ca:")
            && warnings[0].contains("CaUsedAsEndEntity"),
        "{warnings:?}"
    );

    // An X.509 v1 client certificate, with its own key: not a key that
    // does not match.
    let v1_key = KeyPair::generate().unwrap();
    let v1_file = write(dir.path(), "v1.pem", &x509_v1(&v1_key));
    let v1_key_file = write(dir.path(), "v1.key", &v1_key.serialize_pem());
    let said = errors(format!(
        "client_cert = {v1_file:?}, client_key = {v1_key_file:?}"
    ));
    assert!(
        said.contains("services[0].upstream_tls.client_cert:")
            && said.contains("X.509 v1 certificate")
            && !said.contains("do not go together"),
        "{said}"
    );

    // An encrypted key.
    let encrypted = write(
        dir.path(),
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIGjMF8GCSqGSIb3DQEFDTBSMDEGCSqGSIb3DQEFDDAkBBAxMjM0NTY3ODkwYWJj\nZGVmAgIIADAMBggqhkiG9w0CCQUAMB0GCWCGSAFlAwQBKgQQMTIzNDU2Nzg5MGFi\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let said = errors(format!(
        "client_cert = {leaf_file:?}, client_key = {encrypted:?}"
    ));
    assert!(
        said.contains("services[0].upstream_tls.client_key:")
            && said.contains("encrypted private key"),
        "{said}"
    );

    // One file named by both settings, holding a certificate only: its
    // key is what is missing.
    let said = errors(format!(
        "client_cert = {leaf_file:?}, client_key = {leaf_file:?}"
    ));
    assert!(
        said.contains("services[0].upstream_tls.client_key:")
            && !said.contains("upstream_tls.client_cert"),
        "{said}"
    );
    // Holding both, it is used for both.
    let both = write(dir.path(), "both.pem", &format!("{leaf_pem}{leaf_key}"));
    assert!(GatewayConfig::parse(
        &config(&format!("client_cert = {both:?}, client_key = {both:?}")),
        |_| None
    )
    .is_ok());

    // A client certificate that expired (refused: the upstream may refuse
    // it with an answer of its own, which spends the payment), and one
    // that soon will (warned of).
    let checked = |days: i64| {
        let mut params = CertificateParams::new(vec!["client".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(400);
        params.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &authority.issuer).unwrap();
        let cert_file = write(dir.path(), "client.pem", &cert.pem());
        let key_file = write(dir.path(), "client.key", &key.serialize_pem());
        GatewayConfig::parse_with_warnings(
            &config(&format!(
                "client_cert = {cert_file:?}, client_key = {key_file:?}"
            )),
            |_| None,
        )
    };
    let warnings = |days: i64| {
        let (parsed, warnings) = checked(days);
        assert!(parsed.is_ok(), "{parsed:?}");
        warnings
            .into_iter()
            .filter(|w| w.starts_with("services[0].upstream_tls.client_cert:"))
            .collect::<Vec<_>>()
    };
    let expired = checked(-3).0.unwrap_err().to_string();
    assert!(
        expired.contains("services[0].upstream_tls.client_cert:")
            && expired.contains("expired at")
            && expired.contains("the upstream refuses it"),
        "{expired}"
    );
    let soon = warnings(5);
    assert!(
        soon.len() == 1 && soon[0].contains("expires at"),
        "{soon:?}"
    );
    assert!(warnings(90).is_empty());
    // A certificate with its own key passes; with another's, the two are
    // said not to go together.
    assert!(GatewayConfig::parse(
        &config(&format!(
            "client_cert = {leaf_file:?}, client_key = {leaf_key_file:?}"
        )),
        |_| None
    )
    .is_ok());
    let said = errors(format!(
        "client_cert = {leaf_file:?}, client_key = {v1_key_file:?}"
    ));
    assert!(said.contains("do not go together"), "{said}");
}

#[test]
fn serve_check_reads_upstream_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = https_service;
    let ca_file = write(dir.path(), "ca.pem", &ca().pem);
    let ok = GatewayConfig::parse(
        &config(&format!("upstream_tls = {{ ca = {:?} }}", ca_file)),
        |_| None,
    );
    assert!(ok.is_ok(), "{ok:?}");
    let garbage = write(dir.path(), "garbage.pem", "not a certificate");
    for (tls, needle) in [
        (
            format!("upstream_tls = {{ ca = {garbage:?} }}"),
            "garbage.pem",
        ),
        (
            "upstream_tls = { ca = \"/nonexistent/ca.pem\" }".to_owned(),
            "services[0].upstream_tls.ca: /nonexistent/ca.pem: No such file or directory",
        ),
        (
            format!("upstream_tls = {{ client_cert = {ca_file:?} }}"),
            "client_key",
        ),
        (
            "connect_timeout_secs = 0".to_owned(),
            "connect_timeout_secs",
        ),
    ] {
        let errors = GatewayConfig::parse(&config(&tls), |_| None)
            .unwrap_err()
            .to_string();
        assert!(errors.contains(needle), "{needle:?} missing from {errors}");
    }
    let plain = "[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nupstream = \"http://127.0.0.1:9\"\nupstream_tls = { ca = \"x\" }\n";
    assert!(GatewayConfig::parse(plain, |_| None).is_err());
}
