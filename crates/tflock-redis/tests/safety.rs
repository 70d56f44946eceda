//! Issue 15's safety holes on Redis, each on a real redis-server: empty or malformed
//! lease ids never force, force unlock and cancel check what the admin saw in the same
//! script, replays answer from the present, a re-lock needs proof, request ids are
//! never shown, a waiter cut off during `WAIT` does not keep the lock for its TTL, and
//! with `min_replicas_ack` every acknowledged change waits for the replicas.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{
    Backend, BackendError, CancelError, FencingToken, LeaseId, LockRequest, LockSettings,
    NotAcquiredReason, Owner, RefreshError, Resource, SystemClock, TransferAuth, TransferError,
    TryLockError, UnlockError,
};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::{RedisOptions, RedisServer};

fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").unwrap()
}

async fn backend_with(config: RedisConfig, settings: LockSettings) -> Arc<RedisBackend> {
    RedisBackend::connect(config, settings, Arc::new(SystemClock))
        .await
        .expect("connect")
}

/// A backend on a fresh key prefix of a shared deployment (`common::standalone`,
/// `common::cluster`).
async fn backend(base: fn() -> RedisConfig) -> Arc<RedisBackend> {
    let config = RedisConfig {
        key_prefix: common::fresh_prefix(),
        ..tokio::task::spawn_blocking(base).await.unwrap()
    };
    backend_with(config, LockSettings::default()).await
}

async fn grant(b: &RedisBackend, req: LockRequest) -> tflock_core::Lock {
    let r = b.try_lock(req).await.expect("try_lock");
    assert!(r.acquired, "expected a grant: {r:?}");
    r.lock.unwrap()
}

fn reservation(r: &Resource, owner: &str) -> LockRequest {
    let mut req = LockRequest::new(r.clone(), owner);
    req.reserve = true;
    req
}

/// The topology-independent cases, on standalone and on a Cluster with replicas.
macro_rules! on_topologies {
    ($($case:ident),* $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::common::standalone).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::common::cluster).await
                }
            )*
        }
    };
}

on_topologies!(
    empty_or_malformed_lease_never_forces,
    force_unlock_checks_expected_token,
    cancel_checks_expected_resource,
    replay_of_an_ended_lease_is_lease_lost,
    replay_of_a_reservation_answers_its_entry_now,
    relock_needs_the_lease_or_the_grants_request_id,
    request_ids_are_never_shown,
    waiting_retry_joins_the_first_calls_entry,
);

// ---- 4: an empty or malformed lease id is refused before anything is sent ----

async fn empty_or_malformed_lease_never_forces(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/empty-lease");
    let lock = grant(&b, LockRequest::new(r.clone(), "holder")).await;
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

async fn force_unlock_checks_expected_token(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/force-token");
    let lock = grant(&b, LockRequest::new(r.clone(), "holder")).await;
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

async fn cancel_checks_expected_resource(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/cancel-here");
    let elsewhere = resource("o/cancel-elsewhere");
    let lock = grant(&b, LockRequest::new(r.clone(), "holder")).await;
    let placed = b.try_lock(reservation(&r, "queued")).await.unwrap();
    let id = placed.queue.expect("reserved").entry_id;
    assert!(matches!(
        b.cancel_queue_entry(&id, Some(&elsewhere)).await,
        Err(CancelError::NotFound)
    ));
    assert_eq!(b.get_queue_status(&r).await.unwrap().entries.len(), 1);
    let v = b.cancel_queue_entry(&id, Some(&r)).await.expect("cancel");
    assert_eq!(v.entry.entry_id, id);

    // An entry granted in the meantime is not the entry the admin saw.
    let placed = b.try_lock(reservation(&r, "queued2")).await.unwrap();
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

async fn replay_of_an_ended_lease_is_lease_lost(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/replay");
    let req = LockRequest::new(r.clone(), "o/replay#1").with_request_id("rid-replay-1");
    let lock = grant(&b, req.clone()).await;

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
    let other = grant(&b, LockRequest::new(r.clone(), "o/replay#2")).await;
    let gone = b.try_lock(req.clone()).await.unwrap();
    assert!(!gone.acquired, "{gone:?}");
    assert_eq!(gone.reason, Some(NotAcquiredReason::LeaseLost));
    let shown = gone.lock.expect("the holder's view");
    assert_eq!(shown.fencing_token, other.fencing_token);
    assert_eq!(shown.lease_id, None, "public view only");

    // Forced and transferred leases are lost too.
    b.force_unlock(&r, None).await.unwrap();
    let req3 = LockRequest::new(r.clone(), "o/replay#3").with_request_id("rid-replay-3");
    let l3 = grant(&b, req3.clone()).await;
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

async fn replay_of_a_reservation_answers_its_entry_now(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/replay-q");
    let holder = grant(&b, LockRequest::new(r.clone(), "holder")).await;
    let req = reservation(&r, "o/replay-q#1").with_request_id("rid-replay-q");
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
    let req2 = reservation(&r, "o/replay-q#2").with_request_id("rid-replay-q2");
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

async fn relock_needs_the_lease_or_the_grants_request_id(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/relock");
    let lock = grant(&b, LockRequest::new(r.clone(), "o/relock#1")).await;

    // The owner string alone proves nothing, also with wait or reserve.
    for req in [
        LockRequest::new(r.clone(), "o/relock#1"),
        LockRequest::new(r.clone(), "o/relock#1").with_wait(Duration::from_secs(5)),
        reservation(&r, "o/relock#1"),
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
    let req = LockRequest::new(r.clone(), "o/relock#1")
        .with_ttl(Duration::from_secs(3600))
        .with_lease_id(lock.lease_id.clone().unwrap());
    let again = grant(&b, req).await;
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

async fn request_ids_are_never_shown(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/secret-rid");
    grant(&b, LockRequest::new(r.clone(), "holder")).await;
    let req = reservation(&r, "o/secret-rid#7").with_request_id("rid-secret-1");
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

// ---- 6 and 7: min_replicas_ack, with a real replica stopped ----

/// A primary and its replica, linked.
async fn primary_and_replica() -> (Arc<RedisServer>, Arc<RedisServer>) {
    tokio::task::spawn_blocking(|| {
        let primary = Arc::new(RedisServer::start(RedisOptions::default()));
        let replica = Arc::new(RedisServer::start(
            RedisOptions::default().config(&format!("replicaof 127.0.0.1 {}", primary.port())),
        ));
        let p = primary.clone();
        tflock_testkit::wait_until(
            tflock_testkit::DEFAULT_TIMEOUT,
            "the replica is linked",
            || {
                let n = p.info_field("replication", "connected_slaves");
                if n.as_deref() == Some("1") {
                    Ok(())
                } else {
                    Err(format!("connected_slaves: {n:?}"))
                }
            },
        );
        (primary, replica)
    })
    .await
    .unwrap()
}

fn acked(primary: &RedisServer) -> RedisConfig {
    RedisConfig {
        key_prefix: common::fresh_prefix(),
        min_replicas_ack: 1,
        ..common::with_test_timeouts(RedisConfig::standalone(primary.addr().to_string()))
    }
}

async fn pause(s: &Arc<RedisServer>) {
    let s = s.clone();
    tokio::task::spawn_blocking(move || s.pause())
        .await
        .unwrap();
}

async fn resume(s: &Arc<RedisServer>) {
    let s = s.clone();
    tokio::task::spawn_blocking(move || s.resume())
        .await
        .unwrap();
}

fn unavailable<T: std::fmt::Debug, E: std::fmt::Debug>(r: &Result<T, E>) -> bool {
    format!("{r:?}").contains("Unavailable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_waits_for_the_replica() {
    let (primary, replica) = primary_and_replica().await;
    let b = backend_with(acked(&primary), LockSettings::default()).await;
    let rs: Vec<Resource> = (0..4).map(|i| resource(&format!("o/acked-{i}"))).collect();
    let mut locks = Vec::new();
    for r in &rs {
        locks.push(grant(&b, LockRequest::new(r.clone(), "o/acked#1")).await);
    }
    grant(
        &b,
        LockRequest::new(resource("o/acked-pull"), "o/acked-pull#3"),
    )
    .await;
    pause(&replica).await;
    let lease = |i: usize| locks[i].lease_id.clone().unwrap();

    let relock = b
        .try_lock(LockRequest::new(rs[0].clone(), "o/acked#1").with_lease_id(lease(0)))
        .await;
    assert!(
        matches!(
            relock,
            Err(TryLockError::Backend(BackendError::Unavailable(_)))
        ),
        "re-lock not replicated: {relock:?}"
    );
    let refresh = b
        .refresh_lock(&rs[1], &lease(1), Duration::from_secs(600))
        .await;
    assert!(unavailable(&refresh), "refresh not replicated: {refresh:?}");
    let transfer = b
        .transfer_lock(
            &rs[2],
            TransferAuth::Lease(lease(2)),
            Owner::named("o/acked#2"),
        )
        .await;
    assert!(
        unavailable(&transfer),
        "transfer not replicated: {transfer:?}"
    );
    let unlock = b.unlock(&rs[3], &lease(3)).await;
    assert!(unavailable(&unlock), "unlock not replicated: {unlock:?}");
    let forced = b.force_unlock(&rs[0], None).await;
    assert!(
        unavailable(&forced),
        "force unlock not replicated: {forced:?}"
    );
    let pulled = b.unlock_by_pull("o/acked-pull", 3).await;
    assert!(
        unavailable(&pulled),
        "unlock by pull not replicated: {pulled:?}"
    );
    resume(&replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_cut_off_during_wait_frees_the_lock_within_claim_timeout() {
    let (primary, replica) = primary_and_replica().await;
    let claim = Duration::from_secs(2);
    let settings = LockSettings {
        claim_timeout: claim,
        ..LockSettings::default()
    };
    // Waiters on backends that wait for the replica (each its own connection: a
    // blocked WAIT holds up its connection), observed through one that does not.
    let waiting = RedisConfig {
        read_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(5),
        ..acked(&primary)
    };
    let b = backend_with(waiting.clone(), settings.clone()).await;
    let c = backend_with(waiting.clone(), settings.clone()).await;
    let admin = backend_with(
        RedisConfig {
            min_replicas_ack: 0,
            ..waiting.clone()
        },
        settings,
    )
    .await;
    let r = resource("o/cut-off");
    let ttl = Duration::from_secs(120);
    let holder = grant(&b, LockRequest::new(r.clone(), "holder").with_ttl(ttl)).await;

    let first = {
        let b = b.clone();
        let req = LockRequest::new(r.clone(), "first")
            .with_ttl(ttl)
            .with_wait(Duration::from_secs(60));
        tokio::spawn(async move { b.try_lock(req).await })
    };
    // Queued first, then the second waiter.
    let started = Instant::now();
    while admin.get_queue_status(&r).await.unwrap().entries.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = {
        let b = c.clone();
        let req = LockRequest::new(r.clone(), "second")
            .with_ttl(ttl)
            .with_wait(Duration::from_secs(60));
        tokio::spawn(async move { b.try_lock(req).await })
    };
    while admin.get_queue_status(&r).await.unwrap().entries.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The replica stops: the first waiter's confirmation blocks in WAIT.
    pause(&replica).await;
    let _ = admin.force_unlock(&r, Some(holder.fencing_token)).await;
    let started = Instant::now();
    loop {
        let l = admin.get_lock(&r).await.unwrap();
        if l.as_ref()
            .is_some_and(|l| l.owner.owner == "first" && !l.claim_pending)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the first waiter confirms: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cut off while its WAIT blocks.
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    let _ = first.await;
    let cut = Instant::now();
    resume(&replica).await;

    let got = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second waiter answers")
        .unwrap()
        .unwrap();
    assert!(got.acquired, "the second waiter: {got:?}");
    assert!(
        cut.elapsed() < claim + Duration::from_secs(3),
        "granted {:?} after the cut, claim_timeout is {claim:?}, ttl {ttl:?}",
        cut.elapsed()
    );
}

// ---- 1: a retry of a call that still waits joins its entry ----

async fn waiting_retry_joins_the_first_calls_entry(base: fn() -> RedisConfig) {
    let b = backend(base).await;
    let r = resource("o/replay-w");
    let holder = grant(&b, LockRequest::new(r.clone(), "holder")).await;
    let req = LockRequest::new(r.clone(), "o/replay-w#1")
        .with_wait(Duration::from_secs(20))
        .with_request_id("rid-replay-w");
    let spawn = |req: LockRequest| {
        let b = b.clone();
        tokio::spawn(async move { b.try_lock(req).await })
    };
    let first = spawn(req.clone());
    let started = Instant::now();
    while b.get_queue_status(&r).await.unwrap().entries.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry = spawn(req.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.get_queue_status(&r).await.unwrap().entries.len(),
        1,
        "never a second entry"
    );
    b.unlock(&r, holder.lease_id.as_ref().unwrap())
        .await
        .unwrap();
    let first = first.await.unwrap().unwrap();
    let retry = tokio::time::timeout(Duration::from_secs(10), retry)
        .await
        .expect("the retry answers")
        .unwrap()
        .unwrap();
    assert!(first.acquired && retry.acquired, "{first:?} / {retry:?}");
    let (f, g) = (first.lock.unwrap(), retry.lock.unwrap());
    assert_eq!(f.fencing_token, g.fencing_token, "one grant");
    assert_eq!(f.lease_id, g.lease_id);

    // Cancelled: a retry gets that outcome, and queues nothing.
    let lock = b.get_lock(&r).await.unwrap().unwrap();
    assert_eq!(lock.owner.owner, "o/replay-w#1");
    let req = LockRequest::new(r.clone(), "o/replay-w#2")
        .with_wait(Duration::from_secs(20))
        .with_request_id("rid-replay-w2");
    let waiting = spawn(req.clone());
    let started = Instant::now();
    let id = loop {
        if let Some(e) = b.get_queue_status(&r).await.unwrap().entries.first() {
            break e.entry.entry_id.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    b.cancel_queue_entry(&id, Some(&r)).await.unwrap();
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.reason, Some(NotAcquiredReason::Cancelled));
    let again = tokio::time::timeout(Duration::from_secs(2), b.try_lock(req))
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(
        again.reason,
        Some(NotAcquiredReason::Cancelled),
        "{again:?}"
    );
    assert!(b.get_queue_status(&r).await.unwrap().entries.is_empty());
}
