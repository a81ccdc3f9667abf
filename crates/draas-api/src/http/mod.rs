//! The REST API (DESIGN §5): routes, handlers, and the event stream.
//! Handlers extract and validate input, call the [`ControlPlane`], and map
//! the result; nothing else.

mod audit;
pub mod auth;
mod extract;
mod idempotency;
mod redact;
mod wait;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, patch, post, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use draas_core::auth::Access;
use draas_core::lease::FENCING_TOKEN_HEADER;
use draas_core::messages::{LogStream, EVENT_CHANNELS};
use draas_core::ports::BusError;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::service::{
    ControlPlane, CreateInstance, ExternalStatusUpdate, ListQuery, ReconcileStep,
};
use extract::{etag, if_match, require_json_patch, ApiJson, ApiQuery, InstancePath};
use wait::WaitQuery;

pub use auth::{Auth, Caller};

/// Largest request body accepted (configurations included).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

type Cp = State<Arc<ControlPlane>>;

/// One route of the API: its method and path, the [`Access`] a caller
/// needs, and its handler. [`routes`] is the one list: the router is built
/// from it, and the tests walk it, so no route escapes the auth check.
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, with `{id}` for an instance id.
    pub path: &'static str,
    /// What the caller needs.
    pub access: Access,
    /// Whether an `Idempotency-Key` makes a repeat answer the first time's
    /// answer.
    pub idempotent: bool,
    handler: MethodRouter<Arc<ControlPlane>>,
}

impl Route {
    fn idempotent(self) -> Self {
        Self {
            idempotent: true,
            ..self
        }
    }
}

fn route(
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<Arc<ControlPlane>>,
) -> Route {
    Route {
        method,
        path,
        access,
        idempotent: false,
        handler,
    }
}

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    use Access::{Administer, Operate, Public, PushStatus, Read};
    const INSTANCE: &str = "/api/server/instances/{id}";
    vec![
        route(Method::POST, "/api/server/instances", Operate, post(create)).idempotent(),
        route(Method::GET, "/api/server/instances", Read, get(list)),
        route(Method::GET, INSTANCE, Read, get(get_instance)),
        route(Method::DELETE, INSTANCE, Operate, delete_route(delete)).idempotent(),
        route(
            Method::POST,
            "/api/server/instances/{id}/start",
            Operate,
            post(start),
        )
        .idempotent(),
        route(
            Method::POST,
            "/api/server/instances/{id}/stop",
            Operate,
            post(stop),
        )
        .idempotent(),
        route(
            Method::POST,
            "/api/server/instances/{id}/restart",
            Operate,
            post(restart),
        )
        .idempotent(),
        route(
            Method::POST,
            "/api/server/instances/{id}/reconcile",
            Operate,
            post(reconcile),
        ),
        route(
            Method::GET,
            "/api/server/instances/{id}/runtime-status",
            Read,
            get(runtime_status),
        ),
        route(
            Method::GET,
            "/api/server/instances/{id}/server-configuration",
            Read,
            get(get_server_configuration),
        ),
        route(
            Method::PATCH,
            "/api/server/instances/{id}/server-configuration",
            Operate,
            patch(patch_server_configuration),
        ),
        route(
            Method::GET,
            "/api/server/instances/{id}/logs",
            Read,
            get(logs),
        ),
        route(Method::GET, "/api/reconciler/lease", Read, get(get_lease)),
        route(
            Method::POST,
            "/api/reconciler/lease",
            Operate,
            post(claim_lease),
        ),
        route(
            Method::DELETE,
            "/api/reconciler/lease",
            Operate,
            delete_route(release_lease),
        ),
        route(Method::GET, "/api/server/platforms", Read, get(platforms)),
        route(
            Method::GET,
            "/api/server/dead-letters",
            Administer,
            get(dead_letters),
        ),
        route(Method::GET, "/api/audit", Administer, get(audit::entries)),
        route(
            Method::GET,
            "/api/configuration/instances/{id}",
            Read,
            get(get_configuration),
        ),
        route(
            Method::PATCH,
            "/api/configuration/instances/{id}",
            Operate,
            patch(patch_configuration),
        ),
        route(
            Method::POST,
            "/api/status/updates",
            PushStatus,
            post(status_update),
        ),
        route(
            Method::GET,
            "/api/status/recent-changes",
            Read,
            get(recent_changes),
        ),
        route(
            Method::GET,
            "/api/status/{id}/status",
            Read,
            get(instance_status),
        ),
        route(Method::GET, "/api/events", Read, get(events)),
        route(Method::GET, "/api/events/history", Read, get(event_history)),
        route(Method::GET, "/healthz", Public, get(healthz)),
        route(Method::GET, "/readyz", Public, get(readyz)),
    ]
}

/// Builds the API router: every route of [`routes`] behind the auth check
/// of its access.
pub fn router(control_plane: Arc<ControlPlane>, auth: Arc<Auth>) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<Arc<ControlPlane>>> = BTreeMap::new();
    for Route {
        path,
        access,
        idempotent,
        handler,
        ..
    } in routes()
    {
        let handler = if idempotent {
            handler.layer(axum::middleware::from_fn_with_state(
                control_plane.clone(),
                idempotency::idempotent,
            ))
        } else {
            handler
        };
        let auth = auth.clone();
        let guarded = handler.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                auth::authorize(auth.clone(), access, request, next)
            },
        ));
        let merged = match by_path.remove(path) {
            Some(other) => other.merge(guarded),
            None => guarded,
        };
        by_path.insert(path, merged);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            control_plane.clone(),
            audit::record,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(control_plane)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NO_SUCH_ROUTE", "no such route")
}

// === instances ===

async fn create(State(cp): Cp, ApiJson(request): ApiJson<CreateInstance>) -> ApiResult<Response> {
    let instance = redact::instance(cp.create(request).await?);
    let location = format!("/api/server/instances/{}", instance.id);
    let body =
        json!({ "instance": instance, "serverConfiguration": instance.server_configuration });
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

async fn list(State(cp): Cp, ApiQuery(query): ApiQuery<ListQuery>) -> ApiResult<Response> {
    let mut list = cp.list(query).await?;
    list.items = list.items.into_iter().map(redact::instance).collect();
    Ok(Json(list).into_response())
}

async fn get_instance(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let Some(wanted) = q.wait else {
        return Ok(Json(redact::instance(cp.load(&id).await?.value)).into_response());
    };
    let limit = q.limit();
    // Subscribe before reading, so a change between the two is not missed.
    let mut events = cp.bus().subscribe(&EVENT_CHANNELS).await?;
    let deadline = tokio::time::Instant::now() + limit;
    match wait::until_state(&cp, &id, wanted, deadline, &mut events).await? {
        Ok(instance) => Ok(Json(redact::instance(instance)).into_response()),
        Err(seen) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "WAIT_TIMEOUT",
            format!(
                "the instance is {:?}, not {wanted:?}, after {limit:?}",
                seen.status.state
            ),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<StatusCode> {
    cp.delete(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let instance = wait::mutation(&cp, &id, q, "start", cp.start(&id)).await?;
    Ok(Json(redact::instance(instance)).into_response())
}

async fn stop(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let instance = wait::mutation(&cp, &id, q, "stop", cp.stop(&id)).await?;
    Ok(Json(redact::instance(instance)).into_response())
}

async fn restart(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let instance = wait::mutation(&cp, &id, q, "restart", cp.restart(&id)).await?;
    Ok(Json(redact::instance(instance)).into_response())
}

async fn reconcile(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    headers: HeaderMap,
    ApiJson(step): ApiJson<ReconcileStep>,
) -> ApiResult<Response> {
    let fence = headers
        .get(FENCING_TOKEN_HEADER)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "INVALID_FENCE",
                        format!("{FENCING_TOKEN_HEADER} must be a lease's token (a number)"),
                    )
                })
        })
        .transpose()?;
    Ok(Json(redact::instance(cp.reconcile(&id, step, fence).await?)).into_response())
}

// === the reconciler's lease ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LeaseRequest {
    /// Who asks (a reconciler's id).
    holder: String,
    /// For how long.
    ttl_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseQuery {
    holder: String,
}

fn lease_body(lease: &draas_core::lease::Lease) -> serde_json::Value {
    let mut body = json!(lease);
    body["live"] = json!(lease.is_live(chrono::Utc::now()));
    body
}

async fn get_lease(State(cp): Cp) -> ApiResult<Response> {
    match cp.lease().await? {
        Some(lease) => Ok(Json(lease_body(&lease)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no reconciler has taken the lease yet",
        )),
    }
}

async fn claim_lease(
    State(cp): Cp,
    ApiJson(request): ApiJson<LeaseRequest>,
) -> ApiResult<Response> {
    let lease = cp
        .claim_lease(&request.holder, Duration::from_secs(request.ttl_seconds))
        .await?;
    Ok(Json(lease_body(&lease)).into_response())
}

async fn release_lease(State(cp): Cp, ApiQuery(q): ApiQuery<ReleaseQuery>) -> ApiResult<Response> {
    let released = cp.release_lease(&q.holder).await?;
    Ok(Json(json!({ "released": released })).into_response())
}

async fn runtime_status(State(cp): Cp, InstancePath(id): InstancePath) -> ApiResult<Response> {
    Ok(Json(cp.runtime_status(&id).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    tail: Option<usize>,
    stream: Option<LogStream>,
}

async fn logs(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    let tail = q.tail.unwrap_or(100);
    if tail == 0 || tail > 10_000 {
        return Err(ApiError::bad_request(
            "INVALID_QUERY",
            "tail must be between 1 and 10000",
        ));
    }
    let stream = q.stream.unwrap_or(LogStream::Stdout);
    let lines = cp.logs(&id, tail, stream).await?;
    Ok(Json(json!({ "instanceId": id, "stream": stream, "lines": lines })).into_response())
}

async fn platforms(State(cp): Cp) -> ApiResult<Response> {
    Ok(Json(cp.platforms().await?).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeadLetterQuery {
    platform_type: draas_core::instance::PlatformType,
    limit: Option<usize>,
}

/// Commands the bus gave up on (unreadable, or delivered too often).
async fn dead_letters(
    State(cp): Cp,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let letters = cp
        .bus()
        .dead_letters(q.platform_type.command_channel(), limit)
        .await?
        .into_iter()
        .map(redact::dead_letter)
        .collect::<Vec<_>>();
    Ok(Json(json!({ "platformType": q.platform_type, "deadLetters": letters })).into_response())
}

// === configuration ===

async fn get_configuration(State(cp): Cp, InstancePath(id): InstancePath) -> ApiResult<Response> {
    let (config, generation) = cp.configuration(&id).await?;
    Ok(([(header::ETAG, etag(generation))], Json(config)).into_response())
}

async fn patch_configuration(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require_json_patch(&headers)?;
    let expected = if_match(&headers)?;
    let (config, generation) = cp.patch_configuration(&id, &body, expected).await?;
    Ok(([(header::ETAG, etag(generation))], Json(config)).into_response())
}

async fn get_server_configuration(
    State(cp): Cp,
    InstancePath(id): InstancePath,
) -> ApiResult<Response> {
    let (config, generation) = cp.server_configuration(&id).await?;
    Ok((
        [(header::ETAG, etag(generation))],
        Json(redact::server_configuration(config)),
    )
        .into_response())
}

async fn patch_server_configuration(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require_json_patch(&headers)?;
    let expected = if_match(&headers)?;
    let (config, generation) = cp.patch_server_configuration(&id, &body, expected).await?;
    Ok((
        [(header::ETAG, etag(generation))],
        Json(redact::server_configuration(config)),
    )
        .into_response())
}

// === status ===

async fn status_update(
    State(cp): Cp,
    ApiJson(update): ApiJson<ExternalStatusUpdate>,
) -> ApiResult<Response> {
    let change = cp.external_status(update).await?;
    Ok((StatusCode::ACCEPTED, Json(change)).into_response())
}

async fn instance_status(State(cp): Cp, InstancePath(id): InstancePath) -> ApiResult<Response> {
    let instance = cp.load(&id).await?.value;
    Ok(Json(json!({
        "instanceId": instance.id,
        "desiredState": instance.desired_state,
        "generation": instance.generation,
        "status": instance.status,
        "runtime": instance.runtime,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

async fn recent_changes(State(cp): Cp, ApiQuery(q): ApiQuery<ChangesQuery>) -> ApiResult<Response> {
    Ok(Json(cp.recent_changes(q.since, q.limit.unwrap_or(1000)).await?).into_response())
}

/// Events replayed per page when a client resumes.
const RESUME_PAGE: usize = 1000;
/// Most events replayed to a resuming client (the bus keeps 10,000).
const RESUME_LIMIT: usize = 20_000;

/// Server-sent events of every bus event: `event: <type>`, `id: <cursor>`,
/// `data: <json>`. The `id` is the event's cursor in the kept history, so a
/// client that reconnects with `Last-Event-ID` first gets every kept event
/// it missed, then the live ones, none twice.
async fn events(
    State(cp): Cp,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    // Subscribe before replaying, so nothing published in between is lost;
    // what both deliver is sent once (by event id).
    let live = cp.bus().subscribe(&EVENT_CHANNELS).await?;
    let last_seen = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_string())
                .map_err(|_| ApiError::bad_request("INVALID_CURSOR", "Last-Event-ID is not ASCII"))
        })
        .transpose()?
        .filter(|s| !s.is_empty());
    let mut missed = Vec::new();
    if let Some(mut after) = last_seen {
        loop {
            let page = cp
                .bus()
                .replay_events(Some(&after), RESUME_PAGE)
                .await
                .map_err(|e| match e {
                    BusError::InvalidCursor(_) => {
                        ApiError::bad_request("INVALID_CURSOR", format!("Last-Event-ID: {e}"))
                    }
                    other => other.into(),
                })?;
            let full = page.len() == RESUME_PAGE;
            if let Some(last) = page.last() {
                after = last.cursor.clone();
            }
            missed.extend(page);
            if !full || missed.len() >= RESUME_LIMIT {
                break;
            }
        }
    }
    let replayed: std::collections::HashSet<uuid::Uuid> =
        missed.iter().map(|e| e.envelope.id).collect();
    let live = live.filter(move |e| {
        let fresh = !replayed.contains(&e.envelope.id);
        async move { fresh }
    });
    let stream = futures::stream::iter(missed).chain(live).map(|published| {
        let kind = serde_json::to_value(&published.envelope.event)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str().map(str::to_string)))
            .unwrap_or_else(|| "Unknown".into());
        let data = serde_json::to_string(&published.envelope).unwrap_or_default();
        Ok(SseEvent::default()
            .event(kind)
            .id(published.cursor)
            .data(data))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// Kept events after a cursor (replay); `next` is the cursor to pass on.
async fn event_history(State(cp): Cp, ApiQuery(q): ApiQuery<HistoryQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let events = cp
        .bus()
        .replay_events(q.after.as_deref(), limit)
        .await
        .map_err(|e| match e {
            BusError::InvalidCursor(_) => ApiError::bad_request("INVALID_CURSOR", e.to_string()),
            other => other.into(),
        })?;
    let next = events.last().map(|e| e.cursor.clone()).or(q.after);
    let events: Vec<_> = events
        .into_iter()
        .map(|e| json!({ "cursor": e.cursor, "event": e.envelope }))
        .collect();
    Ok(Json(json!({ "events": events, "next": next })).into_response())
}

// === health ===

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready when both the store and the bus answer.
async fn readyz(State(cp): Cp) -> ApiResult<Response> {
    cp.store().get("health", "probe").await?;
    cp.bus().ping().await?;
    Ok(Json(json!({ "status": "ready", "store": "ok", "bus": "ok" })).into_response())
}
