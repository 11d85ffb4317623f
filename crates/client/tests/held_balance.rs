//! Balances the client holds: one whose funds requests in flight hold is
//! asked again when the gateway says so (`409`), and one bought on another
//! path of the service is spent before a new deposit is paid; neither is
//! left behind for a new deposit.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use gate402_client::{Client, Fetched, Ledger, Payer};
use gate402_gateway::config::{Meter, ServiceConfig, Usage};
use gate402_gateway::{Gateway, GatewayConfig};

/// Answers at once, and reports the 1 unit it used after `late`.
fn late_usage(late: Duration) -> Router {
    Router::new().route(
        "/late",
        get(move || async move {
            use futures_util::StreamExt;
            let events = futures_util::stream::iter(0..3).then(move |i| async move {
                let data = match i {
                    0 => "{\"token\":\"the answer\"}",
                    1 => {
                        tokio::time::sleep(late).await;
                        "{\"usage\":{\"total_tokens\":1}}"
                    }
                    _ => "[DONE]",
                };
                Ok::<_, std::convert::Infallible>(axum::response::sse::Event::default().data(data))
            });
            axum::response::sse::Sse::new(events)
        }),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_on_a_held_balance_wait_for_it_and_pay_one_deposit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, late_usage(Duration::from_millis(1500))).into_future());
    // 20 sat at 1 sat a unit; each request holds its most, 10.
    let mut service = ServiceConfig::proxied("late", "/late", 1, &upstream);
    service.priced = service.priced.balance(20);
    service.priced.meter = Meter::Usage(Usage {
        header: None,
        field: Some("/usage/total_tokens".into()),
        max_units: 10,
    });
    let mut config = GatewayConfig::default_with_services(vec![service]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let url = format!("http://{}/late", gateway.addr());

    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = sandbox_client(&ledger, false);
    let fetch = |after: u64| {
        let (client, url) = (&client, &url);
        async move {
            tokio::time::sleep(Duration::from_millis(after)).await;
            let request = client.http.get(url).build().unwrap();
            match client.fetch(request).await.unwrap() {
                Fetched::Response(answer, _) => (answer.status(), answer.text().await.unwrap()),
                Fetched::Offer(_) => panic!("an offer"),
            }
        }
    };
    // The deposit, bought once and spent (1 unit).
    let (status, body) = fetch(0).await;
    assert_eq!(status, 200, "{body}");
    // Three at once on the 19 sat left: the first holds 10 of it, the
    // others find it held, wait, and are served in turn from it.
    let (a, b, c) = tokio::join!(fetch(0), fetch(200), fetch(400));
    for (status, body) in [a, b, c] {
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("the answer"), "{body}");
    }
    assert_eq!(ledger.payments(0).unwrap().len(), 1, "one deposit");
    gateway.shutdown().await.unwrap();
}

/// A gateway selling `/meter/*` at 2 sat a request, `units` requests a
/// deposit, in front of an upstream that answers every path.
async fn metered(units: u64) -> (Gateway, tempfile::TempDir) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let answer = Router::new().fallback(|| async { "metered" });
    tokio::spawn(axum::serve(listener, answer).into_future());
    let mut service = ServiceConfig::proxied("meter", "/meter/*", 2, &upstream);
    service.priced = service.priced.balance(units);
    let mut config = GatewayConfig::default_with_services(vec![service]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let gw_dir = tempfile::tempdir().unwrap();
    (
        Gateway::start(&config, gw_dir.path()).await.unwrap(),
        gw_dir,
    )
}

/// Sends `GET /meter/b1` .. `/meter/b<n>`, each answered 200.
async fn on_paths(client: &Client, gateway: &Gateway, n: usize) {
    for i in 1..=n {
        let url = format!("http://{}/meter/b{i}", gateway.addr());
        let request = client.http.get(&url).build().unwrap();
        match client.fetch(request).await.unwrap() {
            Fetched::Response(answer, _) => assert_eq!(answer.status(), 200, "b{i}"),
            Fetched::Offer(_) => panic!("an offer"),
        }
    }
}

/// A client paying with the sandbox (at most 100 sat a payment) into
/// `ledger`, opening MPP sessions when `sessions`.
fn sandbox_client(ledger: &Arc<Ledger>, sessions: bool) -> Client {
    let mut payer = Payer::sandbox(ledger.clone(), 100);
    payer.sessions = sessions;
    Client {
        http: reqwest::Client::new(),
        payer,
    }
}

/// A balance bought on one path of a service pays for its other paths; a
/// new deposit is paid only once it is spent out, then it is spent in turn
/// (not the spent-out one tried and a deposit paid on every new path).
#[tokio::test(flavor = "multi_thread")]
async fn a_balance_is_spent_across_paths_before_a_new_deposit() {
    // 10 requests a deposit (20 sat).
    let (gateway, _gw_dir) = metered(10).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = sandbox_client(&ledger, false);
    on_paths(&client, &gateway, 16).await;
    let deposits = ledger.payments(0).unwrap();
    assert_eq!(
        deposits.len(),
        2,
        "two deposits for 16 requests: {deposits:?}"
    );
    // The spent-out balance's token is not kept.
    let kept: std::collections::BTreeSet<_> = ledger
        .tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.payment_hash)
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    gateway.shutdown().await.unwrap();
}

/// The same through an MPP session: one opened on one path is topped up
/// when it runs out on another, not left open for a second session.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_spent_out_on_another_path_is_topped_up() {
    // 3 requests a deposit (6 sat).
    let (gateway, _gw_dir) = metered(3).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = sandbox_client(&ledger, true);
    on_paths(&client, &gateway, 7).await;
    let sessions = ledger.sessions(true).unwrap();
    assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
    assert_eq!(
        (sessions[0].spent_sats, sessions[0].deposit_sats),
        (14, 18),
        "one deposit and two top-ups"
    );
    gateway.shutdown().await.unwrap();
}

/// A balance's L402 token bought on one path is spent on the service's
/// other paths before a session is opened there: the token cannot be
/// refunded, a session's deposit can.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_balance_token_is_spent_before_a_session_opens() {
    let (gateway, _gw_dir) = metered(10).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let l402 = sandbox_client(&ledger, false);
    on_paths(&l402, &gateway, 1).await;
    let sessions = sandbox_client(&ledger, true);
    on_paths(&sessions, &gateway, 5).await;
    let paid = ledger.payments(0).unwrap();
    assert_eq!(paid.len(), 1, "the one deposit: {paid:?}");
    assert!(ledger.sessions(true).unwrap().is_empty());
    gateway.shutdown().await.unwrap();
}
