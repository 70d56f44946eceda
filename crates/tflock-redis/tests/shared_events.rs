//! Several backends on one Redis (several tflock servers): each one's event stream
//! carries the events of all of them, its own once, on standalone Redis (classic
//! pub/sub) and on Redis Cluster (sharded pub/sub, one channel per bucket).

mod common;

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, EventKind, LockEvent, LockRequest, LockSettings, Resource, SystemClock,
};
use tflock_redis::{BackendOptions, EventChannels, RedisBackend, RedisConfig};
use tokio::sync::broadcast;

async fn backend(config: &RedisConfig) -> Arc<RedisBackend> {
    RedisBackend::connect(
        config.clone(),
        LockSettings::default(),
        Arc::new(SystemClock),
    )
    .await
    .expect("connect")
}

/// Every event of `kind` on `r` that arrives within `quiet` of the previous one.
async fn drain(rx: &mut broadcast::Receiver<LockEvent>, quiet: Duration) -> Vec<LockEvent> {
    let mut out = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(quiet, rx.recv()).await {
        out.push(e);
    }
    out
}

fn count(events: &[LockEvent], kind: EventKind, r: &Resource) -> usize {
    events
        .iter()
        .filter(|e| e.event == kind && &e.resource == r)
        .count()
}

/// A and B share a store; B and A each see A's lock and unlock exactly once, over
/// many resources (so, on a cluster, over many buckets and every primary).
async fn events_reach_every_backend_once(base: fn() -> RedisConfig, channels: EventChannels) {
    let config = common::config_for(base).await;
    let (a, b) = (backend(&config).await, backend(&config).await);
    assert_eq!(a.event_channels(), channels);
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    // The relay subscribes in the background: wait until B hears A.
    let probe = Resource::new("o/probe", ".", "default", "").unwrap();
    let mut heard = false;
    for _ in 0..50 {
        let l = a
            .try_lock(LockRequest::new(probe.clone(), "probe"))
            .await
            .unwrap();
        a.unlock(&probe, l.lock.unwrap().lease_id.as_ref().unwrap())
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                if let Ok(e) = on_b.recv().await
                    && e.resource == probe
                {
                    return;
                }
            }
        })
        .await
        .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "B never received A's events");
    drain(&mut on_a, Duration::from_millis(300)).await;
    drain(&mut on_b, Duration::from_millis(300)).await;

    let resources: Vec<Resource> = (0..40)
        .map(|i| Resource::new(format!("o/r{i}"), ".", "default", "").unwrap())
        .collect();
    for r in &resources {
        let l = a.try_lock(LockRequest::new(r.clone(), "a")).await.unwrap();
        assert!(l.acquired);
        a.unlock(r, l.lock.unwrap().lease_id.as_ref().unwrap())
            .await
            .unwrap();
    }
    let seen_a = drain(&mut on_a, Duration::from_millis(500)).await;
    let seen_b = drain(&mut on_b, Duration::from_millis(500)).await;
    for r in &resources {
        for kind in [EventKind::LockAcquired, EventKind::LockReleased] {
            assert_eq!(count(&seen_a, kind, r), 1, "A's own {kind:?} on {r:?}");
            assert_eq!(
                count(&seen_b, kind, r),
                1,
                "A's {kind:?} on {r:?}, seen by B"
            );
        }
    }
    // And B's events reach A.
    let r = Resource::new("o/from-b", ".", "default", "").unwrap();
    let l = b.try_lock(LockRequest::new(r.clone(), "b")).await.unwrap();
    assert!(l.acquired);
    let seen_a = drain(&mut on_a, Duration::from_millis(500)).await;
    assert_eq!(count(&seen_a, EventKind::LockAcquired, &r), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_backend_once_on_standalone() {
    events_reach_every_backend_once(common::standalone, EventChannels::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_backend_once_on_cluster() {
    events_reach_every_backend_once(common::cluster, EventChannels::Sharded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_backend_once_on_sentinel() {
    events_reach_every_backend_once(common::sentinel, EventChannels::Classic).await;
}

/// With `share_events: false` a backend neither publishes nor relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshared_events_stay_local() {
    let config = common::config_for(common::standalone).await;
    let a = RedisBackend::connect_with(
        config.clone(),
        LockSettings::default(),
        Arc::new(SystemClock),
        BackendOptions::default().share_events(false),
    )
    .await
    .unwrap();
    let b = backend(&config).await;
    assert_eq!(a.event_channels(), EventChannels::Off);
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = Resource::new("o/local", ".", "default", "").unwrap();
    assert!(
        a.try_lock(LockRequest::new(r.clone(), "a"))
            .await
            .unwrap()
            .acquired
    );
    let seen_a = drain(&mut on_a, Duration::from_millis(300)).await;
    let seen_b = drain(&mut on_b, Duration::from_millis(300)).await;
    assert_eq!(count(&seen_a, EventKind::LockAcquired, &r), 1);
    assert_eq!(count(&seen_b, EventKind::LockAcquired, &r), 0);
}
