//! ListLocks, GetUserQueue and CancelQueueEntry.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use tflock_core::{
    CancelError, ErrorCode, LockFilter, LockPage, NotAcquiredReason, QueryError, Resource,
};

use crate::Harness;
use crate::support::*;

/// ListLocks filters by exact repository, owner string and username, alone or together.
pub async fn list_locks_filters_by_repo_owner_and_user<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    for (repo, path, owner, user) in [
        ("o/r1", ".", "o/r1#1", "alice"),
        ("o/r1", "x", "o/r1#2", "bob"),
        ("o/r2", ".", "o/r2#1", "alice"),
        ("o/r10", ".", "o/r10#1", "carol"),
        ("group/o/r1", ".", "group/o/r1#1", "alice"),
    ] {
        fx.lock(request_as(
            &resource_at(repo, path),
            user_owner(owner, user),
        ))
        .await;
    }
    let keys = async |filter: LockFilter| -> Vec<String> {
        let page = fx
            .backend
            .list_locks(filter.clone())
            .await
            .expect("list_locks");
        assert_eq!(
            page.next_cursor, None,
            "{filter:?}: one page holds them all"
        );
        page.locks.into_iter().map(|l| l.key).collect()
    };
    let f = |repo: Option<&str>, owner: Option<&str>, user: Option<&str>| LockFilter {
        repo: repo.map(String::from),
        owner: owner.map(String::from),
        user: user.map(String::from),
        ..LockFilter::default()
    };

    assert_eq!(
        keys(f(None, None, None)).await.len(),
        5,
        "no filter: every lock"
    );
    assert_eq!(
        keys(f(Some("o/r1"), None, None)).await,
        ["o/r1/./default/", "o/r1/x/default/"],
        "repo is matched exactly (not o/r10, not group/o/r1)"
    );
    assert_eq!(
        keys(f(Some("o"), None, None)).await,
        Vec::<String>::new(),
        "no prefix match"
    );
    assert_eq!(
        keys(f(None, Some("o/r1#2"), None)).await,
        ["o/r1/x/default/"]
    );
    assert_eq!(
        keys(f(None, Some("o/r1#"), None)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        keys(f(None, None, Some("alice"))).await,
        [
            "group/o/r1/./default/",
            "o/r1/./default/",
            "o/r2/./default/"
        ],
        "by user, in key order"
    );
    assert_eq!(
        keys(f(Some("o/r1"), None, Some("alice"))).await,
        ["o/r1/./default/"],
        "filters combine"
    );
}

/// 1,000 resources whose storage-key order differs from the Atlantis-key order
/// (`org/a` < `org/a-b` by parts, but `org/a-b/` < `org/a/` as strings).
fn thousand_resources() -> Vec<Resource> {
    const REPOS: [&str; 8] = [
        "org/a", "org/a-b", "org/a/b", "org/ab", "org/B", "org2/a", "org/a.b", "orga/x",
    ];
    const PATHS: [&str; 5] = [".", "a", "a/b", "a-b", "z"];
    const WORKSPACES: [&str; 5] = ["default", "prod", "staging", "dev", "a"];
    (0..1000)
        .map(|i| {
            Resource::new(
                REPOS[i % 8],
                PATHS[(i / 8) % 5],
                WORKSPACES[(i / 40) % 5],
                if i / 200 == 0 {
                    String::new()
                } else {
                    format!("p{}", i / 200)
                },
            )
            .expect("valid")
        })
        .collect()
}

/// Reads every page of `filter` with page size `limit`; checks that every page but
/// the last is full, that only the last has no cursor, and that no empty page follows
/// a full one (the page that ends the listing says so itself).
async fn read_all(fx: &Fixture, filter: LockFilter, limit: usize) -> Vec<Resource> {
    let mut cursor = None;
    let mut all = Vec::new();
    for page_no in 1.. {
        assert!(
            page_no <= 1000 / limit + 2,
            "more pages than there are locks"
        );
        let LockPage { locks, next_cursor } = fx
            .backend
            .list_locks(LockFilter {
                cursor: cursor.take(),
                limit: Some(limit),
                ..filter.clone()
            })
            .await
            .unwrap_or_else(|e| panic!("list_locks page {page_no}: {e}"));
        assert!(
            locks.len() <= limit,
            "page {page_no} holds {} > {limit}",
            locks.len()
        );
        assert!(
            page_no == 1 || !locks.is_empty(),
            "page {page_no} is empty: the page before it was the last and should have had \
             no next_cursor"
        );
        all.extend(locks.into_iter().map(|l| {
            assert_eq!(l.lease_id, None, "list_locks shows a lease id");
            l.resource
        }));
        match next_cursor {
            Some(c) => {
                assert_eq!(
                    all.len() % limit,
                    0,
                    "page {page_no} is short but has a next_cursor"
                );
                cursor = Some(c);
            }
            None => break,
        }
    }
    all
}

/// ListLocks pages through 1,000 locks completely, in storage-key order (repo, path,
/// workspace, project name), without duplicates; the last page has no cursor.
pub async fn list_locks_pages_through_a_thousand_locks<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let resources = thousand_resources();
    // Lock in a scrambled order (7 and 1000 are coprime), a few at a time.
    futures::stream::iter((0..1000).map(|i| (i * 7 + 3) % 1000))
        .map(|i| {
            let r = &resources[i];
            let owner = user_owner(&format!("{}#{i}", r.repo), &format!("u{}", i % 2));
            fx.lock(request_as(r, owner))
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;

    let mut sorted = resources.clone();
    sorted.sort();
    assert_eq!(
        sorted.iter().collect::<HashSet<_>>().len(),
        1000,
        "the test's resources are distinct"
    );
    for limit in [100, 333] {
        let got = read_all(&fx, LockFilter::default(), limit).await;
        assert_eq!(got.len(), 1000, "limit {limit}: every lock exactly once");
        assert_eq!(
            got, sorted,
            "limit {limit}: ordered by (repo, path, workspace, project)"
        );
    }

    let u0: HashSet<_> = resources.iter().step_by(2).collect();
    let want: Vec<_> = sorted.iter().filter(|r| u0.contains(r)).cloned().collect();
    let filter = LockFilter {
        user: Some("u0".into()),
        ..LockFilter::default()
    };
    let got = read_all(&fx, filter, 100).await;
    assert_eq!(
        got, want,
        "a filtered listing pages completely and in order"
    );

    // One repository's locks, in pages smaller than a bucket's share of them.
    let of = |repo: &str| -> Vec<Resource> {
        sorted.iter().filter(|r| r.repo == repo).cloned().collect()
    };
    let by_repo = LockFilter {
        repo: Some("org/a-b".into()),
        ..LockFilter::default()
    };
    let got = read_all(&fx, by_repo.clone(), 7).await;
    assert_eq!(
        got,
        of("org/a-b"),
        "a repository's listing pages completely and in order"
    );
    // A cursor from a listing of everything (repositories sort org/B, org/a, org/a-b,
    // org/a.b, ..., 125 locks each) below the repository's keys: the repository's
    // listing from there is all of it; among them: the rest; above them: nothing.
    for (limit, after, count) in [(100, "below", 125), (300, "among", 75), (560, "above", 0)] {
        let first = fx
            .backend
            .list_locks(LockFilter {
                limit: Some(limit),
                ..LockFilter::default()
            })
            .await
            .expect("list_locks");
        let last = first.locks.last().expect("a full page").resource.clone();
        let want: Vec<_> = of("org/a-b").into_iter().filter(|r| *r > last).collect();
        assert_eq!(want.len(), count, "the test's cursor {after} the keys");
        let page = fx
            .backend
            .list_locks(LockFilter {
                cursor: first.next_cursor,
                limit: Some(1000),
                ..by_repo.clone()
            })
            .await
            .expect("list_locks");
        assert_eq!(
            page.locks
                .into_iter()
                .map(|l| l.resource)
                .collect::<Vec<_>>(),
            want,
            "a repository's listing after a cursor {after} its keys"
        );
    }
}

/// ListLocks refuses a page size of 0 or above the maximum (field `limit`) and a
/// cursor it did not issue (field `cursor`).
pub async fn list_locks_rejects_bad_paging<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    fx.lock(request(&resource("o/r"), "a")).await;
    for (filter, field) in [
        (
            LockFilter {
                limit: Some(0),
                ..LockFilter::default()
            },
            "limit",
        ),
        (
            LockFilter {
                limit: Some(LockFilter::MAX_LIMIT + 1),
                ..LockFilter::default()
            },
            "limit",
        ),
        (
            LockFilter {
                cursor: Some("zz".into()),
                ..LockFilter::default()
            },
            "cursor",
        ),
    ] {
        let err = fx
            .backend
            .list_locks(filter.clone())
            .await
            .expect_err("a bad page request");
        assert!(matches!(err, QueryError::Invalid(_)), "{filter:?}: {err:?}");
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert_eq!(err.field(), Some(field), "{filter:?}");
    }
}

/// GetUserQueue: every entry of that username on every resource, with its position.
pub async fn user_queue_lists_entries_across_resources<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let (r1, r2, r3) = (resource("o/r1"), resource("o/r2"), resource("group/sub/r3"));
    for r in [&r1, &r2, &r3] {
        fx.lock(request(r, "holder")).await;
    }
    fx.reserve(request_as(&r1, user_owner("o/r1#5", "alice")))
        .await;
    fx.reserve(request_as(&r1, user_owner("o/r1#6", "bob")))
        .await;
    fx.reserve(request_as(&r2, user_owner("o/r2#7", "bob")))
        .await;
    fx.reserve(request_as(&r2, user_owner("o/r2#8", "alice")))
        .await;
    let (_waiter, _) = fx
        .spawn_waiter(
            request_as(&r3, user_owner("group/sub/r3#9", "alice"))
                .with_wait(Duration::from_secs(300)),
        )
        .await;

    let mut alice: Vec<_> = fx
        .backend
        .get_user_queue("alice")
        .await
        .expect("get_user_queue")
        .into_iter()
        .map(|e| {
            assert_eq!(e.entry.owner.username(), Some("alice"));
            (e.entry.owner.owner, e.position)
        })
        .collect();
    alice.sort();
    assert_eq!(
        alice,
        [
            ("group/sub/r3#9".to_string(), 1),
            ("o/r1#5".to_string(), 1),
            ("o/r2#8".to_string(), 2),
        ],
        "alice's entries on every resource, with their positions"
    );
    let bob = fx
        .backend
        .get_user_queue("bob")
        .await
        .expect("get_user_queue");
    assert_eq!(bob.len(), 2);
    let nobody = fx
        .backend
        .get_user_queue("carol")
        .await
        .expect("get_user_queue");
    assert!(nobody.is_empty());
}

/// CancelQueueEntry removes a reservation; the lock is then not handed to it.
pub async fn cancel_removes_a_reservation<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "holder")).await;
    let placement = fx.reserve(request(&r, "a")).await;
    fx.reserve(request(&r, "b")).await;
    let cancelled = fx
        .backend
        .cancel_queue_entry(&placement.entry_id, None)
        .await
        .expect("cancel");
    assert_eq!(cancelled.entry.entry_id, placement.entry_id);
    assert_eq!(cancelled.entry.owner.owner, "a");
    assert_eq!(
        fx.queue_owners(&r).await,
        ["b"],
        "the cancelled entry is gone"
    );

    let err = fx
        .backend
        .cancel_queue_entry(&placement.entry_id, None)
        .await
        .expect_err("cancelling twice");
    assert!(matches!(err, CancelError::NotFound), "{err:?}");
    let unlocked = fx.unlock(&holder).await;
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.owner.owner).as_deref(),
        Some("b")
    );
}

/// CancelQueueEntry of a live waiter: its call returns `acquired = false`, reason
/// `cancelled`, and its entry is gone.
pub async fn cancelled_waiter_returns_cancelled<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    fx.lock(request(&r, "holder")).await;
    let (waiter, entry) = fx
        .spawn_waiter(request(&r, "a").with_wait(Duration::from_secs(300)))
        .await;
    fx.backend
        .cancel_queue_entry(&entry.entry.entry_id, None)
        .await
        .expect("cancel");
    let answer = expect_not_acquired("the cancelled waiter", join("waiter", waiter).await);
    assert_eq!(answer.reason, Some(NotAcquiredReason::Cancelled));
    assert!(fx.queue(&r).await.is_empty());
    assert_eq!(fx.holder_name(&r).await.as_deref(), Some("holder"));
}

/// CancelQueueEntry of an id nobody has: `not_found`.
pub async fn cancel_of_an_unknown_entry_is_not_found<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let err = fx
        .backend
        .cancel_queue_entry("0123456789abcdef0123456789abcdef", None)
        .await
        .expect_err("cancel of an unknown entry");
    assert!(matches!(err, CancelError::NotFound), "{err:?}");
    assert_eq!(err.code(), ErrorCode::NotFound);
}
