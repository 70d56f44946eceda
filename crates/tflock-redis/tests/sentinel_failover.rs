//! Redis Sentinel: when the primary dies and the sentinels promote its replica, the
//! backend asks them again and carries on against the new primary.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::RedisSentinel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_follows_the_new_primary_after_failover() {
    let sentinel = Arc::new(
        tokio::task::spawn_blocking(RedisSentinel::start)
            .await
            .unwrap(),
    );
    let read_timeout = Duration::from_secs(1);
    let config = RedisConfig {
        sentinel: common::sentinel_config(&sentinel),
        key_prefix: common::fresh_prefix(),
        read_timeout,
        ..common::with_test_timeouts(RedisConfig::default())
    };
    let settings = LockSettings::default();
    // Grants confirmed by the replica (WAIT), so the failover cannot lose them.
    let acked = RedisBackend::connect(
        RedisConfig {
            min_replicas_ack: 1,
            ..config.clone()
        },
        settings.clone(),
        Arc::new(SystemClock),
    )
    .await
    .expect("connect through the sentinels");
    let b = RedisBackend::connect(config, settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let r = Resource::new("o/r", ".", "default", "").unwrap();
    let lock = acked
        .try_lock(LockRequest::new(r.clone(), "o/r#1"))
        .await
        .unwrap()
        .lock
        .expect("granted");
    drop(acked);

    let s = sentinel.clone();
    let old = tokio::task::spawn_blocking(move || s.kill_primary())
        .await
        .unwrap();
    let started = Instant::now();
    let during = b.get_lock(&r).await;
    assert!(
        started.elapsed() < read_timeout + Duration::from_millis(700),
        "a call during the outage took {:?}: {during:?}",
        started.elapsed()
    );
    let s = sentinel.clone();
    let new = tokio::task::spawn_blocking(move || s.wait_for_failover_from(old))
        .await
        .unwrap();
    assert_ne!(old, new);

    let started = Instant::now();
    let held = loop {
        match b.get_lock(&r).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the backend did not follow the failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(held, Some(lock.public()), "the lease survived the failover");
    b.unlock(&r, lock.lease_id.as_ref().unwrap())
        .await
        .expect("unlock on the new primary");
    let again = b
        .try_lock(LockRequest::new(r.clone(), "o/r#2"))
        .await
        .unwrap();
    assert!(again.acquired, "a write on the new primary");
    assert!(again.lock.unwrap().fencing_token > lock.fencing_token);
}
