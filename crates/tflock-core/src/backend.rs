//! The async [`Backend`] trait: every operation of the contract, atomic on its store.
//!
//! Implementations: `tflock-embedded` (one `redb` file) and `tflock-redis`. Both are
//! held to the same behaviour by the `tflock-conformance` suite.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{
    BackendError, CancelError, ImportError, QueryError, RefreshError, TransferError, TryLockError,
    UnlockError,
};
use crate::event::LockEvent;
use crate::lease::{FencingToken, LeaseId, Lock};
use crate::owner::Owner;
use crate::queue::{QueueEntryView, QueueStatus};
use crate::request::{
    LockFilter, LockPage, LockRequest, LockResponse, PullUnlockResponse, TransferAuth,
    UnlockResponse,
};
use crate::resource::Resource;
use crate::snapshot::{ImportOptions, ImportReport, Snapshot};
use crate::time::Timestamp;

/// A backend shared by the server's tasks.
pub type SharedBackend = Arc<dyn Backend>;

/// The result of a health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackendHealth {
    /// `embedded` or `redis`.
    pub backend: String,
    pub healthy: bool,
    /// Round trip of the check itself.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1ms 250us"))]
    pub response_time: Duration,
    pub checked_at: Timestamp,
    /// What the check saw, in the backend's own words (file path, size, ...).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Counts a backend can give cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackendMetrics {
    /// Leases currently held.
    pub active_locks: u64,
    /// Queue entries over all resources.
    pub queue_depth: u64,
    /// Grants made by handing a lock to a queue entry, since start.
    pub handoffs: u64,
    /// Leases ended by expiry, since start.
    pub expiries: u64,
    /// Times this backend found its store had lost data, since start.
    #[serde(default)]
    pub data_losses: u64,
}

/// Every operation of the contract. Each is atomic on its store; a rejected request
/// changes nothing.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which store this is (`embedded`, `redis`).
    fn name(&self) -> &'static str;

    /// TryLock: grant, re-lock, answer "held", wait in line, or reserve a place.
    /// A waiting call returns when granted or at its deadline; when the future is
    /// dropped (the caller went away) its queue entry is removed.
    async fn try_lock(&self, request: LockRequest) -> Result<LockResponse, TryLockError>;

    /// Unlock by the holder; hands the lock to the next entry in the same step.
    async fn unlock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
    ) -> Result<UnlockResponse, UnlockError>;

    /// Unlock whoever holds it (admin). With `expected_token`, only if the live lease
    /// still has that fencing token, checked in the same atomic step as the release
    /// (otherwise [`UnlockError::Changed`] and nothing changes): an administrator who
    /// confirmed one holder never ends the lease of another.
    async fn force_unlock(
        &self,
        resource: &Resource,
        expected_token: Option<FencingToken>,
    ) -> Result<UnlockResponse, UnlockError>;

    /// Every lease and queue entry of exactly this repository and pull request.
    async fn unlock_by_pull(
        &self,
        repo: &str,
        pull: u64,
    ) -> Result<PullUnlockResponse, UnlockError>;

    /// Pushes the lease's expiry to now + `ttl`.
    async fn refresh_lock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
        ttl: Duration,
    ) -> Result<Lock, RefreshError>;

    /// Gives the lock to `to` with a new lease id and fencing token.
    async fn transfer_lock(
        &self,
        resource: &Resource,
        auth: TransferAuth,
        to: Owner,
    ) -> Result<Lock, TransferError>;

    /// The current holder (public view), if any.
    async fn get_lock(&self, resource: &Resource) -> Result<Option<Lock>, QueryError>;

    /// Held locks in storage-key order, filtered and paged.
    async fn list_locks(&self, filter: LockFilter) -> Result<LockPage, QueryError>;

    /// Holder and queue in grant order.
    async fn get_queue_status(&self, resource: &Resource) -> Result<QueueStatus, QueryError>;

    /// Every queue entry of `username` on every resource.
    async fn get_user_queue(&self, username: &str) -> Result<Vec<QueueEntryView>, QueryError>;

    /// Removes a queue entry (a waiter's call then ends as not acquired). With
    /// `expected_resource`, only if the entry still waits in that resource's queue,
    /// checked in the same atomic step (otherwise [`CancelError::NotFound`]): an entry
    /// granted in the meantime is not the entry the administrator saw.
    async fn cancel_queue_entry(
        &self,
        entry_id: &str,
        expected_resource: Option<&Resource>,
    ) -> Result<QueueEntryView, CancelError>;

    /// Checks the store is usable.
    async fn health_check(&self) -> Result<BackendHealth, BackendError>;

    /// Lock and queue counts.
    async fn get_metrics(&self) -> Result<BackendMetrics, BackendError>;

    /// Everything in the store, with lease ids and last tokens (admin).
    async fn export(&self) -> Result<Snapshot, BackendError>;

    /// Installs a snapshot (admin): leases whose resource is free, queue entries not
    /// yet present, token counters raised to at least the snapshot's. Never lowers a
    /// token; a lock whose token the store already passed gets a new, higher one.
    async fn import(
        &self,
        snapshot: Snapshot,
        options: ImportOptions,
    ) -> Result<ImportReport, ImportError>;

    /// A stream of every event from now on. A slow subscriber misses events
    /// (`RecvError::Lagged`) rather than slowing lock operations.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LockEvent>;

    /// Stops background work and flushes the store. Blocked waiters are answered with
    /// `backend_unavailable`. Later calls fail with `backend_unavailable`.
    async fn close(&self);
}
