//! `gate402 admin …`: the admin API of a running gateway from the shell.
//! With the gateway's `--data-dir` and nothing else it finds the API's
//! address (`admin.json`) and the `local` credential (`admin_secret`)
//! there; `--url` and `GATE402_ADMIN_SECRET` reach another one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};

/// `gate402 admin`'s flags.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Print the API's whole JSON answer (without it, services,
    /// revenue, payments, price, revoke and open print a summary; the
    /// other commands print the JSON anyway).
    #[arg(long, global = true)]
    json: bool,
    /// The admin API (default: the one the gateway on --data-dir wrote).
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// What to do.
    #[command(subcommand)]
    command: AdminCommand,
}

/// What `gate402 admin` does.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// The services that run, with their last 24 hours.
    Services,
    /// One service, with its table.
    Service {
        /// Its name.
        name: String,
    },
    /// Set a service's price, in satoshis.
    Price {
        /// The service.
        name: String,
        /// The new price.
        sats: u64,
    },
    /// Create a service, or replace its whole table, from a TOML or JSON
    /// file holding one `[[services]]` table's keys.
    Put {
        /// The service.
        name: String,
        /// The table (`.json`, else TOML).
        file: PathBuf,
    },
    /// Make a service answer 503 (its route stays; nothing is charged).
    Disable {
        /// The service.
        name: String,
    },
    /// Serve a disabled service again. Like `disable`, a change of the
    /// admin API's, kept over the config file: the file's later edits to
    /// the service apply after `reset`.
    Enable {
        /// The service.
        name: String,
    },
    /// Delete a service, even one the config file names.
    Delete {
        /// The service.
        name: String,
    },
    /// Drop every change made through the admin API to a service: the
    /// config file's entry applies again.
    Reset {
        /// The service.
        name: String,
    },
    /// Revenue, payments, 402s and conversion per service.
    Revenue {
        /// Also per hour or per day, a row a service and bucket.
        #[arg(long, value_parser = ["hour", "day"])]
        by: Option<String>,
        /// How far back, in hours (default: 24, or 720 by day).
        #[arg(long, conflicts_with = "since", value_parser = clap::value_parser!(u64).range(1..))]
        hours: Option<u64>,
        /// From when: unix seconds, a time (2026-12-02T10:00:00Z) or a
        /// duration back from now (30m, 24h, 7d).
        #[arg(long, value_parser = since)]
        since: Option<u64>,
    },
    /// Payments, newest first.
    Payments {
        /// Of this service.
        #[arg(long)]
        service: Option<String>,
        /// Through this scheme (L402, Payment or mpp, x402, paymentId).
        #[arg(long)]
        scheme: Option<String>,
        /// How far back, in hours (default 24).
        #[arg(long, conflicts_with = "since", value_parser = clap::value_parser!(u64).range(1..))]
        hours: Option<u64>,
        /// From when: unix seconds, a time (2026-12-02T10:00:00Z) or a
        /// duration back from now (30m, 24h, 7d).
        #[arg(long, value_parser = since)]
        since: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// A payment's record, revocation and balance.
    Token {
        /// Its payment hash, or the L402 macaroon.
        token: String,
    },
    /// Refuse every credential of one payment from now on.
    Revoke {
        /// Its payment hash, or the L402 macaroon.
        token: String,
    },
    /// The open prepaid balances: how many, what they hold, the most
    /// recently used.
    Sessions {
        /// At most this many listed.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// A prepaid balance.
    Session {
        /// Its id (the deposit's payment hash).
        id: String,
    },
    /// Close a prepaid balance and refund what is left.
    CloseSession {
        /// Its id (the deposit's payment hash).
        id: String,
    },
    /// The Lightning node: funds, channels, inbound liquidity, invoices.
    Node,
    /// The latest admin changes and who made them.
    Log {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Print a dashboard login link (usable for 2 minutes).
    Open,
}

/// Where the API is and who calls it.
struct Api {
    url: String,
    secret: String,
    http: reqwest::Client,
}

/// The base an admin `--url` names: the gateway's admin listener, as
/// written or as the address of its dashboard (`…/admin`) or its API
/// (`…/admin/api`), which the requests' paths would otherwise repeat.
///
/// # Errors
///
/// A URL that is none, or that holds a user or password (the secret goes
/// in `GATE402_ADMIN_SECRET`; it is not repeated).
fn api_base(url: &str) -> Result<String> {
    let mut parsed =
        reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("--url: not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!(
            "--url holds a user or password, which would be sent with every request: give the secret in GATE402_ADMIN_SECRET"
        );
    }
    parsed.set_query(None);
    parsed.set_fragment(None);
    let url = parsed.as_str().trim_end_matches('/');
    let base = ["/admin/api", "/admin"]
        .iter()
        .find_map(|suffix| url.strip_suffix(suffix))
        .unwrap_or(url);
    Ok(base.to_owned())
}

impl Api {
    fn find(args: &Args, data_dir: &Path) -> Result<Self> {
        let url = match &args.url {
            Some(url) => api_base(url)?,
            None => {
                let file = data_dir.join(gate402_gateway::admin::ADMIN_FILE);
                // admin.json outlives a gateway killed hard: trust it only
                // while a gateway holds the data dir's lock.
                if let Ok(lock) = std::fs::File::open(data_dir.join("gateway.lock")) {
                    if lock.try_lock().is_ok() {
                        let left = if file.exists() {
                            format!(
                                " ({} is left from one that stopped)",
                                gate402_gateway::admin::ADMIN_FILE
                            )
                        } else {
                            String::new()
                        };
                        bail!(
                            "no gateway is running on the data dir {}{left}: start `gate402 serve` with this --data-dir, or pass --url",
                            data_dir.display(),
                        );
                    }
                }
                let text = std::fs::read_to_string(&file).with_context(|| {
                    format!(
                        "no running gateway's admin API found: {} cannot be read (start `gate402 serve` with this --data-dir, or pass --url)",
                        file.display()
                    )
                })?;
                let found: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                found["url"]
                    .as_str()
                    .with_context(|| format!("{} names no url", file.display()))?
                    .to_owned()
            }
        };
        let secret = match std::env::var("GATE402_ADMIN_SECRET") {
            Ok(secret) => secret,
            Err(_) => {
                let file = data_dir.join(gate402_gateway::admin::SECRET_FILE);
                std::fs::read_to_string(&file)
                    .with_context(|| {
                        format!(
                            "no admin credential: {} cannot be read (or set GATE402_ADMIN_SECRET)",
                            file.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let api = Self {
            url,
            secret,
            http: reqwest::Client::new(),
        };
        Ok(api)
    }

    /// Checks, without the credential, that a gate402 admin API answers
    /// at the URL, so that the secret is never sent to anything else (the
    /// gateway's public port, another program on a port left in a stale
    /// admin.json).
    async fn probe(&self) -> Result<()> {
        let url = format!("{}/admin/api/openapi.json", self.url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.url))?;
        let document: Value = response.json().await.unwrap_or(Value::Null);
        if document["info"]["title"] != "gate402 admin API" {
            bail!(
                "{} is not a gate402 admin API (no admin document at {url}); the credential was not sent",
                self.url
            );
        }
        Ok(())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}/admin/api{path}", self.url))
            .bearer_auth(&self.secret);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.url))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = answer["detail"].as_str().unwrap_or("no detail");
            let mut message = format!("{status}: {detail}");
            // The detail may hold the one error itself: not said twice.
            let errors = answer["errors"].as_array().into_iter().flatten();
            for error in errors
                .filter_map(Value::as_str)
                .filter(|e| !detail.contains(e))
            {
                message.push_str(&format!("\n  {error}"));
            }
            bail!(message);
        }
        Ok(answer)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::POST, path, None).await
    }
}

/// A path segment, percent-encoded.
/// The service table `admin put NAME FILE` sends: the file's own keys, or
/// the `[[services]]` table named NAME when the file is a block copied
/// from a gateway config (its keys read as unknown fields, its `path` as
/// missing).
///
/// # Errors
///
/// When the file holds `[[services]]` tables but none named NAME.
fn service_table(table: Value, name: &str, file: &Path) -> Result<Value> {
    let Some(services) = table.get("services").and_then(Value::as_array) else {
        return Ok(table);
    };
    let named: Vec<&Value> = services
        .iter()
        .filter(|s| s.get("name").is_none_or(|n| n == name))
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        _ => bail!(
            "{} holds [[services]] tables but not one named {name:?}: give that service's keys alone, or one [[services]] table with name = {name:?}",
            file.display()
        ),
    }
}

fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Runs `gate402 admin`.
///
/// # Errors
///
/// When the API cannot be found or reached, or refuses (its problem's
/// detail is the message).
pub async fn run(args: &Args, data_dir: &Path) -> Result<()> {
    let api = Api::find(args, data_dir)?;
    api.probe().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let answer = match &args.command {
        AdminCommand::Services => api.get("/services").await?,
        AdminCommand::Service { name } => api.get(&format!("/services/{}", segment(name))).await?,
        AdminCommand::Price { name, sats } => {
            api.call(
                reqwest::Method::PATCH,
                &format!("/services/{}", segment(name)),
                Some(json!({ "price_sats": sats })),
            )
            .await?
        }
        AdminCommand::Put { name, file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let table: Value = if file.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?
            } else {
                let table: toml::Table = toml::from_str(&text)
                    .with_context(|| format!("{} is not TOML", file.display()))?;
                serde_json::to_value(table)?
            };
            let table = service_table(table, name, file)?;
            api.call(
                reqwest::Method::PUT,
                &format!("/services/{}", segment(name)),
                Some(table),
            )
            .await?
        }
        AdminCommand::Disable { name } => {
            api.post(&format!("/services/{}/disable", segment(name)))
                .await?
        }
        AdminCommand::Enable { name } => {
            api.post(&format!("/services/{}/enable", segment(name)))
                .await?
        }
        AdminCommand::Delete { name } => {
            api.call(
                reqwest::Method::DELETE,
                &format!("/services/{}", segment(name)),
                None,
            )
            .await?
        }
        AdminCommand::Reset { name } => {
            api.post(&format!("/services/{}/reset", segment(name)))
                .await?
        }
        AdminCommand::Revenue { by, hours, since } => {
            let hours = hours.unwrap_or(if by.as_deref() == Some("day") {
                720
            } else {
                24
            });
            let since = since.unwrap_or_else(|| now.saturating_sub(hours * 3600));
            // Without --by only totals are shown: the API picks buckets
            // that fit the span.
            let path = match by {
                Some(by) => format!("/revenue?by={}&since={since}", segment(by)),
                None => format!("/revenue?since={since}"),
            };
            api.get(&path).await?
        }
        AdminCommand::Payments {
            service,
            scheme,
            hours,
            since,
            limit,
        } => {
            let mut path = format!(
                "/payments?limit={limit}&since={}",
                since.unwrap_or_else(|| now.saturating_sub(hours.unwrap_or(24) * 3600))
            );
            if let Some(service) = service {
                path.push_str(&format!("&service={}", segment(service)));
            }
            if let Some(scheme) = scheme {
                path.push_str(&format!("&scheme={}", segment(scheme)));
            }
            api.get(&path).await?
        }
        AdminCommand::Token { token } => api.get(&format!("/tokens/{}", segment(token))).await?,
        AdminCommand::Revoke { token } => {
            api.post(&format!("/tokens/{}/revoke", segment(token)))
                .await?
        }
        AdminCommand::Sessions { limit } => api.get(&format!("/sessions?limit={limit}")).await?,
        AdminCommand::Session { id } => api.get(&format!("/sessions/{}", segment(id))).await?,
        AdminCommand::CloseSession { id } => {
            api.post(&format!("/sessions/{}/close", segment(id)))
                .await?
        }
        AdminCommand::Node => api.get("/node").await?,
        AdminCommand::Log { limit } => api.get(&format!("/log?limit={limit}")).await?,
        AdminCommand::Open => api.post("/login-links").await?,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    out!("{}", summary(&args.command, &answer));
    Ok(())
}

/// A short text for the terminal.
fn summary(command: &AdminCommand, answer: &Value) -> String {
    let mut out = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    match command {
        AdminCommand::Services => {
            let row = |cells: [&str; 9]| {
                format!(
                    "{:<20} {:<9} {:<10} {:<8} {:>10} {:>8} {:>9} {:>11}  {}\n",
                    cells[0],
                    cells[1],
                    cells[2],
                    cells[3],
                    cells[4],
                    cells[5],
                    cells[6],
                    cells[7],
                    cells[8]
                )
            };
            out.push_str(&row([
                "SERVICE",
                "STATE",
                "AUTH",
                "SELLS",
                "PRICE sat",
                "402s",
                "PAYMENTS",
                "REVENUE sat",
                "ROUTE",
            ]));
            for s in answer["services"].as_array().into_iter().flatten() {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let count = |v: &Value| n(v).to_string();
                // A free route sells nothing: its price is a placeholder.
                let free = s["auth"].as_str() == Some("off");
                let (sells, price) = match free {
                    true => ("-".to_owned(), "-".to_owned()),
                    false => (text(&s["sells"]), count(&s["price_sats"])),
                };
                out.push_str(&row([
                    &text(&s["name"]),
                    &text(&s["state"]),
                    &text(&s["auth"]),
                    &sells,
                    &price,
                    &count(&s["last_24h"]["challenges"]),
                    &count(&s["last_24h"]["payments"]),
                    &count(&s["last_24h"]["revenue_sats"]),
                    &text(&s["path"]),
                ]));
            }
            for warning in answer["warnings"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "warning: {}\n",
                    warning.as_str().unwrap_or_default()
                ));
            }
        }
        AdminCommand::Revenue { .. } => {
            let line = |name: &str, s: &Value| {
                let conversion = s["conversion"]
                    .as_f64()
                    .map_or("-".to_owned(), |c| format!("{:.1}%", c * 100.0));
                format!(
                    "{:<20} {:>11} {:>12} {:>9} {:>9} {:>8} {:>8} {:>10}\n",
                    name,
                    n(&s["revenue_sats"]),
                    n(&s["refunded_sats"]),
                    s["net_sats"].as_i64().unwrap_or(0),
                    n(&s["payments"]),
                    n(&s["served"]),
                    n(&s["challenges"]),
                    conversion
                )
            };
            out.push_str(&format!(
                "{:<20} {:>11} {:>12} {:>9} {:>9} {:>8} {:>8} {:>10}\n",
                "SERVICE",
                "REVENUE sat",
                "REFUNDED sat",
                "NET sat",
                "PAYMENTS",
                "SERVED",
                "402s",
                "CONVERSION"
            ));
            for s in answer["services"].as_array().into_iter().flatten() {
                out.push_str(&line(s["service"].as_str().unwrap_or_default(), s));
            }
            out.push_str(&line("total", &answer["total"]));
            if let AdminCommand::Revenue { by: Some(by), .. } = command {
                out.push_str(&format!(
                    "\n{:<20} {:<20} {:>11} {:>12} {:>9} {:>8} {:>8}\n",
                    format!("{} FROM", by.to_uppercase()),
                    "SERVICE",
                    "REVENUE sat",
                    "REFUNDED sat",
                    "PAYMENTS",
                    "SERVED",
                    "402s"
                ));
                for b in answer["buckets"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:<20} {:<20} {:>11} {:>12} {:>9} {:>8} {:>8}\n",
                        crate::output::when(n(&b["start"])),
                        b["service"].as_str().unwrap_or_default(),
                        n(&b["revenue_sats"]),
                        n(&b["refunded_sats"]),
                        n(&b["payments"]),
                        n(&b["served"]),
                        n(&b["challenges"]),
                    ));
                }
            }
        }
        AdminCommand::Payments { service, .. } => {
            let payments = answer["payments"].as_array().map_or(&[][..], Vec::as_slice);
            if payments.is_empty() {
                // Said, so that a misspelt service is not taken for a quiet one.
                out.push_str(&match service {
                    Some(service) => format!("no payments of service {service:?} in this window\n"),
                    None => "no payments in this window\n".to_owned(),
                });
            }
            for p in payments {
                out.push_str(&format!(
                    "{}  {:<16} {:<8} {:>8} sat  {:>5} req  {}\n",
                    p["first_served_at"]
                        .as_u64()
                        .map_or_else(|| p["first_served_at"].to_string(), crate::output::when),
                    p["service"].as_str().unwrap_or_default(),
                    p["scheme"].as_str().unwrap_or_default(),
                    n(&p["amount_sats"]),
                    n(&p["served"]),
                    p["payment_hash"].as_str().unwrap_or_default(),
                ));
            }
            if answer["more"] == json!(true) {
                out.push_str(&format!(
                    "the latest {} shown; more with --limit (up to 1000) or --since\n",
                    payments.len()
                ));
            }
        }
        AdminCommand::Open => {
            out.push_str(answer["url"].as_str().unwrap_or_default());
            out.push('\n');
        }
        AdminCommand::Revoke { .. } => out.push_str(&format!(
            "revoked {}{}\n",
            answer["payment_hash"].as_str().unwrap_or_default(),
            if answer["already"] == json!(true) {
                " (it already was)"
            } else {
                ""
            }
        )),
        AdminCommand::Sessions { .. } => {
            let sessions = answer["sessions"].as_array().map_or(&[][..], Vec::as_slice);
            out.push_str(&format!(
                "{} open, {} sat held{}\n",
                n(&answer["open"]),
                crate::output::sats(n(&answer["balance_msat"])),
                if (sessions.len() as u64) < n(&answer["open"]) {
                    format!(" (the {} most recently used below)", sessions.len())
                } else {
                    String::new()
                },
            ));
            for s in sessions {
                out.push_str(&format!(
                    "{}  {:<16} {:>8} of {:>8} sat left  {:<10} last used {}\n",
                    s["id"].as_str().unwrap_or_default(),
                    s["service"].as_str().unwrap_or_default(),
                    crate::output::sats(n(&s["balance_msat"])),
                    crate::output::sats(n(&s["deposit_msat"])),
                    // Open sessions: whether a close can refund them.
                    if s["has_return_invoice"] == json!(true) {
                        "refundable"
                    } else {
                        "no refund"
                    },
                    s["last_used_at"]
                        .as_u64()
                        .map_or_else(|| "-".into(), crate::output::when),
                ));
            }
            let owed = &answer["refunds_owed"];
            if n(&owed["count"]) > 0 {
                let rows = owed["sessions"].as_array().map_or(&[][..], Vec::as_slice);
                out.push_str(&format!(
                    "refunds owed: {}, {} sat (pending ones are tried again on their own; \
                     pay failed ones by hand){}\n",
                    n(&owed["count"]),
                    crate::output::sats(n(&owed["refund_msat"])),
                    if (rows.len() as u64) < n(&owed["count"]) {
                        format!(" (the {} owed longest below)", rows.len())
                    } else {
                        String::new()
                    },
                ));
                for s in rows {
                    let closed = &s["closed"];
                    out.push_str(&format!(
                        "{}  {:<16} {:>8} sat  {:<9} closed {}\n",
                        s["id"].as_str().unwrap_or_default(),
                        s["service"].as_str().unwrap_or_default(),
                        crate::output::sats(n(&closed["refund_msat"])),
                        closed["refund_status"].as_str().unwrap_or_default(),
                        closed["at"]
                            .as_u64()
                            .map_or_else(|| "-".into(), crate::output::when),
                    ));
                }
            }
        }
        AdminCommand::Price { .. } => out.push_str(&format!(
            "{}: {} sat\n",
            answer["name"].as_str().unwrap_or_default(),
            n(&answer["price_sats"])
        )),
        _ => {
            out.push_str(&serde_json::to_string_pretty(answer).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

/// A `--since` value, as the admin API and `gate402 receipts` read one.
fn since(text: &str) -> Result<u64, String> {
    gate402_paywall::time_bound(text, gate402_paywall::unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_url_may_name_the_dashboard_or_the_api() {
        for url in [
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/",
            "http://127.0.0.1:9000/admin",
            "http://127.0.0.1:9000/admin/",
            "http://127.0.0.1:9000/admin/api",
            "http://127.0.0.1:9000/admin/api/",
        ] {
            assert_eq!(api_base(url).unwrap(), "http://127.0.0.1:9000", "{url}");
        }
        for url in [
            "http://127.0.0.1:9000/admin?x=1",
            "http://127.0.0.1:9000/admin/#x",
        ] {
            assert_eq!(api_base(url).unwrap(), "http://127.0.0.1:9000", "{url}");
        }
        assert_eq!(
            api_base("https://gw.test/ops/admin/api").unwrap(),
            "https://gw.test/ops"
        );
        let refused = api_base("http://user:hunter2@127.0.0.1:9000/")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("GATE402_ADMIN_SECRET"), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(api_base("not a url").is_err());
    }

    #[test]
    fn open_sessions_are_a_table() {
        let listed = summary(
            &AdminCommand::Sessions { limit: 1 },
            &json!({"open": 2, "balance_msat": 15_500, "sessions": [{
                "id": "ab12", "service": "chat", "deposit_msat": 20_000,
                "spent_msat": 10_000, "balance_msat": 10_000,
                "has_return_invoice": true, "idle_secs": 300,
                "last_used_at": 1_700_000_000, "closed": null,
            }]}),
        );
        let mut lines = listed.lines();
        assert_eq!(
            lines.next(),
            Some("2 open, 15.5 sat held (the 1 most recently used below)"),
            "{listed}"
        );
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("ab12  chat") && row.contains("10 of       20 sat left  refundable"),
            "{listed}"
        );
        assert!(!listed.contains('{'), "{listed}");
        assert!(!listed.contains("refunds owed"), "{listed}");
        let owing = summary(
            &AdminCommand::Sessions { limit: 1 },
            &json!({"open": 0, "balance_msat": 0, "sessions": [], "refunds_owed": {
            "count": 2, "refund_msat": 9_000, "sessions": [{
                "id": "cd34", "service": "chat", "deposit_msat": 10_000,
                "spent_msat": 2_000, "balance_msat": 0,
                "has_return_invoice": true, "idle_secs": 300,
                "last_used_at": 1_700_000_000, "closed": {
                    "at": 1_700_000_100, "refund_msat": 8_000, "refund_status": "failed"}
            }]}}),
        );
        let mut lines = owing.lines().skip(1);
        assert_eq!(
            lines.next(),
            Some(
                "refunds owed: 2, 9 sat (pending ones are tried again on their own; \
                 pay failed ones by hand) (the 1 owed longest below)"
            ),
            "{owing}"
        );
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("cd34  chat") && row.contains("8 sat  failed    closed "),
            "{owing}"
        );
    }

    #[test]
    fn a_list_of_payments_cut_by_its_limit_says_so() {
        let payments = AdminCommand::Payments {
            service: None,
            scheme: None,
            hours: None,
            since: None,
            limit: 1,
        };
        let row = json!({"first_served_at": 1, "service": "a", "scheme": "L402",
            "amount_sats": 2, "served": 1, "payment_hash": "00"});
        let cut = summary(&payments, &json!({"payments": [row], "more": true}));
        assert!(
            cut.ends_with("the latest 1 shown; more with --limit (up to 1000) or --since\n"),
            "{cut}"
        );
        let whole = summary(&payments, &json!({"payments": [row], "more": false}));
        assert!(!whole.contains("shown"), "{whole}");
    }
}
