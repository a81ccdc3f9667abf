//! Values that may come from the environment: drasi-server's `ConfigValue`.
//!
//! Where drasi-server resolves a field (`id`, `host`, `port`, `logLevel`,
//! the capacities, `stateStore.path`, instance ids, and every plugin field
//! the plugin declares so), the file may give, instead of the value:
//!
//! - `"${NAME}"`: the environment variable `NAME`, which must be set;
//! - `"${NAME:-default}"`: `NAME`, or `default` when it is unset (a set but
//!   empty variable is used as it is, unlike a shell);
//! - `{kind: EnvironmentVariable, name: NAME, default: "x"}`: the same,
//!   structured (a `default` that is not a string is ignored);
//! - `{kind: Secret, name: NAME}`: a secret of the server's `secretStore`.
//!
//! Only a whole string of the form `${...}` is a reference: `pre-${X}` and
//! `$X` are literal text, nothing nests, and the name is what stands before
//! the first `:-`, untrimmed. A reference resolves to text, which is then
//! parsed as the field's type (`"${PORT:-8080}"` is the port 8080).
//!
//! [`ConfigValue`] keeps the form it was written in, so a file read and
//! written back says the same thing.

use std::fmt;
use std::str::FromStr;

use serde::de::{DeserializeOwned, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A value given directly, or taken from the environment or a secret store.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue<T> {
    /// Written as the value itself.
    Static(T),
    /// An environment variable.
    Env(EnvReference),
    /// A secret of the server's `secretStore`: `{kind: Secret, name}`.
    Secret {
        /// The secret's name.
        name: String,
    },
}

/// A reference to an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvReference {
    /// The variable.
    pub name: String,
    /// Used when the variable is unset.
    pub default: Option<String>,
    /// Written as `{kind: EnvironmentVariable, ...}` rather than `${...}`.
    pub structured: bool,
}

impl fmt::Display for EnvReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.default {
            Some(default) => write!(f, "${{{}:-{default}}}", self.name),
            None => write!(f, "${{{}}}", self.name),
        }
    }
}

/// Why a [`ConfigValue`] could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The variable is unset and has no default.
    #[error("environment variable '{0}' is not set and has no default")]
    Missing(String),
    /// The variable's text is not a value of the field's type.
    #[error("environment variable '{name}' gives '{text}', which is not {expected}: {error}")]
    Unparsable {
        /// The variable.
        name: String,
        /// Its text (never a secret: secrets are not resolved here).
        text: String,
        /// What the field needs, in words.
        expected: &'static str,
        /// The parser's message.
        error: String,
    },
    /// A secret: only a server with a secret store resolves it.
    #[error("'{0}' is a secret of the server's secretStore, resolved by the server itself")]
    Secret(String),
}

impl<T> ConfigValue<T> {
    /// The value when it is written directly.
    pub fn as_static(&self) -> Option<&T> {
        match self {
            ConfigValue::Static(value) => Some(value),
            _ => None,
        }
    }

    /// The environment variable it names, if any.
    pub fn env(&self) -> Option<&EnvReference> {
        match self {
            ConfigValue::Env(reference) => Some(reference),
            _ => None,
        }
    }
}

impl<T: Clone + FromStr> ConfigValue<T>
where
    T::Err: fmt::Display,
{
    /// The value, looking variables up with `lookup`. `expected` names the
    /// type for messages ("a port number").
    pub fn resolve(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
        expected: &'static str,
    ) -> Result<T, ResolveError> {
        match self {
            ConfigValue::Static(value) => Ok(value.clone()),
            ConfigValue::Secret { name } => Err(ResolveError::Secret(name.clone())),
            ConfigValue::Env(reference) => {
                let text = lookup(&reference.name)
                    .or_else(|| reference.default.clone())
                    .ok_or_else(|| ResolveError::Missing(reference.name.clone()))?;
                text.parse::<T>().map_err(|e| ResolveError::Unparsable {
                    name: reference.name.clone(),
                    text: text.clone(),
                    expected,
                    error: e.to_string(),
                })
            }
        }
    }
}

/// Reads a `${NAME}` or `${NAME:-default}` string; `None` for any other text.
pub fn parse_reference(text: &str) -> Option<EnvReference> {
    let inner = text.strip_prefix("${")?.strip_suffix('}')?;
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default.to_string())),
        None => (inner, None),
    };
    Some(EnvReference {
        name: name.to_string(),
        default,
        structured: false,
    })
}

/// What a JSON value says as a configuration value: a reference (to the
/// environment or a secret) or a static value, without knowing the
/// field's type. Errors are drasi-server's (`Unknown kind: X`, `missing
/// field name`).
pub fn reference_in(value: &Value) -> Result<Option<ConfigValue<()>>, String> {
    match value {
        Value::String(text) => Ok(parse_reference(text).map(ConfigValue::Env)),
        Value::Object(map) => match map.get("kind") {
            Some(Value::String(kind)) => {
                let name = match map.get("name") {
                    Some(Value::String(name)) => name.clone(),
                    _ => return Err("missing field `name`".to_string()),
                };
                match kind.as_str() {
                    "Secret" => Ok(Some(ConfigValue::Secret { name })),
                    "EnvironmentVariable" => Ok(Some(ConfigValue::Env(EnvReference {
                        name,
                        default: map
                            .get("default")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        structured: true,
                    }))),
                    other => Err(format!("Unknown kind: {other}")),
                }
            }
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for ConfigValue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match reference_in(&value).map_err(serde::de::Error::custom)? {
            Some(ConfigValue::Env(reference)) => Ok(ConfigValue::Env(reference)),
            Some(ConfigValue::Secret { name }) => Ok(ConfigValue::Secret { name }),
            _ => serde_json::from_value(value)
                .map(ConfigValue::Static)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl<T: Serialize> Serialize for ConfigValue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ConfigValue::Static(value) => value.serialize(serializer),
            ConfigValue::Env(reference) if !reference.structured => {
                serializer.serialize_str(&reference.to_string())
            }
            ConfigValue::Env(reference) => {
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("kind", "EnvironmentVariable")?;
                map.serialize_entry("name", &reference.name)?;
                if let Some(default) = &reference.default {
                    map.serialize_entry("default", default)?;
                }
                map.end()
            }
            ConfigValue::Secret { name } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("kind", "Secret")?;
                map.serialize_entry("name", name)?;
                map.end()
            }
        }
    }
}

impl<T> From<T> for ConfigValue<T> {
    fn from(value: T) -> Self {
        ConfigValue::Static(value)
    }
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> schemars::JsonSchema for ConfigValue<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("ConfigValue_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let value = generator.subschema_for::<T>();
        schemars::json_schema!({
            "description": "The value, `${NAME}` / `${NAME:-default}` (an environment variable of the instance), or {kind: EnvironmentVariable|Secret, name, default?}",
            "anyOf": [
                value,
                {"type": "string", "pattern": "^\\$\\{.*\\}$"},
                {
                    "type": "object",
                    "required": ["kind", "name"],
                    "properties": {
                        "kind": {"enum": ["EnvironmentVariable", "Secret"]},
                        "name": {"type": "string"},
                        "default": {"type": "string"}
                    }
                }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn references_follow_drasi_server() {
        let port: ConfigValue<u16> = serde_json::from_str(r#""${PORT:-8080}""#).unwrap();
        assert_eq!(port.resolve(&env(&[]), "a port").unwrap(), 8080);
        assert_eq!(port.resolve(&env(&[("PORT", "9")]), "a port").unwrap(), 9);
        // A set but empty variable is used as it is.
        let err = port.resolve(&env(&[("PORT", "")]), "a port").unwrap_err();
        assert!(matches!(err, ResolveError::Unparsable { .. }), "{err}");
        let required: ConfigValue<String> = serde_json::from_str(r#""${DB_HOST}""#).unwrap();
        assert_eq!(
            required.resolve(&env(&[]), "text").unwrap_err().to_string(),
            "environment variable 'DB_HOST' is not set and has no default"
        );
        // Only a whole `${...}` string is a reference.
        for literal in ["pre-${X}", "$X", "${X}/state.redb"] {
            let v: ConfigValue<String> = serde_json::from_value(Value::from(literal)).unwrap();
            assert_eq!(v, ConfigValue::Static(literal.to_string()));
        }
        // No nesting: the default is literal.
        let nested: ConfigValue<String> =
            serde_json::from_str(r#""${SERVER_ID:-drasi-${ENV:-dev}}""#).unwrap();
        assert_eq!(
            nested.resolve(&env(&[]), "text").unwrap(),
            "drasi-${ENV:-dev}"
        );
        // A quoted number is not a port, as in drasi-server.
        assert!(serde_json::from_str::<ConfigValue<u16>>(r#""8080""#).is_err());
    }

    #[test]
    fn structured_forms_round_trip() {
        for text in [
            r#"{"kind":"EnvironmentVariable","name":"H","default":"localhost"}"#,
            r#"{"kind":"Secret","name":"pw"}"#,
            r#""${H:-x}""#,
            "5432",
        ] {
            let v: ConfigValue<u16> = serde_json::from_str(text)
                .or_else(|_| serde_json::from_str::<ConfigValue<u16>>(text))
                .unwrap();
            assert_eq!(serde_json::to_string(&v).unwrap(), text);
        }
        // A default that is not a string is dropped, as drasi-server does.
        let v: ConfigValue<u16> =
            serde_json::from_str(r#"{"kind":"EnvironmentVariable","name":"P","default":9000}"#)
                .unwrap();
        assert_eq!(v.env().unwrap().default, None);
        let unknown = serde_json::from_str::<ConfigValue<u16>>(r#"{"kind":"secret","name":"x"}"#)
            .unwrap_err();
        assert!(
            unknown.to_string().contains("Unknown kind: secret"),
            "{unknown}"
        );
    }
}
