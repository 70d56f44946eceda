//! `tflock run`: the lock is held while the command runs and released when it exits;
//! the command's exit code is tflock's; it waits in the queue; signals reach the
//! command; a lost lease stops it (or not, with --keep-running-on-lease-loss).

use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, bin, eventually, read, signal};

const P: &[&str] = &["--project=myorg/myrepo", "--workspace=default"];

fn locked(env: &Env) -> bool {
    let (code, _, _) = crate::common::output(env.client().args(["locks", "get"]).args(P));
    code == 0
}

/// `tflock run` in the background, through the server, stderr to `run.err`.
fn spawn_run(env: &Env, flags: &[&str], command: &str) -> std::process::Child {
    let mut c = StdCommand::new(bin());
    c.current_dir(env.dir.path())
        .env("TFLOCK_SERVER", env.base())
        .arg("run")
        .args(P)
        .args(flags)
        .args(["--", "sh", "-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("run.err")).unwrap());
    c.spawn().unwrap()
}

fn wait_exit(child: &mut std::process::Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tflock run did not exit within 60s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_holds_the_lock_while_the_command_runs_and_exits_with_its_code() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let (code, _, err) = crate::common::output(
        env.client()
            .args(["run"])
            .args(P)
            .args(["--ttl=30s", "--", "sh", "-c"])
            .arg("tflock locks get --project=myorg/myrepo --json > held.json; echo \"$TFLOCK_LOCK_KEY $TFLOCK_FENCING_TOKEN\" > env.txt; exit 7")
            .env("PATH", format!("{}:{}", bin().parent().unwrap().display(), std::env::var("PATH").unwrap())),
    );
    assert_eq!(code, 7, "{err}");
    let held: serde_json::Value = serde_json::from_str(&read(&env.path("held.json"))).unwrap();
    assert_eq!(held["lock"]["key"], "myorg/myrepo/./default/");
    // The command sees the lease's own token (tokens are floored at the store's
    // clock, so only the held lock can say which number it is).
    assert_eq!(
        read(&env.path("env.txt")).trim(),
        format!("myorg/myrepo/./default/ {}", held["lock"]["fencing_token"])
    );
    assert!(
        err.contains("acquired myorg/myrepo/./default/") && err.contains("released"),
        "{err}"
    );
    assert!(!locked(&env), "the lock outlived the command");
}

#[test]
fn run_waits_in_the_queue_and_gives_up_at_its_deadline() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let lease = crate::common::output(
        env.client()
            .args(["locks", "acquire"])
            .args(P)
            .arg("--owner=holder"),
    )
    .1;
    let lease = lease.trim().to_string();

    // Not granted within --wait: exit 3, and the command never ran.
    let (code, _, err) = crate::common::output(env.client().args(["run"]).args(P).args([
        "--wait=300ms",
        "--",
        "touch",
        "ran",
    ]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not acquired: timed out"), "{err}");
    assert!(!env.path("ran").exists());

    // Waiting: granted when the holder unlocks.
    let mut run = spawn_run(&env, &["--wait=30s"], "touch ran");
    eventually("the run waits in the queue", || {
        let (_, out, _) =
            crate::common::output(env.client().args(["locks", "queue", "--json"]).args(P));
        out.contains("\"waiter\"")
    });
    assert!(!env.path("ran").exists());
    let (code, _, err) = crate::common::output(
        env.client()
            .args(["locks", "unlock"])
            .args(P)
            .args(["--lease-id", &lease]),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(wait_exit(&mut run), 0, "{}", read(&env.path("run.err")));
    assert!(env.path("ran").exists());
    assert!(!locked(&env));
}

#[test]
fn run_passes_sigterm_to_the_command_and_releases() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let mut run = spawn_run(
        &env,
        &[],
        "trap 'echo got-term > term.txt; exit 42' TERM; touch started; while :; do sleep 0.05; done",
    );
    eventually("the command starts", || env.path("started").exists());
    signal(run.id(), libc::SIGTERM);
    assert_eq!(wait_exit(&mut run), 42, "{}", read(&env.path("run.err")));
    assert_eq!(read(&env.path("term.txt")).trim(), "got-term");
    assert!(!locked(&env));
}

#[test]
fn a_lost_lease_stops_the_command() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let mut run = spawn_run(
        &env,
        &["--ttl=3s"],
        "touch started; while :; do sleep 0.05; done",
    );
    eventually("the command starts", || env.path("started").exists());
    let (code, _, err) =
        crate::common::output(env.client().args(["locks", "unlock", "--force"]).args(P));
    assert_eq!(code, 0, "{err}");
    // sh killed by SIGTERM: 128 + 15.
    assert_eq!(wait_exit(&mut run), 143, "{}", read(&env.path("run.err")));
    let err = read(&env.path("run.err"));
    assert!(
        err.contains("LEASE LOST on myorg/myrepo/./default/"),
        "{err}"
    );
    assert!(err.contains("Stopping the command"), "{err}");
}

#[test]
fn keep_running_on_lease_loss_only_warns() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let mut run = spawn_run(
        &env,
        &["--ttl=3s", "--keep-running-on-lease-loss"],
        "touch started; while [ ! -e stop ]; do sleep 0.05; done; exit 0",
    );
    eventually("the command starts", || env.path("started").exists());
    let (code, _, err) =
        crate::common::output(env.client().args(["locks", "unlock", "--force"]).args(P));
    assert_eq!(code, 0, "{err}");
    eventually("the loss is reported", || {
        read(&env.path("run.err")).contains("LEASE LOST")
    });
    std::fs::write(env.path("stop"), "").unwrap();
    assert_eq!(wait_exit(&mut run), 0, "{}", read(&env.path("run.err")));
    let err = read(&env.path("run.err"));
    assert!(err.contains("the command keeps running"), "{err}");
}

/// Freezes the server (SIGSTOP) and waits for the command to be stopped (it writes
/// `term` on SIGTERM); answers when that happened, `None` when it did not within
/// `ttl` + 10 s. The server is thawed (SIGCONT) before it returns.
fn freeze_until_term(env: &Env, ttl: Duration) -> (Instant, Option<Instant>) {
    let pid = env.server_pid().expect("a server");
    signal(pid, libc::SIGSTOP);
    // Every call the server answered was answered before this instant, so every
    // lease it extended expires by `frozen + ttl` at the latest.
    let frozen = Instant::now();
    let mut term = None;
    while frozen.elapsed() < ttl + Duration::from_secs(10) {
        if env.path("term").exists() {
            term = Some(Instant::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(pid, libc::SIGCONT);
    (frozen, term)
}

const STOPPABLE: &str =
    "trap 'touch term; exit 42' TERM; touch started; while :; do sleep 0.05; done";

#[test]
fn a_refresh_that_cannot_be_answered_stops_the_command_before_the_lease_can_expire() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let ttl = Duration::from_secs(3);
    let mut run = spawn_run(&env, &["--ttl=3s"], STOPPABLE);
    eventually("the command starts", || env.path("started").exists());
    // Let a refresh or two go through first.
    std::thread::sleep(Duration::from_millis(1500));
    let (frozen, term) = freeze_until_term(&env, ttl);
    let err = read(&env.path("run.err"));
    let term = term.unwrap_or_else(|| panic!("the command was never stopped:\n{err}"));
    assert!(
        term < frozen + ttl,
        "stopped {:?} after the server froze, the lease may have expired after {ttl:?}:\n{err}",
        term - frozen
    );
    assert_eq!(wait_exit(&mut run), 42, "{}", read(&env.path("run.err")));
    let err = read(&env.path("run.err"));
    assert!(err.contains("LEASE LOST"), "{err}");
}

/// The grant's reply comes late (the server is frozen while the acquire is in
/// flight): the lease is counted from the send, so the first refresh is due at once
/// and the command is still stopped in time when the server freezes again.
#[test]
fn a_late_grant_is_counted_from_the_send() {
    let mut env = Env::embedded();
    env.start_server(&[], &[]);
    let ttl = Duration::from_secs(4);
    let pid = env.server_pid().unwrap();
    signal(pid, libc::SIGSTOP);
    let spawned = Instant::now();
    let mut run = spawn_run(&env, &["--ttl=4s"], STOPPABLE);
    std::thread::sleep(Duration::from_millis(2500));
    signal(pid, libc::SIGCONT);
    eventually("the command starts", || env.path("started").exists());
    let (frozen, term) = freeze_until_term(&env, ttl);
    let err = read(&env.path("run.err"));
    let term = term.unwrap_or_else(|| panic!("the command was never stopped:\n{err}"));
    assert!(
        term < frozen + ttl,
        "stopped {:?} after the server froze ({:?} after the run started):\n{err}",
        term - frozen,
        term - spawned
    );
    assert_eq!(wait_exit(&mut run), 42, "{}", read(&env.path("run.err")));
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let env = Env::embedded();
    let (code, _, err) = env.run(&["run", "--project=o/r"]);
    assert_eq!(code, 2, "{err}");
}
