//! What sharing events between servers costs: lock + unlock throughput and Redis CPU
//! per operation with events not published, published on one classic channel, and
//! (Redis Cluster) on sharded per-bucket channels; on a cluster also the publish
//! messages the cluster bus carried. Three backends share each store (three servers),
//! all of them subscribed, so every relay is running.
//!
//! ```text
//! cargo run --release -p tflock-redis --example event_channels_cost [OPS]
//! ```
//!
//! Starts its own redis-server processes on loopback (tflock-testkit) and prints a
//! Markdown table (the one in docs/cluster.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::{BackendOptions, EventChannels, RedisBackend, RedisConfig};
use tflock_testkit::{RedisCluster, RedisOptions, RedisServer};

const TASKS: usize = 16;

fn cpu_ms(nodes: &[&RedisServer]) -> f64 {
    nodes
        .iter()
        .map(|n| {
            ["used_cpu_user", "used_cpu_sys"]
                .iter()
                .filter_map(|f| n.info_field("cpu", f)?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum::<f64>()
        * 1000.0
}

fn bus_publishes(nodes: &[&RedisServer]) -> u64 {
    nodes
        .iter()
        .map(|n| {
            let info = n.redis_cli(["CLUSTER", "INFO"]);
            info.lines()
                .filter_map(|l| {
                    let (k, v) = l.trim().split_once(':')?;
                    (k == "cluster_stats_messages_publish_sent"
                        || k == "cluster_stats_messages_publishshard_sent")
                        .then(|| v.parse::<u64>().ok())?
                })
                .sum::<u64>()
        })
        .sum()
}

struct Row {
    topology: &'static str,
    channels: EventChannels,
    ops_per_s: f64,
    cpu_us_per_op: f64,
    bus_per_op: Option<f64>,
    relayed: u64,
}

async fn measure(
    topology: &'static str,
    base: RedisConfig,
    nodes: &[&RedisServer],
    channels: EventChannels,
    ops: usize,
) -> Row {
    let config = RedisConfig {
        key_prefix: format!("cost:{}:", tflock_core::random_hex(4)),
        ..base
    };
    let options = BackendOptions::default()
        .share_events(channels != EventChannels::Off)
        .channels(channels);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            RedisBackend::connect_with(
                config.clone(),
                LockSettings::default(),
                Arc::new(SystemClock),
                options.clone(),
            )
            .await
            .expect("connect"),
        );
    }
    assert_eq!(servers[0].event_channels(), channels);
    // Every server listens (its relay runs); the second counts what it receives.
    let relayed = Arc::new(AtomicU64::new(0));
    let mut listeners = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let mut rx = s.subscribe();
        let relayed = relayed.clone();
        listeners.push(tokio::spawn(async move {
            while let Ok(_e) = rx.recv().await {
                if i == 1 {
                    relayed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let run = |n: usize| {
        let worker = servers[0].clone();
        async move {
            let per = n / TASKS;
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let b = worker.clone();
                    tokio::spawn(async move {
                        for i in 0..per {
                            let r = Resource::new(format!("o/t{t}-{}", i % 64), ".", "default", "")
                                .unwrap();
                            let l = b.try_lock(LockRequest::new(r.clone(), "x")).await.unwrap();
                            let lease = l.lock.unwrap().lease_id.unwrap();
                            b.unlock(&r, &lease).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            per * TASKS
        }
    };
    run(ops / 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relayed.store(0, Ordering::Relaxed);
    let cluster = topology.contains("cluster");
    let (cpu0, bus0) = (
        cpu_ms(nodes),
        if cluster { bus_publishes(nodes) } else { 0 },
    );
    let started = Instant::now();
    let done = run(ops).await;
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu1, bus1) = (
        cpu_ms(nodes),
        if cluster { bus_publishes(nodes) } else { 0 },
    );
    for l in listeners {
        l.abort();
    }
    for s in &servers {
        s.close().await;
    }
    // Each done unit is two scripts (try_lock, unlock), two events.
    let scripts = (done * 2) as f64;
    Row {
        topology,
        channels,
        ops_per_s: scripts / elapsed.as_secs_f64(),
        cpu_us_per_op: (cpu1 - cpu0) * 1000.0 / scripts,
        bus_per_op: cluster.then(|| (bus1 - bus0) as f64 / scripts),
        relayed: relayed.load(Ordering::Relaxed),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ops: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8000);
    let standalone = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
        .await
        .unwrap();
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap();
    let s_config = RedisConfig::standalone(standalone.addr().to_string());
    let c_config = RedisConfig {
        addresses: cluster.addrs().iter().map(|a| a.to_string()).collect(),
        cluster_mode: true,
        ..RedisConfig::default()
    };
    let s_nodes = [&standalone];
    let c_nodes: Vec<&RedisServer> = cluster.nodes().iter().collect();
    let mut rows = Vec::new();
    for channels in [EventChannels::Off, EventChannels::Classic] {
        rows.push(measure("standalone", s_config.clone(), &s_nodes, channels, ops).await);
    }
    for channels in [
        EventChannels::Off,
        EventChannels::Classic,
        EventChannels::Sharded,
    ] {
        rows.push(measure("cluster 3+3", c_config.clone(), &c_nodes, channels, ops).await);
    }
    println!(
        "| Redis | events | scripts/s | Redis CPU µs/script | cluster-bus publish msgs/script | events relayed to another server |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {} | {} |",
            r.topology,
            r.channels.as_str(),
            r.ops_per_s,
            r.cpu_us_per_op,
            r.bus_per_op
                .map(|b| format!("{b:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.relayed
        );
    }
}
