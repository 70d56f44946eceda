//! Queue entries and the grant order.
//!
//! This module is the single place the order of a resource's queue is decided:
//! highest *effective* priority first, then earliest `enqueued_at`, then smallest
//! `entry_id`. Effective priority is the contract's anti-starvation rule:
//!
//! ```text
//! min(priority + floor(waited / starvation_threshold), priority + max_priority_boost, critical)
//! ```
//!
//! Within one base priority the oldest entry always has the largest boost, so the best
//! entry of a whole queue is the best of the four per-priority heads ([`best_of_lanes`]);
//! the Redis backend keeps one sorted set per priority for that reason, and its Lua
//! script implements the same comparison as [`grant_cmp`].

use std::cmp::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::owner::Owner;
use crate::priority::Priority;
use crate::resource::Resource;
use crate::time::Timestamp;

/// Identifier of a queue entry: 128 random bits as hex, unguessable because cancelling
/// an entry needs nothing else.
pub type EntryId = String;

/// What a queue entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EntryKind {
    /// A live caller blocked in TryLock; removed when the caller goes away.
    Waiter,
    /// A place in line that outlives the call; granted with its full TTL.
    Reservation,
}

/// A queue entry as a backend stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueEntry {
    pub entry_id: EntryId,
    pub resource: Resource,
    #[serde(flatten)]
    pub owner: Owner,
    pub kind: EntryKind,
    pub priority: Priority,
    pub enqueued_at: Timestamp,
    /// When the entry gives up: a waiter's wait, a reservation's lifetime.
    pub deadline: Timestamp,
    /// TTL of the lease this entry will be granted.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1h"))]
    pub ttl: Duration,
    /// The caller's idempotency key, kept so a retry finds its grant. A secret: only
    /// a backend's own record and an admin export carry it; [`QueueEntry::public`]
    /// removes it from everything shown to callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl QueueEntry {
    /// The entry as anybody may see it: without its `request_id`.
    pub fn public(mut self) -> QueueEntry {
        self.request_id = None;
        self
    }
}

/// The anti-starvation knobs, from [`crate::LockSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StarvationPolicy {
    pub starvation_threshold: Duration,
    pub max_priority_boost: u8,
}

impl StarvationPolicy {
    /// The effective priority of an entry of base `priority` enqueued at `enqueued_at`.
    pub fn effective_priority(
        &self,
        priority: Priority,
        enqueued_at: Timestamp,
        now: Timestamp,
    ) -> Priority {
        let base = u64::from(priority.rank());
        let threshold = self.starvation_threshold.as_micros().max(1);
        let waited = now.since(enqueued_at).as_micros();
        let steps = u64::try_from(waited / threshold).unwrap_or(u64::MAX);
        let boost = steps.min(u64::from(self.max_priority_boost));
        Priority::from_rank(base.saturating_add(boost))
    }
}

/// Grant order between two entries at `now`: `Less` means `a` is granted first.
pub fn grant_cmp(
    a: &QueueEntry,
    b: &QueueEntry,
    now: Timestamp,
    policy: &StarvationPolicy,
) -> Ordering {
    let ea = policy.effective_priority(a.priority, a.enqueued_at, now);
    let eb = policy.effective_priority(b.priority, b.enqueued_at, now);
    eb.cmp(&ea)
        .then(a.enqueued_at.cmp(&b.enqueued_at))
        .then_with(|| a.entry_id.cmp(&b.entry_id))
}

/// The entry granted next among `entries` (any order), or `None` when empty.
pub fn next_entry<'a, I>(
    entries: I,
    now: Timestamp,
    policy: &StarvationPolicy,
) -> Option<&'a QueueEntry>
where
    I: IntoIterator<Item = &'a QueueEntry>,
{
    entries
        .into_iter()
        .min_by(|a, b| grant_cmp(a, b, now, policy))
}

/// The best of the per-priority heads: each lane is one base priority's queue in FIFO
/// order, so only its first entry can be the next grant.
pub fn best_of_lanes<'a>(
    heads: impl IntoIterator<Item = Option<&'a QueueEntry>>,
    now: Timestamp,
    policy: &StarvationPolicy,
) -> Option<&'a QueueEntry> {
    next_entry(heads.into_iter().flatten(), now, policy)
}

/// All entries in grant order at `now`.
pub fn grant_order(
    entries: &[QueueEntry],
    now: Timestamp,
    policy: &StarvationPolicy,
) -> Vec<QueueEntry> {
    let mut v = entries.to_vec();
    v.sort_by(|a, b| grant_cmp(a, b, now, policy));
    v
}

/// A queue entry as shown to callers: with its place and its current effective priority,
/// never with its `request_id` (build it from [`QueueEntry::public`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueEntryView {
    #[serde(flatten)]
    pub entry: QueueEntry,
    pub effective_priority: Priority,
    /// 1 for the entry granted next.
    pub position: usize,
    /// How long the entry has waited, e.g. `"1m 3s"`.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1m 3s"))]
    pub waited: Duration,
}

impl QueueEntryView {
    /// Views of `entries` in grant order at `now`, positions from 1.
    pub fn ordered(
        entries: &[QueueEntry],
        now: Timestamp,
        policy: &StarvationPolicy,
    ) -> Vec<QueueEntryView> {
        grant_order(entries, now, policy)
            .into_iter()
            .enumerate()
            .map(|(i, entry)| QueueEntryView {
                effective_priority: policy.effective_priority(
                    entry.priority,
                    entry.enqueued_at,
                    now,
                ),
                position: i + 1,
                waited: now.since(entry.enqueued_at),
                entry: entry.public(),
            })
            .collect()
    }
}

/// Where a queued request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueuePlacement {
    pub entry_id: EntryId,
    pub position: usize,
}

/// Holder plus entries in grant order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStatus {
    pub resource: Resource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<crate::lease::Lock>,
    pub entries: Vec<QueueEntryView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn policy() -> StarvationPolicy {
        StarvationPolicy {
            starvation_threshold: Duration::from_secs(120),
            max_priority_boost: 3,
        }
    }

    fn entry(id: &str, p: Priority, at_s: u64) -> QueueEntry {
        QueueEntry {
            entry_id: id.to_string(),
            resource: Resource::new("o/r", ".", "default", "").unwrap(),
            owner: Owner::named(id),
            kind: EntryKind::Waiter,
            priority: p,
            enqueued_at: Timestamp(at_s * SEC),
            deadline: Timestamp(u64::MAX),
            ttl: Duration::from_secs(60),
            request_id: None,
        }
    }

    #[test]
    fn higher_priority_goes_first() {
        let e = [
            entry("a", Priority::Low, 0),
            entry("b", Priority::High, 5),
            entry("c", Priority::Normal, 1),
        ];
        let ids: Vec<_> = grant_order(&e, Timestamp(10 * SEC), &policy())
            .into_iter()
            .map(|e| e.entry_id)
            .collect();
        assert_eq!(ids, ["b", "c", "a"]);
    }

    #[test]
    fn equal_priority_is_fifo_then_entry_id() {
        let e = [
            entry("z", Priority::Normal, 3),
            entry("y", Priority::Normal, 1),
            entry("x", Priority::Normal, 1),
        ];
        let ids: Vec<_> = grant_order(&e, Timestamp(4 * SEC), &policy())
            .into_iter()
            .map(|e| e.entry_id)
            .collect();
        assert_eq!(ids, ["x", "y", "z"]);
    }

    #[test]
    fn boost_grows_one_level_per_threshold() {
        let p = policy();
        let at = Timestamp(0);
        assert_eq!(
            p.effective_priority(Priority::Low, at, Timestamp(119 * SEC)),
            Priority::Low
        );
        assert_eq!(
            p.effective_priority(Priority::Low, at, Timestamp(120 * SEC)),
            Priority::Normal
        );
        assert_eq!(
            p.effective_priority(Priority::Low, at, Timestamp(240 * SEC)),
            Priority::High
        );
        assert_eq!(
            p.effective_priority(Priority::Low, at, Timestamp(360 * SEC)),
            Priority::Critical
        );
        assert_eq!(
            p.effective_priority(Priority::Low, at, Timestamp(9999 * SEC)),
            Priority::Critical
        );
    }

    #[test]
    fn boost_is_capped_by_max_priority_boost() {
        let p = StarvationPolicy {
            max_priority_boost: 1,
            ..policy()
        };
        assert_eq!(
            p.effective_priority(Priority::Low, Timestamp(0), Timestamp(9999 * SEC)),
            Priority::Normal
        );
        let none = StarvationPolicy {
            max_priority_boost: 0,
            ..policy()
        };
        assert_eq!(
            none.effective_priority(Priority::Low, Timestamp(0), Timestamp(9999 * SEC)),
            Priority::Low
        );
    }

    #[test]
    fn starved_low_entry_overtakes_newer_high_entries() {
        // A low entry that waited 2 thresholds is "high"; a high entry enqueued later
        // ties on effective priority and loses on enqueued_at.
        let e = [
            entry("new-high", Priority::High, 300),
            entry("old-low", Priority::Low, 0),
        ];
        let now = Timestamp(301 * SEC);
        assert_eq!(next_entry(&e, now, &policy()).unwrap().entry_id, "old-low");
        // ...but a critical one still goes first.
        let e = [
            entry("crit", Priority::Critical, 300),
            entry("old-low", Priority::Low, 0),
        ];
        assert_eq!(next_entry(&e, now, &policy()).unwrap().entry_id, "crit");
    }

    #[test]
    fn best_of_lanes_agrees_with_full_scan() {
        // Pseudo-random queues: the head-of-lane shortcut must pick what a full scan picks.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..500 {
            let n = 1 + rnd(30) as usize;
            let entries: Vec<_> = (0..n)
                .map(|i| {
                    entry(
                        &format!("{round}-{i:03}"),
                        Priority::from_rank(rnd(4)),
                        rnd(1000),
                    )
                })
                .collect();
            let now = Timestamp((1000 + rnd(1000)) * SEC);
            let full = next_entry(&entries, now, &policy()).unwrap();
            let heads = Priority::ALL.map(|p| {
                entries.iter().filter(|e| e.priority == p).min_by(|a, b| {
                    a.enqueued_at
                        .cmp(&b.enqueued_at)
                        .then(a.entry_id.cmp(&b.entry_id))
                })
            });
            let lanes = best_of_lanes(heads, now, &policy()).unwrap();
            assert_eq!(full.entry_id, lanes.entry_id);
        }
    }

    #[test]
    fn positions_start_at_one_in_grant_order() {
        let e = [
            entry("a", Priority::Low, 0),
            entry("b", Priority::Critical, 5),
        ];
        let v = QueueEntryView::ordered(&e, Timestamp(6 * SEC), &policy());
        assert_eq!((v[0].entry.entry_id.as_str(), v[0].position), ("b", 1));
        assert_eq!((v[1].entry.entry_id.as_str(), v[1].position), ("a", 2));
        assert_eq!(v[1].waited, Duration::from_secs(6));
    }
}
