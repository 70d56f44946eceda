//! The sweeper's roles (by itself, follower, fenced leader), the per-bucket fences
//! that refuse a stale leader, the removal of dead servers' waiters, and the
//! waiters' own fallback that hands an expired lease on while nobody sweeps.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{Backend, EventKind, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::{
    BackendOptions, LeaderAuthority, RedisBackend, RedisConfig, SweepRole, SweepStats,
};

fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").unwrap()
}

async fn backend(config: &RedisConfig, role: SweepRole) -> Arc<RedisBackend> {
    RedisBackend::connect_with(
        config.clone(),
        LockSettings::default(),
        Arc::new(SystemClock),
        BackendOptions::default().sweep(role),
    )
    .await
    .expect("connect")
}

/// `dead`: node id → when it was declared dead (µs on this host's clock, which is the
/// test Redis's), turned into the age the authority carries.
fn leader(epoch: u64, dead: BTreeMap<String, u64>) -> SweepRole {
    let (now, at) = (now_us(), Instant::now());
    let dead = dead
        .into_iter()
        .map(|(node, t)| (node, (Duration::from_micros(now.saturating_sub(t)), at)))
        .collect();
    SweepRole::Leader(LeaderAuthority {
        epoch,
        valid_until: None,
        dead_nodes: Arc::new(dead),
    })
}

fn now_us() -> u64 {
    tflock_core::Timestamp::from_system_time(std::time::SystemTime::now()).as_micros()
}

/// Holds `r` for `ttl` and queues a reservation behind it; returns its entry id.
async fn held_with_reservation(b: &RedisBackend, r: &Resource, ttl: Duration) -> String {
    let held = b
        .try_lock(LockRequest::new(r.clone(), "holder").with_ttl(ttl))
        .await
        .unwrap();
    assert!(held.acquired);
    b.try_lock(LockRequest::new(r.clone(), "next").reserving())
        .await
        .unwrap()
        .queue
        .unwrap()
        .entry_id
}

async fn holder(b: &RedisBackend, r: &Resource) -> Option<String> {
    b.get_lock(r).await.unwrap().map(|l| l.owner.owner)
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if f().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stats_until(b: &RedisBackend, limit: Duration, f: impl Fn(&SweepStats) -> bool) {
    let mut rx = b.sweep_stats();
    tokio::time::timeout(limit, rx.wait_for(|s| f(s)))
        .await
        .expect("sweep stats in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_does_not_sweep_and_a_leader_does() {
    let config = common::config_for(common::standalone).await;
    let b = backend(&config, SweepRole::Follower).await;
    let r = resource("o/follower");
    held_with_reservation(&b, &r, Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    // The lease has expired (get_lock never shows it), yet nobody handed it on.
    assert_eq!(holder(&b, &r).await, None);
    assert_eq!(b.get_queue_status(&r).await.unwrap().entries.len(), 1);

    assert_eq!(b.fence_all(3).await.unwrap(), None);
    b.set_sweep_role(leader(3, BTreeMap::new()));
    wait_for(
        "the leader hands the lease on",
        Duration::from_secs(3),
        || async { holder(&b, &r).await.as_deref() == Some("next") },
    )
    .await;
    // The counters follow once the sweep of all 64 buckets has answered.
    stats_until(&b, Duration::from_secs(3), |s| {
        s.leader_sweeps >= 1 && s.leader_items >= 1
    })
    .await;
    let s = *b.sweep_stats().borrow();
    assert_eq!((s.last_epoch, s.stale_refusals), (3, 0), "{s:?}");
}

/// A leader whose epoch a newer leader has fenced is refused in every bucket, and
/// stops: the expired lease it would have handed on stays for the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_is_refused_by_the_fences() {
    let config = common::config_for(common::standalone).await;
    let old = backend(&config, SweepRole::Follower).await;
    let new = backend(&config, SweepRole::Follower).await;
    assert_eq!(old.fence_all(5).await.unwrap(), None);
    // A newer leader claims every bucket, then (in this test) does nothing.
    assert_eq!(new.fence_all(6).await.unwrap(), None);
    let r = resource("o/stale");
    held_with_reservation(&new, &r, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut events = new.subscribe();
    old.set_sweep_role(leader(5, BTreeMap::new()));
    stats_until(&old, Duration::from_secs(5), |s| s.stale_refusals >= 1).await;
    let mut role = old.watch_sweep_role();
    tokio::time::timeout(
        Duration::from_secs(5),
        role.wait_for(|r| *r == SweepRole::Follower),
    )
    .await
    .expect("the stale leader steps down by itself")
    .unwrap();
    let s = *old.sweep_stats().borrow();
    assert_eq!(s.refused_by, 6, "{s:?}");
    assert_eq!(
        s.leader_items, 0,
        "nothing done under the stale epoch: {s:?}"
    );
    assert_eq!(old.fence_all(5).await.unwrap(), Some(6));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        b_queue_len(&new, &r).await,
        1,
        "the stale leader handed nothing on"
    );
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok()).any(|e| e.event == EventKind::QueueGranted),
        "no grant under the stale epoch"
    );

    // The new leader does the work.
    new.set_sweep_role(leader(6, BTreeMap::new()));
    wait_for(
        "the new leader hands on",
        Duration::from_secs(3),
        || async { holder(&new, &r).await.as_deref() == Some("next") },
    )
    .await;
}

async fn b_queue_len(b: &RedisBackend, r: &Resource) -> usize {
    b.get_queue_status(r).await.unwrap().entries.len()
}

/// The waiter entries of a server declared dead are removed by the leader's sweep
/// (only those queued before it was declared dead); a live server's stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_removes_the_waiters_of_dead_servers() {
    let config = common::config_for(common::standalone).await;
    let lead = backend(&config, SweepRole::Follower).await;
    let dying = backend(&config, SweepRole::Follower).await;
    let living = backend(&config, SweepRole::Follower).await;
    dying.set_serving_node(Some("node-dying"));
    living.set_serving_node(Some("node-living"));
    let r = resource("o/dead-server");
    assert!(
        lead.try_lock(LockRequest::new(r.clone(), "holder"))
            .await
            .unwrap()
            .acquired
    );

    // Two waiting calls; the dying server's vanishes without its drop guard (a killed
    // process), so its entry stays in Redis.
    let wait = Duration::from_secs(60);
    let mut ghost = Box::pin({
        let dying = dying.clone();
        let req = LockRequest::new(r.clone(), "ghost").with_wait(wait);
        async move { dying.try_lock(req).await }
    });
    let live = tokio::spawn({
        let living = living.clone();
        let req = LockRequest::new(r.clone(), "alive").with_wait(wait);
        async move { living.try_lock(req).await }
    });
    let started = Instant::now();
    while b_queue_len(&lead, &r).await < 2 {
        assert!(futures::poll!(&mut ghost).is_pending());
        assert!(started.elapsed() < Duration::from_secs(10), "never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::forget(ghost);
    Backend::close(&*dying).await;

    // Declared dead before the entry was made: nothing happens to it.
    let mut dead = BTreeMap::new();
    dead.insert("node-dying".to_string(), now_us() - 60_000_000);
    assert_eq!(lead.fence_all(1).await.unwrap(), None);
    lead.set_sweep_role(leader(1, dead));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b_queue_len(&lead, &r).await, 2);

    // Declared dead now: its entry goes, the living server's stays.
    let mut events = lead.subscribe();
    let mut dead = BTreeMap::new();
    dead.insert("node-dying".to_string(), now_us());
    assert_eq!(lead.fence_all(2).await.unwrap(), None);
    lead.set_sweep_role(leader(2, dead));
    wait_for(
        "the dead server's waiter is removed",
        Duration::from_secs(3),
        || async { b_queue_len(&lead, &r).await == 1 },
    )
    .await;
    // Events come back through Redis pub/sub (the relay), so the event may arrive
    // after the queue already shows the removal: wait for it rather than poll once.
    let left = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(e) if e.event == EventKind::QueueLeft => break e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("queue.left for the removed entry within 5 s");
    assert_eq!(left.owner, "ghost");
    let status = lead.get_queue_status(&r).await.unwrap();
    assert_eq!(status.entries[0].entry.owner.owner, "alive");
    live.abort();
}

/// With no sweeper at all (every backend a follower, as between a leader's death and
/// the next election), a waiter's own 1 s fallback ends an expired lease and takes
/// the lock: handed on within about a second of the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_take_an_expired_lease_without_any_sweeper() {
    let config = common::config_for(common::standalone).await;
    let a = backend(&config, SweepRole::Follower).await;
    let b = backend(&config, SweepRole::Follower).await;
    let r = resource("o/no-sweeper");
    let ttl = Duration::from_millis(400);
    let held = a
        .try_lock(LockRequest::new(r.clone(), "holder").with_ttl(ttl))
        .await
        .unwrap();
    let expires = held.lock.unwrap().expires_at;
    let got = b
        .try_lock(LockRequest::new(r.clone(), "waiter").with_wait(Duration::from_secs(10)))
        .await
        .unwrap();
    let granted_at = tflock_core::Timestamp::from_system_time(std::time::SystemTime::now());
    assert!(got.acquired, "{got:?}");
    let late = granted_at.since(expires);
    assert!(
        late < Duration::from_millis(1800),
        "granted {late:?} after the expiry"
    );
    assert_eq!(
        *b.sweep_stats().borrow(),
        SweepStats::default(),
        "nobody swept"
    );
}
