//! Redis Sentinel, a *stalled* primary: SIGSTOPped long enough for the sentinels to
//! promote its replica, then resumed before they reconfigure it (Sentinel waits some
//! seconds), so it still says `role:master`. A backend whose connection to it was
//! idle throughout never saw a failure; it must still stop writing there once the
//! sentinels announce the switch (`+switch-master`, src/sentinel_watch.rs).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig, SweepRole};
use tflock_testkit::RedisSentinel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_to_a_resumed_old_primary_is_dropped_at_the_switch() {
    let sentinel = Arc::new(
        tokio::task::spawn_blocking(RedisSentinel::start)
            .await
            .unwrap(),
    );
    let config = RedisConfig {
        sentinel: common::sentinel_config(&sentinel),
        key_prefix: common::fresh_prefix(),
        ..common::with_test_timeouts(RedisConfig::default())
    };
    let settings = LockSettings::default();
    // Idle: no sweeps, no events connection (a follower server between requests), so
    // nothing calls Redis during the stall and the connection never fails.
    let b = RedisBackend::connect_with(
        config.clone(),
        settings.clone(),
        Arc::new(SystemClock),
        BackendOptions::default()
            .sweep(SweepRole::Follower)
            .share_events(false),
    )
    .await
    .expect("connect through the sentinels");
    let before = Resource::new("o/before", ".", "default", "").unwrap();
    b.try_lock(LockRequest::new(before.clone(), "o/before#1"))
        .await
        .unwrap()
        .lock
        .expect("granted before the stall");

    // Stall the primary (b's connection stays idle meanwhile) until the sentinels
    // have promoted the replica, then resume it: it still believes it is the primary.
    let s = sentinel.clone();
    let (old, new) = tokio::task::spawn_blocking(move || {
        let primary = s.primary();
        let old = primary.addr();
        primary.pause();
        let new = s.wait_for_failover_from(old);
        primary.resume();
        (old, new)
    })
    .await
    .unwrap();
    assert_ne!(old, new);
    let resumed = Instant::now();
    // The sentinels published +switch-master when they switched (all of them have by
    // now); give the notification a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let r = Resource::new("o/after", ".", "default", "").unwrap();
    let lock = b
        .try_lock(LockRequest::new(r.clone(), "o/after#1"))
        .await
        .expect("a call after the switch")
        .lock
        .expect("granted after the switch");
    let s = sentinel.clone();
    let old_role = tokio::task::spawn_blocking(move || {
        s.data_nodes()
            .iter()
            .find(|n| n.addr() == old)
            .unwrap()
            .info_field("replication", "role")
    })
    .await
    .unwrap();

    // A fresh backend, connected through the sentinels to the new primary, sees it.
    let fresh = RedisBackend::connect(config, settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let held = fresh.get_lock(&r).await.unwrap();
    assert_eq!(
        held.as_ref().map(|l| l.fencing_token),
        Some(lock.fencing_token),
        "the lock granted {:?} after the old primary {old} resumed (role then: {old_role:?}) \
         is not on the new primary {new}: the backend kept writing to the old one",
        resumed.elapsed()
    );
}
