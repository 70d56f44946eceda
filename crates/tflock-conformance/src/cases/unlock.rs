//! Unlock, ForceUnlock and UnlockByPull.

use std::collections::BTreeSet;
use std::time::Duration;

use tflock_core::{ErrorCode, LeaseId, NotAcquiredReason, Owner, PullInfo, UnlockError};

use crate::Harness;
use crate::support::*;

/// Unlock by the holder ends the lease: the answer shows the released lock (public
/// view), nothing was handed on, and the resource is free.
pub async fn unlock_by_holder_frees_the_resource<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let lock = fx.lock(request(&r, "o/r#1")).await;
    let unlocked = fx.unlock(&lock).await;
    assert_eq!(
        unlocked.released,
        lock.public(),
        "the released lock, public view"
    );
    assert_eq!(unlocked.granted_to, None, "nobody queued, nobody granted");
    assert_eq!(fx.holder(&r).await, None);
    assert!(fx.all_locks().await.is_empty());
    fx.lock(request(&r, "o/r#2")).await;
}

/// Unlock with a lease that is not the holder's: `not_owner`, and the lock stays.
pub async fn unlock_with_a_wrong_lease_is_not_owner<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let lock = fx.lock(request(&r, "o/r#1")).await;
    let err = fx
        .backend
        .unlock(&r, &LeaseId::generate())
        .await
        .expect_err("unlock with a wrong lease");
    assert!(
        matches!(err, UnlockError::NotOwner),
        "expected NotOwner, got {err:?}"
    );
    assert_eq!(err.code(), ErrorCode::NotOwner);
    assert_eq!(
        fx.holder(&r).await,
        Some(lock.public()),
        "the lock is unchanged"
    );
}

/// Unlock of a resource nobody holds: `not_found`.
pub async fn unlock_of_a_free_resource_is_not_found<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let err = fx
        .backend
        .unlock(&resource("o/r"), &LeaseId::generate())
        .await
        .expect_err("unlock of a free resource");
    assert!(
        matches!(err, UnlockError::NotFound),
        "expected NotFound, got {err:?}"
    );
    assert_eq!(err.code(), ErrorCode::NotFound);
}

/// ForceUnlock (admin) ends whoever's lease, and hands the lock on like an unlock.
pub async fn force_unlock_releases_any_holder<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let lock = fx.lock(request(&r, "o/r#1")).await;
    let unlocked = fx
        .backend
        .force_unlock(&r, None)
        .await
        .expect("force_unlock");
    assert_eq!(unlocked.released, lock.public());
    assert_eq!(unlocked.granted_to, None);
    assert_eq!(fx.holder(&r).await, None);
    let err = fx
        .backend
        .unlock(&r, &lease(&lock))
        .await
        .expect_err("unlock with the force-unlocked lease");
    assert!(
        matches!(err, UnlockError::NotFound),
        "expected NotFound, got {err:?}"
    );

    // With a queue, the forced release hands on.
    let lock = fx.lock(request(&r, "o/r#2")).await;
    let placement = fx.reserve(request(&r, "o/r#3")).await;
    let unlocked = fx
        .backend
        .force_unlock(&r, None)
        .await
        .expect("force_unlock");
    assert_eq!(unlocked.released, lock.public());
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.entry_id),
        Some(placement.entry_id)
    );
    assert_eq!(fx.holder_name(&r).await.as_deref(), Some("o/r#3"));
}

/// ForceUnlock of a resource nobody holds: `not_found`.
pub async fn force_unlock_of_a_free_resource_is_not_found<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let err = fx
        .backend
        .force_unlock(&resource("o/r"), None)
        .await
        .expect_err("force_unlock of a free resource");
    assert!(
        matches!(err, UnlockError::NotFound),
        "expected NotFound, got {err:?}"
    );
    assert_eq!(err.code(), ErrorCode::NotFound);
}

fn named_with_pull(owner: &str, num: u64) -> Owner {
    Owner {
        pull: Some(PullInfo {
            num,
            ..PullInfo::default()
        }),
        ..Owner::named(owner)
    }
}

/// UnlockByPull ends every lease and queue entry of exactly that repository and pull
/// (matched by `pull.num` or by the owner string `{repo}#{pull}`), and nothing of
/// `owner/repo2`, of other pulls (`#12` is not `#1`), or of another repository's
/// resources. Released locks hand on; cancelled waiters answer `cancelled`.
pub async fn unlock_by_pull_releases_exactly_that_pull<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let at = |repo: &str, path: &str| resource_at(repo, path);

    // Released: pull metadata and owner string; owner string only; pull metadata only.
    fx.lock(request_as(
        &at("owner/repo", "a"),
        pull_owner("owner/repo", 1),
    ))
    .await;
    fx.lock(request(&at("owner/repo", "b"), "owner/repo#1"))
        .await;
    fx.lock(request_as(
        &at("owner/repo", "c"),
        named_with_pull("custom", 1),
    ))
    .await;
    // Kept: another repository's pull 1, other pulls, pull 1's name on repo2's resource.
    fx.lock(request_as(
        &at("owner/repo2", "a"),
        pull_owner("owner/repo2", 1),
    ))
    .await;
    fx.lock(request_as(
        &at("owner/repo", "e"),
        pull_owner("owner/repo", 2),
    ))
    .await;
    fx.lock(request_as(
        &at("owner/repo", "f"),
        pull_owner("owner/repo", 12),
    ))
    .await;
    fx.lock(request(&at("owner/repo2", "g"), "owner/repo#1"))
        .await;
    fx.lock(request_as(
        &at("owner/repo2", "z"),
        pull_owner("owner/repo2", 5),
    ))
    .await;

    // Queue entries: pull 1 reserves on e and waits on f (both cancelled); repo2's
    // pull 1 reserves on repo2/z (kept); pull 3 reserves on a (granted a when pull 1's
    // lock there ends).
    let reserved = fx
        .reserve(request_as(
            &at("owner/repo", "e"),
            pull_owner("owner/repo", 1),
        ))
        .await;
    let (waiter, waiting) = fx
        .spawn_waiter(
            request_as(&at("owner/repo", "f"), pull_owner("owner/repo", 1))
                .with_wait(Duration::from_secs(300)),
        )
        .await;
    let kept_entry = fx
        .reserve(request_as(
            &at("owner/repo2", "z"),
            pull_owner("owner/repo2", 1),
        ))
        .await;
    fx.reserve(request_as(
        &at("owner/repo", "a"),
        pull_owner("owner/repo", 3),
    ))
    .await;

    let answer = fx
        .backend
        .unlock_by_pull("owner/repo", 1)
        .await
        .expect("unlock_by_pull");
    let released: BTreeSet<_> = answer.released.iter().map(|l| l.key.clone()).collect();
    let want: BTreeSet<_> = [
        "owner/repo/a/default/",
        "owner/repo/b/default/",
        "owner/repo/c/default/",
    ]
    .map(String::from)
    .into();
    assert_eq!(released, want, "released locks");
    let cancelled: BTreeSet<_> = answer
        .cancelled
        .iter()
        .map(|e| e.entry_id.clone())
        .collect();
    let want: BTreeSet<_> = [reserved.entry_id, waiting.entry.entry_id].into();
    assert_eq!(cancelled, want, "cancelled queue entries");

    let holder = async |repo: &str, path: &str| fx.holder_name(&at(repo, path)).await;
    assert_eq!(
        holder("owner/repo", "a").await.as_deref(),
        Some("owner/repo#3"),
        "a hands on"
    );
    assert_eq!(holder("owner/repo", "b").await, None);
    assert_eq!(holder("owner/repo", "c").await, None);
    assert_eq!(
        holder("owner/repo2", "a").await.as_deref(),
        Some("owner/repo2#1")
    );
    assert_eq!(
        holder("owner/repo", "e").await.as_deref(),
        Some("owner/repo#2")
    );
    assert_eq!(
        holder("owner/repo", "f").await.as_deref(),
        Some("owner/repo#12")
    );
    assert_eq!(
        holder("owner/repo2", "g").await.as_deref(),
        Some("owner/repo#1")
    );
    assert_eq!(
        holder("owner/repo2", "z").await.as_deref(),
        Some("owner/repo2#5")
    );
    assert!(fx.queue(&at("owner/repo", "e")).await.is_empty());
    assert!(fx.queue(&at("owner/repo", "f")).await.is_empty());
    let z = fx.queue(&at("owner/repo2", "z")).await;
    assert_eq!(
        z.iter()
            .map(|e| e.entry.entry_id.clone())
            .collect::<Vec<_>>(),
        [kept_entry.entry_id],
        "repo2's entry is kept"
    );

    let answer = expect_not_acquired("pull 1's waiter", join("waiter", waiter).await);
    assert_eq!(answer.reason, Some(NotAcquiredReason::Cancelled));
}

/// UnlockByPull with a GitLab repository name holding several slashes matches that
/// repository only, not its parent group's or a sibling's.
pub async fn unlock_by_pull_handles_gitlab_subgroups<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let mine = resource("group/sub/repo");
    let parent = resource("group/sub");
    let sibling = resource("group/sub/repo2");
    fx.lock(request_as(&mine, pull_owner("group/sub/repo", 7)))
        .await;
    fx.lock(request_as(&parent, pull_owner("group/sub", 7)))
        .await;
    fx.lock(request_as(&sibling, pull_owner("group/sub/repo2", 7)))
        .await;

    let answer = fx
        .backend
        .unlock_by_pull("group/sub/repo", 7)
        .await
        .expect("unlock_by_pull");
    let keys: Vec<_> = answer.released.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["group/sub/repo/./default/"]);
    assert_eq!(fx.holder(&mine).await, None);
    assert_eq!(
        fx.holder_name(&parent).await.as_deref(),
        Some("group/sub#7")
    );
    assert_eq!(
        fx.holder_name(&sibling).await.as_deref(),
        Some("group/sub/repo2#7")
    );
}
