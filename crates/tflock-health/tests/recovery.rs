//! Issue 16, point 2: locking is back within a second of Redis being back. A real
//! `redis-server` (AOF on) is SIGKILLed and restarted on the same port, or SIGSTOPped
//! and SIGCONTed, or a Sentinel primary is SIGKILLed and the sentinels fail over,
//! under 16 clients hammering a [`GuardedBackend`] over the Redis backend with the
//! spec's default breaker (threshold 5, reset timeout 30 s) and the default 10 s
//! health-check interval, the monitor running as the server runs it.
//!
//! "Back" is the first `+PONG` a raw connection of the test gets from the restarted
//! (or continued) Redis, or the first sentinel naming a new primary that answers
//! `ROLE` with `master`, so the measure starts when Redis itself can serve. Before the
//! breaker probed while open, this took the rest of the 30 s reset timeout.
//!
//! The 1 s promise is a performance figure, so the benchmark proves it
//! (`tflock-bench --only recovery`: p50 and max over many faults of each kind, in
//! docs/benchmarks.md); a timed test on a loaded two-core CI machine would only make it
//! flaky. What these tests pin is the behaviour: recovery comes from the breaker's
//! probes while open, not from the end of its 30 s `reset_timeout`, so they assert the
//! first grant and all 16 clients within 3 s (typically 5 to 350 ms here; before the
//! fix, about the rest of the 30 s).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_health::{BreakerSettings, BreakerState, GuardedBackend, Health};
use tflock_redis::{RedisBackend, RedisConfig, SentinelConfig};
use tflock_testkit::{RedisOptions, RedisSentinel, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 16;
/// Ten times below the reset timeout, three times the promise: a regression to
/// waiting out `reset_timeout` fails it, a scheduler stall on a loaded machine does not.
const RECOVERY: Duration = Duration::from_secs(3);
/// Every wait that is not the measure: a loaded two-core machine is slow.
const SLACK: Duration = Duration::from_secs(20);

struct Rig {
    /// First, so it stops before the rest goes.
    _monitor: common::Monitor,
    guarded: Arc<GuardedBackend>,
    health: Arc<Health>,
}

async fn standalone() -> (Arc<RedisServer>, Rig) {
    let server = tokio::task::spawn_blocking(|| {
        Arc::new(RedisServer::start(RedisOptions::default().appendonly()))
    })
    .await
    .unwrap();
    let rig = rig(RedisConfig::standalone(server.addr().to_string())).await;
    (server, rig)
}

/// The production defaults but for a shorter read timeout (3 s by default), so a
/// SIGSTOP opens the breaker sooner; recovery does not depend on it.
async fn rig(base: RedisConfig) -> Rig {
    let config = RedisConfig {
        read_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        ..base
    };
    let redis = RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
        .await
        .expect("connect to Redis");
    // As `tflock server` runs it: every 10 s, each check bounded by 2 s.
    let (guarded, health, monitor) = common::guard(
        redis,
        BreakerSettings::default(),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    Rig {
        _monitor: monitor,
        guarded,
        health,
    }
}

/// When each client's acquires succeeded.
#[derive(Default)]
struct Log {
    grants: Mutex<Vec<Vec<Instant>>>,
}

impl Log {
    fn record(&self, client: usize, at: Instant) {
        self.grants.lock().unwrap()[client].push(at);
    }

    /// Per client: its first grant at or after `from`.
    fn first_after(&self, from: Instant) -> Vec<Option<Instant>> {
        self.grants
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.iter().copied().find(|t| *t >= from))
            .collect()
    }
}

/// 16 clients, each acquiring a fresh resource and releasing it in a loop (a refused
/// call is retried after 5 ms, as a polling client would).
fn load(
    b: &Arc<GuardedBackend>,
    stop: &Arc<AtomicBool>,
) -> (Arc<Log>, Vec<tokio::task::JoinHandle<()>>) {
    let log = Arc::new(Log::default());
    *log.grants.lock().unwrap() = vec![Vec::new(); CLIENTS];
    let tasks = (0..CLIENTS)
        .map(|c| {
            let (b, stop, log) = (b.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = Resource::new(format!("o/c{c}"), ".", format!("w{n}"), "").unwrap();
                    match b
                        .try_lock(LockRequest::new(r.clone(), format!("client{c}")))
                        .await
                    {
                        Ok(resp) if resp.acquired => {
                            log.record(c, Instant::now());
                            if let Some(lease) = resp.lock.and_then(|l| l.lease_id) {
                                let _ = b.unlock(&r, &lease).await;
                            }
                        }
                        _ => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        })
        .collect();
    (log, tasks)
}

/// The first `+PONG` from `port` (a `-LOADING` answer, a refused or silent
/// connection is not an answer yet).
async fn first_pong(addr: SocketAddr) -> Instant {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < SLACK * 2, "Redis never answered PING");
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let mut buf = [0u8; 64];
        // A stopped Redis answers once continued: wait for it on this connection.
        match tokio::time::timeout(SLACK, s.read(&mut buf)).await {
            Ok(Ok(n)) if buf[..n].starts_with(b"+PONG") => return Instant::now(),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Sends one inline command on a fresh connection; the reply's lines.
async fn inline(addr: SocketAddr, command: &str) -> Option<Vec<String>> {
    let limit = Duration::from_millis(300);
    let mut s = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("{command}\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(limit, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Some(text.split("\r\n").map(str::to_string).collect())
}

/// The first moment a sentinel names a primary other than `old` that answers `ROLE`
/// with `master`.
async fn failover_seen(sentinels: Vec<SocketAddr>, master: String, old: SocketAddr) -> Instant {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < SLACK * 2, "no failover from {old}");
        for s in &sentinels {
            // `*2 $9 127.0.0.1 $5 <port>`
            let Some(lines) =
                inline(*s, &format!("SENTINEL get-master-addr-by-name {master}")).await
            else {
                continue;
            };
            let Some(new) = lines
                .get(2)
                .zip(lines.get(4))
                .and_then(|(h, p)| format!("{h}:{p}").parse::<SocketAddr>().ok())
            else {
                continue;
            };
            if new != old
                && inline(new, "ROLE")
                    .await
                    .is_some_and(|l| l.get(2).is_some_and(|r| r == "master"))
            {
                return Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_state(h: &Health, state: BreakerState) {
    let started = Instant::now();
    while h.breaker.state() != state {
        assert!(
            started.elapsed() < SLACK,
            "the breaker never read {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs one fault under load: `down` breaks Redis, the breaker opens, 0.5 s later
/// `up` brings it back and returns when it was back; returns (first grant, all
/// clients granted) after that.
async fn fault<D, U>(rig: &Rig, down: D, up: U) -> (Duration, Duration)
where
    D: AsyncFnOnce(),
    U: AsyncFnOnce() -> Instant,
{
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = load(&rig.guarded, &stop);
    // Everyone is granted before the fault.
    let started = Instant::now();
    while log.first_after(started).iter().any(Option::is_none) {
        assert!(started.elapsed() < SLACK, "not every client was granted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    down().await;
    wait_state(&rig.health, BreakerState::Open).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = up().await;

    let limit = Instant::now() + SLACK;
    let firsts = loop {
        let f = log.first_after(back);
        if f.iter().all(Option::is_some) || Instant::now() > limit {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(SLACK, t).await;
    }
    let got: Vec<Duration> = firsts
        .iter()
        .map(|f| {
            f.expect("a client never acquired again")
                .duration_since(back)
        })
        .collect();
    let first = *got.iter().min().unwrap();
    let all = *got.iter().max().unwrap();
    eprintln!(
        "recovery: first grant {first:?}, all {CLIENTS} clients {all:?} after Redis was back"
    );
    (first, all)
}

async fn blocking(server: &Arc<RedisServer>, f: fn(&RedisServer)) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.unwrap();
}

/// A standalone fault: `down`, then (Redis still down: the breaker stays open) `up`,
/// "back" at the first PONG.
async fn standalone_fault(
    server: &Arc<RedisServer>,
    rig: &Rig,
    down: fn(&RedisServer),
    up: fn(&RedisServer),
) -> (Duration, Duration) {
    fault(
        rig,
        async || blocking(server, down).await,
        async || {
            assert_eq!(
                rig.health.breaker.state(),
                BreakerState::Open,
                "Redis is still down: the breaker stays open"
            );
            let pong = tokio::spawn(first_pong(server.addr()));
            blocking(server, up).await;
            pong.await.unwrap()
        },
    )
    .await
}

fn assert_recovered((first, all): (Duration, Duration)) {
    assert!(
        first < RECOVERY,
        "the first grant came {first:?} after Redis answered PING"
    );
    assert!(
        all < RECOVERY,
        "all {CLIENTS} clients were granted only {all:?} after Redis answered PING"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_is_back_long_before_the_reset_timeout_after_a_killed_redis_restarting() {
    let (server, rig) = standalone().await;
    let r = Resource::new("o/kept", ".", "default", "").unwrap();
    let held = rig
        .guarded
        .try_lock(LockRequest::new(r.clone(), "holder"))
        .await
        .unwrap()
        .lock
        .expect("granted");
    assert_recovered(
        standalone_fault(&server, &rig, RedisServer::kill, RedisServer::restart).await,
    );
    // The AOF kept the lease across the crash.
    let still = rig.guarded.get_lock(&r).await.unwrap().expect("still held");
    assert_eq!(still.fencing_token, held.fencing_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_is_back_long_before_the_reset_timeout_after_a_stopped_redis_continuing() {
    let (server, rig) = standalone().await;
    assert_recovered(
        standalone_fault(&server, &rig, RedisServer::pause, RedisServer::resume).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_is_back_long_before_the_reset_timeout_after_a_sentinel_failover() {
    let sentinel = tokio::task::spawn_blocking(|| Arc::new(RedisSentinel::start()))
        .await
        .unwrap();
    let rig = rig(RedisConfig {
        sentinel: SentinelConfig {
            master_name: Some(sentinel.master_name().to_string()),
            addresses: sentinel.sentinel_addr_strings(),
        },
        ..RedisConfig::default()
    })
    .await;
    // The watcher starts with the kill: the failover may complete before the
    // breaker has been open for half a second.
    let watcher = Mutex::new(None);
    assert_recovered(
        fault(
            &rig,
            async || {
                let s = sentinel.clone();
                let old = tokio::task::spawn_blocking(move || s.kill_primary())
                    .await
                    .unwrap();
                *watcher.lock().unwrap() = Some(tokio::spawn(failover_seen(
                    sentinel.sentinel_addrs(),
                    sentinel.master_name().to_string(),
                    old,
                )));
            },
            async || {
                let seen = watcher.lock().unwrap().take().expect("the watcher");
                seen.await.unwrap()
            },
        )
        .await,
    );
}
