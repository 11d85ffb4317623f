//! `WWW-Authenticate` challenge lists (RFC 9110 §11.6.1).

use crate::{is_tchar, is_token, is_token68_char, Error};

/// The auth-params of one challenge, in the order they arrived.
///
/// Repeats are kept; [`ChallengeParams::get`] returns the first, so that an
/// element on the path cannot override a value the origin set by appending
/// its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeParams(Vec<(String, String)>);

impl ChallengeParams {
    /// The first value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends a parameter.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Every parameter as `(name, value)`, in wire order, repeats included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of parameters, repeats included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for ChallengeParams {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

/// One challenge: a scheme with either a `token68` or auth-params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme name as sent (compare with [`Challenge::is_scheme`]).
    pub scheme: String,
    /// The `token68` form, used by schemes such as `Negotiate`.
    pub token68: Option<String>,
    /// The auth-params.
    pub params: ChallengeParams,
}

impl Challenge {
    /// A challenge with the given scheme and parameters.
    pub fn new(scheme: impl Into<String>, params: ChallengeParams) -> Self {
        Self {
            scheme: scheme.into(),
            token68: None,
            params,
        }
    }

    /// Whether this challenge is of `scheme` (scheme names are case-insensitive).
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The first value of the parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name)
    }

    /// Formats this challenge as a header value, every value quoted.
    pub fn to_header(&self) -> Result<String, Error> {
        match &self.token68 {
            Some(token) => {
                if !is_token(&self.scheme) {
                    return Err(Error::InvalidToken(self.scheme.clone()));
                }
                Ok(format!("{} {token}", self.scheme))
            }
            None => format_challenge(&self.scheme, self.params.iter()),
        }
    }
}

/// Formats `scheme name="value", ...` with every value a quoted-string.
///
/// Quotes and backslashes are escaped as quoted-pairs; a control character
/// other than horizontal tab cannot be carried by any header and is an error,
/// which keeps a description from the config from splitting the header.
pub fn format_challenge<'a>(
    scheme: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, Error> {
    if !is_token(scheme) {
        return Err(Error::InvalidToken(scheme.to_owned()));
    }
    let mut out = String::with_capacity(256);
    out.push_str(scheme);
    for (i, (name, value)) in params.into_iter().enumerate() {
        if !is_token(name) {
            return Err(Error::InvalidToken(name.to_owned()));
        }
        // One pass without early exit, which the compiler vectorizes: the
        // values are invoices, macaroons and base64url, hundreds of bytes
        // that need no escape and are copied whole.
        let special = value.bytes().fold(false, |seen, b| {
            seen | ((b < 0x20) & (b != b'\t')) | (b == 0x7f) | (b == b'"') | (b == b'\\')
        });
        if special && value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(Error::ControlCharacter(name.to_owned()));
        }
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(name);
        out.push_str("=\"");
        if special {
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
        } else {
            out.push_str(value);
        }
        out.push('"');
    }
    Ok(out)
}

/// Splits a `WWW-Authenticate` value into its challenges, whatever their
/// schemes.
///
/// Accepts everything RFC 9110 allows: several challenges comma-joined,
/// empty list elements, quoted or token values, any case in scheme and
/// parameter names, `token68` challenges. Parameters attach to the
/// challenge they follow, so one scheme's parameters never leak into the
/// next. Call it once per header line and concatenate, or once on the
/// lines joined with `", "`: the result is the same.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, Error> {
    let mut cursor = Cursor::new(header);
    let mut challenges: Vec<Challenge> = Vec::new();
    loop {
        cursor.skip_list_separators();
        let Some(found) = cursor.peek_char() else {
            break;
        };
        let at = cursor.pos;
        let name = cursor.token();
        if name.is_empty() {
            return Err(Error::Unexpected { at, found });
        }
        let after_name = cursor.pos;
        cursor.skip_ows();
        if cursor.peek() == Some(b'=') {
            let Some(current) = challenges.last_mut() else {
                return Err(Error::ParamWithoutScheme(name.to_owned()));
            };
            if current.token68.is_some() {
                // `scheme token68` takes no auth-params (RFC 9110 §11.2).
                return Err(Error::ParamAfterToken68(name.to_owned()));
            }
            let value = cursor.param_value(name)?;
            current.params.push(name, value);
            cursor.expect_element_end()?;
            continue;
        }
        let mut challenge = Challenge::new(name, ChallengeParams::default());
        if !cursor.at_element_end() {
            if cursor.pos == after_name {
                // A scheme must be followed by whitespace before its params.
                return Err(cursor.unexpected());
            }
            if let Some(token68) = cursor.token68() {
                challenge.token68 = Some(token68.to_owned());
            } else {
                let at = cursor.pos;
                let param = cursor.token();
                if param.is_empty() {
                    return Err(cursor.unexpected_at(at));
                }
                cursor.skip_ows();
                if cursor.peek() != Some(b'=') {
                    return Err(Error::MissingValue(param.to_owned()));
                }
                let value = cursor.param_value(param)?;
                challenge.params.push(param, value);
            }
            cursor.expect_element_end()?;
        }
        challenges.push(challenge);
    }
    if challenges.is_empty() {
        return Err(Error::Empty);
    }
    Ok(challenges)
}

/// A position in a header value. Every structural character is ASCII, so
/// the cursor walks bytes and only copies non-ASCII inside quoted strings.
pub(crate) struct Cursor<'a> {
    src: &'a str,
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Self { src, pos: 0 }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_char(&self) -> Option<char> {
        self.src
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
    }

    pub(crate) fn unexpected(&self) -> Error {
        self.unexpected_at(self.pos)
    }

    fn unexpected_at(&self, at: usize) -> Error {
        let found = self
            .src
            .get(at..)
            .and_then(|rest| rest.chars().next())
            .unwrap_or('\0');
        Error::Unexpected { at, found }
    }

    pub(crate) fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn skip_list_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    /// The longest run of `tchar` at the cursor (possibly empty).
    pub(crate) fn token(&mut self) -> &'a str {
        self.take_while(is_tchar)
    }

    fn take_while(&mut self, accept: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii() && accept(b as char))
        {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    fn at_element_end(&self) -> bool {
        matches!(self.peek(), None | Some(b','))
    }

    fn expect_element_end(&mut self) -> Result<(), Error> {
        self.skip_ows();
        if self.at_element_end() {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// A `token68` that fills the rest of its list element, or nothing (and
    /// the cursor unmoved) when what follows is an auth-param.
    fn token68(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let body = self.take_while(is_token68_char);
        if body.is_empty() {
            return None;
        }
        self.take_while(|c| c == '=');
        let end = self.pos;
        self.skip_ows();
        if self.at_element_end() {
            Some(&self.src[start..end])
        } else {
            self.pos = start;
            None
        }
    }

    /// `= value` after a parameter name: a quoted-string or a bare token.
    ///
    /// Bare values may also hold `/` and `=`, which base64 values sent
    /// unquoted by some peers contain.
    fn param_value(&mut self, name: &str) -> Result<String, Error> {
        debug_assert_eq!(self.peek(), Some(b'='));
        self.pos += 1;
        self.skip_ows();
        if self.peek() == Some(b'"') {
            return self.quoted_string();
        }
        let value = self.take_while(|c| is_tchar(c) || c == '/' || c == '=');
        if value.is_empty() {
            return Err(Error::MissingValue(name.to_owned()));
        }
        Ok(value.to_owned())
    }

    /// A quoted-string at the cursor, unescaped.
    pub(crate) fn quoted_string(&mut self) -> Result<String, Error> {
        let open = self.pos;
        self.pos += 1;
        let bytes = self.src.as_bytes();
        let mut out = Vec::new();
        loop {
            match bytes.get(self.pos) {
                None => return Err(Error::UnterminatedQuote(open)),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => match bytes.get(self.pos + 1) {
                    None => return Err(Error::UnterminatedQuote(open)),
                    Some(&escaped) => {
                        out.push(escaped);
                        self.pos += 2;
                    }
                },
                Some(&b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        // Only ASCII backslashes were dropped, so the bytes are still UTF-8.
        Ok(String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn l402_and_payment_in_one_line() {
        let header = r#"L402 macaroon="AgEEbHNhdA==", invoice="lnbcrt1", Payment id="x", realm="r", method="lightning", intent="charge", request="e30""#;
        let list = parse_challenges(header).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].is_scheme("l402"));
        assert_eq!(list[0].param("macaroon"), Some("AgEEbHNhdA=="));
        assert_eq!(list[1].param("intent"), Some("charge"));
    }

    #[test]
    fn token68_challenges() {
        let list = parse_challenges("Negotiate abc+/==, Basic realm=x").unwrap();
        assert_eq!(list[0].token68.as_deref(), Some("abc+/=="));
        assert_eq!(list[1].param("realm"), Some("x"));
    }

    #[test]
    fn token68_takes_no_params() {
        assert_eq!(
            parse_challenges("Negotiate abc, realm=x"),
            Err(Error::ParamAfterToken68("realm".into()))
        );
    }

    #[test]
    fn unquoted_base64_value_with_padding() {
        let list = parse_challenges("L402 macaroon=AgE+/w==, invoice=lnbc1").unwrap();
        assert_eq!(list[0].param("macaroon"), Some("AgE+/w=="));
        assert_eq!(list[0].param("invoice"), Some("lnbc1"));
    }

    #[test]
    fn malformed_values_are_errors() {
        assert_eq!(parse_challenges("   "), Err(Error::Empty));
        assert!(matches!(
            parse_challenges(r#"L402 macaroon="abc"#),
            Err(Error::UnterminatedQuote(_))
        ));
        assert_eq!(
            parse_challenges("realm=x"),
            Err(Error::ParamWithoutScheme("realm".into()))
        );
        assert!(matches!(
            parse_challenges("L402 a=\"b\" c"),
            Err(Error::Unexpected { .. })
        ));
        assert_eq!(
            parse_challenges("L402 a=\"b\", c="),
            Err(Error::MissingValue("c".into()))
        );
        assert!(matches!(
            parse_challenges("L402 é=1"),
            Err(Error::Unexpected { found: 'é', .. })
        ));
    }

    #[test]
    fn formatter_refuses_header_splitting() {
        assert_eq!(
            format_challenge("L402", [("a", "x\r\nSet-Cookie: y")]),
            Err(Error::ControlCharacter("a".into()))
        );
        assert!(format_challenge("L 402", []).is_err());
    }

    #[test]
    fn formatter_escapes_quotes_and_backslashes_only() {
        assert_eq!(
            format_challenge("X", [("a", r#"q"b\c"#), ("b", "lnbc1é")]).unwrap(),
            r#"X a="q\"b\\c", b="lnbc1é""#
        );
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
    }

    fn value() -> impl Strategy<Value = String> {
        // Anything a header can carry: no control characters but tab.
        "[^\\x00-\\x08\\x0a-\\x1f\\x7f]{0,40}"
    }

    fn challenge() -> impl Strategy<Value = Challenge> {
        (token(), proptest::collection::vec((token(), value()), 0..6))
            .prop_map(|(scheme, params)| Challenge::new(scheme, params.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn formatted_challenge_lists_parse_back(list in proptest::collection::vec(challenge(), 1..4)) {
            let lines: Vec<String> = list.iter().map(|c| c.to_header().unwrap()).collect();
            prop_assert_eq!(parse_challenges(&lines.join(", ")).unwrap(), list.clone());
            let separately: Vec<Challenge> = lines
                .iter()
                .flat_map(|line| parse_challenges(line).unwrap())
                .collect();
            prop_assert_eq!(separately, list);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_challenges(&s);
        }
    }
}
