//! Macaroon decoding, V1 and V2, binary and base64. A decoded macaroon must
//! re-encode to V2 and decode to itself.
#![no_main]
use gate402_l402::{Macaroon, MacaroonFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(macaroon) = Macaroon::from_bytes(data) {
        let again = Macaroon::from_bytes(&macaroon.to_bytes()).expect("re-encoded macaroon decodes");
        assert_eq!(again.identifier(), macaroon.identifier());
        assert_eq!(again.caveats(), macaroon.caveats());
        if macaroon.format() == MacaroonFormat::V2 {
            assert_eq!(again, macaroon);
        }
        let _ = macaroon.verify_signature(b"key");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Macaroon::from_base64(text);
    }
});
