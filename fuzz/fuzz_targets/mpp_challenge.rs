//! `WWW-Authenticate: Payment …` challenges and their requests.
#![no_main]
use gate402_mpp::challenge::{decode_request, parse_payment_challenges, to_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(list) = parse_payment_challenges(text) {
        for challenge in &list {
            let _ = decode_request(challenge);
            if let Ok(header) = to_header(challenge) {
                let again = parse_payment_challenges(&header).expect("formatted challenge parses");
                assert_eq!(again[0].id, challenge.id);
                assert_eq!(again[0].request, challenge.request);
            }
        }
    }
});
