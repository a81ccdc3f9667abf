//! # draas-reconciler
//!
//! Converges what runs to what was asked, as the original design's
//! reconciliation service does, without anyone watching: a failed instance
//! that should run is restarted according to its restart policy (with
//! exponential backoff, visible in its status as `restartCount` and
//! `nextRetryAt`), a configuration change reaches a running server, an
//! instance left `Unknown` by a dead worker is handed to a live one.
//!
//! - [`plan`]: what to do about one instance, now: a pure function of the
//!   instance record and the time, tested exhaustively without I/O;
//! - [`port`]: the control plane as the reconciler sees it, the only way
//!   it sees and changes anything: its instances, its event stream, the
//!   reconciler's steps and lease;
//! - [`client`]: that port over the REST API and event stream (so the
//!   reconciler runs anywhere; the one built into the control plane uses
//!   an in-process implementation instead);
//! - [`run`]: the loop: plans an instance when an event names it, when its
//!   planned wait ends, and on a periodic full pass; executes the steps;
//! - [`lease`]: only the holder of the control plane's reconciler lease
//!   acts, and its steps carry the term's fencing token;
//! - [`cursor`]: the event stream followed from a cursor kept in a file,
//!   so a restarted reconciler replays what it missed.

pub mod client;
pub mod cursor;
pub mod lease;
pub mod plan;
pub mod port;
pub mod run;

pub use client::{step_body, ControlPlaneClient};
pub use plan::{plan, Action, Decision, PlanSettings};
pub use port::ControlPlanePort;
pub use port::PortError;
pub use run::{run, ReconcilerSettings};
