//! The generic worker on its own: the real command loop, executor and
//! heartbeats over the in-process bus and an in-memory store, with the
//! scripted fake driver. Time is paused (tokio's test clock): intervals and
//! timeouts advance only when every task waits, so nothing here sleeps for
//! real.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draas_bus::InProcessBus;
use draas_core::config::DrasiServerConfig;
use draas_core::instance::{
    ActualState, DesiredState, Instance, InstanceId, InstanceStatus, PlatformType,
    ServerConfiguration,
};
use draas_core::keys;
use draas_core::messages::{
    Command, CommandEnvelope, CommandReply, ErrorCode, Event, LogStream, LogsSpec, Outcome,
    StopSpec, EVENT_CHANNELS,
};
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::{MessageBus, StateStore};
use draas_store::EmbeddedStore;
use draas_testkit::fake::{FakeDriver, FaultyStore, RedeliveringBus};
use draas_worker::{Worker, WorkerContext, WorkerSettings};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const HEARTBEAT: Duration = Duration::from_secs(1);

/// A running worker: its driver, its stop token, its task.
type RunningWorker = (
    FakeDriver,
    CancellationToken,
    JoinHandle<Result<(), draas_worker::WorkerError>>,
);

struct Rig {
    store: Arc<FaultyStore<EmbeddedStore>>,
    /// In-process, declared redelivering (as Redis is): commands are claimed.
    bus: Arc<RedeliveringBus<InProcessBus>>,
    workers: Vec<RunningWorker>,
}

impl Rig {
    fn new() -> Self {
        Self {
            store: Arc::new(FaultyStore::new(EmbeddedStore::in_memory().unwrap())),
            bus: Arc::new(RedeliveringBus(InProcessBus::new())),
            workers: Vec::new(),
        }
    }

    /// Starts worker `name` with `concurrency` permits; returns its driver.
    async fn worker(&mut self, name: &str, concurrency: usize) -> FakeDriver {
        let driver = FakeDriver::new(PlatformType::Process, name);
        self.worker_with(name, concurrency, driver.clone()).await;
        driver
    }

    /// Starts worker `name` with `concurrency` permits on `driver`, and
    /// waits (at most 10 s of test time) until it is announced.
    async fn worker_with(&mut self, name: &str, concurrency: usize, driver: FakeDriver) {
        let context = WorkerContext::new(
            WorkerSettings {
                worker_id: name.into(),
                host: "test".into(),
                heartbeat_interval: HEARTBEAT,
                heartbeat_ttl: HEARTBEAT * 3,
                concurrency,
                capacity: None,
                orphan_sweep_every: std::time::Duration::from_secs(30),
            },
            self.store.clone(),
            self.bus.clone(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(Worker::new(context, Arc::new(driver.clone())).run(stop.clone()));
        // Announced (first heartbeat) before it is used.
        let announced = tokio::time::timeout(Duration::from_secs(10), async {
            while self.store.get(keys::WORKERS, name).await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(announced.is_ok(), "worker {name} was never announced");
        self.workers.push((driver, stop, task));
    }

    async fn instance(&self) -> InstanceId {
        let id = InstanceId::generate();
        let now = Utc::now();
        let instance = Instance {
            id: id.clone(),
            name: format!("n{}", &id.as_str()[id.as_str().len() - 8..]),
            description: String::new(),
            platform_type: PlatformType::Process,
            created_at: now,
            updated_at: now,
            desired_state: DesiredState::Running,
            generation: 1,
            server_configuration: ServerConfiguration::for_platform(PlatformType::Process),
            configuration: DrasiServerConfig::empty("127.0.0.1", 20000),
            restart_policy: Default::default(),
            update_strategy: Default::default(),
            status: InstanceStatus::created(now),
            runtime: None,
            deleted_at: None,
        };
        self.store
            .apply(draas_core::records::create_writes(&instance).unwrap())
            .await
            .unwrap();
        id
    }

    async fn state(&self, id: &InstanceId) -> ActualState {
        draas_core::records::read(self.store.as_ref(), id)
            .await
            .unwrap()
            .unwrap()
            .observed
            .state
    }

    async fn send(&self, envelope: CommandEnvelope) -> CommandReply {
        self.bus
            .request(
                PlatformType::Process.command_channel(),
                envelope,
                Duration::from_secs(30),
            )
            .await
            .expect("a reply")
    }

    fn spawn_send(&self, envelope: CommandEnvelope) -> JoinHandle<CommandReply> {
        let bus = self.bus.clone();
        tokio::spawn(async move {
            bus.request(
                PlatformType::Process.command_channel(),
                envelope,
                Duration::from_secs(30),
            )
            .await
            .expect("a reply")
        })
    }
}

fn start(id: &InstanceId) -> CommandEnvelope {
    let configuration = DrasiServerConfig::empty("127.0.0.1", 20000);
    let spec = draas_testkit::start_spec(id, &configuration, PlatformType::Process, 1);
    CommandEnvelope::new(id.clone(), Command::Start(spec), Duration::from_secs(30))
}

fn stop(id: &InstanceId) -> CommandEnvelope {
    CommandEnvelope::new(
        id.clone(),
        Command::Stop(StopSpec::grace(1)),
        Duration::from_secs(30),
    )
}

fn status(id: &InstanceId) -> CommandEnvelope {
    CommandEnvelope::new(id.clone(), Command::Status, Duration::from_secs(30))
}

fn error_code(reply: &CommandReply) -> Option<ErrorCode> {
    match &reply.outcome {
        Outcome::Error { code, .. } => Some(*code),
        Outcome::Ok { .. } => None,
    }
}

/// Yields until `condition` holds (bounded: the test fails otherwise).
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never: {what}");
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_command_is_answered_from_its_record_and_not_executed_again() {
    let mut rig = Rig::new();
    let driver = rig.worker("w1", 4).await;
    let id = rig.instance().await;
    let command = start(&id);
    let first = rig.send(command.clone()).await;
    assert_eq!(error_code(&first), None, "{first:?}");
    let again = rig.send(command.clone()).await;
    assert_eq!(again.outcome, first.outcome, "the stored reply");
    assert_eq!(
        driver.count("start"),
        1,
        "executed once: {:?}",
        driver.calls()
    );

    // Even redelivered after its deadline: it was executed, so its reply
    // (not DEADLINE_EXCEEDED) is the truth.
    let late = CommandEnvelope {
        deadline: Utc::now() - chrono::Duration::seconds(1),
        ..command
    };
    let late_reply = rig.send(late).await;
    assert_eq!(late_reply.outcome, first.outcome);
    assert_eq!(driver.count("start"), 1);
}

/// A start that the instance no longer asks for (it should not run any
/// more: a stop or a delete came after the command was sent; or its
/// configuration moved on) is refused by the worker, fenced like a stale
/// lease token: a start queued behind a stop or a delete never brings the
/// server back.
#[tokio::test(start_paused = true)]
async fn a_start_the_instance_no_longer_asks_for_is_refused() {
    let mut rig = Rig::new();
    let driver = rig.worker("w1", 4).await;
    let id = rig.instance().await;
    let edit = |change: fn(&mut draas_core::records::InstanceSpec)| {
        let store = rig.store.clone();
        let id = id.clone();
        async move {
            let mut instance = store
                .get_json::<draas_core::records::InstanceSpec>(keys::INSTANCES, id.as_str())
                .await
                .unwrap()
                .unwrap()
                .value;
            change(&mut instance);
            store
                .put_json(keys::INSTANCES, id.as_str(), &instance, Precondition::None)
                .await
                .unwrap();
        }
    };
    edit(|i| i.desired_state = DesiredState::Stopped).await;
    let reply = rig.send(start(&id)).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::Superseded), "{reply:?}");
    edit(|i| {
        i.desired_state = DesiredState::Running;
        i.generation = 2;
    })
    .await;
    let reply = rig.send(start(&id)).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::Superseded), "{reply:?}");
    assert_eq!(driver.count("start"), 0, "{:?}", driver.calls());
    assert_eq!(rig.state(&id).await, ActualState::Created);
    // As the instance asks: it runs.
    edit(|i| i.generation = 1).await;
    let reply = rig.send(start(&id)).await;
    assert_eq!(error_code(&reply), None, "{reply:?}");
    assert_eq!(driver.count("start"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_command_whose_deadline_passed_is_not_executed() {
    let mut rig = Rig::new();
    let driver = rig.worker("w1", 4).await;
    let id = rig.instance().await;
    for expired in [start(&id), status(&id)] {
        let expired = CommandEnvelope {
            deadline: Utc::now() - chrono::Duration::seconds(1),
            ..expired
        };
        let reply = rig.send(expired).await;
        assert_eq!(error_code(&reply), Some(ErrorCode::DeadlineExceeded));
    }
    assert!(driver.calls().is_empty(), "{:?}", driver.calls());
    assert_eq!(rig.state(&id).await, ActualState::Created);
}

#[tokio::test(start_paused = true)]
async fn commands_of_one_instance_run_in_order_and_status_and_logs_never_wait_behind_them() {
    let mut rig = Rig::new();
    let driver = rig.worker("w1", 8).await;
    let id = rig.instance().await;
    driver.script.lock().unwrap().hold_starts = true;
    let started = rig.spawn_send(start(&id));
    until("the start to run", || driver.count("start") == 1).await;
    let stopped = rig.spawn_send(stop(&id));

    // The start is still running: Status and Logs are answered anyway.
    let live = rig.send(status(&id)).await;
    assert_eq!(error_code(&live), None, "{live:?}");
    let logs = rig
        .send(CommandEnvelope::new(
            id.clone(),
            Command::Logs(LogsSpec {
                tail: 2,
                stream: LogStream::Stdout,
            }),
            Duration::from_secs(30),
        ))
        .await;
    assert_eq!(error_code(&logs), None);
    assert_eq!(driver.count("stop"), 0, "the stop waits for the start");

    driver.release();
    assert_eq!(error_code(&started.await.unwrap()), None);
    assert_eq!(error_code(&stopped.await.unwrap()), None);
    let calls: Vec<String> = driver
        .calls()
        .iter()
        .map(|c| c.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(calls, vec!["start", "status", "logs", "stop"]);
    assert_eq!(rig.state(&id).await, ActualState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_busy_worker_leaves_further_commands_to_an_idle_peer() {
    let mut rig = Rig::new();
    let busy = rig.worker("busy", 1).await;
    busy.script.lock().unwrap().hold_starts = true;
    let first = rig.instance().await;
    let held = rig.spawn_send(start(&first));
    until("the busy worker to take it", || busy.count("start") == 1).await;

    let idle = rig.worker("idle", 4).await;
    for _ in 0..3 {
        let id = rig.instance().await;
        let reply = rig.send(start(&id)).await;
        assert_eq!(reply.worker_id, "idle", "{reply:?}");
    }
    assert_eq!(busy.count("start"), 1, "the busy worker took nothing more");
    assert_eq!(idle.count("start"), 3);
    busy.release();
    assert_eq!(held.await.unwrap().worker_id, "busy");
}

#[tokio::test(start_paused = true)]
async fn heartbeats_announce_the_worker_every_interval_and_stopping_withdraws_it() {
    let mut rig = Rig::new();
    rig.worker("w1", 4).await;
    let record = rig
        .store
        .get_json::<draas_core::messages::WorkerInfo>(keys::WORKERS, "w1")
        .await
        .unwrap()
        .expect("announced");
    assert_eq!(record.value.platform, PlatformType::Process);
    assert_eq!(record.value.scope, "fake", "with the driver's scope");

    // Ten and a half intervals of (paused) time: ten or eleven beats.
    let mut events = rig.bus.subscribe(&EVENT_CHANNELS).await.unwrap();
    let mut beats = 0u32;
    let window = tokio::time::timeout(HEARTBEAT * 10 + HEARTBEAT / 2, async {
        while let Some(event) = events.next().await {
            if let Event::WorkerHeartbeat(info) = event.envelope.event {
                assert_eq!(info.worker_id, "w1");
                beats += 1;
            }
        }
    })
    .await;
    assert!(window.is_err(), "the event stream stays open");
    assert!((10..=11).contains(&beats), "{beats} heartbeats");

    let (_, stop, task) = rig.workers.pop().unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(
        rig.store.get(keys::WORKERS, "w1").await.unwrap().is_none(),
        "a stopping worker withdraws at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_starting_worker_is_announced_and_takes_commands_before_it_reports_its_servers() {
    // Recovery is where a (re)starting worker reports the servers it
    // adopts as running: by then a user may command them, so the worker
    // must already be announced and taking commands.
    let mut rig = Rig::new();
    let id = rig.instance().await;
    let driver = FakeDriver::new(PlatformType::Process, "w1");
    driver.script.lock().unwrap().hold_recovery = true;
    rig.worker_with("w1", 4, driver.clone()).await;
    assert!(driver.script.lock().unwrap().recovering, "recovering now");

    // A command sent meanwhile finds a consumer, and waits for recovery:
    // nothing runs on servers the worker has not recovered yet.
    let reply = rig.spawn_send(start(&id));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!reply.is_finished(), "answered before recovery was done");
    assert_eq!(driver.count("start"), 0, "{:?}", driver.calls());

    driver.release();
    let reply = reply.await.unwrap();
    assert!(
        matches!(reply.outcome, Outcome::Ok { .. }),
        "{:?}",
        reply.outcome
    );
    assert_eq!(driver.count("start"), 1);
    assert_eq!(rig.state(&id).await, ActualState::Running);
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_yields_an_error_reply_never_a_false_success() {
    let mut rig = Rig::new();
    let driver = rig.worker("w1", 4).await;

    // Down before the command: it cannot be claimed, so it is not run.
    // (On a bus that never redelivers nothing is claimed; recording
    // `Starting` fails first, with the same outcome.)
    let id = rig.instance().await;
    rig.store.fail(true);
    let reply = rig.send(start(&id)).await;
    rig.store.fail(false);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::StoreUnavailable),
        "{reply:?}"
    );
    assert!(
        matches!(&reply.outcome, Outcome::Error { message, .. } if message.contains("not executed")),
        "{reply:?}"
    );
    assert_eq!(driver.count("start"), 0);

    // Down while the server starts: it runs, but its state cannot be
    // recorded, and the reply says exactly that.
    driver.script.lock().unwrap().hold_starts = true;
    let pending = rig.spawn_send(start(&id));
    until("the start to run", || driver.count("start") == 1).await;
    // `Starting` is recorded while the server launches: the outage comes
    // after it, at the end of the start.
    for _ in 0..100 {
        if rig.state(&id).await == ActualState::Starting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.state(&id).await, ActualState::Starting);
    rig.store.fail(true);
    driver.release();
    let reply = pending.await.unwrap();
    rig.store.fail(false);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::StoreUnavailable),
        "{reply:?}"
    );
    assert!(
        matches!(&reply.outcome, Outcome::Error { message, .. } if message.contains("server runs") && message.contains("could not be recorded")),
        "{reply:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn over_a_bus_that_never_redelivers_nothing_is_claimed_and_outages_still_fail_honestly() {
    let store = Arc::new(FaultyStore::new(EmbeddedStore::in_memory().unwrap()));
    let bus = Arc::new(InProcessBus::new());
    assert!(!bus.redelivers());
    let driver = FakeDriver::new(PlatformType::Process, "w1");
    let context = WorkerContext::new(
        WorkerSettings {
            worker_id: "w1".into(),
            host: "test".into(),
            heartbeat_interval: HEARTBEAT,
            heartbeat_ttl: HEARTBEAT * 3,
            concurrency: 4,
            capacity: None,
            orphan_sweep_every: std::time::Duration::from_secs(30),
        },
        store.clone(),
        bus.clone(),
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(Worker::new(context, Arc::new(driver.clone())).run(shutdown.clone()));
    while store.get(keys::WORKERS, "w1").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    let rig = Rig {
        store,
        bus: Arc::new(RedeliveringBus(InProcessBus::new())),
        workers: Vec::new(),
    };
    let id = rig.instance().await;
    let request = |envelope| {
        let bus = bus.clone();
        async move {
            bus.request(
                PlatformType::Process.command_channel(),
                envelope,
                Duration::from_secs(30),
            )
            .await
            .unwrap()
        }
    };
    let reply = request(start(&id)).await;
    assert_eq!(error_code(&reply), None, "{reply:?}");
    assert!(
        rig.store
            .list(keys::EXECUTED_COMMANDS)
            .await
            .unwrap()
            .is_empty(),
        "no claim records"
    );
    assert_eq!(rig.state(&id).await, ActualState::Running);

    rig.store.fail(true);
    let reply = request(stop(&id)).await;
    rig.store.fail(false);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::StoreUnavailable),
        "{reply:?}"
    );
    assert_eq!(
        driver.count("stop"),
        0,
        "not stopped when Stopping cannot be recorded"
    );

    // A start whose instance cannot be read (to check it still asks for
    // it) is not executed.
    let other = rig.instance().await;
    rig.store.fail(true);
    let reply = request(start(&other)).await;
    rig.store.fail(false);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::StoreUnavailable),
        "{reply:?}"
    );
    assert_eq!(driver.count("start"), 1, "not launched");

    // A start whose `Starting` cannot be recorded (it is recorded while the
    // server launches): the server is stopped again, and the reply says so.
    rig.store.fail_writes(true);
    let reply = request(start(&other)).await;
    rig.store.fail_writes(false);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::StoreUnavailable),
        "{reply:?}"
    );
    assert!(
        matches!(&reply.outcome, Outcome::Error { message, .. } if message.contains("stopped again")),
        "{reply:?}"
    );
    assert_eq!(driver.count("start"), 2, "it was launched");
    assert_eq!(driver.count("stop"), 1, "and stopped again");
    shutdown.cancel();
}
