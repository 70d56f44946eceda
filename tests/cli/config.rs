//! Configuration through the binary: errors name the key and the file's line (exit 2),
//! precedence flags > environment > file > defaults, `enabled: false`, the `config`
//! commands, bad flags, completions.

use serde_json::Value;

use crate::common::{Env, free_port, http_get, output};

fn write(env: &Env, text: &str) {
    std::fs::write(env.path("tflock.yaml"), text).unwrap();
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_the_nearest_key() {
    let env = Env::embedded();
    write(
        &env,
        "enhanced_locking:\n  backend: redis\n  redis:\n    pool_sise: 20\n",
    );
    for args in [
        &["server"][..],
        &["locks", "list"],
        &["config", "validate"],
        &["health"],
    ] {
        let (code, _, err) = env.run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("tflock.yaml:4:"), "{args:?}: {err}");
        assert!(
            err.contains("pool_sise") && err.contains("did you mean `pool_size`"),
            "{err}"
        );
    }
}

#[test]
fn an_impossible_value_names_the_key_and_its_line() {
    let env = Env::embedded();
    write(
        &env,
        "enhanced_locking:\n  default_timeout: 10m\n  max_timeout: 1m\n",
    );
    let (code, _, err) = env.run(&["server"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("enhanced_locking.max_timeout (tflock.yaml:3)"),
        "{err}"
    );
    assert!(err.contains("below default_timeout"), "{err}");
    write(&env, "enhanced_locking:\n  max_queue_size: lots\n");
    let (code, _, err) = env.run(&["locks", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tflock.yaml:2:"), "{err}");
}

#[test]
fn a_bad_environment_variable_is_named() {
    let env = Env::embedded();
    let (code, _, err) = output(
        env.tflock()
            .env("ATLANTIS_ENHANCED_LOCKING_ENABLE_RETRIES", "maybe")
            .arg("server"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ATLANTIS_ENHANCED_LOCKING_ENABLE_RETRIES") && err.contains("not a boolean"),
        "{err}"
    );
    let (code, _, err) = output(
        env.tflock()
            .env("ATLANTIS_ENHANCED_LOCKING_BAKEND", "redis")
            .args(["locks", "list"]),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("did you mean `ATLANTIS_ENHANCED_LOCKING_BACKEND`"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_a_usage_error() {
    let env = Env::embedded();
    let (code, _, err) = env.run(&["--config", "nope.yaml", "locks", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read the config file nope.yaml"),
        "{err}"
    );
}

#[test]
fn enabled_false_refuses_to_start() {
    let env = Env::embedded();
    env.write_config("enabled: false");
    let (code, _, err) = env.run(&["server"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("enhanced locking is disabled") && err.contains("tflock.yaml"),
        "{err}"
    );
}

#[test]
fn the_server_refuses_a_public_address_without_a_token() {
    let env = Env::embedded();
    let (code, _, err) = env.run(&["server", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without an API token"),
        "{err}"
    );
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let mut env = Env::embedded();
    let (file_port, env_port, flag_port) = (env.port, free_port(), free_port());
    // config show: the environment wins over the file, and says so.
    let (code, out, err) = output(
        env.tflock()
            .env(
                "ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN",
                format!("127.0.0.1:{env_port}"),
            )
            .args(["config", "show", "--json"]),
    );
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let listen = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "enhanced_locking.server.listen")
        .unwrap();
    assert_eq!(listen["value"], format!("127.0.0.1:{env_port}"));
    assert_eq!(
        listen["source"],
        "environment variable ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN"
    );
    let path = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "enhanced_locking.embedded.path")
        .unwrap();
    assert!(
        path["source"].as_str().unwrap().ends_with("tflock.yaml:5"),
        "{path}"
    );
    // The server: the flag wins over both.
    let listen_env = format!("127.0.0.1:{env_port}");
    env.port = flag_port;
    env.start_server(
        &["--listen", &format!("127.0.0.1:{flag_port}")],
        &[("ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN", &listen_env)],
    );
    assert!(http_get(flag_port, "/healthz").is_some());
    assert!(http_get(env_port, "/healthz").is_none());
    assert!(http_get(file_port, "/healthz").is_none());
}

#[test]
fn the_config_file_comes_from_the_flag_the_environment_or_the_directory() {
    let env = Env::embedded();
    std::fs::write(
        env.path("other.yaml"),
        "enhanced_locking:\n  max_queue_size: 7\n",
    )
    .unwrap();
    let value = |c: &mut assert_cmd::Command| -> Value {
        let (code, out, err) = output(c.args(["config", "show", "--json"]));
        assert_eq!(code, 0, "{err}");
        let rows: Value = serde_json::from_str(&out).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "enhanced_locking.max_queue_size")
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(value(&mut env.tflock()), 1000);
    assert_eq!(value(env.tflock().args(["--config", "other.yaml"])), 7);
    assert_eq!(value(env.tflock().env("TFLOCK_CONFIG", "other.yaml")), 7);
}

#[test]
fn config_schema_validate_show_and_set() {
    let env = Env::embedded();
    let schema = env.json(&["config", "schema"]);
    assert!(
        schema.pointer("/properties/enhanced_locking").is_some(),
        "{schema}"
    );

    let (code, out, _) = env.run(&["config", "validate"]);
    assert_eq!(code, 0);
    assert!(out.contains("tflock.yaml: valid"), "{out}");
    std::fs::write(
        env.path("bolt.yaml"),
        "enhanced_locking:\n  backend: boltdb\n",
    )
    .unwrap();
    let (code, out, _) = env.run(&["config", "validate", "bolt.yaml"]);
    assert_eq!(code, 0);
    assert!(out.contains("warning: backend: boltdb"), "{out}");
    std::fs::write(
        env.path("bad.yaml"),
        "enhanced_locking:\n  redis:\n    pool_size: -1\n",
    )
    .unwrap();
    let (code, _, err) = env.run(&["config", "validate", "bad.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.yaml:3:"), "{err}");

    let (code, out, _) = env.run(&["config", "show"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("enhanced_locking.redis.pool_size") && out.contains("default"),
        "{out}"
    );

    // set: one line changes, comments stay; nested keys are added under their parent.
    let before = std::fs::read_to_string(env.path("tflock.yaml")).unwrap();
    let (code, out, err) = env.run(&[
        "config",
        "set",
        "enhanced_locking.redis.circuit_breaker.failure_threshold",
        "7",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("enhanced_locking.redis.circuit_breaker.failure_threshold = 7"),
        "{out}"
    );
    let after = std::fs::read_to_string(env.path("tflock.yaml")).unwrap();
    assert!(after.starts_with("# tflock test config\n"), "{after}");
    assert_eq!(after.lines().count(), before.lines().count() + 3, "{after}");
    let (code, _, err) = env.run(&["config", "set", "max_queue_size", "12"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read_to_string(env.path("tflock.yaml"))
            .unwrap()
            .contains("  max_queue_size: 12\n")
    );

    // Refusals leave the file as it was.
    let kept = std::fs::read_to_string(env.path("tflock.yaml")).unwrap();
    let (code, _, err) = env.run(&["config", "set", "enhanced_locking.legacy_fallbak", "false"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("did you mean `enhanced_locking.legacy_fallback`"),
        "{err}"
    );
    let (code, _, err) = env.run(&["config", "set", "enhanced_locking.legacy_fallback", "maybe"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a boolean"), "{err}");
    let (code, _, err) = env.run(&["config", "set", "enhanced_locking.max_timeout", "1s"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("enhanced_locking.max_timeout") && err.contains("left unchanged"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("tflock.yaml")).unwrap(),
        kept
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let env = Env::embedded();
    for (args, says) in [
        (&["locks", "acquire"][..], "--project"),
        (
            &["locks", "acquire", "--project=o/r", "--priority=urgent"],
            "not a priority",
        ),
        (
            &["locks", "acquire", "--project=o/r", "--ttl=soon"],
            "not a duration",
        ),
        (
            &[
                "locks",
                "acquire",
                "--project=o/r",
                "--wait=1s",
                "--reserve",
            ],
            "cannot be used with",
        ),
        (&["locks", "unlock", "--project=o/r"], "--force"),
        (&["locks", "list", "--output=xml"], "xml"),
        (&["locks", "export", "--format=csv"], "csv"),
        (&["lock", "list"], "unrecognized subcommand"),
    ] {
        let (code, _, err) = env.run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, out, _) = env.run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("tflock "), "{out}");
    let (code, out, _) = env.run(&["locks", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("unlock-pull") && out.contains("user-queue"),
        "{out}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    let env = Env::embedded();
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = env.run(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("unlock-pull"), "{shell}: {out}");
    }
}
