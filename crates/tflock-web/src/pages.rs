//! The pages: the overview, one lock, the two confirmation pages and the login form.
//!
//! Each page is whole HTML that reads without JavaScript. The parts the script swaps
//! in when an event arrives are marked `data-live="..."`; ids and `data-*`
//! attributes name what tests and the script look for.

use std::fmt::Write;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tflock_core::{EventKind, Lock, LockEvent, QueueEntryView, QueueStatus, Resource, Timestamp};

use crate::Web;
use crate::admin::{self, Caller};
use crate::html::{
    Frame, Rel, absolute, age, csrf_field, esc, latency, lock_href, page, resource_fields,
    resource_query, safe_link, time_rel,
};
use crate::view::{self, HealthView, LockRow, Overview};

/// An HTML answer that no cache keeps (pages differ by who asks and change all the
/// time).
pub fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// What every page needs to know about the request.
pub struct Ctx {
    pub web: Web,
    pub caller: Caller,
    pub now: Timestamp,
}

impl Ctx {
    pub fn new(web: Web, headers: &HeaderMap) -> Self {
        web.recent().ensure_started();
        let caller = admin::caller(web.admin(), headers);
        Ctx {
            web,
            caller,
            now: view::now(),
        }
    }

    fn frame<'a>(&'a self, title: &'a str, here: &'a str, body_attrs: String) -> Frame<'a> {
        Frame {
            title,
            caller: &self.caller,
            admin_enabled: self.web.admin().is_some(),
            here,
            body_attrs,
            now: self.now,
        }
    }

    /// A page with a heading and a message (`message` is HTML, already escaped).
    pub fn message(&self, status: StatusCode, title: &str, message: &str) -> Response {
        let main = format!(
            r#"<h1>{}</h1><div class="panel message" id="message">{message}</div><p><a href="/">All locks</a></p>"#,
            esc(title)
        );
        html(status, page(&self.frame(title, "/", String::new()), &main))
    }

    /// 401: the action needs the administrator.
    pub fn login_needed(&self, next: &str) -> Response {
        let mut r = self.message(
            StatusCode::UNAUTHORIZED,
            "Admin login needed",
            &format!(
                r#"<p>Only the administrator may do this. <a href="/ui/login?{}">Log in with the admin token</a> first.</p>"#,
                esc(&serde_urlencoded::to_string([("next", next)]).unwrap_or_default())
            ),
        );
        // A challenge browsers do not answer with a password dialog: the way in is
        // the login form (or /ui/login/basic, on purpose).
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Session realm="tflock admin""#),
        );
        r
    }

    /// 403: no admin token is configured.
    pub fn actions_disabled(&self) -> Response {
        self.message(
            StatusCode::FORBIDDEN,
            "Actions are disabled",
            "<p>The server has no admin token configured, so the page offers no actions \
             and refuses them. Set <code>ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN</code> \
             to enable force unlock and queue cancellation.</p>",
        )
    }
}

#[derive(Debug, Default, Deserialize)]
struct IndexQuery {
    q: Option<String>,
}

/// `GET /`: health, the held locks with a filter, recent activity.
pub(crate) async fn index(
    State(web): State<Web>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    let q: IndexQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let filter = q.q.unwrap_or_default();
    let (overview, health) =
        tokio::join!(view::overview(ctx.web.backend()), view::health(&ctx.web));
    let mut main = String::new();
    main.push_str(r#"<h1 class="sr-only">tflock locks</h1>"#);
    health_panel(&mut main, &health);
    let status = match &overview {
        Ok(o) => {
            locks_section(&mut main, o, &filter, ctx.now);
            StatusCode::OK
        }
        Err(e) => {
            let _ = write!(
                main,
                r#"<section class="panel" aria-labelledby="locks-h"><h2 id="locks-h">Held locks</h2><div data-live="locks"><p class="error" role="alert">The locks could not be read: {}</p></div></section>"#,
                esc(&e.to_string())
            );
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    activity_section(&mut main, &ctx);
    let body = page(
        &ctx.frame("Locks", "/", r#"data-page="index""#.to_string()),
        &main,
    );
    html(status, body)
}

fn health_panel(out: &mut String, h: &HealthView) {
    let (badge, label) = if h.healthy {
        ("ok", "healthy")
    } else {
        ("bad", "unhealthy")
    };
    let perf_source = if h.performance.is_some() {
        "health"
    } else {
        "api"
    };
    let dash = r#"<span aria-hidden="true">—</span><span class="sr-only">not known</span>"#;
    let (p95, p99, ops) = match h.performance {
        Some(p) => (
            latency(p.p95),
            latency(p.p99),
            format!("{:.1}", p.operations_per_second),
        ),
        None => (dash.to_string(), dash.to_string(), dash.to_string()),
    };
    let count = |c: Option<u64>| c.map_or(dash.to_string(), |n| n.to_string());
    let breaker_class = match h.breaker.as_str() {
        "closed" => "ok",
        "open" => "bad",
        "half_open" => "warn",
        _ => "plain",
    };
    let _ = write!(
        out,
        concat!(
            r#"<section class="panel health" aria-labelledby="health-h" data-live="health" data-perf="{perf}">"#,
            r#"<h2 id="health-h">Health</h2><dl class="stats">"#,
            r#"<div><dt>Backend</dt><dd data-field="backend">{backend}</dd></div>"#,
            r#"<div><dt>Status</dt><dd data-field="status"><span class="badge {badge}">{label}</span></dd></div>"#,
            r#"<div><dt>Circuit breaker</dt><dd data-field="breaker"><span class="badge {bclass}">{breaker}</span></dd></div>"#,
            r#"<div><dt>p95 latency</dt><dd data-field="p95">{p95}</dd></div>"#,
            r#"<div><dt>p99 latency</dt><dd data-field="p99">{p99}</dd></div>"#,
            r#"<div><dt>Operations/s</dt><dd data-field="ops">{ops}</dd></div>"#,
            r#"<div><dt>Active locks</dt><dd data-field="active-locks">{active}</dd></div>"#,
            r#"<div><dt>Queue depth</dt><dd data-field="queue-depth">{depth}</dd></div>"#,
            "</dl>"
        ),
        perf = perf_source,
        backend = esc(h.backend),
        badge = badge,
        label = label,
        bclass = breaker_class,
        breaker = match h.breaker.as_str() {
            "none" => "not used".to_string(),
            b => esc(&b.replace('_', "-")).to_string(),
        },
        p95 = p95,
        p99 = p99,
        ops = ops,
        active = count(h.active_locks),
        depth = count(h.queue_depth),
    );
    if let Some(p) = &h.problem {
        let _ = write!(out, r#"<p class="error" role="alert">{}</p>"#, esc(p));
    }
    if h.performance.is_none() {
        out.push_str(
            r#"<p class="note">Latency and throughput: this server's operations over the last minute, from <a href="/api/health/locking">/api/health/locking</a>.</p>"#,
        );
    }
    out.push_str("</section>");
}

/// The lowercased text the filter box matches against (the script matches the same).
fn search_text(lock: &Lock) -> String {
    let mut s = format!(
        "{} {} {} {} {} {}",
        lock.resource.repo,
        lock.resource.path,
        lock.resource.workspace,
        lock.resource.project_name,
        lock.owner.owner,
        lock.owner.username().unwrap_or("")
    );
    if let Some(p) = &lock.owner.pull {
        let _ = write!(s, " #{} {}", p.num, p.author);
    }
    s.to_lowercase()
}

fn locks_section(out: &mut String, o: &Overview, filter: &str, now: Timestamp) {
    let needle = filter.trim().to_lowercase();
    let shown = o
        .rows
        .iter()
        .filter(|r| search_text(&r.lock).contains(&needle))
        .count();
    let _ = write!(
        out,
        concat!(
            r#"<section class="panel" aria-labelledby="locks-h">"#,
            r#"<h2 id="locks-h">Held locks</h2>"#,
            r#"<form class="filter" role="search" method="get" action="/">"#,
            r#"<label for="filter">Filter</label>"#,
            r#"<input id="filter" name="q" type="search" value="{q}" autocomplete="off" spellcheck="false" "#,
            r#"placeholder="repository, path, workspace, owner, user, #pull" aria-describedby="filter-count">"#,
            r#"<button type="submit">Apply</button></form>"#,
            r#"<p id="filter-count" class="muted" aria-live="polite">{count}</p>"#,
            r#"<div data-live="locks">"#,
        ),
        q = esc(filter),
        count = esc(&count_text(shown, o.rows.len())),
    );
    if o.truncated {
        let _ = write!(
            out,
            r#"<p class="note">Showing the first {} locks; use the filter or the API for the rest.</p>"#,
            view::MAX_ROWS
        );
    }
    out.push_str(concat!(
        r#"<div class="table-wrap" role="region" aria-labelledby="locks-h" tabindex="0">"#,
        r#"<table class="locks" id="locks"><caption class="sr-only">Held locks by repository, path, workspace and project</caption>"#,
        "<thead><tr>",
        r#"<th scope="col">Repository</th><th scope="col">Path</th><th scope="col">Workspace</th>"#,
        r#"<th scope="col">Project</th><th scope="col">Owner</th><th scope="col">Pull request</th>"#,
        r#"<th scope="col">User</th><th scope="col">Held since</th><th scope="col">Expires in</th>"#,
        r#"<th scope="col" class="num">Fencing token</th><th scope="col" class="num">Queue</th>"#,
        "</tr></thead><tbody>"
    ));
    for row in &o.rows {
        lock_row(out, row, &needle, now);
    }
    let _ = write!(
        out,
        r#"<tr class="empty" data-empty="none"{}><td colspan="11">No locks are held.</td></tr>"#,
        if o.rows.is_empty() { "" } else { " hidden" }
    );
    let _ = write!(
        out,
        r#"<tr class="empty" data-empty="filtered"{}><td colspan="11">No lock matches the filter.</td></tr>"#,
        if !o.rows.is_empty() && shown == 0 {
            ""
        } else {
            " hidden"
        }
    );
    out.push_str("</tbody></table></div></div></section>");
}

fn count_text(shown: usize, total: usize) -> String {
    let noun = if total == 1 { "lock" } else { "locks" };
    if shown == total {
        format!("{total} {noun} held.")
    } else {
        format!("Showing {shown} of {total} {noun}.")
    }
}

fn dash() -> &'static str {
    r#"<span class="muted" aria-hidden="true">—</span><span class="sr-only">none</span>"#
}

fn pull_cell(lock_owner: &tflock_core::Owner) -> String {
    match &lock_owner.pull {
        Some(p) => match safe_link(&p.url) {
            Some(url) => format!(
                r#"<a href="{}" rel="noreferrer noopener" target="_blank">#{}</a>"#,
                esc(url),
                p.num
            ),
            None => format!("#{}", p.num),
        },
        None => dash().to_string(),
    }
}

fn user_cell(o: &tflock_core::Owner) -> String {
    o.username()
        .filter(|u| !u.is_empty())
        .map_or_else(|| dash().to_string(), |u| esc(u).to_string())
}

fn expires_cell(lock: &Lock, now: Timestamp) -> String {
    if lock.claim_pending {
        format!(
            r#"<span class="badge warn">claim pending</span> {}"#,
            time_rel(lock.expires_at, now, Rel::Until)
        )
    } else {
        time_rel(lock.expires_at, now, Rel::Until)
    }
}

fn lock_row(out: &mut String, row: &LockRow, needle: &str, now: Timestamp) {
    let l = &row.lock;
    let search = search_text(l);
    let hidden = if search.contains(needle) {
        ""
    } else {
        " hidden"
    };
    let queue = match row.queue_len {
        Some(0) => "0".to_string(),
        Some(n) => format!(r#"<span class="badge warn">{n}</span>"#),
        None => {
            r#"<span class="muted" aria-hidden="true">?</span><span class="sr-only">unknown</span>"#
                .to_string()
        }
    };
    let project = if l.resource.project_name.is_empty() {
        dash().to_string()
    } else {
        esc(&l.resource.project_name).to_string()
    };
    let _ = write!(
        out,
        concat!(
            r#"<tr data-key="{key}" data-search="{search}"{hidden}>"#,
            r#"<th scope="row"><a href="{href}" aria-label="{key}">{repo}</a></th>"#,
            "<td>{path}</td><td>{ws}</td><td>{project}</td>",
            r#"<td data-field="owner">{owner}</td><td>{pull}</td><td>{user}</td>"#,
            "<td>{since}</td><td>{expires}</td>",
            r#"<td class="num" data-field="fencing-token">{token}</td><td class="num" data-field="queue">{queue}</td></tr>"#
        ),
        key = esc(&l.key),
        search = esc(&search),
        hidden = hidden,
        href = esc(&lock_href(&l.resource)),
        repo = esc(&l.resource.repo),
        path = esc(&l.resource.path),
        ws = esc(&l.resource.workspace),
        project = project,
        owner = esc(&l.owner.owner),
        pull = pull_cell(&l.owner),
        user = user_cell(&l.owner),
        since = time_rel(l.acquired_at, now, Rel::Ago),
        expires = expires_cell(l, now),
        token = l.fencing_token,
        queue = queue,
    );
}

fn event_words(kind: EventKind) -> &'static str {
    match kind {
        EventKind::LockAcquired => "acquired the lock",
        EventKind::LockReleased => "released the lock",
        EventKind::LockExpired => "lost the lock (expired)",
        EventKind::LockTransferred => "was given the lock (transfer)",
        EventKind::QueueEntered => "joined the queue",
        EventKind::QueueLeft => "left the queue",
        EventKind::QueueGranted => "was granted the lock from the queue",
        EventKind::StoreDataLost => "the store lost its data: nothing is granted during lock_delay",
    }
}

fn activity_section(out: &mut String, ctx: &Ctx) {
    let (events, missed) = ctx.web.recent().latest();
    out.push_str(concat!(
        r#"<section class="panel" aria-labelledby="activity-h" data-live="activity">"#,
        r#"<h2 id="activity-h">Recent activity</h2>"#
    ));
    if events.is_empty() {
        out.push_str(r#"<p class="muted">No events since this server started.</p>"#);
    } else {
        out.push_str(r#"<ol class="events">"#);
        for ev in &events {
            let _ = write!(
                out,
                r#"<li>{} <a href="{}">{}</a>: <strong>{}</strong> {}{}</li>"#,
                time_rel(ev.at, ctx.now, Rel::Ago),
                esc(&lock_href(&ev.resource)),
                esc(&ev.key),
                esc(&ev.owner),
                event_words(ev.event),
                ev.fencing_token
                    .map(|t| format!(" (fencing token {t})"))
                    .unwrap_or_default()
            );
        }
        out.push_str("</ol>");
    }
    if missed > 0 {
        let _ = write!(
            out,
            r#"<p class="note">{missed} events were missed while the server was busy.</p>"#
        );
    }
    out.push_str("</section>");
}

/// The four parts of a resource, from a query or a form.
#[derive(Debug, Default, Deserialize)]
pub struct ResourceParams {
    pub repo: Option<String>,
    pub path: Option<String>,
    pub workspace: Option<String>,
    pub project_name: Option<String>,
}

impl ResourceParams {
    /// The resource, validated; `path` defaults to `.`, `project_name` to empty.
    pub fn resource(&self) -> Result<Resource, String> {
        let repo = self.repo.clone().unwrap_or_default();
        let workspace = self.workspace.clone().unwrap_or_default();
        if repo.is_empty() {
            return Err("repo: give the repository (owner/name)".to_string());
        }
        if workspace.is_empty() {
            return Err("workspace: give the workspace".to_string());
        }
        Resource::new(
            repo,
            self.path.clone().unwrap_or_default(),
            workspace,
            self.project_name.clone().unwrap_or_default(),
        )
        .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Default, Deserialize)]
struct LockQuery {
    #[serde(flatten)]
    resource: ResourceParams,
    done: Option<String>,
}

/// `GET /ui/lock`: holder, queue in grant order, recent events.
pub(crate) async fn lock(
    State(web): State<Web>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    let q: LockQuery = match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => {
            return ctx.message(
                StatusCode::BAD_REQUEST,
                "Not a lock",
                &format!("<p>{}</p>", esc(&e.to_string())),
            );
        }
    };
    let resource = match q.resource.resource() {
        Ok(r) => r,
        Err(e) => {
            return ctx.message(
                StatusCode::BAD_REQUEST,
                "Not a lock",
                &format!("<p>The address does not name a lock: {}.</p>", esc(&e)),
            );
        }
    };
    let here = lock_href(&resource);
    let key = resource.lock_key();
    let mut main = String::new();
    let _ = write!(
        main,
        concat!(
            r#"<nav class="crumbs" aria-label="Breadcrumb"><a href="/">All locks</a></nav>"#,
            r#"<h1>Lock <code class="key">{key}</code></h1>"#,
        ),
        key = esc(&key)
    );
    match q.done.as_deref() {
        Some("unlocked") => main.push_str(
            r#"<p class="flash" role="status" id="flash">Force unlock done. The lock went to the first in line, if anybody was waiting.</p>"#,
        ),
        Some("cancelled") => main.push_str(
            r#"<p class="flash" role="status" id="flash">The queue entry was cancelled.</p>"#,
        ),
        _ => {}
    }
    let _ = write!(
        main,
        concat!(
            r#"<dl class="facts inline resource">"#,
            "<div><dt>Repository</dt><dd>{repo}</dd></div>",
            "<div><dt>Path</dt><dd>{path}</dd></div>",
            "<div><dt>Workspace</dt><dd>{ws}</dd></div>",
            "<div><dt>Project</dt><dd>{project}</dd></div></dl>"
        ),
        repo = esc(&resource.repo),
        path = esc(&resource.path),
        ws = esc(&resource.workspace),
        project = if resource.project_name.is_empty() {
            dash().to_string()
        } else {
            esc(&resource.project_name).to_string()
        },
    );
    let status = match view::queue(ctx.web.backend(), &resource).await {
        Ok(qs) => {
            main.push_str(r#"<div data-live="lock">"#);
            holder_section(&mut main, &ctx, &qs, &here);
            queue_section(&mut main, &ctx, &qs);
            main.push_str("</div>");
            StatusCode::OK
        }
        Err(e) => {
            let _ = write!(
                main,
                r#"<div data-live="lock"><p class="error" role="alert">This lock could not be read: {}</p></div>"#,
                esc(&e.to_string())
            );
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    events_section(&mut main, &ctx, &ctx.web.recent().of(&resource));
    let attrs = format!(r#"data-page="lock" data-key="{}""#, esc(&key));
    html(status, page(&ctx.frame(&key, &here, attrs), &main))
}

fn owner_facts(out: &mut String, o: &tflock_core::Owner) {
    let _ = write!(
        out,
        r#"<div><dt>Owner</dt><dd data-field="owner">{}</dd></div>"#,
        esc(&o.owner)
    );
    if let Some(u) = &o.user {
        let teams = if u.teams.is_empty() {
            String::new()
        } else {
            format!(
                r#" <span class="muted">(teams: {})</span>"#,
                esc(&u.teams.join(", "))
            )
        };
        let _ = write!(
            out,
            r#"<div><dt>User</dt><dd data-field="user">{}{teams}</dd></div>"#,
            esc(&u.username)
        );
    }
    if let Some(p) = &o.pull {
        let mut detail = Vec::new();
        if !p.author.is_empty() {
            detail.push(format!("by {}", esc(&p.author)));
        }
        if !p.head_branch.is_empty() {
            let base = if p.base_branch.is_empty() {
                String::new()
            } else {
                format!(" → {}", esc(&p.base_branch))
            };
            detail.push(format!("<code>{}</code>{base}", esc(&p.head_branch)));
        }
        if !p.head_commit.is_empty() {
            let short: String = p.head_commit.chars().take(10).collect();
            detail.push(format!("at <code>{}</code>", esc(&short)));
        }
        let _ = write!(
            out,
            r#"<div><dt>Pull request</dt><dd data-field="pull">{} {}</dd></div>"#,
            pull_cell(o),
            detail.join(", ")
        );
    }
    if !o.note.is_empty() {
        let _ = write!(out, "<div><dt>Note</dt><dd>{}</dd></div>", esc(&o.note));
    }
}

fn holder_section(out: &mut String, ctx: &Ctx, qs: &QueueStatus, here: &str) {
    out.push_str(
        r#"<section class="panel" aria-labelledby="holder-h"><h2 id="holder-h">Holder</h2>"#,
    );
    let Some(l) = &qs.lock else {
        out.push_str(
            r#"<p id="holder-free" class="free"><span class="badge ok">free</span> Nobody holds this lock.</p></section>"#,
        );
        return;
    };
    let _ = write!(
        out,
        r#"<dl class="facts" id="holder" data-owner="{}" data-token="{}">"#,
        esc(&l.owner.owner),
        l.fencing_token
    );
    owner_facts(out, &l.owner);
    let expires = if l.claim_pending {
        format!(
            r#"<span class="badge warn">claim pending</span> the waiter's server has {} to confirm the grant"#,
            time_rel(l.expires_at, ctx.now, Rel::Until)
        )
    } else {
        format!(
            "in {} <span class=\"muted\">({})</span>",
            time_rel(l.expires_at, ctx.now, Rel::Until),
            esc(&absolute(l.expires_at))
        )
    };
    let _ = write!(
        out,
        concat!(
            "<div><dt>Priority</dt><dd>{priority}</dd></div>",
            r#"<div><dt>Fencing token</dt><dd data-field="fencing-token">{token}</dd></div>"#,
            r#"<div><dt>Held since</dt><dd>{since_abs} <span class="muted">({since})</span></dd></div>"#,
            "<div><dt>Expires</dt><dd>{expires}</dd></div>",
            "<div><dt>TTL</dt><dd>{ttl}</dd></div></dl>"
        ),
        priority = l.priority,
        token = l.fencing_token,
        since_abs = esc(&absolute(l.acquired_at)),
        since = time_rel(l.acquired_at, ctx.now, Rel::Ago),
        expires = expires,
        ttl = esc(&age(l.ttl)),
    );
    if ctx.caller.is_admin() {
        let _ = write!(
            out,
            concat!(
                r#"<form class="actions" method="get" action="/ui/lock/unlock">{fields}"#,
                r#"<button type="submit" class="danger" id="force-unlock">Force unlock…</button></form>"#
            ),
            fields = resource_fields(&qs.resource)
        );
    } else {
        actions_hint(out, ctx, here);
    }
    out.push_str("</section>");
}

fn actions_hint(out: &mut String, ctx: &Ctx, here: &str) {
    if ctx.web.admin().is_some() {
        let _ = write!(
            out,
            r#"<p class="muted" id="actions-hint"><a href="/ui/login?{}">Log in as admin</a> to force unlock or cancel queue entries.</p>"#,
            esc(&serde_urlencoded::to_string([("next", here)]).unwrap_or_default())
        );
    } else {
        out.push_str(
            r#"<p class="muted" id="actions-hint">Actions are off: the server has no admin token.</p>"#,
        );
    }
}

fn queue_section(out: &mut String, ctx: &Ctx, qs: &QueueStatus) {
    let n = qs.entries.len();
    let _ = write!(
        out,
        concat!(
            r#"<section class="panel" aria-labelledby="queue-h">"#,
            r#"<h2 id="queue-h">Queue <span class="count" data-field="queue-length">({n} waiting)</span></h2>"#
        ),
        n = n
    );
    if qs.entries.is_empty() {
        out.push_str(r#"<p class="muted" id="queue-empty">Nobody is waiting.</p></section>"#);
        return;
    }
    let admin = ctx.caller.is_admin();
    let _ = write!(
        out,
        concat!(
            r#"<p class="muted">In grant order: highest effective priority first, then first come, first served. "#,
            r#"A long wait raises an entry's effective priority.</p>"#,
            r#"<div class="table-wrap" role="region" aria-labelledby="queue-h" tabindex="0">"#,
            r#"<table class="queue" id="queue"><caption class="sr-only">Queue in grant order</caption><thead><tr>"#,
            r#"<th scope="col" class="num">#</th><th scope="col">Owner</th><th scope="col">User</th>"#,
            r#"<th scope="col">Pull request</th><th scope="col">Kind</th><th scope="col">Priority</th>"#,
            r#"<th scope="col">Effective priority</th><th scope="col">Waited</th><th scope="col">Deadline in</th>{action}"#,
            "</tr></thead><tbody>"
        ),
        action = if admin {
            r#"<th scope="col"><span class="sr-only">Action</span></th>"#
        } else {
            ""
        }
    );
    for e in &qs.entries {
        queue_row(out, ctx, qs, e, admin);
    }
    out.push_str("</tbody></table></div></section>");
}

fn queue_row(out: &mut String, ctx: &Ctx, qs: &QueueStatus, e: &QueueEntryView, admin: bool) {
    let entry = &e.entry;
    let boosted = if e.effective_priority > entry.priority {
        r#" <span class="badge warn">boosted</span>"#
    } else {
        ""
    };
    let kind = match entry.kind {
        tflock_core::EntryKind::Waiter => "waiter",
        tflock_core::EntryKind::Reservation => "reservation",
    };
    let action = if admin {
        format!(
            r#"<td><a class="button small" id="cancel-{id}" data-owner="{owner}" href="/ui/queue/cancel?{q}">Cancel…<span class="sr-only"> the entry of {owner}</span></a></td>"#,
            id = esc(&entry.entry_id),
            owner = esc(&entry.owner.owner),
            q = esc(&format!(
                "{}&{}",
                serde_urlencoded::to_string([("entry_id", entry.entry_id.as_str())])
                    .unwrap_or_default(),
                resource_query(&qs.resource)
            )),
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        concat!(
            r#"<tr data-owner="{owner}" data-position="{pos}"><td class="num">{pos}</td>"#,
            r#"<th scope="row">{owner}</th><td>{user}</td><td>{pull}</td><td>{kind}</td>"#,
            "<td>{prio}</td><td>{eff}{boosted}</td><td>{waited}</td><td>{deadline}</td>{action}</tr>"
        ),
        owner = esc(&entry.owner.owner),
        pos = e.position,
        user = user_cell(&entry.owner),
        pull = pull_cell(&entry.owner),
        kind = kind,
        prio = entry.priority,
        eff = e.effective_priority,
        boosted = boosted,
        waited = time_rel(entry.enqueued_at, ctx.now, Rel::Since),
        deadline = time_rel(entry.deadline, ctx.now, Rel::Until),
        action = action,
    );
}

fn events_section(out: &mut String, ctx: &Ctx, events: &[LockEvent]) {
    out.push_str(concat!(
        r#"<section class="panel" aria-labelledby="events-h" data-live="events">"#,
        r#"<h2 id="events-h">Recent events</h2>"#
    ));
    if events.is_empty() {
        out.push_str(
            r#"<p class="muted">No events for this lock since this server started.</p></section>"#,
        );
        return;
    }
    out.push_str(concat!(
        r#"<div class="table-wrap" role="region" aria-labelledby="events-h" tabindex="0">"#,
        r#"<table class="events" id="events"><caption class="sr-only">Recent events, newest first</caption>"#,
        r#"<thead><tr><th scope="col">When</th><th scope="col">Event</th><th scope="col">Owner</th>"#,
        r#"<th scope="col">What</th><th scope="col" class="num">Fencing token</th></tr></thead><tbody>"#
    ));
    for ev in events {
        let _ = write!(
            out,
            concat!(
                r#"<tr data-event="{name}"><td>{when}</td><td><code>{name}</code></td>"#,
                r#"<td>{owner}</td><td>{words}</td><td class="num">{token}</td></tr>"#
            ),
            name = ev.event.as_str(),
            when = time_rel(ev.at, ctx.now, Rel::Ago),
            owner = esc(&ev.owner),
            words = event_words(ev.event),
            token = ev
                .fencing_token
                .map_or_else(|| dash().to_string(), |t| t.to_string()),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

/// `GET /ui/lock/unlock`: what a force unlock would do, and the button that does it.
pub(crate) async fn confirm_unlock(
    State(web): State<Web>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    let params: ResourceParams =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let resource = match params.resource() {
        Ok(r) => r,
        Err(e) => {
            return ctx.message(
                StatusCode::BAD_REQUEST,
                "Not a lock",
                &format!("<p>{}</p>", esc(&e)),
            );
        }
    };
    let back = lock_href(&resource);
    if ctx.web.admin().is_none() {
        return ctx.actions_disabled();
    }
    if !ctx.caller.is_admin() {
        return ctx.login_needed(&back);
    }
    let qs = match view::queue(ctx.web.backend(), &resource).await {
        Ok(qs) => qs,
        Err(e) => {
            return ctx.message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The lock could not be read",
                &format!("<p>{}</p>", esc(&e.to_string())),
            );
        }
    };
    let key = resource.lock_key();
    let Some(l) = &qs.lock else {
        return ctx.message(
            StatusCode::CONFLICT,
            "Nothing to unlock",
            &format!(
                r#"<p>Nobody holds <code>{}</code> now. <a href="{}">Back to the lock</a>.</p>"#,
                esc(&key),
                esc(&back)
            ),
        );
    };
    let next = match qs.entries.first() {
        Some(e) => format!(
            "The lock then goes to the first in line, <strong>{}</strong> ({}, effective priority {}), with a new fencing token.",
            esc(&e.entry.owner.owner),
            match e.entry.kind {
                tflock_core::EntryKind::Waiter => "a waiting request",
                tflock_core::EntryKind::Reservation => "a reservation",
            },
            e.effective_priority
        ),
        None => "Nobody is waiting: the lock becomes free.".to_string(),
    };
    let title = format!("Force unlock {key}?");
    let main = format!(
        concat!(
            r#"<nav class="crumbs" aria-label="Breadcrumb"><a href="/">All locks</a> › <a href="{back}">{key}</a></nav>"#,
            r#"<h1>Force unlock <code class="key">{key}</code>?</h1>"#,
            r#"<div class="panel confirm" id="confirm">"#,
            r#"<p>This ends the lease of <strong>{owner}</strong> (fencing token {token}, held since {since}) at once. "#,
            "Its holder is not told; a storage system that checks fencing tokens refuses its later writes.</p>",
            "<p>{next}</p>",
            r#"<form method="post" action="/ui/lock/unlock">{fields}"#,
            r#"<input type="hidden" name="fencing_token" value="{token}">{csrf}"#,
            r#"<div class="buttons"><button type="submit" class="danger" id="confirm-unlock">Force unlock</button> "#,
            r#"<a class="button secondary" href="{back}" id="keep">Keep the lock</a></div></form></div>"#
        ),
        back = esc(&back),
        key = esc(&key),
        owner = esc(&l.owner.owner),
        token = l.fencing_token,
        since = esc(&absolute(l.acquired_at)),
        next = next,
        fields = resource_fields(&resource),
        csrf = csrf_field(&ctx.caller),
    );
    html(
        StatusCode::OK,
        page(&ctx.frame(&title, &back, String::new()), &main),
    )
}

#[derive(Debug, Default, Deserialize)]
struct CancelQuery {
    entry_id: Option<String>,
    #[serde(flatten)]
    resource: ResourceParams,
}

/// `GET /ui/queue/cancel`: which entry a cancel would remove, and the button.
pub(crate) async fn confirm_cancel(
    State(web): State<Web>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    let q: CancelQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let resource = match q.resource.resource() {
        Ok(r) => r,
        Err(e) => {
            return ctx.message(
                StatusCode::BAD_REQUEST,
                "Not a lock",
                &format!("<p>{}</p>", esc(&e)),
            );
        }
    };
    let back = lock_href(&resource);
    if ctx.web.admin().is_none() {
        return ctx.actions_disabled();
    }
    if !ctx.caller.is_admin() {
        return ctx.login_needed(&back);
    }
    let entry_id = q.entry_id.unwrap_or_default();
    let qs = match view::queue(ctx.web.backend(), &resource).await {
        Ok(qs) => qs,
        Err(e) => {
            return ctx.message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The queue could not be read",
                &format!("<p>{}</p>", esc(&e.to_string())),
            );
        }
    };
    let key = resource.lock_key();
    let Some(e) = qs.entries.iter().find(|e| e.entry.entry_id == entry_id) else {
        return ctx.message(
            StatusCode::NOT_FOUND,
            "No such queue entry",
            &format!(
                r#"<p>The queue of <code>{}</code> has no such entry: it was granted the lock or left. <a href="{}">Back to the lock</a>.</p>"#,
                esc(&key),
                esc(&back)
            ),
        );
    };
    let effect = match e.entry.kind {
        tflock_core::EntryKind::Waiter => {
            "Its waiting request ends at once, answered as not acquired (cancelled)."
        }
        tflock_core::EntryKind::Reservation => "The reservation is dropped.",
    };
    let title = format!("Cancel the queue entry of {}?", e.entry.owner.owner);
    let main = format!(
        concat!(
            r#"<nav class="crumbs" aria-label="Breadcrumb"><a href="/">All locks</a> › <a href="{back}">{key}</a></nav>"#,
            r#"<h1>Cancel the queue entry of <strong>{owner}</strong>?</h1>"#,
            r#"<div class="panel confirm" id="confirm">"#,
            r#"<p>It is number {pos} in the queue of <code>{key}</code> ({prio} priority, waited {waited}). {effect}</p>"#,
            r#"<form method="post" action="/ui/queue/cancel">{fields}"#,
            r#"<input type="hidden" name="entry_id" value="{id}">{csrf}"#,
            r#"<div class="buttons"><button type="submit" class="danger" id="confirm-cancel">Cancel the entry</button> "#,
            r#"<a class="button secondary" href="{back}" id="keep">Keep it</a></div></form></div>"#
        ),
        back = esc(&back),
        key = esc(&key),
        owner = esc(&e.entry.owner.owner),
        pos = e.position,
        prio = e.effective_priority,
        waited = esc(&age(ctx.now.since(e.entry.enqueued_at))),
        effect = effect,
        fields = resource_fields(&resource),
        id = esc(&e.entry.entry_id),
        csrf = csrf_field(&ctx.caller),
    );
    html(
        StatusCode::OK,
        page(&ctx.frame(&title, &back, String::new()), &main),
    )
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// `GET /ui/login`: the login form.
pub(crate) async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let ctx = Ctx::new(web, &headers);
    let q: LoginQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let next = admin::safe_next(q.next.as_deref());
    login_page(&ctx, &next, StatusCode::OK, None)
}

/// The login form, with an error when a login failed.
pub fn login_page(ctx: &Ctx, next: &str, status: StatusCode, error: Option<&str>) -> Response {
    if ctx.web.admin().is_none() {
        return ctx.actions_disabled();
    }
    if ctx.caller.is_admin() {
        return ctx.message(
            StatusCode::OK,
            "Signed in",
            &format!(
                r#"<p>You are signed in as admin. <a href="{}">Go on</a>.</p>"#,
                esc(next)
            ),
        );
    }
    let error = error.map_or_else(String::new, |e| {
        format!(
            r#"<p class="error" role="alert" id="login-error">{}</p>"#,
            esc(e)
        )
    });
    let next_q = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
    let main = format!(
        concat!(
            "<h1>Admin login</h1>",
            r#"<div class="panel narrow">{error}"#,
            r#"<form method="post" action="/ui/login" class="stack">"#,
            r#"<input type="hidden" name="next" value="{next}">"#,
            r#"<label for="token">Admin token</label>"#,
            r#"<input id="token" name="token" type="password" required autocomplete="current-password" "#,
            r#"aria-describedby="token-help"{invalid}>"#,
            r#"<p id="token-help" class="muted">The server's admin token (<code>ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN</code>). "#,
            "It stays on the server: your browser keeps a session cookie for 8 hours.</p>",
            r#"<button type="submit" id="login-submit">Log in</button></form>"#,
            r#"<p class="muted">Or use <a href="/ui/login/basic?{next_q}">HTTP basic authentication</a> "#,
            "(any user name, the admin token as password).</p></div>"
        ),
        error = error,
        next = esc(next),
        invalid = if status == StatusCode::OK {
            ""
        } else {
            r#" aria-invalid="true""#
        },
        next_q = esc(&next_q),
    );
    html(
        status,
        page(&ctx.frame("Admin login", next, String::new()), &main),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_reads_well() {
        assert_eq!(count_text(0, 0), "0 locks held.");
        assert_eq!(count_text(1, 1), "1 lock held.");
        assert_eq!(count_text(2, 5), "Showing 2 of 5 locks.");
    }

    #[test]
    fn resource_params_default_path_and_name_the_field() {
        let p = ResourceParams {
            repo: Some("o/r".into()),
            workspace: Some("default".into()),
            ..ResourceParams::default()
        };
        assert_eq!(p.resource().unwrap().lock_key(), "o/r/./default/");
        let bad = ResourceParams {
            repo: Some("o/r".into()),
            path: Some("../x".into()),
            workspace: Some("default".into()),
            ..ResourceParams::default()
        };
        assert!(bad.resource().unwrap_err().starts_with("resource.path"));
        assert!(
            ResourceParams::default()
                .resource()
                .unwrap_err()
                .starts_with("repo")
        );
    }
}
