//! `WWW-Authenticate: L402 …` challenges.
#![no_main]
use gate402_http_auth::parse_challenges;
use gate402_l402::challenges_in;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(list) = parse_challenges(text) {
        for (scheme, challenge) in challenges_in(&list).flatten() {
            let header = challenge.to_header(scheme);
            let again = parse_challenges(&header).expect("formatted challenge parses");
            assert_eq!(challenges_in(&again).count(), 1);
        }
    }
});
