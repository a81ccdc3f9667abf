//! Counting what bootstrap providers load, per query and source.
//!
//! drasi-lib has no public progress for a query's bootstrap (a query is
//! `Starting` until it is done). Every bootstrap provider the runtime
//! creates is wrapped in a [`Counted`] provider, which forwards the events
//! it sends and counts them; [`Progress`] keeps the counts for the status
//! the runtime serves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use draas_core::dataplane::{Bootstrap, SourceBootstrap};
use drasi_lib::bootstrap::{BootstrapContext, BootstrapRequest, BootstrapResult};
use drasi_lib::channels::BootstrapEventSender;
use drasi_lib::BootstrapProvider;

/// The channel between a wrapped provider and its wrapper.
const FORWARD_CAPACITY: usize = 256;

#[derive(Debug, Clone)]
struct Entry {
    elements: u64,
    done: bool,
    started: Instant,
    started_at: DateTime<Utc>,
    finished: Option<Instant>,
}

/// Bootstrap counts of one lib instance, by query and source.
#[derive(Debug, Default)]
pub struct Progress {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
}

impl Progress {
    fn update(&self, query: &str, source: &str, change: impl FnOnce(&mut Entry)) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = entries
            .entry((query.to_string(), source.to_string()))
            .or_insert_with(|| Entry {
                elements: 0,
                done: false,
                started: Instant::now(),
                started_at: Utc::now(),
                finished: None,
            });
        change(entry);
    }

    /// What is known of `query`'s bootstrap; `None` when none of its
    /// sources has a counted provider.
    pub fn of(&self, query: &str, running: bool, failed: bool) -> Option<Bootstrap> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine: Vec<(&String, &Entry)> = entries
            .iter()
            .filter(|((q, _), _)| q == query)
            .map(|((_, s), e)| (s, e))
            .collect();
        if mine.is_empty() {
            return None;
        }
        let started = mine.iter().map(|(_, e)| e.started).min()?;
        let started_at = mine.iter().map(|(_, e)| e.started_at).min();
        let all_done = mine.iter().all(|(_, e)| e.done);
        let finished = mine.iter().filter_map(|(_, e)| e.finished).max();
        let state = if failed {
            "Failed"
        } else if running || all_done {
            "Done"
        } else {
            "Bootstrapping"
        };
        Some(Bootstrap {
            state: state.to_string(),
            elements: mine.iter().map(|(_, e)| e.elements).sum(),
            sources: mine
                .iter()
                .map(|(source, e)| SourceBootstrap {
                    source: (*source).clone(),
                    elements: e.elements,
                    done: e.done,
                })
                .collect(),
            started_at,
            duration_ms: finished
                .filter(|_| all_done)
                .map(|f| u64::try_from(f.duration_since(started).as_millis()).unwrap_or(u64::MAX)),
        })
    }
}

/// A bootstrap provider whose events are counted into a [`Progress`].
pub struct Counted {
    inner: Box<dyn BootstrapProvider>,
    progress: Arc<Progress>,
}

impl Counted {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn BootstrapProvider>, progress: Arc<Progress>) -> Self {
        Self { inner, progress }
    }
}

#[async_trait]
impl BootstrapProvider for Counted {
    async fn bootstrap(
        &self,
        request: BootstrapRequest,
        context: &BootstrapContext,
        event_tx: BootstrapEventSender,
        settings: Option<&drasi_lib::config::SourceSubscriptionSettings>,
    ) -> anyhow::Result<BootstrapResult> {
        let query = request.query_id.clone();
        let source = context.source_id.clone();
        self.progress.update(&query, &source, |_| {});
        let (tx, mut rx) = tokio::sync::mpsc::channel(FORWARD_CAPACITY);
        let progress = self.progress.clone();
        let (q, s) = (query.clone(), source.clone());
        let forward = async move {
            while let Some(event) = rx.recv().await {
                if event_tx.send(event).await.is_err() {
                    break;
                }
                progress.update(&q, &s, |e| e.elements += 1);
            }
        };
        let (result, ()) = tokio::join!(
            self.inner.bootstrap(request, context, tx, settings),
            forward
        );
        self.progress.update(&query, &source, |e| {
            e.done = result.is_ok();
            e.finished = Some(Instant::now());
        });
        result
    }
}
