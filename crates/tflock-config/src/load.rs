//! Loading: defaults, then the YAML file, then the environment, then flags; each
//! later source wins (figment merges them and remembers where each value came from).
//!
//! Errors name the key and where it came from: a file error gives the file, line and
//! column and, for a typo, the nearest valid key; an environment error gives the
//! variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::model::{BackendKind, EnhancedLocking, TflockConfig};

/// The environment prefix of every `enhanced_locking` key (the spec's).
pub const ENV_PREFIX: &str = "ATLANTIS_ENHANCED_LOCKING_";

/// What to load from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The YAML file, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (usually `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// Values from command-line flags, as a tree shaped like the file
    /// (e.g. `{"enhanced_locking": {"server": {"listen": "..."}}}`).
    pub flags: serde_json::Value,
}

impl Sources {
    /// The usual sources: `--config FILE`, else `TFLOCK_CONFIG`, else `./tflock.yaml`
    /// when present; the process environment; the given flags.
    pub fn standard(config_flag: Option<PathBuf>, flags: serde_json::Value) -> Sources {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = config_flag
            .or_else(|| {
                env.iter()
                    .find(|(k, _)| k == "TFLOCK_CONFIG")
                    .map(|(_, v)| PathBuf::from(v))
            })
            .or_else(|| Some(PathBuf::from("tflock.yaml")).filter(|p| p.exists()));
        Sources { file, env, flags }
    }
}

/// A loaded configuration.
#[derive(Debug)]
pub struct Loaded {
    pub config: TflockConfig,
    /// The merged sources, to ask where a value came from.
    pub figment: Figment,
    pub file: Option<PathBuf>,
    /// Things worth saying at start-up (e.g. `backend: boltdb` read as `embedded`).
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Where the value at `key` (dotted, e.g. `enhanced_locking.redis.addresses`)
    /// came from: `default`, a file path, an environment variable or a flag.
    pub fn source_of(&self, key: &str) -> String {
        match self.figment.find_metadata(key) {
            Some(md) => describe_source(md, key),
            None => "default".into(),
        }
    }
}

/// A configuration that cannot be used. Start-up stops with this message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}:{line}:{column}: {message}{}", suggestion_text(.suggestion))]
    File {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
        suggestion: Option<String>,
    },
    #[error("environment variable {var}: {message}{}", suggestion_text(.suggestion))]
    Env {
        var: String,
        message: String,
        suggestion: Option<String>,
    },
    #[error("{key} ({origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

impl ConfigError {
    /// The key at fault, where one is known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn suggestion_text(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// Loads and checks the configuration.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let lookup = |name: &str| {
        sources
            .env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let defaults = serde_json::to_value(TflockConfig::default()).expect("defaults serialise");
    let mut figment = Figment::from(JsonProvider {
        name: "default",
        value: defaults,
    });
    if let Some(path) = &sources.file {
        figment = figment.merge(FileProvider::read(path, &lookup)?);
    }
    figment = figment.merge(EnvProvider::from_vars(&sources.env)?);
    if !sources.flags.is_null() {
        let mut flags = sources.flags.clone();
        expand_vars(&mut flags, &mut Vec::new(), &lookup, &|k| {
            ConfigError::Invalid {
                key: k.to_string(),
                origin: "command-line flag".into(),
                message: String::new(),
            }
        })?;
        figment = figment.merge(JsonProvider {
            name: "command-line flag",
            value: flags,
        });
    }
    let config: TflockConfig = figment
        .extract()
        .map_err(|e| figment_error(&figment, sources, e))?;
    let mut loaded = Loaded {
        config,
        figment,
        file: sources.file.clone(),
        warnings: Vec::new(),
    };
    check(&mut loaded, sources)?;
    Ok(loaded)
}

fn figment_error(figment: &Figment, sources: &Sources, e: figment::Error) -> ConfigError {
    let e = e
        .into_iter()
        .next()
        .expect("figment errors hold at least one error");
    let key = e.path.join(".");
    let source = e
        .metadata
        .as_ref()
        .map(|m| describe_source(m, &key))
        .unwrap_or_else(|| "default".into());
    let _ = figment;
    let source = match (
        &sources.file,
        e.metadata.as_ref().and_then(|m| m.source.as_ref()),
    ) {
        (Some(path), Some(figment::Source::File(_))) => locate_source(path, &key).unwrap_or(source),
        _ => source,
    };
    ConfigError::Invalid {
        key,
        origin: source,
        message: e.kind.to_string(),
    }
}

fn describe_source(md: &Metadata, key: &str) -> String {
    match &md.source {
        Some(figment::Source::File(p)) => {
            locate_source(p, key).unwrap_or_else(|| p.display().to_string())
        }
        _ => {
            let name = md.name.to_string();
            if name == "environment variable" {
                format!("environment variable {}", env_name_of(key))
            } else {
                name
            }
        }
    }
}

/// `file:line` of `key` in the YAML file, when it can be found.
fn locate_source(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = crate::yaml_edit::locate(&text, key)?;
    Some(format!("{}:{}", path.display(), line))
}

/// The environment variable of a dotted key.
pub fn env_name_of(key: &str) -> String {
    match key.strip_prefix("enhanced_locking.") {
        Some(rest) => format!(
            "{ENV_PREFIX}{}",
            rest.replace('.', "_").to_ascii_uppercase()
        ),
        None if key == "log_level" => "ATLANTIS_LOG_LEVEL".into(),
        None => key.to_ascii_uppercase(),
    }
}

/// Every leaf key (dotted) with its default value, from the defaults themselves.
pub fn leaf_keys() -> Vec<(String, serde_json::Value)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(TflockConfig::default()).expect("defaults serialise"),
        &mut out,
    );
    out
}

/// The nearest of `candidates` to `word`, when it is near enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

// ----- providers -----

/// The YAML file, read with serde-saphyr. Accepts the full form
/// (`enhanced_locking:` at the top) and the spec's fragments (a file that starts
/// with `redis:` and the like is read as the inside of `enhanced_locking`).
struct FileProvider {
    path: PathBuf,
    value: serde_json::Value,
}

impl FileProvider {
    fn read(
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FileProvider, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let untyped: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(&text).map_err(|e| saphyr_error(path, &text, e))?
        };
        let Some(top) = untyped.as_object() else {
            return Err(ConfigError::File {
                path: path.into(),
                line: 1,
                column: 1,
                message: "the file must hold a mapping (enhanced_locking: ...)".into(),
                suggestion: None,
            });
        };
        let full_form = top
            .keys()
            .all(|k| matches!(k.as_str(), "enhanced_locking" | "log_level" | "log-level"));
        // Typed parse first: it refuses unknown keys and wrong types with a line number.
        let mut value = if full_form {
            serde_saphyr::from_str::<TflockConfig>(&text)
                .map_err(|e| saphyr_error(path, &text, e))?;
            untyped
        } else {
            serde_saphyr::from_str::<EnhancedLocking>(&text)
                .map_err(|e| saphyr_error(path, &text, e))?;
            serde_json::json!({ "enhanced_locking": untyped })
        };
        if let Some(v) = value.as_object_mut().and_then(|m| m.remove("log-level")) {
            value
                .as_object_mut()
                .expect("object")
                .insert("log_level".into(), v);
        }
        expand_vars(&mut value, &mut Vec::new(), lookup, &|k| {
            ConfigError::Invalid {
                key: k.to_string(),
                origin: locate_source(path, k).unwrap_or_else(|| path.display().to_string()),
                message: String::new(),
            }
        })?;
        Ok(FileProvider {
            path: path.to_path_buf(),
            value,
        })
    }
}

fn saphyr_error(path: &Path, _text: &str, e: serde_saphyr::Error) -> ConfigError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    // The rendered message may carry a snippet; the first line is the message.
    let full = e.to_string();
    let first = full
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&full)
        .trim();
    // Drop the "error: line N column M:" the renderer adds; the location is ours.
    let message = match first.strip_prefix("error: ") {
        Some(rest) if rest.starts_with("line ") => rest.split_once(": ").map_or(rest, |(_, m)| m),
        Some(rest) => rest,
        None => first,
    }
    .to_string();
    let suggestion = unknown_field_suggestion(&full);
    ConfigError::File {
        path: path.into(),
        line,
        column,
        message,
        suggestion,
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the nearest of a, b.
fn unknown_field_suggestion(msg: &str) -> Option<String> {
    let rest = msg.split("unknown field `").nth(1)?;
    let word = rest.split('`').next()?;
    let expected = rest.split("expected").nth(1)?;
    let expected = expected
        .trim_start()
        .strip_prefix("one of")
        .unwrap_or(expected);
    let candidates: Vec<&str> = expected
        .lines()
        .next()
        .unwrap_or("")
        .split(',')
        .map(|c| c.trim().trim_matches('`'))
        .filter(|c| !c.is_empty())
        .collect();
    nearest(word, candidates)
}

impl Provider for FileProvider {
    fn metadata(&self) -> Metadata {
        Metadata::from("YAML file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        json_to_dict(&self.value)
    }
}

/// `ATLANTIS_ENHANCED_LOCKING_*` (and `ATLANTIS_LOG_LEVEL`), typed by the key's
/// default: booleans, numbers, comma-separated lists, strings.
struct EnvProvider {
    value: serde_json::Value,
}

impl EnvProvider {
    fn from_vars(vars: &[(String, String)]) -> Result<EnvProvider, ConfigError> {
        let leaves = leaf_keys();
        let by_env: Vec<(String, &String, &serde_json::Value)> =
            leaves.iter().map(|(k, d)| (env_name_of(k), k, d)).collect();
        let mut root = serde_json::Value::Object(Default::default());
        for (var, raw) in vars {
            if !(var.starts_with(ENV_PREFIX) || var == "ATLANTIS_LOG_LEVEL") {
                continue;
            }
            let Some((_, key, default)) = by_env.iter().find(|(e, _, _)| e == var) else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "is not a tflock setting".into(),
                    suggestion: nearest(var, by_env.iter().map(|(e, _, _)| e.as_str())),
                });
            };
            let mut raw = raw.clone();
            expand_str(&mut raw, &|n| {
                vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            })
            .map_err(|missing| ConfigError::Env {
                var: var.clone(),
                message: format!("refers to ${{{missing}}}, which is not set"),
                suggestion: None,
            })?;
            let value = typed_env_value(&raw, default).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
                suggestion: None,
            })?;
            insert_path(&mut root, key, value);
        }
        Ok(EnvProvider { value: root })
    }
}

fn typed_env_value(raw: &str, default: &serde_json::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match default {
        J::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => J::Bool(true),
            "false" | "0" | "no" | "off" => J::Bool(false),
            _ => return Err(format!("'{raw}' is not a boolean (true or false)")),
        },
        J::Number(_) => {
            if let Ok(n) = raw.trim().parse::<i64>() {
                J::from(n)
            } else if let Ok(f) = raw.trim().parse::<f64>() {
                J::from(f)
            } else {
                return Err(format!("'{raw}' is not a number"));
            }
        }
        J::Array(_) => J::Array(
            raw.split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| J::String(s.into()))
                .collect(),
        ),
        _ => J::String(raw.to_string()),
    })
}

fn insert_path(root: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let map = cur.as_object_mut().expect("objects along the path");
        if i == parts.len() - 1 {
            map.insert((*p).to_string(), value);
            return;
        }
        cur = map
            .entry((*p).to_string())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        json_to_dict(&self.value)
    }
}

/// Flags, already shaped like the file.
struct JsonProvider {
    name: &'static str,
    value: serde_json::Value,
}

impl Provider for JsonProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        json_to_dict(&self.value)
    }
}

#[allow(clippy::result_large_err)] // figment's own error type, returned by its Provider trait
fn json_to_dict(v: &serde_json::Value) -> Result<Map<Profile, Dict>, figment::Error> {
    let value = Value::serialize(v)?;
    let dict = value.into_dict().unwrap_or_default();
    Ok(Profile::Default.collect(dict))
}

// ----- ${VAR} -----

/// Expands `${VAR}` in every string of `v`; `error(key)` builds the error for a
/// variable that is not set.
fn expand_vars(
    v: &mut serde_json::Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
    error: &dyn Fn(&str) -> ConfigError,
) -> Result<(), ConfigError> {
    match v {
        serde_json::Value::String(s) => expand_str(s, lookup).map_err(|missing| {
            let key = path.join(".");
            match error(&key) {
                ConfigError::Invalid { key, origin, .. } => ConfigError::Invalid {
                    key,
                    origin,
                    message: format!("refers to ${{{missing}}}, which is not set"),
                },
                other => other,
            }
        }),
        serde_json::Value::Array(a) => {
            for x in a {
                expand_vars(x, path, lookup, error)?;
            }
            Ok(())
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                path.push(k.clone());
                expand_vars(x, path, lookup, error)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Replaces `${NAME}` with the environment's value; `$${` stays a literal `${`.
/// Returns the name of a variable that is not set.
pub fn expand_str(s: &mut String, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    if !s.contains("${") {
        return Ok(());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find("${") {
        if i > 0 && rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => return Err(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    *s = out;
    Ok(())
}

// ----- checks across keys -----

fn check(loaded: &mut Loaded, _sources: &Sources) -> Result<(), ConfigError> {
    let invalid = |loaded: &Loaded, key: &str, message: String| ConfigError::Invalid {
        key: key.to_string(),
        origin: loaded.source_of(key),
        message,
    };
    let el = &loaded.config.enhanced_locking;
    if let Err(e) = el.lock_settings().validate() {
        let key = match e.field.as_str() {
            "default_ttl" | "min_retry_backoff" | "max_retry_backoff" => {
                format!("enhanced_locking.redis.{}", e.field)
            }
            f => format!("enhanced_locking.{f}"),
        };
        return Err(invalid(loaded, &key, e.message));
    }
    let r = &el.redis;
    let mut problems: Vec<(&str, String)> = Vec::new();
    if r.pool_size == 0 {
        problems.push((
            "enhanced_locking.redis.pool_size",
            "must be at least 1".into(),
        ));
    }
    if r.db < 0 {
        problems.push(("enhanced_locking.redis.db", "must not be negative".into()));
    }
    if r.key_prefix.is_empty() || r.key_prefix.contains(['{', '}']) {
        problems.push((
            "enhanced_locking.redis.key_prefix",
            "must be non-empty and hold no '{' or '}' (they would capture the hash tag)".into(),
        ));
    }
    for (key, d) in [
        (
            "enhanced_locking.redis.connection_timeout",
            r.connection_timeout,
        ),
        ("enhanced_locking.redis.read_timeout", r.read_timeout),
        ("enhanced_locking.redis.write_timeout", r.write_timeout),
        ("enhanced_locking.redis.dial_timeout", r.dial_timeout),
        ("enhanced_locking.redis.pool_timeout", r.pool_timeout),
        (
            "enhanced_locking.redis.health_check_interval",
            r.health_check_interval,
        ),
        (
            "enhanced_locking.redis.circuit_breaker.reset_timeout",
            r.circuit_breaker.reset_timeout,
        ),
        (
            "enhanced_locking.cluster.heartbeat_interval",
            el.cluster.heartbeat_interval,
        ),
        ("enhanced_locking.cluster.node_ttl", el.cluster.node_ttl),
        (
            "enhanced_locking.cluster.leader_lease",
            el.cluster.leader_lease,
        ),
        (
            "enhanced_locking.cluster.rollup_interval",
            el.cluster.rollup_interval,
        ),
    ] {
        if d.is_zero() {
            problems.push((key, "must be greater than zero".into()));
        }
    }
    if el.cluster.leader_lease <= el.cluster.heartbeat_interval {
        problems.push((
            "enhanced_locking.cluster.leader_lease",
            "must be longer than cluster.heartbeat_interval (the leader renews it every heartbeat)"
                .into(),
        ));
    }
    if el.cluster.node_ttl <= el.cluster.heartbeat_interval {
        problems.push((
            "enhanced_locking.cluster.node_ttl",
            "must be longer than cluster.heartbeat_interval".into(),
        ));
    }
    let tf = &el.terraform;
    if tf.lock_ttl.is_zero() || tf.lock_ttl > el.lock_settings().max_ttl {
        problems.push((
            "enhanced_locking.terraform.lock_ttl",
            format!(
                "must be greater than zero and at most max_ttl ({})",
                humantime::format_duration(el.lock_settings().max_ttl)
            ),
        ));
    }
    if tf.queue_grace < Duration::from_secs(1) || tf.queue_grace > Duration::from_secs(3600) {
        problems.push((
            "enhanced_locking.terraform.queue_grace",
            "must be between 1s and 1h (Terraform polls at most every 16s)".into(),
        ));
    }
    if tf.long_poll > Duration::from_secs(300) {
        problems.push((
            "enhanced_locking.terraform.long_poll",
            "must be at most 5m (proxies end idle requests)".into(),
        ));
    }
    if tf.max_state_bytes == 0 || tf.max_state_bytes > 512 * 1024 * 1024 {
        problems.push((
            "enhanced_locking.terraform.max_state_bytes",
            "must be between 1 and 536870912 (512 MiB, Redis's largest value)".into(),
        ));
    }
    if tf.keep_versions == 0 || tf.keep_versions > 1000 {
        problems.push((
            "enhanced_locking.terraform.keep_versions",
            "must be between 1 and 1000".into(),
        ));
    }
    if r.circuit_breaker.failure_threshold == 0 {
        problems.push((
            "enhanced_locking.redis.circuit_breaker.failure_threshold",
            "must be at least 1".into(),
        ));
    }
    if r.circuit_breaker.half_open_max_requests == 0 {
        problems.push((
            "enhanced_locking.redis.circuit_breaker.half_open_max_requests",
            "must be at least 1".into(),
        ));
    }
    if el.backend == BackendKind::Redis {
        if r.addresses.is_empty() && r.sentinel.addresses.is_empty() {
            problems.push((
                "enhanced_locking.redis.addresses",
                "is empty; give at least one host:port".into(),
            ));
        }
        for a in r.addresses.iter().chain(&r.sentinel.addresses) {
            if !valid_host_port(a) {
                problems.push((
                    "enhanced_locking.redis.addresses",
                    format!("'{a}' is not host:port"),
                ));
            }
        }
        if r.auth_method == crate::model::AuthMethod::Acl
            && r.username.as_deref().unwrap_or("").is_empty()
        {
            problems.push((
                "enhanced_locking.redis.username",
                "is required with auth_method: acl".into(),
            ));
        }
        if r.sentinel.master_name.is_some() == r.sentinel.addresses.is_empty() {
            problems.push((
                "enhanced_locking.redis.sentinel",
                "needs both master_name and addresses".into(),
            ));
        }
        if r.sentinel.master_name.is_some() && r.cluster_mode {
            problems.push((
                "enhanced_locking.redis.cluster_mode",
                "cannot be combined with sentinel".into(),
            ));
        }
        if r.tls_key_file.is_some() != r.tls_cert_file.is_some() {
            problems.push((
                "enhanced_locking.redis.tls_cert_file",
                "tls_cert_file and tls_key_file go together".into(),
            ));
        }
    }
    if !valid_host_port(&el.server.listen) {
        problems.push((
            "enhanced_locking.server.listen",
            format!("'{}' is not host:port", el.server.listen),
        ));
    }
    if let Some((key, message)) = problems.into_iter().next() {
        return Err(invalid(loaded, key, message));
    }
    if el.backend == BackendKind::Boltdb {
        loaded.warnings.push(format!(
            "backend: boltdb is the spec's name for the single-node store; using tflock's embedded store at {} ({})",
            el.embedded.path.display(),
            loaded.source_of("enhanced_locking.backend")
        ));
        loaded.config.enhanced_locking.backend = BackendKind::Embedded;
    }
    Ok(())
}

fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && port.parse::<u16>().is_ok()
}
