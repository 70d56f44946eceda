//! tflock's Redis backend: the locking contract on Redis standalone, Sentinel and
//! Cluster, as designed in `docs/redis-design.md`.
//!
//! # Layout
//!
//! - `lua/*.lua`: every state change (and every read that needs the clock) is one
//!   Lua script, so each operation is atomic on Redis. `prelude.lua` (time, keys,
//!   grant order, settle, hand-off, grant, events) is prepended to each at build time.
//! - [`scripts`]: the scripts and their SHA1s.
//! - [`conn`]: connections (standalone, Sentinel, Cluster), reconnects, timeouts,
//!   EVALSHA with `NOSCRIPT` recovery, the waiters' BLPOP pool and `WAIT`.
//! - [`keys`]: the 64 buckets and their hash-tagged key prefixes.
//! - [`reply`]: the scripts' JSON replies and their translation into core types.
//! - [`config`]: [`RedisConfig`] and [`ConnectError`].
//! - `duty`: who sweeps ([`SweepRole`]: by itself, or fenced as a cluster's leader),
//!   the sweeper task and the leader's fences.
//! - `relay`: the events of other backends on the same Redis, received over pub/sub
//!   and re-broadcast on [`Backend::subscribe`].
//! - this file: [`RedisBackend`], the [`Backend`] implementation: validation, the
//!   waiter's blocking call and its drop guard, the retry loop without a queue, event
//!   publishing, `min_replicas_ack`, export and import (checking a snapshot before the
//!   first write), the health check's server details, and the hooks the cluster
//!   manager (`tflock-cluster`) uses.
//!
//! # Time
//!
//! Expiry is decided inside the scripts on Redis's `TIME`. When the backend is given
//! a clock that is not the system clock ([`tflock_core::Clock::is_system`] false, e.g.
//! the conformance suite's `ManualClock`), that clock is the time source instead: its
//! instant is sent as the scripts' `now`, so tests move time without sleeping and see
//! exact instants.

pub mod config;
pub mod conn;
pub mod keys;
pub mod reply;
pub mod scripts;

mod duty;
mod generation;
mod relay;
mod sentinel_watch;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json, json};
use tflock_core::{
    Backend, BackendError, BackendHealth, BackendMetrics, CancelError, EntryKind, FencingToken,
    ImportError, ImportOptions, ImportReport, InvalidRequest, LeaseId, Lock, LockEvent, LockFilter,
    LockPage, LockRequest, LockResponse, LockSettings, NotAcquiredReason, Owner,
    PullUnlockResponse, QueryError, QueueEntry, QueueEntryView, QueueStatus, RefreshError,
    Resource, ResourceSnapshot, SharedClock, Snapshot, Timestamp, TransferAuth, TransferError,
    TryLockError, UnlockError, UnlockResponse,
};
use tokio::sync::{Notify, broadcast, watch};

pub use crate::config::{AuthMethod, ConnectError, RedisConfig, SentinelConfig};
use crate::conn::{Connector, NodeReply};
pub use crate::duty::{LeaderAuthority, SweepRole, SweepStats};
use crate::generation::{Generations, Loss};
use crate::keys::{BUCKETS, bucket_of, bucket_of_entry, bucket_prefixes};
pub use crate::relay::{EventChannels, sharded_channels};
use crate::reply::{
    CancelReply, ExportReply, GenerationReply, ImportReply, ListReply, LockReply, Published,
    PullReply, QueueReply, RawExported, RawLock, Reply, StatsReply, StatusReply, TryLockReply,
    UnlockReply, UserQueueReply, decode,
};
use crate::scripts::{Script, Scripts};

/// The sweeper runs at least this often, so an expired lease with waiters is handed
/// on within this long even when nobody touches it.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most items of each kind one sweep call handles per bucket (bounds script time).
pub(crate) const SWEEP_LIMIT: &str = "500";
/// Most index members one list call scans per bucket (bounds script time).
const LIST_SCAN: &str = "2000";
/// Fewest locks one list call asks a bucket for (see `list_locks`).
const LIST_MIN_BATCH: usize = 8;
/// Most resources one export call returns per bucket (bounds script time).
const EXPORT_PAGE: &str = "200";
/// Import scripts in flight at once (one per resource, pipelined).
const IMPORT_CONCURRENCY: usize = 32;
/// How long a data-loss check waits for replicas to confirm its markers (with
/// `min_replicas_ack`): short, so a replica that is down never slows the health check.
const GENERATION_WAIT: Duration = Duration::from_millis(250);
/// Lua numbers are doubles: integers from 2^53 on are not kept exactly.
const LUA_EXACT: u64 = 1 << 53;

/// One bucket's place in a listing's merge: the locks it returned that are not
/// merged yet, and where its next batch starts (it is known up to there).
struct ListCursor {
    after: String,
    buffered: VecDeque<RawLock>,
    done: bool,
}

/// What the operations, the waiters' guards and the sweeper share.
struct Inner {
    conn: Connector,
    scripts: Scripts,
    buckets: Vec<String>,
    settings: LockSettings,
    clock: SharedClock,
    /// True for the system clock: scripts then read Redis's `TIME`.
    system_clock: bool,
    claim_us: String,
    starve_us: String,
    max_boost: String,
    retention_us: String,
    max_queue: String,
    /// How long after a waiter's deadline the sweeper drops an entry whose server
    /// stopped looking after it.
    waiter_grace_us: String,
    events: broadcast::Sender<LockEvent>,
    closed: watch::Sender<bool>,
    handoffs: AtomicU64,
    expiries: AtomicU64,
    /// Wakes retry loops (queue disabled) when this backend released a lock.
    released: Notify,
    min_replicas_ack: u32,
    wait_timeout: Duration,
    description: serde_json::Map<String, serde_json::Value>,
    /// This backend's id, random at connect: it tags the events this backend's
    /// scripts publish (so it skips them when they come back), and is the node id the
    /// cluster manager registers by default.
    instance_id: String,
    key_prefix: String,
    /// Where this backend's scripts publish their events.
    channels: EventChannels,
    /// The scripts' `ARGV[6]`: `''`, or `c`/`s` and `instance_id`.
    publish_arg: String,
    /// Whether the relay of other backends' events runs (started on first subscribe).
    relay_started: AtomicBool,
    /// A publish refusal was logged already (logged once).
    publish_warned: AtomicBool,
    /// The node id stamped on waiters' entries (`enode`), so a cluster leader can
    /// remove them if this server dies; empty without a cluster manager.
    serving_node: Mutex<String>,
    sweep_role: watch::Sender<SweepRole>,
    sweep_stats: watch::Sender<SweepStats>,
    /// `lock_delay` in µs, for the scripts.
    lock_delay_us: String,
    /// The buckets' generation markers as this server saw them (data loss).
    generations: Generations,
}

/// How a backend starts; [`RedisBackend::connect`] uses the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackendOptions {
    /// Who sweeps; default [`SweepRole::SelfSweep`]. A cluster manager sets it later
    /// anyway ([`RedisBackend::set_sweep_role`]); starting as `Follower` avoids one
    /// unfenced sweep before it does.
    pub sweep: SweepRole,
    /// Publish this backend's events for other backends and relay theirs (default
    /// true). Off, [`Backend::subscribe`] carries this backend's own events only.
    pub share_events: bool,
    /// Which pub/sub to use; default (`None`) sharded on a Redis Cluster that has it,
    /// classic elsewhere. `Some(Classic)` forces classic pub/sub on a cluster too (to
    /// compare their cost); `Sharded` is only honoured on a cluster. Every backend
    /// sharing a store must use the same kind.
    pub channels: Option<EventChannels>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            sweep: SweepRole::SelfSweep,
            share_events: true,
            channels: None,
        }
    }
}

impl BackendOptions {
    pub fn sweep(mut self, role: SweepRole) -> Self {
        self.sweep = role;
        self
    }

    pub fn share_events(mut self, on: bool) -> Self {
        self.share_events = on;
        self
    }

    pub fn channels(mut self, channels: EventChannels) -> Self {
        self.channels = Some(channels);
        self
    }
}

/// The Redis backend. Cheap to share behind an `Arc`.
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("mode", &self.inner.conn.mode())
            .field("key_prefix", &self.inner.description.get("key_prefix"))
            .finish()
    }
}

fn us(d: Duration) -> String {
    d.as_micros().to_string()
}

/// Whether the (cluster's) Redis has sharded pub/sub (Redis 7: `SPUBLISH`).
async fn supports_sharded_pubsub(conn: &Connector) -> bool {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("INFO").arg("SPUBLISH");
    match conn.call::<redis::Value>(&cmd).await {
        Ok((redis::Value::Array(items), _)) => items
            .first()
            .is_some_and(|v| !matches!(v, redis::Value::Nil)),
        _ => false,
    }
}

/// Names the setting behind a failed start-up connection.
fn describe_connect_error(cfg: &RedisConfig, e: &redis::RedisError) -> ConnectError {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    let setting = if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || lower.contains("wrongpass")
        || lower.contains("noauth")
        || lower.contains("invalid password")
        || lower.contains("invalid username-password")
        || lower.contains("authentication")
    {
        "redis.password"
    } else if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("tls")
        || lower.contains("handshake")
    {
        "redis.tls_ca_file"
    } else if lower.contains("noperm") {
        "redis.username"
    } else if cfg.sentinel.enabled() {
        if lower.contains("knows no master named") {
            "redis.sentinel.master_name"
        } else {
            "redis.sentinel.addresses"
        }
    } else {
        "redis.addresses"
    };
    let what = match setting {
        "redis.password" if cfg.auth_method == AuthMethod::Acl => {
            "Redis refused the credentials (check redis.username and redis.password)"
        }
        "redis.password" => "Redis refused the password",
        "redis.tls_ca_file" => {
            "the TLS handshake failed (is the server's certificate signed by this CA?)"
        }
        "redis.username" => "the user lacks a permission tflock needs",
        _ => "cannot reach Redis",
    };
    ConnectError::new(setting, format!("{what}: {msg}"))
}

impl RedisBackend {
    /// Connects to Redis, checks that the scripts and keys are usable with these
    /// credentials, and starts the expiry sweeper (sweeping by itself). Errors name
    /// the setting at fault.
    pub async fn connect(
        config: RedisConfig,
        settings: LockSettings,
        clock: SharedClock,
    ) -> Result<Arc<RedisBackend>, ConnectError> {
        Self::connect_with(config, settings, clock, BackendOptions::default()).await
    }

    /// [`RedisBackend::connect`] with options.
    pub async fn connect_with(
        config: RedisConfig,
        settings: LockSettings,
        clock: SharedClock,
        options: BackendOptions,
    ) -> Result<Arc<RedisBackend>, ConnectError> {
        settings
            .validate()
            .map_err(|e| ConnectError::new(e.field, e.message))?;
        config.validate()?;
        // redis-rs's rustls needs a process-wide crypto provider; another crate may
        // have installed one already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let conn = Connector::new(&config)?;
        conn.connect_now()
            .await
            .map_err(|e| describe_connect_error(&config, &e))?;

        let system_clock = clock.is_system();
        let persistence = persistence(&conn).await;
        if persistence == "none" {
            if config.require_persistence {
                return Err(ConnectError::new(
                    "redis.require_persistence",
                    "Redis keeps neither an AOF nor RDB snapshots (appendonly no, save \"\"): \
                     a restart loses every lock and queue; turn on appendonly (or save), or \
                     set require_persistence: false to start anyway",
                ));
            }
            tracing::warn!(
                "REDIS HAS NO PERSISTENCE (appendonly no, save \"\"): a Redis restart loses \
                 every lock and queue. tflock detects the loss and keeps fencing tokens going \
                 up, but holders lose their locks; turn on appendonly yes (or set \
                 require_persistence: true to refuse such a Redis)"
            );
        }
        let mut description = serde_json::Map::new();
        description.insert("persistence".into(), persistence.into());
        description.insert("mode".into(), conn.mode().into());
        description.insert("key_prefix".into(), config.key_prefix.clone().into());
        let addrs = if config.sentinel.enabled() {
            &config.sentinel.addresses
        } else {
            &config.addresses
        };
        description.insert("addresses".into(), addrs.clone().into());
        description.insert("tls".into(), config.tls_enabled.into());
        description.insert("min_replicas_ack".into(), config.min_replicas_ack.into());
        let (events, _) = broadcast::channel(4096);
        let cluster = conn.mode() == "cluster";
        let channels = match options.channels {
            _ if !options.share_events => EventChannels::Off,
            Some(EventChannels::Off) => EventChannels::Off,
            Some(EventChannels::Classic) => EventChannels::Classic,
            Some(EventChannels::Sharded) | None
                if cluster && supports_sharded_pubsub(&conn).await =>
            {
                EventChannels::Sharded
            }
            _ => EventChannels::Classic,
        };
        let instance_id = tflock_core::random_hex(8);
        let publish_arg = match channels {
            EventChannels::Off => String::new(),
            EventChannels::Classic => format!("c{instance_id}"),
            EventChannels::Sharded => format!("s{instance_id}"),
        };
        description.insert("events".into(), channels.as_str().into());
        let inner = Arc::new(Inner {
            conn,
            scripts: Scripts::load(),
            buckets: bucket_prefixes(&config.key_prefix),
            claim_us: us(settings.claim_timeout),
            lock_delay_us: us(settings.lock_delay),
            starve_us: us(settings.starvation_threshold),
            max_boost: settings.max_priority_boost.to_string(),
            retention_us: us(settings.request_id_retention),
            max_queue: settings.max_queue_size.to_string(),
            waiter_grace_us: us(settings.claim_timeout + Duration::from_secs(60)),
            settings,
            clock,
            system_clock,
            events,
            closed: watch::channel(false).0,
            handoffs: AtomicU64::new(0),
            expiries: AtomicU64::new(0),
            released: Notify::new(),
            min_replicas_ack: config.min_replicas_ack,
            wait_timeout: config.write_timeout.min(config.read_timeout),
            description,
            instance_id,
            key_prefix: config.key_prefix.clone(),
            channels,
            publish_arg,
            relay_started: AtomicBool::new(false),
            publish_warned: AtomicBool::new(false),
            serving_node: Mutex::new(String::new()),
            sweep_role: watch::channel(options.sweep).0,
            sweep_stats: watch::channel(SweepStats::default()).0,
            generations: Generations::new(),
        });
        // A read on one bucket proves scripting and the key prefix are allowed to
        // these credentials (an ACL user may be limited to some keys or commands).
        if let Err(e) = inner
            .run::<StatsReply>(&inner.scripts.stats, 0, &[], false)
            .await
        {
            let m = e.to_string();
            let lower = m.to_ascii_lowercase();
            let setting = if lower.contains("noperm") && lower.contains("key") {
                "redis.key_prefix"
            } else if lower.contains("noperm") {
                "redis.username"
            } else {
                "redis.addresses"
            };
            return Err(ConnectError::new(
                setting,
                format!("Redis refused tflock's scripts: {m}"),
            ));
        }
        let backend = RedisBackend { inner };
        backend.check_eviction_policy().await;
        // The markers this server compares against from now on (created where none
        // is: a new store, or one from before markers existed).
        if let Err(e) = backend.inner.check_generations().await {
            tracing::warn!("reading the data-loss markers failed (the health check retries): {e}");
        }
        tokio::spawn(duty::sweeper(Arc::downgrade(&backend.inner)));
        sentinel_watch::spawn(&backend.inner);
        Ok(Arc::new(backend))
    }

    /// This backend's id (random at connect): its published events carry it, and the
    /// cluster manager registers the server under it unless told another id.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// The configured `key_prefix`.
    pub fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }

    /// The lock settings this backend runs with.
    pub fn settings(&self) -> &LockSettings {
        &self.inner.settings
    }

    /// `read_timeout`: every call to Redis answers within about this.
    pub fn read_timeout(&self) -> Duration {
        self.inner.conn.read_timeout()
    }

    /// Where this backend publishes its events for the other servers.
    pub fn event_channels(&self) -> EventChannels {
        self.inner.channels
    }

    /// Hand-offs and expiries this backend's scripts made since it started.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.inner.handoffs.load(Ordering::Relaxed),
            self.inner.expiries.load(Ordering::Relaxed),
        )
    }

    /// Who sweeps through this backend (see [`SweepRole`]).
    pub fn sweep_role(&self) -> SweepRole {
        self.inner.sweep_role.borrow().clone()
    }

    /// Changes who sweeps. Renewing a leader's lease (same epoch, later
    /// `valid_until`) does not trigger a sweep by itself.
    pub fn set_sweep_role(&self, role: SweepRole) {
        self.inner.set_sweep_role(role);
    }

    /// Watches the sweep role: the sweeper turns `Leader` into `Follower` by itself
    /// when a bucket refuses its epoch.
    pub fn watch_sweep_role(&self) -> watch::Receiver<SweepRole> {
        self.inner.sweep_role.subscribe()
    }

    /// What this backend's sweeps did, including stale refusals.
    pub fn sweep_stats(&self) -> watch::Receiver<SweepStats> {
        self.inner.sweep_stats.subscribe()
    }

    /// A newly elected leader claims every bucket for `epoch` (`fence.lua`) before
    /// any duty. `Ok(None)`: all 64 fenced; `Ok(Some(fence))`: a bucket has seen a
    /// higher epoch, so this leader is stale and must not lead.
    pub async fn fence_all(&self, epoch: u64) -> Result<Option<u64>, BackendError> {
        self.inner.check_open()?;
        self.inner.fence_all(epoch).await
    }

    /// Stamps the waiters this backend queues from now on with `node` (the cluster
    /// manager's node id), so the leader can remove their entries if this server is
    /// declared dead; `None` stops stamping.
    pub fn set_serving_node(&self, node: Option<&str>) {
        *self
            .inner
            .serving_node
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = node.unwrap_or_default().to_string();
    }

    /// Runs a script that is not one of the backend's own (the cluster manager's
    /// registry) with one key, `key`, on this backend's connection: EVALSHA, EVAL when
    /// the node lacks it. Returns the script's string reply. Bounded by `read_timeout`.
    pub async fn eval(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<String, BackendError> {
        self.inner.check_open()?;
        Ok(self.inner.conn.eval(script, key, args).await?.0)
    }

    /// [`RedisBackend::eval`] for a script that changes data (the Terraform state
    /// store's writes): with `min_replicas_ack`, it answers only once `WAIT` on the
    /// connection the script ran on confirms that many replicas, like a grant.
    /// Unconfirmed, it is `Unavailable`, though the change stays made on the primary
    /// (docs/redis-design.md, "Replication"): the caller must not count on it.
    pub async fn eval_acked(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<String, BackendError> {
        self.inner.check_open()?;
        let (reply, generation) = self.inner.conn.eval(script, key, args).await?;
        let required = self.inner.min_replicas_ack;
        if required > 0 {
            let acked = self
                .inner
                .conn
                .wait_replicas(generation, key, required, self.inner.wait_timeout)
                .await?;
            if acked < u64::from(required) {
                return Err(BackendError::Unavailable(format!(
                    "{}: only {acked} of the {required} replicas required by \
                     redis.min_replicas_ack confirmed it; it may be lost in a failover",
                    script.name
                )));
            }
        }
        Ok(reply)
    }

    /// `standalone`, `sentinel` or `cluster`.
    pub fn mode(&self) -> &'static str {
        self.inner.conn.mode()
    }

    /// Warns when Redis may evict any key under memory pressure (`allkeys-*`, as the
    /// spec's tuning example suggests): an evicted token key would let a fencing
    /// token be granted twice. Best effort: managed Redis often refuses CONFIG.
    async fn check_eviction_policy(&self) {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        if let Ok((reply, _)) = self.inner.conn.call::<Vec<String>>(&cmd).await
            && let Some(policy) = reply.get(1)
            && policy.starts_with("allkeys")
        {
            tracing::warn!(
                "Redis uses maxmemory-policy {policy}: under memory pressure it may evict lock \
                 and fencing-token keys, which breaks the locking guarantees; use noeviction"
            );
        }
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        // Stops the sweeper even without close().
        self.inner.closed.send_replace(true);
    }
}

/// A resolved TryLock mode.
#[derive(Clone, Copy)]
struct Mode {
    code: &'static str,
    span: Duration,
}

impl Inner {
    /// Checks every bucket's generation marker (generation.lua) against what this
    /// server saw, and reports a loss once however many buckets show it. Returns the
    /// loss this check found, if any. A bucket whose check failed keeps its id and
    /// skips the `seen` comparison next time (its write may or may not have landed).
    async fn check_generations(&self) -> Result<Option<Loss>, BackendError> {
        let gens = &self.generations;
        let mut state = gens.state.lock().await;
        let count = (gens.count.fetch_add(1, Ordering::Relaxed) + 1).to_string();
        let replies = join_all(state.iter().enumerate().map(|(b, g)| {
            let fresh = tflock_core::random_hex(16);
            let count = &count;
            async move {
                let args = [
                    g.id.as_str(),
                    fresh.as_str(),
                    self.lock_delay_us.as_str(),
                    self.instance_id.as_str(),
                    g.seen.as_str(),
                    count.as_str(),
                ];
                let (reply, generation) = self
                    .run_gen::<GenerationReply>(&self.scripts.generation, b, &args, false)
                    .await?;
                // With min_replicas_ack, a `seen` the replicas did not confirm may be
                // lost in a failover that loses no confirmed change: it is not
                // compared next time (no false alarm). Briefly: a replica that is down
                // must not make the health check slow.
                let acked = self.min_replicas_ack == 0
                    || self
                        .conn
                        .wait_replicas(
                            generation,
                            &self.buckets[b],
                            self.min_replicas_ack,
                            GENERATION_WAIT,
                        )
                        .await
                        .is_ok_and(|n| n >= u64::from(self.min_replicas_ack));
                Ok::<_, BackendError>((reply, acked))
            }
        }))
        .await;
        let mut loss: Option<Loss> = None;
        let mut failed = None;
        for (b, r) in replies.into_iter().enumerate() {
            match r {
                Ok((r, acked)) => {
                    let r = r.body;
                    if !r.lost.is_empty() {
                        let l = loss.get_or_insert_with(|| Loss {
                            at: Timestamp(r.lost_at.0),
                            hold_until: Timestamp(r.hold.0),
                            buckets: 0,
                            found: Default::default(),
                        });
                        l.buckets += 1;
                        l.at = l.at.min(Timestamp(r.lost_at.0));
                        l.hold_until = l.hold_until.max(Timestamp(r.hold.0));
                        l.found.insert(r.lost.clone());
                    }
                    gens.hold_until.fetch_max(r.hold.0, Ordering::Relaxed);
                    state[b] = generation::BucketGeneration {
                        id: r.id,
                        seen: if acked { r.seen } else { String::new() },
                    };
                    gens.known[b].store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    state[b].seen.clear();
                    failed = Some(e);
                }
            }
        }
        drop(state);
        if let Some(l) = &loss {
            let event = gens.report(l.clone());
            let _ = self.events.send(event);
        }
        match (loss, failed) {
            (None, Some(e)) => Err(e),
            (loss, _) => Ok(loss),
        }
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn check_open(&self) -> Result<(), BackendError> {
        if self.is_closed() {
            Err(BackendError::Unavailable(
                "the Redis backend is closed".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// The scripts' `now`: empty (Redis's TIME) for the system clock, else the
    /// injected clock's instant.
    fn now_arg(&self) -> String {
        if self.system_clock {
            String::new()
        } else {
            self.clock.now().as_micros().to_string()
        }
    }

    /// Runs `script` on bucket `bucket` with the common arguments in front of
    /// `args`; publishes what it reports. Returns the reply and the connection
    /// generation it ran on.
    async fn run_gen<T: DeserializeOwned>(
        &self,
        script: &Script,
        bucket: usize,
        args: &[&str],
        seeded: bool,
    ) -> Result<(Reply<T>, u64), BackendError> {
        let now = self.now_arg();
        let seed = if seeded {
            tflock_core::random_hex(16)
        } else {
            String::new()
        };
        // Only changing (seeded) scripts cause events.
        let publish = if seeded {
            self.publish_arg.as_str()
        } else {
            ""
        };
        let mut all: Vec<&str> = Vec::with_capacity(6 + args.len());
        all.extend_from_slice(&[
            &now,
            &self.claim_us,
            &self.starve_us,
            &self.max_boost,
            &seed,
            publish,
        ]);
        all.extend_from_slice(args);
        let (json, generation) = self.conn.eval(script, &self.buckets[bucket], &all).await?;
        let mut reply: Reply<T> = decode(script.name, &json)?;
        self.publish(&mut reply);
        Ok((reply, generation))
    }

    async fn run<T: DeserializeOwned>(
        &self,
        script: &Script,
        bucket: usize,
        args: &[&str],
        seeded: bool,
    ) -> Result<Reply<T>, BackendError> {
        Ok(self.run_gen(script, bucket, args, seeded).await?.0)
    }

    /// Runs a script on all 64 buckets at once (the connection pipelines them; on a
    /// cluster they go to every primary).
    async fn run_all<T: DeserializeOwned>(
        &self,
        script: &Script,
        args: &[&str],
        seeded: bool,
    ) -> Result<Vec<Reply<T>>, BackendError> {
        join_all((0..BUCKETS).map(|b| self.run::<T>(script, b, args, seeded)))
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
    fn classic_channel(&self) -> String {
        format!("{}events", self.key_prefix)
    }

    /// Re-broadcasts the events another backend published.
    fn relayed(&self, msg: Published) {
        let mut released = false;
        let listened = self.events.receiver_count() > 0;
        for ev in msg.ev {
            released |= ev.ends_a_lease();
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
    async fn ensure_change_replicated(
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
        let script = &self.scripts.rollback;
        self.run_retrying(
            script,
            bucket,
            &[sk, lease],
            "rolling back an unconfirmed grant",
        )
        .await;
    }

    /// Runs a clean-up script that must happen once Redis answers again (a rollback,
    /// a waiter's abandon): retried with back-off while Redis cannot be reached, until
    /// it ran, the backend closes, or `claim_timeout` plus a minute has passed, after
    /// which the sweeper has settled what the script would have.
    async fn run_retrying(&self, script: &Script, bucket: usize, args: &[&str], what: &str) {
        let give_up = Instant::now() + self.settings.claim_timeout + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.run::<StatusReply>(script, bucket, args, true).await {
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
async fn ensure_replicated(
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

impl Inner {
    /// One TryLock script call.
    async fn try_lock_once(
        &self,
        req: &LockRequest,
        ttl: Duration,
        mode: Mode,
        remember_all: bool,
        entry_id: &str,
    ) -> Result<(Reply<TryLockReply>, u64), BackendError> {
        let sk = req.resource.storage_key();
        let bucket = bucket_of(&sk);
        let meta = serde_json::to_string(&req.owner)
            .map_err(|e| BackendError::Internal(format!("owner metadata: {e}")))?;
        let pull = req
            .owner
            .pull
            .as_ref()
            .map(|p| p.num.to_string())
            .unwrap_or_default();
        let prio = req.priority.rank().to_string();
        let ttl_us = us(ttl);
        let span_us = us(mode.span);
        let grace = &self.waiter_grace_us;
        let node = self
            .serving_node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let args = [
            sk.as_str(),
            &req.owner.owner,
            req.owner.username().unwrap_or(""),
            &pull,
            &meta,
            &prio,
            &ttl_us,
            mode.code,
            &span_us,
            req.request_id.as_deref().unwrap_or(""),
            &self.max_queue,
            &self.retention_us,
            if self.settings.enable_priority_queue {
                "1"
            } else {
                "0"
            },
            if self.settings.enable_retries {
                "1"
            } else {
                "0"
            },
            grace,
            if remember_all { "a" } else { "g" },
            entry_id,
            &node,
            req.lease_id.as_ref().map(|l| l.as_str()).unwrap_or(""),
            &self.lock_delay_us,
            if self.generations.knows(bucket) {
                "1"
            } else {
                "0"
            },
        ];
        let r = self
            .run_gen::<TryLockReply>(&self.scripts.try_lock, bucket, &args, true)
            .await?;
        if r.0.body.lost.is_some() {
            // This call found a marker gone before any health check did: check every
            // bucket now, which reports the loss once and starts its delay everywhere.
            if let Err(e) = self.check_generations().await {
                tracing::warn!(
                    "checking the data-loss markers after a TryLock found one gone: {e}"
                );
            }
        }
        Ok(r)
    }

    /// The waiter's end when its caller went away: see `abandon.lua`.
    async fn abandon(&self, bucket: usize, sk: &str, entry_id: &str, has_request_id: bool) {
        let args = [sk, entry_id, if has_request_id { "1" } else { "0" }];
        if let Err(e) = self
            .run::<StatusReply>(&self.scripts.abandon, bucket, &args, true)
            .await
        {
            // The entry stays until the sweeper drops it after its deadline.
            tracing::warn!("removing an abandoned waiter's entry failed: {e}");
        }
    }

    /// [`Inner::abandon`] for a waiter whose call ended without its entry being
    /// settled (dropped, or failed while Redis was unreachable), retried while Redis
    /// cannot be reached: once Redis is back the entry goes at once, instead of being
    /// handed a grant that nobody confirms. Gives up at close, or after the grace
    /// after which the sweeper drops such an entry anyway.
    async fn abandon_retrying(&self, bucket: usize, sk: &str, entry_id: &str, has_rid: bool) {
        let args = [sk, entry_id, if has_rid { "1" } else { "0" }];
        // On giving up, the entry stays until the sweeper drops it after its deadline.
        self.run_retrying(
            &self.scripts.abandon,
            bucket,
            &args,
            "removing an abandoned waiter's entry",
        )
        .await;
    }
}

/// Removes a waiter's entry when its call goes away before it finishes.
struct WaiterGuard {
    inner: Arc<Inner>,
    bucket: usize,
    sk: String,
    entry_id: String,
    has_request_id: bool,
    armed: bool,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let (bucket, has_rid) = (self.bucket, self.has_request_id);
        let sk = std::mem::take(&mut self.sk);
        let id = std::mem::take(&mut self.entry_id);
        rt.spawn(async move { inner.abandon_retrying(bucket, &sk, &id, has_rid).await });
    }
}

/// What woke a blocked waiter.
enum Woke {
    Message(String),
    Fallback,
    Deadline,
    Closed,
    Failed(BackendError),
}

impl RedisBackend {
    /// Blocks a waiter until its grant, its deadline, cancellation or close.
    async fn wait_for_grant(
        &self,
        req: &LockRequest,
        mut guard: WaiterGuard,
        deadline: Timestamp,
    ) -> Result<LockResponse, TryLockError> {
        let inner = &self.inner;
        let sk = guard.sk.clone();
        let bucket = guard.bucket;
        let entry_id = guard.entry_id.clone();
        let wake_key = format!("{}wake:{entry_id}", inner.buckets[bucket]);
        let deadline_us = deadline.as_micros().to_string();
        let mut closed = inner.closed.subscribe();
        loop {
            let woke = tokio::select! {
                r = inner.conn.blpop(&wake_key) => match r {
                    Ok(Some(m)) => Woke::Message(m),
                    Ok(None) => Woke::Fallback,
                    Err(e) => Woke::Failed(e),
                },
                _ = inner.clock.sleep_until(deadline) => Woke::Deadline,
                _ = async { let _ = closed.wait_for(|c| *c).await; } => Woke::Closed,
            };
            let (mode, hint) = match woke {
                Woke::Message(m) => ("poll", m),
                Woke::Fallback => ("poll", String::new()),
                Woke::Deadline => ("end", String::new()),
                Woke::Failed(e) => {
                    tracing::debug!("a waiter's BLPOP failed, checking by script: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ("poll", String::new())
                }
                Woke::Closed => {
                    guard.armed = false;
                    let abandon = inner.abandon(bucket, &sk, &entry_id, req.request_id.is_some());
                    let _ = tokio::time::timeout(inner.conn.read_timeout(), abandon).await;
                    return Err(
                        BackendError::Unavailable("the Redis backend is closing".into()).into(),
                    );
                }
            };
            let args = [
                sk.as_str(),
                &entry_id,
                &req.owner.owner,
                req.request_id.as_deref().unwrap_or(""),
                &deadline_us,
                mode,
                &hint,
                &inner.retention_us,
            ];
            let (reply, generation) = inner
                .run_gen::<TryLockReply>(&inner.scripts.wait_end, bucket, &args, true)
                .await?;
            let body = reply.body;
            if body.r == "queued" {
                continue;
            }
            guard.armed = false;
            let answer = body.a.ok_or_else(|| {
                BackendError::Internal("wait_end: an answer without its body".into())
            })?;
            if body.fresh && answer.acq {
                ensure_replicated(inner, bucket, generation, &answer.lock).await?;
            }
            return Ok(answer.into_response()?);
        }
    }

    /// TryLock without a queue: retry with back-off until the deadline; a release by
    /// this backend cuts the back-off short.
    async fn retry_loop(
        &self,
        req: &LockRequest,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockResponse, TryLockError> {
        let inner = &self.inner;
        let deadline = inner.clock.now().add(wait);
        let mut backoff = inner.settings.min_retry_backoff;
        let once = Mode {
            code: "n",
            span: Duration::ZERO,
        };
        loop {
            inner.check_open()?;
            let released = inner.released.notified();
            let (reply, generation) = inner.try_lock_once(req, ttl, once, false, "").await?;
            if reply.body.r == "delay" {
                // A lock_delay after a data loss: wait it out within the deadline.
                let hold = Timestamp(reply.body.hold.unwrap_or_default().0);
                if hold >= deadline {
                    inner.clock.sleep_until(deadline).await;
                    return Ok(LockResponse::not_acquired(None, NotAcquiredReason::Timeout));
                }
                inner.clock.sleep_until(hold).await;
                continue;
            }
            let bucket = bucket_of(&req.resource.storage_key());
            let r = self.answer(reply.body, bucket, generation).await?;
            if r.acquired {
                return Ok(r);
            }
            let now = inner.clock.now();
            if now >= deadline {
                return Ok(LockResponse {
                    reason: Some(NotAcquiredReason::Timeout),
                    ..r
                });
            }
            let until = now.add(backoff).min(deadline);
            tokio::select! {
                _ = inner.clock.sleep_until(until) => {}
                _ = released => {}
            }
            backoff = (backoff * 2).min(inner.settings.max_retry_backoff);
        }
    }

    /// Turns a try_lock.lua answer into the response. The script answers replays
    /// from the present (a lease that ended is `lease_lost`), so nothing is patched
    /// here; with `min_replicas_ack` a grant, a re-lock or a reservation's renewal
    /// waits for `WAIT`.
    async fn answer(
        &self,
        body: TryLockReply,
        bucket: usize,
        generation: u64,
    ) -> Result<LockResponse, TryLockError> {
        let answer = body
            .a
            .ok_or_else(|| BackendError::Internal("try_lock: an answer without its body".into()))?;
        if body.fresh && answer.acq {
            ensure_replicated(&self.inner, bucket, generation, &answer.lock).await?;
        } else if body.chg {
            // A re-lock, or a reservation's retry that renewed its deadline.
            let what = if answer.acq {
                "re-lock"
            } else {
                "reservation's renewal"
            };
            self.inner
                .ensure_change_replicated(bucket, generation, what)
                .await?;
        }
        Ok(answer.into_response()?)
    }
}

fn owner_args(o: &Owner) -> Result<(String, String), BackendError> {
    let meta = serde_json::to_string(o)
        .map_err(|e| BackendError::Internal(format!("owner metadata: {e}")))?;
    let pull = o
        .pull
        .as_ref()
        .map(|p| p.num.to_string())
        .unwrap_or_default();
    Ok((meta, pull))
}

fn into_locks(raw: Vec<RawLock>) -> Result<Vec<Lock>, BackendError> {
    raw.into_iter().map(RawLock::into_lock).collect()
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn try_lock(&self, request: LockRequest) -> Result<LockResponse, TryLockError> {
        let inner = &self.inner;
        inner.check_open()?;
        let req = request.validate()?;
        let ttl = inner.settings.resolve_ttl(req.ttl)?;
        let mode = if req.reserve {
            Mode {
                code: "r",
                span: inner.settings.resolve_reservation(req.wait),
            }
        } else {
            match req
                .wait
                .map(|w| inner.settings.resolve_wait(w))
                .filter(|d| !d.is_zero())
            {
                Some(span) => Mode { code: "w", span },
                None => Mode {
                    code: "n",
                    span: Duration::ZERO,
                },
            }
        };
        let sk = req.resource.storage_key();
        let bucket = bucket_of(&sk);
        // The entry id is chosen here and the drop guard armed before the script is
        // sent: a caller that goes away at any point after that, even before the
        // reply arrives, still has its entry removed.
        let entry_id = if mode.code == "n" {
            String::new()
        } else {
            format!("{bucket:02x}{}", tflock_core::random_hex(15))
        };
        let mut guard = WaiterGuard {
            inner: inner.clone(),
            bucket,
            sk,
            entry_id,
            has_request_id: req.request_id.is_some(),
            armed: mode.code == "w",
        };
        // A waiter outlasts a lock_delay after a data loss within its wait: it keeps
        // waiting instead of being told "not now" (see docs/redis-design.md).
        let wait_until = inner.clock.now().add(mode.span);
        let (reply, generation) = loop {
            let (reply, generation) = inner
                .try_lock_once(&req, ttl, mode, true, &guard.entry_id)
                .await?;
            if reply.body.r != "delay" {
                break (reply, generation);
            }
            let hold = Timestamp(reply.body.hold.unwrap_or_default().0);
            if mode.code != "w" {
                guard.armed = false;
                return Ok(LockResponse::not_acquired(
                    None,
                    NotAcquiredReason::LockDelay,
                ));
            }
            if hold >= wait_until {
                guard.armed = false;
                inner.clock.sleep_until(wait_until).await;
                return Ok(LockResponse::not_acquired(None, NotAcquiredReason::Timeout));
            }
            inner.clock.sleep_until(hold).await;
        };
        let body = reply.body;
        if body.r != "wait" {
            guard.armed = false;
        }
        match body.r.as_str() {
            "ans" => self.answer(body, bucket, generation).await,
            "wait" => {
                // A retry of a call that still waits waits on that call's entry.
                if let Some(id) = body.id.filter(|id| *id != guard.entry_id) {
                    guard.entry_id = id;
                }
                let deadline = Timestamp(body.dl.unwrap_or_default().0);
                self.wait_for_grant(&req, guard, deadline).await
            }
            "full" => Err(TryLockError::QueueFull {
                max: inner.settings.max_queue_size,
            }),
            "retry" => self.retry_loop(&req, ttl, mode.span).await,
            "refused" => Err(InvalidRequest::new(
                "wait",
                "waiting needs enable_priority_queue or enable_retries; retry without wait",
            )
            .into()),
            other => Err(BackendError::Internal(format!("try_lock: unknown reply {other}")).into()),
        }
    }

    async fn unlock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
    ) -> Result<UnlockResponse, UnlockError> {
        self.inner.check_open()?;
        let resource = resource.clone().validate("resource")?;
        // An empty or malformed lease id is refused before anything is sent: it never
        // means force.
        lease_id.check("lease_id")?;
        unlock_script(&self.inner, &resource, Unlock::Lease(lease_id)).await
    }

    async fn force_unlock(
        &self,
        resource: &Resource,
        expected_token: Option<FencingToken>,
    ) -> Result<UnlockResponse, UnlockError> {
        self.inner.check_open()?;
        let resource = resource.clone().validate("resource")?;
        if let Some(t) = expected_token {
            exact(t.0, || "expected_token".to_string())?;
        }
        unlock_script(&self.inner, &resource, Unlock::Force(expected_token)).await
    }

    async fn unlock_by_pull(
        &self,
        repo: &str,
        pull: u64,
    ) -> Result<PullUnlockResponse, UnlockError> {
        let inner = &self.inner;
        inner.check_open()?;
        Resource::new(repo, ".", "default", "")
            .map_err(|e| InvalidRequest::new("repo", e.message))?;
        let num = pull.to_string();
        let name = format!("{repo}#{pull}");
        let args = [repo, num.as_str(), name.as_str()];
        let replies = join_all((0..BUCKETS).map(|b| async move {
            let (r, generation) = inner
                .run_gen::<PullReply>(&inner.scripts.unlock_pull, b, &args, true)
                .await?;
            // With min_replicas_ack, a bucket it changed is confirmed like an unlock.
            if !r.body.released.is_empty() || !r.body.cancelled.is_empty() {
                inner
                    .ensure_change_replicated(b, generation, "unlock by pull")
                    .await?;
            }
            Ok::<_, BackendError>(r)
        }))
        .await;
        let mut released = Vec::new();
        let mut cancelled = Vec::new();
        for r in replies {
            let r = r?;
            released.extend(r.body.released);
            cancelled.extend(r.body.cancelled);
        }
        released.sort_by(|a, b| a.sk.cmp(&b.sk));
        cancelled.sort_by(|a, b| a.sk.cmp(&b.sk));
        Ok(PullUnlockResponse {
            released: into_locks(released)?,
            cancelled: cancelled
                .into_iter()
                .map(|c| c.e.into_entry(&c.sk).map(QueueEntry::public))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn refresh_lock(
        &self,
        resource: &Resource,
        lease_id: &LeaseId,
        ttl: Duration,
    ) -> Result<Lock, RefreshError> {
        let inner = &self.inner;
        inner.check_open()?;
        let resource = resource.clone().validate("resource")?;
        lease_id.check("lease_id")?;
        let ttl = inner.settings.resolve_ttl(Some(ttl))?;
        let sk = resource.storage_key();
        let bucket = bucket_of(&sk);
        let ttl_us = us(ttl);
        let (r, generation) = inner
            .run_gen::<LockReply>(
                &inner.scripts.refresh,
                bucket,
                &[&sk, lease_id.as_str(), &ttl_us],
                true,
            )
            .await?;
        match (r.body.r.as_str(), r.body.lock) {
            ("ok", Some(l)) => {
                inner
                    .ensure_change_replicated(bucket, generation, "refresh")
                    .await?;
                Ok(l.into_lock()?)
            }
            _ => Err(RefreshError::LeaseLost),
        }
    }

    async fn transfer_lock(
        &self,
        resource: &Resource,
        auth: TransferAuth,
        to: Owner,
    ) -> Result<Lock, TransferError> {
        let inner = &self.inner;
        inner.check_open()?;
        let resource = resource.clone().validate("resource")?;
        let to = to.validate("to")?;
        let sk = resource.storage_key();
        let (meta, pull) = owner_args(&to)?;
        // The mode is explicit: an empty lease id never means admin.
        let (mode, lease) = match &auth {
            TransferAuth::Lease(l) => {
                l.check("lease_id")?;
                ("lease", l.as_str())
            }
            TransferAuth::Admin => ("admin", ""),
        };
        let bucket = bucket_of(&sk);
        let (r, generation) = inner
            .run_gen::<LockReply>(
                &inner.scripts.transfer,
                bucket,
                &[
                    &sk,
                    mode,
                    lease,
                    &to.owner,
                    to.username().unwrap_or(""),
                    &pull,
                    &meta,
                ],
                true,
            )
            .await?;
        match (r.body.r.as_str(), r.body.lock) {
            ("ok", Some(l)) => {
                inner
                    .ensure_change_replicated(bucket, generation, "transfer")
                    .await?;
                Ok(l.into_lock()?)
            }
            ("nf", _) => Err(TransferError::NotFound),
            _ => Err(TransferError::LeaseLost),
        }
    }

    async fn get_lock(&self, resource: &Resource) -> Result<Option<Lock>, QueryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let resource = resource.clone().validate("resource")?;
        let sk = resource.storage_key();
        let r = inner
            .run::<LockReply>(&inner.scripts.get_lock, bucket_of(&sk), &[&sk], false)
            .await?;
        Ok(r.body.lock.map(RawLock::into_lock).transpose()?)
    }

    async fn list_locks(&self, filter: LockFilter) -> Result<LockPage, QueryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let limit = filter.page_size()?;
        let start = filter.cursor_key()?.unwrap_or_default();
        let repo = filter.repo.clone().unwrap_or_default();
        let owner = filter.owner.clone().unwrap_or_default();
        let user = filter.user.clone().unwrap_or_default();
        // One more than a page, to know whether another page follows.
        let room = limit + 1;
        // A lazy k-way merge: each bucket is asked for a small batch; a bucket whose
        // batch runs out before the page is full is asked for its next one (after its
        // last scanned key), all such buckets pipelined in one round.
        let batch = (room.div_ceil(BUCKETS) + 4).max(LIST_MIN_BATCH).to_string();
        let mut buckets: Vec<ListCursor> = (0..BUCKETS)
            .map(|_| ListCursor {
                after: start.clone(),
                buffered: VecDeque::new(),
                done: false,
            })
            .collect();
        let mut out: Vec<RawLock> = Vec::with_capacity(room);
        let mut stale: Vec<usize> = (0..BUCKETS).collect();
        loop {
            if !stale.is_empty() {
                let replies = join_all(stale.iter().map(|&b| {
                    let after = buckets[b].after.as_str();
                    let (batch, repo, owner, user) = (&batch, &repo, &owner, &user);
                    async move {
                        inner
                            .run::<ListReply>(
                                &inner.scripts.list,
                                b,
                                &[after, batch, repo, owner, user, LIST_SCAN],
                                false,
                            )
                            .await
                    }
                }))
                .await;
                for (&b, r) in stale.iter().zip(replies) {
                    let r = r?.body;
                    let c = &mut buckets[b];
                    // Complete up to `last`: the next batch starts after it.
                    if r.done || r.last.is_empty() {
                        c.done = true;
                    } else {
                        c.after = r.last;
                    }
                    c.buffered.extend(r.locks);
                }
                stale.clear();
            }
            while out.len() < room {
                // The smallest buffered lock...
                let Some(b) = (0..BUCKETS)
                    .filter(|&b| !buckets[b].buffered.is_empty())
                    .min_by(|&x, &y| buckets[x].buffered[0].sk.cmp(&buckets[y].buffered[0].sk))
                else {
                    break;
                };
                // ...is next only if no drained bucket may still hold a smaller one:
                // a drained bucket is known up to its `after`.
                let sk = &buckets[b].buffered[0].sk;
                if buckets
                    .iter()
                    .any(|c| !c.done && c.buffered.is_empty() && c.after < *sk)
                {
                    break;
                }
                out.extend(buckets[b].buffered.pop_front());
            }
            if out.len() >= room {
                break;
            }
            // Refill the drained buckets that may hold the next lock: every drained
            // one below the smallest buffered lock (all of them when none is).
            let head = buckets
                .iter()
                .filter_map(|c| c.buffered.front().map(|l| l.sk.clone()))
                .min();
            stale = (0..BUCKETS)
                .filter(|&b| {
                    let c = &buckets[b];
                    !c.done && c.buffered.is_empty() && head.as_ref().is_none_or(|h| c.after < *h)
                })
                .collect();
            if stale.is_empty() {
                break;
            }
        }
        let next_cursor = if out.len() > limit {
            out.truncate(limit);
            out.last()
                .map(|l| tflock_core::request::encode_cursor(&l.sk))
        } else {
            None
        };
        Ok(LockPage {
            locks: into_locks(out)?,
            next_cursor,
        })
    }

    async fn get_queue_status(&self, resource: &Resource) -> Result<QueueStatus, QueryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let resource = resource.clone().validate("resource")?;
        let sk = resource.storage_key();
        let r = inner
            .run::<QueueReply>(&inner.scripts.queue_status, bucket_of(&sk), &[&sk], false)
            .await?;
        let now = Timestamp(r.now.0);
        let entries = r
            .body
            .entries
            .into_iter()
            .map(|e| e.into_entry(&sk))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QueueStatus {
            resource,
            lock: r.body.lock.map(RawLock::into_lock).transpose()?,
            entries: QueueEntryView::ordered(&entries, now, &inner.settings.starvation_policy()),
        })
    }

    async fn get_user_queue(&self, username: &str) -> Result<Vec<QueueEntryView>, QueryError> {
        let inner = &self.inner;
        inner.check_open()?;
        let replies = inner
            .run_all::<UserQueueReply>(&inner.scripts.user_queue, &[username], false)
            .await?;
        let policy = inner.settings.starvation_policy();
        let mut by_key = BTreeMap::new();
        for r in replies {
            let now = Timestamp(r.now.0);
            for q in r.body.queues {
                let entries = q
                    .entries
                    .into_iter()
                    .map(|e| e.into_entry(&q.sk))
                    .collect::<Result<Vec<_>, _>>()?;
                let views: Vec<_> = QueueEntryView::ordered(&entries, now, &policy)
                    .into_iter()
                    .filter(|v| v.entry.owner.username() == Some(username))
                    .collect();
                by_key.insert(q.sk, views);
            }
        }
        Ok(by_key.into_values().flatten().collect())
    }

    async fn cancel_queue_entry(
        &self,
        entry_id: &str,
        expected_resource: Option<&Resource>,
    ) -> Result<QueueEntryView, CancelError> {
        let inner = &self.inner;
        inner.check_open()?;
        if entry_id.is_empty() {
            return Err(CancelError::NotFound);
        }
        if let Some(r) = expected_resource {
            // The entry can only wait in that resource's bucket; the script checks
            // it still waits there in the same step as the removal.
            let sk = r.clone().validate("resource")?.storage_key();
            return match inner.cancel_in(bucket_of(&sk), entry_id, &sk).await? {
                Some(view) => Ok(view),
                None => Err(CancelError::NotFound),
            };
        }
        let own = bucket_of_entry(entry_id);
        if let Some(bucket) = own
            && let Some(view) = inner.cancel_in(bucket, entry_id, "").await?
        {
            return Ok(view);
        }
        // An entry imported from another store keeps its id, whose first digits need
        // not name its bucket: look in the others.
        let others = join_all(
            (0..BUCKETS)
                .filter(|b| Some(*b) != own)
                .map(|b| inner.cancel_in(b, entry_id, "")),
        )
        .await;
        let mut failed = None;
        for r in others {
            match r {
                Ok(Some(view)) => return Ok(view),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Err(CancelError::NotFound),
        }
    }

    async fn health_check(&self) -> Result<BackendHealth, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let conn = &inner.conn;
        let cluster = conn.mode() == "cluster";
        // Sent together on the multiplexed connection, so the whole check takes one
        // round trip and is bounded by read_timeout (each call is).
        let started = Instant::now();
        let ping = async {
            let r = conn.call::<String>(&redis::cmd("PING")).await;
            (r, started.elapsed())
        };
        let (info_cmd, mut slowlog_cmd, mut cluster_cmd) = (
            redis::cmd("INFO"),
            redis::cmd("SLOWLOG"),
            redis::cmd("CLUSTER"),
        );
        slowlog_cmd.arg("LEN");
        cluster_cmd.arg("INFO");
        let info = conn.call_nodes(&info_cmd);
        let slowlog = conn.call_nodes(&slowlog_cmd);
        let cluster_info = async {
            if cluster {
                Some(conn.call_nodes(&cluster_cmd).await)
            } else {
                None
            }
        };
        // Sentinel: a primary the sentinels no longer name is dropped (sentinel_watch).
        let ((pong, response_time), info, slowlog, cluster_info, ()) = tokio::join!(
            ping,
            info,
            slowlog,
            cluster_info,
            sentinel_watch::verify(conn)
        );
        let (pong, _) = pong.map_err(BackendError::from)?;
        let info = info.map_err(BackendError::from)?;
        let slowlog = slowlog.map_err(BackendError::from)?;
        let cluster_info = cluster_info.transpose().map_err(BackendError::from)?;

        let mut details = inner.description.clone();
        details.insert("ping".into(), pong.into());
        let mut healthy = server_details(&mut details, info, slowlog, cluster_info);
        if details.get("persistence").and_then(Json::as_str) == Some("none") {
            details.insert(
                "persistence_warning".into(),
                "Redis keeps neither AOF nor RDB snapshots: a restart loses every lock".into(),
            );
        }
        // Data loss: within one health check. A data loss is a healthy answer of an
        // unhealthy store, never an error (the breaker must not open for it: Redis
        // answers, and reads and unlocks work).
        let found = match inner.check_generations().await {
            Ok(found) => found.is_some(),
            Err(e) => {
                details.insert("generation_error".into(), e.to_string().into());
                false
            }
        };
        healthy &= inner
            .generations
            .health_details(&mut details, inner.clock.now(), found);
        Ok(BackendHealth {
            backend: "redis".into(),
            healthy,
            response_time,
            checked_at: inner.clock.now(),
            details,
        })
    }

    async fn get_metrics(&self) -> Result<BackendMetrics, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let replies = inner
            .run_all::<StatsReply>(&inner.scripts.stats, &[], false)
            .await?;
        Ok(BackendMetrics {
            active_locks: replies.iter().map(|r| r.body.locks).sum(),
            queue_depth: replies.iter().map(|r| r.body.entries).sum(),
            handoffs: inner.handoffs.load(Ordering::Relaxed),
            expiries: inner.expiries.load(Ordering::Relaxed),
            data_losses: inner.generations.losses.load(Ordering::Relaxed),
        })
    }

    async fn export(&self) -> Result<Snapshot, BackendError> {
        let inner = &self.inner;
        inner.check_open()?;
        let buckets = join_all((0..BUCKETS).map(|b| inner.export_bucket(b))).await;
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

    async fn import(
        &self,
        snapshot: Snapshot,
        options: ImportOptions,
    ) -> Result<ImportReport, ImportError> {
        let inner = &self.inner;
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
        let dry = if options.dry_run { "1" } else { "0" };
        let overwrite = if options.overwrite { "1" } else { "0" };
        // One script per resource, many in flight; a snapshot naming a resource twice
        // is applied in order, one at a time, as the embedded store would.
        let mut keys = std::collections::HashSet::new();
        let unique = plans.iter().all(|p| keys.insert(p.sk.as_str()));
        let calls: Vec<_> = plans
            .iter()
            .map(|p| inner.import_one(p, dry, overwrite))
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

    fn subscribe(&self) -> broadcast::Receiver<LockEvent> {
        let rx = self.inner.events.subscribe();
        relay::start(&self.inner);
        rx
    }

    async fn close(&self) {
        self.inner.closed.send_replace(true);
    }
}

impl Inner {
    /// Cancels entry `entry_id` if bucket `bucket` holds it (in the queue of storage
    /// key `expected`, unless that is empty).
    async fn cancel_in(
        &self,
        bucket: usize,
        entry_id: &str,
        expected: &str,
    ) -> Result<Option<QueueEntryView>, BackendError> {
        let r = self
            .run::<CancelReply>(&self.scripts.cancel, bucket, &[entry_id, expected], true)
            .await?;
        match (r.body.r.as_str(), r.body.entry) {
            ("ok", Some(e)) => Ok(Some(e.into_view()?)),
            _ => Ok(None),
        }
    }

    /// Runs `import.lua` for one resource.
    async fn import_one(
        &self,
        p: &ImportPlan,
        dry: &str,
        overwrite: &str,
    ) -> Result<Reply<ImportReply>, BackendError> {
        let args = [p.sk.as_str(), dry, overwrite, &p.last, &p.lock, &p.entries];
        self.run(&self.scripts.import, bucket_of(&p.sk), &args, true)
            .await
    }

    /// Every resource of one bucket, page by page, and the scripts' latest clock.
    async fn export_bucket(&self, bucket: usize) -> Result<(Vec<RawExported>, u64), BackendError> {
        let mut after = String::new();
        let mut out = Vec::new();
        let mut now = 0;
        loop {
            let r = self
                .run::<ExportReply>(&self.scripts.export, bucket, &[&after, EXPORT_PAGE], false)
                .await?;
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

/// A number the scripts keep exactly, as a string.
fn exact(v: u64, field: impl FnOnce() -> String) -> Result<String, InvalidRequest> {
    if v >= LUA_EXACT {
        return Err(InvalidRequest::new(
            field(),
            format!("{v} is not below 2^53, the largest integer the Redis backend keeps exact"),
        ));
    }
    Ok(v.to_string())
}

fn exact_us(d: Duration, field: impl FnOnce() -> String) -> Result<String, InvalidRequest> {
    exact(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), field)
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
        let sk = resource.storage_key();
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

/// Reads INFO, SLOWLOG LEN and (on a cluster) CLUSTER INFO of every node into
/// `details` under the names the health monitor reads (`connected_clients`,
/// `total_connections_received`, `used_memory`, `slowlog_len`, `connected_replicas`,
/// `cluster_state`), summed over the nodes, plus `nodes` (each node's own figures)
/// on a cluster. A node that refused a command (an ACL without it) is listed under
/// `detail_errors`. Returns whether the cluster state is ok (true when not a cluster).
fn server_details(
    details: &mut Map<String, Json>,
    info: Vec<(String, NodeReply)>,
    slowlog: Vec<(String, NodeReply)>,
    cluster_info: Option<Vec<(String, NodeReply)>>,
) -> bool {
    let mut nodes: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut errors = Map::new();
    let mut sums: BTreeMap<&'static str, i64> = BTreeMap::new();
    const FIELDS: [(&str, &str); 4] = [
        ("connected_clients", "connected_clients"),
        ("total_connections_received", "total_connections_received"),
        ("used_memory", "used_memory"),
        ("connected_slaves", "connected_replicas"),
    ];
    for (node, reply) in info {
        let text = match reply.map(|v| text_of(&v)) {
            Ok(t) => t,
            Err(e) => {
                errors.insert(format!("INFO {node}"), e.into());
                continue;
            }
        };
        let entry = nodes.entry(node).or_default();
        for line in text.lines() {
            let Some((k, v)) = line.trim_end().split_once(':') else {
                continue;
            };
            if let Some((_, name)) = FIELDS.iter().find(|(f, _)| *f == k) {
                if let Ok(n) = v.parse::<i64>() {
                    *sums.entry(name).or_default() += n;
                    entry.insert((*name).into(), n.into());
                }
            } else if matches!(k, "redis_version" | "role") {
                entry.insert(k.into(), v.into());
                details.entry(k).or_insert_with(|| v.into());
            }
        }
    }
    for (node, reply) in slowlog {
        match reply {
            Ok(redis::Value::Int(n)) => {
                *sums.entry("slowlog_len").or_default() += n;
                nodes
                    .entry(node)
                    .or_default()
                    .insert("slowlog_len".into(), n.into());
            }
            Ok(other) => {
                errors.insert(format!("SLOWLOG LEN {node}"), format!("{other:?}").into());
            }
            Err(e) => {
                errors.insert(format!("SLOWLOG LEN {node}"), e.into());
            }
        }
    }
    for (name, n) in sums {
        details.insert(name.into(), n.into());
    }
    let mut healthy = true;
    if let Some(cluster_info) = cluster_info {
        let mut state: Option<String> = None;
        for (node, reply) in cluster_info {
            let text = match reply.map(|v| text_of(&v)) {
                Ok(t) => t,
                Err(e) => {
                    errors.insert(format!("CLUSTER INFO {node}"), e.into());
                    continue;
                }
            };
            let s = text
                .lines()
                .find_map(|l| l.trim_end().strip_prefix("cluster_state:"))
                .unwrap_or("unknown")
                .to_string();
            nodes
                .entry(node)
                .or_default()
                .insert("cluster_state".into(), s.clone().into());
            // Any node that does not say ok makes the whole cluster not ok.
            if state.as_deref().is_none_or(|cur| cur == "ok") {
                state = Some(s);
            }
        }
        if let Some(s) = state {
            healthy = s == "ok";
            details.insert("cluster_state".into(), s.into());
        }
        details.insert(
            "nodes".into(),
            Json::Array(
                nodes
                    .into_iter()
                    .map(|(addr, mut m)| {
                        m.insert("address".into(), addr.into());
                        Json::Object(m)
                    })
                    .collect(),
            ),
        );
    }
    if !errors.is_empty() {
        details.insert("detail_errors".into(), Json::Object(errors));
    }
    healthy
}

/// Which persistence the Redis primaries keep: `aof`, `rdb`, `aof+rdb`, `none` (a
/// restart loses everything), or `unknown` where `CONFIG GET` is refused (a managed
/// Redis, a renamed command): never a reason to refuse, since it may well persist.
/// The weakest node decides (`none` before `unknown` before the rest).
async fn persistence(conn: &Connector) -> String {
    async fn get(conn: &Connector, name: &str) -> Vec<(String, Option<String>)> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        match conn.call_nodes(&cmd).await {
            Ok(nodes) => nodes
                .into_iter()
                .map(|(node, r)| (node, r.ok().and_then(|v| config_value(&v, name))))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
    let (aof, save) = tokio::join!(get(conn, "appendonly"), get(conn, "save"));
    if aof.is_empty() {
        return "unknown".into();
    }
    let mut worst = String::new();
    for (node, a) in aof {
        let s = save
            .iter()
            .find(|(n, _)| *n == node)
            .and_then(|(_, v)| v.clone());
        let this = match (a, s) {
            (Some(a), Some(s)) => {
                let aof = a.eq_ignore_ascii_case("yes");
                let rdb = !s.trim().is_empty();
                match (aof, rdb) {
                    (true, true) => "aof+rdb",
                    (true, false) => "aof",
                    (false, true) => "rdb",
                    (false, false) => "none",
                }
            }
            _ => "unknown",
        };
        let rank = |p: &str| match p {
            "none" => 0,
            "unknown" => 1,
            _ => 2,
        };
        if worst.is_empty() || rank(this) < rank(&worst) {
            worst = this.into();
        }
    }
    worst
}

/// The value of `name` in a `CONFIG GET` reply (a flat list or, on RESP3, a map).
fn config_value(v: &redis::Value, name: &str) -> Option<String> {
    let pairs: Vec<(&redis::Value, &redis::Value)> = match v {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| c.get(1).map(|b| (&c[0], b)))
            .collect(),
        redis::Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    pairs
        .into_iter()
        .find(|(k, _)| text_of(k).eq_ignore_ascii_case(name))
        .map(|(_, v)| text_of(v))
}

/// A text reply (INFO, CLUSTER INFO) as a string.
fn text_of(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        other => format!("{other:?}"),
    }
}

/// Who unlocks: the holder by its lease, or an admin (optionally only the lease with
/// the token it saw).
enum Unlock<'a> {
    Lease(&'a LeaseId),
    Force(Option<FencingToken>),
}

async fn unlock_script(
    inner: &Inner,
    resource: &Resource,
    how: Unlock<'_>,
) -> Result<UnlockResponse, UnlockError> {
    let sk = resource.storage_key();
    let bucket = bucket_of(&sk);
    let (mode, lease, expected) = match how {
        Unlock::Lease(l) => ("lease", l.as_str(), String::new()),
        Unlock::Force(t) => ("force", "", t.map(|t| t.0.to_string()).unwrap_or_default()),
    };
    let (r, generation) = inner
        .run_gen::<UnlockReply>(
            &inner.scripts.unlock,
            bucket,
            &[&sk, mode, lease, &expected],
            true,
        )
        .await?;
    match r.body.r.as_str() {
        "nf" => Err(UnlockError::NotFound),
        "no" => Err(UnlockError::NotOwner),
        "changed" => Err(UnlockError::Changed {
            expected: FencingToken(expected.parse().unwrap_or_default()),
            current: FencingToken(r.body.cur.unwrap_or_default().0),
        }),
        "ok" => {
            inner
                .ensure_change_replicated(bucket, generation, "unlock")
                .await?;
            Ok(UnlockResponse {
                released: r
                    .body
                    .released
                    .ok_or_else(|| BackendError::Internal("unlock: no released lock".into()))?
                    .into_lock()?,
                granted_to: r.body.to.map(|v| v.into_view()).transpose()?,
            })
        }
        other => Err(BackendError::Internal(format!("unlock: unknown reply {other}")).into()),
    }
}
