//! `gate402 demo`: the whole payment loop once, each step printed.
//!
//! 402 → pay with the sandbox → retry with L402 → a new 402 → pay →
//! retry with MPP → decode the receipt → replay the spent credential; then
//! a prepaid session: a deposit opens it, a token stream is charged as it
//! flows, a top-up resumes it, and closing refunds what is left.

use std::path::Path;

use anyhow::{bail, Context, Result};
use gate402_client::{Offer, SessionOffer};
use gate402_gateway::{demo, Gateway};
use gate402_lightning_sandbox::http::pay_via;
use gate402_mpp::{PaymentChallenge, PaymentCredential};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;

/// Arguments of `gate402 demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A running sandbox gateway (`gate402 serve`); without it, one is
    /// started for the demo on a free port.
    #[arg(long)]
    pub url: Option<String>,
}

fn short(text: &str) -> String {
    if text.len() > 72 {
        format!("{}…{}", &text[..40], &text[text.len() - 16..])
    } else {
        text.to_owned()
    }
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
) -> Result<reqwest::Response> {
    let mut request = client.get(url);
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    request.send().await.with_context(|| format!("GET {url}"))
}

/// Reads the offer of a 402 and prints it.
async fn expect_402(response: reqwest::Response) -> Result<Offer> {
    if response.status() != StatusCode::PAYMENT_REQUIRED {
        bail!("expected 402, got {}", response.status());
    }
    for value in response.headers().get_all(WWW_AUTHENTICATE) {
        outln!(
            "     WWW-Authenticate: {}",
            short(value.to_str().unwrap_or("?"))
        );
    }
    let offer = Offer::from_headers(response.headers())?;
    outln!(
        "     one invoice: {} msat, payment hash {}",
        offer.amount_msat().unwrap_or(0),
        hex::encode(offer.invoice.payment_hash())
    );
    Ok(offer)
}

async fn pay(client: &reqwest::Client, base: &str, offer: &Offer) -> Result<[u8; 32]> {
    let paid = pay_via(client, base, &offer.bolt11).await?;
    outln!("     sandbox paid it: preimage {}", paid.preimage);
    let mut preimage = [0u8; 32];
    hex::decode_to_slice(&paid.preimage, &mut preimage).context("preimage")?;
    Ok(preimage)
}

async fn expect_200(response: reqwest::Response) -> Result<String> {
    let status = response.status();
    let receipt = response
        .headers()
        .get(gate402_mpp::RECEIPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await?;
    if status != StatusCode::OK {
        bail!("expected 200, got {status}: {body}");
    }
    outln!("     200 OK: {}", body.trim());
    receipt.context("no Payment-Receipt header")
}

fn show_receipt(receipt: &str) -> Result<()> {
    let json = gate402_mpp::receipt::decode_json(receipt)?;
    outln!("     Payment-Receipt decodes to {json}");
    Ok(())
}

/// Runs the loop against `args.url` or a gateway of its own.
pub async fn run(args: &Args, data_dir: &Path) -> Result<()> {
    let (base, local) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let (upstream, task) = demo::start_upstream().await?;
            let mut config = demo::gateway_config(&format!("http://{upstream}"));
            config.listen = "127.0.0.1:0".parse()?;
            let gateway = Gateway::start(&config, &data_dir.join("demo")).await?;
            (format!("http://{}", gateway.addr()), Some((gateway, task)))
        }
    };
    outln!("gate402 demo against {base} (sandbox: TEST MONEY)\n");
    let client = reqwest::Client::new();
    let url = format!("{base}/api/weather?city=Oslo");

    outln!("1. GET {url} without paying");
    let offer = expect_402(get(&client, &url, None).await?).await?;
    outln!("2. pay the invoice with the sandbox payer");
    let preimage = pay(&client, &base, &offer).await?;
    let l402 = offer
        .l402_authorization(&preimage)
        .context("no L402 challenge offered")?;
    outln!("3. retry with Authorization: {}", short(&l402));
    let receipt = expect_200(get(&client, &url, Some(&l402)).await?).await?;
    show_receipt(&receipt)?;

    outln!("4. GET again without credentials: a new invoice");
    let offer = expect_402(get(&client, &url, None).await?).await?;
    let preimage = pay(&client, &base, &offer).await?;
    let payment = offer
        .payment_authorization(&preimage)
        .context("no Payment challenge offered")?;
    outln!("5. retry with Authorization: {}", short(&payment));
    let receipt = expect_200(get(&client, &url, Some(&payment)).await?).await?;
    show_receipt(&receipt)?;

    for (step, name, credential) in [
        (6, "Payment credential", &payment),
        (7, "L402 token", &l402),
    ] {
        outln!("{step}. replay the {name}: a payment buys one request here");
        let replay = get(&client, &url, Some(credential)).await?;
        outln!("     {} (a fresh challenge is attached)", replay.status());
        if replay.status() != StatusCode::PAYMENT_REQUIRED {
            bail!("a replayed {name} must get 402, got {}", replay.status());
        }
    }
    outln!("\nEach payment bought one request, through either protocol. A service with `sells = \"pass\"` sells L402 tokens that last a period instead.\n");
    session(&client, &base).await?;
    if let Some((gateway, task)) = local {
        gateway.shutdown().await?;
        task.abort();
    }
    Ok(())
}

/// The session offer of a 402 for `url`, checked against its deposit
/// invoice.
async fn session_offer(client: &reqwest::Client, url: &str) -> Result<SessionOffer> {
    let response = get(client, url, None).await?;
    if response.status() != StatusCode::PAYMENT_REQUIRED {
        bail!("expected 402, got {}", response.status());
    }
    let offer =
        SessionOffer::from_headers(response.headers())?.context("no session challenge offered")?;
    outln!(
        "     Payment intent=\"session\": {} sat a token, deposit {} sat",
        offer.unit_sats,
        offer.deposit_sats
    );
    Ok(offer)
}

/// Pays a session offer's deposit invoice; the preimage, hex.
async fn pay_deposit(client: &reqwest::Client, base: &str, offer: &SessionOffer) -> Result<String> {
    let paid = pay_via(client, base, &offer.bolt11).await?;
    outln!("     sandbox paid {} msat", paid.amount_msat);
    Ok(paid.preimage)
}

fn session_credential(challenge: &PaymentChallenge, payload: serde_json::Value) -> String {
    gate402_mpp::credential::to_authorization(&PaymentCredential::new(challenge.to_echo(), payload))
}

/// One event of a stream: its name and data, or None at its end.
async fn next_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
) -> Result<Option<(String, String)>> {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let mut name = "message".to_owned();
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim().to_owned();
                }
            }
            if !data.is_empty() {
                return Ok(Some((name, data)));
            }
            continue;
        }
        match response.chunk().await? {
            Some(chunk) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            None => return Ok(None),
        }
    }
}

/// A prepaid session on the demo's streamed chat: opened with a deposit,
/// charged a token at a time, topped up mid-stream, closed with a refund.
async fn session(client: &reqwest::Client, base: &str) -> Result<()> {
    let url = format!("{base}/api/chat/stream?prompt=metered");
    outln!("8. GET {url}: a balance, sold as an MPP session (or an L402 token)");
    let offer = session_offer(client, &url).await?;
    outln!("9. pay the deposit, get a return invoice for the refund (POST /sandbox/invoice)");
    let preimage = pay_deposit(client, base, &offer).await?;
    let issued: serde_json::Value = client
        .post(format!("{base}/sandbox/invoice"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let return_invoice = issued["invoice"].as_str().context("no return invoice")?;
    let return_hash = issued["payment_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let session_id = offer.request.payment_hash.clone();
    outln!("10. open the session and read the stream, charged a token at a time");
    let open = session_credential(
        &offer.challenge,
        serde_json::json!({"action": "open", "preimage": preimage, "returnInvoice": return_invoice}),
    );
    let mut stream = get(client, &url, Some(&open)).await?;
    if stream.status() != StatusCode::OK {
        bail!("expected 200, got {}", stream.status());
    }
    let mut buffer = String::new();
    while let Some((name, data)) = next_event(&mut stream, &mut buffer).await? {
        match name.as_str() {
            "payment-need-topup" => {
                outln!("     event {name}: {data}");
                outln!("     top up while the stream waits: a fresh 402, paid, sent as topUp");
                let fresh = session_offer(client, &url).await?;
                let top_up = pay_deposit(client, base, &fresh).await?;
                let credential = session_credential(
                    &fresh.challenge,
                    serde_json::json!({"action": "topUp", "sessionId": session_id, "topUpPreimage": top_up}),
                );
                let answer = get(client, &url, Some(&credential)).await?;
                outln!("     topUp: {} {}", answer.status(), answer.text().await?);
            }
            "message" => outln!("     {data}"),
            _ => outln!("     event {name}: {data}"),
        }
    }
    outln!("11. close the session: the unspent balance is refunded");
    let close = session_credential(
        &offer.challenge,
        serde_json::json!({"action": "close", "sessionId": session_id, "preimage": preimage}),
    );
    let closed = get(client, &url, Some(&close)).await?;
    outln!("     {} {}", closed.status(), closed.text().await?);
    let refund: serde_json::Value = client
        .get(format!("{base}/sandbox/invoice/{return_hash}"))
        .send()
        .await?
        .json()
        .await?;
    outln!("     the return invoice: {refund}");
    outln!("\nOne deposit paid for many tokens; what was not spent came back.");
    Ok(())
}
