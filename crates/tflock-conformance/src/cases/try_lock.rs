//! TryLock, rule by rule (contract "Operations", TryLock 1 to 7).

use std::time::Duration;

use tflock_core::{
    ErrorCode, LockResponse, LockSettings, NotAcquiredReason, Priority, Resource, TryLockError,
    WaitSpec,
};

use crate::Harness;
use crate::support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// Rule 1: a free resource nobody waits for is granted, with the requested TTL (or
/// `default_ttl`), a lease id for the holder and a public view for everybody else.
pub async fn try_lock_grants_a_free_resource<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("myorg/myrepo");
    let owner = pull_owner("myorg/myrepo", 42);
    let t0 = fx.now();

    let answer = fx
        .backend
        .try_lock(
            request_as(&r, owner.clone())
                .with_ttl(MINUTE)
                .with_priority(Priority::High),
        )
        .await;
    let lock = expect_granted("try_lock of a free resource", answer.clone());
    let answer = answer.unwrap();
    assert_eq!(answer.reason, None, "a grant carries no reason");
    assert_eq!(answer.queue, None, "a grant carries no queue placement");
    assert_eq!(lock.resource, r);
    assert_eq!(lock.key, "myorg/myrepo/./default/", "the Atlantis lock key");
    assert_eq!(lock.owner, owner, "owner and its metadata are kept");
    assert_eq!(lock.priority, Priority::High);
    assert_eq!(
        lock.acquired_at, t0,
        "acquired_at is the backend clock's now"
    );
    assert_eq!(lock.expires_at, t0.add(MINUTE), "expires_at = now + ttl");
    assert_eq!(lock.ttl, MINUTE);
    assert!(!lock.claim_pending, "a direct grant needs no claim");
    assert_eq!(
        fx.holder(&r).await,
        Some(lock.public()),
        "get_lock shows the holder's public view (no lease_id)"
    );

    // Without a ttl the lease gets default_ttl; every lease has its own id.
    let r2 = resource("myorg/other");
    let lock2 = fx.lock(request(&r2, "myorg/other#1")).await;
    assert_eq!(lock2.ttl, fx.settings.default_ttl, "default_ttl applies");
    assert_eq!(lock2.expires_at, t0.add(fx.settings.default_ttl));
    assert_ne!(lease(&lock2), lease(&lock), "two grants share a lease id");
}

/// Rule 1 before 4 and 5: on a free resource nobody waits for, a request with `wait`
/// or `reserve` is simply granted at once.
pub async fn try_lock_with_wait_or_reserve_on_a_free_resource_is_granted_at_once<
    H: Harness + ?Sized,
>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/waits");
    let answer = bounded(
        "a waiting try_lock on a free resource must not wait",
        fx.backend.try_lock(request(&r, "a").with_wait(MINUTE)),
    )
    .await;
    let lock = expect_granted("try_lock with wait on a free resource", answer);
    assert!(!lock.claim_pending, "a direct grant needs no claim");
    assert!(fx.queue(&r).await.is_empty(), "no queue entry is left");

    let r2 = resource("o/reserves");
    let answer = fx
        .backend
        .try_lock(request(&r2, "b").with_ttl(MINUTE).reserving())
        .await;
    let lock = expect_granted("reserving try_lock on a free resource", answer.clone());
    assert_eq!(
        answer.unwrap().queue,
        None,
        "a grant has no queue placement"
    );
    assert_eq!(lock.expires_at, fx.now().add(MINUTE));
    assert!(fx.queue(&r2).await.is_empty(), "no queue entry is left");
}

/// Resource validation: `path` is normalised (`./infra/` is `infra`), so two spellings
/// of one project are one lock.
pub async fn try_lock_normalises_the_resource_path<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let raw = Resource {
        repo: "o/r".into(),
        path: "./infra/".into(),
        workspace: "default".into(),
        project_name: String::new(),
    };
    let lock = fx.lock(request(&raw, "a")).await;
    assert_eq!(lock.resource.path, "infra", "the stored path is normalised");
    assert_eq!(lock.key, "o/r/infra/default/");

    let same = resource_at("o/r", "infra");
    let answer = expect_not_acquired(
        "the same project under its normal spelling",
        fx.backend.try_lock(request(&same, "b")).await,
    );
    assert_eq!(answer.reason, Some(NotAcquiredReason::Held));
    assert_eq!(fx.holder_name(&same).await.as_deref(), Some("a"));

    let root = Resource {
        path: String::new(),
        ..raw
    };
    let lock = fx.lock(request(&root, "c")).await;
    assert_eq!(lock.resource.path, ".", "an empty path is the root '.'");
}

/// Owners: credentials in pull URLs (Atlantis keeps clone URLs with tokens) are never
/// stored or shown.
pub async fn try_lock_strips_credentials_from_pull_urls<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let mut owner = pull_owner("o/r", 1);
    owner.pull.as_mut().unwrap().url =
        "https://x-access-token:ghs_secret@github.com/o/r/pull/1".into();
    let lock = fx.lock(request_as(&r, owner)).await;
    let want = "https://github.com/o/r/pull/1";
    assert_eq!(lock.owner.pull.as_ref().unwrap().url, want);
    let held = fx.holder(&r).await.expect("held");
    assert_eq!(held.owner.pull.as_ref().unwrap().url, want);
    let listed = fx.all_locks().await;
    assert!(
        !format!("{listed:?}").contains("ghs_secret"),
        "list_locks shows the credential: {listed:?}"
    );
}

/// Rule 2: a re-lock by the holder answers `acquired` with the same lease and token and
/// pushes the expiry to `max(current, now + ttl)`.
pub async fn relock_by_the_same_owner_keeps_lease_and_token<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let t0 = fx.now();
    let first = fx.lock(request(&r, "o/r#1").with_ttl(MINUTE)).await;

    fx.advance(Duration::from_secs(10));
    let again = fx
        .lock(
            request(&r, "o/r#1")
                .with_ttl(Duration::from_secs(120))
                .with_lease_id(lease(&first)),
        )
        .await;
    assert_eq!(lease(&again), lease(&first), "a re-lock keeps the lease id");
    assert_eq!(
        again.fencing_token, first.fencing_token,
        "a re-lock keeps the token"
    );
    let pushed = t0.add(Duration::from_secs(130));
    assert_eq!(again.expires_at, pushed, "expiry pushed to now + ttl");

    fx.advance(Duration::from_secs(10));
    let short = fx
        .lock(
            request(&r, "o/r#1")
                .with_ttl(Duration::from_secs(1))
                .with_lease_id(lease(&first)),
        )
        .await;
    assert_eq!(lease(&short), lease(&first));
    assert_eq!(short.fencing_token, first.fencing_token);
    assert_eq!(
        short.expires_at, pushed,
        "a shorter ttl never pulls the expiry in: max(current, now + ttl)"
    );
    assert_eq!(fx.holder(&r).await.map(|l| l.expires_at), Some(pushed));
}

/// Rule 3: held by another owner, no wait, no reserve: `acquired = false`, reason
/// `held`, the holder's public view, and no queue entry left behind.
pub async fn try_lock_on_a_held_resource_answers_held_without_queueing<H: Harness + ?Sized>(
    harness: &H,
) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "o/r#1")).await;
    let answer = expect_not_acquired(
        "try_lock of a held resource",
        fx.backend
            .try_lock(request(&r, "o/r#2").with_priority(Priority::Critical))
            .await,
    );
    assert_eq!(answer.reason, Some(NotAcquiredReason::Held));
    assert_eq!(
        answer.queue, None,
        "no wait, no reserve: no queue placement"
    );
    let shown = answer.lock.expect("the answer shows the holder");
    assert_eq!(
        shown.lease_id, None,
        "the holder's lease_id leaks to another owner"
    );
    assert_eq!(shown, holder.public(), "the holder's public view");
    let status = fx.backend.get_queue_status(&r).await.unwrap();
    assert!(
        status.entries.is_empty(),
        "an entry was left behind: {:?}",
        status.entries
    );
    assert_eq!(status.lock, Some(holder.public()));
}

/// Rule 4: a waiter joins the queue and is granted, confirmed and with its own TTL,
/// when the holder unlocks.
pub async fn waiter_is_granted_when_the_holder_unlocks<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "o/r#1").with_ttl(MINUTE)).await;
    let ttl = Duration::from_secs(90);
    let (waiter, entry) = fx
        .spawn_waiter(request(&r, "o/r#2").with_ttl(ttl).with_wait(MINUTE))
        .await;
    assert_eq!(entry.entry.kind, tflock_core::EntryKind::Waiter);
    assert_eq!(entry.position, 1);
    assert_eq!(entry.entry.deadline, entry.entry.enqueued_at.add(MINUTE));
    assert_still_waiting("the waiter while the lock is held", &waiter).await;

    fx.advance(Duration::from_secs(5));
    let unlocked = fx.unlock(&holder).await;
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.entry_id),
        Some(entry.entry.entry_id.clone()),
        "unlock reports the entry it handed the lock to"
    );
    let now = fx.now();
    let lock = expect_granted("the waiter", join("the waiter", waiter).await);
    assert_eq!(lock.owner.owner, "o/r#2");
    assert!(
        !lock.claim_pending,
        "the waiting call confirms its own grant"
    );
    assert_eq!(lock.expires_at, now.add(ttl), "confirmed with its full ttl");
    assert!(
        lock.fencing_token > holder.fencing_token,
        "hand-off takes a new token"
    );
    assert!(
        fx.queue(&r).await.is_empty(),
        "the granted entry left the queue"
    );
    let held = fx.holder(&r).await.expect("held by the waiter");
    assert_eq!(
        (held.owner.owner.as_str(), held.claim_pending),
        ("o/r#2", false)
    );
}

/// Rule 4: a waiter that is not granted returns at its deadline with reason `timeout`
/// and its entry removed, and not before.
pub async fn waiter_times_out_at_its_deadline<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    fx.lock(request(&r, "o/r#1")).await;
    let wait = Duration::from_secs(30);
    let (waiter, entry) = fx.spawn_waiter(request(&r, "o/r#2").with_wait(wait)).await;

    fx.advance(wait - Duration::from_secs(1));
    assert_still_waiting("the waiter before its deadline", &waiter).await;
    assert!(
        fx.entry_of(&r, "o/r#2").await.is_some(),
        "entry gone before the deadline"
    );

    fx.advance(Duration::from_secs(1));
    assert!(fx.now() >= entry.entry.deadline);
    let answer = expect_not_acquired("the waiter at its deadline", join("waiter", waiter).await);
    assert_eq!(answer.reason, Some(NotAcquiredReason::Timeout));
    assert!(
        fx.queue(&r).await.is_empty(),
        "the timed-out entry is removed"
    );
    assert_eq!(fx.holder_name(&r).await.as_deref(), Some("o/r#1"));
}

/// Rule 4: `wait` is clamped to `max_timeout`; `wait: default` is `default_timeout`.
pub async fn waiter_wait_is_clamped_to_max_timeout<H: Harness + ?Sized>(harness: &H) {
    let settings = LockSettings {
        default_timeout: Duration::from_secs(20),
        max_timeout: MINUTE,
        ..settings()
    };
    let fx = Fixture::new(harness, settings).await;
    let r = resource("o/r");
    fx.lock(request(&r, "holder")).await;

    let (long, entry) = fx
        .spawn_waiter(request(&r, "long").with_wait(Duration::from_secs(3600)))
        .await;
    assert_eq!(
        entry.entry.deadline,
        entry.entry.enqueued_at.add(MINUTE),
        "a wait of 1h is clamped to max_timeout (1m)"
    );
    let mut req = request(&r, "default");
    req.wait = Some(WaitSpec::Default);
    let (_default, entry) = fx.spawn_waiter(req).await;
    assert_eq!(
        entry.entry.deadline,
        entry.entry.enqueued_at.add(Duration::from_secs(20)),
        "wait: default is default_timeout"
    );

    fx.advance(MINUTE);
    let answer = expect_not_acquired("the clamped waiter", join("waiter", long).await);
    assert_eq!(answer.reason, Some(NotAcquiredReason::Timeout));
}

/// Rule 4: a waiter whose caller goes away (future dropped, no request id) leaves the
/// queue, and the lock is not handed to it: both when the call had settled into its
/// wait and when it was dropped right as its entry appeared (still finishing the
/// enqueue).
pub async fn dropped_waiter_leaves_the_queue<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    for (settled, case, repo) in [
        (true, "settled into its wait", "o/settled"),
        (false, "just enqueued", "o/just"),
    ] {
        let r = resource(repo);
        let holder = fx.lock(request(&r, "o/r#1")).await;
        let req = request(&r, "o/r#2").with_wait(MINUTE);
        let (fut, _entry) = if settled {
            fx.start_polled_waiter(req).await
        } else {
            fx.poll_until_queued(req).await
        };
        drop(fut);
        wait_until(
            &format!("the entry of a waiter dropped {case} is removed"),
            async || fx.queue(&r).await.is_empty(),
        )
        .await;

        let unlocked = fx.unlock(&holder).await;
        assert_eq!(
            unlocked.granted_to, None,
            "{case}: the lock went to a caller that left"
        );
        assert_eq!(fx.holder(&r).await, None, "{case}: the resource is free");
        fx.lock(request(&r, "o/r#3")).await;
    }
}

/// Rule 5: a reservation returns at once with `acquired = false`, its entry id and its
/// position; its lifetime is its `wait`, else `default_ttl`.
pub async fn reservation_returns_at_once_with_its_place<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "o/r#1")).await;
    let t = fx.now();
    let answer = bounded(
        "a reservation returns at once",
        fx.backend.try_lock(
            request(&r, "o/r#2")
                .with_wait(Duration::from_secs(600))
                .reserving(),
        ),
    )
    .await;
    let answer = expect_not_acquired("a reservation", answer);
    assert_eq!(answer.reason, Some(NotAcquiredReason::Held));
    assert_eq!(
        answer.lock,
        Some(holder.public()),
        "shows the holder's public view"
    );
    let placement = answer
        .queue
        .expect("a reservation answers with its placement");
    assert_eq!(placement.position, 1);

    let entries = fx.queue(&r).await;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.entry.entry_id, placement.entry_id);
    assert_eq!(e.entry.kind, tflock_core::EntryKind::Reservation);
    assert_eq!(
        e.entry.deadline,
        t.add(Duration::from_secs(600)),
        "lifetime = its wait"
    );

    fx.tick();
    let second = fx.reserve(request(&r, "o/r#3")).await;
    assert_eq!(
        second.position, 2,
        "the second reservation is second in line"
    );
    let e = fx.entry_of(&r, "o/r#3").await.expect("queued");
    assert_eq!(
        e.entry.deadline,
        e.entry.enqueued_at.add(fx.settings.default_ttl),
        "without wait a reservation lives default_ttl"
    );
}

/// Rule 5: when the holder unlocks, the reservation's owner holds the lock with its
/// full TTL (no claim window) and `queue.granted` is emitted; the owner collects the
/// lease with the reservation's request id (its owner string alone gets
/// `held_by_owner`).
pub async fn reservation_is_granted_with_its_full_ttl_on_release<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "o/r#1").with_ttl(MINUTE)).await;
    let ttl = Duration::from_secs(90);
    let placement = fx
        .reserve(
            request(&r, "o/r#2")
                .with_ttl(ttl)
                .with_wait(Duration::from_secs(600)),
        )
        .await;
    let mut events = fx.backend.subscribe();

    fx.advance(Duration::from_secs(20));
    let unlocked = fx.unlock(&holder).await;
    let now = fx.now();
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.entry_id),
        Some(placement.entry_id.clone())
    );
    let held = fx
        .holder(&r)
        .await
        .expect("held by the reservation's owner");
    assert_eq!(held.owner.owner, "o/r#2");
    assert!(
        !held.claim_pending,
        "a reservation's grant has no claim window"
    );
    assert_eq!(held.expires_at, now.add(ttl), "granted with its full ttl");
    assert!(held.fencing_token > holder.fencing_token);
    assert!(fx.queue(&r).await.is_empty());

    let event = next_event(&mut events, tflock_core::EventKind::QueueGranted, &r).await;
    assert_eq!(event.entry_id.as_deref(), Some(placement.entry_id.as_str()));
    assert_eq!(event.owner, "o/r#2");
    assert_eq!(event.fencing_token, Some(held.fencing_token));

    let nameless = expect_not_acquired(
        "a re-lock that only names the reservation's owner",
        fx.backend
            .try_lock(request(&r, "o/r#2").with_ttl(ttl))
            .await,
    );
    assert_eq!(nameless.reason, Some(NotAcquiredReason::HeldByOwner));
    let mine = fx
        .lock(
            request(&r, "o/r#2")
                .with_ttl(ttl)
                .with_request_id(reservation_request_id("o/r#2")),
        )
        .await;
    assert_eq!(
        mine.fencing_token, held.fencing_token,
        "the granted lease, not a new one"
    );
    fx.unlock(&mine).await;
}

/// Rule 5: a reservation that is not granted by its deadline leaves the queue.
pub async fn reservation_expires_at_its_deadline<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "o/r#1")).await;
    fx.reserve(request(&r, "o/r#2").with_wait(MINUTE)).await;
    fx.advance(MINUTE - Duration::from_secs(1));
    assert!(
        fx.entry_of(&r, "o/r#2").await.is_some(),
        "gone before its deadline"
    );
    fx.advance(Duration::from_secs(2));
    wait_until("the expired reservation leaves the queue", async || {
        fx.queue(&r).await.is_empty()
    })
    .await;
    let unlocked = fx.unlock(&holder).await;
    assert_eq!(
        unlocked.granted_to, None,
        "handed to an expired reservation"
    );
    assert_eq!(fx.holder(&r).await, None);
}

/// Rules 5 and 8: a retry of a reservation that still waits (same owner, same
/// request id, `reserve`) renews its deadline to `max(old deadline, now + its wait)`,
/// keeping its entry, place and `enqueued_at`: a polling client keeps its place while
/// it polls, and loses it a short while after it stops. A retry without `reserve`
/// renews nothing, and no retry ever renews a waiter's entry.
pub async fn reservation_retry_renews_its_deadline<H: Harness + ?Sized>(harness: &H) {
    let mut fx = Fixture::default(harness).await;
    let r = resource("o/renew");
    let holder = fx.lock(request(&r, "o/renew#1")).await;
    let wait = Duration::from_secs(30);
    let req = request(&r, "o/renew#2")
        .with_wait(wait)
        .with_request_id("rid-renew")
        .reserving();
    let t0 = fx.now();
    let first = expect_not_acquired("the reservation", fx.backend.try_lock(req.clone()).await);
    let placed = first
        .queue
        .expect("a reservation answers with its placement");
    assert_eq!(placed.position, 1);
    fx.tick();
    // Reserved alongside and never renewed: its leaving shows that the store swept
    // past the first reservation's original deadline.
    fx.reserve(request(&r, "o/renew#3").with_wait(wait)).await;
    let before = fx.entry_of(&r, "o/renew#2").await.expect("queued");
    assert_eq!(before.entry.deadline, t0.add(wait));

    fx.advance(Duration::from_secs(20));
    let mut plain = req.clone();
    plain.reserve = false;
    plain.wait = None;
    let replayed = expect_not_acquired("a retry without reserve", fx.backend.try_lock(plain).await);
    assert_eq!(
        replayed.queue.map(|q| q.entry_id),
        Some(placed.entry_id.clone())
    );
    assert_eq!(
        fx.entry_of(&r, "o/renew#2")
            .await
            .expect("queued")
            .entry
            .deadline,
        t0.add(wait),
        "a retry without reserve renews nothing"
    );

    let t1 = fx.now();
    let renewed = expect_not_acquired(
        "the reservation's retry",
        fx.backend.try_lock(req.clone()).await,
    );
    assert_eq!(renewed.reason, Some(NotAcquiredReason::Held));
    let again = renewed.queue.expect("the same entry");
    assert_eq!(again.entry_id, placed.entry_id, "the same entry");
    assert_eq!(again.position, 1, "the same place");
    let e = fx.entry_of(&r, "o/renew#2").await.expect("queued");
    assert_eq!(
        e.entry.deadline,
        t1.add(wait),
        "renewed to now + the retry's wait"
    );
    assert_eq!(e.entry.enqueued_at, before.entry.enqueued_at);
    assert_eq!(e.entry.priority, before.entry.priority);
    assert_eq!(e.entry.kind, tflock_core::EntryKind::Reservation);
    assert_eq!(fx.queue(&r).await.len(), 2, "never a second entry");
    // A shorter wait never brings the deadline closer: max(old, now + wait).
    fx.backend
        .try_lock(req.clone().with_wait(Duration::from_secs(5)))
        .await
        .expect("a retry with a shorter wait");
    assert_eq!(
        fx.entry_of(&r, "o/renew#2")
            .await
            .expect("queued")
            .entry
            .deadline,
        t1.add(wait),
        "a shorter wait does not shorten it"
    );
    // The renewal is stored like any change: a restart keeps it.
    fx.reopen().await;
    assert_eq!(
        fx.entry_of(&r, "o/renew#2")
            .await
            .expect("a reservation survives a restart")
            .entry
            .deadline,
        t1.add(wait),
        "the renewed deadline survives a restart"
    );

    // 40 s after the first call: past its original deadline, before the renewed one.
    fx.advance(Duration::from_secs(20));
    wait_until(
        "the unrenewed reservation leaves at its deadline",
        async || fx.entry_of(&r, "o/renew#3").await.is_none(),
    )
    .await;
    let kept = fx
        .entry_of(&r, "o/renew#2")
        .await
        .expect("the renewed reservation still waits past its original deadline");
    assert_eq!(kept.entry.entry_id, placed.entry_id);
    assert_eq!(kept.position, 1);

    fx.advance(Duration::from_secs(11));
    wait_until(
        "the reservation leaves at its renewed deadline",
        async || fx.queue(&r).await.is_empty(),
    )
    .await;
    let unlocked = fx.unlock(&holder).await;
    assert_eq!(
        unlocked.granted_to, None,
        "handed to an expired reservation"
    );

    // A waiter's entry is never renewed, whatever its retry asks.
    let rw = resource("o/renew-waiter");
    let wholder = fx.lock(request(&rw, "holder")).await;
    let wreq = request(&rw, "o/renew-waiter#1")
        .with_wait(wait)
        .with_request_id("rid-renew-w");
    let (waiter, entry) = fx.spawn_waiter(wreq.clone()).await;
    fx.advance(Duration::from_secs(10));
    for reserve in [false, true] {
        let mut retry = wreq.clone();
        retry.reserve = reserve;
        // Without reserve, no wait: a waiting retry would wait on the entry.
        retry.wait = reserve.then_some(WaitSpec::For(wait));
        let answer = expect_not_acquired(
            "a retry of a waiting call",
            bounded("a retry of a waiting call", fx.backend.try_lock(retry)).await,
        );
        assert_eq!(
            answer.queue.map(|q| q.entry_id),
            Some(entry.entry.entry_id.clone())
        );
        let now = fx
            .entry_of(&rw, "o/renew-waiter#1")
            .await
            .expect("still waits");
        assert_eq!(
            now.entry.deadline, entry.entry.deadline,
            "a waiter's entry is not renewed (retry with reserve: {reserve})"
        );
    }
    fx.advance(Duration::from_secs(21));
    let ended = expect_not_acquired("the waiter", join("waiter", waiter).await);
    assert_eq!(ended.reason, Some(NotAcquiredReason::Timeout));
    fx.unlock(&wholder).await;
}

/// Rules 5 and 8: reserving again under another request id of the same owner (the
/// Terraform backend's chain of request ids, an older one evaluated anew once its
/// answer is forgotten) answers with the place held, renews that reservation like its
/// own retry does, and is remembered for the new request id: that id's retries renew
/// it again while it waits, and once it is granted (under the first request id) they
/// answer `lease_lost`; only the first request id collects the grant.
pub async fn reservation_under_another_request_id_renews_it<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let r = resource("o/chain");
    let holder = fx.lock(request(&r, "o/chain#1")).await;
    let wait = Duration::from_secs(30);
    let first = request(&r, "o/chain#2")
        .with_wait(wait)
        .with_request_id("rid-chain-1")
        .reserving();
    let t0 = fx.now();
    let placed = expect_not_acquired("the reservation", fx.backend.try_lock(first.clone()).await)
        .queue
        .expect("a reservation answers with its placement");
    assert_eq!(placed.position, 1);
    fx.tick();
    // Reserved alongside and never renewed: its leaving shows that the store swept
    // past the first reservation's original deadline.
    fx.reserve(request(&r, "o/chain#3").with_wait(wait)).await;
    assert_eq!(
        fx.entry_of(&r, "o/chain#2")
            .await
            .expect("queued")
            .entry
            .deadline,
        t0.add(wait)
    );

    fx.advance(Duration::from_secs(20));
    let second = first.clone().with_request_id("rid-chain-2");
    let t1 = fx.now();
    let again = expect_not_acquired(
        "reserving again under another request id",
        fx.backend.try_lock(second.clone()).await,
    );
    assert_eq!(again.reason, Some(NotAcquiredReason::Held));
    let q = again.queue.expect("the place held");
    assert_eq!(q.entry_id, placed.entry_id, "the same entry");
    assert_eq!(q.position, 1, "the same place");
    let e = fx.entry_of(&r, "o/chain#2").await.expect("queued");
    assert_eq!(
        e.entry.deadline,
        t1.add(wait),
        "renewed to now + the new request's wait"
    );
    assert_eq!(e.entry.kind, tflock_core::EntryKind::Reservation);
    assert_eq!(fx.queue(&r).await.len(), 2, "never a second entry");
    fx.tick();
    // Its leaving shows the sweep past the first renewal's deadline.
    fx.reserve(request(&r, "o/chain#4").with_wait(wait)).await;

    // 40 s after the first call: past its original deadline.
    fx.advance(Duration::from_secs(20));
    wait_until(
        "the unrenewed reservation leaves at its deadline",
        async || fx.entry_of(&r, "o/chain#3").await.is_none(),
    )
    .await;
    let kept = fx
        .entry_of(&r, "o/chain#2")
        .await
        .expect("renewed by the other request id, it still waits past its first deadline");
    assert_eq!(kept.entry.entry_id, placed.entry_id);
    assert_eq!(kept.position, 1);

    // The second request id's retry is answered from the present and renews again.
    let t2 = fx.now();
    let retried = expect_not_acquired(
        "the second request id's retry",
        fx.backend.try_lock(second.clone()).await,
    );
    assert_eq!(retried.reason, Some(NotAcquiredReason::Held));
    let q = retried.queue.expect("the same entry");
    assert_eq!(q.entry_id, placed.entry_id, "the same entry");
    assert_eq!(q.position, 1, "the same place");
    assert_eq!(
        fx.entry_of(&r, "o/chain#2")
            .await
            .expect("queued")
            .entry
            .deadline,
        t2.add(wait),
        "renewed again by the second request id's retry"
    );

    // 60 s after the first call: past the first renewal's deadline too.
    fx.advance(Duration::from_secs(20));
    wait_until(
        "the second unrenewed reservation leaves at its deadline",
        async || fx.entry_of(&r, "o/chain#4").await.is_none(),
    )
    .await;
    let kept = fx
        .entry_of(&r, "o/chain#2")
        .await
        .expect("renewed again, it still waits past the first renewal's deadline");
    assert_eq!(kept.entry.entry_id, placed.entry_id);

    let unlocked = fx.unlock(&holder).await;
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.entry_id),
        Some(placed.entry_id.clone()),
        "granted to the renewed reservation"
    );
    let held = fx
        .holder(&r)
        .await
        .expect("held by the reservation's owner");
    assert_eq!(held.owner.owner, "o/chain#2");

    // The grant was made under the first request id: the second cannot collect it.
    let other = expect_not_acquired(
        "the second request id after the grant",
        fx.backend.try_lock(second.clone()).await,
    );
    assert_eq!(other.reason, Some(NotAcquiredReason::LeaseLost));
    assert_eq!(other.queue, None);
    assert_eq!(
        other.lock.and_then(|l| l.lease_id),
        None,
        "no lease for the second request id"
    );
    let mine = expect_granted(
        "the first request id collects the grant",
        fx.backend.try_lock(first.clone()).await,
    );
    assert_eq!(mine.fencing_token, held.fencing_token, "the granted lease");
    assert!(mine.lease_id.is_some(), "with its lease");
    fx.unlock(&mine).await;
}

/// Rule 6: a queue holding `max_queue_size` entries refuses more with `queue_full`;
/// a call without wait still answers `held`.
pub async fn queue_full_at_max_queue_size<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::new(
        harness,
        LockSettings {
            max_queue_size: 3,
            ..settings()
        },
    )
    .await;
    let r = resource("o/r");
    fx.lock(request(&r, "holder")).await;
    for i in 1..=3 {
        fx.reserve(request(&r, &format!("r{i}"))).await;
    }

    let full = fx.backend.try_lock(request(&r, "r4").reserving()).await;
    assert!(
        matches!(full, Err(TryLockError::QueueFull { max: 3 })),
        "a 4th reservation: expected QueueFull {{ max: 3 }}, got {full:?}"
    );
    assert_eq!(full.unwrap_err().code(), ErrorCode::QueueFull);
    assert_eq!(ErrorCode::QueueFull.as_str(), "queue_full");

    let waiter = bounded(
        "a waiter on a full queue is refused at once",
        fx.backend.try_lock(request(&r, "w5").with_wait(MINUTE)),
    )
    .await;
    assert!(
        matches!(waiter, Err(TryLockError::QueueFull { max: 3 })),
        "a waiter on a full queue: expected QueueFull, got {waiter:?}"
    );

    let plain = expect_not_acquired(
        "no wait on a full queue",
        fx.backend.try_lock(request(&r, "n6")).await,
    );
    assert_eq!(plain.reason, Some(NotAcquiredReason::Held));
    assert_eq!(
        fx.queue_owners(&r).await,
        ["r1", "r2", "r3"],
        "the queue is unchanged"
    );
}

fn no_queue(enable_retries: bool) -> LockSettings {
    LockSettings {
        enable_priority_queue: false,
        enable_retries,
        ..settings()
    }
}

/// Runs the clock forward in small steps until `handle` finishes (retries back off on
/// the backend's clock or in real time; both are covered).
async fn drive_until_finished<T>(fx: &Fixture, what: &str, handle: &tokio::task::JoinHandle<T>) {
    wait_until(what, async || {
        fx.advance(fx.settings.max_retry_backoff);
        handle.is_finished()
    })
    .await;
}

/// Rule 7: without a queue, `wait` with `enable_retries` retries with back-off and is
/// granted after the holder unlocks; no queue entry is ever made.
pub async fn without_queue_wait_retries_until_released<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::new(harness, no_queue(true)).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "o/r#1")).await;
    let backend = fx.backend.clone();
    let req = request(&r, "o/r#2").with_wait(Duration::from_secs(300));
    let waiter = tokio::spawn(async move { backend.try_lock(req).await });
    for _ in 0..10 {
        fx.advance(fx.settings.max_retry_backoff);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !waiter.is_finished(),
        "the retrying call returned while the lock was held"
    );
    assert!(fx.queue(&r).await.is_empty(), "no queue: no entry");

    let unlocked = fx.unlock(&holder).await;
    assert_eq!(unlocked.granted_to, None, "no queue: nobody to hand to");
    drive_until_finished(&fx, "the retrying call returns", &waiter).await;
    let lock = expect_granted("the retrying call", join("retrying call", waiter).await);
    assert_eq!(lock.owner.owner, "o/r#2");
    assert!(!lock.claim_pending);
}

/// Rule 7: without a queue, a retrying `wait` ends at its deadline with `timeout`.
pub async fn without_queue_wait_times_out_at_its_deadline<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::new(harness, no_queue(true)).await;
    let r = resource("o/r");
    fx.lock(request(&r, "o/r#1")).await;
    let wait = Duration::from_secs(2);
    let deadline = fx.now().add(wait);
    let backend = fx.backend.clone();
    let req = request(&r, "o/r#2").with_wait(wait);
    let waiter = tokio::spawn(async move { backend.try_lock(req).await });
    drive_until_finished(&fx, "the retrying call times out", &waiter).await;
    assert!(
        fx.now() >= deadline,
        "the retrying call gave up before its deadline"
    );
    let answer = expect_not_acquired("the retrying call", join("retrying call", waiter).await);
    assert_eq!(answer.reason, Some(NotAcquiredReason::Timeout));
    assert_eq!(fx.holder_name(&r).await.as_deref(), Some("o/r#1"));
}

/// Rule 7: without a queue and without retries, `wait` is refused as an invalid
/// request naming `wait`, and nothing changes.
pub async fn without_queue_wait_is_refused_when_retries_are_off<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::new(harness, no_queue(false)).await;
    let r = resource("o/r");
    let holder = fx.lock(request(&r, "o/r#1")).await;
    let answer = bounded(
        "a refused wait answers at once",
        fx.backend.try_lock(request(&r, "o/r#2").with_wait(MINUTE)),
    )
    .await;
    match &answer {
        Err(e @ TryLockError::Invalid(inv)) => {
            assert_eq!(inv.field, "wait", "the refused field");
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
        }
        other => panic!("wait without queue and retries: expected Invalid(wait), got {other:?}"),
    }
    assert!(fx.queue(&r).await.is_empty());
    assert_eq!(
        fx.holder(&r).await,
        Some(holder.public()),
        "nothing changed"
    );
    let plain: LockResponse =
        expect_not_acquired("no wait", fx.backend.try_lock(request(&r, "o/r#3")).await);
    assert_eq!(plain.reason, Some(NotAcquiredReason::Held));
}

/// A reservation's renewal also raises the TTL its grant will get to the retry's: a
/// place first taken for a short while (a client that may never come back) is granted
/// only for that while, unless its owner came back for it.
pub async fn reservation_renewal_raises_its_grant_ttl<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let short = Duration::from_secs(4);
    let long = Duration::from_secs(20);
    // Renewed with a longer ttl: granted with it.
    let r = resource("o/renew-ttl");
    let holder = fx.lock(request(&r, "o/renew-ttl#1")).await;
    let req = request(&r, "o/renew-ttl#2")
        .with_wait(short)
        .with_ttl(short)
        .with_request_id("rid-renew-ttl")
        .reserving();
    expect_not_acquired("the reservation", fx.backend.try_lock(req.clone()).await);
    fx.advance(Duration::from_secs(1));
    let renewal = req.clone().with_wait(long).with_ttl(long);
    expect_not_acquired("its renewal", fx.backend.try_lock(renewal).await);
    fx.unlock(&holder).await;
    let granted = fx
        .backend
        .get_lock(&r)
        .await
        .expect("get")
        .expect("granted on");
    assert_eq!(granted.owner.owner, "o/renew-ttl#2");
    assert_eq!(granted.ttl, long, "granted with the renewal's ttl");
    // Never renewed: granted with its own short ttl.
    let r = resource("o/short-ttl");
    let holder = fx.lock(request(&r, "o/short-ttl#1")).await;
    let req = request(&r, "o/short-ttl#2")
        .with_wait(short)
        .with_ttl(short)
        .with_request_id("rid-short-ttl")
        .reserving();
    expect_not_acquired("the reservation", fx.backend.try_lock(req).await);
    fx.advance(Duration::from_secs(1));
    fx.unlock(&holder).await;
    let granted = fx
        .backend
        .get_lock(&r)
        .await
        .expect("get")
        .expect("granted on");
    assert_eq!(granted.ttl, short, "granted with its own ttl");
    assert_eq!(granted.expires_at, fx.now().add(short));
}
