//! The servers a worker runs now, in memory, each with the one task that
//! watches it.
//!
//! Every registration gets a serial number, and one *owner* task, spawned
//! with it, that runs all of its watchers (its exit monitor, its component
//! watch, a health confirmation, its platform's condition watch) as
//! futures of that one task. A watcher is handed to the owner through the
//! registration's mailbox, under the registry's lock: it runs only if its
//! registration is the current one when it is handed over, and it never
//! runs before it is the registration's (no spawn-then-attach race). When a
//! registration is removed or replaced its mailbox closes and its owner
//! ends, dropping every watcher with it: no abort handles kept across
//! tasks. What must outlive the registration (the report of a crash, once
//! the crash took the registration) is spawned by the watcher as a task of
//! its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::Poll;

use draas_core::instance::InstanceId;
use tokio::sync::mpsc;

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

/// A watcher, as its owner runs it.
type Watcher = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The slots of a registration's watchers: one of each at a time.
const SLOTS: usize = 4;

/// The owner of one registration, as the registry holds it: its mailbox
/// (dropped with the registration, which ends the owner) and which
/// watchers it was handed.
struct Owner {
    mailbox: mpsc::UnboundedSender<(Task, Watcher)>,
    handed: [bool; SLOTS],
}

impl Owner {
    /// Spawns the owner of a new registration.
    fn spawn() -> Self {
        let (mailbox, watchers) = mpsc::unbounded_channel();
        tokio::spawn(own(watchers));
        Self {
            mailbox,
            handed: [false; SLOTS],
        }
    }
}

/// The owner task of one registration: runs the watchers it is handed (a
/// new one in a slot replaces, and so drops, the one there) until the
/// registration's mailbox closes, then drops those still running.
async fn own(mut mailbox: mpsc::UnboundedReceiver<(Task, Watcher)>) {
    let mut slots: [Option<Watcher>; SLOTS] = Default::default();
    loop {
        // Runs the watchers; never ends by itself (finished ones leave
        // their slot empty).
        let watch = std::future::poll_fn(|cx| {
            for slot in &mut slots {
                if let Some(watcher) = slot {
                    if watcher.as_mut().poll(cx).is_ready() {
                        *slot = None;
                    }
                }
            }
            Poll::<()>::Pending
        });
        tokio::select! {
            handed = mailbox.recv() => match handed {
                Some((task, watcher)) => slots[task.slot()] = Some(watcher),
                None => return,
            },
            () = watch => {}
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

impl Task {
    fn slot(self) -> usize {
        match self {
            Task::Monitor => 0,
            Task::Components => 1,
            Task::Confirm => 2,
            Task::Condition => 3,
        }
    }
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
    owner: Owner,
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

    /// Registers a server, replacing (and ending the owner of) any earlier
    /// registration of `id`. Returns its serial. Runs in a Tokio runtime
    /// (the registration's owner task is spawned).
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
                owner: Owner::spawn(),
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

    /// Forgets every server (their watchers end with their owners).
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

    /// Hands `watcher` to the owner of registration `serial` of `id`, as
    /// its watcher in `slot` (replacing the one there). Returns whether it
    /// was handed over: if not, the registration is not the current one
    /// and the watcher never runs.
    pub fn spawn<F>(&self, id: &InstanceId, serial: u64, slot: Task, watcher: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut servers = self.lock();
        match servers.get_mut(id) {
            Some(e) if e.serial == serial => {
                let handed = e.owner.mailbox.send((slot, Box::pin(watcher))).is_ok();
                e.owner.handed[slot.slot()] |= handed;
                handed
            }
            _ => false,
        }
    }

    /// Whether registration `serial` of `id` was handed a watcher in
    /// `slot`.
    pub fn has_task(&self, id: &InstanceId, serial: u64, slot: Task) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|e| e.serial == serial && e.owner.handed[slot.slot()])
    }

    /// Removes registration `serial` of `id` (its owner ends, and its
    /// watchers with it), if it is the current one.
    pub fn remove(&self, id: &InstanceId, serial: u64) -> Option<Snapshot<R, H>> {
        self.remove_if(id, serial, |_| true)
    }

    /// Removes the current registration of `id` if it is `Running`, for its
    /// exit monitor: from then on the crash is the monitor's to report
    /// (in a task of its own: the registration's owner ends).
    pub fn take_crashed(&self, id: &InstanceId, serial: u64) -> Option<Snapshot<R, H>> {
        self.remove_if(id, serial, |e| e.phase == Phase::Running)
    }

    fn remove_if(
        &self,
        id: &InstanceId,
        serial: u64,
        condition: impl FnOnce(&Entry<R, H>) -> bool,
    ) -> Option<Snapshot<R, H>> {
        let entry = {
            let mut servers = self.lock();
            match servers.get(id) {
                Some(e) if e.serial == serial && condition(e) => servers.remove(id)?,
                _ => return None,
            }
        };
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
            version: draas_core::records::RECORD_VERSION,
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

    /// The shape of an exit monitor whose server died at once: its watcher
    /// takes the crash (removing its registration) first thing, then hands
    /// the report to a task of its own. The report is made every time
    /// (before, the monitor could be aborted by its own late attachment to
    /// the registration it had just removed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_taken_at_once_is_always_reported() {
        for _ in 0..200 {
            let registry: Arc<Registry<u32, ()>> = Arc::new(Registry::default());
            let id = InstanceId::generate();
            let (_notifier, exit) = exit_channel();
            let serial = registry.insert(&id, record(), (), exit, Phase::Running);
            let (reported, report) = tokio::sync::oneshot::channel();
            let (me, instance) = (registry.clone(), id.clone());
            let handed = registry.spawn(&id, serial, Task::Monitor, async move {
                let crashed = me.take_crashed(&instance, serial).is_some();
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let _ = reported.send(crashed);
                });
            });
            assert!(handed);
            assert_eq!(report.await, Ok(true), "the report was never made");
        }
    }

    /// A registration removed or replaced ends its watchers (its owner
    /// ends); the new registration's watchers run.
    #[tokio::test]
    async fn removing_or_replacing_a_registration_ends_its_watchers() {
        let registry: Registry<u32, ()> = Registry::default();
        let id = InstanceId::generate();
        // A watcher that never ends by itself: its sender is dropped with it.
        let forever = |alive: tokio::sync::oneshot::Sender<()>| async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        };
        let (_n1, exit) = exit_channel();
        let first = registry.insert(&id, record(), (), exit, Phase::Running);
        let (alive, ended) = tokio::sync::oneshot::channel();
        assert!(registry.spawn(&id, first, Task::Components, forever(alive)));
        assert!(registry.has_task(&id, first, Task::Components));
        let (_n2, exit) = exit_channel();
        let second = registry.insert(&id, record(), (), exit, Phase::Running);
        tokio::time::timeout(std::time::Duration::from_secs(5), ended)
            .await
            .expect("the replaced registration's watcher ended")
            .expect_err("dropped, not finished");
        assert!(!registry.has_task(&id, second, Task::Components));
        let (alive, ended) = tokio::sync::oneshot::channel();
        assert!(registry.spawn(&id, second, Task::Components, forever(alive)));
        // A watcher handed to an old registration never runs.
        assert!(!registry.spawn(&id, first, Task::Confirm, async {}));
        registry.remove(&id, second);
        tokio::time::timeout(std::time::Duration::from_secs(5), ended)
            .await
            .expect("the removed registration's watcher ended")
            .expect_err("dropped, not finished");
        assert_eq!(registry.len(), 0);
    }

    #[tokio::test]
    async fn a_task_for_a_registration_that_is_gone_never_runs() {
        let registry: Registry<u32, ()> = Registry::default();
        let id = InstanceId::generate();
        let (_notifier, exit) = exit_channel();
        let serial = registry.insert(&id, record(), (), exit, Phase::Running);
        registry.remove(&id, serial);
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
