//! What the machine allows, measured in the same run: the disk's fsync and redb commit
//! rates (the embedded store commits every grant durably) and one-round-trip Redis
//! scripts (every tflock Redis operation is one EVALSHA), both with the redis-rs
//! client tflock uses and with `redis-benchmark`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// The trivial lock script of the ceiling: one SET NX PX and a return, the least any
/// one-round-trip lock operation does.
pub const CEILING_SCRIPT: &str =
    "return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0";

/// Writes and fsyncs 4 KiB at the same offset for `dur`: what one durable commit
/// costs at least. Returns the rate and each fsync's latency (ms).
pub fn fsync_rate(dir: &Path, dur: Duration) -> Result<(f64, Vec<f64>)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(dir.join("fsync-probe"))?;
    let buf = vec![7u8; 4096];
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < dur {
        let t = Instant::now();
        f.write_at(&buf, 0)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((lat.len() as f64 / start.elapsed().as_secs_f64(), lat))
}

/// The same with `threads` threads on separate files: whether the disk overlaps
/// fsyncs.
pub fn fsync_rate_concurrent(dir: &Path, dur: Duration, threads: usize) -> Result<f64> {
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let dir = dir.to_path_buf();
            let total = total.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::create(dir.join(format!("fsync-probe-{i}")))?;
                let buf = vec![7u8; 4096];
                while start.elapsed() < dur {
                    f.write_at(&buf, 0)?;
                    f.sync_data()?;
                    total.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for h in hs {
        h.join()
            .map_err(|_| anyhow!("an fsync thread panicked"))??;
    }
    Ok(total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// One small record per durable redb transaction: what one embedded state change
/// costs at least when nothing is batched.
pub fn redb_commit_rate(dir: &Path, dur: Duration) -> Result<f64> {
    const T: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("t");
    let db = redb::Database::create(dir.join("redb-probe.redb"))?;
    let value = vec![1u8; 200];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        let tx = db.begin_write()?;
        tx.open_table(T)?.insert("k", value.as_slice())?;
        tx.commit()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `conc` tasks share one multiplexed redis-rs connection (as tflock's Redis backend
/// does) and run the one-round-trip script in a loop for `dur`. Scripts per second.
/// Also returns the scripts run.
pub async fn evalsha_loop(redis_url: &str, conc: usize, dur: Duration) -> Result<(f64, u64)> {
    let client = redis::Client::open(redis_url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(CEILING_SCRIPT)
        .query_async(&mut conn.clone())
        .await?;
    let start = Instant::now() + Duration::from_millis(100);
    let stop = start + dur;
    let tasks: Vec<_> = (0..conc)
        .map(|i| {
            let mut conn = conn.clone();
            let sha = sha.clone();
            tokio::spawn(async move {
                let key = format!("bench:ceiling:{i}");
                let mut n = 0u64;
                tokio::time::sleep_until(start.into()).await;
                while Instant::now() < stop {
                    let _: i64 = redis::cmd("EVALSHA")
                        .arg(&sha)
                        .arg(1)
                        .arg(&key)
                        .arg("holder")
                        .arg(30_000)
                        .query_async(&mut conn)
                        .await?;
                    n += 1;
                }
                Ok::<_, redis::RedisError>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok((total as f64 / (Instant::now() - start).as_secs_f64(), total))
}

/// Loads the ceiling script and returns its SHA1 (for `redis-benchmark`).
pub async fn load_script(redis_url: &str) -> Result<String> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(CEILING_SCRIPT)
        .query_async(&mut conn)
        .await?)
}

/// `redis-benchmark -c conc -n n -P 1 EVALSHA sha 1 key v 30000` on the benchmark's
/// Redis; requests per second.
pub fn redis_benchmark(port: u16, sha: &str, conc: usize, n: u64) -> Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &conc.to_string(), "-n", &n.to_string(), "-P", "1"])
        .args(["-r", "100000", "--csv"])
        .args([
            "EVALSHA",
            sha,
            "1",
            "bench:rb:__rand_int__",
            "holder",
            "30000",
        ])
        .output()
        .context("running redis-benchmark")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // --csv: a header line, then "name","rps",...
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        if fields.len() >= 2
            && let Ok(rps) = fields[1].parse::<f64>()
        {
            return Ok(rps);
        }
    }
    bail!("no rate in redis-benchmark's output: {text}")
}

/// `redis-benchmark`'s version line, or why it cannot run.
pub fn redis_benchmark_available() -> Result<()> {
    let out = Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .context("redis-benchmark is not on PATH")?;
    if out.status.success() {
        Ok(())
    } else {
        bail!("redis-benchmark --version failed")
    }
}

/// How late a thread wakes from a 200 µs sleep, `n` times (ms): the scheduling noise
/// of the machine at the time of the run. Sub-millisecond tail latencies cannot be
/// better than this.
pub fn wakeup_lateness(n: usize) -> Vec<f64> {
    let want = Duration::from_micros(200);
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::thread::sleep(want);
            t.elapsed().saturating_sub(want).as_secs_f64() * 1e3
        })
        .collect()
}
