//! Issue 6: the circuit breaker and the health monitor around a real Redis that hangs
//! (SIGSTOP), dies (SIGKILL) and comes back, with the monitor running as the server
//! runs it. Fail closed: no grant while Redis cannot be reached, fast refusals while
//! the breaker is open, recovery without rebuilding the backend, and waiters that end
//! (granted or `backend_unavailable`) instead of hanging.
//!
//! Each test has its own `redis-server`. Every wait is a bounded loop; the only timing
//! assertion is the loose "refused in under 50 ms while open".

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{
    Backend, ErrorCode, FencingToken, Lock, LockRequest, LockResponse, LockSettings, Resource,
    SystemClock, TryLockError,
};
use tflock_health::{BreakerSettings, BreakerState, GuardedBackend, Health};
use tflock_redis::RedisBackend;
use tflock_testkit::{RedisOptions, RedisServer};

const READ_TIMEOUT: Duration = Duration::from_millis(300);
const INTERVAL: Duration = Duration::from_millis(200);
const RESET: Duration = Duration::from_secs(1);
const THRESHOLD: u32 = 3;
/// Added to every bounded wait: a loaded two-core machine is slow.
const SLACK: Duration = Duration::from_secs(10);
/// "Fast" for a call refused by the open breaker (it never reaches Redis).
const FAST: Duration = Duration::from_millis(50);

/// A guarded Redis backend on its own server, with the health monitor running.
struct Rig {
    /// First, so it stops before the rest goes.
    _monitor: common::Monitor,
    server: Arc<RedisServer>,
    redis: Arc<RedisBackend>,
    guarded: Arc<GuardedBackend>,
    health: Arc<Health>,
}

async fn rig(options: RedisOptions) -> Rig {
    let server = tokio::task::spawn_blocking(move || Arc::new(RedisServer::start(options)))
        .await
        .unwrap();
    let config = common::fast_failing_redis(server.addr().to_string(), READ_TIMEOUT);
    let settings = LockSettings {
        claim_timeout: Duration::from_secs(2),
        ..LockSettings::default()
    };
    let redis = RedisBackend::connect(config, settings, Arc::new(SystemClock))
        .await
        .expect("connect to Redis");
    let (guarded, health, monitor) = common::guard(
        redis.clone(),
        BreakerSettings {
            failure_threshold: THRESHOLD,
            reset_timeout: RESET,
            half_open_max_requests: 1,
        },
        INTERVAL,
        READ_TIMEOUT * 4,
    );
    wait_for("the first health check", SLACK, || {
        health.report(None).last_check.is_some()
    })
    .await;
    Rig {
        _monitor: monitor,
        server,
        redis,
        guarded,
        health,
    }
}

fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").unwrap()
}

/// Polls `cond` every millisecond until it holds; panics after `limit`.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the health report shows `state`.
async fn report_shows(health: &Health, state: BreakerState, limit: Duration) {
    wait_for(&format!("the report to show {state:?}"), limit, || {
        health.report(None).circuit_breaker_state == state
    })
    .await;
}

async fn grant(b: &dyn Backend, r: &Resource, owner: &str) -> Lock {
    let answer = b
        .try_lock(LockRequest::new(r.clone(), owner))
        .await
        .expect("try_lock");
    assert!(answer.acquired, "expected a grant: {answer:?}");
    answer.lock.unwrap()
}

/// Redis cannot be reached: the answer must be `backend_unavailable`, never a grant
/// (nor any other answer that needed Redis). Returns the message.
fn expect_unavailable(answer: Result<LockResponse, TryLockError>) -> String {
    match answer {
        Ok(r) => panic!("Redis is unreachable, yet try_lock answered {r:?}"),
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::BackendUnavailable, "{e}");
            e.to_string()
        }
    }
}

async fn with_server(server: &Arc<RedisServer>, f: fn(&RedisServer)) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.unwrap();
}

/// With Redis unreachable: calls fail with `backend_unavailable` until the breaker
/// opens, after at most `failure_threshold` failed calls (the monitor's failed checks
/// count too, so it may be fewer); then calls are refused without reaching Redis.
async fn breaker_opens_and_refuses_fast(rig: &Rig) {
    let r = resource("o/outage");
    let started = Instant::now();
    let mut failed = 0;
    loop {
        let e = expect_unavailable(
            rig.guarded
                .try_lock(LockRequest::new(r.clone(), "outage"))
                .await,
        );
        if e.contains("circuit breaker") {
            break;
        }
        failed += 1;
        assert!(
            failed <= THRESHOLD,
            "{failed} failed calls and the breaker is still closed"
        );
        assert!(started.elapsed() < SLACK, "the breaker never opened");
    }

    // Open: refused at once. A call that made the breaker change state (its reset
    // timeout passed, so it went out as the half-open probe) is not counted.
    let mut refused = 0;
    for _ in 0..100 {
        if refused == 5 {
            break;
        }
        let before = rig.health.breaker.transitions();
        let state = rig.health.breaker.state();
        let t = Instant::now();
        let e = expect_unavailable(
            rig.guarded
                .try_lock(LockRequest::new(r.clone(), "outage"))
                .await,
        );
        let took = t.elapsed();
        if state == BreakerState::Open && rig.health.breaker.transitions() == before {
            assert!(e.contains("circuit breaker is open"), "{e}");
            assert!(took < FAST, "refused by the open breaker after {took:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, 5, "calls refused while open");
    let e = rig.guarded.get_lock(&r).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::BackendUnavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_opens_the_breaker_and_it_closes_after_resume() {
    let rig = rig(RedisOptions::default()).await;
    let r = resource("o/paused");
    let report = rig.health.report(None);
    assert_eq!(report.circuit_breaker_state, BreakerState::Closed);
    assert!(report.healthy, "{report:?}");
    // The monitor reads the Redis details under the names the report uses.
    assert!(report.health.connections_active > 0, "{report:?}");
    assert!(report.health.connections_total > 0, "{report:?}");
    assert!(report.health.memory_usage > 0, "{report:?}");
    let held = grant(&*rig.guarded, &r, "holder").await;

    with_server(&rig.server, RedisServer::pause).await;
    breaker_opens_and_refuses_fast(&rig).await;
    let report = rig.health.report(None);
    assert!(!report.healthy, "{report:?}");
    assert!(report.last_error.is_some(), "{report:?}");

    // The report shows closed, open and half-open in turn: after the reset timeout
    // the breaker reads half-open; a failed check (Redis is still stopped) opens it
    // again.
    report_shows(&rig.health, BreakerState::Open, SLACK).await;
    report_shows(&rig.health, BreakerState::HalfOpen, RESET + SLACK).await;
    report_shows(
        &rig.health,
        BreakerState::Open,
        INTERVAL + READ_TIMEOUT + SLACK,
    )
    .await;

    // SIGCONT: the monitor probes the open breaker every 250 ms (± 50 ms), and the
    // first check Redis answers closes it directly (open -> closed), without waiting
    // for the reset timeout; counted from before the resume, as the probe in flight
    // may be answered the moment Redis runs again.
    let at_resume = rig.health.breaker.transitions();
    with_server(&rig.server, RedisServer::resume).await;
    report_shows(&rig.health, BreakerState::Closed, RESET + INTERVAL + SLACK).await;
    assert!(
        rig.health.breaker.transitions() > at_resume,
        "open (or half-open) -> closed"
    );
    wait_for("a healthy report", SLACK, || {
        rig.health.report(None).healthy
    })
    .await;

    // The same backend works again: the lease survived, locking goes on.
    let still = rig
        .guarded
        .get_lock(&r)
        .await
        .expect("get_lock after resume")
        .expect("still held");
    assert_eq!(still.fencing_token, held.fencing_token);
    rig.guarded
        .unlock(&r, held.lease_id.as_ref().unwrap())
        .await
        .expect("unlock after resume");
    let next = grant(&*rig.guarded, &r, "after").await;
    assert!(next.fencing_token > held.fencing_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_opens_the_breaker_and_a_restart_on_the_same_port_closes_it() {
    let rig = rig(RedisOptions::default().appendonly()).await;
    let r = resource("o/killed");
    let held = grant(&*rig.guarded, &r, "holder").await;

    // SIGKILL: connections are refused.
    with_server(&rig.server, RedisServer::kill).await;
    breaker_opens_and_refuses_fast(&rig).await;
    report_shows(&rig.health, BreakerState::Open, SLACK).await;
    assert!(!rig.health.report(None).healthy);

    // Same port, same data (appendfsync always): the AOF is replayed. Transitions
    // are counted from before the restart: `restart` returns once Redis answers PING,
    // and a probe of the open breaker may have closed it by then.
    let at_restart = rig.health.breaker.transitions();
    with_server(&rig.server, RedisServer::restart).await;
    report_shows(&rig.health, BreakerState::Closed, RESET + INTERVAL + SLACK).await;
    assert!(rig.health.breaker.transitions() > at_restart);
    wait_for("a healthy report", SLACK, || {
        rig.health.report(None).healthy
    })
    .await;

    let still = rig
        .guarded
        .get_lock(&r)
        .await
        .expect("get_lock after the restart")
        .expect("the lease survived the restart");
    assert_eq!(still.fencing_token, held.fencing_token);
    rig.guarded
        .unlock(&r, held.lease_id.as_ref().unwrap())
        .await
        .expect("the lease id still works");
    let next = grant(&*rig.guarded, &r, "after").await;
    assert!(
        next.fencing_token > held.fencing_token,
        "the token counter survived"
    );
}

/// Spawns a waiting TryLock; returns its answer and how long it took.
fn spawn_waiter(
    b: &Arc<GuardedBackend>,
    r: &Resource,
    owner: &str,
    wait: Duration,
) -> tokio::task::JoinHandle<Result<LockResponse, TryLockError>> {
    let b = b.clone();
    let req = LockRequest::new(r.clone(), owner).with_wait(wait);
    tokio::spawn(async move { b.try_lock(req).await })
}

async fn queue_len(rig: &Rig, r: &Resource) -> Option<usize> {
    rig.redis
        .get_queue_status(r)
        .await
        .ok()
        .map(|q| q.entries.len())
}

async fn wait_queue_len(rig: &Rig, r: &Resource, n: usize) {
    let started = Instant::now();
    while queue_len(rig, r).await != Some(n) {
        assert!(
            started.elapsed() < SLACK,
            "the queue never held {n} entries"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_in_an_outage_end_unavailable_and_nobody_is_granted_twice() {
    let rig = rig(RedisOptions::default()).await;
    let r = resource("o/queue");
    let holder = grant(&*rig.guarded, &r, "holder").await;
    let wait = Duration::from_secs(5);
    let waiters: Vec<_> = (0..3)
        .map(|i| spawn_waiter(&rig.guarded, &r, &format!("w{i}"), wait))
        .collect();
    wait_queue_len(&rig, &r, 3).await;

    // Redis hangs under the blocked waiters: each ends with backend_unavailable
    // (nobody could grant anything), within its wait plus a bound, never hanging.
    with_server(&rig.server, RedisServer::pause).await;
    for w in waiters {
        let answer = tokio::time::timeout(wait + SLACK, w)
            .await
            .expect("a waiter hung through the outage")
            .unwrap();
        expect_unavailable(answer);
    }
    // The outage outlasts the waiters: two more (failed) health checks.
    for _ in 0..2 {
        let seen = rig.health.report(None).health.last_health_check;
        wait_for("another health check", SLACK, || {
            rig.health.report(None).health.last_health_check != seen
        })
        .await;
    }
    assert!(rig.health.report(None).last_error.is_some());

    with_server(&rig.server, RedisServer::resume).await;
    report_shows(&rig.health, BreakerState::Closed, RESET + INTERVAL + SLACK).await;
    // The failed waiters' entries go as soon as Redis is back (their calls ended, so
    // nobody could confirm a grant to them).
    wait_queue_len(&rig, &r, 0).await;
    let released = rig
        .guarded
        .unlock(&r, holder.lease_id.as_ref().unwrap())
        .await
        .expect("unlock after the outage");
    assert!(
        released.granted_to.is_none(),
        "a waiter of the outage was granted: {released:?}"
    );
    assert_eq!(rig.guarded.get_lock(&r).await.unwrap(), None);

    // After recovery the queue works: each new waiter is granted exactly once, in
    // order, each with a greater token.
    let second = grant(&*rig.guarded, &r, "holder2").await;
    let a = spawn_waiter(&rig.guarded, &r, "a", Duration::from_secs(30));
    wait_queue_len(&rig, &r, 1).await;
    let b = spawn_waiter(&rig.guarded, &r, "b", Duration::from_secs(30));
    wait_queue_len(&rig, &r, 2).await;
    rig.guarded
        .unlock(&r, second.lease_id.as_ref().unwrap())
        .await
        .unwrap();
    let got_a = tokio::time::timeout(SLACK, a)
        .await
        .expect("waiter a")
        .unwrap()
        .expect("waiter a's answer");
    assert!(got_a.acquired, "{got_a:?}");
    let lock_a = got_a.lock.unwrap();
    assert_eq!(lock_a.owner.owner, "a");
    assert!(!b.is_finished(), "b is granted only after a");
    rig.guarded
        .unlock(&r, lock_a.lease_id.as_ref().unwrap())
        .await
        .unwrap();
    let got_b = tokio::time::timeout(SLACK, b)
        .await
        .expect("waiter b")
        .unwrap()
        .expect("waiter b's answer");
    assert!(got_b.acquired, "{got_b:?}");
    let lock_b = got_b.lock.unwrap();
    let tokens: Vec<FencingToken> = [&holder, &second, &lock_a, &lock_b]
        .iter()
        .map(|l| l.fencing_token)
        .collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "every grant has a greater token: {tokens:?}"
    );
    let now = rig.guarded.get_lock(&r).await.unwrap().expect("b holds");
    assert_eq!(now.owner.owner, "b");
    assert_eq!(now.fencing_token, lock_b.fencing_token);
    assert_eq!(queue_len(&rig, &r).await, Some(0));
}
