//! `Authorization: Payment …` credentials, then Lightning verification.
#![no_main]
use gate402_mpp::challenge::ChallengeKey;
use gate402_mpp::credential::{parse_authorization, to_authorization};
use gate402_mpp::lightning::Network;
use gate402_mpp::verify::{verify_lightning_charge, ExpectedCharge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(credential) = parse_authorization(text) {
        parse_authorization(&to_authorization(&credential)).expect("formatted credential parses");
        let key = ChallengeKey::new("fuzzing-secret-of-at-least-32-bytes").unwrap();
        let expected = ExpectedCharge { realm: "r", amount_sats: 1, network: Network::Regtest, body: None, scope: Some("s"), arrived_in: None };
        let _ = verify_lightning_charge(&key, &credential, &expected, time::OffsetDateTime::UNIX_EPOCH);
    }
});
