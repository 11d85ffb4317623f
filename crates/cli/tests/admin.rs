//! `gate402 admin` against a running `gate402 serve`, found through the
//! data dir alone: services, a price set from the shell (kept over a
//! SIGHUP reload of the file), a service created from a TOML file and
//! disabled, revenue, a login link, and clear errors.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

struct Serve(Child);

impl Serve {
    /// `gate402 serve` of `config` on `data`, at `port`, its log to
    /// `stderr`.
    fn start(data: &std::path::Path, config: &std::path::Path, port: u16, stderr: Stdio) -> Self {
        Self(
            Command::new(env!("CARGO_BIN_EXE_gate402"))
                .arg("--data-dir")
                .arg(data)
                .args(["serve", "--config", config.to_str().unwrap(), "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gate402(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("GATE402_ADMIN_SECRET")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The JSON body of the answer to `request`.
async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

async fn price(base: &str, path: &str) -> String {
    let body = json_of(reqwest::Client::new().get(format!("{base}{path}"))).await;
    body["price"]["amount"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn gate402_admin_finds_the_gateway_through_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Before any gateway ran there: a clear error.
    let output = gate402(&data, &["admin", "services"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no running gateway's admin API found"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let port = free_port();
    let config = dir.path().join("gate402.toml");
    std::fs::write(
        &config,
        "[[services]]\nname = \"thing\"\npath = \"/thing\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 3\n[[services]]\nname = \"open\"\npath = \"/open\"\nupstream = \"http://127.0.0.1:9\"\nauth = \"off\"\n",
    )
    .unwrap();
    let serve = Serve::start(&data, &config, port, Stdio::null());
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{base}/healthz")).await.is_err()
        || !data.join("admin.json").exists()
    {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let listed = stdout(&gate402(&data, &["admin", "services"]));
    assert!(
        listed.contains("SERVICE") && listed.contains("AUTH"),
        "{listed}"
    );
    let line = listed.lines().find(|l| l.starts_with("thing")).unwrap();
    assert!(line.contains(" 3 ") && line.contains("/thing"), "{line}");
    // A free route sells nothing at no price.
    let line = listed.lines().find(|l| l.starts_with("open")).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[..5], ["open", "active", "off", "-", "-"], "{line}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&gate402(&data, &["admin", "--json", "services"]))).unwrap();
    assert_eq!(json["services"][0]["name"], "thing");

    // A price from the shell; a SIGHUP reload of the file keeps it.
    assert_eq!(
        stdout(&gate402(&data, &["admin", "price", "thing", "9"])),
        "thing: 9 sat\n"
    );
    assert_eq!(price(&base, "/thing").await, "9");
    assert!(Command::new("kill")
        .args(["-s", "HUP", &serve.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(price(&base, "/thing").await, "9");

    // A service from a TOML file, then disabled.
    let table = dir.path().join("news.toml");
    std::fs::write(
        &table,
        "path = \"/news\"\nprice_sats = 4\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let created: serde_json::Value = serde_json::from_str(&stdout(&gate402(
        &data,
        &["admin", "--json", "put", "news", table.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(created["source"], "admin");
    assert_eq!(price(&base, "/news").await, "4");
    stdout(&gate402(&data, &["admin", "disable", "news"]));
    let response = reqwest::get(format!("{base}/news")).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);

    // Refusals: the API's problem, exit 1.
    let output = gate402(&data, &["admin", "price", "nothing", "3"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no service is named \"nothing\""),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A price of 0 is told once (the detail was the one error, said twice).
    let output = gate402(&data, &["admin", "price", "thing", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("is not a positive number").count(),
        1,
        "{stderr}"
    );
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "path = \"no-slash\"\nprice_sats = 4\n").unwrap();
    let output = gate402(&data, &["admin", "put", "broken", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("services.broken.path"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A [[services]] block copied from a gateway config is that service's
    // table (its keys were read as unknown fields, its path as missing).
    let block = dir.path().join("block.toml");
    std::fs::write(
        &block,
        "[[services]]\nname = \"sports\"\npath = \"/sports\"\nprice_sats = 6\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    stdout(&gate402(
        &data,
        &["admin", "put", "sports", block.to_str().unwrap()],
    ));
    assert_eq!(price(&base, "/sports").await, "6");
    let output = gate402(&data, &["admin", "put", "other", block.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("not one named \"other\""), "{stderr}");

    let revenue = stdout(&gate402(&data, &["admin", "revenue"]));
    assert!(revenue.contains("total"), "{revenue}");
    // From when, as the API and receipts read it.
    let since = stdout(&gate402(&data, &["admin", "revenue", "--since", "2h"]));
    assert!(since.contains("total"), "{since}");
    // Its buckets, when asked for.
    let by_day = stdout(&gate402(&data, &["admin", "revenue", "--by", "day"]));
    assert!(by_day.contains("DAY FROM"), "{by_day}");
    assert!(by_day.contains("T00:00:00Z"), "a day's row: {by_day}");
    assert!(!revenue.contains("FROM"), "{revenue}");
    assert!(
        revenue.contains("SERVED"),
        "requests served, beside payments: {revenue}"
    );
    // A bucket or a window the API has no answer for: told by the CLI.
    for args in [&["--by", "week"][..], &["--hours", "0"]] {
        let output = gate402(&data, &[&["admin", "revenue"][..], args].concat());
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    // Totals over a long span need no buckets asked for: they were
    // refused, by hour.
    let long = stdout(&gate402(&data, &["admin", "revenue", "--hours", "20000"]));
    assert!(long.contains("SERVED"), "{long}");
    // Too many buckets asked for: says how many, and what to ask for
    // instead.
    let output = gate402(
        &data,
        &["admin", "revenue", "--by", "hour", "--hours", "20000"],
    );
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        said.contains("20000 hours") && said.contains("by day"),
        "{said}"
    );
    stdout(&gate402(
        &data,
        &[
            "admin",
            "payments",
            "--since",
            "2026-01-01T00:00:00Z",
            "--scheme",
            "mpp",
        ],
    ));
    let none = stdout(&gate402(&data, &["admin", "payments", "--service", "nope"]));
    assert!(none.contains("no payments of service \"nope\""), "{none}");
    let output = gate402(&data, &["admin", "payments", "--since", "yesterday"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected a date"));
    let log = stdout(&gate402(&data, &["admin", "log"]));
    assert!(
        log.contains("service.disable") && log.contains("\"local\""),
        "{log}"
    );
    let link = stdout(&gate402(&data, &["admin", "open"]));
    assert!(
        link.starts_with("http://127.0.0.1:") && link.contains("/admin/login?code="),
        "{link}"
    );
    let node = stdout(&gate402(&data, &["admin", "node"]));
    assert!(node.contains("\"sandbox\""), "{node}");
    // Handed back to the file: its price again.
    stdout(&gate402(&data, &["admin", "reset", "thing"]));
    assert_eq!(price(&base, "/thing").await, "3");

    // The credential goes to a gate402 admin API only: not to the public
    // port, whatever --url says.
    let output = gate402(&data, &["admin", "--url", &base, "services"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is not a gate402 admin API"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Killed hard, the gateway leaves admin.json; it is not trusted.
    let mut serve = serve;
    serve.0.kill().unwrap();
    serve.0.wait().unwrap();
    assert!(data.join("admin.json").exists());
    let output = gate402(&data, &["admin", "services"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no gateway is running on the data dir"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Without one, it names no file that is not there.
    std::fs::remove_file(data.join("admin.json")).unwrap();
    let said = String::from_utf8_lossy(&gate402(&data, &["admin", "services"]).stderr).into_owned();
    assert!(
        said.contains("no gateway is running") && !said.contains("admin.json"),
        "{said}"
    );
}

/// SIGHUP applies `[admin] credentials`: a secret replaced (it leaked)
/// stops working for the next call, and so does a dashboard opened with
/// it; the new secret and the data dir's own keep working, and so does
/// the new `low_inbound_sats`; a change only a restart applies (the
/// listener's address, `[server]`) is logged as such.
#[tokio::test]
async fn sighup_replaces_admin_credentials_and_ends_their_dashboards() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("gate402.toml");
    let leaked = "the ops secret before it leaked, 32+ characters";
    let rotated = "the ops secret after its rotation, 32+ characters";
    let write = |secret: &str, listen: &str, low: u64, server: &str| {
        std::fs::write(
            &config,
            format!(
                "{server}[admin]\nlisten = \"{listen}\"\nlow_inbound_sats = {low}\ncredentials = [{{ name = \"ops\", secret = \"{secret}\" }}]\n\n\
                 [[services]]\nname = \"thing\"\npath = \"/thing\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 3\n"
            ),
        )
        .unwrap()
    };
    write(leaked, "127.0.0.1:0", 1000, "");
    let log = dir.path().join("serve.log");
    let port = free_port();
    let serve = Serve::start(
        &data,
        &config,
        port,
        std::fs::File::create(&log).unwrap().into(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("admin.json").exists() {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("admin.json")).unwrap()).unwrap();
    let admin = file["url"].as_str().unwrap().to_owned();
    let local = std::fs::read_to_string(data.join("admin_secret")).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let services = format!("{admin}/admin/api/services");
    let as_bearer = |secret: String| {
        let request = http.get(&services).bearer_auth(secret);
        async move { request.send().await.unwrap().status() }
    };
    let as_cookie = |cookie: String| {
        let request = http.get(&services).header(reqwest::header::COOKIE, cookie);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(as_bearer(leaked.into()).await, 200);
    // A dashboard opened with the secret that leaked.
    let link = json_of(
        http.post(format!("{admin}/admin/api/login-links"))
            .bearer_auth(leaked),
    )
    .await;
    let opened = http
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 303);
    // `name=value`, without the attributes.
    let set = opened.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    let cookie = set[..set.find(';').unwrap_or(set.len())].to_owned();
    assert_eq!(as_cookie(cookie.clone()).await, 200);

    write(
        rotated,
        "127.0.0.1:1",
        2000,
        "[server]\ncors_origins = [\"https://app.example.com\"]\n",
    );
    assert!(Command::new("kill")
        .args(["-s", "HUP", &serve.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while as_bearer(leaked.into()).await != 401 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not replace the admin credential"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(as_cookie(cookie).await, 401, "the old dashboard is closed");
    assert_eq!(as_bearer(rotated.into()).await, 200);
    // Two credentials at once: neither is guessed at.
    let both = http
        .get(&services)
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {rotated}"))
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {leaked}"))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);
    assert_eq!(as_bearer(local.trim().into()).await, 200);
    let node = json_of(
        http.get(format!("{admin}/admin/api/node"))
            .bearer_auth(rotated),
    )
    .await;
    assert_eq!(node["low_inbound_sats"], 2000);
    // Still where it was: the address waits for a restart, and says so.
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("admin.json")).unwrap()).unwrap();
    assert_eq!(after["url"], file["url"]);
    let logged = std::fs::read_to_string(&log).unwrap();
    // Without the terminal's colours: `ESC [ … m`.
    let plain: String = logged
        .split('\u{1b}')
        .map(|part| {
            part.strip_prefix('[')
                .map_or(part, |p| &p[p.find('m').map_or(0, |m| m + 1)..])
        })
        .collect();
    assert!(plain.contains("admin_credentials=1"), "{plain}");
    assert!(
        logged.contains("SIGHUP: admin.listen: still \"127.0.0.1:0\" until a restart"),
        "{logged}"
    );
    // So is every other such setting; the --listen given at the start is
    // no change.
    assert!(
        logged.contains("SIGHUP: server: changed in the file; the gateway keeps the value it started with until a restart"),
        "{logged}"
    );
    assert!(!logged.contains("SIGHUP: listen"), "{logged}");
    drop(serve);
}
