//! The tflock HTTP server: the wire form (`docs/api.md`) of the locking
//! contract over any [`tflock_core::Backend`].
//!
//! [`serve`] takes its listener and its shutdown future as arguments, so tests bind
//! `127.0.0.1:0` and run the real server in-process; [`router`] gives the bare
//! [`axum::Router`] for embedding.
//!
//! # Layout
//!
//! - [`state`]: [`AppState`] (backend, [`Tokens`], [`Limits`], optional
//!   [`tflock_health::Health`] and webhooks, metrics, shutdown flag), [`Secret`].
//! - [`auth`]: bearer-token roles; the [`auth::Mutator`] and [`auth::Admin`] extractors.
//! - [`extract`]: JSON body and query extractors that answer bad input as
//!   `invalid_request` naming the field, under the body and depth caps.
//! - [`limits`]: [`Limits`] and the middleware enforcing header size and time limits.
//! - [`error`]: [`ApiError`], the one error type handlers return, and its JSON form.
//! - [`wire`]: request and answer bodies of the v1 API.
//! - [`webhooks`]: [`WebhookConfig`] and the delivery tasks.
//! - [`openapi`]: the OpenAPI document served at `/api/openapi.json`.
//! - `api`: the v1 lock and queue handlers.
//! - `admin`: export, import and `/api/cluster`.
//! - `atlantis`: `GET /api/locks` in Atlantis's shape.
//! - `health`: `/healthz`, `/readyz`, `/api/health/locking`, `/metrics`.
//! - `events`: `GET /api/events` (Server-Sent Events).
//! - `metrics`: the per-server Prometheus recorder and recent-performance window.
//! - [`terraform`]: Terraform's and OpenTofu's http state backend at `/tf/{name}`
//!   and the `/api/v1/states` views (docs/terraform.md).
//! - `conn`: the accept loop: connection cap, hyper's limits, graceful shutdown.

pub mod auth;
pub mod error;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod state;
pub mod webhooks;
pub mod wire;

mod admin;
mod api;
mod atlantis;
mod conn;
mod events;
mod health;
mod metrics;
pub mod terraform;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};

pub use admin::{MAX_TOKEN, check_snapshot};
pub use error::ApiError;
pub use limits::{Limits, MAX_BODY_BYTES, MAX_IMPORT_BYTES};
pub use metrics::Performance;
pub use state::{AppState, Secret, Tokens};
pub use webhooks::{WebhookConfig, signature as webhook_signature};

/// One route of the API: method, path pattern, handler.
struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

fn route(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Every route of the API. [`router`] is built from this table, and the `openapi`
/// tests hold it and the OpenAPI document to each other both ways.
fn api_routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/api/v1/locks/acquire", post(api::acquire)),
        route(Method::POST, "/api/v1/locks/release", post(api::release)),
        route(Method::POST, "/api/v1/locks/refresh", post(api::refresh)),
        route(Method::POST, "/api/v1/locks/transfer", post(api::transfer)),
        route(
            Method::POST,
            "/api/v1/locks/release-pull",
            post(api::release_pull),
        ),
        route(Method::GET, "/api/v1/locks", get(api::list_locks)),
        route(Method::GET, "/api/v1/lock", get(api::get_lock)),
        route(Method::GET, "/api/v1/queue", get(api::queue_status)),
        route(
            Method::GET,
            "/api/v1/queue/user/{username}",
            get(api::user_queue),
        ),
        route(
            Method::DELETE,
            "/api/v1/queue/{entry_id}",
            delete(api::cancel_entry),
        ),
        route(Method::GET, "/api/v1/admin/export", get(admin::export)),
        route(Method::POST, "/api/v1/admin/import", post(admin::import)),
        route(Method::GET, "/api/locks", get(atlantis::list_locks)),
        route(Method::GET, "/api/health/locking", get(health::locking)),
        route(Method::GET, "/api/events", get(events::events)),
        route(Method::GET, "/api/cluster", get(admin::cluster)),
        route(Method::GET, "/api/v1/states", get(terraform::states_list)),
        route(Method::GET, "/api/v1/state", get(terraform::state_summary)),
        route(
            Method::POST,
            "/api/v1/state/rollback",
            post(terraform::rollback),
        ),
        route(Method::GET, "/api/openapi.json", get(openapi::document)),
        route(Method::GET, "/healthz", get(health::healthz)),
        route(Method::GET, "/readyz", get(health::readyz)),
        route(Method::GET, "/metrics", get(health::metrics)),
    ]
}

/// `(method, path pattern)` of every route [`router`] serves for the API, in the
/// OpenAPI document's path syntax (`/api/v1/queue/{entry_id}`).
pub fn routes() -> Vec<(Method, &'static str)> {
    api_routes()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect()
}

/// Every route of the API, with request logging, the header and time limits, and JSON
/// answers for unknown paths and methods.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    for r in api_routes() {
        api = api.route(r.path, r.handler);
    }
    let body_cap = state.limits().max_body_bytes;
    let extra = state.extra_routes().cloned().unwrap_or_default();
    // Terraform's http backend (`/tf/...`): outside the route table because OpenAPI
    // cannot describe its LOCK and UNLOCK methods.
    api = api.merge(terraform::routes());
    api.with_state(state.clone())
        // Routes that authenticate by themselves (the VCS webhook receiver).
        .merge(extra)
        // The web page (crates/tflock-web: `/` and `/ui/...`) is merged here, so the
        // layers below (limits, logging, metrics) cover it too.
        .merge(tflock_web::router(
            state.backend().clone(),
            state.health().cloned(),
            state.tokens().admin.as_ref().map(Secret::expose),
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Only axum's own extractors read this; the API's read bodies under
        // `Limits` themselves (a larger cap for import).
        .layer(DefaultBodyLimit::max(body_cap))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::time_limit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::header_limit,
        ))
        .layer(middleware::from_fn_with_state(state, observe))
}

/// Serves `router(state)` on `listener` until `shutdown` completes.
///
/// At most [`Limits::max_connections`] connections are served at once (further ones
/// wait in the listen backlog); request heads are capped by
/// [`Limits::max_header_bytes`] and must arrive within
/// [`Limits::header_read_timeout`].
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
    if let Ok(addr) = listener.local_addr() {
        state.set_listen_addr(addr);
    }
    let app = router(state.clone());
    conn::serve(listener, app, state, shutdown).await
}

/// Logs and counts every answer by route pattern, and gives a 503 the breaker's
/// `Retry-After`. Headers are never logged: they carry the bearer tokens.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let path = req.uri().path().to_string();
    let mut response = next.run(req).await;
    let status = response.status();
    if status == StatusCode::SERVICE_UNAVAILABLE && state.health().is_some() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(error::retry_after_secs(&state)),
        );
    }
    // Methods are a label: any other name a client sends is one series, `other`, so
    // a client cannot grow the series without bound.
    let method_label = match method.as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" | "LOCK"
        | "UNLOCK") => m,
        _ => "other",
    };
    state.metrics().http(method_label, &route, status.as_u16());
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
