//! The registry on Redis: the Lua scripts under `P{cluster}:` and their typed
//! replies. Each script is one atomic step on the registry's slot; see
//! `lua/common.lua` for the keys.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use tflock_core::BackendError;
use tflock_redis::RedisBackend;
use tflock_redis::scripts::Script;

macro_rules! registry_script {
    ($file:literal) => {
        Script::new(
            $file,
            concat!(
                include_str!("../lua/common.lua"),
                "\n",
                include_str!(concat!("../lua/", $file)),
            ),
        )
    };
}

/// The registry's scripts.
pub(crate) struct Scripts {
    tick: Script,
    status: Script,
    resign: Script,
    rollup: Script,
}

impl Scripts {
    pub(crate) fn load() -> Self {
        Scripts {
            tick: registry_script!("tick.lua"),
            status: registry_script!("status.lua"),
            resign: registry_script!("resign.lua"),
            rollup: registry_script!("rollup.lua"),
        }
    }
}

/// A number the scripts send as a string.
fn num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        U(u64),
        F(f64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::S(s) if s.is_empty() => 0,
        Raw::S(s) => s
            .parse::<u64>()
            .or_else(|_| s.parse::<f64>().map(|f| f.max(0.0) as u64))
            .map_err(serde::de::Error::custom)?,
        Raw::U(u) => u,
        Raw::F(f) => f.max(0.0) as u64,
    })
}

fn opt_num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    num(d).map(Some)
}

/// A JSON object that an empty Lua table may have encoded as `[]`... or `{}`.
fn lua_map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: DeserializeOwned,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_value(v)
                    .map(|v| (k, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect(),
        serde_json::Value::Array(a) if a.is_empty() => Ok(BTreeMap::new()),
        serde_json::Value::Null => Ok(BTreeMap::new()),
        other => Err(serde::de::Error::custom(format!(
            "expected an object, got {other}"
        ))),
    }
}

fn lua_vec<'de, D, V>(d: D) -> Result<Vec<V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: DeserializeOwned,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(a) => a
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(serde::de::Error::custom))
            .collect(),
        serde_json::Value::Object(o) if o.is_empty() => Ok(Vec::new()),
        serde_json::Value::Null => Ok(Vec::new()),
        other => Err(serde::de::Error::custom(format!(
            "expected a list, got {other}"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TickRole {
    Elected,
    Leader,
    Follower,
}

/// tick.lua's reply.
#[derive(Debug, Deserialize)]
pub(crate) struct TickReply {
    pub role: TickRole,
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default, deserialize_with = "opt_num")]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub revived: bool,
    /// The registry's clock when it answered (µs).
    #[serde(default, deserialize_with = "num")]
    pub now: u64,
    /// For a leader: node id → when declared dead (µs, the registry's clock: compare
    /// it only with `now`).
    #[serde(default, deserialize_with = "lua_map_num")]
    pub dead: BTreeMap<String, u64>,
}

fn lua_map_num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u64>, D::Error> {
    let m: BTreeMap<String, serde_json::Value> = lua_map(d)?;
    m.into_iter()
        .map(|(k, v)| num(v).map(|n| (k, n)).map_err(serde::de::Error::custom))
        .collect()
}

/// One node as the registry holds it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawNode {
    pub id: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, deserialize_with = "num")]
    pub started_at: u64,
    #[serde(default, deserialize_with = "num")]
    pub heartbeat: u64,
    #[serde(default, deserialize_with = "num")]
    pub handoffs: u64,
    #[serde(default, deserialize_with = "num")]
    pub expiries: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawLeader {
    pub id: String,
    #[serde(deserialize_with = "num")]
    pub epoch: u64,
    #[serde(default, deserialize_with = "num")]
    pub since: u64,
}

/// The leader's roll-up as stored.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawRollup {
    #[serde(default, deserialize_with = "num")]
    pub nodes: u64,
    #[serde(default, deserialize_with = "num")]
    pub handoffs: u64,
    #[serde(default, deserialize_with = "num")]
    pub expiries: u64,
    #[serde(default, deserialize_with = "num")]
    pub active_locks: u64,
    #[serde(default, deserialize_with = "num")]
    pub queue_depth: u64,
    #[serde(default, deserialize_with = "num")]
    pub at: u64,
    #[serde(default, deserialize_with = "num")]
    pub epoch: u64,
    #[serde(default)]
    pub by: String,
}

/// status.lua's reply.
#[derive(Debug, Deserialize)]
pub(crate) struct StatusReply {
    #[serde(default, deserialize_with = "lua_vec")]
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub leader: Option<RawLeader>,
    #[serde(default, deserialize_with = "num")]
    pub epoch: u64,
    #[serde(default, deserialize_with = "lua_map_num")]
    pub dead: BTreeMap<String, u64>,
    #[serde(default)]
    pub rollup: Option<RawRollup>,
    #[serde(default, deserialize_with = "num")]
    pub now: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResignReply {
    #[serde(default)]
    pub resigned: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RollupReply {
    pub r: String,
}

/// What a node sends with each heartbeat.
pub(crate) struct Heartbeat<'a> {
    pub id: &'a str,
    pub info: String,
    pub node_ttl_ms: String,
    pub lease_ms: String,
    pub campaign: bool,
    pub dead_keep_ms: String,
    pub counters: String,
}

/// Calls the registry's scripts through the backend's connection.
pub(crate) struct Registry {
    pub backend: std::sync::Arc<RedisBackend>,
    /// `P{cluster}:`
    pub key: String,
    scripts: Scripts,
}

impl Registry {
    pub(crate) fn new(backend: std::sync::Arc<RedisBackend>) -> Self {
        let key = format!("{}{{cluster}}:", backend.key_prefix());
        Registry {
            backend,
            key,
            scripts: Scripts::load(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<T, BackendError> {
        let json = self.backend.eval(script, &self.key, args).await?;
        serde_json::from_str(&json).map_err(|e| {
            BackendError::Internal(format!(
                "{}: cannot read the reply ({e}): {json}",
                script.name
            ))
        })
    }

    pub(crate) async fn tick(&self, hb: &Heartbeat<'_>) -> Result<TickReply, BackendError> {
        let args = [
            hb.id,
            &hb.info,
            &hb.node_ttl_ms,
            &hb.lease_ms,
            if hb.campaign { "1" } else { "0" },
            &hb.dead_keep_ms,
            &hb.counters,
        ];
        self.call(&self.scripts.tick, &args).await
    }

    pub(crate) async fn status(&self) -> Result<StatusReply, BackendError> {
        self.call(&self.scripts.status, &[]).await
    }

    pub(crate) async fn resign(
        &self,
        id: &str,
        epoch_floor: u64,
        leave: bool,
    ) -> Result<ResignReply, BackendError> {
        let floor = epoch_floor.to_string();
        self.call(
            &self.scripts.resign,
            &[id, &floor, if leave { "1" } else { "0" }],
        )
        .await
    }

    pub(crate) async fn rollup(
        &self,
        id: &str,
        epoch: u64,
        store: &str,
    ) -> Result<RollupReply, BackendError> {
        let e = epoch.to_string();
        self.call(&self.scripts.rollup, &[id, &e, store]).await
    }
}
