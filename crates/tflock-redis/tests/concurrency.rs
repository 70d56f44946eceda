//! Many callers on two backends sharing one Redis (two tflock servers): at most one
//! holder at any time, tokens strictly increase, every waiter is served, and nothing
//! is left behind.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::RedisBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_resource_is_mutually_exclusive_across_two_servers() {
    let config = common::config_for(common::standalone).await;
    let settings = LockSettings::default();
    let servers = [
        RedisBackend::connect(config.clone(), settings.clone(), Arc::new(SystemClock))
            .await
            .unwrap(),
        RedisBackend::connect(config, settings, Arc::new(SystemClock))
            .await
            .unwrap(),
    ];
    let r = Resource::new("o/contended", ".", "default", "").unwrap();
    let held = Arc::new(AtomicBool::new(false));
    let last_token = Arc::new(AtomicU64::new(0));
    let grants = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..12 {
        let b = servers[w % 2].clone();
        let (r, held, last_token) = (r.clone(), held.clone(), last_token.clone());
        let grants = grants.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..6 {
                let req = LockRequest::new(r.clone(), format!("worker{w}"))
                    .with_wait(Duration::from_secs(60));
                let answer = b.try_lock(req).await.expect("try_lock");
                assert!(answer.acquired, "worker{w} round {i}: {answer:?}");
                let lock = answer.lock.unwrap();
                assert!(
                    !held.swap(true, Ordering::SeqCst),
                    "two holders at once (worker{w})"
                );
                grants.fetch_add(1, Ordering::SeqCst);
                let prev = last_token.swap(lock.fencing_token.0, Ordering::SeqCst);
                assert!(
                    lock.fencing_token.0 > prev,
                    "token {} after {prev}",
                    lock.fencing_token
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
                held.store(false, Ordering::SeqCst);
                b.unlock(&r, lock.lease_id.as_ref().unwrap())
                    .await
                    .expect("unlock by the holder");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every worker finishes")
            .unwrap();
    }
    // Every grant was seen, each with a token above the one before (checked as they
    // came); tokens are floored at the clock, so their values are not a count.
    assert_eq!(grants.load(Ordering::SeqCst), 72, "every round granted");
    let status = servers[0].get_queue_status(&r).await.unwrap();
    assert!(
        status.lock.is_none() && status.entries.is_empty(),
        "{status:?}"
    );
    let m = servers[0].get_metrics().await.unwrap();
    assert_eq!((m.active_locks, m.queue_depth), (0, 0));
}
