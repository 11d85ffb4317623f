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
    /// Switched off by the operator: answers 503 and reaches no upstream.
    /// The route stays, so that no broader route takes its requests.
    Disabled,
}

/// Which payment schemes (doors) a service offers on its one invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schemes {
    /// L402 (macaroon + invoice; `LSAT` too).
    pub l402: bool,
    /// MPP, the `Payment` scheme with its Lightning charge.
    pub mpp: bool,
    /// x402's `PAYMENT-REQUIRED` with a Lightning entry (its Lightning
    /// scheme is still a draft, so off unless asked for).
    pub x402: bool,
}

impl Schemes {
    /// L402 and MPP (the default).
    pub const BOTH: Self = Self {
        l402: true,
        mpp: true,
        x402: false,
    };
    /// L402 only.
    pub const L402: Self = Self {
        l402: true,
        mpp: false,
        x402: false,
    };
    /// MPP only.
    pub const MPP: Self = Self {
        l402: false,
        mpp: true,
        x402: false,
    };
    /// Every door: L402, MPP and x402.
    pub const ALL: Self = Self {
        l402: true,
        mpp: true,
        x402: true,
    };
    /// x402 only.
    pub const X402: Self = Self {
        l402: false,
        mpp: false,
        x402: true,
    };

    /// Whether L402 is offered.
    pub fn l402(self) -> bool {
        self.l402
    }

    /// Whether MPP is offered.
    pub fn mpp(self) -> bool {
        self.mpp
    }

    /// Whether x402 is offered.
    pub fn x402(self) -> bool {
        self.x402
    }
}

/// What one payment buys from a service, through either door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sells {
    /// One request: an MPP credential and an L402 token alike serve one
    /// request each, claimed once (the token carries `<service>_uses=1`).
    #[default]
    Request,
    /// A period: the L402 token serves any number of requests until its
    /// `<service>_valid_until` (as Aperture's tokens do). An MPP
    /// credential is still single use: a charge is spent once.
    Pass,
    /// A prepaid balance: one payment deposits `deposit_units` times the
    /// price, spent the price per request through either door (an L402
    /// token naming the balance, or the MPP session intent's `bearer`),
    /// topped up and refunded on close (draft-lightning-session-00).
    Balance,
}

impl Sells {
    /// The config and discovery word: `request` or `pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sells::Request => "request",
            Sells::Pass => "pass",
            Sells::Balance => "balance",
        }
    }
}

/// What a request to a balance is charged for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Meter {
    /// The request: its price once.
    #[default]
    Request,
    /// Each event of a server-sent event stream: the price per event, spent
    /// as the stream flows (draft-lightning-session-00 §Streaming). A
    /// response that is not an event stream is charged as one request.
    Events,
    /// The units the upstream reports it used (the tokens of an LLM
    /// completion, say): the price per unit.
    Usage(Usage),
}

impl Meter {
    /// The config and discovery word: `request`, `events` or `usage`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Meter::Request => "request",
            Meter::Events => "events",
            Meter::Usage(_) => "usage",
        }
    }

    /// Whether what a response costs is read from its body (its events
    /// counted, or a usage field read): the body must then come unencoded.
    pub fn reads_body(&self) -> bool {
        match self {
            Meter::Request => false,
            Meter::Events => true,
            Meter::Usage(usage) => usage.field.is_some(),
        }
    }
}

/// Where the upstream reports the units a request used, and the most one
/// request may use.
///
/// The request holds `max_units` from the balance before it reaches the
/// upstream (so a balance never goes below zero, whatever is reported);
/// once the response has been sent, the units reported are kept (at most
/// `max_units`) and the rest given back. A response that reports none is
/// charged one unit; one whose report was not read (a body too large, or
/// not read to its end) `max_units`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// A response header holding the units as a decimal integer.
    pub header: Option<http::HeaderName>,
    /// A JSON pointer (RFC 6901, `/usage/total_tokens`) into the data of a
    /// server-sent event (the last event that has it counts), or of a JSON
    /// response body.
    pub field: Option<String>,
    /// The most units one request may use: what it holds.
    pub max_units: u64,
}

/// What one payment buys, serialized in camelCase: `{"sells": "request"}`;
/// `{"sells": "pass", "passSeconds": N}` (the L402 token's life; an MPP or
/// x402 payment serves one request); or `{"sells": "balance",
/// "depositSats": N, "idleTimeoutSeconds": N, "meter": "request" | "events"
/// | "usage"}` (a deposit spent a request, an event or a reported unit at a
/// time), with `"maxUnits": N` under `usage`: the units each request holds
/// from the balance (one is refused once less is left).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleTerms {
    /// `request`, `pass` or `balance`.
    pub sells: &'static str,
    /// A pass's life (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_seconds: Option<u64>,
    /// A balance's deposit (satoshis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deposit_sats: Option<u64>,
    /// How long an unused balance stays open (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    /// What a balance is charged for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter: Option<&'static str>,
    /// What each request holds from a usage-metered balance (units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_units: Option<u64>,
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
    /// What one payment buys.
    pub sells: Sells,
    /// Seconds an L402 token stays valid, counted from its invoice's
    /// expiry so that a token paid at the last moment still lasts this long:
    /// the length of a pass, or how long a per-request token may wait to be
    /// used.
    pub token_lifetime_secs: u64,
    /// Shown in invoices, challenges and discovery.
    pub description: String,
    /// For a balance: the deposit, in units of `price_sats`.
    pub deposit_units: u64,
    /// For a balance: seconds of inactivity after which a session is
    /// closed and its unspent balance refunded.
    pub session_idle_secs: u64,
    /// For a balance: what is charged, the request or each streamed event.
    pub meter: Meter,
    /// For a metered stream: seconds it is held, once the balance runs
    /// out, for a top-up before it ends with `session-timeout`.
    pub topup_wait_secs: u64,
    /// For a service that sells requests: prices that depend on the
    /// request (rules, a pricer), `price_sats` being the default
    /// ([`crate::pricing`]).
    pub pricing: Option<std::sync::Arc<crate::pricing::Pricing>>,
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
            schemes: Schemes::BOTH,
            sells: Sells::Request,
            token_lifetime_secs: 3600,
            description: name.to_owned(),
            deposit_units: gate402_mpp::session::DEFAULT_DEPOSIT_UNITS,
            session_idle_secs: gate402_mpp::session::DEFAULT_IDLE_TIMEOUT_SECS,
            meter: Meter::Request,
            topup_wait_secs: 60,
            pricing: None,
        }
    }

    /// A free service at `path` (`auth = off`).
    pub fn free(name: &str, path: &str) -> Self {
        let mut service = Self::new(name, path, 0);
        service.auth = Auth::Off;
        service
    }

    /// The same service sold as a pass of `secs` seconds per payment.
    pub fn pass(mut self, secs: u64) -> Self {
        self.sells = Sells::Pass;
        self.token_lifetime_secs = secs;
        self
    }

    /// The same service sold as a prepaid balance of `deposit_units`
    /// requests per deposit.
    pub fn balance(mut self, deposit_units: u64) -> Self {
        self.sells = Sells::Balance;
        self.deposit_units = deposit_units;
        self
    }

    /// What one request holds from a balance before it is served (msat):
    /// its price, or for usage, the most it may use.
    pub fn hold_msat(&self) -> u64 {
        self.price_sats
            .saturating_mul(self.held_units())
            .saturating_mul(1000)
    }

    /// What one payment buys, as a 402's body and the discovery documents
    /// state it.
    pub fn sale_terms(&self) -> SaleTerms {
        let balance = self.sells == Sells::Balance;
        SaleTerms {
            sells: self.sells.as_str(),
            pass_seconds: (self.sells == Sells::Pass).then_some(self.token_lifetime_secs),
            deposit_sats: balance.then(|| self.deposit_sats()),
            idle_timeout_seconds: balance.then_some(self.session_idle_secs),
            meter: balance.then(|| self.meter.as_str()),
            max_units: match &self.meter {
                Meter::Usage(_) if balance => Some(self.held_units()),
                _ => None,
            },
        }
    }

    /// The units one request holds: one, or for usage the most it may use.
    pub(crate) fn held_units(&self) -> u64 {
        match &self.meter {
            Meter::Usage(usage) => usage.max_units.max(1),
            _ => 1,
        }
    }

    /// The deposit of a balance, in satoshis: `deposit_units` at the
    /// price, and never less than one request holds ([`Self::hold_msat`]),
    /// so that every deposit can pay for a request.
    pub fn deposit_sats(&self) -> u64 {
        self.price_sats.saturating_mul(self.deposit_units_sold())
    }

    /// The units a deposit buys: `deposit_units`, or one request's hold
    /// when that is more.
    fn deposit_units_sold(&self) -> u64 {
        self.deposit_units.max(self.held_units())
    }

    /// What one invoice of this service asks for, in satoshis: the price,
    /// or a balance's deposit.
    pub fn invoice_sats(&self) -> u64 {
        match self.sells {
            Sells::Balance => self.deposit_sats(),
            _ => self.price_sats,
        }
    }

    /// Whether it is priced per request: it has pricing, charges, and
    /// sells single requests.
    pub fn is_dynamic(&self) -> bool {
        self.pricing.is_some()
            && matches!(self.auth, Auth::On | Auth::Freebie(_))
            && self.sells == Sells::Request
    }

    /// The price asked of a request that no price rule decides (sat): a
    /// pricer's fallback when the service has a pricer (which is asked
    /// then; `price_sats` never is), else `price_sats`.
    pub fn default_sats(&self) -> u64 {
        self.pricing
            .as_ref()
            .and_then(|p| p.pricer.as_ref())
            .map_or(self.price_sats, |pricer| pricer.fallback_sats)
    }

    /// What a 402 for one request asks, in words: [`PricedService::sale`],
    /// or for a service priced per request (this copy priced for the
    /// request at hand) that request's price.
    pub fn asked(&self) -> String {
        if self.is_dynamic() {
            format!(
                "{} sat for this request (its price depends on the request)",
                self.price_sats
            )
        } else {
            self.sale()
        }
    }

    /// What one payment buys, in words (for `serve --check` and logs):
    /// `10 sat per request`, `10 sat for a pass of 3600 s`, `free`,
    /// with the free calls first when there are some.
    pub fn sale(&self) -> String {
        let price = self.price_sats;
        let sold = match (self.auth, self.sells) {
            (Auth::Off, _) => return "free".into(),
            (_, Sells::Request) if self.pricing.as_ref().is_some_and(|p| p.pricer.is_some()) => {
                format!(
                    "priced per request by its rules or pricer ({} sat when the pricer gives none)",
                    self.default_sats()
                )
            }
            (_, Sells::Request) if self.pricing.is_some() => {
                format!("priced per request by its rules ({price} sat when none matches)")
            }
            (_, Sells::Request) => format!("{price} sat per request"),
            (_, Sells::Pass) => {
                // The other doors of its invoice buy one request instead.
                let others = match (self.schemes.mpp(), self.schemes.x402()) {
                    (true, true) => "; an MPP charge or an x402 payment serves one request",
                    (true, false) => "; an MPP charge serves one request",
                    (false, true) => "; an x402 payment serves one request",
                    (false, false) => "",
                };
                format!(
                    "{price} sat for a pass of {} s (L402{others})",
                    self.token_lifetime_secs
                )
            }
            (_, Sells::Balance) => format!(
                "a balance of {} sat ({} {}s at {price} sat; what an MPP session leaves is refunded on close, an L402 token's is not)",
                self.deposit_sats(),
                self.deposit_units_sold(),
                match self.meter {
                    Meter::Request => "request",
                    Meter::Events => "streamed event",
                    Meter::Usage(_) => "reported unit",
                }
            ),
        };
        match self.auth {
            Auth::Freebie(n) => format!("{n} free calls per client, then {sold}"),
            _ => sold,
        }
    }

    /// Whether it takes payment at all.
    pub fn charges(&self) -> bool {
        self.auth != Auth::Off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 402 of a service priced per request names that request's price,
    /// not the price of a request no rule decides.
    #[test]
    fn a_402_names_the_price_of_the_request_at_hand() {
        let mut service = PricedService::new("dyn", "/d", 50);
        service.pricing = Some(Default::default());
        let asked = service.asked();
        assert!(asked.starts_with("50 sat for this request"), "{asked}");
        assert!(!asked.contains("do not decide"), "{asked}");
        let fixed = PricedService::new("fixed", "/f", 10);
        assert_eq!(fixed.asked(), fixed.sale());
    }

    /// With a pricer, what a request no rule decides is asked is the
    /// pricer's fallback (the pricer answers, or it is asked): never
    /// `price_sats`, which `serve --check` and discovery named.
    #[test]
    fn the_default_price_of_a_service_with_a_pricer_is_its_fallback() {
        let mut service = PricedService::new("dyn", "/d", 10);
        service.pricing = Some(Default::default());
        assert_eq!(service.default_sats(), 10);
        assert!(service.sale().contains("(10 sat when none matches)"));
        service.pricing = Some(std::sync::Arc::new(crate::Pricing {
            rules: Vec::new(),
            pricer: Some(crate::pricing::PricerConfig {
                url: "http://127.0.0.1:9/price".into(),
                timeout: std::time::Duration::from_secs(1),
                fallback_sats: 30,
                cache_secs: 0,
            }),
        }));
        assert_eq!(service.default_sats(), 30);
        let sale = service.sale();
        assert!(
            sale.contains("(30 sat when the pricer gives none)"),
            "{sale}"
        );
    }

    /// A pass says what each other door of its invoice buys instead: x402
    /// went unnamed.
    #[test]
    fn a_pass_names_what_its_other_doors_buy() {
        let mut service = PricedService::new("pass", "/p", 10).pass(60);
        service.schemes = Schemes::ALL;
        assert_eq!(
            service.sale(),
            "10 sat for a pass of 60 s (L402; an MPP charge or an x402 payment serves one request)"
        );
        service.schemes = Schemes::L402;
        assert_eq!(service.sale(), "10 sat for a pass of 60 s (L402)");
    }

    #[test]
    fn a_deposit_always_pays_for_one_request() {
        let mut service = PricedService::new("usage", "/u", 2).balance(5);
        assert_eq!(service.deposit_sats(), 10);
        service.meter = Meter::Usage(Usage {
            header: None,
            field: Some("/usage".into()),
            max_units: 8,
        });
        // A request holds 8 units (16 sat): a deposit of 5 could pay none.
        assert_eq!(service.hold_msat(), 16_000);
        assert_eq!(service.deposit_sats(), 16);
        assert!(service.sale().contains("(8 reported units at 2 sat;"));
    }
}
