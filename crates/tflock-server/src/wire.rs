//! Request and answer bodies of the v1 API (`shared/design/http-api.md`).
//!
//! Requests are the server's own types rather than the core's, so they can refuse
//! unknown fields (a misspelt `"wiat"` must not silently become a non-waiting call)
//! and so serde can name the field at fault for every error. Answers reuse the
//! core's serialisable types where the wire form is theirs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tflock_core::{
    InvalidRequest, LeaseId, Lock, LockRequest, Owner, Priority, PullInfo, QueueEntryView,
    Resource, UserInfo, WaitSpec,
};

/// `POST /api/v1/locks/acquire`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    pub resource: Resource,
    pub owner: String,
    #[serde(default)]
    pub user: Option<UserInfo>,
    #[serde(default)]
    pub pull: Option<PullInfo>,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// A duration or `"default"`.
    #[serde(default)]
    pub wait: Option<WaitSpec>,
    #[serde(default)]
    pub reserve: bool,
    #[serde(default)]
    pub request_id: Option<String>,
}

impl AcquireBody {
    /// The validated backend request.
    pub fn into_request(self) -> Result<LockRequest, InvalidRequest> {
        LockRequest {
            resource: self.resource,
            owner: Owner {
                owner: self.owner,
                user: self.user,
                pull: self.pull,
                note: self.note,
            },
            priority: self.priority,
            ttl: self.ttl,
            wait: self.wait,
            reserve: self.reserve,
            request_id: self.request_id,
        }
        .validate()
    }
}

/// `POST /api/v1/locks/release`: the holder's `lease_id`, or admin `force: true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub resource: Resource,
    #[serde(default)]
    pub lease_id: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/v1/locks/refresh`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub resource: Resource,
    pub lease_id: String,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// `POST /api/v1/locks/transfer`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    pub resource: Resource,
    #[serde(default)]
    pub lease_id: Option<String>,
    #[serde(default)]
    pub force: bool,
    pub to: TransferTo,
}

/// The new owner of a transferred lock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferTo {
    pub owner: String,
    #[serde(default)]
    pub user: Option<UserInfo>,
    #[serde(default)]
    pub pull: Option<PullInfo>,
    #[serde(default)]
    pub note: String,
}

impl TransferTo {
    /// The validated owner; errors name `to.<field>`.
    pub fn into_owner(self) -> Result<Owner, InvalidRequest> {
        Owner {
            owner: self.owner,
            user: self.user,
            pull: self.pull,
            note: self.note,
        }
        .validate("to")
    }
}

/// `POST /api/v1/locks/release-pull`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePullBody {
    pub repo: String,
    pub pull: u64,
}

/// `GET /api/v1/locks` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub repo: Option<String>,
    pub owner: Option<String>,
    pub user: Option<String>,
    pub cursor: Option<String>,
    /// Kept as text so a bad number is reported as `limit`, not as a parse failure.
    pub limit: Option<String>,
}

/// A resource in a query string (`GET /api/v1/lock`, `GET /api/v1/queue`): `repo` and
/// `workspace` are required, `path` defaults to `.`, `project_name` to empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceQuery {
    pub repo: Option<String>,
    pub path: Option<String>,
    pub workspace: Option<String>,
    pub project_name: Option<String>,
}

impl ResourceQuery {
    /// The validated resource; errors name the query parameter.
    pub fn into_resource(self) -> Result<Resource, InvalidRequest> {
        let repo = self
            .repo
            .ok_or_else(|| InvalidRequest::new("repo", "is required"))?;
        let workspace = self
            .workspace
            .ok_or_else(|| InvalidRequest::new("workspace", "is required"))?;
        Resource {
            repo,
            path: self.path.unwrap_or_default(),
            workspace,
            project_name: self.project_name.unwrap_or_default(),
        }
        .validate("")
    }
}

/// A lease id from a request body, checked to be non-empty.
pub fn lease_id(field: &str, value: String) -> Result<LeaseId, InvalidRequest> {
    if value.is_empty() {
        return Err(InvalidRequest::new(field, "must not be empty"));
    }
    Ok(LeaseId(value))
}

/// `{lock}`.
#[derive(Debug, Clone, Serialize)]
pub struct LockBody {
    pub lock: Lock,
}

/// `{entries}`.
#[derive(Debug, Clone, Serialize)]
pub struct EntriesBody {
    pub entries: Vec<QueueEntryView>,
}

/// `{cancelled}`.
#[derive(Debug, Clone, Serialize)]
pub struct CancelledBody {
    pub cancelled: QueueEntryView,
}
