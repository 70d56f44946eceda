//! `tflock state list|show|pull|rollback` against a real `tflock server` whose
//! Terraform backend (`/tf/NAME`) was written to over plain HTTP, as Terraform's `http`
//! backend writes it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::common::{ADMIN_TOKEN, API_TOKEN, Env, output};

const NAME: &str = "myrepo/app/prod";
const V1: &str = r#"{"version":4,"serial":1,"lineage":"l1","outputs":{}}"#;
/// Whitespace and a trailing newline: `pull` must give back these exact bytes.
const V2: &str = "{\n  \"version\": 4,\n  \"serial\": 2,\n  \"lineage\": \"l1\",\n  \"outputs\": {\"x\": {\"value\": 1, \"type\": \"number\"}}\n}\n";

/// One HTTP/1.0 request on loopback: (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(5))
            .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn server_with_tokens() -> Env {
    let mut env = Env::embedded();
    env.start_server(
        &[],
        &[
            ("ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN", API_TOKEN),
            ("ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    env
}

/// `tflock ARGS` through the server with `token`.
fn run(env: &Env, token: &str, args: &[&str]) -> (i32, String, String) {
    output(env.client().env("TFLOCK_TOKEN", token).args(args))
}

fn ok(env: &Env, token: &str, args: &[&str]) -> String {
    let (code, out, err) = run(env, token, args);
    assert_eq!(
        code,
        0,
        "tflock {args:?}: exit {code}\n{out}\n{err}\n{}",
        env.server_log()
    );
    out
}

fn json(env: &Env, token: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = ok(env, token, &a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn write_two_versions(env: &Env) {
    let path = format!("/tf/{NAME}");
    for body in [V1, V2] {
        let (status, answer) = http(env.port, "POST", &path, Some(API_TOKEN), Some(body));
        assert_eq!(status, 200, "POST {path}: {answer}\n{}", env.server_log());
    }
}

#[test]
fn list_show_pull_and_roll_back_a_state() {
    let env = server_with_tokens();
    // Nothing yet.
    assert_eq!(
        json(&env, API_TOKEN, &["state", "list"])["states"],
        Value::Array(vec![])
    );
    assert!(ok(&env, API_TOKEN, &["state", "list"]).contains("no Terraform states"));

    write_two_versions(&env);

    // list: the state at version 2, serial 2, unlocked.
    let list = json(&env, API_TOKEN, &["state", "list"]);
    let states = list["states"].as_array().unwrap();
    assert_eq!(states.len(), 1, "{list}");
    assert_eq!(states[0]["name"], NAME);
    assert_eq!(states[0]["current"]["version"], 2);
    assert_eq!(states[0]["current"]["serial"], 2);
    assert_eq!(states[0]["current"]["size"], V2.len());
    assert!(states[0].get("lock").is_none(), "{list}");
    let table = ok(&env, API_TOKEN, &["state", "list"]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "VERSION", "SERIAL", "SIZE", "WRITTEN", "LOCKED BY"] {
        assert!(header.contains(col), "{table}");
    }
    let row = table.lines().find(|l| l.starts_with(NAME)).unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("2"), "{table}");
    let yaml = ok(&env, API_TOKEN, &["state", "list", "--output", "yaml"]);
    assert!(yaml.contains(NAME), "{yaml}");

    // show: 2 versions, newest first.
    let show = json(&env, API_TOKEN, &["state", "show", NAME]);
    let history = show["history"].as_array().unwrap();
    assert_eq!(show["state"]["versions"], 2, "{show}");
    assert_eq!(history.len(), 2, "{show}");
    assert_eq!(
        (
            history[0]["version"].as_u64(),
            history[1]["version"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(history[1]["serial"], 1);
    assert_eq!(history[1]["lineage"], "l1");
    assert_eq!(history[1]["size"], V1.len());
    let text = ok(&env, API_TOKEN, &["state", "show", NAME]);
    assert!(text.contains("versions kept:  2"), "{text}");
    assert!(text.contains("VERSION") && text.contains("MD5"), "{text}");
    let v1_md5 = history[1]["md5"].as_str().unwrap();
    assert!(text.contains(v1_md5), "{text}");

    // pull: the exact bytes, of the newest and of version 1; --out writes a file.
    assert_eq!(ok(&env, API_TOKEN, &["state", "pull", NAME]), V2);
    assert_eq!(
        ok(&env, API_TOKEN, &["state", "pull", NAME, "--version", "1"]),
        V1
    );
    let file = env.path("backup.tfstate");
    let (code, out, err) = run(
        &env,
        API_TOKEN,
        &["state", "pull", NAME, "--out", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "", "the document goes to the file only");
    assert_eq!(std::fs::read(&file).unwrap(), V2.as_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a pulled state is private: {mode:o}");
    }
    let (code, _, err) = run(&env, API_TOKEN, &["state", "pull", "no/such/state"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run(&env, API_TOKEN, &["state", "pull", NAME, "--version", "7"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("version 7"), "{err}");

    // rollback needs the admin token.
    let (code, _, err) = run(
        &env,
        API_TOKEN,
        &["state", "rollback", NAME, "--version", "1"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin token"), "{err}");

    // rollback --version 1: version 3, serial 3 (above every serial stored), the rest
    // as version 1 was.
    let meta = json(
        &env,
        ADMIN_TOKEN,
        &["state", "rollback", NAME, "--version", "1"],
    );
    assert_eq!(meta["version"], 3, "{meta}");
    assert_eq!(meta["serial"], 3, "{meta}");
    assert_eq!(meta["lineage"], "l1", "{meta}");
    assert_eq!(meta["forced"], true, "{meta}");
    let pulled = ok(&env, API_TOKEN, &["state", "pull", NAME]);
    assert_eq!(pulled, V1.replace("\"serial\":1", "\"serial\":3"));
    let (mut a, mut b): (Value, Value) = (
        serde_json::from_str(&pulled).unwrap(),
        serde_json::from_str(V1).unwrap(),
    );
    assert_eq!(a["serial"], 3);
    a["serial"] = Value::Null;
    b["serial"] = Value::Null;
    assert_eq!(a, b);
    let show = json(&env, API_TOKEN, &["state", "show", NAME]);
    assert_eq!(show["state"]["current"]["version"], 3, "{show}");
    assert_eq!(show["history"].as_array().unwrap().len(), 3, "{show}");
    let text = ok(
        &env,
        ADMIN_TOKEN,
        &["state", "rollback", NAME, "--version", "2"],
    );
    assert!(
        text.contains("now version 4") && text.contains("serial 4"),
        "{text}"
    );

    // A version that is not kept: refused naming `version`, nothing changes.
    let (code, out, err) = run(
        &env,
        ADMIN_TOKEN,
        &["state", "rollback", NAME, "--version", "99", "--json"],
    );
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("version"), "{err}");
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{out}");
    assert_eq!(
        json(&env, API_TOKEN, &["state", "show", NAME])["state"]["current"]["version"],
        4
    );
}

#[test]
fn a_locked_state_shows_its_holder_and_refuses_rollback() {
    let env = server_with_tokens();
    write_two_versions(&env);
    let info = r#"{"ID":"4ff5e7b6-7c0e-4b1e-9d3a-1a2b3c4d5e6f","Operation":"OperationTypeApply","Info":"","Who":"alice@ci-7","Version":"1.9.0","Created":"2026-11-26T13:26:56Z","Path":""}"#;
    let path = format!("/tf/{NAME}");
    let (status, answer) = http(env.port, "LOCK", &path, Some(API_TOKEN), Some(info));
    assert_eq!(status, 200, "LOCK: {answer}\n{}", env.server_log());

    let list = json(&env, API_TOKEN, &["state", "list"]);
    let lock = &list["states"][0]["lock"];
    assert!(
        lock["owner"].as_str().unwrap().contains("alice@ci-7"),
        "{list}"
    );
    let id = lock["id"].as_str().unwrap().to_string();
    assert!(!id.contains("4ff5e7b6"), "the lock ID is a secret: {list}");
    let table = ok(&env, API_TOKEN, &["state", "list"]);
    assert!(
        table.contains("alice@ci-7") && table.contains(&id),
        "{table}"
    );
    let text = ok(&env, API_TOKEN, &["state", "show", NAME]);
    assert!(text.contains(&format!("lock id:        {id}")), "{text}");
    // The state lock is a tflock lock on tflock:terraform/state.
    let locks = json(
        &env,
        API_TOKEN,
        &["locks", "list", "--repo", "tflock:terraform/state"],
    );
    assert_eq!(locks["locks"].as_array().unwrap().len(), 1, "{locks}");

    // Locked: rollback is refused with the "held" exit code, naming the holder.
    let (code, out, err) = run(
        &env,
        ADMIN_TOKEN,
        &["state", "rollback", NAME, "--version", "1"],
    );
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("locked") && err.contains(&id), "{err}");

    // Unlocked again: the rollback goes through.
    let (status, answer) = http(env.port, "UNLOCK", &path, Some(API_TOKEN), Some(info));
    assert_eq!(status, 200, "UNLOCK: {answer}");
    let meta = json(
        &env,
        ADMIN_TOKEN,
        &["state", "rollback", NAME, "--version", "1"],
    );
    assert_eq!(meta["version"], 3, "{meta}");
}

#[test]
fn without_a_server_the_commands_say_states_live_in_one() {
    let env = Env::embedded();
    let (code, _, err) = env.run(&["state", "list"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("no tflock server answered") && err.contains("Terraform backend"),
        "{err}"
    );
    let (code, _, err) = env.run(&["--backend=embedded", "state", "show", NAME]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--server"), "{err}");
    // A token is needed when the server has one.
    let mut env = env;
    env.start_server(
        &[],
        &[("ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN", API_TOKEN)],
    );
    let (code, _, err) = output(env.client().args(["state", "list"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TFLOCK_TOKEN"), "{err}");
}
