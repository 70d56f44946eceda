//! The VCS webhook receiver over real HTTP on 127.0.0.1:0 with a real embedded store:
//! a correctly signed "closed" event releases that pull request's locks; a wrong or
//! missing signature is 401 and releases nothing.

use std::sync::Arc;

use serde_json::{Value, json};
use tflock_core::{
    LockFilter, LockRequest, LockSettings, Owner, PullInfo, Resource, SharedBackend, SystemClock,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_migrate::webhook_router;

const SECRET: &str = "gh-webhook-secret";
const GITLAB_TOKEN: &str = "gl-webhook-token";

struct Served {
    base: String,
    backend: SharedBackend,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn serve(github: Option<&str>, gitlab: Option<&str>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let backend: SharedBackend = EmbeddedBackend::open(
        EmbeddedConfig {
            path: dir.path().join("locks.redb"),
            settings: LockSettings::default(),
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let app = webhook_router(
        backend.clone(),
        github.map(str::to_string),
        gitlab.map(str::to_string),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Served {
        base: format!("http://{addr}"),
        backend,
        _dir: dir,
        stop: Some(stop),
    }
}

async fn lock(backend: &SharedBackend, repo: &str, path: &str, pull: u64) {
    let mut request = LockRequest::new(
        Resource::new(repo, path, "default", "").unwrap(),
        format!("{repo}#{pull}"),
    );
    request.owner = Owner {
        pull: Some(PullInfo {
            num: pull,
            ..PullInfo::default()
        }),
        ..Owner::named(format!("{repo}#{pull}"))
    };
    assert!(backend.try_lock(request).await.unwrap().acquired);
}

async fn owners(backend: &SharedBackend) -> Vec<String> {
    let page = backend.list_locks(LockFilter::default()).await.unwrap();
    let mut o: Vec<String> = page.locks.into_iter().map(|l| l.owner.owner).collect();
    o.sort();
    o
}

fn sign(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn github_event(action: &str, repo: &str, pull: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": action,
        "number": pull,
        "pull_request": {"number": pull, "merged": action == "closed", "state": "closed",
                         "html_url": format!("https://github.com/{repo}/pull/{pull}")},
        "repository": {"full_name": repo, "name": repo.rsplit('/').next().unwrap()},
        "sender": {"login": "alice"}
    }))
    .unwrap()
}

async fn post_github(
    base: &str,
    event: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/api/vcs/github"))
        .header("X-GitHub-Event", event)
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(s) = signature {
        req = req.header("X-Hub-Signature-256", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_closed_event_releases_only_when_signed() {
    let s = serve(Some(SECRET), None).await;
    lock(&s.backend, "acme/infra", "a", 42).await;
    lock(&s.backend, "acme/infra", "b", 42).await;
    lock(&s.backend, "acme/infra", "c", 43).await;
    lock(&s.backend, "acme/infra2", "a", 42).await;
    let before = owners(&s.backend).await;
    assert_eq!(before.len(), 4);
    let closed = github_event("closed", "acme/infra", 42);

    // Signed with the wrong secret: 401, nothing released.
    let (status, body) = post_github(
        &s.base,
        "pull_request",
        closed.clone(),
        Some(sign("not-the-secret", &closed)),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(owners(&s.backend).await, before);
    // A signature of another body, a malformed one, none at all: the same.
    let other = github_event("closed", "acme/infra", 43);
    for sig in [
        Some(sign(SECRET, &other)),
        Some("sha256=zz".to_string()),
        Some(sign(SECRET, &closed).replace("sha256=", "sha1=")),
        None,
    ] {
        let (status, _) = post_github(&s.base, "pull_request", closed.clone(), sig).await;
        assert_eq!(status, 401);
    }
    assert_eq!(owners(&s.backend).await, before);

    // Signed, but not a close: nothing released.
    let opened = github_event("opened", "acme/infra", 42);
    let (status, body) = post_github(
        &s.base,
        "pull_request",
        opened.clone(),
        Some(sign(SECRET, &opened)),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["ignored"].is_string());
    let ping = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let (status, _) = post_github(&s.base, "ping", ping.clone(), Some(sign(SECRET, &ping))).await;
    assert_eq!(status, 200);
    assert_eq!(owners(&s.backend).await, before);

    // Correctly signed close: exactly that repo and pull released.
    let (status, body) = post_github(
        &s.base,
        "pull_request",
        closed.clone(),
        Some(sign(SECRET, &closed)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released"].as_array().unwrap().len(), 2);
    assert_eq!(body["pull"], 42);
    assert_eq!(
        owners(&s.backend).await,
        ["acme/infra#43", "acme/infra2#42"]
    );
    // Delivered again: nothing more to release, still 200.
    let (status, body) = post_github(
        &s.base,
        "pull_request",
        closed.clone(),
        Some(sign(SECRET, &closed)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["released"].as_array().unwrap().len(), 0);

    // Signed garbage is a 400, not a release.
    let junk = b"{not json".to_vec();
    let (status, _) = post_github(
        &s.base,
        "pull_request",
        junk.clone(),
        Some(sign(SECRET, &junk)),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(owners(&s.backend).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_merge_request_hook_checks_its_token() {
    let s = serve(None, Some(GITLAB_TOKEN)).await;
    lock(&s.backend, "group/sub/repo", "envs/a", 7).await;
    lock(&s.backend, "group/sub/repo", "envs/b", 8).await;
    let body = |state: &str| {
        serde_json::to_vec(&json!({
            "object_kind": "merge_request",
            "event_type": "merge_request",
            "project": {"path_with_namespace": "group/sub/repo"},
            "object_attributes": {"iid": 7, "id": 123456, "state": state, "action": "merge"}
        }))
        .unwrap()
    };
    let post = |token: Option<&'static str>, payload: Vec<u8>| {
        let base = s.base.clone();
        async move {
            let mut req = reqwest::Client::new()
                .post(format!("{base}/api/vcs/gitlab"))
                .header("X-Gitlab-Event", "Merge Request Hook")
                .body(payload);
            if let Some(t) = token {
                req = req.header("X-Gitlab-Token", t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(post(Some("wrong"), body("merged")).await.0, 401);
    assert_eq!(post(None, body("merged")).await.0, 401);
    assert_eq!(owners(&s.backend).await.len(), 2);
    let (status, answer) = post(Some(GITLAB_TOKEN), body("opened")).await;
    assert_eq!((status, answer["ignored"].is_string()), (200, true));
    assert_eq!(owners(&s.backend).await.len(), 2);

    let (status, answer) = post(Some(GITLAB_TOKEN), body("merged")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["released"].as_array().unwrap().len(), 1);
    assert_eq!(owners(&s.backend).await, ["group/sub/repo#8"]);
}

#[tokio::test]
async fn a_provider_without_a_secret_is_closed() {
    let s = serve(None, None).await;
    lock(&s.backend, "acme/infra", "a", 42).await;
    let closed = github_event("closed", "acme/infra", 42);
    let (status, body) = post_github(
        &s.base,
        "pull_request",
        closed.clone(),
        Some(sign("", &closed)),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/vcs/gitlab", s.base))
        .header("X-Gitlab-Token", "")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(owners(&s.backend).await.len(), 1);
}
