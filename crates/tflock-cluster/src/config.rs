//! [`ClusterConfig`]: how often a node heartbeats, how long its registration and the
//! leader's lease last.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The cluster manager's settings. The defaults suit production: a leader that dies
/// is replaced within `leader_lease` plus one `heartbeat_interval` (about 6 s), and a
/// Redis that answers slowly for up to `leader_lease` does not make leaders flap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// This node's id in the registry; default the backend's instance id (random at
    /// each start, so a restarted server is a new node).
    pub node_id: Option<String>,
    /// The address other people reach this server at (shown in `/api/cluster`).
    pub advertise_address: Option<String>,
    /// How often a node heartbeats, and the leader renews its lease.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node that has not heartbeaten for this long is declared dead: it leaves the
    /// node list and the leader removes the queue entries of its waiters.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// The leader's lease on Redis. A leader that cannot renew it stops its duties
    /// before it lapses; another node takes over once it has.
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
    /// How often the leader rolls up cluster-wide metrics.
    #[serde(with = "humantime_serde")]
    pub rollup_interval: Duration,
    /// Whether the leader stops its duties when its own clock says the lease may have
    /// lapsed (default true). Off, only the per-bucket fences stop a stale leader:
    /// tests switch it off to show that the fences alone suffice.
    pub trust_local_lease: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            advertise_address: None,
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(10),
            leader_lease: Duration::from_secs(5),
            rollup_interval: Duration::from_secs(10),
            trust_local_lease: true,
        }
    }
}

impl ClusterConfig {
    /// Checks the timings; the error names the setting.
    pub fn validate(&self) -> Result<(), crate::ClusterError> {
        let bad = |setting: &str, why: &str| {
            Err(crate::ClusterError::Config {
                setting: setting.to_string(),
                message: why.to_string(),
            })
        };
        if self.heartbeat_interval < Duration::from_millis(10) {
            return bad("cluster.heartbeat_interval", "must be at least 10ms");
        }
        if self.leader_lease < self.heartbeat_interval * 2 {
            return bad(
                "cluster.leader_lease",
                "must be at least twice heartbeat_interval, so a renewal can fail once",
            );
        }
        if self.node_ttl < self.heartbeat_interval * 2 {
            return bad(
                "cluster.node_ttl",
                "must be at least twice heartbeat_interval, so a heartbeat can fail once",
            );
        }
        if self.rollup_interval.is_zero() {
            return bad("cluster.rollup_interval", "must be greater than zero");
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control()))
        {
            return bad(
                "cluster.node_id",
                "must be 1 to 128 bytes without control characters",
            );
        }
        Ok(())
    }

    /// How long before the lease's end on Redis the leader stops trusting it: the
    /// renewal may have been applied up to a round trip after it was sent.
    pub(crate) fn lease_margin(&self) -> Duration {
        (self.leader_lease / 10).min(Duration::from_millis(250))
    }
}
