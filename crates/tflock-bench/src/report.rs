//! `docs/benchmarks.md` from one run's [`Results`]: tables, plots, ratios against the
//! ceiling and the peers, a verdict per goal. Sections between `<!-- keep:NAME -->`
//! and `<!-- /keep:NAME -->` are hand-written and carried over from the previous file.

use std::fmt::Write;

use crate::results::{FairnessRow, HandoffRow, PairsRow, Results};
use crate::stats::{Latency, ms, rate};

/// Hand-written sections the generator keeps, with the text used when the previous
/// report has none.
const KEPT: [(&str, &str); 3] = [
    (
        "intro",
        "What this page is: the figures of one run of `scripts/bench` on the machine named \
below, with the ceiling and the peers measured in the same run. Rerun it to refresh \
everything outside the hand-written sections.\n",
    ),
    (
        "analysis",
        "(Hand-written analysis of the run goes here; the generator keeps it.)\n",
    ),
    (
        "recovery",
        "(Hand-written notes on the recovery figures go here; the generator keeps them.)\n",
    ),
];

/// The hand-written block `name` of `previous`, if it has one.
fn kept(previous: &str, name: &str) -> Option<String> {
    let open = format!("<!-- keep:{name} -->");
    let close = format!("<!-- /keep:{name} -->");
    let start = previous.find(&open)? + open.len();
    let end = start + previous[start..].find(&close)?;
    Some(previous[start..end].trim_matches('\n').to_string() + "\n")
}

fn keep_block(out: &mut String, previous: &str, name: &str) {
    let default = KEPT.iter().find(|(n, _)| *n == name).map_or("", |(_, d)| d);
    let body = kept(previous, name).unwrap_or_else(|| default.to_string());
    let _ = writeln!(out, "<!-- keep:{name} -->\n{body}<!-- /keep:{name} -->\n");
}

/// Every section heading the report has.
#[cfg(test)]
const SECTIONS: [&str; 13] = [
    "## The run",
    "## Verdicts",
    "## Ceilings",
    "## Uncontended acquire+release",
    "## Hand-off latency",
    "## Fairness",
    "## Anti-starvation",
    "## Scale",
    "## Recovery after a Redis fault",
    "## Peers",
    "## Where tflock falls short",
    "## Analysis",
    "## Skipped and errors",
];

struct Verdict {
    goal: String,
    target: String,
    measured: String,
    /// `None`: not measured in this run.
    pass: Option<bool>,
    /// Why it falls short, from the numbers.
    short: Option<String>,
}

fn mark(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "met",
        Some(false) => "**short**",
        None => "not measured",
    }
}

fn ceiling_pairs(r: &Results, clients: usize, backend: &str) -> Option<(f64, &'static str)> {
    if backend == "redis" {
        r.scripts
            .iter()
            .find(|s| s.clients == clients)
            .map(|s| (s.evalsha_loop_per_s / 2.0, "EVALSHA loop/2"))
    } else {
        r.disk
            .as_ref()
            .map(|d| (d.redb_commits_per_s / 2.0, "redb commits/2"))
    }
}

fn pairs_of<'a>(r: &'a Results, label: &str, clients: usize) -> Option<&'a PairsRow> {
    r.pairs
        .iter()
        .find(|p| p.system.label == label && p.clients == clients)
}

fn handoff_of<'a>(r: &'a Results, label: &str, waiters: usize) -> Option<&'a HandoffRow> {
    r.handoff
        .iter()
        .find(|h| h.system.label == label && h.waiters == waiters)
}

fn fairness_of<'a>(r: &'a Results, label: &str) -> Option<&'a FairnessRow> {
    r.fairness.iter().find(|f| f.system.label == label)
}

const BACKENDS: [&str; 2] = ["embedded", "redis"];
const SURFACES: [&str; 2] = ["library", "HTTP"];

fn verdicts(r: &Results) -> Vec<Verdict> {
    let mut v = Vec::new();
    // Throughput against the ceiling, and against rslock.
    for b in BACKENDS {
        for s in SURFACES {
            let label = format!("tflock {b} · {s}");
            for c in [1usize, 16, 64] {
                let Some(p) = pairs_of(r, &label, c) else {
                    continue;
                };
                let Some((ceil, what)) = ceiling_pairs(r, c, b) else {
                    continue;
                };
                let ratio = p.pairs_per_s / ceil;
                let pass = ratio >= 0.8;
                v.push(Verdict {
                    goal: format!("pairs/s, {label}, {c} client(s)"),
                    target: format!("≥ 0.8 × ceiling/2 ({what} = {})", rate(ceil)),
                    measured: format!("{} ({ratio:.2} × ceiling/2)", rate(p.pairs_per_s)),
                    pass: Some(pass),
                    short: (!pass).then(|| {
                        format!(
                            "{label} at {c}: {} pairs/s is {ratio:.2} × the ceiling's {} ({what}).",
                            rate(p.pairs_per_s),
                            rate(ceil)
                        )
                    }),
                });
            }
            if b == "redis"
                && let (Some(p), Some(peer)) = (
                    pairs_of(r, &label, 16),
                    pairs_of(r, "rslock (default retry)", 16),
                )
            {
                let pass = p.pairs_per_s >= peer.pairs_per_s;
                v.push(Verdict {
                    goal: format!("pairs/s, {label}, 16 clients, vs rslock"),
                    target: format!("≥ rslock ({})", rate(peer.pairs_per_s)),
                    measured: format!(
                        "{} ({:.2} × rslock)",
                        rate(p.pairs_per_s),
                        p.pairs_per_s / peer.pairs_per_s
                    ),
                    pass: Some(pass),
                    short: (!pass).then(|| {
                        format!(
                            "{label}: {} pairs/s at 16 clients against rslock's {} (rslock does one SET NX and one EVALSHA per pair, tflock two scripts that also keep queues, indexes, tokens and events).",
                            rate(p.pairs_per_s),
                            rate(peer.pairs_per_s)
                        )
                    }),
                });
            }
        }
    }
    // Hand-off p99.
    for b in BACKENDS {
        for s in SURFACES {
            let label = format!("tflock {b} · {s}");
            let (goal_ms, target_ms) = if s == "library" {
                (2.0, 0.5)
            } else {
                (2.0, 2.0)
            };
            for w in [16usize, 256] {
                let Some(h) = handoff_of(r, &label, w) else {
                    continue;
                };
                let p99 = h.latency.p99;
                let pass = p99 < target_ms && h.latency.n > 0;
                let goal_met = p99 < goal_ms;
                v.push(Verdict {
                    goal: format!("hand-off p99, {label}, {w} waiters"),
                    target: format!("< {} (goal < {})", ms(target_ms), ms(goal_ms)),
                    measured: format!(
                        "{}{}",
                        ms(p99),
                        if !pass && goal_met {
                            " (goal met, target not)"
                        } else {
                            ""
                        }
                    ),
                    pass: Some(pass),
                    short: (!pass).then(|| {
                        format!(
                            "{label} with {w} waiters: hand-off p99 {} (p50 {}, p99.9 {}) against the target {}.",
                            ms(p99),
                            ms(h.latency.p50),
                            ms(h.latency.p999),
                            ms(target_ms)
                        )
                    }),
                });
            }
        }
    }
    // Fairness.
    for b in BACKENDS {
        for s in SURFACES {
            let label = format!("tflock {b} · {s}");
            let Some(f) = fairness_of(r, &label) else {
                continue;
            };
            let pass = f.jain >= 0.9999;
            v.push(Verdict {
                goal: format!("fairness (Jain), {label}"),
                target: "≥ 0.9999 (goal ≥ 0.99)".into(),
                measured: format!(
                    "{:.5}{}",
                    f.jain,
                    if !pass && f.jain >= 0.99 {
                        " (goal met, target not)"
                    } else {
                        ""
                    }
                ),
                pass: Some(pass),
                short: (!pass).then(|| {
                    format!(
                        "{label}: Jain {:.5} (fewest {} and most {} acquisitions per client).",
                        f.jain, f.fewest, f.most
                    )
                }),
            });
            let ratio = f.wait.p99 / f.ideal_wait_ms;
            let pass = ratio <= 1.3;
            v.push(Verdict {
                goal: format!("wait p99 vs ideal FIFO wait, {label}"),
                target: "≤ 1.3 × (n-1)×(hold+hand-off)".into(),
                measured: format!(
                    "{} vs {} ({ratio:.2}×)",
                    ms(f.wait.p99),
                    ms(f.ideal_wait_ms)
                ),
                pass: Some(pass),
                short: (!pass).then(|| {
                    format!(
                        "{label}: wait p99 {} is {ratio:.2} × the ideal FIFO wait {} (hold {} + hand-off p50 {}, × 47).",
                        ms(f.wait.p99),
                        ms(f.ideal_wait_ms),
                        ms(f.hold_mean_ms),
                        ms(f.handoff.p50)
                    )
                }),
            });
        }
    }
    // Better than every peer.
    let peer_handoffs: Vec<&HandoffRow> = r
        .handoff
        .iter()
        .filter(|h| h.system.peer && h.waiters == 16 && h.latency.n > 0)
        .collect();
    let peer_fair: Vec<&FairnessRow> = r.fairness.iter().filter(|f| f.system.peer).collect();
    for b in BACKENDS {
        for s in SURFACES {
            let label = format!("tflock {b} · {s}");
            if let Some(h) = handoff_of(r, &label, 16)
                && let Some(best) = peer_handoffs
                    .iter()
                    .min_by(|a, b| a.latency.p99.total_cmp(&b.latency.p99))
            {
                let pass = h.latency.p99 < best.latency.p99;
                v.push(Verdict {
                    goal: format!("hand-off p99 better than every peer, {label}"),
                    target: format!(
                        "< best peer ({} {})",
                        best.system.label,
                        ms(best.latency.p99)
                    ),
                    measured: format!(
                        "{} ({:.2} × the best peer)",
                        ms(h.latency.p99),
                        h.latency.p99 / best.latency.p99
                    ),
                    pass: Some(pass),
                    short: (!pass).then(|| {
                        format!(
                            "{label}: hand-off p99 {} against {}'s {}.",
                            ms(h.latency.p99),
                            best.system.label,
                            ms(best.latency.p99)
                        )
                    }),
                });
            }
            if let Some(f) = fairness_of(r, &label)
                && let Some(best) = peer_fair.iter().max_by(|a, b| a.jain.total_cmp(&b.jain))
            {
                // Jain to 5 decimals; a tie goes to the lower wait p99.
                let mine = (f.jain * 1e5).round();
                let theirs = (best.jain * 1e5).round();
                let pass = mine > theirs || (mine == theirs && f.wait.p99 <= best.wait.p99);
                v.push(Verdict {
                    goal: format!("fairness better than every peer, {label}"),
                    target: format!(
                        "Jain > best peer ({} {:.5}) at 5 decimals, a tie by lower wait p99 ({})",
                        best.system.label,
                        best.jain,
                        ms(best.wait.p99)
                    ),
                    measured: format!("{:.5}, wait p99 {}", f.jain, ms(f.wait.p99)),
                    pass: Some(pass),
                    short: (!pass).then(|| {
                        format!(
                            "{label}: Jain {:.5} and wait p99 {} against {}'s {:.5} and {}.",
                            f.jain,
                            ms(f.wait.p99),
                            best.system.label,
                            best.jain,
                            ms(best.wait.p99)
                        )
                    }),
                });
            }
        }
    }
    // Anti-starvation.
    for s in &r.starvation {
        let worst = s.low_waits_ms.iter().copied().fold(0.0, f64::max);
        let has = !s.low_waits_ms.is_empty();
        let pass = has && worst <= s.bound_ms;
        v.push(Verdict {
            goal: format!("anti-starvation, {}", s.system.label),
            target: format!(
                "low-priority wait ≤ threshold × max boost = {}",
                ms(s.bound_ms)
            ),
            measured: if has {
                format!("longest {} over {} grants", ms(worst), s.low_waits_ms.len())
            } else {
                "the low-priority waiter was never granted in the run".into()
            },
            pass: Some(pass),
            short: (!pass).then(|| {
                format!(
                    "{}: the low-priority waiter's longest wait {} against the bound {}.",
                    s.system.label,
                    ms(worst),
                    ms(s.bound_ms)
                )
            }),
        });
    }
    // Queue scaling.
    for b in BACKENDS {
        let rows: Vec<_> = r.queue_scale.iter().filter(|q| q.backend == b).collect();
        let (Some(lo), Some(hi)) = (rows.first(), rows.last()) else {
            continue;
        };
        if lo.depth == hi.depth {
            continue;
        }
        let g_enq = hi.enqueue.p50 / lo.enqueue.p50;
        let g_ho = hi.handoff.p50 / lo.handoff.p50;
        let bound = (hi.depth as f64).ln() / (lo.depth as f64).ln();
        let pass = g_enq <= bound && g_ho <= bound;
        v.push(Verdict {
            goal: format!("enqueue and hand-off grow like log n, {b}"),
            target: format!(
                "p50 at {} entries ≤ {bound:.0} × p50 at {} (log n; linear would be {}×)",
                hi.depth,
                lo.depth,
                hi.depth / lo.depth
            ),
            measured: format!("enqueue {g_enq:.2}×, hand-off {g_ho:.2}×"),
            pass: Some(pass),
            short: (!pass).then(|| {
                format!(
                    "{b}: from {} to {} queued entries enqueue p50 went {} → {} ({g_enq:.1}×) and hand-off p50 {} → {} ({g_ho:.1}×).",
                    lo.depth,
                    hi.depth,
                    ms(lo.enqueue.p50),
                    ms(hi.enqueue.p50),
                    ms(lo.handoff.p50),
                    ms(hi.handoff.p50)
                )
            }),
        });
    }
    // Recovery: locking back within 1 s of Redis being back, for every client.
    for row in r.recovery.iter().flat_map(|run| &run.rows) {
        if row.faults.is_empty() {
            continue;
        }
        let pass = row.all.max < 1000.0 && row.errors.is_empty();
        v.push(Verdict {
            goal: format!("recovery, {}", row.fault),
            target: "every client granted again < 1 s after Redis is back (max over faults)".into(),
            measured: format!(
                "first grant p50 {} max {}; all clients p50 {} max {} ({} faults)",
                ms(row.first.p50),
                ms(row.first.max),
                ms(row.all.p50),
                ms(row.all.max),
                row.faults.len()
            ),
            pass: Some(pass),
            short: (!pass).then(|| {
                format!(
                    "{}: all clients were granted again only {} ms (max) after Redis was back{}.",
                    row.fault,
                    ms(row.all.max),
                    if row.errors.is_empty() {
                        String::new()
                    } else {
                        format!("; {} fault(s) failed", row.errors.len())
                    }
                )
            }),
        });
    }
    v
}

/// The recovery section: one row per fault kind.
fn recovery_section(o: &mut String, r: &Results) {
    let _ = writeln!(
        o,
        "## Recovery after a Redis fault
"
    );
    let Some(run) = &r.recovery else {
        let _ = writeln!(
            o,
            "Not measured in this run.
"
        );
        return;
    };
    let _ = writeln!(
        o,
        "{} `tflock server` processes on one Redis (spec defaults: breaker threshold 5, reset timeout 30 s, half-open 3, health check every 10 s, read timeout 3 s), {} HTTP clients (client *i* on server *i* mod {}), each acquiring a fresh resource and releasing it in a loop, a refused acquire retried after {} ms. Each fault lasts until every server's breaker is open, plus 0.5 s. *Back*: the first `+PONG` from the restarted or continued Redis, or the first sentinel naming a new primary that answers `ROLE master`. *First*: back → first grant to any client; *all*: back → every client granted again. Down: fault → back.\n",
        run.servers, run.clients, run.servers, run.retry_ms
    );
    let _ = writeln!(
        o,
        "Measured by `{}` ({} run) at {}.\n",
        run.command, run.mode, run.started_at
    );
    let _ = writeln!(
        o,
        "| fault | faults | first p50 | first max | all p50 | all max | down p50 |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for row in &run.rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.fault,
            row.faults.len(),
            ms(row.first.p50),
            ms(row.first.max),
            ms(row.all.p50),
            ms(row.all.max),
            ms(row.down.p50)
        );
    }
    let _ = writeln!(o);
    for row in &run.rows {
        for e in &row.errors {
            let _ = writeln!(o, "- {}: {e}", row.fault);
        }
    }
}

fn latency_cells(l: &Latency) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        l.n,
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    )
}

/// The whole report. `plots` is the plot directory relative to the report; `files`
/// are the plot file names that were drawn.
pub fn render(r: &Results, previous: &str, plots: &str, files: &[String]) -> String {
    let mut o = String::new();
    let plot = |o: &mut String, name: &str, alt: &str| {
        if files.iter().any(|f| f == name) {
            let _ = writeln!(o, "![{alt}]({plots}/{name})\n");
        }
    };
    let _ = writeln!(o, "# tflock benchmarks\n");
    keep_block(&mut o, previous, "intro");
    let _ = writeln!(
        o,
        "<!-- Everything outside the keep blocks is written by tflock-bench; edit the code, not this file. -->\n"
    );

    // The run.
    let _ = writeln!(o, "## The run\n");
    if r.mode == "smoke" {
        let _ = writeln!(
            o,
            "**Smoke run: every measure ran for a fraction of a second; the figures mean nothing.**\n"
        );
    }
    let _ = writeln!(o, "- Command: `{}`", r.command);
    let _ = writeln!(
        o,
        "- Mode: {}; started {}; took {:.0} s",
        r.mode, r.started_at, r.total_s
    );
    if let Some(m) = &r.machine {
        let _ = writeln!(
            o,
            "- Machine: {} cores, {}, {:.0} GiB memory, {}",
            m.cores, m.cpu, m.memory_gib, m.kernel
        );
        let _ = writeln!(o, "- Software: {}; {}; {}", m.redis, m.rustc, m.python);
    }
    if let (Some(a), Some(b)) = (r.load_before, r.load_after) {
        let _ = writeln!(
            o,
            "- Load average (1 min) before the run {a:.2}, after {b:.2}: above ~1 means other work shared the {} cores during the run",
            r.machine.as_ref().map_or(0, |m| m.cores)
        );
    }
    if let (Some(a), Some(b)) = (&r.wakeup_before, &r.wakeup_after) {
        let _ = writeln!(
            o,
            "- Scheduling noise: a thread waking from a 200 µs sleep was late by p50 {} / p99 {} / p99.9 {} / max {} before the run and p50 {} / p99 {} / p99.9 {} / max {} after it; no tail latency measured here can be better than that",
            ms(a.p50),
            ms(a.p99),
            ms(a.p999),
            ms(a.max),
            ms(b.p50),
            ms(b.p99),
            ms(b.p999),
            ms(b.max)
        );
    }
    let s = &r.settings;
    let _ = writeln!(
        o,
        "- Settings: {} s per throughput and hand-off measure; fairness {} contenders × {} s holding {} ms; lock TTL {} s (tflock and peers); anti-starvation threshold {} ms, max boost {}; {} held locks listed",
        s["seconds_per_measure"],
        s["fairness_clients"],
        s["fairness_seconds"],
        s["hold_ms"],
        s["lock_ttl_s"],
        s["starvation_threshold_ms"],
        s["max_priority_boost"],
        s["locks_listed"],
    );
    let _ = writeln!(
        o,
        "- Everything shares the cores: Redis (a fresh memory-only `redis-server` on a loopback port), the tflock HTTP server (in this process, on `127.0.0.1:0`), the clients and, for the Python peers, the Python process. Run-to-run noise is up to ~20% on throughput: compare figures of the same run only.\n"
    );

    // Verdicts.
    let vs = verdicts(r);
    let _ = writeln!(o, "## Verdicts\n");
    if vs.is_empty() {
        let _ = writeln!(o, "No goal could be judged in this run.\n");
    } else {
        let met = vs.iter().filter(|v| v.pass == Some(true)).count();
        let _ = writeln!(o, "{met} of {} goals met.\n", vs.len());
        let _ = writeln!(
            o,
            "| goal | target | measured | verdict |\n|---|---|---|---|"
        );
        for v in &vs {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                v.goal,
                v.target,
                v.measured,
                mark(v.pass)
            );
        }
        let _ = writeln!(o);
    }

    // Ceilings.
    let _ = writeln!(o, "## Ceilings\n");
    let _ = writeln!(
        o,
        "Every tflock Redis operation is one EVALSHA, so an acquire+release pair costs at least two one-round-trip scripts: the pairs ceiling is half the script rate. The loop uses the redis-rs client tflock uses, one multiplexed connection shared by all clients (as tflock's backend does); `redis-benchmark` uses one connection per client. The script is `{}`.\n",
        crate::ceiling::CEILING_SCRIPT
    );
    if r.scripts.is_empty() {
        let _ = writeln!(o, "Not measured in this run.\n");
    } else {
        let _ = writeln!(
            o,
            "| clients | EVALSHA loop, redis-rs (scripts/s) | redis-benchmark -P 1 (scripts/s) | pairs ceiling (loop/2) |\n|---|---|---|---|"
        );
        for c in &r.scripts {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                c.clients,
                rate(c.evalsha_loop_per_s),
                c.redis_benchmark_per_s.map_or("–".into(), rate),
                rate(c.evalsha_loop_per_s / 2.0)
            );
        }
        let _ = writeln!(o);
    }
    if let Some(d) = &r.disk {
        let _ = writeln!(
            o,
            "Embedded store: every change is committed (fsync) before it is answered; concurrent changes share a commit. Each disk figure is the best of three short probes (a ceiling is the best the disk does; other work on the machine can only lower a probe).\n\n| disk | rate |\n|---|---|\n| fsync of a 4 KiB write, one thread | {} /s (latency p50 {}, p99 {}, p99.9 {}, max {}) |\n| fsync of a 4 KiB write, 16 threads on separate files | {} /s |\n| redb commit of one 200-byte record, one thread | {} /s |\n| embedded pairs ceiling, one client (commits/2) | {} /s |\n",
            rate(d.fsync_per_s),
            ms(d.fsync_latency.p50),
            ms(d.fsync_latency.p99),
            ms(d.fsync_latency.p999),
            ms(d.fsync_latency.max),
            rate(d.fsync_16_threads_per_s),
            rate(d.redb_commits_per_s),
            rate(d.redb_commits_per_s / 2.0)
        );
    }

    // Pairs.
    let _ = writeln!(o, "## Uncontended acquire+release pairs/s\n");
    let _ = writeln!(
        o,
        "Each client acquires and releases its own resource in a loop (tflock: TryLock without wait + Unlock; peers: their blocking acquire + release, which returns at once when the lock is free).\n"
    );
    if r.pairs.is_empty() {
        let _ = writeln!(o, "Not measured in this run.\n");
    } else {
        let _ = writeln!(
            o,
            "| system | 1 client | 16 clients | 64 clients | × ceiling/2 (1 / 16 / 64) | × rslock (1 / 16 / 64) |\n|---|---|---|---|---|---|"
        );
        let mut labels: Vec<&str> = Vec::new();
        for p in &r.pairs {
            if !labels.contains(&p.system.label.as_str()) {
                labels.push(&p.system.label);
            }
        }
        for l in labels {
            let cell = |c| pairs_of(r, l, c).map_or("–".into(), |p| rate(p.pairs_per_s));
            let backend = if l.contains("embedded") {
                "embedded"
            } else {
                "redis"
            };
            let ratio = |c| -> String {
                match (pairs_of(r, l, c), ceiling_pairs(r, c, backend)) {
                    (Some(p), Some((ceil, _))) => format!("{:.2}", p.pairs_per_s / ceil),
                    _ => "–".into(),
                }
            };
            let vs_rslock = |c| -> String {
                match (pairs_of(r, l, c), pairs_of(r, "rslock (default retry)", c)) {
                    (Some(p), Some(q)) => format!("{:.2}", p.pairs_per_s / q.pairs_per_s),
                    _ => "–".into(),
                }
            };
            let _ = writeln!(
                o,
                "| {l} | {} | {} | {} | {} / {} / {} | {} / {} / {} |",
                cell(1),
                cell(16),
                cell(64),
                ratio(1),
                ratio(16),
                ratio(64),
                vs_rslock(1),
                vs_rslock(16),
                vs_rslock(64)
            );
        }
        let _ = writeln!(
            o,
            "\n(Peers' \"× ceiling/2\" is against the Redis ceiling; embedded rows are against the redb commit ceiling.)\n"
        );
        plot(&mut o, "pairs.svg", "pairs per second by clients");
        let costs: Vec<String> = r
            .scripts
            .iter()
            .filter_map(|c| {
                c.redis.as_ref().map(|x| {
                    format!(
                        "| ceiling script (one op = one script) | {} | {:.2} | {:.1} µs | {:.0}% | {} |",
                        c.clients,
                        x.commands_per_op,
                        x.usec_per_op,
                        x.cpu_share * 100.0,
                        c.process_cpu_us.map_or("–".into(), |v| format!("{v:.1} µs"))
                    )
                })
            })
            .chain(r.pairs.iter().filter_map(|p| {
                let cpu = p
                    .process_cpu_us
                    .map_or("–".into(), |v| format!("{v:.1} µs"));
                match &p.redis {
                    Some(x) => Some(format!(
                        "| {} (one op = one pair) | {} | {:.2} | {:.1} µs | {:.0}% | {cpu} |",
                        p.system.label,
                        p.clients,
                        x.commands_per_op,
                        x.usec_per_op,
                        x.cpu_share * 100.0
                    )),
                    None if p.process_cpu_us.is_some() => Some(format!(
                        "| {} (one op = one pair) | {} | – | – | – | {cpu} |",
                        p.system.label, p.clients
                    )),
                    None => None,
                }
            }))
            .collect();
        if !costs.is_empty() {
            let _ = writeln!(
                o,
                "Where the time goes. Redis's side from `INFO commandstats` and `INFO cpu` around each measure: commands per operation (a script counts once plus once per `redis.call` inside it), microseconds Redis spent executing them per operation, and Redis's CPU time over the measure's wall time (100% = Redis saturates one of the {} cores). The benchmark process's CPU time per operation (from /proc/self/stat, 10 ms ticks) covers the clients, tflock's client side and, for HTTP, the in-process server and reqwest clients. With 2 cores for everything, pairs/s can be no more than about 2 s / (process CPU + Redis CPU per pair).\n\n| system | clients | Redis commands per op | Redis time per op | Redis CPU | benchmark process CPU per op |\n|---|---|---|---|---|---|",
                r.machine.as_ref().map_or(0, |m| m.cores)
            );
            for c in costs {
                let _ = writeln!(o, "{c}");
            }
            let _ = writeln!(o);
        }
    }

    // Hand-off.
    let _ = writeln!(o, "## Hand-off latency\n");
    let _ = writeln!(
        o,
        "All waiters on one resource, each holding {} ms per grant (the same for every system: with no hold a polling peer's stepped-back releaser, which retries at the next grant, would land on the next release every time and two clients would ping-pong). Timed in this process on one clock, from just before the holder's release call to the return of the next holder's acquire; only hand-offs to another client count. tflock's releaser asks again at once and queues at the back; a peer's releaser steps back until another client holds the lock (a polling library would otherwise mostly re-take its own lock and hide its polling delay). \"self\" counts grants that went back to the releaser (not hand-offs).\n",
        s["handoff_hold_ms"]
    );
    if r.handoff.is_empty() {
        let _ = writeln!(o, "Not measured in this run.\n");
    } else {
        let _ = writeln!(
            o,
            "| system | waiters | hand-offs | p50 | p99 | p99.9 | max | self | tflock p99 / this p99 (same surface, same waiters) |\n|---|---|---|---|---|---|---|---|---|"
        );
        for h in &r.handoff {
            let rel = if h.system.peer {
                let mine = |b: &str, s: &str| {
                    handoff_of(r, &format!("tflock {b} · {s}"), h.waiters)
                        .map(|m| format!("{b} {s} {:.3}", m.latency.p99 / h.latency.p99))
                };
                [
                    mine("embedded", "library"),
                    mine("redis", "library"),
                    mine("redis", "HTTP"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ")
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                h.system.label,
                h.waiters,
                latency_cells(&h.latency),
                h.self_regrants,
                rel
            );
        }
        let _ = writeln!(o);
        plot(&mut o, "handoff.svg", "hand-off latency percentiles");
    }

    // Fairness.
    let _ = writeln!(o, "## Fairness\n");
    let _ = writeln!(
        o,
        "{} equal contenders on one resource, each holding the lock {} ms per grant (slept on a blocking thread) and asking again at once, for {} s. Jain's index over the per-client acquisition counts (1 = all equal). The ideal FIFO wait is (n-1) × (mean hold + hand-off p50 of the same run).\n",
        s["fairness_clients"], s["hold_ms"], s["fairness_seconds"]
    );
    if r.fairness.is_empty() {
        let _ = writeln!(o, "Not measured in this run.\n");
    } else {
        let _ = writeln!(
            o,
            "| system | grants | Jain | fewest | most | wait p50 | wait p99 | longest wait | ideal FIFO wait | p99 / ideal | mean hold | hand-off p50 | self |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for f in &r.fairness {
            let _ = writeln!(
                o,
                "| {} | {} | {:.5} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} |",
                f.system.label,
                f.acquisitions,
                f.jain,
                f.fewest,
                f.most,
                ms(f.wait.p50),
                ms(f.wait.p99),
                ms(f.longest_wait_ms),
                ms(f.ideal_wait_ms),
                f.wait.p99 / f.ideal_wait_ms,
                ms(f.hold_mean_ms),
                ms(f.handoff.p50),
                f.self_regrants
            );
        }
        let _ = writeln!(o);
        plot(
            &mut o,
            "fairness.svg",
            "acquisitions per client, sorted, relative to the mean",
        );
    }

    // Anti-starvation.
    let _ = writeln!(o, "## Anti-starvation\n");
    if r.starvation.is_empty() {
        let _ = writeln!(o, "Not measured in this run.\n");
    } else {
        let s0 = &r.starvation[0];
        let _ = writeln!(
            o,
            "One `low` waiter against {} `high` clients that hold {} ms and ask again at once, so a `high` entry is always queued. Settings: starvation_threshold {}, max_priority_boost {}. The low waiter's effective priority rises one level per threshold waited; at `high` it wins on its earlier enqueue time, so it should be granted after about 2 thresholds and never later than threshold × max boost = {}.\n",
            s0.high_clients,
            s0.high_hold_ms,
            ms(s0.threshold_ms),
            s0.max_boost,
            ms(s0.bound_ms)
        );
        let _ = writeln!(
            o,
            "| system | low grants | low wait p50 | low longest wait | bound | high wait p99 |\n|---|---|---|---|---|---|"
        );
        for s in &r.starvation {
            let l = Latency::of(s.low_waits_ms.clone());
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                s.system.label,
                l.n,
                ms(l.p50),
                ms(l.max),
                ms(s.bound_ms),
                ms(s.high_wait_p99_ms)
            );
        }
        let _ = writeln!(o);
    }

    // Scale.
    let _ = writeln!(o, "## Scale\n");
    let _ = writeln!(o, "### Listing held locks\n");
    if r.listing.is_empty() {
        let _ = writeln!(o, "Not measured in this run.\n");
    } else {
        let _ = writeln!(
            o,
            "Locks acquired by 64 concurrent library clients (1 h TTL), then paged through 1,000 at a time (the API's largest page).\n\n| backend | held locks | fill time | fill rate | list, library | pages | list, HTTP |\n|---|---|---|---|---|---|---|"
        );
        for l in &r.listing {
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} s | {} /s | {} ({} seen) | {} | {} |",
                l.backend,
                rate(l.locks as f64),
                l.fill_s,
                rate(l.locks as f64 / l.fill_s),
                ms(l.library_ms),
                rate(l.library_seen as f64),
                l.library_pages,
                l.http_ms.map_or("–".into(), |t| format!(
                    "{} ({} seen)",
                    ms(t),
                    rate(l.http_seen.unwrap_or(0) as f64)
                ))
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "### Redis memory per held lock\n");
    match &r.memory {
        Some(m) => {
            let _ = writeln!(
                o,
                "`INFO memory` used_memory before and after acquiring {} locks: {} → {} bytes, **{:.0} bytes per held lock** (lease hash, due-time and index entries, fencing-token key).\n",
                rate(m.locks as f64),
                rate(m.before_bytes as f64),
                rate(m.after_bytes as f64),
                m.per_lock_bytes
            );
        }
        None => {
            let _ = writeln!(o, "Not measured in this run.\n");
        }
    }
    let _ = writeln!(o, "### Enqueue and hand-off with queued entries\n");
    if r.queue_scale.is_empty() {
        let _ = writeln!(o, "Not measured in this run.\n");
    } else {
        let _ = writeln!(
            o,
            "One resource with a holder and N reservations queued. Each round: one more reservation is enqueued (timed: TryLock with reserve), the holder unlocks (timed: the same step grants the head reservation), the new holder collects its lease with its reservation's request id (untimed). The queue stays at N. Library calls, one at a time.\n\n| backend | queued | enqueue p50 | enqueue p99 | hand-off (unlock) p50 | hand-off p99 |\n|---|---|---|---|---|---|"
        );
        for q in &r.queue_scale {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                q.backend,
                q.depth,
                ms(q.enqueue.p50),
                ms(q.enqueue.p99),
                ms(q.handoff.p50),
                ms(q.handoff.p99)
            );
        }
        let _ = writeln!(o);
        plot(
            &mut o,
            "scale.svg",
            "enqueue and hand-off time by queue length",
        );
    }

    recovery_section(&mut o, r);
    keep_block(&mut o, previous, "recovery");

    // Peers.
    let _ = writeln!(o, "## Peers\n");
    let _ = writeln!(
        o,
        "Same Redis, same concurrency, hold time and duration; each library's own blocking acquire with a 30 s TTL.\n\n- rslock: Redlock over SET NX PX on one server; its acquire retries after a random 0–200 ms (default) or 0–10 ms (`set_retry(3, 10ms)`). Driven from Rust in this process, like tflock.\n- redis-py `Lock`: SET NX PX, blocking acquire polls every 0.1 s (its default). python-redis-lock: SET NX, then BLPOP on a signal list the releaser pushes to. Both driven by `crates/tflock-bench/peers/peers.py` (threads, one shared client) from a venv made under target/ at bench time.\n"
    );
    if !r.peer_versions.is_empty() {
        let list: Vec<String> = r
            .peer_versions
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(o, "Versions: {}.\n", list.join(", "));
    }

    // Short.
    let _ = writeln!(o, "## Where tflock falls short\n");
    let shorts: Vec<&String> = vs.iter().filter_map(|v| v.short.as_ref()).collect();
    if shorts.is_empty() {
        let _ = writeln!(o, "Every goal judged in this run was met.\n");
    } else {
        let _ = writeln!(
            o,
            "From the numbers of this run (the reasons are in the analysis below):\n"
        );
        for s in shorts {
            let _ = writeln!(o, "- {s}");
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## Analysis\n");
    keep_block(&mut o, previous, "analysis");

    let _ = writeln!(o, "## Skipped and errors\n");
    if r.skipped.is_empty() && r.errors.is_empty() {
        let _ = writeln!(o, "Nothing was skipped and no measure failed.\n");
    } else {
        for s in &r.skipped {
            let _ = writeln!(o, "- Skipped: {}: {}", s.what, s.why);
        }
        for e in &r.errors {
            let _ = writeln!(o, "- Error: {e}");
        }
        let errs: Vec<String> = r
            .handoff
            .iter()
            .flat_map(|h| {
                h.errors
                    .iter()
                    .map(move |e| format!("{}: {e}", h.system.label))
            })
            .chain(r.fairness.iter().flat_map(|f| {
                f.errors
                    .iter()
                    .map(move |e| format!("{}: {e}", f.system.label))
            }))
            .take(10)
            .collect();
        for e in errs {
            let _ = writeln!(o, "- Client error: {e}");
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "Raw results of this run: [`results.json`]({plots}/results.json)."
    );
    // Sections other tools write (the tflock-redis example scale_cost,
    // scripts/bench-http, scripts/bench-terraform) are carried over as they are, in
    // this order, so a run of this generator never drops them.
    for name in WRITTEN_ELSEWHERE {
        if let Some(block) = written_elsewhere(previous, name) {
            let _ = writeln!(o, "\n{block}");
        }
    }
    o
}

/// Sections of the report written by other tools, between `<!-- NAME:begin -->` and
/// `<!-- NAME:end -->`.
const WRITTEN_ELSEWHERE: [&str; 3] = ["redis-scale", "bench-http", "bench-terraform"];

/// The block `name` of `previous` written by another tool, markers included.
fn written_elsewhere(previous: &str, name: &str) -> Option<String> {
    let open = format!("<!-- {name}:begin -->");
    let close = format!("<!-- {name}:end -->");
    let start = previous.find(&open)?;
    let end = start + previous[start..].find(&close)? + close.len();
    Some(previous[start..end].to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sections_written_elsewhere_are_carried_over() {
        let prev = "a\n<!-- bench-http:begin -->\n## HTTP\nfigures\n<!-- bench-http:end -->\nb";
        assert_eq!(
            written_elsewhere(prev, "bench-http").as_deref(),
            Some("<!-- bench-http:begin -->\n## HTTP\nfigures\n<!-- bench-http:end -->")
        );
        assert_eq!(written_elsewhere(prev, "bench-terraform"), None);
    }

    #[test]
    fn redis_scale_is_carried_over_before_bench_http() {
        let prev = "a\n<!-- redis-scale:begin -->\n## Scale\nbytes\n<!-- redis-scale:end -->\n\n<!-- bench-http:begin -->\n## HTTP\n<!-- bench-http:end -->\nb";
        let out = super::render(&super::Results::default(), prev, "bench", &[]);
        let scale = out
            .find("<!-- redis-scale:begin -->\n## Scale\nbytes\n<!-- redis-scale:end -->")
            .expect("redis-scale carried over");
        let http = out
            .find("<!-- bench-http:begin -->")
            .expect("bench-http carried over");
        assert!(scale < http, "redis-scale comes before bench-http");
    }

    use super::*;

    #[test]
    fn keeps_hand_written_blocks() {
        let prev = "x\n<!-- keep:intro -->\nMy intro.\n<!-- /keep:intro -->\ny";
        assert_eq!(kept(prev, "intro").as_deref(), Some("My intro.\n"));
        assert_eq!(kept(prev, "analysis"), None);
        let out = render(&Results::default(), prev, "bench", &[]);
        assert!(out.contains("<!-- keep:intro -->\nMy intro.\n<!-- /keep:intro -->"));
        for s in SECTIONS {
            assert!(out.contains(s), "{s}");
        }
        // A second generation keeps the block unchanged.
        let again = render(&Results::default(), &out, "bench", &[]);
        assert_eq!(kept(&again, "intro"), kept(&out, "intro"));
        assert_eq!(kept(&again, "analysis"), kept(&out, "analysis"));
    }
}
