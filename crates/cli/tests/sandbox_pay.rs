//! `gate402 sandbox pay` against a sandbox payer served on loopback.

use std::future::IntoFuture;
use std::process::Command;

use gate402_lightning::{InvoiceRequest, LightningBackend};
use gate402_lightning_sandbox::{http::router, Sandbox};
use sha2::Digest;

async fn serve(sandbox: Sandbox) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(sandbox)).into_future());
    url
}

/// `gate402 --data-dir DIR ARGS`: the data dir keeps the payer's secret.
fn gate402(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gate402"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pays_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::open(dir.path()).unwrap();
    let url = serve(sandbox.clone()).await;
    let invoice = sandbox
        .create_invoice(InvoiceRequest {
            amount_msat: 42_000,
            memo: "cli".into(),
            expiry_secs: 600,
        })
        .await
        .unwrap();

    let client = tempfile::tempdir().unwrap();
    let pay = |data_dir: std::path::PathBuf| {
        let (url, bolt11) = (url.clone(), invoice.bolt11.clone());
        tokio::task::spawn_blocking(move || {
            gate402(&data_dir, &["sandbox", "pay", "--url", &url, &bolt11])
        })
    };
    let out = pay(client.path().to_owned()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paid: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Paid again by the same client (its answer lost, say): the same
    // preimage, nothing paid twice.
    let again = pay(client.path().to_owned()).await.unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["preimage"], paid["preimage"]);
    assert_eq!(paid["amount_msat"], 42_000);
    let preimage = hex::decode(paid["preimage"].as_str().unwrap()).unwrap();
    assert_eq!(
        <[u8; 32]>::from(sha2::Sha256::digest(&preimage)),
        invoice.payment_hash
    );
    assert!(sandbox
        .invoice_status(&invoice.payment_hash)
        .await
        .unwrap()
        .is_settled());

    // Refusals: paid before by another client, another sandbox's
    // invoice, nobody listening.
    let other = Sandbox::open(&dir.path().join("other")).unwrap();
    let foreign = other
        .create_invoice(InvoiceRequest {
            amount_msat: 1_000,
            memo: "x".into(),
            expiry_secs: 600,
        })
        .await
        .unwrap();
    for (args, needle) in [
        (
            vec!["sandbox", "pay", "--url", &url, &invoice.bolt11],
            "already paid",
        ),
        (
            vec!["sandbox", "pay", "--url", &url, &foreign.bolt11],
            "only invoices it issued",
        ),
        (
            vec![
                "sandbox",
                "pay",
                "--url",
                "http://127.0.0.1:9",
                &foreign.bolt11,
            ],
            "cannot reach",
        ),
    ] {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let other_client = dir.path().join("other-client");
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            gate402(&other_client, &args)
        })
        .await
        .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
}
