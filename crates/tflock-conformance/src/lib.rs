//! The locking contract (`shared/design/locking-contract.md`) as named tests, generic
//! over the backend.
//!
//! A backend crate implements [`Harness`] in its own `tests/` and calls
//! [`conformance_tests!`], which expands to one `#[tokio::test]` per contract case, so
//! a failure names the case that broke.
//!
//! Time: every case runs on a [`ManualClock`]; cases that need time to pass call
//! [`ManualClock::advance`] instead of sleeping. Background work of a backend (expiry
//! sweeping, hand-off) that is triggered by the clock is awaited with a generous
//! real-time bound ([`EVENTUALLY`]), never asserted on speed.

use std::time::Duration;

use async_trait::async_trait;
use tflock_core::{LockSettings, ManualClock, SharedBackend};

pub mod cases;

/// Upper bound for "the backend does this by itself soon" (sweeps, hand-offs).
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// Creates stores for the suite.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A fresh, empty store with these settings, whose backend reads `clock`.
    async fn create(&self, settings: LockSettings, clock: ManualClock) -> Box<dyn Store>;
}

/// One store under test.
#[async_trait]
pub trait Store: Send + Sync {
    /// The backend to call.
    fn backend(&self) -> SharedBackend;
    /// Closes the backend and opens the same data again (same settings and clock):
    /// what a process restart does.
    async fn reopen(&mut self);
}
