//! The message bus port: request/response commands to competing consumers,
//! and broadcast events.
//!
//! # Delivery semantics
//!
//! - A command sent on a platform channel is delivered to **one** consumer
//!   of that channel (competing consumers), **at least once**: a consumer
//!   that dies before replying causes a redelivery (Redis: pending entries
//!   are re-claimed). Consumers therefore deduplicate by
//!   [`CommandEnvelope::id`](crate::messages::CommandEnvelope).
//! - [`Delivery::reply`] sends the reply and acknowledges the command. A
//!   delivery dropped without a reply is not acknowledged.
//! - [`MessageBus::request`] waits for the reply until its timeout and then
//!   fails with [`BusError::Timeout`]; the command may still be executed
//!   later (workers skip commands whose deadline passed).
//! - Events reach every subscriber connected when they are published. They
//!   are also kept in a capped stream so a subscriber can replay from a
//!   cursor where the backend supports it.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::messages::{CommandEnvelope, CommandReply, EventEnvelope};

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Nobody consumes the channel.
    #[error("no consumer on channel {0}")]
    NoConsumer(String),
    /// The consumer dropped the command without replying.
    #[error("the command was dropped without a reply")]
    Dropped,
    /// The backend cannot be reached right now.
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("message bus error: {0}")]
    Backend(String),
}

/// Sends the reply of one delivered command.
#[async_trait]
pub trait Responder: Send {
    /// Sends `reply` to the requester and acknowledges the command.
    async fn reply(self: Box<Self>, reply: CommandReply) -> Result<(), BusError>;
}

/// One command handed to a consumer.
pub struct Delivery {
    /// The command.
    pub envelope: CommandEnvelope,
    /// How many times it was delivered (1 the first time).
    pub delivery_count: u32,
    responder: Box<dyn Responder>,
}

impl Delivery {
    /// A delivery answered through `responder`.
    pub fn new(
        envelope: CommandEnvelope,
        delivery_count: u32,
        responder: Box<dyn Responder>,
    ) -> Self {
        Self {
            envelope,
            delivery_count,
            responder,
        }
    }

    /// Replies and acknowledges.
    pub async fn reply(self, reply: CommandReply) -> Result<(), BusError> {
        self.responder.reply(reply).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .field("delivery_count", &self.delivery_count)
            .finish()
    }
}

/// A command the bus gave up on: unreadable, or delivered too often without
/// being acknowledged (its consumers kept dying). Kept for operators.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Position in the dead-letter stream.
    #[serde(default)]
    pub id: String,
    /// Position the command had in its channel.
    pub entry_id: String,
    /// The channel it was sent on.
    pub channel: String,
    /// The command, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandEnvelope>,
    /// The raw message, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// Why it was given up.
    pub reason: String,
    /// Deliveries made.
    pub deliveries: u32,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The commands of one channel, for one consumer.
pub type CommandStream = Pin<Box<dyn Stream<Item = Result<Delivery, BusError>> + Send>>;

/// Events, in publication order per channel.
pub type EventStream = Pin<Box<dyn Stream<Item = EventEnvelope> + Send>>;

/// The bus.
#[async_trait]
pub trait MessageBus: Send + Sync + 'static {
    /// Sends `command` on `channel` and waits up to `timeout` for the reply.
    async fn request(
        &self,
        channel: &str,
        command: CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandReply, BusError>;

    /// Joins `channel` as consumer `consumer` (stable across restarts of the
    /// same worker, so its unacknowledged commands come back to it).
    async fn consume(&self, channel: &str, consumer: &str) -> Result<CommandStream, BusError>;

    /// Publishes `event` on its channel.
    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError>;

    /// Receives events of `channels` published from now on.
    async fn subscribe(&self, channels: &[&str]) -> Result<EventStream, BusError>;

    /// Up to `limit` kept events published after cursor `after` (from the
    /// oldest kept when `None`), with their cursors, oldest first.
    async fn replay_events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, EventEnvelope)>, BusError>;

    /// The newest `limit` dead letters of `channel`, newest first.
    async fn dead_letters(
        &self,
        _channel: &str,
        _limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl<T: MessageBus + ?Sized> MessageBus for std::sync::Arc<T> {
    async fn request(
        &self,
        channel: &str,
        command: CommandEnvelope,
        timeout: Duration,
    ) -> Result<CommandReply, BusError> {
        (**self).request(channel, command, timeout).await
    }
    async fn consume(&self, channel: &str, consumer: &str) -> Result<CommandStream, BusError> {
        (**self).consume(channel, consumer).await
    }
    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError> {
        (**self).publish(event).await
    }
    async fn subscribe(&self, channels: &[&str]) -> Result<EventStream, BusError> {
        (**self).subscribe(channels).await
    }
    async fn replay_events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, EventEnvelope)>, BusError> {
        (**self).replay_events(after, limit).await
    }
    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        (**self).dead_letters(channel, limit).await
    }
}
