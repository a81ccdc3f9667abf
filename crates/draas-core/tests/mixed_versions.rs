//! A rolling upgrade: records and messages written by a newer version (with
//! fields this one does not know) and by an older one (without the newest
//! optional fields) are read; the same documents sent by a user to the API
//! are held to the schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use draas_core::config::parse_yaml;
use draas_core::instance::{
    DesiredState, Instance, InstanceId, InstanceStatus, PlatformType, ServerConfiguration,
};
use draas_core::messages::{Command, CommandEnvelope, StartSpec};
use serde_json::{json, Value};

fn instance() -> Instance {
    let now = Utc::now();
    let configuration = parse_yaml(
        "id: x\nport: 20000\nsources:\n- kind: mock\n  id: s\n  dataType: {type: counter}\nqueries:\n- id: q\n  autoStart: true\n  query: MATCH (c:Counter) RETURN c.value AS v\n  sources: [{sourceId: s}]\n",
    )
    .unwrap();
    Instance {
        id: InstanceId::generate(),
        name: "n".into(),
        description: "d".into(),
        platform_type: PlatformType::Process,
        created_at: now,
        updated_at: now,
        desired_state: DesiredState::Running,
        generation: 3,
        server_configuration: ServerConfiguration::for_platform(PlatformType::Process),
        configuration,
        restart_policy: Default::default(),
        update_strategy: Default::default(),
        status: InstanceStatus::created(now),
        runtime: None,
        deleted_at: None,
    }
}

/// `value` with a field named `newerField` added at each of `pointers`.
fn with_newer_fields(mut value: Value, pointers: &[&str]) -> Value {
    for pointer in pointers {
        let target = value
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer}"));
        target
            .as_object_mut()
            .unwrap_or_else(|| panic!("{pointer} is not an object"))
            .insert("newerField".into(), json!({"anything": [1, 2]}));
    }
    value
}

const INSTANCE_POINTERS: [&str; 8] = [
    "",
    "/serverConfiguration",
    "/serverConfiguration/process",
    "/restartPolicy",
    "/status",
    "/configuration",
    "/configuration/queries/0",
    "/configuration/queries/0/sources/0",
];

#[test]
fn an_instance_record_written_by_a_newer_version_is_read_and_refused_from_a_user() {
    let original = instance();
    let mut written = serde_json::to_value(&original).unwrap();
    written["serverConfiguration"]["process"] = json!({});
    let written = with_newer_fields(written, &INSTANCE_POINTERS);
    let read: Instance = serde_json::from_value(written.clone()).unwrap();
    assert_eq!(read.configuration, original.configuration);
    assert_eq!(read.generation, 3);
    assert_eq!(read.status, original.status);
    // The same configuration, sent by a user, names the unknown key.
    let err = draas_core::strict::from_value::<draas_core::config::DrasiServerConfig>(
        written["configuration"].clone(),
    )
    .unwrap_err();
    assert_eq!(err.path, "/newerField");
}

#[test]
fn an_instance_record_written_without_the_newest_optional_fields_is_read() {
    let original = instance();
    let mut written = serde_json::to_value(&original).unwrap();
    let record = written.as_object_mut().unwrap();
    for optional in ["description", "restartPolicy", "updateStrategy", "runtime"] {
        record.remove(optional);
    }
    for optional in ["reason", "message", "nextRetryAt", "lastFailure"] {
        record["status"].as_object_mut().unwrap().remove(optional);
    }
    let server = record["serverConfiguration"].as_object_mut().unwrap();
    for optional in [
        "environment",
        "shutdownTimeoutSeconds",
        "startTimeoutSeconds",
        "process",
    ] {
        server.remove(optional);
    }
    let read: Instance = serde_json::from_value(written).unwrap();
    assert_eq!(read.description, "");
    assert_eq!(read.restart_policy, Default::default());
    assert_eq!(
        read.server_configuration.start_timeout_seconds,
        draas_core::instance::DEFAULT_START_TIMEOUT_SECONDS
    );
}

#[test]
fn a_start_command_sent_by_a_newer_control_plane_is_read() {
    let original = instance();
    let spec = StartSpec::render(
        original.id.as_str(),
        &original.name,
        original.generation,
        &original.configuration,
        original.server_configuration.clone(),
    )
    .unwrap();
    let envelope = CommandEnvelope::new(
        original.id.clone(),
        Command::Start(spec.clone()),
        std::time::Duration::from_secs(30),
    );
    let wire = serde_json::to_value(&envelope).unwrap();
    let wire = with_newer_fields(wire, &["", "/command", "/command/serverConfiguration"]);
    let read: CommandEnvelope = serde_json::from_value(wire).unwrap();
    assert_eq!(read.id, envelope.id);
    assert_eq!(read.command, Command::Start(spec));
    // The YAML rendered for the server by a newer version, with a key this
    // version does not know, is still read where a worker reads it.
    let rendered = "id: x\nnewerField: 1\nsources: []\n";
    assert!(
        draas_core::config::parse_yaml_as::<draas_core::config::DrasiServerConfig>(rendered)
            .is_ok()
    );
    assert!(
        parse_yaml(rendered).is_err(),
        "a user's file is held to the schema"
    );
}
