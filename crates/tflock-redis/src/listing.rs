//! Reading locks: GetLock, and ListLocks as a lazy k-way merge of the 64 buckets by
//! storage key (see docs/redis-design.md, "Scripts").

use std::collections::VecDeque;

use futures::future::join_all;
use tflock_core::{Lock, LockFilter, LockPage, QueryError, Resource};

use crate::args::{GetLockArgs, ListArgs};
use crate::backend::Inner;
use crate::keys::{BUCKETS, bucket_of, resource_key};
use crate::reply::{RawLock, into_locks};

/// Most index members one list call scans per bucket (bounds script time).
const LIST_SCAN: usize = 2000;
/// Fewest locks one list call asks a bucket for (see `list_locks`).
const LIST_MIN_BATCH: usize = 8;

/// One bucket's place in a listing's merge: the locks it returned that are not
/// merged yet, and where its next batch starts (it is known up to there).
struct ListCursor {
    after: String,
    buffered: VecDeque<RawLock>,
    done: bool,
}

/// [`tflock_core::Backend::get_lock`] on Redis.
pub(crate) async fn get_lock(
    inner: &Inner,
    resource: &Resource,
) -> Result<Option<Lock>, QueryError> {
    inner.check_open()?;
    let resource = resource.clone().validate("resource")?;
    let sk = resource_key(&resource);
    let r = inner
        .run(bucket_of(&resource), &GetLockArgs { storage_key: &sk })
        .await?;
    Ok(r.body.lock.map(RawLock::into_lock).transpose()?)
}

/// [`tflock_core::Backend::list_locks`] on Redis.
pub(crate) async fn list_locks(inner: &Inner, filter: LockFilter) -> Result<LockPage, QueryError> {
    inner.check_open()?;
    let limit = filter.page_size()?;
    let start = crate::keys::cursor_key(filter.cursor_key()?.unwrap_or_default());
    let repo = filter.repo.clone().unwrap_or_default();
    let owner = filter.owner.clone().unwrap_or_default();
    let user = filter.user.clone().unwrap_or_default();
    // One more than a page, to know whether another page follows.
    let room = limit + 1;
    // A lazy k-way merge: each bucket is asked for a small batch; a bucket whose
    // batch runs out before the page is full is asked for its next one (after its
    // last scanned key), all such buckets pipelined in one round.
    let batch = (room.div_ceil(BUCKETS) + 4).max(LIST_MIN_BATCH);
    let mut buckets: Vec<ListCursor> = (0..BUCKETS)
        .map(|_| ListCursor {
            after: start.clone(),
            buffered: VecDeque::new(),
            done: false,
        })
        .collect();
    let mut out: Vec<RawLock> = Vec::with_capacity(room);
    let mut stale: Vec<usize> = (0..BUCKETS).collect();
    loop {
        if !stale.is_empty() {
            let replies = join_all(stale.iter().map(|&b| {
                let args = ListArgs {
                    after: buckets[b].after.as_str(),
                    batch,
                    repo: &repo,
                    owner: &owner,
                    user: &user,
                    scan: LIST_SCAN,
                };
                async move { inner.run(b, &args).await }
            }))
            .await;
            for (&b, r) in stale.iter().zip(replies) {
                let r = r?.body;
                let c = &mut buckets[b];
                // Complete up to `last`: the next batch starts after it.
                if r.done || r.last.is_empty() {
                    c.done = true;
                } else {
                    c.after = r.last;
                }
                c.buffered.extend(r.locks);
            }
            stale.clear();
        }
        while out.len() < room {
            // The smallest buffered lock...
            let Some(b) = (0..BUCKETS)
                .filter(|&b| !buckets[b].buffered.is_empty())
                .min_by(|&x, &y| buckets[x].buffered[0].sk.cmp(&buckets[y].buffered[0].sk))
            else {
                break;
            };
            // ...is next only if no drained bucket may still hold a smaller one:
            // a drained bucket is known up to its `after`.
            let sk = &buckets[b].buffered[0].sk;
            if buckets
                .iter()
                .any(|c| !c.done && c.buffered.is_empty() && c.after < *sk)
            {
                break;
            }
            out.extend(buckets[b].buffered.pop_front());
        }
        if out.len() >= room {
            break;
        }
        // Refill the drained buckets that may hold the next lock: every drained
        // one below the smallest buffered lock (all of them when none is).
        let head = buckets
            .iter()
            .filter_map(|c| c.buffered.front().map(|l| l.sk.clone()))
            .min();
        stale = (0..BUCKETS)
            .filter(|&b| {
                let c = &buckets[b];
                !c.done && c.buffered.is_empty() && head.as_ref().is_none_or(|h| c.after < *h)
            })
            .collect();
        if stale.is_empty() {
            break;
        }
    }
    let next_cursor = if out.len() > limit {
        out.truncate(limit);
        out.last()
            .map(|l| tflock_core::request::encode_cursor(&l.sk))
    } else {
        None
    };
    Ok(LockPage {
        locks: into_locks(out)?,
        next_cursor,
    })
}
