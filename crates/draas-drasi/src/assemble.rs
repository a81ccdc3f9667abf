//! Turns a validated [`DrasiServerConfig`] into a running [`DrasiLib`].
//!
//! The order mirrors drasi-server: create every component through its plugin
//! descriptor, build the lib (which checks the component graph), start it
//! (sources, then queries, then reactions), and only then report success, so
//! the caller can bind its API afterwards and `/health` means "started".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use draas_core::config::{DrasiServerConfig, QueryConfig, QueryLanguage};
use drasi_lib::{ComponentStatus, DrasiLib};
use drasi_wal_redb::RedbWalProvider;
use serde_json::Value;

use crate::plugins;

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

/// The directory, relative to the working directory, where a server keeps
/// its data (`./data/id-<hex of id>`). Hex keeps any id a single, safe path
/// segment; drasi-server uses the same layout.
pub fn data_dir(work_dir: &Path, server_id: &str) -> PathBuf {
    let hex: String = server_id.bytes().map(|b| format!("{b:02x}")).collect();
    work_dir.join("data").join(format!("id-{hex}"))
}

/// Creates every component of `config` and builds the lib. Nothing is
/// started yet.
pub async fn build(
    config: &DrasiServerConfig,
    server_id: &str,
    work_dir: &Path,
) -> Result<DrasiLib, StartupError> {
    let data = data_dir(work_dir, server_id);
    std::fs::create_dir_all(&data).map_err(|e| {
        StartupError::new(
            "configuration",
            format!("cannot create data directory {}: {e}", data.display()),
        )
    })?;
    let wal_dir = data.join("wal");
    let mut builder = DrasiLib::builder()
        .with_id(server_id)
        .with_wal_provider(Arc::new(RedbWalProvider::new(&wal_dir)));

    for source in &config.sources {
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
        if let Some(Value::Object(provider)) = &source.bootstrap_provider {
            let kind = provider
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let bootstrap = plugins::bootstrap(kind).ok_or_else(|| {
                StartupError::new(
                    &component,
                    format!("unknown bootstrap provider kind '{kind}'"),
                )
            })?;
            let bootstrap_config = Value::Object(plugins::bootstrap_config(
                &source.kind,
                &source.properties,
                provider,
            ));
            let provider = bootstrap
                .descriptor
                .create_bootstrap_provider(&bootstrap_config, &props)
                .await
                .map_err(|e| StartupError::new(&component, format!("bootstrap provider: {e:#}")))?;
            created.set_bootstrap_provider(provider).await;
        }
        builder = builder.with_source(created);
    }

    for query in &config.queries {
        builder = builder.with_query(
            lib_query(query).map_err(|e| StartupError::new(format!("query '{}'", query.id), e))?,
        );
    }

    for reaction in &config.reactions {
        let component = format!("reaction '{}'", reaction.id);
        let plugin = plugins::reaction(&reaction.kind).ok_or_else(|| {
            StartupError::new(&component, format!("unknown kind '{}'", reaction.kind))
        })?;
        let created = plugin
            .descriptor
            .create_reaction(
                &reaction.id,
                reaction.queries.clone(),
                &Value::Object(reaction.properties.clone()),
                reaction.auto_start,
            )
            .await
            .map_err(|e| StartupError::new(&component, format!("{e:#}")))?;
        builder = builder.with_reaction(created);
    }

    builder
        .build()
        .await
        .map_err(|e| StartupError::new("configuration", e))
}

/// Starts the lib and checks that every auto-started source and reaction is
/// up. A query that fails is left in `Error` (drasi-server semantics: query
/// start is best-effort and the server keeps running).
pub async fn start(lib: &DrasiLib, config: &DrasiServerConfig) -> Result<(), StartupError> {
    if let Err(e) = lib.start().await {
        return Err(StartupError::new(blame(config, &e.to_string()), e));
    }
    for source in config.sources.iter().filter(|s| s.auto_start) {
        if let Ok(info) = lib.get_source_info(&source.id).await {
            if info.status == ComponentStatus::Error {
                return Err(StartupError::new(
                    format!("source '{}'", source.id),
                    info.error_message
                        .unwrap_or_else(|| "failed to start".into()),
                ));
            }
        }
    }
    for reaction in config.reactions.iter().filter(|r| r.auto_start) {
        if let Ok(info) = lib.get_reaction_info(&reaction.id).await {
            if info.status == ComponentStatus::Error {
                return Err(StartupError::new(
                    format!("reaction '{}'", reaction.id),
                    info.error_message
                        .unwrap_or_else(|| "failed to start".into()),
                ));
            }
        }
    }
    Ok(())
}

/// The component a drasi-lib start error is about: the first component whose
/// id the message quotes, else the configuration as a whole.
fn blame(config: &DrasiServerConfig, message: &str) -> String {
    // drasi-lib names components as 'id', "id" or "id: reason".
    let quoted = |id: &str| {
        message.contains(&format!("'{id}'"))
            || message.contains(&format!("\"{id}\""))
            || message.contains(&format!(" {id}: "))
    };
    config
        .sources
        .iter()
        .map(|s| ("source", &s.id))
        .chain(config.reactions.iter().map(|r| ("reaction", &r.id)))
        .chain(config.queries.iter().map(|q| ("query", &q.id)))
        .find(|(_, id)| quoted(id))
        .map(|(what, id)| format!("{what} '{id}'"))
        .unwrap_or_else(|| "configuration".to_string())
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
