//! The nemesis: injects one fault at a time into a [`Deployment`], heals it, and writes
//! each fault to the history (invoke = injected, complete = healed).
//!
//! It owns the choice and timing of faults (from the seed) and nothing else. Faults
//! come in rounds: each round runs every kind the topology allows once, in a seeded
//! order, so even a short run sees every kind. Between faults it waits a seeded
//! 1 to 3 s of calm, so clients recover and the report can measure how fast.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::clock::{ms, now_ns};
use crate::harness::{Deployment, Store, Topology};
use crate::history::{Args, NEMESIS, Op, Outcome, Record, Writer};
use tflock_testkit::RedisCluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL a server, restart it on its port and config.
    ServerKill,
    /// SIGSTOP a server longer than a lease, then SIGCONT.
    ServerPause,
    /// SIGSTOP Redis for up to 2.5 s (standalone) or the primary for less than the
    /// failure detection time (Sentinel, Cluster: no failover), then SIGCONT.
    RedisPause,
    /// SIGKILL the standalone Redis, restart it on its AOF.
    RedisKill,
    /// Delay every packet between server 0 and Redis (fault proxy).
    LinkDelay,
    /// Cut (and refuse) the link between server 0 and Redis.
    LinkCut,
    /// SIGKILL the Sentinel primary, wait for the failover, restart it (it rejoins as a
    /// replica).
    SentinelFailover,
    /// SIGKILL one Cluster primary, wait for its replica's promotion, restart it.
    ClusterFailover,
    /// SIGSTOP the Sentinel or Cluster primary past failure detection (a failover of a
    /// stalled, not dead, primary), then SIGCONT. Not in the default set: it loses
    /// acknowledged writes (docs/reliability.md, open findings).
    StallFailover,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::ServerKill => "server_kill",
            Fault::ServerPause => "server_pause",
            Fault::RedisPause => "redis_pause",
            Fault::RedisKill => "redis_kill",
            Fault::LinkDelay => "link_delay",
            Fault::LinkCut => "link_cut",
            Fault::SentinelFailover => "sentinel_failover",
            Fault::ClusterFailover => "cluster_failover",
            Fault::StallFailover => "stall_failover",
        }
    }

    pub fn parse(s: &str) -> Option<Fault> {
        Self::all().into_iter().find(|f| f.name() == s)
    }

    pub fn all() -> Vec<Fault> {
        use Fault::*;
        vec![
            ServerKill,
            ServerPause,
            RedisPause,
            RedisKill,
            LinkDelay,
            LinkCut,
            SentinelFailover,
            ClusterFailover,
            StallFailover,
        ]
    }

    /// Whether [`for_topology`](Self::for_topology)'s kinds plus the opt-in ones allow
    /// `self` on `t`.
    pub fn allowed_on(self, t: Topology) -> bool {
        Self::for_topology(t).contains(&self)
            || (self == Fault::StallFailover && matches!(t, Topology::Sentinel | Topology::Cluster))
    }

    /// The kinds a topology runs by default.
    pub fn for_topology(t: Topology) -> Vec<Fault> {
        use Fault::*;
        match t {
            Topology::Standalone => vec![
                ServerKill,
                ServerPause,
                RedisPause,
                RedisKill,
                LinkDelay,
                LinkCut,
            ],
            Topology::Sentinel => vec![ServerKill, ServerPause, RedisPause, SentinelFailover],
            Topology::Cluster => vec![ServerKill, ServerPause, RedisPause, ClusterFailover],
            Topology::Embedded => vec![ServerKill],
        }
    }
}

pub struct Nemesis<'a> {
    pub d: &'a Deployment,
    pub kinds: Vec<Fault>,
    pub rng: StdRng,
    pub out: Writer,
    /// No fault starts after this instant (ns).
    pub until: u64,
    pub max_faults: u64,
    /// Set when the clients are done: no further fault starts.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl<'a> Nemesis<'a> {
    pub fn new(d: &'a Deployment, kinds: Vec<Fault>, seed: u64, out: Writer, until: u64) -> Self {
        Self {
            d,
            kinds,
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            out,
            until,
            max_faults: u64::MAX,
            stop: None,
        }
    }

    /// Runs rounds of faults until `until`; returns how many it injected.
    pub fn run(&mut self) -> std::io::Result<u64> {
        let mut count = 0;
        // Let clients get going first.
        std::thread::sleep(Duration::from_millis(1500));
        'outer: loop {
            let mut round = self.kinds.clone();
            round.shuffle(&mut self.rng);
            for fault in round {
                if self.stopped() || now_ns() >= self.until || count >= self.max_faults {
                    break 'outer;
                }
                self.inject(fault)?;
                count += 1;
                let calm = self.rng.random_range(1000..3000);
                let end = now_ns() + ms(calm);
                while now_ns() < end && !self.stopped() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(count)
    }

    /// Whether the clients are done (no further fault starts).
    fn stopped(&self) -> bool {
        self.stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// A seeded server of the `n`, named in `args` as the fault's target.
    fn target_server(&mut self, n: usize, args: &mut Args) -> usize {
        let i = self.rng.random_range(0..n);
        args.target = Some(format!("server {i}"));
        args.target_server = Some(i);
        i
    }

    /// A seeded primary of the cluster, named in `args` as the fault's target.
    fn target_cluster_primary(&mut self, c: &RedisCluster, args: &mut Args) -> usize {
        let primaries = c.primaries();
        let i = primaries[self.rng.random_range(0..primaries.len())];
        args.target = Some(format!("cluster primary {}", c.node(i).addr()));
        i
    }

    fn inject(&mut self, fault: Fault) -> std::io::Result<()> {
        let ttl = self.d.ttl_ms;
        let n = self.d.servers.len();
        let mut args = Args {
            fault: Some(fault.name().to_owned()),
            ..Args::default()
        };
        let invoke = now_ns();
        match fault {
            Fault::ServerKill => {
                let i = self.target_server(n, &mut args);
                let s = &self.d.servers[i];
                s.kill();
                sleep_ms(self.rng.random_range(200..1500));
                s.start();
            }
            Fault::ServerPause => {
                let i = self.target_server(n, &mut args);
                let s = &self.d.servers[i];
                s.pause();
                sleep_ms(ttl + self.rng.random_range(200..1500));
                s.resume();
            }
            Fault::RedisPause | Fault::StallFailover => {
                // Sentinel's down-after is 1 s and Cluster's node timeout 1.5 s: a plain
                // pause stays well under both; a stall goes well past them.
                let pause = match (fault, &self.d.store) {
                    (Fault::StallFailover, _) => self.rng.random_range(3000..5000),
                    (_, Store::Standalone { .. }) => self.rng.random_range(300..2500),
                    _ => self.rng.random_range(100..600),
                };
                match &self.d.store {
                    Store::Standalone { redis, .. } => {
                        args.target = Some(format!("redis {}", redis.addr()));
                        redis.pause();
                        sleep_ms(pause);
                        redis.resume();
                    }
                    Store::Sentinel(s) => {
                        let p = s.primary();
                        args.target = Some(format!("sentinel primary {}", p.addr()));
                        p.pause();
                        sleep_ms(pause);
                        p.resume();
                        if fault == Fault::StallFailover {
                            // Settle: sentinels agree on a primary other than the
                            // stalled one before the next fault.
                            s.wait_for_failover_from(p.addr());
                        }
                    }
                    Store::Cluster(c) => {
                        let i = self.target_cluster_primary(c, &mut args);
                        c.node(i).pause();
                        sleep_ms(pause);
                        c.node(i).resume();
                        // A pause longer than the node timeout fails the node over; the
                        // next fault starts from a settled cluster.
                        c.wait_until_healthy();
                    }
                    Store::Embedded => unreachable!("not an embedded fault"),
                }
            }
            Fault::RedisKill => {
                let Store::Standalone { redis, .. } = &self.d.store else {
                    unreachable!("standalone only")
                };
                args.target = Some(format!("redis {}", redis.addr()));
                redis.kill();
                sleep_ms(self.rng.random_range(100..1500));
                redis.restart();
            }
            Fault::LinkDelay | Fault::LinkCut => {
                let Store::Standalone { proxy, .. } = &self.d.store else {
                    unreachable!("standalone only")
                };
                args.target = Some("link server 0 - redis".into());
                args.target_server = Some(0);
                if fault == Fault::LinkDelay {
                    proxy.delay(Duration::from_millis(self.rng.random_range(100..1500)));
                } else {
                    proxy.cut_all();
                }
                sleep_ms(self.rng.random_range(1000..4000));
                proxy.forward();
            }
            Fault::SentinelFailover => {
                let Store::Sentinel(s) = &self.d.store else {
                    unreachable!("sentinel only")
                };
                let old = s.kill_primary();
                args.target = Some(format!("sentinel primary {old}"));
                s.wait_for_failover_from(old);
                let node = s
                    .data_nodes()
                    .iter()
                    .find(|n| n.addr() == old)
                    .expect("the killed node is ours");
                node.restart();
            }
            Fault::ClusterFailover => {
                let Store::Cluster(c) = &self.d.store else {
                    unreachable!("cluster only")
                };
                let i = self.target_cluster_primary(c, &mut args);
                c.kill_primary(i);
                c.wait_for_failover(i);
                c.node(i).restart();
                c.wait_until_healthy();
            }
        }
        let rec = Record {
            process: NEMESIS.to_owned(),
            op: Op::Fault,
            args,
            invoke,
            complete: now_ns(),
            result: Outcome::default(),
        };
        self.out.write(&rec)
    }
}

fn sleep_ms(n: u64) {
    std::thread::sleep(Duration::from_nanos(ms(n)));
}
