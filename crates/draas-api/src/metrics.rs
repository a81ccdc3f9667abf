//! `/metrics`: what the control plane is doing, in the Prometheus text
//! format, every name prefixed `draas_`.
//!
//! Measured as it happens: request latency by route, method and status
//! (`draas_http_request_duration_seconds`), command latency by kind and
//! outcome (`draas_command_duration_seconds`), restarts the reconciler
//! asked for (`draas_restarts_total`). Read from the store and the bus at
//! each scrape: instances by platform and state (`draas_instances`), live
//! workers and their heartbeat age (`draas_workers`,
//! `draas_worker_heartbeat_age_seconds`), the command backlog per channel
//! (`draas_bus_backlog`) and dead letters per platform
//! (`draas_bus_dead_letters`); and of every running instance's server, as
//! its worker last read it (every 10 s), by instance name, component id and
//! kind: whether each component runs (`draas_component_running`), a query's
//! result rows, changes emitted and bootstrap (`draas_query_results`,
//! `draas_query_results_emitted`, `draas_query_bootstrap_elements`,
//! `draas_query_bootstrap_seconds`), a reaction's checkpoint lag
//! (`draas_reaction_checkpoint_lag`).

use std::time::Duration;

use chrono::Utc;
use draas_core::instance::PlatformType;
use draas_core::keys;
use draas_core::messages::WorkerInfo;
use draas_core::ports::store::JsonStore;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::error::ApiResult;
use crate::service::ControlPlane;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    platform: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabels {
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    platform: String,
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

/// One component of one instance's server: labels bounded by the
/// configurations (the instance's name, the component's id and kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    instance: String,
    component: String,
    kind: String,
}

/// The data plane's gauges, read from what workers last recorded.
struct DataPlaneMetrics {
    up: Family<ComponentLabels, Gauge>,
    results: Family<ComponentLabels, Gauge>,
    emitted: Family<ComponentLabels, Gauge>,
    bootstrap_elements: Family<ComponentLabels, Gauge>,
    bootstrap_seconds: Family<ComponentLabels, Gauge<f64, AtomicU64>>,
    checkpoint_lag: Family<ComponentLabels, Gauge>,
}

impl DataPlaneMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            up: Family::default(),
            results: Family::default(),
            emitted: Family::default(),
            bootstrap_elements: Family::default(),
            bootstrap_seconds: Family::default(),
            checkpoint_lag: Family::default(),
        };
        registry.register(
            "component_running",
            "1 when a source, query or reaction of an instance's server runs, 0 otherwise (as its worker last read it)",
            metrics.up.clone(),
        );
        registry.register(
            "query_results",
            "Rows in a running query's result set",
            metrics.results.clone(),
        );
        registry.register(
            "query_results_emitted",
            "Result changes a query emitted since its server started",
            metrics.emitted.clone(),
        );
        registry.register(
            "query_bootstrap_elements",
            "Elements a query's bootstrap loaded (sources whose provider the runtime counts)",
            metrics.bootstrap_elements.clone(),
        );
        registry.register(
            "query_bootstrap_seconds",
            "How long a query's bootstrap took",
            metrics.bootstrap_seconds.clone(),
        );
        registry.register(
            "reaction_checkpoint_lag",
            "Result changes of its queries a reaction has not confirmed handled",
            metrics.checkpoint_lag.clone(),
        );
        metrics
    }

    fn clear(&self) {
        self.up.clear();
        self.results.clear();
        self.emitted.clear();
        self.bootstrap_elements.clear();
        self.bootstrap_seconds.clear();
        self.checkpoint_lag.clear();
    }

    fn count(&self, instance: &str, plane: &draas_core::dataplane::DataPlane) {
        let several = plane.instances.len() > 1;
        for (lib, kind, component) in plane.components() {
            let labels = ComponentLabels {
                instance: instance.to_string(),
                component: if several {
                    format!("{lib}/{}", component.id)
                } else {
                    component.id.clone()
                },
                kind: kind.to_string(),
            };
            self.up
                .get_or_create(&labels)
                .set(i64::from(component.status == "Running"));
            let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            if let Some(metrics) = &component.metrics {
                if let Some(n) = metrics.result_count {
                    self.results.get_or_create(&labels).set(as_gauge(n));
                }
                if let Some(n) = metrics.results_emitted {
                    self.emitted.get_or_create(&labels).set(as_gauge(n));
                }
                if let Some(n) = metrics.checkpoint_lag {
                    self.checkpoint_lag.get_or_create(&labels).set(as_gauge(n));
                }
            }
            if let Some(bootstrap) = &component.bootstrap {
                self.bootstrap_elements
                    .get_or_create(&labels)
                    .set(as_gauge(bootstrap.elements));
                if let Some(ms) = bootstrap.duration_ms {
                    self.bootstrap_seconds
                        .get_or_create(&labels)
                        .set(ms as f64 / 1000.0);
                }
            }
        }
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The control plane's metrics.
pub struct Metrics {
    registry: Registry,
    http: Family<HttpLabels, Histogram, fn() -> Histogram>,
    commands: Family<CommandLabels, Histogram, fn() -> Histogram>,
    restarts: Family<PlatformLabels, Counter>,
    instances: Family<InstanceLabels, Gauge>,
    workers: Family<PlatformLabels, Gauge>,
    heartbeat_age: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    backlog: Family<ChannelLabels, Gauge>,
    dead_letters: Family<PlatformLabels, Gauge>,
    data_plane: DataPlaneMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("draas");
        let http = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an API request, by route template, method and status",
            http.clone(),
        );
        let commands = Family::<CommandLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "command_duration_seconds",
            "Time from sending a command to a worker to its reply, by kind and outcome (ok or the error code)",
            commands.clone(),
        );
        let restarts = Family::<PlatformLabels, Counter>::default();
        registry.register(
            "restarts",
            "Restarts of failed instances the reconciler asked for",
            restarts.clone(),
        );
        let instances = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "instances",
            "Instances by platform and actual state",
            instances.clone(),
        );
        let workers = Family::<PlatformLabels, Gauge>::default();
        registry.register("workers", "Live workers by platform", workers.clone());
        let heartbeat_age = Family::<WorkerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "worker_heartbeat_age_seconds",
            "Seconds since each live worker's last heartbeat",
            heartbeat_age.clone(),
        );
        let backlog = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "bus_backlog",
            "Commands on a channel no worker has finished with",
            backlog.clone(),
        );
        let dead_letters = Family::<PlatformLabels, Gauge>::default();
        registry.register(
            "bus_dead_letters",
            "Commands the bus gave up on, by platform (the newest 1000 are counted)",
            dead_letters.clone(),
        );
        let data_plane = DataPlaneMetrics::register(&mut registry);
        Self {
            registry,
            http,
            commands,
            restarts,
            instances,
            workers,
            heartbeat_age,
            backlog,
            dead_letters,
            data_plane,
        }
    }

    /// One answered request.
    pub fn request(&self, route: &str, method: &str, code: u16, took: Duration) {
        self.http
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                code,
            })
            .observe(took.as_secs_f64());
    }

    /// One command and its outcome.
    pub fn command(&self, kind: &str, outcome: &str, took: Duration) {
        self.commands
            .get_or_create(&CommandLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// One restart of a failed instance.
    pub fn restart(&self, platform: PlatformType) {
        self.restarts
            .get_or_create(&PlatformLabels {
                platform: platform.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the gauges read now.
    pub async fn render(&self, cp: &ControlPlane) -> ApiResult<String> {
        let instances = draas_core::records::list(cp.store().as_ref()).await?;
        self.instances.clear();
        for instance in &instances {
            self.instances
                .get_or_create(&InstanceLabels {
                    platform: instance.platform_type.to_string(),
                    state: format!("{:?}", instance.status.state),
                })
                .inc();
        }
        // The data planes of servers that run, as their workers last read
        // them.
        self.data_plane.clear();
        let planes = cp
            .store()
            .list_json::<draas_core::dataplane::DataPlane>(keys::DATA_PLANE)
            .await?;
        for (id, plane) in planes {
            let running = instances
                .iter()
                .find(|instance| instance.id.as_str() == id)
                .filter(|instance| instance.status.state.is_active());
            if let Some(instance) = running {
                self.data_plane.count(&instance.name, &plane.value);
            }
        }
        let workers = cp.live_workers(None).await?;
        self.workers.clear();
        self.heartbeat_age.clear();
        self.backlog.clear();
        let now = Utc::now();
        for worker in &workers {
            self.count_worker(worker, now);
        }
        for platform in [
            PlatformType::Process,
            PlatformType::Docker,
            PlatformType::Kubernetes,
        ] {
            let label = PlatformLabels {
                platform: platform.to_string(),
            };
            // Present (0) even without workers, so alerts see it.
            drop(self.workers.get_or_create(&label));
            let mut channels = vec![platform.command_channel().to_string()];
            channels.extend(
                workers
                    .iter()
                    .filter(|w| w.platform == platform)
                    .map(|w| platform.worker_channel(&w.worker_id)),
            );
            for channel in channels {
                let waiting = cp.bus().backlog(&channel).await?;
                self.backlog
                    .get_or_create(&ChannelLabels { channel })
                    .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            }
            let letters = cp
                .bus()
                .dead_letters(platform.command_channel(), 1000)
                .await?
                .len();
            self.dead_letters
                .get_or_create(&label)
                .set(i64::try_from(letters).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|e| crate::error::ApiError::internal(format!("cannot encode metrics: {e}")))?;
        Ok(text)
    }

    fn count_worker(&self, worker: &WorkerInfo, now: chrono::DateTime<Utc>) {
        self.workers
            .get_or_create(&PlatformLabels {
                platform: worker.platform.to_string(),
            })
            .inc();
        let age = (now - worker.last_heartbeat).num_milliseconds().max(0) as f64 / 1000.0;
        self.heartbeat_age
            .get_or_create(&WorkerLabels {
                platform: worker.platform.to_string(),
                worker: worker.worker_id.clone(),
            })
            .set(age);
    }
}
