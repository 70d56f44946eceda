//! Export and import: lossless, idempotent, and tokens never go back.

use std::time::Duration;

use tflock_core::ImportOptions;

use crate::Harness;
use crate::support::*;

const HOUR: Duration = Duration::from_secs(3600);

/// Export then import into an empty store gives back every lock (lease id, token,
/// owner metadata, expiry), every reservation and every resource's last token; a
/// second import changes nothing.
pub async fn export_import_round_trip_is_lossless_and_idempotent<H: Harness + ?Sized>(harness: &H) {
    let fx = Fixture::default(harness).await;
    let a = resource("o/a");
    let b = resource_at("group/sub/repo", "stacks/net");
    let freed = resource("o/freed");
    let la = fx
        .lock(request_as(&a, pull_owner("o/a", 7)).with_ttl(HOUR))
        .await;
    let lb = fx
        .lock(request_as(&b, user_owner("alice-lock", "alice")).with_ttl(HOUR))
        .await;
    fx.tick();
    let placement = fx
        .reserve(request_as(&a, user_owner("bob-res", "bob")).with_ttl(HOUR))
        .await;
    // A resource locked and freed again: only its token remains.
    let lf = fx.lock(request(&freed, "tmp")).await;
    fx.lock(request(&freed, "tmp").with_lease_id(lease(&lf)))
        .await;
    fx.unlock(&lf).await;

    let snapshot = fx.backend.export().await.expect("export");
    assert_eq!(snapshot.version, tflock_core::snapshot::SNAPSHOT_VERSION);
    let find = |r: &tflock_core::Resource| {
        snapshot
            .resources
            .iter()
            .find(|s| &s.resource == r)
            .cloned()
    };
    let sa = find(&a).expect("resource a exported");
    assert_eq!(
        sa.lock.as_ref().and_then(|l| l.lease_id.clone()),
        la.lease_id,
        "lease id exported"
    );
    assert_eq!(sa.queue.len(), 1, "reservation exported");
    assert_eq!(sa.last_token, la.fencing_token.0);
    let sf = find(&freed).expect("a freed resource keeps its token in the export");
    assert!(sf.lock.is_none());
    assert_eq!(sf.last_token, lf.fencing_token.0);

    // Into a fresh store on the same clock.
    let other = harness.create(fx.settings.clone(), fx.clock.clone()).await;
    let target = other.backend();
    let report = target
        .import(snapshot.clone(), ImportOptions::default())
        .await
        .expect("import");
    assert_eq!(report.imported, 2, "{report:?}");
    assert_eq!(report.queued, 1, "{report:?}");
    assert!(report.conflicts.is_empty());
    assert_eq!(report.retokened, 0);
    let again = target
        .import(snapshot.clone(), ImportOptions::default())
        .await
        .expect("second import");
    assert_eq!(again.imported, 0, "idempotent: {again:?}");
    assert_eq!(again.queued, 0, "idempotent: {again:?}");
    assert_eq!(again.unchanged, 2, "idempotent: {again:?}");

    let got_a = target.get_lock(&a).await.unwrap().expect("a imported");
    assert_eq!(got_a.fencing_token, la.fencing_token);
    assert_eq!(got_a.expires_at, la.expires_at);
    assert_eq!(got_a.owner, la.owner);
    let got_b = target.get_lock(&b).await.unwrap().expect("b imported");
    assert_eq!(got_b.owner.username(), Some("alice"));
    assert_eq!(got_b.fencing_token, lb.fencing_token);
    let q = target.get_queue_status(&a).await.unwrap();
    assert_eq!(q.entries.len(), 1);
    assert_eq!(q.entries[0].entry.entry_id, placement.entry_id);
    // The old lease id works on the new store: the holder keeps going.
    target
        .unlock(&b, &lease(&lb))
        .await
        .expect("imported lease id unlocks");
    // The freed resource's next grant is above its exported token.
    let next = target
        .try_lock(request(&freed, "after"))
        .await
        .unwrap()
        .lock
        .unwrap();
    assert!(
        next.fencing_token > lf.fencing_token,
        "{:?} after {:?}",
        next.fencing_token,
        lf.fencing_token
    );
}

/// Importing into a store that already granted higher tokens never lowers them: the
/// imported lock gets a new token above the store's.
pub async fn import_never_lowers_a_token<H: Harness + ?Sized>(harness: &H) {
    let src = Fixture::default(harness).await;
    let r = resource("o/r");
    let old = src.lock(request(&r, "old").with_ttl(HOUR)).await;
    let snapshot = src.backend.export().await.unwrap();

    let dst = Fixture::new(harness, settings()).await;
    // The destination granted this resource several times already.
    let mut last = None;
    for _ in 0..5 {
        let l = dst.lock(request(&r, "dst")).await;
        dst.unlock(&l).await;
        last = Some(l.fencing_token);
    }
    let last = last.unwrap();
    assert!(last > old.fencing_token);
    // Same instant on both clocks is not needed: the snapshot's lease runs an hour.
    let report = dst
        .backend
        .import(snapshot, ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(report.imported, 1, "{report:?}");
    assert_eq!(report.retokened, 1, "{report:?}");
    let got = dst.holder(&r).await.expect("imported");
    assert!(
        got.fencing_token > last,
        "imported token {:?} must be above {:?}",
        got.fencing_token,
        last
    );
    dst.backend.force_unlock(&r, None).await.unwrap();
    let next = dst.lock(request(&r, "later")).await;
    assert!(next.fencing_token > got.fencing_token);
}

/// A resource held under another lease is a conflict and is left alone, unless
/// `overwrite`; a dry run reports the same and changes nothing.
pub async fn import_reports_conflicts_and_dry_run_changes_nothing<H: Harness + ?Sized>(
    harness: &H,
) {
    let src = Fixture::default(harness).await;
    let r = resource("o/r");
    let free = resource("o/free");
    src.lock(request(&r, "theirs").with_ttl(HOUR)).await;
    src.lock(request(&free, "theirs").with_ttl(HOUR)).await;
    let snapshot = src.backend.export().await.unwrap();

    let dst = Fixture::default(harness).await;
    let mine = dst.lock(request(&r, "mine").with_ttl(HOUR)).await;

    let dry = dst
        .backend
        .import(
            snapshot.clone(),
            ImportOptions {
                dry_run: true,
                overwrite: false,
            },
        )
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.conflicts, vec![r.clone()]);
    assert_eq!(dry.imported, 1);
    assert!(
        dst.holder(&free).await.is_none(),
        "dry run installed nothing"
    );
    assert_eq!(dst.holder_name(&r).await.as_deref(), Some("mine"));

    let report = dst
        .backend
        .import(snapshot.clone(), ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(report.conflicts, vec![r.clone()]);
    assert_eq!(
        dst.holder_name(&r).await.as_deref(),
        Some("mine"),
        "conflict left alone"
    );
    assert_eq!(dst.holder_name(&free).await.as_deref(), Some("theirs"));

    let report = dst
        .backend
        .import(
            snapshot,
            ImportOptions {
                dry_run: false,
                overwrite: true,
            },
        )
        .await
        .unwrap();
    assert!(report.conflicts.is_empty());
    let now = dst.holder(&r).await.unwrap();
    assert_eq!(now.owner.owner, "theirs", "overwrite replaced the holder");
    assert!(
        now.fencing_token > mine.fencing_token,
        "and the token still went up"
    );
}
