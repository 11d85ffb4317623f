//! BOLT11 invoices.
#![no_main]
use gate402_bolt11::{Expect, Invoice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(invoice) = Invoice::parse(text) {
        let _ = invoice.check(&Expect::default());
        let _ = invoice.description();
        let _ = invoice.payee();
        Invoice::parse(&invoice.to_string()).expect("re-encoded invoice parses");
    }
});
