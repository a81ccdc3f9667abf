//! What happens inside a Drasi server: its components, each query's
//! bootstrap, and the numbers drasi-lib keeps about them.
//!
//! The bundled runtime serves a [`DataPlane`] at `GET /draas/v1/status`;
//! workers read it to tell `Starting` (bootstrapping, with progress) from
//! `Running` and `Degraded`, and the control plane shows it in
//! `runtime-status` and on `/metrics`. Servers that do not serve it (the
//! official drasi-server) are read through their `/api/v1` lists instead,
//! which give the statuses without progress or numbers.
//!
//! Every field is optional on reading: a worker and a runtime of different
//! versions understand each other as far as they share fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The path where the bundled runtime serves its [`DataPlane`].
pub const STATUS_PATH: &str = "/draas/v1/status";

/// Every lib instance of a server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DataPlane {
    /// Its Drasi lib instances, in configuration order.
    #[serde(default)]
    pub instances: Vec<LibInstanceStatus>,
}

/// One Drasi lib instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LibInstanceStatus {
    /// Its id.
    #[serde(default)]
    pub id: String,
    /// Its sources.
    #[serde(default)]
    pub sources: Vec<ComponentView>,
    /// Its continuous queries.
    #[serde(default)]
    pub queries: Vec<ComponentView>,
    /// Its reactions.
    #[serde(default)]
    pub reactions: Vec<ComponentView>,
}

/// One component.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ComponentView {
    /// Its id.
    #[serde(default)]
    pub id: String,
    /// Its plugin kind (sources and reactions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// drasi-lib's status: `Added`, `Starting`, `Running`, `Stopping`,
    /// `Stopped`, `Error`, ... A reaction the runtime will start once its
    /// queries have bootstrapped is `Starting`.
    #[serde(default)]
    pub status: String,
    /// Why it is in `Error` (or, once recovered, why it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Whether it starts with the server.
    #[serde(default)]
    pub auto_start: bool,
    /// A query's bootstrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// What drasi-lib counts about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ComponentMetrics>,
}

/// How far a query's bootstrap got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// `Bootstrapping`, `Done` or `Failed`.
    #[serde(default)]
    pub state: String,
    /// Elements loaded so far, from every source with a bootstrap provider
    /// the runtime can count (sources with a built-in provider, such as
    /// mock, are not counted).
    #[serde(default)]
    pub elements: u64,
    /// Per source: elements loaded, and whether its provider finished.
    #[serde(default)]
    pub sources: Vec<SourceBootstrap>,
    /// When the query started bootstrapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// How long it took, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// One source's part of a query's bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SourceBootstrap {
    /// The source.
    #[serde(default)]
    pub source: String,
    /// Elements it sent.
    #[serde(default)]
    pub elements: u64,
    /// Whether its provider finished.
    #[serde(default)]
    pub done: bool,
}

/// What drasi-lib counts about a component.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ComponentMetrics {
    /// A running query's current result rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_count: Option<u64>,
    /// Changes a query emitted (its result sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_emitted: Option<u64>,
    /// A query's longest transaction (one source change through its
    /// index), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_transaction_ms: Option<f64>,
    /// A reaction's checkpoint lag: result changes of its queries it has
    /// not yet confirmed handled, summed over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_lag: Option<u64>,
    /// A reaction's last confirmed sequence, per query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<QueryCheckpoint>,
}

/// A reaction's position in one query's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct QueryCheckpoint {
    /// The query.
    #[serde(default)]
    pub query: String,
    /// The last sequence the reaction confirmed.
    #[serde(default)]
    pub sequence: u64,
    /// How far it is behind the query.
    #[serde(default)]
    pub lag: u64,
}

impl DataPlane {
    /// The components as the readiness check reads them: by kind, across
    /// lib instances (ids prefixed with their instance's when there are
    /// several).
    pub fn components_by_kind(&self) -> crate::ports::Components {
        let several = self.instances.len() > 1;
        let list = |lib: &LibInstanceStatus, items: &[ComponentView]| {
            items
                .iter()
                .map(|c| crate::ports::ComponentStatus {
                    id: if several {
                        format!("{}/{}", lib.id, c.id)
                    } else {
                        c.id.clone()
                    },
                    status: c.status.clone(),
                    error_message: c.error_message.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut all = crate::ports::Components::default();
        for lib in &self.instances {
            all.sources.extend(list(lib, &lib.sources));
            all.queries.extend(list(lib, &lib.queries));
            all.reactions.extend(list(lib, &lib.reactions));
        }
        all
    }

    /// What the components add up to: any `Error` wins (naming it); then a
    /// source or reaction still starting for its own sake; then queries
    /// still bootstrapping (with their progress). A component that does not
    /// start with the server may stay stopped.
    pub fn readiness(&self) -> crate::ports::Readiness {
        use crate::ports::Readiness;
        let several = self.instances.len() > 1;
        let mut starting = false;
        let mut bootstrapping = false;
        let mut reactions_starting = false;
        for (lib, kind, c) in self.components() {
            let name = if several {
                format!("{kind} '{}' of instance '{lib}'", c.id)
            } else {
                format!("{kind} '{}'", c.id)
            };
            match c.status.as_str() {
                "Error" => {
                    return Readiness::Failed(format!(
                        "{name} is in Error: {}",
                        c.error_message.as_deref().unwrap_or("no message")
                    ))
                }
                "Running" => {}
                "Stopped" | "Added" | "Removed" if !c.auto_start => {}
                _ if kind == "query" => bootstrapping = true,
                // A reaction that waits for its queries is part of their
                // bootstrap, if any still bootstraps.
                "Starting" if kind == "reaction" => reactions_starting = true,
                _ => starting = true,
            }
        }
        if starting || (reactions_starting && !bootstrapping) {
            Readiness::Starting
        } else if bootstrapping {
            Readiness::Bootstrapping(format!(
                "bootstrapping: {}",
                self.bootstrapping().join(", ")
            ))
        } else {
            Readiness::Ready
        }
    }

    /// Every component with its kind (`source`, `query`, `reaction`) and
    /// lib instance.
    pub fn components(&self) -> impl Iterator<Item = (&str, &'static str, &ComponentView)> {
        self.instances.iter().flat_map(|lib| {
            let id = lib.id.as_str();
            lib.sources
                .iter()
                .map(move |c| (id, "source", c))
                .chain(lib.queries.iter().map(move |c| (id, "query", c)))
                .chain(lib.reactions.iter().map(move |c| (id, "reaction", c)))
        })
    }

    /// Queries still bootstrapping, with what they loaded so far, for a
    /// status message: `query 'q': 1200 elements loaded`.
    pub fn bootstrapping(&self) -> Vec<String> {
        self.components()
            .filter(|(_, kind, c)| *kind == "query" && c.status == "Starting")
            .map(|(_, _, c)| match &c.bootstrap {
                Some(b) if b.elements > 0 => {
                    format!("query '{}': {} elements loaded", c.id, b.elements)
                }
                _ => format!("query '{}'", c.id),
            })
            .collect()
    }
}
