//! Hand-off: grant order, anti-starvation, no barging, the claim window, and
//! idempotent retries by `request_id`.

use std::collections::HashMap;
use std::time::Duration;

use tflock_core::{Lock, NotAcquiredReason, Priority};

use crate::Harness;
use crate::support::*;

const LONG: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(300);

/// Unlocks `current` and checks the lock went to `next`, a reservation's owner; returns
/// `next`'s lock with its lease (a re-lock by the new holder hands it the lease).
async fn hand_to_reservation(fx: &Fixture, current: &Lock, next: &str) -> Lock {
    let unlocked = fx.unlock(current).await;
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.owner.owner).as_deref(),
        Some(next),
        "unlock of {}'s lock handed it to the wrong entry",
        current.owner.owner
    );
    assert_eq!(
        fx.holder_name(&current.resource).await.as_deref(),
        Some(next)
    );
    // Owner strings prove nothing: the reservation's request id collects the grant.
    fx.lock(request(&current.resource, next).with_request_id(reservation_request_id(next)))
        .await
}

/// Grant order: highest priority first, then first come first served.
pub async fn queue_order_is_priority_then_fifo<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let mut current = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
    for (owner, p) in [
        ("n1", Priority::Normal),
        ("l1", Priority::Low),
        ("h1", Priority::High),
        ("n2", Priority::Normal),
        ("c1", Priority::Critical),
        ("l2", Priority::Low),
    ] {
        fx.reserve(request(&r, owner).with_priority(p).with_wait(LONG))
            .await;
    }
    let want = ["c1", "h1", "n1", "n2", "l1", "l2"];
    let entries = fx.queue(&r).await;
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.entry.owner.owner.as_str(), e.position))
        .collect();
    let want_pos: Vec<_> = want.iter().copied().zip(1..).collect();
    assert_eq!(got, want_pos, "queue order and positions");
    for e in &entries {
        assert_eq!(
            e.effective_priority, e.entry.priority,
            "{} has not waited long enough for a boost",
            e.entry.owner.owner
        );
    }
    for next in want {
        current = hand_to_reservation(&fx, &current, next).await;
    }
    assert!(fx.queue(&r).await.is_empty());
}

/// Hand-off to live waiters follows the grant order; each waiting call returns only
/// when its own entry is granted.
pub async fn hand_off_goes_to_waiters_in_grant_order<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let mut current = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
    let mut waiters = HashMap::new();
    for (owner, p) in [
        ("wl", Priority::Low),
        ("wn1", Priority::Normal),
        ("wh", Priority::High),
        ("wn2", Priority::Normal),
    ] {
        let (handle, _) = fx
            .spawn_waiter(request(&r, owner).with_priority(p).with_wait(WAIT))
            .await;
        waiters.insert(owner, handle);
    }
    let want = ["wh", "wn1", "wn2", "wl"];
    assert_eq!(fx.queue_owners(&r).await, want, "queue order");

    for next in want {
        let unlocked = fx.unlock(&current).await;
        assert_eq!(
            unlocked.granted_to.map(|e| e.entry.owner.owner).as_deref(),
            Some(next),
            "unlock of {}'s lock handed it to the wrong waiter",
            current.owner.owner
        );
        let handle = waiters.remove(next).unwrap();
        current = expect_granted(next, join(next, handle).await);
        assert_eq!(current.owner.owner, next);
        assert!(
            !current.claim_pending,
            "{next}: the waiting call confirms its grant"
        );
        for (other, handle) in &waiters {
            assert!(
                !handle.is_finished(),
                "{other} returned while {next} was granted"
            );
        }
    }
}

/// Hand-off happens in the same step as the unlock: the lock is never observably free
/// while an entry waits, so a newcomer (even critical) cannot take it.
pub async fn newcomer_cannot_barge_past_the_queue<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "holder")).await;
    let (waiter, _) = fx.spawn_waiter(request(&r, "waiter").with_wait(WAIT)).await;
    fx.unlock(&holder).await;

    let barger = expect_not_acquired(
        "a newcomer right after the unlock",
        fx.backend
            .try_lock(request(&r, "barger").with_priority(Priority::Critical))
            .await,
    );
    assert_eq!(barger.reason, Some(NotAcquiredReason::Held));
    assert_eq!(
        barger.lock.map(|l| l.owner.owner).as_deref(),
        Some("waiter"),
        "the newcomer saw another holder"
    );
    let lock = expect_granted("the waiter", join("waiter", waiter).await);
    assert_eq!(lock.owner.owner, "waiter");
}

fn starvation_settings() -> tflock_core::LockSettings {
    tflock_core::LockSettings {
        starvation_threshold: Duration::from_secs(120),
        max_priority_boost: 3,
        ..settings()
    }
}

/// Anti-starvation: a low entry that waited 2 x `starvation_threshold` counts as high
/// and, being older, goes before a newer high entry.
pub async fn starved_low_entry_overtakes_newer_high_entry<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::new(harness, starvation_settings()).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
    fx.reserve(
        request(&r, "old-low")
            .with_priority(Priority::Low)
            .with_wait(LONG),
    )
    .await;
    fx.advance(2 * fx.settings.starvation_threshold);
    fx.reserve(
        request(&r, "new-high")
            .with_priority(Priority::High)
            .with_wait(LONG),
    )
    .await;

    let entries = fx.queue(&r).await;
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.entry.owner.owner.as_str(), e.effective_priority))
        .collect();
    assert_eq!(
        got,
        [("old-low", Priority::High), ("new-high", Priority::High)],
        "a low entry boosted by two levels goes first"
    );
    hand_to_reservation(&fx, &holder, "old-low").await;
}

/// Anti-starvation: a critical newcomer still goes before a starved low entry (boosted
/// to high), which still goes before a newer high entry.
pub async fn critical_newcomer_beats_starved_entry<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::new(harness, starvation_settings()).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
    fx.reserve(
        request(&r, "old-low")
            .with_priority(Priority::Low)
            .with_wait(LONG),
    )
    .await;
    fx.advance(2 * fx.settings.starvation_threshold);
    fx.reserve(
        request(&r, "new-high")
            .with_priority(Priority::High)
            .with_wait(LONG),
    )
    .await;
    fx.reserve(
        request(&r, "crit")
            .with_priority(Priority::Critical)
            .with_wait(LONG),
    )
    .await;

    assert_eq!(fx.queue_owners(&r).await, ["crit", "old-low", "new-high"]);
    let crit = hand_to_reservation(&fx, &holder, "crit").await;
    let low = hand_to_reservation(&fx, &crit, "old-low").await;
    hand_to_reservation(&fx, &low, "new-high").await;
}

/// Sets up the claim window: `holder` holds; `a` waits (polled by hand, with a request
/// id); returns after the holder's unlock handed the lock to `a`, unconfirmed, with
/// `a`'s future dropped unpolled. Returns the unlock instant and `a`'s pending lock.
async fn handed_to_a_dropped_waiter(
    fx: &Fixture,
    a_request: tflock_core::LockRequest,
    b_request: Option<tflock_core::LockRequest>,
) -> (
    tflock_core::Timestamp,
    Lock,
    Option<tokio::task::JoinHandle<TryLockResult>>,
) {
    let r = a_request.resource.clone();
    let holder = fx.lock(request(&r, "holder").with_ttl(LONG)).await;
    let (fut, a_entry) = fx.start_polled_waiter(a_request).await;
    let b = match b_request {
        Some(req) => Some(fx.spawn_waiter(req).await.0),
        None => None,
    };

    let unlocked = fx.unlock(&holder).await;
    let t_unlock = fx.now();
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.entry_id),
        Some(a_entry.entry.entry_id),
        "the lock goes to a, first in line"
    );
    let pending = fx.holder(&r).await.expect("handed to a");
    assert_eq!(pending.owner.owner, "a");
    assert!(
        pending.claim_pending,
        "a's grant is unconfirmed until a wakes"
    );
    assert_eq!(
        pending.expires_at,
        t_unlock.add(fx.settings.claim_timeout),
        "an unconfirmed grant lasts claim_timeout"
    );
    assert!(pending.fencing_token > holder.fencing_token);
    drop(fut);
    (t_unlock, pending, b)
}

/// Claim window: a waiter granted the lock but gone before confirming it (it had a
/// request id, so the grant is kept for a retry) delays the queue by `claim_timeout`,
/// then the next entry is granted by itself.
pub async fn unconfirmed_claim_passes_to_next_entry_after_claim_timeout<H: Harness + ?Sized>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let a = request(&r, "a").with_wait(WAIT).with_request_id("a-1");
    let b = request(&r, "b").with_wait(WAIT);
    let (_, pending, b) = handed_to_a_dropped_waiter(&fx, a, Some(b)).await;
    let b = b.unwrap();

    assert_still_waiting("b during a's claim window", &b).await;
    let still = fx.holder(&r).await.expect("still held");
    assert_eq!(
        (still.owner.owner.as_str(), still.claim_pending),
        ("a", true),
        "a's unconfirmed grant stays for claim_timeout after its caller left"
    );
    fx.advance(fx.settings.claim_timeout - Duration::from_secs(1));
    assert_still_waiting("b before a's claim window ends", &b).await;

    fx.advance(Duration::from_secs(1) + TICK);
    let lock = expect_granted("b after a's claim window", join("b", b).await);
    assert_eq!(lock.owner.owner, "b");
    assert!(!lock.claim_pending);
    assert!(
        lock.fencing_token > pending.fencing_token,
        "b gets a new token"
    );
    assert_eq!(fx.holder_name(&r).await.as_deref(), Some("b"));
}

/// Claim window: a retry with the same owner and request id claims the unconfirmed
/// grant: the lease, confirmed, with its full TTL.
pub async fn retry_with_request_id_claims_an_unconfirmed_grant<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let ttl = Duration::from_secs(90);
    let a = request(&r, "a")
        .with_ttl(ttl)
        .with_wait(WAIT)
        .with_request_id("a-1");
    let (_, pending, _) = handed_to_a_dropped_waiter(&fx, a.clone(), None).await;

    fx.advance(Duration::from_secs(1));
    let retry = fx.backend.try_lock(a).await;
    let lock = expect_granted("a's retry with the same request id", retry);
    let now = fx.now();
    assert_eq!(lock.owner.owner, "a");
    assert!(!lock.claim_pending, "the retry confirms the grant");
    assert_eq!(lock.fencing_token, pending.fencing_token, "the same grant");
    assert_eq!(lock.expires_at, now.add(ttl), "confirmed with its full ttl");
    let held = fx.holder(&r).await.expect("held by a");
    assert_eq!((held.claim_pending, held.expires_at), (false, now.add(ttl)));

    fx.advance(fx.settings.claim_timeout + TICK);
    assert_eq!(
        fx.holder_name(&r).await.as_deref(),
        Some("a"),
        "a confirmed grant outlives the claim window"
    );
    fx.unlock(&lock).await;
}

/// `request_id`: a retry by the same owner with the same id is answered as the first
/// call was (same lease, same token); answers are kept per owner and request id.
pub async fn request_id_retry_gets_the_first_answer<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let req = request(&r, "a")
        .with_ttl(Duration::from_secs(60))
        .with_request_id("req-1");
    let first_answer = fx.backend.try_lock(req.clone()).await;
    let first = expect_granted("the first call", first_answer.clone());
    fx.advance(Duration::from_secs(5));
    let retry_answer = fx.backend.try_lock(req).await;
    let retry = expect_granted("the retry", retry_answer.clone());
    assert_eq!(
        lease(&retry),
        lease(&first),
        "the retry gets the first lease"
    );
    assert_eq!(
        retry.fencing_token, first.fencing_token,
        "and the first token"
    );
    assert_eq!(
        retry_answer, first_answer,
        "the retry is answered as the first call was (a replay, not a re-lock that \
         would push the expiry to now + ttl)"
    );
    assert_eq!(fx.all_locks().await.len(), 1, "one grant, not two");

    let other = expect_not_acquired(
        "another owner with the same request id",
        fx.backend
            .try_lock(request(&r, "b").with_request_id("req-1"))
            .await,
    );
    assert_eq!(other.reason, Some(NotAcquiredReason::Held));
    assert_eq!(
        other.lock.and_then(|l| l.lease_id),
        None,
        "another owner got the first owner's answer (and lease)"
    );
}

/// Rule 8: a call answered `held` without a place in line made nothing, so its retry
/// is evaluated like a new request: once the lock is free it is granted, exactly once,
/// and a further retry is answered with that live grant.
pub async fn request_id_retry_of_a_held_answer_is_evaluated_again<H: Harness + ?Sized>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "a")).await;
    let req = request(&r, "b").with_request_id("b-1");
    let first = expect_not_acquired("b's first call", fx.backend.try_lock(req.clone()).await);
    assert_eq!(first.reason, Some(NotAcquiredReason::Held));
    let retry = expect_not_acquired(
        "b's retry while a holds",
        fx.backend.try_lock(req.clone()).await,
    );
    assert_eq!(retry.reason, Some(NotAcquiredReason::Held));
    assert!(fx.queue(&r).await.is_empty(), "a plain retry never queues");
    fx.unlock(&holder).await;

    let granted = fx.lock(req.clone()).await;
    let again = fx.lock(req).await;
    assert_eq!(
        lease(&again),
        lease(&granted),
        "the retry gets the live grant"
    );
    assert_eq!(
        again.fencing_token, granted.fencing_token,
        "one grant, not two"
    );
    assert_eq!(fx.all_locks().await.len(), 1);
}
