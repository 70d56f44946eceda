//! The harness: the real `tflock` binary, a real `tflock server` child process on a
//! free loopback port over a temporary embedded store or a real `redis-server` from
//! the testkit, and a working directory holding `tflock.yaml` so commands run exactly
//! as an operator types them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;
use tflock_testkit::{RedisOptions, RedisServer};

/// Bound on "this happens soon" (a server starts, a waiter shows up).
pub const SOON: Duration = Duration::from_secs(20);
/// Bound on any one CLI call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub const ADMIN_TOKEN: &str = "admin-token-for-cli-tests";
pub const API_TOKEN: &str = "api-token-for-cli-tests";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tflock"))
}

/// Which store a test server uses.
pub enum Store {
    Embedded,
    Redis(Box<RedisServer>),
}

/// A working directory with `tflock.yaml`, optionally a running server.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub redis: Option<RedisServer>,
    server: Option<Child>,
}

/// A port nobody listens on right now, outside the testkit's leased range (the kernel
/// picks it from its ephemeral range).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Env {
    /// A directory whose `tflock.yaml` names a store in it and a free port.
    pub fn new(store: Store) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let redis = match store {
            Store::Embedded => None,
            Store::Redis(r) => Some(*r),
        };
        let env = Env {
            dir,
            port,
            redis,
            server: None,
        };
        env.write_config("");
        env
    }

    pub fn embedded() -> Env {
        Env::new(Store::Embedded)
    }

    pub fn redis() -> Env {
        Env::new(Store::Redis(Box::new(RedisServer::start(
            RedisOptions::default(),
        ))))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn store(&self) -> PathBuf {
        self.path("data/locks.redb")
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `tflock.yaml` for this directory, with `extra` lines appended inside
    /// `enhanced_locking:` (indented by two spaces).
    pub fn write_config(&self, extra: &str) {
        let mut text = String::from("# tflock test config\nenhanced_locking:\n");
        match &self.redis {
            Some(r) => text.push_str(&format!(
                "  backend: redis\n  redis:\n    addresses: [\"127.0.0.1:{}\"]\n    key_prefix: \"tflock-test:\"\n    health_check_interval: 1s\n",
                r.port()
            )),
            None => text.push_str("  backend: embedded\n"),
        }
        text.push_str(&format!(
            "  embedded:\n    path: \"{}\"\n  server:\n    listen: \"127.0.0.1:{}\"\n",
            self.store().display(),
            self.port
        ));
        for l in extra.lines() {
            text.push_str("  ");
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(self.path("tflock.yaml"), text).unwrap();
    }

    /// `tflock ARGS` in this directory, with a clean environment.
    pub fn tflock(&self) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(self.dir.path()).timeout(CALL_TIMEOUT);
        clean_env(&mut c);
        c
    }

    /// `tflock ARGS` through the running server (`--server`).
    pub fn client(&self) -> Command {
        let mut c = self.tflock();
        c.env("TFLOCK_SERVER", self.base());
        c
    }

    /// Runs `tflock` with `args`; returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        output(self.tflock().args(args))
    }

    /// Runs `tflock` with `args`, expecting exit 0 and JSON on stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "tflock {args:?} failed:\n{out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tflock {args:?}: {e}: {out}"))
    }

    /// A shell line run in this directory with `tflock` on `PATH`, as an operator
    /// types it.
    pub fn sh(&self, line: &str) -> (i32, String, String) {
        let dir = bin().parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(line)
            .current_dir(self.dir.path())
            .env("PATH", path)
            .timeout(CALL_TIMEOUT);
        clean_env(&mut c);
        output(&mut c)
    }

    /// Starts `tflock server` in this directory with `args` and `envs`, and waits until
    /// it answers.
    pub fn start_server(&mut self, args: &[&str], envs: &[(&str, &str)]) {
        let log = std::fs::File::create(self.path("server.log")).unwrap();
        let mut c = StdCommand::new(bin());
        c.arg("server")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("ATLANTIS_") || k.starts_with("TFLOCK_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c.env("RUST_LOG", "info");
        for (k, v) in envs {
            c.env(k, v);
        }
        let child = c.spawn().unwrap();
        self.server = Some(child);
        let deadline = Instant::now() + SOON;
        loop {
            if http_get(self.port, "/healthz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("the server exited with {status}:\n{}", self.server_log());
            }
            assert!(
                Instant::now() < deadline,
                "the server did not answer within {SOON:?}:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running server's process id.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    /// SIGTERM, then waits for the server to exit (SIGKILL after `SOON`).
    pub fn stop_server(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.server.take()?;
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_server();
    }
}

fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("ATLANTIS_") || k.starts_with("TFLOCK_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.env("USER", "tester");
}

pub fn output(c: &mut Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) only sends a signal.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A bare HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Waits until `f` holds, panicking with `what` after `SOON`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {SOON:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Reads a file written by the test.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
