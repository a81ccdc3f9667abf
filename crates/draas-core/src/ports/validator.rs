//! The configuration validator port. The control plane rejects a bad
//! configuration before storing it; the rules that need Drasi itself (each
//! plugin's fields, the query parser) live outside the domain crate, in
//! `draas-drasi`, behind this trait.

use crate::config::{validate_structure, ConfigIssue, DrasiServerConfig};

/// Checks a whole drasi-server configuration.
pub trait ConfigValidator: Send + Sync + 'static {
    /// Every issue found; empty when the configuration is acceptable.
    fn validate(&self, config: &DrasiServerConfig) -> Vec<ConfigIssue>;
}

/// Only the structural checks of `draas-core` (ids, references, ports): for
/// tests and embedders without the Drasi plugins.
pub struct StructuralValidator;

impl ConfigValidator for StructuralValidator {
    fn validate(&self, config: &DrasiServerConfig) -> Vec<ConfigIssue> {
        validate_structure(config)
    }
}
