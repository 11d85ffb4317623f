//! What the operator's admin API reads and writes: services changed at
//! runtime, revoked payments, the 402s issued per hour, payments searched
//! and summed, and the log of who changed what.

/// What the admin API made of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Serving with the change's table.
    Active,
    /// Kept in the route table but answering 503, so that no other route
    /// takes its requests.
    Disabled,
    /// Gone, even when the config file names it.
    Deleted,
    /// Handed back to the config file: no change of the admin API applies
    /// to it any more.
    Reset,
}

impl ServiceState {
    /// Its name in the store and the API: `active`, `disabled`, `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Active => "active",
            ServiceState::Disabled => "disabled",
            ServiceState::Deleted => "deleted",
            ServiceState::Reset => "reset",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(ServiceState::Active),
            "disabled" => Some(ServiceState::Disabled),
            "deleted" => Some(ServiceState::Deleted),
            "reset" => Some(ServiceState::Reset),
            _ => None,
        }
    }
}

/// The latest change of one service, which replaces whatever the config
/// file says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChange {
    /// The service's name.
    pub name: String,
    /// What it is now.
    pub state: ServiceState,
    /// Its `[[services]]` table as a JSON object (the config file's keys);
    /// `None` for a deleted service.
    pub table: Option<String>,
    /// Whether the admin API created the service (rather than changed one
    /// of the config file's): it is then matched before the file's
    /// services, and a same-named entry the file gains later does not
    /// move it.
    pub created: bool,
    /// Increases with every change of any service: a replica that has seen
    /// version `n` has nothing to do until a larger one appears.
    pub version: u64,
    /// When (unix seconds).
    pub at: u64,
    /// The admin credential's name that made it.
    pub by: String,
}

/// A payment the operator revoked: no credential naming its payment hash
/// is served again, through any scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The payment's hash.
    pub payment_hash: [u8; 32],
    /// Increases with every revocation, for replicas catching up.
    pub seq: u64,
    /// When (unix seconds).
    pub at: u64,
    /// The admin credential's name that revoked it.
    pub by: String,
}

/// The latest versions of the admin tables: a replica compares them with
/// what it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdminVersions {
    /// The largest [`ServiceChange::version`].
    pub services: u64,
    /// The largest [`Revocation::seq`].
    pub revocations: u64,
}

/// 402s issued by a service in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeCount {
    /// The service.
    pub service: String,
    /// The hour's start (unix seconds, a multiple of 3600).
    pub hour: u64,
    /// How many 402s.
    pub count: u64,
}

/// Which payments to find; every filter set must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PaymentQuery {
    /// First served at or after (unix seconds).
    pub since: u64,
    /// First served before (unix seconds).
    pub until: u64,
    /// Of this service.
    pub service: Option<String>,
    /// Through this scheme (`L402`, `Payment`, `x402`).
    pub scheme: Option<String>,
    /// This payment.
    pub payment_hash: Option<[u8; 32]>,
    /// At most this many, newest first.
    pub limit: u64,
}

/// A payment as the store counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    /// The paid invoice's hash.
    pub payment_hash: [u8; 32],
    /// The service it paid for.
    pub service: String,
    /// The scheme it was first presented through.
    pub scheme: String,
    /// The amount.
    pub amount_msat: u64,
    /// When it first served (unix seconds).
    pub first_served_at: u64,
    /// When it last served (unix seconds).
    pub last_served_at: u64,
    /// Requests it served.
    pub served: u64,
}

/// Payments of one service whose first request fell in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueBucket {
    /// The service.
    pub service: String,
    /// The bucket's start (unix seconds, a multiple of its width).
    pub start: u64,
    /// Payments.
    pub payments: u64,
    /// Their amounts, summed.
    pub amount_msat: u64,
    /// Requests they served.
    pub served: u64,
    /// Refunds paid: the unspent balances of sessions closed in the
    /// bucket whose refund succeeded, each in the whole satoshis paid,
    /// summed.
    pub refunded_msat: u64,
}

/// One change the admin API made, with who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (unix seconds).
    pub at: u64,
    /// The admin credential's name.
    pub who: String,
    /// What was done (`service.update`, `token.revoke`…).
    pub action: String,
    /// To what (a service name, a payment hash).
    pub target: String,
    /// Details as JSON.
    pub detail: String,
}
