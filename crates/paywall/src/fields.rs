//! Removing header fields by name, on every request's path.
//!
//! Most messages carry none of the fields a list names (hop-by-hop,
//! forwarding, credential or override fields): one pass over the
//! message's few names says so for less than a lookup of every name in
//! the list, which hashes each.

use http::{HeaderMap, HeaderName};

/// Whether `headers` has a field named in `names`.
pub fn any_of(headers: &HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|name| names.contains(name))
}

/// Removes every field named in `names` (all their values).
pub fn remove_all_of(headers: &mut HeaderMap, names: &[HeaderName]) {
    if any_of(headers, names) {
        for name in names {
            headers.remove(name);
        }
    }
}
