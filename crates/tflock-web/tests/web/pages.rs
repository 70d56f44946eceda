//! The pages over plain HTTP: what they show without JavaScript, and who may act.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test]
async fn overview_reads_without_javascript() {
    let s = TestServer::start(Options::tokens()).await;
    let a = resource("myorg/myrepo", ".", "default", "");
    let held = s
        .acquire(json!({"resource": a, "owner": "myorg/myrepo#42",
        "user": {"username": "alice", "teams": ["platform"]},
        "pull": {"num": 42, "url": "https://github.com/myorg/myrepo/pull/42"}}))
        .await;
    // Tokens are floored at the store's clock (docs/contract.md): the grant's own.
    let token_cell = format!(
        r#"data-field="fencing-token">{}<"#,
        held["lock"]["fencing_token"]
    );
    // Hostile metadata: markup in the owner, a script URL as pull request link.
    let b = resource("evil/repo", "infra", "prod", "net");
    s.acquire(json!({"resource": b, "owner": "<script>alert(1)</script>",
        "user": {"username": "mallory"},
        "pull": {"num": 7, "url": "javascript:alert(1)"}}))
        .await;

    let (status, h, page) = s.page("/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-frame-options"], "DENY");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    // Both rows, with every column.
    assert!(
        page.contains(r#"<tr data-key="myorg/myrepo/./default/""#),
        "{page}"
    );
    assert!(
        page.contains(r#"<tr data-key="evil/repo/infra/prod/net""#),
        "{page}"
    );
    for text in [
        "myorg/myrepo#42",
        r#"href="https://github.com/myorg/myrepo/pull/42""#,
        ">alice<",
        token_cell.as_str(),
        "Held since",
        "Expires in",
        r#"<time datetime="#,
        r#"href="/ui/lock?repo=myorg%2Fmyrepo&amp;path=.&amp;workspace=default&amp;project_name=""#,
        "2 locks held.",
    ] {
        assert!(page.contains(text), "missing {text}:\n{page}");
    }
    // Escaped, and the script URL is not a link.
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script>alert(1)"));
    assert!(!page.contains("javascript:alert"), "{page}");
    assert!(page.contains(">#7<"));
    // The health panel.
    assert!(page.contains(r#"data-field="backend">embedded<"#), "{page}");
    assert!(page.contains(r#"data-field="active-locks">2<"#), "{page}");
    assert!(page.contains(r#"data-field="queue-depth">0<"#), "{page}");
    assert!(page.contains(r#"data-field="status"><span class="badge ok">healthy<"#));
    // Anonymous: a login link, no action.
    assert!(page.contains(r#"id="login""#));
    assert!(!page.contains("Force unlock"));
    // The script and the stylesheet come from the server itself.
    assert!(page.contains(r#"<script src="/ui/assets/app.js?v="#));
    assert!(!page.contains("https://cdn"));

    // The filter works without JavaScript: non-matching rows are hidden.
    let (_, _, filtered) = s.page("/?q=ALICE", &[]).await;
    assert!(filtered.contains(r#"value="ALICE""#));
    assert!(filtered.contains("Showing 1 of 2 locks."), "{filtered}");
    let evil_row = filtered
        .split("<tr ")
        .find(|r| r.contains("evil/repo/infra"))
        .unwrap();
    assert!(evil_row.contains(" hidden>"), "{evil_row}");
    s.shutdown().await;
}

#[tokio::test]
async fn lock_page_shows_holder_queue_in_grant_order_and_events() {
    let s = TestServer::start(Options::tokens()).await;
    let r = resource("myorg/myrepo", "stacks/app", "default", "app");
    let held = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#42",
        "user": {"username": "alice"}, "pull": {"num": 42, "author": "alice",
        "head_branch": "feature", "base_branch": "main", "head_commit": "0123456789abcdef"},
        "note": "planning"}))
        .await;
    // Tokens are floored at the store's clock (docs/contract.md): the page shows the
    // grant's own token, whatever its value.
    let token = &held["lock"]["fencing_token"];
    let low = s
        .acquire(
            json!({"resource": r, "owner": "myorg/myrepo#50", "reserve": true, "priority": "low"}),
        )
        .await;
    s.acquire(
        json!({"resource": r, "owner": "myorg/myrepo#51", "reserve": true, "priority": "high"}),
    )
    .await;
    let low_entry = low["queue"]["entry_id"].as_str().unwrap().to_string();

    let page = eventually(EVENTUALLY, "events on the lock page", || async {
        let (_, _, p) = s.page(&lock_page(&r), &[]).await;
        p.contains(r#"data-event="queue.entered""#).then_some(p)
    })
    .await;
    assert!(page.contains("myorg/myrepo/stacks/app/default/app"));
    assert!(
        page.contains(&format!(
            r#"id="holder" data-owner="myorg/myrepo#42" data-token="{token}""#
        )),
        "{page}"
    );
    for text in [
        "planning",
        "feature",
        "→ main",
        "0123456789",
        "(2 waiting)",
        "Effective priority",
        "Deadline in",
    ] {
        assert!(page.contains(text), "missing {text}:\n{page}");
    }
    // Grant order: the high reservation first although it came later.
    let high_at = page.find(r#"data-owner="myorg/myrepo#51" data-position="1""#);
    let low_at = page.find(r#"data-owner="myorg/myrepo#50" data-position="2""#);
    assert!(
        high_at.is_some() && low_at.is_some() && high_at < low_at,
        "{page}"
    );
    assert!(page.contains(r#"data-event="lock.acquired""#));
    // Anonymous readers see neither the actions nor the entry ids (an entry id is
    // all a cancel needs).
    assert!(!page.contains(&low_entry));
    assert!(!page.contains("force-unlock"));
    assert!(page.contains(r#"id="actions-hint""#));

    // A bad address names the field.
    let (status, _, bad) = s
        .page(
            "/ui/lock?repo=myorg/myrepo&path=../x&workspace=default",
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("resource.path"), "{bad}");
    // A free lock reads as free.
    let (status, _, free) = s
        .page(&lock_page(&resource("o/free", ".", "default", "")), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(free.contains(r#"id="holder-free""#));
    s.shutdown().await;
}

#[tokio::test]
async fn actions_are_refused_without_credentials() {
    let s = TestServer::start(Options::tokens()).await;
    let r = resource("myorg/myrepo", ".", "default", "");
    s.acquire(json!({"resource": r, "owner": "myorg/myrepo#42"}))
        .await;
    let res = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#43", "reserve": true}))
        .await;
    let entry = res["queue"]["entry_id"].as_str().unwrap();
    let fields = [
        ("repo", "myorg/myrepo"),
        ("path", "."),
        ("workspace", "default"),
        ("project_name", ""),
    ];

    let mut unlock = fields.to_vec();
    unlock.push(("fencing_token", "1"));
    let (status, h, body) = s.post_form("/ui/lock/unlock", &unlock, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(h.contains_key("www-authenticate"));
    assert!(body.contains("Admin login needed"));

    let mut cancel = fields.to_vec();
    cancel.push(("entry_id", entry));
    let (status, _, _) = s.post_form("/ui/queue/cancel", &cancel, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A wrong token as basic password, or a forged cookie, is no better.
    let (status, _, _) = s
        .post_form(
            "/ui/lock/unlock",
            &unlock,
            &[("authorization", "Basic eDp3cm9uZw==")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = s
        .post_form(
            "/ui/lock/unlock",
            &unlock,
            &[("cookie", "__Host-tflock_admin=v1.9999999999.00.00")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The confirmation pages are not shown either.
    let (status, _, _) = s
        .page("/ui/lock/unlock?repo=myorg/myrepo&workspace=default", &[])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#42"));
    assert_eq!(s.queue(&r).await, ["myorg/myrepo#43"]);
    s.shutdown().await;
}

#[tokio::test]
async fn login_sets_a_secure_http_only_strict_cookie() {
    let s = TestServer::start(Options::tokens()).await;
    let (status, h, body) = s
        .post_form(
            "/ui/login",
            &[("token", "not-the-token"), ("next", "/")],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!h.contains_key("set-cookie"));
    assert!(body.contains("That is not the admin token."));
    assert!(
        !body.contains("not-the-token"),
        "the page echoes what was typed"
    );

    let (status, h, _) = s
        .post_form(
            "/ui/login",
            &[
                ("token", ADMIN_TOKEN),
                ("next", "/ui/lock?repo=a%2Fb&workspace=w"),
            ],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/ui/lock?repo=a%2Fb&workspace=w");
    let cookie = h["set-cookie"].to_str().unwrap();
    for attr in [
        "__Host-tflock_admin=v1.",
        "; Path=/",
        "; Secure",
        "; HttpOnly",
        "; SameSite=Strict",
    ] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert!(!cookie.contains(ADMIN_TOKEN));

    // The next page knows the administrator.
    let session = cookie.split(';').next().unwrap();
    let (_, _, page) = s.page("/", &[("cookie", session)]).await;
    assert!(page.contains("Signed in as admin"));
    assert!(page.contains(r#"id="logout""#));

    // `next` cannot send the administrator to another site.
    for evil in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let (status, h, _) = s
            .post_form("/ui/login", &[("token", ADMIN_TOKEN), ("next", evil)], &[])
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(h["location"], "/", "{evil}");
    }

    // Over plain HTTP to a host that is not this machine the cookie would be dropped
    // by the browser: the form says so instead.
    let (status, h, body) = s
        .post_form(
            "/ui/login",
            &[("token", ADMIN_TOKEN)],
            &[("host", "locks.example.com")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!h.contains_key("set-cookie"));
    assert!(body.contains("HTTPS"), "{body}");
    let (status, h, _) = s
        .post_form(
            "/ui/login",
            &[("token", ADMIN_TOKEN)],
            &[
                ("host", "locks.example.com"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(h.contains_key("set-cookie"));
    s.shutdown().await;
}

#[tokio::test]
async fn force_unlock_checks_csrf_origin_and_the_confirmed_lease() {
    let s = TestServer::start(Options::tokens()).await;
    let r = resource("myorg/myrepo", ".", "default", "");
    let held = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#42"}))
        .await;
    let token = held["lock"]["fencing_token"].to_string();
    let cookie = s.login().await;

    // The confirmation page carries the CSRF token and the fencing token it shows.
    let confirm_url = format!(
        "/ui/lock/unlock?{}",
        lock_page(&r).trim_start_matches("/ui/lock?")
    );
    let (status, _, confirm) = s.page(&confirm_url, &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK, "{confirm}");
    assert!(confirm.contains("Nobody is waiting: the lock becomes free."));
    let csrf = form_value(&confirm, "csrf").expect("a CSRF field");
    assert_eq!(form_value(&confirm, "fencing_token"), Some(token.clone()));

    let base = [
        ("repo", "myorg/myrepo"),
        ("path", "."),
        ("workspace", "default"),
        ("project_name", ""),
        ("fencing_token", token.as_str()),
    ];
    let with = |csrf: &str| {
        let mut f = base.to_vec();
        f.push(("csrf", csrf));
        f.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };

    // No CSRF token, a wrong one, another site's post: refused, nothing changes.
    let (status, _, body) = s
        .post_form("/ui/lock/unlock", &base, &[("cookie", &cookie)])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("CSRF"));
    let wrong = with("0000");
    let (status, _, _) = s
        .post_form("/ui/lock/unlock", &as_refs(&wrong), &[("cookie", &cookie)])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let good = with(&csrf);
    let (status, _, _) = s
        .post_form(
            "/ui/lock/unlock",
            &as_refs(&good),
            &[("cookie", &cookie), ("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = s
        .post_form(
            "/ui/lock/unlock",
            &as_refs(&good),
            &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#42"));

    // The lock changes hands after the confirmation: the confirmed lease is gone, so
    // the new holder is not unlocked.
    let (status, v) = s
        .api(
            reqwest::Method::POST,
            "/api/v1/locks/release",
            Some(json!({"resource": r, "force": true})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the API token is not admin: {v}"
    );
    let free = s
        .client
        .post(s.url("/api/v1/locks/release"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"resource": r, "force": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(free.status(), StatusCode::OK);
    let again = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#99"}))
        .await;
    let (status, _, body) = s
        .post_form(
            "/ui/lock/unlock",
            &as_refs(&good),
            &[
                ("cookie", &cookie),
                ("origin", &s.base),
                ("sec-fetch-site", "same-origin"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("myorg/myrepo#99"));
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#99"));

    // With the current fencing token it goes through, and answers 303 to the lock.
    let mut current = with(&csrf);
    current[4].1 = again["lock"]["fencing_token"].to_string();
    let (status, h, _) = s
        .post_form(
            "/ui/lock/unlock",
            &as_refs(&current),
            &[("cookie", &cookie), ("origin", &s.base)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        h["location"].to_str().unwrap(),
        format!("{}&done=unlocked", lock_page(&r))
    );
    assert_eq!(s.holder(&r).await, None);
    s.shutdown().await;
}

/// The lock is handed to the next in line between the confirmation page being read
/// and the post: the post still names the old lease's fencing token, the backend
/// refuses it in the same step as the release, and the new holder keeps the lock.
#[tokio::test]
async fn force_unlock_after_a_hand_off_keeps_the_new_holder() {
    let s = TestServer::start(Options::tokens()).await;
    let r = resource("myorg/myrepo", ".", "default", "");
    let first = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#42"}))
        .await;
    let lease = first["lock"]["lease_id"].as_str().unwrap().to_string();
    s.acquire(json!({"resource": r, "owner": "myorg/myrepo#43", "reserve": true}))
        .await;
    let cookie = s.login().await;
    let confirm_url = format!(
        "/ui/lock/unlock?{}",
        lock_page(&r).trim_start_matches("/ui/lock?")
    );
    let (status, _, confirm) = s.page(&confirm_url, &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK, "{confirm}");
    let csrf = form_value(&confirm, "csrf").unwrap();
    let token = form_value(&confirm, "fencing_token").unwrap();

    // #42 releases: the same step hands the lock to #43 with a new token.
    let (status, v) = s
        .api(
            reqwest::Method::POST,
            "/api/v1/locks/release",
            Some(json!({"resource": r, "lease_id": lease})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#43"));

    let (status, _, body) = s
        .post_form(
            "/ui/lock/unlock",
            &[
                ("repo", "myorg/myrepo"),
                ("path", "."),
                ("workspace", "default"),
                ("project_name", ""),
                ("fencing_token", &token),
                ("csrf", &csrf),
            ],
            &[("cookie", &cookie), ("origin", &s.base)],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("The lock changed hands"), "{body}");
    assert!(body.contains("myorg/myrepo#43"), "{body}");
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#43"));

    // A form without a fencing token names no lease: refused, nothing changes.
    let (status, _, body) = s
        .post_form(
            "/ui/lock/unlock",
            &[
                ("repo", "myorg/myrepo"),
                ("path", "."),
                ("workspace", "default"),
                ("project_name", ""),
                ("csrf", &csrf),
            ],
            &[("cookie", &cookie), ("origin", &s.base)],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#43"));
    s.shutdown().await;
}

/// A cancel form names the entry and the lock it was shown on: an entry granted the
/// lock between the page and the post, or one of another lock's queue, is not
/// cancelled, and its owner keeps what it has.
#[tokio::test]
async fn cancel_checks_the_entry_is_still_in_the_forms_queue() {
    let s = TestServer::start(Options::tokens()).await;
    let r = resource("myorg/myrepo", ".", "default", "");
    let other = resource("myorg/myrepo", ".", "staging", "");
    let first = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#42"}))
        .await;
    let lease = first["lock"]["lease_id"].as_str().unwrap().to_string();
    let res = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#43", "reserve": true}))
        .await;
    let entry = res["queue"]["entry_id"].as_str().unwrap().to_string();
    s.acquire(json!({"resource": other, "owner": "myorg/myrepo#50"}))
        .await;
    let res = s
        .acquire(json!({"resource": other, "owner": "myorg/myrepo#51", "reserve": true}))
        .await;
    let other_entry = res["queue"]["entry_id"].as_str().unwrap().to_string();
    let cookie = s.login().await;
    let cancel_url = format!(
        "/ui/queue/cancel?entry_id={entry}&{}",
        lock_page(&r).trim_start_matches("/ui/lock?")
    );
    let (status, _, confirm) = s.page(&cancel_url, &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK, "{confirm}");
    let csrf = form_value(&confirm, "csrf").unwrap();

    // Another lock's entry posted with this lock's form: not cancelled.
    let (status, _, body) = s
        .post_form(
            "/ui/queue/cancel",
            &[
                ("entry_id", &other_entry),
                ("repo", "myorg/myrepo"),
                ("path", "."),
                ("workspace", "default"),
                ("project_name", ""),
                ("csrf", &csrf),
            ],
            &[("cookie", &cookie), ("origin", &s.base)],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(s.queue(&other).await, vec!["myorg/myrepo#51".to_string()]);

    // #42 releases: #43's reservation is granted the lock before the post.
    let (status, v) = s
        .api(
            reqwest::Method::POST,
            "/api/v1/locks/release",
            Some(json!({"resource": r, "lease_id": lease})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _, body) = s
        .post_form(
            "/ui/queue/cancel",
            &[
                ("entry_id", &entry),
                ("repo", "myorg/myrepo"),
                ("path", "."),
                ("workspace", "default"),
                ("project_name", ""),
                ("csrf", &csrf),
            ],
            &[("cookie", &cookie), ("origin", &s.base)],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#43"));
    s.shutdown().await;
}

#[tokio::test]
async fn basic_auth_with_the_admin_token_cancels_an_entry() {
    let s = TestServer::start(Options::tokens()).await;
    let r = resource("myorg/myrepo", ".", "default", "");
    s.acquire(json!({"resource": r, "owner": "myorg/myrepo#42"}))
        .await;
    let res = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#43", "reserve": true}))
        .await;
    let entry = res["queue"]["entry_id"].as_str().unwrap().to_string();
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{ADMIN_TOKEN}"))
    );

    // The explicit basic login asks the browser for credentials...
    let (status, h, _) = s.page("/ui/login/basic?next=/ui/lock", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"tflock admin\"")
    );
    // ...and goes on once it has them.
    let (status, h, _) = s
        .page(
            "/ui/login/basic?next=/ui/lock",
            &[("authorization", &basic)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/ui/lock");

    let (_, _, page) = s.page(&lock_page(&r), &[("authorization", &basic)]).await;
    assert!(page.contains(r#"id="force-unlock""#));
    assert!(page.contains(&format!(r#"id="cancel-{entry}""#)), "{page}");
    assert!(page.contains("Admin (HTTP basic auth)"));

    let cancel_url = format!(
        "/ui/queue/cancel?entry_id={entry}&{}",
        lock_page(&r).trim_start_matches("/ui/lock?")
    );
    let (status, _, confirm) = s.page(&cancel_url, &[("authorization", &basic)]).await;
    assert_eq!(status, StatusCode::OK, "{confirm}");
    assert!(confirm.contains("myorg/myrepo#43"));
    let csrf = form_value(&confirm, "csrf").unwrap();
    let form = [
        ("entry_id", entry.as_str()),
        ("repo", "myorg/myrepo"),
        ("path", "."),
        ("workspace", "default"),
        ("project_name", ""),
    ];
    // Basic credentials travel with cross-site posts too: the CSRF token stops them.
    let (status, _, _) = s
        .post_form("/ui/queue/cancel", &form, &[("authorization", &basic)])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut with_csrf = form.to_vec();
    with_csrf.push(("csrf", &csrf));
    let (status, h, _) = s
        .post_form("/ui/queue/cancel", &with_csrf, &[("authorization", &basic)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(h["location"].to_str().unwrap().ends_with("&done=cancelled"));
    assert!(s.queue(&r).await.is_empty());
    // Again: the entry is gone.
    let (status, _, _) = s
        .post_form("/ui/queue/cancel", &with_csrf, &[("authorization", &basic)])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#42"));
    s.shutdown().await;
}

#[tokio::test]
async fn logout_ends_the_session() {
    let s = TestServer::start(Options::tokens()).await;
    let cookie = s.login().await;
    let (_, _, page) = s.page("/", &[("cookie", &cookie)]).await;
    let csrf = form_value(&page, "csrf").expect("the logout form's CSRF token");
    let (status, h, _) = s
        .post_form("/ui/logout", &[("csrf", &csrf)], &[("cookie", &cookie)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(h["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (_, _, page) = s.page("/", &[("cookie", &cookie)]).await;
    assert!(
        !page.contains("Signed in as admin"),
        "a logged-out cookie still works"
    );
    assert!(page.contains(r#"id="login""#));
    s.shutdown().await;
}

#[tokio::test]
async fn without_an_admin_token_there_are_no_actions() {
    let s = TestServer::start(Options::open()).await;
    let r = resource("myorg/myrepo", ".", "default", "");
    s.acquire(json!({"resource": r, "owner": "myorg/myrepo#42"}))
        .await;
    let (_, _, page) = s.page(&lock_page(&r), &[]).await;
    assert!(page.contains("Actions are off: the server has no admin token."));
    assert!(!page.contains(r#"id="login""#));
    let (status, _, _) = s
        .post_form("/ui/login", &[("token", "anything")], &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = s
        .post_form(
            "/ui/lock/unlock",
            &[
                ("repo", "myorg/myrepo"),
                ("workspace", "default"),
                ("fencing_token", "1"),
            ],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.holder(&r).await.as_deref(), Some("myorg/myrepo#42"));
    s.shutdown().await;
}

#[tokio::test]
async fn health_panel_reads_the_health_report() {
    let s = TestServer::start(Options {
        health: true,
        ..Options::tokens()
    })
    .await;
    for i in 0..5 {
        let r = resource(&format!("o/r{i}"), ".", "default", "");
        s.acquire(json!({"resource": r, "owner": format!("o/r{i}#1")}))
            .await;
    }
    let (_, _, page) = s.page("/", &[]).await;
    assert!(page.contains(r#"data-perf="health""#), "{page}");
    assert!(
        page.contains(r#"data-field="breaker"><span class="badge ok">closed<"#),
        "{page}"
    );
    assert!(page.contains(r#"data-field="active-locks">5<"#));
    let p95 = page
        .split(r#"data-field="p95">"#)
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap();
    assert!(
        p95.ends_with(" ms") || p95.ends_with(" s"),
        "p95 is {p95:?}"
    );
    let ops = page
        .split(r#"data-field="ops">"#)
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap();
    assert!(ops.parse::<f64>().unwrap() > 0.0, "ops/s is {ops:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn assets_are_compiled_in() {
    let s = TestServer::start(Options::open()).await;
    let (_, _, page) = s.page("/", &[]).await;
    let js = page
        .split(r#"<script src=""#)
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_string();
    let (status, h, body) = s.page(&js, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    assert!(body.contains("EventSource"));
    let (status, h, _) = s.page("/ui/assets/style.css", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["cache-control"], "no-cache");
    let (status, _, _) = s.page("/ui/assets/nope.js", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The API's own routes are untouched by the merge.
    let (status, v) = s.api(reqwest::Method::GET, "/api/v1/locks", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(count(&page, "<main"), 1);
    s.shutdown().await;
}

/// Collects what the server, the page and the store log. Installed as the
/// process-wide subscriber (once, for the whole test binary): a thread-scoped one
/// misses events whose callsites other test threads registered first.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn tokens_are_never_logged() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "tflock_web=trace,tflock_server=trace,tflock_embedded=trace,axum=trace,tower_http=trace",
        ))
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("no other test installs a global subscriber");

    let s = TestServer::start(Options::tokens()).await;
    let r = resource("myorg/myrepo", ".", "default", "");
    let held = s
        .acquire(json!({"resource": r, "owner": "myorg/myrepo#42"}))
        .await;
    let token = held["lock"]["fencing_token"].to_string();
    let wrong = "a-wrong-admin-token-4411";
    s.post_form("/ui/login", &[("token", wrong)], &[]).await;
    let cookie = s.login().await;
    let (_, _, confirm) = s
        .page(
            &format!(
                "/ui/lock/unlock?{}",
                lock_page(&r).trim_start_matches("/ui/lock?")
            ),
            &[("cookie", &cookie)],
        )
        .await;
    let csrf = form_value(&confirm, "csrf").unwrap();
    let (status, _, _) = s
        .post_form(
            "/ui/lock/unlock",
            &[
                ("repo", "myorg/myrepo"),
                ("path", "."),
                ("workspace", "default"),
                ("project_name", ""),
                ("fencing_token", &token),
                ("csrf", &csrf),
            ],
            &[("cookie", &cookie)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x:{ADMIN_TOKEN}"));
    s.page("/", &[("authorization", &format!("Basic {basic}"))])
        .await;
    s.shutdown().await;

    let logs =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    assert!(
        logs.contains("web: admin logged in"),
        "the page logs: {logs}"
    );
    assert!(logs.contains("web: force unlock by admin"), "{logs}");
    let session = cookie.split_once('=').unwrap().1;
    for secret in [ADMIN_TOKEN, API_TOKEN, wrong, session, &csrf, &basic] {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the logs:\n{logs}"
        );
    }
}
