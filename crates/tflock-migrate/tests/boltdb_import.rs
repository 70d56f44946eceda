//! The fixture written by Go's bbolt (fixtures/gen/main.go) reads exactly, imports
//! into a real embedded store, and leaves no credential anywhere in tflock's store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, Clock, ImportOptions, LockFilter, LockSettings, Resource, SystemClock, Timestamp,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_migrate::bolt::BoltFile;
use tflock_migrate::{IMPORT_NOTE, import_snapshot, read_boltdb, snapshot_from_boltdb};

/// Every secret the fixture's records carry (clone URLs and one pull URL).
const SECRETS: [&str; 4] = ["SECRETTOKEN", "x-token:", "gitlab-ci-token:", "glpat-"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

#[test]
fn the_go_written_file_has_the_expected_buckets() {
    let file = BoltFile::open(fixture("atlantis.db")).unwrap();
    let mut names: Vec<String> = file
        .bucket_names()
        .unwrap()
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["globalLocks", "pulls", "runLocks"]);
    let pulls = file.bucket(b"pulls").unwrap().unwrap();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].key, b"github.com::acme/infra::42");
    assert!(file.bucket(b"nope").unwrap().is_none());
    // Keys come back in bbolt's byte order, over several leaf pages.
    let locks = file.bucket(b"runLocks").unwrap().unwrap();
    assert_eq!(locks.len(), 66);
    assert!(locks.windows(2).all(|w| w[0].key < w[1].key));
}

#[test]
fn the_fixture_converts_exactly() {
    let now = ts("2026-11-01T00:00:00Z");
    let ttl = Duration::from_secs(2 * 3600);
    let (snap, summary) = snapshot_from_boltdb(fixture("atlantis.db"), ttl, now).unwrap();

    assert_eq!(snap.version, 1);
    assert_eq!(snap.backend, "atlantis-boltdb");
    assert_eq!(summary.found, 66);
    assert_eq!(summary.converted, 65);
    assert_eq!(snap.resources.len(), 65);
    assert_eq!(summary.skipped.len(), 1);
    assert_eq!(summary.skipped[0].key, "broken/entry/./default/");
    assert!(summary.skipped[0].reason.contains("not a ProjectLock"));
    assert_eq!(summary.global_locks.len(), 1);
    let g = &summary.global_locks[0];
    assert_eq!(
        (g.key.as_str(), g.command.as_str()),
        ("apply/lock", "apply")
    );
    assert_eq!(g.locked_at, Some(ts("2026-03-01T12:00:00Z")));
    assert!(
        summary.source.ends_with("fixtures/atlantis.db"),
        "{}",
        summary.source
    );

    let lock_of = |r: Resource| {
        snap.resources
            .iter()
            .find(|rs| rs.resource == r)
            .unwrap_or_else(|| panic!("{r} not in the snapshot"))
            .clone()
    };
    for rs in &snap.resources {
        assert_eq!(rs.last_token, 0);
        assert!(rs.queue.is_empty());
        let l = rs.lock.as_ref().unwrap();
        assert_eq!(l.resource, rs.resource);
        assert_eq!(l.key, rs.resource.lock_key());
        // A first grant's token at the import's instant: the clock floor in µs.
        assert_eq!(l.fencing_token.0, now.0);
        assert_eq!(l.expires_at, now.add(ttl));
        assert_eq!(l.ttl, ttl);
        assert!(!l.claim_pending);
        assert_eq!(l.lease_id.as_ref().unwrap().as_str().len(), 32);
        assert_eq!(l.owner.note, IMPORT_NOTE);
    }
    // Lease ids are fresh and distinct.
    let mut ids: Vec<&str> = snap
        .resources
        .iter()
        .map(|r| r.lock.as_ref().unwrap().lease_id.as_ref().unwrap().as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 65);

    // New key format, empty project name, a token in the pull URL and clone URL.
    let rs = lock_of(Resource::new("acme/infra", ".", "default", "").unwrap());
    let l = rs.lock.unwrap();
    assert_eq!(l.key, "acme/infra/./default/");
    assert_eq!(l.owner.owner, "acme/infra#42");
    let user = l.owner.user.as_ref().unwrap();
    assert_eq!(user.username, "alice");
    assert_eq!(user.teams, ["platform", "sre"]);
    let pull = l.owner.pull.as_ref().unwrap();
    assert_eq!(pull.num, 42);
    assert_eq!(pull.url, "https://github.com/acme/infra/pull/42");
    assert_eq!(pull.author, "alice");
    assert_eq!(pull.head_commit, "4f2c1e9d0b7a6c5e4d3f2a1b0c9d8e7f6a5b4c3d");
    assert_eq!(pull.head_branch, "feature/vpc");
    assert_eq!(pull.base_branch, "main");
    assert_eq!(l.acquired_at, ts("2026-03-01T09:30:00.123456Z"));

    // A project name with spaces; a time written with a +02:00 offset.
    let rs =
        lock_of(Resource::new("acme/infra", "modules/network", "prod", "core network").unwrap());
    let l = rs.lock.unwrap();
    assert_eq!(l.key, "acme/infra/modules/network/prod/core network");
    assert_eq!(l.owner.owner, "acme/infra#43");
    assert_eq!(l.owner.user.as_ref().unwrap().username, "carol");
    assert_eq!(l.owner.user.as_ref().unwrap().teams, ["network"]);
    let pull = l.owner.pull.as_ref().unwrap();
    assert_eq!(
        (pull.num, pull.author.as_str(), pull.head_branch.as_str()),
        (43, "bob", "net/peering")
    );
    assert_eq!(pull.head_commit, "aaaabbbbccccddddeeeeffff0000111122223333");
    assert_eq!(l.acquired_at, ts("2026-03-01T09:45:30Z"));

    // A GitLab subgroup: the repo keeps its slashes, taken from the JSON.
    let rs = lock_of(Resource::new("group/sub/repo", "envs/staging", "staging", "app").unwrap());
    let l = rs.lock.unwrap();
    assert_eq!(l.owner.owner, "group/sub/repo#7");
    assert_eq!(l.owner.user.as_ref().unwrap().username, "dave");
    assert!(l.owner.user.as_ref().unwrap().teams.is_empty());
    let pull = l.owner.pull.as_ref().unwrap();
    assert_eq!(
        pull.url,
        "https://gitlab.example.com/group/sub/repo/-/merge_requests/7"
    );
    assert_eq!(
        (pull.head_branch.as_str(), pull.base_branch.as_str()),
        ("mr-branch", "develop")
    );
    assert_eq!(l.acquired_at, ts("2026-02-28T23:59:59Z"));

    // The older three-part keys, without project names or teams.
    let rs = lock_of(Resource::new("acme/legacy", ".", "default", "").unwrap());
    let l = rs.lock.unwrap();
    assert_eq!(l.owner.owner, "acme/legacy#5");
    assert_eq!(l.owner.user.as_ref().unwrap().username, "erin");
    assert_eq!(l.owner.pull.as_ref().unwrap().base_branch, "master");
    assert_eq!(l.acquired_at, ts("2025-12-24T18:00:00Z"));
    let rs = lock_of(Resource::new("group/sub/other", "terraform", "default", "").unwrap());
    let l = rs.lock.unwrap();
    assert_eq!(l.owner.owner, "group/sub/other#12");
    assert_eq!(l.owner.pull.as_ref().unwrap().author, "frank");

    // The bulk locks, one of them larger than a page (overflow pages).
    for i in 0..60u64 {
        let rs =
            lock_of(Resource::new("acme/bulk", format!("stacks/s{i:02}"), "default", "").unwrap());
        let l = rs.lock.unwrap();
        assert_eq!(l.owner.owner, format!("acme/bulk#{}", 1000 + i));
        let teams = &l.owner.user.as_ref().unwrap().teams;
        // 601 teams in Atlantis: kept to tflock's limit of 256, the lock not lost.
        assert_eq!(teams.len(), if i == 30 { 256 } else { 1 });
    }

    // Nothing in the snapshot carries a credential.
    let json = serde_json::to_string(&snap).unwrap();
    for s in SECRETS {
        assert!(!json.contains(s), "the snapshot carries {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_leaves_no_credential_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.redb");
    let backend = EmbeddedBackend::open(
        EmbeddedConfig {
            path: path.clone(),
            settings: LockSettings::default(),
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    // A lock tflock already holds, under another owner: a conflict, left alone.
    let taken = Resource::new("acme/legacy", ".", "default", "").unwrap();
    let held = backend
        .try_lock(tflock_core::LockRequest::new(
            taken.clone(),
            "acme/legacy#99",
        ))
        .await
        .unwrap();
    assert!(held.acquired);
    let held_token = held.lock.as_ref().unwrap().fencing_token;

    let now = SystemClock.now();
    let ttl = Duration::from_secs(3600);

    // A dry run changes nothing.
    let (snap, mut dry) = snapshot_from_boltdb(fixture("atlantis.db"), ttl, now).unwrap();
    import_snapshot(
        &*backend,
        snap,
        ImportOptions {
            dry_run: true,
            overwrite: false,
        },
        &mut dry,
        |_, _| {},
    )
    .await
    .unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.imported, dry.conflicts.len()), (64, 1));
    let all = LockFilter {
        limit: Some(1000),
        ..Default::default()
    };
    assert_eq!(
        backend.list_locks(all.clone()).await.unwrap().locks.len(),
        1
    );

    let (snap, mut summary) = snapshot_from_boltdb(fixture("atlantis.db"), ttl, now).unwrap();
    let mut ticks = Vec::new();
    import_snapshot(
        &*backend,
        snap,
        ImportOptions::default(),
        &mut summary,
        |done, total| ticks.push((done, total)),
    )
    .await
    .unwrap();
    assert_eq!(ticks.first(), Some(&(0, 65)));
    assert_eq!(ticks.last(), Some(&(65, 65)));
    assert_eq!(summary.imported, 64);
    assert_eq!(summary.conflicts, std::slice::from_ref(&taken));
    assert_eq!(summary.skipped.len(), 1);
    assert_eq!(summary.global_locks.len(), 1);
    let text = summary.to_string();
    assert!(text.contains("imported 64"), "{text}");
    assert!(
        text.contains("global lock: Atlantis has `apply` locked"),
        "{text}"
    );

    let page = backend.list_locks(all.clone()).await.unwrap();
    assert_eq!(page.locks.len(), 65);
    let infra = backend
        .get_lock(&Resource::new("acme/infra", ".", "default", "").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(infra.owner.owner, "acme/infra#42");
    assert_eq!(
        infra.owner.pull.as_ref().unwrap().url,
        "https://github.com/acme/infra/pull/42"
    );
    assert!(infra.fencing_token.0 >= 1);
    assert!(infra.lease_id.is_none(), "a listing never shows lease ids");
    // The conflicting lock kept its owner and token.
    let still = backend.get_lock(&taken).await.unwrap().unwrap();
    assert_eq!(
        (still.owner.owner.as_str(), still.fencing_token),
        ("acme/legacy#99", held_token)
    );

    // Running the migration again reports the locks as already imported.
    let (snap, mut again) =
        snapshot_from_boltdb(fixture("atlantis.db"), ttl, SystemClock.now()).unwrap();
    import_snapshot(
        &*backend,
        snap,
        ImportOptions::default(),
        &mut again,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!((again.imported, again.already_imported), (0, 64));
    assert_eq!(again.conflicts, std::slice::from_ref(&taken));

    // The imported locks belong to their pull requests.
    let closed = backend.unlock_by_pull("group/sub/repo", 7).await.unwrap();
    assert_eq!(closed.released.len(), 1);
    assert_eq!(closed.released[0].resource.project_name, "app");

    // No credential in an export of the store, nor in the store's file.
    let export = serde_json::to_string(&backend.export().await.unwrap()).unwrap();
    assert!(export.contains("https://github.com/acme/infra/pull/42"));
    for s in SECRETS {
        assert!(!export.contains(s), "the export carries {s}");
    }
    backend.close().await;
    drop(backend);
    let raw = std::fs::read(&path).unwrap();
    let contains = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"github.com/acme/infra/pull/42"),
        "the store file should hold the imported records in the clear (else this check proves nothing)"
    );
    for s in SECRETS {
        assert!(!contains(s.as_bytes()), "the store file carries {s}");
    }
}

#[test]
fn the_released_copy_lacks_only_pull_42() {
    let full = read_boltdb(fixture("atlantis.db")).unwrap();
    let released = read_boltdb(fixture("atlantis-released.db")).unwrap();
    assert_eq!(full.locks.len(), released.locks.len() + 1);
    assert!(full.locks.iter().any(|l| l.key == "acme/infra/./default/"));
    assert!(
        !released
            .locks
            .iter()
            .any(|l| l.key == "acme/infra/./default/")
    );
}

#[test]
fn a_missing_or_foreign_file_is_a_clear_error() {
    let err = read_boltdb("/nonexistent/atlantis.db")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read /nonexistent/atlantis.db"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("short.db");
    std::fs::write(&p, b"short").unwrap();
    let err = read_boltdb(&p).unwrap_err().to_string();
    assert!(err.contains("no valid meta page"), "{err}");
    // A bbolt file truncated mid-way is refused, not misread.
    let bytes = std::fs::read(fixture("atlantis.db")).unwrap();
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_boltdb(&cut).unwrap_err().to_string();
    assert!(
        err.contains("truncated") || err.contains("outside"),
        "{err}"
    );
}
