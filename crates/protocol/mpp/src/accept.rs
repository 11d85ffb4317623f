//! `Accept-Payment`: which methods a client speaks, and how much it likes each.

pub use mpp::protocol::core::accept_payment::HasMethodIntent;
use mpp::protocol::core::accept_payment::{self as wire, Entry};

/// A parsed `Accept-Payment` value (`lightning/charge, stripe/*;q=0.2`).
#[derive(Debug, Clone)]
pub struct AcceptPayment(Vec<Entry>);

/// A malformed `Accept-Payment` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Accept-Payment: {0}")]
pub struct AcceptPaymentError(pub String);

impl AcceptPayment {
    /// Parses the header value.
    pub fn parse(header: &str) -> Result<Self, AcceptPaymentError> {
        wire::parse(header)
            .map(Self)
            .map_err(|e| AcceptPaymentError(e.to_string()))
    }

    /// The offers the client accepts, best first (`q=0` excludes; ties keep
    /// the server's order), as mppx ranks them.
    pub fn rank<'a, T: HasMethodIntent>(&self, offers: &'a [T]) -> Vec<&'a T> {
        wire::rank(offers, &self.0)
    }

    /// Whether the client accepts `method/intent` at all.
    pub fn accepts(&self, method: &str, intent: &str) -> bool {
        struct Offer<'a>(&'a str, &'a str);
        impl HasMethodIntent for Offer<'_> {
            fn method(&self) -> &str {
                self.0
            }
            fn intent(&self) -> &str {
                self.1
            }
        }
        !self.rank(&[Offer(method, intent)]).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_excludes() {
        let accept = AcceptPayment::parse("stripe/*;q=0.2, lightning/charge").unwrap();
        assert!(accept.accepts("lightning", "charge"));
        assert!(!accept.accepts("lightning", "session"));
        let no = AcceptPayment::parse("lightning/*;q=0, */*").unwrap();
        assert!(!no.accepts("lightning", "charge"));
        assert!(no.accepts("stripe", "charge"));
        assert!(AcceptPayment::parse("").is_err());
        assert!(AcceptPayment::parse("lightning").is_err());
    }
}
