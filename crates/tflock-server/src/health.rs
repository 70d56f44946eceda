//! Liveness, readiness, the locking health report and the Prometheus scrape.
//!
//! Every backend check is bounded by [`CHECK_TIMEOUT`]: a probe that hangs is worse
//! than one that says "unavailable", because orchestrators then stop routing to us.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use tflock_core::{BackendError, BackendHealth, BackendMetrics};

use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::metrics::Performance;
use crate::state::AppState;

/// Longest a health probe waits for the backend: a healthy store answers in
/// milliseconds, and orchestrators give up on a probe after a few seconds (Kubernetes:
/// 1s by default), so a slower answer is already a failure.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn bounded<T>(f: impl Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Unavailable(format!(
            "no answer within {}",
            humantime::format_duration(CHECK_TIMEOUT)
        ))),
    }
}

/// `GET /healthz`: the process is up and serving HTTP.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the backend answers its health check.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match bounded(state.backend().health_check()).await {
        Ok(h) if h.healthy => {
            Json(json!({"status": "ready", "backend": h.backend})).into_response()
        }
        Ok(h) => ApiError::unavailable(format!("the {} backend reports unhealthy", h.backend))
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The body of `GET /api/health/locking`.
#[derive(Debug, Serialize)]
pub(crate) struct LockingHealth {
    /// `healthy` or `unhealthy`.
    status: &'static str,
    backend: &'static str,
    /// The backend's own check (`None` when it failed; see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<BackendHealth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<BackendMetrics>,
    /// Recent operations through this server.
    performance: Performance,
    /// The backend's circuit breaker as it reports it in its health details
    /// (`closed`, `open`, `half_open`); `none` for a backend without one.
    circuit_breaker: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<tflock_core::Error>,
}

/// `GET /api/health/locking`: 200 when healthy, 503 when not.
pub(crate) async fn locking(State(state): State<AppState>) -> Response {
    let backend = state.backend();
    let health = bounded(backend.health_check()).await;
    let metrics = bounded(backend.get_metrics()).await;
    let healthy = matches!(&health, Ok(h) if h.healthy) && metrics.is_ok();
    let circuit_breaker = health
        .as_ref()
        .ok()
        .and_then(|h| h.details.get("circuit_breaker"))
        .and_then(|v| v.as_str())
        .unwrap_or("none")
        .to_string();
    let error = match (&health, &metrics) {
        (Err(e), _) | (Ok(_), Err(e)) => Some(tflock_core::Error::from(e.clone())),
        (Ok(h), Ok(_)) if !h.healthy => Some(tflock_core::Error::new(
            tflock_core::ErrorCode::BackendUnavailable,
            "the backend reports unhealthy",
        )),
        _ => None,
    };
    let body = LockingHealth {
        status: if healthy { "healthy" } else { "unhealthy" },
        backend: backend.name(),
        health: health.ok(),
        metrics: metrics.ok(),
        performance: state.metrics().performance(),
        circuit_breaker,
        error,
    };
    if healthy {
        Json(body).into_response()
    } else {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        r
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let backend = bounded(state.backend().get_metrics()).await.ok();
    let text = state.metrics().render(backend);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
