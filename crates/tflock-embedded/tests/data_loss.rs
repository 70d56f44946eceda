//! The store file replaced by an older copy (a backup restored, a disk snapshot
//! rolled back) while the server was stopped: found at open by the highest token the
//! file had committed (`<file>.tokens`), reported (health `data_lost`, the counter,
//! the `store.data_lost` event), nothing granted during `lock_delay`, and tokens
//! after it above every token before. A plain restart is no loss.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, EventKind, LockRequest, LockSettings, NotAcquiredReason, Resource, SystemClock,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};

const DELAY: Duration = Duration::from_millis(1500);

async fn open(path: &Path) -> Arc<EmbeddedBackend> {
    open_with(path, true).await
}

async fn open_with(path: &Path, queue: bool) -> Arc<EmbeddedBackend> {
    EmbeddedBackend::open(
        EmbeddedConfig {
            path: path.to_path_buf(),
            settings: LockSettings {
                lock_delay: DELAY,
                enable_priority_queue: queue,
                ..LockSettings::default()
            },
        },
        Arc::new(SystemClock),
    )
    .await
    .expect("open")
}

/// Grants and frees `r` `n` times; returns the last token.
async fn churn(b: &EmbeddedBackend, r: &Resource, n: usize) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let l = b
            .try_lock(LockRequest::new(r.clone(), "o/r#1"))
            .await
            .unwrap()
            .lock
            .unwrap();
        assert!(l.fencing_token.0 > last);
        last = l.fencing_token.0;
        b.unlock(r, l.lease_id.as_ref().unwrap()).await.unwrap();
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_the_file_is_found_and_delays_grants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.redb");
    let backup = dir.path().join("backup.redb");
    let r = Resource::new("o/r", ".", "default", "").unwrap();

    let b = open(&path).await;
    churn(&b, &r, 2).await;
    b.close().await;
    std::fs::copy(&path, &backup).unwrap();

    // A plain restart: no loss.
    let b = open(&path).await;
    let h = b.health_check().await.unwrap();
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.details["data_losses"], 0);
    let before = churn(&b, &r, 3).await;
    b.close().await;

    // The older copy comes back.
    std::fs::copy(&backup, &path).unwrap();
    let b = open(&path).await;
    let mut events = b.subscribe();
    let h = b.health_check().await.unwrap();
    assert!(!h.healthy, "{h:?}");
    assert_eq!(h.details["reason"], "data_lost", "{h:?}");
    assert_eq!(h.details["last_data_loss"]["found"][0], "older_file");
    assert_eq!(b.get_metrics().await.unwrap().data_losses, 1);
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(e.event, EventKind::StoreDataLost);

    let refused = b
        .try_lock(LockRequest::new(r.clone(), "o/r#2"))
        .await
        .unwrap();
    assert!(!refused.acquired);
    assert_eq!(refused.reason, Some(NotAcquiredReason::LockDelay));
    let granted = b
        .try_lock(LockRequest::new(r.clone(), "o/r#3").with_wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(granted.acquired, "a waiter outlasts the delay: {granted:?}");
    let token = granted.lock.unwrap().fencing_token.0;
    assert!(
        token > before,
        "{token} after the loss is not above {before}"
    );
    assert!(b.health_check().await.unwrap().healthy, "the delay is over");
    b.close().await;
}

/// Without a queue (`enable_priority_queue: false`), a call with `wait` outlasts the
/// delay as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_a_waiting_call_outlasts_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.redb");
    let backup = dir.path().join("backup.redb");
    let r = Resource::new("o/r", ".", "default", "").unwrap();
    let b = open_with(&path, false).await;
    churn(&b, &r, 1).await;
    b.close().await;
    std::fs::copy(&path, &backup).unwrap();
    let b = open_with(&path, false).await;
    let before = churn(&b, &r, 2).await;
    b.close().await;
    std::fs::copy(&backup, &path).unwrap();

    let b = open_with(&path, false).await;
    let granted = b
        .try_lock(LockRequest::new(r.clone(), "o/r#3").with_wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(granted.acquired, "{granted:?}");
    assert!(granted.lock.unwrap().fencing_token.0 > before);
    b.close().await;
}
