//! VCS webhooks: when a pull request (GitHub) or merge request (GitLab) closes, every
//! lock and queue entry of it is released (`UnlockByPull`), as Atlantis does itself.
//!
//! - `POST /api/vcs/github`: event `pull_request` with action `closed` (merged or
//!   not). The body must carry `X-Hub-Signature-256: sha256=<hex>`, the HMAC-SHA256 of
//!   the raw body with the webhook secret, checked in constant time before anything
//!   else is looked at. `ping` and other events or actions answer 200 and do nothing.
//! - `POST /api/vcs/gitlab`: `Merge Request Hook` whose merge request is in state
//!   `closed` or `merged`. `X-Gitlab-Token` must equal the configured token (compared
//!   through SHA-256 digests, so in time independent of the token).
//!
//! A provider whose secret is not configured answers 403 to everything: an endpoint
//! that releases locks is never open. A wrong or missing signature or token is 401 and
//! releases nothing. Errors have the API's shape, `{"error": {"code", "message"}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use tflock_core::{ErrorCode, SharedBackend};

/// Largest webhook body accepted (GitHub caps its payloads at 25 MB; a pull request
/// event is far smaller, but one with many labels and a long body can pass 1 MB).
pub const MAX_WEBHOOK_BYTES: usize = 10 * 1024 * 1024;

#[derive(Clone)]
struct Hooks {
    backend: SharedBackend,
    github: Option<Arc<ring::hmac::Key>>,
    gitlab: Option<Arc<[u8; 32]>>,
}

/// The webhook routes, to merge into the server's router.
pub fn webhook_router(
    backend: SharedBackend,
    github_secret: Option<String>,
    gitlab_token: Option<String>,
) -> Router {
    let hooks = Hooks {
        backend,
        github: github_secret
            .filter(|s| !s.is_empty())
            .map(|s| Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes()))),
        gitlab: gitlab_token
            .filter(|t| !t.is_empty())
            .map(|t| Arc::new(sha256(t.as_bytes()))),
    };
    Router::new()
        .route("/api/vcs/github", post(github))
        .route("/api/vcs/gitlab", post(gitlab))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(hooks)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({"error": {"code": code.as_str(), "message": message.into()}})),
    )
        .into_response()
}

fn ignored(why: String) -> Response {
    (StatusCode::OK, axum::Json(json!({"ignored": why}))).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Deserialize)]
struct GithubEvent {
    action: String,
    #[serde(default)]
    number: Option<u64>,
    pull_request: GithubPull,
    repository: GithubRepo,
}

#[derive(Deserialize)]
struct GithubPull {
    number: u64,
}

#[derive(Deserialize)]
struct GithubRepo {
    full_name: String,
}

async fn github(State(hooks): State<Hooks>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = &hooks.github else {
        return error(
            ErrorCode::Forbidden,
            "the GitHub webhook is not enabled: no webhook secret is configured",
        );
    };
    let Some(signature) = header(&headers, "x-hub-signature-256")
        .and_then(|s| s.strip_prefix("sha256="))
        .and_then(decode_hex)
    else {
        return error(
            ErrorCode::Unauthorized,
            "missing or malformed X-Hub-Signature-256",
        );
    };
    if ring::hmac::verify(key, &body, &signature).is_err() {
        tracing::warn!("GitHub webhook with a wrong signature refused");
        return error(
            ErrorCode::Unauthorized,
            "the signature does not match the body",
        );
    }
    let event = header(&headers, "x-github-event").unwrap_or("");
    if event != "pull_request" {
        return ignored(format!("event {event:?}"));
    }
    let payload: GithubEvent = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                ErrorCode::InvalidRequest,
                format!("not a pull_request event: {e}"),
            );
        }
    };
    if payload.action != "closed" {
        return ignored(format!("action {:?}", payload.action));
    }
    let pull = payload.number.unwrap_or(payload.pull_request.number);
    release(&hooks, &payload.repository.full_name, pull).await
}

#[derive(Deserialize)]
struct GitlabEvent {
    object_kind: String,
    project: GitlabProject,
    object_attributes: GitlabMergeRequest,
}

#[derive(Deserialize)]
struct GitlabProject {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct GitlabMergeRequest {
    /// The merge request's number within its project (Atlantis's pull number).
    iid: u64,
    state: String,
}

async fn gitlab(State(hooks): State<Hooks>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(want) = &hooks.gitlab else {
        return error(
            ErrorCode::Forbidden,
            "the GitLab webhook is not enabled: no webhook token is configured",
        );
    };
    let Some(given) = header(&headers, "x-gitlab-token") else {
        return error(ErrorCode::Unauthorized, "missing X-Gitlab-Token");
    };
    // Digests of equal length, compared in constant time: nothing about the token
    // leaks through timing, not even its length.
    let given = sha256(given.as_bytes());
    if given
        .iter()
        .zip(want.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        != 0
    {
        tracing::warn!("GitLab webhook with a wrong token refused");
        return error(ErrorCode::Unauthorized, "the token does not match");
    }
    let event = header(&headers, "x-gitlab-event").unwrap_or("");
    if event != "Merge Request Hook" && event != "System Hook" {
        return ignored(format!("event {event:?}"));
    }
    let payload: GitlabEvent = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                ErrorCode::InvalidRequest,
                format!("not a merge request event: {e}"),
            );
        }
    };
    if payload.object_kind != "merge_request" {
        return ignored(format!("object_kind {:?}", payload.object_kind));
    }
    let state = payload.object_attributes.state.as_str();
    if state != "closed" && state != "merged" {
        return ignored(format!("state {state:?}"));
    }
    release(
        &hooks,
        &payload.project.path_with_namespace,
        payload.object_attributes.iid,
    )
    .await
}

async fn release(hooks: &Hooks, repo: &str, pull: u64) -> Response {
    match hooks.backend.unlock_by_pull(repo, pull).await {
        Ok(r) => {
            tracing::info!(
                repo,
                pull,
                released = r.released.len(),
                cancelled = r.cancelled.len(),
                "pull request closed: its locks released"
            );
            (
                StatusCode::OK,
                axum::Json(json!({
                    "repo": repo,
                    "pull": pull,
                    "released": r.released,
                    "cancelled": r.cancelled.len(),
                })),
            )
                .into_response()
        }
        Err(e) => error(e.code(), e.to_string()),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
