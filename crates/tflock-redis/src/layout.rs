//! Key layout versions: bringing a store written by an older build up to
//! [`LAYOUT`] in place (`lua/upgrade.lua`, docs/redis-design.md "Layout versions").
//!
//! Each bucket is upgraded by itself, in one script call, so a bucket is never seen
//! half-upgraded. The script knows the old names; the new resource keys are computed
//! here ([`resource_key`]), the one place they are written: the script's first reply
//! lists the bucket's old storage keys, the second call carries them paired with
//! their new keys. A connecting backend upgrades every bucket before its first
//! operation (unless [`crate::BackendOptions::upgrade_layout`] is off), and a TryLock
//! that finds a bucket of an older layout (a backup restored while it ran) upgrades
//! that bucket and asks again.

use futures::future::join_all;
use serde::Serialize;
use tflock_core::BackendError;

use crate::args::UpgradeArgs;
use crate::backend::Inner;
use crate::keys::{BUCKETS, LAYOUT, resource_key, resource_of_key};
use crate::reply::UpgradeReply;

/// What an upgrade did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayoutReport {
    /// The layout the store is at afterwards (or would be).
    pub layout: u32,
    /// A dry run: nothing was changed.
    pub dry_run: bool,
    /// Buckets that were (or would be) upgraded; the others were current.
    pub buckets_upgraded: usize,
    /// Resources moved: every one with a lock, a queue or a fencing token counter.
    pub resources: u64,
    /// Queue entries moved with their resources.
    pub entries: u64,
    /// Fencing token counters moved.
    pub tokens: u64,
    /// Records layout 2 already had for a resource (a newer server wrote them while
    /// an older one still ran on the store): kept, the old ones left unread.
    pub conflicts: u64,
}

impl LayoutReport {
    fn add(&mut self, b: &LayoutReport) {
        self.buckets_upgraded += b.buckets_upgraded;
        self.resources += b.resources;
        self.entries += b.entries;
        self.tokens += b.tokens;
        self.conflicts += b.conflicts;
    }
}

impl Inner {
    /// Upgrades every bucket (all at once; each in one step).
    pub(crate) async fn upgrade_layout(&self, dry_run: bool) -> Result<LayoutReport, BackendError> {
        let mut total = LayoutReport {
            layout: LAYOUT,
            dry_run,
            ..LayoutReport::default()
        };
        let replies = join_all((0..BUCKETS).map(|b| self.upgrade_bucket(b, dry_run))).await;
        for r in replies {
            total.add(&r?);
        }
        Ok(total)
    }

    /// Upgrades one bucket.
    pub(crate) async fn upgrade_bucket(
        &self,
        bucket: usize,
        dry_run: bool,
    ) -> Result<LayoutReport, BackendError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        // The storage keys can only change between the two calls if another server
        // upgrades or writes the bucket meanwhile: ask again, a few times.
        for _ in 0..4 {
            let args = UpgradeArgs {
                dry_run,
                pairs: &pairs,
            };
            match self.run(bucket, &args).await?.body {
                UpgradeReply::Current => return Ok(LayoutReport::default()),
                UpgradeReply::Upgraded {
                    resources,
                    entries,
                    tokens,
                    conflicts,
                } => {
                    if !dry_run && conflicts.0 > 0 {
                        tracing::warn!(
                            bucket,
                            conflicts = conflicts.0,
                            "upgrading the key layout found records that the new layout \
                             already had (servers of two builds ran on this store at once): \
                             the new ones were kept"
                        );
                    }
                    return Ok(LayoutReport {
                        layout: LAYOUT,
                        dry_run,
                        buckets_upgraded: 1,
                        resources: resources.0,
                        entries: entries.0,
                        tokens: tokens.0,
                        conflicts: conflicts.0,
                    });
                }
                UpgradeReply::Need { sks } => {
                    for sk in sks {
                        let r = resource_of_key(&sk).ok_or_else(|| {
                            BackendError::Internal(format!(
                                "upgrading the key layout: bucket {bucket} names a resource \
                                 that is not a storage key: {sk:?}"
                            ))
                        })?;
                        let key = resource_key(&r);
                        pairs.push((sk, key));
                    }
                }
            }
        }
        Err(BackendError::Unavailable(format!(
            "upgrading the key layout of bucket {bucket}: its resources kept changing"
        )))
    }
}
