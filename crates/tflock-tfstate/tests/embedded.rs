//! The suite on [`EmbeddedStates`], each test on a file of its own, plus what only a
//! file can show: a reopened file keeps everything.

mod suite;

use async_trait::async_trait;
use tflock_tfstate::{EmbeddedStates, Guard, StateStore, StoreOptions};

use suite::{Harness, Unchanged, admin, doc, lock, name, record};

/// Stores in a temporary directory that lives as long as the harness (one test).
struct Embedded {
    dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        Embedded {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait]
impl Harness for Embedded {
    async fn store(&self, options: StoreOptions) -> Box<dyn StateStore> {
        let path = self
            .dir
            .path()
            .join(format!("locks.redb.{}.tfstate", tflock_core::random_hex(4)));
        Box::new(EmbeddedStates::open(&path, options).unwrap())
    }
}

state_store_suite!(Embedded::new());

#[tokio::test]
async fn reopened_file_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/locks.redb.tfstate");
    let options = StoreOptions {
        keep_versions: 3,
        ..StoreOptions::default()
    };
    let n = name("team/app/prod");
    let before = {
        let s = EmbeddedStates::open(&path, options.clone()).unwrap();
        for serial in 1..=4 {
            s.put(&n, admin(doc(serial, "l"))).await.unwrap();
        }
        s.delete(&n, Guard::Admin, 9).await.unwrap();
        s.record_lock(&n, record("d", 12)).await.unwrap();
        s.record_lock(&name("other"), record("e", 3)).await.unwrap();
        (Unchanged::take(&s, &n).await, s.list().await.unwrap())
    };
    let s = EmbeddedStates::open(&path, options).unwrap();
    before.0.check(&s, &n).await;
    assert_eq!(s.list().await.unwrap(), before.1);
    // Counters survive too: the next version is 6, the fence still 12.
    let m = s.rollback(&n, 4, lock("d", 12), 10).await.unwrap();
    assert_eq!((m.version, m.serial, m.token), (6, 5, Some(12)));
    assert_eq!(
        s.record_lock(&n, record("f", 11)).await.unwrap_err(),
        tflock_tfstate::RecordError::Stale { fence: 12 }
    );
}

#[tokio::test]
async fn open_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tfstate");
    let _first = EmbeddedStates::open(&path, StoreOptions::default()).unwrap();
    let e = EmbeddedStates::open(&path, StoreOptions::default()).unwrap_err();
    assert!(e.0.contains("x.tfstate"), "{e}");
}
