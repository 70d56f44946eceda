//! What the cluster manager reports: [`ClusterStatus`] (the registry as Redis holds
//! it, for `GET /api/cluster` and `tflock cluster status`) and [`LocalView`] (this
//! node's own view and counters).

use serde::{Deserialize, Serialize};
use tflock_core::Timestamp;
use tflock_redis::SweepStats;

/// The cluster as the registry on Redis holds it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every live node (heartbeat within the node TTL), ordered by id.
    pub nodes: Vec<NodeInfo>,
    /// The leader's node id; `None` between a leader's end and the next election.
    pub leader: Option<String>,
    /// The leader's epoch; without a leader, the last epoch handed out.
    pub epoch: u64,
    /// When the current leader was elected.
    pub leader_since: Option<Timestamp>,
    /// Nodes declared dead lately (their waiters' entries are removed), with when.
    pub dead: Vec<DeadNode>,
    /// The leader's last metric roll-up.
    pub metrics: Option<Rollup>,
    /// The node that answered.
    pub this_node: String,
    /// The registry's clock when this was read.
    pub as_of: Timestamp,
}

/// One live node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// The address it serves on, when it knows it.
    pub address: Option<String>,
    /// The tflock version it runs.
    pub version: String,
    pub started_at: Timestamp,
    pub last_heartbeat: Timestamp,
    /// Whether it is the leader.
    pub leader: bool,
    /// Whether it is the node that answered.
    #[serde(rename = "self")]
    pub this_node: bool,
    /// Hand-offs and expiries its backend made (as of its last heartbeat).
    pub handoffs: u64,
    pub expiries: u64,
}

/// A node declared dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadNode {
    pub id: String,
    pub declared_at: Timestamp,
}

/// The leader's cluster-wide metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Live nodes when it was made.
    pub nodes: u64,
    /// Hand-offs and expiries of every node, including nodes gone.
    pub handoffs: u64,
    pub expiries: u64,
    /// The store's figures: unexpired leases and queue entries.
    pub active_locks: u64,
    pub queue_depth: u64,
    pub at: Timestamp,
    /// The leader that made it, and its epoch.
    pub by: String,
    pub epoch: u64,
}

/// This node's role as it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registered; not (yet) the leader.
    Follower,
    /// The leader, doing the duties under `epoch`.
    Leader,
    /// Stopped (shut down).
    Stopped,
}

/// This node's own view: its role, what it last heard from the registry, and what
/// it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalView {
    pub node_id: String,
    pub role: Role,
    /// The epoch this node leads under, while it leads.
    pub epoch: Option<u64>,
    /// The leader and epoch from the last heartbeat's answer.
    pub leader: Option<String>,
    pub leader_epoch: Option<u64>,
    /// Whether the last heartbeat reached Redis.
    pub registry_reachable: bool,
    pub elections_won: u64,
    pub step_downs: u64,
    pub heartbeat_failures: u64,
    pub rollups: u64,
    /// Heartbeats that found this node declared dead (it had been away too long).
    pub revivals: u64,
    /// Fenced sweeps and stale refusals of this node's backend.
    pub sweeps: SweepCounters,
}

/// [`SweepStats`] in serialisable form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepCounters {
    pub stale_refusals: u64,
    pub refused_by: u64,
    pub leader_sweeps: u64,
    pub leader_items: u64,
    pub last_epoch: u64,
    pub self_sweeps: u64,
}

impl From<SweepStats> for SweepCounters {
    fn from(s: SweepStats) -> Self {
        SweepCounters {
            stale_refusals: s.stale_refusals,
            refused_by: s.refused_by,
            leader_sweeps: s.leader_sweeps,
            leader_items: s.leader_items,
            last_epoch: s.last_epoch,
            self_sweeps: s.self_sweeps,
        }
    }
}
