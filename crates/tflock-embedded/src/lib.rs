//! tflock's embedded lock store: one `redb` file, no Redis needed.
//!
//! # Layout
//!
//! - [`state`]: the lock state in memory and every transition of the contract. One
//!   mutex around it makes each operation atomic.
//! - [`store`]: the file's tables and the committer thread (group commit: every change
//!   made while one fsync runs goes into the next one).
//! - `owner_file`: records which process holds the file, for a clear "already open".
//! - this file: [`EmbeddedBackend`], the [`Backend`] implementation that ties them
//!   together, the waiter's blocking call and the expiry sweeper.
//!
//! # Why memory first, then the file
//!
//! Every operation decides on the in-memory state under a `std::sync::Mutex` (held for
//! microseconds, never across an `.await`), then waits until the committer reports its
//! change durable before it answers. So an answer is never given for something that is
//! not on disk, and the fsync rate, not the lock, bounds throughput; a batch of N
//! concurrent grants costs one fsync. If a commit fails the backend stops serving
//! (fail closed): memory would otherwise run ahead of the file.

pub(crate) mod high_water;
pub(crate) mod owner_file;
pub(crate) mod state;
pub(crate) mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tflock_core::{
    Backend, BackendError, BackendHealth, BackendMetrics, CancelError, EventKind, FencingToken,
    LeaseId, Lock, LockEvent, LockFilter, LockPage, LockRequest, LockResponse, LockSettings,
    NotAcquiredReason, Owner, PullUnlockResponse, QueryError, QueueEntryView, QueueStatus,
    RefreshError, Resource, SharedClock, TransferAuth, TransferError, TryLockError, UnlockError,
    UnlockResponse,
};
use tokio::sync::{Notify, broadcast, watch};

use crate::state::{Ctx, Decision, State, WaiterWake};
use crate::store::{Durable, Wake};

/// Where the store lives and how locks behave.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The store file; its directory is created when missing.
    pub path: PathBuf,
    pub settings: LockSettings,
}

impl EmbeddedConfig {
    /// The default location, `./tflock-data/locks.redb`.
    pub fn default_path() -> PathBuf {
        PathBuf::from("./tflock-data/locks.redb")
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(
        "the lock store {path} is already open in {holder}; stop that process or point embedded.path at another file"
    )]
    AlreadyOpen { path: PathBuf, holder: String },
    #[error("cannot open the lock store {path}: {message}")]
    Storage { path: PathBuf, message: String },
    #[error("the lock store {path} is not readable by this tflock: {message}")]
    Format { path: PathBuf, message: String },
    #[error("invalid setting {0}")]
    Settings(#[from] tflock_core::InvalidRequest),
}

/// What the committer and the backend share.
pub(crate) struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<LockEvent>,
    /// Tests only: while closed, the committer holds each batch before writing it, so
    /// a test can act between a change in memory and its commit.
    #[cfg(test)]
    commit_gate: (Mutex<bool>, std::sync::Condvar),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the mutex is a bug; the state is still consistent
        // enough to serve (every transition finishes before it can panic).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn take_batch(&self) -> Option<state::Batch> {
        self.lock().take_batch()
    }

    /// Tests only: blocks the committer while the gate is closed.
    #[cfg(test)]
    pub(crate) fn pass_commit_gate(&self) {
        let (closed, cv) = &self.commit_gate;
        let mut g = closed.lock().unwrap_or_else(|p| p.into_inner());
        while *g {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    #[cfg(test)]
    fn set_commit_gate(&self, close: bool) {
        let (closed, cv) = &self.commit_gate;
        *closed.lock().unwrap_or_else(|p| p.into_inner()) = close;
        cv.notify_all();
    }

    pub(crate) fn publish(&self, events: Vec<LockEvent>) {
        for e in events {
            let _ = self.events.send(e);
        }
    }
}

/// The embedded backend. Cheap to share behind an `Arc`.
pub struct EmbeddedBackend {
    shared: Arc<Shared>,
    clock: SharedClock,
    settings: LockSettings,
    path: PathBuf,
    wake_committer: Mutex<Option<mpsc::Sender<Wake>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    durable: watch::Receiver<Durable>,
    /// Wakes the sweeper when an earlier deadline appears, and at close.
    sweeper_wake: Arc<Notify>,
    /// Wakes retry loops (queue disabled) when any lock is released.
    released: Arc<Notify>,
    closed: Arc<AtomicBool>,
    /// 1 when the file was found older than what it had committed (see
    /// `high_water`), else 0: `tflock_store_data_loss_total`.
    data_losses: u64,
    /// That loss: when it was found and when its lock_delay ends.
    data_loss: Option<(tflock_core::Timestamp, tflock_core::Timestamp)>,
    /// Its `store.data_lost` event, sent once somebody listens (nobody does while
    /// the store opens).
    loss_event: Mutex<Option<LockEvent>>,
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedBackend {
    /// Opens (creating when missing) the store file and starts the committer and the
    /// expiry sweeper. Fails when another process holds the file.
    pub async fn open(
        config: EmbeddedConfig,
        clock: SharedClock,
    ) -> Result<Arc<EmbeddedBackend>, OpenError> {
        config.settings.validate()?;
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OpenError::Storage {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        let p = path.clone();
        let (db, loaded) = tokio::task::spawn_blocking(move || store::open_database(&p))
            .await
            .map_err(|e| OpenError::Storage {
                path: path.clone(),
                message: e.to_string(),
            })??;
        owner_file::write(&path);
        let mut state = State::load(loaded, clock.now());
        // The file replaced by an older copy: its highest token is below the one it
        // had committed. Nothing is granted for lock_delay, as after a Redis loss.
        let data_loss = {
            let now = clock.now();
            let in_file = state.tokens.values().copied().max().unwrap_or(0);
            match high_water::read(&path) {
                Some(recorded) if recorded > in_file => {
                    let until = now.add(config.settings.lock_delay);
                    tracing::error!(
                        path = %path.display(),
                        recorded,
                        in_file,
                        lock_delay_until = %until,
                        "the lock store file is older than what it had committed (replaced \
                         by an older copy?): locks granted since may be gone; fencing tokens \
                         stay above every earlier one (clock floor) and nothing is granted \
                         until the lock_delay ends"
                    );
                    state.hold_until = until;
                    Some((now, until))
                }
                _ => None,
            }
        };
        let (events, _) = broadcast::channel(4096);
        // Settle everything once: leases that expired while the store was closed end
        // now and their queues are handed on.
        {
            let ctx = Ctx {
                now: clock.now(),
                settings: &config.settings,
                policy: config.settings.starvation_policy(),
            };
            for key in state.due_keys(ctx.now) {
                state.settle(&key, &ctx);
            }
            let free: Vec<String> = state
                .resources
                .iter()
                .filter(|(_, r)| r.lock.is_none())
                .map(|(k, _)| k.clone())
                .collect();
            for key in free {
                state.settle(&key, &ctx);
            }
        }
        let seq = state.seq;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            events,
            #[cfg(test)]
            commit_gate: (Mutex::new(false), std::sync::Condvar::new()),
        });
        let (durable_tx, durable_rx) = watch::channel(Durable {
            seq: 0,
            failed: None,
        });
        let (wake_tx, wake_rx) = mpsc::channel();
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tflock-commit".into())
                .spawn({
                    let path = path.clone();
                    move || store::run_committer(db, shared, wake_rx, durable_tx, path)
                })
                .map_err(|e| OpenError::Storage {
                    path: path.clone(),
                    message: e.to_string(),
                })?
        };
        let backend = Arc::new(EmbeddedBackend {
            shared,
            clock,
            settings: config.settings,
            path,
            wake_committer: Mutex::new(Some(wake_tx)),
            committer: Mutex::new(Some(committer)),
            durable: durable_rx,
            sweeper_wake: Arc::new(Notify::new()),
            released: Arc::new(Notify::new()),
            closed: Arc::new(AtomicBool::new(false)),
            data_losses: u64::from(data_loss.is_some()),
            loss_event: Mutex::new(data_loss.map(|(at, _)| LockEvent::data_lost(at))),
            data_loss,
        });
        if seq > 0 {
            backend.kick();
        }
        tokio::spawn(sweeper(Arc::downgrade(&backend)));
        Ok(backend)
    }

    /// The store file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            now: self.clock.now(),
            settings: &self.settings,
            policy: self.settings.starvation_policy(),
        }
    }

    fn kick(&self) {
        if let Some(tx) = self
            .wake_committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(Wake::Work);
        }
    }

    fn check_open(&self) -> Result<(), BackendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BackendError::Unavailable(
                "the embedded store is closed".into(),
            ));
        }
        if let Some(e) = &self.durable.borrow().failed {
            return Err(BackendError::Unavailable(format!(
                "the embedded store failed: {e}"
            )));
        }
        Ok(())
    }

    /// Runs `f` on the state under the mutex, then waits until everything it saw or
    /// changed is durable. Reads wait too: they must not report a grant that a crash
    /// could still undo.
    async fn with_state<T>(
        &self,
        f: impl FnOnce(&mut State, &Ctx) -> T,
    ) -> Result<T, BackendError> {
        let (out, seq) = self.apply(f)?;
        self.wait_durable(seq).await?;
        Ok(out)
    }

    /// The in-memory half of [`Self::with_state`]: runs `f` and returns the sequence
    /// number to wait for. Split out so a waiter can arm its drop guard before it
    /// waits for its enqueue to be durable.
    fn apply<T>(&self, f: impl FnOnce(&mut State, &Ctx) -> T) -> Result<(T, u64), BackendError> {
        self.check_open()?;
        let ctx = self.ctx();
        let (out, seq, next_due) = {
            let mut st = self.shared.lock();
            let before = st.next_due();
            let out = f(&mut st, &ctx);
            let after = st.next_due();
            (out, st.seq, (after != before).then_some(after).flatten())
        };
        if next_due.is_some() {
            self.sweeper_wake.notify_one();
        }
        Ok((out, seq))
    }

    async fn wait_durable(&self, seq: u64) -> Result<(), BackendError> {
        if self.durable.borrow().seq >= seq {
            return Ok(());
        }
        self.kick();
        let mut rx = self.durable.clone();
        let d = rx
            .wait_for(|d| d.seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| BackendError::Unavailable("the embedded store is closed".into()))?;
        if d.seq >= seq {
            Ok(())
        } else {
            Err(BackendError::Unavailable(format!(
                "the embedded store failed: {}",
                d.failed.clone().unwrap_or_default()
            )))
        }
    }

    /// Blocks a waiter until its grant, its deadline, cancellation or close.
    async fn wait_for_grant(
        &self,
        key: String,
        entry_id: String,
        mut wake: tokio::sync::oneshot::Receiver<WaiterWake>,
        deadline: tflock_core::Timestamp,
        req: &LockRequest,
        enqueued_seq: u64,
    ) -> Result<LockResponse, TryLockError> {
        let mut guard = WaiterGuard {
            backend: self,
            key: key.clone(),
            entry_id: entry_id.clone(),
            request_id: req.request_id.clone(),
            confirmed: None,
            armed: true,
        };
        // Armed before this await: a caller that goes away while its enqueue is being
        // written still leaves no entry behind.
        self.wait_durable(enqueued_seq).await?;
        let woke = tokio::select! {
            w = &mut wake => w.ok(),
            _ = self.clock.sleep_until(deadline) => None,
        };
        // The decision and the confirmation happen in memory first; until they are
        // durable the guard stays armed, and it knows the lease it confirmed: a caller
        // that goes away in between leaves a pending claim (with a request id) or
        // nothing (without), never a confirmed lease nobody holds.
        let (outcome, seq) = self.apply(|st, ctx| match woke {
            Some(WaiterWake::Closed) => Err(BackendError::Unavailable(
                "the server is shutting down".into(),
            )),
            Some(WaiterWake::Cancelled) => {
                let holder = st.lock(&key).map(Lock::public);
                let r = LockResponse::not_acquired(holder, NotAcquiredReason::Cancelled);
                // Kept for its retries (rule 8): a retry is told `cancelled`.
                st.remember(req, &r, ctx);
                Ok(r)
            }
            Some(WaiterWake::Granted) | None => {
                if let Some(lock) = st.confirm(&key, &entry_id, ctx.now) {
                    let r = LockResponse::granted(lock);
                    st.remember(req, &r, ctx);
                    return Ok(r);
                }
                // Deadline (or a grant whose claim window already ran out).
                st.remove_entry(&entry_id, ctx.now);
                st.settle(&key, ctx);
                let holder = st.lock(&key).map(Lock::public);
                let r = LockResponse::not_acquired(holder, NotAcquiredReason::Timeout);
                st.remember(req, &r, ctx);
                Ok(r)
            }
        })?;
        if let Ok(LockResponse {
            acquired: true,
            lock: Some(lock),
            ..
        }) = &outcome
        {
            guard.confirmed = lock.lease_id.clone();
        }
        self.wait_durable(seq).await?;
        guard.armed = false;
        drop(guard);
        Ok(outcome?)
    }

    /// TryLock without a queue: retry with back-off until the deadline. A release
    /// anywhere in the store cuts the back-off short.
    async fn retry_loop(
        &self,
        req: LockRequest,
        ttl: Duration,
        deadline: tflock_core::Timestamp,
    ) -> Result<LockResponse, TryLockError> {
        let mut backoff = self.settings.min_retry_backoff;
        loop {
            let released = self.released.notified();
            let mut once = req.clone();
            once.wait = None;
            let d = self
                .with_state(|st, ctx| st.try_lock(&once, ttl, ctx))
                .await?;
            let r = match d {
                Decision::Answer(r) => r,
                // After a data loss: wait the lock_delay out within the deadline.
                Decision::Delay { until } => {
                    self.clock.sleep_until(until.min(deadline)).await;
                    if self.clock.now() >= deadline {
                        return Ok(LockResponse::not_acquired(None, NotAcquiredReason::Timeout));
                    }
                    continue;
                }
                _ => {
                    return Err(
                        BackendError::Internal("a no-wait TryLock asked to wait".into()).into(),
                    );
                }
            };
            if r.acquired {
                return Ok(*r);
            }
            let now = self.clock.now();
            if now >= deadline {
                return Ok(LockResponse {
                    reason: Some(NotAcquiredReason::Timeout),
                    ..*r
                });
            }
            let until = now.add(backoff).min(deadline);
            tokio::select! {
                _ = self.clock.sleep_until(until) => {}
                _ = released => {}
            }
            backoff = (backoff * 2).min(self.settings.max_retry_backoff);
        }
    }
}

/// Removes a waiter's entry when its call goes away before it finishes.
struct WaiterGuard<'a> {
    backend: &'a EmbeddedBackend,
    key: String,
    entry_id: String,
    request_id: Option<String>,
    /// The lease this call confirmed in memory, while that is not yet durable.
    confirmed: Option<LeaseId>,
    armed: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let b = self.backend;
        let ctx = b.ctx();
        {
            let mut st = b.shared.lock();
            match &self.confirmed {
                Some(lease) => st.abandon_confirmed(
                    &self.key,
                    &self.entry_id,
                    lease,
                    self.request_id.as_deref(),
                    &ctx,
                ),
                None => {
                    st.abandon_waiter(&self.key, &self.entry_id, self.request_id.is_some(), &ctx)
                }
            }
        }
        // Nobody waits for this commit; the committer picks it up. A claim that went
        // back to pending ends sooner than the sweeper planned.
        b.kick();
        b.sweeper_wake.notify_one();
        b.released.notify_waiters();
    }
}

/// Ends expired leases and reservations on time, handing their queues on, without
/// waiting for anyone to touch the resource. Sleeps until the earliest due time.
async fn sweeper(backend: std::sync::Weak<EmbeddedBackend>) {
    loop {
        let Some(b) = backend.upgrade() else { return };
        if b.closed.load(Ordering::Acquire) {
            return;
        }
        let wake = b.sweeper_wake.clone();
        let notified = wake.notified();
        let next = b.shared.lock().next_due();
        let sleep = match next {
            Some(t) => b.clock.sleep_until(t),
            None => Box::pin(std::future::pending()),
        };
        let closed = b.closed.clone();
        drop(b);
        tokio::select! {
            _ = sleep => {}
            _ = notified => {}
        }
        if closed.load(Ordering::Acquire) {
            return;
        }
        let Some(b) = backend.upgrade() else { return };
        let ctx = b.ctx();
        let changed = {
            let mut st = b.shared.lock();
            let before = st.seq;
            for key in st.due_keys(ctx.now) {
                st.settle(&key, &ctx);
            }
            st.expire_answers(ctx.now);
            st.seq != before
        };
        if changed {
            b.kick();
            b.released.notify_waiters();
        }
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn try_lock(&self, request: LockRequest) -> Result<LockResponse, TryLockError> {
        let req = request.validate()?;
        let ttl = self.settings.resolve_ttl(req.ttl)?;
        let (decision, seq) = self.apply(|st, ctx| st.try_lock(&req, ttl, ctx))?;
        if !matches!(decision, Decision::Wait { .. }) {
            self.wait_durable(seq).await?;
        }
        match decision {
            Decision::Answer(r) => Ok(*r),
            Decision::QueueFull => Err(TryLockError::QueueFull {
                max: self.settings.max_queue_size,
            }),
            Decision::WaitRefused => Err(tflock_core::InvalidRequest::new(
                "wait",
                "waiting needs enable_priority_queue or enable_retries; retry without wait",
            )
            .into()),
            Decision::Retry { deadline } => self.retry_loop(req, ttl, deadline).await,
            Decision::Delay { until } => {
                // After a data loss: a caller that waits keeps waiting past the
                // lock_delay (within its wait); the others are told "not now".
                let wait = req
                    .wait
                    .filter(|_| !req.reserve)
                    .map(|w| self.settings.resolve_wait(w))
                    .unwrap_or_default();
                if wait.is_zero() {
                    return Ok(LockResponse::not_acquired(
                        None,
                        tflock_core::NotAcquiredReason::LockDelay,
                    ));
                }
                let deadline = self.clock.now().add(wait);
                if until >= deadline {
                    self.clock.sleep_until(deadline).await;
                    return Ok(LockResponse::not_acquired(
                        None,
                        tflock_core::NotAcquiredReason::Timeout,
                    ));
                }
                self.clock.sleep_until(until).await;
                let rest = deadline.since(self.clock.now());
                Box::pin(self.try_lock(LockRequest {
                    wait: Some(tflock_core::WaitSpec::For(rest)),
                    ..req
                }))
                .await
            }
            Decision::Wait {
                key,
                entry_id,
                wake,
                deadline,
            } => {
                self.wait_for_grant(key, entry_id, wake, deadline, &req, seq)
                    .await
            }
        }
    }

    async fn unlock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
    ) -> Result<UnlockResponse, UnlockError> {
        // An empty or malformed lease id is nobody's (never a force): refused here,
        // before the store is touched.
        lease_id.check("lease_id")?;
        let resource = resource.clone().validate("resource")?;
        let key = resource.storage_key();
        let r = self
            .with_state(|st, ctx| {
                st.settle(&key, ctx);
                match st.lock(&key) {
                    None => Err(UnlockError::NotFound),
                    Some(l) if !l.held_by(lease_id) => Err(UnlockError::NotOwner),
                    Some(_) => {
                        let (released, granted_to) = st
                            .release(&key, EventKind::LockReleased, ctx)
                            .expect("held");
                        Ok(UnlockResponse {
                            released: released.public(),
                            granted_to,
                        })
                    }
                }
            })
            .await?;
        self.released.notify_waiters();
        r
    }

    async fn force_unlock(
        &self,
        resource: &Resource,
        expected_token: Option<FencingToken>,
    ) -> Result<UnlockResponse, UnlockError> {
        let resource = resource.clone().validate("resource")?;
        let key = resource.storage_key();
        let r = self
            .with_state(|st, ctx| {
                st.settle(&key, ctx);
                // The check and the release happen under one lock of the state: no
                // hand-off can come between what the admin confirmed and the release.
                if let (Some(expected), Some(cur)) = (expected_token, st.lock(&key))
                    && cur.fencing_token != expected
                {
                    return Err(UnlockError::Changed {
                        expected,
                        current: cur.fencing_token,
                    });
                }
                let (released, granted_to) = st
                    .release(&key, EventKind::LockReleased, ctx)
                    .ok_or(UnlockError::NotFound)?;
                Ok(UnlockResponse {
                    released: released.public(),
                    granted_to,
                })
            })
            .await?;
        self.released.notify_waiters();
        r
    }

    async fn unlock_by_pull(
        &self,
        repo: &str,
        pull: u64,
    ) -> Result<PullUnlockResponse, UnlockError> {
        Resource::new(repo, ".", "default", "")
            .map_err(|e| tflock_core::InvalidRequest::new("repo", e.message))?;
        let owner_name = format!("{repo}#{pull}");
        let matches =
            |o: &Owner| o.pull.as_ref().is_some_and(|p| p.num == pull) || o.owner == owner_name;
        let r = self
            .with_state(|st, ctx| {
                let mut out = PullUnlockResponse::default();
                for key in st.keys_of_repo(repo) {
                    st.settle(&key, ctx);
                    // Entries first, so the hand-off of a released lock cannot go to
                    // another entry of the same pull request.
                    let entries: Vec<String> = st
                        .resources
                        .get(&key)
                        .map(|r| {
                            r.queue
                                .iter()
                                .filter(|e| matches(&e.owner))
                                .map(|e| e.entry_id.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    for id in entries {
                        if let Some(v) = st.cancel_entry(&id, ctx) {
                            out.cancelled.push(v.entry);
                        }
                    }
                    if st.lock(&key).is_some_and(|l| matches(&l.owner))
                        && let Some((l, _)) = st.release(&key, EventKind::LockReleased, ctx)
                    {
                        out.released.push(l.public());
                    }
                }
                out
            })
            .await?;
        self.released.notify_waiters();
        Ok(r)
    }

    async fn refresh_lock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
        ttl: Duration,
    ) -> Result<Lock, RefreshError> {
        lease_id.check("lease_id")?;
        let resource = resource.clone().validate("resource")?;
        let ttl = self.settings.resolve_ttl(Some(ttl))?;
        let key = resource.storage_key();
        self.with_state(|st, ctx| {
            st.settle(&key, ctx);
            st.refresh(&key, lease_id, ttl, ctx.now)
                .ok_or(RefreshError::LeaseLost)
        })
        .await?
    }

    async fn transfer_lock(
        &self,
        resource: &Resource,
        auth: TransferAuth,
        to: Owner,
    ) -> Result<Lock, TransferError> {
        if let TransferAuth::Lease(lease) = &auth {
            lease.check("lease_id")?;
        }
        let resource = resource.clone().validate("resource")?;
        let to = to.validate("to")?;
        let key = resource.storage_key();
        self.with_state(|st, ctx| {
            st.settle(&key, ctx);
            match (st.lock(&key), &auth) {
                (None, TransferAuth::Admin) => Err(TransferError::NotFound),
                (None, TransferAuth::Lease(_)) => Err(TransferError::NotFound),
                (Some(l), TransferAuth::Lease(lease)) if !l.held_by(lease) => {
                    Err(TransferError::LeaseLost)
                }
                (Some(_), _) => st
                    .transfer(&key, to, ctx.now)
                    .ok_or(TransferError::NotFound),
            }
        })
        .await?
    }

    async fn get_lock(&self, resource: &Resource) -> Result<Option<Lock>, QueryError> {
        let resource = resource.clone().validate("resource")?;
        let key = resource.storage_key();
        Ok(self
            .with_state(|st, ctx| {
                st.lock(&key)
                    .filter(|l| !l.expired_at(ctx.now))
                    .map(Lock::public)
            })
            .await?)
    }

    async fn list_locks(&self, filter: LockFilter) -> Result<LockPage, QueryError> {
        let limit = filter.page_size()?;
        let after = filter.cursor_key()?;
        Ok(self
            .with_state(|st, ctx| {
                let range = match &after {
                    Some(k) => st.resources.range::<String, _>((
                        std::ops::Bound::Excluded(k.clone()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => st.resources.range::<String, _>(..),
                };
                let mut locks = Vec::with_capacity(limit.min(1024));
                let mut last_key = None;
                let mut more = false;
                for (key, rec) in range {
                    let Some(l) = rec.lock.as_ref().map(|l| &l.lock) else {
                        continue;
                    };
                    if l.expired_at(ctx.now) || !filter.matches(l) {
                        continue;
                    }
                    if locks.len() == limit {
                        more = true;
                        break;
                    }
                    locks.push(l.public());
                    last_key = Some(key.clone());
                }
                LockPage {
                    locks,
                    next_cursor: if more {
                        last_key.map(|k| tflock_core::request::encode_cursor(&k))
                    } else {
                        None
                    },
                }
            })
            .await?)
    }

    async fn get_queue_status(&self, resource: &Resource) -> Result<QueueStatus, QueryError> {
        let resource = resource.clone().validate("resource")?;
        let key = resource.storage_key();
        Ok(self
            .with_state(|st, ctx| {
                let rec = st.resources.get(&key);
                let lock = rec
                    .and_then(|r| r.lock.as_ref())
                    .map(|l| l.lock.public())
                    .filter(|l| !l.expired_at(ctx.now));
                let entries = rec
                    .map(|r| QueueEntryView::ordered(&r.queue, ctx.now, &ctx.policy))
                    .unwrap_or_default();
                QueueStatus {
                    resource: resource.clone(),
                    lock,
                    entries,
                }
            })
            .await?)
    }

    async fn get_user_queue(&self, username: &str) -> Result<Vec<QueueEntryView>, QueryError> {
        Ok(self
            .with_state(|st, ctx| {
                st.resources
                    .values()
                    .flat_map(|r| QueueEntryView::ordered(&r.queue, ctx.now, &ctx.policy))
                    .filter(|v| v.entry.owner.username() == Some(username))
                    .collect()
            })
            .await?)
    }

    async fn cancel_queue_entry(
        &self,
        entry_id: &str,
        expected_resource: Option<&Resource>,
    ) -> Result<QueueEntryView, CancelError> {
        let expected_key = match expected_resource {
            Some(r) => Some(r.clone().validate("resource")?.storage_key()),
            None => None,
        };
        self.with_state(|st, ctx| {
            if let Some(key) = &expected_key
                && !st.waits_in(key, entry_id)
            {
                return Err(CancelError::NotFound);
            }
            st.cancel_entry(entry_id, ctx).ok_or(CancelError::NotFound)
        })
        .await?
    }

    async fn health_check(&self) -> Result<BackendHealth, BackendError> {
        let started = Instant::now();
        self.check_open()?;
        // Writable: a durable no-op round through the committer proves the file takes
        // commits; the file's size is what operators watch.
        self.with_state(|st, _| st.seq += 1).await?;
        let size = std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| BackendError::Unavailable(format!("{}: {e}", self.path.display())))?;
        let mut details = serde_json::Map::new();
        details.insert("path".into(), self.path.display().to_string().into());
        details.insert("file_size_bytes".into(), size.into());
        details.insert("last_commit_seq".into(), self.durable.borrow().seq.into());
        details.insert("data_losses".into(), self.data_losses.into());
        let mut healthy = true;
        if let Some((at, until)) = self.data_loss {
            details.insert(
                "last_data_loss".into(),
                serde_json::json!({
                    "detected_at": at.to_string(),
                    "lock_delay_until": until.to_string(),
                    "found": ["older_file"],
                }),
            );
            if self.clock.now() < until {
                // Not an error: the store answers; it only grants nothing yet.
                healthy = false;
                details.insert("reason".into(), "data_lost".into());
                details.insert("lock_delay_until".into(), until.to_string().into());
            }
        }
        if self.shared.events.receiver_count() > 0
            && let Some(e) = self
                .loss_event
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        {
            let _ = self.shared.events.send(e);
        }
        Ok(BackendHealth {
            backend: "embedded".into(),
            healthy,
            response_time: started.elapsed(),
            checked_at: self.clock.now(),
            details,
        })
    }

    async fn get_metrics(&self) -> Result<BackendMetrics, BackendError> {
        self.check_open()?;
        let now = self.clock.now();
        let st = self.shared.lock();
        Ok(BackendMetrics {
            active_locks: st
                .resources
                .values()
                .filter(|r| r.lock.as_ref().is_some_and(|l| !l.lock.expired_at(now)))
                .count() as u64,
            queue_depth: st.queue_depth(),
            handoffs: st.handoffs,
            expiries: st.expiries,
            data_losses: self.data_losses,
        })
    }

    async fn export(&self) -> Result<tflock_core::Snapshot, BackendError> {
        self.with_state(|st, ctx| tflock_core::Snapshot {
            version: tflock_core::snapshot::SNAPSHOT_VERSION,
            exported_at: ctx.now,
            backend: "embedded".into(),
            resources: st.export(ctx.now),
        })
        .await
    }

    async fn import(
        &self,
        snapshot: tflock_core::Snapshot,
        options: tflock_core::ImportOptions,
    ) -> Result<tflock_core::ImportReport, tflock_core::ImportError> {
        if snapshot.version != tflock_core::snapshot::SNAPSHOT_VERSION {
            return Err(tflock_core::ImportError::Version {
                found: snapshot.version,
            });
        }
        Ok(self
            .with_state(|st, ctx| st.import(&snapshot, options, ctx))
            .await??)
    }

    fn subscribe(&self) -> broadcast::Receiver<LockEvent> {
        self.shared.events.subscribe()
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.lock().close_waiters();
        self.sweeper_wake.notify_one();
        if let Some(tx) = self
            .wake_committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(Wake::Close);
        }
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

impl Drop for EmbeddedBackend {
    fn drop(&mut self) {
        // Without close(): still stop the committer so the file is released.
        if let Some(tx) = self
            .wake_committer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(Wake::Close);
        }
        if let Some(h) = self
            .committer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The moment the conformance suite cannot hit on cue: a waiter's caller goes away
    //! after its confirmation is made in memory and before the commit that makes it
    //! durable. The committer is held at its gate, so the drop lands exactly there.

    use std::task::Poll;

    use tflock_core::{Clock, ManualClock};

    use super::*;

    const CLAIM: Duration = Duration::from_secs(10);

    async fn open(dir: &tempfile::TempDir, clock: &ManualClock) -> Arc<EmbeddedBackend> {
        let settings = LockSettings {
            claim_timeout: CLAIM,
            ..LockSettings::default()
        };
        EmbeddedBackend::open(
            EmbeddedConfig {
                path: dir.path().join("locks.redb"),
                settings,
            },
            Arc::new(clock.clone()),
        )
        .await
        .expect("open")
    }

    fn resource() -> Resource {
        Resource::new("o/r", ".", "default", "").unwrap()
    }

    /// Whether `owner` holds `key` with a confirmed grant, in memory.
    fn confirmed_in_memory(b: &EmbeddedBackend, owner: &str) -> bool {
        let st = b.shared.lock();
        st.lock(&resource().storage_key())
            .is_some_and(|l| l.owner.owner == owner && !l.claim_pending)
    }

    async fn waiting_in_queue(b: &EmbeddedBackend, owner: &str) {
        let started = Instant::now();
        while !b
            .get_queue_status(&resource())
            .await
            .unwrap()
            .entries
            .iter()
            .any(|e| e.entry.owner.owner == owner)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{owner} queued"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn dropped_between_confirm_and_commit(request_id: Option<&str>) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let b = open(&dir, &clock).await;
        let r = resource();
        let ttl = Duration::from_secs(3600);
        let holder = b
            .try_lock(LockRequest::new(r.clone(), "holder").with_ttl(ttl))
            .await
            .unwrap()
            .lock
            .unwrap();

        let mut a_req = LockRequest::new(r.clone(), "a")
            .with_ttl(ttl)
            .with_wait(Duration::from_secs(300));
        if let Some(rid) = request_id {
            a_req = a_req.with_request_id(rid);
        }
        let a_backend = b.clone();
        let mut a = Box::pin(async move { a_backend.try_lock(a_req).await });
        while b.get_queue_status(&r).await.unwrap().entries.is_empty() {
            assert!(futures::poll!(&mut a).is_pending(), "a waits");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..5 {
            assert!(futures::poll!(&mut a).is_pending(), "a waits");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        clock.advance(Duration::from_millis(1));
        let next = {
            let b = b.clone();
            let req = LockRequest::new(r.clone(), "b")
                .with_ttl(ttl)
                .with_wait(Duration::from_secs(300));
            tokio::spawn(async move { b.try_lock(req).await })
        };
        waiting_in_queue(&b, "b").await;

        // From here no commit finishes: the unlock hands the lock to a in memory and
        // a's call confirms it in memory, then waits for the commit.
        b.shared.set_commit_gate(true);
        let unlock = {
            let b = b.clone();
            let (r, lease) = (r.clone(), holder.lease_id.clone().unwrap());
            tokio::spawn(async move { b.unlock(&r, &lease).await })
        };
        let started = Instant::now();
        while !confirmed_in_memory(&b, "a") {
            if let Poll::Ready(answer) = futures::poll!(&mut a) {
                panic!("a answered although its commit is held: {answer:?}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a confirms its grant in memory"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            futures::poll!(&mut a).is_pending(),
            "a waits for its commit"
        );
        let dropped_at = clock.now();
        drop(a);
        b.shared.set_commit_gate(false);
        unlock.await.unwrap().expect("the unlock");

        clock.advance(CLAIM + Duration::from_millis(1));
        let got = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("b is granted within claim_timeout of a's drop, not after a's ttl")
            .unwrap()
            .unwrap();
        assert!(got.acquired, "b: {got:?}");
        let lock = got.lock.unwrap();
        assert_eq!(lock.owner.owner, "b");
        assert!(
            lock.acquired_at <= dropped_at.add(CLAIM + Duration::from_millis(1)),
            "b's grant came within claim_timeout of the drop"
        );
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiter_dropped_between_confirm_and_commit_frees_the_lock() {
        dropped_between_confirm_and_commit(None).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiter_with_request_id_dropped_between_confirm_and_commit_frees_the_lock() {
        dropped_between_confirm_and_commit(Some("r-a-dropped")).await;
    }

    /// With a request id, the grant a dropped waiter confirmed goes back to a pending
    /// claim that its retry takes over: the same lease, now confirmed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retry_takes_over_the_claim_of_a_waiter_dropped_before_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_now();
        let b = open(&dir, &clock).await;
        let r = resource();
        let holder = b
            .try_lock(LockRequest::new(r.clone(), "holder"))
            .await
            .unwrap()
            .lock
            .unwrap();
        let a_req = LockRequest::new(r.clone(), "a")
            .with_wait(Duration::from_secs(300))
            .with_request_id("r-a-retry");
        let a_backend = b.clone();
        let req = a_req.clone();
        let mut a = Box::pin(async move { a_backend.try_lock(req).await });
        while b.get_queue_status(&r).await.unwrap().entries.is_empty() {
            assert!(futures::poll!(&mut a).is_pending());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..5 {
            assert!(futures::poll!(&mut a).is_pending());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        b.shared.set_commit_gate(true);
        let unlock = {
            let b = b.clone();
            let lease = holder.lease_id.clone().unwrap();
            let r = r.clone();
            tokio::spawn(async move { b.unlock(&r, &lease).await })
        };
        let started = Instant::now();
        while !confirmed_in_memory(&b, "a") {
            assert!(futures::poll!(&mut a).is_pending());
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(a);
        b.shared.set_commit_gate(false);
        unlock.await.unwrap().unwrap();
        let pending = b.get_lock(&r).await.unwrap().expect("a's claim");
        assert!(pending.claim_pending, "back to a pending claim");
        assert_eq!(pending.expires_at, clock.now().add(CLAIM));

        let mut retry = a_req;
        retry.wait = None;
        let got = b.try_lock(retry).await.unwrap();
        assert!(got.acquired, "the retry takes the claim over: {got:?}");
        let lock = got.lock.unwrap();
        assert_eq!(lock.fencing_token, pending.fencing_token);
        assert!(!lock.claim_pending);
        b.close().await;
    }
}
