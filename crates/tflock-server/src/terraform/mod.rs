//! Terraform's and OpenTofu's `http` state backend (docs/terraform.md).
//!
//! `/tf/{state name}` answers the protocol of `backend "http"`: `GET`, `POST` and
//! `DELETE` of the state document, `LOCK` and `UNLOCK` of its lock. `/tf-lock/{name}`
//! takes the lock with any method for clients configured with `lock_method = "POST"` /
//! `unlock_method = "DELETE"` (on `/tf/{name}` those would be state writes).
//!
//! - A state lock is a tflock lock on the resource `tflock:terraform/state` + the name
//!   (`resource`), so it is listed, shown on the web page, evented and measured like
//!   any other; see `lock` for how a polling client is queued fairly.
//! - State writes are fenced (`state`): a write lands only while its lock is the newest
//!   one recorded for the state ([`tflock_tfstate::Guard`]).
//! - Terraform's lock ID is a bearer secret here, like a `request_id`: it is never
//!   stored, logged or shown. The store keeps a digest of it; answers show a public id
//!   derived from it (`LockIds`).
//!
//! Auth: the http backend's `password` (basic auth) is taken as the bearer token, so
//! `username` is free; the same rules as the API apply, and reading a state needs the
//! API token too (a state holds secrets).

mod lock;
pub(crate) mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use sha2::{Digest, Sha256};
use tflock_core::Resource;
use tflock_tfstate::{StateName, StateStore};

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) use state::{rollback, state_summary, states_list};

/// The repository part of every state lock's resource: `tflock locks list --repo
/// tflock:terraform/state` lists the Terraform state locks.
/// A name no VCS gives a repository (`:` is not allowed in GitHub, GitLab, Bitbucket or
/// Azure DevOps names), so an Atlantis repository's locks can never share these
/// resources, and an unlock by pull request can never release a state lock.
pub const TF_REPO: &str = "tflock:terraform/state";

/// The Terraform backend's settings and its state store.
#[derive(Clone)]
pub struct TerraformConfig {
    pub store: Arc<dyn StateStore>,
    /// TTL of a state lock (Terraform never refreshes its lock).
    pub lock_ttl: Duration,
    /// How long a queued client keeps its place without polling, and how long the head
    /// of the queue keeps a freed lock for its next poll.
    pub queue_grace: Duration,
    /// How long a queued client's repeated LOCK is held open waiting for its turn.
    pub long_poll: Duration,
    /// Queue polling clients; `false`: a held lock is answered 423, first come first
    /// served (the benchmark's baseline).
    pub fair_queue: bool,
    /// Largest state body accepted.
    pub max_state_bytes: u64,
}

impl TerraformConfig {
    /// Settings as `docs/terraform.md` gives their defaults, over `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        TerraformConfig {
            store,
            lock_ttl: Duration::from_secs(6 * 3600),
            queue_grace: Duration::from_secs(20),
            long_poll: Duration::from_secs(25),
            fair_queue: true,
            max_state_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The `/tf` and `/tf-lock` routes (outside the OpenAPI document: OpenAPI cannot
/// describe the `LOCK` and `UNLOCK` methods).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/tf/{*name}", any(state::dispatch))
        .route("/tf-lock/{*name}", any(lock::dispatch_lock_address))
}

/// The Terraform settings, or 404 when the server has no Terraform backend.
fn config(state: &AppState) -> Result<&TerraformConfig, ApiError> {
    state.terraform().ok_or_else(|| {
        ApiError::not_found(
            "this server has no Terraform backend (enhanced_locking.terraform.enabled: false)",
        )
    })
}

/// The state name of a `/tf/{*name}` path, validated.
fn state_name(raw: &str) -> Result<StateName, ApiError> {
    StateName::parse(raw).map_err(|e| ApiError::invalid("name", e.to_string()))
}

/// The tflock resource a state's lock is held on.
pub fn resource(name: &StateName) -> Result<Resource, ApiError> {
    Resource::new(TF_REPO, name.as_str(), "default", "").map_err(ApiError::from)
}

/// What tflock derives from a Terraform lock ID. The ID itself is a bearer secret
/// (whoever knows it may write the state), so only these leave this module.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct LockIds {
    /// Stored in the lock record to recognise the ID again.
    pub digest: String,
    /// Shown to others (answers, `tflock state show`, each version's writer).
    pub public: String,
    id: String,
}

/// Leaves the ID out: it is a secret.
impl std::fmt::Debug for LockIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockIds")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl LockIds {
    pub fn of(id: &str) -> Self {
        let public = hex(&Sha256::digest(format!("tflock-tf-public\0{id}")))[..16].to_string();
        LockIds {
            digest: hex(&Sha256::digest(format!("tflock-tf-id\0{id}"))),
            public,
            id: id.to_string(),
        }
    }

    /// The `request_id` of link `chain` of this ID's chain. A client whose reservation
    /// or grant ended while it did not poll (its `request_id` then answers
    /// `lease_lost` for `request_id_retention`) moves to the next link and queues
    /// again, at the back.
    pub fn request_id(&self, chain: u32) -> String {
        let h = hex(&Sha256::digest(format!(
            "tflock-tf-rid\0{}\0{chain}",
            self.id
        )));
        format!("tf-{}", &h[..40])
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Milliseconds since the epoch now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = LockIds::of("26c7eccd-f845-0cc0-cd25-34edc0b1e009");
        let b = LockIds::of("26c7eccd-f845-0cc0-cd25-34edc0b1e00a");
        assert_eq!(a, LockIds::of("26c7eccd-f845-0cc0-cd25-34edc0b1e009"));
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.public, b.public);
        assert_eq!(a.public.len(), 16);
        assert!(!a.digest.contains("26c7eccd"));
        assert_ne!(a.request_id(0), a.request_id(1));
        assert!(a.request_id(0).len() <= tflock_core::request::MAX_REQUEST_ID_BYTES);
    }
}
