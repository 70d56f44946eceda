//! Issue 15, point 5: no script runs twice. A mutating call whose request reached
//! Redis but whose reply was lost must fail (`backend_unavailable`), never be sent
//! again by the client: a resent force unlock would also release the lock the first
//! run just handed to the next waiter.
//!
//! The fault is made by a [`FaultProxy`] in front of Redis armed to "cut after
//! write": it forwards the force unlock's `FCALL` (matched by its `force` mode
//! argument, so no other command trips it), lets Redis run it, drops the reply and
//! cuts the connection; then it forwards again, so a resend would reach Redis and run.
//!
//! - Cluster: the case that failed before the fix (redis-rs's cluster client resent a
//!   request after an I/O error, up to `retries` times). The cluster client learns
//!   node addresses from `CLUSTER SLOTS`, so every primary gets its own proxy and
//!   announces the proxy's port (`cluster-announce-port`): all script traffic then
//!   goes through the proxies, and the node owning the resource's slot is cut.
//! - Standalone: the same scenario through one proxy; the multiplexed connection never
//!   resent, this keeps it so (Sentinel uses the same connection type to the primary
//!   it resolves).
//!
//! Once is proved on Redis itself: the owning node's `cmdstat_fcall` calls grow by
//! exactly one over the force unlock (the backend runs no sweep and shares no events,
//! so nothing else runs scripts meanwhile), and B, the queued waiter the first run
//! handed the lock to, still holds it with the next fencing token.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, BackendError, LockRequest, LockSettings, Resource, SystemClock, UnlockError,
};
use tflock_redis::keys::{bucket_of, bucket_prefixes};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig, SweepRole};
use tflock_testkit::{FaultProxy, RedisCluster, RedisOptions, RedisServer, wait_until};

/// The pattern of the force unlock's request: its `mode` argument as RESP.
const FORCE: &[u8] = b"\r\nforce\r\n";

async fn backend(config: RedisConfig) -> Arc<RedisBackend> {
    let config = RedisConfig {
        key_prefix: common::fresh_prefix(),
        ..common::with_test_timeouts(config)
    };
    RedisBackend::connect_with(
        config,
        LockSettings::default(),
        Arc::new(SystemClock),
        BackendOptions::default()
            .sweep(SweepRole::Follower)
            .share_events(false),
    )
    .await
    .expect("connect")
}

/// Scripts run on `node` so far: its `FCALL`, `EVALSHA` and `EVAL` calls (`INFO
/// commandstats`).
fn script_calls(node: &RedisServer) -> u64 {
    ["cmdstat_fcall", "cmdstat_evalsha", "cmdstat_eval"]
        .iter()
        .filter_map(|f| node.info_field("commandstats", f))
        .filter_map(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// A holds `r`, B is queued (a reservation, so it needs no live task); the force
/// unlock's request reaches `node` through `proxy` and its reply is lost.
async fn force_unlock_with_lost_reply_runs_once(
    b: &RedisBackend,
    r: &Resource,
    node: &RedisServer,
    proxy: &FaultProxy,
) {
    // A node gets the function library on the first call that finds it missing:
    // warm it up, so the cut request is the FCALL that runs (not one answered
    // "Function not found").
    assert!(matches!(
        b.force_unlock(r, None).await,
        Err(UnlockError::NotFound)
    ));
    let a = b
        .try_lock(LockRequest::new(r.clone(), "holder-a"))
        .await
        .expect("A locks");
    let a = a.lock.expect("A holds");
    let mut reserve = LockRequest::new(r.clone(), "waiter-b");
    reserve.reserve = true;
    let queued = b.try_lock(reserve).await.expect("B reserves");
    assert!(queued.queue.is_some(), "B is queued: {queued:?}");

    let before = script_calls(node);
    proxy.cut_after_write_containing(FORCE);
    let forced = b.force_unlock(r, None).await;
    assert_eq!(proxy.cuts(), 1, "the force unlock went through the proxy");
    let after = script_calls(node);

    assert!(
        matches!(
            &forced,
            Err(UnlockError::Backend(BackendError::Unavailable(_)))
        ),
        "a lost reply is backend_unavailable, not a second release: {forced:?}"
    );
    assert_eq!(
        after - before,
        1,
        "the force unlock ran exactly once on Redis"
    );
    let held = b.get_lock(r).await.expect("get_lock after the cut");
    let held = held.expect("B holds the lock the force unlock handed it");
    assert_eq!(held.owner.owner, "waiter-b");
    assert!(
        held.fencing_token > a.fencing_token,
        "B's token {:?} follows A's {:?}",
        held.fencing_token,
        a.fencing_token
    );
    // Still B's a moment later: no delayed resend released it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.get_lock(r)
            .await
            .unwrap()
            .map(|l| (l.owner.owner, l.fencing_token)),
        Some(("waiter-b".to_string(), held.fencing_token))
    );
}

/// See the module docs: a Redis Cluster reached only through one proxy per primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_force_unlock_with_lost_reply_is_not_resent() {
    let (cluster, proxies) = tokio::task::spawn_blocking(|| {
        let cluster = RedisCluster::start(3, 0);
        let proxies: Vec<FaultProxy> = cluster
            .nodes()
            .iter()
            .map(|n| FaultProxy::start(n.addr()))
            .collect();
        for (n, p) in cluster.nodes().iter().zip(&proxies) {
            n.redis_cli(["CONFIG", "SET", "cluster-announce-ip", "127.0.0.1"]);
            n.redis_cli([
                "CONFIG",
                "SET",
                "cluster-announce-port",
                &p.port().to_string(),
            ]);
        }
        // Every node's slot map names the proxies only.
        for n in cluster.nodes() {
            wait_until(
                Duration::from_secs(20),
                "CLUSTER SLOTS names the proxies",
                || {
                    let slots = n.redis_cli(["CLUSTER", "SLOTS"]);
                    let ports: Vec<&str> = slots.lines().map(str::trim).collect();
                    let all = proxies
                        .iter()
                        .all(|p| ports.contains(&p.port().to_string().as_str()));
                    let none = cluster
                        .nodes()
                        .iter()
                        .all(|m| !ports.contains(&m.port().to_string().as_str()));
                    if all && none { Ok(()) } else { Err(slots) }
                },
            );
        }
        (cluster, proxies)
    })
    .await
    .unwrap();

    let b = backend(RedisConfig {
        addresses: proxies.iter().map(|p| p.addr().to_string()).collect(),
        cluster_mode: true,
        ..RedisConfig::default()
    })
    .await;
    let r = Resource::new("o/at-most-once", ".", "default", "").unwrap();
    let key = bucket_prefixes(b.key_prefix())[bucket_of(&r)].clone();
    let owner = cluster.primary_for_key(&key);
    force_unlock_with_lost_reply_runs_once(&b, &r, cluster.node(owner), &proxies[owner]).await;
    for (i, p) in proxies.iter().enumerate() {
        if i != owner {
            assert_eq!(p.cuts(), 0, "only the owner's proxy saw the force unlock");
        }
    }
}

/// See the module docs: standalone through one proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_force_unlock_with_lost_reply_is_not_resent() {
    let (server, proxy) = tokio::task::spawn_blocking(|| {
        let server = RedisServer::start(RedisOptions::default());
        let proxy = FaultProxy::start(server.addr());
        (server, proxy)
    })
    .await
    .unwrap();
    let b = backend(RedisConfig::standalone(proxy.addr().to_string())).await;
    let r = Resource::new("o/at-most-once", ".", "default", "").unwrap();
    force_unlock_with_lost_reply_runs_once(&b, &r, &server, &proxy).await;
}
