//! What one request or one client may cost the server: body, header and JSON depth
//! caps, time limits and the connection cap, and the middleware that enforces them.
//!
//! Every refusal is a JSON error like any other answer: an oversized body is 413 and
//! oversized headers 431 (both `invalid_request`), JSON nested too deep is 400
//! `invalid_request`, a call that runs out of time is 503 `backend_unavailable`.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tflock_core::ErrorCode;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted by default; a lock request is well under 8 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest body of `POST /api/v1/admin/import` by default: a snapshot of a big store.
pub const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;

/// The server's limits. [`Limits::default`] suits a server in front of CI runners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (413 above it).
    pub max_body_bytes: usize,
    /// Largest body of `POST /api/v1/admin/import` (413 above it).
    pub max_import_bytes: usize,
    /// Largest request head: method, path, query and every header name and value
    /// together (431 above it). hyper's own read buffer sits a little above this, so
    /// a head far over it is cut off by hyper with a bare 431.
    pub max_header_bytes: usize,
    /// Deepest nesting of arrays and objects in a JSON body (400 below it). The
    /// deepest real request (an import) nests 5 levels.
    pub max_json_depth: usize,
    /// Longest a call that does not wait may take, body upload included: then it is
    /// answered 503 `backend_unavailable` and its backend call dropped.
    pub request_timeout: Duration,
    /// Longest an admin export or import may take.
    pub admin_timeout: Duration,
    /// Longest wait a waiting acquire may ask for: longer waits are clamped to it, as
    /// the backend clamps them to its `max_timeout` (use the same value).
    pub max_wait: Duration,
    /// How long past its wait a waiting acquire may run before the server gives up on
    /// the backend (503): covers the backend's own clean-up and a slow round trip.
    pub wait_slack: Duration,
    /// Most connections served at once; further clients wait in the listen backlog
    /// until one closes. Each waiting acquire and each event stream holds one.
    pub max_connections: usize,
    /// Longest a client may take to send a request head, and so the longest an idle
    /// keep-alive connection keeps its place under `max_connections`.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: MAX_BODY_BYTES,
            max_import_bytes: MAX_IMPORT_BYTES,
            max_header_bytes: 16 * 1024,
            max_json_depth: 32,
            request_timeout: Duration::from_secs(10),
            admin_timeout: Duration::from_secs(120),
            max_wait: Duration::from_secs(300),
            wait_slack: Duration::from_secs(5),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// The read buffer hyper may grow to for one request head: the configured cap plus
    /// room, so heads just over the cap reach [`header_limit`] and get a JSON answer.
    pub(crate) fn hyper_buffer_bytes(&self) -> usize {
        (self.max_header_bytes + 16 * 1024).max(8 * 1024 + 1)
    }

    /// The time bound of a waiting acquire that asked to wait `wait` (already
    /// clamped to `max_wait`).
    pub(crate) fn wait_bound(&self, wait: Duration) -> Duration {
        wait.saturating_add(self.wait_slack)
    }
}

/// Refuses a request whose head (request line and headers) is larger than
/// `max_header_bytes` with 431.
pub(crate) async fn header_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let max = state.limits().max_header_bytes;
    let size = head_size(&req);
    if size > max {
        return ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request head is {size} bytes; at most {max} are accepted"),
        )
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        .into_response();
    }
    next.run(req).await
}

fn head_size(req: &Request) -> usize {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    req.method().as_str().len()
        + uri
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

/// The routes [`time_limit`] leaves alone or treats apart.
pub(crate) const EVENTS_ROUTE: &str = "/api/events";
pub(crate) const ACQUIRE_ROUTE: &str = "/api/v1/locks/acquire";
pub(crate) const ADMIN_PREFIX: &str = "/api/v1/admin/";
pub(crate) const TF_PREFIX: &str = "/tf";

/// Bounds each request in time: `request_timeout` for ordinary calls, `admin_timeout`
/// for export and import, none for the event stream (it lasts until the client or the
/// server leaves). An acquire gets an outer bound of its longest possible wait; the
/// handler applies the exact one (its own wait plus `wait_slack`).
///
/// Running out of time drops the handler and with it the backend call: the caller is
/// told the outcome is unknown.
pub(crate) async fn time_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let limits = state.limits();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let bound = match route.as_deref() {
        Some(EVENTS_ROUTE) => return next.run(req).await,
        Some(ACQUIRE_ROUTE) => limits
            .wait_bound(limits.max_wait)
            .saturating_add(limits.request_timeout),
        Some(r) if r.starts_with(ADMIN_PREFIX) => limits.admin_timeout,
        // A state upload may be large, and a queued LOCK is held open up to long_poll.
        Some(r) if r.starts_with(TF_PREFIX) => limits.admin_timeout.max(
            state
                .terraform()
                .map_or(Duration::ZERO, |t| t.long_poll)
                .saturating_add(limits.request_timeout),
        ),
        _ => limits.request_timeout,
    };
    match tokio::time::timeout(bound, next.run(req)).await {
        Ok(response) => response,
        Err(_) => timed_out(bound).into_response(),
    }
}

/// The answer to a call that ran out of time.
pub(crate) fn timed_out(bound: Duration) -> ApiError {
    ApiError::unavailable(format!(
        "no answer from the backend within {}; the call's outcome is unknown: read the \
         lock's state before retrying",
        humantime::format_duration(bound)
    ))
}

/// Checks that `bytes`, read as JSON, nests arrays and objects at most `max` deep.
/// Runs before parsing, so a hostile body cannot make the parser recurse.
pub fn check_json_depth(bytes: &[u8], max: usize) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("the JSON body nests deeper than {max} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_only_structure_outside_strings() {
        assert!(check_json_depth(br#"{"a":[{"b":1}]}"#, 3).is_ok());
        assert!(check_json_depth(br#"{"a":[{"b":[1]}]}"#, 3).is_err());
        assert!(check_json_depth(br#"{"a":"[[[[[[[[\"[[[["}"#, 1).is_ok());
        let deep = "[".repeat(1_000_000);
        let e = check_json_depth(deep.as_bytes(), 32).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }
}
