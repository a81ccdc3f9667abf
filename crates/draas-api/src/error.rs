//! The one error type of the API and its `application/problem+json` form.
//!
//! Every failure leaves the API as `{type, title, status, detail, code}`
//! (RFC 9457) plus, for validation failures, `errors: [{path, message}]`
//! naming each offending value by JSON Pointer. `code` is a stable
//! SCREAMING_SNAKE constant clients can match on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use draas_core::messages::ErrorCode;
use draas_core::ports::{BusError, StoreError};
use serde::Serialize;

/// One offending value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON Pointer into the request (or the patched document).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
    /// Its line (1-based) in the request's YAML body, when the body was
    /// YAML and the line could be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// An API failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for humans.
    pub detail: String,
    /// Offending values, for validation failures.
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// A failure with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 404.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("{what} '{id}' does not exist"),
        )
    }

    /// 409: conflicts with the current state.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 422 with the offending values.
    pub fn invalid(code: &'static str, detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self {
            errors,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
        }
    }

    /// 503: no live worker serves the platform.
    pub fn no_worker(platform: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_LIVE_WORKER",
            format!("no live worker serves the {platform} platform; start one (draas worker --platform ...) and retry"),
        )
    }

    /// 500.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", detail)
    }

    /// The error a worker's reply code maps to.
    pub fn from_worker(code: ErrorCode, message: String) -> Self {
        let (status, code) = match code {
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ErrorCode::InvalidState => (StatusCode::CONFLICT, "INVALID_STATE"),
            ErrorCode::PortInUse => (StatusCode::CONFLICT, "PORT_IN_USE"),
            ErrorCode::ConfigRejected => (StatusCode::UNPROCESSABLE_ENTITY, "CONFIG_REJECTED"),
            ErrorCode::ExecutableNotAllowed => {
                (StatusCode::UNPROCESSABLE_ENTITY, "EXECUTABLE_NOT_ALLOWED")
            }
            ErrorCode::ImageMissing => (StatusCode::UNPROCESSABLE_ENTITY, "IMAGE_MISSING"),
            ErrorCode::StartTimeout => (StatusCode::GATEWAY_TIMEOUT, "START_TIMEOUT"),
            ErrorCode::DeadlineExceeded => {
                (StatusCode::GATEWAY_TIMEOUT, "WORKER_DEADLINE_EXCEEDED")
            }
            ErrorCode::Unsupported => (StatusCode::NOT_IMPLEMENTED, "UNSUPPORTED"),
            ErrorCode::StaleFence => (StatusCode::CONFLICT, "STALE_FENCE"),
            ErrorCode::Superseded => (StatusCode::CONFLICT, "SUPERSEDED"),
            ErrorCode::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
            ErrorCode::PlatformError | ErrorCode::Other => {
                (StatusCode::BAD_GATEWAY, "PLATFORM_ERROR")
            }
        };
        Self::new(status, code, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_UNAVAILABLE",
                e.to_string(),
            ),
            StoreError::Conflict { .. } => {
                Self::conflict("CONCURRENT_UPDATE", format!("{e}; retry"))
            }
            _ => Self::internal(e.to_string()),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::Timeout(after) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "WORKER_TIMEOUT",
                format!("the worker did not answer within {after:?}"),
            ),
            BusError::NoConsumer(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NO_LIVE_WORKER",
                e.to_string(),
            ),
            BusError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "BUS_UNAVAILABLE",
                e.to_string(),
            ),
            BusError::InvalidCursor(_) => Self::bad_request("INVALID_CURSOR", e.to_string()),
            BusError::Dropped | BusError::Backend(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "BUS_ERROR", e.to_string())
            }
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, "{}", self.detail);
        }
        let problem = Problem {
            kind: format!(
                "https://draas.dev/problems/{}",
                self.code.to_lowercase().replace('_', "-")
            ),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            errors: &self.errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// Every problem `code` the API answers with, and what it means (the
/// OpenAPI document lists them; a test keeps this list and the code in
/// step).
pub const PROBLEM_CODES: &[(&str, &str)] = &[
    ("MALFORMED_JSON", "400: the body is not JSON"),
    (
        "MALFORMED_YAML",
        "400: the body is not YAML of the expected shape (errors[0].line says where)",
    ),
    (
        "INVALID_QUERY_ID",
        "400: the path's query id has separators or control characters",
    ),
    (
        "NO_SUCH_QUERY",
        "404: the instance's configuration has no such query",
    ),
    (
        "INVALID_BODY",
        "400: the body does not have the expected shape",
    ),
    ("UNREADABLE_BODY", "400: the body could not be read"),
    ("INVALID_QUERY", "400: a query parameter is wrong"),
    (
        "INVALID_INSTANCE_ID",
        "400: the path names no possible instance",
    ),
    ("INVALID_IF_MATCH", "400: If-Match is not an ETag"),
    ("INVALID_PATCH", "400: the JSON Patch is malformed"),
    (
        "INVALID_CURSOR",
        "400: the cursor is not one this server gave",
    ),
    ("INVALID_FENCE", "400: Draas-Fencing-Token is not a number"),
    (
        "INVALID_LEASE",
        "400: the lease request is wrong (holder, ttl)",
    ),
    (
        "INVALID_IDEMPOTENCY_KEY",
        "400: Idempotency-Key is not 1-255 visible characters",
    ),
    ("INVALID_STATUS_UPDATE", "400: the status update is wrong"),
    (
        "UNAUTHENTICATED",
        "401: no key, or an unknown or revoked one",
    ),
    ("FORBIDDEN", "403: the key's role may not do this"),
    ("NOT_FOUND", "404: no such instance (or lease)"),
    ("NO_SUCH_ROUTE", "404: no such route"),
    (
        "WAIT_TIMEOUT",
        "408: the instance did not reach the state in time (GET ?wait=)",
    ),
    ("NAME_TAKEN", "409: another instance has this name"),
    (
        "INVALID_STATE",
        "409: not possible in the instance's current state",
    ),
    ("PORT_IN_USE", "409: the server's port is taken"),
    ("PORT_CONFLICT", "409: another instance has this port"),
    (
        "CONCURRENT_UPDATE",
        "409: the record changed meanwhile; retry",
    ),
    (
        "OUT_OF_ORDER",
        "409: the status update is older than what is recorded",
    ),
    (
        "STALE_PLAN",
        "409: the instance changed since the reconciler planned the step",
    ),
    (
        "STALE_FENCE",
        "409: the fencing token is not the live lease's",
    ),
    (
        "SUPERSEDED",
        "409: the start is no longer what the instance asks for (stopped, deleted or changed since)",
    ),
    ("LEASE_HELD", "409: another reconciler holds the lease"),
    (
        "IDEMPOTENCY_IN_PROGRESS",
        "409: a request with this Idempotency-Key still runs",
    ),
    (
        "STALE_GENERATION",
        "412: If-Match names an older generation",
    ),
    (
        "PATCH_TEST_FAILED",
        "409: a JSON Patch test operation failed",
    ),
    ("BODY_TOO_LARGE", "413: the body is too large"),
    (
        "UNSUPPORTED_MEDIA_TYPE",
        "415: the body's media type is wrong",
    ),
    (
        "PATCH_NOT_APPLICABLE",
        "422: the JSON Patch cannot be applied to the document",
    ),
    ("INVALID_INSTANCE", "422: the instance is invalid"),
    (
        "INVALID_CONFIGURATION",
        "422: the configuration is invalid (errors name each value)",
    ),
    (
        "INVALID_SERVER_CONFIGURATION",
        "422: the server configuration is invalid",
    ),
    (
        "SECRET_NOT_READABLE",
        "422: a patch would read a secret out",
    ),
    (
        "CONFIG_REJECTED",
        "422: the server rejected its configuration",
    ),
    (
        "EXECUTABLE_NOT_ALLOWED",
        "422: the executable is not allowed on the worker",
    ),
    ("IMAGE_MISSING", "422: the image does not exist"),
    (
        "IDEMPOTENCY_KEY_REUSED",
        "422: the Idempotency-Key was used for another request",
    ),
    (
        "RATE_LIMITED",
        "429: too many requests from this key (Retry-After)",
    ),
    ("INTERNAL_ERROR", "500: a bug"),
    ("UNSUPPORTED", "501: the worker cannot do this"),
    ("PLATFORM_ERROR", "502: the platform failed"),
    ("BUS_ERROR", "502: the message bus failed"),
    ("NO_LIVE_WORKER", "503: no live worker serves the platform"),
    ("NO_FREE_PORT", "503: no port of the range is free"),
    (
        "STORE_UNAVAILABLE",
        "503: the state store cannot be reached",
    ),
    ("BUS_UNAVAILABLE", "503: the message bus cannot be reached"),
    ("WORKER_TIMEOUT", "504: the worker did not answer in time"),
    (
        "WORKER_DEADLINE_EXCEEDED",
        "504: the command's deadline passed",
    ),
    (
        "START_TIMEOUT",
        "504: the server did not become ready in time",
    ),
    (
        "STATE_NOT_REACHED",
        "504: the instance did not reach the state in time (?wait=)",
    ),
    (
        "STATE_NOT_EXPECTED",
        "409: the command leads the instance away from the state waited for (?wait=Running on a stop)",
    ),
    (
        "REQUEST_TIMEOUT",
        "504: the request took longer than its route allows",
    ),
];

#[cfg(test)]
mod tests {
    use super::PROBLEM_CODES;

    fn sources(dir: &std::path::Path, into: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                into.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }

    /// Every SCREAMING_SNAKE string the API's code uses as a problem code
    /// is listed, and everything listed is used.
    #[test]
    fn the_list_of_problem_codes_matches_the_code() {
        let mut texts = Vec::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut texts,
        );
        let listed: std::collections::BTreeSet<&str> =
            PROBLEM_CODES.iter().map(|(code, _)| *code).collect();
        assert_eq!(listed.len(), PROBLEM_CODES.len(), "listed twice");
        let mut used = std::collections::BTreeSet::new();
        for text in &texts {
            // The list itself does not count as a use.
            let text = text.split("pub const PROBLEM_CODES").next().unwrap();
            for piece in text.split('"').skip(1).step_by(2) {
                let code_like = piece.len() > 3
                    && piece.contains('_')
                    && piece
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit());
                if code_like {
                    used.insert(piece.to_string());
                }
            }
        }
        // Environment variables are not codes.
        let ignored = |c: &str| c.starts_with("CARGO_") || c.starts_with("DRAAS_");
        for code in &used {
            assert!(
                listed.contains(code.as_str()) || ignored(code),
                "{code} is answered but not in PROBLEM_CODES"
            );
        }
        for code in &listed {
            let single_word = !code.contains('_');
            assert!(
                single_word || used.contains(*code),
                "{code} is listed but never answered"
            );
        }
    }
}
