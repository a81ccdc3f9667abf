//! The audit log: one entry per mutation the API was asked for — who (the
//! key's name and role), what (method and path), when, and the result (the
//! HTTP status) — refused ones included. Kept in the store's `audit` log
//! (the last [`AUDIT_LOG_CAPACITY`] entries), read at `GET /api/audit`.
//! Bodies are never recorded: they may hold secrets.

use chrono::{DateTime, Utc};
use draas_core::auth::Role;
use draas_core::ports::store::{decode, encode};
use serde::{Deserialize, Serialize};

use super::ControlPlane;
use crate::error::ApiResult;

/// The store log of audit entries.
pub const AUDIT_LOG: &str = "audit";
/// Entries kept.
pub const AUDIT_LOG_CAPACITY: usize = 100_000;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[derive(schemars::JsonSchema)]
pub struct AuditEntry {
    /// When it was answered.
    pub at: DateTime<Utc>,
    /// The key's name (`anonymous` without a key where none is required,
    /// `unauthenticated` when a key was required and missing or bad).
    pub key: String,
    /// The key's role, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The HTTP method.
    pub method: String,
    /// The path (no query string).
    pub path: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// `ok` (2xx), `replayed` (the first answer to an `Idempotency-Key`
    /// again: nothing was done), `refused` (401/403), `failed` (anything
    /// else).
    pub outcome: String,
}

impl AuditEntry {
    /// The outcome a status stands for.
    pub fn outcome_of(status: u16) -> &'static str {
        match status {
            200..=299 => "ok",
            401 | 403 => "refused",
            _ => "failed",
        }
    }
}

/// An entry with its place in the log.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
#[derive(schemars::JsonSchema)]
pub struct AuditRecord {
    /// Its cursor (pass as `since` to read what came after).
    pub cursor: u64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// After this cursor.
    Cursor(u64),
    /// Entries answered after this time.
    Time(DateTime<Utc>),
}

impl ControlPlane {
    /// Records `entry`.
    pub async fn audit(&self, entry: &AuditEntry) -> ApiResult<u64> {
        Ok(self
            .store()
            .append(AUDIT_LOG, encode(entry)?, AUDIT_LOG_CAPACITY)
            .await?)
    }

    /// Up to `limit` entries after `since`, oldest first, and the cursor
    /// to continue from.
    pub async fn audit_entries(
        &self,
        since: Since,
        limit: usize,
    ) -> ApiResult<(Vec<AuditRecord>, u64)> {
        let mut after = match since {
            Since::Cursor(cursor) => cursor,
            Since::Time(_) => 0,
        };
        let mut found = Vec::new();
        loop {
            let page = self.store().read_log(AUDIT_LOG, after, 1000).await?;
            let full = page.entries.len() == 1000;
            for (cursor, bytes) in page.entries {
                after = cursor;
                let entry: AuditEntry = decode(AUDIT_LOG, &cursor.to_string(), &bytes)?;
                if let Since::Time(t) = since {
                    if entry.at <= t {
                        continue;
                    }
                }
                found.push(AuditRecord { cursor, entry });
                if found.len() == limit {
                    return Ok((found, after));
                }
            }
            if !full {
                return Ok((found, after));
            }
        }
    }
}
