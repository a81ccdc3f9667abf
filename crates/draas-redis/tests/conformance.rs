//! The store and bus conformance suites against a real `redis-server`,
//! plus what only the Redis backends promise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use draas_core::ports::{MessageBus, StateStore};
use draas_redis::{BusOptions, RedisBus, RedisSettings, RedisStore};
use draas_testkit::redis_server::RedisServer;

fn settings(server: &RedisServer) -> RedisSettings {
    let mut settings = RedisSettings::new(server.url());
    settings.prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let store: Arc<dyn StateStore> =
        Arc::new(RedisStore::connect(settings(&server)).await.unwrap());
    draas_testkit::conformance::store::run_all(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let bus: Arc<dyn MessageBus> = Arc::new(
        RedisBus::connect(settings(&server), BusOptions::default())
            .await
            .unwrap(),
    );
    draas_testkit::conformance::bus::run_all(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_redis_needs_the_password_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_with(dir.path(), Some("s3cret-pass"));
    let store = RedisStore::connect(settings(&server)).await.unwrap();
    store
        .put(
            "c",
            "k",
            b"v".to_vec(),
            draas_core::ports::Precondition::None,
        )
        .await
        .unwrap();

    let mut wrong = settings(&server);
    wrong.url = format!("redis://:wrong@127.0.0.1:{}", server.port);
    let err = RedisStore::connect(wrong).await.err().expect("refused");
    assert!(
        !err.to_string().contains("wrong"),
        "no password in errors: {err}"
    );
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_auth_works_for_store_and_bus() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_tls(dir.path(), "tls-pass");
    assert!(server.url().starts_with("rediss://"));
    let mut settings = settings(&server);
    settings.ca_pem = Some(std::fs::read(server.ca_path()).unwrap());
    let store: Arc<dyn StateStore> = Arc::new(RedisStore::connect(settings.clone()).await.unwrap());
    draas_testkit::conformance::store::put_get_roundtrip(store).await;
    let bus: Arc<dyn MessageBus> = Arc::new(
        RedisBus::connect(settings.clone(), BusOptions::default())
            .await
            .unwrap(),
    );
    draas_testkit::conformance::bus::request_gets_the_consumers_reply(bus).await;

    // Without the CA the server's certificate is not trusted.
    let mut untrusted = settings.clone();
    untrusted.ca_pem = None;
    assert!(
        RedisStore::connect(untrusted).await.is_err(),
        "an unknown CA is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_consumers_keep_dying_goes_to_its_platforms_dead_letters() {
    use draas_core::instance::PlatformType;
    use draas_core::messages::{Command, CommandEnvelope, Outcome};
    use futures::StreamExt;
    // Sent on a worker's private channel: its dead letter is listed with
    // the platform's.
    let channel = PlatformType::Process.worker_channel("w-doomed");
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let options = BusOptions {
        claim_after: Duration::from_millis(300),
        max_deliveries: 3,
        ..BusOptions::default()
    };
    let settings = settings(&server);
    let requester = RedisBus::connect(settings.clone(), options.clone())
        .await
        .unwrap();
    let command = CommandEnvelope::new(
        "i-doomed".parse().unwrap(),
        Command::Status,
        Duration::from_secs(30),
    );
    let id = command.id;
    let request = tokio::spawn({
        let requester = requester.clone();
        let channel = channel.clone();
        async move {
            requester
                .request(&channel, command, Duration::from_secs(20))
                .await
        }
    });

    // Consumers that take the command and die without answering: each
    // "crash" drops the delivery (no ack); the next consumer re-claims it.
    let mut deliveries = Vec::new();
    for attempt in 0..3 {
        let bus = RedisBus::connect(settings.clone(), options.clone())
            .await
            .unwrap();
        let mut stream = bus
            .consume(
                std::slice::from_ref(&channel),
                &format!("doomed-{attempt}"),
                draas_testkit::conformance::bus::credits(1),
            )
            .await
            .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery.envelope.id, id);
        deliveries.push(delivery.delivery_count);
        drop(delivery);
        drop(stream);
    }
    assert_eq!(
        deliveries,
        vec![1, 2, 3],
        "redelivered with a growing count"
    );

    // The next re-claim exceeds the bound: dead-lettered, requester told.
    let bus = RedisBus::connect(settings.clone(), options.clone())
        .await
        .unwrap();
    let _stream = bus
        .consume(
            std::slice::from_ref(&channel),
            "survivor",
            draas_testkit::conformance::bus::credits(1),
        )
        .await
        .unwrap();
    let reply = request.await.unwrap().unwrap();
    match reply.outcome {
        Outcome::Error { message, .. } => assert!(message.contains("dead-lettered"), "{message}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    let letters = requester
        .dead_letters("instance.commands.process", 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].channel, channel,
        "it names the channel it was sent on"
    );
    assert_eq!(letters[0].command.as_ref().map(|c| c.id), Some(id));
    assert_eq!(letters[0].deliveries, 4);
    assert!(!letters[0].id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_a_lost_reply_takes_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let store = RedisStore::connect(settings(&server)).await.unwrap();
    // What `with_retry` does when the reply of an append was lost: the same
    // call again, under the same token.
    let first = store
        .append_once("token-1", "status-changes", b"change", 100)
        .await
        .unwrap();
    let again = store
        .append_once("token-1", "status-changes", b"change", 100)
        .await
        .unwrap();
    assert_eq!(first, again, "the retry gets the first cursor");
    let page = store.read_log("status-changes", 0, 100).await.unwrap();
    assert_eq!(page.entries.len(), 1, "one entry, not two: {page:?}");
    let other = store
        .append_once("token-2", "status-changes", b"next", 100)
        .await
        .unwrap();
    assert_eq!(other, first + 1, "a new call appends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_answers_a_ping_and_fails_clearly_without_redis() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(dir.path());
    let bus = RedisBus::connect(settings(&server), BusOptions::default())
        .await
        .unwrap();
    bus.ping().await.expect("ping");
    server.kill();
    let result = bus.ping().await;
    assert!(
        matches!(result, Err(draas_core::ports::BusError::Unavailable(_))),
        "{result:?}"
    );
}
