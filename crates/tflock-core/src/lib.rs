//! The tflock lock model and the backend contract.
//!
//! Every backend (embedded `redb` store, Redis) and every surface (HTTP API, CLI, web
//! page) shares the types in this crate, so that the contract in
//! `docs/contract.md` is written down once.
//!
//! # Layout
//!
//! - [`resource`]: what is locked ([`Resource`]), its validation and its keys.
//! - [`owner`]: who holds or waits ([`Owner`] with user, pull request and note).
//! - [`lease`]: one grant ([`Lock`], [`LeaseId`], [`FencingToken`]).
//! - [`priority`]: [`Priority`] levels.
//! - [`queue`]: queue entries and the grant order (priority, anti-starvation boost,
//!   FIFO, entry id); the only place that order is decided.
//! - [`request`]: operation inputs and outputs ([`LockRequest`], [`LockResponse`], ...).
//! - [`event`]: the contract's events ([`LockEvent`]).
//! - [`error`]: one error type per operation plus the stable [`ErrorCode`]s.
//! - [`clock`]: the injectable clock, so TTL and starvation tests never sleep.
//! - [`settings`]: the contract's tunables ([`LockSettings`]).
//! - [`snapshot`]: a whole store's content for export and import.
//! - [`backend`]: the async [`Backend`] trait every store implements.
//! - [`time`]: [`Timestamp`] (microseconds since the Unix epoch, RFC 3339 on the wire).

pub mod backend;
pub mod clock;
pub mod error;
pub mod event;
pub mod lease;
pub mod owner;
pub mod priority;
pub mod queue;
pub mod request;
pub mod resource;
pub mod settings;
pub mod snapshot;
pub mod time;

pub use backend::{Backend, BackendHealth, BackendMetrics, SharedBackend};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::{
    BackendError, CancelError, Error, ErrorCode, ImportError, InvalidRequest, QueryError,
    RefreshError, TransferError, TryLockError, UnlockError,
};
pub use event::{EventKind, LockEvent};
pub use lease::{FencingToken, LeaseId, Lock};
pub use owner::{Owner, PullInfo, UserInfo};
pub use priority::Priority;
pub use queue::{EntryId, EntryKind, QueueEntry, QueueEntryView, QueuePlacement, QueueStatus};
pub use request::{
    LockFilter, LockPage, LockRequest, LockResponse, NotAcquiredReason, PullUnlockResponse,
    TransferAuth, UnlockResponse, WaitSpec,
};
pub use resource::Resource;
pub use settings::LockSettings;
pub use snapshot::{ImportOptions, ImportReport, ResourceSnapshot, Snapshot};
pub use time::Timestamp;

/// Random bytes as lower-case hex; used for lease ids and entry ids.
///
/// Uses the operating system's generator: lease ids are bearer secrets, so a seeded
/// user-space generator would not do.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random generator failed");
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}
