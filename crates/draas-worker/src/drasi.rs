//! What every driver needs to know about a running Drasi server, whatever
//! platform runs it: its API (readiness: `/health`, then every component's
//! status), its component events, and what its last words at startup mean.
//!
//! Works with the bundled runtime and the official drasi-server alike: both
//! bind `/health` only after startup, and both list components with
//! `status` and `error_message` under `/api/v1/{sources,queries,reactions}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use draas_core::instance::{ActualState, InstanceId, Reason};
use draas_core::messages::ErrorCode;
use draas_core::ports::{Components, DriverError, Observation, Readiness, StatusSink};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;

/// How long one call to a server's API may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How the worker reaches a server's API. Directly over HTTP where it can
/// ([`HttpTransport`]); through the Kubernetes API server's service proxy
/// where the server's network is the cluster's.
#[async_trait]
pub trait ServerTransport: Send + Sync + std::fmt::Debug {
    /// `GET path` (starting with `/`, query included): the status code and
    /// body, within [`CALL_TIMEOUT`]; `Err` when there was no answer.
    async fn get(&self, path: &str) -> Result<(u16, Bytes), String>;

    /// `GET path` as a stream of body chunks, without a timeout (an event
    /// stream lives as long as the server).
    async fn stream(&self, path: &str)
        -> Result<BoxStream<'static, Result<Bytes, String>>, String>;
}

/// Plain HTTP to `http://host:port`.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    base: String,
    client: reqwest::Client,
    streaming: reqwest::Client,
}

impl HttpTransport {
    /// The API at `base` (`http://host:port`).
    pub fn new(base: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            base: base.into(),
            client,
            streaming: reqwest::Client::new(),
        }
    }
}

#[async_trait]
impl ServerTransport for HttpTransport {
    async fn get(&self, path: &str) -> Result<(u16, Bytes), String> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    async fn stream(
        &self,
        path: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, String>>, String> {
        let response = self
            .streaming
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path} answered {}", response.status()));
        }
        Ok(response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| e.to_string()))
            .boxed())
    }
}

/// A server's API, from the worker's side. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ServerApi {
    transport: Arc<dyn ServerTransport>,
}

impl ServerApi {
    /// The API at `base` (`http://host:port`), over plain HTTP.
    pub fn new(base: impl Into<String>) -> Self {
        Self::over(Arc::new(HttpTransport::new(base)))
    }

    /// The API reached through `transport`.
    pub fn over(transport: Arc<dyn ServerTransport>) -> Self {
        Self { transport }
    }

    /// Whether `/health` answers 200.
    pub async fn healthy(&self) -> bool {
        matches!(self.transport.get("/health").await, Ok((200..=299, _)))
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
        let (status, body) = self.transport.get(&format!("/api/v1/{kind}")).await.ok()?;
        if !(200..300).contains(&status) {
            return None;
        }
        let body: Value = serde_json::from_slice(&body).ok()?;
        serde_json::from_value(body.get("data").cloned().unwrap_or(Value::Array(vec![]))).ok()
    }

    /// The current result rows of query `query` (`/api/v1/queries/{id}/results`).
    pub async fn query_results(&self, query: &str) -> Result<Vec<Value>, DriverError> {
        let mut url = reqwest::Url::parse("http://server/api/v1/queries/")
            .map_err(|e| DriverError::new(ErrorCode::Other, e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| DriverError::new(ErrorCode::Other, "cannot build the query's path"))?
            .pop_if_empty()
            .push(query)
            .push("results");
        let (status, body) = self.transport.get(url.path()).await.map_err(|e| {
            DriverError::new(
                ErrorCode::PlatformError,
                format!("the server did not answer: {e}"),
            )
        })?;
        match status {
            200..=299 => {
                let body: Value = serde_json::from_slice(&body).map_err(|e| {
                    DriverError::new(
                        ErrorCode::PlatformError,
                        format!("the server's answer is not JSON: {e}"),
                    )
                })?;
                Ok(body
                    .get("data")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default())
            }
            404 => Err(DriverError::new(
                ErrorCode::NotFound,
                format!("the server has no query '{query}'"),
            )),
            other => Err(DriverError::new(
                ErrorCode::PlatformError,
                format!(
                    "the server answered {other}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
            )),
        }
    }

    /// What the components add up to, if the server answers.
    pub async fn readiness(&self) -> Option<Readiness> {
        Some(self.components().await?.readiness())
    }

    /// The server's component events (`/api/v1/events`), as a stream.
    async fn events(&self) -> Result<BoxStream<'static, Result<Bytes, String>>, String> {
        self.transport.stream("/api/v1/events").await
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
    let Ok(chunks) = api.events().await else {
        return;
    };
    let mut events = eventsource_stream::EventStream::new(chunks);
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

    /// Collects observations.
    #[derive(Default)]
    struct Collected(std::sync::Mutex<Vec<Observation>>);

    #[async_trait::async_trait]
    impl StatusSink for Collected {
        async fn observe(&self, observation: Observation) {
            self.0.lock().unwrap().push(observation);
        }
    }

    /// A server on loopback whose `/api/v1/events` sends `events` as SSE,
    /// then ends; its base URL.
    async fn event_server(events: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
                events.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        base
    }

    #[tokio::test]
    async fn a_component_in_error_makes_the_instance_degraded_naming_it() {
        let base = event_server(concat!(
            "data: {\"componentId\":\"counter\",\"componentType\":\"Source\",\"status\":\"Running\"}\n\n",
            "data: {\"componentId\":\"values\",\"componentType\":\"Query\",\"status\":\"Error\",\"message\":\"index unavailable\"}\n\n",
        ))
        .await;
        let sink = Arc::new(Collected::default());
        let id: InstanceId = "i-0123456789abcdef0123456789abcdef".parse().unwrap();
        watch_components(ServerApi::new(base), id.clone(), 7, sink.clone()).await;
        let seen = sink.0.lock().unwrap();
        assert_eq!(seen.len(), 1, "only the error is reported");
        let degraded = &seen[0];
        assert_eq!(degraded.instance_id, id);
        assert_eq!(degraded.state, ActualState::Degraded);
        assert_eq!(degraded.reason, Some(Reason::ComponentError));
        assert_eq!(
            degraded.message.as_deref(),
            Some("query 'values' is in Error: index unavailable")
        );
    }

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
