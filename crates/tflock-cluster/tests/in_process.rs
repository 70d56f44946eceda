//! The cluster manager with several servers in one process on a real Redis: the
//! registry, one leader, hand-over on a clean stop, a node that stops heartbeating
//! (declared dead, its waiters removed), roll-ups. Killing and pausing real server
//! processes is `processes.rs`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tflock_cluster::{Cluster, ClusterConfig, Role};
use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::{RedisOptions, RedisServer};

fn redis() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(|| RedisServer::start(RedisOptions::default()))
}

async fn config() -> RedisConfig {
    let addr = tokio::task::spawn_blocking(|| redis().addr().to_string())
        .await
        .unwrap();
    RedisConfig {
        key_prefix: format!("tflock:t{}:", tflock_core::random_hex(6)),
        read_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        connection_timeout: Duration::from_secs(2),
        ..RedisConfig::standalone(addr)
    }
}

fn fast() -> ClusterConfig {
    ClusterConfig {
        heartbeat_interval: Duration::from_millis(100),
        node_ttl: Duration::from_millis(800),
        leader_lease: Duration::from_millis(600),
        rollup_interval: Duration::from_millis(300),
        ..ClusterConfig::default()
    }
}

async fn node(config: &RedisConfig, n: usize) -> (Arc<RedisBackend>, Cluster) {
    let b = RedisBackend::connect(
        config.clone(),
        LockSettings::default(),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let c = Cluster::start(
        b.clone(),
        ClusterConfig {
            advertise_address: Some(format!("127.0.0.1:{}", 4000 + n)),
            ..fast()
        },
    )
    .await
    .unwrap();
    (b, c)
}

async fn until<F, Fut, T>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leaders(nodes: &[&Cluster]) -> Vec<String> {
    nodes
        .iter()
        .filter(|c| c.local().role == Role::Leader)
        .map(|c| c.node_id().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_register_and_elect_exactly_one_leader() {
    let config = config().await;
    let (_b1, c1) = node(&config, 1).await;
    let (_b2, c2) = node(&config, 2).await;
    let (_b3, c3) = node(&config, 3).await;
    let all = [&c1, &c2, &c3];
    let leader = until("one leader", Duration::from_secs(5), || async {
        let l = leaders(&all);
        (l.len() == 1).then(|| l[0].clone())
    })
    .await;
    let status = c2.status().await.unwrap();
    assert_eq!(status.nodes.len(), 3, "{status:?}");
    assert_eq!(status.leader.as_deref(), Some(leader.as_str()));
    assert!(status.epoch >= 1);
    assert_eq!(status.this_node, c2.node_id());
    assert!(status.nodes.iter().filter(|n| n.leader).count() == 1);
    assert!(
        status
            .nodes
            .iter()
            .any(|n| n.this_node && n.id == c2.node_id())
    );
    assert!(
        status.nodes.iter().all(|n| n
            .address
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:400"))),
        "{status:?}"
    );
    // It stays one leader, with the same epoch, over many renewals.
    let epoch = status.epoch;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(leaders(&all), vec![leader.clone()]);
    assert_eq!(c1.status().await.unwrap().epoch, epoch);
    let local = all.iter().find(|c| c.node_id() == leader).unwrap().local();
    assert_eq!(local.epoch, Some(epoch));
    assert!(local.sweeps.leader_sweeps >= 1, "{local:?}");
    assert_eq!(local.sweeps.stale_refusals, 0);
    for c in all {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_hands_the_lead_on_at_once_with_a_higher_epoch() {
    let config = config().await;
    let (_b1, c1) = node(&config, 1).await;
    let (_b2, c2) = node(&config, 2).await;
    let all = [&c1, &c2];
    until("one leader", Duration::from_secs(5), || async {
        (leaders(&all).len() == 1).then_some(())
    })
    .await;
    let before = c1.status().await.unwrap();
    let (going, staying) = if c1.is_leader() {
        (&c1, &c2)
    } else {
        (&c2, &c1)
    };
    let stopped = Instant::now();
    going.shutdown().await;
    assert_eq!(going.local().role, Role::Stopped);
    let after = until("the other takes over", Duration::from_secs(3), || async {
        let s = staying.status().await.unwrap();
        (s.leader.as_deref() == Some(staying.node_id()) && staying.is_leader()).then_some(s)
    })
    .await;
    // Resigning frees the key at once: no wait for the lease.
    assert!(
        stopped.elapsed() < Duration::from_millis(600),
        "{:?}",
        stopped.elapsed()
    );
    assert!(after.epoch > before.epoch);
    assert_eq!(after.nodes.len(), 1, "the stopped node left: {after:?}");
    assert!(
        after.dead.is_empty(),
        "a clean leave is not a death: {after:?}"
    );
    staying.shutdown().await;
}

/// A server that stops heartbeating (its manager dropped, as in a crash) is declared
/// dead after the node TTL, and the leader removes the entries of its waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_declared_dead_and_its_waiters_removed() {
    let config = config().await;
    let (b1, c1) = node(&config, 1).await;
    until("c1 leads", Duration::from_secs(5), || async {
        c1.is_leader().then_some(())
    })
    .await;
    let (b2, c2) = node(&config, 2).await;
    let r = Resource::new("o/silent", ".", "default", "").unwrap();
    assert!(
        b1.try_lock(LockRequest::new(r.clone(), "holder"))
            .await
            .unwrap()
            .acquired
    );
    let mut ghost = Box::pin({
        let b2 = b2.clone();
        let req = LockRequest::new(r.clone(), "ghost").with_wait(Duration::from_secs(120));
        async move { b2.try_lock(req).await }
    });
    let started = Instant::now();
    while b1.get_queue_status(&r).await.unwrap().entries.len() != 1 {
        assert!(futures::poll!(&mut ghost).is_pending());
        assert!(started.elapsed() < Duration::from_secs(5), "never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::forget(ghost);
    let silent = c2.node_id().to_string();
    drop(c2);
    let gone = Instant::now();
    until("declared dead", Duration::from_secs(5), || async {
        let s = c1.status().await.unwrap();
        s.dead.iter().any(|d| d.id == silent).then_some(())
    })
    .await;
    until("its waiter removed", Duration::from_secs(5), || async {
        b1.get_queue_status(&r)
            .await
            .unwrap()
            .entries
            .is_empty()
            .then_some(())
    })
    .await;
    let took = gone.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "removed before the TTL: {took:?}"
    );
    let s = c1.status().await.unwrap();
    assert_eq!(s.nodes.len(), 1);
    c1.shutdown().await;
    b2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_rolls_metrics_up() {
    let config = config().await;
    let (b1, c1) = node(&config, 1).await;
    let (b2, c2) = node(&config, 2).await;
    let r = Resource::new("o/rollup", ".", "default", "").unwrap();
    for i in 0..3 {
        let b = if i % 2 == 0 { &b1 } else { &b2 };
        let l = b.try_lock(LockRequest::new(r.clone(), "a")).await.unwrap();
        b.try_lock(LockRequest::new(r.clone(), "b").reserving())
            .await
            .unwrap();
        b.unlock(&r, l.lock.unwrap().lease_id.as_ref().unwrap())
            .await
            .unwrap();
        b.force_unlock(&r, None).await.unwrap();
    }
    let m = until(
        "a roll-up counting the hand-offs",
        Duration::from_secs(5),
        || async {
            let s = c1.status().await.unwrap();
            s.metrics.filter(|m| m.handoffs >= 3 && m.nodes == 2)
        },
    )
    .await;
    assert!(m.epoch >= 1 && !m.by.is_empty(), "{m:?}");
    c1.shutdown().await;
    c2.shutdown().await;
}

#[tokio::test]
async fn settings_out_of_range_name_the_setting() {
    let c = ClusterConfig {
        leader_lease: Duration::from_millis(100),
        heartbeat_interval: Duration::from_millis(100),
        ..ClusterConfig::default()
    };
    match c.validate() {
        Err(tflock_cluster::ClusterError::Config { setting, .. }) => {
            assert_eq!(setting, "cluster.leader_lease")
        }
        other => panic!("{other:?}"),
    }
    assert!(ClusterConfig::default().validate().is_ok());
}
