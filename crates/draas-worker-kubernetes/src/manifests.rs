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
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
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
/// The server's working directory (its `./data`): an `emptyDir`, or the
/// instance's PersistentVolumeClaim when it asks for one.
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

/// The name of the pod's volume for the server's data: one name per kind of
/// volume, so that server-side apply replaces the one with the other when
/// an instance gets (or loses) a claim, rather than merging both sources
/// into one volume.
fn data_volume(options: &KubernetesOptions) -> &'static str {
    if options.persistent_volume.is_some() {
        "claimed-data"
    } else {
        "data"
    }
}

/// The name of an instance's PersistentVolumeClaim.
pub fn claim_name(base: &str) -> String {
    format!("{base}-data")
}

/// The name of an instance's Secret.
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
    /// Its data, when it asks for a PersistentVolumeClaim.
    pub volume_claim: Option<PersistentVolumeClaim>,
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

    let volume_claim = options.persistent_volume.as_ref().map(|volume| {
        let mut claim = PersistentVolumeClaim {
            metadata: meta(plan, claim_name(&base), owner),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: volume.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(volume.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        };
        let hash = fingerprint(&claim);
        annotate(&mut claim.metadata, hash);
        claim
    });

    Objects {
        config_map,
        secret,
        deployment,
        service,
        volume_claim,
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
                name: data_volume(options).into(),
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
                        match &options.persistent_volume {
                            Some(_) => Volume {
                                name: data_volume(options).into(),
                                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                    claim_name: claim_name(base),
                                    read_only: Some(false),
                                }),
                                ..Volume::default()
                            },
                            None => Volume {
                                name: "data".into(),
                                empty_dir: Some(EmptyDirVolumeSource::default()),
                                ..Volume::default()
                            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use draas_core::instance::{PlatformType, ResourceAmounts, Resources, ServerConfiguration};

    fn id() -> InstanceId {
        "i-0123456789abcdef0123456789abcdef".parse().unwrap()
    }

    fn spec() -> StartSpec {
        let mut server_configuration = ServerConfiguration::for_platform(PlatformType::Kubernetes);
        server_configuration.shutdown_timeout_seconds = 7;
        StartSpec {
            name: "orders".into(),
            generation: 4,
            configuration_yaml: "id: x\nport: 8080\n".into(),
            api_host: "0.0.0.0".into(),
            api_port: 8080,
            listening_ports: vec![9000, 8080],
            server_configuration,
        }
    }

    fn plan<'a>(id: &'a InstanceId, spec: &'a StartSpec, bundled: bool) -> Plan<'a> {
        Plan {
            id,
            spec,
            namespace: "team-a",
            image: "draas-runtime:1",
            bundled,
            pull_policy: ImagePullPolicy::IfNotPresent,
            installation: "inst-1",
            fingerprint_key: b"key",
        }
    }

    fn container(d: &Deployment) -> &Container {
        &d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn names_are_service_names_that_say_whose_they_are() {
        assert_eq!(object_name("orders", &id()), "draas-orders-89abcdef");
        let long = "a".repeat(63);
        let name = object_name(&long, &id());
        assert_eq!(name.len(), 63, "{name}");
        assert!(name.starts_with("draas-a") && name.ends_with("-89abcdef"));
        // A name cut at a '-' does not leave "--".
        let dashed = format!("{}-b", "a".repeat(47));
        assert!(!object_name(&dashed, &id()).contains("--"));
        assert_eq!(
            config_map_name("draas-orders-89abcdef"),
            "draas-orders-89abcdef-config"
        );
        assert_eq!(
            instance_selector("inst-1", &id()),
            "app.kubernetes.io/managed-by=draas,draas.io/installation=inst-1,\
             draas.io/instance-id=i-0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn every_object_is_labelled_named_and_placed_in_the_namespace() {
        let (id, mut spec) = (id(), spec());
        spec.server_configuration
            .environment
            .insert("PG_PASSWORD".into(), "s3cret".into());
        let o = objects(&plan(&id, &spec, true), None);
        let metas = [
            &o.config_map.metadata,
            &o.secret.as_ref().unwrap().metadata,
            &o.deployment.metadata,
            &o.service.metadata,
        ];
        for meta in metas {
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[MANAGED_BY], "draas");
            assert_eq!(labels[INSTANCE_ID], id.as_str());
            assert_eq!(labels[INSTALLATION], "inst-1");
            assert_eq!(labels[APP_INSTANCE], "orders");
            assert_eq!(meta.namespace.as_deref(), Some("team-a"));
            assert!(applied_hash(meta).is_some_and(|h| h.len() == 32));
        }
        assert_eq!(
            o.deployment.metadata.name.as_deref(),
            Some("draas-orders-89abcdef")
        );
        assert_eq!(
            o.service.metadata.name.as_deref(),
            Some("draas-orders-89abcdef")
        );
        assert_eq!(
            o.config_map.data.as_ref().unwrap()[CONFIG_FILE],
            "id: x\nport: 8080\n"
        );
    }

    #[test]
    fn the_deployment_runs_one_recreated_hardened_server_that_is_probed_and_stopped_gently() {
        let (id, spec) = (id(), spec());
        let o = objects(&plan(&id, &spec, true), None);
        let d = &o.deployment;
        let s = d.spec.as_ref().unwrap();
        assert_eq!(s.replicas, Some(1));
        assert_eq!(
            s.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let selector = s.selector.match_labels.as_ref().unwrap();
        assert_eq!(selector.len(), 2, "only what never changes selects pods");
        let template = s.template.metadata.as_ref().unwrap();
        for (k, v) in selector {
            assert_eq!(template.labels.as_ref().unwrap().get(k), Some(v));
        }
        assert_eq!(template.annotations.as_ref().unwrap()[GENERATION], "4");
        let pod = s.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(7));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert!(pod.node_selector.is_none());
        let c = container(d);
        assert_eq!(c.image.as_deref(), Some("draas-runtime:1"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.args.as_deref(),
            Some(&["--config".to_string(), "/etc/drasi/server.yaml".to_string()][..])
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/health"));
        assert_eq!(probe.port, IntOrString::String("api".into()));
        let ports: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap(),
                    p.container_port,
                    p.protocol.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                ("api".into(), 8080, "TCP".into()),
                ("p-9000".into(), 9000, "TCP".into())
            ]
        );
        let security = c.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.run_as_non_root, Some(true));
        assert!(
            c.lifecycle.is_none(),
            "the bundled runtime stops on SIGTERM too"
        );
        assert!(c.env_from.is_none(), "no environment, no Secret");
        assert!(o.secret.is_none());
        let mounts: Vec<_> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.mount_path.clone(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            vec![
                ("/etc/drasi".into(), Some(true)),
                ("/var/lib/drasi".into(), None)
            ]
        );
        assert_eq!(c.working_dir.as_deref(), Some(WORK_DIR));
    }

    #[test]
    fn other_images_get_sigint_before_sigterm() {
        let (id, spec) = (id(), spec());
        let o = objects(&plan(&id, &spec, false), None);
        let hook = container(&o.deployment)
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref())
            .and_then(|e| e.command.clone())
            .unwrap();
        assert!(hook.last().unwrap().contains("kill -INT 1"), "{hook:?}");
    }

    #[test]
    fn data_lives_in_a_claim_when_asked_for_one() {
        let (id, mut spec) = (id(), spec());
        let o = objects(&plan(&id, &spec, true), None);
        assert!(o.volume_claim.is_none());
        let volumes = |o: &Objects| {
            o.deployment
                .spec
                .clone()
                .unwrap()
                .template
                .spec
                .unwrap()
                .volumes
                .unwrap()
        };
        assert!(volumes(&o)[1].empty_dir.is_some());
        spec.server_configuration.kubernetes = Some(KubernetesOptions {
            persistent_volume: Some(draas_core::instance::PersistentVolume {
                size: "2Gi".into(),
                storage_class_name: Some("fast".into()),
            }),
            ..KubernetesOptions::default()
        });
        let owner = owned_by("x", "uid-1");
        let o = objects(&plan(&id, &spec, true), Some(&owner));
        let claim = o.volume_claim.as_ref().expect("a claim");
        let name = claim.metadata.name.clone().unwrap();
        assert!(name.ends_with("-data"), "{name}");
        assert_eq!(
            claim.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "2Gi"
        );
        let data = &volumes(&o)[1];
        assert_eq!(
            data.persistent_volume_claim.as_ref().unwrap().claim_name,
            name
        );
        assert!(data.empty_dir.is_none());
    }

    #[test]
    fn options_set_resources_node_selector_and_pull_policy() {
        let (id, mut spec) = (id(), spec());
        spec.server_configuration.kubernetes = Some(KubernetesOptions {
            node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
            resources: Some(Resources {
                requests: Some(ResourceAmounts {
                    cpu: Some("250m".into()),
                    memory: None,
                }),
                limits: Some(ResourceAmounts {
                    cpu: None,
                    memory: Some("256Mi".into()),
                }),
            }),
            ..KubernetesOptions::default()
        });
        let mut p = plan(&id, &spec, true);
        p.pull_policy = ImagePullPolicy::Never;
        let o = objects(&p, None);
        let pod = o
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
        let resources = pod.containers[0].resources.as_ref().unwrap();
        assert_eq!(
            resources.requests.as_ref().unwrap()["cpu"],
            Quantity("250m".into())
        );
        assert_eq!(
            resources.limits.as_ref().unwrap()["memory"],
            Quantity("256Mi".into())
        );
        assert!(!resources.limits.as_ref().unwrap().contains_key("cpu"));
        assert_eq!(
            pod.containers[0].image_pull_policy.as_deref(),
            Some("Never")
        );
    }

    #[test]
    fn the_service_exposes_every_port_over_tcp() {
        let (id, spec) = (id(), spec());
        let o = objects(&plan(&id, &spec, true), None);
        let s = o.service.spec.as_ref().unwrap();
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
        for port in s.ports.as_ref().unwrap() {
            assert_eq!(port.protocol.as_deref(), Some("TCP"), "{port:?}");
            assert_eq!(
                port.target_port,
                Some(IntOrString::String(port.name.clone().unwrap()))
            );
        }
        assert_eq!(s.ports.as_ref().unwrap().len(), 2);
        assert_eq!(
            s.selector.as_ref().unwrap()[INSTANCE_ID],
            id.as_str(),
            "it selects the instance's pod"
        );
    }

    #[test]
    fn the_environment_is_a_secret_whose_fingerprint_reveals_nothing() {
        let (id, mut spec) = (id(), spec());
        spec.server_configuration
            .environment
            .insert("PG_PASSWORD".into(), "s3cret".into());
        let o = objects(&plan(&id, &spec, true), None);
        let secret = o.secret.as_ref().unwrap();
        assert_eq!(secret.data.as_ref().unwrap()["PG_PASSWORD"].0, b"s3cret");
        let env_from = container(&o.deployment).env_from.as_ref().unwrap();
        assert_eq!(
            env_from[0].secret_ref.as_ref().unwrap().name,
            "draas-orders-89abcdef-env"
        );
        // Keyed: the same values under another installation's key differ,
        // so a fingerprint cannot be matched against guesses.
        let mut other = plan(&id, &spec, true);
        other.fingerprint_key = b"another key";
        let theirs = objects(&other, None);
        assert_ne!(
            applied_hash(&secret.metadata),
            applied_hash(&theirs.secret.as_ref().unwrap().metadata)
        );
        let json = serde_json::to_string(&o.deployment).unwrap();
        assert!(!json.contains("s3cret"), "no value in the pod spec");
    }

    #[test]
    fn fingerprints_change_with_what_they_cover_and_only_that() {
        let (id, spec) = (id(), spec());
        let base = objects(&plan(&id, &spec, true), None);
        assert_eq!(
            base,
            objects(&plan(&id, &spec, true), None),
            "deterministic"
        );

        let mut changed = spec.clone();
        changed.configuration_yaml = "id: x\nport: 8081\n".into();
        let o = objects(&plan(&id, &changed, true), None);
        assert_ne!(
            applied_hash(&o.config_map.metadata),
            applied_hash(&base.config_map.metadata)
        );
        assert_eq!(
            applied_hash(&o.service.metadata),
            applied_hash(&base.service.metadata)
        );

        let mut next = spec.clone();
        next.generation = 5;
        let o = objects(&plan(&id, &next, true), None);
        assert_ne!(
            applied_hash(&o.deployment.metadata),
            applied_hash(&base.deployment.metadata),
            "a new generation rolls the pod"
        );
        assert_eq!(
            applied_hash(&o.config_map.metadata),
            applied_hash(&base.config_map.metadata)
        );

        // Owned once the Deployment exists: the companions change, the
        // Deployment does not.
        let owner = owned_by("draas-orders-89abcdef", "uid-1");
        let owned = objects(&plan(&id, &spec, true), Some(&owner));
        assert_ne!(
            applied_hash(&owned.config_map.metadata),
            applied_hash(&base.config_map.metadata)
        );
        assert_eq!(
            applied_hash(&owned.deployment.metadata),
            applied_hash(&base.deployment.metadata)
        );
        assert!(owned.deployment.metadata.owner_references.is_none());
        let reference = &owned.service.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (reference.kind.as_str(), reference.uid.as_str()),
            ("Deployment", "uid-1")
        );
        assert_eq!(reference.block_owner_deletion, Some(true));
    }
}
