//! Issue 15's safety rules (`docs/contract.md`): an empty or malformed lease id is
//! nobody's, force unlock and cancel act only on what the admin saw, a replayed
//! `request_id` answers from the present, an owner string is no credential, and request
//! ids are never shown. Every backend and every Redis topology runs these.

use std::time::{Duration, Instant};

use tflock_core::{
    CancelError, FencingToken, LeaseId, LockRequest, NotAcquiredReason, Owner, RefreshError,
    Resource, TransferAuth, TransferError, UnlockError,
};

use crate::Harness;
use crate::support::*;

fn reservation_of(r: &Resource, owner: &str) -> LockRequest {
    LockRequest::new(r.clone(), owner).reserving()
}

// ---- 4: an empty or malformed lease id is refused before anything is sent ----

pub async fn empty_or_malformed_lease_never_forces<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/empty-lease");
    let lock = fx.lock(LockRequest::new(r.clone(), "holder")).await;
    for bad in [
        "",
        "short",
        "has spaces in it ok",
        "{\"json\":\"document!!\"}",
    ] {
        let lease = LeaseId(bad.to_string());
        let u = b.unlock(&r, &lease).await;
        assert!(
            matches!(&u, Err(UnlockError::Invalid(e)) if e.field == "lease_id"),
            "unlock with {bad:?}: {u:?}"
        );
        let f = b.refresh_lock(&r, &lease, Duration::from_secs(60)).await;
        assert!(
            matches!(&f, Err(RefreshError::Invalid(e)) if e.field == "lease_id"),
            "refresh with {bad:?}: {f:?}"
        );
        let t = b
            .transfer_lock(
                &r,
                TransferAuth::Lease(lease.clone()),
                Owner::named("thief"),
            )
            .await;
        assert!(
            matches!(&t, Err(TransferError::Invalid(e)) if e.field == "lease_id"),
            "transfer with {bad:?}: {t:?}"
        );
        let held = b.get_lock(&r).await.unwrap().expect("still held");
        assert_eq!(held.owner.owner, "holder");
        assert_eq!(held.fencing_token, lock.fencing_token);
    }
    // A well-formed lease that is not the holder's is NotOwner / LeaseLost.
    let other = LeaseId("0123456789abcdef0123456789abcdef".into());
    assert!(matches!(
        b.unlock(&r, &other).await,
        Err(UnlockError::NotOwner)
    ));
    assert!(matches!(
        b.transfer_lock(&r, TransferAuth::Lease(other), Owner::named("thief"))
            .await,
        Err(TransferError::LeaseLost)
    ));
    b.unlock(&r, lock.lease_id.as_ref().unwrap()).await.unwrap();
}

// ---- 5: force unlock's expected token, cancel's expected resource ----

pub async fn force_unlock_checks_expected_token<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/force-token");
    let lock = fx.lock(LockRequest::new(r.clone(), "holder")).await;
    let stale = FencingToken(lock.fencing_token.0 + 7);
    match b.force_unlock(&r, Some(stale)).await {
        Err(UnlockError::Changed { expected, current }) => {
            assert_eq!(expected, stale);
            assert_eq!(current, lock.fencing_token);
        }
        other => panic!("force unlock with a stale token: {other:?}"),
    }
    assert_eq!(
        b.get_lock(&r).await.unwrap().map(|l| l.fencing_token),
        Some(lock.fencing_token),
        "nothing released"
    );
    let u = b
        .force_unlock(&r, Some(lock.fencing_token))
        .await
        .expect("force with the live token");
    assert_eq!(u.released.fencing_token, lock.fencing_token);
    assert_eq!(b.get_lock(&r).await.unwrap(), None);
}

pub async fn cancel_checks_expected_resource<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/cancel-here");
    let elsewhere = resource("o/cancel-elsewhere");
    let lock = fx.lock(LockRequest::new(r.clone(), "holder")).await;
    let placed = b.try_lock(reservation_of(&r, "queued")).await.unwrap();
    let id = placed.queue.expect("reserved").entry_id;
    assert!(matches!(
        b.cancel_queue_entry(&id, Some(&elsewhere)).await,
        Err(CancelError::NotFound)
    ));
    assert_eq!(b.get_queue_status(&r).await.unwrap().entries.len(), 1);
    let v = b.cancel_queue_entry(&id, Some(&r)).await.expect("cancel");
    assert_eq!(v.entry.entry_id, id);

    // An entry granted in the meantime is not the entry the admin saw.
    let placed = b.try_lock(reservation_of(&r, "queued2")).await.unwrap();
    let id = placed.queue.expect("reserved").entry_id;
    b.unlock(&r, lock.lease_id.as_ref().unwrap()).await.unwrap();
    assert_eq!(
        b.get_lock(&r).await.unwrap().map(|l| l.owner.owner),
        Some("queued2".into())
    );
    assert!(matches!(
        b.cancel_queue_entry(&id, Some(&r)).await,
        Err(CancelError::NotFound)
    ));
}

// ---- 1: replays answer from the present ----

pub async fn replay_of_an_ended_lease_is_lease_lost<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/replay");
    let req = LockRequest::new(r.clone(), "o/replay#1").with_request_id("rid-replay-1");
    let lock = fx.lock(req.clone()).await;

    // Live: the same grant.
    let again = b.try_lock(req.clone()).await.unwrap();
    assert!(again.acquired);
    assert_eq!(again.lock.as_ref().unwrap().lease_id, lock.lease_id);

    // Released: lease_lost, nothing held.
    b.unlock(&r, lock.lease_id.as_ref().unwrap()).await.unwrap();
    let gone = b.try_lock(req.clone()).await.unwrap();
    assert!(!gone.acquired, "a replay of a released lease: {gone:?}");
    assert_eq!(gone.reason, Some(NotAcquiredReason::LeaseLost));
    assert_eq!(gone.lock, None);

    // Someone else holds it now: lease_lost with the holder's public view.
    let other = fx.lock(LockRequest::new(r.clone(), "o/replay#2")).await;
    let gone = b.try_lock(req.clone()).await.unwrap();
    assert!(!gone.acquired, "{gone:?}");
    assert_eq!(gone.reason, Some(NotAcquiredReason::LeaseLost));
    let shown = gone.lock.expect("the holder's view");
    assert_eq!(shown.fencing_token, other.fencing_token);
    assert_eq!(shown.lease_id, None, "public view only");

    // Forced and transferred leases are lost too.
    b.force_unlock(&r, None).await.unwrap();
    let req3 = LockRequest::new(r.clone(), "o/replay#3").with_request_id("rid-replay-3");
    let l3 = fx.lock(req3.clone()).await;
    b.transfer_lock(
        &r,
        TransferAuth::Lease(l3.lease_id.clone().unwrap()),
        Owner::named("o/replay#4"),
    )
    .await
    .unwrap();
    let gone = b.try_lock(req3.clone()).await.unwrap();
    assert!(!gone.acquired, "a replay of a transferred lease: {gone:?}");
    assert_eq!(gone.reason, Some(NotAcquiredReason::LeaseLost));
    assert_eq!(gone.lock.unwrap().lease_id, None);
}

pub async fn replay_of_a_reservation_answers_its_entry_now<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/replay-q");
    let holder = fx.lock(LockRequest::new(r.clone(), "holder")).await;
    let req = reservation_of(&r, "o/replay-q#1").with_request_id("rid-replay-q");
    let first = b.try_lock(req.clone()).await.unwrap();
    let id = first.queue.clone().expect("reserved").entry_id;
    let again = b.try_lock(req.clone()).await.unwrap();
    assert_eq!(again.queue.as_ref().map(|q| &q.entry_id), Some(&id));
    assert_eq!(b.get_queue_status(&r).await.unwrap().entries.len(), 1);
    b.cancel_queue_entry(&id, None).await.unwrap();
    let gone = b.try_lock(req.clone()).await.unwrap();
    assert!(!gone.acquired && gone.queue.is_none(), "{gone:?}");
    assert_eq!(gone.reason, Some(NotAcquiredReason::LeaseLost));
    assert_eq!(b.get_queue_status(&r).await.unwrap().entries.len(), 0);

    // Granted to the reservation: a replay is that live grant.
    let req2 = reservation_of(&r, "o/replay-q#2").with_request_id("rid-replay-q2");
    b.try_lock(req2.clone()).await.unwrap();
    b.unlock(&r, holder.lease_id.as_ref().unwrap())
        .await
        .unwrap();
    let now = b.try_lock(req2.clone()).await.unwrap();
    assert!(now.acquired, "{now:?}");
    assert_eq!(now.lock.as_ref().unwrap().owner.owner, "o/replay-q#2");
    assert!(now.lock.as_ref().unwrap().lease_id.is_some());
}

// ---- 2: a re-lock needs proof ----

pub async fn relock_needs_the_lease_or_the_grants_request_id<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/relock");
    let lock = fx.lock(LockRequest::new(r.clone(), "o/relock#1")).await;

    // The owner string alone proves nothing, also with wait or reserve.
    for req in [
        LockRequest::new(r.clone(), "o/relock#1"),
        LockRequest::new(r.clone(), "o/relock#1").with_wait(Duration::from_secs(5)),
        reservation_of(&r, "o/relock#1"),
    ] {
        let started = Instant::now();
        let a = b.try_lock(req).await.unwrap();
        assert!(!a.acquired, "a re-lock without proof: {a:?}");
        assert_eq!(a.reason, Some(NotAcquiredReason::HeldByOwner));
        assert_eq!(a.queue, None);
        assert_eq!(a.lock.as_ref().unwrap().lease_id, None, "public view");
        assert!(started.elapsed() < Duration::from_secs(2), "did not wait");
        assert!(b.get_queue_status(&r).await.unwrap().entries.is_empty());
    }

    // With the lease: same lease and token, expiry pushed out.
    fx.advance(Duration::from_secs(5));
    let req = LockRequest::new(r.clone(), "o/relock#1")
        .with_ttl(Duration::from_secs(3600))
        .with_lease_id(lock.lease_id.clone().unwrap());
    let again = fx.lock(req).await;
    assert_eq!(again.lease_id, lock.lease_id);
    assert_eq!(again.fencing_token, lock.fencing_token);
    assert!(again.expires_at > lock.expires_at);

    // A wrong lease is no proof either.
    let req = LockRequest::new(r.clone(), "o/relock#1")
        .with_lease_id(LeaseId("0123456789abcdef0123456789abcdef".into()));
    let a = b.try_lock(req).await.unwrap();
    assert_eq!(a.reason, Some(NotAcquiredReason::HeldByOwner));
}

// ---- 3: request ids are never shown ----

pub async fn request_ids_are_never_shown<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/secret-rid");
    fx.lock(LockRequest::new(r.clone(), "holder")).await;
    let req = reservation_of(&r, "o/secret-rid#7").with_request_id("rid-secret-1");
    let placed = b.try_lock(req.clone()).await.unwrap();
    let id = placed.queue.unwrap().entry_id;
    for e in b.get_queue_status(&r).await.unwrap().entries {
        assert_eq!(e.entry.request_id, None);
    }
    // The admin export keeps it.
    let snap = b.export().await.unwrap();
    let q = &snap
        .resources
        .iter()
        .find(|x| x.resource == r)
        .unwrap()
        .queue;
    assert_eq!(q[0].request_id.as_deref(), Some("rid-secret-1"));
    let v = b.cancel_queue_entry(&id, None).await.unwrap();
    assert_eq!(v.entry.request_id, None, "cancel's answer");

    b.try_lock(req.with_request_id("rid-secret-2"))
        .await
        .unwrap();
    let pulled = b.unlock_by_pull("o/secret-rid", 7).await.unwrap();
    assert_eq!(pulled.cancelled.len(), 1);
    assert_eq!(
        pulled.cancelled[0].request_id, None,
        "unlock by pull's answer"
    );
}

// ---- 1, as the review found it: D's replay after a force unlock and E's grant ----

/// D acquires with request id r-d, an admin force-unlocks, E acquires; D's retry with
/// r-d is `acquired: false`, reason `lease_lost`, with E's public view: never D's old
/// lease. Also after D's lease expired, and after an unlock by D's pull request.
pub async fn replay_after_force_unlock_expiry_or_pull_unlock_is_lease_lost<H: Harness + ?Sized>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/replay-d");
    let d_req = LockRequest::new(r.clone(), "o/replay-d#1")
        .with_ttl(Duration::from_secs(3600))
        .with_request_id("r-d");
    let d = fx.lock(d_req.clone()).await;
    b.force_unlock(&r, None).await.expect("force unlock");
    let e = fx.lock(LockRequest::new(r.clone(), "o/replay-d#2")).await;
    let replay = b.try_lock(d_req.clone()).await.expect("replay");
    assert!(!replay.acquired, "D's replay after E's grant: {replay:?}");
    assert_eq!(replay.reason, Some(NotAcquiredReason::LeaseLost));
    let shown = replay.lock.expect("E's public view");
    assert_eq!(shown.owner.owner, "o/replay-d#2");
    assert_eq!(shown.fencing_token, e.fencing_token);
    assert_eq!(shown.lease_id, None, "public view only");
    assert_ne!(shown.fencing_token, d.fencing_token);
    assert_eq!(fx.holder_name(&r).await.as_deref(), Some("o/replay-d#2"));
    fx.unlock(&e).await;

    // Expired.
    let x = resource("o/replay-expired");
    let x_req = LockRequest::new(x.clone(), "o/replay-expired#1")
        .with_ttl(Duration::from_secs(30))
        .with_request_id("r-x");
    fx.lock(x_req.clone()).await;
    fx.advance(Duration::from_secs(31));
    let replay = b.try_lock(x_req).await.expect("replay");
    assert!(!replay.acquired, "replay of an expired lease: {replay:?}");
    assert_eq!(replay.reason, Some(NotAcquiredReason::LeaseLost));
    assert_eq!(fx.holder(&x).await, None);

    // Unlocked by its pull request.
    let p = resource("o/replay-pull");
    let mut p_req = LockRequest::new(p.clone(), "o/replay-pull#9").with_request_id("r-p");
    p_req.owner.pull = Some(tflock_core::PullInfo {
        num: 9,
        ..Default::default()
    });
    fx.lock(p_req.clone()).await;
    b.unlock_by_pull("o/replay-pull", 9)
        .await
        .expect("pull unlock");
    let replay = b.try_lock(p_req).await.expect("replay");
    assert!(!replay.acquired, "replay after unlock by pull: {replay:?}");
    assert_eq!(replay.reason, Some(NotAcquiredReason::LeaseLost));
}

/// Rule 2: a caller that only names the holder's owner cannot release or transfer the
/// lock: it never learns the lease id, and a made-up one is no proof.
pub async fn owner_string_alone_can_neither_release_nor_transfer<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let b = &fx.backend;
    let r = resource("o/owner-proof");
    let holder = fx
        .lock(LockRequest::new(r.clone(), "o/owner-proof#1"))
        .await;
    let answer = b
        .try_lock(LockRequest::new(r.clone(), "o/owner-proof#1"))
        .await
        .expect("try_lock");
    assert_eq!(answer.reason, Some(NotAcquiredReason::HeldByOwner));
    assert_eq!(answer.lock.as_ref().and_then(|l| l.lease_id.clone()), None);
    let guess = LeaseId("0123456789abcdef0123456789abcdef".into());
    assert!(matches!(
        b.unlock(&r, &guess).await,
        Err(UnlockError::NotOwner)
    ));
    assert!(matches!(
        b.transfer_lock(&r, TransferAuth::Lease(guess), Owner::named("mallory"))
            .await,
        Err(TransferError::LeaseLost)
    ));
    let now = fx.holder(&r).await.expect("still held");
    assert_eq!(now.fencing_token, holder.fencing_token);
    assert_eq!(now.expires_at, holder.expires_at, "nothing extended");
}
