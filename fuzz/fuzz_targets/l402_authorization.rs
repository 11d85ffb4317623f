//! `Authorization: L402 …` and the gRPC metadata form, then verification.
#![no_main]
use gate402_l402::caveat::RequestContext;
use gate402_l402::{verify, L402Credential, RootKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let parsed = [
        L402Credential::from_authorization(text),
        L402Credential::from_grpc_metadata(text),
    ];
    for credential in parsed.into_iter().flatten() {
        let again = L402Credential::from_authorization(&credential.to_authorization())
            .expect("formatted credential parses");
        assert_eq!(again.preimage, credential.preimage);
        let _ = credential.identifier();
        let _ = verify(&credential, &RootKey([1; 32]), &RequestContext::new("svc"), &[]);
    }
});
