//! # draas-store
//!
//! The embedded implementation of DRaaS's [`StateStore`] port: everything the
//! control plane and its workers keep lives in **one file on disk**, written
//! through [redb](https://www.redb.org).
//!
//! ## Why redb
//!
//! - **One file.** A single-node DRaaS needs no database server: back up or
//!   move the file and the whole state goes with it.
//! - **ACID.** Every [`StateStore::apply`] and [`StateStore::append`] is one
//!   redb write transaction: all of it is committed or none of it is, and a
//!   commit is durable (fsynced) before the call returns. A crash never
//!   leaves half a batch behind. [`StateStore::apply_deferred`] is atomic
//!   too, and durable a moment later (see the `deferred` module: with the
//!   next durable commit, at most 50 ms later).
//! - **Pure Rust.** No C library to build or link, no `unsafe` in this crate.
//! - **Exclusive.** redb locks the file while it is open, so two DRaaS
//!   processes cannot corrupt one state file: the second
//!   [`EmbeddedStore::open`] fails with an error naming the path.
//!
//! redb is synchronous; every operation runs on Tokio's blocking pool
//! ([`tokio::task::spawn_blocking`]) so it never stalls the async runtime.
//! redb allows any number of concurrent readers alongside one writer; write
//! transactions are serialized, which is what makes compare-and-set safe.
//!
//! ## Layout
//!
//! | table         | key                     | value                  |
//! |---------------|-------------------------|------------------------|
//! | `records`     | `(collection, key)`     | `(revision, bytes)`    |
//! | `log_entries` | `(log name, cursor)`    | `bytes`                |
//! | `log_heads`   | `log name`              | last cursor assigned   |
//! | `meta`        | `"revision"`            | last revision assigned |
//! | `meta`        | `"schema_version"`      | layout version (1)     |
//! | `meta`        | `"open"`                | 1 while a process has it open |
//! | `meta`        | `"cursor_floor"`        | where a new log's cursors start (0 until a crash) |
//!
//! Keys are tuples, compared element by element, so one collection's keys
//! are contiguous and in key order, and a collection named `a` never sees
//! the keys of a collection named `ab`.
//!
//! **Revisions** come from one store-wide counter (`meta["revision"]`) that
//! every put increments. A key's revision therefore increases on every write
//! of it, and a key that is deleted and created again never gets back a
//! revision a reader may still hold, so a stale compare-and-set always fails.
//!
//! **Log cursors** come from `log_heads`, which survives trimming: the first
//! cursor of a log is 1, each append adds one, and a cursor is never reused
//! even after its entry was dropped. Entries of a log are contiguous, so the
//! entries beyond `capacity` are exactly the cursors `..= last - capacity`.
//!
//! ## Batches
//!
//! Writes of one [`StateStore::apply`] are checked and applied in order inside
//! one transaction, so a precondition sees the effect of the earlier writes
//! of the same batch (a batch that creates a key with `Absent` and then
//! creates it again fails). On the first failed precondition the transaction
//! is aborted: nothing of the batch is written.

mod deferred;
mod keyfile;

pub use keyfile::{KeyFile, KEY_FILE};

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use draas_core::ports::{
    Applied, LogPage, Precondition, Revision, StateStore, StoreError, Versioned, Write,
};
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use deferred::Shared;

/// Every record of every collection, keyed by `(collection, key)`.
const RECORDS: TableDefinition<(&str, &str), (u64, &[u8])> = TableDefinition::new("records");
/// Every entry of every log, keyed by `(log, cursor)`.
const LOG_ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log_entries");
/// Per log, the last cursor ever assigned.
const LOG_HEADS: TableDefinition<&str, u64> = TableDefinition::new("log_heads");
/// Store-wide counters and the layout version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `META` key of the last revision assigned.
const META_REVISION: &str = "revision";
/// `META` key of the cursor a log without entries counts from (moved
/// ahead after a crash, like every log's head).
const META_CURSOR_FLOOR: &str = "cursor_floor";
/// `META` key of the layout version.
const META_SCHEMA: &str = "schema_version";
/// The layout this crate reads and writes.
const SCHEMA_VERSION: u64 = 1;

/// A [`StateStore`] kept in one redb file (or in memory, for tests).
///
/// Cloning is cheap and every clone shares the same database.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    location: Arc<str>,
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file (and its parent
    /// directories) when missing.
    ///
    /// Fails with [`StoreError::Backend`] when the file is not a redb
    /// database, has a layout this version does not know, or is already open
    /// (redb locks the file; the message names the path).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Backend(format!(
                        "cannot create directory {} for the state store: {e}",
                        parent.display()
                    ))
                })?;
            }
        }
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                "cannot open state store {}: another DRaaS process is using it \
                 (the file is locked); stop it or choose another path",
                path.display()
            )),
            other => StoreError::Backend(format!(
                "cannot open state store {}: {other}",
                path.display()
            )),
        })?;
        let store = Self::init(db, path.display().to_string())?;
        tracing::info!(path = %path.display(), "opened embedded state store");
        Ok(store)
    }

    /// A store that lives in memory only (redb's in-memory backend): same
    /// behaviour as a file, gone when the last clone is dropped.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Backend(format!("cannot create in-memory store: {e}")))?;
        Self::init(db, "<memory>".to_string())
    }

    /// Where the store lives: the file path, or `<memory>`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Creates the tables, checks the layout version, and marks the store
    /// open (after a crash, first moving its counters ahead: see the
    /// `deferred` module).
    fn init(db: Database, location: String) -> Result<Self, StoreError> {
        let mut shared = Shared {
            db,
            deferral: deferred::Deferral::default(),
            opened: false,
        };
        let txn = shared.db.begin_write().map_err(backend)?;
        let checked = (|| {
            txn.open_table(RECORDS).map_err(backend)?;
            txn.open_table(LOG_ENTRIES).map_err(backend)?;
            txn.open_table(LOG_HEADS).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let found = meta.get(META_SCHEMA).map_err(backend)?.map(|g| g.value());
            match found {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION).map_err(backend)?;
                    Ok(())
                }
                Some(SCHEMA_VERSION) => Ok(()),
                Some(other) => Err(StoreError::Backend(format!(
                    "state store {location} has layout version {other}; \
                     this DRaaS understands version {SCHEMA_VERSION}"
                ))),
            }?;
            drop(meta);
            deferred::open_after_crash(&txn)
        })();
        if let Ok(true) = checked {
            tracing::warn!(
                store = %location,
                "the state store was not closed by its last process: revisions and cursors \
                 move {} ahead, past any a lost deferred write handed out",
                deferred::MAX_DEFERRED_WRITES
            );
        }
        shared.finish(txn, checked, None)?;
        shared.opened = true;
        Ok(Self {
            shared: Arc::new(shared),
            location: location.into(),
        })
    }

    /// Runs `op` on the blocking pool with the database.
    async fn run<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || op(&shared))
            .await
            .map_err(|e| StoreError::Backend(format!("state store task failed: {e}")))?
    }
}

/// Converts any redb error into [`StoreError::Backend`].
fn backend<E: Into<redb::Error>>(error: E) -> StoreError {
    StoreError::Backend(error.into().to_string())
}

/// Whether `precondition` holds for a key whose revision is `current`
/// (`None` when the key is missing).
fn holds(precondition: Precondition, current: Option<u64>) -> bool {
    match precondition {
        Precondition::None => true,
        Precondition::Absent => current.is_none(),
        Precondition::Revision(Revision(expected)) => current == Some(expected),
    }
}

/// What one applied batch did: per write, what it did, and whether its key
/// existed before the write (appends: `false`).
struct Outcome {
    applied: Vec<Applied>,
    existed: Vec<bool>,
}

/// Checks and applies `writes` in one transaction, durable at once or
/// (`defer`) a moment later; see the crate docs.
fn apply_blocking(shared: &Shared, writes: Vec<Write>, defer: bool) -> Result<Outcome, StoreError> {
    if writes.is_empty() {
        return Ok(Outcome {
            applied: Vec::new(),
            existed: Vec::new(),
        });
    }
    let txn = shared.db.begin_write().map_err(backend)?;
    let staged = stage(&txn, &writes);
    let count = u64::try_from(writes.len()).unwrap_or(u64::MAX);
    shared.finish(txn, staged, defer.then_some(count))
}

/// Applies `writes` to `txn`, failing on the first unmet precondition.
fn stage(txn: &WriteTransaction, writes: &[Write]) -> Result<Outcome, StoreError> {
    let mut records = txn.open_table(RECORDS).map_err(backend)?;
    let mut meta = txn.open_table(META).map_err(backend)?;
    let first_revision = meta
        .get(META_REVISION)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(0);
    let mut revision = first_revision;
    let floor = cursor_floor(&meta)?;
    let mut outcome = Outcome {
        applied: Vec::with_capacity(writes.len()),
        existed: Vec::with_capacity(writes.len()),
    };
    for write in writes {
        let (collection, key, precondition) = match write {
            Write::Put {
                collection,
                key,
                precondition,
                ..
            }
            | Write::Delete {
                collection,
                key,
                precondition,
            } => (collection.as_str(), key.as_str(), *precondition),
            Write::Append {
                log,
                value,
                capacity,
            } => {
                let cursor = append_in(txn, floor, log, value, *capacity)?;
                outcome.applied.push(Applied::Appended(cursor));
                outcome.existed.push(false);
                continue;
            }
        };
        let current = records
            .get((collection, key))
            .map_err(backend)?
            .map(|g| g.value().0);
        if !holds(precondition, current) {
            return Err(StoreError::Conflict {
                collection: collection.to_string(),
                key: key.to_string(),
            });
        }
        outcome.existed.push(current.is_some());
        match write {
            Write::Put { value, .. } => {
                revision = revision
                    .checked_add(1)
                    .ok_or_else(|| StoreError::Backend("revision counter exhausted".to_string()))?;
                records
                    .insert((collection, key), (revision, value.as_slice()))
                    .map_err(backend)?;
                outcome.applied.push(Applied::Put(Revision(revision)));
            }
            Write::Delete { .. } => {
                records.remove((collection, key)).map_err(backend)?;
                outcome.applied.push(Applied::Deleted);
            }
            Write::Append { .. } => {}
        }
    }
    if revision != first_revision {
        meta.insert(META_REVISION, revision).map_err(backend)?;
    }
    Ok(outcome)
}

/// Appends to `log` and trims it to `capacity`; returns the new cursor.
fn append_blocking(
    shared: &Shared,
    log: &str,
    value: &[u8],
    capacity: usize,
) -> Result<u64, StoreError> {
    let txn = shared.db.begin_write().map_err(backend)?;
    let appended = txn
        .open_table(META)
        .map_err(backend)
        .and_then(|meta| cursor_floor(&meta))
        .and_then(|floor| append_in(&txn, floor, log, value, capacity));
    shared.finish(txn, appended, None)
}

/// The cursor a log without a head counts from.
fn cursor_floor(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, StoreError> {
    Ok(meta
        .get(META_CURSOR_FLOOR)
        .map_err(backend)?
        .map_or(0, |g| g.value()))
}

/// Appends to `log` within `txn` and trims it to `capacity`; returns the
/// new cursor (a log with no head yet counts from `floor`).
fn append_in(
    txn: &WriteTransaction,
    floor: u64,
    log: &str,
    value: &[u8],
    capacity: usize,
) -> Result<u64, StoreError> {
    let mut heads = txn.open_table(LOG_HEADS).map_err(backend)?;
    let last = heads.get(log).map_err(backend)?.map(|g| g.value());
    let cursor = last
        .unwrap_or(floor)
        .checked_add(1)
        .ok_or_else(|| StoreError::Backend(format!("log {log}: cursor exhausted")))?;
    heads.insert(log, cursor).map_err(backend)?;
    let mut entries = txn.open_table(LOG_ENTRIES).map_err(backend)?;
    entries.insert((log, cursor), value).map_err(backend)?;
    // Keep cursors `keep_from..=cursor`: at most `capacity` of them.
    let capacity = u64::try_from(capacity).unwrap_or(u64::MAX);
    let keep_from = cursor.saturating_sub(capacity).saturating_add(1);
    if keep_from > 1 {
        entries
            .retain_in((log, 0)..(log, keep_from), |_, _| false)
            .map_err(backend)?;
    }
    Ok(cursor)
}

/// Reads a page of `log`.
fn read_log_blocking(
    shared: &Shared,
    log: &str,
    after: u64,
    limit: usize,
) -> Result<LogPage, StoreError> {
    let txn = shared.db.begin_read().map_err(backend)?;
    let heads = txn.open_table(LOG_HEADS).map_err(backend)?;
    let newest = heads
        .get(log)
        .map_err(backend)?
        .map(|g| g.value())
        .unwrap_or(0);
    let entries_table = txn.open_table(LOG_ENTRIES).map_err(backend)?;
    let oldest = match entries_table
        .range((log, 0)..=(log, u64::MAX))
        .map_err(backend)?
        .next()
    {
        Some(first) => first.map_err(backend)?.0.value().1,
        None => 0,
    };
    let mut entries = Vec::new();
    if let Some(from) = after.checked_add(1) {
        for item in entries_table
            .range((log, from)..=(log, u64::MAX))
            .map_err(backend)?
            .take(limit)
        {
            let (k, v) = item.map_err(backend)?;
            entries.push((k.value().1, v.value().to_vec()));
        }
    }
    Ok(LogPage {
        entries,
        oldest,
        newest,
    })
}

#[async_trait]
impl StateStore for EmbeddedStore {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.get_many(&[(collection, key)]).await?.pop().flatten())
    }

    async fn get_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Versioned>>, StoreError> {
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|(c, k)| (c.to_string(), k.to_string()))
            .collect();
        self.run(move |shared| {
            // One read transaction: one snapshot of all of them.
            let txn = shared.db.begin_read().map_err(backend)?;
            let records = txn.open_table(RECORDS).map_err(backend)?;
            keys.iter()
                .map(|(collection, key)| {
                    let found = records
                        .get((collection.as_str(), key.as_str()))
                        .map_err(backend)?;
                    Ok(found.map(|g| {
                        let (revision, value) = g.value();
                        Versioned {
                            value: value.to_vec(),
                            revision: Revision(revision),
                        }
                    }))
                })
                .collect()
        })
        .await
    }

    async fn list(&self, collection: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let collection = collection.to_string();
        self.run(move |shared| {
            let txn = shared.db.begin_read().map_err(backend)?;
            let records = txn.open_table(RECORDS).map_err(backend)?;
            let mut out = Vec::new();
            for item in records
                .range((collection.as_str(), "")..)
                .map_err(backend)?
            {
                let (k, v) = item.map_err(backend)?;
                let (c, key) = k.value();
                if c != collection {
                    break;
                }
                let (revision, value) = v.value();
                out.push((
                    key.to_string(),
                    Versioned {
                        value: value.to_vec(),
                        revision: Revision(revision),
                    },
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        self.run(move |shared| apply_blocking(shared, writes, false).map(|o| o.applied))
            .await
    }

    /// Commits without the fsync; the flusher makes it durable
    /// [`FLUSH_AFTER`](deferred::FLUSH_AFTER) later unless a durable commit
    /// does first (see the `deferred` module).
    async fn apply_deferred(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        deferred::start_flusher(&self.shared);
        let applied = self
            .run(move |shared| apply_blocking(shared, writes, true).map(|o| o.applied))
            .await?;
        deferred::wake_flusher(&self.shared);
        Ok(applied)
    }

    async fn append(&self, log: &str, value: Vec<u8>, capacity: usize) -> Result<u64, StoreError> {
        let log = log.to_string();
        self.run(move |shared| append_blocking(shared, &log, &value, capacity))
            .await
    }

    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        let log = log.to_string();
        self.run(move |shared| read_log_blocking(shared, &log, after, limit))
            .await
    }

    /// Removes one key, checking existence in the same transaction as the
    /// delete (the default reads first, then deletes).
    async fn delete(
        &self,
        collection: &str,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, StoreError> {
        let write = Write::Delete {
            collection: collection.to_string(),
            key: key.to_string(),
            precondition,
        };
        self.run(move |shared| {
            let applied = apply_blocking(shared, vec![write], false)?;
            Ok(applied.existed.first().copied().unwrap_or(false))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batch_preconditions_see_earlier_writes_of_the_batch() {
        let store = EmbeddedStore::in_memory().expect("in-memory store");
        let create = |value: &[u8]| Write::Put {
            collection: "c".into(),
            key: "k".into(),
            value: value.to_vec(),
            precondition: Precondition::Absent,
        };
        let err = store
            .apply(vec![create(b"1"), create(b"2")])
            .await
            .expect_err("conflict");
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert_eq!(store.get("c", "k").await.expect("store operation"), None);
    }

    #[tokio::test]
    async fn empty_batch_writes_nothing() {
        let store = EmbeddedStore::in_memory().expect("in-memory store");
        assert_eq!(
            store.apply(Vec::new()).await.expect("store operation"),
            Vec::new()
        );
    }

    #[tokio::test]
    async fn zero_capacity_keeps_no_entry_but_advances_the_cursor() {
        let store = EmbeddedStore::in_memory().expect("in-memory store");
        assert_eq!(
            store
                .append("l", b"a".to_vec(), 0)
                .await
                .expect("store operation"),
            1
        );
        assert_eq!(
            store
                .append("l", b"b".to_vec(), 0)
                .await
                .expect("store operation"),
            2
        );
        let page = store.read_log("l", 0, 10).await.expect("store operation");
        assert!(page.entries.is_empty());
        assert_eq!((page.oldest, page.newest), (0, 2));
    }

    #[tokio::test]
    async fn read_after_max_cursor_is_empty() {
        let store = EmbeddedStore::in_memory().expect("in-memory store");
        store
            .append("l", b"a".to_vec(), 5)
            .await
            .expect("store operation");
        let page = store
            .read_log("l", u64::MAX, 10)
            .await
            .expect("store operation");
        assert!(page.entries.is_empty());
        assert_eq!((page.oldest, page.newest), (1, 1));
    }
}
