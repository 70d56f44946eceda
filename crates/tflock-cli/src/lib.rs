//! The `tflock` command line: `tflock server`, the `tflock locks ...` commands,
//! `tflock run`, `tflock health`, `tflock state ...`, `tflock config ...` and
//! `tflock completions`.
//!
//! The binary (`src/main.rs` of the workspace root) only calls [`main`].
//!
//! # Layout
//!
//! - [`args`]: every command and flag (clap derive), named as the spec writes them.
//! - [`exit`]: the documented exit codes and [`exit::Failure`], the one error type.
//! - [`open`]: a loaded configuration to a running backend (embedded or Redis, behind
//!   the circuit breaker, with its health monitor).
//! - [`http`]: [`http::HttpBackend`], the `Backend` contract over the HTTP API.
//! - [`target`]: which backend a command runs against (`--backend`, `--server`, the
//!   configured one, or the server holding the embedded store).
//! - [`output`]: tables, JSON and YAML.
//! - `cmd`: one module per command group.
//!
//! Every command runs against a `SharedBackend`, so the HTTP client and the direct
//! backends share one implementation of each command.

pub mod args;
pub mod exit;
pub mod http;
pub mod open;
pub mod output;
pub mod target;

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use tflock_config::{Loaded, Sources};

use crate::args::{Cli, Command, GlobalArgs, OutputFormat};
use crate::exit::{CliResult, Exit, Failure};
use crate::output::Out;

/// Parses the process's arguments, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // Help and version are successes; everything else is a usage error (2).
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { 0 });
        }
    };
    let format = cli.global.format();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tflock: cannot start the async runtime: {e}");
            return Exit::Error.into();
        }
    };
    let result = runtime.block_on(run(cli));
    // Background tasks (health monitor, event readers) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            report(&f, format);
            f.exit.into()
        }
    }
}

/// Prints a failure: always on stderr; with `--json` also as `{"error": ...}` on stdout.
fn report(f: &Failure, format: OutputFormat) {
    // `{:#}`-like single line; no backtrace: these are operator errors, not bugs.
    eprintln!("tflock: {}", f.message);
    if format == OutputFormat::Json {
        let code = f.code.map(|c| c.as_str()).unwrap_or(match f.exit {
            Exit::Usage => "invalid_request",
            Exit::Unavailable => "backend_unavailable",
            Exit::NotAcquired => "not_acquired",
            _ => "error",
        });
        println!(
            "{}",
            json!({"error": {"code": code, "message": f.message, "exit_code": f.exit as u8}})
        );
    }
}

async fn run(cli: Cli) -> CliResult<u8> {
    if let Command::Run(args) = cli.command {
        let loaded = load(&cli.global, serde_json::Value::Null, false)?;
        return cmd::run::run(&cli.global, &loaded, args).await;
    }
    dispatch(cli).await.map(|e| e as u8)
}

async fn dispatch(cli: Cli) -> CliResult<Exit> {
    let out = Out {
        format: cli.global.format(),
    };
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tflock", &mut std::io::stdout());
            Ok(Exit::Success)
        }
        Command::Config(c) => cmd::config::run(&cli.global, c, out),
        Command::Server(args) => cmd::server::run(&cli.global, args).await,
        Command::Health => {
            let loaded = load(&cli.global, serde_json::Value::Null, false)?;
            cmd::health::run(&cli.global, &loaded, out).await
        }
        Command::Cluster(c) => {
            let loaded = load(&cli.global, serde_json::Value::Null, false)?;
            cmd::cluster::run(&cli.global, &loaded, c, out).await
        }
        Command::Locks(c) => {
            let loaded = load(&cli.global, serde_json::Value::Null, false)?;
            cmd::locks::run(&cli.global, &loaded, c, out).await
        }
        Command::Admin(c) => {
            let loaded = load(&cli.global, serde_json::Value::Null, false)?;
            cmd::admin::run(&loaded, c, out).await
        }
        Command::State(c) => {
            let loaded = load(&cli.global, serde_json::Value::Null, false)?;
            cmd::state::run(&cli.global, &loaded, c, out).await
        }
        Command::Run(_) => unreachable!("handled by run"),
    }
}

/// Loads the configuration (flags > environment > file > defaults) with `flags`
/// (shaped like the file) plus `--backend`, then starts logging: at the configured
/// level for the server, at `warn` for other commands (`RUST_LOG` overrides both).
pub(crate) fn load(
    global: &GlobalArgs,
    mut flags: serde_json::Value,
    server: bool,
) -> CliResult<Loaded> {
    if let Some(b) = global.backend {
        if flags.is_null() {
            flags = json!({});
        }
        flags["enhanced_locking"]["backend"] = json!(b.as_str());
    }
    let sources = Sources::standard(global.config.clone(), flags);
    let loaded = tflock_config::load(&sources)?;
    let level = if server {
        loaded.config.log_level.clone()
    } else {
        "warn".to_string()
    };
    init_logging(&level);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
}
