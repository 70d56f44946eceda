//! legacy_fallback over a real embedded store: locks in a copy of Atlantis's BoltDB
//! (written by Go's bbolt) or in a real Atlantis Redis block TryLock and show in
//! listings until they are released through tflock or by Atlantis.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{
    Backend, ErrorCode, LeaseId, LockFilter, LockRequest, LockSettings, NotAcquiredReason,
    Resource, SharedBackend, SystemClock, TryLockError, UnlockError,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_migrate::bolt::BoltFile;
use tflock_migrate::{LEGACY_NOTE, LegacyFallback, LegacyOptions, LegacySource, MARKER_REPO};
use tflock_testkit::{RedisOptions, RedisServer};

const REFRESH: Duration = Duration::from_millis(100);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

async fn store(dir: &Path) -> SharedBackend {
    EmbeddedBackend::open(
        EmbeddedConfig {
            path: dir.join("locks.redb"),
            settings: LockSettings::default(),
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap()
}

fn options() -> LegacyOptions {
    LegacyOptions {
        refresh: REFRESH,
        max_stale: Duration::from_secs(60),
        settings: LockSettings::default(),
    }
}

fn wrap(inner: SharedBackend, source: LegacySource) -> Arc<LegacyFallback> {
    LegacyFallback::new(inner, source, options(), Arc::new(SystemClock))
}

/// Copies `name` over `dest` the way an operator should: beside it, then a rename.
fn replace_copy(name: &str, dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::copy(fixture(name), &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

fn infra() -> Resource {
    Resource::new("acme/infra", ".", "default", "").unwrap()
}

fn all() -> LockFilter {
    LockFilter {
        limit: Some(1000),
        ..LockFilter::default()
    }
}

/// Retries `f` until it returns true, for at most 5 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_lock_blocks_and_lists_until_released_through_tflock() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("atlantis.db");
    replace_copy("atlantis.db", &copy);
    let inner = store(dir.path()).await;
    let locks = wrap(inner.clone(), LegacySource::BoltDb(copy.clone()));

    // Held in Atlantis: another pull request is refused, shown the legacy holder.
    let answer = locks
        .try_lock(LockRequest::new(infra(), "acme/infra#50"))
        .await
        .unwrap();
    assert!(!answer.acquired);
    assert_eq!(answer.reason, Some(NotAcquiredReason::Held));
    let holder = answer.lock.unwrap();
    assert_eq!(holder.owner.owner, "acme/infra#42");
    assert_eq!(holder.owner.note, LEGACY_NOTE);
    assert_eq!(holder.owner.user.as_ref().unwrap().username, "alice");
    assert_eq!(
        holder.owner.pull.as_ref().unwrap().url,
        "https://github.com/acme/infra/pull/42"
    );
    assert_eq!(holder.fencing_token.0, 0);
    assert!(holder.lease_id.is_none());
    // A reservation cannot queue behind a lock tflock does not manage.
    let answer = locks
        .try_lock(LockRequest::new(infra(), "acme/infra#50").reserving())
        .await
        .unwrap();
    assert!(!answer.acquired && answer.queue.is_none());
    // A short wait ends at its deadline, still refused.
    let started = Instant::now();
    let answer = locks
        .try_lock(LockRequest::new(infra(), "acme/infra#50").with_wait(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(answer.reason, Some(NotAcquiredReason::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));

    assert_eq!(
        locks.get_lock(&infra()).await.unwrap().unwrap().owner.owner,
        "acme/infra#42"
    );
    let status = locks.get_queue_status(&infra()).await.unwrap();
    assert_eq!(status.lock.unwrap().owner.note, LEGACY_NOTE);

    // Listings show every legacy lock, marked, in key order, paged.
    let page = locks.list_locks(all()).await.unwrap();
    assert_eq!(page.locks.len(), 65);
    assert!(page.locks.iter().all(|l| l.owner.note == LEGACY_NOTE));
    assert!(page.next_cursor.is_none());
    let gitlab = locks
        .list_locks(LockFilter {
            repo: Some("group/sub/repo".into()),
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(gitlab.locks.len(), 1);
    assert_eq!(gitlab.locks[0].resource.project_name, "app");
    let by_user = locks
        .list_locks(LockFilter {
            user: Some("carol".into()),
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(by_user.locks.len(), 1);
    assert_eq!(by_user.locks[0].resource.project_name, "core network");

    // A free resource is granted by the store, and lists among the legacy ones.
    let mine = Resource::new("acme/bulk", "stacks/s05", "other", "").unwrap();
    let granted = locks
        .try_lock(LockRequest::new(mine.clone(), "acme/bulk#1"))
        .await
        .unwrap();
    assert!(granted.acquired);
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = locks
            .list_locks(LockFilter {
                cursor: cursor.take(),
                limit: Some(7),
                ..LockFilter::default()
            })
            .await
            .unwrap();
        assert!(page.locks.len() <= 7);
        paged.extend(page.locks);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(paged.len(), 66);
    let keys: Vec<String> = paged.iter().map(|l| l.resource.storage_key()).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "ordered, no repeats");
    let mine_listed = paged.iter().find(|l| l.resource == mine).unwrap();
    assert_eq!(mine_listed.owner.owner, "acme/bulk#1");

    // Unlock needs a lease, which a legacy lock has none of.
    let err = locks
        .unlock(&infra(), &LeaseId::generate())
        .await
        .unwrap_err();
    assert_eq!(err, UnlockError::NotOwner);

    // Force-unlock through tflock records the release; the lock stops counting.
    let released = locks.force_unlock(&infra(), None).await.unwrap();
    assert_eq!(released.released.owner.owner, "acme/infra#42");
    assert_eq!(released.released.owner.note, LEGACY_NOTE);
    assert!(locks.get_lock(&infra()).await.unwrap().is_none());
    let answer = locks
        .try_lock(LockRequest::new(infra(), "acme/infra#50"))
        .await
        .unwrap();
    assert!(answer.acquired);
    assert_eq!(answer.lock.unwrap().owner.owner, "acme/infra#50");

    // The release record is in the store, hidden from listings unless asked for.
    let page = locks.list_locks(all()).await.unwrap();
    assert_eq!(page.locks.len(), 66);
    assert!(!page.locks.iter().any(|l| l.resource.repo == MARKER_REPO));
    let markers = locks
        .list_locks(LockFilter {
            repo: Some(MARKER_REPO.into()),
            ..all()
        })
        .await
        .unwrap();
    assert_eq!(markers.locks.len(), 1);
    assert!(
        markers.locks[0]
            .owner
            .note
            .contains("acme/infra/./default/")
    );
    let err = locks
        .try_lock(LockRequest::new(markers.locks[0].resource.clone(), "me"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest);

    // Another server replica over the same store sees the release too.
    let replica = wrap(inner.clone(), LegacySource::BoltDb(copy.clone()));
    assert_eq!(
        replica
            .get_lock(&infra())
            .await
            .unwrap()
            .unwrap()
            .owner
            .owner,
        "acme/infra#50"
    );
    assert_eq!(replica.list_locks(all()).await.unwrap().locks.len(), 66);

    // Closing a merge request releases its legacy locks too.
    let closed = locks.unlock_by_pull("group/sub/repo", 7).await.unwrap();
    assert_eq!(closed.released.len(), 1);
    assert_eq!(closed.released[0].owner.note, LEGACY_NOTE);
    let app = Resource::new("group/sub/repo", "envs/staging", "staging", "app").unwrap();
    assert!(
        locks
            .try_lock(LockRequest::new(app, "group/sub/repo#8"))
            .await
            .unwrap()
            .acquired
    );
    // Exactly that repo and pull.
    assert!(
        locks
            .get_lock(&Resource::new("group/sub/other", "terraform", "default", "").unwrap())
            .await
            .unwrap()
            .is_some()
    );

    let health = locks.health_check().await.unwrap();
    assert!(health.healthy);
    assert_eq!(health.details["legacy_locks"], 63);
    assert_eq!(
        health.details["legacy_global_locks"],
        serde_json::json!(["apply"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_moves_its_lock_into_tflock() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("atlantis.db");
    replace_copy("atlantis.db", &copy);
    let locks = wrap(store(dir.path()).await, LegacySource::BoltDb(copy));

    let answer = locks
        .try_lock(LockRequest::new(infra(), "acme/infra#42"))
        .await
        .unwrap();
    assert!(
        answer.acquired,
        "the legacy holder itself gets the lock in tflock"
    );
    let lock = answer.lock.unwrap();
    assert_eq!(lock.owner.note, "");
    let lease = lock.lease_id.unwrap();
    // Released with its lease: the legacy lock does not come back.
    locks.unlock(&infra(), &lease).await.unwrap();
    assert!(locks.get_lock(&infra()).await.unwrap().is_none());
    assert!(
        locks
            .try_lock(LockRequest::new(infra(), "acme/infra#50"))
            .await
            .unwrap()
            .acquired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_copy_is_read_again_and_a_waiter_gets_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("atlantis.db");
    replace_copy("atlantis.db", &copy);
    let locks = wrap(store(dir.path()).await, LegacySource::BoltDb(copy.clone()));
    assert!(
        !locks
            .try_lock(LockRequest::new(infra(), "acme/infra#50"))
            .await
            .unwrap()
            .acquired
    );

    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .try_lock(
                    LockRequest::new(infra(), "acme/infra#50").with_wait(Duration::from_secs(20)),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    // Atlantis released pull 42's lock; the operator replaces the copy.
    replace_copy("atlantis-released.db", &copy);
    let answer = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered once the copy is replaced")
        .unwrap()
        .unwrap();
    assert!(answer.acquired);
    assert_eq!(answer.lock.unwrap().owner.owner, "acme/infra#50");
    assert_eq!(locks.list_locks(all()).await.unwrap().locks.len(), 65);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_source_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let locks = wrap(
        store(dir.path()).await,
        LegacySource::BoltDb(dir.path().join("missing.db")),
    );
    let err = locks
        .try_lock(LockRequest::new(infra(), "acme/infra#50"))
        .await
        .unwrap_err();
    assert!(matches!(err, TryLockError::Backend(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::BackendUnavailable);
    assert!(err.to_string().contains("missing.db"), "{err}");
    let health = locks.health_check().await.unwrap();
    assert!(!health.healthy);
    assert!(locks.reload().await.is_err());
}

/// Writes every record of the Go-written fixture into Redis as Atlantis does:
/// `SET pr/{key} {json}`, the JSON bytes exactly as Go's encoding/json wrote them.
pub async fn load_into_redis(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let file = BoltFile::open(fixture("atlantis.db")).unwrap();
    let entries = file.bucket(b"runLocks").unwrap().unwrap();
    for e in &entries {
        let key = format!("pr/{}", String::from_utf8(e.key.clone()).unwrap());
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&e.value)
            .query_async(conn)
            .await
            .unwrap();
    }
    entries.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atlantis_redis_locks_count_until_atlantis_deletes_them() {
    let redis_server = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
        .await
        .unwrap();
    let url = redis_server.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(load_into_redis(&mut conn).await, 66);

    let dir = tempfile::tempdir().unwrap();
    let source = LegacySource::from_settings(None, Some(&url))
        .unwrap()
        .unwrap();
    let locks = wrap(store(dir.path()).await, source);
    locks.reload().await.unwrap();

    let answer = locks
        .try_lock(LockRequest::new(infra(), "acme/infra#50"))
        .await
        .unwrap();
    assert!(!answer.acquired);
    assert_eq!(answer.lock.unwrap().owner.note, LEGACY_NOTE);
    assert_eq!(locks.list_locks(all()).await.unwrap().locks.len(), 65);

    // Atlantis releases the lock in its Redis (it DELs the key).
    let _: () = redis::cmd("DEL")
        .arg("pr/acme/infra/./default/")
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("the deleted key stops counting", || {
        let locks = locks.clone();
        async move {
            locks
                .try_lock(LockRequest::new(infra(), "acme/infra#50"))
                .await
                .unwrap()
                .acquired
        }
    })
    .await;

    // Force-unlock of a lock still in Atlantis's Redis is recorded in tflock.
    let sub = Resource::new("group/sub/repo", "envs/staging", "staging", "app").unwrap();
    assert!(locks.get_lock(&sub).await.unwrap().is_some());
    locks.force_unlock(&sub, None).await.unwrap();
    assert!(locks.get_lock(&sub).await.unwrap().is_none());
    // Atlantis's Redis is only read, never written.
    let still: Option<String> = redis::cmd("GET")
        .arg("pr/group/sub/repo/envs/staging/staging/app")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(still.is_some());
    assert!(locks.health_check().await.unwrap().healthy);
    assert!(
        LegacySource::from_settings(Some(PathBuf::from("/x")), Some(&url)).is_err(),
        "one legacy source at a time"
    );
}
