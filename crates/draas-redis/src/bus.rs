//! [`MessageBus`] over Redis.
//!
//! ```text
//! request ─XADD─▶ stream {p}:<channel> ──XREADGROUP (group "workers")──▶ consumer
//!    ▲                                                                      │
//!    └──── PUBLISH + SET {p}:<channel>.response.<command id> ◀──reply──────┘ then XACK
//! ```
//!
//! - **Commands** are stream entries read by a consumer group per channel:
//!   each goes to one consumer, which acknowledges it only after replying
//!   (the worker records the command's effect before it replies). While a
//!   consumer works on a command it renews its claim every
//!   [`BusOptions::lease_renewal`]; an entry left idle for
//!   [`BusOptions::claim_after`] (its consumer died) is re-claimed by
//!   another consumer with `XAUTOCLAIM`. After [`BusOptions::max_deliveries`]
//!   deliveries it goes to the dead-letter stream `{p}:<channel>.dead-letter`
//!   and its requester gets an error reply.
//! - **Replies** are published on `{p}:<channel>.response.<id>` and also
//!   stored under that key for a minute, so a requester whose subscription
//!   was interrupted (Redis restart) still finds its reply.
//! - **Events** are published on `{p}:<channel>` and appended to the capped
//!   stream `{p}:events`, which can be replayed from a cursor.
//!
//! Pub/sub runs on one RESP3 connection manager with automatic
//! resubscription, so subscriptions survive Redis restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use draas_core::messages::{
    CommandEnvelope, CommandReply, ErrorCode, EventEnvelope, Outcome, EVENT_CHANNELS,
    MESSAGE_VERSION,
};
use draas_core::ports::bus::{
    BusError, CommandStream, DeadLetter, Delivery, EventStream, MessageBus, Responder,
};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, PushInfo, RedisError, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::connection::{is_unavailable, with_retry, RedisSettings};

/// The consumer group of every command stream.
const GROUP: &str = "workers";
/// Field of a stream entry holding the message.
const FIELD: &str = "message";

/// Tuning of the Redis bus.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// An entry pending this long without renewal is re-claimed.
    pub claim_after: Duration,
    /// A consumer working on an entry renews its claim this often.
    pub lease_renewal: Duration,
    /// Deliveries before an entry goes to the dead-letter stream.
    pub max_deliveries: u32,
    /// How long one blocking read waits.
    pub block: Duration,
    /// Events kept in the replayable stream.
    pub events_kept: usize,
    /// Command entries kept per stream (acknowledged ones are trimmed).
    pub commands_kept: usize,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            claim_after: Duration::from_secs(5),
            lease_renewal: Duration::from_secs(1),
            max_deliveries: 5,
            block: Duration::from_millis(500),
            events_kept: 10_000,
            commands_kept: 100_000,
        }
    }
}

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<CommandReply>>>>;

struct Inner {
    settings: RedisSettings,
    options: BusOptions,
    connection: ConnectionManager,
    pending: Pending,
    events: broadcast::Sender<EventEnvelope>,
    shutdown: CancellationToken,
}

/// The Redis bus. Cheap to clone.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn unavailable(e: RedisError) -> BusError {
    if is_unavailable(&e) {
        BusError::Unavailable(e.to_string())
    } else {
        BusError::Backend(e.to_string())
    }
}

fn lock(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<CommandReply>>> {
    // Single map operations only: a poisoned lock still holds a sound map.
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisBus {
    /// Connects, subscribes to replies and events, and starts routing them.
    pub async fn connect(settings: RedisSettings, options: BusOptions) -> Result<Self, BusError> {
        let connection = settings.manager().await.map_err(unavailable)?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = settings
            .manager_config()
            .set_push_sender(push_tx)
            .set_automatic_resubscription();
        let client = settings.client().map_err(unavailable)?;
        let mut subscriber = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        subscriber
            .psubscribe(settings.key("*.response.*"))
            .await
            .map_err(unavailable)?;
        for channel in EVENT_CHANNELS {
            subscriber
                .subscribe(settings.key(channel))
                .await
                .map_err(unavailable)?;
        }
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            settings,
            options,
            connection,
            pending: Arc::new(Mutex::new(HashMap::new())),
            events,
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(route_pushes(
            push_rx,
            subscriber,
            inner.pending.clone(),
            inner.events.clone(),
            inner.settings.clone(),
            inner.shutdown.clone(),
        ));
        Ok(Self { inner })
    }

    fn stream(&self, channel: &str) -> String {
        self.inner.settings.key(channel)
    }

    fn reply_key(&self, channel: &str, id: Uuid) -> String {
        self.inner
            .settings
            .key(&draas_core::messages::reply_channel(channel, id))
    }
}

/// Routes pub/sub pushes: replies to their waiting requests, events to the
/// local subscribers. Keeps the subscriber connection alive.
async fn route_pushes(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    _subscriber: ConnectionManager,
    pending: Pending,
    events: broadcast::Sender<EventEnvelope>,
    settings: RedisSettings,
    shutdown: CancellationToken,
) {
    let event_prefix = settings.key("");
    loop {
        let push = tokio::select! {
            () = shutdown.cancelled() => return,
            push = pushes.recv() => match push { Some(p) => p, None => return },
        };
        let payload = match (&push.kind, push.data.as_slice()) {
            (redis::PushKind::PMessage, [_, _, Value::BulkString(body)]) => {
                Some((true, body.clone()))
            }
            (redis::PushKind::Message, [Value::BulkString(channel), Value::BulkString(body)]) => {
                let channel = String::from_utf8_lossy(channel);
                channel
                    .starts_with(&event_prefix)
                    .then(|| (false, body.clone()))
            }
            (redis::PushKind::Disconnection, _) => {
                warn!("Redis pub/sub connection lost; it reconnects and resubscribes by itself");
                None
            }
            _ => None,
        };
        match payload {
            Some((true, body)) => match serde_json::from_slice::<CommandReply>(&body) {
                Ok(reply) => {
                    if let Some(waiter) = lock(&pending).remove(&reply.command_id) {
                        let _ = waiter.send(reply);
                    }
                }
                Err(e) => warn!("ignoring an unreadable reply: {e}"),
            },
            Some((false, body)) => match serde_json::from_slice::<EventEnvelope>(&body) {
                Ok(event) => {
                    let _ = events.send(event);
                }
                Err(e) => warn!("ignoring an unreadable event: {e}"),
            },
            None => {}
        }
    }
}

#[async_trait]
impl MessageBus for RedisBus {
    async fn request(
        &self,
        channel: &str,
        command: CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandReply, BusError> {
        let id = command.id;
        let body = serde_json::to_vec(&command).map_err(|e| BusError::Backend(e.to_string()))?;
        let (tx, mut rx) = oneshot::channel();
        lock(&self.inner.pending).insert(id, tx);
        let mut connection = self.inner.connection.clone();
        let stream = self.stream(channel);
        let added: Result<String, RedisError> = with_retry(|| {
            let mut connection = self.inner.connection.clone();
            let mut command = redis::cmd("XADD");
            command
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.inner.options.commands_kept)
                .arg("*")
                .arg(FIELD)
                .arg(&body);
            async move { command.query_async(&mut connection).await }
        })
        .await;
        if let Err(e) = added {
            lock(&self.inner.pending).remove(&id);
            return Err(unavailable(e));
        }
        // Wait for the published reply; every second, also look for the
        // stored one (in case the subscription was interrupted).
        let reply_key = self.reply_key(channel, id);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let wake = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                reply = &mut rx => {
                    return reply.map_err(|_| BusError::Dropped);
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            let stored: Result<Option<Vec<u8>>, RedisError> = connection.get(&reply_key).await;
            if let Ok(Some(body)) = stored {
                lock(&self.inner.pending).remove(&id);
                return serde_json::from_slice(&body).map_err(|e| BusError::Backend(e.to_string()));
            }
            if tokio::time::Instant::now() >= deadline {
                lock(&self.inner.pending).remove(&id);
                return Err(BusError::Timeout(timeout));
            }
        }
    }

    async fn consume(&self, channel: &str, consumer: &str) -> Result<CommandStream, BusError> {
        let (tx, rx) = mpsc::channel::<Result<Delivery, BusError>>(16);
        // Blocking reads need a connection of their own: a blocked
        // connection serves nobody else meanwhile.
        let reader = {
            let client = self.inner.settings.client().map_err(unavailable)?;
            let config = self
                .inner
                .settings
                .manager_config()
                .set_response_timeout(Some(self.inner.options.block + Duration::from_secs(5)));
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(unavailable)?
        };
        let consumer_loop = ConsumerLoop {
            bus: self.clone(),
            channel: channel.to_string(),
            stream: self.stream(channel),
            consumer: consumer.to_string(),
            reader,
            deliveries: tx,
        };
        consumer_loop.ensure_group().await?;
        let stop = self.inner.shutdown.child_token();
        tokio::spawn(consumer_loop.run(stop.clone()));
        let guard = stop.drop_guard();
        let stream = tokio_stream_from(rx).map(move |item| {
            let _alive = &guard;
            item
        });
        Ok(Box::pin(stream))
    }

    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError> {
        let body = serde_json::to_vec(event).map_err(|e| BusError::Backend(e.to_string()))?;
        with_retry(|| {
            let mut connection = self.inner.connection.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("PUBLISH")
                .arg(self.inner.settings.key(event.event.channel()))
                .arg(&body)
                .ignore()
                .cmd("XADD")
                .arg(self.inner.settings.key("events"))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.inner.options.events_kept)
                .arg("*")
                .arg(FIELD)
                .arg(&body)
                .ignore();
            async move { pipe.query_async::<()>(&mut connection).await }
        })
        .await
        .map_err(unavailable)
    }

    async fn subscribe(&self, channels: &[&str]) -> Result<EventStream, BusError> {
        Ok(draas_bus::event_stream(
            self.inner.events.subscribe(),
            channels,
        ))
    }

    async fn replay_events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, EventEnvelope)>, BusError> {
        let mut connection = self.inner.connection.clone();
        let start = after.map_or("-".to_string(), |a| format!("({a}"));
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(self.inner.settings.key("events"))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let event = serde_json::from_slice(fields.get(FIELD)?).ok()?;
                Some((id, event))
            })
            .collect())
    }

    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let mut connection = self.inner.connection.clone();
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XREVRANGE")
            .arg(self.stream(&format!("{channel}.dead-letter")))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                serde_json::from_slice::<DeadLetter>(fields.get(FIELD)?)
                    .ok()
                    .map(|mut d| {
                        d.id = id;
                        d
                    })
            })
            .collect())
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// === consumer loop ===

struct ConsumerLoop {
    bus: RedisBus,
    channel: String,
    stream: String,
    consumer: String,
    reader: ConnectionManager,
    deliveries: mpsc::Sender<Result<Delivery, BusError>>,
}

/// One stream entry: id and message body.
type Entry = (String, Option<Vec<u8>>);
/// A stream entry as Redis returns it: id and fields (none once deleted).
type RawEntry = (String, Option<HashMap<String, Vec<u8>>>);
/// `XREADGROUP`'s reply: entries per stream.
type ReadReply = Option<Vec<(String, Vec<RawEntry>)>>;
/// `XAUTOCLAIM`'s reply: next cursor, claimed entries, deleted ids.
type ClaimReply = (String, Vec<RawEntry>, Vec<String>);

impl ConsumerLoop {
    async fn ensure_group(&self) -> Result<(), BusError> {
        let mut connection = self.bus.inner.connection.clone();
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        let options = self.bus.inner.options.clone();
        let mut backoff = Duration::from_millis(100);
        // First, entries delivered to this consumer before it restarted.
        let mut own_pending_done = false;
        let mut last_claim = tokio::time::Instant::now() - options.claim_after;
        while !stop.is_cancelled() && !self.deliveries.is_closed() {
            let round: Result<(), RedisError> = async {
                if !own_pending_done {
                    let entries = self.read("0").await?;
                    own_pending_done = entries.is_empty();
                    for entry in entries {
                        self.deliver(entry, None).await;
                    }
                    return Ok(());
                }
                if last_claim.elapsed() >= options.claim_after / 2 {
                    last_claim = tokio::time::Instant::now();
                    for entry in self.claim_abandoned(options.claim_after).await? {
                        self.deliver(entry, None).await;
                    }
                }
                for entry in self.read(">").await? {
                    self.deliver(entry, Some(1)).await;
                }
                Ok(())
            }
            .await;
            match round {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        // Redis lost the group (restarted without persistence).
                        let _ = self.ensure_group().await;
                    } else {
                        debug!("reading {} failed: {e}", self.stream);
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// `XREADGROUP ... STREAMS <stream> <from>` (`>`: new entries, blocking;
    /// `0`: this consumer's pending entries).
    async fn read(&mut self, from: &str) -> Result<Vec<Entry>, RedisError> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(16);
        if from == ">" {
            command
                .arg("BLOCK")
                .arg(self.bus.inner.options.block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: ReadReply = command.query_async(&mut self.reader).await?;
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .map(|(id, fields)| (id, fields.and_then(|mut f| f.remove(FIELD))))
            .collect())
    }

    /// Takes over entries other consumers left idle too long.
    async fn claim_abandoned(&mut self, idle: Duration) -> Result<Vec<Entry>, RedisError> {
        let reply: ClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(16)
            .query_async(&mut self.reader)
            .await?;
        let claimed: Vec<Entry> = reply
            .1
            .into_iter()
            .map(|(id, fields)| (id, fields.and_then(|mut f| f.remove(FIELD))))
            .collect();
        if !claimed.is_empty() {
            info!(stream = %self.stream, count = claimed.len(), "re-claimed commands of a silent consumer");
        }
        Ok(claimed)
    }

    /// How many times `id` was delivered (from the group's pending list).
    async fn delivery_count(&mut self, id: &str) -> u32 {
        let reply: Result<Vec<(String, String, u64, u64)>, RedisError> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut self.reader)
            .await;
        match reply {
            Ok(rows) => rows.first().map_or(1, |r| r.3 as u32),
            Err(_) => 1,
        }
    }

    async fn deliver(&mut self, (id, body): Entry, known_count: Option<u32>) {
        let count = match known_count {
            Some(c) => c,
            None => self.delivery_count(&id).await,
        };
        let Some(body) = body else {
            // Trimmed or deleted while pending: nothing left to do.
            self.ack(&id).await;
            return;
        };
        let envelope = match serde_json::from_slice::<CommandEnvelope>(&body) {
            Ok(e) => e,
            Err(e) => {
                warn!(entry = %id, "unreadable command; moved to the dead-letter stream: {e}");
                self.dead_letter(&id, &body, None, &format!("unreadable: {e}"), count)
                    .await;
                return;
            }
        };
        if count > self.bus.inner.options.max_deliveries {
            warn!(entry = %id, command = %envelope.id, count, "delivered too often; moved to the dead-letter stream");
            let reason = format!("delivered {count} times without being acknowledged");
            self.dead_letter(&id, &body, Some(&envelope), &reason, count)
                .await;
            return;
        }
        let lease = CancellationToken::new();
        tokio::spawn(renew_lease(
            self.bus.clone(),
            self.stream.clone(),
            self.consumer.clone(),
            id.clone(),
            lease.clone(),
        ));
        let responder = RedisResponder {
            bus: self.bus.clone(),
            channel: self.channel.clone(),
            stream: self.stream.clone(),
            entry: id,
            lease: lease.drop_guard(),
        };
        let _ = self
            .deliveries
            .send(Ok(Delivery::new(envelope, count, Box::new(responder))))
            .await;
    }

    async fn ack(&self, id: &str) {
        let mut connection = self.bus.inner.connection.clone();
        let _: Result<(), RedisError> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(id)
            .query_async(&mut connection)
            .await;
    }

    async fn dead_letter(
        &self,
        id: &str,
        body: &[u8],
        envelope: Option<&CommandEnvelope>,
        reason: &str,
        deliveries: u32,
    ) {
        let letter = DeadLetter {
            id: String::new(),
            entry_id: id.to_string(),
            channel: self.channel.clone(),
            command: envelope.cloned(),
            raw: envelope
                .is_none()
                .then(|| String::from_utf8_lossy(body).to_string()),
            reason: reason.to_string(),
            deliveries,
            at: chrono::Utc::now(),
        };
        let mut connection = self.bus.inner.connection.clone();
        let stored: Result<(), RedisError> = redis::cmd("XADD")
            .arg(self.bus.stream(&format!("{}.dead-letter", self.channel)))
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg(FIELD)
            .arg(serde_json::to_vec(&letter).unwrap_or_default())
            .query_async(&mut connection)
            .await;
        if let Err(e) = stored {
            warn!("dead-lettering failed, leaving the entry pending: {e}");
            return;
        }
        if let Some(envelope) = envelope {
            let reply = CommandReply {
                version: MESSAGE_VERSION,
                command_id: envelope.id,
                worker_id: self.consumer.clone(),
                outcome: Outcome::Error {
                    code: ErrorCode::PlatformError,
                    message: format!("the command was dead-lettered: {reason}"),
                },
            };
            let _ = send_reply(&self.bus, &self.channel, &reply).await;
        }
        self.ack(id).await;
    }
}

/// Keeps claiming `entry` for `consumer` (resetting its idle time, without
/// counting a delivery) until the lease is dropped.
async fn renew_lease(
    bus: RedisBus,
    stream: String,
    consumer: String,
    entry: String,
    lease: CancellationToken,
) {
    let every = bus.inner.options.lease_renewal;
    loop {
        tokio::select! {
            () = lease.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let mut connection = bus.inner.connection.clone();
        let _: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(GROUP)
            .arg(&consumer)
            .arg(0)
            .arg(&entry)
            .arg("JUSTID")
            .query_async(&mut connection)
            .await;
    }
}

async fn send_reply(bus: &RedisBus, channel: &str, reply: &CommandReply) -> Result<(), BusError> {
    let body = serde_json::to_vec(reply).map_err(|e| BusError::Backend(e.to_string()))?;
    let key = bus.reply_key(channel, reply.command_id);
    with_retry(|| {
        let mut connection = bus.inner.connection.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(&body)
            .arg("EX")
            .arg(60)
            .ignore()
            .cmd("PUBLISH")
            .arg(&key)
            .arg(&body)
            .ignore();
        async move { pipe.query_async::<()>(&mut connection).await }
    })
    .await
    .map_err(unavailable)
}

struct RedisResponder {
    bus: RedisBus,
    channel: String,
    stream: String,
    entry: String,
    lease: tokio_util::sync::DropGuard,
}

#[async_trait]
impl Responder for RedisResponder {
    async fn reply(self: Box<Self>, reply: CommandReply) -> Result<(), BusError> {
        send_reply(&self.bus, &self.channel, &reply).await?;
        // Acknowledged only now: the worker recorded the effect before
        // replying, so a crash before this line means a redelivery that
        // the worker answers from its record.
        let mut connection = self.bus.inner.connection.clone();
        let acked: Result<(), RedisError> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.entry)
            .query_async(&mut connection)
            .await;
        drop(self.lease);
        acked.map_err(unavailable)
    }
}
