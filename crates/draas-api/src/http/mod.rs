//! The REST API (DESIGN §5): routes, handlers, and the event stream.
//! Handlers extract and validate input, call the [`ControlPlane`], and map
//! the result; nothing else.

mod audit;
pub mod auth;
mod extract;
mod idempotency;
pub mod openapi;
mod redact;
mod wait;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
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
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::service::{
    ControlPlane, CreateInstance, Deletion, ExternalStatusUpdate, ListQuery, ReconcileStep,
    Stopping,
};
use extract::{
    etag, if_match, require_json_patch, ApiBody, ApiJson, ApiQuery, InstancePath, QueryPath,
};
use wait::{Mutated, WaitQuery};

pub use auth::{Auth, Caller};

/// Largest request body accepted: routes that take a configuration
/// (create, JSON Patch).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest body of every other route.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// Longest a request about one instance may take (it may wait for a
/// worker's command, then `?wait=`): see `draas_core::limits`.
const LONG_REQUEST: Duration = draas_core::limits::INSTANCE_ROUTE;
/// Longest any other request may take.
const SHORT_REQUEST: Duration = Duration::from_secs(30);

impl Route {
    /// How long it may take (`None`: an event stream, as long as it lasts).
    fn time_limit(&self) -> Option<Duration> {
        if self.path == "/api/events" {
            None
        } else if self.path.starts_with("/api/server/instances/{id}") {
            Some(LONG_REQUEST)
        } else {
            Some(SHORT_REQUEST)
        }
    }

    /// The largest body it takes.
    fn body_limit(&self) -> usize {
        let takes_configuration = self.path == "/api/server/instances"
            || self.yaml
            || matches!(self.body, Some((media, _)) if media == "application/json-patch+json");
        if takes_configuration {
            MAX_BODY_BYTES
        } else {
            SMALL_BODY_BYTES
        }
    }
}

type Cp = State<Arc<ControlPlane>>;

/// One route of the API: its method and path, the [`Access`] a caller
/// needs, its handler, and what the OpenAPI document says of it.
/// [`routes`] is the one list: the router and the OpenAPI document are
/// built from it, and the tests walk it, so no route escapes the auth check
/// or the contract.
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, with `{id}` for an instance id or name.
    pub path: &'static str,
    /// What the caller needs.
    pub access: Access,
    /// Whether an `Idempotency-Key` makes a repeat answer the first time's
    /// answer.
    pub idempotent: bool,
    /// What it does, in a line.
    pub summary: &'static str,
    /// Its query parameters (an object whose properties they are).
    pub query: Option<openapi::SchemaFn>,
    /// Its body: media type and schema.
    pub body: Option<(&'static str, openapi::SchemaFn)>,
    /// Whether its body (and its answer, with `Accept: application/yaml`)
    /// may be YAML as well as JSON: the routes that carry a configuration a
    /// person writes.
    pub yaml: bool,
    /// Its success: status and the schema of the body (none: no body, or
    /// not JSON).
    pub answer: (u16, Option<openapi::SchemaFn>),
    handler: MethodRouter<Arc<ControlPlane>>,
}

impl Route {
    fn new(
        method: Method,
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: MethodRouter<Arc<ControlPlane>>,
    ) -> Self {
        Self {
            method,
            path,
            access,
            idempotent: false,
            summary,
            query: None,
            body: None,
            yaml: false,
            answer: (200, None),
            handler,
        }
    }

    fn idempotent(self) -> Self {
        Self {
            idempotent: true,
            ..self
        }
    }

    fn query<T: JsonSchema>(self) -> Self {
        Self {
            query: Some(openapi::schema::<T>),
            ..self
        }
    }

    fn json<T: JsonSchema>(self) -> Self {
        Self {
            body: Some(("application/json", openapi::schema::<T>)),
            ..self
        }
    }

    fn or_yaml(self) -> Self {
        Self { yaml: true, ..self }
    }

    fn json_patch(self) -> Self {
        Self {
            body: Some(("application/json-patch+json", openapi::json_patch)),
            ..self
        }
    }

    fn answers<T: JsonSchema>(self, status: u16) -> Self {
        Self {
            answer: (status, Some(openapi::schema::<T>)),
            ..self
        }
    }

    fn answers_nothing(self, status: u16) -> Self {
        Self {
            answer: (status, None),
            ..self
        }
    }
}

/// Every route of the API.
pub fn routes() -> Vec<Route> {
    use Access::{Administer, Operate, Public, PushStatus, Read};
    use Method as M;
    type Instance = draas_core::instance::Instance;
    type Config = draas_core::config::DrasiServerConfig;
    type ServerConfig = draas_core::instance::ServerConfiguration;
    type Lease = draas_core::lease::Lease;
    type Any = serde_json::Value;
    const INSTANCES: &str = "/api/server/instances";
    const INSTANCE: &str = "/api/server/instances/{id}";
    vec![
        Route::new(
            M::POST,
            INSTANCES,
            Operate,
            "Create an instance",
            post(create),
        )
        .json::<CreateInstance>()
        .or_yaml()
        .answers::<Created>(201)
        .idempotent(),
        Route::new(M::GET, INSTANCES, Read, "List instances", get(list))
            .query::<ListQuery>()
            .answers::<crate::service::InstanceList>(200),
        Route::new(
            M::GET,
            INSTANCE,
            Read,
            "Get an instance (optionally once it is in a state)",
            get(get_instance),
        )
        .query::<WaitQuery>()
        .answers::<Instance>(200),
        Route::new(
            M::DELETE,
            INSTANCE,
            Operate,
            "Delete an instance and its server (202 with Draas-Pending when no live worker can reach it now: the delete finishes when one returns)",
            delete_route(delete),
        )
        .query::<DeleteQuery>()
        .answers_nothing(204)
        .idempotent(),
        Route::new(
            M::POST,
            "/api/server/instances/{id}/start",
            Operate,
            "Start the server",
            post(start),
        )
        .query::<WaitQuery>()
        .answers::<Instance>(200)
        .idempotent(),
        Route::new(
            M::POST,
            "/api/server/instances/{id}/stop",
            Operate,
            "Stop the server (202 with Draas-Pending when no live worker can reach it now: it is stopped when one returns)",
            post(stop),
        )
        .query::<WaitQuery>()
        .answers::<Instance>(200)
        .idempotent(),
        Route::new(
            M::POST,
            "/api/server/instances/{id}/restart",
            Operate,
            "Restart the server",
            post(restart),
        )
        .query::<WaitQuery>()
        .answers::<Instance>(200)
        .idempotent(),
        Route::new(
            M::POST,
            "/api/server/instances/{id}/reconcile",
            Operate,
            "A reconciler's step (Draas-Fencing-Token header)",
            post(reconcile),
        )
        .json::<ReconcileStep>()
        .answers::<Instance>(200),
        Route::new(
            M::GET,
            "/api/server/instances/{id}/runtime-status",
            Read,
            "Status plus the worker's live view",
            get(runtime_status),
        )
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/api/server/instances/{id}/server-configuration",
            Read,
            "How the server is run (secrets masked)",
            get(get_server_configuration),
        )
        .answers::<ServerConfig>(200),
        Route::new(
            M::PATCH,
            "/api/server/instances/{id}/server-configuration",
            Operate,
            "Change how the server is run (JSON Patch, If-Match)",
            patch(patch_server_configuration),
        )
        .json_patch()
        .answers::<ServerConfig>(200),
        Route::new(
            M::GET,
            "/api/server/instances/{id}/logs",
            Read,
            "The server's last output lines",
            get(logs),
        )
        .query::<LogsQuery>()
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/api/reconciler/lease",
            Read,
            "The reconciler lease",
            get(get_lease),
        )
        .answers::<Lease>(200),
        Route::new(
            M::POST,
            "/api/reconciler/lease",
            Operate,
            "Claim or renew the reconciler lease",
            post(claim_lease),
        )
        .json::<LeaseRequest>()
        .answers::<Lease>(200),
        Route::new(
            M::DELETE,
            "/api/reconciler/lease",
            Operate,
            "Give the reconciler lease up",
            delete_route(release_lease),
        )
        .query::<ReleaseQuery>()
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/api/server/platforms",
            Read,
            "Platforms and their live workers",
            get(platforms),
        )
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/api/server/dead-letters",
            Administer,
            "Commands the bus gave up on",
            get(dead_letters),
        )
        .query::<DeadLetterQuery>()
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/api/audit",
            Administer,
            "The audit log of mutations",
            get(audit::entries),
        )
        .query::<audit::AuditQuery>()
        .answers::<audit::AuditPage>(200),
        Route::new(
            M::GET,
            "/api/server/instances/{id}/queries/{query}/results",
            Read,
            "The current result rows of one of the server's queries",
            get(query_results),
        )
        .answers::<QueryResults>(200),
        Route::new(
            M::GET,
            "/api/configuration/instances/{id}",
            Read,
            "The drasi-server configuration (ETag; YAML with Accept: application/yaml)",
            get(get_configuration),
        )
        .or_yaml()
        .answers::<Config>(200),
        Route::new(
            M::PUT,
            "/api/configuration/instances/{id}",
            Operate,
            "Replace the drasi-server configuration (JSON or YAML, If-Match; problems name their YAML lines)",
            axum::routing::put(put_configuration),
        )
        .json::<Config>()
        .or_yaml()
        .answers::<Config>(200),
        Route::new(
            M::PATCH,
            "/api/configuration/instances/{id}",
            Operate,
            "Change the drasi-server configuration (JSON Patch, If-Match)",
            patch(patch_configuration),
        )
        .json_patch()
        .answers::<Config>(200),
        Route::new(
            M::POST,
            "/api/status/updates",
            PushStatus,
            "Push a status from an external daemon",
            post(status_update),
        )
        .json::<ExternalStatusUpdate>()
        .answers::<draas_core::messages::StatusChange>(202),
        Route::new(
            M::GET,
            "/api/status/recent-changes",
            Read,
            "The status buffer after a cursor",
            get(recent_changes),
        )
        .query::<ChangesQuery>()
        .answers::<crate::service::RecentChanges>(200),
        Route::new(
            M::GET,
            "/api/status/{id}/status",
            Read,
            "An instance's last known status",
            get(instance_status),
        )
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/api/events",
            Read,
            "Server-sent events (text/event-stream; Last-Event-ID resumes)",
            get(events),
        ),
        Route::new(
            M::GET,
            "/api/events/history",
            Read,
            "Kept events after a cursor",
            get(event_history),
        )
        .query::<HistoryQuery>()
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/metrics",
            Read,
            "Metrics in the Prometheus text format (draas_*)",
            get(metrics),
        ),
        Route::new(M::GET, "/healthz", Public, "Liveness", get(healthz)).answers::<Any>(200),
        Route::new(
            M::GET,
            "/readyz",
            Public,
            "Readiness: the store and the bus answer",
            get(readyz),
        )
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/openapi.json",
            Public,
            "This document",
            get(openapi_document),
        )
        .answers::<Any>(200),
        Route::new(
            M::GET,
            "/scalar/v1",
            Public,
            "The API reference (Scalar UI)",
            get(scalar_page),
        ),
    ]
}

/// The answer of a create.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Created {
    instance: draas_core::instance::Instance,
    server_configuration: draas_core::instance::ServerConfiguration,
}

/// The answer of a query-results read.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct QueryResults {
    /// The query's id.
    query: String,
    /// Its current result rows, as the server returns them.
    rows: Vec<serde_json::Value>,
}

/// Times every request for `/metrics`, by route template (never the raw
/// path: ids would make a series per instance).
async fn track(
    State(cp): Cp,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // Methods by name only when HTTP defines them: a label taken from the
    // request as it came would be a new series per invented method.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    cp.metrics().request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn metrics(State(cp): Cp) -> ApiResult<Response> {
    let text = cp.metrics().render(&cp).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi_document() -> Response {
    Json(openapi::document()).into_response()
}

async fn scalar_page() -> Response {
    axum::response::Html(openapi::scalar_page()).into_response()
}

/// Builds the API router: every route of [`routes`] behind the auth check
/// of its access.
pub fn router(control_plane: Arc<ControlPlane>, auth: Arc<Auth>) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<Arc<ControlPlane>>> = BTreeMap::new();
    for route in routes() {
        let (time_limit, body_limit) = (route.time_limit(), route.body_limit());
        let Route {
            path,
            access,
            idempotent,
            handler,
            ..
        } = route;
        let handler = handler.layer(DefaultBodyLimit::max(body_limit));
        let handler = match time_limit {
            Some(limit) => handler.layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                    match tokio::time::timeout(limit, next.run(request)).await {
                        Ok(response) => response,
                        Err(_) => ApiError::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "REQUEST_TIMEOUT",
                            format!("the request took longer than this route allows ({limit:?})"),
                        )
                        .into_response(),
                    }
                },
            )),
            None => handler,
        };
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
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            control_plane.clone(),
            audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            control_plane.clone(),
            track,
        ))
        // Request logging inside the trace, so its lines carry trace_id.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(crate::trace::propagate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(control_plane)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NO_SUCH_ROUTE", "no such route")
}

// === instances ===

async fn create(State(cp): Cp, body: ApiBody<CreateInstance>) -> ApiResult<Response> {
    let ApiBody { value, source } = body;
    let created = cp.create(value).await.map_err(|e| source.locate(e))?;
    let instance = redact::instance(created.instance);
    let location = format!("/api/server/instances/{}", instance.id);
    let body = json!({
        "instance": instance,
        "serverConfiguration": instance.server_configuration,
        "warnings": warnings_json(&created.warnings),
    });
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
    q.check()?;
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
#[derive(schemars::JsonSchema)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Response> {
    Ok(match cp.delete(&id, q.force).await? {
        Deletion::Done => StatusCode::NO_CONTENT.into_response(),
        Deletion::Pending(why) => {
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Some(value) = pending_header(&why) {
                response.headers_mut().insert(PENDING_HEADER, value);
            }
            response
        }
    })
}

async fn start(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let started = async { cp.start(&id).await.map(Mutated::done) };
    let done = wait::mutation(&cp, &id, q, "start", started).await?;
    Ok(mutated_response(done))
}

async fn stop(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let stopped = async {
        Ok(match cp.stop(&id).await? {
            Stopping::Done(instance) => Mutated::done(instance),
            Stopping::Pending { instance, why } => Mutated {
                instance,
                pending: Some(why),
            },
        })
    };
    let done = wait::mutation(&cp, &id, q, "stop", stopped).await?;
    Ok(mutated_response(done))
}

async fn restart(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let restarted = async { cp.restart(&id).await.map(Mutated::done) };
    let done = wait::mutation(&cp, &id, q, "restart", restarted).await?;
    Ok(mutated_response(done))
}

/// The header that says why an accepted command is pending.
pub const PENDING_HEADER: &str = "draas-pending";

/// `200` with the instance; `202` with the instance and `Draas-Pending`
/// (why) when the command is accepted but carried out later.
fn mutated_response(done: Mutated) -> Response {
    let body = Json(redact::instance(done.instance));
    match done.pending {
        None => body.into_response(),
        Some(why) => {
            let mut response = (StatusCode::ACCEPTED, body).into_response();
            if let Some(value) = pending_header(&why) {
                response.headers_mut().insert(PENDING_HEADER, value);
            }
            response
        }
    }
}

/// `why` as a header value: plain text of our own, where a line break
/// (which a header cannot hold) becomes a space.
fn pending_header(why: &str) -> Option<HeaderValue> {
    let text: String = why
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    HeaderValue::from_str(&text).ok()
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
#[derive(schemars::JsonSchema)]
struct LeaseRequest {
    /// Who asks (a reconciler's id).
    holder: String,
    /// For how long.
    ttl_seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(schemars::JsonSchema)]
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
#[derive(schemars::JsonSchema)]
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
#[derive(schemars::JsonSchema)]
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

async fn get_configuration(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (config, generation) = cp.configuration(&id).await?;
    if extract::names_yaml(headers.get(header::ACCEPT)) {
        let text = draas_core::config::render_yaml_value(&config)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok((
            [
                (header::ETAG, etag(generation)),
                (
                    header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/yaml"),
                ),
            ],
            text,
        )
            .into_response());
    }
    Ok(([(header::ETAG, etag(generation))], Json(config)).into_response())
}

/// Replaces the configuration: the same checks and the same new generation
/// as a JSON Patch that replaces the whole document (`host` and `port`, when
/// left out, stay as they are).
async fn put_configuration(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    headers: HeaderMap,
    body: ApiBody<serde_json::Value>,
) -> ApiResult<Response> {
    let expected = if_match(&headers)?;
    let ApiBody { mut value, source } = body;
    // The API's address is the platform's business once chosen: a document
    // that leaves it out keeps the current one.
    if let Some(document) = value.as_object_mut() {
        if !document.contains_key("host") || !document.contains_key("port") {
            let (current, _) = cp.configuration(&id).await?;
            if let Some(host) = &current.host {
                document.entry("host").or_insert_with(|| json!(host));
            }
            if let Some(port) = &current.port {
                document.entry("port").or_insert_with(|| json!(port));
            }
        }
    }
    let patch = serde_json::to_vec(&json!([{ "op": "replace", "path": "", "value": value }]))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let changed = cp
        .patch_configuration(&id, &patch, expected)
        .await
        .map_err(|e| source.locate(e))?;
    Ok(changed_response(
        changed.generation,
        &changed.warnings,
        Json(changed.document),
    ))
}

async fn query_results(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    QueryPath(query): QueryPath,
) -> ApiResult<Response> {
    let rows = cp.query_results(&id, &query).await?;
    Ok(Json(QueryResults { query, rows }).into_response())
}

async fn patch_configuration(
    State(cp): Cp,
    InstancePath(id): InstancePath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    require_json_patch(&headers)?;
    let expected = if_match(&headers)?;
    let changed = cp.patch_configuration(&id, &body, expected).await?;
    Ok(changed_response(
        changed.generation,
        &changed.warnings,
        Json(changed.document),
    ))
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
    let changed = cp.patch_server_configuration(&id, &body, expected).await?;
    Ok(changed_response(
        changed.generation,
        &changed.warnings,
        Json(redact::server_configuration(changed.document)),
    ))
}

/// The header that carries a change's warnings: a JSON array of `{path,
/// message}`, ASCII only.
pub const WARNINGS_HEADER: &str = "draas-warnings";

/// Warnings as the answer shows them.
fn warnings_json(warnings: &[draas_core::config::ConfigIssue]) -> serde_json::Value {
    warnings
        .iter()
        .map(|w| json!({"path": w.path, "message": w.message}))
        .collect()
}

/// The answer to a change of a document: the document, its ETag, and its
/// warnings (in [`WARNINGS_HEADER`]: the body is the document itself).
fn changed_response(
    generation: u64,
    warnings: &[draas_core::config::ConfigIssue],
    body: impl IntoResponse,
) -> Response {
    let mut response = ([(header::ETAG, etag(generation))], body).into_response();
    if !warnings.is_empty() {
        let text: String = warnings_json(warnings)
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c.to_string()
                } else {
                    // JSON's own escape: a header is visible ASCII.
                    c.encode_utf16(&mut [0; 2])
                        .iter()
                        .map(|u| format!("\\u{u:04x}"))
                        .collect()
                }
            })
            .collect();
        if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
            response.headers_mut().insert(WARNINGS_HEADER, value);
        }
    }
    response
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
#[derive(schemars::JsonSchema)]
struct ChangesQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

async fn recent_changes(State(cp): Cp, ApiQuery(q): ApiQuery<ChangesQuery>) -> ApiResult<Response> {
    Ok(Json(cp.recent_changes(q.since, q.limit.unwrap_or(1000)).await?).into_response())
}

/// Server-sent events of every bus event: `event: <type>`, `id: <cursor>`,
/// `data: <json>`. The `id` is the event's cursor in the kept history, so a
/// client that reconnects with `Last-Event-ID` first gets every kept event
/// it missed, then the live ones, none twice.
async fn events(
    State(cp): Cp,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let last_seen = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_string())
                .map_err(|_| ApiError::bad_request("INVALID_CURSOR", "Last-Event-ID is not ASCII"))
        })
        .transpose()?
        .filter(|s| !s.is_empty());
    let events = cp.events_after(last_seen.as_deref()).await?;
    let stream = events.map(|published| {
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
#[derive(schemars::JsonSchema)]
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
