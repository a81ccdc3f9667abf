//! Conformance checks of a [`MessageBus`]: every backend must pass them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use draas_core::instance::InstanceId;
use draas_core::messages::{
    Command, CommandEnvelope, CommandReply, Event, EventEnvelope, Outcome, MESSAGE_VERSION,
};
use draas_core::ports::bus::{BusError, Credits, MessageBus};
use futures::StreamExt;

/// Runs every check against `bus`. Channels are unique per run, so a shared
/// backend (one Redis) can serve several runs.
pub async fn run_all(bus: Arc<dyn MessageBus>) {
    request_gets_the_consumers_reply(bus.clone()).await;
    competing_consumers_execute_each_command_once(bus.clone(), 200).await;
    a_busy_consumer_leaves_commands_to_its_idle_peer(bus.clone()).await;
    one_stream_delivers_the_commands_of_several_channels(bus.clone()).await;
    a_stopped_consumer_leaves_commands_to_the_others_at_once(bus.clone()).await;
    request_times_out_without_a_reply(bus.clone()).await;
    events_reach_subscribers_of_their_channel_in_order(bus.clone()).await;
    published_events_can_be_replayed_from_a_cursor(bus.clone()).await;
    live_events_carry_the_cursors_replay_uses(bus.clone()).await;
    bus.ping().await.expect("the bus answers a ping");
}

/// Credits of `n` permits.
pub fn credits(n: usize) -> Arc<dyn Credits> {
    Arc::new(draas_worker::SemaphoreCredits::new(n))
}

/// Published events are kept and can be read again after a cursor.
pub async fn published_events_can_be_replayed_from_a_cursor(bus: Arc<dyn MessageBus>) {
    let id: InstanceId = format!("i-{}", uuid::Uuid::new_v4().simple())
        .parse()
        .expect("id");
    let before = bus.replay_events(None, 100_000).await.expect("replay");
    let start = before.last().map(|e| e.cursor.clone());
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
        .filter_map(|e| match &e.envelope.event {
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
    let first = &replayed.first().expect("first").cursor;
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
    let nonsense = bus.replay_events(Some("not a cursor"), 10).await;
    assert!(
        matches!(nonsense, Err(BusError::InvalidCursor(_))),
        "{nonsense:?}"
    );
}

/// The cursor a subscriber sees with a live event is the one replay gives
/// it, so a subscriber that reconnects resumes exactly where it stopped.
pub async fn live_events_carry_the_cursors_replay_uses(bus: Arc<dyn MessageBus>) {
    let id: InstanceId = format!("i-{}", uuid::Uuid::new_v4().simple())
        .parse()
        .expect("id");
    let mut live = bus
        .subscribe(&["configuration.events"])
        .await
        .expect("subscribe");
    let before = bus.replay_events(None, 100_000).await.expect("replay");
    let start = before.last().map(|e| e.cursor.clone());
    for generation in 1..=3 {
        bus.publish(&EventEnvelope::new(Event::ConfigurationChanged {
            instance_id: id.clone(),
            generation,
        }))
        .await
        .expect("publish");
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("event in time")
            .expect("stream open");
        if matches!(&event.envelope.event, Event::ConfigurationChanged { instance_id, .. } if instance_id == &id)
        {
            seen.push((event.cursor, event.envelope.id));
        }
    }
    let replayed: Vec<(String, uuid::Uuid)> = bus
        .replay_events(start.as_deref(), 100)
        .await
        .expect("replay")
        .into_iter()
        .filter(|e| matches!(&e.envelope.event, Event::ConfigurationChanged { instance_id, .. } if instance_id == &id))
        .map(|e| (e.cursor, e.envelope.id))
        .collect();
    assert_eq!(seen, replayed, "live cursors are replay cursors");
    let after_first = bus
        .replay_events(Some(&seen[0].0), 100)
        .await
        .expect("replay");
    assert_eq!(
        after_first
            .iter()
            .filter(|e| seen.iter().any(|(_, id)| *id == e.envelope.id))
            .count(),
        2,
        "resuming after the first event gives the other two"
    );
}

/// A consumer holding all its permits takes nothing more off the channel:
/// its idle peer gets every further command at once.
pub async fn a_busy_consumer_leaves_commands_to_its_idle_peer(bus: Arc<dyn MessageBus>) {
    let channel = unique("conformance.commands");
    // The busy one: one permit, and it keeps the command it took.
    let mut busy = bus
        .consume(std::slice::from_ref(&channel), "busy", credits(1))
        .await
        .expect("consume");
    let held = {
        let bus = bus.clone();
        let channel = channel.clone();
        tokio::spawn(async move {
            bus.request(&channel, status_command(), Duration::from_secs(30))
                .await
        })
    };
    let first = tokio::time::timeout(Duration::from_secs(10), busy.next())
        .await
        .expect("the busy consumer takes the first command")
        .expect("open")
        .expect("delivery");
    // Its peer arrives, and five more commands follow.
    let executed = Arc::new(Mutex::new(HashMap::new()));
    let idle = spawn_echo_consumer(
        bus.clone(),
        &channel,
        "idle",
        executed.clone(),
        Duration::ZERO,
    )
    .await;
    let started = Instant::now();
    let requests = (0..5).map(|_| {
        let bus = bus.clone();
        let channel = channel.clone();
        async move {
            bus.request(&channel, status_command(), Duration::from_secs(20))
                .await
                .expect("reply")
                .worker_id
        }
    });
    let by: Vec<String> = futures::future::join_all(requests).await;
    assert_eq!(by, vec!["idle"; 5], "the idle peer executed them all");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "without waiting for a claim to expire: {:?}",
        started.elapsed()
    );
    // The busy consumer answers its one command at last.
    let reply = ok_reply(&first.envelope, "busy");
    first.reply(reply).await.expect("reply");
    let answered = held.await.expect("join").expect("reply");
    assert_eq!(answered.worker_id, "busy");
    idle.abort();
}

/// A consumer whose stream was dropped (its worker stopped) takes nothing
/// more, not even with a read already under way: another consumer answers
/// every command sent right after, without waiting for a claim to expire.
pub async fn a_stopped_consumer_leaves_commands_to_the_others_at_once(bus: Arc<dyn MessageBus>) {
    let channel = unique("conformance.commands");
    let stopped = bus
        .consume(std::slice::from_ref(&channel), "stopped", credits(16))
        .await
        .expect("consume");
    // Let its first read begin, then stop it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stopped);
    let executed = Arc::new(Mutex::new(HashMap::new()));
    let other = spawn_echo_consumer(bus.clone(), &channel, "other", executed, Duration::ZERO).await;
    let started = Instant::now();
    let requests = (0..5).map(|_| {
        let bus = bus.clone();
        let channel = channel.clone();
        async move {
            bus.request(&channel, status_command(), Duration::from_secs(20))
                .await
                .expect("reply")
                .worker_id
        }
    });
    let by: Vec<String> = futures::future::join_all(requests).await;
    assert_eq!(by, vec!["other"; 5]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered without waiting for a claim to expire: {:?}",
        started.elapsed()
    );
    other.abort();
}

/// One consumer, two channels, one stream: commands of both arrive, each
/// answered on the channel it came from.
pub async fn one_stream_delivers_the_commands_of_several_channels(bus: Arc<dyn MessageBus>) {
    let shared = unique("conformance.commands");
    let private = format!("{shared}.worker.w1");
    let mut stream = bus
        .consume(&[shared.clone(), private.clone()], "w1", credits(4))
        .await
        .expect("consume");
    let answering = tokio::spawn(async move {
        while let Some(Ok(delivery)) = stream.next().await {
            let reply = ok_reply(&delivery.envelope, "w1");
            delivery.reply(reply).await.expect("reply");
        }
    });
    for channel in [&shared, &private, &shared] {
        let reply = bus
            .request(channel, status_command(), Duration::from_secs(10))
            .await
            .expect("reply");
        assert_eq!(reply.worker_id, "w1", "answered on {channel}");
    }
    answering.abort();
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
    let mut stream = bus
        .consume(&[channel.to_string()], name, credits(64))
        .await
        .expect("consume");
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
    let mut stream = bus
        .consume(std::slice::from_ref(&channel), "silent", credits(4))
        .await
        .expect("consume");
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
            .expect("stream open")
            .envelope;
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
            .expect("stream open")
            .envelope;
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
