//! The test harness: shared Redis deployments (one per topology and test binary,
//! started on first use) and a conformance [`Harness`] whose every store is a fresh,
//! empty key prefix on them.
//!
//! Each `#[tokio::test]` has its own runtime, so only the Redis *processes* are
//! shared; every backend (and so every connection) is made inside the test that uses
//! it.

#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tflock_conformance::{Harness, Store};
use tflock_core::{LockSettings, ManualClock, SharedBackend};
use tflock_redis::{AuthMethod, RedisBackend, RedisConfig, SentinelConfig};
use tflock_testkit::{AclUser, RedisCluster, RedisOptions, RedisSentinel, RedisServer};

/// The ACL user of the ACL topology and its password.
pub const ACL_USER: &str = "atlantis";
pub const ACL_PASSWORD: &str = "s3cret-pass";
/// Exactly the rules the spec gives the Atlantis user.
pub const ACL_RULES: &str = "+@all ~atlantis:enhanced:lock:* &*";

/// Timeouts short enough that failure tests finish quickly, long enough for a
/// loaded two-core machine.
pub fn with_test_timeouts(mut c: RedisConfig) -> RedisConfig {
    c.connection_timeout = Duration::from_secs(2);
    c.dial_timeout = Duration::from_secs(2);
    c.read_timeout = Duration::from_secs(2);
    c.write_timeout = Duration::from_secs(2);
    c.pool_timeout = Duration::from_secs(2);
    c
}

/// A fresh key prefix: an empty store on a shared server.
pub fn fresh_prefix() -> String {
    format!("atlantis:enhanced:lock:t{}:", tflock_core::random_hex(6))
}

pub fn standalone_server() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(|| RedisServer::start(RedisOptions::default()))
}

pub fn standalone() -> RedisConfig {
    with_test_timeouts(RedisConfig::standalone(
        standalone_server().addr().to_string(),
    ))
}

pub fn acl_server() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(|| {
        RedisServer::start(
            RedisOptions::default()
                .acl_user(AclUser::new(ACL_USER, ACL_PASSWORD, ACL_RULES))
                .default_user_off(),
        )
    })
}

pub fn acl() -> RedisConfig {
    with_test_timeouts(RedisConfig {
        auth_method: AuthMethod::Acl,
        username: Some(ACL_USER.into()),
        password: Some(ACL_PASSWORD.into()),
        ..RedisConfig::standalone(acl_server().addr().to_string())
    })
}

pub fn cluster_deployment() -> &'static RedisCluster {
    static C: OnceLock<RedisCluster> = OnceLock::new();
    C.get_or_init(|| RedisCluster::start(3, 1))
}

pub fn cluster() -> RedisConfig {
    let c = cluster_deployment();
    with_test_timeouts(RedisConfig {
        addresses: c
            .primaries()
            .into_iter()
            .map(|i| c.node(i).addr().to_string())
            .collect(),
        cluster_mode: true,
        ..RedisConfig::default()
    })
}

pub fn sentinel_deployment() -> &'static RedisSentinel {
    static S: OnceLock<RedisSentinel> = OnceLock::new();
    S.get_or_init(RedisSentinel::start)
}

pub fn sentinel() -> RedisConfig {
    with_test_timeouts(RedisConfig {
        sentinel: sentinel_config(sentinel_deployment()),
        ..RedisConfig::default()
    })
}

/// The backend's view of Sentinel deployment `s`: its master name and sentinels.
pub fn sentinel_config(s: &RedisSentinel) -> SentinelConfig {
    SentinelConfig {
        master_name: Some(s.master_name().to_string()),
        addresses: s.sentinel_addr_strings(),
    }
}

/// A fresh key prefix on standalone `server`, with the test timeouts.
pub fn config_for_server(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        key_prefix: fresh_prefix(),
        ..with_test_timeouts(RedisConfig::standalone(server.addr().to_string()))
    }
}

/// Starts a redis-server of its own (in a blocking task, so a slow start never stalls
/// a runtime).
pub async fn start_server(options: RedisOptions) -> Arc<RedisServer> {
    tokio::task::spawn_blocking(move || Arc::new(RedisServer::start(options)))
        .await
        .unwrap()
}

/// Makes stores on one topology: `base` gives its configuration (started on first
/// use, in a blocking task so a slow start never stalls a runtime).
pub struct RedisHarness {
    pub base: fn() -> RedisConfig,
}

impl RedisHarness {
    pub fn new(base: fn() -> RedisConfig) -> Self {
        RedisHarness { base }
    }
}

pub struct RedisStore {
    config: RedisConfig,
    settings: LockSettings,
    clock: ManualClock,
    backend: Arc<RedisBackend>,
}

pub async fn config_for(base: fn() -> RedisConfig) -> RedisConfig {
    let mut config = tokio::task::spawn_blocking(base)
        .await
        .expect("starting Redis");
    config.key_prefix = fresh_prefix();
    config
}

#[async_trait]
impl Harness for RedisHarness {
    async fn create(&self, settings: LockSettings, clock: ManualClock) -> Box<dyn Store> {
        let config = config_for(self.base).await;
        let backend =
            RedisBackend::connect(config.clone(), settings.clone(), Arc::new(clock.clone()))
                .await
                .expect("connect to Redis");
        Box::new(RedisStore {
            config,
            settings,
            clock,
            backend,
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> SharedBackend {
        self.backend.clone()
    }

    async fn reopen(&mut self) {
        tflock_core::Backend::close(&*self.backend).await;
        self.backend = RedisBackend::connect(
            self.config.clone(),
            self.settings.clone(),
            Arc::new(self.clock.clone()),
        )
        .await
        .expect("reconnect to Redis");
    }
}

/// A fresh primary and a replica of it, started and linked (`connected_slaves: 1`),
/// for tests of `min_replicas_ack`.
pub async fn primary_and_replica() -> (Arc<RedisServer>, Arc<RedisServer>) {
    tokio::task::spawn_blocking(|| {
        let primary = Arc::new(RedisServer::start(RedisOptions::default()));
        let replica = Arc::new(RedisServer::start(
            RedisOptions::default().config(&format!("replicaof 127.0.0.1 {}", primary.port())),
        ));
        tflock_testkit::wait_until(
            tflock_testkit::DEFAULT_TIMEOUT,
            "the replica is linked",
            || {
                let n = primary.info_field("replication", "connected_slaves");
                if n.as_deref() == Some("1") {
                    Ok(())
                } else {
                    Err(format!("connected_slaves: {n:?}"))
                }
            },
        );
        (primary, replica)
    })
    .await
    .unwrap()
}
