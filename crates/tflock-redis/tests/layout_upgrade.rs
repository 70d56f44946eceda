//! Key layout upgrade (docs/redis-design.md, "Layout versions"): a store filled by
//! the layout-1 scripts (frozen in `tests/fixtures/layout1/`, run here as a server
//! of that build ran them) is upgraded in place by a layout-2 backend, keeping every
//! lock, lease id, queue entry and its place, answer and fencing token; afterwards
//! every key name is printable, the old index names fence off a layout-1 server, and
//! a bucket of layout 1 found later (a backup restored) is upgraded by the TryLock
//! that finds it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tflock_core::{
    Backend, LeaseId, LockFilter, LockRequest, LockSettings, Owner, Resource, SystemClock,
};
use tflock_redis::keys::{BUCKETS, LAYOUT, bucket_of, bucket_prefixes};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig};

const PRELUDE: &str = include_str!("fixtures/layout1/prelude.lua");
const TRY_LOCK: &str = include_str!("fixtures/layout1/try_lock.lua");
const UNLOCK: &str = include_str!("fixtures/layout1/unlock.lua");
const GENERATION: &str = include_str!("fixtures/layout1/generation.lua");

const HOUR_US: u64 = 3_600_000_000;

fn res(repo: &str, path: &str, ws: &str, project: &str) -> Resource {
    Resource {
        repo: repo.into(),
        path: path.into(),
        workspace: ws.into(),
        project_name: project.into(),
    }
}

/// A server of the layout-1 build: its scripts, called with the arguments that
/// build's client sent.
struct Layout1 {
    conn: redis::aio::MultiplexedConnection,
    prefixes: Vec<String>,
}

impl Layout1 {
    async fn new(config: &RedisConfig) -> Layout1 {
        let client = redis::Client::open(common::standalone_server().url()).unwrap();
        Layout1 {
            conn: client.get_multiplexed_async_connection().await.unwrap(),
            prefixes: bucket_prefixes(&config.key_prefix),
        }
    }

    /// One script call: `ARGV[1..6]` as the layout-1 client sent them (Redis's
    /// clock, claim 30 s, starvation 5 min, boost 3, a seed, no publishing).
    async fn eval(
        &mut self,
        body: &str,
        bucket: usize,
        own: &[&str],
    ) -> redis::RedisResult<String> {
        let source = format!("{PRELUDE}\n{body}");
        let seed = tflock_core::random_hex(16);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&source).arg(1).arg(&self.prefixes[bucket]);
        cmd.arg("")
            .arg("30000000")
            .arg("300000000")
            .arg("3")
            .arg(&seed)
            .arg("");
        for a in own {
            cmd.arg(*a);
        }
        cmd.query_async(&mut self.conn).await
    }

    /// try_lock.lua of layout 1: `mode` `n` (no wait) or `r` (reserve an hour).
    async fn try_lock(
        &mut self,
        r: &Resource,
        owner: &str,
        mode: &str,
        request_id: &str,
    ) -> redis::RedisResult<serde_json::Value> {
        let bucket = bucket_of(r);
        let meta = serde_json::to_string(&Owner::named(owner)).unwrap();
        let entry = format!("{bucket:02x}{}", tflock_core::random_hex(15));
        let ttl = HOUR_US.to_string();
        let sk = r.storage_key();
        let argv = [
            sk.as_str(),
            owner,
            "",
            "",
            &meta,
            "1",
            &ttl,
            mode,
            if mode == "r" { &ttl } else { "0" },
            request_id,
            "1000",
            "600000000",
            "1",
            "1",
            "60000000",
            "a",
            &entry,
            "",
            "",
            "10000000",
            "1",
        ];
        let out = self.eval(TRY_LOCK, bucket, &argv).await?;
        Ok(serde_json::from_str(&out).unwrap())
    }

    async fn unlock(&mut self, r: &Resource, lease: &str) {
        let sk = r.storage_key();
        let out = self
            .eval(UNLOCK, bucket_of(r), &[&sk, "lease", lease, ""])
            .await
            .unwrap();
        assert!(out.contains(r#""r":"ok""#), "{out}");
    }

    /// generation.lua on every bucket, as a layout-1 server did at connect.
    async fn mark_generations(&mut self) {
        for b in 0..BUCKETS {
            let fresh = tflock_core::random_hex(16);
            self.eval(
                GENERATION,
                b,
                &["", &fresh, "10000000", "layout1-server", "", "1"],
            )
            .await
            .unwrap();
        }
    }

    async fn keys(&mut self, prefix: &str) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut self.conn)
            .await
            .unwrap();
        keys.sort();
        keys
    }
}

/// What layout 1 granted: lease id and token per resource.
fn grant(reply: &serde_json::Value) -> (String, u64) {
    assert_eq!(reply["r"], "ans", "{reply}");
    assert_eq!(reply["a"]["acq"], true, "{reply}");
    let lock = &reply["a"]["lock"];
    (
        lock["lease"].as_str().unwrap().to_string(),
        lock["token"].as_str().unwrap().parse().unwrap(),
    )
}

fn config() -> RedisConfig {
    RedisConfig {
        key_prefix: common::fresh_prefix(),
        ..common::standalone()
    }
}

async fn connect(config: &RedisConfig, upgrade: bool) -> Arc<RedisBackend> {
    RedisBackend::connect_with(
        config.clone(),
        LockSettings::default(),
        Arc::new(SystemClock),
        BackendOptions::default().upgrade_layout(upgrade),
    )
    .await
    .unwrap()
}

/// The resources of the test: plain, and with every byte class the readable key
/// escapes (space, `!`, `#`, `~`, braces, non-ASCII).
fn resources() -> (Resource, Resource, Resource) {
    (
        res("org/app", ".", "default", ""),
        res("org/we ird!#~", "a/{b}", "é", "p#1"),
        res("org/gone", "x", "default", ""),
    )
}

#[tokio::test]
async fn a_layout1_store_is_upgraded_in_place_keeping_everything() {
    let config = config();
    let mut old = Layout1::new(&config).await;
    old.mark_generations().await;
    let (plain, weird, gone) = resources();

    // Layout 1 at work: two held locks (one with a request id), two reservations
    // behind the second, a resource locked and released (only its token counter
    // is left).
    let (plain_lease, plain_token) = grant(&old.try_lock(&plain, "alice", "n", "").await.unwrap());
    let (weird_lease, weird_token) =
        grant(&old.try_lock(&weird, "bob", "n", "rid-bob").await.unwrap());
    let carol = old
        .try_lock(&weird, "carol", "r", "rid-carol")
        .await
        .unwrap();
    assert_eq!(carol["a"]["q"]["pos"], 1, "{carol}");
    let dave = old.try_lock(&weird, "dave", "r", "").await.unwrap();
    assert_eq!(dave["a"]["q"]["pos"], 2, "{dave}");
    let (gone_lease, gone_token) = grant(&old.try_lock(&gone, "erin", "n", "").await.unwrap());
    old.unlock(&gone, &gone_lease).await;
    let before = old.keys(&config.key_prefix).await;
    assert!(
        before.iter().any(|k| k.contains(&0x1f)),
        "layout 1 names resources with \\x1f"
    );

    // A layout-2 backend connects: every bucket is upgraded before its first call.
    let b = connect(&config, true).await;
    let report = b.layout_report().expect("connecting looked at the layout");
    assert_eq!(report.layout, LAYOUT);
    assert_eq!(report.buckets_upgraded, BUCKETS, "{report:?}");
    assert_eq!(
        (
            report.resources,
            report.entries,
            report.tokens,
            report.conflicts
        ),
        (3, 2, 3, 0),
        "{report:?}"
    );

    // Every lock, with its owner, lease and token.
    let l = b.get_lock(&plain).await.unwrap().expect("plain still held");
    assert_eq!(
        (l.owner.owner.as_str(), l.fencing_token.0),
        ("alice", plain_token)
    );
    let l = b.get_lock(&weird).await.unwrap().expect("weird still held");
    assert_eq!(
        (l.owner.owner.as_str(), l.fencing_token.0),
        ("bob", weird_token)
    );
    assert_eq!(b.get_lock(&gone).await.unwrap(), None);
    let page = b.list_locks(LockFilter::default()).await.unwrap();
    let listed: Vec<_> = page.locks.iter().map(|l| l.resource.clone()).collect();
    assert_eq!(listed, vec![plain.clone(), weird.clone()]);
    // The repository filter finds the escaped repository's keys.
    let page = b
        .list_locks(LockFilter {
            repo: Some(weird.repo.clone()),
            ..LockFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.locks.len(), 1);
    assert_eq!(page.locks[0].resource, weird);

    // The queue, in its order.
    let q = b.get_queue_status(&weird).await.unwrap();
    let owners: Vec<_> = q
        .entries
        .iter()
        .map(|e| e.entry.owner.owner.as_str())
        .collect();
    assert_eq!(owners, ["carol", "dave"]);
    assert_eq!(
        q.entries[0].entry.entry_id.as_str(),
        carol["a"]["q"]["id"].as_str().unwrap()
    );

    // Answers kept: bob's retry by request id is his live grant; a retry of
    // carol's reservation is her place.
    let retry = b
        .try_lock(LockRequest::new(weird.clone(), "bob").with_request_id("rid-bob"))
        .await
        .unwrap();
    assert!(retry.acquired, "{retry:?}");
    assert_eq!(
        retry
            .lock
            .as_ref()
            .unwrap()
            .lease_id
            .as_ref()
            .unwrap()
            .as_str(),
        weird_lease
    );
    let place = b
        .try_lock(
            LockRequest::new(weird.clone(), "carol")
                .with_request_id("rid-carol")
                .with_wait(Duration::from_secs(3600))
                .reserving(),
        )
        .await
        .unwrap();
    assert_eq!(place.queue.as_ref().unwrap().position, 1, "{place:?}");

    // Leases still work: bob's unlock hands the lock to carol, with a higher token.
    let out = b
        .unlock(
            &weird,
            &LeaseId::parse("lease_id", weird_lease.clone()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(out.granted_to.unwrap().entry.owner.owner, "carol");
    let l = b.get_lock(&weird).await.unwrap().unwrap();
    assert_eq!(l.owner.owner, "carol");
    assert!(l.fencing_token.0 > weird_token);
    b.unlock(&plain, &LeaseId::parse("lease_id", plain_lease).unwrap())
        .await
        .unwrap();
    // The released resource's counter came along: its next token is higher.
    let again = b
        .try_lock(LockRequest::new(gone.clone(), "frank"))
        .await
        .unwrap();
    assert!(again.lock.unwrap().fencing_token.0 > gone_token);

    // Every key name is printable now, and says what it is.
    let after = old.keys(&config.key_prefix).await;
    for k in &after {
        assert!(
            k.iter().all(|c| (0x21..0x7f).contains(c)),
            "not printable: {:?}",
            String::from_utf8_lossy(k)
        );
    }
    let names: Vec<String> = after
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    let tag = &bucket_prefixes(&config.key_prefix)[bucket_of(&weird)];
    assert!(
        names.contains(&format!(
            "{tag}lock:org/we#20ird#21#23~7e!a/{{b}}!~c3~a9!p#231"
        )),
        "{names:#?}"
    );

    // A layout-1 server still running cannot grant: its indexes are fences now.
    let fresh = res("org/new", ".", "default", "");
    let refused = old.try_lock(&fresh, "mallory", "n", "").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("WRONGTYPE")),
        "{refused:?}"
    );
    assert_eq!(b.get_lock(&fresh).await.unwrap(), None);

    // Upgrading again changes nothing.
    let report = b.upgrade_layout(false).await.unwrap();
    assert_eq!(report.buckets_upgraded, 0, "{report:?}");
    b.close().await;
}

/// A counter that only the lock index leads to (a store written before layout 1
/// indexed its counters in `tidx`) is indexed by the upgrade: once the lock is
/// released, export still finds the resource's last token.
#[tokio::test]
async fn a_counter_outside_the_token_index_is_indexed_by_the_upgrade() {
    let config = config();
    let mut old = Layout1::new(&config).await;
    old.mark_generations().await;
    let r = res("org/older", ".", "default", "");
    let (lease, token) = grant(&old.try_lock(&r, "alice", "n", "").await.unwrap());
    let bucket = bucket_of(&r);
    let removed: i64 = redis::cmd("ZREM")
        .arg(format!("{}tidx", old.prefixes[bucket]))
        .arg(r.storage_key())
        .query_async(&mut old.conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the layout-1 grant indexed its counter");

    let b = connect(&config, true).await;
    b.unlock(&r, &LeaseId::parse("lease_id", lease).unwrap())
        .await
        .unwrap();
    let snapshot = b.export().await.unwrap();
    let found: Vec<_> = snapshot
        .resources
        .iter()
        .filter(|s| s.resource == r)
        .map(|s| s.last_token)
        .collect();
    assert_eq!(found, vec![token], "{snapshot:?}");
    b.close().await;
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_an_unupgraded_store_grants_nothing() {
    let config = config();
    let mut old = Layout1::new(&config).await;
    old.mark_generations().await;
    let (plain, weird, _) = resources();
    grant(&old.try_lock(&plain, "alice", "n", "").await.unwrap());
    grant(&old.try_lock(&weird, "bob", "n", "").await.unwrap());
    let before = old.keys(&config.key_prefix).await;

    let b = connect(&config, false).await;
    assert_eq!(b.layout_report(), None);
    let dry = b.upgrade_layout(true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        (dry.buckets_upgraded, dry.resources),
        (BUCKETS, 2),
        "{dry:?}"
    );
    // Connecting (its generation check) and the dry run wrote only the markers'
    // `seen` fields: the same keys.
    assert_eq!(old.keys(&config.key_prefix).await, before);

    // Not upgraded, the store grants nothing where layout 2 would not find the
    // holder, and the error says what to do.
    let err = b
        .try_lock(LockRequest::new(plain.clone(), "mallory"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("upgrade-layout"), "{err}");

    let done = b.upgrade_layout(false).await.unwrap();
    assert_eq!((done.buckets_upgraded, done.resources), (BUCKETS, 2));
    let held = b
        .try_lock(LockRequest::new(plain.clone(), "mallory"))
        .await
        .unwrap();
    assert!(!held.acquired);
    assert_eq!(held.lock.unwrap().owner.owner, "alice");
    b.close().await;
}

#[tokio::test]
async fn a_bucket_restored_from_a_layout1_backup_is_upgraded_by_the_next_try_lock() {
    let config = config();
    let b = connect(&config, true).await;
    let (plain, _, _) = resources();
    let bucket = bucket_of(&plain);
    // A layout-1 backup of this bucket comes back: its marker without the layout
    // field, its lock under the layout-1 names.
    let mut old = Layout1::new(&config).await;
    let gen_key = format!("{}gen", bucket_prefixes(&config.key_prefix)[bucket]);
    let _: () = redis::cmd("HDEL")
        .arg(&gen_key)
        .arg("layout")
        .query_async(&mut old.conn)
        .await
        .unwrap();
    for name in ["idx", "due", "tidx", "eidx", "edl"] {
        let _: () = redis::cmd("DEL")
            .arg(format!(
                "{}{name}",
                bucket_prefixes(&config.key_prefix)[bucket]
            ))
            .query_async(&mut old.conn)
            .await
            .unwrap();
    }
    let (_, token) = grant(&old.try_lock(&plain, "alice", "n", "").await.unwrap());

    // The next TryLock finds the older layout, upgrades the bucket and answers from
    // what the backup holds.
    let held = b
        .try_lock(LockRequest::new(plain.clone(), "mallory"))
        .await
        .unwrap();
    assert!(!held.acquired, "{held:?}");
    let l = held.lock.unwrap();
    assert_eq!(
        (l.owner.owner.as_str(), l.fencing_token.0),
        ("alice", token)
    );
    let mut by_bucket: BTreeMap<usize, usize> = BTreeMap::new();
    for l in b.list_locks(LockFilter::default()).await.unwrap().locks {
        *by_bucket.entry(bucket_of(&l.resource)).or_default() += 1;
    }
    assert_eq!(by_bucket, BTreeMap::from([(bucket, 1)]));
    b.close().await;
}

#[tokio::test]
async fn a_new_store_is_born_at_layout2_and_refuses_a_layout1_server() {
    let config = config();
    let b = connect(&config, true).await;
    let report = b.layout_report().unwrap();
    assert_eq!(report.buckets_upgraded, 0, "nothing to upgrade: {report:?}");
    let mut old = Layout1::new(&config).await;
    let (plain, _, _) = resources();
    let refused = old.try_lock(&plain, "mallory", "n", "").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("WRONGTYPE")),
        "{refused:?}"
    );
    let granted = b
        .try_lock(LockRequest::new(plain.clone(), "alice"))
        .await
        .unwrap();
    assert!(granted.acquired);
    b.close().await;
}
