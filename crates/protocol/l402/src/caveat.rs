//! The L402 caveat language and the satisfiers that check it.
//!
//! Caveats are `condition=value` strings. The ones gate402 issues and
//! checks, as Aperture does:
//!
//! - `services=name:tier[,name:tier]`: the services the token may call;
//! - `<service>_capabilities=a,b`: what it may do on that service;
//! - `<service>_valid_until=<unix seconds>`: when it stops working there;
//! - `<service>_uses=1`: it buys one request there, not a period (gate402's
//!   own: a per-request service sells single-use tokens; peers that do not
//!   know it skip it, and the gateway that minted it enforces it);
//! - `<service>_balance=<sats>`: it names a prepaid balance there, the
//!   deposit of its invoice, spent a unit price per request (gate402's own,
//!   like `_uses`); the balance is the session keyed by its payment hash,
//!   and the first such caveat (the minted one) alone names its deposit;
//! - `<service>_pass=1`: it is a pass there, good until its
//!   `_valid_until` (gate402's own; minted so that a `_balance` or `_uses`
//!   a holder appends comes after it and changes nothing);
//! - `<service>_pass_secs=<seconds>`: how long a pass lasts from its first
//!   use (gate402's own; the gateway keeps when each pass was first used,
//!   and `_valid_until` still bounds it);
//! - `<capability>_<constraint>=value`: application constraints, checked by
//!   satisfiers the application supplies.
//!
//! A condition that appears more than once may only narrow what came before
//! it (a holder can attenuate a token, never widen it). Conditions no
//! satisfier knows are skipped, never an error: the client may add its own
//! (the gRPC form adds `preimage=`).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

/// A decoded `condition=value` caveat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caveat {
    /// The part before the first `=`.
    pub condition: String,
    /// The part after it.
    pub value: String,
}

impl Caveat {
    /// A caveat from its parts.
    pub fn new(condition: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            condition: condition.into(),
            value: value.into(),
        }
    }

    /// Splits `condition=value` at the first `=`; `None` for anything else.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let (condition, value) = text.split_once('=')?;
        Some(Self::new(condition, value))
    }

    /// `services=name:tier,...`.
    pub fn services(services: &[Service]) -> Self {
        let list: Vec<String> = services.iter().map(Service::to_string).collect();
        Self::new(SERVICES, list.join(","))
    }

    /// `<service>_capabilities=a,b`.
    pub fn capabilities(service: &str, capabilities: &[&str]) -> Self {
        Self::new(
            format!("{service}{CAPABILITIES_SUFFIX}"),
            capabilities.join(","),
        )
    }

    /// `<service>_valid_until=<unix seconds>`.
    pub fn valid_until(service: &str, unix_seconds: u64) -> Self {
        Self::new(
            format!("{service}{VALID_UNTIL_SUFFIX}"),
            unix_seconds.to_string(),
        )
    }
}

impl Caveat {
    /// `<service>_uses=<n>`: the token buys `n` requests of `service`.
    pub fn uses(service: &str, n: u64) -> Self {
        Self::new(format!("{service}{USES_SUFFIX}"), n.to_string())
    }

    /// `<service>_balance=<sats>`: the token names a prepaid balance of
    /// `sats` (its invoice's deposit), spent per request of `service`.
    pub fn balance(service: &str, deposit_sats: u64) -> Self {
        Self::new(
            format!("{service}{BALANCE_SUFFIX}"),
            deposit_sats.to_string(),
        )
    }

    /// `<service>_pass=1`: the token is a pass for `service`.
    pub fn pass(service: &str) -> Self {
        Self::new(format!("{service}{PASS_SUFFIX}"), "1".to_owned())
    }

    /// `<service>_pass_secs=<seconds>`: the pass lasts `secs` from its
    /// first use.
    pub fn pass_secs(service: &str, secs: u64) -> Self {
        Self::new(format!("{service}{PASS_SECS_SUFFIX}"), secs.to_string())
    }
}

/// What a token's caveats say it buys from one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Terms {
    /// The earliest `<service>_valid_until` (unix seconds), if any.
    pub valid_until: Option<u64>,
    /// The fewest `<service>_uses`, if any: a value that is not a count
    /// reads as 1, the narrowest.
    pub uses: Option<u64>,
    /// The first `<service>_balance` (sats), if any: the deposit the token
    /// was minted with, which later caveats do not change (a value that is
    /// not a number reads as 0).
    pub balance: Option<u64>,
    /// The fewest `<service>_pass_secs`, if any: a value that is not a
    /// number reads as 0, the narrowest.
    pub pass_secs: Option<u64>,
}

/// Reads [`Terms`] for `service` from a token's first-party caveats.
pub fn terms<'a>(caveats: impl IntoIterator<Item = &'a [u8]>, service: &str) -> Terms {
    let mut terms = Terms::default();
    for caveat in caveats.into_iter().filter_map(Caveat::parse) {
        let Some(suffix) = caveat.condition.strip_prefix(service) else {
            continue;
        };
        let earliest = |known: Option<u64>, new: u64| Some(known.map_or(new, |k| k.min(new)));
        if suffix == VALID_UNTIL_SUFFIX {
            if let Ok(at) = caveat.value.parse() {
                terms.valid_until = earliest(terms.valid_until, at);
            }
        } else if suffix == USES_SUFFIX {
            let n = caveat.value.parse::<u64>().ok().filter(|n| *n > 0);
            terms.uses = earliest(terms.uses, n.unwrap_or(1));
        } else if suffix == BALANCE_SUFFIX && terms.balance.is_none() {
            // The first is the one minted with the token; caveats a holder
            // appends cannot change the deposit it names.
            terms.balance = Some(caveat.value.parse::<u64>().unwrap_or(0));
        } else if suffix == PASS_SECS_SUFFIX {
            terms.pass_secs = earliest(terms.pass_secs, caveat.value.parse().unwrap_or(0));
        }
    }
    terms
}

/// What a token was sold as for one service, by the first of its
/// `<service>_uses`, `<service>_balance` and `<service>_pass` caveats: the
/// gateway mints exactly one of them, and a holder can only append caveats
/// after it, so an appended one never changes the sale. (A pass minted
/// before passes carried `_pass` has none: one appended to it is the
/// first, and the gateway opens such a balance only if the token's
/// invoice paid its deposit.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sale {
    /// `<service>_uses` came first: requests, each claimed once.
    Requests,
    /// `<service>_balance` came first: a prepaid balance.
    Balance,
    /// `<service>_pass` came first, or none of the three is there: a
    /// pass, good until `<service>_valid_until`.
    Pass,
}

/// Reads the [`Sale`] for `service` from a token's first-party caveats.
pub fn sold_as<'a>(caveats: impl IntoIterator<Item = &'a [u8]>, service: &str) -> Sale {
    caveats
        .into_iter()
        .filter_map(Caveat::parse)
        .find_map(|caveat| match caveat.condition.strip_prefix(service)? {
            USES_SUFFIX => Some(Sale::Requests),
            BALANCE_SUFFIX => Some(Sale::Balance),
            PASS_SUFFIX => Some(Sale::Pass),
            _ => None,
        })
        .unwrap_or(Sale::Pass)
}

impl std::fmt::Display for Caveat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.condition, self.value)
    }
}

/// The condition of the services caveat.
pub const SERVICES: &str = "services";
/// Suffix of the capabilities condition.
pub const CAPABILITIES_SUFFIX: &str = "_capabilities";
/// Suffix of the expiry condition.
pub const VALID_UNTIL_SUFFIX: &str = "_valid_until";
/// Suffix of the condition that counts the requests a token buys.
pub const USES_SUFFIX: &str = "_uses";
/// The suffix of the per-service balance condition.
pub const BALANCE_SUFFIX: &str = "_balance";
/// The suffix of the condition that marks a pass.
pub const PASS_SUFFIX: &str = "_pass";
/// The suffix of the condition that says how long a pass lasts from its
/// first use.
pub const PASS_SECS_SUFFIX: &str = "_pass_secs";

/// One entry of a `services` caveat.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Service {
    /// Service name, as in the gateway's config.
    pub name: String,
    /// Pricing tier (Aperture always writes 0).
    pub tier: u8,
}

impl Service {
    /// A service at tier 0.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tier: 0,
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tier)
    }
}

/// Why the caveats of a token do not allow a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaveatError {
    /// A value that does not parse for its condition.
    #[error("caveat {condition} has an invalid value {value:?}")]
    InvalidValue {
        /// The condition.
        condition: String,
        /// The offending value.
        value: String,
    },
    /// A repeated caveat that widens the previous one.
    #[error("caveat {0} widens an earlier caveat of the same condition")]
    Widened(String),
    /// The service is not among the token's services.
    #[error("token is not valid for service {0}")]
    ServiceNotAllowed(String),
    /// The capability is not among the token's capabilities.
    #[error("token lacks capability {capability} on service {service}")]
    CapabilityNotAllowed {
        /// The service.
        service: String,
        /// The capability the request needs.
        capability: String,
    },
    /// `_valid_until` has passed.
    #[error("token for service {service} expired at {valid_until} (unix)")]
    Expired {
        /// The service.
        service: String,
        /// The expiry, unix seconds.
        valid_until: u64,
    },
    /// An application constraint refused the request.
    #[error("constraint {condition} not satisfied: {reason}")]
    Constraint {
        /// The condition.
        condition: String,
        /// Why.
        reason: String,
    },
}

/// Checks every caveat of one condition: each against the one before it
/// (narrowing), then the last against the request.
pub trait Satisfier {
    /// The condition this satisfier checks.
    fn condition(&self) -> &str;

    /// `current` follows `previous` with the same condition: it may only narrow.
    fn satisfy_previous(&self, previous: &str, current: &str) -> Result<(), CaveatError>;

    /// The last (most restrictive) value against the request.
    fn satisfy_final(&self, value: &str) -> Result<(), CaveatError>;
}

/// What a request asks of a token.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The service the request is for.
    pub service: String,
    /// The capability the route needs, if any.
    pub capability: Option<String>,
    /// The time to check expiry against.
    pub now: SystemTime,
}

impl RequestContext {
    /// A request for `service` at the current time, needing no capability.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            capability: None,
            now: SystemTime::now(),
        }
    }

    /// The satisfiers every L402 request is checked with.
    pub fn satisfiers(&self) -> [Box<dyn Satisfier + '_>; 3] {
        [
            Box::new(ServicesSatisfier { ctx: self }),
            Box::new(CapabilitiesSatisfier {
                ctx: self,
                condition: format!("{}{CAPABILITIES_SUFFIX}", self.service),
            }),
            Box::new(ValidUntilSatisfier {
                ctx: self,
                condition: format!("{}{VALID_UNTIL_SUFFIX}", self.service),
            }),
        ]
    }
}

/// Checks caveats against a request: the built-in satisfiers for `ctx`
/// (services, capabilities, expiry) plus the application's `extra` ones.
pub fn check_request<'a>(
    caveats: impl IntoIterator<Item = &'a [u8]>,
    ctx: &RequestContext,
    extra: &[&dyn Satisfier],
) -> Result<(), CaveatError> {
    let builtin = ctx.satisfiers();
    let satisfiers: Vec<&dyn Satisfier> = builtin
        .iter()
        .map(|s| s.as_ref())
        .chain(extra.iter().copied())
        .collect();
    check(caveats, &satisfiers)
}

/// Runs `satisfiers` over the caveats; caveats no satisfier claims are skipped.
pub fn check<'a>(
    caveats: impl IntoIterator<Item = &'a [u8]>,
    satisfiers: &[&dyn Satisfier],
) -> Result<(), CaveatError> {
    let caveats: Vec<Caveat> = caveats.into_iter().filter_map(Caveat::parse).collect();
    for satisfier in satisfiers {
        let mut values = caveats
            .iter()
            .filter(|c| c.condition == satisfier.condition())
            .map(|c| c.value.as_str());
        let Some(mut last) = values.next() else {
            continue;
        };
        for value in values {
            satisfier.satisfy_previous(last, value)?;
            last = value;
        }
        satisfier.satisfy_final(last)?;
    }
    Ok(())
}

/// Parses a services list (`name:tier,name:tier`).
pub fn parse_services(value: &str) -> Result<Vec<Service>, CaveatError> {
    let invalid = || CaveatError::InvalidValue {
        condition: SERVICES.into(),
        value: value.into(),
    };
    value
        .split(',')
        .map(|entry| {
            let (name, tier) = entry.split_once(':').ok_or_else(invalid)?;
            if name.is_empty() {
                return Err(invalid());
            }
            let tier = tier.parse().map_err(|_| invalid())?;
            Ok(Service {
                name: name.into(),
                tier,
            })
        })
        .collect()
}

fn list(value: &str) -> BTreeSet<&str> {
    value.split(',').filter(|s| !s.is_empty()).collect()
}

struct ServicesSatisfier<'a> {
    ctx: &'a RequestContext,
}

impl Satisfier for ServicesSatisfier<'_> {
    fn condition(&self) -> &str {
        SERVICES
    }

    fn satisfy_previous(&self, previous: &str, current: &str) -> Result<(), CaveatError> {
        let previous: BTreeSet<_> = parse_services(previous)?.into_iter().collect();
        let current: BTreeSet<_> = parse_services(current)?.into_iter().collect();
        if current.is_subset(&previous) {
            Ok(())
        } else {
            Err(CaveatError::Widened(SERVICES.into()))
        }
    }

    fn satisfy_final(&self, value: &str) -> Result<(), CaveatError> {
        if parse_services(value)?
            .iter()
            .any(|s| s.name == self.ctx.service)
        {
            Ok(())
        } else {
            Err(CaveatError::ServiceNotAllowed(self.ctx.service.clone()))
        }
    }
}

struct CapabilitiesSatisfier<'a> {
    ctx: &'a RequestContext,
    condition: String,
}

impl Satisfier for CapabilitiesSatisfier<'_> {
    fn condition(&self) -> &str {
        &self.condition
    }

    fn satisfy_previous(&self, previous: &str, current: &str) -> Result<(), CaveatError> {
        if list(current).is_subset(&list(previous)) {
            Ok(())
        } else {
            Err(CaveatError::Widened(self.condition.clone()))
        }
    }

    fn satisfy_final(&self, value: &str) -> Result<(), CaveatError> {
        match &self.ctx.capability {
            Some(capability) if !list(value).contains(capability.as_str()) => {
                Err(CaveatError::CapabilityNotAllowed {
                    service: self.ctx.service.clone(),
                    capability: capability.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

struct ValidUntilSatisfier<'a> {
    ctx: &'a RequestContext,
    condition: String,
}

impl ValidUntilSatisfier<'_> {
    fn parse(&self, value: &str) -> Result<u64, CaveatError> {
        value.parse().map_err(|_| CaveatError::InvalidValue {
            condition: self.condition.clone(),
            value: value.into(),
        })
    }
}

impl Satisfier for ValidUntilSatisfier<'_> {
    fn condition(&self) -> &str {
        &self.condition
    }

    fn satisfy_previous(&self, previous: &str, current: &str) -> Result<(), CaveatError> {
        if self.parse(current)? <= self.parse(previous)? {
            Ok(())
        } else {
            Err(CaveatError::Widened(self.condition.clone()))
        }
    }

    fn satisfy_final(&self, value: &str) -> Result<(), CaveatError> {
        let valid_until = self.parse(value)?;
        let now = self
            .ctx
            .now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now < valid_until {
            Ok(())
        } else {
            Err(CaveatError::Expired {
                service: self.ctx.service.clone(),
                valid_until,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx(service: &str, capability: Option<&str>, now: u64) -> RequestContext {
        RequestContext {
            service: service.into(),
            capability: capability.map(Into::into),
            now: UNIX_EPOCH + Duration::from_secs(now),
        }
    }

    fn run(caveats: &[&str], ctx: &RequestContext) -> Result<(), CaveatError> {
        check_request(caveats.iter().map(|c| c.as_bytes()), ctx, &[])
    }

    #[test]
    fn services() {
        let c = ctx("weather", None, 0);
        assert!(run(&["services=weather:0,maps:0"], &c).is_ok());
        assert_eq!(
            run(&["services=maps:0"], &c),
            Err(CaveatError::ServiceNotAllowed("weather".into()))
        );
        assert!(run(&["services=weather:0,maps:0", "services=weather:0"], &c).is_ok());
        assert_eq!(
            run(&["services=weather:0", "services=weather:0,maps:0"], &c),
            Err(CaveatError::Widened("services".into()))
        );
        assert!(matches!(
            run(&["services=weather"], &c),
            Err(CaveatError::InvalidValue { .. })
        ));
    }

    #[test]
    fn capabilities() {
        let c = ctx("weather", Some("forecast"), 0);
        assert!(run(&["weather_capabilities=forecast,history"], &c).is_ok());
        assert!(matches!(
            run(&["weather_capabilities=history"], &c),
            Err(CaveatError::CapabilityNotAllowed { .. })
        ));
        assert!(matches!(
            run(
                &[
                    "weather_capabilities=forecast",
                    "weather_capabilities=forecast,history"
                ],
                &c
            ),
            Err(CaveatError::Widened(_))
        ));
        // No capability needed: an empty list (as Aperture writes) is fine.
        assert!(run(&["weather_capabilities="], &ctx("weather", None, 0)).is_ok());
        // Another service's capabilities do not apply.
        assert!(run(&["maps_capabilities="], &c).is_ok());
    }

    #[test]
    fn valid_until() {
        assert!(run(&["weather_valid_until=100"], &ctx("weather", None, 99)).is_ok());
        assert_eq!(
            run(&["weather_valid_until=100"], &ctx("weather", None, 100)),
            Err(CaveatError::Expired {
                service: "weather".into(),
                valid_until: 100
            })
        );
        assert!(matches!(
            run(
                &["weather_valid_until=100", "weather_valid_until=200"],
                &ctx("weather", None, 0)
            ),
            Err(CaveatError::Widened(_))
        ));
        assert!(run(
            &["weather_valid_until=200", "weather_valid_until=100"],
            &ctx("weather", None, 50)
        )
        .is_ok());
    }

    #[test]
    fn terms_take_the_narrowest_of_each_condition() {
        let caveats = [
            Caveat::valid_until("svc", 500),
            Caveat::uses("svc", 3),
            Caveat::valid_until("svc", 400),
            Caveat::uses("svc", 1),
            Caveat::valid_until("other", 100),
            Caveat::uses("other", 1),
            Caveat::balance("svc", 150),
            Caveat::balance("svc", 200),
            Caveat::balance("other", 1),
            Caveat::pass_secs("svc", 60),
            Caveat::pass_secs("svc", 3600),
            Caveat::pass_secs("other", 1),
        ];
        let raw: Vec<String> = caveats.iter().map(Caveat::to_string).collect();
        let bytes = raw.iter().map(|c| c.as_bytes());
        assert_eq!(
            terms(bytes, "svc"),
            Terms {
                valid_until: Some(400),
                uses: Some(1),
                balance: Some(150),
                pass_secs: Some(60),
            }
        );
        // A pass's length is not a pass's mark, nor another service's.
        assert_eq!(
            sold_as(["svc_pass_secs=60", "svc_uses=1"].map(str::as_bytes), "svc"),
            Sale::Requests
        );
        assert_eq!(
            terms(["svc_pass_secs=x".as_bytes()], "svc").pass_secs,
            Some(0)
        );
        assert_eq!(
            terms(["svc_pass_secs=9".as_bytes()], "svc_pass").pass_secs,
            None
        );
        // A holder can only lower a balance, never raise it.
        assert_eq!(
            terms(
                ["svc_balance=100", "svc_balance=9999"].map(str::as_bytes),
                "svc"
            )
            .balance,
            Some(100)
        );
        assert_eq!(terms(["svc_balance=x".as_bytes()], "svc").balance, Some(0));
        assert_eq!(terms(["svc_uses=x".as_bytes()], "svc").uses, Some(1));
        assert_eq!(terms(["svc_uses=0".as_bytes()], "svc").uses, Some(1));
        assert_eq!(
            terms(["services=svc:0".as_bytes()], "svc"),
            Terms::default()
        );
    }

    #[test]
    fn the_first_of_uses_and_balance_says_what_was_sold() {
        let sale = |caveats: &[&str]| sold_as(caveats.iter().map(|c| c.as_bytes()), "svc");
        assert_eq!(sale(&["services=svc:0", "svc_valid_until=9"]), Sale::Pass);
        assert_eq!(
            sale(&["svc_valid_until=9", "svc_uses=1", "svc_balance=1000"]),
            Sale::Requests
        );
        assert_eq!(
            sale(&["svc_valid_until=9", "svc_balance=10", "svc_uses=1"]),
            Sale::Balance
        );
        assert_eq!(sale(&["other_balance=10", "svc_uses=1"]), Sale::Requests);
        assert_eq!(sale(&["svc_usesx=1", "svc_balance=3"]), Sale::Balance);
        // A pass minted with its mark stays a pass.
        assert_eq!(
            sale(&[
                "services=svc:0",
                "svc_valid_until=9",
                "svc_pass=1",
                "svc_balance=3"
            ]),
            Sale::Pass
        );
    }

    #[test]
    fn unknown_caveats_are_skipped() {
        let c = ctx("weather", None, 0);
        assert!(run(&["preimage=00ff", "no equals sign", "color=blue"], &c).is_ok());
        assert!(check([&[0xffu8, 0xfe][..]], &[]).is_ok());
    }

    #[test]
    fn caveat_formats() {
        assert_eq!(
            Caveat::services(&[Service::new("a"), Service::new("b")]).to_string(),
            "services=a:0,b:0"
        );
        assert_eq!(
            Caveat::capabilities("a", &["x", "y"]).to_string(),
            "a_capabilities=x,y"
        );
        assert_eq!(Caveat::valid_until("a", 5).to_string(), "a_valid_until=5");
        assert_eq!(Caveat::parse(b"k=v=w"), Some(Caveat::new("k", "v=w")));
    }
}
