//! `gate402 sessions list|close`: the MPP sessions `gate402 get --session`
//! opened, and closing them (the unspent balance is refunded to the
//! wallet's return invoice).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Subcommand;
use gate402_client::{Client, Refund, StoredSession};
use serde_json::{json, Value};

use crate::fetch::{PayOptions, Timeouts};

/// `gate402 sessions`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// The open sessions: deposit, last known balance, idle timeout, last
    /// use.
    List {
        /// One JSON document.
        #[arg(long)]
        json: bool,
        /// Closed ones too, with why they were closed and what their
        /// close refunded (their balance is then what is left after it).
        #[arg(long)]
        all: bool,
    },
    /// Close a session (by id prefix), or every open one: the server
    /// refunds the unspent balance; prints `{"session", "refundSats",
    /// "refundStatus", "receivedMsat"}` (an array with --all).
    Close {
        /// The session id (the deposit's payment hash) or a prefix of it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every open session.
        #[arg(long)]
        all: bool,
        /// The client config, for its wallet (to see the refund arrive)
        /// [default: client.toml in the data dir, if any].
        #[arg(long, env = "GATE402_CLIENT_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        timeouts: Timeouts,
    },
}

/// Runs a sessions command.
pub async fn run(command: &SessionsCommand, data_dir: &Path) -> Result<()> {
    match command {
        SessionsCommand::List { json, all } => list(*json, *all, data_dir),
        SessionsCommand::Close {
            id,
            all,
            config,
            timeouts,
        } => close(id.as_deref(), *all, config.clone(), *timeouts, data_dir).await,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A session as listed; `refund` is what its close refunded, when it was
/// closed and the server answered: the balance is then what is left after
/// it (nothing when it was refunded whole).
fn described(session: &StoredSession, refund: Option<&Refund>, now: u64) -> Value {
    let mut value = serde_json::to_value(session).unwrap_or_default();
    value["balance_sats"] = balance_after(session, refund).into();
    if let Some(refund) = refund {
        value["refund_sats"] = refund.refund_sats().into();
        value["refund_status"] = refund.status.clone().into();
        // What the wallet saw arrive, where it can see it (not NWC).
        value["received_msat"] = refund.received_msat.into();
    }
    // Past its idle timeout the server has closed (or is closing) it; the
    // next use or `close` learns the refund.
    value["idle"] = (session.closed_at.is_none() && session.idle_at(now)).into();
    value
}

/// The balance left with the server, in satoshis: the unspent part less
/// what a refund that succeeded gave back.
fn balance_after(session: &StoredSession, refund: Option<&Refund>) -> u64 {
    let refunded = refund
        .filter(|r| r.status == "succeeded")
        .map_or(0, Refund::refund_sats);
    session.balance_sats().saturating_sub(refunded)
}

fn list(json_out: bool, all: bool, data_dir: &Path) -> Result<()> {
    let ledger = crate::fetch::open_ledger(data_dir)?;
    let sessions = ledger.sessions(all)?;
    // The last refund recorded for each closed session.
    let refunds: std::collections::HashMap<String, Refund> = if all {
        ledger
            .refunds(0)?
            .into_iter()
            .map(|r| (r.session.clone(), r))
            .collect()
    } else {
        Default::default()
    };
    let now = now();
    if json_out {
        let sessions: Vec<Value> = sessions
            .iter()
            .map(|s| described(s, refunds.get(&s.id), now))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "sessions": sessions }))?
        );
        return Ok(());
    }
    if sessions.is_empty() {
        errln!("gate402: no sessions");
    }
    for s in &sessions {
        let refund = refunds.get(&s.id);
        let state = match (&s.closed_at, s.idle_at(now)) {
            (Some(_), _) => format!(
                "closed ({}){}",
                s.close_reason.as_deref().unwrap_or("unknown"),
                refund.map_or_else(String::new, |r| format!(
                    ", refunded {} sat ({})",
                    r.refund_sats(),
                    r.status
                )),
            ),
            (None, true) => "idle past its timeout".into(),
            (None, false) => "open".into(),
        };
        outln!(
            "{}  {} {}{}  balance {} of {} sat deposited ({} sat a unit)  idle timeout {}  last used {}  {state}",
            &s.id[..16.min(s.id.len())],
            s.method,
            s.origin,
            s.path,
            balance_after(s, refund),
            s.deposit_sats,
            s.unit_sats,
            s.idle_timeout_secs
                .map_or("-".into(), |t| format!("{t} s")),
            crate::output::when(s.last_used_at),
        );
    }
    Ok(())
}

fn closed(refund: &Refund) -> Value {
    json!({
        "session": refund.session,
        "refundSats": refund.refund_sats(),
        "refundStatus": refund.status,
        "receivedMsat": refund.received_msat,
    })
}

/// Marks a close's `answer` as of a session closed before it was asked:
/// when (RFC 3339, as the server's close answers it) and why.
fn said_closed_already(answer: &mut Value, closed_at: Option<u64>, reason: Option<&str>) {
    answer["closedAt"] = json!(closed_at.map(crate::output::when));
    answer["closeReason"] = json!(reason);
    answer["alreadyClosed"] = json!(true);
}

async fn close(
    id: Option<&str>,
    all: bool,
    config: Option<PathBuf>,
    timeouts: Timeouts,
    data_dir: &Path,
) -> Result<()> {
    let options = PayOptions {
        max_cost: None,
        max_fee: None,
        no_pay: false,
        config,
    };
    let payer = options
        .payer(None, Some(true), timeouts, false, data_dir)
        .await?;
    let client = Client {
        http: timeouts.http_client(false, reqwest::redirect::Policy::none())?,
        payer,
    };
    let ledger = &client.payer.ledger;
    let open = ledger.sessions(false)?;
    let prefix = id.map(str::to_ascii_lowercase).unwrap_or_default();
    let named = |s: &&StoredSession| s.id.starts_with(&prefix);
    let chosen: Vec<&StoredSession> = match id {
        _ if all => open.iter().collect(),
        Some(id) if !id.is_empty() => open.iter().filter(named).collect(),
        _ => bail!("give a session id (or --all)"),
    };
    match (chosen.len(), id) {
        (0, Some(id)) => {
            // Closed already (by this client, or by the server for
            // idleness): said as it was recorded, not as an error.
            let all_sessions = ledger.sessions(true)?;
            let done: Vec<&StoredSession> = all_sessions
                .iter()
                .filter(|s| s.closed_at.is_some() && named(s))
                .collect();
            let [session] = done[..] else {
                bail!("no open session {id}");
            };
            errln!("gate402: session {} is closed already", session.id);
            let mut refund = ledger
                .refunds(0)?
                .into_iter()
                .rfind(|r| r.session == session.id);
            // A refund that may still change (pending, failed, not yet
            // arrived) is asked about again: the server answers `close`
            // again, and the wallet says what arrived.
            if refund.as_ref().is_some_and(|r| {
                !gate402_client::refund_is_final(r.refund_msat, &r.status, r.received_msat)
            }) {
                match client.close_session(session).await {
                    Ok(asked) => refund = Some(asked),
                    Err(e) => errln!(
                        "gate402: its refund could not be asked about again: {}",
                        crate::output::terminal_safe(&format!("{e:#}"))
                    ),
                }
            }
            let mut answer = match &refund {
                Some(refund) => closed(refund),
                None => json!({ "session": session.id }),
            };
            said_closed_already(
                &mut answer,
                session.closed_at,
                session.close_reason.as_deref(),
            );
            outln!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(());
        }
        (n, Some(id)) if n > 1 => bail!("{id} names {n} open sessions; give more of the id"),
        _ => {}
    }
    let mut answers = Vec::new();
    let mut failed = 0;
    for session in chosen {
        match client.close_session(session).await {
            // Closed by the server before it was asked (idle, or by its
            // operator): said as a session closed already is.
            Ok(refund) if refund.reason == gate402_client::CLOSED_BY_THE_SERVER => {
                let mut answer = closed(&refund);
                let closed_at = ledger
                    .sessions(true)?
                    .into_iter()
                    .find(|s| s.id == session.id)
                    .and_then(|s| s.closed_at);
                said_closed_already(&mut answer, closed_at, Some(&refund.reason));
                answers.push(answer);
            }
            Ok(refund) => answers.push(closed(&refund)),
            // The others are still closed; this one stays open.
            Err(e) if all => {
                errln!(
                    "gate402: session {}: {}",
                    session.id,
                    crate::output::terminal_safe(&format!("{e:#}"))
                );
                failed += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let out = if all {
        Value::Array(answers)
    } else {
        answers.pop().unwrap_or_default()
    };
    outln!("{}", serde_json::to_string_pretty(&out)?);
    if failed > 0 {
        bail!("{failed} sessions could not be closed and are kept open");
    }
    Ok(())
}
