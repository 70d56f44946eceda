//! Inputs and outputs of the contract's operations.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::InvalidRequest;
use crate::lease::{LeaseId, Lock};
use crate::owner::Owner;
use crate::priority::Priority;
use crate::queue::{QueueEntry, QueueEntryView, QueuePlacement};
use crate::resource::Resource;

/// Longest `request_id`, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// How long a TryLock may wait: `"default"` or a duration such as `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitSpec {
    Default,
    For(Duration),
}

impl fmt::Display for WaitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitSpec::Default => f.write_str("default"),
            WaitSpec::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl std::str::FromStr for WaitSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "default" {
            Ok(WaitSpec::Default)
        } else {
            humantime::parse_duration(s)
                .map(WaitSpec::For)
                .map_err(|e| format!("'{s}' is neither \"default\" nor a duration: {e}"))
        }
    }
}

impl Serialize for WaitSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for WaitSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// On the wire a wait is a string: `"default"` or a duration such as `"30s"`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for WaitSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "How long to wait in line: \"default\" (the server's default_timeout) or a \
                 duration such as \"30s\" (clamped to max_timeout)",
            ))
            .examples([serde_json::json!("30s"), serde_json::json!("default")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for WaitSpec {}

/// A TryLock request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    pub resource: Resource,
    #[serde(flatten)]
    pub owner: Owner,
    #[serde(default)]
    pub priority: Priority,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitSpec>,
    #[serde(default)]
    pub reserve: bool,
    /// A secret idempotency key: a retry with the same id is answered from the
    /// present state of the grant or entry the first call made (contract rule 8), and
    /// it proves holding that grant for a re-lock (rule 2). Never shown back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The caller's lease, when it holds the lock already: the proof a re-lock by the
    /// same owner needs (rule 2). The owner string alone proves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<LeaseId>,
}

impl LockRequest {
    /// A request for `resource` by `owner` with every option at its default.
    pub fn new(resource: Resource, owner: impl Into<String>) -> Self {
        LockRequest {
            resource,
            owner: Owner::named(owner),
            priority: Priority::Normal,
            ttl: None,
            wait: None,
            reserve: false,
            request_id: None,
            lease_id: None,
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(WaitSpec::For(wait));
        self
    }

    pub fn with_priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    pub fn reserving(mut self) -> Self {
        self.reserve = true;
        self
    }

    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Presents the caller's lease, for a re-lock (contract rule 2).
    pub fn with_lease_id(mut self, lease: LeaseId) -> Self {
        self.lease_id = Some(lease);
        self
    }

    /// Checks every field and normalises the resource; names the field at fault.
    pub fn validate(mut self) -> Result<Self, InvalidRequest> {
        self.resource = self.resource.validate("resource")?;
        self.owner = self.owner.validate("")?;
        if let Some(id) = &self.request_id
            && (id.is_empty()
                || id.len() > MAX_REQUEST_ID_BYTES
                || id.chars().any(|c| c.is_control()))
        {
            return Err(InvalidRequest::new(
                "request_id",
                format!("must be 1 to {MAX_REQUEST_ID_BYTES} bytes without control characters"),
            ));
        }
        if let Some(lease) = &self.lease_id {
            lease.check("lease_id")?;
        }
        Ok(self)
    }
}

/// Why a TryLock did not acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NotAcquiredReason {
    /// Held by another owner and the request did not wait (or is a reservation).
    Held,
    /// Held by the same owner, but the caller did not prove it holds the lease (no
    /// `lease_id`, no `request_id` of the grant): owner strings are public, never a
    /// credential. Not queued behind itself.
    HeldByOwner,
    /// A retry of a `request_id` whose lease has ended (released, expired, forced,
    /// transferred, unlocked by pull) or whose queue entry is gone.
    LeaseLost,
    /// Waited until its deadline.
    Timeout,
    /// Its queue entry was cancelled (CancelQueueEntry, UnlockByPull) while it waited.
    Cancelled,
    /// The store lost data a moment ago and grants nothing until its `lock_delay`
    /// ends, so holders whose record was lost can finish or notice (docs/contract.md,
    /// Failure model). A normal answer, not an error: retry after the delay
    /// (`/api/health/locking` shows its end); a caller with `wait` is not told this,
    /// it keeps waiting.
    LockDelay,
}

/// The answer to TryLock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockResponse {
    pub acquired: bool,
    /// The holder's view: with `lease_id` only when the caller holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
    /// The caller's place in line (reservations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePlacement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotAcquiredReason>,
}

impl LockResponse {
    pub fn granted(lock: Lock) -> Self {
        LockResponse {
            acquired: true,
            lock: Some(lock),
            queue: None,
            reason: None,
        }
    }

    pub fn not_acquired(holder: Option<Lock>, reason: NotAcquiredReason) -> Self {
        LockResponse {
            acquired: false,
            lock: holder.map(|l| l.public()),
            queue: None,
            reason: Some(reason),
        }
    }
}

/// The answer to Unlock and ForceUnlock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnlockResponse {
    /// The lock that ended (public view).
    pub released: Lock,
    /// The queue entry the lock was handed to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_to: Option<QueueEntryView>,
}

/// The answer to UnlockByPull.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullUnlockResponse {
    pub released: Vec<Lock>,
    pub cancelled: Vec<QueueEntry>,
}

/// Who may transfer a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferAuth {
    /// The current holder, by its lease.
    Lease(LeaseId),
    /// An administrator (the API's `force: true`).
    Admin,
}

/// ListLocks filters and paging.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LockFilter {
    /// Exactly this repository.
    #[serde(default)]
    pub repo: Option<String>,
    /// Exactly this owner string.
    #[serde(default)]
    pub owner: Option<String>,
    /// Exactly this username.
    #[serde(default)]
    pub user: Option<String>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size, 1 to [`LockFilter::MAX_LIMIT`]; default [`LockFilter::DEFAULT_LIMIT`].
    #[serde(default)]
    pub limit: Option<usize>,
}

impl LockFilter {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;

    /// The page size, checked.
    pub fn page_size(&self) -> Result<usize, InvalidRequest> {
        match self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(n) if (1..=Self::MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(InvalidRequest::new(
                "limit",
                format!("must be between 1 and {}", Self::MAX_LIMIT),
            )),
        }
    }

    /// The storage key after which the page starts (cursors are hex of it).
    pub fn cursor_key(&self) -> Result<Option<String>, InvalidRequest> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        decode_cursor(c)
            .map(Some)
            .ok_or_else(|| InvalidRequest::new("cursor", "is not a cursor this server issued"))
    }

    /// Whether `lock` passes the filters.
    pub fn matches(&self, lock: &Lock) -> bool {
        self.repo.as_ref().is_none_or(|r| *r == lock.resource.repo)
            && self.owner.as_ref().is_none_or(|o| *o == lock.owner.owner)
            && self
                .user
                .as_ref()
                .is_none_or(|u| Some(u.as_str()) == lock.owner.username())
    }
}

/// An opaque cursor for the page after `storage_key`.
pub fn encode_cursor(storage_key: &str) -> String {
    storage_key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(c: &str) -> Option<String> {
    if !c.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// One page of ListLocks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockPage {
    pub locks: Vec<Lock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_spec_parses_default_and_durations() {
        assert_eq!("default".parse::<WaitSpec>().unwrap(), WaitSpec::Default);
        assert_eq!(
            "30s".parse::<WaitSpec>().unwrap(),
            WaitSpec::For(Duration::from_secs(30))
        );
        assert!("soon".parse::<WaitSpec>().is_err());
    }

    #[test]
    fn cursor_round_trips() {
        let k = "o/r\u{1f}.\u{1f}default\u{1f}";
        assert_eq!(decode_cursor(&encode_cursor(k)).as_deref(), Some(k));
        assert!(decode_cursor("zz").is_none());
    }

    #[test]
    fn request_json_matches_the_http_api() {
        let json = r#"{"resource":{"repo":"myorg/myrepo","path":".","workspace":"default","project_name":""},
            "owner":"myorg/myrepo#42","user":{"username":"alice","teams":["platform"]},
            "priority":"high","ttl":"1h","wait":"default","request_id":"r1"}"#;
        let r: LockRequest = serde_json::from_str(json).unwrap();
        assert_eq!(r.owner.owner, "myorg/myrepo#42");
        assert_eq!(r.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(r.wait, Some(WaitSpec::Default));
        assert_eq!(r.priority, Priority::High);
    }
}
