//! Port bookkeeping, for platforms whose servers share their host's ports
//! ([`PortPolicy::SharedWithHost`]: Process). Every port an instance's
//! configuration listens on is reserved in the store
//! (`ports/<platform>/<port>` → instance id) in the same atomic batch that
//! stores the configuration. A port already reserved makes the batch fail,
//! so no two instances of the platform are given the same port, whichever
//! host runs them. Whether the port is actually free on the host is the
//! worker's check, at launch, on its own host: the control plane binds
//! nothing (it may not even run there).
//!
//! Containers and pods have ports of their own ([`PortPolicy::Private`]):
//! nothing is reserved for them.

use std::collections::BTreeSet;

use draas_core::instance::{InstanceConfiguration, InstanceId, PlatformType};
use draas_core::keys;
use draas_core::policy::PortPolicy;
use draas_core::ports::store::{Precondition, Write};
use draas_core::ports::JsonStore;

use super::ControlPlane;
use crate::error::{ApiError, ApiResult, FieldError};

/// The ports `config` listens on, for instance `id`.
pub(crate) fn ports_of(config: &InstanceConfiguration, id: &InstanceId) -> BTreeSet<u16> {
    config
        .to_server_config(id)
        .listening_ports()
        .into_iter()
        .map(|p| p.port)
        .collect()
}

/// Writes that move `id`'s reservations from `old` to `new` (none where
/// ports are private to each server).
pub(crate) fn reservation_writes(
    platform: PlatformType,
    id: &InstanceId,
    old: &BTreeSet<u16>,
    new: &BTreeSet<u16>,
) -> Vec<Write> {
    if platform.policy().ports == PortPolicy::Private {
        return Vec::new();
    }
    let collection = keys::port_reservations(platform);
    let released = old.difference(new).map(|port| Write::Delete {
        collection: collection.clone(),
        key: port.to_string(),
        precondition: Precondition::None,
    });
    let reserved = new.difference(old).map(|port| Write::Put {
        collection: collection.clone(),
        key: port.to_string(),
        value: id.as_str().as_bytes().to_vec(),
        precondition: Precondition::Absent,
    });
    released.chain(reserved).collect()
}

/// Where in a configuration `port` is set.
pub(crate) fn port_path(config: &InstanceConfiguration, port: u16) -> String {
    if config.port == port {
        return "/port".to_string();
    }
    let set = |props: &serde_json::Map<String, serde_json::Value>| {
        props.get("port").and_then(serde_json::Value::as_u64) == Some(u64::from(port))
    };
    if let Some(i) = config.sources.iter().position(|s| set(&s.properties)) {
        return format!("/sources/{i}/port");
    }
    if let Some(i) = config.reactions.iter().position(|r| set(&r.properties)) {
        return format!("/reactions/{i}/port");
    }
    if let Some(i) = config
        .reactions
        .iter()
        .position(|r| r.kind == "sse" && !r.properties.contains_key("port"))
    {
        return format!("/reactions/{i}");
    }
    "/port".to_string()
}

impl ControlPlane {
    /// A port for a new instance of a platform whose servers share their
    /// host's ports: in the configured range, reserved by no instance, and
    /// free on the workers' host where the control plane can tell.
    pub(crate) async fn allocate_port(
        &self,
        platform: PlatformType,
        avoid: &BTreeSet<u16>,
    ) -> ApiResult<u16> {
        let reserved: BTreeSet<u16> = self
            .store
            .list(&keys::port_reservations(platform))
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.parse().ok())
            .collect();
        self.settings
            .port_range
            .clone()
            .filter(|p| !reserved.contains(p) && !avoid.contains(p))
            .find(|p| match (&self.settings.process_port_probe, platform) {
                (Some(free), PlatformType::Process) => free(*p),
                _ => true,
            })
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "NO_FREE_PORT",
                    format!(
                        "no free port left in {}-{}",
                        self.settings.port_range.start(),
                        self.settings.port_range.end()
                    ),
                )
            })
    }

    /// The 422 for a port another instance holds.
    pub(crate) async fn port_taken(
        &self,
        platform: PlatformType,
        config: &InstanceConfiguration,
        port: u16,
    ) -> ApiError {
        let holder = self
            .store
            .get(&keys::port_reservations(platform), &port.to_string())
            .await
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v.value).to_string());
        let holder_name = match holder.as_deref().map(str::parse::<InstanceId>) {
            Some(Ok(id)) => self
                .store
                .get_json::<draas_core::instance::Instance>(keys::INSTANCES, id.as_str())
                .await
                .ok()
                .flatten()
                .map(|r| format!("instance '{}' ({id})", r.value.name))
                .unwrap_or_else(|| format!("instance {id}")),
            _ => "another instance".to_string(),
        };
        let message =
            format!("port {port} is already used by {holder_name} on the {platform} platform");
        ApiError::invalid(
            "PORT_CONFLICT",
            message.clone(),
            vec![FieldError {
                path: port_path(config, port),
                message,
                line: None,
            }],
        )
    }
}
