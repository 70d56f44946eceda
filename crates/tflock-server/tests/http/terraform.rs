//! Terraform's http state backend at `/tf/{name}`, spoken the way Terraform speaks it
//! (LOCK/UNLOCK with a LockInfo body, state writes with `?ID=`, `Content-MD5`, basic
//! auth), on both backends. The real `terraform` binary is driven by the root
//! `tests/terraform` suite; these tests control the timing of each poll, which a real
//! Terraform does not let a test do: fairness between polling clients, losing a place
//! by not polling, the held-open LOCK, fencing after a lease ended, and bad input.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tflock_core::{LockSettings, SharedBackend, SystemClock};
use tflock_server::terraform::TerraformConfig;
use tflock_server::{AppState, Secret, Tokens};
use tflock_tfstate::{EmbeddedStates, RedisStates, StateStore, StoreOptions};

use crate::common::{
    ADMIN_TOKEN, API_TOKEN, Store, TestServer, open_backend, redis_config, shared_redis,
};

/// The settings a test server runs the Terraform backend with.
struct Tf {
    lock_ttl: Duration,
    queue_grace: Duration,
    long_poll: Duration,
    max_state_bytes: u64,
    tokens: bool,
}

impl Default for Tf {
    fn default() -> Self {
        Tf {
            lock_ttl: Duration::from_secs(600),
            queue_grace: Duration::from_secs(20),
            long_poll: Duration::ZERO,
            max_state_bytes: 1024 * 1024,
            tokens: false,
        }
    }
}

/// A test server with the Terraform backend on `store`.
async fn start(store: Store, tf: Tf) -> TestServer {
    let options = StoreOptions {
        max_state_bytes: tf.max_state_bytes,
        keep_versions: 5,
    };
    let (backend, states, keep): (
        SharedBackend,
        Arc<dyn StateStore>,
        Vec<Box<dyn std::any::Any + Send + Sync>>,
    ) = match store {
        Store::Embedded => {
            let (backend, mut keep) =
                open_backend(store, LockSettings::default(), Arc::new(SystemClock)).await;
            let dir = tempfile::tempdir().expect("tempdir");
            let states = EmbeddedStates::open(&dir.path().join("states.redb"), options)
                .expect("open the state store");
            keep.push(Box::new(dir));
            (backend, Arc::new(states), keep)
        }
        Store::Redis => {
            let server = tokio::task::spawn_blocking(shared_redis)
                .await
                .expect("start redis");
            let redis = tflock_redis::RedisBackend::connect(
                redis_config(&server),
                LockSettings::default(),
                Arc::new(SystemClock),
            )
            .await
            .expect("connect to redis");
            let states = RedisStates::new(redis.clone(), options);
            let backend: SharedBackend = redis;
            (backend, Arc::new(states), vec![Box::new(server)])
        }
    };
    let tokens = if tf.tokens {
        Tokens {
            api: Secret::new(API_TOKEN),
            admin: Secret::new(ADMIN_TOKEN),
        }
    } else {
        Tokens::none()
    };
    let mut config = TerraformConfig::new(states);
    config.lock_ttl = tf.lock_ttl;
    config.queue_grace = tf.queue_grace;
    config.long_poll = tf.long_poll;
    config.max_state_bytes = tf.max_state_bytes;
    let state = AppState::new(backend.clone(), tokens).with_terraform(config);
    TestServer::serve_state(store, state, backend, keep).await
}

/// A LockInfo as Terraform sends it.
fn info(id: &str) -> Value {
    json!({
        "ID": id,
        "Operation": "OperationTypeApply",
        "Info": "",
        "Who": "alice@ci",
        "Version": "1.11.4",
        "Created": "2026-12-02T03:23:21.497976895Z",
        "Path": ""
    })
}

fn state_doc(serial: u64, lineage: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "version": 4,
        "terraform_version": "1.11.4",
        "serial": serial,
        "lineage": lineage,
        "outputs": {"n": {"value": serial, "type": "number"}},
        "resources": [],
        "check_results": null
    }))
    .expect("json")
}

fn md5_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

/// One answer: status, headers, body text.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth {
    None,
    Basic(&'static str),
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    md5: Option<String>,
    auth: Auth,
) -> Answer {
    let mut req = server.client.request(
        Method::from_bytes(method.as_bytes()).expect("method"),
        server.url(path),
    );
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .header("content-md5", md5.unwrap_or_else(|| md5_b64(&b)))
            .body(b);
    }
    if let Auth::Basic(password) = auth {
        req = req.basic_auth("terraform", Some(password));
    }
    let resp = req.send().await.expect("send");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

async fn lock(server: &TestServer, name: &str, id: &str) -> Answer {
    send(
        server,
        "LOCK",
        &format!("/tf/{name}"),
        Some(info(id).to_string().into_bytes()),
        None,
        Auth::None,
    )
    .await
}

async fn unlock(server: &TestServer, name: &str, id: &str) -> Answer {
    send(
        server,
        "UNLOCK",
        &format!("/tf/{name}"),
        Some(info(id).to_string().into_bytes()),
        None,
        Auth::None,
    )
    .await
}

async fn put(server: &TestServer, name: &str, id: Option<&str>, doc: Vec<u8>) -> Answer {
    let path = match id {
        Some(id) => format!("/tf/{name}?ID={id}"),
        None => format!("/tf/{name}"),
    };
    send(server, "POST", &path, Some(doc), None, Auth::None).await
}

async fn get_state(server: &TestServer, name: &str) -> Answer {
    send(
        server,
        "GET",
        &format!("/tf/{name}"),
        None,
        None,
        Auth::None,
    )
    .await
}

fn tf_resource(name: &str) -> Value {
    json!({"repo": "tflock:terraform/state", "path": name, "workspace": "default", "project_name": ""})
}

async fn holder_token(server: &TestServer, name: &str) -> Option<u64> {
    let (status, body) = server
        .get(&format!(
            "/api/v1/lock?{}",
            crate::common::query(&tf_resource(name))
        ))
        .await;
    assert!(
        status.is_success() || status == StatusCode::NOT_FOUND,
        "{body}"
    );
    body["lock"]["fencing_token"]
        .as_u64()
        .or(body["fencing_token"].as_u64())
}

async fn round_trip(store: Store) {
    let s = start(store, Tf::default()).await;
    let a = lock(&s, "team/app/prod", "id-a").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.headers.contains_key("x-tflock-fencing-token"));
    assert_eq!(
        get_state(&s, "team/app/prod").await.status,
        StatusCode::NOT_FOUND
    );
    let doc = state_doc(1, "l1");
    let w = put(&s, "team/app/prod", Some("id-a"), doc.clone()).await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.text);
    assert_eq!(w.json()["version"], 1);
    let g = get_state(&s, "team/app/prod").await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(
        g.text.as_bytes(),
        doc.as_slice(),
        "GET gives back the bytes written"
    );
    assert_eq!(g.headers["content-md5"], md5_b64(&doc).as_str());
    let u = unlock(&s, "team/app/prod", "id-a").await;
    assert_eq!(u.status, StatusCode::OK, "{}", u.text);
    assert_eq!(holder_token(&s, "team/app/prod").await, None, "unlocked");
    // A retried UNLOCK (its first answer lost) is answered 200 too.
    assert_eq!(
        unlock(&s, "team/app/prod", "id-a").await.status,
        StatusCode::OK
    );
    s.shutdown().await;
}

async fn a_held_lock_answers_423_with_the_holder(store: Store) {
    let s = start(store, Tf::default()).await;
    assert_eq!(lock(&s, "x", "id-a").await.status, StatusCode::OK);
    let b = lock(&s, "x", "id-b").await;
    assert_eq!(b.status, StatusCode::LOCKED, "{}", b.text);
    let body = b.json();
    let id = body["ID"]
        .as_str()
        .expect("an ID, or Terraform gives up instead of retrying");
    assert!(id.contains("held by alice@ci"), "{id}");
    assert!(id.contains("number 1 in line"), "{id}");
    assert_eq!(body["Who"], "alice@ci");
    assert_eq!(b.headers["x-tflock-queue-position"], "1");
    assert!(
        !b.text.contains("id-a"),
        "the holder's lock ID is a secret: {}",
        b.text
    );
    s.shutdown().await;
}

/// Polling clients are served in the order they first asked, whoever polls first
/// after an unlock.
async fn polling_clients_are_granted_in_arrival_order(store: Store) {
    let s = start(store, Tf::default()).await;
    assert_eq!(lock(&s, "fair", "a").await.status, StatusCode::OK);
    for id in ["b", "c", "d"] {
        assert_eq!(lock(&s, "fair", id).await.status, StatusCode::LOCKED);
    }
    assert_eq!(unlock(&s, "fair", "a").await.status, StatusCode::OK);
    // c and d poll right after the unlock, before b: they must not barge in.
    assert_eq!(lock(&s, "fair", "d").await.status, StatusCode::LOCKED);
    assert_eq!(lock(&s, "fair", "c").await.status, StatusCode::LOCKED);
    assert_eq!(
        lock(&s, "fair", "b").await.status,
        StatusCode::OK,
        "b asked first"
    );
    assert_eq!(unlock(&s, "fair", "b").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "fair", "d").await.status, StatusCode::LOCKED);
    assert_eq!(
        lock(&s, "fair", "c").await.status,
        StatusCode::OK,
        "c asked second"
    );
    assert_eq!(unlock(&s, "fair", "c").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "fair", "d").await.status, StatusCode::OK);
    s.shutdown().await;
}

/// A client that stops polling loses its place after `queue_grace`: while queued, and
/// at the head of the queue when the lock frees.
async fn a_client_that_stops_polling_loses_its_place(store: Store) {
    let grace = Duration::from_secs(2);
    let s = start(
        store,
        Tf {
            queue_grace: grace,
            ..Tf::default()
        },
    )
    .await;
    assert_eq!(lock(&s, "p", "holder").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "p", "gone").await.status, StatusCode::LOCKED);
    assert_eq!(lock(&s, "p", "polls").await.status, StatusCode::LOCKED);
    assert_eq!(lock(&s, "p", "late").await.status, StatusCode::LOCKED);
    // "polls" and "late" keep polling ("late" first each round, so a place that
    // lapsed despite polling would put "polls" behind it); "gone" never comes back.
    let until = Instant::now() + grace * 2 + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(lock(&s, "p", "late").await.status, StatusCode::LOCKED);
        assert_eq!(lock(&s, "p", "polls").await.status, StatusCode::LOCKED);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(unlock(&s, "p", "holder").await.status, StatusCode::OK);
    assert_eq!(
        lock(&s, "p", "late").await.status,
        StatusCode::LOCKED,
        "polling keeps a place"
    );
    assert_eq!(
        lock(&s, "p", "polls").await.status,
        StatusCode::OK,
        "the silent client's place expired"
    );
    assert_eq!(unlock(&s, "p", "polls").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "p", "late").await.status, StatusCode::OK);
    assert_eq!(unlock(&s, "p", "late").await.status, StatusCode::OK);

    // At the head: granted while not polling, the grant lapses after queue_grace and
    // the next client gets it.
    assert_eq!(lock(&s, "h", "holder").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "h", "head").await.status, StatusCode::LOCKED);
    assert_eq!(lock(&s, "h", "next").await.status, StatusCode::LOCKED);
    assert_eq!(unlock(&s, "h", "holder").await.status, StatusCode::OK);
    let started = Instant::now();
    loop {
        let n = lock(&s, "h", "next").await;
        if n.status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < grace * 4,
            "next never got the lock: {}",
            n.text
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        started.elapsed() >= grace - Duration::from_millis(300),
        "the head kept its grant for queue_grace"
    );
    s.shutdown().await;
}

/// A repeated LOCK of a queued client is held open and answered 200 as soon as its
/// turn comes; the first LOCK is answered at once.
async fn a_repeated_lock_is_held_open_until_its_turn(store: Store) {
    let s = start(
        store,
        Tf {
            long_poll: Duration::from_secs(8),
            ..Tf::default()
        },
    )
    .await;
    assert_eq!(lock(&s, "lp", "a").await.status, StatusCode::OK);
    let t = Instant::now();
    assert_eq!(lock(&s, "lp", "b").await.status, StatusCode::LOCKED);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the first LOCK is answered at once: {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = Arc::new(s);
    let poller = {
        let s = s.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let a = lock(&s, "lp", "b").await;
            (a.status, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let unlocked = Instant::now();
    assert_eq!(unlock(&s, "lp", "a").await.status, StatusCode::OK);
    let (status, took) = poller.await.expect("poller");
    assert_eq!(status, StatusCode::OK, "the held-open LOCK got the lock");
    assert!(
        took >= Duration::from_millis(700),
        "it was held open: {took:?}"
    );
    assert!(
        unlocked.elapsed() < Duration::from_secs(3),
        "answered at the hand-off, not at long_poll: {:?}",
        unlocked.elapsed()
    );
    Arc::try_unwrap(s).ok().expect("one owner").shutdown().await;
}

/// Writes are fenced by the lock: a foreign ID, no ID while locked, and the ID of a
/// lock that ended and went to someone else are refused, and nothing is stored.
async fn writes_are_fenced_by_the_lock(store: Store) {
    let s = start(
        store,
        Tf {
            lock_ttl: Duration::from_secs(2),
            queue_grace: Duration::from_secs(1),
            ..Tf::default()
        },
    )
    .await;
    assert_eq!(lock(&s, "f", "a").await.status, StatusCode::OK);
    assert_eq!(
        put(&s, "f", Some("a"), state_doc(1, "l")).await.status,
        StatusCode::OK
    );
    let before = get_state(&s, "f").await.text;
    let foreign = put(&s, "f", Some("b"), state_doc(2, "l")).await;
    assert_eq!(foreign.status, StatusCode::LOCKED, "{}", foreign.text);
    let no_id = put(&s, "f", None, state_doc(2, "l")).await;
    assert_eq!(no_id.status, StatusCode::LOCKED, "{}", no_id.text);
    assert_eq!(get_state(&s, "f").await.text, before, "nothing stored");
    // a's lease (2 s) runs out; b takes the lock; a's late write is refused.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(lock(&s, "f", "b").await.status, StatusCode::OK);
    let stale = put(&s, "f", Some("a"), state_doc(2, "l")).await;
    assert!(
        matches!(stale.status, StatusCode::LOCKED | StatusCode::CONFLICT),
        "{} {}",
        stale.status,
        stale.text
    );
    assert_eq!(get_state(&s, "f").await.text, before, "nothing stored");
    assert_eq!(
        put(&s, "f", Some("b"), state_doc(2, "l")).await.status,
        StatusCode::OK
    );
    assert_eq!(unlock(&s, "f", "b").await.status, StatusCode::OK);
    // After b's unlock, a's ID is still refused (its lock ended), and a write without
    // an ID is fine while nobody holds the lock.
    let after = put(&s, "f", Some("a"), state_doc(3, "l")).await;
    assert_eq!(after.status, StatusCode::CONFLICT, "{}", after.text);
    assert_eq!(
        put(&s, "f", None, state_doc(3, "l")).await.status,
        StatusCode::OK
    );
    s.shutdown().await;
}

async fn serial_and_lineage_are_checked(store: Store) {
    let s = start(
        store,
        Tf {
            tokens: true,
            ..Tf::default()
        },
    )
    .await;
    let w = |doc: Vec<u8>, query: &'static str, auth: Auth| {
        let s = &s;
        async move { send(s, "POST", &format!("/tf/sl{query}"), Some(doc), None, auth).await }
    };
    assert_eq!(
        w(state_doc(5, "l1"), "", Auth::Basic(API_TOKEN))
            .await
            .status,
        StatusCode::OK
    );
    let before = send(&s, "GET", "/tf/sl", None, None, Auth::Basic(API_TOKEN))
        .await
        .text;
    let back = w(state_doc(4, "l1"), "", Auth::Basic(API_TOKEN)).await;
    assert_eq!(back.status, StatusCode::CONFLICT, "{}", back.text);
    assert!(back.text.contains("serial"), "{}", back.text);
    let lineage = w(state_doc(6, "l2"), "", Auth::Basic(API_TOKEN)).await;
    assert_eq!(lineage.status, StatusCode::CONFLICT, "{}", lineage.text);
    assert!(lineage.text.contains("lineage"), "{}", lineage.text);
    assert_eq!(
        send(&s, "GET", "/tf/sl", None, None, Auth::Basic(API_TOKEN))
            .await
            .text,
        before
    );
    // Forcing needs the admin token.
    assert_eq!(
        w(state_doc(4, "l1"), "?force=true", Auth::Basic(API_TOKEN))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w(state_doc(4, "l1"), "?force=true", Auth::Basic(ADMIN_TOKEN))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        w(state_doc(5, "l1"), "", Auth::Basic(API_TOKEN))
            .await
            .status,
        StatusCode::OK,
        "equal serial is fine"
    );
    s.shutdown().await;
}

async fn bad_input_is_refused_and_changes_nothing(store: Store) {
    let s = start(
        store,
        Tf {
            max_state_bytes: 4096,
            ..Tf::default()
        },
    )
    .await;
    let field = |a: &Answer| {
        a.json()["error"]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let not_json = send(
        &s,
        "LOCK",
        "/tf/bad",
        Some(b"{not json".to_vec()),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(
        (not_json.status, field(&not_json)),
        (StatusCode::BAD_REQUEST, "body".to_string()),
        "{}",
        not_json.text
    );
    let no_id = send(
        &s,
        "LOCK",
        "/tf/bad",
        Some(br#"{"Who":"x"}"#.to_vec()),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(no_id.status, StatusCode::BAD_REQUEST, "{}", no_id.text);
    assert!(no_id.text.contains("ID"), "{}", no_id.text);
    let empty_id = send(
        &s,
        "LOCK",
        "/tf/bad",
        Some(br#"{"ID":""}"#.to_vec()),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(
        (empty_id.status, field(&empty_id)),
        (StatusCode::BAD_REQUEST, "ID".to_string()),
        "{}",
        empty_id.text
    );
    let too_long = format!(r#"{{"ID":"x","Who":"{}"}}"#, "w".repeat(2000));
    let long_who = send(
        &s,
        "LOCK",
        "/tf/bad",
        Some(too_long.into_bytes()),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(
        (long_who.status, field(&long_who)),
        (StatusCode::BAD_REQUEST, "Who".to_string()),
        "{}",
        long_who.text
    );
    assert_eq!(
        holder_token(&s, "bad").await,
        None,
        "no refused LOCK took the lock"
    );
    // A field a later Terraform may add is not bad input.
    let newer = send(
        &s,
        "LOCK",
        "/tf/newer",
        Some(br#"{"ID":"x","Who":"a@b","Future":1}"#.to_vec()),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(newer.status, StatusCode::OK, "{}", newer.text);

    assert_eq!(
        put(&s, "bad", None, state_doc(1, "l")).await.status,
        StatusCode::OK
    );
    let before = get_state(&s, "bad").await.text;
    let md5 = send(
        &s,
        "POST",
        "/tf/bad",
        Some(state_doc(2, "l")),
        Some(md5_b64(b"other")),
        Auth::None,
    )
    .await;
    assert_eq!(
        (md5.status, field(&md5)),
        (StatusCode::BAD_REQUEST, "Content-MD5".to_string()),
        "{}",
        md5.text
    );
    let big = vec![b' '; 5000];
    let mut doc = state_doc(2, "l");
    doc.extend_from_slice(&big);
    let large = put(&s, "bad", None, doc).await;
    assert_eq!(
        large.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        large.text
    );
    assert!(large.text.contains("max_state_bytes"), "{}", large.text);
    let no_serial = put(&s, "bad", None, br#"{"version":4,"lineage":"l"}"#.to_vec()).await;
    assert_eq!(
        no_serial.status,
        StatusCode::BAD_REQUEST,
        "{}",
        no_serial.text
    );
    assert!(no_serial.text.contains("serial"), "{}", no_serial.text);
    let text = send(&s, "POST", "/tf/bad", None, None, Auth::None).await;
    assert_eq!(
        text.status,
        StatusCode::BAD_REQUEST,
        "an empty state is refused: {}",
        text.text
    );
    let plain = s
        .client
        .post(s.url("/tf/bad"))
        .header("content-type", "text/plain")
        .body(state_doc(3, "l"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        plain.status(),
        StatusCode::BAD_REQUEST,
        "a cross-site form post is refused"
    );
    assert_eq!(get_state(&s, "bad").await.text, before, "nothing stored");

    let unknown_state = unlock(&s, "never/seen", "x").await;
    assert_eq!(
        unknown_state.status,
        StatusCode::NOT_FOUND,
        "{}",
        unknown_state.text
    );
    for name in ["a//b", "../x", "a/./b", "/lead"] {
        let a = send(&s, "GET", &format!("/tf/{name}"), None, None, Auth::None).await;
        assert!(
            a.status == StatusCode::BAD_REQUEST || a.status == StatusCode::NOT_FOUND,
            "{name}: {} {}",
            a.status,
            a.text
        );
    }
    let bad_name = send(&s, "GET", "/tf/a//b", None, None, Auth::None).await;
    assert_eq!(field(&bad_name), "name", "{}", bad_name.text);
    let bad_prio = send(
        &s,
        "LOCK",
        "/tf/bad?priority=urgent",
        Some(info("p").to_string().into_bytes()),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(
        (bad_prio.status, field(&bad_prio)),
        (StatusCode::BAD_REQUEST, "priority".to_string()),
        "{}",
        bad_prio.text
    );
    let bad_method = send(&s, "PATCH", "/tf/bad", None, None, Auth::None).await;
    assert_eq!(bad_method.status, StatusCode::METHOD_NOT_ALLOWED);
    s.shutdown().await;
}

async fn auth_and_force_unlock(store: Store) {
    let s = start(
        store,
        Tf {
            tokens: true,
            ..Tf::default()
        },
    )
    .await;
    let body = || Some(info("a").to_string().into_bytes());
    assert_eq!(
        send(&s, "LOCK", "/tf/auth", body(), None, Auth::None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&s, "LOCK", "/tf/auth", body(), None, Auth::Basic("wrong"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&s, "GET", "/tf/auth", None, None, Auth::None)
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "a state holds secrets"
    );
    assert_eq!(
        send(&s, "LOCK", "/tf/auth", body(), None, Auth::Basic(API_TOKEN))
            .await
            .status,
        StatusCode::OK
    );
    // terraform force-unlock sends UNLOCK without a body: the admin's call.
    let user = send(&s, "UNLOCK", "/tf/auth", None, None, Auth::Basic(API_TOKEN)).await;
    assert_eq!(user.status, StatusCode::FORBIDDEN, "{}", user.text);
    assert!(holder_token(&s, "auth").await.is_some(), "still locked");
    let admin = send(
        &s,
        "UNLOCK",
        "/tf/auth",
        None,
        None,
        Auth::Basic(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.text);
    assert_eq!(holder_token(&s, "auth").await, None, "forced open");
    // The forced holder's writes are refused from now on.
    let late = send(
        &s,
        "POST",
        "/tf/auth?ID=a",
        Some(state_doc(1, "l")),
        None,
        Auth::Basic(API_TOKEN),
    )
    .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.text);
    // Bearer tokens work as well.
    let bearer = s
        .client
        .get(s.url("/api/v1/states"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(bearer.status(), StatusCode::OK);
    s.shutdown().await;
}

/// The lock ID proves the lock, so it is never shown: not in the lock views, the
/// queue, the state views or the 423 answers.
async fn lock_ids_never_leak(store: Store) {
    let s = start(store, Tf::default()).await;
    let secret = "26c7eccd-f845-0cc0-cd25-34edc0b1e009";
    assert_eq!(lock(&s, "leak", secret).await.status, StatusCode::OK);
    assert_eq!(
        put(&s, "leak", Some(secret), state_doc(1, "l"))
            .await
            .status,
        StatusCode::OK
    );
    let other = lock(&s, "leak", "waiting-client-secret").await;
    assert_eq!(other.status, StatusCode::LOCKED);
    let mut seen = vec![other.text];
    for path in [
        "/api/v1/locks".to_string(),
        format!(
            "/api/v1/queue?{}",
            crate::common::query(&tf_resource("leak"))
        ),
        format!(
            "/api/v1/lock?{}",
            crate::common::query(&tf_resource("leak"))
        ),
        "/api/v1/states".to_string(),
        "/api/v1/state?name=leak".to_string(),
        "/api/locks".to_string(),
    ] {
        let a = send(&s, "GET", &path, None, None, Auth::None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
        seen.push(a.text);
    }
    let all = seen.join("\n");
    assert!(all.contains("alice@ci"), "the holder is shown: {all}");
    for s in [secret, "waiting-client-secret"] {
        assert!(!all.contains(s), "a lock ID leaked: {all}");
    }
    let (_, state) = s.get("/api/v1/state?name=leak").await;
    assert_eq!(
        state["state"]["lock"]["owner"]
            .as_str()
            .map(|o| o.starts_with("alice@ci (terraform ")),
        Some(true),
        "{state}"
    );
    assert_eq!(
        state["history"][0]["lock_id"], state["state"]["lock"]["id"],
        "each version names the lock that wrote it"
    );
    assert!(state["history"][0]["token"].as_u64().is_some(), "{state}");
    s.shutdown().await;
}

/// `/tf-lock/{name}` with POST/DELETE, for `lock_method = "POST"`.
async fn the_lock_address_takes_post_and_delete(store: Store) {
    let s = start(store, Tf::default()).await;
    let b = || Some(info("pd").to_string().into_bytes());
    assert_eq!(
        send(&s, "POST", "/tf-lock/pd", b(), None, Auth::None)
            .await
            .status,
        StatusCode::OK
    );
    assert!(holder_token(&s, "pd").await.is_some());
    assert_eq!(
        send(&s, "DELETE", "/tf-lock/pd", b(), None, Auth::None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(holder_token(&s, "pd").await, None);
    s.shutdown().await;
}

/// `?priority=high` on the lock address (a hotfix pipeline's backend block) puts a
/// client ahead of normal ones that asked earlier.
async fn a_priority_on_the_lock_address_goes_first(store: Store) {
    let s = start(store, Tf::default()).await;
    assert_eq!(lock(&s, "prio", "holder").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "prio", "normal").await.status, StatusCode::LOCKED);
    let body = || Some(info("hotfix").to_string().into_bytes());
    let hotfix = send(
        &s,
        "LOCK",
        "/tf/prio?priority=high",
        body(),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(hotfix.status, StatusCode::LOCKED);
    assert_eq!(
        hotfix.headers["x-tflock-queue-position"], "1",
        "{}",
        hotfix.text
    );
    assert_eq!(unlock(&s, "prio", "holder").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "prio", "normal").await.status, StatusCode::LOCKED);
    let hotfix = send(
        &s,
        "LOCK",
        "/tf/prio?priority=high",
        body(),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(hotfix.status, StatusCode::OK, "{}", hotfix.text);
    s.shutdown().await;
}

/// A client that asks once (`-lock-timeout=0`, Terraform's default) and goes away
/// leaves no place behind that would hold the lock for `queue_grace` when it frees.
async fn a_client_that_asked_once_does_not_hold_up_the_queue(store: Store) {
    let s = start(store, Tf::default()).await;
    assert_eq!(lock(&s, "once", "holder").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "once", "plan").await.status, StatusCode::LOCKED);
    tokio::time::sleep(Duration::from_millis(4600)).await;
    assert_eq!(unlock(&s, "once", "holder").await.status, StatusCode::OK);
    let next = lock(&s, "once", "next").await;
    assert_eq!(
        next.status,
        StatusCode::OK,
        "the one-time asker is gone: {}",
        next.text
    );
    s.shutdown().await;
}

/// An UNLOCK whose lock ID holds nothing (a retry of an UNLOCK whose answer was lost,
/// after the lock went on to the next client; a state only ever locked) is 200 and
/// changes nothing: a 423 would make Terraform suggest a force-unlock.
async fn a_retried_unlock_is_answered_200_and_changes_nothing(store: Store) {
    let s = start(store, Tf::default()).await;
    assert_eq!(lock(&s, "ru", "a").await.status, StatusCode::OK);
    assert_eq!(lock(&s, "ru", "b").await.status, StatusCode::LOCKED);
    assert_eq!(unlock(&s, "ru", "a").await.status, StatusCode::OK);
    let token = holder_token(&s, "ru").await.expect("b's grant");
    let again = unlock(&s, "ru", "a").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(
        holder_token(&s, "ru").await,
        Some(token),
        "b still holds the lock"
    );
    assert_eq!(lock(&s, "ru", "b").await.status, StatusCode::OK);
    // A state that was only ever locked (terraform plan on a new state) is known.
    assert_eq!(lock(&s, "only-locked", "p").await.status, StatusCode::OK);
    assert_eq!(unlock(&s, "only-locked", "p").await.status, StatusCode::OK);
    let retry = unlock(&s, "only-locked", "p").await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    s.shutdown().await;
}

/// What Terraform decodes from a 423 must decode: `Created` is a time even when the
/// holder sent none, and a long `Who` still locks.
async fn odd_but_valid_lock_infos(store: Store) {
    let s = start(store, Tf::default()).await;
    let mut holder = info("odd");
    holder["Created"] = json!("");
    holder["Who"] = json!("w".repeat(1000));
    let a = send(
        &s,
        "LOCK",
        "/tf/odd",
        Some(holder.to_string().into_bytes()),
        None,
        Auth::None,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let b = lock(&s, "odd", "other").await;
    assert_eq!(b.status, StatusCode::LOCKED);
    let created = b.json()["Created"].as_str().unwrap_or_default().to_string();
    assert!(
        tflock_core::Timestamp::parse_rfc3339(&created).is_ok(),
        "Created must be a time for Terraform: {created:?}"
    );
    s.shutdown().await;
}

/// A state lock is a tflock lock: evented, on the web page, in the lock list and in
/// the metrics like any other.
async fn a_state_lock_is_shown_like_any_lock(store: Store) {
    let s = start(store, Tf::default()).await;
    let mut events = s.backend.subscribe();
    assert_eq!(lock(&s, "team/shown", "shown").await.status, StatusCode::OK);
    let event = tokio::time::timeout(crate::common::EVENTUALLY, async {
        loop {
            let e = events.recv().await.expect("event");
            if e.resource.path == "team/shown" {
                return e;
            }
        }
    })
    .await
    .expect("an event for the state lock");
    assert_eq!(event.event, tflock_core::EventKind::LockAcquired);
    assert_eq!(event.resource.repo, "tflock:terraform/state");
    let page = send(&s, "GET", "/", None, None, Auth::None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text.contains("team/shown"),
        "the web page lists the state lock"
    );
    let (_, list) = s.get("/api/v1/locks").await;
    assert!(list.to_string().contains("team/shown"), "{list}");
    let metrics = s.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tflock_operations_total")
                && l.contains("operation=\"terraform_lock\"")
                && l.contains("outcome=\"acquired\"")),
        "{metrics}"
    );
    s.shutdown().await;
}

crate::on_both_backends!(
    a_state_lock_is_shown_like_any_lock,
    a_client_that_asked_once_does_not_hold_up_the_queue,
    a_retried_unlock_is_answered_200_and_changes_nothing,
    odd_but_valid_lock_infos,
    a_priority_on_the_lock_address_goes_first,
    round_trip,
    a_held_lock_answers_423_with_the_holder,
    polling_clients_are_granted_in_arrival_order,
    a_client_that_stops_polling_loses_its_place,
    a_repeated_lock_is_held_open_until_its_turn,
    writes_are_fenced_by_the_lock,
    serial_and_lineage_are_checked,
    bad_input_is_refused_and_changes_nothing,
    auth_and_force_unlock,
    lock_ids_never_leak,
    the_lock_address_takes_post_and_delete,
);
