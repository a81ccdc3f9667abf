//! The OpenAPI 3.1 document, generated: paths, methods, parameters, bodies,
//! access and answers from the route table ([`super::routes`]), schemas
//! from the same serde types that parse requests and shape answers
//! (derived by schemars as JSON Schema 2020-12, which OpenAPI 3.1 speaks),
//! and every problem `code` from [`crate::error::PROBLEM_CODES`].
//! A copy is committed as `docs/openapi.json`; a test fails when it drifts.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::error::PROBLEM_CODES;
use draas_core::auth::Access;

/// A schema of a type, as a reference into the document's components.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T` (a `$ref` for named types).
pub fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A JSON Patch (RFC 6902).
pub fn json_patch(_: &mut SchemaGenerator) -> Schema {
    let schema = json!({
        "type": "array",
        "description": "JSON Patch (RFC 6902), applied atomically: validated as a whole, nothing applied on error",
        "items": {
            "type": "object",
            "required": ["op", "path"],
            "properties": {
                "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
                "path": {"type": "string", "description": "JSON Pointer"},
                "from": {"type": "string", "description": "JSON Pointer (move, copy)"},
                "value": {}
            }
        }
    });
    Schema::try_from(schema).unwrap_or_default()
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

/// Query parameters from an object schema's properties.
fn query_parameters(generator: &mut SchemaGenerator, make: SchemaFn) -> Vec<Value> {
    let mut schema = make(generator).to_value();
    // A named type is a reference: look it up.
    if let Some(name) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .map(str::to_string)
    {
        schema = generator
            .definitions()
            .get(&name)
            .cloned()
            .unwrap_or(Value::Null);
    }
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema["properties"]
        .as_object()
        .map(|properties| {
            properties
                .iter()
                .map(|(name, property)| {
                    let mut parameter = json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": property,
                    });
                    if let Some(description) = property.get("description") {
                        parameter["description"] = description.clone();
                    }
                    parameter
                })
                .collect()
        })
        .unwrap_or_default()
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// The document.
pub fn document() -> Value {
    let mut generator = generator();
    let mut paths: Map<String, Value> = Map::new();
    for route in super::routes() {
        let mut operation = Map::new();
        operation.insert("summary".into(), json!(route.summary));
        operation.insert(
            "operationId".into(),
            json!(format!(
                "{}{}",
                route.method.as_str().to_lowercase(),
                route
                    .path
                    .split(['/', '-', '{', '}', '.'])
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let mut c = p.chars();
                        c.next()
                            .map(|f| f.to_uppercase().chain(c).collect::<String>())
                            .unwrap_or_default()
                    })
                    .collect::<String>()
            )),
        );
        let tag = if route.path.starts_with("/api/") {
            route.path.split('/').nth(2).unwrap_or("api")
        } else {
            "health"
        };
        operation.insert("tags".into(), json!([tag]));
        let mut parameters = Vec::new();
        if route.path.contains("{id}") {
            parameters.push(json!({
                "name": "id", "in": "path", "required": true,
                "description": "The instance's id (i- and 32 hex digits) or its name",
                "schema": {"type": "string", "minLength": 1, "maxLength": 63}
            }));
        }
        if route.path.contains("{query}") {
            parameters.push(json!({
                "name": "query", "in": "path", "required": true,
                "description": "The id of a query of the instance's configuration",
                "schema": {"type": "string", "minLength": 1, "maxLength": 256}
            }));
        }
        if let Some(query) = route.query {
            parameters.extend(query_parameters(&mut generator, query));
        }
        if route.idempotent {
            parameters.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Repeat the request with the same key to get the first answer again (24 h)",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}
            }));
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        if let Some((media, make)) = route.body {
            let schema = make(&mut generator).to_value();
            let mut content = json!({media: {"schema": schema.clone()}});
            if route.yaml {
                content["application/yaml"] = json!({"schema": schema});
            }
            operation.insert(
                "requestBody".into(),
                json!({"required": true, "content": content}),
            );
        }
        let mut responses = Map::new();
        let (status, answer) = route.answer;
        let mut ok = json!({"description": "Success"});
        if let Some(make) = answer {
            let schema = make(&mut generator).to_value();
            ok["content"] = if route.yaml && route.method == axum::http::Method::GET {
                json!({"application/json": {"schema": schema.clone()}, "application/yaml": {"schema": schema}})
            } else {
                json!({"application/json": {"schema": schema}})
            };
        } else if route.path == "/api/events" {
            ok["content"] = json!({"text/event-stream": {"schema": {"type": "string"}}});
        } else if route.path == "/scalar/v1" {
            ok["content"] = json!({"text/html": {"schema": {"type": "string"}}});
        }
        responses.insert(status.to_string(), ok);
        if route.access != Access::Public {
            operation.insert("security".into(), json!([{"bearer": []}]));
            operation.insert("x-draas-access".into(), json!(route.access));
            responses.insert(
                "401".into(),
                problem("No key, or an unknown or revoked one (UNAUTHENTICATED)"),
            );
            responses.insert(
                "403".into(),
                problem(&format!(
                    "The key's role may not do this: needs {} or admin (FORBIDDEN)",
                    route.access.least_role()
                )),
            );
            responses.insert(
                "429".into(),
                problem("Too many requests from this key (RATE_LIMITED, Retry-After)"),
            );
        }
        responses.insert("default".into(), problem("A problem (see its code)"));
        operation.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.as_str().to_lowercase()] = Value::Object(operation);
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details with a stable code",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {
                    "type": "string",
                    "enum": PROBLEM_CODES.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
                    "description": PROBLEM_CODES
                        .iter()
                        .map(|(code, meaning)| format!("`{code}`: {meaning}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                },
                "errors": {
                    "type": "array",
                    "description": "The offending values, by JSON Pointer",
                    "items": {
                        "type": "object",
                        "required": ["path", "message"],
                        "properties": {
                            "path": {"type": "string"},
                            "message": {"type": "string"},
                            "line": {"type": "integer", "minimum": 1, "description": "The value's line in a YAML body"}
                        }
                    }
                }
            }
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "DRaaS API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Runs and watches many Drasi servers on processes, Docker and Kubernetes.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: draas keys create"}
            }
        }
    })
}

/// The Scalar API reference page, with the document inside.
pub fn scalar_page() -> String {
    utoipa_scalar::Scalar::new(document()).to_html()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_parameter_is_declared() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let names: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|s| s.split('}').next())
                .collect();
            for (method, operation) in item.as_object().expect("operations") {
                for name in &names {
                    let declared = operation["parameters"].as_array().is_some_and(|ps| {
                        ps.iter().any(|p| p["in"] == "path" && p["name"] == *name)
                    });
                    assert!(declared, "{method} {path} does not declare {{{name}}}");
                }
            }
        }
    }

    /// `docs/openapi.json` at the workspace root.
    fn committed() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
    }

    #[test]
    fn the_committed_document_is_current() {
        let now = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("DRAAS_UPDATE_OPENAPI").is_some() {
            std::fs::write(committed(), &now).unwrap();
        }
        let kept = std::fs::read_to_string(committed()).unwrap_or_default();
        assert!(
            kept == now,
            "docs/openapi.json is out of date: run DRAAS_UPDATE_OPENAPI=1 cargo test -p draas-api openapi, and commit it"
        );
    }

    #[test]
    fn every_route_is_in_the_document_with_its_security() {
        let doc = document();
        for route in super::super::routes() {
            let op = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
            assert!(op.is_object(), "{} {}", route.method, route.path);
            assert_eq!(op["security"].is_array(), route.access != Access::Public);
        }
        // Every $ref resolves.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
        let create = &doc["paths"]["/api/server/instances"]["post"];
        assert!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap()
                .ends_with("CreateInstance")
        );
        let list = &doc["paths"]["/api/server/instances"]["get"]["parameters"];
        assert!(list
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "platformType"));
    }
}
