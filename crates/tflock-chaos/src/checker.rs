//! The checker: reads a whole history and finds every broken promise.
//!
//! It owns the rules, and only the rules; it knows nothing of servers or faults beyond
//! what the history says. A client's *safe window* on a lease starts when the grant's
//! answer was received and ends at the earlier of the invoke of the call that gives the
//! lease up (release, transfer, release by pull, or a call whose outcome is unknown and
//! might have given it up) and a lower bound of the lease's expiry: request sent + TTL,
//! extended by each successful refresh (refresh sent + TTL). The backend grants and
//! refreshes at some instant after the request was sent, so that bound never exceeds
//! the real expiry, whatever the latency. For a grant found by a retry (a collected
//! reservation, or an acquire whose answer was lost), the grant was made after the
//! original call was sent, so the bound is that call's invoke + TTL. A transfer's new
//! lease keeps the old lease's bound (whether the transfer resets the expiry or not).
//!
//! Rules:
//! 1. **Overlap**: two windows of different leases on one resource never overlap.
//! 2. **Tokens**: on one resource, tokens strictly increase in window order, and one
//!    token never belongs to two leases.
//! 3. **Reservations**: an acknowledged reservation ends granted, timed out or
//!    cancelled. A retry answering `lease_lost` before its deadline and before any
//!    grant of it could have expired, with no cancel or release by pull of its own that
//!    may have run, is a reservation silently gone (so is any other definite answer
//!    that is neither the grant nor its place in line).
//! 4. **Lost locks**: while a window is open, the lease is live: a read that ran wholly
//!    inside it shows the holder with the same token, and a refresh, transfer or release
//!    of it that completed inside it is not refused as lost or foreign. This is how a
//!    lock acknowledged before a Redis restart (on AOF) or failover and lost in it shows.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::history::{NEMESIS, Op, Record, Status};

/// A safe window: one lease of one client, as the history proves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub process: String,
    pub resource: String,
    pub token: u64,
    pub owner: String,
    /// Index (in the history as given) of the record whose answer started it.
    pub from_record: usize,
    pub start: u64,
    pub end: u64,
    #[serde(skip)]
    lease_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Overlap,
    TokenOrder,
    TokenRepeat,
    ReservationLost,
    LockLost,
}

impl Rule {
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Overlap => "overlap",
            Rule::TokenOrder => "token_order",
            Rule::TokenRepeat => "token_repeat",
            Rule::ReservationLost => "reservation_lost",
            Rule::LockLost => "lock_lost",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub rule: Rule,
    pub resource: String,
    pub detail: String,
    /// The windows involved (one or two).
    pub windows: Vec<Window>,
    /// Indexes of the records involved (the report prints them and their neighbours).
    pub records: Vec<usize>,
}

/// How each acknowledged reservation ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReservationCounts {
    pub acknowledged: u64,
    pub granted: u64,
    pub cancelled: u64,
    /// Ended without a grant seen after its deadline or a possible unseen grant's expiry.
    pub timed_out: u64,
    /// Never resolved by the end of the history (a client stopped while it waited).
    pub unresolved: u64,
    pub lost: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Findings {
    pub windows: Vec<Window>,
    pub violations: Vec<Violation>,
    pub reservations: ReservationCounts,
    /// Reads that ran inside a window of the reader opened before a Redis restart or
    /// failover ended, i.e. checks of rule 4 across such a fault.
    pub reads_across_redis_faults: u64,
    /// Reads, refreshes and releases checked against an open window.
    pub lease_checks: u64,
}

struct Open {
    window: Window,
}

#[derive(Clone, Debug)]
struct Reservation {
    request_id: String,
    record: usize,
    resource: String,
    /// No grant of it can have expired, nor its deadline passed, before this.
    safe_until: u64,
    /// A cancel or release by pull of its own that may have removed it ran.
    maybe_removed: bool,
    done: bool,
}

/// Fault kinds after which rule 4 checks count as "across a Redis fault".
fn is_redis_fault(kind: &str) -> bool {
    kind.starts_with("redis_") || kind.ends_with("_failover")
}

pub fn check(history: &[Record]) -> Findings {
    let mut f = Findings::default();
    let redis_fault_ends: Vec<u64> = history
        .iter()
        .filter(|r| r.process == NEMESIS && r.args.fault.as_deref().is_some_and(is_redis_fault))
        .map(|r| r.complete)
        .collect();

    // Per client, in its own order (each client runs one call at a time).
    let mut by_process: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in history.iter().enumerate() {
        if r.process != NEMESIS {
            by_process.entry(&r.process).or_default().push(i);
        }
    }
    for (process, indexes) in &by_process {
        client_pass(process, indexes, history, &redis_fault_ends, &mut f);
    }

    // Rules 1 and 2 across clients, per resource.
    let mut per_resource: BTreeMap<&str, Vec<&Window>> = BTreeMap::new();
    for w in f.windows.iter().filter(|w| w.start < w.end) {
        per_resource.entry(&w.resource).or_default().push(w);
    }
    let mut violations = Vec::new();
    for (resource, mut ws) in per_resource {
        ws.sort_by_key(|w| (w.start, w.end));
        // Overlap: compare each window with the one reaching furthest so far.
        let mut furthest: Option<&Window> = None;
        for w in &ws {
            if let Some(p) = furthest
                && w.start < p.end
                && !same_lease(p, w)
            {
                violations.push(Violation {
                    rule: Rule::Overlap,
                    resource: resource.to_owned(),
                    detail: format!(
                        "{} (token {}) and {} (token {}) both held it for {:.3} ms",
                        p.process,
                        p.token,
                        w.process,
                        w.token,
                        (p.end.min(w.end) - w.start) as f64 / 1e6
                    ),
                    windows: vec![p.clone(), (*w).clone()],
                    records: vec![p.from_record, w.from_record],
                });
            }
            if furthest.is_none_or(|p| w.end > p.end) {
                furthest = Some(w);
            }
        }
        // Token order between consecutive distinct leases.
        for pair in ws.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if !same_lease(a, b) && b.token <= a.token {
                violations.push(Violation {
                    rule: Rule::TokenOrder,
                    resource: resource.to_owned(),
                    detail: format!(
                        "{} got token {} after {} held token {}",
                        b.process, b.token, a.process, a.token
                    ),
                    windows: vec![a.clone(), b.clone()],
                    records: vec![a.from_record, b.from_record],
                });
            }
        }
    }
    // Token repeats: every grant seen, windows empty or not.
    let mut seen: HashMap<(&str, u64), &Window> = HashMap::new();
    for w in &f.windows {
        match seen.get(&(w.resource.as_str(), w.token)) {
            Some(p) if !same_lease(p, w) => violations.push(Violation {
                rule: Rule::TokenRepeat,
                resource: w.resource.clone(),
                detail: format!(
                    "token {} was granted to {} and again to {}",
                    w.token, p.process, w.process
                ),
                windows: vec![(*p).clone(), w.clone()],
                records: vec![p.from_record, w.from_record],
            }),
            Some(_) => {}
            None => {
                seen.insert((w.resource.as_str(), w.token), w);
            }
        }
    }
    f.violations.extend(violations);
    f
}

fn same_lease(a: &Window, b: &Window) -> bool {
    a.process == b.process && a.token == b.token && a.lease_id == b.lease_id
}

/// The window a granted acquire or transfer (record `i`, `r`) opens on `res`, up to `end`.
fn opened(process: &str, res: &str, i: usize, r: &Record, end: u64) -> Open {
    Open {
        window: Window {
            process: process.to_owned(),
            resource: res.to_owned(),
            token: r.result.token.unwrap_or(0),
            owner: r.result.owner.clone().unwrap_or_default(),
            from_record: i,
            start: r.complete,
            end,
            lease_id: r.result.lease_id.clone().unwrap_or_default(),
        },
    }
}

/// Whether a failed call on `w`'s lease was told the lease is gone while it still lived.
fn refused_live_lease(r: &Record, w: &Window) -> bool {
    r.complete < w.end
        && matches!(
            r.result.code.as_deref(),
            Some("lease_lost" | "not_owner" | "not_found")
        )
}

fn client_pass(
    process: &str,
    indexes: &[usize],
    history: &[Record],
    redis_fault_ends: &[u64],
    f: &mut Findings,
) {
    let mut open: BTreeMap<String, Open> = BTreeMap::new();
    let mut reservations: Vec<Reservation> = Vec::new();

    let close = |o: Open, at: u64, f: &mut Findings| {
        let mut w = o.window;
        w.end = w.end.min(at);
        f.windows.push(w);
    };

    for &i in indexes {
        let r = &history[i];
        let res = r.args.resource.clone().unwrap_or_default();
        let ttl = r.args.ttl_ms.unwrap_or(0) * 1_000_000;
        match r.op {
            Op::Acquire | Op::Reserve | Op::Collect => {
                let origin = if r.op == Op::Collect {
                    r.args.origin_invoke.unwrap_or(r.invoke)
                } else {
                    r.invoke
                };
                if r.result.granted() {
                    let lease = r.result.lease_id.clone().unwrap_or_default();
                    let bound = origin + ttl;
                    match open.remove(&res) {
                        Some(mut o) if o.window.lease_id == lease => {
                            o.window.end = o.window.end.max(bound);
                            open.insert(res.clone(), o);
                        }
                        other => {
                            if let Some(o) = other {
                                close(o, r.invoke, f);
                            }
                            open.insert(res.clone(), opened(process, &res, i, r, bound));
                        }
                    }
                }
                // Reservation bookkeeping, by request id.
                let is_reservation = r.op == Op::Reserve || (r.op == Op::Collect && r.args.reserve);
                let Some(rid) = r.args.request_id.clone() else {
                    continue;
                };
                let wait = r.args.wait_ms.unwrap_or(0) * 1_000_000;
                let existing = reservations
                    .iter()
                    .position(|x| x.request_id == rid && !x.done);
                if r.result.granted() {
                    if let Some(k) = existing {
                        reservations[k].done = true;
                        f.reservations.granted += 1;
                    }
                } else if r.result.status == Status::Ok && r.result.entry_id.is_some() {
                    if is_reservation && existing.is_none() {
                        f.reservations.acknowledged += 1;
                        reservations.push(Reservation {
                            request_id: rid,
                            record: i,
                            resource: res.clone(),
                            safe_until: origin + ttl.min(wait),
                            maybe_removed: false,
                            done: false,
                        });
                    }
                } else if r.result.status == Status::Ok
                    && let Some(k) = existing
                {
                    let x = &mut reservations[k];
                    x.done = true;
                    if x.maybe_removed {
                        f.reservations.cancelled += 1;
                    } else if r.complete < x.safe_until {
                        f.reservations.lost += 1;
                        f.violations.push(Violation {
                                rule: Rule::ReservationLost,
                                resource: x.resource.clone(),
                                detail: format!(
                                    "{process}'s reservation (acknowledged by record {}) was answered {} {:.3} s before its deadline, never granted or cancelled",
                                    x.record,
                                    r.result.label(),
                                    (x.safe_until - r.complete) as f64 / 1e9
                                ),
                                windows: vec![],
                                records: vec![x.record, i],
                            });
                    } else {
                        f.reservations.timed_out += 1;
                    }
                }
            }
            Op::Refresh => {
                if r.result.unsent() {
                    continue;
                }
                let Some(o) = open.get_mut(&res) else {
                    continue;
                };
                if r.args.lease_id.as_deref() != Some(&o.window.lease_id) {
                    continue;
                }
                if r.result.status == Status::Ok {
                    o.window.end = o.window.end.max(r.invoke + ttl);
                } else if r.result.status == Status::Fail {
                    f.lease_checks += 1;
                    if refused_live_lease(r, &o.window) {
                        f.violations.push(lock_lost(&o.window, i, r, "refresh"));
                    }
                    let o = open.remove(&res).expect("present");
                    close(o, r.invoke, f);
                }
            }
            Op::Release | Op::Transfer => {
                let Some(o) = open.remove(&res) else { continue };
                if r.args.lease_id.as_deref() != Some(&o.window.lease_id) {
                    open.insert(res, o);
                    continue;
                }
                if r.result.status == Status::Fail {
                    f.lease_checks += 1;
                    if refused_live_lease(r, &o.window) {
                        f.violations.push(lock_lost(&o.window, i, r, r.op.name()));
                    }
                }
                let old_end = o.window.end;
                close(o, r.invoke, f);
                if r.op == Op::Transfer && r.result.status == Status::Ok {
                    open.insert(res.clone(), opened(process, &res, i, r, old_end));
                }
            }
            Op::ReleasePull => {
                for (_, o) in std::mem::take(&mut open) {
                    close(o, r.invoke, f);
                }
                if r.result.status != Status::Fail {
                    for x in reservations.iter_mut().filter(|x| !x.done) {
                        x.maybe_removed = true;
                        if r.result.status == Status::Ok {
                            x.done = true;
                            f.reservations.cancelled += 1;
                        }
                    }
                }
            }
            Op::Cancel => {
                let Some(entry) = r.args.entry_id.as_deref() else {
                    continue;
                };
                if r.result.status == Status::Fail {
                    continue;
                }
                for x in reservations.iter_mut().filter(|x| !x.done) {
                    if history[x.record].result.entry_id.as_deref() == Some(entry) {
                        x.maybe_removed = true;
                        if r.result.status == Status::Ok {
                            x.done = true;
                            f.reservations.cancelled += 1;
                        }
                    }
                }
            }
            Op::Read => {
                let Some(o) = open.get(&res) else { continue };
                // Only an answer from a server is evidence (not a refused connection).
                if r.result.status == Status::Unknown
                    || r.result.http.is_none()
                    || r.invoke < o.window.start
                    || r.complete >= o.window.end
                {
                    continue;
                }
                f.lease_checks += 1;
                if redis_fault_ends
                    .iter()
                    .any(|&t| t > o.window.start && t < r.invoke)
                {
                    f.reads_across_redis_faults += 1;
                }
                let shows_us = r.result.status == Status::Ok
                    && r.result.token == Some(o.window.token)
                    && r.result.owner.as_deref() == Some(o.window.owner.as_str());
                if !shows_us {
                    f.violations.push(lock_lost(&o.window, i, r, "read"));
                }
            }
            Op::Fault => {}
        }
    }
    for (_, o) in open {
        f.windows.push(o.window);
    }
    f.reservations.unresolved += reservations.iter().filter(|x| !x.done).count() as u64;
}

fn lock_lost(w: &Window, i: usize, r: &Record, what: &str) -> Violation {
    let shown = match (&r.result.owner, r.result.token, &r.result.code) {
        (Some(o), Some(t), _) => format!("{o} with token {t}"),
        (_, _, Some(code)) => code.clone(),
        _ => "nothing".to_owned(),
    };
    Violation {
        rule: Rule::LockLost,
        resource: w.resource.clone(),
        detail: format!(
            "{}'s {what} inside its window (token {}, {:.3} ms before its end) found {shown}",
            w.process,
            w.token,
            (w.end - r.complete) as f64 / 1e6
        ),
        windows: vec![w.clone()],
        records: vec![w.from_record, i],
    }
}
