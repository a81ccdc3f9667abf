//! The state store port: durable key-value collections with revisions, and
//! capped append-only logs with monotonic cursors.
//!
//! # Concurrency
//!
//! Every stored value has a [`Revision`]. A write names a [`Precondition`];
//! when it does not hold, the write fails with [`StoreError::Conflict`] and
//! changes nothing. Writers that can race (control-plane replicas, workers)
//! read, modify, and write back with `Precondition::Revision`, retrying on
//! conflict. [`StateStore::apply`] applies several writes atomically: all of
//! them or none.
//!
//! # Logs
//!
//! A log keeps its newest `capacity` entries. Cursors increase by one per
//! append and are never reused, so a reader that remembers a cursor can ask
//! for what came after it and learn when entries it missed were dropped.
//! (After a crash, a store that defers durability moves its cursors and
//! revisions ahead, past any a lost write had handed out.)
//!
//! # Durability
//!
//! A write is durable when [`StateStore::apply`] returns. One kind of write
//! may be made durable a moment later: [`StateStore::apply_deferred`], for
//! what a worker observed of its own servers, which the worker observes
//! again whenever it starts (see [`Durability::Deferred`]).

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of a stored value; increases on every write of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub u64);

/// A condition a write requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Write whatever is there.
    None,
    /// The key must not exist (create).
    Absent,
    /// The key must exist at exactly this revision (compare-and-set).
    Revision(Revision),
}

/// When a write must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// On disk before the write returns.
    #[default]
    Immediate,
    /// Visible at once, durable a moment later (with the store's next
    /// durable write, or after a short delay). A crash of the process that
    /// holds the store may lose it, so it is only for facts its writer
    /// learns again after such a crash: a worker's observations of its
    /// servers, recorded in a store that lives in the worker's own process
    /// (the embedded store; it dies with them), which the worker observes
    /// anew when it starts. It spares the fsync on the way from a crash to
    /// its restart: the restart's own durable write makes the crash durable.
    Deferred,
}

/// A value and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes stored (JSON for DRaaS's records).
    pub value: Vec<u8>,
    /// Its revision.
    pub revision: Revision,
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Store `value` under `collection/key`.
    Put {
        /// Collection (like a table).
        collection: String,
        /// Key within it.
        key: String,
        /// Bytes to store.
        value: Vec<u8>,
        /// Condition.
        precondition: Precondition,
    },
    /// Remove `collection/key`.
    Delete {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Condition.
        precondition: Precondition,
    },
    /// Append `value` to `log`, dropping the oldest entries beyond
    /// `capacity` (like [`StateStore::append`], but in the batch: a record
    /// and its log entry are written together or not at all).
    Append {
        /// The log.
        log: String,
        /// The entry.
        value: Vec<u8>,
        /// Entries the log keeps.
        capacity: usize,
    },
}

/// What one write of a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A put: the key's new revision.
    Put(Revision),
    /// A delete.
    Deleted,
    /// An append: the entry's cursor.
    Appended(u64),
}

impl Applied {
    /// The new revision of a put.
    pub fn revision(self) -> Option<Revision> {
        match self {
            Applied::Put(revision) => Some(revision),
            _ => None,
        }
    }

    /// The cursor of an append.
    pub fn cursor(self) -> Option<u64> {
        match self {
            Applied::Appended(cursor) => Some(cursor),
            _ => None,
        }
    }
}

/// A page of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// Entries after the requested cursor, oldest first.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Cursor of the oldest entry still kept (0 when the log is empty).
    pub oldest: u64,
    /// Cursor of the newest entry (0 when nothing was ever appended).
    pub newest: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition did not hold; nothing was written. Retry after
    /// re-reading.
    #[error("conflict on {collection}/{key}: it changed since it was read")]
    Conflict {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
    },
    /// The backend cannot be reached right now; retrying later may work.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("corrupt value in {collection}/{key}: {message}")]
    Corrupt {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// Anything else (I/O, backend errors).
    #[error("state store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the operation may succeed if retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. } | StoreError::Unavailable(_)
        )
    }
}

/// Durable state shared by the control plane and the workers.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The value of `collection/key`, or `None`.
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// The values of several keys (`(collection, key)` pairs), in order,
    /// read together: one round trip, and one snapshot where the backend
    /// has them.
    async fn get_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Versioned>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for (collection, key) in keys {
            found.push(self.get(collection, key).await?);
        }
        Ok(found)
    }

    /// Every key of `collection` with its value, in key order.
    async fn list(&self, collection: &str) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Applies `writes` atomically. Returns, per write, what it did (a put's
    /// new revision, an append's cursor). Fails with `Conflict` (naming the
    /// first failed precondition) and writes nothing if any precondition
    /// fails. A delete of a missing key with `Precondition::None` succeeds.
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError>;

    /// [`apply`](Self::apply) with [`Durability::Deferred`]: the writes are
    /// visible at once and may become durable a moment later. A store whose
    /// writes cost no wait for the disk (or that is shared by processes that
    /// do not die together) keeps the default: durable at once.
    async fn apply_deferred(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        self.apply(writes).await
    }

    /// Appends `value` to `log`, dropping the oldest entries beyond
    /// `capacity`; returns the new entry's cursor.
    async fn append(&self, log: &str, value: Vec<u8>, capacity: usize) -> Result<u64, StoreError>;

    /// Up to `limit` entries of `log` with a cursor greater than `after`.
    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError>;

    /// Stores one value (shorthand for a one-write [`apply`](Self::apply)).
    async fn put(
        &self,
        collection: &str,
        key: &str,
        value: Vec<u8>,
        precondition: Precondition,
    ) -> Result<Revision, StoreError> {
        let mut revisions = self
            .apply(vec![Write::Put {
                collection: collection.to_string(),
                key: key.to_string(),
                value,
                precondition,
            }])
            .await?;
        revisions
            .pop()
            .and_then(Applied::revision)
            .ok_or_else(|| StoreError::Backend("put returned no revision".into()))
    }

    /// Removes one key; `false` when it did not exist.
    async fn delete(
        &self,
        collection: &str,
        key: &str,
        precondition: Precondition,
    ) -> Result<bool, StoreError> {
        let existed = self.get(collection, key).await?.is_some();
        self.apply(vec![Write::Delete {
            collection: collection.to_string(),
            key: key.to_string(),
            precondition,
        }])
        .await?;
        Ok(existed)
    }
}

#[async_trait]
impl<T: StateStore + ?Sized> StateStore for std::sync::Arc<T> {
    async fn get(&self, collection: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
        (**self).get(collection, key).await
    }
    async fn get_many(&self, keys: &[(&str, &str)]) -> Result<Vec<Option<Versioned>>, StoreError> {
        (**self).get_many(keys).await
    }
    async fn list(&self, collection: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        (**self).list(collection).await
    }
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        (**self).apply(writes).await
    }
    async fn apply_deferred(&self, writes: Vec<Write>) -> Result<Vec<Applied>, StoreError> {
        (**self).apply_deferred(writes).await
    }
    async fn append(&self, log: &str, value: Vec<u8>, capacity: usize) -> Result<u64, StoreError> {
        (**self).append(log, value, capacity).await
    }
    async fn read_log(&self, log: &str, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        (**self).read_log(log, after, limit).await
    }
}

/// A typed record read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    /// The decoded value.
    pub value: T,
    /// Its revision (for compare-and-set).
    pub revision: Revision,
}

/// JSON helpers over any [`StateStore`].
#[async_trait]
pub trait JsonStore: StateStore {
    /// Reads and decodes `collection/key`.
    async fn get_json<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Option<Record<T>>, StoreError> {
        match self.get(collection, key).await? {
            None => Ok(None),
            Some(v) => Ok(Some(Record {
                value: decode(collection, key, &v.value)?,
                revision: v.revision,
            })),
        }
    }

    /// Reads and decodes a whole collection.
    async fn list_json<T: DeserializeOwned>(
        &self,
        collection: &str,
    ) -> Result<Vec<(String, Record<T>)>, StoreError> {
        self.list(collection)
            .await?
            .into_iter()
            .map(|(key, v)| {
                let value = decode(collection, &key, &v.value)?;
                Ok((
                    key,
                    Record {
                        value,
                        revision: v.revision,
                    },
                ))
            })
            .collect()
    }

    /// Encodes and stores `value`.
    async fn put_json<T: Serialize + Sync>(
        &self,
        collection: &str,
        key: &str,
        value: &T,
        precondition: Precondition,
    ) -> Result<Revision, StoreError> {
        self.put(collection, key, encode(value)?, precondition)
            .await
    }
}

impl<S: StateStore + ?Sized> JsonStore for S {}

/// Encodes a record as JSON.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("cannot encode: {e}")))
}

/// Decodes a JSON record.
pub fn decode<T: DeserializeOwned>(
    collection: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        collection: collection.to_string(),
        key: key.to_string(),
        message: e.to_string(),
    })
}

// === read-modify-write ===

/// What one round of [`read_modify_write`] decided.
#[derive(Debug)]
pub enum Change<T, O> {
    /// Store `value` in place of what was read (or create it when nothing
    /// was), together with `also` in the same atomic batch, and return
    /// `output`.
    Put {
        /// The new value.
        value: T,
        /// More writes of the same batch (reservations, say).
        also: Vec<Write>,
        /// What the caller gets.
        output: O,
    },
    /// Remove the record (with `also`), and return `output`.
    Delete {
        /// More writes of the same batch.
        also: Vec<Write>,
        /// What the caller gets.
        output: O,
    },
    /// Write nothing; return `output`.
    Keep(O),
}

/// Why a [`read_modify_write`] stopped without writing.
#[derive(Debug, thiserror::Error)]
pub enum CasError<E> {
    /// The change itself refused (not found, invalid state, ...).
    #[error(transparent)]
    Rejected(E),
    /// The store failed, or a write of `also` met a precondition that did
    /// not hold (a `Conflict` naming another record than the one changed).
    #[error(transparent)]
    Store(StoreError),
    /// The record kept changing between the read and the write.
    #[error("{collection}/{key} kept changing after {attempts} attempts")]
    Exhausted {
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Attempts made.
        attempts: usize,
    },
}

impl CasError<std::convert::Infallible> {
    /// The store's error, for a change that never refuses: a record that
    /// kept changing is a `Conflict` on it.
    pub fn into_store_error(self) -> StoreError {
        match self {
            CasError::Rejected(never) => match never {},
            CasError::Store(e) => e,
            CasError::Exhausted {
                collection, key, ..
            } => StoreError::Conflict { collection, key },
        }
    }
}

/// The longest pause between two rounds of [`read_modify_write`].
pub const RETRY_PAUSE_CAP: Duration = Duration::from_millis(5);

/// A random pause before round `round` (from 1): up to 100 µs doubled per
/// round lost, at most [`RETRY_PAUSE_CAP`] ("full jitter").
fn retry_pause(round: usize) -> Duration {
    let ceiling = Duration::from_micros(100)
        .saturating_mul(1u32 << round.min(16))
        .min(RETRY_PAUSE_CAP);
    let mut random = [0u8; 4];
    // Without randomness the pause is the ceiling: still a pause.
    let fraction = match getrandom::fill(&mut random) {
        Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    };
    ceiling.mul_f64(fraction)
}

/// Reads `collection/key`, lets `change` decide what to write, and writes it
/// with a compare-and-set on the revision read (or `Absent` when there was
/// no record). When the record changed meanwhile, the whole round runs
/// again on the fresh record, up to `attempts` times, so `change` must be a
/// pure function of what it is given. This is the one read-modify-write
/// loop of DRaaS: every writer that can race goes through it.
///
/// After a lost round it waits a random while (up to [`RETRY_PAUSE_CAP`],
/// growing with the rounds lost) before reading again: without it, N
/// writers that read together go on colliding, one winning per round, so
/// the last needs N rounds (20 concurrent PATCHes exhausted 16 attempts).
///
/// Returns `change`'s output and what each of its `also` writes did (an
/// append's cursor, say; empty when nothing was written).
pub async fn read_modify_write<S, T, O, E, F>(
    store: &S,
    collection: &str,
    key: &str,
    attempts: usize,
    change: F,
) -> Result<(O, Vec<Applied>), CasError<E>>
where
    S: StateStore + ?Sized,
    T: Serialize + DeserializeOwned + Send,
    F: FnMut(Option<Record<T>>) -> Result<Change<T, O>, E> + Send,
{
    read_modify_write_with(
        store,
        Durability::Immediate,
        collection,
        key,
        attempts,
        change,
    )
    .await
}

/// [`read_modify_write`] whose write has the given [`Durability`].
pub async fn read_modify_write_with<S, T, O, E, F>(
    store: &S,
    durability: Durability,
    collection: &str,
    key: &str,
    attempts: usize,
    change: F,
) -> Result<(O, Vec<Applied>), CasError<E>>
where
    S: StateStore + ?Sized,
    T: Serialize + DeserializeOwned + Send,
    F: FnMut(Option<Record<T>>) -> Result<Change<T, O>, E> + Send,
{
    read_modify_write_from(store, durability, collection, key, attempts, None, change).await
}

/// [`read_modify_write_with`] whose first round starts from `read` (what
/// the caller just read of `collection/key`, together with other records:
/// one round trip fewer) instead of reading; a round lost to a concurrent
/// write reads again.
pub async fn read_modify_write_from<S, T, O, E, F>(
    store: &S,
    durability: Durability,
    collection: &str,
    key: &str,
    attempts: usize,
    mut read: Option<Option<Record<T>>>,
    mut change: F,
) -> Result<(O, Vec<Applied>), CasError<E>>
where
    S: StateStore + ?Sized,
    T: Serialize + DeserializeOwned + Send,
    F: FnMut(Option<Record<T>>) -> Result<Change<T, O>, E> + Send,
{
    for round in 0..attempts.max(1) {
        if round > 0 {
            futures_timer::Delay::new(retry_pause(round)).await;
        }
        let current = match read.take() {
            Some(given) => given,
            None => store
                .get_json::<T>(collection, key)
                .await
                .map_err(CasError::Store)?,
        };
        let precondition = current
            .as_ref()
            .map_or(Precondition::Absent, |r| Precondition::Revision(r.revision));
        let (own, also, output) = match change(current).map_err(CasError::Rejected)? {
            Change::Keep(output) => return Ok((output, Vec::new())),
            Change::Put {
                value,
                also,
                output,
            } => {
                let own = Write::Put {
                    collection: collection.to_string(),
                    key: key.to_string(),
                    value: encode(&value).map_err(CasError::Store)?,
                    precondition,
                };
                (own, also, output)
            }
            Change::Delete { also, output } => {
                let own = Write::Delete {
                    collection: collection.to_string(),
                    key: key.to_string(),
                    precondition,
                };
                (own, also, output)
            }
        };
        let mut writes = vec![own];
        writes.extend(also);
        let written = match durability {
            Durability::Immediate => store.apply(writes).await,
            Durability::Deferred => store.apply_deferred(writes).await,
        };
        match written {
            Ok(mut applied) => {
                applied.remove(0);
                return Ok((output, applied));
            }
            Err(StoreError::Conflict {
                collection: c,
                key: k,
            }) if c == collection && k == key => continue,
            Err(e) => return Err(CasError::Store(e)),
        }
    }
    Err(CasError::Exhausted {
        collection: collection.to_string(),
        key: key.to_string(),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_between_rounds_grows_with_the_rounds_lost_up_to_its_cap() {
        for _ in 0..200 {
            assert!(retry_pause(1) <= Duration::from_micros(200));
            assert!(retry_pause(3) <= Duration::from_micros(800));
            assert!(retry_pause(40) <= RETRY_PAUSE_CAP);
        }
        // Random, not a constant: 200 draws are not all alike.
        let draws: std::collections::HashSet<Duration> = (0..200).map(|_| retry_pause(6)).collect();
        assert!(draws.len() > 1);
    }
}
