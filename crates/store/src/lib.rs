//! The gateway's state, behind one trait: [`Store`].
//!
//! What must survive a restart and be shared by every replica of a
//! gateway: the root key of each L402 token, the invoices issued, the MPP
//! challenges in flight or consumed (so a credential is served once), the
//! receipts given out, and the freebie counters. [`SqliteStore`] is the
//! default, a file in the data directory; [`PostgresStore`] is shared by
//! several gateway replicas.

mod postgres;
mod sqlite;

use async_trait::async_trait;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A minted L402 token's secret half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token id from the macaroon identifier.
    pub token_id: [u8; 32],
    /// The root key its signature chain starts from.
    pub root_key: [u8; 32],
    /// The payment hash it is bound to.
    pub payment_hash: [u8; 32],
    /// The service it was minted for.
    pub service: String,
    /// When it was minted (unix seconds).
    pub created_at: u64,
}

/// An invoice put into a 402.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRecord {
    /// Its payment hash.
    pub payment_hash: [u8; 32],
    /// The BOLT11 string.
    pub bolt11: String,
    /// The amount.
    pub amount_msat: u64,
    /// The service it charges for.
    pub service: String,
    /// When it was issued (unix seconds).
    pub created_at: u64,
    /// When it expires (unix seconds).
    pub expires_at: u64,
}

/// A payment receipt given out with a served response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRecord {
    /// The paid invoice's hash (the receipt's reference).
    pub payment_hash: [u8; 32],
    /// `L402` or `Payment`.
    pub scheme: String,
    /// The MPP challenge id, if any.
    pub challenge_id: Option<String>,
    /// The service.
    pub service: String,
    /// The amount.
    pub amount_msat: u64,
    /// When (unix seconds).
    pub served_at: u64,
}

/// The outcome of claiming an MPP challenge for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// This request holds it now: serve, then commit (or release on failure).
    Acquired,
    /// Another request holds it and has not finished.
    InFlight,
    /// It has been served already.
    Consumed,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, migrated or queried.
    #[error("store: {0}")]
    Database(String),
    /// The database is unreachable for now; retrying may help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The gateway's shared state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Keeps a token's root key.
    async fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError>;

    /// The root key of a token; `None` if unknown (or revoked).
    async fn root_key(&self, token_id: &[u8; 32]) -> Result<Option<[u8; 32]>, StoreError>;

    /// Deletes a token's root key, revoking it.
    async fn revoke_token(&self, token_id: &[u8; 32]) -> Result<bool, StoreError>;

    /// Records an issued invoice.
    async fn put_invoice(&self, invoice: &InvoiceRecord) -> Result<(), StoreError>;

    /// An issued invoice, by payment hash.
    async fn invoice(&self, payment_hash: &[u8; 32]) -> Result<Option<InvoiceRecord>, StoreError>;

    /// Claims an MPP challenge for one request of gateway `holder`,
    /// atomically across every gateway sharing the store. A claim whose
    /// holder died is taken over after `lease_until`, or at once when the
    /// holder restarts ([`Store::release_leases_of`]).
    async fn reserve_challenge(
        &self,
        challenge_id: &str,
        holder: &str,
        expires_at: u64,
        lease_until: u64,
        now: u64,
    ) -> Result<Reservation, StoreError>;

    /// Releases every claim `holder` still has: called by a gateway at
    /// start, when those claims belong to requests its killed predecessor
    /// never finished (their clients retry and are served). Returns how many.
    async fn release_leases_of(&self, holder: &str) -> Result<u64, StoreError>;

    /// The request served: the challenge is consumed for good.
    async fn commit_challenge(&self, challenge_id: &str, now: u64) -> Result<(), StoreError>;

    /// The request failed upstream: the challenge may be used again.
    async fn release_challenge(&self, challenge_id: &str) -> Result<(), StoreError>;

    /// Counts one more free call for `client` on `service`; returns the
    /// count including this one.
    async fn count_freebie(&self, client: &str, service: &str) -> Result<u64, StoreError>;

    /// Records a receipt.
    async fn put_receipt(&self, receipt: &ReceiptRecord) -> Result<(), StoreError>;

    /// Drops consumed challenges past their expiry (they can no longer be
    /// replayed, their id no longer verifies). Returns how many.
    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError>;
}
