//! # draas-api
//!
//! The control plane: the REST API of DESIGN §5 over the ports of
//! `draas-core`. It owns the desired state (what users ask for) and reads
//! the actual state that workers record.
//!
//! - [`service`]: the operations (create, start, patch configuration, ...),
//!   independent of HTTP;
//! - [`http`]: the axum router, request validation, problem+json errors;
//! - [`error`]: the single error type.
//!
//! It depends on `draas-core` only: stores, buses and validators are
//! passed in as trait objects by the binary that wires everything.

pub mod dashboard;
pub mod error;
pub mod http;
pub mod metrics;
pub mod service;
pub mod trace;
pub mod watchdog;

pub use http::{router, routes, Auth, Caller};
pub use service::{ControlPlane, ControlPlaneSettings};
