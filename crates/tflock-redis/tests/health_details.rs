//! `health_check`'s details as the health monitor reads them (`connected_clients`,
//! `total_connections_received`, `used_memory`, `slowlog_len`, `connected_replicas`,
//! `cluster_state`): standalone, every cluster primary, a user without `SLOWLOG`, and
//! a cluster whose state is not ok.

mod common;

use std::sync::Arc;

use tflock_core::{Backend, BackendHealth, LockSettings, SystemClock};
use tflock_redis::{AuthMethod, RedisBackend, RedisConfig};
use tflock_testkit::{AclUser, ClusterOptions, RedisCluster, RedisOptions, RedisServer};

async fn check(config: RedisConfig) -> BackendHealth {
    let b = RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
        .await
        .expect("connect");
    b.health_check().await.expect("health_check")
}

fn number(h: &BackendHealth, key: &str) -> i64 {
    h.details
        .get(key)
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("details.{key} is not a number: {:?}", h.details))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_details_have_the_monitors_names() {
    let h = check(common::config_for(common::standalone).await).await;
    assert!(h.healthy, "{h:?}");
    assert!(number(&h, "connected_clients") >= 1);
    assert!(number(&h, "total_connections_received") >= 1);
    assert!(number(&h, "used_memory") > 0);
    assert!(number(&h, "slowlog_len") >= 0);
    assert_eq!(number(&h, "connected_replicas"), 0);
    assert!(!h.details.contains_key("cluster_state"), "{h:?}");
    assert_eq!(h.details["mode"], "standalone");
    assert_eq!(h.details["role"], "master");
    assert!(!h.details.contains_key("detail_errors"), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_details_cover_every_primary() {
    let h = check(common::config_for(common::cluster).await).await;
    assert!(h.healthy, "{h:?}");
    assert_eq!(h.details["cluster_state"], "ok");
    // Three primaries with one replica each; every figure summed over the primaries.
    assert_eq!(number(&h, "connected_replicas"), 3, "{h:?}");
    let nodes = h.details["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for n in nodes {
        assert_eq!(n["cluster_state"], "ok");
        assert!(n["used_memory"].as_i64().unwrap() > 0);
    }
    let per_node: i64 = nodes
        .iter()
        .map(|n| n["connected_clients"].as_i64().unwrap())
        .sum();
    assert_eq!(number(&h, "connected_clients"), per_node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_slowlog_is_healthy_and_the_refusal_is_listed() {
    let server = tokio::task::spawn_blocking(|| {
        RedisServer::start(
            RedisOptions::default()
                .acl_user(AclUser::new(
                    "limited",
                    "pw",
                    "+@all -slowlog ~atlantis:enhanced:lock:* &*",
                ))
                .default_user_off(),
        )
    })
    .await
    .unwrap();
    let h = check(RedisConfig {
        auth_method: AuthMethod::Acl,
        username: Some("limited".into()),
        password: Some("pw".into()),
        ..RedisConfig::standalone(server.addr().to_string())
    })
    .await;
    assert!(h.healthy, "{h:?}");
    assert!(number(&h, "used_memory") > 0);
    assert!(!h.details.contains_key("slowlog_len"), "{h:?}");
    let errors = h.details["detail_errors"]
        .as_object()
        .expect("detail_errors");
    assert!(
        errors.keys().any(|k| k.starts_with("SLOWLOG LEN")),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_state_is_not_ok_is_unhealthy() {
    let cluster = tokio::task::spawn_blocking(|| {
        RedisCluster::start_with(ClusterOptions::default().replicas_per_primary(0))
    })
    .await
    .unwrap();
    let config = RedisConfig {
        addresses: cluster.addrs().iter().map(|a| a.to_string()).collect(),
        cluster_mode: true,
        ..common::with_test_timeouts(RedisConfig::default())
    };
    let b = RedisBackend::connect(config, LockSettings::default(), Arc::new(SystemClock))
        .await
        .expect("connect");
    let h = b.health_check().await.unwrap();
    assert!(h.healthy, "{h:?}");
    // Slot 0 loses its owner: with full coverage required, that node says `fail`.
    let owner = (0..3)
        .find(|&i| cluster.node(i).redis_cli(["CLUSTER", "DELSLOTS", "0"]) == "OK")
        .expect("some primary owned slot 0");
    let started = std::time::Instant::now();
    let h = loop {
        let h = b.health_check().await.unwrap();
        if !h.healthy {
            break h;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still healthy: {h:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_ne!(h.details["cluster_state"], "ok", "{h:?}");
    let port = format!(":{}", cluster.node(owner).port());
    let nodes = h.details["nodes"].as_array().unwrap();
    assert!(
        nodes.iter().any(|n| {
            n["address"].as_str().is_some_and(|a| a.ends_with(&port)) && n["cluster_state"] != "ok"
        }),
        "{nodes:?}"
    );
}
