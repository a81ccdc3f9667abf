//! # draas-redis
//!
//! The distributed backends: [`RedisStore`] (the state store, shared by
//! control-plane replicas and workers, with compare-and-set writes) and
//! [`RedisBus`] (commands on Redis Streams with consumer groups, replies and
//! events on pub/sub, events also on a capped replayable stream). Both pass
//! the same conformance suites as the embedded backends.
//!
//! Run Redis with persistence (`appendonly yes`, and `appendfsync always`
//! for zero loss of accepted commands) so streams and state survive its
//! restarts.

mod bus;
mod connection;
mod store;

pub use bus::{BusOptions, RedisBus};
pub use connection::{redact, RedisSettings};
pub use store::RedisStore;
