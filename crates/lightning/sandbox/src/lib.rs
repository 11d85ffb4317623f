//! The sandbox: gate402's embedded Lightning backend, so that it runs on a
//! fresh machine with nothing else installed. **Test money only.**
//!
//! It issues real BOLT11 invoices on regtest (`lnbcrt…`), signed with a
//! node key kept in its data directory, and settles them through its own
//! payer, which reveals the preimage. It pays nothing else: an invoice it
//! did not issue is refused. Invoices live in SQLite beside the key, so a
//! restart loses none. An invoice asked for with amount 0 encodes no amount
//! and is paid with one ([`Sandbox::settle_amount`]).
//!
//! [`http`] holds the `POST /sandbox/pay` endpoint a gateway mounts when the
//! sandbox is its backend, and the client that calls it.

pub mod http;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{All, Message, PublicKey, Secp256k1, SecretKey};
use gate402_lightning::{
    check_payable, check_payable_amount, CreatedInvoice, InvoiceRequest, InvoiceState,
    InvoiceStatus, InvoiceSummary, LightningBackend, LightningError, Liquidity, Network, NodeInfo,
    PayError, PaymentHash, PaymentOutcome, PaymentStatus,
};
use lightning_invoice::{InvoiceBuilder, PaymentSecret};
use sha2::Digest;

use store::{InvoiceRow, Store};

/// The only network the sandbox lives on.
pub const NETWORK: Network = Network::Regtest;

/// What the node's own payments are recorded as paid by (a payer over
/// HTTP is recorded by the hash of its secret, or not at all).
fn node_payer() -> [u8; 32] {
    sha2::Sha256::digest(b"gate402 sandbox: the node's own payments").into()
}

/// Said wherever the sandbox shows up: in logs, in 402 bodies.
pub const TEST_MONEY: &str = "sandbox Lightning backend: regtest invoices settled by a built-in payer; TEST MONEY, nothing of value moves";

/// Why the sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Reading or writing its directory failed.
    #[error("sandbox data directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key file is not 64 hex digits of a valid key.
    #[error("sandbox node key {0} is corrupt")]
    Key(PathBuf),
    /// The invoice database failed.
    #[error("sandbox invoice database: {0}")]
    Database(#[from] rusqlite::Error),
}

/// The sandbox backend. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    secp: Secp256k1<All>,
    key: SecretKey,
    pubkey: PublicKey,
    store: Arc<Store>,
    settled: tokio::sync::Notify,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("pubkey", &self.inner.pubkey.to_string())
            .finish()
    }
}

/// An invoice paid before by another payer than the one asking: its
/// preimage is not told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this invoice was already paid, by another payer: its preimage goes to that payer alone")]
pub struct PaidByAnother;

impl Sandbox {
    /// Opens (creating on first use) the sandbox in `dir`: the node key in
    /// `dir/node_key`, invoices in `dir/invoices.sqlite3`.
    pub fn open(dir: &Path) -> Result<Self, SandboxError> {
        let io = |source| SandboxError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // The invoices hold their preimages: readable by the owner alone,
        // whatever the umask made of the directory.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let key = load_or_create_key(&dir.join("node_key"))?;
        let secp = Secp256k1::new();
        let pubkey = key.public_key(&secp);
        let database = dir.join("invoices.sqlite3");
        let store = Store::open(&database)?;
        // SQLite's `-wal` and `-shm` beside it hold the same preimages.
        #[cfg(unix)]
        for suffix in ["", "-wal", "-shm"] {
            use std::os::unix::fs::PermissionsExt;
            let mut file = database.clone().into_os_string();
            file.push(suffix);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
        tracing::warn!(node = %pubkey, "{TEST_MONEY}");
        Ok(Self {
            inner: Arc::new(Inner {
                secp,
                key,
                pubkey,
                store,
                settled: tokio::sync::Notify::new(),
            }),
        })
    }

    /// The sandbox node's id.
    pub fn pubkey(&self) -> [u8; 33] {
        self.inner.pubkey.serialize()
    }

    /// The sandbox payer: settles an invoice this sandbox issued and
    /// returns its preimage. Refuses any other invoice, an expired one, one
    /// without an amount, and one already paid.
    ///
    /// # Errors
    ///
    /// [`PayError::Rejected`] for an invoice it did not issue; the
    /// refusals of [`check_payable`]; [`PayError::AlreadyPaid`] with what
    /// the first payment got; [`PayError::Backend`] when its database fails.
    pub fn settle(&self, bolt11: &str) -> Result<PaymentOutcome, PayError> {
        self.settle_with(bolt11, None, None)
    }

    /// The sandbox payer for a payer over HTTP, who sends a secret of its
    /// own (`payer`) and the amount for an invoice without one: paying an
    /// invoice paid before answers [`PayError::AlreadyPaid`] with the first
    /// payment's preimage only to the payer that made it (the same secret);
    /// anyone else gets [`PaidByAnother`], so seeing an invoice is not
    /// enough to learn its preimage.
    ///
    /// # Errors
    ///
    /// As [`Sandbox::settle`] and [`Sandbox::settle_amount`] (`Ok(Err(_))`),
    /// or [`PaidByAnother`].
    pub fn settle_for(
        &self,
        bolt11: &str,
        amount_msat: Option<u64>,
        payer: Option<&str>,
    ) -> Result<Result<PaymentOutcome, PayError>, PaidByAnother> {
        let payer_hash = payer.map(|p| -> [u8; 32] { sha2::Sha256::digest(p.as_bytes()).into() });
        match self.settle_with(bolt11, amount_msat, payer_hash) {
            Err(PayError::AlreadyPaid(first)) => {
                let paid_by = gate402_bolt11::Invoice::parse(bolt11)
                    .ok()
                    .and_then(|invoice| self.inner.store.get(&invoice.payment_hash()).ok())
                    .flatten()
                    .and_then(|row| row.payer_hash);
                match (paid_by, payer_hash) {
                    (Some(by), Some(asker)) if by == asker => Ok(Err(PayError::AlreadyPaid(first))),
                    _ => Err(PaidByAnother),
                }
            }
            other => Ok(other),
        }
    }

    /// Pays as the node itself (the backend's `pay` and `pay_amount`):
    /// recorded as the node's, so that [`LightningBackend::payment_status`]
    /// tells its own payments from those of payers over HTTP. An invoice
    /// another payer paid first is refused, as a node's payment to a paid
    /// invoice fails.
    fn pay_as_node(
        &self,
        bolt11: &str,
        amount_msat: Option<u64>,
    ) -> Result<PaymentOutcome, PayError> {
        match self.settle_with(bolt11, amount_msat, Some(node_payer())) {
            Err(PayError::AlreadyPaid(first)) => {
                let by_node = gate402_bolt11::Invoice::parse(bolt11)
                    .ok()
                    .and_then(|invoice| self.inner.store.get(&invoice.payment_hash()).ok())
                    .flatten()
                    .is_some_and(|row| row.payer_hash == Some(node_payer()));
                if by_node {
                    Err(PayError::AlreadyPaid(first))
                } else {
                    Err(PayError::Rejected(
                        "the invoice was paid already, by another payer".into(),
                    ))
                }
            }
            other => other,
        }
    }

    /// The sandbox payer for an invoice without an amount: settles an
    /// invoice this sandbox issued with `amount_msat` (millisatoshis) and
    /// returns its preimage.
    ///
    /// # Errors
    ///
    /// As [`Sandbox::settle`], with the refusals of [`check_payable_amount`]
    /// (an invoice that encodes an amount, an amount of 0) in place of
    /// those of [`check_payable`].
    pub fn settle_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
    ) -> Result<PaymentOutcome, PayError> {
        self.settle_with(bolt11, Some(amount_msat), None)
    }

    /// Settles with the invoice's own amount (`None`) or the one given.
    fn settle_with(
        &self,
        bolt11: &str,
        amount_msat: Option<u64>,
        payer_hash: Option<[u8; 32]>,
    ) -> Result<PaymentOutcome, PayError> {
        let invoice = gate402_bolt11::Invoice::parse(bolt11)
            .map_err(|e| PayError::InvalidInvoice(e.to_string()))?;
        if invoice.network() != NETWORK || invoice.payee() != self.pubkey() {
            return Err(PayError::Rejected(
                "the sandbox pays only invoices it issued itself".into(),
            ));
        }
        let now = SystemTime::now();
        match amount_msat {
            None => check_payable(bolt11, NETWORK, now)?,
            Some(amount_msat) => check_payable_amount(bolt11, NETWORK, amount_msat, now)?,
        };
        let hash = invoice.payment_hash();
        let store = &self.inner.store;
        let row = store.get(&hash).map_err(backend)?.ok_or_else(|| {
            PayError::Rejected("the sandbox has no record of this invoice".into())
        })?;
        let paid_msat = amount_msat.unwrap_or(row.amount_msat);
        if !store
            .settle(&hash, unix_now(), paid_msat, payer_hash)
            .map_err(backend)?
        {
            // Read again: a payment may have landed since the row was read.
            let first = store.get(&hash).map_err(backend)?.unwrap_or(row);
            return Err(PayError::AlreadyPaid(PaymentOutcome {
                preimage: first.preimage,
                fee_msat: 0,
                amount_msat: first.received_msat(),
            }));
        }
        tracing::info!(payment_hash = %hex::encode(hash), amount_msat = paid_msat, "sandbox settled an invoice (test money)");
        self.inner.settled.notify_waiters();
        Ok(PaymentOutcome {
            preimage: row.preimage,
            fee_msat: 0,
            amount_msat: paid_msat,
        })
    }
}

fn backend(e: rusqlite::Error) -> LightningError {
    LightningError::Unavailable(format!("sandbox invoice database: {e}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn load_or_create_key(path: &Path) -> Result<SecretKey, SandboxError> {
    let io = |source| SandboxError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // A key an earlier version left readable by others is made
            // private (it signs the sandbox's invoices).
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(io)?;
                }
            }
            hex::decode(text.trim())
                .ok()
                .and_then(|bytes| SecretKey::from_slice(&bytes).ok())
                .ok_or_else(|| SandboxError::Key(path.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::new(&mut bitcoin::secp256k1::rand::thread_rng());
            write_private(path, &hex::encode(key.secret_bytes())).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

#[async_trait]
impl LightningBackend for Sandbox {
    async fn create_invoice(
        &self,
        request: InvoiceRequest,
    ) -> Result<CreatedInvoice, LightningError> {
        let preimage: [u8; 32] = rand::random();
        let hash: [u8; 32] = sha2::Sha256::digest(preimage).into();
        let now = SystemTime::now();
        let inner = &self.inner;
        let builder = InvoiceBuilder::new(NETWORK.currency())
            .description(request.memo.clone())
            .payment_hash(sha256::Hash::from_byte_array(hash))
            .payment_secret(PaymentSecret(rand::random()))
            .timestamp(now)
            .min_final_cltv_expiry_delta(18)
            .expiry_time(Duration::from_secs(request.expiry_secs.into()));
        // Amount 0: an invoice that encodes none, for the payer to choose.
        let builder = match request.amount_msat {
            0 => builder,
            amount_msat => builder.amount_milli_satoshis(amount_msat),
        };
        let unsigned = builder
            .build_raw()
            .map(|raw| gate402_bolt11::Unsigned::new(&raw))
            .map_err(|e| LightningError::Rejected(e.to_string()))?;
        let message = Message::from_digest(unsigned.signable_hash());
        let (recovery_id, compact) = inner
            .secp
            .sign_ecdsa_recoverable(&message, &inner.key)
            .serialize_compact();
        let created_at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let row = InvoiceRow {
            payment_hash: hash,
            preimage,
            bolt11: unsigned.encode(&compact, recovery_id.to_i32() as u8),
            amount_msat: request.amount_msat,
            created_at,
            expires_at: created_at + u64::from(request.expiry_secs),
            settled_at: None,
            paid_msat: None,
            payer_hash: None,
        };
        let created = CreatedInvoice {
            bolt11: row.bolt11.clone(),
            payment_hash: hash,
            expires_at: row.expires_at,
        };
        inner.store.insert(row);
        Ok(created)
    }

    async fn invoice_status(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        let row = self
            .inner
            .store
            .get(hash)
            .map_err(backend)?
            .ok_or_else(|| LightningError::NotFound(hex::encode(hash)))?;
        Ok(row.status(unix_now()))
    }

    async fn wait_invoice(
        &self,
        hash: &PaymentHash,
        timeout: Duration,
    ) -> Result<InvoiceStatus, LightningError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register before checking, so a settlement in between wakes us.
            let notified = self.inner.settled.notified();
            let status = self.invoice_status(hash).await?;
            if status != InvoiceStatus::Open {
                return Ok(status);
            }
            // Also poll: another process may settle through the same database.
            let wake = tokio::time::sleep(Duration::from_millis(250));
            tokio::select! {
                _ = notified => {}
                _ = wake => {}
                _ = tokio::time::sleep_until(deadline) => return Err(LightningError::Timeout(timeout)),
            }
        }
    }

    async fn pay(
        &self,
        bolt11: &str,
        _max_fee_msat: u64,
        _timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.pay_as_node(bolt11, None)
    }

    async fn pay_amount(
        &self,
        bolt11: &str,
        amount_msat: u64,
        _max_fee_msat: u64,
        _timeout: Duration,
    ) -> Result<PaymentOutcome, PayError> {
        self.pay_as_node(bolt11, Some(amount_msat))
    }

    /// The node's own payments only, as a node's list of what it sent: an
    /// invoice someone else paid was not paid by this node.
    async fn payment_status(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        Ok(match self.inner.store.get(hash).map_err(backend)? {
            Some(row) if row.settled_at.is_some() && row.payer_hash == Some(node_payer()) => {
                PaymentStatus::Succeeded(PaymentOutcome {
                    preimage: row.preimage,
                    fee_msat: 0,
                    amount_msat: row.received_msat(),
                })
            }
            _ => PaymentStatus::Unknown,
        })
    }

    async fn node_info(&self) -> Result<NodeInfo, LightningError> {
        Ok(NodeInfo {
            network: NETWORK,
            pubkey: self.pubkey(),
            backend: "sandbox",
        })
    }

    /// [`Liquidity::unlimited`]: the sandbox has no chain and no channels,
    /// and settles any invoice it issued, whatever the amount (test money).
    async fn liquidity(&self) -> Result<Liquidity, LightningError> {
        Ok(Liquidity::unlimited())
    }

    /// From its invoice database, newest first, every field known (the
    /// description is read from the invoice itself).
    async fn recent_invoices(&self, limit: usize) -> Result<Vec<InvoiceSummary>, LightningError> {
        let now = unix_now();
        let rows = self.inner.store.recent(limit).map_err(backend)?;
        Ok(rows.iter().map(|row| summary(row, now)).collect())
    }
}

fn summary(row: &InvoiceRow, now: u64) -> InvoiceSummary {
    let state = match row.status(now) {
        InvoiceStatus::Open => InvoiceState::Open,
        InvoiceStatus::Settled { .. } => InvoiceState::Settled,
        InvoiceStatus::Canceled => InvoiceState::Canceled,
    };
    let description = gate402_bolt11::Invoice::parse(&row.bolt11)
        .ok()
        .and_then(|invoice| match invoice.description() {
            gate402_bolt11::Description::Text(text) => Some(text),
            gate402_bolt11::Description::Hash(_) => None,
        });
    InvoiceSummary {
        payment_hash: row.payment_hash,
        amount_msat: (row.amount_msat > 0).then_some(row.amount_msat),
        received_msat: row.settled_at.map(|_| row.received_msat()),
        state,
        created_at: Some(row.created_at),
        settled_at: row.settled_at,
        expires_at: Some(row.expires_at),
        description,
    }
}
