//! A scripted [`PlatformDriver`] for tests of the layers above drivers (the
//! generic worker, the API): it records what it was asked, answers as
//! scripted, and runs nothing. Real platforms are tested against the driver
//! conformance suite instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use draas_core::instance::{
    ActualState, InstanceId, PlatformHandle, PlatformType, Reason, RuntimeInfo,
};
use draas_core::messages::{ErrorCode, LogsSpec, StartSpec, StopSpec};
use draas_core::ports::{DriverError, LiveStatus, PlatformDriver, Started};
use tokio::sync::Notify;

/// What the fake driver was asked, and how it answers.
#[derive(Default)]
pub struct Script {
    /// Every call, in order: `start <id> g<generation>`, `stop <id>`,
    /// `delete <id>`, `status <id>`, `logs <id>`.
    pub calls: Vec<String>,
    /// Make `start` fail with this code (the instance then `Failed`,
    /// `PortInUse`).
    pub fail_start: Option<ErrorCode>,
    /// The environment of the last start.
    pub environment: BTreeMap<String, String>,
    /// How long a start takes.
    pub start_delay: Duration,
    /// When set, a start waits until [`FakeDriver::release`] is called.
    pub hold_starts: bool,
    /// When set, recovery (a worker's start) waits until
    /// [`FakeDriver::release`] is called.
    pub hold_recovery: bool,
    /// Whether recovery has begun.
    pub recovering: bool,
    /// What runs: instance → generation.
    pub running: HashMap<InstanceId, u64>,
}

/// The fake driver; clones share the script.
#[derive(Clone)]
pub struct FakeDriver {
    /// The script.
    pub script: Arc<Mutex<Script>>,
    platform: PlatformType,
    worker_id: String,
    release: Arc<Notify>,
}

impl FakeDriver {
    /// A fake driver of `platform` for worker `worker_id`.
    pub fn new(platform: PlatformType, worker_id: &str) -> Self {
        Self {
            script: Arc::new(Mutex::new(Script::default())),
            platform,
            worker_id: worker_id.to_string(),
            release: Arc::new(Notify::new()),
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.script().calls.clone()
    }

    /// How many calls start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.script()
            .calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// Lets every held start, and a held recovery, go on.
    pub fn release(&self) {
        {
            let mut script = self.script();
            script.hold_starts = false;
            script.hold_recovery = false;
        }
        self.release.notify_waiters();
    }

    fn runtime(&self, spec: &StartSpec) -> RuntimeInfo {
        RuntimeInfo {
            worker_id: self.worker_id.clone(),
            scope: "fake".into(),
            handle: Some(PlatformHandle::Process {
                pid: 1,
                start_time: 1,
            }),
            host: "test".into(),
            port: spec.api_port,
            endpoint: format!("http://127.0.0.1:{}", spec.api_port),
            started_at: None,
            last_exit_code: None,
        }
    }
}

#[async_trait]
impl PlatformDriver for FakeDriver {
    fn platform(&self) -> PlatformType {
        self.platform
    }

    fn scope(&self) -> String {
        "fake".into()
    }

    async fn start(&self, id: &InstanceId, spec: &StartSpec) -> Result<Started, DriverError> {
        let (fail, delay, hold) = {
            let mut script = self.script();
            script
                .calls
                .push(format!("start {id} g{}", spec.generation));
            script.environment = spec.server_configuration.environment.clone();
            (script.fail_start, script.start_delay, script.hold_starts)
        };
        if hold {
            let released = self.release.notified();
            if self.script().hold_starts {
                released.await;
            }
        }
        tokio::time::sleep(delay).await;
        if let Some(code) = fail {
            return Err(DriverError::new(code, "scripted failure")
                .with_state(ActualState::Failed, Reason::PortInUse));
        }
        self.script().running.insert(id.clone(), spec.generation);
        Ok(Started {
            runtime: self.runtime(spec),
            state: ActualState::Running,
            message: None,
        })
    }

    async fn stop(&self, id: &InstanceId, _: &StopSpec) -> Result<(), DriverError> {
        let mut script = self.script();
        script.calls.push(format!("stop {id}"));
        script.running.remove(id);
        Ok(())
    }

    async fn delete(&self, id: &InstanceId, _: &StopSpec) -> Result<(), DriverError> {
        let mut script = self.script();
        script.calls.push(format!("delete {id}"));
        script.running.remove(id);
        Ok(())
    }

    async fn status(&self, id: &InstanceId) -> Result<LiveStatus, DriverError> {
        let mut script = self.script();
        script.calls.push(format!("status {id}"));
        Ok(LiveStatus {
            running: script.running.contains_key(id),
            generation: script.running.get(id).copied(),
            healthy: Some(true),
            ..LiveStatus::default()
        })
    }

    async fn running_generation(&self, id: &InstanceId) -> Option<u64> {
        self.script().running.get(id).copied()
    }

    async fn logs(&self, id: &InstanceId, spec: &LogsSpec) -> Result<Vec<String>, DriverError> {
        self.script().calls.push(format!("logs {id}"));
        Ok((0..spec.tail).map(|i| format!("line {i}")).collect())
    }

    async fn recover(&self) -> Result<usize, DriverError> {
        let released = self.release.notified();
        let hold = {
            let mut script = self.script();
            script.recovering = true;
            script.hold_recovery
        };
        if hold {
            released.await;
        }
        Ok(0)
    }

    async fn running(&self) -> usize {
        self.script().running.len()
    }
}

/// A store that works like the one it wraps until told to fail: then every
/// operation fails with `Unavailable`, as a store whose server went away
/// (or only every write, as one that turned read-only).
pub struct FaultyStore<S> {
    inner: S,
    failing: std::sync::atomic::AtomicBool,
    writes_failing: std::sync::atomic::AtomicBool,
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`, working.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            failing: std::sync::atomic::AtomicBool::new(false),
            writes_failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on, fail every write (`true`; reads work) or work
    /// (`false`).
    pub fn fail_writes(&self, failing: bool) {
        self.writes_failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    fn check_write(&self) -> Result<(), draas_core::ports::StoreError> {
        self.check()?;
        if self
            .writes_failing
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            Err(draas_core::ports::StoreError::Unavailable(
                "the test made the store refuse writes".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// From now on, fail (`true`) or work (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), draas_core::ports::StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            Err(draas_core::ports::StoreError::Unavailable(
                "the test made the store fail".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl<S: draas_core::ports::StateStore> draas_core::ports::StateStore for FaultyStore<S> {
    async fn get(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<draas_core::ports::Versioned>, draas_core::ports::StoreError> {
        self.check()?;
        self.inner.get(collection, key).await
    }
    async fn list(
        &self,
        collection: &str,
    ) -> Result<Vec<(String, draas_core::ports::Versioned)>, draas_core::ports::StoreError> {
        self.check()?;
        self.inner.list(collection).await
    }
    async fn apply(
        &self,
        writes: Vec<draas_core::ports::Write>,
    ) -> Result<Vec<draas_core::ports::Applied>, draas_core::ports::StoreError> {
        self.check_write()?;
        self.inner.apply(writes).await
    }
    async fn append(
        &self,
        log: &str,
        value: Vec<u8>,
        capacity: usize,
    ) -> Result<u64, draas_core::ports::StoreError> {
        self.check_write()?;
        self.inner.append(log, value, capacity).await
    }
    async fn read_log(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Result<draas_core::ports::LogPage, draas_core::ports::StoreError> {
        self.check()?;
        self.inner.read_log(log, after, limit).await
    }
}

/// A bus that behaves like `B` but declares that it may redeliver commands
/// (as the Redis bus does), so workers on it claim every command: for tests
/// of once-only execution that deliver one envelope twice themselves.
pub struct RedeliveringBus<B>(pub B);

#[async_trait]
impl<B: draas_core::ports::MessageBus> draas_core::ports::MessageBus for RedeliveringBus<B> {
    async fn request(
        &self,
        channel: &str,
        command: draas_core::messages::CommandEnvelope,
        timeout: Duration,
    ) -> Result<draas_core::messages::CommandReply, draas_core::ports::BusError> {
        self.0.request(channel, command, timeout).await
    }
    async fn consume(
        &self,
        channels: &[String],
        consumer: &str,
        credits: Arc<dyn draas_core::ports::Credits>,
    ) -> Result<draas_core::ports::CommandStream, draas_core::ports::BusError> {
        self.0.consume(channels, consumer, credits).await
    }
    async fn publish(
        &self,
        event: &draas_core::messages::EventEnvelope,
    ) -> Result<(), draas_core::ports::BusError> {
        self.0.publish(event).await
    }
    async fn subscribe(
        &self,
        channels: &[&str],
    ) -> Result<draas_core::ports::EventStream, draas_core::ports::BusError> {
        self.0.subscribe(channels).await
    }
    async fn replay_events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<draas_core::ports::PublishedEvent>, draas_core::ports::BusError> {
        self.0.replay_events(after, limit).await
    }
    async fn backlog(&self, channel: &str) -> Result<u64, draas_core::ports::BusError> {
        self.0.backlog(channel).await
    }
    fn redelivers(&self) -> bool {
        true
    }
}
