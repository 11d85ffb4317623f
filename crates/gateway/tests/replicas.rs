//! Two gateway replicas on one PostgreSQL database (a real server, started
//! by the test) act as one: a token minted by one is honoured by the
//! other, and one MPP credential sent 64 times at once, spread over both,
//! is served exactly once, with no server error.

use gate402_client::Offer;
use gate402_gateway::config::StoreConfig;
use gate402_gateway::{demo, Gateway};
use gate402_lightning_sandbox::http::pay_via;
use gate402_postgres_testkit::TestPostgres;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;

/// An MPP credential for `url`, its invoice paid on the sandbox at `base`.
async fn mpp_credential(http: &reqwest::Client, base: &str, url: &str) -> String {
    let offer = Offer::from_headers(http.get(url).send().await.unwrap().headers()).unwrap();
    let paid = pay_via(http, base, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    offer.payment_authorization(&preimage).unwrap()
}

/// `GET /admin/api{path}` of `gateway`, whose data dir is `dir`, as JSON
/// (null when the answer is none).
async fn admin_get(gateway: &Gateway, dir: &std::path::Path, path: &str) -> serde_json::Value {
    let admin = format!("http://{}/admin/api", gateway.admin_addr().unwrap());
    let secret = std::fs::read_to_string(dir.join("admin_secret")).unwrap();
    reqwest::Client::new()
        .get(format!("{admin}{path}"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default()
}

/// The demo's config in front of its upstream (started here), its store
/// `postgres`.
async fn demo_on(postgres: &TestPostgres) -> gate402_gateway::GatewayConfig {
    let (upstream, _task) = demo::start_upstream().await.unwrap();
    let mut config = demo::config(upstream);
    config.store = StoreConfig::Postgres(postgres.url.clone());
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_database_act_as_one() {
    let postgres = TestPostgres::start().await;
    let mut config = demo_on(&postgres).await;
    config.mpp.secret = Some("a shared secret of at least thirty-two bytes".into());
    // Each replica has its own data dir (and sandbox node); credentials
    // verify anywhere, being bound by the shared secret, not by a node.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(&config, dir_a.path()).await.unwrap();
    let b = Gateway::start(&config, dir_b.path()).await.unwrap();
    let error = Gateway::start(&config, dir_a.path()).await.err().unwrap();
    assert!(
        format!("{error:#}").contains("another gateway is running on the data dir"),
        "{error:#}"
    );
    let (base_a, base_b) = (
        format!("http://{}", a.addr()),
        format!("http://{}", b.addr()),
    );
    let http = reqwest::Client::new();
    let weather = "/api/weather?city=Oslo";

    // L402 bought on A, honoured on B.
    let response = http.get(format!("{base_a}{weather}")).send().await.unwrap();
    let offer = Offer::from_headers(response.headers()).unwrap();
    let paid = pay_via(&http, &base_a, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let response = http
        .get(format!("{base_b}{weather}"))
        .header(AUTHORIZATION, offer.l402_authorization(&preimage).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // ... once: the weather is sold per request (402; 409 while B has yet
    // to record it served).
    let response = http
        .get(format!("{base_a}{weather}"))
        .header(AUTHORIZATION, offer.l402_authorization(&preimage).unwrap())
        .send()
        .await
        .unwrap();
    assert!(
        matches!(
            response.status(),
            StatusCode::PAYMENT_REQUIRED | StatusCode::CONFLICT
        ),
        "{}",
        response.status()
    );

    // One payment, its MPP credential and its L402 token, 64 times at once
    // over both replicas and both doors.
    let response = http.get(format!("{base_b}{weather}")).send().await.unwrap();
    let offer = Offer::from_headers(response.headers()).unwrap();
    let paid = pay_via(&http, &base_b, &offer.bolt11).await.unwrap();
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let credentials = [
        offer.payment_authorization(&preimage).unwrap(),
        offer.l402_authorization(&preimage).unwrap(),
    ];
    let attempts = (0..64).map(|i| {
        let url = format!("{}{weather}", if i % 2 == 0 { &base_a } else { &base_b });
        let credential = credentials[(i / 2) % 2].clone();
        let request = http.get(url).header(AUTHORIZATION, credential);
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let served = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(served, 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| !s.is_server_error()),
        "{statuses:?}"
    );
    // The others: spent (402), or held by the one being served (409).
    assert!(statuses.iter().all(|s| matches!(
        *s,
        StatusCode::OK | StatusCode::PAYMENT_REQUIRED | StatusCode::CONFLICT
    )));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_spends_no_credential() {
    let mut postgres = TestPostgres::start().await;
    let config = demo_on(&postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let http = reqwest::Client::new();
    let weather = format!("{base}/api/weather?city=Oslo");
    let credential = mpp_credential(&http, &base, &weather).await;
    let present = || {
        http.get(&weather)
            .header(AUTHORIZATION, credential.clone())
            .send()
    };

    postgres.stop();
    let answer = present().await.unwrap();
    assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(answer.headers().contains_key("retry-after"));
    let problem: serde_json::Value = answer.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/internal-payment-error"),
        "{problem}"
    );
    assert!(!problem.to_string().contains("127.0.0.1"), "{problem}");

    postgres.restart().await;
    let mut served = None;
    for _ in 0..50 {
        let answer = present().await.unwrap();
        if answer.status() != StatusCode::INTERNAL_SERVER_ERROR {
            served = Some(answer.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        served,
        Some(StatusCode::OK),
        "the credential survived the outage"
    );
    assert_eq!(
        present().await.unwrap().status(),
        StatusCode::PAYMENT_REQUIRED
    );
}

/// A paid answer whose spend cannot be written (the store gone while the
/// upstream answered) keeps its last bytes until it is written, however
/// long that takes, for a credential and for a balance's debit: they went
/// after 5 s, and a replica killed or stopped before the store came back
/// gave the payment back at its next start and served it again. Once the
/// store is back, the answer is whole and the payment spent.
#[tokio::test(flavor = "multi_thread")]
async fn a_paid_answer_waits_for_its_spend_as_long_as_the_store_is_out_of_reach() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut postgres = TestPostgres::start().await;
    let received = Arc::new(AtomicUsize::new(0));
    let counted = received.clone();
    let upstream = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            "a slow answer"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let mut balance =
        gate402_gateway::config::ServiceConfig::proxied("balance", "/balance", 1, &upstream_url);
    balance.priced = balance.priced.balance(5);
    let mut config = gate402_gateway::GatewayConfig::default_with_services(vec![
        gate402_gateway::config::ServiceConfig::proxied("slow", "/slow", 5, &upstream_url),
        balance,
    ]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.store = StoreConfig::Postgres(postgres.url.clone());
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let http = reqwest::Client::new();
    let mut credentials = Vec::new();
    for path in ["/slow", "/balance"] {
        let url = format!("{base}{path}");
        let offer = Offer::from_headers(http.get(&url).send().await.unwrap().headers()).unwrap();
        let paid = pay_via(&http, &base, &offer.bolt11).await.unwrap();
        let mut preimage = [0u8; 32];
        hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
        let credential = match path {
            "/slow" => offer.payment_authorization(&preimage).unwrap(),
            _ => offer.l402_authorization(&preimage).unwrap(),
        };
        credentials.push((url, credential));
    }
    // The balance's first use, with the store up: 4 units left.
    let (balance_url, token) = credentials[1].clone();
    let first = http.get(&balance_url).header(AUTHORIZATION, &token);
    assert_eq!(first.send().await.unwrap().status(), StatusCode::OK);
    let before = received.load(Ordering::SeqCst);

    let answers: Vec<_> = credentials
        .iter()
        .map(|(url, credential)| {
            let request = http.get(url).header(AUTHORIZATION, credential);
            tokio::spawn(async move {
                let answer = request.send().await.unwrap();
                (answer.status(), answer.text().await)
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while received.load(Ordering::SeqCst) < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    postgres.stop();
    // Answered by the upstream 1.5 s after it had them; 8 s later their
    // last bytes still wait.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    for answer in &answers {
        assert!(
            !answer.is_finished(),
            "an answer went with its spend unwritten"
        );
    }
    postgres.restart().await;
    for answer in answers {
        let (status, text) = tokio::time::timeout(std::time::Duration::from_secs(60), answer)
            .await
            .expect("whole once the store is back")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text.unwrap(), "a slow answer");
    }
    // Spent: the credential once, the balance by one more unit.
    let (slow_url, credential) = &credentials[0];
    let replay = http.get(slow_url).header(AUTHORIZATION, credential);
    assert_eq!(
        replay.send().await.unwrap().status(),
        StatusCode::PAYMENT_REQUIRED
    );
    let sessions = admin_get(&gateway, dir.path(), "/sessions").await;
    assert_eq!(sessions["sessions"][0]["spent_msat"], 2_000, "{sessions}");
    gateway.shutdown().await.unwrap();
}

/// What a pass served while the store was out of reach for longer than a
/// few tries is in the books once the store is back: the rows of served
/// payments are kept and tried again until it takes them (they were
/// dropped after five tries, and the admin API's payments and revenue
/// missed them).
#[tokio::test(flavor = "multi_thread")]
async fn payments_served_through_a_long_store_outage_are_booked_once_it_is_back() {
    let mut postgres = TestPostgres::start().await;
    let mut config = demo_on(&postgres).await;
    for service in &mut config.services {
        if service.name() == "weather" {
            service.priced = service.priced.clone().pass(600);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let http = reqwest::Client::new();
    let weather = format!("{base}/api/weather?city=Oslo");
    let offer = Offer::from_headers(http.get(&weather).send().await.unwrap().headers()).unwrap();
    let paid = pay_via(&http, &base, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let pass = offer.l402_authorization(&preimage).unwrap();
    let get = || http.get(&weather).header(AUTHORIZATION, &pass).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    // Its first use recorded; served through the outage, from memory.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    postgres.stop();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    // Longer than five tries take, each waiting for a connection.
    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
    postgres.restart().await;
    let booked_at = format!(
        "/payments?payment_hash={}",
        hex::encode(offer.invoice.payment_hash())
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let booked = admin_get(&gateway, dir.path(), &booked_at).await;
        if booked["payments"][0]["served"] == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request served in the outage is not in the books: {booked}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    gateway.shutdown().await.unwrap();
}

/// The connections a replica keeps for its claims and commits, closed by
/// the server while idle (a database restart, `pg_terminate_backend`, an
/// idle timeout), are replaced when next used: no paid request fails for
/// it, and each credential is served once.
#[tokio::test(flavor = "multi_thread")]
async fn connections_the_server_closed_are_replaced_without_failing_a_request() {
    let postgres = TestPostgres::start().await;
    let config = demo_on(&postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&config, dir.path()).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let http = reqwest::Client::new();
    let weather = format!("{base}/api/weather?city=Oslo");
    for round in 0..3 {
        let credential = mpp_credential(&http, &base, &weather).await;
        let present = || {
            http.get(&weather)
                .header(AUTHORIZATION, credential.clone())
                .send()
        };
        let answer = present().await.unwrap();
        let status = answer.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "round {round}: {}",
            answer.text().await.unwrap()
        );
        // Its commit written, then every connection of the gateway closed
        // by the server.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(
            present().await.unwrap().status(),
            StatusCode::PAYMENT_REQUIRED
        );
        let closed = postgres.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = 'postgres' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        );
        assert!(closed.trim().parse::<u32>().unwrap() > 0, "{closed}");
    }
    gateway.shutdown().await.unwrap();
}

/// A gateway on a data dir of its own, and a copy of that data dir's
/// replica name (`replica_id`) in another.
async fn started_with_a_copy(
    config: &gate402_gateway::GatewayConfig,
) -> (Gateway, tempfile::TempDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let original = Gateway::start(config, dir.path()).await.unwrap();
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("replica_id"),
        copy.path().join("replica_id"),
    )
    .unwrap();
    (original, dir, copy)
}

/// A copy of a replica's data dir (its `replica_id` with it) does not run
/// beside the original on one store: at its start it would release the
/// claims of the requests the original is serving. Once the original is
/// gone, it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_copied_data_dir_does_not_run_beside_its_original() {
    let postgres = TestPostgres::start().await;
    let config = demo_on(&postgres).await;
    let (original, _dir, copy) = started_with_a_copy(&config).await;
    let refused = Gateway::start(&config, copy.path())
        .await
        .err()
        .expect("a copy started beside its original");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("another gateway is running as replica"),
        "{refused}"
    );
    original.shutdown().await.unwrap();
    let copied = Gateway::start(&config, copy.path()).await.unwrap();
    copied.shutdown().await.unwrap();
}

/// The server dropping the connection that holds a replica's name (a
/// database restart, `pg_terminate_backend`) lets the name go; the running
/// gateway takes it again within seconds, so a copy of its data dir started
/// later is still refused. A copy that takes the name in the meantime makes
/// the original stop: never two run under one name.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_name_the_server_let_go_is_taken_again() {
    let postgres = TestPostgres::start().await;
    let config = demo_on(&postgres).await;
    let (original, _dir, copy) = started_with_a_copy(&config).await;
    let drop_name = || {
        let dropped = postgres.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid <> pg_backend_pid()",
        );
        assert_eq!(dropped.trim(), "1", "{dropped}");
    };
    let healthy = |gateway: &Gateway| {
        let url = format!("http://{}/healthz", gateway.addr());
        async move {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };

    drop_name();
    // Taken again at the next check (every 5 s), reconnected first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let held = postgres.sql(
            "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 1",
        );
        if held.trim() == "1" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the name was not taken again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let refused = Gateway::start(&config, copy.path())
        .await
        .err()
        .expect("a copy started beside its original after the server let the name go");
    assert!(
        format!("{refused:#}").contains("another gateway is running as replica"),
        "{refused:#}"
    );
    assert!(healthy(&original).await);

    // Taken by the copy first: the original stops, with an error. (Taken
    // back by the original first: the copy does not start.)
    drop_name();
    match Gateway::start(&config, copy.path()).await {
        Ok(copied) => {
            let stopped = tokio::time::timeout(std::time::Duration::from_secs(12), original.wait())
                .await
                .expect("the original kept running beside a copy holding its name");
            let stopped = format!("{:#}", stopped.expect_err("stopped without an error"));
            assert!(stopped.contains("took replica name"), "{stopped}");
            assert!(healthy(&copied).await);
            copied.shutdown().await.unwrap();
        }
        Err(refused) => {
            assert!(
                format!("{refused:#}").contains("another gateway is running as replica"),
                "{refused:#}"
            );
            assert!(healthy(&original).await);
            original.shutdown().await.unwrap();
        }
    }
}

/// A paid POST with `Idempotency-Key` whose answer was lost on one
/// replica is replayed by the other, from the shared store: the upstream
/// acted once, and the receipt is the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_is_replayed_by_another_replica() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let postgres = TestPostgres::start().await;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let upstream = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |body: String| {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                format!("sent #{n}: {body}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let mut config = gate402_gateway::GatewayConfig::default_with_services(vec![
        gate402_gateway::config::ServiceConfig::proxied("sms", "/sms", 5, &upstream_url),
    ]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.store = StoreConfig::Postgres(postgres.url.clone());
    config.mpp.secret = Some("a shared secret of at least thirty-two bytes".into());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(&config, dir_a.path()).await.unwrap();
    let b = Gateway::start(&config, dir_b.path()).await.unwrap();
    let (base_a, base_b) = (
        format!("http://{}", a.addr()),
        format!("http://{}", b.addr()),
    );
    let http = reqwest::Client::new();
    let offer = Offer::from_headers(
        http.post(format!("{base_a}/sms"))
            .body("hello")
            .send()
            .await
            .unwrap()
            .headers(),
    )
    .unwrap();
    let paid = pay_via(&http, &base_a, &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    for credential in [
        offer.payment_authorization(&preimage).unwrap(),
        offer.l402_authorization(&preimage).unwrap(),
    ] {
        let before = sent.load(Ordering::SeqCst);
        let post = |base: &str, client: &reqwest::Client| {
            client
                .post(format!("{base}/sms"))
                .header(AUTHORIZATION, &credential)
                .header("idempotency-key", "\"one-text\"")
                .body("hello")
                .send()
        };
        if before == 0 {
            // The answer is lost: its client leaves once the upstream has
            // the request (answered 800 ms later).
            let cut = tokio::spawn(post(&base_a, &http));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while sent.load(Ordering::SeqCst) == before {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never reached the upstream"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            cut.abort();
            assert!(
                cut.await.is_err_and(|e| e.is_cancelled()),
                "the answer was lost"
            );
        }
        // Replayed on either replica, whichever door the key came through
        // (once the cut request has been served to its end: `409` until
        // then).
        for base in [&base_b, &base_a] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let replay = loop {
                let replay = post(base, &http).await.unwrap();
                if replay.status() != StatusCode::CONFLICT || std::time::Instant::now() > deadline {
                    break replay;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            assert_eq!(replay.status(), StatusCode::OK);
            assert_eq!(replay.headers()["idempotent-replayed"], "true");
            let receipt =
                gate402_mpp::receipt::parse(replay.headers()["payment-receipt"].to_str().unwrap())
                    .unwrap();
            assert_eq!(receipt.reference, hex::encode(offer.invoice.payment_hash()));
            assert_eq!(replay.text().await.unwrap(), "sent #1: hello");
        }
        assert_eq!(sent.load(Ordering::SeqCst), 1, "the upstream acted once");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// One balance spent over two replicas on one database at once: exactly
/// the deposit's requests are served, never more, and no server error.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_spend_one_balance_exactly() {
    let postgres = TestPostgres::start().await;
    let upstream = axum::Router::new().route("/chat", axum::routing::get(|| async { "an answer" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let mut chat =
        gate402_gateway::config::ServiceConfig::proxied("chat", "/chat", 3, &upstream_url);
    chat.priced = chat.priced.balance(7);
    let mut config = gate402_gateway::GatewayConfig::default_with_services(vec![chat]);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.store = StoreConfig::Postgres(postgres.url.clone());
    config.mpp.secret = Some("a shared secret of at least thirty-two bytes".into());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Gateway::start(&config, dir_a.path()).await.unwrap();
    let b = Gateway::start(&config, dir_b.path()).await.unwrap();
    let bases = [
        format!("http://{}", a.addr()),
        format!("http://{}", b.addr()),
    ];
    let http = reqwest::Client::new();
    let response = http.get(format!("{}/chat", bases[0])).send().await.unwrap();
    let offer = Offer::from_headers(response.headers()).unwrap();
    assert_eq!(offer.invoice.amount_msat(), Some(21_000));
    let paid = pay_via(&http, &bases[0], &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let l402 = offer.l402_authorization(&preimage).unwrap();
    // The MPP door to the same balance, from a challenge of replica B.
    let unpaid = http.get(format!("{}/chat", bases[1])).send().await.unwrap();
    let session_challenge = unpaid
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| gate402_mpp::challenge::parse_payment_challenges(v).unwrap_or_default())
        .find(|c| c.intent.as_str() == "session")
        .unwrap();
    let bearer = gate402_mpp::credential::to_authorization(&gate402_mpp::PaymentCredential::new(
        session_challenge.to_echo(),
        serde_json::json!({"action": "bearer", "sessionId": hex::encode(offer.invoice.payment_hash()),
                           "preimage": paid.preimage}),
    ));
    // Opened once, through L402 on A.
    let first = http
        .get(format!("{}/chat", bases[0]))
        .header(AUTHORIZATION, &l402)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let attempts = (0..48).map(|i| {
        let url = format!("{}/chat", bases[i % 2]);
        let credential = if (i / 2) % 2 == 0 { &l402 } else { &bearer }.clone();
        let request = http.get(url).header(AUTHORIZATION, credential);
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let served = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    // 7 requests for the deposit: one served above, 6 of the 48.
    assert_eq!(served, 6, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::PAYMENT_REQUIRED),
        "{statuses:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Two replicas on one PostgreSQL database (started here), sharing the MPP
/// secret, each with its own data dir, selling the `[[services]]` that
/// `services` writes (TOML) for the demo upstream at the address given.
struct Replicas {
    a: Gateway,
    b: Gateway,
    dir_a: tempfile::TempDir,
    dir_b: tempfile::TempDir,
    _postgres: TestPostgres,
    _upstream: tokio::task::JoinHandle<()>,
}

impl Replicas {
    async fn start(services: impl Fn(std::net::SocketAddr) -> String) -> Self {
        let postgres = TestPostgres::start().await;
        let (upstream, task) = demo::start_upstream().await.unwrap();
        let text = format!(
            r#"
listen = "127.0.0.1:0"
[store]
kind = "postgres"
url = "{url}"
[mpp]
secret = "a shared secret of at least thirty-two bytes"
{services}"#,
            url = postgres.url,
            services = services(upstream)
        );
        let config = gate402_gateway::GatewayConfig::parse(&text, |_| None).unwrap();
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Gateway::start(&config, dir_a.path()).await.unwrap();
        let b = Gateway::start(&config, dir_b.path()).await.unwrap();
        Self {
            a,
            b,
            dir_a,
            dir_b,
            _postgres: postgres,
            _upstream: task,
        }
    }
}

/// An admin change made on one replica applies on the other within its
/// sync (`[admin] sync_secs`, 1 s here): a new price, and a revoked token.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_change_on_one_replica_applies_to_both() {
    // Bound, all of them: a field left out would be dropped here (the
    // database stopped, a data dir removed).
    let Replicas {
        a,
        b,
        dir_a,
        dir_b,
        _postgres,
        _upstream,
    } = Replicas::start(|upstream| {
        format!(
            r#"
[[services]]
name = "weather"
path = "/weather"
price_sats = 10
upstream = "http://{upstream}"
[[services]]
name = "pass"
path = "/hello"
price_sats = 3
sells = "pass"
upstream = "http://{upstream}"
"#
        )
    })
    .await;
    let http = reqwest::Client::new();
    let base = |g: &Gateway| format!("http://{}", g.addr());
    let admin_a = format!("http://{}/admin/api", a.admin_addr().unwrap());
    let secret_a = std::fs::read_to_string(dir_a.path().join("admin_secret")).unwrap();
    let price = |gateway: String| {
        let http = http.clone();
        async move {
            let response = http.get(format!("{gateway}/weather")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
            Offer::from_headers(response.headers())
                .unwrap()
                .amount_msat()
                .unwrap()
                / 1000
        }
    };
    assert_eq!(price(base(&b)).await, 10);

    // A pass bought on B, used on both.
    let response = http
        .get(format!("{}/hello", base(&b)))
        .send()
        .await
        .unwrap();
    let offer = Offer::from_headers(response.headers()).unwrap();
    let paid = pay_via(&http, &base(&b), &offer.bolt11).await.unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let token = offer.l402_authorization(&preimage).unwrap();
    let use_pass = |gateway: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            http.get(format!("{gateway}/hello"))
                .header(AUTHORIZATION, token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(use_pass(base(&a)).await, StatusCode::OK);
    assert_eq!(use_pass(base(&b)).await, StatusCode::OK);

    // Through A's admin API: a new price, and the pass revoked.
    let response = http
        .patch(format!("{admin_a}/services/weather"))
        .bearer_auth(&secret_a)
        .json(&serde_json::json!({"price_sats": 21}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = http
        .post(format!(
            "{admin_a}/tokens/{}/revoke",
            hex::encode(offer.invoice.payment_hash())
        ))
        .bearer_auth(&secret_a)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A at once; B within its sync.
    assert_eq!(price(base(&a)).await, 21);
    assert_eq!(use_pass(base(&a)).await, StatusCode::PAYMENT_REQUIRED);
    let mut seen = false;
    for _ in 0..50 {
        if price(base(&b)).await == 21 && use_pass(base(&b)).await == StatusCode::PAYMENT_REQUIRED {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "replica B applied the price and the revocation within 5 s"
    );
    // B's own admin API shows who changed it.
    let service = admin_get(&b, dir_b.path(), "/services/weather").await;
    assert_eq!(service["price_sats"], 21);
    assert_eq!(service["changed"]["by"], "local");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A pass's period runs from its first use on any replica: one first used
/// on A ends on B as on A, not its seconds after B first saw it.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_ends_on_every_replica_its_seconds_after_its_first_use() {
    let Replicas {
        a,
        b,
        dir_a: _dir_a,
        dir_b: _dir_b,
        _postgres,
        _upstream,
    } = Replicas::start(|upstream| {
        format!(
            r#"
[[services]]
name = "pass"
path = "/hello"
price_sats = 3
sells = "pass"
token_lifetime_secs = 5
upstream = "http://{upstream}"
"#
        )
    })
    .await;
    let http = reqwest::Client::new();
    let hello = |g: &Gateway| format!("http://{}/hello", g.addr());
    let response = http.get(hello(&a)).send().await.unwrap();
    let offer = Offer::from_headers(response.headers()).unwrap();
    let paid = pay_via(&http, &format!("http://{}", a.addr()), &offer.bolt11)
        .await
        .unwrap();
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).unwrap();
    let pass = offer.l402_authorization(&preimage).unwrap();
    let get = |url: String| http.get(url).header(AUTHORIZATION, &pass).send();
    assert_eq!(get(hello(&a)).await.unwrap().status(), StatusCode::OK);
    // Its clock was read before this.
    let first_use = std::time::Instant::now();
    let after = |ms| {
        tokio::time::sleep(std::time::Duration::from_millis(ms).saturating_sub(first_use.elapsed()))
    };
    // In whole seconds, the period ends 4 to 5 s after the first use.
    after(2500).await;
    assert_eq!(get(hello(&b)).await.unwrap().status(), StatusCode::OK);
    // Past its end, and before B's own first use and 5 s.
    after(5300).await;
    for replica in [&b, &a] {
        let ended = get(hello(replica)).await.unwrap();
        assert_eq!(ended.status(), StatusCode::PAYMENT_REQUIRED);
    }
}

/// A replica whose MPP secrets do not agree with a running one's (each
/// would refuse the other's credentials) refuses to start; one that
/// verifies the other's and is verified by it (a rotation in two steps)
/// starts, and a stopped replica's secret is no objection.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_with_secrets_that_do_not_agree_are_refused() {
    let postgres = TestPostgres::start().await;
    let base = demo_on(&postgres).await;
    let (old, new) = (
        "the secret every replica shared until today".to_owned(),
        "the secret every replica shares from today".to_owned(),
    );
    let with = |secret: &str, previous: &[&str]| {
        let mut config = base.clone();
        config.mpp.secret = Some(secret.to_owned());
        config.mpp.previous_secrets = previous.iter().map(|p| (*p).to_owned()).collect();
        config
    };
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Gateway::start(&with(&old, &[]), dirs[0].path())
        .await
        .unwrap();
    // Another secret outright, or the new one made current at once; or
    // the same secret under another realm (a challenge is verified
    // against the verifier's realm: its MPP credentials were refused at
    // the other replica, `402 invalid-challenge`).
    let mut other_realm = with(&old, &[]);
    other_realm.mpp.realm = "other.example".into();
    for config in [
        with("another secret of thirty-two bytes or more", &[]),
        with(&new, &[&old]),
        other_realm,
    ] {
        let error = Gateway::start(&config, dirs[1].path())
            .await
            .err()
            .expect("refused beside a replica it disagrees with")
            .to_string();
        assert!(error.contains("does not agree"), "{error}");
        assert!(
            !error.contains("thirty-two") && !error.contains("today"),
            "{error}"
        );
    }
    // A rotation in two steps: first the new one accepted everywhere,
    // then made current with the old one accepted.
    let b = Gateway::start(&with(&old, &[&new]), dirs[1].path())
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    let c = Gateway::start(&with(&new, &[&old]), dirs[2].path())
        .await
        .unwrap();
    b.shutdown().await.unwrap();
    // Only running replicas count: a's and b's rows remain.
    let d = Gateway::start(&with(&new, &[]), dirs[3].path())
        .await
        .unwrap();
    d.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}
