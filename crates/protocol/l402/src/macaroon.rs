//! Macaroons in the go-macaroon binary formats.
//!
//! Our own implementation on `hmac` + `sha2`: the `macaroon` crate is
//! unmaintained and pulls in sodiumoxide (libsodium), and L402 needs only
//! first-party caveats, which are a plain HMAC chain. The layout and key
//! derivation follow go-macaroon (gopkg.in/macaroon.v2), which is what LND
//! and Aperture run; the newer macaroon-spec.md in the L402 repository gets
//! both the field tags and the key derivation wrong.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The fixed key with which go-macaroon and libmacaroons derive the
/// signing key from a root key of any length.
const KEY_GENERATOR: &[u8] = b"macaroons-key-generator";

const V2_VERSION: u8 = 2;
const FIELD_EOS: u64 = 0;
const FIELD_LOCATION: u64 = 1;
const FIELD_IDENTIFIER: u64 = 2;
const FIELD_VERIFICATION_ID: u64 = 4;
const FIELD_SIGNATURE: u64 = 6;
const SIGNATURE_LEN: usize = 32;

/// Which binary format a macaroon was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacaroonFormat {
    /// libmacaroons' original packet format (hex length, `key value\n`).
    V1,
    /// The compact format go-macaroon writes by default (first byte `0x02`).
    V2,
}

/// A caveat as carried in a macaroon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacaroonCaveat {
    /// The caveat identifier: the condition of a first-party caveat.
    pub id: Vec<u8>,
    /// Set only on third-party caveats.
    pub verification_id: Option<Vec<u8>>,
    /// Set only on third-party caveats.
    pub location: Option<String>,
}

impl MacaroonCaveat {
    /// Whether this is a third-party caveat (L402 uses none).
    pub fn is_third_party(&self) -> bool {
        self.verification_id.is_some()
    }
}

/// A macaroon: location, identifier, caveats, and the HMAC chain over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macaroon {
    location: String,
    identifier: Vec<u8>,
    caveats: Vec<MacaroonCaveat>,
    signature: [u8; SIGNATURE_LEN],
    format: MacaroonFormat,
}

/// Why bytes are not a macaroon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacaroonError {
    /// Nothing to decode.
    #[error("empty macaroon")]
    Empty,
    /// Not base64 in either alphabet.
    #[error("macaroon is not valid base64")]
    Base64,
    /// Neither a V2 (`0x02`) nor a V1 (hex length) start.
    #[error("unknown macaroon format (first byte 0x{0:02x})")]
    UnknownFormat(u8),
    /// The data ended inside a field.
    #[error("macaroon truncated: {0}")]
    Truncated(&'static str),
    /// A varint that does not fit the format's range.
    #[error("macaroon field length out of range")]
    VarintRange,
    /// Fields in the wrong order or of the wrong kind.
    #[error("malformed macaroon: {0}")]
    Malformed(&'static str),
    /// The signature field is not 32 bytes.
    #[error("macaroon signature has {0} bytes, expected 32")]
    SignatureLength(usize),
    /// Bytes left over after the signature.
    #[error("{0} unexpected bytes after the macaroon signature")]
    TrailingBytes(usize),
    /// A location that is not UTF-8.
    #[error("macaroon location is not UTF-8")]
    Location,
}

impl Macaroon {
    /// Mints a macaroon: `sig = HMAC(HMAC("macaroons-key-generator", root_key), identifier)`.
    pub fn new(root_key: &[u8], identifier: Vec<u8>, location: impl Into<String>) -> Self {
        let signature = hmac(&derive_key(root_key), &identifier);
        Self {
            location: location.into(),
            identifier,
            caveats: Vec::new(),
            signature,
            format: MacaroonFormat::V2,
        }
    }

    /// Adds a first-party caveat, extending the chain: `sig = HMAC(sig, caveat)`.
    pub fn add_first_party_caveat(&mut self, caveat: impl Into<Vec<u8>>) {
        let id = caveat.into();
        self.signature = hmac(&self.signature, &id);
        self.caveats.push(MacaroonCaveat {
            id,
            verification_id: None,
            location: None,
        });
    }

    /// The location (Aperture writes `lsat`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The raw identifier bytes.
    pub fn identifier(&self) -> &[u8] {
        &self.identifier
    }

    /// Every caveat, in chain order.
    pub fn caveats(&self) -> &[MacaroonCaveat] {
        &self.caveats
    }

    /// The identifiers of the first-party caveats, in chain order.
    pub fn first_party_caveats(&self) -> FirstPartyCaveats<'_> {
        FirstPartyCaveats(self.caveats.iter())
    }

    /// The final signature of the chain.
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// The format this macaroon was decoded from (`V2` for minted ones).
    pub fn format(&self) -> MacaroonFormat {
        self.format
    }

    /// Whether the signature chain holds for `root_key`, compared in
    /// constant time. Third-party caveats cannot be checked without their
    /// discharges, so a macaroon carrying one never verifies here.
    pub fn verify_signature(&self, root_key: &[u8]) -> bool {
        if self.caveats.iter().any(MacaroonCaveat::is_third_party) {
            return false;
        }
        let mut sig = hmac(&derive_key(root_key), &self.identifier);
        for caveat in &self.caveats {
            sig = hmac(&sig, &caveat.id);
        }
        sig.ct_eq(&self.signature).into()
    }

    /// The V2 binary encoding, byte for byte what go-macaroon writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self.location.len()
                + self.identifier.len()
                + self.caveats.iter().map(|c| c.id.len() + 4).sum::<usize>()
                + SIGNATURE_LEN,
        );
        out.push(V2_VERSION);
        if !self.location.is_empty() {
            put_field(&mut out, FIELD_LOCATION, self.location.as_bytes());
        }
        put_field(&mut out, FIELD_IDENTIFIER, &self.identifier);
        out.push(FIELD_EOS as u8);
        for caveat in &self.caveats {
            if let Some(location) = caveat.location.as_deref().filter(|l| !l.is_empty()) {
                put_field(&mut out, FIELD_LOCATION, location.as_bytes());
            }
            put_field(&mut out, FIELD_IDENTIFIER, &caveat.id);
            if let Some(vid) = caveat.verification_id.as_deref().filter(|v| !v.is_empty()) {
                put_field(&mut out, FIELD_VERIFICATION_ID, vid);
            }
            out.push(FIELD_EOS as u8);
        }
        out.push(FIELD_EOS as u8);
        put_field(&mut out, FIELD_SIGNATURE, &self.signature);
        out
    }

    /// Standard base64 with padding of the V2 encoding, as peers send it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.to_bytes())
    }

    /// Decodes the V2 or V1 binary format, telling them apart by the first
    /// byte as go-macaroon does.
    pub fn from_bytes(data: &[u8]) -> Result<Self, MacaroonError> {
        match data.first() {
            None => Err(MacaroonError::Empty),
            Some(&V2_VERSION) => decode_v2(&data[1..]),
            Some(b) if b.is_ascii_hexdigit() => decode_v1(data),
            Some(&b) => Err(MacaroonError::UnknownFormat(b)),
        }
    }

    /// Decodes base64 (standard or URL-safe, padded or not) of either format.
    pub fn from_base64(text: &str) -> Result<Self, MacaroonError> {
        Self::from_bytes(&decode_base64(text).ok_or(MacaroonError::Base64)?)
    }
}

/// Iterator over the first-party caveat identifiers of a macaroon.
#[derive(Debug, Clone)]
pub struct FirstPartyCaveats<'a>(std::slice::Iter<'a, MacaroonCaveat>);

impl<'a> Iterator for FirstPartyCaveats<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<Self::Item> {
        self.0
            .by_ref()
            .find(|c| !c.is_third_party())
            .map(|c| c.id.as_slice())
    }
}

/// Decodes base64 in the standard or URL-safe alphabet, with or without
/// padding: peers send standard padded base64, URL-safe shows up in
/// cookies and query strings. Surrounding whitespace is not accepted.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const INDIFFERENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD_ANY: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, INDIFFERENT);
    const URL_SAFE_ANY: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, INDIFFERENT);
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE_ANY
    } else {
        &STANDARD_ANY
    };
    engine.decode(text).ok()
}

fn derive_key(root_key: &[u8]) -> [u8; 32] {
    hmac(KEY_GENERATOR, root_key)
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_field(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    put_varint(out, field);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// A read position in V2 data.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// go's `binary.Uvarint`, limited to 31 bits as go-macaroon limits it.
    fn varint(&mut self) -> Result<u64, MacaroonError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.data.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.data = &self.data[i + 1..];
                return if value > 0x7fff_ffff {
                    Err(MacaroonError::VarintRange)
                } else {
                    Ok(value)
                };
            }
        }
        if self.data.len() >= 10 {
            Err(MacaroonError::VarintRange)
        } else {
            Err(MacaroonError::Truncated("varint"))
        }
    }

    /// One field: `(type, data)`, or `(EOS, [])`.
    fn field(&mut self) -> Result<(u64, &'a [u8]), MacaroonError> {
        let field = self.varint()?;
        if field == FIELD_EOS {
            return Ok((FIELD_EOS, &[]));
        }
        let len = self.varint()? as usize;
        if len > self.data.len() {
            return Err(MacaroonError::Truncated("field data"));
        }
        let (value, rest) = self.data.split_at(len);
        self.data = rest;
        Ok((field, value))
    }

    /// Fields up to the next EOS; their types must strictly increase.
    fn section(&mut self) -> Result<Vec<(u64, &'a [u8])>, MacaroonError> {
        let mut fields = Vec::new();
        loop {
            if self.data.is_empty() {
                return Err(MacaroonError::Truncated("section"));
            }
            let (field, value) = self.field()?;
            if field == FIELD_EOS {
                return Ok(fields);
            }
            if fields.last().is_some_and(|&(prev, _)| field <= prev) {
                return Err(MacaroonError::Malformed("fields out of order"));
            }
            fields.push((field, value));
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<String, MacaroonError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| MacaroonError::Location)
}

fn decode_v2(data: &[u8]) -> Result<Macaroon, MacaroonError> {
    let mut reader = Reader { data };
    let header = reader.section()?;
    let (location, identifier) = match header.as_slice() {
        [(FIELD_LOCATION, loc), (FIELD_IDENTIFIER, id)] => (utf8(loc)?, id.to_vec()),
        [(FIELD_IDENTIFIER, id)] => (String::new(), id.to_vec()),
        _ => return Err(MacaroonError::Malformed("invalid macaroon header")),
    };
    let mut caveats = Vec::new();
    loop {
        let section = reader.section()?;
        let caveat = match section.as_slice() {
            [] => break,
            [(FIELD_IDENTIFIER, id)] => MacaroonCaveat {
                id: id.to_vec(),
                verification_id: None,
                location: None,
            },
            [(FIELD_LOCATION, _), (FIELD_IDENTIFIER, _)] => {
                return Err(MacaroonError::Malformed(
                    "location not allowed in first-party caveat",
                ))
            }
            // go-macaroon counts a caveat as third-party only when its
            // verification id is non-empty; an empty one is first-party.
            [(FIELD_LOCATION, _), (FIELD_IDENTIFIER, id), (FIELD_VERIFICATION_ID, [])]
            | [(FIELD_IDENTIFIER, id), (FIELD_VERIFICATION_ID, [])] => MacaroonCaveat {
                id: id.to_vec(),
                verification_id: None,
                location: None,
            },
            [(FIELD_LOCATION, loc), (FIELD_IDENTIFIER, id), (FIELD_VERIFICATION_ID, vid)] => {
                MacaroonCaveat {
                    id: id.to_vec(),
                    verification_id: Some(vid.to_vec()),
                    location: Some(utf8(loc)?).filter(|l| !l.is_empty()),
                }
            }
            [(FIELD_IDENTIFIER, id), (FIELD_VERIFICATION_ID, vid)] => MacaroonCaveat {
                id: id.to_vec(),
                verification_id: Some(vid.to_vec()),
                location: None,
            },
            _ => return Err(MacaroonError::Malformed("invalid caveat fields")),
        };
        caveats.push(caveat);
    }
    if reader.data.is_empty() {
        return Err(MacaroonError::Truncated("signature"));
    }
    let (field, sig) = reader.field()?;
    if field != FIELD_SIGNATURE {
        return Err(MacaroonError::Malformed("expected the signature field"));
    }
    let signature: [u8; SIGNATURE_LEN] = sig
        .try_into()
        .map_err(|_| MacaroonError::SignatureLength(sig.len()))?;
    if !reader.data.is_empty() {
        return Err(MacaroonError::TrailingBytes(reader.data.len()));
    }
    Ok(Macaroon {
        location,
        identifier,
        caveats,
        signature,
        format: MacaroonFormat::V2,
    })
}

/// One V1 packet: four hex digits of total length, `name value\n`.
fn v1_packet(data: &[u8]) -> Result<(&[u8], &[u8], usize), MacaroonError> {
    if data.len() < 6 {
        return Err(MacaroonError::Truncated("v1 packet"));
    }
    let len = std::str::from_utf8(&data[..4])
        .ok()
        .and_then(|digits| usize::from_str_radix(digits, 16).ok())
        .ok_or(MacaroonError::Malformed("v1 packet length is not hex"))?;
    if len > data.len() {
        return Err(MacaroonError::Truncated("v1 packet"));
    }
    if len < 6 {
        return Err(MacaroonError::Malformed("v1 packet too short"));
    }
    let body = &data[4..len];
    let space = body
        .iter()
        .position(|&b| b == b' ')
        .filter(|&i| i > 0)
        .ok_or(MacaroonError::Malformed("v1 packet has no field name"))?;
    if body.last() != Some(&b'\n') {
        return Err(MacaroonError::Malformed("v1 packet has no final newline"));
    }
    Ok((&body[..space], &body[space + 1..body.len() - 1], len))
}

fn decode_v1(mut data: &[u8]) -> Result<Macaroon, MacaroonError> {
    let expect = |data: &mut &[u8], name: &[u8]| -> Result<Vec<u8>, MacaroonError> {
        let (field, value, len) = v1_packet(data)?;
        if field != name {
            return Err(MacaroonError::Malformed("v1 header fields out of order"));
        }
        let value = value.to_vec();
        *data = &data[len..];
        Ok(value)
    };
    let location = utf8(&expect(&mut data, b"location")?)?;
    let identifier = expect(&mut data, b"identifier")?;
    let mut caveats: Vec<MacaroonCaveat> = Vec::new();
    loop {
        let (field, value, len) = v1_packet(data)?;
        data = &data[len..];
        match field {
            b"signature" => {
                let signature: [u8; SIGNATURE_LEN] = value
                    .try_into()
                    .map_err(|_| MacaroonError::SignatureLength(value.len()))?;
                if !data.is_empty() {
                    return Err(MacaroonError::TrailingBytes(data.len()));
                }
                return Ok(Macaroon {
                    location,
                    identifier,
                    caveats,
                    signature,
                    format: MacaroonFormat::V1,
                });
            }
            b"cid" => caveats.push(MacaroonCaveat {
                id: value.to_vec(),
                verification_id: None,
                location: None,
            }),
            b"vid" | b"cl" => {
                let Some(caveat) = caveats.last_mut() else {
                    return Err(MacaroonError::Malformed("v1 caveat field before cid"));
                };
                // Empty values are absent values, as go-macaroon writes them.
                let slot_taken = if field == b"vid" {
                    caveat.verification_id.is_some()
                        || std::mem::replace(
                            &mut caveat.verification_id,
                            Some(value.to_vec()).filter(|v| !v.is_empty()),
                        )
                        .is_some()
                } else {
                    caveat.location.is_some()
                        || std::mem::replace(
                            &mut caveat.location,
                            Some(utf8(value)?).filter(|l| !l.is_empty()),
                        )
                        .is_some()
                };
                if slot_taken {
                    return Err(MacaroonError::Malformed("repeated v1 caveat field"));
                }
            }
            _ => return Err(MacaroonError::Malformed("unknown v1 field")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The example of the libmacaroons README, which go-macaroon reproduces.
    const ROOT_KEY: &[u8] = b"this is our super secret key; only we should know it";

    #[test]
    fn signature_chain_matches_libmacaroons() {
        let mut m = Macaroon::new(
            ROOT_KEY,
            b"we used our secret key".to_vec(),
            "http://mybank/",
        );
        assert_eq!(
            hex::encode(m.signature()),
            "e3d9e02908526c4c0039ae15114115d97fdd68bf2ba379b342aaf0f617d0552f"
        );
        m.add_first_party_caveat("account = 3735928559");
        assert_eq!(
            hex::encode(m.signature()),
            "1efe4763f290dbce0c1d08477367e11f4eee456a64933cf662d79772dbb82128"
        );
        assert!(m.verify_signature(ROOT_KEY));
        assert!(!m.verify_signature(b"another key"));
    }

    #[test]
    fn v2_layout_matches_go_macaroon() {
        let mut m = Macaroon::new(
            ROOT_KEY,
            b"we used our secret key".to_vec(),
            "http://mybank/",
        );
        m.add_first_party_caveat("account = 3735928559");
        let mut expected = vec![2u8, 1, 14];
        expected.extend_from_slice(b"http://mybank/");
        expected.extend_from_slice(&[2, 22]);
        expected.extend_from_slice(b"we used our secret key");
        expected.extend_from_slice(&[0, 2, 20]);
        expected.extend_from_slice(b"account = 3735928559");
        expected.extend_from_slice(&[0, 0, 6, 32]);
        expected.extend_from_slice(m.signature());
        assert_eq!(m.to_bytes(), expected);
        assert_eq!(Macaroon::from_bytes(&expected).unwrap(), m);
    }

    #[test]
    fn decodes_go_macaroon_third_party_v2_vector() {
        // go-macaroon's marshal test: the second libmacaroons example.
        let mut data = vec![2u8, 1, 14];
        data.extend_from_slice(b"http://mybank/");
        data.extend_from_slice(&[2, 28]);
        data.extend_from_slice(b"we used our other secret key");
        data.extend_from_slice(&[0, 2, 20]);
        data.extend_from_slice(b"account = 3735928559");
        data.extend_from_slice(&[0, 1, 19]);
        data.extend_from_slice(b"http://auth.mybank/");
        data.extend_from_slice(&[2, 39]);
        data.extend_from_slice(b"this was how we remind auth of key/pred");
        data.extend_from_slice(&[4, 72]);
        data.extend_from_slice(&[0; 24]);
        data.extend_from_slice(
            &hex::decode("d36ec502e05886d1f0279f055fa52554d16d16c1b14074bbb83ff0fdd79dc2fe098f0ed4a2b091130e6b5db46a20a86b").unwrap(),
        );
        data.extend_from_slice(&[0, 0, 6, 32]);
        data.extend_from_slice(
            &hex::decode("d27db2fd1f22760e4c3dae8137e2d8fc1df6c0741c18aed4b97256bf78d1f55c")
                .unwrap(),
        );
        let m = Macaroon::from_bytes(&data).unwrap();
        assert_eq!(m.location(), "http://mybank/");
        assert_eq!(m.caveats().len(), 2);
        assert!(m.caveats()[1].is_third_party());
        assert_eq!(
            m.caveats()[1].location.as_deref(),
            Some("http://auth.mybank/")
        );
        assert_eq!(m.first_party_caveats().count(), 1);
        assert_eq!(m.to_bytes(), data, "re-encoding is byte-identical");
        assert!(
            !m.verify_signature(b"any key"),
            "third-party caveats never verify here"
        );
    }

    #[test]
    fn decodes_v1() {
        let sig = [7u8; 32];
        let mut data = Vec::new();
        for (name, value) in [
            (&b"location"[..], &b"http://mybank/"[..]),
            (b"identifier", b"we used our secret key"),
            (b"cid", b"account = 3735928559"),
            (b"signature", &sig),
        ] {
            data.extend_from_slice(
                format!("{:04x}", 4 + name.len() + 1 + value.len() + 1).as_bytes(),
            );
            data.extend_from_slice(name);
            data.push(b' ');
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let m = Macaroon::from_bytes(&data).unwrap();
        assert_eq!(m.format(), MacaroonFormat::V1);
        assert_eq!(m.identifier(), b"we used our secret key");
        assert_eq!(
            m.first_party_caveats().collect::<Vec<_>>(),
            vec![&b"account = 3735928559"[..]]
        );
        assert_eq!(m.signature(), &sig);
        // Base64 of V1 starts "MDA", which is how it shows up in the wild.
        assert!(STANDARD.encode(&data).starts_with("MDA"));
        assert!(Macaroon::from_base64(&STANDARD.encode(&data)).is_ok());
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(Macaroon::from_bytes(&[]), Err(MacaroonError::Empty));
        assert_eq!(
            Macaroon::from_bytes(&[0xff]),
            Err(MacaroonError::UnknownFormat(0xff))
        );
        assert!(matches!(
            Macaroon::from_bytes(&[2, 2, 50, 1]),
            Err(MacaroonError::Truncated(_))
        ));
        assert!(matches!(
            Macaroon::from_bytes(&[2, 2, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(MacaroonError::VarintRange)
        ));
        let m = Macaroon::new(b"k", vec![1, 2], "");
        let mut bytes = m.to_bytes();
        bytes.push(0);
        assert_eq!(
            Macaroon::from_bytes(&bytes),
            Err(MacaroonError::TrailingBytes(1))
        );
        let bytes = m.to_bytes();
        assert!(Macaroon::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(Macaroon::from_base64("!!"), Err(MacaroonError::Base64));
    }

    #[test]
    fn an_empty_verification_id_is_a_first_party_caveat() {
        // Found by fuzzing: it must re-encode to what it decoded from.
        let mut data = vec![2u8, 2, 1, 7, 0];
        data.extend_from_slice(&[2, 3, b'a', b'=', b'b', 4, 0, 0, 0, 6, 32]);
        data.extend_from_slice(&[9; 32]);
        let m = Macaroon::from_bytes(&data).unwrap();
        assert!(!m.caveats()[0].is_third_party());
        assert_eq!(Macaroon::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn an_empty_caveat_location_is_no_location() {
        let mut data = vec![2u8, 2, 1, 7, 0];
        data.extend_from_slice(&[1, 0, 2, 1, b'x', 4, 1, 9, 0, 0, 6, 32]);
        data.extend_from_slice(&[9; 32]);
        let m = Macaroon::from_bytes(&data).unwrap();
        assert_eq!(m.caveats()[0].location, None);
        assert_eq!(Macaroon::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn base64_alphabets_and_padding() {
        let m = Macaroon::new(b"k", vec![0xfb, 0xff, 0xbf, 0xfe], "lsat");
        let std = m.to_base64();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.to_bytes());
        assert_ne!(std.trim_end_matches('='), url);
        assert_eq!(Macaroon::from_base64(&std).unwrap(), m);
        assert_eq!(Macaroon::from_base64(&url).unwrap(), m);
        assert_eq!(Macaroon::from_base64(std.trim_end_matches('=')).unwrap(), m);
    }

    proptest! {
        #[test]
        fn v2_round_trips(
            location in "[ -~]{0,20}",
            identifier in proptest::collection::vec(any::<u8>(), 0..200),
            caveats in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..5),
            key in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut m = Macaroon::new(&key, identifier, location);
            for caveat in caveats {
                m.add_first_party_caveat(caveat);
            }
            let decoded = Macaroon::from_base64(&m.to_base64()).unwrap();
            prop_assert!(decoded.verify_signature(&key));
            prop_assert_eq!(decoded, m);
        }

        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Macaroon::from_bytes(&data);
        }
    }
}
