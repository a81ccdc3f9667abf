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
//!   (the worker records the command's effect before it replies). A
//!   consumer reads only as many entries as it holds permits (its worker's
//!   free capacity), so a busy worker leaves commands to its idle peers. It
//!   reads all its channels (the platform's shared one and its private one)
//!   in one `XREADGROUP`, at most `max(1, permits / channels)` entries of
//!   each; an entry beyond the permits held (both channels answered at
//!   once) waits for the next free permit, with its claim renewed. While a
//!   consumer works on a command it renews its claim every
//!   [`BusOptions::lease_renewal`]; an entry left idle for
//!   [`BusOptions::claim_after`] (its consumer died) is re-claimed by
//!   another consumer with `XAUTOCLAIM`. After [`BusOptions::max_deliveries`]
//!   deliveries it goes to the platform's dead-letter stream
//!   `{p}:<platform channel>.dead-letter` (private channels included) and
//!   its requester gets an error reply.
//! - **Replies** are published on `{p}:<channel>.response.<id>` and also
//!   stored under that key for a minute, so a requester whose subscription
//!   was interrupted (Redis restart) still finds its reply.
//! - **Events** are appended to the capped stream `{p}:events` and then
//!   published on `{p}:<channel>` with their stream id as cursor, in one
//!   script (so live subscribers and replays agree on cursors).
//!
//! Pub/sub runs on one RESP3 connection manager with automatic
//! resubscription, so subscriptions survive Redis restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use draas_core::messages::{
    platform_channel, CommandEnvelope, CommandReply, ErrorCode, EventEnvelope, Outcome,
    EVENT_CHANNELS, MESSAGE_VERSION,
};
use draas_core::ports::bus::{
    BusError, CommandStream, Credits, DeadLetter, Delivery, EventStream, MessageBus, Permit,
    PublishedEvent, Responder,
};
use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, PushInfo, RedisError, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::connection::{is_unavailable, with_retry, RedisSettings};

/// The consumer group of every command stream.
const GROUP: &str = "workers";
/// Field of a stream entry holding the message.
const FIELD: &str = "message";
/// Most entries one read takes.
const MAX_BATCH: usize = 64;

/// Appends an event to the kept stream and publishes it with its stream id
/// as cursor. A retried call (same token) publishes nothing twice.
/// KEYS: events stream, token key. ARGV: kept, channel, event JSON.
const PUBLISH: &str = r#"
local done = redis.call('GET', KEYS[2])
if done then return done end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'message', ARGV[3])
redis.call('PUBLISH', ARGV[2], '{"cursor":"' .. id .. '","event":' .. ARGV[3] .. '}')
redis.call('SET', KEYS[2], id, 'EX', 60)
return id
"#;

/// An event as it travels on pub/sub: with its cursor.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    cursor: String,
    event: EventEnvelope,
}

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
    events: broadcast::Sender<PublishedEvent>,
    publish: redis::Script,
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
            publish: redis::Script::new(PUBLISH),
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
    events: broadcast::Sender<PublishedEvent>,
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
            Some((false, body)) => match serde_json::from_slice::<WireEvent>(&body) {
                Ok(wire) => {
                    let _ = events.send(PublishedEvent {
                        cursor: wire.cursor,
                        envelope: wire.event,
                    });
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

    async fn consume(
        &self,
        channels: &[String],
        consumer: &str,
        credits: Arc<dyn Credits>,
    ) -> Result<CommandStream, BusError> {
        if channels.is_empty() {
            return Err(BusError::Backend(
                "consume needs at least one channel".into(),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel::<Result<Delivery, BusError>>();
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
            channels: channels
                .iter()
                .map(|channel| Source {
                    channel: channel.clone(),
                    stream: self.stream(channel),
                    own_pending_after: Some("0".to_string()),
                })
                .collect(),
            consumer: consumer.to_string(),
            reader,
            credits,
            deliveries: tx,
        };
        consumer_loop.ensure_groups().await?;
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
        let token = self.inner.settings.key(&format!("once:{}", Uuid::new_v4()));
        with_retry(|| {
            let mut connection = self.inner.connection.clone();
            let mut invocation = self.inner.publish.prepare_invoke();
            invocation
                .key(self.inner.settings.key("events"))
                .key(&token)
                .arg(self.inner.options.events_kept)
                .arg(self.inner.settings.key(event.event.channel()))
                .arg(&body);
            async move { invocation.invoke_async::<String>(&mut connection).await }
        })
        .await
        .map(|_| ())
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
    ) -> Result<Vec<PublishedEvent>, BusError> {
        if let Some(cursor) = after {
            if !is_stream_id(cursor) {
                return Err(BusError::InvalidCursor(cursor.to_string()));
            }
        }
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
            .filter_map(|(cursor, fields)| {
                let envelope = serde_json::from_slice(fields.get(FIELD)?).ok()?;
                Some(PublishedEvent { cursor, envelope })
            })
            .collect())
    }

    async fn backlog(&self, channel: &str) -> Result<u64, BusError> {
        // Per consumer group: entries not yet delivered (lag) plus entries
        // delivered and not acknowledged (pending).
        let mut connection = self.inner.connection.clone();
        let groups: Result<Vec<HashMap<String, redis::Value>>, RedisError> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream(channel))
            .query_async(&mut connection)
            .await;
        let groups = match groups {
            Ok(groups) => groups,
            // No stream yet: nothing was ever sent on the channel.
            Err(e) if e.to_string().contains("no such key") => return Ok(0),
            Err(e) => return Err(unavailable(e)),
        };
        let number = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        Ok(groups
            .iter()
            .filter(|g| {
                matches!(g.get("name"), Some(redis::Value::BulkString(name)) if name == GROUP.as_bytes())
            })
            .map(|g| number(g.get("pending")) + number(g.get("lag")))
            .sum())
    }

    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        let mut connection = self.inner.connection.clone();
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XREVRANGE")
            .arg(self.dead_letter_stream(channel))
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

    async fn ping(&self) -> Result<(), BusError> {
        let mut connection = self.inner.connection.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }
}

/// Whether `text` is a stream id (`<ms>-<seq>`).
fn is_stream_id(text: &str) -> bool {
    text.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

impl RedisBus {
    /// Where dead letters of commands on `channel` are kept: one stream per
    /// platform, for its shared and its workers' private channels alike.
    fn dead_letter_stream(&self, channel: &str) -> String {
        self.stream(&format!("{}.dead-letter", platform_channel(channel)))
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// === consumer loop ===

/// One channel a consumer reads.
struct Source {
    channel: String,
    stream: String,
    /// Where the re-reading of this consumer's own pending entries (from
    /// before a restart) stands; `None` once done.
    own_pending_after: Option<String>,
}

struct ConsumerLoop {
    bus: RedisBus,
    channels: Vec<Source>,
    consumer: String,
    reader: ConnectionManager,
    credits: Arc<dyn Credits>,
    deliveries: mpsc::UnboundedSender<Result<Delivery, BusError>>,
}

/// One stream entry: which source, its id, its message body.
struct Entry {
    source: usize,
    id: String,
    body: Option<Vec<u8>>,
    /// Deliveries so far, when known without asking Redis.
    count: Option<u32>,
}

/// A stream entry as Redis returns it: id and fields (none once deleted).
type RawEntry = (String, Option<HashMap<String, Vec<u8>>>);
/// `XREADGROUP`'s reply: entries per stream.
type ReadReply = Option<Vec<(String, Vec<RawEntry>)>>;
/// `XAUTOCLAIM`'s reply: next cursor, claimed entries, deleted ids.
type ClaimReply = (String, Vec<RawEntry>, Vec<String>);

fn body_of(fields: Option<HashMap<String, Vec<u8>>>) -> Option<Vec<u8>> {
    fields.and_then(|mut f| f.remove(FIELD))
}

impl ConsumerLoop {
    async fn ensure_groups(&self) -> Result<(), BusError> {
        for source in &self.channels {
            self.ensure_group(&source.stream).await?;
        }
        Ok(())
    }

    async fn ensure_group(&self, stream: &str) -> Result<(), BusError> {
        let mut connection = self.bus.inner.connection.clone();
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
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
        let mut last_claim = tokio::time::Instant::now() - options.claim_after;
        while !stop.is_cancelled() && !self.deliveries.is_closed() {
            // Nothing is read without a permit for it.
            let first = tokio::select! {
                () = stop.cancelled() => break,
                permit = self.credits.acquire() => permit,
            };
            let mut permits = vec![first];
            while permits.len() < MAX_BATCH {
                match self.credits.try_acquire() {
                    Some(permit) => permits.push(permit),
                    None => break,
                }
            }
            let round = self.next_entries(permits.len(), &mut last_claim).await;
            match round {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    let mut entries = entries.into_iter();
                    while let Some(entry) = entries.next() {
                        // Read after this consumer stopped (a blocking read
                        // was under way): hand the rest to the others now
                        // rather than leave it pending until re-claimed.
                        if stop.is_cancelled() || self.deliveries.is_closed() {
                            self.give_back(std::iter::once(entry).chain(entries)).await;
                            return;
                        }
                        let permit = match permits.pop() {
                            Some(permit) => permit,
                            None => tokio::select! {
                                () = stop.cancelled() => {
                                    self.give_back(std::iter::once(entry).chain(entries))
                                        .await;
                                    return;
                                }
                                permit = self.credits.acquire() => permit,
                            },
                        };
                        self.deliver(entry, permit).await;
                    }
                }
                Err(e) => {
                    drop(permits);
                    if e.code() == Some("NOGROUP") {
                        // Redis lost the group (restarted without persistence).
                        let _ = self.ensure_groups().await;
                    } else {
                        debug!(consumer = %self.consumer, "reading commands failed: {e}");
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

    /// Up to about `wanted` entries: first this consumer's own pending ones
    /// (from before a restart), then entries other consumers abandoned, then
    /// new ones (blocking).
    async fn next_entries(
        &mut self,
        wanted: usize,
        last_claim: &mut tokio::time::Instant,
    ) -> Result<Vec<Entry>, RedisError> {
        for index in 0..self.channels.len() {
            let Some(after) = self.channels[index].own_pending_after.clone() else {
                continue;
            };
            let entries = self.read_own_pending(index, &after, wanted).await?;
            match entries.last() {
                Some(last) => {
                    self.channels[index].own_pending_after = Some(last.id.clone());
                    return Ok(entries);
                }
                None => self.channels[index].own_pending_after = None,
            }
        }
        let claim_after = self.bus.inner.options.claim_after;
        if last_claim.elapsed() >= claim_after / 2 {
            *last_claim = tokio::time::Instant::now();
            let mut claimed = Vec::new();
            for index in 0..self.channels.len() {
                if claimed.len() >= wanted {
                    break;
                }
                claimed.extend(
                    self.claim_abandoned(index, claim_after, wanted - claimed.len())
                        .await?,
                );
            }
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        self.read_new(wanted).await
    }

    /// This consumer's pending entries after `after` (no blocking).
    async fn read_own_pending(
        &mut self,
        index: usize,
        after: &str,
        count: usize,
    ) -> Result<Vec<Entry>, RedisError> {
        let reply: ReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.channels[index].stream)
            .arg(after)
            .query_async(&mut self.reader)
            .await?;
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .map(|(id, fields)| Entry {
                source: index,
                id,
                body: body_of(fields),
                count: None,
            })
            .collect())
    }

    /// New entries of every channel, waiting up to the block time.
    async fn read_new(&mut self, wanted: usize) -> Result<Vec<Entry>, RedisError> {
        let per_stream = wanted;
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(per_stream)
            .arg("BLOCK")
            .arg(self.bus.inner.options.block.as_millis() as u64)
            .arg("STREAMS");
        for source in &self.channels {
            command.arg(&source.stream);
        }
        for _ in &self.channels {
            command.arg(">");
        }
        let reply: ReadReply = command.query_async(&mut self.reader).await?;
        let mut entries = Vec::new();
        for (stream, raw) in reply.into_iter().flatten() {
            let Some(source) = self.channels.iter().position(|s| s.stream == stream) else {
                continue;
            };
            entries.extend(raw.into_iter().map(|(id, fields)| Entry {
                source,
                id,
                body: body_of(fields),
                count: Some(1),
            }));
        }
        Ok(entries)
    }

    /// Takes over up to `count` entries other consumers left idle too long.
    async fn claim_abandoned(
        &mut self,
        index: usize,
        idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, RedisError> {
        let reply: ClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.channels[index].stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.reader)
            .await?;
        let claimed: Vec<Entry> = reply
            .1
            .into_iter()
            .map(|(id, fields)| Entry {
                source: index,
                id,
                body: body_of(fields),
                count: None,
            })
            .collect();
        if !claimed.is_empty() {
            info!(stream = %self.channels[index].stream, count = claimed.len(), "re-claimed commands of a silent consumer");
        }
        Ok(claimed)
    }

    /// How many times `id` was delivered (from the group's pending list).
    async fn delivery_count(&mut self, stream: &str, id: &str) -> u32 {
        let reply: Result<Vec<(String, String, u64, u64)>, RedisError> = redis::cmd("XPENDING")
            .arg(stream)
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

    async fn deliver(&mut self, entry: Entry, permit: Permit) {
        let source = entry.source;
        let channel = self.channels[entry.source].channel.clone();
        let stream = self.channels[entry.source].stream.clone();
        let count = match entry.count {
            Some(c) => c,
            None => self.delivery_count(&stream, &entry.id).await,
        };
        let id = entry.id;
        let Some(body) = entry.body else {
            // Trimmed or deleted while pending: nothing left to do.
            self.ack(&stream, &id).await;
            return;
        };
        let envelope = match serde_json::from_slice::<CommandEnvelope>(&body) {
            Ok(e) => e,
            Err(e) => {
                warn!(entry = %id, "unreadable command; moved to the dead-letter stream: {e}");
                let letter = Letter {
                    channel: &channel,
                    stream: &stream,
                    id: &id,
                    body: &body,
                    envelope: None,
                };
                self.dead_letter(letter, &format!("unreadable: {e}"), count)
                    .await;
                return;
            }
        };
        if count > self.bus.inner.options.max_deliveries {
            warn!(entry = %id, command = %envelope.id, count, "delivered too often; moved to the dead-letter stream");
            let reason = format!("delivered {count} times without being acknowledged");
            let letter = Letter {
                channel: &channel,
                stream: &stream,
                id: &id,
                body: &body,
                envelope: Some(&envelope),
            };
            self.dead_letter(letter, &reason, count).await;
            return;
        }
        let lease = CancellationToken::new();
        tokio::spawn(renew_lease(
            self.bus.clone(),
            stream.clone(),
            self.consumer.clone(),
            id.clone(),
            lease.clone(),
        ));
        let responder = RedisResponder {
            bus: self.bus.clone(),
            channel,
            stream,
            entry: id.clone(),
            lease: lease.drop_guard(),
        };
        let delivery = Delivery::new(envelope, count, Box::new(responder), permit);
        if let Err(unsent) = self.deliveries.send(Ok(delivery)) {
            // The consumer is gone (its worker stopped) just now. Dropping
            // the delivery ends its lease; the entry goes back to the group.
            drop(unsent);
            self.give_back(std::iter::once(Entry {
                source,
                id,
                body: Some(body),
                count: None,
            }))
            .await;
        }
    }

    /// Hands entries this consumer read but will not execute back to the
    /// group: each is added again to its stream (same message: the
    /// requester's reply channel is per command, not per entry) and the
    /// original acknowledged, in one transaction. Another consumer takes
    /// it at once instead of after the claim timeout.
    async fn give_back(&self, entries: impl Iterator<Item = Entry>) {
        for entry in entries {
            let stream = &self.channels[entry.source].stream;
            let Some(body) = entry.body else {
                self.ack(stream, &entry.id).await;
                continue;
            };
            let mut connection = self.bus.inner.connection.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg(FIELD)
                .arg(&body)
                .ignore()
                .cmd("XACK")
                .arg(stream)
                .arg(GROUP)
                .arg(&entry.id)
                .ignore();
            if let Err(e) = pipe.query_async::<()>(&mut connection).await {
                warn!(entry = %entry.id, "could not hand a command back; it is re-claimed later: {e}");
            } else {
                debug!(entry = %entry.id, "handed a command back to the other consumers");
            }
        }
    }

    async fn ack(&self, stream: &str, id: &str) {
        let mut connection = self.bus.inner.connection.clone();
        let _: Result<(), RedisError> = redis::cmd("XACK")
            .arg(stream)
            .arg(GROUP)
            .arg(id)
            .query_async(&mut connection)
            .await;
    }

    async fn dead_letter(&self, letter: Letter<'_>, reason: &str, deliveries: u32) {
        let Letter {
            channel,
            stream,
            id,
            body,
            envelope,
        } = letter;
        let record = DeadLetter {
            id: String::new(),
            entry_id: id.to_string(),
            channel: channel.to_string(),
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
            .arg(self.bus.dead_letter_stream(channel))
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg(FIELD)
            .arg(serde_json::to_vec(&record).unwrap_or_default())
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
            let _ = send_reply(&self.bus, channel, &reply).await;
        }
        self.ack(stream, id).await;
    }
}

/// An entry being moved to the dead-letter stream.
struct Letter<'a> {
    channel: &'a str,
    stream: &'a str,
    id: &'a str,
    body: &'a [u8],
    envelope: Option<&'a CommandEnvelope>,
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
