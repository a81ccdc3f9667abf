//! Conformance checks of a [`MessageBus`]: every backend must pass them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use draas_core::instance::InstanceId;
use draas_core::messages::{
    Command, CommandEnvelope, CommandReply, Event, EventEnvelope, Outcome, MESSAGE_VERSION,
};
use draas_core::ports::bus::{BusError, MessageBus};
use futures::StreamExt;

/// Runs every check against `bus`. Channels are unique per run, so a shared
/// backend (one Redis) can serve several runs.
pub async fn run_all(bus: Arc<dyn MessageBus>) {
    request_gets_the_consumers_reply(bus.clone()).await;
    competing_consumers_execute_each_command_once(bus.clone(), 200).await;
    request_times_out_without_a_reply(bus.clone()).await;
    events_reach_subscribers_of_their_channel_in_order(bus.clone()).await;
    published_events_can_be_replayed_from_a_cursor(bus.clone()).await;
}

/// Published events are kept and can be read again after a cursor.
pub async fn published_events_can_be_replayed_from_a_cursor(bus: Arc<dyn MessageBus>) {
    let id: InstanceId = format!("i-{}", uuid::Uuid::new_v4().simple())
        .parse()
        .expect("id");
    let before = bus.replay_events(None, 100_000).await.expect("replay");
    let start = before.last().map(|(cursor, _)| cursor.clone());
    for generation in 1..=3 {
        bus.publish(&EventEnvelope::new(Event::ConfigurationChanged {
            instance_id: id.clone(),
            generation,
        }))
        .await
        .expect("publish");
    }
    let replayed = bus
        .replay_events(start.as_deref(), 100)
        .await
        .expect("replay");
    let generations: Vec<u64> = replayed
        .iter()
        .filter_map(|(_, e)| match &e.event {
            Event::ConfigurationChanged {
                instance_id,
                generation,
            } if instance_id == &id => Some(*generation),
            _ => None,
        })
        .collect();
    assert_eq!(
        generations,
        vec![1, 2, 3],
        "replayed in order after the cursor"
    );
    let (first, _) = replayed.first().expect("first");
    let rest = bus.replay_events(Some(first), 100).await.expect("replay");
    assert_eq!(
        rest.len(),
        replayed.len() - 1,
        "the cursor itself is excluded"
    );
    let limited = bus
        .replay_events(start.as_deref(), 2)
        .await
        .expect("replay");
    assert_eq!(limited.len(), 2, "limit applies");
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

fn status_command() -> CommandEnvelope {
    CommandEnvelope::new(
        "i-conformance".parse::<InstanceId>().expect("id"),
        Command::Status,
        Duration::from_secs(30),
    )
}

fn ok_reply(command: &CommandEnvelope, worker: &str) -> CommandReply {
    CommandReply {
        version: MESSAGE_VERSION,
        command_id: command.id,
        worker_id: worker.to_string(),
        outcome: Outcome::Ok {
            status: None,
            runtime: None,
            detail: Some(serde_json::json!({"echo": command.id.to_string()})),
        },
    }
}

/// Starts a consumer that answers every command, counting executions per
/// command id.
async fn spawn_echo_consumer(
    bus: Arc<dyn MessageBus>,
    channel: &str,
    name: &str,
    executed: Arc<Mutex<HashMap<uuid::Uuid, Vec<String>>>>,
    work: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut stream = bus.consume(channel, name).await.expect("consume");
    let name = name.to_string();
    tokio::spawn(async move {
        while let Some(delivery) = stream.next().await {
            let Ok(delivery) = delivery else { continue };
            executed
                .lock()
                .expect("lock")
                .entry(delivery.envelope.id)
                .or_default()
                .push(name.clone());
            tokio::time::sleep(work).await;
            let reply = ok_reply(&delivery.envelope, &name);
            delivery.reply(reply).await.expect("reply");
        }
    })
}

/// A request returns the reply of the consumer that executed it.
pub async fn request_gets_the_consumers_reply(bus: Arc<dyn MessageBus>) {
    let channel = unique("conformance.commands");
    let executed = Arc::new(Mutex::new(HashMap::new()));
    let consumer = spawn_echo_consumer(bus.clone(), &channel, "w1", executed, Duration::ZERO).await;
    let command = status_command();
    let reply = bus
        .request(&channel, command.clone(), Duration::from_secs(10))
        .await
        .expect("reply");
    assert_eq!(reply.command_id, command.id);
    assert_eq!(reply.worker_id, "w1");
    match reply.outcome {
        Outcome::Ok { detail, .. } => {
            assert_eq!(
                detail,
                Some(serde_json::json!({"echo": command.id.to_string()}))
            )
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    consumer.abort();
}

/// Two consumers of one channel: every one of `count` concurrent commands is
/// executed exactly once, and both consumers take part.
pub async fn competing_consumers_execute_each_command_once(bus: Arc<dyn MessageBus>, count: usize) {
    let channel = unique("conformance.commands");
    let executed = Arc::new(Mutex::new(HashMap::new()));
    let work = Duration::from_millis(2);
    let a = spawn_echo_consumer(bus.clone(), &channel, "wa", executed.clone(), work).await;
    let b = spawn_echo_consumer(bus.clone(), &channel, "wb", executed.clone(), work).await;
    let requests = (0..count).map(|_| {
        let bus = bus.clone();
        let channel = channel.clone();
        async move {
            let command = status_command();
            let reply = bus
                .request(&channel, command.clone(), Duration::from_secs(30))
                .await
                .expect("reply");
            assert_eq!(reply.command_id, command.id, "reply matches its request");
            reply.worker_id
        }
    });
    let workers: Vec<String> = futures::future::join_all(requests).await;
    let executed = executed.lock().expect("lock").clone();
    assert_eq!(executed.len(), count, "every command executed");
    for (id, by) in &executed {
        assert_eq!(
            by.len(),
            1,
            "command {id} executed {} times: {by:?}",
            by.len()
        );
    }
    for name in ["wa", "wb"] {
        assert!(
            workers.iter().any(|w| w == name),
            "consumer {name} executed none of {count} commands"
        );
    }
    a.abort();
    b.abort();
}

/// A request nobody answers fails with `Timeout` close to its deadline.
pub async fn request_times_out_without_a_reply(bus: Arc<dyn MessageBus>) {
    let channel = unique("conformance.commands");
    // A consumer that takes commands and never answers (keeps them).
    let mut stream = bus.consume(&channel, "silent").await.expect("consume");
    let hold = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(d) = stream.next().await {
            kept.push(d);
        }
    });
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let result = bus.request(&channel, status_command(), limit).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(BusError::Timeout(_))),
        "got {result:?}"
    );
    assert!(elapsed >= limit, "gave up early: {elapsed:?}");
    assert!(
        elapsed < limit + Duration::from_secs(2),
        "gave up late: {elapsed:?}"
    );
    hold.abort();
}

/// Subscribers receive the events of their channels, in publication order,
/// and nothing of other channels.
pub async fn events_reach_subscribers_of_their_channel_in_order(bus: Arc<dyn MessageBus>) {
    let id: InstanceId = format!("i-{}", uuid::Uuid::new_v4().simple())
        .parse()
        .expect("id");
    let mut config_events = bus
        .subscribe(&["configuration.events"])
        .await
        .expect("subscribe");
    let mut all = bus
        .subscribe(&["configuration.events", "instance.events", "status.events"])
        .await
        .expect("subscribe");
    let published: Vec<EventEnvelope> = (1..=5)
        .flat_map(|generation| {
            [
                EventEnvelope::new(Event::ConfigurationChanged {
                    instance_id: id.clone(),
                    generation,
                }),
                EventEnvelope::new(Event::InstanceStopped {
                    instance_id: id.clone(),
                }),
            ]
        })
        .collect();
    for event in &published {
        bus.publish(event).await.expect("publish");
    }
    let mine = |e: &EventEnvelope| match &e.event {
        Event::ConfigurationChanged { instance_id, .. }
        | Event::InstanceStopped { instance_id } => instance_id == &id,
        _ => false,
    };
    let mut got_config = Vec::new();
    while got_config.len() < 5 {
        let e = tokio::time::timeout(Duration::from_secs(10), config_events.next())
            .await
            .expect("configuration event in time")
            .expect("stream open");
        assert_eq!(
            e.event.channel(),
            "configuration.events",
            "only its channel: {e:?}"
        );
        if mine(&e) {
            got_config.push(e);
        }
    }
    let generations: Vec<u64> = got_config
        .iter()
        .filter_map(|e| match e.event {
            Event::ConfigurationChanged { generation, .. } => Some(generation),
            _ => None,
        })
        .collect();
    assert_eq!(generations, vec![1, 2, 3, 4, 5], "in order");
    let mut got_all = Vec::new();
    while got_all.len() < published.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), all.next())
            .await
            .expect("event in time")
            .expect("stream open");
        if mine(&e) {
            got_all.push(e.id);
        }
    }
    let expected: Vec<uuid::Uuid> = published.iter().map(|e| e.id).collect();
    let mut sorted_got = got_all.clone();
    sorted_got.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_got, sorted_expected, "every event arrives once");
}
