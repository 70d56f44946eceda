//! The spec's Operations and Migration Guide sections, one command line at a time and
//! as written (`atlantis` read as `tflock`), in a directory whose `tflock.yaml` is the
//! configuration, with a real server running. Host names become this machine's
//! loopback address and the test's ports.

use serde_json::Value;

use crate::common::{Env, eventually};

/// Sets up a held lock and a reservation behind it, through the CLI.
fn lock_and_queue(env: &Env) {
    let (code, _, err) = env.sh(
        "tflock locks acquire --project=myorg/myrepo --workspace=default --owner=myorg/myrepo#42 --pull=42 --user=alice",
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = env.sh(
        "tflock locks acquire --project=myorg/myrepo --workspace=default --owner=myorg/myrepo#43 --pull=43 --user=bob --reserve",
    );
    assert_eq!(code, 3, "{err}");
}

fn operations(env: &mut Env) {
    env.start_server(&[], &[]);
    lock_and_queue(env);

    // # Check active locks
    let (code, out, err) = env.sh("tflock locks list");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("myorg/myrepo/./default/") && out.contains("myorg/myrepo#42"),
        "{out}"
    );

    // # Queue status
    let (code, out, err) = env.sh("tflock locks queue --project=myorg/myrepo --workspace=default");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("held by myorg/myrepo#42"), "{out}");
    assert!(
        out.contains("myorg/myrepo#43") && out.contains("reservation"),
        "{out}"
    );

    // # Force unlock (admin only): the reservation behind is granted in the same step.
    let (code, out, err) =
        env.sh("tflock locks unlock --project=myorg/myrepo --workspace=default --force");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("released myorg/myrepo/./default/"), "{out}");
    assert!(out.contains("handed to myorg/myrepo#43"), "{out}");
    let (_, out, _) = env.sh("tflock locks queue --project=myorg/myrepo --workspace=default");
    assert!(
        out.contains("held by myorg/myrepo#43") && out.contains("queue empty"),
        "{out}"
    );

    // # Backend health
    let (code, out, err) = env.sh(&format!(
        "curl -sS http://127.0.0.1:{}/api/health/locking",
        env.port
    ));
    assert_eq!(code, 0, "{err}");
    let health: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let text = health.to_string();
    assert!(text.contains("healthy"), "{text}");
    assert!(
        text.contains("closed"),
        "the breaker state is not shown: {text}"
    );

    if let Some(redis) = &env.redis {
        // # Redis connectivity
        let (code, out, err) = env.sh(&format!("redis-cli -h 127.0.0.1 -p {} ping", redis.port()));
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), "PONG");
    }
}

#[test]
fn operations_section_as_written_on_embedded() {
    operations(&mut Env::embedded());
}

#[test]
fn operations_section_as_written_on_redis() {
    operations(&mut Env::redis());
}

/// Resources of an export, keyed and sorted, without the fields that say where and
/// when the export was made.
fn resources(snapshot: &Value) -> Vec<Value> {
    let mut v = snapshot["resources"].as_array().unwrap().clone();
    v.sort_by_key(|r| r["resource"].to_string());
    v
}

#[test]
fn migration_guide_as_written_from_embedded_to_redis() {
    // An Atlantis-like deployment: the server runs on the embedded store (the spec's
    // BoltDB) with locks and a queue.
    let mut env = Env::redis();
    let redis_port = env.redis.as_ref().unwrap().port();
    std::fs::write(
        env.path("tflock.yaml"),
        format!(
            "enhanced_locking:\n  backend: \"boltdb\"\n  embedded:\n    path: \"{}\"\n  server:\n    listen: \"127.0.0.1:{}\"\n",
            env.store().display(),
            env.port
        ),
    )
    .unwrap();
    env.start_server(&[], &[]);
    assert!(
        env.server_log()
            .contains("backend: boltdb is the spec's name"),
        "the boltdb warning is not logged:\n{}",
        env.server_log()
    );
    lock_and_queue(&env);
    let (code, _, err) = env.sh(
        "tflock locks acquire --project=myorg/infra --path=net --workspace=prod --project-name=network --owner=myorg/infra#7 --pull=7",
    );
    assert_eq!(code, 0, "{err}");

    // 1. Preparation: # Backup existing locks (the server holds the store: through it).
    let (code, _, err) = env.sh("tflock locks export --format=json > locks_backup.json");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("exported 2 resource(s): 2 lock(s), 1 queue entry"),
        "{err}"
    );
    let backup: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("locks_backup.json")).unwrap())
            .unwrap();
    assert_eq!(backup["backend"], "embedded");

    // 2. Configuration: # Update atlantis.yaml
    std::fs::write(
        env.path("tflock.yaml"),
        format!(
            "# Update tflock.yaml\nenhanced_locking:\n  backend: \"redis\"\n  legacy_fallback: true  # Enable during migration\n  redis:\n    addresses: [\"127.0.0.1:{redis_port}\"]\n  embedded:\n    path: \"{}\"\n  server:\n    listen: \"127.0.0.1:{}\"\n",
            env.store().display(),
            env.port
        ),
    )
    .unwrap();

    // 3. Migration: # Import locks to Redis
    let (code, out, err) = env.sh("tflock locks import --format=json locks_backup.json");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("imported 2 lock(s) and 1 queue entry"),
        "{out}"
    );

    // # Verify migration
    let (code, out, err) = env.sh("tflock locks list --backend=redis");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("myorg/myrepo/./default/") && out.contains("myorg/infra/net/prod/network"),
        "{out}"
    );

    // Lossless: every lease id, token, expiry, queue entry and token counter.
    let (code, out, err) = env.sh("tflock locks export --backend=redis --format=json");
    assert_eq!(code, 0, "{err}");
    let after: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after["backend"], "redis");
    assert_eq!(resources(&after), resources(&backup));
    // Idempotent: the same file again changes nothing.
    let (code, out, err) = env.sh("tflock locks import --format=json locks_backup.json --json");
    assert_eq!(code, 0, "{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            again["imported"].as_u64(),
            again["unchanged"].as_u64(),
            again["queued"].as_u64()
        ),
        (Some(0), Some(2), Some(0)),
        "{again}"
    );

    // 4. Validation: # Test lock operations
    let (code, out, err) = env.sh("tflock locks test --backend=redis");
    assert_eq!(code, 0, "{out}\n{err}");
    for step in [
        "acquire",
        "queued waiter",
        "hand-off",
        "refresh",
        "ttl expiry",
        "unlock",
        "cleanup",
    ] {
        assert!(out.contains(step), "step {step} missing:\n{out}");
    }
    assert!(out.contains("PASS: all 7 steps passed"), "{out}");

    // # Disable fallback
    let (code, out, err) = env.sh("tflock config set enhanced_locking.legacy_fallback false");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("enhanced_locking.legacy_fallback = false"),
        "{out}"
    );
    let text = std::fs::read_to_string(env.path("tflock.yaml")).unwrap();
    assert!(
        text.contains("  legacy_fallback: false  # Enable during migration\n"),
        "{text}"
    );
    assert!(text.starts_with("# Update tflock.yaml\n"), "{text}");
    let (_, out, _) = env.sh("tflock config show --json");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "enhanced_locking.legacy_fallback")
        .unwrap();
    assert_eq!(row["value"], false);
    assert!(
        row["source"].as_str().unwrap().ends_with("tflock.yaml:4"),
        "{row}"
    );

    // The old server still serves the embedded store; it stops cleanly.
    let status = env.stop_server().unwrap();
    assert!(status.success(), "{}", env.server_log());
    eventually("the server's address file is removed", || {
        !crate::common::read(&env.path("data/locks.redb.server")).contains("http")
    });
}
