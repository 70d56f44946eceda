//! tflock's Redis backend: the locking contract on Redis standalone, Sentinel and
//! Cluster, as designed in `docs/redis-design.md`.
//!
//! # Layout
//!
//! - `lua/*.lua`: every state change (and every read that needs the clock) is one
//!   Lua script, so each operation is atomic on Redis. `prelude.lua` (time, keys,
//!   grant order, settle, hand-off, grant, events) is shared by all of them.
//! - [`scripts`]: the scripts as one Redis function library (prelude once, each
//!   script a function), and plain scripts for other crates.
//! - `args`: one typed argument struct per script; its `argv` is the only place that
//!   script's positional `ARGV` order and protocol letters are written (the common
//!   `ARGV[1..6]` once, as `Prelude`). Also `exact`: numbers the scripts keep exact.
//! - [`reply`]: the scripts' JSON replies, decoded with serde (tagged enums where a
//!   script has several reply shapes, so no protocol letter is matched elsewhere),
//!   and their translation into core types.
//! - [`conn`]: connections (standalone, Sentinel, Cluster), reconnects, timeouts,
//!   FCALL with `FUNCTION LOAD` recovery, EVALSHA with `NOSCRIPT` recovery (plain
//!   scripts), the waiters' BLPOP pool and `WAIT`.
//! - [`keys`]: the 64 buckets, their hash-tagged key prefixes, the resources'
//!   readable keys and the layout version.
//! - [`config`]: [`RedisConfig`] and [`ConnectError`].
//! - `backend`: `Inner`, what every operation shares, and its call runner: a script
//!   call with its typed arguments, event publishing, `WAIT` for `min_replicas_ack`
//!   and the rollback of an unconfirmed grant (with its drop guard).
//! - `connect`: start-up: the connection, the setting a failure names, the checks a
//!   new backend makes, the pub/sub it uses.
//! - `try_lock`: TryLock: modes, the `lock_delay` wait, the waiter's blocking call
//!   and its drop guard (abandon), the retry loop without a queue.
//! - `unlock`: Unlock, ForceUnlock, UnlockByPull. `lease`: RefreshLock, TransferLock.
//! - `queue`: GetQueueStatus, GetUserQueue, CancelQueueEntry.
//! - `listing`: GetLock, and ListLocks' k-way merge of the 64 buckets.
//! - `snapshot`: Export and Import (checking a snapshot before the first write).
//! - `health`: the health check's server details, the data-loss check of the
//!   generation markers, persistence and `CONFIG GET` values, the metrics.
//! - `generation`: the buckets' generation markers as this server saw them.
//! - `layout`: key layout versions: upgrading a store of an older layout in place
//!   ([`LayoutReport`]).
//! - `options`: plain types of how a backend runs: [`BackendOptions`], [`SweepRole`],
//!   [`LeaderAuthority`], [`SweepStats`], [`EventChannels`] (a leaf, so `duty` and
//!   `relay` and the shared state hold them without importing each other).
//! - `duty`: the sweeper task (by itself, or fenced as a cluster's leader) and the
//!   leader's fences.
//! - `relay`: the events of other backends on the same Redis, received over pub/sub
//!   and re-broadcast on [`Backend::subscribe`].
//! - `sentinel_watch`: Sentinel mode: stops using a primary the sentinels no longer
//!   name, as soon as they say so.
//! - this file: [`RedisBackend`]'s public API (including the hooks the cluster
//!   manager, `tflock-cluster`, uses) and the [`Backend`] implementation, which
//!   delegates each operation to the module above that owns it.
//!
//! # Time
//!
//! Expiry is decided inside the scripts on Redis's `TIME`. When the backend is given
//! a clock that is not the system clock ([`tflock_core::Clock::is_system`] false, e.g.
//! the conformance suite's `ManualClock`), that clock is the time source instead: its
//! instant is sent as the scripts' `now`, so tests move time without sleeping and see
//! exact instants.

pub mod config;
pub mod conn;
pub mod keys;
pub mod reply;
pub mod scripts;

mod args;
mod backend;
mod connect;
mod duty;
mod generation;
mod health;
mod held;
mod layout;
mod lease;
mod listing;
mod options;
mod queue;
mod relay;
mod sentinel_watch;
mod snapshot;
mod try_lock;
mod unlock;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tflock_core::{
    Backend, BackendError, BackendHealth, BackendMetrics, CancelError, FencingToken, ImportError,
    ImportOptions, ImportReport, LeaseId, Lock, LockEvent, LockFilter, LockPage, LockRequest,
    LockResponse, LockSettings, Owner, PullUnlockResponse, QueryError, QueueEntryView, QueueStatus,
    RefreshError, Resource, SharedClock, Snapshot, TransferAuth, TransferError, TryLockError,
    UnlockError, UnlockResponse,
};
use tokio::sync::{broadcast, watch};

use crate::backend::Inner;
pub use crate::config::{AuthMethod, ConnectError, RedisConfig, SentinelConfig};
pub use crate::layout::LayoutReport;
pub use crate::options::{BackendOptions, EventChannels, LeaderAuthority, SweepRole, SweepStats};
pub use crate::relay::sharded_channels;
use crate::scripts::Script;

/// The Redis backend. Cheap to share behind an `Arc`.
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("mode", &self.inner.conn.mode())
            .field("key_prefix", &self.inner.description.get("key_prefix"))
            .finish()
    }
}

impl RedisBackend {
    /// Connects to Redis, checks that the scripts and keys are usable with these
    /// credentials, and starts the expiry sweeper (sweeping by itself). Errors name
    /// the setting at fault.
    pub async fn connect(
        config: RedisConfig,
        settings: LockSettings,
        clock: SharedClock,
    ) -> Result<Arc<RedisBackend>, ConnectError> {
        Self::connect_with(config, settings, clock, BackendOptions::default()).await
    }

    /// [`RedisBackend::connect`] with options.
    pub async fn connect_with(
        config: RedisConfig,
        settings: LockSettings,
        clock: SharedClock,
        options: BackendOptions,
    ) -> Result<Arc<RedisBackend>, ConnectError> {
        let inner = connect::open(config, settings, clock, options).await?;
        let backend = RedisBackend { inner };
        tokio::spawn(duty::sweeper(Arc::downgrade(&backend.inner)));
        sentinel_watch::spawn(&backend.inner);
        Ok(Arc::new(backend))
    }

    /// This backend's id (random at connect): its published events carry it, and the
    /// cluster manager registers the server under it unless told another id.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The configured `key_prefix`.
    pub fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }

    /// Brings every bucket of the store to this build's key layout
    /// ([`keys::LAYOUT`]) in place, or with `dry_run` counts what that would move.
    /// Connecting does it already unless [`BackendOptions::upgrade_layout`] is off.
    pub async fn upgrade_layout(&self, dry_run: bool) -> Result<LayoutReport, BackendError> {
        self.inner.upgrade_layout(dry_run).await
    }

    /// What connecting did to the key layout: `None` when
    /// [`BackendOptions::upgrade_layout`] was off.
    pub fn layout_report(&self) -> Option<LayoutReport> {
        self.inner
            .layout_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The lock settings this backend runs with.
    pub fn settings(&self) -> &LockSettings {
        &self.inner.settings
    }

    /// `read_timeout`: every call to Redis answers within about this.
    pub fn read_timeout(&self) -> Duration {
        self.inner.conn.read_timeout()
    }

    /// Where this backend publishes its events for the other servers.
    pub fn event_channels(&self) -> EventChannels {
        self.inner.channels
    }

    /// Hand-offs and expiries this backend's scripts made since it started.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.inner.handoffs.load(Ordering::Relaxed),
            self.inner.expiries.load(Ordering::Relaxed),
        )
    }

    /// Who sweeps through this backend (see [`SweepRole`]).
    pub fn sweep_role(&self) -> SweepRole {
        self.inner.sweep_role.borrow().clone()
    }

    /// Changes who sweeps. Renewing a leader's lease (same epoch, later
    /// `valid_until`) does not trigger a sweep by itself.
    pub fn set_sweep_role(&self, role: SweepRole) {
        self.inner.set_sweep_role(role);
    }

    /// Watches the sweep role: the sweeper turns `Leader` into `Follower` by itself
    /// when a bucket refuses its epoch.
    pub fn watch_sweep_role(&self) -> watch::Receiver<SweepRole> {
        self.inner.sweep_role.subscribe()
    }

    /// What this backend's sweeps did, including stale refusals.
    pub fn sweep_stats(&self) -> watch::Receiver<SweepStats> {
        self.inner.sweep_stats.subscribe()
    }

    /// A newly elected leader claims every bucket for `epoch` (`fence.lua`) before
    /// any duty. `Ok(None)`: all 64 fenced; `Ok(Some(fence))`: a bucket has seen a
    /// higher epoch, so this leader is stale and must not lead.
    pub async fn fence_all(&self, epoch: u64) -> Result<Option<u64>, BackendError> {
        self.inner.check_open()?;
        self.inner.fence_all(epoch).await
    }

    /// Stamps the waiters this backend queues from now on with `node` (the cluster
    /// manager's node id), so the leader can remove their entries if this server is
    /// declared dead; `None` stops stamping.
    pub fn set_serving_node(&self, node: Option<&str>) {
        *self
            .inner
            .serving_node
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = node.unwrap_or_default().to_string();
    }

    /// Runs a script that is not one of the backend's own (the cluster manager's
    /// registry) with one key, `key`, on this backend's connection: EVALSHA, EVAL when
    /// the node lacks it. Returns the script's string reply. Bounded by `read_timeout`.
    pub async fn eval(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<String, BackendError> {
        self.inner.check_open()?;
        Ok(self.inner.conn.eval(script, key, args).await?.0)
    }

    /// [`RedisBackend::eval`] for a script that changes data (the Terraform state
    /// store's writes): with `min_replicas_ack`, it answers only once `WAIT` on the
    /// connection the script ran on confirms that many replicas, like a grant.
    /// Unconfirmed, it is `Unavailable`, though the change stays made on the primary
    /// (docs/redis-design.md, "Replication"): the caller must not count on it.
    pub async fn eval_acked(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<String, BackendError> {
        self.inner.check_open()?;
        let (reply, generation) = self.inner.conn.eval(script, key, args).await?;
        let required = self.inner.min_replicas_ack;
        if required > 0 {
            let acked = self
                .inner
                .conn
                .wait_replicas(generation, key, required, self.inner.wait_timeout)
                .await?;
            if acked < u64::from(required) {
                return Err(BackendError::Unavailable(format!(
                    "{}: only {acked} of the {required} replicas required by \
                     redis.min_replicas_ack confirmed it; it may be lost in a failover",
                    script.name
                )));
            }
        }
        Ok(reply)
    }

    /// `standalone`, `sentinel` or `cluster`.
    pub fn mode(&self) -> &'static str {
        self.inner.conn.mode()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        // Stops the sweeper even without close().
        self.inner.closed.send_replace(true);
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn try_lock(&self, request: LockRequest) -> Result<LockResponse, TryLockError> {
        try_lock::try_lock(&self.inner, request).await
    }

    async fn unlock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
    ) -> Result<UnlockResponse, UnlockError> {
        unlock::unlock(&self.inner, resource, lease_id).await
    }

    async fn force_unlock(
        &self,
        resource: &Resource,
        expected_token: Option<FencingToken>,
    ) -> Result<UnlockResponse, UnlockError> {
        unlock::force_unlock(&self.inner, resource, expected_token).await
    }

    async fn unlock_by_pull(
        &self,
        repo: &str,
        pull: u64,
    ) -> Result<PullUnlockResponse, UnlockError> {
        unlock::unlock_by_pull(&self.inner, repo, pull).await
    }

    async fn refresh_lock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
        ttl: Duration,
    ) -> Result<Lock, RefreshError> {
        lease::refresh_lock(&self.inner, resource, lease_id, ttl).await
    }

    async fn transfer_lock(
        &self,
        resource: &Resource,
        auth: TransferAuth,
        to: Owner,
    ) -> Result<Lock, TransferError> {
        lease::transfer_lock(&self.inner, resource, auth, to).await
    }

    async fn get_lock(&self, resource: &Resource) -> Result<Option<Lock>, QueryError> {
        listing::get_lock(&self.inner, resource).await
    }

    async fn list_locks(&self, filter: LockFilter) -> Result<LockPage, QueryError> {
        listing::list_locks(&self.inner, filter).await
    }

    async fn get_queue_status(&self, resource: &Resource) -> Result<QueueStatus, QueryError> {
        queue::queue_status(&self.inner, resource).await
    }

    async fn get_user_queue(&self, username: &str) -> Result<Vec<QueueEntryView>, QueryError> {
        queue::user_queue(&self.inner, username).await
    }

    async fn cancel_queue_entry(
        &self,
        entry_id: &str,
        expected_resource: Option<&Resource>,
    ) -> Result<QueueEntryView, CancelError> {
        queue::cancel(&self.inner, entry_id, expected_resource).await
    }

    async fn health_check(&self) -> Result<BackendHealth, BackendError> {
        health::health_check(&self.inner).await
    }

    async fn get_metrics(&self) -> Result<BackendMetrics, BackendError> {
        health::metrics(&self.inner).await
    }

    async fn export(&self) -> Result<Snapshot, BackendError> {
        snapshot::export(&self.inner).await
    }

    async fn import(
        &self,
        snapshot: Snapshot,
        options: ImportOptions,
    ) -> Result<ImportReport, ImportError> {
        snapshot::import(&self.inner, snapshot, options).await
    }

    fn subscribe(&self) -> broadcast::Receiver<LockEvent> {
        let rx = self.inner.events.subscribe();
        relay::start(&self.inner);
        rx
    }

    async fn close(&self) {
        self.inner.closed.send_replace(true);
    }
}
