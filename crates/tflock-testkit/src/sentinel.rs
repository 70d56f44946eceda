//! [`RedisSentinel`]: one primary, one replica and (by default) three `redis-sentinel`
//! processes monitoring them, all on loopback, with failover helpers.
//!
//! It owns all five processes. The data nodes keep their indices (0 started as primary,
//! 1 as its replica) while their roles change; [`RedisSentinel::primary`] asks the
//! sentinels which one is primary *now*, which is what a Sentinel-aware client does.
//! Sentinels rewrite their own config files (`sentinel.conf` in each temp dir) and the
//! data nodes' (`CONFIG REWRITE` after a failover), so restarting any of them resumes
//! the current topology.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crate::server::{Kind, RedisOptions, RedisServer};
use crate::wait::{DEFAULT_TIMEOUT, poll_until};

/// How to build the Sentinel deployment. Default: master name `mymaster`, three
/// sentinels, quorum 2, `down-after-milliseconds 1000`, `failover-timeout 3000`.
#[derive(Clone, Debug)]
#[must_use]
pub struct SentinelOptions {
    master_name: String,
    replicas: usize,
    appendonly: bool,
    sentinels: usize,
    quorum: usize,
    down_after: Duration,
    failover_timeout: Duration,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        Self {
            master_name: "mymaster".to_owned(),
            replicas: 1,
            appendonly: false,
            sentinels: 3,
            quorum: 2,
            // Low so a failover takes a few seconds; a failover needs a majority of
            // sentinels to agree, which tolerates one slow sentinel on a loaded machine.
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(3000),
        }
    }
}

impl SentinelOptions {
    pub fn master_name(mut self, name: &str) -> Self {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "master name must be [A-Za-z0-9_-]+: {name:?}"
        );
        self.master_name = name.to_owned();
        self
    }

    /// How many replicas the primary starts with (default 1). With two, a failover
    /// still leaves the new primary a replica, so `min_replicas_ack: 1` keeps working.
    pub fn replicas(mut self, count: usize) -> Self {
        assert!(
            count >= 1,
            "a Sentinel deployment needs at least one replica"
        );
        self.replicas = count;
        self
    }

    /// AOF (`appendfsync always`) on every data node, so a killed node restarted on its
    /// directory comes back with its data rather than empty.
    pub fn appendonly(mut self) -> Self {
        self.appendonly = true;
        self
    }

    /// How many sentinels (a majority of them must be up to fail over).
    pub fn sentinels(mut self, count: usize) -> Self {
        self.sentinels = count;
        self
    }

    /// How many sentinels must agree the primary is down.
    pub fn quorum(mut self, quorum: usize) -> Self {
        self.quorum = quorum;
        self
    }

    /// `down-after-milliseconds`.
    pub fn down_after(mut self, after: Duration) -> Self {
        self.down_after = after;
        self
    }

    /// `failover-timeout`.
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }
}

/// A running Sentinel deployment; see the module docs. Dropping it kills everything.
#[derive(Debug)]
pub struct RedisSentinel {
    options: SentinelOptions,
    /// `[0]` started as primary, `[1]` as its replica.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    /// The primary [`kill_primary`](Self::kill_primary) killed last.
    last_killed: Mutex<Option<SocketAddr>>,
}

impl RedisSentinel {
    /// Starts the default deployment; see [`SentinelOptions`].
    pub fn start() -> Self {
        Self::start_with(SentinelOptions::default())
    }

    /// Starts primary, replica and sentinels, and waits until the replica is linked and
    /// every sentinel sees the primary, the replica and all other sentinels (without
    /// the last, a failover could not gather its majority).
    pub fn start_with(options: SentinelOptions) -> Self {
        assert!(
            options.quorum >= 1 && options.quorum <= options.sentinels,
            "quorum must be within 1..={}",
            options.sentinels
        );
        let data_options = if options.appendonly {
            RedisOptions::default().appendonly()
        } else {
            RedisOptions::default()
        };
        let primary = RedisServer::start(data_options.clone());
        let replicas: Vec<RedisServer> = (0..options.replicas)
            .map(|_| {
                RedisServer::start(
                    data_options
                        .clone()
                        .config(&format!("replicaof 127.0.0.1 {}", primary.port())),
                )
            })
            .collect();
        let name = &options.master_name;
        let directives = vec![
            // Addresses stay IPs: nothing here should depend on name resolution.
            "sentinel resolve-hostnames no".to_owned(),
            format!(
                "sentinel monitor {name} 127.0.0.1 {} {}",
                primary.port(),
                options.quorum
            ),
            format!(
                "sentinel down-after-milliseconds {name} {}",
                options.down_after.as_millis()
            ),
            format!(
                "sentinel failover-timeout {name} {}",
                options.failover_timeout.as_millis()
            ),
            format!("sentinel parallel-syncs {name} 1"),
        ];
        let sentinels: Vec<RedisServer> = thread::scope(|scope| {
            let handles: Vec<_> = (0..options.sentinels)
                .map(|_| {
                    let kind = Kind::Sentinel {
                        directives: directives.clone(),
                    };
                    scope.spawn(move || RedisServer::start_kind(kind, RedisOptions::default()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("starting a sentinel panicked"))
                .collect()
        });
        let deployment = Self {
            options,
            data: std::iter::once(primary).chain(replicas).collect(),
            sentinels,
            last_killed: Mutex::new(None),
        };

        let others = deployment.options.sentinels - 1;
        let replica_count = deployment.options.replicas;
        poll_until(
            DEFAULT_TIMEOUT,
            format!(
                "the replicas linked and every sentinel seeing {replica_count} replicas and {others} other sentinels"
            ),
            || {
                for replica in &deployment.data[1..] {
                    let link = replica.info_field("replication", "master_link_status");
                    if link.as_deref() != Some("up") {
                        return Err(format!("replica {} link {link:?}", replica.addr()));
                    }
                }
                let replicas = deployment.options.replicas.to_string();
                for (i, sentinel) in deployment.sentinels.iter().enumerate() {
                    let out = sentinel.cli().try_query([
                        "SENTINEL",
                        "MASTER",
                        deployment.master_name(),
                    ])?;
                    let fields = parse_pairs(&out);
                    let get = |key: &str| {
                        fields
                            .iter()
                            .find(|(k, _)| *k == key)
                            .map_or("", |(_, v)| *v)
                    };
                    if get("flags") != "master"
                        || get("num-slaves") != replicas
                        || get("num-other-sentinels") != others.to_string()
                    {
                        return Err(format!(
                            "sentinel {i}: flags {:?}, num-slaves {:?}, num-other-sentinels {:?}",
                            get("flags"),
                            get("num-slaves"),
                            get("num-other-sentinels")
                        ));
                    }
                }
                Ok(())
            },
            || deployment.log_tails(),
        );
        deployment
    }

    /// The name sentinels monitor the primary under (`mymaster` by default).
    pub fn master_name(&self) -> &str {
        &self.options.master_name
    }

    /// The sentinels' addresses, for a Sentinel-aware client.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(RedisServer::addr).collect()
    }

    /// [`sentinel_addrs`](Self::sentinel_addrs) as `host:port` strings, the form a
    /// client's configuration takes them in.
    pub fn sentinel_addr_strings(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect()
    }

    /// The sentinel processes (to kill or pause one).
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The data nodes: `[0]` started as primary, the others as its replicas.
    pub fn data_nodes(&self) -> &[RedisServer] {
        &self.data
    }

    /// The primary's address according to the first live sentinel
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn master_addr(&self) -> SocketAddr {
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.is_running() && !s.is_paused())
            .expect("no live sentinel to ask");
        self.master_addr_from(sentinel)
            .unwrap_or_else(|e| panic!("{}: {e}", sentinel.describe()))
    }

    /// The data node the sentinels currently report as primary.
    pub fn primary(&self) -> &RedisServer {
        self.data_node_at(self.master_addr())
    }

    /// The data node that is not the current primary.
    pub fn replica(&self) -> &RedisServer {
        let primary = self.master_addr();
        self.data
            .iter()
            .find(|n| n.addr() != primary)
            .expect("two data nodes")
    }

    /// SIGKILLs the current primary; returns its address.
    pub fn kill_primary(&self) -> SocketAddr {
        let primary = self.primary();
        let addr = primary.addr();
        primary.kill();
        *self
            .last_killed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(addr);
        addr
    }

    /// Waits for a failover away from the primary [`kill_primary`](Self::kill_primary)
    /// killed last; returns the new primary's address.
    pub fn wait_for_failover(&self) -> SocketAddr {
        let old = self
            .last_killed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("wait_for_failover: call kill_primary first, or use wait_for_failover_from");
        self.wait_for_failover_from(old)
    }

    /// Waits until every live sentinel reports the same primary, other than `old`, and
    /// that node says `role:master`; returns its address.
    pub fn wait_for_failover_from(&self, old: SocketAddr) -> SocketAddr {
        poll_until(
            DEFAULT_TIMEOUT,
            format!("sentinels to fail over from {old}"),
            || {
                let mut agreed = None;
                for sentinel in self
                    .sentinels
                    .iter()
                    .filter(|s| s.is_running() && !s.is_paused())
                {
                    let addr = self.master_addr_from(sentinel)?;
                    if addr == old {
                        return Err(format!("{} still reports {old}", sentinel.addr()));
                    }
                    if agreed.is_some_and(|a| a != addr) {
                        return Err(format!("sentinels disagree: {agreed:?} vs {addr}"));
                    }
                    agreed = Some(addr);
                }
                let new = agreed.ok_or("no live sentinel")?;
                let role = self.data_node_at(new).info_field("replication", "role");
                if role.as_deref() == Some("master") {
                    Ok(new)
                } else {
                    Err(format!("{new} is reported primary but says role {role:?}"))
                }
            },
            || self.log_tails(),
        )
    }

    fn master_addr_from(&self, sentinel: &RedisServer) -> Result<SocketAddr, String> {
        let out = sentinel
            .cli()
            .run(["SENTINEL", "get-master-addr-by-name", self.master_name()]);
        if !out.success() {
            return Err(out.to_string());
        }
        let mut lines = out.stdout.lines();
        let host = lines.next().unwrap_or_default();
        let port = lines.next().and_then(|p| p.parse::<u16>().ok());
        match (host.parse::<Ipv4Addr>(), port) {
            (Ok(ip), Some(port)) => Ok(SocketAddr::from((ip, port))),
            _ => Err(format!("unexpected answer {:?}", out.stdout)),
        }
    }

    fn data_node_at(&self, addr: SocketAddr) -> &RedisServer {
        self.data
            .iter()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| {
                panic!("sentinels report {addr}, which is not one of our data nodes")
            })
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in self.data.iter().chain(&self.sentinels) {
            let _ = writeln!(
                out,
                "--- {} log tail ---\n{}",
                node.describe(),
                node.log_tail(15)
            );
        }
        out
    }
}

/// Splits `redis-cli` output of a flat key/value array (one item per line) into pairs.
fn parse_pairs(out: &str) -> Vec<(&str, &str)> {
    let lines: Vec<&str> = out.lines().collect();
    lines.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        assert_eq!(
            parse_pairs("name\nmymaster\nflags\nmaster\n"),
            vec![("name", "mymaster"), ("flags", "master")]
        );
    }
}
