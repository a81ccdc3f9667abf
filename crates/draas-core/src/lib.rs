//! # draas-core
//!
//! The domain of DRaaS, free of I/O: what an instance is, the drasi-server
//! configuration model and its YAML rendering, JSON Patch handling, the
//! messages that travel on the bus, and the port traits (bus, store, platform
//! driver) that the adapters implement.

pub mod config;
