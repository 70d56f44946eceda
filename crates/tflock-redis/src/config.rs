//! How to reach Redis: [`RedisConfig`] (the spec's `redis:` block) and the
//! [`ConnectError`] that names the setting at fault when the backend cannot start.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default key prefix (the spec's).
pub const DEFAULT_KEY_PREFIX: &str = "atlantis:enhanced:lock:";

/// How to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `AUTH password` as the default user.
    #[default]
    Password,
    /// `AUTH username password` as a Redis 6+ ACL user.
    Acl,
}

/// Redis Sentinel: with a master name and sentinel addresses the backend asks the
/// sentinels for the current primary, and asks again when it loses it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SentinelConfig {
    pub master_name: Option<String>,
    /// `host:port` of each sentinel.
    pub addresses: Vec<String>,
}

impl SentinelConfig {
    /// Whether Sentinel mode is configured.
    pub fn enabled(&self) -> bool {
        self.master_name.is_some() || !self.addresses.is_empty()
    }
}

/// The `redis:` block: where Redis is and how to talk to it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `host:port` of the server, or cluster seed nodes.
    pub addresses: Vec<String>,
    pub password: Option<String>,
    pub auth_method: AuthMethod,
    /// The ACL user (with `auth_method: acl`).
    pub username: Option<String>,
    pub db: i64,
    /// Most idle connections kept for blocked waiters.
    pub pool_size: usize,
    /// Prefix of every key; must not hold `{` or `}`.
    pub key_prefix: String,
    /// Connecting (TCP, TLS and the handshake) to one node.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// Waiting for one reply: a hung Redis is reported within this.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Writing one request; also how long `WAIT` waits for replicas.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Connecting at TCP level (the shorter of this and `connection_timeout` applies).
    #[serde(with = "humantime_serde")]
    pub dial_timeout: Duration,
    /// Waiting for a free connection of the waiters' pool.
    #[serde(with = "humantime_serde")]
    pub pool_timeout: Duration,
    /// Connection attempts retried (only attempts that sent nothing are retried).
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub min_retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
    pub cluster_mode: bool,
    pub sentinel: SentinelConfig,
    pub tls_enabled: bool,
    /// Client certificate (PEM), for servers that ask for one.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// CA (PEM) the server's certificate must chain to; the system roots without it.
    pub tls_ca_file: Option<PathBuf>,
    /// Replicas that must confirm a grant (`WAIT`) before it counts.
    pub min_replicas_ack: u32,
    /// Refuse to connect ([`ConnectError::NoPersistence`]) when a Redis primary keeps
    /// neither AOF nor RDB snapshots; otherwise that is a warning (log and health
    /// details). Where `CONFIG GET` is refused the persistence is "unknown", which
    /// never refuses.
    pub require_persistence: bool,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("addresses", &self.addresses)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("auth_method", &self.auth_method)
            .field("username", &self.username)
            .field("db", &self.db)
            .field("key_prefix", &self.key_prefix)
            .field("cluster_mode", &self.cluster_mode)
            .field("sentinel", &self.sentinel)
            .field("tls_enabled", &self.tls_enabled)
            .field("min_replicas_ack", &self.min_replicas_ack)
            .field("require_persistence", &self.require_persistence)
            .finish_non_exhaustive()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addresses: vec!["localhost:6379".into()],
            password: None,
            auth_method: AuthMethod::Password,
            username: None,
            db: 0,
            pool_size: 20,
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            connection_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(3),
            dial_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(4),
            max_retries: 3,
            min_retry_backoff: Duration::from_millis(8),
            max_retry_backoff: Duration::from_millis(512),
            cluster_mode: false,
            sentinel: SentinelConfig::default(),
            tls_enabled: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            min_replicas_ack: 0,
            require_persistence: false,
        }
    }
}

impl RedisConfig {
    /// A configuration for one server at `address` (`host:port`), defaults elsewhere.
    pub fn standalone(address: impl Into<String>) -> Self {
        RedisConfig {
            addresses: vec![address.into()],
            ..RedisConfig::default()
        }
    }

    /// How long one connection attempt may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connection_timeout.min(self.dial_timeout)
    }

    /// Checks the settings that can be checked without a network; the error names
    /// the setting.
    pub fn validate(&self) -> Result<(), ConnectError> {
        if self.key_prefix.is_empty() {
            return Err(ConnectError::new("redis.key_prefix", "must not be empty"));
        }
        if self.key_prefix.contains(['{', '}']) {
            return Err(ConnectError::new(
                "redis.key_prefix",
                "must not hold '{' or '}': they would capture the hash tag that keeps a bucket on one cluster slot",
            ));
        }
        if self.sentinel.enabled() {
            if self
                .sentinel
                .master_name
                .as_deref()
                .is_none_or(str::is_empty)
            {
                return Err(ConnectError::new(
                    "redis.sentinel.master_name",
                    "is needed with redis.sentinel.addresses",
                ));
            }
            if self.sentinel.addresses.is_empty() {
                return Err(ConnectError::new(
                    "redis.sentinel.addresses",
                    "is needed with redis.sentinel.master_name",
                ));
            }
            if self.cluster_mode {
                return Err(ConnectError::new(
                    "redis.cluster_mode",
                    "cannot be combined with redis.sentinel",
                ));
            }
            for a in &self.sentinel.addresses {
                parse_address(a).map_err(|m| ConnectError::new("redis.sentinel.addresses", m))?;
            }
        } else {
            if self.addresses.is_empty() {
                return Err(ConnectError::new(
                    "redis.addresses",
                    "must name at least one host:port",
                ));
            }
            for a in &self.addresses {
                parse_address(a).map_err(|m| ConnectError::new("redis.addresses", m))?;
            }
        }
        if self.cluster_mode && self.db != 0 {
            return Err(ConnectError::new(
                "redis.db",
                "Redis Cluster has only database 0",
            ));
        }
        if self.db < 0 {
            return Err(ConnectError::new("redis.db", "must not be negative"));
        }
        if self.auth_method == AuthMethod::Acl && self.username.as_deref().is_none_or(str::is_empty)
        {
            return Err(ConnectError::new(
                "redis.username",
                "is needed with auth_method: acl",
            ));
        }
        if self.pool_size == 0 {
            return Err(ConnectError::new("redis.pool_size", "must be at least 1"));
        }
        for (name, d) in [
            ("redis.connection_timeout", self.connection_timeout),
            ("redis.read_timeout", self.read_timeout),
            ("redis.write_timeout", self.write_timeout),
            ("redis.dial_timeout", self.dial_timeout),
        ] {
            if d.is_zero() {
                return Err(ConnectError::new(name, "must be greater than zero"));
            }
        }
        if self.max_retry_backoff < self.min_retry_backoff {
            return Err(ConnectError::new(
                "redis.max_retry_backoff",
                "is below min_retry_backoff",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let missing = if self.tls_cert_file.is_some() {
                "redis.tls_key_file"
            } else {
                "redis.tls_cert_file"
            };
            return Err(ConnectError::new(
                missing,
                "a client certificate needs both tls_cert_file and tls_key_file",
            ));
        }
        Ok(())
    }
}

/// Splits `host:port` (IPv6 as `[::1]:6379`).
pub(crate) fn parse_address(a: &str) -> Result<(String, u16), String> {
    let a = a
        .trim()
        .trim_start_matches("redis://")
        .trim_start_matches("rediss://");
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("'{a}' is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("'{a}' has no host"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{a}' has no valid port"))?;
    Ok((host.to_string(), port))
}

/// The backend could not start; `setting` names the configuration key at fault
/// (e.g. `redis.password`), so an operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConnectError {
    pub setting: String,
    pub message: String,
}

impl ConnectError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectError {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_with_braces_is_refused() {
        let c = RedisConfig {
            key_prefix: "a{b}:".into(),
            ..RedisConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "redis.key_prefix");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("127.0.0.1:6379").unwrap(),
            ("127.0.0.1".into(), 6379)
        );
        assert_eq!(parse_address("[::1]:7000").unwrap(), ("::1".into(), 7000));
        assert!(parse_address("nohost").is_err());
        let c = RedisConfig::standalone("x:y");
        assert_eq!(c.validate().unwrap_err().setting, "redis.addresses");
    }

    #[test]
    fn sentinel_needs_both_keys() {
        let c = RedisConfig {
            sentinel: SentinelConfig {
                master_name: Some("m".into()),
                addresses: vec![],
            },
            ..RedisConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().setting,
            "redis.sentinel.addresses"
        );
    }
}
