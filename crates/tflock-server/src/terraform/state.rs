//! The state document at `/tf/{name}`: `GET`, fenced `POST`/`PUT` and `DELETE`; and
//! the `/api/v1/states` views and rollback that `tflock state` uses.
//!
//! A write with `?ID=` (what Terraform sends while it holds the lock) lands only if
//! that ID's lock is the live lease *and* the newest lock recorded for the state; a
//! write without `ID` only while the state is not locked. Both checks end in one
//! atomic step of the state store ([`Guard`]), so a holder whose lease ended and
//! was granted to someone else can never write over the new holder's state, even if
//! its write was already on its way. `?force=true` (admin token) skips the `serial`
//! and `lineage` checks, not the lock.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tflock_tfstate::{Guard, StateName, StateSummary, VersionMeta, Write, WriteError};

use super::lock::{self, locked_answer, require_admin, unknown_state};
use super::{LockIds, TerraformConfig, config, now_ms, resource, state_name};
use crate::auth::{Role, role_of};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, is_json, read_limited};
use crate::state::AppState;

/// `/tf/{name}`: every method of the http backend's one address.
pub(super) async fn dispatch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let method = req.method().as_str().to_string();
    let result = match method.as_str() {
        "GET" | "HEAD" => get(&state, &name, req).await,
        "POST" | "PUT" => write(&state, &name, req, false).await,
        "DELETE" => write(&state, &name, req, true).await,
        "LOCK" => lock::lock_request(&state, &name, req).await,
        "UNLOCK" => lock::unlock_request(&state, &name, req).await,
        _ => Err(lock::method_not_allowed(
            &method,
            "/tf/{name}",
            "GET, POST, PUT, DELETE, LOCK, UNLOCK",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The caller's role. Every `/tf` call needs the API token when one is set (reading a
/// state too: a state holds secrets); `changes` only words the refusal.
pub(super) fn caller(parts: &Parts, state: &AppState, changes: bool) -> Result<Role, ApiError> {
    let role = role_of(parts, state)?;
    if role == Role::Anonymous && state.tokens().api.is_some() {
        let what = if changes {
            "changes a Terraform state or its lock"
        } else {
            "reads a Terraform state"
        };
        let mut e = ApiError::unauthorized(format!(
            "this call {what}: set the backend's password (or TF_HTTP_PASSWORD) to the API token"
        ));
        e.field = None;
        return Err(e);
    }
    Ok(role)
}

/// Reads a body of at most `limit` bytes. A non-empty body must be sent as JSON (as
/// Terraform sends it): a browser cannot send that cross-site without a preflight, so
/// a loopback server without tokens stays safe from web pages.
pub(super) async fn read_body(parts: &Parts, body: Body, limit: u64) -> Result<Vec<u8>, ApiError> {
    let too_large = ApiError::new(
        tflock_core::ErrorCode::InvalidRequest,
        format!(
            "the body is larger than {limit} bytes (enhanced_locking.terraform.max_state_bytes for states)"
        ),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE);
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let bytes = read_limited(&parts.headers, body, limit, too_large).await?;
    if !bytes.is_empty() && !is_json(parts.headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::invalid(
            "content-type",
            "the body must be sent with 'Content-Type: application/json'",
        ));
    }
    Ok(bytes.to_vec())
}

/// The query of a state address.
#[derive(Debug, Default, Deserialize)]
struct StateQuery {
    /// The lock ID Terraform writes under.
    #[serde(rename = "ID")]
    id: Option<String>,
    /// Admin: skip the serial and lineage checks.
    force: Option<bool>,
    /// GET: a kept version instead of the current one.
    version: Option<u64>,
}

fn query(parts: &Parts) -> Result<StateQuery, ApiError> {
    match parts.uri.query() {
        None | Some("") => Ok(StateQuery::default()),
        Some(q) => serde_urlencoded::from_str(q).map_err(|e| {
            ApiError::invalid(
                "query",
                format!("the query does not read: {e} (expected ID, force, version)"),
            )
        }),
    }
}

/// GET: the current state (404 when none), or `?version=N`. `Content-MD5` lets
/// Terraform check what it read.
async fn get(state: &AppState, raw_name: &str, req: Request) -> Result<Response, ApiError> {
    let cfg = config(state)?;
    let (parts, _) = req.into_parts();
    caller(&parts, state, false)?;
    let name = state_name(raw_name)?;
    let q = query(&parts)?;
    let stored = match q.version {
        Some(v) => cfg.store.get_version(&name, v).await,
        None => cfg.store.get(&name).await,
    }
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let stored = match (stored, q.version) {
        (Some(s), _) if !s.meta.deleted => s,
        (Some(_), Some(v)) => {
            return Err(ApiError::not_found(format!(
                "version {v} of the state '{name}' is a delete marker: it has no document"
            )));
        }
        (None, Some(v)) => {
            return Err(ApiError::not_found(format!(
                "the state '{name}' keeps no version {v}"
            )));
        }
        (_, None) => {
            return Err(ApiError::not_found(format!(
                "the state '{name}' has no stored state"
            )));
        }
    };
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&stored.body));
    let mut response = (StatusCode::OK, stored.body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&md5) {
        h.insert("content-md5", v);
    }
    if let Ok(v) = HeaderValue::from_str(&stored.meta.version.to_string()) {
        h.insert("x-tflock-state-version", v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// POST/PUT (store a new version) or DELETE (a delete marker), fenced by the lock.
async fn write(
    state: &AppState,
    raw_name: &str,
    req: Request,
    delete: bool,
) -> Result<Response, ApiError> {
    let cfg = config(state)?;
    let (parts, body) = req.into_parts();
    let role = caller(&parts, state, true)?;
    let name = state_name(raw_name)?;
    let q = query(&parts)?;
    let force = q.force.unwrap_or(false);
    if force {
        require_admin(state, role, "a forced state write (?force=true)")?;
    }
    let limit = if delete {
        state.limits().max_body_bytes as u64
    } else {
        cfg.max_state_bytes
    };
    let bytes = read_body(&parts, body, limit).await?;
    if !delete {
        check_md5(&parts, &bytes)?;
    }
    let guard = match guard(
        state,
        cfg,
        &name,
        q.id.as_deref(),
        "the state is locked: write with the lock's ?ID=",
    )
    .await?
    {
        Ok(g) => g,
        Err(refusal) => return Ok(refusal),
    };
    let now = now_ms();
    let result = if delete {
        cfg.store.delete(&name, guard, now).await
    } else {
        cfg.store
            .put(
                &name,
                Write {
                    body: bytes,
                    guard,
                    force,
                    now_ms: now,
                },
            )
            .await
    };
    match result {
        Ok(meta) => {
            tracing::info!(state = %name, version = meta.version, serial = meta.serial, deleted = meta.deleted, "state stored");
            Ok((StatusCode::OK, Json(meta)).into_response())
        }
        Err(WriteError::NotFound) if delete => Err(ApiError::not_found(format!(
            "the state '{name}' has no stored state to delete"
        ))),
        Err(e) => Err(write_error(&name, e)),
    }
}

/// The write's guard: `Ok(Ok(guard))` to go on, `Ok(Err(answer))` when the lock
/// already says no (423 with the holder, or 409).
async fn guard(
    state: &AppState,
    cfg: &TerraformConfig,
    name: &StateName,
    id: Option<&str>,
    locked_note: &str,
) -> Result<Result<Guard, Response>, ApiError> {
    let resource = resource(name)?;
    let store_err = |e: tflock_tfstate::StoreError| ApiError::unavailable(e.to_string());
    match id {
        Some(id) => {
            let ids = LockIds::of(id);
            let record = cfg.store.lock_record(name).await.map_err(store_err)?;
            let live = state.backend().get_lock(&resource).await?;
            match (record, live) {
                (Some(rec), Some(live))
                    if rec.id_digest == ids.digest && rec.token == live.fencing_token.0 =>
                {
                    Ok(Ok(Guard::Lock { id_digest: ids.digest, token: rec.token }))
                }
                (_, Some(live)) => Ok(Err(locked_answer(
                    state,
                    name,
                    Some(live),
                    None,
                    Some("the write's ID does not hold the lock: nothing was stored".into()),
                )
                .await)),
                (_, None) => Err(ApiError::new(
                    tflock_core::ErrorCode::LeaseLost,
                    format!(
                        "the lock of ID {} on '{name}' has ended (released, expired or forced): nothing was stored",
                        ids.public
                    ),
                )
                .with_status(StatusCode::CONFLICT)),
            }
        }
        None => {
            // The fence first, then the lock: a lock granted after this look raises
            // the fence, and the store refuses the write.
            let fence_seen = cfg.store.fence(name).await.map_err(store_err)?;
            match state.backend().get_lock(&resource).await? {
                Some(live) => Ok(Err(locked_answer(
                    state,
                    name,
                    Some(live),
                    None,
                    Some(locked_note.to_string()),
                )
                .await)),
                None => Ok(Ok(Guard::Unlocked { fence_seen })),
            }
        }
    }
}

fn check_md5(parts: &Parts, bytes: &[u8]) -> Result<(), ApiError> {
    let Some(sent) = parts.headers.get("content-md5") else {
        return Ok(());
    };
    let sent = sent
        .to_str()
        .ok()
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
        })
        .ok_or_else(|| ApiError::invalid("Content-MD5", "must be the base64 of an MD5 digest"))?;
    if sent.as_slice() != Md5::digest(bytes).as_slice() {
        return Err(ApiError::invalid(
            "Content-MD5",
            "does not match the body: it was changed or cut on the way; nothing was stored",
        ));
    }
    Ok(())
}

fn write_error(name: &StateName, e: WriteError) -> ApiError {
    use tflock_core::ErrorCode;
    let conflict =
        |code: ErrorCode, msg: String| ApiError::new(code, msg).with_status(StatusCode::CONFLICT);
    match e {
        WriteError::Fenced { fence, .. } => conflict(
            ErrorCode::LeaseLost,
            format!("a newer lock (fencing token {fence}) was taken on '{name}' since this write's lock: nothing was stored"),
        ),
        WriteError::InvalidState(m) => ApiError::invalid("body", m),
        WriteError::SerialBackwards { stored, sent } => conflict(
            ErrorCode::InvalidRequest,
            format!("the state's serial {sent} is below the stored serial {stored}: refused (an admin may force it with ?force=true)"),
        ),
        WriteError::LineageChanged { stored, sent } => conflict(
            ErrorCode::InvalidRequest,
            format!("the state's lineage '{sent}' is not the stored lineage '{stored}': refused (an admin may force it with ?force=true)"),
        ),
        WriteError::TooLarge { size, max } => ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the state is {size} bytes; at most {max} are stored (enhanced_locking.terraform.max_state_bytes)"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE),
        WriteError::NotFound => ApiError::not_found(format!("the state '{name}' keeps no such version")),
        WriteError::Store(m) => ApiError::unavailable(m),
    }
}

// ----- /api/v1/states -----

/// One state in `GET /api/v1/states` and `GET /api/v1/state`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StateView {
    pub name: String,
    /// The current version; absent when never written or deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub current: Option<VersionMeta>,
    /// How many versions are kept.
    pub versions: u64,
    /// The lock recorded for the state, when it is still the live one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<StateLockView>,
}

/// A state's lock as others may see it: never the lock ID, only its public id.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StateLockView {
    pub id: String,
    pub owner: String,
    pub fencing_token: u64,
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
}

async fn view(state: &AppState, s: StateSummary) -> StateView {
    let live = match resource(&s.name) {
        Ok(r) => state.backend().get_lock(&r).await.ok().flatten(),
        Err(_) => None,
    };
    let lock = s
        .lock
        .filter(|r| live.as_ref().is_some_and(|l| l.fencing_token.0 == r.token))
        .map(|r| StateLockView {
            id: r.public_id,
            owner: r.owner,
            fencing_token: r.token,
            info: r.info,
        });
    StateView {
        name: s.name.to_string(),
        current: s.current,
        versions: s.versions,
        lock,
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatesBody {
    pub states: Vec<StateView>,
}

/// `GET /api/v1/states`: every Terraform state, by name.
#[utoipa::path(get, path = "/api/v1/states", tag = "terraform", security(("api_token" = [])),
    responses((status = 200, description = "Every state", body = StatesBody)))]
pub(crate) async fn states_list(
    State(state): State<AppState>,
    parts: Parts,
) -> Result<Json<StatesBody>, ApiError> {
    let cfg = config(&state)?;
    caller(&parts, &state, false)?;
    let all = cfg
        .store
        .list()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let mut states = Vec::with_capacity(all.len());
    for s in all {
        states.push(view(&state, s).await);
    }
    Ok(Json(StatesBody { states }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct NameQuery {
    /// The state name, e.g. `team/app/prod`.
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StateBody {
    pub state: StateView,
    /// Kept versions, newest first.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<VersionMeta>,
}

/// `GET /api/v1/state?name=`: one state and its kept versions.
#[utoipa::path(get, path = "/api/v1/state", tag = "terraform", params(NameQuery), security(("api_token" = [])),
    responses((status = 200, description = "The state", body = StateBody),
              (status = 404, description = "`not_found`: no such state", body = crate::wire::ErrorBody)))]
pub(crate) async fn state_summary(
    State(state): State<AppState>,
    mut parts: Parts,
) -> Result<Json<StateBody>, ApiError> {
    let cfg = config(&state)?;
    // The token before the query: a caller without one learns nothing, not even
    // which parameters are expected.
    caller(&parts, &state, false)?;
    let ApiQuery(q) =
        <ApiQuery<NameQuery> as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, &state,
        )
        .await?;
    let name = state_name(&q.name)?;
    let err = |e: tflock_tfstate::StoreError| ApiError::unavailable(e.to_string());
    let summary = cfg
        .store
        .summary(&name)
        .await
        .map_err(err)?
        .ok_or_else(|| unknown_state(&name))?;
    let history = cfg.store.versions(&name).await.map_err(err)?;
    Ok(Json(StateBody {
        state: view(&state, summary).await,
        history,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The state name.
    pub name: String,
    /// The kept version to bring back.
    pub version: u64,
}

/// `POST /api/v1/state/rollback` (admin): the content of a kept version becomes a new
/// version, its serial above every serial stored, so Terraform accepts it. Refused
/// while the state is locked.
#[utoipa::path(post, path = "/api/v1/state/rollback", tag = "terraform", request_body = RollbackBody, security(("admin_token" = [])),
    responses((status = 200, description = "The new version", body = Object),
              (status = 403, description = "`forbidden`: needs the admin token", body = crate::wire::ErrorBody),
              (status = 409, description = "A lock was taken meanwhile: nothing changed", body = crate::wire::ErrorBody),
              (status = 423, description = "The state is locked: the holder's LockInfo", body = Object)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    caller_role: crate::auth::Admin,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, ApiError> {
    let _ = caller_role;
    let cfg = config(&state)?;
    let name = state_name(&body.name)?;
    let guard = match guard(
        &state,
        cfg,
        &name,
        None,
        "a rollback is refused while the state is locked: wait for the lock to end or force-unlock it first",
    )
    .await?
    {
        Ok(g) => g,
        Err(refusal) => return Ok(refusal),
    };
    match cfg
        .store
        .rollback(&name, body.version, guard, now_ms())
        .await
    {
        Ok(meta) => {
            tracing::info!(state = %name, from = body.version, version = meta.version, "state rolled back");
            Ok((StatusCode::OK, Json(meta)).into_response())
        }
        Err(WriteError::NotFound) => Err(ApiError::invalid(
            "version",
            format!("the state '{name}' keeps no version {}", body.version),
        )),
        Err(e) => Err(write_error(&name, e)),
    }
}
