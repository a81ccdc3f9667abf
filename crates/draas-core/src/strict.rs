//! Decoding at the API's edge: unknown fields refused.
//!
//! Stored records (instances, server records, keys) and bus messages are
//! decoded leniently: a field this version does not know is ignored, so a
//! record or a command written by a newer control plane during a rolling
//! upgrade is still understood by an older worker (and the other way
//! round). What a *user* sends is held to the schema: a misspelt key in a
//! configuration file or a request body is an error naming where it is,
//! never silently dropped. One set of types serves both; this module is
//! the strict reading of them (every field the types ignore is reported).

use serde::de::DeserializeOwned;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct StrictError {
    /// JSON Pointer of the offending value (`/` for the document).
    pub path: String,
    /// What was wrong.
    pub message: String,
}

/// Decodes `value` as `T`, refusing any field `T` does not know, and
/// naming the JSON Pointer of the first problem.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, StrictError> {
    let mut unknown: Option<String> = None;
    let mut note = |path: serde_ignored::Path| {
        if unknown.is_none() {
            unknown = Some(pointer_of(&path));
        }
    };
    let decoded = serde_path_to_error::deserialize::<_, T>(serde_ignored::Deserializer::new(
        value, &mut note,
    ));
    let decoded = decoded.map_err(|e| {
        use serde_path_to_error::Segment;
        let path: String = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Seq { index } => Some(format!("/{index}")),
                Segment::Map { key } => Some(format!("/{}", escape(key))),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        StrictError {
            path: if path.is_empty() { "/".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    match unknown {
        None => Ok(decoded),
        Some(path) => {
            let field = path.rsplit('/').next().unwrap_or_default();
            let field = field.replace("~1", "/").replace("~0", "~");
            Err(StrictError {
                message: format!("unknown field `{field}`"),
                path,
            })
        }
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON Pointer of an ignored field.
fn pointer_of(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}/{index}", pointer_of(parent)),
        Path::Map { parent, key } => format!("{}/{}", pointer_of(parent), escape(key)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => pointer_of(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DrasiServerConfig;
    use crate::instance::ServerConfiguration;
    use serde_json::json;

    #[test]
    fn an_unknown_field_is_refused_with_its_pointer() {
        let err = from_value::<DrasiServerConfig>(json!({
            "id": "x",
            "queries": [{"id": "q", "query": "MATCH (n) RETURN n", "sources": [{"sourceId": "s", "bogus": 1}]}]
        }))
        .unwrap_err();
        assert_eq!(err.path, "/queries/0/sources/0/bogus");
        assert_eq!(err.message, "unknown field `bogus`");
        let err = from_value::<ServerConfiguration>(json!({
            "process": {"executablePath": "/bin/x", "a/b": true}
        }))
        .unwrap_err();
        assert_eq!(err.path, "/process/a~1b");
        assert_eq!(err.message, "unknown field `a/b`");
    }

    #[test]
    fn plugin_properties_are_the_plugins_and_wrong_types_keep_their_path() {
        let config: DrasiServerConfig = from_value(json!({
            "sources": [{"kind": "mock", "id": "s", "dataType": {"type": "counter"}}]
        }))
        .unwrap();
        assert!(config.sources[0].properties.contains_key("dataType"));
        let err = from_value::<DrasiServerConfig>(json!({"sources": [{"kind": 3, "id": "s"}]}))
            .unwrap_err();
        assert_eq!(err.path, "/sources/0/kind");
    }

    #[test]
    fn the_same_types_read_leniently_outside_the_edge() {
        let lenient: ServerConfiguration = serde_json::from_value(json!({
            "shutdownTimeoutSeconds": 5,
            "aFieldOfANewerVersion": {"x": 1}
        }))
        .unwrap();
        assert_eq!(lenient.shutdown_timeout_seconds, 5);
    }
}
