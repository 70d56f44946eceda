//! Every `tflock locks` command, its exit codes and its JSON output, on both backends,
//! through a server (`TFLOCK_SERVER`) and on the store opened directly (`--backend`).

use serde_json::Value;

use crate::common::{ADMIN_TOKEN, API_TOKEN, Env, free_port, output};

/// How the commands reach the store.
#[derive(Clone, Copy)]
enum Via {
    Server,
    Direct,
}

struct T<'a> {
    env: &'a Env,
    via: Via,
    backend: &'static str,
}

impl T<'_> {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = match self.via {
            Via::Server => self.env.client(),
            Via::Direct => {
                let mut c = self.env.tflock();
                c.arg(format!("--backend={}", self.backend));
                c
            }
        };
        output(c.args(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "tflock {args:?}: exit {code}\n{out}\n{err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Expects exit `code`; returns (stdout, stderr).
    fn fails(&self, code: i32, args: &[&str]) -> (String, String) {
        let (got, out, err) = self.run(args);
        assert_eq!(
            got, code,
            "tflock {args:?}: exit {got}, wanted {code}\n{out}\n{err}"
        );
        (out, err)
    }
}

const R: &[&str] = &["--project=myorg/myrepo", "--workspace=default"];

fn with<S: AsRef<str>>(base: &[S], more: &[&str]) -> Vec<String> {
    base.iter()
        .map(|s| s.as_ref().to_string())
        .chain(more.iter().map(|s| s.to_string()))
        .collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn every_lock_command(t: &T) {
    // Empty store.
    assert_eq!(t.json(&["locks", "list"])["locks"], Value::Array(vec![]));
    assert_eq!(t.ok(&["locks", "list"]).trim(), "no active locks");

    // Acquire: JSON answer with the lease id; exit 0.
    let a = with(&["locks", "acquire"], R);
    let a42 = with(
        &a,
        &["--owner=myorg/myrepo#42", "--pull=42", "--user=alice"],
    );
    let got = t.json(&args(&a42));
    assert_eq!(got["acquired"], true, "{got}");
    let lease = got["lock"]["lease_id"].as_str().unwrap().to_string();
    let token = got["lock"]["fencing_token"].as_u64().unwrap();
    assert_eq!(got["lock"]["key"], "myorg/myrepo/./default/");
    assert_eq!(got["lock"]["user"]["username"], "alice");
    assert_eq!(got["lock"]["pull"]["num"], 42);

    // The same owner again without proof: not acquired (held_by_owner), exit 3.
    let (out, err) = t.fails(3, &args(&with(&a42, &["--json"])));
    let held: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(held["reason"], "held_by_owner", "{held}");
    assert!(held["lock"].get("lease_id").is_none(), "{held}");
    assert!(
        err.contains("held_by_owner") && err.contains("--lease-id"),
        "{err}"
    );
    // With its lease as proof: re-lock, same lease (Atlantis's re-plan).
    let relock = with(&a42, &["--lease-id", &lease]);
    assert_eq!(t.json(&args(&relock))["lock"]["lease_id"], lease.as_str());

    // Table form prints only the lease id on stdout.
    let other = t.ok(&[
        "locks",
        "acquire",
        "--project=myorg/other",
        "--workspace=default",
    ]);
    assert_eq!(other.trim().len(), 32, "{other}");
    assert!(
        other.trim().chars().all(|c| c.is_ascii_hexdigit()),
        "{other}"
    );

    // Held: exit 3, the holder's view without its lease id.
    let (out, err) = t.fails(3, &args(&with(&a, &["--owner=bob", "--json"])));
    let held: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(held["acquired"], false);
    assert_eq!(held["reason"], "held");
    assert!(held["lock"].get("lease_id").is_none(), "{held}");
    assert!(
        err.contains("not acquired: held by myorg/myrepo#42"),
        "{err}"
    );

    // Waiting until a deadline: exit 3, timed out.
    let (_, err) = t.fails(3, &args(&with(&a, &["--owner=bob", "--wait=300ms"])));
    assert!(err.contains("timed out"), "{err}");

    // A reservation: exit 3 (not acquired yet), the entry id on stdout.
    let (out, err) = t.fails(
        3,
        &args(&with(&a, &["--owner=carol", "--user=carol", "--reserve"])),
    );
    let entry = out.trim().to_string();
    assert!(!entry.is_empty(), "{err}");
    assert!(err.contains("reserved position 1"), "{err}");

    // Queue and user queue.
    let q = t.json(&args(&with(&["locks", "queue"], R)));
    assert_eq!(q["lock"]["owner"], "myorg/myrepo#42");
    assert_eq!(q["entries"][0]["entry_id"], entry.as_str());
    assert_eq!(q["entries"][0]["kind"], "reservation");
    assert_eq!(q["entries"][0]["position"], 1);
    let table = t.ok(&args(&with(&["locks", "queue"], R)));
    assert!(table.contains("held by myorg/myrepo#42"), "{table}");
    assert!(
        table.contains("reservation") && table.contains("carol"),
        "{table}"
    );
    let uq = t.json(&["locks", "user-queue", "--user", "carol"]);
    assert_eq!(uq["entries"].as_array().unwrap().len(), 1, "{uq}");
    assert_eq!(
        t.json(&["locks", "user-queue", "--user", "nobody"])["entries"],
        Value::Array(vec![])
    );

    // List: table and JSON, filters.
    let table = t.ok(&["locks", "list"]);
    assert!(table.starts_with("KEY"), "{table}");
    assert!(
        table.contains("myorg/myrepo/./default/") && table.contains("alice"),
        "{table}"
    );
    let all = t.json(&["locks", "list"]);
    assert_eq!(all["locks"].as_array().unwrap().len(), 2, "{all}");
    assert!(
        all["locks"][0].get("lease_id").is_none(),
        "listing shows a lease id: {all}"
    );
    assert_eq!(
        t.json(&["locks", "list", "--repo", "myorg/myrepo"])["locks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        t.json(&["locks", "list", "--user", "alice"])["locks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        t.json(&["locks", "list", "--owner", "nobody"])["locks"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let yaml = t.ok(&["locks", "list", "--output", "yaml"]);
    assert!(yaml.contains("key: myorg/myrepo/./default/"), "{yaml}");

    // Get.
    let g = t.json(&args(&with(&["locks", "get"], R)));
    assert_eq!(g["lock"]["owner"], "myorg/myrepo#42");
    assert!(g["lock"].get("lease_id").is_none());

    // Refresh: by the holder; a wrong lease is lease_lost (exit 1).
    let r = t.json(&args(&with(
        &["locks", "refresh"],
        &[R[0], R[1], "--lease-id", &lease, "--ttl", "2h"],
    )));
    assert!(r["lock"]["expires_at"].as_str().unwrap() > g["lock"]["expires_at"].as_str().unwrap());
    let (out, err) = t.fails(
        1,
        &args(&with(
            &["locks", "refresh"],
            &[
                R[0],
                R[1],
                "--lease-id",
                "00000000000000000000000000000000",
                "--ttl",
                "1h",
                "--json",
            ],
        )),
    );
    assert!(out.contains("\"lease_lost\""), "{out}");
    assert!(err.contains("lease"), "{err}");

    // Unlock with a wrong lease: not_owner, exit 1.
    let (out, _) = t.fails(
        1,
        &args(&with(
            &["locks", "unlock"],
            &[
                R[0],
                R[1],
                "--lease-id",
                "00000000000000000000000000000000",
                "--json",
            ],
        )),
    );
    assert!(out.contains("\"not_owner\""), "{out}");

    // Transfer: a new lease id and a higher token.
    let tr = t.json(&args(&with(
        &["locks", "transfer"],
        &[
            R[0],
            R[1],
            "--lease-id",
            &lease,
            "--to-owner",
            "myorg/myrepo#43",
            "--to-user",
            "dave",
        ],
    )));
    let lease43 = tr["lock"]["lease_id"].as_str().unwrap().to_string();
    assert_ne!(lease43, lease);
    assert!(tr["lock"]["fencing_token"].as_u64().unwrap() > token);
    assert_eq!(tr["lock"]["owner"], "myorg/myrepo#43");
    // The old lease no longer works.
    t.fails(
        1,
        &args(&with(
            &["locks", "unlock"],
            &[R[0], R[1], "--lease-id", &lease],
        )),
    );

    // Cancel the reservation; a second cancel is not_found (exit 1).
    let c = t.json(&["locks", "cancel", &entry]);
    assert_eq!(c["cancelled"]["entry_id"], entry.as_str());
    let (out, _) = t.fails(1, &["locks", "cancel", &entry, "--json"]);
    assert!(out.contains("\"not_found\""), "{out}");

    // Unlock by the holder.
    let out = t.ok(&args(&with(
        &["locks", "unlock"],
        &[R[0], R[1], "--lease-id", &lease43],
    )));
    assert!(out.contains("released myorg/myrepo/./default/"), "{out}");

    // Unlock-pull: exactly that pull request.
    for (ws, pull) in [("w1", "42"), ("w2", "42"), ("w3", "421")] {
        t.ok(&[
            "locks",
            "acquire",
            "--project=myorg/myrepo",
            &format!("--workspace={ws}"),
            &format!("--pull={pull}"),
        ]);
    }
    let up = t.json(&[
        "locks",
        "unlock-pull",
        "--project=myorg/myrepo",
        "--pull",
        "42",
    ]);
    assert_eq!(up["released"].as_array().unwrap().len(), 2, "{up}");
    let left = t.json(&["locks", "list", "--repo", "myorg/myrepo"]);
    assert_eq!(left["locks"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["locks"][0]["owner"], "myorg/myrepo#421");

    // Force unlock (admin).
    let out = t.ok(&[
        "locks",
        "unlock",
        "--project=myorg/other",
        "--workspace=default",
        "--force",
    ]);
    assert!(out.contains("released myorg/other/./default/"), "{out}");
    let (_, err) = t.fails(
        1,
        &[
            "locks",
            "get",
            "--project=myorg/other",
            "--workspace=default",
        ],
    );
    assert!(
        err.contains("myorg/other/./default/ is not locked"),
        "{err}"
    );
    t.fails(
        1,
        &[
            "locks",
            "unlock",
            "--project=myorg/other",
            "--workspace=default",
            "--force",
        ],
    );

    // Bad input names the flag; exit 2.
    let (_, err) = t.fails(2, &["locks", "acquire", "--project=norepo"]);
    assert!(err.contains("--project"), "{err}");
    let (_, err) = t.fails(2, &["locks", "get", "--project=o/r", "--path=../x"]);
    assert!(err.contains("--path") && err.contains(".."), "{err}");

    // Health.
    let (code, out, err) = t.run(&["health", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let h: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["backend"], t.backend, "{h}");
    let (code, out, _) = t.run(&["health"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("healthy"), "{out}");
}

/// `--lease-file`, checked lease ids, `--expect-token`, a cancel naming its queue and
/// the `lease_lost` answer of a spent request id.
fn lease_files_and_checked_leases(t: &T) {
    use std::os::unix::fs::PermissionsExt as _;
    let file = t.env.path("lease");
    let file_arg = format!("--lease-file={}", file.display());
    let a = with(&["locks", "acquire"], R);
    let mine = with(&a, &["--owner=myorg/myrepo#7", &file_arg]);

    // A grant writes the lease to the file, owner-only.
    let got = t.json(&args(&mine));
    assert_eq!(got["acquired"], true, "{got}");
    let lease = got["lock"]["lease_id"].as_str().unwrap().to_string();
    let token = got["lock"]["fencing_token"].as_u64().unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), lease);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the lease file is {mode:o}");
    // The file is the re-lock proof: a re-plan gets the lock at once.
    let again = t.json(&args(&mine));
    assert_eq!(again["acquired"], true, "{again}");
    assert_eq!(again["lock"]["lease_id"], lease.as_str());
    assert_eq!(again["lock"]["fencing_token"], token);

    // Empty or malformed lease ids: usage errors naming the flag; nothing changes.
    let unlock = with(&["locks", "unlock"], R);
    let refresh = with(&["locks", "refresh"], R);
    for bad in ["", "not a lease id", "short"] {
        for cmd in [
            with(&unlock, &["--lease-id", bad]),
            with(&refresh, &["--lease-id", bad, "--ttl=1h"]),
            with(&a, &["--owner=myorg/myrepo#7", "--lease-id", bad]),
            with(
                &["locks", "transfer"],
                &[R[0], R[1], "--lease-id", bad, "--to-owner=x"],
            ),
        ] {
            let (_, err) = t.fails(2, &args(&cmd));
            assert!(err.contains("--lease-id"), "{cmd:?}: {err}");
        }
    }
    let held = t.json(&args(&with(&["locks", "get"], R)));
    assert_eq!(held["lock"]["owner"], "myorg/myrepo#7");
    assert_eq!(held["lock"]["fencing_token"], token);
    // A lease file without a lease id in it is refused the same way.
    let junk = t.env.path("junk-lease");
    std::fs::write(&junk, "").unwrap();
    let junk_arg = format!("--lease-file={}", junk.display());
    let (_, err) = t.fails(2, &args(&with(&unlock, &[&junk_arg])));
    assert!(err.contains("--lease-file"), "{err}");
    let missing = format!("--lease-file={}", t.env.path("nope").display());
    let (_, err) = t.fails(2, &args(&with(&unlock, &[&missing])));
    assert!(err.contains("--lease-file"), "{err}");

    // --expect-token: only with --force; a lock that changed hands is not released.
    let (_, err) = t.fails(
        2,
        &args(&with(&unlock, &["--expect-token=1", "--lease-id", &lease])),
    );
    assert!(
        err.contains("--expect-token") || err.contains("--force"),
        "{err}"
    );
    let stale = (token + 100).to_string();
    let (_, err) = t.fails(
        1,
        &args(&with(&unlock, &["--force", "--expect-token", &stale])),
    );
    assert!(err.contains("changed hands"), "{err}");
    assert_eq!(
        t.json(&args(&with(&["locks", "get"], R)))["lock"]["owner"],
        "myorg/myrepo#7"
    );

    // A cancel naming a queue the entry is not in cancels nothing.
    let (out, _) = t.fails(
        3,
        &args(&with(&a, &["--owner=carol", "--user=carol", "--reserve"])),
    );
    let entry = out.trim().to_string();
    let (_, err) = t.fails(1, &["locks", "cancel", &entry, "--project=myorg/elsewhere"]);
    assert!(err.contains("myorg/elsewhere"), "{err}");
    let q = t.json(&args(&with(&["locks", "queue"], R)));
    assert_eq!(q["entries"][0]["entry_id"], entry.as_str(), "{q}");
    let (_, err) = t.fails(2, &["locks", "cancel", &entry, "--workspace=default"]);
    assert!(err.contains("--project"), "{err}");
    let c = t.json(&[
        "locks",
        "cancel",
        &entry,
        "--project=myorg/myrepo",
        "--workspace=default",
    ]);
    assert_eq!(c["cancelled"]["entry_id"], entry.as_str(), "{c}");

    // Unlock with the file: released, and the file is gone.
    let done = t.json(&args(&with(&unlock, &[&file_arg])));
    assert_eq!(done["released"]["owner"], "myorg/myrepo#7", "{done}");
    assert!(!file.exists(), "the lease file is removed after the unlock");

    // A retry of a spent request id: lease_lost, exit 3.
    let rid = format!("cli-request-id-{}", std::process::id());
    let first = with(&a, &["--owner=myorg/myrepo#8", "--request-id", &rid]);
    let got = t.json(&args(&first));
    assert_eq!(got["acquired"], true, "{got}");
    let l8 = got["lock"]["lease_id"].as_str().unwrap().to_string();
    let t8 = got["lock"]["fencing_token"].as_u64().unwrap().to_string();
    t.ok(&args(&with(&unlock, &["--force", "--expect-token", &t8])));
    let (out, err) = t.fails(3, &args(&with(&first, &["--json"])));
    let lost: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lost["reason"], "lease_lost", "{lost}");
    assert!(err.contains("lease_lost"), "{err}");
    assert!(!out.contains(&rid) && !err.contains(&rid), "{out}{err}");
    let _ = l8;
}

#[test]
fn lease_files_and_checked_leases_through_the_server_on_embedded() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    lease_files_and_checked_leases(&T {
        env: &env,
        via: Via::Server,
        backend: "embedded",
    });
}

#[test]
fn lease_files_and_checked_leases_through_the_server_on_redis() {
    let mut env = Env::redis();
    env.start_server(&[], &[]);
    lease_files_and_checked_leases(&T {
        env: &env,
        via: Via::Server,
        backend: "redis",
    });
}

#[test]
fn lease_files_and_checked_leases_on_the_embedded_store_opened_directly() {
    let env = Env::embedded();
    lease_files_and_checked_leases(&T {
        env: &env,
        via: Via::Direct,
        backend: "embedded",
    });
}

/// A bad lease id is refused before any request: with no server to reach, the answer
/// is still the usage error (exit 2), not backend unavailable (exit 4).
#[test]
fn bad_lease_ids_are_refused_before_any_request() {
    let env = Env::embedded();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for a in [
        with(&["locks", "unlock"], &[R[0], R[1], "--lease-id", ""]),
        with(&["locks", "acquire"], &[R[0], R[1], "--lease-id", "x y"]),
        with(
            &["locks", "refresh"],
            &[R[0], R[1], "--lease-id", "", "--ttl=1m"],
        ),
    ] {
        let (code, _, err) = output(env.tflock().env("TFLOCK_SERVER", &nowhere).args(&a));
        assert_eq!(code, 2, "{a:?}: {err}");
        assert!(err.contains("--lease-id"), "{a:?}: {err}");
    }
}

#[test]
fn lock_commands_through_the_server_on_embedded() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    every_lock_command(&T {
        env: &env,
        via: Via::Server,
        backend: "embedded",
    });
}

#[test]
fn lock_commands_through_the_server_on_redis() {
    let mut env = Env::redis();
    env.start_server(&[], &[]);
    every_lock_command(&T {
        env: &env,
        via: Via::Server,
        backend: "redis",
    });
}

#[test]
fn lock_commands_on_the_embedded_store_opened_directly() {
    let env = Env::embedded();
    every_lock_command(&T {
        env: &env,
        via: Via::Direct,
        backend: "embedded",
    });
}

#[test]
fn lock_commands_on_redis_opened_directly() {
    let env = Env::redis();
    every_lock_command(&T {
        env: &env,
        via: Via::Direct,
        backend: "redis",
    });
}

#[test]
fn tokens_are_sent_and_refusals_are_usage_errors() {
    let mut env = Env::embedded();
    env.start_server(
        &[],
        &[
            ("ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN", API_TOKEN),
            ("ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    let acquire = ["locks", "acquire", "--project=o/r", "--workspace=default"];
    // No token: unauthorized, exit 2, and the message says how to give one.
    let (code, _, err) = output(env.client().args(acquire));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("TFLOCK_TOKEN"),
        "{err}"
    );
    // Reads stay open.
    let (code, _, _) = output(env.client().args(["locks", "list"]));
    assert_eq!(code, 0);
    // The API token: mutating calls pass, admin calls are forbidden.
    let (code, _, err) = output(env.client().env("TFLOCK_TOKEN", API_TOKEN).args(acquire));
    assert_eq!(code, 0, "{err}");
    let force = [
        "locks",
        "unlock",
        "--project=o/r",
        "--workspace=default",
        "--force",
    ];
    let (code, _, err) = output(env.client().env("TFLOCK_TOKEN", API_TOKEN).args(force));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("forbidden"), "{err}");
    // The admin token, as a flag this time.
    let (code, _, err) = output(env.client().args(["--token", ADMIN_TOKEN]).args(force));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn an_unreachable_server_is_backend_unavailable() {
    let env = Env::embedded();
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, out, err) = output(
        env.tflock()
            .args(["--server", &url, "locks", "list", "--json"]),
    );
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(
        err.contains(&format!("cannot reach the tflock server at {url}")),
        "{err}"
    );
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["error"]["code"], "backend_unavailable");
    let (code, _, _) = output(env.tflock().args(["--server", &url, "health"]));
    assert_eq!(code, 4);
}

#[test]
fn an_unreachable_redis_is_backend_unavailable_naming_the_setting() {
    let env = Env::redis();
    env.redis.as_ref().unwrap().stop();
    let (code, _, err) = env.run(&["locks", "list", "--backend=redis"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("redis.addresses"), "{err}");
}

#[test]
fn a_store_held_by_a_process_without_a_server_is_explained() {
    let env = Env::embedded();
    // `tflock run` on the store directly holds the file while its command runs.
    let mut holder = std::process::Command::new(crate::common::bin());
    holder
        .current_dir(env.dir.path())
        .args([
            "run",
            "--backend=embedded",
            "--project=o/r",
            "--",
            "sh",
            "-c",
            "touch started; sleep 30",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut holder = holder.spawn().unwrap();
    crate::common::eventually("the holder starts its command", || {
        env.path("started").exists()
    });
    let (code, _, err) = env.run(&["locks", "list"]);
    // SIGTERM reaches the command through tflock, which then releases and exits.
    crate::common::signal(holder.id(), libc::SIGTERM);
    let _ = holder.wait();
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!("is held by pid {}", holder.id())),
        "{err}"
    );
    assert!(
        err.contains(&env.base()),
        "the address tried is not named: {err}"
    );
}

/// The real `tflock server` at trace level: no request id and no lease id in its log,
/// whatever the calls did (grant, retry, reservation, waiter, cancel, release).
#[test]
fn the_server_never_logs_request_ids_or_lease_ids() {
    let mut env = Env::embedded();
    env.start_server(&[], &[("RUST_LOG", "trace")]);
    let tag = std::process::id();
    let holder_rid = format!("holder-rid-{tag}-c0ffee");
    let reserve_rid = format!("reserve-rid-{tag}-beef01");
    let wait_rid = format!("waiter-rid-{tag}-f00d02");
    let t = T {
        env: &env,
        via: Via::Server,
        backend: "embedded",
    };
    let a = with(&["locks", "acquire"], R);
    let got = t.json(&args(&with(
        &a,
        &["--owner=myorg/myrepo#1", "--request-id", &holder_rid],
    )));
    let lease = got["lock"]["lease_id"].as_str().unwrap().to_string();
    t.json(&args(&with(
        &a,
        &["--owner=myorg/myrepo#1", "--request-id", &holder_rid],
    )));
    let (out, _) = t.fails(
        3,
        &args(&with(
            &a,
            &[
                "--owner=myorg/myrepo#2",
                "--reserve",
                "--request-id",
                &reserve_rid,
            ],
        )),
    );
    let entry = out.trim().to_string();
    let mut waiter = std::process::Command::new(crate::common::bin())
        .current_dir(env.dir.path())
        .env("TFLOCK_SERVER", env.base())
        .args(args(&with(
            &a,
            &[
                "--owner=myorg/myrepo#3",
                "--wait=30s",
                "--request-id",
                &wait_rid,
            ],
        )))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::eventually("the waiter queues", || {
        t.json(&args(&with(&["locks", "queue"], R)))["entries"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    });
    let shown = format!(
        "{}{}",
        t.ok(&args(&with(&["locks", "queue"], R))),
        t.ok(&["locks", "user-queue", "--user", "tester"])
    );
    t.json(&["locks", "cancel", &entry, "--project=myorg/myrepo"]);
    t.ok(&args(&with(
        &["locks", "refresh"],
        &[R[0], R[1], "--lease-id", &lease, "--ttl=1h"],
    )));
    t.ok(&args(&with(
        &["locks", "unlock"],
        &[R[0], R[1], "--lease-id", &lease],
    )));
    let deadline = std::time::Instant::now() + crate::common::SOON;
    while waiter.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never got the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    env.stop_server();
    let log = env.server_log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    for secret in [&holder_rid, &reserve_rid, &wait_rid, &lease] {
        assert!(
            !log.contains(secret.as_str()),
            "{secret} is in the server log:\n{log}"
        );
        assert!(
            !shown.contains(secret.as_str()),
            "{secret} is shown:\n{shown}"
        );
    }
}
