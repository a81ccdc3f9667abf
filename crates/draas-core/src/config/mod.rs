//! The drasi-server configuration schema, as DRaaS and the bundled runtime use it.
//!
//! One model serves three readers:
//! - the bundled runtime parses its YAML file into [`DrasiServerConfig`];
//! - the control plane keeps an instance's Drasi configuration as a
//!   [`DrasiServerConfig`] and renders it to YAML for the platform worker;
//! - the official `drasi-server` reads what [`render_yaml`] writes.
//!
//! Field names and defaults follow drasi-server (`src/config/types.rs`,
//! `api/models/*`): camelCase, unknown top-level and query keys rejected.
//! Sources and reactions carry their plugin-specific keys in `properties`;
//! those are checked by the plugin that owns them (see `draas-drasi`), which is
//! why [`SourceConfig`] and [`ReactionConfig`] cannot deny unknown fields
//! themselves. [`validate_structure`] checks what needs no plugin knowledge.

mod lines;
mod validate;

pub use lines::line_of;
pub use validate::{validate_structure, ConfigIssue};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// drasi-server's default API bind address.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// drasi-server's default API port.
pub const DEFAULT_PORT: u16 = 8080;
/// drasi-server's default log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Log levels drasi-server accepts (case-insensitive).
pub const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Top-level keys of drasi-server that only concern its dynamic plugin
/// machinery. A statically linked runtime has nothing to do with them, so they
/// are accepted (a drasi-server file stays valid) and ignored with a warning.
pub const PLUGIN_MANAGEMENT_KEYS: [&str; 8] = [
    "plugins",
    "autoInstallPlugins",
    "verifyPlugins",
    "pluginRegistry",
    "trustedIdentities",
    "hotReloadPlugins",
    "hotReloadDebounceMs",
    "enableUi",
];

/// One drasi-server configuration file (single-instance mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrasiServerConfig {
    /// Informational (`drasi.io/v1`); never validated, as in drasi-server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Server id. It names the data directory (`./data/id-<hex>/`); without
    /// it drasi-server invents a new UUID on every start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// API bind address.
    #[serde(default = "default_host")]
    pub host: String,
    /// API port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Log level, used when `RUST_LOG` is unset.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Whether the server writes API changes back to this file.
    #[serde(default = "default_true")]
    pub persist_config: bool,
    /// Whether queries keep their index on disk (RocksDB).
    #[serde(default)]
    pub persist_index: bool,
    /// Sources, in file order.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Continuous queries, in file order.
    #[serde(default)]
    pub queries: Vec<QueryConfig>,
    /// Reactions, in file order.
    #[serde(default)]
    pub reactions: Vec<ReactionConfig>,

    // --- drasi-server plugin-management keys: accepted, never rendered ---
    /// Ignored: plugins are linked into the bundled runtime.
    #[serde(default, skip_serializing)]
    pub plugins: Option<Value>,
    /// Ignored: nothing is downloaded.
    #[serde(default, skip_serializing)]
    pub auto_install_plugins: Option<Value>,
    /// Ignored: nothing is loaded dynamically.
    #[serde(default, skip_serializing)]
    pub verify_plugins: Option<Value>,
    /// Ignored: nothing is downloaded.
    #[serde(default, skip_serializing)]
    pub plugin_registry: Option<Value>,
    /// Ignored: nothing is verified.
    #[serde(default, skip_serializing)]
    pub trusted_identities: Option<Value>,
    /// Ignored: nothing is loaded dynamically.
    #[serde(default, skip_serializing)]
    pub hot_reload_plugins: Option<Value>,
    /// Ignored: nothing is loaded dynamically.
    #[serde(default, skip_serializing)]
    pub hot_reload_debounce_ms: Option<Value>,
    /// Ignored: the bundled runtime serves no UI.
    #[serde(default, skip_serializing)]
    pub enable_ui: Option<Value>,
}

impl Default for DrasiServerConfig {
    fn default() -> Self {
        Self {
            api_version: None,
            id: None,
            host: default_host(),
            port: default_port(),
            log_level: default_log_level(),
            persist_config: true,
            persist_index: false,
            sources: Vec::new(),
            queries: Vec::new(),
            reactions: Vec::new(),
            plugins: None,
            auto_install_plugins: None,
            verify_plugins: None,
            plugin_registry: None,
            trusted_identities: None,
            hot_reload_plugins: None,
            hot_reload_debounce_ms: None,
            enable_ui: None,
        }
    }
}

impl DrasiServerConfig {
    /// The plugin-management keys present in this file (see
    /// [`PLUGIN_MANAGEMENT_KEYS`]); the runtime warns that it ignores them.
    pub fn ignored_keys(&self) -> Vec<&'static str> {
        let present = [
            self.plugins.is_some(),
            self.auto_install_plugins.is_some(),
            self.verify_plugins.is_some(),
            self.plugin_registry.is_some(),
            self.trusted_identities.is_some(),
            self.hot_reload_plugins.is_some(),
            self.hot_reload_debounce_ms.is_some(),
            self.enable_ui.is_some(),
        ];
        PLUGIN_MANAGEMENT_KEYS
            .iter()
            .zip(present)
            .filter_map(|(k, p)| p.then_some(*k))
            .collect()
    }

    /// Every TCP port this configuration listens on: the API port and the
    /// `port` of each source and reaction that has one (http source, sse
    /// reaction, ...). Used to keep instances on one host from colliding.
    pub fn listening_ports(&self) -> Vec<ListeningPort> {
        let mut ports = vec![ListeningPort {
            port: self.port,
            owner: "server".to_string(),
        }];
        let components = self
            .sources
            .iter()
            .map(|s| ("source", &s.id, &s.kind, &s.properties))
            .chain(
                self.reactions
                    .iter()
                    .map(|r| ("reaction", &r.id, &r.kind, &r.properties)),
            );
        for (what, id, kind, props) in components {
            let port = match props.get("port") {
                Some(v) => v.as_u64().and_then(|p| u16::try_from(p).ok()),
                // The sse reaction listens on 8080 unless told otherwise.
                None if what == "reaction" && kind == "sse" => Some(DEFAULT_PORT),
                None => None,
            };
            if let Some(port) = port {
                ports.push(ListeningPort {
                    port,
                    owner: format!("{what} '{id}'"),
                });
            }
        }
        ports
    }
}

/// A port a configuration listens on, and which part of it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListeningPort {
    /// The TCP port.
    pub port: u16,
    /// `server`, `source 'id'` or `reaction 'id'`.
    pub owner: String,
}

/// A source: common fields plus the plugin's own configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SourceConfig {
    /// Plugin kind (`mock`, `http`, `postgres`, ...).
    pub kind: String,
    /// Unique component id.
    pub id: String,
    /// Start with the server (drasi-server default: true).
    #[serde(default = "default_true")]
    pub auto_start: bool,
    /// Inline bootstrap provider (`{kind, ...}`) or the id of a shared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_provider: Option<Value>,
    /// Id of an identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_provider: Option<String>,
    /// Everything else: the plugin's configuration, passed to it unchanged.
    #[serde(flatten)]
    pub properties: Map<String, Value>,
}

/// A reaction: common fields plus the plugin's own configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReactionConfig {
    /// Plugin kind (`log`, `sse`, `http`, ...).
    pub kind: String,
    /// Unique component id.
    pub id: String,
    /// Ids of the queries this reaction subscribes to (required).
    pub queries: Vec<String>,
    /// Start with the server (drasi-server default: true).
    #[serde(default = "default_true")]
    pub auto_start: bool,
    /// Id of an identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_provider: Option<String>,
    /// Everything else: the plugin's configuration, passed to it unchanged.
    #[serde(flatten)]
    pub properties: Map<String, Value>,
}

/// Query language of a continuous query (case-sensitive, as in drasi-server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum QueryLanguage {
    /// openCypher.
    Cypher,
    /// ISO GQL; drasi-server's default.
    #[default]
    GQL,
}

/// A continuous query (drasi-server `QueryConfigDto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryConfig {
    /// Unique component id.
    pub id: String,
    /// Start with the server. drasi-server defaults to **false**.
    #[serde(default)]
    pub auto_start: bool,
    /// The query text.
    pub query: String,
    /// drasi-server defaults to **GQL**.
    #[serde(default)]
    pub query_language: QueryLanguage,
    /// Middleware available to the source pipelines.
    #[serde(default)]
    pub middleware: Vec<MiddlewareConfig>,
    /// The sources this query reads.
    #[serde(default)]
    pub sources: Vec<SourceSubscription>,
    /// Load the sources' current state before streaming changes.
    #[serde(default = "default_true")]
    pub enable_bootstrap: bool,
    /// Changes buffered while bootstrapping.
    #[serde(default = "default_bootstrap_buffer_size")]
    pub bootstrap_buffer_size: usize,
    /// Synthetic joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joins: Option<Value>,
    /// Priority queue capacity (inherits the server's when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_queue_capacity: Option<usize>,
    /// Dispatch buffer capacity (inherits the server's when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_buffer_capacity: Option<usize>,
    /// Only `Channel` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_mode: Option<String>,
    /// Named or inline storage backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_backend: Option<Value>,
    /// Recent results kept for reactions' gap recovery.
    #[serde(default = "default_outbox_capacity")]
    pub outbox_capacity: usize,
    /// How long snapshot fetches wait for bootstrap.
    #[serde(default = "default_bootstrap_timeout_secs")]
    pub bootstrap_timeout_secs: u64,
}

impl QueryConfig {
    /// A Cypher query that starts with the server, reading the given sources.
    pub fn cypher(id: impl Into<String>, query: impl Into<String>, sources: &[&str]) -> Self {
        Self {
            id: id.into(),
            auto_start: true,
            query: query.into(),
            query_language: QueryLanguage::Cypher,
            middleware: Vec::new(),
            sources: sources
                .iter()
                .map(|s| SourceSubscription {
                    source_id: (*s).to_string(),
                    nodes: Vec::new(),
                    relations: Vec::new(),
                    pipeline: Vec::new(),
                })
                .collect(),
            enable_bootstrap: true,
            bootstrap_buffer_size: default_bootstrap_buffer_size(),
            joins: None,
            priority_queue_capacity: None,
            dispatch_buffer_capacity: None,
            dispatch_mode: None,
            storage_backend: None,
            outbox_capacity: default_outbox_capacity(),
            bootstrap_timeout_secs: default_bootstrap_timeout_secs(),
        }
    }
}

/// A query's subscription to one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSubscription {
    /// The source's id.
    pub source_id: String,
    /// Node labels to receive (all when empty).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Relation labels to receive (all when empty).
    #[serde(default)]
    pub relations: Vec<String>,
    /// Names of middleware (from the query's `middleware`) to apply, in order.
    #[serde(default)]
    pub pipeline: Vec<String>,
}

/// A middleware definition of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MiddlewareConfig {
    /// Middleware kind (`jq`, `map`, `unwind`, ...).
    pub kind: String,
    /// Name referenced from `pipeline`.
    pub name: String,
    /// Kind-specific settings.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// Why a YAML document could not be read as a [`DrasiServerConfig`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// What was wrong, with line and column when known.
    pub message: String,
    /// 1-based line of the problem, when known.
    pub line: Option<u64>,
    /// 1-based column of the problem, when known.
    pub column: Option<u64>,
}

/// Parses a drasi-server YAML document. Unknown top-level or query keys are
/// errors that name the key and its position.
pub fn parse_yaml(text: &str) -> Result<DrasiServerConfig, YamlError> {
    parse_yaml_as(text)
}

/// Parses any YAML document into `T` (a request body, a JSON value): the
/// error names the line and column where it can.
pub fn parse_yaml_as<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let location = e.location();
        // The rendered error carries a source snippet after the first line;
        // callers want one line.
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        YamlError {
            message: first.strip_prefix("error: ").unwrap_or(first).to_string(),
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
        }
    })
}

/// Renders any serializable value (a JSON document) as YAML.
pub fn render_yaml_value<T: Serialize>(value: &T) -> Result<String, RenderError> {
    serde_saphyr::to_string(value).map_err(|e| RenderError(e.to_string()))
}

/// Renders a configuration as drasi-server YAML with a YAML serializer. Every
/// field with a drasi-server default DRaaS depends on (`persistConfig`,
/// `autoStart`, `queryLanguage`, ...) is written out explicitly.
pub fn render_yaml(config: &DrasiServerConfig) -> Result<String, RenderError> {
    serde_saphyr::to_string(config).map_err(|e| RenderError(e.to_string()))
}

/// The configuration could not be rendered (a value YAML cannot hold).
#[derive(Debug, thiserror::Error)]
#[error("cannot render configuration as YAML: {0}")]
pub struct RenderError(pub String);

fn default_host() -> String {
    DEFAULT_HOST.to_string()
}
fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_string()
}
fn default_true() -> bool {
    true
}
fn default_bootstrap_buffer_size() -> usize {
    10_000
}
fn default_outbox_capacity() -> usize {
    1000
}
fn default_bootstrap_timeout_secs() -> u64 {
    300
}

#[cfg(test)]
mod tests;
