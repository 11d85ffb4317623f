//! `Authorization` values (RFC 9110 §11.6.2).

use crate::{is_tchar, Error};

/// An `Authorization` value split into its scheme and the rest.
///
/// The rest is left raw: `Payment` carries a `token68`, while `L402`
/// carries `<macaroon>[,<macaroon>]:<preimage>`, which is no standard form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The scheme name as sent.
    pub scheme: &'a str,
    /// Everything after the scheme, surrounding whitespace trimmed.
    pub rest: &'a str,
}

impl Credentials<'_> {
    /// Whether these credentials are of `scheme` (case-insensitive).
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

/// Splits an `Authorization` value into scheme and credentials.
pub fn parse_credentials(value: &str) -> Result<Credentials<'_>, Error> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(Error::Empty);
    }
    let end = value.find(|c: char| !is_tchar(c)).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(end);
    if scheme.is_empty() {
        let found = rest.chars().next().unwrap_or('\0');
        return Err(Error::Unexpected { at: 0, found });
    }
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        let found = rest.chars().next().unwrap_or('\0');
        return Err(Error::Unexpected { at: end, found });
    }
    Ok(Credentials {
        scheme,
        rest: rest.trim_matches([' ', '\t']),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_scheme_and_rest() {
        let c = parse_credentials("  L402  AgE=,AgI=:00ff ").unwrap();
        assert!(c.is_scheme("l402"));
        assert_eq!(c.rest, "AgE=,AgI=:00ff");
        assert_eq!(parse_credentials("Payment").unwrap().rest, "");
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_credentials(""), Err(Error::Empty));
        assert!(parse_credentials(":abc").is_err());
        assert!(parse_credentials("L402:abc").is_err());
    }
}
