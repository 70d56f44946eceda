//! One chaos run, end to end: start the deployment, start the client processes, let the
//! nemesis loose, wait, then merge the histories, check them and write the report.
//!
//! It owns the run's lifecycle and its directory (`c*.jsonl`, `faults.jsonl`,
//! `server*.log`, `report.txt`, `report.json`); every process it starts is killed when
//! it returns or unwinds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::checker;
use crate::clock::{ms, now_ns};
use crate::harness::{Deployment, ServerBinary, Topology};
use crate::history::{self, Writer};
use crate::nemesis::{Fault, Nemesis};
use crate::report::{self, Report};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub topology: Topology,
    pub seed: u64,
    pub duration: Duration,
    /// Total operations over all clients (each stops at its share or at the deadline).
    pub ops: u64,
    pub clients: usize,
    pub servers: usize,
    pub resources: usize,
    pub ttl_ms: u64,
    /// Fault kinds; empty: every kind the topology supports.
    pub faults: Vec<Fault>,
    /// Where the history and report go; `None`: a temporary directory, removed after.
    pub dir: Option<PathBuf>,
    /// The `tflock-chaos` binary (clients are it, run as `client`).
    pub chaos_exe: PathBuf,
}

pub struct Outcome {
    pub report: Report,
    pub dir: PathBuf,
    pub faults_injected: u64,
}

/// Kills the client processes if the run unwinds.
struct Clients(Vec<Child>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(o: &RunOptions) -> std::io::Result<Outcome> {
    let tmp;
    let dir: PathBuf = match &o.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("tflock-chaos-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    let binary = ServerBinary::find(&o.chaos_exe);
    eprintln!(
        "chaos: {} seed {} servers via {}{}, dir {}",
        o.topology,
        o.seed,
        binary.path.display(),
        binary
            .arg0
            .as_deref()
            .map_or(String::new(), |a| format!(" (as {a})")),
        dir.display()
    );
    let deployment = Deployment::start(o.topology, o.servers, &dir, &binary, o.ttl_ms);
    let kinds = if o.faults.is_empty() {
        Fault::for_topology(o.topology)
    } else {
        o.faults
            .iter()
            .copied()
            .filter(|f| f.allowed_on(o.topology))
            .collect()
    };
    let until = now_ns() + u64::try_from(o.duration.as_nanos()).unwrap_or(u64::MAX);
    let per_client = o.ops.div_ceil(o.clients as u64).max(1);
    let urls = deployment.urls().join(",");
    let mut clients = Clients(Vec::new());
    for i in 0..o.clients {
        let mut cmd = Command::new(&o.chaos_exe);
        cmd.arg("client")
            .args(["--id", &i.to_string()])
            .args(["--seed", &o.seed.to_string()])
            .args(["--servers", &urls])
            .arg("--history")
            .arg(dir.join(format!("c{i}.jsonl")))
            .args(["--until", &until.to_string()])
            .args(["--max-ops", &per_client.to_string()])
            .args(["--ttl-ms", &o.ttl_ms.to_string()])
            .args(["--resources", &o.resources.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("c{i}.log")))?);
        clients.0.push(tflock_testkit::spawn_child(cmd)?);
    }
    let stop = AtomicBool::new(false);
    let faults = std::thread::scope(|scope| -> std::io::Result<u64> {
        let nemesis = scope.spawn(|| -> std::io::Result<u64> {
            if kinds.is_empty() {
                return Ok(0);
            }
            let out = Writer::create(&dir.join("faults.jsonl"))?;
            // The last fault heals before clients stop, so their drain finds a whole
            // deployment.
            let mut n = Nemesis::new(
                &deployment,
                kinds.clone(),
                o.seed,
                out,
                until.saturating_sub(ms(2_000)),
            );
            n.stop = Some(&stop);
            n.run()
        });
        // Clients end at their deadline or op count, then drain (bounded to 60 s).
        let hard = until + ms(180_000);
        for c in &mut clients.0 {
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if now_ns() > hard {
                    eprintln!("chaos: client {} did not finish; killing it", c.id());
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        stop.store(true, Ordering::SeqCst);
        nemesis.join().expect("the nemesis panicked")
    })?;
    drop(clients);
    drop(deployment);
    let history = history::read_dir(&dir)?;
    let findings = checker::check(&history);
    let report = report::build(&history, &findings);
    std::fs::write(dir.join("report.txt"), report.text())?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(&report).expect("a report serialises"),
    )?;
    let dir = match o.dir {
        Some(_) => dir,
        None => {
            // Keep the evidence of a failed run.
            if report.violation_count() > 0 {
                let keep =
                    std::env::temp_dir().join(format!("tflock-chaos-{}-{}", o.topology, o.seed));
                let _ = copy_dir(&dir, &keep);
                keep
            } else {
                dir
            }
        }
    };
    Ok(Outcome {
        report,
        dir,
        faults_injected: faults,
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}
