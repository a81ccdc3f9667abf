//! The control plane's REST API and event stream as a
//! [`ControlPlanePort`]: how a reconciler that runs alone (`draas
//! reconcile`) reaches it, from anywhere.

use std::time::Duration;

use async_trait::async_trait;
use draas_core::instance::{Instance, InstanceId};
use draas_core::lease::{Lease, FENCING_TOKEN_HEADER};
use draas_core::messages::Event;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::cursor::Named;
use crate::plan::Action;
use crate::port::ControlPlanePort;

/// What went wrong talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (connection refused, timeout).
    #[error("the control plane did not answer: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The instance is gone.
    #[error("instance {0} no longer exists")]
    Gone(String),
    /// The record changed since the plan (someone else acted).
    #[error("the plan is stale: {0}")]
    Stale(String),
    /// Any other refusal, with the problem's `code` and detail.
    #[error("{status} {code}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem's `code`.
        code: String,
        /// The problem's `detail`.
        detail: String,
    },
}

/// A client of one control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    base: String,
    http: reqwest::Client,
    /// For the event stream: no overall timeout (it lasts as long as the
    /// connection), the same key.
    streams: reqwest::Client,
}

/// Page size of a full pass.
const PAGE: usize = 1000;

impl ControlPlaneClient {
    /// A client of the control plane at `base` (e.g. `http://127.0.0.1:5000`),
    /// sending `token` (an operator's API key) when given, and trusting the
    /// certificates `trusted` for HTTPS.
    pub fn new(
        base: &str,
        request_timeout: Duration,
        token: Option<&str>,
        trusted: &[reqwest::Certificate],
    ) -> Result<Self, ClientError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Refused {
                    status: 0,
                    code: "INVALID_TOKEN".into(),
                    detail: "the API key holds characters a header cannot".into(),
                })?;
            // Kept out of debug output.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let trust = |builder: reqwest::ClientBuilder| {
            trusted.iter().fold(builder, |builder, certificate| {
                builder.add_root_certificate(certificate.clone())
            })
        };
        let http = trust(reqwest::Client::builder())
            .connect_timeout(Duration::from_secs(5))
            .timeout(request_timeout)
            .default_headers(headers.clone())
            .build()?;
        let streams = trust(reqwest::Client::builder())
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
            streams,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn step(&self, id: &str, body: Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(&format!("/api/server/instances/{id}/reconcile")))
            .json(&body)
    }
}

#[async_trait]
impl ControlPlanePort for ControlPlaneClient {
    /// Every instance, page by page.
    async fn instances(&self) -> Result<Vec<Instance>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page: Value = answer(
                self.http
                    .get(self.url("/api/server/instances"))
                    .query(&[("offset", all.len()), ("limit", PAGE)])
                    .send()
                    .await?,
                "instances",
            )
            .await?;
            let items: Vec<Instance> =
                serde_json::from_value(page["items"].clone()).map_err(|e| {
                    ClientError::Refused {
                        status: 200,
                        code: "UNREADABLE".into(),
                        detail: format!("an instance list this reconciler cannot read: {e}"),
                    }
                })?;
            let total = page["total"].as_u64().unwrap_or(0) as usize;
            let got = items.len();
            all.extend(items);
            if got == 0 || all.len() >= total {
                return Ok(all);
            }
        }
    }

    /// One instance.
    async fn instance(&self, id: &str) -> Result<Instance, ClientError> {
        let value = answer(
            self.http
                .get(self.url(&format!("/api/server/instances/{id}")))
                .send()
                .await?,
            id,
        )
        .await?;
        serde_json::from_value(value).map_err(|e| ClientError::Refused {
            status: 200,
            code: "UNREADABLE".into(),
            detail: format!("an instance this reconciler cannot read: {e}"),
        })
    }

    /// Carries out `action` on instance `id`, fenced with the lease's
    /// `fence` token when this reconciler holds one.
    async fn act(
        &self,
        id: &InstanceId,
        action: &Action,
        fence: Option<u64>,
    ) -> Result<(), ClientError> {
        let id = id.as_str();
        let mut request = self.step(id, step_body(action));
        if let Some(token) = fence {
            request = request.header(FENCING_TOKEN_HEADER, token);
        }
        answer(request.send().await?, id).await.map(|_| ())
    }

    /// Claims or renews the reconciler lease for `holder`; `Ok(None)`
    /// while another holder has it.
    async fn claim_lease(&self, holder: &str, ttl: Duration) -> Result<Option<Lease>, ClientError> {
        let response = self
            .http
            .post(self.url("/api/reconciler/lease"))
            .json(&json!({"holder": holder, "ttlSeconds": ttl.as_secs().max(1)}))
            .send()
            .await?;
        match answer(response, "the reconciler lease").await {
            Ok(value) => {
                serde_json::from_value(value)
                    .map(Some)
                    .map_err(|e| ClientError::Refused {
                        status: 200,
                        code: "UNREADABLE".into(),
                        detail: format!("a lease this reconciler cannot read: {e}"),
                    })
            }
            Err(ClientError::Refused { code, .. }) if code == "LEASE_HELD" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (at shutdown), so another reconciler takes over
    /// at once.
    async fn release_lease(&self, holder: &str) -> Result<(), ClientError> {
        let response = self
            .http
            .delete(self.url("/api/reconciler/lease"))
            .query(&[("holder", holder)])
            .send()
            .await?;
        answer(response, "the reconciler lease").await.map(|_| ())
    }

    /// The instances that events name, from the event stream (resumed
    /// after `last_event` when given). Ends when the connection does.
    async fn instance_events(
        &self,
        last_event: Option<&str>,
    ) -> Result<BoxStream<'static, Named>, ClientError> {
        // The stream lives as long as the connection: no overall timeout.
        let mut request = self
            .streams
            .get(self.url("/api/events"))
            .header("accept", "text/event-stream");
        if let Some(cursor) = last_event {
            request = request.header("last-event-id", cursor);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        use eventsource_stream::Eventsource;
        Ok(response
            .bytes_stream()
            .eventsource()
            .take_while(|e| futures::future::ready(e.is_ok()))
            .filter_map(|e| async move {
                let event = e.ok()?;
                let data: Value = serde_json::from_str(&event.data).ok()?;
                let instance = data["event"]["instanceId"].as_str()?.to_string();
                let cursor = (!event.id.is_empty()).then_some(event.id);
                let change = match serde_json::from_value::<Event>(data["event"].clone()) {
                    Ok(Event::InstanceStatusChanged(change)) => Some(change),
                    _ => None,
                };
                Some(Named {
                    instance,
                    cursor,
                    change,
                })
            })
            .boxed())
    }
}

/// `action` as the control plane takes it: the body of `POST
/// /api/server/instances/{id}/reconcile` (the reconciler built into the
/// control plane hands the same step over in-process).
pub fn step_body(action: &Action) -> Value {
    match action {
        Action::Start { from } => json!({"action": "start", "state": from}),
        Action::ScheduleRetry { at, restarts } => {
            json!({"action": "scheduleRetry", "at": at, "restartCount": restarts})
        }
        Action::Recover { restarts } => json!({"action": "recover", "restartCount": restarts}),
        Action::ResetRestarts { restarts } => {
            json!({"action": "resetRestarts", "restartCount": restarts})
        }
        Action::ApplyConfiguration { generation } => {
            json!({"action": "applyConfiguration", "generation": generation})
        }
        Action::Stop { from } => json!({"action": "stop", "state": from}),
        Action::FinishDelete => json!({"action": "finishDelete"}),
    }
}

/// The JSON body of a successful answer, or the error it is.
async fn answer(response: reqwest::Response, what: &str) -> Result<Value, ClientError> {
    if response.status().is_success() {
        return Ok(response.json().await?);
    }
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(ClientError::Gone(what.to_string()));
    }
    Err(refusal(response).await)
}

async fn refusal(response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["code"].as_str().unwrap_or("UNKNOWN").to_string();
    let detail = body["detail"].as_str().unwrap_or_default().to_string();
    if code == "STALE_PLAN" {
        ClientError::Stale(detail)
    } else {
        ClientError::Refused {
            status,
            code,
            detail,
        }
    }
}
