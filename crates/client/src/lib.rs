//! The paying side of a 402.
//!
//! [`Offer::from_parts`] reads every `WWW-Authenticate` value of a 402,
//! and its x402 `PAYMENT-REQUIRED` value, keeps the first usable L402
//! challenge, the first Lightning `Payment` charge and the Lightning entry
//! of the x402 offer, decodes the invoice itself and checks that each
//! agrees with it (the invoice is authoritative). After paying,
//! [`Offer::l402_authorization`] and [`Offer::payment_authorization`] give
//! the `Authorization` value to retry with, [`Offer::x402_signature`] the
//! `payment-signature` one.
//!
//! On top of that, [`Client`] is the auto-paying HTTP client of
//! `gate402 get`: it checks an offer against the [`Policy`] before paying
//! (amount, cap, network, expiry, [`Budget`]), pays with a [`Wallet`],
//! retries, keeps paid L402 tokens per origin and path for reuse and
//! records every payment and receipt in the [`Ledger`]. The same flow runs
//! inside a `reqwest-middleware` stack as [`PaymentMiddleware`], and for
//! paid MCP tools as [`Payer::call_tool`].
//!
//! Around the payment itself: it is written to the ledger as pending
//! before it is sent; requests for one endpoint pay one at a time (a file
//! lock next to the ledger, so across processes too); a payment whose
//! outcome is not known is resolved through the wallet, never sent again.
//! A paid request whose method is not idempotent carries an
//! `Idempotency-Key`, the same on every retry of it ([`RequestKey`]).
//!
//! With [`Payer::sessions`] on, a 402 offering the MPP session intent
//! ([`SessionOffer`]) opens a prepaid session instead: its deposit is paid
//! once, later requests to the service spend from it (across processes:
//! the session is kept in the ledger), it is topped up within the policy
//! when it runs out, and closed on request ([`Payer::close_session`]) or
//! once idle, with the unspent balance refunded to a return invoice of
//! the wallet ([`Refund`]).

pub mod body;
mod budget;
mod client;
mod error;
mod idempotency;
mod ledger;
mod mcp;
mod middleware;
mod payer;
mod policy;
mod session;
mod wallet;

pub use budget::{Budget, Limits, Window};
pub use client::Client;
pub use error::{FetchError, SessionError};
pub use idempotency::{RequestKey, IDEMPOTENCY_KEY};
pub use ledger::{
    refund_is_final, BeginError, CachedToken, EndpointLock, Ledger, LedgerError, PaymentEntry,
    PaymentState, PendingPayment, Refund, StoredSession, CLOSED_BY_THE_SERVER,
};
pub use mcp::{redirect_policy as mcp_redirect_policy, McpCallError, ToolCall};
pub use middleware::PaymentMiddleware;
pub use payer::{EarlierPayment, Fetched, Payer, Prefer};
pub use policy::{Policy, Refusal};
pub use session::{SessionOffer, SESSION_SCHEME, TOP_UP_SCHEME};
pub use wallet::{
    sandbox_payer_for, ReturnInvoice, Wallet, PAY_TIMEOUT, RETURN_INVOICE_EXPIRY_SECS,
};

use gate402_bolt11::{CheckError, Expect, Invoice};
use gate402_http_auth::{parse_challenges, Challenge};
use gate402_l402::caveat::{Caveat, SERVICES, USES_SUFFIX, VALID_UNTIL_SUFFIX};
use gate402_l402::{challenges_in, Identifier, L402Challenge, L402Credential, Scheme};
use gate402_mpp::lightning::{ChargeRequest, InvoiceMismatch, PreimagePayload, CHARGE, METHOD};
use gate402_mpp::{PaymentChallenge, PaymentCredential};
use gate402_x402::LightningOffer;

/// The `WWW-Authenticate` values of a 402 as text. A value with bytes
/// past ASCII (a `description` or `realm` in UTF-8, which HTTP carries
/// as opaque bytes) is read as UTF-8, not dropped with its challenges;
/// one that is not UTF-8 is dropped: its challenges could not be echoed
/// as they came (a JSON credential holds text), so paying them would
/// buy a credential the server refuses.
pub(crate) fn challenge_values(headers: &reqwest::header::HeaderMap) -> Vec<&str> {
    headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .collect()
}

/// The field a Payment challenge may name in its `header` parameter
/// (draft-httpauth-payment-01), so that `Authorization` stays the
/// request's own.
pub const PAYMENT_AUTHORIZATION: &str = "Payment-Authorization";

/// What a 402 offers: one invoice, and the schemes that accept its payment.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The L402 challenge, if offered.
    pub l402: Option<L402Challenge>,
    /// The MPP Lightning charge challenge, if offered.
    pub payment: Option<PaymentChallenge>,
    /// The Lightning entry of the x402 offer (`PAYMENT-REQUIRED`), if
    /// offered.
    pub x402: Option<LightningOffer>,
    /// The invoice, decoded and checked.
    pub invoice: Invoice,
    /// The invoice as sent.
    pub bolt11: String,
    /// Whether the L402 challenge came before the Payment one.
    pub l402_first: bool,
    /// The `WWW-Authenticate` values it was read from (kept with a pending
    /// payment, to answer them once it completes).
    pub challenges: Vec<String>,
    /// The `PAYMENT-REQUIRED` value it was read from, if any (kept the same
    /// way).
    pub payment_required: Option<String>,
}

/// Why a 402 cannot be paid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The header does not parse.
    #[error("malformed WWW-Authenticate: {0}")]
    Header(gate402_http_auth::Error),
    /// No usable L402 challenge, Lightning Payment challenge or x402
    /// Lightning offer: why each one offered was passed over (none when
    /// none was offered).
    #[error("{}", nothing_payable(.0))]
    NothingPayable(Vec<String>),
    /// The invoice does not decode.
    #[error("invoice: {0}")]
    Invoice(String),
    /// A challenge disagrees with the invoice.
    #[error("challenge disagrees with its invoice: {0}")]
    Mismatch(String),
}

// By hand rather than `#[from]`, which would also make the header error
// this one's source and have it printed twice in an error chain.
impl From<gate402_http_auth::Error> for OfferError {
    fn from(e: gate402_http_auth::Error) -> Self {
        OfferError::Header(e)
    }
}

fn nothing_payable(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "no L402 or Lightning Payment challenge, nor x402 Lightning offer, offered".into()
    } else {
        format!(
            "no usable L402 or Lightning Payment challenge, nor x402 Lightning offer: {}",
            reasons.join("; ")
        )
    }
}

impl Offer {
    /// Reads an offer from the `WWW-Authenticate` values of a 402.
    ///
    /// # Errors
    ///
    /// As [`Offer::from_parts`].
    pub fn from_challenges<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, OfferError> {
        Self::from_parts(values, None)
    }

    /// Reads an offer from the `WWW-Authenticate` values of a 402 and its
    /// `PAYMENT-REQUIRED` value (x402), if any.
    ///
    /// Reading is as lenient as the official SDKs (base64 in either
    /// alphabet, padded or not, in `request`, `opaque` and
    /// `PAYMENT-REQUIRED`); answering is strict: the challenge is echoed
    /// exactly as received, since its id is an HMAC over the strings as
    /// sent, and so is the x402 entry.
    ///
    /// # Errors
    ///
    /// [`OfferError`] when a header does not parse, nothing payable is
    /// offered, the invoice does not decode, or a challenge or the x402
    /// offer disagrees with the invoice (its payment hash, its amount, its
    /// network).
    pub fn from_parts<'a>(
        values: impl IntoIterator<Item = &'a str>,
        payment_required: Option<&str>,
    ) -> Result<Self, OfferError> {
        let mut list = Vec::new();
        let mut challenges = Vec::new();
        for value in values {
            list.extend(parse_challenges(value)?);
            challenges.push(value.to_owned());
        }
        let mut passed_over = Vec::new();
        let mut l402 = None;
        for found in challenges_in(&list) {
            match found {
                Ok((_, challenge)) => {
                    l402 = Some(challenge);
                    break;
                }
                Err(e) => passed_over.push(e.to_string()),
            }
        }
        let l402_first = list
            .iter()
            .find(|c| Scheme::from_name(&c.scheme).is_some() || c.is_scheme(gate402_mpp::SCHEME))
            .is_some_and(|c| Scheme::from_name(&c.scheme).is_some());
        let mut payment = None;
        for c in list.iter().filter(|c| c.is_scheme(gate402_mpp::SCHEME)) {
            match read_charge(c) {
                Ok(found) => {
                    payment = Some(found);
                    break;
                }
                Err(why) => passed_over.push(why),
            }
        }
        let x402 = match payment_required.map(gate402_x402::parse_required) {
            Some(Ok(found)) => Some(found),
            Some(Err(why)) => {
                passed_over.push(why.to_string());
                None
            }
            None => None,
        };
        let bolt11 = match (&l402, &payment, &x402) {
            (Some(l402), _, _) => l402.invoice.clone(),
            (None, Some((_, charge)), _) => charge.method_details.invoice.clone(),
            (None, None, Some(x402)) => x402.requirements.extra.invoice.clone(),
            (None, None, None) => return Err(OfferError::NothingPayable(passed_over)),
        };
        let invoice = Invoice::parse(&bolt11).map_err(|e| OfferError::Invoice(e.to_string()))?;
        if let Some(l402) = &l402 {
            let id = Identifier::from_bytes(l402.macaroon.identifier())
                .map_err(|e| OfferError::Mismatch(format!("L402 macaroon: {e}")))?;
            if id.payment_hash != invoice.payment_hash() {
                return Err(OfferError::Mismatch(
                    "the L402 macaroon is for another payment hash".into(),
                ));
            }
        }
        if let Some((_, charge)) = &payment {
            let backed = match charge.check_invoice() {
                // Refused before paying as any invoice without an amount
                // is (the policy's `NoAmount`), not as a 402 that cannot
                // be read: the charge names its hash and network, checked
                // here and by the policy.
                Err(InvoiceMismatch::Disagrees(CheckError::NoAmount))
                    if charge.payment_hash() == Some(invoice.payment_hash()) =>
                {
                    invoice.clone()
                }
                checked => checked.map_err(|e| OfferError::Mismatch(e.to_string()))?,
            };
            if backed.payment_hash() != invoice.payment_hash() {
                return Err(OfferError::Mismatch(
                    "the Payment challenge is for another invoice".into(),
                ));
            }
        }
        if let Some(x402) = &x402 {
            check_x402(x402, &invoice)?;
        }
        Ok(Self {
            l402,
            payment: payment.map(|(challenge, _)| challenge),
            x402,
            invoice,
            bolt11,
            l402_first,
            challenges,
            payment_required: payment_required.map(str::to_owned),
        })
    }

    /// Reads an offer from a 402's headers (every `WWW-Authenticate` line,
    /// and `PAYMENT-REQUIRED`).
    ///
    /// # Errors
    ///
    /// As [`Offer::from_parts`].
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Result<Self, OfferError> {
        let challenges = challenge_values(headers);
        Self::from_parts(
            challenges,
            headers
                .get(gate402_x402::PAYMENT_REQUIRED)
                .and_then(|v| v.to_str().ok()),
        )
    }

    /// The price in millisatoshis (every offer here has one).
    pub fn amount_msat(&self) -> Option<u64> {
        self.invoice.amount_msat()
    }

    /// `L402 <macaroon>:<preimage>`, if L402 was offered.
    pub fn l402_authorization(&self, preimage: &[u8; 32]) -> Option<String> {
        let l402 = self.l402.as_ref()?;
        Some(
            L402Credential {
                scheme: Scheme::L402,
                macaroons: vec![l402.macaroon.clone()],
                preimage: *preimage,
            }
            .to_authorization(),
        )
    }

    /// `Payment <credential>`, if MPP was offered.
    pub fn payment_authorization(&self, preimage: &[u8; 32]) -> Option<String> {
        let challenge = self.payment.as_ref()?;
        let credential =
            PaymentCredential::new(challenge.to_echo(), PreimagePayload::new(preimage));
        Some(gate402_mpp::credential::to_authorization(&credential))
    }

    /// The `payment-signature` value, if x402 was offered. It carries the
    /// preimage too, so the server need not ask its node.
    pub fn x402_signature(&self, preimage: &[u8; 32]) -> Option<String> {
        Some(self.x402.as_ref()?.signature(Some(preimage)))
    }

    /// Whether `scheme` was offered.
    pub fn offers(&self, scheme: Prefer) -> bool {
        match scheme {
            Prefer::L402 => self.l402.is_some(),
            Prefer::Mpp => self.payment.is_some(),
            Prefer::X402 => self.x402.is_some(),
        }
    }

    /// The field the Payment credential goes in: [`PAYMENT_AUTHORIZATION`]
    /// when the challenge's `header` names it, else `Authorization`.
    pub fn payment_field(&self) -> &'static str {
        match self.payment.as_ref().and_then(|c| c.header.as_deref()) {
            Some(header) if header.eq_ignore_ascii_case(PAYMENT_AUTHORIZATION) => {
                PAYMENT_AUTHORIZATION
            }
            _ => "Authorization",
        }
    }

    /// What the L402 token buys: its macaroon's `services` caveats (the
    /// last narrows the ones before; all are kept, so two tokens match only
    /// when they buy the same). `None` without L402 or without the caveat.
    pub fn l402_services(&self) -> Option<String> {
        let l402 = self.l402.as_ref()?;
        let services: Vec<String> = l402
            .macaroon
            .first_party_caveats()
            .filter_map(Caveat::parse)
            .filter(|c| c.condition == SERVICES)
            .map(|c| c.value)
            .collect();
        (!services.is_empty()).then(|| services.join(";"))
    }

    /// Whether the L402 token buys one request (a `<service>_uses`
    /// caveat), not a period: it is kept only until it has been used.
    pub fn l402_single_use(&self) -> bool {
        self.l402
            .iter()
            .flat_map(|l402| l402.macaroon.first_party_caveats())
            .filter_map(Caveat::parse)
            .any(|c| c.condition.ends_with(USES_SUFFIX))
    }

    /// What the L402 token is sold as for the service it names (its first
    /// `services` entry), and the terms its caveats state; `None` without
    /// an L402 challenge.
    pub fn l402_sale(&self) -> Option<(gate402_l402::caveat::Sale, gate402_l402::caveat::Terms)> {
        let l402 = self.l402.as_ref()?;
        let caveats = || l402.macaroon.first_party_caveats();
        let service = caveats()
            .filter_map(Caveat::parse)
            .find(|c| c.condition == SERVICES)
            .and_then(|c| gate402_l402::caveat::parse_services(&c.value).ok())
            .and_then(|services| services.into_iter().next())?
            .name;
        Some((
            gate402_l402::caveat::sold_as(caveats(), &service),
            gate402_l402::caveat::terms(caveats(), &service),
        ))
    }

    /// When the Payment challenge stops being payable (its `expires`,
    /// unix seconds), if it says.
    pub(crate) fn payment_expires_at(&self) -> Option<u64> {
        self.payment
            .as_ref()
            .and_then(|c| c.expires.as_deref())
            .and_then(gate402_mpp::parse_time)
            .map(|at| at.unix_timestamp().max(0) as u64)
    }

    /// The L402 token's `<service>_valid_until` caveats, as `(condition,
    /// value)`: when it stops working, if it says.
    pub(crate) fn l402_valid_until(&self) -> Vec<(String, String)> {
        self.l402
            .iter()
            .flat_map(|l402| l402.macaroon.first_party_caveats())
            .filter_map(Caveat::parse)
            .filter(|c| c.condition.ends_with(VALID_UNTIL_SUFFIX))
            .map(|c| (c.condition, c.value))
            .collect()
    }
}

/// Checks the x402 offer against the invoice paid: the same payment hash
/// (when another door's invoice is the one paid), the amount it states
/// (millisatoshis) exactly, and the network it names, if any.
fn check_x402(x402: &LightningOffer, invoice: &Invoice) -> Result<(), OfferError> {
    let mismatch = |why: String| OfferError::Mismatch(format!("the x402 offer: {why}"));
    let extra = &x402.requirements.extra;
    let own = Invoice::parse(&extra.invoice).map_err(|e| mismatch(format!("invoice: {e}")))?;
    let amount_msat = x402.requirements.amount.parse::<u64>().map_err(|_| {
        mismatch(format!(
            "amount {:?} is not a number of millisatoshis",
            x402.requirements.amount
        ))
    })?;
    let network = match extra.network.as_str() {
        "" => None,
        name => Some(
            name.parse()
                .map_err(|e| mismatch(format!("extra.network: {e}")))?,
        ),
    };
    own.check(&Expect {
        amount_msat: Some(amount_msat),
        payment_hash: Some(invoice.payment_hash()),
        network,
        ..Expect::default()
    })
    .map_err(|e| mismatch(e.to_string()))
}

/// Reads one `Payment` challenge as a Lightning charge, or says which
/// parameter keeps it from being one, and why.
fn read_charge(c: &Challenge) -> Result<(PaymentChallenge, ChargeRequest), String> {
    let challenge = gate402_mpp::challenge::from_challenge(c).map_err(|e| e.to_string())?;
    if challenge.method.as_str() != METHOD || challenge.intent.as_str() != CHARGE {
        return Err(format!(
            "Payment challenge with method {:?} and intent {:?} is not a Lightning charge",
            challenge.method.as_str(),
            challenge.intent.as_str()
        ));
    }
    if let Some(header) = &challenge.header {
        if !header.is_empty()
            && !header.eq_ignore_ascii_case("Authorization")
            && !header.eq_ignore_ascii_case(PAYMENT_AUTHORIZATION)
        {
            return Err(format!(
                "Payment challenge parameter header: {header:?} is neither Authorization nor {PAYMENT_AUTHORIZATION}"
            ));
        }
    }
    let request = decode_json_object(challenge.request.raw())
        .map_err(|why| format!("Payment challenge parameter request: {why}"))?;
    if let Some(opaque) = &challenge.opaque {
        decode_base64(opaque.raw())
            .map_err(|why| format!("Payment challenge parameter opaque: {why}"))?;
    }
    let charge = serde_json::from_value::<ChargeRequest>(request).map_err(|e| {
        format!("Payment challenge parameter request: not a Lightning charge request ({e})")
    })?;
    Ok((challenge, charge))
}

/// Base64 as the official MPP SDKs read it (the `mpp` crate's reader, as
/// mppx's): the URL-safe or the standard alphabet, with or without `=`.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    mpp::base64url_decode(text).map_err(|e| format!("not base64 ({e})"))
}

fn decode_json_object(text: &str) -> Result<serde_json::Value, String> {
    let bytes = decode_base64(text)?;
    match serde_json::from_slice(&bytes) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON ({e})")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use bitcoin::hashes::{sha256, Hash};
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use gate402_mpp::lightning::Network;
    use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};

    /// A regtest invoice of 2 sat for `preimage`, created now.
    pub(crate) fn invoice(preimage: [u8; 32], expiry_secs: u64) -> String {
        invoice_of(preimage, 2_000, expiry_secs)
    }

    /// A regtest invoice of `amount_msat` for `preimage`, created now.
    pub(crate) fn invoice_of(preimage: [u8; 32], amount_msat: u64, expiry_secs: u64) -> String {
        let secp = Secp256k1::new();
        let key = SecretKey::from_slice(&[0x44; 32]).unwrap();
        InvoiceBuilder::new(Currency::Regtest)
            .description("test".into())
            .payment_hash(sha256::Hash::hash(&preimage))
            .payment_secret(PaymentSecret([1; 32]))
            .current_timestamp()
            .min_final_cltv_expiry_delta(18)
            .amount_milli_satoshis(amount_msat)
            .expiry_time(std::time::Duration::from_secs(expiry_secs))
            .build_signed(|h| secp.sign_ecdsa_recoverable(h, &key))
            .unwrap()
            .to_string()
    }

    /// A Payment challenge for `bolt11` with `extra` parameters, `request`
    /// encoded by `encode`.
    pub(crate) fn payment_challenge(
        bolt11: &str,
        encode: fn(&[u8]) -> String,
        extra: &[(&str, &str)],
    ) -> String {
        let invoice = Invoice::parse(bolt11).unwrap();
        let request = ChargeRequest::new(
            2,
            Some("a description long enough to need padding?".into()),
            bolt11,
            &invoice.payment_hash(),
            Network::Regtest,
        );
        let request = encode(&serde_json::to_vec(&request).unwrap());
        let mut params = vec![
            ("id", "an-id"),
            ("realm", "test"),
            ("method", "lightning"),
            ("intent", "charge"),
            ("request", request.as_str()),
        ];
        params.extend_from_slice(extra);
        gate402_http_auth::format_challenge("Payment", params).unwrap()
    }

    /// A `PAYMENT-REQUIRED` value offering `bolt11` for `amount_msat`,
    /// honoured until `valid_until`.
    pub(crate) fn x402_required(bolt11: &str, amount_msat: u64, valid_until: u64) -> String {
        gate402_x402::encode(&gate402_x402::PaymentRequired {
            x402_version: gate402_x402::VERSION,
            error: None,
            resource: gate402_x402::ResourceInfo {
                url: "/x".into(),
                description: None,
            },
            accepts: vec![gate402_x402::Requirements {
                scheme: gate402_x402::SCHEME.into(),
                network: gate402_x402::LIGHTNING.into(),
                amount: amount_msat.to_string(),
                asset: "BTC".into(),
                pay_to: "02ab".into(),
                max_timeout_seconds: 600,
                extra: gate402_x402::LightningExtra {
                    payment_method: gate402_x402::LIGHTNING.into(),
                    invoice: bolt11.into(),
                    network: "regtest".into(),
                    valid_until,
                    binding: "b".into(),
                },
            }],
        })
    }

    /// An L402 challenge for `bolt11` whose macaroon carries `caveats`.
    pub(crate) fn l402_challenge(bolt11: &str, caveats: &[Caveat]) -> String {
        let hash = Invoice::parse(bolt11).unwrap().payment_hash();
        L402Challenge {
            macaroon: gate402_l402::mint(hash, "lsat", caveats).macaroon,
            invoice: bolt11.to_owned(),
        }
        .to_header(Scheme::L402)
    }

    #[test]
    fn base64_is_read_in_either_alphabet_padded_or_not() {
        // Bytes whose encodings differ in alphabet and need padding.
        let bytes = b"\xfb\xff\xbf{}";
        for text in [
            STANDARD.encode(bytes),
            URL_SAFE.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            STANDARD.encode(bytes).trim_end_matches('=').to_owned(),
        ] {
            assert_eq!(decode_base64(&text).unwrap(), bytes, "{text}");
        }
        assert!(decode_base64("%%%").unwrap_err().starts_with("not base64"));
        assert_eq!(decode_json_object("WzFd").unwrap_err(), "not a JSON object");
    }

    /// A challenge in UTF-8 past ASCII is read (it was dropped, and a
    /// session bought through L402 instead); one that is not UTF-8 is
    /// dropped, not paid and echoed altered.
    #[test]
    fn challenges_in_utf8_are_read_and_others_dropped() {
        let bolt11 = invoice([1; 32], 600);
        let header = |description: &[u8]| {
            let text = payment_challenge(
                &bolt11,
                |b| URL_SAFE_NO_PAD.encode(b),
                &[("description", "DESC")],
            );
            let mut bytes = text.into_bytes();
            let at = bytes.windows(4).position(|w| w == b"DESC").unwrap();
            bytes.splice(at..at + 4, description.iter().copied());
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::WWW_AUTHENTICATE,
                reqwest::header::HeaderValue::from_bytes(&bytes).unwrap(),
            );
            headers
        };
        let offer = Offer::from_headers(&header("größte – café".as_bytes())).unwrap();
        let payment = offer.payment.as_ref().unwrap();
        assert_eq!(payment.description.as_deref(), Some("größte – café"));
        assert!(Offer::from_headers(&header(b"caf\xc3\x28 \xff")).is_err());
    }

    #[test]
    fn a_padded_challenge_is_read_and_echoed_exactly_as_received() {
        let bolt11 = invoice([1; 32], 600);
        let opaque = STANDARD.encode(br#"{"k":"v?"}"#);
        let header = payment_challenge(
            &bolt11,
            |b| STANDARD.encode(b),
            &[("header", "Payment-Authorization"), ("opaque", &opaque)],
        );
        let offer = Offer::from_challenges([header.as_str()]).unwrap();
        let sent = offer.payment.as_ref().unwrap();
        assert!(sent.request.raw().ends_with('='), "{}", sent.request.raw());
        assert_eq!(offer.payment_field(), PAYMENT_AUTHORIZATION);
        let credential = gate402_mpp::credential::parse_authorization(
            &offer.payment_authorization(&[1; 32]).unwrap(),
        )
        .unwrap();
        let echo = &credential.challenge;
        assert_eq!(echo.request.raw(), sent.request.raw());
        assert_eq!(echo.opaque.as_ref().unwrap().raw(), opaque);
        assert_eq!(echo.header.as_deref(), Some("Payment-Authorization"));
        // Without `header`, the credential goes in Authorization.
        let plain = payment_challenge(&bolt11, |b| URL_SAFE_NO_PAD.encode(b), &[]);
        let offer = Offer::from_challenges([plain.as_str()]).unwrap();
        assert_eq!(offer.payment_field(), "Authorization");
    }

    #[test]
    fn a_challenge_passed_over_is_named_with_its_parameter() {
        let bolt11 = invoice([2; 32], 600);
        let bad_request = payment_challenge(&bolt11, |_| "%%%".into(), &[]);
        let bad_opaque =
            payment_challenge(&bolt11, |b| URL_SAFE_NO_PAD.encode(b), &[("opaque", "%%%")]);
        let other_method = payment_challenge(&bolt11, |b| URL_SAFE_NO_PAD.encode(b), &[])
            .replace("\"lightning\"", "\"tempo\"");
        for (header, reason) in [
            (
                bad_request,
                "Payment challenge parameter request: not base64",
            ),
            (bad_opaque, "Payment challenge parameter opaque: not base64"),
            (other_method, "method \"tempo\""),
        ] {
            let error = Offer::from_challenges([header.as_str()]).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("no usable L402"), "{text}");
            assert_eq!(text.matches(reason).count(), 1, "{text}");
        }
        // An L402 challenge next to a broken Payment one is still paid.
        let both = format!(
            "{}, {}",
            l402_challenge(&bolt11, &[]),
            payment_challenge(&bolt11, |_| "%%%".into(), &[])
        );
        let offer = Offer::from_challenges([both.as_str()]).unwrap();
        assert!(offer.l402.is_some() && offer.payment.is_none());
        assert_eq!(
            Offer::from_challenges(["Basic realm=\"x\""])
                .unwrap_err()
                .to_string(),
            "no L402 or Lightning Payment challenge, nor x402 Lightning offer, offered"
        );
    }

    #[test]
    fn an_x402_offer_is_read_beside_the_challenges_and_checked_against_the_invoice() {
        let bolt11 = invoice([3; 32], 600);
        let alone = x402_required(&bolt11, 2_000, 4_000_000_000);
        let offer = Offer::from_parts([], Some(&alone)).unwrap();
        assert!(offer.l402.is_none() && offer.payment.is_none());
        assert_eq!(offer.bolt11, bolt11);
        assert_eq!(offer.amount_msat(), Some(2_000));
        assert_eq!(offer.payment_required.as_deref(), Some(alone.as_str()));
        let paid = gate402_x402::parse_signature(&offer.x402_signature(&[3; 32]).unwrap()).unwrap();
        assert_eq!(paid.payload.invoice, bolt11);
        assert_eq!(paid.payload.preimage, Some(hex::encode([3; 32])));
        assert!(offer.offers(Prefer::X402) && !offer.offers(Prefer::L402));

        // Beside an L402 challenge for the same invoice: both are kept.
        let l402 = l402_challenge(&bolt11, &[]);
        let both = Offer::from_parts([l402.as_str()], Some(&alone)).unwrap();
        assert!(both.l402.is_some() && both.x402.is_some());

        let refused = |value: &str| {
            Offer::from_parts([l402.as_str()], Some(value))
                .unwrap_err()
                .to_string()
        };
        let other_invoice = x402_required(&invoice([4; 32], 600), 2_000, 4_000_000_000);
        assert!(
            refused(&other_invoice).contains("the x402 offer: invoice payment hash"),
            "{}",
            refused(&other_invoice)
        );
        let cheaper = x402_required(&bolt11, 1_000, 4_000_000_000);
        assert!(
            refused(&cheaper)
                .ends_with("the x402 offer: invoice is for 2000 msat, expected 1000 msat"),
            "{}",
            refused(&cheaper)
        );
        // An offer that cannot be read is passed over, and named.
        let error = Offer::from_parts([], Some("%%%")).unwrap_err().to_string();
        assert_eq!(
            error,
            "no usable L402 or Lightning Payment challenge, nor x402 Lightning offer: PAYMENT-REQUIRED is not base64"
        );
        let offer = Offer::from_parts([l402.as_str()], Some("%%%")).unwrap();
        assert!(offer.x402.is_none());
    }
}
