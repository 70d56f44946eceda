//! Handlers of the v1 lock and queue API: decode, check, call the backend, answer.
//!
//! Each handler times its backend call through [`Op`], which also counts calls whose
//! client went away mid-call (`outcome="abandoned"`), e.g. a waiter that gave up.

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use tflock_core::{
    LockFilter, LockPage, LockResponse, PullUnlockResponse, QueueStatus, TransferAuth,
    UnlockResponse,
};

use crate::auth::{Admin, Mutator};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, parse_number};
use crate::state::AppState;
use crate::wire::{
    AcquireBody, CancelledBody, EntriesBody, ListQuery, LockBody, RefreshBody, ReleaseBody,
    ReleasePullBody, ResourceQuery, TransferBody, lease_id,
};

/// A backend call being timed; records `abandoned` if dropped unfinished.
pub(crate) struct Op {
    state: AppState,
    name: &'static str,
    started: Instant,
    done: bool,
}

impl Op {
    pub(crate) fn start(state: &AppState, name: &'static str) -> Self {
        Op {
            state: state.clone(),
            name,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records the outcome (`ok_outcome` of the value, or the error's code) and hands
    /// the result on.
    pub(crate) fn finish<T, E: Into<ApiError>>(
        mut self,
        result: Result<T, E>,
        ok_outcome: impl FnOnce(&T) -> &'static str,
    ) -> Result<T, ApiError> {
        self.done = true;
        let result = result.map_err(Into::into);
        let outcome = match &result {
            Ok(v) => ok_outcome(v),
            Err(e) => e.code.as_str(),
        };
        self.state
            .metrics()
            .operation(self.name, outcome, self.started.elapsed());
        result
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.done {
            self.state
                .metrics()
                .operation(self.name, "abandoned", self.started.elapsed());
        }
    }
}

fn ok<T>(_: &T) -> &'static str {
    "ok"
}

/// `POST /api/v1/locks/acquire`.
///
/// With `wait` the request stays open until the lock is granted or the wait ends. If
/// the client disconnects, hyper drops this future, which drops the backend's call and
/// so its queue entry: nobody is granted a lock on behalf of a caller who left. On
/// server shutdown the wait ends with `backend_unavailable` the same way.
pub(crate) async fn acquire(
    State(state): State<AppState>,
    _caller: Mutator,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Json<LockResponse>, ApiError> {
    let request = body.into_request()?;
    let waits = request.wait.is_some() && !request.reserve;
    let op = Op::start(&state, if waits { "acquire_wait" } else { "acquire" });
    let call = state.backend().try_lock(request);
    let result = if waits {
        tokio::select! {
            r = call => r.map_err(ApiError::from),
            () = state.closing() => Err(ApiError::unavailable(
                "the server is shutting down; the wait was abandoned and its queue entry removed",
            )),
        }
    } else {
        call.await.map_err(ApiError::from)
    };
    let mut response = op.finish(result, |r| {
        if r.acquired {
            "acquired"
        } else if r.queue.is_some() {
            "queued"
        } else {
            "not_acquired"
        }
    })?;
    if !response.acquired {
        // The holder's lease id is its secret; never hand it to someone who did not
        // get the lock, whatever the backend put in the answer.
        response.lock = response.lock.map(|l| l.public());
    }
    Ok(Json(response))
}

/// `POST /api/v1/locks/release`: by lease, or admin `force: true` (ForceUnlock).
pub(crate) async fn release(
    State(state): State<AppState>,
    caller: Mutator,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> Result<Json<UnlockResponse>, ApiError> {
    let resource = body.resource.validate("resource")?;
    let mut response = match (body.force, body.lease_id) {
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "force",
                "give either lease_id or force: true, not both",
            ));
        }
        (true, None) => {
            caller.require_admin()?;
            let op = Op::start(&state, "force_release");
            op.finish(state.backend().force_unlock(&resource).await, ok)?
        }
        (false, Some(id)) => {
            let id = lease_id("lease_id", id)?;
            let op = Op::start(&state, "release");
            op.finish(state.backend().unlock(&resource, &id).await, ok)?
        }
        (false, None) => {
            return Err(ApiError::invalid(
                "lease_id",
                "is required (an admin may send force: true instead)",
            ));
        }
    };
    response.released = response.released.public();
    Ok(Json(response))
}

/// `POST /api/v1/locks/refresh`.
pub(crate) async fn refresh(
    State(state): State<AppState>,
    _caller: Mutator,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<LockBody>, ApiError> {
    let resource = body.resource.validate("resource")?;
    let id = lease_id("lease_id", body.lease_id)?;
    let op = Op::start(&state, "refresh");
    let lock = op.finish(
        state.backend().refresh_lock(&resource, &id, body.ttl).await,
        ok,
    )?;
    Ok(Json(LockBody { lock }))
}

/// `POST /api/v1/locks/transfer`: by lease, or admin `force: true`. The answer holds
/// the new owner's lease id: the caller passes it on.
pub(crate) async fn transfer(
    State(state): State<AppState>,
    caller: Mutator,
    ApiJson(body): ApiJson<TransferBody>,
) -> Result<Json<LockBody>, ApiError> {
    let resource = body.resource.validate("resource")?;
    let to = body.to.into_owner()?;
    let auth = match (body.force, body.lease_id) {
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "force",
                "give either lease_id or force: true, not both",
            ));
        }
        (true, None) => {
            caller.require_admin()?;
            TransferAuth::Admin
        }
        (false, Some(id)) => TransferAuth::Lease(lease_id("lease_id", id)?),
        (false, None) => {
            return Err(ApiError::invalid(
                "lease_id",
                "is required (an admin may send force: true instead)",
            ));
        }
    };
    let op = Op::start(&state, "transfer");
    let lock = op.finish(state.backend().transfer_lock(&resource, auth, to).await, ok)?;
    Ok(Json(LockBody { lock }))
}

/// `POST /api/v1/locks/release-pull` (admin): every lease and queue entry of exactly
/// one pull request, as Atlantis does when a pull request is closed.
pub(crate) async fn release_pull(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<ReleasePullBody>,
) -> Result<Json<PullUnlockResponse>, ApiError> {
    if body.repo.is_empty() {
        return Err(ApiError::invalid("repo", "must not be empty"));
    }
    let op = Op::start(&state, "release_pull");
    let mut response = op.finish(
        state.backend().unlock_by_pull(&body.repo, body.pull).await,
        ok,
    )?;
    for lock in &mut response.released {
        *lock = lock.public();
    }
    Ok(Json(response))
}

/// `GET /api/v1/locks?repo=&owner=&user=&cursor=&limit=`.
pub(crate) async fn list_locks(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<LockPage>, ApiError> {
    let filter = LockFilter {
        repo: q.repo,
        owner: q.owner,
        user: q.user,
        cursor: q.cursor,
        limit: parse_number("limit", q.limit.as_deref())?,
    };
    filter.page_size()?;
    filter.cursor_key()?;
    let op = Op::start(&state, "list_locks");
    let mut page = op.finish(state.backend().list_locks(filter).await, ok)?;
    for lock in &mut page.locks {
        *lock = lock.public();
    }
    Ok(Json(page))
}

/// `GET /api/v1/lock?repo=&path=&workspace=&project_name=`: the holder or 404.
pub(crate) async fn get_lock(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ResourceQuery>,
) -> Result<Json<LockBody>, ApiError> {
    let resource = q.into_resource()?;
    let op = Op::start(&state, "get_lock");
    match op.finish(state.backend().get_lock(&resource).await, ok)? {
        Some(lock) => Ok(Json(LockBody {
            lock: lock.public(),
        })),
        None => Err(ApiError::not_found(format!(
            "{} is not locked",
            resource.lock_key()
        ))),
    }
}

/// `GET /api/v1/queue?repo=&path=&workspace=&project_name=`: holder and queue in grant
/// order.
pub(crate) async fn queue_status(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ResourceQuery>,
) -> Result<Json<QueueStatus>, ApiError> {
    let resource = q.into_resource()?;
    let op = Op::start(&state, "queue_status");
    let mut status = op.finish(state.backend().get_queue_status(&resource).await, ok)?;
    status.lock = status.lock.map(|l| l.public());
    Ok(Json(status))
}

/// `GET /api/v1/queue/user/{username}`.
pub(crate) async fn user_queue(
    State(state): State<AppState>,
    username: Result<Path<String>, PathRejection>,
) -> Result<Json<EntriesBody>, ApiError> {
    let Path(username) = username.map_err(|e| ApiError::invalid("username", e.body_text()))?;
    let op = Op::start(&state, "user_queue");
    let entries = op.finish(state.backend().get_user_queue(&username).await, ok)?;
    Ok(Json(EntriesBody { entries }))
}

/// `DELETE /api/v1/queue/{entry_id}`: a waiter whose entry is cancelled gets
/// `acquired: false, reason: "cancelled"`.
pub(crate) async fn cancel_entry(
    State(state): State<AppState>,
    _caller: Mutator,
    entry_id: Result<Path<String>, PathRejection>,
) -> Result<Json<CancelledBody>, ApiError> {
    let Path(entry_id) = entry_id.map_err(|e| ApiError::invalid("entry_id", e.body_text()))?;
    let op = Op::start(&state, "cancel_entry");
    let cancelled = op.finish(state.backend().cancel_queue_entry(&entry_id).await, ok)?;
    Ok(Json(CancelledBody { cancelled }))
}
