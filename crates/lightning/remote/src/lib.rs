//! Lightning backends gate402 reaches over their REST APIs:
//!
//! - [`lnd::Lnd`]: LND's REST API (invoices, invoice subscription, payments
//!   through the router), authenticated with a macaroon and pinned to the
//!   node's TLS certificate, configured as Aperture users already do;
//! - [`cln::Cln`]: Core Lightning's `clnrest` plugin, authenticated with a rune.

pub mod cln;
mod error;
mod http;
pub mod lnd;
mod tls;

pub use error::RemoteError;
