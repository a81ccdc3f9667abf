//! What a platform that restarts its servers itself says about one.
//!
//! A Process or Docker server that crashes is gone: its exit is final, and
//! the generic half reports it through the [`ExitWatch`](super::ExitWatch).
//! A Kubernetes server is a Deployment: when its container crashes, the
//! kubelet starts it again, and what the instance is *now* (crash-looping,
//! back to ready, waiting for a node) comes from watching the platform's
//! objects. Such a platform keeps a [`Condition`] per server current, and
//! the generic half uses it instead of polling `/health`:
//!
//! - **starting**: `Ready` means the platform's own readiness check (on
//!   `/health`) passed, so only the components are left to check; `Failing`
//!   fails the start at once, with the platform's reason;
//! - **running**: every change is reported as it happens: `Failing` as
//!   `Failed` with the reason (`CrashLoopBackOff`, `OOMKilled`, ...),
//!   `Waiting` as `Pending` or `Starting`, and `Ready` again as `Running`
//!   (or `Degraded`) once the components are confirmed.

use draas_core::instance::{ActualState, Reason};

/// A server's condition as its platform sees it; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Not serving yet, and nothing is known to be wrong: being scheduled,
    /// pulled, created, or started again after a crash.
    Waiting {
        /// `Pending` (not placed or not created yet) or `Starting`.
        state: ActualState,
        /// Why, when there is more to say (`Unschedulable`).
        reason: Option<Reason>,
        /// For humans.
        message: String,
    },
    /// Serving: the platform's readiness check of the server passes.
    Ready,
    /// Not serving, for a reason that will not go away by itself soon: the
    /// server crashes, or its image cannot be had.
    Failing {
        /// `CrashLoopBackOff`, `OOMKilled`, `ExitedWithCode`,
        /// `ImagePullBackOff`, `ErrImageNeverPull`, ...
        reason: Reason,
        /// For humans.
        message: String,
        /// The exit code of the server's last run, if it ran.
        exit_code: Option<i32>,
        /// Whether the server itself ended (its last words say why), as
        /// opposed to never having started.
        crashed: bool,
    },
}

impl Condition {
    /// Whether the server serves.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }
}
