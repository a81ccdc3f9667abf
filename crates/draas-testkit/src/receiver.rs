//! An HTTP server that records what it is sent: the other end of an http
//! reaction (or any webhook) in a test.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// One request it received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, `PUT`, ...
    pub method: String,
    /// The path (with its query).
    pub path: String,
    /// The headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Received {
    /// The value of header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A recording HTTP server on a free port of `127.0.0.1` (or of the
/// address given), answering `200` with `{}` (or the body it was given) to
/// everything; a holding one answers only once released.
pub struct Receiver {
    /// Its port.
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    released: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts one on 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1").await
    }

    /// Starts one on `address` (`0.0.0.0` for containers).
    pub async fn start_on(address: &str) -> Self {
        Self::serve(address, "{}".to_string(), true).await
    }

    /// Starts one on 127.0.0.1 that answers `body` to every request, but
    /// only once [`release`](Self::release) was called: a slow upstream
    /// (a bootstrap that takes as long as a test wants).
    pub async fn holding(body: String) -> Self {
        Self::serve("127.0.0.1", body, false).await
    }

    /// Lets a holding receiver answer.
    pub fn release(&self) {
        let _ = self.released.send(true);
    }

    async fn serve(address: &str, answer: String, released: bool) -> Self {
        let listener = tokio::net::TcpListener::bind((address, 0))
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().expect("its address").port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let (release, gate) = tokio::sync::watch::channel(released);
        let answer = bytes::Bytes::from(answer);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let gate = gate.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            let mut gate = gate.clone();
                            let answer = answer.clone();
                            async move {
                                let method = request.method().to_string();
                                let path = request
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                let headers = request
                                    .headers()
                                    .iter()
                                    .map(|(n, v)| {
                                        (
                                            n.as_str().to_string(),
                                            v.to_str().unwrap_or("").to_string(),
                                        )
                                    })
                                    .collect();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
                                    .unwrap_or_default();
                                log.lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .push(Received {
                                        method,
                                        path,
                                        headers,
                                        body,
                                    });
                                // A holding receiver answers once released.
                                let _ = gate.wait_for(|open| *open).await;
                                let mut response =
                                    hyper::Response::new(http_body_util::Full::new(answer));
                                response.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    hyper::header::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            port,
            received,
            released: release,
            task,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits (at most `limit`) for a request `matches` says yes to.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> Received {
        crate::wait_for(what, limit, || async {
            self.received().into_iter().find(|r| matches(r))
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
