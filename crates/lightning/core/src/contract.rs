//! The contract every backend keeps, as a test suite: each backend's tests
//! run it against a real receiving node and a real payer.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::{
    InvoiceRequest, InvoiceStatus, LightningBackend, LightningError, PayError, PaymentStatus,
};

/// A node that issues invoices and a node that pays them (they may be the
/// same sandbox, which pays only its own invoices).
pub struct Pair<'a> {
    /// Issues invoices.
    pub receiver: &'a dyn LightningBackend,
    /// Pays them.
    pub payer: &'a dyn LightningBackend,
}

fn request(amount_msat: u64, expiry_secs: u32) -> InvoiceRequest {
    InvoiceRequest {
        amount_msat,
        memo: "gate402 contract test".into(),
        expiry_secs,
    }
}

/// Runs every check of the contract.
pub async fn run_all(pair: &Pair<'_>) {
    run_common(pair).await;
    amountless_invoice_is_paid_with_the_amount_given(pair).await;
}

/// Runs every check of the contract for a receiver that cannot issue an
/// invoice without an amount (NWC's `make_invoice` needs one): instead of
/// paying such an invoice, checks that the receiver says it cannot make one.
pub async fn run_all_amount_only_receiver(pair: &Pair<'_>) {
    run_common(pair).await;
    amountless_invoice_is_unsupported(pair).await;
}

async fn run_common(pair: &Pair<'_>) {
    invoice_is_what_was_asked(pair).await;
    payment_settles_and_reveals_the_preimage(pair).await;
    unknown_hashes(pair).await;
    waiting_times_out_without_payment(pair).await;
    expired_invoice_is_refused(pair).await;
    pay_amount_refuses_an_invoice_with_an_amount(pair).await;
}

/// What the amountless-invoice checks pay: 1234 sat.
const CHOSEN_AMOUNT_MSAT: u64 = 1_234_000;

/// A new invoice decodes to the amount, memo, network and payee asked for,
/// and starts open.
pub async fn invoice_is_what_was_asked(pair: &Pair<'_>) {
    let info = pair.receiver.node_info().await.expect("node info");
    let created = pair
        .receiver
        .create_invoice(request(21_000, 600))
        .await
        .expect("create invoice");
    let invoice = gate402_bolt11::Invoice::parse(&created.bolt11).expect("valid BOLT11");
    assert_eq!(invoice.amount_msat(), Some(21_000));
    assert_eq!(invoice.payment_hash(), created.payment_hash);
    assert_eq!(invoice.network(), info.network);
    assert_eq!(invoice.payee(), info.pubkey);
    assert_eq!(
        invoice.description(),
        gate402_bolt11::Description::Text("gate402 contract test".into())
    );
    assert!(invoice.expiry_secs() == 600 && created.expires_at == invoice.expires_at());
    assert_eq!(
        pair.receiver
            .invoice_status(&created.payment_hash)
            .await
            .unwrap(),
        InvoiceStatus::Open
    );
}

/// Paying settles the invoice on the receiver, and the preimage the payer
/// gets hashes to the payment hash. Paying again is refused.
pub async fn payment_settles_and_reveals_the_preimage(pair: &Pair<'_>) {
    let created = pair
        .receiver
        .create_invoice(request(5_000, 600))
        .await
        .expect("create invoice");
    let waiter = pair
        .receiver
        .wait_invoice(&created.payment_hash, Duration::from_secs(60));
    let payment = pair
        .payer
        .pay(&created.bolt11, 10_000, Duration::from_secs(60));
    let (settled, paid) = tokio::join!(waiter, payment);
    let paid = paid.expect("payment succeeds");
    assert_eq!(
        <[u8; 32]>::from(Sha256::digest(paid.preimage)),
        created.payment_hash,
        "preimage hashes to the payment hash"
    );
    assert_eq!(paid.amount_msat, 5_000);
    assert!(paid.fee_msat <= 10_000);
    match settled.expect("receiver sees the settlement") {
        InvoiceStatus::Settled {
            amount_msat,
            preimage,
        } => {
            assert!(amount_msat >= 5_000);
            if let Some(preimage) = preimage {
                assert_eq!(preimage, paid.preimage);
            }
        }
        other => panic!("expected settled, got {other:?}"),
    }
    assert!(pair
        .receiver
        .invoice_status(&created.payment_hash)
        .await
        .unwrap()
        .is_settled());
    assert_eq!(
        pair.payer
            .payment_status(&created.payment_hash)
            .await
            .unwrap(),
        PaymentStatus::Succeeded(paid.clone())
    );
    match pair
        .payer
        .pay(&created.bolt11, 10_000, Duration::from_secs(30))
        .await
    {
        Err(PayError::AlreadyPaid(outcome)) => assert_eq!(outcome.preimage, paid.preimage),
        other => panic!("paying twice must be refused, got {other:?}"),
    }
}

/// Hashes nobody issued or paid.
pub async fn unknown_hashes(pair: &Pair<'_>) {
    let hash = [0x5e; 32];
    assert!(matches!(
        pair.receiver.invoice_status(&hash).await,
        Err(LightningError::NotFound(_))
    ));
    assert_eq!(
        pair.payer.payment_status(&hash).await.unwrap(),
        PaymentStatus::Unknown
    );
}

/// Waiting on an unpaid invoice ends with a timeout, and the invoice stays open.
pub async fn waiting_times_out_without_payment(pair: &Pair<'_>) {
    let created = pair
        .receiver
        .create_invoice(request(1_000, 600))
        .await
        .unwrap();
    let waited = pair
        .receiver
        .wait_invoice(&created.payment_hash, Duration::from_millis(300))
        .await;
    assert!(
        matches!(waited, Err(LightningError::Timeout(_))),
        "{waited:?}"
    );
    assert_eq!(
        pair.receiver
            .invoice_status(&created.payment_hash)
            .await
            .unwrap(),
        InvoiceStatus::Open
    );
}

/// An expired invoice is refused before anything is sent.
pub async fn expired_invoice_is_refused(pair: &Pair<'_>) {
    let created = pair
        .receiver
        .create_invoice(request(1_000, 1))
        .await
        .unwrap();
    let invoice = gate402_bolt11::Invoice::parse(&created.bolt11).unwrap();
    while !invoice.is_expired_at(SystemTime::now()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match pair
        .payer
        .pay(&created.bolt11, 1_000, Duration::from_secs(10))
        .await
    {
        Err(PayError::InvoiceExpired(at)) => assert_eq!(at, invoice.expires_at()),
        other => panic!("expected InvoiceExpired, got {other:?}"),
    }
    assert_eq!(
        pair.payer
            .payment_status(&created.payment_hash)
            .await
            .unwrap(),
        PaymentStatus::Unknown,
        "nothing was sent"
    );
}

/// An invoice asked for with amount 0 encodes no amount; `pay` refuses it,
/// and `pay_amount` settles it for the amount the payer chose, which is
/// what the receiver reports. Paying again is refused.
pub async fn amountless_invoice_is_paid_with_the_amount_given(pair: &Pair<'_>) {
    let created = pair
        .receiver
        .create_invoice(request(0, 600))
        .await
        .expect("create an invoice without an amount");
    let invoice = gate402_bolt11::Invoice::parse(&created.bolt11).expect("valid BOLT11");
    assert_eq!(invoice.amount_msat(), None, "the invoice encodes no amount");
    assert_eq!(invoice.payment_hash(), created.payment_hash);
    assert_eq!(
        pair.receiver
            .invoice_status(&created.payment_hash)
            .await
            .unwrap(),
        InvoiceStatus::Open
    );
    match pair
        .payer
        .pay(&created.bolt11, 10_000, Duration::from_secs(10))
        .await
    {
        Err(PayError::NoAmount) => {}
        other => panic!("pay must refuse an invoice without an amount, got {other:?}"),
    }

    let waiter = pair
        .receiver
        .wait_invoice(&created.payment_hash, Duration::from_secs(60));
    let payment = pair.payer.pay_amount(
        &created.bolt11,
        CHOSEN_AMOUNT_MSAT,
        10_000,
        Duration::from_secs(60),
    );
    let (settled, paid) = tokio::join!(waiter, payment);
    let paid = paid.expect("payment with a chosen amount succeeds");
    assert_eq!(
        <[u8; 32]>::from(Sha256::digest(paid.preimage)),
        created.payment_hash,
        "preimage hashes to the payment hash"
    );
    assert_eq!(paid.amount_msat, CHOSEN_AMOUNT_MSAT);
    assert!(paid.fee_msat <= 10_000);
    match settled.expect("receiver sees the settlement") {
        InvoiceStatus::Settled {
            amount_msat,
            preimage,
        } => {
            assert_eq!(amount_msat, CHOSEN_AMOUNT_MSAT);
            if let Some(preimage) = preimage {
                assert_eq!(preimage, paid.preimage);
            }
        }
        other => panic!("expected settled, got {other:?}"),
    }
    match pair
        .receiver
        .invoice_status(&created.payment_hash)
        .await
        .unwrap()
    {
        InvoiceStatus::Settled { amount_msat, .. } => {
            assert_eq!(amount_msat, CHOSEN_AMOUNT_MSAT)
        }
        other => panic!("expected settled, got {other:?}"),
    }
    assert_eq!(
        pair.payer
            .payment_status(&created.payment_hash)
            .await
            .unwrap(),
        PaymentStatus::Succeeded(paid.clone())
    );
    match pair
        .payer
        .pay_amount(
            &created.bolt11,
            CHOSEN_AMOUNT_MSAT,
            10_000,
            Duration::from_secs(30),
        )
        .await
    {
        Err(PayError::AlreadyPaid(outcome)) => assert_eq!(outcome.preimage, paid.preimage),
        other => panic!("paying twice must be refused, got {other:?}"),
    }
}

/// `pay_amount` refuses, before sending anything, an invoice that asks for
/// an amount of its own and an amount of zero: the invoice stays open.
pub async fn pay_amount_refuses_an_invoice_with_an_amount(pair: &Pair<'_>) {
    let created = pair
        .receiver
        .create_invoice(request(2_000, 600))
        .await
        .unwrap();
    for amount_msat in [2_000, CHOSEN_AMOUNT_MSAT] {
        match pair
            .payer
            .pay_amount(
                &created.bolt11,
                amount_msat,
                10_000,
                Duration::from_secs(10),
            )
            .await
        {
            Err(PayError::InvoiceHasAmount(asked)) => assert_eq!(asked, 2_000),
            other => panic!("expected InvoiceHasAmount, got {other:?}"),
        }
    }
    match pair
        .payer
        .pay_amount(&created.bolt11, 0, 10_000, Duration::from_secs(10))
        .await
    {
        Err(PayError::ZeroAmount) => {}
        other => panic!("expected ZeroAmount, got {other:?}"),
    }
    // More than there is: refused as it is asked, before any node or
    // wallet is (the sandbox booked 1.8e19 msat as received).
    match pair
        .payer
        .pay_amount(&created.bolt11, u64::MAX, 10_000, Duration::from_secs(10))
        .await
    {
        Err(PayError::AmountTooLarge(u64::MAX)) => {}
        other => panic!("expected AmountTooLarge, got {other:?}"),
    }
    assert_eq!(
        pair.receiver
            .invoice_status(&created.payment_hash)
            .await
            .unwrap(),
        InvoiceStatus::Open,
        "nothing was paid"
    );
    assert_eq!(
        pair.payer
            .payment_status(&created.payment_hash)
            .await
            .unwrap(),
        PaymentStatus::Unknown,
        "nothing was sent"
    );
}

/// A receiver that cannot issue an invoice without an amount says so.
pub async fn amountless_invoice_is_unsupported(pair: &Pair<'_>) {
    match pair.receiver.create_invoice(request(0, 600)).await {
        Err(LightningError::Unsupported(_)) => {}
        other => panic!("expected Unsupported, got {other:?}"),
    }
}
