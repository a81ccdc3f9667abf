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
    /// An operation would read a secret: `test` it (which confirms a
    /// guessed value) or `copy`/`move` it out of where secrets live (into a
    /// field responses show).
    #[error("operation {index} ({op}): {pointer} holds secrets, which can be replaced or removed but never read, tested, copied or moved out")]
    SecretAccess {
        /// Index of the operation.
        index: usize,
        /// The op name.
        op: String,
        /// JSON Pointer of the offending member of the operation
        /// (`/<index>/path` or `/<index>/from`).
        member: String,
        /// The path or from that touches the secrets.
        pointer: String,
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

/// Most a patch may add to a document, its own body and what its `copy`
/// operations duplicate together (each copy can double the document: 30
/// of them from the root would take any memory there is).
pub const MAX_COPIED_BYTES: usize = 4 * 1024 * 1024;

/// Applies the JSON Patch in `body` to `document` and returns the result.
pub fn apply_json_patch<T>(document: &T, body: &[u8]) -> Result<T, PatchError>
where
    T: Serialize + DeserializeOwned,
{
    apply_json_patch_guarded(document, body, &[])
}

/// Like [`apply_json_patch`], for a document with secrets under the JSON
/// Pointers `secrets` (e.g. `/environment`): a secret may be added,
/// replaced or removed, and moved or copied to another secret, but no
/// operation may read one: `test` on a secret (or on a parent of one)
/// and `copy`/`move` from a secret (or a parent) to anywhere else are
/// refused.
pub fn apply_json_patch_guarded<T>(
    document: &T,
    body: &[u8],
    secrets: &[&str],
) -> Result<T, PatchError>
where
    T: Serialize + DeserializeOwned,
{
    let patch: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| PatchError::Malformed(e.to_string()))?;
    guard_secrets(&patch, secrets)?;
    if patch.0.len() > MAX_OPERATIONS {
        return Err(PatchError::Malformed(format!(
            "{} operations; at most {MAX_OPERATIONS} are accepted",
            patch.0.len()
        )));
    }
    let mut value = serde_json::to_value(document)
        .map_err(|e| PatchError::Malformed(format!("document cannot be encoded: {e}")))?;
    // `value` is a copy: on failure it is dropped, so nothing needs undoing.
    // (json_patch::patch's undo panics on some failing patches, e.g. a
    // move of a member onto the root followed by an operation that fails.)
    // One operation at a time, so a document that copies grow is stopped
    // before it takes the memory: what the body adds is bounded by the
    // body, what copies add is counted here.
    let mut grown = body.len();
    for (index, operation) in patch.0.iter().enumerate() {
        let op = op_name(operation).to_string();
        if let json_patch::PatchOperation::Copy(copy) = operation {
            grown += value.pointer(copy.from.as_str()).map_or(0, |copied| {
                serde_json::to_vec(copied).map_or(0, |v| v.len())
            });
            if grown > MAX_COPIED_BYTES {
                return Err(PatchError::NotApplicable {
                    index,
                    op,
                    path: copy.path.to_string(),
                    message: format!(
                        "the patch would add more than {} KiB to the document",
                        MAX_COPIED_BYTES / 1024
                    ),
                });
            }
        }
        let single = json_patch::Patch(vec![operation.clone()]);
        json_patch::patch_unsafe(&mut value, &single).map_err(|e| {
            let path = e.path.to_string();
            match e.kind {
                json_patch::PatchErrorKind::TestFailed => PatchError::TestFailed {
                    index,
                    op: op.clone(),
                    path,
                },
                kind => PatchError::NotApplicable {
                    index,
                    op: op.clone(),
                    path,
                    message: kind.to_string(),
                },
            }
        })?;
    }
    // A secret moved or copied within its own part (allowed) can land where
    // the schema wants another type: the decoder's message would quote it
    // ("invalid type: string \"<the secret>\", expected a map").
    from_value(value).map_err(|e| match e {
        PatchError::Invalid { path, message } if !secrets.is_empty() => PatchError::Invalid {
            path,
            message: without_quoted_values(&message),
        },
        other => other,
    })
}

/// `message` with every double-quoted text in it replaced by `"…"`: a
/// decoder's message that never shows a value.
pub fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…");
            }
            quoted = !quoted;
            if !quoted {
                out.push('"');
            }
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// Whether `pointer` lies inside `root` (or is it).
fn within(pointer: &str, root: &str) -> bool {
    pointer == root
        || pointer
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether reading `pointer` reads something under `root`: it is inside,
/// or it is a parent of it (the whole document included).
fn touches(pointer: &str, root: &str) -> bool {
    within(pointer, root) || within(root, pointer) || pointer.is_empty()
}

fn guard_secrets(patch: &json_patch::Patch, secrets: &[&str]) -> Result<(), PatchError> {
    use json_patch::PatchOperation::{Copy, Move, Test};
    for (index, operation) in patch.0.iter().enumerate() {
        let refused = |member: &str, pointer: &str| PatchError::SecretAccess {
            index,
            op: op_name(operation).to_string(),
            member: format!("/{index}/{member}"),
            pointer: pointer.to_string(),
        };
        for root in secrets {
            match operation {
                Test(test) => {
                    let path = test.path.to_string();
                    if touches(&path, root) {
                        return Err(refused("path", &path));
                    }
                }
                Copy(copy) => {
                    let (from, path) = (copy.from.to_string(), copy.path.to_string());
                    if touches(&from, root) && !(within(&from, root) && within(&path, root)) {
                        return Err(refused("from", &from));
                    }
                }
                Move(moved) => {
                    let (from, path) = (moved.from.to_string(), moved.path.to_string());
                    if touches(&from, root) && !(within(&from, root) && within(&path, root)) {
                        return Err(refused("from", &from));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Deserializes `value` into `T` as a user's document (unknown fields
/// refused, see [`crate::strict`]), reporting the JSON Pointer of a failure.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, PatchError> {
    crate::strict::from_value(value).map_err(|e| PatchError::Invalid {
        path: e.path,
        message: e.message,
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
    use crate::config::DrasiServerConfig;

    fn doc() -> DrasiServerConfig {
        DrasiServerConfig::empty("127.0.0.1", 20001)
    }

    /// The attack: copies of the whole document into itself, each doubling
    /// it (16 took 60 MB before the 422; 30 would take the process down).
    /// Refused at the copy that would pass the limit, quickly.
    #[test]
    fn copies_that_would_grow_the_document_without_bound_are_refused() {
        let ops: Vec<String> = (0..40)
            .map(|_| r#"{"op": "copy", "from": "", "path": "/sources/-"}"#.to_string())
            .collect();
        let body = format!("[{}]", ops.join(","));
        let started = std::time::Instant::now();
        match apply_json_patch(&doc(), body.as_bytes()) {
            Err(PatchError::NotApplicable { message, .. }) => {
                assert!(message.contains("KiB"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A few ordinary copies still apply.
        let body = br#"[{"op": "add", "path": "/sources/-", "value": {"kind": "mock", "id": "a"}},
                        {"op": "copy", "from": "/sources/0", "path": "/sources/-"},
                        {"op": "replace", "path": "/sources/1/id", "value": "b"}]"#;
        let patched = apply_json_patch(&doc(), body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(patched.sources.len(), 2);
    }

    #[test]
    fn quoted_values_are_left_out_of_messages() {
        assert_eq!(
            without_quoted_values(r#"invalid type: string "hunter2", expected a map"#),
            r#"invalid type: string "…", expected a map"#
        );
        assert_eq!(without_quoted_values("no quotes"), "no quotes");
        assert_eq!(without_quoted_values(r#"open "end"#), r#"open "…"#);
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
        assert_eq!(
            patched.log_level,
            crate::config::ConfigValue::Static("debug".to_string())
        );
    }

    #[test]
    fn a_failing_patch_that_moved_the_root_is_refused_without_panic() {
        // Found by the property tests: json-patch's undo panicked here.
        let body = br#"[
            {"op": "move", "from": "/host", "path": ""},
            {"op": "remove", "path": "/host"}
        ]"#;
        assert!(apply_json_patch(&doc(), body).is_err());
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

#[cfg(test)]
mod secret_tests {
    use super::*;
    use serde_json::json;

    fn guarded(ops: serde_json::Value) -> Result<serde_json::Value, PatchError> {
        let document =
            json!({"environment": {"PW": "hunter2"}, "process": {"arguments": []}, "image": "x"});
        apply_json_patch_guarded(&document, ops.to_string().as_bytes(), &["/environment"])
    }

    #[test]
    fn no_operation_reads_a_secret_back_out() {
        for ops in [
            json!([{"op": "test", "path": "/environment/PW", "value": "hunter2"}]),
            json!([{"op": "test", "path": "/environment", "value": {"PW": "hunter2"}}]),
            json!([{"op": "test", "path": "", "value": {}}]),
            json!([{"op": "copy", "from": "/environment/PW", "path": "/image"}]),
            json!([{"op": "copy", "from": "/environment/PW", "path": "/process/arguments/-"}]),
            json!([{"op": "move", "from": "/environment/PW", "path": "/image"}]),
            json!([{"op": "copy", "from": "/environment", "path": "/process/extra"}]),
            json!([{"op": "copy", "from": "", "path": "/process/extra"}]),
            json!([{"op": "replace", "path": "/image", "value": "y"},
                   {"op": "move", "from": "/environment/PW", "path": "/environment2"}]),
        ] {
            let error = guarded(ops.clone()).unwrap_err();
            assert!(
                matches!(error, PatchError::SecretAccess { .. }),
                "{ops}: {error:?}"
            );
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn secrets_can_still_be_written_renamed_and_removed() {
        let renamed = guarded(
            json!([{"op": "move", "from": "/environment/PW", "path": "/environment/PASSWORD"}]),
        )
        .unwrap();
        assert_eq!(renamed["environment"], json!({"PASSWORD": "hunter2"}));
        let replaced = guarded(
            json!([{"op": "replace", "path": "/environment/PW", "value": "new"},
                                      {"op": "add", "path": "/environment/X", "value": "1"},
                                      {"op": "test", "path": "/image", "value": "x"},
                                      {"op": "copy", "from": "/image", "path": "/image2"}]),
        )
        .unwrap();
        assert_eq!(replaced["environment"], json!({"PW": "new", "X": "1"}));
        let removed = guarded(json!([{"op": "remove", "path": "/environment"}])).unwrap();
        assert!(removed.get("environment").is_none());
        // "/environmentX" is not under "/environment".
        let document = json!({"environment": {}, "environmentX": "open"});
        let ops = json!([{"op": "test", "path": "/environmentX", "value": "open"}]);
        assert!(
            apply_json_patch_guarded(&document, ops.to_string().as_bytes(), &["/environment"])
                .is_ok()
        );
    }
}
