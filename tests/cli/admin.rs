//! `tflock admin upgrade-layout` on a real Redis: a dry run counts and changes
//! nothing, the upgrade marks every bucket, a second run has nothing to do, the
//! embedded store is refused. (What an upgrade keeps is tested on a store filled by
//! the layout-1 scripts in crates/tflock-redis/tests/layout_upgrade.rs.)

use crate::common::Env;

/// The buckets' markers whose `layout` field is set, by a script of the test's own.
fn marked(env: &Env) -> String {
    let script = "local n = 0 \
                  for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                    if redis.call('HGET', k, 'layout') then n = n + 1 end \
                  end return n";
    env.redis
        .as_ref()
        .unwrap()
        .redis_cli(["EVAL", script, "0", "tflock-test:{b:*}:gen"])
        .trim()
        .trim_start_matches("(integer) ")
        .to_string()
}

/// Makes every bucket's marker say layout 1 (as a store of that build has it).
fn mark_layout1(env: &Env) {
    let script = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                    redis.call('HDEL', k, 'layout') \
                  end return 1";
    env.redis
        .as_ref()
        .unwrap()
        .redis_cli(["EVAL", script, "0", "tflock-test:{b:*}:gen"]);
}

#[test]
fn upgrade_layout_dry_run_upgrade_and_again() {
    let env = Env::redis();
    // A first run on an empty store: born at the current layout.
    let fresh = env.json(&["admin", "upgrade-layout", "--json"]);
    assert_eq!(fresh["buckets_upgraded"], 0, "{fresh}");
    assert_eq!(fresh["layout"], 2);
    assert_eq!(marked(&env), "64");

    mark_layout1(&env);
    let dry = env.json(&["admin", "upgrade-layout", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["buckets_upgraded"], 64, "{dry}");
    assert_eq!(dry["resources"], 0);
    assert_eq!(marked(&env), "0", "a dry run changes nothing");

    let (code, out, err) = env.run(&["admin", "upgrade-layout"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("64 of 64 buckets upgraded"), "{out}");
    assert_eq!(marked(&env), "64");
    let (code, out, _) = env.run(&["admin", "upgrade-layout"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to upgrade"), "{out}");
}

#[test]
fn upgrade_layout_refuses_the_embedded_store() {
    let env = Env::embedded();
    let (code, _, err) = env.run(&["admin", "upgrade-layout"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Redis store"), "{err}");
}
