//! Who sweeps, and the sweeper itself.
//!
//! Expired leases must be ended and their queues handed on even when nobody touches
//! the resource (the contract's "TTL management"); so must reservations past their
//! deadline and the entries of waiters whose server died. `sweep.lua` does that for
//! one bucket. Which backend runs it is its [`SweepRole`]:
//!
//! - [`SweepRole::SelfSweep`] (the default): this backend sweeps every bucket by
//!   itself, unfenced. Right for library use, tests, and a deployment without the
//!   cluster manager; several such backends on one Redis each sweep (sweeps are
//!   idempotent).
//! - [`SweepRole::Follower`]: this backend does not sweep; the cluster's leader does.
//! - [`SweepRole::Leader`]: this backend sweeps as the elected leader of the cluster
//!   (`tflock-cluster`), *fenced*: each `sweep.lua` call carries the leader's epoch,
//!   compares it with the bucket's `fence` key in the same script, and refuses when a
//!   leader with a higher epoch has acted on the bucket. A leader that was paused and
//!   wakes after losing its lease therefore cannot act on stale authority, even if it
//!   has not noticed yet. A refusal turns the role into `Follower` at once and is
//!   counted in [`SweepStats`].
//!
//! A new leader calls [`crate::RedisBackend::fence_all`] (every bucket raised to its
//! epoch) before it takes the `Leader` role.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tflock_core::{BackendError, Timestamp};

use crate::args::{FenceArgs, SweepArgs};
use crate::backend::Inner;
use crate::keys::BUCKETS;
use crate::options::{LeaderAuthority, SweepRole};
use crate::reply::FenceReply;

/// The sweeper runs at least this often, so an expired lease with waiters is handed
/// on within this long even when nobody touches it.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most items of each kind one sweep call handles per bucket (bounds script time).
const SWEEP_LIMIT: usize = 500;

/// One round of sweeps over every bucket.
struct Round {
    /// The earliest due time any bucket reported.
    next: Option<Timestamp>,
    /// The scripts' clock.
    now: Timestamp,
    /// A bucket had more than one call may handle.
    more: bool,
}

impl Inner {
    /// Changes the sweep role. Renewing a leader's lease (same epoch, later
    /// `valid_until`) does not wake the sweeper unless it had stopped because the
    /// lease lapsed; every other change does.
    pub(crate) fn set_sweep_role(&self, role: SweepRole) {
        self.sweep_role.send_if_modified(|cur| {
            let wake = match (&*cur, &role) {
                (SweepRole::Leader(a), SweepRole::Leader(b)) => a.epoch != b.epoch || a.lapsed(),
                (a, b) => a != b,
            };
            *cur = role;
            wake
        });
    }

    /// Raises every bucket's fence to `epoch`. `Ok(None)` when all are fenced;
    /// `Ok(Some(higher))` when a bucket has seen a higher epoch (its fence).
    pub(crate) async fn fence_all(&self, epoch: u64) -> Result<Option<u64>, BackendError> {
        let args = FenceArgs { epoch };
        let replies = join_all((0..BUCKETS).map(|b| self.run(b, &args))).await;
        let mut higher: Option<u64> = None;
        let mut refused = 0;
        for r in replies {
            if let FenceReply::Stale { fence } = r?.body {
                refused += 1;
                higher = Some(higher.unwrap_or(0).max(fence.0));
            }
        }
        if let Some(h) = higher {
            self.sweep_stats.send_modify(|s| {
                s.stale_refusals += refused;
                s.refused_by = s.refused_by.max(h);
            });
        }
        Ok(higher)
    }

    /// One sweep of every bucket, fenced by `leader` when given. A stale refusal
    /// turns the role from that leader into `Follower`.
    async fn sweep_all(&self, leader: Option<&LeaderAuthority>) -> Round {
        let dead = match leader {
            Some(a) if !a.dead_nodes.is_empty() => {
                // How long ago each was declared dead, as of this sweep (µs).
                let as_strings: BTreeMap<&str, String> = a
                    .dead_nodes
                    .iter()
                    .map(|(k, (dead_for, as_of))| {
                        let age = dead_for.saturating_add(as_of.elapsed());
                        (k.as_str(), age.as_micros().to_string())
                    })
                    .collect();
                serde_json::to_string(&as_strings).unwrap_or_default()
            }
            _ => String::new(),
        };
        let args = SweepArgs {
            limit: SWEEP_LIMIT,
            epoch: leader.map(|a| a.epoch),
            dead: &dead,
        };
        let results = join_all((0..BUCKETS).map(|b| self.run(b, &args))).await;
        let mut round = Round {
            next: None,
            now: Timestamp::ZERO,
            more: false,
        };
        let mut failed = None;
        let (mut refused, mut refused_by, mut items) = (0, 0, 0);
        for r in results {
            match r {
                Ok(r) if r.body.stale => {
                    refused += 1;
                    refused_by = refused_by.max(r.body.fence.0);
                }
                Ok(r) => {
                    items += r.body.done.0;
                    round.more |= r.body.more;
                    round.now = round.now.max(Timestamp(r.now.0));
                    if r.body.next.0 > 0 {
                        let t = Timestamp(r.body.next.0);
                        round.next = Some(round.next.map_or(t, |n| n.min(t)));
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            tracing::warn!("the expiry sweep failed on some buckets: {e}");
        }
        self.sweep_stats.send_modify(|s| match leader {
            Some(a) => {
                s.leader_sweeps += 1;
                s.leader_items += items;
                s.last_epoch = a.epoch;
                s.stale_refusals += refused;
                s.refused_by = s.refused_by.max(refused_by);
            }
            None => s.self_sweeps += 1,
        });
        if refused > 0
            && let Some(a) = leader
        {
            tracing::warn!(
                epoch = a.epoch,
                fence = refused_by,
                buckets = refused,
                "a leader with a higher epoch has acted: this server stops sweeping"
            );
            self.sweep_role.send_if_modified(|cur| match cur {
                SweepRole::Leader(cur_a) if cur_a.epoch == a.epoch => {
                    *cur = SweepRole::Follower;
                    true
                }
                _ => false,
            });
            round.more = false;
            round.next = None;
        }
        round
    }
}

/// Hands expired leases on (and drops expired reservations, dead waiters' entries
/// and old answers) without anyone touching the resource, while the role says this
/// backend sweeps: every bucket at least once a second, sooner when a due time is
/// nearer, at once when the role changes. Stops at close or when the backend is
/// dropped.
pub(crate) async fn sweeper(inner: Weak<Inner>) {
    let mut last = Instant::now() - SWEEP_INTERVAL;
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.is_closed() {
            return;
        }
        let mut role_rx = i.sweep_role.subscribe();
        let role = role_rx.borrow_and_update().clone();
        let authority: Option<Option<LeaderAuthority>> = match role {
            SweepRole::SelfSweep => Some(None),
            SweepRole::Follower => None,
            SweepRole::Leader(a) if a.lapsed() => None,
            SweepRole::Leader(a) => Some(Some(a)),
        };
        let mut round = None;
        if let Some(leader) = authority {
            // Never sweep in a tight loop, whatever the due times say (a Redis clock
            // behind ours would otherwise make every due time look reached).
            let gap = Duration::from_millis(10).saturating_sub(last.elapsed());
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            last = Instant::now();
            let r = i.sweep_all(leader.as_ref()).await;
            if r.more {
                continue;
            }
            round = Some(r);
        }
        let clock = i.clock.clone();
        let system_clock = i.system_clock;
        let mut closed = i.closed.subscribe();
        drop(i);
        let sweeping = round.is_some();
        let due = async move {
            match round {
                // Redis's clock decides: wait for the due time as a duration on it, so
                // a Redis clock behind ours does not make us sweep early and often.
                Some(Round {
                    next: Some(t), now, ..
                }) if system_clock => tokio::time::sleep(t.since(now)).await,
                // An injected clock (tests): wake when it reaches the due time.
                Some(Round { next: Some(t), .. }) => clock.sleep_until(t).await,
                _ => std::future::pending::<()>().await,
            }
        };
        let interval = async {
            if sweeping {
                tokio::time::sleep(SWEEP_INTERVAL).await
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            _ = interval => {}
            _ = due => {}
            r = role_rx.changed() => if r.is_err() { return },
            _ = async { let _ = closed.wait_for(|c| *c).await; } => return,
        }
    }
}
