//! tflock's web page: locks, queues and health at a glance, with admin unlock.
//!
//! [`router`] serves server-rendered HTML that reads well without JavaScript. A small
//! hand-written script (`assets/app.js`) listens to the API server's Server-Sent Events
//! (`GET /api/events`) and, on each event, fetches the same page again and swaps in
//! its live parts, so the page follows the locks without a reload. Every asset is
//! compiled into the binary: nothing is downloaded at run time or at build time.
//!
//! Routes (all `GET` pages answer HTML, all `POST`s are form posts):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /`, `GET /ui` | health panel, held locks with a filter box, recent activity |
//! | `GET /ui/lock?repo=&path=&workspace=&project_name=` | one lock: holder, queue in grant order, recent events |
//! | `GET /ui/lock/unlock?...`, `POST /ui/lock/unlock` | force unlock: confirmation page, then the action (admin) |
//! | `GET /ui/queue/cancel?entry_id=&...`, `POST /ui/queue/cancel` | cancel a queue entry: confirmation, action (admin) |
//! | `GET /ui/login`, `POST /ui/login`, `POST /ui/logout` | admin session cookie |
//! | `GET /ui/login/basic` | asks the browser for HTTP basic credentials (admin token as password) |
//! | `GET /ui/assets/{name}` | the stylesheet, the script and the icon |
//!
//! # Layout
//!
//! - [`admin`]: who is calling: the admin session cookie (HMAC-signed, so it works on
//!   every replica that shares the admin token), basic auth, CSRF tokens and the
//!   same-origin check for posts.
//! - `view`: reads what a page shows from the backend (every call bounded), and the
//!   health panel's figures.
//! - `pages`: the HTML of each page; `html`: escaping and formatting helpers.
//! - `actions`: the `POST` handlers (login, logout, force unlock, cancel).
//! - `recent`: the recent events per lock, fed by the backend's event stream.
//! - `assets`: the compiled-in stylesheet, script and icon.

pub mod admin;

mod actions;
mod assets;
mod html;
mod pages;
mod recent;
mod view;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tflock_core::SharedBackend;
use tflock_health::Health;

use crate::admin::AdminKey;
use crate::recent::RecentEvents;

/// Largest form body a page accepts: the biggest form (a resource's four parts, an
/// entry id and a CSRF token) is well under 2 KiB.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The web page's routes over `backend`.
///
/// - `health`: the backend's [`Health`] when the server runs one (a
///   [`tflock_health::GuardedBackend`]); the health panel then shows its breaker state
///   and its latency and throughput figures. Without it the panel shows what the
///   backend's own health check says, and the page's script reads the latency figures
///   from the API server's `/api/health/locking`.
/// - `admin_token`: the admin token. Without one the page offers no actions and
///   refuses every action and login.
///
/// The router has no fallback and no state of its own left open (`S` is whatever the
/// router it is merged into uses), so it can be merged into the API server's router.
pub fn router<S>(
    backend: SharedBackend,
    health: Option<Arc<Health>>,
    admin_token: Option<&str>,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let web = Web::new(backend, health, admin_token);
    Router::new()
        .route("/", get(pages::index))
        .route("/ui", get(pages::index))
        .route("/ui/", get(pages::index))
        .route("/ui/lock", get(pages::lock))
        .route(
            "/ui/lock/unlock",
            get(pages::confirm_unlock).post(actions::force_unlock),
        )
        .route(
            "/ui/queue/cancel",
            get(pages::confirm_cancel).post(actions::cancel_entry),
        )
        .route("/ui/login", get(pages::login).post(actions::login))
        .route("/ui/login/basic", get(actions::basic_login))
        .route("/ui/logout", axum::routing::post(actions::logout))
        .route("/ui/assets/{name}", get(assets::serve))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::from_fn(security_headers))
        .with_state(web)
}

/// The web page's shared state; cheap to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct Web {
    inner: Arc<Inner>,
}

struct Inner {
    backend: SharedBackend,
    health: Option<Arc<Health>>,
    /// `None`: no admin token configured, so no actions and no login.
    admin: Option<AdminKey>,
    recent: RecentEvents,
}

impl Web {
    fn new(backend: SharedBackend, health: Option<Arc<Health>>, admin_token: Option<&str>) -> Self {
        // Subscribe now, so the recent-events list starts with the router and not with
        // the first page view.
        let recent = RecentEvents::new(backend.subscribe());
        Web {
            inner: Arc::new(Inner {
                backend,
                health,
                admin: admin_token.and_then(AdminKey::new),
                recent,
            }),
        }
    }

    pub(crate) fn backend(&self) -> &SharedBackend {
        &self.inner.backend
    }

    pub(crate) fn health(&self) -> Option<&Arc<Health>> {
        self.inner.health.as_ref()
    }

    pub(crate) fn admin(&self) -> Option<&AdminKey> {
        self.inner.admin.as_ref()
    }

    pub(crate) fn recent(&self) -> &RecentEvents {
        &self.inner.recent
    }
}

impl fmt::Debug for Web {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Web")
            .field("backend", &self.inner.backend.name())
            .field("health", &self.inner.health.is_some())
            .field("admin", &self.inner.admin)
            .finish_non_exhaustive()
    }
}

/// The page's Content Security Policy: only our own script, styles and images, no
/// inline code, no framing (the confirmation buttons must not be clickjacked), forms
/// post only to us.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every answer of the page's routes.
async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}
