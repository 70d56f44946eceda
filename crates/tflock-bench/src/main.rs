//! `tflock-bench`: measures tflock (embedded and Redis backends, through the library
//! and through HTTP) and, in the same run, the ceiling it is bound by and the peer lock
//! libraries it is compared with; then regenerates `docs/benchmarks.md` with tables,
//! plots (`docs/bench/*.svg`), ratios and a verdict per goal.
//!
//! # Layout
//!
//! - [`api`]: the lock clients every measure drives (tflock library, tflock HTTP with
//!   the real server in this process, rslock).
//! - [`measure`]: uncontended pairs, the contention loop (hand-off, fairness,
//!   anti-starvation), the scale measures.
//! - [`ceiling`]: fsync and redb commit rates; one-round-trip EVALSHA with redis-rs
//!   and with `redis-benchmark`.
//! - [`peers`]: the Python peers' venv and driver (`peers/peers.py`).
//! - [`results`]: the run's data; [`report`] turns it into Markdown, [`plot`] into SVG.
//! - [`stats`]: percentiles and Jain's index.
//! - [`recovery`]: how soon locking works again after a Redis fault (kill + restart,
//!   stop + continue, Sentinel failover), with three real `tflock server` processes.
//!   This binary doubles as `tflock` when run under that name (`arg0`), so the measure
//!   always has a server binary built from the same sources.
//!
//! Redis is a fresh `redis-server` on a free loopback port (the testkit's harness),
//! memory only, so what is measured is Redis's and tflock's own cost.
//!
//! `--smoke` runs every measure for a fraction of a second (CI checks the command and
//! the report's shape; the figures mean nothing) and skips the Python peers.

mod api;
mod ceiling;
mod measure;
mod peers;
mod plot;
mod recovery;
mod report;
mod results;
mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use tflock_core::{LockSettings, Priority, Resource, SharedBackend};
use tflock_testkit::{RedisOptions, RedisServer};

use crate::api::{Api, BackendKind, HttpApi, HttpServer, Surface, open_backend};
use crate::measure::{ContendSpec, contend};
use crate::results::{
    DiskCeiling, FairnessRow, HandoffRow, ListingRow, Machine, MemoryRow, PairsRow, QueueScaleRow,
    RedisCost, Results, ScriptCeiling, Skipped, StarvationRow, System,
};
use crate::stats::Latency;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Benchmark tflock (embedded and Redis, library and HTTP) against the Redis ceiling and peer lock libraries, and regenerate docs/benchmarks.md"
)]
struct Args {
    /// Seconds per throughput and hand-off measure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds of each fairness run (48 contenders holding 1 ms).
    #[arg(long, default_value_t = 20.0)]
    fairness_seconds: f64,
    /// Held locks for the listing and memory measures.
    #[arg(long, default_value_t = 100_000)]
    locks: usize,
    /// Shorter run: 1 s measures, 5 s fairness, 20,000 locks.
    #[arg(long)]
    quick: bool,
    /// Every measure for a fraction of a second, no Python peers: checks the command
    /// works; its figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Skip the Python peers (redis-py, python-redis-lock).
    #[arg(long)]
    no_python_peers: bool,
    /// Only these measures (comma-separated: ceiling, pairs, handoff, fairness,
    /// starvation, scale, peers, recovery). Without --out (or --merge) the report
    /// then goes to target/bench-partial.md, so a partial run never replaces
    /// docs/benchmarks.md.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// With --only: keep every other figure of the report (from the `results.json`
    /// next to it) and replace only the measures this run took; the report is
    /// redrawn (default docs/benchmarks.md).
    #[arg(long)]
    merge: bool,
    /// Only this backend (embedded or redis).
    #[arg(long)]
    backend: Option<String>,
    /// The report to (re)generate; its hand-written sections are kept.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where plots and results.json go (default: `bench/` next to the report).
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Directory for the embedded store files (default: a temp dir under target/, so
    /// the disk measured is the one builds use).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The Python peers' venv (default: target/bench-venv).
    #[arg(long)]
    venv: Option<PathBuf>,
    /// Faults of each kind in the recovery measure (default: 10, 3 with --quick, 1
    /// with --smoke).
    #[arg(long)]
    recovery_faults: Option<usize>,
    /// Only these recovery fault kinds (comma-separated: kill, stop, failover;
    /// default all, no failover with --smoke).
    #[arg(long, value_delimiter = ',')]
    recovery_kinds: Vec<String>,
    /// Measure nothing: redraw the report and plots from a `results.json` of an
    /// earlier run (after editing the report's code or its hand-written sections).
    #[arg(long)]
    from_json: Option<PathBuf>,
}

/// Durations and sizes of this run.
#[derive(Debug, Clone)]
struct Plan {
    mode: &'static str,
    seconds: Duration,
    fairness: Duration,
    starvation: Duration,
    locks: usize,
    queue_rounds: usize,
    rb_requests: [u64; 3],
    python_peers: bool,
    /// Faults of each kind in the recovery measure, and which kinds.
    recovery_faults: usize,
    recovery_kinds: Vec<recovery::FaultKind>,
}

const CLIENTS: [usize; 3] = [1, 16, 64];
const WAITERS: [usize; 2] = [16, 256];
const FAIR_CLIENTS: usize = 48;
const FAIR_HOLD: Duration = Duration::from_millis(1);
/// Hold in the hand-off measure, the same for tflock and peers. Not zero: a peer's
/// stepped-back releaser retries at the next grant, and with no hold that retry would
/// land right on the next release every time (two clients ping-ponging while the
/// others poll), hiding the polling delay the measure is about.
const HANDOFF_HOLD: Duration = Duration::from_millis(1);
const DEPTHS: [usize; 3] = [10, 100, 1000];
const STARVE_THRESHOLD: Duration = Duration::from_millis(200);
const STARVE_BOOST: u8 = 3;
const STARVE_HIGH: usize = 8;
const STARVE_HOLD: Duration = Duration::from_millis(2);
/// How long waiters may still wait for their last grant after a measure's end.
const GRACE: Duration = Duration::from_secs(20);

impl Plan {
    fn from(a: &Args) -> Result<Plan> {
        let mut plan = if a.smoke {
            Plan {
                mode: "smoke",
                seconds: Duration::from_millis(200),
                fairness: Duration::from_millis(300),
                starvation: Duration::from_millis(700),
                locks: 2000,
                queue_rounds: 3,
                rb_requests: [2000, 5000, 5000],
                python_peers: false,
                recovery_faults: 1,
                recovery_kinds: vec![
                    recovery::FaultKind::KillRestart,
                    recovery::FaultKind::StopCont,
                ],
            }
        } else if a.quick {
            Plan {
                mode: "quick",
                seconds: Duration::from_secs(1),
                fairness: Duration::from_secs(5),
                starvation: Duration::from_secs(2),
                locks: 20_000,
                queue_rounds: 30,
                rb_requests: [30_000, 60_000, 60_000],
                python_peers: !a.no_python_peers,
                recovery_faults: 3,
                recovery_kinds: recovery::FaultKind::ALL.to_vec(),
            }
        } else {
            Plan {
                mode: "full",
                seconds: Duration::from_secs_f64(a.seconds),
                fairness: Duration::from_secs_f64(a.fairness_seconds),
                starvation: Duration::from_secs(5),
                locks: a.locks,
                queue_rounds: 100,
                rb_requests: [60_000, 200_000, 200_000],
                python_peers: !a.no_python_peers,
                recovery_faults: 10,
                recovery_kinds: recovery::FaultKind::ALL.to_vec(),
            }
        };
        if let Some(n) = a.recovery_faults {
            plan.recovery_faults = n;
        }
        if !a.recovery_kinds.is_empty() {
            plan.recovery_kinds = a
                .recovery_kinds
                .iter()
                .map(|k| recovery::FaultKind::parse(k))
                .collect::<Result<_>>()?;
        }
        Ok(plan)
    }
}

/// What every measure needs.
struct Ctx {
    plan: Plan,
    dir: PathBuf,
    redis: RedisServer,
    redis_addr: String,
    redis_url: String,
    backends: Vec<BackendKind>,
    only: Vec<String>,
    work: PathBuf,
}

impl Ctx {
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

/// The workspace's target directory: next to the running binary.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| {
            p.ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "target"))
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn main() -> std::process::ExitCode {
    // Run as `tflock` (the recovery measure's servers): the CLI, with its own runtime.
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&arg0).file_name().is_some_and(|n| n == "tflock") {
        return tflock_cli::main();
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("tflock-bench: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// Writes the report, the plots and `results.json` for `r`.
fn write_report(r: &mut Results, out: &Path, plots: &Path) -> Result<()> {
    std::fs::create_dir_all(plots).with_context(|| format!("creating {}", plots.display()))?;
    let mut plot_links = Vec::new();
    for p in plot::draw_all(r, plots) {
        match p {
            Ok(p) => plot_links.push(p),
            Err(e) => r.errors.push(format!("plot: {e:#}")),
        }
    }
    std::fs::write(plots.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let previous = std::fs::read_to_string(out).unwrap_or_default();
    let rel_plots = relative(plots, out.parent().unwrap_or_else(|| Path::new(".")));
    let text = report::render(r, &previous, &rel_plots, &plot_links);
    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    let plan = Plan::from(&args)?;
    if let Some(json) = &args.from_json {
        let mut r: Results = serde_json::from_str(
            &std::fs::read_to_string(json)
                .with_context(|| format!("reading {}", json.display()))?,
        )
        .with_context(|| format!("{} is not a tflock-bench results.json", json.display()))?;
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("docs/benchmarks.md"));
        let plots = args
            .plots
            .clone()
            .unwrap_or_else(|| out.parent().unwrap_or_else(|| Path::new(".")).join("bench"));
        // Plot errors of this drawing are this drawing's, not the run's.
        r.errors.retain(|e| !e.starts_with("plot: "));
        write_report(&mut r, &out, &plots)?;
        eprintln!(
            "tflock-bench: redrew {} from {}",
            out.display(),
            json.display()
        );
        return Ok(());
    }
    let out = args.out.clone().unwrap_or_else(|| {
        if args.merge || (args.only.is_empty() && args.backend.is_none()) {
            PathBuf::from("docs/benchmarks.md")
        } else {
            target_dir().join("bench-partial.md")
        }
    });
    let plots = args
        .plots
        .clone()
        .unwrap_or_else(|| out.parent().unwrap_or_else(|| Path::new(".")).join("bench"));
    let base = args.dir.clone().unwrap_or_else(|| target_dir().join("tmp"));
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let work = tempfile::Builder::new()
        .prefix("tflock-bench-")
        .tempdir_in(&base)
        .context("temp dir")?;
    let backends = match args.backend.as_deref() {
        None => vec![BackendKind::Embedded, BackendKind::Redis],
        Some("embedded") => vec![BackendKind::Embedded],
        Some("redis") => vec![BackendKind::Redis],
        Some(other) => anyhow::bail!("--backend {other}: expected embedded or redis"),
    };

    eprintln!("tflock-bench: {} run, starting redis-server", plan.mode);
    let redis = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
        .await
        .context("starting redis-server")?;
    let ctx = Ctx {
        redis_addr: redis.addr().to_string(),
        redis_url: redis.url(),
        redis,
        dir: work.path().to_path_buf(),
        backends,
        only: args.only.clone(),
        work: work.path().to_path_buf(),
        plan: plan.clone(),
    };

    let mut r = Results {
        mode: plan.mode.into(),
        command: command_line(),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        settings: serde_json::json!({
            "seconds_per_measure": plan.seconds.as_secs_f64(),
            "fairness_seconds": plan.fairness.as_secs_f64(),
            "fairness_clients": FAIR_CLIENTS,
            "hold_ms": FAIR_HOLD.as_secs_f64() * 1e3,
            "handoff_hold_ms": HANDOFF_HOLD.as_secs_f64() * 1e3,
            "lock_ttl_s": api::LOCK_TTL.as_secs(),
            "starvation_threshold_ms": STARVE_THRESHOLD.as_millis() as u64,
            "max_priority_boost": STARVE_BOOST,
            "locks_listed": plan.locks,
        }),
        machine: Some(machine()),
        load_before: load_average(),
        wakeup_before: wakeup().await,
        ..Results::default()
    };

    if ctx.wants("ceiling") {
        ceilings(&ctx, &mut r).await;
    }
    for &kind in &ctx.backends {
        for surface in [Surface::Library, Surface::Http] {
            if ctx.wants("pairs") {
                let res = tflock_pairs(&ctx, kind, surface, &mut r).await;
                step(&mut r, "pairs", res);
            }
            if ctx.wants("handoff") {
                let res = tflock_handoff(&ctx, kind, surface, &mut r).await;
                step(&mut r, "hand-off", res);
            }
            if ctx.wants("fairness") {
                let res = tflock_fairness(&ctx, kind, surface, &mut r).await;
                step(&mut r, "fairness", res);
            }
            if ctx.wants("starvation") {
                let res = tflock_starvation(&ctx, kind, surface, &mut r).await;
                step(&mut r, "starvation", res);
            }
        }
        if ctx.wants("scale") {
            let res = scale(&ctx, kind, &mut r).await;
            if let Err(e) = res {
                r.errors.push(format!("scale ({}): {e:#}", kind.name()));
            }
        }
    }
    if ctx.wants("peers") {
        rslock_peers(&ctx, &mut r).await;
        python_peers(&ctx, &args, &mut r).await;
    }
    if ctx.wants("recovery") {
        let res = recovery_measure(&ctx, &mut r).await;
        step(&mut r, "recovery", res);
    }

    r.total_s = t0.elapsed().as_secs_f64();
    r.load_after = load_average();
    r.wakeup_after = wakeup().await;
    if args.merge {
        r = merged(&plots.join("results.json"), r, &ctx)?;
    }
    write_report(&mut r, &out, &plots)?;
    eprintln!(
        "tflock-bench: wrote {} and {} in {:.0} s",
        out.display(),
        plots.display(),
        r.total_s
    );
    drop(ctx);
    Ok(())
}

/// `--merge`: the report's earlier results with the measures of this run replaced.
/// The run's own header (command, date, machine) stays the earlier run's; a measure
/// that keeps its own command and date (recovery) says so in its section.
fn merged(previous: &Path, run: Results, ctx: &Ctx) -> Result<Results> {
    let text = std::fs::read_to_string(previous)
        .with_context(|| format!("--merge: reading {}", previous.display()))?;
    let mut base: Results = serde_json::from_str(&text)
        .with_context(|| format!("--merge: {} is not a results.json", previous.display()))?;
    if ctx.wants("ceiling") {
        base.disk = run.disk;
        base.scripts = run.scripts;
    }
    if ctx.wants("pairs") {
        base.pairs = run.pairs;
    }
    if ctx.wants("handoff") {
        base.handoff = run.handoff;
    }
    if ctx.wants("fairness") {
        base.fairness = run.fairness;
    }
    if ctx.wants("starvation") {
        base.starvation = run.starvation;
    }
    if ctx.wants("scale") {
        base.listing = run.listing;
        base.memory = run.memory;
        base.queue_scale = run.queue_scale;
    }
    if ctx.wants("peers") {
        base.peer_versions = run.peer_versions;
    }
    if ctx.wants("recovery") {
        base.recovery = run.recovery;
    }
    base.skipped.extend(run.skipped);
    base.errors.extend(run.errors);
    Ok(base)
}

/// The recovery measure (see [`recovery`]): standalone faults, then Sentinel
/// failovers (not in a smoke run: a failover takes seconds and five processes).
async fn recovery_measure(ctx: &Ctx, r: &mut Results) -> Result<()> {
    if !ctx.backends.contains(&BackendKind::Redis) {
        return Ok(());
    }
    let bin = recovery::ServerBinary::find()?;
    let n = ctx.plan.recovery_faults;
    eprintln!(
        "tflock-bench: recovery: {n} fault(s) of each kind, {} servers ({}), {} clients",
        recovery::SERVERS,
        bin.describe(),
        recovery::CLIENTS
    );
    let mut run = recovery::RecoveryRun {
        command: command_line(),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        mode: ctx.plan.mode.into(),
        clients: recovery::CLIENTS,
        servers: recovery::SERVERS,
        retry_ms: recovery::RETRY.as_secs_f64() * 1e3,
        rows: Vec::new(),
    };
    let dir = ctx.work.join("recovery");
    std::fs::create_dir_all(&dir)?;
    let kinds = &ctx.plan.recovery_kinds;
    if kinds
        .iter()
        .any(|k| *k != recovery::FaultKind::SentinelFailover)
    {
        match recovery::standalone(&bin, &dir, n, kinds).await {
            Ok(rows) => run.rows.extend(rows),
            Err(e) => r.errors.push(format!("recovery (standalone): {e:#}")),
        }
    }
    if kinds.contains(&recovery::FaultKind::SentinelFailover) {
        let dir = ctx.work.join("recovery-sentinel");
        std::fs::create_dir_all(&dir)?;
        match recovery::sentinel(&bin, &dir, n).await {
            Ok(row) => run.rows.push(row),
            Err(e) => r.errors.push(format!("recovery (sentinel): {e:#}")),
        }
    } else {
        r.skipped.push(Skipped {
            what: "recovery: Sentinel failover".into(),
            why: if ctx.plan.mode == "smoke" {
                "not in a smoke run".into()
            } else {
                "not in --recovery-kinds".into()
            },
        });
    }
    r.recovery = Some(run);
    Ok(())
}

/// `plots` relative to the report's directory, for links.
fn relative(plots: &Path, report_dir: &Path) -> String {
    let p = std::path::absolute(plots).unwrap_or_else(|_| plots.to_path_buf());
    let d = std::path::absolute(report_dir).unwrap_or_else(|_| report_dir.to_path_buf());
    match p.strip_prefix(&d) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => p.display().to_string(),
    }
}

fn step(r: &mut Results, what: &str, res: Result<()>) {
    if let Err(e) = res {
        eprintln!("tflock-bench: {what} failed: {e:#}");
        r.errors.push(format!("{what}: {e:#}"));
    }
}

fn command_line() -> String {
    std::env::var("TFLOCK_BENCH_COMMAND").unwrap_or_else(|_| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        format!(
            "cargo run --release -p tflock-bench --{}{}",
            if args.is_empty() { "" } else { " " },
            args.join(" ")
        )
    })
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Scheduling noise now: 2,000 wake-ups from 200 µs sleeps on a blocking thread.
async fn wakeup() -> Option<Latency> {
    tokio::task::spawn_blocking(|| Latency::of(ceiling::wakeup_lateness(2000)))
        .await
        .ok()
}

/// The 1-minute load average: how busy the machine was besides this run.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        memory_gib: mem_kib / 1024.0 / 1024.0,
        kernel: first_line("uname", &["-sr"]),
        redis: first_line("redis-server", &["--version"]),
        rustc: first_line("rustc", &["--version"]),
        python: first_line("python3", &["--version"]),
    }
}

async fn ceilings(ctx: &Ctx, r: &mut Results) {
    let dur = ctx.plan.seconds.min(Duration::from_secs(2));
    if ctx.backends.contains(&BackendKind::Embedded) {
        eprintln!("tflock-bench: ceiling: fsync and redb commits");
        let dir = ctx.dir.clone();
        // A ceiling is the best the disk does: best of three short probes each, so a
        // stall caused by other work on the machine does not lower it.
        let disk = tokio::task::spawn_blocking(move || -> Result<DiskCeiling> {
            let probe = dur / 3;
            let mut best = DiskCeiling::default();
            for _ in 0..3 {
                let (rate, lat) = ceiling::fsync_rate(&dir, probe)?;
                if rate > best.fsync_per_s {
                    best.fsync_per_s = rate;
                    best.fsync_latency = Latency::of(lat);
                }
                best.fsync_16_threads_per_s = best
                    .fsync_16_threads_per_s
                    .max(ceiling::fsync_rate_concurrent(&dir, probe, 16)?);
                best.redb_commits_per_s = best
                    .redb_commits_per_s
                    .max(ceiling::redb_commit_rate(&dir, probe)?);
            }
            Ok(best)
        })
        .await;
        match disk {
            Ok(Ok(d)) => r.disk = Some(d),
            Ok(Err(e)) => r.errors.push(format!("disk ceiling: {e:#}")),
            Err(e) => r.errors.push(format!("disk ceiling: {e}")),
        }
    }
    if !ctx.backends.contains(&BackendKind::Redis) {
        return;
    }
    eprintln!("tflock-bench: ceiling: EVALSHA loop and redis-benchmark");
    let sha = ceiling::load_script(&ctx.redis_url).await;
    let rb_ok = ceiling::redis_benchmark_available();
    if let Err(e) = &rb_ok {
        r.skipped.push(Skipped {
            what: "redis-benchmark".into(),
            why: format!("{e:#}"),
        });
    }
    for (k, &c) in CLIENTS.iter().enumerate() {
        let run = ceiling::evalsha_loop(&ctx.redis_url, c, ctx.plan.seconds);
        let lp = match with_redis_cost(Some(&ctx.redis_url), run).await {
            Ok(v) => v,
            Err(e) => {
                r.errors.push(format!("EVALSHA loop at {c}: {e:#}"));
                continue;
            }
        };
        let rb = match (&sha, &rb_ok) {
            (Ok(sha), Ok(())) => {
                let (port, sha, n) = (ctx.redis.port(), sha.clone(), ctx.plan.rb_requests[k]);
                match tokio::task::spawn_blocking(move || {
                    ceiling::redis_benchmark(port, &sha, c, n)
                })
                .await
                {
                    Ok(Ok(v)) => Some(v),
                    Ok(Err(e)) => {
                        r.errors.push(format!("redis-benchmark -c {c}: {e:#}"));
                        None
                    }
                    Err(e) => {
                        r.errors.push(format!("redis-benchmark -c {c}: {e}"));
                        None
                    }
                }
            }
            _ => None,
        };
        r.scripts.push(ScriptCeiling {
            clients: c,
            evalsha_loop_per_s: lp.0,
            redis_benchmark_per_s: rb,
            redis: lp.1,
            process_cpu_us: lp.2,
        });
    }
}

/// A fresh tflock store, and the client to drive it through `surface`.
struct Target {
    api: Arc<Api>,
    backend: SharedBackend,
    server: Option<HttpServer>,
}

impl Target {
    async fn open(
        ctx: &Ctx,
        kind: BackendKind,
        surface: Surface,
        tag: &str,
        settings: LockSettings,
        clients: usize,
    ) -> Result<Target> {
        let backend = open_backend(kind, &ctx.dir, &ctx.redis_addr, tag, settings).await?;
        let (api, server) = match surface {
            Surface::Library => (Api::Library(backend.clone()), None),
            Surface::Http => {
                let server = HttpServer::start(backend.clone()).await?;
                (Api::Http(HttpApi::new(server.addr, clients)?), Some(server))
            }
        };
        Ok(Target {
            api: Arc::new(api),
            backend,
            server,
        })
    }

    async fn close(self) {
        if let Some(s) = self.server {
            s.stop().await;
        }
        self.backend.close().await;
    }
}

fn tag(kind: BackendKind, surface: Surface, what: &str) -> String {
    let s = match surface {
        Surface::Library => "lib",
        Surface::Http => "http",
    };
    format!("{}-{s}-{what}", kind.name())
}

async fn tflock_pairs(
    ctx: &Ctx,
    kind: BackendKind,
    surface: Surface,
    r: &mut Results,
) -> Result<()> {
    let sys = System::tflock(kind.name(), surface.name());
    let settings = LockSettings::default();
    let t = Target::open(
        ctx,
        kind,
        surface,
        &tag(kind, surface, "pairs"),
        settings,
        64,
    )
    .await?;
    let mut res = Ok(());
    let url = (kind == BackendKind::Redis).then_some(ctx.redis_url.as_str());
    for c in CLIENTS {
        eprintln!("tflock-bench: pairs: {} at {c}", sys.label);
        let tag = format!("c{c}");
        let run = measure::pairs(t.api.clone(), c, ctx.plan.seconds, &tag);
        match with_redis_cost(url, run).await {
            Ok((v, redis, cpu)) => r.pairs.push(PairsRow {
                system: sys.clone(),
                clients: c,
                pairs_per_s: v,
                redis,
                process_cpu_us: cpu,
            }),
            Err(e) => {
                res = Err(e.context(format!("{} at {c}", sys.label)));
                break;
            }
        }
    }
    t.close().await;
    res
}

fn handoff_row(sys: &System, waiters: usize, c: &measure::ContendResult) -> HandoffRow {
    HandoffRow {
        system: sys.clone(),
        waiters,
        latency: Latency::of(c.handoffs.clone()),
        self_regrants: c.self_regrants,
        timeouts: c.timeouts,
        overlaps: c.overlaps,
        errors: c.errors.iter().take(5).cloned().collect(),
    }
}

async fn tflock_handoff(
    ctx: &Ctx,
    kind: BackendKind,
    surface: Surface,
    r: &mut Results,
) -> Result<()> {
    let sys = System::tflock(kind.name(), surface.name());
    for w in WAITERS {
        eprintln!("tflock-bench: hand-off: {} with {w} waiters", sys.label);
        let t = Target::open(
            ctx,
            kind,
            surface,
            &tag(kind, surface, &format!("handoff{w}")),
            LockSettings::default(),
            w,
        )
        .await?;
        let res = Resource::new("bench/handoff", format!("w{w}"), "default", "")?;
        let c = contend(
            t.api.clone(),
            res,
            ContendSpec {
                priorities: vec![Priority::Normal; w],
                hold: HANDOFF_HOLD,
                duration: ctx.plan.seconds,
                step_back: false,
                grace: GRACE,
            },
        )
        .await;
        t.close().await;
        r.handoff.push(handoff_row(&sys, w, &c));
    }
    Ok(())
}

async fn tflock_fairness(
    ctx: &Ctx,
    kind: BackendKind,
    surface: Surface,
    r: &mut Results,
) -> Result<()> {
    let sys = System::tflock(kind.name(), surface.name());
    eprintln!(
        "tflock-bench: fairness: {} with {FAIR_CLIENTS} contenders for {:?}",
        sys.label, ctx.plan.fairness
    );
    let t = Target::open(
        ctx,
        kind,
        surface,
        &tag(kind, surface, "fair"),
        LockSettings::default(),
        FAIR_CLIENTS,
    )
    .await?;
    let res = Resource::new("bench/fairness", ".", "default", "")?;
    let c = contend(
        t.api.clone(),
        res,
        ContendSpec {
            priorities: vec![Priority::Normal; FAIR_CLIENTS],
            hold: FAIR_HOLD,
            duration: ctx.plan.fairness,
            step_back: false,
            grace: GRACE,
        },
    )
    .await;
    t.close().await;
    r.fairness.push(FairnessRow::from_contention(
        sys,
        FAIR_HOLD.as_secs_f64() * 1e3,
        ctx.plan.fairness.as_secs_f64(),
        &c,
    ));
    Ok(())
}

async fn tflock_starvation(
    ctx: &Ctx,
    kind: BackendKind,
    surface: Surface,
    r: &mut Results,
) -> Result<()> {
    let sys = System::tflock(kind.name(), surface.name());
    eprintln!("tflock-bench: anti-starvation: {}", sys.label);
    let settings = LockSettings {
        starvation_threshold: STARVE_THRESHOLD,
        max_priority_boost: STARVE_BOOST,
        ..LockSettings::default()
    };
    let t = Target::open(
        ctx,
        kind,
        surface,
        &tag(kind, surface, "starve"),
        settings,
        STARVE_HIGH + 1,
    )
    .await?;
    let res = Resource::new("bench/starvation", ".", "default", "")?;
    let mut priorities = vec![Priority::High; STARVE_HIGH];
    priorities.push(Priority::Low);
    let c = contend(
        t.api.clone(),
        res,
        ContendSpec {
            priorities,
            hold: STARVE_HOLD,
            duration: ctx.plan.starvation,
            step_back: false,
            grace: GRACE,
        },
    )
    .await;
    t.close().await;
    let high: Vec<f64> = c.waits[..STARVE_HIGH].iter().flatten().copied().collect();
    r.starvation.push(StarvationRow {
        system: sys,
        high_clients: STARVE_HIGH,
        high_hold_ms: STARVE_HOLD.as_secs_f64() * 1e3,
        threshold_ms: STARVE_THRESHOLD.as_secs_f64() * 1e3,
        max_boost: STARVE_BOOST,
        bound_ms: STARVE_THRESHOLD.as_secs_f64() * 1e3 * f64::from(STARVE_BOOST),
        low_waits_ms: c.waits[STARVE_HIGH].clone(),
        high_wait_p99_ms: Latency::of(high).p99,
        errors: c.errors.iter().take(5).cloned().collect(),
    });
    Ok(())
}

/// Totals from Redis's own accounting: (commands, µs in commands, CPU seconds).
async fn redis_counters(url: &str) -> Result<(u64, u64, f64)> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    let (mut calls, mut usec) = (0u64, 0u64);
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        // The INFO calls of this helper are not the measure's.
        if line.starts_with("cmdstat_info:") {
            continue;
        }
        for kv in line.split(':').nth(1).unwrap_or("").split(',') {
            match kv.split_once('=') {
                Some(("calls", v)) => calls += v.parse::<u64>().unwrap_or(0),
                Some(("usec", v)) => usec += v.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    let field = |name: &str| -> f64 {
        cpu.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok((
        calls,
        usec,
        field("used_cpu_user:") + field("used_cpu_sys:"),
    ))
}

/// Redis's cost between two [`redis_counters`] readings, per operation.
fn redis_cost(
    before: (u64, u64, f64),
    after: (u64, u64, f64),
    ops: u64,
    wall: Duration,
) -> RedisCost {
    let ops = ops.max(1) as f64;
    RedisCost {
        commands_per_op: after.0.saturating_sub(before.0) as f64 / ops,
        usec_per_op: after.1.saturating_sub(before.1) as f64 / ops,
        cpu_share: (after.2 - before.2) / wall.as_secs_f64(),
    }
}

/// CPU seconds this process (clients, tflock, the in-process HTTP server) has used,
/// from `/proc/self/stat` (user + system, in clock ticks of 10 ms).
fn process_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Runs `f` and measures its cost: Redis's (when `url` is given) and this process's
/// CPU time per operation (µs).
async fn with_redis_cost<T>(
    url: Option<&str>,
    f: impl Future<Output = Result<(T, u64)>>,
) -> Result<(T, Option<RedisCost>, Option<f64>)> {
    let before = match url {
        Some(u) => redis_counters(u).await.ok(),
        None => None,
    };
    let cpu0 = process_cpu();
    let t = Instant::now();
    let (v, ops) = f.await?;
    let wall = t.elapsed();
    let cpu = match (cpu0, process_cpu()) {
        (Some(a), Some(b)) => Some((b - a) * 1e6 / ops.max(1) as f64),
        _ => None,
    };
    let cost = match (url, before) {
        (Some(u), Some(b)) => redis_counters(u)
            .await
            .ok()
            .map(|a| redis_cost(b, a, ops, wall)),
        _ => None,
    };
    Ok((v, cost, cpu))
}

/// Redis's `used_memory`.
async fn used_memory(url: &str) -> Result<u64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

async fn flushall(url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
    Ok(())
}

async fn scale(ctx: &Ctx, kind: BackendKind, r: &mut Results) -> Result<()> {
    let n = ctx.plan.locks;
    eprintln!("tflock-bench: scale: {} with {n} held locks", kind.name());
    if kind == BackendKind::Redis {
        // Earlier measures' keys (tokens are never deleted) would blur the figures.
        flushall(&ctx.redis_url).await?;
    }
    let before = match kind {
        BackendKind::Redis => Some(used_memory(&ctx.redis_url).await?),
        BackendKind::Embedded => None,
    };
    let t = Target::open(
        ctx,
        kind,
        Surface::Http,
        &format!("{}-scale", kind.name()),
        LockSettings {
            max_queue_size: 2 * DEPTHS[DEPTHS.len() - 1],
            ..LockSettings::default()
        },
        1,
    )
    .await?;
    let lib = Arc::new(Api::Library(t.backend.clone()));
    let outcome = async {
        let fill = measure::fill(lib.clone(), n, 64).await?;
        if let Some(before) = before {
            let after = used_memory(&ctx.redis_url).await?;
            r.memory = Some(MemoryRow {
                locks: n,
                before_bytes: before,
                after_bytes: after,
                per_lock_bytes: after.saturating_sub(before) as f64 / n as f64,
            });
        }
        let max_pages = n / 1000 + 10;
        let (lt, lseen, lpages) = measure::list_all(&lib, 1000, max_pages).await?;
        let (ht, hseen, _) = measure::list_all(&t.api, 1000, max_pages).await?;
        r.listing.push(ListingRow {
            backend: kind.name().into(),
            locks: n,
            fill_s: fill.as_secs_f64(),
            library_ms: lt.as_secs_f64() * 1e3,
            library_pages: lpages,
            library_seen: lseen,
            http_ms: Some(ht.as_secs_f64() * 1e3),
            http_seen: Some(hseen),
        });
        for d in DEPTHS {
            eprintln!("tflock-bench: scale: {} queue of {d}", kind.name());
            let (enq, ho) = measure::queue_depth(&t.backend, d, ctx.plan.queue_rounds, "q").await?;
            r.queue_scale.push(QueueScaleRow {
                backend: kind.name().into(),
                depth: d,
                enqueue: enq,
                handoff: ho,
            });
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    t.close().await;
    if kind == BackendKind::Redis {
        let _ = flushall(&ctx.redis_url).await;
    }
    outcome
}

async fn rslock_peers(ctx: &Ctx, r: &mut Results) {
    for (label, delay) in [
        ("rslock (default retry)", None),
        ("rslock (10 ms retry)", Some(Duration::from_millis(10))),
    ] {
        let sys = System::peer(label);
        let manager = || {
            let mut m = rslock::LockManager::new(vec![ctx.redis_url.clone()]);
            if let Some(d) = delay {
                m.set_retry(3, d);
            }
            Arc::new(Api::Rslock(m))
        };
        for c in CLIENTS {
            eprintln!("tflock-bench: pairs: {label} at {c}");
            let tag = format!("rslock{c}");
            let run = measure::pairs(manager(), c, ctx.plan.seconds, &tag);
            match with_redis_cost(Some(&ctx.redis_url), run).await {
                Ok((v, redis, cpu)) => r.pairs.push(PairsRow {
                    system: sys.clone(),
                    clients: c,
                    pairs_per_s: v,
                    redis,
                    process_cpu_us: cpu,
                }),
                Err(e) => r.errors.push(format!("pairs: {label} at {c}: {e:#}")),
            }
        }
        for w in WAITERS {
            eprintln!("tflock-bench: hand-off: {label} with {w} waiters");
            let res = Resource::new("bench/rslock", format!("{label}/w{w}"), "default", "");
            let Ok(res) = res else { continue };
            let c = contend(
                manager(),
                res,
                ContendSpec {
                    priorities: vec![Priority::Normal; w],
                    hold: HANDOFF_HOLD,
                    duration: ctx.plan.seconds,
                    step_back: true,
                    grace: GRACE,
                },
            )
            .await;
            r.handoff.push(handoff_row(&sys, w, &c));
        }
        eprintln!("tflock-bench: fairness: {label}");
        if let Ok(res) = Resource::new("bench/rslock", format!("{label}/fair"), "default", "") {
            let c = contend(
                manager(),
                res,
                ContendSpec {
                    priorities: vec![Priority::Normal; FAIR_CLIENTS],
                    hold: FAIR_HOLD,
                    duration: ctx.plan.fairness,
                    step_back: false,
                    grace: GRACE,
                },
            )
            .await;
            r.fairness.push(FairnessRow::from_contention(
                sys.clone(),
                FAIR_HOLD.as_secs_f64() * 1e3,
                ctx.plan.fairness.as_secs_f64(),
                &c,
            ));
        }
    }
    r.peer_versions
        .push(("rslock".into(), "0.10 (crates.io), redis-rs 1.8".into()));
}

async fn python_peers(ctx: &Ctx, args: &Args, r: &mut Results) {
    if !ctx.plan.python_peers {
        r.skipped.push(Skipped {
            what: "Python peers (redis-py Lock, python-redis-lock)".into(),
            why: if ctx.plan.mode == "smoke" {
                "--smoke skips them (no venv, no PyPI)".into()
            } else {
                "--no-python-peers".into()
            },
        });
        return;
    }
    let venv = args
        .venv
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-venv"));
    let python = match tokio::task::spawn_blocking(move || peers::ensure_venv(&venv)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            return r.skipped.push(Skipped {
                what: "Python peers (redis-py Lock, python-redis-lock)".into(),
                why: format!("the venv could not be made: {e:#}"),
            });
        }
        Err(e) => {
            return r.skipped.push(Skipped {
                what: "Python peers".into(),
                why: e.to_string(),
            });
        }
    };
    for (lib, label) in [
        ("redis-py", "redis-py Lock"),
        ("python-redis-lock", "python-redis-lock"),
    ] {
        eprintln!("tflock-bench: peers: {label} (pairs, hand-off, fairness)");
        let (python, work, port) = (python.clone(), ctx.work.clone(), ctx.redis.port());
        let plan = ctx.plan.clone();
        let run = tokio::task::spawn_blocking(move || {
            peers::run(
                &python,
                &work,
                lib,
                port,
                &peers::PyPlan {
                    seconds: plan.seconds.as_secs_f64(),
                    pairs_clients: &CLIENTS,
                    handoff_waiters: &WAITERS,
                    fairness_clients: FAIR_CLIENTS,
                    fairness_seconds: plan.fairness.as_secs_f64(),
                    hold_ms: FAIR_HOLD.as_secs_f64() * 1e3,
                    handoff_hold_ms: HANDOFF_HOLD.as_secs_f64() * 1e3,
                },
            )
        })
        .await;
        let out = match run {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                r.errors.push(format!("{label}: {e:#}"));
                continue;
            }
            Err(e) => {
                r.errors.push(format!("{label}: {e}"));
                continue;
            }
        };
        let sys = System::peer(label);
        for p in out.pairs {
            r.pairs.push(PairsRow {
                system: sys.clone(),
                clients: p.clients,
                pairs_per_s: p.pairs_per_s,
                redis: None,
                process_cpu_us: None,
            });
        }
        for (h, w) in out.handoff.into_iter().zip(WAITERS) {
            let c = h.into_result();
            r.handoff.push(handoff_row(&sys, w, &c));
        }
        let c = out.fairness.into_result();
        r.fairness.push(FairnessRow::from_contention(
            sys,
            FAIR_HOLD.as_secs_f64() * 1e3,
            ctx.plan.fairness.as_secs_f64(),
            &c,
        ));
        for (k, v) in out.versions {
            if !r.peer_versions.iter().any(|(n, _)| *n == k) {
                r.peer_versions.push((k, format!("{v} (PyPI)")));
            }
        }
        let _ = out.lib;
    }
}
