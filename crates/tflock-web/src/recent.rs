//! The recent events the pages show, kept in memory from the backend's event stream.
//!
//! Backends do not store events, so the page remembers the last few per lock and the
//! last few overall, from the moment its router was built. Memory is bounded: at most
//! [`PER_LOCK`] events for each of at most [`MAX_LOCKS`] locks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tflock_core::{LockEvent, Resource, Timestamp};
use tokio::sync::broadcast::{Receiver, error::RecvError};

/// Events kept per lock.
pub const PER_LOCK: usize = 25;
/// Events kept for the main page's activity list.
pub const LATEST: usize = 12;
/// Locks whose events are kept; past it the locks quiet the longest are forgotten.
pub const MAX_LOCKS: usize = 2000;

#[derive(Default)]
struct Log {
    per_lock: HashMap<Resource, VecDeque<LockEvent>>,
    latest: VecDeque<LockEvent>,
    /// Events the stream dropped because this reader fell behind.
    missed: u64,
}

impl Log {
    fn push(&mut self, ev: LockEvent) {
        let list = self.per_lock.entry(ev.resource.clone()).or_default();
        list.push_front(ev.clone());
        list.truncate(PER_LOCK);
        self.latest.push_front(ev);
        self.latest.truncate(LATEST);
        if self.per_lock.len() > MAX_LOCKS {
            // Forget the tenth of the locks whose last event is oldest, in one pass,
            // so a busy server does not scan the map on every event.
            let mut last: Vec<(Timestamp, Resource)> = self
                .per_lock
                .iter()
                .map(|(r, l)| (l.front().map_or(Timestamp::ZERO, |e| e.at), r.clone()))
                .collect();
            last.sort();
            for (_, r) in last.into_iter().take(MAX_LOCKS / 10) {
                self.per_lock.remove(&r);
            }
        }
    }
}

/// The recent events, fed by a task that reads the backend's stream.
pub(crate) struct RecentEvents {
    log: Arc<Mutex<Log>>,
    /// The stream, until the feeding task is started (needs a tokio runtime, which a
    /// router may be built without).
    pending: Mutex<Option<Receiver<LockEvent>>>,
}

impl RecentEvents {
    /// Keeps the events of `rx` from now on. Starts reading at once when called on a
    /// tokio runtime, else on the first [`RecentEvents::ensure_started`].
    pub fn new(rx: Receiver<LockEvent>) -> Self {
        let recent = RecentEvents {
            log: Arc::new(Mutex::new(Log::default())),
            pending: Mutex::new(Some(rx)),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            recent.ensure_started();
        }
        recent
    }

    /// Starts the feeding task if it is not running yet.
    pub fn ensure_started(&self) {
        let rx = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = rx {
            tokio::spawn(feed(rx, Arc::downgrade(&self.log)));
        }
    }

    /// The recent events of `resource`, newest first.
    pub fn of(&self, resource: &Resource) -> Vec<LockEvent> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.per_lock
            .get(resource)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The latest events on every lock, newest first, and how many were missed.
    pub fn latest(&self) -> (Vec<LockEvent>, u64) {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        (log.latest.iter().cloned().collect(), log.missed)
    }
}

/// Reads the stream into the log until the stream or the log goes away.
async fn feed(mut rx: Receiver<LockEvent>, log: Weak<Mutex<Log>>) {
    loop {
        let received = rx.recv().await;
        let Some(log) = log.upgrade() else { return };
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        match received {
            Ok(ev) => log.push(ev),
            Err(RecvError::Lagged(n)) => log.missed += n,
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tflock_core::EventKind;

    fn ev(repo: &str, at: u64) -> LockEvent {
        let resource = Resource::new(repo, ".", "default", "").unwrap();
        LockEvent {
            event: EventKind::LockAcquired,
            key: resource.lock_key(),
            resource,
            owner: "o".into(),
            fencing_token: None,
            entry_id: None,
            at: Timestamp(at),
        }
    }

    #[test]
    fn memory_is_bounded() {
        let mut log = Log::default();
        for i in 0..(PER_LOCK as u64 + 5) {
            log.push(ev("o/r", i));
        }
        let r = Resource::new("o/r", ".", "default", "").unwrap();
        assert_eq!(log.per_lock[&r].len(), PER_LOCK);
        assert_eq!(
            log.per_lock[&r].front().unwrap().at,
            Timestamp(PER_LOCK as u64 + 4)
        );
        assert_eq!(log.latest.len(), LATEST);
        for i in 0..(MAX_LOCKS as u64 + 1) {
            log.push(ev(&format!("o/r{i}"), 1000 + i));
        }
        assert!(log.per_lock.len() <= MAX_LOCKS);
        // The newest lock is kept.
        let newest = Resource::new(format!("o/r{MAX_LOCKS}"), ".", "default", "").unwrap();
        assert!(log.per_lock.contains_key(&newest));
    }
}
