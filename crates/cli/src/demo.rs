//! `gate402 demo`: the whole payment loop once, each step printed.
//!
//! 402 → pay with the sandbox → retry with L402 → a new 402 → pay →
//! retry with MPP → decode the receipt → replay the spent credential.

use std::path::Path;

use anyhow::{bail, Context, Result};
use gate402_client::Offer;
use gate402_gateway::{demo, Gateway, GatewayConfig};
use gate402_lightning_sandbox::http::pay_via;
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
        println!(
            "     WWW-Authenticate: {}",
            short(value.to_str().unwrap_or("?"))
        );
    }
    let offer = Offer::from_headers(response.headers())?;
    println!(
        "     one invoice: {} msat, payment hash {}",
        offer.amount_msat().unwrap_or(0),
        hex::encode(offer.invoice.payment_hash())
    );
    Ok(offer)
}

async fn pay(client: &reqwest::Client, base: &str, offer: &Offer) -> Result<[u8; 32]> {
    let paid = pay_via(client, base, &offer.bolt11).await?;
    println!("     sandbox paid it: preimage {}", paid.preimage);
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
    println!("     200 OK: {}", body.trim());
    receipt.context("no Payment-Receipt header")
}

fn show_receipt(receipt: &str) -> Result<()> {
    let json = gate402_mpp::receipt::decode_json(receipt)?;
    println!("     Payment-Receipt decodes to {json}");
    Ok(())
}

/// Runs the loop against `args.url` or a gateway of its own.
pub async fn run(args: &Args, data_dir: &Path) -> Result<()> {
    let (base, local) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let (upstream, task) = demo::start_upstream().await?;
            let mut config =
                GatewayConfig::default_with_services(demo::services(&format!("http://{upstream}")));
            config.listen = "127.0.0.1:0".parse()?;
            let gateway = Gateway::start(&config, &data_dir.join("demo")).await?;
            (format!("http://{}", gateway.addr()), Some((gateway, task)))
        }
    };
    println!("gate402 demo against {base} (sandbox: TEST MONEY)\n");
    let client = reqwest::Client::new();
    let url = format!("{base}/api/weather?city=Oslo");

    println!("1. GET {url} without paying");
    let offer = expect_402(get(&client, &url, None).await?).await?;
    println!("2. pay the invoice with the sandbox payer");
    let preimage = pay(&client, &base, &offer).await?;
    let l402 = offer
        .l402_authorization(&preimage)
        .context("no L402 challenge offered")?;
    println!("3. retry with Authorization: {}", short(&l402));
    let receipt = expect_200(get(&client, &url, Some(&l402)).await?).await?;
    show_receipt(&receipt)?;

    println!("4. GET again without credentials: a new invoice");
    let offer = expect_402(get(&client, &url, None).await?).await?;
    let preimage = pay(&client, &base, &offer).await?;
    let payment = offer
        .payment_authorization(&preimage)
        .context("no Payment challenge offered")?;
    println!("5. retry with Authorization: {}", short(&payment));
    let receipt = expect_200(get(&client, &url, Some(&payment)).await?).await?;
    show_receipt(&receipt)?;

    for (step, name, credential) in [
        (6, "Payment credential", &payment),
        (7, "L402 token", &l402),
    ] {
        println!("{step}. replay the {name}: a payment buys one request here");
        let replay = get(&client, &url, Some(credential)).await?;
        println!("     {} (a fresh challenge is attached)", replay.status());
        if replay.status() != StatusCode::PAYMENT_REQUIRED {
            bail!("a replayed {name} must get 402, got {}", replay.status());
        }
    }
    println!("\nEach payment bought one request, through either protocol. A service with `sells = \"pass\"` sells L402 tokens that last a period instead.");
    if let Some((gateway, task)) = local {
        gateway.shutdown().await?;
        task.abort();
    }
    Ok(())
}
