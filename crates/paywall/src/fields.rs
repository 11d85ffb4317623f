//! Removing header fields by name, on every request's path.
//!
//! Most messages carry none of the fields a list names (hop-by-hop,
//! forwarding, credential or override fields): one pass over the
//! message's few names says so for less than a lookup of every name in
//! the list, which hashes each.

use http::{HeaderMap, HeaderName};

/// Whether `name` is one of `names`, also when spelled with `_` or `.`
/// for `-`: CGI-style servers (PHP's, a CGI gateway) map `-` and `_` (and
/// some `.`) to `_`, so `X_Forwarded_For` reaches them as
/// `X-Forwarded-For` does.
pub fn is_one_of(name: &HeaderName, names: &[HeaderName]) -> bool {
    if names.contains(name) {
        return true;
    }
    let name = name.as_str();
    respelled(name)
        && names.iter().any(|n| {
            n.as_str().len() == name.len()
                && n.as_str()
                    .bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b || (a == b'-' && matches!(b, b'_' | b'.')))
        })
}

/// Whether a field name may be another's with `_` or `.` for `-` (CGI and
/// some frameworks read `Payment_Authorization` and `Payment.Authorization`
/// as `Payment-Authorization`).
fn respelled(name: &str) -> bool {
    name.contains(['_', '.'])
}

/// Whether `headers` has a field named in `names` (or so named with `_`
/// or `.` for `-`).
pub fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|name| is_one_of(name, names))
}

/// Which of up to 32 names a message carries, found in one pass over its
/// names: each then costs a lookup only where it is there.
pub struct Present<'a> {
    names: &'a [HeaderName],
    /// Bit `i` for `names[i]`, as spelled.
    named: u32,
    /// Some name of `names` spelled with `_` or `.` for `-`.
    underscored: bool,
}

impl Present<'_> {
    /// Whether any of the names is there, in either spelling.
    pub fn any(&self) -> bool {
        self.named != 0 || self.underscored
    }

    /// Whether `name` (one of the names) is there as spelled.
    pub fn has(&self, name: &HeaderName) -> bool {
        self.names
            .iter()
            .position(|n| n == name)
            .is_some_and(|i| self.named & (1 << i) != 0)
    }

    /// Whether one of the names is there spelled with `_` or `.` for `-`.
    pub fn underscored(&self) -> bool {
        self.underscored
    }
}

/// Which of `names` (at most 32) `headers` carries.
pub fn present<'a>(headers: &HeaderMap, names: &'a [HeaderName]) -> Present<'a> {
    debug_assert!(names.len() <= 32);
    let mut present = Present {
        names,
        named: 0,
        underscored: false,
    };
    for name in headers.keys() {
        match names.iter().position(|n| n == name) {
            Some(i) => present.named |= 1 << i,
            None if respelled(name.as_str()) => {
                present.underscored |= is_one_of(name, names);
            }
            None => {}
        }
    }
    present
}

/// Removes every field named in `names` (all their values), also where
/// spelled with `_` or `.` for `-`.
pub fn remove_all_of(headers: &mut HeaderMap, names: &[HeaderName]) {
    if any_of(headers, names) {
        for name in names {
            headers.remove(name);
        }
        remove_underscored(headers, names);
    }
}

/// Removes the fields named in `names` with `_` or `.` for `-` only
/// (`Payment_Authorization`): never read, never forwarded.
pub fn remove_underscored(headers: &mut HeaderMap, names: &[HeaderName]) {
    remove_where(headers, |name| {
        respelled(name.as_str()) && is_one_of(name, names)
    });
}

/// Removes every field whose name `named` holds for (all its values); a
/// message with none is only read.
pub fn remove_where(headers: &mut HeaderMap, named: impl Fn(&HeaderName) -> bool) {
    if !headers.keys().any(&named) {
        return;
    }
    let removed: Vec<HeaderName> = headers.keys().filter(|n| named(n)).cloned().collect();
    for name in removed {
        headers.remove(name);
    }
}

/// The elements of a comma-separated list field (RFC 9110 §5.6.1), every
/// line of it, trimmed; empty elements included.
pub fn list_items<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_for_dashes_are_the_same_field() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc_metadata_macaroon", "m".parse().unwrap());
        headers.insert("x-kept", "k".parse().unwrap());
        let names = [HeaderName::from_static("grpc-metadata-macaroon")];
        assert!(any_of(&headers, &names));
        remove_all_of(&mut headers, &names);
        assert_eq!(headers.len(), 1);
        assert!(!any_of(&headers, &[HeaderName::from_static("x-kept-not")]));
    }

    #[test]
    fn present_names_each_spelling() {
        let names = [
            HeaderName::from_static("authorization"),
            HeaderName::from_static("x-payment"),
            HeaderName::from_static("macaroon"),
        ];
        let mut headers = HeaderMap::new();
        assert!(!present(&headers, &names).any());
        headers.insert("x-kept", "k".parse().unwrap());
        headers.insert("x_other", "k".parse().unwrap());
        assert!(!present(&headers, &names).any());
        headers.append("authorization", "a".parse().unwrap());
        headers.append("authorization", "b".parse().unwrap());
        let found = present(&headers, &names);
        assert!(found.any() && found.has(&names[0]));
        assert!(!found.has(&names[1]) && !found.has(&names[2]) && !found.underscored());
        assert!(
            !found.has(&HeaderName::from_static("x-kept")),
            "not one of the names"
        );
        headers.insert("X_Payment", "p".parse().unwrap());
        let found = present(&headers, &names);
        assert!(found.underscored() && !found.has(&names[1]));
        headers.insert("macaroon", "m".parse().unwrap());
        assert!(present(&headers, &names).has(&names[2]));
    }
}
