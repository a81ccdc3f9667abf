//! Port traits: what the domain needs from the outside world. Adapters
//! (embedded and Redis stores and buses, platform drivers) implement them;
//! only the `draas` binary picks which.

pub mod bus;
pub mod platform;
pub mod store;
pub mod validator;

pub use bus::{
    BusError, CommandStream, Credits, DeadLetter, Delivery, EventStream, MessageBus, Permit,
    PublishedEvent, Responder,
};
pub use platform::{
    ComponentStatus, Components, DriverError, LiveStatus, Observation, PlatformDriver, Readiness,
    RuntimeUpdate, Started, StatusSink,
};
pub use store::{
    read_modify_write, read_modify_write_with, Applied, CasError, Change, Durability, JsonStore,
    LogPage, Precondition, Record, Revision, StateStore, StoreError, Versioned, Write,
};
pub use validator::{
    CheckTarget, ConfigValidator, Report, Runtime, RuntimeCatalog, StructuralValidator,
};
