//! A whole store's content, for `tflock locks export` / `tflock locks import`
//! (backups, moving between backends, the spec's Migration Guide).
//!
//! A snapshot is lossless: leases keep their lease ids, tokens and expiry instants;
//! queues keep their entries; every resource carries its last fencing token, so an
//! import never lets a token go back.

use serde::{Deserialize, Serialize};

use crate::lease::Lock;
use crate::queue::QueueEntry;
use crate::resource::Resource;
use crate::time::Timestamp;

/// The format version written by this tflock.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Everything in a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    pub version: u32,
    pub exported_at: Timestamp,
    /// `embedded` or `redis`.
    pub backend: String,
    pub resources: Vec<ResourceSnapshot>,
}

/// One resource: its lease (with lease id), its queue and its last token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceSnapshot {
    pub resource: Resource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<QueueEntry>,
    /// The highest fencing token ever granted for the resource.
    pub last_token: u64,
}

/// How to import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportOptions {
    /// Report what would change, change nothing.
    pub dry_run: bool,
    /// Replace a lock held under another lease instead of reporting a conflict.
    pub overwrite: bool,
}

/// What an import did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportReport {
    /// Locks installed.
    pub imported: usize,
    /// Locks already there with the same lease (importing twice changes nothing).
    pub unchanged: usize,
    /// Locks whose expiry had passed: not installed.
    pub expired: usize,
    /// Resources locked under another lease, left alone (without `overwrite`).
    pub conflicts: Vec<Resource>,
    /// Queue entries added.
    pub queued: usize,
    /// Locks given a new, higher token because the store had already granted theirs.
    pub retokened: usize,
    pub dry_run: bool,
}
