//! The lock state in memory and every transition of the contract on it.
//!
//! Everything here is synchronous and runs under one mutex, which is what makes each
//! operation atomic: a grant, its hand-off and its events happen in one critical
//! section. Every change marks the touched records dirty and bumps [`State::seq`]; the
//! committer (see [`crate::store`]) writes dirty records and only then are events
//! published and callers answered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tflock_core::queue::{self, StarvationPolicy};
use tflock_core::{
    EntryKind, EventKind, FencingToken, LeaseId, Lock, LockEvent, LockSettings, Owner, Priority,
    QueueEntry, QueueEntryView, Resource, Timestamp,
};
use tokio::sync::oneshot;

/// A held lock as stored: the public [`Lock`] (with its lease id) plus what the store
/// needs to finish a waiter's grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockRecord {
    pub lock: Lock,
    /// The queue entry this lease was handed to, while its claim may be pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    /// The caller's request id, so a retry can take over an unconfirmed grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One resource's row: its lock and its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResourceRecord {
    pub resource: Resource,
    pub lock: Option<LockRecord>,
    pub queue: Vec<QueueEntry>,
}

/// The answer to a request with a `request_id`, kept for its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredAnswer {
    pub response: tflock_core::LockResponse,
    pub expires_at: Timestamp,
}

/// What a blocked waiter is told.
#[derive(Debug)]
pub(crate) enum WaiterWake {
    /// The lock was handed to its entry (claim pending).
    Granted,
    /// Its entry was cancelled.
    Cancelled,
    /// The backend is closing.
    Closed,
}

/// Dirty records, serialised, for one commit.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub seq: u64,
    pub resources: Vec<(String, Option<Vec<u8>>)>,
    pub tokens: Vec<(String, u64)>,
    pub answers: Vec<(String, Option<Vec<u8>>)>,
    pub events: Vec<LockEvent>,
}

/// The decision TryLock takes under the mutex.
pub(crate) enum Decision {
    /// Answer now.
    Answer(Box<tflock_core::LockResponse>),
    /// Block until woken or `deadline`.
    Wait {
        key: String,
        entry_id: String,
        wake: oneshot::Receiver<WaiterWake>,
        deadline: Timestamp,
    },
    /// No queue: retry with back-off until `deadline`.
    Retry { deadline: Timestamp },
    /// The queue is at `max_queue_size`.
    QueueFull,
    /// Waiting is impossible with these settings.
    WaitRefused,
    /// The store lost data: nothing is granted until `until` (its lock_delay).
    Delay { until: Timestamp },
}

/// The whole lock state of one store.
#[derive(Default)]
pub(crate) struct State {
    /// After a data loss, nothing is granted before this instant (lock_delay).
    pub hold_until: Timestamp,
    pub resources: BTreeMap<String, ResourceRecord>,
    /// Last fencing token per storage key.
    pub tokens: HashMap<String, u64>,
    /// Answers by `owner \x1f request_id`.
    pub answers: HashMap<String, StoredAnswer>,
    /// Which resource each queue entry is in.
    entry_index: HashMap<String, String>,
    /// Live waiters' wake-up channels, by entry id. Memory only: waiters do not
    /// survive a restart.
    waiters: HashMap<String, oneshot::Sender<WaiterWake>>,
    /// When each resource next needs the sweeper (lease expiry, reservation deadline).
    due: BTreeSet<(Timestamp, String)>,
    due_of: HashMap<String, Timestamp>,
    /// When each stored answer may be forgotten.
    answer_due: BTreeSet<(Timestamp, String)>,
    dirty_resources: BTreeSet<String>,
    dirty_tokens: BTreeSet<String>,
    dirty_answers: BTreeSet<String>,
    events: Vec<LockEvent>,
    /// Number of the latest change; a caller that saw state up to here waits until the
    /// committer reports this number durable.
    pub seq: u64,
    /// The `seq` of the last batch handed to the committer.
    batched_seq: u64,
    pub handoffs: u64,
    pub expiries: u64,
}

/// Per-call context: the time of the call and the settings.
pub(crate) struct Ctx<'a> {
    pub now: Timestamp,
    pub settings: &'a LockSettings,
    pub policy: StarvationPolicy,
}

fn answer_key(owner: &str, request_id: &str) -> String {
    format!("{owner}\u{1f}{request_id}")
}

impl State {
    /// State from what the file held. Waiter entries are dropped: their callers died
    /// with the process that served them.
    pub fn load(loaded: crate::store::Loaded, now: Timestamp) -> State {
        let mut s = State {
            hold_until: Timestamp::ZERO,
            tokens: loaded.tokens.into_iter().collect(),
            answers: loaded.answers.into_iter().collect(),
            ..State::default()
        };
        for (key, ans) in &s.answers {
            s.answer_due.insert((ans.expires_at, key.clone()));
        }
        for (key, mut rec) in loaded.resources {
            let before = rec.queue.len();
            rec.queue.retain(|e| e.kind == EntryKind::Reservation);
            if rec.queue.len() != before {
                s.dirty_resources.insert(key.clone());
            }
            for e in &rec.queue {
                s.entry_index.insert(e.entry_id.clone(), key.clone());
            }
            s.resources.insert(key.clone(), rec);
            s.reindex(&key);
        }
        if !s.dirty_resources.is_empty() {
            s.seq += 1;
        }
        let _ = now;
        s
    }

    // ----- bookkeeping -----

    /// Marks a resource changed: dirty for the committer, due time recomputed.
    fn touch(&mut self, key: &str) {
        self.seq += 1;
        self.dirty_resources.insert(key.to_string());
        self.reindex(key);
    }

    fn reindex(&mut self, key: &str) {
        if let Some(old) = self.due_of.remove(key) {
            self.due.remove(&(old, key.to_string()));
        }
        let Some(rec) = self.resources.get(key) else {
            return;
        };
        let lock_due = rec.lock.as_ref().map(|l| l.lock.expires_at);
        let queue_due = rec
            .queue
            .iter()
            .filter(|e| e.kind == EntryKind::Reservation)
            .map(|e| e.deadline)
            .min();
        let due = match (lock_due, queue_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = due {
            self.due.insert((t, key.to_string()));
            self.due_of.insert(key.to_string(), t);
        }
    }

    fn emit(
        &mut self,
        event: EventKind,
        resource: &Resource,
        owner: &str,
        token: Option<FencingToken>,
        entry_id: Option<&str>,
        at: Timestamp,
    ) {
        self.events.push(LockEvent {
            event,
            key: resource.lock_key(),
            resource: resource.clone(),
            owner: owner.to_string(),
            fencing_token: token,
            entry_id: entry_id.map(str::to_string),
            at,
        });
    }

    /// The earliest instant the sweeper has work.
    pub fn next_due(&self) -> Option<Timestamp> {
        let a = self.due.first().map(|(t, _)| *t);
        let b = self.answer_due.first().map(|(t, _)| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Serialises everything dirty for one commit; `None` when nothing is.
    pub fn take_batch(&mut self) -> Option<Batch> {
        // A change with nothing to write (a health check's probe) still gets a commit:
        // its caller waits for the file to take one.
        if self.seq == self.batched_seq && self.events.is_empty() {
            return None;
        }
        self.batched_seq = self.seq;
        let mut b = Batch {
            seq: self.seq,
            events: std::mem::take(&mut self.events),
            ..Batch::default()
        };
        for key in std::mem::take(&mut self.dirty_resources) {
            let bytes = self
                .resources
                .get(&key)
                .map(|r| serde_json::to_vec(r).expect("records serialise"));
            b.resources.push((key, bytes));
        }
        for key in std::mem::take(&mut self.dirty_tokens) {
            if let Some(t) = self.tokens.get(&key) {
                b.tokens.push((key, *t));
            }
        }
        for key in std::mem::take(&mut self.dirty_answers) {
            let bytes = self
                .answers
                .get(&key)
                .map(|a| serde_json::to_vec(a).expect("answers serialise"));
            b.answers.push((key, bytes));
        }
        Some(b)
    }

    /// Drops a resource's row when nothing is left in it (its token stays).
    fn gc(&mut self, key: &str) {
        if self
            .resources
            .get(key)
            .is_some_and(|r| r.lock.is_none() && r.queue.is_empty())
        {
            self.resources.remove(key);
            self.touch(key);
        }
    }

    /// The contract's token rule ([`FencingToken::next_after`]): floored at the clock,
    /// so a file replaced by an older copy still never hands out a token it gave.
    fn next_token(&mut self, key: &str, now: Timestamp) -> FencingToken {
        let t = self.tokens.entry(key.to_string()).or_insert(0);
        let token = FencingToken::next_after(*t, now);
        *t = token.0;
        self.dirty_tokens.insert(key.to_string());
        token
    }

    // ----- transitions -----

    /// Brings a resource up to date at `now`: ends an expired lease, drops reservations
    /// past their deadline and hands a free lock to the best entry.
    pub fn settle(&mut self, key: &str, ctx: &Ctx) {
        let Some(rec) = self.resources.get_mut(key) else {
            return;
        };
        let now = ctx.now;
        let mut changed = false;
        let mut left = Vec::new();
        rec.queue.retain(|e| {
            let keep = !(e.kind == EntryKind::Reservation && e.deadline <= now);
            if !keep {
                left.push(e.clone());
            }
            keep
        });
        let mut expired = None;
        if rec.lock.as_ref().is_some_and(|l| l.lock.expired_at(now)) {
            expired = rec.lock.take();
        }
        let resource = rec.resource.clone();
        for e in left {
            changed = true;
            self.entry_index.remove(&e.entry_id);
            self.emit(
                EventKind::QueueLeft,
                &resource,
                &e.owner.owner,
                None,
                Some(&e.entry_id),
                now,
            );
        }
        if let Some(l) = expired {
            changed = true;
            self.expiries += 1;
            self.emit(
                EventKind::LockExpired,
                &resource,
                &l.lock.owner.owner,
                Some(l.lock.fencing_token),
                None,
                now,
            );
        }
        let free_with_queue = self
            .resources
            .get(key)
            .is_some_and(|r| r.lock.is_none() && !r.queue.is_empty());
        if free_with_queue {
            self.handoff(key, ctx);
        } else if changed {
            self.touch(key);
            self.gc(key);
        }
    }

    /// Grants a free lock to the best queue entry, if any. Returns that entry's view.
    pub fn handoff(&mut self, key: &str, ctx: &Ctx) -> Option<QueueEntryView> {
        let rec = self.resources.get_mut(key)?;
        debug_assert!(rec.lock.is_none());
        let next = queue::next_entry(&rec.queue, ctx.now, &ctx.policy)?
            .entry_id
            .clone();
        let idx = rec.queue.iter().position(|e| e.entry_id == next)?;
        let entry = rec.queue.remove(idx);
        self.entry_index.remove(&entry.entry_id);
        let view = QueueEntryView {
            effective_priority: ctx.policy.effective_priority(
                entry.priority,
                entry.enqueued_at,
                ctx.now,
            ),
            position: 1,
            waited: ctx.now.since(entry.enqueued_at),
            entry: entry.clone().public(),
        };
        self.handoffs += 1;
        match entry.kind {
            EntryKind::Waiter => {
                // The claim window: the lease lasts claim_timeout until the waiter's
                // call confirms it, so a dead waiter delays the queue only that long.
                self.grant(
                    key,
                    &entry.resource,
                    entry.owner.clone(),
                    entry.priority,
                    entry.ttl,
                    ctx.settings.claim_timeout,
                    Some(entry.entry_id.clone()),
                    entry.request_id.clone(),
                    ctx.now,
                );
                if let Some(tx) = self.waiters.remove(&entry.entry_id) {
                    let _ = tx.send(WaiterWake::Granted);
                }
            }
            EntryKind::Reservation => {
                let token = self.grant(
                    key,
                    &entry.resource,
                    entry.owner.clone(),
                    entry.priority,
                    entry.ttl,
                    entry.ttl,
                    None,
                    entry.request_id.clone(),
                    ctx.now,
                );
                self.emit(
                    EventKind::QueueGranted,
                    &entry.resource,
                    &entry.owner.owner,
                    Some(token),
                    Some(&entry.entry_id),
                    ctx.now,
                );
            }
        }
        Some(view)
    }

    /// Makes `owner` the holder with a new lease and token. `hold` is how long the
    /// lease lasts now (the claim window for a waiter, else `ttl`).
    #[allow(clippy::too_many_arguments)]
    fn grant(
        &mut self,
        key: &str,
        resource: &Resource,
        owner: Owner,
        priority: Priority,
        ttl: Duration,
        hold: Duration,
        entry_id: Option<String>,
        request_id: Option<String>,
        now: Timestamp,
    ) -> FencingToken {
        let token = self.next_token(key, now);
        let claim_pending = entry_id.is_some();
        let owner_name = owner.owner.clone();
        let lock = Lock {
            key: resource.lock_key(),
            resource: resource.clone(),
            owner,
            priority,
            fencing_token: token,
            acquired_at: now,
            expires_at: now.add(hold),
            ttl,
            claim_pending,
            lease_id: Some(LeaseId::generate()),
        };
        let rec = self
            .resources
            .entry(key.to_string())
            .or_insert_with(|| ResourceRecord {
                resource: resource.clone(),
                lock: None,
                queue: Vec::new(),
            });
        rec.lock = Some(LockRecord {
            lock,
            entry_id,
            request_id,
        });
        self.emit(
            EventKind::LockAcquired,
            resource,
            &owner_name,
            Some(token),
            None,
            now,
        );
        self.touch(key);
        token
    }

    /// The current lock of `key` with its lease id (after [`State::settle`]).
    pub fn lock(&self, key: &str) -> Option<&Lock> {
        self.resources.get(key)?.lock.as_ref().map(|l| &l.lock)
    }

    /// TryLock's decision (the request is validated, its TTL resolved).
    pub fn try_lock(
        &mut self,
        req: &tflock_core::LockRequest,
        ttl: Duration,
        ctx: &Ctx,
    ) -> Decision {
        use tflock_core::{LockResponse, NotAcquiredReason, QueuePlacement};
        let key = req.resource.storage_key();
        self.settle(&key, ctx);
        let now = ctx.now;

        // A retry (same owner, same request id) is answered from the present
        // (contract rule 8): the live lease it made, its entry still waiting, or
        // `lease_lost` (or the outcome it had); never a lease that has ended. Such an
        // answer changes nothing, except that a reservation's retry with `reserve`
        // renews its deadline. A call answered "held" without a place in line made
        // nothing, so its retry is evaluated like a new request.
        if let Some(rid) = &req.request_id {
            let current = self.lock(&key).cloned();
            let live_grant = self
                .resources
                .get(&key)
                .and_then(|r| r.lock.as_ref())
                .is_some_and(|l| {
                    l.request_id.as_deref() == Some(rid.as_str())
                        && l.lock.owner.owner == req.owner.owner
                        && l.entry_id.is_none()
                });
            let akey = answer_key(&req.owner.owner, rid);
            // Past `request_id_retention` the answer is forgotten even if the sweeper
            // has not removed it yet: the request id is then only a re-lock's proof.
            let kept = self
                .answers
                .get(&akey)
                .filter(|a| a.expires_at > now)
                .map(|a| a.response.clone());
            if let Some(ans) = kept {
                if ans.acquired {
                    let lease = ans.lock.as_ref().and_then(|l| l.lease_id.as_ref());
                    return Decision::Answer(Box::new(match current {
                        Some(cur) if lease.is_some_and(|l| cur.held_by(l)) => {
                            LockResponse::granted(cur)
                        }
                        cur => LockResponse::not_acquired(cur, NotAcquiredReason::LeaseLost),
                    }));
                }
                if let Some(placed) = ans.queue {
                    if self
                        .entry_index
                        .get(&placed.entry_id)
                        .is_some_and(|k| *k == key)
                    {
                        self.renew_reservation(&key, &placed.entry_id, req, ttl, ctx);
                        let position = self.position(&key, &placed.entry_id, ctx);
                        return Decision::Answer(Box::new(LockResponse {
                            acquired: false,
                            lock: current.map(|c| c.public()),
                            queue: Some(QueuePlacement {
                                entry_id: placed.entry_id,
                                position,
                            }),
                            reason: Some(NotAcquiredReason::Held),
                        }));
                    }
                    if live_grant {
                        return Decision::Answer(Box::new(LockResponse::granted(
                            current.expect("a live grant"),
                        )));
                    }
                    return Decision::Answer(Box::new(LockResponse::not_acquired(
                        current,
                        NotAcquiredReason::LeaseLost,
                    )));
                }
                if let Some(reason @ (NotAcquiredReason::Timeout | NotAcquiredReason::Cancelled)) =
                    ans.reason
                {
                    return Decision::Answer(Box::new(LockResponse::not_acquired(current, reason)));
                }
            }
            // The first call still waits in the queue (a waiter's answer is kept only
            // when its call ends): the same entry with its place, never a second one.
            let queued = self.resources.get(&key).and_then(|r| {
                r.queue
                    .iter()
                    .find(|e| {
                        e.request_id.as_deref() == Some(rid.as_str())
                            && e.owner.owner == req.owner.owner
                    })
                    .map(|e| e.entry_id.clone())
            });
            if let Some(entry_id) = queued {
                self.renew_reservation(&key, &entry_id, req, ttl, ctx);
                let position = self.position(&key, &entry_id, ctx);
                return Decision::Answer(Box::new(LockResponse {
                    acquired: false,
                    lock: current.map(|c| c.public()),
                    queue: Some(QueuePlacement { entry_id, position }),
                    reason: Some(NotAcquiredReason::Held),
                }));
            }
            let pending = self
                .resources
                .get(&key)
                .and_then(|r| r.lock.as_ref())
                .filter(|l| {
                    l.request_id.as_deref() == Some(rid.as_str())
                        && l.lock.owner.owner == req.owner.owner
                })
                .and_then(|l| l.entry_id.clone());
            if let Some(entry) = pending {
                // Its waiter's grant is still in the claim window: the retry takes it
                // over.
                if let Some(lock) = self.confirm(&key, &entry, now) {
                    let response = LockResponse::granted(lock);
                    self.remember(req, &response, ctx);
                    return Decision::Answer(Box::new(response));
                }
            }
        }

        let held = self
            .resources
            .get(&key)
            .and_then(|r| r.lock.as_ref())
            .map(|l| l.lock.clone());
        match held {
            None if now < self.hold_until => Decision::Delay {
                until: self.hold_until,
            },
            None => {
                let token = self.grant(
                    &key,
                    &req.resource,
                    req.owner.clone(),
                    req.priority,
                    ttl,
                    ttl,
                    None,
                    req.request_id.clone(),
                    now,
                );
                let _ = token;
                let lock = self.lock(&key).cloned().expect("just granted");
                let response = LockResponse::granted(lock);
                self.remember(req, &response, ctx);
                Decision::Answer(Box::new(response))
            }
            Some(cur) if cur.owner.owner == req.owner.owner => {
                // Re-lock by the holder (Atlantis re-plans): same lease and token, expiry
                // pushed out, an unconfirmed claim confirmed. Owner strings are public,
                // so only the lease id or the grant's request id proves holding it
                // (contract rule 2); without proof, no lease and no queue entry.
                let proven = req.lease_id.as_ref().is_some_and(|l| cur.held_by(l))
                    || req.request_id.as_ref().is_some_and(|rid| {
                        self.resources[&key]
                            .lock
                            .as_ref()
                            .and_then(|l| l.request_id.as_deref())
                            == Some(rid.as_str())
                    });
                if !proven {
                    return Decision::Answer(Box::new(LockResponse::not_acquired(
                        Some(cur),
                        NotAcquiredReason::HeldByOwner,
                    )));
                }
                let rec = self.resources.get_mut(&key).expect("held");
                let l = rec.lock.as_mut().expect("held");
                l.lock.expires_at = l.lock.expires_at.max(now.add(ttl));
                if l.lock.claim_pending {
                    l.lock.claim_pending = false;
                    l.lock.expires_at = l.lock.expires_at.max(now.add(l.lock.ttl));
                }
                l.lock.ttl = l.lock.ttl.max(ttl);
                l.entry_id = None;
                let lock = l.lock.clone();
                self.touch(&key);
                let response = LockResponse::granted(lock);
                self.remember(req, &response, ctx);
                Decision::Answer(Box::new(response))
            }
            Some(cur) => {
                let wait = req
                    .wait
                    .map(|w| ctx.settings.resolve_wait(w))
                    .filter(|d| !d.is_zero());
                if !req.reserve && wait.is_none() {
                    let response = LockResponse::not_acquired(Some(cur), NotAcquiredReason::Held);
                    self.remember(req, &response, ctx);
                    return Decision::Answer(Box::new(response));
                }
                if !ctx.settings.enable_priority_queue {
                    return match wait {
                        Some(w) if ctx.settings.enable_retries && !req.reserve => Decision::Retry {
                            deadline: now.add(w),
                        },
                        _ => Decision::WaitRefused,
                    };
                }
                let rec = self.resources.get(&key).expect("held");
                if req.reserve {
                    // One reservation per owner and resource: reserving again answers
                    // with the place already held. With a request id (another one of
                    // the same owner, e.g. an older one of the Terraform backend's
                    // chain whose answer was forgotten) that answer renews the
                    // reservation like its own retry does and is remembered, so that
                    // this request id's retries are answered from the present (rules
                    // 5 and 8): renewed while it waits, `lease_lost` once it is
                    // granted under another request id.
                    if let Some(entry_id) = rec
                        .queue
                        .iter()
                        .find(|e| {
                            e.kind == EntryKind::Reservation && e.owner.owner == req.owner.owner
                        })
                        .map(|e| e.entry_id.clone())
                    {
                        if req.request_id.is_some() {
                            self.renew_reservation(&key, &entry_id, req, ttl, ctx);
                        }
                        let position = self.position(&key, &entry_id, ctx);
                        let response = LockResponse {
                            acquired: false,
                            lock: Some(cur.public()),
                            queue: Some(QueuePlacement { entry_id, position }),
                            reason: Some(NotAcquiredReason::Held),
                        };
                        self.remember(req, &response, ctx);
                        return Decision::Answer(Box::new(response));
                    }
                }
                if rec.queue.len() >= ctx.settings.max_queue_size {
                    return Decision::QueueFull;
                }
                let (kind, deadline) = if req.reserve {
                    (
                        EntryKind::Reservation,
                        now.add(ctx.settings.resolve_reservation(req.wait)),
                    )
                } else {
                    (EntryKind::Waiter, now.add(wait.expect("checked above")))
                };
                let entry = QueueEntry {
                    entry_id: tflock_core::random_hex(16),
                    resource: req.resource.clone(),
                    owner: req.owner.clone(),
                    kind,
                    priority: req.priority,
                    enqueued_at: now,
                    deadline,
                    ttl,
                    request_id: req.request_id.clone(),
                };
                let entry_id = entry.entry_id.clone();
                self.emit(
                    EventKind::QueueEntered,
                    &req.resource,
                    &req.owner.owner,
                    None,
                    Some(&entry_id),
                    now,
                );
                self.entry_index.insert(entry_id.clone(), key.clone());
                self.resources
                    .get_mut(&key)
                    .expect("held")
                    .queue
                    .push(entry);
                self.touch(&key);
                if req.reserve {
                    let position = self.position(&key, &entry_id, ctx);
                    let response = LockResponse {
                        acquired: false,
                        lock: Some(cur.public()),
                        queue: Some(QueuePlacement { entry_id, position }),
                        reason: Some(NotAcquiredReason::Held),
                    };
                    self.remember(req, &response, ctx);
                    Decision::Answer(Box::new(response))
                } else {
                    let (tx, rx) = oneshot::channel();
                    self.waiters.insert(entry_id.clone(), tx);
                    Decision::Wait {
                        key,
                        entry_id,
                        wake: rx,
                        deadline,
                    }
                }
            }
        }
    }

    /// A reservation's retry by its owner (`reserve`, same request id) while it still
    /// waits renews it (contract rules 5 and 8): its deadline becomes `max(deadline,
    /// now + the retry's reservation lifetime)`, so a polling client keeps its place
    /// only while it polls. Entry, place and `enqueued_at` stay; a waiter's entry and
    /// a retry without `reserve` change nothing.
    fn renew_reservation(
        &mut self,
        key: &str,
        entry_id: &str,
        req: &tflock_core::LockRequest,
        ttl: Duration,
        ctx: &Ctx,
    ) {
        if !req.reserve {
            return;
        }
        let until = ctx.now.add(ctx.settings.resolve_reservation(req.wait));
        let Some(entry) = self
            .resources
            .get_mut(key)
            .and_then(|r| r.queue.iter_mut().find(|e| e.entry_id == entry_id))
        else {
            return;
        };
        if entry.kind != EntryKind::Reservation || (until <= entry.deadline && ttl <= entry.ttl) {
            return;
        }
        // The renewal also raises the TTL the grant will get: a place first taken for a
        // short while (a Terraform client's first LOCK, which may never come back) is
        // granted only for that while unless its owner came back for it.
        entry.deadline = entry.deadline.max(until);
        entry.ttl = entry.ttl.max(ttl);
        // Persisted like any change, and the sweeper's due time follows.
        self.touch(key);
    }

    fn position(&self, key: &str, entry_id: &str, ctx: &Ctx) -> usize {
        let Some(rec) = self.resources.get(key) else {
            return 0;
        };
        queue::grant_order(&rec.queue, ctx.now, &ctx.policy)
            .iter()
            .position(|e| e.entry_id == entry_id)
            .map_or(0, |p| p + 1)
    }

    /// Keeps the answer to a request with a request id for its retries.
    pub fn remember(
        &mut self,
        req: &tflock_core::LockRequest,
        response: &tflock_core::LockResponse,
        ctx: &Ctx,
    ) {
        let Some(rid) = &req.request_id else { return };
        let key = answer_key(&req.owner.owner, rid);
        let expires_at = ctx.now.add(ctx.settings.request_id_retention);
        if let Some(old) = self.answers.insert(
            key.clone(),
            StoredAnswer {
                response: response.clone(),
                expires_at,
            },
        ) {
            self.answer_due.remove(&(old.expires_at, key.clone()));
        }
        self.answer_due.insert((expires_at, key.clone()));
        self.dirty_answers.insert(key);
        self.seq += 1;
    }

    /// A woken waiter confirms its grant: the lease runs for its full TTL from now.
    /// `None` when the grant is no longer this entry's (its claim window ran out).
    pub fn confirm(&mut self, key: &str, entry_id: &str, now: Timestamp) -> Option<Lock> {
        let rec = self.resources.get_mut(key)?;
        let l = rec.lock.as_mut()?;
        if l.entry_id.as_deref() != Some(entry_id) {
            return None;
        }
        if l.lock.claim_pending {
            l.lock.claim_pending = false;
            l.lock.expires_at = now.add(l.lock.ttl);
        }
        l.entry_id = None;
        let lock = l.lock.clone();
        self.touch(key);
        Some(lock)
    }

    /// Whether the lock of `key` is the (unconfirmed) grant to `entry_id`.
    pub fn granted_to(&self, key: &str, entry_id: &str) -> bool {
        self.resources
            .get(key)
            .and_then(|r| r.lock.as_ref())
            .is_some_and(|l| l.entry_id.as_deref() == Some(entry_id))
    }

    /// Removes a queue entry; returns it.
    pub fn remove_entry(&mut self, entry_id: &str, now: Timestamp) -> Option<QueueEntry> {
        let key = self.entry_index.remove(entry_id)?;
        let rec = self.resources.get_mut(&key)?;
        let idx = rec.queue.iter().position(|e| e.entry_id == entry_id)?;
        let e = rec.queue.remove(idx);
        self.waiters.remove(entry_id);
        self.emit(
            EventKind::QueueLeft,
            &e.resource,
            &e.owner.owner,
            None,
            Some(&e.entry_id),
            now,
        );
        self.touch(&key);
        self.gc(&key);
        Some(e)
    }

    /// A waiter's call went away (its future was dropped). Its entry goes; an
    /// unconfirmed grant is released at once, unless the call had a request id, in
    /// which case the claim window stays open for a retry.
    pub fn abandon_waiter(&mut self, key: &str, entry_id: &str, has_request_id: bool, ctx: &Ctx) {
        self.waiters.remove(entry_id);
        if self.remove_entry(entry_id, ctx.now).is_some() {
            return;
        }
        if !has_request_id && self.granted_to(key, entry_id) {
            self.release(key, EventKind::LockReleased, ctx);
        }
    }

    /// A waiter's call went away after it confirmed its grant in memory but before
    /// that confirmation was durable and answered: nobody has the lease. Without a
    /// request id the lease ends at once (and the lock is handed on); with one, the
    /// grant goes back to a pending claim that ends `claim_timeout` from now unless a
    /// retry with that request id takes it over (the answer kept by the confirmation
    /// is forgotten, so that retry finds the claim). Nothing happens when the lock is
    /// no longer under `lease`.
    pub fn abandon_confirmed(
        &mut self,
        key: &str,
        entry_id: &str,
        lease: &LeaseId,
        request_id: Option<&str>,
        ctx: &Ctx,
    ) {
        let Some(l) = self.resources.get_mut(key).and_then(|r| r.lock.as_mut()) else {
            return;
        };
        if !l.lock.held_by(lease) {
            return;
        }
        let Some(rid) = request_id else {
            self.release(key, EventKind::LockReleased, ctx);
            return;
        };
        l.lock.claim_pending = true;
        l.lock.expires_at = l
            .lock
            .expires_at
            .min(ctx.now.add(ctx.settings.claim_timeout));
        l.entry_id = Some(entry_id.to_string());
        let akey = answer_key(&l.lock.owner.owner, rid);
        if let Some(old) = self.answers.remove(&akey) {
            self.answer_due.remove(&(old.expires_at, akey.clone()));
            self.dirty_answers.insert(akey);
        }
        self.touch(key);
    }

    /// Whether `entry_id` still waits in the queue of `key` (not granted, not gone).
    pub fn waits_in(&self, key: &str, entry_id: &str) -> bool {
        self.entry_index.get(entry_id).is_some_and(|k| k == key) && !self.granted_to(key, entry_id)
    }

    /// Cancels an entry on request; a blocked waiter is told.
    pub fn cancel_entry(&mut self, entry_id: &str, ctx: &Ctx) -> Option<QueueEntryView> {
        let key = self.entry_index.get(entry_id)?.clone();
        let position = self.position(&key, entry_id, ctx);
        let tx = self.waiters.remove(entry_id);
        let e = self.remove_entry(entry_id, ctx.now)?;
        if let Some(tx) = tx {
            let _ = tx.send(WaiterWake::Cancelled);
        }
        Some(QueueEntryView {
            effective_priority: ctx
                .policy
                .effective_priority(e.priority, e.enqueued_at, ctx.now),
            position,
            waited: ctx.now.since(e.enqueued_at),
            entry: e.public(),
        })
    }

    /// Ends the current lease and hands the lock on. Returns the ended lock and the
    /// entry it went to.
    pub fn release(
        &mut self,
        key: &str,
        event: EventKind,
        ctx: &Ctx,
    ) -> Option<(Lock, Option<QueueEntryView>)> {
        let rec = self.resources.get_mut(key)?;
        let old = rec.lock.take()?;
        let resource = rec.resource.clone();
        self.emit(
            event,
            &resource,
            &old.lock.owner.owner,
            Some(old.lock.fencing_token),
            None,
            ctx.now,
        );
        self.touch(key);
        let granted = self.handoff(key, ctx);
        self.gc(key);
        Some((old.lock, granted))
    }

    /// Refreshes a lease: expiry now + `ttl`.
    pub fn refresh(
        &mut self,
        key: &str,
        lease: &LeaseId,
        ttl: Duration,
        now: Timestamp,
    ) -> Option<Lock> {
        let l = self.resources.get_mut(key)?.lock.as_mut()?;
        if !l.lock.held_by(lease) {
            return None;
        }
        l.lock.expires_at = now.add(ttl);
        l.lock.ttl = ttl;
        l.lock.claim_pending = false;
        l.entry_id = None;
        let lock = l.lock.clone();
        self.touch(key);
        Some(lock)
    }

    /// Gives the lock to `to`: new lease id and token, same TTL from now.
    pub fn transfer(&mut self, key: &str, to: Owner, now: Timestamp) -> Option<Lock> {
        let token = self.next_token(key, now);
        let rec = self.resources.get_mut(key)?;
        let l = rec.lock.as_mut()?;
        let from = l.lock.owner.owner.clone();
        l.lock.owner = to;
        l.lock.fencing_token = token;
        l.lock.lease_id = Some(LeaseId::generate());
        l.lock.acquired_at = now;
        l.lock.expires_at = now.add(l.lock.ttl);
        l.lock.claim_pending = false;
        l.entry_id = None;
        l.request_id = None;
        let lock = l.lock.clone();
        let resource = rec.resource.clone();
        let _ = from;
        self.emit(
            EventKind::LockTransferred,
            &resource,
            &lock.owner.owner,
            Some(token),
            None,
            now,
        );
        self.touch(key);
        Some(lock)
    }

    /// Every resource key whose lock or queue has something of `repo` and `pull`.
    pub fn keys_of_repo(&self, repo: &str) -> Vec<String> {
        let start = Resource {
            repo: repo.to_string(),
            path: String::new(),
            workspace: String::new(),
            project_name: String::new(),
        }
        .storage_key();
        // Storage keys of one repo are contiguous: they start with repo + separator.
        let prefix = format!("{repo}{}", tflock_core::resource::STORAGE_KEY_SEPARATOR);
        self.resources
            .range(start..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Resources whose due time has come, for the sweeper.
    pub fn due_keys(&self, now: Timestamp) -> Vec<String> {
        self.due
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Forgets answers past their retention.
    pub fn expire_answers(&mut self, now: Timestamp) {
        while let Some((t, key)) = self.answer_due.first().cloned() {
            if t > now {
                break;
            }
            self.answer_due.pop_first();
            self.answers.remove(&key);
            self.dirty_answers.insert(key);
            self.seq += 1;
        }
    }

    /// Tells every blocked waiter the backend is closing.
    pub fn close_waiters(&mut self) {
        for (_, tx) in self.waiters.drain() {
            let _ = tx.send(WaiterWake::Closed);
        }
    }

    /// Number of queue entries over all resources.
    pub fn queue_depth(&self) -> u64 {
        self.entry_index.len() as u64
    }
}

impl State {
    /// Everything, for `locks export`: every resource with a row or a token.
    pub fn export(&self, now: Timestamp) -> Vec<tflock_core::ResourceSnapshot> {
        let mut keys: BTreeSet<&String> = self.resources.keys().collect();
        keys.extend(self.tokens.keys());
        keys.into_iter()
            .filter_map(|key| {
                let rec = self.resources.get(key);
                let resource = rec
                    .map(|r| r.resource.clone())
                    .or_else(|| Resource::from_storage_key(key))?;
                Some(tflock_core::ResourceSnapshot {
                    resource,
                    lock: rec
                        .and_then(|r| r.lock.as_ref())
                        .map(|l| l.lock.clone())
                        .filter(|l| !l.expired_at(now)),
                    queue: rec.map(|r| r.queue.clone()).unwrap_or_default(),
                    last_token: self.tokens.get(key).copied().unwrap_or(0),
                })
            })
            .collect()
    }

    /// Installs a snapshot (see [`tflock_core::Backend::import`]). With
    /// `options.dry_run` only counts.
    pub fn import(
        &mut self,
        snapshot: &tflock_core::Snapshot,
        options: tflock_core::ImportOptions,
        ctx: &Ctx,
    ) -> Result<tflock_core::ImportReport, tflock_core::InvalidRequest> {
        let mut report = tflock_core::ImportReport {
            dry_run: options.dry_run,
            ..Default::default()
        };
        // Check everything first: a bad snapshot changes nothing.
        let mut checked = Vec::with_capacity(snapshot.resources.len());
        for (i, rs) in snapshot.resources.iter().enumerate() {
            let resource = rs
                .resource
                .clone()
                .validate(&format!("resources[{i}].resource"))?;
            checked.push((resource, rs));
        }
        let apply = !options.dry_run;
        for (resource, rs) in checked {
            let key = resource.storage_key();
            if apply {
                self.settle(&key, ctx);
            }
            let before = self.tokens.get(&key).copied().unwrap_or(0);
            let mut counter = before.max(rs.last_token);
            if let Some(l) = &rs.lock {
                let current = self.lock(&key).cloned();
                if l.expired_at(ctx.now) {
                    report.expired += 1;
                } else if current
                    .as_ref()
                    .is_some_and(|c| c.lease_id.is_some() && c.lease_id == l.lease_id)
                {
                    report.unchanged += 1;
                } else if current.is_some() && !options.overwrite {
                    report.conflicts.push(resource.clone());
                } else {
                    let mut lock = l.clone();
                    lock.resource = resource.clone();
                    lock.key = resource.lock_key();
                    lock.claim_pending = false;
                    if lock.lease_id.is_none() {
                        lock.lease_id = Some(LeaseId::generate());
                    }
                    if lock.fencing_token.0 <= before {
                        lock.fencing_token = FencingToken::next_after(counter, ctx.now);
                        counter = lock.fencing_token.0;
                        report.retokened += 1;
                    }
                    counter = counter.max(lock.fencing_token.0);
                    report.imported += 1;
                    if apply {
                        let owner = lock.owner.owner.clone();
                        let token = lock.fencing_token;
                        let rec =
                            self.resources
                                .entry(key.clone())
                                .or_insert_with(|| ResourceRecord {
                                    resource: resource.clone(),
                                    lock: None,
                                    queue: Vec::new(),
                                });
                        rec.lock = Some(LockRecord {
                            lock,
                            entry_id: None,
                            request_id: None,
                        });
                        self.emit(
                            EventKind::LockAcquired,
                            &resource,
                            &owner,
                            Some(token),
                            None,
                            ctx.now,
                        );
                        self.touch(&key);
                    }
                }
            }
            for e in &rs.queue {
                // Waiters were live calls of the exporting process: they cannot be
                // carried over. Reservations are.
                if e.kind != EntryKind::Reservation
                    || self.entry_index.contains_key(&e.entry_id)
                    || e.deadline <= ctx.now
                {
                    continue;
                }
                report.queued += 1;
                if apply {
                    let mut e = e.clone();
                    e.resource = resource.clone();
                    let rec = self
                        .resources
                        .entry(key.clone())
                        .or_insert_with(|| ResourceRecord {
                            resource: resource.clone(),
                            lock: None,
                            queue: Vec::new(),
                        });
                    rec.queue.push(e.clone());
                    self.entry_index.insert(e.entry_id.clone(), key.clone());
                    self.emit(
                        EventKind::QueueEntered,
                        &resource,
                        &e.owner.owner,
                        None,
                        Some(&e.entry_id),
                        ctx.now,
                    );
                    self.touch(&key);
                }
            }
            if apply {
                if counter > before {
                    self.tokens.insert(key.clone(), counter);
                    self.dirty_tokens.insert(key.clone());
                    self.seq += 1;
                }
                self.settle(&key, ctx);
            }
        }
        Ok(report)
    }
}
