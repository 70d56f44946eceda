//! `GET /api/locks` in Atlantis's own shape, so tools written for Atlantis's API keep
//! working against tflock.
//!
//! Atlantis answers `{"Locks": [LockDetail]}` where `LockDetail` has Go's field names
//! and `PullID` is a number sent as a string (`json:",string"`).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use tflock_core::{Lock, LockFilter, Timestamp};
use utoipa::ToSchema;

use crate::api::Op;
use crate::error::ApiError;
use crate::state::AppState;

/// Most pages read for one answer: a guard against a backend whose cursor never ends,
/// far above any real lock count (`MAX_LIMIT` locks per page).
const MAX_PAGES: usize = 10_000;

/// Atlantis's `ListLocksResult`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ListLocksResult {
    #[serde(rename = "Locks")]
    locks: Vec<LockDetail>,
}

/// Atlantis's `LockDetail`, with Go's field names.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LockDetail {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ProjectName")]
    project_name: String,
    #[serde(rename = "ProjectRepo")]
    project_repo: String,
    #[serde(rename = "ProjectRepoPath")]
    project_repo_path: String,
    #[serde(rename = "PullID")]
    pull_id: String,
    #[serde(rename = "PullURL")]
    pull_url: String,
    #[serde(rename = "User")]
    user: String,
    #[serde(rename = "Workspace")]
    workspace: String,
    #[serde(rename = "Time")]
    time: Timestamp,
}

impl From<Lock> for LockDetail {
    fn from(lock: Lock) -> Self {
        let pull = lock.owner.pull.clone().unwrap_or_default();
        LockDetail {
            user: lock.owner.username().unwrap_or_default().to_string(),
            name: lock.key,
            project_name: lock.resource.project_name,
            project_repo: lock.resource.repo,
            project_repo_path: lock.resource.path,
            pull_id: pull.num.to_string(),
            pull_url: pull.url,
            workspace: lock.resource.workspace,
            time: lock.acquired_at,
        }
    }
}

/// `GET /api/locks`: every held lock.
#[utoipa::path(get, path = "/api/locks", tag = "atlantis", operation_id = "atlantis_list_locks",
    summary = "Every held lock, in Atlantis's own shape",
    description = "`PullID` is a number sent as a string, as Atlantis sends it.",
    responses((status = 200, description = "Every held lock", body = ListLocksResult)))]
pub(crate) async fn list_locks(
    State(state): State<AppState>,
) -> Result<Json<ListLocksResult>, ApiError> {
    let mut locks = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let filter = LockFilter {
            cursor: cursor.take(),
            limit: Some(LockFilter::MAX_LIMIT),
            ..LockFilter::default()
        };
        let op = Op::start(&state, "list_locks");
        let page = op.finish(state.backend().list_locks(filter).await, |_| "ok")?;
        locks.extend(page.locks.into_iter().map(LockDetail::from));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(Json(ListLocksResult { locks })),
        }
    }
    Err(ApiError::new(
        tflock_core::ErrorCode::Internal,
        "the backend's lock listing did not end",
    ))
}
