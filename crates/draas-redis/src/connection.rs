//! Connecting to Redis: `redis://` and `rediss://` URLs (user and password
//! in the URL for AUTH), an optional CA for TLS, and key prefixes.
//!
//! Every connection is a [`ConnectionManager`]: multiplexed, and it
//! reconnects by itself when Redis restarts. Operations fail fast while
//! Redis is down (the API answers 503) and work again once it is back.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, RedisError};

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...`.
    pub url: String,
    /// PEM CA certificate that signed the server's certificate (TLS), when
    /// it is not in the system trust store.
    pub ca_pem: Option<Vec<u8>>,
    /// Prefix of every key and channel suffix this DRaaS uses; several
    /// DRaaS installations (or tests) can share one Redis with different
    /// prefixes.
    pub prefix: String,
}

impl std::fmt::Debug for RedisSettings {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.url))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisSettings {
    /// Settings for `url` with the default prefix `draas`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_pem: None,
            prefix: "draas".to_string(),
        }
    }

    /// A client for these settings (RESP3, so pub/sub can share the
    /// multiplexed connection and be restored after reconnects).
    pub fn client(&self) -> Result<Client, RedisError> {
        let info = self.url.as_str().into_connection_info()?;
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        match &self.ca_pem {
            Some(ca) if self.url.starts_with("rediss://") => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => Client::open(info),
        }
    }

    /// The settings every connection manager of DRaaS uses: short timeouts
    /// so a dead Redis is noticed fast, unlimited reconnection attempts.
    pub fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
    }

    /// A connection manager (reconnects by itself).
    pub async fn manager(&self) -> Result<ConnectionManager, RedisError> {
        ConnectionManager::new_with_config(self.client()?, self.manager_config()).await
    }

    /// `{prefix}:rest`: every key of one installation hashes to one
    /// cluster slot, so scripts may touch several.
    pub fn key(&self, rest: &str) -> String {
        format!("{{{}}}:{rest}", self.prefix)
    }
}

/// The URL without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Whether `e` means "Redis cannot be reached right now" (as opposed to a
/// bad command): those become 503s, and retrying later helps.
pub fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Runs `op` again (up to three more times over about a second) when Redis
/// could not be reached: a connection manager reconnects lazily, so the
/// first command after an outage can fail although Redis is back.
///
/// Safe for DRaaS's operations: reads are idempotent, a repeated command
/// `XADD` is deduplicated by workers (command ids), and every write script
/// (store writes, log appends, event publications) carries a token under
/// which its first outcome is kept, so a repeat returns that outcome
/// instead of writing twice.
pub async fn with_retry<T, F, Fut>(mut op: F) -> Result<T, RedisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    let mut pauses = [100u64, 250, 600].into_iter();
    loop {
        match op().await {
            Err(e) if is_unavailable(&e) => match pauses.next() {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => return Err(e),
            },
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact("rediss://admin:s3cret@host:6380"),
            "rediss://admin:***@host:6380"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        let settings = RedisSettings::new("redis://u:hunter2@h:1");
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn keys_share_one_hash_slot() {
        assert_eq!(
            RedisSettings::new("redis://h").key("v:instances"),
            "{draas}:v:instances"
        );
    }
}
