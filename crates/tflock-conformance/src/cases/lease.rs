//! Leases over time: refresh, transfer, expiry, fencing tokens, restarts.

use std::time::Duration;

use tflock_core::{
    ErrorCode, EventKind, FencingToken, LeaseId, Owner, RefreshError, TransferAuth, TransferError,
    UnlockError,
};

use crate::Harness;
use crate::support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// RefreshLock sets the expiry to now + ttl and keeps lease and token.
pub async fn refresh_extends_expiry_to_now_plus_ttl<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let lock = fx.lock(request(&r, "o/r#1").with_ttl(MINUTE)).await;
    fx.advance(Duration::from_secs(30));
    let ttl = Duration::from_secs(120);
    let refreshed = fx
        .backend
        .refresh_lock(&r, &lease(&lock), ttl)
        .await
        .expect("refresh by the holder");
    let want = fx.now().add(ttl);
    assert_eq!(refreshed.expires_at, want, "new expiry = now + ttl");
    assert_eq!(
        refreshed.fencing_token, lock.fencing_token,
        "refresh keeps the token"
    );
    assert_eq!(refreshed.owner.owner, "o/r#1");
    assert_eq!(fx.holder(&r).await.map(|l| l.expires_at), Some(want));

    // Still held after the original ttl would have run out.
    fx.advance(MINUTE);
    assert_eq!(fx.holder_name(&r).await.as_deref(), Some("o/r#1"));
    fx.unlock(&lock).await;
}

/// RefreshLock with a lease that is not the current one, or on a free resource:
/// `lease_lost`.
pub async fn refresh_with_a_foreign_lease_is_lease_lost<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let lock = fx.lock(request(&r, "o/r#1").with_ttl(MINUTE)).await;
    let err = fx
        .backend
        .refresh_lock(&r, &LeaseId::generate(), MINUTE)
        .await
        .expect_err("refresh with a foreign lease");
    assert!(
        matches!(err, RefreshError::LeaseLost),
        "expected LeaseLost, got {err:?}"
    );
    assert_eq!(err.code(), ErrorCode::LeaseLost);
    assert_eq!(
        fx.holder(&r).await,
        Some(lock.public()),
        "the lock is unchanged"
    );

    let err = fx
        .backend
        .refresh_lock(&resource("o/free"), &lease(&lock), MINUTE)
        .await
        .expect_err("refresh on a free resource");
    assert!(
        matches!(err, RefreshError::LeaseLost),
        "expected LeaseLost, got {err:?}"
    );
}

/// Checks that `old` no longer works on its resource after a transfer.
async fn assert_lease_dead(fx: &Fixture, old: &tflock_core::Lock) {
    let r = &old.resource;
    let err = fx
        .backend
        .unlock(r, &lease(old))
        .await
        .expect_err("unlock, old lease");
    assert!(
        matches!(err, UnlockError::NotOwner),
        "unlock with the old lease: {err:?}"
    );
    let err = fx
        .backend
        .refresh_lock(r, &lease(old), MINUTE)
        .await
        .expect_err("refresh, old lease");
    assert!(
        matches!(err, RefreshError::LeaseLost),
        "refresh with the old lease: {err:?}"
    );
    let err = fx
        .backend
        .transfer_lock(r, TransferAuth::Lease(lease(old)), Owner::named("x"))
        .await
        .expect_err("transfer, old lease");
    assert!(
        matches!(err, TransferError::LeaseLost),
        "transfer with the old lease: {err:?}"
    );
}

/// TransferLock by the holder: the new owner gets a new lease id and a greater token,
/// the old lease stops working, and `lock.transferred` is emitted.
pub async fn transfer_gives_a_new_lease_and_a_greater_token<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let old = fx.lock(request(&r, "o/r#1")).await;
    let mut events = fx.backend.subscribe();
    let to = pull_owner("o/r", 2);
    let new = fx
        .backend
        .transfer_lock(&r, TransferAuth::Lease(lease(&old)), to.clone())
        .await
        .expect("transfer by the holder");
    assert_eq!(new.owner, to, "the new owner with its metadata");
    assert_ne!(lease(&new), lease(&old), "a new lease id");
    assert!(
        new.fencing_token > old.fencing_token,
        "a new, greater token"
    );
    let shown = fx.holder(&r).await.expect("held");
    assert_eq!(
        (shown.owner.owner.as_str(), shown.fencing_token),
        ("o/r#2", new.fencing_token)
    );

    let event = next_event(&mut events, EventKind::LockTransferred, &r).await;
    assert_eq!(event.owner, "o/r#2");
    assert_eq!(event.fencing_token, Some(new.fencing_token));

    assert_lease_dead(&fx, &old).await;
    assert_eq!(
        fx.holder_name(&r).await.as_deref(),
        Some("o/r#2"),
        "still the new owner's"
    );
    fx.unlock(&new).await;
}

/// TransferLock by an admin (no lease): same result as by the holder.
pub async fn admin_transfer_works<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let old = fx.lock(request(&r, "o/r#1")).await;
    let new = fx
        .backend
        .transfer_lock(&r, TransferAuth::Admin, Owner::named("o/r#2"))
        .await
        .expect("admin transfer");
    assert_eq!(new.owner.owner, "o/r#2");
    assert_ne!(lease(&new), lease(&old));
    assert!(new.fencing_token > old.fencing_token);
    assert_lease_dead(&fx, &old).await;
    fx.unlock(&new).await;
}

/// TransferLock of a free resource: `not_found`, by holder lease or admin.
pub async fn transfer_of_a_free_resource_is_not_found<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    for auth in [
        TransferAuth::Admin,
        TransferAuth::Lease(LeaseId::generate()),
    ] {
        let err = fx
            .backend
            .transfer_lock(&r, auth.clone(), Owner::named("o/r#2"))
            .await
            .expect_err("transfer of a free resource");
        assert!(
            matches!(err, TransferError::NotFound),
            "{auth:?}: expected NotFound, got {err:?}"
        );
        assert_eq!(err.code(), ErrorCode::NotFound);
    }
    assert_eq!(fx.holder(&r).await, None, "nothing was created");
}

/// Expiry: a lease past its TTL is lost (refresh answers `lease_lost`) and never
/// reported as held (get_lock, list_locks); the resource can be taken again.
pub async fn expired_lease_is_lost_and_never_reported<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let ttl = Duration::from_secs(10);
    let lock = fx.lock(request(&r, "o/r#1").with_ttl(ttl)).await;
    fx.advance(ttl - TICK);
    assert_eq!(
        fx.holder_name(&r).await.as_deref(),
        Some("o/r#1"),
        "held before expiry"
    );

    fx.advance(2 * TICK);
    let err = fx
        .backend
        .refresh_lock(&r, &lease(&lock), ttl)
        .await
        .expect_err("refresh after expiry");
    assert!(
        matches!(err, RefreshError::LeaseLost),
        "expected LeaseLost, got {err:?}"
    );
    assert_eq!(
        fx.holder(&r).await,
        None,
        "get_lock reports an expired lease"
    );
    assert!(
        fx.all_locks().await.is_empty(),
        "list_locks reports an expired lease"
    );
    let next = fx.lock(request(&r, "o/r#2")).await;
    assert!(next.fencing_token > lock.fencing_token);
}

/// Expiry hands the lock to a waiting caller by itself: nobody calls the backend after
/// the clock passes the TTL, and the waiter is granted.
pub async fn expiry_hands_off_to_a_waiter_by_itself<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let ttl = Duration::from_secs(10);
    let holder = fx.lock(request(&r, "o/r#1").with_ttl(ttl)).await;
    let (waiter, _) = fx
        .spawn_waiter(request(&r, "o/r#2").with_wait(Duration::from_secs(300)))
        .await;
    assert_still_waiting("the waiter before expiry", &waiter).await;
    fx.advance(ttl);
    let lock = expect_granted("the waiter after expiry", join("the waiter", waiter).await);
    assert_eq!(lock.owner.owner, "o/r#2");
    assert!(!lock.claim_pending);
    assert!(lock.fencing_token > holder.fencing_token);
}

/// Expiry hands the lock to a reservation by itself, emitting `lock.expired` and
/// `queue.granted`; the reservation's owner then holds it with its full TTL.
pub async fn expiry_hands_off_to_a_reservation_by_itself<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let ttl = Duration::from_secs(10);
    let holder = fx.lock(request(&r, "o/r#1").with_ttl(ttl)).await;
    let placement = fx
        .reserve(request(&r, "o/r#2").with_ttl(MINUTE).with_wait(MINUTE))
        .await;
    let mut events = fx.backend.subscribe();
    fx.advance(ttl);
    let expired = next_event(&mut events, EventKind::LockExpired, &r).await;
    assert_eq!(expired.owner, "o/r#1");
    assert_eq!(expired.fencing_token, Some(holder.fencing_token));
    let granted = next_event(&mut events, EventKind::QueueGranted, &r).await;
    assert_eq!(granted.owner, "o/r#2");
    assert_eq!(
        granted.entry_id.as_deref(),
        Some(placement.entry_id.as_str())
    );
    let now = fx.now();
    let lock = fx
        .holder(&r)
        .await
        .expect("held by the reservation's owner");
    assert_eq!(lock.owner.owner, "o/r#2");
    assert_eq!(Some(lock.fencing_token), granted.fencing_token);
    assert!(lock.fencing_token > holder.fencing_token);
    assert_eq!(
        lock.expires_at,
        now.add(MINUTE),
        "granted with its full ttl"
    );
}

/// Tokens are floored at the store's clock in µs (docs/contract.md, "Fencing
/// token"): a grant's token is at least the instant it was made, new grant and
/// transfer alike, so a store that lost its counters still issues tokens above every
/// one it issued before; and they stay below 2^53 for JSON clients.
pub async fn fencing_tokens_are_floored_at_the_clock<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/floor");
    let a = fx.lock(request(&r, "a")).await;
    assert!(
        a.fencing_token.0 >= fx.now().0,
        "a first grant's token {} is below the clock {}",
        a.fencing_token,
        fx.now().0
    );
    fx.unlock(&a).await;
    fx.advance(MINUTE);
    let b = fx.lock(request(&r, "b")).await;
    assert!(b.fencing_token.0 >= fx.now().0, "{b:?} at {}", fx.now().0);
    fx.advance(MINUTE);
    let c = fx
        .backend
        .transfer_lock(&r, TransferAuth::Admin, Owner::named("c"))
        .await
        .expect("transfer");
    assert!(c.fencing_token.0 >= fx.now().0, "{c:?} at {}", fx.now().0);
    assert!(c.fencing_token.0 < 1 << 53, "{c:?}");
}

/// Fencing tokens only go up on one resource: new grant, hand-off, transfer,
/// unlock and re-grant, expiry and re-grant, and across restarts; a re-lock keeps it.
pub async fn fencing_tokens_strictly_increase<H: Harness + ?Sized>(harness: &H) {
    let mut fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let mut seen: Vec<(&str, FencingToken)> = Vec::new();
    let mut check = |step: &'static str, token: FencingToken| {
        if let Some((prev_step, prev)) = seen.last() {
            assert!(
                token > *prev,
                "token after {step} ({token}) is not above the one after {prev_step} ({prev})"
            );
        }
        seen.push((step, token));
    };

    let a = fx.lock(request(&r, "a")).await;
    check("first grant", a.fencing_token);
    let again = fx.lock(request(&r, "a").with_lease_id(lease(&a))).await;
    assert_eq!(
        again.fencing_token, a.fencing_token,
        "a re-lock keeps its token"
    );

    let (waiter, _) = fx
        .spawn_waiter(request(&r, "b").with_wait(Duration::from_secs(300)))
        .await;
    fx.unlock(&a).await;
    let b = expect_granted("b", join("b", waiter).await);
    check("hand-off", b.fencing_token);

    let c = fx
        .backend
        .transfer_lock(&r, TransferAuth::Lease(lease(&b)), Owner::named("c"))
        .await
        .expect("transfer");
    check("transfer", c.fencing_token);

    fx.unlock(&c).await;
    let d = fx.lock(request(&r, "d").with_ttl(MINUTE)).await;
    check("unlock and re-grant", d.fencing_token);

    fx.advance(MINUTE);
    let e = fx.lock(request(&r, "e")).await;
    check("expiry and re-grant", e.fencing_token);

    fx.unlock(&e).await;
    fx.reopen().await;
    let f = fx.lock(request(&r, "f").with_ttl(MINUTE)).await;
    check("unlock, restart and re-grant", f.fencing_token);

    fx.advance(MINUTE);
    fx.reopen().await;
    let g = fx.lock(request(&r, "g")).await;
    check("expiry, restart and re-grant", g.fencing_token);

    fx.reopen().await;
    fx.backend
        .force_unlock(&r, None)
        .await
        .expect("force_unlock");
    let h = fx.lock(request(&r, "h")).await;
    check("restart, force unlock and re-grant", h.fencing_token);
}

/// Durability: a held lock and a queue entry survive a restart; the lease still works.
pub async fn locks_survive_reopen<H: Harness + ?Sized>(harness: &H) {
    let mut fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let lock = fx.lock(request(&r, "o/r#1").with_ttl(MINUTE)).await;
    let placement = fx.reserve(request(&r, "o/r#2")).await;
    fx.reopen().await;

    assert_eq!(
        fx.holder(&r).await,
        Some(lock.public()),
        "the lock after a restart"
    );
    let queued: Vec<_> = fx
        .queue(&r)
        .await
        .into_iter()
        .map(|e| e.entry.entry_id)
        .collect();
    assert_eq!(
        queued,
        std::slice::from_ref(&placement.entry_id),
        "the queue after a restart"
    );
    let refreshed = fx
        .backend
        .refresh_lock(&r, &lease(&lock), MINUTE)
        .await
        .expect("the lease works after a restart");
    assert_eq!(refreshed.fencing_token, lock.fencing_token);
    let unlocked = fx.unlock(&lock).await;
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.entry_id),
        Some(placement.entry_id)
    );
}
