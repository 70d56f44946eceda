//! From Atlantis's lock records to tflock's [`Snapshot`], and the migration [`Summary`].
//!
//! A record becomes a lease of `{repo}#{pull}` (the owner string Atlantis automation
//! uses, so `UnlockByPull` finds it) with the user and pull request as metadata. The
//! four resource parts come from the JSON, never from the key: a GitLab repository
//! such as `group/sub/repo` holds slashes, so a key cannot be split back. Nothing that
//! can carry a credential is kept except the pull request URL, and that goes through
//! [`strip_credentials`]; `BaseRepo.CloneURL` (which holds the VCS token) is dropped.
//!
//! The snapshot's leases get fresh lease ids, the token a first grant at `now` takes
//! (the clock in µs, [`FencingToken::next_after`]) and `last_token: 0`: the store's
//! import raises the token above any the store granted before for the resource, so a
//! fencing token never goes back, also on a store that lost its counters.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tflock_core::owner::{MAX_NOTE_BYTES, MAX_OWNER_BYTES, strip_credentials};
use tflock_core::snapshot::SNAPSHOT_VERSION;
use tflock_core::{
    Backend, FencingToken, ImportError, ImportOptions, ImportReport, LeaseId, Lock, Owner,
    Priority, PullInfo, Resource, ResourceSnapshot, Snapshot, Timestamp, UserInfo,
};

use crate::atlantis::{ProjectLock, parse_go_time};

/// The note carried by a lock imported from Atlantis.
pub const IMPORT_NOTE: &str = "imported from atlantis";

/// One lock record as found in an Atlantis store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLock {
    /// The key it is stored under (display only: never parsed).
    pub key: String,
    pub lock: ProjectLock,
}

/// A record that was not converted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// An Atlantis global command lock (`atlantis apply` disabled for everyone). tflock
/// has no equivalent: it is reported, not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalLock {
    pub key: String,
    /// The command it locks (`apply`).
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_at: Option<Timestamp>,
}

/// Everything a reader found in an Atlantis store, before conversion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AtlantisLocks {
    /// Where it was read from, without credentials (`boltdb:/path`, `redis://host`).
    pub source: String,
    pub locks: Vec<StoredLock>,
    /// Records that could not be read (not JSON, not a string, ...).
    pub unreadable: Vec<Skipped>,
    pub global_locks: Vec<GlobalLock>,
}

/// What a migration found and did: the reading and conversion, then (after
/// [`import_snapshot`]) what the store's import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Where the locks were read from, without credentials.
    pub source: String,
    /// Lock records found (converted or not).
    pub found: usize,
    /// Locks in the snapshot.
    pub converted: usize,
    /// Records not converted, with the reason.
    pub skipped: Vec<Skipped>,
    /// Atlantis global locks seen (not imported: tflock has none).
    pub global_locks: Vec<GlobalLock>,
    /// Locks installed by the import (or, dry, that would be).
    pub imported: usize,
    /// Locks the store already held for the same owner since the same instant: an
    /// earlier run of this migration.
    pub already_imported: usize,
    /// Locks whose expiry had passed by the time of the import.
    pub expired: usize,
    /// Locks given a higher fencing token than the snapshot's (the store had passed it).
    pub retokened: usize,
    /// Resources held in tflock by someone else: left alone (see `overwrite`).
    pub conflicts: Vec<Resource>,
    pub dry_run: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would import"
        } else {
            "imported"
        };
        writeln!(f, "source: {}", self.source)?;
        writeln!(
            f,
            "found {} lock(s), converted {}, {verb} {}, already imported {}, expired {}, conflicts {}, skipped {}",
            self.found,
            self.converted,
            self.imported,
            self.already_imported,
            self.expired,
            self.conflicts.len(),
            self.skipped.len()
        )?;
        for r in &self.conflicts {
            writeln!(f, "  conflict: {r} is held in tflock by another owner")?;
        }
        for s in &self.skipped {
            writeln!(f, "  skipped: {}: {}", s.key, s.reason)?;
        }
        for g in &self.global_locks {
            let at = g
                .locked_at
                .map(|t| format!(" since {t}"))
                .unwrap_or_default();
            writeln!(
                f,
                "  global lock: Atlantis has `{}` locked for everyone{at} (key {}); tflock does not import it",
                g.command, g.key
            )?;
        }
        Ok(())
    }
}

/// The lock an Atlantis record stands for: owner `{repo}#{pull}`, user and pull
/// request as metadata (credentials stripped), acquired at the record's time (now
/// when it has none), expiring at `now + ttl`, with a fresh lease id and
/// the token a first grant at `now` takes. `Err` names what is wrong with the record.
pub fn lock_from_atlantis(
    record: &ProjectLock,
    ttl: Duration,
    now: Timestamp,
    note: &str,
) -> Result<Lock, String> {
    let resource = Resource::new(
        record.project.repo_full_name.as_str(),
        record.project.path.as_str(),
        record.workspace.as_str(),
        record.project.project_name.as_str(),
    )
    .map_err(|e| e.to_string())?;
    // Metadata is trimmed to tflock's limits rather than refused: skipping a record
    // would drop a lock somebody holds.
    let pull = &record.pull;
    let mut teams: Vec<String> = record
        .user
        .teams
        .iter()
        .map(|t| fit(t, MAX_OWNER_BYTES))
        .collect();
    teams.truncate(MAX_TEAMS);
    let username = fit(&record.user.username, MAX_OWNER_BYTES);
    let owner = Owner {
        owner: format!("{}#{}", resource.repo, pull.num),
        user: (!username.is_empty() || !teams.is_empty()).then_some(UserInfo { username, teams }),
        pull: Some(PullInfo {
            num: pull.num,
            url: fit(&strip_credentials(&pull.url), MAX_NOTE_BYTES),
            author: fit(&pull.author, MAX_NOTE_BYTES),
            head_commit: fit(&pull.head_commit, MAX_NOTE_BYTES),
            head_branch: fit(&pull.head_branch, MAX_NOTE_BYTES),
            base_branch: fit(&pull.base_branch, MAX_NOTE_BYTES),
        }),
        note: fit(note, MAX_NOTE_BYTES),
    }
    .validate("")
    .map_err(|e| e.to_string())?;
    let acquired_at = parse_go_time(&record.time)
        .filter(|t| *t <= now)
        .unwrap_or(now);
    Ok(Lock {
        key: resource.lock_key(),
        resource,
        owner,
        priority: Priority::Normal,
        fencing_token: FencingToken::next_after(0, now),
        acquired_at,
        expires_at: now.add(ttl),
        ttl,
        claim_pending: false,
        lease_id: Some(LeaseId::generate()),
    })
}

/// Most teams kept per user (tflock's limit).
const MAX_TEAMS: usize = 256;

/// `s` without control characters, cut to at most `max` bytes on a character boundary.
fn fit(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// Converts what a reader found into a snapshot and its summary. Records that do not
/// make a valid lock are skipped with the reason; when two records name the same
/// resource (an old three-part key beside a new one), the later one is kept.
pub fn convert(
    found: AtlantisLocks,
    backend: &str,
    ttl: Duration,
    now: Timestamp,
) -> (Snapshot, Summary) {
    let mut summary = Summary {
        source: found.source,
        found: found.locks.len() + found.unreadable.len(),
        skipped: found.unreadable,
        global_locks: found.global_locks,
        ..Summary::default()
    };
    let mut by_resource: BTreeMap<String, (String, Lock)> = BTreeMap::new();
    for stored in found.locks {
        let lock = match lock_from_atlantis(&stored.lock, ttl, now, IMPORT_NOTE) {
            Ok(l) => l,
            Err(reason) => {
                summary.skipped.push(Skipped {
                    key: stored.key,
                    reason,
                });
                continue;
            }
        };
        let sk = lock.resource.storage_key();
        match by_resource.remove(&sk) {
            Some((other_key, other)) => {
                let (keep, drop) = if lock.acquired_at >= other.acquired_at {
                    ((stored.key, lock), other_key)
                } else {
                    ((other_key, other), stored.key)
                };
                summary.skipped.push(Skipped {
                    key: drop,
                    reason: format!("the same resource as the later record {}", keep.0),
                });
                by_resource.insert(sk, keep);
            }
            None => {
                by_resource.insert(sk, (stored.key, lock));
            }
        }
    }
    summary.converted = by_resource.len();
    let resources = by_resource
        .into_values()
        .map(|(_, lock)| ResourceSnapshot {
            resource: lock.resource.clone(),
            lock: Some(lock),
            queue: Vec::new(),
            last_token: 0,
        })
        .collect();
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        exported_at: now,
        backend: backend.to_string(),
        resources,
    };
    (snapshot, summary)
}

/// Resources per [`Backend::import`] call in [`import_snapshot`]: small enough for a
/// progress bar to move, large enough that a big migration is a few calls.
pub const IMPORT_CHUNK: usize = 100;

/// Imports `snapshot` through the store's own [`Backend::import`] (which handles dry
/// runs, conflicts and `overwrite`) in chunks of [`IMPORT_CHUNK`] resources, calling
/// `progress(done, total)` after each, and adds the outcome to `summary`.
///
/// A conflict whose holder is the same owner since the same instant is the lock an
/// earlier run of this migration installed: it is counted as `already_imported`, not
/// as a conflict, so running the migration twice reports nothing to fix.
pub async fn import_snapshot(
    backend: &dyn Backend,
    snapshot: Snapshot,
    options: ImportOptions,
    summary: &mut Summary,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), ImportError> {
    summary.dry_run = options.dry_run;
    let total = snapshot.resources.len();
    let wanted: BTreeMap<String, Lock> = snapshot
        .resources
        .iter()
        .filter_map(|r| r.lock.clone().map(|l| (r.resource.storage_key(), l)))
        .collect();
    let mut done = 0;
    progress(0, total);
    for chunk in snapshot.resources.chunks(IMPORT_CHUNK) {
        let part = Snapshot {
            resources: chunk.to_vec(),
            ..snapshot.clone()
        };
        let report = backend.import(part, options).await?;
        add_report(summary, &report);
        for resource in report.conflicts {
            let same = match (
                wanted.get(&resource.storage_key()),
                backend.get_lock(&resource).await,
            ) {
                (Some(w), Ok(Some(held))) => {
                    held.owner.owner == w.owner.owner && held.acquired_at == w.acquired_at
                }
                _ => false,
            };
            if same {
                summary.already_imported += 1;
            } else {
                summary.conflicts.push(resource);
            }
        }
        done += chunk.len();
        progress(done, total);
    }
    Ok(())
}

fn add_report(summary: &mut Summary, report: &ImportReport) {
    summary.imported += report.imported;
    summary.already_imported += report.unchanged;
    summary.expired += report.expired;
    summary.retokened += report.retokened;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atlantis::{Project, PullRequest, User};

    fn record(repo: &str, path: &str, ws: &str, name: &str, time: &str) -> ProjectLock {
        ProjectLock {
            project: Project {
                project_name: name.into(),
                repo_full_name: repo.into(),
                path: path.into(),
            },
            pull: PullRequest {
                num: 9,
                url: "https://u:p@h/o/r/pull/9".into(),
                ..Default::default()
            },
            user: User {
                username: "u".into(),
                teams: vec![],
            },
            workspace: ws.into(),
            time: time.into(),
        }
    }

    #[test]
    fn duplicates_keep_the_later_record_and_invalid_ones_are_skipped() {
        let now = Timestamp::parse_rfc3339("2026-03-10T00:00:00Z").unwrap();
        let found = AtlantisLocks {
            source: "test".into(),
            locks: vec![
                StoredLock {
                    key: "o/r/./default".into(),
                    lock: record("o/r", ".", "default", "", "2026-01-01T00:00:00Z"),
                },
                StoredLock {
                    key: "o/r/./default/".into(),
                    lock: record("o/r", "", "default", "", "2026-02-01T00:00:00Z"),
                },
                StoredLock {
                    key: "o/r/../x/default/".into(),
                    lock: record("o/r", "../x", "default", "", "2026-02-01T00:00:00Z"),
                },
            ],
            ..Default::default()
        };
        let (snap, summary) = convert(found, "atlantis-boltdb", Duration::from_secs(60), now);
        assert_eq!(summary.found, 3);
        assert_eq!(summary.converted, 1);
        assert_eq!(snap.resources.len(), 1);
        let lock = snap.resources[0].lock.as_ref().unwrap();
        assert_eq!(lock.acquired_at.to_rfc3339(), "2026-02-01T00:00:00.000000Z");
        assert_eq!(
            lock.owner.pull.as_ref().unwrap().url,
            "https://h/o/r/pull/9"
        );
        assert_eq!(lock.expires_at, now.add(Duration::from_secs(60)));
        let keys: Vec<&str> = summary.skipped.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["o/r/./default", "o/r/../x/default/"]);
        assert!(summary.skipped[1].reason.contains("resource.path"));
    }
}
