//! JSON Patch (RFC 6902) applied to typed documents, atomically.
//!
//! The patch is applied to a JSON copy of the document; the result must
//! deserialize back into the document type (unknown fields and wrong types
//! are errors naming the path). On any error the original is untouched, so a
//! caller stores the result only when every step succeeded.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body is not a JSON Patch document.
    #[error("not a JSON Patch document: {0}")]
    Malformed(String),
    /// An operation's `test` failed.
    #[error("operation {index} ({op} {path}): test failed, the value did not match")]
    TestFailed {
        /// Index of the operation.
        index: usize,
        /// The op name.
        op: String,
        /// Its path.
        path: String,
    },
    /// An operation could not be applied (missing path, bad index).
    #[error("operation {index} ({op} {path}): {message}")]
    NotApplicable {
        /// Index of the operation.
        index: usize,
        /// The op name.
        op: String,
        /// Its path.
        path: String,
        /// Why.
        message: String,
    },
    /// The patched document does not fit the schema.
    #[error("{path}: {message}")]
    Invalid {
        /// JSON Pointer of the offending value.
        path: String,
        /// Why.
        message: String,
    },
}

/// Largest number of operations accepted in one patch.
pub const MAX_OPERATIONS: usize = 1000;

/// Applies the JSON Patch in `body` to `document` and returns the result.
pub fn apply_json_patch<T>(document: &T, body: &[u8]) -> Result<T, PatchError>
where
    T: Serialize + DeserializeOwned,
{
    let patch: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| PatchError::Malformed(e.to_string()))?;
    if patch.0.len() > MAX_OPERATIONS {
        return Err(PatchError::Malformed(format!(
            "{} operations; at most {MAX_OPERATIONS} are accepted",
            patch.0.len()
        )));
    }
    let mut value = serde_json::to_value(document)
        .map_err(|e| PatchError::Malformed(format!("document cannot be encoded: {e}")))?;
    json_patch::patch(&mut value, &patch).map_err(|e| {
        let op = patch
            .0
            .get(e.operation)
            .map(op_name)
            .unwrap_or("?")
            .to_string();
        let path = e.path.to_string();
        match e.kind {
            json_patch::PatchErrorKind::TestFailed => PatchError::TestFailed {
                index: e.operation,
                op,
                path,
            },
            kind => PatchError::NotApplicable {
                index: e.operation,
                op,
                path,
                message: kind.to_string(),
            },
        }
    })?;
    from_value(value)
}

/// Deserializes `value` into `T`, reporting the JSON Pointer of a failure.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, PatchError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        use serde_path_to_error::Segment;
        let path: String = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Seq { index } => Some(format!("/{index}")),
                Segment::Map { key } => {
                    Some(format!("/{}", key.replace('~', "~0").replace('/', "~1")))
                }
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        PatchError::Invalid {
            path: if path.is_empty() { "/".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    use json_patch::PatchOperation::*;
    match op {
        Add(_) => "add",
        Remove(_) => "remove",
        Replace(_) => "replace",
        Move(_) => "move",
        Copy(_) => "copy",
        Test(_) => "test",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::InstanceConfiguration;

    fn doc() -> InstanceConfiguration {
        InstanceConfiguration::empty("127.0.0.1", 20001)
    }

    #[test]
    fn adds_a_query_to_the_end_of_the_list() {
        let body = br#"[
            {"op": "add", "path": "/sources/-", "value": {"kind": "mock", "id": "s"}},
            {"op": "add", "path": "/queries/-", "value": {"id": "q", "query": "MATCH (n) RETURN n", "sources": [{"sourceId": "s"}]}},
            {"op": "replace", "path": "/logLevel", "value": "debug"}
        ]"#;
        let patched = apply_json_patch(&doc(), body).unwrap();
        assert_eq!(patched.queries[0].id, "q");
        assert_eq!(patched.sources[0].kind, "mock");
        assert_eq!(patched.log_level, "debug");
    }

    #[test]
    fn malformed_bodies_and_ops_are_reported() {
        assert!(matches!(
            apply_json_patch(&doc(), b"{}"),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            apply_json_patch(&doc(), br#"[{"op": "frobnicate", "path": "/x"}]"#),
            Err(PatchError::Malformed(_))
        ));
        let err =
            apply_json_patch(&doc(), br#"[{"op": "remove", "path": "/queries/3"}]"#).unwrap_err();
        assert!(
            matches!(err, PatchError::NotApplicable { index: 0, .. }),
            "{err:?}"
        );
        let err = apply_json_patch(&doc(), br#"[{"op": "test", "path": "/port", "value": 1}]"#)
            .unwrap_err();
        assert!(matches!(err, PatchError::TestFailed { .. }), "{err:?}");
    }

    #[test]
    fn results_outside_the_schema_name_the_path() {
        let err = apply_json_patch(
            &doc(),
            br#"[{"op": "add", "path": "/colour", "value": "red"}]"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, PatchError::Invalid { message, .. } if message.contains("colour")),
            "{err:?}"
        );
        let err = apply_json_patch(
            &doc(),
            br#"[{"op": "replace", "path": "/port", "value": "eighty"}]"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            PatchError::Invalid {
                path: "/port".into(),
                message: "invalid type: string \"eighty\", expected u16".into()
            }
        );
        let err = apply_json_patch(
            &doc(),
            br#"[{"op": "add", "path": "/queries/-", "value": {"id": "q", "query": "x", "langage": "Cypher"}}]"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, PatchError::Invalid { path, .. } if path.starts_with("/queries/0")),
            "{err:?}"
        );
    }
}
