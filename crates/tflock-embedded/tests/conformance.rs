//! The contract's conformance suite on the embedded backend.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tflock_conformance::{Harness, Store};
use tflock_core::{Backend, LockSettings, ManualClock, SharedBackend};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};

struct EmbeddedHarness;

struct EmbeddedStore {
    _dir: tempfile::TempDir,
    path: PathBuf,
    settings: LockSettings,
    clock: ManualClock,
    backend: Arc<EmbeddedBackend>,
}

#[async_trait]
impl Harness for EmbeddedHarness {
    async fn create(&self, settings: LockSettings, clock: ManualClock) -> Box<dyn Store> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("locks.redb");
        let backend = EmbeddedBackend::open(
            EmbeddedConfig {
                path: path.clone(),
                settings: settings.clone(),
            },
            Arc::new(clock.clone()),
        )
        .await
        .expect("open store");
        Box::new(EmbeddedStore {
            _dir: dir,
            path,
            settings,
            clock,
            backend,
        })
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> SharedBackend {
        self.backend.clone()
    }

    async fn reopen(&mut self) {
        self.backend.close().await;
        self.backend = EmbeddedBackend::open(
            EmbeddedConfig {
                path: self.path.clone(),
                settings: self.settings.clone(),
            },
            Arc::new(self.clock.clone()),
        )
        .await
        .expect("reopen store");
    }
}

tflock_conformance::conformance_tests!(EmbeddedHarness);
