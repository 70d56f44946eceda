//! `tflock run --project=... --workspace=... [--wait D] [--ttl D] -- terraform apply`:
//! run a command while holding the lock.
//!
//! 1. Acquire, waiting in the queue up to `--wait` (a wait longer than the server's
//!    `max_timeout` is made of several waiting calls in a row).
//! 2. Start the command with `TFLOCK_LOCK_KEY` and `TFLOCK_FENCING_TOKEN` in its
//!    environment, and keep the lease refreshed (every TTL/3, at most every 10 s) while
//!    it runs. The lease is counted from the moment the call that made or last
//!    extended it was *sent* (the server's expiry is at least that plus the TTL; the
//!    reply may come late), never from the reply. A refresh that says the lease is
//!    gone, an event saying it ended, or a lease that is about to run out (the send
//!    instant plus the TTL, less a margin of TTL/5, at most 10 s) with no refresh
//!    answered in time means
//!    the lease is lost: tflock says so at once and stops the command (SIGTERM,
//!    SIGKILL 30 s later), unless `--keep-running-on-lease-loss`. A grant that comes
//!    out of a wait in the queue is refreshed once before the command starts, so its
//!    count starts from a known send instant too.
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
/// Pause before retrying a refresh that failed.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Largest margin between stopping the command and the earliest possible expiry.
const MAX_STOP_MARGIN: Duration = Duration::from_secs(10);
/// How long a stopped command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(30);

pub async fn run(global: &GlobalArgs, loaded: &Loaded, args: RunArgs) -> CliResult<u8> {
    let r = resource(&args.resource)?;
    let target = connect(global, loaded).await?;
    let backend = target.backend();
    let result = async {
        let Some((lock, sent)) = acquire(&backend, &args, &r).await? else {
            return Ok(Exit::NotAcquired as u8);
        };
        supervise(&backend, &args, lock, sent).await
    }
    .await;
    target.close().await;
    result
}

/// Takes the lock, waiting in line; `None` when not acquired (already said why). With
/// the lock comes the instant the call that granted it was sent, or `None` when the
/// grant came out of a wait (its start on the server is unknown).
async fn acquire(
    backend: &SharedBackend,
    args: &RunArgs,
    r: &tflock_core::Resource,
) -> CliResult<Option<(Lock, Option<Instant>)>> {
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
    let sent = Instant::now();
    let first = backend.try_lock(request.clone()).await?;
    if first.acquired {
        return Ok(first.lock.map(|l| (l, Some(sent))));
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
            return Ok(resp.lock.map(|l| (l, None)));
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

/// How long before the lease can expire on the server the command is stopped.
fn stop_margin(ttl: Duration) -> Duration {
    (ttl / 5)
        .clamp(Duration::from_millis(100), MAX_STOP_MARGIN)
        .min(ttl / 2)
}

/// The instant to stop the command at when the lease is valid until `valid_until`.
fn stop_at(valid_until: Instant, margin: Duration) -> Instant {
    valid_until.checked_sub(margin).unwrap_or(valid_until)
}

async fn supervise(
    backend: &SharedBackend,
    args: &RunArgs,
    lock: Lock,
    sent: Option<Instant>,
) -> CliResult<u8> {
    let r = lock.resource.clone();
    let lease = lock
        .lease_id
        .clone()
        .ok_or_else(|| Failure::error("the grant carried no lease id"))?;
    let ttl = args.ttl.unwrap_or(lock.ttl);
    let refresh_every = (ttl / 3).clamp(Duration::from_millis(100), MAX_REFRESH_EVERY);
    let margin = stop_margin(ttl);
    // The earliest instant the lease can expire on the server: the send instant of the
    // call that made or last extended it, plus the TTL.
    let mut valid_until = match sent {
        Some(sent) if Instant::now() < stop_at(sent + ttl, margin) => sent + ttl,
        // Out of a wait, or a reply so late the lease may be about to expire: extend
        // it once now, so the count starts from a known send instant.
        _ => {
            let sent = Instant::now();
            match tokio::time::timeout(ttl, backend.refresh_lock(&r, &lease, ttl)).await {
                Ok(Ok(_)) => sent + ttl,
                Ok(Err(e)) => {
                    return Err(Failure::error(format!(
                        "the lease on {} was lost before the command could start: {e}",
                        lock.key
                    )));
                }
                Err(_) => {
                    return Err(Failure::error(format!(
                        "the lease on {} could not be extended within its TTL before the command started",
                        lock.key
                    )));
                }
            }
        }
    };
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
    // The next refresh is due `refresh_every` after the send instant the lease is
    // counted from (not after a late reply), so a slow answer leaves no gap.
    let mut next_refresh = (valid_until - ttl) + refresh_every;
    let mut lost_reported = false;
    let mut kill_at: Option<Instant> = None;

    let status = loop {
        let lost = tokio::select! {
            status = child.wait() => break status,
            _ = tokio::time::sleep_until(next_refresh.into()) => {
                // Counted from the send, bounded by the stop instant: a refresh that
                // hangs must not keep the command running past the lease.
                let sent = Instant::now();
                let call = backend.refresh_lock(&r, &lease, ttl);
                let result = tokio::time::timeout_at(stop_at(valid_until, margin).into(), call).await;
                if !matches!(result, Ok(Ok(_))) {
                    next_refresh = Instant::now() + refresh_every.min(RETRY_EVERY);
                }
                match result {
                    Ok(Ok(l)) => {
                        valid_until = sent + ttl;
                        next_refresh = sent + refresh_every;
                        tracing::debug!(expires = %l.expires_at, "lease refreshed");
                        Lost::No
                    }
                    Ok(Err(RefreshError::LeaseLost)) => Lost::Yes("the backend says the lease has expired or was taken over".into()),
                    Ok(Err(e)) if Instant::now() >= stop_at(valid_until, margin) => Lost::Yes(format!("it is about to run out and the backend could not be reached ({e})")),
                    Ok(Err(e)) => {
                        if !lost_reported {
                            eprintln!("tflock: warning: could not refresh the lease (will retry; it is valid for {:.0}s more): {e}",
                                valid_until.saturating_duration_since(Instant::now()).as_secs_f64());
                        }
                        Lost::No
                    }
                    Err(_) => Lost::Yes(format!(
                        "the backend did not answer a refresh before the lease could expire (stopping {}ms before send + TTL)",
                        margin.as_millis()
                    )),
                }
            }
            _ = tokio::time::sleep_until(stop_at(valid_until, margin).into()), if !lost_reported => {
                Lost::Yes(format!(
                    "it was not refreshed in time and may expire on the server within {}ms",
                    margin.as_millis()
                ))
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
