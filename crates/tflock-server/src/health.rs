//! Liveness, readiness, the locking health report and the Prometheus scrape.
//!
//! Every backend check is bounded by [`CHECK_TIMEOUT`]: a probe that hangs is worse
//! than one that says "unavailable", because orchestrators then stop routing to us.
//!
//! With a [`tflock_health::Health`] handle ([`AppState::with_health`]) the locking
//! report is the handle's: the breaker's state, the last health check of its monitor
//! and the latency window of every backend call. A health read never changes the
//! breaker: while it is not closed, the report does not call the backend at all
//! (not even for lock counts), so reading health never spends a half-open probe.
//! Without a handle the report runs a bounded health check of its own and shows the
//! server's own latency window.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tflock_core::{BackendError, BackendHealth, BackendMetrics, Timestamp};
use tflock_health::BreakerState;
use utoipa::ToSchema;

use crate::error::{ApiError, retry_after_secs};
use crate::state::AppState;
use crate::wire::{ErrorBody, Liveness, Readiness};

/// Longest a health probe waits for the backend: a healthy store answers in
/// milliseconds, and orchestrators give up on a probe after a few seconds (Kubernetes:
/// 1s by default), so a slower answer is already a failure.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn bounded<T>(
    state: &AppState,
    f: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let limit = CHECK_TIMEOUT.min(state.limits().request_timeout);
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Unavailable(format!(
            "no answer within {}",
            humantime::format_duration(limit)
        ))),
    }
}

/// `GET /healthz`: the process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "Alive", body = Liveness)))]
pub(crate) async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".into(),
    })
}

/// `GET /readyz`: the backend is reachable (and, with a breaker, the breaker is not
/// open).
#[utoipa::path(get, path = "/readyz", tag = "health",
    summary = "Readiness: the backend answers its health check",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "`backend_unavailable`: the backend is unreachable, \
            unhealthy, or its circuit breaker is open", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a retry may succeed"))),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(health) = state.health()
        && health.breaker.state() == BreakerState::Open
    {
        return ApiError::unavailable(
            "the backend's circuit breaker is open: it failed repeatedly",
        )
        .into_response();
    }
    match bounded(&state, state.backend().health_check()).await {
        Ok(h) if h.healthy => Json(Readiness {
            status: "ready".into(),
            backend: h.backend,
        })
        .into_response(),
        Ok(h) => ApiError::unavailable(format!("the {} backend reports unhealthy", h.backend))
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `healthy` or `unhealthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Healthy,
    Unhealthy,
}

/// The circuit breaker's state; `none` for a backend served without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CircuitState {
    Closed,
    Open,
    HalfOpen,
    None,
}

impl From<BreakerState> for CircuitState {
    fn from(s: BreakerState) -> Self {
        match s {
            BreakerState::Closed => CircuitState::Closed,
            BreakerState::Open => CircuitState::Open,
            BreakerState::HalfOpen => CircuitState::HalfOpen,
        }
    }
}

/// The spec's HealthMetrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HealthMetrics {
    /// Client connections of the backend (Redis: `connected_clients`).
    connections_active: i64,
    /// Connections ever accepted by the backend (Redis: `total_connections_received`).
    connections_total: i64,
    /// Round trip of the last health check.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "1ms 250us")]
    response_time: Duration,
    /// Bytes used by the backend (Redis: `used_memory`).
    memory_usage: i64,
    /// Entries in the backend's slow log (Redis: `SLOWLOG LEN`).
    slow_queries: i64,
    /// When the last health check ran; `null` before the first.
    last_health_check: Option<Timestamp>,
    circuit_breaker_state: CircuitState,
}

/// The spec's PerformanceMetrics, over the last minute.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PerformanceMetrics {
    /// How far back these figures look.
    #[schema(example = "1m")]
    window: String,
    /// Operations in the window (a waiting acquire's time in line is not latency, so
    /// waits are left out).
    operations: u64,
    operations_per_second: f64,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    average_latency: Duration,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    p95_latency: Duration,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    p99_latency: Duration,
    /// Share of operations that failed on the backend's side (`backend_unavailable`,
    /// `internal`); a refused or invalid request is the caller's, not counted.
    error_rate: f64,
    /// Queue entries over all resources (0 when the backend could not be asked).
    queue_depth: u64,
    /// Leases currently held (0 when the backend could not be asked).
    active_locks: u64,
}

/// The body of `GET /api/health/locking`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LockingHealth {
    status: Status,
    /// `embedded` or `redis`.
    backend: String,
    /// The circuit breaker's state (also in `health.circuit_breaker_state`).
    circuit_breaker: CircuitState,
    health: HealthMetrics,
    performance: PerformanceMetrics,
    /// The last health check's own findings, in the backend's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<BackendHealth>,
    /// Lock and queue counts, when the backend gave them.
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<BackendMetrics>,
    /// Why the backend is unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<tflock_core::Error>,
}

/// A health check detail as a number, under the first of `keys` present.
fn detail(check: Option<&BackendHealth>, keys: &[&str]) -> i64 {
    check
        .and_then(|c| {
            keys.iter()
                .find_map(|k| c.details.get(*k).and_then(serde_json::Value::as_i64))
        })
        .unwrap_or(0)
}

/// Why a backend that answered its check is unhealthy, in words, where it said why:
/// a data loss (`reason: data_lost`) names itself and the end of its lock_delay.
fn unhealthy_words(check: Option<&BackendHealth>) -> Option<String> {
    let c = check?;
    if c.details.get("reason")?.as_str()? != "data_lost" {
        return None;
    }
    let until = c
        .details
        .get("lock_delay_until")
        .and_then(serde_json::Value::as_str)
        .map(|u| format!("nothing is granted until {u} (lock_delay)"))
        .unwrap_or_else(|| "its lock_delay is over".into());
    Some(format!(
        "data_lost: the store lost tflock's data (restart without persistence, flush, older \
         backup or lagged replica); fencing tokens stay above every earlier one; {until}"
    ))
}

/// `GET /api/health/locking`: 200 when healthy, 503 when not.
#[utoipa::path(get, path = "/api/health/locking", tag = "health",
    summary = "Backend health, performance and circuit breaker state",
    responses(
        (status = 200, description = "Healthy", body = LockingHealth),
        (status = 503, description = "Unhealthy: the same report, with `error`",
            body = LockingHealth,
            headers(("Retry-After" = u64, description = "Seconds until a retry may succeed"))),
    ))]
pub(crate) async fn locking(State(state): State<AppState>) -> Response {
    let body = match state.health() {
        Some(health) => guarded_report(&state, health).await,
        None => own_report(&state).await,
    };
    if body.status == Status::Healthy {
        Json(body).into_response()
    } else {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(&state)),
        );
        r
    }
}

/// The report of a backend behind a breaker: the [`tflock_health::Health`] handle's.
async fn guarded_report(state: &AppState, health: &tflock_health::Health) -> LockingHealth {
    let breaker = health.breaker.state();
    let (metrics, metrics_error) = if breaker == BreakerState::Closed {
        match bounded(state, state.backend().get_metrics()).await {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let report = health.report(metrics);
    let operations = health.window.as_ref().map_or(0, |w| w.stats().operations);
    let healthy = report.healthy && metrics_error.is_none();
    let error = if healthy {
        None
    } else if let Some(e) = metrics_error {
        Some(tflock_core::Error::from(e))
    } else if report.circuit_breaker_state != BreakerState::Closed {
        Some(tflock_core::Error::new(
            tflock_core::ErrorCode::BackendUnavailable,
            format!(
                "the circuit breaker is {}: the backend failed repeatedly{}",
                report.circuit_breaker_state.as_str(),
                report
                    .last_error
                    .as_deref()
                    .map(|e| format!(" (last check: {e})"))
                    .unwrap_or_default()
            ),
        ))
    } else {
        Some(tflock_core::Error::new(
            tflock_core::ErrorCode::BackendUnavailable,
            unhealthy_words(report.last_check.as_ref())
                .or_else(|| report.last_error.clone())
                .unwrap_or_else(|| "the backend reports unhealthy".into()),
        ))
    };
    let h = &report.health;
    let p = &report.performance;
    LockingHealth {
        status: if healthy {
            Status::Healthy
        } else {
            Status::Unhealthy
        },
        backend: report.backend.clone(),
        circuit_breaker: report.circuit_breaker_state.into(),
        health: HealthMetrics {
            connections_active: h.connections_active,
            connections_total: h.connections_total,
            response_time: h.response_time,
            memory_usage: h.memory_usage,
            slow_queries: h.slow_queries,
            last_health_check: h.last_health_check,
            circuit_breaker_state: h.circuit_breaker_state.into(),
        },
        performance: PerformanceMetrics {
            window: "1m".into(),
            operations,
            operations_per_second: p.operations_per_second,
            average_latency: p.average_latency,
            p95_latency: p.p95_latency,
            p99_latency: p.p99_latency,
            error_rate: p.error_rate,
            queue_depth: p.queue_depth,
            active_locks: p.active_locks,
        },
        check: report.last_check,
        metrics,
        error,
    }
}

/// The report of a backend without a breaker: a bounded health check now, and the
/// server's own latency window.
async fn own_report(state: &AppState) -> LockingHealth {
    let backend = state.backend();
    let (check, metrics) = tokio::join!(
        bounded(state, backend.health_check()),
        bounded(state, backend.get_metrics())
    );
    let healthy = matches!(&check, Ok(h) if h.healthy) && metrics.is_ok();
    let error = match (&check, &metrics) {
        (Err(e), _) | (Ok(_), Err(e)) => Some(tflock_core::Error::from(e.clone())),
        (Ok(h), Ok(_)) if !h.healthy => Some(tflock_core::Error::new(
            tflock_core::ErrorCode::BackendUnavailable,
            unhealthy_words(Some(h)).unwrap_or_else(|| "the backend reports unhealthy".into()),
        )),
        _ => None,
    };
    let check = check.ok();
    let metrics = metrics.ok();
    let perf = state.metrics().performance();
    let counts = metrics.unwrap_or_default();
    LockingHealth {
        status: if healthy {
            Status::Healthy
        } else {
            Status::Unhealthy
        },
        backend: backend.name().to_string(),
        circuit_breaker: CircuitState::None,
        health: HealthMetrics {
            connections_active: detail(
                check.as_ref(),
                &["connections_active", "connected_clients"],
            ),
            connections_total: detail(
                check.as_ref(),
                &["connections_total", "total_connections_received"],
            ),
            response_time: check.as_ref().map(|c| c.response_time).unwrap_or_default(),
            memory_usage: detail(
                check.as_ref(),
                &["memory_usage", "used_memory", "memory_usage_bytes"],
            ),
            slow_queries: detail(check.as_ref(), &["slow_queries", "slowlog_len"]),
            last_health_check: Some(check.as_ref().map_or_else(
                || Timestamp::from_system_time(std::time::SystemTime::now()),
                |c| c.checked_at,
            )),
            circuit_breaker_state: CircuitState::None,
        },
        performance: PerformanceMetrics {
            window: perf.window,
            operations: perf.operations as u64,
            operations_per_second: perf.operations_per_second,
            average_latency: perf.average_latency,
            p95_latency: perf.p95_latency,
            p99_latency: perf.p99_latency,
            error_rate: perf.error_rate,
            queue_depth: counts.queue_depth,
            active_locks: counts.active_locks,
        },
        check,
        metrics,
        error,
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let breaker = state
        .health()
        .map(|h| (h.breaker.state(), h.breaker.transitions()));
    // A scrape must not spend a half-open breaker's probe: ask only when closed.
    let backend = if breaker.is_none_or(|(b, _)| b == BreakerState::Closed) {
        bounded(&state, state.backend().get_metrics()).await.ok()
    } else {
        None
    };
    let webhooks = state.webhooks().map(|w| w.stats());
    let text = state.metrics().render(backend, breaker, webhooks);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
