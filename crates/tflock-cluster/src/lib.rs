//! tflock's cluster manager: several tflock servers on one Redis (standalone,
//! Sentinel or Cluster) find each other, elect one leader, and the leader alone does
//! the singleton duties. Consensus comes from Redis itself (one atomic script on one
//! slot), never from a protocol of our own; `docs/cluster.md` says what that means
//! when things fail.
//!
//! # Layout
//!
//! - `lua/*.lua`: the registry on Redis under the hash tag `P{cluster}:`: `tick.lua`
//!   (heartbeat, declare lapsed nodes dead, elect: `INCR epoch` + leader key with a
//!   lease, renewed only by its holder), `status.lua`, `resign.lua`, `rollup.lua`;
//!   `common.lua` (keys, clock) is prepended to each.
//! - `registry`: those scripts and their typed replies.
//! - `manager`: [`Cluster`], the heartbeat task, taking and giving up the lead, the
//!   leader's duties (fence every bucket, then sweep fenced through the backend; roll
//!   metrics up).
//! - `config`: [`ClusterConfig`].
//! - `status`: [`ClusterStatus`] (for `GET /api/cluster`) and [`LocalView`].
//!
//! The duties that touch locks are the Redis backend's own scripts, run in its
//! [`tflock_redis::SweepRole::Leader`] role: each compares the leader's epoch with
//! its bucket's fence in the same script, so a leader that lost its lease (paused,
//! partitioned) is refused even before it notices.
//!
//! # Use
//!
//! ```no_run
//! # async fn f(backend: std::sync::Arc<tflock_redis::RedisBackend>) {
//! use tflock_cluster::{Cluster, ClusterConfig};
//! let cluster = Cluster::start(backend, ClusterConfig::default()).await.unwrap();
//! let status = cluster.status().await.unwrap();
//! println!("leader {:?} of {} nodes", status.leader, status.nodes.len());
//! cluster.shutdown().await;
//! # }
//! ```

mod config;
mod manager;
mod registry;
mod status;

pub use config::ClusterConfig;
pub use manager::{Cluster, read_status};
pub use status::{ClusterStatus, DeadNode, LocalView, NodeInfo, Role, Rollup, SweepCounters};

/// Why the cluster manager could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A setting is out of range; `setting` names it.
    #[error("{setting}: {message}")]
    Config { setting: String, message: String },
    /// The first registration failed.
    #[error("cannot register in the cluster registry: {0}")]
    Registry(tflock_core::BackendError),
}
