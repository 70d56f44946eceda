//! What the pages show, read from the backend. Every call is bounded by
//! [`CALL_TIMEOUT`], so a hung store gives a page that says so instead of a page that
//! never loads.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tflock_core::{
    Error, ErrorCode, Lock, LockFilter, QueueStatus, Resource, SharedBackend, Timestamp,
};

use crate::Web;

/// Longest the page waits for one backend call (the API's health probes use the same).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Most locks the main page lists; past it the page says it shows the first ones.
pub const MAX_ROWS: usize = 500;

/// Queue lookups in flight at once while building the main page.
const QUEUE_LOOKUPS: usize = 8;

/// The page's clock (the backend's, for the embedded store).
pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// `f`, or `backend_unavailable` after [`CALL_TIMEOUT`].
pub async fn bounded<T, E>(f: impl Future<Output = Result<T, E>>) -> Result<T, Error>
where
    E: Into<Error>,
{
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(Error::new(
            ErrorCode::BackendUnavailable,
            format!(
                "the backend did not answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ),
        )),
    }
}

/// One row of the main table.
pub struct LockRow {
    pub lock: Lock,
    /// `None` when the queue could not be read.
    pub queue_len: Option<usize>,
}

/// The main page's table.
pub struct Overview {
    pub rows: Vec<LockRow>,
    /// More locks are held than [`MAX_ROWS`].
    pub truncated: bool,
}

/// Every held lock (up to [`MAX_ROWS`]) with its queue length.
pub async fn overview(backend: &SharedBackend) -> Result<Overview, Error> {
    let mut locks = Vec::new();
    let mut cursor = None;
    let mut truncated = false;
    loop {
        let page = bounded(backend.list_locks(LockFilter {
            cursor: cursor.take(),
            limit: Some(MAX_ROWS),
            ..LockFilter::default()
        }))
        .await?;
        locks.extend(page.locks);
        match page.next_cursor {
            Some(next) if locks.len() < MAX_ROWS => cursor = Some(next),
            Some(_) => {
                truncated = true;
                break;
            }
            None => break,
        }
    }
    if locks.len() > MAX_ROWS {
        locks.truncate(MAX_ROWS);
        truncated = true;
    }
    let rows = futures::stream::iter(locks)
        .map(|lock| async move {
            let queue_len = bounded(backend.get_queue_status(&lock.resource))
                .await
                .ok()
                .map(|q| q.entries.len());
            LockRow { lock, queue_len }
        })
        .buffered(QUEUE_LOOKUPS)
        .collect()
        .await;
    Ok(Overview { rows, truncated })
}

/// One lock's holder and queue.
pub async fn queue(backend: &SharedBackend, resource: &Resource) -> Result<QueueStatus, Error> {
    bounded(backend.get_queue_status(resource)).await
}

/// The health panel's figures; `None` where the figure could not be had.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthView {
    pub backend: &'static str,
    pub healthy: bool,
    /// Why it is not healthy.
    pub problem: Option<String>,
    /// `closed`, `open`, `half_open`, or `none` for a backend without a breaker.
    pub breaker: String,
    /// Latency and throughput over the last minute; `None` when this page has no
    /// [`tflock_health::Health`] window to read them from.
    pub performance: Option<Performance>,
    pub active_locks: Option<u64>,
    pub queue_depth: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Performance {
    pub p95: Duration,
    pub p99: Duration,
    pub operations_per_second: f64,
}

/// The health panel: from the [`tflock_health::Health`] when the page has one (its
/// `report()`), else from the backend's own health check.
pub async fn health(web: &Web) -> HealthView {
    let backend = web.backend();
    let (check, counts) = tokio::join!(
        bounded(backend.health_check()),
        bounded(backend.get_metrics())
    );
    let counts_ok = counts.as_ref().ok().copied();
    if let Some(health) = web.health() {
        let report = health.report(counts_ok);
        let problem = match (&report.last_error, &counts) {
            (Some(e), _) => Some(e.clone()),
            (None, Err(e)) => Some(e.message.clone()),
            (None, Ok(_)) if !report.healthy => Some(format!(
                "the circuit breaker is {}",
                report.circuit_breaker_state.as_str().replace('_', "-")
            )),
            _ => None,
        };
        return HealthView {
            backend: backend.name(),
            healthy: report.healthy && counts.is_ok(),
            problem,
            breaker: report.circuit_breaker_state.as_str().to_string(),
            performance: health.window.as_ref().map(|_| Performance {
                p95: report.performance.p95_latency,
                p99: report.performance.p99_latency,
                operations_per_second: report.performance.operations_per_second,
            }),
            active_locks: counts_ok.map(|c| c.active_locks),
            queue_depth: counts_ok.map(|c| c.queue_depth),
        };
    }
    let breaker = check
        .as_ref()
        .ok()
        .and_then(|h| h.details.get("circuit_breaker"))
        .and_then(|v| v.as_str())
        .unwrap_or("none")
        .to_string();
    let problem = match (&check, &counts) {
        (Err(e), _) | (Ok(_), Err(e)) => Some(e.message.clone()),
        (Ok(h), Ok(_)) if !h.healthy => Some("the backend reports unhealthy".to_string()),
        _ => None,
    };
    HealthView {
        backend: backend.name(),
        healthy: problem.is_none(),
        problem,
        breaker,
        performance: None,
        active_locks: counts_ok.map(|c| c.active_locks),
        queue_depth: counts_ok.map(|c| c.queue_depth),
    }
}
