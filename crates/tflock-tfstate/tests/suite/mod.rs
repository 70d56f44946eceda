//! The one suite every [`StateStore`] must pass, on real stores. A test file gives a
//! [`Harness`] (how to make an empty store with given options) and expands
//! [`state_store_suite!`] into one `#[tokio::test]` per case.
//!
//! Every refusal is followed by a check that the state is exactly as before
//! ([`Unchanged`]): a refused write must change nothing.

#![allow(dead_code)]

use async_trait::async_trait;
use serde_json::json;
use tflock_tfstate::{
    Guard, LockRecord, RecordError, StateName, StateStore, StoreOptions, StoredState, VersionMeta,
    Write, WriteError,
};

/// Makes empty stores.
#[async_trait]
pub trait Harness: Send + Sync {
    async fn store(&self, options: StoreOptions) -> Box<dyn StateStore>;
}

/// One `#[tokio::test]` per case, each with the harness `$harness` (an expression,
/// evaluated per test).
#[macro_export]
macro_rules! state_store_suite {
    ($harness:expr) => {
        $crate::state_store_suite!(@cases $harness;
            round_trip,
            lock_guard_records_writer,
            versions_numbered_and_trimmed,
            serial_backwards_refused_equal_accepted,
            lineage_change_refused_unless_forced,
            lock_guard_refusals,
            unlocked_guard_refused_after_record,
            record_lock_stale_and_idempotent,
            clear_lock_needs_matching_token,
            delete_marker_keeps_history,
            rollback_rewrites_only_serial,
            too_large_refused,
            invalid_documents_refused,
            guard_is_checked_first,
            list_and_summary,
            concurrent_writes_get_distinct_versions,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $harness;
                $crate::suite::$case(&harness).await;
            }
        )*
    };
}

pub fn name(s: &str) -> StateName {
    StateName::parse(s).unwrap()
}

/// A pretty-printed Terraform-like state (as Terraform writes it).
pub fn doc(serial: u64, lineage: &str) -> Vec<u8> {
    doc_with(serial, lineage, "none")
}

pub fn doc_with(serial: u64, lineage: &str, output: &str) -> Vec<u8> {
    let v = json!({
        "version": 4,
        "terraform_version": "1.9.0",
        "serial": serial,
        "lineage": lineage,
        "outputs": { "o": { "value": output, "type": "string" } },
        "resources": [],
        "check_results": null
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap();
    s.push('\n');
    s.into_bytes()
}

pub fn write(body: Vec<u8>, guard: Guard) -> Write {
    Write {
        body,
        guard,
        force: false,
        now_ms: 1_000,
    }
}

pub fn admin(body: Vec<u8>) -> Write {
    write(body, Guard::Admin)
}

pub fn record(digest: &str, token: u64) -> LockRecord {
    LockRecord {
        id_digest: digest.into(),
        public_id: format!("pub-{digest}-{token}"),
        token,
        chain: 7,
        owner: "alice".into(),
        info: json!({"Operation": "OperationTypeApply", "Who": "alice@host", "Path": ""}),
        locked_at_ms: 42,
    }
}

pub fn lock(digest: &str, token: u64) -> Guard {
    Guard::Lock {
        id_digest: digest.into(),
        token,
    }
}

/// Everything observable about one state.
#[derive(Debug, PartialEq)]
pub struct Unchanged {
    current: Option<StoredState>,
    versions: Vec<VersionMeta>,
    bodies: Vec<Option<StoredState>>,
    lock: Option<LockRecord>,
    fence: u64,
}

impl Unchanged {
    pub async fn take(store: &dyn StateStore, n: &StateName) -> Self {
        let versions = store.versions(n).await.unwrap();
        let mut bodies = Vec::new();
        for v in &versions {
            bodies.push(store.get_version(n, v.version).await.unwrap());
        }
        Unchanged {
            current: store.get(n).await.unwrap(),
            versions,
            bodies,
            lock: store.lock_record(n).await.unwrap(),
            fence: store.fence(n).await.unwrap(),
        }
    }

    /// Panics if the state changed since `self` was taken.
    pub async fn check(&self, store: &dyn StateStore, n: &StateName) {
        let now = Unchanged::take(store, n).await;
        assert_eq!(&now, self, "a refused operation changed the state");
    }
}

fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn round_trip(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("team/app/prod");
    assert!(s.get(&n).await.unwrap().is_none());
    assert!(s.versions(&n).await.unwrap().is_empty());
    assert_eq!(s.fence(&n).await.unwrap(), 0);
    assert!(s.summary(&n).await.unwrap().is_none());

    let body = doc(3, "lin-a");
    let meta = s
        .put(
            &n,
            Write {
                now_ms: 1234,
                ..admin(body.clone())
            },
        )
        .await
        .unwrap();
    assert_eq!(
        meta,
        VersionMeta {
            version: 1,
            serial: 3,
            lineage: "lin-a".into(),
            md5: md5_hex(&body),
            size: body.len() as u64,
            token: None,
            lock_id: None,
            written_at_ms: 1234,
            forced: false,
            deleted: false,
        }
    );
    let got = s.get(&n).await.unwrap().unwrap();
    assert_eq!(got.body, body);
    assert_eq!(got.meta, meta);
    assert_eq!(s.get_version(&n, 1).await.unwrap().unwrap(), got);
    assert!(s.get_version(&n, 2).await.unwrap().is_none());
    assert_eq!(s.versions(&n).await.unwrap(), vec![meta]);
    // Other names are untouched.
    assert!(s.get(&name("team/app")).await.unwrap().is_none());
}

pub async fn lock_guard_records_writer(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("locked");
    s.record_lock(&n, record("d1", 5)).await.unwrap();
    assert_eq!(s.lock_record(&n).await.unwrap(), Some(record("d1", 5)));
    assert_eq!(s.fence(&n).await.unwrap(), 5);
    let meta = s.put(&n, write(doc(1, "l"), lock("d1", 5))).await.unwrap();
    assert_eq!(meta.token, Some(5));
    assert_eq!(meta.lock_id.as_deref(), Some("pub-d1-5"));
    let unlocked = s
        .put(&n, write(doc(2, "l"), Guard::Unlocked { fence_seen: 5 }))
        .await
        .unwrap();
    assert_eq!((unlocked.token, unlocked.lock_id), (None, None));
}

pub async fn versions_numbered_and_trimmed(h: &dyn Harness) {
    let s = h
        .store(StoreOptions {
            keep_versions: 3,
            ..StoreOptions::default()
        })
        .await;
    let n = name("trim");
    for serial in 1..=5 {
        let m = s.put(&n, admin(doc(serial, "l"))).await.unwrap();
        assert_eq!(m.version, serial);
    }
    let numbers = |v: Vec<VersionMeta>| v.into_iter().map(|m| m.version).collect::<Vec<_>>();
    assert_eq!(numbers(s.versions(&n).await.unwrap()), vec![5, 4, 3]);
    assert!(s.get_version(&n, 2).await.unwrap().is_none());
    assert_eq!(
        s.get_version(&n, 3).await.unwrap().unwrap().body,
        doc(3, "l")
    );
    assert_eq!(s.summary(&n).await.unwrap().unwrap().versions, 3);

    let marker = s.delete(&n, Guard::Admin, 2_000).await.unwrap();
    assert_eq!(marker.version, 6);
    assert_eq!(numbers(s.versions(&n).await.unwrap()), vec![6, 5, 4]);
    // After a delete and trimming, numbers still go on.
    let m = s.put(&n, admin(doc(1, "new"))).await.unwrap();
    assert_eq!(m.version, 7);
    assert_eq!(numbers(s.versions(&n).await.unwrap()), vec![7, 6, 5]);
}

pub async fn serial_backwards_refused_equal_accepted(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("serial");
    s.put(&n, admin(doc(5, "l"))).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, admin(doc(4, "l"))).await.unwrap_err(),
        WriteError::SerialBackwards { stored: 5, sent: 4 }
    );
    before.check(&*s, &n).await;

    let equal = s.put(&n, admin(doc_with(5, "l", "other"))).await.unwrap();
    assert_eq!((equal.version, equal.serial), (2, 5));
    assert_eq!(
        s.get(&n).await.unwrap().unwrap().body,
        doc_with(5, "l", "other")
    );

    // Forced, a lower serial is accepted (an admin's forced push).
    let forced = s
        .put(
            &n,
            Write {
                force: true,
                ..admin(doc(1, "l"))
            },
        )
        .await
        .unwrap();
    assert!(forced.forced);
    assert_eq!(forced.serial, 1);
}

pub async fn lineage_change_refused_unless_forced(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("lineage");
    s.put(&n, admin(doc(1, "lin-a"))).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, admin(doc(2, "lin-b"))).await.unwrap_err(),
        WriteError::LineageChanged {
            stored: "lin-a".into(),
            sent: "lin-b".into()
        }
    );
    before.check(&*s, &n).await;

    // An empty lineage on either side is no change.
    s.put(&n, admin(doc(2, ""))).await.unwrap();
    let m = s
        .put(
            &n,
            Write {
                force: true,
                ..admin(doc(3, "lin-b"))
            },
        )
        .await
        .unwrap();
    assert!(m.forced);
    assert_eq!(m.lineage, "lin-b");
    assert_eq!(s.get(&n).await.unwrap().unwrap().meta.lineage, "lin-b");
}

pub async fn lock_guard_refusals(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("guarded");

    // No record at all: a lock guard cannot pass.
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, write(doc(1, "l"), lock("d1", 1)))
            .await
            .unwrap_err(),
        WriteError::Fenced {
            fence: 0,
            record: None
        }
    );
    before.check(&*s, &n).await;

    s.record_lock(&n, record("d1", 3)).await.unwrap();
    s.put(&n, write(doc(1, "l"), lock("d1", 3))).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    let fenced = WriteError::Fenced {
        fence: 3,
        record: Some(record("d1", 3)),
    };
    // Wrong digest.
    assert_eq!(
        s.put(&n, write(doc(2, "l"), lock("d2", 3)))
            .await
            .unwrap_err(),
        fenced
    );
    before.check(&*s, &n).await;
    // Wrong token.
    assert_eq!(
        s.put(&n, write(doc(2, "l"), lock("d1", 2)))
            .await
            .unwrap_err(),
        fenced
    );
    before.check(&*s, &n).await;

    // A newer grant recorded: the older holder is fenced off.
    s.record_lock(&n, record("d2", 4)).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, write(doc(2, "l"), lock("d1", 3)))
            .await
            .unwrap_err(),
        WriteError::Fenced {
            fence: 4,
            record: Some(record("d2", 4)),
        }
    );
    assert_eq!(
        s.delete(&n, lock("d1", 3), 5).await.unwrap_err(),
        WriteError::Fenced {
            fence: 4,
            record: Some(record("d2", 4)),
        }
    );
    assert!(matches!(
        s.rollback(&n, 1, lock("d1", 3), 5).await.unwrap_err(),
        WriteError::Fenced { fence: 4, .. }
    ));
    before.check(&*s, &n).await;

    // Token below the fence even with a matching record: a record left at token 4
    // while the fence is 6 cannot happen through record_lock, but the rule is checked
    // on the fence too. Clearing then re-recording the same lock at 4 is stale.
    s.clear_lock(&n, 4).await.unwrap();
    s.record_lock(&n, record("d3", 6)).await.unwrap();
    s.clear_lock(&n, 6).await.unwrap();
    assert_eq!(
        s.record_lock(&n, record("d2", 4)).await.unwrap_err(),
        RecordError::Stale { fence: 6 }
    );
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, write(doc(2, "l"), lock("d2", 4)))
            .await
            .unwrap_err(),
        WriteError::Fenced {
            fence: 6,
            record: None
        }
    );
    before.check(&*s, &n).await;

    s.record_lock(&n, record("d2", 7)).await.unwrap();
    let m = s.put(&n, write(doc(2, "l"), lock("d2", 7))).await.unwrap();
    assert_eq!(m.token, Some(7));
}

pub async fn unlocked_guard_refused_after_record(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("unlocked");
    s.put(&n, write(doc(1, "l"), Guard::Unlocked { fence_seen: 0 }))
        .await
        .unwrap();
    s.record_lock(&n, record("d", 2)).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, write(doc(2, "l"), Guard::Unlocked { fence_seen: 0 }))
            .await
            .unwrap_err(),
        WriteError::Fenced {
            fence: 2,
            record: Some(record("d", 2)),
        }
    );
    before.check(&*s, &n).await;

    // The fence stays after the lock is cleared.
    s.clear_lock(&n, 2).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, write(doc(2, "l"), Guard::Unlocked { fence_seen: 1 }))
            .await
            .unwrap_err(),
        WriteError::Fenced {
            fence: 2,
            record: None
        }
    );
    assert_eq!(
        s.delete(&n, Guard::Unlocked { fence_seen: 0 }, 9)
            .await
            .unwrap_err(),
        WriteError::Fenced {
            fence: 2,
            record: None
        }
    );
    before.check(&*s, &n).await;
    s.put(&n, write(doc(2, "l"), Guard::Unlocked { fence_seen: 2 }))
        .await
        .unwrap();
}

pub async fn record_lock_stale_and_idempotent(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("records");
    s.record_lock(&n, record("d", 5)).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.record_lock(&n, record("e", 4)).await.unwrap_err(),
        RecordError::Stale { fence: 5 }
    );
    before.check(&*s, &n).await;

    // The same token again: stored again (idempotent), fence unchanged.
    s.record_lock(&n, record("d", 5)).await.unwrap();
    before.check(&*s, &n).await;

    // A large token survives the trip exactly (beyond a double's 2^53).
    let big = (1u64 << 60) + 1;
    s.record_lock(&n, record("f", big)).await.unwrap();
    assert_eq!(s.fence(&n).await.unwrap(), big);
    assert_eq!(s.lock_record(&n).await.unwrap(), Some(record("f", big)));
    assert_eq!(
        s.record_lock(&n, record("g", big - 1)).await.unwrap_err(),
        RecordError::Stale { fence: big }
    );
    let m = s.put(&n, write(doc(1, "l"), lock("f", big))).await.unwrap();
    assert_eq!(m.token, Some(big));
}

pub async fn clear_lock_needs_matching_token(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("clear");
    s.clear_lock(&n, 1).await.unwrap();
    assert!(s.lock_record(&n).await.unwrap().is_none());
    s.record_lock(&n, record("d", 5)).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    s.clear_lock(&n, 4).await.unwrap();
    s.clear_lock(&n, 6).await.unwrap();
    before.check(&*s, &n).await;
    s.clear_lock(&n, 5).await.unwrap();
    assert!(s.lock_record(&n).await.unwrap().is_none());
    assert_eq!(s.fence(&n).await.unwrap(), 5);
}

pub async fn delete_marker_keeps_history(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("deleted");
    // Nothing to delete yet.
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.delete(&n, Guard::Admin, 1).await.unwrap_err(),
        WriteError::NotFound
    );
    before.check(&*s, &n).await;

    s.put(&n, admin(doc(1, "l"))).await.unwrap();
    s.put(&n, admin(doc(2, "l"))).await.unwrap();
    let marker = s.delete(&n, Guard::Admin, 3_000).await.unwrap();
    assert_eq!(
        marker,
        VersionMeta {
            version: 3,
            serial: 2,
            lineage: "l".into(),
            md5: md5_hex(b""),
            size: 0,
            token: None,
            lock_id: None,
            written_at_ms: 3_000,
            forced: false,
            deleted: true,
        }
    );
    assert!(s.get(&n).await.unwrap().is_none());
    let versions = s.versions(&n).await.unwrap();
    assert_eq!(
        versions.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert_eq!(versions[0], marker);
    assert_eq!(
        s.get_version(&n, 3).await.unwrap().unwrap(),
        StoredState {
            meta: marker,
            body: Vec::new()
        }
    );
    assert_eq!(
        s.get_version(&n, 2).await.unwrap().unwrap().body,
        doc(2, "l")
    );
    let summary = s.summary(&n).await.unwrap().unwrap();
    assert_eq!((summary.current, summary.versions), (None, 3));

    // Deleting again: nothing current.
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.delete(&n, Guard::Admin, 1).await.unwrap_err(),
        WriteError::NotFound
    );
    before.check(&*s, &n).await;

    // A new state after a delete: no serial or lineage to compare with.
    let m = s.put(&n, admin(doc(0, "other"))).await.unwrap();
    assert_eq!((m.version, m.serial), (4, 0));
    assert_eq!(s.get(&n).await.unwrap().unwrap().body, doc(0, "other"));
}

pub async fn rollback_rewrites_only_serial(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("env/rollback");
    let old = doc_with(5, "lin", "first");
    s.put(&n, admin(old.clone())).await.unwrap();
    s.put(&n, admin(doc_with(9, "lin", "second")))
        .await
        .unwrap();
    // Forced lower: the highest serial ever stored (9) still counts.
    s.put(
        &n,
        Write {
            force: true,
            ..admin(doc_with(2, "lin", "third"))
        },
    )
    .await
    .unwrap();

    s.record_lock(&n, record("d", 8)).await.unwrap();
    let m = s.rollback(&n, 1, lock("d", 8), 7_000).await.unwrap();
    let expected = String::from_utf8(old.clone())
        .unwrap()
        .replace("\"serial\": 5,", "\"serial\": 10,")
        .into_bytes();
    assert_ne!(expected, old);
    assert_eq!(
        m,
        VersionMeta {
            version: 4,
            serial: 10,
            lineage: "lin".into(),
            md5: md5_hex(&expected),
            size: expected.len() as u64,
            token: Some(8),
            lock_id: Some("pub-d-8".into()),
            written_at_ms: 7_000,
            forced: true,
            deleted: false,
        }
    );
    let got = s.get(&n).await.unwrap().unwrap();
    assert_eq!(got.body, expected);
    // Every field but serial as it was.
    let mut a: serde_json::Value = serde_json::from_slice(&old).unwrap();
    let mut b: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    a["serial"] = json!(0);
    b["serial"] = json!(0);
    assert_eq!(a, b);

    // Terraform sees a newer state: an older serial is now backwards.
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.put(&n, write(doc(9, "lin"), lock("d", 8)))
            .await
            .unwrap_err(),
        WriteError::SerialBackwards {
            stored: 10,
            sent: 9
        }
    );
    // Not kept, a delete marker, or never written: NotFound.
    assert_eq!(
        s.rollback(&n, 99, Guard::Admin, 1).await.unwrap_err(),
        WriteError::NotFound
    );
    assert_eq!(
        s.rollback(&n, 0, Guard::Admin, 1).await.unwrap_err(),
        WriteError::NotFound
    );
    before.check(&*s, &n).await;
    let marker = s.delete(&n, Guard::Admin, 1).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    assert_eq!(
        s.rollback(&n, marker.version, Guard::Admin, 1)
            .await
            .unwrap_err(),
        WriteError::NotFound
    );
    assert_eq!(
        s.rollback(&name("never"), 1, Guard::Admin, 1)
            .await
            .unwrap_err(),
        WriteError::NotFound
    );
    before.check(&*s, &n).await;

    // Rolling back a delete: the state is back, past every serial.
    let back = s.rollback(&n, 2, Guard::Admin, 1).await.unwrap();
    assert_eq!((back.version, back.serial), (6, 11));
    let body = s.get(&n).await.unwrap().unwrap().body;
    assert_eq!(
        body,
        String::from_utf8(doc_with(9, "lin", "second"))
            .unwrap()
            .replace("\"serial\": 9,", "\"serial\": 11,")
            .into_bytes()
    );
}

pub async fn too_large_refused(h: &dyn Harness) {
    let s = h
        .store(StoreOptions {
            max_state_bytes: 300,
            ..StoreOptions::default()
        })
        .await;
    let n = name("big");
    s.put(&n, admin(doc(1, "l"))).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    let big = doc_with(2, "l", &"x".repeat(400));
    let size = big.len() as u64;
    assert_eq!(
        s.put(&n, admin(big)).await.unwrap_err(),
        WriteError::TooLarge { size, max: 300 }
    );
    // Size comes before parsing: a large non-document is TooLarge too.
    assert_eq!(
        s.put(&n, admin(vec![b'x'; 301])).await.unwrap_err(),
        WriteError::TooLarge {
            size: 301,
            max: 300
        }
    );
    before.check(&*s, &n).await;
    let exact = {
        let mut d = doc(2, "l");
        d.resize(300, b' ');
        d
    };
    s.put(&n, admin(exact)).await.unwrap();
}

pub async fn invalid_documents_refused(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    let n = name("invalid");
    s.put(&n, admin(doc(1, "l"))).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    let cases: &[(&[u8], &str)] = &[
        (b"{\"serial\": 2, \"lineage\": \"l\"", "JSON"),
        (b"not json", "JSON"),
        (b"[]", "object"),
        (b"{\"lineage\": \"l\", \"version\": 4}", "serial"),
        (b"{\"serial\": \"2\", \"lineage\": \"l\"}", "serial"),
        (b"{\"serial\": -2, \"lineage\": \"l\"}", "serial"),
        (b"{\"serial\": 2.5, \"lineage\": \"l\"}", "serial"),
        (b"{\"serial\": 2}", "lineage"),
        (b"{\"serial\": 2, \"lineage\": null}", "lineage"),
        (b"{\"serial\": 2, \"lineage\": \"l\xff\"}", "UTF-8"),
    ];
    for (body, field) in cases {
        match s.put(&n, admin(body.to_vec())).await.unwrap_err() {
            WriteError::InvalidState(m) => assert!(
                m.contains(field),
                "{:?}: {m:?} does not name {field}",
                String::from_utf8_lossy(body)
            ),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
    before.check(&*s, &n).await;
    // "version" may be anything, other fields too.
    s.put(
        &n,
        admin(br#"{"version": "x", "serial": 2, "lineage": "l", "extra": [1]}"#.to_vec()),
    )
    .await
    .unwrap();
}

pub async fn guard_is_checked_first(h: &dyn Harness) {
    let s = h
        .store(StoreOptions {
            max_state_bytes: 300,
            ..StoreOptions::default()
        })
        .await;
    let n = name("order");
    s.put(&n, admin(doc(5, "l"))).await.unwrap();
    s.record_lock(&n, record("d", 1)).await.unwrap();
    let before = Unchanged::take(&*s, &n).await;
    let fenced = WriteError::Fenced {
        fence: 1,
        record: Some(record("d", 1)),
    };
    for body in [
        vec![b'x'; 301],
        b"not json".to_vec(),
        doc(1, "l"),
        doc(6, "z"),
    ] {
        assert_eq!(
            s.put(&n, write(body, lock("x", 1))).await.unwrap_err(),
            fenced
        );
    }
    assert_eq!(
        s.rollback(&n, 99, lock("x", 1), 1).await.unwrap_err(),
        fenced
    );
    before.check(&*s, &n).await;
}

pub async fn list_and_summary(h: &dyn Harness) {
    let s = h.store(StoreOptions::default()).await;
    assert!(s.list().await.unwrap().is_empty());
    for n in ["team/app/prod", "a", "team/app/dev"] {
        s.put(&name(n), admin(doc(1, n))).await.unwrap();
    }
    s.record_lock(&name("team/app/dev"), record("d", 3))
        .await
        .unwrap();
    // A lock record without versions counts; a fence alone does not.
    s.record_lock(&name("locked/only"), record("e", 1))
        .await
        .unwrap();
    s.record_lock(&name("cleared"), record("f", 2))
        .await
        .unwrap();
    s.clear_lock(&name("cleared"), 2).await.unwrap();
    assert!(s.summary(&name("cleared")).await.unwrap().is_none());
    assert_eq!(s.fence(&name("cleared")).await.unwrap(), 2);
    s.delete(&name("a"), Guard::Admin, 5).await.unwrap();

    let list = s.list().await.unwrap();
    let names: Vec<&str> = list.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["a", "locked/only", "team/app/dev", "team/app/prod"]);
    for summary in &list {
        assert_eq!(
            Some(summary),
            s.summary(&summary.name).await.unwrap().as_ref()
        );
    }
    let dev = &list[2];
    assert_eq!(dev.current.as_ref().unwrap().lineage, "team/app/dev");
    assert_eq!((dev.versions, dev.fence), (1, 3));
    assert_eq!(dev.lock, Some(record("d", 3)));
    let a = &list[0];
    assert_eq!((a.current.as_ref(), a.versions, a.fence), (None, 2, 0));
    let only = &list[1];
    assert_eq!((only.current.as_ref(), only.versions), (None, 0));
    assert_eq!((only.lock.as_ref(), only.fence), (Some(&record("e", 1)), 1));
    assert_eq!(
        serde_json::to_value(&list[3]).unwrap()["name"],
        json!("team/app/prod")
    );
}

pub async fn concurrent_writes_get_distinct_versions(h: &dyn Harness) {
    let s = h
        .store(StoreOptions {
            keep_versions: 100,
            ..StoreOptions::default()
        })
        .await;
    let n = name("busy");
    s.record_lock(&n, record("d", 1)).await.unwrap();
    let put = |i: u64| {
        let (s, n) = (&s, &n);
        async move {
            // Forced: a put after a rollback would otherwise be backwards.
            let w = Write {
                force: true,
                ..write(doc_with(1, "l", &i.to_string()), lock("d", 1))
            };
            s.put(n, w).await.unwrap().version
        }
    };
    // Rollbacks race with the puts: each must land past every serial it saw.
    let rollback = || async { s.rollback(&n, 1, Guard::Admin, 1).await };
    let first = put(0).await;
    assert_eq!(first, 1);
    let (a, b, c, d, e, f) = tokio::join!(put(1), put(2), put(3), put(4), rollback(), rollback());
    let (e, f) = (e.unwrap(), f.unwrap());
    let mut all = vec![a, b, c, d, e.version, f.version];
    all.sort();
    assert_eq!(all, vec![2, 3, 4, 5, 6, 7]);
    assert_eq!(
        [e.serial.min(f.serial), e.serial.max(f.serial)],
        [2, 3],
        "each rollback past the other's serial"
    );
    assert_eq!(s.versions(&n).await.unwrap().len(), 7);
}
