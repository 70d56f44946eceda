//! `redis-cli` with a deadline, and a raw RESP `PING` for readiness checks.
//!
//! Tests (and the harness itself) talk to servers through `redis-cli` rather than a Rust
//! client so that the harness checks Redis, not the client under test. A [`RedisCli`]
//! comes preconfigured from [`RedisServer::cli`](crate::RedisServer::cli) with the
//! server's port, credentials and TLS files; its builder methods change one of those for
//! negative tests (no password, wrong CA, plain TCP to a TLS port).
//!
//! `redis-cli` exits 0 even when the reply is an error, printing e.g. `NOPERM ...` on
//! stdout, so [`RedisCli::query`] returns that text and tests assert on it.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::process;

/// Credentials: an ACL user and password, or just the default user's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// `None` authenticates the `default` user (`AUTH password`).
    pub user: Option<String>,
    pub password: String,
}

impl Auth {
    /// Credentials for the ACL user `user`.
    pub fn user(user: &str, password: &str) -> Self {
        Self {
            user: Some(user.to_owned()),
            password: password.to_owned(),
        }
    }

    /// The `default` user's password (`requirepass`).
    pub fn password(password: &str) -> Self {
        Self {
            user: None,
            password: password.to_owned(),
        }
    }
}

#[derive(Clone, Debug)]
struct CliTls {
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

/// One `redis-cli` target: address, credentials, TLS and cluster mode. Cheap to clone;
/// each [`run`](Self::run) starts a new `redis-cli` process.
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisCli {
    port: u16,
    auth: Option<Auth>,
    tls: Option<CliTls>,
    cluster: bool,
    timeout: Duration,
}

/// What one `redis-cli` run printed and how it ended.
#[derive(Clone, Debug)]
pub struct CliOutput {
    /// The exit code; `None` if it was killed (including by our deadline).
    pub exit_code: Option<i32>,
    /// True if it ran past its deadline and was killed.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// It exited 0 in time. Error *replies* still count as success; check `stdout`.
    pub fn success(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.timed_out {
            write!(f, "timed out")?;
        } else {
            write!(f, "exit code {:?}", self.exit_code)?;
        }
        write!(
            f,
            "; stdout: {:?}; stderr: {:?}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

impl RedisCli {
    /// A plain-TCP, unauthenticated `redis-cli` for `127.0.0.1:port`.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            auth: None,
            tls: None,
            cluster: false,
            timeout: Duration::from_secs(10),
        }
    }

    /// The target address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Authenticates with `auth` (replacing any credentials).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Sends no credentials.
    pub fn no_auth(mut self) -> Self {
        self.auth = None;
        self
    }

    /// Connects with TLS, trusting `ca` and presenting no client certificate.
    pub fn tls(mut self, ca: &Path) -> Self {
        self.tls = Some(CliTls {
            ca: ca.to_owned(),
            client: None,
        });
        self
    }

    /// Presents `cert`/`key` as the client certificate. Requires [`tls`](Self::tls).
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> Self {
        let tls = self
            .tls
            .as_mut()
            .expect("client_cert needs TLS: call .tls(ca) first");
        tls.client = Some((cert.to_owned(), key.to_owned()));
        self
    }

    /// Connects over plain TCP even if the target expects TLS.
    pub fn no_tls(mut self) -> Self {
        self.tls = None;
        self
    }

    /// Follows `MOVED`/`ASK` redirections (`redis-cli -c`).
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// How long one run may take before it is killed (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The full argument list for `args`, without the program name.
    fn argv<I, S>(&self, args: I) -> Vec<OsString>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv: Vec<OsString> = vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string().into(),
        ];
        if let Some(auth) = &self.auth {
            if let Some(user) = &auth.user {
                argv.extend(["--user".into(), user.into()]);
            }
            argv.extend([
                "--pass".into(),
                (&auth.password).into(),
                "--no-auth-warning".into(),
            ]);
        }
        if let Some(tls) = &self.tls {
            argv.extend(["--tls".into(), "--cacert".into(), tls.ca.clone().into()]);
            if let Some((cert, key)) = &tls.client {
                argv.extend([
                    "--cert".into(),
                    cert.clone().into(),
                    "--key".into(),
                    key.clone().into(),
                ]);
            }
        }
        if self.cluster {
            argv.push("-c".into());
        }
        argv.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        argv
    }

    /// Runs `redis-cli <connection options> <args>`. Never panics on what Redis answers;
    /// panics only if `redis-cli` cannot be started.
    pub fn run<I, S>(&self, args: I) -> CliOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_program(
            &process::program("redis-cli", "TFLOCK_REDIS_CLI"),
            &self.argv(args),
            self.timeout,
        )
    }

    /// Runs `args` and returns stdout without its trailing newline(s). Panics if
    /// `redis-cli` fails (cannot connect, TLS error) or times out; error replies such as
    /// `NOPERM ...` are returned, not raised.
    pub fn query<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.try_query(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`query`](Self::query), but a failed run is an `Err` describing it: for
    /// polling a node that may be down.
    pub fn try_query<I, S>(&self, args: I) -> Result<String, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv = self.argv(args);
        let out = run_program(
            &process::program("redis-cli", "TFLOCK_REDIS_CLI"),
            &argv,
            self.timeout,
        );
        if out.success() {
            Ok(out.stdout.trim_end().to_owned())
        } else {
            Err(format!("redis-cli {} failed: {out}", display_argv(&argv)))
        }
    }
}

/// Runs `program argv...` with stdin closed, collecting output, killed after `timeout`.
pub(crate) fn run_program(program: &Path, argv: &[OsString], timeout: Duration) -> CliOutput {
    let mut command = Command::new(program);
    command
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = process::spawn(command)
        .unwrap_or_else(|e| panic!("{}", process::spawn_failure(program.as_os_str(), &e)));
    // Read both pipes on their own threads so a chatty child cannot block on a full pipe
    // while we wait for it to exit.
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let status = process::wait_timeout(&mut child, timeout);
    if status.is_none() {
        assert!(
            process::kill_and_reap(&mut child),
            "{} survived SIGKILL",
            program.display()
        );
    }
    CliOutput {
        exit_code: status.and_then(|s| s.code()),
        timed_out: status.is_none(),
        stdout: stdout.join().expect("reader thread"),
        stderr: stderr.join().expect("reader thread"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Arguments for a message, with the password masked.
fn display_argv(argv: &[OsString]) -> String {
    let mut shown = Vec::with_capacity(argv.len());
    let mut mask_next = false;
    for arg in argv {
        let arg = arg.to_string_lossy();
        shown.push(if mask_next { "***".into() } else { arg.clone() });
        mask_next = arg == "--pass";
    }
    shown.join(" ")
}

/// Sends `AUTH` (if `auth`) and `PING` over plain TCP and returns `Ok` on `+PONG`, else
/// what the server said. Used to wait for readiness without a process per probe; a
/// server still loading its AOF answers `-LOADING`, which is not ready.
pub(crate) fn resp_ping(port: u16, auth: Option<&Auth>) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Short: a squatter on the port (see `ports`) accepts but never answers, and the
    // caller checks between probes whether Redis exited; a slow but live server is
    // simply probed again.
    let io_timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, io_timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(io_timeout))
        .and_then(|()| stream.set_write_timeout(Some(io_timeout)))
        .map_err(|e| e.to_string())?;
    let mut request = Vec::new();
    let mut replies_expected = 1;
    if let Some(auth) = auth {
        let mut args = vec!["AUTH"];
        if let Some(user) = &auth.user {
            args.push(user);
        }
        args.push(&auth.password);
        request.extend(resp_command(&args));
        replies_expected += 1;
    }
    request.extend(resp_command(&["PING"]));
    stream.write_all(&request).map_err(|e| e.to_string())?;
    // Every reply here is a one-line simple string or error.
    let mut received = Vec::new();
    let mut buf = [0_u8; 512];
    while received.windows(2).filter(|w| w == b"\r\n").count() < replies_expected {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&received)
            ));
        }
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    if text.lines().nth(replies_expected - 1) == Some("+PONG") {
        Ok(())
    } else {
        Err(format!("answered {:?}", text.trim_end()))
    }
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_masks_password_in_messages() {
        let cli = RedisCli::new(1234).auth(Auth::user("u", "hunter2"));
        let shown = display_argv(&cli.argv(["PING"]));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("--user u --pass ***"), "{shown}");
    }

    #[test]
    fn resp_encoding() {
        assert_eq!(
            resp_command(&["AUTH", "pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
        );
    }
}
