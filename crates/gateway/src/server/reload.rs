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
    /// `listen` and `sync_secs`, and `[[tools]]` on a gateway that started
    /// without any (it has no MCP server to sell them).
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
        if !config.tools.is_empty() && config.mcp_proxy.is_none() && !self.services.sells_tools() {
            later.push(
                "tools: none are sold until a restart (the gateway started without [[tools]])"
                    .into(),
            );
        }
        Ok(later)
    }
}
