//! The part of drasi-server's REST API that a manager and a user need.
//!
//! Shapes follow drasi-server (`api/shared/responses.rs`, `error.rs`):
//! successes are `{"success":true,"data":...,"error":null}`, errors are
//! `{"code":"...","message":"..."}` with the matching status, list items are
//! `{"id","status","error_message"?,"links"}` (note the snake_case key).
//! Every `/api/v1/...` route also answers under `/api/v1/instances/{id}/...`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use draas_core::config::DrasiServerConfig;
use drasi_lib::{ComponentStatus, DrasiLib};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What the handlers share.
pub struct ApiState {
    /// The running lib.
    pub lib: Arc<DrasiLib>,
    /// The configuration it was built from (for `?view=full`).
    pub config: DrasiServerConfig,
    /// The server (lib instance) id.
    pub server_id: String,
    /// Cancelled once every component has stopped: event streams then end
    /// cleanly instead of being cut off when the process exits.
    pub stopped: tokio_util::sync::CancellationToken,
}

type Shared = State<Arc<ApiState>>;

/// Builds the router.
pub fn router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/sources", get(list_sources))
        .route("/sources/{id}", get(get_source))
        .route("/queries", get(list_queries))
        .route("/queries/{id}", get(get_query))
        .route("/queries/{id}/results", get(query_results))
        .route("/reactions", get(list_reactions))
        .route("/reactions/{id}", get(get_reaction))
        .route("/events", get(events));
    Router::new()
        .route("/health", get(health))
        .route("/api/versions", get(versions))
        .nest("/api/v1", v1.clone())
        .nest(
            "/api/v1/instances/{instance_id}",
            v1.layer(axum::middleware::from_fn_with_state(
                state.clone(),
                check_instance,
            )),
        )
        .with_state(state)
}

// === envelope and errors ===

#[derive(Serialize)]
struct Envelope<T> {
    success: bool,
    data: T,
    error: Option<String>,
}

fn ok<T: Serialize>(data: T) -> Response {
    Json(Envelope {
        success: true,
        data,
        error: None,
    })
    .into_response()
}

/// A drasi-server error: `{code, message}` and a status.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn not_found(code: &'static str, message: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

async fn check_instance(
    State(state): Shared,
    Path(params): Path<std::collections::HashMap<String, String>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match params.get("instance_id") {
        Some(id) if *id == state.server_id => next.run(request).await,
        other => ApiError::not_found(
            "INSTANCE_NOT_FOUND",
            format!("Instance '{}' not found", other.map_or("", |s| s.as_str())),
        )
        .into_response(),
    }
}

// === handlers ===

async fn health() -> Response {
    Json(json!({"status": "ok", "timestamp": chrono::Utc::now().to_rfc3339()})).into_response()
}

async fn versions() -> Response {
    Json(json!({"versions": ["v1"], "current": "v1"})).into_response()
}

#[derive(Clone, Copy)]
enum Kind {
    Source,
    Query,
    Reaction,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Source => "sources",
            Kind::Query => "queries",
            Kind::Reaction => "reactions",
        }
    }
    fn not_found(self, id: &str) -> ApiError {
        let (code, what) = match self {
            Kind::Source => ("SOURCE_NOT_FOUND", "Source"),
            Kind::Query => ("QUERY_NOT_FOUND", "Query"),
            Kind::Reaction => ("REACTION_NOT_FOUND", "Reaction"),
        };
        ApiError::not_found(code, format!("{what} '{id}' not found"))
    }
}

#[derive(Deserialize)]
struct ViewParams {
    view: Option<String>,
}

#[derive(Serialize)]
struct ComponentItem {
    id: String,
    status: ComponentStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<String>,
    links: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
}

/// Status and error message of one component; `None` when it does not exist.
async fn status_of(
    lib: &DrasiLib,
    kind: Kind,
    id: &str,
) -> Option<(ComponentStatus, Option<String>)> {
    match kind {
        Kind::Source => lib
            .get_source_info(id)
            .await
            .ok()
            .map(|i| (i.status, i.error_message)),
        Kind::Query => lib
            .get_query_info(id)
            .await
            .ok()
            .map(|i| (i.status, i.error_message)),
        Kind::Reaction => lib
            .get_reaction_info(id)
            .await
            .ok()
            .map(|i| (i.status, i.error_message)),
    }
}

fn config_of(config: &DrasiServerConfig, kind: Kind, id: &str) -> Option<Value> {
    match kind {
        Kind::Source => config
            .sources
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| serde_json::to_value(c).ok()),
        Kind::Query => config
            .queries
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| serde_json::to_value(c).ok()),
        Kind::Reaction => config
            .reactions
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| serde_json::to_value(c).ok()),
    }
}

async fn item(state: &ApiState, kind: Kind, id: &str, full: bool) -> Option<ComponentItem> {
    let (status, error_message) = status_of(&state.lib, kind, id).await?;
    let link = format!(
        "/api/v1/instances/{}/{}/{id}",
        state.server_id,
        kind.plural()
    );
    Some(ComponentItem {
        id: id.to_string(),
        status,
        error_message,
        links: json!({"self": link, "full": format!("{link}?view=full")}),
        config: if full {
            config_of(&state.config, kind, id)
        } else {
            None
        },
    })
}

async fn list(state: &ApiState, kind: Kind) -> Response {
    let listed = match kind {
        Kind::Source => state.lib.list_sources().await,
        Kind::Query => state.lib.list_queries().await,
        Kind::Reaction => state.lib.list_reactions().await,
    };
    let ids = match listed {
        Ok(items) => items,
        Err(e) => {
            return ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "INTERNAL_ERROR",
                message: e.to_string(),
            }
            .into_response()
        }
    };
    let mut items = Vec::new();
    // drasi-lib registers internal components (`__component_graph__`).
    for (id, _) in ids.iter().filter(|(id, _)| !id.starts_with("__")) {
        if let Some(item) = item(state, kind, id, false).await {
            items.push(item);
        }
    }
    ok(items)
}

async fn one(state: &ApiState, kind: Kind, id: &str, view: ViewParams) -> Response {
    let full = view.view.as_deref() == Some("full");
    match item(state, kind, id, full).await {
        Some(item) => ok(item),
        None => kind.not_found(id).into_response(),
    }
}

async fn list_sources(State(s): Shared) -> Response {
    list(&s, Kind::Source).await
}
async fn list_queries(State(s): Shared) -> Response {
    list(&s, Kind::Query).await
}
async fn list_reactions(State(s): Shared) -> Response {
    list(&s, Kind::Reaction).await
}

#[derive(Deserialize)]
struct ComponentPath {
    id: String,
}

async fn get_source(
    State(s): Shared,
    Path(p): Path<ComponentPath>,
    Query(v): Query<ViewParams>,
) -> Response {
    one(&s, Kind::Source, &p.id, v).await
}
async fn get_query(
    State(s): Shared,
    Path(p): Path<ComponentPath>,
    Query(v): Query<ViewParams>,
) -> Response {
    one(&s, Kind::Query, &p.id, v).await
}
async fn get_reaction(
    State(s): Shared,
    Path(p): Path<ComponentPath>,
    Query(v): Query<ViewParams>,
) -> Response {
    one(&s, Kind::Reaction, &p.id, v).await
}

async fn query_results(State(s): Shared, Path(p): Path<ComponentPath>) -> Response {
    match status_of(&s.lib, Kind::Query, &p.id).await {
        None => Kind::Query.not_found(&p.id).into_response(),
        Some((status, _)) if status != ComponentStatus::Running => ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            message: format!("Query '{}' is not running", p.id),
        }
        .into_response(),
        Some(_) => match s.lib.get_query_results(&p.id).await {
            Ok(rows) => ok(rows),
            Err(e) => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "INVALID_REQUEST",
                message: e.to_string(),
            }
            .into_response(),
        },
    }
}

/// SSE of component lifecycle events: `data: {componentId, componentType,
/// status, timestamp, message?}`, with a `heartbeat` comment every 15 s.
async fn events(State(s): Shared) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = s.lib.subscribe_all_component_events();
    let stopped = s.stopped.clone();
    let stream =
        futures::stream::unfold((receiver, stopped), |(mut receiver, stopped)| async move {
            loop {
                let next = tokio::select! {
                    biased;
                    next = receiver.recv() => next,
                    // Everything sent before the stop is already buffered; once
                    // it is drained, end the stream.
                    () = stopped.cancelled() => match receiver.try_recv() {
                        Ok(event) => Ok(event),
                        Err(_) => return None,
                    },
                };
                match next {
                    Ok(event) => {
                        let mut body = json!({
                            "componentId": event.component_id,
                            "componentType": event.component_type,
                            "status": event.status,
                            "timestamp": event.timestamp.to_rfc3339(),
                        });
                        if let Some(message) = event.message {
                            body["message"] = Value::String(message);
                        }
                        return Some((
                            Ok(Event::default().data(body.to_string())),
                            (receiver, stopped),
                        ));
                    }
                    // A slow reader skips what it missed rather than ending the stream.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    )
}
