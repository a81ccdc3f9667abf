//! # draas-testkit
//!
//! Helpers for tests that drive real processes and servers: free loopback
//! ports, waiting for a condition with a deadline (never a bare sleep),
//! child processes that are killed when the test ends, pass or fail, and
//! [`conformance`] suites that every implementation of a port must pass.

pub mod conformance;
pub mod process;
pub mod redis_server;

use std::future::Future;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after
/// `limit` with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `url` and parses the body as JSON; `None` on any failure (so it
/// can be used inside [`wait_for`]).
pub async fn get_json(url: &str) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    let body = response.json().await.ok()?;
    Some((status, body))
}
