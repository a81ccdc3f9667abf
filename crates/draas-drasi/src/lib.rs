//! # draas-drasi
//!
//! Everything DRaaS knows about Drasi itself, in one place:
//! - [`plugins`]: the source, reaction and bootstrap plugins linked in from
//!   crates.io, looked up by `kind`, with their configuration checks;
//! - [`validate`]: whole-configuration validation with Drasi's own rules (the
//!   plugins' configuration DTOs and drasi-lib's query parser);
//! - [`assemble`]: building and starting Drasi lib instances from a
//!   configuration;
//! - [`supervise`]: reactions started once their queries bootstrapped, and
//!   failed sources started again;
//! - [`progress`] and [`status`]: what the runtime reports of its data plane.
//!
//! The control plane uses `validate` to reject a bad configuration before it
//! is stored; the bundled runtime uses all of them.

pub mod assemble;
pub mod plugins;
pub mod progress;
pub mod status;
pub mod supervise;
pub mod validate;

pub use drasi_lib;
