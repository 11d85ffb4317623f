//! The paying flow inside a `reqwest-middleware` stack, against our own
//! gateway on the sandbox backend: it pays, reuses a pass, shares one
//! payment among concurrent requests, pays a per-request service once per
//! call, and keeps to the caps.

use std::sync::Arc;

use gate402_client::{Ledger, Payer, PaymentMiddleware};
use gate402_gateway::{demo, Gateway};

fn payer(ledger: Arc<Ledger>, max_cost_sats: u64) -> Payer {
    Payer::sandbox(ledger, max_cost_sats)
}

#[tokio::test(flavor = "multi_thread")]
async fn middleware_pays_once_for_many_requests_and_keeps_the_cap() {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(upstream);
    // The weather sold as a pass: one token serves every request.
    let weather = &mut config.services[0].priced;
    assert_eq!(weather.name, "weather");
    *weather = weather.clone().pass(3600);
    let gw_dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, gw_dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite3")).unwrap());

    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(PaymentMiddleware::new(payer(ledger.clone(), 100)))
        .build();
    let requests = (0..8).map(|i| {
        let client = client.clone();
        let url = format!("{base}/api/weather?city=c{i}");
        async move { client.get(url).send().await.unwrap() }
    });
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["city"].as_str().unwrap().starts_with('c'));
    }
    let paid = ledger.payments(0).unwrap();
    assert_eq!(
        paid.len(),
        1,
        "eight concurrent requests, one payment: {paid:?}"
    );
    assert_eq!(paid[0].amount_msat, 10_000);

    // Translation is sold per request: each call pays once.
    for _ in 0..3 {
        let response = client
            .post(format!("{base}/api/translate"))
            .header("content-type", "application/json")
            .body(r#"{"text":"hi","to":"fr"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let paid = ledger.payments(0).unwrap();
    assert_eq!(paid.len(), 4, "{paid:?}");
    assert_eq!(
        paid.iter().map(|p| p.amount_msat).sum::<u64>(),
        10_000 + 3 * 25_000
    );

    // Over the cap: the middleware fails the request, and nothing is paid.
    let capped = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(PaymentMiddleware::new(payer(ledger.clone(), 20)))
        .build();
    let error = capped
        .post(format!("{base}/api/translate"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("above the cap of 20 sat"),
        "{error:#}"
    );
    assert_eq!(ledger.payments(0).unwrap().len(), 4);
    gateway.shutdown().await.unwrap();
}
