//! Bad input, each refused with a message (and `field`) naming what is wrong, and
//! nothing changed: a LockInfo that is not JSON or has no `ID`, a wrong `Content-MD5`,
//! a state over `max_state_bytes`, an UNLOCK of a state that does not exist.

use serde_json::Value;

use crate::common::{Env, lock_info, request, server, state_doc, state_lock, stored, tf, tf_with};

const STATE: &str = "team/app/input";
const LINEAGE: &str = "0b7d-tflock-input";
const MAX: usize = 4096;

fn queue_len(env: &Env) -> usize {
    let a = request(
        env.port,
        "GET",
        &format!("/api/v1/queue?repo=tflock:terraform/state&path={STATE}&workspace=default"),
        &[],
        b"",
    );
    if a.status == 404 {
        return 0;
    }
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["entries"].as_array().map_or(0, Vec::len)
}

fn states(env: &Env) -> Vec<String> {
    let a = request(
        env.port,
        "GET",
        "/api/v1/states",
        &[(
            "Authorization",
            &crate::common::basic(crate::common::API_TOKEN),
        )],
        b"",
    );
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn bad_input(env: Env) {
    let env = server(env, &format!("terraform:\n  max_state_bytes: {MAX}"));
    let first = tf(&env, "POST", STATE, "", &state_doc(1, LINEAGE, 8));
    assert_eq!(first.status, 200, "{}", first.text());
    let before = stored(&env, STATE).unwrap();
    let unchanged = |what: &str| {
        assert_eq!(
            stored(&env, STATE).unwrap(),
            before,
            "{what} changed the state"
        );
        assert!(state_lock(&env, STATE).is_none(), "{what} left a lock");
        assert_eq!(queue_len(&env), 0, "{what} left a queue entry");
    };

    // LockInfo that is not JSON.
    let a = tf(&env, "LOCK", STATE, "", b"this is not json");
    let (field, message) = a.error();
    println!("LockInfo not JSON: {} {}", a.status, a.text());
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(message.contains("JSON"), "{message}");
    assert!(
        field.is_none() || field.as_deref() == Some("body"),
        "{field:?}"
    );
    unchanged("a LOCK with a body that is not JSON");

    // LockInfo without its ID, and with an empty one.
    let a = tf(
        &env,
        "LOCK",
        STATE,
        "",
        br#"{"Operation": "OperationTypeApply", "Who": "x@y"}"#,
    );
    let (field, message) = a.error();
    println!("LockInfo without ID: {} {}", a.status, a.text());
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(field.as_deref(), Some("ID"), "{message}");
    assert!(message.contains("ID"), "{message}");
    unchanged("a LOCK without an ID");
    let a = tf(&env, "LOCK", STATE, "", &lock_info(""));
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.error().0.as_deref(), Some("ID"), "{}", a.text());
    unchanged("a LOCK with an empty ID");
    // A LOCK without any body.
    let a = tf(&env, "LOCK", STATE, "", b"");
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.error().0.as_deref(), Some("body"), "{}", a.text());
    unchanged("a LOCK without a body");

    // A Content-MD5 that is not the body's (the MD5 of nothing is 1B2M2Y8AsgTpgAmY7PhCfg==).
    let a = tf_with(
        &env,
        "POST",
        STATE,
        "",
        &state_doc(2, LINEAGE, 8),
        &[("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==")],
    );
    println!("wrong Content-MD5: {} {}", a.status, a.text());
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.error().0.as_deref(), Some("Content-MD5"), "{}", a.text());
    unchanged("a write with a wrong Content-MD5");
    let a = tf_with(
        &env,
        "POST",
        STATE,
        "",
        &state_doc(2, LINEAGE, 8),
        &[("Content-MD5", "not base64!")],
    );
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.error().0.as_deref(), Some("Content-MD5"), "{}", a.text());
    unchanged("a write with a Content-MD5 that is not base64");

    // A state over max_state_bytes.
    let big = state_doc(2, LINEAGE, MAX + 100);
    assert!(big.len() > MAX);
    let a = tf(&env, "POST", STATE, "", &big);
    println!("oversized state: {} {}", a.status, a.text());
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.error().1.contains("max_state_bytes"), "{}", a.text());
    unchanged("an oversized write");

    // UNLOCK of a state that does not exist (with a LockInfo, and forced by the admin).
    let a = tf(&env, "UNLOCK", "no/such/state", "", &lock_info("some-id"));
    println!("UNLOCK unknown: {} {}", a.status, a.text());
    assert_eq!(a.status, 404, "{}", a.text());
    assert!(a.error().1.contains("no/such/state"), "{}", a.text());
    let a = request(
        env.port,
        "UNLOCK",
        "/tf/no/such/state",
        &[(
            "Authorization",
            &crate::common::basic(crate::common::ADMIN_TOKEN),
        )],
        b"",
    );
    assert_eq!(a.status, 404, "{}", a.text());
    unchanged("an UNLOCK of an unknown state");
    assert_eq!(states(&env), vec![STATE.to_string()], "no state was made");
    let v: Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(v["serial"], 1);
}

#[test]
fn bad_input_embedded() {
    bad_input(Env::embedded());
}

#[test]
fn bad_input_redis() {
    bad_input(Env::redis());
}
