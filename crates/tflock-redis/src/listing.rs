//! Reading locks: GetLock, and ListLocks as a lazy k-way merge of the 64 buckets by
//! resource key (see docs/redis-design.md, "Listing").
//!
//! Listing runs no script: it reads each bucket's `resources` index (ZRANGEBYLEX)
//! and then the lease hashes of exactly the keys the page needs, one pipeline of
//! HMGETs per bucket. A script would read the same fields, but turning every reply
//! into Lua strings and the result into JSON cost Redis three times the commands'
//! own work (docs/benchmarks.md, "Listing without a script"), and a listing needs no
//! atomicity: a page shows locks that were live while it was read, as before.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use futures::future::join_all;
use tflock_core::{BackendError, Lock, LockFilter, LockPage, QueryError, Resource};

use crate::args::GetLockArgs;
use crate::backend::Inner;
use crate::conn::CallError;
use crate::keys::{BUCKETS, bucket_of, key_part, lock_name, resource_key, resources_name};
use crate::reply::{LISTED_FIELDS, RawLock, into_locks};

/// Fewest keys one read asks a bucket's index for (see `list_locks`).
const LIST_MIN_BATCH: usize = 8;
/// Keys one read asks a bucket's index for when an owner or user filter makes
/// matches sparse.
const LIST_FILTERED_BATCH: usize = 200;
/// Most keys one round takes from the merge (their leases are read in one round
/// trip), and most keys one read asks a bucket for.
const MAX_TAKE: usize = 4096;

/// One bucket's place in a listing's merge: the keys it returned that are not
/// merged yet, and where its next batch starts (it is known up to there).
struct ListCursor {
    after: String,
    keys: VecDeque<String>,
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

/// What a listing keeps: the repository's keys and the owner and user filters.
struct Wanted {
    /// The escaped repository and `!`: the start of every key of the repository.
    prefix: String,
    /// ZRANGEBYLEX's upper bound: `+`, or just below the repository's next key.
    max: String,
    owner: Option<String>,
    user: Option<String>,
}

/// [`tflock_core::Backend::list_locks`] on Redis.
pub(crate) async fn list_locks(inner: &Inner, filter: LockFilter) -> Result<LockPage, QueryError> {
    inner.check_open()?;
    let limit = filter.page_size()?;
    let start = crate::keys::cursor_key(filter.cursor_key()?.unwrap_or_default());
    // A repository's keys start with its escaped name and '!', and sort below the
    // escaped name and '"' (an escaped part holds neither).
    let (prefix, max) = match &filter.repo {
        Some(repo) => {
            let repo = key_part(repo);
            (format!("{repo}!"), format!("({repo}\""))
        }
        None => (String::new(), "+".to_string()),
    };
    let wanted = Wanted {
        prefix,
        max,
        owner: filter.owner.clone(),
        user: filter.user.clone(),
    };
    let filtered = wanted.owner.is_some() || wanted.user.is_some();
    // One more than a page, to know whether another page follows.
    let room = limit + 1;
    // Keys spread evenly over the buckets (a hash picks the bucket): a page needs
    // about room / 64 of each, give or take its square root. Half as many again and
    // a few more spare nearly every bucket a second read (one round trip each, the
    // larger cost), while a key read and not listed costs Redis little (only keys
    // are read here; the locks of exactly the page's keys are read after).
    let per_page = |keys: usize| {
        let even = keys.div_ceil(BUCKETS);
        (even + even / 2 + 4).max(LIST_MIN_BATCH)
    };
    let first_batch = if filtered {
        LIST_FILTERED_BATCH
    } else {
        per_page(room)
    };
    let mut batch = first_batch;
    // Keys taken in one round: what the page still needs, doubled after every round
    // in which some keys were no match (filters, expired leases, queues without a
    // lock), so that sparse matches cost few round trips, not one per page's worth.
    let mut scale = 1;
    let mut buckets: Vec<ListCursor> = (0..BUCKETS)
        .map(|_| ListCursor {
            after: start.clone(),
            keys: VecDeque::new(),
            done: false,
        })
        .collect();
    let mut out: Vec<RawLock> = Vec::with_capacity(room);
    let mut stale: Vec<usize> = (0..BUCKETS).collect();
    loop {
        if !stale.is_empty() {
            let reads = stale.iter().map(|&b| {
                let after = &buckets[b].after;
                let min = if *after >= wanted.prefix && !after.is_empty() {
                    format!("({after}")
                } else if wanted.prefix.is_empty() {
                    "-".to_string()
                } else {
                    // A cursor below the repository's keys: from its first one.
                    format!("[{}", wanted.prefix)
                };
                let mut cmd = redis::cmd("ZRANGEBYLEX");
                cmd.arg(resources_name(&inner.buckets[b]))
                    .arg(min)
                    .arg(&wanted.max)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(batch);
                (b, cmd)
            });
            let (reads, _) = read_many::<Vec<String>>(inner, reads.collect(), false).await?;
            for (&b, keys) in stale.iter().zip(reads) {
                let c = &mut buckets[b];
                // Known up to the last key read: the next batch starts after it.
                c.done = keys.len() < batch;
                if let Some(last) = keys.last() {
                    c.after = last.clone();
                }
                c.keys.extend(keys);
            }
        }
        // The page's next keys, in order: a heap of the buckets' smallest buffered
        // keys, merged while no drained bucket may still hold a smaller one (a
        // drained bucket is known up to its `after`; `bound` is the lowest such).
        let mut heads: BinaryHeap<Reverse<(String, usize)>> = (0..BUCKETS)
            .filter_map(|b| buckets[b].keys.front().map(|k| Reverse((k.clone(), b))))
            .collect();
        let mut bound: Option<String> = buckets
            .iter()
            .filter(|c| !c.done && c.keys.is_empty())
            .map(|c| c.after.clone())
            .min();
        let want = room - out.len();
        let take = (want * scale).clamp(want, MAX_TAKE.max(want));
        let mut picks: Vec<(usize, String)> = Vec::new();
        while picks.len() < take {
            let Some(Reverse((sk, b))) = heads.pop() else {
                break;
            };
            if bound.as_ref().is_some_and(|a| *a < sk) {
                heads.push(Reverse((sk, b)));
                break;
            }
            let c = &mut buckets[b];
            c.keys.pop_front();
            match c.keys.front() {
                Some(next) => heads.push(Reverse((next.clone(), b))),
                // Drained before its end: known only up to its `after`.
                None if !c.done && bound.as_ref().is_none_or(|a| c.after < *a) => {
                    bound = Some(c.after.clone());
                }
                None => {}
            }
            picks.push((b, sk));
        }
        if !picks.is_empty() {
            let taken = picks.len();
            let before = out.len();
            read_locks(inner, picks, &wanted, &mut out).await?;
            if out.len() - before < taken && out.len() < room {
                scale = (scale * 2).min(MAX_TAKE);
                batch = first_batch.max(per_page(take * 2)).min(MAX_TAKE);
            }
        }
        if out.len() >= room {
            break;
        }
        // Refill the drained buckets that may hold the next key: every drained one
        // below the smallest buffered key (all of them when none is).
        let head = heads.peek().map(|Reverse((k, _))| k);
        stale = (0..BUCKETS)
            .filter(|&b| {
                let c = &buckets[b];
                !c.done && c.keys.is_empty() && head.is_none_or(|h| c.after < *h)
            })
            .collect();
        if stale.is_empty() && head.is_none() {
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

/// Reads the lease hashes of `picks` (in key order) and appends the live locks that
/// pass the filters to `out` in the same order. A lease is live when its `expires`
/// is above the clock read right after it, on its own node (`TIME` ends each
/// pipeline), as a script on its bucket would read it.
async fn read_locks(
    inner: &Inner,
    picks: Vec<(usize, String)>,
    wanted: &Wanted,
    out: &mut Vec<RawLock>,
) -> Result<(), QueryError> {
    let filtered = wanted.owner.is_some() || wanted.user.is_some();
    let reads = picks.iter().map(|(b, sk)| {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(lock_name(&inner.buckets[*b], sk))
            .arg(&LISTED_FIELDS[..]);
        if filtered {
            cmd.arg("owner").arg("user");
        }
        (*b, cmd)
    });
    let (replies, nows): (Vec<Vec<Option<String>>>, _) =
        read_many(inner, reads.collect(), true).await?;
    for (((_, sk), fields), now) in picks.into_iter().zip(replies).zip(nows) {
        if !sk.starts_with(&wanted.prefix) {
            continue;
        }
        let mut fields = fields.into_iter();
        let Some(lock) = RawLock::from_fields(sk, &mut fields)? else {
            continue;
        };
        if filtered {
            // As tflock_core::LockFilter::matches: a lock without a username (`user`
            // stored empty) matches no username filter.
            let owner = fields.next().flatten();
            let user = fields.next().flatten().filter(|u| !u.is_empty());
            if wanted
                .owner
                .as_ref()
                .is_some_and(|o| owner.as_ref() != Some(o))
                || wanted
                    .user
                    .as_ref()
                    .is_some_and(|u| user.as_ref() != Some(u))
            {
                continue;
            }
        }
        if lock.expires() > now {
            out.push(lock);
        }
    }
    Ok(())
}

/// Runs read-only commands, each on keys of its bucket, and returns their replies in
/// order: one pipeline in all on one node (standalone, Sentinel's primary), else one
/// per bucket (a bucket is one slot of a cluster), all at once. One request a round
/// instead of one a command: the client's cost of a listing is mostly its requests.
/// With `clock`, also each reply's `now`: on the system clock `TIME` at the end of
/// its pipeline (the node's clock, read after the commands), else the injected clock.
async fn read_many<T: redis::FromRedisValue>(
    inner: &Inner,
    cmds: Vec<(usize, redis::Cmd)>,
    clock: bool,
) -> Result<(Vec<T>, Vec<u64>), QueryError> {
    let timed = clock && inner.system_clock;
    let injected = inner.clock.now().0;
    // One group (0) on one node, else one per bucket.
    let one_node = inner.conn.mode() != "cluster";
    let group = |b: usize| if one_node { 0 } else { b };
    let mut pipes: Vec<Option<redis::Pipeline>> = (0..BUCKETS).map(|_| None).collect();
    let order: Vec<usize> = cmds.iter().map(|(b, _)| group(*b)).collect();
    for (b, cmd) in cmds {
        pipes[group(b)]
            .get_or_insert_with(redis::pipe)
            .add_command(cmd);
    }
    let used: Vec<usize> = (0..BUCKETS).filter(|&g| pipes[g].is_some()).collect();
    if timed {
        for &g in &used {
            pipes[g].as_mut().expect("a used group").cmd("TIME");
        }
    }
    let replies = join_all(used.iter().map(|&g| {
        let pipe = pipes[g].as_ref().expect("a pipeline per used group");
        async move { inner.conn.read_pipeline::<Vec<redis::Value>>(pipe).await }
    }))
    .await;
    let mut per_group: Vec<(std::vec::IntoIter<redis::Value>, u64)> = (0..BUCKETS)
        .map(|_| (Vec::new().into_iter(), injected))
        .collect();
    for (&g, r) in used.iter().zip(replies) {
        let mut values = r.map_err(listing_error)?;
        let mut now = injected;
        if timed {
            let (secs, micros): (u64, u64) =
                redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil))
                    .map_err(|e| malformed(&e))?;
            now = secs * 1_000_000 + micros;
        }
        per_group[g] = (values.into_iter(), now);
    }
    let mut out = Vec::with_capacity(order.len());
    let mut nows = Vec::with_capacity(order.len());
    for g in order {
        let (values, now) = &mut per_group[g];
        let v = values
            .next()
            .ok_or_else(|| BackendError::Internal("listing: a reply is missing".into()))?;
        out.push(redis::from_redis_value(v).map_err(|e| malformed(&e))?);
        nows.push(*now);
    }
    Ok((out, nows))
}

fn malformed(e: &dyn std::fmt::Display) -> QueryError {
    BackendError::Internal(format!("listing: a malformed reply: {e}")).into()
}

fn listing_error(e: CallError) -> QueryError {
    BackendError::from(e).into()
}
