//! A corpus of malformed configs and command lines: each gets a clear CLI
//! error (a non-zero exit and a message naming the problem), never a panic.
//! The HTTP side of the corpus is `gate402-gateway`'s `tests/bad_input.rs`.

use std::path::Path;
use std::process::{Command, Output};

fn gate402(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("GATE402_CLIENT_CONFIG")
        .output()
        .unwrap()
}

/// Runs `gate402 ARGS`; a failure message unless it exited non-zero with
/// `needle` in its error and no panic.
fn not_a_clear_error(data: &Path, name: &str, args: &[&str], needle: &str) -> Option<String> {
    let out = gate402(data, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let clear = !out.status.success() && !stderr.contains("panicked") && stderr.contains(needle);
    (!clear).then(|| {
        format!(
            "{name}: exit {:?}, expected {needle:?} in: {stderr}",
            out.status.code()
        )
    })
}

/// Gateway configs, each with one mistake, and a word the error must name.
fn gateway_configs() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let service = "[[services]]\nname = \"api\"\npath = \"/api\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 5\n";
    let with = |extra: &str| format!("{service}{extra}").into_bytes();
    vec![
        ("not TOML", b"listen = = 1".to_vec(), "line 1"),
        ("unclosed table", b"[mpp".to_vec(), "unclosed table"),
        ("invalid UTF-8", b"listen = \"\xff\xfe\"".to_vec(), "UTF-8"),
        ("unknown top-level key", format!("colour = \"blue\"\n{service}").into_bytes(), "colour"),
        ("listen not an address", b"listen = \"localhost\"".to_vec(), "listen"),
        ("listen a number", b"listen = 8080".to_vec(), "listen"),
        ("listen port out of range", b"listen = \"127.0.0.1:99999\"".to_vec(), "listen"),
        ("secret too short", with("[mpp]\nsecret = \"short\"\n"), "mpp.secret"),
        ("secret a number", with("[mpp]\nsecret = 12345\n"), "mpp.secret"),
        ("unknown backend", with("[lightning]\nbackend = \"paypal\"\n"), "backend"),
        ("sandbox on mainnet", with("[lightning]\nbackend = \"sandbox\"\nnetwork = \"mainnet\"\n"), "lightning.network"),
        ("lnd without a url", with("[lightning]\nbackend = \"lnd\"\n"), "lightning"),
        ("cln without a rune", with("[lightning]\nbackend = \"cln\"\nurl = \"https://127.0.0.1:3010\"\n"), "lightning"),
        ("nwc with a bad uri", with("[lightning]\nbackend = \"nwc\"\nuri = \"http://wallet\"\n"), "nostr+walletconnect://"),
        ("unknown store kind", with("[store]\nkind = \"redis\"\n"), "store"),
        ("postgres without a url", with("[store]\nkind = \"postgres\"\n"), "store"),
        ("postgres without a shared secret", with("[store]\nkind = \"postgres\"\nurl = \"postgres://x@127.0.0.1/db\"\n"), "secret"),
        ("negative rate limit", with("[limits]\nclient_requests_per_second = -1\n"), "limits"),
        ("rate limit a string", with("[limits]\nunpaid_invoices_per_minute = \"many\"\n"), "limits"),
        ("unknown limits key", with("[limits]\nburst = 3\n"), "burst"),
        ("service without a name", b"[[services]]\npath = \"/a\"\nprice_sats = 1\n".to_vec(), "services[0].name"),
        ("service without a path", b"[[services]]\nname = \"a\"\nprice_sats = 1\n".to_vec(), "services[0].path"),
        ("path without a slash", b"[[services]]\nname = \"a\"\npath = \"a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n".to_vec(), "must start with /"),
        ("price zero", b"[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 0\n".to_vec(), "price_sats"),
        ("price negative", b"[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = -5\n".to_vec(), "price_sats"),
        ("price a string", b"[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = \"five\"\n".to_vec(), "price_sats"),
        ("price beyond 21 million BTC", b"[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 9223372036854775807\n".to_vec(), "price_sats"),
        ("upstream not http", b"[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"ftp://x\"\nprice_sats = 1\n".to_vec(), "upstream"),
        ("upstream not a URL", b"[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"::::\"\nprice_sats = 1\n".to_vec(), "upstream"),
        ("name with spaces", b"[[services]]\nname = \"a b\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n".to_vec(), "services[0].name"),
        ("unknown auth", with("auth = \"maybe\"\n"), "auth"),
        ("unknown scheme", with("schemes = \"bitcoin\"\n"), "schemes"),
        ("unset environment variable", with("headers = { \"X-Key\" = \"${GATE402_TEST_UNSET_VARIABLE}\" }\n"), "GATE402_TEST_UNSET_VARIABLE"),
        ("services not an array of tables", b"services = 5".to_vec(), "services"),
        ("tool without a schema object", with("[[tools]]\nname = \"t\"\ndescription = \"d\"\nservice = \"api\"\ninput_schema = 5\n"), "tools[0]"),
        ("tool of an unknown service", with("[[tools]]\nname = \"t\"\ndescription = \"d\"\nservice = \"nope\"\n"), "tools[0]"),
        ("invoice expiry a string", format!("invoice_expiry_secs = \"soon\"\n{service}").into_bytes(), "invoice_expiry_secs"),
    ]
}

#[test]
fn every_broken_gateway_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let cases = gateway_configs();
    for (i, (name, text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let args = ["serve", "--check", "--config", path.to_str().unwrap()];
        failures.extend(not_a_clear_error(dir.path(), name, &args, needle));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} broken configs, each a clear error", cases.len());
}

#[test]
fn every_malformed_command_line_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let client_config = |name: &str, text: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let bad_toml = client_config("bad.toml", b"max_cost_sats = = 3");
    let unknown_key = client_config("unknown.toml", b"max_cost_satoshis = 3");
    let negative_budget = client_config("budget.toml", b"[budget]\nper_day = -5");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("decode garbage", vec!["decode", "garbage!!"], "decode"),
        (
            "decode a truncated invoice",
            vec!["decode", "lnbcrt10n1pj"],
            "decode",
        ),
        ("decode an empty value", vec!["decode", ""], "decode"),
        ("decode a bare scheme", vec!["decode", "Payment"], "decode"),
        (
            "decode an L402 without preimage",
            vec!["decode", "L402 AGIAJEemVQUTEyNCR0exk7ek90Cg=="],
            "decode",
        ),
        (
            "get with a max cost that is not a number",
            vec!["get", "--max-cost", "lots", "http://127.0.0.1:9/"],
            "max-cost",
        ),
        (
            "get with a negative max cost",
            vec!["get", "--max-cost=-3", "http://127.0.0.1:9/"],
            "max-cost",
        ),
        (
            "get with a client config that is not TOML",
            vec!["get", "--config", &bad_toml, "http://127.0.0.1:9/"],
            "bad.toml",
        ),
        (
            "get with an unknown client config key",
            vec!["get", "--config", &unknown_key, "http://127.0.0.1:9/"],
            "max_cost_satoshis",
        ),
        (
            "get with a negative budget",
            vec!["get", "--config", &negative_budget, "http://127.0.0.1:9/"],
            "per_day",
        ),
        (
            "get with a missing client config",
            vec![
                "get",
                "--config",
                "/nonexistent/client.toml",
                "http://127.0.0.1:9/",
            ],
            "client.toml",
        ),
        (
            "mcp call with arguments that are not JSON",
            vec![
                "mcp",
                "call",
                "http://127.0.0.1:9/mcp",
                "weather",
                "--args",
                "{city:",
            ],
            "args",
        ),
        (
            "serve with a missing config",
            vec!["serve", "--check", "--config", "/nonexistent/gate402.toml"],
            "gate402.toml",
        ),
        ("unknown subcommand", vec!["fetch"], "fetch"),
    ];
    let cases: Vec<_> = cases.into_iter().chain(usage_errors()).collect();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, args, needle)| not_a_clear_error(dir.path(), name, args, needle))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{} malformed command lines, each a clear error",
        cases.len()
    );
}

/// Command-line values that cannot be used, each with a word its error
/// names: usage errors, exit 2 as the README's table says, named before
/// anything runs (a URL, a header, a method, `--since`, `--args`,
/// `--listen`).
fn usage_errors() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    vec![
        ("get a relative URL", vec!["get", "/api/weather"], "URL"),
        ("get a word for a URL", vec!["get", "notaurl"], "URL"),
        (
            "get a non-http URL",
            vec!["get", "ftp://example.com/x"],
            "http",
        ),
        (
            "get with an invalid header",
            vec!["get", "-H", "no colon here", "http://127.0.0.1:9/"],
            "Name: value",
        ),
        (
            "get with a header name that is none",
            vec!["get", "-H", "bad name: x", "http://127.0.0.1:9/"],
            "not a header name",
        ),
        (
            "get with a method that is none",
            vec!["get", "-X", "GE T", "http://127.0.0.1:9/"],
            "not an HTTP method",
        ),
        (
            "get with both kinds of --fail",
            vec!["get", "-f", "--fail-with-body", "http://127.0.0.1:9/"],
            "cannot be used with",
        ),
        (
            "receipts since a word",
            vec!["receipts", "--since", "garbage"],
            "--since",
        ),
        (
            "mcp call with arguments that are not an object",
            vec![
                "mcp",
                "call",
                "http://127.0.0.1:9/mcp",
                "weather",
                "--args",
                "[1]",
            ],
            "args",
        ),
        (
            "mcp call to a non-URL",
            vec!["mcp", "call", "not a url", "weather"],
            "URL",
        ),
        // A host name is told what an address looks like.
        (
            "serve on a host name",
            vec!["serve", "--listen", "example.com:8402"],
            "is not an address like 127.0.0.1:8402",
        ),
        (
            "mcp-proxy on a host name",
            vec!["mcp-proxy", "--listen", "example.com:8402"],
            "is not an address like 127.0.0.1:8402",
        ),
    ]
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args, needle) in usage_errors() {
        let out = gate402(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {args:?}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
}

/// A data dir that is a file is said to be one (the error read `creating
/// …: File exists`).
#[test]
fn a_data_dir_that_is_a_file_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("afile");
    std::fs::write(&file, "x").unwrap();
    let out = gate402(&file, &["serve", "--listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("afile is not a directory"), "{stderr}");
}
