//! How a backend runs besides its operations, as plain types: [`BackendOptions`],
//! who sweeps ([`SweepRole`], [`LeaderAuthority`], what the sweeps did:
//! [`SweepStats`]) and where events are published ([`EventChannels`]). A leaf
//! module: `duty` and `relay` act on these, the backend's shared state holds them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a backend starts; [`crate::RedisBackend::connect`] uses the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackendOptions {
    /// Who sweeps; default [`SweepRole::SelfSweep`]. A cluster manager sets it later
    /// anyway ([`crate::RedisBackend::set_sweep_role`]); starting as `Follower` avoids one
    /// unfenced sweep before it does.
    pub sweep: SweepRole,
    /// Publish this backend's events for other backends and relay theirs (default
    /// true). Off, [`tflock_core::Backend::subscribe`] carries this backend's own events only.
    pub share_events: bool,
    /// Which pub/sub to use; default (`None`) sharded on a Redis Cluster that has it,
    /// classic elsewhere. `Some(Classic)` forces classic pub/sub on a cluster too (to
    /// compare their cost); `Sharded` is only honoured on a cluster. Every backend
    /// sharing a store must use the same kind.
    pub channels: Option<EventChannels>,
    /// Upgrade a store of an older key layout in place while connecting, and a
    /// bucket of one that a TryLock finds later (default true; docs/redis-design.md,
    /// "Layout versions"). Off (`tflock admin upgrade-layout --dry-run`), such a
    /// store is left as it is and a TryLock on it fails until it is upgraded.
    pub upgrade_layout: bool,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            sweep: SweepRole::SelfSweep,
            share_events: true,
            channels: None,
            upgrade_layout: true,
        }
    }
}

impl BackendOptions {
    pub fn sweep(mut self, role: SweepRole) -> Self {
        self.sweep = role;
        self
    }

    pub fn share_events(mut self, on: bool) -> Self {
        self.share_events = on;
        self
    }

    pub fn upgrade_layout(mut self, on: bool) -> Self {
        self.upgrade_layout = on;
        self
    }

    pub fn channels(mut self, channels: EventChannels) -> Self {
        self.channels = Some(channels);
        self
    }
}

/// Who sweeps through this backend (docs/redis-design.md, "Expiry").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SweepRole {
    /// Sweep every bucket unfenced, without a cluster manager. The default.
    #[default]
    SelfSweep,
    /// Do not sweep: another server is (or will be) the cluster's leader.
    Follower,
    /// Sweep as the cluster's leader, fenced by its epoch.
    Leader(LeaderAuthority),
}

/// What a leader's sweeps act under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderAuthority {
    /// The leader's epoch: only ever goes up, one per election.
    pub epoch: u64,
    /// Until when (this process's monotonic clock) the leader is sure its lease still
    /// holds on Redis; past it the sweeper stops until the lease is renewed. `None`
    /// does not check (tests that show the fences alone refuse a stale leader).
    pub valid_until: Option<Instant>,
    /// Servers declared dead: node id → `(dead_for, as_of)`, the node had been dead
    /// for `dead_for` (measured on the registry's Redis clock alone) at `as_of` (this
    /// process's monotonic clock). The waiter entries they made before then are
    /// removed by the leader's sweeps.
    ///
    /// A duration, not the registry's instant: on Redis Cluster the registry and each
    /// bucket are on different primaries with different clocks, and a waiter entry's
    /// enqueue time is on its bucket's clock. Each sweep sends the age as of now
    /// (`dead_for + as_of.elapsed()`) and `sweep.lua` places the death on the bucket's
    /// own clock (`NOW - age`), so the comparison with the entry's time is between two
    /// readings of one clock, whatever the skew between servers.
    pub dead_nodes: Arc<BTreeMap<String, (Duration, Instant)>>,
}

impl LeaderAuthority {
    pub(crate) fn lapsed(&self) -> bool {
        self.valid_until.is_some_and(|v| Instant::now() >= v)
    }
}

/// What this backend's sweeps did since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Fenced script calls (sweeps, fence claims) that a bucket refused because a
    /// leader with a higher epoch had acted on it.
    pub stale_refusals: u64,
    /// The highest fence a refusal reported.
    pub refused_by: u64,
    /// Rounds of fenced sweeps over the 64 buckets, and items they handled.
    pub leader_sweeps: u64,
    pub leader_items: u64,
    /// The epoch of the last fenced sweep round.
    pub last_epoch: u64,
    /// Rounds of unfenced sweeps (self-sweep mode).
    pub self_sweeps: u64,
}

/// Where events are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventChannels {
    /// Not published (other servers' events are not received either).
    Off,
    /// Classic pub/sub on one channel `<key_prefix>events`.
    Classic,
    /// Sharded pub/sub, one channel per bucket `P{b:NN}:events`.
    Sharded,
}

impl EventChannels {
    pub fn as_str(self) -> &'static str {
        match self {
            EventChannels::Off => "off",
            EventChannels::Classic => "classic",
            EventChannels::Sharded => "sharded",
        }
    }
}
