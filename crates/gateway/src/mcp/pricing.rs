//! What each tool costs.

use std::collections::HashMap;
use std::sync::Arc;

use gate402_paywall::PricedService;

/// What each tool costs: per-tool paid services, tools marked free, and a
/// default price for tools not named. A tool that is none of these is
/// refused: an operator who forgot to price a tool must not give it away.
#[derive(Clone, Default)]
pub struct Pricing {
    tools: HashMap<String, Arc<PricedService>>,
    /// Named with price 0: free even when a default applies.
    free: std::collections::HashSet<String>,
    /// Tools whose service is disabled or gone: not sold, whatever the
    /// default.
    unavailable: std::collections::HashSet<String>,
    default_sats: Option<u64>,
}

/// What one call of a tool costs.
pub(super) enum ToolPrice {
    /// Nothing: it is marked free.
    Free,
    /// This service's price.
    Paid(Arc<PricedService>),
    /// Nobody priced it: it is not served.
    Unpriced,
    /// The service it calls is disabled or gone: it is not served.
    Unavailable,
}

impl Pricing {
    /// Prices from paid services named `mcp/<tool>`.
    pub fn new(services: impl IntoIterator<Item = (String, Arc<PricedService>)>) -> Self {
        Self {
            tools: services.into_iter().collect(),
            free: Default::default(),
            unavailable: Default::default(),
            default_sats: None,
        }
    }

    /// These prices, with `tools` not served.
    pub fn without(mut self, tools: impl IntoIterator<Item = String>) -> Self {
        self.unavailable.extend(tools);
        self
    }

    /// Prices per tool name, and a default for the rest (the proxy's).
    pub fn per_tool(prices: &HashMap<String, u64>, default_sats: Option<u64>) -> Self {
        let mut pricing = Self::new(
            prices
                .iter()
                .filter(|(_, price)| **price > 0)
                .map(|(tool, price)| (tool.clone(), Arc::new(charge(tool, *price, tool)))),
        );
        pricing.free = prices
            .iter()
            .filter(|(_, price)| **price == 0)
            .map(|(tool, _)| tool.clone())
            .collect();
        pricing.default_sats = default_sats.filter(|p| *p > 0);
        pricing
    }

    /// What a call of `tool` costs.
    pub(super) fn price(&self, tool: &str, description: &str) -> ToolPrice {
        if self.unavailable.contains(tool) {
            return ToolPrice::Unavailable;
        }
        if let Some(service) = self.tools.get(tool) {
            return ToolPrice::Paid(service.clone());
        }
        if self.free.contains(tool) {
            return ToolPrice::Free;
        }
        match self.default_sats {
            Some(price) => ToolPrice::Paid(Arc::new(charge(tool, price, description))),
            None => ToolPrice::Unpriced,
        }
    }
}

/// A paid service that charges `price_sats` per call of `tool`, paid with MPP.
fn charge(tool: &str, price_sats: u64, description: &str) -> PricedService {
    let mut service = PricedService::new(&crate::config::tool_books_name(tool), "/mcp", price_sats);
    service.description = description.to_owned();
    service.schemes = gate402_paywall::Schemes::MPP;
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_nobody_priced_is_refused_not_given_away() {
        let prices = HashMap::from([("search".to_owned(), 20), ("ping".to_owned(), 0)]);
        let pricing = Pricing::per_tool(&prices, None);
        assert!(matches!(pricing.price("search", ""), ToolPrice::Paid(s) if s.price_sats == 20));
        assert!(matches!(pricing.price("ping", ""), ToolPrice::Free));
        assert!(matches!(
            pricing.price("delete_everything", ""),
            ToolPrice::Unpriced
        ));
        let pricing = Pricing::per_tool(&prices, Some(5));
        assert!(matches!(pricing.price("other", ""), ToolPrice::Paid(s) if s.price_sats == 5));
        assert!(matches!(pricing.price("ping", ""), ToolPrice::Free));
        let pricing = pricing.without(["search".to_owned(), "other".to_owned()]);
        assert!(matches!(
            pricing.price("search", ""),
            ToolPrice::Unavailable
        ));
        assert!(matches!(pricing.price("other", ""), ToolPrice::Unavailable));
    }
}
