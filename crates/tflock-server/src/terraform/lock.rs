//! LOCK and UNLOCK: a Terraform state lock as a tflock lock, with a fair queue for
//! clients that poll.
//!
//! Terraform with `-lock-timeout` sends the same LOCK (same lock ID) again and again,
//! 1 s apart doubling to 16 s, until it gets 200. Here a LOCK on a held lock is a
//! *reservation* (contract rule 5) whose `request_id` is derived from the lock ID, and
//! whose lifetime is `queue_grace`, renewed by every poll. So:
//! - clients are granted in the order they first asked (then by priority), never by
//!   who happens to poll right after an unlock;
//! - when the lock frees, the head of the queue is granted it for `queue_grace`, long
//!   enough for its next poll, which collects it (a replay of its `request_id`) and
//!   extends it to `lock_ttl`; a client that stopped polling loses its place after
//!   `queue_grace`, and the next one gets the lock;
//! - a repeated LOCK of a queued client is held open up to `long_poll`, and answered
//!   200 the moment its turn comes, so the time between one apply's unlock and the
//!   next one's lock is a hand-off, not a polling interval. The first LOCK of a lock ID
//!   is answered at once, so `-lock-timeout=0` still fails fast.

use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tflock_core::{
    EventKind, Lock, LockRequest, NotAcquiredReason, Owner, Priority, QueuePlacement, RefreshError,
    Resource, TryLockError, UnlockError, WaitSpec,
};
use tflock_tfstate::{LockRecord, RecordError, StateName};

use super::{LockIds, TerraformConfig, config, now_ms, resource, state_name};
use crate::auth::Role;
use crate::error::ApiError;
use crate::state::AppState;

/// How many links of a lock ID's `request_id` chain a LOCK walks (see
/// [`LockIds::request_id`]): a client loses its place at most this often per
/// `request_id_retention` before it is refused.
const MAX_CHAIN: u32 = 16;

/// How often a held-open LOCK looks at its entry even without an event (at most; a
/// third of `queue_grace` when that is shorter): renews the reservation and covers an
/// event missed by a server that lost its event stream.
const RECHECK: Duration = Duration::from_secs(5);

/// The lifetime of the reservation a client's *first* LOCK leaves, and of the grant it
/// gets if the lock frees meanwhile. Terraform's next poll comes 1 s later and renews
/// both to `queue_grace`; a client that asked once (`-lock-timeout=0`, Terraform's
/// default) is gone, and holds up the queue for at most this long.
const FIRST_WINDOW: Duration = Duration::from_secs(4);

/// A LOCK whose reservation has waited this long was made by an earlier LOCK of the
/// same client: a repeated poll.
const REPEATED: Duration = Duration::from_millis(500);

/// Longest `Who` kept in the owner string (the owner is at most 1,024 bytes).
const MAX_WHO_IN_OWNER: usize = 900;

/// Longest field of a LockInfo, in bytes.
const MAX_INFO_FIELD: usize = 1024;

/// Terraform's `statemgr.LockInfo`, as the http backend sends it. Unknown fields are
/// ignored, not refused: a later Terraform or OpenTofu that adds one must still lock.
/// Its `Debug` leaves the ID out (a secret here).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LockInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Operation", default)]
    pub operation: String,
    #[serde(rename = "Info", default)]
    pub info: String,
    #[serde(rename = "Who", default)]
    pub who: String,
    #[serde(rename = "Version", default)]
    pub version: String,
    #[serde(rename = "Created", default)]
    pub created: String,
    #[serde(rename = "Path", default)]
    pub path: String,
}

impl std::fmt::Debug for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockInfo")
            .field("id", &"<secret>")
            .field("operation", &self.operation)
            .field("who", &self.who)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl LockInfo {
    /// Parses and checks a LockInfo body, naming the field at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let info: LockInfo = crate::extract::parse_json(bytes).map_err(|mut e| {
            // Not JSON at all: the body is at fault.
            e.field.get_or_insert_with(|| "body".to_string());
            e
        })?;
        if info.id.is_empty() || info.id.len() > 256 || info.id.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "ID",
                "the lock ID must be 1 to 256 bytes without control characters",
            ));
        }
        for (field, value) in [
            ("Operation", &info.operation),
            ("Who", &info.who),
            ("Version", &info.version),
            ("Created", &info.created),
            ("Path", &info.path),
        ] {
            if value.len() > MAX_INFO_FIELD || value.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    field,
                    format!("must be at most {MAX_INFO_FIELD} bytes without control characters"),
                ));
            }
        }
        if info.info.len() > 4 * MAX_INFO_FIELD {
            return Err(ApiError::invalid(
                "Info",
                format!("must be at most {} bytes", 4 * MAX_INFO_FIELD),
            ));
        }
        Ok(info)
    }

    /// This LockInfo without its ID (the secret), as the lock record keeps it.
    fn public_json(&self) -> serde_json::Value {
        serde_json::json!({
            "Operation": self.operation,
            "Info": self.info,
            "Who": self.who,
            "Version": self.version,
            "Created": self.created,
            "Path": self.path,
        })
    }

    /// The tflock owner of this client's lock: its `Who` plus the public id, so that
    /// two applies from one machine (same `Who`) are two owners and queue behind each
    /// other instead of being refused as `held_by_owner`.
    fn owner(&self, ids: &LockIds) -> Owner {
        let who = if self.who.is_empty() {
            "terraform"
        } else {
            self.who.as_str()
        };
        let mut cut = who.len().min(MAX_WHO_IN_OWNER);
        while !who.is_char_boundary(cut) {
            cut -= 1;
        }
        // The full public id (64 bits): an owner string is public, and one that could
        // be ground out for another lock ID would let its UNLOCK cancel this place.
        let mut owner = Owner::named(format!("{} (terraform {})", &who[..cut], ids.public));
        let user = who.split('@').next().unwrap_or(who);
        if !user.is_empty() {
            owner.user = Some(tflock_core::UserInfo {
                username: user.to_string(),
                teams: Vec::new(),
            });
        }
        let op = self
            .operation
            .strip_prefix("OperationType")
            .unwrap_or(&self.operation)
            .to_ascii_lowercase();
        owner.note = format!("terraform {op} via the http backend")
            .trim()
            .to_string();
        owner
    }
}

/// `/tf-lock/{name}`: the lock address for clients whose `lock_method` and
/// `unlock_method` are ordinary methods. POST, PUT and LOCK lock; DELETE and UNLOCK
/// unlock.
pub(super) async fn dispatch_lock_address(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    req: axum::extract::Request,
) -> Response {
    let method = req.method().as_str().to_string();
    let result = match method.as_str() {
        "POST" | "PUT" | "LOCK" => lock_request(&state, &name, req).await,
        "DELETE" | "UNLOCK" => unlock_request(&state, &name, req).await,
        _ => Err(method_not_allowed(
            &method,
            "/tf-lock/{name}",
            "POST, PUT, LOCK, DELETE, UNLOCK",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(super) fn method_not_allowed(method: &str, path: &str, allowed: &'static str) -> ApiError {
    ApiError::new(
        tflock_core::ErrorCode::InvalidRequest,
        format!("{method} is not allowed on {path}: use {allowed}"),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// A LOCK or UNLOCK request, authenticated and read: the caller's role, the state
/// name, the request head and the LockInfo (`None` for an empty body).
struct LockCall {
    role: Role,
    name: StateName,
    parts: axum::http::request::Parts,
    info: Option<LockInfo>,
}

/// Authenticates before reading anything else, then reads the name and the body.
async fn lock_call(
    state: &AppState,
    raw_name: &str,
    req: axum::extract::Request,
) -> Result<LockCall, ApiError> {
    let (parts, body) = req.into_parts();
    let role = super::state::caller(&parts, state, true)?;
    let name = state_name(raw_name)?;
    let bytes = super::state::read_body(&parts, body, state.limits().max_body_bytes as u64).await?;
    let info = if bytes.is_empty() {
        None
    } else {
        Some(LockInfo::parse(&bytes)?)
    };
    Ok(LockCall {
        role,
        name,
        parts,
        info,
    })
}

/// LOCK: [`lock_call`], then [`lock`].
pub(super) async fn lock_request(
    state: &AppState,
    raw_name: &str,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let cfg = config(state)?;
    let call = lock_call(state, raw_name, req).await?;
    let priority = priority_of(&call.parts)?;
    let Some(info) = call.info else {
        return Err(ApiError::invalid(
            "body",
            "LOCK needs the LockInfo JSON body",
        ));
    };
    lock(state, cfg, &call.name, &info, priority).await
}

/// UNLOCK: [`lock_call`], then [`unlock`].
pub(super) async fn unlock_request(
    state: &AppState,
    raw_name: &str,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let cfg = config(state)?;
    let call = lock_call(state, raw_name, req).await?;
    unlock(state, cfg, call.role, &call.name, call.info).await
}

/// The priority of a LOCK: `?priority=` on the lock address (Terraform keeps the
/// address's query) or the `X-Tflock-Priority` header; `normal` by default.
fn priority_of(parts: &axum::http::request::Parts) -> Result<Priority, ApiError> {
    let from_query = parts.uri.query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "priority")
            .map(|(_, v)| v)
    });
    let from_header = parts
        .headers
        .get("x-tflock-priority")
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string());
    match from_query.or(from_header) {
        None => Ok(Priority::Normal),
        Some(p) => p.parse().map_err(|_| {
            ApiError::invalid(
                "priority",
                format!("'{p}' is not a priority: use low, normal, high or critical"),
            )
        }),
    }
}

/// One LOCK: take the lock, or queue (and maybe wait a while) and answer 423.
async fn lock(
    state: &AppState,
    cfg: &TerraformConfig,
    name: &StateName,
    info: &LockInfo,
    priority: Priority,
) -> Result<Response, ApiError> {
    let resource = resource(name)?;
    let ids = LockIds::of(&info.id);
    let owner = info.owner(&ids);
    let backend = state.backend();
    // Subscribed before the first attempt, so no hand-off is missed while parked.
    let mut events = backend.subscribe();
    let park_until = Instant::now() + cfg.long_poll;
    let mut chain = 0u32;
    // Until the client's entry is known to be from an earlier LOCK, its reservation
    // lives FIRST_WINDOW only (see there); a repeated poll renews it to queue_grace.
    let mut repeated = false;
    let mut looked_at_entry = false;
    let recheck = RECHECK
        .min(cfg.queue_grace / 3)
        .max(Duration::from_millis(200));
    loop {
        // The grant a reservation gets lives as long as its place does: a place only
        // ever asked for once (FIRST_WINDOW) is granted for that while, so a client
        // that is gone holds up the queue for seconds, not queue_grace.
        let window = if repeated || !cfg.fair_queue {
            cfg.queue_grace
        } else {
            FIRST_WINDOW.min(cfg.queue_grace)
        };
        let mut request = LockRequest::new(resource.clone(), owner.owner.clone())
            .with_priority(priority)
            .with_ttl(window)
            .with_request_id(ids.request_id(chain));
        request.owner = owner.clone();
        if cfg.fair_queue {
            request.reserve = true;
            request.wait = Some(WaitSpec::For(window));
        }
        // Timed and counted like the API's acquires (`tflock_operations_total`,
        // operation `terraform_lock`).
        let op = crate::api::Op::start(state, "terraform_lock");
        let result = backend.try_lock(request).await;
        let full = match &result {
            Err(TryLockError::QueueFull { max }) => Some(*max),
            _ => None,
        };
        let answer = match op.finish(result, |a| {
            if a.acquired {
                "acquired"
            } else if a.queue.is_some() {
                "queued"
            } else {
                "not_acquired"
            }
        }) {
            Ok(a) => a,
            Err(_) if full.is_some() => {
                let max = full.unwrap_or_default();
                return Ok(locked_answer(
                    state,
                    name,
                    None,
                    None,
                    Some(format!(
                        "the queue of this state is full ({max} clients wait)"
                    )),
                )
                .await);
            }
            Err(e) => return Err(e),
        };
        if answer.acquired {
            let lock = answer.lock.ok_or_else(|| {
                ApiError::new(tflock_core::ErrorCode::Internal, "a grant without its lock")
            })?;
            match granted(state, cfg, name, &resource, &ids, chain, info, &owner, lock).await? {
                Some(response) => return Ok(response),
                // The lease ended between the grant and its extension, or a newer
                // grant was recorded meanwhile: ask again.
                None => continue,
            }
        }
        match answer.reason {
            // This link's reservation or grant ended while the client did not poll
            // (or it holds the lock under another link): the next link.
            Some(NotAcquiredReason::LeaseLost | NotAcquiredReason::HeldByOwner)
                if chain + 1 < MAX_CHAIN =>
            {
                chain += 1;
                continue;
            }
            _ => {}
        }
        let queued = answer.queue.clone();
        if let Some(placement) = &queued
            && cfg.fair_queue
        {
            if !looked_at_entry {
                looked_at_entry = true;
                if waited_before(state, &resource, placement).await {
                    // A repeated poll: renew the place to queue_grace now.
                    repeated = true;
                    continue;
                }
            }
            let left = park_until.saturating_duration_since(Instant::now());
            if repeated && !cfg.long_poll.is_zero() && !left.is_zero() && !state.is_closing() {
                park(state, &mut events, &resource, left.min(recheck)).await;
                continue;
            }
        }
        return Ok(locked_answer(state, name, answer.lock, queued, lost_note(answer.reason)).await);
    }
}

fn lost_note(reason: Option<NotAcquiredReason>) -> Option<String> {
    match reason {
        Some(NotAcquiredReason::LockDelay) => {
            Some("the lock store is recovering from a data loss; retry shortly".into())
        }
        Some(NotAcquiredReason::LeaseLost | NotAcquiredReason::HeldByOwner) => {
            Some("this lock ID lost its place too often; start the command again".into())
        }
        _ => None,
    }
}

/// Whether the client's queue entry was made by an earlier LOCK (it has waited a
/// second or more): only a repeated LOCK is held open, so a client that asks once
/// (`-lock-timeout=0`) hears "locked" at once.
async fn waited_before(state: &AppState, resource: &Resource, placement: &QueuePlacement) -> bool {
    match state.backend().get_queue_status(resource).await {
        Ok(status) => status
            .entries
            .iter()
            .find(|e| e.entry.entry_id == placement.entry_id)
            .is_some_and(|e| e.waited >= REPEATED),
        Err(_) => false,
    }
}

/// Waits up to `max` for an event on `resource` (a hand-off may be ours) or shutdown.
async fn park(
    state: &AppState,
    events: &mut tokio::sync::broadcast::Receiver<tflock_core::LockEvent>,
    resource: &Resource,
    max: Duration,
) {
    let deadline = tokio::time::Instant::now() + max;
    let closing = state.closing();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                // Only a lease that ends or a grant can make it this client's turn.
                Ok(e) if &e.resource == resource
                    && matches!(
                        e.event,
                        EventKind::LockReleased
                            | EventKind::LockExpired
                            | EventKind::LockTransferred
                            | EventKind::QueueGranted
                            | EventKind::QueueLeft
                    ) => return,
                Ok(_) => {}
                // Missed some: look now rather than miss ours.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = &mut closing => return,
        }
    }
}

/// A grant to this client: record it for the fenced writes, give it `lock_ttl`, answer
/// 200. `None` when the lease ended meanwhile (the caller asks again).
#[allow(clippy::too_many_arguments)]
async fn granted(
    state: &AppState,
    cfg: &TerraformConfig,
    name: &StateName,
    resource: &Resource,
    ids: &LockIds,
    chain: u32,
    info: &LockInfo,
    owner: &Owner,
    lock: Lock,
) -> Result<Option<Response>, ApiError> {
    let Some(lease) = lock.lease_id.clone() else {
        return Err(ApiError::new(
            tflock_core::ErrorCode::Internal,
            "a grant without its lease id",
        ));
    };
    // Recorded before the client hears 200, so from the moment it may write, every
    // older holder's write is refused (the store's fence is this token).
    let record = LockRecord {
        id_digest: ids.digest.clone(),
        public_id: ids.public.clone(),
        token: lock.fencing_token.0,
        chain,
        owner: owner.owner.clone(),
        info: info.public_json(),
        locked_at_ms: now_ms(),
    };
    match cfg.store.record_lock(name, record).await {
        Ok(()) => {}
        Err(RecordError::Stale { fence }) => {
            // A newer lock was recorded: this grant is not the newest (this handler
            // stalled past queue_grace between the grant and here, and the lock went
            // on); give it back rather than hand out a lock whose writes would all be
            // refused, and ask again.
            tracing::warn!(state = %name, token = lock.fencing_token.0, fence, "grant older than the state's fence: asking again");
            let _ = state.backend().unlock(resource, &lease).await;
            return Ok(None);
        }
        Err(RecordError::Store(e)) => return Err(ApiError::unavailable(e)),
    }
    let lock = match state
        .backend()
        .refresh_lock(resource, &lease, cfg.lock_ttl)
        .await
    {
        Ok(l) => l,
        Err(RefreshError::LeaseLost) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut body = info.clone();
    body.id = info.id.clone();
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&lock.fencing_token.0.to_string()) {
        response.headers_mut().insert("x-tflock-fencing-token", v);
    }
    Ok(Some(response))
}

/// 423 with the holder's LockInfo. Terraform prints the `ID` of this body ("HTTP remote
/// state already locked: ID=..."), so the ID says who holds the lock and where the
/// caller stands; it is not the holder's secret lock ID.
pub(super) async fn locked_answer(
    state: &AppState,
    name: &StateName,
    holder: Option<Lock>,
    queued: Option<QueuePlacement>,
    note: Option<String>,
) -> Response {
    let record = match state.terraform() {
        Some(cfg) => cfg.store.lock_record(name).await.ok().flatten(),
        None => None,
    };
    let mut body = serde_json::Map::new();
    let mut id = match &holder {
        Some(lock) => {
            let recorded = record.as_ref().filter(|r| r.token == lock.fencing_token.0);
            if let Some(r) = recorded {
                if let Some(obj) = r.info.as_object() {
                    body.extend(obj.clone());
                }
                // Terraform decodes `Created` as a time: an empty or odd one would make
                // it drop the whole body (and the holder with it).
                let created_ok = body
                    .get("Created")
                    .and_then(|v| v.as_str())
                    .is_some_and(|c| tflock_core::Timestamp::parse_rfc3339(c).is_ok());
                if !created_ok {
                    body.insert("Created".into(), lock.acquired_at.to_rfc3339().into());
                }
                let who = r.info.get("Who").and_then(|v| v.as_str()).unwrap_or("");
                let op = r
                    .info
                    .get("Operation")
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                format!(
                    "{} (held by {} for {} since {}, tflock fencing token {})",
                    r.public_id,
                    if who.is_empty() { &r.owner } else { who },
                    op.strip_prefix("OperationType")
                        .unwrap_or(op)
                        .to_ascii_lowercase(),
                    lock.acquired_at.to_rfc3339(),
                    lock.fencing_token.0
                )
            } else {
                body.insert("Who".into(), lock.owner.owner.clone().into());
                body.insert("Operation".into(), "tflock".into());
                body.insert("Created".into(), lock.acquired_at.to_rfc3339().into());
                format!(
                    "tflock-{} (held by {} since {}, tflock fencing token {})",
                    lock.fencing_token.0,
                    lock.owner.owner,
                    lock.acquired_at.to_rfc3339(),
                    lock.fencing_token.0
                )
            }
        }
        None => {
            body.insert("Who".into(), "tflock".into());
            "tflock-queue (the lock is free but clients ahead of you are being served)".to_string()
        }
    };
    if let Some(q) = &queued {
        id.push_str(&format!("; you are number {} in line", q.position));
    }
    if let Some(n) = &note {
        id.push_str(&format!("; {n}"));
    }
    body.insert("ID".into(), id.into());
    body.entry("Info").or_insert_with(|| "".into());
    let mut response = (
        StatusCode::LOCKED,
        axum::Json(serde_json::Value::Object(body)),
    )
        .into_response();
    if let Some(q) = queued
        && let Ok(v) = HeaderValue::from_str(&q.position.to_string())
    {
        response.headers_mut().insert("x-tflock-queue-position", v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One UNLOCK. With the client's LockInfo: release its lock (a retry after success is
/// 200 too); another client's lock is never touched (423). Without a body (what
/// `terraform force-unlock` sends): a force unlock, for the admin token only.
async fn unlock(
    state: &AppState,
    cfg: &TerraformConfig,
    role: Role,
    name: &StateName,
    info: Option<LockInfo>,
) -> Result<Response, ApiError> {
    let resource = resource(name)?;
    let backend = state.backend();
    let Some(info) = info else {
        require_admin(
            state,
            role,
            "terraform force-unlock (an UNLOCK without a body)",
        )?;
        return match backend.force_unlock(&resource, None).await {
            Ok(released) => {
                let _ = cfg
                    .store
                    .clear_lock(name, released.released.fencing_token.0)
                    .await;
                tracing::info!(state = %name, token = released.released.fencing_token.0, "state lock forced open");
                Ok(StatusCode::OK.into_response())
            }
            Err(UnlockError::NotFound) if known(cfg, name).await? => Err(ApiError::new(
                tflock_core::ErrorCode::NotFound,
                format!("the state '{name}' is not locked"),
            )
            .with_status(StatusCode::CONFLICT)),
            Err(UnlockError::NotFound) => Err(unknown_state(name)),
            Err(e) => Err(e.into()),
        };
    };
    let ids = LockIds::of(&info.id);
    let record = cfg
        .store
        .lock_record(name)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let live = backend.get_lock(&resource).await?;
    if let Some(rec) = record.as_ref().filter(|r| r.id_digest == ids.digest)
        && live
            .as_ref()
            .is_some_and(|l| l.fencing_token.0 == rec.token)
    {
        // The live lease is this client's: its lease id comes back from the
        // request id it was granted with (the lease id is stored nowhere).
        let mut request = LockRequest::new(resource.clone(), rec.owner.clone())
            .with_ttl(cfg.queue_grace)
            .with_request_id(ids.request_id(rec.chain));
        request.owner = info.owner(&ids);
        request.owner.owner = rec.owner.clone();
        let answer = backend.try_lock(request).await?;
        if let Some(lease) = answer
            .lock
            .as_ref()
            .filter(|_| answer.acquired)
            .and_then(|l| l.lease_id.clone())
        {
            match backend.unlock(&resource, &lease).await {
                Ok(_) | Err(UnlockError::NotFound | UnlockError::NotOwner) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let _ = cfg.store.clear_lock(name, rec.token).await;
        return Ok(StatusCode::OK.into_response());
    }
    // Not the live lock: a client that gives up its place in line, or the retry of
    // an unlock that already happened.
    cancel_reservation(state, &resource, &info.owner(&ids)).await;
    // This lock ID holds nothing: there is nothing to unlock, and answering 200 harms
    // nobody (a 423 would make Terraform suggest a force-unlock, which would end the
    // lock of whoever holds it now).
    let _ = live;
    if known(cfg, name).await? {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(unknown_state(name))
    }
}

async fn cancel_reservation(state: &AppState, resource: &Resource, owner: &Owner) {
    if let Ok(status) = state.backend().get_queue_status(resource).await {
        for e in status
            .entries
            .iter()
            .filter(|e| e.entry.owner.owner == owner.owner)
        {
            let _ = state
                .backend()
                .cancel_queue_entry(&e.entry.entry_id, Some(resource))
                .await;
        }
    }
}

/// Whether tflock has ever seen this state (a version, a lock record or a fence: a
/// state only ever locked, as by `terraform plan` on a new state, has a fence).
pub(super) async fn known(cfg: &TerraformConfig, name: &StateName) -> Result<bool, ApiError> {
    let summary = cfg
        .store
        .summary(name)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if summary.is_some_and(|s| s.current.is_some() || s.versions > 0 || s.fence > 0) {
        return Ok(true);
    }
    let fence = cfg
        .store
        .fence(name)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(fence > 0)
}

pub(super) fn unknown_state(name: &StateName) -> ApiError {
    ApiError::not_found(format!("there is no state named '{name}'"))
}

pub(super) fn require_admin(state: &AppState, role: Role, what: &str) -> Result<(), ApiError> {
    let tokens = state.tokens();
    match (&tokens.admin, role) {
        (Some(_), Role::Admin) => Ok(()),
        (None, _) if tokens.api.is_none() => Ok(()),
        (Some(_), _) => Err(ApiError::forbidden(format!(
            "{what} needs the admin token as the backend's password"
        ))),
        (None, _) => Err(ApiError::forbidden(format!(
            "{what} is disabled: the server has no admin token configured"
        ))),
    }
}
