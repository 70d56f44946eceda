//! Issue 15's safety holes that only Redis has, each on a real redis-server: a waiter
//! cut off during `WAIT` does not keep the lock for its TTL, with `min_replicas_ack`
//! every acknowledged change waits for the replicas, and a retry of a call that still
//! waits joins its entry. The backend-independent rules (lease ids checked, expected
//! token and resource, replays from the present, re-lock proof, request ids secret) are
//! conformance cases (`tflock_conformance::cases::*`), run on every topology.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{
    Backend, BackendError, LockRequest, LockSettings, NotAcquiredReason, Owner, Resource,
    SystemClock, TransferAuth, TryLockError,
};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::RedisServer;

fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").unwrap()
}

async fn backend_with(config: RedisConfig, settings: LockSettings) -> Arc<RedisBackend> {
    RedisBackend::connect(config, settings, Arc::new(SystemClock))
        .await
        .expect("connect")
}

/// A backend on a fresh key prefix of a shared deployment (`common::standalone`,
/// `common::cluster`).
async fn backend(base: fn() -> RedisConfig) -> Arc<RedisBackend> {
    let config = RedisConfig {
        key_prefix: common::fresh_prefix(),
        ..tokio::task::spawn_blocking(base).await.unwrap()
    };
    backend_with(config, LockSettings::default()).await
}

async fn grant(b: &RedisBackend, req: LockRequest) -> tflock_core::Lock {
    let r = b.try_lock(req).await.expect("try_lock");
    assert!(r.acquired, "expected a grant: {r:?}");
    r.lock.unwrap()
}

/// The topology-independent cases, on standalone and on a Cluster with replicas.
macro_rules! on_topologies {
    ($($case:ident),* $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::common::standalone).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::common::cluster).await
                }
            )*
        }
    };
}

on_topologies!(waiting_retry_joins_the_first_calls_entry,);

// ---- 6 and 7: min_replicas_ack, with a real replica stopped ----

fn acked(primary: &RedisServer) -> RedisConfig {
    RedisConfig {
        key_prefix: common::fresh_prefix(),
        min_replicas_ack: 1,
        ..common::with_test_timeouts(RedisConfig::standalone(primary.addr().to_string()))
    }
}

async fn pause(s: &Arc<RedisServer>) {
    let s = s.clone();
    tokio::task::spawn_blocking(move || s.pause())
        .await
        .unwrap();
}

async fn resume(s: &Arc<RedisServer>) {
    let s = s.clone();
    tokio::task::spawn_blocking(move || s.resume())
        .await
        .unwrap();
}

fn unavailable<T: std::fmt::Debug, E: std::fmt::Debug>(r: &Result<T, E>) -> bool {
    format!("{r:?}").contains("Unavailable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_waits_for_the_replica() {
    let (primary, replica) = common::primary_and_replica().await;
    let b = backend_with(acked(&primary), LockSettings::default()).await;
    let rs: Vec<Resource> = (0..4).map(|i| resource(&format!("o/acked-{i}"))).collect();
    let mut locks = Vec::new();
    for r in &rs {
        locks.push(grant(&b, LockRequest::new(r.clone(), "o/acked#1")).await);
    }
    grant(
        &b,
        LockRequest::new(resource("o/acked-pull"), "o/acked-pull#3"),
    )
    .await;
    pause(&replica).await;
    let lease = |i: usize| locks[i].lease_id.clone().unwrap();

    let relock = b
        .try_lock(LockRequest::new(rs[0].clone(), "o/acked#1").with_lease_id(lease(0)))
        .await;
    assert!(
        matches!(
            relock,
            Err(TryLockError::Backend(BackendError::Unavailable(_)))
        ),
        "re-lock not replicated: {relock:?}"
    );
    let refresh = b
        .refresh_lock(&rs[1], &lease(1), Duration::from_secs(600))
        .await;
    assert!(unavailable(&refresh), "refresh not replicated: {refresh:?}");
    let transfer = b
        .transfer_lock(
            &rs[2],
            TransferAuth::Lease(lease(2)),
            Owner::named("o/acked#2"),
        )
        .await;
    assert!(
        unavailable(&transfer),
        "transfer not replicated: {transfer:?}"
    );
    let unlock = b.unlock(&rs[3], &lease(3)).await;
    assert!(unavailable(&unlock), "unlock not replicated: {unlock:?}");
    let forced = b.force_unlock(&rs[0], None).await;
    assert!(
        unavailable(&forced),
        "force unlock not replicated: {forced:?}"
    );
    let pulled = b.unlock_by_pull("o/acked-pull", 3).await;
    assert!(
        unavailable(&pulled),
        "unlock by pull not replicated: {pulled:?}"
    );
    resume(&replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_cut_off_during_wait_frees_the_lock_within_claim_timeout() {
    let (primary, replica) = common::primary_and_replica().await;
    let claim = Duration::from_secs(2);
    let settings = LockSettings {
        claim_timeout: claim,
        ..LockSettings::default()
    };
    // Waiters on backends that wait for the replica (each its own connection: a
    // blocked WAIT holds up its connection), observed through one that does not.
    let waiting = RedisConfig {
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        ..acked(&primary)
    };
    let b = backend_with(waiting.clone(), settings.clone()).await;
    let c = backend_with(waiting.clone(), settings.clone()).await;
    let admin = backend_with(
        RedisConfig {
            min_replicas_ack: 0,
            ..waiting.clone()
        },
        settings,
    )
    .await;
    let r = resource("o/cut-off");
    let ttl = Duration::from_secs(120);
    let holder = grant(&b, LockRequest::new(r.clone(), "holder").with_ttl(ttl)).await;

    let first = {
        let b = b.clone();
        let req = LockRequest::new(r.clone(), "first")
            .with_ttl(ttl)
            .with_wait(Duration::from_secs(60));
        tokio::spawn(async move { b.try_lock(req).await })
    };
    // Queued first, then the second waiter.
    let started = Instant::now();
    while admin.get_queue_status(&r).await.unwrap().entries.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = {
        let b = c.clone();
        let req = LockRequest::new(r.clone(), "second")
            .with_ttl(ttl)
            .with_wait(Duration::from_secs(60));
        tokio::spawn(async move { b.try_lock(req).await })
    };
    while admin.get_queue_status(&r).await.unwrap().entries.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The replica stops: the first waiter's confirmation blocks in WAIT.
    pause(&replica).await;
    let _ = admin.force_unlock(&r, Some(holder.fencing_token)).await;
    let started = Instant::now();
    loop {
        let l = admin.get_lock(&r).await.unwrap();
        if l.as_ref()
            .is_some_and(|l| l.owner.owner == "first" && !l.claim_pending)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first waiter confirms: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cut off while its WAIT blocks.
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    let _ = first.await;
    let cut = Instant::now();
    resume(&replica).await;

    let got = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second waiter answers")
        .unwrap()
        .unwrap();
    assert!(got.acquired, "the second waiter: {got:?}");
    assert!(
        cut.elapsed() < claim + Duration::from_secs(3),
        "granted {:?} after the cut, claim_timeout is {claim:?}, ttl {ttl:?}",
        cut.elapsed()
    );
}

// ---- 1: a retry of a call that still waits joins its entry ----

async fn waiting_retry_joins_the_first_calls_entry(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/replay-w");
    let holder = grant(&b, LockRequest::new(r.clone(), "holder")).await;
    let req = LockRequest::new(r.clone(), "o/replay-w#1")
        .with_wait(Duration::from_secs(20))
        .with_request_id("rid-replay-w");
    let spawn = |req: LockRequest| {
        let b = b.clone();
        tokio::spawn(async move { b.try_lock(req).await })
    };
    let first = spawn(req.clone());
    let started = Instant::now();
    while b.get_queue_status(&r).await.unwrap().entries.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry = spawn(req.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.get_queue_status(&r).await.unwrap().entries.len(),
        1,
        "never a second entry"
    );
    b.unlock(&r, holder.lease_id.as_ref().unwrap())
        .await
        .unwrap();
    let first = first.await.unwrap().unwrap();
    let retry = tokio::time::timeout(Duration::from_secs(10), retry)
        .await
        .expect("the retry answers")
        .unwrap()
        .unwrap();
    assert!(first.acquired && retry.acquired, "{first:?} / {retry:?}");
    let (f, g) = (first.lock.unwrap(), retry.lock.unwrap());
    assert_eq!(f.fencing_token, g.fencing_token, "one grant");
    assert_eq!(f.lease_id, g.lease_id);

    // Cancelled: a retry gets that outcome, and queues nothing.
    let lock = b.get_lock(&r).await.unwrap().unwrap();
    assert_eq!(lock.owner.owner, "o/replay-w#1");
    let req = LockRequest::new(r.clone(), "o/replay-w#2")
        .with_wait(Duration::from_secs(20))
        .with_request_id("rid-replay-w2");
    let waiting = spawn(req.clone());
    let started = Instant::now();
    let id = loop {
        if let Some(e) = b.get_queue_status(&r).await.unwrap().entries.first() {
            break e.entry.entry_id.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    b.cancel_queue_entry(&id, Some(&r)).await.unwrap();
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.reason, Some(NotAcquiredReason::Cancelled));
    let again = tokio::time::timeout(Duration::from_secs(2), b.try_lock(req))
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(
        again.reason,
        Some(NotAcquiredReason::Cancelled),
        "{again:?}"
    );
    assert!(b.get_queue_status(&r).await.unwrap().entries.is_empty());
}
