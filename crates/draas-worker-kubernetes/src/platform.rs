//! The Kubernetes half of the driver: [`Platform`] over a cluster's API.
//!
//! - **launch**: apply (server-side, field manager `draas`) what changed of
//!   the instance's objects ([`manifests`]): the configuration first (a pod
//!   never starts with a stale one), then the Deployment with one replica,
//!   then the Service; objects whose [`SPEC_HASH`] the watch shows
//!   unchanged are not applied again. The generic half then waits for the
//!   server's [`Condition`] to be `Ready`;
//! - **stop**: scale the Deployment to zero (the `scale` subresource) and
//!   wait until its pod is gone; the kubelet stops the server with the
//!   pod's grace period;
//! - **remove**: delete the Deployment (foreground: its ReplicaSet, pod,
//!   ConfigMap, Secret and Service go first) and anything of the instance
//!   left without an owner, and wait until the watches show nothing;
//! - **attach** after a restart: the Deployment the record names, if it
//!   still exists with the same uid and a replica;
//! - **last words** and **logs**: the pod's log (the previous container's
//!   after a crash).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use draas_core::instance::{ActualState, InstanceId, PlatformHandle, PlatformType, Reason};
use draas_core::messages::{ErrorCode, LogsSpec, StartSpec};
use draas_core::ports::DriverError;
use draas_worker::drasi::ServerApi;
use draas_worker::driver::{Condition, ExitWatch, Launched, Platform, ServerAddress};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::{Cluster, KubernetesSettings};
use crate::manifests::{
    self, applied_hash, object_name, owned_by, secret_name, Objects, Plan, CONTAINER, INSTALLATION,
    INSTANCE_ID, MANAGER,
};
use crate::proxy::ServiceProxy;
use crate::watch::{NamespaceCache, Watches};

/// How long the kubelet may take beyond the grace period to stop a pod.
const STOP_SLACK: Duration = Duration::from_secs(10);
/// How long a forcibly deleted pod may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a deletion may take until the watches show nothing.
const REMOVE_WITHIN: Duration = Duration::from_secs(60);
/// How long reading a pod's log may take.
const LOG_WITHIN: Duration = Duration::from_secs(5);

/// What a Kubernetes worker persists per server: its Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    /// The namespace.
    pub namespace: String,
    /// The Deployment's name (also the Service's).
    pub name: String,
    /// The Deployment's uid: a Deployment recreated under the same name is
    /// not this server.
    pub uid: String,
    /// The Deployment's `metadata.generation` at launch.
    pub revision: i64,
}

/// A live handle on a server: its Deployment and its condition.
#[derive(Debug, Clone)]
pub struct DeploymentHandle {
    /// The namespace.
    pub namespace: String,
    /// The Deployment's name.
    pub name: String,
    condition: watch::Receiver<Condition>,
}

/// The Kubernetes platform; see the module docs.
pub struct KubernetesPlatform {
    cluster: Cluster,
    settings: KubernetesSettings,
    installation: String,
    fingerprint_key: Vec<u8>,
    watches: Arc<Watches>,
}

fn failed(code: ErrorCode, message: impl Into<String>) -> DriverError {
    DriverError::new(code, message).with_state(ActualState::Failed, Reason::PlatformError)
}

fn platform_error(message: impl Into<String>) -> DriverError {
    failed(ErrorCode::PlatformError, message)
}

fn replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

impl KubernetesPlatform {
    /// The platform on `cluster`, for the DRaaS installation
    /// `installation` (its objects carry it), keying secret fingerprints
    /// with `fingerprint_key`.
    pub fn new(
        cluster: Cluster,
        settings: KubernetesSettings,
        installation: String,
        fingerprint_key: Vec<u8>,
    ) -> Self {
        let watches = Watches::new(
            cluster.client.clone(),
            manifests::installation_selector(&installation),
        );
        Self {
            cluster,
            settings,
            installation,
            fingerprint_key,
            watches,
        }
    }

    /// The cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The watches (tests look at what they show).
    pub fn watches(&self) -> &Arc<Watches> {
        &self.watches
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.cluster.client.clone(), namespace)
    }

    /// Whether `meta` is of instance `id` of this installation.
    fn is_ours(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        id: &InstanceId,
    ) -> bool {
        meta.labels.as_ref().is_some_and(|l| {
            l.get(INSTANCE_ID).map(String::as_str) == Some(id.as_str())
                && l.get(INSTALLATION) == Some(&self.installation)
        })
    }

    /// Applies `object` (server-side, forcing DRaaS's ownership of its
    /// fields) and returns what the API server made of it.
    async fn apply<K>(&self, api: &Api<K>, object: &K) -> Result<K, DriverError>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|e| platform_error(format!("cannot apply {} '{name}': {e}", K::kind(&()))))
    }

    /// Applies `object` unless `store` shows it applied unchanged.
    async fn apply_if_changed<K>(
        &self,
        store: &Store<PartialObjectMeta<K>>,
        namespace: &str,
        object: &K,
    ) -> Result<(), DriverError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let wanted = applied_hash(object.meta()).map(str::to_string);
        if NamespaceCache::applied(store, namespace, &name) == Some(wanted) {
            return Ok(());
        }
        self.apply(&self.api::<K>(namespace), object)
            .await
            .map(|_| ())
    }

    /// Creates the instance's PersistentVolumeClaim unless it exists: once
    /// made, its size and class are the cluster's business (a claim can
    /// only grow, and not in every class), and its data is the instance's.
    async fn ensure_claim(
        &self,
        namespace: &str,
        claim: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
    ) -> Result<(), DriverError> {
        let api = self.api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(namespace);
        let name = claim.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => self.apply(&api, claim).await.map(|_| ()),
            Err(e) => Err(platform_error(format!(
                "cannot read PersistentVolumeClaim '{namespace}/{name}': {e}"
            ))),
        }
    }

    /// Applies the configuration and the environment (deleting a Secret
    /// whose variables are all gone).
    async fn apply_configuration(
        &self,
        cache: &NamespaceCache,
        objects: &Objects,
        base: &str,
    ) -> Result<(), DriverError> {
        let namespace = &cache.namespace;
        self.apply_if_changed(&cache.config_maps, namespace, &objects.config_map)
            .await?;
        match &objects.secret {
            Some(secret) => {
                self.apply_if_changed(&cache.secrets, namespace, secret)
                    .await?
            }
            None => {
                let name = secret_name(base);
                if NamespaceCache::applied(&cache.secrets, namespace, &name).is_some() {
                    match self
                        .api::<Secret>(namespace)
                        .delete(&name, &DeleteParams::default())
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            return Err(platform_error(format!(
                                "cannot delete the Secret '{name}': {e}"
                            )))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Scales the Deployment of `handle` to zero.
    async fn scale_to_zero(&self, namespace: &str, name: &str) -> Result<(), DriverError> {
        let patch = serde_json::json!({ "spec": { "replicas": 0 } });
        match self
            .api::<Deployment>(namespace)
            .patch_scale(
                name,
                &PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(platform_error(format!(
                "cannot scale the Deployment '{namespace}/{name}' to zero: {e}"
            ))),
        }
    }

    /// Deletes the pods of `id` at once (no grace period).
    async fn force_delete_pods(&self, id: &InstanceId, namespace: &str) {
        let Ok(cache) = self.watches.namespace(namespace).await else {
            return;
        };
        let api = self.api::<Pod>(namespace);
        for pod in cache.pods_of(id) {
            let name = pod.name_any();
            if let Err(e) = api
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await
            {
                if !is_not_found(&e) {
                    warn!(instance = %id, "cannot delete pod {namespace}/{name}: {e}");
                }
            }
        }
    }

    /// The newest pod of `id` in `cache`, terminating or not.
    fn newest_pod(cache: &NamespaceCache, id: &InstanceId) -> Option<Arc<Pod>> {
        cache
            .pods_of(id)
            .into_iter()
            .max_by_key(|p| p.metadata.creation_timestamp.clone())
    }

    /// The last `lines` lines of the server's log in `pod`: the previous
    /// container's when the current one has not run since a crash.
    async fn pod_log(
        &self,
        namespace: &str,
        pod: &Pod,
        lines: usize,
    ) -> Result<Vec<String>, String> {
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|all| all.iter().find(|c| c.name == CONTAINER));
        let previous = status.is_some_and(|c| {
            let current_ended = c.state.as_ref().is_some_and(|s| s.terminated.is_some());
            let ran_before = c
                .last_state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some());
            !current_ended && ran_before
        });
        let params = LogParams {
            container: Some(CONTAINER.into()),
            previous,
            tail_lines: Some(i64::try_from(lines).unwrap_or(i64::MAX)),
            ..LogParams::default()
        };
        let text = tokio::time::timeout(
            LOG_WITHIN,
            self.api::<Pod>(namespace).logs(&pod.name_any(), &params),
        )
        .await
        .map_err(|_| format!("no answer within {LOG_WITHIN:?}"))?
        .map_err(|e| e.to_string())?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// The caches an instance's objects may be in: its record's namespace,
    /// else every namespace watched (the default one at least).
    async fn caches_for(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<Arc<NamespaceCache>>, DriverError> {
        match namespace {
            Some(namespace) => Ok(vec![self.watches.namespace(namespace).await?]),
            None => {
                self.watches
                    .namespace(&self.cluster.default_namespace)
                    .await?;
                Ok(self.watches.watched())
            }
        }
    }

    /// Deletes every object of `id` the caches show.
    async fn delete_objects(
        &self,
        id: &InstanceId,
        cache: &NamespaceCache,
    ) -> Result<(), DriverError> {
        let namespace = &cache.namespace;
        let foreground = DeleteParams::foreground();
        for d in cache.deployments.state() {
            if self.is_ours(&d.metadata, id) {
                delete(
                    &self.api::<Deployment>(namespace),
                    &d.name_any(),
                    &foreground,
                )
                .await?;
            }
        }
        let background = DeleteParams::background();
        for c in cache.config_maps.state() {
            if self.is_ours(&c.metadata, id) {
                delete(
                    &self.api::<ConfigMap>(namespace),
                    &c.name_any(),
                    &background,
                )
                .await?;
            }
        }
        for s in cache.secrets.state() {
            if self.is_ours(&s.metadata, id) {
                delete(&self.api::<Secret>(namespace), &s.name_any(), &background).await?;
            }
        }
        for s in cache.services.state() {
            if self.is_ours(&s.metadata, id) {
                delete(&self.api::<Service>(namespace), &s.name_any(), &background).await?;
            }
        }
        Ok(())
    }
}

/// Deletes `name`; a missing object is fine.
async fn delete<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<(), DriverError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(platform_error(format!(
            "cannot delete {} '{name}': {e}",
            K::kind(&())
        ))),
    }
}

#[async_trait]
impl Platform for KubernetesPlatform {
    type Record = DeploymentRecord;
    type Handle = DeploymentHandle;

    fn platform(&self) -> PlatformType {
        PlatformType::Kubernetes
    }

    fn scope(&self) -> String {
        self.cluster.id.clone()
    }

    fn version(&self) -> Option<String> {
        Some(self.cluster.version.clone())
    }

    async fn labelled_instances(&self) -> Vec<InstanceId> {
        let caches = match self.caches_for(None).await {
            Ok(caches) => caches,
            Err(e) => {
                warn!("cannot list this installation's objects: {}", e.message);
                return Vec::new();
            }
        };
        let mut ids = std::collections::BTreeSet::new();
        for cache in caches {
            ids.extend(cache.instances());
        }
        ids.into_iter().collect()
    }

    async fn launch(
        &self,
        id: &InstanceId,
        spec: &StartSpec,
    ) -> Result<Launched<DeploymentRecord, DeploymentHandle>, DriverError> {
        let options = spec.server_configuration.kubernetes();
        let namespace = options
            .namespace
            .clone()
            .unwrap_or_else(|| self.cluster.default_namespace.clone());
        let cache = self.watches.namespace(&namespace).await?;
        let image = options
            .image
            .clone()
            .unwrap_or_else(|| self.settings.image.clone());
        let plan = Plan {
            id,
            spec,
            namespace: &namespace,
            bundled: image == self.settings.image,
            image: &image,
            pull_policy: options
                .image_pull_policy
                .unwrap_or(self.settings.image_pull_policy),
            installation: &self.installation,
            fingerprint_key: &self.fingerprint_key,
        };
        let base = object_name(&spec.name, id);
        let deployments = self.api::<Deployment>(&namespace);
        let existing = cache.deployment(&base);
        if existing.is_none() {
            // Not in this installation's watch: a Deployment of that name
            // may still exist, and it is not DRaaS's to replace.
            match deployments.get_opt(&base).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(failed(
                        ErrorCode::InvalidState,
                        format!(
                            "a Deployment named '{base}' already exists in namespace \
                             '{namespace}' and is not this instance's"
                        ),
                    ))
                }
                Err(e) => {
                    return Err(platform_error(format!(
                        "cannot read Deployment '{namespace}/{base}': {e}"
                    )))
                }
            }
        }
        let owner = existing
            .as_ref()
            .and_then(|d| d.metadata.uid.clone())
            .map(|uid| owned_by(&base, &uid));
        let objects = manifests::objects(&plan, owner.as_ref());
        // The configuration first: a pod never starts with a stale one.
        self.apply_configuration(&cache, &objects, &base).await?;
        let unchanged = existing.as_deref().filter(|d| {
            applied_hash(&d.metadata) == applied_hash(&objects.deployment.metadata)
                && replicas(d) == 1
        });
        let deployment = match unchanged {
            Some(d) => d.clone(),
            None => self.apply(&deployments, &objects.deployment).await?,
        };
        let uid =
            deployment.metadata.uid.clone().ok_or_else(|| {
                platform_error("the API server returned a Deployment without uid")
            })?;
        let revision = deployment.metadata.generation.unwrap_or(0);
        // Now that the Deployment exists, everything else is owned by it.
        let objects = if owner.is_none() {
            let objects = manifests::objects(&plan, Some(&owned_by(&base, &uid)));
            self.apply_configuration(&cache, &objects, &base).await?;
            objects
        } else {
            objects
        };
        self.apply_if_changed(&cache.services, &namespace, &objects.service)
            .await?;
        if let Some(claim) = &objects.volume_claim {
            self.ensure_claim(&namespace, claim).await?;
        }
        let tracked = self
            .watches
            .track(id, &namespace, &base, &uid, revision, false);
        info!(instance = %id, "applied Deployment {namespace}/{base} (generation {revision})");
        let host = format!("{base}.{namespace}.svc");
        let url = format!("http://{host}:{}", spec.api_port);
        Ok(Launched {
            record: DeploymentRecord {
                namespace: namespace.clone(),
                name: base.clone(),
                uid,
                revision,
            },
            handle: DeploymentHandle {
                namespace,
                name: base,
                condition: tracked.condition,
            },
            exit: tracked.exit,
            address: ServerAddress {
                api_url: url.clone(),
                endpoint: url,
                host,
                port: spec.api_port,
            },
        })
    }

    async fn attach(
        &self,
        id: &InstanceId,
        record: &DeploymentRecord,
    ) -> Option<(DeploymentHandle, ExitWatch)> {
        let cache = match self.watches.namespace(&record.namespace).await {
            Ok(cache) => cache,
            Err(e) => {
                warn!(instance = %id, "cannot look for its Deployment: {}", e.message);
                return None;
            }
        };
        let deployment = cache.deployment(&record.name)?;
        if deployment.metadata.uid.as_deref() != Some(record.uid.as_str())
            || replicas(&deployment) == 0
        {
            return None;
        }
        let tracked = self
            .watches
            .track(id, &record.namespace, &record.name, &record.uid, 0, true);
        Some((
            DeploymentHandle {
                namespace: record.namespace.clone(),
                name: record.name.clone(),
                condition: tracked.condition,
            },
            tracked.exit,
        ))
    }

    async fn stop(
        &self,
        id: &InstanceId,
        handle: &DeploymentHandle,
        exit: &ExitWatch,
        grace: Duration,
    ) -> Result<(), DriverError> {
        self.scale_to_zero(&handle.namespace, &handle.name).await?;
        if tokio::time::timeout(grace + STOP_SLACK, exit.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        warn!(instance = %id, "the pod did not stop in time; deleting it");
        self.force_delete_pods(id, &handle.namespace).await;
        tokio::time::timeout(KILL_WAIT, exit.wait())
            .await
            .map(|_| ())
            .map_err(|_| {
                DriverError::new(
                    ErrorCode::PlatformError,
                    format!(
                        "the pod of Deployment '{}/{}' did not go away",
                        handle.namespace, handle.name
                    ),
                )
            })
    }

    async fn kill(&self, id: &InstanceId, handle: &DeploymentHandle) {
        if let Err(e) = self.scale_to_zero(&handle.namespace, &handle.name).await {
            warn!(instance = %id, "{}", e.message);
        }
        self.force_delete_pods(id, &handle.namespace).await;
    }

    async fn last_words(
        &self,
        id: &InstanceId,
        record: &DeploymentRecord,
        _starting: bool,
    ) -> String {
        let Ok(cache) = self.watches.namespace(&record.namespace).await else {
            return String::new();
        };
        let Some(pod) = Self::newest_pod(&cache, id) else {
            return String::new();
        };
        match self.pod_log(&record.namespace, &pod, 5).await {
            Ok(lines) => lines.join("\n").trim().to_string(),
            Err(e) => {
                warn!(instance = %id, "cannot read the pod's log: {e}");
                String::new()
            }
        }
    }

    async fn logs(
        &self,
        id: &InstanceId,
        record: Option<&DeploymentRecord>,
        spec: &LogsSpec,
    ) -> Result<Vec<String>, DriverError> {
        let caches = self
            .caches_for(record.map(|r| r.namespace.as_str()))
            .await?;
        // Kubernetes keeps one stream per container: stdout and stderr
        // together, whichever is asked for.
        for cache in caches {
            if let Some(pod) = Self::newest_pod(&cache, id) {
                return self
                    .pod_log(&cache.namespace, &pod, spec.tail)
                    .await
                    .map_err(|e| {
                        DriverError::new(
                            ErrorCode::PlatformError,
                            format!("cannot read the log of pod {}: {e}", pod.name_any()),
                        )
                    });
            }
        }
        Ok(Vec::new())
    }

    async fn remove(
        &self,
        id: &InstanceId,
        record: Option<&DeploymentRecord>,
    ) -> Result<(), DriverError> {
        self.watches.untrack(id);
        let caches = self
            .caches_for(record.map(|r| r.namespace.as_str()))
            .await?;
        let mut changes = self.watches.changes();
        for cache in &caches {
            self.delete_objects(id, cache).await?;
        }
        let deadline = tokio::time::Instant::now() + REMOVE_WITHIN;
        loop {
            let left: Vec<String> = caches.iter().flat_map(|c| c.objects_of(id)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(DriverError::new(
                    ErrorCode::PlatformError,
                    format!(
                        "still there {REMOVE_WITHIN:?} after deleting: {}",
                        left.join(", ")
                    ),
                ));
            }
        }
    }

    fn note(&self, id: &InstanceId, spec: &StartSpec) -> Option<String> {
        // Said where it matters: a configuration that keeps data
        // (persistent indexes, a state store).
        let config = draas_core::config::parse_yaml_as::<draas_core::config::DrasiServerConfig>(
            &spec.configuration_yaml,
        )
        .ok()?;
        let keeps_data = config
            .lib_instances()
            .iter()
            .any(|lib| lib.persist_index || lib.state_store.is_some());
        if !keeps_data {
            return None;
        }
        Some(
            match &spec.server_configuration.kubernetes().persistent_volume {
                Some(volume) => format!(
                    "data on the PersistentVolumeClaim {} ({})",
                    manifests::claim_name(&manifests::object_name(&spec.name, id)),
                    volume.size
                ),
                None => "data in an emptyDir: lost with the pod (set \
                     serverConfiguration.kubernetes.persistentVolume to keep it)"
                    .to_string(),
            },
        )
    }

    fn handle_of(&self, record: &DeploymentRecord) -> PlatformHandle {
        PlatformHandle::Deployment {
            namespace: record.namespace.clone(),
            name: record.name.clone(),
            revision: Some(record.revision),
        }
    }

    fn server_api(&self, record: &DeploymentRecord, _address: &ServerAddress) -> ServerApi {
        ServerApi::over(Arc::new(ServiceProxy::new(
            self.cluster.client.clone(),
            &record.namespace,
            &record.name,
        )))
    }

    fn condition(&self, handle: &DeploymentHandle) -> Option<watch::Receiver<Condition>> {
        Some(handle.condition.clone())
    }
}
