//! The plugins linked into the bundled runtime, by kind.
//!
//! drasi-server loads every source and reaction as a dynamic plugin. DRaaS
//! links the plugin crates from crates.io instead and looks them up here. Each
//! entry pairs the plugin's descriptor (which builds the component from its
//! JSON configuration) with its configuration DTO, so a configuration can be
//! checked with exactly the rules the plugin applies, before anything starts
//! ([`check_dto`]: the plugin's fields, then the values its environment
//! references resolve to).
//!
//! Which plugins are here, and why, is in docs/ARCHITECTURE.md ("The bundled
//! runtime's plugins"): those users expect on day one whose dependencies
//! are Rust, at a build cost measured in BENCHMARKS.md.

use drasi_plugin_sdk::descriptor::{
    BootstrapPluginDescriptor, ReactionPluginDescriptor, SourcePluginDescriptor,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
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

/// What checking a plugin's configuration found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginCheck {
    /// What the plugin refuses.
    pub errors: Vec<PluginConfigError>,
    /// Keys the plugin does not know and ignores (its DTO does not refuse
    /// unknown keys), by JSON Pointer.
    pub ignored: Vec<String>,
}

type Check = fn(&Value, &dyn Fn(&str) -> Option<String>) -> PluginCheck;

/// A source kind the bundled runtime runs.
pub struct SourcePlugin {
    /// The `kind` value that selects it.
    pub kind: &'static str,
    /// Builds the component.
    pub descriptor: &'static dyn SourcePluginDescriptor,
    check: Check,
}

/// A reaction kind the bundled runtime runs.
pub struct ReactionPlugin {
    /// The `kind` value that selects it.
    pub kind: &'static str,
    /// Builds the component.
    pub descriptor: &'static dyn ReactionPluginDescriptor,
    check: Check,
}

/// A bootstrap provider kind the bundled runtime runs.
pub struct BootstrapPlugin {
    /// The `kind` value that selects it.
    pub kind: &'static str,
    /// Builds the provider.
    pub descriptor: &'static dyn BootstrapPluginDescriptor,
    check: Check,
}

static SOURCES: [SourcePlugin; 5] = [
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
    SourcePlugin {
        kind: "grpc",
        descriptor: &drasi_source_grpc::descriptor::GrpcSourceDescriptor,
        check: check_dto::<drasi_source_grpc::descriptor::GrpcSourceConfigDto>,
    },
    SourcePlugin {
        kind: "platform",
        descriptor: &drasi_source_platform::descriptor::PlatformSourceDescriptor,
        check: check_dto::<drasi_source_platform::descriptor::PlatformSourceConfigDto>,
    },
];

static REACTIONS: [ReactionPlugin; 8] = [
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
    ReactionPlugin {
        kind: "grpc",
        descriptor: &drasi_reaction_grpc::descriptor::GrpcReactionDescriptor,
        check: check_dto::<drasi_reaction_grpc::descriptor::GrpcReactionConfigDto>,
    },
    ReactionPlugin {
        kind: "profiler",
        descriptor: &drasi_reaction_profiler::descriptor::ProfilerReactionDescriptor,
        check: check_dto::<drasi_reaction_profiler::descriptor::ProfilerReactionConfigDto>,
    },
    ReactionPlugin {
        kind: "platform",
        descriptor: &drasi_reaction_platform::descriptor::PlatformReactionDescriptor,
        check: check_dto::<drasi_reaction_platform::descriptor::PlatformReactionConfigDto>,
    },
    ReactionPlugin {
        kind: "file",
        descriptor: &drasi_reaction_file::descriptor::FileReactionDescriptor,
        check: check_dto::<drasi_reaction_file::descriptor::FileReactionConfigDto>,
    },
    ReactionPlugin {
        kind: "storedproc-postgres",
        descriptor:
            &drasi_reaction_storedproc_postgres::descriptor::PostgresStoredProcReactionDescriptor,
        check: check_dto::<
            drasi_reaction_storedproc_postgres::descriptor::PostgresStoredProcReactionConfigDto,
        >,
    },
];

static BOOTSTRAPS: [BootstrapPlugin; 5] = [
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
    BootstrapPlugin {
        kind: "platform",
        descriptor: &drasi_bootstrap_platform::descriptor::PlatformBootstrapDescriptor,
        check: check_dto::<drasi_bootstrap_platform::descriptor::PlatformBootstrapConfigDto>,
    },
    BootstrapPlugin {
        kind: "http",
        descriptor: &drasi_bootstrap_http::descriptor::HttpBootstrapDescriptor,
        check: check_dto::<drasi_bootstrap_http::descriptor::HttpBootstrapConfigDto>,
    },
];

/// Identity provider kinds: drasi-lib's own `password` (username and
/// password).
pub const IDENTITY_PROVIDERS: [&str; 1] = ["password"];
/// Secret store kinds: `file` (a JSON or YAML file of secrets).
pub const SECRET_STORES: [&str; 1] = ["file"];
/// State store kinds: `redb`.
pub const STATE_STORES: [&str; 1] = ["redb"];
/// Persistent index kinds: RocksDB, as drasi-server's `persistIndex`.
pub const INDEXES: [&str; 1] = ["rocksdb"];

/// The source plugin for `kind`, if the bundled runtime links one in.
pub fn source(kind: &str) -> Option<&'static SourcePlugin> {
    SOURCES.iter().find(|p| p.kind == kind)
}

/// The reaction plugin for `kind`, if the bundled runtime links one in.
pub fn reaction(kind: &str) -> Option<&'static ReactionPlugin> {
    REACTIONS.iter().find(|p| p.kind == kind)
}

/// The bootstrap plugin for `kind`, if the bundled runtime links one in.
pub fn bootstrap(kind: &str) -> Option<&'static BootstrapPlugin> {
    BOOTSTRAPS.iter().find(|p| p.kind == kind)
}

/// Source kinds linked in.
pub fn source_kinds() -> Vec<&'static str> {
    SOURCES.iter().map(|p| p.kind).collect()
}

/// Reaction kinds linked in.
pub fn reaction_kinds() -> Vec<&'static str> {
    REACTIONS.iter().map(|p| p.kind).collect()
}

/// Bootstrap kinds linked in.
pub fn bootstrap_kinds() -> Vec<&'static str> {
    BOOTSTRAPS.iter().map(|p| p.kind).collect()
}

impl SourcePlugin {
    /// Checks the plugin-specific part of a source's configuration, with
    /// references resolved by `lookup`.
    pub fn check(
        &self,
        properties: &Map<String, Value>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> PluginCheck {
        (self.check)(&Value::Object(properties.clone()), lookup)
    }
}

impl ReactionPlugin {
    /// Checks the plugin-specific part of a reaction's configuration.
    pub fn check(
        &self,
        properties: &Map<String, Value>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> PluginCheck {
        (self.check)(&Value::Object(properties.clone()), lookup)
    }
}

impl BootstrapPlugin {
    /// Checks a bootstrap provider's configuration (already merged with the
    /// source's when it inherits from it).
    pub fn check(
        &self,
        config: &Map<String, Value>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> PluginCheck {
        (self.check)(&Value::Object(config.clone()), lookup)
    }
}

/// Checks `value` as the plugin's DTO `T`, as the plugin will see it at
/// start:
/// 1. it must deserialize into `T` (unknown fields, missing fields and
///    wrong types are errors naming their path);
/// 2. every environment reference `T` resolves (the fields the plugin
///    declares as `ConfigValue`: found by serializing `T`, which writes them
///    as `{kind: EnvironmentVariable, ...}`) is replaced by the text it
///    resolves to, and the result must deserialize again: a port whose
///    variable says `abc` is refused here, not at start. (A missing
///    variable is reported by the structural checks.)
///
/// Keys that `T` drops without refusing them are reported as ignored.
pub fn check_dto<T: DeserializeOwned + Serialize>(
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> PluginCheck {
    let dto = match deserialize_at::<T>(value.clone()) {
        Ok(dto) => dto,
        Err(error) => {
            return PluginCheck {
                errors: vec![error],
                ignored: Vec::new(),
            }
        }
    };
    let Ok(written) = serde_json::to_value(&dto) else {
        return PluginCheck::default();
    };
    let mut ignored = Vec::new();
    dropped_keys("", value, &written, &mut ignored);

    // The references the plugin resolves, and what they resolve to.
    let mut references = Vec::new();
    collect_references("", &written, &mut references);
    let mut resolved: Vec<(String, String, String, bool)> = references
        .into_iter()
        .filter_map(|(path, name, default)| {
            let text = lookup(&name).or(default)?;
            Some((path, name, text, false))
        })
        .collect();
    // A resolved text is tried first as the scalar it looks like (a number
    // for a port), then as text (a name that happens to be digits).
    for _ in 0..=resolved.len() {
        let mut candidate = written.clone();
        for (path, _, text, as_text) in &resolved {
            let replacement = if *as_text {
                Value::String(text.clone())
            } else {
                scalar(text)
            };
            if let Some(slot) = candidate.pointer_mut(path) {
                *slot = replacement;
            }
        }
        match deserialize_at::<T>(candidate) {
            Ok(_) => break,
            Err(error) => {
                let hit = resolved.iter_mut().find(|(path, ..)| {
                    error.path == *path || error.path.starts_with(&format!("{path}/"))
                });
                match hit {
                    Some((_, _, _, as_text)) if !*as_text => *as_text = true,
                    Some((path, name, text, _)) => {
                        return PluginCheck {
                            errors: vec![PluginConfigError {
                                path: path.clone(),
                                message: format!(
                                    "environment variable '{name}' gives '{text}', which this field does not take: {}",
                                    error.message
                                ),
                            }],
                            ignored,
                        };
                    }
                    None => {
                        return PluginCheck {
                            errors: vec![error],
                            ignored,
                        }
                    }
                }
            }
        }
    }
    PluginCheck {
        errors: Vec::new(),
        ignored,
    }
}

/// A resolved text as the JSON scalar it looks like.
fn scalar(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(text.to_string()),
    }
}

/// The environment references in a DTO as written back: `{kind:
/// EnvironmentVariable, name, default?}`, by JSON Pointer.
fn collect_references(path: &str, value: &Value, out: &mut Vec<(String, String, Option<String>)>) {
    match value {
        Value::Object(map) => {
            if map.get("kind").and_then(Value::as_str) == Some("EnvironmentVariable") {
                if let Some(name) = map.get("name").and_then(Value::as_str) {
                    let default = map
                        .get("default")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    out.push((path.to_string(), name.to_string(), default));
                    return;
                }
            }
            for (key, inner) in map {
                collect_references(&format!("{path}/{}", escape(key)), inner, out);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                collect_references(&format!("{path}/{i}"), inner, out);
            }
        }
        _ => {}
    }
}

/// Keys of `given` (an object) that the DTO written back has not.
fn dropped_keys(path: &str, given: &Value, written: &Value, out: &mut Vec<String>) {
    if let (Value::Object(given), Value::Object(written)) = (given, written) {
        for (key, inner) in given {
            let at = format!("{path}/{}", escape(key));
            match written.get(key) {
                None if !inner.is_null() => out.push(at),
                None => {}
                Some(kept) => {
                    // A reference is written back structured: not a subtree.
                    if drasi_reference(inner) {
                        continue;
                    }
                    dropped_keys(&at, inner, kept, out);
                }
            }
        }
    }
}

fn drasi_reference(value: &Value) -> bool {
    matches!(
        value.get("kind").and_then(Value::as_str),
        Some("EnvironmentVariable" | "Secret")
    )
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Deserializes `value` into `T` and reports where it failed.
fn deserialize_at<T: DeserializeOwned>(value: Value) -> Result<T, PluginConfigError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        use serde_path_to_error::Segment;
        let path = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Seq { index } => Some(index.to_string()),
                Segment::Map { key } => Some(escape(key)),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .fold(String::new(), |acc, s| format!("{acc}/{s}"));
        PluginConfigError {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn mock_source_accepts_its_documented_fields() {
        let plugin = source("mock").unwrap();
        let ok = props(
            json!({"dataType": {"type": "sensorReading", "sensorCount": 3}, "intervalMs": 100}),
        );
        assert_eq!(plugin.check(&ok, &no_env), PluginCheck::default());
    }

    #[test]
    fn unknown_plugin_field_is_reported_with_its_path() {
        let plugin = source("mock").unwrap();
        let err = plugin
            .check(
                &props(json!({"dataType": {"type": "counter"}, "intervalMS": 100})),
                &no_env,
            )
            .errors
            .remove(0);
        assert!(
            err.message.contains("unknown field `intervalMS`"),
            "{err:?}"
        );
        assert_eq!(err.path, "/intervalMS");
    }

    #[test]
    fn references_are_checked_with_the_values_they_resolve_to() {
        let plugin = source("mock").unwrap();
        let config = props(
            json!({"dataType": {"type": "sensorReading", "sensorCount": 3}, "intervalMs": "${EVERY}"}),
        );
        let env = |name: &str| (name == "EVERY").then(|| "250".to_string());
        assert_eq!(plugin.check(&config, &env), PluginCheck::default());
        let bad = |name: &str| (name == "EVERY").then(|| "often".to_string());
        let errors = plugin.check(&config, &bad).errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "/intervalMs");
        assert!(
            errors[0].message.contains("'EVERY' gives 'often'"),
            "{errors:?}"
        );
        // A text field whose variable is all digits stays text.
        let pg = source("postgres").unwrap();
        let config = props(json!({"database": "${DB}", "user": "u"}));
        let digits = |name: &str| (name == "DB").then(|| "1234".to_string());
        assert_eq!(pg.check(&config, &digits), PluginCheck::default());
    }

    #[test]
    fn keys_a_plugin_ignores_are_reported() {
        let plugin = reaction("log").unwrap();
        let check = plugin.check(
            &props(json!({"defaultTemplate": {"added": {"template": "x"}}, "colour": "red"})),
            &no_env,
        );
        assert!(check.errors.is_empty(), "{check:?}");
        assert_eq!(check.ignored, vec!["/colour"]);
    }

    #[test]
    fn http_source_requires_host_and_port() {
        let err = source("http")
            .unwrap()
            .check(&props(json!({"host": "127.0.0.1"})), &no_env)
            .errors
            .remove(0);
        assert!(err.message.contains("missing field `port`"), "{err:?}");
    }

    #[test]
    fn kinds_are_listed() {
        assert_eq!(
            source_kinds(),
            vec!["mock", "http", "postgres", "grpc", "platform"]
        );
        assert!(reaction_kinds().contains(&"grpc"));
        assert!(source("kafka").is_none());
    }
}
