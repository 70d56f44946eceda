//! `tflock run --project=... --workspace=... [--wait D] [--ttl D] -- terraform apply`:
//! run a command while holding the lock.
//!
//! 1. Acquire, waiting in the queue up to `--wait` (a wait longer than the server's
//!    `max_timeout` is made of several waiting calls in a row).
//! 2. Start the command with `TFLOCK_LOCK_KEY` and `TFLOCK_FENCING_TOKEN` in its
//!    environment, and keep the lease refreshed (every TTL/3, at most every 10 s) while
//!    it runs. A refresh that says the lease is gone, an event saying it ended, or a
//!    lease that ran out while the backend could not be reached means the lease is
//!    lost: tflock says so at once and stops the command (SIGTERM, SIGKILL 30 s later),
//!    unless `--keep-running-on-lease-loss`.
//! 3. SIGINT and SIGTERM sent to tflock are passed on to the command, and tflock waits
//!    for it to exit. In an interactive terminal the command is in the terminal's
//!    foreground process group and gets Ctrl-C from the terminal itself; tflock does
//!    not send it a second one (terraform takes a second interrupt as "stop now").
//!    Without a terminal the command gets its own process group, so a signal sent to
//!    tflock's group reaches it once, through tflock.
//! 4. When the command exits, release the lease and exit with the command's code
//!    (128 + N when it was killed by signal N).

use std::io::IsTerminal;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tflock_config::Loaded;
use tflock_core::{
    EventKind, LeaseId, Lock, LockRequest, NotAcquiredReason, RefreshError, SharedBackend, WaitSpec,
};
use tokio::sync::broadcast::error::RecvError;

use crate::args::{GlobalArgs, RunArgs};
use crate::cmd::locks::{owner, resource};
use crate::exit::{CliResult, Exit, Failure};
use crate::output::when;
use crate::target::connect;

/// Longest pause between two refreshes.
const MAX_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long a stopped command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(30);

pub async fn run(global: &GlobalArgs, loaded: &Loaded, args: RunArgs) -> CliResult<u8> {
    let r = resource(&args.resource)?;
    let target = connect(global, loaded).await?;
    let backend = target.backend();
    let result = async {
        let Some(lock) = acquire(&backend, &args, &r).await? else {
            return Ok(Exit::NotAcquired as u8);
        };
        supervise(&backend, &args, lock).await
    }
    .await;
    target.close().await;
    result
}

/// Takes the lock, waiting in line; `None` when not acquired (already said why).
async fn acquire(
    backend: &SharedBackend,
    args: &RunArgs,
    r: &tflock_core::Resource,
) -> CliResult<Option<Lock>> {
    let request = LockRequest {
        resource: r.clone(),
        owner: owner(&args.owner, &r.repo),
        priority: args.priority,
        ttl: args.ttl,
        wait: None,
        reserve: false,
        request_id: None,
        lease_id: None,
    };
    let first = backend.try_lock(request.clone()).await?;
    if first.acquired {
        return Ok(first.lock);
    }
    let wait = args.wait.unwrap_or(WaitSpec::Default);
    if let Some(holder) = &first.lock {
        eprintln!(
            "tflock: {} is held by {} (fencing token {}, expires {}); waiting in the queue ({wait})",
            holder.key,
            holder.owner.owner,
            holder.fencing_token,
            when(holder.expires_at)
        );
    }
    let deadline = match wait {
        WaitSpec::For(d) => Some(Instant::now() + d),
        WaitSpec::Default => None,
    };
    loop {
        let this_wait = match deadline {
            Some(d) => WaitSpec::For(d.saturating_duration_since(Instant::now())),
            None => WaitSpec::Default,
        };
        let resp = backend
            .try_lock(LockRequest {
                wait: Some(this_wait),
                ..request.clone()
            })
            .await?;
        if resp.acquired {
            return Ok(resp.lock);
        }
        let more = deadline.is_some_and(|d| d > Instant::now() + Duration::from_secs(1));
        if resp.reason == Some(NotAcquiredReason::Timeout) && more {
            // The server clamps one wait to its max_timeout: wait again.
            continue;
        }
        let why = match resp.reason {
            Some(NotAcquiredReason::Timeout) => format!("timed out after waiting {wait}"),
            Some(NotAcquiredReason::Cancelled) => "the queue entry was cancelled".into(),
            _ => "the lock is held and the server does not queue".into(),
        };
        let holder = resp
            .lock
            .map(|l| format!(" (held by {})", l.owner.owner))
            .unwrap_or_default();
        eprintln!("tflock: not acquired: {why}{holder}");
        return Ok(None);
    }
}

/// Why the lease is gone.
enum Lost {
    No,
    Yes(String),
}

async fn supervise(backend: &SharedBackend, args: &RunArgs, lock: Lock) -> CliResult<u8> {
    let r = lock.resource.clone();
    let lease = lock
        .lease_id
        .clone()
        .ok_or_else(|| Failure::error("the grant carried no lease id"))?;
    let ttl = args.ttl.unwrap_or(lock.ttl);
    let refresh_every = (ttl / 3).clamp(Duration::from_millis(100), MAX_REFRESH_EVERY);
    eprintln!(
        "tflock: acquired {} (fencing token {}); running: {}",
        lock.key,
        lock.fencing_token,
        args.command.join(" ")
    );

    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    let interactive = std::io::stdin().is_terminal();
    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("TFLOCK_LOCK_KEY", &lock.key)
        .env("TFLOCK_FENCING_TOKEN", lock.fencing_token.to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if !interactive {
        cmd.process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            release(backend, &r, &lease).await;
            return Err(Failure::error(format!(
                "cannot run {}: {e}",
                args.command[0]
            )));
        }
    };
    let pid = child.id().map(|p| p as i32);

    let mut events = backend.subscribe();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut valid_until = Instant::now() + ttl;
    let mut lost_reported = false;
    let mut kill_at: Option<Instant> = None;

    let status = loop {
        let lost = tokio::select! {
            status = child.wait() => break status,
            _ = tick.tick() => {
                match backend.refresh_lock(&r, &lease, ttl).await {
                    Ok(l) => {
                        valid_until = Instant::now() + ttl;
                        tracing::debug!(expires = %l.expires_at, "lease refreshed");
                        Lost::No
                    }
                    Err(RefreshError::LeaseLost) => Lost::Yes("the backend says the lease has expired or was taken over".into()),
                    Err(e) if Instant::now() >= valid_until => Lost::Yes(format!("it ran out while the backend could not be reached ({e})")),
                    Err(e) => {
                        eprintln!("tflock: warning: could not refresh the lease (will retry; it is valid for {:.0}s more): {e}",
                            valid_until.saturating_duration_since(Instant::now()).as_secs_f64());
                        Lost::No
                    }
                }
            }
            ev = events.recv(), if !lost_reported => match ev {
                Ok(ev) if ev.resource == r && ev.fencing_token == Some(lock.fencing_token) && matches!(
                    ev.event, EventKind::LockReleased | EventKind::LockExpired | EventKind::LockTransferred
                ) => Lost::Yes(format!("{} by someone else (event {})", match ev.event {
                    EventKind::LockReleased => "released",
                    EventKind::LockExpired => "expired",
                    _ => "transferred",
                }, ev.event.as_str())),
                Err(RecvError::Closed) => {
                    // No event stream (or it ended): rely on the refreshes.
                    events = tokio::sync::broadcast::channel(1).1;
                    Lost::No
                }
                _ => Lost::No,
            },
            _ = sigint.recv() => {
                // Ctrl-C in a terminal reaches the command directly (same process group).
                if !interactive {
                    forward(pid, libc::SIGINT, false);
                }
                Lost::No
            }
            _ = sigterm.recv() => {
                forward(pid, libc::SIGTERM, !interactive);
                Lost::No
            }
            _ = sleep_until(kill_at) => {
                eprintln!("tflock: the command did not stop within {}s of SIGTERM; sending SIGKILL", KILL_GRACE.as_secs());
                forward(pid, libc::SIGKILL, !interactive);
                kill_at = None;
                Lost::No
            }
        };
        if let Lost::Yes(why) = lost
            && !lost_reported
        {
            lost_reported = true;
            if args.keep_running_on_lease_loss {
                eprintln!(
                    "tflock: LEASE LOST on {}: {why}. Another owner may now hold the lock; the command keeps running (--keep-running-on-lease-loss)",
                    lock.key
                );
            } else {
                eprintln!(
                    "tflock: LEASE LOST on {}: {why}. Stopping the command (SIGTERM)",
                    lock.key
                );
                forward(pid, libc::SIGTERM, !interactive);
                kill_at = Some(Instant::now() + KILL_GRACE);
            }
        }
    };
    let status = status.map_err(|e| Failure::error(format!("cannot wait for the command: {e}")))?;
    if !lost_reported {
        release(backend, &r, &lease).await;
    }
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 1,
    };
    if lost_reported && code == 0 {
        eprintln!("tflock: the command succeeded, but the lease was lost while it ran");
    }
    Ok(code)
}

fn signal(kind: tokio::signal::unix::SignalKind) -> CliResult<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .map_err(|e| Failure::error(format!("cannot watch signals: {e}")))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends `sig` to the command (to its whole process group when it has its own).
fn forward(pid: Option<i32>, sig: i32, group: bool) {
    let Some(pid) = pid else { return };
    let target = if group { -pid } else { pid };
    // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(target, sig);
    }
}

async fn release(backend: &SharedBackend, r: &tflock_core::Resource, lease: &LeaseId) {
    match backend.unlock(r, lease).await {
        Ok(resp) => {
            let handed = resp
                .granted_to
                .map(|g| format!("; handed to {}", g.entry.owner.owner))
                .unwrap_or_default();
            eprintln!("tflock: released {}{handed}", resp.released.key);
        }
        Err(e) => eprintln!("tflock: warning: could not release {}: {e}", r.lock_key()),
    }
}
