//! `tflock-bench`: measures tflock and, in the same run, the ceiling it is bound by.
//!
//! Embedded backend: every grant is committed durably before it is answered, so the
//! ceiling is the disk's fsync rate (measured here first, in the same directory).
//! Prints a Markdown report to stdout.
//!
//! `--smoke` runs every measure for a fraction of a second: CI uses it to check the
//! command works; its figures mean nothing.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};

#[derive(Parser, Debug)]
#[command(about = "Benchmark tflock against the ceilings of this machine")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Very short runs, to check the command works (figures are meaningless).
    #[arg(long)]
    smoke: bool,
    /// Directory for the store files (default: a temp dir under the current directory,
    /// so the disk measured is the one the store would use).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let secs = if args.smoke { 0.3 } else { args.seconds };
    let dur = Duration::from_secs_f64(secs);
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::Builder::new()
        .prefix("tflock-bench-")
        .tempdir_in(&base)
        .expect("temp dir");

    println!("## Embedded backend\n");
    println!(
        "Machine: {} cores, {}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let fsyncs = fsync_rate(tmp.path(), dur);
    println!("| measure | result |\n|---|---|");
    println!("| ceiling: fsync of a 4 KiB write, one thread | {fsyncs:.0} fsyncs/s |");
    let commits = redb_commit_rate(tmp.path(), dur);
    println!(
        "| ceiling: redb commit of one 200-byte record, one thread | {commits:.0} commits/s |"
    );
    let fsyncs16 = fsync_rate_concurrent(tmp.path(), dur, 16);
    println!(
        "| ceiling: fsync of a 4 KiB write, 16 threads, separate files | {fsyncs16:.0} fsyncs/s |"
    );
    for conc in [1usize, 16, 64] {
        let pairs = uncontended_pairs(tmp.path(), dur, conc).await;
        println!(
            "| uncontended acquire+release pairs/s, {conc} concurrent | {pairs:.0} pairs/s ({:.2} x the one-thread ceiling of commits/2) |",
            pairs / (commits / 2.0)
        );
    }
    let h = handoff_latency(tmp.path(), dur, 16).await;
    println!(
        "| hand-off latency, 16 waiters, release to next holder (n={}) | p50 {} · p99 {} · p99.9 {} |",
        h.len(),
        fmt(pct(&h, 50.0)),
        fmt(pct(&h, 99.0)),
        fmt(pct(&h, 99.9))
    );
    let _ = std::io::stdout().flush();
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Writes and fsyncs 4 KiB at the same offset for `dur`: what one durable commit
/// costs at least.
fn fsync_rate(dir: &Path, dur: Duration) -> f64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    let buf = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        f.write_at(&buf, 0).expect("write");
        f.sync_data().expect("fsync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One small record per durable redb transaction: what one tflock state change costs
/// at least when nothing is batched.
fn redb_commit_rate(dir: &Path, dur: Duration) -> f64 {
    const T: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("t");
    let path = dir.join("redb-probe.redb");
    let db = redb::Database::create(&path).expect("probe db");
    let value = vec![1u8; 200];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        let tx = db.begin_write().expect("begin");
        tx.open_table(T)
            .expect("table")
            .insert("k", value.as_slice())
            .expect("insert");
        tx.commit().expect("commit");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn fsync_rate_concurrent(dir: &Path, dur: Duration, threads: usize) -> f64 {
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let dir = dir.to_path_buf();
            let total = total.clone();
            std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::create(dir.join(format!("fsync-probe-{i}")))
                    .expect("probe file");
                let buf = vec![7u8; 4096];
                while start.elapsed() < dur {
                    f.write_at(&buf, 0).expect("write");
                    f.sync_data().expect("fsync");
                    total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    total.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn open(dir: &Path, name: &str) -> Arc<EmbeddedBackend> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    EmbeddedBackend::open(
        EmbeddedConfig {
            path,
            settings: LockSettings::default(),
        },
        Arc::new(SystemClock),
    )
    .await
    .expect("open store")
}

/// `conc` tasks, each on its own resource, acquire and release in a loop.
async fn uncontended_pairs(dir: &Path, dur: Duration, conc: usize) -> f64 {
    let backend = open(dir, &format!("pairs-{conc}.redb")).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let r = Resource::new("bench/pairs", format!("r{i}"), "default", "").unwrap();
                let mut n = 0u64;
                while start.elapsed() < dur {
                    let l = backend
                        .try_lock(LockRequest::new(r.clone(), format!("c{i}")))
                        .await
                        .unwrap()
                        .lock
                        .unwrap();
                    backend
                        .unlock(&r, l.lease_id.as_ref().unwrap())
                        .await
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    backend.close().await;
    rate
}

/// `waiters` tasks contend for one resource; each hand-off is timed from just before
/// the holder's unlock call to the return of the next holder's TryLock.
async fn handoff_latency(dir: &Path, dur: Duration, waiters: usize) -> Vec<Duration> {
    let backend = open(dir, "handoff.redb").await;
    let r = Resource::new("bench/handoff", ".", "default", "").unwrap();
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..waiters)
        .map(|i| {
            let (backend, r, released_at, samples) = (
                backend.clone(),
                r.clone(),
                released_at.clone(),
                samples.clone(),
            );
            tokio::spawn(async move {
                while start.elapsed() < dur {
                    let resp = backend
                        .try_lock(
                            LockRequest::new(r.clone(), format!("w{i}"))
                                .with_wait(Duration::from_secs(60)),
                        )
                        .await
                        .unwrap();
                    let got = Instant::now();
                    let lock = resp.lock.unwrap();
                    if let Some(t) = released_at.lock().unwrap().take() {
                        samples.lock().unwrap().push(got - t);
                    }
                    *released_at.lock().unwrap() = Some(Instant::now());
                    backend
                        .unlock(&r, lock.lease_id.as_ref().unwrap())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    backend.close().await;
    let mut v = samples.lock().unwrap().clone();
    v.sort();
    v
}
