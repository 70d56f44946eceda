//! Admin export and import over HTTP: a round trip between two servers, the admin
//! token, the import body cap above the default one, bad snapshots, `/api/cluster`.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tflock_server::Limits;

use crate::common::{
    ADMIN_TOKEN, API_TOKEN, Options, Store, TestServer, assert_error, query, resource,
};

async fn export(s: &TestServer) -> Value {
    let (status, snapshot) = s.get_as("/api/v1/admin/export", ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{snapshot}");
    snapshot
}

async fn import(s: &TestServer, query: &str, snapshot: &Value) -> (StatusCode, Value) {
    s.post_as(
        &format!("/api/v1/admin/import{query}"),
        snapshot.clone(),
        ADMIN_TOKEN,
    )
    .await
}

async fn keys(s: &TestServer) -> Vec<String> {
    let (_, list) = s.get("/api/v1/locks").await;
    list["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .map(|l| l["key"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn export_and_import_move_a_store_between_servers(store: Store) {
    let a = TestServer::start_with(store, Options::with_tokens()).await;
    let r1 = resource("o/r", "default");
    let r2 = resource("o/r", "prod");
    let (_, held) = a
        .post_as(
            "/api/v1/locks/acquire",
            json!({"resource": r1, "owner": "o/r#1", "user": {"username": "alice"},
                   "pull": {"num": 1}}),
            API_TOKEN,
        )
        .await;
    let lease = held["lock"]["lease_id"]
        .as_str()
        .expect("lease")
        .to_string();
    a.post_as(
        "/api/v1/locks/acquire",
        json!({"resource": r2, "owner": "o/r#2"}),
        API_TOKEN,
    )
    .await;
    let (status, reserved) = a
        .post_as(
            "/api/v1/locks/acquire",
            json!({"resource": r1, "owner": "o/r#3", "reserve": true}),
            API_TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reserved}");

    let snapshot = export(&a).await;
    assert_eq!(snapshot["version"], 1);
    assert_eq!(snapshot["backend"], store.name());
    let resources = snapshot["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), 2, "{snapshot}");
    let first = resources
        .iter()
        .find(|r| r["resource"]["workspace"] == "default")
        .expect("o/r default");
    assert_eq!(
        first["lock"]["lease_id"],
        lease.as_str(),
        "export keeps lease ids"
    );
    assert_eq!(first["queue"][0]["owner"], "o/r#3");
    assert!(first["last_token"].as_u64() >= Some(1));

    let b = TestServer::start_with(store, Options::with_tokens()).await;
    let (status, dry) = import(&b, "?dry_run=true", &snapshot).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["imported"], 2, "{dry}");
    assert_eq!(
        keys(&b).await,
        Vec::<String>::new(),
        "a dry run changes nothing"
    );

    let (status, report) = import(&b, "?dry_run=false", &snapshot).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["queued"], 1, "{report}");
    assert_eq!(report["conflicts"], json!([]));
    assert_eq!(keys(&b).await, ["o/r/./default/", "o/r/./prod/"]);
    assert_eq!(b.queue(&r1).await["entries"][0]["owner"], "o/r#3");

    // Importing twice changes nothing.
    let (_, again) = import(&b, "", &snapshot).await;
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["unchanged"], 2, "{again}");

    // The holder's lease id works on the new server.
    let (status, released) = b
        .post_as(
            "/api/v1/locks/release",
            json!({"resource": r1, "lease_id": lease}),
            API_TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["granted_to"]["owner"], "o/r#3", "{released}");

    // A conflicting lock is reported, then replaced with overwrite=true.
    let (_, conflict) = import(&a, "", &export(&b).await).await;
    assert_eq!(
        conflict["conflicts"].as_array().map(Vec::len),
        Some(1),
        "{conflict}"
    );
    let (_, overwritten) = import(&a, "?overwrite=true", &export(&b).await).await;
    assert_eq!(overwritten["imported"], 1, "{overwritten}");
    let (_, got) = a.get(&format!("/api/v1/lock?{}", query(&r1))).await;
    assert_eq!(got["lock"]["owner"], "o/r#3");
    a.shutdown().await;
    b.shutdown().await;
}

async fn export_and_import_need_the_admin_token(store: Store) {
    let s = TestServer::start_with(store, Options::with_tokens()).await;
    let (status, body) = s.get("/api/v1/admin/export").await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let (status, body) = s.get_as("/api/v1/admin/export", API_TOKEN).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden", None);
    let snapshot = export(&s).await;
    let (status, body) = s.post("/api/v1/admin/import", snapshot.clone()).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    let (status, body) = s.post_as("/api/v1/admin/import", snapshot, API_TOKEN).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden", None);
    s.shutdown().await;
}

/// A snapshot of `n` held locks, each with a note of `note_len` bytes.
fn big_snapshot(store: Store, n: usize, note_len: usize) -> Value {
    let resources: Vec<Value> = (0..n)
        .map(|i| {
            let r = resource("big/repo", &format!("ws{i:05}"));
            json!({
                "resource": r,
                "lock": {
                    "key": format!("big/repo/./ws{i:05}/"), "resource": r,
                    "owner": format!("big/repo#{i}"), "note": "n".repeat(note_len),
                    "priority": "normal", "fencing_token": 1,
                    "acquired_at": "2026-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z",
                    "ttl": "1h", "lease_id": format!("{i:032x}")
                },
                "last_token": 1
            })
        })
        .collect();
    json!({"version": 1, "exported_at": "2026-01-01T00:00:00Z", "backend": store.name(),
           "resources": resources})
}

async fn an_import_may_exceed_the_default_body_cap_up_to_its_own(store: Store) {
    let s = TestServer::start_with(
        store,
        Options {
            limits: Limits {
                max_import_bytes: 1024 * 1024,
                ..Limits::default()
            },
            ..Options::with_tokens()
        },
    )
    .await;
    let snapshot = big_snapshot(store, 200, 1000);
    let size = snapshot.to_string().len();
    assert!(size > tflock_server::MAX_BODY_BYTES, "{size}");
    let (status, report) = import(&s, "", &snapshot).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["imported"], 200);
    assert_eq!(keys(&s).await.len(), 100, "the first page of 200 locks");

    let too_big = big_snapshot(store, 400, 4000);
    let (status, body) = import(&s, "", &too_big).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        None,
    );
    // Other routes keep the default cap.
    let (status, body) = s
        .post_as(
            "/api/v1/locks/acquire",
            json!({"resource": resource("o/r", "w"), "owner": "o/r#1",
                   "note": "x".repeat(tflock_server::MAX_BODY_BYTES)}),
            API_TOKEN,
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        None,
    );
    s.shutdown().await;
}

async fn a_bad_snapshot_changes_nothing_and_names_the_field(store: Store) {
    let s = TestServer::start_with(store, Options::with_tokens()).await;
    let good = big_snapshot(store, 2, 10);
    let mut cases = Vec::new();
    let mut v = good.clone();
    v["version"] = json!(99);
    cases.push((v, None));
    let mut v = good.clone();
    v["resources"][1]["resource"]["repo"] = json!("norepo");
    cases.push((v, Some("resources[1].resource.repo")));
    let mut v = good.clone();
    v["resources"][0]["lock"]["owner"] = json!("");
    cases.push((v, Some("resources[0].lock.owner")));
    let mut v = good.clone();
    v["resources"][0]["lock"]["fencing_token"] = json!(1u64 << 53);
    cases.push((v, Some("resources[0].lock.fencing_token")));
    let mut v = good.clone();
    v["resources"][1]["last_token"] = json!(u64::MAX);
    cases.push((v, Some("resources[1].last_token")));
    let mut v = good.clone();
    v["resources"][0]["lock"]["resource"]["workspace"] = json!("elsewhere");
    cases.push((v, Some("resources[0].lock.resource")));
    let mut v = good.clone();
    v["resources"][0]["lock"]["expires_at"] = json!("tomorrow");
    cases.push((v, Some("resources[0].lock.expires_at")));
    for (snapshot, field) in cases {
        let (status, body) = import(&s, "", &snapshot).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            field,
        );
    }
    let (status, body) = import(&s, "?dry_run=maybe", &good).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("dry_run"),
    );
    assert_eq!(keys(&s).await, Vec::<String>::new());
    s.shutdown().await;
}

async fn cluster_shows_this_node_and_no_leader(store: Store) {
    let s = TestServer::start(store).await;
    let (status, body) = s.get("/api/cluster").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["leader"], Value::Null);
    let nodes = body["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["self"], true);
    assert_eq!(nodes[0]["backend"], store.name());
    assert_eq!(nodes[0]["address"], s.addr.to_string());
    assert_eq!(nodes[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(nodes[0]["id"].as_str().map(str::len), Some(16));
    s.shutdown().await;
}

crate::on_both_backends!(
    export_and_import_move_a_store_between_servers,
    export_and_import_need_the_admin_token,
    an_import_may_exceed_the_default_body_cap_up_to_its_own,
    a_bad_snapshot_changes_nothing_and_names_the_field,
    cluster_shows_this_node_and_no_leader,
);
