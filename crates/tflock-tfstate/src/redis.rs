//! [`RedisStates`]: the states on tflock's Redis backend (standalone, Sentinel or
//! Cluster), on the backend's own connection.
//!
//! # Keys
//!
//! Every key of one state starts with `<key_prefix>tfstate:{<first 16 hex digits of
//! sha256(name)>}:`. The hash tag holds no user text (a name may hold anything a
//! [`StateName`] allows, braces included) and puts all of a state's keys on one
//! Cluster slot, so one script changes them atomically. The suffixes (`meta`, `vm`,
//! `v:<n>`) are described in `lua/prelude.lua`; the name itself is stored in `meta`
//! and checked by every script, so two names sharing a digest prefix are refused
//! rather than mixed.
//!
//! The list of names is the zset `<key_prefix>tfstate:names` (`lua/names.lua`). On a
//! Cluster it is on another slot than the states, so it cannot change in a state's
//! script: a name is added *before* the script of a write that may create the state
//! (put, record_lock) runs. An index entry without data is harmless (listing skips
//! it), so the index never misses a state, and a listing shows a new name at the
//! latest when its first write has answered. Listing reads the index, then each
//! state's summary (one script per state, each consistent by itself).
//!
//! # Operations
//!
//! Each operation on a state is one script (`lua/write.lua`, `lua/read.lua`,
//! `lua/lock.lua`), so it is atomic. The document is validated and hashed in Rust
//! (`check`) first; its serial, lineage, md5 and size go to the script as arguments
//! and only the comparisons with stored data (guard, serial, lineage) run in Lua. So
//! the refusal order stays guard first: a document refused in Rust is reported only
//! after a guard-only run of the script passed. A rollback reads the kept version,
//! rewrites its `serial` in Rust, and writes it only if the highest serial it read is
//! still the highest (else it reads again). Writes run with
//! [`RedisBackend::eval_acked`], so with `min_replicas_ack` they answer only once
//! the replicas confirmed them.
//!
//! Replies are JSON (tagged by `r`; refusals are replies, not Lua errors). A reply
//! with a document is a JSON header line followed by the document's bytes as they
//! are, so a document of up to `max_state_bytes` is never JSON-escaped in Lua.
//!
//! # Memory
//!
//! Redis holds everything in memory: each state's whole kept history, up to
//! `keep_versions × max_state_bytes` per state (10 × 16 MiB by default). Size
//! `maxmemory` for it, or lower those options.

use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tflock_redis::RedisBackend;
use tflock_redis::scripts::Script;

use crate::check;
use crate::{
    Guard, LockRecord, RecordError, StateName, StateStore, StateSummary, StoreError, StoreOptions,
    StoredState, VersionMeta, Write, WriteError,
};

/// The scripts, `prelude.lua` in front of the per-state ones.
struct Scripts {
    write: Script,
    read: Script,
    lock: Script,
    names: Script,
}

macro_rules! state_script {
    ($file:literal) => {
        Script::new(
            $file,
            concat!(
                include_str!("../lua/prelude.lua"),
                "\n",
                include_str!(concat!("../lua/", $file)),
            ),
        )
    };
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            write: state_script!("write.lua"),
            read: state_script!("read.lua"),
            lock: state_script!("lock.lua"),
            names: Script::new("names.lua", include_str!("../lua/names.lua")),
        }
    }
}

/// The states on a Redis backend. Cheap to clone.
#[derive(Clone)]
pub struct RedisStates {
    backend: Arc<RedisBackend>,
    options: StoreOptions,
    scripts: Arc<Scripts>,
    /// `<key_prefix>tfstate:`
    root: String,
}

impl std::fmt::Debug for RedisStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStates")
            .field("root", &self.root)
            .field("options", &self.options)
            .finish()
    }
}

/// A write script's reply.
#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
enum WriteReply {
    Ok {
        meta: Option<VersionMeta>,
    },
    Fenced {
        fence: String,
        record: Option<LockRecord>,
    },
    Serial {
        stored: String,
    },
    Lineage {
        stored: String,
    },
    NotFound,
    Retry,
    Collision,
}

/// A read script's reply (the header, for a document).
#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
enum ReadReply {
    None,
    Collision,
    State {
        meta: VersionMeta,
    },
    Source {
        meta: VersionMeta,
        max_serial: String,
    },
    Versions {
        list: Vec<VersionMeta>,
    },
    Summary {
        current: Option<VersionMeta>,
        versions: u64,
        lock: Option<LockRecord>,
        fence: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
enum LockReply {
    Ok,
    Stale { fence: String },
    Collision,
}

fn decode<T: DeserializeOwned>(script: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError(format!("{script}: an unexpected reply ({e}): {json:.200}")))
}

fn number(script: &str, s: &str) -> Result<u64, StoreError> {
    s.parse()
        .map_err(|_| StoreError(format!("{script}: not a number: {s:?}")))
}

fn collision(name: &StateName) -> StoreError {
    StoreError(format!(
        "the state {name} shares its keys' digest with another state's name; rename one"
    ))
}

/// `(kind, digest, number)`: the guard as write.lua's ARGV[3..=5].
fn guard_args(guard: &Guard) -> (&'static str, &str, String) {
    match guard {
        Guard::Lock { id_digest, token } => ("lock", id_digest.as_str(), token.to_string()),
        Guard::Unlocked { fence_seen } => ("unlocked", "", fence_seen.to_string()),
        Guard::Admin => ("admin", "", String::new()),
    }
}

/// What a write script is asked to store.
struct Change<'a> {
    op: &'static str,
    guard: &'a Guard,
    force: bool,
    parsed: Option<&'a check::Parsed>,
    now_ms: u64,
    body: &'a str,
    expect_max_serial: &'a str,
}

impl RedisStates {
    pub fn new(backend: Arc<RedisBackend>, options: StoreOptions) -> Self {
        let root = format!("{}tfstate:", backend.key_prefix());
        RedisStates {
            backend,
            options,
            scripts: Arc::new(Scripts::load()),
            root,
        }
    }

    /// The key prefix of a state's keys (see the module docs).
    fn state_key(&self, name: &StateName) -> String {
        let digest = Sha256::digest(name.as_str().as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{{{hex}}}:", self.root)
    }

    fn names_key(&self) -> String {
        format!("{}names", self.root)
    }

    /// Adds `name` to the index, before a write that may create the state.
    async fn index(&self, name: &StateName) -> Result<(), StoreError> {
        self.backend
            .eval_acked(
                &self.scripts.names,
                &self.names_key(),
                &["add", name.as_str()],
            )
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(())
    }

    async fn read(&self, name: &StateName, args: &[&str]) -> Result<String, StoreError> {
        let mut all = vec![name.as_str()];
        all.extend_from_slice(args);
        self.backend
            .eval(&self.scripts.read, &self.state_key(name), &all)
            .await
            .map_err(|e| StoreError(e.to_string()))
    }

    /// A read reply: its decoded header and the document after it, if any.
    async fn read_doc(
        &self,
        name: &StateName,
        args: &[&str],
    ) -> Result<(ReadReply, Vec<u8>), StoreError> {
        let reply = self.read(name, args).await?;
        let (header, body) = reply.split_once('\n').unwrap_or((&reply, ""));
        let header = decode::<ReadReply>("read.lua", header)?;
        if let ReadReply::Collision = header {
            return Err(collision(name));
        }
        Ok((header, body.as_bytes().to_vec()))
    }

    async fn run_write(
        &self,
        name: &StateName,
        change: Change<'_>,
    ) -> Result<WriteReply, WriteError> {
        let (kind, digest, number) = guard_args(change.guard);
        let (serial, lineage, md5, size) = match change.parsed {
            Some(p) => (
                p.serial.to_string(),
                p.lineage.as_str(),
                p.md5.clone(),
                p.size,
            ),
            None => (String::new(), "", check::md5_hex(b""), 0),
        };
        let (now, keep, size) = (
            change.now_ms.to_string(),
            self.options.keep().to_string(),
            size.to_string(),
        );
        let args = [
            name.as_str(),
            change.op,
            kind,
            digest,
            &number,
            if change.force { "1" } else { "0" },
            &serial,
            lineage,
            &md5,
            &size,
            &now,
            &keep,
            change.body,
            change.expect_max_serial,
        ];
        let key = self.state_key(name);
        let json = match change.op {
            // Only a check: nothing to confirm on the replicas.
            "guard" => self.backend.eval(&self.scripts.write, &key, &args).await,
            _ => {
                self.backend
                    .eval_acked(&self.scripts.write, &key, &args)
                    .await
            }
        }
        .map_err(|e| WriteError::Store(e.to_string()))?;
        let reply = decode::<WriteReply>("write.lua", &json)?;
        match reply {
            WriteReply::Fenced { fence, record } => Err(WriteError::Fenced {
                fence: number_w(&fence)?,
                record,
            }),
            WriteReply::Serial { stored } => Err(WriteError::SerialBackwards {
                stored: number_w(&stored)?,
                sent: change.parsed.map_or(0, |p| p.serial),
            }),
            WriteReply::Lineage { stored } => Err(WriteError::LineageChanged {
                stored,
                sent: lineage.to_string(),
            }),
            WriteReply::NotFound => Err(WriteError::NotFound),
            WriteReply::Collision => Err(collision(name).into()),
            other => Ok(other),
        }
    }

    /// A write's own result: the version it appended.
    async fn append(
        &self,
        name: &StateName,
        change: Change<'_>,
    ) -> Result<VersionMeta, WriteError> {
        match self.run_write(name, change).await? {
            WriteReply::Ok { meta: Some(meta) } => Ok(meta),
            _ => Err(WriteError::Store(
                "write.lua: an answer without its version".into(),
            )),
        }
    }

    /// `refusal`, found in Rust, but only once the guard passed: the guard is
    /// checked first, as in the embedded store.
    async fn after_guard(
        &self,
        name: &StateName,
        guard: &Guard,
        refusal: WriteError,
    ) -> WriteError {
        let check = Change {
            op: "guard",
            guard,
            force: false,
            parsed: None,
            now_ms: 0,
            body: "",
            expect_max_serial: "",
        };
        match self.run_write(name, check).await {
            Ok(_) => refusal,
            Err(e) => e,
        }
    }
}

fn number_w(s: &str) -> Result<u64, WriteError> {
    Ok(number("write.lua", s)?)
}

/// How often a rollback reads again when other writes keep raising the highest
/// serial between its read and its write.
const ROLLBACK_ATTEMPTS: usize = 8;

#[async_trait::async_trait]
impl StateStore for RedisStates {
    async fn get(&self, name: &StateName) -> Result<Option<StoredState>, StoreError> {
        match self.read_doc(name, &["get"]).await? {
            (ReadReply::State { meta }, body) => Ok(Some(StoredState { meta, body })),
            _ => Ok(None),
        }
    }

    async fn get_version(
        &self,
        name: &StateName,
        version: u64,
    ) -> Result<Option<StoredState>, StoreError> {
        let v = version.to_string();
        match self.read_doc(name, &["version", &v]).await? {
            (ReadReply::State { meta }, body) => Ok(Some(StoredState { meta, body })),
            _ => Ok(None),
        }
    }

    async fn versions(&self, name: &StateName) -> Result<Vec<VersionMeta>, StoreError> {
        match self.read_doc(name, &["versions"]).await? {
            (ReadReply::Versions { list }, _) => Ok(list),
            _ => Err(StoreError("read.lua: not a list of versions".into())),
        }
    }

    async fn list(&self) -> Result<Vec<StateSummary>, StoreError> {
        let json = self
            .backend
            .eval(&self.scripts.names, &self.names_key(), &["list"])
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        let names: Vec<String> = decode("names.lua", &json)?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let name = StateName::parse(&n)
                .map_err(|e| StoreError(format!("a state name in the index: {e}")))?;
            if let Some(summary) = self.summary(&name).await? {
                out.push(summary);
            }
        }
        Ok(out)
    }

    async fn summary(&self, name: &StateName) -> Result<Option<StateSummary>, StoreError> {
        match self.read_doc(name, &["summary"]).await? {
            (
                ReadReply::Summary {
                    current,
                    versions,
                    lock,
                    fence,
                },
                _,
            ) => {
                if versions == 0 && lock.is_none() {
                    return Ok(None);
                }
                Ok(Some(StateSummary {
                    name: name.clone(),
                    current,
                    versions,
                    lock,
                    fence: number("read.lua", &fence)?,
                }))
            }
            _ => Err(StoreError("read.lua: not a summary".into())),
        }
    }

    async fn put(&self, name: &StateName, write: Write) -> Result<VersionMeta, WriteError> {
        let parsed = check::check_size(write.body.len(), self.options.max_state_bytes)
            .and_then(|()| check::parse_body(&write.body));
        let parsed = match parsed {
            Ok(p) => p,
            Err(refusal) => return Err(self.after_guard(name, &write.guard, refusal).await),
        };
        // parse_body accepted it, so it is UTF-8.
        let body = std::str::from_utf8(&write.body)
            .map_err(|_| WriteError::InvalidState("the state must be UTF-8 JSON".into()))?;
        self.index(name).await?;
        self.append(
            name,
            Change {
                op: "put",
                guard: &write.guard,
                force: write.force,
                parsed: Some(&parsed),
                now_ms: write.now_ms,
                body,
                expect_max_serial: "",
            },
        )
        .await
    }

    async fn delete(
        &self,
        name: &StateName,
        guard: Guard,
        now_ms: u64,
    ) -> Result<VersionMeta, WriteError> {
        self.append(
            name,
            Change {
                op: "delete",
                guard: &guard,
                force: false,
                parsed: None,
                now_ms,
                body: "",
                expect_max_serial: "",
            },
        )
        .await
    }

    async fn rollback(
        &self,
        name: &StateName,
        version: u64,
        guard: Guard,
        now_ms: u64,
    ) -> Result<VersionMeta, WriteError> {
        let v = version.to_string();
        for _ in 0..ROLLBACK_ATTEMPTS {
            let (meta, max_serial, body) = match self.read_doc(name, &["source", &v]).await? {
                (ReadReply::Source { meta, max_serial }, body) => (meta, max_serial, body),
                _ => return Err(self.after_guard(name, &guard, WriteError::NotFound).await),
            };
            let serial = check::next_serial(number_w(&max_serial)?)?;
            let rewritten = check::rewrite_serial(&body, serial)
                .and_then(|b| check::check_size(b.len(), self.options.max_state_bytes).map(|()| b));
            let rewritten = match rewritten {
                Ok(b) => b,
                Err(refusal) => return Err(self.after_guard(name, &guard, refusal).await),
            };
            let parsed = check::Parsed {
                serial,
                lineage: meta.lineage,
                md5: check::md5_hex(&rewritten),
                size: rewritten.len() as u64,
            };
            let body = std::str::from_utf8(&rewritten)
                .map_err(|_| WriteError::InvalidState("the state must be UTF-8 JSON".into()))?;
            let change = Change {
                op: "rollback",
                guard: &guard,
                force: true,
                parsed: Some(&parsed),
                now_ms,
                body,
                expect_max_serial: &max_serial,
            };
            match self.run_write(name, change).await? {
                WriteReply::Ok { meta: Some(meta) } => return Ok(meta),
                WriteReply::Retry => continue,
                _ => {
                    return Err(WriteError::Store(
                        "write.lua: an answer without its version".into(),
                    ));
                }
            }
        }
        Err(WriteError::Store(format!(
            "the state {name} kept changing during the rollback; try again"
        )))
    }

    async fn lock_record(&self, name: &StateName) -> Result<Option<LockRecord>, StoreError> {
        match self.read_doc(name, &["summary"]).await? {
            (ReadReply::Summary { lock, .. }, _) => Ok(lock),
            _ => Err(StoreError("read.lua: not a summary".into())),
        }
    }

    async fn fence(&self, name: &StateName) -> Result<u64, StoreError> {
        match self.read_doc(name, &["summary"]).await? {
            (ReadReply::Summary { fence, .. }, _) => number("read.lua", &fence),
            _ => Err(StoreError("read.lua: not a summary".into())),
        }
    }

    async fn record_lock(&self, name: &StateName, record: LockRecord) -> Result<(), RecordError> {
        self.index(name).await?;
        let json = serde_json::to_string(&record)
            .map_err(|e| RecordError::Store(format!("the lock record: {e}")))?;
        let token = record.token.to_string();
        let args = [
            name.as_str(),
            "record",
            &token,
            &json,
            &record.id_digest,
            &record.public_id,
        ];
        let reply = self
            .backend
            .eval_acked(&self.scripts.lock, &self.state_key(name), &args)
            .await
            .map_err(|e| RecordError::Store(e.to_string()))?;
        match decode::<LockReply>("lock.lua", &reply)? {
            LockReply::Ok => Ok(()),
            LockReply::Stale { fence } => Err(RecordError::Stale {
                fence: number("lock.lua", &fence)?,
            }),
            LockReply::Collision => Err(collision(name).into()),
        }
    }

    async fn clear_lock(&self, name: &StateName, token: u64) -> Result<(), StoreError> {
        let token = token.to_string();
        let reply = self
            .backend
            .eval_acked(
                &self.scripts.lock,
                &self.state_key(name),
                &[name.as_str(), "clear", &token],
            )
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        match decode::<LockReply>("lock.lua", &reply)? {
            LockReply::Ok | LockReply::Stale { .. } => Ok(()),
            LockReply::Collision => Err(collision(name)),
        }
    }
}
