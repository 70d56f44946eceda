//! tflock's configuration: the spec's `enhanced_locking` YAML block, the spec's
//! `ATLANTIS_ENHANCED_LOCKING_*` environment variables, and command-line flags.
//!
//! # Layout
//!
//! - [`model`]: the keys, their types and defaults ([`TflockConfig`]).
//! - [`load`]: merging (flags > environment > file > defaults, with figment), `${VAR}`
//!   expansion, and checks that name the key, the file and line.
//! - [`yaml_edit`]: finding a key's line and `config set` editing in place.
//!
//! Everything here is documented for users in `docs/configuration.md`.

pub mod load;
pub mod model;
pub mod yaml_edit;

pub use load::{ConfigError, Loaded, Sources, load};
pub use model::{
    AuthMethod, BackendKind, EnhancedLocking, RedisSettings, TerraformSettings, TflockConfig,
};

/// The JSON Schema of the configuration file, generated from the types.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(TflockConfig)).expect("schemas serialise")
}

/// Keys whose values are secrets: masked by `config show`, never logged.
pub const SECRET_KEYS: &[&str] = &[
    "enhanced_locking.redis.password",
    "enhanced_locking.server.api_token",
    "enhanced_locking.server.admin_token",
    "enhanced_locking.server.webhook_secret",
    "enhanced_locking.server.github_webhook_secret",
    "enhanced_locking.server.gitlab_webhook_token",
];

/// The effective configuration as `(key, value, source)` rows, secrets masked.
pub fn show(loaded: &Loaded) -> Vec<(String, serde_json::Value, String)> {
    let value = serde_json::to_value(&loaded.config).expect("config serialises");
    let mut rows = Vec::new();
    for (key, _) in load::leaf_keys() {
        let mut v = key
            .split('.')
            .try_fold(&value, |v, k| v.get(k))
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        if SECRET_KEYS.contains(&key.as_str()) && !v.is_null() {
            v = serde_json::Value::String("********".into());
        }
        let source = loaded.source_of(&key);
        rows.push((key, v, source));
    }
    rows
}
