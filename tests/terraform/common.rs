//! The Terraform side of the harness: the real `terraform` (from
//! `TFLOCK_TEST_TERRAFORM` or `PATH`, never skipped), a working directory per client
//! configured for `backend "http"` at a test server's `/tf/{name}`, raw HTTP calls
//! (`LOCK`, `UNLOCK`, state writes with headers the test chooses) and the server's
//! event stream collected in the background.
//!
//! The server itself is the CLI tests' harness (`tests/cli/common.rs`): a real
//! `tflock server` on a free port over a temporary embedded store or a testkit Redis.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::harness::{ADMIN_TOKEN, API_TOKEN, Env};

/// The real `terraform` this run uses.
pub struct Terraform {
    pub bin: PathBuf,
    pub version: (u32, u32, u32),
}

impl Terraform {
    /// `terraform_data` (with a `local-exec` provisioner) is builtin from 1.4 on: an
    /// apply can take a known time without downloading a provider.
    pub fn has_terraform_data(&self) -> bool {
        self.version >= (1, 4, 0)
    }

    /// Whether the http backend waits for a held lock (`-lock-timeout`): from 1.2.4 on
    /// (hashicorp/terraform#31256); before, a 423 was a plain error and an apply that
    /// found the state locked failed at once, whatever `-lock-timeout` said.
    pub fn waits_for_locks(&self) -> bool {
        self.version >= (1, 2, 4)
    }

    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }
}

/// `TFLOCK_TEST_TERRAFORM`, else `terraform` on `PATH`; panics (the test fails, it is
/// not skipped) when there is none or it is older than 1.0. `scripts/test` installs
/// one when the machine has none.
pub fn terraform() -> &'static Terraform {
    static TF: OnceLock<Terraform> = OnceLock::new();
    TF.get_or_init(|| {
        let bin = match std::env::var_os("TFLOCK_TEST_TERRAFORM").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("terraform"))
                .find(|p| p.is_file())
                .unwrap_or_else(|| {
                    panic!(
                        "no terraform found: put terraform (>= 1.0) on PATH or set \
                         TFLOCK_TEST_TERRAFORM=/path/to/terraform (scripts/test installs one)"
                    )
                }),
        };
        let out = Command::new(&bin)
            .args(["version", "-json"])
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .env("CHECKPOINT_DISABLE", "1")
            .output()
            .unwrap_or_else(|e| panic!("running {} version: {e}", bin.display()));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{} version -json: {e}: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let text = v["terraform_version"].as_str().unwrap_or_default();
        let mut parts = text
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        assert!(
            version >= (1, 0, 0),
            "{} is Terraform {text}: the tests need 1.0 or newer",
            bin.display()
        );
        Terraform { bin, version }
    })
}

/// A server with both tokens on `env`'s store, its `tflock.yaml` with `extra` lines
/// under `enhanced_locking:`.
pub fn server(mut env: Env, extra: &str) -> Env {
    env.write_config(extra);
    env.start_server(
        &[],
        &[
            ("ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN", API_TOKEN),
            ("ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    env
}

/// What a test configuration does when applied.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Seconds an apply that changes `n` sleeps in a `terraform_data` provisioner
    /// (Terraform >= 1.4 only; older versions get outputs and locals only).
    pub sleep_s: u32,
}

/// One Terraform client: a directory holding the configuration, its own
/// `TF_DATA_DIR` and an empty CLI config, initialised for `backend "http"` on one state
/// of one server with one password.
pub struct Workdir {
    pub dir: tempfile::TempDir,
    pub state: String,
}

impl Workdir {
    /// Writes the configuration and runs `terraform init`, which must succeed.
    pub fn init(env: &Env, state: &str, password: &str, config: Config) -> Workdir {
        let tf = terraform();
        let dir = tempfile::tempdir().unwrap();
        let address = format!("{}/tf/{state}", env.base());
        let mut main = format!(
            r#"terraform {{
  backend "http" {{
    address        = "{address}"
    lock_address   = "{address}"
    unlock_address = "{address}"
    username       = "tflock-test"
  }}
}}

variable "n" {{
  type    = number
  default = 0
}}

locals {{
  doubled = var.n * 2
}}

output "n" {{
  value = var.n
}}

output "doubled" {{
  value = local.doubled
}}
"#
        );
        if config.sleep_s > 0 && tf.has_terraform_data() {
            main.push_str(&format!(
                r#"
resource "terraform_data" "slow" {{
  triggers_replace = [var.n]

  provisioner "local-exec" {{
    command = "sleep {}"
  }}
}}
"#,
                config.sleep_s
            ));
        }
        std::fs::write(dir.path().join("main.tf"), main).unwrap();
        std::fs::write(dir.path().join("empty.tfrc"), "").unwrap();
        let w = Workdir {
            dir,
            state: state.to_string(),
        };
        let backend_password = format!("-backend-config=password={password}");
        let out = w.run(&["init", "-input=false", "-no-color", &backend_password]);
        assert!(
            out.status.success(),
            "terraform init failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        w
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `terraform ARGS` in this directory with its own data dir and no user config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&terraform().bin);
        c.args(args).current_dir(self.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("TF_") || k.starts_with("TFLOCK_") || k.starts_with("ATLANTIS_") {
                c.env_remove(k);
            }
        }
        c.env("TF_IN_AUTOMATION", "1")
            .env("TF_DATA_DIR", self.path().join(".tfdata"))
            .env("TF_CLI_CONFIG_FILE", self.path().join("empty.tfrc"))
            .env("CHECKPOINT_DISABLE", "1")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A finished Terraform command that must have succeeded; its stdout.
pub fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

// ----- raw HTTP -----

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the answer ({}) is not JSON: {e}: {}",
                self.status,
                text(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        text(&self.body)
    }

    /// The `error.field` and `error.message` of an error answer.
    pub fn error(&self) -> (Option<String>, String) {
        let v = self.json();
        (
            v["error"]["field"].as_str().map(str::to_string),
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

/// One HTTP/1.0 request on loopback (the answer ends with the connection, so no
/// chunked decoding is needed).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", text(&raw)));
    let head = text(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// `Authorization: Basic` with `password` (what Terraform sends).
pub fn basic(password: &str) -> String {
    format!(
        "Basic {}",
        base64(format!("tflock-test:{password}").as_bytes())
    )
}

pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A call on `/tf/{state}` with the API token and a JSON body.
pub fn tf(env: &Env, method: &str, state: &str, query: &str, body: &[u8]) -> Answer {
    tf_with(env, method, state, query, body, &[])
}

pub fn tf_with(
    env: &Env,
    method: &str,
    state: &str,
    query: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Answer {
    let auth = basic(API_TOKEN);
    let mut headers = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    headers.extend_from_slice(extra);
    let path = if query.is_empty() {
        format!("/tf/{state}")
    } else {
        format!("/tf/{state}?{query}")
    };
    request(env.port, method, &path, &headers, body)
}

/// A LockInfo as Terraform sends it, with lock ID `id`.
pub fn lock_info(id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ID": id,
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": "tester@tflock-test",
        "Version": "1.11.4",
        "Created": "2026-12-01T10:00:00.000000000Z",
        "Path": "",
    }))
    .unwrap()
}

/// A minimal Terraform state document.
pub fn state_doc(serial: u64, lineage: &str, pad: usize) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": serial,
        "lineage": lineage,
        "outputs": {"pad": {"value": "x".repeat(pad), "type": "string"}},
        "resources": [],
        "check_results": null,
    }))
    .unwrap()
}

/// `GET /api/v1/lock` of a state's lock: the lock, or `None` (404).
pub fn state_lock(env: &Env, state: &str) -> Option<Value> {
    let a = request(
        env.port,
        "GET",
        &format!("/api/v1/lock?repo=tflock:terraform/state&path={state}&workspace=default"),
        &[],
        b"",
    );
    match a.status {
        200 => Some(a.json()["lock"].clone()),
        404 => None,
        s => panic!("GET /api/v1/lock: {s}: {}", a.text()),
    }
}

/// The stored state's bytes (`None`: 404).
pub fn stored(env: &Env, state: &str) -> Option<Vec<u8>> {
    let a = tf(env, "GET", state, "", b"");
    match a.status {
        200 => Some(a.body),
        404 => None,
        s => panic!("GET /tf/{state}: {s}: {}", a.text()),
    }
}

// ----- the event stream -----

/// One event of `GET /api/events`, with when this test received it.
#[derive(Debug, Clone)]
pub struct Event {
    pub seen: Instant,
    pub name: String,
    pub data: Value,
}

impl Event {
    pub fn owner(&self) -> &str {
        self.data["owner"].as_str().unwrap_or_default()
    }
    pub fn path(&self) -> &str {
        self.data["resource"]["path"].as_str().unwrap_or_default()
    }
}

/// The server's event stream, read by a background thread until dropped.
pub struct Events {
    seen: Arc<Mutex<Vec<Event>>>,
    stream: TcpStream,
}

impl Events {
    /// Subscribes and returns once the server answered the subscription.
    pub fn subscribe(env: &Env) -> Events {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, env.port)).unwrap();
        write!(
            s,
            "GET /api/events HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let stream = s.try_clone().unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200"), "GET /api/events: {status}");
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l.trim().is_empty() {
                break;
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut name = String::new();
            let mut data = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                } else if line.is_empty() && !data.is_empty() {
                    if let Ok(v) = serde_json::from_str::<Value>(&data) {
                        sink.lock().unwrap().push(Event {
                            seen: Instant::now(),
                            name: std::mem::take(&mut name),
                            data: v,
                        });
                    }
                    data.clear();
                }
            }
        });
        Events { seen, stream }
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    /// Events on state `state` so far, in the order the server sent them.
    pub fn of(&self, state: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|e| e.path() == state)
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Waits until `f` holds, up to `max`.
pub fn wait_for(what: &str, max: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + max;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {max:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
