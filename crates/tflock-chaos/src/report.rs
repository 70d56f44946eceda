//! The report of a run: what happened (operations by kind and outcome, grants, faults
//! by kind, recovery after each fault) and what broke (each violation with its windows
//! and the operations around it). It owns presentation only; the checker decides.
//! No lease id or request id is ever printed: records are shown by process, kind,
//! server, times and outcome label.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::checker::{Findings, ReservationCounts, Violation};
use crate::history::{NEMESIS, Op, Record, Status};

#[derive(Clone, Debug, Serialize)]
pub struct FaultRecovery {
    pub kind: String,
    pub target: String,
    /// Fault start, ms since the first record.
    pub at_ms: f64,
    pub duration_ms: f64,
    /// From healed to the next successful call (through the hit server, for faults
    /// that hit one server); `None` if none came.
    pub recovery_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub operations: u64,
    pub by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    /// Leases granted (distinct windows, empty ones included).
    pub grants: u64,
    pub faults: BTreeMap<String, u64>,
    pub recoveries: Vec<FaultRecovery>,
    /// Per fault kind: p50 and max recovery in ms.
    pub recovery_by_kind: BTreeMap<String, (f64, f64)>,
    pub reservations: ReservationCounts,
    pub lease_checks: u64,
    pub reads_across_redis_faults: u64,
    pub violations_by_rule: BTreeMap<String, u64>,
    pub violations: Vec<String>,
}

pub fn build(history: &[Record], f: &Findings) -> Report {
    let t0 = history.iter().map(|r| r.invoke).min().unwrap_or(0);
    let mut by_kind: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut operations = 0;
    let mut faults = BTreeMap::new();
    for r in history {
        if r.process == NEMESIS {
            *faults
                .entry(r.args.fault.clone().unwrap_or_default())
                .or_insert(0) += 1;
            continue;
        }
        operations += 1;
        let kind = match (r.op, r.args.wait_ms) {
            (Op::Acquire, Some(_)) => "acquire_wait".to_owned(),
            (op, _) => op.name().to_owned(),
        };
        *by_kind
            .entry(kind)
            .or_default()
            .entry(r.result.label())
            .or_insert(0) += 1;
    }
    // Successful calls by completion time, for recovery.
    let mut ok: Vec<(u64, Option<usize>)> = history
        .iter()
        .filter(|r| r.process != NEMESIS && r.result.status == Status::Ok)
        .map(|r| (r.complete, r.args.server))
        .collect();
    ok.sort_unstable();
    let mut recoveries = Vec::new();
    for r in history.iter().filter(|r| r.process == NEMESIS) {
        let healed = r.complete;
        let start = ok.partition_point(|(t, _)| *t < healed);
        let next = ok[start..]
            .iter()
            .find(|(_, s)| r.args.target_server.is_none() || *s == r.args.target_server);
        recoveries.push(FaultRecovery {
            kind: r.args.fault.clone().unwrap_or_default(),
            target: r.args.target.clone().unwrap_or_default(),
            at_ms: (r.invoke - t0) as f64 / 1e6,
            duration_ms: (r.complete - r.invoke) as f64 / 1e6,
            recovery_ms: next.map(|(t, _)| (t - healed) as f64 / 1e6),
        });
    }
    let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for rec in &recoveries {
        if let Some(ms) = rec.recovery_ms {
            per.entry(rec.kind.clone()).or_default().push(ms);
        }
    }
    let recovery_by_kind = per
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            let p50 = v[v.len() / 2];
            let max = *v.last().expect("non-empty");
            (k, (p50, max))
        })
        .collect();
    let mut violations_by_rule = BTreeMap::new();
    for v in &f.violations {
        *violations_by_rule
            .entry(v.rule.name().to_owned())
            .or_insert(0) += 1;
    }
    Report {
        operations,
        by_kind,
        grants: f.windows.len() as u64,
        faults,
        recoveries,
        recovery_by_kind,
        reservations: f.reservations.clone(),
        lease_checks: f.lease_checks,
        reads_across_redis_faults: f.reads_across_redis_faults,
        violations_by_rule,
        violations: f
            .violations
            .iter()
            .map(|v| describe_violation(history, v, t0))
            .collect(),
    }
}

/// One violation: the rule, the windows and the calls on that resource around them.
pub fn describe_violation(history: &[Record], v: &Violation, t0: u64) -> String {
    let at = |t: u64| (t.saturating_sub(t0)) as f64 / 1e6;
    let mut s = format!("[{}] {}: {}\n", v.rule.name(), v.resource, v.detail);
    for w in &v.windows {
        let _ = writeln!(
            s,
            "  window {} token {} owner {}: {:.3} .. {:.3} ms (from record {})",
            w.process,
            w.token,
            w.owner,
            at(w.start),
            at(w.end),
            w.from_record
        );
    }
    let lo = v
        .records
        .iter()
        .map(|&i| history[i].invoke)
        .min()
        .unwrap_or(0)
        .saturating_sub(1_000_000_000);
    let hi = v
        .windows
        .iter()
        .map(|w| w.end)
        .chain(v.records.iter().map(|&i| history[i].complete))
        .max()
        .unwrap_or(0)
        + 1_000_000_000;
    let _ = writeln!(
        s,
        "  calls on {} and faults from {:.3} to {:.3} ms:",
        v.resource,
        at(lo),
        at(hi)
    );
    let mut shown = 0;
    for (i, r) in history.iter().enumerate() {
        let related = r.process == NEMESIS
            || r.args.resource.as_deref() == Some(v.resource.as_str())
            || r.op == Op::ReleasePull;
        if !related || r.complete < lo || r.invoke > hi {
            continue;
        }
        shown += 1;
        if shown > 40 {
            let _ = writeln!(s, "    ...");
            break;
        }
        let what = if r.process == NEMESIS {
            format!(
                "{} {}",
                r.args.fault.as_deref().unwrap_or(""),
                r.args.target.as_deref().unwrap_or("")
            )
        } else {
            format!(
                "{} via server {} -> {}{}{}",
                match (r.op, r.args.wait_ms) {
                    (Op::Acquire, Some(w)) => format!("acquire(wait {w}ms)"),
                    (op, _) => op.name().to_owned(),
                },
                r.args.server.map_or("-".into(), |s| s.to_string()),
                r.result.label(),
                r.result
                    .token
                    .map_or(String::new(), |t| format!(" token {t}")),
                r.result
                    .owner
                    .as_deref()
                    .map_or(String::new(), |o| format!(" owner {o}")),
            )
        };
        let mark = if v.records.contains(&i) { "*" } else { " " };
        let _ = writeln!(
            s,
            "   {mark}#{i} {:>10.3} .. {:>10.3} {} {}",
            at(r.invoke),
            at(r.complete),
            r.process,
            what
        );
    }
    s
}

impl Report {
    pub fn violation_count(&self) -> usize {
        self.violations.len()
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "operations: {}", self.operations);
        for (kind, outcomes) in &self.by_kind {
            let total: u64 = outcomes.values().sum();
            let parts: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "  {kind:<13} {total:>7}  ({})", parts.join(", "));
        }
        let _ = writeln!(s, "grants (leases held): {}", self.grants);
        let r = &self.reservations;
        let _ = writeln!(
            s,
            "reservations: {} acknowledged, {} granted, {} cancelled, {} timed out, {} unresolved, {} lost",
            r.acknowledged, r.granted, r.cancelled, r.timed_out, r.unresolved, r.lost
        );
        let _ = writeln!(
            s,
            "lease checks inside windows: {} ({} reads across a Redis restart or failover)",
            self.lease_checks, self.reads_across_redis_faults
        );
        let total: u64 = self.faults.values().sum();
        let _ = writeln!(s, "faults: {total}");
        for (kind, n) in &self.faults {
            let rec = self
                .recovery_by_kind
                .get(kind)
                .map_or("no successful call after".to_owned(), |(p50, max)| {
                    format!("recovery p50 {p50:.0} ms, max {max:.0} ms")
                });
            let _ = writeln!(s, "  {kind:<18} {n:>4}  {rec}");
        }
        let _ = writeln!(s, "violations: {}", self.violations.len());
        for (rule, n) in &self.violations_by_rule {
            let _ = writeln!(s, "  {rule}: {n}");
        }
        for v in self.violations.iter().take(20) {
            let _ = writeln!(s, "{v}");
        }
        s
    }
}
