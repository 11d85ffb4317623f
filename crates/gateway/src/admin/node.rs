//! `/admin/api/node`: the Lightning node behind the gateway: its backend,
//! network and id, its funds and channels, how much more it can be paid
//! (inbound liquidity: when it runs out, 402s are still issued but cannot
//! be paid), and its recent invoices. A figure the backend cannot tell is
//! `null`; a call the backend does not answer is reported in `errors`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gate402_lightning::{ChannelInfo, InvoiceState, InvoiceSummary, Liquidity};
use serde_json::{json, Value};

use super::AdminState;

/// How many invoices the node view lists.
const RECENT_INVOICES: usize = 20;

/// `GET /admin/api/node`.
pub(super) async fn node(State(state): State<AdminState>) -> Response {
    let backend = state.paywall.backend();
    let low_inbound_sats = state
        .low_inbound_sats
        .load(std::sync::atomic::Ordering::Relaxed);
    let (info, liquidity, invoices) = tokio::join!(
        backend.node_info(),
        backend.liquidity(),
        backend.recent_invoices(RECENT_INVOICES)
    );
    let mut errors = serde_json::Map::new();
    let mut shown = json!({});
    match info {
        Ok(info) => {
            shown["backend"] = json!(info.backend);
            shown["network"] = json!(info.network.to_string());
            shown["pubkey"] = json!(hex::encode(info.pubkey));
        }
        Err(e) => {
            errors.insert("node_info".into(), json!(e.to_string()));
        }
    }
    match liquidity {
        Ok(liquidity) => {
            let low = !liquidity.unlimited
                && liquidity
                    .inbound_msat
                    .is_some_and(|inbound| inbound / 1000 < low_inbound_sats);
            shown["liquidity"] = liquidity_json(&liquidity);
            shown["low_inbound"] = json!(low);
        }
        Err(e) => {
            errors.insert("liquidity".into(), json!(e.to_string()));
        }
    }
    shown["low_inbound_sats"] = json!(low_inbound_sats);
    match invoices {
        Ok(invoices) => shown["recent_invoices"] = invoices.iter().map(invoice_json).collect(),
        Err(e) => {
            errors.insert("recent_invoices".into(), json!(e.to_string()));
        }
    }
    shown["errors"] = Value::Object(errors);
    Json(shown).into_response()
}

fn liquidity_json(l: &Liquidity) -> Value {
    json!({
        "unlimited": l.unlimited,
        "onchain": l.onchain.map(|o| json!({
            "total_sat": o.total_sat,
            "confirmed_sat": o.confirmed_sat,
            "unconfirmed_sat": o.unconfirmed_sat,
            "spendable_sat": o.spendable_sat,
        })),
        "lightning_balance_msat": l.lightning_balance_msat,
        "inbound_msat": l.inbound_msat,
        "outbound_msat": l.outbound_msat,
        "channels": l.channels.as_ref().map(|channels| {
            channels.iter().map(channel_json).collect::<Vec<_>>()
        }),
    })
}

fn channel_json(c: &ChannelInfo) -> Value {
    json!({
        "peer_node_id": c.peer_node_id,
        "channel_id": c.channel_id,
        "short_channel_id": c.short_channel_id,
        "capacity_sat": c.capacity_sat,
        "outbound_msat": c.outbound_msat,
        "inbound_msat": c.inbound_msat,
        "usable": c.usable,
        "public": c.public,
    })
}

fn invoice_json(i: &InvoiceSummary) -> Value {
    json!({
        "payment_hash": hex::encode(i.payment_hash),
        "amount_msat": i.amount_msat,
        "received_msat": i.received_msat,
        "state": match i.state {
            InvoiceState::Open => "open",
            InvoiceState::Settled => "settled",
            InvoiceState::Canceled => "canceled",
        },
        "created_at": i.created_at,
        "settled_at": i.settled_at,
        "expires_at": i.expires_at,
        "description": i.description,
    })
}
