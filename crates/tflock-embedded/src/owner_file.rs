//! `<store>.owner`: who holds the store file, so a second process can say so.
//!
//! redb takes an exclusive lock on the file but cannot say who holds it; this side
//! file records the holder's pid, host and start time, written after the lock is won.

use std::path::{Path, PathBuf};

fn owner_path(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".owner");
    PathBuf::from(p)
}

/// Records this process as the holder of `store`.
pub(crate) fn write(store: &Path) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let text = format!(
        "pid {} on {} since {}\n",
        std::process::id(),
        host.trim(),
        tflock_core::Timestamp::from_system_time(std::time::SystemTime::now())
    );
    if let Err(e) = std::fs::write(owner_path(store), text) {
        tracing::warn!(error = %e, "could not write the store's owner file");
    }
}

/// What the owner file says, for the "already open" error.
pub(crate) fn describe_holder(store: &Path) -> String {
    match std::fs::read_to_string(owner_path(store)) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => "an unknown process".to_string(),
    }
}
