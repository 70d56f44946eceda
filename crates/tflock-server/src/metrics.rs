//! Prometheus metrics and the recent-performance window shown by `/api/health/locking`.
//!
//! Each server has its own recorder (not the process-global one), so several servers in
//! one test process keep separate counts and nothing has to be installed at start-up.
//! Recording is synchronous, which is what [`metrics::with_local_recorder`] needs.
//!
//! Series:
//! - `tflock_operations_total{operation, outcome}`: backend operations; `outcome` is
//!   `ok`, `acquired`, `not_acquired`, `queued` or an error code.
//! - `tflock_operation_duration_seconds{operation}`: their latency. A waiting acquire
//!   is `acquire_wait`, so time spent in line does not blur the latency of the rest.
//! - `tflock_http_requests_total{method, route, status}`: every HTTP answer, by route
//!   pattern (never by raw path, which would make one series per lock).
//! - `tflock_active_locks`, `tflock_queue_depth`, `tflock_handoffs_total`,
//!   `tflock_expiries_total`, `tflock_store_data_loss_total`, `tflock_backend_up`: read
//!   from the backend at scrape time.
//! - `tflock_circuit_breaker_state`: 0 closed, 1 half-open, 2 open, and
//!   `tflock_circuit_breaker_transitions_total`: its state changes since start (with a
//!   breaker).
//!
//! Only series recorded here reach `/metrics`: no process-global recorder is
//! installed, so a `counter!` elsewhere would record into nothing (a test below
//! guards it). Other crates expose counts (the breaker's transitions, the backend's
//! hand-offs) and this module reads them at scrape time.
//! - `tflock_webhook_deliveries_total{receiver, outcome}` (`delivered`, `failed`),
//!   `tflock_webhook_retries_total{receiver}`, `tflock_webhook_dropped_total{receiver}`
//!   (events dropped because the receiver's queue was full) and
//!   `tflock_webhook_queue_depth{receiver}`; `receiver` is the URL's index in the
//!   configuration (URLs can hold secrets, so they are never labels).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{Recorder, counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Serialize;
use tflock_core::BackendMetrics;
use tflock_health::BreakerState;

use crate::webhooks::ReceiverStats;

/// Histogram buckets in seconds: sub-millisecond for plain operations up to the
/// five-minute `max_timeout` of a waiting acquire.
const BUCKETS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
    60.0, 300.0,
];

/// How far back `/api/health/locking` looks.
const WINDOW: Duration = Duration::from_secs(60);
/// Most samples kept, so a burst cannot grow the window without bound.
const WINDOW_CAP: usize = 8192;

pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    window: Mutex<PerfWindow>,
}

struct PerfWindow {
    started: Instant,
    samples: VecDeque<Sample>,
}

struct Sample {
    at: Instant,
    latency: Duration,
    failed: bool,
}

/// The spec's PerformanceMetrics over the last minute of non-waiting operations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Performance {
    pub window: String,
    pub operations: usize,
    pub operations_per_second: f64,
    #[serde(with = "humantime_serde")]
    pub average_latency: Duration,
    #[serde(with = "humantime_serde")]
    pub p95_latency: Duration,
    #[serde(with = "humantime_serde")]
    pub p99_latency: Duration,
    /// Share of operations that failed on the server's side (`backend_unavailable`,
    /// `internal`); a refused or invalid request is the caller's, not counted.
    pub error_rate: f64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("BUCKETS is a non-empty constant")
            .build_recorder();
        let handle = recorder.handle();
        with_local_recorder(&recorder, describe);
        Metrics {
            recorder,
            handle,
            window: Mutex::new(PerfWindow {
                started: Instant::now(),
                samples: VecDeque::new(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        let recorder: &dyn Recorder = &self.recorder;
        with_local_recorder(recorder, f)
    }

    /// One backend operation: its outcome and how long it took.
    pub(crate) fn operation(&self, operation: &'static str, outcome: &str, elapsed: Duration) {
        self.with(|| {
            counter!("tflock_operations_total", "operation" => operation, "outcome" => outcome.to_string())
                .increment(1);
            histogram!("tflock_operation_duration_seconds", "operation" => operation)
                .record(elapsed.as_secs_f64());
        });
        if operation == "acquire_wait" {
            return;
        }
        let failed = matches!(outcome, "backend_unavailable" | "internal");
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        w.samples.push_back(Sample {
            at: now,
            latency: elapsed,
            failed,
        });
        while w.samples.len() > WINDOW_CAP {
            w.samples.pop_front();
        }
        w.prune(now);
    }

    /// One HTTP answer.
    pub(crate) fn http(&self, method: &str, route: &str, status: u16) {
        self.with(|| {
            counter!(
                "tflock_http_requests_total",
                "method" => method.to_string(),
                "route" => route.to_string(),
                "status" => status.to_string()
            )
            .increment(1);
        });
    }

    /// The Prometheus text, with the backend's counts as of now (`None`: unreachable
    /// or not asked), the breaker's state and its transitions since start, and the
    /// webhooks' counts.
    pub(crate) fn render(
        &self,
        backend: Option<BackendMetrics>,
        breaker: Option<(BreakerState, u64)>,
        webhooks: Option<Vec<ReceiverStats>>,
    ) -> String {
        self.with(|| {
            match backend {
                Some(m) => {
                    gauge!("tflock_backend_up").set(1.0);
                    gauge!("tflock_active_locks").set(m.active_locks as f64);
                    gauge!("tflock_queue_depth").set(m.queue_depth as f64);
                    counter!("tflock_handoffs_total").absolute(m.handoffs);
                    counter!("tflock_expiries_total").absolute(m.expiries);
                    // Losses of the store's data this server found (docs/redis-design.md,
                    // "Data loss"); each one also logs an error and emits store.data_lost.
                    counter!("tflock_store_data_loss_total").absolute(m.data_losses);
                }
                None => gauge!("tflock_backend_up").set(0.0),
            }
            if let Some((b, transitions)) = breaker {
                gauge!("tflock_circuit_breaker_state").set(b.gauge());
                counter!("tflock_circuit_breaker_transitions_total").absolute(transitions);
            }
            for r in webhooks.unwrap_or_default() {
                let receiver = r.receiver.to_string();
                counter!("tflock_webhook_deliveries_total", "receiver" => receiver.clone(), "outcome" => "delivered")
                    .absolute(r.delivered);
                counter!("tflock_webhook_deliveries_total", "receiver" => receiver.clone(), "outcome" => "failed")
                    .absolute(r.failed);
                counter!("tflock_webhook_retries_total", "receiver" => receiver.clone())
                    .absolute(r.retries);
                counter!("tflock_webhook_dropped_total", "receiver" => receiver.clone())
                    .absolute(r.dropped);
                gauge!("tflock_webhook_queue_depth", "receiver" => receiver).set(r.queued as f64);
            }
        });
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Recent performance, for the health endpoint.
    pub(crate) fn performance(&self) -> Performance {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        w.prune(now);
        let n = w.samples.len();
        let span = now.duration_since(w.started).min(WINDOW).as_secs_f64();
        let mut latencies: Vec<Duration> = w.samples.iter().map(|s| s.latency).collect();
        latencies.sort_unstable();
        let failed = w.samples.iter().filter(|s| s.failed).count();
        let total: Duration = latencies.iter().sum();
        let pct = |p: f64| -> Duration {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            // Nearest-rank percentile.
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            latencies[rank - 1]
        };
        Performance {
            window: humantime::format_duration(WINDOW).to_string(),
            operations: n,
            operations_per_second: if span > 0.0 { n as f64 / span } else { 0.0 },
            average_latency: if n == 0 {
                Duration::ZERO
            } else {
                total / u32::try_from(n).unwrap_or(u32::MAX)
            },
            p95_latency: pct(0.95),
            p99_latency: pct(0.99),
            error_rate: if n == 0 {
                0.0
            } else {
                failed as f64 / n as f64
            },
        }
    }
}

impl PerfWindow {
    fn prune(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > WINDOW)
        {
            self.samples.pop_front();
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "tflock_operations_total",
        "Backend operations by kind and outcome"
    );
    describe_histogram!(
        "tflock_operation_duration_seconds",
        Unit::Seconds,
        "Latency of backend operations as seen by the HTTP server"
    );
    describe_counter!(
        "tflock_http_requests_total",
        "HTTP answers by method, route pattern and status"
    );
    describe_gauge!("tflock_active_locks", "Leases currently held");
    describe_gauge!("tflock_queue_depth", "Queue entries over all resources");
    describe_counter!(
        "tflock_handoffs_total",
        "Grants made by handing a lock to a queue entry, since the backend started"
    );
    describe_counter!(
        "tflock_expiries_total",
        "Leases ended by expiry, since the backend started"
    );
    describe_counter!(
        "tflock_store_data_loss_total",
        "Times this server found the store had lost tflock's data (restart without \
         persistence, flush, older backup, lagged replica promoted), since it started"
    );
    describe_gauge!(
        "tflock_backend_up",
        "1 when the backend answered the last scrape, else 0"
    );
    describe_gauge!(
        "tflock_circuit_breaker_state",
        "The backend's circuit breaker: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "tflock_circuit_breaker_transitions_total",
        "State changes of the backend's circuit breaker since the server started"
    );
    describe_counter!(
        "tflock_webhook_deliveries_total",
        "Webhook deliveries by receiver and outcome (delivered, failed after its retries)"
    );
    describe_counter!(
        "tflock_webhook_retries_total",
        "Webhook delivery attempts that were retried"
    );
    describe_counter!(
        "tflock_webhook_dropped_total",
        "Events dropped because a webhook receiver's queue was full (oldest first)"
    );
    describe_gauge!(
        "tflock_webhook_queue_depth",
        "Events waiting for delivery to a webhook receiver"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let m = Metrics::new();
        for ms in 1..=100 {
            m.operation("get_lock", "ok", Duration::from_millis(ms));
        }
        m.operation("acquire_wait", "acquired", Duration::from_secs(30));
        let p = m.performance();
        assert_eq!(p.operations, 100);
        assert_eq!(p.p95_latency, Duration::from_millis(95));
        assert_eq!(p.p99_latency, Duration::from_millis(99));
        assert_eq!(p.error_rate, 0.0);
    }

    /// Every metric macro in the workspace's code is in this file: one anywhere
    /// else records into the process-global recorder, which nobody installs, and its
    /// series never reach `/metrics` (the circuit breaker and guarded backend once
    /// recorded five series that way).
    #[test]
    fn no_metric_is_recorded_outside_this_module() {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = Vec::new();
        let mut stack = vec![crates];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("readable source tree") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|n| n != "target") {
                        stack.push(path);
                    }
                    continue;
                }
                let is_src = path.extension().is_some_and(|e| e == "rs")
                    && path.components().any(|c| c.as_os_str() == "src");
                if !is_src || path.ends_with("tflock-server/src/metrics.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("readable source");
                for (i, line) in text.lines().enumerate() {
                    if ["counter!(", "gauge!(", "histogram!("]
                        .iter()
                        .any(|m| line.contains(m))
                    {
                        found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "metrics recorded outside tflock-server's Metrics never reach /metrics:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn render_has_operation_and_backend_series() {
        let m = Metrics::new();
        m.operation("acquire", "acquired", Duration::from_millis(2));
        let text = m.render(
            Some(BackendMetrics {
                active_locks: 3,
                queue_depth: 2,
                handoffs: 1,
                expiries: 0,
                data_losses: 2,
            }),
            Some((BreakerState::HalfOpen, 2)),
            None,
        );
        assert!(text.contains("tflock_circuit_breaker_state 1"), "{text}");
        assert!(
            text.contains("tflock_circuit_breaker_transitions_total 2"),
            "{text}"
        );
        assert!(text.contains("tflock_store_data_loss_total 2"), "{text}");
        assert!(
            text.contains(r#"tflock_operations_total{operation="acquire",outcome="acquired"} 1"#),
            "{text}"
        );
        assert!(text.contains("tflock_active_locks 3"), "{text}");
        assert!(
            text.contains("tflock_operation_duration_seconds_bucket"),
            "{text}"
        );
    }
}
