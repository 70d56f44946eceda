//! Export and import beyond the conformance cases: completeness over every bucket
//! and page (also on a cluster, where the buckets live on different primaries),
//! resources that only have a token, a bad snapshot that changes nothing, snapshots
//! from another store (entry ids that do not name their bucket), and dry runs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, CancelError, EntryKind, FencingToken, ImportError, ImportOptions, LeaseId, Lock,
    LockRequest, LockSettings, ManualClock, Owner, Priority, QueueEntry, Resource,
    ResourceSnapshot, SharedClock, Snapshot, SystemClock, Timestamp, UserInfo,
};
use tflock_redis::keys::bucket_of;
use tflock_redis::{RedisBackend, RedisConfig};

const HOUR: Duration = Duration::from_secs(3600);

async fn backend(base: fn() -> RedisConfig, clock: SharedClock) -> Arc<RedisBackend> {
    RedisBackend::connect(
        common::config_for(base).await,
        LockSettings::default(),
        clock,
    )
    .await
    .expect("connect")
}

fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").unwrap()
}

/// Resources that all fall in one bucket, so that bucket needs several export pages.
fn same_bucket(n: usize, bucket: usize) -> Vec<Resource> {
    (0..)
        .map(|i| resource(&format!("o/r{i}")))
        .filter(|r| bucket_of(r) == bucket)
        .take(n)
        .collect()
}

async fn export_is_complete(base: fn() -> RedisConfig) {
    let b = backend(base, Arc::new(SystemClock)).await;
    // 450 resources in bucket 5: held ones (lock and token), freed ones (token only),
    // interleaved in key order, over more than two pages of 200.
    let crowded = same_bucket(450, 5);
    let mut want: BTreeMap<String, (u64, bool)> = BTreeMap::new();
    for (i, r) in crowded.iter().enumerate() {
        let l = b
            .try_lock(LockRequest::new(r.clone(), "o/r#1").with_ttl(HOUR))
            .await
            .unwrap()
            .lock
            .unwrap();
        let held = i % 2 == 0;
        if !held {
            b.unlock(r, l.lease_id.as_ref().unwrap()).await.unwrap();
        }
        want.insert(r.storage_key(), (l.fencing_token.0, held));
    }
    // One resource in each other bucket, locked twice over, then freed: the export
    // carries the second grant's token, above the first's.
    for bucket in (0..64).filter(|b| *b != 5) {
        let r = same_bucket(1, bucket).remove(0);
        let mut last = 0;
        for _ in 0..2 {
            let l = b
                .try_lock(LockRequest::new(r.clone(), "x"))
                .await
                .unwrap()
                .lock
                .unwrap();
            assert!(l.fencing_token.0 > last, "tokens go up: {l:?}");
            last = l.fencing_token.0;
            b.unlock(&r, l.lease_id.as_ref().unwrap()).await.unwrap();
        }
        want.insert(r.storage_key(), (last, false));
    }

    let snapshot = b.export().await.expect("export");
    assert_eq!(snapshot.backend, "redis");
    let got: Vec<String> = snapshot
        .resources
        .iter()
        .map(|s| s.resource.storage_key())
        .collect();
    let keys: Vec<String> = want.keys().cloned().collect();
    assert_eq!(got, keys, "every resource once, in storage-key order");
    for s in &snapshot.resources {
        let (token, held) = want[&s.resource.storage_key()];
        assert_eq!(s.last_token, token, "{}", s.resource);
        assert_eq!(s.lock.is_some(), held, "{}", s.resource);
        if let Some(l) = &s.lock {
            assert!(l.lease_id.is_some(), "an export carries lease ids");
            assert_eq!(l.fencing_token.0, token);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_complete_over_every_bucket_and_page() {
    export_is_complete(common::standalone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_complete_over_every_cluster_primary() {
    export_is_complete(common::cluster).await;
}

fn lock_of(r: &Resource, owner: &str, token: u64, now: Timestamp, lease: &str) -> Lock {
    Lock {
        key: r.lock_key(),
        resource: r.clone(),
        owner: Owner::named(owner),
        priority: Priority::Normal,
        fencing_token: FencingToken(token),
        acquired_at: now,
        expires_at: now.add(HOUR),
        ttl: HOUR,
        claim_pending: false,
        lease_id: Some(LeaseId(lease.into())),
    }
}

fn entry(r: &Resource, id: &str, owner: &str, kind: EntryKind, now: Timestamp) -> QueueEntry {
    QueueEntry {
        entry_id: id.into(),
        resource: r.clone(),
        owner: Owner {
            user: Some(UserInfo {
                username: owner.into(),
                teams: vec![],
            }),
            ..Owner::named(owner)
        },
        kind,
        priority: Priority::High,
        enqueued_at: now,
        deadline: now.add(HOUR),
        ttl: HOUR,
        request_id: None,
    }
}

fn snapshot(resources: Vec<ResourceSnapshot>) -> Snapshot {
    Snapshot {
        version: tflock_core::snapshot::SNAPSHOT_VERSION,
        exported_at: Timestamp::ZERO,
        backend: "embedded".into(),
        resources,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_snapshot_is_rejected_and_changes_nothing() {
    let clock = ManualClock::starting_now();
    let b = backend(common::standalone, Arc::new(clock.clone())).await;
    let now = tflock_core::Clock::now(&clock);
    let good = resource("o/good");
    let first = ResourceSnapshot {
        resource: good.clone(),
        lock: Some(lock_of(&good, "theirs", 7, now, "lease-good")),
        queue: vec![],
        last_token: 7,
    };
    let cases: Vec<(ResourceSnapshot, &str)> = vec![
        (
            ResourceSnapshot {
                resource: Resource {
                    path: "../escape".into(),
                    ..resource("o/bad")
                },
                lock: None,
                queue: vec![],
                last_token: 1,
            },
            "resources[1].resource.path",
        ),
        (
            ResourceSnapshot {
                resource: resource("o/big"),
                lock: None,
                queue: vec![],
                last_token: 1 << 53,
            },
            "resources[1].last_token",
        ),
        (
            ResourceSnapshot {
                resource: resource("o/owner"),
                lock: Some(lock_of(&resource("o/owner"), "", 1, now, "l")),
                queue: vec![],
                last_token: 1,
            },
            "resources[1].lock.owner",
        ),
        (
            ResourceSnapshot {
                resource: resource("o/entry"),
                lock: None,
                queue: vec![entry(
                    &resource("o/entry"),
                    "",
                    "bob",
                    EntryKind::Reservation,
                    now,
                )],
                last_token: 1,
            },
            "resources[1].queue[0].entry_id",
        ),
    ];
    for (bad, field) in cases {
        let e = b
            .import(snapshot(vec![first.clone(), bad]), ImportOptions::default())
            .await
            .expect_err("a bad snapshot");
        assert_eq!(e.field(), Some(field), "{e}");
    }
    let e = b
        .import(
            Snapshot {
                version: 99,
                ..snapshot(vec![first.clone()])
            },
            ImportOptions::default(),
        )
        .await
        .expect_err("an unknown version");
    assert!(matches!(e, ImportError::Version { found: 99 }), "{e}");

    // Nothing was installed, and the token counter did not move.
    assert_eq!(b.get_lock(&good).await.unwrap(), None);
    let next = b
        .try_lock(LockRequest::new(good.clone(), "me"))
        .await
        .unwrap()
        .lock
        .unwrap();
    // A first grant's token: the clock floor (the failed imports raised nothing).
    assert_eq!(next.fencing_token, FencingToken(now.0));
}

async fn foreign_snapshot_is_imported(base: fn() -> RedisConfig) {
    let clock = ManualClock::starting_now();
    let b = backend(base, Arc::new(clock.clone())).await;
    let now = tflock_core::Clock::now(&clock);
    let held = resource("o/held");
    let free = resource("o/free");
    // Ids as the embedded store makes them: random, their first digits name no
    // bucket of this backend (0xff is none; 0x00 is bucket 0, which is not theirs).
    let foreign = format!("ff{}", &"0123456789abcdef".repeat(2)[..30]);
    let lookalike = format!("00{}", &"fedcba9876543210".repeat(2)[..30]);
    assert_ne!(bucket_of(&held), 0);
    let snap = snapshot(vec![
        ResourceSnapshot {
            resource: held.clone(),
            lock: Some(lock_of(&held, "theirs", 5, now, "lease-from-embedded")),
            queue: vec![
                entry(&held, &foreign, "bob", EntryKind::Reservation, now),
                entry(&held, &lookalike, "carol", EntryKind::Reservation, now),
                entry(&held, "waiter-entry", "dave", EntryKind::Waiter, now),
            ],
            last_token: 5,
        },
        ResourceSnapshot {
            resource: free.clone(),
            lock: None,
            queue: vec![entry(
                &free,
                "res-free",
                "erin",
                EntryKind::Reservation,
                now,
            )],
            last_token: 3,
        },
    ]);

    let dry = b
        .import(
            snap.clone(),
            ImportOptions {
                dry_run: true,
                overwrite: false,
            },
        )
        .await
        .unwrap();
    assert_eq!((dry.imported, dry.queued), (1, 3), "{dry:?}");
    assert!(dry.dry_run);
    assert_eq!(
        b.get_lock(&held).await.unwrap(),
        None,
        "a dry run writes nothing"
    );
    assert!(b.get_queue_status(&free).await.unwrap().entries.is_empty());

    let report = b
        .import(snap.clone(), ImportOptions::default())
        .await
        .unwrap();
    assert_eq!((report.imported, report.queued), (1, 3), "{report:?}");
    let got = b.get_lock(&held).await.unwrap().expect("installed");
    assert_eq!(got.fencing_token, FencingToken(5));
    let ids: Vec<String> = b
        .get_queue_status(&held)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|v| v.entry.entry_id)
        .collect();
    assert_eq!(ids.len(), 2, "the waiter is not carried over: {ids:?}");
    assert!(
        ids.contains(&foreign) && ids.contains(&lookalike),
        "{ids:?}"
    );
    // A reservation on a free resource is granted as the import settles it, with a
    // token above the snapshot's 3: the grant rule's clock floor.
    let granted = b.get_lock(&free).await.unwrap().expect("handed on");
    assert_eq!(granted.owner.owner, "erin");
    assert_eq!(granted.fencing_token, FencingToken(now.0));
    assert_eq!(b.get_user_queue("bob").await.unwrap().len(), 1);

    // Entry ids that do not name their bucket can still be cancelled.
    for id in [&foreign, &lookalike] {
        let v = b
            .cancel_queue_entry(id, None)
            .await
            .expect("cancel a foreign id");
        assert_eq!(&v.entry.entry_id, id);
        assert!(matches!(
            b.cancel_queue_entry(id, None).await,
            Err(CancelError::NotFound)
        ));
    }
    // The lease id from the other store works here.
    b.unlock(&held, &LeaseId("lease-from-embedded".into()))
        .await
        .expect("the imported lease id unlocks");

    let again = b.import(snap, ImportOptions::default()).await.unwrap();
    assert_eq!(
        again.imported, 1,
        "freed in between: installed again: {again:?}"
    );
    assert_eq!(
        again.retokened, 1,
        "token 5 was granted here already: {again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_another_store_keeps_its_entry_ids() {
    foreign_snapshot_is_imported(common::standalone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_another_store_keeps_its_entry_ids_on_a_cluster() {
    foreign_snapshot_is_imported(common::cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_in_the_store_is_no_conflict_also_in_a_dry_run() {
    let clock = ManualClock::starting_now();
    let b = backend(common::standalone, Arc::new(clock.clone())).await;
    let r = resource("o/expiring");
    let old = b
        .try_lock(LockRequest::new(r.clone(), "old").with_ttl(Duration::from_secs(60)))
        .await
        .unwrap()
        .lock
        .unwrap()
        .fencing_token;
    clock.advance(Duration::from_secs(120));
    let now = tflock_core::Clock::now(&clock);
    let snap = snapshot(vec![ResourceSnapshot {
        resource: r.clone(),
        lock: Some(lock_of(&r, "new", 1, now, "lease-new")),
        queue: vec![],
        last_token: 1,
    }]);
    for dry_run in [true, false] {
        let report = b
            .import(
                snap.clone(),
                ImportOptions {
                    dry_run,
                    overwrite: false,
                },
            )
            .await
            .unwrap();
        assert!(report.conflicts.is_empty(), "{report:?}");
        assert_eq!((report.imported, report.retokened), (1, 1), "{report:?}");
    }
    let got = b.get_lock(&r).await.unwrap().expect("installed");
    assert_eq!(got.owner.owner, "new");
    assert!(
        got.fencing_token > old,
        "above the expired lease's {old}: {got:?}"
    );
    // The grant rule: floored at the clock, which moved on by two minutes.
    assert_eq!(got.fencing_token, FencingToken(now.0));
}
