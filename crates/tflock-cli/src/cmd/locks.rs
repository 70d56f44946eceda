//! `tflock locks ...`: every lock and queue operation of the contract, on whatever
//! backend [`crate::target::connect`] picks.

use std::path::Path;

use serde_json::json;
use tflock_config::Loaded;
use tflock_core::{
    ErrorCode, LeaseId, LockFilter, LockPage, LockRequest, NotAcquiredReason, Owner, PullInfo,
    Resource, SharedBackend, TransferAuth, UserInfo,
};

use crate::args::{AcquireArgs, GlobalArgs, LocksCommand, OwnerArgs, ResourceArgs};
use crate::exit::{CliResult, Exit, Failure};
use crate::output::{
    ENTRY_HEADERS, LOCK_HEADERS, Out, entry_rows, lock_detail, lock_rows, span, table, when,
};
use crate::target::connect;

pub async fn run(
    global: &GlobalArgs,
    loaded: &Loaded,
    command: LocksCommand,
    out: Out,
) -> CliResult<Exit> {
    // Lease ids and lease files are checked before anything is sent: an empty or
    // malformed lease id is nobody's and must never reach a store.
    check_leases(&command)?;
    let target = connect(global, loaded).await?;
    let backend = target.backend();
    let result = match command {
        LocksCommand::Export { .. } => super::snapshot::export(&backend, out).await,
        LocksCommand::Import {
            file,
            from_boltdb,
            from_atlantis_redis,
            ttl,
            dry_run,
            overwrite,
            ..
        } => match (from_boltdb, from_atlantis_redis, file) {
            (Some(path), _, _) => {
                let source = super::snapshot::AtlantisSource::BoltDb(path);
                let ttl = ttl.unwrap_or(loaded.config.enhanced_locking.redis.default_ttl);
                super::snapshot::import_from_atlantis(
                    &backend, source, ttl, dry_run, overwrite, out,
                )
                .await
            }
            (None, Some(url), _) => {
                let source = super::snapshot::AtlantisSource::Redis(url);
                let ttl = ttl.unwrap_or(loaded.config.enhanced_locking.redis.default_ttl);
                super::snapshot::import_from_atlantis(
                    &backend, source, ttl, dry_run, overwrite, out,
                )
                .await
            }
            (None, None, Some(file)) => {
                super::snapshot::import(&backend, &file, dry_run, overwrite, out).await
            }
            (None, None, None) => Err(Failure::usage(
                "give a file, --from-boltdb PATH or --from-atlantis-redis URL",
            )),
        },
        LocksCommand::Test => super::selftest::run(&backend, &target.describe(), out).await,
        other => one(&backend, other, out).await,
    };
    target.close().await;
    result
}

/// A lease id given on the command line, checked to be well formed; errors name
/// `flag`.
pub fn lease_arg(flag: &str, value: &str) -> CliResult<LeaseId> {
    LeaseId::parse(flag, value).map_err(|e| Failure::usage(format!("{flag}: {}", e.message)))
}

/// The lease id kept in `path`: `None` when the file does not exist. A file that is
/// there but holds no well-formed lease id is refused, naming `--lease-file`.
pub fn read_lease_file(path: &Path) -> CliResult<Option<LeaseId>> {
    match std::fs::read_to_string(path) {
        Ok(text) => LeaseId::parse("--lease-file", text.trim())
            .map(Some)
            .map_err(|e| Failure::usage(format!("--lease-file {}: {}", path.display(), e.message))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::usage(format!(
            "--lease-file {}: cannot read it: {e}",
            path.display()
        ))),
    }
}

/// Writes `lease` to `path`, readable by its owner only (mode 0600), replacing the
/// file in one step (a temporary file in the same directory, then a rename).
pub fn write_lease_file(path: &Path, lease: &LeaseId) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lease".into());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(lease.as_str().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Checks every lease id and lease file a command names, before any request.
fn check_leases(command: &LocksCommand) -> CliResult<()> {
    match command {
        LocksCommand::Acquire(a) => {
            if let Some(l) = &a.lease_id {
                lease_arg("--lease-id", l)?;
            }
            if let Some(p) = &a.lease_file {
                read_lease_file(p)?;
            }
        }
        LocksCommand::Unlock {
            lease_id,
            lease_file,
            force,
            expect_token,
            ..
        } => {
            if expect_token.is_some() && !force {
                return Err(Failure::usage(
                    "--expect-token goes with --force (a lease id already names its lease)",
                ));
            }
            if let Some(l) = lease_id {
                lease_arg("--lease-id", l)?;
            }
            if let Some(p) = lease_file {
                unlock_lease_file(p)?;
            }
        }
        LocksCommand::Refresh { lease_id, .. } => {
            lease_arg("--lease-id", lease_id)?;
        }
        LocksCommand::Transfer {
            lease_id: Some(l), ..
        } => {
            lease_arg("--lease-id", l)?;
        }
        _ => {}
    }
    Ok(())
}

/// The lease id in an unlock's `--lease-file`, which must exist.
fn unlock_lease_file(path: &Path) -> CliResult<LeaseId> {
    read_lease_file(path)?.ok_or_else(|| {
        Failure::usage(format!(
            "--lease-file {}: no such file (nothing to unlock with)",
            path.display()
        ))
    })
}

/// The resource the flags name; errors name the flag at fault.
pub fn resource(args: &ResourceArgs) -> CliResult<Resource> {
    Resource::new(
        args.project.clone(),
        args.path.clone(),
        args.workspace.clone(),
        args.project_name.clone(),
    )
    .map_err(|e| {
        let flag = match e.field.as_str() {
            "resource.repo" => "--project",
            "resource.path" => "--path",
            "resource.workspace" => "--workspace",
            "resource.project_name" => "--project-name",
            other => other,
        };
        Failure::usage(format!("{flag}: {}", e.message))
    })
}

/// The caller: `--owner`, else `REPO#PULL` with `--pull`, else `USER@HOST:PID`.
pub fn owner(args: &OwnerArgs, repo: &str) -> Owner {
    let username = args
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|u| !u.is_empty());
    let owner = args.owner.clone().unwrap_or_else(|| match args.pull {
        Some(n) => format!("{repo}#{n}"),
        None => format!(
            "{}@{}:{}",
            username.as_deref().unwrap_or("tflock"),
            hostname(),
            std::process::id()
        ),
    });
    Owner {
        owner,
        user: username.map(|u| UserInfo {
            username: u,
            teams: Vec::new(),
        }),
        pull: args.pull.map(|num| PullInfo {
            num,
            ..PullInfo::default()
        }),
        note: args.note.clone().unwrap_or_default(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Every page of a listing.
pub async fn list_all(backend: &SharedBackend, mut filter: LockFilter) -> CliResult<LockPage> {
    filter.limit = Some(LockFilter::MAX_LIMIT);
    let mut all = LockPage::default();
    loop {
        let page = backend.list_locks(filter.clone()).await?;
        all.locks.extend(page.locks);
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
            None => return Ok(all),
        }
    }
}

async fn one(backend: &SharedBackend, command: LocksCommand, out: Out) -> CliResult<Exit> {
    match command {
        LocksCommand::List { repo, owner, user } => {
            let page = list_all(
                backend,
                LockFilter {
                    repo,
                    owner,
                    user,
                    ..LockFilter::default()
                },
            )
            .await?;
            out.emit(&page, || {
                if page.locks.is_empty() {
                    "no active locks".into()
                } else {
                    table(LOCK_HEADERS, &lock_rows(&page.locks))
                }
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::Get(r) => {
            let r = resource(&r)?;
            match backend.get_lock(&r).await? {
                Some(lock) => {
                    out.emit(&json!({ "lock": lock }), || lock_detail(&lock))?;
                    Ok(Exit::Success)
                }
                None => Err(Failure {
                    exit: Exit::Error,
                    message: format!("{} is not locked", r.lock_key()),
                    code: Some(ErrorCode::NotFound),
                }),
            }
        }
        LocksCommand::Acquire(a) => acquire(backend, a, out).await,
        LocksCommand::Unlock {
            resource: r,
            force,
            expect_token,
            lease_id,
            lease_file,
        } => {
            let r = resource(&r)?;
            let resp = match (force, lease_id, &lease_file) {
                (true, _, _) => {
                    let expected = expect_token.map(tflock_core::FencingToken);
                    match backend.force_unlock(&r, expected).await {
                        Ok(resp) => resp,
                        Err(tflock_core::UnlockError::NotOwner) if expected.is_some() => {
                            return Err(Failure {
                                exit: Exit::Error,
                                message: format!(
                                    "the lock changed hands: {} is no longer held with fencing token {}; nothing was released",
                                    r.lock_key(),
                                    expect_token.unwrap_or_default()
                                ),
                                code: Some(ErrorCode::NotOwner),
                            });
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                (false, Some(l), _) => backend.unlock(&r, &lease_arg("--lease-id", &l)?).await?,
                (false, None, Some(p)) => backend.unlock(&r, &unlock_lease_file(p)?).await?,
                (false, None, None) => {
                    return Err(Failure::usage(
                        "give --lease-id L, --lease-file PATH or --force",
                    ));
                }
            };
            if let (false, Some(p)) = (force, &lease_file)
                && let Err(e) = std::fs::remove_file(p)
            {
                eprintln!(
                    "released, but could not remove --lease-file {}: {e}",
                    p.display()
                );
            }
            out.emit(&resp, || {
                let mut s = format!(
                    "released {} (held by {}, fencing token {})",
                    resp.released.key, resp.released.owner.owner, resp.released.fencing_token
                );
                if let Some(g) = &resp.granted_to {
                    s.push_str(&format!("; handed to {}", g.entry.owner.owner));
                }
                s
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::UnlockPull { project, pull } => {
            let resp = backend.unlock_by_pull(&project, pull).await?;
            out.emit(&resp, || {
                let mut s = format!(
                    "pull request {project}#{pull}: released {} lock(s), cancelled {} queue entr{}\n",
                    resp.released.len(),
                    resp.cancelled.len(),
                    if resp.cancelled.len() == 1 { "y" } else { "ies" }
                );
                for l in &resp.released {
                    s.push_str(&format!("  released {}\n", l.key));
                }
                for e in &resp.cancelled {
                    s.push_str(&format!("  cancelled {} ({})\n", e.entry_id, e.resource.lock_key()));
                }
                s
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::Refresh {
            resource: r,
            lease_id,
            ttl,
        } => {
            let r = resource(&r)?;
            let lock = backend
                .refresh_lock(&r, &lease_arg("--lease-id", &lease_id)?, ttl)
                .await?;
            out.emit(&json!({ "lock": lock }), || {
                format!("refreshed {}: expires {}", lock.key, when(lock.expires_at))
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::Transfer {
            resource: r,
            lease_id,
            force,
            to_owner,
            to_user,
            to_pull,
        } => {
            let r = resource(&r)?;
            let auth = match (force, lease_id) {
                (true, _) => TransferAuth::Admin,
                (false, Some(l)) => TransferAuth::Lease(lease_arg("--lease-id", &l)?),
                (false, None) => return Err(Failure::usage("give --lease-id L or --force")),
            };
            let to = Owner {
                owner: to_owner,
                user: to_user.map(|u| UserInfo {
                    username: u,
                    teams: Vec::new(),
                }),
                pull: to_pull.map(|num| PullInfo {
                    num,
                    ..PullInfo::default()
                }),
                note: String::new(),
            };
            let lock = backend.transfer_lock(&r, auth, to).await?;
            eprintln!(
                "transferred {} to {} (fencing token {}); the new owner's lease id is on stdout",
                lock.key, lock.owner.owner, lock.fencing_token
            );
            out.emit(&json!({ "lock": lock }), || {
                lock.lease_id
                    .as_ref()
                    .map(|l| l.as_str().to_string())
                    .unwrap_or_default()
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::Queue(r) => {
            let r = resource(&r)?;
            let status = backend.get_queue_status(&r).await?;
            out.emit(&status, || {
                let mut s = match &status.lock {
                    Some(l) => format!(
                        "{}: held by {} (fencing token {}, expires {})\n",
                        l.key,
                        l.owner.owner,
                        l.fencing_token,
                        when(l.expires_at)
                    ),
                    None => format!("{}: not locked\n", r.lock_key()),
                };
                if status.entries.is_empty() {
                    s.push_str("queue empty\n");
                } else {
                    s.push_str(&table(ENTRY_HEADERS, &entry_rows(&status.entries)));
                }
                s
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::UserQueue { user } => {
            let entries = backend.get_user_queue(&user).await?;
            out.emit(&json!({ "entries": entries }), || {
                if entries.is_empty() {
                    format!("{user} has no queue entries")
                } else {
                    table(ENTRY_HEADERS, &entry_rows(&entries))
                }
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::Cancel {
            entry,
            project,
            workspace,
            path,
            project_name,
        } => {
            let expected = match project {
                Some(project) => Some(resource(&ResourceArgs {
                    project,
                    workspace: workspace.unwrap_or_else(|| "default".into()),
                    path: path.unwrap_or_else(|| ".".into()),
                    project_name: project_name.unwrap_or_default(),
                })?),
                None => None,
            };
            let cancelled = backend
                .cancel_queue_entry(&entry, expected.as_ref())
                .await
                .map_err(|e| match (&e, &expected) {
                    (tflock_core::CancelError::NotFound, Some(r)) => Failure {
                        exit: Exit::Error,
                        message: format!(
                            "no queue entry {entry} waits in the queue of {}",
                            r.lock_key()
                        ),
                        code: Some(ErrorCode::NotFound),
                    },
                    _ => e.into(),
                })?;
            out.emit(&json!({ "cancelled": cancelled }), || {
                format!(
                    "cancelled {} ({} on {}, waited {})",
                    cancelled.entry.entry_id,
                    cancelled.entry.owner.owner,
                    cancelled.entry.resource.lock_key(),
                    span(cancelled.waited)
                )
            })?;
            Ok(Exit::Success)
        }
        LocksCommand::Export { .. } | LocksCommand::Import { .. } | LocksCommand::Test => {
            unreachable!("handled by run")
        }
    }
}

async fn acquire(backend: &SharedBackend, a: AcquireArgs, out: Out) -> CliResult<Exit> {
    let r = resource(&a.resource)?;
    let proof = match (&a.lease_id, &a.lease_file) {
        (Some(l), _) => Some(lease_arg("--lease-id", l)?),
        (None, Some(p)) => read_lease_file(p)?,
        (None, None) => None,
    };
    let request = LockRequest {
        owner: owner(&a.owner, &r.repo),
        resource: r,
        priority: a.priority,
        ttl: a.ttl,
        wait: a.wait,
        reserve: a.reserve,
        request_id: a.request_id,
        lease_id: proof,
    };
    let key = request.resource.lock_key();
    let resp = backend.try_lock(request).await?;
    // The explanation goes to stderr in every format; stdout carries the answer: the
    // lease id (or a reservation's entry id) for humans, the whole answer as JSON.
    let holder = |l: &tflock_core::Lock| {
        format!(
            "{} (fencing token {}, expires {})",
            l.owner.owner,
            l.fencing_token,
            when(l.expires_at)
        )
    };
    let (note, id) = match (&resp.lock, &resp.queue, resp.reason) {
        (Some(l), _, _) if resp.acquired => (
            format!("acquired {} as {}", l.key, holder(l)),
            l.lease_id.as_ref().map(|i| i.as_str().to_string()),
        ),
        (l, Some(q), _) => (
            format!(
                "not acquired: held by {}; reserved position {} in the queue (entry {})",
                l.as_ref().map(holder).unwrap_or_default(),
                q.position,
                q.entry_id
            ),
            Some(q.entry_id.clone()),
        ),
        (l, None, Some(NotAcquiredReason::Timeout)) => (
            format!(
                "not acquired: timed out waiting; held by {}",
                l.as_ref()
                    .map(holder)
                    .unwrap_or_else(|| "someone else".into())
            ),
            None,
        ),
        (_, None, Some(NotAcquiredReason::Cancelled)) => (
            "not acquired: the queue entry was cancelled while waiting".into(),
            None,
        ),
        (l, None, Some(NotAcquiredReason::HeldByOwner)) => (
            format!(
                "not acquired (held_by_owner): {key} is already held by this owner ({}), \
                 but no proof of holding it was given; to re-lock pass the lease with \
                 --lease-id or --lease-file, or the grant's --request-id",
                l.as_ref()
                    .map(holder)
                    .unwrap_or_else(|| "the same owner".into())
            ),
            None,
        ),
        (_, None, Some(NotAcquiredReason::LockDelay)) => (
            "not acquired (lock_delay): the store lost data a moment ago and grants nothing \
             until its lock_delay ends (see /api/health/locking); retry shortly, or wait \
             with --wait"
                .into(),
            None,
        ),
        (l, None, Some(NotAcquiredReason::LeaseLost)) => (
            format!(
                "not acquired (lease_lost): the lease this request id was granted has ended \
                 (released, expired, forced or transferred); {}",
                l.as_ref()
                    .map(|l| format!("now held by {}", holder(l)))
                    .unwrap_or_else(|| format!("{key} is not locked now"))
            ),
            None,
        ),
        (l, None, _) => (
            format!(
                "not acquired: held by {}",
                l.as_ref()
                    .map(holder)
                    .unwrap_or_else(|| "someone else".into())
            ),
            None,
        ),
    };
    eprintln!("{note}");
    out.emit(&resp, || id.unwrap_or_default())?;
    if let (true, Some(path), Some(lease)) = (
        resp.acquired,
        &a.lease_file,
        resp.lock.as_ref().and_then(|l| l.lease_id.as_ref()),
    ) {
        write_lease_file(path, lease).map_err(|e| Failure {
            exit: Exit::Error,
            message: format!(
                "acquired {key}, but could not write --lease-file {}: {e}",
                path.display()
            ),
            code: None,
        })?;
    }
    if resp.acquired {
        return Ok(Exit::Success);
    }
    Ok(Exit::NotAcquired)
}
