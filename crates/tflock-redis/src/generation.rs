//! Data loss: the buckets' generation markers (`lua/generation.lua`), what this
//! server remembers of them, and how a loss is reported (docs/redis-design.md,
//! "Data loss").
//!
//! Every bucket (so every Cluster slot tflock uses, and with it every primary) has
//! its own marker, because on a Cluster each primary can lose its data on its own.
//! This server remembers, per bucket, the marker id it saw and the `seen` value it
//! wrote there last. A check (at connect, in every health check, and at once when a
//! TryLock finds a marker gone) compares them with the store: a marker that is gone
//! or changed, or this server's `seen` that is not the one it wrote, is a loss. The
//! first server to find a loss stores the end of the `lock_delay` in the marker, so
//! every server sharing the store obeys it, also one that never saw the loss.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Map, Value as Json, json};
use tflock_core::{LockEvent, Timestamp};

use crate::keys::BUCKETS;

/// What this server remembers of one bucket's marker.
#[derive(Debug, Clone, Default)]
pub(crate) struct BucketGeneration {
    /// The marker id it saw last; empty before the first check.
    pub id: String,
    /// The `seen` value it wrote last; empty when not known (the last check failed,
    /// so its write may or may not have happened: the comparison is skipped once).
    pub seen: String,
}

/// One loss, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loss {
    /// When it was found (the earliest marker's `lost`).
    pub at: Timestamp,
    /// Until when nothing is granted (the latest marker's `hold`).
    pub hold_until: Timestamp,
    /// Buckets found with lost data.
    pub buckets: usize,
    /// What showed it: `missing`, `changed`, `rolled_back`.
    pub found: BTreeSet<String>,
}

impl Loss {
    pub fn to_json(&self) -> Json {
        json!({
            "detected_at": self.at.to_string(),
            "lock_delay_until": self.hold_until.to_string(),
            "buckets": self.buckets,
            "found": self.found.iter().collect::<Vec<_>>(),
        })
    }
}

/// The markers' state of one backend.
pub(crate) struct Generations {
    /// Held for a whole check, so two checks (a health check and one a TryLock
    /// started) never compare against a state the other is changing.
    pub state: tokio::sync::Mutex<Vec<BucketGeneration>>,
    /// Buckets whose marker this server has seen: try_lock.lua is told, so a marker
    /// missing there is a loss, not a bucket nobody set up yet.
    pub known: Vec<AtomicBool>,
    /// This server's check count (the `seen` values it writes).
    pub count: AtomicU64,
    /// Losses reported since start (`tflock_store_data_loss_total`).
    pub losses: AtomicU64,
    /// The last loss reported, for the health details.
    pub last: Mutex<Option<Loss>>,
    /// The latest end of a lock_delay any check saw (µs), for the health check.
    pub hold_until: AtomicU64,
}

impl Generations {
    pub fn new() -> Self {
        Generations {
            state: tokio::sync::Mutex::new(vec![BucketGeneration::default(); BUCKETS]),
            known: (0..BUCKETS).map(|_| AtomicBool::new(false)).collect(),
            count: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            last: Mutex::new(None),
            hold_until: AtomicU64::new(0),
        }
    }

    pub fn knows(&self, bucket: usize) -> bool {
        self.known[bucket].load(Ordering::Relaxed)
    }

    pub fn last(&self) -> Option<Loss> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a loss: counter, error log, and the `store.data_lost` event (sent by
    /// the caller). Returns the event to send.
    pub fn report(&self, loss: Loss) -> LockEvent {
        self.losses.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            buckets = loss.buckets,
            found = ?loss.found,
            lock_delay_until = %loss.hold_until,
            "the Redis store lost tflock's data (restarted without persistence, flushed, an \
             older backup restored, or a replica that lagged promoted): locks and queues \
             granted before may be gone; fencing tokens stay above every earlier one (clock \
             floor) and nothing is granted until the lock_delay ends"
        );
        let event = LockEvent::data_lost(loss.at);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(loss);
        event
    }

    /// The health check's part: `reason: data_lost` while a lock_delay runs or when
    /// this check found a loss, and the last loss's facts. Returns whether healthy.
    pub fn health_details(
        &self,
        details: &mut Map<String, Json>,
        now: Timestamp,
        found_now: bool,
    ) -> bool {
        let losses = self.losses.load(Ordering::Relaxed);
        details.insert("data_losses".into(), losses.into());
        if let Some(loss) = self.last() {
            details.insert("last_data_loss".into(), loss.to_json());
        }
        let hold = Timestamp(self.hold_until.load(Ordering::Relaxed));
        let delaying = hold > now;
        if delaying {
            details.insert("lock_delay_until".into(), hold.to_string().into());
        }
        if delaying || found_now {
            details.insert("reason".into(), "data_lost".into());
            false
        } else {
            true
        }
    }
}
