//! Migration from Atlantis (issue #8): read Atlantis's lock stores, import them into
//! tflock, honour them during the switch-over, and release locks when pull requests
//! close.
//!
//! # Layout
//!
//! - [`bolt`]: a small read-only reader of files written by Go's bbolt.
//! - [`atlantis`]: Atlantis's stored records (`models.ProjectLock`, `command.Lock`)
//!   with Go's field names, and Go's time format.
//! - [`source`]: reading a copy of `atlantis.db` ([`read_boltdb`],
//!   [`snapshot_from_boltdb`]) or Atlantis's Redis ([`read_atlantis_redis`],
//!   [`snapshot_from_atlantis_redis`], SCAN, never KEYS).
//! - [`convert`]: records to a [`tflock_core::Snapshot`] (owner `{repo}#{pull}`,
//!   credentials stripped, expiry `now + ttl`), the [`Summary`], and
//!   [`import_snapshot`], which imports through [`tflock_core::Backend::import`].
//! - [`legacy`]: [`LegacyFallback`], a [`tflock_core::Backend`] that also honours the
//!   locks still held in Atlantis's store during the switch-over (`legacy_fallback`).
//! - [`webhook`]: [`webhook_router`], GitHub and GitLab webhooks that release a pull
//!   request's locks when it closes.
//!
//! Docs for operators: `docs/atlantis.md`.

pub mod atlantis;
pub mod bolt;
pub mod convert;
pub mod legacy;
pub mod source;
pub mod webhook;

pub use convert::{
    AtlantisLocks, GlobalLock, IMPORT_NOTE, Skipped, StoredLock, Summary, convert, import_snapshot,
    lock_from_atlantis,
};
pub use legacy::{LEGACY_NOTE, LegacyFallback, LegacyOptions, LegacySource, MARKER_REPO};
pub use source::AtlantisRedis;
pub use source::{
    MigrateError, read_atlantis_redis, read_boltdb, snapshot_from_atlantis_redis,
    snapshot_from_boltdb,
};
pub use webhook::webhook_router;
