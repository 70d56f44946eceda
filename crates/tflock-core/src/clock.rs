//! The injectable clock.
//!
//! Backends read time and sleep through a [`Clock`], so tests drive TTLs, claim windows
//! and starvation with a [`ManualClock`] instead of sleeping for real. The Redis backend
//! decides expiry on Redis's `TIME`; its clock only paces the client side.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::time::Timestamp;

/// A boxed future, so [`Clock`] stays object-safe.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of time that can also wait.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
    /// A future that completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: Timestamp) -> Sleep;

    /// Whether this is the operating system's clock. A store with a clock of its own
    /// (Redis's `TIME`) uses its own time then; any other clock (a test's manual
    /// clock) is passed to it as the time to use.
    fn is_system(&self) -> bool {
        false
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The operating system's wall clock, sleeping with tokio's timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn is_system(&self) -> bool {
        true
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        let wait = deadline.since(self.now());
        Box::pin(async move {
            // A wall clock can step; re-check after waking so a step backwards cannot
            // end the sleep early by more than one step's worth.
            let mut wait = wait;
            loop {
                tokio::time::sleep(wait).await;
                let now = Timestamp::from_system_time(SystemTime::now());
                if now >= deadline {
                    return;
                }
                wait = deadline.since(now);
            }
        })
    }
}

/// A clock that only moves when told to; sleepers wake when it passes their deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
    changed: watch::Sender<u64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        let (changed, _) = watch::channel(start.0);
        ManualClock {
            now: Arc::new(AtomicU64::new(start.0)),
            changed,
        }
    }

    /// A clock standing at the current wall-clock time, so timestamps look real.
    pub fn starting_now() -> Self {
        ManualClock::new(SystemClock.now())
    }

    /// Moves the clock forward by `d` and wakes every sleeper whose deadline passed.
    pub fn advance(&self, d: Duration) {
        let new = Timestamp(self.now.load(Ordering::SeqCst)).add(d);
        self.now.store(new.0, Ordering::SeqCst);
        self.changed.send_replace(new.0);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        let mut rx = self.changed.subscribe();
        let now = self.now.clone();
        Box::pin(async move {
            loop {
                if now.load(Ordering::SeqCst) >= deadline.0 {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The clock is gone: nobody can advance it any more.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced_past_deadline() {
        let clock = ManualClock::new(Timestamp(1_000));
        let sleep = clock.sleep_until(Timestamp(1_000 + 5_000_000));
        let handle = tokio::spawn(sleep);
        clock.advance(Duration::from_secs(4));
        tokio::task::yield_now().await;
        assert!(!handle.is_finished());
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
    }
}
