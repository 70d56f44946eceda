//! `legacy_fallback`: during the switch-over, locks still held in Atlantis's own store
//! count as held in tflock.
//!
//! [`LegacyFallback`] wraps the real backend and a [`LegacySource`] (a copy of
//! `atlantis.db`, or Atlantis's Redis) and is itself a [`Backend`]:
//!
//! - TryLock on a resource that a legacy lock holds (and tflock does not) answers
//!   `acquired: false` with the legacy holder, its note `legacy: atlantis` and fencing
//!   token 0. The same owner (`{repo}#{pull}`) is granted the lock in tflock, and the
//!   legacy lock then stops counting (the lock has moved). A `wait` re-checks the
//!   legacy store until it lets go or the wait ends; a reservation cannot queue
//!   behind a lock tflock does not manage, and is answered `held`.
//! - GetLock, ListLocks and GetQueueStatus show legacy locks (tflock's own lock on the
//!   same resource wins), ordered and paged with tflock's own.
//! - ForceUnlock and UnlockByPull of a legacy-held resource, and any release through
//!   tflock by the legacy holder's owner, record that the legacy lock was released, so
//!   it stops counting even though the Atlantis copy still has it. A plain Unlock
//!   needs a lease id, which a legacy lock has none of: it answers `not_owner`.
//!
//! # The release record
//!
//! A release is recorded *in the tflock store* through the [`Backend`] trait, so it
//! works on both backends and every server replica sees it: as a lock on
//! `{repo: "tflock-legacy/released", path: ".", workspace: "released",
//! project_name: <64 hex digits>}` held by `tflock-legacy-fallback` for `max_ttl`
//! (7 days by default), the hex being SHA-256 of the legacy lock's resource, owner and
//! time. A lock Atlantis takes again later has another time, hence another record,
//! and counts again. These records are hidden from listings (ask for
//! `repo=tflock-legacy/released` to see them), nobody else may lock that repository,
//! and they count in `active_locks` and show in exports. The `legacy_fallback`
//! period is meant to be short; when a record expires while the Atlantis copy still
//! holds the lock, the lock counts again (the safe side).
//!
//! # Freshness
//!
//! The legacy store and the release records are read again when the last read is
//! older than [`LegacyOptions::refresh`] (2 s), so a replaced BoltDB copy or a lock
//! Atlantis released in its Redis is seen within that time. When a read fails, the
//! last good read is used for up to [`LegacyOptions::max_stale`]; after that every
//! operation that needs it fails closed with `backend_unavailable`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tflock_core::request::encode_cursor;
use tflock_core::{
    Backend, BackendError, BackendHealth, BackendMetrics, CancelError, FencingToken, ImportError,
    ImportOptions, ImportReport, InvalidRequest, LeaseId, Lock, LockEvent, LockFilter, LockPage,
    LockRequest, LockResponse, LockSettings, NotAcquiredReason, Owner, PullUnlockResponse,
    QueryError, QueueEntryView, QueueStatus, RefreshError, Resource, SharedBackend, SharedClock,
    Snapshot, TransferAuth, TransferError, TryLockError, UnlockError, UnlockResponse, WaitSpec,
};

use crate::convert::{AtlantisLocks, GlobalLock, lock_from_atlantis};
use crate::source::{AtlantisRedis, MigrateError, read_boltdb};

/// The note on every legacy lock.
pub const LEGACY_NOTE: &str = "legacy: atlantis";
/// The repository of release records.
pub const MARKER_REPO: &str = "tflock-legacy/released";
/// The owner of release records.
pub const MARKER_OWNER: &str = "tflock-legacy-fallback";
const MARKER_WORKSPACE: &str = "released";

/// Where legacy locks are read from.
#[derive(Debug)]
pub enum LegacySource {
    /// A copy of Atlantis's `atlantis.db`; it may be replaced at any time (write the
    /// new copy beside it and rename it over the old one).
    BoltDb(PathBuf),
    /// Atlantis's Redis.
    AtlantisRedis(Box<AtlantisRedis>),
}

impl LegacySource {
    /// The source named by the `legacy.boltdb_path` / `legacy.redis_url` settings;
    /// `None` when neither is set. Both set is an error: one source at a time.
    pub fn from_settings(
        boltdb_path: Option<PathBuf>,
        redis_url: Option<&str>,
    ) -> Result<Option<Self>, InvalidRequest> {
        match (boltdb_path, redis_url) {
            (Some(_), Some(_)) => Err(InvalidRequest::new(
                "legacy",
                "set either legacy.boltdb_path or legacy.redis_url, not both",
            )),
            (Some(p), None) => Ok(Some(LegacySource::BoltDb(p))),
            (None, Some(u)) => AtlantisRedis::new(u)
                .map(|r| Some(LegacySource::AtlantisRedis(Box::new(r))))
                .map_err(|e| InvalidRequest::new("legacy.redis_url", e.to_string())),
            (None, None) => Ok(None),
        }
    }

    /// Where it reads from, without credentials.
    pub fn describe(&self) -> String {
        match self {
            LegacySource::BoltDb(p) => format!("boltdb:{}", p.display()),
            LegacySource::AtlantisRedis(r) => r.url().to_string(),
        }
    }

    async fn read(&self) -> Result<AtlantisLocks, MigrateError> {
        match self {
            LegacySource::BoltDb(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || read_boltdb(p))
                    .await
                    .map_err(|e| MigrateError::Join(e.to_string()))?
            }
            LegacySource::AtlantisRedis(r) => r.read().await,
        }
    }
}

/// How [`LegacyFallback`] behaves.
#[derive(Debug, Clone)]
pub struct LegacyOptions {
    /// Reads older than this are done again.
    pub refresh: Duration,
    /// How long the last good read stands in for a failing source.
    pub max_stale: Duration,
    /// The store's settings: `default_ttl` (the TTL shown on legacy locks), `max_ttl`
    /// (how long a release record lasts), `default_timeout`/`max_timeout` (waits).
    pub settings: LockSettings,
}

impl Default for LegacyOptions {
    fn default() -> Self {
        LegacyOptions {
            refresh: Duration::from_secs(2),
            max_stale: Duration::from_secs(60),
            settings: LockSettings::default(),
        }
    }
}

/// One legacy lock as tflock shows it, and the id of its release record.
#[derive(Debug, Clone)]
struct LegacyLock {
    lock: Lock,
    marker: String,
}

/// The last read: every legacy lock by storage key, and the release records.
#[derive(Debug, Default)]
struct Cache {
    locks: Arc<BTreeMap<String, LegacyLock>>,
    released: Arc<HashSet<String>>,
    global_locks: Arc<Vec<GlobalLock>>,
    /// When the last read was tried, and when one last succeeded.
    tried_at: Option<Instant>,
    good_at: Option<Instant>,
    error: Option<String>,
}

/// One read of the legacy store and of the release records.
struct Read {
    locks: BTreeMap<String, LegacyLock>,
    released: HashSet<String>,
    global_locks: Vec<GlobalLock>,
}

/// A consistent view for one operation.
struct View {
    locks: Arc<BTreeMap<String, LegacyLock>>,
    released: Arc<HashSet<String>>,
}

impl View {
    /// The legacy lock on `storage_key`, if it still counts.
    fn active(&self, storage_key: &str) -> Option<&LegacyLock> {
        self.locks
            .get(storage_key)
            .filter(|l| !self.released.contains(&l.marker))
    }

    fn iter_active(&self) -> impl Iterator<Item = (&String, &LegacyLock)> {
        self.locks
            .iter()
            .filter(|(_, l)| !self.released.contains(&l.marker))
    }
}

/// A [`Backend`] that also honours the locks of a legacy Atlantis store (see the
/// module documentation).
pub struct LegacyFallback {
    inner: SharedBackend,
    source: LegacySource,
    options: LegacyOptions,
    clock: SharedClock,
    /// A tokio mutex: one read at a time, every caller waiting for the same read.
    cache: tokio::sync::Mutex<Cache>,
}

impl std::fmt::Debug for LegacyFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyFallback")
            .field("inner", &self.inner.name())
            .field("source", &self.source.describe())
            .finish()
    }
}

impl LegacyFallback {
    /// Wraps `inner`. `clock` should be the store's clock (legacy locks are shown as
    /// expiring `default_ttl` after now).
    pub fn new(
        inner: SharedBackend,
        source: LegacySource,
        options: LegacyOptions,
        clock: SharedClock,
    ) -> Arc<LegacyFallback> {
        Arc::new(LegacyFallback {
            inner,
            source,
            options,
            clock,
            cache: tokio::sync::Mutex::new(Cache::default()),
        })
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &SharedBackend {
        &self.inner
    }

    /// Reads the legacy store now (and the release records), ignoring the cache. The
    /// first call fails fast on a bad source, e.g. at server start-up.
    pub async fn reload(&self) -> Result<(), BackendError> {
        let mut cache = self.cache.lock().await;
        cache.tried_at = None;
        cache.good_at = None;
        drop(cache);
        self.view().await.map(|_| ())
    }

    /// The current view, read again when older than `refresh`.
    async fn view(&self) -> Result<View, BackendError> {
        let mut cache = self.cache.lock().await;
        let fresh = cache
            .tried_at
            .is_some_and(|t| t.elapsed() < self.options.refresh);
        if !fresh {
            cache.tried_at = Some(Instant::now());
            match self.load().await {
                Ok(read) => {
                    cache.locks = Arc::new(read.locks);
                    cache.released = Arc::new(read.released);
                    cache.global_locks = Arc::new(read.global_locks);
                    cache.good_at = Some(Instant::now());
                    cache.error = None;
                }
                Err(e) => {
                    tracing::warn!(source = %self.source.describe(), error = %e, "legacy store not readable");
                    cache.error = Some(e);
                }
            }
        }
        match (&cache.error, cache.good_at) {
            (Some(e), good) if good.is_none_or(|g| g.elapsed() > self.options.max_stale) => {
                Err(BackendError::Unavailable(format!(
                    "legacy_fallback cannot read {}: {e}",
                    self.source.describe()
                )))
            }
            _ => Ok(View {
                locks: cache.locks.clone(),
                released: cache.released.clone(),
            }),
        }
    }

    /// Reads the legacy locks and the release records.
    async fn load(&self) -> Result<Read, String> {
        let found = self.source.read().await.map_err(|e| e.to_string())?;
        let now = self.clock.now();
        let ttl = self.options.settings.default_ttl;
        let mut locks: BTreeMap<String, LegacyLock> = BTreeMap::new();
        for stored in &found.locks {
            // A record that makes no valid lock cannot be shown; the import reports it.
            let Ok(mut lock) = lock_from_atlantis(&stored.lock, ttl, now, LEGACY_NOTE) else {
                continue;
            };
            lock.lease_id = None;
            lock.fencing_token = FencingToken(0);
            let sk = lock.resource.storage_key();
            let marker = marker_id(&sk, &lock.owner.owner, &stored.lock.time);
            // Two records of one resource (old and new key format): the later counts.
            if locks
                .get(&sk)
                .is_none_or(|other| other.lock.acquired_at <= lock.acquired_at)
            {
                locks.insert(sk, LegacyLock { lock, marker });
            }
        }
        let mut released = HashSet::new();
        let mut cursor = None;
        loop {
            let page = self
                .inner
                .list_locks(LockFilter {
                    repo: Some(MARKER_REPO.to_string()),
                    cursor: cursor.take(),
                    limit: Some(LockFilter::MAX_LIMIT),
                    ..LockFilter::default()
                })
                .await
                .map_err(|e| format!("reading release records: {e}"))?;
            released.extend(page.locks.into_iter().map(|l| l.resource.project_name));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(Read {
            locks,
            released,
            global_locks: found.global_locks,
        })
    }

    /// Records in the tflock store that `legacy` was released.
    async fn release(&self, legacy: &LegacyLock) -> Result<(), BackendError> {
        let mut request = LockRequest::new(marker_resource(&legacy.marker), MARKER_OWNER);
        request.owner = Owner {
            note: format!(
                "released legacy lock {} of {}",
                legacy.lock.key, legacy.lock.owner.owner
            )
            .chars()
            .take(1024)
            .collect(),
            ..Owner::named(MARKER_OWNER)
        };
        request.ttl = Some(self.options.settings.max_ttl);
        match self.inner.try_lock(request).await {
            Ok(_) => {}
            Err(TryLockError::Backend(e)) => return Err(e),
            Err(e) => return Err(BackendError::Internal(format!("recording a release: {e}"))),
        }
        let mut cache = self.cache.lock().await;
        Arc::make_mut(&mut cache.released).insert(legacy.marker.clone());
        tracing::info!(
            resource = %legacy.lock.key,
            owner = %legacy.lock.owner.owner,
            "legacy lock released through tflock"
        );
        Ok(())
    }

    /// The legacy lock that blocks `resource`: one that counts while tflock itself
    /// holds nothing there.
    async fn legacy_holder(&self, resource: &Resource) -> Result<Option<LegacyLock>, LookupError> {
        let view = self.view().await?;
        let Some(legacy) = view.active(&resource.storage_key()).cloned() else {
            return Ok(None);
        };
        if self.inner.get_lock(resource).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(legacy))
    }

    /// The legacy lock on `resource` that counts, whatever tflock holds.
    async fn active(&self, resource: &Resource) -> Result<Option<LegacyLock>, BackendError> {
        Ok(self.view().await?.active(&resource.storage_key()).cloned())
    }
}

/// A [`BackendError`] (reading the legacy store) or a [`QueryError`] (asking the
/// store), for helpers that do both; converted into each operation's own error.
enum LookupError {
    Backend(BackendError),
    Query(QueryError),
}

impl From<BackendError> for LookupError {
    fn from(e: BackendError) -> Self {
        LookupError::Backend(e)
    }
}

impl From<QueryError> for LookupError {
    fn from(e: QueryError) -> Self {
        LookupError::Query(e)
    }
}

impl LookupError {
    fn convert<E: From<BackendError> + From<InvalidRequest>>(self) -> E {
        match self {
            LookupError::Backend(e) => e.into(),
            LookupError::Query(QueryError::Backend(e)) => e.into(),
            LookupError::Query(QueryError::Invalid(e)) => e.into(),
            LookupError::Query(e) => BackendError::Internal(e.to_string()).into(),
        }
    }
}

fn unlock_err(e: BackendError) -> UnlockError {
    UnlockError::Backend(e)
}

/// The release record's id: SHA-256 of the lock's identity and time, in hex.
fn marker_id(storage_key: &str, owner: &str, time: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [storage_key, owner, time] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn marker_resource(marker: &str) -> Resource {
    Resource {
        repo: MARKER_REPO.to_string(),
        path: ".".to_string(),
        workspace: MARKER_WORKSPACE.to_string(),
        project_name: marker.to_string(),
    }
}

fn reserved(resource: &Resource) -> bool {
    resource.repo == MARKER_REPO
}

#[async_trait]
impl Backend for LegacyFallback {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn try_lock(&self, request: LockRequest) -> Result<LockResponse, TryLockError> {
        let Ok(resource) = request.resource.clone().validate("resource") else {
            // The store names the field at fault.
            return self.inner.try_lock(request).await;
        };
        if reserved(&resource) {
            return Err(InvalidRequest::new(
                "resource.repo",
                format!("{MARKER_REPO} is reserved for legacy_fallback's release records"),
            )
            .into());
        }
        let Some(mut legacy) = self
            .legacy_holder(&resource)
            .await
            .map_err(LookupError::convert::<TryLockError>)?
        else {
            return self.inner.try_lock(request).await;
        };
        if request.owner.owner == legacy.lock.owner.owner {
            // The holder itself, now through tflock: the lock moves over.
            let answer = self.inner.try_lock(request).await?;
            if answer.acquired {
                self.release(&legacy).await?;
            }
            return Ok(answer);
        }
        let wait = match request.wait {
            Some(w) if !request.reserve => self.options.settings.resolve_wait(w),
            _ => {
                return Ok(LockResponse::not_acquired(
                    Some(legacy.lock),
                    NotAcquiredReason::Held,
                ));
            }
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(LockResponse::not_acquired(
                    Some(legacy.lock),
                    NotAcquiredReason::Timeout,
                ));
            }
            tokio::time::sleep(left.min(self.options.refresh)).await;
            match self
                .legacy_holder(&resource)
                .await
                .map_err(LookupError::convert::<TryLockError>)?
            {
                Some(l) => legacy = l,
                None => {
                    let mut rest = request.clone();
                    let left = deadline.saturating_duration_since(Instant::now());
                    rest.wait = Some(WaitSpec::For(left.max(Duration::from_millis(1))));
                    return self.inner.try_lock(rest).await;
                }
            }
        }
    }

    async fn unlock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
    ) -> Result<UnlockResponse, UnlockError> {
        match self.inner.unlock(resource, lease_id).await {
            Ok(answer) => {
                if let Some(l) = self.active(resource).await.map_err(unlock_err)?
                    && l.lock.owner.owner == answer.released.owner.owner
                {
                    self.release(&l).await.map_err(unlock_err)?;
                }
                Ok(answer)
            }
            Err(UnlockError::NotFound) => {
                match resource.clone().validate("resource") {
                    Ok(r) if self.active(&r).await.map_err(unlock_err)?.is_some() => {
                        // A legacy lock has no lease: release it with force or by pull.
                        Err(UnlockError::NotOwner)
                    }
                    _ => Err(UnlockError::NotFound),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn force_unlock(
        &self,
        resource: &Resource,
        expected_token: Option<tflock_core::FencingToken>,
    ) -> Result<UnlockResponse, UnlockError> {
        let resource = resource.clone().validate("resource")?;
        let legacy = self.active(&resource).await.map_err(unlock_err)?;
        match self.inner.force_unlock(&resource, expected_token).await {
            Ok(answer) => {
                if let Some(l) = legacy {
                    self.release(&l).await.map_err(unlock_err)?;
                }
                Ok(answer)
            }
            Err(UnlockError::NotFound) => match legacy {
                Some(l) if expected_token.is_some_and(|t| t != l.lock.fencing_token) => {
                    Err(UnlockError::Changed {
                        expected: expected_token.unwrap_or_default(),
                        current: l.lock.fencing_token,
                    })
                }
                Some(l) => {
                    self.release(&l).await.map_err(unlock_err)?;
                    Ok(UnlockResponse {
                        released: l.lock,
                        granted_to: None,
                    })
                }
                None => Err(UnlockError::NotFound),
            },
            Err(e) => Err(e),
        }
    }

    async fn unlock_by_pull(
        &self,
        repo: &str,
        pull: u64,
    ) -> Result<PullUnlockResponse, UnlockError> {
        let mut answer = self.inner.unlock_by_pull(repo, pull).await?;
        let view = self.view().await.map_err(unlock_err)?;
        let owner = format!("{repo}#{pull}");
        let legacy: Vec<LegacyLock> = view
            .iter_active()
            .filter(|(_, l)| l.lock.resource.repo == repo && l.lock.owner.owner == owner)
            .map(|(_, l)| l.clone())
            .collect();
        for l in legacy {
            self.release(&l).await.map_err(unlock_err)?;
            if !answer
                .released
                .iter()
                .any(|r| r.resource == l.lock.resource)
            {
                answer.released.push(l.lock);
            }
        }
        answer.released.sort_by_key(|l| l.resource.storage_key());
        Ok(answer)
    }

    async fn refresh_lock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
        ttl: Duration,
    ) -> Result<Lock, RefreshError> {
        self.inner.refresh_lock(resource, lease_id, ttl).await
    }

    async fn transfer_lock(
        &self,
        resource: &Resource,
        auth: TransferAuth,
        to: Owner,
    ) -> Result<Lock, TransferError> {
        self.inner.transfer_lock(resource, auth, to).await
    }

    async fn get_lock(&self, resource: &Resource) -> Result<Option<Lock>, QueryError> {
        if let Some(l) = self.inner.get_lock(resource).await? {
            return Ok(Some(l));
        }
        let Ok(r) = resource.clone().validate("resource") else {
            return Ok(None);
        };
        Ok(self.active(&r).await?.map(|l| l.lock))
    }

    async fn list_locks(&self, filter: LockFilter) -> Result<LockPage, QueryError> {
        let limit = filter.page_size()?;
        let after = filter.cursor_key()?;
        let page = self.inner.list_locks(filter.clone()).await?;
        let show_markers = filter.repo.as_deref() == Some(MARKER_REPO);
        // With more pages to come, this page covers tflock's keys up to its last one:
        // legacy locks past it belong to a later page.
        let upto = page
            .next_cursor
            .as_ref()
            .and_then(|_| page.locks.last())
            .map(|l| l.resource.storage_key());
        let tflock_keys: HashSet<String> = page
            .locks
            .iter()
            .map(|l| l.resource.storage_key())
            .collect();
        let mut merged: Vec<(String, Lock)> = page
            .locks
            .into_iter()
            .filter(|l| show_markers || !reserved(&l.resource))
            .map(|l| (l.resource.storage_key(), l))
            .collect();
        if !show_markers {
            // The page holds every tflock lock in its range that passes the filter; a
            // tflock lock of another owner or user is not in it when the filter names
            // one, so then ask the store whether it shadows the legacy lock.
            let ask = filter.owner.is_some() || filter.user.is_some();
            let view = self.view().await?;
            for (key, l) in view.iter_active() {
                if after.as_ref().is_some_and(|a| key <= a)
                    || upto.as_ref().is_some_and(|u| key > u)
                    || tflock_keys.contains(key)
                    || !filter.matches(&l.lock)
                {
                    continue;
                }
                if ask && self.inner.get_lock(&l.lock.resource).await?.is_some() {
                    continue;
                }
                merged.push((key.clone(), l.lock.clone()));
            }
        }
        merged.sort_by(|a, b| a.0.cmp(&b.0));
        let more = merged.len() > limit || page.next_cursor.is_some();
        merged.truncate(limit);
        let next_cursor = if more {
            merged
                .last()
                .map(|(k, _)| encode_cursor(k))
                .or(page.next_cursor)
        } else {
            None
        };
        Ok(LockPage {
            locks: merged.into_iter().map(|(_, l)| l).collect(),
            next_cursor,
        })
    }

    async fn get_queue_status(&self, resource: &Resource) -> Result<QueueStatus, QueryError> {
        let mut status = self.inner.get_queue_status(resource).await?;
        if status.lock.is_none() {
            status.lock = self.active(&status.resource).await?.map(|l| l.lock);
        }
        Ok(status)
    }

    async fn get_user_queue(&self, username: &str) -> Result<Vec<QueueEntryView>, QueryError> {
        self.inner.get_user_queue(username).await
    }

    async fn cancel_queue_entry(
        &self,
        entry_id: &str,
        expected_resource: Option<&Resource>,
    ) -> Result<QueueEntryView, CancelError> {
        self.inner
            .cancel_queue_entry(entry_id, expected_resource)
            .await
    }

    async fn health_check(&self) -> Result<BackendHealth, BackendError> {
        let mut health = self.inner.health_check().await?;
        let d = &mut health.details;
        d.insert("legacy_source".into(), self.source.describe().into());
        match self.view().await {
            Ok(view) => {
                d.insert("legacy_locks".into(), view.iter_active().count().into());
                let cache = self.cache.lock().await;
                d.insert(
                    "legacy_global_locks".into(),
                    cache
                        .global_locks
                        .iter()
                        .map(|g| g.command.clone())
                        .collect::<Vec<_>>()
                        .into(),
                );
                if let Some(e) = &cache.error {
                    d.insert("legacy_error".into(), e.clone().into());
                }
            }
            Err(e) => {
                health.healthy = false;
                d.insert("legacy_error".into(), e.to_string().into());
            }
        }
        Ok(health)
    }

    async fn get_metrics(&self) -> Result<BackendMetrics, BackendError> {
        self.inner.get_metrics().await
    }

    async fn export(&self) -> Result<Snapshot, BackendError> {
        self.inner.export().await
    }

    async fn import(
        &self,
        snapshot: Snapshot,
        options: ImportOptions,
    ) -> Result<ImportReport, ImportError> {
        self.inner.import(snapshot, options).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LockEvent> {
        self.inner.subscribe()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_ids_differ_by_every_part_and_are_unambiguous() {
        let a = marker_id("k", "o#1", "t");
        assert_eq!(a.len(), 64);
        assert_ne!(a, marker_id("k", "o#1", "t2"));
        assert_ne!(a, marker_id("k", "o#2", "t"));
        assert_ne!(marker_id("ab", "c", ""), marker_id("a", "bc", ""));
        assert!(marker_resource(&a).validate("r").is_ok());
    }
}
