//! `tflock state list|show|pull|rollback`: the Terraform states a server's `http`
//! state backend keeps (`/tf/{name}`, docs/terraform.md).
//!
//! States live only in the server's Terraform backend (not in the lock store that
//! `--backend` opens), so these commands always go through a server: `--server` /
//! `TFLOCK_SERVER` with `--token` / `TFLOCK_TOKEN`; else the configured
//! `server.listen`, then the address a server recorded beside the embedded store, with
//! `--token`, else the configured admin token, else the API token (as the other
//! commands find the server holding the store, `target.rs`).
//!
//! - `list`: `GET /api/v1/states`; `show`: `GET /api/v1/state?name=`. Machine formats
//!   print those answers as the server wrote them.
//! - `pull`: `GET /tf/{name}[?version=V]`, the document byte for byte.
//! - `rollback`: `POST /api/v1/state/rollback` (admin); 423 (the state is locked) exits
//!   3, like a lock that is held; other refusals exit with their code's exit code.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tflock_config::Loaded;
use tflock_core::{ErrorCode, Timestamp};
use tflock_tfstate::VersionMeta;

use crate::args::{GlobalArgs, StateCommand};
use crate::exit::{CliResult, Exit, Failure};
use crate::http::HttpBackend;
use crate::output::{Out, table, when};
use crate::target::{listen_url, server_address_file};

/// How long finding the configured server may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one call (a pull of a large state included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why these commands need a server, for every "no server" message.
const ONLY_SERVER: &str = "Terraform states are kept only by a tflock server's Terraform \
     backend (/tf/NAME), so `tflock state` works through a server";

pub async fn run(
    global: &GlobalArgs,
    loaded: &Loaded,
    command: StateCommand,
    out: Out,
) -> CliResult<Exit> {
    let client = Client::connect(global, loaded).await?;
    match command {
        StateCommand::List => list(&client, out).await,
        StateCommand::Show { name } => show(&client, &name, out).await,
        StateCommand::Pull { name, version, out } => {
            pull(&client, &name, version, out.as_deref()).await
        }
        StateCommand::Rollback { name, version } => rollback(&client, &name, version, out).await,
    }
}

// ----- the server -----

/// A tflock server's state endpoints.
struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// The API's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: tflock_core::Error,
}

impl Client {
    fn new(base: &str, token: Option<String>) -> CliResult<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("tflock-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::error(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            base: base.to_string(),
            http,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The server the flags or the configuration name.
    async fn connect(global: &GlobalArgs, loaded: &Loaded) -> CliResult<Client> {
        if global.backend.is_some() && global.server.is_none() {
            return Err(Failure::usage(format!(
                "{ONLY_SERVER}: --backend opens the lock store, which holds no states; \
                 use --server URL (or TFLOCK_SERVER)"
            )));
        }
        if let Some(server) = &global.server {
            let h = HttpBackend::new(server, None).map_err(Failure::usage)?;
            return Client::new(h.base(), global.token.clone());
        }
        let el = &loaded.config.enhanced_locking;
        let token = global
            .token
            .clone()
            .or_else(|| el.server.admin_token.clone())
            .or_else(|| el.server.api_token.clone());
        let mut candidates = vec![listen_url(&el.server.listen)];
        if let Some(recorded) = recorded_address(&el.embedded.path)
            && !candidates.contains(&recorded)
        {
            candidates.push(recorded);
        }
        let mut tried = Vec::new();
        for url in candidates {
            let h = match HttpBackend::new(&url, None) {
                Ok(h) => h,
                Err(e) => {
                    tried.push(format!("{url} ({e})"));
                    continue;
                }
            };
            match h.probe(PROBE_TIMEOUT).await {
                Ok(()) => return Client::new(h.base(), token),
                Err(e) => tried.push(format!("{url} ({e})")),
            }
        }
        Err(Failure::unavailable(format!(
            "no tflock server answered at {}. {ONLY_SERVER}: start `tflock server`, or point \
             --server (or TFLOCK_SERVER) at one",
            tried.join(", ")
        )))
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(CALL_TIMEOUT);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// Sends `rb`; a success's headers and body, or the server's refusal as a failure.
    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> CliResult<(reqwest::header::HeaderMap, Vec<u8>)> {
        let resp = rb.send().await.map_err(|e| {
            Failure::unavailable(format!(
                "cannot reach the tflock server at {}: {}. {ONLY_SERVER}",
                self.base,
                crate::http::describe_reqwest(&e)
            ))
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| {
            Failure::unavailable(format!(
                "the tflock server at {} broke off its answer to {what}: {}",
                self.base,
                crate::http::describe_reqwest(&e)
            ))
        })?;
        if status.is_success() {
            return Ok((headers, bytes.to_vec()));
        }
        Err(refusal(&self.base, what, status, &bytes))
    }

    async fn json(&self, rb: reqwest::RequestBuilder, what: &str) -> CliResult<Value> {
        let (_, bytes) = self.send(rb, what).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Failure::error(format!(
                "{} answered {what} with something that is not JSON: {e}",
                self.base
            ))
        })
    }
}

/// The address `tflock server` recorded beside the embedded store (`<store>.server`:
/// `http://ADDR pid PID`), when there is one.
fn recorded_address(store: &Path) -> Option<String> {
    let text = std::fs::read_to_string(server_address_file(store)).ok()?;
    let (url, _) = text.trim().split_once(" pid ")?;
    Some(url.trim().to_string())
}

/// A refusal as a failure: the server's error with its code's exit code; 423 (the
/// state is locked, a LockInfo body) exit 3.
fn refusal(base: &str, what: &str, status: StatusCode, bytes: &[u8]) -> Failure {
    if status == StatusCode::LOCKED {
        let info: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let id = info["ID"].as_str().unwrap_or("(no lock information)");
        return Failure {
            exit: Exit::NotAcquired,
            message: format!(
                "refused, the state is locked: ID={id}. Wait for its lock to end, or release \
                 it with `terraform force-unlock -force ID` (admin token as the backend's \
                 password)"
            ),
            code: None,
        };
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(ErrorBody { error: e }) => {
            let mut message = match &e.field {
                Some(f) if !e.message.starts_with(f.as_str()) => format!("{f}: {}", e.message),
                _ => e.message.clone(),
            };
            match e.code {
                ErrorCode::Unauthorized | ErrorCode::Forbidden => message.push_str(
                    " (give the token with --token or TFLOCK_TOKEN; rollback needs the admin token)",
                ),
                ErrorCode::NotFound if e.message.starts_with("no route for") => {
                    message.push_str(&format!(
                        " ({base} has no Terraform backend: is it an older tflock?)"
                    ))
                }
                ErrorCode::BackendUnavailable => {
                    message.push_str(" (retry later, or check `tflock health`)")
                }
                _ => {}
            }
            Failure {
                exit: Exit::of(e.code),
                message,
                code: Some(e.code),
            }
        }
        Err(_) if status == StatusCode::SERVICE_UNAVAILABLE => {
            Failure::unavailable(format!("{base} answered {what} with {status}"))
        }
        Err(_) => Failure::error(format!(
            "{base} answered {what} with {status} and no tflock error (is it a tflock server?)"
        )),
    }
}

/// `/tf/` + the name, each segment percent-encoded, its slashes kept.
fn state_path(name: &str) -> String {
    let mut out = String::from("/tf/");
    for (i, seg) in name.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

// ----- the answers -----

/// `StateView` of `GET /api/v1/states` and `GET /api/v1/state`.
#[derive(Debug, Deserialize)]
struct StateView {
    name: String,
    #[serde(default)]
    current: Option<VersionMeta>,
    #[serde(default)]
    versions: u64,
    #[serde(default)]
    lock: Option<StateLock>,
}

#[derive(Debug, Deserialize)]
struct StateLock {
    id: String,
    owner: String,
    fencing_token: u64,
    #[serde(default)]
    info: Value,
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> CliResult<T> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Failure::error(format!(
            "the server's answer to {what} is not what this tflock reads: {e}"
        ))
    })
}

/// `written_at_ms` to the second, UTC.
fn at(ms: u64) -> String {
    when(Timestamp::from_micros(ms.saturating_mul(1000)))
}

/// A size for people: bytes, KiB, MiB.
fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

fn locked_by(l: &StateLock) -> String {
    format!("{} (lock {})", l.owner, l.id)
}

fn flags(m: &VersionMeta) -> String {
    match (m.forced, m.deleted) {
        (true, true) => "forced,deleted".into(),
        (true, false) => "forced".into(),
        (false, true) => "deleted".into(),
        (false, false) => "-".into(),
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

// ----- the commands -----

async fn list(c: &Client, out: Out) -> CliResult<Exit> {
    let what = "GET /api/v1/states";
    let body = c
        .json(c.request(Method::GET, "/api/v1/states"), what)
        .await?;
    let states: Vec<StateView> = parse(&body["states"], what)?;
    out.emit(&body, || {
        if states.is_empty() {
            return format!("no Terraform states (server {})", c.base);
        }
        let rows: Vec<Vec<String>> = states
            .iter()
            .map(|s| {
                let (version, serial, size, written) = match &s.current {
                    Some(m) => (
                        m.version.to_string(),
                        m.serial.to_string(),
                        bytes(m.size),
                        at(m.written_at_ms),
                    ),
                    None => ("-".into(), "-".into(), "-".into(), "-".into()),
                };
                vec![
                    s.name.clone(),
                    version,
                    serial,
                    size,
                    written,
                    s.lock.as_ref().map_or_else(|| "-".into(), locked_by),
                ]
            })
            .collect();
        table(
            &["NAME", "VERSION", "SERIAL", "SIZE", "WRITTEN", "LOCKED BY"],
            &rows,
        )
    })?;
    Ok(Exit::Success)
}

async fn show(c: &Client, name: &str, out: Out) -> CliResult<Exit> {
    let what = "GET /api/v1/state";
    let body = c
        .json(
            c.request(Method::GET, "/api/v1/state")
                .query(&[("name", name)]),
            what,
        )
        .await?;
    let state: StateView = parse(&body["state"], what)?;
    let history: Vec<VersionMeta> = parse(&body["history"], what)?;
    out.emit(&body, || render_show(&state, &history))?;
    Ok(Exit::Success)
}

fn render_show(state: &StateView, history: &[VersionMeta]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "name:           {}", state.name);
    match &state.current {
        Some(m) => {
            let _ = writeln!(s, "version:        {}", m.version);
            let _ = writeln!(s, "serial:         {}", m.serial);
            let _ = writeln!(s, "lineage:        {}", m.lineage);
            let size = if m.size < 1024 {
                format!("{} bytes", m.size)
            } else {
                format!("{} ({} bytes)", bytes(m.size), m.size)
            };
            let _ = writeln!(s, "size:           {size}");
            let _ = writeln!(s, "md5:            {}", m.md5);
            let _ = writeln!(s, "written:        {}", at(m.written_at_ms));
        }
        None => {
            let why = match history.first() {
                Some(m) if m.deleted => format!("deleted at version {}", m.version),
                _ => "never written".into(),
            };
            let _ = writeln!(s, "version:        none ({why})");
        }
    }
    let _ = writeln!(s, "versions kept:  {}", state.versions);
    match &state.lock {
        Some(l) => {
            let _ = writeln!(s, "locked by:      {}", l.owner);
            let _ = writeln!(s, "lock id:        {}", l.id);
            let _ = writeln!(s, "fencing token:  {}", l.fencing_token);
            for (key, label) in [
                ("Operation", "operation:      "),
                ("Who", "who:            "),
                ("Created", "created:        "),
                ("Path", "path:           "),
                ("Info", "info:           "),
            ] {
                if let Some(v) = l.info.get(key).and_then(Value::as_str)
                    && !v.is_empty()
                {
                    let _ = writeln!(s, "{label}{v}");
                }
            }
        }
        None => {
            let _ = writeln!(s, "locked by:      -");
        }
    }
    if history.is_empty() {
        return s;
    }
    s.push('\n');
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|m| {
            vec![
                m.version.to_string(),
                m.serial.to_string(),
                m.lineage.clone(),
                m.size.to_string(),
                m.md5.clone(),
                at(m.written_at_ms),
                opt(&m.token),
                opt(&m.lock_id),
                flags(m),
            ]
        })
        .collect();
    s.push_str(&table(
        &[
            "VERSION", "SERIAL", "LINEAGE", "BYTES", "MD5", "WRITTEN", "TOKEN", "LOCK ID", "FLAGS",
        ],
        &rows,
    ));
    s
}

async fn pull(
    c: &Client,
    name: &str,
    version: Option<u64>,
    file: Option<&Path>,
) -> CliResult<Exit> {
    let path = state_path(name);
    let mut rb = c.request(Method::GET, &path);
    if let Some(v) = version {
        rb = rb.query(&[("version", v)]);
    }
    let (headers, body) = c.send(rb, &format!("GET {path}")).await?;
    let served = headers
        .get("x-tflock-state-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match file {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&body)
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::error(format!("cannot write the state to stdout: {e}")))?;
        }
        Some(path) => {
            write_private(path, &body).map_err(|e| {
                Failure::error(format!("cannot write the state to {}: {e}", path.display()))
            })?;
            eprintln!(
                "wrote {} bytes of '{name}'{} to {}",
                body.len(),
                served
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default(),
                path.display()
            );
        }
    }
    Ok(Exit::Success)
}

/// Writes `bytes` to `path`, readable by its owner only (a state holds secrets).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

async fn rollback(c: &Client, name: &str, version: u64, out: Out) -> CliResult<Exit> {
    let what = "POST /api/v1/state/rollback";
    let body = c
        .json(
            c.request(Method::POST, "/api/v1/state/rollback")
                .json(&json!({"name": name, "version": version})),
            what,
        )
        .await?;
    let meta: VersionMeta = parse(&body, what)?;
    out.emit(&body, || {
        format!(
            "rolled back '{name}' to version {version}: now version {} (serial {}, lineage {}, {}, md5 {})",
            meta.version,
            meta.serial,
            meta.lineage,
            bytes(meta.size),
            meta.md5
        )
    })?;
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_paths_keep_their_slashes() {
        assert_eq!(state_path("myrepo/app/prod"), "/tf/myrepo/app/prod");
        assert_eq!(state_path("a b/c?d"), "/tf/a%20b/c%3Fd");
    }

    #[test]
    fn a_locked_refusal_exits_3_and_names_the_holder() {
        let f = refusal(
            "http://h",
            "x",
            StatusCode::LOCKED,
            br#"{"ID":"abc (held by alice)","Who":"alice"}"#,
        );
        assert_eq!(f.exit, Exit::NotAcquired);
        assert!(
            f.message.contains("ID=abc (held by alice)"),
            "{}",
            f.message
        );
    }

    #[test]
    fn an_invalid_request_names_its_field() {
        let f = refusal(
            "http://h",
            "x",
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":"invalid_request","message":"the state 'a' keeps no version 9","field":"version"}}"#,
        );
        assert_eq!(f.exit, Exit::Usage);
        assert_eq!(f.message, "version: the state 'a' keeps no version 9");
    }
}
