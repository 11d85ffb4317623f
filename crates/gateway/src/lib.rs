//! The gate402 gateway: a Lightning paywall speaking L402 and MPP at once.
//!
//! - [`paywall`]: the tower [`Layer`](tower::Layer) any axum or hyper app
//!   adds in a few lines;
//! - [`proxy`]: the reverse proxy it guards in `gate402 serve`;
//! - [`limits`]: rate limits and the cap on unpaid invoices per client;
//! - [`config`]: the TOML config, checked whole;
//! - [`mcp`]: the same priced services as paid MCP tools at `/mcp`, and
//!   the paywall in front of another MCP server;
//! - [`server`]: everything together, with health, metrics and discovery;
//! - [`demo`]: the built-in demo API of the zero-config run.
//!
//! ```no_run
//! # async fn example(paywall: gate402_gateway::paywall::Paywall) {
//! // Routes the paywall prices (its services) answer 402 until paid.
//! let app: axum::Router = axum::Router::new()
//!     .route("/weather", axum::routing::get(|| async { "sunny" }))
//!     .layer(paywall.layer());
//! # }
//! ```

pub mod config;
pub mod demo;
pub mod discovery;
pub mod lightning;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod paywall;
pub mod problem;
pub mod proxy;
pub mod server;

pub use config::GatewayConfig;
pub use server::Gateway;
