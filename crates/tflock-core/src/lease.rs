//! One grant of a resource to an owner.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidRequest;
use crate::owner::Owner;
use crate::priority::Priority;
use crate::resource::Resource;
use crate::time::Timestamp;

/// The secret that proves holding a lease: 128 random bits as 32 hex digits, shown only
/// to the holder. Its `Debug` form is redacted so it never lands in a log by accident.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseId(pub String);

impl LeaseId {
    /// A fresh random lease id.
    pub fn generate() -> Self {
        LeaseId(crate::random_hex(16))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A lease id read from a caller, checked to be well formed (see [`LeaseId::check`]).
    pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, InvalidRequest> {
        let id = LeaseId(value.into());
        id.check(field)?;
        Ok(id)
    }

    /// Checks the form of a lease id presented by a caller: 16 to 128 ASCII letters,
    /// digits, `-` or `_`. An empty lease id is nobody's: it never means "force", so it
    /// is refused here before any store sees it, and so is anything that cannot be a
    /// lease id (spaces, control characters, a whole JSON document). The ids tflock
    /// makes are 32 hex digits; the wider form admits ids imported from a snapshot.
    pub fn check(&self, field: &str) -> Result<(), InvalidRequest> {
        let s = self.0.as_str();
        if s.is_empty() {
            return Err(InvalidRequest::new(
                field,
                "must not be empty (an empty lease id is nobody's; force is the admin operation)",
            ));
        }
        if !(MIN_LEASE_ID_BYTES..=MAX_LEASE_ID_BYTES).contains(&s.len())
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(InvalidRequest::new(
                field,
                format!(
                    "is not a lease id: {MIN_LEASE_ID_BYTES} to {MAX_LEASE_ID_BYTES} ASCII \
                     letters, digits, '-' or '_' (got {} bytes)",
                    s.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Shortest lease id a caller may present, in bytes.
pub const MIN_LEASE_ID_BYTES: usize = 16;
/// Longest lease id a caller may present, in bytes.
pub const MAX_LEASE_ID_BYTES: usize = 128;

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseId(<redacted>)")
    }
}

/// Per-resource counter handed out with every grant; strictly greater than every token
/// granted before for the same resource, so a storage system can refuse writes from a
/// holder whose lease has been superseded.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The token a grant takes after `previous` (the resource's last stored token, 0
    /// for none) at `now` on the store's clock: one more than the last, but never
    /// below the clock in microseconds. The clock floor is what keeps tokens going up
    /// when the store lost its counters (a Redis restart without its data, an old
    /// backup, a lagged replica promoted): every token issued before the loss was
    /// issued at an earlier instant and, one grant per script run taking far more
    /// than a microsecond, is not ahead of the clock (docs/contract.md, "Fencing
    /// token"). µs since the epoch stay below 2^53 (JSON's exact integers) until the
    /// year 2255.
    pub fn next_after(previous: u64, now: crate::time::Timestamp) -> FencingToken {
        FencingToken(previous.saturating_add(1).max(now.0))
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A held lock as stored by a backend and as shown to callers.
///
/// `lease_id` is present in a backend's own record and in answers to the holder;
/// [`Lock::public`] removes it for everybody else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lock {
    /// The Atlantis lock key, for display.
    pub key: String,
    pub resource: Resource,
    #[serde(flatten)]
    pub owner: Owner,
    pub priority: Priority,
    pub fencing_token: FencingToken,
    pub acquired_at: Timestamp,
    pub expires_at: Timestamp,
    /// The lease's TTL, applied again when a claim is confirmed or the lease refreshed.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1h"))]
    pub ttl: std::time::Duration,
    /// True while a waiter's grant waits for its server to confirm it (the claim
    /// window); `expires_at` is then the end of the claim window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim_pending: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<LeaseId>,
}

impl Lock {
    /// The view for anybody but the holder: no lease id.
    pub fn public(&self) -> Lock {
        Lock {
            lease_id: None,
            ..self.clone()
        }
    }

    /// Whether `lease` is this lock's lease.
    pub fn held_by(&self, lease: &LeaseId) -> bool {
        self.lease_id
            .as_ref()
            .is_some_and(|l| constant_time_eq(l.as_str(), lease.as_str()))
    }

    /// Whether the lease has ended at `now`.
    pub fn expired_at(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
