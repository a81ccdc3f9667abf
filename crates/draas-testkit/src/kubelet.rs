//! A fake kubelet: makes the test cluster's pods real, as Docker
//! containers of this machine's engine.
//!
//! The test cluster has an API server and a controller-manager but no
//! node. This kubelet registers one (a `Node` whose address is 127.0.0.1),
//! and, for the pods of one namespace:
//!
//! - **schedules** them: binds each to its node if the pod's node
//!   selector matches the node's labels, else marks it `Unschedulable`;
//! - **runs** each bound pod's (first) container as a Docker container of
//!   the pod's image (never pulled: a missing image is `ErrImageNeverPull`
//!   or `ErrImagePull`/`ImagePullBackOff`), with its command, arguments,
//!   working directory, environment (values, and `envFrom` Secrets and
//!   ConfigMaps), user, read-only root file system and dropped
//!   capabilities; `configMap`, `secret`, `emptyDir` and
//!   `persistentVolumeClaim` volumes are host directories bind-mounted at
//!   their mount paths (a claim's directory is kept for the next pod);
//! - **reports** the pod's status as a kubelet does: the pod IP (the
//!   container's: the API server proxies to it, as it would not to
//!   loopback), `Running`, the readiness probe's verdict (HTTP GET, as the
//!   pod says), and after a crash the container `terminated` (with
//!   `OOMKilled` when the engine says so), then `waiting`
//!   (`CrashLoopBackOff`) for a doubling back-off, then running again
//!   with its restart count and last state;
//! - **serves logs** over HTTPS (`/containerLogs/...`, the kubelet's API the
//!   API server calls for `pods/log`), the previous container's too;
//! - **finishes deletions**: a deleted pod's container is stopped with the
//!   pod's grace period (the image's stop signal, then SIGKILL), then the
//!   pod is removed for good.
//!
//! Lifecycle hooks, liveness and startup probes, resource limits and other
//! volume kinds are not simulated. The kubelet ends with
//! [`FakeKubelet::shutdown`] (or, as a fallback, when dropped): its
//! containers, host directories and node are removed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// The label every container of a fake kubelet carries (its node).
pub const NODE_LABEL: &str = "draas.fake-kubelet.node";
/// The label naming a container's pod (`namespace/name`).
pub const POD_LABEL: &str = "draas.fake-kubelet.pod";

/// How a fake kubelet behaves.
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    /// The first restart back-off after a crash (doubling, up to ten times
    /// this).
    pub restart_backoff: Duration,
    /// The node's labels (for node selectors).
    pub node_labels: BTreeMap<String, String>,
}

impl Default for KubeletOptions {
    fn default() -> Self {
        Self {
            restart_backoff: Duration::from_secs(1),
            node_labels: BTreeMap::new(),
        }
    }
}

/// A running fake kubelet; see the module docs.
pub struct FakeKubelet {
    inner: Arc<Inner>,
    tasks: Vec<AbortHandle>,
    finished: bool,
}

/// One pod this kubelet runs.
struct PodRun {
    /// `Some(grace)`: stop it (the pod is being deleted).
    stop: watch::Sender<Option<i64>>,
    /// The current and the previous container.
    containers: Arc<Mutex<Containers>>,
    task: AbortHandle,
}

#[derive(Default, Clone)]
struct Containers {
    current: Option<String>,
    previous: Option<String>,
}

struct Inner {
    client: Client,
    docker: Docker,
    namespace: String,
    node: String,
    options: KubeletOptions,
    root: PathBuf,
    /// By pod name.
    pods: Mutex<HashMap<String, PodRun>>,
    /// Pods already bound or marked unschedulable, by uid.
    scheduled: Mutex<std::collections::HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeKubelet {
    /// Starts a kubelet for the pods of `namespace`, with a node of its
    /// own.
    pub async fn start(
        client: Client,
        namespace: &str,
        options: KubeletOptions,
    ) -> anyhow::Result<Self> {
        let docker = Docker::connect_with_local_defaults()?;
        docker.ping().await?;
        let node = format!("fake-{namespace}");
        let root = std::env::temp_dir().join(format!("draas-fake-kubelet-{node}"));
        std::fs::create_dir_all(&root)?;
        let inner = Arc::new(Inner {
            client,
            docker,
            namespace: namespace.to_string(),
            node,
            options,
            root,
            pods: Mutex::new(HashMap::new()),
            scheduled: Mutex::new(Default::default()),
        });
        let (address, server) = serve_logs(inner.clone()).await?;
        inner.register_node(address.port()).await?;
        let watch = tokio::spawn(inner.clone().watch_pods()).abort_handle();
        Ok(Self {
            inner,
            tasks: vec![server, watch],
            finished: false,
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The Docker container running pod `pod` now, if any.
    pub fn container_of(&self, pod: &str) -> Option<String> {
        lock(&self.inner.pods)
            .get(pod)
            .and_then(|run| lock(&run.containers).current.clone())
    }

    /// Every container this kubelet created that still exists.
    pub async fn containers(&self) -> Vec<String> {
        self.inner.own_containers().await
    }

    /// Stops everything and removes the node, its containers and its
    /// directories.
    pub async fn shutdown(mut self) {
        self.finished = true;
        for task in &self.tasks {
            task.abort();
        }
        self.inner.cleanup().await;
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if self.finished {
            return;
        }
        // A failed test: clean up on a runtime of our own.
        let inner = self.inner.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(inner.cleanup());
            }
        })
        .join();
    }
}

// === the node and scheduling ===

impl Inner {
    async fn register_node(&self, port: u16) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut labels = self.options.node_labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.node.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": self.node, "labels": labels },
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let status = json!({ "status": {
            "addresses": [{ "type": "InternalIP", "address": "127.0.0.1" }],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": port } },
            "capacity": { "cpu": "8", "memory": "16Gi", "pods": "110" },
            "allocatable": { "cpu": "8", "memory": "16Gi", "pods": "110" },
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "the fake kubelet is ready",
                "lastHeartbeatTime": now(), "lastTransitionTime": now(),
            }],
            "nodeInfo": {
                "kubeletVersion": "v1.20.2-fake", "containerRuntimeVersion": "docker://fake",
                "architecture": "amd64", "operatingSystem": "linux", "bootID": "", "kernelVersion": "",
                "kubeProxyVersion": "", "machineID": "", "osImage": "", "systemUUID": "",
            },
        }});
        nodes
            .patch_status(&self.node, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Binds `pod` to this node, or says why it cannot be.
    async fn schedule(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        if !lock(&self.scheduled).insert(uid) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = pod.name_any();
        let mut labels = self.options.node_labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.node.clone());
        let selector = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        let fits = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        if fits {
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": { "name": name },
                "target": { "apiVersion": "v1", "kind": "Node", "name": self.node },
            });
            if let Err(e) = pods
                .create_subresource::<Value, Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            {
                tracing::warn!("fake kubelet: cannot bind {name}: {e}");
            }
        } else {
            let status = json!({ "status": {
                "phase": "Pending",
                "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 node(s) didn't match node selector.",
                    "lastTransitionTime": now(),
                }],
            }});
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        }
    }

    async fn watch_pods(self: Arc<Self>) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut events = watcher(pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(pod) | Event::InitApply(pod)) => self.clone().on_pod(pod).await,
                Ok(Event::Delete(pod)) => {
                    // Gone for good: whatever still runs stops at once.
                    if let Some(run) = lock(&self.pods).get(&pod.name_any()) {
                        let _ = run.stop.send(Some(0));
                    }
                }
                Ok(Event::Init | Event::InitDone) => {}
                Err(e) => tracing::warn!("fake kubelet: watching pods: {e}"),
            }
        }
    }

    async fn on_pod(self: Arc<Self>, pod: Pod) {
        let name = pod.name_any();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
            let running = lock(&self.pods)
                .get(&name)
                .map(|run| run.stop.send(Some(grace)).is_ok());
            if running != Some(true) && node.as_deref() == Some(self.node.as_str()) {
                self.finish_deletion(&pod).await;
            }
            return;
        }
        match node {
            None => self.schedule(&pod).await,
            Some(node) if node == self.node => {
                let mut pods = lock(&self.pods);
                if pods.contains_key(&name) {
                    return;
                }
                let (stop, stopped) = watch::channel(None);
                let containers = Arc::new(Mutex::new(Containers::default()));
                let task = tokio::spawn(self.clone().run_pod(
                    pod.clone(),
                    stopped,
                    containers.clone(),
                ))
                .abort_handle();
                pods.insert(
                    name,
                    PodRun {
                        stop,
                        containers,
                        task,
                    },
                );
            }
            Some(_) => {}
        }
    }

    async fn finish_deletion(&self, pod: &Pod) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let _ = pods
            .delete(
                &pod.name_any(),
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.uid(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                },
            )
            .await;
    }
}

// === running a pod ===

/// What the pod's container looks like now, for its status.
#[derive(Clone)]
struct ContainerView {
    state: Value,
    last_state: Value,
    ready: bool,
    restarts: i32,
    container_id: Option<String>,
    pod_ip: Option<String>,
}

/// Why a container cannot be created yet.
struct NotYet {
    reason: &'static str,
    message: String,
}

impl Inner {
    async fn run_pod(
        self: Arc<Self>,
        pod: Pod,
        mut stop: watch::Receiver<Option<i64>>,
        containers: Arc<Mutex<Containers>>,
    ) {
        let name = pod.name_any();
        let Some(container) = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
        else {
            return;
        };
        let started_at = now();
        let mut view = ContainerView {
            state: json!({ "waiting": { "reason": "ContainerCreating" } }),
            last_state: json!({}),
            ready: false,
            restarts: 0,
            container_id: None,
            pod_ip: None,
        };
        loop {
            let created = match self.create_container(&pod, &container, view.restarts).await {
                Ok(id) => id,
                Err(not_yet) => {
                    view.state = json!({ "waiting": {
                        "reason": not_yet.reason, "message": not_yet.message } });
                    self.report(&pod, &container, &view, &started_at).await;
                    if self.pause(&mut stop, Duration::from_millis(500)).await {
                        break;
                    }
                    continue;
                }
            };
            {
                let mut c = lock(&containers);
                let old = c.previous.take();
                c.previous = c.current.take();
                c.current = Some(created.clone());
                if let Some(old) = old {
                    let docker = self.docker.clone();
                    tokio::spawn(async move { remove_container(&docker, &old).await });
                }
            }
            if let Err(e) = self
                .docker
                .start_container(&created, None::<StartContainerOptions>)
                .await
            {
                view.state = json!({ "waiting": {
                    "reason": "RunContainerError", "message": e.to_string() } });
                self.report(&pod, &container, &view, &started_at).await;
                if self.pause(&mut stop, Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
            let exited = self.clone().wait_for_exit(created.clone());
            view.pod_ip = self.container_ip(&created).await;
            view.container_id = Some(created.clone());
            view.state = json!({ "running": { "startedAt": now() } });
            view.ready = false;
            self.report(&pod, &container, &view, &started_at).await;
            let outcome = self
                .serve(&pod, &container, &mut view, &started_at, &mut stop, exited)
                .await;
            match outcome {
                Served::Stop(grace) => {
                    self.stop_container(&created, grace).await;
                    break;
                }
                Served::Exited(termination) => {
                    view.restarts += 1;
                    view.ready = false;
                    view.state = json!({ "terminated": termination.clone() });
                    self.report(&pod, &container, &view, &started_at).await;
                    view.last_state = json!({ "terminated": termination });
                    let factor = 1u32 << (view.restarts - 1).clamp(0, 3);
                    let backoff = (self.options.restart_backoff * factor)
                        .min(self.options.restart_backoff * 10);
                    view.state = json!({ "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": format!("back-off {}s restarting failed container={} pod={name}",
                            backoff.as_secs(), container.name),
                    } });
                    self.report(&pod, &container, &view, &started_at).await;
                    if self.pause(&mut stop, backoff).await {
                        break;
                    }
                }
            }
        }
        let leftovers = {
            let c = lock(&containers);
            [c.current.clone(), c.previous.clone()]
        };
        for id in leftovers.into_iter().flatten() {
            remove_container(&self.docker, &id).await;
        }
        let _ = std::fs::remove_dir_all(self.pod_dir(&pod));
        self.finish_deletion(&pod).await;
        lock(&self.pods).remove(&name);
    }

    /// Sleeps `pause`, or less if the pod is deleted: `true` then.
    async fn pause(&self, stop: &mut watch::Receiver<Option<i64>>, pause: Duration) -> bool {
        if stop.borrow().is_some() {
            return true;
        }
        matches!(
            tokio::time::timeout(pause, stop.wait_for(Option::is_some)).await,
            Ok(Ok(_))
        )
    }

    fn pod_dir(&self, pod: &Pod) -> PathBuf {
        self.root.join(pod.uid().unwrap_or_else(|| pod.name_any()))
    }

    /// Creates (not starts) the container of attempt `restarts`.
    async fn create_container(
        &self,
        pod: &Pod,
        container: &Container,
        restarts: i32,
    ) -> Result<String, NotYet> {
        let image = container.image.clone().unwrap_or_default();
        if self.docker.inspect_image(&image).await.is_err() {
            let policy = container
                .image_pull_policy
                .as_deref()
                .unwrap_or("IfNotPresent");
            return Err(if policy == "Never" {
                NotYet {
                    reason: "ErrImageNeverPull",
                    message: format!(
                        "Container image \"{image}\" is not present with pull policy of Never"
                    ),
                }
            } else {
                NotYet {
                    reason: "ImagePullBackOff",
                    message: format!("Back-off pulling image \"{image}\""),
                }
            });
        }
        let binds = self.volumes(pod, container).await?;
        let env = self.environment(container).await?;
        let security = container.security_context.clone().unwrap_or_default();
        let pod_security = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let user = security.run_as_user.or(pod_security.run_as_user);
        let group = security.run_as_group.or(pod_security.run_as_group);
        let name = format!("{}-{}-{restarts}", self.node, pod.name_any());
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: container.command.clone(),
            cmd: container.args.clone(),
            working_dir: container.working_dir.clone(),
            env: Some(env),
            user: user.map(|u| match group {
                Some(g) => format!("{u}:{g}"),
                None => u.to_string(),
            }),
            labels: Some(HashMap::from([
                (NODE_LABEL.to_string(), self.node.clone()),
                (
                    POD_LABEL.to_string(),
                    format!("{}/{}", self.namespace, pod.name_any()),
                ),
            ])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                readonly_rootfs: security.read_only_root_filesystem,
                cap_drop: security.capabilities.as_ref().and_then(|c| c.drop.clone()),
                security_opt: (security.allow_privilege_escalation == Some(false))
                    .then(|| vec!["no-new-privileges".to_string()]),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        // A leftover of an earlier run of the same name goes first.
        remove_container(&self.docker, &name).await;
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map(|created| created.id)
            .map_err(|e| NotYet {
                reason: "CreateContainerError",
                message: e.to_string(),
            })
    }

    /// Host directories for the pod's volumes, as `host:path[:ro]` binds.
    async fn volumes(&self, pod: &Pod, container: &Container) -> Result<Vec<String>, NotYet> {
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let dir = self.pod_dir(pod);
        let mut binds = Vec::new();
        for mount in container.volume_mounts.clone().unwrap_or_default() {
            let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
                return Err(NotYet {
                    reason: "CreateContainerConfigError",
                    message: format!("volume \"{}\" not found", mount.name),
                });
            };
            let io = |e: std::io::Error| NotYet {
                reason: "CreateContainerError",
                message: e.to_string(),
            };
            // A claim's data outlives the pod: a directory of its own, kept
            // for the next pod that mounts it.
            let host = match &volume.persistent_volume_claim {
                Some(claim) => {
                    let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                        Api::namespaced(self.client.clone(), &self.namespace);
                    if !matches!(api.get_opt(&claim.claim_name).await, Ok(Some(_))) {
                        return Err(NotYet {
                            reason: "ContainerCreating",
                            message: format!(
                                "persistentvolumeclaim \"{}\" not found",
                                claim.claim_name
                            ),
                        });
                    }
                    self.root.join("claims").join(&claim.claim_name)
                }
                None => dir.join(&volume.name),
            };
            std::fs::create_dir_all(&host).map_err(io)?;
            if let Some(source) = &volume.config_map {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
                let Ok(Some(map)) = api.get_opt(&source.name).await else {
                    return Err(NotYet {
                        reason: "ContainerCreating",
                        message: format!("configmap \"{}\" not found", source.name),
                    });
                };
                let data = map.data.unwrap_or_default();
                write_files(&host, &data, source.items.as_deref()).map_err(io)?;
            } else if let Some(source) = &volume.secret {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
                let name = source.secret_name.clone().unwrap_or_default();
                let Ok(Some(secret)) = api.get_opt(&name).await else {
                    return Err(NotYet {
                        reason: "ContainerCreating",
                        message: format!("secret \"{name}\" not found"),
                    });
                };
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                write_files(&host, &data, source.items.as_deref()).map_err(io)?;
            } else if volume.empty_dir.is_some() || volume.persistent_volume_claim.is_some() {
                // Writable by whichever user the container runs as.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o1777))
                    .map_err(io)?;
            } else {
                return Err(NotYet {
                    reason: "CreateContainerConfigError",
                    message: format!(
                        "the fake kubelet has no volume of kind used by \"{}\"",
                        volume.name
                    ),
                });
            }
            let read_only = if mount.read_only == Some(true) {
                ":ro"
            } else {
                ""
            };
            binds.push(format!(
                "{}:{}{read_only}",
                host.display(),
                mount.mount_path
            ));
        }
        Ok(binds)
    }

    /// The container's environment: its values, and what `envFrom` names.
    async fn environment(&self, container: &Container) -> Result<Vec<String>, NotYet> {
        let mut env = Vec::new();
        for source in container.env_from.clone().unwrap_or_default() {
            if let Some(secret) = source.secret_ref {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
                match api.get_opt(&secret.name).await {
                    Ok(Some(found)) => {
                        for (k, v) in found.data.unwrap_or_default() {
                            env.push(format!("{k}={}", String::from_utf8_lossy(&v.0)));
                        }
                    }
                    _ if secret.optional == Some(true) => {}
                    _ => {
                        return Err(NotYet {
                            reason: "CreateContainerConfigError",
                            message: format!("secret \"{}\" not found", secret.name),
                        })
                    }
                }
            }
            if let Some(map) = source.config_map_ref {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
                match api.get_opt(&map.name).await {
                    Ok(Some(found)) => {
                        for (k, v) in found.data.unwrap_or_default() {
                            env.push(format!("{k}={v}"));
                        }
                    }
                    _ if map.optional == Some(true) => {}
                    _ => {
                        return Err(NotYet {
                            reason: "CreateContainerConfigError",
                            message: format!("configmap \"{}\" not found", map.name),
                        })
                    }
                }
            }
        }
        for var in container.env.clone().unwrap_or_default() {
            env.push(format!("{}={}", var.name, var.value.unwrap_or_default()));
        }
        Ok(env)
    }

    async fn container_ip(&self, id: &str) -> Option<String> {
        let inspected = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let settings = inspected.network_settings?;
        settings
            .networks
            .and_then(|n| n.values().find_map(|e| e.ip_address.clone()))
            .filter(|ip| !ip.is_empty())
    }

    /// Resolves when container `id` ends, with how it ended.
    fn wait_for_exit(self: Arc<Self>, id: String) -> tokio::task::JoinHandle<Value> {
        tokio::spawn(async move {
            // Asked once the container started ("not-running" answers at
            // once for one that already ended, and for one not started
            // yet). The engine answers a non-zero exit as an error: either
            // way the container has ended; inspect says how.
            let _ = self
                .docker
                .wait_container(&id, None::<WaitContainerOptions>)
                .try_collect::<Vec<_>>()
                .await;
            let state = self
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|c| c.state);
            let code = state.as_ref().and_then(|s| s.exit_code).unwrap_or(-1);
            let oom = state.as_ref().and_then(|s| s.oom_killed).unwrap_or(false);
            let reason = if oom {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            };
            json!({
                "exitCode": code,
                "reason": reason,
                "startedAt": state.as_ref().and_then(|s| s.started_at.clone()),
                "finishedAt": now(),
                "containerID": format!("docker://{id}"),
            })
        })
    }

    /// Probes readiness until the container exits or the pod is deleted.
    async fn serve(
        &self,
        pod: &Pod,
        container: &Container,
        view: &mut ContainerView,
        started_at: &str,
        stop: &mut watch::Receiver<Option<i64>>,
        mut exited: tokio::task::JoinHandle<Value>,
    ) -> Served {
        let probe = container.readiness_probe.clone();
        let period = probe
            .as_ref()
            .and_then(|p| p.period_seconds)
            .map(|s| Duration::from_secs(u64::from(s.max(1).unsigned_abs())))
            .unwrap_or(Duration::from_secs(10));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_default();
        loop {
            // Until the first success, look often: the time to Ready is
            // what benchmarks measure, and a real kubelet's first probe
            // comes as soon as the container runs.
            let next = if view.ready {
                period
            } else {
                Duration::from_millis(50)
            };
            tokio::select! {
                termination = &mut exited => {
                    return Served::Exited(termination.unwrap_or_else(|_| json!({
                        "exitCode": -1, "reason": "Error", "finishedAt": now() })));
                }
                grace = stop.wait_for(Option::is_some) => {
                    return Served::Stop(grace.ok().and_then(|g| *g).unwrap_or(0));
                }
                _ = tokio::time::sleep(next) => {}
            }
            let ready = match (&probe, &view.pod_ip) {
                (None, _) => true,
                (Some(probe), Some(ip)) => {
                    match probe.http_get.as_ref() {
                        Some(get) => {
                            let port = match &get.port {
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => Some(*p),
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
                                .ports
                                .as_ref()
                                .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(name)))
                                .map(|p| p.container_port),
                        };
                            match port {
                                Some(port) => {
                                    let url = format!(
                                        "http://{ip}:{port}{}",
                                        get.path.as_deref().unwrap_or("/")
                                    );
                                    client
                                        .get(&url)
                                        .send()
                                        .await
                                        .is_ok_and(|r| r.status().as_u16() < 400)
                                }
                                None => false,
                            }
                        }
                        None => true,
                    }
                }
                (Some(_), None) => false,
            };
            if ready != view.ready {
                view.ready = ready;
                self.report(pod, container, view, started_at).await;
            }
        }
    }

    async fn stop_container(&self, id: &str, grace: i64) {
        let _ = self
            .docker
            .stop_container(
                id,
                Some(
                    StopContainerOptionsBuilder::default()
                        .t(i32::try_from(grace).unwrap_or(30))
                        .build(),
                ),
            )
            .await;
    }

    /// Writes the pod's status as a kubelet would.
    async fn report(
        &self,
        pod: &Pod,
        container: &Container,
        view: &ContainerView,
        started_at: &str,
    ) {
        let running = view.state.get("running").is_some();
        let ready = if view.ready { "True" } else { "False" };
        let mut status = json!({
            "phase": if running || view.restarts > 0 { "Running" } else { "Pending" },
            "hostIP": "127.0.0.1",
            "startTime": started_at,
            "conditions": [
                { "type": "PodScheduled", "status": "True", "lastTransitionTime": started_at },
                { "type": "Initialized", "status": "True", "lastTransitionTime": started_at },
                { "type": "ContainersReady", "status": ready, "lastTransitionTime": now() },
                { "type": "Ready", "status": ready, "lastTransitionTime": now() },
            ],
            "containerStatuses": [{
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "containerID": view.container_id.as_ref().map(|id| format!("docker://{id}")),
                "ready": view.ready,
                "started": running,
                "restartCount": view.restarts,
                "state": view.state,
                "lastState": view.last_state,
            }],
        });
        if let Some(ip) = &view.pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Err(e) = pods
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
        {
            tracing::debug!("fake kubelet: status of {}: {e}", pod.name_any());
        }
    }

    async fn own_containers(&self) -> Vec<String> {
        let filters = HashMap::from([("label", vec![format!("{NODE_LABEL}={}", self.node)])]);
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .collect()
    }

    async fn cleanup(&self) {
        let runs: Vec<PodRun> = lock(&self.pods).drain().map(|(_, run)| run).collect();
        for run in &runs {
            run.task.abort();
        }
        for id in self.own_containers().await {
            remove_container(&self.docker, &id).await;
        }
        let _ = Api::<Node>::all(self.client.clone())
            .delete(&self.node, &DeleteParams::default())
            .await;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

enum Served {
    Stop(i64),
    Exited(Value),
}

async fn remove_container(docker: &Docker, id: &str) {
    let _ = docker
        .remove_container(
            id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
}

/// Writes a ConfigMap's or Secret's `data` into `dir`: every key, or the
/// `items` asked for, readable by every user.
fn write_files(
    dir: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let files: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v.clone())))
            .collect(),
        None => data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    for (path, content) in files {
        let file = dir.join(path);
        std::fs::write(&file, content)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444))?;
    }
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// === the kubelet's log API ===

/// Serves `/containerLogs/{namespace}/{pod}/{container}` over HTTPS on a
/// free loopback port, with a self-signed certificate (the test API server
/// does not verify kubelets).
async fn serve_logs(inner: Arc<Inner>) -> anyhow::Result<(SocketAddr, AbortHandle)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(self_signed_tls()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let task =
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let inner = inner.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let inner = inner.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(inner.log_response(request).await)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        })
        .abort_handle();
    Ok((address, task))
}

impl Inner {
    async fn log_response(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let respond = |status: u16, body: String| {
            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() =
                hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
            response
        };
        let path: Vec<&str> = request.uri().path().split('/').collect();
        // ["", "containerLogs", namespace, pod, container]
        let ["", "containerLogs", _namespace, pod, _container] = path.as_slice() else {
            return respond(
                404,
                format!("no such kubelet path: {}", request.uri().path()),
            );
        };
        let query: HashMap<String, String> = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let previous = query.get("previous").is_some_and(|v| v == "true");
        let tail = query
            .get("tailLines")
            .cloned()
            .unwrap_or_else(|| "all".to_string());
        let containers = lock(&self.pods)
            .get(*pod)
            .map(|run| lock(&run.containers).clone());
        let Some(containers) = containers else {
            return respond(404, format!("pod {pod} does not run here"));
        };
        let Some(id) = (if previous {
            containers.previous
        } else {
            containers.current
        }) else {
            return respond(
                400,
                format!("previous terminated container not found for pod {pod}"),
            );
        };
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        match self
            .docker
            .logs(&id, Some(options))
            .try_collect::<Vec<_>>()
            .await
        {
            Ok(chunks) => respond(
                200,
                chunks
                    .iter()
                    .map(|c| String::from_utf8_lossy(c.as_ref()).into_owned())
                    .collect(),
            ),
            Err(e) => respond(500, e.to_string()),
        }
    }
}

/// A TLS server configuration with a fresh self-signed certificate for
/// 127.0.0.1.
fn self_signed_tls() -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)?;
    Ok(Arc::new(config))
}
