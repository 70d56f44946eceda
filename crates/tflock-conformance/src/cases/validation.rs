//! Bad input: rejected with the field named, and nothing changes.

use std::time::Duration;

use tflock_core::{
    ErrorCode, LockRequest, Owner, QueryError, RefreshError, Resource, TransferAuth, TransferError,
    UnlockError,
};

use crate::Harness;
use crate::support::*;

/// A resource built without validation, so the backend has to check it.
fn raw(repo: &str, path: &str, workspace: &str, project_name: &str) -> Resource {
    Resource {
        repo: repo.into(),
        path: path.into(),
        workspace: workspace.into(),
        project_name: project_name.into(),
    }
}

fn mallory() -> Owner {
    user_owner("mallory", "mallory")
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug, E: std::fmt::Debug>(
    what: &str,
    result: Result<T, E>,
    code: impl Fn(&E) -> (ErrorCode, Option<String>),
    field: &str,
) {
    match result {
        Err(e) => {
            let (c, f) = code(&e);
            assert_eq!(c, ErrorCode::InvalidRequest, "{what}: {e:?}");
            assert_eq!(
                f.as_deref(),
                Some(field),
                "{what}: the field named in {e:?}"
            );
        }
        Ok(v) => panic!("{what}: expected invalid_request ({field}), got {v:?}"),
    }
}

/// TryLock with a bad resource part, an empty owner, a zero or too long ttl, or an
/// empty request id is refused with `invalid_request` naming the field, whether it
/// asks to wait, to reserve or neither; no lock and no queue entry is made.
pub async fn invalid_try_lock_is_rejected_and_changes_nothing<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let held = resource("o/held");
    let free = resource("o/free");
    let holder = fx.lock(request(&held, "holder")).await;

    let as_mallory = |r: &Resource| request_as(r, mallory());
    let mut cases: Vec<(&str, LockRequest, &str)> = vec![
        (
            "path ../x",
            as_mallory(&raw("o/r", "../x", "default", "")),
            "resource.path",
        ),
        (
            "absolute path",
            as_mallory(&raw("o/r", "/abs", "default", "")),
            "resource.path",
        ),
        (
            "repo without slash",
            as_mallory(&raw("norepo", ".", "default", "")),
            "resource.repo",
        ),
        (
            "empty workspace",
            as_mallory(&raw("o/r", ".", "", "")),
            "resource.workspace",
        ),
        (
            "workspace of 256 bytes",
            as_mallory(&raw("o/r", ".", &"w".repeat(256), "")),
            "resource.workspace",
        ),
        (
            "control character in project name",
            as_mallory(&raw("o/r", ".", "default", "a\nb")),
            "resource.project_name",
        ),
        (
            "zero ttl",
            as_mallory(&free).with_ttl(Duration::ZERO),
            "ttl",
        ),
        (
            "ttl above max_ttl",
            as_mallory(&free).with_ttl(fx.settings.max_ttl + Duration::from_secs(1)),
            "ttl",
        ),
        (
            "empty request id",
            as_mallory(&free).with_request_id(""),
            "request_id",
        ),
    ];
    let mut empty_owner = request(&free, "");
    empty_owner.owner.user = mallory().user;
    cases.push(("empty owner", empty_owner, "owner"));
    // The same refusals on a held resource, where a valid request would queue.
    cases.push((
        "zero ttl, held",
        as_mallory(&held).with_ttl(Duration::ZERO),
        "ttl",
    ));
    let mut empty_owner = request(&held, "");
    empty_owner.owner.user = mallory().user;
    cases.push(("empty owner, held", empty_owner, "owner"));

    for (what, req, field) in cases {
        for (mode, req) in [
            ("no wait", req.clone()),
            ("wait", req.clone().with_wait(Duration::from_secs(30))),
            ("reserve", req.clone().reserving()),
        ] {
            let what = format!("{what} ({mode})");
            let answer = bounded(&what, fx.backend.try_lock(req)).await;
            assert_invalid(
                &what,
                answer,
                |e| (e.code(), e.field().map(String::from)),
                field,
            );
        }
    }

    assert_eq!(
        fx.all_locks().await,
        [holder.public()],
        "only the holder's lock exists"
    );
    assert!(
        fx.queue(&held).await.is_empty(),
        "a refused request was queued"
    );
    assert_eq!(
        fx.holder(&free).await,
        None,
        "a refused request was granted"
    );
    let queued = fx
        .backend
        .get_user_queue("mallory")
        .await
        .expect("get_user_queue");
    assert!(
        queued.is_empty(),
        "a refused request left an entry: {queued:?}"
    );
}

/// Unlock, ForceUnlock, RefreshLock, TransferLock, GetLock and GetQueueStatus refuse a
/// bad resource naming the field; refresh refuses a zero ttl and transfer an empty
/// owner, changing nothing; a valid but unnormalised spelling of the resource works.
pub async fn other_operations_reject_invalid_input<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let lock = fx
        .lock(request(&r, "holder").with_ttl(Duration::from_secs(60)))
        .await;
    let bad = raw("o/r", "../x", "default", "");
    let id = lease(&lock);
    let field = "resource.path";

    let unlock_err = |e: &UnlockError| (e.code(), e.field().map(String::from));
    let refresh_err = |e: &RefreshError| (e.code(), e.field().map(String::from));
    let transfer_err = |e: &TransferError| (e.code(), e.field().map(String::from));
    let query_err = |e: &QueryError| (e.code(), e.field().map(String::from));

    assert_invalid(
        "unlock",
        fx.backend.unlock(&bad, &id).await,
        unlock_err,
        field,
    );
    assert_invalid(
        "force_unlock",
        fx.backend.force_unlock(&bad, None).await,
        unlock_err,
        field,
    );
    assert_invalid(
        "refresh_lock",
        fx.backend
            .refresh_lock(&bad, &id, Duration::from_secs(60))
            .await,
        refresh_err,
        field,
    );
    assert_invalid(
        "transfer_lock",
        fx.backend
            .transfer_lock(&bad, TransferAuth::Admin, Owner::named("x"))
            .await,
        transfer_err,
        field,
    );
    assert_invalid(
        "get_lock",
        fx.backend.get_lock(&bad).await,
        query_err,
        field,
    );
    assert_invalid(
        "get_queue_status",
        fx.backend.get_queue_status(&bad).await,
        query_err,
        field,
    );
    assert_invalid(
        "refresh_lock with ttl 0",
        fx.backend.refresh_lock(&r, &id, Duration::ZERO).await,
        refresh_err,
        "ttl",
    );
    let empty_owner = fx
        .backend
        .transfer_lock(&r, TransferAuth::Lease(id.clone()), Owner::named(""))
        .await;
    match &empty_owner {
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "transfer to '': {e:?}");
            assert!(
                e.field().is_some_and(|f| f.ends_with("owner")),
                "transfer to '': the field should name the owner: {e:?}"
            );
        }
        Ok(l) => panic!("transfer to an empty owner: expected invalid_request, got {l:?}"),
    }
    assert_eq!(fx.holder(&r).await, Some(lock.public()), "nothing changed");

    let spelled = raw("o/r", "./", "default", "");
    fx.backend
        .unlock(&spelled, &id)
        .await
        .expect("unlock with path './' (normalised to '.')");
    assert_eq!(fx.holder(&r).await, None);
}
