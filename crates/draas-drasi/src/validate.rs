//! Whole-configuration validation with Drasi's own rules: the structural
//! checks of `draas-core`, shapes drasi-server no longer takes (named with
//! the shape that replaced them), the query parser drasi-lib itself uses,
//! and, for the bundled runtime, every kind and every plugin field.

use draas_core::config::{parse_reference, ConfigIssue, DrasiServerConfig, QueryLanguage};
use draas_core::ports::{
    CheckTarget, ConfigValidator, Report, Runtime, RuntimeCatalog, StructuralValidator,
};
use drasi_lib::queries::label_extractor::LabelExtractor;
use serde_json::{Map, Value};

use crate::plugins::{self, PluginCheck};

/// Every issue and warning of `config` as the configuration of `target`.
pub fn validate(config: &DrasiServerConfig, target: &CheckTarget) -> Report {
    let lookup = |name: &str| target.lookup(name);
    let mut report = StructuralValidator.validate(config, target);
    let bundled = target.runtime == Runtime::Bundled;

    for (base, query) in config.all_queries() {
        if let Err(message) = parse_query(&query.query, query.query_language) {
            report.issues.push(ConfigIssue::new(
                format!("{base}/query"),
                format!(
                    "query '{}' is not valid {:?}: {message}",
                    query.id, query.query_language
                ),
            ));
        }
        if let Some(mode) = &query.dispatch_mode {
            if mode != "Channel" {
                report.issues.push(ConfigIssue::new(
                    format!("{base}/dispatchMode"),
                    format!("invalid dispatchMode '{mode}': must be 'Channel'"),
                ));
            }
        }
        if let Some(joins) = &query.joins {
            if let Err(e) =
                serde_json::from_value::<Vec<drasi_lib::config::QueryJoinConfig>>(joins.clone())
            {
                report.issues.push(ConfigIssue::new(
                    format!("{base}/joins"),
                    format!("invalid joins: {e}"),
                ));
            }
        }
        if let Some(backend) = &query.storage_backend {
            if let Err(e) = serde_json::from_value::<drasi_lib::StorageBackendRef>(backend.clone())
            {
                report.issues.push(ConfigIssue::new(
                    format!("{base}/storageBackend"),
                    format!("invalid storageBackend: {e}"),
                ));
            }
        }
    }

    for lib in config.lib_instances() {
        let base = lib.pointer();
        if lib.persist_index {
            // A persistent query resumes from checkpoints: every source it
            // reads must replay from a position. The http and grpc sources
            // do only with their write-ahead log on.
            for (i, source) in lib.sources.iter().enumerate() {
                let durable = source
                    .properties
                    .get("durability")
                    .and_then(|d| d.get("enabled"))
                    .and_then(Value::as_bool)
                    == Some(true);
                if matches!(source.kind.as_str(), "http" | "grpc") && !durable {
                    let readers: Vec<&str> = lib
                        .queries
                        .iter()
                        .filter(|q| q.sources.iter().any(|s| s.source_id == source.id))
                        .map(|q| q.id.as_str())
                        .collect();
                    if readers.is_empty() {
                        continue;
                    }
                    report.issues.push(ConfigIssue::new(
                        format!("{base}/sources/{i}"),
                        format!(
                            "with persistIndex: true, queries ({}) resume from checkpoints, so \
                             their sources must replay: give the {} source '{}' `durability: \
                             {{enabled: true}}` (a write-ahead log in the server's directory)",
                            readers.join(", "),
                            source.kind,
                            source.id
                        ),
                    ));
                }
            }
        }
        for (i, source) in lib.sources.iter().enumerate() {
            let path = format!("{base}/sources/{i}");
            if !bundled {
                continue;
            }
            match plugins::source(&source.kind) {
                None => report.issues.push(missing_kind(
                    &format!("{path}/kind"),
                    "source",
                    &source.id,
                    &source.kind,
                    &plugins::source_kinds(),
                )),
                Some(plugin) => plugin_report(
                    &path,
                    &format!("source '{}' ({})", source.id, source.kind),
                    &source.properties,
                    plugin.check(&source.properties, &lookup),
                    &mut report,
                ),
            }
            if let Some(Ok((kind, merged))) = lib.bootstrap_of(source) {
                let at = match &source.bootstrap_provider {
                    Some(Value::String(id)) => lib
                        .bootstrap_providers
                        .iter()
                        .position(|p| &p.id == id)
                        .map(|j| format!("{base}/bootstrapProviders/{j}"))
                        .unwrap_or_else(|| format!("{path}/bootstrapProvider")),
                    _ => format!("{path}/bootstrapProvider"),
                };
                match plugins::bootstrap(&kind) {
                    None => report.issues.push(missing_kind(
                        &format!("{at}/kind"),
                        "bootstrap provider of source",
                        &source.id,
                        &kind,
                        &plugins::bootstrap_kinds(),
                    )),
                    Some(plugin) => plugin_report(
                        &at,
                        &format!("source '{}': bootstrap provider ({kind})", source.id),
                        &merged,
                        plugin.check(&merged, &lookup),
                        &mut report,
                    ),
                }
            }
        }
        for (i, reaction) in lib.reactions.iter().enumerate() {
            let path = format!("{base}/reactions/{i}");
            if let Some(issue) = outdated_reaction(&path, &reaction.kind, &reaction.properties) {
                report.issues.push(issue);
                continue;
            }
            if reaction.kind == "grpc" {
                for key in ["batchSize", "batchFlushTimeoutMs"] {
                    if reaction.properties.contains_key(key) {
                        report.warnings.push(ConfigIssue::new(
                            format!("{path}/{key}"),
                            format!(
                                "ignored by the grpc reaction since 0.4: batching is \
                                 `batching: {{mode: fixed, batchSize: 100, batchFlushTimeoutMs: 1000}}` \
                                 (or `mode: adaptive`); `{key}` here has no effect"
                            ),
                        ));
                    }
                }
            }
            if !bundled {
                continue;
            }
            match plugins::reaction(&reaction.kind) {
                None => report.issues.push(missing_kind(
                    &format!("{path}/kind"),
                    "reaction",
                    &reaction.id,
                    &reaction.kind,
                    &plugins::reaction_kinds(),
                )),
                Some(plugin) => {
                    let mut check = plugin.check(&reaction.properties, &lookup);
                    if reaction.kind == "grpc" {
                        // Said above, with the shape that replaced them.
                        check
                            .ignored
                            .retain(|p| p != "/batchSize" && p != "/batchFlushTimeoutMs");
                    }
                    plugin_report(
                        &path,
                        &format!("reaction '{}' ({})", reaction.id, reaction.kind),
                        &reaction.properties,
                        check,
                        &mut report,
                    )
                }
            }
            if reaction.kind == "file" {
                if let Some(Value::String(dir)) = reaction.properties.get("outputPath") {
                    if let Some(problem) = draas_core::config::inner_path_problem(dir) {
                        report
                            .issues
                            .push(ConfigIssue::new(format!("{path}/outputPath"), problem));
                    }
                }
            }
        }
        if bundled {
            for (i, provider) in lib.identity_providers.iter().enumerate() {
                if !plugins::IDENTITY_PROVIDERS.contains(&provider.kind.as_str()) {
                    report.issues.push(missing_kind(
                        &format!("{base}/identityProviders/{i}/kind"),
                        "identity provider",
                        &provider.id,
                        &provider.kind,
                        &plugins::IDENTITY_PROVIDERS,
                    ));
                }
            }
            if let Some(store) = lib.secret_store {
                if !plugins::SECRET_STORES.contains(&store.kind.as_str()) {
                    report.issues.push(ConfigIssue::new(
                        format!("{base}/secretStore/kind"),
                        format!(
                            "the bundled runtime has no secret store of kind '{}' (it has: {}); \
                             or keep secrets in the instance's environment and write ${{NAME}}",
                            store.kind,
                            plugins::SECRET_STORES.join(", ")
                        ),
                    ));
                } else if let Some(Value::String(path)) = store.properties.get("path") {
                    if let Some(problem) = draas_core::config::inner_path_problem(path) {
                        report.issues.push(ConfigIssue::new(
                            format!("{base}/secretStore/path"),
                            problem,
                        ));
                    }
                }
            }
        }
    }

    if bundled {
        let plugin_keys: Vec<&str> = [
            ("plugins", !config.plugins.is_empty()),
            ("autoInstallPlugins", config.auto_install_plugins.is_some()),
            ("verifyPlugins", config.verify_plugins.is_some()),
            ("pluginRegistry", config.plugin_registry.is_some()),
            ("trustedIdentities", !config.trusted_identities.is_empty()),
            ("hotReloadPlugins", config.hot_reload_plugins.is_some()),
            (
                "hotReloadDebounceMs",
                config.hot_reload_debounce_ms.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if !plugin_keys.is_empty() {
            report.warnings.push(ConfigIssue::new(
                format!("/{}", plugin_keys[0]),
                format!(
                    "{}: the bundled runtime links its plugins in, so these are kept (for the \
                     official drasi-server, with `executablePath` or an image) and do nothing here",
                    plugin_keys.join(", ")
                ),
            ));
        }
        if config.enable_ui == Some(true) {
            report.warnings.push(ConfigIssue::new(
                "/enableUi",
                "the bundled runtime serves no web UI (the DRaaS dashboard shows the instance)",
            ));
        }
        if config.solutions_dir.is_some() {
            report.warnings.push(ConfigIssue::new(
                "/solutionsDir",
                "the bundled runtime has no solutions API: solutionsDir does nothing here",
            ));
        }
    } else {
        report.warnings.push(ConfigIssue::new(
            "",
            "this instance runs another executable or image than the bundled runtime: component \
             kinds and plugin fields are checked by that server when it starts",
        ));
    }
    report
}

/// The report of one plugin's check.
fn plugin_report(
    path: &str,
    what: &str,
    given: &Map<String, Value>,
    check: PluginCheck,
    report: &mut Report,
) {
    for error in check.errors {
        let mut message = format!("{what}: {}", error.message);
        // A reference where the plugin takes a plain value: drasi-server
        // refuses it too; say why.
        let raw = Value::Object(given.clone());
        if let Some(text) = raw.pointer(&error.path).and_then(first_reference) {
            message.push_str(&format!(
                " (drasi-server resolves {text} only in the fields a plugin declares as \
                 configurable values; this one takes its value as written)"
            ));
        }
        report
            .issues
            .push(ConfigIssue::new(format!("{path}{}", error.path), message));
    }
    for ignored in check.ignored {
        report.warnings.push(ConfigIssue::new(
            format!("{path}{ignored}"),
            format!("{what}: the plugin does not know this key and ignores it"),
        ));
    }
}

/// The first `${...}` reference in `value` (itself, or below it).
fn first_reference(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => parse_reference(text).map(|_| text.clone()),
        Value::Object(map) => map.values().find_map(first_reference),
        Value::Array(items) => items.iter().find_map(first_reference),
        _ => None,
    }
}

fn missing_kind(path: &str, what: &str, id: &str, kind: &str, bundled: &[&str]) -> ConfigIssue {
    ConfigIssue::new(
        path,
        format!(
            "{what} '{id}': the bundled runtime has no plugin of kind '{kind}' (it has: {}); \
             to use drasi-server's plugin, run the official drasi-server with \
             serverConfiguration.process.executablePath (or an image)",
            bundled.join(", ")
        ),
    )
}

/// A reaction in a shape drasi-server's current plugins refuse, named with
/// the shape that replaced it.
fn outdated_reaction(
    path: &str,
    kind: &str,
    properties: &Map<String, Value>,
) -> Option<ConfigIssue> {
    match kind {
        "http" if properties.contains_key("routes") => Some(ConfigIssue::new(
            format!("{path}/routes"),
            "the http reaction's top-level `routes` (with `body`) is the shape of \
             drasi-reaction-http 0.2, which drasi-server no longer loads; since 0.3 it is \
             `outputTemplates: {routes: {<query>: {added: {url, method, template}, updated: ..., \
             deleted: ...}}}` (`body` became `template`)",
        )),
        "http-adaptive" => Some(ConfigIssue::new(
            format!("{path}/kind"),
            "kind http-adaptive was merged into http: use `kind: http` with `adaptive: \
             {adaptiveMinBatchSize, adaptiveMaxBatchSize, adaptiveWindowSize, \
             adaptiveBatchTimeoutMs}` and `outputTemplates`",
        )),
        "grpc-adaptive" => Some(ConfigIssue::new(
            format!("{path}/kind"),
            "kind grpc-adaptive was merged into grpc: use `kind: grpc` with `batching: {mode: \
             adaptive, adaptiveMinBatchSize, adaptiveMaxBatchSize, adaptiveWindowSize, \
             adaptiveBatchTimeoutMs}`",
        )),
        _ => None,
    }
}

/// What the bundled runtime has.
pub fn catalog() -> RuntimeCatalog {
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    RuntimeCatalog {
        name: "draas-runtime".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sources: owned(&plugins::source_kinds()),
        reactions: owned(&plugins::reaction_kinds()),
        bootstrap_providers: owned(&plugins::bootstrap_kinds()),
        identity_providers: owned(&plugins::IDENTITY_PROVIDERS),
        secret_stores: owned(&plugins::SECRET_STORES),
        state_stores: owned(&plugins::STATE_STORES),
        indexes: owned(&plugins::INDEXES),
        query_languages: owned(&["Cypher", "GQL"]),
    }
}

/// The control plane's validator: [`validate`] behind the core port.
pub struct DrasiValidator;

impl draas_core::ports::ConfigValidator for DrasiValidator {
    fn validate(&self, config: &DrasiServerConfig, target: &CheckTarget) -> Report {
        validate(config, target)
    }

    fn catalog(&self) -> RuntimeCatalog {
        catalog()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use draas_core::config::parse_yaml;

    fn check(text: &str, runtime: Runtime) -> Report {
        let environment = BTreeMap::new();
        validate(
            &parse_yaml(text).unwrap(),
            &CheckTarget {
                instance_id: "i-1",
                environment: &environment,
                runtime,
            },
        )
    }

    fn paths(issues: &[ConfigIssue]) -> Vec<&str> {
        issues.iter().map(|i| i.path.as_str()).collect()
    }

    #[test]
    fn a_sound_pipeline_has_no_issues() {
        let report = check(
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
            Runtime::Bundled,
        );
        assert_eq!(report, Report::default());
    }

    #[test]
    fn plugin_and_query_problems_are_located() {
        let report = check(
            r#"
sources:
  - {kind: mock, id: s, dataTyp: {type: counter}}
  - {kind: kafka, id: k}
queries:
  - {id: q, queryLanguage: Cypher, query: "MATCH (n RETURN n", sources: [{sourceId: s}]}
reactions:
  - {kind: log, id: l, queries: [q], autoStart: false}
"#,
            Runtime::Bundled,
        );
        assert_eq!(
            paths(&report.issues),
            vec!["/queries/0/query", "/sources/0/dataTyp", "/sources/1/kind"],
            "{report:#?}"
        );
        assert!(report.issues[1]
            .message
            .contains("source 's' (mock): unknown field `dataTyp`"));
        assert!(report.issues[2].message.contains("it has: mock, http"));
        assert!(report.issues[2].message.contains("executablePath"));
    }

    #[test]
    fn outdated_shapes_are_refused_naming_the_current_one() {
        let report = check(
            r#"
sources: [{kind: mock, id: s}]
queries: [{id: q, autoStart: true, query: "MATCH (n) RETURN n", sources: [{sourceId: s}]}]
reactions:
  - {kind: http, id: h, queries: [q], baseUrl: "http://127.0.0.1:1", routes: {q: {added: {url: /x, method: POST, body: "{{after}}"}}}}
  - {kind: http-adaptive, id: a, queries: [q]}
  - {kind: grpc, id: g, queries: [q], endpoint: "grpc://127.0.0.1:1", batchSize: 10}
"#,
            Runtime::Other,
        );
        assert_eq!(
            paths(&report.issues),
            vec!["/reactions/0/routes", "/reactions/1/kind"]
        );
        assert!(report.issues[0].message.contains("outputTemplates"));
        assert!(report
            .warnings
            .iter()
            .any(|w| w.path == "/reactions/2/batchSize"
                && w.message.contains("batching: {mode: fixed")));
    }

    #[test]
    fn another_runtime_leaves_kinds_to_its_server() {
        let report = check(
            "sources: [{kind: kafka, id: k, whatever: 1}]\n",
            Runtime::Other,
        );
        assert!(report.issues.is_empty(), "{report:#?}");
        assert_eq!(report.warnings.len(), 1);
    }

    #[test]
    fn plugin_keys_are_kept_and_said_to_do_nothing_here() {
        let report = check(
            "autoInstallPlugins: true\nplugins: [{ref: source/mock}]\nverifyPlugins: false\n",
            Runtime::Bundled,
        );
        assert!(report.issues.is_empty());
        assert!(report.warnings[0]
            .message
            .starts_with("plugins, autoInstallPlugins, verifyPlugins"));
    }

    #[test]
    fn a_reference_in_a_plain_plugin_field_says_why_it_is_refused() {
        let report = check(
            "sources: [{kind: mock, id: s, dataType: {type: sensorReading, sensorCount: \"${N:-3}\"}}]\n",
            Runtime::Bundled,
        );
        // serde names the tagged object, not the field inside it.
        assert_eq!(paths(&report.issues), vec!["/sources/0/dataType"]);
        assert!(report.issues[0]
            .message
            .contains("takes its value as written"));
    }

    #[test]
    fn persistent_queries_need_sources_that_replay() {
        let text = |durability: &str| {
            format!(
                "persistIndex: true\nsources: [{{kind: http, id: h, host: 127.0.0.1, port: 9000{durability}}}]\nqueries: [{{id: q, autoStart: true, queryLanguage: Cypher, query: \"MATCH (n) RETURN n\", sources: [{{sourceId: h}}]}}]\n"
            )
        };
        let report = check(&text(""), Runtime::Bundled);
        assert_eq!(paths(&report.issues), vec!["/sources/0"]);
        assert!(report.issues[0]
            .message
            .contains("durability: {enabled: true}"));
        assert!(
            check(&text(", durability: {enabled: true}"), Runtime::Bundled)
                .issues
                .is_empty()
        );
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
