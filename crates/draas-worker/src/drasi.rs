//! What every driver needs to know about a running Drasi server, whatever
//! platform runs it: its API (readiness: `/health`, then every component's
//! status), its component events, and what its last words at startup mean.
//!
//! Works with the bundled runtime and the official drasi-server alike: both
//! bind `/health` only after startup, and both list components with
//! `status` and `error_message` under `/api/v1/{sources,queries,reactions}`.

use std::sync::Arc;
use std::time::Duration;

use draas_core::instance::{ActualState, InstanceId, Reason};
use draas_core::messages::ErrorCode;
use draas_core::ports::{Components, Observation, Readiness, StatusSink};
use futures::StreamExt;
use serde_json::Value;

/// How long one call to a server's API may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A server's API, from the worker's side.
#[derive(Clone, Debug)]
pub struct ServerApi {
    base: String,
    client: reqwest::Client,
}

impl ServerApi {
    /// The API at `base` (`http://host:port`).
    pub fn new(base: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            base: base.into(),
            client,
        }
    }

    /// The base URL.
    pub fn url(&self) -> &str {
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

    /// Every component with its status; `None` when the server does not
    /// answer (or answers something else than drasi-server's envelope).
    pub async fn components(&self) -> Option<Components> {
        let (sources, queries, reactions) = futures::join!(
            self.list("sources"),
            self.list("queries"),
            self.list("reactions")
        );
        Some(Components {
            sources: sources?,
            queries: queries?,
            reactions: reactions?,
        })
    }

    async fn list(&self, kind: &str) -> Option<Vec<draas_core::ports::ComponentStatus>> {
        let body: Value = self
            .client
            .get(format!("{}/api/v1/{kind}", self.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        serde_json::from_value(body.get("data").cloned().unwrap_or(Value::Array(vec![]))).ok()
    }

    /// What the components add up to, if the server answers.
    pub async fn readiness(&self) -> Option<Readiness> {
        Some(self.components().await?.readiness())
    }
}

/// Follows the server's component events (`/api/v1/events`) and reports
/// `Degraded` when a component fails and `Running` when all recover. Ends
/// when the server's event stream ends (the server stopped); the driver
/// aborts it when it stops or replaces the server.
pub async fn watch_components(
    api: ServerApi,
    id: InstanceId,
    generation: u64,
    sink: Arc<dyn StatusSink>,
) {
    // No timeout: the stream lives as long as the server.
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
        } else if status == "Running" && degraded && api.readiness().await == Some(Readiness::Ready)
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

/// Classifies a startup failure from the server's last words (stderr, or
/// the container's or pod's log tail). The bundled runtime prints
/// `Error: invalid configuration ...` or `Error: cannot bind ...`;
/// drasi-server prints its own variants.
pub fn classify_startup_failure(words: &str) -> (ErrorCode, Reason) {
    let lower = words.to_lowercase();
    if lower.contains("address already in use") || lower.contains("cannot bind") {
        (ErrorCode::PortInUse, Reason::PortInUse)
    } else if lower.contains("invalid configuration")
        || lower.contains("invalid config file")
        || lower.contains("validation error")
        || lower.contains("failed to parse config")
    {
        (ErrorCode::ConfigRejected, Reason::ConfigRejected)
    } else {
        (ErrorCode::PlatformError, Reason::ExitedWithCode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_failures_are_classified_from_the_servers_words() {
        assert_eq!(
            classify_startup_failure(
                "Error: cannot bind the API on 0.0.0.0:8080: Address already in use (os error 98)"
            )
            .1,
            Reason::PortInUse
        );
        assert_eq!(
            classify_startup_failure(
                "Error: invalid configuration 'x.yaml': port 0 is not allowed"
            )
            .1,
            Reason::ConfigRejected
        );
        assert_eq!(
            classify_startup_failure("[ERROR] Failed to parse config file: unknown field `x`").0,
            ErrorCode::ConfigRejected
        );
        assert_eq!(
            classify_startup_failure("Error: source 'pg': connection refused").1,
            Reason::ExitedWithCode
        );
    }
}
