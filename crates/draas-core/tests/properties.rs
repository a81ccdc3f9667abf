//! Property tests of the parsers that take user input: drasi-server YAML,
//! JSON Patch and configuration documents. Bounded (proptest's case count,
//! `PROPTEST_CASES` to raise it); they run with every test run.
//!
//! - No input makes a parser panic: it answers or it refuses.
//! - A configuration survives rendering to YAML and parsing back.
//! - A patch that fails leaves the document as it was; one that applies
//!   gives a document that parses as the type (atomic, typed).
//! - A patch can never read a secret out (`test`, `copy`, `move` from it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use draas_core::config::{
    parse_yaml, render_yaml, ConfigValue, DrasiServerConfig, QueryConfig, SourceConfig,
};
use draas_core::patch::{apply_json_patch, apply_json_patch_guarded};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9 _./$-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON Pointer into a configuration document, often a real one.
fn pointer() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/host".to_string()),
        Just("/port".to_string()),
        Just("/logLevel".to_string()),
        Just("/sources/-".to_string()),
        Just("/sources/0".to_string()),
        Just("/sources/0/id".to_string()),
        Just("/queries/0/query".to_string()),
        Just("/reactions/-".to_string()),
        Just("".to_string()),
        "(/[a-zA-Z0-9~-]{0,6}){0,3}",
    ]
}

/// A JSON Patch operation, valid or not.
fn operation() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("add"),
            Just("remove"),
            Just("replace"),
            Just("move"),
            Just("copy"),
            Just("test"),
            Just("frobnicate")
        ],
        pointer(),
        pointer(),
        any_json(),
    )
        .prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        )
}

/// A well-formed configuration.
fn configuration() -> impl Strategy<Value = DrasiServerConfig> {
    (
        "[a-z][a-z0-9-]{0,10}",
        1u16..,
        prop_oneof![Just("info"), Just("debug"), Just("warn")],
        prop::collection::vec("[a-z][a-z0-9]{0,6}", 0..3),
        any::<bool>(),
    )
        .prop_map(|(id, port, level, sources, persist)| {
            let mut config: DrasiServerConfig = serde_json::from_value(json!({})).unwrap();
            config.id = Some(ConfigValue::Static(id));
            config.port = Some(ConfigValue::Static(port));
            config.log_level = ConfigValue::Static(level.to_string());
            config.persist_index = persist;
            for source in &sources {
                config.sources.push(
                    serde_json::from_value::<SourceConfig>(
                        json!({"kind": "mock", "id": source, "intervalMs": 100}),
                    )
                    .unwrap(),
                );
            }
            if let Some(first) = sources.first() {
                config.queries.push(QueryConfig::cypher(
                    "q",
                    "MATCH (n) RETURN n.value AS value",
                    &[first.as_str()],
                ));
            }
            config
        })
}

proptest! {
    #[test]
    fn yaml_never_panics(text in "\\PC{0,200}") {
        let _ = parse_yaml(&text);
    }

    #[test]
    fn yaml_shaped_like_a_configuration_never_panics(
        keys in prop::collection::vec(
            prop_oneof![Just("host"), Just("port"), Just("sources"), Just("queries"), Just("x")],
            0..5,
        ),
        values in prop::collection::vec(any_json(), 0..5),
    ) {
        let mut text = String::new();
        for (key, value) in keys.iter().zip(values.iter()) {
            text.push_str(&format!("{key}: {value}\n"));
        }
        let _ = parse_yaml(&text);
    }

    #[test]
    fn a_configuration_survives_rendering_and_parsing(config in configuration()) {
        let yaml = render_yaml(&config).unwrap();
        let back = parse_yaml(&yaml).unwrap();
        prop_assert_eq!(back.sources, config.sources);
        prop_assert_eq!(back.queries, config.queries);
        prop_assert_eq!(back.port, config.port);
        prop_assert_eq!(back.id, config.id);
    }

    #[test]
    fn any_json_is_answered_as_a_configuration_without_panic(value in any_json()) {
        let _ = serde_json::from_value::<DrasiServerConfig>(value.clone());
        let _ = serde_json::from_value::<DrasiServerConfig>(value);
    }

    #[test]
    fn a_patch_applies_whole_or_not_at_all(
        ops in prop::collection::vec(operation(), 0..6),
        garbage in any::<bool>(),
    ) {
        let document = DrasiServerConfig::empty("0.0.0.0", 8080);
        let before = serde_json::to_value(&document).unwrap();
        let body = if garbage {
            // Bytes that are not a patch at all.
            format!("{{\"ops\": {}}}", Value::Array(ops)).into_bytes()
        } else {
            Value::Array(ops).to_string().into_bytes()
        };
        match apply_json_patch(&document, &body) {
            Ok(patched) => {
                // A typed document: it encodes and decodes as one.
                let value = serde_json::to_value(&patched).unwrap();
                let again: DrasiServerConfig = serde_json::from_value(value).unwrap();
                prop_assert_eq!(again, patched);
            }
            Err(_) => prop_assert_eq!(serde_json::to_value(&document).unwrap(), before),
        }
    }

    #[test]
    fn a_patch_never_reads_a_secret_out(
        ops in prop::collection::vec(operation(), 1..5),
        secret in "[a-z]{12}",
    ) {
        let document = json!({"environment": {"PW": secret.clone()}, "image": "x", "notes": []});
        let ops: Vec<Value> = ops
            .into_iter()
            .enumerate()
            .map(|(i, mut op)| {
                // Point half of them at the secret.
                if i % 2 == 0 {
                    op["from"] = json!("/environment/PW");
                    if op["op"] == "test" {
                        op["path"] = json!("/environment/PW");
                        op["value"] = json!(secret.clone());
                    }
                }
                op
            })
            .collect();
        let body = Value::Array(ops.clone()).to_string();
        if let Ok(patched) = apply_json_patch_guarded(&document, body.as_bytes(), &["/environment"]) {
            // Whatever applied, the secret's value shows up nowhere but in
            // the secrets.
            let mut outside = patched.clone();
            if let Some(fields) = outside.as_object_mut() {
                fields.remove("environment");
            }
            prop_assert!(!outside.to_string().contains(&secret), "{ops:?} → {patched}");
            // And no test on it was allowed to pass or fail silently.
            prop_assert!(!ops.iter().any(|op| op["op"] == "test" && op["path"] == "/environment/PW"));
        }
    }
}
