//! Once-only execution against a real `redis-server`: the Redis store and
//! bus, two real generic workers (with the scripted fake driver: what is
//! proved here is the worker's protocol, not a platform).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use draas_core::config::DrasiServerConfig;
use draas_core::instance::{
    DesiredState, Instance, InstanceId, InstanceStatus, PlatformType, ServerConfiguration,
};
use draas_core::keys;
use draas_core::messages::{Command, CommandEnvelope, CommandReply, ErrorCode, Outcome};
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::{MessageBus, StateStore};
use draas_redis::{BusOptions, RedisBus, RedisSettings, RedisStore};
use draas_testkit::fake::FakeDriver;
use draas_testkit::redis_server::RedisServer;
use draas_worker::{Worker, WorkerContext, WorkerSettings};
use tokio_util::sync::CancellationToken;

fn settings(server: &RedisServer) -> RedisSettings {
    let mut settings = RedisSettings::new(server.url());
    settings.prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    settings
}

fn worker(
    name: &str,
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
    stop: &CancellationToken,
) -> FakeDriver {
    let driver = FakeDriver::new(PlatformType::Process, name);
    let context = WorkerContext::new(
        WorkerSettings {
            worker_id: name.into(),
            host: "test".into(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(3),
            concurrency: 8,
            capacity: None,
            orphan_sweep_every: std::time::Duration::from_secs(30),
        },
        store,
        bus,
    );
    tokio::spawn(Worker::new(context, Arc::new(driver.clone())).run(stop.clone()));
    driver
}

async fn instance(store: &dyn StateStore) -> InstanceId {
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
    store
        .apply(draas_core::records::create_writes(&instance).unwrap())
        .await
        .unwrap();
    id
}

fn start(id: &InstanceId) -> CommandEnvelope {
    let configuration = DrasiServerConfig::empty("127.0.0.1", 20000);
    let spec = draas_testkit::start_spec(id, &configuration, PlatformType::Process, 1);
    CommandEnvelope::new(id.clone(), Command::Start(spec), Duration::from_secs(30))
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_envelope_delivered_to_two_workers_at_the_same_moment_is_executed_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let settings = settings(&server);
    let store: Arc<dyn StateStore> = Arc::new(RedisStore::connect(settings.clone()).await.unwrap());
    let bus = |settings: RedisSettings| async move {
        Arc::new(
            RedisBus::connect(settings, BusOptions::default())
                .await
                .unwrap(),
        ) as Arc<dyn MessageBus>
    };
    let stop = CancellationToken::new();
    let a = worker("wa", store.clone(), bus(settings.clone()).await, &stop);
    let b = worker("wb", store.clone(), bus(settings.clone()).await, &stop);
    for driver in [&a, &b] {
        // Each start takes a while, so both deliveries are in flight at once.
        driver.script.lock().unwrap().start_delay = Duration::from_millis(300);
    }
    let stream = settings.key(PlatformType::Process.command_channel());
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Both workers have joined the consumer group.
    consumers_joined(&mut redis, &stream, 2).await;

    for round in 0..5 {
        let id = instance(store.as_ref()).await;
        let envelope = start(&id);
        let body = serde_json::to_vec(&envelope).unwrap();
        // The same envelope twice, in one go: one entry for each worker.
        let mut pipe = redis::pipe();
        for _ in 0..2 {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("message")
                .arg(&body)
                .ignore();
        }
        pipe.query_async::<()>(&mut redis).await.unwrap();

        let starts = || a.count(&format!("start {id}")) + b.count(&format!("start {id}"));
        wait_for("the start to run", Duration::from_secs(10), || {
            starts() >= 1
        })
        .await;
        // Both entries get answered (acknowledged), and the second never
        // runs the start again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("workers")
                .query_async(&mut redis)
                .await
                .unwrap();
            if pending.0 == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: entries still pending"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            starts(),
            1,
            "round {round}: executed once ({:?} / {:?})",
            a.calls(),
            b.calls()
        );
        let reply_key = settings.key(&draas_core::messages::reply_channel(
            PlatformType::Process.command_channel(),
            envelope.id,
        ));
        let stored: Vec<u8> = redis::cmd("GET")
            .arg(&reply_key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let reply: CommandReply = serde_json::from_slice(&stored).unwrap();
        assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_down_mid_command_yields_an_error_reply_not_a_false_success() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(dir.path());
    let store: Arc<dyn StateStore> =
        Arc::new(RedisStore::connect(settings(&server)).await.unwrap());
    // The store is Redis; the bus is in-process, so the reply still travels
    // while Redis is down.
    let bus: Arc<dyn MessageBus> = Arc::new(draas_bus::InProcessBus::new());
    let stop = CancellationToken::new();
    let driver = worker("w1", store.clone(), bus.clone(), &stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get(keys::WORKERS, "w1").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = instance(store.as_ref()).await;
    driver.script.lock().unwrap().hold_starts = true;
    let request = tokio::spawn({
        let bus = bus.clone();
        let envelope = start(&id);
        async move {
            bus.request(
                PlatformType::Process.command_channel(),
                envelope,
                Duration::from_secs(30),
            )
            .await
        }
    });
    wait_for("the start to run", Duration::from_secs(10), || {
        driver.count("start") == 1
    })
    .await;
    server.kill();
    driver.release();
    let reply = request.await.unwrap().expect("a reply");
    match &reply.outcome {
        Outcome::Error { code, message } => {
            assert_eq!(*code, ErrorCode::StoreUnavailable, "{message}");
            assert!(message.contains("could not be recorded"), "{message}");
        }
        other => panic!("a false success: {other:?}"),
    }
    stop.cancel();
}

/// Waits until `count` workers consume `stream`.
async fn consumers_joined(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    count: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg("workers")
            .query_async(redis)
            .await
            .unwrap_or_default();
        if consumers.len() == count {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "workers joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `value` with a field this version does not know at each of `pointers`.
fn with_newer_fields(mut value: serde_json::Value, pointers: &[&str]) -> serde_json::Value {
    for pointer in pointers {
        value
            .pointer_mut(pointer)
            .and_then(|v| v.as_object_mut())
            .unwrap_or_else(|| panic!("{pointer} is an object"))
            .insert("addedInANewerVersion".into(), serde_json::json!({"x": [1]}));
    }
    value
}

/// A rolling upgrade: a newer control plane wrote the instance record and
/// sends the command, both with fields this worker's version does not
/// know. The worker executes the command and records the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_and_a_command_of_a_newer_version_are_executed_by_an_older_worker() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let settings = settings(&server);
    let store: Arc<dyn StateStore> = Arc::new(RedisStore::connect(settings.clone()).await.unwrap());
    let bus = Arc::new(
        RedisBus::connect(settings.clone(), BusOptions::default())
            .await
            .unwrap(),
    ) as Arc<dyn MessageBus>;
    let stop = CancellationToken::new();
    let driver = worker("wa", store.clone(), bus, &stop);
    let stream = settings.key(PlatformType::Process.command_channel());
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    consumers_joined(&mut redis, &stream, 1).await;

    let id = instance(store.as_ref()).await;
    let record = store
        .get_json::<serde_json::Value>(keys::INSTANCES, id.as_str())
        .await
        .unwrap()
        .unwrap()
        .value;
    let record = with_newer_fields(record, &["", "/serverConfiguration", "/configuration"]);
    store
        .put_json(keys::INSTANCES, id.as_str(), &record, Precondition::None)
        .await
        .unwrap();
    let status = store
        .get_json::<serde_json::Value>(keys::INSTANCE_STATUS, id.as_str())
        .await
        .unwrap()
        .unwrap()
        .value;
    store
        .put_json(
            keys::INSTANCE_STATUS,
            id.as_str(),
            &with_newer_fields(status, &[""]),
            Precondition::None,
        )
        .await
        .unwrap();
    let envelope = start(&id);
    let wire = with_newer_fields(
        serde_json::to_value(&envelope).unwrap(),
        &["", "/command", "/command/serverConfiguration"],
    );
    let _: () = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("message")
        .arg(serde_json::to_vec(&wire).unwrap())
        .query_async(&mut redis)
        .await
        .unwrap();

    let reply_key = settings.key(&draas_core::messages::reply_channel(
        PlatformType::Process.command_channel(),
        envelope.id,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let reply: CommandReply = loop {
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&reply_key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(body) = stored {
            break serde_json::from_slice(&body).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reply: the command was not read ({:?})",
            driver.calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(reply.outcome, Outcome::Ok { .. }), "{reply:?}");
    assert_eq!(driver.count(&format!("start {id}")), 1);
    let recorded = draas_core::records::read(store.as_ref(), &id)
        .await
        .unwrap()
        .unwrap()
        .instance();
    assert_eq!(
        recorded.status.state,
        draas_core::instance::ActualState::Running
    );
    stop.cancel();
}
