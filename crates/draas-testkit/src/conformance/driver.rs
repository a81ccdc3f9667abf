//! Conformance checks of a [`PlatformDriver`]: every platform's driver must
//! pass them, against its real platform (real processes, the real Docker
//! Engine, a real API server), through a [`DriverFixture`] the platform's
//! tests provide.
//!
//! The suite drives the driver as its worker does: built from a
//! [`WorkerContext`] (so it reports through the worker's status recorder),
//! over a store and bus the caller gives, with instance records in the
//! store for the recorder to update. A "worker restart" is a new driver
//! from a new context with the same worker id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use draas_core::config::DrasiServerConfig;
use draas_core::instance::{
    ActualState, DesiredState, Instance, InstanceId, InstanceStatus, PlatformHandle, PlatformType,
    Reason, RuntimeInfo, ServerConfiguration,
};
use draas_core::keys;
use draas_core::messages::{LogStream, LogsSpec, StartSpec, StopSpec};
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::{MessageBus, PlatformDriver, StateStore};
use draas_worker::{WorkerContext, WorkerSettings};

/// Something a forged record points at: it must survive whatever the
/// driver does with the record.
pub trait Impostor: Send {
    /// Whether it still runs.
    fn alive(&mut self) -> bool;
}

/// The real platform, as the suite needs it.
#[async_trait]
pub trait DriverFixture: Send + Sync {
    /// The platform.
    fn platform(&self) -> PlatformType;

    /// A driver for the worker of `context` (called again, with a fresh
    /// context of the same worker id, to simulate a worker restart).
    async fn driver(&self, context: &WorkerContext) -> Arc<dyn PlatformDriver>;

    /// What launching a small real server (a mock source and a query) for
    /// instance `id` at `generation` takes, on ports free right now.
    fn start_spec(&self, id: &InstanceId, generation: u64) -> StartSpec;

    /// Kills the server of `handle` behind the driver's back (`kill -9`,
    /// `docker kill`; on Kubernetes, its container, which the kubelet then
    /// restarts).
    async fn crash(&self, handle: &PlatformHandle);

    /// Makes the server of `handle` go away for good behind the driver's
    /// back. Default: [`crash`](Self::crash), where a crashed server stays
    /// dead; on Kubernetes, its Deployment is deleted.
    async fn vanish(&self, handle: &PlatformHandle) {
        self.crash(handle).await;
    }

    /// Whether the platform restarts a crashed server itself (Kubernetes):
    /// then a crash is reported as it happens and the server stays managed
    /// and comes back `Running`.
    fn restarts_crashed_servers(&self) -> bool {
        false
    }

    /// Whether a stopped server's output can still be read (files and
    /// stopped containers keep it; a deleted pod's logs are gone).
    fn output_outlives_the_server(&self) -> bool {
        true
    }

    /// Whether the server whose runtime info is `runtime` answers
    /// `/health`, asked the way a user of the platform would. Default:
    /// `GET {endpoint}/health`.
    async fn answers_health(&self, runtime: &RuntimeInfo) -> bool {
        reqwest::get(format!("{}/health", runtime.endpoint))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Whether the server of `handle` still runs on the platform.
    async fn is_running(&self, handle: &PlatformHandle) -> bool;

    /// What is left of instance `id` on the platform (files, containers,
    /// volumes), named for the failure message; empty when nothing.
    async fn leftovers(&self, id: &InstanceId) -> Vec<String>;

    /// Rewrites the persisted record of `id`'s server (whose server is
    /// gone) so that its handle names something unrelated that runs: what
    /// a reused pid or a recycled container id looks like.
    async fn impersonate(&self, store: &dyn StateStore, id: &InstanceId) -> Box<dyn Impostor>;
}

/// How long a crash may take to be reported.
const CRASH_REPORTED_WITHIN: Duration = Duration::from_secs(1);

/// Runs every check against the fixture's platform, over `store` and `bus`.
pub async fn run_all(
    fixture: &dyn DriverFixture,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
) {
    let suite = Suite {
        fixture,
        store,
        bus,
        worker_id: format!(
            "conformance-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
    };
    suite
        .start_reaches_ready_and_a_repeated_start_relaunches_nothing()
        .await;
    suite.stopping_a_stopped_server_succeeds().await;
    suite.a_crash_is_reported_at_once_with_its_reason().await;
    suite.logs_show_the_servers_output().await;
    suite.delete_leaves_nothing_behind().await;
    suite
        .recover_adopts_what_runs_and_reports_what_is_gone()
        .await;
    suite.a_reused_handle_is_never_signalled().await;
    suite
        .an_adopted_server_that_dies_at_once_is_reported_failed()
        .await;
}

struct Suite<'a> {
    fixture: &'a dyn DriverFixture,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
    worker_id: String,
}

fn stop_spec() -> StopSpec {
    StopSpec::grace(5)
}

impl Suite<'_> {
    /// A worker context (a fresh incarnation of the suite's worker).
    fn context(&self) -> WorkerContext {
        WorkerContext::new(
            WorkerSettings {
                worker_id: self.worker_id.clone(),
                host: "conformance".into(),
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_ttl: Duration::from_secs(3),
                concurrency: 8,
                capacity: None,
                orphan_sweep_every: std::time::Duration::from_secs(30),
            },
            self.store.clone(),
            self.bus.clone(),
        )
    }

    async fn driver(&self) -> Arc<dyn PlatformDriver> {
        self.fixture.driver(&self.context()).await
    }

    /// A new instance record (the recorder updates it).
    async fn instance(&self, name: &str) -> InstanceId {
        let id = InstanceId::generate();
        let platform = self.fixture.platform();
        let now = Utc::now();
        let instance = Instance {
            id: id.clone(),
            name: format!("{name}-{}", &id.as_str()[id.as_str().len() - 6..]),
            description: String::new(),
            platform_type: platform,
            created_at: now,
            updated_at: now,
            desired_state: DesiredState::Running,
            generation: 1,
            server_configuration: ServerConfiguration::for_platform(platform),
            configuration: DrasiServerConfig::empty("127.0.0.1", 0),
            restart_policy: Default::default(),
            update_strategy: Default::default(),
            status: InstanceStatus::created(now),
            runtime: None,
            deleted_at: None,
        };
        self.store
            .apply(draas_core::records::create_writes(&instance).expect("encode"))
            .await
            .expect("store the instance");
        id
    }

    async fn recorded(&self, id: &InstanceId) -> Instance {
        draas_core::records::read(self.store.as_ref(), id)
            .await
            .expect("read the instance")
            .expect("the instance exists")
            .instance()
    }

    /// Waits until the recorded state of `id` is `state`.
    async fn recorded_state(
        &self,
        id: &InstanceId,
        state: ActualState,
        limit: Duration,
    ) -> Instance {
        let deadline = Instant::now() + limit;
        loop {
            let instance = self.recorded(id).await;
            if instance.status.state == state {
                return instance;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: not {state:?} within {limit:?}: {:?}",
                instance.status
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn start(&self, driver: &Arc<dyn PlatformDriver>, id: &InstanceId) -> PlatformHandle {
        let spec = self.fixture.start_spec(id, 1);
        let started = driver.start(id, &spec).await.expect("start");
        assert_eq!(started.state, ActualState::Running, "{started:?}");
        let handle = started.runtime.handle.clone().expect("a platform handle");
        // Recorded as the worker's executor would.
        self.store_running(id, &started.runtime).await;
        handle
    }

    async fn store_running(&self, id: &InstanceId, runtime: &draas_core::instance::RuntimeInfo) {
        let mut instance = self.recorded(id).await;
        instance.status.state = ActualState::Running;
        instance.status.reason = Some(Reason::Ready);
        instance.status.observed_generation = 1;
        instance.status.updated_at = Utc::now();
        instance.runtime = Some(runtime.clone());
        self.store
            .put_json(
                keys::INSTANCE_STATUS,
                id.as_str(),
                &instance.observed(),
                Precondition::None,
            )
            .await
            .expect("record Running");
    }

    async fn start_reaches_ready_and_a_repeated_start_relaunches_nothing(&self) {
        let driver = self.driver().await;
        let id = self.instance("ready").await;
        let spec = self.fixture.start_spec(&id, 1);
        let first = driver.start(&id, &spec).await.expect("start");
        assert_eq!(first.state, ActualState::Running, "{first:?}");
        assert!(
            self.fixture.answers_health(&first.runtime).await,
            "{}/health answers once the start returned",
            first.runtime.endpoint
        );
        assert_eq!(driver.running_generation(&id).await, Some(1));
        let live = driver.status(&id).await.expect("status");
        assert!(live.running && live.healthy == Some(true), "{live:?}");
        let components = live.components.expect("components");
        assert!(
            components.queries.iter().all(|q| q.status == "Running"),
            "{components:?}"
        );

        let again = driver.start(&id, &spec).await.expect("start again");
        assert_eq!(
            again.runtime.handle, first.runtime.handle,
            "a second start of the same generation relaunches nothing"
        );
        assert_eq!(driver.running().await, 1);

        let next = self.fixture.start_spec(&id, 2);
        let second = driver.start(&id, &next).await.expect("start generation 2");
        assert_ne!(
            second.runtime.handle, first.runtime.handle,
            "a new generation is a new server"
        );
        let old = first.runtime.handle.clone().expect("handle");
        assert!(
            !self.fixture.is_running(&old).await,
            "the old generation's server is gone"
        );
        driver.delete(&id, &stop_spec()).await.expect("delete");
    }

    async fn stopping_a_stopped_server_succeeds(&self) {
        let driver = self.driver().await;
        let id = self.instance("stops").await;
        let handle = self.start(&driver, &id).await;
        driver.stop(&id, &stop_spec()).await.expect("stop");
        assert!(!self.fixture.is_running(&handle).await, "stopped for real");
        assert_eq!(driver.running_generation(&id).await, None);
        driver.stop(&id, &stop_spec()).await.expect("stop again");
        let never = self.instance("never-started").await;
        driver
            .stop(&never, &stop_spec())
            .await
            .expect("stop of a server never started");
        assert!(!driver.status(&id).await.expect("status").running);
        driver.delete(&id, &stop_spec()).await.expect("delete");
        driver.delete(&never, &stop_spec()).await.expect("delete");
    }

    async fn a_crash_is_reported_at_once_with_its_reason(&self) {
        let driver = self.driver().await;
        let id = self.instance("crashes").await;
        let handle = self.start(&driver, &id).await;
        let crashed = Instant::now();
        self.fixture.crash(&handle).await;
        let failed = self
            .recorded_state(&id, ActualState::Failed, CRASH_REPORTED_WITHIN)
            .await;
        let took = crashed.elapsed();
        assert!(
            matches!(
                failed.status.reason,
                Some(
                    Reason::KilledBySignal
                        | Reason::ExitedWithCode
                        | Reason::OomKilled
                        | Reason::CrashLoopBackOff
                )
            ),
            "{:?}",
            failed.status
        );
        assert!(
            failed
                .status
                .message
                .as_deref()
                .is_some_and(|m| !m.is_empty()),
            "the crash says why: {:?}",
            failed.status
        );
        assert!(took <= CRASH_REPORTED_WITHIN, "{took:?}");
        if self.fixture.restarts_crashed_servers() {
            // The platform starts it again, and it is seen coming back.
            let back = self
                .recorded_state(&id, ActualState::Running, Duration::from_secs(30))
                .await;
            assert_eq!(back.status.reason, Some(Reason::Ready), "{:?}", back.status);
            assert_eq!(driver.running().await, 1, "still managed");
            assert_eq!(driver.running_generation(&id).await, Some(1));
            assert!(self.fixture.is_running(&handle).await);
        } else {
            assert_eq!(driver.running().await, 0, "no longer managed");
        }
        driver.delete(&id, &stop_spec()).await.expect("delete");
    }

    async fn logs_show_the_servers_output(&self) {
        let driver = self.driver().await;
        let id = self.instance("talks").await;
        self.start(&driver, &id).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = driver
                .logs(
                    &id,
                    &LogsSpec {
                        tail: 50,
                        stream: LogStream::Stdout,
                    },
                )
                .await
                .expect("logs");
            if !lines.is_empty() {
                assert!(lines.len() <= 50);
                break;
            }
            assert!(Instant::now() < deadline, "no output within 10 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver.stop(&id, &stop_spec()).await.expect("stop");
        let after = driver
            .logs(
                &id,
                &LogsSpec {
                    tail: 5,
                    stream: LogStream::Stdout,
                },
            )
            .await
            .expect("logs of a stopped server");
        if self.fixture.output_outlives_the_server() {
            assert!(!after.is_empty(), "output outlives the server");
        }
        driver.delete(&id, &stop_spec()).await.expect("delete");
    }

    async fn delete_leaves_nothing_behind(&self) {
        let driver = self.driver().await;
        let id = self.instance("deleted").await;
        let handle = self.start(&driver, &id).await;
        assert!(
            !self.fixture.leftovers(&id).await.is_empty(),
            "it had resources"
        );
        driver.delete(&id, &stop_spec()).await.expect("delete");
        assert!(!self.fixture.is_running(&handle).await);
        let left = self.fixture.leftovers(&id).await;
        assert!(left.is_empty(), "left behind: {left:?}");
        driver
            .delete(&id, &stop_spec())
            .await
            .expect("deleting twice is fine");
    }

    async fn recover_adopts_what_runs_and_reports_what_is_gone(&self) {
        let before = self.driver().await;
        let kept = self.instance("kept").await;
        let lost = self.instance("lost").await;
        let kept_handle = self.start(&before, &kept).await;
        let lost_handle = self.start(&before, &lost).await;
        before.detach().await;
        drop(before);
        // While the worker is down, one server dies.
        self.fixture.vanish(&lost_handle).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.fixture.is_running(&lost_handle).await {
            assert!(Instant::now() < deadline, "the crashed server is gone");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let after = self.driver().await;
        let adopted = after.recover().await.expect("recover");
        assert!(adopted >= 1, "adopted {adopted}");
        assert_eq!(after.running_generation(&kept).await, Some(1));
        let gone = self
            .recorded_state(&lost, ActualState::Failed, Duration::from_secs(5))
            .await;
        assert_eq!(gone.status.reason, Some(Reason::LostWhileWorkerDown));
        let live = after.status(&kept).await.expect("status");
        assert_eq!(live.handle.as_ref(), Some(&kept_handle), "the same server");
        assert_eq!(live.healthy, Some(true));

        // Adopted for real: its crash is seen, and a stop stops it.
        after.stop(&kept, &stop_spec()).await.expect("stop");
        assert!(!self.fixture.is_running(&kept_handle).await);
        after.delete(&kept, &stop_spec()).await.expect("delete");
        after.delete(&lost, &stop_spec()).await.expect("delete");
    }

    /// A server adopted by a restarted worker that dies right after the
    /// adoption: its crash is reported like any other (its exit monitor is
    /// its registration's from the first moment, never lost to a race
    /// with the registration it removes).
    async fn an_adopted_server_that_dies_at_once_is_reported_failed(&self) {
        let before = self.driver().await;
        let id = self.instance("adopted-dies").await;
        let handle = self.start(&before, &id).await;
        before.detach().await;
        drop(before);
        let after = self.driver().await;
        let adopted = after.recover().await.expect("recover");
        assert!(adopted >= 1, "adopted {adopted}");
        self.fixture.crash(&handle).await;
        if self.fixture.restarts_crashed_servers() {
            // Its platform brings it back; it is seen failing or back, and
            // still managed.
            let back = self
                .recorded_state(&id, ActualState::Running, Duration::from_secs(30))
                .await;
            assert_eq!(back.status.reason, Some(Reason::Ready), "{:?}", back.status);
            assert_eq!(after.running().await, 1, "still managed");
        } else {
            let failed = self
                .recorded_state(&id, ActualState::Failed, CRASH_REPORTED_WITHIN)
                .await;
            assert!(
                failed
                    .status
                    .message
                    .as_deref()
                    .is_some_and(|m| !m.is_empty()),
                "the crash says why: {:?}",
                failed.status
            );
            assert_eq!(after.running().await, 0, "no longer managed");
        }
        after.delete(&id, &stop_spec()).await.expect("delete");
    }

    async fn a_reused_handle_is_never_signalled(&self) {
        let before = self.driver().await;
        let id = self.instance("reused").await;
        let handle = self.start(&before, &id).await;
        before.detach().await;
        drop(before);
        self.fixture.vanish(&handle).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.fixture.is_running(&handle).await {
            assert!(Instant::now() < deadline, "the crashed server is gone");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut impostor = self.fixture.impersonate(self.store.as_ref(), &id).await;
        assert!(impostor.alive());

        let after = self.driver().await;
        after.recover().await.expect("recover");
        let gone = self
            .recorded_state(&id, ActualState::Failed, Duration::from_secs(5))
            .await;
        assert_eq!(gone.status.reason, Some(Reason::LostWhileWorkerDown));
        assert_eq!(after.running_generation(&id).await, None, "not adopted");
        after.stop(&id, &stop_spec()).await.expect("stop");
        after.delete(&id, &stop_spec()).await.expect("delete");
        assert!(
            impostor.alive(),
            "what the forged record names was never signalled"
        );
    }
}
