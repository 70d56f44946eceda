//! A tflock server for tools and people poking at the API: the embedded store in a
//! temporary directory (or Redis), behind a circuit breaker with its health monitor,
//! optional tokens and webhooks. `scripts/schemathesis` runs it.
//!
//! ```text
//! cargo run -p tflock-server --example dev_server -- --listen 127.0.0.1:4141
//! TFLOCK_API_TOKEN=a TFLOCK_ADMIN_TOKEN=b cargo run -p tflock-server --example dev_server
//! cargo run -p tflock-server --example dev_server -- --redis 127.0.0.1:6379
//! ```
//!
//! It prints `listening on <addr>` on stdout once it accepts connections (and writes
//! the address to `--addr-file` when given), and stops on SIGINT, SIGTERM or when
//! stdin closes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tflock_core::{LockSettings, SharedBackend, SystemClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_health::{BreakerSettings, GuardedBackend, Health, spawn_monitor};
use tflock_server::{AppState, Limits, Secret, Tokens, WebhookConfig, serve};
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Write the bound address to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Use Redis at this address instead of the embedded store.
    #[arg(long)]
    redis: Option<String>,
    /// Longest wait a waiting acquire may ask for (also the store's max_timeout).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    /// Post every event to this URL (repeatable).
    #[arg(long)]
    webhook: Vec<String>,
    /// Stop when stdin reaches end of file (for scripts that start this in the
    /// background).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let settings = LockSettings {
        max_timeout: args.max_wait,
        default_timeout: args.max_wait.min(LockSettings::default().default_timeout),
        ..LockSettings::default()
    };
    let dir = tempfile::tempdir()?;
    let inner: SharedBackend = match &args.redis {
        None => {
            EmbeddedBackend::open(
                EmbeddedConfig {
                    path: dir.path().join("locks.redb"),
                    settings,
                },
                Arc::new(SystemClock),
            )
            .await?
        }
        Some(addr) => {
            let config = tflock_redis::RedisConfig {
                key_prefix: format!("tflock-dev:{}:", tflock_core::random_hex(4)),
                ..tflock_redis::RedisConfig::standalone(addr.clone())
            };
            tflock_redis::RedisBackend::connect(config, settings, Arc::new(SystemClock)).await?
        }
    };
    let health = Arc::new(Health::new(
        inner.name(),
        BreakerSettings::default(),
        true,
        Arc::new(SystemClock),
    ));
    let monitor = spawn_monitor(
        inner.clone(),
        health.clone(),
        Duration::from_secs(5),
        Duration::from_secs(2),
    );
    let backend: SharedBackend = Arc::new(GuardedBackend::new(inner.clone(), health.clone()));
    let tokens = Tokens {
        api: std::env::var("TFLOCK_API_TOKEN").ok().and_then(Secret::new),
        admin: std::env::var("TFLOCK_ADMIN_TOKEN")
            .ok()
            .and_then(Secret::new),
    };
    let mut state = AppState::new(backend, tokens)
        .with_health(health)
        .with_limits(Limits {
            max_wait: args.max_wait,
            ..Limits::default()
        });
    // Terraform's http backend (`/tf/...`, `/api/v1/states`) on a state file beside the
    // embedded store, so schemathesis covers the state views too.
    let states = tflock_tfstate::EmbeddedStates::open(
        &dir.path().join("locks.redb.tfstate"),
        tflock_tfstate::StoreOptions::default(),
    )?;
    state = state.with_terraform(tflock_server::terraform::TerraformConfig::new(Arc::new(
        states,
    )));
    if !args.webhook.is_empty() {
        let config = WebhookConfig::new(
            args.webhook.clone(),
            std::env::var("TFLOCK_WEBHOOK_SECRET")
                .ok()
                .and_then(Secret::new),
        );
        config.validate()?;
        state = state.with_webhooks(config);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.addr_file {
        std::fs::write(path, addr.to_string())?;
    }
    println!("listening on {addr}");
    let exit_on_eof = args.exit_on_stdin_eof;
    serve(listener, state, async move {
        let stdin_closed = async {
            if exit_on_eof {
                let mut buf = [0u8; 64];
                let mut stdin = tokio::io::stdin();
                while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated() => {}
            () = stdin_closed => {}
        }
    })
    .await?;
    monitor.abort();
    inner.close().await;
    Ok(())
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
