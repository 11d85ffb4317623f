//! `gate402 serve --check` on the example configs.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    common::manifest_dir().join("../../examples").join(name)
}

fn check(config: &PathBuf) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .args(["serve", "--check", "--config"])
        .arg(config)
        .env("FORECAST_API_KEY", "test-key")
        .env_remove("GATE402_UNSET_EXAMPLE_VARIABLE")
        .output()
        .unwrap()
}

#[test]
fn the_commented_example_is_valid() {
    let out = check(&example("gate402.toml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (2 services, 1 MCP tools, lightning backend sandbox"),
        "{stdout}"
    );
    // What each service sells, in words.
    for line in [
        "  forecast: 10 sat for a pass of 3600 s (L402; an MPP charge serves one request)",
        "  status: 5 free calls per client, then 1 sat per request",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in:\n{stdout}");
    }
}

#[test]
fn every_error_of_the_broken_example_with_its_key_path() {
    let out = check(&example("broken.toml"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "environment variable GATE402_UNSET_EXAMPLE_VARIABLE is not set",
        "listen: \"localhost\" is not an address",
        "colour: unknown field",
        "lightning.network: the sandbox backend is test money",
        "mpp.secret: must be at least 32 bytes",
        "services[0].name: is required",
        "services[0].path: is required",
        "services[0].price_sats: 0 is not a positive number",
        "services[1].name: \"bad upstream\" must be letters",
        "services[1].path: \"v1/*\" must start with /",
        "services[1].upstream: \"ftp://files.example.com\"",
        "services[1].auth: \"maybe\"",
        "services[1].schemes: \"bitcoin\"",
        "services[1].sells: \"forever\" is not \"request\", \"pass\" or \"balance\"",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }
    assert!(
        stderr.lines().all(|l| l.contains("broken.toml: ")),
        "every line names the file"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = check(&example("no-such-file.toml"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No such file"), "{stderr}");
    // Named once (it was "x.toml: x.toml: No such file").
    assert_eq!(stderr.matches("no-such-file.toml").count(), 1, "{stderr}");
}

#[test]
fn a_risky_config_passes_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("risky.toml");
    std::fs::write(
        &config,
        r#"
[[services]]
name = "premium"
path = "/premium/*"
upstream = "http://127.0.0.1:9000"
price_sats = 1000

[[services]]
name = "public"
path = "/public/*"
upstream = "http://127.0.0.1:9000"
price_sats = 1
auth = "off"
rewrite = { strip_prefix = "/public" }

[[services]]
name = "gold"
path = "/gold/*"
upstream = "http://[::ffff:127.0.0.1]:9000/"
price_sats = 5

[[services]]
name = "open"
path = "/open/*"
upstream = "http://localhost:9000"
auth = "off"
rewrite = { strip_prefix = "/open" }

[[services]]
name = "members"
path = "/members/*"
host = "api.example.com"
upstream = "http://API.example.com:80"
price_sats = 5

[[services]]
name = "guest"
path = "/*"
host = "www.example.com"
upstream = "http://api.example.com"
auth = "off"

[[services]]
name = "everything-else"
path = "/*"
upstream = "http://127.0.0.1:9000"
price_sats = 1
auth = "off"
capabilities = ["read"]

[mcp_proxy]
url = "http://127.0.0.1:9001/mcp"
prices = { search = 20 }
"#,
    )
    .unwrap();
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "warning: services[1] (\"public\", free, /public/*) is forwarded to the upstream paths of services[0] (\"premium\", paid, /premium/*) on the same upstream",
        "warning: services[3] (\"open\", free, /open/*) is forwarded to the upstream paths of services[2] (\"gold\", paid, /gold/*) on the same upstream",
        "warning: services[5] (\"guest\", free, /*) is forwarded to the upstream paths of services[4] (\"members\", paid, /members/*) on the same upstream",
        "warning: services[6] (\"everything-else\", free, /*) catches what does not match services[0] (\"premium\", paid, /premium/*); they share an upstream",
        "warning: services[6].capabilities: ignored",
        "warning: mcp_proxy: no default_price_sats: tools not named in prices are refused",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from:\n{stderr}");
    }
}

/// Warnings are shown with errors, not only once the errors are fixed: a
/// method's typo is worth knowing while mending the rest.
#[test]
fn warnings_are_shown_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("both.toml");
    std::fs::write(
        &config,
        r#"
[[services]]
name = "typo"
path = "/typo"
methods = ["GETT"]
upstream = "http://127.0.0.1:9000"
price_sats = 5

[[services]]
name = "broken"
path = "no-slash"
upstream = "http://127.0.0.1:9000"
price_sats = 5
"#,
    )
    .unwrap();
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("services[1].path"), "{stderr}");
    assert!(
        stderr.contains("warning: services[0].methods[0]: \"GETT\"")
            && stderr.contains("did you mean \"GET\""),
        "{stderr}"
    );
}

/// The example is built in, for those who have only the program.
#[test]
fn the_example_is_printed_by_the_program() {
    let out = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .args(["serve", "--example-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let file = std::fs::read(example("gate402.toml")).unwrap();
    assert_eq!(out.stdout, file);
}

/// `--check` checks the config as `serve` would run it: `--listen` and
/// `--admin-listen` over the file's addresses, with the warnings those
/// addresses call for (and not those the file's own would).
#[test]
fn the_check_takes_the_listen_addresses_of_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.toml");
    std::fs::write(
        &file,
        "listen = \"0.0.0.0:8402\"\n[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gate402"))
            .args(["serve", "--check", "--config"])
            .arg(&file)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, stderr) = run(&[]);
    assert!(stderr.contains("/sandbox/pay"), "{stderr}");
    let (stdout, stderr) = run(&["--listen", "127.0.0.1:8402"]);
    assert!(!stderr.contains("/sandbox/pay"), "{stderr}");
    assert!(stdout.contains("listen 127.0.0.1:8402"), "{stdout}");
    let (_, stderr) = run(&[
        "--listen",
        "127.0.0.1:8402",
        "--admin-listen",
        "0.0.0.0:8403",
    ]);
    assert!(
        stderr.contains("admin.listen: 0.0.0.0:8403 is not a loopback"),
        "{stderr}"
    );
    // The admin API on the gateway's own port, both given on the command
    // line or one over the file's: refused by the check as by `serve`,
    // not left to fail binding.
    for (args, clash) in [
        (
            &[
                "--listen",
                "127.0.0.1:8405",
                "--admin-listen",
                "127.0.0.1:8405",
            ][..],
            "127.0.0.1:8405",
        ),
        (&["--admin-listen", "127.0.0.1:8402"], "127.0.0.1:8402"),
    ] {
        for command in [
            &["serve", "--check", "--config"][..],
            &["serve", "--config"],
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_gate402"))
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(command)
                .arg(&file)
                .args(args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command:?} {args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("admin.listen: {clash} is the gateway's own port")),
                "{command:?} {args:?}: {stderr}"
            );
        }
    }
}

/// A gateway whose port is taken says only that: no admin listener
/// started (and said to listen), no `admin.json` left for `gate402 admin`.
#[test]
fn a_taken_port_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("listen: cannot bind"), "{stderr}");
    assert!(
        !stderr.contains("admin API and dashboard listening"),
        "{stderr}"
    );
    assert!(!dir.path().join("admin.json").exists(), "{stderr}");
}
