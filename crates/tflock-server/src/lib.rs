//! The tflock HTTP server: the wire form (`shared/design/http-api.md`) of the locking
//! contract over any [`tflock_core::Backend`].
//!
//! [`serve`] takes its listener and its shutdown future as arguments, so tests bind
//! `127.0.0.1:0` and run the real server in-process; [`router`] gives the bare
//! [`axum::Router`] for embedding.
//!
//! # Layout
//!
//! - [`state`]: [`AppState`] (backend, [`Tokens`], metrics, shutdown flag), [`Secret`].
//! - [`auth`]: bearer-token roles; the [`auth::Mutator`] and [`auth::Admin`] extractors.
//! - [`extract`]: JSON body and query extractors that answer bad input as
//!   `invalid_request` naming the field, and the body size cap.
//! - [`error`]: [`ApiError`], the one error type handlers return, and its JSON form.
//! - [`wire`]: request and answer bodies of the v1 API.
//! - `api`: the v1 lock and queue handlers.
//! - `atlantis`: `GET /api/locks` in Atlantis's shape.
//! - `health`: `/healthz`, `/readyz`, `/api/health/locking`, `/metrics`.
//! - `events`: `GET /api/events` (Server-Sent Events).
//! - `metrics`: the per-server Prometheus recorder and recent-performance window.

pub mod auth;
pub mod error;
pub mod extract;
pub mod state;
pub mod wire;

mod api;
mod atlantis;
mod events;
mod health;
mod metrics;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;

pub use error::ApiError;
pub use extract::MAX_BODY_BYTES;
pub use metrics::Performance;
pub use state::{AppState, Secret, Tokens};

/// Every route of the API, with the body cap, request logging and JSON answers for
/// unknown paths and methods.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/locks/acquire", post(api::acquire))
        .route("/api/v1/locks/release", post(api::release))
        .route("/api/v1/locks/refresh", post(api::refresh))
        .route("/api/v1/locks/transfer", post(api::transfer))
        .route("/api/v1/locks/release-pull", post(api::release_pull))
        .route("/api/v1/locks", get(api::list_locks))
        .route("/api/v1/lock", get(api::get_lock))
        .route("/api/v1/queue", get(api::queue_status))
        .route("/api/v1/queue/user/{username}", get(api::user_queue))
        .route("/api/v1/queue/{entry_id}", delete(api::cancel_entry))
        .route("/api/locks", get(atlantis::list_locks))
        .route("/api/health/locking", get(health::locking))
        .route("/api/events", get(events::events))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(tflock_web::router(
            state.backend().clone(),
            state.health().cloned(),
            state.tokens().admin.as_ref().map(Secret::expose),
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes.
///
/// Shutdown is graceful: no new connections are accepted, requests in flight finish,
/// and long-lived ones (waiting acquires, event streams) are ended at once through
/// [`AppState::begin_shutdown`], a waiter answered `backend_unavailable` with its queue
/// entry removed. The backend is left open: its owner closes it after this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    // Lock answers are small and latency-bound (a hand-off is one small response):
    // Nagle's algorithm would hold them back for the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: ending waits and event streams");
            state.begin_shutdown();
        })
        .await
}

/// Logs and counts every answer by route pattern. Headers are never logged: they
/// carry the bearer tokens.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status();
    state
        .metrics()
        .http(method.as_str(), &route, status.as_u16());
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), elapsed_ms, "request failed");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), elapsed_ms, "request");
    }
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        tflock_core::ErrorCode::InvalidRequest,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
    .into_response()
}
