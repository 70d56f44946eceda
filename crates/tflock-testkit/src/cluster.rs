//! [`RedisCluster`]: a Redis Cluster of `redis-server --cluster-enabled yes` nodes on
//! loopback, formed with `redis-cli --cluster create`, and the failover helpers tests use.
//!
//! The cluster owns its nodes (each a [`RedisServer`], so each can be paused, killed or
//! restarted on its own port with its own `nodes.conf`). Nodes are addressed by index
//! into [`RedisCluster::nodes`]; indices are stable, roles are not: after a failover a
//! former replica is a primary. So topology questions ([`RedisCluster::primaries`],
//! [`RedisCluster::replicas_of`]) ask each live node for its own `ROLE` rather than
//! remembering what `--cluster create` chose.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use crate::cli::RedisCli;
use crate::server::{RedisOptions, RedisServer, info_value};
use crate::wait::{DEFAULT_TIMEOUT, poll_until};

/// Redis Cluster has 16384 hash slots; a healthy cluster serves all of them.
const SLOTS: usize = 16384;

/// How to build a cluster. Default: 3 primaries with 1 replica each, a 1.5 s node
/// timeout, no AOF.
#[derive(Clone, Debug)]
#[must_use]
pub struct ClusterOptions {
    primaries: usize,
    replicas_per_primary: usize,
    node_timeout: Duration,
    appendonly: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            primaries: 3,
            replicas_per_primary: 1,
            // Low so a failover takes seconds (detection after the timeout, then an
            // election), yet not so low that a loaded two-core CI machine, where a node
            // can miss a few hundred milliseconds of scheduling, sees spurious failures.
            node_timeout: Duration::from_millis(1500),
            appendonly: false,
        }
    }
}

impl ClusterOptions {
    /// At least 3: `redis-cli --cluster create` refuses fewer.
    pub fn primaries(mut self, primaries: usize) -> Self {
        self.primaries = primaries;
        self
    }

    pub fn replicas_per_primary(mut self, replicas: usize) -> Self {
        self.replicas_per_primary = replicas;
        self
    }

    /// `cluster-node-timeout`: how long a node may be unreachable before it is
    /// considered failing.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// AOF with `appendfsync always` on every node.
    pub fn appendonly(mut self) -> Self {
        self.appendonly = true;
        self
    }
}

/// A running Redis Cluster; see the module docs. Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Each node's cluster node id (`CLUSTER MYID`); it survives restarts in `nodes.conf`.
    ids: Vec<String>,
    /// For each primary killed by [`kill_primary`](Self::kill_primary), its replicas at
    /// that moment: once it is dead, no live node reports being its replica for long.
    replicas_of_killed: Mutex<HashMap<usize, Vec<usize>>>,
}

/// What a node says about itself (`ROLE`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Replica { primary_port: u16 },
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas_per_primary` replicas each, with the
    /// other [`ClusterOptions`] defaults.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> Self {
        Self::start_with(
            ClusterOptions::default()
                .primaries(primaries)
                .replicas_per_primary(replicas_per_primary),
        )
    }

    /// Starts the nodes, creates the cluster, and waits until every node reports
    /// `cluster_state:ok` with all slots covered and every replica is linked to its
    /// primary.
    pub fn start_with(options: ClusterOptions) -> Self {
        assert!(
            options.primaries >= 3,
            "redis-cli --cluster create needs at least 3 primaries, got {}",
            options.primaries
        );
        let count = options.primaries * (1 + options.replicas_per_primary);
        let mut node_options = RedisOptions::default()
            .config("cluster-enabled yes")
            .config("cluster-config-file nodes.conf")
            .config(&format!(
                "cluster-node-timeout {}",
                options.node_timeout.as_millis()
            ))
            // A replica may always be promoted, however long its link has been down: in
            // tests the link went down because we killed the primary on purpose.
            .config("cluster-replica-validity-factor 0")
            // Keep the topology the test built: no replica wanders to another primary.
            .config("cluster-allow-replica-migration no");
        if options.appendonly {
            node_options = node_options.appendonly();
        }
        // Started in parallel: each start waits for its own PING.
        let nodes: Vec<RedisServer> = thread::scope(|scope| {
            let handles: Vec<_> = (0..count)
                .map(|_| scope.spawn(|| RedisServer::start(node_options.clone())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("starting a cluster node panicked"))
                .collect()
        });

        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| n.addr().to_string()));
        args.extend([
            "--cluster-replicas".into(),
            options.replicas_per_primary.to_string(),
            "--cluster-yes".into(),
        ]);
        let created = nodes[0].cli().timeout(DEFAULT_TIMEOUT).run(&args);
        let mut cluster = Self {
            ids: Vec::new(),
            nodes,
            replicas_of_killed: Mutex::new(HashMap::new()),
        };
        assert!(
            created.success() && created.stdout.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed: {created}\n{}",
            cluster.log_tails()
        );
        cluster.ids = cluster
            .nodes
            .iter()
            .map(|n| n.redis_cli(["CLUSTER", "MYID"]))
            .collect();

        cluster.wait_until_healthy();
        let expected_replicas = options.primaries * options.replicas_per_primary;
        poll_until(
            DEFAULT_TIMEOUT,
            format!("{expected_replicas} replicas linked to their primaries"),
            || {
                let linked = cluster
                    .nodes
                    .iter()
                    .filter(|n| {
                        n.info_field("replication", "master_link_status").as_deref() == Some("up")
                    })
                    .count();
                if linked == expected_replicas {
                    Ok(())
                } else {
                    Err(format!("{linked} linked"))
                }
            },
            || cluster.log_tails(),
        );
        cluster
    }

    /// Every node, by stable index.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `i`, to pause, kill or restart it on its own.
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Every node's address, primaries and replicas alike (cluster clients take any
    /// subset as seeds).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// Every node's `redis://` URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Node `i`'s cluster node id.
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// Indices of the live (running, not paused) nodes that say they are primaries.
    pub fn primaries(&self) -> Vec<usize> {
        self.live()
            .filter(|&i| self.role(i) == Some(Role::Primary))
            .collect()
    }

    /// Indices of the live nodes that say they replicate node `primary`. Works while
    /// `primary` is down: its replicas keep naming it until one is promoted.
    pub fn replicas_of(&self, primary: usize) -> Vec<usize> {
        let port = self.nodes[primary].port();
        self.live()
            .filter(|&i| self.role(i) == Some(Role::Replica { primary_port: port }))
            .collect()
    }

    /// The primary currently serving `key`'s slot, per a live node's `CLUSTER NODES`.
    pub fn primary_for_key(&self, key: &str) -> usize {
        let cli = self.live_cli();
        let slot: usize = cli
            .query(["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        let nodes = cli.query(["CLUSTER", "NODES"]);
        let owner = parse_cluster_nodes(&nodes)
            .into_iter()
            .find(|n| n.is_master && !n.failed && n.slots.iter().any(|r| r.contains(&slot)))
            .unwrap_or_else(|| panic!("no live primary serves slot {slot}:\n{nodes}"));
        self.index_of_id(&owner.id)
    }

    /// SIGKILLs node `i`, which must currently be a primary, and remembers its replicas
    /// for [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_primary(&self, i: usize) {
        assert_eq!(
            self.role(i),
            Some(Role::Primary),
            "kill_primary({i}): node {} is not a live primary",
            self.nodes[i].addr()
        );
        let replicas = self.replicas_of(i);
        self.replicas_of_killed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(i, replicas);
        self.nodes[i].kill();
    }

    /// Waits until one of `old_primary`'s replicas has been promoted, every live node
    /// knows it, and every live node reports `cluster_state:ok` with all slots served.
    /// Returns the new primary's index.
    pub fn wait_for_failover(&self, old_primary: usize) -> usize {
        let candidates = self
            .replicas_of_killed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&old_primary)
            .cloned()
            .unwrap_or_else(|| self.replicas_of(old_primary));
        assert!(
            !candidates.is_empty(),
            "node {old_primary} has no replicas that could take over"
        );
        poll_until(
            DEFAULT_TIMEOUT,
            format!("a replica {candidates:?} of node {old_primary} to be promoted"),
            || {
                let promoted = candidates
                    .iter()
                    .copied()
                    .find(|&c| self.is_live(c) && self.role(c) == Some(Role::Primary))
                    .ok_or("no candidate is primary yet")?;
                for i in self.live() {
                    let view = self.nodes[i].cli().try_query(["CLUSTER", "NODES"])?;
                    let knows = parse_cluster_nodes(&view)
                        .iter()
                        .any(|n| n.id == self.ids[promoted] && n.is_master && !n.failed);
                    if !knows {
                        return Err(format!(
                            "node {i} does not yet see node {promoted} as primary"
                        ));
                    }
                }
                self.check_healthy()?;
                Ok(promoted)
            },
            || self.log_tails(),
        )
    }

    /// Waits until every live node reports `cluster_state:ok` and all 16384 slots ok.
    pub fn wait_until_healthy(&self) {
        poll_until(
            DEFAULT_TIMEOUT,
            "cluster_state:ok with all slots served on every live node",
            || self.check_healthy(),
            || self.log_tails(),
        );
    }

    /// Waits until every live replica has received everything its primary had written
    /// when this was called (replication is asynchronous: a write acknowledged by the
    /// primary may not have reached the replica that a failover promotes).
    pub fn wait_replicas_in_sync(&self) {
        for primary in self.primaries() {
            let offset = repl_offset(&self.nodes[primary], "master_repl_offset");
            for replica in self.replicas_of(primary) {
                poll_until(
                    DEFAULT_TIMEOUT,
                    format!("node {replica} to reach offset {offset} of node {primary}"),
                    || {
                        let node = &self.nodes[replica];
                        let link = node.info_field("replication", "master_link_status");
                        let at = repl_offset(node, "slave_repl_offset");
                        if link.as_deref() == Some("up") && at >= offset {
                            Ok(())
                        } else {
                            Err(format!("link {link:?}, offset {at}"))
                        }
                    },
                    || self.log_tails(),
                );
            }
        }
    }

    /// `redis-cli -c` against the first live node: follows redirections.
    pub fn cli(&self) -> RedisCli {
        self.live_cli().cluster()
    }

    /// One command through [`cli`](Self::cli), e.g. `redis_cli(["SET", "k", "v"])`.
    pub fn redis_cli<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cli().query(args)
    }

    fn live_cli(&self) -> RedisCli {
        let first = self.live().next().expect("no live cluster node to talk to");
        self.nodes[first].cli()
    }

    /// Nodes that are running and not paused: the ones that can answer.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.is_live(i))
    }

    fn is_live(&self, i: usize) -> bool {
        self.nodes[i].is_running() && !self.nodes[i].is_paused()
    }

    /// What node `i` says about itself, or `None` if it does not answer.
    fn role(&self, i: usize) -> Option<Role> {
        let out = self.nodes[i].cli().run(["ROLE"]);
        if !out.success() {
            return None;
        }
        parse_role(&out.stdout)
    }

    fn check_healthy(&self) -> Result<(), String> {
        for i in self.live() {
            let info = self.nodes[i].cli().try_query(["CLUSTER", "INFO"])?;
            let state = info_value(&info, "cluster_state");
            let slots_ok = info_value(&info, "cluster_slots_ok");
            if state != Some("ok") || slots_ok != Some(&SLOTS.to_string()) {
                return Err(format!(
                    "node {i}: cluster_state {state:?}, cluster_slots_ok {slots_ok:?}"
                ));
            }
        }
        Ok(())
    }

    fn index_of_id(&self, id: &str) -> usize {
        self.ids
            .iter()
            .position(|known| known == id)
            .unwrap_or_else(|| panic!("unknown cluster node id {id}"))
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- node {i} {} log tail ---\n{}",
                node.describe(),
                node.log_tail(15)
            );
        }
        out
    }
}

fn repl_offset(node: &RedisServer, field: &str) -> u64 {
    node.info_field("replication", field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Parses `redis-cli ROLE` output: `master\n<offset>\n...` or
/// `slave\n<host>\n<port>\n<state>\n<offset>`.
fn parse_role(out: &str) -> Option<Role> {
    let mut lines = out.lines();
    match lines.next()? {
        "master" => Some(Role::Primary),
        "slave" => {
            let _host = lines.next()?;
            let primary_port = lines.next()?.parse().ok()?;
            Some(Role::Replica { primary_port })
        }
        _ => None,
    }
}

/// One line of `CLUSTER NODES`, the parts the harness needs.
#[derive(Debug, PartialEq, Eq)]
struct NodeLine {
    id: String,
    is_master: bool,
    /// `fail` or `fail?` (PFAIL).
    failed: bool,
    slots: Vec<std::ops::RangeInclusive<usize>>,
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch>
/// <link> <slot>...`, where a slot is `n`, `a-b`, or an importing/migrating `[...]` entry
/// (ignored: it moves no ownership until it completes).
fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                    None => s.parse().ok().map(|n| n..=n),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_owned(),
                is_master: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_role() {
        assert_eq!(
            parse_role("master\n3129\n127.0.0.1\n12345\n3129"),
            Some(Role::Primary)
        );
        assert_eq!(
            parse_role("slave\n127.0.0.1\n12345\nconnected\n3129"),
            Some(Role::Replica {
                primary_port: 12345
            })
        );
        assert_eq!(parse_role("LOADING Redis is loading"), None);
    }

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 7000 [93-<-b2]
b2 127.0.0.1:30002@40002 master,fail - 0 0 2 disconnected
c3 127.0.0.1:30004@40004 slave a1 0 1 1 connected
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].slots, vec![0..=5460, 7000..=7000]);
        assert!(nodes[0].is_master && !nodes[0].failed);
        assert!(nodes[1].is_master && nodes[1].failed && nodes[1].slots.is_empty());
        assert!(!nodes[2].is_master);
    }
}
