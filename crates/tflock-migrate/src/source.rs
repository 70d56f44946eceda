//! Reading Atlantis's lock stores: a copy of its BoltDB file, or its Redis.
//!
//! BoltDB (`atlantis.db`): bucket `runLocks` maps `{repo}/{path}/{workspace}/{project}`
//! (older Atlantis: `{repo}/{path}/{workspace}`) to ProjectLock JSON; bucket
//! `globalLocks` maps `{command}/lock` to `command.Lock` JSON.
//!
//! Redis: `pr/{repo}/{path}/{workspace}/{project}` (and the older three-part form)
//! hold ProjectLock JSON as plain strings (`SET key json`); `global/{command}/lock`
//! the global locks. Keys are found with `SCAN` (never `KEYS`, which blocks a
//! production Redis) and read with `MGET`, a page at a time.

use std::path::Path;
use std::time::Duration;

use tflock_core::owner::strip_credentials;
use tflock_core::{Snapshot, Timestamp};

use crate::atlantis::{CommandLock, ProjectLock};
use crate::bolt::{BoltError, BoltFile, Entry};
use crate::convert::{AtlantisLocks, GlobalLock, Skipped, StoredLock, Summary, convert};

/// Atlantis's BoltDB bucket of project locks.
pub const RUN_LOCKS_BUCKET: &str = "runLocks";
/// Atlantis's BoltDB bucket of global command locks.
pub const GLOBAL_LOCKS_BUCKET: &str = "globalLocks";
/// Prefix of Atlantis's Redis lock keys.
pub const REDIS_LOCK_PREFIX: &str = "pr/";
/// Prefix of Atlantis's Redis global command locks.
pub const REDIS_GLOBAL_PREFIX: &str = "global/";
/// Keys asked for per `SCAN` call and read per `MGET`.
const SCAN_COUNT: usize = 500;
/// Bound on connecting to Atlantis's Redis and on each reply.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a migration could not read its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    #[error(transparent)]
    Bolt(#[from] BoltError),
    #[error(
        "{path} has no `runLocks` bucket, so it is not an Atlantis data file (buckets found: {buckets})"
    )]
    NotAtlantis { path: String, buckets: String },
    #[error("Atlantis's Redis at {url}: {message}")]
    Redis { url: String, message: String },
    #[error("the blocking reader stopped: {0}")]
    Join(String),
}

/// Reads the locks of a copy of Atlantis's `atlantis.db`, read-only.
pub fn read_boltdb(path: impl AsRef<Path>) -> Result<AtlantisLocks, MigrateError> {
    let path = path.as_ref();
    let file = BoltFile::open(path)?;
    let Some(locks) = file.bucket(RUN_LOCKS_BUCKET.as_bytes())? else {
        let names: Vec<String> = file
            .bucket_names()?
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        return Err(MigrateError::NotAtlantis {
            path: path.display().to_string(),
            buckets: if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            },
        });
    };
    let mut found = AtlantisLocks {
        source: format!("boltdb:{}", path.display()),
        ..AtlantisLocks::default()
    };
    for e in locks {
        record(&mut found, e.key, Some(e.value), e.bucket);
    }
    for Entry { key, value, bucket } in file
        .bucket(GLOBAL_LOCKS_BUCKET.as_bytes())?
        .unwrap_or_default()
    {
        if !bucket {
            found
                .global_locks
                .push(global_lock(key, &value, "/lock", ""));
        }
    }
    Ok(found)
}

/// Reads Atlantis's BoltDB copy and converts it: leases expire at `now + ttl`.
pub fn snapshot_from_boltdb(
    path: impl AsRef<Path>,
    ttl: Duration,
    now: Timestamp,
) -> Result<(Snapshot, Summary), MigrateError> {
    let found = read_boltdb(path)?;
    Ok(convert(found, "atlantis-boltdb", ttl, now))
}

/// Reads the locks in Atlantis's Redis (`redis://[user:password@]host:port/db`, or
/// `rediss://` for TLS).
pub async fn read_atlantis_redis(url: &str) -> Result<AtlantisLocks, MigrateError> {
    AtlantisRedis::new(url)?.read().await
}

/// A connection to Atlantis's Redis that reads its locks again and again (for
/// `legacy_fallback`), reconnecting after an error.
pub struct AtlantisRedis {
    client: redis::Client,
    /// The URL without credentials, for messages.
    shown: String,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl std::fmt::Debug for AtlantisRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtlantisRedis")
            .field("url", &self.shown)
            .finish()
    }
}

impl AtlantisRedis {
    /// Checks the URL; connects on the first read.
    pub fn new(url: &str) -> Result<Self, MigrateError> {
        let shown = strip_credentials(url);
        // rediss:// needs a process-wide rustls provider; another crate may have set one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = redis::Client::open(url).map_err(|e| MigrateError::Redis {
            url: shown.clone(),
            message: e.to_string(),
        })?;
        Ok(AtlantisRedis {
            client,
            shown,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The URL without credentials.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Every lock and global lock, sorted by key.
    pub async fn read(&self) -> Result<AtlantisLocks, MigrateError> {
        let err = |e: redis::RedisError| MigrateError::Redis {
            url: self.shown.clone(),
            message: e.to_string(),
        };
        let mut slot = self.conn.lock().await;
        let mut conn = match slot.as_ref() {
            Some(c) => c.clone(),
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(err)?;
                *slot = Some(c.clone());
                c
            }
        };
        let result = async {
            let locks = scan_strings(&mut conn, "pr/*").await?;
            let global = scan_strings(&mut conn, "global/*").await?;
            Ok::<_, redis::RedisError>((locks, global))
        }
        .await;
        let (locks, global) = match result {
            Ok(r) => r,
            Err(e) => {
                // Start afresh next time: the connection may be the problem.
                *slot = None;
                return Err(err(e));
            }
        };
        drop(slot);
        let mut found = AtlantisLocks {
            source: self.shown.clone(),
            ..AtlantisLocks::default()
        };
        for (key, value) in locks {
            if key.starts_with(REDIS_LOCK_PREFIX) {
                record(&mut found, key.into_bytes(), value, false);
            }
        }
        for (key, value) in global {
            if let Some(v) = value {
                found.global_locks.push(global_lock(
                    key.into_bytes(),
                    &v,
                    "/lock",
                    REDIS_GLOBAL_PREFIX,
                ));
            }
        }
        Ok(found)
    }
}

/// Reads Atlantis's Redis and converts it: leases expire at `now + ttl`.
pub async fn snapshot_from_atlantis_redis(
    url: &str,
    ttl: Duration,
    now: Timestamp,
) -> Result<(Snapshot, Summary), MigrateError> {
    let found = read_atlantis_redis(url).await?;
    Ok(convert(found, "atlantis-redis", ttl, now))
}

/// Every key matching `pattern` with its string value (`None` when the key is not a
/// string or vanished between SCAN and MGET).
async fn scan_strings(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<(String, Option<Vec<u8>>)>> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            // SCAN may return a key twice (rehashing); MGET of a non-string gives nil.
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(&keys).query_async(conn).await?;
            out.extend(keys.into_iter().zip(values));
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Files one record as a lock or as unreadable.
fn record(found: &mut AtlantisLocks, key: Vec<u8>, value: Option<Vec<u8>>, bucket: bool) {
    let key = String::from_utf8_lossy(&key).into_owned();
    let parsed = match value {
        _ if bucket => Err("a nested bucket, not a lock".to_string()),
        None => Err("not a string value (or deleted while reading)".to_string()),
        Some(v) => serde_json::from_slice::<ProjectLock>(&v)
            .map_err(|e| format!("not a ProjectLock record: {e}")),
    };
    match parsed {
        Ok(lock) => found.locks.push(StoredLock { key, lock }),
        Err(reason) => found.unreadable.push(Skipped { key, reason }),
    }
}

fn global_lock(key: Vec<u8>, value: &[u8], suffix: &str, prefix: &str) -> GlobalLock {
    let key = String::from_utf8_lossy(&key).into_owned();
    let rest = key.strip_prefix(prefix).unwrap_or(&key);
    let command = rest.strip_suffix(suffix).unwrap_or(rest).to_string();
    let locked_at = serde_json::from_slice::<CommandLock>(value)
        .ok()
        .and_then(|l| u64::try_from(l.lock_metadata.unix_time).ok())
        .filter(|&t| t > 0)
        .map(|t| Timestamp(t.saturating_mul(1_000_000)));
    GlobalLock {
        key,
        command,
        locked_at,
    }
}
