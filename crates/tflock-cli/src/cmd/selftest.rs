//! `tflock locks test`: the spec's `atlantis locks test --backend=redis`, a self-test
//! of the lock operations on a scratch resource (`tflock-selftest/<random>`), each
//! step timed: acquire, a queued waiter, the hand-off to it, refresh, TTL expiry,
//! unlock, and clean-up (which runs whatever happened before). Exit 0 when every step
//! passed, 4 when the backend could not be reached, 1 on any other failure.

use std::time::{Duration, Instant};

use serde::Serialize;
use tflock_core::{
    EntryKind, ErrorCode, LeaseId, Lock, LockRequest, Resource, SharedBackend, UnlockError,
};

use crate::exit::{CliResult, Exit, Failure};
use crate::output::{Out, ms, table};

/// Bound on each "this happens soon" wait of the test.
const SOON: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
struct Step {
    step: &'static str,
    ok: bool,
    #[serde(serialize_with = "as_ms")]
    latency: Duration,
    detail: String,
    #[serde(skip)]
    unavailable: bool,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1000.0)
}

#[derive(Serialize)]
struct Verdict<'a> {
    target: &'a str,
    resource: String,
    passed: bool,
    steps: &'a [Step],
}

/// A step's failure: what went wrong, and whether it was the backend being away.
struct StepError {
    message: String,
    unavailable: bool,
}

impl<E: Into<tflock_core::Error>> From<E> for StepError {
    fn from(e: E) -> Self {
        let e: tflock_core::Error = e.into();
        StepError {
            unavailable: e.code == ErrorCode::BackendUnavailable,
            message: e.to_string(),
        }
    }
}

fn fail(message: impl Into<String>) -> StepError {
    StepError {
        message: message.into(),
        unavailable: false,
    }
}

type StepResult = Result<String, StepError>;

struct Run {
    resource: Resource,
    steps: Vec<Step>,
    failed: bool,
}

impl Run {
    /// Runs `f` as step `name` unless an earlier step failed; prints it as it ends.
    async fn step(&mut self, name: &'static str, f: impl AsyncFnOnce() -> StepResult) {
        if self.failed {
            self.record(
                name,
                false,
                Duration::ZERO,
                "skipped (an earlier step failed)".into(),
                false,
            );
            return;
        }
        let started = Instant::now();
        let r = f().await;
        let latency = started.elapsed();
        match r {
            Ok(detail) => self.record(name, true, latency, detail, false),
            Err(e) => {
                self.failed = true;
                self.record(name, false, latency, e.message, e.unavailable);
            }
        }
    }

    fn record(
        &mut self,
        step: &'static str,
        ok: bool,
        latency: Duration,
        detail: String,
        unavailable: bool,
    ) {
        self.steps.push(Step {
            step,
            ok,
            latency,
            detail,
            unavailable,
        });
    }
}

fn lease(l: &Lock) -> Result<LeaseId, StepError> {
    l.lease_id
        .clone()
        .ok_or_else(|| fail("the grant carried no lease id"))
}

pub async fn run(backend: &SharedBackend, target: &str, out: Out) -> CliResult<Exit> {
    let resource = Resource::new(
        format!("tflock-selftest/{}", tflock_core::random_hex(6)),
        ".",
        "default",
        "",
    )
    .map_err(|e| Failure::error(e.to_string()))?;
    if out.is_table() {
        eprintln!(
            "self-test on {target}, scratch resource {}",
            resource.lock_key()
        );
    }
    let mut run = Run {
        resource: resource.clone(),
        steps: Vec::new(),
        failed: false,
    };
    let r = resource.clone();
    let mut first: Option<Lock> = None;
    let mut second: Option<Lock> = None;
    let mut waiter: Option<
        tokio::task::JoinHandle<Result<tflock_core::LockResponse, tflock_core::TryLockError>>,
    > = None;

    run.step("acquire", async || {
        let resp = backend
            .try_lock(
                LockRequest::new(r.clone(), "tflock-selftest-a").with_ttl(Duration::from_secs(60)),
            )
            .await?;
        let lock = resp
            .lock
            .filter(|_| resp.acquired)
            .ok_or_else(|| fail("the free scratch resource was not granted"))?;
        let d = format!("granted, fencing token {}", lock.fencing_token);
        first = Some(lock);
        Ok(d)
    })
    .await;

    run.step("queued waiter", async || {
        let b = backend.clone();
        let req = LockRequest::new(r.clone(), "tflock-selftest-b")
            .with_ttl(Duration::from_secs(60))
            .with_wait(Duration::from_secs(30));
        waiter = Some(tokio::spawn(async move { b.try_lock(req).await }));
        let deadline = Instant::now() + SOON;
        loop {
            let q = backend.get_queue_status(&r).await?;
            if let Some(e) = q
                .entries
                .iter()
                .find(|e| e.entry.owner.owner == "tflock-selftest-b")
            {
                if e.entry.kind != EntryKind::Waiter || e.position != 1 {
                    return Err(fail(format!(
                        "the waiter shows as {:?} at position {}",
                        e.entry.kind, e.position
                    )));
                }
                return Ok("a second owner waits at position 1".into());
            }
            if Instant::now() > deadline {
                return Err(fail("the waiting acquire never showed in the queue"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    run.step("hand-off", async || {
        let a = first.as_ref().ok_or_else(|| fail("no first lease"))?;
        let resp = backend.unlock(&r, &lease(a)?).await?;
        match &resp.granted_to {
            Some(g) if g.entry.owner.owner == "tflock-selftest-b" => {}
            other => {
                return Err(fail(format!(
                    "unlock handed the lock to {:?}, not to the waiter",
                    other.as_ref().map(|g| &g.entry.owner.owner)
                )));
            }
        }
        let handle = waiter.take().ok_or_else(|| fail("no waiter"))?;
        let granted = tokio::time::timeout(SOON, handle)
            .await
            .map_err(|_| fail("the waiter was not woken"))?
            .map_err(|e| fail(format!("the waiter failed: {e}")))??;
        let lock = granted
            .lock
            .filter(|_| granted.acquired)
            .ok_or_else(|| fail("the waiter's call ended without the lock"))?;
        if lock.fencing_token <= a.fencing_token {
            return Err(fail(format!(
                "the hand-off's fencing token {} is not above {}",
                lock.fencing_token, a.fencing_token
            )));
        }
        let d = format!(
            "unlock woke the waiter with fencing token {} (was {})",
            lock.fencing_token, a.fencing_token
        );
        second = Some(lock);
        Ok(d)
    })
    .await;

    run.step("refresh", async || {
        let b = second.as_ref().ok_or_else(|| fail("no second lease"))?;
        let refreshed = backend
            .refresh_lock(&r, &lease(b)?, Duration::from_secs(120))
            .await?;
        if refreshed.expires_at <= b.expires_at {
            return Err(fail("the expiry did not move"));
        }
        Ok(format!(
            "expiry pushed by {:.1}s",
            refreshed.expires_at.since(b.expires_at).as_secs_f64()
        ))
    })
    .await;

    run.step("ttl expiry", async || {
        let b = second.as_ref().ok_or_else(|| fail("no second lease"))?;
        let ttl = Duration::from_millis(500);
        backend.refresh_lock(&r, &lease(b)?, ttl).await?;
        let set = Instant::now();
        let deadline = set + ttl + SOON;
        loop {
            if backend.get_lock(&r).await?.is_none() {
                return Ok(format!(
                    "a {}ms lease was gone after {}",
                    ttl.as_millis(),
                    ms(set.elapsed())
                ));
            }
            if Instant::now() > deadline {
                return Err(fail("the lease outlived its TTL"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    run.step("unlock", async || {
        let resp = backend
            .try_lock(
                LockRequest::new(r.clone(), "tflock-selftest-c").with_ttl(Duration::from_secs(60)),
            )
            .await?;
        let lock = resp
            .lock
            .filter(|_| resp.acquired)
            .ok_or_else(|| fail("the expired resource was not granted again"))?;
        let released = backend.unlock(&r, &lease(&lock)?).await?;
        if backend.get_lock(&r).await?.is_some() {
            return Err(fail("the resource is still locked after unlock"));
        }
        Ok(format!(
            "released fencing token {}; the resource is free",
            released.released.fencing_token
        ))
    })
    .await;

    // Clean-up runs whatever happened before.
    run.failed = false;
    let had_failed = run.steps.iter().any(|s| !s.ok);
    if let Some(h) = waiter.take() {
        h.abort();
    }
    run.step("cleanup", async || {
        let status = backend.get_queue_status(&r).await?;
        let mut removed = 0;
        for e in &status.entries {
            if backend
                .cancel_queue_entry(&e.entry.entry_id, None)
                .await
                .is_ok()
            {
                removed += 1;
            }
        }
        if status.lock.is_some() {
            match backend.force_unlock(&r, None).await {
                Ok(_) | Err(UnlockError::NotFound) => removed += 1,
                Err(e) => return Err(e.into()),
            }
        }
        let after = backend.get_queue_status(&r).await?;
        if after.lock.is_some() || !after.entries.is_empty() {
            return Err(fail(
                "the scratch resource still has a lock or queue entries",
            ));
        }
        Ok(if removed == 0 {
            "nothing left behind".into()
        } else {
            format!("removed {removed} leftover(s)")
        })
    })
    .await;
    let passed = !had_failed && run.steps.iter().all(|s| s.ok);
    let unavailable = run.steps.iter().any(|s| s.unavailable);

    let verdict = Verdict {
        target,
        resource: run.resource.lock_key(),
        passed,
        steps: &run.steps,
    };
    out.emit(&verdict, || {
        let rows: Vec<Vec<String>> = run
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.step.to_string(),
                    if s.ok { "ok".into() } else { "FAILED".into() },
                    ms(s.latency),
                    s.detail.clone(),
                ]
            })
            .collect();
        let failed = run.steps.iter().filter(|s| !s.ok).count();
        let mut t = table(&["STEP", "RESULT", "LATENCY", "DETAIL"], &rows);
        if passed {
            t.push_str(&format!(
                "PASS: all {} steps passed on {target}\n",
                run.steps.len()
            ));
        } else {
            t.push_str(&format!(
                "FAIL: {failed} of {} steps failed on {target}\n",
                run.steps.len()
            ));
        }
        t
    })?;
    Ok(if passed {
        Exit::Success
    } else if unavailable {
        Exit::Unavailable
    } else {
        Exit::Error
    })
}
