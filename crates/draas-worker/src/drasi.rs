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
use draas_core::dataplane::{ComponentView, DataPlane, LibInstanceStatus, STATUS_PATH};
use draas_core::instance::{ActualState, InstanceId, Reason};
use draas_core::messages::ErrorCode;
use draas_core::ports::{
    ComponentStatus, Components, DriverError, Observation, Readiness, StatusSink,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;

/// How long one call to a server's API may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an action the server performs for DRaaS (dropping its
/// replication slots) may take.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How the worker reaches a server's API. Directly over HTTP where it can
/// ([`HttpTransport`]); through the Kubernetes API server's service proxy
/// where the server's network is the cluster's.
#[async_trait]
pub trait ServerTransport: Send + Sync + std::fmt::Debug {
    /// `GET path` (starting with `/`, query included): the status code and
    /// body, within [`CALL_TIMEOUT`]; `Err` when there was no answer.
    async fn get(&self, path: &str) -> Result<(u16, Bytes), String>;

    /// `POST path` without a body: the status code and body, within
    /// [`ACTION_TIMEOUT`].
    async fn post(&self, path: &str) -> Result<(u16, Bytes), String>;

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

    async fn post(&self, path: &str) -> Result<(u16, Bytes), String> {
        let response = self
            .streaming
            .post(format!("{}{path}", self.base))
            .timeout(ACTION_TIMEOUT)
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

/// Where the bundled runtime drops its postgres sources' replication slots.
pub const RELEASE_SLOTS_PATH: &str = "/draas/v1/release-replication-slots";

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

    /// Every lib instance's components, with their bootstraps and numbers
    /// when the server is the bundled runtime (`/draas/v1/status`); from
    /// drasi-server's `/api/v1` lists otherwise. `None` when the server
    /// does not answer.
    pub async fn data_plane(&self) -> Option<DataPlane> {
        match self.transport.get(STATUS_PATH).await.ok()? {
            (200..=299, body) => return serde_json::from_slice(&body).ok(),
            (404, _) => {}
            _ => return None,
        }
        // drasi-server: its lib instances, then each one's lists.
        let ids: Vec<String> = match self.transport.get("/api/v1/instances").await.ok()? {
            (200..=299, body) => serde_json::from_slice::<Value>(&body)
                .ok()?
                .get("data")?
                .as_array()?
                .iter()
                .filter_map(|i| i.get("id")?.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let mut plane = DataPlane::default();
        if ids.is_empty() {
            let (sources, queries, reactions) = futures::join!(
                self.list(""),
                self.list_of("", "queries"),
                self.list_of("", "reactions")
            );
            plane.instances.push(LibInstanceStatus {
                id: String::new(),
                sources: sources?,
                queries: queries?,
                reactions: reactions?,
            });
        }
        for id in ids {
            let prefix = format!("/instances/{}", segment(&id));
            let (sources, queries, reactions) = futures::join!(
                self.list(&prefix),
                self.list_of(&prefix, "queries"),
                self.list_of(&prefix, "reactions")
            );
            plane.instances.push(LibInstanceStatus {
                id,
                sources: sources?,
                queries: queries?,
                reactions: reactions?,
            });
        }
        Some(plane)
    }

    async fn list(&self, prefix: &str) -> Option<Vec<ComponentView>> {
        self.list_of(prefix, "sources").await
    }

    async fn list_of(&self, prefix: &str, kind: &str) -> Option<Vec<ComponentView>> {
        let (status, body) = self
            .transport
            .get(&format!("/api/v1{prefix}/{kind}"))
            .await
            .ok()?;
        if !(200..300).contains(&status) {
            return None;
        }
        let body: Value = serde_json::from_slice(&body).ok()?;
        let listed: Vec<ComponentStatus> =
            serde_json::from_value(body.get("data").cloned().unwrap_or(Value::Array(vec![])))
                .ok()?;
        Some(
            listed
                .into_iter()
                .map(|c| ComponentView {
                    id: c.id,
                    status: c.status,
                    error_message: c.error_message,
                    ..ComponentView::default()
                })
                .collect(),
        )
    }

    /// Every component with its status; `None` when the server does not
    /// answer (or answers something else than drasi-server's envelope).
    pub async fn components(&self) -> Option<Components> {
        Some(self.data_plane().await?.components_by_kind())
    }

    /// Asks the server to drop the replication slots of its postgres
    /// sources (the bundled runtime does; other servers cannot).
    pub async fn release_replication_slots(&self) -> Result<Vec<String>, String> {
        let (status, body) = self.transport.post(RELEASE_SLOTS_PATH).await?;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match status {
            200..=299 => Ok(body["data"]["released"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()),
            404 | 405 => {
                Err("the server cannot drop replication slots (not the bundled runtime)".into())
            }
            _ => Err(body["message"].as_str().unwrap_or("failed").to_string()),
        }
    }

    /// The ids of the server's lib instances (`/api/v1/instances`); one
    /// empty id when it does not list them.
    pub async fn lib_instances(&self) -> Vec<String> {
        let ids: Vec<String> = match self.transport.get("/api/v1/instances").await {
            Ok((200..=299, body)) => serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b.get("data").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|i| i.get("id")?.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if ids.is_empty() {
            vec![String::new()]
        } else {
            ids
        }
    }

    /// The current result rows of query `query` (`/api/v1/queries/{id}/results`).
    pub async fn query_results(&self, query: &str) -> Result<Vec<Value>, DriverError> {
        // The query of whichever lib instance has one of that id (the
        // first's by drasi-server's default routes, else each in turn).
        let libs = self.lib_instances().await;
        let mut last = Err(DriverError::new(
            ErrorCode::NotFound,
            format!("the server has no query '{query}'"),
        ));
        for lib in libs {
            let prefix = if lib.is_empty() {
                String::new()
            } else {
                format!("/instances/{}", segment(&lib))
            };
            let path = format!("/api/v1{prefix}/queries/{}/results", segment(query));
            match self.results_at(&path, query).await {
                Err(e) if e.code == ErrorCode::NotFound => last = Err(e),
                other => return other,
            }
        }
        last
    }

    async fn results_at(&self, path: &str, query: &str) -> Result<Vec<Value>, DriverError> {
        let (status, body) = self.transport.get(path).await.map_err(|e| {
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
        Some(self.data_plane().await?.readiness())
    }

    /// The component events of lib instance `id` (`/api/v1/events` for the
    /// empty id), as a stream.
    async fn events(&self, id: &str) -> Result<BoxStream<'static, Result<Bytes, String>>, String> {
        if id.is_empty() {
            self.transport.stream("/api/v1/events").await
        } else {
            self.transport
                .stream(&format!("/api/v1/instances/{}/events", segment(id)))
                .await
        }
    }
}

/// `text` as one URL path segment.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long a server must stay ready after a component recovered before it
/// is reported `Running` again (a source started again after a failure may
/// fail again at once while what it reads is still away).
const STABLE_FOR: Duration = Duration::from_secs(1);
/// How often a bootstrapping server's progress is read.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often a running server's data plane is read for `/metrics`.
const NUMBERS_EVERY: Duration = Duration::from_secs(10);

/// Follows the server's component events (each lib instance's
/// `/api/v1/.../events`) and reports: `Degraded` when a component fails
/// (naming it and its message), `Running` again once every component runs
/// (for a second), and, while queries bootstrap, `Starting` with their
/// progress until they are done. `initial` is the state reported when the
/// watch began (`Running`, `Degraded`, or `Starting` when not known to be
/// ready). Ends when every event stream ends
/// (the server stopped); the driver aborts it when it stops or replaces the
/// server.
pub async fn watch_components(
    api: ServerApi,
    id: InstanceId,
    generation: u64,
    sink: Arc<dyn StatusSink>,
    initial: ActualState,
) {
    let (changes, mut events) = tokio::sync::mpsc::channel::<Value>(64);
    let mut streams = tokio::task::JoinSet::new();
    for lib in api.lib_instances().await {
        let Ok(chunks) = api.events(&lib).await else {
            continue;
        };
        let changes = changes.clone();
        streams.spawn(async move {
            let mut stream = eventsource_stream::EventStream::new(chunks);
            while let Some(Ok(event)) = stream.next().await {
                if let Ok(body) = serde_json::from_str::<Value>(&event.data) {
                    if changes.send(body).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(changes);
    if streams.is_empty() {
        return;
    }
    // What was last reported: `Running`, `Degraded` or `Starting` (with its
    // message).
    let mut reported = match initial {
        ActualState::Running => Some((ActualState::Running, None)),
        _ => None,
    };
    let mut degraded = initial == ActualState::Degraded;
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut numbers = tokio::time::interval(NUMBERS_EVERY);
    numbers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let settled = matches!(reported, Some((ActualState::Running, _)));
        let body = tokio::select! {
            body = events.recv() => match body {
                Some(body) => Some(body),
                None => return,
            },
            _ = ticker.tick(), if !settled && !degraded => None,
            _ = numbers.tick() => {
                if let Some(plane) = api.data_plane().await {
                    sink.data_plane(&id, &plane).await;
                }
                continue;
            }
        };
        if let Some(body) = &body {
            if body["status"].as_str() == Some("Error") {
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
                let now = (ActualState::Degraded, Some(message));
                if reported.as_ref() != Some(&now) {
                    sink.observe(
                        Observation::now(id.clone(), now.0, Some(Reason::ComponentError))
                            .message(now.1.clone().unwrap_or_default())
                            .generation(generation),
                    )
                    .await;
                    reported = Some(now);
                }
                continue;
            }
            if body["status"].as_str() != Some("Running") && !degraded {
                continue;
            }
        }
        if degraded {
            // Recovered only if it stays so: look again a moment later.
            if api.readiness().await != Some(Readiness::Ready) {
                continue;
            }
            tokio::time::sleep(STABLE_FOR).await;
        }
        let (state, reason, message) = match api.readiness().await {
            Some(Readiness::Ready) => (ActualState::Running, Reason::Ready, None),
            Some(Readiness::Bootstrapping(progress)) if !degraded => {
                (ActualState::Starting, Reason::Bootstrapping, Some(progress))
            }
            _ => continue,
        };
        degraded = false;
        let now = (state, message);
        if reported.as_ref() == Some(&now) {
            continue;
        }
        let mut observation =
            Observation::now(id.clone(), state, Some(reason)).generation(generation);
        observation.message = now.1.clone();
        sink.observe(observation).await;
        reported = Some(now);
        // The numbers as of this change, not only as of the next reading.
        if let Some(plane) = api.data_plane().await {
            sink.data_plane(&id, &plane).await;
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
    /// then ends, and which answers 404 to anything else; its base URL.
    async fn event_server(events: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..n]).to_string();
                let response = if head.starts_with("GET /api/v1/events ") {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
                        events.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string()
                };
                socket.write_all(response.as_bytes()).await.unwrap();
            }
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
        watch_components(
            ServerApi::new(base),
            id.clone(),
            7,
            sink.clone(),
            ActualState::Running,
        )
        .await;
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
