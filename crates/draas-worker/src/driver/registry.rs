//! The servers a worker runs now, in memory, each with the background
//! tasks that watch it.
//!
//! Every registration gets a serial number: a task spawned for one server
//! (its exit monitor, its component watch, a health confirmation) acts only
//! if the registration it was spawned for is still the current one, so a
//! late task of a replaced server never touches its successor. Tasks are
//! aborted when their registration is removed or replaced: a repeated Start
//! never leaves a second component watch running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use draas_core::instance::InstanceId;
use tokio::task::AbortHandle;

use super::exit::ExitWatch;
use super::records::ServerRecord;

/// Where a managed server is in its life, as far as exit handling goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `start` is waiting for readiness and reports an exit itself.
    Starting,
    /// An exit now is a crash, reported by the exit monitor.
    Running,
    /// `stop` is waiting for the exit it caused.
    Stopping,
}

/// Background tasks of one registration, aborted with it.
#[derive(Default)]
pub struct Tasks {
    monitor: Option<AbortHandle>,
    components: Option<AbortHandle>,
    confirm: Option<AbortHandle>,
    condition: Option<AbortHandle>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in [
            &self.monitor,
            &self.components,
            &self.confirm,
            &self.condition,
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

/// Which task slot.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    /// Waits for the server's exit.
    Monitor,
    /// Follows the server's component events.
    Components,
    /// Confirms an adopted server's health.
    Confirm,
    /// Follows the platform's condition of the server.
    Condition,
}

/// One managed server.
pub struct Entry<R, H> {
    /// Identifies this registration.
    pub serial: u64,
    /// What is persisted of it.
    pub record: ServerRecord<R>,
    /// The platform's live handle.
    pub handle: H,
    /// Its exit.
    pub exit: ExitWatch,
    /// Where it is in its life.
    pub phase: Phase,
    tasks: Tasks,
}

/// What a caller gets to see of an entry.
#[derive(Clone)]
pub struct Snapshot<R, H> {
    /// Identifies the registration.
    pub serial: u64,
    /// What is persisted of it.
    pub record: ServerRecord<R>,
    /// The platform's live handle.
    pub handle: H,
    /// Its exit.
    pub exit: ExitWatch,
    /// Where it is in its life.
    pub phase: Phase,
}

/// The servers of one worker.
pub struct Registry<R, H> {
    servers: Mutex<HashMap<InstanceId, Entry<R, H>>>,
    serials: AtomicU64,
}

impl<R: Clone, H: Clone> Default for Registry<R, H> {
    fn default() -> Self {
        Self {
            servers: Mutex::new(HashMap::new()),
            serials: AtomicU64::new(1),
        }
    }
}

impl<R: Clone, H: Clone> Registry<R, H> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Entry<R, H>>> {
        // Critical sections are single map operations: a poisoned lock
        // still holds a consistent map.
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a server, replacing (and stopping the tasks of) any
    /// earlier registration of `id`. Returns its serial.
    pub fn insert(
        &self,
        id: &InstanceId,
        record: ServerRecord<R>,
        handle: H,
        exit: ExitWatch,
        phase: Phase,
    ) -> u64 {
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let replaced = self.lock().insert(
            id.clone(),
            Entry {
                serial,
                record,
                handle,
                exit,
                phase,
                tasks: Tasks::default(),
            },
        );
        drop(replaced);
        serial
    }

    /// The current registration of `id`.
    pub fn get(&self, id: &InstanceId) -> Option<Snapshot<R, H>> {
        self.lock().get(id).map(Entry::snapshot)
    }

    /// Every registration in `phase`.
    pub fn in_phase(&self, phase: Phase) -> Vec<(InstanceId, Snapshot<R, H>)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.phase == phase)
            .map(|(id, e)| (id.clone(), e.snapshot()))
            .collect()
    }

    /// Forgets every server (their tasks are aborted).
    pub fn clear(&self) {
        let all = std::mem::take(&mut *self.lock());
        drop(all);
    }

    /// How many servers are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Sets the phase of registration `serial` of `id`; `false` when it is
    /// not the current one.
    pub fn set_phase(&self, id: &InstanceId, serial: u64, phase: Phase) -> bool {
        match self.lock().get_mut(id) {
            Some(e) if e.serial == serial => {
                e.phase = phase;
                true
            }
            _ => false,
        }
    }

    /// Moves the current registration of `id` to `Stopping` and returns
    /// it (with the phase it had).
    pub fn begin_stop(&self, id: &InstanceId) -> Option<(Phase, Snapshot<R, H>)> {
        let mut servers = self.lock();
        let e = servers.get_mut(id)?;
        let before = e.phase;
        e.phase = Phase::Stopping;
        Some((before, e.snapshot()))
    }

    /// Attaches a task to registration `serial` of `id` (replacing and
    /// aborting one in the same slot). A task for a registration that is
    /// not current any more is aborted at once. Returns whether attached.
    pub fn attach(&self, id: &InstanceId, serial: u64, slot: Task, task: AbortHandle) -> bool {
        let mut servers = self.lock();
        match servers.get_mut(id) {
            Some(e) if e.serial == serial => {
                let place = match slot {
                    Task::Monitor => &mut e.tasks.monitor,
                    Task::Components => &mut e.tasks.components,
                    Task::Confirm => &mut e.tasks.confirm,
                    Task::Condition => &mut e.tasks.condition,
                };
                if let Some(old) = place.replace(task) {
                    old.abort();
                }
                true
            }
            _ => {
                task.abort();
                false
            }
        }
    }

    /// Spawns `task` as the task in `slot` of registration `serial` of
    /// `id`, attached before it runs: a task that ended at once (an exit
    /// monitor whose server died at once) could otherwise remove its
    /// registration first and then be aborted by its own late attachment,
    /// before it reported what it saw. Returns whether it was attached (if
    /// not, the registration is gone and the task never runs).
    pub fn spawn<F>(&self, id: &InstanceId, serial: u64, slot: Task, task: F) -> bool
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (go, gate) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            if gate.await.is_ok() {
                task.await;
            }
        });
        let attached = self.attach(id, serial, slot, handle.abort_handle());
        if attached {
            let _ = go.send(());
        }
        attached
    }

    /// Whether registration `serial` of `id` has a task in `slot`.
    pub fn has_task(&self, id: &InstanceId, serial: u64, slot: Task) -> bool {
        self.lock().get(id).is_some_and(|e| {
            e.serial == serial
                && match slot {
                    Task::Monitor => e.tasks.monitor.is_some(),
                    Task::Components => e.tasks.components.is_some(),
                    Task::Confirm => e.tasks.confirm.is_some(),
                    Task::Condition => e.tasks.condition.is_some(),
                }
        })
    }

    /// Removes registration `serial` of `id` (aborting its tasks), if it is
    /// the current one. `spare` names the slot of the calling task, which
    /// is released instead of aborted.
    pub fn remove(
        &self,
        id: &InstanceId,
        serial: u64,
        spare: Option<Task>,
    ) -> Option<Snapshot<R, H>> {
        self.remove_if(id, serial, spare, |_| true)
    }

    /// Removes the current registration of `id` if it is `Running`, for its
    /// exit monitor (whose own task is released, not aborted).
    pub fn take_crashed(&self, id: &InstanceId, serial: u64) -> Option<Snapshot<R, H>> {
        self.remove_if(id, serial, Some(Task::Monitor), |e| {
            e.phase == Phase::Running
        })
    }

    fn remove_if(
        &self,
        id: &InstanceId,
        serial: u64,
        spare: Option<Task>,
        condition: impl FnOnce(&Entry<R, H>) -> bool,
    ) -> Option<Snapshot<R, H>> {
        let mut entry = {
            let mut servers = self.lock();
            match servers.get(id) {
                Some(e) if e.serial == serial && condition(e) => servers.remove(id)?,
                _ => return None,
            }
        };
        // The caller's own task must not be aborted under its feet.
        match spare {
            Some(Task::Monitor) => drop(entry.tasks.monitor.take()),
            Some(Task::Components) => drop(entry.tasks.components.take()),
            Some(Task::Confirm) => drop(entry.tasks.confirm.take()),
            Some(Task::Condition) => drop(entry.tasks.condition.take()),
            None => {}
        }
        Some(entry.snapshot())
    }
}

impl<R: Clone, H: Clone> Entry<R, H> {
    fn snapshot(&self) -> Snapshot<R, H> {
        Snapshot {
            serial: self.serial,
            record: self.record.clone(),
            handle: self.handle.clone(),
            exit: self.exit.clone(),
            phase: self.phase,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::driver::exit::exit_channel;
    use crate::driver::records::ServerAddress;

    fn record() -> ServerRecord<u32> {
        ServerRecord {
            owner: "w".into(),
            generation: 1,
            address: ServerAddress {
                api_url: String::new(),
                endpoint: String::new(),
                host: String::new(),
                port: 1,
            },
            started_at: chrono::Utc::now(),
            running: true,
            platform: 1,
        }
    }

    /// The shape of an exit monitor whose server died at once: its task
    /// removes its registration first thing, then reports. It must run to
    /// the end every time (before, it could be aborted by its own late
    /// attachment to the registration it had just removed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_that_removes_its_registration_at_once_still_runs_to_the_end() {
        for _ in 0..200 {
            let registry: Arc<Registry<u32, ()>> = Arc::new(Registry::default());
            let id = InstanceId::generate();
            let (_notifier, exit) = exit_channel();
            let serial = registry.insert(&id, record(), (), exit, Phase::Running);
            let (reported, report) = tokio::sync::oneshot::channel();
            let (me, instance) = (registry.clone(), id.clone());
            let attached = registry.spawn(&id, serial, Task::Monitor, async move {
                let crashed = me.take_crashed(&instance, serial).is_some();
                tokio::task::yield_now().await;
                let _ = reported.send(crashed);
            });
            assert!(attached);
            assert_eq!(report.await, Ok(true), "the report was never made");
        }
    }

    #[tokio::test]
    async fn a_task_for_a_registration_that_is_gone_never_runs() {
        let registry: Registry<u32, ()> = Registry::default();
        let id = InstanceId::generate();
        let (_notifier, exit) = exit_channel();
        let serial = registry.insert(&id, record(), (), exit, Phase::Running);
        registry.remove(&id, serial, None);
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        let attached = registry.spawn(&id, serial, Task::Monitor, async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(!attached);
        tokio::task::yield_now().await;
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
