//! Port traits: what the domain needs from the outside world. Adapters
//! (embedded and Redis stores and buses, platform drivers) implement them;
//! only the `draas` binary picks which.

pub mod bus;
pub mod platform;
pub mod store;
pub mod validator;

pub use bus::{BusError, CommandStream, DeadLetter, Delivery, EventStream, MessageBus, Responder};
pub use platform::{DriverError, Observation, PlatformDriver, RuntimeUpdate, Started, StatusSink};
pub use store::{
    JsonStore, LogPage, Precondition, Record, Revision, StateStore, StoreError, Versioned, Write,
};
pub use validator::{ConfigValidator, StructuralValidator};
