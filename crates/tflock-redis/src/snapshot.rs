//! Export and Import: every bucket read page by page (`export.lua`), and a snapshot
//! checked whole ([`ImportPlan`]) before the first `import.lua` write, one script per
//! resource, many in flight.

use futures::future::join_all;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value as Json, json};
use tflock_core::{
    BackendError, EntryKind, ImportError, ImportOptions, ImportReport, InvalidRequest, Owner,
    QueueEntry, Resource, ResourceSnapshot, Snapshot, Timestamp,
};

use crate::args::{ExportArgs, ImportArgs, exact, exact_us};
use crate::backend::Inner;
use crate::keys::{BUCKETS, bucket_of, resource_key};
use crate::reply::{ImportReply, RawExported, Reply};

/// Most resources one export call returns per bucket (bounds script time).
const EXPORT_PAGE: usize = 200;
/// Import scripts in flight at once (one per resource, pipelined).
const IMPORT_CONCURRENCY: usize = 32;

/// [`tflock_core::Backend::export`] on Redis.
pub(crate) async fn export(inner: &Inner) -> Result<Snapshot, BackendError> {
    inner.check_open()?;
    let buckets = join_all((0..BUCKETS).map(|b| export_bucket(inner, b))).await;
    let mut items: Vec<RawExported> = Vec::new();
    let mut now = 0;
    for r in buckets {
        let (bucket_items, bucket_now) = r?;
        items.extend(bucket_items);
        now = now.max(bucket_now);
    }
    items.sort_by(|a, b| a.sk.cmp(&b.sk));
    Ok(Snapshot {
        version: tflock_core::snapshot::SNAPSHOT_VERSION,
        exported_at: Timestamp(now),
        backend: "redis".into(),
        resources: items
            .into_iter()
            .map(RawExported::into_snapshot)
            .collect::<Result<_, _>>()?,
    })
}

/// [`tflock_core::Backend::import`] on Redis.
pub(crate) async fn import(
    inner: &Inner,
    snapshot: Snapshot,
    options: ImportOptions,
) -> Result<ImportReport, ImportError> {
    inner.check_open()?;
    if snapshot.version != tflock_core::snapshot::SNAPSHOT_VERSION {
        return Err(ImportError::Version {
            found: snapshot.version,
        });
    }
    // Check everything first: a bad snapshot changes nothing.
    let plans = snapshot
        .resources
        .iter()
        .enumerate()
        .map(|(i, rs)| ImportPlan::new(i, rs))
        .collect::<Result<Vec<_>, _>>()?;
    // One script per resource, many in flight; a snapshot naming a resource twice
    // is applied in order, one at a time, as the embedded store would.
    let mut keys = std::collections::HashSet::new();
    let unique = plans.iter().all(|p| keys.insert(p.sk.as_str()));
    let calls: Vec<_> = plans
        .iter()
        .map(|p| import_one(inner, p, options.dry_run, options.overwrite))
        .collect();
    let replies: Vec<Reply<ImportReply>> = futures::stream::iter(calls)
        .buffered(if unique { IMPORT_CONCURRENCY } else { 1 })
        .try_collect()
        .await?;
    let mut report = ImportReport {
        dry_run: options.dry_run,
        ..ImportReport::default()
    };
    for (p, r) in plans.into_iter().zip(replies) {
        let r = r.body;
        report.imported += r.imported;
        report.unchanged += r.unchanged;
        report.expired += r.expired;
        report.queued += r.queued;
        report.retokened += r.retokened;
        if r.conflict {
            report.conflicts.push(p.resource);
        }
    }
    Ok(report)
}

/// Runs `import.lua` for one resource.
async fn import_one(
    inner: &Inner,
    p: &ImportPlan,
    dry_run: bool,
    overwrite: bool,
) -> Result<Reply<ImportReply>, BackendError> {
    let args = ImportArgs {
        storage_key: &p.sk,
        dry_run,
        overwrite,
        last_token: &p.last,
        lock: &p.lock,
        entries: &p.entries,
    };
    inner.run(bucket_of(&p.resource), &args).await
}

/// Every resource of one bucket, page by page, and the scripts' latest clock.
async fn export_bucket(
    inner: &Inner,
    bucket: usize,
) -> Result<(Vec<RawExported>, u64), BackendError> {
    let mut after = String::new();
    let mut out = Vec::new();
    let mut now = 0;
    loop {
        let args = ExportArgs {
            after: &after,
            page: EXPORT_PAGE,
        };
        let r = inner.run(bucket, &args).await?;
        now = now.max(r.now.0);
        let body = r.body;
        if let Some(last) = body.items.last() {
            after = last.sk.clone();
        }
        let empty = body.items.is_empty();
        out.extend(body.items);
        if body.done || empty {
            return Ok((out, now));
        }
    }
}

/// One resource of a snapshot, checked and encoded for `import.lua`.
struct ImportPlan {
    resource: Resource,
    sk: String,
    last: String,
    /// The lock's fields as JSON, or empty.
    lock: String,
    /// The reservations as a JSON list of stored entries.
    entries: String,
}

/// An owner checked as a request's would be (credentials stripped from URLs), as the
/// stored fields: owner, username, pull number, metadata JSON.
fn import_owner(owner: &Owner, field: &str) -> Result<Json, InvalidRequest> {
    let owner = owner.clone().validate(field)?;
    let meta = serde_json::to_string(&owner)
        .map_err(|e| InvalidRequest::new(field, format!("cannot be encoded: {e}")))?;
    let pull = owner
        .pull
        .as_ref()
        .map(|p| p.num.to_string())
        .unwrap_or_default();
    let fields = json!({
        "owner": owner.owner,
        "user": owner.username().unwrap_or(""),
        "pull": pull,
        "meta": meta,
    });
    Ok(fields)
}

impl ImportPlan {
    /// Checks resource `i` of a snapshot; errors name the field
    /// (`resources[3].lock.owner`).
    fn new(i: usize, rs: &ResourceSnapshot) -> Result<ImportPlan, InvalidRequest> {
        let at = format!("resources[{i}]");
        let resource = rs.resource.clone().validate(&format!("{at}.resource"))?;
        let sk = resource_key(&resource);
        let last = exact(rs.last_token, || format!("{at}.last_token"))?;
        let lock = match &rs.lock {
            None => String::new(),
            Some(l) => {
                let f = format!("{at}.lock");
                let mut fields = import_owner(&l.owner, &f)?;
                let lease = l.lease_id.as_ref().map(|x| x.as_str()).unwrap_or("");
                if lease.len() > 255 || lease.chars().any(char::is_control) {
                    return Err(InvalidRequest::new(
                        format!("{f}.lease_id"),
                        "is longer than 255 bytes or holds a control character",
                    ));
                }
                let extra = [
                    ("prio", l.priority.rank().to_string()),
                    ("lease", lease.to_string()),
                    (
                        "token",
                        exact(l.fencing_token.0, || format!("{f}.fencing_token"))?,
                    ),
                    (
                        "acquired",
                        exact(l.acquired_at.as_micros(), || format!("{f}.acquired_at"))?,
                    ),
                    (
                        "expires",
                        exact(l.expires_at.as_micros(), || format!("{f}.expires_at"))?,
                    ),
                    ("ttl", exact_us(l.ttl, || format!("{f}.ttl"))?),
                ];
                for (k, v) in extra {
                    fields[k] = v.into();
                }
                fields.to_string()
            }
        };
        // Waiters were live calls of the exporting process: they cannot be carried
        // over. Reservations are.
        let entries = rs
            .queue
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::Reservation)
            .map(|(j, e)| import_entry(e, &format!("{at}.queue[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImportPlan {
            resource,
            sk,
            last,
            lock,
            entries: Json::Array(entries).to_string(),
        })
    }
}

/// A reservation as `entries:<sk>` stores it.
fn import_entry(e: &QueueEntry, f: &str) -> Result<Json, InvalidRequest> {
    let id = &e.entry_id;
    if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_control()) {
        return Err(InvalidRequest::new(
            format!("{f}.entry_id"),
            "must be 1 to 255 bytes without control characters",
        ));
    }
    let mut fields = import_owner(&e.owner, f)?;
    let extra = [
        ("id", id.clone()),
        ("kind", "r".to_string()),
        ("prio", e.priority.rank().to_string()),
        (
            "enq",
            exact(e.enqueued_at.as_micros(), || format!("{f}.enqueued_at"))?,
        ),
        (
            "dl",
            exact(e.deadline.as_micros(), || format!("{f}.deadline"))?,
        ),
        ("ttl", exact_us(e.ttl, || format!("{f}.ttl"))?),
        ("rid", e.request_id.clone().unwrap_or_default()),
    ];
    for (k, v) in extra {
        fields[k] = v.into();
    }
    Ok(fields)
}
