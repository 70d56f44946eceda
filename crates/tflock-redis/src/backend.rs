//! What every operation shares: [`Inner`] (the connection, the scripts, the
//! settings, the event fan-out) and its call runner: a script call with the common
//! `ARGV[1..6]` in front of its own typed arguments ([`ScriptArgs`]), the events it
//! reports, `WAIT` for `min_replicas_ack`, and the rollback of an unconfirmed grant
//! (also when its caller goes away: [`RollbackGuard`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tflock_core::{BackendError, LockEvent, LockSettings, SharedClock};
use tokio::sync::{Notify, broadcast, watch};

use crate::args::{Prelude, RollbackArgs, ScriptArgs};
use crate::conn::Connector;
use crate::generation::Generations;
use crate::keys::BUCKETS;
use crate::layout::LayoutReport;
use crate::options::{EventChannels, SweepRole, SweepStats};
use crate::reply::{Published, RawLock, Reply, StatusReply, decode};
use crate::scripts::Scripts;

/// What the operations, the waiters' guards and the sweeper share.
pub(crate) struct Inner {
    pub conn: Connector,
    pub scripts: Scripts,
    pub buckets: Vec<String>,
    pub settings: LockSettings,
    pub clock: SharedClock,
    /// True for the system clock: scripts then read Redis's `TIME`.
    pub system_clock: bool,
    pub events: broadcast::Sender<LockEvent>,
    pub closed: watch::Sender<bool>,
    pub handoffs: AtomicU64,
    pub expiries: AtomicU64,
    /// Wakes retry loops (queue disabled) when this backend released a lock.
    pub released: Notify,
    pub min_replicas_ack: u32,
    pub wait_timeout: Duration,
    pub description: serde_json::Map<String, serde_json::Value>,
    /// This backend's id, random at connect: it tags the events this backend's
    /// scripts publish (so it skips them when they come back), and is the node id the
    /// cluster manager registers by default.
    pub instance_id: String,
    pub key_prefix: String,
    /// Where this backend's scripts publish their events.
    pub channels: EventChannels,
    /// The scripts' `ARGV[6]`: `''`, or `c`/`s` and `instance_id`.
    pub publish_arg: String,
    /// Whether the relay of other backends' events runs (started on first subscribe).
    pub relay_started: AtomicBool,
    /// A publish refusal was logged already (logged once).
    pub publish_warned: AtomicBool,
    /// The node id stamped on waiters' entries (`enode`), so a cluster leader can
    /// remove them if this server dies; empty without a cluster manager.
    pub serving_node: Mutex<String>,
    pub sweep_role: watch::Sender<SweepRole>,
    pub sweep_stats: watch::Sender<SweepStats>,
    /// The buckets' generation markers as this server saw them (data loss).
    pub generations: Generations,
    /// Upgrade buckets of an older key layout when found (`BackendOptions`).
    pub upgrade_layout: bool,
    /// What connecting did to the key layout (`None` when it did not look).
    pub layout_report: Mutex<Option<LayoutReport>>,
    /// Resources recently found held by another owner (`held.rs`).
    pub held: crate::held::HeldHints,
}

impl Inner {
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub fn check_open(&self) -> Result<(), BackendError> {
        if self.is_closed() {
            Err(BackendError::Unavailable(
                "the Redis backend is closed".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// How long after a waiter's deadline the sweeper drops an entry whose server
    /// stopped looking after it.
    pub fn waiter_grace(&self) -> Duration {
        self.settings.claim_timeout + Duration::from_secs(60)
    }

    /// Runs the script of `args` on bucket `bucket` with the common arguments
    /// (`ARGV[1..6]`) in front of its own; publishes what it reports. Returns the
    /// reply and the connection generation it ran on.
    pub async fn run_gen<A: ScriptArgs>(
        &self,
        bucket: usize,
        args: &A,
    ) -> Result<(Reply<A::Reply>, u64), BackendError> {
        let seed = if A::SEEDED {
            tflock_core::random_hex(16)
        } else {
            String::new()
        };
        let prelude = Prelude {
            // The scripts' `now`: Redis's TIME for the system clock, else the
            // injected clock's instant.
            now: (!self.system_clock).then(|| self.clock.now()),
            claim_timeout: self.settings.claim_timeout,
            starvation_threshold: self.settings.starvation_threshold,
            max_boost: self.settings.max_priority_boost,
            seed: &seed,
            // Only changing (seeded) scripts cause events.
            publish: if A::SEEDED { &self.publish_arg } else { "" },
        };
        let mut argv = prelude.argv();
        argv.extend(args.argv());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let script = A::script(&self.scripts);
        let (json, generation) = self
            .conn
            .fcall(&self.scripts.library, script, &self.buckets[bucket], &argv)
            .await?;
        let mut reply: Reply<A::Reply> = decode(script.name, &json)?;
        self.publish(&mut reply);
        Ok((reply, generation))
    }

    pub async fn run<A: ScriptArgs>(
        &self,
        bucket: usize,
        args: &A,
    ) -> Result<Reply<A::Reply>, BackendError> {
        Ok(self.run_gen(bucket, args).await?.0)
    }

    /// Runs a script on all 64 buckets at once (the connection pipelines them; on a
    /// cluster they go to every primary).
    pub async fn run_all<A: ScriptArgs>(
        &self,
        args: &A,
    ) -> Result<Vec<Reply<A::Reply>>, BackendError> {
        join_all((0..BUCKETS).map(|b| self.run(b, args)))
            .await
            .into_iter()
            .collect()
    }

    fn publish<T>(&self, reply: &mut Reply<T>) {
        if let Some(e) = reply.puberr.take()
            && !self.publish_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "Redis refused to publish events for the other servers ({e}): their event \
                 streams miss this server's events (does the ACL user lack the channel, \
                 `&*`?)"
            );
        }
        if reply.ho > 0 {
            self.handoffs.fetch_add(reply.ho, Ordering::Relaxed);
        }
        let mut released = false;
        // Nobody listening: count, but build no events.
        let listened = self.events.receiver_count() > 0;
        for ev in reply.ev.drain(..) {
            if ev.is_expiry() {
                self.expiries.fetch_add(1, Ordering::Relaxed);
            }
            if ev.ends_a_lease() {
                self.held.forget(ev.resource_key());
            }
            if !listened {
                released |= ev.ends_a_lease();
                continue;
            }
            match ev.into_event() {
                Ok(e) => {
                    released |= matches!(
                        e.event,
                        tflock_core::EventKind::LockReleased | tflock_core::EventKind::LockExpired
                    );
                    let _ = self.events.send(e);
                }
                Err(e) => tracing::warn!("dropping an unreadable event: {e}"),
            }
        }
        if released {
            self.released.notify_waiters();
        }
    }

    /// The classic events channel: `<key_prefix>events`.
    pub fn classic_channel(&self) -> String {
        format!("{}events", self.key_prefix)
    }

    /// Re-broadcasts the events another backend published.
    pub fn relayed(&self, msg: Published) {
        let mut released = false;
        let listened = self.events.receiver_count() > 0;
        for ev in msg.ev {
            if ev.ends_a_lease() {
                released = true;
                self.held.forget(ev.resource_key());
            }
            if !listened {
                continue;
            }
            match ev.into_event() {
                Ok(e) => {
                    let _ = self.events.send(e);
                }
                Err(e) => tracing::warn!("dropping an unreadable relayed event: {e}"),
            }
        }
        // A retry loop (queue disabled) looks again when any server released a lock.
        if released {
            self.released.notify_waiters();
        }
    }

    /// `WAIT` for `min_replicas_ack` replicas on the connection (generation) a change
    /// was written on: `Ok` when confirmed (or not required), else what went wrong.
    async fn wait_acked(&self, bucket: usize, generation: u64) -> Result<(), String> {
        if self.min_replicas_ack == 0 {
            return Ok(());
        }
        let acked = self
            .conn
            .wait_replicas(
                generation,
                &self.buckets[bucket],
                self.min_replicas_ack,
                self.wait_timeout,
            )
            .await;
        match acked {
            Ok(n) if n >= u64::from(self.min_replicas_ack) => Ok(()),
            Ok(n) => Err(format!(
                "only {n} of the {} replicas required by redis.min_replicas_ack confirmed it",
                self.min_replicas_ack
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// With `min_replicas_ack`, a change that cannot be undone (refresh, re-lock,
    /// transfer, unlock) is acknowledged only once `WAIT` confirms it; unconfirmed, it
    /// is reported as unavailable. It stays made on the primary (see
    /// docs/redis-design.md, "Replication"): the caller must not count on it.
    pub async fn ensure_change_replicated(
        &self,
        bucket: usize,
        generation: u64,
        what: &str,
    ) -> Result<(), BackendError> {
        self.wait_acked(bucket, generation)
            .await
            .map_err(|problem| {
                BackendError::Unavailable(format!(
                    "the {what} is not confirmed by the replicas and may be lost in a failover: \
                 {problem}"
                ))
            })
    }

    fn spawn_rollback(self: Arc<Self>, bucket: usize, sk: String, lease: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move { self.rollback_retrying(bucket, &sk, &lease).await });
    }

    /// `rollback.lua` for an unconfirmed grant, retried while Redis cannot be reached
    /// (bounded like a waiter's abandon, see [`Inner::run_retrying`]).
    async fn rollback_retrying(&self, bucket: usize, sk: &str, lease: &str) {
        let args = RollbackArgs {
            storage_key: sk,
            lease,
        };
        self.run_retrying(bucket, &args, "rolling back an unconfirmed grant")
            .await;
    }

    /// Runs a clean-up script that must happen once Redis answers again (a rollback,
    /// a waiter's abandon): retried with back-off while Redis cannot be reached, until
    /// it ran, the backend closes, or `claim_timeout` plus a minute has passed, after
    /// which the sweeper has settled what the script would have.
    pub async fn run_retrying<A>(&self, bucket: usize, args: &A, what: &str)
    where
        A: ScriptArgs<Reply = StatusReply>,
    {
        let give_up = Instant::now() + self.settings.claim_timeout + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.run(bucket, args).await {
                Ok(_) => return,
                Err(BackendError::Unavailable(e))
                    if !self.is_closed() && Instant::now() + backoff < give_up =>
                {
                    tracing::debug!("{what} failed, retrying: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::warn!("{what} failed: {e}");
                    return;
                }
            }
        }
    }
}

/// Rolls a grant back when the call that waits for its replication goes away (its
/// future dropped during `WAIT`): nobody would know the lease, so it must not live on
/// for its whole TTL.
struct RollbackGuard {
    inner: Arc<Inner>,
    bucket: usize,
    sk: String,
    lease: String,
    armed: bool,
}

impl Drop for RollbackGuard {
    fn drop(&mut self) {
        if self.armed {
            let sk = std::mem::take(&mut self.sk);
            let lease = std::mem::take(&mut self.lease);
            self.inner.clone().spawn_rollback(self.bucket, sk, lease);
        }
    }
}

/// With `min_replicas_ack`, a grant counts only once `WAIT` confirms it; an
/// unconfirmed one is rolled back (handed on) and reported as unavailable, also when
/// the caller goes away during the `WAIT`.
pub(crate) async fn ensure_replicated(
    inner: &Arc<Inner>,
    bucket: usize,
    generation: u64,
    lock: &Option<RawLock>,
) -> Result<(), BackendError> {
    if inner.min_replicas_ack == 0 {
        return Ok(());
    }
    let Some(lock) = lock else { return Ok(()) };
    let mut guard = RollbackGuard {
        inner: inner.clone(),
        bucket,
        sk: lock.sk.clone(),
        lease: lock.lease.clone().unwrap_or_default(),
        armed: true,
    };
    let problem = match inner.wait_acked(bucket, generation).await {
        Ok(()) => {
            guard.armed = false;
            return Ok(());
        }
        Err(p) => p,
    };
    guard.armed = false;
    inner
        .rollback_retrying(bucket, &guard.sk, &guard.lease)
        .await;
    Err(BackendError::Unavailable(format!(
        "the grant was rolled back: {problem}"
    )))
}
