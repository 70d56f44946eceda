//! Releases: Unlock by the holder's lease, ForceUnlock (optionally only the token the
//! admin saw) and UnlockByPull on all 64 buckets, each confirmed by `WAIT` with
//! `min_replicas_ack` (see docs/redis-design.md, "Replication").

use futures::future::join_all;
use tflock_core::{
    BackendError, FencingToken, InvalidRequest, LeaseId, PullUnlockResponse, QueueEntry, Resource,
    UnlockError, UnlockResponse,
};

use crate::args::{UnlockArgs, UnlockMode, UnlockPullArgs, exact};
use crate::backend::Inner;
use crate::keys::{BUCKETS, bucket_of, resource_key};
use crate::reply::{UnlockReply, into_locks};

/// [`tflock_core::Backend::unlock`] on Redis.
pub(crate) async fn unlock(
    inner: &Inner,
    resource: &Resource,
    lease_id: &LeaseId,
) -> Result<UnlockResponse, UnlockError> {
    inner.check_open()?;
    let resource = resource.clone().validate("resource")?;
    // An empty or malformed lease id is refused before anything is sent: it never
    // means force.
    lease_id.check("lease_id")?;
    unlock_script(inner, &resource, UnlockMode::Lease(lease_id.as_str())).await
}

/// [`tflock_core::Backend::force_unlock`] on Redis.
pub(crate) async fn force_unlock(
    inner: &Inner,
    resource: &Resource,
    expected_token: Option<FencingToken>,
) -> Result<UnlockResponse, UnlockError> {
    inner.check_open()?;
    let resource = resource.clone().validate("resource")?;
    if let Some(t) = expected_token {
        exact(t.0, || "expected_token".to_string())?;
    }
    unlock_script(
        inner,
        &resource,
        UnlockMode::Force(expected_token.map(|t| t.0)),
    )
    .await
}

async fn unlock_script(
    inner: &Inner,
    resource: &Resource,
    how: UnlockMode<'_>,
) -> Result<UnlockResponse, UnlockError> {
    let sk = resource_key(resource);
    let bucket = bucket_of(resource);
    let args = UnlockArgs {
        storage_key: &sk,
        how,
    };
    let (r, generation) = inner.run_gen(bucket, &args).await?;
    match r.body {
        UnlockReply::NotFound => Err(UnlockError::NotFound),
        UnlockReply::NotOwner => Err(UnlockError::NotOwner),
        UnlockReply::Changed { cur } => Err(UnlockError::Changed {
            expected: FencingToken(match how {
                UnlockMode::Force(Some(t)) => t,
                _ => 0,
            }),
            current: FencingToken(cur.0),
        }),
        UnlockReply::Released { released, to } => {
            inner
                .ensure_change_replicated(bucket, generation, "unlock")
                .await?;
            Ok(UnlockResponse {
                released: released.into_lock()?,
                granted_to: to.map(|v| v.into_view()).transpose()?,
            })
        }
    }
}

/// [`tflock_core::Backend::unlock_by_pull`] on Redis: `unlock_pull.lua` on every
/// bucket.
pub(crate) async fn unlock_by_pull(
    inner: &Inner,
    repo: &str,
    pull: u64,
) -> Result<PullUnlockResponse, UnlockError> {
    inner.check_open()?;
    Resource::new(repo, ".", "default", "").map_err(|e| InvalidRequest::new("repo", e.message))?;
    let args = UnlockPullArgs { repo, pull };
    let args = &args;
    let replies = join_all((0..BUCKETS).map(|b| async move {
        let (r, generation) = inner.run_gen(b, args).await?;
        // With min_replicas_ack, a bucket it changed is confirmed like an unlock.
        if !r.body.released.is_empty() || !r.body.cancelled.is_empty() {
            inner
                .ensure_change_replicated(b, generation, "unlock by pull")
                .await?;
        }
        Ok::<_, BackendError>(r)
    }))
    .await;
    let mut released = Vec::new();
    let mut cancelled = Vec::new();
    for r in replies {
        let r = r?;
        released.extend(r.body.released);
        cancelled.extend(r.body.cancelled);
    }
    released.sort_by(|a, b| a.sk.cmp(&b.sk));
    cancelled.sort_by(|a, b| a.sk.cmp(&b.sk));
    Ok(PullUnlockResponse {
        released: into_locks(released)?,
        cancelled: cancelled
            .into_iter()
            .map(|c| c.e.into_entry(&c.sk).map(QueueEntry::public))
            .collect::<Result<_, _>>()?,
    })
}
