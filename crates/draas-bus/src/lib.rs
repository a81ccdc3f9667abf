//! # draas-bus
//!
//! The in-process [`MessageBus`]: the default of `draas up`, where the
//! control plane and the platform workers share one process. Same contract
//! as the Redis bus (see `draas_core::ports::bus`), no server needed:
//!
//! - each command channel is a multi-consumer queue: a command goes to
//!   exactly one consumer of its channel (competing consumers), and a
//!   consumer takes one off the queue only once it holds a permit;
//! - the reply travels on a one-shot channel; `request` gives up at its
//!   timeout, and a delivery dropped without a reply fails the request at
//!   once ([`BusError::Dropped`]) since in-process nothing can redeliver it;
//! - a request on a channel nobody consumes fails fast with
//!   [`BusError::NoConsumer`];
//! - events fan out to every subscriber through one broadcast channel,
//!   each with its cursor (a counter; the newest [`EVENTS_KEPT`] are kept for
//!   replay); a subscriber that falls more than [`EVENT_BUFFER`] events
//!   behind skips the ones it missed (they remain replayable).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use draas_core::messages::{CommandEnvelope, CommandReply, EventEnvelope};
use draas_core::ports::bus::{
    BusError, CommandStream, Credits, Delivery, EventStream, MessageBus, PublishedEvent, Responder,
};
use futures::StreamExt;
use tokio::sync::{broadcast, oneshot};

/// Events a slow subscriber may fall behind before it skips some.
pub const EVENT_BUFFER: usize = 4096;
/// Events kept for replay.
pub const EVENTS_KEPT: usize = 10_000;

/// The events of `channels` from a local broadcast, as an [`EventStream`].
/// A subscriber that falls behind skips what it missed (logged) rather than
/// ending. Shared with the Redis bus, which fans its pub/sub messages out
/// the same way (docs/ARCHITECTURE.md allows that one adapter dependency).
pub fn event_stream(
    receiver: broadcast::Receiver<PublishedEvent>,
    channels: &[&str],
) -> EventStream {
    let wanted: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("event subscriber fell behind; skipped {n} events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |event| {
        let keep = wanted.iter().any(|c| c == event.envelope.event.channel());
        async move { keep }
    });
    Box::pin(stream)
}

/// A command waiting for a consumer, with the way back to its requester.
struct Pending {
    envelope: CommandEnvelope,
    reply: oneshot::Sender<CommandReply>,
}

/// One command channel: a queue and the number of consumers attached.
struct Channel {
    sender: async_channel::Sender<Pending>,
    receiver: async_channel::Receiver<Pending>,
    consumers: usize,
}

struct Inner {
    channels: Mutex<HashMap<String, Channel>>,
    events: broadcast::Sender<PublishedEvent>,
    /// The newest events with their cursors, for replay.
    kept: Mutex<(u64, std::collections::VecDeque<(u64, EventEnvelope)>)>,
}

/// The in-process bus. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    /// An empty bus.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            inner: Arc::new(Inner {
                channels: Mutex::new(HashMap::new()),
                events,
                kept: Mutex::new((0, std::collections::VecDeque::new())),
            }),
        }
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single insert or counter update).
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct OneshotResponder(oneshot::Sender<CommandReply>);

#[async_trait]
impl Responder for OneshotResponder {
    async fn reply(self: Box<Self>, reply: CommandReply) -> Result<(), BusError> {
        // The requester may have timed out and left; that is not an error
        // of the consumer.
        let _ = self.0.send(reply);
        Ok(())
    }
}

/// Detaches a consumer from its channel when its stream is dropped.
struct ConsumerGuard {
    bus: InProcessBus,
    channel: String,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        if let Some(channel) = self.bus.channels().get_mut(&self.channel) {
            channel.consumers = channel.consumers.saturating_sub(1);
        }
    }
}

#[async_trait]
impl MessageBus for InProcessBus {
    async fn backlog(&self, channel: &str) -> Result<u64, BusError> {
        // Taken commands are being executed by their consumer right away:
        // the backlog is what waits in the queue.
        Ok(self
            .channels()
            .get(channel)
            .map_or(0, |c| c.receiver.len() as u64))
    }

    async fn request(
        &self,
        channel: &str,
        command: CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandReply, BusError> {
        let sender = {
            let channels = self.channels();
            match channels.get(channel) {
                Some(c) if c.consumers > 0 => c.sender.clone(),
                _ => return Err(BusError::NoConsumer(channel.to_string())),
            }
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(Pending {
                envelope: command,
                reply,
            })
            .await
            .map_err(|_| BusError::NoConsumer(channel.to_string()))?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Dropped),
            Err(_) => Err(BusError::Timeout(timeout)),
        }
    }

    async fn consume(
        &self,
        channels: &[String],
        _consumer: &str,
        credits: Arc<dyn Credits>,
    ) -> Result<CommandStream, BusError> {
        if channels.is_empty() {
            return Err(BusError::Backend(
                "consume needs at least one channel".into(),
            ));
        }
        let mut receivers = Vec::with_capacity(channels.len());
        let mut guards = Vec::with_capacity(channels.len());
        {
            let mut map = self.channels();
            for channel in channels {
                let entry = map.entry(channel.clone()).or_insert_with(|| {
                    let (sender, receiver) = async_channel::unbounded();
                    Channel {
                        sender,
                        receiver,
                        consumers: 0,
                    }
                });
                entry.consumers += 1;
                receivers.push(entry.receiver.clone());
                guards.push(ConsumerGuard {
                    bus: self.clone(),
                    channel: channel.clone(),
                });
            }
        }
        // A command stays in its queue (for another consumer) until this
        // one holds a permit; only then is one received, from whichever
        // channel has one first. `recv` is cancel-safe: the losers of the
        // race lose nothing.
        let stream = futures::stream::unfold(
            (receivers, credits, guards),
            |(receivers, credits, guards)| async move {
                let permit = credits.acquire().await;
                let waits = receivers.iter().map(|r| Box::pin(r.recv()));
                // A queue closes only with the bus itself.
                let (received, _, _) = futures::future::select_all(waits).await;
                let pending: Pending = received.ok()?;
                let delivery = Delivery::new(
                    pending.envelope,
                    1,
                    Box::new(OneshotResponder(pending.reply)),
                    permit,
                );
                Some((Ok(delivery), (receivers, credits, guards)))
            },
        );
        Ok(Box::pin(stream))
    }

    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError> {
        // Cursor and broadcast under one lock, so subscribers see events in
        // cursor order.
        let mut kept = self.inner.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.0 += 1;
        let cursor = kept.0;
        kept.1.push_back((cursor, event.clone()));
        if kept.1.len() > EVENTS_KEPT {
            kept.1.pop_front();
        }
        // No subscriber is not an error: events are also kept.
        let _ = self.inner.events.send(PublishedEvent {
            cursor: cursor.to_string(),
            envelope: event.clone(),
        });
        Ok(())
    }

    async fn replay_events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PublishedEvent>, BusError> {
        let after: u64 = match after {
            None => 0,
            Some(a) => a
                .parse()
                .map_err(|_| BusError::InvalidCursor(a.to_string()))?,
        };
        let kept = self.inner.kept.lock().unwrap_or_else(|p| p.into_inner());
        Ok(kept
            .1
            .iter()
            .filter(|(cursor, _)| *cursor > after)
            .take(limit)
            .map(|(cursor, event)| PublishedEvent {
                cursor: cursor.to_string(),
                envelope: event.clone(),
            })
            .collect())
    }

    async fn subscribe(&self, channels: &[&str]) -> Result<EventStream, BusError> {
        Ok(event_stream(self.inner.events.subscribe(), channels))
    }

    /// Never: a command is handed to one consumer once, and a delivery
    /// dropped without a reply fails its request instead of coming back.
    fn redelivers(&self) -> bool {
        false
    }
}
