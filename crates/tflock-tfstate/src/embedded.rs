//! [`EmbeddedStates`]: the states in one redb file (the server puts it beside the
//! embedded lock store, `<lock store path>.tfstate`).
//!
//! # Tables
//!
//! - `states`: name → `StateRow` JSON: the fence, the lock record, the version
//!   counter, the oldest kept version, the current version and the highest serial
//!   ever stored. A row is never removed, so neither the fence nor a version number
//!   can go back.
//! - `versions`: (name, version) → [`VersionMeta`] JSON, for the kept versions.
//! - `bodies`: (name, version) → the document's bytes (none for a delete marker).
//! - `meta`: the file's format version.
//!
//! Kept versions are always the contiguous range `first..=last` of a row: versions
//! are only appended, and trimming removes the oldest.
//!
//! Every operation is one redb transaction (a write transaction for a change, with
//! redb's default durable commit), run on the blocking pool: the `check` decisions
//! run inside it, so the guard, the checks and the write are atomic. A refusal
//! returns before the commit, which aborts the transaction: nothing changed.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::check;
use crate::{
    Guard, LockRecord, RecordError, StateName, StateStore, StateSummary, StoreError, StoreOptions,
    StoredState, VersionMeta, Write, WriteError,
};

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
const BODIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("bodies");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// The on-disk format this code writes.
const FORMAT_VERSION: &str = "1";

/// What the file keeps per state besides its versions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct StateRow {
    /// The highest token ever recorded (0: none).
    fence: u64,
    lock: Option<LockRecord>,
    /// The last version number given (0: none yet).
    last: u64,
    /// The oldest kept version; nothing is kept while `first > last`.
    first: u64,
    /// The current version, `None` when never written or deleted.
    current: Option<u64>,
    /// The highest serial ever stored (a rollback goes past it).
    max_serial: Option<u64>,
}

impl StateRow {
    fn new() -> Self {
        StateRow {
            first: 1,
            ..Default::default()
        }
    }

    fn kept(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }

    fn is_kept(&self, version: u64) -> bool {
        version >= self.first && version <= self.last
    }
}

fn se(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl From<StoreError> for RecordError {
    fn from(e: StoreError) -> Self {
        RecordError::Store(e.0)
    }
}

/// The states in one redb file. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStates {
    db: Arc<Database>,
    options: StoreOptions,
}

impl std::fmt::Debug for EmbeddedStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStates")
            .field("options", &self.options)
            .finish()
    }
}

impl EmbeddedStates {
    /// Opens (or creates) the file; its directory is created when missing.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        // Create every table (and check the format) at once, so reads never meet a
        // missing table.
        let tx = db.begin_write().map_err(se)?;
        {
            let mut meta = tx.open_table(META).map_err(se)?;
            let version = meta
                .get("format_version")
                .map_err(se)?
                .map(|v| v.value().to_string());
            match version.as_deref() {
                None => {
                    meta.insert("format_version", FORMAT_VERSION).map_err(se)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(StoreError(format!(
                        "{} has state format {other}; this tflock reads format {FORMAT_VERSION}",
                        path.display()
                    )));
                }
            }
            tx.open_table(STATES).map_err(se)?;
            tx.open_table(VERSIONS).map_err(se)?;
            tx.open_table(BODIES).map_err(se)?;
        }
        tx.commit().map_err(se)?;
        Ok(EmbeddedStates {
            db: Arc::new(db),
            options,
        })
    }

    /// Runs `f` on the blocking pool: redb's calls block (and a commit fsyncs).
    async fn run<T, E>(
        &self,
        f: impl FnOnce(&Database, &StoreOptions) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        let options = self.options.clone();
        tokio::task::spawn_blocking(move || f(&db, &options))
            .await
            .map_err(|e| E::from(StoreError(format!("the store's task failed: {e}"))))?
    }

    /// One change: guard and checks inside one write transaction, committed only
    /// when `change` succeeds.
    async fn write<T, E>(
        &self,
        name: &StateName,
        change: impl FnOnce(&mut Tables<'_>, &mut StateRow, &StoreOptions) -> Result<T, E>
        + Send
        + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let name = name.as_str().to_string();
        self.run(move |db, options| {
            let tx = db.begin_write().map_err(se)?;
            let out = {
                let mut t = Tables {
                    name: &name,
                    states: tx.open_table(STATES).map_err(se)?,
                    versions: tx.open_table(VERSIONS).map_err(se)?,
                    bodies: tx.open_table(BODIES).map_err(se)?,
                };
                let stored = t.row()?;
                let mut row = stored.clone().unwrap_or_else(StateRow::new);
                let out = change(&mut t, &mut row, options)?;
                // A change that changed nothing (clearing a lock not held) leaves
                // no row behind.
                let unchanged = match &stored {
                    Some(before) => before == &row,
                    None => row == StateRow::new(),
                };
                if !unchanged {
                    t.save_row(&row)?;
                }
                out
            };
            tx.commit().map_err(se)?;
            Ok(out)
        })
        .await
    }

    /// One read transaction.
    async fn read<T: Send + 'static>(
        &self,
        name: Option<&StateName>,
        f: impl FnOnce(&ReadTables, Option<StateRow>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let name = name.map(|n| n.as_str().to_string());
        self.run(move |db, _| {
            let tx = db.begin_read().map_err(se)?;
            let t = ReadTables {
                states: tx.open_table(STATES).map_err(se)?,
                versions: tx.open_table(VERSIONS).map_err(se)?,
                bodies: tx.open_table(BODIES).map_err(se)?,
            };
            let row = match &name {
                Some(n) => t.row(n)?,
                None => None,
            };
            f(&t, row)
        })
        .await
    }
}

/// The tables of one write transaction, for one state.
struct Tables<'tx> {
    name: &'tx str,
    states: Table<'tx, &'static str, &'static [u8]>,
    versions: Table<'tx, (&'static str, u64), &'static [u8]>,
    bodies: Table<'tx, (&'static str, u64), &'static [u8]>,
}

impl Tables<'_> {
    fn row(&self) -> Result<Option<StateRow>, StoreError> {
        decode_row(
            self.states
                .get(self.name)
                .map_err(se)?
                .map(|v| v.value().to_vec()),
        )
    }

    fn save_row(&mut self, row: &StateRow) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(row).map_err(se)?;
        self.states
            .insert(self.name, bytes.as_slice())
            .map_err(se)?;
        Ok(())
    }

    fn meta(&self, version: u64) -> Result<Option<VersionMeta>, StoreError> {
        decode_meta(
            self.versions
                .get((self.name, version))
                .map_err(se)?
                .map(|v| v.value().to_vec()),
        )
    }

    fn body(&self, version: u64) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .bodies
            .get((self.name, version))
            .map_err(se)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default())
    }

    /// The current version's serial and lineage, for the history check.
    fn current(&self, row: &StateRow) -> Result<Option<VersionMeta>, StoreError> {
        match row.current {
            Some(v) => self.meta(v),
            None => Ok(None),
        }
    }

    /// Appends the next version (numbered here) and trims the oldest past `keep`.
    fn append(
        &mut self,
        row: &mut StateRow,
        mut meta: VersionMeta,
        body: Option<&[u8]>,
        keep: u64,
    ) -> Result<VersionMeta, StoreError> {
        row.last += 1;
        meta.version = row.last;
        let json = serde_json::to_vec(&meta).map_err(se)?;
        self.versions
            .insert((self.name, meta.version), json.as_slice())
            .map_err(se)?;
        if let Some(body) = body {
            self.bodies
                .insert((self.name, meta.version), body)
                .map_err(se)?;
        }
        row.current = (!meta.deleted).then_some(meta.version);
        if !meta.deleted {
            row.max_serial = Some(row.max_serial.map_or(meta.serial, |m| m.max(meta.serial)));
        }
        while row.kept() > keep {
            self.versions.remove((self.name, row.first)).map_err(se)?;
            self.bodies.remove((self.name, row.first)).map_err(se)?;
            row.first += 1;
        }
        Ok(meta)
    }
}

/// The tables of one read transaction.
struct ReadTables {
    states: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    versions: redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    bodies: redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
}

impl ReadTables {
    fn row(&self, name: &str) -> Result<Option<StateRow>, StoreError> {
        decode_row(
            self.states
                .get(name)
                .map_err(se)?
                .map(|v| v.value().to_vec()),
        )
    }

    fn meta(&self, name: &str, version: u64) -> Result<Option<VersionMeta>, StoreError> {
        decode_meta(
            self.versions
                .get((name, version))
                .map_err(se)?
                .map(|v| v.value().to_vec()),
        )
    }

    fn state(&self, name: &str, version: u64) -> Result<Option<StoredState>, StoreError> {
        let Some(meta) = self.meta(name, version)? else {
            return Ok(None);
        };
        let body = self
            .bodies
            .get((name, version))
            .map_err(se)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        Ok(Some(StoredState { meta, body }))
    }

    fn summary(&self, name: &StateName, row: &StateRow) -> Result<StateSummary, StoreError> {
        let current = match row.current {
            Some(v) => self.meta(name.as_str(), v)?,
            None => None,
        };
        Ok(StateSummary {
            name: name.clone(),
            current,
            versions: row.kept(),
            lock: row.lock.clone(),
            fence: row.fence,
        })
    }
}

fn decode_row(bytes: Option<Vec<u8>>) -> Result<Option<StateRow>, StoreError> {
    bytes
        .map(|b| serde_json::from_slice(&b).map_err(|e| StoreError(format!("a state row: {e}"))))
        .transpose()
}

fn decode_meta(bytes: Option<Vec<u8>>) -> Result<Option<VersionMeta>, StoreError> {
    bytes
        .map(|b| serde_json::from_slice(&b).map_err(|e| StoreError(format!("a version: {e}"))))
        .transpose()
}

/// Whether `list` and `summary` show a row: it has a version or a lock record (a row
/// kept only for its fence does not count).
fn shown(row: &StateRow) -> bool {
    row.kept() > 0 || row.lock.is_some()
}

#[async_trait::async_trait]
impl StateStore for EmbeddedStates {
    async fn get(&self, name: &StateName) -> Result<Option<StoredState>, StoreError> {
        let n = name.as_str().to_string();
        self.read(Some(name), move |t, row| {
            match row.and_then(|r| r.current) {
                Some(v) => t.state(&n, v),
                None => Ok(None),
            }
        })
        .await
    }

    async fn get_version(
        &self,
        name: &StateName,
        version: u64,
    ) -> Result<Option<StoredState>, StoreError> {
        let n = name.as_str().to_string();
        self.read(Some(name), move |t, _| t.state(&n, version))
            .await
    }

    async fn versions(&self, name: &StateName) -> Result<Vec<VersionMeta>, StoreError> {
        let n = name.as_str().to_string();
        self.read(Some(name), move |t, row| {
            let Some(row) = row.filter(|r| r.kept() > 0) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for entry in t
                .versions
                .range((n.as_str(), row.first)..=(n.as_str(), row.last))
                .map_err(se)?
                .rev()
            {
                let (_, v) = entry.map_err(se)?;
                out.extend(decode_meta(Some(v.value().to_vec()))?);
            }
            Ok(out)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<StateSummary>, StoreError> {
        self.read(None, |t, _| {
            let mut out = Vec::new();
            for entry in t.states.iter().map_err(se)? {
                let (k, v) = entry.map_err(se)?;
                let Some(row) = decode_row(Some(v.value().to_vec()))? else {
                    continue;
                };
                if !shown(&row) {
                    continue;
                }
                let name = StateName::parse(k.value())
                    .map_err(|e| StoreError(format!("a stored state name: {e}")))?;
                out.push(t.summary(&name, &row)?);
            }
            // redb orders by the bytes of the name, as StateName's Ord does.
            Ok(out)
        })
        .await
    }

    async fn summary(&self, name: &StateName) -> Result<Option<StateSummary>, StoreError> {
        let name2 = name.clone();
        self.read(Some(name), move |t, row| match row.filter(shown) {
            Some(row) => t.summary(&name2, &row).map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn put(&self, name: &StateName, write: Write) -> Result<VersionMeta, WriteError> {
        self.write(name, move |t, row, options| {
            let writer = check::guard(&write.guard, row.lock.as_ref(), row.fence)?;
            check::check_size(write.body.len(), options.max_state_bytes)?;
            let parsed = check::parse_body(&write.body)?;
            let current = t.current(row)?;
            check::history(
                current.as_ref().map(|m| (m.serial, m.lineage.as_str())),
                &parsed,
                write.force,
            )?;
            let meta = VersionMeta {
                version: 0,
                serial: parsed.serial,
                lineage: parsed.lineage,
                md5: parsed.md5,
                size: parsed.size,
                token: writer.token,
                lock_id: writer.lock_id,
                written_at_ms: write.now_ms,
                forced: write.force,
                deleted: false,
            };
            Ok(t.append(row, meta, Some(&write.body), options.keep())?)
        })
        .await
    }

    async fn delete(
        &self,
        name: &StateName,
        guard: Guard,
        now_ms: u64,
    ) -> Result<VersionMeta, WriteError> {
        self.write(name, move |t, row, options| {
            let writer = check::guard(&guard, row.lock.as_ref(), row.fence)?;
            let Some(current) = t.current(row)? else {
                return Err(WriteError::NotFound);
            };
            let meta = VersionMeta {
                version: 0,
                serial: current.serial,
                lineage: current.lineage,
                md5: check::md5_hex(b""),
                size: 0,
                token: writer.token,
                lock_id: writer.lock_id,
                written_at_ms: now_ms,
                forced: false,
                deleted: true,
            };
            Ok(t.append(row, meta, None, options.keep())?)
        })
        .await
    }

    async fn rollback(
        &self,
        name: &StateName,
        version: u64,
        guard: Guard,
        now_ms: u64,
    ) -> Result<VersionMeta, WriteError> {
        self.write(name, move |t, row, options| {
            let writer = check::guard(&guard, row.lock.as_ref(), row.fence)?;
            let source = match row.is_kept(version) {
                true => t.meta(version)?.filter(|m| !m.deleted),
                false => None,
            };
            let Some(source) = source else {
                return Err(WriteError::NotFound);
            };
            let serial = check::next_serial(row.max_serial.unwrap_or(source.serial))?;
            let body = check::rewrite_serial(&t.body(version)?, serial)?;
            check::check_size(body.len(), options.max_state_bytes)?;
            let meta = VersionMeta {
                version: 0,
                serial,
                lineage: source.lineage,
                md5: check::md5_hex(&body),
                size: body.len() as u64,
                token: writer.token,
                lock_id: writer.lock_id,
                written_at_ms: now_ms,
                forced: true,
                deleted: false,
            };
            Ok(t.append(row, meta, Some(&body), options.keep())?)
        })
        .await
    }

    async fn lock_record(&self, name: &StateName) -> Result<Option<LockRecord>, StoreError> {
        self.read(Some(name), |_, row| Ok(row.and_then(|r| r.lock)))
            .await
    }

    async fn fence(&self, name: &StateName) -> Result<u64, StoreError> {
        self.read(Some(name), |_, row| Ok(row.map_or(0, |r| r.fence)))
            .await
    }

    async fn record_lock(&self, name: &StateName, record: LockRecord) -> Result<(), RecordError> {
        self.write(name, move |_, row, _| {
            if record.token < row.fence {
                return Err(RecordError::Stale { fence: row.fence });
            }
            row.fence = record.token;
            row.lock = Some(record);
            Ok(())
        })
        .await
    }

    async fn clear_lock(&self, name: &StateName, token: u64) -> Result<(), StoreError> {
        self.write(name, move |_, row, _| {
            if row.lock.as_ref().is_some_and(|l| l.token == token) {
                row.lock = None;
            }
            Ok(())
        })
        .await
    }
}
