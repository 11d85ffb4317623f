//! The gate402 paywall as a tower layer: a request to a priced route gets
//! `402 Payment Required` with one Lightning invoice offered through two
//! protocols, L402 (a macaroon bound to the invoice) and MPP (the IETF
//! `Payment` scheme), and x402 where a service asks for it; a paid retry is
//! verified, served once, and answered with a `Payment-Receipt`.
//!
//! No config format, no Lightning backend, no MCP: a
//! [`LightningBackend`](gate402_lightning::LightningBackend) and a
//! [`Store`](gate402_store::Store) come in as traits, and the layer is
//! generic over request and response bodies, so it fits any tower, hyper
//! or axum stack. One module per rule:
//!
//! - [`route`]: priced services, the normalized request path and host,
//!   and which service they name (the path matched is the path forwarded);
//! - [`credentials`]: finding payment credentials and stripping them;
//! - `verify`: L402 and MPP verification; `x402`: x402's offer and its
//!   settled-invoice check;
//! - [`claims`]: single use, keyed by payment hash and fenced by holder;
//! - `meter`: event streams charged per event from a balance;
//! - `sessions`: prepaid balances (the MPP session intent, L402 balance
//!   tokens): opened once, spent atomically, topped up, refunded on close;
//! - [`idempotency`]: `Idempotency-Key`, paid responses kept and replayed;
//! - [`pricing`]: prices that depend on the request (rules, a pricer);
//! - [`issue`]: the invoice and its challenges;
//! - [`payment_id`]: the bearer id of MCP's `create_payment` flow;
//! - [`responses`]: 400/401/402/429/503 problem bodies;
//! - [`head`]: answers to HEAD, their fields without a body;
//! - [`client`]: who the client is, behind trusted proxies;
//! - [`limits`]: rate limits and the unpaid-invoice cap;
//! - [`observe`]: the request span, store and Lightning calls timed and
//!   traced;
//! - [`layer`]: all of it as a [`tower_layer::Layer`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use gate402_paywall::{Paywall, PricedService};
//! use tower::ServiceExt;
//!
//! let dir = tempfile::tempdir()?;
//! // Test money; a real node (ldk, LND, CLN, NWC) is another backend.
//! let backend = Arc::new(gate402_lightning_sandbox::Sandbox::open(dir.path())?);
//! let store = Arc::new(gate402_store::SqliteStore::open(&dir.path().join("paywall.sqlite3"))?);
//! let paywall = Paywall::builder(backend, store, "a secret of at least thirty-two bytes")?
//!     .services([PricedService::new("weather", "/weather", 10)])
//!     .build()
//!     .await?;
//! let app = axum::Router::new()
//!     .route("/weather", axum::routing::get(|| async { "sunny" }))
//!     .route("/hello", axum::routing::get(|| async { "free" }))
//!     .layer(paywall.layer());
//!
//! let unpaid = http::Request::get("/weather").body(axum::body::Body::empty())?;
//! let response = app.clone().oneshot(unpaid).await?;
//! assert_eq!(response.status(), 402);
//! assert!(response.headers()["www-authenticate"].to_str()?.starts_with("L402 macaroon="));
//!
//! let free = http::Request::get("/hello").body(axum::body::Body::empty())?;
//! assert_eq!(app.oneshot(free).await?.status(), 200);
//! paywall.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod batch;
mod body;
mod charge;
pub mod claims;
pub mod client;
mod clock;
pub mod credentials;
mod detached;
pub mod fields;
#[cfg(test)]
mod fixture;
pub mod head;
pub mod idempotency;
pub mod issue;
mod issued;
pub mod layer;
pub mod limits;
mod meter;
pub mod metrics;
pub mod observe;
mod pass_period;
pub mod payment_id;
mod paywall;
pub mod pricing;
pub mod responses;
mod retry;
pub mod route;
mod sessions;
mod verify;
mod x402;

pub use claims::{Claim, ClaimError, FAILURES_PER_PAYMENT};
pub use client::{
    is_forwarding_header, remove_forwarding_headers, ClientAddr, ClientKey, ForwardedHeader,
    PeerAddr, TrustedProxies,
};
pub use clock::{time_bound, unix_now};
pub use idempotency::IdempotencyConfig;
pub use issue::{Binding, Doors};
pub use issued::Issued;
pub use layer::{
    ClientPresence, NotReached, OtherMethods, PartlySent, PaywallBody, PaywallLayer,
    PaywallService, Routed, UpstreamOutcome,
};
pub use limits::{Limited, LimitsConfig};
pub use metrics::Metrics;
pub use observe::{ObservedBackend, ObservedStore};
pub use paywall::{
    Paywall, PaywallBuilder, PaywallError, DEFAULT_CLAIM_LEASE, DEFAULT_MAX_BODY_BYTES,
};
pub use pricing::Pricing;
pub use responses::Refusal;
pub use route::{Auth, Meter, PricedService, SaleTerms, Schemes, Sells, Usage};
pub use sessions::SessionClose;
pub use verify::Verified;

/// A map looked up on every paid request (verified passes, scoped
/// challenge keys, a service's counters, served payments). foldhash's
/// fast hasher hashes its keys (a token of a few hundred bytes, a service
/// name, a payment hash) several times faster than the standard SipHash.
/// Its seed varies by process and by map, but foldhash does not claim to
/// resist keys chosen to collide; these maps stay safe by what they hold:
/// service names from the configuration or an upstream, payment hashes
/// from the node, and passes a client spelled, but only ones that
/// verified and at most 1,024 of them (`verify::Passes`).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
