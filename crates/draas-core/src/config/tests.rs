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

#[test]
fn parses_a_drasi_server_file_with_plugin_properties() {
    let config = parse_yaml(PIPELINE).expect("valid file");
    assert_eq!(config.id.as_deref(), Some("demo"));
    assert_eq!(config.port, 8181);
    assert!(!config.persist_config);
    let source = &config.sources[0];
    assert_eq!(source.kind, "mock");
    assert!(source.auto_start, "sources start by default");
    assert_eq!(source.properties["intervalMs"], 200);
    assert_eq!(source.properties["dataType"]["sensorCount"], 3);
    assert_eq!(config.queries[0].query_language, QueryLanguage::Cypher);
    assert_eq!(config.reactions[0].queries, vec!["hot".to_string()]);
    assert!(validate_structure(&config).is_empty());
}

#[test]
fn applies_drasi_server_defaults() {
    let config = parse_yaml("queries:\n  - id: q\n    query: MATCH (n) RETURN n\n").unwrap();
    assert_eq!(config.host, "0.0.0.0");
    assert_eq!(config.port, 8080);
    assert_eq!(config.log_level, "info");
    assert!(config.persist_config);
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
fn unknown_top_level_key_is_named_with_its_position() {
    let err = parse_yaml("id: x\npersist_index: true\n").unwrap_err();
    assert!(err.message.contains("persist_index"), "{}", err.message);
    assert_eq!(err.line, Some(2));
}

#[test]
fn unknown_query_key_is_named_with_its_position() {
    let text = "queries:\n  - id: q\n    query: MATCH (n) RETURN n\n    langage: Cypher\n";
    let err = parse_yaml(text).unwrap_err();
    assert!(err.message.contains("langage"), "{}", err.message);
    assert_eq!(err.line, Some(4));
}

#[test]
fn plugin_management_keys_are_accepted_and_reported() {
    let config = parse_yaml("verifyPlugins: false\nplugins: [{ref: source/mock}]\n").unwrap();
    assert_eq!(config.ignored_keys(), vec!["plugins", "verifyPlugins"]);
    let yaml = render_yaml(&config).unwrap();
    assert!(!yaml.contains("verifyPlugins"), "{yaml}");
}

#[test]
fn rendering_round_trips_and_writes_defaults_explicitly() {
    let mut config = parse_yaml(PIPELINE).unwrap();
    config.persist_config = false;
    let yaml = render_yaml(&config).unwrap();
    for needle in [
        "persistConfig: false",
        "autoStart: true",
        "queryLanguage: Cypher",
        "id: demo",
    ] {
        assert!(yaml.contains(needle), "missing {needle} in\n{yaml}");
    }
    assert_eq!(parse_yaml(&yaml).unwrap(), config);
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
    let issues = validate_structure(&config);
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(
        paths,
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
fn validation_rejects_path_like_component_ids_and_bad_hosts() {
    let mut config = parse_yaml("sources:\n  - {kind: mock, id: ../etc}\n").unwrap();
    config.host = "bad host".into();
    let issues = validate_structure(&config);
    assert_eq!(issues.len(), 2, "{issues:#?}");
    assert_eq!(issues[0].path, "/host");
    assert_eq!(issues[1].path, "/sources/0/id");
}

#[test]
fn listening_ports_include_plugin_ports_and_the_sse_default() {
    let text = r#"
port: 9100
sources:
  - {kind: http, id: in, host: 127.0.0.1, port: 9101}
reactions:
  - {kind: sse, id: out, queries: []}
"#;
    let config = parse_yaml(text).unwrap();
    let ports: Vec<u16> = config.listening_ports().iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![9100, 9101, 8080]);
}

#[test]
fn a_port_used_twice_in_one_config_is_an_issue() {
    let config =
        parse_yaml("port: 9000\nsources:\n  - {kind: http, id: in, host: 127.0.0.1, port: 9000}\n")
            .unwrap();
    let issues = validate_structure(&config);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].path, "/sources/0/port");
    assert!(issues[0].message.contains("also used by server"));
}

#[test]
fn parse_errors_are_one_line() {
    let err = parse_yaml("id: x\nbogus: 1\n").unwrap_err();
    assert!(!err.message.contains('\n'), "{}", err.message);
    assert!(
        err.message
            .starts_with("line 2 column 1: unknown field `bogus`"),
        "{}",
        err.message
    );
}
