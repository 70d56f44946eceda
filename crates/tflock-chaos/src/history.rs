//! The history format: one JSON object per line, written by every client process and by
//! the nemesis, merged by the run and read by the checker.
//!
//! A record is one operation: who (`process`), what (`op`, `args`), when it was invoked
//! and when its answer (or failure) came back, both on [`crate::clock`], and the result.
//! Lease ids and request ids stay in the history (the checker needs them to tell one
//! lease or reservation from another); the report never prints them.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The process name of the fault injector in a history.
pub const NEMESIS: &str = "nemesis";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `c0`, `c1`, ... for clients; [`NEMESIS`] for faults.
    pub process: String,
    pub op: Op,
    #[serde(default)]
    pub args: Args,
    /// Request sent (or fault started), ns on `CLOCK_MONOTONIC`.
    pub invoke: u64,
    /// Answer received, or failure known (or fault healed), same clock.
    pub complete: u64,
    #[serde(default)]
    pub result: Outcome,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Plain acquire (`wait_ms` absent) or blocking acquire with `wait`.
    #[default]
    Acquire,
    /// Acquire with `reserve: true`.
    Reserve,
    /// Retry of an earlier acquire or reservation with its request id (collects a
    /// reservation's grant, or finds out what an acquire with a lost answer did).
    Collect,
    Refresh,
    Transfer,
    Release,
    ReleasePull,
    /// Cancel a reservation's queue entry.
    Cancel,
    /// `GET /api/v1/lock`.
    Read,
    /// A fault injected by the nemesis (`args.fault`, `args.target`).
    Fault,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Acquire => "acquire",
            Op::Reserve => "reserve",
            Op::Collect => "collect",
            Op::Refresh => "refresh",
            Op::Transfer => "transfer",
            Op::Release => "release",
            Op::ReleasePull => "release_pull",
            Op::Cancel => "cancel",
            Op::Read => "read",
            Op::Fault => "fault",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Args {
    /// The resource's workspace (every resource of a run shares repo and path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Index of the server the call went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Transfer: the new owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Secret: identifies a reservation or a retried acquire. Never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Secret: the lease the call acts on. Never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    /// Collect: the invoke time of the call it retries (a grant it finds was made at
    /// or after that instant, so its lease lasts at least until then + TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_invoke: Option<u64>,
    /// Collect: whether the call it retries was a reservation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserve: bool,
    /// Fault: its kind, e.g. `server_kill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Fault: what it hit, e.g. `server 2` or `redis 127.0.0.1:12345`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Fault: the server index it affects, if it affects only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_server: Option<usize>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A definite answer: the call took effect as its result says.
    #[default]
    Ok,
    /// A definite refusal: nothing changed (a 4xx, or no connection was made).
    Fail,
    /// Outcome unknown: a 503, a timeout, a connection cut after sending.
    Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<u16>,
    /// The error code, or the reason of `acquired: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquired: Option<bool>,
    /// The fencing token of the lock in the answer (ours if acquired, else the holder's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// Secret: the lease id in the answer (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// The owner of the lock in the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The queue entry in the answer (reserve, collect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    /// A short description of a failure (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Outcome {
    /// Refused before the request left: no connection was made, nothing ran.
    pub fn unsent(&self) -> bool {
        self.status == Status::Fail && self.http.is_none()
    }

    pub fn granted(&self) -> bool {
        self.status == Status::Ok && self.acquired == Some(true)
    }

    /// `ok`, `ok:acquired`, `ok:held`, `fail:not_found`, `unknown:...`: for counting.
    pub fn label(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Fail => "fail",
            Status::Unknown => "unknown",
        };
        match (self.acquired, &self.code) {
            (Some(true), _) => format!("{status}:acquired"),
            (Some(false), _) if self.entry_id.is_some() => format!("{status}:queued"),
            (_, Some(code)) => format!("{status}:{code}"),
            _ => status.to_owned(),
        }
    }
}

/// Appends records to a file, one line each, flushed at once so a history survives
/// its writer being killed.
pub struct Writer {
    file: File,
}

impl Writer {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file: File::create(path)?,
        })
    }

    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).expect("a record serialises");
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

/// Reads one history file; a torn last line (a writer killed mid-write) is skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!("{}: skipping an unreadable line: {e}", path.display()),
        }
    }
    Ok(out)
}

/// Reads every `*.jsonl` file of a directory, ordered by invoke time.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<Record>> {
    let mut all = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    for p in paths {
        all.extend(read(&p)?);
    }
    all.sort_by_key(|r| (r.invoke, r.complete));
    Ok(all)
}
