//! The config's parsing and checks.

use axum::http::Method;

use super::*;

fn env(name: &str) -> Option<String> {
    (name == "API_KEY").then(|| "sekret".to_owned())
}

#[test]
fn a_full_config() {
    let config = GatewayConfig::parse(
        r#"
        listen = "0.0.0.0:9000"
        name = "Weather Inc"
        invoice_expiry_secs = 900
        [mpp]
        realm = "api.weather.test"
        secret = "0123456789abcdef0123456789abcdef"
        [[services]]
        name = "forecast"
        host = "*.weather.test"
        path = "/v1/forecast/*"
        methods = ["get"]
        upstream = "http://127.0.0.1:9001/"
        price_sats = 21
        auth = "freebie 3"
        schemes = "l402"
        token_lifetime_secs = 60
        capabilities = ["read"]
        description = "Forecasts"
        headers = { "X-Api-Key" = "${API_KEY}" }
        rewrite = { strip_prefix = "/v1", add_prefix = "/internal" }
        "#,
        env,
    )
    .unwrap();
    assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
    let s = &config.services[0];
    let up = s.upstream.as_ref().unwrap();
    assert_eq!(s.priced.auth, Auth::Freebie(3));
    assert_eq!(s.priced.schemes, Schemes::L402);
    assert_eq!(up.headers[0].1, "sekret");
    assert_eq!(up.url, "http://127.0.0.1:9001");
    let path = |p| RequestPath::parse(p).unwrap();
    assert_eq!(
        up.rewrite.apply(&path("/v1/forecast/oslo")),
        "/internal/forecast/oslo"
    );
    assert!(config.warnings.iter().any(|w| w.contains("capabilities")));
    let routes = gate402_paywall::route::Routes::new([s.priced.clone()]);
    let find =
        |host, method: &Method, p| routes.find(Some(host), method, &path(p)).unwrap().is_some();
    assert!(find("eu.weather.test", &Method::GET, "/v1/forecast/oslo"));
    assert!(!find("weather.test", &Method::GET, "/v1/forecast/oslo"));
    assert!(!find("eu.weather.test", &Method::POST, "/v1/forecast/oslo"));
    assert!(!find("eu.weather.test", &Method::GET, "/v1/other"));
}

#[test]
fn rewrites_never_leave_their_prefix() {
    let rewrite = Rewrite {
        strip_prefix: Some("/v1/fc".into()),
        add_prefix: Some("/cheap".into()),
    };
    let path = |p| RequestPath::parse(p).unwrap();
    assert_eq!(rewrite.apply(&path("/v1/fc/x")), "/cheap/x");
    assert_eq!(rewrite.apply(&path("/V1/FC")), "/cheap");
    assert_eq!(rewrite.apply(&path("/v1/fc/")), "/cheap/");
    // Not at a segment boundary: nothing is stripped.
    assert_eq!(rewrite.apply(&path("/v1/fcadmin")), "/cheap/v1/fcadmin");
    // Dot segments are resolved before: the service never matches.
    assert_eq!(
        path("/v1/fc/../../admin/secret.txt").as_str(),
        "/admin/secret.txt"
    );
    let errors = GatewayConfig::parse(
        "[[services]]\nname = \"a\"\npath = \"/v1/*\"\nprice_sats = 1\nupstream = \"http://127.0.0.1:9\"\nrewrite = { strip_prefix = \"/v1/fc\" }\n",
        env,
    )
    .unwrap_err();
    assert!(
        errors.to_string().contains("rewrite.strip_prefix"),
        "{errors}"
    );
    // A path in error is said once: its rewrite is not checked against
    // the `/` that stood in for it.
    let errors = GatewayConfig::parse(
        "[[services]]\nname = \"a\"\npath = \"api/weather\"\nprice_sats = 1\nupstream = \"http://127.0.0.1:9\"\nrewrite = { strip_prefix = \"/api\" }\n",
        env,
    )
    .unwrap_err();
    assert_eq!(
        errors.0,
        ["services[0].path: \"api/weather\" must start with /"],
        "{errors}"
    );
}

#[test]
fn a_path_ending_in_a_slash_without_a_star_is_warned_of() {
    let warnings = |path: &str| {
        GatewayConfig::parse(
            &format!("[[services]]\nname = \"a\"\npath = \"{path}\"\nprice_sats = 1\nupstream = \"http://127.0.0.1:9\"\n"),
            env,
        )
        .unwrap()
        .warnings
    };
    let warned = warnings("/docs/");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].starts_with("services[0].path: \"/docs/\" is the one path \"/docs\"")
            && warned[0].ends_with("write \"/docs/*\" for that"),
        "{warned:?}"
    );
    for path in ["/docs", "/docs/*", "/", "/*"] {
        assert_eq!(warnings(path), Vec::<String>::new(), "{path}");
    }
}

#[test]
fn every_error_with_its_key_path() {
    let errors = GatewayConfig::parse(
        r#"
        listen = "nowhere"
        colour = "blue"
        [lightning]
        backend = "sandbox"
        network = "mainnet"
        [mpp]
        secret = "short"
        [[services]]
        path = "api/*"
        price_sats = -5
        auth = "sometimes"
        [[services]]
        name = "b"
        path = "/b"
        price_sats = 1
        upstream = "ftp://x"
        headers = { "X-Key" = "${MISSING}", "Content-Length" = "5", "transfer-encoding" = "chunked", "Host" = "x" }
        "#,
        env,
    )
    .unwrap_err()
    .0;
    let expected = [
        "services[1].headers.X-Key: environment variable MISSING is not set",
        "services[1].headers.Content-Length: is the gateway's to set",
        "services[1].headers.transfer-encoding: is the gateway's to set",
        "services[1].headers.Host: is the gateway's to set",
        "colour: unknown field `colour`",
        "listen: \"nowhere\" is not an address",
        "test money on regtest",
        "mpp.secret: must be at least 32 bytes",
        "services[0].name: is required",
        "services[0].path: \"api/*\" must start with /",
        "services[0].price_sats: -5 is not a positive number",
        "services[0].auth: \"sometimes\"",
        "services[1].upstream: \"ftp://x\"",
    ];
    for needle in expected {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "{needle:?} missing from {errors:#?}"
        );
    }
}

/// The listener's certificate and key are read as the listener reads them:
/// a file that holds no certificate, or a key of another certificate, is
/// an error of the config, not of the start.
#[test]
fn tls_files_are_read_when_the_config_is() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let one = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = write("cert.pem", &one.cert.pem());
    let key = write("key.pem", &one.signing_key.serialize_pem());
    let other_key = write("other.pem", &other.signing_key.serialize_pem());
    let junk = write("junk.pem", "hello");
    let config = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nupstream = \"http://127.0.0.1:9\"\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    assert!(GatewayConfig::parse(&config(&cert, &key), env).is_ok());
    for (cert, key, said) in [
        (&junk, &key, "holds no certificate"),
        (&cert, &junk, "tls"),
        (&cert, &other_key, "tls"),
    ] {
        let errors = GatewayConfig::parse(&config(cert, key), env).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("tls") && e.contains(said)),
            "{cert:?} {key:?}: {errors:#?}"
        );
    }
}

/// A listener's certificate that expired, or expires within two weeks, is
/// warned of: `--check` said `ok` of one every client would refuse.
#[test]
fn a_certificate_that_expired_or_soon_will_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let warnings = |not_after: time::OffsetDateTime| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::UNIX_EPOCH;
        params.not_after = not_after;
        let cert = params.self_signed(&key).unwrap();
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        GatewayConfig::parse(
            &format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                cert_file.display().to_string(),
                key_file.display().to_string()
            ),
            env,
        )
        .unwrap()
        .warnings
        .into_iter()
        .filter(|w| w.starts_with("tls.cert"))
        .collect::<Vec<_>>()
    };
    let now = time::OffsetDateTime::now_utc();
    let expired = warnings(now - time::Duration::days(3));
    assert!(
        expired.len() == 1 && expired[0].contains("expired at"),
        "{expired:?}"
    );
    let soon = warnings(now + time::Duration::days(5));
    assert!(
        soon.len() == 1 && (soon[0].contains("in 4 days") || soon[0].contains("in 5 days")),
        "{soon:?}"
    );
    assert!(warnings(now + time::Duration::days(90)).is_empty());
}

#[test]
fn env_is_expanded_in_string_values_only() {
    let config = GatewayConfig::parse(
        r#"
        # ${UNSET} in a comment is fine
        name = "a # b ${API_KEY}" # ${UNSET_TOO}
        [mcp]
        allowed_hosts = ["x", "${API_KEY}.example"]
        [mcp_proxy]
        url = "http://127.0.0.1:9/mcp"
        prices = { "${UNSET}" = 1 }
        [[services]]
        name = "a"
        path = "/a"
        price_sats = 1
        upstream = "http://127.0.0.1:9"
        headers = { "X-Key" = "${API_KEY}${API_KEY}", "X-Literal" = "$API_KEY ${" }
        [[tools]]
        name = "t"
        description = "calls ${API_KEY}"
        service = "a"
        input_schema = { type = "object", properties = { q = { description = "${API_KEY}" } } }
        "#,
        env,
    )
    .unwrap();
    assert_eq!(config.name, "a # b sekret");
    let hosts = config.mcp.allowed_hosts.unwrap();
    assert_eq!(hosts, ["x", "sekret.example"]);
    // Keys are names, not values: never expanded.
    assert_eq!(config.mcp_proxy.unwrap().prices["${UNSET}"], 1);
    let headers = &config.services[0].upstream.as_ref().unwrap().headers;
    let header = |name: &str| &headers.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(header("x-key"), "sekretsekret");
    assert_eq!(header("x-literal"), "$API_KEY ${");
    let tool = &config.tools[0];
    assert_eq!(tool.description, "calls sekret");
    assert_eq!(
        tool.input_schema["properties"]["q"]["description"],
        "sekret"
    );
}

#[test]
fn an_env_value_is_taken_literally() {
    let text = "[mpp]\nsecret = \"${SECRET}\"\n[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n";
    // 32 bytes that would close the string and add a table, were the
    // variable pasted into the text.
    let injected = "ab\"c\n[lightning]\nbackend = \"lnd\"";
    let with = |secret: &'static str| {
        GatewayConfig::parse(text, move |name| {
            (name == "SECRET").then(|| secret.to_owned())
        })
    };
    let config = with(injected).unwrap();
    assert_eq!(config.mpp.secret.as_deref(), Some(injected));
    assert_eq!(config.lightning.name(), "sandbox");
    let mut plain = with("0123456789abcdef0123456789abcdef").unwrap();
    plain.mpp.secret = Some(injected.to_owned());
    assert_eq!(format!("{config:?}"), format!("{plain:?}"));
}

#[test]
fn an_unset_variable_is_named_with_its_key_path() {
    let errors = GatewayConfig::parse(
        "name = \"${NOPE}\"\n[mcp]\nallowed_hosts = [\"a\", \"${API_KEY}\", \"${GONE}\"]\n",
        env,
    )
    .unwrap_err()
    .0;
    assert_eq!(
        errors,
        [
            "mcp.allowed_hosts[2]: environment variable GONE is not set",
            "name: environment variable NOPE is not set",
        ]
    );
    let mut table: Table = toml::from_str("a = [{ b = \"${X}\" }]").unwrap();
    let errors = expand_env(&mut table, |_| None).unwrap_err();
    assert_eq!(errors.0, ["a[0].b: environment variable X is not set"]);
}

#[test]
fn an_unknown_key_in_a_service_is_named() {
    let errors = GatewayConfig::parse(
        "[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n[[services]]\nname = \"b\"\npath = \"/b\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\ncolour = \"blue\"\n",
        env,
    )
    .unwrap_err()
    .0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("services[1].colour: unknown field `colour`"),
        "{errors:#?}"
    );
}

#[test]
fn every_broken_service_and_every_mistake_in_one_is_reported() {
    let errors = GatewayConfig::parse(
        r#"
        [[services]]
        name = "a"
        path = "/a"
        upstream = "http://127.0.0.1:9"
        price_sats = "five"
        methods = ["GET", 3]
        colour = "blue"
        [[services]]
        name = "b"
        path = "b"
        upstream = "http://127.0.0.1:9"
        price_sats = 1
        rewrite = { strip = "/b" }
        [[services]]
        name = "c"
        path = "/c"
        price_sats = 1
        [[tools]]
        name = 7
        description = "d"
        service = "c"
        [[tools]]
        name = "t"
        service = "c"
        [[tools]]
        name = "u"
        description = "d"
        service = "nope"
        method = 5
        "#,
        env,
    )
    .unwrap_err()
    .0;
    let expected = [
        "services[0].colour: unknown field `colour`",
        "services[0].methods[1]: invalid type: integer `3`",
        "services[0].price_sats: invalid type: string \"five\"",
        "services[1].path: \"b\" must start with /",
        "services[1].rewrite.strip: unknown field `strip`",
        "tools[0].name: invalid type: integer `7`",
        "tools[1]: missing field `description`",
        "tools[2].method: invalid type: integer `5`",
        "tools[2].service: no [[services]] entry is named \"nope\"",
        // A service the gateway would sell and answer 503.
        "services[2].upstream: is required",
    ];
    assert_errors(&errors, &expected);
    // A value of the wrong type is not also missing.
    assert!(
        !errors.iter().any(|e| (e.contains("is required")
            && !e.starts_with("services[2].upstream"))
            || e.contains("missing field `name`")),
        "{errors:#?}"
    );
}

/// A value of the wrong type is told in TOML's words, not Rust's.
#[test]
fn a_wrong_type_is_told_in_words() {
    let errors = GatewayConfig::parse(
        "listen = \"127.0.0.1:8402\"\ninvoice_expiry_secs = \"ten\"\n[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = \"5\"\n",
        env,
    )
    .unwrap_err()
    .0;
    assert_errors(
        &errors,
        &[
            "invoice_expiry_secs: invalid type: string \"ten\", expected a whole number",
            "services[0].price_sats: invalid type: string \"5\", expected a whole number",
        ],
    );
    assert!(!errors.iter().any(|e| e.contains("i64")), "{errors:?}");
}

#[test]
fn a_section_of_the_wrong_shape() {
    let errors = GatewayConfig::parse(
        "store = \"sqlite\"\nservices = 5\ntools = [1]\nlisten = 8080\n",
        env,
    )
    .unwrap_err()
    .0;
    assert_eq!(
        errors,
        [
            "listen: invalid type: integer `8080`, expected a string",
            "store: expected a table, found string",
            "services: expected an array of tables ([[services]])",
            "tools[0]: expected a table ([[tools]])",
        ]
    );
}

#[test]
fn patterns() {
    assert_eq!(
        Rewrite {
            strip_prefix: Some("/api".into()),
            add_prefix: None
        }
        .apply(&RequestPath::parse("/api").unwrap()),
        "/"
    );
}

#[test]
fn other_configs_of_the_family() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Client {
        key: Option<String>,
        #[serde(default)]
        limits: gate402_paywall::LimitsConfig,
    }
    let client: Client = parse_with_env("key = \"${API_KEY}\"", env).unwrap();
    assert_eq!(client.key.as_deref(), Some("sekret"));
    assert_eq!(client.limits, gate402_paywall::LimitsConfig::default());
    let errors = parse_with_env::<Client>(
        "kee = 1\nkey = \"${GONE}\"\n[limits]\nclient_requests_per_second = \"x\"\n",
        env,
    )
    .unwrap_err()
    .0;
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert_eq!(errors[0], "key: environment variable GONE is not set");
    assert!(
        errors[1].starts_with("kee: unknown field `kee`"),
        "{errors:#?}"
    );
    assert!(
        errors[2].starts_with("limits.client_requests_per_second: invalid type"),
        "{errors:#?}"
    );
}

#[test]
fn a_name_used_twice_is_named_where_it_is_written() {
    let service = |name: &str, path: &str| {
        format!("[[services]]\n{name}path = \"{path}\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n")
    };
    let text =
        service("", "/a") + &service("name = \"a\"\n", "/b") + &service("name = \"a\"\n", "/c");
    let errors = GatewayConfig::parse(&text, env).unwrap_err().0;
    assert_eq!(
        errors,
        [
            "services[0].name: is required",
            "services[2].name: \"a\" is used by an earlier service",
        ]
    );
}

/// An upstream written but unusable is reported once, as such: not also
/// as missing for the settings that go with it.
#[test]
fn an_unusable_upstream_is_not_also_missing() {
    let text = "[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nupstream = \"ftp://x\"\nheaders = { X-Key = \"k\" }\nresponse_timeout_secs = 5\n";
    let errors = GatewayConfig::parse(text, env).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("services[0].upstream: \"ftp://x\""),
        "{errors:?}"
    );
    let text =
        "[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nheaders = { X-Key = \"k\" }\n";
    let errors = GatewayConfig::parse(text, env).unwrap_err().0;
    assert!(
        errors.iter().any(|e| e.contains("this service has none")),
        "{errors:?}"
    );
}

/// The first route that matches wins: a later one that an earlier one
/// takes every request of (its path, host and methods) is refused, not
/// listed in discovery at a price never asked.
#[test]
fn a_route_an_earlier_one_takes_every_request_of_is_refused() {
    let service = |name: &str, rest: &str| {
        format!("[[services]]\nname = \"{name}\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n{rest}\n")
    };
    let refused = |text: String| GatewayConfig::parse(&text, env).unwrap_err().0;
    let text = service("a", "path = \"/a\"") + &service("b", "path = \"/A/\"");
    assert_eq!(
        refused(text),
        ["services[1].path: \"/A/\" is never reached: services[0] (\"a\", /a) comes first and takes every request it would; put the narrower route first"]
    );
    // Named where they are written, a service that cannot be read before.
    let text = service("x", "path = \"no slash\"")
        + &service("a", "path = \"/a\"")
        + &service("b", "path = \"/a\"");
    let errors = refused(text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[1].starts_with("services[2].path: \"/a\" is never reached: services[1] (\"a\""),
        "{errors:?}"
    );
    for (first, second) in [
        ("path = \"/*\"", "path = \"/premium/*\""),
        ("path = \"/v1/*\"", "path = \"/v1/x\""),
        ("path = \"/v1/*\"", "path = \"/v1/x\"\nmethods = [\"POST\"]"),
        (
            "path = \"/v1/*\"\nmethods = [\"GET\", \"POST\"]",
            "path = \"/v1/x\"\nmethods = [\"post\"]",
        ),
        (
            "path = \"/v1/*\"",
            "path = \"/v1/x\"\nhost = \"api.example.com\"",
        ),
        (
            "path = \"/v1/*\"\nhost = \"*.example.com\"",
            "path = \"/v1/x\"\nhost = \"a.example.com\"",
        ),
    ] {
        let errors = refused(service("a", first) + &service("b", second));
        assert!(
            errors.len() == 1 && errors[0].contains("is never reached"),
            "{first} / {second}: {errors:?}"
        );
    }
    // Reached: narrower first, other methods or another host.
    for (first, second) in [
        ("path = \"/premium/*\"", "path = \"/*\""),
        ("path = \"/v1/x\"", "path = \"/v1/*\""),
        ("path = \"/v1/*\"\nmethods = [\"GET\"]", "path = \"/v1/x\""),
        (
            "path = \"/v1/*\"\nmethods = [\"GET\"]",
            "path = \"/v1/x\"\nmethods = [\"POST\"]",
        ),
        (
            "path = \"/v1/*\"\nhost = \"api.example.com\"",
            "path = \"/v1/x\"",
        ),
        (
            "path = \"/v1/*\"\nhost = \"a.example.com\"",
            "path = \"/v1/*\"\nhost = \"b.example.com\"",
        ),
    ] {
        let text = service("a", first) + &service("b", second);
        assert!(
            GatewayConfig::parse(&text, env).is_ok(),
            "{first} / {second}"
        );
    }
}

#[test]
fn discovery_links_and_categories() {
    let config = GatewayConfig::parse(
        r#"
        [discovery]
        categories = ["data", "developer-tools"]
        homepage = "https://weather.example"
        docs = "/docs"
        llms = "https://weather.example/llms.txt"
        "#,
        env,
    )
    .unwrap();
    assert_eq!(config.discovery.categories, ["data", "developer-tools"]);
    assert_eq!(config.discovery.docs.as_deref(), Some("/docs"));
    // A config that sells nothing says so.
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].starts_with("no [[services]]"));
    assert_eq!(
        GatewayConfig::parse("", env).unwrap().discovery,
        DiscoveryConfig::default()
    );

    let errors = GatewayConfig::parse(
        r#"
        [discovery]
        categories = ["a", "b", "c", "d", "e", ""]
        homepage = "weather.example"
        llms = "https://weather.example/llms .txt"
        colour = "blue"
        "#,
        env,
    )
    .unwrap_err()
    .0;
    assert_eq!(
        errors,
        [
            "discovery.colour: unknown field `colour`, expected one of `categories`, `homepage`, `docs`, `llms`",
            "discovery.categories: at most 5 categories",
            "discovery.categories[5]: must not be empty",
            "discovery.homepage: \"weather.example\" is not an http(s) URL or a path starting with /",
            "discovery.llms: \"https://weather.example/llms .txt\" is not an http(s) URL or a path starting with /",
        ]
    );
    let warned = GatewayConfig::parse("[discovery]\ncategories = [\"Weather Data\"]\n", env)
        .unwrap()
        .warnings;
    assert!(
        warned[0].starts_with("discovery.categories[0]"),
        "{warned:?}"
    );
}

#[test]
fn what_a_service_sells() {
    let sells = |extra: &str| {
        let config = GatewayConfig::parse(
            &format!("[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nupstream = \"http://127.0.0.1:9\"\n{extra}"),
            env,
        );
        config.map(|c| {
            (
                c.services[0].priced.sells,
                c.services[0].priced.token_lifetime_secs,
            )
        })
    };
    assert_eq!(sells("").unwrap(), (Sells::Request, 3600));
    assert_eq!(sells("sells = \"pass\"\n").unwrap(), (Sells::Pass, 3600));
    // A lifetime stated before `sells` existed kept tokens as passes: still so.
    assert_eq!(
        sells("token_lifetime_secs = 60\n").unwrap(),
        (Sells::Pass, 60)
    );
    assert_eq!(
        sells("sells = \"request\"\ntoken_lifetime_secs = 60\n").unwrap(),
        (Sells::Request, 60)
    );
    let errors = sells("sells = \"forever\"\n").unwrap_err();
    assert!(
        errors.0.iter().any(|e| e.contains("services[0].sells")),
        "{errors:?}"
    );
    // "Forever" as the largest number: a `_valid_until` past what clients
    // read as a time. A hundred years is the most.
    assert_eq!(
        sells("token_lifetime_secs = 3155760000\n").unwrap(),
        (Sells::Pass, 3_155_760_000)
    );
    for secs in ["0", "3155760001", "9223372036854775807"] {
        let errors = sells(&format!("token_lifetime_secs = {secs}\n")).unwrap_err();
        assert!(
            errors
                .0
                .iter()
                .any(|e| e
                    .contains("services[0].token_lifetime_secs: must be between 1 and 3155760000")),
            "{secs}: {errors:?}"
        );
    }
}

#[test]
fn the_admin_table_is_checked_and_the_services_kept_as_written() {
    let config = GatewayConfig::parse(
        r#"
        [admin]
        listen = "127.0.0.1:8403"
        sync_secs = 2
        credentials = [{ name = "ops", secret = "${OPS}" }]
        [[services]]
        name = "weather"
        path = "/weather"
        price_sats = 10
        upstream = "http://127.0.0.1:9001"
        headers = { "x-api-key" = "${API_KEY}" }
        "#,
        |name| match name {
            "OPS" => Some("o".repeat(40)),
            other => env(other),
        },
    )
    .unwrap();
    assert_eq!(config.admin.listen, "127.0.0.1:8403");
    assert_eq!(config.admin.sync_secs, 2);
    assert_eq!(config.admin.credentials[0].name, "ops");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // As written: the variable, not its value.
    assert_eq!(
        config.service_tables[0]["headers"]["x-api-key"].as_str(),
        Some("${API_KEY}")
    );
    // A credential's secret never shows in a debug print.
    assert!(!format!("{:?}", config.admin).contains(&"o".repeat(40)));

    let errors = GatewayConfig::parse(
        r#"
        [admin]
        listen = "everywhere"
        sync_secs = 0
        credentials = [
          { name = "local", secret = "0123456789abcdef0123456789abcdef" },
          { name = "ops", secret = "short" },
          { name = "ops", secret = "0123456789abcdef0123456789abcdef" },
        ]
        surprise = 1
        "#,
        env,
    )
    .unwrap_err();
    let text = errors.to_string();
    assert!(
        text.contains("admin: unknown field `surprise`") || text.contains("surprise"),
        "{text}"
    );

    let errors = GatewayConfig::parse(
        r#"
        [admin]
        listen = "everywhere"
        sync_secs = 0
        credentials = [
          { name = "local", secret = "0123456789abcdef0123456789abcdef" },
          { name = "ops", secret = "short" },
          { name = "ops", secret = "0123456789abcdef0123456789abcdef" },
        ]
        "#,
        env,
    )
    .unwrap_err()
    .0;
    for expected in [
        "admin.listen",
        "admin.sync_secs",
        "admin.credentials[0].name",
        "admin.credentials[1].secret",
        "admin.credentials[2].name",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected}: {errors:?}"
        );
    }

    // `localhost` is the loopback address; another host name is told
    // what an address looks like.
    let local = GatewayConfig::parse("listen = \"localhost:18505\"\n", env).unwrap();
    assert_eq!(local.listen, "127.0.0.1:18505".parse().unwrap());
    let named = GatewayConfig::parse("listen = \"example.com:8402\"\n", env).unwrap_err();
    assert!(named.0[0].contains("an IP address or localhost"), "{named}");

    let clash = GatewayConfig::parse(
        "listen = \"127.0.0.1:8402\"\n[admin]\nlisten = \"127.0.0.1:8402\"\n",
        env,
    )
    .unwrap_err();
    assert!(clash.0[0].starts_with("admin.listen"), "{clash}");
    let open = GatewayConfig::parse("[admin]\nlisten = \"0.0.0.0:8403\"\n", env).unwrap();
    assert!(
        open.warnings
            .iter()
            .any(|w| w.contains("not a loopback address")),
        "{:?}",
        open.warnings
    );
}

#[test]
fn a_service_table_from_the_admin_api_is_checked_as_the_files_are() {
    let table: toml::Table = toml::from_str(
        "name = \"news\"\npath = \"/news\"\nprice_sats = 4\nupstream = \"${API_KEY}\"\n",
    )
    .unwrap();
    let error = GatewayConfig::service_from_table(&table, "services.news", env).unwrap_err();
    assert!(
        error.to_string().contains("services.news.upstream"),
        "{error}"
    );
    let table: toml::Table =
        toml::from_str("name = \"news\"\npath = \"/news\"\nprice_sats = 4\n").unwrap();
    let errors = GatewayConfig::service_from_table(&table, "services.news", env)
        .unwrap_err()
        .0;
    assert_eq!(
        errors,
        ["services.news.upstream: is required: the http:// or https:// URL the service's requests go to"]
    );
    let table: toml::Table = toml::from_str(
        "name = \"news\"\npath = \"/news\"\nprice_sats = 4\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let (service, warnings) =
        GatewayConfig::service_from_table(&table, "services.news", env).unwrap();
    assert_eq!(service.priced.price_sats, 4);
    assert_eq!(warnings, Vec::<String>::new());
    // A price on a free route is warned of, as in the file.
    let free: toml::Table = toml::from_str(
        "name = \"news\"\npath = \"/news\"\nprice_sats = 4\nauth = \"off\"\nupstream = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let (_, warnings) = GatewayConfig::service_from_table(&free, "services.news", env).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("services.news.auth") && w.contains("charged to no one")),
        "{warnings:?}"
    );
    let table: toml::Table = toml::from_str("name = \"news\"\npath = \"news\"\n").unwrap();
    let errors = GatewayConfig::service_from_table(&table, "services.news", env)
        .unwrap_err()
        .0;
    assert!(
        errors.iter().any(|e| e.starts_with("services.news.path")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("services.news.price_sats")),
        "{errors:?}"
    );
}

/// Refused before they run: an admin secret no Authorization header could
/// carry, two credentials with one secret (the log could not tell who made
/// a change), and a tool price outside 1 sat to 1 BTC.
#[test]
fn unusable_admin_secrets_and_tool_prices_are_refused() {
    let errors = GatewayConfig::parse(
        r#"
        [admin]
        credentials = [
          { name = "ops", secret = "0123456789abcdef0123456789abcdef" },
          { name = "ci", secret = "0123456789abcdef0123456789abcdef" },
          { name = "spaces", secret = "                                        " },
          { name = "padded", secret = " fedcba9876543210fedcba9876543210" },
        ]
        [[services]]
        name = "c"
        path = "/c"
        price_sats = 1
        upstream = "http://127.0.0.1:9"
        [[tools]]
        name = "free"
        description = "d"
        service = "c"
        price_sats = 0
        [[tools]]
        name = "dear"
        description = "d"
        service = "c"
        price_sats = 100000001
        [[tools]]
        name = "fine"
        description = "d"
        service = "c"
        price_sats = 100000000
        [[tools]]
        name = "typo"
        description = "d"
        service = "c"
        input_schema = { type = "object", properties = { city = { type = "strng" } } }
        "#,
        env,
    )
    .unwrap_err()
    .0;
    let expected = [
        "admin.credentials[1].secret: is the secret of an earlier credential",
        "admin.credentials[2].secret: must not start or end with whitespace",
        "admin.credentials[3].secret: must not start or end with whitespace",
        "tools[0].price_sats: 0 is not a positive number",
        "tools[1].price_sats: 100000001 is not a positive number",
        "tools[3].input_schema: is not a JSON Schema: ",
    ];
    assert_errors(&errors, &expected);
}

/// `errors` are `expected`, each found by its start, and no more.
pub(super) fn assert_errors(errors: &[String], expected: &[&str]) {
    for needle in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(needle)),
            "{needle:?} missing from {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn a_free_route_needs_no_price_and_a_priced_one_does() {
    let config = GatewayConfig::parse(
        "[[services]]\nname = \"docs\"\npath = \"/docs/*\"\nupstream = \"http://127.0.0.1:9\"\nauth = \"off\"\n",
        env,
    )
    .unwrap();
    assert_eq!(config.services[0].priced.auth, Auth::Off);
    let errors = GatewayConfig::parse(
        "[[services]]\nname = \"docs\"\npath = \"/docs/*\"\nupstream = \"http://127.0.0.1:9\"\nauth = \"on\"\n",
        env,
    )
    .unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("services[0].price_sats: is required"),
        "{errors}"
    );
}

#[test]
fn a_free_route_onto_paid_upstream_paths_is_warned_about_however_spelled() {
    let paid = "[[services]]\nname = \"premium\"\npath = \"/premium/*\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 5\n";
    for (free, why) in [
        (
            "path = \"/f/*\"\nupstream = \"http://127.1:9000\"\nrewrite = { strip_prefix = \"/f\" }",
            "127.1",
        ),
        (
            "path = \"/f/*\"\nupstream = \"http://0x7f000001:9000\"\nrewrite = { strip_prefix = \"/f\" }",
            "hex",
        ),
        (
            "path = \"/f/*\"\nupstream = \"http://2130706433:9000\"\nrewrite = { strip_prefix = \"/f\" }",
            "one number",
        ),
        (
            "path = \"/f/*\"\nupstream = \"http://0.0.0.0:9000\"\nrewrite = { strip_prefix = \"/f\" }",
            "unspecified",
        ),
        (
            "path = \"/f/*\"\nupstream = \"http://127.0.0.1:9000/premium\"\nrewrite = { strip_prefix = \"/f\" }",
            "a base path",
        ),
        (
            "path = \"/f/*\"\nupstream = \"http://127.0.0.1:9000/x/..\"\nrewrite = { strip_prefix = \"/f\", add_prefix = \"/premium\" }",
            "a base path with dots",
        ),
        (
            "path = \"/f/*\"\nupstream = \"http://127.0.0.1:9000\"\nrewrite = { strip_prefix = \"/f\", add_prefix = \"/%EF%BD%90remium\" }",
            "a fullwidth add_prefix",
        ),
    ] {
        let text = format!(
            "{paid}[[services]]\nname = \"free\"\nauth = \"off\"\n{free}\n"
        );
        let config = GatewayConfig::parse(&text, env).unwrap_or_else(|e| panic!("{why}: {e}"));
        let warnings = overlap_warnings(&config.services);
        assert!(
            warnings.iter().any(|w| w.contains("is forwarded to the upstream paths of")),
            "{why}: {warnings:?}"
        );
    }
    // Another server, or other paths on it: nothing to warn about.
    for free in [
        "path = \"/f/*\"\nupstream = \"http://127.0.0.1:9001\"\nrewrite = { strip_prefix = \"/f\" }",
        "path = \"/f/*\"\nupstream = \"http://127.0.0.1:9000/public\"\nrewrite = { strip_prefix = \"/f\" }",
    ] {
        let text = format!("{paid}[[services]]\nname = \"free\"\nauth = \"off\"\n{free}\n");
        let config = GatewayConfig::parse(&text, env).unwrap();
        assert!(overlap_warnings(&config.services).is_empty(), "{free}");
    }
}

#[test]
fn metrics_served_nowhere_are_warned_of() {
    let warned = |toml: &str| {
        GatewayConfig::parse(toml, env)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("metrics are served nowhere"))
    };
    assert!(!warned(""));
    assert!(warned("[admin]\nenabled = false\n"));
    assert!(!warned(
        "[admin]\nenabled = false\n[server]\npublic_metrics = true\n"
    ));
    assert!(!GatewayConfig::parse("", env).unwrap().server.public_metrics);
}

#[test]
fn a_free_route_taking_the_methods_a_paid_one_leaves_is_warned_of() {
    let paid = |methods: &str| {
        format!(
            "[[services]]\nname = \"report\"\npath = \"/report\"\n{methods}upstream = \"http://127.0.0.1:9000\"\nprice_sats = 5\n"
        )
    };
    let free = |methods: &str| {
        format!("[[services]]\nname = \"rest\"\npath = \"/*\"\n{methods}auth = \"off\"\nupstream = \"http://127.0.0.1:9000\"\n")
    };
    let warning = |text: String| {
        let config = GatewayConfig::parse(&text, env).unwrap();
        let warnings = overlap_warnings(&config.services);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        warnings[0].contains("charges only for GET: its path's other methods reach the upstream through the free route")
    };
    assert!(warning(paid("methods = [\"GET\"]\n") + &free("")));
    assert!(warning(
        paid("methods = [\"GET\"]\n") + &free("methods = [\"GET\", \"POST\"]\n")
    ));
    // Every method of the path is paid, or the free route takes none of
    // the others: the overlap alone is warned of.
    assert!(!warning(paid("") + &free("")));
    assert!(!warning(
        paid("methods = [\"GET\"]\n") + &free("methods = [\"GET\", \"HEAD\"]\n")
    ));
}

#[test]
fn an_upstream_with_a_password_is_refused_without_repeating_it() {
    for (url, shown) in [
        (
            "http://user:hunter2@127.0.0.1:9000",
            "http://…@127.0.0.1:9000",
        ),
        (
            "https://:hunter2@api.example/v1",
            "https://…@api.example/v1",
        ),
        // Not a URL at all: still not repeated.
        ("http://us er:hunter2@x y", "http://…@x y"),
        // An API key in the query, which an upstream URL may not have.
        (
            "http://127.0.0.1:9000/v1?api_key=hunter2",
            "http://127.0.0.1:9000/v1?…",
        ),
        ("http://u:p@h/?k=hunter2#f", "http://…@h/?…"),
    ] {
        let text = format!(
            "[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"{url}\"\nprice_sats = 1\n"
        );
        let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains(shown), "{error}");
    }
    // A query or fragment is named as what is wrong.
    for url in [
        "http://127.0.0.1:9000/base?x=1",
        "http://127.0.0.1:9000/base#top",
    ] {
        let text = format!(
            "[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"{url}\"\nprice_sats = 1\n"
        );
        let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
        assert!(error.contains("has a query or fragment"), "{url}: {error}");
    }
    let text = "[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://u:hunter2@h\"\nprice_sats = 1\n";
    let error = GatewayConfig::parse(text, env).unwrap_err().to_string();
    assert!(error.contains("Authorization"), "{error}");
    let text = "[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\npricer = { url = \"ftp://u:hunter2@h\" }\n";
    let error = GatewayConfig::parse(text, env).unwrap_err().to_string();
    assert!(
        error.contains("\"ftp://…@h\" is not an http[s]:// URL"),
        "{error}"
    );
}

/// A URL's port outside 1 to 65535, or empty, is refused: the `http`
/// crate reads such a port as none, and the proxy connected to the
/// scheme's default port instead (`http://h:109543` went to port 80).
#[test]
fn a_url_whose_port_is_not_a_port_is_refused() {
    let service = |setting: &str| {
        format!("[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\n{setting}\n")
    };
    for port in ["109543", "65536", "4294967739", "0", "", "+80", "08x"] {
        for scheme in ["http", "https", "HTTPS"] {
            let url = format!("{scheme}://127.0.0.1:{port}/v1");
            let text = service(&format!("upstream = \"{url}\""));
            let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
            assert!(
                error.contains("services[0].upstream") && error.contains("names no valid port"),
                "{url}: {error}"
            );
        }
        let url = format!("http://[::1]:{port}");
        let text = service(&format!("upstream = \"{url}\""));
        let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
        assert!(error.contains("names no valid port"), "{url}: {error}");
        let text = service(&format!("pricer = {{ url = \"http://h:{port}/q\" }}"));
        let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
        assert!(error.contains("services[0].pricer.url"), "{port}: {error}");
        let text = format!(
            "[mcp_proxy]\nurl = \"http://h:{port}/mcp\"\n{}",
            service("upstream = \"http://127.0.0.1:9\"")
        );
        let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
        assert!(error.contains("mcp_proxy.url"), "{port}: {error}");
        let text = format!(
            "[telemetry]\notlp_endpoint = \"http://h:{port}\"\n{}",
            service("upstream = \"http://127.0.0.1:9\"")
        );
        let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
        assert!(error.contains("telemetry.otlp_endpoint"), "{port}: {error}");
    }
    for url in [
        "http://127.0.0.1:1",
        "https://localhost:65535/v1",
        "http://[::1]:8080",
        "http://[::1]",
        "https://api.example.com",
    ] {
        let text = service(&format!("upstream = \"{url}\""));
        assert!(GatewayConfig::parse(&text, env).is_ok(), "{url}");
    }
}

/// An upstream's scheme is read regardless of case, by the proxy and by
/// the check of `upstream_tls` alike: `HTTPS://` with a CA bundle was
/// refused as not https, and used as https without one.
#[test]
fn an_https_upstream_in_capitals_takes_its_tls_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    for scheme in ["https", "HTTPS", "Https"] {
        let text = format!(
            "[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nupstream = \"{scheme}://localhost:8443\"\nupstream_tls = {{ ca = {:?} }}\n",
            ca_path.display().to_string()
        );
        let config = GatewayConfig::parse(&text, env);
        assert!(config.is_ok(), "{scheme}: {:?}", config.err());
    }
    let text = format!(
        "[[services]]\nname = \"a\"\npath = \"/a\"\nprice_sats = 1\nupstream = \"HTTP://localhost:8080\"\nupstream_tls = {{ ca = {:?} }}\n",
        ca_path.display().to_string()
    );
    let error = GatewayConfig::parse(&text, env).unwrap_err().to_string();
    assert!(
        error.contains("applies to an https:// upstream only"),
        "{error}"
    );
}

#[test]
fn a_usage_hold_larger_than_the_deposit_is_refused() {
    let text = |max_units: u32| {
        format!("[[services]]\nname = \"u\"\npath = \"/u\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 1\nsells = \"balance\"\ndeposit_units = 5\nmeter = \"usage\"\nusage_header = \"x-usage\"\nmax_units = {max_units}\n")
    };
    let error = GatewayConfig::parse(&text(10), env)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("services[0].max_units: 10 is more than deposit_units (5)"),
        "{error}"
    );
    GatewayConfig::parse(&text(5), env).unwrap();
}

/// A usage-metered balance sold through L402 strands what is left once
/// less than a request's hold remains: said, unless only MPP sells it or
/// a request holds one unit.
#[test]
fn an_l402_balance_left_unused_below_a_hold_is_warned_of() {
    let warned = |schemes: &str, max_units: u32| {
        warns(
            &format!("[[services]]\nname = \"u\"\npath = \"/u\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 1\nsells = \"balance\"\ndeposit_units = 50\nmeter = \"usage\"\nusage_header = \"x-usage\"\nmax_units = {max_units}\n{schemes}"),
            &["services[0].max_units", "up to 19 of each deposit's 50 units unused"],
        )
    };
    assert!(warned("", 20));
    assert!(warned("schemes = [\"l402\", \"mpp\"]\n", 20));
    assert!(!warned("schemes = [\"mpp\"]\n", 20));
    assert!(!warned("", 1));
}

#[test]
fn a_tool_calls_only_a_path_its_service_sells() {
    let text = |tool_path: &str| {
        format!(
            "[[services]]\nname = \"cheap\"\npath = \"/c/*\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 1\n\
             [[services]]\nname = \"dear\"\npath = \"/s/*\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 50\n\
             [[tools]]\nname = \"t\"\ndescription = \"d\"\nservice = \"cheap\"\npath = \"{tool_path}\"\n"
        )
    };
    let error = GatewayConfig::parse(&text("/s/x"), env)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("tools[0].path: \"/s/x\" is not a path of service \"cheap\" (/c/*)"),
        "{error}"
    );
    GatewayConfig::parse(&text("/c/x"), env).unwrap();

    // Within its service's pattern, but HTTP routes it to a dearer one;
    // or a method the service does not sell.
    let text = |tool: &str| {
        format!(
            "[[services]]\nname = \"premium\"\npath = \"/api/premium/*\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 400\n\
             [[services]]\nname = \"api\"\npath = \"/api/*\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 4\n\
             [[services]]\nname = \"post\"\npath = \"/post\"\nmethods = [\"POST\"]\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 4\n\
             [[tools]]\nname = \"t\"\ndescription = \"d\"\n{tool}\n"
        )
    };
    for (tool, refused) in [
        (
            "service = \"api\"\npath = \"/api/premium/x\"",
            "tools[0].path: GET /api/premium/x is sold by service \"premium\" over HTTP, not by \"api\"",
        ),
        (
            "service = \"post\"\nmethod = \"DELETE\"",
            "tools[0].method: DELETE /post is not sold by service \"post\" (its methods: POST)",
        ),
    ] {
        let error = GatewayConfig::parse(&text(tool), env)
            .unwrap_err()
            .to_string();
        assert!(error.contains(refused), "{error}");
    }
    GatewayConfig::parse(&text("service = \"api\"\npath = \"/api/x\""), env).unwrap();
    GatewayConfig::parse(&text("service = \"post\""), env).unwrap();
    // A standard method however cased is that method.
    let lower = GatewayConfig::parse(&text("service = \"post\"\nmethod = \"post\""), env).unwrap();
    assert_eq!(lower.tools[0].method.as_deref(), Some("POST"));
}

#[test]
fn a_tool_on_a_metered_service_needs_a_price_of_its_own() {
    let text = |price: &str| {
        format!(
            "[[services]]\nname = \"u\"\npath = \"/u\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 1\nsells = \"balance\"\ndeposit_units = 100\nmeter = \"usage\"\nusage_header = \"x-usage\"\nmax_units = 100\n\
             [[tools]]\nname = \"t\"\ndescription = \"d\"\nservice = \"u\"\n{price}"
        )
    };
    let error = GatewayConfig::parse(&text(""), env)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("tools[0].price_sats: service \"u\" charges per event or unit used"),
        "{error}"
    );
    GatewayConfig::parse(&text("price_sats = 100\n"), env).unwrap();
}

/// Whether the config `text` parses with a warning that says all of
/// `words`.
fn warns(text: &str, words: &[&str]) -> bool {
    GatewayConfig::parse(text, env)
        .unwrap()
        .warnings
        .iter()
        .any(|w| words.iter().all(|word| w.contains(word)))
}

/// An empty `usage_field` reads the whole body as the report: an upstream
/// answering an object then charges every request `max_units`. It was
/// taken without a word.
#[test]
fn a_usage_field_of_the_whole_body_is_warned_of() {
    let warned = |field: &str| {
        warns(
            &format!("[[services]]\nname = \"u\"\npath = \"/u\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 1\nsells = \"balance\"\nmeter = \"usage\"\nmax_units = 10\nusage_field = \"{field}\"\n"),
            &["services[0].usage_field", "max_units"],
        )
    };
    assert!(warned(""));
    assert!(!warned("/usage/total_tokens"));
}

/// The sandbox on an address beyond this machine gives every paid route
/// away (anyone pays its invoices with test money): `--check` said `ok`
/// of a config with no `[lightning]` listening on 0.0.0.0.
#[test]
fn a_sandbox_reachable_from_elsewhere_is_warned_of() {
    let warned = |listen: &str| warns(&format!("listen = \"{listen}\"\n"), &["/sandbox/pay"]);
    assert!(warned("0.0.0.0:8402"));
    assert!(!warned("127.0.0.1:8402"));
}

/// A price on a free route is charged to no one: it was taken without a
/// word, and an operator may believe the route sells.
#[test]
fn a_price_on_a_free_route_is_warned_of() {
    let warned = |price: &str| {
        warns(
            &format!("[[services]]\nname = \"f\"\npath = \"/f\"\nupstream = \"http://127.0.0.1:9000\"\nauth = \"off\"\n{price}"),
            &["services[0].auth", "charged to no one"],
        )
    };
    assert!(warned("price_sats = 5\n"));
    assert!(!warned(""));
}

#[test]
fn trusting_every_address_as_a_proxy_is_warned_of() {
    let warned = |nets: &str| {
        warns(
            &format!("[server]\ntrusted_proxies = [{nets}]\n"),
            &["trusts every address"],
        )
    };
    assert!(warned("\"0.0.0.0/0\""));
    assert!(warned("\"10.0.0.0/8\", \"::/0\""));
    assert!(!warned("\"10.0.0.0/8\""));
}

#[test]
fn a_method_never_served_is_refused_and_no_free_calls_is_said() {
    let service = |extra: &str| {
        format!("[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9000\"\nprice_sats = 1\n{extra}")
    };
    let error = GatewayConfig::parse(&service("methods = [\"GET\", \"trace\"]\n"), env)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("services[0].methods[1]: \"trace\" is never served"),
        "{error}"
    );
    let config = GatewayConfig::parse(&service("auth = \"freebie 0\"\n"), env).unwrap();
    assert_eq!(config.services[0].priced.auth, Auth::On);
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("gives no free calls")),
        "{:?}",
        config.warnings
    );
}

/// Settings that could never take effect are refused: a price rule whose
/// path no request of its service has, a free service that sells.
#[test]
fn settings_that_never_apply_are_refused() {
    let errors = GatewayConfig::parse(
        r#"
        [[services]]
        name = "models"
        path = "/v1/*"
        upstream = "http://127.0.0.1:9"
        price_sats = 1
        [[services.prices]]
        path = "/v2/{model}/*"
        price_sats = 5
        [[services.prices]]
        path = "/v1/{model}/*"
        price_sats = 7
        [[services]]
        name = "reads"
        path = "/r/*"
        methods = ["GET"]
        upstream = "http://127.0.0.1:9"
        price_sats = 1
        [[services.prices]]
        methods = ["POST"]
        price_sats = 5
        [[services.prices]]
        methods = ["HEAD", "PUT"]
        price_sats = 6
        [[services]]
        name = "free"
        path = "/free/*"
        upstream = "http://127.0.0.1:9"
        auth = "off"
        sells = "balance"
        "#,
        env,
    )
    .unwrap_err()
    .0;
    let expected = [
        "services[0].prices[0].path: \"/v2/{model}/*\" matches no path of its service (/v1/*): a rule prices its service's requests only",
        "services[1].prices[0].methods: POST never reach this service, which takes GET only: the rule never applies",
        "services[2].sells: a service with auth = \"off\" is free and sells nothing: remove one of the two",
    ];
    assert_errors(&errors, &expected);
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

/// A method no registry knows is taken as written, and warned of with the
/// method it most likely misspells.
#[test]
fn an_unregistered_method_is_warned_of() {
    let warnings = |methods: &str| {
        GatewayConfig::parse(
            &format!("[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\nmethods = {methods}\n"),
            env,
        )
        .unwrap()
        .warnings
    };
    assert_eq!(
        warnings(r#"["GET", "GETT", "query", "PURGE"]"#),
        ["services[0].methods[1]: \"GETT\" is no registered HTTP method (did you mean \"GET\"?); requests are matched by it as written"]
    );
    let rule = GatewayConfig::parse(
        "[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n[[services.prices]]\nmethods = [\"POTS\"]\nprice_sats = 2\n",
        env,
    )
    .unwrap()
    .warnings;
    assert_eq!(
        rule,
        ["services[0].prices[0].methods[0]: \"POTS\" is no registered HTTP method (did you mean \"POST\"?); requests are matched by it as written"]
    );
    assert_eq!(
        warnings(r#"["FROBNICATE"]"#),
        ["services[0].methods[0]: \"FROBNICATE\" is no registered HTTP method; requests are matched by it as written"]
    );
}

/// A route written with a dot segment is refused with the path it means:
/// `/premium/../x` was taken as `/x`, silently.
#[test]
fn a_route_with_a_dot_segment_is_refused_with_the_path_it_means() {
    for (path, means) in [
        ("/premium/../x", "\"/x\""),
        ("/a/./b/*", "\"/a/b/*\""),
        ("/a/..", "\"/\""),
    ] {
        let text = format!(
            "[[services]]\nname = \"a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\npath = \"{path}\"\n"
        );
        let errors = GatewayConfig::parse(&text, env).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{path}: {errors:?}");
        assert!(
            errors[0].starts_with("services[0].path:")
                && errors[0].contains("has a dot segment")
                && errors[0].ends_with(means),
            "{path}: {errors:?}"
        );
    }
    // Spelled otherwise but meaning the same path: taken as it means.
    let text = "[[services]]\nname = \"a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\npath = \"/%70remium\"\n";
    assert!(GatewayConfig::parse(text, env).is_ok());
}

/// `[lightning]` errors name their key (`lightning.network`), and a
/// missing credential or file is said once.
#[test]
fn lightning_errors_name_their_key_and_say_their_reason_once() {
    for (table, expected) in [
        (
            "backend = \"ldk\"\nnetwork = \"bitcoinx\"",
            "lightning.network: unknown variant `bitcoinx`",
        ),
        ("backend = \"lndx\"", "lightning.backend: \"lndx\" is not"),
        ("network = \"regtest\"", "lightning.backend: is required"),
        (
            "backend = \"lnd\"\nurl = \"https://127.0.0.1:8080\"",
            "lightning (lnd): no credential: set macaroon_path or macaroon_dir",
        ),
        (
            "backend = \"lnd\"\nurl = \"https://127.0.0.1:8080\"\nmacaroon_path = \"/nonexistent/admin.macaroon\"",
            "cannot read /nonexistent/admin.macaroon: No such file or directory (os error 2)",
        ),
    ] {
        let errors = GatewayConfig::parse(&format!("[lightning]\n{table}\n"), env)
            .unwrap_err()
            .0;
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected:?} missing from {errors:?}"
        );
        assert!(
            errors.iter().all(|e| e.matches("(os error 2)").count() <= 1
                && e.matches("set macaroon_path").count() <= 1),
            "{errors:?}"
        );
    }
}

/// A key is refused once for one cause: an unset `${NAME}` is not also a
/// secret too short; an `[mcp_proxy]` naming no server says so (it said
/// "not both").
#[test]
fn one_cause_is_said_once_and_as_it_is() {
    let errors = GatewayConfig::parse(
        "[admin]\ncredentials = [{ name = \"ops\", secret = \"${UNSET_ADMIN_SECRET}\" }]\n",
        env,
    )
    .unwrap_err()
    .0;
    assert_eq!(
        errors,
        ["admin.credentials[0].secret: environment variable UNSET_ADMIN_SECRET is not set"]
    );
    let errors = GatewayConfig::parse("[mcp_proxy]\n", env).unwrap_err().0;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("mcp_proxy: names no MCP server")),
        "{errors:?}"
    );
}

/// A CORS origin is written as a browser sends it, or `*`.
#[test]
fn cors_origins_are_origins() {
    let config = GatewayConfig::parse(
        "[server]\ncors_origins = [\"https://app.example.com\", \"*\"]\n[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nprice_sats = 1\n",
        env,
    )
    .unwrap();
    assert_eq!(config.server.cors_origins.len(), 2);
    let errors = GatewayConfig::parse(
        "[server]\ncors_origins = [\"https://app.example.com/\", \"App.example.com\"]\n",
        env,
    )
    .unwrap_err()
    .0;
    assert_errors(
        &errors,
        &[
            "server.cors_origins[0]: \"https://app.example.com/\" is not an origin",
            "server.cors_origins[1]: \"App.example.com\" is not an origin",
        ],
    );
}

/// A TOML error names its line as an editor counts it (an error at the
/// start of a line was put on the line before), and a key given twice is
/// named.
#[test]
fn a_toml_error_names_its_line_and_a_key_given_twice() {
    let errors = GatewayConfig::parse(
        "[[services]]\nname = \"w\"\nprice_sats = 1\nprice_sats = 2\n",
        env,
    )
    .unwrap_err();
    assert_eq!(errors.0, ["duplicate key `price_sats` (line 4)"]);
    let errors = GatewayConfig::parse("listen = \"x\"\n= 1\n", env).unwrap_err();
    assert!(errors.0[0].ends_with("(line 2)"), "{errors:?}");
}

/// A wrong `auth` is said, and not also a missing price: the service may
/// have meant "off".
#[test]
fn a_wrong_auth_is_said_alone() {
    for auth in ["\"freebie\"", "false", "\"of\""] {
        let errors = GatewayConfig::parse(
            &format!("[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\nauth = {auth}\n"),
            env,
        )
        .unwrap_err();
        assert_eq!(errors.0.len(), 1, "{auth}: {errors:?}");
        assert!(
            errors.0[0].starts_with("services[0].auth: "),
            "{auth}: {errors:?}"
        );
    }
    // Without `auth` the price is required, as ever.
    let errors = GatewayConfig::parse(
        "[[services]]\nname = \"a\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:9\"\n",
        env,
    )
    .unwrap_err();
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.starts_with("services[0].price_sats: is required")),
        "{errors:?}"
    );
}

#[test]
fn a_paid_route_taking_part_of_a_later_paid_one_is_warned_of() {
    let service = |name: &str, path: &str, methods: &str, price: u64| {
        format!(
            "[[services]]\nname = \"{name}\"\npath = \"{path}\"\n{methods}upstream = \"http://127.0.0.1:9000\"\nprice_sats = {price}\n"
        )
    };
    let warnings = |text: String| {
        let config = GatewayConfig::parse(&text, env).unwrap();
        overlap_warnings(&config.services)
    };
    // The broad route first takes the narrow one's GETs at 6 sat.
    let found = warnings(
        service("quote", "/v1/*", "methods = [\"GET\"]\n", 6)
            + &service("forecast", "/v1/forecast/*", "", 20),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("services[0] (\"quote\", /v1/*, 6 sat) comes first, so it takes requests meant for services[1] (\"forecast\", /v1/forecast/*, 20 sat)"),
        "{found:?}"
    );
    // A prefix first, an exact path in it after, its other methods apart.
    let found = warnings(
        service("a", "/v1/*", "methods = [\"POST\"]\n", 1) + &service("b", "/v1/a", "", 2),
    );
    assert_eq!(found.len(), 1, "{found:?}");
    // The narrower first, or methods apart: as meant.
    for text in [
        service("forecast", "/v1/forecast/*", "", 20) + &service("quote", "/v1/*", "", 6),
        service("quote", "/v1/*", "methods = [\"GET\"]\n", 6)
            + &service("forecast", "/v1/forecast/*", "methods = [\"POST\"]\n", 20),
        service("a", "/a/*", "", 1) + &service("b", "/b/*", "", 2),
    ] {
        assert!(warnings(text.clone()).is_empty(), "{text}");
    }
}
