//! What an instance is made of on Kubernetes: pure builders, no I/O.
//!
//! Per instance, in its namespace, all named `draas-<name>-<end of id>`:
//!
//! - a **ConfigMap** (`…-config`) holding the rendered drasi-server YAML,
//!   mounted read-only at [`CONFIG_DIR`];
//! - a **Secret** (`…-env`) with the instance's environment variables,
//!   when it has any (`envFrom`: values never appear in a pod spec);
//! - a **Deployment**: one replica (zero when stopped), `Recreate` (two
//!   servers of one instance never run at once), the instance's image, a
//!   readiness probe on `/health`, a grace period of the instance's
//!   shutdown timeout, a hardened security context, and the namespace,
//!   resources and node selector of its options;
//! - a **Service** (ClusterIP) with every port the configuration listens
//!   on, each with `protocol: TCP` (server-side apply on older API servers
//!   rejects ports without it).
//!
//! All carry `app.kubernetes.io/managed-by=draas`, `draas.io/instance-id`
//! and `draas.io/installation` (which DRaaS owns them, when clusters are
//! shared), and a [`SPEC_HASH`] annotation: the fingerprint of what was
//! applied, so that an unchanged object is not applied again. The
//! ConfigMap, Secret and Service are owned by the Deployment: deleting it
//! deletes them.

use std::collections::BTreeMap;

use draas_core::instance::{ImagePullPolicy, InstanceId, KubernetesOptions};
use draas_core::messages::StartSpec;
use hmac::{Hmac, Mac};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, ExecAction, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value on everything DRaaS creates.
pub const MANAGER: &str = "draas";
/// The label naming the instance by id.
pub const INSTANCE_ID: &str = "draas.io/instance-id";
/// The label naming the DRaaS installation that owns an object.
pub const INSTALLATION: &str = "draas.io/installation";
/// `app.kubernetes.io/name`: what runs (always a Drasi server).
pub const APP_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the instance's name, for humans.
pub const APP_INSTANCE: &str = "app.kubernetes.io/instance";
/// The annotation holding the fingerprint of what was applied.
pub const SPEC_HASH: &str = "draas.io/spec-hash";
/// The pod template annotation naming the configuration generation.
pub const GENERATION: &str = "draas.io/generation";
/// The server's container.
pub const CONTAINER: &str = "drasi-server";
/// Where the configuration is mounted.
pub const CONFIG_DIR: &str = "/etc/drasi";
/// The configuration's file name in the ConfigMap and the mount.
pub const CONFIG_FILE: &str = "server.yaml";
/// The server's working directory (its `./data`), an `emptyDir`.
pub const WORK_DIR: &str = "/var/lib/drasi";
/// The name of the Service port of the server's API.
pub const API_PORT_NAME: &str = "api";
/// The user the server runs as (no root in the pod).
pub const RUN_AS: i64 = 65532;

/// The name of an instance's objects: `draas-<name>-<last 8 of the id>`,
/// at most 63 characters and starting with a letter (a Service name).
pub fn object_name(name: &str, id: &InstanceId) -> String {
    let id = id.as_str();
    let tail = &id[id.len().saturating_sub(8)..];
    let room = 63 - "draas-".len() - 1 - tail.len();
    let name = name[..name.len().min(room)].trim_end_matches('-');
    format!("draas-{name}-{tail}")
}

/// The ConfigMap's name.
pub fn config_map_name(base: &str) -> String {
    format!("{base}-config")
}

/// The Secret's name.
pub fn secret_name(base: &str) -> String {
    format!("{base}-env")
}

/// The label selector of this installation's objects.
pub fn installation_selector(installation: &str) -> String {
    format!("{MANAGED_BY}={MANAGER},{INSTALLATION}={installation}")
}

/// The label selector of one instance's objects.
pub fn instance_selector(installation: &str, id: &InstanceId) -> String {
    format!("{},{INSTANCE_ID}={id}", installation_selector(installation))
}

/// What an instance's objects are made from.
pub struct Plan<'a> {
    /// The instance.
    pub id: &'a InstanceId,
    /// What to run.
    pub spec: &'a StartSpec,
    /// Where.
    pub namespace: &'a str,
    /// The image.
    pub image: &'a str,
    /// Whether the image is the bundled runtime (which stops gracefully on
    /// SIGTERM too); other images get a `preStop` hook sending SIGINT, the
    /// only signal drasi-server stops on as PID 1.
    pub bundled: bool,
    /// When the node pulls the image.
    pub pull_policy: ImagePullPolicy,
    /// The installation owning them.
    pub installation: &'a str,
    /// The installation's secret key of fingerprints of secret values.
    pub fingerprint_key: &'a [u8],
}

/// An instance's objects, each with its [`SPEC_HASH`].
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    /// The configuration.
    pub config_map: ConfigMap,
    /// The environment, if any.
    pub secret: Option<Secret>,
    /// The server.
    pub deployment: Deployment,
    /// Its ports.
    pub service: Service,
}

pub use k8s_openapi::api::core::v1::Secret;

/// The labels of every object of the instance.
fn labels(plan: &Plan<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (APP_NAME.to_string(), "drasi-server".to_string()),
        (APP_INSTANCE.to_string(), plan.spec.name.clone()),
        (INSTANCE_ID.to_string(), plan.id.to_string()),
        (INSTALLATION.to_string(), plan.installation.to_string()),
    ])
}

/// The labels that select the instance's pods (immutable in a
/// Deployment, so never anything that can change).
fn selector_labels(plan: &Plan<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE_ID.to_string(), plan.id.to_string()),
        (INSTALLATION.to_string(), plan.installation.to_string()),
    ])
}

/// The owner reference to the instance's Deployment `name` (`uid`).
pub fn owned_by(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(plan: &Plan<'_>, name: String, owner: Option<&OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(plan.namespace.to_string()),
        labels: Some(labels(plan)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..ObjectMeta::default()
    }
}

/// The fingerprint of `value`: SHA-256 of its JSON, 32 hex digits. Maps
/// are ordered (BTreeMap), so equal objects have equal fingerprints.
pub fn fingerprint(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..16])
}

/// The fingerprint of a Secret's data: keyed with the installation's
/// fingerprint key, so that it says nothing about the values to whoever
/// can read the annotation.
pub fn secret_fingerprint(key: &[u8], value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return fingerprint(value);
    };
    mac.update(&json);
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn annotate(meta: &mut ObjectMeta, hash: String) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH.to_string(), hash);
}

/// The fingerprint an object was applied with, if any.
pub fn applied_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(SPEC_HASH)
        .map(String::as_str)
}

/// Every object of the instance. `owner` is the instance's Deployment
/// once it exists (the Deployment itself is never owned).
pub fn objects(plan: &Plan<'_>, owner: Option<&OwnerReference>) -> Objects {
    let base = object_name(&plan.spec.name, plan.id);
    let options = plan.spec.server_configuration.kubernetes();

    let mut config_map = ConfigMap {
        metadata: meta(plan, config_map_name(&base), owner),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            plan.spec.configuration_yaml.clone(),
        )])),
        ..ConfigMap::default()
    };
    let hash = fingerprint(&config_map);
    annotate(&mut config_map.metadata, hash);

    let environment = &plan.spec.server_configuration.environment;
    let secret = (!environment.is_empty()).then(|| {
        let mut secret = Secret {
            metadata: meta(plan, secret_name(&base), owner),
            type_: Some("Opaque".into()),
            data: Some(
                environment
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let hash = secret_fingerprint(plan.fingerprint_key, &secret);
        annotate(&mut secret.metadata, hash);
        secret
    });

    let mut deployment = deployment(plan, &base, &options, secret.is_some());
    let hash = fingerprint(&deployment);
    annotate(&mut deployment.metadata, hash);
    if let Some(spec) = deployment.spec.as_mut() {
        spec.replicas = Some(1);
    }

    let mut service = Service {
        metadata: meta(plan, base.clone(), owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(plan)),
            ports: Some(
                ports(plan.spec)
                    .into_iter()
                    .map(|(name, port)| ServicePort {
                        name: Some(name.clone()),
                        port: i32::from(port),
                        target_port: Some(IntOrString::String(name)),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let hash = fingerprint(&service);
    annotate(&mut service.metadata, hash);

    Objects {
        config_map,
        secret,
        deployment,
        service,
    }
}

/// Every port the server listens on, named: `api` for its API, `p-<port>`
/// for the others (a source's or reaction's), sorted by port.
pub fn ports(spec: &StartSpec) -> Vec<(String, u16)> {
    let mut others: Vec<u16> = spec
        .listening_ports
        .iter()
        .copied()
        .filter(|p| *p != spec.api_port)
        .collect();
    others.sort_unstable();
    others.dedup();
    let mut ports = vec![(API_PORT_NAME.to_string(), spec.api_port)];
    ports.extend(others.into_iter().map(|p| (format!("p-{p}"), p)));
    ports
}

/// The Deployment, without replicas: its fingerprint is of everything but
/// the replica count (a stop scales it to zero through the `scale`
/// subresource and leaves the rest as applied).
fn deployment(
    plan: &Plan<'_>,
    base: &str,
    options: &KubernetesOptions,
    has_secret: bool,
) -> Deployment {
    let spec = plan.spec;
    let shutdown = i64::from(spec.server_configuration.shutdown_timeout_seconds);
    let mut env_from = Vec::new();
    if has_secret {
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret_name(base),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        });
    }
    // drasi-server stops gracefully only on SIGINT, and as PID 1 ignores
    // the SIGTERM the kubelet sends: the hook sends SIGINT first.
    let lifecycle = (!plan.bundled).then(|| Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "kill -INT 1; sleep 2".into(),
                ]),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });
    let container = Container {
        name: CONTAINER.into(),
        image: Some(plan.image.to_string()),
        image_pull_policy: Some(plan.pull_policy.as_str().into()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        working_dir: Some(WORK_DIR.into()),
        env: Some(vec![EnvVar {
            name: "NO_COLOR".into(),
            value: Some("1".into()),
            ..EnvVar::default()
        }]),
        env_from: (!env_from.is_empty()).then_some(env_from),
        ports: Some(
            ports(spec)
                .into_iter()
                .map(|(name, port)| ContainerPort {
                    name: Some(name),
                    container_port: i32::from(port),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::String(API_PORT_NAME.into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        lifecycle,
        resources: options.resources.as_ref().map(|r| ResourceRequirements {
            requests: r.requests.as_ref().map(amounts),
            limits: r.limits.as_ref().map(amounts),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: WORK_DIR.into(),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let mut template_labels = labels(plan);
    template_labels.extend(selector_labels(plan));
    Deployment {
        metadata: meta(plan, base.to_string(), None),
        spec: Some(DeploymentSpec {
            replicas: None,
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector_labels(plan)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([(
                        GENERATION.to_string(),
                        spec.generation.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    termination_grace_period_seconds: Some(shutdown),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    node_selector: (!options.node_selector.is_empty())
                        .then(|| options.node_selector.clone()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: config_map_name(base),
                                items: Some(vec![KeyToPath {
                                    key: CONFIG_FILE.into(),
                                    path: CONFIG_FILE.into(),
                                    mode: None,
                                }]),
                                default_mode: Some(0o444),
                                optional: Some(false),
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "data".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn amounts(a: &draas_core::instance::ResourceAmounts) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    if let Some(cpu) = &a.cpu {
        out.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &a.memory {
        out.insert("memory".to_string(), Quantity(memory.clone()));
    }
    out
}
