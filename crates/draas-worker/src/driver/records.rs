//! What a driver persists per server, and the ownership protocol.
//!
//! Every server a worker launches gets a [`ServerRecord`] in the store,
//! in the collection of its platform and **scope** (the host of a Process
//! worker, the engine of a Docker worker, the cluster of a Kubernetes one):
//! every worker of the scope can reach the server, and only they read the
//! collection. The record names its owner (the worker that runs it), how to
//! reach its API, and the platform's part (pid and start time, container
//! id, ...). It outlives the server: after a stop it still says where the
//! instance's files or volumes are, until the instance is deleted.
//!
//! **Takeover.** A worker acts on a server only if it owns the record, or
//! if the owner is no longer alive (its heartbeat expired): then it
//! re-attaches to the server (the platform verifies it is the same one: a
//! reused pid or a recreated container is not) and rewrites the record
//! with itself as owner, with a compare-and-set, so two workers never both
//! take one server.
//!
//! **Fenced writes.** Every later write of the record is a compare-and-set
//! that holds only while this worker still owns it: a worker that was
//! declared dead (a long pause) and taken over finds, when it wakes, that
//! its writes are refused ([`ErrorCode::InvalidState`], "taken over"), and
//! stops acting on that server instead of overwriting its successor's
//! record.

use chrono::{DateTime, Utc};
use draas_core::instance::{InstanceId, PlatformType};
use draas_core::keys;
use draas_core::messages::ErrorCode;
use draas_core::ports::store::{read_modify_write, CasError, Change, JsonStore, Precondition};
use draas_core::ports::{DriverError, Record, StateStore, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where a server's API is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerAddress {
    /// The URL the worker calls (readiness, components, events).
    pub api_url: String,
    /// The URL users are given (the advertised host or the engine's host,
    /// and the published port).
    pub endpoint: String,
    /// Host part of `endpoint`.
    pub host: String,
    /// Port part of `endpoint`.
    pub port: u16,
}

/// One server as its worker persists it; `P` is the platform's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRecord<P> {
    /// The record's format version ([`draas_core::records::RECORD_VERSION`];
    /// 0: written before records carried one).
    #[serde(default)]
    pub version: u32,
    /// The worker that runs it (or last ran it).
    pub owner: String,
    /// The configuration generation it runs.
    pub generation: u64,
    /// Where its API is.
    pub address: ServerAddress,
    /// When it was launched.
    pub started_at: DateTime<Utc>,
    /// Whether it was launched and not stopped since.
    pub running: bool,
    /// The platform's part.
    pub platform: P,
}

/// What [`Records::take_over`] found.
#[derive(Debug)]
pub enum Takeover<P, H> {
    /// No record of the instance in this scope.
    NoRecord,
    /// The record is another worker's, and that worker is alive.
    OwnedBy(String),
    /// The record (now this worker's) is of a stopped server.
    Stopped(ServerRecord<P>),
    /// The server runs and is now this worker's.
    Adopted(ServerRecord<P>, H),
    /// The record said running, but the server is gone (or the platform
    /// handle now names something else); the record is now this worker's,
    /// marked stopped.
    Gone(ServerRecord<P>),
}

/// Attempts of a record's compare-and-set before giving up.
const ATTEMPTS: usize = 8;

/// The server records of one platform scope, as seen by one worker.
pub struct Records<P> {
    store: Arc<dyn StateStore>,
    collection: String,
    worker_id: String,
    scope: String,
    _platform: std::marker::PhantomData<fn() -> P>,
}

fn platform_error(what: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorCode::PlatformError, format!("{what}: {e}"))
}

impl<P> Records<P>
where
    P: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + 'static,
{
    /// The records of `platform` in `scope`, for worker `worker_id`.
    pub fn new(
        store: Arc<dyn StateStore>,
        platform: PlatformType,
        scope: &str,
        worker_id: &str,
    ) -> Self {
        Self {
            store,
            collection: keys::worker_records(platform, scope),
            worker_id: worker_id.to_string(),
            scope: scope.to_string(),
            _platform: std::marker::PhantomData,
        }
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The store collection of the records.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The record of `id`.
    pub async fn get(
        &self,
        id: &InstanceId,
    ) -> Result<Option<Record<ServerRecord<P>>>, StoreError> {
        self.store
            .get_json::<ServerRecord<P>>(&self.collection, id.as_str())
            .await
    }

    /// Every record of the scope (unreadable keys skipped).
    pub async fn list(&self) -> Result<Vec<(InstanceId, ServerRecord<P>)>, StoreError> {
        Ok(self
            .store
            .list_json::<ServerRecord<P>>(&self.collection)
            .await?
            .into_iter()
            .filter_map(|(key, record)| match key.parse::<InstanceId>() {
                Ok(id) => Some((id, record.value)),
                Err(_) => {
                    tracing::warn!("ignoring a server record with an invalid key {key:?}");
                    None
                }
            })
            .collect())
    }

    /// Stores `record`, this worker's: refused when another worker owns
    /// the stored record (it took the server over from this one; see the
    /// module docs).
    pub async fn save(&self, id: &InstanceId, record: &ServerRecord<P>) -> Result<(), DriverError> {
        let outcome = read_modify_write(
            self.store.as_ref(),
            &self.collection,
            id.as_str(),
            ATTEMPTS,
            |current: Option<Record<ServerRecord<P>>>| match current {
                Some(stored) if stored.value.owner != self.worker_id => Err(stored.value.owner),
                _ => Ok(Change::Put {
                    value: record.clone(),
                    also: Vec::new(),
                    output: (),
                }),
            },
        )
        .await;
        match outcome {
            Ok(_) => Ok(()),
            Err(CasError::Rejected(owner)) => Err(self.taken_over(id, &owner)),
            Err(CasError::Store(e)) => Err(platform_error("cannot persist the server record", e)),
            Err(CasError::Exhausted { attempts, .. }) => Err(platform_error(
                "cannot persist the server record",
                format!("it kept changing ({attempts} attempts)"),
            )),
        }
    }

    /// The error of a write refused because `owner` took the server over.
    fn taken_over(&self, id: &InstanceId, owner: &str) -> DriverError {
        tracing::warn!(instance = %id, %owner, "this worker no longer owns the server: it was taken over");
        DriverError::new(
            ErrorCode::InvalidState,
            format!("the server of {id} was taken over by worker {owner}; this worker no longer acts on it"),
        )
    }

    /// Marks the record of `id` stopped (the server is gone; the record
    /// still says where its files are).
    pub async fn mark_stopped(&self, id: &InstanceId) -> Result<(), DriverError> {
        self.mark_stopped_if(id, |_| true).await
    }

    /// Marks the record of `id` stopped if it still describes the launch
    /// of `started_at` (a later launch's record is left alone).
    pub async fn mark_exited(
        &self,
        id: &InstanceId,
        started_at: DateTime<Utc>,
    ) -> Result<(), DriverError> {
        self.mark_stopped_if(id, |record| record.started_at == started_at)
            .await
    }

    async fn mark_stopped_if(
        &self,
        id: &InstanceId,
        describes: impl Fn(&ServerRecord<P>) -> bool + Send + Sync,
    ) -> Result<(), DriverError> {
        let outcome = read_modify_write(
            self.store.as_ref(),
            &self.collection,
            id.as_str(),
            ATTEMPTS,
            |current: Option<Record<ServerRecord<P>>>| {
                Ok::<_, ()>(match current {
                    // Another worker's now (taken over): not this one's to
                    // write.
                    Some(record) if record.value.owner != self.worker_id => Change::Keep(()),
                    Some(record) if record.value.running && describes(&record.value) => {
                        let mut value = record.value;
                        value.running = false;
                        Change::Put {
                            value,
                            also: Vec::new(),
                            output: (),
                        }
                    }
                    _ => Change::Keep(()),
                })
            },
        )
        .await;
        outcome
            .map(|_| ())
            .map_err(|e| platform_error("cannot update the server record", cas_message(e)))
    }

    /// Removes the record of `id`.
    pub async fn remove(&self, id: &InstanceId) -> Result<(), DriverError> {
        self.store
            .delete(&self.collection, id.as_str(), Precondition::None)
            .await
            .map(|_| ())
            .map_err(|e| platform_error("cannot remove the server record", e))
    }

    /// Takes the server of `id` over from its record, if this worker owns
    /// it or its owner is gone; `attach` re-attaches to the platform's
    /// server (`None`: gone). See the module docs.
    pub async fn take_over<H, F, Fut>(
        &self,
        id: &InstanceId,
        attach: F,
    ) -> Result<Takeover<P, H>, DriverError>
    where
        F: FnOnce(P) -> Fut,
        Fut: std::future::Future<Output = Option<H>>,
    {
        let read_error = |e| platform_error("cannot read the server record", e);
        // The platform is asked at most once; a record that changes under
        // the compare-and-set (its server's exit recorded by this worker,
        // another worker's takeover) is read again and judged afresh.
        let mut attach = Some(attach);
        let mut attached: Option<H> = None;
        for _ in 0..ATTEMPTS {
            let Some(found) = self.get(id).await.map_err(read_error)? else {
                return Ok(Takeover::NoRecord);
            };
            let owner = found.value.owner.clone();
            if owner != self.worker_id {
                let alive = draas_core::workers::is_live(self.store.as_ref(), &owner, Utc::now())
                    .await
                    .map_err(read_error)?;
                if alive {
                    return Ok(Takeover::OwnedBy(owner));
                }
            }
            if found.value.running {
                if let Some(attach) = attach.take() {
                    attached = attach(found.value.platform.clone()).await;
                }
            }
            let mut record = found.value.clone();
            record.owner = self.worker_id.clone();
            let was_running = record.running;
            record.running = was_running && attached.is_some();
            if record != found.value {
                match self
                    .store
                    .put_json(
                        &self.collection,
                        id.as_str(),
                        &record,
                        Precondition::Revision(found.revision),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(platform_error("cannot write the server record", e)),
                }
            }
            return Ok(match attached.filter(|_| record.running) {
                Some(handle) => Takeover::Adopted(record, handle),
                None if was_running => Takeover::Gone(record),
                None => Takeover::Stopped(record),
            });
        }
        Err(DriverError::new(
            ErrorCode::InvalidState,
            "the server record kept changing while this worker took the server over",
        ))
    }
}

fn cas_message(e: CasError<()>) -> String {
    match e {
        CasError::Rejected(()) => "refused".to_string(),
        CasError::Store(e) => e.to_string(),
        CasError::Exhausted { attempts, .. } => {
            format!("it kept changing ({attempts} attempts)")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use draas_store::EmbeddedStore;

    fn record(owner: &str) -> ServerRecord<u32> {
        ServerRecord {
            version: draas_core::records::RECORD_VERSION,
            owner: owner.into(),
            generation: 1,
            address: ServerAddress {
                api_url: "http://127.0.0.1:1".into(),
                endpoint: "http://127.0.0.1:1".into(),
                host: "127.0.0.1".into(),
                port: 1,
            },
            started_at: Utc::now(),
            running: true,
            platform: 7,
        }
    }

    /// A worker declared dead (a long pause) and taken over changes
    /// nothing when it wakes: its writes of the record are refused, and
    /// the successor's record stands.
    #[tokio::test]
    async fn a_worker_that_was_taken_over_cannot_write_the_record_any_more() {
        let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::in_memory().unwrap());
        let a = Records::<u32>::new(store.clone(), PlatformType::Process, "host", "wa");
        let b = Records::<u32>::new(store.clone(), PlatformType::Process, "host", "wb");
        let id = InstanceId::generate();
        a.save(&id, &record("wa")).await.unwrap();
        // wa sends no heartbeat (it is paused): wb takes the server over.
        let takeover = b.take_over(&id, |p| async move { Some(p) }).await.unwrap();
        assert!(matches!(takeover, Takeover::Adopted(..)), "{takeover:?}");

        let refused = a.save(&id, &record("wa")).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidState);
        assert!(
            refused.message.contains("taken over by worker wb"),
            "{}",
            refused.message
        );
        a.mark_stopped(&id).await.unwrap();
        let stored = b.get(&id).await.unwrap().unwrap().value;
        assert_eq!(stored.owner, "wb");
        assert!(stored.running, "wa's stop did not touch wb's record");
        // wb, the owner, writes as before.
        b.mark_stopped(&id).await.unwrap();
        assert!(!b.get(&id).await.unwrap().unwrap().value.running);
    }
}
