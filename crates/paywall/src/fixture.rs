//! What the crate's unit tests share: a paywall over the sandbox backend
//! and a SQLite store, both in a temporary directory, the store's calls
//! counted in the paywall's metrics.

use std::sync::Arc;

use gate402_lightning_sandbox::Sandbox;

use crate::metrics::Metrics;
use crate::observe::ObservedStore;
use crate::{Paywall, PricedService};

/// A built paywall and the sandbox that settles its invoices.
pub(crate) struct Fixture {
    /// Holds the sandbox's and the store's files for as long as the test.
    _dir: tempfile::TempDir,
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) paywall: Paywall,
}

/// A paywall selling `services`.
pub(crate) async fn paywall(services: impl IntoIterator<Item = PricedService>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(Sandbox::open(dir.path()).unwrap());
    let metrics = Arc::new(Metrics::default());
    let sqlite = gate402_store::SqliteStore::open(&dir.path().join("paywall.sqlite3")).unwrap();
    let store = ObservedStore::new(Arc::new(sqlite), metrics.clone(), "sqlite");
    let paywall = Paywall::builder(
        sandbox.clone(),
        Arc::new(store),
        "a secret of at least thirty-two bytes",
    )
    .unwrap()
    .metrics(metrics)
    .services(services)
    .build()
    .await
    .unwrap();
    Fixture {
        _dir: dir,
        sandbox,
        paywall,
    }
}
