//! `Payment-Receipt` values and strict base64url.
#![no_main]
use gate402_mpp::{base64url, receipt};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(bytes) = base64url::decode(text) {
        assert_eq!(base64url::decode(&base64url::encode(&bytes)).unwrap(), bytes);
    }
    let _ = receipt::decode_json(text);
    if let Ok(parsed) = receipt::parse(text) {
        receipt::parse(&receipt::to_header(&parsed)).expect("formatted receipt parses");
    }
});
