//! TryLock: the mode (answer now, wait, reserve), the waiting out of a `lock_delay`
//! after a data loss, the waiter's blocking call (BLPOP on its wake-up list, the 1 s
//! fallback, its deadline) and its drop guard ([`WaiterGuard`]: `abandon.lua`), the
//! retry loop without a queue, and `WAIT` on the answer (see docs/redis-design.md,
//! "Wake-ups" and "Durability").

use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    BackendError, InvalidRequest, LockRequest, LockResponse, NotAcquiredReason, Timestamp,
    TryLockError,
};

use crate::args::{AbandonArgs, OwnerArgs, TryLockArgs, TryLockMode, WaitEndArgs, WaitEndMode};
use crate::backend::{Inner, ensure_replicated};
use crate::keys::{bucket_of, resource_key};
use crate::reply::{RawAnswer, Reply, TryLockOutcome, TryLockReply, WaitEndReply};

/// A resolved TryLock mode and its span: the wait, or the reservation's lifetime.
#[derive(Clone, Copy)]
struct Mode {
    mode: TryLockMode,
    span: Duration,
}

const NO_WAIT: Mode = Mode {
    mode: TryLockMode::NoWait,
    span: Duration::ZERO,
};

/// [`tflock_core::Backend::try_lock`] on Redis.
pub(crate) async fn try_lock(
    inner: &Arc<Inner>,
    request: LockRequest,
) -> Result<LockResponse, TryLockError> {
    inner.check_open()?;
    let req = request.validate()?;
    let ttl = inner.settings.resolve_ttl(req.ttl)?;
    let mode = if req.reserve {
        Mode {
            mode: TryLockMode::Reserve,
            span: inner.settings.resolve_reservation(req.wait),
        }
    } else {
        match req
            .wait
            .map(|w| inner.settings.resolve_wait(w))
            .filter(|d| !d.is_zero())
        {
            Some(span) => Mode {
                mode: TryLockMode::Wait,
                span,
            },
            None => NO_WAIT,
        }
    };
    let sk = resource_key(&req.resource);
    let bucket = bucket_of(&req.resource);
    // A plain TryLock: its answer may come from a read of the lease (held.rs).
    let plain =
        mode.mode == TryLockMode::NoWait && req.request_id.is_none() && req.lease_id.is_none();
    if plain
        && inner.held.held(&sk, inner.clock.now().0)
        && let Some(r) = inner.held_by_another(bucket, &sk, &req.owner.owner).await?
    {
        return Ok(r);
    }
    // The entry id is chosen here and the drop guard armed before the script is
    // sent: a caller that goes away at any point after that, even before the
    // reply arrives, still has its entry removed.
    let entry_id = if mode.mode == TryLockMode::NoWait {
        String::new()
    } else {
        format!("{bucket:02x}{}", tflock_core::random_hex(15))
    };
    let mut guard = WaiterGuard {
        inner: inner.clone(),
        bucket,
        sk,
        entry_id,
        has_request_id: req.request_id.is_some(),
        armed: mode.mode == TryLockMode::Wait,
    };
    // A waiter outlasts a lock_delay after a data loss within its wait: it keeps
    // waiting instead of being told "not now" (see docs/redis-design.md).
    let wait_until = inner.clock.now().add(mode.span);
    let (outcome, generation) = loop {
        let (reply, generation) =
            try_lock_once(inner, &req, ttl, mode, true, &guard.entry_id).await?;
        let hold = match reply.body.outcome {
            TryLockOutcome::Delay { hold } => Timestamp(hold.0),
            outcome => break (outcome, generation),
        };
        if mode.mode != TryLockMode::Wait {
            guard.armed = false;
            return Ok(LockResponse::not_acquired(
                None,
                NotAcquiredReason::LockDelay,
            ));
        }
        if hold >= wait_until {
            guard.armed = false;
            inner.clock.sleep_until(wait_until).await;
            return Ok(LockResponse::not_acquired(None, NotAcquiredReason::Timeout));
        }
        inner.clock.sleep_until(hold).await;
    };
    if !matches!(outcome, TryLockOutcome::Wait { .. }) {
        guard.armed = false;
    }
    match outcome {
        TryLockOutcome::Answer { a, fresh, chg } => {
            let r = answer(inner, a, fresh, chg, bucket, generation).await?;
            if plain {
                inner.note_answer(&guard.sk, &r);
            }
            Ok(r)
        }
        TryLockOutcome::Wait { id, dl } => {
            // A retry of a call that still waits waits on that call's entry.
            if let Some(id) = id.filter(|id| *id != guard.entry_id) {
                guard.entry_id = id;
            }
            wait_for_grant(inner, &req, guard, Timestamp(dl.0)).await
        }
        TryLockOutcome::Full => Err(TryLockError::QueueFull {
            max: inner.settings.max_queue_size,
        }),
        TryLockOutcome::Retry => retry_loop(inner, &req, ttl, mode.span).await,
        TryLockOutcome::Refused => Err(InvalidRequest::new(
            "wait",
            "waiting needs enable_priority_queue or enable_retries; retry without wait",
        )
        .into()),
        TryLockOutcome::Delay { .. } => unreachable!("a delay is waited out above"),
        TryLockOutcome::Layout => unreachable!("try_lock_once upgrades or fails"),
    }
}

/// One TryLock script call.
async fn try_lock_once(
    inner: &Inner,
    req: &LockRequest,
    ttl: Duration,
    mode: Mode,
    remember_all: bool,
    entry_id: &str,
) -> Result<(Reply<TryLockReply>, u64), BackendError> {
    let sk = resource_key(&req.resource);
    let bucket = bucket_of(&req.resource);
    let owner = OwnerArgs::of(&req.owner)?;
    let node = inner
        .serving_node
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let args = TryLockArgs {
        storage_key: &sk,
        owner: &owner,
        priority: req.priority.rank(),
        ttl,
        mode: mode.mode,
        span: mode.span,
        request_id: req.request_id.as_deref().unwrap_or(""),
        max_queue: inner.settings.max_queue_size,
        retention: inner.settings.request_id_retention,
        priority_queue: inner.settings.enable_priority_queue,
        retries: inner.settings.enable_retries,
        waiter_grace: inner.waiter_grace(),
        remember_all,
        entry_id,
        node: &node,
        lease_id: req.lease_id.as_ref().map(|l| l.as_str()).unwrap_or(""),
        lock_delay: inner.settings.lock_delay,
        knows_generation: inner.generations.knows(bucket),
    };
    let mut r = inner.run_gen(bucket, &args).await?;
    if matches!(r.0.body.outcome, TryLockOutcome::Layout) {
        // The bucket holds data of an older key layout (a backup restored after
        // connecting upgraded it): upgrade it and ask again.
        if inner.upgrade_layout {
            inner.upgrade_bucket(bucket, false).await?;
            r = inner.run_gen(bucket, &args).await?;
        }
        if matches!(r.0.body.outcome, TryLockOutcome::Layout) {
            return Err(BackendError::Unavailable(format!(
                "bucket {bucket} of the store holds data of an older key layout: run \
                 `tflock admin upgrade-layout` (docs/redis-design.md, Layout versions)"
            )));
        }
    }
    if r.0.body.lost.is_some() {
        // This call found a marker gone before any health check did: check every
        // bucket now, which reports the loss once and starts its delay everywhere.
        if let Err(e) = inner.check_generations().await {
            tracing::warn!("checking the data-loss markers after a TryLock found one gone: {e}");
        }
    }
    Ok(r)
}

impl Inner {
    /// The waiter's end when its caller went away: see `abandon.lua`.
    async fn abandon(&self, bucket: usize, sk: &str, entry_id: &str, has_request_id: bool) {
        let args = AbandonArgs {
            storage_key: sk,
            entry_id,
            had_request_id: has_request_id,
        };
        if let Err(e) = self.run(bucket, &args).await {
            // The entry stays until the sweeper drops it after its deadline.
            tracing::warn!("removing an abandoned waiter's entry failed: {e}");
        }
    }

    /// [`Inner::abandon`] for a waiter whose call ended without its entry being
    /// settled (dropped, or failed while Redis was unreachable), retried while Redis
    /// cannot be reached: once Redis is back the entry goes at once, instead of being
    /// handed a grant that nobody confirms. Gives up at close, or after the grace
    /// after which the sweeper drops such an entry anyway.
    async fn abandon_retrying(&self, bucket: usize, sk: &str, entry_id: &str, has_rid: bool) {
        let args = AbandonArgs {
            storage_key: sk,
            entry_id,
            had_request_id: has_rid,
        };
        // On giving up, the entry stays until the sweeper drops it after its deadline.
        self.run_retrying(bucket, &args, "removing an abandoned waiter's entry")
            .await;
    }
}

/// Removes a waiter's entry when its call goes away before it finishes.
struct WaiterGuard {
    inner: Arc<Inner>,
    bucket: usize,
    sk: String,
    entry_id: String,
    has_request_id: bool,
    armed: bool,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let (bucket, has_rid) = (self.bucket, self.has_request_id);
        let sk = std::mem::take(&mut self.sk);
        let id = std::mem::take(&mut self.entry_id);
        rt.spawn(async move { inner.abandon_retrying(bucket, &sk, &id, has_rid).await });
    }
}

/// What woke a blocked waiter.
enum Woke {
    Message(String),
    Fallback,
    Deadline,
    Closed,
    Failed(BackendError),
}

/// Blocks a waiter until its grant, its deadline, cancellation or close.
async fn wait_for_grant(
    inner: &Arc<Inner>,
    req: &LockRequest,
    mut guard: WaiterGuard,
    deadline: Timestamp,
) -> Result<LockResponse, TryLockError> {
    let sk = guard.sk.clone();
    let bucket = guard.bucket;
    let entry_id = guard.entry_id.clone();
    let wake_key = format!("{}wake:{entry_id}", inner.buckets[bucket]);
    let mut closed = inner.closed.subscribe();
    loop {
        let woke = tokio::select! {
            r = inner.conn.blpop(&wake_key) => match r {
                Ok(Some(m)) => Woke::Message(m),
                Ok(None) => Woke::Fallback,
                Err(e) => Woke::Failed(e),
            },
            _ = inner.clock.sleep_until(deadline) => Woke::Deadline,
            _ = async { let _ = closed.wait_for(|c| *c).await; } => Woke::Closed,
        };
        let (mode, hint) = match woke {
            Woke::Message(m) => (WaitEndMode::Poll, m),
            Woke::Fallback => (WaitEndMode::Poll, String::new()),
            Woke::Deadline => (WaitEndMode::End, String::new()),
            Woke::Failed(e) => {
                tracing::debug!("a waiter's BLPOP failed, checking by script: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                (WaitEndMode::Poll, String::new())
            }
            Woke::Closed => {
                guard.armed = false;
                let abandon = inner.abandon(bucket, &sk, &entry_id, req.request_id.is_some());
                let _ = tokio::time::timeout(inner.conn.read_timeout(), abandon).await;
                return Err(
                    BackendError::Unavailable("the Redis backend is closing".into()).into(),
                );
            }
        };
        let args = WaitEndArgs {
            storage_key: &sk,
            entry_id: &entry_id,
            owner: &req.owner.owner,
            request_id: req.request_id.as_deref().unwrap_or(""),
            deadline,
            mode,
            hint: &hint,
            retention: inner.settings.request_id_retention,
        };
        let (reply, generation) = inner.run_gen(bucket, &args).await?;
        let (answer, fresh) = match reply.body {
            WaitEndReply::Queued => continue,
            WaitEndReply::Answer { a, fresh } => (a, fresh),
        };
        guard.armed = false;
        if fresh && answer.acq {
            ensure_replicated(inner, bucket, generation, &answer.lock).await?;
        }
        return Ok(answer.into_response()?);
    }
}

/// TryLock without a queue: retry with back-off until the deadline; a release by
/// this backend cuts the back-off short.
async fn retry_loop(
    inner: &Arc<Inner>,
    req: &LockRequest,
    ttl: Duration,
    wait: Duration,
) -> Result<LockResponse, TryLockError> {
    let deadline = inner.clock.now().add(wait);
    let mut backoff = inner.settings.min_retry_backoff;
    let bucket = bucket_of(&req.resource);
    let sk = resource_key(&req.resource);
    // The first attempt found it held: without a request id or lease id a later one
    // reads the lease first (held.rs), and runs the script when it is not held by
    // someone else.
    let plain = req.request_id.is_none() && req.lease_id.is_none();
    loop {
        inner.check_open()?;
        let released = inner.released.notified();
        let held = if plain {
            inner.held_by_another(bucket, &sk, &req.owner.owner).await?
        } else {
            None
        };
        let r = match held {
            Some(r) => r,
            None => {
                let (reply, generation) =
                    try_lock_once(inner, req, ttl, NO_WAIT, false, "").await?;
                let (a, fresh, chg) = match reply.body.outcome {
                    TryLockOutcome::Delay { hold } => {
                        // A lock_delay after a data loss: wait it out within the deadline.
                        let hold = Timestamp(hold.0);
                        if hold >= deadline {
                            inner.clock.sleep_until(deadline).await;
                            return Ok(LockResponse::not_acquired(
                                None,
                                NotAcquiredReason::Timeout,
                            ));
                        }
                        inner.clock.sleep_until(hold).await;
                        continue;
                    }
                    TryLockOutcome::Answer { a, fresh, chg } => (a, fresh, chg),
                    _ => {
                        return Err(BackendError::Internal(
                            "try_lock: an answer without its body".into(),
                        )
                        .into());
                    }
                };
                let r = answer(inner, a, fresh, chg, bucket, generation).await?;
                if r.acquired {
                    return Ok(r);
                }
                r
            }
        };
        let now = inner.clock.now();
        if now >= deadline {
            return Ok(LockResponse {
                reason: Some(NotAcquiredReason::Timeout),
                ..r
            });
        }
        let until = now.add(backoff).min(deadline);
        tokio::select! {
            _ = inner.clock.sleep_until(until) => {}
            _ = released => {}
        }
        backoff = (backoff * 2).min(inner.settings.max_retry_backoff);
    }
}

/// Turns a try_lock.lua answer into the response. The script answers replays
/// from the present (a lease that ended is `lease_lost`), so nothing is patched
/// here; with `min_replicas_ack` a grant, a re-lock or a reservation's renewal
/// waits for `WAIT`.
async fn answer(
    inner: &Arc<Inner>,
    answer: RawAnswer,
    fresh: bool,
    chg: bool,
    bucket: usize,
    generation: u64,
) -> Result<LockResponse, TryLockError> {
    if fresh && answer.acq {
        ensure_replicated(inner, bucket, generation, &answer.lock).await?;
    } else if chg {
        // A re-lock, or a reservation's retry that renewed its deadline.
        let what = if answer.acq {
            "re-lock"
        } else {
            "reservation's renewal"
        };
        inner
            .ensure_change_replicated(bucket, generation, what)
            .await?;
    }
    Ok(answer.into_response()?)
}
