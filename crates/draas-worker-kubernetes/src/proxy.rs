//! Reaching a server's API through the Kubernetes API server.
//!
//! A server's API is its Service, reachable inside the cluster only. A
//! worker may run outside it (a laptop, another cluster, CI), so it calls
//! the API through the API server's service proxy
//! (`/api/v1/namespaces/{ns}/services/{name}:api/proxy/...`), with the
//! worker's own credentials: one path that works wherever the worker runs,
//! and no port-forward or ingress to manage. The readiness checks that
//! matter most do not even need it: the pod's readiness probe on `/health`
//! is read from the Pod watch; only the component list and the component
//! event stream go through the proxy.

use async_trait::async_trait;
use bytes::Bytes;
use draas_worker::drasi::{ServerTransport, ACTION_TIMEOUT, CALL_TIMEOUT};
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::BodyExt;
use kube::client::Body;
use kube::Client;

use crate::manifests::API_PORT_NAME;

/// The API of the server behind Service `service` of `namespace`.
#[derive(Clone)]
pub struct ServiceProxy {
    client: Client,
    prefix: String,
}

impl std::fmt::Debug for ServiceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProxy")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl ServiceProxy {
    /// Through `client`, to the `api` port of `service` in `namespace`.
    pub fn new(client: Client, namespace: &str, service: &str) -> Self {
        Self {
            client,
            prefix: format!(
                "/api/v1/namespaces/{namespace}/services/{service}:{API_PORT_NAME}/proxy"
            ),
        }
    }

    async fn send(&self, path: &str) -> Result<http::Response<Body>, String> {
        self.send_as(http::Method::GET, path).await
    }

    /// `method path`: the status and the whole body, within `limit`.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        limit: std::time::Duration,
    ) -> Result<(u16, Bytes), String> {
        let call = async {
            let response = self.send_as(method, path).await?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| format!("no answer within {limit:?}"))?
    }

    async fn send_as(
        &self,
        method: http::Method,
        path: &str,
    ) -> Result<http::Response<Body>, String> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        self.client.send(request).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl ServerTransport for ServiceProxy {
    async fn get(&self, path: &str) -> Result<(u16, Bytes), String> {
        self.call(http::Method::GET, path, CALL_TIMEOUT).await
    }

    async fn post(&self, path: &str) -> Result<(u16, Bytes), String> {
        self.call(http::Method::POST, path, ACTION_TIMEOUT).await
    }

    async fn stream(
        &self,
        path: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, String>>, String> {
        let response = self.send(path).await?;
        if !response.status().is_success() {
            return Err(format!("{path} answered {}", response.status()));
        }
        Ok(response
            .into_body()
            .into_data_stream()
            .map(|chunk| chunk.map_err(|e| e.to_string()))
            .boxed())
    }
}
