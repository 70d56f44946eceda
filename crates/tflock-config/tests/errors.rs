//! Bad configuration stops start-up with a message naming the key, the file and line,
//! and the nearest valid key for a typo. Precedence: flags > environment > file.

use std::io::Write;

use tflock_config::{ConfigError, Sources, load};

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn sources(f: &tempfile::NamedTempFile, env: &[(&str, &str)]) -> Sources {
    Sources {
        file: Some(f.path().into()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: serde_json::Value::Null,
    }
}

#[test]
fn unknown_key_gives_file_line_and_suggestion() {
    let f = file("enhanced_locking:\n  backend: redis\n  redis:\n    pool_sise: 20\n");
    let err = load(&sources(&f, &[])).unwrap_err();
    let msg = err.to_string();
    match &err {
        ConfigError::File {
            line, suggestion, ..
        } => {
            assert_eq!(*line, 4, "{msg}");
            assert_eq!(suggestion.as_deref(), Some("pool_size"), "{msg}");
        }
        other => panic!("expected a file error, got {other:?}"),
    }
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    assert!(msg.contains("pool_sise"), "{msg}");
}

#[test]
fn wrong_type_gives_file_and_line() {
    let f = file("enhanced_locking:\n  max_queue_size: lots\n");
    let err = load(&sources(&f, &[])).unwrap_err();
    match &err {
        ConfigError::File { line, .. } => assert_eq!(*line, 2, "{err}"),
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn negative_size_is_refused() {
    let f = file("enhanced_locking:\n  max_queue_size: -1\n");
    let err = load(&sources(&f, &[])).unwrap_err();
    assert!(matches!(err, ConfigError::File { line: 2, .. }), "{err}");
}

#[test]
fn max_timeout_below_default_timeout_names_key_file_and_line() {
    let f = file("enhanced_locking:\n  default_timeout: 10m\n  max_timeout: 1m\n");
    let err = load(&sources(&f, &[])).unwrap_err();
    assert_eq!(err.key(), Some("enhanced_locking.max_timeout"), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:3", f.path().display())), "{msg}");
}

#[test]
fn impossible_redis_values_are_named() {
    for (text, key) in [
        (
            "enhanced_locking:\n  backend: redis\n  redis:\n    pool_size: 0\n",
            "enhanced_locking.redis.pool_size",
        ),
        (
            "enhanced_locking:\n  backend: redis\n  redis:\n    addresses: [\"nohost\"]\n",
            "enhanced_locking.redis.addresses",
        ),
        (
            "enhanced_locking:\n  backend: redis\n  redis:\n    auth_method: acl\n",
            "enhanced_locking.redis.username",
        ),
        (
            "enhanced_locking:\n  redis:\n    key_prefix: \"a{b}\"\n",
            "enhanced_locking.redis.key_prefix",
        ),
        (
            "enhanced_locking:\n  redis:\n    circuit_breaker:\n      failure_threshold: 0\n",
            "enhanced_locking.redis.circuit_breaker.failure_threshold",
        ),
        (
            "enhanced_locking:\n  max_priority_boost: 9\n",
            "enhanced_locking.max_priority_boost",
        ),
    ] {
        let f = file(text);
        let err = load(&sources(&f, &[])).unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
    }
}

#[test]
fn bad_duration_is_refused_with_line() {
    let f = file("enhanced_locking:\n  redis:\n    default_ttl: forever\n");
    let err = load(&sources(&f, &[])).unwrap_err();
    assert!(matches!(err, ConfigError::File { line: 3, .. }), "{err}");
}

#[test]
fn environment_overrides_file_and_uses_the_spec_names() {
    let f = file("enhanced_locking:\n  backend: embedded\n  max_queue_size: 10\n");
    let l = load(&sources(
        &f,
        &[
            ("ATLANTIS_ENHANCED_LOCKING_ENABLED", "true"),
            ("ATLANTIS_ENHANCED_LOCKING_BACKEND", "redis"),
            (
                "ATLANTIS_ENHANCED_LOCKING_REDIS_ADDRESSES",
                "redis:6379,redis2:6380",
            ),
            ("ATLANTIS_ENHANCED_LOCKING_ENABLE_PRIORITY_QUEUE", "false"),
            (
                "ATLANTIS_ENHANCED_LOCKING_REDIS_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
                "9",
            ),
            ("ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN", "127.0.0.1:5000"),
            ("UNRELATED", "x"),
        ],
    ))
    .unwrap();
    let el = &l.config.enhanced_locking;
    assert_eq!(el.backend, tflock_config::BackendKind::Redis);
    assert_eq!(el.redis.addresses, ["redis:6379", "redis2:6380"]);
    assert!(!el.enable_priority_queue);
    assert_eq!(
        el.max_queue_size, 10,
        "file value kept where the environment says nothing"
    );
    assert_eq!(el.redis.circuit_breaker.failure_threshold, 9);
    assert_eq!(el.server.listen, "127.0.0.1:5000");
    assert_eq!(
        l.source_of("enhanced_locking.backend"),
        "environment variable ATLANTIS_ENHANCED_LOCKING_BACKEND"
    );
    assert!(
        l.source_of("enhanced_locking.max_queue_size")
            .contains(":3"),
        "{}",
        l.source_of("enhanced_locking.max_queue_size")
    );
    assert_eq!(l.source_of("enhanced_locking.redis.pool_size"), "default");
}

#[test]
fn flags_override_environment() {
    let f = file("enhanced_locking:\n  server:\n    listen: 127.0.0.1:1\n");
    let mut s = sources(
        &f,
        &[("ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN", "127.0.0.1:2")],
    );
    s.flags = serde_json::json!({"enhanced_locking": {"server": {"listen": "127.0.0.1:3"}}});
    let l = load(&s).unwrap();
    assert_eq!(l.config.enhanced_locking.server.listen, "127.0.0.1:3");
    assert_eq!(
        l.source_of("enhanced_locking.server.listen"),
        "command-line flag"
    );
}

#[test]
fn unknown_environment_variable_is_refused_with_suggestion() {
    let f = file("");
    let err = load(&sources(
        &f,
        &[("ATLANTIS_ENHANCED_LOCKING_REDIS_POOLSIZE", "3")],
    ))
    .unwrap_err();
    match err {
        ConfigError::Env {
            var, suggestion, ..
        } => {
            assert_eq!(var, "ATLANTIS_ENHANCED_LOCKING_REDIS_POOLSIZE");
            assert_eq!(
                suggestion.as_deref(),
                Some("ATLANTIS_ENHANCED_LOCKING_REDIS_POOL_SIZE")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_environment_value_names_the_variable() {
    let f = file("");
    let err = load(&sources(
        &f,
        &[("ATLANTIS_ENHANCED_LOCKING_ENABLE_RETRIES", "maybe")],
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("ATLANTIS_ENHANCED_LOCKING_ENABLE_RETRIES"),
        "{err}"
    );
}

#[test]
fn boltdb_is_read_as_embedded_with_a_warning() {
    let f = file("enhanced_locking:\n  backend: boltdb\n");
    let l = load(&sources(&f, &[])).unwrap();
    assert_eq!(
        l.config.enhanced_locking.backend,
        tflock_config::BackendKind::Embedded
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("boltdb") && w.contains("embedded")),
        "{:?}",
        l.warnings
    );
}

#[test]
fn schema_is_generated_and_covers_the_spec_schema() {
    let schema = tflock_config::json_schema();
    let text = schema.to_string();
    for key in [
        "enhanced_locking",
        "backend",
        "addresses",
        "cluster_mode",
        "pool_size",
        "default_ttl",
        "circuit_breaker",
        "min_replicas_ack",
    ] {
        assert!(text.contains(&format!("\"{key}\"")), "schema lacks {key}");
    }
    for variant in ["boltdb", "redis", "embedded"] {
        assert!(text.contains(variant));
    }
}

#[test]
fn every_key_is_in_the_configuration_reference() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.md"
    ))
    .unwrap();
    for (key, _) in tflock_config::load::leaf_keys() {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/configuration.md does not document {key}"
        );
        assert!(
            doc.contains(&tflock_config::load::env_name_of(&key)),
            "docs/configuration.md lacks the variable of {key}"
        );
    }
}

#[test]
fn lock_delay_and_require_persistence_load_and_a_bad_delay_is_named() {
    let f = file("enhanced_locking:\n  lock_delay: 2s\n  redis:\n    require_persistence: true\n");
    let l = load(&sources(&f, &[])).unwrap();
    let el = &l.config.enhanced_locking;
    assert_eq!(el.lock_delay, std::time::Duration::from_secs(2));
    assert!(el.redis.require_persistence);
    assert_eq!(
        el.lock_settings().lock_delay,
        std::time::Duration::from_secs(2)
    );

    // The default, and 0s to disable it.
    let f = file("enhanced_locking:\n  backend: embedded\n");
    let l = load(&sources(&f, &[])).unwrap();
    assert_eq!(
        l.config.enhanced_locking.lock_delay,
        std::time::Duration::from_secs(15)
    );
    assert!(!l.config.enhanced_locking.redis.require_persistence);
    let f = file("enhanced_locking:\n  lock_delay: 0s\n");
    let l = load(&sources(
        &f,
        &[("ATLANTIS_ENHANCED_LOCKING_LOCK_DELAY", "0s")],
    ))
    .unwrap();
    assert!(l.config.enhanced_locking.lock_delay.is_zero());

    let f = file("enhanced_locking:\n  lock_delay: 2h\n");
    let err = load(&sources(&f, &[])).unwrap_err();
    assert_eq!(err.key(), Some("enhanced_locking.lock_delay"), "{err}");
    assert!(err.to_string().contains("0s disables"), "{err}");
}
