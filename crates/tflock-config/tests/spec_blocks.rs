//! Every configuration block of the spec, copied verbatim (from a copy of the spec's
//! text kept in `tests/fixtures/spec.md`), validates and loads.

use std::io::Write;
use std::time::Duration;

use tflock_config::{AuthMethod, BackendKind, Loaded, Sources, load};

const SPEC: &str = include_str!("fixtures/spec.md");

/// The ```yaml blocks of the spec, in order, with the heading above each.
fn yaml_blocks() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut lines = SPEC.lines();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
        }
        if line.trim() == "```yaml" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            out.push((heading.clone(), body.join("\n") + "\n"));
        }
    }
    out
}

fn block(heading: &str) -> String {
    yaml_blocks()
        .into_iter()
        .find(|(h, _)| h == heading)
        .unwrap_or_else(|| panic!("no yaml block under '{heading}' in the spec"))
        .1
}

fn load_text(text: &str, env: &[(&str, &str)]) -> Loaded {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let sources = Sources {
        file: Some(f.path().to_path_buf()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: serde_json::Value::Null,
    };
    load(&sources).unwrap_or_else(|e| panic!("block does not load: {e}\n{text}"))
}

#[test]
fn basic_configuration_block_loads() {
    let l = load_text(&block("Basic Configuration"), &[]);
    let el = &l.config.enhanced_locking;
    assert!(el.enabled);
    assert_eq!(el.backend, BackendKind::Redis);
    assert_eq!(el.redis.addresses, ["localhost:6379"]);
    assert_eq!(el.redis.password.as_deref(), Some(""));
    assert_eq!(el.redis.pool_size, 20);
    assert_eq!(el.redis.key_prefix, "atlantis:enhanced:lock:");
    assert_eq!(el.redis.default_ttl, Duration::from_secs(3600));
    assert_eq!(el.redis.connection_timeout, Duration::from_secs(5));
    assert_eq!(el.redis.read_timeout, Duration::from_secs(3));
    assert_eq!(el.redis.write_timeout, Duration::from_secs(3));
    assert!(!el.redis.cluster_mode);
}

#[test]
fn cluster_configuration_block_loads() {
    let l = load_text(&block("Cluster Configuration"), &[]);
    let r = &l.config.enhanced_locking.redis;
    assert_eq!(r.addresses.len(), 3);
    assert_eq!(r.addresses[0], "redis-cluster-0:6379");
    assert!(r.cluster_mode);
    assert_eq!(r.pool_size, 50);
    assert_eq!(r.default_ttl, Duration::from_secs(7200));
}

#[test]
fn advanced_configuration_block_loads() {
    let l = load_text(&block("Advanced Configuration"), &[]);
    let el = &l.config.enhanced_locking;
    assert!(el.enable_priority_queue && el.enable_retries && el.enable_metrics);
    assert_eq!(el.default_timeout, Duration::from_secs(30));
    assert_eq!(el.max_timeout, Duration::from_secs(300));
    assert_eq!(el.max_queue_size, 1000);
    assert_eq!(el.starvation_threshold, Duration::from_secs(120));
    assert_eq!(el.max_priority_boost, 3);
    assert_eq!(el.redis.pool_size, 30);
    assert_eq!(el.redis.health_check_interval, Duration::from_secs(10));
    assert_eq!(el.redis.circuit_breaker.failure_threshold, 5);
    assert_eq!(
        el.redis.circuit_breaker.reset_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(el.redis.circuit_breaker.half_open_max_requests, 3);
    // The settings reach the lock engine.
    let s = el.lock_settings();
    assert_eq!(s.max_queue_size, 1000);
    assert_eq!(s.starvation_threshold, Duration::from_secs(120));
}

#[test]
fn authentication_block_loads_and_expands_the_password() {
    let l = load_text(&block("Authentication"), &[("REDIS_PASSWORD", "s3cret")]);
    let r = &l.config.enhanced_locking.redis;
    assert_eq!(r.password.as_deref(), Some("s3cret"));
    assert_eq!(r.auth_method, AuthMethod::Password);
    // config show masks it.
    let rows = tflock_config::show(&l);
    let pw = rows
        .iter()
        .find(|(k, _, _)| k == "enhanced_locking.redis.password")
        .unwrap();
    assert_eq!(pw.1, serde_json::json!("********"));
}

#[test]
fn authentication_block_without_the_variable_names_it() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(block("Authentication").as_bytes()).unwrap();
    let err = load(&Sources {
        file: Some(f.path().into()),
        env: vec![],
        flags: serde_json::Value::Null,
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("enhanced_locking.redis.password") && msg.contains("${REDIS_PASSWORD}"),
        "{msg}"
    );
    assert!(msg.contains(":2"), "the line of the key is given: {msg}");
}

#[test]
fn network_security_block_loads() {
    let l = load_text(&block("Network Security"), &[]);
    let r = &l.config.enhanced_locking.redis;
    assert!(r.tls_enabled);
    assert_eq!(
        r.tls_cert_file.as_deref(),
        Some(std::path::Path::new("/path/to/cert.pem"))
    );
    assert_eq!(
        r.tls_key_file.as_deref(),
        Some(std::path::Path::new("/path/to/key.pem"))
    );
    assert_eq!(
        r.tls_ca_file.as_deref(),
        Some(std::path::Path::new("/path/to/ca.pem"))
    );
}

#[test]
fn connection_pool_tuning_block_loads() {
    let l = load_text(&block("Connection Pool Tuning"), &[]);
    let r = &l.config.enhanced_locking.redis;
    assert_eq!(r.pool_size, 50);
    assert_eq!(r.max_retries, 3);
    assert_eq!(r.min_retry_backoff, Duration::from_millis(8));
    assert_eq!(r.max_retry_backoff, Duration::from_millis(512));
    assert_eq!(r.dial_timeout, Duration::from_secs(5));
    assert_eq!(r.pool_timeout, Duration::from_secs(4));
    assert_eq!(r.idle_timeout, Duration::from_secs(300));
    assert_eq!(r.idle_check_frequency, Duration::from_secs(60));
}

#[test]
fn migration_guide_configuration_block_loads() {
    // The Migration Guide's config block sits under "From BoltDB to Redis".
    let l = load_text(&block("From BoltDB to Redis"), &[]);
    assert_eq!(l.config.enhanced_locking.backend, BackendKind::Redis);
    assert!(l.config.enhanced_locking.legacy_fallback);
}

#[test]
fn every_configuration_block_of_the_spec_loads() {
    // Deployment artefacts (Compose, Kubernetes) are not tflock config files; the
    // Debugging block mixes YAML with a shell line (`ATLANTIS_LOG_LEVEL=debug`), so
    // only its YAML line is loaded.
    let mut n = 0;
    for (heading, text) in yaml_blocks() {
        if text.starts_with("version:") || text.starts_with("apiVersion:") {
            continue;
        }
        let text = if heading == "Enable Debug Logging" {
            text.lines()
                .filter(|l| !l.contains('='))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        };
        load_text(&text, &[("REDIS_PASSWORD", "x")]);
        n += 1;
    }
    assert!(n >= 8, "only {n} config blocks found");
}
