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
