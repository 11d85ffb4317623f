//! The services a gateway runs: the config's (file, or code), with the
//! admin API's changes on top. [`ServicesHandle`] alone decides the list
//! the paywall routes and the proxy forwards; a config reload replaces the
//! bottom layer, the admin sync the top one, and both go through the same
//! merge and the same checks as `serve --check`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gate402_paywall::{Auth, Paywall};
use gate402_store::{ServiceChange, ServiceState};
use toml::Table;

use crate::config::{
    hidden_by, never_reached, ConfigErrors, GatewayConfig, ServiceConfig, ToolConfig,
};
use crate::mcp::PaidTools;
use crate::proxy::Proxy;

/// Why a set of services was not installed; the running one stays.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// A service's table does not pass the config's checks.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// An upstream's TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A reloaded file names no service while this many run from the file:
    /// most likely a file caught half-written, and applying it would stop
    /// selling every one of them.
    #[error("the file names no [[services]], and {0} run from it: reloading it would stop selling all of them (restart to run it as it is)")]
    NoneLeft(usize),
}

/// Where a running service comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A `[[services]]` table of the config file.
    File,
    /// Made in code (the demo, an embedding program): it has no table.
    Code,
    /// Created through the admin API.
    Admin,
}

/// One service as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ServiceView {
    /// Its settings as running (a disabled one's `auth` is
    /// [`Auth::Disabled`]).
    pub config: ServiceConfig,
    /// Active or disabled (deleted ones are not listed).
    pub state: ServiceState,
    /// Where it comes from.
    pub source: Source,
    /// Its table as written (before `${NAME}` expansion), when it has one.
    pub table: Option<Table>,
    /// The admin change in force on it, if any.
    pub change: Option<ServiceChange>,
}

/// Replaces the services of a running gateway: routes and prices in the
/// paywall, upstreams in the proxy, and the prices of the MCP tools that
/// call them.
#[derive(Clone)]
pub struct ServicesHandle {
    paywall: Paywall,
    proxy: Proxy,
    layers: Arc<Mutex<Layers>>,
    /// The `[[tools]]` and the MCP server that sells them, once it runs.
    tools: Arc<Mutex<Option<SoldTools>>>,
}

/// `[[tools]]` entries and the MCP server that sells them.
struct SoldTools {
    tools: Vec<ToolConfig>,
    server: PaidTools,
}

impl SoldTools {
    /// Makes and prices the tools over `services` as they now run.
    fn install(&self, services: &[ServiceConfig]) {
        self.server.set_tools(&self.tools, services);
    }
}

#[derive(Default)]
struct Layers {
    /// The config's services, in order.
    base: Vec<ServiceConfig>,
    /// Their tables as written, by name (none for services made in code).
    tables: HashMap<String, Table>,
    /// The admin API's latest change of each service, in version order.
    changes: Vec<ServiceChange>,
    /// The largest version among `changes`.
    version: u64,
}

impl ServicesHandle {
    pub(crate) fn new(paywall: Paywall, proxy: Proxy, config: &GatewayConfig) -> Self {
        let layers = Layers {
            base: config.services.clone(),
            tables: tables_by_name(&config.service_tables),
            ..Layers::default()
        };
        Self {
            paywall,
            proxy,
            layers: Arc::new(Mutex::new(layers)),
            tools: Arc::default(),
        }
    }

    /// Prices `tools`, sold by `server`, over the services as they run,
    /// now and at every change of them: a tool without a price of its own
    /// charges its service's, and the tools of a disabled or removed
    /// service are not sold.
    pub(crate) fn price_tools(&self, tools: Vec<ToolConfig>, server: PaidTools) {
        // Services are installed under the layers' lock: holding it, no
        // change can slip between this pricing and the next.
        let layers = self.layers();
        let sold = SoldTools { tools, server };
        sold.install(&running(&layers));
        *self.tools.lock().unwrap_or_else(|e| e.into_inner()) = Some(sold);
    }

    /// The names the books count the calls of service `name`'s
    /// `[[tools]]` under (`mcp/<tool>`: a tool's challenges and payments
    /// are bound to it alone).
    pub fn tools_booked_for(&self, name: &str) -> Vec<String> {
        let tools = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        tools
            .iter()
            .flat_map(|sold| &sold.tools)
            .filter(|tool| tool.service == name)
            .map(|tool| crate::config::tool_books_name(&tool.name))
            .collect()
    }

    /// Whether an MCP server sells `[[tools]]` (one started with some).
    pub fn sells_tools(&self) -> bool {
        self.tools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Replaces the `[[tools]]` entries sold (once a server sells them),
    /// to be made at the next install; answers the entries before.
    fn set_tool_entries(&self, tools: Vec<ToolConfig>) -> Option<Vec<ToolConfig>> {
        let mut sold = self.tools.lock().unwrap_or_else(|e| e.into_inner());
        sold.as_mut()
            .map(|sold| std::mem::replace(&mut sold.tools, tools))
    }

    /// The services that run, in route order.
    pub fn running(&self) -> Vec<ServiceConfig> {
        running(&self.layers())
    }

    fn layers(&self) -> std::sync::MutexGuard<'_, Layers> {
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs `services` in place of the config's (made in code: no
    /// tables); the admin API's changes stay on top. Requests in flight
    /// finish with the services they started with.
    ///
    /// # Errors
    ///
    /// When the merged services do not pass the checks; nothing changes.
    pub fn set(&self, services: &[ServiceConfig]) -> Result<(), ServicesError> {
        let mut layers = self.layers();
        let (running, warnings) = merge(services, &HashMap::new(), &layers.changes)?;
        self.install(&running)?;
        log(&warnings);
        layers.base = services.to_vec();
        layers.tables.clear();
        Ok(())
    }

    /// Installs the services of a reloaded config, with the admin API's
    /// changes on top, and its `[[tools]]` once a server sells tools
    /// (names, descriptions, schemas, services and prices as written).
    ///
    /// # Errors
    ///
    /// As [`ServicesHandle::set`]; [`ServicesError::NoneLeft`] for a file
    /// with no service while services run from the file.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), ServicesError> {
        let mut layers = self.layers();
        if config.services.is_empty() && !layers.base.is_empty() {
            return Err(ServicesError::NoneLeft(layers.base.len()));
        }
        let tables = tables_by_name(&config.service_tables);
        let (running, warnings) = merge(&config.services, &tables, &layers.changes)?;
        // The file's tools are installed with its services, or neither.
        let before = self.set_tool_entries(config.tools.clone());
        if let Err(e) = self.install(&running) {
            if let Some(before) = before {
                self.set_tool_entries(before);
            }
            return Err(e);
        }
        log(&warnings);
        layers.base = config.services.clone();
        layers.tables = tables;
        Ok(())
    }

    /// Installs the admin API's changes (the latest of each service, as
    /// the store lists them) on top of the config's services.
    ///
    /// # Errors
    ///
    /// As [`ServicesHandle::set`].
    pub fn apply(&self, changes: Vec<ServiceChange>) -> Result<(), ServicesError> {
        let mut layers = self.layers();
        let (running, warnings) = merge(&layers.base, &layers.tables, &changes)?;
        self.install(&running)?;
        log(&warnings);
        layers.version = changes.iter().map(|c| c.version).max().unwrap_or(0);
        layers.changes = changes;
        Ok(())
    }

    /// The largest change version installed.
    pub fn version(&self) -> u64 {
        self.layers().version
    }

    /// Checks that `change`, made on top of what runs, gives services that
    /// pass the config's checks; installs nothing.
    ///
    /// # Errors
    ///
    /// The problems, with key paths under `services.<name>`.
    pub fn check(&self, change: &ServiceChange) -> Result<(), ConfigErrors> {
        let layers = self.layers();
        let mut changes: Vec<ServiceChange> = layers
            .changes
            .iter()
            .filter(|c| c.name != change.name)
            .cloned()
            .collect();
        changes.push(change.clone());
        merge(&layers.base, &layers.tables, &changes).map(|_| ())
    }

    /// What is risky about the services that run (free routes that
    /// overlap paid ones, config entries not run), as `serve --check`
    /// warns.
    pub fn warnings(&self) -> Vec<String> {
        let layers = self.layers();
        match merge(&layers.base, &layers.tables, &layers.changes) {
            Ok((running, mut warnings)) => {
                let services: Vec<ServiceConfig> = running.into_iter().map(|v| v.config).collect();
                warnings.extend(crate::config::overlap_warnings(&services));
                warnings
            }
            Err(_) => Vec::new(),
        }
    }

    /// Every service running, in route order.
    pub fn views(&self) -> Vec<ServiceView> {
        views(&self.layers())
    }

    /// Whether the admin API's changes (a deletion included) apply to the
    /// service named `name`.
    pub fn changed(&self, name: &str) -> bool {
        self.layers()
            .changes
            .iter()
            .any(|c| c.name == name && c.state != ServiceState::Reset)
    }

    /// The service named `name`, as running.
    pub fn view(&self, name: &str) -> Option<ServiceView> {
        self.views().into_iter().find(|v| v.config.name() == name)
    }

    fn install(&self, running: &[ServiceView]) -> Result<(), ServicesError> {
        let services: Vec<ServiceConfig> = running.iter().map(|v| v.config.clone()).collect();
        self.proxy.set_services(&services)?;
        if let Some(sold) = &*self.tools.lock().unwrap_or_else(|e| e.into_inner()) {
            sold.install(&services);
        }
        self.paywall
            .set_services(services.into_iter().map(|s| s.priced));
        Ok(())
    }
}

/// Every service running in `layers`, in route order.
fn views(layers: &Layers) -> Vec<ServiceView> {
    // The merge ran when these layers were installed, so it holds.
    merge(&layers.base, &layers.tables, &layers.changes)
        .map(|(running, _)| running)
        .unwrap_or_default()
}

/// The settings of every service running in `layers`, in route order.
fn running(layers: &Layers) -> Vec<ServiceConfig> {
    views(layers).into_iter().map(|v| v.config).collect()
}

fn log(warnings: &[String]) {
    for warning in warnings {
        tracing::warn!("services: {warning}");
    }
}

fn tables_by_name(tables: &[Table]) -> HashMap<String, Table> {
    tables
        .iter()
        .filter_map(|t| Some((t.get("name")?.as_str()?.to_owned(), t.clone())))
        .collect()
}

/// The services that run: those the admin API created, in the order they
/// were created, then the config's in order, each replaced, disabled or
/// dropped by its change. Created ones come first so that a catch-all of
/// the config file does not hide a route added later (the first match
/// wins), and stay first when the file later gains an entry of the same
/// name (that entry is then not run: the second element says so). A
/// change handed back to the file (`reset`) applies to nothing.
fn merge(
    base: &[ServiceConfig],
    tables: &HashMap<String, Table>,
    changes: &[ServiceChange],
) -> Result<(Vec<ServiceView>, Vec<String>), ConfigErrors> {
    let changes: Vec<&ServiceChange> = changes
        .iter()
        .filter(|c| c.state != ServiceState::Reset)
        .collect();
    let by_name: HashMap<&str, &ServiceChange> =
        changes.iter().map(|c| (c.name.as_str(), *c)).collect();
    let mut running = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for change in changes.iter().filter(|c| c.created) {
        running.extend(changed(
            None,
            change,
            Source::Admin,
            &mut errors,
            &mut warnings,
        ));
    }
    for service in base {
        let name = service.name();
        let table = tables.get(name).cloned();
        let source = if table.is_some() {
            Source::File
        } else {
            Source::Code
        };
        let view = match by_name.get(name) {
            None => Some(ServiceView {
                config: service.clone(),
                state: ServiceState::Active,
                source,
                table,
                change: None,
            }),
            Some(change) if change.created => {
                if change.state != ServiceState::Deleted {
                    warnings.push(format!(
                        "the config's service {name:?} is not run: the admin API created a service of that name (rename one, or delete the admin API's)"
                    ));
                }
                None
            }
            Some(change) => changed(
                Some((service, table)),
                change,
                source,
                &mut errors,
                &mut warnings,
            ),
        };
        running.extend(view);
    }
    // As the file's own check does, on the services as they now run: a
    // route the admin API added may hide another, or be hidden.
    for (i, later) in running.iter().map(|v| &v.config).enumerate() {
        if let Some(earlier) = hidden_by(running[..i].iter().map(|v| &v.config), later) {
            let earlier = &running[earlier].config;
            errors.push(format!(
                "services.{}.path: {}; routes are matched in order, the admin API's own services first, then the file's",
                later.name(),
                never_reached(later, &format!("services.{}", earlier.name()), earlier),
            ));
        }
    }
    if errors.is_empty() {
        Ok((running, warnings))
    } else {
        Err(ConfigErrors(errors))
    }
}

/// A service as its change leaves it; `None` when deleted.
fn changed(
    base: Option<(&ServiceConfig, Option<Table>)>,
    change: &ServiceChange,
    source: Source,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<ServiceView> {
    if matches!(change.state, ServiceState::Deleted | ServiceState::Reset) {
        return None;
    }
    let path = format!("services.{}", change.name);
    let (mut config, table) = match (&change.table, base) {
        (Some(json), _) => {
            let table = match serde_json::from_str::<Table>(json) {
                Ok(table) => table,
                Err(e) => {
                    errors.push(format!("{path}: not a table: {e}"));
                    return None;
                }
            };
            match GatewayConfig::service_from_table(&table, &path, |n| std::env::var(n).ok()) {
                Ok((config, said)) if config.name() == change.name => {
                    warnings.extend(said);
                    (config, Some(table))
                }
                Ok((config, _)) => {
                    errors.push(format!(
                        "{path}.name: {:?} is not the service's name {:?}",
                        config.name(),
                        change.name
                    ));
                    return None;
                }
                Err(e) => {
                    errors.extend(e.0);
                    return None;
                }
            }
        }
        // Disabled as the config has it.
        (None, Some((service, table))) => (service.clone(), table),
        (None, None) => {
            errors.push(format!("{path}: no table to create it from"));
            return None;
        }
    };
    if change.state == ServiceState::Disabled {
        config.priced.auth = Auth::Disabled;
    }
    Some(ServiceView {
        config,
        state: change.state,
        source,
        table,
        change: Some(change.clone()),
    })
}
