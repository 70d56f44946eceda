//! Redis losing tflock's data (docs/redis-design.md, "Data loss"), on real
//! redis-server processes: a restart without persistence, `FLUSHDB`, an older RDB
//! copy restored, a failover to a replica that was paused (lagged; by hand and by a
//! Sentinel election), `FLUSHALL` of one Cluster primary and of a Sentinel primary. In each: the loss is reported (health
//! not healthy with reason `data_lost`, the `store.data_lost` event, the counter),
//! nothing is granted during `lock_delay` (also by a server that never saw the loss),
//! and every token after the loss is above every token before it. Also the start-up
//! persistence check.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, EventKind, LockEvent, LockRequest, LockSettings, NotAcquiredReason, Resource,
    SystemClock,
};
use tflock_redis::{ConnectError, RedisBackend, RedisConfig};
use tflock_testkit::{RedisOptions, RedisServer};
use tokio::sync::broadcast;

/// Short enough for tests, long enough to observe on a loaded two-core machine.
const DELAY: Duration = Duration::from_millis(1500);

fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").unwrap()
}

fn settings() -> LockSettings {
    LockSettings {
        lock_delay: DELAY,
        ..LockSettings::default()
    }
}

use common::{config_for_server as config_for, start_server as start};

async fn blocking<F: FnOnce() + Send + 'static>(f: F) {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn try_connect(config: RedisConfig) -> Result<Arc<RedisBackend>, ConnectError> {
    RedisBackend::connect(config, settings(), Arc::new(SystemClock)).await
}

async fn connect(config: RedisConfig) -> Arc<RedisBackend> {
    try_connect(config).await.expect("connect")
}

/// Grants (then frees) `resources` one after the other; returns the highest token.
async fn grant_all(b: &RedisBackend, resources: &[Resource]) -> u64 {
    let mut top = 0;
    for r in resources {
        let l = b
            .try_lock(LockRequest::new(r.clone(), "o/r#1"))
            .await
            .expect("try_lock");
        assert!(l.acquired, "{l:?}");
        let l = l.lock.unwrap();
        top = top.max(l.fencing_token.0);
        b.unlock(r, l.lease_id.as_ref().unwrap()).await.unwrap();
    }
    top
}

/// Retries a health check until Redis answers it again (after a restart).
async fn health(b: &RedisBackend) -> tflock_core::BackendHealth {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match b.health_check().await {
            Ok(h) => return h,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("Redis did not come back: {e}"),
        }
    }
}

fn assert_lost(h: &tflock_core::BackendHealth) {
    assert!(!h.healthy, "a data loss is not healthy: {h:?}");
    assert_eq!(h.details["reason"], "data_lost", "{h:?}");
    assert!(h.details["data_losses"].as_u64() >= Some(1), "{h:?}");
    assert!(h.details.contains_key("last_data_loss"), "{h:?}");
}

async fn expect_loss_event(rx: &mut broadcast::Receiver<LockEvent>) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if e.event == EventKind::StoreDataLost => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("a store.data_lost event");
    assert_eq!(found.event.as_str(), "store.data_lost");
    assert!(found.owner.is_empty() && found.fencing_token.is_none());
}

/// After a loss: nothing is granted until the delay ends (answer `lock_delay`),
/// then tokens go on above `before`.
async fn delay_then_tokens_above(b: &RedisBackend, r: &Resource, before: u64) {
    let refused = b
        .try_lock(LockRequest::new(r.clone(), "o/r#2"))
        .await
        .expect("try_lock during the delay");
    assert!(!refused.acquired, "granted during lock_delay: {refused:?}");
    assert_eq!(refused.reason, Some(NotAcquiredReason::LockDelay));
    // A waiter outlasts the delay and is granted once it ends.
    let granted = b
        .try_lock(LockRequest::new(r.clone(), "o/r#3").with_wait(Duration::from_secs(30)))
        .await
        .expect("a waiter through the delay");
    assert!(granted.acquired, "{granted:?}");
    let token = granted.lock.unwrap().fencing_token.0;
    assert!(
        token > before,
        "token after the loss {token} is not above {before}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_persistence_is_detected_and_tokens_stay_above() {
    let server = start(RedisOptions::default()).await;
    let config = config_for(&server);
    let a = connect(config.clone()).await;
    let b = connect(config).await;
    let mut events = a.subscribe();
    let rs: Vec<Resource> = (0..8).map(|i| resource(&format!("o/restart{i}"))).collect();
    let before = grant_all(&a, &rs).await.max(grant_all(&a, &rs).await);
    assert!(health(&a).await.healthy);

    let s = server.clone();
    blocking(move || {
        s.kill();
        s.restart();
    })
    .await;
    // Within one health check.
    let h = health(&a).await;
    assert_lost(&h);
    expect_loss_event(&mut events).await;
    assert_eq!(a.get_metrics().await.unwrap().data_losses, 1);
    // `b` never ran a check: the delay is in the store, so it obeys it too. (Its
    // first call after the restart finds its connection broken: a read reconnects.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.get_lock(&rs[0]).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delay_then_tokens_above(&b, &rs[0], before).await;
    for r in &rs[1..] {
        let l = b
            .try_lock(LockRequest::new(r.clone(), "o/r#4"))
            .await
            .unwrap();
        assert!(l.lock.unwrap().fencing_token.0 > before);
    }
    // `b` reports the same loss at its own check.
    let hb = health(&b).await;
    assert!(hb.details["data_losses"].as_u64() == Some(1), "{hb:?}");
    // Once the delay is over and the loss reported, the store is healthy again.
    let again = health(&a).await;
    assert!(again.healthy, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushdb_is_found_by_the_next_try_lock() {
    let server = start(RedisOptions::default()).await;
    let a = connect(config_for(&server)).await;
    let mut events = a.subscribe();
    let r = resource("o/flush");
    let before = grant_all(&a, std::slice::from_ref(&r)).await;
    server.redis_cli(["FLUSHDB"]);
    // No health check in between: the TryLock finds its bucket's marker gone,
    // starts the delay itself and has every bucket checked.
    let refused = a
        .try_lock(LockRequest::new(r.clone(), "o/r#2"))
        .await
        .unwrap();
    assert_eq!(
        refused.reason,
        Some(NotAcquiredReason::LockDelay),
        "{refused:?}"
    );
    expect_loss_event(&mut events).await;
    assert_eq!(
        a.get_metrics().await.unwrap().data_losses,
        1,
        "reported once"
    );
    assert_lost(&health(&a).await);
    delay_then_tokens_above(&a, &r, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_rdb_copy_restored_is_detected() {
    let server = start(RedisOptions::default()).await;
    let a = connect(config_for(&server)).await;
    let rs: Vec<Resource> = (0..4).map(|i| resource(&format!("o/rdb{i}"))).collect();
    grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    assert_eq!(server.redis_cli(["SAVE"]), "OK");
    let rdb = server.dir().join("dump.rdb");
    let backup = server.dir().join("backup.rdb");
    std::fs::copy(&rdb, &backup).unwrap();
    // More grants and a check after the copy: the copy is older than both.
    let before = grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    assert_eq!(server.redis_cli(["SAVE"]), "OK");
    restore_and_restart(&server, move || {
        std::fs::copy(&backup, &rdb).unwrap();
    })
    .await;
    assert_rolled_back(&a, &rs[0], before).await;
}

/// A replica that lagged becomes the data at the server's address, as after a
/// failover to it: the replica is paused (SIGSTOP) and its link cut, locks are
/// granted and checked on the primary, the primary is killed, the replica resumed and
/// promoted (`REPLICAOF NO ONE`); the primary comes back empty, takes the lagged data
/// as the promoted replica's replica and is promoted back, so the backend's one
/// address serves the lagged data. The Sentinel election of the same lagged replica
/// is `a_sentinel_failover_to_a_paused_replica_is_detected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_lagged_replica_is_detected() {
    let (primary, replica) = common::primary_and_replica().await;
    let a = connect(config_for(&primary)).await;
    let rs: Vec<Resource> = (0..4).map(|i| resource(&format!("o/lag{i}"))).collect();
    grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    // Let the replica catch up, then stop it and cut its link: what follows never
    // reaches it (not even through its socket buffer).
    assert_eq!(primary.redis_cli(["WAIT", "1", "5000"]), "1");
    cut_off_the_replica(&primary, &replica).await;
    let before = grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);

    fail_over_to_the_replica_and_back(&primary, &replica, "the old primary took the lagged data")
        .await;
    let h = health(&a).await;
    assert_lost(&h);
    delay_then_tokens_above(&a, &rs[0], before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_of_one_cluster_primary_is_detected() {
    let config = common::config_for(common::cluster).await;
    let a = connect(config).await;
    let rs: Vec<Resource> = (0..32).map(|i| resource(&format!("o/cl{i}"))).collect();
    let before = grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    let c = common::cluster_deployment();
    let first = c.primaries()[0];
    c.node(first).redis_cli(["FLUSHALL"]);
    let h = health(&a).await;
    assert_lost(&h);
    let lost = h.details["last_data_loss"]["buckets"].as_u64().unwrap();
    assert!(
        lost > 0 && lost < 64,
        "one primary's buckets, not all: {h:?}"
    );
    tokio::time::sleep(DELAY).await;
    // Every resource, on the flushed primary or not, goes on above its old tokens.
    for r in &rs {
        let l = a
            .try_lock(LockRequest::new(r.clone(), "o/r#9"))
            .await
            .unwrap();
        assert!(l.acquired, "{l:?}");
        assert!(l.lock.unwrap().fencing_token.0 > before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_of_the_sentinel_primary_is_detected() {
    let config = common::config_for(common::sentinel).await;
    let a = connect(config).await;
    let r = resource("o/sentinel");
    let before = grant_all(&a, std::slice::from_ref(&r)).await;
    assert!(health(&a).await.healthy);
    common::sentinel_deployment()
        .primary()
        .redis_cli(["FLUSHALL"]);
    assert_lost(&health(&a).await);
    delay_then_tokens_above(&a, &r, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_zero_grants_at_once_but_still_reports() {
    let server = start(RedisOptions::default()).await;
    let a = RedisBackend::connect(
        config_for(&server),
        LockSettings {
            lock_delay: Duration::ZERO,
            ..LockSettings::default()
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let r = resource("o/zero");
    let before = grant_all(&a, std::slice::from_ref(&r)).await;
    server.redis_cli(["FLUSHDB"]);
    let l = a
        .try_lock(LockRequest::new(r.clone(), "o/r#2"))
        .await
        .unwrap();
    assert!(l.acquired, "{l:?}");
    assert!(l.lock.unwrap().fencing_token.0 > before);
    assert_eq!(a.get_metrics().await.unwrap().data_losses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_persistence_warns_and_require_persistence_refuses() {
    let memory = start(RedisOptions::default()).await;
    let a = connect(config_for(&memory)).await;
    let h = health(&a).await;
    assert_eq!(h.details["persistence"], "none", "{h:?}");
    assert!(h.details.contains_key("persistence_warning"), "{h:?}");
    let strict = RedisConfig {
        require_persistence: true,
        ..config_for(&memory)
    };
    let err = try_connect(strict.clone())
        .await
        .expect_err("no persistence, required");
    assert_eq!(err.setting, "redis.require_persistence", "{err}");

    let aof = start(RedisOptions::default().appendonly()).await;
    let ok = try_connect(RedisConfig {
        require_persistence: true,
        ..config_for(&aof)
    })
    .await
    .expect("AOF is persistence");
    assert_eq!(health(&ok).await.details["persistence"], "aof");

    // CONFIG renamed away (a managed Redis): unknown, which never refuses.
    let hidden = start(RedisOptions::default().config("rename-command CONFIG \"\"")).await;
    let b = try_connect(RedisConfig {
        require_persistence: true,
        ..config_for(&hidden)
    })
    .await
    .expect("unknown persistence does not refuse");
    assert_eq!(health(&b).await.details["persistence"], "unknown");
}

/// The Sentinel case as it happens: the replica is paused (SIGSTOP) and its link cut
/// while locks are granted and checked on the primary; the primary is killed, the
/// replica resumed, and the sentinels promote it with its lagged data. The backend
/// follows the new primary and finds the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_to_a_paused_replica_is_detected() {
    let sentinel = Arc::new(
        tokio::task::spawn_blocking(tflock_testkit::RedisSentinel::start)
            .await
            .unwrap(),
    );
    let config = RedisConfig {
        sentinel: common::sentinel_config(&sentinel),
        key_prefix: common::fresh_prefix(),
        read_timeout: Duration::from_secs(1),
        ..common::with_test_timeouts(RedisConfig::default())
    };
    let a = connect(config).await;
    let rs: Vec<Resource> = (0..4).map(|i| resource(&format!("o/sfo{i}"))).collect();
    grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    let s = sentinel.clone();
    blocking(move || {
        assert_eq!(s.primary().redis_cli(["WAIT", "1", "5000"]), "1");
        s.replica().pause();
        s.primary().redis_cli(["CLIENT", "KILL", "TYPE", "replica"]);
    })
    .await;
    let before = grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    let s = sentinel.clone();
    blocking(move || {
        let replica = s.replica();
        s.kill_primary();
        replica.resume();
        s.wait_for_failover();
    })
    .await;
    let h = health(&a).await;
    assert_lost(&h);
    delay_then_tokens_above(&a, &rs[0], before).await;
}

/// An older AOF restored: the append-only directory copied while Redis ran, more
/// grants and a check after, then Redis stopped and the old directory put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_aof_restored_is_detected() {
    let server = start(RedisOptions::default().appendonly()).await;
    let a = connect(config_for(&server)).await;
    let h = health(&a).await;
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.details["persistence"], "aof");
    let rs: Vec<Resource> = (0..4).map(|i| resource(&format!("o/aof{i}"))).collect();
    grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    let aof = server.dir().join("appendonlydir");
    let backup = server.dir().join("aof-backup");
    copy_dir(&aof, &backup);
    let before = grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    restore_and_restart(&server, move || {
        std::fs::remove_dir_all(&aof).unwrap();
        copy_dir(&backup, &aof);
    })
    .await;
    assert_rolled_back(&a, &rs[0], before).await;
}

/// Stops (SIGSTOP) `replica` and cuts its link: what `primary` takes next never
/// reaches it (not even through its socket buffer).
async fn cut_off_the_replica(primary: &Arc<RedisServer>, replica: &Arc<RedisServer>) {
    let (p, r) = (primary.clone(), replica.clone());
    blocking(move || {
        r.pause();
        p.redis_cli(["CLIENT", "KILL", "TYPE", "replica"]);
    })
    .await;
}

/// A failover to `replica` as the backend at `primary`'s address sees it: the primary
/// is killed, the replica resumed and promoted; the primary comes back empty, takes
/// the replica's data as its replica (`linked` names that wait) and is promoted back.
async fn fail_over_to_the_replica_and_back(
    primary: &Arc<RedisServer>,
    replica: &Arc<RedisServer>,
    linked: &'static str,
) {
    let (p, r) = (primary.clone(), replica.clone());
    blocking(move || {
        p.kill();
        r.resume();
        assert_eq!(r.redis_cli(["REPLICAOF", "NO", "ONE"]), "OK");
        p.restart();
        let port = r.port().to_string();
        assert_eq!(p.redis_cli(["REPLICAOF", "127.0.0.1", port.as_str()]), "OK");
        tflock_testkit::wait_until(tflock_testkit::DEFAULT_TIMEOUT, linked, || {
            match p.info_field("replication", "master_link_status").as_deref() {
                Some("up") => Ok(()),
                other => Err(format!("master_link_status {other:?}")),
            }
        });
        assert_eq!(p.redis_cli(["REPLICAOF", "NO", "ONE"]), "OK");
    })
    .await;
}

/// Stops `server`, puts an older copy of its data back (`restore`), starts it again.
async fn restore_and_restart(server: &Arc<RedisServer>, restore: impl FnOnce() + Send + 'static) {
    let s = server.clone();
    blocking(move || {
        s.stop();
        restore();
        s.restart();
    })
    .await;
}

/// After an older copy was restored: the loss is reported as `rolled_back`, and
/// after the delay tokens on `r` go on above `before`.
async fn assert_rolled_back(a: &RedisBackend, r: &Resource, before: u64) {
    let h = health(a).await;
    assert_lost(&h);
    assert_eq!(
        h.details["last_data_loss"]["found"][0], "rolled_back",
        "{h:?}"
    );
    delay_then_tokens_above(a, r, before).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// With `min_replicas_ack`, losing only what the replicas never confirmed is no data
/// loss: a check whose `seen` the paused replica did not confirm is not held against
/// the promoted replica (no false alarm, no needless lock_delay after a failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_check_lost_in_a_failover_is_no_false_alarm() {
    let (primary, replica) = common::primary_and_replica().await;
    let a = connect(RedisConfig {
        min_replicas_ack: 1,
        ..config_for(&primary)
    })
    .await;
    let rs: Vec<Resource> = (0..2).map(|i| resource(&format!("o/acked{i}"))).collect();
    grant_all(&a, &rs).await;
    assert!(health(&a).await.healthy);
    cut_off_the_replica(&primary, &replica).await;
    // Its `seen` write is not confirmed (the replica is stopped).
    let _ = a.health_check().await;
    fail_over_to_the_replica_and_back(
        &primary,
        &replica,
        "the old primary took the replica's data",
    )
    .await;
    let h = health(&a).await;
    assert_eq!(h.details["data_losses"], 0, "{h:?}");
    assert!(!h.details.contains_key("reason"), "{h:?}");
}
