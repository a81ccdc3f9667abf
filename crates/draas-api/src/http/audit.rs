//! The audit middleware: every request that is not a read (GET, HEAD,
//! OPTIONS) is recorded once it is answered, with the caller the auth
//! layer named on the response; and `GET /api/audit`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::extract::ApiQuery;
use crate::error::{ApiError, ApiResult};
use crate::service::audit::{AuditEntry, AuditRecord, Since};
use crate::service::ControlPlane;

/// Longest path recorded (a request may send anything).
const MAX_PATH: usize = 512;

/// Records the request once answered (before the answer leaves, so an
/// entry exists for every answer a client saw).
pub async fn record(State(cp): State<Arc<ControlPlane>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let path: String = request.uri().path().chars().take(MAX_PATH).collect();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let caller = response.extensions().get::<Caller>().cloned();
    let entry = AuditEntry {
        at: Utc::now(),
        key: match &caller {
            Some(c) => c.name.clone(),
            None if status == 401 => "unauthenticated".into(),
            None => "anonymous".into(),
        },
        role: caller.map(|c| c.role),
        method: method.to_string(),
        path,
        status,
        // A repeat answered from its Idempotency-Key did nothing again.
        outcome: if response.headers().contains_key("idempotent-replayed") {
            "replayed".into()
        } else {
            AuditEntry::outcome_of(status).into()
        },
    };
    if let Err(e) = cp.audit(&entry).await {
        tracing::warn!(method = %entry.method, path = %entry.path, "cannot record the audit entry: {}", e.detail);
    }
    response
}

/// `GET /api/audit` query.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// After this cursor, or after this RFC 3339 time.
    since: Option<String>,
    /// At most this many (1-1000, default 100).
    limit: Option<usize>,
}

/// A page of the audit log.
#[derive(Serialize, schemars::JsonSchema)]
pub(super) struct AuditPage {
    /// Oldest first.
    entries: Vec<AuditRecord>,
    /// Pass as `since` for what comes next.
    next: u64,
}

/// `GET /api/audit?since=<cursor or RFC 3339 time>&limit=<1..1000>`.
pub(super) async fn entries(
    State(cp): State<Arc<ControlPlane>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    let since = match q.since.as_deref().map(str::trim) {
        None | Some("") => Since::Cursor(0),
        Some(text) => match (text.parse::<u64>(), DateTime::parse_from_rfc3339(text)) {
            (Ok(cursor), _) => Since::Cursor(cursor),
            (_, Ok(time)) => Since::Time(time.with_timezone(&Utc)),
            _ => {
                return Err(ApiError::bad_request(
                    "INVALID_QUERY",
                    format!("since must be a cursor (a number) or an RFC 3339 time, not {text:?}"),
                ))
            }
        },
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "INVALID_QUERY",
            "limit must be between 1 and 1000",
        ));
    }
    let (entries, next) = cp.audit_entries(since, limit).await?;
    Ok(Json(AuditPage { entries, next }).into_response())
}
