//! The [`DataPlane`] of a running server: every component's status, each
//! query's bootstrap, and drasi-lib's numbers.

use draas_core::dataplane::{
    ComponentMetrics, ComponentView, DataPlane, LibInstanceStatus, QueryCheckpoint,
};
use drasi_lib::ComponentStatus;

use crate::assemble::Lib;
use crate::supervise::Pending;

fn status_name(status: &ComponentStatus) -> String {
    match serde_json::to_value(status) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{status:?}"),
    }
}

/// The status of every lib instance of the server.
pub async fn data_plane(libs: &[Lib], pending: &Pending) -> DataPlane {
    let mut instances = Vec::new();
    for lib in libs {
        instances.push(lib_status(lib, pending).await);
    }
    DataPlane { instances }
}

async fn lib_status(lib: &Lib, pending: &Pending) -> LibInstanceStatus {
    let core = &lib.lib;
    let graph = core.component_graph();
    let last_error = |id: String| {
        let graph = graph.clone();
        async move { graph.read().await.get_last_error(&id) }
    };
    let mut status = LibInstanceStatus {
        id: lib.id.clone(),
        ..LibInstanceStatus::default()
    };

    for (id, state) in core.list_sources().await.unwrap_or_default() {
        if id.starts_with("__") {
            // drasi-lib's own (the component graph source).
            continue;
        }
        let error_message = match state {
            ComponentStatus::Error => last_error(id.clone()).await,
            _ => None,
        };
        status.sources.push(ComponentView {
            kind: lib.kinds.get(&id).cloned(),
            status: status_name(&state),
            error_message,
            auto_start: lib.auto_start.get(&id).copied().unwrap_or(true),
            bootstrap: None,
            metrics: None,
            id,
        });
    }

    for (id, state) in core.list_queries().await.unwrap_or_default() {
        let running = state == ComponentStatus::Running;
        let failed = state == ComponentStatus::Error;
        let error_message = if failed {
            last_error(id.clone()).await
        } else {
            None
        };
        let mut metrics = ComponentMetrics::default();
        if let Ok(output) = core.get_query_output_metrics(&id).await {
            metrics.results_emitted = Some(output.result_seq_advances);
            metrics.longest_transaction_ms =
                Some(output.outer_transaction_duration_ns_max as f64 / 1e6);
        }
        if running {
            if let Ok(rows) = core.get_query_results(&id).await {
                metrics.result_count = Some(rows.len() as u64);
            }
        }
        status.queries.push(ComponentView {
            kind: None,
            status: status_name(&state),
            error_message,
            auto_start: lib.auto_start.get(&id).copied().unwrap_or(false),
            bootstrap: lib.progress.of(&id, running, failed),
            metrics: Some(metrics),
            id,
        });
    }

    for (id, state) in core.list_reactions().await.unwrap_or_default() {
        // A reaction the runtime starts once its queries run is starting.
        let state_name = if pending.is_waiting(&lib.id, &id) {
            "Starting".to_string()
        } else {
            status_name(&state)
        };
        let error_message = match state {
            ComponentStatus::Error => last_error(id.clone()).await,
            _ => None,
        };
        let mut metrics = ComponentMetrics::default();
        if let Ok(per_query) = core.get_reaction_metrics(&id).await {
            let mut checkpoints: Vec<QueryCheckpoint> = per_query
                .into_iter()
                .map(|(query, m)| QueryCheckpoint {
                    query,
                    sequence: m.checkpoint_sequence,
                    lag: m.checkpoint_lag,
                })
                .collect();
            checkpoints.sort_by(|a, b| a.query.cmp(&b.query));
            metrics.checkpoint_lag = Some(checkpoints.iter().map(|c| c.lag).sum());
            metrics.checkpoints = checkpoints;
        }
        status.reactions.push(ComponentView {
            kind: lib.kinds.get(&id).cloned(),
            status: state_name,
            error_message,
            auto_start: lib.auto_start.get(&id).copied().unwrap_or(true),
            bootstrap: None,
            metrics: Some(metrics),
            id,
        });
    }
    status
}
