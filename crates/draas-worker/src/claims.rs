//! Executing a command once: before a worker executes a mutating command it
//! **claims** it in the store (a record under the command id, created only
//! if absent), and after executing it stores the reply in that record.
//!
//! A delivery of a command that is already claimed is not executed again:
//! - claimed and answered: it is answered with the stored reply (even
//!   after its deadline: it *was* executed);
//! - claimed by a live worker (or by this very run of this worker) and not
//!   answered yet: it waits for that reply;
//! - claimed by a worker that is gone (or by an earlier run of this worker,
//!   which died mid-command): the claim is taken over with a
//!   compare-and-set, and the command executed (drivers make that safe:
//!   starting a generation that runs confirms it).
//!
//! A claim that cannot be written (store outage) means the command is not
//! executed, and its requester is told so: deduplication never fails open.

use std::collections::HashSet;
use std::convert::Infallible;

use chrono::{DateTime, Utc};
use draas_core::keys;
use draas_core::messages::{CommandEnvelope, CommandReply};
use draas_core::ports::store::{read_modify_write, CasError, Change, JsonStore, Precondition};
use draas_core::ports::{Record, StateStore, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A command's record: who executes it, and its reply once done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandRecord {
    /// The record's format version ([`draas_core::records::RECORD_VERSION`];
    /// 0: written before records carried one).
    #[serde(default)]
    pub version: u32,
    /// The worker that claimed it.
    pub worker_id: String,
    /// Which run of that worker.
    pub incarnation: Uuid,
    /// When it was claimed; records are pruned after
    /// [`EXECUTED_RETENTION`](crate::executor::EXECUTED_RETENTION).
    pub claimed_at: DateTime<Utc>,
    /// The reply, once executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<CommandReply>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Claim {
    /// This worker executes it.
    Execute,
    /// It was executed: answer with this.
    Answered(CommandReply),
    /// A live worker (or this run) is executing it.
    InProgress {
        /// Which worker.
        worker_id: String,
        /// Which run of it.
        incarnation: Uuid,
    },
}

/// Attempts of a claim's compare-and-set.
const ATTEMPTS: usize = 8;

/// Who claims.
pub(crate) struct Claimant<'a> {
    pub worker_id: &'a str,
    pub incarnation: Uuid,
}

impl Claimant<'_> {
    fn record(&self) -> CommandRecord {
        CommandRecord {
            version: draas_core::records::RECORD_VERSION,
            worker_id: self.worker_id.to_string(),
            incarnation: self.incarnation,
            claimed_at: Utc::now(),
            reply: None,
        }
    }
}

/// Claims `envelope` for `me`; see the module docs.
pub(crate) async fn claim(
    store: &dyn StateStore,
    envelope: &CommandEnvelope,
    me: &Claimant<'_>,
) -> Result<Claim, StoreError> {
    let key = envelope.id.to_string();
    // The common case costs one write: create the claim.
    match store
        .put_json(
            keys::EXECUTED_COMMANDS,
            &key,
            &me.record(),
            Precondition::Absent,
        )
        .await
    {
        Ok(_) => return Ok(Claim::Execute),
        Err(StoreError::Conflict { .. }) => {}
        Err(e) => return Err(e),
    }
    // Claimed before: by whom, and are they alive?
    let live: HashSet<String> = draas_core::workers::live_workers(store, None, Utc::now())
        .await?
        .into_iter()
        .map(|w| w.worker_id)
        .collect();
    let outcome = read_modify_write(
        store,
        keys::EXECUTED_COMMANDS,
        &key,
        ATTEMPTS,
        |current: Option<Record<CommandRecord>>| {
            let Some(record) = current else {
                // Pruned meanwhile: claim it afresh.
                return Ok::<_, Infallible>(Change::Put {
                    value: me.record(),
                    also: Vec::new(),
                    output: Claim::Execute,
                });
            };
            let claimed = record.value;
            if let Some(reply) = claimed.reply {
                return Ok(Change::Keep(Claim::Answered(reply)));
            }
            let this_run =
                claimed.worker_id == me.worker_id && claimed.incarnation == me.incarnation;
            let other_live_worker =
                claimed.worker_id != me.worker_id && live.contains(&claimed.worker_id);
            if this_run || other_live_worker {
                return Ok(Change::Keep(Claim::InProgress {
                    worker_id: claimed.worker_id,
                    incarnation: claimed.incarnation,
                }));
            }
            // Its claimant died mid-command: take it over.
            Ok(Change::Put {
                value: me.record(),
                also: Vec::new(),
                output: Claim::Execute,
            })
        },
    )
    .await;
    outcome
        .map(|(claim, _)| claim)
        .map_err(CasError::into_store_error)
}

/// What [`finish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finished {
    /// The reply is stored.
    Stored,
    /// The claim is another worker's now (this one was declared dead
    /// while it executed the command, and the other took the command
    /// over): its reply is theirs to store, and this one is dropped.
    TakenOver(String),
}

/// Stores the reply of a command executed by `me`, if the claim is still
/// `me`'s (a compare-and-set: a worker taken over never overwrites its
/// successor's claim or reply).
pub(crate) async fn finish(
    store: &dyn StateStore,
    envelope: &CommandEnvelope,
    me: &Claimant<'_>,
    reply: &CommandReply,
) -> Result<Finished, StoreError> {
    let record = CommandRecord {
        reply: Some(reply.clone()),
        ..me.record()
    };
    let outcome = read_modify_write(
        store,
        keys::EXECUTED_COMMANDS,
        &envelope.id.to_string(),
        ATTEMPTS,
        |current: Option<Record<CommandRecord>>| match current {
            Some(claimed)
                if claimed.value.worker_id != me.worker_id
                    || claimed.value.incarnation != me.incarnation =>
            {
                Ok::<_, Infallible>(Change::Keep(Finished::TakenOver(claimed.value.worker_id)))
            }
            _ => Ok(Change::Put {
                value: record.clone(),
                also: Vec::new(),
                output: Finished::Stored,
            }),
        },
    )
    .await;
    outcome
        .map(|(finished, _)| finished)
        .map_err(CasError::into_store_error)
}

/// The reply stored for `envelope`, and whether its claimant still lives.
pub(crate) async fn stored_reply(
    store: &dyn StateStore,
    envelope: &CommandEnvelope,
) -> Result<Option<CommandRecord>, StoreError> {
    Ok(store
        .get_json::<CommandRecord>(keys::EXECUTED_COMMANDS, &envelope.id.to_string())
        .await?
        .map(|r| r.value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use draas_core::instance::InstanceId;
    use draas_core::messages::{Command, Outcome, MESSAGE_VERSION};
    use draas_store::EmbeddedStore;

    fn reply(worker: &str) -> CommandReply {
        CommandReply {
            version: MESSAGE_VERSION,
            command_id: Uuid::nil(),
            worker_id: worker.into(),
            outcome: Outcome::Ok {
                status: None,
                runtime: None,
                detail: None,
            },
        }
    }

    /// A worker declared dead while it executed a command, whose claim
    /// another took over, does not overwrite the successor's claim (nor
    /// its reply) when it finishes.
    #[tokio::test]
    async fn a_claim_taken_over_is_not_overwritten_by_the_worker_that_lost_it() {
        let store = EmbeddedStore::in_memory().unwrap();
        let envelope = CommandEnvelope::new(
            InstanceId::generate(),
            Command::Status,
            std::time::Duration::from_secs(30),
        );
        let a = Claimant {
            worker_id: "wa",
            incarnation: Uuid::new_v4(),
        };
        let b = Claimant {
            worker_id: "wb",
            incarnation: Uuid::new_v4(),
        };
        assert_eq!(claim(&store, &envelope, &a).await.unwrap(), Claim::Execute);
        // wa sends no heartbeat: wb takes the command over.
        assert_eq!(claim(&store, &envelope, &b).await.unwrap(), Claim::Execute);
        let late = finish(&store, &envelope, &a, &reply("wa")).await.unwrap();
        assert_eq!(late, Finished::TakenOver("wb".into()));
        let stored = stored_reply(&store, &envelope).await.unwrap().unwrap();
        assert_eq!((stored.worker_id.as_str(), stored.reply), ("wb", None));
        let done = finish(&store, &envelope, &b, &reply("wb")).await.unwrap();
        assert_eq!(done, Finished::Stored);
        let stored = stored_reply(&store, &envelope).await.unwrap().unwrap();
        assert_eq!(stored.reply.unwrap().worker_id, "wb");
    }
}
