//! The RFC 9110 tokenizer: challenge lists and credentials. What parses
//! must format and parse back to the same challenges.
#![no_main]
use gate402_http_auth::{parse_challenges, parse_credentials};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = parse_credentials(text);
    if let Ok(list) = parse_challenges(text) {
        for challenge in &list {
            if let Ok(header) = challenge.to_header() {
                let again = parse_challenges(&header).expect("formatted challenge parses");
                assert_eq!(again.len(), 1);
                assert_eq!(again[0].params, challenge.params);
            }
        }
    }
});
