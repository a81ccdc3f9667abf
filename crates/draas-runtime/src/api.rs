//! The part of drasi-server's REST API that a manager and a user need, and
//! the runtime's own status for DRaaS.
//!
//! Shapes follow drasi-server (`api/shared/responses.rs`, `error.rs`):
//! successes are `{"success":true,"data":...,"error":null}`, errors are
//! `{"code":"...","message":"..."}` with the matching status, list items are
//! `{"id","status","error_message"?,"links"}` (note the snake_case key).
//! Every `/api/v1/...` route answers for the first lib instance and, under
//! `/api/v1/instances/{id}/...`, for each; `GET /api/v1/instances` lists
//! them. `GET /draas/v1/status` is the runtime's own: every lib instance's
//! components with each query's bootstrap and drasi-lib's numbers
//! ([`draas_core::dataplane::DataPlane`]). `POST
//! /draas/v1/release-replication-slots` drops the replication slots of the
//! server's postgres sources (DRaaS calls it when it deletes the instance).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use draas_core::config::DrasiServerConfig;
use draas_drasi::assemble::Lib;
use draas_drasi::supervise::Pending;
use drasi_lib::{ComponentStatus, DrasiLib};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What the handlers share.
pub struct ApiState {
    /// The running lib instances, in configuration order.
    pub libs: Vec<Lib>,
    /// The configuration they were built from (for `?view=full`).
    pub config: DrasiServerConfig,
    /// Reactions waiting for their queries.
    pub pending: Arc<Pending>,
    /// Cancelled once every component has stopped: event streams then end
    /// cleanly instead of being cut off when the process exits.
    pub stopped: tokio_util::sync::CancellationToken,
}

type Shared = State<Arc<ApiState>>;

/// Builds the router.
pub fn router(state: Arc<ApiState>) -> Router {
    let v1 = || {
        Router::new()
            .route("/sources", get(list_sources))
            .route("/sources/{id}", get(get_source))
            .route("/queries", get(list_queries))
            .route("/queries/{id}", get(get_query))
            .route("/queries/{id}/results", get(query_results))
            .route("/reactions", get(list_reactions))
            .route("/reactions/{id}", get(get_reaction))
            .route("/events", get(events))
    };
    let cors = cors(&state.config.cors_allowed_origins);
    Router::new()
        .route("/health", get(health))
        .route("/api/versions", get(versions))
        .route("/api/v1/instances", get(list_instances))
        .route(draas_core::dataplane::STATUS_PATH, get(status))
        .route("/draas/v1/release-replication-slots", post(release_slots))
        .nest("/api/v1", v1())
        .nest("/api/v1/instances/{instance_id}", v1())
        .layer(cors)
        .with_state(state)
}

/// drasi-server's CORS: every origin when `corsAllowedOrigins` is empty,
/// else those listed.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return CorsLayer::permissive();
    }
    let allowed: Vec<axum::http::HeaderValue> =
        origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods(Any)
        .allow_headers(Any)
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

/// The lib instance a request is about: the one its path names, or the
/// first.
fn lib_of<'a>(state: &'a ApiState, instance: Option<&str>) -> Result<&'a Lib, ApiError> {
    match instance {
        None => state.libs.first().ok_or_else(|| {
            ApiError::not_found("INSTANCE_NOT_FOUND", "No instances configured".into())
        }),
        Some(id) => state.libs.iter().find(|l| l.id == id).ok_or_else(|| {
            ApiError::not_found("INSTANCE_NOT_FOUND", format!("Instance '{id}' not found"))
        }),
    }
}

#[derive(Deserialize, Default)]
struct Scope {
    instance_id: Option<String>,
    id: Option<String>,
}

// === handlers ===

async fn health() -> Response {
    Json(json!({"status": "ok", "timestamp": chrono::Utc::now().to_rfc3339()})).into_response()
}

async fn versions() -> Response {
    Json(json!({"versions": ["v1"], "current": "v1"})).into_response()
}

async fn list_instances(State(s): Shared) -> Response {
    let mut items = Vec::new();
    for lib in &s.libs {
        let count = |n: Result<Vec<(String, ComponentStatus)>, drasi_lib::DrasiError>| {
            n.map(|v| v.iter().filter(|(id, _)| !id.starts_with("__")).count())
                .unwrap_or(0)
        };
        let base = format!("/api/v1/instances/{}", lib.id);
        items.push(json!({
            "id": lib.id,
            "source_count": count(lib.lib.list_sources().await),
            "query_count": count(lib.lib.list_queries().await),
            "reaction_count": count(lib.lib.list_reactions().await),
            "links": {
                "self": base,
                "sources": format!("{base}/sources"),
                "queries": format!("{base}/queries"),
                "reactions": format!("{base}/reactions"),
            }
        }));
    }
    ok(items)
}

async fn status(State(s): Shared) -> Response {
    Json(draas_drasi::status::data_plane(&s.libs, &s.pending).await).into_response()
}

async fn release_slots(State(s): Shared) -> Response {
    match crate::slots::release(&s.libs, &s.config).await {
        Ok(released) => ok(json!({ "released": released })),
        Err(e) => ApiError {
            status: StatusCode::BAD_GATEWAY,
            code: "RELEASE_FAILED",
            message: e,
        }
        .into_response(),
    }
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
    status: Value,
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

fn config_of(state: &ApiState, lib: &Lib, kind: Kind, id: &str) -> Option<Value> {
    let spec = state
        .config
        .lib_instances()
        .into_iter()
        .zip(&state.libs)
        .find(|(_, l)| l.id == lib.id)
        .map(|(spec, _)| spec)?;
    match kind {
        Kind::Source => spec
            .sources
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| serde_json::to_value(c).ok()),
        Kind::Query => spec
            .queries
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| serde_json::to_value(c).ok()),
        Kind::Reaction => spec
            .reactions
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| serde_json::to_value(c).ok()),
    }
}

async fn item(
    state: &ApiState,
    lib: &Lib,
    kind: Kind,
    id: &str,
    full: bool,
) -> Option<ComponentItem> {
    let (status, error_message) = status_of(&lib.lib, kind, id).await?;
    // A reaction the runtime starts once its queries run is starting.
    let status = match kind {
        Kind::Reaction if state.pending.is_waiting(&lib.id, id) => json!("Starting"),
        _ => serde_json::to_value(status).unwrap_or(Value::Null),
    };
    let link = format!("/api/v1/instances/{}/{}/{id}", lib.id, kind.plural());
    Some(ComponentItem {
        id: id.to_string(),
        status,
        error_message,
        links: json!({"self": link, "full": format!("{link}?view=full")}),
        config: if full {
            config_of(state, lib, kind, id)
        } else {
            None
        },
    })
}

async fn list(state: &ApiState, scope: Option<&str>, kind: Kind) -> Response {
    let lib = match lib_of(state, scope) {
        Ok(lib) => lib,
        Err(e) => return e.into_response(),
    };
    let listed = match kind {
        Kind::Source => lib.lib.list_sources().await,
        Kind::Query => lib.lib.list_queries().await,
        Kind::Reaction => lib.lib.list_reactions().await,
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
        if let Some(item) = item(state, lib, kind, id, false).await {
            items.push(item);
        }
    }
    ok(items)
}

async fn one(state: &ApiState, scope: Scope, kind: Kind, view: ViewParams) -> Response {
    let lib = match lib_of(state, scope.instance_id.as_deref()) {
        Ok(lib) => lib,
        Err(e) => return e.into_response(),
    };
    let id = scope.id.unwrap_or_default();
    let full = view.view.as_deref() == Some("full");
    match item(state, lib, kind, &id, full).await {
        Some(item) => ok(item),
        None => kind.not_found(&id).into_response(),
    }
}

async fn list_sources(State(s): Shared, p: Option<Path<Scope>>) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    list(&s, p.instance_id.as_deref(), Kind::Source).await
}
async fn list_queries(State(s): Shared, p: Option<Path<Scope>>) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    list(&s, p.instance_id.as_deref(), Kind::Query).await
}
async fn list_reactions(State(s): Shared, p: Option<Path<Scope>>) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    list(&s, p.instance_id.as_deref(), Kind::Reaction).await
}

async fn get_source(
    State(s): Shared,
    p: Option<Path<Scope>>,
    Query(v): Query<ViewParams>,
) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    one(&s, p, Kind::Source, v).await
}
async fn get_query(
    State(s): Shared,
    p: Option<Path<Scope>>,
    Query(v): Query<ViewParams>,
) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    one(&s, p, Kind::Query, v).await
}
async fn get_reaction(
    State(s): Shared,
    p: Option<Path<Scope>>,
    Query(v): Query<ViewParams>,
) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    one(&s, p, Kind::Reaction, v).await
}

async fn query_results(State(s): Shared, p: Option<Path<Scope>>) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    let lib = match lib_of(&s, p.instance_id.as_deref()) {
        Ok(lib) => lib,
        Err(e) => return e.into_response(),
    };
    let id = p.id.unwrap_or_default();
    match status_of(&lib.lib, Kind::Query, &id).await {
        None => Kind::Query.not_found(&id).into_response(),
        Some((status, _)) if status != ComponentStatus::Running => ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            message: format!("Query '{id}' is not running"),
        }
        .into_response(),
        Some(_) => match lib.lib.get_query_results(&id).await {
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
async fn events(State(s): Shared, p: Option<Path<Scope>>) -> Response {
    let p = p.map(|Path(p)| p).unwrap_or_default();
    match lib_of(&s, p.instance_id.as_deref()) {
        Ok(lib) => event_stream(lib.lib.clone(), s.stopped.clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

fn event_stream(
    lib: Arc<DrasiLib>,
    stopped: tokio_util::sync::CancellationToken,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = lib.subscribe_all_component_events();
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
