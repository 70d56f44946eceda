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
    UnlockResponse, WaitSpec,
};

use crate::auth::{Admin, Mutator};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, parse_number};
use crate::limits::timed_out;
use crate::state::AppState;
use crate::wire::{
    AcquireBody, CancelQuery, CancelledBody, EntriesBody, ErrorBody, ListQuery, LockBody,
    RefreshBody, ReleaseBody, ReleasePullBody, ResourceQuery, TransferBody, lease_id,
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
///
/// The wait is clamped to [`crate::Limits::max_wait`], and the whole call is bounded
/// by its wait plus [`crate::Limits::wait_slack`] (a call that does not wait by
/// [`crate::Limits::request_timeout`]): a backend that never ends the wait gets the
/// caller a 503, not a hang.
#[utoipa::path(post, path = "/api/v1/locks/acquire", tag = "locks",
    summary = "TryLock: acquire, re-lock, wait in line or reserve a place",
    description = "Not acquiring a held lock is a normal answer (`acquired: false`, \
        `reason: held`), not an error. `lock` is the holder's view, with `lease_id` only \
        when the caller holds it.",
    request_body = AcquireBody,
    security(("api_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Acquired, not acquired, or queued", body = LockResponse),
        (status = 429, description = "`queue_full`: the resource's queue is full", body = ErrorBody),
    ))]
pub(crate) async fn acquire(
    State(state): State<AppState>,
    _caller: Mutator,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<Json<LockResponse>, ApiError> {
    let mut request = body.into_request()?;
    let limits = state.limits();
    let waits = request.wait.is_some() && !request.reserve;
    let bound = match request.wait {
        _ if !waits => limits.request_timeout,
        Some(WaitSpec::For(d)) => {
            let d = d.min(limits.max_wait);
            request.wait = Some(WaitSpec::For(d));
            limits.wait_bound(d)
        }
        _ => limits.wait_bound(limits.max_wait),
    };
    let op = Op::start(&state, if waits { "acquire_wait" } else { "acquire" });
    let call = async {
        match tokio::time::timeout(bound, state.backend().try_lock(request)).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(timed_out(bound)),
        }
    };
    let result = if waits {
        tokio::select! {
            r = call => r,
            () = state.closing() => Err(ApiError::unavailable(
                "the server is shutting down; the wait was abandoned and its queue entry removed",
            )),
        }
    } else {
        call.await
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
#[utoipa::path(post, path = "/api/v1/locks/release", tag = "locks",
    summary = "Unlock by lease, or (admin) force-unlock",
    description = "Ends the lease; the same atomic step hands the lock to the best queue \
        entry, if any (`granted_to`). With `force: true` and `expected_token`, only if \
        the live lease still has that fencing token (else 409 `not_owner`, nothing \
        changes).",
    request_body = ReleaseBody,
    security(("api_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Released", body = UnlockResponse),
        (status = 403, description = "`forbidden`: `force` needs the admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: the resource is not locked", body = ErrorBody),
        (status = 400, description = "`invalid_request`: a malformed body, lease id or field combination", body = ErrorBody),
        (status = 409, description = "`not_owner`: held under another lease, or (force with `expected_token`) under another fencing token", body = ErrorBody),
    ))]
pub(crate) async fn release(
    State(state): State<AppState>,
    caller: Mutator,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> Result<Json<UnlockResponse>, ApiError> {
    let resource = body.resource.validate("resource")?;
    if body.expected_token.is_some() && !body.force {
        return Err(ApiError::invalid(
            "expected_token",
            "only goes with force: true (a lease id already names the one lease it releases)",
        ));
    }
    let mut response = match (body.force, body.lease_id) {
        (true, Some(_)) => {
            return Err(ApiError::invalid(
                "force",
                "give either lease_id or force: true, not both",
            ));
        }
        (true, None) => {
            caller.require_admin()?;
            let expected = body.expected_token.map(tflock_core::FencingToken);
            let op = Op::start(&state, "force_release");
            op.finish(state.backend().force_unlock(&resource, expected).await, ok)?
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
#[utoipa::path(post, path = "/api/v1/locks/refresh", tag = "locks",
    summary = "Extend a lease to now + ttl",
    request_body = RefreshBody,
    security(("api_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Refreshed; the holder's view", body = LockBody),
        (status = 409, description = "`lease_lost`: expired or not the current lease", body = ErrorBody),
    ))]
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
#[utoipa::path(post, path = "/api/v1/locks/transfer", tag = "locks",
    summary = "Give the lock to a new owner with a new lease and fencing token",
    request_body = TransferBody,
    security(("api_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Transferred; the answer holds the new owner's lease_id", body = LockBody),
        (status = 403, description = "`forbidden`: `force` needs the admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: the resource is not locked", body = ErrorBody),
        (status = 409, description = "`lease_lost`: expired or not the current lease", body = ErrorBody),
    ))]
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
#[utoipa::path(post, path = "/api/v1/locks/release-pull", tag = "admin",
    summary = "Release every lock and queue entry of exactly one pull request (admin)",
    request_body = ReleasePullBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "What was released and cancelled", body = PullUnlockResponse),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
    ))]
pub(crate) async fn release_pull(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<ReleasePullBody>,
) -> Result<Json<PullUnlockResponse>, ApiError> {
    if body.repo.is_empty() {
        return Err(ApiError::invalid("repo", "must not be empty"));
    }
    crate::wire::check_pull("pull", Some(body.pull))?;
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
#[utoipa::path(get, path = "/api/v1/locks", tag = "locks",
    summary = "Held locks in key order, filtered and paged",
    params(ListQuery),
    responses((status = 200, description = "One page", body = LockPage)))]
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
#[utoipa::path(get, path = "/api/v1/lock", tag = "locks",
    summary = "The holder of one resource",
    params(ResourceQuery),
    responses(
        (status = 200, description = "The holder (no lease_id)", body = LockBody),
        (status = 404, description = "`not_found`: the resource is not locked", body = ErrorBody),
    ))]
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
#[utoipa::path(get, path = "/api/v1/queue", tag = "queue",
    summary = "Holder and queue of one resource, in grant order",
    params(ResourceQuery),
    responses((status = 200, description = "Holder and entries", body = QueueStatus)))]
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
#[utoipa::path(get, path = "/api/v1/queue/user/{username}", tag = "queue",
    summary = "Every queue entry of one user, on every resource",
    params(("username" = String, Path, description = "The VCS username")),
    responses((status = 200, description = "The user's entries", body = EntriesBody)))]
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
#[utoipa::path(delete, path = "/api/v1/queue/{entry_id}", tag = "queue",
    summary = "Cancel a queue entry (a waiter then answers acquired: false, reason: cancelled)",
    description = "With the expected resource in the query (all four parts, or none), \
        the entry is cancelled only if it still waits in that resource's queue, checked \
        in the same atomic step (else 404 `not_found`, nothing changes).",
    params(("entry_id" = String, Path, description = "The entry's id"), CancelQuery),
    security(("api_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The cancelled entry", body = CancelledBody),
        (status = 400, description = "`invalid_request`: a bad or partial expected resource", body = ErrorBody),
        (status = 404, description = "`not_found`: no entry with that id (in the expected resource's queue)", body = ErrorBody),
    ))]
pub(crate) async fn cancel_entry(
    State(state): State<AppState>,
    _caller: Mutator,
    entry_id: Result<Path<String>, PathRejection>,
    ApiQuery(q): ApiQuery<CancelQuery>,
) -> Result<Json<CancelledBody>, ApiError> {
    let Path(entry_id) = entry_id.map_err(|e| ApiError::invalid("entry_id", e.body_text()))?;
    let expected = q.into_expected()?;
    let op = Op::start(&state, "cancel_entry");
    let cancelled = op.finish(
        state
            .backend()
            .cancel_queue_entry(&entry_id, expected.as_ref())
            .await,
        ok,
    )?;
    Ok(Json(CancelledBody { cancelled }))
}
