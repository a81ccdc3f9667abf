//! The drasi-server configuration file, whole, as DRaaS and the bundled
//! runtime use it.
//!
//! One model serves three readers:
//! - the control plane keeps an instance's configuration as a
//!   [`DrasiServerConfig`] (what the user gave, with DRaaS's decisions
//!   filled in) and renders it to YAML for the platform worker
//!   ([`DrasiServerConfig::for_server`]);
//! - the bundled runtime parses its YAML file into the same type;
//! - the official `drasi-server` reads what [`render_yaml`] writes.
//!
//! Field names and defaults follow drasi-server 0.2.x (`src/config/types.rs`,
//! `api/models/*`): camelCase, every top-level key it accepts, unknown
//! top-level, instance and query keys rejected in what a user sends
//! ([`parse_yaml`], the API's bodies: see [`crate::strict`]) and tolerated
//! in what DRaaS stored or sent itself (a newer version's record). Values drasi-server resolves
//! from the environment are [`ConfigValue`]s, kept in the form they were
//! written in. Sources, reactions and providers carry their plugin-specific
//! keys in `properties`; those are checked by the plugin that owns them (see
//! `draas-drasi`). [`validate_structure`] checks what needs no plugin.

mod lines;
mod ports;
mod settle;
mod validate;
mod value;

pub use lines::line_of;
pub use ports::{
    listening_ports, port_role, port_value, ComponentClass, ListeningPort, PortField, PortRole,
    PORT_FIELDS,
};
pub use settle::{set_port, settle, slot_name, SettleContext, Settled};
pub use validate::{inner_path_problem, validate_structure, ConfigIssue, ValidationContext};
pub use value::{parse_reference, reference_in, ConfigValue, EnvReference, ResolveError};

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

/// A whole drasi-server configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DrasiServerConfig {
    /// Informational (`drasi.io/v1`); never validated, as in drasi-server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The server's (single lib instance's) id. It names the data directory
    /// (`./data/id-<hex>/`) and the `/api/v1/instances/{id}` routes; DRaaS
    /// gives the instance's own id when the file has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ConfigValue<String>>,
    /// API bind address (default `0.0.0.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<ConfigValue<String>>,
    /// API port (default 8080; DRaaS allocates one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<ConfigValue<u16>>,
    /// Log level, used when `RUST_LOG` is unset.
    #[serde(default = "default_log_level")]
    pub log_level: ConfigValue<String>,
    /// Whether the server writes API changes back to this file (drasi-server
    /// default: true). DRaaS keeps the file itself: servers it runs get
    /// `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist_config: Option<bool>,
    /// Whether queries keep their index on disk (RocksDB).
    #[serde(default)]
    pub persist_index: bool,
    /// The archive index (`past()` functions) of persistent queries.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_archive: bool,
    /// drasi-server's web UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_ui: Option<bool>,
    /// Where drasi-server keeps solution templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solutions_dir: Option<String>,
    /// Where reactions keep their state (`{kind: redb, path}`); in memory
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_store: Option<StateStoreConfig>,
    /// Resolves `{kind: Secret, name}` values in plugin fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_store: Option<PluginConfig>,
    /// Priority queue capacity of every query (drasi-lib default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_priority_queue_capacity: Option<ConfigValue<usize>>,
    /// Dispatch buffer capacity of every component (drasi-lib default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_dispatch_buffer_capacity: Option<ConfigValue<usize>>,
    /// Plugin management (drasi-server's dynamic plugins): the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_registry: Option<String>,
    /// Plugin management: download `plugins` at startup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_install_plugins: Option<bool>,
    /// Plugin management: the plugins the file needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginReference>,
    /// Plugin management: verify signatures (drasi-server default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_plugins: Option<bool>,
    /// Plugin management: whose signatures are trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_identities: Vec<TrustedIdentity>,
    /// Plugin management: watch the plugin directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_reload_plugins: Option<bool>,
    /// Plugin management: debounce of the watch, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_reload_debounce_ms: Option<u64>,
    /// Origins allowed to call the API from a browser (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_allowed_origins: Vec<String>,
    /// Sources, in file order.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Continuous queries, in file order.
    #[serde(default)]
    pub queries: Vec<QueryConfig>,
    /// Reactions, in file order.
    #[serde(default)]
    pub reactions: Vec<ReactionConfig>,
    /// Identity providers sources and reactions name (`identityProvider`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_providers: Vec<NamedPluginConfig>,
    /// Bootstrap providers sources name by id (`bootstrapProvider: <id>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_providers: Vec<NamedPluginConfig>,
    /// Several Drasi lib instances in one server. When set, the top-level
    /// id, stores, capacities and components are not used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<LibInstanceConfig>,
}

/// One Drasi lib instance of a multi-instance server (`instances[]`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LibInstanceConfig {
    /// Its id (routes `/api/v1/instances/{id}/...`, data `./data/id-<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ConfigValue<String>>,
    /// Queries keep their index on disk.
    #[serde(default)]
    pub persist_index: bool,
    /// The archive index of persistent queries.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_archive: bool,
    /// Where its reactions keep state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_store: Option<StateStoreConfig>,
    /// Resolves secrets in its plugin fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_store: Option<PluginConfig>,
    /// Priority queue capacity of its queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_priority_queue_capacity: Option<ConfigValue<usize>>,
    /// Dispatch buffer capacity of its components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_dispatch_buffer_capacity: Option<ConfigValue<usize>>,
    /// Sources.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Continuous queries.
    #[serde(default)]
    pub queries: Vec<QueryConfig>,
    /// Reactions.
    #[serde(default)]
    pub reactions: Vec<ReactionConfig>,
    /// Identity providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_providers: Vec<NamedPluginConfig>,
    /// Shared bootstrap providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap_providers: Vec<NamedPluginConfig>,
}

/// `stateStore`: where reactions keep their state. drasi-server knows one
/// kind, `redb`, with a `path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StateStoreConfig {
    /// `redb`.
    pub kind: String,
    /// The database file, relative to the server's working directory.
    pub path: ConfigValue<String>,
}

/// A plugin configuration without an id (`secretStore`): its kind and the
/// plugin's own keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    /// Plugin kind.
    pub kind: String,
    /// The plugin's own keys.
    #[serde(flatten)]
    pub properties: Map<String, Value>,
}

/// A plugin configuration with an id (`identityProviders[]`,
/// `bootstrapProviders[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct NamedPluginConfig {
    /// Plugin kind.
    pub kind: String,
    /// The id components refer to it by.
    pub id: String,
    /// The plugin's own keys.
    #[serde(flatten)]
    pub properties: Map<String, Value>,
}

/// `plugins[]`: a plugin drasi-server installs (`source/mock`, an OCI
/// reference, `file://...`, `https://...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginReference {
    /// The reference.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// `trustedIdentities[]`: a signer whose plugins drasi-server loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TrustedIdentity {
    /// OIDC issuer.
    pub issuer: String,
    /// Subject pattern.
    pub subject_pattern: String,
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
    /// Inline bootstrap provider (`{kind, ...}`) or the id of one of
    /// `bootstrapProviders`.
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
#[serde(rename_all = "camelCase")]
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
    /// How long a reaction's subscription waits for the bootstrap.
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
#[serde(rename_all = "camelCase")]
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
#[serde(rename_all = "camelCase")]
pub struct MiddlewareConfig {
    /// Middleware kind (`jq`, `map`, `unwind`, ...).
    pub kind: String,
    /// Name referenced from `pipeline`.
    pub name: String,
    /// Kind-specific settings.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// A bootstrap provider as built: its kind and its whole configuration.
pub type BootstrapSpec = (String, Map<String, Value>);

/// One Drasi lib instance as the server builds it: the entry of
/// `instances[]`, or the top level of a single-instance file.
#[derive(Debug, Clone, Copy)]
pub struct LibInstance<'a> {
    /// Its position in `instances[]`; `None` for the top level.
    pub index: Option<usize>,
    /// Its id as written.
    pub id: Option<&'a ConfigValue<String>>,
    /// Persistent index.
    pub persist_index: bool,
    /// Archive index.
    pub enable_archive: bool,
    /// Its state store.
    pub state_store: Option<&'a StateStoreConfig>,
    /// Its secret store.
    pub secret_store: Option<&'a PluginConfig>,
    /// Priority queue capacity.
    pub default_priority_queue_capacity: Option<&'a ConfigValue<usize>>,
    /// Dispatch buffer capacity.
    pub default_dispatch_buffer_capacity: Option<&'a ConfigValue<usize>>,
    /// Sources.
    pub sources: &'a [SourceConfig],
    /// Queries.
    pub queries: &'a [QueryConfig],
    /// Reactions.
    pub reactions: &'a [ReactionConfig],
    /// Identity providers.
    pub identity_providers: &'a [NamedPluginConfig],
    /// Shared bootstrap providers.
    pub bootstrap_providers: &'a [NamedPluginConfig],
}

impl<'a> LibInstance<'a> {
    /// JSON Pointer of this instance in the file (`""` or `/instances/2`):
    /// the prefix of the paths of its parts.
    pub fn pointer(&self) -> String {
        self.index
            .map(|i| format!("/instances/{i}"))
            .unwrap_or_default()
    }

    /// The bootstrap provider of `source`, as drasi-server builds it: its
    /// kind and configuration (an inline provider of the source's own kind
    /// inherits every source field it does not set; one of
    /// `bootstrapProviders` is taken as written), or why it cannot be
    /// found. `None` when the source has none.
    pub fn bootstrap_of(&self, source: &SourceConfig) -> Option<Result<BootstrapSpec, String>> {
        let provider = source.bootstrap_provider.as_ref()?;
        let (kind, own) = match provider {
            Value::String(id) => match self.bootstrap_providers.iter().find(|p| &p.id == id) {
                Some(shared) => (shared.kind.clone(), shared.properties.clone()),
                None => {
                    return Some(Err(format!(
                        "source '{}' names bootstrap provider '{id}', which is not one of bootstrapProviders ({})",
                        source.id,
                        self.bootstrap_providers
                            .iter()
                            .map(|p| p.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            },
            Value::Object(map) => match map.get("kind") {
                Some(Value::String(kind)) => {
                    let mut own = map.clone();
                    own.remove("kind");
                    (kind.clone(), own)
                }
                _ => {
                    return Some(Err(
                        "bootstrapProvider needs a `kind` (e.g. {kind: postgres})".to_string()
                    ))
                }
            },
            _ => {
                return Some(Err(
                    "bootstrapProvider is the id of one of bootstrapProviders or an inline {kind, ...}"
                        .to_string(),
                ))
            }
        };
        // drasi-server merges an inline provider of the source's own kind
        // with the source's fields (a shared one is taken as written).
        let mut config = Map::new();
        if kind == source.kind && provider.is_object() {
            config.extend(source.properties.clone());
        }
        config.extend(own);
        Some(Ok((kind, config)))
    }
}

impl DrasiServerConfig {
    /// The Drasi lib instances the server builds: each of `instances`, or
    /// the top level when there are none.
    pub fn lib_instances(&self) -> Vec<LibInstance<'_>> {
        if self.instances.is_empty() {
            return vec![LibInstance {
                index: None,
                id: self.id.as_ref(),
                persist_index: self.persist_index,
                enable_archive: self.enable_archive,
                state_store: self.state_store.as_ref(),
                secret_store: self.secret_store.as_ref(),
                default_priority_queue_capacity: self.default_priority_queue_capacity.as_ref(),
                default_dispatch_buffer_capacity: self.default_dispatch_buffer_capacity.as_ref(),
                sources: &self.sources,
                queries: &self.queries,
                reactions: &self.reactions,
                identity_providers: &self.identity_providers,
                bootstrap_providers: &self.bootstrap_providers,
            }];
        }
        self.instances
            .iter()
            .enumerate()
            .map(|(i, lib)| LibInstance {
                index: Some(i),
                id: lib.id.as_ref(),
                persist_index: lib.persist_index,
                enable_archive: lib.enable_archive,
                state_store: lib.state_store.as_ref(),
                secret_store: lib.secret_store.as_ref(),
                default_priority_queue_capacity: lib.default_priority_queue_capacity.as_ref(),
                default_dispatch_buffer_capacity: lib.default_dispatch_buffer_capacity.as_ref(),
                sources: &lib.sources,
                queries: &lib.queries,
                reactions: &lib.reactions,
                identity_providers: &lib.identity_providers,
                bootstrap_providers: &lib.bootstrap_providers,
            })
            .collect()
    }

    /// Every source of every lib instance, with the JSON Pointer of each.
    pub fn all_sources(&self) -> Vec<(String, &SourceConfig)> {
        self.lib_instances()
            .into_iter()
            .flat_map(|lib| {
                let base = lib.pointer();
                lib.sources
                    .iter()
                    .enumerate()
                    .map(move |(i, s)| (format!("{base}/sources/{i}"), s))
            })
            .collect()
    }

    /// Every reaction of every lib instance, with the JSON Pointer of each.
    pub fn all_reactions(&self) -> Vec<(String, &ReactionConfig)> {
        self.lib_instances()
            .into_iter()
            .flat_map(|lib| {
                let base = lib.pointer();
                lib.reactions
                    .iter()
                    .enumerate()
                    .map(move |(i, r)| (format!("{base}/reactions/{i}"), r))
            })
            .collect()
    }

    /// Every query of every lib instance, with the JSON Pointer of each.
    pub fn all_queries(&self) -> Vec<(String, &QueryConfig)> {
        self.lib_instances()
            .into_iter()
            .flat_map(|lib| {
                let base = lib.pointer();
                lib.queries
                    .iter()
                    .enumerate()
                    .map(move |(i, q)| (format!("{base}/queries/{i}"), q))
            })
            .collect()
    }

    /// The API host as written (`0.0.0.0` when absent), if it is static.
    pub fn static_host(&self) -> Option<&str> {
        match &self.host {
            None => Some(DEFAULT_HOST),
            Some(value) => value.as_static().map(String::as_str),
        }
    }

    /// The API port as written (8080 when absent), if it is static.
    pub fn static_port(&self) -> Option<u16> {
        match &self.port {
            None => Some(DEFAULT_PORT),
            Some(value) => value.as_static().copied(),
        }
    }

    /// An empty server on `host:port`.
    pub fn empty(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: Some(ConfigValue::Static(host.into())),
            port: Some(ConfigValue::Static(port)),
            log_level: default_log_level(),
            ..Self::default()
        }
    }

    /// The file a server of instance `instance_id` is started with: this
    /// configuration, with the lib instances' ids filled in (the instance's
    /// own id; `<id>-<n>` for an entry of `instances` without one, so its
    /// data survives restarts) and `persistConfig: false` (the file DRaaS
    /// keeps stays authoritative). References to the environment stay
    /// references: the server resolves them from the environment DRaaS
    /// gives it, so no secret is written into a file.
    pub fn for_server(&self, instance_id: &str) -> DrasiServerConfig {
        let mut server = self.clone();
        server.persist_config = Some(false);
        if server.instances.is_empty() {
            server
                .id
                .get_or_insert_with(|| ConfigValue::Static(instance_id.to_string()));
        }
        for (i, lib) in server.instances.iter_mut().enumerate() {
            lib.id
                .get_or_insert_with(|| ConfigValue::Static(format!("{instance_id}-{i}")));
        }
        server
    }
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

/// Parses a drasi-server YAML document a user wrote. Unknown keys (outside
/// the plugins' own) are errors that name the key and its line.
pub fn parse_yaml(text: &str) -> Result<DrasiServerConfig, YamlError> {
    parse_yaml_strict(text)
}

/// Parses a YAML document a user wrote (a request body, a file) into `T`,
/// refusing fields `T` does not know ([`crate::strict`]): the error names
/// the line where it can.
pub fn parse_yaml_strict<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let value: Value = parse_yaml_as(text)?;
    crate::strict::from_value(value).map_err(|e| {
        let line = lines::line_of(text, &e.path).map(|l| l as u64 + 1);
        let at = if e.path == "/" {
            String::new()
        } else {
            format!(" at {}", e.path)
        };
        YamlError {
            message: match line {
                Some(line) => format!("line {line}: {}{at}", e.message),
                None => format!("{}{at}", e.message),
            },
            line,
            column: None,
        }
    })
}

/// Parses any YAML document into `T` leniently (fields `T` does not know
/// are ignored: a document DRaaS itself rendered, perhaps by a newer
/// version): the error names the line and column where it can.
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

/// Renders a configuration as drasi-server YAML with a YAML serializer.
/// Every field with a drasi-server default DRaaS depends on (`autoStart`,
/// `queryLanguage`, ...) is written out explicitly.
pub fn render_yaml(config: &DrasiServerConfig) -> Result<String, RenderError> {
    serde_saphyr::to_string(config).map_err(|e| RenderError(e.to_string()))
}

/// The configuration could not be rendered (a value YAML cannot hold).
#[derive(Debug, thiserror::Error)]
#[error("cannot render configuration as YAML: {0}")]
pub struct RenderError(pub String);

fn default_log_level() -> ConfigValue<String> {
    ConfigValue::Static(DEFAULT_LOG_LEVEL.to_string())
}
fn default_true() -> bool {
    true
}
fn is_false(value: &bool) -> bool {
    !*value
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

impl Default for DrasiServerConfig {
    fn default() -> Self {
        Self {
            api_version: None,
            id: None,
            host: None,
            port: None,
            log_level: default_log_level(),
            persist_config: None,
            persist_index: false,
            enable_archive: false,
            enable_ui: None,
            solutions_dir: None,
            state_store: None,
            secret_store: None,
            default_priority_queue_capacity: None,
            default_dispatch_buffer_capacity: None,
            plugin_registry: None,
            auto_install_plugins: None,
            plugins: Vec::new(),
            verify_plugins: None,
            trusted_identities: Vec::new(),
            hot_reload_plugins: None,
            hot_reload_debounce_ms: None,
            cors_allowed_origins: Vec::new(),
            sources: Vec::new(),
            queries: Vec::new(),
            reactions: Vec::new(),
            identity_providers: Vec::new(),
            bootstrap_providers: Vec::new(),
            instances: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
