//! The plugins linked into DRaaS, by kind.
//!
//! drasi-server loads every source and reaction as a dynamic plugin. DRaaS
//! links the plugin crates from crates.io instead and looks them up here. Each
//! entry pairs the plugin's descriptor (which builds the component from its
//! JSON configuration) with its configuration DTO, so a configuration can be
//! checked with exactly the rules the plugin applies, before anything starts.

use drasi_plugin_sdk::descriptor::{
    BootstrapPluginDescriptor, ReactionPluginDescriptor, SourcePluginDescriptor,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// A configuration value the plugin rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfigError {
    /// JSON Pointer inside the plugin's configuration
    /// (`/dataType/sensorCount`), empty when the problem is the configuration
    /// as a whole.
    pub path: String,
    /// The plugin's own message (`unknown field ...`, `missing field ...`).
    pub message: String,
}

type Check = fn(&Value) -> Result<(), PluginConfigError>;

/// A source kind DRaaS can run.
pub struct SourcePlugin {
    /// The `kind` value that selects it.
    pub kind: &'static str,
    /// Builds the component.
    pub descriptor: &'static dyn SourcePluginDescriptor,
    check: Check,
}

/// A reaction kind DRaaS can run.
pub struct ReactionPlugin {
    /// The `kind` value that selects it.
    pub kind: &'static str,
    /// Builds the component.
    pub descriptor: &'static dyn ReactionPluginDescriptor,
    check: Check,
}

/// A bootstrap provider kind DRaaS can run.
pub struct BootstrapPlugin {
    /// The `kind` value that selects it.
    pub kind: &'static str,
    /// Builds the provider.
    pub descriptor: &'static dyn BootstrapPluginDescriptor,
    check: Check,
}

static SOURCES: [SourcePlugin; 3] = [
    SourcePlugin {
        kind: "mock",
        descriptor: &drasi_source_mock::descriptor::MockSourceDescriptor,
        check: check_dto::<drasi_source_mock::descriptor::MockSourceConfigDto>,
    },
    SourcePlugin {
        kind: "http",
        descriptor: &drasi_source_http::descriptor::HttpSourceDescriptor,
        check: check_dto::<drasi_source_http::descriptor::HttpSourceConfigDto>,
    },
    SourcePlugin {
        kind: "postgres",
        descriptor: &drasi_source_postgres::descriptor::PostgresSourceDescriptor,
        check: check_dto::<drasi_source_postgres::descriptor::PostgresSourceConfigDto>,
    },
];

static REACTIONS: [ReactionPlugin; 3] = [
    ReactionPlugin {
        kind: "log",
        descriptor: &drasi_reaction_log::descriptor::LogReactionDescriptor,
        check: check_dto::<drasi_reaction_log::descriptor::LogReactionConfigDto>,
    },
    ReactionPlugin {
        kind: "sse",
        descriptor: &drasi_reaction_sse::descriptor::SseReactionDescriptor,
        check: check_dto::<drasi_reaction_sse::descriptor::SseReactionConfigDto>,
    },
    ReactionPlugin {
        kind: "http",
        descriptor: &drasi_reaction_http::descriptor::HttpReactionDescriptor,
        check: check_dto::<drasi_reaction_http::descriptor::HttpReactionConfigDto>,
    },
];

static BOOTSTRAPS: [BootstrapPlugin; 3] = [
    BootstrapPlugin {
        kind: "postgres",
        descriptor: &drasi_bootstrap_postgres::descriptor::PostgresBootstrapDescriptor,
        check: check_dto::<drasi_bootstrap_postgres::descriptor::PostgresBootstrapConfigDto>,
    },
    BootstrapPlugin {
        kind: "scriptfile",
        descriptor: &drasi_bootstrap_scriptfile::descriptor::ScriptFileBootstrapDescriptor,
        check: check_dto::<drasi_bootstrap_scriptfile::descriptor::ScriptFileBootstrapConfigDto>,
    },
    BootstrapPlugin {
        kind: "noop",
        descriptor: &drasi_bootstrap_noop::descriptor::NoOpBootstrapDescriptor,
        check: check_dto::<drasi_bootstrap_noop::descriptor::NoOpBootstrapConfigDto>,
    },
];

/// The source plugin for `kind`, if DRaaS links one in.
pub fn source(kind: &str) -> Option<&'static SourcePlugin> {
    SOURCES.iter().find(|p| p.kind == kind)
}

/// The reaction plugin for `kind`, if DRaaS links one in.
pub fn reaction(kind: &str) -> Option<&'static ReactionPlugin> {
    REACTIONS.iter().find(|p| p.kind == kind)
}

/// The bootstrap plugin for `kind`, if DRaaS links one in.
pub fn bootstrap(kind: &str) -> Option<&'static BootstrapPlugin> {
    BOOTSTRAPS.iter().find(|p| p.kind == kind)
}

/// Source kinds linked in, for messages.
pub fn source_kinds() -> Vec<&'static str> {
    SOURCES.iter().map(|p| p.kind).collect()
}

/// Reaction kinds linked in, for messages.
pub fn reaction_kinds() -> Vec<&'static str> {
    REACTIONS.iter().map(|p| p.kind).collect()
}

/// Bootstrap kinds linked in, for messages.
pub fn bootstrap_kinds() -> Vec<&'static str> {
    BOOTSTRAPS.iter().map(|p| p.kind).collect()
}

impl SourcePlugin {
    /// Checks the plugin-specific part of a source's configuration.
    pub fn check(&self, properties: &Map<String, Value>) -> Result<(), PluginConfigError> {
        (self.check)(&Value::Object(properties.clone()))
    }
}

impl ReactionPlugin {
    /// Checks the plugin-specific part of a reaction's configuration.
    pub fn check(&self, properties: &Map<String, Value>) -> Result<(), PluginConfigError> {
        (self.check)(&Value::Object(properties.clone()))
    }
}

impl BootstrapPlugin {
    /// Checks a bootstrap provider's configuration (already merged with the
    /// source's when it inherits from it).
    pub fn check(&self, config: &Map<String, Value>) -> Result<(), PluginConfigError> {
        (self.check)(&Value::Object(config.clone()))
    }
}

/// Deserializes `value` into the plugin's DTO and reports where it failed.
fn check_dto<T: DeserializeOwned>(value: &Value) -> Result<(), PluginConfigError> {
    serde_path_to_error::deserialize::<_, T>(value.clone())
        .map(|_| ())
        .map_err(|e| {
            use serde_path_to_error::Segment;
            let path = e
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    Segment::Seq { index } => Some(index.to_string()),
                    Segment::Map { key } => Some(key.replace('~', "~0").replace('/', "~1")),
                    Segment::Enum { .. } | Segment::Unknown => None,
                })
                .fold(String::new(), |acc, s| format!("{acc}/{s}"));
            PluginConfigError {
                path,
                message: e.into_inner().to_string(),
            }
        })
}

/// The configuration a bootstrap provider is created from. An inline
/// provider of the same kind as its source inherits every source field it
/// does not set itself (drasi-server semantics), so `{kind: postgres}` under a
/// postgres source needs nothing else.
pub fn bootstrap_config(
    source_kind: &str,
    source_properties: &Map<String, Value>,
    provider: &Map<String, Value>,
) -> Map<String, Value> {
    let mut config = Map::new();
    let provider_kind = provider.get("kind").and_then(Value::as_str);
    if provider_kind == Some(source_kind) {
        config.extend(source_properties.clone());
    }
    for (k, v) in provider {
        if k != "kind" {
            config.insert(k.clone(), v.clone());
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn mock_source_accepts_its_documented_fields() {
        let plugin = source("mock").unwrap();
        let ok = props(
            json!({"dataType": {"type": "sensorReading", "sensorCount": 3}, "intervalMs": 100}),
        );
        assert_eq!(plugin.check(&ok), Ok(()));
    }

    #[test]
    fn unknown_plugin_field_is_reported_with_its_path() {
        let plugin = source("mock").unwrap();
        let err = plugin
            .check(&props(
                json!({"dataType": {"type": "counter"}, "intervalMS": 100}),
            ))
            .unwrap_err();
        assert!(
            err.message.contains("unknown field `intervalMS`"),
            "{err:?}"
        );
        assert_eq!(err.path, "/intervalMS");

        let err = plugin
            .check(&props(
                json!({"dataType": {"type": "sensorReading", "sensors": 3}}),
            ))
            .unwrap_err();
        assert!(err.message.contains("sensors"), "{err:?}");
        assert!(err.path.starts_with("/dataType"), "{err:?}");
    }

    #[test]
    fn http_source_requires_host_and_port() {
        let err = source("http")
            .unwrap()
            .check(&props(json!({"host": "127.0.0.1"})))
            .unwrap_err();
        assert!(err.message.contains("missing field `port`"), "{err:?}");
    }

    #[test]
    fn http_reaction_uses_the_output_templates_shape() {
        let plugin = reaction("http").unwrap();
        let current =
            props(json!({"baseUrl": "http://127.0.0.1:1", "outputTemplates": {"routes": {}}}));
        assert_eq!(plugin.check(&current), Ok(()));
        let legacy = props(json!({"baseUrl": "http://127.0.0.1:1", "routes": {}}));
        assert!(plugin
            .check(&legacy)
            .unwrap_err()
            .message
            .contains("routes"));
    }

    #[test]
    fn same_kind_bootstrap_inherits_source_fields() {
        let source_props = props(json!({"database": "db", "user": "u"}));
        let merged = bootstrap_config(
            "postgres",
            &source_props,
            &props(json!({"kind": "postgres"})),
        );
        assert_eq!(merged["database"], "db");
        let other = bootstrap_config("http", &source_props, &props(json!({"kind": "noop"})));
        assert!(other.is_empty());
    }

    #[test]
    fn kinds_are_listed() {
        assert_eq!(source_kinds(), vec!["mock", "http", "postgres"]);
        assert_eq!(reaction_kinds(), vec!["log", "sse", "http"]);
        assert!(source("kafka").is_none());
    }
}
