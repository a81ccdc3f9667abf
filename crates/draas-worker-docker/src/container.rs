//! What a container for an instance looks like: pure builders, no I/O.
//!
//! - name `draas-<instance name>-<end of its id>` (unique per engine, and
//!   a human can tell whose it is);
//! - labels `draas.managed=true`, `draas.instanceId`, `draas.generation`,
//!   `draas.installation` (which DRaaS owns it, when engines are shared);
//! - the configuration through the Engine API, never a path shared with the
//!   control plane: in the environment ([`CONFIG_VARIABLE`]) for the bundled
//!   runtime's image (it reads `--config-env`), else uploaded to
//!   [`CONFIG_PATH`] before start;
//! - every port the configuration listens on published on a free port of
//!   the engine's host (the engine picks it: no two containers collide);
//! - a named volume (`draas-<id>-data`) for Drasi's `./data`;
//! - stop signal SIGINT with the instance's grace period; no restart policy
//!   (restarts are DRaaS's decision).

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use draas_core::instance::InstanceId;
use draas_core::messages::StartSpec;

/// Label marking every container and volume DRaaS creates.
pub const MANAGED: &str = "draas.managed";
/// Label naming the instance.
pub const INSTANCE: &str = "draas.instanceId";
/// Label naming the configuration generation a container runs.
pub const GENERATION: &str = "draas.generation";
/// Label naming the DRaaS installation that owns it.
pub const INSTALLATION: &str = "draas.installation";
/// Label naming the container port of the server's API.
pub const API_PORT: &str = "draas.apiPort";
/// Label naming what a warm container for this container's next launch
/// is made for (see `warm::key`), when one is made.
pub const WARM_KEY: &str = "draas.warmKey";
/// Where the configuration is in the container, when it is a file.
pub const CONFIG_PATH: &str = "/etc/drasi/server.yaml";
/// The environment variable holding the configuration, for the bundled
/// runtime.
pub const CONFIG_VARIABLE: &str = "DRAAS_RUNTIME_CONFIG";
/// Largest configuration passed in the environment (Linux limits one
/// environment string to 128 KiB); larger ones are uploaded as a file.
pub const MAX_CONFIG_IN_ENV: usize = 64 * 1024;

/// A container's name: `draas-<name>-<last 8 of the id>-<launch>`. Each
/// launch gets a container of its own name, so a restart never waits for
/// the engine to finish with the container before it (its removal follows
/// in the background).
pub fn container_name(name: &str, id: &InstanceId, launch: &str) -> String {
    let id = id.as_str();
    format!(
        "draas-{name}-{}-{launch}",
        &id[id.len().saturating_sub(8)..]
    )
}

/// The instance name in the container name `name` of instance `id` (see
/// [`container_name`]).
pub fn instance_name_of<'a>(name: &'a str, id: &InstanceId) -> Option<&'a str> {
    let id = id.as_str();
    let end = format!("-{}", &id[id.len().saturating_sub(8)..]);
    let rest = name.trim_start_matches('/').strip_prefix("draas-")?;
    let (rest, launch) = rest.rsplit_once('-')?;
    (launch.len() == 6).then_some(())?;
    rest.strip_suffix(end.as_str()).filter(|n| !n.is_empty())
}

/// A new launch's part of a container name: six random hex digits.
pub fn new_launch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_string()
}

/// The volume of an instance's `./data`.
pub fn volume_name(id: &InstanceId) -> String {
    format!("draas-{id}-data")
}

/// The labels of an instance's container and volume.
pub fn labels(
    id: &InstanceId,
    generation: Option<u64>,
    installation: &str,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (MANAGED.to_string(), "true".to_string()),
        (INSTANCE.to_string(), id.to_string()),
        (INSTALLATION.to_string(), installation.to_string()),
    ]);
    if let Some(generation) = generation {
        labels.insert(GENERATION.to_string(), generation.to_string());
    }
    labels
}

/// The label filter selecting this installation's objects (of one
/// instance, when given).
pub fn label_filter(installation: &str, id: Option<&InstanceId>) -> HashMap<String, Vec<String>> {
    let mut wanted = vec![
        format!("{MANAGED}=true"),
        format!("{INSTALLATION}={installation}"),
    ];
    if let Some(id) = id {
        wanted.push(format!("{INSTANCE}={id}"));
    }
    HashMap::from([("label".to_string(), wanted)])
}

/// What a container is made from.
pub struct Plan<'a> {
    /// The instance.
    pub id: &'a InstanceId,
    /// What to run.
    pub spec: &'a StartSpec,
    /// The image.
    pub image: &'a str,
    /// The image's working directory (Drasi's `./data` goes under it).
    pub workdir: &'a str,
    /// The installation owning it.
    pub installation: &'a str,
    /// The host address ports are published on.
    pub publish_address: &'a str,
    /// Whether the image reads its configuration from the environment (the
    /// bundled runtime); otherwise it is uploaded to [`CONFIG_PATH`].
    pub config_in_env: bool,
}

/// `port/tcp`.
pub fn port_key(port: u16) -> String {
    format!("{port}/tcp")
}

/// The container's definition.
pub fn create_body(plan: &Plan<'_>) -> ContainerCreateBody {
    let spec = plan.spec;
    let mut ports: Vec<u16> = spec.listening_ports.clone();
    if !ports.contains(&spec.api_port) {
        ports.push(spec.api_port);
    }
    ports.sort_unstable();
    ports.dedup();
    let bindings = ports
        .iter()
        .map(|port| {
            (
                port_key(*port),
                Some(vec![PortBinding {
                    host_ip: Some(plan.publish_address.to_string()),
                    host_port: Some("0".to_string()),
                }]),
            )
        })
        .collect();
    let mut env: Vec<String> = spec
        .server_configuration
        .environment
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    env.push("NO_COLOR=1".to_string());
    let cmd = if plan.config_in_env {
        env.push(format!("{CONFIG_VARIABLE}={}", spec.configuration_yaml));
        vec!["--config-env".to_string(), CONFIG_VARIABLE.to_string()]
    } else {
        vec!["--config".to_string(), CONFIG_PATH.to_string()]
    };
    let data = format!("{}/data", plan.workdir.trim_end_matches('/'));
    ContainerCreateBody {
        image: Some(plan.image.to_string()),
        cmd: Some(cmd),
        env: Some(env),
        labels: Some({
            let mut labels = labels(plan.id, Some(spec.generation), plan.installation);
            labels.insert(API_PORT.to_string(), spec.api_port.to_string());
            labels
        }),
        exposed_ports: Some(ports.iter().map(|p| port_key(*p)).collect()),
        stop_signal: Some("SIGINT".to_string()),
        stop_timeout: Some(i64::from(
            spec.server_configuration.shutdown_timeout_seconds,
        )),
        host_config: Some(HostConfig {
            port_bindings: Some(bindings),
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume_name(plan.id)),
                target: Some(data),
                read_only: Some(false),
                ..Default::default()
            }]),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A tar archive holding the configuration at [`CONFIG_PATH`] (readable by
/// the server only), to upload before start.
pub fn config_archive(yaml: &str) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(yaml.len() as u64);
    header.set_mode(0o400);
    header.set_mtime(0);
    header.set_cksum();
    archive.append_data(
        &mut header,
        CONFIG_PATH.trim_start_matches('/'),
        yaml.as_bytes(),
    )?;
    archive.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_name_is_read_back_from_a_container_name() {
        let id = InstanceId::generate();
        let name = container_name("my-app-2", &id, &new_launch());
        assert_eq!(instance_name_of(&name, &id), Some("my-app-2"));
        assert_eq!(instance_name_of(&format!("/{name}"), &id), Some("my-app-2"));
        assert_eq!(instance_name_of("draas-x-12345678-abcdef", &id), None);
        assert_eq!(instance_name_of("other", &id), None);
    }
    use draas_core::instance::{PlatformType, ServerConfiguration};
    use std::io::Read;

    fn spec() -> StartSpec {
        let mut server_configuration = ServerConfiguration::for_platform(PlatformType::Docker);
        server_configuration.shutdown_timeout_seconds = 7;
        server_configuration
            .environment
            .insert("PG_PASSWORD".into(), "s3cret".into());
        StartSpec {
            name: "orders".into(),
            generation: 4,
            configuration_yaml: "id: x\n".into(),
            api_host: "0.0.0.0".into(),
            api_port: 8080,
            listening_ports: vec![9000, 8080],
            server_configuration,
        }
    }

    #[test]
    fn the_container_publishes_every_port_stops_with_sigint_and_never_restarts_itself() {
        let id: InstanceId = "i-0123456789abcdef0123456789abcdef".parse().unwrap();
        let spec = spec();
        let body = create_body(&Plan {
            id: &id,
            spec: &spec,
            image: "draas-runtime:latest",
            workdir: "/var/lib/drasi/",
            installation: "inst-1",
            publish_address: "127.0.0.1",
            config_in_env: false,
        });
        assert_eq!(body.image.as_deref(), Some("draas-runtime:latest"));
        assert_eq!(
            body.cmd,
            Some(vec!["--config".into(), "/etc/drasi/server.yaml".into()])
        );
        assert_eq!(body.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(body.stop_timeout, Some(7));
        let labels = body.labels.unwrap();
        assert_eq!(labels["draas.managed"], "true");
        assert_eq!(labels["draas.instanceId"], id.as_str());
        assert_eq!(labels["draas.generation"], "4");
        assert_eq!(labels["draas.installation"], "inst-1");
        assert_eq!(
            body.exposed_ports,
            Some(vec!["8080/tcp".into(), "9000/tcp".into()])
        );
        let env = body.env.unwrap();
        assert!(env.contains(&"PG_PASSWORD=s3cret".to_string()));
        let host = body.host_config.unwrap();
        let bindings = host.port_bindings.unwrap();
        for port in ["8080/tcp", "9000/tcp"] {
            let binding = &bindings[port].as_ref().unwrap()[0];
            assert_eq!(
                binding.host_port.as_deref(),
                Some("0"),
                "the engine picks a free port"
            );
            assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        }
        assert_eq!(
            host.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::NO)
        );
        let mount = &host.mounts.unwrap()[0];
        assert_eq!(
            mount.source.as_deref(),
            Some("draas-i-0123456789abcdef0123456789abcdef-data")
        );
        assert_eq!(mount.target.as_deref(), Some("/var/lib/drasi/data"));
    }

    #[test]
    fn the_bundled_runtime_gets_its_configuration_in_the_environment() {
        let id: InstanceId = "i-0123456789abcdef0123456789abcdef".parse().unwrap();
        let spec = spec();
        let body = create_body(&Plan {
            id: &id,
            spec: &spec,
            image: "draas-runtime:latest",
            workdir: "/var/lib/drasi",
            installation: "inst-1",
            publish_address: "127.0.0.1",
            config_in_env: true,
        });
        assert_eq!(
            body.cmd,
            Some(vec!["--config-env".into(), "DRAAS_RUNTIME_CONFIG".into()])
        );
        assert!(body
            .env
            .unwrap()
            .contains(&"DRAAS_RUNTIME_CONFIG=id: x\n".to_string()));
    }

    #[test]
    fn names_labels_and_the_configuration_archive() {
        let id: InstanceId = "i-0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(
            container_name("orders", &id, "0a1b2c"),
            "draas-orders-89abcdef-0a1b2c"
        );
        let (one, other) = (new_launch(), new_launch());
        assert_eq!(one.len(), 6);
        assert!(one.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(one, other, "each launch is named apart");
        let filter = label_filter("inst-1", Some(&id));
        assert_eq!(
            filter["label"],
            vec![
                "draas.managed=true".to_string(),
                "draas.installation=inst-1".to_string(),
                format!("draas.instanceId={id}")
            ]
        );
        assert!(!labels(&id, None, "inst-1").contains_key("draas.generation"));

        let archive = config_archive("id: x\nport: 8080\n").unwrap();
        let mut reader = tar::Archive::new(archive.as_slice());
        let mut entries = reader.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(
            entry.path().unwrap().to_str(),
            Some("etc/drasi/server.yaml")
        );
        assert_eq!(entry.header().mode().unwrap(), 0o400);
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        assert_eq!(text, "id: x\nport: 8080\n");
        assert!(entries.next().is_none());
    }
}
