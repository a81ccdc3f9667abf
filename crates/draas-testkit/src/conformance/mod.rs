//! Conformance suites for the port traits of `draas_core::ports`.
//!
//! There is one suite per port, written once against the trait and run
//! against every backend (embedded and Redis stores, in-process and Redis
//! buses, …), so they all behave the same way and a backend cannot quietly
//! weaken a guarantee the domain relies on.
//!
//! A suite takes the backend as a trait object and uses names (collections,
//! logs) unique to each run, so it can run against a shared server and
//! alongside other tests. Checks that depend on how a backend is created or
//! reopened (durability across restarts, file locking) live in the
//! backend's own tests.

pub mod bus;
pub mod driver;
pub mod store;
