//! `gate402 get|post|put|patch|delete`: curl's habits, and a 402 is paid
//! within `--max-cost`, then retried (a prepaid balance through an MPP
//! session with `--session`). `gate402 tokens` and `gate402 receipts` read
//! what it keeps; `gate402 sessions` lists and closes its sessions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use gate402_client::{
    Client, FetchError, Fetched, Ledger, McpCallError, Payer, PaymentEntry, PaymentState, Policy,
    Prefer, Wallet,
};
use gate402_l402::caveat::Sale;
use serde_json::json;

use crate::client_config::ClientConfig;

/// Options shared by every method.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The URL.
    #[arg(value_parser = valid(http_url))]
    pub url: String,
    /// Request body (`@FILE` reads a file); makes the default method POST.
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Extra header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = valid(header_arg))]
    pub headers: Vec<String>,
    /// Method, overriding the subcommand's.
    #[arg(short = 'X', long = "request", value_parser = valid(method_arg))]
    pub method: Option<String>,
    /// Write the body to FILE instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Print the status line and headers before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
    /// Follow redirects.
    #[arg(short = 'L', long = "location")]
    pub follow: bool,
    /// Accept invalid TLS certificates.
    #[arg(short = 'k', long = "insecure")]
    pub insecure: bool,
    /// No progress messages on standard error.
    #[arg(short = 's', long = "silent")]
    pub silent: bool,
    /// Print one JSON document: status, headers, body, payment.
    #[arg(long)]
    pub json: bool,
    /// Exit 22, as curl does, when the answer is an HTTP error (400 or
    /// above) and write no body: the status and the start of the body go
    /// to standard error (with --json, the document is written). A
    /// payment made for it is booked all the same.
    #[arg(short = 'f', long = "fail", conflicts_with = "fail_with_body")]
    pub fail: bool,
    /// Exit 22 when the answer is an HTTP error (400 or above), after
    /// writing its body as any other.
    #[arg(long)]
    pub fail_with_body: bool,
    /// Scheme to answer with when several are offered (default: the first
    /// of L402 and MPP offered; x402 when neither is).
    #[arg(long, value_parser = ["l402", "mpp", "x402"])]
    pub prefer: Option<String>,
    /// Buy a prepaid balance through an MPP session when the server offers
    /// one: pay the deposit once, spend from it on later calls (in later
    /// runs too), top it up when it runs out, and have the unspent balance
    /// refunded to the wallet when it is closed (`gate402 sessions close`)
    /// or idle [default: the config's `sessions`, else off: the balance is
    /// bought through its L402 token, never refunded].
    #[arg(long, overrides_with = "no_session")]
    pub session: bool,
    /// Do not open or use MPP sessions, whatever the config says.
    #[arg(long, overrides_with = "session")]
    pub no_session: bool,
    /// How long the server may take.
    #[command(flatten)]
    pub timeouts: Timeouts,
    /// Spending limits and the wallet.
    #[command(flatten)]
    pub pay: PayOptions,
}

/// How long `gate402 get` waits for a connection by default (seconds).
pub const CONNECT_TIMEOUT_SECS: u64 = 10;

/// How long `gate402 get` waits by default for a server that sends
/// nothing (seconds): long enough for an API that thinks a minute or two
/// before it answers, short enough that a stalled server cannot hold an
/// agent for ever.
pub const READ_TIMEOUT_SECS: u64 = 120;

/// The longest timeout taken (seconds, about 31 years): a clock cannot
/// count much further ahead.
pub const MAX_TIMEOUT_SECS: u64 = 1_000_000_000;

/// How long a paying command waits for a server: shared by `get` and
/// `mcp call`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Timeouts {
    /// Seconds a connection (TCP and TLS) may take.
    #[arg(long, value_name = "SECS", default_value_t = CONNECT_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    pub connect_timeout: u64,
    /// Seconds the server may send nothing (before its answer or within
    /// it) before the request is given up; for `mcp call`, also the most
    /// a tool's answer may take. 0 waits for ever. A payment made for it
    /// is booked all the same.
    #[arg(long, value_name = "SECS", default_value_t = READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS))]
    pub read_timeout: u64,
    /// Whole seconds the whole command may take, payments included (as
    /// curl's `--max-time`, which also takes fractions): past it the run stops as Ctrl-C stops it, what it
    /// paid told and a payment in flight kept pending, exit 28. 0 (the
    /// default): no limit.
    #[arg(long, value_name = "SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS))]
    pub max_time: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT_SECS,
            read_timeout: READ_TIMEOUT_SECS,
            max_time: 0,
        }
    }
}

impl Timeouts {
    /// The HTTP client of the paying commands: connections within
    /// `connect_timeout`, a server silent for `read_timeout` (0: no limit)
    /// given up, and redirects followed only as `redirect` allows (the
    /// payer follows `get`'s itself, hop by hop).
    ///
    /// # Errors
    ///
    /// When the TLS backend cannot be set up.
    pub fn http_client(
        self,
        insecure: bool,
        redirect: reqwest::redirect::Policy,
    ) -> Result<reqwest::Client> {
        let builder = self
            .bounded(reqwest::Client::builder())
            .danger_accept_invalid_certs(insecure)
            .redirect(redirect);
        Ok(builder.build()?)
    }

    /// `builder` with these timeouts: a server (the sandbox payer too)
    /// that takes longer is given up.
    fn bounded(self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let builder = builder.connect_timeout(Duration::from_secs(self.connect_timeout));
        if self.read_timeout > 0 {
            builder.read_timeout(Duration::from_secs(self.read_timeout))
        } else {
            builder
        }
    }
}

/// What may be paid and with what: shared by `get` and `mcp call`.
#[derive(Debug, clap::Args)]
pub struct PayOptions {
    /// The most one request may cost, in satoshis [default: the config's
    /// max_cost_sats, else 1000].
    #[arg(long, value_name = "SATS")]
    pub max_cost: Option<u64>,
    /// The most routing fees one payment may take, in satoshis [default:
    /// the config's max_fee_sats, else 10].
    #[arg(long, value_name = "SATS")]
    pub max_fee: Option<u64>,
    /// Print the offer of a 402 (price, schemes, description, expiry) and do
    /// not pay, nor send a token or session kept for the URL (the request
    /// goes without credentials).
    #[arg(long)]
    pub no_pay: bool,
    /// The client config: caps, budgets, and the wallet in its
    /// `[lightning]` table [default: client.toml in the data dir, if any;
    /// without a wallet, the sandbox payer of the gateway that sent the
    /// 402, test money].
    #[arg(long, env = "GATE402_CLIENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl PayOptions {
    /// The payer these options describe; `sessions` overrides the config's
    /// `sessions` (off when neither says); `insecure` (`-k`) holds for the
    /// sandbox payer too, which is the server being paid.
    pub async fn payer(
        &self,
        prefer: Option<Prefer>,
        sessions: Option<bool>,
        timeouts: Timeouts,
        insecure: bool,
        data_dir: &Path,
    ) -> Result<Payer> {
        let config = ClientConfig::load(self.config.as_deref(), data_dir)?;
        let wallet = match &config.lightning {
            // Its server is the one being paid: bounded and trusted as it is.
            None => Wallet::sandbox_with(
                timeouts
                    .bounded(reqwest::Client::builder())
                    .danger_accept_invalid_certs(insecure),
                sandbox_payer(data_dir)?,
            ),
            Some(lightning) => Wallet::Node(lightning.connect(data_dir).await?.backend),
        };
        let network = wallet.network().await?;
        Ok(Payer {
            wallet,
            policy: Policy {
                max_cost_sats: self.max_cost.or(config.max_cost_sats).unwrap_or(1000),
                max_fee_sats: self.max_fee.or(config.max_fee_sats).unwrap_or(10),
                network,
                budget: config.budget,
            },
            ledger: Arc::new(open_ledger(data_dir)?),
            prefer,
            pay: !self.no_pay,
            sessions: sessions.or(config.sessions).unwrap_or(false),
        })
    }
}

/// How many redirects `-L` follows.
const MAX_REDIRECTS: usize = 10;

/// Exit code when the payment itself failed (nothing was paid).
pub const EXIT_PAYMENT_FAILED: u8 = 7;
/// Exit code when a payment was sent and its outcome is not known yet.
pub const EXIT_IN_FLIGHT: u8 = 9;
/// Exit code on Ctrl-C, as shells report SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code of a run stopped by `--max-time` (curl's for a timeout).
pub const EXIT_MAX_TIME: u8 = 28;
/// Exit code of `--fail` and `--fail-with-body` for an HTTP error answer,
/// curl's.
pub const EXIT_HTTP_ERROR: u8 = 22;

/// An HTTP error answer under `--fail` or `--fail-with-body`.
#[derive(Debug)]
pub struct HttpError {
    /// The answer's status.
    pub status: reqwest::StatusCode,
    /// The start of its body (under `--fail`, which does not write it).
    pub told: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server answered {}", self.status)?;
        if !self.told.is_empty() {
            write!(f, ": {}", self.told)?;
        }
        Ok(())
    }
}

impl std::error::Error for HttpError {}

pub fn ledger_path(data_dir: &Path) -> PathBuf {
    data_dir.join("client").join("ledger.sqlite3")
}

/// Opens the client's ledger. One that others could read (made by hand,
/// copied with another mode) is made private first, and said so: its kept
/// tokens and session preimages are bearer credentials.
///
/// # Errors
///
/// When the ledger cannot be opened or its mode changed.
pub fn open_ledger(data_dir: &Path) -> Result<Ledger> {
    let path = ledger_path(data_dir);
    if path.exists() {
        if let Some(mode) = gate402_gateway::server::data_dir::make_private(&path)? {
            errln!(
                "gate402: warning: {} was readable by other users (mode {:o}); it is 0600 now. Whoever read it holds this client's kept tokens and open sessions' preimages: spend or close them (gate402 tokens clear, gate402 sessions close --all).",
                path.display(),
                mode & 0o777
            );
        }
    }
    Ok(Ledger::open(&path)?)
}

/// Runs one fetch; the exit code tells refusals apart.
pub async fn run(method: &str, args: &FetchArgs, data_dir: &Path) -> ExitCode {
    run_paying(
        data_dir,
        args.json,
        args.timeouts.max_time,
        fetch(method, args, data_dir),
    )
    .await
}

/// Runs a command that may pay: Ctrl-C exits 130 and names what is
/// pending; errors get the exit code of their kind and, with `json`, a
/// JSON document on standard output too (`{"error": {"kind",
/// "exit_code", "message"}}`) unless the command printed its own, so that
/// a program reading it is told why.
pub async fn run_paying(
    data_dir: &Path,
    json: bool,
    max_time: u64,
    command: impl std::future::Future<Output = Result<()>>,
) -> ExitCode {
    // Payments recorded after this one are this run's.
    // Opened as every command opens it: one others could read is said.
    let before =
        open_ledger(data_dir).and_then(|ledger| ledger.last_payment_id().map_err(Into::into));
    let deadline = async {
        match max_time {
            0 => std::future::pending().await,
            secs => tokio::time::sleep(Duration::from_secs(secs)).await,
        }
    };
    let outcome = tokio::select! {
        outcome = command => outcome,
        // The ledger wrote any payment down before sending it, so stopping
        // here loses nothing: a payment in flight stays pending and the next
        // request to its endpoint finishes it.
        _ = tokio::signal::ctrl_c() => {
            let kind = ("interrupted", EXIT_INTERRUPTED, "interrupted");
            return stopped(data_dir, json, &before, kind, "the interrupt");
        }
        () = deadline => {
            let message = format!("gave up after --max-time {max_time} s");
            let kind = ("timeout", EXIT_MAX_TIME, message.as_str());
            return stopped(data_dir, json, &before, kind, "--max-time ran out");
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let fetch_error = error.downcast_ref::<FetchError>().or_else(|| {
                match error.downcast_ref::<McpCallError>() {
                    Some(McpCallError::Fetch(e)) => Some(e),
                    _ => None,
                }
            });
            let (kind, code) = match fetch_error {
                Some(FetchError::Refused(refusal)) => ("refused", refusal.exit_code()),
                Some(FetchError::Pay(_)) => ("payment_failed", EXIT_PAYMENT_FAILED),
                Some(FetchError::InFlight(_)) => ("payment_in_flight", EXIT_IN_FLIGHT),
                _ if error.downcast_ref::<HttpError>().is_some() => ("http_error", EXIT_HTTP_ERROR),
                _ => ("error", 1),
            };
            let message = format!("{error:#}");
            errln!("gate402: {}", crate::output::terminal_safe(&message));
            if let Some(hint) = crate::output::hint_for(&message) {
                errln!("gate402: {hint}");
            }
            // Unless the command printed its document (whose own fields
            // say what went wrong: an HTTP error, a 402 after paying).
            if json && !crate::output::WROTE.load(std::sync::atomic::Ordering::Relaxed) {
                let paid = runs_payments(data_dir, &before);
                error_document(kind, code, &message, &paid, &[]);
            }
            ExitCode::from(code)
        }
    }
}

/// Ends a run stopped from outside (Ctrl-C, `--max-time`: the `cause`)
/// as `kind`: `message` said, what it paid and left pending named (and,
/// with `json`, in the error document), exit `code`.
fn stopped(
    data_dir: &Path,
    json: bool,
    before: &Result<i64>,
    (kind, code, message): (&str, u8, &str),
    cause: &str,
) -> ExitCode {
    let ledger = Ledger::open(&ledger_path(data_dir));
    let pending = ledger
        .as_ref()
        .map_or_else(|_| Ok(Vec::new()), Ledger::pending_of_this_run)
        .unwrap_or_default();
    errln!("gate402: {message}");
    // Paid, its request not answered yet: said, as a failed one's. Its
    // credential kept, the next run sends it again; not kept, the server
    // answered with it (and spent it) before the run stopped.
    let paid = runs_payments(data_dir, before);
    let kept: std::collections::HashSet<String> = ledger
        .as_ref()
        .map(|ledger| ledger.tokens().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|token| token.payment_hash)
        .collect();
    for payment in &paid {
        let after = if payment.session.is_some() || kept.contains(&payment.payment_hash) {
            "a server that had the request may have served it and spent the payment; one that did not keeps it unspent, and the next run sends it again"
        } else {
            "the server answered with it before the run stopped, so it is spent and nothing is kept for a next run"
        };
        errln!(
            "gate402: paid {} sat for {} (payment {}) before {cause}: {after}",
            crate::output::sats(payment.amount_msat),
            crate::output::terminal_safe(&payment.url),
            payment.payment_hash
        );
    }
    for payment in &pending {
        errln!(
            "gate402: payment {} ({} sat for {}) is pending; the next request to that endpoint finishes it",
            payment.entry.payment_hash,
            payment.entry.amount_msat.div_ceil(1000),
            payment.entry.url
        );
    }
    if json {
        let pending: Vec<_> = pending.iter().map(|p| &p.entry).collect();
        error_document(kind, code, message, &paid, &pending);
    }
    ExitCode::from(code)
}

/// What this run paid (settled), once it ended without its answer: as the
/// ledger has it.
fn runs_payments(data_dir: &Path, before: &Result<i64>) -> Vec<PaymentEntry> {
    match (Ledger::open(&ledger_path(data_dir)), before) {
        (Ok(ledger), Ok(before)) => ledger
            .payments_after(*before)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.status == gate402_client::PaymentState::Paid)
            .collect(),
        _ => Vec::new(),
    }
}

/// `--json`'s document of a run that ended without an answer: why, and
/// what it paid and left pending (an agent reading it must not take a
/// payment made for nothing for none).
fn error_document(
    kind: &str,
    code: u8,
    message: &str,
    paid: &[PaymentEntry],
    pending: &[&PaymentEntry],
) {
    let document = serde_json::json!({
        "error": {"kind": kind, "exit_code": code, "message": message},
        "payments": paid,
        "pending": pending,
    });
    outln!(
        "{}",
        serde_json::to_string_pretty(&document).unwrap_or_default()
    );
}

/// Prints an offer that was not paid (`--no-pay`): its price, what it
/// sells (one request, a pass until when, a balance: its deposit and unit
/// price) and through which protocols.
pub fn print_offer(offer: &gate402_client::Offer) -> Result<()> {
    use gate402_l402::caveat::Sale;
    let session =
        gate402_client::SessionOffer::from_challenges(offer.challenges.iter().map(String::as_str))
            .ok()
            .flatten();
    let mut schemes = Vec::new();
    if offer.l402.is_some() {
        schemes.push("L402");
    }
    if offer.payment.is_some() || session.is_some() {
        schemes.push("MPP");
    }
    if offer.x402.is_some() {
        schemes.push("x402");
    }
    let sale = offer.l402_sale();
    let sells = match (&sale, &session) {
        (Some((Sale::Requests, _)), _) => Some("request"),
        (Some((Sale::Pass, _)), _) => Some("pass"),
        (Some((Sale::Balance, _)), _) | (None, Some(_)) => Some("balance"),
        (None, None) => offer.payment.as_ref().map(|_| "request"),
    };
    let (pass_valid_until, pass_secs) = match &sale {
        Some((Sale::Pass, terms)) => (terms.valid_until, terms.pass_secs),
        _ => (None, None),
    };
    let description = match offer.invoice.description() {
        gate402_bolt11::Description::Text(text) => text,
        gate402_bolt11::Description::Hash(hash) => format!("(hash {})", hex::encode(hash)),
    };
    let price_sats = offer.amount_msat().map(|m| m.div_ceil(1000));
    let mut report = json!({
        "price_sats": price_sats,
        "sells": sells,
        "schemes": schemes,
        "description": description,
        "network": offer.invoice.network().as_str(),
        "expires_at": offer.invoice.expires_at(),
        "payment_hash": hex::encode(offer.invoice.payment_hash()),
        "invoice": offer.bolt11,
    });
    // A pass lasts its seconds from its first use, never past its end.
    if let Some(secs) = pass_secs {
        report["pass_secs"] = json!(secs);
    }
    if let Some(until) = pass_valid_until {
        report["pass_valid_until"] = json!(until);
    }
    if sells == Some("balance") {
        // The price is the deposit; a request spends the unit price.
        report["deposit_sats"] = json!(price_sats);
        if let Some(session) = &session {
            report["unit_sats"] = json!(session.unit_sats);
            report["mpp_intent"] = json!("session");
        }
    }
    outln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Says on standard error what a request paid.
pub fn report_payment(paid: &gate402_client::PaymentEntry) {
    errln!(
        "gate402: paid {} sat (+{} msat fee) with {} for {}",
        crate::output::sats(paid.amount_msat),
        paid.fee_msat,
        paid.scheme,
        paid.url
    );
}

async fn fetch(method: &str, args: &FetchArgs, data_dir: &Path) -> Result<()> {
    let prefer = args.prefer.as_deref().map(|p| match p {
        "mpp" => Prefer::Mpp,
        "x402" => Prefer::X402,
        _ => Prefer::L402,
    });
    let sessions = match (args.session, args.no_session) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let payer = args
        .pay
        .payer(prefer, sessions, args.timeouts, args.insecure, data_dir)
        .await?;
    // Redirects are followed by the payer, hop by hop, so that each 402 is
    // paid to the origin that sent it and no credential crosses origins.
    let http = args
        .timeouts
        .http_client(args.insecure, reqwest::redirect::Policy::none())?;
    let method = args.method.clone().unwrap_or_else(|| {
        if method == "GET" && args.data.is_some() {
            "POST".into()
        } else {
            method.to_owned()
        }
    });
    let method = method_arg(&method)?;
    let mut request = http.request(method, http_url(&args.url)?);
    for header in &args.headers {
        let (name, value) = header_arg(header)?;
        request = request.header(name, value);
    }
    if let Some(data) = &args.data {
        let body = match data.strip_prefix('@') {
            Some(file) => std::fs::read(file).with_context(|| format!("-d @{file}"))?,
            None => data.clone().into_bytes(),
        };
        request = request.body(body);
    }
    let request = request.build().context("URL")?;
    let client = Client { http, payer };
    let max_redirects = if args.follow { MAX_REDIRECTS } else { 0 };
    // Each payment is told as it is made: a later hop may still fail.
    let quiet = args.silent || args.json;
    // This run's payments are recorded after this one.
    let before = client.payer.ledger.last_payment_id()?;
    let origin = request.url().origin();
    let mut told = std::collections::HashSet::new();
    let fetched = client
        .fetch_following_reporting(request, max_redirects, |paid| {
            told.insert(paid.payment_hash.clone());
            if !quiet {
                report_payment(paid);
                if let (Some(prefer), Some(asked)) = (prefer, &args.prefer) {
                    if paid.scheme != prefer.as_str() {
                        errln!(
                            "gate402: --prefer {asked} could not be followed (the server does not offer it, or its field is the request's own); paid with {}",
                            paid.scheme
                        );
                    }
                }
                if args.session && paid.session.is_none() {
                    let balance = paid.scheme == gate402_client::Prefer::L402.as_str()
                        && matches!(l402_sale_of(&client.payer.ledger, paid), Some((Sale::Balance, _)));
                    errln!(
                        "gate402: --session could not be followed (the server offers no MPP session for this request); paid with {}{}",
                        paid.scheme,
                        if balance {
                            ": a balance bought through L402 is not refunded"
                        } else {
                            ""
                        }
                    );
                }
                if let Some(secs) = pass_paid_as_one_request(&client.payer.ledger, paid) {
                    errln!(
                        "gate402: this service sells a pass of {secs} s through L402; paid with {}, this payment buys this one request (--prefer l402 buys the pass)",
                        paid.scheme
                    );
                }
            }
        })
        .await;
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(e) => {
            // Paid, then the request failed (a timeout, a broken
            // connection): the payment is said, and what became of it.
            let paid: Vec<_> = client
                .payer
                .ledger
                .payments_after(before)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| {
                    p.status == gate402_client::PaymentState::Paid
                        && !told.contains(&p.payment_hash)
                        && reqwest::Url::parse(&p.url).is_ok_and(|u| u.origin() == origin)
                })
                .collect();
            if !paid.is_empty() && !quiet {
                for payment in &paid {
                    report_payment(payment);
                }
                errln!("gate402: the request failed after it was paid for: a server that had it may have served it and spent the payment; one that did not keeps it unspent, and the next run sends it again");
            }
            return Err(e.into());
        }
    };
    let (response, payment) = match fetched {
        Fetched::Offer(offer) => return print_offer(&offer),
        Fetched::Response(response, payment) => (response, payment),
    };
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let earlier = response
        .extensions()
        .get::<gate402_client::EarlierPayment>()
        .cloned();
    let failed = (args.fail || args.fail_with_body) && status.as_u16() >= 400;
    if failed && args.fail && !args.json {
        let told = gate402_client::body::read_bounded(response).await?;
        let told = String::from_utf8_lossy(&told[..told.len().min(MAX_TOLD_BYTES)])
            .trim()
            .to_owned();
        return Err(HttpError { status, told }.into());
    }
    let http_error = || {
        anyhow::Error::from(HttpError {
            status,
            told: String::new(),
        })
    };
    let still_unpaid = status == reqwest::StatusCode::PAYMENT_REQUIRED;
    if args.json {
        // A 402 after paying is the server's word on why, bounded (as the
        // text's below): one without end cannot hold the run.
        let body = if still_unpaid {
            gate402_client::body::read_bounded(response).await?.into()
        } else {
            response.bytes().await?
        };
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let report = json!({
            "status": status.as_u16(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "payment": payment,
            // Paid by an earlier payment: which one, when no new one was
            // made (`payment` null).
            "earlier_payment": earlier.as_ref().filter(|_| payment.is_none()).map(|e| json!({
                "payment_hash": e.payment_hash,
                "via": e.via,
            })),
        });
        outln!("{}", serde_json::to_string_pretty(&report)?);
        if failed {
            return Err(http_error());
        }
        if still_unpaid {
            bail!("still 402 after paying (the document above says why)");
        }
        return Ok(());
    }
    let mut out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => {
            Box::new(std::fs::File::create(path).with_context(|| format!("-o {}", path.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    // A reader that stopped reading (`| head`) was given what it asked
    // for; the payment is in the ledger already (see `output`).
    let stopped =
        |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe && args.output.is_none();
    let mut told = Vec::new();
    let mut response = response;
    let written: std::io::Result<()> = async {
        if args.include {
            writeln!(out, "{version:?} {status}")?;
            for (name, value) in &headers {
                // Bytes past ASCII (obs-text) shown, not dropped: a field
                // value holds no control byte but tab.
                writeln!(out, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
            }
            writeln!(out)?;
        }
        // Streamed, not held: a body may be larger than memory (one
        // without end is bounded by `--max-time`). A 402's first bytes are
        // kept for the message.
        while let Some(chunk) = response.chunk().await.map_err(std::io::Error::other)? {
            if still_unpaid && told.len() < MAX_TOLD_BYTES {
                told.extend_from_slice(&chunk[..chunk.len().min(MAX_TOLD_BYTES - told.len())]);
            }
            out.write_all(&chunk)?;
        }
        out.flush()
    }
    .await;
    match written {
        Err(e) if stopped(&e) => {}
        other => other?,
    }
    if failed {
        return Err(http_error());
    }
    if still_unpaid {
        bail!("still 402 after paying: {}", String::from_utf8_lossy(&told));
    }
    Ok(())
}

/// The seconds of the pass `paid`'s offer sold through L402, when it was
/// paid through another door (MPP, x402), which buys one request.
fn pass_paid_as_one_request(ledger: &Ledger, paid: &PaymentEntry) -> Option<u64> {
    if paid.scheme == gate402_client::Prefer::L402.as_str() || paid.session.is_some() {
        return None;
    }
    match l402_sale_of(ledger, paid)? {
        (Sale::Pass, terms) => terms.pass_secs,
        _ => None,
    }
}

/// What the L402 challenge of the 402 that `paid` answered sold, and its
/// terms, as the ledger kept the 402's challenges.
fn l402_sale_of(
    ledger: &Ledger,
    paid: &PaymentEntry,
) -> Option<(Sale, gate402_l402::caveat::Terms)> {
    let begun = ledger.payment_by_hash(&paid.payment_hash).ok()??;
    let offer =
        gate402_client::Offer::from_challenges(begun.challenges.iter().map(String::as_str)).ok()?;
    offer.l402_sale()
}

/// The most of a body repeated in an error message, in bytes.
const MAX_TOLD_BYTES: usize = 1024;

/// `gate402 tokens`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Every cached L402 token, and every MPP credential paid and not yet
    /// served (its request got a server error).
    List,
    /// One token in full (by payment-hash prefix).
    Show {
        /// Payment hash or a prefix of it.
        hash: String,
    },
    /// Forget a token (by payment-hash prefix).
    Remove {
        /// Payment hash or a prefix of it.
        hash: String,
    },
    /// Forget every token.
    Clear,
}

/// Runs a tokens command.
pub fn tokens(command: &TokensCommand, data_dir: &Path) -> Result<()> {
    let ledger = open_ledger(data_dir)?;
    match command {
        TokensCommand::List => {
            let tokens = ledger.tokens()?;
            if tokens.is_empty() {
                errln!("gate402: no tokens kept");
            }
            for token in tokens {
                outln!(
                    "{}  {:<7} {} {}{}  expires {}",
                    &token.payment_hash[..16],
                    token.authorization.split(' ').next().unwrap_or_default(),
                    if token.method.is_empty() {
                        "*"
                    } else {
                        &token.method
                    },
                    token.origin,
                    token.path,
                    token.expires_at.map_or("never".into(), crate::output::when)
                );
            }
        }
        TokensCommand::Show { hash } => {
            let hash = hash_prefix(hash)?;
            let matching: Vec<_> = ledger
                .tokens()?
                .into_iter()
                .filter(|t| t.payment_hash.starts_with(hash.as_str()))
                .collect();
            let payments: std::collections::BTreeSet<&str> =
                matching.iter().map(|t| t.payment_hash.as_str()).collect();
            if payments.len() > 1 {
                bail!(
                    "{hash} begins {} payments' hashes: give more of it",
                    payments.len()
                );
            }
            let token = matching
                .first()
                .with_context(|| format!("no token {hash}"))?;
            outln!("{}", serde_json::to_string_pretty(token)?);
        }
        TokensCommand::Remove { hash } => {
            let hash = hash_prefix(hash)?;
            match ledger.remove_tokens(&hash)? {
                0 => bail!("no token {hash}"),
                removed => outln!("removed {removed}"),
            }
        }
        TokensCommand::Clear => outln!("removed {}", ledger.remove_tokens("")?),
    }
    Ok(())
}

/// A payment hash or the start of one, as `tokens list` shows them: hex
/// digits, in lower case.
fn hash_prefix(text: &str) -> Result<String> {
    if text.is_empty() || text.len() > 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "{text:?} is not a payment hash or the start of one (1 to 64 hex digits, as `tokens list` shows them; `tokens clear` forgets every token)"
        );
    }
    Ok(text.to_ascii_lowercase())
}

/// `gate402 receipts [--json] [--since WHEN]`.
#[derive(Debug, clap::Args)]
pub struct ReceiptsArgs {
    /// One JSON document.
    #[arg(long)]
    pub json: bool,
    /// Only since WHEN: a date (RFC 3339, as the list prints them), unix
    /// seconds, or a duration back from now (`30m`, `24h`, `7d`).
    #[arg(long, value_parser = valid(since))]
    pub since: Option<String>,
}

fn since(text: &str) -> Result<u64> {
    gate402_paywall::time_bound(text, gate402_paywall::unix_now())
        .map_err(|e| anyhow::anyhow!("--since {e}"))
}

/// Lists payments with totals per domain (failed ones listed, not counted).
pub fn receipts(args: &ReceiptsArgs, data_dir: &Path) -> Result<()> {
    let ledger = open_ledger(data_dir)?;
    let since = args.since.as_deref().map(since).transpose()?.unwrap_or(0);
    let payments = ledger.payments(since)?;
    let refunds = ledger.refunds(since)?;
    let mut totals: std::collections::BTreeMap<&str, Totals> = Default::default();
    for p in &payments {
        let t = totals.entry(p.host.as_str()).or_default();
        match p.status {
            PaymentState::Failed => {}
            // Its outcome not known yet: said apart, not counted spent.
            PaymentState::Pending => {
                t.pending += 1;
                t.pending_msat += p.amount_msat;
            }
            PaymentState::Paid => {
                t.amount_msat += p.amount_msat;
                t.fee_msat += p.fee_msat;
                t.payments += 1;
            }
        }
    }
    totals.retain(|_, t| t.payments + t.pending > 0);
    // A refund counts once the server says it went out: what the wallet
    // saw arrive, when it can see it.
    for r in refunds.iter().filter(|r| r.status == "succeeded") {
        totals.entry(r.host.as_str()).or_default().refunded_msat +=
            r.received_msat.unwrap_or(r.refund_msat);
    }
    if args.json {
        let totals: Vec<_> = totals
            .iter()
            .map(|(domain, t)| {
                json!({"domain": domain, "payments": t.payments, "amount_msat": t.amount_msat,
                       "fee_msat": t.fee_msat, "refunded_msat": t.refunded_msat,
                       "pending": t.pending, "pending_msat": t.pending_msat})
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"payments": payments, "refunds": refunds, "totals": totals})
            )?
        );
        return Ok(());
    }
    if payments.is_empty() && refunds.is_empty() {
        errln!("gate402: no payments booked");
    }
    for p in &payments {
        outln!(
            "{}  {:>8} msat  +{} fee  {:7}  {:7}  {}  {}",
            crate::output::when(p.created_at),
            p.amount_msat,
            p.fee_msat,
            p.scheme,
            format!("{:?}", p.status).to_lowercase(),
            &p.payment_hash[..16],
            p.url
        );
    }
    for r in &refunds {
        outln!(
            "{}  {:>8} msat  refund   {:7}  {}  {}  ({})",
            crate::output::when(r.created_at),
            r.refund_msat,
            crate::output::terminal_safe(&r.status),
            &r.session[..16.min(r.session.len())],
            r.url,
            crate::output::terminal_safe(&r.reason)
        );
    }
    for (domain, t) in &totals {
        let pending = if t.pending > 0 {
            format!(
                "; {} pending ({} sat, not known yet whether paid)",
                t.pending,
                crate::output::sats(t.pending_msat)
            )
        } else {
            String::new()
        };
        outln!(
            "total {domain}: {} payments, {} sat + {} msat fees, {} sat refunded{pending}",
            t.payments,
            crate::output::sats(t.amount_msat),
            t.fee_msat,
            crate::output::sats(t.refunded_msat)
        );
    }
    Ok(())
}

/// What `receipts` sums for one domain (msat but the counts).
#[derive(Default)]
struct Totals {
    payments: usize,
    amount_msat: u64,
    fee_msat: u64,
    refunded_msat: u64,
    pending: usize,
    pending_msat: u64,
}

/// A clap value parser that checks a value with `check` and keeps its
/// text: a value that does not pass is a usage error (exit 2), named
/// before anything runs.
pub(crate) fn valid<T: 'static>(
    check: fn(&str) -> Result<T>,
) -> impl Fn(&str) -> std::result::Result<String, String> + Clone + Send + Sync + 'static {
    move |text| {
        check(text)
            .map(|_| text.to_owned())
            .map_err(|e| format!("{e:#}"))
    }
}

/// A `-H` value: `Name: value`, a valid header.
fn header_arg(text: &str) -> Result<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
    let (name, value) = text
        .split_once(':')
        .with_context(|| format!("{text:?}: expected 'Name: value'"))?;
    Ok((
        reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("{name:?} is not a header name"))?,
        reqwest::header::HeaderValue::from_str(value.trim())
            .with_context(|| format!("{text:?}: not a header value"))?,
    ))
}

/// A `-X` value: an HTTP method.
fn method_arg(text: &str) -> Result<reqwest::Method> {
    reqwest::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("{text:?} is not an HTTP method"))
}

/// Parses a URL the client may call: absolute, `http` or `https`.
pub(crate) fn http_url(text: &str) -> Result<reqwest::Url> {
    let url = reqwest::Url::parse(text).with_context(|| {
        format!("{text:?} is not a URL; give one like https://api.example.com/path")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("{text:?}: only http:// and https:// URLs can be called");
    }
    Ok(url)
}

/// This client's secret as a sandbox payer, kept in the data dir (owner
/// only) so that a later run recovers the preimage of a payment whose
/// answer was lost, and nobody else can.
pub(crate) fn sandbox_payer(data_dir: &Path) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = data_dir.join("sandbox_payer");
    match std::fs::read_to_string(&path) {
        Ok(secret) if secret.trim().len() >= 16 => {
            keep_private(&path)?;
            return Ok(secret.trim().to_owned());
        }
        Ok(_) => anyhow::bail!(
            "{}: not a payer secret; delete it to make a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| data_dir.display().to_string())?;
    let secret = Wallet::new_sandbox_payer();
    // Written whole under a name of this run's, then linked into place:
    // runs started together never read a file another is still writing
    // (they read an empty one, and failed).
    let written = data_dir.join(format!(
        ".sandbox_payer.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&written)
        .and_then(|mut file| file.write_all(secret.as_bytes()))
        .and_then(|()| std::fs::hard_link(&written, &path));
    let _ = std::fs::remove_file(&written);
    match made {
        Ok(()) => Ok(secret),
        // Another run made it first: that one is the secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().to_owned())
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Makes the payer secret at `path` its owner's only if others could read
/// it (made by hand, or copied with another mode), and says so: whoever
/// read it could ask the sandbox for this client's preimages.
fn keep_private(path: &Path) -> Result<()> {
    if let Some(mode) = gate402_gateway::server::data_dir::make_private(path)? {
        errln!(
            "gate402: warning: {} was readable by other users (mode {:o}); it is 0600 now. Whoever read it could ask the sandbox for this client's preimages.",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payer secret that others can read is made private when it is
    /// read (it was used as it was).
    #[test]
    fn a_payer_secret_open_to_others_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = sandbox_payer(dir.path()).unwrap();
        let path = dir.path().join("sandbox_payer");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(sandbox_payer(dir.path()).unwrap(), first);
        assert_eq!(mode(&path), 0o600);
    }

    /// Runs started together on a fresh data dir make one payer secret, and
    /// each reads it whole (one could read the file another was still
    /// writing: empty).
    #[test]
    fn runs_started_together_share_one_payer_secret() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let runs: Vec<_> = (0..8)
                .map(|_| {
                    let (dir, start) = (dir.path().to_owned(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        sandbox_payer(&dir).map_err(|e| e.to_string())
                    })
                })
                .collect();
            let secrets: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
            let first = secrets[0].clone().unwrap();
            assert!(first.len() >= 16, "{first:?}");
            assert!(
                secrets.iter().all(|s| s.as_ref() == Ok(&first)),
                "{secrets:?}"
            );
        }
    }
}
