//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the API, generated from the
//! handlers' `#[utoipa::path]` annotations and the wire types' `ToSchema` derives.
//!
//! Each annotation lists what is particular to its route (success body, 404, 409,
//! ...). [`CommonAnswers`] then adds the answers every route can give, by rule, so no
//! route forgets one:
//!
//! - every route: 431 (request head too large), 500 `internal`, 503
//!   `backend_unavailable` (with `Retry-After`: a backend down, its breaker open, or
//!   the call out of time);
//! - a route with a body or parameters: 400 `invalid_request`;
//! - a route with a body: 413 (body too large);
//! - a route with a security requirement: 401 `unauthorized` (with
//!   `WWW-Authenticate`).
//!
//! The route table in `lib.rs` and this document are checked against each other by
//! the `openapi` integration tests, both ways.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Object, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;
use crate::{admin, api, atlantis, events, health};

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tflock",
        description = "Fair, fenced, distributed locks for Terraform automation: the wire \
            form of the tflock locking contract. Mutating calls need \
            `Authorization: Bearer <token>` once the server has tokens (the API token or the \
            admin token); admin calls need the admin token. A server without tokens (allowed \
            on loopback only) needs none. Every error is `{\"error\": {\"code\", \"message\", \
            \"field\"?}}` with the contract's status for its code.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        api::acquire,
        api::release,
        api::refresh,
        api::transfer,
        api::release_pull,
        api::list_locks,
        api::get_lock,
        api::queue_status,
        api::user_queue,
        api::cancel_entry,
        admin::export,
        admin::import,
        atlantis::list_locks,
        health::locking,
        health::healthz,
        health::readyz,
        health::metrics,
        events::events,
        admin::cluster,
        crate::terraform::state::states_list,
        crate::terraform::state::state_summary,
        crate::terraform::state::rollback,
        document,
    ),
    modifiers(&CommonAnswers),
    tags(
        (name = "locks", description = "Acquire, release, refresh, transfer and read locks"),
        (name = "queue", description = "Queues: status, a user's entries, cancellation"),
        (name = "admin", description = "Admin calls: release by pull request, export, import"),
        (name = "atlantis", description = "Atlantis's own API shape"),
        (name = "health", description = "Liveness, readiness, health report, metrics"),
        (name = "events", description = "Server-Sent Events"),
        (name = "cluster", description = "Deployment view"),
        (name = "terraform", description = "Terraform states kept by the http backend at /tf/{name} (docs/terraform.md)"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /api/openapi.json`: the document as this server enforces it. Security
/// requirements (and their 401 answers) are left out where the server has no token to
/// check: every call of a server without tokens, the mutating calls of a server with
/// only an admin token.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub(crate) async fn document(State(state): State<AppState>) -> Response {
    let tokens = state.tokens();
    let variant = match (tokens.api.is_some(), tokens.admin.is_some()) {
        (true, _) => Enforced::All,
        (false, true) => Enforced::AdminOnly,
        (false, false) => Enforced::None,
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        served(variant),
    )
        .into_response()
}

/// Which security requirements a server enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enforced {
    All,
    AdminOnly,
    None,
}

fn served(variant: Enforced) -> &'static str {
    static DOCS: [OnceLock<String>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match variant {
        Enforced::All => 0,
        Enforced::AdminOnly => 1,
        Enforced::None => 2,
    };
    DOCS[slot].get_or_init(|| {
        let mut doc = openapi().clone();
        if variant != Enforced::All {
            for item in doc.paths.paths.values_mut() {
                for op in operations(item) {
                    let admin_only = op.security.as_ref().is_some_and(|s| {
                        serde_json::to_value(s)
                            .is_ok_and(|v| v == serde_json::json!([{"admin_token": []}]))
                    });
                    if variant == Enforced::None || !admin_only {
                        op.security = None;
                        op.responses.responses.remove("401");
                    }
                }
            }
        }
        serde_json::to_string(&doc).expect("the OpenAPI document serialises")
    })
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// Adds the security schemes and the answers every route can give (see the module
/// docs).
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "server.api_token: needed by mutating calls once set (the admin \
                         token works too)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "server.admin_token: needed by admin calls; with only an API token \
                         configured admin calls are refused (403)",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in operations(item) {
                add_common(op);
            }
        }
        add_links(doc);
    }
}

/// OpenAPI links from an acquire to what its answer lets a caller do next (release or
/// refresh with the lease id when it acquired, read the lock and queue, cancel the
/// reservation when it reserved), so clients and stateful test tools can follow them.
fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    use serde_json::json;
    use utoipa::openapi::link::LinkBuilder;
    let Some(acquire) = doc
        .paths
        .paths
        .get_mut("/api/v1/locks/acquire")
        .and_then(|item| item.post.as_mut())
    else {
        return;
    };
    let Some(RefOr::T(ok)) = acquire.responses.responses.get_mut("200") else {
        return;
    };
    let resource_params = |b: LinkBuilder| {
        b.parameter("repo", "$response.body#/lock/resource/repo")
            .parameter("path", "$response.body#/lock/resource/path")
            .parameter("workspace", "$response.body#/lock/resource/workspace")
            .parameter("project_name", "$response.body#/lock/resource/project_name")
    };
    let links = [
        (
            "Release",
            LinkBuilder::new()
                .operation_id("release")
                .description("Release the lock just acquired, with its lease id")
                .request_body(Some(json!({
                    "resource": "$response.body#/lock/resource",
                    "lease_id": "$response.body#/lock/lease_id"
                }))),
        ),
        (
            "Refresh",
            LinkBuilder::new()
                .operation_id("refresh")
                .description("Extend the lock just acquired")
                .request_body(Some(json!({
                    "resource": "$response.body#/lock/resource",
                    "lease_id": "$response.body#/lock/lease_id",
                    "ttl": "1h"
                }))),
        ),
        (
            "GetLock",
            resource_params(LinkBuilder::new().operation_id("get_lock"))
                .description("Read the resource's holder"),
        ),
        (
            "QueueStatus",
            resource_params(LinkBuilder::new().operation_id("queue_status"))
                .description("Read the resource's queue"),
        ),
        (
            "CancelEntry",
            LinkBuilder::new()
                .operation_id("cancel_entry")
                .description("Cancel the queue entry of a reservation")
                .parameter("entry_id", "$response.body#/queue/entry_id"),
        ),
    ];
    for (name, link) in links {
        ok.links.insert(name.to_string(), RefOr::T(link.build()));
    }
}

fn error_answer(
    description: &str,
    header: Option<(&str, &str, Type)>,
) -> RefOr<utoipa::openapi::Response> {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if let Some((name, text, ty)) = header {
        r = r.header(
            name,
            HeaderBuilder::new()
                .schema(Some(Object::with_type(ty)))
                .description(Some(text))
                .build(),
        );
    }
    RefOr::T(r.build())
}

fn add_common(op: &mut Operation) {
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let answers = &mut op.responses.responses;
    let mut add = |status: &str, answer: RefOr<utoipa::openapi::Response>| {
        answers.entry(status.to_string()).or_insert(answer);
    };
    if has_body || has_params {
        add(
            "400",
            error_answer(
                "`invalid_request`: bad JSON, a bad or missing field or parameter (named in \
                 `field`), JSON nested too deep, or a body that is not `application/json`",
                None,
            ),
        );
    }
    if has_body {
        add(
            "413",
            error_answer(
                "`invalid_request`: the body is larger than the route's cap",
                None,
            ),
        );
    }
    if secured {
        add(
            "401",
            error_answer(
                "`unauthorized`: the token is missing or wrong",
                Some((
                    "WWW-Authenticate",
                    "`Bearer realm=\"tflock\"`",
                    Type::String,
                )),
            ),
        );
    }
    add(
        "431",
        error_answer("`invalid_request`: the request head is too large", None),
    );
    add(
        "500",
        error_answer(
            "`internal`: the backend answered something impossible",
            None,
        ),
    );
    add(
        "503",
        error_answer(
            "`backend_unavailable`: the backend cannot be reached, its circuit breaker is \
             open, the call ran out of time, or the server is shutting down",
            Some((
                "Retry-After",
                "Seconds until a retry may succeed (the breaker's reset time while it is open)",
                Type::Integer,
            )),
        ),
    );
}
