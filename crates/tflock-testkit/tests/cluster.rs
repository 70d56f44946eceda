//! Redis Cluster: keys spread over slots, a primary killed, its replica promoted, no key
//! lost, and the old primary rejoining as a replica after a restart.

use std::collections::HashSet;
use std::time::Instant;

use tflock_testkit::{DEFAULT_TIMEOUT, RedisCluster, wait_until};

#[test]
fn primary_failover_keeps_keys_and_old_primary_rejoins_as_replica() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 1);
    eprintln!("cluster formed in {:?}", started.elapsed());
    assert_eq!(cluster.addrs().len(), 6);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    for &p in &primaries {
        assert_eq!(cluster.replicas_of(p).len(), 1, "replicas of node {p}");
    }

    // Keys in many slots, written through redirections.
    let keys: Vec<String> = (0..30)
        .map(|i| format!("atlantis:enhanced:lock:{i}"))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cluster.redis_cli(["SET", key, &i.to_string()]), "OK");
    }
    let owners: HashSet<usize> = keys.iter().map(|k| cluster.primary_for_key(k)).collect();
    assert_eq!(owners.len(), 3, "30 keys should land on every primary");
    cluster.wait_replicas_in_sync();

    let victim = cluster.primary_for_key(&keys[0]);
    let replica = cluster.replicas_of(victim)[0];
    let killed_at = Instant::now();
    cluster.kill_primary(victim);
    let promoted = cluster.wait_for_failover(victim);
    eprintln!("failover took {:?}", killed_at.elapsed());
    assert_eq!(promoted, replica);
    assert_eq!(cluster.primary_for_key(&keys[0]), promoted);
    assert!(!cluster.primaries().contains(&victim));

    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cluster.redis_cli(["GET", key]), i.to_string(), "{key}");
    }
    assert_eq!(cluster.redis_cli(["SET", &keys[0], "after-failover"]), "OK");

    // The old primary comes back on its port with its nodes.conf and is demoted.
    let restarted_at = Instant::now();
    cluster.node(victim).restart();
    wait_until(
        DEFAULT_TIMEOUT,
        "the old primary to rejoin as a replica",
        || {
            let replicas = cluster.replicas_of(promoted);
            if replicas.contains(&victim) {
                Ok(())
            } else {
                Err(format!("replicas of node {promoted}: {replicas:?}"))
            }
        },
    );
    cluster.wait_until_healthy();
    cluster.wait_replicas_in_sync();
    eprintln!("rejoin took {:?}", restarted_at.elapsed());
    assert_eq!(
        cluster
            .node(victim)
            .cli()
            .query(["GET", &keys[0]])
            .split_whitespace()
            .next(),
        Some("MOVED"),
        "a replica redirects reads to its primary"
    );
    assert_eq!(cluster.redis_cli(["GET", &keys[0]]), "after-failover");
}
