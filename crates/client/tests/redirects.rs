//! A client whose HTTP stack follows redirects by itself (the middleware's
//! default): a 402 at the end of a redirect is paid to, and booked under,
//! the origin that sent it.

use std::future::IntoFuture;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::routing::any;
use axum::Router;
use gate402_client::{FetchError, Ledger, Payer, PaymentMiddleware};
use gate402_gateway::{demo, Gateway};

/// A payer on the sandbox that pays up to `max_cost_sats` a request.
fn sandbox_payer(ledger: &Arc<Ledger>, max_cost_sats: u64) -> Payer {
    Payer::sandbox(ledger.clone(), max_cost_sats)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_middleware_pays_the_origin_a_redirect_led_to() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let gw_dir = tempfile::tempdir().unwrap();
    // The weather sold as a pass, so that its token is kept and reused.
    let mut config = demo::config(upstream);
    config.services[0].priced = config.services[0].priced.clone().pass(3600);
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    // The gateway under another name than the origin that redirects to it.
    let paid = format!(
        "http://localhost:{}/api/weather?city=Oslo",
        gateway.addr().port()
    );
    let first = Router::new().route(
        "/go",
        any(move || {
            let paid = paid.clone();
            async move { (StatusCode::FOUND, [(header::LOCATION, paid)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let go = format!("http://{}/go", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, first).into_future());

    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(PaymentMiddleware::new(sandbox_payer(&ledger, 100)))
        .build();
    for _ in 0..2 {
        let response = client.get(&go).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["city"], "Oslo");
    }
    let payments = ledger.payments(0).unwrap();
    assert_eq!(payments.len(), 1, "the second request used the token");
    assert_eq!(payments[0].host, "localhost");
    assert_eq!(
        payments[0].origin,
        format!("http://localhost:{}", gateway.addr().port())
    );

    // A POST the stack turned into a GET on the way cannot be repeated
    // there as it was sent: refused, nothing paid.
    let error = client.post(&go).body("{}").send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected the payer's refusal: {error:?}");
    };
    assert!(
        matches!(
            error.downcast_ref::<FetchError>(),
            Some(FetchError::RedirectedRequest { .. })
        ),
        "{error:#}"
    );
    assert_eq!(ledger.payments(0).unwrap().len(), 1);
    gateway.shutdown().await.unwrap();
}

/// A paid answer that redirects to another paid resource, and so on: one
/// request, however many hops, pays at most `--max-cost` in all (it paid
/// 10 sat at every hop before, 110 for a cap of 15), and every payment is
/// told as it is made.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_of_paid_redirects_pays_at_most_the_cap_in_all() {
    let hops = Router::new().route(
        "/hop/{n}",
        any(
            |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, format!("/hop/{}", n + 1))],
                )
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, hops).into_future());
    let gw_dir = tempfile::tempdir().unwrap();
    let mut config = gate402_gateway::GatewayConfig::default_with_services(vec![
        gate402_gateway::config::ServiceConfig::proxied("hop", "/hop/*", 10, &upstream),
    ]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());
    let client = gate402_client::Client {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        payer: sandbox_payer(&ledger, 25),
    };
    let request = client
        .http
        .get(format!("http://{}/hop/1", gateway.addr()))
        .build()
        .unwrap();
    let mut told = Vec::new();
    let error = client
        .fetch_following_reporting(request, 10, |paid| told.push(paid.amount_msat))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            FetchError::Refused(gate402_client::Refusal::OverCapAfterHops {
                left_sats: 5,
                cap_sats: 25,
                spent_sats: 20,
                ..
            })
        ),
        "{error}"
    );
    // Said as what is left of the cap the request was given.
    let said = error.to_string();
    assert!(
        said.contains("5 sat left of the cap of 25 sat") && said.contains("after 20 sat paid"),
        "{said}"
    );
    let paid: u64 = ledger
        .payments(0)
        .unwrap()
        .iter()
        .map(|p| p.amount_msat)
        .sum();
    assert_eq!(paid, 20_000, "two hops paid, the third refused");
    assert_eq!(told, [10_000, 10_000]);
}
