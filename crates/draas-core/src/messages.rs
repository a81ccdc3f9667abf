//! What travels on the bus: commands (request/response, from the control
//! plane to one worker of a platform) and events (broadcast).
//!
//! Every message is versioned JSON. A reader that meets a message type it
//! does not know gets [`Command::Unknown`] / [`Event::Unknown`]: it logs and
//! acknowledges it, it never crashes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::DrasiServerConfig;
use crate::instance::{
    ActualState, InstanceId, InstanceStatus, PlatformType, Reason, RuntimeInfo, ServerConfiguration,
};

/// Version of the message format written by this build.
pub const MESSAGE_VERSION: u32 = 1;

/// Event channel of instance lifecycle events (started, stopped, ...).
pub const INSTANCE_EVENTS: &str = "instance.events";
/// Event channel of status changes and worker heartbeats.
pub const STATUS_EVENTS: &str = "status.events";
/// Event channel of configuration changes.
pub const CONFIGURATION_EVENTS: &str = "configuration.events";
/// Every event channel.
pub const EVENT_CHANNELS: [&str; 3] = [INSTANCE_EVENTS, STATUS_EVENTS, CONFIGURATION_EVENTS];

/// The reply channel of a request on `channel`.
pub fn reply_channel(channel: &str, request: Uuid) -> String {
    format!("{channel}.response.{request}")
}

/// The platform channel a command channel belongs to: a worker's private
/// channel (`instance.commands.process.worker.<id>`) belongs to its
/// platform's (`instance.commands.process`). Dead letters of both are kept
/// together under the platform's.
pub fn platform_channel(channel: &str) -> &str {
    channel
        .find(WORKER_CHANNEL_INFIX)
        .map_or(channel, |at| &channel[..at])
}

/// What separates a platform channel from a worker's id in the name of the
/// worker's private channel.
pub const WORKER_CHANNEL_INFIX: &str = ".worker.";

// === commands ===

/// A command with its delivery metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandEnvelope {
    /// Message format version.
    pub version: u32,
    /// Unique per command; workers use it to execute a redelivered command
    /// only once.
    pub id: Uuid,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// After this instant nobody waits for the reply; a worker skips it.
    pub deadline: DateTime<Utc>,
    /// The instance it is about.
    pub instance_id: InstanceId,
    /// What to do.
    pub command: Command,
    /// The fencing token of the reconciler's lease, on commands the
    /// reconciler caused: a worker refuses it when the lease has moved on
    /// to a newer term (see `lease`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// The W3C `traceparent` of the request that caused it: the worker's
    /// log lines for the command carry its trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl CommandEnvelope {
    /// A new command for `instance_id`, due within `deadline`.
    pub fn new(instance_id: InstanceId, command: Command, deadline: std::time::Duration) -> Self {
        let now = Utc::now();
        Self {
            version: MESSAGE_VERSION,
            id: Uuid::new_v4(),
            issued_at: now,
            deadline: now + chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::MAX),
            instance_id,
            command,
            fence: None,
            traceparent: None,
        }
    }

    /// The same command, part of the trace `traceparent`.
    pub fn traced(self, traceparent: Option<String>) -> Self {
        Self {
            traceparent,
            ..self
        }
    }

    /// The trace id of the request that caused it, when it came with one.
    pub fn trace_id(&self) -> Option<String> {
        self.traceparent
            .as_deref()
            .and_then(crate::trace::TraceParent::parse)
            .map(|t| t.trace_id().to_string())
    }

    /// The same command, fenced with `token`.
    pub fn fenced(self, token: Option<u64>) -> Self {
        Self {
            fence: token,
            ..self
        }
    }
}

/// What a worker is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    /// Launch the server (no-op when it already runs this generation).
    Start(StartSpec),
    /// Stop the server (SIGINT, then SIGKILL after the grace period).
    Stop(StopSpec),
    /// Stop, then start with the given spec.
    Restart(StartSpec),
    /// Stop the server and remove everything the worker keeps for it.
    Delete(StopSpec),
    /// Report the live status (components included) without changing it.
    Status,
    /// Return the last lines of the server's output.
    Logs(LogsSpec),
    /// Return the current result rows of one of the server's continuous
    /// queries (read through the worker, which reaches the server's API on
    /// every platform).
    QueryResults(QueryResultsSpec),
    /// A command this build does not know.
    #[serde(other)]
    Unknown,
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start(_) => "Start",
            Command::Stop(_) => "Stop",
            Command::Restart(_) => "Restart",
            Command::Delete(_) => "Delete",
            Command::Status => "Status",
            Command::Logs(_) => "Logs",
            Command::QueryResults(_) => "QueryResults",
            Command::Unknown => "Unknown",
        }
    }
}

/// Everything a worker needs to launch a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartSpec {
    /// The instance's name (container and Deployment names derive from it).
    pub name: String,
    /// The configuration generation being started.
    pub generation: u64,
    /// The drasi-server YAML, rendered by the control plane.
    pub configuration_yaml: String,
    /// The API host in that configuration.
    pub api_host: String,
    /// The API port in that configuration.
    pub api_port: u16,
    /// Every port the configuration listens on (checked free before launch).
    pub listening_ports: Vec<u16>,
    /// How to run it.
    pub server_configuration: ServerConfiguration,
}

impl StartSpec {
    /// The start of `configuration` for instance `instance_id`: the file
    /// the server is given ([`DrasiServerConfig::for_server`]: references
    /// stay references, resolved by the server in the environment of
    /// `server_configuration`), its API's address and the ports it listens
    /// on (resolved in that environment).
    pub fn render(
        instance_id: &str,
        name: &str,
        generation: u64,
        configuration: &DrasiServerConfig,
        server_configuration: ServerConfiguration,
    ) -> Result<Self, String> {
        let server = configuration.for_server(instance_id);
        let environment = &server_configuration.environment;
        let lookup = |name: &str| environment.get(name).cloned();
        let api_host = match &server.host {
            None => crate::config::DEFAULT_HOST.to_string(),
            Some(host) => host
                .resolve(&lookup, "a host")
                .map_err(|e| format!("/host: {e}"))?,
        };
        let api_port = match &server.port {
            None => crate::config::DEFAULT_PORT,
            Some(port) => port
                .resolve(&lookup, "a port")
                .map_err(|e| format!("/port: {e}"))?,
        };
        let mut listening_ports: Vec<u16> = crate::config::listening_ports(&server, &lookup)
            .into_iter()
            .map(|p| p.port)
            .collect();
        listening_ports.sort_unstable();
        listening_ports.dedup();
        Ok(Self {
            name: name.to_string(),
            generation,
            configuration_yaml: crate::config::render_yaml(&server).map_err(|e| e.to_string())?,
            api_host,
            api_port,
            listening_ports,
            server_configuration,
        })
    }
}

/// How to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopSpec {
    /// Grace period between SIGINT and SIGKILL.
    pub shutdown_timeout_seconds: u32,
    /// On a delete: the instance's last start, when its configuration has
    /// postgres sources whose replication slots DRaaS drops with it (a slot
    /// left behind keeps WAL forever). The worker asks the running server
    /// to drop them, or, where the server does not run, runs the bundled
    /// runtime once to do so (Process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_slots: Option<Box<StartSpec>>,
}

impl StopSpec {
    /// A stop with `shutdown_timeout_seconds` of grace.
    pub fn grace(shutdown_timeout_seconds: u32) -> Self {
        Self {
            shutdown_timeout_seconds,
            release_slots: None,
        }
    }
}

/// Which output to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsSpec {
    /// Number of lines from the end.
    pub tail: usize,
    /// Which stream.
    pub stream: LogStream,
}

/// Which query's results to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResultsSpec {
    /// The query's id in the server's configuration.
    pub query: String,
}

/// A server output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum LogStream {
    /// Standard output (Drasi logs and the log reaction).
    Stdout,
    /// Standard error (fatal startup errors).
    Stderr,
}

/// A worker's answer to one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandReply {
    /// Message format version.
    pub version: u32,
    /// The command answered.
    pub command_id: Uuid,
    /// The worker that executed it.
    pub worker_id: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Success or failure of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Outcome {
    /// Done.
    #[serde(rename_all = "camelCase")]
    Ok {
        /// The instance's status afterwards.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<InstanceStatus>,
        /// Where it runs afterwards (boxed: it is large and rare).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runtime: Option<Box<RuntimeInfo>>,
        /// Command-specific data (component statuses, log lines).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<serde_json::Value>,
    },
    /// Not done.
    #[serde(rename_all = "camelCase")]
    Error {
        /// Machine-readable.
        code: ErrorCode,
        /// For humans.
        message: String,
    },
}

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The worker knows nothing of the instance.
    NotFound,
    /// Not possible in the instance's current state.
    InvalidState,
    /// A port the server needs is taken.
    PortInUse,
    /// The server did not become ready in time.
    StartTimeout,
    /// The server rejected its configuration.
    ConfigRejected,
    /// The executable is missing or not on the worker's allow-list.
    ExecutableNotAllowed,
    /// The image is missing.
    ImageMissing,
    /// The platform failed.
    PlatformError,
    /// The command's deadline passed before it was executed.
    DeadlineExceeded,
    /// The state store could not be read or written: the command was not
    /// executed, or its result could not be recorded (the message says
    /// which).
    StoreUnavailable,
    /// The worker cannot execute this command.
    Unsupported,
    /// The command came from a reconciler whose lease has moved on to a
    /// newer term (its fencing token is stale): not executed.
    StaleFence,
    /// A start whose spec is no longer what the instance asks for (it
    /// should not run any more, or its configuration changed since the
    /// command was sent): not executed.
    Superseded,
    /// A code this build does not know.
    #[serde(other)]
    Other,
}

// === events ===

/// An event with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    /// Message format version.
    pub version: u32,
    /// Unique per event.
    pub id: Uuid,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// What happened.
    pub event: Event,
}

impl EventEnvelope {
    /// Wraps `event`, stamped now.
    pub fn new(event: Event) -> Self {
        Self {
            version: MESSAGE_VERSION,
            id: Uuid::new_v4(),
            timestamp: Utc::now(),
            event,
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// A server became ready.
    #[serde(rename_all = "camelCase")]
    InstanceStarted {
        /// The instance.
        instance_id: InstanceId,
        /// Where it runs.
        runtime: RuntimeInfo,
    },
    /// A server was stopped on request.
    #[serde(rename_all = "camelCase")]
    InstanceStopped {
        /// The instance.
        instance_id: InstanceId,
    },
    /// An instance was deleted.
    #[serde(rename_all = "camelCase")]
    InstanceDeleted {
        /// The instance.
        instance_id: InstanceId,
    },
    /// A server failed (exited, could not start).
    #[serde(rename_all = "camelCase")]
    InstanceFailed {
        /// The instance.
        instance_id: InstanceId,
        /// Why.
        reason: Reason,
        /// Details (stderr tail).
        message: String,
    },
    /// The actual state changed.
    InstanceStatusChanged(StatusChange),
    /// The desired configuration changed.
    #[serde(rename_all = "camelCase")]
    ConfigurationChanged {
        /// The instance.
        instance_id: InstanceId,
        /// The new generation.
        generation: u64,
    },
    /// A worker is alive.
    WorkerHeartbeat(WorkerInfo),
    /// An event this build does not know.
    #[serde(other)]
    Unknown,
}

impl Event {
    /// The channel this event is published on.
    pub fn channel(&self) -> &'static str {
        match self {
            Event::InstanceStatusChanged(_) | Event::WorkerHeartbeat(_) | Event::Unknown => {
                STATUS_EVENTS
            }
            Event::ConfigurationChanged { .. } => CONFIGURATION_EVENTS,
            _ => INSTANCE_EVENTS,
        }
    }

    /// The instance this event is about, if it is about one.
    pub fn instance_id(&self) -> Option<&InstanceId> {
        match self {
            Event::InstanceStarted { instance_id, .. }
            | Event::InstanceStopped { instance_id }
            | Event::InstanceDeleted { instance_id }
            | Event::InstanceFailed { instance_id, .. }
            | Event::ConfigurationChanged { instance_id, .. } => Some(instance_id),
            Event::InstanceStatusChanged(change) => Some(&change.instance_id),
            Event::WorkerHeartbeat(_) | Event::Unknown => None,
        }
    }
}

/// One change of an instance's actual state: an entry of the status buffer
/// and the payload of [`Event::InstanceStatusChanged`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StatusChange {
    /// Position in the status buffer (monotonic); 0 until recorded.
    #[serde(default)]
    pub cursor: u64,
    /// The instance.
    pub instance_id: InstanceId,
    /// State before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<ActualState>,
    /// State after.
    pub new: ActualState,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who observed it (worker id, `control-plane`, or `external:<name>`).
    pub source: String,
    /// Configuration generation the server runs with.
    pub generation: u64,
    /// When it was observed.
    pub timestamp: DateTime<Utc>,
}

/// A live worker, as it announces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    /// Unique worker id.
    pub worker_id: String,
    /// The platform it serves.
    pub platform: PlatformType,
    /// The machine it runs on.
    pub host: String,
    /// Which servers it can reach: its host (Process), its engine
    /// (Docker), its cluster (Kubernetes). Workers of one scope can take
    /// over each other's servers.
    #[serde(default)]
    pub scope: String,
    /// DRaaS version of the worker.
    pub version: String,
    /// What the worker's platform says of itself (e.g. the Docker Engine's
    /// version), when it says anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it last said it was alive.
    pub last_heartbeat: DateTime<Utc>,
    /// It counts as gone this long after its last heartbeat.
    pub ttl_seconds: u32,
    /// Instances it runs now.
    pub instances: u32,
    /// Most instances it will run, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
}

impl WorkerInfo {
    /// Whether the worker counts as alive at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        now - self.last_heartbeat < chrono::Duration::seconds(i64::from(self.ttl_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_message_types_parse_as_unknown() {
        let c: Command = serde_json::from_str(r#"{"type": "Hibernate"}"#).unwrap();
        assert_eq!(c, Command::Unknown);
        let e: Event = serde_json::from_str(r#"{"type": "SolarFlare", "x": 1}"#).unwrap();
        assert_eq!(e, Event::Unknown);
        let code: ErrorCode = serde_json::from_str(r#""QUOTA_EXCEEDED""#).unwrap();
        assert_eq!(code, ErrorCode::Other);
    }

    #[test]
    fn commands_round_trip_as_versioned_json() {
        let env = CommandEnvelope::new(
            "i-1".parse().unwrap(),
            Command::Stop(StopSpec::grace(5)),
            std::time::Duration::from_secs(30),
        );
        let text = serde_json::to_string(&env).unwrap();
        assert!(text.contains(r#""type":"Stop""#), "{text}");
        assert!(text.contains(r#""version":1"#), "{text}");
        assert_eq!(serde_json::from_str::<CommandEnvelope>(&text).unwrap(), env);
    }

    #[test]
    fn private_channels_belong_to_their_platform() {
        let private = PlatformType::Process.worker_channel("w-1");
        assert_eq!(platform_channel(&private), "instance.commands.process");
        assert_eq!(
            platform_channel("instance.commands.docker"),
            "instance.commands.docker"
        );
    }

    #[test]
    fn events_go_to_their_original_channels() {
        let id: InstanceId = "i-1".parse().unwrap();
        assert_eq!(
            Event::InstanceStopped {
                instance_id: id.clone()
            }
            .channel(),
            "instance.events"
        );
        assert_eq!(
            Event::ConfigurationChanged {
                instance_id: id,
                generation: 2
            }
            .channel(),
            "configuration.events"
        );
        assert_eq!(
            reply_channel("instance.commands.process", Uuid::nil()),
            "instance.commands.process.response.00000000-0000-0000-0000-000000000000"
        );
    }
}
