//! What is sold where: a priced service is a route (host, path, methods)
//! with a price and the rules of payment. Where a paid request then goes
//! (an upstream, an app's handler) is not the paywall's business.

use http::Method;

use super::{HostPattern, PathPattern};

/// Whether a service charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Every call pays.
    On,
    /// No paywall: the request passes (credentials are still stripped).
    Off,
    /// This many free calls per client, then pay.
    Freebie(u64),
}

/// Which payment schemes a service offers on its one invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schemes {
    /// L402 and MPP.
    Both,
    /// L402 only.
    L402,
    /// MPP only.
    Mpp,
}

impl Schemes {
    /// Whether L402 is offered.
    pub fn l402(self) -> bool {
        matches!(self, Schemes::Both | Schemes::L402)
    }

    /// Whether MPP is offered.
    pub fn mpp(self) -> bool {
        matches!(self, Schemes::Both | Schemes::Mpp)
    }
}

/// One priced service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedService {
    /// Unique name: the L402 `services` caveat, the MPP challenge's scope,
    /// the metrics label.
    pub name: String,
    /// The host it answers on; any host when unset.
    pub host: Option<HostPattern>,
    /// Its path pattern.
    pub path: PathPattern,
    /// Its HTTP methods; all when empty (HEAD goes with GET).
    pub methods: Vec<Method>,
    /// The price of one call, in satoshis.
    pub price_sats: u64,
    /// Whether it charges.
    pub auth: Auth,
    /// The schemes offered.
    pub schemes: Schemes,
    /// Seconds an L402 token stays valid, counted from its invoice's
    /// expiry so that a token paid at the last moment still lasts this long.
    pub token_lifetime_secs: u64,
    /// Shown in invoices, challenges and discovery.
    pub description: String,
}

impl PricedService {
    /// A service at `path` (`/exact` or `/prefix/*`) costing `price_sats`,
    /// every other setting default. A `path` that is not a pattern makes a
    /// service that matches nothing but that exact text's normal form.
    pub fn new(name: &str, path: &str, price_sats: u64) -> Self {
        Self {
            name: name.to_owned(),
            host: None,
            path: PathPattern::parse(path).unwrap_or(PathPattern::Exact(path.to_owned())),
            methods: Vec::new(),
            price_sats,
            auth: Auth::On,
            schemes: Schemes::Both,
            token_lifetime_secs: 3600,
            description: name.to_owned(),
        }
    }

    /// A free service at `path` (`auth = off`).
    pub fn free(name: &str, path: &str) -> Self {
        let mut service = Self::new(name, path, 0);
        service.auth = Auth::Off;
        service
    }

    /// Whether it takes payment at all.
    pub fn charges(&self) -> bool {
        self.auth != Auth::Off
    }
}
