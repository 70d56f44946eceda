//! The contract's events, emitted by backends and carried by the server's SSE stream.

use serde::{Deserialize, Serialize};

use crate::lease::FencingToken;
use crate::queue::EntryId;
use crate::resource::Resource;
use crate::time::Timestamp;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventKind {
    #[serde(rename = "lock.acquired")]
    LockAcquired,
    #[serde(rename = "lock.released")]
    LockReleased,
    #[serde(rename = "lock.expired")]
    LockExpired,
    #[serde(rename = "lock.transferred")]
    LockTransferred,
    #[serde(rename = "queue.entered")]
    QueueEntered,
    #[serde(rename = "queue.left")]
    QueueLeft,
    #[serde(rename = "queue.granted")]
    QueueGranted,
    /// The store was found to have lost data (Redis restarted without its data, an
    /// older backup or file restored, a lagged replica promoted). Not about one
    /// resource: the event's resource parts, key and owner are empty.
    #[serde(rename = "store.data_lost")]
    StoreDataLost,
}

impl EventKind {
    /// The name on the wire (`lock.acquired`, ...), also the SSE `event:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LockAcquired => "lock.acquired",
            EventKind::LockReleased => "lock.released",
            EventKind::LockExpired => "lock.expired",
            EventKind::LockTransferred => "lock.transferred",
            EventKind::QueueEntered => "queue.entered",
            EventKind::QueueLeft => "queue.left",
            EventKind::QueueGranted => "queue.granted",
            EventKind::StoreDataLost => "store.data_lost",
        }
    }
}

/// One event: what, on which resource, for whom, with which token, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockEvent {
    pub event: EventKind,
    pub resource: Resource,
    /// The Atlantis lock key, for display.
    pub key: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<FencingToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<EntryId>,
    pub at: Timestamp,
}

impl LockEvent {
    /// The `store.data_lost` event at `at`: about the store, so its resource, key
    /// and owner are empty.
    pub fn data_lost(at: Timestamp) -> LockEvent {
        LockEvent {
            event: EventKind::StoreDataLost,
            resource: Resource {
                repo: String::new(),
                path: String::new(),
                workspace: String::new(),
                project_name: String::new(),
            },
            key: String::new(),
            owner: String::new(),
            fencing_token: None,
            entry_id: None,
            at,
        }
    }
}
