//! The one place that finds payment credentials on a request and strips
//! them, so that a credential never reaches the upstream (or its logs)
//! whichever header carried it.
//!
//! Credentials are read from `Authorization`, `Payment-Authorization`
//! (the field the Payment scheme's `header` parameter selects) and
//! `payment-signature` (x402's; version 1's `X-PAYMENT`, and the
//! `Grpc-Metadata-Macaroon` and `Macaroon` fields Aperture reads, are
//! stripped, never read). A value of `Authorization` in another
//! scheme (`Bearer`, `Basic`: an API key of the upstream's own) is left for
//! the upstream; `Payment-Authorization` and `payment-signature` are ours
//! whatever they hold.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The largest credential read: a genuine L402 token or MPP credential is
/// a few hundred bytes; a bigger one is refused before any parsing.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// The `Payment-Authorization` field.
pub const PAYMENT_AUTHORIZATION: HeaderName = HeaderName::from_static("payment-authorization");

/// Its name as a challenge's `header` parameter spells it.
pub const PAYMENT_AUTHORIZATION_NAME: &str = "Payment-Authorization";

/// x402's `payment-signature` field.
pub const PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static(gate402_x402::PAYMENT_SIGNATURE);

/// x402 version 1's payment field: never accepted here, never forwarded.
pub const X_PAYMENT: HeaderName = HeaderName::from_static("x-payment");

/// The fields Aperture also reads an L402 token from (gRPC metadata, a
/// hex macaroon whose caveats may carry the preimage), and the gRPC
/// metadata grpc-gateway turns into `authorization`: never accepted
/// here, never forwarded.
pub const MACAROON_FIELDS: [HeaderName; 3] = [
    GRPC_METADATA_MACAROON,
    MACAROON,
    GRPC_METADATA_AUTHORIZATION,
];

const GRPC_METADATA_MACAROON: HeaderName = HeaderName::from_static("grpc-metadata-macaroon");
const MACAROON: HeaderName = HeaderName::from_static("macaroon");
const GRPC_METADATA_AUTHORIZATION: HeaderName =
    HeaderName::from_static("grpc-metadata-authorization");

/// Every field a credential is read from or stripped from.
static CREDENTIAL_FIELDS: [HeaderName; 7] = [
    AUTHORIZATION,
    PAYMENT_AUTHORIZATION,
    X_PAYMENT,
    PAYMENT_SIGNATURE,
    GRPC_METADATA_MACAROON,
    MACAROON,
    GRPC_METADATA_AUTHORIZATION,
];

/// The scheme of a presented credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialScheme {
    /// `L402` or its old name `LSAT`.
    L402,
    /// `Payment`, the MPP scheme.
    Payment,
    /// x402's payment (base64 JSON in `payment-signature`).
    X402,
}

impl CredentialScheme {
    /// Its name as receipts, metrics and traces give it: `L402`,
    /// `Payment` or `x402`.
    pub fn name(self) -> &'static str {
        match self {
            CredentialScheme::L402 => "L402",
            CredentialScheme::Payment => "Payment",
            CredentialScheme::X402 => "x402",
        }
    }
}

/// The header a credential came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialField {
    /// `Authorization`.
    Authorization,
    /// `Payment-Authorization`.
    PaymentAuthorization,
    /// `payment-signature`.
    PaymentSignature,
}

/// A payment credential taken off a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Its scheme.
    pub scheme: CredentialScheme,
    /// The whole field value, scheme included (`L402 <mac>:<preimage>`).
    pub value: String,
    /// Where it was.
    pub field: CredentialField,
}

/// Why the credentials on a request cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Over [`MAX_CREDENTIAL_BYTES`].
    #[error("the credential is {0} bytes; the limit is {MAX_CREDENTIAL_BYTES}")]
    TooLarge(usize),
    /// More than one payment credential: which one pays is ambiguous.
    #[error("the request carries more than one payment credential")]
    Several,
    /// An `Authorization` value that holds a payment credential among
    /// other text (`Bearer key, L402 …`, `L402<token>` with no space): an
    /// upstream that splits the value at its commas, or searches it for
    /// the scheme, would read it.
    #[error("Authorization holds a payment credential among other text; send it alone, as `L402 <token>` or `Payment <credential>`")]
    Listed,
    /// `Payment-Authorization` holding something that is no payment
    /// credential, or bytes that are not text.
    #[error("Payment-Authorization does not hold an L402 or Payment credential")]
    NotACredential,
    /// A payment credential, in the field named, with bytes that are not
    /// visible ASCII.
    #[error("the payment credential in {0} holds bytes that are not text")]
    NotText(&'static str),
}

impl CredentialField {
    /// The field's name, as sent.
    pub fn name(self) -> &'static str {
        match self {
            Self::Authorization => "Authorization",
            Self::PaymentAuthorization => "Payment-Authorization",
            Self::PaymentSignature => "payment-signature",
        }
    }
}

fn scheme_of(value: &[u8]) -> Option<CredentialScheme> {
    let end = value
        .iter()
        .position(|b| is_space(*b))
        .unwrap_or(value.len());
    let word = &value[..end];
    if word.eq_ignore_ascii_case(b"L402") || word.eq_ignore_ascii_case(b"LSAT") {
        Some(CredentialScheme::L402)
    } else if word.eq_ignore_ascii_case(b"Payment") {
        Some(CredentialScheme::Payment)
    } else {
        None
    }
}

/// Removes every payment credential from `headers` and returns the one
/// presented, if any. Called on every request the paywall sees, priced or
/// not, before anything else reads the headers.
///
/// # Errors
///
/// A [`CredentialError`] when the credentials cannot be read; they are
/// stripped all the same.
pub fn take(headers: &mut HeaderMap) -> Result<Option<Presented>, CredentialError> {
    // One pass over the names says which fields are there; each is then
    // looked up only if it is (a lookup hashes the name).
    let present = crate::fields::present(headers, &CREDENTIAL_FIELDS);
    if !present.any() {
        return Ok(None);
    }
    // Stripped, never read, in any spelling; the others are read below.
    for name in &MACAROON_FIELDS {
        if present.has(name) {
            headers.remove(name);
        }
    }
    if present.underscored() {
        crate::fields::remove_underscored(headers, &CREDENTIAL_FIELDS);
    }
    let mut found: Vec<(CredentialScheme, HeaderValue, CredentialField)> = Vec::new();
    let mut error = None;
    if present.has(&AUTHORIZATION) {
        let mut kept = Vec::new();
        for value in headers.get_all(AUTHORIZATION) {
            let trimmed = trim_start(value.as_bytes());
            match scheme_of(trimmed) {
                Some(scheme) => found.push((scheme, value.clone(), CredentialField::Authorization)),
                None if lists_credential(trimmed) => error = Some(CredentialError::Listed),
                None => kept.push(value.clone()),
            }
        }
        if !found.is_empty() || error.is_some() {
            headers.remove(AUTHORIZATION);
            for value in kept {
                headers.append(AUTHORIZATION, value);
            }
        }
    }
    if present.has(&PAYMENT_AUTHORIZATION) {
        for value in headers.remove_all(PAYMENT_AUTHORIZATION) {
            match scheme_of(trim_start(value.as_bytes())) {
                Some(scheme) => found.push((scheme, value, CredentialField::PaymentAuthorization)),
                None => error = Some(CredentialError::NotACredential),
            }
        }
    }
    if present.has(&X_PAYMENT) {
        headers.remove(X_PAYMENT);
    }
    if present.has(&PAYMENT_SIGNATURE) {
        for value in headers.remove_all(PAYMENT_SIGNATURE) {
            found.push((
                CredentialScheme::X402,
                value,
                CredentialField::PaymentSignature,
            ));
        }
    }
    if let Some(error) = error {
        return Err(error);
    }
    let Some((scheme, value, field)) = found.pop() else {
        return Ok(None);
    };
    if !found.is_empty() {
        return Err(CredentialError::Several);
    }
    if value.len() > MAX_CREDENTIAL_BYTES {
        return Err(CredentialError::TooLarge(value.len()));
    }
    let value = value
        .to_str()
        .map_err(|_| CredentialError::NotText(field.name()))?
        .trim()
        .to_owned();
    Ok(Some(Presented {
        scheme,
        value,
        field,
    }))
}

/// Whether a value holds a payment credential other than as its whole
/// value: an element of a comma list that starts with a scheme (`Bearer
/// key, L402 mac:preimage`), which an upstream splitting the value at its
/// commas reads; or a scheme word anywhere, whatever comes before it,
/// followed by separators (spaces, tabs, `=`, quotes; `:` after `L402`)
/// and a credential-shaped token (`Bearer key; L402 …`, `Bearer key|L402 …`,
/// `Bearer x,L402=…`, `Digest x="L402 …"`), which one searching the value
/// for the scheme word (as Aperture does) reads: a token with a `:` after
/// `L402` or `LSAT`, a base64 run of 16 or more after `Payment`; or a
/// scheme word with no separator at all, or any marks or `%XX` escapes
/// (`Payment: eyJ…`, `L402.`, `Payment%20`), before a whole L402 token
/// (`<macaroon>:<preimage>`) or a base64url JSON credential (`eyJ…`).
fn lists_credential(value: &[u8]) -> bool {
    // A whole L402 token with no scheme word (`<macaroon>:<preimage>`),
    // its macaroon a version 2 one (`\x02` reads `Ag`): not an API's own
    // `key:signature`.
    let whole = value.trim_ascii_end();
    if whole.starts_with(b"Ag") && is_l402_token(whole) || is_bare_payment_credential(whole) {
        return true;
    }
    let listed = value
        .split(|b| *b == b',')
        .skip(1)
        .any(|element| scheme_of(trim_start(element)).is_some());
    if listed {
        return true;
    }
    let lower = value.to_ascii_lowercase();
    [&b"l402"[..], b"lsat", b"payment"].iter().any(|word| {
        (0..lower.len()).any(|at| {
            let Some(rest) = lower[at..].strip_prefix(*word) else {
                return false;
            };
            let payment = *word == b"payment";
            let gap = rest
                .iter()
                .take_while(|b| is_separator(**b) || (!payment && **b == b':'))
                .count();
            // After separators, a credential-shaped token.
            let token = word_at(&value[at + word.len() + gap..]);
            let shaped = gap > 0
                && if payment {
                    token.len() >= 16 && token.iter().all(|b| is_base64(*b))
                } else {
                    token.contains(&b':')
                };
            // After nothing, or any other marks or escapes, a whole
            // credential (`Payment<eyJ…>`, `Payment: eyJ…`,
            // `L402.<mac>:<preimage>`, `Payment%20eyJ…`): an upstream may
            // read past them.
            shaped || {
                let rest = &value[at + word.len()..];
                let token = word_at(&rest[loose_gap(rest)..]);
                if payment {
                    is_payment_token(token)
                } else {
                    is_l402_token(token)
                }
            }
        })
    })
}

/// The bytes up to the first space, `,`, `;` or `"`.
fn word_at(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .position(|b| b.is_ascii_whitespace() || matches!(b, b',' | b';' | b'"'))
        .unwrap_or(bytes.len());
    &bytes[..end]
}

/// How many bytes at the start of `bytes` are marks, spaces, controls,
/// non-ASCII or `%XX` escapes: anything but a letter or digit.
fn loose_gap(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        if b == b'%'
            && bytes.len() >= at + 3
            && bytes[at + 1..at + 3].iter().all(u8::is_ascii_hexdigit)
        {
            at += 3;
        } else if b.is_ascii_alphanumeric() {
            break;
        } else {
            at += 1;
        }
    }
    at
}

/// A whole MPP credential: base64url JSON (`{"` reads `eyJ`).
fn is_payment_token(token: &[u8]) -> bool {
    token.starts_with(b"eyJ") && token.len() >= 16 && token.iter().all(|b| is_base64(*b))
}

/// A whole MPP credential with no scheme word: base64 JSON (either
/// alphabet, padded or not) of an object with a `challenge`. Decoded
/// rather than judged by its shape, since an API's own key may be base64
/// JSON too; a JWT's dots keep it from being decoded at all.
fn is_bare_payment_credential(token: &[u8]) -> bool {
    if !is_payment_token(token) {
        return false;
    }
    let text: String = token
        .iter()
        .filter(|b| **b != b'=')
        .map(|b| match b {
            b'+' => '-',
            b'/' => '_',
            b => char::from(*b),
        })
        .collect();
    gate402_mpp::base64url::decode_json_object(&text)
        .is_ok_and(|object| object.get("challenge").is_some())
}

/// What may stand between a scheme word and its credential for an
/// upstream that searches the value for the word: spaces, `=`, quotes,
/// and the marks that end a word (`L402,…`, `LSAT;…`, `Payment|…`).
fn is_separator(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'=' | b'"' | b'\'' | b',' | b';' | b'|' | b'(' | b'[' | b'{' | b'<' | b'&'
    )
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'=')
}

/// `<macaroon, base64>:<preimage, 64 hex digits>`, the whole of an L402
/// token.
fn is_l402_token(token: &[u8]) -> bool {
    token.len() > 65
        && token[token.len() - 65] == b':'
        && token[token.len() - 64..].iter().all(u8::is_ascii_hexdigit)
        && token[..token.len() - 65].iter().all(|b| is_base64(*b))
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !is_space(*b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Whether `byte` separates words for some reader of the field: HTTP's
/// space and tab, and what an upstream decoding the field as Latin-1 and
/// splitting at whitespace (Python's `str.split`, Werkzeug) also takes for
/// a space: the no-break space and NEL.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | 0x85 | 0xa0)
}

/// Removes every value of a field.
trait RemoveAll {
    fn remove_all(&mut self, name: HeaderName) -> Vec<HeaderValue>;
}

impl RemoveAll for HeaderMap {
    fn remove_all(&mut self, name: HeaderName) -> Vec<HeaderValue> {
        match self.entry(name) {
            http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
            http::header::Entry::Vacant(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_payment_credential_is_stripped_and_api_keys_kept() {
        let mut h = headers(&[("payment-authorization", "L402 mac:pre")]);
        let presented = take(&mut h).unwrap().unwrap();
        assert_eq!(presented.scheme, CredentialScheme::L402);
        assert_eq!(presented.field, CredentialField::PaymentAuthorization);
        assert!(h.is_empty());

        let mut h = headers(&[
            ("authorization", "Bearer key"),
            ("payment-authorization", "Payment abc"),
        ]);
        let presented = take(&mut h).unwrap().unwrap();
        assert_eq!(presented.scheme, CredentialScheme::Payment);
        assert_eq!(h.get_all(AUTHORIZATION).iter().count(), 1);
        assert_eq!(h[AUTHORIZATION], "Bearer key");

        let mut h = headers(&[
            ("authorization", "Bearer key"),
            ("authorization", "lsat mac:pre"),
        ]);
        assert_eq!(take(&mut h).unwrap().unwrap().value, "lsat mac:pre");
        assert_eq!(h.get_all(AUTHORIZATION).iter().count(), 1);

        let mut h = headers(&[("authorization", "  Payment  abc ")]);
        assert_eq!(take(&mut h).unwrap().unwrap().value, "Payment  abc");
        assert!(h.is_empty());

        // A no-break space (or NEL) for the space: an upstream decoding
        // Latin-1 and splitting at whitespace reads an L402 credential.
        for space in [0xa0u8, 0x85] {
            let mut value = b"L402".to_vec();
            value.push(space);
            value.extend_from_slice(b"mac:pre");
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_bytes(&value).unwrap());
            let _ = take(&mut h);
            assert!(h.is_empty(), "{space:#x}: {h:?}");
        }
    }

    #[test]
    fn ambiguous_or_oversized_credentials_are_refused_and_stripped() {
        let mut h = headers(&[
            ("authorization", "L402 a:b"),
            ("payment-authorization", "Payment c"),
        ]);
        assert_eq!(take(&mut h), Err(CredentialError::Several));
        assert!(h.is_empty());

        let mut h = headers(&[("payment-authorization", "Bearer x")]);
        assert_eq!(take(&mut h), Err(CredentialError::NotACredential));

        // Not text: named by the field it came in.
        for (field, name) in [
            (AUTHORIZATION, "Authorization"),
            (PAYMENT_AUTHORIZATION, "Payment-Authorization"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                field,
                HeaderValue::from_bytes(b"L402 \xff\xfe:\xff").unwrap(),
            );
            assert_eq!(take(&mut h), Err(CredentialError::NotText(name)));
            assert!(h.is_empty());
        }
        assert!(h.is_empty());

        let big = format!("Payment {}", "a".repeat(MAX_CREDENTIAL_BYTES));
        let mut h = headers(&[("authorization", &big)]);
        assert_eq!(take(&mut h), Err(CredentialError::TooLarge(big.len())));
        assert!(h.is_empty());

        let mut h = headers(&[("authorization", "Basic x")]);
        assert_eq!(take(&mut h), Ok(None));
        assert_eq!(h.len(), 1);

        // Listed after another credential, where an upstream splitting the
        // value at commas would find it.
        for listed in [
            "Bearer x, L402 mac:pre",
            "Basic eA==,Payment abc",
            "Bearer x,\tlsat mac:pre",
            "Bearer x, y, payment abc",
            // No space after the scheme, or another separator.
            "Bearer x,L402=mac:pre",
            "Bearer x; lsat=\"mac:pre\"",
            "Bearer x L402:mac:pre",
            "Basic eA==; Payment=eyJjaGFsbGVuZ2UiOnt9fQ",
            &format!("L402AgELbWFjYXJvb24=:{}", "ab".repeat(32)),
            &format!("lsatAgELbWFjYXJvb24:{}", "0F".repeat(32)),
            "PaymenteyJjaGFsbGVuZ2UiOnt9fQ",
            "Bearer k,PaymenteyJjaGFsbGVuZ2UiOnt9fQ",
            // A mark that ends the scheme word where a space would.
            "L402,mac:pre",
            "LSAT;mac:pre",
            "l402|mac:pre",
            "Payment,eyJjaGFsbGVuZ2UiOnt9fQ",
            "Payment;eyJjaGFsbGVuZ2UiOnt9fQ",
            "Bearer x (L402 mac:pre)",
            // Any marks or escapes before a whole credential.
            "Payment: eyJjaGFsbGVuZ2UiOnt9fQ",
            "Payment:eyJjaGFsbGVuZ2UiOnt9fQ",
            "Payment.eyJjaGFsbGVuZ2UiOnt9fQ",
            "Payment/eyJjaGFsbGVuZ2UiOnt9fQ",
            "Payment@eyJjaGFsbGVuZ2UiOnt9fQ",
            "Payment\\eyJjaGFsbGVuZ2UiOnt9fQ",
            "Payment*#!~eyJjaGFsbGVuZ2UiOnt9fQ",
            "Bearer k Payment.eyJjaGFsbGVuZ2UiOnt9fQ",
            "Bearer k+Payment+eyJjaGFsbGVuZ2UiOnt9fQ",
            "Bearer k%20Payment%20eyJjaGFsbGVuZ2UiOnt9fQ",
            &format!("L402.AgELbWFjYXJvb24=:{}", "ab".repeat(32)),
            &format!("Bearer k%20LSAT%3AAgELbWFjYXJvb24=:{}", "ab".repeat(32)),
            // A whole token with no scheme word.
            &format!("AgELbWFjYXJvb24=:{}", "ab".repeat(32)),
            // A whole MPP credential with no scheme word, in either
            // alphabet, padded or not.
            "eyJjaGFsbGVuZ2UiOnt9fQ",
            "eyJjaGFsbGVuZ2UiOnt9fQ==",
            "eyJwYXlsb2FkIjp7InByZWltYWdlIjoiPz8_In0sImNoYWxsZW5nZSI6e319",
            "eyJwYXlsb2FkIjp7InByZWltYWdlIjoiPz8/In0sImNoYWxsZW5nZSI6e319",
        ] {
            let mut h = headers(&[("authorization", listed), ("accept", "*/*")]);
            assert_eq!(take(&mut h), Err(CredentialError::Listed), "{listed}");
            assert!(h.get(AUTHORIZATION).is_none(), "{listed}");
            assert_eq!(h.len(), 1);
        }
        // An API key of the upstream's own that merely contains a scheme
        // word is its business.
        for key in [
            "Bearer a,b=c, Paymentx y",
            "Bearer payment_service_key_0123456789abcdef",
            "Bearer l402abc:def",
            "Bearer payment:0123456789abcdefgh",
            "Bearer payment;session=abc",
            "Token payment.v1.abcdefghijklmnopqrst",
            "Bearer l402.docs:0123",
            // An API's own key and signature, no scheme.
            &format!("myapikey0123:{}", "ab".repeat(32)),
            // An API's own key of base64 JSON, and a bare JWT.
            "eyJrZXkiOiJhYmMiLCJvcmciOjd9",
            "eyJhbGciOiJIUzI1NiJ9.eyJjaGFsbGVuZ2UiOnt9fQ.c2ln",
        ] {
            let mut h = headers(&[("authorization", key)]);
            assert_eq!(take(&mut h), Ok(None), "{key}");
            assert_eq!(h.len(), 1);
        }

        let mut h = headers(&[("authorization", "L402 a:b"), ("payment-signature", "eyJ4")]);
        assert_eq!(take(&mut h), Err(CredentialError::Several));
        assert!(h.is_empty());
    }

    #[test]
    fn an_x402_payment_is_taken_and_stripped() {
        let mut h = headers(&[
            ("authorization", "Bearer key"),
            ("payment-signature", " eyJ4NDAyVmVyc2lvbiI6Mn0= "),
        ]);
        let presented = take(&mut h).unwrap().unwrap();
        assert_eq!(presented.scheme, CredentialScheme::X402);
        assert_eq!(presented.field, CredentialField::PaymentSignature);
        assert_eq!(presented.value, "eyJ4NDAyVmVyc2lvbiI6Mn0=");
        assert_eq!(h.len(), 1);
        assert_eq!(h[AUTHORIZATION], "Bearer key");

        // x402 version 1's field is stripped too, though not accepted.
        let mut h = headers(&[("x-payment", "eyJ2MSI6MX0="), ("accept", "*/*")]);
        assert_eq!(take(&mut h), Ok(None));
        assert_eq!(h.len(), 1);
    }
}
