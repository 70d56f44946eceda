//! Request and answer bodies of the v1 API (`docs/api.md`).
//!
//! Requests are the server's own types rather than the core's, so they can refuse
//! unknown fields (a misspelt `"wiat"` must not silently become a non-waiting call)
//! and so serde can name the field at fault for every error. Answers reuse the
//! core's serialisable types where the wire form is theirs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tflock_core::{
    InvalidRequest, LeaseId, Lock, LockRequest, Owner, Priority, PullInfo, QueueEntryView,
    Resource, Timestamp, UserInfo, WaitSpec,
};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/v1/locks/acquire`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    pub resource: Resource,
    /// Opaque name of the holder, e.g. `myorg/myrepo#42` for a pull request.
    #[schema(
        min_length = 1,
        max_length = 1024,
        example = "myorg/myrepo#42",
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub owner: String,
    #[serde(default)]
    pub user: Option<UserInfo>,
    #[serde(default)]
    pub pull: Option<PullInfo>,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub priority: Priority,
    /// The lease's TTL (default: the server's `default_ttl`, at most `max_ttl`).
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "1h")]
    pub ttl: Option<Duration>,
    /// Wait in line for the lock: a duration or `"default"`. Without it a held lock
    /// is answered at once with `acquired: false`.
    #[serde(default)]
    pub wait: Option<WaitSpec>,
    /// Take a place in line that outlives this call (a reservation) and answer at
    /// once with its entry id and position.
    #[serde(default)]
    pub reserve: bool,
    /// Secret idempotency key: a retry with the same id is answered from the present
    /// state of what the first call made (its lease while it is the live one, else
    /// `acquired: false` with reason `lease_lost`). It also proves holding that grant
    /// for a re-lock. Never shown in any answer.
    #[serde(default)]
    #[schema(max_length = 128)]
    pub request_id: Option<String>,
    /// The caller's lease, when it already holds the lock: a re-lock by the same
    /// owner extends the lease only with this (or the grant's `request_id`) as proof;
    /// without it the answer is `acquired: false`, reason `held_by_owner`.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 16, max_length = 128, pattern = r"^[A-Za-z0-9_-]{16,128}$")]
    pub lease_id: Option<String>,
}

impl AcquireBody {
    /// The validated backend request.
    pub fn into_request(self) -> Result<LockRequest, InvalidRequest> {
        check_pull("pull.num", self.pull.as_ref().map(|p| p.num))?;
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
            lease_id: self
                .lease_id
                .map(|l| LeaseId::parse("lease_id", l))
                .transpose()?,
        }
        .validate()
    }
}

/// `POST /api/v1/locks/release`: the holder's `lease_id`, or admin `force: true`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub resource: Resource,
    /// The holder's lease id; required unless `force` is set.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 16, max_length = 128, pattern = r"^[A-Za-z0-9_-]{16,128}$")]
    pub lease_id: Option<String>,
    /// Admin only: release whoever holds it (needs the admin token).
    #[serde(default)]
    pub force: bool,
    /// Only with `force: true`: release only if the live lease still has this fencing
    /// token, checked in the same atomic step as the release. When the lock changed
    /// hands the answer is 409 `not_owner` and nothing changes.
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub expected_token: Option<u64>,
}

/// `POST /api/v1/locks/refresh`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub resource: Resource,
    /// The holder's lease id.
    #[schema(
        min_length = 16,
        max_length = 128,
        pattern = r"^[A-Za-z0-9_-]{16,128}$"
    )]
    pub lease_id: String,
    /// The new expiry is now + `ttl`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "1h")]
    pub ttl: Duration,
}

/// `POST /api/v1/locks/transfer`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    pub resource: Resource,
    /// The holder's lease id; required unless `force` is set.
    #[serde(default)]
    #[schema(value_type = Option<String>, min_length = 16, max_length = 128, pattern = r"^[A-Za-z0-9_-]{16,128}$")]
    pub lease_id: Option<String>,
    /// Admin only: transfer whoever holds it (needs the admin token).
    #[serde(default)]
    pub force: bool,
    pub to: TransferTo,
}

/// The new owner of a transferred lock.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferTo {
    /// The new holder's owner string.
    #[schema(
        min_length = 1,
        max_length = 1024,
        example = "myorg/myrepo#42",
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
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
        check_pull("to.pull.num", self.pull.as_ref().map(|p| p.num))?;
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
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleasePullBody {
    /// Exactly this repository (`owner/name`).
    #[schema(example = "myorg/myrepo")]
    pub repo: String,
    /// The pull request number.
    #[schema(example = 42, maximum = 9_007_199_254_740_991_u64)]
    pub pull: u64,
}

/// `GET /api/v1/locks` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only locks of exactly this repository.
    pub repo: Option<String>,
    /// Only locks of exactly this owner string.
    pub owner: Option<String>,
    /// Only locks of exactly this username.
    pub user: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100). Kept as text here so a bad number is
    /// reported as `limit`, not as a parse failure.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

/// A resource in a query string (`GET /api/v1/lock`, `GET /api/v1/queue`): `repo` and
/// `workspace` are required, `path` defaults to `.`, `project_name` to empty.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResourceQuery {
    /// Full repository name (`owner/name`).
    #[param(required = true, value_type = String, example = "myorg/myrepo")]
    pub repo: Option<String>,
    /// Project directory (default `.`).
    pub path: Option<String>,
    /// Terraform workspace.
    #[param(required = true, value_type = String, example = "default")]
    pub workspace: Option<String>,
    /// Atlantis project name (default empty).
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

/// `DELETE /api/v1/queue/{entry_id}` query: optionally the resource whose queue the
/// entry must still be in (all of `repo`, `path`, `workspace`, `project_name`, or none).
/// The check is made in the same atomic step as the cancel.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CancelQuery {
    /// Full repository name (`owner/name`) of the expected resource.
    #[param(value_type = Option<String>, example = "myorg/myrepo")]
    pub repo: Option<String>,
    /// Project directory of the expected resource.
    #[param(value_type = Option<String>, example = ".")]
    pub path: Option<String>,
    /// Terraform workspace of the expected resource.
    #[param(value_type = Option<String>, example = "default")]
    pub workspace: Option<String>,
    /// Atlantis project name of the expected resource (may be empty).
    #[param(value_type = Option<String>)]
    pub project_name: Option<String>,
}

impl CancelQuery {
    /// The expected resource, when the query names one; errors name the parameter.
    pub fn into_expected(self) -> Result<Option<Resource>, InvalidRequest> {
        let parts = [
            ("repo", &self.repo),
            ("path", &self.path),
            ("workspace", &self.workspace),
            ("project_name", &self.project_name),
        ];
        if parts.iter().all(|(_, v)| v.is_none()) {
            return Ok(None);
        }
        if let Some((missing, _)) = parts.iter().find(|(_, v)| v.is_none()) {
            return Err(InvalidRequest::new(
                *missing,
                "is required when any of repo, path, workspace, project_name is given \
                 (give all four parts of the expected resource, or none)",
            ));
        }
        Resource {
            repo: self.repo.unwrap_or_default(),
            path: self.path.unwrap_or_default(),
            workspace: self.workspace.unwrap_or_default(),
            project_name: self.project_name.unwrap_or_default(),
        }
        .validate("")
        .map(Some)
    }
}

/// Largest pull request number accepted: the largest integer JSON clients (and the
/// Redis backend's Lua numbers) hold exactly.
pub const MAX_PULL: u64 = (1 << 53) - 1;

/// Checks a pull request number against [`MAX_PULL`].
pub fn check_pull(field: &str, num: Option<u64>) -> Result<(), InvalidRequest> {
    match num {
        Some(n) if n > MAX_PULL => Err(InvalidRequest::new(
            field,
            format!("{n} is above {MAX_PULL}, the largest pull request number accepted"),
        )),
        _ => Ok(()),
    }
}

/// A lease id from a request body, checked to be well formed ([`LeaseId::check`]).
pub fn lease_id(field: &str, value: String) -> Result<LeaseId, InvalidRequest> {
    LeaseId::parse(field, value)
}

/// `POST /api/v1/admin/import` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Report what would change, change nothing (default `false`).
    #[param(value_type = Option<bool>)]
    pub dry_run: Option<String>,
    /// Replace locks held under another lease instead of reporting them as
    /// conflicts (default `false`).
    #[param(value_type = Option<bool>)]
    pub overwrite: Option<String>,
}

/// Parses an optional `true`/`false` query parameter.
pub fn parse_bool(field: &str, value: Option<&str>) -> Result<bool, InvalidRequest> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(InvalidRequest::new(
            field,
            format!("'{v}' is neither true nor false"),
        )),
    }
}

/// `{lock}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LockBody {
    pub lock: Lock,
}

/// `{entries}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EntriesBody {
    pub entries: Vec<QueueEntryView>,
}

/// `{cancelled}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CancelledBody {
    pub cancelled: QueueEntryView,
}

/// Every error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: tflock_core::Error,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz` when ready.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: String,
    /// `embedded` or `redis`.
    pub backend: String,
}

/// `GET /api/cluster`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterView {
    /// The nodes this node knows of. Until the cluster manager (issue 7) exists that
    /// is this node alone.
    pub nodes: Vec<ClusterNode>,
    /// The elected leader's id; `null` without a cluster manager (embedded store) and
    /// between a leader's end and the next election.
    pub leader: Option<String>,
    /// The leader's epoch (one per election, only goes up); `null` without a cluster
    /// manager.
    pub epoch: Option<u64>,
}

/// One tflock server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClusterNode {
    /// Random at each start unless configured.
    pub id: String,
    /// The address it serves on, when known.
    pub address: Option<String>,
    /// The tflock version it runs.
    pub version: String,
    /// Its backend: `embedded` or `redis`.
    pub backend: String,
    pub started_at: Timestamp,
    /// Whether this is the node that answered.
    #[serde(rename = "self")]
    #[schema(rename = "self")]
    pub this_node: bool,
    /// Its last heartbeat in the cluster registry (absent without a cluster manager).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Timestamp>,
}
