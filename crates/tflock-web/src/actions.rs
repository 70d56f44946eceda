//! The page's `POST`s: login, logout, force unlock and cancelling a queue entry.
//!
//! Every action checks, in this order: an admin token is configured (else 403), the
//! browser does not say the post comes from another site (403), the caller is the
//! administrator by session cookie or basic auth (401), the form's CSRF token is the
//! caller's (403). Only then is the backend called. Success answers `303 See Other`
//! back to the lock's page, so reloading it does not post again.
//!
//! Nothing here logs a form or a header: the login form carries the admin token.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tflock_core::lease::constant_time_eq;
use tflock_core::{CancelError, UnlockError};

use crate::Web;
use crate::admin::{self, Caller, Via};
use crate::html::{esc, lock_href};
use crate::pages::{Ctx, ResourceParams, login_page};
use crate::view::bounded;

/// How long a wrong login waits before it is answered, to slow down guessing.
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(300);

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Checks an action's caller (see the module doc): the refusal page, or `None` when
/// the action may go ahead.
fn refusal(ctx: &Ctx, headers: &HeaderMap, csrf: Option<&str>, back: &str) -> Option<Response> {
    if ctx.web.admin().is_none() {
        return Some(ctx.actions_disabled());
    }
    if let Err(why) = admin::check_same_origin(headers) {
        return Some(ctx.message(
            StatusCode::FORBIDDEN,
            "Refused",
            &format!(
                "<p>{}: actions are only taken from this server's own pages.</p>",
                esc(why)
            ),
        ));
    }
    let Caller::Admin { csrf: want, .. } = &ctx.caller else {
        return Some(ctx.login_needed(back));
    };
    if !csrf.is_some_and(|c| constant_time_eq(c, want)) {
        return Some(ctx.message(
            StatusCode::FORBIDDEN,
            "Refused",
            &format!(
                r#"<p>The form's CSRF token is missing or out of date. <a href="{}">Reload the page</a> and try again.</p>"#,
                esc(back)
            ),
        ));
    }
    None
}

/// The resource an action form names, and the lock page to go back to, once the
/// form is valid and the caller may act (see [`refusal`]); else the answer to give.
fn admitted(
    ctx: &Ctx,
    headers: &HeaderMap,
    params: ResourceParams,
    csrf: Option<&str>,
) -> Result<(tflock_core::Resource, String), Box<Response>> {
    let resource = params.resource().map_err(|e| Box::new(bad_form(ctx, e)))?;
    let back = lock_href(&resource);
    match refusal(ctx, headers, csrf, &back) {
        Some(r) => Err(Box::new(r)),
        None => Ok((resource, back)),
    }
}

fn bad_form(ctx: &Ctx, e: impl std::fmt::Display) -> Response {
    ctx.message(
        StatusCode::BAD_REQUEST,
        "Bad form",
        &format!("<p>{}</p>", esc(&e.to_string())),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: Option<String>,
    next: Option<String>,
}

/// `POST /ui/login`: checks the admin token and sets the session cookie.
pub(crate) async fn login(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = Ctx::new(web, &headers);
    let Some(key) = ctx.web.admin() else {
        return ctx.actions_disabled();
    };
    if let Err(why) = admin::check_same_origin(&headers) {
        return ctx.message(
            StatusCode::FORBIDDEN,
            "Refused",
            &format!("<p>{}.</p>", esc(why)),
        );
    }
    // The body holds the token: never echo a parse error that could quote it.
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return bad_form(&ctx, "the login form could not be read");
    };
    let next = admin::safe_next(form.next.as_deref());
    if !admin::secure_context(&headers) {
        return login_page(
            &ctx,
            &next,
            StatusCode::BAD_REQUEST,
            Some(
                "This page is served over plain HTTP to a host that is not this machine, so \
                 browsers would drop the Secure session cookie (and the token would cross the \
                 network in clear). Serve the page over HTTPS (a TLS proxy that sets \
                 X-Forwarded-Proto: https), or use HTTP basic authentication.",
            ),
        );
    }
    let token = form.token.unwrap_or_default();
    if token.is_empty() || !key.matches(&token) {
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
        tracing::info!("web: admin login refused (wrong token)");
        return login_page(
            &ctx,
            &next,
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token."),
        );
    }
    tracing::info!("web: admin logged in");
    let mut r = see_other(&next);
    if let Ok(v) = HeaderValue::from_str(&admin::session_cookie(&key.new_session())) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /ui/logout`: ends the session.
pub(crate) async fn logout(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let ctx = Ctx::new(web, &headers);
    let form = serde_urlencoded::from_bytes::<CsrfForm>(&body).unwrap_or(CsrfForm { csrf: None });
    if let (
        Some(key),
        Caller::Admin {
            via: Via::Session { nonce },
            ..
        },
    ) = (ctx.web.admin(), &ctx.caller)
    {
        if let Some(r) = refusal(&ctx, &headers, form.csrf.as_deref(), "/") {
            return r;
        }
        key.revoke(nonce);
        tracing::info!("web: admin logged out");
    }
    let mut r = see_other("/");
    if let Ok(v) = HeaderValue::from_str(&admin::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /ui/login/basic`: asks the browser for basic credentials, then goes on.
pub(crate) async fn basic_login(
    State(web): State<Web>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    if ctx.web.admin().is_none() {
        return ctx.actions_disabled();
    }
    #[derive(Deserialize, Default)]
    struct Next {
        next: Option<String>,
    }
    let q: Next = serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let next = admin::safe_next(q.next.as_deref());
    if matches!(
        ctx.caller,
        Caller::Admin {
            via: Via::Basic,
            ..
        }
    ) {
        return see_other(&next);
    }
    let mut r = ctx.message(
        StatusCode::UNAUTHORIZED,
        "Admin login needed",
        r#"<p>Give any user name and the admin token as password, or use the <a href="/ui/login">login form</a>.</p>"#,
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&format!(
            r#"Basic realm="{}", charset="UTF-8""#,
            admin::BASIC_REALM
        ))
        .expect("a constant header value"),
    );
    r
}

#[derive(Deserialize)]
struct UnlockForm {
    repo: Option<String>,
    path: Option<String>,
    workspace: Option<String>,
    project_name: Option<String>,
    fencing_token: Option<String>,
    csrf: Option<String>,
}

/// `POST /ui/lock/unlock`: force unlock, if the lock is still the one confirmed.
pub(crate) async fn force_unlock(
    State(web): State<Web>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    let form = match serde_urlencoded::from_bytes::<UnlockForm>(&body) {
        Ok(f) => f,
        Err(e) => return bad_form(&ctx, e),
    };
    let params = ResourceParams {
        repo: form.repo,
        path: form.path,
        workspace: form.workspace,
        project_name: form.project_name,
    };
    let (resource, back) = match admitted(&ctx, &headers, params, form.csrf.as_deref()) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let key = resource.lock_key();
    // The confirmation named one lease (by its fencing token): if the lock changed
    // hands since, the administrator has not seen the new holder, so do not end it.
    // The token travels with the release, so the backend checks it in the same atomic
    // step as the release: a hand-off at any moment after the page was read is
    // refused (`UnlockError::Changed`), never a release of the new holder.
    let Some(confirmed) = form
        .fencing_token
        .as_deref()
        .and_then(|t| t.parse::<u64>().ok())
    else {
        return ctx.message(
            StatusCode::BAD_REQUEST,
            "Which lease?",
            &format!(
                r#"<p>The form does not name the fencing token of the lease to unlock. <a href="{}">Back to the lock</a>.</p>"#,
                esc(&back)
            ),
        );
    };
    let confirmed = tflock_core::FencingToken(confirmed);
    match bounded(ctx.web.backend().force_unlock(&resource, Some(confirmed)))
    .await
    {
        Ok(done) => {
            tracing::info!(
                lock = %key,
                released = %done.released.owner.owner,
                fencing_token = done.released.fencing_token.0,
                granted_to = done.granted_to.as_ref().map(|g| g.entry.owner.owner.as_str()),
                "web: force unlock by admin"
            );
            see_other(&format!("{back}&done=unlocked"))
        }
        Err(e) if e.code == tflock_core::ErrorCode::NotOwner => {
            let now = match bounded(ctx.web.backend().get_lock(&resource)).await {
                Ok(Some(l)) => format!(
                    " It is now held by <strong>{}</strong> (fencing token {}).",
                    esc(&l.owner.owner),
                    l.fencing_token
                ),
                _ => String::new(),
            };
            ctx.message(
                StatusCode::CONFLICT,
                "The lock changed hands",
                &format!(
                    r#"<p><code>{}</code> is no longer held under the lease you confirmed (fencing token {}); nothing was unlocked.{} <a href="{}">Look again</a> before unlocking.</p>"#,
                    esc(&key),
                    confirmed,
                    now,
                    esc(&back)
                ),
            )
        }
        Err(e) if e.code == UnlockError::NotFound.code() => ctx.message(
            StatusCode::CONFLICT,
            "Nothing to unlock",
            &format!(
                r#"<p>Nobody holds <code>{}</code> any more. <a href="{}">Back to the lock</a>.</p>"#,
                esc(&key),
                esc(&back)
            ),
        ),
        Err(e) => unavailable(&ctx, &e),
    }
}

fn unavailable(ctx: &Ctx, e: &tflock_core::Error) -> Response {
    ctx.message(
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "The backend refused",
        &format!("<p>{}</p>", esc(&e.to_string())),
    )
}

#[derive(Deserialize)]
struct CancelForm {
    entry_id: Option<String>,
    repo: Option<String>,
    path: Option<String>,
    workspace: Option<String>,
    project_name: Option<String>,
    csrf: Option<String>,
}

/// `POST /ui/queue/cancel`: removes a queue entry.
pub(crate) async fn cancel_entry(
    State(web): State<Web>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    let form = match serde_urlencoded::from_bytes::<CancelForm>(&body) {
        Ok(f) => f,
        Err(e) => return bad_form(&ctx, e),
    };
    let params = ResourceParams {
        repo: form.repo,
        path: form.path,
        workspace: form.workspace,
        project_name: form.project_name,
    };
    let (resource, back) = match admitted(&ctx, &headers, params, form.csrf.as_deref()) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let entry_id = form.entry_id.unwrap_or_default();
    // The entry must be in this lock's queue: the form names both, and the page it
    // sends the administrator back to must be the one the entry was on. The resource
    // travels with the cancel, so the backend checks that in the same atomic step.
    match bounded(
        ctx.web
            .backend()
            .cancel_queue_entry(&entry_id, Some(&resource)),
    )
    .await
    {
        Ok(cancelled) => {
            tracing::info!(
                lock = %resource.lock_key(),
                owner = %cancelled.entry.owner.owner,
                "web: queue entry cancelled by admin"
            );
            see_other(&format!("{back}&done=cancelled"))
        }
        Err(e) if e.code == CancelError::NotFound.code() => gone(&ctx, &resource, &back),
        Err(e) => unavailable(&ctx, &e),
    }
}

fn gone(ctx: &Ctx, resource: &tflock_core::Resource, back: &str) -> Response {
    ctx.message(
        StatusCode::NOT_FOUND,
        "No such queue entry",
        &format!(
            r#"<p>The queue of <code>{}</code> has no such entry: it was granted the lock or left. <a href="{}">Back to the lock</a>.</p>"#,
            esc(&resource.lock_key()),
            esc(back)
        ),
    )
}
