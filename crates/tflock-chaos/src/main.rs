//! `tflock-chaos`: `run` a chaos run, be one `client` process of a run, or `check` a
//! history directory again. Started under the name `tflock` (argv[0]) it is `tflock`
//! itself (`tflock_cli::main`, exactly what `src/main.rs` of the `tflock` binary calls),
//! so the suite always has a server binary built from the current sources.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tflock_chaos::client::{self, ClientOptions};
use tflock_chaos::harness::Topology;
use tflock_chaos::nemesis::Fault;
use tflock_chaos::run::{self, RunOptions};
use tflock_chaos::{checker, history, report};

#[derive(Parser)]
#[command(
    name = "tflock-chaos",
    about = "History-checking chaos runs against tflock servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run: deployment, clients, nemesis, checker, report. Exit 1 on a violation.
    Run {
        #[arg(long, default_value = "standalone")]
        topology: Topology,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long clients run (e.g. 60s, 10m).
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        duration: Duration,
        /// Total operations over all clients (the run ends at the first of the two).
        #[arg(long, default_value_t = u64::MAX)]
        ops: u64,
        #[arg(long, default_value_t = 6)]
        clients: usize,
        #[arg(long, default_value_t = 3)]
        servers: usize,
        #[arg(long, default_value_t = 4)]
        resources: usize,
        #[arg(long, default_value_t = 3000)]
        ttl_ms: u64,
        /// Comma-separated fault kinds (default: all the topology supports).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<String>,
        /// Keep history and report here (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// One client process (started by `run`).
    Client {
        #[arg(long)]
        id: usize,
        #[arg(long)]
        seed: u64,
        #[arg(long, value_delimiter = ',')]
        servers: Vec<String>,
        #[arg(long)]
        history: PathBuf,
        #[arg(long)]
        until: u64,
        #[arg(long)]
        max_ops: u64,
        #[arg(long)]
        ttl_ms: u64,
        #[arg(long)]
        resources: usize,
    },
    /// Check a run's directory again and print its report.
    Check { dir: PathBuf },
}

/// Exit 1 when a report found violations, else success.
fn verdict(violations: usize) -> ExitCode {
    if violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    })
}

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&arg0)
        .file_name()
        .is_some_and(|n| n == "tflock")
    {
        return tflock_cli::main();
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            topology,
            seed,
            duration,
            ops,
            clients,
            servers,
            resources,
            ttl_ms,
            faults,
            dir,
        } => {
            let mut kinds = Vec::new();
            for f in &faults {
                match Fault::parse(f) {
                    Some(k) => kinds.push(k),
                    None => {
                        eprintln!("unknown fault {f:?}");
                        return ExitCode::from(2);
                    }
                }
            }
            let o = RunOptions {
                topology,
                seed,
                duration,
                ops,
                clients,
                servers,
                resources,
                ttl_ms,
                faults: kinds,
                dir,
                chaos_exe: std::env::current_exe().expect("own path"),
            };
            match run::run(&o) {
                Ok(out) => {
                    print!("{}", out.report.text());
                    println!("history and report: {}", out.dir.display());
                    verdict(out.report.violation_count())
                }
                Err(e) => {
                    eprintln!("chaos run failed: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Client {
            id,
            seed,
            servers,
            history,
            until,
            max_ops,
            ttl_ms,
            resources,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let o = ClientOptions {
                id,
                seed,
                servers,
                history,
                until,
                max_ops,
                ttl_ms,
                resources,
            };
            match rt.block_on(client::run(o)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("client {id}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Check { dir } => {
            let h = match history::read_dir(&dir) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("{}: {e}", dir.display());
                    return ExitCode::from(2);
                }
            };
            let f = checker::check(&h);
            let r = report::build(&h, &f);
            print!("{}", r.text());
            verdict(r.violation_count())
        }
    }
}
