//! Names of the store collections and logs DRaaS uses. One place, so the
//! control plane, the workers and both store backends agree.

/// Instance specs (what the control plane decided), keyed by instance id
/// (see `records`).
pub const INSTANCES: &str = "instances";
/// Instance statuses (what was observed of their servers), keyed by
/// instance id (see `records`).
pub const INSTANCE_STATUS: &str = "instance-status";
/// Name reservations, keyed by instance name; the value is the instance id.
pub const INSTANCE_NAMES: &str = "instance-names";
/// Live workers, keyed by worker id (see `WorkerInfo`).
pub const WORKERS: &str = "workers";
/// Commands a worker executed, keyed by command id (the reply), so a
/// redelivered command is answered without being executed twice.
pub const EXECUTED_COMMANDS: &str = "executed-commands";
/// Leases (see `lease`), keyed by what they are for.
pub const LEASES: &str = "leases";
/// What a running server's worker last read of its data plane (components,
/// bootstraps, drasi-lib's numbers), keyed by instance id: `/metrics` shows
/// it. Written with deferred durability (the next reading replaces it).
pub const DATA_PLANE: &str = "data-plane";
/// The status buffer.
pub const STATUS_LOG: &str = "status-changes";
/// Entries the status buffer keeps.
pub const STATUS_LOG_CAPACITY: usize = 10_000;

/// A worker's private collection for its platform's records (process
/// handles, container ids), keyed by instance id.
pub fn worker_records(platform: crate::instance::PlatformType, host: &str) -> String {
    format!("platform-records/{platform}/{host}")
}

/// Port reservations of a platform, keyed by port; the value is the
/// instance id. Written in the same atomic batch as the instance, so two
/// instances can never be given the same port, even by two control-plane
/// replicas at once.
pub fn port_reservations(platform: crate::instance::PlatformType) -> String {
    format!("ports/{platform}")
}

/// Answers remembered for an `Idempotency-Key`, keyed by a hash of the
/// caller and the key.
pub const IDEMPOTENCY_KEYS: &str = "idempotency-keys";
