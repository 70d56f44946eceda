//! The file: `redb` tables and the committer thread that writes them (group commit).
//!
//! The lock state lives in memory ([`crate::state::State`]); the file is its durable
//! copy. Operations change memory, mark what they changed as dirty and wait until a
//! commit covering their change is on disk. One committer thread owns the
//! [`redb::Database`]; each round it takes *every* dirty record at once and writes them
//! in one fsynced transaction, so grants that arrive together share one fsync.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::state::{Batch, ResourceRecord, StoredAnswer};
use crate::{OpenError, Shared};

/// Lock and queue of one resource, JSON, keyed by the resource's storage key. A row is
/// removed when the resource is neither locked nor queued for.
pub(crate) const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// Last fencing token per resource storage key. Never removed: a token is never reused.
pub(crate) const TOKENS: TableDefinition<&str, u64> = TableDefinition::new("tokens");
/// Answers kept for `request_id` retries, JSON, keyed by owner + request id.
pub(crate) const ANSWERS: TableDefinition<&str, &[u8]> = TableDefinition::new("answers");
/// Format version and the like.
pub(crate) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The on-disk format this code writes.
pub(crate) const FORMAT_VERSION: &str = "1";

/// What the file held at open.
pub(crate) struct Loaded {
    pub resources: BTreeMap<String, ResourceRecord>,
    pub tokens: BTreeMap<String, u64>,
    pub answers: BTreeMap<String, StoredAnswer>,
}

/// How far the file has caught up with memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct Durable {
    /// Every change with a sequence number up to this one is on disk.
    pub seq: u64,
    /// Set when a commit failed: memory is then ahead of the file, so the backend
    /// refuses all further work (fail closed).
    pub failed: Option<String>,
}

/// Opens (or creates) the file and reads everything in it.
pub(crate) fn open_database(path: &Path) -> Result<(Database, Loaded), OpenError> {
    let db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::AlreadyOpen {
            path: path.to_path_buf(),
            holder: crate::owner_file::describe_holder(path),
        },
        other => OpenError::Storage {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    let storage = |e: &dyn std::fmt::Display| OpenError::Storage {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    // Create the tables (and check the format) in one transaction.
    {
        let tx = db.begin_write().map_err(|e| storage(&e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| storage(&e))?;
            let version = meta
                .get("format_version")
                .map_err(|e| storage(&e))?
                .map(|v| v.value().to_string());
            match version.as_deref() {
                None => {
                    meta.insert("format_version", FORMAT_VERSION)
                        .map_err(|e| storage(&e))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(OpenError::Format {
                        path: path.to_path_buf(),
                        message: format!(
                            "file format version {other}, this tflock reads {FORMAT_VERSION}"
                        ),
                    });
                }
            }
            tx.open_table(RESOURCES).map_err(|e| storage(&e))?;
            tx.open_table(TOKENS).map_err(|e| storage(&e))?;
            tx.open_table(ANSWERS).map_err(|e| storage(&e))?;
        }
        tx.commit().map_err(|e| storage(&e))?;
    }
    let mut loaded = Loaded {
        resources: BTreeMap::new(),
        tokens: BTreeMap::new(),
        answers: BTreeMap::new(),
    };
    let rx = db.begin_read().map_err(|e| storage(&e))?;
    let corrupt = |key: &str, e: serde_json::Error| OpenError::Format {
        path: path.to_path_buf(),
        message: format!("record {key:?} does not decode: {e}"),
    };
    for row in rx
        .open_table(RESOURCES)
        .map_err(|e| storage(&e))?
        .iter()
        .map_err(|e| storage(&e))?
    {
        let (k, v) = row.map_err(|e| storage(&e))?;
        let rec: ResourceRecord =
            serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
        loaded.resources.insert(k.value().to_string(), rec);
    }
    for row in rx
        .open_table(TOKENS)
        .map_err(|e| storage(&e))?
        .iter()
        .map_err(|e| storage(&e))?
    {
        let (k, v) = row.map_err(|e| storage(&e))?;
        loaded.tokens.insert(k.value().to_string(), v.value());
    }
    for row in rx
        .open_table(ANSWERS)
        .map_err(|e| storage(&e))?
        .iter()
        .map_err(|e| storage(&e))?
    {
        let (k, v) = row.map_err(|e| storage(&e))?;
        let ans: StoredAnswer =
            serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?;
        loaded.answers.insert(k.value().to_string(), ans);
    }
    drop(rx);
    Ok((db, loaded))
}

/// Messages to the committer thread.
pub(crate) enum Wake {
    /// Something is dirty.
    Work,
    /// Flush what is dirty, then close the file and stop.
    Close,
}

/// Runs the committer until told to close. Owns the database; dropping it at the end
/// releases the file lock so the same process can open the file again.
pub(crate) fn run_committer(
    db: Database,
    shared: Arc<Shared>,
    wake: mpsc::Receiver<Wake>,
    durable: watch::Sender<Durable>,
    path: std::path::PathBuf,
) {
    let mut closing = false;
    // The highest token recorded beside the file (see `high_water`).
    let mut recorded = 0;
    loop {
        if !closing {
            match wake.recv() {
                Ok(Wake::Work) => {}
                Ok(Wake::Close) | Err(_) => closing = true,
            }
            // Drain whatever else arrived: one round serves all of it.
            while let Ok(m) = wake.try_recv() {
                if matches!(m, Wake::Close) {
                    closing = true;
                }
            }
        }
        let batch = shared.take_batch();
        if let Some(batch) = batch {
            let seq = batch.seq;
            let events = batch.events.clone();
            if durable.borrow().failed.is_none() {
                #[cfg(test)]
                shared.pass_commit_gate();
                match write_batch(&db, &batch) {
                    Ok(()) => {
                        if let Some(top) = batch.tokens.iter().map(|(_, t)| *t).max()
                            && top > recorded
                        {
                            crate::high_water::write(&path, top);
                            recorded = top;
                        }
                        durable.send_modify(|d| d.seq = seq);
                        shared.publish(events);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "commit to the lock store failed; refusing further work");
                        durable.send_modify(|d| d.failed = Some(e));
                    }
                }
            }
        }
        if closing {
            break;
        }
    }
    drop(db);
    durable.send_modify(|d| {
        if d.failed.is_none() {
            d.failed = Some("the store is closed".to_string());
        }
    });
}

fn write_batch(db: &Database, batch: &Batch) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut resources = tx.open_table(RESOURCES).map_err(|e| e.to_string())?;
        for (key, rec) in &batch.resources {
            match rec {
                Some(bytes) => {
                    resources
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    resources.remove(key.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
        let mut tokens = tx.open_table(TOKENS).map_err(|e| e.to_string())?;
        for (key, token) in &batch.tokens {
            tokens
                .insert(key.as_str(), *token)
                .map_err(|e| e.to_string())?;
        }
        let mut answers = tx.open_table(ANSWERS).map_err(|e| e.to_string())?;
        for (key, ans) in &batch.answers {
            match ans {
                Some(bytes) => {
                    answers
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    answers.remove(key.as_str()).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())
}
