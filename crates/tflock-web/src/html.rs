//! HTML building blocks: escaping, the page frame, and how times and durations read.
//!
//! Pages are built with `write!` into a `String`; every value that did not come from
//! this crate goes through [`esc`]. Durations are written the same way here and in
//! `assets/app.js`, which keeps them ticking.

use std::fmt::{self, Write};
use std::time::Duration;

use serde::Serialize;
use tflock_core::{Resource, Timestamp};

use crate::admin::Caller;
use crate::assets;

/// Escapes text for HTML element content and quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, c) in self.0.char_indices() {
            let rep = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + c.len_utf8();
        }
        f.write_str(&self.0[last..])
    }
}

/// Shorthand for [`Esc`].
pub fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

/// A duration as people read it at a glance: `45s`, `3m 12s`, `2h 5m`, `3d 4h`.
/// `assets/app.js` has the same function (`age`).
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A latency: `0.42 ms`, `12.3 ms`, `1.20 s`.
pub fn latency(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// `2026-11-26 12:00:00 UTC`.
pub fn absolute(t: Timestamp) -> String {
    let s = humantime::format_rfc3339_seconds(t.to_system_time()).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replace('T', " "))
}

/// How a `<time>` element's text is kept up to date by the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rel {
    /// `3m 12s ago`.
    Ago,
    /// `3m 12s` from then to now (waited).
    Since,
    /// `3m 12s` from now to then (expires in, deadline).
    Until,
}

impl Rel {
    fn attr(self) -> &'static str {
        match self {
            Rel::Ago => "ago",
            Rel::Since => "since",
            Rel::Until => "until",
        }
    }
}

/// A `<time>` element showing `t` relative to `now` (kept ticking by the script), with
/// the absolute time as its tooltip and machine-readable `datetime`.
pub fn time_rel(t: Timestamp, now: Timestamp, rel: Rel) -> String {
    let text = match rel {
        Rel::Ago => format!("{} ago", age(now.since(t))),
        Rel::Since => age(now.since(t)),
        Rel::Until => {
            if t <= now {
                "now".to_string()
            } else {
                age(t.since(now))
            }
        }
    };
    format!(
        r#"<time datetime="{}" data-rel="{}" title="{}">{}</time>"#,
        esc(&t.to_rfc3339()),
        rel.attr(),
        esc(&absolute(t)),
        esc(&text)
    )
}

/// `url` when it is an `http(s)` URL, the only kind the page links to (a pull
/// request's URL comes from the caller: `javascript:` must not become a link).
pub fn safe_link(url: &str) -> Option<&str> {
    let lower = url.trim_start().to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then_some(url)
}

#[derive(Serialize)]
struct ResourceQuery<'a> {
    repo: &'a str,
    path: &'a str,
    workspace: &'a str,
    project_name: &'a str,
}

/// `repo=..&path=..&workspace=..&project_name=..`, URL-encoded.
pub fn resource_query(r: &Resource) -> String {
    serde_urlencoded::to_string(ResourceQuery {
        repo: &r.repo,
        path: &r.path,
        workspace: &r.workspace,
        project_name: &r.project_name,
    })
    .unwrap_or_default()
}

/// The lock page's address.
pub fn lock_href(r: &Resource) -> String {
    format!("/ui/lock?{}", resource_query(r))
}

/// Hidden form fields naming `r`.
pub fn resource_fields(r: &Resource) -> String {
    format!(
        concat!(
            r#"<input type="hidden" name="repo" value="{}">"#,
            r#"<input type="hidden" name="path" value="{}">"#,
            r#"<input type="hidden" name="workspace" value="{}">"#,
            r#"<input type="hidden" name="project_name" value="{}">"#
        ),
        esc(&r.repo),
        esc(&r.path),
        esc(&r.workspace),
        esc(&r.project_name)
    )
}

/// The hidden CSRF field of a form posted by the administrator.
pub fn csrf_field(caller: &Caller) -> String {
    caller.csrf().map_or_else(String::new, |t| {
        format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(t))
    })
}

/// What a page puts in the frame.
pub struct Frame<'a> {
    pub title: &'a str,
    pub caller: &'a Caller,
    /// Whether an admin token is configured (a login is possible).
    pub admin_enabled: bool,
    /// Where the login link comes back to.
    pub here: &'a str,
    /// Extra attributes of `<body>` (already escaped), e.g. `data-live="index"`.
    pub body_attrs: String,
    pub now: Timestamp,
}

/// The whole document around `main`.
pub fn page(frame: &Frame<'_>, main: &str) -> String {
    let mut out = String::with_capacity(main.len() + 2048);
    let _ = write!(
        out,
        concat!(
            "<!doctype html>\n",
            r#"<html lang="en"><head><meta charset="utf-8">"#,
            r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#,
            r#"<meta name="color-scheme" content="light dark">"#,
            "<title>{title} · tflock</title>",
            r#"<link rel="icon" type="image/svg+xml" href="{icon}">"#,
            r#"<link rel="stylesheet" href="{css}">"#,
            r#"<script src="{js}" defer></script>"#,
            "</head>\n",
            r#"<body data-server-now="{now}" {attrs}>"#,
            r##"<a class="skip" href="#main">Skip to content</a>"##,
            r#"<header class="top"><a class="brand" href="/">"#,
            r#"<img src="{icon}" alt="" width="24" height="24"> tflock</a>"#,
            r#"<p id="live" class="live" role="status" hidden></p>"#,
            r#"<nav class="account" aria-label="Admin">{account}</nav></header>"#,
            "\n",
            r#"<main id="main" tabindex="-1">"#,
        ),
        title = esc(frame.title),
        icon = assets::href("icon.svg"),
        css = assets::href("style.css"),
        js = assets::href("app.js"),
        now = esc(&frame.now.to_rfc3339()),
        attrs = frame.body_attrs,
        account = account(frame),
    );
    out.push_str(main);
    let _ = write!(
        out,
        concat!(
            "</main>\n",
            r#"<footer class="foot">tflock {version} · "#,
            r#"<a href="/api/health/locking">health (JSON)</a> · "#,
            r#"<a href="/api/v1/locks">locks (JSON)</a></footer>"#,
            "</body></html>\n"
        ),
        version = env!("CARGO_PKG_VERSION")
    );
    out
}

fn account(frame: &Frame<'_>) -> String {
    match frame.caller {
        Caller::Admin {
            via: crate::admin::Via::Session { .. },
            ..
        } => format!(
            concat!(
                r#"<span class="who">Signed in as admin</span> "#,
                r#"<form method="post" action="/ui/logout" class="inline">{csrf}"#,
                r#"<button type="submit" class="link" id="logout">Log out</button></form>"#
            ),
            csrf = csrf_field(frame.caller)
        ),
        Caller::Admin { .. } => r#"<span class="who">Admin (HTTP basic auth)</span>"#.to_string(),
        Caller::Anonymous if frame.admin_enabled => format!(
            r#"<a href="/ui/login?{}" id="login">Admin login</a>"#,
            serde_urlencoded::to_string([("next", frame.here)]).unwrap_or_default()
        ),
        Caller::Anonymous => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#).to_string(),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(esc("plain ünïcode").to_string(), "plain ünïcode");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(age(Duration::from_millis(900)), "0s");
        assert_eq!(age(Duration::from_secs(59)), "59s");
        assert_eq!(age(Duration::from_secs(192)), "3m 12s");
        assert_eq!(age(Duration::from_secs(2 * 3600 + 5 * 60 + 7)), "2h 5m");
        assert_eq!(age(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d 4h");
        assert_eq!(latency(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(latency(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(latency(Duration::from_millis(1200)), "1.20 s");
    }

    #[test]
    fn only_http_links() {
        assert!(safe_link("https://github.com/o/r/pull/1").is_some());
        assert!(safe_link("HTTP://x").is_some());
        assert!(safe_link("javascript:alert(1)").is_none());
        assert!(safe_link(" javascript:alert(1)").is_none());
        assert!(safe_link("data:text/html,x").is_none());
    }

    #[test]
    fn absolute_times_are_utc() {
        let t = Timestamp::parse_rfc3339("2026-11-26T12:00:00Z").unwrap();
        assert_eq!(absolute(t), "2026-11-26 12:00:00 UTC");
        let html = time_rel(t, t.add(Duration::from_secs(75)), Rel::Ago);
        assert!(html.contains(">1m 15s ago</time>"), "{html}");
        assert!(html.contains(r#"data-rel="ago""#), "{html}");
    }

    #[test]
    fn resource_queries_encode_every_part() {
        let r = Resource::new("group/sub/repo", "a b", "default", "p&q").unwrap();
        assert_eq!(
            resource_query(&r),
            "repo=group%2Fsub%2Frepo&path=a+b&workspace=default&project_name=p%26q"
        );
    }
}
