//! Terraform state documents for tflock's `http` state backend (`/tf/{state name}`):
//! each state's version history, and the small *lock record* that ties a state to the
//! tflock lock that may write it, with **fenced writes**.
//!
//! # Layout
//!
//! - this file: the types ([`StateName`], [`LockRecord`], [`VersionMeta`], [`Guard`],
//!   [`Write`], the per-operation errors) and the [`StateStore`] trait, the contract
//!   both stores keep.
//! - `check`: everything decided once, in Rust, for both stores: body validation
//!   (size, UTF-8, JSON object, `serial`, `lineage`), md5, the guard decision, the
//!   serial/lineage comparison and the rollback rewrite of `serial`.
//! - [`embedded`]: [`EmbeddedStates`], one redb file; every operation is one redb
//!   transaction that runs the `check` functions inside it.
//! - [`redis`]: [`RedisStates`], on tflock's Redis backend (standalone, Sentinel,
//!   Cluster); every operation on a state is one Lua script (`lua/*.lua`).
//!
//! # The fencing rule, and why
//!
//! A write lands only while its lock is the newest one recorded for the state. Every
//! tflock grant carries a fencing token that only goes up. The HTTP side records a
//! Terraform LOCK here ([`StateStore::record_lock`]) *before* it answers LOCK with 200;
//! recording raises the state's **fence** to the grant's token, and a token below the
//! fence is refused ([`RecordError::Stale`]). A write proves its lock with a [`Guard`],
//! checked atomically with the write:
//!
//! - [`Guard::Lock`]: the state's lock record has exactly this digest and token, and
//!   the token equals the fence. So a holder whose lease expired and whose lock was
//!   granted to someone newer (who then recorded it) is refused, even if it still
//!   believes it holds the lock: it cannot overwrite the newer holder's state.
//! - [`Guard::Unlocked`]: a write without a lock (Terraform run with `-lock=false`)
//!   is refused once any lock was recorded after the writer looked (`fence_seen`).
//! - [`Guard::Admin`]: no lock check (an operator's rollback or forced push).
//!
//! The fence is never lowered, not by [`StateStore::clear_lock`] nor by a delete.
//!
//! # Versions
//!
//! Each state's versions are numbered 1, 2, 3... and a number is never reused, also not
//! after trimming (only the newest [`StoreOptions::keep_versions`] are kept, oldest
//! removed first) or a delete. A delete appends a *delete marker* version (no bytes),
//! so the history stays for a rollback. A rollback copies a kept version as a new one
//! with `serial` set past the highest serial ever stored for the state, so Terraform
//! accepts it as newer. Validation order, the same in both stores: guard, then size,
//! then the document (UTF-8, JSON, `serial`, `lineage`), then serial and lineage
//! against the current version.
//!
//! # Errors
//!
//! Each operation has its own error type. A `Store` error (`WriteError::Store`,
//! `RecordError::Store`, `StoreError`) means the store itself failed. Every change is
//! one transaction (embedded) or one script (Redis), so it never leaves half a change;
//! but whether the change happened may be *unknown*: a redb commit that failed during
//! its fsync, or a Redis reply lost to a timeout, or a Redis change not confirmed by
//! `min_replicas_ack` replicas (it stays made on the primary). A caller must treat a
//! `Store` error on a write as "maybe written" and read back before relying on either.

// WriteError::Fenced carries the whole lock record (the HTTP side answers a fenced
// write with it); refusals are the cold path, so its size costs nothing that matters.
#![allow(clippy::result_large_err)]

mod check;
pub mod embedded;
pub mod redis;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedStates;
pub use redis::RedisStates;

/// A validated state name: 1..=255 bytes, no control characters, no leading or
/// trailing '/', no empty, "." or ".." segment. Slashes are allowed ("team/app/prod").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct StateName(String);

/// Why a state name was refused; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

impl StateName {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let bad = |m: &str| Err(InvalidName(m.to_string()));
        if s.is_empty() || s.len() > 255 {
            return bad("the state name must be 1 to 255 bytes");
        }
        if s.chars().any(char::is_control) {
            return bad("the state name must not contain control characters");
        }
        if s.starts_with('/') || s.ends_with('/') {
            return bad("the state name must not start or end with '/'");
        }
        for segment in s.split('/') {
            match segment {
                "" => return bad("the state name must not contain an empty segment ('//')"),
                "." | ".." => {
                    return bad("the state name must not contain a '.' or '..' segment");
                }
                _ => {}
            }
        }
        Ok(StateName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<StateName> for String {
    fn from(n: StateName) -> String {
        n.0
    }
}

impl TryFrom<String> for StateName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, InvalidName> {
        StateName::parse(&s)
    }
}

impl std::str::FromStr for StateName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        StateName::parse(s)
    }
}

/// What LOCK recorded for a state: the lock that may write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Hex sha256 digest of the Terraform lock ID (computed by the caller; never the
    /// raw ID, which is the holder's secret).
    pub id_digest: String,
    /// The non-secret id shown to others.
    pub public_id: String,
    /// Fencing token of the tflock grant.
    pub token: u64,
    /// Opaque here: stored and returned.
    pub chain: u32,
    pub owner: String,
    /// Terraform's LockInfo minus its ID: stored and returned as is.
    pub info: serde_json::Value,
    pub locked_at_ms: u64,
}

/// One version of a state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// 1, 2, 3... per state, never reused (also not after trimming or delete).
    pub version: u64,
    pub serial: u64,
    pub lineage: String,
    /// Hex md5 of the stored bytes (of no bytes for a delete marker).
    pub md5: String,
    pub size: u64,
    /// Fencing token of the lock that wrote it (`None`: written unlocked or by an admin).
    pub token: Option<u64>,
    /// That lock's `public_id`.
    pub lock_id: Option<String>,
    pub written_at_ms: u64,
    /// Written by an admin past the serial/lineage check (rollback, forced push).
    pub forced: bool,
    /// A delete marker: the state was deleted at this version (size 0, no bytes;
    /// `serial` and `lineage` are those of the version it deleted).
    pub deleted: bool,
}

/// A version with its document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    pub meta: VersionMeta,
    pub body: Vec<u8>,
}

/// One state at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateSummary {
    pub name: StateName,
    /// `None` when never written or deleted.
    pub current: Option<VersionMeta>,
    /// How many versions are kept (delete markers included).
    pub versions: u64,
    pub lock: Option<LockRecord>,
    pub fence: u64,
}

/// What a writer proves, checked atomically with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The writer holds the lock with this digest and token: refused unless the
    /// state's lock record has exactly this `id_digest` and `token` AND `token` equals
    /// the state's fence (the highest token ever recorded for it).
    Lock { id_digest: String, token: u64 },
    /// The writer saw no live lock and the fence at `fence_seen` before writing:
    /// refused if the fence is now higher (a lock was recorded since).
    Unlocked { fence_seen: u64 },
    /// An admin: no lock check.
    Admin,
}

/// A new version of a state's document.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub body: Vec<u8>,
    pub guard: Guard,
    /// Skip the serial and lineage checks.
    pub force: bool,
    pub now_ms: u64,
}

/// Why a write (put, delete, rollback) was refused. Refused means nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// The guard failed: the writer's lock is not the newest recorded one.
    #[error("the write is fenced: the state's fence is {fence} and its lock record is {}", describe_record(.record))]
    Fenced {
        fence: u64,
        record: Option<LockRecord>,
    },
    /// The body is not UTF-8 JSON with an integer `serial` (>= 0) and a string
    /// `lineage`; the message names the field.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// `sent < stored` (equal is allowed), unless forced.
    #[error("the state's serial went backwards: stored {stored}, sent {sent}")]
    SerialBackwards { stored: u64, sent: u64 },
    /// Both lineages non-empty and different, unless forced. Not checked when there
    /// is no current version (never written, or deleted).
    #[error("the state's lineage changed: stored {stored:?}, sent {sent:?}")]
    LineageChanged { stored: String, sent: String },
    #[error("the state is {size} bytes, more than the {max} allowed")]
    TooLarge { size: u64, max: u64 },
    /// Rollback to a version that is not kept (or is a delete marker), or delete of
    /// a state that has no current version.
    #[error("no such version")]
    NotFound,
    /// The store failed: nothing changed, or it is unknown whether the change
    /// happened (see the crate docs, "Errors").
    #[error("state store: {0}")]
    Store(String),
}

fn describe_record(r: &Option<LockRecord>) -> String {
    match r {
        Some(r) => format!("{} (token {})", r.public_id, r.token),
        None => "empty".into(),
    }
}

/// Why [`StateStore::record_lock`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The token is below the state's fence: a newer lock was recorded already.
    #[error("the lock's token is below the state's fence {fence}")]
    Stale { fence: u64 },
    /// See the crate docs, "Errors".
    #[error("state store: {0}")]
    Store(String),
}

/// The store failed (see the crate docs, "Errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e.0)
    }
}

/// Limits of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Largest accepted document. Default 16 MiB.
    pub max_state_bytes: u64,
    /// Versions kept per state, at least 1. Default 10.
    pub keep_versions: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_state_bytes: 16 * 1024 * 1024,
            keep_versions: 10,
        }
    }
}

impl StoreOptions {
    /// `keep_versions` of 0 would drop the version just written: treated as 1.
    pub(crate) fn keep(&self) -> u64 {
        self.keep_versions.max(1) as u64
    }
}

/// Where Terraform states live. Every operation is atomic (see the crate docs).
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The current version; `None` if never written or deleted.
    async fn get(&self, name: &StateName) -> Result<Option<StoredState>, StoreError>;
    /// A kept version (a delete marker comes with an empty body).
    async fn get_version(
        &self,
        name: &StateName,
        version: u64,
    ) -> Result<Option<StoredState>, StoreError>;
    /// Kept versions, newest first.
    async fn versions(&self, name: &StateName) -> Result<Vec<VersionMeta>, StoreError>;
    /// Every state with any version or lock record, by name.
    async fn list(&self) -> Result<Vec<StateSummary>, StoreError>;
    /// `None` for a state with no version and no lock record.
    async fn summary(&self, name: &StateName) -> Result<Option<StateSummary>, StoreError>;
    /// Guard, then size, then parse and serial/lineage, then append a version and
    /// trim to `keep_versions` (oldest first), all atomically.
    async fn put(&self, name: &StateName, write: Write) -> Result<VersionMeta, WriteError>;
    /// Appends a delete marker version (`deleted: true`); the history stays for
    /// rollback. `NotFound` when there is no current version.
    async fn delete(
        &self,
        name: &StateName,
        guard: Guard,
        now_ms: u64,
    ) -> Result<VersionMeta, WriteError>;
    /// Copies kept version `version` as a new version with its JSON `serial` set to
    /// (highest serial ever stored for the name) + 1, every other byte as it was;
    /// `forced: true`.
    async fn rollback(
        &self,
        name: &StateName,
        version: u64,
        guard: Guard,
        now_ms: u64,
    ) -> Result<VersionMeta, WriteError>;
    async fn lock_record(&self, name: &StateName) -> Result<Option<LockRecord>, StoreError>;
    /// The highest token ever recorded; 0 when no lock was ever recorded.
    async fn fence(&self, name: &StateName) -> Result<u64, StoreError>;
    /// Atomically: `record.token < fence` is `Stale`; else the record is stored and
    /// the fence set to its token (re-recording the same token is idempotent).
    async fn record_lock(&self, name: &StateName, record: LockRecord) -> Result<(), RecordError>;
    /// Removes the record only if its token is `token`; the fence stays.
    async fn clear_lock(&self, name: &StateName, token: u64) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        for ok in [
            "a",
            "team/app/prod",
            "x.y",
            "..a",
            "a/.b",
            "{x}",
            "ünï/cödé",
        ] {
            assert_eq!(StateName::parse(ok).unwrap().as_str(), ok);
        }
        let long = "a".repeat(255);
        assert!(StateName::parse(&long).is_ok());
        for (bad, what) in [
            ("", "1 to 255 bytes"),
            (&"a".repeat(256), "1 to 255 bytes"),
            ("/a", "start or end"),
            ("a/", "start or end"),
            ("a//b", "empty segment"),
            ("a/./b", "'.' or '..'"),
            ("..", "'.' or '..'"),
            ("a/..", "'.' or '..'"),
            ("a\nb", "control"),
            ("a\u{7f}", "control"),
        ] {
            let e = StateName::parse(bad).unwrap_err();
            assert!(e.0.contains(what), "{bad:?}: {e}");
        }
        let n = StateName::parse("team/app").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"team/app\"");
        assert!(serde_json::from_str::<StateName>("\"/x\"").is_err());
        assert_eq!(n.to_string(), "team/app");
    }
}
