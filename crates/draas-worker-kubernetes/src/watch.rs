//! What the worker knows of the cluster: watches, never polls.
//!
//! Per namespace it works in, the worker watches this installation's
//! Deployments and Pods (whole objects: their status is the servers'
//! status) and its ConfigMaps, Secrets and Services (metadata only: the
//! [`SPEC_HASH`](crate::manifests::SPEC_HASH) annotation says whether an
//! apply is needed), each through a kube-runtime watcher into a reflector
//! store, all with the installation's label selector.
//!
//! Every server the worker runs has a [`Tracker`]: on each Deployment or
//! Pod event of its instance, [`observe`] says what it is, and the tracker
//! publishes it: a changed [`Condition`] to the generic half, or its end
//! (the Deployment deleted, replaced, or scaled to zero with no pod left)
//! through its [`ExitNotifier`].

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use draas_core::instance::{ActualState, InstanceId, Reason};
use draas_core::messages::ErrorCode;
use draas_core::ports::DriverError;
use draas_worker::driver::{exit_channel, Condition, Exit, ExitNotifier, ExitWatch};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::warn;

use crate::manifests::INSTANCE_ID;
use crate::observe::{observe, Observed};

/// How long the first listing of a namespace may take.
const SYNC_WITHIN: Duration = Duration::from_secs(30);

/// This installation's objects in one namespace.
pub struct NamespaceCache {
    /// The namespace.
    pub namespace: String,
    /// Deployments.
    pub deployments: Store<Deployment>,
    /// Pods.
    pub pods: Store<Pod>,
    /// ConfigMaps (metadata).
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// Secrets (metadata).
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// Services (metadata).
    pub services: Store<PartialObjectMeta<Service>>,
    /// The last error of any of its watches.
    last_error: Arc<Mutex<Option<String>>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for NamespaceCache {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn instance_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<InstanceId> {
    meta.labels.as_ref()?.get(INSTANCE_ID)?.parse().ok()
}

impl NamespaceCache {
    /// The Deployment named `name`.
    pub fn deployment(&self, name: &str) -> Option<Arc<Deployment>> {
        self.deployments
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// The pods of instance `id`.
    pub fn pods_of(&self, id: &InstanceId) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| instance_of(&p.metadata).as_ref() == Some(id))
            .collect()
    }

    /// The spec hash an object of `store` named `name` was applied with,
    /// and whether it exists.
    pub fn applied<K>(
        store: &Store<PartialObjectMeta<K>>,
        namespace: &str,
        name: &str,
    ) -> Option<Option<String>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        store
            .get(&ObjectRef::new(name).within(namespace))
            .map(|o| crate::manifests::applied_hash(&o.metadata).map(str::to_string))
    }

    /// What of instance `id` is here, by kind and name (empty: nothing).
    pub fn objects_of(&self, id: &InstanceId) -> Vec<String> {
        let mut found = Vec::new();
        let mut add =
            |kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                if instance_of(meta).as_ref() == Some(id) {
                    found.push(format!(
                        "{kind} {}/{}",
                        self.namespace,
                        meta.name.as_deref().unwrap_or("?")
                    ));
                }
            };
        for d in self.deployments.state() {
            add("Deployment", &d.metadata);
        }
        for p in self.pods.state() {
            add("Pod", &p.metadata);
        }
        for c in self.config_maps.state() {
            add("ConfigMap", &c.metadata);
        }
        for s in self.secrets.state() {
            add("Secret", &s.metadata);
        }
        for s in self.services.state() {
            add("Service", &s.metadata);
        }
        found
    }

    /// Every instance with an object here.
    pub fn instances(&self) -> BTreeSet<InstanceId> {
        let mut ids = BTreeSet::new();
        let metas = self
            .deployments
            .state()
            .iter()
            .map(|d| d.metadata.clone())
            .chain(self.pods.state().iter().map(|p| p.metadata.clone()))
            .chain(self.config_maps.state().iter().map(|c| c.metadata.clone()))
            .chain(self.secrets.state().iter().map(|s| s.metadata.clone()))
            .chain(self.services.state().iter().map(|s| s.metadata.clone()))
            .collect::<Vec<_>>();
        for meta in metas {
            if let Some(id) = instance_of(&meta) {
                ids.insert(id);
            }
        }
        ids
    }

    async fn synced(&self) -> Result<(), String> {
        let ready = async {
            let _ = futures::join!(
                self.deployments.wait_until_ready(),
                self.pods.wait_until_ready(),
                self.config_maps.wait_until_ready(),
                self.secrets.wait_until_ready(),
                self.services.wait_until_ready(),
            );
        };
        tokio::time::timeout(SYNC_WITHIN, ready).await.map_err(|_| {
            self.last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| format!("no answer within {SYNC_WITHIN:?}"))
        })
    }
}

/// A server the worker runs; see the module docs.
struct Tracker {
    namespace: String,
    name: String,
    uid: String,
    /// Deployment states older than this (`metadata.generation`) are from
    /// before the launch, seen late.
    min_generation: i64,
    /// Whether the watch has shown this Deployment yet.
    seen: bool,
    condition: watch::Sender<Condition>,
    exit: ExitNotifier,
}

/// A live view of one tracked server, for its driver handle.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// Its condition.
    pub condition: watch::Receiver<Condition>,
    /// Its end.
    pub exit: ExitWatch,
}

/// The worker's watches; see the module docs.
pub struct Watches {
    client: Client,
    selector: String,
    namespaces: Mutex<HashMap<String, Arc<NamespaceCache>>>,
    trackers: Arc<Mutex<HashMap<InstanceId, Tracker>>>,
    /// Bumped on every event: what waits for the cache to change.
    changed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watches {
    /// Watches of the objects `selector` selects.
    pub fn new(client: Client, selector: String) -> Arc<Self> {
        Arc::new(Self {
            client,
            selector,
            namespaces: Mutex::new(HashMap::new()),
            trackers: Arc::new(Mutex::new(HashMap::new())),
            changed: watch::channel(0).0,
        })
    }

    /// The namespaces watched so far.
    pub fn watched(&self) -> Vec<Arc<NamespaceCache>> {
        lock(&self.namespaces).values().cloned().collect()
    }

    /// Something to wait on for the next change of any cache.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The cache of `namespace`, watching it first if needed (and waiting
    /// for its first listing).
    pub async fn namespace(
        self: &Arc<Self>,
        namespace: &str,
    ) -> Result<Arc<NamespaceCache>, DriverError> {
        let cache = {
            let mut namespaces = lock(&self.namespaces);
            match namespaces.get(namespace) {
                Some(cache) => cache.clone(),
                None => {
                    let cache = Arc::new(self.start(namespace));
                    namespaces.insert(namespace.to_string(), cache.clone());
                    cache
                }
            }
        };
        if let Err(why) = cache.synced().await {
            let mut namespaces = lock(&self.namespaces);
            if namespaces
                .get(namespace)
                .is_some_and(|c| Arc::ptr_eq(c, &cache))
            {
                namespaces.remove(namespace);
            }
            return Err(DriverError::new(
                ErrorCode::PlatformError,
                format!("cannot watch namespace '{namespace}': {why}"),
            )
            .with_state(ActualState::Failed, Reason::PlatformError));
        }
        Ok(cache)
    }

    fn start(self: &Arc<Self>, namespace: &str) -> NamespaceCache {
        let last_error = Arc::new(Mutex::new(None));
        let mut tasks = Vec::new();
        let (deployments, writer) = reflector::store();
        tasks.push(self.spawn_watch(
            Api::<Deployment>::namespaced(self.client.clone(), namespace),
            writer,
            last_error.clone(),
            true,
        ));
        let (pods, writer) = reflector::store();
        tasks.push(self.spawn_watch(
            Api::<Pod>::namespaced(self.client.clone(), namespace),
            writer,
            last_error.clone(),
            true,
        ));
        let (config_maps, writer) = reflector::store();
        tasks.push(self.spawn_watch(
            Api::<PartialObjectMeta<ConfigMap>>::namespaced(self.client.clone(), namespace),
            writer,
            last_error.clone(),
            false,
        ));
        let (secrets, writer) = reflector::store();
        tasks.push(self.spawn_watch(
            Api::<PartialObjectMeta<Secret>>::namespaced(self.client.clone(), namespace),
            writer,
            last_error.clone(),
            false,
        ));
        let (services, writer) = reflector::store();
        tasks.push(self.spawn_watch(
            Api::<PartialObjectMeta<Service>>::namespaced(self.client.clone(), namespace),
            writer,
            last_error.clone(),
            false,
        ));
        NamespaceCache {
            namespace: namespace.to_string(),
            deployments,
            pods,
            config_maps,
            secrets,
            services,
            last_error,
            tasks,
        }
    }

    /// Follows one kind into its store; `tracked`: its events may change
    /// what a tracker sees.
    fn spawn_watch<K>(
        self: &Arc<Self>,
        api: Api<K>,
        mut writer: reflector::store::Writer<K>,
        last_error: Arc<Mutex<Option<String>>>,
        tracked: bool,
    ) -> AbortHandle
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let weak = Arc::downgrade(self);
        let namespace = api.resource_url().to_string();
        let config = watcher::Config::default().labels(&self.selector);
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        warn!("watching {namespace}: {e}");
                        *lock(&last_error) = Some(e.to_string());
                        continue;
                    }
                };
                writer.apply_watcher_event(&event);
                let Some(me) = weak.upgrade() else { return };
                if tracked {
                    match &event {
                        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => {
                            if let Some(id) = instance_of(o.meta()) {
                                me.evaluate(&id);
                            }
                        }
                        Event::InitDone => me.evaluate_all(),
                        Event::Init => {}
                    }
                }
                me.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        })
        .abort_handle()
    }

    /// Tracks the server of `id`: Deployment `name` (`uid`) in `namespace`,
    /// launched at `metadata.generation` `generation` (`seen`: the caller
    /// read it from the watch).
    pub fn track(
        &self,
        id: &InstanceId,
        namespace: &str,
        name: &str,
        uid: &str,
        generation: i64,
        seen: bool,
    ) -> Tracked {
        let (condition, receiver) = watch::channel(Condition::Waiting {
            state: ActualState::Pending,
            reason: None,
            message: "waiting for Kubernetes to create the server's pod".into(),
        });
        let (exit, exit_watch) = exit_channel();
        lock(&self.trackers).insert(
            id.clone(),
            Tracker {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                min_generation: generation,
                seen,
                condition,
                exit,
            },
        );
        self.evaluate(id);
        Tracked {
            condition: receiver,
            exit: exit_watch,
        }
    }

    /// Stops tracking `id`.
    pub fn untrack(&self, id: &InstanceId) {
        lock(&self.trackers).remove(id);
    }

    fn evaluate_all(&self) {
        let ids: Vec<InstanceId> = lock(&self.trackers).keys().cloned().collect();
        for id in ids {
            self.evaluate(&id);
        }
    }

    /// Publishes what the caches now say of the server of `id`.
    fn evaluate(&self, id: &InstanceId) {
        let namespace = match lock(&self.trackers).get(id) {
            Some(t) => t.namespace.clone(),
            None => return,
        };
        let Some(cache) = lock(&self.namespaces).get(&namespace).cloned() else {
            return;
        };
        let mut trackers = lock(&self.trackers);
        let Some(tracker) = trackers.get_mut(id) else {
            return;
        };
        let deployment = cache.deployment(&tracker.name);
        let ended = match deployment.as_deref() {
            None if tracker.seen => Some(Exit::because(
                Reason::PlatformError,
                "ended: its Deployment was deleted outside DRaaS",
            )),
            None => None,
            Some(d) if d.metadata.uid.as_deref() != Some(tracker.uid.as_str()) => {
                tracker.seen.then(|| {
                    Exit::because(
                        Reason::PlatformError,
                        "ended: its Deployment was replaced outside DRaaS",
                    )
                })
            }
            Some(d) if d.metadata.generation.unwrap_or(0) < tracker.min_generation => None,
            Some(d) => {
                tracker.seen = true;
                let pods = cache.pods_of(id);
                let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
                match observe(Some(d), &pods) {
                    Observed::ScaledDown { pods: 0 } => Some(Exit::because(
                        Reason::PlatformError,
                        "ended: its Deployment was scaled to zero",
                    )),
                    Observed::ScaledDown { .. } | Observed::Absent => None,
                    Observed::Live(condition) => {
                        tracker.condition.send_if_modified(|current| {
                            if *current == condition {
                                false
                            } else {
                                *current = condition;
                                true
                            }
                        });
                        None
                    }
                }
            }
        };
        if let Some(exit) = ended {
            tracker.exit.exited(exit);
            trackers.remove(id);
        }
    }
}
