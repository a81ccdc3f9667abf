//! The bus conformance suite against the in-process bus, plus what only
//! the in-process bus promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use draas_bus::InProcessBus;
use draas_core::messages::{Command, CommandEnvelope};
use draas_core::ports::{BusError, MessageBus};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_bus_passes_the_conformance_suite() {
    draas_testkit::conformance::bus::run_all(Arc::new(InProcessBus::new())).await;
}

fn command() -> CommandEnvelope {
    CommandEnvelope::new(
        "i-x".parse().expect("id"),
        Command::Status,
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn a_channel_nobody_consumes_fails_fast() {
    let bus = InProcessBus::new();
    let started = std::time::Instant::now();
    let result = bus
        .request(
            "instance.commands.docker",
            command(),
            Duration::from_secs(30),
        )
        .await;
    assert!(matches!(result, Err(BusError::NoConsumer(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Once its last consumer goes away, the channel fails fast again.
    let stream = bus
        .consume(
            &["instance.commands.docker".to_string()],
            "w",
            draas_testkit::conformance::bus::credits(1),
        )
        .await
        .expect("consume");
    drop(stream);
    let result = bus
        .request(
            "instance.commands.docker",
            command(),
            Duration::from_secs(30),
        )
        .await;
    assert!(matches!(result, Err(BusError::NoConsumer(_))), "{result:?}");
}

#[tokio::test]
async fn a_delivery_dropped_without_reply_fails_the_request_at_once() {
    let bus = InProcessBus::new();
    let mut stream = bus
        .consume(
            &["c".to_string()],
            "w",
            draas_testkit::conformance::bus::credits(1),
        )
        .await
        .expect("consume");
    let dropper = tokio::spawn(async move {
        let delivery = stream.next().await;
        drop(delivery);
        stream
    });
    let result = bus.request("c", command(), Duration::from_secs(30)).await;
    assert!(matches!(result, Err(BusError::Dropped)), "{result:?}");
    drop(dropper.await);
}
