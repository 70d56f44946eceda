//! The queues: GetQueueStatus, GetUserQueue (all 64 buckets) and CancelQueueEntry
//! (in the entry's own bucket, else in all the others). The scripts return raw
//! entries; [`QueueEntryView::ordered`] orders them (the one place the order is
//! written in Rust).

use std::collections::BTreeMap;

use futures::future::join_all;
use tflock_core::{
    BackendError, CancelError, QueryError, QueueEntryView, QueueStatus, Resource, Timestamp,
};

use crate::args::{CancelArgs, QueueStatusArgs, UserQueueArgs};
use crate::backend::Inner;
use crate::keys::{BUCKETS, bucket_of, bucket_of_entry, resource_key};
use crate::reply::{CancelReply, RawLock};

/// [`tflock_core::Backend::get_queue_status`] on Redis.
pub(crate) async fn queue_status(
    inner: &Inner,
    resource: &Resource,
) -> Result<QueueStatus, QueryError> {
    inner.check_open()?;
    let resource = resource.clone().validate("resource")?;
    let sk = resource_key(&resource);
    let r = inner
        .run(bucket_of(&resource), &QueueStatusArgs { storage_key: &sk })
        .await?;
    let now = Timestamp(r.now.0);
    let entries = r
        .body
        .entries
        .into_iter()
        .map(|e| e.into_entry(&sk))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(QueueStatus {
        resource,
        lock: r.body.lock.map(RawLock::into_lock).transpose()?,
        entries: QueueEntryView::ordered(&entries, now, &inner.settings.starvation_policy()),
    })
}

/// [`tflock_core::Backend::get_user_queue`] on Redis.
pub(crate) async fn user_queue(
    inner: &Inner,
    username: &str,
) -> Result<Vec<QueueEntryView>, QueryError> {
    inner.check_open()?;
    let replies = inner.run_all(&UserQueueArgs { username }).await?;
    let policy = inner.settings.starvation_policy();
    let mut by_key = BTreeMap::new();
    for r in replies {
        let now = Timestamp(r.now.0);
        for q in r.body.queues {
            let entries = q
                .entries
                .into_iter()
                .map(|e| e.into_entry(&q.sk))
                .collect::<Result<Vec<_>, _>>()?;
            let views: Vec<_> = QueueEntryView::ordered(&entries, now, &policy)
                .into_iter()
                .filter(|v| v.entry.owner.username() == Some(username))
                .collect();
            by_key.insert(q.sk, views);
        }
    }
    Ok(by_key.into_values().flatten().collect())
}

/// [`tflock_core::Backend::cancel_queue_entry`] on Redis.
pub(crate) async fn cancel(
    inner: &Inner,
    entry_id: &str,
    expected_resource: Option<&Resource>,
) -> Result<QueueEntryView, CancelError> {
    inner.check_open()?;
    if entry_id.is_empty() {
        return Err(CancelError::NotFound);
    }
    if let Some(r) = expected_resource {
        // The entry can only wait in that resource's bucket; the script checks
        // it still waits there in the same step as the removal.
        let r = r.clone().validate("resource")?;
        let sk = resource_key(&r);
        return match cancel_in(inner, bucket_of(&r), entry_id, &sk).await? {
            Some(view) => Ok(view),
            None => Err(CancelError::NotFound),
        };
    }
    let own = bucket_of_entry(entry_id);
    if let Some(bucket) = own
        && let Some(view) = cancel_in(inner, bucket, entry_id, "").await?
    {
        return Ok(view);
    }
    // An entry imported from another store keeps its id, whose first digits need
    // not name its bucket: look in the others.
    let others = join_all(
        (0..BUCKETS)
            .filter(|b| Some(*b) != own)
            .map(|b| cancel_in(inner, b, entry_id, "")),
    )
    .await;
    let mut failed = None;
    for r in others {
        match r {
            Ok(Some(view)) => return Ok(view),
            Ok(None) => {}
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Err(CancelError::NotFound),
    }
}

/// Cancels entry `entry_id` if bucket `bucket` holds it (in the queue of storage
/// key `expected`, unless that is empty).
async fn cancel_in(
    inner: &Inner,
    bucket: usize,
    entry_id: &str,
    expected: &str,
) -> Result<Option<QueueEntryView>, BackendError> {
    let r = inner
        .run(bucket, &CancelArgs { entry_id, expected })
        .await?;
    match r.body {
        CancelReply::Cancelled { entry } => Ok(Some(entry.into_view()?)),
        CancelReply::NotFound => Ok(None),
    }
}
