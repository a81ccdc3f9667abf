//! Reaching a Docker engine: the one `DOCKER_HOST` names (a unix socket by
//! default, or `tcp://host:port`), its identity (the scope of the servers on
//! it) and version.

use std::time::Duration;

use bollard::Docker;

/// Seconds a request to the engine may take (not counting streams).
const REQUEST_TIMEOUT: u64 = 120;

/// Why the engine cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `DOCKER_HOST` names something this build cannot reach.
    #[error("unsupported DOCKER_HOST {0:?}: use unix:///path/to/docker.sock or tcp://host:port")]
    Unsupported(String),
    /// The engine did not answer.
    #[error("no Docker engine answers at {at}: {message}")]
    Unreachable {
        /// Where it was looked for.
        at: String,
        /// What went wrong.
        message: String,
    },
}

/// A connected engine.
#[derive(Clone, Debug)]
pub struct Engine {
    /// The client.
    pub docker: Docker,
    /// Where it is (`unix:///var/run/docker.sock`, `tcp://...`).
    pub address: String,
    /// The engine's id: the scope of its containers (workers of one engine
    /// can take over each other's).
    pub id: String,
    /// "Docker Engine 20.10.24, API 1.41".
    pub version: String,
    /// The host the engine publishes ports on, as the worker reaches it.
    pub published_host: String,
}

/// Where `docker_host` (the value of `DOCKER_HOST`, if any) points: the
/// address to show and the host published ports are reached on.
fn parse(docker_host: Option<&str>) -> Result<(String, String), EngineError> {
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => Ok((
            "unix:///var/run/docker.sock".to_string(),
            "127.0.0.1".to_string(),
        )),
        Some(host) if host.starts_with("unix://") => {
            Ok((host.to_string(), "127.0.0.1".to_string()))
        }
        Some(host) => match host.strip_prefix("tcp://") {
            Some(rest) => {
                let name = rest.rsplit_once(':').map_or(rest, |(name, _)| name);
                let bare = name.trim_matches(['[', ']']);
                if bare.is_empty() || rest.contains('/') {
                    return Err(EngineError::Unsupported(host.to_string()));
                }
                // An IPv6 address goes in brackets in URLs.
                let name = if bare.contains(':') {
                    format!("[{bare}]")
                } else {
                    bare.to_string()
                };
                Ok((host.to_string(), name))
            }
            None => Err(EngineError::Unsupported(host.to_string())),
        },
    }
}

impl Engine {
    /// Connects to the engine `docker_host` names and asks who it is, within
    /// `limit`.
    pub async fn connect(docker_host: Option<&str>, limit: Duration) -> Result<Self, EngineError> {
        let (address, published_host) = parse(docker_host)?;
        let unreachable = |message: String| EngineError::Unreachable {
            at: address.clone(),
            message,
        };
        let docker = if let Some(path) = address.strip_prefix("unix://") {
            Docker::connect_with_unix(path, REQUEST_TIMEOUT, bollard::API_DEFAULT_VERSION)
        } else {
            let url = format!("http://{}", address.trim_start_matches("tcp://"));
            Docker::connect_with_http(&url, REQUEST_TIMEOUT, bollard::API_DEFAULT_VERSION)
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let asked = async {
            let info = docker.info().await?;
            let version = docker.version().await?;
            Ok::<_, bollard::errors::Error>((info, version))
        };
        let (info, version) = tokio::time::timeout(limit, asked)
            .await
            .map_err(|_| unreachable(format!("no answer within {limit:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let id = info
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| unreachable("the engine has no id".into()))?;
        let version = format!(
            "Docker Engine {}, API {}",
            version.version.unwrap_or_else(|| "?".into()),
            version.api_version.unwrap_or_else(|| "?".into())
        );
        Ok(Self {
            docker,
            address,
            id,
            version,
            published_host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_names_a_socket_or_a_tcp_address() {
        assert_eq!(
            parse(None).unwrap(),
            ("unix:///var/run/docker.sock".into(), "127.0.0.1".into())
        );
        assert_eq!(
            parse(Some("unix:///run/user/1000/docker.sock")).unwrap().1,
            "127.0.0.1"
        );
        assert_eq!(
            parse(Some("tcp://docker-1.example:2375")).unwrap(),
            (
                "tcp://docker-1.example:2375".into(),
                "docker-1.example".into()
            )
        );
        assert_eq!(parse(Some("tcp://[::1]:2375")).unwrap().1, "[::1]");
        for bad in [
            "ssh://user@host",
            "npipe:////./pipe/docker_engine",
            "tcp://:2375",
            "tcp://h:1/x",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
