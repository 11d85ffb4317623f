//! What a reload (SIGHUP) changes in a running gateway, and what waits
//! for a restart: the one place that says so.

use crate::admin::AdminHandle;
use crate::config::{AdminConfig, GatewayConfig};
use crate::services::{ServicesError, ServicesHandle};

/// Applies a config file again to a running gateway.
#[derive(Clone)]
pub struct Reloader {
    pub(super) services: ServicesHandle,
    pub(super) admin: Option<AdminHandle>,
    /// `[admin]` as the gateway started, for what only a restart changes.
    pub(super) started: AdminConfig,
    /// The other settings a reload leaves as they started
    /// ([`restart_only`]).
    pub(super) started_rest: Vec<(&'static str, String)>,
}

/// The settings only a restart changes (beside `[admin]`'s own), each as
/// its key and a text to compare it by.
pub(super) fn restart_only(config: &GatewayConfig) -> Vec<(&'static str, String)> {
    let text = |value: &dyn std::fmt::Debug| format!("{value:?}");
    vec![
        ("listen", text(&config.listen)),
        ("tls", text(&config.tls)),
        ("lightning", text(&config.lightning)),
        ("store", text(&config.store)),
        ("mpp", text(&config.mpp)),
        ("invoice_expiry_secs", text(&config.invoice_expiry_secs)),
        ("name", text(&config.name)),
        ("limits", text(&config.limits)),
        ("server", text(&config.server)),
        ("mcp", text(&config.mcp)),
        ("mcp_proxy", text(&config.mcp_proxy)),
        ("claim_lease_secs", text(&config.claim_lease_secs)),
        (
            "receipts_retention_days",
            text(&config.receipts_retention_days),
        ),
        ("discovery", text(&config.discovery)),
        ("telemetry", text(&config.telemetry)),
    ]
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Applies `config` (checked by [`GatewayConfig::load`]): its
    /// services, with the admin API's changes on top, and its `[[tools]]`,
    /// all or nothing; then the admin listener's credentials and
    /// `low_inbound_sats` ([`AdminHandle::reload`]). Answers, one line
    /// each, the changes it leaves for a restart: `[admin] enabled`,
    /// `listen` and `sync_secs`, every other section but the services and
    /// tools (`restart_only`: `[server]`, `[mcp]`, `listen`, …), and
    /// `[[tools]]` on a gateway that started without any (it has no MCP
    /// server to sell them); and the services whose file tables the admin
    /// API's changes stay on top of.
    ///
    /// # Errors
    ///
    /// The services' ([`ServicesHandle::reload`]); then nothing changed.
    pub fn reload(&self, config: &GatewayConfig) -> Result<Vec<String>, ServicesError> {
        self.services.reload(config)?;
        if let Some(admin) = &self.admin {
            admin.reload(&config.admin);
        }
        let (was, now) = (&self.started, &config.admin);
        let mut later = Vec::new();
        if was.enabled != now.enabled {
            later.push(format!("admin.enabled: {} until a restart", was.enabled));
        }
        if (was.enabled || now.enabled) && was.listen != now.listen {
            later.push(format!(
                "admin.listen: still {:?} until a restart",
                was.listen
            ));
        }
        if was.sync_secs != now.sync_secs {
            later.push(format!(
                "admin.sync_secs: still {} until a restart",
                was.sync_secs
            ));
        }
        for ((key, was), (_, now)) in self.started_rest.iter().zip(restart_only(config)) {
            if *was != now {
                later.push(format!(
                    "{key}: changed in the file; the gateway keeps the value it started with until a restart"
                ));
            }
        }
        // The file's table of a service the admin API changed is not what
        // runs: the change stays on top until reset.
        for service in &config.services {
            let name = service.name();
            if self.services.changed(name) {
                later.push(format!(
                    "services.{name}: the admin API's changes stay on top of the file's until `gate402 admin reset {name}`"
                ));
            }
        }
        if !config.tools.is_empty() && config.mcp_proxy.is_none() && !self.services.sells_tools() {
            later.push(
                "tools: none are sold until a restart (the gateway started without [[tools]])"
                    .into(),
            );
        }
        Ok(later)
    }
}
