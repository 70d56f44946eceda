//! The cluster under test: real `tflock server` processes on a real Redis topology (or
//! the embedded store), on loopback, in one temporary directory.
//!
//! It owns starting, signalling and restarting those processes, and nothing about
//! operations or checking. Every process it starts dies with it: Redis through the
//! testkit's own guards, servers through [`Server`]'s drop (and the parent-death signal
//! the testkit's spawner sets, should the run itself be killed).

use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tflock_testkit::{
    ClusterOptions, FaultProxy, PortLease, RedisCluster, RedisOptions, RedisSentinel, RedisServer,
    SentinelOptions,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One Redis with AOF (`appendfsync always`); server 0 reaches it through a
    /// fault proxy.
    Standalone,
    /// One primary, two replicas, three sentinels; `min_replicas_ack: 1`.
    Sentinel,
    /// Three primaries with one replica each, AOF; `min_replicas_ack: 1`.
    Cluster,
    /// One server on the embedded store.
    Embedded,
}

impl FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standalone" => Ok(Self::Standalone),
            "sentinel" => Ok(Self::Sentinel),
            "cluster" => Ok(Self::Cluster),
            "embedded" => Ok(Self::Embedded),
            _ => Err(format!(
                "unknown topology {s:?}: standalone, sentinel, cluster or embedded"
            )),
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Standalone => "standalone",
            Self::Sentinel => "sentinel",
            Self::Cluster => "cluster",
            Self::Embedded => "embedded",
        })
    }
}

/// Which binary runs `tflock server`.
#[derive(Clone, Debug)]
pub struct ServerBinary {
    pub path: PathBuf,
    /// `Some("tflock")`: a multi-call binary run under that name (this crate's own
    /// binary, whose `main` then is `tflock`'s).
    pub arg0: Option<String>,
}

impl ServerBinary {
    /// `$TFLOCK_BIN` if set; else the `tflock` cargo built next to `chaos_exe` if it is
    /// at least as new as it (so a stale one never runs); else `chaos_exe` run as
    /// `tflock`, which is the same `tflock_cli::main` the `tflock` binary calls.
    pub fn find(chaos_exe: &Path) -> Self {
        if let Some(p) = std::env::var_os("TFLOCK_BIN") {
            return Self {
                path: p.into(),
                arg0: None,
            };
        }
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut dir = chaos_exe.parent();
        while let Some(d) = dir {
            let candidate = d.join("tflock");
            if candidate.is_file() {
                if let (Some(a), Some(b)) = (mtime(&candidate), mtime(chaos_exe))
                    && a >= b
                {
                    return Self {
                        path: candidate,
                        arg0: None,
                    };
                }
                break;
            }
            // target/debug/deps/x -> target/debug
            if d.file_name().is_some_and(|n| n == "deps") {
                dir = d.parent();
            } else {
                break;
            }
        }
        Self {
            path: chaos_exe.to_owned(),
            arg0: Some("tflock".into()),
        }
    }
}

/// One `tflock server` process, restartable on its port and config.
pub struct Server {
    pub index: usize,
    port: PortLease,
    config: PathBuf,
    log: PathBuf,
    binary: ServerBinary,
    child: Mutex<Option<(Child, bool)>>,
}

impl Server {
    fn new(index: usize, dir: &Path, yaml: String, port: PortLease, binary: &ServerBinary) -> Self {
        let config = dir.join(format!("server{index}.yaml"));
        std::fs::write(&config, yaml).expect("write server config");
        let s = Self {
            index,
            port,
            config,
            log: dir.join(format!("server{index}.log")),
            binary: binary.clone(),
            child: Mutex::new(None),
        };
        s.start();
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.port())
    }

    /// Starts the process and waits until it serves HTTP (`/healthz`), not until its
    /// backend answers: Redis may be down on purpose.
    pub fn start(&self) {
        let mut cmd = Command::new(&self.binary.path);
        #[cfg(unix)]
        if let Some(a) = &self.binary.arg0 {
            use std::os::unix::process::CommandExt;
            cmd.arg0(a);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        cmd.args(["server", "--config"])
            .arg(&self.config)
            .env_remove("TFLOCK_CONFIG")
            .env("ATLANTIS_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = tflock_testkit::spawn_child(cmd).expect("spawn tflock server");
        *self.child.lock().unwrap() = Some((child, false));
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port.port()).into();
        loop {
            if healthz(addr) {
                return;
            }
            if let Some((c, _)) = self.child.lock().unwrap().as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "server {} exited at start ({status}):\n{}",
                    self.index,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server {} did not serve /healthz within 60 s:\n{}",
                self.index,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&self) {
        if let Some((mut c, _)) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pause(&self) {
        if let Some((c, paused)) = self.child.lock().unwrap().as_mut() {
            signal(c.id(), libc::SIGSTOP);
            *paused = true;
        }
    }

    pub fn resume(&self) {
        if let Some((c, paused)) = self.child.lock().unwrap().as_mut() {
            signal(c.id(), libc::SIGCONT);
            *paused = false;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `GET /healthz` answered 200, over a raw socket (this runs on plain threads).
fn healthz(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200")
}

/// The Redis side of a run.
pub enum Store {
    Standalone {
        redis: RedisServer,
        proxy: FaultProxy,
    },
    Sentinel(RedisSentinel),
    Cluster(RedisCluster),
    Embedded,
}

pub struct Deployment {
    pub topology: Topology,
    pub store: Store,
    pub servers: Vec<Server>,
    pub dir: PathBuf,
    /// The lease TTL clients ask for; the nemesis pauses servers past it.
    pub ttl_ms: u64,
}

impl Deployment {
    pub fn start(
        topology: Topology,
        servers: usize,
        dir: &Path,
        binary: &ServerBinary,
        ttl_ms: u64,
    ) -> Self {
        let store = match topology {
            Topology::Standalone => {
                let redis = RedisServer::start(RedisOptions::default().appendonly());
                let proxy = FaultProxy::start(redis.addr());
                Store::Standalone { redis, proxy }
            }
            Topology::Sentinel => Store::Sentinel(RedisSentinel::start_with(
                SentinelOptions::default().replicas(2).appendonly(),
            )),
            Topology::Cluster => Store::Cluster(RedisCluster::start_with(
                ClusterOptions::default()
                    .primaries(3)
                    .replicas_per_primary(1)
                    .appendonly(),
            )),
            Topology::Embedded => Store::Embedded,
        };
        let count = if topology == Topology::Embedded {
            1
        } else {
            servers
        };
        let servers = (0..count)
            .map(|i| {
                let port = tflock_testkit::lease_port();
                let yaml = server_yaml(&store, i, port.port(), dir);
                Server::new(i, dir, yaml, port, binary)
            })
            .collect();
        Self {
            topology,
            store,
            servers,
            dir: dir.to_owned(),
            ttl_ms,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }
}

/// The configuration each server runs with. Redis deployments with replicas get
/// `min_replicas_ack: 1`: the contract's promise that an acknowledged grant survives a
/// failover holds only with it. Breaker, health check and cluster timings are short so
/// a run of minutes sees many faults and recoveries.
fn server_yaml(store: &Store, index: usize, port: u16, dir: &Path) -> String {
    let common = format!(
        "enhanced_locking:\n  server:\n    listen: 127.0.0.1:{port}\n  claim_timeout: 2s\n  default_timeout: 5s\n  max_timeout: 30s\n"
    );
    let redis_common = "    health_check_interval: 1s\n    read_timeout: 2s\n    write_timeout: 2s\n    connection_timeout: 2s\n    circuit_breaker:\n      failure_threshold: 5\n      reset_timeout: 2s\n";
    let cluster =
        "  cluster:\n    heartbeat_interval: 500ms\n    leader_lease: 2s\n    node_ttl: 4s\n";
    match store {
        Store::Embedded => format!(
            "{common}  backend: embedded\n  embedded:\n    path: {}\n",
            dir.join("embedded/locks.redb").display()
        ),
        Store::Standalone { redis, proxy } => {
            // Server 0 goes through the proxy: the nemesis delays or cuts its link.
            let addr = if index == 0 {
                proxy.addr()
            } else {
                redis.addr()
            };
            format!(
                "{common}{cluster}  backend: redis\n  redis:\n    addresses: [\"{addr}\"]\n{redis_common}"
            )
        }
        Store::Sentinel(s) => {
            let addrs: Vec<String> = s
                .sentinel_addrs()
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect();
            format!(
                "{common}{cluster}  backend: redis\n  redis:\n    min_replicas_ack: 1\n    sentinel:\n      master_name: {}\n      addresses: [{}]\n{redis_common}",
                s.master_name(),
                addrs.join(", ")
            )
        }
        Store::Cluster(c) => {
            let addrs: Vec<String> = c.addrs().iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "{common}{cluster}  backend: redis\n  redis:\n    cluster_mode: true\n    min_replicas_ack: 1\n    addresses: [{}]\n{redis_common}",
                addrs.join(", ")
            )
        }
    }
}
