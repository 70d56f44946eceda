//! Three real tflock server processes on loopback sharing one Redis (standalone, and
//! a Redis Cluster): the leader SIGKILLed and SIGSTOPped, a waiter on one server
//! woken by a release on another, every server's event stream carrying every
//! server's events, and 200 HTTP clients contending for 5 resources.
//!
//! Each server is this test binary run again as a child (`node_process` with the
//! `TFLOCK_CLUSTER_TEST_NODE` environment variable): a `RedisBackend`, the cluster
//! manager and `tflock_server::serve` on `127.0.0.1:0`, as `tflock server` with
//! `backend: redis` runs them. Children get SIGKILL when the test thread that
//! spawned them ends (parent-death signal) and are killed on drop. The scenarios run
//! one at a time (a two-core machine: their timings must not fight each other).
//!
//! `TFLOCK_CLUSTER_SOAK_SECS` sets how long the 200 clients contend (default 15;
//! the acceptance run uses 60). Measured figures are printed (`--nocapture`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::{Rng, SeedableRng};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tflock_cluster::{Cluster, ClusterConfig, LocalView, Role};
use tflock_core::{LockSettings, SharedBackend, SystemClock, Timestamp};
use tflock_redis::keys::{bucket_of, bucket_prefixes, resource_of_key};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_server::{AppState, Tokens};
use tflock_testkit::{RedisCluster, RedisOptions, RedisServer};

const NODE_ENV: &str = "TFLOCK_CLUSTER_TEST_NODE";
const LISTEN: &str = "TFLOCK_NODE_LISTEN ";
/// The leader lease the scenarios run with; the heartbeat is a quarter of it.
const LEASE: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(500);
const NODE_TTL: Duration = Duration::from_secs(3);
/// Slack on time bounds for a loaded two-core machine; the measured figures are
/// printed.
const SLACK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------
// The server process.

#[derive(Serialize, Deserialize)]
struct NodeSpec {
    redis: RedisConfig,
    cluster: ClusterConfig,
    stats: PathBuf,
}

/// The entry point of a server process; does nothing when run as a normal test.
#[test]
fn node_process() {
    let Ok(spec) = std::env::var(NODE_ENV) else {
        return;
    };
    let spec: NodeSpec = serde_json::from_str(&spec).expect("node spec");
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_node(spec));
}

async fn run_node(spec: NodeSpec) {
    let backend = RedisBackend::connect(spec.redis, LockSettings::default(), Arc::new(SystemClock))
        .await
        .expect("connect to Redis");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cluster = Arc::new(
        Cluster::start(
            backend.clone(),
            ClusterConfig {
                advertise_address: Some(addr.to_string()),
                ..spec.cluster
            },
        )
        .await
        .expect("join the cluster"),
    );
    let shared: SharedBackend = backend.clone();
    let state = AppState::new(shared, Tokens::none()).with_cluster(cluster.clone());
    // This node's own view (role, epoch, stale refusals) for the test to read.
    tokio::spawn({
        let cluster = cluster.clone();
        let path = spec.stats.clone();
        async move {
            let tmp = path.with_extension("tmp");
            loop {
                let body = serde_json::to_vec(&cluster.local()).unwrap();
                if std::fs::write(&tmp, body).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    println!("{LISTEN}{addr} {}", cluster.node_id());
    std::io::stdout().flush().unwrap();
    // The parent closes (or writes to) stdin to stop this server cleanly.
    let stdin = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
    tflock_server::serve(listener, state, async move {
        let _ = stdin.await;
    })
    .await
    .unwrap();
    cluster.shutdown().await;
    tflock_core::Backend::close(&*backend).await;
}

// ---------------------------------------------------------------------------------
// Driving server processes from the test.

/// One server process.
struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    id: String,
    stats: PathBuf,
    log: PathBuf,
}

impl Node {
    fn spawn(dir: &Path, n: usize, redis: &RedisConfig, cluster: &ClusterConfig) -> Node {
        let stats = dir.join(format!("node{n}.json"));
        let log = dir.join(format!("node{n}.log"));
        let spec = serde_json::to_string(&NodeSpec {
            redis: redis.clone(),
            cluster: cluster.clone(),
            stats: stats.clone(),
        })
        .unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "node_process",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(NODE_ENV, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: only prctl between fork and exec; it allocates nothing.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn a server process");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the listen line, then keeps draining so the child never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may have printed `test node_process ... ` on the same line.
                if let Some(at) = line.find(LISTEN) {
                    let _ = tx.send(line[at + LISTEN.len()..].to_string());
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("server {n} did not start:\n{}", tail(&log));
            }
        };
        let (addr, id) = line.split_once(' ').unwrap();
        Node {
            stdin: child.stdin.take(),
            child,
            addr: addr.parse().unwrap(),
            id: id.to_string(),
            stats,
            log,
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// What the process last wrote about itself.
    fn local(&self) -> Option<LocalView> {
        serde_json::from_slice(&std::fs::read(&self.stats).ok()?).ok()
    }

    /// Stops the server cleanly (it leaves the cluster) and waits for it.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Redis, three servers on it, and where their files are.
struct Deployment {
    // Dropped in this order: the servers, then Redis, then their files.
    nodes: Vec<Node>,
    config: RedisConfig,
    _redis: Topology,
    _dir: tempfile::TempDir,
}

enum Topology {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    fn start(cluster_redis: bool, cluster: ClusterConfig) -> Deployment {
        let redis = if cluster_redis {
            Topology::Cluster(RedisCluster::start(3, 0))
        } else {
            Topology::Standalone(RedisServer::start(RedisOptions::default()))
        };
        let base = match &redis {
            Topology::Standalone(s) => RedisConfig::standalone(s.addr().to_string()),
            Topology::Cluster(c) => RedisConfig {
                addresses: c.addrs().iter().map(|a| a.to_string()).collect(),
                cluster_mode: true,
                ..RedisConfig::default()
            },
        };
        let config = RedisConfig {
            key_prefix: format!("tflock:p{}:", tflock_core::random_hex(4)),
            connection_timeout: Duration::from_secs(2),
            dial_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            pool_size: 200,
            ..base
        };
        let dir = tempfile::tempdir().unwrap();
        let nodes = (0..3)
            .map(|n| Node::spawn(dir.path(), n, &config, &cluster))
            .collect();
        Deployment {
            nodes,
            config,
            _redis: redis,
            _dir: dir,
        }
    }

    fn node(&self, id: &str) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ({})\n{}", n.id, n.log.display(), tail(&n.log)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn cluster_config(trust_local_lease: bool) -> ClusterConfig {
    ClusterConfig {
        heartbeat_interval: HEARTBEAT,
        node_ttl: NODE_TTL,
        leader_lease: LEASE,
        rollup_interval: Duration::from_secs(2),
        trust_local_lease,
        ..ClusterConfig::default()
    }
}

/// The scenarios run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// HTTP.

fn resource(name: &str) -> Value {
    json!({"repo": format!("o/{name}"), "path": ".", "workspace": "default", "project_name": ""})
}

fn query(name: &str) -> String {
    format!("repo=o/{name}&path=.&workspace=default&project_name=")
}

async fn post(
    http: &reqwest::Client,
    node: SocketAddr,
    path: &str,
    body: Value,
    limit: Duration,
) -> Result<(u16, Value), String> {
    let req = http.post(format!("http://{node}{path}")).json(&body).send();
    let resp = tokio::time::timeout(limit, req)
        .await
        .map_err(|_| format!("POST {path}: no answer within {limit:?}"))?
        .map_err(|e| format!("POST {path}: {e}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(limit, resp.json::<Value>())
        .await
        .map_err(|_| format!("POST {path}: no body within {limit:?}"))?
        .map_err(|e| format!("POST {path}: body: {e}"))?;
    Ok((status, body))
}

async fn get(http: &reqwest::Client, node: SocketAddr, path: &str) -> Result<(u16, Value), String> {
    let limit = Duration::from_secs(5);
    let resp = tokio::time::timeout(limit, http.get(format!("http://{node}{path}")).send())
        .await
        .map_err(|_| format!("GET {path}: no answer"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .json::<Value>()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok((status, body))
}

async fn acquire(
    http: &reqwest::Client,
    node: SocketAddr,
    name: &str,
    owner: &str,
    extra: Value,
) -> Value {
    let mut body = json!({"resource": resource(name), "owner": owner});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, body) = post(
        http,
        node,
        "/api/v1/locks/acquire",
        body,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn release(
    http: &reqwest::Client,
    node: SocketAddr,
    name: &str,
    lease: &str,
) -> (u16, Value) {
    post(
        http,
        node,
        "/api/v1/locks/release",
        json!({"resource": resource(name), "lease_id": lease}),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// `GET /api/cluster` of one server: (leader, epoch, node ids).
async fn cluster_view(
    http: &reqwest::Client,
    node: SocketAddr,
) -> Option<(Option<String>, u64, Vec<String>)> {
    let (status, body) = get(http, node, "/api/cluster").await.ok()?;
    if status != 200 {
        return None;
    }
    let nodes = body["nodes"]
        .as_array()?
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    Some((
        body["leader"].as_str().map(str::to_string),
        body["epoch"].as_u64()?,
        nodes,
    ))
}

/// Waits until every server in `nodes` names the same leader, not `not`, with a
/// live node count in `counts`; returns (leader, epoch).
async fn agreed_leader(
    http: &reqwest::Client,
    nodes: &[SocketAddr],
    counts: &[usize],
    not: Option<&str>,
    limit: Duration,
) -> Result<(String, u64), String> {
    let started = Instant::now();
    loop {
        let mut views = Vec::new();
        for n in nodes {
            views.push(cluster_view(http, *n).await);
        }
        let first = views[0].clone();
        if let Some((Some(leader), epoch, ids)) = &first
            && views.iter().all(|v| v.as_ref() == first.as_ref())
            && counts.contains(&ids.len())
            && not != Some(leader.as_str())
        {
            return Ok((leader.clone(), *epoch));
        }
        if started.elapsed() > limit {
            return Err(format!("no agreed leader within {limit:?}: {views:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rfc3339(v: &Value) -> SystemTime {
    Timestamp::parse_rfc3339(v.as_str().expect("an instant"))
        .expect("RFC 3339")
        .to_system_time()
}

fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// Scenario: SIGKILL the leader.

fn leader_killed(cluster_redis: bool) {
    let _one = serial();
    let mut d = Deployment::start(cluster_redis, cluster_config(true));
    let rt = runtime();
    let http = reqwest::Client::new();
    let addrs: Vec<SocketAddr> = d.nodes.iter().map(|n| n.addr).collect();
    let (leader, epoch) = rt
        .block_on(agreed_leader(
            &http,
            &addrs,
            &[3],
            None,
            Duration::from_secs(20),
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let l = d.node(&leader);
    let (f1, f2) = match l {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let (a1, a2, al) = (d.nodes[f1].addr, d.nodes[f2].addr, d.nodes[l].addr);

    let outcome = rt.block_on(async {
        // A waiter served by the leader: once the leader is dead its entry must go.
        acquire(&http, a1, "orphaned", "holder", json!({"ttl": "5m"})).await;
        let orphan = tokio::spawn({
            let http = http.clone();
            async move {
                let body = json!({"resource": resource("orphaned"), "owner": "orphan", "wait": "5m"});
                post(&http, al, "/api/v1/locks/acquire", body, Duration::from_secs(400)).await
            }
        });
        // A lease that expires while the leader is dead, with a waiter (on another
        // server) and one with a reservation.
        let held = acquire(&http, a1, "expiring", "holder", json!({"ttl": "1500ms"})).await;
        let expires = rfc3339(&held["lock"]["expires_at"]);
        acquire(&http, a1, "reserved", "holder", json!({"ttl": "1500ms"})).await;
        let r = acquire(&http, a2, "reserved", "reserver", json!({"reserve": true, "ttl": "1m"})).await;
        assert!(r["queue"]["entry_id"].is_string(), "{r}");
        let waiter = tokio::spawn({
            let http = http.clone();
            async move {
                let body = json!({"resource": resource("expiring"), "owner": "waiter", "wait": "30s", "ttl": "1m"});
                let answer = post(&http, a2, "/api/v1/locks/acquire", body, Duration::from_secs(40)).await;
                (answer, SystemTime::now())
            }
        });
        // Both queued before the kill.
        for name in ["expiring", "orphaned"] {
            let started = Instant::now();
            loop {
                let (_, q) = get(&http, a1, &format!("/api/v1/queue?{}", query(name))).await.unwrap();
                if q["entries"].as_array().is_some_and(|e| !e.is_empty()) {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "{name} never queued");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        (orphan, waiter, expires)
    });
    let (orphan, waiter, expires) = outcome;

    let killed_at = Instant::now();
    let killed_sys = SystemTime::now();
    d.nodes[l].kill();
    let survivors = [a1, a2];
    rt.block_on(async {
        // A new leader.
        let (new_leader, new_epoch) = agreed_leader(&http, &survivors, &[2, 3], Some(&leader), LEASE + Duration::from_secs(1) + SLACK * 2)
            .await
            .unwrap_or_else(|e| panic!("no new leader: {e}\n{}", d.logs()));
        let failover = killed_at.elapsed();
        println!("[{}] leader {leader} (epoch {epoch}) SIGKILLed; {new_leader} leads (epoch {new_epoch}) after {failover:?}", topo(cluster_redis));
        assert!(new_epoch > epoch);
        assert!(
            failover <= LEASE + Duration::from_secs(1) + SLACK,
            "failover took {failover:?} (lease {LEASE:?} + 1 s + {SLACK:?} slack)"
        );

        // The waiter got the expired lease within two seconds of its expiry.
        let (answer, granted_at) = tokio::time::timeout(Duration::from_secs(30), waiter).await.unwrap().unwrap();
        let (status, body) = answer.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["acquired"], true, "{body}");
        let late = granted_at.duration_since(expires).unwrap_or_default();
        let dead_for = granted_at.duration_since(killed_sys).unwrap_or_default();
        println!("[{}] expired lease handed to its waiter {late:?} after the expiry ({dead_for:?} after the kill)", topo(cluster_redis));
        assert!(late <= Duration::from_secs(2), "handed on {late:?} after the expiry");

        // The reservation is granted by the new leader's sweep.
        let started = Instant::now();
        loop {
            let (status, l) = get(&http, a1, &format!("/api/v1/lock?{}", query("reserved"))).await.unwrap();
            if status == 200 && l["lock"]["owner"] == "reserver" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "reservation never granted: {l}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("[{}] reservation granted {:?} after the kill", topo(cluster_redis), since(killed_sys));

        // The dead leader's waiter entry is removed once it is declared dead.
        let started = Instant::now();
        loop {
            let (_, q) = get(&http, a1, &format!("/api/v1/queue?{}", query("orphaned"))).await.unwrap();
            if q["entries"].as_array().is_some_and(|e| e.is_empty()) {
                break;
            }
            assert!(started.elapsed() < NODE_TTL + Duration::from_secs(5) + SLACK, "the dead server's waiter stayed: {q}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("[{}] dead server's waiter entry removed {:?} after the kill (node TTL {NODE_TTL:?})", topo(cluster_redis), since(killed_sys));
        orphan.abort();

        // The dead node leaves the list.
        agreed_leader(&http, &survivors, &[2], None, NODE_TTL + SLACK * 2).await.unwrap();
    });
    for n in &mut d.nodes {
        n.stop();
    }
}

fn topo(cluster_redis: bool) -> &'static str {
    if cluster_redis {
        "redis cluster"
    } else {
        "redis"
    }
}

#[test]
fn leader_sigkill_new_leader_and_hand_offs() {
    leader_killed(false);
}

#[test]
fn leader_sigkill_new_leader_and_hand_offs_on_redis_cluster() {
    leader_killed(true);
}

// ---------------------------------------------------------------------------------
// Scenario: SIGSTOP the leader past its lease, then SIGCONT.

/// Every message the scripts publish, in arrival order, with its channel.
async fn record_published(
    config: &RedisConfig,
    seen: Arc<Mutex<Vec<Value>>>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
    if config.cluster_mode {
        let nodes: Vec<String> = config
            .addresses
            .iter()
            .map(|a| format!("redis://{a}"))
            .collect();
        let client = redis::cluster::ClusterClientBuilder::new(nodes)
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(tx)
            .build()
            .unwrap();
        let mut conn = client.get_async_connection().await.unwrap();
        for b in bucket_prefixes(&config.key_prefix) {
            conn.ssubscribe(format!("{b}events")).await.unwrap();
        }
        tokio::spawn(async move {
            let _keep = conn;
            while let Some(p) = rx.recv().await {
                push(&seen, p);
            }
        })
    } else {
        let client =
            redis::Client::open(format!("redis://{}/?protocol=3", config.addresses[0])).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new().set_push_sender(tx),
            )
            .await
            .unwrap();
        conn.subscribe(format!("{}events", config.key_prefix))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _keep = conn;
            while let Some(p) = rx.recv().await {
                push(&seen, p);
            }
        })
    }
}

fn push(seen: &Mutex<Vec<Value>>, p: PushInfo) {
    if !matches!(p.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    if let Some(redis::Value::BulkString(b)) = p.data.get(1)
        && let Ok(v) = serde_json::from_slice::<Value>(b)
    {
        seen.lock().unwrap().push(v);
    }
}

fn num(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
}

/// The audit: per bucket, every duty (events published with a leader's epoch) must
/// carry an epoch at least the bucket's fence at that point. Returns the duties per
/// epoch, the fences per epoch and the violations.
fn audit(
    prefix: &str,
    messages: &[Value],
) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>, Vec<String>) {
    let prefixes = bucket_prefixes(prefix);
    let mut fence = [0u64; 64];
    let mut duties = BTreeMap::new();
    let mut fences = BTreeMap::new();
    let mut violations = Vec::new();
    for m in messages {
        if let Some(f) = m.get("fence").and_then(num) {
            let b = prefixes
                .iter()
                .position(|p| Some(p.as_str()) == m["b"].as_str())
                .unwrap();
            fence[b] = fence[b].max(f);
            *fences.entry(f).or_insert(0) += 1;
        }
        if let Some(ep) = m.get("ep").and_then(num) {
            for ev in m["ev"].as_array().into_iter().flatten() {
                let b = bucket_of(&resource_of_key(ev["sk"].as_str().unwrap()).unwrap());
                *duties.entry(ep).or_insert(0) += 1;
                if ep < fence[b] {
                    violations.push(format!(
                        "{} on bucket {b} under epoch {ep} after fence {}",
                        ev["k"], fence[b]
                    ));
                }
            }
        }
    }
    (duties, fences, violations)
}

fn leader_paused(cluster_redis: bool) {
    let _one = serial();
    // Without the local lease check, only the fences stop the woken leader.
    let mut d = Deployment::start(cluster_redis, cluster_config(false));
    let rt = runtime();
    let http = reqwest::Client::new();
    let addrs: Vec<SocketAddr> = d.nodes.iter().map(|n| n.addr).collect();
    let prefix = d.config.key_prefix.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = rt.block_on(record_published(&d.config, seen.clone()));
    let (leader, epoch) = rt
        .block_on(agreed_leader(
            &http,
            &addrs,
            &[3],
            None,
            Duration::from_secs(20),
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let l = d.node(&leader);
    let followers: Vec<SocketAddr> = (0..3)
        .filter(|i| *i != l)
        .map(|i| d.nodes[i].addr)
        .collect();

    // Work for the leader: short leases that expire all the time, taken through the
    // followers, so sweeps keep handing on and expiring.
    let stop_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = rt.spawn({
        let (http, followers, stop) = (http.clone(), followers.clone(), stop_load.clone());
        async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("load{}", i % 16);
                let node = followers[i % 2];
                let body = json!({"resource": resource(&name), "owner": format!("o{i}"), "ttl": "300ms"});
                let _ = post(&http, node, "/api/v1/locks/acquire", body, Duration::from_secs(5)).await;
                let body = json!({"resource": resource(&name), "owner": format!("r{i}"), "reserve": true, "ttl": "200ms", "wait": "2s"});
                let _ = post(&http, node, "/api/v1/locks/acquire", body, Duration::from_secs(5)).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    d.nodes[l].signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let survivors: Vec<SocketAddr> = followers.clone();
    let (new_leader, new_epoch) = rt
        .block_on(agreed_leader(
            &http,
            &survivors,
            &[2, 3],
            Some(&leader),
            LEASE + Duration::from_secs(1) + SLACK * 2,
        ))
        .unwrap_or_else(|e| {
            d.nodes[l].signal(libc::SIGCONT);
            panic!("{e}\n{}", d.logs())
        });
    println!(
        "[{}] leader {leader} (epoch {epoch}) SIGSTOPped; {new_leader} leads (epoch {new_epoch}) after {:?}",
        topo(cluster_redis),
        stopped.elapsed()
    );
    // Paused well past its lease, while the new leader works.
    let pause = LEASE + Duration::from_secs(2);
    std::thread::sleep(pause.saturating_sub(stopped.elapsed()));
    d.nodes[l].signal(libc::SIGCONT);
    let resumed = Instant::now();
    // It steps down: its own view says follower.
    let mut stepped_down = None;
    while resumed.elapsed() < Duration::from_secs(5) + SLACK {
        if let Some(v) = d.nodes[l].local()
            && v.role == Role::Follower
            && v.step_downs >= 1
            && v.leader_epoch == Some(new_epoch)
        {
            stepped_down = Some((resumed.elapsed(), v));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (took, view) = stepped_down.unwrap_or_else(|| {
        panic!(
            "the woken leader did not step down: {:?}\n{}",
            d.nodes[l].local(),
            d.logs()
        )
    });
    println!(
        "[{}] woken leader stepped down {took:?} after SIGCONT; its stale refusals {}, step-downs {}",
        topo(cluster_redis),
        view.sweeps.stale_refusals,
        view.step_downs
    );
    std::thread::sleep(Duration::from_secs(2));
    stop_load.store(true, Ordering::Relaxed);
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), load).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    recorder.abort();
    // Still one leader, the new one.
    let (after, after_epoch) = rt
        .block_on(agreed_leader(
            &http,
            &addrs,
            &[3],
            None,
            Duration::from_secs(10),
        ))
        .unwrap();
    assert_eq!(
        (after.as_str(), after_epoch),
        (new_leader.as_str(), new_epoch)
    );

    let messages = seen.lock().unwrap().clone();
    let (duties, fences, violations) = audit(&prefix, &messages);
    println!(
        "[{}] published messages {}, duty events per epoch {duties:?}, fence claims per epoch {fences:?}, stale duties {}",
        topo(cluster_redis),
        messages.len(),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "duties under a stale epoch: {violations:?}"
    );
    assert!(
        duties.get(&epoch).copied().unwrap_or(0) > 0,
        "the first leader did duties"
    );
    assert!(
        duties.get(&new_epoch).copied().unwrap_or(0) > 0,
        "the new leader did duties"
    );
    assert_eq!(
        fences.get(&new_epoch).copied(),
        Some(64),
        "the new leader fenced every bucket"
    );
    assert_eq!(view.epoch, None);
    for n in &mut d.nodes {
        n.stop();
    }
}

#[test]
fn leader_sigstop_steps_down_and_no_duty_runs_on_a_stale_epoch() {
    leader_paused(false);
}

#[test]
fn leader_sigstop_steps_down_and_no_duty_runs_on_a_stale_epoch_on_redis_cluster() {
    leader_paused(true);
}

// ---------------------------------------------------------------------------------
// Scenario: a waiter on one server, woken by a release through another; events.

/// Events read from a server's `/api/events`: (event name, data).
type EventLog = Arc<Mutex<Vec<(String, Value)>>>;

/// Reads `/api/events` of `node` into `out`.
async fn read_events(node: SocketAddr, out: EventLog) {
    let http = reqwest::Client::new();
    let mut resp = http
        .get(format!("http://{node}/api/events"))
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if let Ok(v) = serde_json::from_str(&data) {
                out.lock().unwrap().push((name, v));
            }
        }
    }
}

#[test]
fn waiter_on_one_server_is_woken_by_a_release_on_another_and_every_server_sees_every_event() {
    let _one = serial();
    let mut d = Deployment::start(false, cluster_config(true));
    let rt = runtime();
    let http = reqwest::Client::new();
    let [a, b, c] = [d.nodes[0].addr, d.nodes[1].addr, d.nodes[2].addr];
    rt.block_on(async {
        let streams: Vec<EventLog> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        let readers: Vec<_> = [a, b, c]
            .iter()
            .zip(&streams)
            .map(|(n, s)| tokio::spawn(read_events(*n, s.clone())))
            .collect();
        // Each stream (and its relay) is up once it shows an event of another server.
        let mut i = 0;
        loop {
            let name = format!("warmup{i}");
            let l = acquire(&http, [a, b, c][i % 3], &name, "w", json!({})).await;
            release(
                &http,
                [a, b, c][i % 3],
                &name,
                l["lock"]["lease_id"].as_str().unwrap(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let ready = streams.iter().all(|s| {
                s.lock()
                    .unwrap()
                    .iter()
                    .any(|(_, v)| v["resource"]["repo"] == format!("o/{name}"))
            });
            if ready && i >= 3 {
                break;
            }
            i += 1;
            assert!(
                i < 100,
                "the event streams never carried the other servers' events"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for s in &streams {
            s.lock().unwrap().clear();
        }

        let held = acquire(&http, a, "shared", "holder", json!({})).await;
        let lease = held["lock"]["lease_id"].as_str().unwrap().to_string();
        let waiter = tokio::spawn({
            let http = http.clone();
            async move {
                let body =
                    json!({"resource": resource("shared"), "owner": "waiter", "wait": "30s"});
                let answer = post(
                    &http,
                    b,
                    "/api/v1/locks/acquire",
                    body,
                    Duration::from_secs(40),
                )
                .await;
                (answer, Instant::now())
            }
        });
        let started = Instant::now();
        loop {
            let (_, q) = get(&http, c, &format!("/api/v1/queue?{}", query("shared")))
                .await
                .unwrap();
            if q["entries"].as_array().is_some_and(|e| e.len() == 1) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Past the 1 s fallback's phase, so a fast answer can only be the wake-up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released_at = Instant::now();
        let (status, body) = release(&http, a, "shared", &lease).await;
        assert_eq!(status, 200, "{body}");
        let (answer, woke) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        let (status, body) = answer.unwrap();
        assert_eq!((status, &body["acquired"]), (200, &json!(true)), "{body}");
        let latency = woke.duration_since(released_at);
        println!("waiter on server B granted {latency:?} after the release through server A");
        assert!(
            latency < Duration::from_millis(700),
            "woken by its BLPOP, not a poll: {latency:?}"
        );
        let token = body["lock"]["fencing_token"].as_u64().unwrap();

        tokio::time::sleep(Duration::from_millis(500)).await;
        for (n, s) in streams.iter().enumerate() {
            let events = s.lock().unwrap().clone();
            let count = |kind: &str, owner: &str| {
                events
                    .iter()
                    .filter(|(k, v)| {
                        k == kind && v["owner"] == owner && v["resource"]["repo"] == "o/shared"
                    })
                    .count()
            };
            assert_eq!(
                count("lock.acquired", "holder"),
                1,
                "server {n}: {events:?}"
            );
            assert_eq!(
                count("queue.entered", "waiter"),
                1,
                "server {n}: {events:?}"
            );
            assert_eq!(
                count("lock.released", "holder"),
                1,
                "server {n}: {events:?}"
            );
            assert_eq!(
                count("lock.acquired", "waiter"),
                1,
                "server {n}: {events:?}"
            );
            let granted = events
                .iter()
                .find(|(k, v)| k == "lock.acquired" && v["owner"] == "waiter")
                .unwrap();
            assert_eq!(granted.1["fencing_token"].as_u64(), Some(token));
        }
        for r in readers {
            r.abort();
        }
    });
    for n in &mut d.nodes {
        n.stop();
    }
}

// ---------------------------------------------------------------------------------
// Scenario: 200 clients, 3 servers, 5 resources.

#[derive(Default)]
struct Record {
    holder: Option<usize>,
    last_token: u64,
    grants: u64,
}

#[derive(Default)]
struct Tally {
    grants: AtomicU64,
    timeouts: AtomicU64,
    max_wait_ms: AtomicU64,
    errors: Mutex<Vec<String>>,
}

fn soak_secs() -> u64 {
    std::env::var("TFLOCK_CLUSTER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

fn contention(cluster_redis: bool, secs: u64) {
    const CLIENTS: usize = 200;
    const RESOURCES: usize = 5;
    let _one = serial();
    let mut d = Deployment::start(cluster_redis, cluster_config(true));
    let rt = runtime();
    let servers: Vec<SocketAddr> = d.nodes.iter().map(|n| n.addr).collect();
    let http = reqwest::Client::new();
    rt.block_on(agreed_leader(
        &http,
        &servers,
        &[3],
        None,
        Duration::from_secs(20),
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let records: Arc<Vec<Mutex<Record>>> = Arc::new(
        (0..RESOURCES)
            .map(|_| Mutex::new(Record::default()))
            .collect(),
    );
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let (servers, records, tally) = (servers.clone(), records.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                // Each client is its own HTTP client, keeping its connections alive.
                let http = reqwest::Client::builder()
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build()
                    .unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                let on = servers[i % 3];
                let off = servers[(i + 1) % 3];
                while Instant::now() < end {
                    let r = rng.random_range(0..RESOURCES);
                    let name = format!("contended{r}");
                    let body = json!({"resource": resource(&name), "owner": format!("client{i}"), "wait": "20s", "ttl": "30s"});
                    let asked = Instant::now();
                    let answer = post(&http, on, "/api/v1/locks/acquire", body, Duration::from_secs(40)).await;
                    let waited = asked.elapsed().as_millis() as u64;
                    tally.max_wait_ms.fetch_max(waited, Ordering::Relaxed);
                    let body = match answer {
                        Ok((200, body)) => body,
                        Ok((status, body)) => {
                            tally.errors.lock().unwrap().push(format!("client{i}: acquire {status}: {body}"));
                            return;
                        }
                        Err(e) => {
                            tally.errors.lock().unwrap().push(format!("client{i}: acquire: {e}"));
                            return;
                        }
                    };
                    if body["acquired"] != true {
                        if body["reason"] == "timeout" {
                            tally.timeouts.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        tally.errors.lock().unwrap().push(format!("client{i}: neither grant nor timeout: {body}"));
                        return;
                    }
                    let token = body["lock"]["fencing_token"].as_u64().unwrap();
                    let lease = body["lock"]["lease_id"].as_str().unwrap().to_string();
                    {
                        let mut rec = records[r].lock().unwrap();
                        if let Some(other) = rec.holder {
                            tally.errors.lock().unwrap().push(format!("{name}: client{i} granted while client{other} holds it"));
                        }
                        if token <= rec.last_token {
                            tally.errors.lock().unwrap().push(format!("{name}: token {token} after {}", rec.last_token));
                        }
                        rec.holder = Some(i);
                        rec.last_token = token;
                        rec.grants += 1;
                    }
                    tally.grants.fetch_add(1, Ordering::Relaxed);
                    let hold = rng.random_range(0..3);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    {
                        let mut rec = records[r].lock().unwrap();
                        if rec.holder != Some(i) {
                            tally.errors.lock().unwrap().push(format!("{name}: client{i} lost its record"));
                        }
                        rec.holder = None;
                    }
                    // Released through another server than the one that granted it.
                    match post(&http, off, "/api/v1/locks/release", json!({"resource": resource(&name), "lease_id": lease}), Duration::from_secs(10)).await {
                        Ok((200, _)) => {}
                        other => {
                            tally.errors.lock().unwrap().push(format!("client{i}: release: {other:?}"));
                            return;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(secs + 60), t)
                .await
                .expect("every client ends (grant or timeout), none hangs")
                .unwrap();
        }
    });
    let elapsed = started.elapsed();
    let errors = tally.errors.lock().unwrap().clone();
    let grants = tally.grants.load(Ordering::Relaxed);
    let timeouts = tally.timeouts.load(Ordering::Relaxed);
    let per_resource: Vec<u64> = records.iter().map(|r| r.lock().unwrap().grants).collect();
    println!(
        "[{}] {CLIENTS} clients, 3 servers, {RESOURCES} resources, {secs} s: {grants} grants ({:.0}/s, per resource {per_resource:?}), {timeouts} timeouts, longest acquire {} ms, {} errors",
        topo(cluster_redis),
        grants as f64 / elapsed.as_secs_f64(),
        tally.max_wait_ms.load(Ordering::Relaxed),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(10)],
        d.logs()
    );
    assert!(grants > 0);
    // Nothing left behind: every resource free, every queue empty, on every server.
    rt.block_on(async {
        for r in 0..RESOURCES {
            for s in &servers {
                let (_, q) = get(
                    &http,
                    *s,
                    &format!("/api/v1/queue?{}", query(&format!("contended{r}"))),
                )
                .await
                .unwrap();
                assert!(
                    q["lock"].is_null() && q["entries"].as_array().is_some_and(|e| e.is_empty()),
                    "{q}"
                );
            }
        }
    });
    // The servers stay one cluster with one leader throughout.
    let views: Vec<LocalView> = d.nodes.iter().filter_map(|n| n.local()).collect();
    let leaders = views.iter().filter(|v| v.role == Role::Leader).count();
    assert_eq!(leaders, 1, "{views:?}");
    let stale: u64 = views.iter().map(|v| v.sweeps.stale_refusals).sum();
    assert_eq!(stale, 0, "{views:?}");
    let by_server: HashMap<String, u64> = views
        .iter()
        .map(|v| (v.node_id.clone(), v.step_downs))
        .collect();
    assert!(
        by_server.values().all(|s| *s == 0),
        "a leader stepped down under load: {by_server:?}"
    );
    for n in &mut d.nodes {
        n.stop();
    }
}

#[test]
fn two_hundred_clients_on_three_servers_never_overlap_and_lose_no_waiter() {
    contention(false, soak_secs());
}

#[test]
fn two_hundred_clients_on_three_servers_on_redis_cluster() {
    contention(true, soak_secs().min(15));
}
