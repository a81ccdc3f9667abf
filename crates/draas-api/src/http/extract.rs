//! Request extractors that turn every malformed input into a problem+json
//! 4xx: JSON bodies, instance ids in paths, query strings, `If-Match`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use std::sync::Arc;

use draas_core::instance::{validate_name, InstanceId};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::service::ControlPlane;

/// A JSON body; rejections become 400/415 problems naming what was wrong.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the body as application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("MALFORMED_JSON", e.body_text()),
        JsonRejection::JsonDataError(e) => ApiError::bad_request("INVALID_BODY", e.body_text()),
        JsonRejection::BytesRejection(e) => {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "BODY_TOO_LARGE", e.body_text())
            } else {
                ApiError::bad_request("UNREADABLE_BODY", e.body_text())
            }
        }
        other => ApiError::bad_request("INVALID_BODY", other.body_text()),
    }
}

/// A query string; rejections become 400 problems.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request("INVALID_QUERY", e.body_text()))
    }
}

/// The `{id}` of an instance route: an instance id, or an instance's name
/// as the original design addresses instances. Malformed values (path-like,
/// too long) are 400 before any lookup; unknown ones 404.
pub struct InstancePath(pub InstanceId);

impl FromRequestParts<Arc<ControlPlane>> for InstancePath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ControlPlane>,
    ) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("INVALID_INSTANCE_ID", e.body_text()))?;
        let as_id = raw.parse::<InstanceId>();
        if as_id.is_err() && validate_name(&raw).is_err() {
            return Err(ApiError::bad_request(
                "INVALID_INSTANCE_ID",
                format!(
                    "'{}' is neither an instance id nor an instance name (1-63 characters of a-z, 0-9 and '-')",
                    raw.escape_debug()
                ),
            ));
        }
        state.resolve(&raw).await.map(Self)
    }
}

/// The generation named by `If-Match` (`"<generation>"`), if any; `*`
/// means any.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("INVALID_IF_MATCH", "If-Match is not ASCII"))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    let unquoted = text.trim_start_matches("W/").trim_matches('"');
    unquoted.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(
            "INVALID_IF_MATCH",
            format!("If-Match must be an ETag this API sent (like \"3\"), not {text}"),
        )
    })
}

/// The ETag of a document at `generation`.
pub fn etag(generation: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{generation}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Checks that a PATCH body is declared as JSON Patch (or plain JSON).
pub fn require_json_patch(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence == "application/json-patch+json" || essence == "application/json" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the patch as application/json-patch+json (RFC 6902)",
        ))
    }
}
