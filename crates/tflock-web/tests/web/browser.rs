//! End to end in a real headless Chromium, driven over the WebDriver protocol
//! (`chromedriver` on a free loopback port, `fantoccini` as client), against the real
//! server on the embedded store.
//!
//! Nothing is skipped: without Chromium the test fails and says that `scripts/test`
//! installs it. Screenshots land in `target/artifacts/web/`; with
//! `TFLOCK_WEB_DOCS_SCREENSHOTS=1` the overview and the lock page are also written to
//! `docs/web-overview.png` and `docs/web-lock.png`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::common::*;

/// Longest Chromium and chromedriver get to start (a cold start on a busy two-core
/// machine takes a few seconds).
const START: Duration = Duration::from_secs(60);

/// Where screenshots go: `target/artifacts/web/`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("artifacts")
        .join("web");
    std::fs::create_dir_all(&dir).expect("create target/artifacts/web");
    dir
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/lib/chromium".into()])
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A chromedriver process, killed when dropped (also when the test panics).
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts chromedriver on a free loopback port and waits until it is ready. The port
/// is free when picked but could be taken before chromedriver binds it, so a driver
/// that dies at once is started again on another port.
async fn start_driver(chromedriver: &Path) -> Driver {
    let http = reqwest::Client::new();
    for _attempt in 0..3 {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg("--allowed-origins=*")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = driver.child.try_wait() {
                break; // died (port taken?): try another port
            }
            if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == json!(true)
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("chromedriver did not become ready on a loopback port within {START:?}");
}

async fn open_browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--force-device-scale-factor=1",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": chromium.to_string_lossy(), "args": args},
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connect = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await;
    connect.unwrap_or_else(|e| panic!("cannot start a Chromium session through chromedriver: {e}"))
}

/// Waits for an element, at most [`EVENTUALLY`].
async fn element(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(EVENTUALLY)
        .every(Duration::from_millis(50))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css} within {EVENTUALLY:?}: {e}"))
}

/// Runs `script` (which must return a value) until it answers something truthy.
async fn until(c: &Client, what: &str, within: Duration, script: &str) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = c.execute(script, vec![]).await.expect("execute script");
        let truthy =
            !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
        if truthy {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks an element. The live refresh may swap the element for a fresh copy between
/// finding and clicking it (a stale element), so a failed click is tried again on a
/// fresh find, at most [`EVENTUALLY`].
async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match element(c, css).await.click().await {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "cannot click {css} within {EVENTUALLY:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The element's text. A live update may replace the element between finding it
/// and reading it (a stale element): found again, like `click`.
async fn text(c: &Client, css: &str) -> String {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        match element(c, css).await.text().await {
            Ok(t) => return t,
            Err(e) => assert!(
                Instant::now() < deadline,
                "cannot read the text of {css} within {EVENTUALLY:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn screenshot(c: &Client, name: &str, docs_name: Option<&str>) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(artifacts().join(name), &png).expect("write the screenshot");
    if let Some(docs_name) = docs_name
        && std::env::var_os("TFLOCK_WEB_DOCS_SCREENSHOTS").is_some()
    {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        std::fs::write(docs.join(docs_name), &png).expect("write the docs screenshot");
    }
}

/// Marks the current document; [`still_same_document`] tells whether the page was
/// reloaded since (a reload starts a new document without the mark).
async fn mark_document(c: &Client, mark: &str) {
    c.execute(
        "window.__tflockMark = arguments[0]; return true;",
        vec![json!(mark)],
    )
    .await
    .expect("mark the document");
}

async fn still_same_document(c: &Client, mark: &str) -> bool {
    c.execute(
        "return window.__tflockMark === arguments[0];",
        vec![json!(mark)],
    )
    .await
    .expect("read the mark")
        == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_follows_locks_live_and_unlocks_as_admin() {
    let (Some(chromium), Some(chromedriver)) = (
        find_program(&["chromium", "chromium-browser", "google-chrome"]),
        find_program(&["chromedriver"]),
    ) else {
        panic!(
            "Chromium and chromedriver are needed for the browser test and were not found \
             on PATH. scripts/test installs them (Debian: apt-get install chromium chromium-driver)."
        );
    };
    let profile = tempfile::tempdir().expect("a fresh Chromium profile");
    let s = TestServer::start(Options::tokens()).await;
    let driver = start_driver(&chromedriver).await;
    let c = open_browser(&driver, &chromium, profile.path()).await;

    // Two locks before the page opens.
    let network = resource("acme/network", ".", "prod", "");
    s.acquire(json!({"resource": network, "owner": "acme/network#12",
        "user": {"username": "carol", "teams": ["netops"]},
        "pull": {"num": 12, "url": "https://github.com/acme/network/pull/12"}, "ttl": "2h"}))
        .await;
    let platform = resource("acme/platform", "clusters/eks", "staging", "eks");
    s.acquire(json!({"resource": platform, "owner": "acme/platform#7",
        "user": {"username": "dave"}, "priority": "high",
        "pull": {"num": 7, "url": "https://gitlab.example/acme/platform/-/merge_requests/7"}, "ttl": "30m"}))
        .await;

    c.goto(&s.url("/")).await.expect("open the overview");
    assert_eq!(c.title().await.unwrap(), "Locks · tflock");
    element(&c, r#"tr[data-key="acme/network/./prod/"]"#).await;
    // The script is connected to the event stream.
    element(&c, r#"#live[data-state="ok"]"#).await;
    assert_eq!(text(&c, "#live").await, "Live");
    mark_document(&c, "overview").await;

    // A lock taken through the API appears without a reload.
    let mine = resource("myorg/myrepo", ".", "default", "");
    let first = s
        .acquire(json!({"resource": mine, "owner": "myorg/myrepo#42",
        "user": {"username": "alice", "teams": ["platform"]},
        "pull": {"num": 42, "url": "https://github.com/myorg/myrepo/pull/42", "author": "alice"},
        "ttl": "1h"}))
        .await;
    let row = r#"tr[data-key="myorg/myrepo/./default/"]"#;
    element(&c, row).await;
    assert!(
        still_same_document(&c, "overview").await,
        "the page was reloaded instead of updated"
    );
    assert_eq!(
        text(&c, &format!(r#"{row} [data-field="owner"]"#)).await,
        "myorg/myrepo#42"
    );
    assert_eq!(
        text(&c, &format!(r#"{row} [data-field="fencing-token"]"#)).await,
        first["lock"]["fencing_token"].to_string(),
        "the grant's own token (floored at the store's clock)"
    );
    until(
        &c,
        "the health panel counts 3 locks",
        EVENTUALLY,
        r#"return document.querySelector('[data-field="active-locks"]').textContent === "3";"#,
    )
    .await;
    // The latency figures come from /api/health/locking, read by the script.
    until(
        &c,
        "p95 latency filled in",
        EVENTUALLY,
        r#"return /\d/.test(document.querySelector('[data-field="p95"]').textContent);"#,
    )
    .await;

    // The filter box, typed into like a person would.
    let filter = element(&c, "#filter").await;
    filter.send_keys("alice").await.expect("type in the filter");
    until(
        &c,
        "the filter hides the other rows",
        EVENTUALLY,
        r#"return document.getElementById("filter-count").textContent === "Showing 1 of 3 locks.";"#,
    )
    .await;
    assert!(
        !element(&c, r#"tr[data-key="acme/network/./prod/"]"#)
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/?q=alice")
    );
    c.execute(
        r#"const f = document.getElementById("filter"); f.value = ""; f.dispatchEvent(new Event("input")); return true;"#,
        vec![],
    )
    .await
    .unwrap();
    until(
        &c,
        "the filter cleared",
        EVENTUALLY,
        r#"return document.getElementById("filter-count").textContent === "3 locks held.";"#,
    )
    .await;

    // A waiter queues behind #42 (its request stays open until it is granted).
    let waiter = {
        let body = json!({"resource": mine, "owner": "myorg/myrepo#43",
            "user": {"username": "bob"}, "priority": "high", "wait": "2m",
            "pull": {"num": 43, "url": "https://github.com/myorg/myrepo/pull/43"}});
        let client = reqwest::Client::new();
        let url = s.url("/api/v1/locks/acquire");
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(API_TOKEN)
                .json(&body)
                .send()
                .await
                .expect("the waiting acquire")
                .json::<Value>()
                .await
                .expect("its answer")
        })
    };
    eventually(EVENTUALLY, "the waiter in the queue", || async {
        (s.queue(&mine).await == ["myorg/myrepo#43"]).then_some(())
    })
    .await;
    until(
        &c,
        "the overview shows the queue length",
        EVENTUALLY,
        &format!(
            r#"return document.querySelector('{}').textContent === "1";"#,
            r#"tr[data-key="myorg/myrepo/./default/"] [data-field="queue"]"#
        ),
    )
    .await;
    assert!(still_same_document(&c, "overview").await);
    // Let the "new row" highlight fade, and take the focus off the filter box, before
    // the picture.
    c.execute("document.activeElement.blur(); return true;", vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    screenshot(&c, "overview.png", Some("web-overview.png")).await;

    // Its page, reached by the link in the row: holder and the queued waiter.
    click(&c, &format!("{row} th a")).await;
    element(
        &c,
        &format!(
            r#"#holder[data-owner="myorg/myrepo#42"][data-token="{}"]"#,
            first["lock"]["fencing_token"]
        ),
    )
    .await;
    element(&c, r#"tr[data-owner="myorg/myrepo#43"][data-position="1"]"#).await;
    element(&c, r#"#live[data-state="ok"]"#).await;

    // Anonymous: no actions offered, and the server refuses them when forged.
    assert!(c.find(Locator::Css("#force-unlock")).await.is_err());
    assert!(text(&c, "#actions-hint").await.contains("Log in as admin"));
    let forged = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const form = new URLSearchParams({repo: "myorg/myrepo", path: ".", workspace: "default",
                                                 project_name: "", fencing_token: "1"});
               fetch("/ui/lock/unlock", {method: "POST", body: form}).then(r => done(r.status), e => done(String(e)));"#,
            vec![],
        )
        .await
        .expect("a forged post");
    assert_eq!(
        forged,
        json!(401),
        "a post without credentials must be refused"
    );
    let lock_url = c.current_url().await.unwrap();
    let confirm_url = lock_url
        .as_str()
        .replacen("/ui/lock?", "/ui/lock/unlock?", 1);
    c.goto(&confirm_url).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Admin login needed · tflock");
    assert_eq!(s.holder(&mine).await.as_deref(), Some("myorg/myrepo#42"));

    // Log in through the form; the login link brings us back to the lock.
    c.goto(lock_url.as_str()).await.unwrap();
    click(&c, "#login").await;
    element(&c, "#token")
        .await
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    click(&c, "#login-submit").await;
    element(&c, "#force-unlock").await;
    assert_eq!(c.current_url().await.unwrap(), lock_url);
    let cookies = c.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|k| k.name() == "__Host-tflock_admin")
        .expect("the session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.secure(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    assert!(!session.value().contains(ADMIN_TOKEN));

    // A reservation joins the queue while the page is open: it appears live.
    element(&c, r#"#live[data-state="ok"]"#).await;
    mark_document(&c, "lock").await;
    s.acquire(json!({"resource": mine, "owner": "myorg/myrepo#44",
        "user": {"username": "erin"}, "priority": "low", "reserve": true,
        "pull": {"num": 44, "url": "https://github.com/myorg/myrepo/pull/44"}}))
        .await;
    element(&c, r#"tr[data-owner="myorg/myrepo#44"][data-position="2"]"#).await;
    element(&c, r#"tr[data-event="queue.entered"]"#).await;
    assert!(
        still_same_document(&c, "lock").await,
        "the lock page was reloaded"
    );
    // Tall enough for the whole lock page in one picture.
    c.set_window_size(1400, 1250).await.expect("resize");
    screenshot(&c, "lock.png", Some("web-lock.png")).await;
    c.set_window_size(1400, 1000).await.expect("resize");

    // Force unlock, with its confirmation step: the waiter gets the lock.
    click(&c, "#force-unlock").await;
    let confirm = text(&c, "#confirm").await;
    assert!(confirm.contains("myorg/myrepo#42"), "{confirm}");
    assert!(confirm.contains("myorg/myrepo#43"), "{confirm}");
    screenshot(&c, "confirm-unlock.png", None).await;
    click(&c, "#confirm-unlock").await;
    element(&c, r#"#holder[data-owner="myorg/myrepo#43"]"#).await;
    assert!(text(&c, "#flash").await.contains("Force unlock done"));
    let granted = tokio::time::timeout(EVENTUALLY, waiter)
        .await
        .expect("the waiter answered")
        .expect("the waiter task");
    assert_eq!(granted["acquired"], json!(true), "{granted}");
    assert_eq!(granted["lock"]["owner"], json!("myorg/myrepo#43"));
    // Tokens are floored at the store's clock (docs/contract.md): the hand-off's is
    // above the first holder's, and the page shows the grant's own.
    let token = &granted["lock"]["fencing_token"];
    assert!(
        token.as_u64() > first["lock"]["fencing_token"].as_u64(),
        "{granted} after {first}"
    );
    element(
        &c,
        &format!(r#"#holder[data-owner="myorg/myrepo#43"][data-token="{token}"]"#),
    )
    .await;
    assert_eq!(s.holder(&mine).await.as_deref(), Some("myorg/myrepo#43"));
    element(&c, r#"tr[data-event="lock.released"]"#).await;
    // The flash is for this visit only.
    assert!(!c.current_url().await.unwrap().as_str().contains("done="));

    // Cancel the reservation, with its confirmation step.
    click(&c, r#"a[data-owner="myorg/myrepo#44"]"#).await;
    assert!(text(&c, "h1").await.contains("myorg/myrepo#44"));
    assert!(
        text(&c, "#confirm")
            .await
            .contains("The reservation is dropped.")
    );
    click(&c, "#confirm-cancel").await;
    element(&c, "#queue-empty").await;
    assert!(s.queue(&mine).await.is_empty());
    screenshot(&c, "lock-after-unlock.png", None).await;

    // The overview follows too; then log out.
    c.goto(&s.url("/")).await.unwrap();
    assert_eq!(
        text(&c, &format!(r#"{row} [data-field="owner"]"#)).await,
        "myorg/myrepo#43"
    );
    click(&c, "#logout").await;
    element(&c, "#login").await;

    c.close().await.expect("close the browser");
    drop(driver);
    s.shutdown().await;
}
