//! What the runtime does for its components after they started:
//!
//! - **reactions after their queries**: a reaction that starts with the
//!   server is started once every query it subscribes to has finished its
//!   bootstrap (drasi-lib would otherwise make it wait inside its start,
//!   and fail it when the bootstrap fails or takes longer than
//!   `bootstrapTimeoutSecs`). Until then it shows as `Starting`;
//! - **sources that fail are started again**: drasi-lib leaves a source in
//!   `Error` for good (the postgres source, for one, retries its connection
//!   once and gives up). A source that should run is started again after
//!   1 s, then 2, 4, ... up to 30 s between tries, until it runs; the
//!   count starts over once it has run for a minute. Its queries keep their
//!   subscriptions meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drasi_lib::{ComponentStatus, ComponentType};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::assemble::{DeferredReaction, Lib};

/// The first pause before a failed source is started again.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest pause between two tries.
const LONGEST_RETRY: Duration = Duration::from_secs(30);
/// How long a source must run for its tries to count from one again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a reaction waits for its queries at most (a query that takes
/// longer is still bootstrapping; the reaction then starts and waits inside
/// drasi-lib, as in drasi-server).
const LONGEST_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Reactions waiting for their queries, by lib instance.
#[derive(Debug, Default)]
pub struct Pending {
    waiting: Mutex<HashMap<String, HashSet<String>>>,
}

impl Pending {
    /// Whether reaction `id` of lib `lib` waits for its queries.
    pub fn is_waiting(&self, lib: &str, id: &str) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(lib)
            .is_some_and(|set| set.contains(id))
    }

    fn set(&self, lib: &str, id: &str, waiting: bool) {
        let mut all = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = all.entry(lib.to_string()).or_default();
        if waiting {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
    }
}

/// Starts the supervision of `libs` (see the module docs); it ends when
/// `stop` is cancelled.
pub fn supervise(libs: &[Lib], stop: CancellationToken) -> (Arc<Pending>, JoinSet<()>) {
    let pending = Arc::new(Pending::default());
    let mut tasks = JoinSet::new();
    for lib in libs {
        for reaction in &lib.deferred {
            pending.set(&lib.id, &reaction.id, true);
            tasks.spawn(start_after_queries(
                lib.lib.clone(),
                lib.id.clone(),
                reaction.clone(),
                pending.clone(),
                stop.clone(),
            ));
        }
        tasks.spawn(restart_failed_sources(
            lib.lib.clone(),
            lib.auto_sources.clone(),
            stop.clone(),
        ));
    }
    (pending, tasks)
}

async fn start_after_queries(
    lib: Arc<drasi_lib::DrasiLib>,
    lib_id: String,
    reaction: DeferredReaction,
    pending: Arc<Pending>,
    stop: CancellationToken,
) {
    let graph = lib.component_graph();
    for query in &reaction.queries {
        let settled = drasi_lib::wait_for_status(
            &graph,
            query,
            &[
                ComponentStatus::Running,
                ComponentStatus::Error,
                ComponentStatus::Stopped,
            ],
            LONGEST_WAIT,
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = settled => {}
        }
    }
    if stop.is_cancelled() {
        return;
    }
    pending.set(&lib_id, &reaction.id, false);
    match lib.start_reaction(&reaction.id).await {
        Ok(()) => info!(reaction = %reaction.id, "reaction started (its queries run)"),
        Err(e) => warn!(reaction = %reaction.id, "reaction failed to start: {e}"),
    }
}

async fn restart_failed_sources(
    lib: Arc<drasi_lib::DrasiLib>,
    sources: Vec<String>,
    stop: CancellationToken,
) {
    if sources.is_empty() {
        return;
    }
    let mut events = lib.subscribe_all_component_events();
    // Per source: tries in a row, and since when it runs.
    let mut tries: HashMap<String, (u32, Option<Instant>)> = HashMap::new();
    let mut retries = JoinSet::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => event,
            Some(_) = retries.join_next(), if !retries.is_empty() => continue,
        };
        let event = match event {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if event.component_type != ComponentType::Source || !sources.contains(&event.component_id) {
            continue;
        }
        let entry = tries.entry(event.component_id.clone()).or_insert((0, None));
        match event.status {
            ComponentStatus::Running => entry.1 = Some(Instant::now()),
            ComponentStatus::Error if !stop.is_cancelled() => {
                if entry.1.is_some_and(|since| since.elapsed() >= STABLE_AFTER) {
                    entry.0 = 0;
                }
                entry.1 = None;
                entry.0 += 1;
                let pause = FIRST_RETRY
                    .saturating_mul(1u32 << (entry.0 - 1).min(5))
                    .min(LONGEST_RETRY);
                let id = event.component_id.clone();
                warn!(
                    source = %id,
                    "source failed ({}); starting it again in {pause:?}",
                    event.message.as_deref().unwrap_or("no message")
                );
                let lib = lib.clone();
                let stop = stop.clone();
                retries.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(pause) => {
                            let failed = lib
                                .get_source_info(&id)
                                .await
                                .is_ok_and(|info| info.status == ComponentStatus::Error);
                            if failed {
                                if let Err(e) = lib.start_source(&id).await {
                                    warn!(source = %id, "could not start it again: {e}");
                                }
                            }
                        }
                    }
                });
            }
            _ => {}
        }
    }
}
