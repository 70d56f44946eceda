//! Health: the health check (PING, INFO, SLOWLOG LEN, CLUSTER INFO of every node,
//! summed into the names the health monitor reads), the data-loss check of the
//! buckets' generation markers, the persistence the primaries keep, `CONFIG GET`
//! values, and the metrics (see docs/redis-design.md, "Health check", "Data loss").

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Map, Value as Json};
use tflock_core::{BackendError, BackendHealth, BackendMetrics, Timestamp};

use crate::args::{GenerationArgs, StatsArgs};
use crate::backend::Inner;
use crate::conn::{Connector, NodeReply};
use crate::generation::{self, Loss};
use crate::sentinel_watch;

/// How long a data-loss check waits for replicas to confirm its markers (with
/// `min_replicas_ack`): short, so a replica that is down never slows the health check.
const GENERATION_WAIT: Duration = Duration::from_millis(250);

/// [`tflock_core::Backend::health_check`] on Redis: see docs/redis-design.md,
/// "Health check".
pub(crate) async fn health_check(inner: &Inner) -> Result<BackendHealth, BackendError> {
    inner.check_open()?;
    let conn = &inner.conn;
    let cluster = conn.mode() == "cluster";
    // Sent together on the multiplexed connection, so the whole check takes one
    // round trip and is bounded by read_timeout (each call is).
    let started = Instant::now();
    let ping = async {
        let r = conn.call::<String>(&redis::cmd("PING")).await;
        (r, started.elapsed())
    };
    let (info_cmd, mut slowlog_cmd, mut cluster_cmd) = (
        redis::cmd("INFO"),
        redis::cmd("SLOWLOG"),
        redis::cmd("CLUSTER"),
    );
    slowlog_cmd.arg("LEN");
    cluster_cmd.arg("INFO");
    let info = conn.call_nodes(&info_cmd);
    let slowlog = conn.call_nodes(&slowlog_cmd);
    let cluster_info = async {
        if cluster {
            Some(conn.call_nodes(&cluster_cmd).await)
        } else {
            None
        }
    };
    // Sentinel: a primary the sentinels no longer name is dropped (sentinel_watch).
    let ((pong, response_time), info, slowlog, cluster_info, ()) = tokio::join!(
        ping,
        info,
        slowlog,
        cluster_info,
        sentinel_watch::verify(conn)
    );
    let (pong, _) = pong.map_err(BackendError::from)?;
    let info = info.map_err(BackendError::from)?;
    let slowlog = slowlog.map_err(BackendError::from)?;
    let cluster_info = cluster_info.transpose().map_err(BackendError::from)?;

    let mut details = inner.description.clone();
    details.insert("ping".into(), pong.into());
    let mut healthy = server_details(&mut details, info, slowlog, cluster_info);
    if details.get("persistence").and_then(Json::as_str) == Some("none") {
        details.insert(
            "persistence_warning".into(),
            "Redis keeps neither AOF nor RDB snapshots: a restart loses every lock".into(),
        );
    }
    // Data loss: within one health check. A data loss is a healthy answer of an
    // unhealthy store, never an error (the breaker must not open for it: Redis
    // answers, and reads and unlocks work).
    let found = match inner.check_generations().await {
        Ok(found) => found.is_some(),
        Err(e) => {
            details.insert("generation_error".into(), e.to_string().into());
            false
        }
    };
    healthy &= inner
        .generations
        .health_details(&mut details, inner.clock.now(), found);
    Ok(BackendHealth {
        backend: "redis".into(),
        healthy,
        response_time,
        checked_at: inner.clock.now(),
        details,
    })
}

/// [`tflock_core::Backend::get_metrics`] on Redis.
pub(crate) async fn metrics(inner: &Inner) -> Result<BackendMetrics, BackendError> {
    inner.check_open()?;
    let replies = inner.run_all(&StatsArgs).await?;
    Ok(BackendMetrics {
        active_locks: replies.iter().map(|r| r.body.locks).sum(),
        queue_depth: replies.iter().map(|r| r.body.entries).sum(),
        handoffs: inner.handoffs.load(Ordering::Relaxed),
        expiries: inner.expiries.load(Ordering::Relaxed),
        data_losses: inner.generations.losses.load(Ordering::Relaxed),
    })
}

impl Inner {
    /// Checks every bucket's generation marker (generation.lua) against what this
    /// server saw, and reports a loss once however many buckets show it. Returns the
    /// loss this check found, if any. A bucket whose check failed keeps its id and
    /// skips the `seen` comparison next time (its write may or may not have landed).
    pub(crate) async fn check_generations(&self) -> Result<Option<Loss>, BackendError> {
        let gens = &self.generations;
        let mut state = gens.state.lock().await;
        let count = gens.count.fetch_add(1, Ordering::Relaxed) + 1;
        let replies = join_all(state.iter().enumerate().map(|(b, g)| {
            let fresh = tflock_core::random_hex(16);
            async move {
                let args = GenerationArgs {
                    seen_id: &g.id,
                    fresh: &fresh,
                    lock_delay: self.settings.lock_delay,
                    instance_id: &self.instance_id,
                    seen: &g.seen,
                    count,
                };
                let (reply, generation) = self.run_gen(b, &args).await?;
                // With min_replicas_ack, a `seen` the replicas did not confirm may be
                // lost in a failover that loses no confirmed change: it is not
                // compared next time (no false alarm). Briefly: a replica that is down
                // must not make the health check slow.
                let acked = self.min_replicas_ack == 0
                    || self
                        .conn
                        .wait_replicas(
                            generation,
                            &self.buckets[b],
                            self.min_replicas_ack,
                            GENERATION_WAIT,
                        )
                        .await
                        .is_ok_and(|n| n >= u64::from(self.min_replicas_ack));
                Ok::<_, BackendError>((reply, acked))
            }
        }))
        .await;
        let mut loss: Option<Loss> = None;
        let mut failed = None;
        for (b, r) in replies.into_iter().enumerate() {
            match r {
                Ok((r, acked)) => {
                    let r = r.body;
                    if !r.lost.is_empty() {
                        let l = loss.get_or_insert_with(|| Loss {
                            at: Timestamp(r.lost_at.0),
                            hold_until: Timestamp(r.hold.0),
                            buckets: 0,
                            found: Default::default(),
                        });
                        l.buckets += 1;
                        l.at = l.at.min(Timestamp(r.lost_at.0));
                        l.hold_until = l.hold_until.max(Timestamp(r.hold.0));
                        l.found.insert(r.lost.clone());
                    }
                    gens.hold_until.fetch_max(r.hold.0, Ordering::Relaxed);
                    state[b] = generation::BucketGeneration {
                        id: r.id,
                        seen: if acked { r.seen } else { String::new() },
                    };
                    gens.known[b].store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    state[b].seen.clear();
                    failed = Some(e);
                }
            }
        }
        drop(state);
        if let Some(l) = &loss {
            let event = gens.report(l.clone());
            let _ = self.events.send(event);
        }
        match (loss, failed) {
            (None, Some(e)) => Err(e),
            (loss, _) => Ok(loss),
        }
    }
}

/// Reads INFO, SLOWLOG LEN and (on a cluster) CLUSTER INFO of every node into
/// `details` under the names the health monitor reads (`connected_clients`,
/// `total_connections_received`, `used_memory`, `slowlog_len`, `connected_replicas`,
/// `cluster_state`), summed over the nodes, plus `nodes` (each node's own figures)
/// on a cluster. A node that refused a command (an ACL without it) is listed under
/// `detail_errors`. Returns whether the cluster state is ok (true when not a cluster).
fn server_details(
    details: &mut Map<String, Json>,
    info: Vec<(String, NodeReply)>,
    slowlog: Vec<(String, NodeReply)>,
    cluster_info: Option<Vec<(String, NodeReply)>>,
) -> bool {
    let mut nodes: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut errors = Map::new();
    let mut sums: BTreeMap<&'static str, i64> = BTreeMap::new();
    const FIELDS: [(&str, &str); 4] = [
        ("connected_clients", "connected_clients"),
        ("total_connections_received", "total_connections_received"),
        ("used_memory", "used_memory"),
        ("connected_slaves", "connected_replicas"),
    ];
    for (node, reply) in info {
        let text = match reply.map(|v| text_of(&v)) {
            Ok(t) => t,
            Err(e) => {
                errors.insert(format!("INFO {node}"), e.into());
                continue;
            }
        };
        let entry = nodes.entry(node).or_default();
        for line in text.lines() {
            let Some((k, v)) = line.trim_end().split_once(':') else {
                continue;
            };
            if let Some((_, name)) = FIELDS.iter().find(|(f, _)| *f == k) {
                if let Ok(n) = v.parse::<i64>() {
                    *sums.entry(name).or_default() += n;
                    entry.insert((*name).into(), n.into());
                }
            } else if matches!(k, "redis_version" | "role") {
                entry.insert(k.into(), v.into());
                details.entry(k).or_insert_with(|| v.into());
            }
        }
    }
    for (node, reply) in slowlog {
        match reply {
            Ok(redis::Value::Int(n)) => {
                *sums.entry("slowlog_len").or_default() += n;
                nodes
                    .entry(node)
                    .or_default()
                    .insert("slowlog_len".into(), n.into());
            }
            Ok(other) => {
                errors.insert(format!("SLOWLOG LEN {node}"), format!("{other:?}").into());
            }
            Err(e) => {
                errors.insert(format!("SLOWLOG LEN {node}"), e.into());
            }
        }
    }
    for (name, n) in sums {
        details.insert(name.into(), n.into());
    }
    let mut healthy = true;
    if let Some(cluster_info) = cluster_info {
        let mut state: Option<String> = None;
        for (node, reply) in cluster_info {
            let text = match reply.map(|v| text_of(&v)) {
                Ok(t) => t,
                Err(e) => {
                    errors.insert(format!("CLUSTER INFO {node}"), e.into());
                    continue;
                }
            };
            let s = text
                .lines()
                .find_map(|l| l.trim_end().strip_prefix("cluster_state:"))
                .unwrap_or("unknown")
                .to_string();
            nodes
                .entry(node)
                .or_default()
                .insert("cluster_state".into(), s.clone().into());
            // Any node that does not say ok makes the whole cluster not ok.
            if state.as_deref().is_none_or(|cur| cur == "ok") {
                state = Some(s);
            }
        }
        if let Some(s) = state {
            healthy = s == "ok";
            details.insert("cluster_state".into(), s.into());
        }
        details.insert(
            "nodes".into(),
            Json::Array(
                nodes
                    .into_iter()
                    .map(|(addr, mut m)| {
                        m.insert("address".into(), addr.into());
                        Json::Object(m)
                    })
                    .collect(),
            ),
        );
    }
    if !errors.is_empty() {
        details.insert("detail_errors".into(), Json::Object(errors));
    }
    healthy
}

/// Which persistence the Redis primaries keep: `aof`, `rdb`, `aof+rdb`, `none` (a
/// restart loses everything), or `unknown` where `CONFIG GET` is refused (a managed
/// Redis, a renamed command): never a reason to refuse, since it may well persist.
/// The weakest node decides (`none` before `unknown` before the rest).
pub(crate) async fn persistence(conn: &Connector) -> String {
    async fn get(conn: &Connector, name: &str) -> Vec<(String, Option<String>)> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        match conn.call_nodes(&cmd).await {
            Ok(nodes) => nodes
                .into_iter()
                .map(|(node, r)| (node, r.ok().and_then(|v| config_value(&v, name))))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
    let (aof, save) = tokio::join!(get(conn, "appendonly"), get(conn, "save"));
    if aof.is_empty() {
        return "unknown".into();
    }
    let mut worst = String::new();
    for (node, a) in aof {
        let s = save
            .iter()
            .find(|(n, _)| *n == node)
            .and_then(|(_, v)| v.clone());
        let this = match (a, s) {
            (Some(a), Some(s)) => {
                let aof = a.eq_ignore_ascii_case("yes");
                let rdb = !s.trim().is_empty();
                match (aof, rdb) {
                    (true, true) => "aof+rdb",
                    (true, false) => "aof",
                    (false, true) => "rdb",
                    (false, false) => "none",
                }
            }
            _ => "unknown",
        };
        let rank = |p: &str| match p {
            "none" => 0,
            "unknown" => 1,
            _ => 2,
        };
        if worst.is_empty() || rank(this) < rank(&worst) {
            worst = this.into();
        }
    }
    worst
}

/// The value of `name` in a `CONFIG GET` reply (a flat list or, on RESP3, a map).
fn config_value(v: &redis::Value, name: &str) -> Option<String> {
    let pairs: Vec<(&redis::Value, &redis::Value)> = match v {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| c.get(1).map(|b| (&c[0], b)))
            .collect(),
        redis::Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    pairs
        .into_iter()
        .find(|(k, _)| text_of(k).eq_ignore_ascii_case(name))
        .map(|(_, v)| text_of(v))
}

/// A text reply (INFO, CLUSTER INFO) as a string.
fn text_of(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        other => format!("{other:?}"),
    }
}
