//! Whole-configuration validation with Drasi's own rules: the structural
//! checks of `draas-core`, each plugin's configuration DTO, and the query
//! parser drasi-lib itself uses.

use draas_core::config::{validate_structure, ConfigIssue, DrasiServerConfig, QueryLanguage};
use drasi_lib::queries::label_extractor::LabelExtractor;
use serde_json::Value;

use crate::plugins;

/// Every issue in `config`, in document order; empty when the runtime would
/// accept it.
pub fn validate(config: &DrasiServerConfig) -> Vec<ConfigIssue> {
    let mut issues = validate_structure(config);

    if config.persist_index {
        issues.push(ConfigIssue::new(
            "/persistIndex",
            "persistIndex: true needs the RocksDB index, which this runtime does not bundle; \
             use persistIndex: false (queries keep their index in memory)",
        ));
    }

    for (i, source) in config.sources.iter().enumerate() {
        let base = format!("/sources/{i}");
        let Some(plugin) = plugins::source(&source.kind) else {
            issues.push(ConfigIssue::new(
                format!("{base}/kind"),
                format!(
                    "source '{}': unknown kind '{}'; available kinds: {}",
                    source.id,
                    source.kind,
                    plugins::source_kinds().join(", ")
                ),
            ));
            continue;
        };
        if let Err(e) = plugin.check(&source.properties) {
            issues.push(ConfigIssue::new(
                format!("{base}{}", e.path),
                format!("source '{}' ({}): {}", source.id, source.kind, e.message),
            ));
        }
        if source.identity_provider.is_some() {
            issues.push(identity_unsupported(&base, "source", &source.id));
        }
        if let Some(Value::Object(provider)) = &source.bootstrap_provider {
            let kind = provider
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match plugins::bootstrap(kind) {
                None => issues.push(ConfigIssue::new(
                    format!("{base}/bootstrapProvider/kind"),
                    format!(
                        "source '{}': unknown bootstrap provider kind '{kind}'; available kinds: {}",
                        source.id,
                        plugins::bootstrap_kinds().join(", ")
                    ),
                )),
                Some(bootstrap) => {
                    let merged =
                        plugins::bootstrap_config(&source.kind, &source.properties, provider);
                    if let Err(e) = bootstrap.check(&merged) {
                        issues.push(ConfigIssue::new(
                            format!("{base}/bootstrapProvider{}", e.path),
                            format!(
                                "source '{}': bootstrap provider ({kind}): {}",
                                source.id, e.message
                            ),
                        ));
                    }
                }
            }
        }
    }

    for (i, query) in config.queries.iter().enumerate() {
        let base = format!("/queries/{i}");
        if let Err(message) = parse_query(&query.query, query.query_language) {
            issues.push(ConfigIssue::new(
                format!("{base}/query"),
                format!(
                    "query '{}' is not valid {:?}: {message}",
                    query.id, query.query_language
                ),
            ));
        }
        if let Some(mode) = &query.dispatch_mode {
            if mode != "Channel" {
                issues.push(ConfigIssue::new(
                    format!("{base}/dispatchMode"),
                    format!("invalid dispatchMode '{mode}': must be 'Channel'"),
                ));
            }
        }
        if let Some(joins) = &query.joins {
            if let Err(e) =
                serde_json::from_value::<Vec<drasi_lib::config::QueryJoinConfig>>(joins.clone())
            {
                issues.push(ConfigIssue::new(
                    format!("{base}/joins"),
                    format!("invalid joins: {e}"),
                ));
            }
        }
        if let Some(backend) = &query.storage_backend {
            if let Err(e) = serde_json::from_value::<drasi_lib::StorageBackendRef>(backend.clone())
            {
                issues.push(ConfigIssue::new(
                    format!("{base}/storageBackend"),
                    format!("invalid storageBackend: {e}"),
                ));
            }
        }
    }

    for (i, reaction) in config.reactions.iter().enumerate() {
        let base = format!("/reactions/{i}");
        let Some(plugin) = plugins::reaction(&reaction.kind) else {
            issues.push(ConfigIssue::new(
                format!("{base}/kind"),
                format!(
                    "reaction '{}': unknown kind '{}'; available kinds: {}",
                    reaction.id,
                    reaction.kind,
                    plugins::reaction_kinds().join(", ")
                ),
            ));
            continue;
        };
        if let Err(e) = plugin.check(&reaction.properties) {
            issues.push(ConfigIssue::new(
                format!("{base}{}", e.path),
                format!(
                    "reaction '{}' ({}): {}",
                    reaction.id, reaction.kind, e.message
                ),
            ));
        }
        if reaction.identity_provider.is_some() {
            issues.push(identity_unsupported(&base, "reaction", &reaction.id));
        }
    }

    issues
}

/// The control plane's validator: [`validate`] behind the core port.
pub struct DrasiValidator;

impl draas_core::ports::ConfigValidator for DrasiValidator {
    fn validate(&self, config: &DrasiServerConfig) -> Vec<ConfigIssue> {
        validate(config)
    }
}

/// Parses a query with the parser drasi-lib uses when it starts the query.
pub fn parse_query(text: &str, language: QueryLanguage) -> Result<(), String> {
    let language = match language {
        QueryLanguage::Cypher => drasi_lib::config::QueryLanguage::Cypher,
        QueryLanguage::GQL => drasi_lib::config::QueryLanguage::GQL,
    };
    LabelExtractor::extract_labels(text, &language)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn identity_unsupported(base: &str, what: &str, id: &str) -> ConfigIssue {
    ConfigIssue::new(
        format!("{base}/identityProvider"),
        format!(
            "{what} '{id}': identity providers are not supported by this runtime; \
             put credentials in the plugin's own fields (environment references work)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use draas_core::config::parse_yaml;

    #[test]
    fn a_sound_pipeline_has_no_issues() {
        let config = parse_yaml(
            r#"
sources:
  - {kind: mock, id: s, dataType: {type: counter}}
  - {kind: http, id: h, host: 127.0.0.1, port: 9000}
queries:
  - {id: q, autoStart: true, queryLanguage: Cypher, query: "MATCH (c:Counter) RETURN c.value AS v", sources: [{sourceId: s}]}
  - {id: g, autoStart: true, query: "MATCH (c:Counter) RETURN c.value AS v", sources: [{sourceId: s}]}
reactions:
  - {kind: log, id: l, queries: [q]}
  - {kind: sse, id: e, queries: [q], host: 127.0.0.1, port: 9001}
"#,
        )
        .unwrap();
        assert_eq!(validate(&config), vec![]);
    }

    #[test]
    fn plugin_and_query_problems_are_located() {
        let config = parse_yaml(
            r#"
sources:
  - {kind: mock, id: s, dataTyp: {type: counter}}
  - {kind: kafka, id: k}
queries:
  - {id: q, queryLanguage: Cypher, query: "MATCH (n RETURN n", sources: [{sourceId: s}]}
reactions:
  - {kind: log, id: l, queries: [q], identityProvider: idp}
"#,
        )
        .unwrap();
        let issues = validate(&config);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/sources/0/dataTyp",
                "/sources/1/kind",
                "/queries/0/query",
                "/reactions/0/identityProvider"
            ],
            "{issues:#?}"
        );
        assert!(issues[0]
            .message
            .contains("source 's' (mock): unknown field `dataTyp`"));
        assert!(issues[1]
            .message
            .contains("available kinds: mock, http, postgres"));
        assert!(issues[2].message.contains("query 'q' is not valid Cypher"));
    }

    #[test]
    fn cypher_parser_is_drasis() {
        assert!(parse_query(
            "MATCH (a:A)-[:R]->(b:B) WHERE a.x > 1 RETURN a.x, b.y",
            QueryLanguage::Cypher
        )
        .is_ok());
        assert!(parse_query("SELECT * FROM t", QueryLanguage::Cypher).is_err());
    }
}
