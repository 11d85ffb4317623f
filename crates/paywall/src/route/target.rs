//! The one rule that turns a request target into the path the paywall
//! matches **and** the upstream receives.
//!
//! An upstream that decodes `%XX`, resolves `..` or merges `//` (nginx,
//! python's `http.server`, most frameworks) must never be handed a path
//! that names another resource than the one priced. So the path is put in
//! the normal form of RFC 3986 §6.2.2 once, and everything downstream uses
//! that form: percent-encoded unreserved characters are decoded, the rest
//! re-encoded with upper-case hex, literal dot segments removed, empty
//! segments merged. What cannot be made unambiguous is refused, because
//! upstreams disagree about it: an encoded `/` or `\`, an encoded `;`, `?`
//! or `#` (an upstream that decodes, then strips path parameters or
//! re-parses the URL, would cut the segment there), a segment that is a
//! dot segment only once decoded, a `%` that would decode again (however
//! it is spelled), a raw `\` or `;` (servlet containers read `;` as path
//! parameters), a segment that ends with a dot or a space (Windows servers
//! drop them: `premium.` is `premium` there), NUL and other control bytes,
//! bytes that are not UTF-8 once decoded, and `..` above the root. The result is stable: normalizing it
//! again gives it back, and decoding it once yields nothing that changes
//! its segments.

use std::fmt;

use super::fold::ascii_readings;

/// A request path in normal form: starts with `/`, has no dot segments and
/// no empty segments (but keeps a trailing `/`), and spells every byte
/// outside the RFC 3986 `pchar` set as `%XX` with upper-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestPath(String);

/// Why a request target has no unambiguous path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not an origin-form path (`*`, or not starting with `/`).
    #[error("the request target is not a path starting with /")]
    NotAPath,
    /// `%` not followed by two hex digits.
    #[error("the path has a % that is not followed by two hex digits")]
    BadPercent,
    /// `%2F` or `%5C`: one upstream splits there, another does not.
    #[error("the path has an encoded / or \\ (%2F, %5C)")]
    EncodedSeparator,
    /// `%3B`, `%3F` or `%23`: once decoded, an upstream may cut the
    /// segment there (path parameters, a query, a fragment).
    #[error("the path has an encoded ;, ? or # (%3B, %3F, %23)")]
    EncodedDelimiter,
    /// `%2e%2e` and the like: a dot segment once decoded.
    #[error("the path has a percent-encoded dot segment")]
    EncodedDotSegment,
    /// A `%` that, once decoded, starts an escape again (`%252e`,
    /// `%25%32%65`).
    #[error("the path has a percent-encoded % that would decode again (%25XX)")]
    DoubleEncoded,
    /// A raw backslash, which some upstreams read as `/`.
    #[error("the path has a backslash")]
    Backslash,
    /// A raw `;`, which servlet containers strip with what follows it.
    #[error("the path has a ; (path parameters are not accepted)")]
    Semicolon,
    /// NUL or another control byte, raw or encoded.
    #[error("the path has a control character")]
    Control,
    /// A segment ending with `.` or a space, which Windows servers drop.
    #[error("a path segment ends with a dot or a space")]
    TrailingDotOrSpace,
    /// A segment Windows servers read as another name: an NTFS stream
    /// (`premium::$DATA`, `premium:$I30:$INDEX_ALLOCATION` are `premium`)
    /// or an 8.3 short name (`PREMIU~1`, `ANNUAL~1.PDF`).
    #[error("a path segment is a Windows alias of another name (an NTFS stream :$, or an 8.3 short name such as NAME~1)")]
    WindowsAlias,
    /// Bytes that are not UTF-8 once decoded.
    #[error("the path is not UTF-8 once percent-decoded")]
    InvalidUtf8,
    /// `..` that would climb above `/`.
    #[error("the path climbs above the root with ..")]
    AboveRoot,
}

/// RFC 3986 `unreserved`: decoded wherever it was encoded.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `unreserved`: kept as written. `;` is refused
/// before this is asked.
fn literal_delimiter(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Whether a path (after its leading `/`) is its own normal form: only
/// characters kept as written, no `%`, no empty segment but a last one, no
/// segment that ends with a dot, none a Windows alias. Most requests are;
/// they skip the rest.
fn already_normal(rest: &str) -> bool {
    // A Windows alias needs a `~` or a `:`: only then are segments read for one.
    let mut maybe_alias = false;
    let plain = rest.bytes().all(|b| {
        maybe_alias |= b == b'~' || b == b':';
        b == b'/' || (unreserved(b) || literal_delimiter(b))
    });
    if !plain {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last)
            || segment.ends_with('.')
            || (maybe_alias && windows_alias(segment.as_bytes()))
        {
            return false;
        }
    }
    true
}

/// One segment in normal form, and whether it is a literal `.` or `..`.
enum Segment {
    Dot,
    DotDot,
    Plain(String),
}

fn segment(raw: &str) -> Result<Segment, TargetError> {
    match raw {
        "." => return Ok(Segment::Dot),
        ".." => return Ok(Segment::DotDot),
        _ => {}
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // Every byte once decoded, to check UTF-8 and dot segments.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(TargetError::BadPercent);
            };
            let value = hi << 4 | lo;
            match value {
                b'/' | b'\\' => return Err(TargetError::EncodedSeparator),
                b';' | b'?' | b'#' => return Err(TargetError::EncodedDelimiter),
                v if v < 0x20 || v == 0x7f => return Err(TargetError::Control),
                v if unreserved(v) => out.push(char::from(v)),
                v => push_encoded(&mut out, v),
            }
            decoded.push(value);
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(TargetError::Backslash),
            b';' => return Err(TargetError::Semicolon),
            b if b < 0x20 || b == 0x7f => return Err(TargetError::Control),
            b if unreserved(b) || literal_delimiter(b) => out.push(char::from(b)),
            // Anything else a lenient parser let through (`"`, `{`, `|`,
            // bytes over 0x7f) is spelled the way an RFC 3986 client would.
            b => push_encoded(&mut out, b),
        }
        decoded.push(b);
        i += 1;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::InvalidUtf8);
    }
    // Decoding the normal form once must not make a new escape: `%25`
    // before two hex digits, whether they came raw or encoded, or before
    // `u` (IIS and .NET decode `%uXXXX`).
    let spelled = out.as_bytes();
    let escape_again = spelled.windows(5).any(|w| {
        w[..3].eq_ignore_ascii_case(b"%25")
            && (matches!(w[3], b'u' | b'U')
                || (hex_value(w[3]).is_some() && hex_value(w[4]).is_some()))
    });
    if escape_again {
        return Err(TargetError::DoubleEncoded);
    }
    if decoded == b"." || decoded == b".." {
        return Err(TargetError::EncodedDotSegment);
    }
    if matches!(decoded.last(), Some(b'.' | b' ')) {
        return Err(TargetError::TrailingDotOrSpace);
    }
    if windows_alias(&decoded) {
        return Err(TargetError::WindowsAlias);
    }
    Ok(Segment::Plain(out))
}

/// Whether a decoded segment is one Windows servers read as another name:
/// it names an NTFS stream (`:$` begins a stream type), or has the shape of
/// an 8.3 short name (at most 8 characters before an extension of at most
/// 3, ending in `~` and digits: `PREMIU~1`, `PR1A2B~1`, `ANNUAL~1.PDF`).
fn windows_alias(decoded: &[u8]) -> bool {
    if decoded.windows(2).any(|w| w == b":$") {
        return true;
    }
    let (base, extension) = match decoded.iter().position(|&b| b == b'.') {
        Some(dot) => (&decoded[..dot], &decoded[dot + 1..]),
        None => (decoded, &[][..]),
    };
    let Some(tilde) = base.iter().rposition(|&b| b == b'~') else {
        return false;
    };
    let (name, digits) = (&base[..tilde], &base[tilde + 1..]);
    let short_char = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'()-@^_`{}".contains(b);
    base.len() <= 8
        && !name.is_empty()
        && name.iter().all(short_char)
        && !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && extension.len() <= 3
        && extension.iter().all(short_char)
}

impl RequestPath {
    /// Normalizes the path of a request target (`uri.path()`; no query).
    ///
    /// # Errors
    ///
    /// A [`TargetError`] for every path whose meaning upstreams disagree
    /// on; answer it with `400 Bad Request`.
    pub fn parse(path: &str) -> Result<Self, TargetError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(TargetError::NotAPath);
        };
        if already_normal(rest) {
            return Ok(Self(path.to_owned()));
        }
        let mut segments: Vec<String> = Vec::new();
        let mut trailing_slash = false;
        let mut raw = rest.split('/').peekable();
        while let Some(piece) = raw.next() {
            let last = raw.peek().is_none();
            match segment(piece)? {
                Segment::Dot => trailing_slash = last,
                Segment::DotDot => {
                    if segments.pop().is_none() {
                        return Err(TargetError::AboveRoot);
                    }
                    trailing_slash = last;
                }
                // `//` merged, as nginx and most frameworks do.
                Segment::Plain(s) if s.is_empty() => trailing_slash = last,
                Segment::Plain(s) => {
                    segments.push(s);
                    trailing_slash = false;
                }
            }
        }
        let mut out = String::with_capacity(path.len());
        for s in &segments {
            out.push('/');
            out.push_str(s);
        }
        if trailing_slash || segments.is_empty() {
            out.push('/');
        }
        Ok(Self(out))
    }

    /// The normal form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The paths upstreams that fold Unicode to ASCII would read, one per
    /// reading of [`ascii_readings`] and in its order: `／`, `．．`, `∕`
    /// and `ｐｒｅｍｉｕｍ` become `/`, `..`, `/` and `premium` there,
    /// `prēmıum` and `pre\u{AD}mium` become `premium`. `None` for an ASCII
    /// path.
    ///
    /// # Errors
    ///
    /// A [`TargetError`] when a reading is itself ambiguous (it holds a
    /// `\`, a `;`, a dot segment above the root…).
    pub fn compatibility_forms(&self) -> Result<Option<Vec<RequestPath>>, TargetError> {
        // Bytes over 0x7f are always spelled %8X..%FX in the normal form.
        let non_ascii = self
            .0
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'%' && matches!(w[1], b'8'..=b'9' | b'A'..=b'F'));
        if !non_ascii {
            return Ok(None);
        }
        let decoded = decode_normal(&self.0).ok_or(TargetError::InvalidUtf8)?;
        ascii_readings(&decoded)
            .iter()
            .map(|folded| {
                let mut spelled = String::with_capacity(folded.len() * 3);
                for b in folded.bytes() {
                    match b {
                        b'%' | b' ' | b'?' | b'#' => push_encoded(&mut spelled, b),
                        b if b.is_ascii_control() => push_encoded(&mut spelled, b),
                        b => spelled.push(char::from(b)),
                    }
                }
                RequestPath::parse(&spelled)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The path as frameworks that take a format suffix read it (Rails'
    /// `(.:format)`), in normal form: its last segment (before a trailing
    /// `/`) cut at its first `.` after its first character
    /// (`/premium.json` and `/premium.v1.json` are `/premium`); `None`
    /// when it has none. A prefix of the path itself: nothing is made.
    pub fn format_stem(&self) -> Option<&str> {
        let trimmed = self.0.strip_suffix('/').unwrap_or(&self.0);
        let (parent, last) = trimmed.rsplit_once('/')?;
        let dot = last.get(1..)?.find('.')? + 1;
        Some(&trimmed[..parent.len() + 1 + dot])
    }

    /// The segments, without the leading `/` (a trailing `/` gives an
    /// empty last segment).
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0[1..].split('/')
    }
}

impl fmt::Display for RequestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RequestPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Every `%XX` of a normal form (or a part of one) decoded; `None` if
/// that is not UTF-8.
pub fn decode_normal(normal: &str) -> Option<String> {
    let bytes = normal.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, TargetError> {
        RequestPath::parse(path).map(|p| p.0)
    }

    #[test]
    fn normal_forms() {
        for (input, expected) in [
            ("/", "/"),
            ("/premium/secret.txt", "/premium/secret.txt"),
            ("/public/../premium/secret.txt", "/premium/secret.txt"),
            ("/%70remium/secret.txt", "/premium/secret.txt"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("//premium///x", "/premium/x"),
            ("/a%20b", "/a%20b"),
            ("/a%2cb", "/a%2Cb"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/x:y@z!$&'()*+,=", "/x:y@z!$&'()*+,="),
            ("/a%7Eb%2D", "/a~b-"),
            ("/a\"b{c}|", "/a%22b%7Bc%7D%7C"),
            ("/%25", "/%25"),
            ("/..a/a.b", "/..a/a.b"),
            // Not Windows aliases: a tilde elsewhere, a name too long to
            // be a short one, a colon without a stream type.
            ("/~user/a~b", "/~user/a~b"),
            ("/v1~beta/abc~1x/file.txt~", "/v1~beta/abc~1x/file.txt~"),
            ("/longname~1/a~1.json", "/longname~1/a~1.json"),
            ("/v1/projects/p:batchGet", "/v1/projects/p:batchGet"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (input, error) in [
            ("*", TargetError::NotAPath),
            ("premium", TargetError::NotAPath),
            (
                "/public/%2e%2e/premium/secret.txt",
                TargetError::EncodedDotSegment,
            ),
            ("/public/.%2E/premium", TargetError::EncodedDotSegment),
            ("/public/%2e/premium", TargetError::EncodedDotSegment),
            ("/public%2f..%2fpremium", TargetError::EncodedSeparator),
            ("/public%5Cpremium", TargetError::EncodedSeparator),
            ("/public\\..\\premium", TargetError::Backslash),
            ("/public/..;/premium", TargetError::Semicolon),
            ("/premium;x/secret", TargetError::Semicolon),
            ("/%252e%252e/premium", TargetError::DoubleEncoded),
            (
                "/public/%25%32%65%25%32%65/premium",
                TargetError::DoubleEncoded,
            ),
            ("/%25%37%30remium", TargetError::DoubleEncoded),
            ("/%25%36%31dmin", TargetError::DoubleEncoded),
            ("/%25u0070remium/x", TargetError::DoubleEncoded),
            ("/x/%25U002e%25u002e/premium", TargetError::DoubleEncoded),
            ("/public/..%3b/premium", TargetError::EncodedDelimiter),
            ("/premium%3Bx/secret", TargetError::EncodedDelimiter),
            ("/premium%3F/secret", TargetError::EncodedDelimiter),
            ("/premium%23/secret", TargetError::EncodedDelimiter),
            ("/premium./secret", TargetError::TrailingDotOrSpace),
            ("/premium.../secret", TargetError::TrailingDotOrSpace),
            ("/premium%20/secret", TargetError::TrailingDotOrSpace),
            ("/premium/secret.txt.", TargetError::TrailingDotOrSpace),
            ("/premium::$INDEX_ALLOCATION/a", TargetError::WindowsAlias),
            (
                "/premium:$i30:$INDEX_ALLOCATION/a",
                TargetError::WindowsAlias,
            ),
            ("/premium/secret.txt::$DATA", TargetError::WindowsAlias),
            ("/premium/secret.txt:x:$data", TargetError::WindowsAlias),
            (
                "/premium:%24i30:%24index_allocation",
                TargetError::WindowsAlias,
            ),
            ("/PREMIU~1/a", TargetError::WindowsAlias),
            ("/reports/ANNUAL~1.PDF", TargetError::WindowsAlias),
            ("/pr1a2b~1/x", TargetError::WindowsAlias),
            ("/p%7E12/x", TargetError::WindowsAlias),
            ("/a%00b", TargetError::Control),
            ("/a%0ab", TargetError::Control),
            ("/a%7f", TargetError::Control),
            ("/a%ff", TargetError::InvalidUtf8),
            ("/a%c3", TargetError::InvalidUtf8),
            ("/a%", TargetError::BadPercent),
            ("/a%4", TargetError::BadPercent),
            ("/a%zz", TargetError::BadPercent),
            ("/..", TargetError::AboveRoot),
            ("/a/../../b", TargetError::AboveRoot),
        ] {
            assert_eq!(norm(input), Err(error), "{input}");
        }
    }

    #[test]
    fn unicode_compatibility_readings() {
        // The first reading: decomposed, best-fit, the rest dropped.
        let compat = |p: &str| {
            RequestPath::parse(p)
                .unwrap()
                .compatibility_forms()
                .map(|forms| forms.map(|mut forms| forms.swap_remove(0)))
        };
        assert_eq!(compat("/premium/secret.txt"), Ok(None));
        // What has no ASCII reading is dropped, as slugifying upstreams do.
        assert_eq!(
            compat("/%E6%97%A5%E6%9C%AC/x").map(|p| p.map(|p| p.0)),
            Ok(Some("/x".to_owned()))
        );
        for (input, folded) in [
            (
                "/%EF%BD%90%EF%BD%92%EF%BD%85%EF%BD%8D%EF%BD%89%EF%BD%95%EF%BD%8D/x",
                "/premium/x",
            ),
            (
                "/public/%EF%BC%8E%EF%BC%8E/premium/secret.txt",
                "/premium/secret.txt",
            ),
            (
                "/public/..%EF%BC%8Fpremium/secret.txt",
                "/premium/secret.txt",
            ),
            (
                "/public/%E2%80%A5/premium/secret.txt",
                "/premium/secret.txt",
            ),
            ("/a/%EF%B9%92/b", "/a/b"),
            ("/caf%C3%A9", "/cafe"),
            // Best-fit readings: no compatibility decomposition, but a
            // Windows upstream reads them as ASCII.
            ("/pass%E2%88%95a", "/pass/a"),
            ("/pass%E2%81%84a", "/pass/a"),
            ("/p%C4%81ss/a", "/pass/a"),
            ("/%C4%87heap/a", "/cheap/a"),
            ("/prem%C4%B1um/a", "/premium/a"),
            ("/PREM%C4%B0UM/a", "/PREMIUM/a"),
            ("/pre%CC%81mium/a", "/premium/a"),
            ("/%C5%82ocal/a", "/local/a"),
            ("/public/%E2%80%A4%E2%80%A4/premium", "/premium"),
            ("/pre%C2%ADmium/a", "/premium/a"),
            ("/pre%E2%80%8Bmium/a", "/premium/a"),
            ("/%EF%BB%BFpremium/a", "/premium/a"),
            ("/pre%E2%82%ACmium/a", "/premium/a"),
        ] {
            assert_eq!(
                compat(input).map(|p| p.map(|p| p.0)),
                Ok(Some(folded.to_owned())),
                "{input}"
            );
        }
        // Ambiguous once folded: a fullwidth backslash or semicolon.
        assert_eq!(compat("/a%EF%BC%BCb"), Err(TargetError::Backslash));
        assert_eq!(compat("/a%EF%BC%9Bb"), Err(TargetError::Semicolon));
        assert_eq!(compat("/%EF%BC%8E%EF%BC%8E/x"), Err(TargetError::AboveRoot));
        assert_eq!(
            compat("/x%E2%88%96..%E2%88%96premium%E2%88%96a"),
            Err(TargetError::Backslash)
        );
    }

    proptest::proptest! {
        /// Normalizing twice changes nothing, and nothing a decoding
        /// upstream would resolve is left in the result.
        #[test]
        fn normal_form_is_stable(path in "/([a-zA-Z0-9./;\\\\_~-]|%(2[5eEfF]|3[0-9bBfF]|[0-9a-fA-F]{2})){0,24}") {
            if let Ok(once) = RequestPath::parse(&path) {
                let twice = RequestPath::parse(once.as_str()).unwrap();
                proptest::prop_assert_eq!(&once, &twice);
                for segment in once.segments() {
                    proptest::prop_assert!(segment != "." && segment != "..");
                }
                proptest::prop_assert!(!once.as_str().contains("//"));
                // What a decoding upstream reads: the same segments, none
                // of them a dot segment, nothing left to decode or to cut at.
                let decoded = decode_once(once.as_str());
                let segments: Vec<&[u8]> = decoded.split(|b| *b == b'/').collect();
                proptest::prop_assert_eq!(segments.len(), once.segments().count() + 1);
                for segment in &segments[1..] {
                    proptest::prop_assert!(*segment != b"." && *segment != b"..");
                    proptest::prop_assert!(!segment.iter().any(|b| b"\\;?#".contains(b)));
                    proptest::prop_assert!(!matches!(segment.last(), Some(b'.' | b' ')));
                    let escape = segment.windows(3).any(|w| {
                        w[0] == b'%' && hex_value(w[1]).is_some() && hex_value(w[2]).is_some()
                    });
                    proptest::prop_assert!(!escape, "{:?} decodes again", once);
                }
            }
        }
    }

    fn decode_once(text: &str) -> Vec<u8> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (
                bytes[i],
                bytes.get(i + 1).and_then(|b| hex_value(*b)),
                bytes.get(i + 2).and_then(|b| hex_value(*b)),
            ) {
                (b'%', Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }
}
