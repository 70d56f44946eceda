//! Redis Cluster: a killed primary is replaced by its replica and the backend carries
//! on; calls during the outage answer backend_unavailable within read_timeout; every
//! lease survives on the promoted replica; listing stays complete; `WAIT` is routed to
//! the primary of the bucket.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{Backend, LockFilter, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::keys::bucket_of;
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_is_replaced_and_operations_resume() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
            .await
            .unwrap(),
    );
    let read_timeout = Duration::from_secs(1);
    let prefix = common::fresh_prefix();
    let config = RedisConfig {
        // Every node is a seed, so the client can start over from a survivor.
        addresses: cluster.addrs().iter().map(|a| a.to_string()).collect(),
        cluster_mode: true,
        key_prefix: prefix.clone(),
        read_timeout,
        ..common::with_test_timeouts(RedisConfig::default())
    };
    let settings = LockSettings::default();
    let b = RedisBackend::connect(config.clone(), settings.clone(), Arc::new(SystemClock))
        .await
        .expect("connect to the cluster");

    // WAIT goes to the primary holding the bucket, and its replica confirms.
    let acked = RedisBackend::connect(
        RedisConfig {
            min_replicas_ack: 1,
            ..config.clone()
        },
        settings.clone(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let mut locks = Vec::new();
    for i in 0..48 {
        let r = Resource::new(format!("o/r{i}"), ".", "default", "").unwrap();
        let answer = acked
            .try_lock(LockRequest::new(r, format!("o/r{i}#1")))
            .await
            .expect("a grant confirmed by a replica");
        locks.push(answer.lock.expect("granted"));
    }
    drop(acked);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.wait_replicas_in_sync())
        .await
        .unwrap();
    let victim_bucket = bucket_of(&locks[0].resource);
    let key = format!("{prefix}{{b:{victim_bucket:02x}}}:resources");
    let c = cluster.clone();
    let victim = tokio::task::spawn_blocking(move || {
        let v = c.primary_for_key(&key);
        c.kill_primary(v);
        v
    })
    .await
    .unwrap();

    // During the outage: an answer, never a hang.
    for attempt in 0..3 {
        let started = Instant::now();
        let answer = b.get_lock(&locks[0].resource).await;
        let took = started.elapsed();
        assert!(
            took < read_timeout + Duration::from_millis(700),
            "attempt {attempt}: answered after {took:?} ({answer:?})"
        );
        if answer.is_ok() {
            // The failover already happened.
            break;
        }
    }

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.wait_for_failover(victim))
        .await
        .unwrap();

    // Operations resume; every lease is still there, listing sees every primary.
    let started = Instant::now();
    let held = loop {
        match b.get_lock(&locks[0].resource).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no recovery after the failover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(held, Some(locks[0].public()));
    let page = b
        .list_locks(LockFilter {
            limit: Some(1000),
            ..LockFilter::default()
        })
        .await
        .expect("list_locks after the failover");
    let mut want: Vec<_> = locks.iter().map(|l| l.public()).collect();
    want.sort_by_key(|l| l.resource.storage_key());
    assert_eq!(
        page.locks, want,
        "every lock, in key order, after the failover"
    );
    for l in &locks {
        b.unlock(&l.resource, l.lease_id.as_ref().unwrap())
            .await
            .expect("unlock after the failover");
    }
    let again = b
        .try_lock(LockRequest::new(locks[0].resource.clone(), "new"))
        .await
        .unwrap();
    assert!(again.acquired);
    assert!(again.lock.unwrap().fencing_token > locks[0].fencing_token);
}
