//! What generic code must not assume about a platform (DESIGN §7b).
//!
//! The control plane, the watchdog and the generic worker ask a platform's
//! [`PlatformPolicy`] instead of assuming what is true of OS processes:
//! who can reach a server, whether its ports can collide with another
//! server's, and what a silent worker means for its instances.
//!
//! | | Process | Docker | Kubernetes |
//! |---|---|---|---|
//! | who can reach a server | workers on the same host | workers on the same engine | any worker of the cluster |
//! | ports | shared by the host: reserved by the control plane, checked free by the worker | the container's own; the engine publishes them on free host ports | the pod's own; a Service per instance |
//! | a silent worker means | instances `Unknown` until a same-host worker adopts | `Unknown` until a same-engine worker adopts | nothing: another worker watches the same objects |

use crate::instance::PlatformType;

/// Which workers can reach (signal, inspect, remove) a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Only workers of the server's scope (its host, its engine). Another
    /// worker takes a server over only if it shares the scope.
    SameScope,
    /// Every worker of the platform (a Kubernetes cluster's API).
    AnyWorker,
}

/// How a platform's servers use ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPolicy {
    /// Servers share their host's ports (OS processes). The control plane
    /// reserves every listening port of a configuration so that no two
    /// instances of the platform are given the same one (an instance can
    /// then run on whichever host takes it), and the worker that launches a
    /// server checks on its own host that the ports are free.
    SharedWithHost,
    /// Each server has its own network (a container, a pod): ports of
    /// different servers never collide, so nothing is reserved and every
    /// server may use the default port. Docker publishes them on free
    /// ports of the engine's host.
    Private,
}

/// What the control plane concludes about a worker's instances when the
/// worker stops heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SilentWorker {
    /// Nobody knows whether its servers still run: they become `Unknown`
    /// until a worker of the same scope adopts them.
    MakesInstancesUnknown,
    /// Nothing: the servers are platform objects any worker watches.
    LeavesInstancesAlone,
}

/// The policy of one platform; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformPolicy {
    /// Who can reach a server.
    pub reach: Reach,
    /// How servers use ports.
    pub ports: PortPolicy,
    /// What a silent worker means.
    pub silent_worker: SilentWorker,
    /// The API bind address of an instance that names none.
    pub default_api_host: &'static str,
    /// The API port of an instance that names none; `None`: allocated from
    /// the control plane's port range.
    pub default_api_port: Option<u16>,
}

/// drasi-server's default API port, used where ports are private.
pub const DRASI_DEFAULT_PORT: u16 = 8080;

impl PlatformType {
    /// This platform's policy.
    pub fn policy(self) -> PlatformPolicy {
        match self {
            Self::Process => PlatformPolicy {
                reach: Reach::SameScope,
                ports: PortPolicy::SharedWithHost,
                silent_worker: SilentWorker::MakesInstancesUnknown,
                default_api_host: "127.0.0.1",
                default_api_port: None,
            },
            Self::Docker => PlatformPolicy {
                reach: Reach::SameScope,
                ports: PortPolicy::Private,
                silent_worker: SilentWorker::MakesInstancesUnknown,
                default_api_host: "0.0.0.0",
                default_api_port: Some(DRASI_DEFAULT_PORT),
            },
            Self::Kubernetes => PlatformPolicy {
                reach: Reach::AnyWorker,
                ports: PortPolicy::Private,
                silent_worker: SilentWorker::LeavesInstancesAlone,
                default_api_host: "0.0.0.0",
                default_api_port: Some(DRASI_DEFAULT_PORT),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_processes_share_ports_and_only_kubernetes_survives_a_silent_worker() {
        let shared: Vec<_> = PlatformType::ALL
            .into_iter()
            .filter(|p| p.policy().ports == PortPolicy::SharedWithHost)
            .collect();
        assert_eq!(shared, vec![PlatformType::Process]);
        let unaffected: Vec<_> = PlatformType::ALL
            .into_iter()
            .filter(|p| p.policy().silent_worker == SilentWorker::LeavesInstancesAlone)
            .collect();
        assert_eq!(unaffected, vec![PlatformType::Kubernetes]);
        assert_eq!(PlatformType::Process.policy().default_api_port, None);
    }
}
