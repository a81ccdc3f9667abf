//! Turns a validated [`DrasiServerConfig`] into running Drasi lib instances.
//!
//! The order mirrors drasi-server, with one change that keeps a
//! configuration drasi-server starts from failing here: every component is
//! created through its plugin descriptor and each lib is built (which
//! checks the component graph); then sources and queries start, and a
//! reaction that starts with the server is started only once each of its
//! queries finished bootstrapping ([`crate::supervise`]). drasi-server
//! starts reactions at once, so a reaction whose query still bootstraps
//! waits inside its start and fails the whole start if the bootstrap fails
//! or outlasts `bootstrapTimeoutSecs`.
//!
//! Server-level values (`id`, capacities, `stateStore.path`, the password
//! identity provider) are resolved from the process environment, as
//! drasi-server does; plugins resolve their own fields the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use draas_core::config::{ConfigValue, DrasiServerConfig, LibInstance, QueryConfig, QueryLanguage};
use drasi_lib::identity::{IdentityProvider, PasswordIdentityProvider};
use drasi_lib::{ComponentStatus, DrasiLib};
use drasi_wal_redb::RedbWalProvider;
use serde_json::Value;

use crate::plugins;
use crate::progress::{Counted, Progress};

/// A startup failure, naming the component that caused it.
#[derive(Debug, thiserror::Error)]
#[error("{component}: {message}")]
pub struct StartupError {
    /// `source 'x'`, `query 'q'`, `reaction 'r'` or `configuration`.
    pub component: String,
    /// What went wrong.
    pub message: String,
}

impl StartupError {
    fn new(component: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            component: component.into(),
            message: message.to_string(),
        }
    }
}

/// A reaction that starts with the server once its queries run.
#[derive(Debug, Clone)]
pub struct DeferredReaction {
    /// Its id.
    pub id: String,
    /// The queries it waits for.
    pub queries: Vec<String>,
}

/// One built Drasi lib instance.
pub struct Lib {
    /// Its id.
    pub id: String,
    /// The lib.
    pub lib: Arc<DrasiLib>,
    /// Reactions the runtime starts once their queries run.
    pub deferred: Vec<DeferredReaction>,
    /// Sources that start with the server (restarted when they fail).
    pub auto_sources: Vec<String>,
    /// Its components' kinds, by id (for the status).
    pub kinds: HashMap<String, String>,
    /// Which components start with the server, by id.
    pub auto_start: HashMap<String, bool>,
    /// Bootstrap counts.
    pub progress: Arc<Progress>,
}

/// The directory, relative to the working directory, where a lib instance
/// keeps its data (`./data/id-<hex of id>`). Hex keeps any id a single,
/// safe path segment; drasi-server uses the same layout.
pub fn data_dir(work_dir: &Path, server_id: &str) -> PathBuf {
    let hex: String = server_id.bytes().map(|b| format!("{b:02x}")).collect();
    work_dir.join("data").join(format!("id-{hex}"))
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn resolve_text(value: &ConfigValue<String>, what: &str) -> Result<String, StartupError> {
    value
        .resolve(&env_lookup, "text")
        .map_err(|e| StartupError::new("configuration", format!("{what}: {e}")))
}

/// The id of each lib instance of `config` (`default_id` for a
/// single-instance file without one; `<default>-<n>` for an entry of
/// `instances` without one).
pub fn lib_ids(config: &DrasiServerConfig, default_id: &str) -> Result<Vec<String>, StartupError> {
    config
        .lib_instances()
        .iter()
        .map(|lib| match (lib.id, lib.index) {
            (Some(id), _) => resolve_text(id, &format!("{}/id", lib.pointer())),
            (None, None) => Ok(default_id.to_string()),
            (None, Some(i)) => Ok(format!("{default_id}-{i}")),
        })
        .collect()
}

/// Creates every component of every lib instance of `config` and builds
/// the libs. Nothing is started yet.
pub async fn build(
    config: &DrasiServerConfig,
    default_id: &str,
    work_dir: &Path,
) -> Result<Vec<Lib>, StartupError> {
    let ids = lib_ids(config, default_id)?;
    let mut secret_store_registered = false;
    let mut libs = Vec::new();
    for (lib, id) in config.lib_instances().into_iter().zip(ids) {
        if let Some(store) = lib.secret_store {
            if !secret_store_registered {
                register_secret_store(store).await?;
                secret_store_registered = true;
            }
        }
        libs.push(build_lib(&lib, &id, work_dir).await?);
    }
    Ok(libs)
}

async fn build_lib(spec: &LibInstance<'_>, id: &str, work_dir: &Path) -> Result<Lib, StartupError> {
    let data = data_dir(work_dir, id);
    std::fs::create_dir_all(&data).map_err(|e| {
        StartupError::new(
            "configuration",
            format!("cannot create data directory {}: {e}", data.display()),
        )
    })?;
    let mut builder = DrasiLib::builder()
        .with_id(id)
        .with_wal_provider(Arc::new(RedbWalProvider::new(data.join("wal"))));
    if let Some(capacity) = spec.default_priority_queue_capacity {
        let capacity = capacity
            .resolve(&env_lookup, "a capacity")
            .map_err(|e| StartupError::new("configuration", e))?;
        builder = builder.with_priority_queue_capacity(capacity);
    }
    if let Some(capacity) = spec.default_dispatch_buffer_capacity {
        let capacity = capacity
            .resolve(&env_lookup, "a capacity")
            .map_err(|e| StartupError::new("configuration", e))?;
        builder = builder.with_dispatch_buffer_capacity(capacity);
    }
    if spec.persist_index {
        // drasi-server's layout: one RocksDB per query under ./index.
        let index = drasi_index_rocksdb::RocksDbIndexProvider::new(
            data.join("index"),
            spec.enable_archive,
            false,
        );
        builder = builder.with_default_index_provider("rocksdb", Arc::new(index));
    }
    if let Some(store) = spec.state_store {
        let path = work_dir.join(resolve_text(&store.path, "stateStore.path")?);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StartupError::new(
                    "stateStore",
                    format!("cannot create {}: {e}", parent.display()),
                )
            })?;
        }
        let provider = drasi_state_store_redb::RedbStateStoreProvider::new(&path).map_err(|e| {
            StartupError::new("stateStore", format!("cannot open {}: {e}", path.display()))
        })?;
        builder = builder.with_state_store_provider(Arc::new(provider));
    }

    let mut identities: HashMap<&str, Arc<dyn IdentityProvider>> = HashMap::new();
    for provider in spec.identity_providers {
        let field = |name: &str| -> Result<String, StartupError> {
            let value: ConfigValue<String> = provider
                .properties
                .get(name)
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| StartupError::new(format!("identity provider '{}'", provider.id), e))?
                .ok_or_else(|| {
                    StartupError::new(
                        format!("identity provider '{}'", provider.id),
                        format!("missing `{name}`"),
                    )
                })?;
            resolve_text(
                &value,
                &format!("identity provider '{}' {name}", provider.id),
            )
        };
        match provider.kind.as_str() {
            "password" => {
                identities.insert(
                    provider.id.as_str(),
                    Arc::new(PasswordIdentityProvider::new(
                        &field("username")?,
                        &field("password")?,
                    )),
                );
            }
            other => {
                return Err(StartupError::new(
                    format!("identity provider '{}'", provider.id),
                    format!("unknown kind '{other}'"),
                ))
            }
        }
    }

    let progress = Arc::new(Progress::default());
    let mut kinds = HashMap::new();
    let mut auto_start = HashMap::new();
    let mut auto_sources = Vec::new();
    for source in spec.sources {
        let component = format!("source '{}'", source.id);
        let plugin = plugins::source(&source.kind).ok_or_else(|| {
            StartupError::new(&component, format!("unknown kind '{}'", source.kind))
        })?;
        let props = Value::Object(source.properties.clone());
        let created = plugin
            .descriptor
            .create_source(&source.id, &props, source.auto_start)
            .await
            .map_err(|e| StartupError::new(&component, format!("{e:#}")))?;
        if let Some(provider) = spec.bootstrap_of(source) {
            let (kind, bootstrap_config) =
                provider.map_err(|message| StartupError::new(&component, message))?;
            let bootstrap = plugins::bootstrap(&kind).ok_or_else(|| {
                StartupError::new(
                    &component,
                    format!("unknown bootstrap provider kind '{kind}'"),
                )
            })?;
            let provider = bootstrap
                .descriptor
                .create_bootstrap_provider(&Value::Object(bootstrap_config), &props)
                .await
                .map_err(|e| StartupError::new(&component, format!("bootstrap provider: {e:#}")))?;
            created
                .set_bootstrap_provider(Box::new(Counted::new(provider, progress.clone())))
                .await;
        }
        if let Some(idp) = &source.identity_provider {
            let provider = identities.get(idp.as_str()).ok_or_else(|| {
                StartupError::new(&component, format!("unknown identity provider '{idp}'"))
            })?;
            created.set_identity_provider(provider.clone()).await;
        }
        kinds.insert(source.id.clone(), source.kind.clone());
        auto_start.insert(source.id.clone(), source.auto_start);
        if source.auto_start {
            auto_sources.push(source.id.clone());
        }
        builder = builder.with_source(created);
    }

    for query in spec.queries {
        auto_start.insert(query.id.clone(), query.auto_start);
        builder = builder.with_query(
            lib_query(query).map_err(|e| StartupError::new(format!("query '{}'", query.id), e))?,
        );
    }

    let mut deferred = Vec::new();
    for reaction in spec.reactions {
        let component = format!("reaction '{}'", reaction.id);
        let plugin = plugins::reaction(&reaction.kind).ok_or_else(|| {
            StartupError::new(&component, format!("unknown kind '{}'", reaction.kind))
        })?;
        // Created stopped; started by the supervisor once its queries run.
        let created = plugin
            .descriptor
            .create_reaction(
                &reaction.id,
                reaction.queries.clone(),
                &Value::Object(reaction.properties.clone()),
                false,
            )
            .await
            .map_err(|e| StartupError::new(&component, format!("{e:#}")))?;
        if let Some(idp) = &reaction.identity_provider {
            let provider = identities.get(idp.as_str()).ok_or_else(|| {
                StartupError::new(&component, format!("unknown identity provider '{idp}'"))
            })?;
            created.set_identity_provider(provider.clone()).await;
        }
        kinds.insert(reaction.id.clone(), reaction.kind.clone());
        auto_start.insert(reaction.id.clone(), reaction.auto_start);
        if reaction.auto_start {
            deferred.push(DeferredReaction {
                id: reaction.id.clone(),
                queries: reaction.queries.clone(),
            });
        }
        builder = builder.with_reaction(created);
    }

    let lib = builder.build().await.map_err(|e| {
        StartupError::new(
            format!("instance '{id}'"),
            format!("cannot assemble its components: {e}"),
        )
    })?;
    Ok(Lib {
        id: id.to_string(),
        lib: Arc::new(lib),
        deferred,
        auto_sources,
        kinds,
        auto_start,
        progress,
    })
}

/// Creates the server's secret store and lets every plugin resolve
/// `{kind: Secret, name}` through it.
async fn register_secret_store(
    store: &draas_core::config::PluginConfig,
) -> Result<(), StartupError> {
    use drasi_plugin_sdk::descriptor::SecretStorePluginDescriptor;
    if store.kind != "file" {
        return Err(StartupError::new(
            "secretStore",
            format!("unknown kind '{}'", store.kind),
        ));
    }
    let provider = drasi_secret_store_file::FileSecretStoreDescriptor
        .create_secret_store(&Value::Object(store.properties.clone()))
        .await
        .map_err(|e| StartupError::new("secretStore", format!("{e:#}")))?;
    drasi_plugin_sdk::resolver::register_secret_resolver(Arc::new(SecretResolver(Arc::from(
        provider,
    ))));
    Ok(())
}

/// Resolves `{kind: Secret, name}` values through the secret store.
struct SecretResolver(Arc<dyn drasi_lib::SecretStoreProvider>);

#[async_trait::async_trait]
impl drasi_plugin_sdk::resolver::ValueResolver for SecretResolver {
    async fn resolve_to_string(
        &self,
        value: &drasi_plugin_sdk::config_value::ConfigValue<String>,
    ) -> Result<String, drasi_plugin_sdk::resolver::ResolverError> {
        use drasi_plugin_sdk::config_value::ConfigValue as Sdk;
        use drasi_plugin_sdk::resolver::ResolverError;
        match value {
            Sdk::Secret { name } => self
                .0
                .get_secret(name)
                .await
                .map_err(|e| ResolverError::SecretResolutionFailed(format!("{name}: {e}"))),
            _ => Err(ResolverError::WrongResolverType),
        }
    }
}

/// Starts the sources and queries of every lib (reactions follow, see
/// [`crate::supervise`]). A source that cannot start fails the start, as
/// in drasi-server; a query that fails is left in `Error` and the server
/// runs on (drasi-server semantics: query start is best-effort).
pub async fn start(libs: &[Lib]) -> Result<(), StartupError> {
    for lib in libs {
        if let Err(e) = lib.lib.start().await {
            return Err(StartupError::new(blame(lib, &e.to_string()), e));
        }
        for source in &lib.auto_sources {
            if let Ok(info) = lib.lib.get_source_info(source).await {
                if info.status == ComponentStatus::Error {
                    return Err(StartupError::new(
                        format!("source '{source}'"),
                        info.error_message
                            .unwrap_or_else(|| "failed to start".into()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The component a drasi-lib start error is about: the first component whose
/// id the message quotes, else the lib as a whole.
fn blame(lib: &Lib, message: &str) -> String {
    // drasi-lib names components as 'id', "id" or "id: reason".
    let quoted = |id: &str| {
        message.contains(&format!("'{id}'"))
            || message.contains(&format!("\"{id}\""))
            || message.contains(&format!(" {id}: "))
    };
    lib.auto_sources
        .iter()
        .find(|id| quoted(id))
        .map(|id| format!("source '{id}'"))
        .unwrap_or_else(|| format!("instance '{}'", lib.id))
}

/// Maps the drasi-server query DTO onto drasi-lib's `QueryConfig`.
fn lib_query(query: &QueryConfig) -> Result<drasi_lib::config::QueryConfig, String> {
    use drasi_lib::config::{QueryConfig as LibQuery, SourceSubscriptionConfig};
    let middleware = query
        .middleware
        .iter()
        .map(|m| drasi_core::models::SourceMiddlewareConfig {
            kind: Arc::from(m.kind.as_str()),
            name: Arc::from(m.name.as_str()),
            config: m.config.clone(),
        })
        .collect();
    let joins = query
        .joins
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("invalid joins: {e}"))?;
    let storage_backend = query
        .storage_backend
        .clone()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("invalid storageBackend: {e}"))?;
    let dispatch_mode = match query.dispatch_mode.as_deref() {
        None => None,
        Some("Channel") => Some(drasi_lib::DispatchMode::Channel),
        Some(other) => return Err(format!("invalid dispatchMode '{other}': must be 'Channel'")),
    };
    Ok(LibQuery {
        id: query.id.clone(),
        auto_start: query.auto_start,
        query: query.query.clone(),
        query_language: match query.query_language {
            QueryLanguage::Cypher => drasi_lib::config::QueryLanguage::Cypher,
            QueryLanguage::GQL => drasi_lib::config::QueryLanguage::GQL,
        },
        middleware,
        sources: query
            .sources
            .iter()
            .map(|s| SourceSubscriptionConfig {
                source_id: s.source_id.clone(),
                nodes: s.nodes.clone(),
                relations: s.relations.clone(),
                pipeline: s.pipeline.clone(),
            })
            .collect(),
        enable_bootstrap: query.enable_bootstrap,
        bootstrap_buffer_size: query.bootstrap_buffer_size,
        joins,
        priority_queue_capacity: query.priority_queue_capacity,
        dispatch_buffer_capacity: query.dispatch_buffer_capacity,
        dispatch_mode,
        storage_backend,
        recovery_policy: None,
        outbox_capacity: query.outbox_capacity,
        bootstrap_timeout_secs: query.bootstrap_timeout_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_is_one_safe_segment_per_id() {
        let root = Path::new("/w");
        assert_eq!(
            data_dir(root, "default"),
            Path::new("/w/data/id-64656661756c74")
        );
        assert_eq!(data_dir(root, "../x"), Path::new("/w/data/id-2e2e2f78"));
    }
}
