//! The trace context of the request being answered: every request gets a
//! W3C `traceparent` (a child of the caller's, or a new trace), its log
//! lines carry the trace id, the commands it sends carry the header to the
//! worker, and the answer carries it back.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use draas_core::trace::TraceParent;
use tracing::Instrument;

tokio::task_local! {
    /// The `traceparent` (our span) of the request this task answers.
    static CURRENT: String;
}

/// The `traceparent` of the request being answered, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The middleware (outermost, so every line of a request has the id).
pub async fn propagate(request: Request, next: Next) -> Response {
    let ours = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map_or_else(TraceParent::new_root, |caller| caller.child());
    let span = tracing::info_span!("trace", trace_id = ours.trace_id());
    let header = ours.to_string();
    let mut response = CURRENT
        .scope(header.clone(), next.run(request))
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&header) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}
