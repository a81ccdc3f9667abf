use std::collections::BTreeMap;

use super::*;

const PIPELINE: &str = r#"
apiVersion: drasi.io/v1
id: demo
host: 127.0.0.1
port: 8181
logLevel: warn
persistConfig: false
sources:
  - kind: mock
    id: sensors
    dataType: {type: sensorReading, sensorCount: 3}
    intervalMs: 200
queries:
  - id: hot
    autoStart: true
    queryLanguage: Cypher
    query: "MATCH (s:SensorReading) RETURN s.sensor_id AS id"
    sources: [{sourceId: sensors}]
reactions:
  - kind: log
    id: console
    queries: [hot]
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn check(config: &DrasiServerConfig) -> Vec<ConfigIssue> {
    validate_structure(
        config,
        &ValidationContext {
            lookup: &no_env,
            default_id: "i-1",
        },
    )
}

fn check_with(config: &DrasiServerConfig, env: &BTreeMap<String, String>) -> Vec<ConfigIssue> {
    let lookup = |name: &str| env.get(name).cloned();
    validate_structure(
        config,
        &ValidationContext {
            lookup: &lookup,
            default_id: "i-1",
        },
    )
}

fn paths(issues: &[ConfigIssue]) -> Vec<&str> {
    issues.iter().map(|i| i.path.as_str()).collect()
}

#[test]
fn parses_a_drasi_server_file_with_plugin_properties() {
    let config = parse_yaml(PIPELINE).expect("valid file");
    assert_eq!(config.id, Some(ConfigValue::Static("demo".into())));
    assert_eq!(config.static_port(), Some(8181));
    assert_eq!(config.persist_config, Some(false));
    let source = &config.sources[0];
    assert_eq!(source.kind, "mock");
    assert!(source.auto_start, "sources start by default");
    assert_eq!(source.properties["intervalMs"], 200);
    assert_eq!(source.properties["dataType"]["sensorCount"], 3);
    assert_eq!(config.queries[0].query_language, QueryLanguage::Cypher);
    assert_eq!(config.reactions[0].queries, vec!["hot".to_string()]);
    assert!(check(&config).is_empty());
}

#[test]
fn applies_drasi_server_defaults() {
    let config = parse_yaml("queries:\n  - id: q\n    query: MATCH (n) RETURN n\n").unwrap();
    assert_eq!(config.static_host(), Some("0.0.0.0"));
    assert_eq!(config.static_port(), Some(8080));
    assert_eq!(config.log_level, ConfigValue::Static("info".into()));
    assert_eq!(config.persist_config, None);
    assert!(!config.persist_index);
    let q = &config.queries[0];
    assert!(
        !q.auto_start,
        "drasi-server queries do not auto-start by default"
    );
    assert_eq!(q.query_language, QueryLanguage::GQL);
    assert_eq!(q.bootstrap_buffer_size, 10_000);
}

#[test]
fn every_top_level_key_of_drasi_server_is_accepted() {
    let text = r#"
apiVersion: drasi.io/v1
id: "${SERVER_ID:-everything}"
host: "${SERVER_HOST:-0.0.0.0}"
port: "${SERVER_PORT:-8080}"
logLevel: "${LOG_LEVEL:-info}"
persistConfig: true
persistIndex: true
enableArchive: true
enableUi: false
solutionsDir: ./solutions
stateStore: {kind: redb, path: "${STATE:-./data/state.redb}"}
secretStore: {kind: file, path: ./secrets.json}
defaultPriorityQueueCapacity: "${PQ:-15000}"
defaultDispatchBufferCapacity: 2000
pluginRegistry: ghcr.io/drasi-project
autoInstallPlugins: true
plugins: [{ref: source/mock}, {ref: "reaction/log:0.2.9"}]
verifyPlugins: false
trustedIdentities: [{issuer: "https://token.actions.githubusercontent.com", subjectPattern: "https://github.com/drasi-project/*"}]
hotReloadPlugins: false
hotReloadDebounceMs: 2000
corsAllowedOrigins: ["http://localhost:3000"]
identityProviders: [{kind: password, id: pw, username: u, password: "${PW:-p}"}]
bootstrapProviders: [{kind: scriptfile, id: seed, filePaths: [./seed.jsonl]}]
sources:
  - {kind: mock, id: s, bootstrapProvider: seed, identityProvider: pw}
queries:
  - {id: q, autoStart: true, query: "MATCH (n) RETURN n", sources: [{sourceId: s}]}
reactions:
  - {kind: log, id: l, queries: [q], identityProvider: pw}
"#;
    let config = parse_yaml(text).expect("every key parses");
    assert!(check(&config).is_empty(), "{:#?}", check(&config));
    // Written back, it says the same thing, references included.
    let again = parse_yaml(&render_yaml(&config).unwrap()).unwrap();
    assert_eq!(again, config);
    assert!(render_yaml(&config)
        .unwrap()
        .contains("${SERVER_PORT:-8080}"));
}

#[test]
fn several_lib_instances_are_read_and_checked_apart() {
    let text = r#"
instances:
  - id: analytics
    persistIndex: true
    stateStore: {kind: redb, path: ./data/analytics.redb}
    sources: [{kind: mock, id: s}]
    queries: [{id: q, autoStart: true, query: "MATCH (n) RETURN n", sources: [{sourceId: s}]}]
    reactions: [{kind: log, id: l, queries: [q]}]
  - sources: [{kind: mock, id: s}]
  - id: analytics
"#;
    let config = parse_yaml(text).unwrap();
    let libs = config.lib_instances();
    assert_eq!(libs.len(), 3);
    assert_eq!(libs[1].pointer(), "/instances/1");
    // The same component id in two lib instances is fine; the same lib id
    // twice is not.
    assert_eq!(paths(&check(&config)), vec!["/instances/2/id"]);
    let server = config.for_server("i-9");
    assert_eq!(
        server.instances[1].id,
        Some(ConfigValue::Static("i-9-1".into()))
    );
    assert_eq!(server.persist_config, Some(false));
    assert_eq!(
        server.id, None,
        "a multi-instance file keeps no top-level id"
    );
}

#[test]
fn unknown_top_level_key_is_named_with_its_position() {
    let err = parse_yaml("id: x\npersist_index: true\n").unwrap_err();
    assert!(err.message.contains("persist_index"), "{}", err.message);
    assert_eq!(err.line, Some(2));
    let err = parse_yaml("instances:\n  - id: a\n    host: x\n").unwrap_err();
    assert!(err.message.contains("host"), "{}", err.message);
}

#[test]
fn unknown_query_key_is_named_with_its_position() {
    let text = "queries:\n  - id: q\n    query: MATCH (n) RETURN n\n    langage: Cypher\n";
    let err = parse_yaml(text).unwrap_err();
    assert!(err.message.contains("langage"), "{}", err.message);
    assert_eq!(err.line, Some(4));
}

#[test]
fn plain_fields_refuse_references_as_drasi_server_does() {
    let err = parse_yaml("persistIndex: \"${PERSIST:-true}\"\n").unwrap_err();
    assert!(err.message.contains("boolean"), "{}", err.message);
}

#[test]
fn rendering_round_trips_and_writes_defaults_explicitly() {
    let config = parse_yaml(PIPELINE).unwrap();
    let yaml = render_yaml(&config.for_server("i-1")).unwrap();
    for needle in [
        "persistConfig: false",
        "autoStart: true",
        "queryLanguage: Cypher",
        "id: demo",
    ] {
        assert!(yaml.contains(needle), "missing {needle} in\n{yaml}");
    }
    assert_eq!(parse_yaml(&yaml).unwrap(), config.for_server("i-1"));
    // Without an id of its own, the server gets the instance's.
    let anonymous = parse_yaml("sources: []\n").unwrap().for_server("i-7");
    assert_eq!(anonymous.id, Some(ConfigValue::Static("i-7".into())));
}

#[test]
fn rendering_quotes_strings_that_look_like_other_types() {
    let mut config = DrasiServerConfig::default();
    config.sources.push(SourceConfig {
        kind: "http".into(),
        id: "true".into(),
        auto_start: true,
        bootstrap_provider: None,
        identity_provider: None,
        properties: serde_json::json!({"endpoint": "null", "host": "0.0.0.0", "port": 9000, "note": "a: b # c"})
            .as_object()
            .cloned()
            .unwrap(),
    });
    let back = parse_yaml(&render_yaml(&config).unwrap()).unwrap();
    assert_eq!(back, config);
}

#[test]
fn validation_reports_dangling_references_and_duplicates() {
    let text = r#"
port: 0
logLevel: loud
sources:
  - {kind: mock, id: a}
  - {kind: mock, id: a, auto_start: false}
queries:
  - {id: q, query: "MATCH (n) RETURN n", sources: [{sourceId: nope}]}
reactions:
  - {kind: log, id: r, queries: [missing]}
"#;
    let config = parse_yaml(text).unwrap();
    let issues = check(&config);
    assert_eq!(
        paths(&issues),
        vec![
            "/port",
            "/logLevel",
            "/sources/1/id",
            "/sources/1/auto_start",
            "/queries/0/sources/0/sourceId",
            "/reactions/0/queries/0",
        ],
        "{issues:#?}"
    );
    assert!(issues[3].message.contains("did you mean `autoStart`"));
    assert!(issues[4].message.contains("'nope'"));
}

#[test]
fn a_reaction_on_a_query_that_never_starts_is_refused_naming_both() {
    let config = parse_yaml(
        r#"
sources: [{kind: mock, id: s}]
queries: [{id: q, query: "MATCH (n) RETURN n", sources: [{sourceId: s}]}]
reactions: [{kind: log, id: r, queries: [q]}]
"#,
    )
    .unwrap();
    let issues = check(&config);
    assert_eq!(paths(&issues), vec!["/reactions/0/queries/0"]);
    assert!(issues[0].message.contains("reaction 'r'"), "{issues:?}");
    assert!(issues[0].message.contains("query 'q'"), "{issues:?}");
    // A reaction that does not start with the server is fine.
    let mut manual = config.clone();
    manual.reactions[0].auto_start = false;
    assert!(check(&manual).is_empty());
}

#[test]
fn references_resolve_in_the_instances_environment() {
    let config = parse_yaml(
        r#"
port: "${API_PORT}"
logLevel: "${LOG:-info}"
defaultPriorityQueueCapacity: "${PQ:-lots}"
sources:
  - kind: postgres
    id: db
    host: "${DB_HOST:-localhost}"
    database: "${DB_NAME}"
    user: {kind: EnvironmentVariable, name: DB_USER}
    password: {kind: Secret, name: pw}
"#,
    )
    .unwrap();
    let issues = check(&config);
    assert_eq!(
        paths(&issues),
        vec![
            "/port",
            "/defaultPriorityQueueCapacity",
            "/sources/0/database",
            "/sources/0/password",
            "/sources/0/user",
        ],
        "{issues:#?}"
    );
    assert!(
        issues[0].message.contains("'API_PORT' is not set"),
        "{issues:?}"
    );
    assert!(issues[1].message.contains("'lots'"), "{issues:?}");
    assert!(issues[3].message.contains("secretStore"), "{issues:?}");
    let env: BTreeMap<String, String> = [("API_PORT", "x"), ("DB_NAME", "d"), ("DB_USER", "u")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let issues = check_with(&config, &env);
    assert_eq!(
        paths(&issues),
        vec![
            "/port",
            "/defaultPriorityQueueCapacity",
            "/sources/0/password"
        ]
    );
    assert!(
        issues[0].message.contains("gives 'x', which is not a port"),
        "{issues:?}"
    );
}

#[test]
fn shared_and_inline_bootstrap_providers_are_resolved() {
    let config = parse_yaml(
        r#"
bootstrapProviders: [{kind: postgres, id: pg, database: other}]
sources:
  - {kind: postgres, id: a, database: d, user: u, bootstrapProvider: {kind: postgres}}
  - {kind: postgres, id: b, database: d, user: u, bootstrapProvider: pg}
  - {kind: http, id: c, host: 0.0.0.0, port: 9000, bootstrapProvider: nope}
"#,
    )
    .unwrap();
    let lib = config.lib_instances()[0];
    let (kind, inherited) = lib.bootstrap_of(&config.sources[0]).unwrap().unwrap();
    assert_eq!(
        (kind.as_str(), inherited["database"].as_str()),
        ("postgres", Some("d"))
    );
    let (_, shared) = lib.bootstrap_of(&config.sources[1]).unwrap().unwrap();
    assert_eq!(shared["database"], "other");
    assert!(
        shared.get("user").is_none(),
        "a shared provider is taken as written: {shared:?}"
    );
    assert_eq!(paths(&check(&config)), vec!["/sources/2/bootstrapProvider"]);
}

#[test]
fn state_store_paths_stay_inside_the_servers_directory() {
    for (path, ok) in [
        ("./data/state.redb", true),
        ("state.redb", true),
        ("/var/lib/state.redb", false),
        ("../state.redb", false),
        ("./data/../../x.redb", false),
    ] {
        let config =
            parse_yaml(&format!("stateStore: {{kind: redb, path: \"{path}\"}}\n")).unwrap();
        assert_eq!(
            check(&config).is_empty(),
            ok,
            "{path}: {:?}",
            check(&config)
        );
    }
    let config = parse_yaml("stateStore: {kind: sqlite, path: x.db}\n").unwrap();
    assert!(check(&config)[0].message.contains("the only kind is redb"));
}

#[test]
fn validation_rejects_path_like_component_ids_and_bad_hosts() {
    let mut config = parse_yaml("sources:\n  - {kind: mock, id: ../etc}\n").unwrap();
    config.host = Some(ConfigValue::Static("bad host".into()));
    let issues = check(&config);
    assert_eq!(
        paths(&issues),
        vec!["/host", "/sources/0/id"],
        "{issues:#?}"
    );
}

#[test]
fn a_port_used_twice_in_one_config_is_an_issue() {
    let config =
        parse_yaml("port: 9000\nsources:\n  - {kind: http, id: in, host: 127.0.0.1, port: 9000}\n")
            .unwrap();
    let issues = check(&config);
    assert_eq!(paths(&issues), vec!["/sources/0/port"], "{issues:#?}");
    assert!(issues[0].message.contains("also used by server"));
    // The sse reaction's default collides with the API's default.
    let config = parse_yaml(
        "sources: [{kind: mock, id: s}]\nqueries: [{id: q, autoStart: true, query: \"MATCH (n) RETURN n\", sources: [{sourceId: s}]}]\nreactions: [{kind: sse, id: out, queries: [q]}]\n",
    )
    .unwrap();
    let issues = check(&config);
    assert_eq!(paths(&issues), vec!["/reactions/0"]);
    assert!(
        issues[0].message.contains("the plugin's default"),
        "{issues:?}"
    );
}

#[test]
fn parse_errors_are_one_line() {
    let err = parse_yaml("id: x\nbogus: 1\n").unwrap_err();
    assert!(!err.message.contains('\n'), "{}", err.message);
    assert!(
        err.message
            .starts_with("line 2: unknown field `bogus` at /bogus"),
        "{}",
        err.message
    );
}
