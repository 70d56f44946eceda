//! Everything one run measured, as plain data: the report and the plots are drawn
//! from it, and it is written next to them as `results.json`.

use serde::{Deserialize, Serialize};

use crate::measure::ContendResult;
use crate::stats::{Latency, jain};

/// Who was measured: tflock (backend + surface) or a peer library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct System {
    /// `tflock embedded · library`, `rslock (default retry)`, ...
    pub label: String,
    pub peer: bool,
}

impl System {
    pub fn tflock(backend: &str, surface: &str) -> System {
        System {
            label: format!("tflock {backend} · {surface}"),
            peer: false,
        }
    }

    pub fn peer(label: &str) -> System {
        System {
            label: label.into(),
            peer: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub redis: String,
    pub rustc: String,
    pub python: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskCeiling {
    pub fsync_per_s: f64,
    /// Latency of one fsync, one thread (ms).
    pub fsync_latency: Latency,
    pub fsync_16_threads_per_s: f64,
    pub redb_commits_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptCeiling {
    pub clients: usize,
    /// One-round-trip EVALSHA loop with redis-rs, one multiplexed connection.
    pub evalsha_loop_per_s: f64,
    /// `redis-benchmark -P 1`, `None` when it could not run.
    pub redis_benchmark_per_s: Option<f64>,
    /// Redis's cost of the loop.
    pub redis: Option<RedisCost>,
    /// The benchmark process's CPU time per script (µs).
    pub process_cpu_us: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairsRow {
    pub system: System,
    pub clients: usize,
    pub pairs_per_s: f64,
    /// What Redis did for it (Redis-backed systems).
    pub redis: Option<RedisCost>,
    /// CPU time of the benchmark's process per pair (µs): the clients, tflock's
    /// client side and, for HTTP, the in-process server.
    pub process_cpu_us: Option<f64>,
}

/// Redis's own accounting over a measure (`INFO commandstats` and `INFO cpu`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisCost {
    /// Commands Redis ran per operation (pair or script).
    pub commands_per_op: f64,
    /// Microseconds Redis spent in commands per operation.
    pub usec_per_op: f64,
    /// Redis's CPU time over the measure's wall time (1.0 = one core saturated).
    pub cpu_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoffRow {
    pub system: System,
    pub waiters: usize,
    pub latency: Latency,
    pub self_regrants: u64,
    pub timeouts: u64,
    /// Grants while another client still held the lock.
    pub overlaps: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FairnessRow {
    pub system: System,
    pub clients: usize,
    pub seconds: f64,
    pub hold_ms: f64,
    pub hold_mean_ms: f64,
    pub acquisitions: u64,
    pub jain: f64,
    pub fewest: u64,
    pub most: u64,
    pub longest_wait_ms: f64,
    pub wait: Latency,
    pub handoff: Latency,
    /// (n-1) x (mean hold + hand-off p50): the wait of a perfect FIFO queue.
    pub ideal_wait_ms: f64,
    pub counts: Vec<u64>,
    pub self_regrants: u64,
    pub overlaps: u64,
    pub errors: Vec<String>,
}

impl FairnessRow {
    pub fn from_contention(
        system: System,
        hold_ms: f64,
        seconds: f64,
        c: &ContendResult,
    ) -> FairnessRow {
        let all_waits: Vec<f64> = c.waits.iter().flatten().copied().collect();
        let wait = Latency::of(all_waits);
        let handoff = Latency::of(c.handoffs.clone());
        let hold_mean_ms = if c.holds.is_empty() {
            hold_ms
        } else {
            c.holds.iter().sum::<f64>() / c.holds.len() as f64
        };
        let n = c.counts.len();
        FairnessRow {
            system,
            clients: n,
            seconds,
            hold_ms,
            hold_mean_ms,
            acquisitions: c.counts.iter().sum(),
            jain: jain(&c.counts),
            fewest: c.counts.iter().copied().min().unwrap_or(0),
            most: c.counts.iter().copied().max().unwrap_or(0),
            longest_wait_ms: wait.max,
            ideal_wait_ms: n.saturating_sub(1) as f64 * (hold_mean_ms + handoff.p50),
            wait,
            handoff,
            counts: c.counts.clone(),
            self_regrants: c.self_regrants,
            overlaps: c.overlaps,
            errors: c.errors.iter().take(5).cloned().collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StarvationRow {
    pub system: System,
    pub high_clients: usize,
    pub high_hold_ms: f64,
    pub threshold_ms: f64,
    pub max_boost: u8,
    /// starvation_threshold x max_priority_boost.
    pub bound_ms: f64,
    /// The low-priority waiter's waits (ms), one per grant it got.
    pub low_waits_ms: Vec<f64>,
    /// The high-priority clients' wait p99 (ms).
    pub high_wait_p99_ms: f64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListingRow {
    pub backend: String,
    pub locks: usize,
    pub fill_s: f64,
    pub library_ms: f64,
    pub library_pages: usize,
    pub library_seen: usize,
    pub http_ms: Option<f64>,
    pub http_seen: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryRow {
    pub locks: usize,
    pub before_bytes: u64,
    pub after_bytes: u64,
    pub per_lock_bytes: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueScaleRow {
    pub backend: String,
    pub depth: usize,
    pub enqueue: Latency,
    pub handoff: Latency,
}

/// A measure that could not be taken, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub what: String,
    pub why: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub mode: String,
    pub command: String,
    pub started_at: String,
    pub total_s: f64,
    pub settings: serde_json::Value,
    pub machine: Option<Machine>,
    /// 1-minute load average before and after the run (other work on the machine).
    pub load_before: Option<f64>,
    pub load_after: Option<f64>,
    /// Lateness of a thread's wake-up from a 200 µs sleep (ms), before and after.
    pub wakeup_before: Option<Latency>,
    pub wakeup_after: Option<Latency>,
    pub disk: Option<DiskCeiling>,
    pub scripts: Vec<ScriptCeiling>,
    pub pairs: Vec<PairsRow>,
    pub handoff: Vec<HandoffRow>,
    pub fairness: Vec<FairnessRow>,
    pub starvation: Vec<StarvationRow>,
    pub listing: Vec<ListingRow>,
    pub memory: Option<MemoryRow>,
    pub queue_scale: Vec<QueueScaleRow>,
    pub peer_versions: Vec<(String, String)>,
    /// Recovery after Redis faults; absent in results of runs before it existed.
    #[serde(default)]
    pub recovery: Option<crate::recovery::RecoveryRun>,
    pub skipped: Vec<Skipped>,
    /// Errors met along the way (a measure that failed is reported, not fatal).
    pub errors: Vec<String>,
}
