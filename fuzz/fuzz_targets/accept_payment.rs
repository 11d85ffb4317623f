//! `Accept-Payment` values.
#![no_main]
use gate402_mpp::accept::AcceptPayment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(accept) = AcceptPayment::parse(text) {
        let _ = accept.accepts("lightning", "charge");
    }
});
