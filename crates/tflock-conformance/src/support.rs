//! Helpers the cases share: a [`Fixture`] (store, backend, clock), bounded real-time
//! waits, request builders and expectations with clear failure messages.
//!
//! Everything here goes through the [`Backend`](tflock_core::Backend) trait and the
//! [`Harness`]/[`Store`] traits only, so a new backend runs the suite unchanged.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tflock_core::{
    EventKind, LeaseId, Lock, LockEvent, LockRequest, LockResponse, LockSettings, ManualClock,
    Owner, PullInfo, QueueEntryView, QueuePlacement, Resource, SharedBackend, Timestamp,
    TryLockError, UserInfo,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{CASE_TIMEOUT, EVENTUALLY, Harness, Store};

/// One millisecond: the clock step between enqueues whose order matters (entries that
/// tie on `enqueued_at` are ordered by their random entry id).
pub const TICK: Duration = Duration::from_millis(1);

/// How long a negative check ("still waiting") lets the backend run before looking.
/// Only used to give a wrong answer a chance to show; never asserted on speed.
pub const SETTLE: Duration = Duration::from_millis(50);

/// The answer of a TryLock call.
pub type TryLockResult = Result<LockResponse, TryLockError>;

/// A TryLock call in flight that the case polls by hand (claim-window cases).
pub type PendingTryLock = Pin<Box<dyn Future<Output = TryLockResult> + Send>>;

/// Settings the cases start from: the defaults with explicit values for every knob a
/// case relies on, so a change of a default does not silently change a case.
pub fn settings() -> LockSettings {
    LockSettings {
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(7 * 24 * 3600),
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(300),
        max_queue_size: 100,
        starvation_threshold: Duration::from_secs(120),
        max_priority_boost: 3,
        enable_priority_queue: true,
        enable_retries: true,
        claim_timeout: Duration::from_secs(10),
        min_retry_backoff: Duration::from_millis(1),
        max_retry_backoff: Duration::from_millis(10),
        request_id_retention: Duration::from_secs(600),
        lock_delay: tflock_core::settings::DEFAULT_LOCK_DELAY,
    }
}

/// A valid resource in the repository root's `default` workspace.
pub fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").expect("a valid test resource")
}

/// A valid resource at `path`.
pub fn resource_at(repo: &str, path: &str) -> Resource {
    Resource::new(repo, path, "default", "").expect("a valid test resource")
}

/// An owner with a user but no pull request.
pub fn user_owner(owner: &str, username: &str) -> Owner {
    Owner {
        user: Some(UserInfo {
            username: username.to_string(),
            teams: vec!["platform".to_string()],
        }),
        ..Owner::named(owner)
    }
}

/// The owner Atlantis uses for pull request `num` of `repo`: `{repo}#{num}` with the pull
/// metadata.
pub fn pull_owner(repo: &str, num: u64) -> Owner {
    Owner {
        pull: Some(PullInfo {
            num,
            url: format!("https://vcs.example/{repo}/pull/{num}"),
            author: "alice".to_string(),
            head_commit: "abc123".to_string(),
            head_branch: format!("feature-{num}"),
            base_branch: "main".to_string(),
        }),
        ..user_owner(&format!("{repo}#{num}"), "alice")
    }
}

/// A request for `resource` by `owner` (plain owner string, no metadata).
pub fn request(resource: &Resource, owner: &str) -> LockRequest {
    LockRequest::new(resource.clone(), owner)
}

/// A request for `resource` by `owner` with its metadata.
pub fn request_as(resource: &Resource, owner: Owner) -> LockRequest {
    LockRequest {
        owner,
        ..LockRequest::new(resource.clone(), "placeholder")
    }
}

/// The lease id of a lock answered to its holder.
/// The request id [`Fixture::reserve`] gives a reservation of `owner` that had none.
pub fn reservation_request_id(owner: &str) -> String {
    format!("rsv-{owner}")
}

pub fn lease(lock: &Lock) -> LeaseId {
    lock.lease_id.clone().unwrap_or_else(|| {
        panic!(
            "the holder's answer for {} (owner {}) carries no lease_id",
            lock.key, lock.owner.owner
        )
    })
}

/// Runs one case, failing it (by name) when it does not finish within [`CASE_TIMEOUT`].
pub async fn run_case(name: &str, case: impl Future<Output = ()>) {
    if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
        panic!("{name} did not finish within {CASE_TIMEOUT:?}: a backend call hangs");
    }
}

/// Awaits `fut`, failing with `what` when it takes longer than [`EVENTUALLY`]: for
/// calls that must answer at once, so a hang reads as a failure of that call.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(EVENTUALLY, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {EVENTUALLY:?}"))
}

/// Waits (real time, bounded by [`EVENTUALLY`]) until `check` answers true.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            start.elapsed() < EVENTUALLY,
            "gave up after {EVENTUALLY:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The result of a spawned task, bounded by [`EVENTUALLY`].
pub async fn join<T: Debug>(what: &str, handle: JoinHandle<T>) -> T {
    match tokio::time::timeout(EVENTUALLY, handle).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: the task failed: {e}"),
        Err(_) => panic!("{what}: no answer within {EVENTUALLY:?}"),
    }
}

/// Asserts that a spawned waiter is still waiting, after giving it [`SETTLE`] to answer.
pub async fn assert_still_waiting<T: Debug>(what: &str, handle: &JoinHandle<T>) {
    tokio::time::sleep(SETTLE).await;
    assert!(
        !handle.is_finished(),
        "{what}: the call returned although it should still be waiting"
    );
}

/// Expects a granted answer and returns the lock (with its lease).
#[track_caller]
pub fn expect_granted(what: &str, answer: TryLockResult) -> Lock {
    match answer {
        Ok(LockResponse {
            acquired: true,
            lock: Some(lock),
            ..
        }) => {
            assert!(
                lock.lease_id.is_some(),
                "{what}: granted, but the answer to the new holder has no lease_id"
            );
            lock
        }
        other => panic!("{what}: expected a grant, got {other:?}"),
    }
}

/// Expects a "not acquired" answer and returns it.
#[track_caller]
pub fn expect_not_acquired(what: &str, answer: TryLockResult) -> LockResponse {
    match answer {
        Ok(r) if !r.acquired => r,
        other => panic!("{what}: expected acquired = false, got {other:?}"),
    }
}

/// Waits for the next event of `kind` on `resource`, skipping others, bounded by
/// [`EVENTUALLY`].
pub async fn next_event(
    rx: &mut broadcast::Receiver<LockEvent>,
    kind: EventKind,
    resource: &Resource,
) -> LockEvent {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(e) if e.event == kind && e.resource == *resource => return e,
                Ok(_) => {}
                Err(e) => panic!(
                    "event stream failed while waiting for {}: {e}",
                    kind.as_str()
                ),
            }
        }
    };
    tokio::time::timeout(EVENTUALLY, wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {} event for {resource} within {EVENTUALLY:?}",
                kind.as_str()
            )
        })
}

/// One store under test, its backend and the clock it reads.
pub struct Fixture {
    pub store: Box<dyn Store>,
    pub backend: SharedBackend,
    pub clock: ManualClock,
    pub settings: LockSettings,
}

impl Fixture {
    /// A fresh store with `settings`, on a manual clock standing at the current time.
    pub async fn new<H: Harness + ?Sized>(harness: &H, settings: LockSettings) -> Fixture {
        let clock = ManualClock::starting_now();
        let store = harness.create(settings.clone(), clock.clone()).await;
        let backend = store.backend();
        Fixture {
            store,
            backend,
            clock,
            settings,
        }
    }

    /// A fresh store with [`settings`].
    pub async fn default<H: Harness + ?Sized>(harness: &H) -> Fixture {
        Fixture::new(harness, settings()).await
    }

    /// Restarts the store (same data, settings and clock).
    pub async fn reopen(&mut self) {
        self.store.reopen().await;
        self.backend = self.store.backend();
    }

    pub fn now(&self) -> Timestamp {
        tflock_core::Clock::now(&self.clock)
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Advances the clock by [`TICK`].
    pub fn tick(&self) {
        self.clock.advance(TICK);
    }

    /// TryLock that must be granted; returns the holder's lock.
    pub async fn lock(&self, req: LockRequest) -> Lock {
        let what = format!("try_lock of {} by {}", req.resource, req.owner.owner);
        expect_granted(&what, self.backend.try_lock(req).await)
    }

    /// The queue of `resource` in grant order.
    pub async fn queue(&self, resource: &Resource) -> Vec<QueueEntryView> {
        self.backend
            .get_queue_status(resource)
            .await
            .unwrap_or_else(|e| panic!("get_queue_status({resource}) failed: {e}"))
            .entries
    }

    /// The queue of `resource` as owner strings in grant order.
    pub async fn queue_owners(&self, resource: &Resource) -> Vec<String> {
        self.queue(resource)
            .await
            .into_iter()
            .map(|e| e.entry.owner.owner)
            .collect()
    }

    /// The queue entry of `owner` on `resource`, if any.
    pub async fn entry_of(&self, resource: &Resource, owner: &str) -> Option<QueueEntryView> {
        self.queue(resource)
            .await
            .into_iter()
            .find(|e| e.entry.owner.owner == owner)
    }

    /// The current holder's public view.
    pub async fn holder(&self, resource: &Resource) -> Option<Lock> {
        self.backend
            .get_lock(resource)
            .await
            .unwrap_or_else(|e| panic!("get_lock({resource}) failed: {e}"))
    }

    /// The owner string of the current holder.
    pub async fn holder_name(&self, resource: &Resource) -> Option<String> {
        self.holder(resource).await.map(|l| l.owner.owner)
    }

    /// Every held lock (first page of up to 1000).
    pub async fn all_locks(&self) -> Vec<Lock> {
        let page = self
            .backend
            .list_locks(tflock_core::LockFilter {
                limit: Some(tflock_core::LockFilter::MAX_LIMIT),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("list_locks failed: {e}"));
        page.locks
    }

    /// Starts a waiting TryLock in its own task, waits until its entry is in the queue
    /// and advances the clock by [`TICK`] so the next entry is strictly later.
    pub async fn spawn_waiter(
        &self,
        req: LockRequest,
    ) -> (JoinHandle<TryLockResult>, QueueEntryView) {
        assert!(req.wait.is_some(), "spawn_waiter needs a request with wait");
        let (resource, owner) = (req.resource.clone(), req.owner.owner.clone());
        let backend = self.backend.clone();
        let handle = tokio::spawn(async move { backend.try_lock(req).await });
        let mut entry = None;
        wait_until(
            &format!("{owner}'s waiter shows in the queue of {resource}"),
            async || {
                if handle.is_finished() {
                    return true;
                }
                entry = self.entry_of(&resource, &owner).await;
                entry.is_some()
            },
        )
        .await;
        let Some(entry) = entry else {
            let answer = join("waiter", handle).await;
            panic!("{owner}'s waiting call returned before it was queued: {answer:?}");
        };
        self.tick();
        (handle, entry)
    }

    /// Builds a waiting TryLock without spawning it and polls it by hand until its
    /// entry is in the queue, then a few times more with short real-time pauses so the
    /// call has settled into its wait (a call may still be finishing its enqueue when
    /// the entry becomes visible); then advances the clock by [`TICK`]. The caller
    /// decides whether to poll it again or drop it.
    pub async fn start_polled_waiter(&self, req: LockRequest) -> (PendingTryLock, QueueEntryView) {
        let (mut fut, entry) = self.poll_until_queued(req).await;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if let Poll::Ready(answer) = futures::poll!(&mut fut) {
                panic!(
                    "{}'s waiting call returned although the lock is held: {answer:?}",
                    entry.entry.owner.owner
                );
            }
        }
        self.tick();
        (fut, entry)
    }

    /// Like [`Fixture::start_polled_waiter`], but returns as soon as the entry is
    /// visible, without polling the call again: the call may still be in the middle
    /// of its enqueue. Does not advance the clock.
    pub async fn poll_until_queued(&self, req: LockRequest) -> (PendingTryLock, QueueEntryView) {
        assert!(
            req.wait.is_some(),
            "poll_until_queued needs a request with wait"
        );
        let (resource, owner) = (req.resource.clone(), req.owner.owner.clone());
        let backend = self.backend.clone();
        let mut fut: PendingTryLock = Box::pin(async move { backend.try_lock(req).await });
        let start = Instant::now();
        loop {
            if let Poll::Ready(answer) = futures::poll!(&mut fut) {
                panic!("{owner}'s waiting call returned before it was queued: {answer:?}");
            }
            if let Some(entry) = self.entry_of(&resource, &owner).await {
                return (fut, entry);
            }
            assert!(
                start.elapsed() < EVENTUALLY,
                "{owner}'s waiter did not show in the queue of {resource} within {EVENTUALLY:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Makes a reservation that must be queued; advances the clock by [`TICK`].
    /// A reservation without a request id gets `rsv-{owner}`: the secret its owner
    /// collects the grant with ([`reservation_request_id`]).
    pub async fn reserve(&self, req: LockRequest) -> QueuePlacement {
        let mut req = req.reserving();
        if req.request_id.is_none() {
            req.request_id = Some(reservation_request_id(&req.owner.owner));
        }
        let what = format!("reservation of {} by {}", req.resource, req.owner.owner);
        let answer = self.backend.try_lock(req).await;
        let placement = match answer {
            Ok(LockResponse {
                acquired: false,
                queue: Some(placement),
                ..
            }) => placement,
            other => {
                panic!("{what}: expected acquired = false with a queue placement, got {other:?}")
            }
        };
        self.tick();
        placement
    }

    /// Unlocks with `lock`'s lease; must succeed.
    pub async fn unlock(&self, lock: &Lock) -> tflock_core::UnlockResponse {
        self.backend
            .unlock(&lock.resource, &lease(lock))
            .await
            .unwrap_or_else(|e| {
                panic!("unlock of {} by {} failed: {e}", lock.key, lock.owner.owner)
            })
    }
}
