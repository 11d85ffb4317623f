//! `Idempotency-Key` on paid requests, as the API behind our gateway (on
//! the sandbox backend) receives them: a paid POST or PATCH carries one, a
//! paid GET none, a key of the request's own is kept, and every retry of a
//! paid request carries the same key, whether the client sends it again
//! after losing it in transit, a later run sends it with the L402 token
//! whose answer was lost, or a later run finishes the payment an earlier
//! one left pending.

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method};
use axum::routing::any;
use axum::Router;
use gate402_client::{
    Budget, Client, FetchError, Fetched, Ledger, Offer, Payer, PaymentEntry, PaymentState,
    PendingPayment, RequestKey, IDEMPOTENCY_KEY,
};
use gate402_gateway::{Gateway, GatewayConfig};

/// `(method, path, Idempotency-Key)` of every request the API received.
type Received = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

/// The API, noting what it receives, behind a gateway that sells `/op`
/// per request (every paid request pays) and gives `/free` away.
async fn gateway() -> (Gateway, String, Received, tempfile::TempDir) {
    let received = Received::default();
    let api = Router::new().fallback(any({
        let received = received.clone();
        move |method: Method, uri: axum::http::Uri, headers: HeaderMap| {
            let received = received.clone();
            async move {
                let key = headers
                    .get(IDEMPOTENCY_KEY)
                    .map(|v| v.to_str().unwrap().to_owned());
                received
                    .lock()
                    .unwrap()
                    .push((method.to_string(), uri.path().to_owned(), key));
                if uri.path().ends_with("/fail") {
                    return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "failed");
                }
                if uri.path().ends_with("/slow") {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                (axum::http::StatusCode::OK, "done")
            }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, api).into_future());
    let text = format!(
        r#"
[[services]]
name = "op"
path = "/op"
upstream = "{upstream}"
price_sats = 3
[[services]]
name = "many"
path = "/many/*"
upstream = "{upstream}"
price_sats = 2
[[services]]
name = "free"
path = "/free"
upstream = "{upstream}"
price_sats = 1
auth = "off"
"#
    );
    let mut config = GatewayConfig::parse(&text, |_| None).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    (gateway, base, received, dir)
}

fn client(ledger: Arc<Ledger>) -> Client {
    Client {
        http: reqwest::Client::new(),
        payer: Payer::sandbox(ledger, 100),
    }
}

/// Sends `request` with the client; asserts the API answered it, after a
/// payment when `paid`.
async fn served(client: &Client, request: reqwest::Request, paid: bool) {
    let Fetched::Response(response, entry) = client.fetch(request).await.unwrap() else {
        panic!("not paid");
    };
    assert_eq!(entry.is_some(), paid);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
}

/// The only request the API received since `from`: its method and key.
fn last(received: &Received, from: usize) -> (String, Option<String>) {
    let received = received.lock().unwrap();
    assert_eq!(received.len(), from + 1, "{received:?}");
    let (method, _, key) = received[from].clone();
    (method, key)
}

/// The client's `POST url` with the body `{"n":1}` (not idempotent: it
/// carries a key when paid).
fn post_n(client: &Client, url: String) -> reqwest::Request {
    client.http.post(url).body("{\"n\":1}").build().unwrap()
}

/// A key as the client makes it: a quoted UUID, version 4.
fn made_by_the_client(key: &str) -> bool {
    let inner = key.trim_matches('"');
    key.len() == 38 && inner.len() == 36 && &inner[14..15] == "4"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_request_that_is_not_idempotent_carries_a_key_and_others_none() {
    let (gateway, base, received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = client(ledger.clone());
    let op = format!("{base}/op");

    let mut keys = Vec::new();
    for method in [Method::POST, Method::PATCH] {
        let request = client.http.request(method.clone(), &op).body("{}");
        served(&client, request.build().unwrap(), true).await;
        let (seen, key) = last(&received, keys.len());
        assert_eq!(seen, method.as_str());
        let key = key.expect("a key");
        assert!(made_by_the_client(&key), "{key}");
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "a key per request");

    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let request = client.http.request(method.clone(), &op);
        served(&client, request.build().unwrap(), true).await;
        assert_eq!(
            last(&received, keys.len()),
            (method.to_string(), None),
            "idempotent: no key"
        );
        keys.push(String::new());
    }

    // A key of the request's own is the one sent.
    let own = client
        .http
        .post(&op)
        .header("Idempotency-Key", "\"mine\"")
        .body("{}");
    served(&client, own.build().unwrap(), true).await;
    assert_eq!(
        last(&received, keys.len()),
        ("POST".into(), Some("\"mine\"".into()))
    );
    keys.push(String::new());

    // Unpaid, a request goes as it was made.
    let free = client.http.post(format!("{base}/free")).body("{}");
    served(&client, free.build().unwrap(), false).await;
    assert_eq!(last(&received, keys.len()), ("POST".into(), None));
    assert_eq!(ledger.payments(0).unwrap().len(), 6);
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_request_lost_in_transit_is_sent_again_with_the_same_key() {
    let (gateway, base, received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = client(ledger.clone());
    // Nothing listens there: a request sent to it is lost on the way.
    let nowhere = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // `(paid, key)` of every request the client sends.
    type Sent = Vec<(bool, Option<String>)>;
    let sent: Arc<Mutex<Sent>> = Arc::default();
    let send = |mut request: reqwest::Request| {
        let paid = request.headers().contains_key("authorization");
        let key = request
            .headers()
            .get(IDEMPOTENCY_KEY)
            .map(|v| v.to_str().unwrap().to_owned());
        let mut sent = sent.lock().unwrap();
        sent.push((paid, key));
        // The first paid attempt is lost.
        if paid && sent.iter().filter(|(paid, _)| *paid).count() == 1 {
            request.url_mut().set_port(Some(nowhere.port())).unwrap();
        }
        let http = client.http.clone();
        async move { Ok::<_, FetchError>(http.execute(request).await?) }
    };
    let request = client
        .http
        .post(format!("{base}/op"))
        .body("{}")
        .build()
        .unwrap();
    let Fetched::Response(response, Some(_)) =
        client.payer.fetch_with(request, send).await.unwrap()
    else {
        panic!("not paid");
    };
    assert_eq!(response.text().await.unwrap(), "done");
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "unpaid, lost, again: {sent:?}");
    assert_eq!(sent[0], (false, None), "the unpaid attempt has no key");
    let key = sent[1].1.clone().expect("a key");
    assert!(made_by_the_client(&key), "{key}");
    assert_eq!(sent[2], (true, Some(key.clone())), "the same key again");
    assert_eq!(last(&received, 0), ("POST".into(), Some(key)));
    assert_eq!(ledger.payments(0).unwrap().len(), 1, "paid once");
    gateway.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_lost_after_paying_is_asked_for_again_with_the_same_key_by_a_later_run() {
    let (gateway, base, received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let post = |client: &Client| post_n(client, format!("{base}/op"));

    // A run whose paid attempts all reach the API, and whose answers are
    // all lost on the way back.
    let first = client(ledger.clone());
    let nowhere = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let send = |request: reqwest::Request| {
        let http = first.http.clone();
        let nowhere = nowhere.clone();
        let paid = request.headers().contains_key("authorization");
        if let Some(key) = request.headers().get(IDEMPOTENCY_KEY) {
            keys.lock().unwrap().push(key.to_str().unwrap().to_owned());
        }
        async move {
            let answer = http.execute(request).await?;
            if paid {
                drop(answer);
                return Err(FetchError::Http(
                    http.get(nowhere).send().await.unwrap_err(),
                ));
            }
            Ok(answer)
        }
    };
    let lost = first.payer.fetch_with(post(&first), send).await;
    assert!(matches!(lost, Err(FetchError::Http(_))), "{lost:?}");
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3, "sent, and sent again twice: {keys:?}");
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_eq!(
        last(&received, 0),
        ("POST".into(), Some(keys[0].clone())),
        "performed once; the gateway replayed the rest"
    );

    // The next run sends the same request with the token and the same
    // key: the answer kept for it, not a second operation.
    let later = client(ledger.clone());
    let Fetched::Response(answer, None) = later.fetch(post(&later)).await.unwrap() else {
        panic!("paid again");
    };
    assert_eq!(answer.headers()["idempotent-replayed"], "true");
    assert_eq!(answer.text().await.unwrap(), "done");
    assert_eq!(received.lock().unwrap().len(), 1, "not performed again");

    // Once answered, the same request again is a new one: a new key.
    served(&later, post(&later), true).await;
    let (_, key) = last(&received, 1);
    let key = key.expect("a key");
    assert!(made_by_the_client(&key) && key != keys[0], "{key}");
    assert_eq!(ledger.payments(0).unwrap().len(), 2);
    gateway.shutdown().await.unwrap();
}

/// A run stopped while its paid request was being answered leaves the
/// token kept; the next run's same request, answered `409` while the
/// first is still served, waits and gets that answer (it ended with the
/// `409`, exit 0).
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_of_a_request_still_being_served_waits_for_its_answer() {
    let (gateway, base, received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let post = |client: &Client| post_n(client, format!("{base}/many/slow"));
    let first = client(ledger.clone());
    // Stopped once the API has the request (it answers 2 s later).
    let at_the_api = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while received.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "never reached the API"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let stopped = tokio::select! {
        answered = first.fetch(post(&first)) => Some(answered),
        () = at_the_api => None,
    };
    assert!(stopped.is_none(), "stopped while the API works");
    let later = client(ledger.clone());
    let Fetched::Response(answer, None) = later.fetch(post(&later)).await.unwrap() else {
        panic!("paid again");
    };
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["idempotent-replayed"], "true");
    assert_eq!(received.lock().unwrap().len(), 1, "performed once");
    assert_eq!(ledger.payments(0).unwrap().len(), 1);
    gateway.shutdown().await.unwrap();
}

/// Writes down, as a run interrupted while paying leaves it, a pending
/// payment of a 402 the gateway sends `request`, begun with `key` to be
/// answered through `scheme`.
async fn left_pending(ledger: &Ledger, request: &reqwest::Request, key: &str, scheme: &str) {
    let http = reqwest::Client::new();
    let answer = http.execute(request.try_clone().unwrap()).await.unwrap();
    assert_eq!(answer.status(), 402);
    let offer = Offer::from_headers(answer.headers()).unwrap();
    let url = request.url();
    let entry = PaymentEntry {
        id: 0,
        url: url.to_string(),
        origin: url.origin().ascii_serialization(),
        host: url.host_str().unwrap().to_owned(),
        path: url.path().to_owned(),
        scheme: scheme.into(),
        amount_msat: offer.amount_msat().unwrap(),
        fee_msat: 0,
        payment_hash: hex::encode(offer.invoice.payment_hash()),
        receipt: None,
        status: PaymentState::Pending,
        error: None,
        created_at: 1,
        session: None,
    };
    let pending = PendingPayment {
        entry,
        bolt11: offer.bolt11.clone(),
        challenges: offer.challenges.clone(),
        payment_required: offer.payment_required.clone(),
        request_key: Some(RequestKey {
            value: key.into(),
            request_digest: RequestKey::digest(request),
        }),
    };
    ledger.begin_payment(&pending, &Budget::default()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_run_finishing_the_payment_sends_the_key_it_was_begun_with() {
    let (gateway, base, received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = client(ledger.clone());
    let post = |body: &'static str| {
        client
            .http
            .post(format!("{base}/op"))
            .body(body)
            .build()
            .unwrap()
    };

    // The same request again: the key it was begun with.
    left_pending(&ledger, &post("{\"n\":1}"), "\"begun\"", "L402").await;
    served(&client, post("{\"n\":1}"), true).await;
    assert_eq!(
        last(&received, 0),
        ("POST".into(), Some("\"begun\"".into()))
    );

    // Another request to the endpoint finishes the payment too, but is no
    // retry of the one it was begun for: a key of its own.
    left_pending(&ledger, &post("{\"n\":2}"), "\"begun for n=2\"", "L402").await;
    served(&client, post("{\"n\":3}"), true).await;
    let (_, key) = last(&received, 1);
    let key = key.expect("a key");
    assert!(made_by_the_client(&key), "{key}");

    let payments = ledger.payments(0).unwrap();
    assert_eq!(payments.len(), 2, "the pending payments, not new ones");
    assert!(payments.iter().all(|p| p.status == PaymentState::Paid));
    assert!(ledger.pending(None).unwrap().is_empty());
    gateway.shutdown().await.unwrap();
}

/// A payment left pending for MPP, whose credential is bound to the body
/// it was begun for, is finished by a request with another body but not
/// spent on it (the gateway would refuse it, and the credential was then
/// lost): it is kept for its own request, which a later run sends with it
/// unpaid, under the key it was begun with; the other request pays its
/// own.
#[tokio::test(flavor = "multi_thread")]
async fn a_pending_mpp_payment_is_kept_for_the_body_it_was_begun_for() {
    let (gateway, base, received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = Client {
        http: reqwest::Client::new(),
        payer: Payer {
            prefer: Some(gate402_client::Prefer::Mpp),
            ..Payer::sandbox(ledger.clone(), 100)
        },
    };
    let post = |body: &'static str| {
        client
            .http
            .post(format!("{base}/op"))
            .body(body)
            .build()
            .unwrap()
    };
    left_pending(
        &ledger,
        &post("{\"q\":\"A\"}"),
        "\"begun for A\"",
        "Payment",
    )
    .await;
    served(&client, post("{\"q\":\"B\"}"), true).await;
    assert_eq!(ledger.payments(0).unwrap().len(), 2, "B paid its own");
    assert!(ledger.pending(None).unwrap().is_empty(), "A's finished");
    served(&client, post("{\"q\":\"A\"}"), false).await;
    assert_eq!(
        last(&received, 1),
        ("POST".into(), Some("\"begun for A\"".into()))
    );
    let payments = ledger.payments(0).unwrap();
    assert_eq!(
        payments.len(),
        2,
        "A was answered with its own: {payments:?}"
    );
    assert!(payments.iter().all(|p| p.receipt.is_some()), "{payments:?}");
    gateway.shutdown().await.unwrap();
}

/// A per-request token kept unspent on one route (its request failed)
/// buys a request on another route of its service, but not while a run
/// holds its route's lock (that route's request pays or waits for its
/// answer, and the token is its own): the other request pays its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_whose_request_is_out_is_not_taken_on_another_route() {
    let (gateway, base, _received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = client(ledger.clone());
    let get = |path: &str| client.http.get(format!("{base}{path}")).build().unwrap();
    let Fetched::Response(failed, Some(_)) = client.fetch(get("/many/fail")).await.unwrap() else {
        panic!("not paid");
    };
    assert_eq!(failed.status(), 500, "kept unspent");
    let held = ledger.lock_endpoint(&base, "/many/fail").await.unwrap();
    served(&client, get("/many/b"), true).await;
    drop(held);
    served(&client, get("/many/c"), false).await;
    drop(gateway);
}

/// A per-request token kept unspent (its request failed) and refused
/// because its service's price rose above what it paid is kept, not
/// forgotten: the gateway serves it again once the price is back down.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_refused_for_a_price_rise_is_kept() {
    let (gateway, base, _received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = client(ledger.clone());
    let get = |path: &str| {
        client
            .http
            .get(format!("{base}/many/{path}"))
            .build()
            .unwrap()
    };
    let Fetched::Response(failed, Some(first)) = client.fetch(get("fail")).await.unwrap() else {
        panic!("not paid");
    };
    assert_eq!(failed.status(), 500, "kept unspent");
    let price = |sats: u64| {
        let handle = gateway.services_handle();
        let mut services = handle.running();
        for service in &mut services {
            if service.priced.name == "many" {
                service.priced.price_sats = sats;
            }
        }
        handle.set(&services).unwrap();
    };
    price(5);
    let Fetched::Response(dearer, Some(_)) = client.fetch(get("fail")).await.unwrap() else {
        panic!("not paid at the new price");
    };
    assert_eq!(dearer.status(), 500);
    let kept = |hash: &str| {
        ledger
            .tokens()
            .unwrap()
            .iter()
            .any(|t| t.payment_hash == hash)
    };
    assert!(kept(&first.payment_hash), "the underpaid token is kept");
    price(2);
    let Fetched::Response(cheaper, None) = client.fetch(get("fail")).await.unwrap() else {
        panic!("paid again at the old price");
    };
    assert_eq!(cheaper.status(), 500);
    drop(gateway);
}

/// A paid request answered with a server error keeps its credential (the
/// gateway left it unspent) and its key: a later run sending it again is a
/// retry of the same request to the API, not a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_answered_with_a_server_error_is_sent_again_with_the_same_key() {
    let (gateway, base, received, _dir) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    for run in 0..3 {
        let client = client(ledger.clone());
        let post = post_n(&client, format!("{base}/many/fail"));
        let Fetched::Response(answer, _) = client.fetch(post).await.unwrap() else {
            panic!("run {run}: not answered");
        };
        assert_eq!(answer.status(), 500, "run {run}");
    }
    let keys: Vec<Option<String>> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, path, _)| path == "/many/fail")
        .map(|(_, _, key)| key.clone())
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys[0].as_deref().is_some_and(made_by_the_client),
        "{keys:?}"
    );
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for the three: {keys:?}"
    );
    assert_eq!(ledger.payments(0).unwrap().len(), 1, "paid once");
    gateway.shutdown().await.unwrap();
}
