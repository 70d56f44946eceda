//! The Python peers: a venv under the target directory with `redis` (redis-py) and
//! `python-redis-lock` from PyPI, made at bench time, and `peers/peers.py` driving
//! them. Any failure here skips the Python peers with a note; it never fails the run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::measure::ContendResult;

/// The driver, compiled in so the binary works from any directory.
pub const PEERS_PY: &str = include_str!("../peers/peers.py");

/// The PyPI packages the driver needs.
pub const PACKAGES: [&str; 2] = ["redis", "python-redis-lock"];

/// Makes (or reuses) the venv at `dir`; returns its python.
pub fn ensure_venv(dir: &Path) -> Result<PathBuf> {
    let python = dir.join("bin").join("python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import redis, redis_lock"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && ready(&python) {
        return Ok(python);
    }
    let host = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| anyhow!("no python3 on PATH"))?;
    eprintln!("tflock-bench: making the peers' venv at {}", dir.display());
    run_bounded(
        Command::new(host).args(["-m", "venv"]).arg(dir),
        Duration::from_secs(120),
    )
    .context("python3 -m venv")?;
    let pip = dir.join("bin").join("pip");
    run_bounded(
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PACKAGES),
        Duration::from_secs(300),
    )
    .context("pip install redis python-redis-lock")?;
    if !ready(&python) {
        bail!("the venv was made but cannot import redis and redis_lock");
    }
    Ok(python)
}

/// Runs `cmd` to completion within `limit` (killed after), failing on a non-zero exit.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut o) = stdout {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{status}: {}", err.trim());
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
pub struct PyPairs {
    pub clients: usize,
    pub pairs_per_s: f64,
}

#[derive(Debug, Deserialize)]
pub struct PyContention {
    pub counts: Vec<u64>,
    pub waits_ms: Vec<Vec<f64>>,
    pub handoffs_ms: Vec<f64>,
    pub holds_ms: Vec<f64>,
    pub self_regrants: u64,
    pub timeouts: u64,
    #[serde(default)]
    pub overlaps: u64,
    pub errors: Vec<String>,
}

impl PyContention {
    pub fn into_result(self) -> ContendResult {
        ContendResult {
            counts: self.counts,
            waits: self.waits_ms,
            handoffs: self.handoffs_ms,
            self_regrants: self.self_regrants,
            holds: self.holds_ms,
            timeouts: self.timeouts,
            overlaps: self.overlaps,
            errors: self.errors,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PyRun {
    pub lib: String,
    pub versions: std::collections::BTreeMap<String, String>,
    pub pairs: Vec<PyPairs>,
    pub handoff: Vec<PyContention>,
    pub fairness: PyContention,
}

/// What to ask the driver for.
pub struct PyPlan<'a> {
    pub seconds: f64,
    pub pairs_clients: &'a [usize],
    pub handoff_waiters: &'a [usize],
    pub fairness_clients: usize,
    pub fairness_seconds: f64,
    pub hold_ms: f64,
    pub handoff_hold_ms: f64,
}

fn join(v: &[usize]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the driver for `lib` against Redis on `port`.
pub fn run(python: &Path, script_dir: &Path, lib: &str, port: u16, plan: &PyPlan) -> Result<PyRun> {
    let script = script_dir.join("peers.py");
    std::fs::write(&script, PEERS_PY)?;
    let budget = plan.seconds * (plan.pairs_clients.len() + plan.handoff_waiters.len()) as f64
        + plan.fairness_seconds
        + 20.0 * (1 + plan.handoff_waiters.len()) as f64
        + 120.0;
    let out = run_bounded(
        Command::new(python)
            .arg(&script)
            .args(["--lib", lib, "--port", &port.to_string()])
            .args(["--seconds", &plan.seconds.to_string()])
            .args(["--pairs-clients", &join(plan.pairs_clients)])
            .args(["--handoff-waiters", &join(plan.handoff_waiters)])
            .args(["--fairness-clients", &plan.fairness_clients.to_string()])
            .args(["--fairness-seconds", &plan.fairness_seconds.to_string()])
            .args(["--hold-ms", &plan.hold_ms.to_string()])
            .args(["--handoff-hold-ms", &plan.handoff_hold_ms.to_string()]),
        Duration::from_secs_f64(budget),
    )
    .with_context(|| format!("peers.py --lib {lib}"))?;
    serde_json::from_str(out.trim()).with_context(|| format!("peers.py --lib {lib}: its JSON"))
}
