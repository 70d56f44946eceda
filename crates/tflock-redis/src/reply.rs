//! The scripts' JSON replies and their translation into the core's types.
//!
//! Scripts encode with Redis's `cjson`, which has two quirks handled here: numbers
//! that must stay exact travel as strings ([`Num`]), and an empty Lua table encodes
//! as `{}` even where a list is meant ([`lua_vec`]).

use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use tflock_core::{
    BackendError, EntryKind, EventKind, FencingToken, LeaseId, Lock, LockEvent, LockResponse,
    NotAcquiredReason, Owner, Priority, QueueEntry, QueueEntryView, QueuePlacement, Resource,
    Timestamp,
};

/// A non-negative integer sent as a string (or a small number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            U(u64),
            F(f64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) if s.is_empty() => Ok(Num(0)),
            Raw::S(s) => s
                .parse::<u64>()
                .or_else(|_| s.parse::<f64>().map(|f| f.max(0.0) as u64))
                .map(Num)
                .map_err(serde::de::Error::custom),
            Raw::U(u) => Ok(Num(u)),
            Raw::F(f) => Ok(Num(f.max(0.0) as u64)),
        }
    }
}

/// A list that an empty Lua table may have encoded as `{}`.
pub fn lua_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(serde::de::Error::custom))
            .collect(),
        serde_json::Value::Object(o) if o.is_empty() => Ok(Vec::new()),
        serde_json::Value::Null => Ok(Vec::new()),
        other => Err(serde::de::Error::custom(format!(
            "expected a list, got {other}"
        ))),
    }
}

/// What every reply carries besides its own fields.
#[derive(Debug, Deserialize)]
pub struct Reply<T> {
    #[serde(flatten)]
    pub body: T,
    #[serde(default, deserialize_with = "lua_vec")]
    pub ev: Vec<RawEvent>,
    #[serde(default)]
    pub ho: u64,
    /// The script's clock.
    pub now: Num,
    /// Why publishing the events failed (the change itself was made).
    #[serde(default)]
    pub puberr: Option<String>,
}

/// Decodes a script's reply.
pub fn decode<T: DeserializeOwned>(script: &str, json: &str) -> Result<Reply<T>, BackendError> {
    serde_json::from_str(json).map_err(|e| {
        BackendError::Internal(format!("{script}: cannot read the reply ({e}): {json}"))
    })
}

fn resource_of(sk: &str) -> Result<Resource, BackendError> {
    crate::keys::resource_of_key(sk)
        .ok_or_else(|| BackendError::Internal(format!("malformed storage key {sk:?}")))
}

fn owner_of(meta: &str) -> Result<Owner, BackendError> {
    serde_json::from_str(meta)
        .map_err(|e| BackendError::Internal(format!("malformed owner metadata: {e}")))
}

/// An event as a script records it.
#[derive(Debug, Deserialize)]
pub struct RawEvent {
    k: String,
    sk: String,
    o: String,
    #[serde(default)]
    t: Option<Num>,
    #[serde(default)]
    e: Option<String>,
    at: Num,
}

impl RawEvent {
    pub fn into_event(self) -> Result<LockEvent, BackendError> {
        let event = match self.k.as_str() {
            "lock.acquired" => EventKind::LockAcquired,
            "lock.released" => EventKind::LockReleased,
            "lock.expired" => EventKind::LockExpired,
            "lock.transferred" => EventKind::LockTransferred,
            "queue.entered" => EventKind::QueueEntered,
            "queue.left" => EventKind::QueueLeft,
            "queue.granted" => EventKind::QueueGranted,
            other => return Err(BackendError::Internal(format!("unknown event {other}"))),
        };
        let resource = resource_of(&self.sk)?;
        Ok(LockEvent {
            event,
            key: resource.lock_key(),
            resource,
            owner: self.o,
            fencing_token: self.t.map(|t| FencingToken(t.0)),
            entry_id: self.e,
            at: Timestamp(self.at.0),
        })
    }

    pub fn is_expiry(&self) -> bool {
        self.k == "lock.expired"
    }

    /// Whether a lease ended (released or expired): retry loops look again.
    pub fn ends_a_lease(&self) -> bool {
        self.k == "lock.released" || self.k == "lock.expired"
    }

    /// The resource key the event is about.
    pub fn resource_key(&self) -> &str {
        &self.sk
    }
}

/// A lock as a script shows it (`lease` only for the holder), or as listing reads it
/// from the lease hash ([`RawLock::from_fields`]).
#[derive(Debug, Clone, Deserialize)]
pub struct RawLock {
    pub sk: String,
    meta: String,
    prio: Num,
    token: Num,
    acquired: Num,
    expires: Num,
    ttl: Num,
    claim: String,
    #[serde(default)]
    pub lease: Option<String>,
}

/// The lease hash's fields listing reads ([`RawLock::from_fields`]), in the order it
/// reads them.
pub const LISTED_FIELDS: [&str; 7] = [
    "meta", "prio", "token", "acquired", "expires", "ttl", "claim",
];

impl RawLock {
    /// The lock of `sk` from an HMGET of [`LISTED_FIELDS`]; `None` when the hash is
    /// missing (a resource with a queue only, or a lock ended since its key was read).
    pub fn from_fields(
        sk: String,
        fields: &mut impl Iterator<Item = Option<String>>,
    ) -> Result<Option<RawLock>, BackendError> {
        let mut next = || fields.next().flatten();
        let (Some(meta), prio, token, acquired, expires, ttl, claim) =
            (next(), next(), next(), next(), next(), next(), next())
        else {
            return Ok(None);
        };
        let num = |v: Option<String>| -> Result<Num, BackendError> {
            let v = v.unwrap_or_default();
            if v.is_empty() {
                return Ok(Num(0));
            }
            v.parse().map(Num).map_err(|_| {
                BackendError::Internal(format!("malformed lock field of {sk:?}: {v:?}"))
            })
        };
        Ok(Some(RawLock {
            prio: num(prio)?,
            token: num(token)?,
            acquired: num(acquired)?,
            expires: num(expires)?,
            ttl: num(ttl)?,
            claim: claim.unwrap_or_default(),
            meta,
            lease: None,
            sk,
        }))
    }

    /// When the lease ends (µs).
    pub fn expires(&self) -> u64 {
        self.expires.0
    }

    pub fn into_lock(self) -> Result<Lock, BackendError> {
        let resource = resource_of(&self.sk)?;
        Ok(Lock {
            key: resource.lock_key(),
            resource,
            owner: owner_of(&self.meta)?,
            priority: Priority::from_rank(self.prio.0),
            fencing_token: FencingToken(self.token.0),
            acquired_at: Timestamp(self.acquired.0),
            expires_at: Timestamp(self.expires.0),
            ttl: Duration::from_micros(self.ttl.0),
            claim_pending: self.claim == "1",
            lease_id: self.lease.map(LeaseId),
        })
    }
}

/// Locks as the scripts show them, into the core's.
pub fn into_locks(raw: Vec<RawLock>) -> Result<Vec<Lock>, BackendError> {
    raw.into_iter().map(RawLock::into_lock).collect()
}

/// A queue entry as stored.
#[derive(Debug, Clone, Deserialize)]
pub struct RawEntry {
    id: String,
    kind: String,
    prio: Num,
    enq: Num,
    dl: Num,
    ttl: Num,
    #[serde(default)]
    rid: String,
    meta: String,
}

impl RawEntry {
    pub fn into_entry(self, sk: &str) -> Result<QueueEntry, BackendError> {
        Ok(QueueEntry {
            entry_id: self.id,
            resource: resource_of(sk)?,
            owner: owner_of(&self.meta)?,
            kind: if self.kind == "r" {
                EntryKind::Reservation
            } else {
                EntryKind::Waiter
            },
            priority: Priority::from_rank(self.prio.0),
            enqueued_at: Timestamp(self.enq.0),
            deadline: Timestamp(self.dl.0),
            ttl: Duration::from_micros(self.ttl.0),
            request_id: (!self.rid.is_empty()).then_some(self.rid),
        })
    }
}

/// A queue entry with its place, as a script computed it.
#[derive(Debug, Clone, Deserialize)]
pub struct RawEntryView {
    sk: String,
    e: RawEntry,
    eff: u64,
    pos: usize,
    waited: Num,
}

impl RawEntryView {
    /// The view shown to callers: without the entry's `request_id` (a secret).
    pub fn into_view(self) -> Result<QueueEntryView, BackendError> {
        Ok(QueueEntryView {
            entry: self.e.into_entry(&self.sk)?.public(),
            effective_priority: Priority::from_rank(self.eff),
            position: self.pos,
            waited: Duration::from_micros(self.waited.0),
        })
    }
}

/// An entry with its storage key (UnlockByPull's cancelled entries).
#[derive(Debug, Clone, Deserialize)]
pub struct RawKeyedEntry {
    pub sk: String,
    pub e: RawEntry,
}

/// A reservation's place.
#[derive(Debug, Clone, Deserialize)]
pub struct RawPlacement {
    id: String,
    pos: usize,
}

/// TryLock's answer as a script builds (and keeps) it.
#[derive(Debug, Clone, Deserialize)]
pub struct RawAnswer {
    pub acq: bool,
    #[serde(default)]
    pub lock: Option<RawLock>,
    #[serde(default)]
    q: Option<RawPlacement>,
    #[serde(default)]
    reason: Option<String>,
}

impl RawAnswer {
    pub fn into_response(self) -> Result<LockResponse, BackendError> {
        let reason = match self.reason.as_deref() {
            None => None,
            Some("held") => Some(NotAcquiredReason::Held),
            Some("held_by_owner") => Some(NotAcquiredReason::HeldByOwner),
            Some("lease_lost") => Some(NotAcquiredReason::LeaseLost),
            Some("timeout") => Some(NotAcquiredReason::Timeout),
            Some("cancelled") => Some(NotAcquiredReason::Cancelled),
            Some(other) => {
                return Err(BackendError::Internal(format!("unknown reason {other}")));
            }
        };
        Ok(LockResponse {
            acquired: self.acq,
            lock: self.lock.map(RawLock::into_lock).transpose()?,
            queue: self.q.map(|q| QueuePlacement {
                entry_id: q.id,
                position: q.pos,
            }),
            reason: if self.acq { None } else { reason },
        })
    }
}

/// try_lock.lua's reply: its outcome (`r`) and what it found of the bucket's
/// generation marker.
#[derive(Debug, Deserialize)]
pub struct TryLockReply {
    #[serde(flatten)]
    pub outcome: TryLockOutcome,
    /// `missing`: this call found the bucket's generation marker gone (a data loss).
    #[serde(default)]
    pub lost: Option<String>,
}

/// try_lock.lua's outcomes, by `r`.
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum TryLockOutcome {
    /// `ans`: the answer.
    #[serde(rename = "ans")]
    Answer {
        a: RawAnswer,
        /// A new grant to this caller: with `min_replicas_ack` it is rolled back when
        /// `WAIT` does not confirm it.
        #[serde(default)]
        fresh: bool,
        /// The call changed the live lease (a re-lock) or renewed a reservation's
        /// deadline: with `min_replicas_ack` it is reported only once `WAIT`
        /// confirms it (it cannot be rolled back).
        #[serde(default)]
        chg: bool,
    },
    /// `wait`: queued as a waiter (or a retry of a call that still waits): the
    /// entry's id and deadline.
    #[serde(rename = "wait")]
    Wait {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        dl: Num,
    },
    /// `full`: the queue is full.
    #[serde(rename = "full")]
    Full,
    /// `retry`: no queue, but retries are enabled: the client retries.
    #[serde(rename = "retry")]
    Retry,
    /// `refused`: waiting needs a queue or retries.
    #[serde(rename = "refused")]
    Refused,
    /// `delay`: the lock_delay after a data loss runs until `hold` (µs); nothing
    /// was changed.
    #[serde(rename = "delay")]
    Delay {
        #[serde(default)]
        hold: Num,
    },
    /// `layout`: the bucket's data is in an older key layout (upgrade.lua brings it
    /// up); nothing was changed.
    #[serde(rename = "layout")]
    Layout,
}

/// wait_end.lua's reply, by `r`.
// Decoded once per call and taken apart at once: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum WaitEndReply {
    /// `queued`: keep waiting.
    #[serde(rename = "queued")]
    Queued,
    /// `ans`: the answer; `fresh` when this call confirmed a grant.
    #[serde(rename = "ans")]
    Answer {
        a: RawAnswer,
        #[serde(default)]
        fresh: bool,
    },
}

/// generation.lua's reply: the bucket's generation marker as this call left it.
#[derive(Debug, Deserialize)]
pub struct GenerationReply {
    /// The marker's id.
    pub id: String,
    /// What this call wrote as this server's `seen` field (sent back next time).
    pub seen: String,
    /// `''`, or what showed a loss: `missing`, `changed`, `rolled_back`.
    #[serde(default)]
    pub lost: String,
    /// When this generation's loss was found (µs), 0 for none.
    pub lost_at: Num,
    /// The end of this generation's lock_delay (µs), 0 for none.
    pub hold: Num,
}

/// unlock.lua's reply, by `r`.
// Decoded once per call and taken apart at once: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum UnlockReply {
    /// `nf`: not locked.
    #[serde(rename = "nf")]
    NotFound,
    /// `no`: held under another lease.
    #[serde(rename = "no")]
    NotOwner,
    /// `changed`: held with another token, `cur`.
    #[serde(rename = "changed")]
    Changed {
        #[serde(default)]
        cur: Num,
    },
    /// `ok`: the ended lock (public) and the entry it went to.
    #[serde(rename = "ok")]
    Released {
        released: RawLock,
        #[serde(default)]
        to: Option<RawEntryView>,
    },
}

/// refresh.lua's reply, by `r`.
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum RefreshReply {
    /// `ok`: the refreshed lock.
    #[serde(rename = "ok")]
    Refreshed { lock: RawLock },
    /// `lost`: no such lease.
    #[serde(rename = "lost")]
    Lost,
}

/// transfer.lua's reply, by `r`.
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum TransferReply {
    /// `ok`: the transferred lock (with the new lease).
    #[serde(rename = "ok")]
    Transferred { lock: RawLock },
    /// `nf`: not locked.
    #[serde(rename = "nf")]
    NotFound,
    /// `lost`: held under another lease.
    #[serde(rename = "lost")]
    Lost,
}

/// get_lock.lua's reply: the lock, if any.
#[derive(Debug, Deserialize)]
pub struct LockReply {
    #[serde(default)]
    pub lock: Option<RawLock>,
}

/// Replies with only `r` (abandon, rollback); nobody reads it.
#[derive(Debug, Deserialize)]
pub struct StatusReply {
    #[serde(default)]
    pub r: String,
}

/// cancel.lua's reply, by `r`.
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum CancelReply {
    /// `nf`: no such entry (here, or in the expected queue).
    #[serde(rename = "nf")]
    NotFound,
    /// `ok`: the removed entry's view (its position before the removal).
    #[serde(rename = "ok")]
    Cancelled { entry: RawEntryView },
}

/// unlock_pull.lua's reply.
#[derive(Debug, Deserialize)]
pub struct PullReply {
    #[serde(default, deserialize_with = "lua_vec")]
    pub released: Vec<RawLock>,
    #[serde(default, deserialize_with = "lua_vec")]
    pub cancelled: Vec<RawKeyedEntry>,
}

/// sweep.lua's reply.
#[derive(Debug, Deserialize)]
pub struct SweepReply {
    pub next: Num,
    #[serde(default)]
    pub more: bool,
    /// Items handled (expired leases, dropped entries).
    #[serde(default)]
    pub done: Num,
    /// A fenced sweep was refused: a leader with a higher epoch (`fence`) acted here.
    #[serde(default)]
    pub stale: bool,
    #[serde(default)]
    pub fence: Num,
}

/// fence.lua's reply, by `r`: the bucket's fence either way.
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum FenceReply {
    /// `ok`: fenced for this epoch.
    #[serde(rename = "ok")]
    Fenced { fence: Num },
    /// `stale`: a higher epoch has acted here.
    #[serde(rename = "stale")]
    Stale { fence: Num },
}

/// upgrade.lua's reply, by `r`.
#[derive(Debug, Deserialize)]
#[serde(tag = "r")]
pub enum UpgradeReply {
    /// `current`: the bucket is at this build's layout; nothing to do.
    #[serde(rename = "current")]
    Current,
    /// `need`: these layout-1 storage keys need their layout-2 keys; nothing was
    /// changed.
    #[serde(rename = "need")]
    Need {
        #[serde(default, deserialize_with = "lua_vec")]
        sks: Vec<String>,
    },
    /// `ok`: upgraded (or counted, in a dry run).
    #[serde(rename = "ok")]
    Upgraded {
        #[serde(default)]
        resources: Num,
        #[serde(default)]
        entries: Num,
        #[serde(default)]
        tokens: Num,
        #[serde(default)]
        conflicts: Num,
    },
}

/// A message another backend published with its script's events (see
/// `publish` in `prelude.lua`).
#[derive(Debug, Deserialize)]
pub struct Published {
    /// Unique per message: a message that arrives twice is relayed once.
    pub id: String,
    /// The publishing backend's instance id: its own messages are skipped.
    pub o: String,
    #[serde(default, deserialize_with = "lua_vec")]
    pub ev: Vec<RawEvent>,
    /// The leader's epoch when a fenced duty caused the events.
    #[serde(default)]
    pub ep: Option<Num>,
    /// A leader raised the bucket's fence to this epoch.
    #[serde(default)]
    pub fence: Option<Num>,
}

/// queue_status.lua's reply.
#[derive(Debug, Deserialize)]
pub struct QueueReply {
    #[serde(default)]
    pub lock: Option<RawLock>,
    #[serde(default, deserialize_with = "lua_vec")]
    pub entries: Vec<RawEntry>,
}

/// One resource's queue in user_queue.lua's reply.
#[derive(Debug, Deserialize)]
pub struct RawQueue {
    pub sk: String,
    #[serde(deserialize_with = "lua_vec")]
    pub entries: Vec<RawEntry>,
}

/// user_queue.lua's reply.
#[derive(Debug, Deserialize)]
pub struct UserQueueReply {
    #[serde(default, deserialize_with = "lua_vec")]
    pub queues: Vec<RawQueue>,
}

/// stats.lua's reply.
#[derive(Debug, Deserialize)]
pub struct StatsReply {
    pub locks: u64,
    pub entries: u64,
}

/// One resource in export.lua's reply.
#[derive(Debug, Deserialize)]
pub struct RawExported {
    pub sk: String,
    #[serde(default)]
    pub lock: Option<RawLock>,
    #[serde(default, deserialize_with = "lua_vec")]
    pub entries: Vec<RawEntry>,
    pub token: Num,
}

impl RawExported {
    pub fn into_snapshot(self) -> Result<tflock_core::ResourceSnapshot, BackendError> {
        let mut queue = self
            .entries
            .into_iter()
            .map(|e| e.into_entry(&self.sk))
            .collect::<Result<Vec<_>, _>>()?;
        // Stored in a hash (no order): the embedded store keeps them in the order
        // they joined.
        queue.sort_by(|a, b| (a.enqueued_at, &a.entry_id).cmp(&(b.enqueued_at, &b.entry_id)));
        Ok(tflock_core::ResourceSnapshot {
            resource: resource_of(&self.sk)?,
            lock: self.lock.map(RawLock::into_lock).transpose()?,
            queue,
            last_token: self.token.0,
        })
    }
}

/// export.lua's reply.
#[derive(Debug, Deserialize)]
pub struct ExportReply {
    #[serde(default, deserialize_with = "lua_vec")]
    pub items: Vec<RawExported>,
    pub done: bool,
}

/// import.lua's reply.
#[derive(Debug, Deserialize)]
pub struct ImportReply {
    pub imported: usize,
    pub unchanged: usize,
    pub expired: usize,
    pub queued: usize,
    pub retokened: usize,
    pub conflict: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lua_tables_are_empty_lists() {
        let r: Reply<PullReply> = decode(
            "t",
            r#"{"released":{},"cancelled":{},"ev":{},"ho":0,"now":"17"}"#,
        )
        .unwrap();
        assert!(r.body.released.is_empty() && r.ev.is_empty());
        assert_eq!(r.now, Num(17));
    }

    #[test]
    fn numbers_stay_exact() {
        let r: Reply<SweepReply> = decode(
            "t",
            r#"{"next":"1795000000123457","now":"1795000000123456"}"#,
        )
        .unwrap();
        assert_eq!(r.body.next, Num(1_795_000_000_123_457));
    }

    #[test]
    fn try_lock_outcomes_decode_by_tag() {
        let r: Reply<TryLockReply> =
            decode("t", r#"{"r":"full","ev":{},"ho":0,"now":"1"}"#).unwrap();
        assert!(matches!(r.body.outcome, TryLockOutcome::Full) && r.body.lost.is_none());
        let r: Reply<TryLockReply> = decode(
            "t",
            r#"{"r":"delay","hold":"1795000000123457","lost":"missing","ev":{},"ho":0,"now":"1"}"#,
        )
        .unwrap();
        assert!(matches!(
            r.body.outcome,
            TryLockOutcome::Delay {
                hold: Num(1_795_000_000_123_457)
            }
        ));
        assert_eq!(r.body.lost.as_deref(), Some("missing"));
        let r: Reply<TryLockReply> = decode(
            "t",
            r#"{"r":"ans","a":{"acq":false,"reason":"held"},"fresh":false,"chg":false,"lost":"missing","ev":[],"ho":2,"now":"1"}"#,
        )
        .unwrap();
        assert!(matches!(
            r.body.outcome,
            TryLockOutcome::Answer {
                fresh: false,
                chg: false,
                ..
            }
        ));
        assert_eq!((r.body.lost.as_deref(), r.ho), (Some("missing"), 2));
        let r: Reply<TryLockReply> = decode(
            "t",
            r#"{"r":"wait","id":"0a","dl":"5","ev":{},"ho":0,"now":"1"}"#,
        )
        .unwrap();
        assert!(matches!(
            r.body.outcome,
            TryLockOutcome::Wait { id: Some(ref id), dl: Num(5) } if id == "0a"
        ));
        assert!(decode::<TryLockReply>("t", r#"{"r":"what","now":"1"}"#).is_err());
        let r: Reply<UnlockReply> =
            decode("t", r#"{"r":"changed","cur":"9","ev":{},"ho":0,"now":"1"}"#).unwrap();
        assert!(matches!(r.body, UnlockReply::Changed { cur: Num(9) }));
        let r: Reply<WaitEndReply> =
            decode("t", r#"{"r":"queued","ev":{},"ho":0,"now":"1"}"#).unwrap();
        assert!(matches!(r.body, WaitEndReply::Queued));
    }
}
