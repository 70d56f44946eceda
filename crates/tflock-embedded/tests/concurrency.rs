//! Many tasks fighting over a few resources: never two holders, tokens only go up,
//! every waiter ends granted or timed out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tflock_core::{
    Backend, LockRequest, LockSettings, NotAcquiredReason, Priority, Resource, SystemClock,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};

const TASKS: usize = 32;
const CYCLES: usize = 10_000;
const RESOURCES: usize = 4;

#[derive(Default)]
struct Record {
    /// Who holds each resource right now, by fencing token, as the test saw it.
    holder: HashMap<usize, u64>,
    /// The highest token seen per resource.
    last_token: HashMap<usize, u64>,
    granted: usize,
    timed_out: usize,
    held_answers: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_never_overlap_and_tokens_increase() {
    let dir = tempfile::tempdir().unwrap();
    let settings = LockSettings {
        default_ttl: Duration::from_secs(60),
        max_queue_size: 1000,
        ..LockSettings::default()
    };
    let backend = EmbeddedBackend::open(
        EmbeddedConfig {
            path: dir.path().join("locks.redb"),
            settings,
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let resources: Vec<Resource> = (0..RESOURCES)
        .map(|i| Resource::new("org/repo", format!("stack{i}"), "default", "").unwrap())
        .collect();
    let record = Arc::new(Mutex::new(Record::default()));
    let next_cycle = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (backend, resources, record, next_cycle) = (
            backend.clone(),
            resources.clone(),
            record.clone(),
            next_cycle.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
            while next_cycle.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < CYCLES {
                let r = rng.random_range(0..RESOURCES);
                let priority = Priority::from_rank(rng.random_range(0..4));
                let mut req = LockRequest::new(resources[r].clone(), format!("task-{t}"))
                    .with_priority(priority);
                // Mostly waits (some short enough to time out), some plain tries.
                match rng.random_range(0..10) {
                    0 => {}
                    1 => req = req.with_wait(Duration::from_millis(1)),
                    _ => req = req.with_wait(Duration::from_secs(30)),
                }
                let resp = backend.try_lock(req).await.expect("try_lock");
                if !resp.acquired {
                    let mut rec = record.lock().unwrap();
                    match resp.reason {
                        Some(NotAcquiredReason::Timeout) => rec.timed_out += 1,
                        Some(NotAcquiredReason::Held) => rec.held_answers += 1,
                        other => panic!("unexpected not-acquired reason {other:?}"),
                    }
                    continue;
                }
                let lock = resp.lock.expect("granted lock");
                let token = lock.fencing_token.0;
                {
                    let mut rec = record.lock().unwrap();
                    if let Some(other) = rec.holder.insert(r, token) {
                        panic!(
                            "resource {r}: token {token} granted while token {other} still held"
                        );
                    }
                    let last = rec.last_token.entry(r).or_insert(0);
                    assert!(token > *last, "resource {r}: token {token} after {last}");
                    *last = token;
                    rec.granted += 1;
                }
                if rng.random_bool(0.3) {
                    tokio::task::yield_now().await;
                }
                // Clear the record before unlocking: the unlock hands the lock on in
                // the same step, and the next holder may record itself at once.
                record.lock().unwrap().holder.remove(&r);
                backend
                    .unlock(&resources[r], lock.lease_id.as_ref().unwrap())
                    .await
                    .expect("unlock by holder");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task panicked");
    }
    let (granted, timed_out, held_answers) = {
        let rec = record.lock().unwrap();
        (rec.granted, rec.timed_out, rec.held_answers)
    };
    assert_eq!(granted + timed_out + held_answers, CYCLES);
    assert!(
        granted > CYCLES / 2,
        "only {granted} of {CYCLES} cycles were granted"
    );
    for r in &resources {
        let q = backend.get_queue_status(r).await.unwrap();
        assert!(
            q.entries.is_empty(),
            "queue left behind on {r}: {:?}",
            q.entries
        );
        assert!(q.lock.is_none(), "lock left behind on {r}");
    }
    eprintln!("granted {granted} timed out {timed_out} held {held_answers}");
    backend.close().await;
}
