//! `tflock`: the command-line entry point. It parses flags and environment into a
//! [`Config`], opens the embedded store, and runs `tflock_server::serve` until SIGINT or
//! SIGTERM. Everything else lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tflock_core::{LockSettings, SharedBackend, SystemClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_server::{AppState, Secret, Tokens};

/// How long shutdown waits for requests in flight before closing the store anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "tflock",
    version,
    about = "Fair, fenced, distributed locks for Terraform automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP lock server on the embedded store (no Redis needed).
    Server(ServerArgs),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address to listen on (host:port). Without an API token only a loopback address
    /// is accepted.
    #[arg(
        long,
        env = "ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN",
        default_value = "127.0.0.1:4141"
    )]
    listen: String,

    /// The embedded store's file; its directory is created when missing.
    #[arg(
        long,
        env = "ATLANTIS_ENHANCED_LOCKING_EMBEDDED_PATH",
        default_value = "./tflock-data/locks.redb"
    )]
    data: PathBuf,

    /// Bearer token for mutating calls. Prefer the environment variable: a flag is
    /// visible to every user in the process list.
    #[arg(
        long,
        env = "ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,

    /// Bearer token for admin calls (force release and transfer, release-pull).
    #[arg(
        long,
        env = "ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
}

/// The server's settings after flags and environment are read and checked. A config
/// file (`--config`, `tflock.yaml`) will fill the same struct.
#[derive(Debug)]
struct Config {
    listen: String,
    data: PathBuf,
    tokens: Tokens,
    settings: LockSettings,
}

impl Config {
    fn from_args(args: ServerArgs) -> anyhow::Result<Self> {
        let token = |name: &str, value: Option<String>| -> anyhow::Result<Option<Secret>> {
            match value {
                None => Ok(None),
                Some(v) => match Secret::new(v) {
                    Some(s) => Ok(Some(s)),
                    None => bail!("{name} is set but empty; unset it or give a token"),
                },
            }
        };
        Ok(Config {
            listen: args.listen,
            data: args.data,
            tokens: Tokens {
                api: token("the API token", args.api_token)?,
                admin: token("the admin token", args.admin_token)?,
            },
            settings: LockSettings::default(),
        })
    }

    /// The addresses `listen` names, refused when they are not all loopback and no API
    /// token protects the mutating calls.
    async fn listen_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.listen)
            .await
            .with_context(|| format!("cannot resolve the listen address '{}'", self.listen))?
            .collect();
        if addrs.is_empty() {
            bail!("the listen address '{}' resolves to nothing", self.listen);
        }
        if self.tokens.api.is_none()
            && let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback())
        {
            bail!(
                "refusing to listen on {open} without an API token: anyone who can reach it \
                     could take and release locks. Set ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN \
                     (and ..._ADMIN_TOKEN), or listen on a loopback address such as 127.0.0.1:4141"
            );
        }
        Ok(addrs)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tflock: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => run_server(Config::from_args(args)?).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line; no backtrace, whatever
            // RUST_BACKTRACE says: these are operator errors, not bugs.
            eprintln!("tflock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_server(config: Config) -> anyhow::Result<()> {
    let addrs = config.listen_addrs().await?;
    let listener = tokio::net::TcpListener::bind(&addrs[..])
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;

    let backend = EmbeddedBackend::open(
        EmbeddedConfig {
            path: config.data.clone(),
            settings: config.settings.clone(),
        },
        Arc::new(SystemClock),
    )
    .await
    .context("cannot open the embedded store")?;
    let backend: SharedBackend = backend;

    match (&config.tokens.api, &config.tokens.admin) {
        (None, None) => tracing::warn!(
            "no API token configured: mutating calls are unauthenticated (allowed because \
             the server listens on loopback only)"
        ),
        (None, Some(_)) => tracing::warn!(
            "no API token configured: mutating calls are unauthenticated; admin calls need the admin token"
        ),
        (Some(_), None) => tracing::info!("no admin token configured: admin calls are disabled"),
        (Some(_), Some(_)) => tracing::info!("API and admin tokens configured"),
    }
    tracing::info!(
        listen = %local,
        store = %config.data.display(),
        backend = backend.name(),
        version = env!("CARGO_PKG_VERSION"),
        "tflock server listening"
    );

    let state = AppState::new(backend.clone(), config.tokens);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(tflock_server::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));

    let result = tokio::select! {
        r = &mut server => {
            // The server ended without being asked to: report why.
            r.context("the server task failed")?.context("the server failed")
        }
        signal = shutdown_signal() => {
            tracing::info!(signal = signal?, "shutting down");
            let _ = stop_tx.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r.context("the server task failed")?.context("the server failed"),
                Err(_) => {
                    tracing::warn!("requests still open after {SHUTDOWN_GRACE:?}; closing anyway");
                    server.abort();
                    Ok(())
                }
            }
        }
    };
    backend.close().await;
    tracing::info!("store closed");
    result
}

/// Completes on SIGINT or SIGTERM, naming which.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("cannot watch SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot watch Ctrl-C")?;
        Ok("Ctrl-C")
    }
}
