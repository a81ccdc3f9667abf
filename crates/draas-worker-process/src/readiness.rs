//! Talking to a running Drasi server's API: readiness (`/health`, then every
//! component's status) and watching its component events.
//!
//! Works with the bundled runtime and the official drasi-server alike: both
//! bind `/health` only after startup, and both list components with
//! `status` and `error_message` under `/api/v1/{sources,queries,reactions}`.

use std::time::Duration;

use draas_core::instance::{ActualState, InstanceId, Reason};
use draas_core::ports::{Observation, StatusSink};
use futures::StreamExt;
use serde_json::Value;

/// The component kinds a server lists.
const KINDS: [&str; 3] = ["sources", "queries", "reactions"];

/// A server's API, from the worker's side.
#[derive(Clone)]
pub struct ServerApi {
    base: String,
    client: reqwest::Client,
}

/// What the components say.
#[derive(Debug, Clone, PartialEq)]
pub enum Components {
    /// Every component is `Running` (or deliberately stopped).
    Ready,
    /// Some are still starting (queries bootstrap after `/health`).
    Starting,
    /// At least one is in `Error`: which, and why.
    Failed(String),
}

impl ServerApi {
    /// The API at `host:port` (`0.0.0.0` is reached through 127.0.0.1).
    pub fn new(host: &str, port: u16) -> Self {
        let host = if host == "0.0.0.0" || host == "::" {
            "127.0.0.1"
        } else {
            host
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Self {
            base: format!("http://{host}:{port}"),
            client,
        }
    }

    /// The base URL.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// Whether `/health` answers 200.
    pub async fn healthy(&self) -> bool {
        self.client
            .get(format!("{}/health", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Every component with its status, as `{"sources": [...], ...}`.
    pub async fn components(&self) -> Option<Value> {
        let mut all = serde_json::Map::new();
        for kind in KINDS {
            let body: Value = self
                .client
                .get(format!("{}/api/v1/{kind}", self.base))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            all.insert(
                kind.to_string(),
                body.get("data").cloned().unwrap_or(Value::Array(vec![])),
            );
        }
        Some(Value::Object(all))
    }

    /// Summarises [`components`](Self::components).
    pub async fn component_state(&self) -> Option<Components> {
        Some(summarize(&self.components().await?))
    }
}

/// Reads the component lists: any `Error` wins, then any not settled.
pub fn summarize(components: &Value) -> Components {
    let mut starting = false;
    for kind in KINDS {
        for item in components[kind].as_array().into_iter().flatten() {
            let id = item["id"].as_str().unwrap_or("?");
            match item["status"].as_str().unwrap_or_default() {
                "Error" => {
                    let why = item["error_message"].as_str().unwrap_or("no message");
                    let what = match kind {
                        "sources" => "source",
                        "queries" => "query",
                        _ => "reaction",
                    };
                    return Components::Failed(format!("{what} '{id}' is in Error: {why}"));
                }
                "Running" | "Stopped" => {}
                _ => starting = true,
            }
        }
    }
    if starting {
        Components::Starting
    } else {
        Components::Ready
    }
}

/// Follows the server's component events (`/api/v1/events`) and reports
/// `Degraded` when a component fails and `Running` when all recover. Ends
/// when the server's event stream ends (the server stopped).
pub async fn watch_components(
    api: ServerApi,
    id: InstanceId,
    generation: u64,
    sink: std::sync::Arc<dyn StatusSink>,
) {
    let Ok(response) = reqwest::Client::new()
        .get(format!("{}/api/v1/events", api.base))
        .send()
        .await
    else {
        return;
    };
    let mut events = eventsource_stream::EventStream::new(response.bytes_stream());
    let mut degraded = false;
    while let Some(Ok(event)) = events.next().await {
        let Ok(body) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        let status = body["status"].as_str().unwrap_or_default();
        if status == "Error" {
            degraded = true;
            let message = format!(
                "{} '{}' is in Error: {}",
                body["componentType"]
                    .as_str()
                    .unwrap_or("component")
                    .to_lowercase(),
                body["componentId"].as_str().unwrap_or("?"),
                body["message"].as_str().unwrap_or("no message")
            );
            sink.observe(
                Observation::now(
                    id.clone(),
                    ActualState::Degraded,
                    Some(Reason::ComponentError),
                )
                .message(message)
                .generation(generation),
            )
            .await;
        } else if status == "Running"
            && degraded
            && api.component_state().await == Some(Components::Ready)
        {
            degraded = false;
            sink.observe(
                Observation::now(id.clone(), ActualState::Running, Some(Reason::Ready))
                    .generation(generation),
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_win_over_starting() {
        let c = json!({
            "sources": [{"id": "s", "status": "Running"}],
            "queries": [{"id": "q", "status": "Starting"}, {"id": "bad", "status": "Error", "error_message": "parse error"}],
            "reactions": []
        });
        assert_eq!(
            summarize(&c),
            Components::Failed("query 'bad' is in Error: parse error".into())
        );
        let c = json!({"sources": [{"id": "s", "status": "Running"}], "queries": [{"id": "q", "status": "Starting"}], "reactions": []});
        assert_eq!(summarize(&c), Components::Starting);
        let c = json!({"sources": [{"id": "s", "status": "Running"}], "queries": [], "reactions": [{"id": "r", "status": "Running"}]});
        assert_eq!(summarize(&c), Components::Ready);
    }
}
