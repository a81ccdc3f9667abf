//! Port bookkeeping, for platforms whose servers share their host's ports
//! ([`PortPolicy::SharedWithHost`]: Process). Every port an instance's
//! configuration **listens on** is reserved in the store
//! (`ports/<platform>/<port>` → instance id) in the same atomic batch that
//! stores the configuration; ports a server connects to (a database's) are
//! not its own and are never reserved (see `draas_core::config::PORT_FIELDS`).
//! A port already reserved makes the batch fail, so no two instances of the
//! platform are given the same port, whichever host runs them. Whether the
//! port is actually free on the host is the worker's check, at launch, on
//! its own host: the control plane binds nothing (it may not even run
//! there).
//!
//! Containers and pods have ports of their own ([`PortPolicy::Private`]):
//! nothing is reserved for them.

use std::collections::BTreeSet;

use draas_core::config::{listening_ports, DrasiServerConfig};
use draas_core::instance::{InstanceId, PlatformType, ServerConfiguration};
use draas_core::keys;
use draas_core::policy::PortPolicy;
use draas_core::ports::store::{Precondition, Write};

use super::ControlPlane;
use crate::error::{ApiError, ApiResult, FieldError};

/// The ports `config` listens on, with references resolved in the
/// instance's environment.
pub(crate) fn ports_of(config: &DrasiServerConfig, server: &ServerConfiguration) -> BTreeSet<u16> {
    let lookup = |name: &str| server.environment.get(name).cloned();
    listening_ports(config, &lookup)
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

/// Where in a configuration `port` is set (the field, or the component
/// whose plugin default it is).
pub(crate) fn port_path(
    config: &DrasiServerConfig,
    server: &ServerConfiguration,
    port: u16,
) -> (String, bool) {
    let lookup = |name: &str| server.environment.get(name).cloned();
    listening_ports(config, &lookup)
        .into_iter()
        .find(|p| p.port == port)
        .map(|p| (p.pointer, p.defaulted))
        .unwrap_or_else(|| ("/port".to_string(), false))
}

impl ControlPlane {
    /// The ports reserved on `platform` now.
    pub(crate) async fn reserved_ports(&self, platform: PlatformType) -> ApiResult<BTreeSet<u16>> {
        if platform.policy().ports == PortPolicy::Private {
            return Ok(BTreeSet::new());
        }
        Ok(self
            .store
            .list(&keys::port_reservations(platform))
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.parse().ok())
            .collect())
    }

    /// A port for a listened port DRaaS chooses, on a platform whose
    /// servers share their host's ports: in the configured range, not in
    /// `avoid` (reserved, or used by the configuration), and free on the
    /// workers' host where the control plane can tell.
    pub(crate) fn allocate_port(
        &self,
        platform: PlatformType,
        avoid: &BTreeSet<u16>,
    ) -> ApiResult<u16> {
        self.settings
            .port_range
            .clone()
            .filter(|p| !avoid.contains(p))
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

    /// The 422 for a listened port another instance holds: which instance,
    /// and how to let the platform choose.
    pub(crate) async fn port_taken(
        &self,
        platform: PlatformType,
        config: &DrasiServerConfig,
        server: &ServerConfiguration,
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
            Some(Ok(id)) => draas_core::records::read_spec(self.store.as_ref(), &id)
                .await
                .ok()
                .flatten()
                .map(|r| format!("instance '{}' ({id})", r.value.name))
                .unwrap_or_else(|| format!("instance {id}")),
            _ => "another instance".to_string(),
        };
        let (path, defaulted) = port_path(config, server, port);
        let how = if defaulted {
            format!("it is the plugin's default: set `port` at {path} to 0 (or another port) to let DRaaS choose one")
        } else {
            format!("leave `port` out at {path} (or set it to 0) to let DRaaS choose a free one")
        };
        let message = format!(
            "port {port} is already used by {holder_name} on the {platform} platform (servers \
             there share their host's ports); {how}"
        );
        ApiError::invalid(
            "PORT_CONFLICT",
            message.clone(),
            vec![FieldError {
                path,
                message,
                line: None,
            }],
        )
    }
}
