//! # draas-drasi
//!
//! Everything DRaaS knows about Drasi itself, in one place:
//! - [`plugins`]: the source, reaction and bootstrap plugins linked in from
//!   crates.io, looked up by `kind`;
//! - [`validate`]: whole-configuration validation with Drasi's own rules (the
//!   plugins' configuration DTOs and drasi-lib's query parser);
//! - [`assemble`]: building and starting a `DrasiLib` from a configuration.
//!
//! The control plane uses `validate` to reject a bad configuration before it
//! is stored; the bundled runtime uses all three.

pub mod assemble;
pub mod plugins;
pub mod validate;

pub use drasi_lib;
