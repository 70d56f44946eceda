//! The Redis backend's scale base (issue #18, the scale notes in
//! `docs/redis-design.md`): on a fresh standalone, memory-only redis-server from
//! tflock-testkit it measures
//!
//! - memory (`INFO memory` used_memory) and keys (`DBSIZE`) per held lock, at 10,000
//!   and at N (default 100,000) held locks, with `MEMORY USAGE` of one lock's own keys;
//! - memory and keys per queue entry: M reservations (TryLock with `reserve`, a
//!   request id and a 5 min wait) spread over R held resources;
//! - memory and keys per released resource (locked, then unlocked: its token key and
//!   `tidx` member remain);
//! - listing all N held locks through the library (`list_locks`, pages of 1,000 =
//!   `LockFilter::MAX_LIMIT`, the largest the API allows, and pages of 100, the HTTP
//!   default) and one repository of ten, each three times;
//! - the same through HTTP: the real `tflock server` binary (`--tflock PATH`, a release
//!   build) started with `--config` on the same Redis, paged with `GET /api/v1/locks`
//!   over loopback (one connection per request);
//! - Redis commands and usec per listing page of 1,000 (`INFO commandstats`, reset
//!   before), and the background load one idle `tflock server` puts on Redis.
//!
//! It prints a Markdown table. The library backend runs as a sweep `Follower` (it
//! does not sweep), so its figures hold no background work.
//!
//! ```text
//! cargo build --release --bin tflock
//! cargo run --release -p tflock-redis --example scale_cost -- \
//!     --tflock target/release/tflock [--locks 100000] [--queue 10000] [--queue-resources 100] [--released 10000]
//! ```

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use tflock_core::{Backend, LockFilter, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig, SweepRole};
use tflock_testkit::{RedisOptions, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Concurrent calls while filling.
const FILL_CONCURRENCY: usize = 64;
/// Repositories the held locks are spread over (the filtered listing takes one).
const REPOS: usize = 10;
const API_TOKEN: &str = "scale-cost-api-token";

struct Args {
    tflock: Option<String>,
    locks: usize,
    queue: usize,
    queue_resources: usize,
    released: usize,
}

fn args() -> Args {
    let mut a = Args {
        tflock: None,
        locks: 100_000,
        queue: 10_000,
        queue_resources: 100,
        released: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        let num = || v.parse::<usize>().unwrap_or_else(|_| panic!("{k}: {v}"));
        match k.as_str() {
            "--tflock" => {
                let p = std::fs::canonicalize(&v).unwrap_or_else(|e| panic!("--tflock {v}: {e}"));
                a.tflock = Some(p.display().to_string())
            }
            "--locks" => a.locks = num(),
            "--queue" => a.queue = num(),
            "--queue-resources" => a.queue_resources = num(),
            "--released" => a.released = num(),
            _ => panic!("unknown argument {k}"),
        }
    }
    assert!(a.locks >= 10_000, "--locks must be at least 10000");
    assert!(a.queue_resources <= a.locks);
    a
}

fn held(i: usize) -> Resource {
    Resource::new(
        format!("myorg/repo{}", i % REPOS),
        format!("stacks/s{i:06}"),
        "default",
        "",
    )
    .unwrap()
}

fn held_owner(i: usize) -> String {
    format!("myorg/repo{}#{}", i % REPOS, i)
}

async fn info(c: &mut MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(c)
        .await
        .unwrap()
}

fn field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO"))
        .trim()
        .to_string()
}

/// (used_memory, DBSIZE).
async fn mem(c: &mut MultiplexedConnection) -> (u64, u64) {
    let m = field(&info(c, "memory").await, "used_memory")
        .parse()
        .unwrap();
    let k: u64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
    (m, k)
}

async fn memory_usage(c: &mut MultiplexedConnection, key: &str) -> Option<u64> {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(c)
        .await
        .unwrap()
}

/// One key matching `pattern` (SCAN until found).
async fn one_key(c: &mut MultiplexedConnection, pattern: &str) -> String {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .unwrap();
        if let Some(k) = keys.into_iter().next() {
            return k;
        }
        assert_ne!(next, 0, "no key matches {pattern}");
        cursor = next;
    }
}

/// The bucket prefix `P{b:NN}:` of a key.
fn bucket_of(key: &str) -> String {
    let end = key.find("}:").expect("a bucket key") + 2;
    key[..end].to_string()
}

/// `MEMORY USAGE` of each of the bucket's keys `names`, over its members.
async fn bucket_breakdown(c: &mut MultiplexedConnection, bucket: &str, names: &[&str]) -> String {
    let mut out = Vec::new();
    for n in names {
        let key = format!("{bucket}{n}");
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(c).await.unwrap();
        let card: u64 = match kind.as_str() {
            "zset" => redis::cmd("ZCARD").arg(&key).query_async(c).await.unwrap(),
            "hash" => redis::cmd("HLEN").arg(&key).query_async(c).await.unwrap(),
            _ => 0,
        };
        let bytes = memory_usage(c, &key).await.unwrap_or(0);
        out.push(format!(
            "`{n}` {bytes} bytes / {card} = {:.0}",
            bytes as f64 / card.max(1) as f64
        ));
    }
    out.join(", ")
}

async fn reset_stats(c: &mut MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(c)
        .await
        .unwrap();
}

/// `INFO commandstats`: command → (calls, usec).
async fn commandstats(c: &mut MultiplexedConnection) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for l in info(c, "commandstats").await.lines() {
        let Some(rest) = l.strip_prefix("cmdstat_") else {
            continue;
        };
        let (name, kv) = rest.split_once(':').unwrap();
        let get = |k: &str| -> u64 {
            kv.split(',')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        out.insert(name.to_string(), (get("calls"), get("usec")));
    }
    out
}

/// Commands and script usec per unit (`div` units), leaving out the measuring
/// commands themselves; and the list `command calls/unit / usec/unit`. A script
/// counts once as `fcall` (`evalsha` before the function library) and once per
/// `redis.call` inside it, and its usec include theirs.
fn per_unit(stats: &BTreeMap<String, (u64, u64)>, div: f64) -> (f64, f64, String) {
    let mut rows: Vec<(&String, &(u64, u64))> = stats
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "config|resetstat" | "config"))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
    let calls: u64 = rows.iter().map(|r| r.1.0).sum();
    let script: u64 = rows
        .iter()
        .filter(|r| matches!(r.0.as_str(), "fcall" | "evalsha" | "eval"))
        .map(|r| r.1.1)
        .sum();
    let list = rows
        .iter()
        .map(|(k, (n, us))| format!("{k} {:.2} / {:.1}", *n as f64 / div, *us as f64 / div))
        .collect::<Vec<_>>()
        .join(", ");
    (calls as f64 / div, script as f64 / div, list)
}

/// How long an idle server's background load is watched.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

/// How long a freshly started server is left alone before its load is watched (it
/// joins the cluster, is elected, checks the buckets' generations).
const SETTLE: Duration = Duration::from_secs(10);

/// Redis's CPU time so far (used_cpu_user + used_cpu_sys), seconds.
async fn redis_cpu(c: &mut MultiplexedConnection) -> f64 {
    let i = info(c, "cpu").await;
    field(&i, "used_cpu_user").parse::<f64>().unwrap()
        + field(&i, "used_cpu_sys").parse::<f64>().unwrap()
}

/// What Redis serves per second while nobody calls tflock: commands, script µs and
/// Redis CPU µs per second, by command.
async fn idle_load(c: &mut MultiplexedConnection, window: Duration) -> String {
    reset_stats(c).await;
    let cpu0 = redis_cpu(c).await;
    tokio::time::sleep(window).await;
    let s = commandstats(c).await;
    let cpu1 = redis_cpu(c).await;
    let secs = window.as_secs_f64();
    // The two INFO calls of this measure are left out.
    let mut s = s;
    if let Some(v) = s.get_mut("info") {
        v.0 = v.0.saturating_sub(1);
    }
    let (calls, script, list) = per_unit(&s, secs);
    format!(
        "{calls:.1} commands/s, {script:.0} µs/s of script time, Redis CPU {:.0} µs/s (INFO cpu); per second: {list}",
        (cpu1 - cpu0) * 1e6 / secs
    )
}

async fn fill(b: &RedisBackend, range: std::ops::Range<usize>) -> Duration {
    let t = Instant::now();
    futures::stream::iter(range)
        .map(|i| async move {
            let r = b
                .try_lock(
                    LockRequest::new(held(i), held_owner(i)).with_ttl(Duration::from_secs(3600)),
                )
                .await
                .unwrap();
            assert!(r.acquired, "lock {i} was not granted");
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    t.elapsed()
}

/// Pages through held locks; (locks, pages), checking order and completeness.
async fn page_all(b: &RedisBackend, repo: Option<String>, limit: usize) -> (usize, usize) {
    let mut cursor = None;
    let (mut n, mut pages) = (0, 0);
    let mut prev: Option<String> = None;
    loop {
        let page = b
            .list_locks(LockFilter {
                repo: repo.clone(),
                cursor: cursor.clone(),
                limit: Some(limit),
                ..LockFilter::default()
            })
            .await
            .unwrap();
        pages += 1;
        for l in &page.locks {
            let sk = l.resource.storage_key();
            assert!(prev.as_ref().is_none_or(|p| *p < sk), "out of order");
            prev = Some(sk);
        }
        n += page.locks.len();
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.locks.len(), limit, "a page before the last is short");
                cursor = Some(c);
            }
            None => break,
        }
    }
    (n, pages)
}

fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// One HTTP/1.1 GET on a fresh loopback connection (`Connection: close`); the body.
async fn http_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size_hex = String::from_utf8_lossy(&rest[..nl]);
            let size =
                usize::from_str_radix(size_hex.split(';').next().unwrap().trim(), 16).unwrap();
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    (status, body)
}

/// Pages through `GET /api/v1/locks`; (locks, pages), checking completeness.
async fn http_page_all(port: u16, repo: Option<&str>, limit: usize) -> (usize, usize) {
    let mut cursor: Option<String> = None;
    let (mut n, mut pages) = (0, 0);
    let mut seen = HashSet::new();
    loop {
        let mut path = format!("/api/v1/locks?limit={limit}");
        if let Some(r) = repo {
            path.push_str(&format!("&repo={}", pct(r)));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", pct(c)));
        }
        let (status, body) = http_get(port, &path).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let locks = v["locks"].as_array().unwrap();
        for l in locks {
            assert!(
                seen.insert(l["key"].as_str().unwrap().to_string()),
                "a lock twice"
            );
        }
        pages += 1;
        n += locks.len();
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(locks.len(), limit, "a page before the last is short");
                cursor = Some(c.to_string());
            }
            None => break,
        }
    }
    (n, pages)
}

struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_tflock(bin: &str, redis_port: u16) -> (ServerChild, u16, std::path::PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("tflock-scale-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tflock.yaml");
    std::fs::write(
        &config,
        format!(
            "enhanced_locking:\n  backend: redis\n  redis:\n    addresses: [\"127.0.0.1:{redis_port}\"]\n  server:\n    listen: \"127.0.0.1:{port}\"\n    api_token: \"{API_TOKEN}\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut c = Command::new(bin);
    c.arg("server")
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, _) in std::env::vars() {
        if k.starts_with("ATLANTIS_") || k.starts_with("TFLOCK_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    let mut child = ServerChild(c.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if healthz_up(port).await && http_get(port, "/healthz").await.0 == 200 {
            break;
        }
        if let Some(s) = child.0.try_wait().unwrap() {
            panic!(
                "tflock server exited with {s}: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "tflock server did not answer /healthz"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, port, dir)
}

/// Whether the port accepts connections (`http_get` would panic while it does not).
async fn healthz_up(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn times(ts: &[Duration]) -> String {
    ts.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(" / ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let started = sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let load_before = sh("cat /proc/loadavg");
    let server = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
        .await
        .unwrap();
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let redis_version = field(&info(&mut c, "server").await, "redis_version");
    let b = RedisBackend::connect_with(
        RedisConfig::standalone(server.addr().to_string()),
        LockSettings::default(),
        Arc::new(SystemClock),
        BackendOptions::default().sweep(SweepRole::Follower),
    )
    .await
    .unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        eprintln!("{k}: {v}");
        rows.push((k.to_string(), v));
    };

    // a. Memory per held lock.
    let (m0, k0) = mem(&mut c).await;
    let t10 = fill(&b, 0..10_000).await;
    let (m1, k1) = mem(&mut c).await;
    let tn = fill(&b, 10_000..a.locks).await;
    let (m2, k2) = mem(&mut c).await;
    row(
        "fill",
        format!(
            "10,000 locks in {}, then {} more in {} ({FILL_CONCURRENCY} concurrent TryLock)",
            ms(t10),
            a.locks - 10_000,
            ms(tn)
        ),
    );
    row(
        "memory per held lock at 10,000",
        format!(
            "used_memory {m0} → {m1} bytes: ({m1} − {m0}) / 10,000 = **{:.0} bytes**; DBSIZE {k0} → {k1}: {:.2} keys per lock",
            (m1 - m0) as f64 / 10_000.0,
            (k1 - k0) as f64 / 10_000.0
        ),
    );
    row(
        &format!("memory per held lock at {}", a.locks),
        format!(
            "used_memory {m0} → {m2} bytes: ({m2} − {m0}) / {} = **{:.0} bytes**; DBSIZE {k0} → {k2}: {:.2} keys per lock",
            a.locks,
            (m2 - m0) as f64 / a.locks as f64,
            (k2 - k0) as f64 / a.locks as f64
        ),
    );
    let lock_key = one_key(&mut c, "*}:lock:*").await;
    // The default prefix itself ends in `:lock:`: replace after the hash tag.
    let token_key = lock_key.replacen("}:lock:", "}:token:", 1);
    let lk = memory_usage(&mut c, &lock_key).await.unwrap_or(0);
    let tk = memory_usage(&mut c, &token_key).await.unwrap_or(0);
    row(
        "MEMORY USAGE of one held lock's keys",
        format!(
            "lease hash {lk} bytes + token string {tk} bytes = {}; its bucket's sorted sets per member: {}",
            lk + tk,
            bucket_breakdown(
                &mut c,
                &bucket_of(&lock_key),
                &["expiries", "resources", "tokens"]
            )
            .await
        ),
    );

    // b. Listing through the library.
    assert_eq!(LockFilter::MAX_LIMIT, 1000);
    for limit in [LockFilter::MAX_LIMIT, 100] {
        let mut ts = Vec::new();
        let mut pages = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let (got, p) = page_all(&b, None, limit).await;
            ts.push(t.elapsed());
            assert_eq!(got, a.locks);
            pages = p;
        }
        row(
            &format!("library: list all {} held locks, pages of {limit}", a.locks),
            format!("{pages} pages; 3 runs: {}", times(&ts)),
        );
    }
    let mut ts = Vec::new();
    let mut pages = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let (got, p) = page_all(&b, Some("myorg/repo3".into()), 1000).await;
        ts.push(t.elapsed());
        assert_eq!(got, a.locks / REPOS);
        pages = p;
    }
    row(
        "library: list repo myorg/repo3 (1 of 10), pages of 1000",
        format!(
            "{} locks, {pages} pages; 3 runs: {}",
            a.locks / REPOS,
            times(&ts)
        ),
    );

    // d. Redis commands per listing page of 1,000.
    reset_stats(&mut c).await;
    let page = b
        .list_locks(LockFilter {
            limit: Some(1000),
            ..LockFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.locks.len(), 1000);
    let s = commandstats(&mut c).await;
    let (calls, script, list) = per_unit(&s, 1.0);
    row(
        "Redis per listing page (first page of 1000, library)",
        format!("{calls:.0} commands, {script:.0} µs of script time; {list}"),
    );
    reset_stats(&mut c).await;
    let (_, pages) = page_all(&b, None, 1000).await;
    let s = commandstats(&mut c).await;
    let (calls, script, list) = per_unit(&s, pages as f64);
    row(
        &format!("Redis per listing page (mean of all {pages} pages of 1000, library)"),
        format!("{calls:.1} commands, {script:.0} µs of script time; {list}"),
    );

    // c. Listing through HTTP.
    if let Some(bin) = &a.tflock {
        let (child, port, dir) = start_tflock(bin, server.port()).await;
        // Background load of one idle server (the cluster manager's heartbeat, the
        // leader's sweeps and roll-ups, health checks), then of a second one.
        tokio::time::sleep(SETTLE).await;
        let one = idle_load(&mut c, IDLE_WINDOW).await;
        row(
            &format!(
                "one idle tflock server (the leader) on Redis, {} s window",
                IDLE_WINDOW.as_secs()
            ),
            one,
        );
        let mut ts = Vec::new();
        let mut pages = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let (got, p) = http_page_all(port, None, 1000).await;
            ts.push(t.elapsed());
            assert_eq!(got, a.locks);
            pages = p;
        }
        row(
            &format!(
                "HTTP: GET /api/v1/locks, all {} held locks, limit=1000",
                a.locks
            ),
            format!("{pages} pages; 3 runs: {}", times(&ts)),
        );
        let mut ts = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let (got, p) = http_page_all(port, Some("myorg/repo3"), 1000).await;
            ts.push(t.elapsed());
            assert_eq!(got, a.locks / REPOS);
            pages = p;
        }
        row(
            "HTTP: GET /api/v1/locks?repo=myorg/repo3, limit=1000",
            format!(
                "{} locks, {pages} pages; 3 runs: {}",
                a.locks / REPOS,
                times(&ts)
            ),
        );
        reset_stats(&mut c).await;
        let t = Instant::now();
        let (_, pages) = http_page_all(port, None, 1000).await;
        let el = t.elapsed();
        let s = commandstats(&mut c).await;
        let (calls, script, list) = per_unit(&s, pages as f64);
        row(
            &format!(
                "Redis per HTTP listing page (mean of {pages} pages of 1000, incl. the server's background work)"
            ),
            format!(
                "{calls:.1} commands, {script:.0} µs of script time (pass took {}); {list}",
                ms(el)
            ),
        );
        let (child2, _, dir2) = start_tflock(bin, server.port()).await;
        tokio::time::sleep(SETTLE).await;
        let two = idle_load(&mut c, IDLE_WINDOW).await;
        row(
            &format!(
                "two idle tflock servers (leader + follower) on Redis, {} s window",
                IDLE_WINDOW.as_secs()
            ),
            two,
        );
        drop(child2);
        drop(child);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(dir2);
    } else {
        row("HTTP", "not measured (no --tflock)".into());
    }

    // a. Memory per queue entry.
    let (q0, qk0) = mem(&mut c).await;
    let per = a.queue / a.queue_resources;
    let tq = Instant::now();
    futures::stream::iter(0..a.queue)
        .map(|j| {
            let b = &*b;
            async move {
                let i = j % a.queue_resources;
                let req = LockRequest::new(held(i), format!("myorg/repo{}#q{j}", i % REPOS))
                    .reserving()
                    .with_wait(Duration::from_secs(300))
                    .with_request_id(format!("rsv-{j:08}-0123456789abcdef"));
                let r = b.try_lock(req).await.unwrap();
                assert!(
                    !r.acquired && r.queue.is_some(),
                    "reservation {j} not queued"
                );
            }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let tq = tq.elapsed();
    let (q1, qk1) = mem(&mut c).await;
    row(
        "memory per queue entry",
        format!(
            "{} reservations (request id, 5 min wait) on {} held resources ({per} each) queued in {}: used_memory {q0} → {q1}: ({q1} − {q0}) / {} = **{:.0} bytes**; DBSIZE {qk0} → {qk1}: {:.4} keys per entry",
            a.queue,
            a.queue_resources,
            ms(tq),
            a.queue,
            (q1 as f64 - q0 as f64) / a.queue as f64,
            (qk1 as f64 - qk0 as f64) / a.queue as f64
        ),
    );
    let entries_key = one_key(&mut c, "*}:entries:*").await;
    let ek = memory_usage(&mut c, &entries_key).await.unwrap_or(0);
    let ix = memory_usage(&mut c, &entries_key.replacen("}:entries:", "}:owners:", 1))
        .await
        .unwrap_or(0);
    let mut lane = 0;
    for p in 0..4 {
        let k = entries_key.replacen("}:entries:", &format!("}}:queue{p}:"), 1);
        lane += memory_usage(&mut c, &k).await.unwrap_or(0);
    }
    let bucket = bucket_of(&entries_key);
    row(
        "MEMORY USAGE of one queued resource's keys",
        format!(
            "{per} entries: entries hash {ek} bytes ({:.0}/entry), owner index owners {ix} bytes ({:.0}/entry), lanes queue0..queue3 {lane} bytes ({:.0}/entry); its bucket's keys per member: {}",
            ek as f64 / per as f64,
            ix as f64 / per as f64,
            lane as f64 / per as f64,
            bucket_breakdown(
                &mut c,
                &bucket,
                &[
                    "entry_resources",
                    "entry_deadlines",
                    "answers",
                    "answers_due"
                ]
            )
            .await
        ),
    );

    // a. Memory per released resource.
    let (r0, rk0) = mem(&mut c).await;
    let base = 10_000_000;
    let tr = Instant::now();
    futures::stream::iter(base..base + a.released)
        .map(|i| {
            let b = &*b;
            async move {
                let r = b
                    .try_lock(LockRequest::new(held(i), held_owner(i)))
                    .await
                    .unwrap();
                let l = r.lock.expect("granted");
                b.unlock(&l.resource, l.lease_id.as_ref().unwrap())
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let tr = tr.elapsed();
    let (r1, rk1) = mem(&mut c).await;
    row(
        "memory per released resource",
        format!(
            "{} resources locked and unlocked in {}: used_memory {r0} → {r1}: ({r1} − {r0}) / {} = **{:.0} bytes**; DBSIZE {rk0} → {rk1}: {:.2} keys per resource",
            a.released,
            ms(tr),
            a.released,
            (r1 as f64 - r0 as f64) / a.released as f64,
            (rk1 as f64 - rk0 as f64) / a.released as f64
        ),
    );

    b.close().await;
    let load_after = sh("cat /proc/loadavg");
    println!(
        "Started {started}; Redis {redis_version} (testkit, memory only: `save \"\"`, no AOF); load average before `{load_before}`, after `{load_after}`.\n"
    );
    println!("| measure | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {} |", v.replace('|', "\\|"));
    }
}
