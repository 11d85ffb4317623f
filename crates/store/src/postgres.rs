//! [`Store`] on PostgreSQL: one database shared by every gateway replica,
//! so a payment is served and counted exactly once across them.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

use crate::{
    ClaimHolder, InvoiceRecord, PaymentRecord, ReceiptRecord, Reservation, Store, StoreError,
};

/// Schema versions, in order; `gate402_schema` says how many ran.
/// Append only: a database keeps whatever a released version made of it.
/// So `tokens` stays although nothing reads it any more (L402 root keys
/// are derived from a secret now).
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tokens (
        token_id BYTEA PRIMARY KEY,
        root_key BYTEA NOT NULL,
        payment_hash BYTEA NOT NULL,
        service TEXT NOT NULL,
        created_at BIGINT NOT NULL
     );
     CREATE TABLE invoices (
        payment_hash BYTEA PRIMARY KEY,
        bolt11 TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        service TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
     );
     CREATE TABLE challenges (
        id TEXT PRIMARY KEY,
        consumed BOOLEAN NOT NULL DEFAULT FALSE,
        lease_until BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        consumed_at BIGINT
     );
     CREATE INDEX challenges_expiry ON challenges (expires_at) WHERE consumed;
     CREATE TABLE receipts (
        id BIGSERIAL PRIMARY KEY,
        payment_hash BYTEA NOT NULL,
        scheme TEXT NOT NULL,
        challenge_id TEXT,
        service TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        served_at BIGINT NOT NULL
     );
     CREATE TABLE freebies (
        client TEXT NOT NULL,
        service TEXT NOT NULL,
        used BIGINT NOT NULL,
        PRIMARY KEY (client, service)
     );",
    "ALTER TABLE challenges ADD COLUMN holder TEXT;
     CREATE INDEX challenges_holder ON challenges (holder) WHERE NOT consumed;",
    // Claims fenced by a token of their holder (`holder` is its replica).
    // Rows from before were keyed by MPP challenge id: `legacy` defaults to
    // true so that they, and any row a replica of the previous version
    // still writes during a rolling upgrade, are legacy; claims from now
    // on set it to false.
    "ALTER TABLE challenges ADD COLUMN holder_token TEXT;
     ALTER TABLE challenges ADD COLUMN legacy BOOLEAN NOT NULL DEFAULT TRUE;
     CREATE INDEX challenges_legacy ON challenges (expires_at) WHERE legacy AND consumed;
     CREATE TABLE payments (
        payment_hash BYTEA PRIMARY KEY,
        service TEXT NOT NULL,
        scheme TEXT NOT NULL,
        amount_msat BIGINT NOT NULL,
        first_served_at BIGINT NOT NULL
     );",
    // Old invoices and receipts are purged by age.
    "CREATE INDEX invoices_created_at ON invoices (created_at);
     CREATE INDEX receipts_served_at ON receipts (served_at);",
];

/// Any number fixed for the advisory lock that serializes migrations of
/// replicas starting together.
const MIGRATION_LOCK: i64 = 0x0067_6174_6534_3032;

/// How long to keep trying to reach the database at start.
const CONNECT_FOR: Duration = Duration::from_secs(30);

/// PostgreSQL through a connection pool; clones share it.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

fn db(e: sqlx::Error) -> StoreError {
    match e {
        // Lost or unavailable connections heal: the pool reconnects.
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Database(other.to_string()),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:pass@host/db`), retrying for a
    /// while if the database is not up yet, and migrates the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + CONNECT_FOR;
        let pool = loop {
            match PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await
            {
                Ok(pool) => break pool,
                Err(e) => match db(e) {
                    StoreError::Unavailable(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    error => return Err(error),
                },
            }
        };
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS gate402_schema (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let applied: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM gate402_schema")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let applied = applied.unwrap_or(0) as usize;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(db)?;
            sqlx::query("INSERT INTO gate402_schema (version) VALUES ($1)")
                .bind(i as i32 + 1)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn put_invoice(&self, invoice: &InvoiceRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO invoices (payment_hash, bolt11, amount_msat, service, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&invoice.payment_hash[..])
        .bind(&invoice.bolt11)
        .bind(invoice.amount_msat as i64)
        .bind(&invoice.service)
        .bind(invoice.created_at as i64)
        .bind(invoice.expires_at as i64)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db)
    }

    async fn invoice(&self, payment_hash: &[u8; 32]) -> Result<Option<InvoiceRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT bolt11, amount_msat, service, created_at, expires_at FROM invoices WHERE payment_hash = $1",
        )
        .bind(&payment_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(InvoiceRecord {
                payment_hash: *payment_hash,
                bolt11: r.try_get(0)?,
                amount_msat: r.try_get::<i64, _>(1)? as u64,
                service: r.try_get(2)?,
                created_at: r.try_get::<i64, _>(3)? as u64,
                expires_at: r.try_get::<i64, _>(4)? as u64,
            })
        })
        .transpose()
        .map_err(db)
    }

    async fn claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        expires_at: u64,
        lease_until: u64,
        now: u64,
    ) -> Result<Reservation, StoreError> {
        // One statement: a new claim, or the takeover of a lapsed one,
        // under the row lock of ON CONFLICT, so concurrent replicas cannot
        // both acquire.
        let acquired = sqlx::query(
            "INSERT INTO challenges (id, lease_until, expires_at, holder, holder_token, legacy)
             VALUES ($1, $2, $3, $4, $5, FALSE)
             ON CONFLICT (id) DO UPDATE
                SET lease_until = EXCLUDED.lease_until,
                    holder = EXCLUDED.holder,
                    holder_token = EXCLUDED.holder_token,
                    legacy = FALSE
             WHERE NOT challenges.consumed AND challenges.lease_until <= $6
             RETURNING id",
        )
        .bind(key)
        .bind(lease_until as i64)
        .bind(expires_at as i64)
        .bind(&holder.replica)
        .bind(&holder.token)
        .bind(now as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        if acquired.is_some() {
            return Ok(Reservation::Acquired);
        }
        let consumed: Option<bool> =
            sqlx::query_scalar("SELECT consumed FROM challenges WHERE id = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(match consumed {
            Some(true) => Reservation::Consumed,
            // Held by another request (or released between the two
            // statements: then the client retries and gets it).
            _ => Reservation::InFlight,
        })
    }

    async fn renew_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        lease_until: u64,
    ) -> Result<bool, StoreError> {
        sqlx::query(
            "UPDATE challenges SET lease_until = $4
             WHERE id = $1 AND holder = $2 AND holder_token = $3",
        )
        .bind(key)
        .bind(&holder.replica)
        .bind(&holder.token)
        .bind(lease_until as i64)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db)
    }

    async fn commit_claim(
        &self,
        key: &str,
        holder: &ClaimHolder,
        now: u64,
    ) -> Result<bool, StoreError> {
        sqlx::query(
            "UPDATE challenges SET consumed = TRUE, consumed_at = coalesce(consumed_at, $4)
             WHERE id = $1 AND holder = $2 AND holder_token = $3",
        )
        .bind(key)
        .bind(&holder.replica)
        .bind(&holder.token)
        .bind(now as i64)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db)
    }

    async fn release_claim(&self, key: &str, holder: &ClaimHolder) -> Result<bool, StoreError> {
        sqlx::query(
            "DELETE FROM challenges
             WHERE id = $1 AND holder = $2 AND holder_token = $3 AND NOT consumed",
        )
        .bind(key)
        .bind(&holder.replica)
        .bind(&holder.token)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db)
    }

    async fn release_claims_of(&self, replica: &str) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM challenges WHERE holder = $1 AND NOT consumed")
            .bind(replica)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db)
    }

    async fn legacy_claims_until(&self) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(max(expires_at), 0) FROM challenges WHERE legacy AND consumed",
        )
        .fetch_one(&self.pool)
        .await
        .map(|t| t as u64)
        .map_err(db)
    }

    async fn legacy_consumed(&self, id: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM challenges WHERE id = $1 AND legacy AND consumed)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    async fn record_payment(&self, payment: &PaymentRecord) -> Result<bool, StoreError> {
        sqlx::query(
            "INSERT INTO payments (payment_hash, service, scheme, amount_msat, first_served_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (payment_hash) DO NOTHING",
        )
        .bind(&payment.payment_hash[..])
        .bind(&payment.service)
        .bind(&payment.scheme)
        .bind(payment.amount_msat as i64)
        .bind(payment.at as i64)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db)
    }

    async fn count_freebie(&self, client: &str, service: &str) -> Result<u64, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO freebies (client, service, used) VALUES ($1, $2, 1)
             ON CONFLICT (client, service) DO UPDATE SET used = freebies.used + 1
             RETURNING used",
        )
        .bind(client)
        .bind(service)
        .fetch_one(&self.pool)
        .await
        .map(|n| n as u64)
        .map_err(db)
    }

    async fn put_receipt(&self, receipt: &ReceiptRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO receipts (payment_hash, scheme, challenge_id, service, amount_msat, served_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&receipt.payment_hash[..])
        .bind(&receipt.scheme)
        .bind(&receipt.challenge_id)
        .bind(&receipt.service)
        .bind(receipt.amount_msat as i64)
        .bind(receipt.served_at as i64)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db)
    }

    async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM challenges WHERE expires_at < $1 AND consumed")
            .bind(now as i64)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db)
    }

    async fn purge_records(
        &self,
        created_before: u64,
        served_before: u64,
    ) -> Result<u64, StoreError> {
        let invoices = sqlx::query("DELETE FROM invoices WHERE created_at < $1")
            .bind(created_before as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        let receipts = sqlx::query("DELETE FROM receipts WHERE served_at < $1")
            .bind(served_before as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(invoices + receipts)
    }
}
