//! Issue 15, the remaining named cases: a replay inside `request_id_retention` changes
//! nothing while a re-lock with the grant's request id after it extends, a waiter's
//! replay never makes a second entry, kept outcomes (timeout, cancelled), request ids
//! in no answer or event, a force unlock with a token from before a hand-off, lease
//! ids refused in every malformed form, and a waiter whose caller goes away at any
//! moment of its grant frees the lock within `claim_timeout`.

use std::task::Poll;
use std::time::Duration;

use tflock_core::{
    LeaseId, NotAcquiredReason, Owner, RefreshError, TransferAuth, TransferError, UnlockError,
};

use crate::Harness;
use crate::support::*;

const LONG: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(300);

/// Rule 8: a replay of a granted call whose lease is still the live one, inside
/// `request_id_retention`, answers that grant (same lease and token, with its lease
/// id) and changes nothing: the expiry is not pushed, no second lock is made.
pub async fn replay_of_live_grant_returns_it<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/live-replay");
    let req = request(&r, "o/live-replay#1")
        .with_ttl(Duration::from_secs(60))
        .with_request_id("r-live-1");
    let first = fx.lock(req.clone()).await;
    fx.advance(Duration::from_secs(20));
    let again = fx.lock(req.clone()).await;
    assert_eq!(lease(&again), lease(&first), "the same lease");
    assert_eq!(again.fencing_token, first.fencing_token, "the same token");
    assert_eq!(
        again.expires_at, first.expires_at,
        "a replay changes nothing: the expiry is not pushed to now + ttl"
    );
    assert_eq!(fx.holder(&r).await, Some(first.public()));
    assert_eq!(fx.all_locks().await.len(), 1, "one grant, not two");
}

/// Rule 2 after rule 8's retention: once the first answer is forgotten, the grant's
/// request id is the proof of a re-lock and extends the lease to
/// `max(current, now + ttl)`, same lease and token; another request id of the same
/// owner is no proof.
pub async fn relock_with_grant_request_id_extends<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/rid-relock");
    let owner = "o/rid-relock#1";
    let first = fx
        .lock(
            request(&r, owner)
                .with_ttl(LONG)
                .with_request_id("r-grant-1"),
        )
        .await;
    fx.advance(fx.settings.request_id_retention + Duration::from_secs(1));
    let ttl = LONG + Duration::from_secs(600);
    let again = fx
        .lock(
            request(&r, owner)
                .with_ttl(ttl)
                .with_request_id("r-grant-1"),
        )
        .await;
    assert_eq!(lease(&again), lease(&first), "a re-lock keeps the lease");
    assert_eq!(again.fencing_token, first.fencing_token, "and the token");
    assert_eq!(
        again.expires_at,
        fx.now().add(ttl),
        "extended to max(current, now + ttl)"
    );
    assert_eq!(
        fx.holder(&r).await.map(|l| l.expires_at),
        Some(again.expires_at)
    );

    let other = expect_not_acquired(
        "the same owner with another request id",
        fx.backend
            .try_lock(request(&r, owner).with_request_id("r-grant-2"))
            .await,
    );
    assert_eq!(other.reason, Some(NotAcquiredReason::HeldByOwner));
    assert_eq!(
        other.lock.and_then(|l| l.lease_id),
        None,
        "public view only"
    );
}

/// Rule 2: a lease id presented for a free resource is simply a new grant (a new
/// lease and a greater token), also when it is the lease the caller once held.
pub async fn relock_with_lease_id_extends<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/lease-relock");
    let owner = "o/lease-relock#1";
    let first = fx
        .lock(request(&r, owner).with_ttl(Duration::from_secs(60)))
        .await;
    fx.advance(Duration::from_secs(30));
    let again = fx
        .lock(
            request(&r, owner)
                .with_ttl(Duration::from_secs(120))
                .with_lease_id(lease(&first)),
        )
        .await;
    assert_eq!(lease(&again), lease(&first));
    assert_eq!(again.fencing_token, first.fencing_token);
    assert_eq!(again.expires_at, fx.now().add(Duration::from_secs(120)));

    fx.advance(Duration::from_secs(121));
    assert_eq!(fx.holder(&r).await, None, "expired");
    let fresh = fx
        .lock(request(&r, owner).with_lease_id(lease(&first)))
        .await;
    assert_ne!(lease(&fresh), lease(&first), "a new lease");
    assert!(fresh.fencing_token > first.fencing_token, "a new token");
}

/// Rule 8: a replay of a waiter's call while its entry still waits never makes a
/// second entry; a replay without `wait` answers that entry with its position.
pub async fn replay_of_waiting_waiter_keeps_one_entry<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/replay-waiter");
    let holder = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
    let first_req = request(&r, "o/replay-waiter#1")
        .with_wait(WAIT)
        .with_request_id("r-w-1");
    let (first, entry) = fx.spawn_waiter(first_req.clone()).await;
    let mut replay = first_req.clone();
    replay.wait = None;
    let answer = expect_not_acquired(
        "the replay of a waiting call",
        fx.backend.try_lock(replay).await,
    );
    let placed = answer.queue.expect("the first call's entry");
    assert_eq!(placed.entry_id, entry.entry.entry_id, "the same entry");
    assert_eq!(placed.position, 1);
    assert_eq!(
        fx.queue_owners(&r).await,
        ["o/replay-waiter#1"],
        "never a second entry"
    );
    assert_still_waiting("the first call", &first).await;
    fx.unlock(&holder).await;
    let got = expect_granted("the first call", join("first", first).await);
    assert_eq!(got.owner.owner, "o/replay-waiter#1");
}

/// Rule 8: a waiter's outcome is kept for its retries: a replay after a timeout or a
/// cancel answers that outcome and grants nothing, even with the lock free.
pub async fn replay_of_timed_out_or_cancelled_waiter_grants_nothing<H: Harness + ?Sized>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    for (cancel, repo) in [(false, "o/replay-timeout"), (true, "o/replay-cancel")] {
        let r = resource(repo);
        let holder = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
        let req = request(&r, "w")
            .with_wait(Duration::from_secs(30))
            .with_request_id(format!("r-{repo}").replace('/', "-"));
        let (waiter, entry) = fx.spawn_waiter(req.clone()).await;
        let expected = if cancel {
            fx.backend
                .cancel_queue_entry(&entry.entry.entry_id, Some(&r))
                .await
                .expect("cancel the waiting entry");
            NotAcquiredReason::Cancelled
        } else {
            fx.advance(Duration::from_secs(31));
            NotAcquiredReason::Timeout
        };
        let first = expect_not_acquired("the waiter", join("waiter", waiter).await);
        assert_eq!(first.reason, Some(expected));
        fx.unlock(&holder).await;

        let mut replay = req.clone();
        replay.wait = None;
        let again = expect_not_acquired(
            &format!("the replay after {expected:?}"),
            fx.backend.try_lock(replay).await,
        );
        assert!(
            matches!(
                again.reason,
                Some(r) if r == expected || r == NotAcquiredReason::LeaseLost
            ),
            "the replay answers the call's outcome: {again:?}"
        );
        assert_eq!(again.queue, None);
        assert_eq!(fx.holder(&r).await, None, "the replay granted nothing");
        assert!(fx.queue(&r).await.is_empty());
    }
}

/// Rule 5 with expected_token: a token read before a hand-off is stale: `Changed`
/// with both tokens, and the new holder keeps the lock.
pub async fn force_unlock_with_expected_token_after_hand_off_is_changed<H: Harness + ?Sized>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/force-stale");
    let old = fx.lock(request(&r, "old").with_ttl(LONG)).await;
    fx.reserve(request(&r, "next").with_ttl(LONG)).await;
    fx.unlock(&old).await;
    let next = fx.holder(&r).await.expect("handed to next");
    assert_eq!(next.owner.owner, "next");
    match fx.backend.force_unlock(&r, Some(old.fencing_token)).await {
        Err(UnlockError::Changed { expected, current }) => {
            assert_eq!(expected, old.fencing_token);
            assert_eq!(current, next.fencing_token);
        }
        other => panic!("force unlock with a token from before the hand-off: {other:?}"),
    }
    assert_eq!(fx.holder(&r).await, Some(next.clone()), "next keeps it");
    let done = fx
        .backend
        .force_unlock(&r, Some(next.fencing_token))
        .await
        .expect("force unlock with the live token");
    assert_eq!(done.released.fencing_token, next.fencing_token);
    assert_eq!(done.released.lease_id, None, "the answer is public");
    assert_eq!(fx.holder(&r).await, None);
    assert!(matches!(
        fx.backend.force_unlock(&r, Some(next.fencing_token)).await,
        Err(UnlockError::NotFound)
    ));
}

/// Rule 4 of issue 15: every malformed lease id (empty, 'x', spaces, control
/// characters, 129 bytes) is `invalid_request` naming `lease_id` on unlock, refresh,
/// transfer and TryLock, also on a free resource; the lock stays exactly as it was.
pub async fn malformed_lease_id_is_invalid<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/malformed");
    let free = resource("o/malformed-free");
    let lock = fx
        .lock(request(&r, "holder").with_ttl(Duration::from_secs(600)))
        .await;
    let bad = [
        String::new(),
        "x".to_string(),
        "0123456789 abcdef0123".to_string(),
        "0123456789abcdef\n".to_string(),
        "0123456789abcdef\u{7}".to_string(),
        "0123456789abcdef\u{0}".to_string(),
        "a".repeat(129),
    ];
    for value in bad {
        let id = LeaseId(value.clone());
        for res in [&r, &free] {
            let u = fx.backend.unlock(res, &id).await;
            assert!(
                matches!(&u, Err(UnlockError::Invalid(e)) if e.field == "lease_id"),
                "unlock of {res} with {value:?}: {u:?}"
            );
            let f = fx
                .backend
                .refresh_lock(res, &id, Duration::from_secs(60))
                .await;
            assert!(
                matches!(&f, Err(RefreshError::Invalid(e)) if e.field == "lease_id"),
                "refresh of {res} with {value:?}: {f:?}"
            );
            let t = fx
                .backend
                .transfer_lock(res, TransferAuth::Lease(id.clone()), Owner::named("t"))
                .await;
            assert!(
                matches!(&t, Err(TransferError::Invalid(e)) if e.field == "lease_id"),
                "transfer of {res} with {value:?}: {t:?}"
            );
            let l = fx
                .backend
                .try_lock(request(res, "holder").with_lease_id(id.clone()))
                .await;
            assert!(
                matches!(&l, Err(e) if e.field() == Some("lease_id")),
                "try_lock of {res} with lease {value:?}: {l:?}"
            );
        }
    }
    assert_eq!(
        fx.holder(&r).await,
        Some(lock.public()),
        "same holder, token and expiry"
    );
    assert_eq!(fx.holder(&free).await, None, "nothing granted");
    fx.unlock(&lock).await;
}

/// Rule 8's secret: no TryLock answer (grant, held, reservation, a waiter's grant),
/// queue status, user queue, unlock hand-off view, cancel answer, unlock-by-pull
/// answer or event carries a request id.
pub async fn request_id_never_in_views<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let mut events = fx.backend.subscribe();
    let r = resource("o/rid-views");
    let secrets = [
        "secret-h-0123456789",
        "secret-b-0123456789",
        "secret-c-0123456789",
        "secret-d-0123456789",
        "secret-e-0123456789",
    ];
    let mut shown: Vec<String> = Vec::new();
    let h_answer = fx
        .backend
        .try_lock(
            request(&r, "holder")
                .with_ttl(LONG)
                .with_request_id(secrets[0]),
        )
        .await;
    shown.push(format!("{h_answer:?}"));
    let holder = expect_granted("holder", h_answer);
    let b_answer = fx
        .backend
        .try_lock(
            request_as(&r, user_owner("o/rid-views#2", "bob"))
                .reserving()
                .with_request_id(secrets[1]),
        )
        .await;
    shown.push(format!("{b_answer:?}"));
    let b_entry = b_answer
        .expect("b's reservation")
        .queue
        .expect("queued")
        .entry_id;
    fx.tick();
    let (c, _) = fx
        .spawn_waiter(
            request_as(&r, user_owner("o/rid-views#3", "bob"))
                .with_wait(WAIT)
                .with_request_id(secrets[2]),
        )
        .await;
    let d_answer = fx
        .backend
        .try_lock(
            request_as(&r, pull_owner("o/rid-views", 9))
                .reserving()
                .with_request_id(secrets[3]),
        )
        .await;
    shown.push(format!("{d_answer:?}"));
    let held = fx
        .backend
        .try_lock(request(&r, "e").with_request_id(secrets[4]))
        .await;
    shown.push(format!("{held:?}"));

    shown.push(format!("{:?}", fx.backend.get_queue_status(&r).await));
    shown.push(format!("{:?}", fx.backend.get_user_queue("bob").await));
    shown.push(format!("{:?}", fx.backend.get_user_queue("alice").await));
    shown.push(format!(
        "{:?}",
        fx.backend.cancel_queue_entry(&b_entry, Some(&r)).await
    ));
    shown.push(format!(
        "{:?}",
        fx.backend.unlock_by_pull("o/rid-views", 9).await
    ));
    let unlocked = fx.unlock(&holder).await;
    assert!(unlocked.granted_to.is_some(), "handed to c");
    shown.push(format!("{unlocked:?}"));
    shown.push(format!("{:?}", join("c", c).await));
    shown.push(format!(
        "{:?}",
        fx.backend.list_locks(Default::default()).await
    ));
    while let Ok(e) = events.try_recv() {
        shown.push(format!("{e:?}"));
    }
    for text in &shown {
        for s in secrets {
            assert!(!text.contains(s), "a request id is shown in {text}");
        }
    }
}

/// Issue 15 point 6: a waiter whose caller goes away at any moment of its grant
/// (before the wake-up is seen, while the confirmation is being made durable, or
/// right after) never keeps the lock for its TTL: the next waiter is granted within
/// `claim_timeout`. With and without a request id.
pub async fn waiter_dropped_at_its_grant_frees_the_lock_within_claim_timeout<
    H: Harness + ?Sized,
>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    for with_rid in [false, true] {
        for polls in 0..6usize {
            let r = resource(&format!("o/drop-{with_rid}-{polls}"));
            let holder = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
            let mut a = request(&r, "a").with_ttl(LONG).with_wait(WAIT);
            if with_rid {
                a = a.with_request_id(format!("r-drop-{polls}"));
            }
            let (mut fut, a_entry) = fx.start_polled_waiter(a).await;
            let (b, _) = fx
                .spawn_waiter(request(&r, "b").with_ttl(LONG).with_wait(WAIT))
                .await;
            let unlocked = fx.unlock(&holder).await;
            assert_eq!(
                unlocked.granted_to.map(|e| e.entry.entry_id),
                Some(a_entry.entry.entry_id),
                "a is first in line"
            );
            let mut answered = None;
            for _ in 0..polls {
                if let Poll::Ready(answer) = futures::poll!(&mut fut) {
                    answered = Some(answer);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(fut);
            if let Some(answer) = answered {
                // The caller got its grant before it went away: its lease, its to end.
                let lock = expect_granted("a answered before the drop", answer);
                fx.unlock(&lock).await;
            } else if fx
                .backend
                .get_lock(&r)
                .await
                .expect("get_lock")
                .is_some_and(|l| l.owner.owner == "a")
            {
                // a's grant is still pending: it ends after claim_timeout. Only then:
                // when a's drop already handed the lock on, b's own claim window runs,
                // and moving the clock past it before b's call confirms would end b's
                // grant too (the test's race, not the backend's).
                fx.advance(fx.settings.claim_timeout + TICK);
            }
            let got = expect_granted(
                &format!("b after a dropped after {polls} polls (request id: {with_rid})"),
                join("b", b).await,
            );
            assert_eq!(got.owner.owner, "b");
            fx.unlock(&got).await;
        }
    }
}
