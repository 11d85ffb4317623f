//! The gate402 gateway program: the paywall of [`gate402_paywall`] in
//! front of a reverse proxy, with everything a deployment needs around
//! it.
//!
//! - [`config`]: the TOML config, checked whole, every error with its key
//!   path, risky settings as warnings;
//! - [`proxy`]: forwarding a routed request to its upstream;
//! - [`mcp`]: the same priced services as paid MCP tools at `/mcp`, and
//!   the paywall in front of another MCP server;
//! - [`discovery`]: `/.well-known/l402-services` and `/openapi.json`;
//! - [`lightning`]: choosing and connecting the Lightning backend;
//! - [`server`]: the process's life: data dir, listener, reload, stop;
//! - [`telemetry`]: OpenTelemetry traces over OTLP, off by default;
//! - [`services`]: the services that run: the config's, with the admin
//!   API's changes on top;
//! - [`admin`]: the operator's admin API and dashboard, on a listener of
//!   their own, and the sync that makes every replica apply its changes;
//! - [`tls`]: the certificate served, and the trust in `https://` upstreams;
//! - [`demo`]: the built-in demo API of the zero-config run.

pub mod admin;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod lightning;
pub mod mcp;
pub mod problem;
pub mod proxy;
pub mod server;
pub mod services;
pub mod telemetry;
pub mod tls;

pub use admin::LOCAL_ADMIN;
pub use config::GatewayConfig;
pub use server::Gateway;
pub use services::ServicesHandle;
