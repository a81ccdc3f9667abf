//! The one client of the DRaaS REST API and its event stream.
//!
//! Everything that talks to a control plane over HTTP goes through
//! [`Client`]: the CLI (`draas ...`), the reconciler that runs alone
//! (`draas reconcile`) and the Docker status daemon (`draas docker-status`).
//! One place builds the connection (the API key as a bearer header kept out
//! of debug output, the certificates to trust, timeouts), and one place
//! reads answers: a problem answer (`application/problem+json`) becomes a
//! typed [`ClientError::Problem`] whose [`ProblemCode`] callers match on,
//! never a string; a connection failure is [`ClientError::Unreachable`] with
//! its causes spelled out; no `reqwest` type leaves this crate except the
//! certificates a caller hands in.

use std::time::Duration;

use draas_core::instance::Instance;
use draas_core::lease::{Lease, FENCING_TOKEN_HEADER};
pub use draas_core::problem::ProblemCode;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// A certificate to trust for HTTPS (PEM, parsed by the caller).
pub type Certificate = reqwest::Certificate;

/// Parses PEM certificates (one or several) to trust.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Certificate>, ClientError> {
    reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| ClientError::Settings(format!("cannot read the certificates: {e}")))
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The client could not be made (a key a header cannot hold, ...).
    #[error("{0}")]
    Settings(String),
    /// No answer: connection refused, TLS refused, timeout.
    #[error("cannot reach {base}: {message}")]
    Unreachable {
        /// The control plane's address.
        base: String,
        /// What failed, with its causes.
        message: String,
    },
    /// The control plane answered with a problem.
    #[error("{status} {code}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem's `code`.
        code: ProblemCode,
        /// The problem's `detail`.
        detail: String,
        /// The whole problem document (`errors[]` with each offending
        /// value's path, ...).
        body: Value,
    },
    /// An answer this client cannot read.
    #[error("an answer this client cannot read ({what}): {message}")]
    Unreadable {
        /// What was read.
        what: String,
        /// The decoder's message.
        message: String,
    },
}

impl ClientError {
    /// The problem's code, when the control plane answered with one.
    pub fn code(&self) -> Option<&ProblemCode> {
        match self {
            ClientError::Problem { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the control plane answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How to reach a control plane.
#[derive(Clone)]
pub struct ClientOptions {
    /// Its address (`http://127.0.0.1:5000`).
    pub base: String,
    /// An API key, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Certificates to trust for HTTPS, beside none: the system's roots are
    /// not read (see the workspace's reqwest features).
    pub trusted: Vec<Certificate>,
    /// Longest wait for a whole answer (the event stream has none).
    pub request_timeout: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// Options for `base` with the usual timeouts (those of
    /// `draas_core::limits`) and no key.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            token: None,
            trusted: Vec::new(),
            request_timeout: draas_core::limits::CLIENT_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A successful answer, as it came.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, as text.
    pub text: String,
    /// Its `ETag`.
    pub etag: Option<String>,
    /// Why an accepted command is carried out later (`Draas-Pending`).
    pub pending: Option<String>,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A request body.
pub enum Body<'a> {
    /// None.
    Empty,
    /// JSON.
    Json(&'a Value),
    /// Text of a media type (`application/json-patch+json`,
    /// `application/yaml`, ...).
    Text(&'a str, String),
}

/// One server-sent event of `/api/events`.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// Its id (a cursor to resume after), when it has one.
    pub id: Option<String>,
    /// Its `event:` name.
    pub name: String,
    /// Its data (JSON for DRaaS's events).
    pub data: String,
}

/// Instances per page of a full listing.
const PAGE: usize = 1000;

/// A client of one control plane.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// For event streams: no overall timeout (a stream lasts as long as its
    /// connection), the same key.
    streams: reqwest::Client,
}

/// The header name of a pending command's reason (the control plane's
/// `Draas-Pending`).
pub const PENDING_HEADER: &str = "draas-pending";

impl Client {
    /// A client as `options` say.
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        let base = options.base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Settings(format!(
                "the control plane's address must be an http(s) URL, not {base:?}"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &options.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    ClientError::Settings("the API key holds characters a header cannot".into())
                })?;
            // Kept out of debug output.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let build = |timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(options.connect_timeout)
                .default_headers(headers.clone());
            if let Some(timeout) = timeout {
                builder = builder.timeout(timeout);
            }
            for certificate in &options.trusted {
                builder = builder.add_root_certificate(certificate.clone());
            }
            builder.build().map_err(|e| {
                ClientError::Settings(format!("cannot make the HTTP client: {}", chain(&e)))
            })
        };
        Ok(Self {
            http: build(Some(options.request_timeout))?,
            streams: build(None)?,
            base,
        })
    }

    /// The control plane's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            base: self.base.clone(),
            message: chain(e),
        }
    }

    /// `Ok` for a successful answer, else the problem it is.
    async fn succeeded(&self, response: reqwest::Response) -> Result<(), ClientError> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        Err(problem(status, &text))
    }

    /// Sends `method path` with `body` (and `If-Match` when given): the
    /// answer, whatever its status; only no answer is an error.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Body<'_>,
        if_match: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Settings(format!("not an HTTP method: {method:?}")))?;
        let mut request = self.http.request(method, self.url(path));
        match body {
            Body::Empty => {}
            Body::Json(value) => request = request.json(value),
            Body::Text(media, text) => {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, media)
                    .body(text)
            }
        }
        if let Some(tag) = if_match {
            request = request.header(reqwest::header::IF_MATCH, tag);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = response.status().as_u16();
        let etag = header("etag");
        let pending = header(PENDING_HEADER);
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        Ok(Answer {
            status,
            text,
            etag,
            pending,
        })
    }

    /// Sends a request: the answer when it succeeded, else the problem it
    /// is.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Body<'_>,
        if_match: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let answer = self.send(method, path, body, if_match).await?;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(problem(answer.status, &answer.text))
        }
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        decode(path, &self.call("GET", path, Body::Empty, None).await?)
    }

    /// `POST path` with a JSON body, decoded.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_value(body).map_err(|e| ClientError::Settings(e.to_string()))?;
        decode(
            path,
            &self.call("POST", path, Body::Json(&body), None).await?,
        )
    }

    // === typed routes ===

    /// Every instance, page by page.
    pub async fn instances(&self) -> Result<Vec<Instance>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page: Value = self
                .get(&format!(
                    "/api/server/instances?offset={}&limit={PAGE}",
                    all.len()
                ))
                .await?;
            let items: Vec<Instance> = serde_json::from_value(page["items"].clone())
                .map_err(|e| unreadable("an instance list", &e))?;
            let total = page["total"].as_u64().unwrap_or(0) as usize;
            let got = items.len();
            all.extend(items);
            if got == 0 || all.len() >= total {
                return Ok(all);
            }
        }
    }

    /// One instance, by id or name.
    pub async fn instance(&self, id: &str) -> Result<Instance, ClientError> {
        self.get(&format!("/api/server/instances/{id}")).await
    }

    /// Carries out a reconciler step (`POST .../reconcile`), fenced with
    /// the lease's token when given.
    pub async fn reconcile(
        &self,
        id: &str,
        step: &Value,
        fence: Option<u64>,
    ) -> Result<(), ClientError> {
        let mut request = self
            .http
            .post(self.url(&format!("/api/server/instances/{id}/reconcile")))
            .json(step);
        if let Some(token) = fence {
            request = request.header(FENCING_TOKEN_HEADER, token);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        self.succeeded(response).await
    }

    /// Claims or renews the reconciler lease for `holder`; `None` while
    /// another holder has it.
    pub async fn claim_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, ClientError> {
        let body = json!({"holder": holder, "ttlSeconds": ttl.as_secs().max(1)});
        match self.post("/api/reconciler/lease", &body).await {
            Ok(lease) => Ok(Some(lease)),
            Err(ClientError::Problem {
                code: ProblemCode::LeaseHeld,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives the reconciler lease of `holder` up.
    pub async fn release_lease(&self, holder: &str) -> Result<(), ClientError> {
        let response = self
            .http
            .delete(self.url("/api/reconciler/lease"))
            .query(&[("holder", holder)])
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.succeeded(response).await
    }

    /// Reports what an external daemon observed of an instance (`POST
    /// /api/status/updates`).
    pub async fn report_status<U: Serialize>(&self, update: &U) -> Result<(), ClientError> {
        let body =
            serde_json::to_value(update).map_err(|e| ClientError::Settings(e.to_string()))?;
        self.call("POST", "/api/status/updates", Body::Json(&body), None)
            .await
            .map(|_| ())
    }

    /// An event stream (`path`, e.g. `/api/events`), resumed after
    /// `last_event` when given. Ends when the connection does.
    pub async fn events(
        &self,
        path: &str,
        last_event: Option<&str>,
    ) -> Result<BoxStream<'static, StreamEvent>, ClientError> {
        let mut request = self
            .streams
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(cursor) = last_event {
            request = request.header("last-event-id", cursor);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let text = response.text().await.map_err(|e| self.unreachable(&e))?;
            return Err(problem(status, &text));
        }
        use eventsource_stream::Eventsource;
        Ok(response
            .bytes_stream()
            .eventsource()
            .take_while(|e| futures::future::ready(e.is_ok()))
            .filter_map(|e| async move {
                let event = e.ok()?;
                Some(StreamEvent {
                    id: (!event.id.is_empty()).then_some(event.id),
                    name: event.event,
                    data: event.data,
                })
            })
            .boxed())
    }
}

/// The problem an answer of `status` with body `text` is.
fn problem(status: u16, text: &str) -> ClientError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = body["code"].as_str().map_or_else(
        || ProblemCode::Other(format!("HTTP_{status}")),
        ProblemCode::parse,
    );
    let detail = body["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(500).collect());
    ClientError::Problem {
        status,
        code,
        detail,
        body,
    }
}

fn decode<T: DeserializeOwned>(what: &str, answer: &Answer) -> Result<T, ClientError> {
    serde_json::from_str(&answer.text).map_err(|e| unreadable(what, &e))
}

fn unreadable(what: &str, e: &serde_json::Error) -> ClientError {
    ClientError::Unreadable {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// An error with its causes ("error sending request: ... invalid peer
/// certificate: UnknownIssuer"), which reqwest's own message leaves out.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_answer_becomes_its_typed_code_and_anything_else_says_its_status() {
        let e = problem(
            409,
            r#"{"status":409,"code":"STALE_PLAN","detail":"the instance is now Running"}"#,
        );
        assert_eq!(e.code(), Some(&ProblemCode::StalePlan));
        assert_eq!(e.status(), Some(409));
        assert!(e.to_string().contains("the instance is now Running"), "{e}");
        let e = problem(502, "Bad Gateway");
        assert_eq!(e.code(), Some(&ProblemCode::Other("HTTP_502".into())));
        assert!(e.to_string().contains("Bad Gateway"), "{e}");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            Client::new(ClientOptions::new("ftp://x")),
            Err(ClientError::Settings(_))
        ));
        let mut options = ClientOptions::new("http://127.0.0.1:1");
        options.token = Some("bad\nkey".into());
        assert!(matches!(
            Client::new(options),
            Err(ClientError::Settings(_))
        ));
    }

    /// Against a real listener that refuses: unreachable, naming where.
    #[tokio::test]
    async fn no_answer_is_unreachable_naming_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(1);
        drop(listener);
        let client = Client::new(ClientOptions::new(format!("http://127.0.0.1:{port}")))
            .unwrap_or_else(|e| panic!("{e}"));
        match client.instance("x").await {
            Err(ClientError::Unreachable { base, .. }) => assert!(base.contains(&port.to_string())),
            other => panic!("expected unreachable, got {other:?}"),
        }
    }
}
