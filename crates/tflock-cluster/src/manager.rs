//! [`Cluster`]: one server's membership of the cluster. A task heartbeats into the
//! registry (`tick.lua`: register, prune the dead, elect), and while this node leads
//! it does the singleton duties through its backend:
//!
//! - right after an election, claim every bucket for the new epoch
//!   ([`RedisBackend::fence_all`]); only then sweep;
//! - sweep expired leases, reservations and the waiter entries of dead nodes, fenced
//!   per bucket by the epoch (the backend's sweeper in [`SweepRole::Leader`]);
//! - roll cluster-wide metrics up (`rollup.lua`, fenced by the leader key).
//!
//! The leader stops its duties when its lease may have lapsed (its own clock:
//! `valid_until`), when a heartbeat answers that another node leads, or when a
//! bucket refuses its epoch. None of that is needed for safety, which the fences
//! give; it keeps a stale leader from even trying.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tflock_core::{Backend, BackendError, Timestamp};
use tflock_redis::{LeaderAuthority, RedisBackend, SweepRole};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::ClusterError;
use crate::config::ClusterConfig;
use crate::registry::{Heartbeat, Registry, TickReply, TickRole};
use crate::status::{ClusterStatus, DeadNode, LocalView, NodeInfo, Role, Rollup};

/// This server in the cluster. Dropping it stops the heartbeat without leaving the
/// registry (the node is then declared dead after `node_ttl`); call
/// [`Cluster::shutdown`] for a clean leave.
pub struct Cluster {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the task and the handle share.
struct Shared {
    registry: Registry,
    backend: Arc<RedisBackend>,
    config: ClusterConfig,
    node_id: String,
    started_at: Timestamp,
    /// The advertised address; set after the server binds.
    address: Mutex<Option<String>>,
    view: watch::Sender<LocalView>,
    stop: watch::Sender<bool>,
}

/// The leadership this node holds.
#[derive(Clone, Copy)]
struct Lead {
    epoch: u64,
    /// Until when this node's clock says the lease surely holds on Redis.
    valid_until: Instant,
}

impl Cluster {
    /// Registers this server (once, before returning: the waiters it serves are only
    /// ever recorded under a registered node id), switches the backend's sweeper to
    /// follow the leader, and starts heartbeating and campaigning.
    pub async fn start(
        backend: Arc<RedisBackend>,
        config: ClusterConfig,
    ) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| backend.instance_id().to_string());
        backend.set_sweep_role(SweepRole::Follower);
        let view = LocalView {
            node_id: node_id.clone(),
            role: Role::Follower,
            epoch: None,
            leader: None,
            leader_epoch: None,
            registry_reachable: false,
            elections_won: 0,
            step_downs: 0,
            heartbeat_failures: 0,
            rollups: 0,
            revivals: 0,
            sweeps: Default::default(),
        };
        let shared = Arc::new(Shared {
            registry: Registry::new(backend.clone()),
            address: Mutex::new(config.advertise_address.clone()),
            backend: backend.clone(),
            config,
            node_id,
            started_at: Timestamp::from_system_time(std::time::SystemTime::now()),
            view: watch::channel(view).0,
            stop: watch::channel(false).0,
        });
        let first = shared
            .registry
            .tick(&shared.heartbeat(false))
            .await
            .map_err(ClusterError::Registry)?;
        shared.view.send_modify(|v| {
            v.registry_reachable = true;
            v.leader = first.leader.clone();
            v.leader_epoch = first.epoch;
        });
        backend.set_serving_node(Some(&shared.node_id));
        tracing::info!(
            node = %shared.node_id,
            leader = first.leader.as_deref().unwrap_or("none"),
            "joined the cluster"
        );
        let task = tokio::spawn(run(shared.clone()));
        Ok(Cluster {
            shared,
            task: Mutex::new(Some(task)),
        })
    }

    /// This node's id in the registry.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Sets the address shown for this node (sent with the next heartbeat).
    pub fn set_address(&self, address: impl Into<String>) {
        *self
            .shared
            .address
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(address.into());
    }

    /// This node's own view: role, epoch, what it did.
    pub fn local(&self) -> LocalView {
        let mut v = self.shared.view.borrow().clone();
        v.sweeps = (*self.shared.backend.sweep_stats().borrow()).into();
        v
    }

    /// Watches this node's view (changes at each heartbeat and role change).
    pub fn watch(&self) -> watch::Receiver<LocalView> {
        self.shared.view.subscribe()
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.shared.view.borrow().role == Role::Leader
    }

    /// The cluster as the registry holds it now (one read on Redis).
    pub async fn status(&self) -> Result<ClusterStatus, BackendError> {
        status_of(&self.shared.registry, &self.shared.node_id).await
    }

    /// Stops heartbeating: gives up the lead and leaves the registry (so the next
    /// leader is elected at once and this node is not declared dead), stops the
    /// backend's leader duties. Bounded by about twice `read_timeout`.
    pub async fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let limit = self.shared.backend.read_timeout() * 2 + Duration::from_secs(1);
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("the cluster manager did not stop in time");
            }
        }
    }
}

/// The cluster as the registry holds it now, read without joining it (a command line
/// tool, a health check): `this_node` is empty.
pub async fn read_status(backend: Arc<RedisBackend>) -> Result<ClusterStatus, BackendError> {
    status_of(&Registry::new(backend), "").await
}

async fn status_of(registry: &Registry, this_node: &str) -> Result<ClusterStatus, BackendError> {
    let s = registry.status().await?;
    let leader = s.leader.as_ref().map(|l| l.id.clone());
    let mut nodes: Vec<NodeInfo> = s
        .nodes
        .into_iter()
        .map(|n| NodeInfo {
            leader: leader.as_deref() == Some(n.id.as_str()),
            this_node: n.id == this_node,
            address: (!n.address.is_empty()).then_some(n.address),
            id: n.id,
            version: n.version,
            started_at: Timestamp::from_micros(n.started_at),
            last_heartbeat: Timestamp::from_micros(n.heartbeat),
            handoffs: n.handoffs,
            expiries: n.expiries,
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ClusterStatus {
        nodes,
        epoch: s.leader.as_ref().map_or(s.epoch, |l| l.epoch),
        leader_since: s.leader.as_ref().map(|l| Timestamp::from_micros(l.since)),
        leader,
        dead: s
            .dead
            .into_iter()
            .map(|(id, at)| DeadNode {
                id,
                declared_at: Timestamp::from_micros(at),
            })
            .collect(),
        metrics: s.rollup.map(|r| Rollup {
            nodes: r.nodes,
            handoffs: r.handoffs,
            expiries: r.expiries,
            active_locks: r.active_locks,
            queue_depth: r.queue_depth,
            at: Timestamp::from_micros(r.at),
            by: r.by,
            epoch: r.epoch,
        }),
        this_node: this_node.to_string(),
        as_of: Timestamp::from_micros(s.now),
    })
}

impl Drop for Cluster {
    /// Stops the heartbeat at once, as a crash would: no resignation, no leave. The
    /// registration lapses after `node_ttl` and the lead after `leader_lease`.
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Shared {
    /// The heartbeat's arguments.
    fn heartbeat(&self, campaign: bool) -> Heartbeat<'_> {
        let address = self
            .address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let info = serde_json::json!({
            "address": address,
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at.as_micros().to_string(),
        });
        let (handoffs, expiries) = self.backend.counters();
        let counters = serde_json::json!({
            "handoffs": handoffs.to_string(),
            "expiries": expiries.to_string(),
        });
        // A dead node's waiters cannot outlive max_timeout (+ the claim window and the
        // sweeper's grace): remembering it that long covers every entry it made.
        let s = self.backend.settings();
        let keep = s.max_timeout + s.claim_timeout + Duration::from_secs(60) + self.config.node_ttl;
        Heartbeat {
            id: &self.node_id,
            info: info.to_string(),
            node_ttl_ms: self.config.node_ttl.as_millis().to_string(),
            lease_ms: self.config.leader_lease.as_millis().to_string(),
            campaign,
            dead_keep_ms: keep.as_millis().to_string(),
            counters: counters.to_string(),
        }
    }

    fn authority(&self, lead: Lead, tick: &TickReply, sent: Instant) -> SweepRole {
        leader_authority(
            lead.epoch,
            self.config.trust_local_lease.then_some(lead.valid_until),
            tick,
            sent,
        )
    }

    /// Stops leading; with `floor`, also gives up the leader key (if still held) and
    /// raises the epoch counter past a fence that refused us.
    async fn step_down(&self, lead: &mut Option<Lead>, why: &str, floor: Option<u64>) {
        let Some(old) = lead.take() else { return };
        self.backend.set_sweep_role(SweepRole::Follower);
        self.view.send_modify(|v| {
            v.role = Role::Follower;
            v.epoch = None;
            v.step_downs += 1;
        });
        tracing::warn!(node = %self.node_id, epoch = old.epoch, "stepped down: {why}");
        if let Some(floor) = floor {
            let resign = self.registry.resign(&self.node_id, floor, false);
            if let Err(e) = resign.await {
                tracing::warn!("giving up the leader key failed: {e}");
            }
        }
    }

    /// One heartbeat: register, learn the leader, take or renew the lead, and start
    /// or stop the duties accordingly.
    async fn beat(&self, lead: &mut Option<Lead>) {
        let sent = Instant::now();
        let reply = self.registry.tick(&self.heartbeat(true)).await;
        let r = match reply {
            Ok(r) => r,
            Err(e) => {
                let first = self.view.borrow().registry_reachable;
                self.view.send_modify(|v| {
                    v.registry_reachable = false;
                    v.heartbeat_failures += 1;
                });
                if first {
                    tracing::warn!(node = %self.node_id, "heartbeat failed: {e}");
                }
                // The sweeper stops by itself at valid_until; forget the lead then.
                if let Some(l) = *lead
                    && self.config.trust_local_lease
                    && Instant::now() >= l.valid_until
                {
                    self.step_down(lead, "its lease could not be renewed", None)
                        .await;
                }
                return;
            }
        };
        if r.revived {
            tracing::warn!(
                node = %self.node_id,
                "this node had been declared dead (no heartbeat for node_ttl): the waiters it \
                 queued before then were removed"
            );
            self.view.send_modify(|v| v.revivals += 1);
        }
        self.view.send_modify(|v| {
            v.registry_reachable = true;
            v.leader = r.leader.clone();
            v.leader_epoch = r.epoch;
        });
        match r.role {
            TickRole::Follower => {
                if lead.is_some() {
                    let who = r.leader.as_deref().unwrap_or("nobody");
                    self.step_down(lead, &format!("the registry names {who} leader"), None)
                        .await;
                }
            }
            TickRole::Elected | TickRole::Leader => {
                let epoch = r.epoch.unwrap_or(0);
                let valid_until = sent + self.config.leader_lease - self.config.lease_margin();
                match lead {
                    Some(l) if l.epoch == epoch => {
                        let still = matches!(
                            self.backend.sweep_role(),
                            SweepRole::Leader(a) if a.epoch == epoch
                        );
                        if !still {
                            // The sweeper was refused by a bucket since the last beat.
                            let fence = self.backend.sweep_stats().borrow().refused_by;
                            let why = "a bucket refused this leader's epoch";
                            self.step_down(lead, why, Some(fence)).await;
                            return;
                        }
                        l.valid_until = valid_until;
                        self.backend.set_sweep_role(self.authority(*l, &r, sent));
                    }
                    _ => {
                        if lead.is_some() {
                            self.step_down(lead, "its epoch changed", None).await;
                        }
                        self.take_lead(lead, epoch, valid_until, &r, sent).await;
                    }
                }
            }
        }
    }

    /// Leads under `epoch`: first claims every bucket for it, then starts the duties.
    async fn take_lead(
        &self,
        lead: &mut Option<Lead>,
        epoch: u64,
        valid_until: Instant,
        tick: &TickReply,
        sent: Instant,
    ) {
        match self.backend.fence_all(epoch).await {
            Ok(None) => {
                if self.config.trust_local_lease && Instant::now() >= valid_until {
                    // Fencing took longer than the lease we trust: try at the next beat.
                    return;
                }
                let l = Lead { epoch, valid_until };
                *lead = Some(l);
                self.backend.set_sweep_role(self.authority(l, tick, sent));
                self.view.send_modify(|v| {
                    v.role = Role::Leader;
                    v.epoch = Some(epoch);
                    v.elections_won += 1;
                });
                tracing::info!(node = %self.node_id, epoch, "leading the cluster");
            }
            Ok(Some(fence)) => {
                // A bucket has seen a higher epoch than the registry handed out (Redis
                // lost writes in a failover): give the lead back with the counter
                // raised past it, so the next election fences successfully.
                tracing::warn!(
                    node = %self.node_id,
                    epoch,
                    fence,
                    "a bucket has seen a higher epoch than this election's; resigning"
                );
                if let Err(e) = self.registry.resign(&self.node_id, fence, false).await {
                    tracing::warn!("giving up the leader key failed: {e}");
                }
            }
            Err(e) => tracing::warn!(node = %self.node_id, epoch, "fencing failed: {e}"),
        }
    }

    /// The metric roll-up (leader only).
    async fn rollup(&self, epoch: u64) {
        let store = match self.backend.get_metrics().await {
            Ok(m) => serde_json::json!({
                "active_locks": m.active_locks.to_string(),
                "queue_depth": m.queue_depth.to_string(),
            }),
            Err(e) => {
                tracing::debug!("roll-up: cannot read the store's figures: {e}");
                return;
            }
        };
        match self
            .registry
            .rollup(&self.node_id, epoch, &store.to_string())
            .await
        {
            Ok(r) if r.r == "ok" => self.view.send_modify(|v| v.rollups += 1),
            Ok(_) => tracing::debug!("roll-up refused: no longer the leader under {epoch}"),
            Err(e) => tracing::debug!("roll-up failed: {e}"),
        }
    }
}

/// A leader's sweep authority from its tick's reply (`sent`: when the tick was sent).
///
/// The registry says when each dead node was declared dead on *its* clock; the buckets
/// live on other primaries with other clocks (Redis Cluster), so that instant means
/// nothing to them. What crosses over is a duration: how long ago the node was
/// declared dead, `now - dead` on the registry's clock alone, as of `sent` on this
/// process's monotonic clock. The sweeper adds the time elapsed since and `sweep.lua`
/// turns it into an instant on the bucket's own clock. What is left is latency, not
/// skew: `sent` precedes the registry's `now` (the age comes out longer by the tick's
/// latency, toward keeping a waiter) and the sweep call's own latency goes the other
/// way; both are milliseconds.
fn leader_authority(
    epoch: u64,
    valid_until: Option<Instant>,
    tick: &TickReply,
    sent: Instant,
) -> SweepRole {
    let dead = tick
        .dead
        .iter()
        .map(|(node, &died)| {
            let dead_for = Duration::from_micros(tick.now.saturating_sub(died));
            (node.clone(), (dead_for, sent))
        })
        .collect();
    SweepRole::Leader(LeaderAuthority {
        epoch,
        valid_until,
        dead_nodes: Arc::new(dead),
    })
}

/// The heartbeat task.
async fn run(s: Arc<Shared>) {
    let mut stop = s.stop.subscribe();
    let mut role = s.backend.watch_sweep_role();
    let mut ticker = tokio::time::interval(s.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lead: Option<Lead> = None;
    let mut next_rollup = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = role.changed() => {
                if changed.is_err() {
                    break;
                }
                // The sweeper turns Leader into Follower by itself when a bucket
                // refuses the epoch: another leader has acted. Stop, give the key up.
                let demoted = !matches!(*role.borrow_and_update(), SweepRole::Leader(_));
                if lead.is_some() && demoted {
                    let fence = s.backend.sweep_stats().borrow().refused_by;
                    s.step_down(&mut lead, "a bucket refused this leader's epoch", Some(fence))
                        .await;
                }
                continue;
            }
            _ = async { let _ = stop.wait_for(|v| *v).await; } => break,
        }
        s.beat(&mut lead).await;
        if let Some(l) = lead
            && Instant::now() >= next_rollup
        {
            s.rollup(l.epoch).await;
            next_rollup = Instant::now() + s.config.rollup_interval;
        }
    }
    s.backend.set_sweep_role(SweepRole::Follower);
    s.backend.set_serving_node(None);
    let leave = s.registry.resign(&s.node_id, 0, true);
    match tokio::time::timeout(s.backend.read_timeout() * 2, leave).await {
        Ok(Ok(r)) if r.resigned => tracing::info!(node = %s.node_id, "gave up the lead and left"),
        Ok(Ok(_)) => tracing::info!(node = %s.node_id, "left the cluster"),
        Ok(Err(e)) => tracing::warn!("leaving the cluster failed: {e}"),
        Err(_) => tracing::warn!("leaving the cluster timed out"),
    }
    s.view.send_modify(|v| {
        v.role = Role::Stopped;
        v.epoch = None;
    });
}

/// Issue 15: the registry's Redis and the buckets' primaries are different servers on a
/// Redis Cluster, each with its own clock. These tests feed the leader's real path (a
/// tick reply → [`leader_authority`] → the backend's fenced sweeper → `sweep.lua` on a
/// real Redis) with the answer a registry whose clock is skewed would give: every
/// instant in it (`now`, the `dead` times) is shifted by the skew, consistently, as
/// they all come from one `TIME`. Waiters are queued by real backends, so their
/// entries carry the bucket's own clock.
#[cfg(test)]
mod clock_skew_tests {
    use std::time::SystemTime;

    use tflock_core::{LockRequest, LockSettings, Resource, SystemClock};
    use tflock_redis::{BackendOptions, RedisConfig};
    use tflock_testkit::{RedisOptions, RedisServer};

    use super::*;

    const HOUR_US: i64 = 3_600_000_000;

    fn now_us() -> i64 {
        Timestamp::from_system_time(SystemTime::now()).as_micros() as i64
    }

    async fn owners(b: &RedisBackend, r: &Resource) -> Vec<String> {
        let status = b.get_queue_status(r).await.expect("queue status");
        let mut v: Vec<String> = status
            .entries
            .iter()
            .map(|e| e.entry.owner.owner.clone())
            .collect();
        v.sort();
        v
    }

    async fn wait_owners(b: &RedisBackend, r: &Resource, want: &[&str], what: &str) {
        let started = Instant::now();
        loop {
            let got = owners(b, r).await;
            if got == want {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: the queue holds {got:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `node-dead` queued a waiter and died (killed: its entry stays); `node-revived`
    /// was declared dead 5 s ago by the registry's clock, came back and queues a waiter
    /// now. The registry's clock reads `skew_us` ahead of the buckets'. The leader's
    /// sweeps must remove the dead node's waiter and keep the revived node's.
    async fn sweep_with_registry_skew(skew_us: i64) {
        let server = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
            .await
            .unwrap();
        let config = RedisConfig::standalone(server.addr().to_string());
        let connect = || {
            RedisBackend::connect_with(
                config.clone(),
                LockSettings::default(),
                Arc::new(SystemClock),
                BackendOptions::default().sweep(SweepRole::Follower),
            )
        };
        let lead = connect().await.expect("connect");
        let dead = connect().await.expect("connect");
        let revived = connect().await.expect("connect");
        dead.set_serving_node(Some("node-dead"));
        revived.set_serving_node(Some("node-revived"));
        let r = Resource::new("o/skew", ".", "default", "").unwrap();
        let held = lead.try_lock(LockRequest::new(r.clone(), "holder")).await;
        assert!(held.unwrap().acquired);

        // The dead node's waiter: its call vanishes without its drop guard, as in a
        // killed process, so the entry stays in Redis.
        let wait = Duration::from_secs(60);
        let mut ghost = Box::pin({
            let dead = dead.clone();
            let req = LockRequest::new(r.clone(), "ghost").with_wait(wait);
            async move { dead.try_lock(req).await }
        });
        let started = Instant::now();
        while owners(&lead, &r).await.is_empty() {
            assert!(futures::poll!(&mut ghost).is_pending());
            assert!(started.elapsed() < Duration::from_secs(10), "never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::mem::forget(ghost);
        Backend::close(&*dead).await;

        // The revived node's live waiter.
        let live = tokio::spawn({
            let revived = revived.clone();
            let req = LockRequest::new(r.clone(), "alive").with_wait(wait);
            async move { revived.try_lock(req).await }
        });
        wait_owners(&lead, &r, &["alive", "ghost"], "both queued").await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        // The registry's answer to the leader's tick, all on its skewed clock:
        // `node-revived` declared dead 5 s before the answer (before it came back and
        // queued), `node-dead` at the answer (after its waiter was queued).
        let sent = Instant::now();
        let reg_now = now_us() + skew_us;
        let tick: TickReply = serde_json::from_value(serde_json::json!({
            "role": "leader",
            "epoch": "1",
            "now": reg_now.to_string(),
            "dead": {
                "node-revived": (reg_now - 5_000_000).to_string(),
                "node-dead": reg_now.to_string(),
            },
        }))
        .expect("a tick reply");
        assert_eq!(lead.fence_all(1).await.unwrap(), None);
        let sweeps = lead.sweep_stats().borrow().leader_sweeps;
        lead.set_sweep_role(leader_authority(1, None, &tick, sent));

        // A few fenced sweep rounds later: only the live waiter is left.
        let started = Instant::now();
        while lead.sweep_stats().borrow().leader_sweeps < sweeps + 3 {
            assert!(started.elapsed() < Duration::from_secs(10), "no sweeps");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            owners(&lead, &r).await,
            ["alive"],
            "registry clock {} s ahead of the buckets': the dead node's waiter must go, the \
             revived node's live waiter must stay",
            skew_us / 1_000_000
        );
        assert!(!live.is_finished(), "the live waiter's call was ended");
        live.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_clock_ahead_of_the_buckets_does_not_reap_a_live_waiter() {
        sweep_with_registry_skew(HOUR_US).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_clock_behind_the_buckets_still_reaps_a_dead_nodes_waiter() {
        sweep_with_registry_skew(-HOUR_US).await;
    }
}
