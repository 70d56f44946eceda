//! The measures themselves, over any [`Api`]: uncontended pairs, the contention loop
//! (hand-off latency, fairness, anti-starvation) and the scale measures. Every loop
//! ends at a deadline fixed before it starts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures::future::join_all;
use tflock_core::{LockRequest, Priority, Resource, SharedBackend};
use tokio::sync::watch;

use crate::api::Api;
use crate::stats::Latency;

/// Time for every client to be spawned and ready before a measure starts.
const START_DELAY: Duration = Duration::from_millis(200);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `clients` tasks, each on its own resource, acquire and release in a loop for
/// `duration`. Returns pairs per second and the pairs made (warm-up included).
pub async fn pairs(
    api: Arc<Api>,
    clients: usize,
    duration: Duration,
    tag: &str,
) -> Result<(f64, u64)> {
    let resources: Vec<Resource> = (0..clients)
        .map(|i| Resource::new("bench/pairs", format!("{tag}/c{i}"), "default", ""))
        .collect::<Result<_, _>>()?;
    // Warm-up: one pair each, so connections exist before the clock starts.
    join_all((0..clients).map(|i| {
        let (api, r) = (api.clone(), resources[i].clone());
        async move {
            let h = api.acquire_now(i, &r).await?;
            api.release(i, &r, h).await
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>>>()?;
    let start = Instant::now() + START_DELAY;
    let stop = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (api, r) = (api.clone(), resources[i].clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                let mut n = 0u64;
                while Instant::now() < stop {
                    let h = api.acquire_now(i, &r).await?;
                    api.release(i, &r, h).await?;
                    n += 1;
                }
                Ok::<_, anyhow::Error>((n, Instant::now()))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut end = stop;
    for t in tasks {
        let (n, at) = t.await??;
        total += n;
        end = end.max(at);
    }
    Ok((
        total as f64 / (end - start).as_secs_f64(),
        total + clients as u64,
    ))
}

/// One contention run: `priorities.len()` clients on one resource.
pub struct ContendSpec {
    /// Base priority of each client (tflock only; peers have none).
    pub priorities: Vec<Priority>,
    /// How long each holder keeps the lock (slept on a blocking thread, which keeps
    /// to ~1 ms where tokio's timer would round up to the next tick).
    pub hold: Duration,
    pub duration: Duration,
    /// After releasing, wait until another client holds the lock before asking again
    /// (for polling peers, which would otherwise mostly re-take their own lock).
    pub step_back: bool,
    /// How long after the end waiters may still wait for their last grant.
    pub grace: Duration,
}

/// What a contention run saw; only grants before the end count.
#[derive(Debug, Default)]
pub struct ContendResult {
    pub counts: Vec<u64>,
    /// Each client's waits (ms), from its acquire call to its return.
    pub waits: Vec<Vec<f64>>,
    /// Release (just before the call) to the next holder's return, when the next
    /// holder is another client (ms).
    pub handoffs: Vec<f64>,
    /// Grants where the releaser itself was the next holder (not a hand-off).
    pub self_regrants: u64,
    /// Actual hold times (ms).
    pub holds: Vec<f64>,
    /// Acquires that ended at their deadline without a grant.
    pub timeouts: u64,
    /// Grants made while another client still held the lock (a broken lock).
    pub overlaps: u64,
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Shared {
    counts: Vec<u64>,
    waits: Vec<Vec<f64>>,
    handoffs: Vec<f64>,
    self_regrants: u64,
    holds: Vec<f64>,
    timeouts: u64,
    overlaps: u64,
    errors: Vec<String>,
    last_release: Option<(usize, Instant)>,
    /// Who holds the lock now, as the clients see it.
    holder: Option<usize>,
}

/// Runs the contention loop: every client acquires with its library's blocking
/// acquire, holds, releases (timestamping just before the release call), and asks
/// again; grants are timed against the last release.
pub async fn contend(api: Arc<Api>, r: Resource, spec: ContendSpec) -> ContendResult {
    let n = spec.priorities.len();
    let shared = Arc::new(Mutex::new(Shared {
        counts: vec![0; n],
        waits: vec![Vec::new(); n],
        ..Shared::default()
    }));
    let (grants_tx, grants_rx) = watch::channel(0u64);
    let grants_tx = Arc::new(grants_tx);
    let start = Instant::now() + START_DELAY + Duration::from_millis(n as u64);
    let stop = start + spec.duration;
    let deadline = stop + spec.grace;
    let hold = spec.hold;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (api, r, shared, grants_tx, mut grants_rx) = (
                api.clone(),
                r.clone(),
                shared.clone(),
                grants_tx.clone(),
                grants_rx.clone(),
            );
            let prio = spec.priorities[i];
            let step_back = spec.step_back;
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                let fail = |e: anyhow::Error| {
                    shared
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("client {i}: {e:#}"));
                };
                while Instant::now() < stop {
                    let asked = Instant::now();
                    let held = match api.acquire_wait(i, &r, prio, deadline).await {
                        Ok(Some(h)) => h,
                        Ok(None) => {
                            shared.lock().unwrap().timeouts += 1;
                            return;
                        }
                        Err(e) => return fail(e),
                    };
                    let got = Instant::now();
                    let g = {
                        let mut s = shared.lock().unwrap();
                        let last = s.last_release.take();
                        if s.holder.replace(i).is_some() {
                            s.overlaps += 1;
                        }
                        if got < stop {
                            s.counts[i] += 1;
                            s.waits[i].push(ms(got - asked));
                            match last {
                                Some((who, _)) if who == i => s.self_regrants += 1,
                                Some((_, at)) => s.handoffs.push(ms(got - at)),
                                None => {}
                            }
                        }
                        // Only the holder counts up, so this is this grant's number.
                        grants_tx.send_modify(|g| *g += 1);
                        *grants_tx.borrow()
                    };
                    if !hold.is_zero() && got < stop {
                        let t = Instant::now();
                        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(hold)).await;
                        shared.lock().unwrap().holds.push(ms(t.elapsed()));
                    }
                    {
                        let mut s = shared.lock().unwrap();
                        s.holder = None;
                        s.last_release = Some((i, Instant::now()));
                    }
                    if let Err(e) = api.release(i, &r, held).await {
                        return fail(e);
                    }
                    if step_back {
                        tokio::select! {
                            _ = grants_rx.wait_for(|&v| v != g) => {}
                            _ = tokio::time::sleep_until(stop.into()) => {}
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            shared
                .lock()
                .unwrap()
                .errors
                .push(format!("a client panicked: {e}"));
        }
    }
    let s = std::mem::take(&mut *shared.lock().unwrap());
    ContendResult {
        counts: s.counts,
        waits: s.waits,
        handoffs: s.handoffs,
        self_regrants: s.self_regrants,
        holds: s.holds,
        timeouts: s.timeouts,
        overlaps: s.overlaps,
        errors: s.errors,
    }
}

/// Acquires `n` locks (each on its own resource, 1 h TTL) with `conc` tasks; returns
/// the time it took.
pub async fn fill(api: Arc<Api>, n: usize, conc: usize) -> Result<Duration> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|t| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    let r = Resource::new("bench/scale", format!("p{i:07}"), "default", "")?;
                    match &*api {
                        Api::Library(b) => {
                            let resp = b
                                .try_lock(
                                    LockRequest::new(r, format!("bench/holder#{i}"))
                                        .with_ttl(Duration::from_secs(3600)),
                                )
                                .await?;
                            if !resp.acquired {
                                return Err(anyhow!("lock {i} was not granted"));
                            }
                        }
                        _ => return Err(anyhow!("fill needs the library")),
                    }
                    i += conc;
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// Pages through every held lock, `limit` per page. Returns (time, locks seen, pages).
pub async fn list_all(
    api: &Api,
    limit: usize,
    max_pages: usize,
) -> Result<(Duration, usize, usize)> {
    let started = Instant::now();
    let mut cursor = None;
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = api.list(cursor.take(), limit).await?;
        pages += 1;
        seen += page.locks.len();
        match page.next_cursor {
            Some(c) if pages < max_pages => cursor = Some(c),
            _ => break,
        }
    }
    Ok((started.elapsed(), seen, pages))
}

/// Enqueue and hand-off time with `depth` entries queued on one resource: a holder,
/// `depth` reservations, then `rounds` times: enqueue one more (timed), unlock (timed;
/// the lock goes to the head reservation in the same step), and the new holder collects
/// its lease with its reservation's request id (untimed). The queue stays at `depth`.
/// The request id a queue-depth reservation of `owner` is made (and collected) with,
/// unique to one measure (`run`): a request id used again by the same owner is a retry,
/// answered from what the first call made.
fn reservation_id(run: &str, owner: &str) -> String {
    format!("bench-rsv-{run}-{owner}")
}

pub async fn queue_depth(
    b: &SharedBackend,
    depth: usize,
    rounds: usize,
    tag: &str,
) -> Result<(Latency, Latency)> {
    let r = Resource::new("bench/queue", format!("{tag}/d{depth}"), "default", "")?;
    let ttl = Duration::from_secs(3600);
    let run = tflock_core::random_hex(8);
    let first = b
        .try_lock(LockRequest::new(r.clone(), "bench/holder").with_ttl(ttl))
        .await?;
    let mut lease = first
        .lock
        .and_then(|l| l.lease_id)
        .ok_or_else(|| anyhow!("the holder was not granted"))?;
    // Fill concurrently (64 at a time) so the embedded store batches the commits.
    let mut next = 0usize;
    while next < depth {
        let batch = (next..depth.min(next + 64)).map(|k| {
            let b = b.clone();
            let r = r.clone();
            let run = run.clone();
            async move {
                let owner = format!("bench/queued#{k}");
                b.try_lock(
                    LockRequest::new(r, owner.clone())
                        .with_ttl(ttl)
                        .with_request_id(reservation_id(&run, &owner))
                        .reserving(),
                )
                .await
            }
        });
        for resp in join_all(batch).await {
            let resp = resp?;
            if resp.queue.is_none() {
                return Err(anyhow!("a reservation was not queued: {resp:?}"));
            }
        }
        next = depth.min(next + 64);
    }
    let mut enq = Vec::with_capacity(rounds);
    let mut ho = Vec::with_capacity(rounds);
    for k in 0..rounds {
        let t = Instant::now();
        let owner = format!("bench/queued#{}", depth + k);
        let resp = b
            .try_lock(
                LockRequest::new(r.clone(), owner.clone())
                    .with_ttl(ttl)
                    .with_request_id(reservation_id(&run, &owner))
                    .reserving(),
            )
            .await?;
        enq.push(ms(t.elapsed()));
        if resp.queue.is_none() {
            return Err(anyhow!("a reservation was not queued: {resp:?}"));
        }
        let t = Instant::now();
        let out = b.unlock(&r, &lease).await?;
        ho.push(ms(t.elapsed()));
        let to = out
            .granted_to
            .ok_or_else(|| anyhow!("the unlock did not hand the lock on"))?
            .entry
            .owner
            .owner;
        // The owner string proves nothing: the reservation's request id collects the
        // grant (docs/contract.md, rule 5).
        let id = reservation_id(&run, &to);
        let relock = b
            .try_lock(
                LockRequest::new(r.clone(), to)
                    .with_ttl(ttl)
                    .with_request_id(id),
            )
            .await?;
        lease = relock
            .lock
            .and_then(|l| l.lease_id)
            .ok_or_else(|| anyhow!("the reservation's owner does not hold the lock"))?;
    }
    Ok((Latency::of(enq), Latency::of(ho)))
}
