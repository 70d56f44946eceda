//! Printing answers: human tables by default, `--output json` / `--json` and
//! `--output yaml` for scripts. Machine formats print the API's own shapes, so a
//! script reading `tflock locks list --json` reads what `GET /api/v1/locks` answers.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tflock_core::{Lock, QueueEntryView, Timestamp};

use crate::args::OutputFormat;
use crate::exit::{CliResult, Failure};

/// Where and how a command prints.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub format: OutputFormat,
}

impl Out {
    /// Prints `value` in a machine format, or `table()` for humans.
    pub fn emit<T: Serialize>(&self, value: &T, table: impl FnOnce() -> String) -> CliResult<()> {
        let text = match self.format {
            OutputFormat::Json => serde_json::to_string_pretty(value)
                .map_err(|e| Failure::error(format!("cannot encode the answer: {e}")))?,
            OutputFormat::Yaml => serde_saphyr::to_string(value)
                .map_err(|e| Failure::error(format!("cannot encode the answer: {e}")))?,
            OutputFormat::Table => table(),
        };
        if text.ends_with('\n') {
            print!("{text}");
        } else if !text.is_empty() {
            println!("{text}");
        }
        Ok(())
    }

    pub fn is_table(&self) -> bool {
        self.format == OutputFormat::Table
    }
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// An instant to the second, UTC.
pub fn when(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.to_system_time()).to_string()
}

/// A duration rounded to what a person reads (`1h 2m`, `3s`, `250ms`).
pub fn span(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(60) {
        Duration::from_secs(d.as_secs())
    } else if d >= Duration::from_secs(1) {
        Duration::from_millis(d.as_millis() as u64 / 100 * 100)
    } else {
        Duration::from_micros(d.as_micros() as u64 / 100 * 100)
    };
    humantime::format_duration(rounded).to_string()
}

/// A latency in milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

pub fn user_of(owner: &tflock_core::Owner) -> String {
    owner.username().unwrap_or("-").to_string()
}

pub fn pull_of(owner: &tflock_core::Owner) -> String {
    owner
        .pull
        .as_ref()
        .map(|p| format!("#{}", p.num))
        .unwrap_or_else(|| "-".into())
}

/// The rows of a lock table.
pub fn lock_rows(locks: &[Lock]) -> Vec<Vec<String>> {
    locks
        .iter()
        .map(|l| {
            vec![
                l.key.clone(),
                l.owner.owner.clone(),
                user_of(&l.owner),
                pull_of(&l.owner),
                l.fencing_token.to_string(),
                l.priority.to_string(),
                when(l.acquired_at),
                when(l.expires_at),
            ]
        })
        .collect()
}

pub const LOCK_HEADERS: &[&str] = &[
    "KEY", "OWNER", "USER", "PULL", "TOKEN", "PRIORITY", "ACQUIRED", "EXPIRES",
];

/// One lock, as `key: value` lines.
pub fn lock_detail(l: &Lock) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "key:            {}", l.key);
    let _ = writeln!(s, "owner:          {}", l.owner.owner);
    let _ = writeln!(s, "user:           {}", user_of(&l.owner));
    let _ = writeln!(s, "pull:           {}", pull_of(&l.owner));
    if !l.owner.note.is_empty() {
        let _ = writeln!(s, "note:           {}", l.owner.note);
    }
    let _ = writeln!(s, "priority:       {}", l.priority);
    let _ = writeln!(s, "fencing token:  {}", l.fencing_token);
    let _ = writeln!(s, "acquired:       {}", when(l.acquired_at));
    let _ = writeln!(s, "expires:        {}", when(l.expires_at));
    let _ = writeln!(s, "ttl:            {}", humantime::format_duration(l.ttl));
    if l.claim_pending {
        let _ = writeln!(s, "claim pending:  yes");
    }
    if let Some(id) = &l.lease_id {
        let _ = writeln!(s, "lease id:       {}", id.as_str());
    }
    s
}

pub const ENTRY_HEADERS: &[&str] = &[
    "POS",
    "KEY",
    "OWNER",
    "USER",
    "KIND",
    "PRIORITY",
    "EFFECTIVE",
    "WAITED",
    "DEADLINE",
    "ENTRY",
];

pub fn entry_rows(entries: &[QueueEntryView]) -> Vec<Vec<String>> {
    entries
        .iter()
        .map(|e| {
            vec![
                e.position.to_string(),
                e.entry.resource.lock_key(),
                e.entry.owner.owner.clone(),
                user_of(&e.entry.owner),
                format!("{:?}", e.entry.kind).to_lowercase(),
                e.entry.priority.to_string(),
                e.effective_priority.to_string(),
                span(e.waited),
                when(e.entry.deadline),
                e.entry.entry_id.clone(),
            ]
        })
        .collect()
}
