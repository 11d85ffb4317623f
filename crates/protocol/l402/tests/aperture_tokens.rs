//! Tokens as deployed Aperture gateways mint them, decoded here.
//!
//! The two macaroons are public test data of Lightning Labs' JavaScript and
//! Go clients (Loop's swap-server token and a `meme` service token).

use gate402_l402::caveat::{self, parse_services, Caveat, Service};
use gate402_l402::{Identifier, L402Credential, Macaroon, MacaroonFormat, Scheme};
use sha2::{Digest, Sha256};

const LOOP_TOKEN: &str = "AgEEbHNhdAJCAADXNkGQ+faRDM3Ey4M6YGALyTwqnLqDTNVgCBckgnpSZ4vd9z8+Ndr1+zLD6i/AmJIbDVuEAvBwgZBezq2hcys5AAIPc2VydmljZXM9bG9vcDowAAISbG9vcF9jYXBhYmlsaXRpZXM9AAAGIDPTqKe/hckryPR6hINTa7Dg8/bbxqVqq02/eBMpmt7Z";
const MEME_TOKEN: &str = "AgEEbHNhdAJCAAAwpHpumws6ufQoDwiTLNcge0QPUIWA0+tVY+tKPYAJ/zSfmEGlIpNm3VzxuzCqLhEp5KGiyPLUM9L+kcB7uzS+AAIPc2VydmljZXM9bWVtZTowAAISbWVtZV9jYXBhYmlsaXRpZXM9AAAGILA1VCEIExukt4nG+XR9tX8WJ2BVMiHG3UNt1uYJ+NRD";

#[test]
fn loop_token() {
    assert!(LOOP_TOKEN.starts_with("AgEEbHNhdA"));
    let mac = Macaroon::from_base64(LOOP_TOKEN).unwrap();
    assert_eq!(mac.format(), MacaroonFormat::V2);
    assert_eq!(mac.location(), "lsat");
    let id = Identifier::from_bytes(mac.identifier()).unwrap();
    assert_eq!(id.version, 0);
    assert_eq!(
        hex::encode(id.payment_hash),
        "d7364190f9f6910ccdc4cb833a60600bc93c2a9cba834cd560081724827a5267"
    );
    // Loop derives its swap user id from the token id.
    assert_eq!(
        hex::encode(id.token_id),
        "8bddf73f3e35daf5fb32c3ea2fc098921b0d5b8402f07081905eceada1732b39"
    );
    let caveats: Vec<Caveat> = mac
        .first_party_caveats()
        .filter_map(Caveat::parse)
        .collect();
    assert_eq!(
        caveats,
        [
            Caveat::new("services", "loop:0"),
            Caveat::new("loop_capabilities", "")
        ]
    );
    assert_eq!(
        parse_services(&caveats[0].value).unwrap(),
        [Service::new("loop")]
    );
    // Byte-identical re-encoding: our V2 writer is go-macaroon's.
    assert_eq!(mac.to_base64(), LOOP_TOKEN);
}

#[test]
fn meme_token_in_an_authorization_header() {
    let header = format!(
        "LSAT {MEME_TOKEN}:2ca931a1c36b48f54948b898a271a53ed91ff7d0081939a5fa511249e81cba5c"
    );
    let credential = L402Credential::from_authorization(&header).unwrap();
    assert_eq!(credential.scheme, Scheme::Lsat);
    let id = credential.identifier().unwrap();
    assert_eq!(
        hex::encode(id.payment_hash),
        "30a47a6e9b0b3ab9f4280f08932cd7207b440f508580d3eb5563eb4a3d8009ff"
    );
    // The published preimage is a placeholder: it does not hash to the
    // payment hash, which is exactly what verification must notice.
    let hash: [u8; 32] = Sha256::digest(credential.preimage).into();
    assert_ne!(hash, id.payment_hash);
    assert_eq!(credential.token().to_base64(), MEME_TOKEN);

    let caveats = || credential.token().first_party_caveats();
    assert!(caveat::check_request(caveats(), &caveat::RequestContext::new("meme"), &[]).is_ok());
    assert!(caveat::check_request(caveats(), &caveat::RequestContext::new("loop"), &[]).is_err());
}
