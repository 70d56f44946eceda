//! The configuration's shape: the spec's `enhanced_locking` block plus tflock's keys.
//!
//! Every key of the spec's Basic, Cluster, Advanced, Security and Connection Pool Tuning
//! blocks is here under the same name. Durations are humantime strings (`30s`, `1h`,
//! `8ms`). Unknown keys are refused (`deny_unknown_fields`), so a typo cannot silently
//! fall back to a default.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TflockConfig {
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG` overrides it.
    /// The spec's Debugging block spells it `log-level`.
    #[serde(alias = "log-level")]
    pub log_level: String,
    pub enhanced_locking: EnhancedLocking,
}

impl Default for TflockConfig {
    fn default() -> Self {
        TflockConfig {
            log_level: "info".into(),
            enhanced_locking: EnhancedLocking::default(),
        }
    }
}

/// Which store holds the locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The single-file store (default; no Redis needed).
    Embedded,
    /// Redis standalone, Sentinel or Cluster.
    Redis,
    /// The spec's name for the single-node store; read as `embedded` with a warning.
    Boltdb,
}

/// The spec's `enhanced_locking` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EnhancedLocking {
    /// Whether enhanced locking is on. With `false`, `tflock server` refuses to start.
    pub enabled: bool,
    pub backend: BackendKind,
    /// Queue waiters by priority; without it `wait` retries (with `enable_retries`).
    pub enable_priority_queue: bool,
    /// Retry with back-off when waiting without a queue.
    pub enable_retries: bool,
    /// Collect latency and operation metrics.
    pub enable_metrics: bool,
    /// Wait used for `wait: default`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub default_timeout: Duration,
    /// Longest a request may wait; must not be below `default_timeout`.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub max_timeout: Duration,
    /// Most queue entries per resource.
    pub max_queue_size: usize,
    /// Waiting this long raises an entry's priority one level.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub starvation_threshold: Duration,
    /// Most levels waiting can add (0 to 3).
    pub max_priority_boost: u8,
    /// During migration, also honour locks in a legacy store (see `legacy`).
    pub legacy_fallback: bool,
    /// How long a waiter's grant waits for its server to confirm it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub claim_timeout: Duration,
    /// After the store is found to have lost data, how long nothing is granted (so
    /// holders whose record was lost can finish or notice); `0s` disables it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub lock_delay: Duration,
    pub server: ServerSettings,
    pub embedded: EmbeddedSettings,
    pub redis: RedisSettings,
    pub legacy: LegacySettings,
    pub cluster: ClusterSettings,
    pub terraform: TerraformSettings,
}

impl Default for EnhancedLocking {
    fn default() -> Self {
        let lock = tflock_core::LockSettings::default();
        EnhancedLocking {
            enabled: true,
            backend: BackendKind::Embedded,
            enable_priority_queue: lock.enable_priority_queue,
            enable_retries: lock.enable_retries,
            enable_metrics: true,
            default_timeout: lock.default_timeout,
            max_timeout: lock.max_timeout,
            max_queue_size: lock.max_queue_size,
            starvation_threshold: lock.starvation_threshold,
            max_priority_boost: lock.max_priority_boost,
            legacy_fallback: false,
            claim_timeout: lock.claim_timeout,
            lock_delay: lock.lock_delay,
            server: ServerSettings::default(),
            embedded: EmbeddedSettings::default(),
            redis: RedisSettings::default(),
            legacy: LegacySettings::default(),
            cluster: ClusterSettings::default(),
            terraform: TerraformSettings::default(),
        }
    }
}

/// Terraform's and OpenTofu's `http` state backend at `/tf/{state name}`
/// (docs/terraform.md): state locks are tflock locks with a fair queue, and state
/// writes are fenced by them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TerraformSettings {
    /// Serve `/tf/...` and `/api/v1/states`.
    pub enabled: bool,
    /// TTL of a state lock. Terraform never refreshes its lock, so this must outlast
    /// the longest apply; a lock whose client died ends after it (or by
    /// `terraform force-unlock` with the admin token).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub lock_ttl: Duration,
    /// How long a queued client keeps its place without polling, and how long the
    /// head of the queue keeps a freed lock for its next poll. Above Terraform's
    /// longest back-off between polls (16 s).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub queue_grace: Duration,
    /// How long a queued client's LOCK is held open waiting for its turn before it is
    /// answered 423 (its first LOCK is answered at once); `0s` never holds one.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub long_poll: Duration,
    /// Queue polling clients fairly; `false` answers a held lock 423 without a queue
    /// (whoever polls first wins, like other http backends).
    pub fair_queue: bool,
    /// Largest state document accepted, in bytes.
    pub max_state_bytes: u64,
    /// How many versions of each state are kept (for `tflock state rollback`).
    pub keep_versions: usize,
    /// The embedded backend's state file; default: the lock store's path with
    /// `.tfstate` appended. Unused with `backend: redis` (states live in Redis).
    pub state_path: Option<PathBuf>,
}

impl Default for TerraformSettings {
    fn default() -> Self {
        TerraformSettings {
            enabled: true,
            lock_ttl: Duration::from_secs(6 * 3600),
            queue_grace: Duration::from_secs(20),
            long_poll: Duration::from_secs(25),
            fair_queue: true,
            max_state_bytes: 16 * 1024 * 1024,
            keep_versions: 10,
            state_path: None,
        }
    }
}

/// The HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind (flag `--listen`). Without tokens only loopback is allowed.
    pub listen: String,
    /// Bearer token for mutating calls.
    pub api_token: Option<String>,
    /// Bearer token for admin calls (force unlock, unlock by pull, import).
    pub admin_token: Option<String>,
    /// URLs that receive every event as a signed POST.
    pub webhooks: Vec<String>,
    /// Key for the webhooks' HMAC-SHA256 signature header.
    pub webhook_secret: Option<String>,
    /// Secret of the GitHub webhook that posts `pull_request` events to
    /// `/api/vcs/github` (closed pull requests release their locks).
    pub github_webhook_secret: Option<String>,
    /// Token of the GitLab webhook that posts merge request events to `/api/vcs/gitlab`.
    pub gitlab_webhook_token: Option<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:4141".into(),
            api_token: None,
            admin_token: None,
            webhooks: Vec::new(),
            webhook_secret: None,
            github_webhook_secret: None,
            gitlab_webhook_token: None,
        }
    }
}

/// The embedded store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedSettings {
    /// The store file.
    pub path: PathBuf,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        EmbeddedSettings {
            path: PathBuf::from("./tflock-data/locks.redb"),
        }
    }
}

/// How to authenticate to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// `AUTH password` (the default user).
    Password,
    /// `AUTH username password` (Redis 6 ACL user).
    Acl,
}

/// The spec's `redis` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `host:port` of the server, or of cluster seed nodes. The environment form is
    /// comma-separated.
    #[serde(deserialize_with = "list_or_csv")]
    pub addresses: Vec<String>,
    /// May be `${VAR}`: expanded from the environment.
    pub password: Option<String>,
    pub auth_method: AuthMethod,
    /// The ACL user (with `auth_method: acl`).
    pub username: Option<String>,
    pub db: i64,
    pub pool_size: usize,
    /// Prefix of every key tflock writes.
    pub key_prefix: String,
    /// Lease TTL when a request names none (applies to every backend).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub default_ttl: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub connection_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub write_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub dial_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub pool_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub idle_check_frequency: Duration,
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub min_retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub max_retry_backoff: Duration,
    pub cluster_mode: bool,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub health_check_interval: Duration,
    pub circuit_breaker: CircuitBreakerSettings,
    pub tls_enabled: bool,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub sentinel: SentinelSettings,
    /// Replicas that must confirm a grant (`WAIT`) before it counts.
    pub min_replicas_ack: u32,
    /// Refuse to start when Redis keeps no persistence (neither AOF nor RDB
    /// snapshots): a restart then loses every lock. Without it, a warning.
    pub require_persistence: bool,
}

impl Default for RedisSettings {
    fn default() -> Self {
        let lock = tflock_core::LockSettings::default();
        RedisSettings {
            addresses: vec!["localhost:6379".into()],
            password: None,
            auth_method: AuthMethod::Password,
            username: None,
            db: 0,
            pool_size: 20,
            key_prefix: "atlantis:enhanced:lock:".into(),
            default_ttl: lock.default_ttl,
            connection_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(3),
            dial_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(4),
            idle_timeout: Duration::from_secs(300),
            idle_check_frequency: Duration::from_secs(60),
            max_retries: 3,
            min_retry_backoff: lock.min_retry_backoff,
            max_retry_backoff: lock.max_retry_backoff,
            cluster_mode: false,
            health_check_interval: Duration::from_secs(10),
            circuit_breaker: CircuitBreakerSettings::default(),
            tls_enabled: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            sentinel: SentinelSettings::default(),
            min_replicas_ack: 0,
            require_persistence: false,
        }
    }
}

/// The spec's `circuit_breaker` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before probing.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub reset_timeout: Duration,
    /// Probes let through while half-open.
    pub half_open_max_requests: u32,
}

impl Default for CircuitBreakerSettings {
    fn default() -> Self {
        CircuitBreakerSettings {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
            half_open_max_requests: 3,
        }
    }
}

/// Redis Sentinel: set both to use it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelSettings {
    pub master_name: Option<String>,
    #[serde(deserialize_with = "list_or_csv")]
    pub addresses: Vec<String>,
}

/// Several servers on one Redis (docs/cluster.md): registry, leader election, the
/// leader's duties. Only used with `backend: redis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// The address other servers and people reach this one at (shown in
    /// `/api/cluster`); default the address the server listens on.
    pub advertise_address: Option<String>,
    /// How often a server heartbeats and the leader renews its lease.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub heartbeat_interval: Duration,
    /// A server silent this long is declared dead; its waiters' entries are removed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub node_ttl: Duration,
    /// The leader's lease; another server takes over this long after a leader dies.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub leader_lease: Duration,
    /// How often the leader rolls up cluster-wide metrics.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "DurationString")]
    pub rollup_interval: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            advertise_address: None,
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(10),
            leader_lease: Duration::from_secs(5),
            rollup_interval: Duration::from_secs(10),
        }
    }
}

/// Where `legacy_fallback` looks for locks still held in Atlantis.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LegacySettings {
    /// A copy of Atlantis's `atlantis.db`.
    pub boltdb_path: Option<PathBuf>,
    /// Atlantis's Redis, e.g. `redis://host:6379/0`.
    pub redis_url: Option<String>,
}

/// A humantime duration such as `30s`, `1h`, `8ms` (for the schema).
#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct DurationString(#[schemars(regex(pattern = r"^\s*(\d+\s*[a-zµ]+\s*)+$"))] String);

/// A list from YAML, or a comma-separated string (the environment's form).
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(v) => v,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

impl EnhancedLocking {
    /// The lock behaviour these settings give every backend.
    pub fn lock_settings(&self) -> tflock_core::LockSettings {
        tflock_core::LockSettings {
            default_ttl: self.redis.default_ttl,
            default_timeout: self.default_timeout,
            max_timeout: self.max_timeout,
            max_queue_size: self.max_queue_size,
            starvation_threshold: self.starvation_threshold,
            max_priority_boost: self.max_priority_boost,
            enable_priority_queue: self.enable_priority_queue,
            enable_retries: self.enable_retries,
            claim_timeout: self.claim_timeout,
            lock_delay: self.lock_delay,
            min_retry_backoff: self.redis.min_retry_backoff,
            max_retry_backoff: self.redis.max_retry_backoff,
            ..tflock_core::LockSettings::default()
        }
    }
}
