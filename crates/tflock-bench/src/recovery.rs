//! The recovery measure (issue 16, point 2): how soon locking works again after Redis
//! comes back from a fault, with three real `tflock server` processes on one Redis and
//! 16 HTTP clients in this process.
//!
//! Faults, each repeated: Redis SIGKILLed and restarted on its port from its AOF
//! (`appendfsync always`); Redis SIGSTOPped and SIGCONTed; the Sentinel primary
//! SIGKILLed (one primary, one replica, three sentinels), the sentinels failing over.
//! Each fault lasts until every server's breaker is open (so the measure covers the
//! breaker's own recovery, which is what kept locking down for up to 30 s before),
//! plus half a second.
//!
//! "Back" is when Redis itself can serve again, seen from outside tflock: the first
//! `+PONG` on a fresh connection to the restarted or continued Redis, or the first
//! sentinel naming a new primary that says `ROLE master`. From then on two figures:
//! the first acquire any client is granted, and the moment every one of the 16
//! clients has been granted again. Each client acquires a fresh resource (30 s TTL)
//! and releases it, in a loop through its own server (client `i` on server `i % 3`);
//! a refused acquire is retried after [`RETRY`] (a polling client; not the 1 s
//! `Retry-After`, which would measure the client's patience, not tflock).
//!
//! The servers run with the spec's defaults for the breaker (`failure_threshold` 5,
//! `reset_timeout` 30 s, `half_open_max_requests` 3) and `health_check_interval`
//! (10 s), and the default `read_timeout` (3 s).
//!
//! The `tflock` binary: `$TFLOCK_BIN`, else a `tflock` built next to this binary that
//! is at least as new, else this binary run as `tflock` (it then calls the same
//! `tflock_cli::main` the `tflock` binary does).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tflock_core::Resource;
use tflock_testkit::{RedisOptions, RedisSentinel, RedisServer, SentinelOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::{Api, HttpApi};
use crate::stats::Latency;

pub const CLIENTS: usize = 16;
pub const SERVERS: usize = 3;
/// A refused acquire is retried after this.
pub const RETRY: Duration = Duration::from_millis(20);
/// How long Redis stays down once every breaker is open.
const AFTER_OPEN: Duration = Duration::from_millis(500);
/// A fault whose clients took longer than this (ms) to be granted again has its
/// servers' log tails printed.
const SLOW_MS: f64 = 1000.0;
/// Bound of every wait that is not the measure.
const LIMIT: Duration = Duration::from_secs(60);

/// The three fault kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    KillRestart,
    StopCont,
    SentinelFailover,
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] = [
        FaultKind::KillRestart,
        FaultKind::StopCont,
        FaultKind::SentinelFailover,
    ];

    /// The short name `--recovery-kinds` takes.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRestart => "kill",
            FaultKind::StopCont => "stop",
            FaultKind::SentinelFailover => "failover",
        }
    }

    pub fn parse(name: &str) -> Result<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| anyhow!("unknown fault kind '{name}' (kill, stop, failover)"))
    }

    pub fn label(self) -> &'static str {
        match self {
            FaultKind::KillRestart => "Redis SIGKILL + restart (AOF)",
            FaultKind::StopCont => "Redis SIGSTOP + SIGCONT",
            FaultKind::SentinelFailover => "Sentinel primary SIGKILL (failover)",
        }
    }
}

/// One fault's figures (milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultResult {
    /// From the fault to Redis being back.
    pub down_ms: f64,
    /// From Redis being back to the first grant.
    pub first_ms: f64,
    /// From Redis being back to every client granted again.
    pub all_ms: f64,
}

/// One fault kind's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryRow {
    pub fault: String,
    pub faults: Vec<FaultResult>,
    pub first: Latency,
    pub all: Latency,
    pub down: Latency,
    pub errors: Vec<String>,
}

/// The measure's own record: it is often run alone (`--only recovery`) and merged
/// into the published report, so it keeps its own command and date.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoveryRun {
    pub command: String,
    pub started_at: String,
    pub mode: String,
    pub clients: usize,
    pub servers: usize,
    pub retry_ms: f64,
    pub rows: Vec<RecoveryRow>,
}

impl RecoveryRow {
    fn of(kind: FaultKind, faults: Vec<FaultResult>, errors: Vec<String>) -> Self {
        RecoveryRow {
            fault: kind.label().into(),
            first: Latency::of(faults.iter().map(|f| f.first_ms).collect()),
            all: Latency::of(faults.iter().map(|f| f.all_ms).collect()),
            down: Latency::of(faults.iter().map(|f| f.down_ms).collect()),
            faults,
            errors,
        }
    }
}

/// How to run `tflock`.
#[derive(Debug, Clone)]
pub struct ServerBinary {
    path: PathBuf,
    arg0: Option<&'static str>,
}

impl ServerBinary {
    pub fn find() -> Result<Self> {
        if let Some(p) = std::env::var_os("TFLOCK_BIN") {
            return Ok(ServerBinary {
                path: p.into(),
                arg0: None,
            });
        }
        let me = std::env::current_exe().context("the benchmark's own path")?;
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        // target/<profile>/tflock, also from target/<profile>/deps/ (tests).
        for dir in me.ancestors().skip(1).take(2) {
            let candidate = dir.join("tflock");
            if candidate.is_file() {
                if let (Some(a), Some(b)) = (mtime(&candidate), mtime(&me))
                    && a >= b
                {
                    return Ok(ServerBinary {
                        path: candidate,
                        arg0: None,
                    });
                }
                break;
            }
        }
        Ok(ServerBinary {
            path: me,
            arg0: Some("tflock"),
        })
    }

    pub fn describe(&self) -> String {
        match self.arg0 {
            Some(a) => format!("{} (as {a})", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `tflock server` process; killed on drop.
struct Server {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(bin: &ServerBinary, dir: &Path, index: usize, redis_yaml: &str) -> Result<Self> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = dir.join(format!("server{index}.yaml"));
        std::fs::write(
            &config,
            format!(
                "enhanced_locking:\n  enabled: true\n  server:\n    listen: {addr}\n  backend: redis\n  redis:\n{redis_yaml}"
            ),
        )?;
        let log = dir.join(format!("server{index}.log"));
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bin.path);
        if let Some(a) = bin.arg0 {
            use std::os::unix::process::CommandExt;
            cmd.arg0(a);
        }
        cmd.args(["server", "--config"])
            .arg(&config)
            .env_remove("TFLOCK_CONFIG")
            .env(
                "ATLANTIS_LOG_LEVEL",
                std::env::var("TFLOCK_BENCH_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.describe()))?;
        Ok(Server { addr, child, log })
    }

    /// The log's lines stamped from `from` to `to` (RFC 3339, as the server writes
    /// them) that are not a served request: breaker transitions, failed checks and
    /// requests, warnings.
    fn log_between(&self, from: std::time::SystemTime, to: std::time::SystemTime) -> String {
        let stamp = |t| humantime::format_rfc3339_micros(t).to_string();
        let (from, to) = (stamp(from), stamp(to));
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| {
                let t = l.get(..from.len()).unwrap_or("");
                t >= from.as_str() && t <= to.as_str() && !l.contains("status=200")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three servers, and an HTTP client per server.
struct Fleet {
    servers: Vec<Server>,
    apis: Vec<Arc<Api>>,
    http: reqwest::Client,
}

impl Fleet {
    async fn start(bin: &ServerBinary, dir: &Path, redis_yaml: &str) -> Result<Self> {
        let mut servers = Vec::new();
        for i in 0..SERVERS {
            servers.push(Server::start(bin, dir, i, redis_yaml)?);
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        for s in &mut servers {
            let started = Instant::now();
            loop {
                if let Ok(r) = http.get(format!("http://{}/readyz", s.addr)).send().await
                    && r.status().is_success()
                {
                    break;
                }
                if let Ok(Some(status)) = s.child.try_wait() {
                    bail!(
                        "tflock server exited at start ({status}):\n{}",
                        s.log_tail()
                    );
                }
                if started.elapsed() > LIMIT {
                    bail!(
                        "tflock server not ready within {LIMIT:?}:\n{}",
                        s.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let per_server = CLIENTS.div_ceil(SERVERS);
        let apis = servers
            .iter()
            .map(|s| HttpApi::new(s.addr, per_server).map(|h| Arc::new(Api::Http(h))))
            .collect::<Result<_>>()?;
        Ok(Fleet {
            servers,
            apis,
            http,
        })
    }

    /// Whether every server's breaker reads open.
    async fn all_open(&self) -> bool {
        for s in &self.servers {
            let body: serde_json::Value = match self
                .http
                .get(format!("http://{}/api/health/locking", s.addr))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            if body["circuit_breaker"] != "open" {
                return false;
            }
        }
        true
    }
}

/// One call of a client: acquire (or release), when it started and ended, and what
/// it got (`None`: granted or released; else the error). Printed for a slow fault.
#[derive(Debug, Clone)]
struct Attempt {
    call: &'static str,
    start: Instant,
    end: Instant,
    error: Option<String>,
}

/// Grant instants per client, each client's calls, and the load's tasks.
struct Load {
    grants: Arc<Mutex<Vec<Vec<Instant>>>>,
    attempts: Arc<Mutex<Vec<Vec<Attempt>>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(fleet: &Fleet, tag: &str) -> Load {
        let grants = Arc::new(Mutex::new(vec![Vec::new(); CLIENTS]));
        let attempts = Arc::new(Mutex::new(vec![Vec::new(); CLIENTS]));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CLIENTS)
            .map(|c| {
                let api = fleet.apis[c % SERVERS].clone();
                let slot = c / SERVERS;
                let (grants, attempts, stop) = (grants.clone(), attempts.clone(), stop.clone());
                let repo = format!("bench-recovery/{tag}-c{c}");
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let log = |call, start, error: Option<String>| {
                        attempts.lock().unwrap()[c].push(Attempt {
                            call,
                            start,
                            end: Instant::now(),
                            error,
                        })
                    };
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let r = Resource::new(repo.clone(), ".", format!("w{n}"), "")
                            .expect("a valid resource");
                        let start = Instant::now();
                        match api.acquire_now(slot, &r).await {
                            Ok(held) => {
                                grants.lock().unwrap()[c].push(Instant::now());
                                log("acquire", start, None);
                                let start = Instant::now();
                                let released = api.release(slot, &r, held).await;
                                log("release", start, released.err().map(|e| format!("{e:#}")));
                            }
                            Err(e) => {
                                log("acquire", start, Some(format!("{e:#}")));
                                tokio::time::sleep(RETRY).await
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            grants,
            attempts,
            stop,
            tasks,
        }
    }

    /// Client `c`'s calls that ended at or after `from` and started before `until`
    /// (ms after `back`), each as one line.
    fn calls_between(&self, c: usize, back: Instant, from: Instant, until: Instant) -> String {
        let ms = |t: Instant| {
            if t >= back {
                t.duration_since(back).as_secs_f64() * 1e3
            } else {
                -(back.duration_since(t).as_secs_f64() * 1e3)
            }
        };
        self.attempts.lock().unwrap()[c]
            .iter()
            .filter(|a| a.end >= from && a.start <= until)
            .map(|a| {
                format!(
                    "    {} {:+.0} .. {:+.0} ms: {}",
                    a.call,
                    ms(a.start),
                    ms(a.end),
                    a.error.as_deref().unwrap_or("ok")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Each client's first grant at or after `from`.
    fn first_after(&self, from: Instant) -> Vec<Option<Instant>> {
        self.grants
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.iter().rev().take_while(|t| **t >= from).last().copied())
            .collect()
    }

    /// Waits until every client has been granted at or after `from`.
    async fn all_granted_after(&self, from: Instant) -> Result<Vec<Instant>> {
        let started = Instant::now();
        loop {
            let f = self.first_after(from);
            if f.iter().all(Option::is_some) {
                return Ok(f.into_iter().flatten().collect());
            }
            if started.elapsed() > LIMIT {
                let missing = f.iter().filter(|x| x.is_none()).count();
                bail!("{missing} of {CLIENTS} clients not granted within {LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

/// The first `+PONG` from `addr` on a fresh connection (refused, silent or
/// `-LOADING` is not back yet).
async fn first_pong(addr: SocketAddr) -> Instant {
    loop {
        if let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
            && s.write_all(b"PING\r\n").await.is_ok()
        {
            let mut buf = [0u8; 64];
            // A stopped Redis answers once continued: wait on this connection.
            if let Ok(Ok(n)) = tokio::time::timeout(LIMIT, s.read(&mut buf)).await
                && buf[..n].starts_with(b"+PONG")
            {
                return Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The first moment a sentinel names a primary other than `old` that says it is
/// the primary (`ROLE` answers `master`).
async fn failover_seen(sentinels: Vec<SocketAddr>, master: String, old: SocketAddr) -> Instant {
    loop {
        for s in &sentinels {
            if let Some(new) = ask_master(*s, &master).await
                && new != old
                && role_is_master(new).await
            {
                return Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn connection(addr: SocketAddr) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}")).ok()?;
    tokio::time::timeout(
        Duration::from_millis(300),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

async fn ask_master(sentinel: SocketAddr, master: &str) -> Option<SocketAddr> {
    let mut c = connection(sentinel).await?;
    let (host, port): (String, u16) = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut c),
    )
    .await
    .ok()?
    .ok()?;
    format!("{host}:{port}").parse().ok()
}

async fn role_is_master(addr: SocketAddr) -> bool {
    let Some(mut c) = connection(addr).await else {
        return false;
    };
    let role: Option<Vec<redis::Value>> = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("ROLE").query_async(&mut c),
    )
    .await
    .ok()
    .and_then(|r| r.ok());
    matches!(role.as_deref().and_then(|r| r.first()),
        Some(redis::Value::BulkString(b)) if b == b"master")
        || matches!(role.as_deref().and_then(|r| r.first()),
        Some(redis::Value::SimpleString(s)) if s == "master")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("a Redis helper panicked: {e}"))
}

/// Waits until every server's breaker is open (bounded), then [`AFTER_OPEN`].
async fn hold_until_open(fleet: &Fleet) -> Result<()> {
    let started = Instant::now();
    while !fleet.all_open().await {
        if started.elapsed() > LIMIT {
            bail!("the breakers did not all open within {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(AFTER_OPEN).await;
    Ok(())
}

/// Runs one fault with the load on: `down` breaks Redis, `up` returns the instant it
/// is back. Returns the fault's figures.
async fn one_fault<D, U, UF>(
    fleet: &Fleet,
    tag: &str,
    redis: Option<&Arc<RedisServer>>,
    down: D,
    up: U,
) -> Result<FaultResult>
where
    D: AsyncFnOnce() -> Result<()>,
    U: FnOnce() -> UF,
    UF: Future<Output = Result<Instant>>,
{
    let load = Load::start(fleet, tag);
    let before = Instant::now();
    let result = async {
        load.all_granted_after(before)
            .await
            .context("before the fault")?;
        let fault_at = Instant::now();
        down().await?;
        let back = up().await?;
        let grants = load
            .all_granted_after(back)
            .await
            .context("after Redis was back")?;
        let since = |t: &Instant| t.duration_since(back).as_secs_f64() * 1e3;
        let all = grants.iter().map(since).fold(0.0, f64::max);
        if all > SLOW_MS {
            // Which server lagged, and what its log says: a slow recovery is worth a
            // look, not only a figure.
            for (i, server) in fleet.servers.iter().enumerate() {
                let last = grants
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| c % SERVERS == i)
                    .map(|(_, t)| since(t))
                    .fold(0.0, f64::max);
                let wall = |t: Instant| {
                    let now = (Instant::now(), std::time::SystemTime::now());
                    now.1 - now.0.duration_since(t)
                };
                let to = grants.iter().max().copied().unwrap_or(back);
                eprintln!(
                    "tflock-bench: recovery: slow fault {tag}: server {i}'s clients all granted after {last:.0} ms; Redis back at {}; its log from 4 s before (served requests left out):\n{}",
                    humantime::format_rfc3339_micros(wall(back)),
                    server.log_between(wall(back) - Duration::from_secs(4), wall(to))
                );
            }
            // What each late client was doing: its calls from shortly before Redis was
            // back until its first grant after (times in ms after back).
            for (c, t) in grants.iter().enumerate() {
                if since(t) > SLOW_MS / 2.0 {
                    eprintln!(
                        "tflock-bench: recovery: slow fault {tag}: client {c} (server {}) granted at {:.0} ms; its calls:\n{}",
                        c % SERVERS,
                        since(t),
                        load.calls_between(c, back, back - Duration::from_millis(500), *t)
                    );
                }
            }
            // Redis's own stalls (an `appendfsync always` fsync on a busy disk, the
            // AOF rewrite) show in its latency monitor.
            if let Some(r) = redis {
                let r = r.clone();
                if let Ok((latest, log)) =
                    blocking(move || (r.redis_cli(["LATENCY", "LATEST"]), r.log_tail(30))).await
                {
                    eprintln!(
                        "tflock-bench: recovery: slow fault {tag}: Redis LATENCY LATEST:\n{latest}\nRedis's log:\n{log}"
                    );
                }
            }
        }
        Ok(FaultResult {
            down_ms: back.duration_since(fault_at).as_secs_f64() * 1e3,
            first_ms: grants.iter().map(since).fold(f64::INFINITY, f64::min),
            all_ms: all,
        })
    }
    .await;
    load.stop().await;
    result
}

/// The standalone faults of `kinds` (kill + restart, stop + continue), `n` of each.
pub async fn standalone(
    bin: &ServerBinary,
    dir: &Path,
    n: usize,
    kinds: &[FaultKind],
) -> Result<Vec<RecoveryRow>> {
    // The latency monitor records Redis's own stalls of 100 ms or more, printed for a
    // slow fault.
    let redis = blocking(|| {
        Arc::new(RedisServer::start(
            RedisOptions::default()
                .appendonly()
                .config("latency-monitor-threshold 100"),
        ))
    })
    .await?;
    let yaml = format!("    addresses: [\"{}\"]\n", redis.addr());
    let fleet = Fleet::start(bin, dir, &yaml).await?;
    let addr = redis.addr();
    let mut rows = Vec::new();
    for kind in [FaultKind::KillRestart, FaultKind::StopCont] {
        if !kinds.contains(&kind) {
            continue;
        }
        let (mut faults, mut errors) = (Vec::new(), Vec::new());
        for i in 0..n {
            let tag = format!("{kind:?}-{i}");
            let r = redis.clone();
            let down = async || {
                let r2 = r.clone();
                match kind {
                    FaultKind::KillRestart => blocking(move || r2.kill()).await?,
                    _ => blocking(move || r2.pause()).await?,
                }
                hold_until_open(&fleet).await
            };
            let r = redis.clone();
            let up = || async move {
                let pong = tokio::spawn(first_pong(addr));
                match kind {
                    FaultKind::KillRestart => blocking(move || r.restart()).await?,
                    _ => blocking(move || r.resume()).await?,
                }
                Ok(pong.await?)
            };
            match one_fault(&fleet, &tag, Some(&redis), down, up).await {
                Ok(f) => {
                    eprintln!(
                        "tflock-bench: recovery: {} #{}: first grant {:.0} ms, all {CLIENTS} {:.0} ms after Redis was back",
                        kind.label(),
                        i + 1,
                        f.first_ms,
                        f.all_ms
                    );
                    faults.push(f);
                }
                Err(e) => {
                    errors.push(format!("fault {}: {e:#}", i + 1));
                    // Whatever state the fault left, Redis runs again for the next one.
                    let r = redis.clone();
                    let _ = blocking(move || {
                        if r.is_paused() {
                            r.resume();
                        } else if !r.is_running() {
                            r.restart();
                        }
                    })
                    .await;
                }
            }
        }
        rows.push(RecoveryRow::of(kind, faults, errors));
    }
    drop(fleet);
    Ok(rows)
}

/// Sentinel failovers, `n` of them: the primary is killed, the sentinels promote the
/// replica; then the old primary is restarted (the sentinels make it a replica of the
/// new one) and has synced before the next fault.
pub async fn sentinel(bin: &ServerBinary, dir: &Path, n: usize) -> Result<RecoveryRow> {
    let s = blocking(|| Arc::new(RedisSentinel::start_with(SentinelOptions::default()))).await?;
    let addrs: Vec<String> = s
        .sentinel_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let yaml = format!(
        "    sentinel:\n      master_name: {}\n      addresses: [{}]\n",
        s.master_name(),
        addrs.join(", ")
    );
    let fleet = Fleet::start(bin, dir, &yaml).await?;
    let (mut faults, mut errors) = (Vec::new(), Vec::new());
    let mut last_failover: Option<Instant> = None;
    for i in 0..n {
        // Sentinels refuse a new failover of the same master within twice the
        // failover timeout (3 s) of the last one.
        if let Some(t) = last_failover {
            let gap = Duration::from_secs(7).saturating_sub(t.elapsed());
            tokio::time::sleep(gap).await;
        }
        let tag = format!("failover-{i}");
        // The watcher starts with the kill: a failover may complete before every
        // breaker is open.
        let watcher = Arc::new(Mutex::new(None));
        let (s1, w1) = (s.clone(), watcher.clone());
        let down = async || {
            let killed = blocking(move || s1.kill_primary()).await?;
            let seen = failover_seen(s.sentinel_addrs(), s.master_name().to_string(), killed);
            *w1.lock().unwrap() = Some(tokio::spawn(tokio::time::timeout(LIMIT, seen)));
            hold_until_open(&fleet).await
        };
        let w2 = watcher.clone();
        let up = || async move {
            let seen = w2.lock().unwrap().take().expect("the failover watcher");
            seen.await?
                .map_err(|_| anyhow!("no failover seen within {LIMIT:?}"))
        };
        match one_fault(&fleet, &tag, None, down, up).await {
            Ok(f) => {
                eprintln!(
                    "tflock-bench: recovery: {} #{}: first grant {:.0} ms, all {CLIENTS} {:.0} ms after the failover",
                    FaultKind::SentinelFailover.label(),
                    i + 1,
                    f.first_ms,
                    f.all_ms
                );
                faults.push(f);
            }
            Err(e) => errors.push(format!("fault {}: {e:#}", i + 1)),
        }
        last_failover = Some(Instant::now());
        // The old primary comes back as the new primary's replica, in sync, before
        // the next fault (a failover needs a replica to promote).
        let s3 = s.clone();
        let rejoined = blocking(move || -> Result<()> {
            for node in s3.data_nodes() {
                if !node.is_running() {
                    node.restart();
                }
            }
            let started = Instant::now();
            loop {
                let replica = s3.replica();
                let link = replica.info_field("replication", "master_link_status");
                if link.as_deref() == Some("up") {
                    return Ok(());
                }
                if started.elapsed() > LIMIT {
                    bail!("the old primary did not resync as a replica: {link:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .and_then(|r| r);
        if let Err(e) = rejoined {
            errors.push(format!("after fault {}: {e:#}", i + 1));
            break;
        }
    }
    drop(fleet);
    Ok(RecoveryRow::of(FaultKind::SentinelFailover, faults, errors))
}
