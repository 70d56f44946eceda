//! `tflock locks export` and `tflock locks import`: the spec's Migration Guide
//! (`atlantis locks export --format=json > locks_backup.json`, then `atlantis locks
//! import --format=json locks_backup.json`).
//!
//! The backends' own `export` / `import` do the work, so a round trip is lossless:
//! leases keep their lease ids, fencing tokens and expiry instants, queues their
//! entries, and every resource its last token. Import goes resource by resource in
//! chunks (each chunk one `import` call), so the progress bar shows real progress and
//! each HTTP request stays small; importing the same file twice changes nothing the
//! second time, and a token is never lowered.

use std::io::Read;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use tflock_core::snapshot::SNAPSHOT_VERSION;
use tflock_core::{ImportOptions, ImportReport, SharedBackend, Snapshot};

use crate::exit::{CliResult, Exit, Failure};
use crate::output::{Out, when};

/// Most resources one import call carries.
const CHUNK_RESOURCES: usize = 100;
/// Most bytes of JSON one import call carries (the server caps request bodies).
const CHUNK_BYTES: usize = 48 * 1024;
/// From this many resources on, a progress bar is shown (on a terminal).
const PROGRESS_FROM: usize = 200;

pub async fn export(backend: &SharedBackend, _out: Out) -> CliResult<Exit> {
    let snapshot = backend.export().await?;
    let text = serde_json::to_string_pretty(&snapshot)
        .map_err(|e| Failure::error(format!("cannot encode the snapshot: {e}")))?;
    println!("{text}");
    let locks = snapshot
        .resources
        .iter()
        .filter(|r| r.lock.is_some())
        .count();
    let entries: usize = snapshot.resources.iter().map(|r| r.queue.len()).sum();
    eprintln!(
        "exported {} resource(s): {locks} lock(s), {entries} queue entr{} from the {} backend",
        snapshot.resources.len(),
        if entries == 1 { "y" } else { "ies" },
        snapshot.backend
    );
    Ok(Exit::Success)
}

fn read_snapshot(file: &Path) -> CliResult<Snapshot> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::error(format!("cannot read stdin: {e}")))?;
    } else {
        text = std::fs::read_to_string(file)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
    }
    let snapshot: Snapshot = serde_json::from_str(&text).map_err(|e| {
        Failure::usage(format!(
            "{}:{}:{}: not a tflock export: {e}",
            file.display(),
            e.line(),
            e.column()
        ))
    })?;
    if snapshot.version != SNAPSHOT_VERSION {
        return Err(Failure::usage(format!(
            "{}: snapshot format version {} is not one this tflock reads (it reads {SNAPSHOT_VERSION})",
            file.display(),
            snapshot.version
        )));
    }
    Ok(snapshot)
}

/// The snapshot's resources cut into import calls.
fn chunks(snapshot: &Snapshot) -> Vec<Snapshot> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for r in &snapshot.resources {
        let size = serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0);
        if !current.is_empty() && (current.len() >= CHUNK_RESOURCES || bytes + size > CHUNK_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(r.clone());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.into_iter()
        .map(|resources| Snapshot {
            version: snapshot.version,
            exported_at: snapshot.exported_at,
            backend: snapshot.backend.clone(),
            resources,
        })
        .collect()
}

fn add(total: &mut ImportReport, r: ImportReport) {
    total.imported += r.imported;
    total.unchanged += r.unchanged;
    total.expired += r.expired;
    total.conflicts.extend(r.conflicts);
    total.queued += r.queued;
    total.retokened += r.retokened;
}

pub async fn import(
    backend: &SharedBackend,
    file: &Path,
    dry_run: bool,
    overwrite: bool,
    out: Out,
) -> CliResult<Exit> {
    let snapshot = read_snapshot(file)?;
    let options = ImportOptions { dry_run, overwrite };
    let total_resources = snapshot.resources.len();
    let bar = if total_resources >= PROGRESS_FROM {
        let bar = ProgressBar::new(total_resources as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} resources ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(if dry_run { "checking" } else { "importing" });
        Some(bar)
    } else {
        None
    };
    let mut total = ImportReport {
        dry_run,
        ..ImportReport::default()
    };
    for chunk in chunks(&snapshot) {
        let n = chunk.resources.len() as u64;
        match backend.import(chunk, options).await {
            Ok(r) => add(&mut total, r),
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                let done = total.imported + total.unchanged + total.expired + total.conflicts.len();
                return Err(Failure::from(e).context(format!(
                    "import stopped after {done} of {total_resources} resource(s) (what was imported stays; importing the file again is safe)"
                )));
            }
        }
        if let Some(b) = &bar {
            b.inc(n);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    out.emit(&total, || {
        let verb = if dry_run { "would import" } else { "imported" };
        let mut s = format!(
            "{verb} {} lock(s) and {} queue entr{} from {} ({} resource(s), {} backend, exported {})\n",
            total.imported,
            total.queued,
            if total.queued == 1 { "y" } else { "ies" },
            file.display(),
            total_resources,
            snapshot.backend,
            when(snapshot.exported_at),
        );
        s.push_str(&format!(
            "  unchanged (already there): {}\n  expired (not installed): {}\n  given a higher fencing token: {}\n  conflicts: {}\n",
            total.unchanged,
            total.expired,
            total.retokened,
            total.conflicts.len()
        ));
        for c in &total.conflicts {
            s.push_str(&format!("    {} is locked under another lease\n", c.lock_key()));
        }
        s
    })?;
    if !total.conflicts.is_empty() && !overwrite {
        eprintln!(
            "tflock: {} resource(s) are locked under another lease and were left alone; rerun with --overwrite to replace them",
            total.conflicts.len()
        );
        return Ok(Exit::Error);
    }
    Ok(Exit::Success)
}

/// Where `locks import --from-boltdb` / `--from-atlantis-redis` reads Atlantis's locks.
pub enum AtlantisSource {
    /// A copy of Atlantis's `atlantis.db`.
    BoltDb(std::path::PathBuf),
    /// Atlantis's Redis URL.
    Redis(String),
}

/// `tflock locks import --from-boltdb PATH | --from-atlantis-redis URL [--ttl D]`:
/// Atlantis's locks converted by `tflock-migrate` (owner `{repo}#{pull}`, credentials
/// stripped, expiry now + `ttl`) and imported through the store's own import, with a
/// progress bar and the migration summary (see docs/atlantis.md).
pub async fn import_from_atlantis(
    backend: &SharedBackend,
    source: AtlantisSource,
    ttl: std::time::Duration,
    dry_run: bool,
    overwrite: bool,
    out: Out,
) -> CliResult<Exit> {
    let now = tflock_core::Timestamp::from_system_time(std::time::SystemTime::now());
    let read = match source {
        AtlantisSource::BoltDb(path) => tokio::task::spawn_blocking(move || {
            tflock_migrate::snapshot_from_boltdb(path, ttl, now)
        })
        .await
        .map_err(|e| Failure::error(format!("the BoltDB reader failed: {e}")))?,
        AtlantisSource::Redis(url) => {
            tflock_migrate::snapshot_from_atlantis_redis(&url, ttl, now).await
        }
    };
    let (snapshot, mut summary) = read.map_err(|e| Failure::usage(e.to_string()))?;
    let total_resources = snapshot.resources.len();
    let bar = ProgressBar::new(total_resources as u64);
    if total_resources < PROGRESS_FROM {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} resources ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(if dry_run { "checking" } else { "importing" });
    let options = ImportOptions { dry_run, overwrite };
    let imported = tflock_migrate::import_snapshot(
        backend.as_ref(),
        snapshot,
        options,
        &mut summary,
        |done, _| bar.set_position(done as u64),
    )
    .await;
    if let Err(e) = imported {
        bar.abandon();
        return Err(Failure::from(e).context(format!(
            "import from {} stopped (what was imported stays; running it again is safe)",
            summary.source
        )));
    }
    bar.finish_and_clear();
    out.emit(&summary, || summary.to_string())?;
    if !summary.conflicts.is_empty() && !overwrite {
        eprintln!(
            "tflock: {} resource(s) are locked in tflock by another owner and were left alone; rerun with --overwrite to replace them",
            summary.conflicts.len()
        );
        return Ok(Exit::Error);
    }
    Ok(Exit::Success)
}
