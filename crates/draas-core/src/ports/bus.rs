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
//! - A consumer takes a command off its channel only when it holds a
//!   [`Permit`] from its [`Credits`]: a busy worker leaves commands in the
//!   channel for its idle peers instead of leasing them. The permit travels
//!   with the [`Delivery`] and is given back when the delivery is dropped.
//! - [`MessageBus::request`] waits for the reply until its timeout and then
//!   fails with [`BusError::Timeout`]; the command may still be executed
//!   later (workers skip commands whose deadline passed).
//! - Events reach every subscriber connected when they are published, each
//!   with its **cursor**: its position in the capped stream of kept events,
//!   from which [`MessageBus::replay_events`] replays. A subscriber that
//!   reconnects asks for what came after the last cursor it saw.

use std::pin::Pin;
use std::sync::Arc;
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
    /// An event cursor this bus never gave out.
    #[error("not an event cursor of this bus: {0:?}")]
    InvalidCursor(String),
    /// Anything else.
    #[error("message bus error: {0}")]
    Backend(String),
}

/// Permission to hold one more command; dropping it gives it back.
pub struct Permit(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Permit {
    /// A permit that gives itself back by dropping `token` (a semaphore
    /// permit, say).
    pub fn new(token: impl Send + Sync + 'static) -> Self {
        Self(Box::new(token))
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// How many commands a consumer may hold at once (delivered and not yet
/// answered). Shared by every channel the consumer reads.
#[async_trait]
pub trait Credits: Send + Sync + 'static {
    /// Waits for a permit.
    async fn acquire(&self) -> Permit;
    /// A permit if one is free now.
    fn try_acquire(&self) -> Option<Permit>;
}

/// Sends the reply of one delivered command.
#[async_trait]
pub trait Responder: Send {
    /// Sends `reply` to the requester and acknowledges the command.
    async fn reply(self: Box<Self>, reply: CommandReply) -> Result<(), BusError>;
}

/// One command handed to a consumer, with the permit it was taken with.
pub struct Delivery {
    /// The command.
    pub envelope: CommandEnvelope,
    /// How many times it was delivered (1 the first time).
    pub delivery_count: u32,
    responder: Box<dyn Responder>,
    permit: Permit,
}

impl Delivery {
    /// A delivery answered through `responder`, holding `permit` until it
    /// is answered or dropped.
    pub fn new(
        envelope: CommandEnvelope,
        delivery_count: u32,
        responder: Box<dyn Responder>,
        permit: Permit,
    ) -> Self {
        Self {
            envelope,
            delivery_count,
            responder,
            permit,
        }
    }

    /// Replies and acknowledges; the permit is given back afterwards.
    pub async fn reply(self, reply: CommandReply) -> Result<(), BusError> {
        let Self {
            responder, permit, ..
        } = self;
        let result = responder.reply(reply).await;
        drop(permit);
        result
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

/// The commands of a consumer's channels.
pub type CommandStream = Pin<Box<dyn Stream<Item = Result<Delivery, BusError>> + Send>>;

/// An event with its cursor in the stream of kept events.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent {
    /// Pass it to [`MessageBus::replay_events`] to get what came after.
    pub cursor: String,
    /// The event.
    pub envelope: EventEnvelope,
}

/// Events, in publication order per channel.
pub type EventStream = Pin<Box<dyn Stream<Item = PublishedEvent> + Send>>;

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

    /// Joins `channels` as consumer `consumer` (stable across restarts of
    /// the same worker, so its unacknowledged commands come back to it), and
    /// delivers their commands on one stream. A command is taken off its
    /// channel only with a permit from `credits`.
    async fn consume(
        &self,
        channels: &[String],
        consumer: &str,
        credits: Arc<dyn Credits>,
    ) -> Result<CommandStream, BusError>;

    /// Publishes `event` on its channel.
    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError>;

    /// Receives events of `channels` published from now on.
    async fn subscribe(&self, channels: &[&str]) -> Result<EventStream, BusError>;

    /// Up to `limit` kept events published after cursor `after` (from the
    /// oldest kept when `None`), with their cursors, oldest first. A cursor
    /// this bus never gave out is [`BusError::InvalidCursor`].
    async fn replay_events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PublishedEvent>, BusError>;

    /// Commands on `channel` that no worker has finished with yet (waiting
    /// to be taken, or taken and not acknowledged): the backlog.
    async fn backlog(&self, channel: &str) -> Result<u64, BusError>;

    /// The newest `limit` dead letters of a platform's commands (its
    /// shared channel and its workers' private ones), newest first.
    async fn dead_letters(
        &self,
        _platform_channel: &str,
        _limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        Ok(Vec::new())
    }

    /// Whether the bus answers (readiness checks).
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Whether a command can be delivered more than once (a consumer died
    /// before acknowledging it, a lease expired). Consumers of a bus that
    /// never redelivers need not deduplicate.
    fn redelivers(&self) -> bool {
        true
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
    async fn consume(
        &self,
        channels: &[String],
        consumer: &str,
        credits: Arc<dyn Credits>,
    ) -> Result<CommandStream, BusError> {
        (**self).consume(channels, consumer, credits).await
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
    ) -> Result<Vec<PublishedEvent>, BusError> {
        (**self).replay_events(after, limit).await
    }
    async fn dead_letters(&self, channel: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        (**self).dead_letters(channel, limit).await
    }
    async fn backlog(&self, channel: &str) -> Result<u64, BusError> {
        (**self).backlog(channel).await
    }
    async fn ping(&self) -> Result<(), BusError> {
        (**self).ping().await
    }
    fn redelivers(&self) -> bool {
        (**self).redelivers()
    }
}
