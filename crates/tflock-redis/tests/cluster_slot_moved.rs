//! A bucket's slot moving to another primary after the backend learned the slot map
//! (a resharding): the plain reads that are not scripts (listing's pipelines, the
//! lease read of a refused TryLock, `held.rs`) follow `MOVED` (the slot has moved)
//! and `ASK` (its keys are moving: `ASKING` before each command of a pipeline) as a
//! script call does, instead of failing with `backend_unavailable`.
mod common;

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, LockFilter, LockRequest, LockResponse, LockSettings, ManualClock, NotAcquiredReason,
    Resource,
};
use tflock_redis::keys::{bucket_of, bucket_prefixes};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig, SweepRole};
use tflock_testkit::RedisCluster;

const HOUR: Duration = Duration::from_secs(3600);

/// Three resources of one bucket, so that its pipelines hold several commands.
fn resources() -> Vec<Resource> {
    let all: Vec<Resource> = (0..1000)
        .map(|i| Resource::new("moved/slot", format!("s{i}"), "default", "").unwrap())
        .collect();
    let bucket = bucket_of(&all[0]);
    all.into_iter()
        .filter(|r| bucket_of(r) == bucket)
        .take(3)
        .collect()
}

/// A cluster, a backend on it holding `resources()` for "a", and "b" refused once on
/// the first (the script's answer, which makes b's next plain TryLock read the lease).
async fn setup() -> (RedisCluster, RedisConfig, Arc<RedisBackend>, LockResponse) {
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
    for r in resources() {
        let held = backend
            .try_lock(LockRequest::new(r, "a").with_ttl(HOUR))
            .await
            .unwrap();
        assert!(held.acquired);
    }
    let refused = backend
        .try_lock(LockRequest::new(resources()[0].clone(), "b").with_ttl(HOUR))
        .await
        .unwrap();
    assert_eq!(refused.reason, Some(NotAcquiredReason::Held));
    (cluster, config, backend, refused)
}

/// Moves the bucket of `resources()` to another primary: its keys, and with `assign`
/// the slot itself (else the slot stays migrating: the old primary answers `ASK`).
fn migrate(cluster: &RedisCluster, config: &RedisConfig, assign: bool) {
    let bucket = bucket_prefixes(&config.key_prefix)[bucket_of(&resources()[0])].clone();
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
    assert!(keys.len() >= 3, "the bucket has keys to move: {keys:?}");
    for k in &keys {
        let moved = src.query(["MIGRATE", "127.0.0.1", &to_port, k, "0", "5000"]);
        assert!(moved.contains("OK"), "MIGRATE {k}: {moved}");
    }
    if assign {
        for i in cluster.primaries() {
            cluster
                .node(i)
                .cli()
                .query(["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
    }
}

/// The lease read (before any script call could refresh the slot map) and a listing
/// after the move answer as before it.
async fn reads_answer_as_before(backend: &RedisBackend, refused: &LockResponse) {
    let again = backend
        .try_lock(LockRequest::new(resources()[0].clone(), "b").with_ttl(HOUR))
        .await
        .expect("the lease read follows the move");
    assert_eq!(again, *refused, "the same answer after the move");
    let page = backend
        .list_locks(LockFilter::default())
        .await
        .expect("listing follows the move");
    let mut want = resources();
    want.sort_by_key(|r| r.storage_key());
    assert_eq!(
        page.locks
            .iter()
            .map(|l| l.resource.clone())
            .collect::<Vec<_>>(),
        want
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_a_slot_moved_to_another_primary() {
    let (cluster, config, backend, refused) = setup().await;
    migrate(&cluster, &config, true);
    reads_answer_as_before(&backend, &refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_keys_moving_to_another_primary() {
    let (cluster, config, backend, refused) = setup().await;
    migrate(&cluster, &config, false);
    reads_answer_as_before(&backend, &refused).await;
}
