//! One Redis process: [`RedisServer`], configured by [`RedisOptions`].
//!
//! A server owns its port lease (kept while stopped, so [`RedisServer::restart`] comes
//! back on the same port), its temporary directory (config file, log, AOF, cluster
//! `nodes.conf`) and its child process. Sentinels are `RedisServer`s started in sentinel
//! mode by [`RedisSentinel`](crate::RedisSentinel).
//!
//! Configuration goes into `redis.conf` in the data directory rather than onto the
//! command line: it keeps passwords out of `ps`, and Redis may rewrite it (`CONFIG
//! REWRITE`, which Sentinel sends after a failover) so that a restarted node keeps its
//! new role, as a real deployment would.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cli::{self, Auth, RedisCli};
use crate::ports::{self, PortLease};
use crate::process;
use crate::tls::TlsMaterial;
use crate::wait::DEFAULT_TIMEOUT;

/// The `tls-auth-clients` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsClientAuth {
    /// `yes`: a client certificate signed by the CA is required.
    Required,
    /// `optional`: a certificate is checked if presented.
    Optional,
    /// `no`: no client certificate is asked for.
    NotRequested,
}

impl TlsClientAuth {
    fn directive(self) -> &'static str {
        match self {
            Self::Required => "yes",
            Self::Optional => "optional",
            Self::NotRequested => "no",
        }
    }
}

/// An ACL user, written as `user <name> on ><password> <rules>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclUser {
    pub name: String,
    pub password: String,
    /// ACL rules after the password, e.g. `+@all ~atlantis:enhanced:lock:* &*`.
    pub rules: String,
}

impl AclUser {
    pub fn new(name: &str, password: &str, rules: &str) -> Self {
        Self {
            name: name.to_owned(),
            password: password.to_owned(),
            rules: rules.to_owned(),
        }
    }
}

/// How to configure a standalone server. The default is a plain, unauthenticated,
/// memory-only server (`save ""`, no AOF).
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct RedisOptions {
    appendonly: bool,
    password: Option<String>,
    acl_users: Vec<AclUser>,
    default_user_off: bool,
    connect_as: Option<Auth>,
    tls: Option<(Arc<TlsMaterial>, TlsClientAuth)>,
    config: Vec<String>,
}

impl RedisOptions {
    /// `appendonly yes` with `appendfsync always`: every acknowledged write is on disk,
    /// so it survives SIGKILL and [`RedisServer::restart`].
    pub fn appendonly(mut self) -> Self {
        self.appendonly = true;
        self
    }

    /// A password for the `default` user (`requirepass`).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// Adds an ACL user. Combine with [`default_user_off`](Self::default_user_off) to
    /// make it the only way in.
    pub fn acl_user(mut self, user: AclUser) -> Self {
        self.acl_users.push(user);
        self
    }

    /// `user default off`: unauthenticated connections get `NOAUTH`.
    pub fn default_user_off(mut self) -> Self {
        self.default_user_off = true;
        self
    }

    /// The credentials that [`RedisServer::url`], [`RedisServer::cli`] and the readiness
    /// check use. Without this: the first ACL user if the default user is off, else the
    /// default user's password if set, else none.
    pub fn connect_as(mut self, auth: Auth) -> Self {
        self.connect_as = Some(auth);
        self
    }

    /// Serves TLS only (`port 0`, `tls-port <port>`) with `material`'s server
    /// certificate, trusting its CA for client certificates.
    pub fn tls(mut self, material: Arc<TlsMaterial>, client_auth: TlsClientAuth) -> Self {
        self.tls = Some((material, client_auth));
        self
    }

    /// Appends a raw `redis.conf` directive, e.g. `"maxmemory 10mb"`.
    pub fn config(mut self, directive: &str) -> Self {
        self.config.push(directive.to_owned());
        self
    }

    /// The credentials clients use by default; see [`connect_as`](Self::connect_as).
    pub fn client_auth(&self) -> Option<Auth> {
        if let Some(auth) = &self.connect_as {
            return Some(auth.clone());
        }
        if self.default_user_off {
            return self
                .acl_users
                .first()
                .map(|u| Auth::user(&u.name, &u.password));
        }
        self.password.as_deref().map(Auth::password)
    }

    /// The TLS material, if the server speaks TLS.
    pub fn tls_material(&self) -> Option<&Arc<TlsMaterial>> {
        self.tls.as_ref().map(|(material, _)| material)
    }

    fn validate(&self) {
        let words = self
            .password
            .iter()
            .chain(self.acl_users.iter().flat_map(|u| [&u.name, &u.password]));
        for word in words {
            assert!(
                !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || c == '"'),
                "user names and passwords must be non-empty, without spaces or quotes: {word:?}"
            );
        }
        for line in self.acl_users.iter().map(|u| &u.rules).chain(&self.config) {
            assert!(!line.contains('\n'), "one directive per line: {line:?}");
        }
        assert!(
            !(self.default_user_off && self.password.is_some()),
            "password() sets the default user's password, default_user_off() disables it: pick one"
        );
    }
}

/// What kind of process a [`RedisServer`] runs.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Server,
    /// `redis-sentinel` with these `sentinel ...` directives.
    Sentinel {
        directives: Vec<String>,
    },
}

/// A running (or stopped, or paused) Redis process on `127.0.0.1`; see the module docs.
///
/// All methods take `&self`, so a server can be shared (`Arc<RedisServer>`) between a
/// test and the threads or tasks that break it. Dropping it kills the process and
/// removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    kind: Kind,
    options: RedisOptions,
    port: PortLease,
    /// `None` only after drop decided to keep it (`TFLOCK_TESTKIT_KEEP`).
    dir: Option<TempDir>,
    config_path: PathBuf,
    log_path: PathBuf,
    /// `None` while stopped or killed. A std mutex: it is only held for signals and
    /// `try_wait`, never across a readiness wait by another caller.
    process: Mutex<Option<Running>>,
    /// Serialises stop, kill and restart, so that two threads restarting the same server
    /// cannot start two processes on one port.
    lifecycle: Mutex<()>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    paused: bool,
}

enum LaunchError {
    /// Something outside the testkit holds the port (or its bus port).
    PortTaken,
    Failed(String),
}

/// How many fresh ports a first start tries when Redis finds its port taken.
const PORT_ATTEMPTS: u32 = 5;

impl RedisServer {
    /// Starts a server and waits until it answers `PING` (with its credentials and TLS
    /// settings). Panics, with the log tail, if it does not within [`DEFAULT_TIMEOUT`].
    pub fn start(options: RedisOptions) -> Self {
        Self::start_kind(Kind::Server, options)
    }

    pub(crate) fn start_kind(kind: Kind, options: RedisOptions) -> Self {
        Self::start_on(kind, options, ports::lease())
    }

    /// Starts on `lease`'s port, or on fresh ones if something else holds it.
    fn start_on(kind: Kind, options: RedisOptions, lease: PortLease) -> Self {
        options.validate();
        let prefix = match kind {
            Kind::Server => "tflock-testkit-redis-",
            Kind::Sentinel { .. } => "tflock-testkit-sentinel-",
        };
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("cannot create a temporary directory for redis");
        let config_name = match kind {
            Kind::Server => "redis.conf",
            Kind::Sentinel { .. } => "sentinel.conf",
        };
        let mut server = Self {
            kind,
            options,
            port: lease,
            config_path: dir.path().join(config_name),
            log_path: dir.path().join("redis.log"),
            dir: Some(dir),
            process: Mutex::new(None),
            lifecycle: Mutex::new(()),
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.write_config();
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::PortTaken) if attempt < PORT_ATTEMPTS => {
                    server.port = ports::lease();
                }
                Err(LaunchError::PortTaken) => panic!(
                    "{}: port taken on {PORT_ATTEMPTS} tries in a row\n{}",
                    server.describe(),
                    server.log_tail(20)
                ),
                Err(LaunchError::Failed(message)) => panic!("{message}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// The port clients connect to (the TLS port for a TLS server).
    pub fn port(&self) -> u16 {
        self.port.port()
    }

    /// `redis://[user:password@]127.0.0.1:<port>`, or `rediss://` for TLS (a TLS client
    /// also needs [`TlsMaterial::ca_cert`], which a URL cannot carry).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let userinfo = match self.options.client_auth() {
            None => String::new(),
            Some(Auth { user, password }) => format!(
                "{}:{}@",
                percent_encode(user.as_deref().unwrap_or("")),
                percent_encode(&password)
            ),
        };
        format!("{scheme}://{userinfo}{}", self.addr())
    }

    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The temporary directory: config, log, AOF (`appendonlydir/`), `nodes.conf`.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir is kept until drop").path()
    }

    /// The file that receives the process's stdout and stderr, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process id while a process exists (running or paused).
    pub fn pid(&self) -> Option<u32> {
        self.reap_if_exited().as_ref().map(|r| r.child.id())
    }

    /// True while the process exists (paused counts). A process that exited on its own
    /// is reaped here and reported as not running.
    pub fn is_running(&self) -> bool {
        self.reap_if_exited().is_some()
    }

    /// True while the process is stopped by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.reap_if_exited().as_ref().is_some_and(|r| r.paused)
    }

    /// SIGTERM, then waits for a clean exit (AOF flushed); SIGKILL if that takes more
    /// than 10 s. No-op if not running.
    pub fn stop(&self) {
        let _lifecycle = self
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.stop_locked();
    }

    fn stop_locked(&self) {
        let Some(mut running) = self.lock().take() else {
            return;
        };
        process::send_signal(running.child.id(), libc::SIGTERM);
        if running.paused {
            // A stopped process only acts on SIGTERM once continued.
            process::send_signal(running.child.id(), libc::SIGCONT);
        }
        if process::wait_timeout(&mut running.child, Duration::from_secs(10)).is_none() {
            eprintln!(
                "{} ignored SIGTERM for 10 s; sending SIGKILL",
                self.describe()
            );
            self.kill_running(&mut running);
        }
    }

    /// SIGKILL (a crash: nothing flushed beyond what `appendfsync` already did) and
    /// reaps, so the port is free on return. No-op if not running.
    pub fn kill(&self) {
        let _lifecycle = self
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mut running) = self.lock().take() {
            self.kill_running(&mut running);
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing, like a node stalled by
    /// a long GC pause or a frozen VM. Returns once the kernel reports it stopped.
    pub fn pause(&self) {
        let mut guard = self.lock();
        let running = guard
            .as_mut()
            .unwrap_or_else(|| panic!("pause: {} is not running", self.describe()));
        process::send_signal(running.child.id(), libc::SIGSTOP);
        running.paused = true;
        wait_for_state(running.child.id(), true);
    }

    /// SIGCONT after [`pause`](Self::pause). Returns once the kernel reports it running.
    pub fn resume(&self) {
        let mut guard = self.lock();
        let running = guard
            .as_mut()
            .unwrap_or_else(|| panic!("resume: {} is not running", self.describe()));
        process::send_signal(running.child.id(), libc::SIGCONT);
        running.paused = false;
        wait_for_state(running.child.id(), false);
    }

    /// Stops the process if it runs, then starts it again on the same port, in the same
    /// directory, with the same (possibly Redis-rewritten) config; waits until it answers
    /// `PING`, i.e. until any AOF has been replayed.
    pub fn restart(&self) {
        let _lifecycle = self
            .lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.stop_locked();
        match self.launch() {
            Ok(()) => {}
            Err(LaunchError::PortTaken) => panic!(
                "{}: restart found its port taken by a process outside the testkit\n{}",
                self.describe(),
                self.log_tail(20)
            ),
            Err(LaunchError::Failed(message)) => panic!("{message}"),
        }
    }

    /// A `redis-cli` preconfigured for this server: its port, default credentials and,
    /// for TLS, the CA and the client certificate.
    pub fn cli(&self) -> RedisCli {
        let mut cli = RedisCli::new(self.port());
        if let Some(auth) = self.options.client_auth() {
            cli = cli.auth(auth);
        }
        if let Some((material, _)) = &self.options.tls {
            cli = cli
                .tls(material.ca_cert())
                .client_cert(material.client_cert(), material.client_key());
        }
        cli
    }

    /// Runs one command with [`cli`](Self::cli) and returns its output, e.g.
    /// `redis_cli(["GET", "k"]) == "v"`. Error replies come back as text (`NOPERM ...`);
    /// failing to connect panics.
    pub fn redis_cli<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cli().query(args)
    }

    /// One `field:value` line of `INFO <section>`, e.g. `("replication", "role")`;
    /// `None` if the field is absent or the server does not answer.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let info = self.cli().try_query(["INFO", section]).ok()?;
        info_value(&info, field).map(str::to_owned)
    }

    /// "redis-server 127.0.0.1:port (dir ...)" for messages.
    pub(crate) fn describe(&self) -> String {
        let program = match self.kind {
            Kind::Server => "redis-server",
            Kind::Sentinel { .. } => "redis-sentinel",
        };
        let dir = self
            .dir
            .as_ref()
            .map_or_else(String::new, |d| d.path().display().to_string());
        format!("{program} {} (dir {dir})", self.addr())
    }

    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        // A panic while holding the lock leaves the state consistent (signals are
        // idempotent), so a poisoned lock is still usable; Drop relies on that.
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reap_if_exited(&self) -> MutexGuard<'_, Option<Running>> {
        let mut guard = self.lock();
        if let Some(running) = guard.as_mut()
            && let Ok(Some(_)) = running.child.try_wait()
        {
            *guard = None;
        }
        guard
    }

    fn kill_running(&self, running: &mut Running) {
        assert!(
            process::kill_and_reap(&mut running.child),
            "{} did not die within 10 s of SIGKILL",
            self.describe()
        );
    }

    fn write_config(&self) {
        let text = self.render_config();
        fs::write(&self.config_path, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config_path.display()));
    }

    fn render_config(&self) -> String {
        let mut c = String::from("# Written by tflock-testkit.\n");
        let port = self.port();
        let dir = self.dir();
        let _ = writeln!(c, "bind 127.0.0.1");
        let _ = writeln!(c, "dir {}", quote(&dir.to_string_lossy()));
        let _ = writeln!(c, "daemonize no");
        // Logs go to stdout, which is redirected to `redis.log`, so that messages printed
        // before the config is parsed (bad directives) land in the same file.
        let _ = writeln!(c, "logfile \"\"");
        if let Some((tls, client_auth)) = &self.options.tls {
            let _ = writeln!(c, "port 0");
            let _ = writeln!(c, "tls-port {port}");
            let _ = writeln!(c, "tls-cert-file {}", quote_path(tls.server_cert()));
            let _ = writeln!(c, "tls-key-file {}", quote_path(tls.server_key()));
            let _ = writeln!(c, "tls-ca-cert-file {}", quote_path(tls.ca_cert()));
            let _ = writeln!(c, "tls-auth-clients {}", client_auth.directive());
        } else {
            let _ = writeln!(c, "port {port}");
        }
        match &self.kind {
            Kind::Server => {
                // No RDB snapshots: tests control durability with AOF only.
                let _ = writeln!(c, "save \"\"");
                if self.options.appendonly {
                    let _ = writeln!(c, "appendonly yes");
                    let _ = writeln!(c, "appendfsync always");
                } else {
                    let _ = writeln!(c, "appendonly no");
                }
                // Redis waits 5 s by default before a diskless full sync, hoping more
                // replicas will join it; every replica a test starts would pay that.
                let _ = writeln!(c, "repl-diskless-sync-delay 0");
                if let Some(password) = &self.options.password {
                    let _ = writeln!(c, "requirepass {password}");
                }
                if self.options.default_user_off {
                    let _ = writeln!(c, "user default off");
                }
                for user in &self.options.acl_users {
                    let _ = writeln!(c, "user {} on >{} {}", user.name, user.password, user.rules);
                }
            }
            Kind::Sentinel { directives } => {
                for directive in directives {
                    let _ = writeln!(c, "{directive}");
                }
            }
        }
        for directive in &self.options.config {
            let _ = writeln!(c, "{directive}");
        }
        c
    }

    /// Spawns the process and waits until it answers `PING`. On success the process is
    /// stored; on failure it has been reaped.
    fn launch(&self) -> Result<(), LaunchError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let program = match self.kind {
            Kind::Server => process::program("redis-server", "TFLOCK_REDIS_SERVER"),
            Kind::Sentinel { .. } => process::program("redis-sentinel", "TFLOCK_REDIS_SENTINEL"),
        };
        let mut command = Command::new(&program);
        command.arg(&self.config_path);
        if let Kind::Sentinel { .. } = self.kind {
            // Redundant for `redis-sentinel`, needed if TFLOCK_REDIS_SENTINEL names
            // `redis-server`.
            command.arg("--sentinel");
        }
        command
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file handle"))
            .stderr(log);
        let child = process::spawn(command)
            .unwrap_or_else(|e| panic!("{}", process::spawn_failure(program.as_os_str(), &e)));
        let mut running = Running {
            child,
            paused: false,
        };

        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                let new_log = read_from(&self.log_path, log_offset);
                if new_log.contains("Address already in use") {
                    return Err(LaunchError::PortTaken);
                }
                return Err(LaunchError::Failed(format!(
                    "{} exited ({status}) before answering PING; log {}:\n{}",
                    self.describe(),
                    self.log_path.display(),
                    self.log_tail(30)
                )));
            }
            let last = match self.probe() {
                Ok(()) => break,
                Err(observed) => observed,
            };
            if started.elapsed() >= DEFAULT_TIMEOUT {
                let _ = process::kill_and_reap(&mut running.child);
                return Err(LaunchError::Failed(format!(
                    "{} did not answer PING within {DEFAULT_TIMEOUT:?}; last probe: {last}; log {}:\n{}",
                    self.describe(),
                    self.log_path.display(),
                    self.log_tail(30)
                )));
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        *self.lock() = Some(running);
        Ok(())
    }

    /// One readiness probe: a raw RESP `PING` for plain TCP (no process per probe), a
    /// `redis-cli --tls PING` for TLS (we have no TLS client of our own).
    fn probe(&self) -> Result<(), String> {
        if self.options.tls.is_some() {
            let out = self.cli().timeout(Duration::from_secs(5)).run(["PING"]);
            if out.success() && out.stdout.trim_end() == "PONG" {
                Ok(())
            } else {
                Err(out.to_string())
            }
        } else {
            let auth = match self.kind {
                Kind::Server => self.options.client_auth(),
                Kind::Sentinel { .. } => None,
            };
            cli::resp_ping(self.port(), auth.as_ref())
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let running = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut running) = running {
            // Never panic in drop: a second panic would abort the test binary.
            if !process::kill_and_reap(&mut running.child) {
                eprintln!(
                    "{}: pid {} survived SIGKILL",
                    self.describe(),
                    running.child.id()
                );
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- {} log tail ({}) ---\n{}",
                self.describe(),
                self.log_path.display(),
                self.log_tail(20)
            );
        }
        if std::env::var_os("TFLOCK_TESTKIT_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("tflock-testkit: kept {}", dir.keep().display());
        }
    }
}

/// The value of `field` in `INFO` output (`field:value` lines).
pub(crate) fn info_value<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// Waits until `/proc/<pid>/stat` says the process is (or is no longer) stopped, so that
/// `pause()` returning means the server really answers nothing. Off Linux, returns at once.
fn wait_for_state(pid: u32, stopped: bool) {
    let stat_path = format!("/proc/{pid}/stat");
    if !Path::new(&stat_path).exists() {
        return;
    }
    let started = Instant::now();
    loop {
        let Ok(stat) = fs::read_to_string(&stat_path) else {
            return; // exited: nothing left to wait for
        };
        // The state follows the parenthesised command name, which may contain spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if state.is_some_and(|s| (s == 'T') == stopped) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "pid {pid} did not become {} within 10 s (state {state:?})",
            if stopped { "stopped" } else { "running" }
        );
        thread::sleep(Duration::from_millis(1));
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

/// A `redis.conf` double-quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn quote_path(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URL userinfo.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_moves_to_another_port_when_its_port_is_taken() {
        let lease = ports::lease();
        let taken = lease.port();
        // A listener outside the testkit's leases, as another program's would be.
        let _squatter = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, taken)).unwrap();
        let redis = RedisServer::start_on(Kind::Server, RedisOptions::default(), lease);
        assert_ne!(redis.port(), taken);
        assert_eq!(redis.redis_cli(["PING"]), "PONG");
        assert!(
            fs::read_to_string(redis.log_path())
                .unwrap()
                .contains("Address already in use")
        );
    }

    #[test]
    fn client_auth_resolution() {
        assert_eq!(RedisOptions::default().client_auth(), None);
        assert_eq!(
            RedisOptions::default().password("pw").client_auth(),
            Some(Auth::password("pw"))
        );
        let acl = RedisOptions::default()
            .acl_user(AclUser::new("atlantis", "secret", "+@all ~* &*"))
            .default_user_off();
        assert_eq!(acl.client_auth(), Some(Auth::user("atlantis", "secret")));
        assert_eq!(
            acl.connect_as(Auth::user("x", "y")).client_auth(),
            Some(Auth::user("x", "y"))
        );
    }

    #[test]
    fn info_value_parses_fields() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1\r\n";
        assert_eq!(info_value(info, "role"), Some("master"));
        assert_eq!(info_value(info, "connected_slaves"), Some("1"));
        assert_eq!(info_value(info, "connected"), None);
    }

    #[test]
    fn percent_encoding_for_userinfo() {
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
