//! The suite on [`RedisStates`] on a real redis-server (one per test binary, each
//! test on a fresh key prefix), and on a real Redis Cluster.

mod suite;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tflock_core::{LockSettings, SystemClock};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::{ClusterOptions, RedisCluster, RedisOptions, RedisServer};
use tflock_tfstate::{Guard, RedisStates, StateStore, StoreOptions};

use suite::{Harness, admin, doc, lock, name, record};

fn standalone_server() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(|| RedisServer::start(RedisOptions::default()))
}

fn cluster_deployment() -> &'static RedisCluster {
    static C: OnceLock<RedisCluster> = OnceLock::new();
    // No replicas: the two-core test machine runs three nodes, not six.
    C.get_or_init(|| RedisCluster::start_with(ClusterOptions::default().replicas_per_primary(0)))
}

fn with_test_timeouts(mut c: RedisConfig) -> RedisConfig {
    c.connection_timeout = Duration::from_secs(2);
    c.dial_timeout = Duration::from_secs(2);
    c.read_timeout = Duration::from_secs(5);
    c.write_timeout = Duration::from_secs(5);
    c.pool_timeout = Duration::from_secs(2);
    c.key_prefix = format!("tfstate-test:{}:", tflock_core::random_hex(6));
    c
}

fn standalone() -> RedisConfig {
    with_test_timeouts(RedisConfig::standalone(
        standalone_server().addr().to_string(),
    ))
}

fn cluster() -> RedisConfig {
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

/// Stores on one topology: `base` gives a configuration with a fresh key prefix
/// (starting the deployment on first use, in a blocking task).
struct OnRedis {
    base: fn() -> RedisConfig,
}

async fn backend(base: fn() -> RedisConfig) -> Arc<RedisBackend> {
    let config = tokio::task::spawn_blocking(base).await.unwrap();
    RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
        .await
        .expect("connect to Redis")
}

#[async_trait]
impl Harness for OnRedis {
    async fn store(&self, options: StoreOptions) -> Box<dyn StateStore> {
        Box::new(RedisStates::new(backend(self.base).await, options))
    }
}

mod standalone {
    use super::*;
    state_store_suite!(OnRedis { base: standalone });
}

mod cluster {
    use super::*;
    state_store_suite!(OnRedis { base: cluster });
}

/// The keys of a state share one slot and hold no user text in their hash tag; the
/// name index is a zset of the names.
#[tokio::test]
async fn key_layout() {
    let backend = backend(standalone).await;
    let prefix = backend.key_prefix().to_string();
    let s = RedisStates::new(backend, StoreOptions::default());
    let n = name("team/{app}/prod");
    s.record_lock(&n, record("d", 1)).await.unwrap();
    s.put(&n, suite::write(doc(1, "l"), lock("d", 1)))
        .await
        .unwrap();
    s.delete(&n, Guard::Admin, 1).await.unwrap();
    let server = standalone_server();
    let mut keys: Vec<String> = server
        .redis_cli(["--scan", "--pattern", &format!("{prefix}tfstate:*")])
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    assert_eq!(keys.len(), 4, "{keys:?}");
    // The hash tag: 16 hex digits, nothing of the name (which has braces itself).
    let state = &keys[1][..prefix.len() + "tfstate:{".len() + 16 + 2];
    let tag = &state[prefix.len() + "tfstate:{".len()..state.len() - 2];
    assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()), "{keys:?}");
    assert!(state.ends_with("}:"), "{state}");
    // The delete marker has no body key.
    assert_eq!(
        keys,
        vec![
            format!("{prefix}tfstate:names"),
            format!("{state}meta"),
            format!("{state}v:1"),
            format!("{state}vm"),
        ]
    );
    assert_eq!(
        server.redis_cli(["HGET", &format!("{state}meta"), "name"]),
        "team/{app}/prod"
    );
    assert_eq!(
        server.redis_cli(["ZRANGE", &format!("{prefix}tfstate:names"), "0", "-1"]),
        "team/{app}/prod"
    );
}

/// Two stores on the same Redis and prefix see the same states (two tflock
/// servers behind one Redis).
#[tokio::test]
async fn shared_between_servers() {
    let config = tokio::task::spawn_blocking(standalone).await.unwrap();
    let connect = || {
        RedisBackend::connect(
            config.clone(),
            LockSettings::default(),
            Arc::new(SystemClock),
        )
    };
    let a = RedisStates::new(connect().await.unwrap(), StoreOptions::default());
    let b = RedisStates::new(connect().await.unwrap(), StoreOptions::default());
    let n = name("shared");
    a.record_lock(&n, record("d", 4)).await.unwrap();
    b.put(&n, admin(doc(3, "l"))).await.unwrap();
    assert_eq!(a.get(&n).await.unwrap().unwrap().body, doc(3, "l"));
    assert_eq!(b.fence(&n).await.unwrap(), 4);
    assert_eq!(a.list().await.unwrap(), b.list().await.unwrap());
}

/// With `min_replicas_ack`, a write answers once the replicas confirmed it; when
/// they cannot, it is a `Store` error (the write stays made on the primary: "maybe
/// written", as the crate docs say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_min_replicas_ack() {
    let (primary, replica) = tokio::task::spawn_blocking(|| {
        let primary = RedisServer::start(RedisOptions::default());
        let replica = RedisServer::start(
            RedisOptions::default().config(&format!("replicaof 127.0.0.1 {}", primary.port())),
        );
        tflock_testkit::wait_until(
            tflock_testkit::DEFAULT_TIMEOUT,
            "the replica is linked",
            || match primary.info_field("replication", "connected_slaves") {
                Some(n) if n == "1" => Ok(()),
                n => Err(format!("connected_slaves: {n:?}")),
            },
        );
        (primary, replica)
    })
    .await
    .unwrap();
    let base = with_test_timeouts(RedisConfig::standalone(primary.addr().to_string()));
    let config = |replicas: u32| RedisConfig {
        min_replicas_ack: replicas,
        write_timeout: Duration::from_millis(200),
        ..base.clone()
    };
    let connect = |c: RedisConfig| async move {
        RedisBackend::connect(c, LockSettings::default(), Arc::new(SystemClock))
            .await
            .unwrap()
    };

    let one = RedisStates::new(connect(config(1)).await, StoreOptions::default());
    let n = name("acked");
    one.record_lock(&n, record("d", 1)).await.unwrap();
    one.put(&n, suite::write(doc(1, "l"), lock("d", 1)))
        .await
        .unwrap();

    // Two required, one exists.
    let two = RedisStates::new(connect(config(2)).await, StoreOptions::default());
    let store_error = |e: tflock_tfstate::WriteError| match e {
        tflock_tfstate::WriteError::Store(m) => assert!(m.contains("min_replicas_ack"), "{m}"),
        other => panic!("an unconfirmed write: {other:?}"),
    };
    store_error(two.put(&name("new"), admin(doc(1, "l"))).await.unwrap_err());
    assert!(matches!(
        two.record_lock(&n, record("d", 2)).await,
        Err(tflock_tfstate::RecordError::Store(_))
    ));
    // The index entry is confirmed before a first write runs: unconfirmed, the
    // write did not run.
    assert!(two.get(&name("new")).await.unwrap().is_none());
    // An unconfirmed write is made on the primary all the same.
    store_error(two.delete(&n, Guard::Admin, 5).await.unwrap_err());
    assert!(two.get(&n).await.unwrap().is_none());
    // record_lock's index entry was not confirmed either: its script did not run.
    assert_eq!(one.fence(&n).await.unwrap(), 1);
    drop(replica);
}
