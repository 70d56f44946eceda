//! The refused TryLock without a script: a plain TryLock (no wait, no reservation,
//! no request id, no lease id) of a resource this backend recently found held by
//! another owner first reads the lease (`HMGET` of the public view's fields, then
//! `TIME`, one round trip) and answers `held` from it when it still shows a live
//! lease of someone else. Anything else (free, expired and not swept yet, the same
//! owner, no hint) goes to `try_lock.lua` as before.
//!
//! Why: a refused attempt through the script costs Redis about 16 µs, nearly all of
//! it Lua (the call, its arguments, settle, the view, the JSON), where these two
//! commands cost about 2 µs; refused attempts are what polling clients (a CI retry
//! loop, Atlantis plans on a locked project, the retry loop without a queue) send
//! again and again. The hint keeps the uncontended acquire at one round trip: only a
//! resource seen held is read first.
//!
//! Why the answer is the script's: for such a request `try_lock.lua` settles (ends a
//! lease past its expiry) and answers `held` with the public view whenever a lease of
//! another owner is live; it writes nothing. The read shows the lease as it was when
//! `HMGET` ran and `TIME` runs after it, so a lease with `expires` above that time was
//! live when it was read: the answer is true at that instant.

use std::collections::HashMap;
use std::sync::Mutex;

use tflock_core::{BackendError, LockResponse, NotAcquiredReason, Timestamp};

use crate::backend::Inner;
use crate::keys::lock_name;
use crate::reply::{LISTED_FIELDS, RawLock};

/// Most resources remembered; past it the expired ones go, then all of them.
const MAX_HINTS: usize = 4096;

/// Resources this backend found held by another owner, with when that lease ends
/// (µs): until then a plain TryLock of one reads the lease first.
#[derive(Default)]
pub(crate) struct HeldHints {
    until: Mutex<HashMap<String, u64>>,
}

impl HeldHints {
    /// Whether `sk` was found held by someone else whose lease has not ended by `now`.
    pub fn held(&self, sk: &str, now: u64) -> bool {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(sk) {
            Some(&until) if until > now => true,
            Some(_) => {
                map.remove(sk);
                false
            }
            None => false,
        }
    }

    /// Remembers that `sk` is held by someone else until `until`.
    pub fn remember(&self, sk: &str, until: u64, now: u64) {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_HINTS && !map.contains_key(sk) {
            map.retain(|_, u| *u > now);
            if map.len() >= MAX_HINTS {
                map.clear();
            }
        }
        map.insert(sk.to_string(), until);
    }

    /// Forgets `sk` (its lease was not what the hint said).
    pub fn forget(&self, sk: &str) {
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(sk);
    }
}

impl Inner {
    /// The `held` answer for `owner`'s plain TryLock of `sk` from a read of its lease,
    /// or `None` when the read does not show a live lease of another owner (then the
    /// script decides).
    pub(crate) async fn held_by_another(
        &self,
        bucket: usize,
        sk: &str,
        owner: &str,
    ) -> Result<Option<LockResponse>, BackendError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(lock_name(&self.buckets[bucket], sk))
            .arg(&LISTED_FIELDS[..]);
        let (fields, now) = if self.system_clock {
            pipe.cmd("TIME");
            let (fields, (secs, micros)): (Vec<Option<String>>, (u64, u64)) =
                self.conn.read_pipeline(&pipe).await?;
            (fields, secs * 1_000_000 + micros)
        } else {
            let (fields,): (Vec<Option<String>>,) = self.conn.read_pipeline(&pipe).await?;
            (fields, self.clock.now().0)
        };
        let lock = match RawLock::from_fields(sk.to_string(), &mut fields.into_iter())? {
            Some(raw) if raw.expires() > now => raw.into_lock()?,
            _ => {
                self.held.forget(sk);
                return Ok(None);
            }
        };
        if lock.owner.owner == owner {
            self.held.forget(sk);
            return Ok(None);
        }
        self.held.remember(sk, lock.expires_at.0, now);
        Ok(Some(LockResponse::not_acquired(
            Some(lock),
            NotAcquiredReason::Held,
        )))
    }

    /// Notes a script's answer to a plain TryLock: `held` by another owner makes the
    /// next plain TryLock of `sk` read the lease first.
    pub(crate) fn note_answer(&self, sk: &str, r: &LockResponse) {
        if r.reason == Some(NotAcquiredReason::Held)
            && r.queue.is_none()
            && let Some(l) = &r.lock
        {
            let now: Timestamp = self.clock.now();
            self.held.remember(sk, l.expires_at.0, now.0);
        }
    }
}
