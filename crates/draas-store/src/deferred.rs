//! Deferred durability ([`Durability::Deferred`]): commits that skip the
//! fsync, made durable by the next durable commit or, at the latest,
//! [`FLUSH_AFTER`] later by the flusher.
//!
//! Why: a worker records a crash of its server, the reconciler answers it
//! with a restart whose own durable write (one more restart in a row) goes
//! to disk first. Two fsyncs in a row on the way from a crash to its
//! restart became one; on a virtual disk an fsync costs about a
//! millisecond, a sixth of the bundled runtime's start.
//!
//! What a crash of the process can lose: the deferred commits since the
//! last durable one (at most [`MAX_DEFERRED_WRITES`] writes). Only a
//! worker's observations of its own servers are deferred, and a worker
//! that records into this store lives in this process (redb locks the file
//! to it), so it dies with them and observes its servers anew when it
//! starts again.
//!
//! What a crash never does: hand out twice a revision or a cursor that a
//! lost commit handed out, which would let a stale compare-and-set pass or
//! make a reader skip an entry. The store notes in its file that it is
//! open; a store that opens a file still marked open (the last process
//! died without closing it) moves every revision counter and log cursor
//! [`MAX_DEFERRED_WRITES`] ahead before anything else is written.
//!
//! [`Durability::Deferred`]: draas_core::ports::Durability::Deferred

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use draas_core::ports::StoreError;
use redb::{Database, Durability, ReadableTable, WriteTransaction};
use tokio::sync::Notify;

use crate::{backend, LOG_HEADS, META, META_CURSOR_FLOOR, META_REVISION};

/// The longest a deferred commit waits for a durable one before the
/// flusher makes it durable. Long enough for the reconciler to answer a
/// crash (a millisecond or two), short enough to lose little.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// At most this many writes are deferred at once; beyond it a deferred
/// commit is made durable at once. It bounds what a crash can lose, and so
/// how far counters move ahead after one.
pub(crate) const MAX_DEFERRED_WRITES: u64 = 1024;

/// `META` key: 1 while a process has the store open, 0 once it closed it.
const META_OPEN: &str = "open";

/// The bookkeeping of deferred commits. Counted in writes (each moves a
/// revision counter or a log cursor by at most one).
#[derive(Debug, Default)]
pub(crate) struct Deferral {
    /// Writes committed with deferred durability, ever.
    deferred: AtomicU64,
    /// Of those, how many a durable commit has covered.
    durable: AtomicU64,
    /// Wakes the flusher.
    wake: Arc<Notify>,
    flusher_started: AtomicBool,
}

impl Deferral {
    /// Writes deferred and not yet durable.
    pub(crate) fn pending(&self) -> u64 {
        self.deferred
            .load(Ordering::Acquire)
            .saturating_sub(self.durable.load(Ordering::Acquire))
    }
}

/// The database and its deferral: what every clone of a store shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) db: Database,
    pub(crate) deferral: Deferral,
    /// Whether the store was opened (and marked open): only then is it
    /// marked closed when dropped.
    pub(crate) opened: bool,
}

impl Shared {
    /// Commits `txn` when `outcome` is `Ok` (aborts it otherwise):
    /// deferred when `defer` names the number of writes it holds and there
    /// is room for them, durable otherwise.
    pub(crate) fn finish<T>(
        &self,
        txn: WriteTransaction,
        outcome: Result<T, StoreError>,
        defer: Option<u64>,
    ) -> Result<T, StoreError> {
        let value = match outcome {
            Ok(value) => value,
            Err(error) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "aborting a state store transaction failed");
                }
                return Err(error);
            }
        };
        self.commit(txn, defer)?;
        Ok(value)
    }

    /// Commits `txn`; see [`finish`](Self::finish). The counters change
    /// only while the transaction is open, so in commit order.
    fn commit(&self, mut txn: WriteTransaction, defer: Option<u64>) -> Result<(), StoreError> {
        let deferral = &self.deferral;
        let room = defer
            .filter(|writes| deferral.pending().saturating_add(*writes) <= MAX_DEFERRED_WRITES);
        // Without room (or if redb refuses), durable at once.
        let deferred = room.filter(|_| txn.set_durability(Durability::None).is_ok());
        match deferred {
            Some(writes) => {
                // Counted before the commit: a failed commit then only
                // costs a flush with nothing to flush.
                deferral.deferred.fetch_add(writes, Ordering::AcqRel);
                txn.commit().map_err(backend)
            }
            None => {
                let covered = deferral.deferred.load(Ordering::Acquire);
                txn.commit().map_err(backend)?;
                deferral.durable.fetch_max(covered, Ordering::AcqRel);
                Ok(())
            }
        }
    }

    /// Makes every deferred commit durable (a durable commit of its own),
    /// if any is pending.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        if self.deferral.pending() == 0 {
            return Ok(());
        }
        self.mark_open(true)
    }

    /// Writes the open mark durably (which makes every deferred commit
    /// durable too).
    fn mark_open(&self, open: bool) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        let marked = (|| {
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(META_OPEN, u64::from(open)).map_err(backend)?;
            Ok(())
        })();
        self.finish(txn, marked, None)
    }
}

impl Drop for Shared {
    /// The last clone of the store closes it: whatever was deferred is
    /// made durable, and the file is marked closed.
    fn drop(&mut self) {
        if !self.opened {
            return;
        }
        if let Err(e) = self.mark_open(false) {
            tracing::warn!(error = %e, "closing the state store: cannot mark it closed");
        }
    }
}

/// At open, inside the opening transaction: when the file is still marked
/// open (its last process died with it open), moves the revision counter,
/// every log's cursor and the cursor a new log starts from
/// [`MAX_DEFERRED_WRITES`] ahead, past anything a lost deferred commit
/// handed out (a lost append may have been its log's first); then marks
/// the file open. Returns whether the counters moved.
pub(crate) fn open_after_crash(txn: &WriteTransaction) -> Result<bool, StoreError> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    let crashed = meta.get(META_OPEN).map_err(backend)?.map(|g| g.value()) == Some(1);
    if crashed {
        for counter in [META_REVISION, META_CURSOR_FLOOR] {
            let value = meta.get(counter).map_err(backend)?.map_or(0, |g| g.value());
            meta.insert(counter, value.saturating_add(MAX_DEFERRED_WRITES))
                .map_err(backend)?;
        }
        let mut heads = txn.open_table(LOG_HEADS).map_err(backend)?;
        let mut moved = Vec::new();
        for item in heads.iter().map_err(backend)? {
            let (log, cursor) = item.map_err(backend)?;
            moved.push((
                log.value().to_string(),
                cursor.value().saturating_add(MAX_DEFERRED_WRITES),
            ));
        }
        for (log, cursor) in &moved {
            heads.insert(log.as_str(), *cursor).map_err(backend)?;
        }
    }
    meta.insert(META_OPEN, 1).map_err(backend)?;
    Ok(crashed)
}

/// Starts the flusher of `shared` unless it runs already. It holds the
/// store only while it flushes, so dropping the last clone still closes it.
pub(crate) fn start_flusher(shared: &Arc<Shared>) {
    if shared.deferral.flusher_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let wake = Arc::clone(&shared.deferral.wake);
    let weak = Arc::downgrade(shared);
    tokio::spawn(flush_loop(weak, wake));
}

/// Tells the flusher a deferred commit happened.
pub(crate) fn wake_flusher(shared: &Shared) {
    shared.deferral.wake.notify_one();
}

async fn flush_loop(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        tokio::time::sleep(FLUSH_AFTER).await;
        let Some(store) = shared.upgrade() else {
            return;
        };
        if store.deferral.pending() == 0 {
            continue;
        }
        let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "state store: deferred commits not flushed"),
            Err(e) => tracing::warn!(error = %e, "state store: the flush task failed"),
        }
        // Whatever is still pending (a failed flush) is tried again.
        if shared
            .upgrade()
            .is_some_and(|store| store.deferral.pending() > 0)
        {
            wake.notify_one();
        }
    }
}
