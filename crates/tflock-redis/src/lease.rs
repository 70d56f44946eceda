//! Changes to a live lease: RefreshLock and TransferLock (by the holder's lease or
//! as an admin), each confirmed by `WAIT` with `min_replicas_ack`.

use std::time::Duration;

use tflock_core::{LeaseId, Lock, Owner, RefreshError, Resource, TransferAuth, TransferError};

use crate::args::{OwnerArgs, RefreshArgs, TransferArgs, TransferMode};
use crate::backend::Inner;
use crate::keys::{bucket_of, resource_key};
use crate::reply::{RefreshReply, TransferReply};

/// [`tflock_core::Backend::refresh_lock`] on Redis.
pub(crate) async fn refresh_lock(
    inner: &Inner,
    resource: &Resource,
    lease_id: &LeaseId,
    ttl: Duration,
) -> Result<Lock, RefreshError> {
    inner.check_open()?;
    let resource = resource.clone().validate("resource")?;
    lease_id.check("lease_id")?;
    let ttl = inner.settings.resolve_ttl(Some(ttl))?;
    let sk = resource_key(&resource);
    let bucket = bucket_of(&resource);
    let args = RefreshArgs {
        storage_key: &sk,
        lease: lease_id.as_str(),
        ttl,
    };
    let (r, generation) = inner.run_gen(bucket, &args).await?;
    match r.body {
        RefreshReply::Refreshed { lock } => {
            inner
                .ensure_change_replicated(bucket, generation, "refresh")
                .await?;
            Ok(lock.into_lock()?)
        }
        RefreshReply::Lost => Err(RefreshError::LeaseLost),
    }
}

/// [`tflock_core::Backend::transfer_lock`] on Redis.
pub(crate) async fn transfer_lock(
    inner: &Inner,
    resource: &Resource,
    auth: TransferAuth,
    to: Owner,
) -> Result<Lock, TransferError> {
    inner.check_open()?;
    let resource = resource.clone().validate("resource")?;
    let to = to.validate("to")?;
    let sk = resource_key(&resource);
    let to = OwnerArgs::of(&to)?;
    // The mode is explicit: an empty lease id never means admin.
    let auth = match &auth {
        TransferAuth::Lease(l) => {
            l.check("lease_id")?;
            TransferMode::Lease(l.as_str())
        }
        TransferAuth::Admin => TransferMode::Admin,
    };
    let bucket = bucket_of(&resource);
    let args = TransferArgs {
        storage_key: &sk,
        auth,
        to: &to,
    };
    let (r, generation) = inner.run_gen(bucket, &args).await?;
    match r.body {
        TransferReply::Transferred { lock } => {
            inner
                .ensure_change_replicated(bucket, generation, "transfer")
                .await?;
            Ok(lock.into_lock()?)
        }
        TransferReply::NotFound => Err(TransferError::NotFound),
        TransferReply::Lost => Err(TransferError::LeaseLost),
    }
}
