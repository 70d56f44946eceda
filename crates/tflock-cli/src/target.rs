//! What a command talks to: a tflock server over HTTP, or the configured backend
//! opened directly.
//!
//! - `--backend=embedded|redis`: that backend, opened from the configuration.
//! - else `--server URL` / `TFLOCK_SERVER`: that server.
//! - else the configured backend, opened directly.
//!
//! The embedded store is one file that one process owns. When a running server holds
//! it (`OpenError::AlreadyOpen`), the command goes through that server instead: first
//! at the configured `server.listen` address, then at the address the server recorded
//! beside the store when it started (see [`record_server_address`]). Before using a
//! server found that way, the command checks that it serves that very file. If none
//! answers, the error names the process that holds the file and every address tried.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tflock_config::Loaded;
use tflock_core::{SharedBackend, SystemClock};
use tflock_embedded::OpenError;

use crate::args::GlobalArgs;
use crate::exit::{CliResult, Failure};
use crate::http::HttpBackend;
use crate::open::{OpenFailure, Opened, open_backend};

/// How long the fallback waits for a server holding the store to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A backend a command runs against.
pub enum Target {
    Http(Arc<HttpBackend>),
    Direct(Opened),
}

impl Target {
    pub fn backend(&self) -> SharedBackend {
        match self {
            Target::Http(h) => h.clone(),
            Target::Direct(o) => o.backend.clone(),
        }
    }

    /// `server http://...` or `embedded ./file`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Http(h) => format!("server {}", h.base()),
            Target::Direct(o) => o.description.clone(),
        }
    }

    pub async fn close(&self) {
        match self {
            Target::Http(h) => tflock_core::Backend::close(h.as_ref()).await,
            Target::Direct(o) => o.close().await,
        }
    }
}

/// Opens the target the flags and configuration name.
pub async fn connect(global: &GlobalArgs, loaded: &Loaded) -> CliResult<Target> {
    if global.backend.is_none()
        && let Some(server) = &global.server
    {
        let h = HttpBackend::new(server, global.token.clone()).map_err(Failure::usage)?;
        return Ok(Target::Http(Arc::new(h)));
    }
    let el = &loaded.config.enhanced_locking;
    match open_backend(el, Arc::new(SystemClock)).await {
        Ok(o) => Ok(Target::Direct(o)),
        Err(OpenFailure::Embedded(OpenError::AlreadyOpen { path, holder })) => {
            through_holder(global, loaded, &path, &holder).await
        }
        Err(OpenFailure::Embedded(e @ OpenError::Settings(_))) => {
            Err(Failure::usage(e.to_string()))
        }
        Err(OpenFailure::Embedded(e)) => Err(Failure::unavailable(e.to_string())),
        Err(OpenFailure::Redis(e)) => Err(Failure::unavailable(format!(
            "cannot start the Redis backend: {e}"
        ))),
    }
}

/// The store is held by another process: work through its server.
async fn through_holder(
    global: &GlobalArgs,
    loaded: &Loaded,
    path: &Path,
    holder: &str,
) -> CliResult<Target> {
    let server = &loaded.config.enhanced_locking.server;
    let token = global
        .token
        .clone()
        .or_else(|| server.admin_token.clone())
        .or_else(|| server.api_token.clone());
    let mut candidates = vec![listen_url(&server.listen)];
    if let Some(recorded) = recorded_server_address(path, holder)
        && !candidates.contains(&recorded)
    {
        candidates.push(recorded);
    }
    let mut tried = Vec::new();
    for url in candidates {
        let h = match HttpBackend::new(&url, token.clone()) {
            Ok(h) => h,
            Err(e) => {
                tried.push(format!("{url} ({e})"));
                continue;
            }
        };
        if let Err(e) = h.probe(PROBE_TIMEOUT).await {
            tried.push(format!("{url} ({e})"));
            continue;
        }
        match serves_store(&h, path).await {
            Ok(()) => {
                tracing::info!(server = %url, store = %path.display(), "the store is held by a running server; working through it");
                return Ok(Target::Http(Arc::new(h)));
            }
            Err(e) => tried.push(format!("{url} ({e})")),
        }
    }
    Err(Failure::unavailable(format!(
        "the lock store {} is held by {holder}, and no tflock server serving it answered at {}. \
         Point --server (or TFLOCK_SERVER) at that process's server, or stop it to open the store directly",
        path.display(),
        tried.join(", ")
    )))
}

/// Checks that the server at `h` serves the embedded store at `path`, so a command
/// never changes another store than the one configured.
async fn serves_store(h: &HttpBackend, path: &Path) -> Result<(), String> {
    let (_, body) = h.health_report().await.map_err(|e| e.to_string())?;
    let served = [
        "/check/details/path",
        "/health/details/path",
        "/last_check/details/path",
    ]
    .iter()
    .find_map(|p| body.pointer(p))
    .and_then(Value::as_str);
    match served {
        // A relative path is relative to the server's directory, unknown here.
        None => Ok(()),
        Some(p) if Path::new(p).is_relative() => Ok(()),
        Some(p) if same_file(Path::new(p), path) => Ok(()),
        Some(p) => Err(format!("it serves the store {p}, not {}", path.display())),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `http://host:port` for a listen address; a wildcard host is reached on loopback.
pub fn listen_url(listen: &str) -> String {
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "4141"));
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        h => h,
    };
    format!("http://{host}:{port}")
}

/// The side file where `tflock server` records the address it serves a store on.
pub fn server_address_file(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".server");
    PathBuf::from(p)
}

/// Written by `tflock server` once it listens: `http://ADDR pid PID`.
pub fn record_server_address(store: &Path, url: &str) {
    let text = format!("{url} pid {}\n", std::process::id());
    if let Err(e) = std::fs::write(server_address_file(store), text) {
        tracing::warn!(error = %e, "could not record the server's address beside the store");
    }
}

/// Removes the side file at shutdown.
pub fn forget_server_address(store: &Path) {
    let _ = std::fs::remove_file(server_address_file(store));
}

/// The address recorded beside the store, when the process that recorded it is the
/// one `holder` (the store's owner file) names.
fn recorded_server_address(store: &Path, holder: &str) -> Option<String> {
    let text = std::fs::read_to_string(server_address_file(store)).ok()?;
    let (url, pid) = text.trim().split_once(" pid ")?;
    let holder_pid = holder
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)?;
    (pid.trim() == holder_pid).then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        assert_eq!(listen_url("0.0.0.0:4141"), "http://127.0.0.1:4141");
        assert_eq!(listen_url("127.0.0.1:80"), "http://127.0.0.1:80");
        assert_eq!(listen_url("[::]:9"), "http://[::1]:9");
    }

    #[test]
    fn the_recorded_address_counts_only_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("l.redb");
        std::fs::write(server_address_file(&store), "http://127.0.0.1:9 pid 42\n").unwrap();
        assert_eq!(
            recorded_server_address(&store, "pid 42 on host since 2026-01-01T00:00:00Z").as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(
            recorded_server_address(&store, "pid 43 on host since x"),
            None
        );
    }
}
