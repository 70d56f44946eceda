//! Issue 16, point 2 (the recovery benchmark's slow kill + restart): a call caught on
//! the connection when Redis stopped answering fails as soon as another call has
//! found that connection dead, not after its own `read_timeout`. In the benchmark one
//! client's request, in flight at the SIGKILL, was held the whole 3 s `read_timeout`
//! (`redis: timed out`) while every other call on that server had failed at once and
//! the breaker had long closed again: that client was granted 2.4 s after Redis was
//! back. Here the stand-in is a paused Redis (no reply, no error), on a real
//! `redis-server`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{
    Backend, BackendError, LockRequest, LockSettings, Resource, SystemClock, TryLockError,
};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::{RedisOptions, RedisServer};

fn resource(name: &str) -> Resource {
    Resource::new(format!("o/{name}"), ".", "default", "").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_connection_found_dead_fails_at_once() {
    let server =
        tokio::task::spawn_blocking(|| Arc::new(RedisServer::start(RedisOptions::default())))
            .await
            .unwrap();
    let read_timeout = Duration::from_secs(2);
    let config = RedisConfig {
        read_timeout,
        connection_timeout: read_timeout,
        dial_timeout: read_timeout,
        ..RedisConfig::standalone(server.addr().to_string())
    };
    let b = RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
        .await
        .expect("connect to Redis");
    let r = b.try_lock(LockRequest::new(resource("before"), "a")).await;
    assert!(r.expect("a grant before the pause").acquired);

    let s = server.clone();
    tokio::task::spawn_blocking(move || s.pause())
        .await
        .unwrap();
    // The first call finds the connection dead when its read_timeout passes.
    let first = {
        let b = b.clone();
        tokio::spawn(async move { b.try_lock(LockRequest::new(resource("one"), "a")).await })
    };
    tokio::time::sleep(read_timeout / 2).await;
    // The second, sent on the same connection half a read_timeout later, fails with
    // it (about read_timeout / 2 after it was sent), not after its own read_timeout.
    let started = Instant::now();
    let second = b.try_lock(LockRequest::new(resource("two"), "b")).await;
    let took = started.elapsed();
    assert!(
        matches!(
            second,
            Err(TryLockError::Backend(BackendError::Unavailable(_)))
        ),
        "expected backend_unavailable, got {second:?}"
    );
    assert!(
        took < read_timeout * 4 / 5,
        "the second call answered after {took:?}: it waited out its own read_timeout \
         ({read_timeout:?}) on a connection the first had found dead"
    );
    assert!(first.await.unwrap().is_err());

    // Nothing is lost for later calls: once Redis answers again, locking works.
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.resume())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        if let Ok(r) = b.try_lock(LockRequest::new(resource("after"), "c")).await {
            assert!(r.acquired, "{r:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no grant after resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
