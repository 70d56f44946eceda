//! A bucket's slot moved to another primary after the backend learned the slot map
//! (a resharding): the plain reads that are not scripts (listing's pipelines, the
//! lease read of a refused TryLock, `held.rs`) follow the `MOVED` answer as a script
//! call does, instead of failing with `backend_unavailable`.
mod common;

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, LockFilter, LockRequest, LockSettings, ManualClock, NotAcquiredReason, Resource,
};
use tflock_redis::keys::{bucket_of, bucket_prefixes};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig, SweepRole};
use tflock_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_a_slot_moved_to_another_primary() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap();
    let config = common::with_test_timeouts(RedisConfig {
        addresses: cluster
            .primaries()
            .into_iter()
            .map(|i| cluster.node(i).addr().to_string())
            .collect(),
        cluster_mode: true,
        key_prefix: common::fresh_prefix(),
        ..RedisConfig::default()
    });
    let backend = RedisBackend::connect_with(
        config.clone(),
        LockSettings::default(),
        Arc::new(ManualClock::starting_now()),
        BackendOptions::default().sweep(SweepRole::Follower),
    )
    .await
    .expect("connect");
    let hour = Duration::from_secs(3600);
    let r = Resource::new("moved/slot", "stack", "default", "").unwrap();
    let held = backend
        .try_lock(LockRequest::new(r.clone(), "a").with_ttl(hour))
        .await
        .unwrap();
    assert!(held.acquired);
    // b is refused once by the script: its next plain TryLock reads the lease.
    let refused = backend
        .try_lock(LockRequest::new(r.clone(), "b").with_ttl(hour))
        .await
        .unwrap();
    assert_eq!(refused.reason, Some(NotAcquiredReason::Held));

    // Move the resource's bucket (one slot) to another primary, keys and all.
    let bucket = bucket_prefixes(&config.key_prefix)[bucket_of(&r)].clone();
    let cli = cluster.node(cluster.primaries()[0]).cli();
    let slot = cli.query(["CLUSTER", "KEYSLOT", bucket.as_str()]);
    let from = cluster.primary_for_key(&bucket);
    let to = *cluster
        .primaries()
        .iter()
        .find(|&&i| i != from)
        .expect("another primary");
    let (from_id, to_id) = (
        cluster.node_id(from).to_string(),
        cluster.node_id(to).to_string(),
    );
    let to_port = cluster.node(to).port().to_string();
    let (src, dst) = (cluster.node(from).cli(), cluster.node(to).cli());
    dst.query(["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    src.query(["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let keys = src.query(["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
    let keys: Vec<&str> = keys
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    assert!(!keys.is_empty(), "the bucket has keys to move");
    for k in &keys {
        let moved = src.query(["MIGRATE", "127.0.0.1", &to_port, k, "0", "5000"]);
        assert!(moved.contains("OK"), "MIGRATE {k}: {moved}");
    }
    for i in cluster.primaries() {
        cluster
            .node(i)
            .cli()
            .query(["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }

    // The lease read goes to the old primary first, which answers MOVED.
    let again = backend
        .try_lock(LockRequest::new(r.clone(), "b").with_ttl(hour))
        .await
        .expect("the lease read follows the move");
    assert_eq!(again, refused, "the same answer after the move");
    let page = backend
        .list_locks(LockFilter::default())
        .await
        .expect("listing follows the move");
    assert_eq!(
        page.locks
            .iter()
            .map(|l| l.resource.clone())
            .collect::<Vec<_>>(),
        vec![r.clone()]
    );
}
