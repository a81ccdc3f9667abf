//! Request extractors that turn every malformed input into a problem+json
//! 4xx: JSON bodies, instance ids in paths, query strings, `If-Match`.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use std::sync::Arc;

use draas_core::instance::{validate_name, InstanceId};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};
use crate::service::ControlPlane;

/// A JSON body; rejections become 400/415 problems naming what was wrong.
/// Read strictly (`draas_core::strict`): a field the request type does not
/// know is refused, though the same types tolerate it in stored records
/// and bus messages.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(json_rejection)?;
        draas_core::strict::from_value(value)
            .map(Self)
            .map_err(invalid_body)
    }
}

/// A body of the wrong shape: 400 naming where.
fn invalid_body(e: draas_core::strict::StrictError) -> ApiError {
    ApiError {
        errors: vec![FieldError {
            path: e.path.clone(),
            message: e.message.clone(),
            line: None,
        }],
        ..ApiError::bad_request("INVALID_BODY", format!("{}: {}", e.path, e.message))
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
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        other => ApiError::bad_request("INVALID_BODY", other.body_text()),
    }
}

/// Media types read as YAML.
const YAML_MEDIA: [&str; 3] = ["application/yaml", "application/x-yaml", "text/yaml"];

/// Whether a `Content-Type` or `Accept` value names YAML.
pub fn names_yaml(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',').any(|part| {
                let media = part.split(';').next().unwrap_or_default().trim();
                YAML_MEDIA.iter().any(|m| media.eq_ignore_ascii_case(m))
            })
        })
        .unwrap_or(false)
}

/// A body in JSON (`application/json`) or YAML (`application/yaml`): the
/// same document either way. For a YAML body the problems of the request
/// can name their lines ([`ApiBody::locate`]), so an editor shows them where
/// they are.
pub struct ApiBody<T> {
    /// The document.
    pub value: T,
    /// Where it came from.
    pub source: BodySource,
}

/// The text of a YAML body (none for JSON), to find lines in.
pub struct BodySource(Option<String>);

impl BodySource {
    /// `error` with the line of each offending value in the YAML body, when
    /// the body was YAML.
    pub fn locate(&self, mut error: ApiError) -> ApiError {
        if let Some(text) = &self.0 {
            for field in &mut error.errors {
                if field.line.is_none() {
                    field.line = draas_core::config::line_of(text, &field.path).map(|l| l + 1);
                }
            }
        }
        error
    }
}

impl<S, T> FromRequest<S> for ApiBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !names_yaml(req.headers().get(header::CONTENT_TYPE)) {
            let ApiJson(value) = ApiJson::<T>::from_request(req, state).await?;
            return Ok(Self {
                value,
                source: BodySource(None),
            });
        }
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request("MALFORMED_YAML", "the YAML body is not UTF-8"))?;
        match draas_core::config::parse_yaml_strict::<T>(&text) {
            Ok(value) => Ok(Self {
                value,
                source: BodySource(Some(text)),
            }),
            Err(e) => Err(ApiError {
                errors: vec![FieldError {
                    path: String::new(),
                    message: e.message.clone(),
                    line: e.line.and_then(|l| usize::try_from(l).ok()),
                }],
                ..ApiError::bad_request("MALFORMED_YAML", format!("the YAML body: {}", e.message))
            }),
        }
    }
}

/// A body that could not be read: too large (413), or broken off (400).
fn bytes_rejection(e: BytesRejection) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "BODY_TOO_LARGE", e.body_text())
    } else {
        ApiError::bad_request("UNREADABLE_BODY", e.body_text())
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
        let raw = path_parameter(parts, state, "id", "INVALID_INSTANCE_ID").await?;
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

/// The path parameter `name` of the route.
async fn path_parameter<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    name: &str,
    code: &'static str,
) -> Result<String, ApiError> {
    let Path(parameters) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request(code, e.body_text()))?;
    parameters
        .into_iter()
        .find_map(|(key, value)| (key == name).then_some(value))
        .ok_or_else(|| ApiError::internal(format!("the route has no {{{name}}} parameter")))
}

/// The `{query}` of a route: a query id of the instance's configuration
/// (checked against it by the handler); ids with separators or control
/// characters are 400.
pub struct QueryPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for QueryPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = path_parameter(parts, state, "query", "INVALID_QUERY_ID").await?;
        let bad = raw.is_empty()
            || raw.len() > 256
            || raw
                .chars()
                .any(|c| c.is_control() || matches!(c, '/' | '\\' | '?' | '#' | '%'));
        if bad {
            return Err(ApiError::bad_request(
                "INVALID_QUERY_ID",
                format!("'{}' cannot be a query id", raw.escape_debug()),
            ));
        }
        Ok(Self(raw))
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
