//! `Idempotency-Key` on create and lifecycle calls: a request repeated
//! with the same key (by the same caller) gets the first answer again,
//! marked `Idempotent-Replayed: true`, and nothing is done twice.
//!
//! - The first request reserves the key in the store (compare-and-set, so
//!   two replicas agree); a repeat while it runs gets 409
//!   `IDEMPOTENCY_IN_PROGRESS`.
//! - The answer is kept for 24 hours. A 5xx answer is not kept (the
//!   server, not the request, failed): a retry runs again.
//! - The same key with another request (method, path, query or body)
//!   gets 422 `IDEMPOTENCY_KEY_REUSED`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use draas_core::keys::IDEMPOTENCY_KEYS;
use draas_core::ports::store::{JsonStore, Precondition};
use draas_core::ports::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::service::ControlPlane;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// How long an answer is kept.
const KEEP_HOURS: i64 = 24;
/// How long a reservation without an answer holds: longer than the request
/// may run (see `draas_core::limits`), and a control plane that died
/// mid-request does not block the key for a day.
const PENDING_SECONDS: u64 = draas_core::limits::IDEMPOTENCY_RESERVATION_SECONDS;
/// Largest answer kept.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Expired records are swept every this many reservations.
const SWEEP_EVERY: u64 = 256;

static RESERVATIONS: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Remembered {
    at: DateTime<Utc>,
    /// Hash of method, path, query and body.
    request: String,
    answer: Option<Answer>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: u16,
    content_type: Option<String>,
    location: Option<String>,
    body: String,
}

impl Remembered {
    fn expired(&self, now: DateTime<Utc>) -> bool {
        let keep = match self.answer {
            Some(_) => Duration::hours(KEEP_HOURS),
            None => Duration::seconds(PENDING_SECONDS as i64),
        };
        now - self.at > keep
    }
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// The middleware (inside the auth check, so the caller is known).
pub async fn idempotent(
    State(cp): State<Arc<ControlPlane>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = request.headers().get(HEADER).cloned() else {
        return next.run(request).await;
    };
    match remembered_or_run(&cp, key, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn remembered_or_run(
    cp: &ControlPlane,
    key: HeaderValue,
    request: Request,
    next: Next,
) -> Result<Response, Response> {
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_IDEMPOTENCY_KEY",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
            .into_response()
        })?
        .to_string();
    let caller = request
        .extensions()
        .get::<Caller>()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "anonymous".into());
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
        .into_response()
    })?;
    let record = hex_sha256(&[caller.as_bytes(), key.as_bytes()]);
    let fingerprint = hex_sha256(&[
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        parts.uri.query().unwrap_or("").as_bytes(),
        &body,
    ]);
    let store = cp.store();
    let now = Utc::now();
    let existing = store
        .get_json::<Remembered>(IDEMPOTENCY_KEYS, &record)
        .await
        .map_err(store_error)?;
    let precondition = match existing {
        Some(found) if !found.value.expired(now) => {
            if found.value.request != fingerprint {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this Idempotency-Key was used for another request; use a new key",
                )
                .into_response());
            }
            return match found.value.answer {
                Some(answer) => Ok(replay(answer)),
                None => Err(in_progress()),
            };
        }
        Some(stale) => Precondition::Revision(stale.revision),
        None => Precondition::Absent,
    };
    let pending = Remembered {
        at: now,
        request: fingerprint.clone(),
        answer: None,
    };
    match store
        .put_json(IDEMPOTENCY_KEYS, &record, &pending, precondition)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => return Err(in_progress()),
        Err(e) => return Err(store_error(e)),
    }
    if RESERVATIONS.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
        sweep(cp).await;
    }

    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let status = response.status();
    if status.is_server_error() {
        // Not the request's fault: a retry runs again.
        let _ = store
            .delete(IDEMPOTENCY_KEYS, &record, Precondition::None)
            .await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            let _ = store
                .delete(IDEMPOTENCY_KEYS, &record, Precondition::None)
                .await;
            return Err(ApiError::internal("the answer could not be read").into_response());
        }
    };
    let text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let answer = Answer {
        status: status.as_u16(),
        content_type: text(header::CONTENT_TYPE),
        location: text(header::LOCATION),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let done = Remembered {
        at: Utc::now(),
        request: fingerprint,
        answer: Some(answer),
    };
    if let Err(e) = store
        .put_json(IDEMPOTENCY_KEYS, &record, &done, Precondition::None)
        .await
    {
        tracing::warn!("cannot keep the answer of an idempotent request: {e}");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn replay(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Some(v) = answer
        .content_type
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = answer.location.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn in_progress() -> Response {
    ApiError::conflict(
        "IDEMPOTENCY_IN_PROGRESS",
        "a request with this Idempotency-Key is still running; retry when it has answered",
    )
    .into_response()
}

fn store_error(e: StoreError) -> Response {
    ApiError::from(e).into_response()
}

/// Removes expired records.
async fn sweep(cp: &ControlPlane) {
    let now = Utc::now();
    let Ok(all) = cp.store().list_json::<Remembered>(IDEMPOTENCY_KEYS).await else {
        return;
    };
    for (key, record) in all {
        if record.value.expired(now) {
            let _ = cp
                .store()
                .delete(
                    IDEMPOTENCY_KEYS,
                    &key,
                    Precondition::Revision(record.revision),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(ago: Duration) -> (Remembered, DateTime<Utc>) {
        let now = Utc::now();
        let remembered = Remembered {
            at: now - ago,
            request: String::new(),
            answer: None,
        };
        (remembered, now)
    }

    #[test]
    fn a_reservation_outlives_the_longest_request_it_guards() {
        // A restart at the largest timeouts, then the longest wait: the
        // retry of such a request must still find the key reserved.
        let route = Duration::from_std(draas_core::limits::INSTANCE_ROUTE).unwrap();
        let (still_running, now) = reserved(route);
        assert!(!still_running.expired(now));
        let (ten_minutes, now) = reserved(Duration::minutes(11));
        assert!(!ten_minutes.expired(now));
        let (dead, now) = reserved(Duration::seconds(PENDING_SECONDS as i64 + 1));
        assert!(dead.expired(now));
    }
}
