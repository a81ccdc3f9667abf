//! Self-healing settings of an instance: when the reconciler brings a
//! failed server back, how long it waits between attempts, and whether a
//! configuration change reaches a running server by itself.
//!
//! They are the control plane's policy, not how the platform runs the
//! server, so they live on the instance itself (not in its server
//! configuration) and changing them does not change its `generation`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::instance::Reason;

/// When a server that is meant to run is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Never: a failed instance stays `Failed` until someone starts it.
    Never,
    /// When it failed (crashed, could not start, vanished).
    #[default]
    OnFailure,
    /// Whenever it is not running, even after a clean exit.
    Always,
}

/// How a failed instance is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicy {
    /// When.
    #[serde(default)]
    pub policy: RestartMode,
    /// Restarts in a row before giving up (0: no limit).
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The wait before the second restart in a row; it doubles with each
    /// further one. The first restart is immediate: a crash is repaired in
    /// about the time the server needs to start.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest wait between two restarts.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// After running this long, the count of restarts in a row starts
    /// again from zero.
    #[serde(default = "default_reset_after_seconds")]
    pub reset_after_seconds: u64,
}

fn default_max_restarts() -> u32 {
    10
}
fn default_initial_backoff_ms() -> u64 {
    1_000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_reset_after_seconds() -> u64 {
    60
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            policy: RestartMode::default(),
            max_restarts: default_max_restarts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            reset_after_seconds: default_reset_after_seconds(),
        }
    }
}

/// Longest backoff accepted (a day).
pub const MAX_BACKOFF_MS: u64 = 24 * 3600 * 1000;

impl RestartPolicy {
    /// What is wrong with it, as `(JSON pointer below the policy, message)`.
    pub fn issues(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if self.max_backoff_ms > MAX_BACKOFF_MS {
            issues.push((
                "/maxBackoffMs".into(),
                format!("at most {MAX_BACKOFF_MS} (a day)"),
            ));
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            issues.push((
                "/initialBackoffMs".into(),
                "must not exceed maxBackoffMs".into(),
            ));
        }
        if self.reset_after_seconds == 0 || self.reset_after_seconds > 7 * 24 * 3600 {
            issues.push((
                "/resetAfterSeconds".into(),
                "between 1 and 604800 (a week)".into(),
            ));
        }
        issues
    }

    /// Whether `restarts` restarts in a row exhaust the policy.
    pub fn exhausted(&self, restarts: u32) -> bool {
        self.max_restarts != 0 && restarts >= self.max_restarts
    }

    /// The wait before the restart that follows `restarts` restarts in a
    /// row: none for the first, then `initial · 2^(n-1)` capped at the
    /// maximum, shortened by up to a fifth by `jitter` (in `[0, 1)`) so that
    /// many instances failing together do not restart in lockstep.
    pub fn backoff(&self, restarts: u32, jitter: f64) -> Duration {
        if restarts == 0 {
            return Duration::ZERO;
        }
        let doublings = (restarts - 1).min(40);
        let full = self
            .initial_backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        // `full` is at most a day in ms: exact in an f64.
        let shortened = (full as f64) * (1.0 - 0.2 * jitter);
        Duration::from_millis(shortened.round() as u64)
    }
}

/// How a configuration change reaches a running server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum UpdateStrategy {
    /// The reconciler restarts the server with the new configuration.
    #[default]
    Restart,
    /// Only a user's restart applies it.
    Manual,
}

/// The failure an automatic restart answered, kept in the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// What it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the failure was observed.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_restart_is_immediate_and_later_ones_double_up_to_the_cap() {
        let policy = RestartPolicy {
            initial_backoff_ms: 500,
            max_backoff_ms: 3_000,
            ..RestartPolicy::default()
        };
        let waits: Vec<u64> = (0..6)
            .map(|n| policy.backoff(n, 0.0).as_millis() as u64)
            .collect();
        assert_eq!(waits, vec![0, 500, 1_000, 2_000, 3_000, 3_000]);
        // Jitter shortens by at most a fifth, never lengthens.
        for n in 1..6 {
            let full = policy.backoff(n, 0.0);
            for j in [0.1, 0.5, 0.999] {
                let jittered = policy.backoff(n, j);
                assert!(jittered <= full && jittered >= full.mul_f64(0.8), "{n} {j}");
            }
        }
        assert_eq!(
            policy.backoff(u32::MAX, 0.0),
            Duration::from_millis(3_000),
            "no overflow"
        );
    }

    #[test]
    fn exhaustion_and_no_limit() {
        let policy = RestartPolicy {
            max_restarts: 3,
            ..RestartPolicy::default()
        };
        assert!(!policy.exhausted(2));
        assert!(policy.exhausted(3));
        let unlimited = RestartPolicy {
            max_restarts: 0,
            ..RestartPolicy::default()
        };
        assert!(!unlimited.exhausted(u32::MAX));
    }

    #[test]
    fn the_json_shape_and_its_defaults() {
        let policy: RestartPolicy = serde_json::from_str(r#"{"policy": "always"}"#).unwrap();
        assert_eq!(policy.policy, RestartMode::Always);
        assert_eq!(policy.max_restarts, 10);
        assert_eq!(
            serde_json::to_value(RestartPolicy::default()).unwrap()["policy"],
            "on-failure"
        );
        assert!(serde_json::from_str::<RestartPolicy>(r#"{"policy": "sometimes"}"#).is_err());
        // A misspelt key from a user is refused at the API's edge; a stored
        // policy with a field of a newer version is read.
        let misspelt = serde_json::json!({"maxRestart": 1});
        assert!(crate::strict::from_value::<RestartPolicy>(misspelt.clone()).is_err());
        assert!(serde_json::from_value::<RestartPolicy>(misspelt).is_ok());
        let s: UpdateStrategy = serde_json::from_str(r#""manual""#).unwrap();
        assert_eq!(s, UpdateStrategy::Manual);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let policy = RestartPolicy {
            initial_backoff_ms: 10_000,
            max_backoff_ms: 1_000,
            reset_after_seconds: 0,
            ..RestartPolicy::default()
        };
        let paths: Vec<String> = policy.issues().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, vec!["/initialBackoffMs", "/resetAfterSeconds"]);
        assert!(RestartPolicy::default().issues().is_empty());
    }
}
