//! Admin export and import of a whole store (`tflock locks export` / `import`), and
//! `GET /api/cluster`.
//!
//! A snapshot holds every lease id: both routes need the admin token. An import body
//! may be large (a store with many locks), so it has its own body cap
//! ([`crate::Limits::max_import_bytes`]) and time limit
//! ([`crate::Limits::admin_timeout`]). The server checks every part of a snapshot
//! before the backend sees it, so a bad snapshot changes nothing and names the field
//! at fault.

use axum::Json;
use axum::extract::State;
use tflock_core::{ImportOptions, ImportReport, InvalidRequest, Snapshot};

use crate::api::Op;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{ApiQuery, ImportJson};
use crate::state::AppState;
use crate::wire::{ClusterNode, ClusterView, ErrorBody, ImportQuery, check_pull, parse_bool};

/// Fencing tokens and token counters at or above this are refused: the Redis backend
/// keeps them in Lua numbers (doubles), which hold integers exactly only below 2^53,
/// and so do JavaScript clients.
pub const MAX_TOKEN: u64 = 1 << 53;

/// Longest lease id or entry id accepted in a snapshot.
const MAX_ID_BYTES: usize = 128;

/// `GET /api/v1/admin/export` (admin): the whole store.
#[utoipa::path(get, path = "/api/v1/admin/export", tag = "admin",
    summary = "Export the whole store: every lease (with lease ids), queue and token counter",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The snapshot", body = Snapshot),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
    ))]
pub(crate) async fn export(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Snapshot>, ApiError> {
    let op = Op::start(&state, "export");
    let snapshot = op.finish(state.backend().export().await, |_| "ok")?;
    Ok(Json(snapshot))
}

/// `POST /api/v1/admin/import?dry_run=&overwrite=` (admin): installs a snapshot.
#[utoipa::path(post, path = "/api/v1/admin/import", tag = "admin",
    summary = "Import a snapshot: leases whose resource is free, missing queue entries, \
        token counters (never lowered)",
    description = "A lock whose resource is held under another lease is a conflict \
        (left alone) unless `overwrite=true`. A lock whose token the store already passed \
        gets a new, higher one (`retokened`). `dry_run=true` reports without changing \
        anything. The body may be up to 64 MiB by default.",
    params(ImportQuery),
    request_body = Snapshot,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "What was (or, dry, would be) imported", body = ImportReport),
        (status = 403, description = "`forbidden`: needs the admin token", body = ErrorBody),
    ))]
pub(crate) async fn import(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<ImportQuery>,
    ImportJson(snapshot): ImportJson<Snapshot>,
) -> Result<Json<ImportReport>, ApiError> {
    let options = ImportOptions {
        dry_run: parse_bool("dry_run", q.dry_run.as_deref())?,
        overwrite: parse_bool("overwrite", q.overwrite.as_deref())?,
    };
    let snapshot = check_snapshot(snapshot)?;
    let op = Op::start(&state, "import");
    let report = op.finish(state.backend().import(snapshot, options).await, |_| "ok")?;
    Ok(Json(report))
}

/// Checks every resource, owner, id and token of a snapshot; returns it with its
/// resources normalised. Errors name the field (`resources[3].lock.owner`).
pub fn check_snapshot(mut snapshot: Snapshot) -> Result<Snapshot, InvalidRequest> {
    for (i, rs) in snapshot.resources.iter_mut().enumerate() {
        let at = format!("resources[{i}]");
        rs.resource = rs.resource.clone().validate(&format!("{at}.resource"))?;
        check_token(&format!("{at}.last_token"), rs.last_token)?;
        if let Some(lock) = &mut rs.lock {
            let f = format!("{at}.lock");
            lock.owner = lock.owner.clone().validate(&f)?;
            check_pull(
                &format!("{f}.pull.num"),
                lock.owner.pull.as_ref().map(|p| p.num),
            )?;
            let resource = lock.resource.clone().validate(&format!("{f}.resource"))?;
            if resource != rs.resource {
                return Err(InvalidRequest::new(
                    format!("{f}.resource"),
                    "differs from the entry's resource",
                ));
            }
            lock.resource = resource;
            check_token(&format!("{f}.fencing_token"), lock.fencing_token.0)?;
            if let Some(id) = &lock.lease_id {
                check_id(&format!("{f}.lease_id"), &id.0)?;
            }
        }
        for (j, entry) in rs.queue.iter_mut().enumerate() {
            let f = format!("{at}.queue[{j}]");
            entry.owner = entry.owner.clone().validate(&f)?;
            check_pull(
                &format!("{f}.pull.num"),
                entry.owner.pull.as_ref().map(|p| p.num),
            )?;
            let resource = entry.resource.clone().validate(&format!("{f}.resource"))?;
            if resource != rs.resource {
                return Err(InvalidRequest::new(
                    format!("{f}.resource"),
                    "differs from the entry's resource",
                ));
            }
            entry.resource = resource;
            check_id(&format!("{f}.entry_id"), &entry.entry_id)?;
            if let Some(id) = &entry.request_id {
                check_id(&format!("{f}.request_id"), id)?;
            }
        }
    }
    Ok(snapshot)
}

fn check_token(field: &str, token: u64) -> Result<(), InvalidRequest> {
    if token >= MAX_TOKEN {
        return Err(InvalidRequest::new(
            field,
            format!("{token} is not below 2^53, the largest token tflock keeps exactly"),
        ));
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<(), InvalidRequest> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(InvalidRequest::new(
            field,
            format!("must be 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

/// `GET /api/cluster`: the nodes serving this lock store, their leader and its epoch.
///
/// With a cluster manager ([`AppState::with_cluster`], Redis) every live node as the
/// registry on Redis holds it; without one (the embedded store) this node alone,
/// with `leader: null` and `epoch: null`.
#[utoipa::path(get, path = "/api/cluster", tag = "cluster",
    summary = "The nodes of this tflock deployment, their leader and its epoch",
    description = "With Redis, every live server (heartbeat within the node TTL), the \
        elected leader and its epoch. With the embedded store, this node alone with \
        `leader: null` and `epoch: null`.",
    responses(
        (status = 200, description = "Nodes, leader and epoch", body = ClusterView),
        (status = 503, description = "The cluster registry on Redis cannot be read", body = ErrorBody),
    ))]
pub(crate) async fn cluster(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let backend = state.backend().name().to_string();
    if let Some(cluster) = state.cluster() {
        let s = cluster.status().await?;
        return Ok(Json(ClusterView {
            nodes: s
                .nodes
                .into_iter()
                .map(|n| ClusterNode {
                    id: n.id,
                    address: n.address,
                    version: n.version,
                    backend: backend.clone(),
                    started_at: n.started_at,
                    this_node: n.this_node,
                    last_heartbeat: Some(n.last_heartbeat),
                })
                .collect(),
            leader: s.leader,
            epoch: Some(s.epoch),
        }));
    }
    Ok(Json(ClusterView {
        nodes: vec![ClusterNode {
            id: state.node_id().to_string(),
            address: state.listen_addr().map(|a| a.to_string()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend,
            started_at: state.started_at(),
            this_node: true,
            last_heartbeat: None,
        }],
        leader: None,
        epoch: None,
    }))
}
