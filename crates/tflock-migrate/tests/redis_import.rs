//! Import from Atlantis's Redis: a real redis-server holding keys written the way
//! Atlantis writes them (`SET pr/{key} {json}`), read with SCAN.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, Clock, ImportOptions, LockFilter, LockSettings, Resource, SystemClock, Timestamp,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_migrate::bolt::BoltFile;
use tflock_migrate::{import_snapshot, read_atlantis_redis, snapshot_from_atlantis_redis};
use tflock_testkit::{RedisOptions, RedisServer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

async fn set(conn: &mut redis::aio::MultiplexedConnection, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_in_atlantis_redis_import_exactly() {
    let server = tokio::task::spawn_blocking(|| {
        RedisServer::start(RedisOptions::default().password("atlantis-redis-pass"))
    })
    .await
    .unwrap();
    let url = format!("redis://:atlantis-redis-pass@{}/0", server.addr());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    // The JSON exactly as Go's encoding/json wrote it into the BoltDB fixture, under
    // Atlantis's Redis keys: new and old formats, subgroup, spaces, tokens.
    let file = BoltFile::open(fixture("atlantis.db")).unwrap();
    let entries = file.bucket(b"runLocks").unwrap().unwrap();
    for e in &entries {
        set(
            &mut conn,
            &format!("pr/{}", String::from_utf8_lossy(&e.key)),
            &e.value,
        )
        .await;
    }
    set(
        &mut conn,
        "global/apply/lock",
        br#"{"LockMetadata":{"UnixTime":1772366400},"CommandName":0}"#,
    )
    .await;
    // Atlantis's pull statuses and anything else are not locks.
    set(
        &mut conn,
        "github.com::acme/infra::42",
        br#"{"Pull":{"Num":42}}"#,
    )
    .await;
    // A key of the lock namespace that is not a string.
    let _: () = redis::cmd("HSET")
        .arg("pr/odd/./default/")
        .arg("f")
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();

    let found = read_atlantis_redis(&url).await.unwrap();
    assert_eq!(found.locks.len(), 65);
    assert_eq!(found.unreadable.len(), 2);
    assert!(
        !found.source.contains("atlantis-redis-pass"),
        "{}",
        found.source
    );

    let now = SystemClock.now();
    let ttl = Duration::from_secs(1800);
    let (snap, mut summary) = snapshot_from_atlantis_redis(&url, ttl, now).await.unwrap();
    assert_eq!(snap.backend, "atlantis-redis");
    assert_eq!((summary.found, summary.converted), (67, 65));
    let mut skipped: Vec<&str> = summary.skipped.iter().map(|s| s.key.as_str()).collect();
    skipped.sort();
    assert_eq!(skipped, ["pr/broken/entry/./default/", "pr/odd/./default/"]);
    assert_eq!(summary.global_locks.len(), 1);
    assert_eq!(summary.global_locks[0].command, "apply");
    assert_eq!(
        summary.global_locks[0].locked_at,
        Some(Timestamp::parse_rfc3339("2026-03-01T12:00:00Z").unwrap())
    );

    // The same conversion as from BoltDB: every resource part from the JSON.
    let get = |r: &Resource| {
        snap.resources
            .iter()
            .find(|rs| &rs.resource == r)
            .and_then(|rs| rs.lock.clone())
            .unwrap_or_else(|| panic!("{r} missing"))
    };
    let sub = get(&Resource::new("group/sub/repo", "envs/staging", "staging", "app").unwrap());
    assert_eq!(sub.owner.owner, "group/sub/repo#7");
    let spaced =
        get(&Resource::new("acme/infra", "modules/network", "prod", "core network").unwrap());
    assert_eq!(spaced.owner.owner, "acme/infra#43");
    let old = get(&Resource::new("group/sub/other", "terraform", "default", "").unwrap());
    assert_eq!(old.owner.pull.as_ref().unwrap().head_branch, "tf-upgrade");
    let infra = get(&Resource::new("acme/infra", ".", "default", "").unwrap());
    assert_eq!(
        infra.owner.pull.as_ref().unwrap().url,
        "https://github.com/acme/infra/pull/42"
    );
    assert_eq!(infra.expires_at, now.add(ttl));

    // Into a real store: nothing of the tokens survives.
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
    import_snapshot(
        &*backend,
        snap,
        ImportOptions::default(),
        &mut summary,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.imported, 65);
    assert!(summary.conflicts.is_empty());
    let page = backend
        .list_locks(LockFilter {
            limit: Some(1000),
            ..LockFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.locks.len(), 65);
    let export = serde_json::to_string(&backend.export().await.unwrap()).unwrap();
    for secret in ["SECRETTOKEN", "x-token:", "glpat-", "atlantis-redis-pass"] {
        assert!(!export.contains(secret), "the export carries {secret}");
    }
    backend.close().await;
    drop(backend);
    let raw = std::fs::read(&path).unwrap();
    assert!(!raw.windows(11).any(|w| w == b"SECRETTOKEN"));

    // Atlantis's Redis was only read.
    let n: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(n, 66 + 3);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error() {
    // A port nobody listens on: leased from the testkit by starting and stopping.
    let server = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
        .await
        .unwrap();
    let url = format!("redis://:secretpw@{}/0", server.addr());
    // Kept (stopped) until the end, so its port stays leased to this test.
    let _stopped = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let err = read_atlantis_redis(&url).await.unwrap_err().to_string();
    assert!(err.contains("Atlantis's Redis at redis://"), "{err}");
    assert!(!err.contains("secretpw"), "{err}");
    assert!(read_atlantis_redis("not a url").await.is_err());
}
