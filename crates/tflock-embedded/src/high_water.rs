//! `<store>.tokens`: the highest fencing token the store file has committed, kept
//! beside the file, so that the file replaced by an older copy (a backup restored,
//! a disk snapshot rolled back) is noticed at the next open: the older file's
//! highest token is below the one recorded here.
//!
//! Tokens only go up and every grant writes one, so the highest token is a counter
//! of the file's grants that an older copy cannot have caught up with. The side file
//! is written after each commit that raised it, without fsync: after a crash it may
//! be behind the file (no false alarm), never ahead of it.

use std::path::{Path, PathBuf};

fn side_path(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".tokens");
    PathBuf::from(p)
}

/// The highest token recorded for `store`, if the side file exists and reads.
pub(crate) fn read(store: &Path) -> Option<u64> {
    std::fs::read_to_string(side_path(store))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Records `token` as the highest `store` committed.
pub(crate) fn write(store: &Path, token: u64) {
    if let Err(e) = std::fs::write(side_path(store), format!("{token}\n")) {
        tracing::warn!(error = %e, "could not record the store's highest fencing token");
    }
}
