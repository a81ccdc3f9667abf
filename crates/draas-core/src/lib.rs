//! # draas-core
//!
//! The domain of DRaaS, free of I/O:
//!
//! - [`auth`]: API keys, roles and what each route needs;
//! - [`instance`]: what an instance is (ids, names, platforms, desired and
//!   actual state, runtime info, configuration);
//! - [`config`]: the drasi-server configuration schema and YAML rendering;
//! - [`dataplane`]: what happens inside a server (components, bootstraps,
//!   numbers), as the bundled runtime reports it;
//! - [`patch`]: JSON Patch applied atomically to typed documents;
//! - [`messages`]: commands, replies and events on the bus, with channel names;
//! - [`ports`]: the traits adapters implement (bus, store, platform driver);
//! - [`policy`]: what generic code must not assume about a platform;
//! - [`restart`]: restart policies and update strategies (self-healing);
//! - [`status`]: recording a status change (store, status buffer, events);
//! - [`strict`]: decoding at the API's edge (unknown fields refused; stored
//!   records and bus messages tolerate them);
//! - [`trace`]: W3C `traceparent`, carried from a request to the worker;
//! - [`workers`]: which workers are alive;
//! - [`installation`]: the id that labels this installation's objects;
//! - [`keys`]: store collection names;
//! - [`limits`]: time limits (commands, routes, idempotency, clients).
//!
//! ```text
//!   draas-api ─┐                        ┌─ draas-store (embedded)  draas-redis
//!   draas-worker ─ draas-core (ports) ──┼─ draas-bus (in-process)  draas-redis
//!   draas-worker-process ┘              └─ (implementations)
//! ```

pub mod auth;
pub mod config;
pub mod dataplane;
pub mod installation;
pub mod instance;
pub mod keys;
pub mod lease;
pub mod limits;
pub mod messages;
pub mod patch;
pub mod policy;
pub mod ports;
pub mod problem;
pub mod records;
pub mod restart;
pub mod status;
pub mod strict;
pub mod trace;
pub mod workers;
