//! Recording status changes: one path for every observer (workers, the
//! control plane, external daemons).
//!
//! An [`Observation`] becomes, in order:
//! 1. the instance's status record (compare-and-set, retried on conflict;
//!    the spec is never written here) and, in the same atomic write, an entry of the status buffer
//!    (a capped log with monotonic cursors);
//! 2. an `InstanceStatusChanged` event, plus a lifecycle event
//!    (`InstanceStarted`, `InstanceStopped`, `InstanceFailed`) when one applies.
//!
//! Observations older than the recorded status are refused (`Stale`), and an
//! observation that changes nothing records nothing, so redelivered or
//! duplicated reports are harmless.
//!
//! A recorder is durable at once unless made [`deferring`]: a worker's
//! driver reports through one, since it observes its servers again whenever
//! it starts (see [`Durability::Deferred`]). What answers a command stays
//! durable at once: its caller is told it happened.
//!
//! [`deferring`]: StatusRecorder::deferring

use std::sync::Arc;

use async_trait::async_trait;

use crate::instance::{ActualState, InstanceId};
use crate::keys;
use crate::messages::{Event, EventEnvelope, StatusChange};
use crate::ports::platform::{Observation, RuntimeUpdate, StatusSink};
use crate::ports::store::{
    encode, read_modify_write_with, CasError, Change, Durability, Record, StateStore, StoreError,
    Write,
};
use crate::ports::MessageBus;
use crate::records::ObservedStatus;

/// Attempts of the read-modify-write before giving up.
const MAX_ATTEMPTS: usize = 16;

/// Why an observation was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The instance does not exist (any more).
    #[error("instance {0} not found")]
    NotFound(InstanceId),
    /// The observation is older than the recorded status.
    #[error("out-of-order update for {id}: observed at {observed}, but the recorded status is from {recorded}")]
    Stale {
        /// The instance.
        id: InstanceId,
        /// When the refused observation was made.
        observed: chrono::DateTime<chrono::Utc>,
        /// When the recorded status was observed.
        recorded: chrono::DateTime<chrono::Utc>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecordError {
    /// Whether the observation was refused as outdated or about a removed
    /// instance (nothing to repair), as opposed to a store failure.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, RecordError::Store(_))
    }
}

/// What [`StatusRecorder::record`] did.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The change, or `None` when the observation changed nothing.
    pub change: Option<StatusChange>,
    /// The instance's status as it is now recorded.
    pub observed: ObservedStatus,
}

/// Records observations; see the module docs.
#[derive(Clone)]
pub struct StatusRecorder {
    store: Arc<dyn StateStore>,
    bus: Arc<dyn MessageBus>,
    source: String,
    durability: Durability,
}

impl StatusRecorder {
    /// A recorder that signs its changes with `source` (a worker id,
    /// `control-plane`, or `external:<name>`).
    pub fn new(
        store: Arc<dyn StateStore>,
        bus: Arc<dyn MessageBus>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            store,
            bus,
            source: source.into(),
            durability: Durability::Immediate,
        }
    }

    /// The same recorder, recording with [`Durability::Deferred`]: only
    /// for a worker's observations of its own servers, which it observes
    /// again when it starts.
    pub fn deferring(&self) -> Self {
        Self {
            durability: Durability::Deferred,
            ..self.clone()
        }
    }

    /// The same recorder, signing with another source.
    pub fn with_source(&self, source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            ..self.clone()
        }
    }

    /// Who signs the changes.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Records `observation`: the instance's status record, the status
    /// buffer, the events. Only the status record is written (never the
    /// spec: see [`crate::records`]).
    pub async fn record(&self, observation: Observation) -> Result<Recorded, RecordError> {
        let id = observation.instance_id.clone();
        let mut migrated = false;
        loop {
            match self.record_once(&observation).await {
                // No status record: the instance is gone, or its record is
                // of before the split; its status is stored apart, once.
                Err(RecordError::NotFound(_)) if !migrated => {
                    migrated = true;
                    if !crate::records::migrate_legacy(self.store.as_ref(), &id).await? {
                        return Err(RecordError::NotFound(id));
                    }
                }
                done => return done,
            }
        }
    }

    async fn record_once(&self, observation: &Observation) -> Result<Recorded, RecordError> {
        let id = observation.instance_id.clone();
        let source = self.source.clone();
        let outcome = read_modify_write_with(
            self.store.as_ref(),
            self.durability,
            keys::INSTANCE_STATUS,
            id.as_str(),
            MAX_ATTEMPTS,
            |current: Option<Record<ObservedStatus>>| {
                let Some(record) = current else {
                    return Err(RecordError::NotFound(id.clone()));
                };
                let mut observed = record.value;
                if observation.observed_at < observed.updated_at {
                    return Err(RecordError::Stale {
                        id: id.clone(),
                        observed: observation.observed_at,
                        recorded: observed.updated_at,
                    });
                }
                let old = observed.clone();
                apply(&mut observed, observation);
                let changed = observed.state != old.state
                    || observed.reason != old.reason
                    || observed.message != old.message
                    || observed.observed_generation != old.observed_generation
                    || observed.runtime != old.runtime;
                if !changed {
                    return Ok(Change::Keep((None, observed)));
                }
                let change = StatusChange {
                    cursor: 0,
                    instance_id: id.clone(),
                    old: Some(old.state),
                    new: observed.state,
                    reason: observed.reason,
                    message: observed.message.clone(),
                    source: source.clone(),
                    generation: observed.observed_generation,
                    timestamp: observation.observed_at,
                };
                // The status and its status-buffer entry: one atomic write.
                let entry = Write::Append {
                    log: keys::STATUS_LOG.to_string(),
                    value: encode(&change).map_err(RecordError::Store)?,
                    capacity: keys::STATUS_LOG_CAPACITY,
                };
                Ok(Change::Put {
                    value: observed.clone(),
                    also: vec![entry],
                    output: (Some(change), observed),
                })
            },
        )
        .await;
        let ((change, observed), applied) = match outcome {
            Ok(done) => done,
            Err(CasError::Rejected(e)) => return Err(e),
            Err(CasError::Store(e)) => return Err(e.into()),
            Err(CasError::Exhausted {
                collection, key, ..
            }) => return Err(StoreError::Conflict { collection, key }.into()),
        };
        let Some(mut change) = change else {
            return Ok(Recorded {
                change: None,
                observed,
            });
        };
        change.cursor = applied
            .first()
            .and_then(|a| a.cursor())
            .ok_or_else(|| StoreError::Backend("the status entry got no cursor".into()))?;
        self.announce(&change, &observed).await;
        Ok(Recorded {
            change: Some(change),
            observed,
        })
    }

    /// Publishes the events of a recorded change. Publishing is best-effort:
    /// the change is already in the store and the buffer.
    async fn announce(&self, change: &StatusChange, observed: &ObservedStatus) {
        let mut events = vec![Event::InstanceStatusChanged(change.clone())];
        let id = change.instance_id.clone();
        let entered = |s: ActualState| change.new == s && change.old != Some(s);
        if entered(ActualState::Running) {
            if let Some(runtime) = &observed.runtime {
                events.push(Event::InstanceStarted {
                    instance_id: id.clone(),
                    runtime: runtime.clone(),
                });
            }
        } else if entered(ActualState::Stopped) {
            events.push(Event::InstanceStopped {
                instance_id: id.clone(),
            });
        } else if entered(ActualState::Failed) {
            events.push(Event::InstanceFailed {
                instance_id: id,
                reason: change.reason.unwrap_or(crate::instance::Reason::Other),
                message: change.message.clone().unwrap_or_default(),
            });
        }
        for event in events {
            // A bus outage must not undo a durable change; subscribers catch
            // up from the status buffer.
            let _ = self.bus.publish(&EventEnvelope::new(event)).await;
        }
    }
}

fn apply(status: &mut ObservedStatus, observation: &Observation) {
    status.state = observation.state;
    status.reason = observation.reason;
    status.message = observation.message.clone();
    status.updated_at = observation.observed_at;
    if let Some(generation) = observation.observed_generation {
        status.observed_generation = generation;
    }
    match &observation.runtime {
        RuntimeUpdate::Keep => {}
        RuntimeUpdate::Set(runtime) => status.runtime = Some(runtime.clone()),
        RuntimeUpdate::Exited(code) => {
            if let Some(runtime) = &mut status.runtime {
                runtime.last_exit_code = *code;
                runtime.handle = None;
            }
        }
        RuntimeUpdate::Restarted(code) => {
            if let Some(runtime) = &mut status.runtime {
                runtime.last_exit_code = *code;
            }
        }
        RuntimeUpdate::Clear => status.runtime = None,
    }
}

#[async_trait]
impl StatusSink for StatusRecorder {
    async fn observe(&self, observation: Observation) {
        // Drivers report what they saw; a record that cannot be written is
        // an operational problem, not the driver's: it is logged, and the
        // next observation or the reconciler repairs it.
        let id = observation.instance_id.clone();
        let state = observation.state;
        if let Err(e) = self.record(observation).await {
            tracing::warn!(instance = %id, ?state, "status not recorded: {e}");
        }
    }

    async fn data_plane(&self, instance: &InstanceId, plane: &crate::dataplane::DataPlane) {
        let write = match encode(plane) {
            Ok(value) => Write::Put {
                collection: keys::DATA_PLANE.to_string(),
                key: instance.to_string(),
                value,
                precondition: crate::ports::store::Precondition::None,
            },
            Err(e) => return tracing::warn!(%instance, "data plane not encoded: {e}"),
        };
        // A reading, replaced by the next: never worth an fsync.
        if let Err(e) = self.store.apply_deferred(vec![write]).await {
            tracing::debug!(%instance, "data plane not recorded: {e}");
        }
    }
}
