//! The configuration validator port. The control plane rejects a bad
//! configuration before storing it; the rules that need Drasi itself (each
//! plugin's fields, the query parser, which kinds the bundled runtime has)
//! live outside the domain crate, in `draas-drasi`, behind this trait.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{validate_structure, ConfigIssue, DrasiServerConfig, ValidationContext};

/// Which program will run a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// DRaaS's bundled runtime: its plugins are known, so every kind and
    /// every plugin field is checked before the configuration is stored.
    Bundled,
    /// Another executable or image (e.g. the official drasi-server with its
    /// plugin directory): its plugins are its own, checked when it starts.
    Other,
}

/// What a configuration is checked for.
pub struct CheckTarget<'a> {
    /// The instance's id: the server's id when the file names none.
    pub instance_id: &'a str,
    /// The instance's environment, which references resolve in.
    pub environment: &'a BTreeMap<String, String>,
    /// Who runs it.
    pub runtime: Runtime,
}

impl CheckTarget<'_> {
    /// Looks a variable up in the instance's environment.
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.environment.get(name).cloned()
    }
}

/// The outcome of a check: what refuses the configuration, and what the
/// user should know about it even though it is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Problems: the configuration is refused while there is any.
    pub issues: Vec<ConfigIssue>,
    /// Accepted, but worth saying (a key this runtime ignores, a shape
    /// whose meaning changed).
    pub warnings: Vec<ConfigIssue>,
}

/// The kinds a runtime has, by category (`/api/server/platforms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RuntimeCatalog {
    /// The runtime's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Source kinds.
    pub sources: Vec<String>,
    /// Reaction kinds.
    pub reactions: Vec<String>,
    /// Bootstrap provider kinds.
    pub bootstrap_providers: Vec<String>,
    /// Identity provider kinds.
    pub identity_providers: Vec<String>,
    /// Secret store kinds.
    pub secret_stores: Vec<String>,
    /// State store kinds.
    pub state_stores: Vec<String>,
    /// Persistent index kinds (`persistIndex: true`).
    pub indexes: Vec<String>,
    /// Query languages.
    pub query_languages: Vec<String>,
}

/// Checks a whole drasi-server configuration.
pub trait ConfigValidator: Send + Sync + 'static {
    /// Every issue and warning about `config` as the configuration of
    /// `target`.
    fn validate(&self, config: &DrasiServerConfig, target: &CheckTarget) -> Report;

    /// What the bundled runtime has.
    fn catalog(&self) -> RuntimeCatalog;
}

/// Only the structural checks of `draas-core` (ids, references, ports): for
/// tests and embedders without the Drasi plugins.
pub struct StructuralValidator;

impl ConfigValidator for StructuralValidator {
    fn validate(&self, config: &DrasiServerConfig, target: &CheckTarget) -> Report {
        let lookup = |name: &str| target.lookup(name);
        Report {
            issues: validate_structure(
                config,
                &ValidationContext {
                    lookup: &lookup,
                    default_id: target.instance_id,
                },
            ),
            warnings: Vec::new(),
        }
    }

    fn catalog(&self) -> RuntimeCatalog {
        RuntimeCatalog {
            name: "structural checks only".to_string(),
            ..RuntimeCatalog::default()
        }
    }
}
