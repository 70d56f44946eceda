//! A refused plain TryLock without the script (src/held.rs): once a resource was
//! found held by another owner, a plain TryLock of it reads the lease (`HMGET` and
//! `TIME`) and answers `held` from it, exactly as `try_lock.lua` would, and runs the
//! script whenever the read does not show a live lease of someone else: the holder
//! released it, the lease expired and was not swept yet, or the caller is the holder.
//!
//! On its own redis-server (its `INFO commandstats` counts only this test's calls),
//! with a `ManualClock` and the backend as a sweep follower, so that an expired lease
//! stays in the store until a TryLock settles it.
mod common;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tflock_core::{
    Backend, LockRequest, LockResponse, LockSettings, ManualClock, NotAcquiredReason, Resource,
    SharedClock,
};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig, SweepRole};
use tflock_testkit::{RedisOptions, RedisServer};

/// (FCALL calls, HMGET calls) so far on the server.
async fn calls(c: &mut MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let count = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map(|n| n.parse().unwrap())
            .unwrap_or(0)
    };
    (count("fcall"), count("hmget"))
}

/// A backend on `config`, as a sweep follower (an expired lease stays until a
/// TryLock settles it).
async fn open(
    config: &RedisConfig,
    settings: LockSettings,
    clock: SharedClock,
) -> Arc<RedisBackend> {
    RedisBackend::connect_with(
        config.clone(),
        settings,
        clock,
        BackendOptions::default().sweep(SweepRole::Follower),
    )
    .await
    .expect("connect")
}

/// A connection of the test's own to `server`, for its `INFO commandstats`.
async fn stats_connection(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn res(path: &str) -> Resource {
    Resource::new("held/read", path, "default", "").unwrap()
}

fn plain(r: &Resource, owner: &str, ttl: Duration) -> LockRequest {
    LockRequest::new(r.clone(), owner).with_ttl(ttl)
}

#[tokio::test]
async fn a_refused_plain_acquire_reads_the_lease_and_answers_as_the_script_does() {
    let server = common::start_server(RedisOptions::default()).await;
    let clock = ManualClock::starting_now();
    let config = common::config_for_server(&server);
    let backend = open(&config, LockSettings::default(), Arc::new(clock.clone())).await;
    let mut c = stats_connection(&server).await;
    let hour = Duration::from_secs(3600);

    // Held by a; b's first plain TryLock is the script's answer.
    let r = res("one");
    let held = backend.try_lock(plain(&r, "a", hour)).await.unwrap();
    assert!(held.acquired);
    let by_script = backend.try_lock(plain(&r, "b", hour)).await.unwrap();
    assert_eq!(by_script.reason, Some(NotAcquiredReason::Held));
    assert_eq!(
        by_script.lock.as_ref().map(|l| l.fencing_token),
        held.lock.as_ref().map(|l| l.fencing_token)
    );
    // The next ones read the lease: no script, one HMGET each, the same answer.
    let before = calls(&mut c).await;
    let mut answers: Vec<LockResponse> = Vec::new();
    for _ in 0..10 {
        answers.push(backend.try_lock(plain(&r, "b", hour)).await.unwrap());
    }
    let after = calls(&mut c).await;
    assert_eq!(
        after.0 - before.0,
        0,
        "a refused plain TryLock ran the script"
    );
    assert_eq!(after.1 - before.1, 10, "one HMGET per refused TryLock");
    for a in &answers {
        assert_eq!(*a, by_script, "the read's answer is the script's");
    }
    // Another owner's TryLock with a wait, a reservation or a request id is the
    // script's (they may queue, or answer from a kept answer).
    let before = calls(&mut c).await;
    let with_rid = backend
        .try_lock(plain(&r, "b", hour).with_request_id("rid-1"))
        .await
        .unwrap();
    assert_eq!(with_rid.reason, Some(NotAcquiredReason::Held));
    assert_eq!(
        calls(&mut c).await.0 - before.0,
        1,
        "a request id goes to the script"
    );

    // The holder releases: the next plain TryLock is granted.
    let lease = held.lock.unwrap().lease_id.unwrap();
    backend.unlock(&r, &lease).await.unwrap();
    let granted = backend.try_lock(plain(&r, "b", hour)).await.unwrap();
    assert!(granted.acquired, "{granted:?}");
    assert!(
        granted.lock.as_ref().unwrap().fencing_token
            > by_script.lock.as_ref().unwrap().fencing_token
    );

    // A lease past its expiry, not swept yet: the read falls through to the script,
    // which settles it and grants.
    let r = res("expiring");
    assert!(
        backend
            .try_lock(plain(&r, "a", Duration::from_secs(10)))
            .await
            .unwrap()
            .acquired
    );
    let refused = backend.try_lock(plain(&r, "b", hour)).await.unwrap();
    assert_eq!(refused.reason, Some(NotAcquiredReason::Held));
    clock.advance(Duration::from_secs(11));
    let granted = backend.try_lock(plain(&r, "b", hour)).await.unwrap();
    assert!(
        granted.acquired,
        "an expired lease is not held: {granted:?}"
    );

    // The holder's own plain TryLock without proof is the script's held_by_owner,
    // not held, even for a resource others were refused on.
    let r = res("own");
    assert!(
        backend
            .try_lock(plain(&r, "a", hour))
            .await
            .unwrap()
            .acquired
    );
    let refused = backend.try_lock(plain(&r, "b", hour)).await.unwrap();
    assert_eq!(refused.reason, Some(NotAcquiredReason::Held));
    let own = backend.try_lock(plain(&r, "a", hour)).await.unwrap();
    assert_eq!(own.reason, Some(NotAcquiredReason::HeldByOwner), "{own:?}");
}

/// A hint that outlives the lease it was taken from (another server released it and
/// granted a shorter one, which expired and was not swept): the read shows no live
/// lease, so the script runs, settles and grants.
#[tokio::test]
async fn a_read_that_finds_the_lease_expired_runs_the_script() {
    let server = common::start_server(RedisOptions::default()).await;
    let clock = ManualClock::starting_now();
    // Both on one store: one key prefix.
    let config = common::config_for_server(&server);
    let one = open(&config, LockSettings::default(), Arc::new(clock.clone())).await;
    let two = open(&config, LockSettings::default(), Arc::new(clock.clone())).await;
    let mut c = stats_connection(&server).await;
    let hour = Duration::from_secs(3600);
    let r = res("shorter");
    let a = one.try_lock(plain(&r, "a", hour)).await.unwrap();
    assert!(a.acquired);
    // `two` learns that a holds it for an hour.
    let refused = two.try_lock(plain(&r, "b", hour)).await.unwrap();
    assert_eq!(refused.reason, Some(NotAcquiredReason::Held));
    // Through `one`: a releases, c takes it for 10 s, which then expire unswept.
    one.unlock(&r, &a.lock.unwrap().lease_id.unwrap())
        .await
        .unwrap();
    assert!(
        one.try_lock(plain(&r, "c", Duration::from_secs(10)))
            .await
            .unwrap()
            .acquired
    );
    clock.advance(Duration::from_secs(11));
    let before = calls(&mut c).await;
    let b = two.try_lock(plain(&r, "b", hour)).await.unwrap();
    let after = calls(&mut c).await;
    assert!(b.acquired, "an expired lease is not held: {b:?}");
    assert_eq!(after.0 - before.0, 1, "the script decided");
    // The read of the lease, and the script's own of the bucket's generation marker
    // before it grants (try_lock.lua): without the read, one.
    assert_eq!(after.1 - before.1, 2, "the lease was read first");
}

/// The retry loop without a queue (on the system clock, so the read's `TIME` is
/// Redis's): its attempts after the first read the lease instead of running the
/// script, it times out with the holder's view, and it is granted once the holder
/// releases.
#[tokio::test]
async fn the_retry_loop_reads_the_lease_between_attempts() {
    let server = common::start_server(RedisOptions::default()).await;
    let settings = LockSettings {
        enable_priority_queue: false,
        enable_retries: true,
        min_retry_backoff: Duration::from_millis(20),
        max_retry_backoff: Duration::from_millis(100),
        ..LockSettings::default()
    };
    let config = common::config_for_server(&server);
    let backend = open(&config, settings, Arc::new(tflock_core::SystemClock)).await;
    let mut c = stats_connection(&server).await;
    let hour = Duration::from_secs(3600);
    let r = res("retried");
    let a = backend.try_lock(plain(&r, "a", hour)).await.unwrap();
    assert!(a.acquired);
    let before = calls(&mut c).await;
    let timed_out = backend
        .try_lock(plain(&r, "b", hour).with_wait(Duration::from_millis(600)))
        .await
        .unwrap();
    let after = calls(&mut c).await;
    assert_eq!(timed_out.reason, Some(NotAcquiredReason::Timeout));
    assert_eq!(
        timed_out.lock.as_ref().map(|l| l.fencing_token),
        a.lock.as_ref().map(|l| l.fencing_token),
        "the timeout shows the holder"
    );
    assert_eq!(after.0 - before.0, 1, "one script call: the first attempt");
    assert!(
        after.1 - before.1 >= 3,
        "the attempts after it read the lease"
    );

    let waiting = {
        let backend = backend.clone();
        let r = r.clone();
        tokio::spawn(async move {
            backend
                .try_lock(plain(&r, "b", hour).with_wait(Duration::from_secs(10)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend
        .unlock(&r, &a.lock.unwrap().lease_id.unwrap())
        .await
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("granted soon after the release")
        .unwrap()
        .unwrap();
    assert!(b.acquired, "{b:?}");
}
