//! Start-up: connecting, naming the setting behind a failed connection, the checks
//! a new backend makes (persistence, eviction policy, scripts allowed to these
//! credentials, the data-loss markers) and which pub/sub it publishes on.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use tflock_core::{LockSettings, SharedClock};
use tokio::sync::{Notify, broadcast, watch};

use crate::args::StatsArgs;
use crate::backend::Inner;
use crate::config::{AuthMethod, ConnectError, RedisConfig};
use crate::conn::Connector;
use crate::generation::Generations;
use crate::health::persistence;
use crate::keys::bucket_prefixes;
use crate::options::{BackendOptions, EventChannels, SweepStats};
use crate::scripts::Scripts;

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

/// Connects, checks and builds what the backend shares (the sweeper and the
/// Sentinel watch are started by the caller).
pub(crate) async fn open(
    config: RedisConfig,
    settings: LockSettings,
    clock: SharedClock,
    options: BackendOptions,
) -> Result<Arc<Inner>, ConnectError> {
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
        Some(EventChannels::Sharded) | None if cluster && supports_sharded_pubsub(&conn).await => {
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
        upgrade_layout: options.upgrade_layout,
        layout_report: Mutex::new(None),
        held: Default::default(),
    });
    // A read on one bucket proves scripting and the key prefix are allowed to
    // these credentials (an ACL user may be limited to some keys or commands).
    if let Err(e) = inner.run(0, &StatsArgs).await {
        let m = e.to_string();
        let lower = m.to_ascii_lowercase();
        let setting = if lower.contains("noperm") && lower.contains("key") {
            "redis.key_prefix"
        } else if lower.contains("noperm") {
            "redis.username"
        } else {
            "redis.addresses"
        };
        if lower.contains("unknown command") && lower.contains("fcall") {
            return Err(ConnectError::new(
                "redis.addresses",
                format!(
                    "tflock needs Redis 7.0 or later (its scripts are a function library, \
                     FCALL): {m}"
                ),
            ));
        }
        return Err(ConnectError::new(
            setting,
            format!("Redis refused tflock's scripts: {m}"),
        ));
    }
    // Before anything reads or writes locks: a store of an older key layout is
    // brought up to this build's, in place (docs/redis-design.md, "Layout versions").
    if options.upgrade_layout {
        let report = inner.upgrade_layout(false).await.map_err(|e| {
            ConnectError::new(
                "redis.addresses",
                format!("upgrading the store's key layout failed: {e}"),
            )
        })?;
        if report.buckets_upgraded > 0 {
            tracing::info!(
                buckets = report.buckets_upgraded,
                resources = report.resources,
                entries = report.entries,
                tokens = report.tokens,
                "upgraded the store to key layout {}",
                report.layout
            );
        }
        *inner
            .layout_report
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(report);
    }
    check_eviction_policy(&inner.conn).await;
    // The markers this server compares against from now on (created where none
    // is: a new store, or one from before markers existed).
    if let Err(e) = inner.check_generations().await {
        tracing::warn!("reading the data-loss markers failed (the health check retries): {e}");
    }
    Ok(inner)
}

/// Warns when Redis may evict any key under memory pressure (`allkeys-*`, as the
/// spec's tuning example suggests): an evicted token key would let a fencing
/// token be granted twice. Best effort: managed Redis often refuses CONFIG.
async fn check_eviction_policy(conn: &Connector) {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("maxmemory-policy");
    if let Ok((reply, _)) = conn.call::<Vec<String>>(&cmd).await
        && let Some(policy) = reply.get(1)
        && policy.starts_with("allkeys")
    {
        tracing::warn!(
            "Redis uses maxmemory-policy {policy}: under memory pressure it may evict lock \
             and fencing-token keys, which breaks the locking guarantees; use noeviction"
        );
    }
}
