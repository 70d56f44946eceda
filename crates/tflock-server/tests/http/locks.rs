//! Lock operations over HTTP: acquire, list, get, release, refresh, transfer,
//! release-pull, and Atlantis's `/api/locks`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tflock_core::ManualClock;

use crate::common::{Options, Store, TestServer, assert_error, query, resource};

async fn acquire_list_get_release_round_trip(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("myorg/myrepo", "default");
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({
                "resource": r, "owner": "myorg/myrepo#42",
                "user": {"username": "alice", "teams": ["platform"]},
                "pull": {"num": 42, "url": "https://x-token:secret@git.example/myorg/myrepo/pull/42"},
                "priority": "high", "ttl": "30m"
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], true);
    let lock = &body["lock"];
    assert_eq!(lock["key"], "myorg/myrepo/./default/");
    assert_eq!(lock["owner"], "myorg/myrepo#42");
    assert_eq!(lock["user"]["username"], "alice");
    assert_eq!(lock["priority"], "high");
    assert_eq!(
        lock["pull"]["url"], "https://git.example/myorg/myrepo/pull/42",
        "credentials are stripped from URLs"
    );
    let lease = lock["lease_id"]
        .as_str()
        .expect("the holder gets its lease id");
    assert_eq!(lease.len(), 32);
    assert!(lock["fencing_token"].as_u64().is_some());

    let (status, list) = s.get("/api/v1/locks").await;
    assert_eq!(status, StatusCode::OK);
    let locks = list["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0]["owner"], "myorg/myrepo#42");
    assert!(
        locks[0].get("lease_id").is_none(),
        "listing hides lease ids"
    );
    assert!(list.get("next_cursor").is_none());

    let (status, got) = s.get(&format!("/api/v1/lock?{}", query(&r))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["lock"]["fencing_token"], lock["fencing_token"]);
    assert!(got["lock"].get("lease_id").is_none());

    let (status, released) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": lease}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["released"]["owner"], "myorg/myrepo#42");
    assert!(released["released"].get("lease_id").is_none());
    assert!(released.get("granted_to").is_none());

    let (status, body) = s.get(&format!("/api/v1/lock?{}", query(&r))).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    s.shutdown().await;
}

async fn a_held_lock_is_reported_without_its_lease_id(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let first = s.lock(&r, "o/r#1").await;
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "not acquiring is a normal answer");
    assert_eq!(body["acquired"], false);
    assert_eq!(body["reason"], "held");
    assert_eq!(body["lock"]["owner"], "o/r#1");
    assert!(body["lock"].get("lease_id").is_none(), "{body}");
    assert_eq!(
        s.queue(&r).await["entries"],
        json!([]),
        "no entry left behind"
    );

    // The same owner without proof: owner strings are public, so not acquired
    // (`held_by_owner`), the public view only, and never queued behind itself.
    let (status, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acquired"], false, "{body}");
    assert_eq!(body["reason"], "held_by_owner", "{body}");
    assert!(body["lock"].get("lease_id").is_none(), "{body}");
    assert_eq!(s.queue(&r).await["entries"], json!([]));

    // With its lease as proof: a re-lock keeps lease and token.
    let (status, again) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#1", "lease_id": first["lease_id"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["acquired"], true, "{again}");
    assert_eq!(again["lock"]["lease_id"], first["lease_id"]);
    assert_eq!(again["lock"]["fencing_token"], first["fencing_token"]);
    s.shutdown().await;
}

async fn release_by_a_stranger_or_of_a_free_lock_is_refused(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": "00000000000000000000000000000000"}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    s.lock(&r, "o/r#1").await;
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": "00000000000000000000000000000000"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_owner", None);
    s.shutdown().await;
}

async fn refresh_extends_and_an_expired_lease_is_lost(store: Store) {
    let clock = ManualClock::starting_now();
    let s = TestServer::start_with(store, Options::with_clock(clock.clone())).await;
    let r = resource("o/r", "default");
    let (_, body) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": r, "owner": "o/r#1", "ttl": "1m"}),
        )
        .await;
    let lock = body["lock"].clone();
    let lease = lock["lease_id"].as_str().expect("lease");

    let (status, refreshed) = s
        .post(
            "/api/v1/locks/refresh",
            json!({"resource": r, "lease_id": lease, "ttl": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert!(
        refreshed["lock"]["expires_at"].as_str() > lock["expires_at"].as_str(),
        "{refreshed} vs {lock}"
    );
    assert_eq!(refreshed["lock"]["fencing_token"], lock["fencing_token"]);

    clock.advance(Duration::from_secs(2 * 3600));
    let (status, body) = s
        .post(
            "/api/v1/locks/refresh",
            json!({"resource": r, "lease_id": lease, "ttl": "1h"}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "lease_lost", None);
    s.shutdown().await;
}

async fn transfer_hands_a_new_lease_and_token_to_the_new_owner(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let lock = s.lock(&r, "o/r#1").await;
    let old = lock["lease_id"].as_str().expect("lease");
    let (status, body) = s
        .post(
            "/api/v1/locks/transfer",
            json!({"resource": r, "lease_id": old,
                   "to": {"owner": "o/r#2", "user": {"username": "bob"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = &body["lock"];
    assert_eq!(new["owner"], "o/r#2");
    assert_eq!(new["user"]["username"], "bob");
    assert_ne!(new["lease_id"], lock["lease_id"]);
    assert!(new["fencing_token"].as_u64() > lock["fencing_token"].as_u64());

    // The old lease stops working.
    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "lease_id": old}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "not_owner", None);
    let (status, body) = s
        .post(
            "/api/v1/locks/transfer",
            json!({"resource": r, "lease_id": old, "to": {"owner": "o/r#3"}}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "lease_lost", None);

    // Transfer of a free lock: not_found.
    let other = resource("o/r", "staging");
    let (status, body) = s
        .post(
            "/api/v1/locks/transfer",
            json!({"resource": other, "force": true, "to": {"owner": "o/r#3"}}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    s.shutdown().await;
}

async fn force_release_and_force_transfer_need_no_lease(store: Store) {
    let s = TestServer::start(store).await;
    let r = resource("o/r", "default");
    let lock = s.lock(&r, "o/r#1").await;
    let (status, body) = s
        .post(
            "/api/v1/locks/transfer",
            json!({"resource": r, "force": true, "to": {"owner": "o/r#9"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lock"]["owner"], "o/r#9");
    assert!(body["lock"]["fencing_token"].as_u64() > lock["fencing_token"].as_u64());

    let (status, body) = s
        .post(
            "/api/v1/locks/release",
            json!({"resource": r, "force": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["released"]["owner"], "o/r#9");
    let (status, _) = s.get(&format!("/api/v1/lock?{}", query(&r))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.shutdown().await;
}

async fn release_pull_releases_exactly_that_pull(store: Store) {
    let s = TestServer::start(store).await;
    let acquire = |repo: &'static str, ws: &'static str, pull: u64| {
        json!({"resource": resource(repo, ws), "owner": format!("{repo}#{pull}"),
               "pull": {"num": pull}})
    };
    for body in [
        acquire("o/r", "default", 1),
        acquire("o/r", "staging", 1),
        acquire("o/r2", "default", 1),
        acquire("o/r", "prod", 2),
    ] {
        let (status, b) = s.post("/api/v1/locks/acquire", body).await;
        assert_eq!(
            (status, &b["acquired"]),
            (StatusCode::OK, &json!(true)),
            "{b}"
        );
    }
    // A reservation of the same pull on a lock held by another pull is cancelled too.
    let (status, b) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": resource("o/r", "prod"), "owner": "o/r#1",
                   "pull": {"num": 1}, "reserve": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert!(b["queue"]["entry_id"].is_string(), "{b}");

    let (status, body) = s
        .post(
            "/api/v1/locks/release-pull",
            json!({"repo": "o/r", "pull": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut released: Vec<_> = body["released"]
        .as_array()
        .expect("released")
        .iter()
        .map(|l| l["key"].as_str().unwrap_or_default().to_string())
        .collect();
    released.sort();
    assert_eq!(released, ["o/r/./default/", "o/r/./staging/"]);
    assert!(body["released"][0].get("lease_id").is_none());
    assert_eq!(
        body["cancelled"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );

    let (_, list) = s.get("/api/v1/locks").await;
    let left: Vec<_> = list["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .map(|l| l["key"].clone())
        .collect();
    assert_eq!(left, [json!("o/r/./prod/"), json!("o/r2/./default/")]);
    s.shutdown().await;
}

async fn listing_filters_and_pages_in_key_order(store: Store) {
    let s = TestServer::start(store).await;
    for (repo, ws, owner, user) in [
        ("a/one", "default", "a/one#1", "alice"),
        ("a/one", "prod", "a/one#2", "bob"),
        ("b/two", "default", "b/two#1", "alice"),
    ] {
        let (status, b) = s
            .post(
                "/api/v1/locks/acquire",
                json!({"resource": resource(repo, ws), "owner": owner,
                       "user": {"username": user}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{b}");
    }
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["locks"]
            .as_array()
            .expect("locks")
            .iter()
            .map(|l| l["key"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (_, page1) = s.get("/api/v1/locks?limit=2").await;
    assert_eq!(keys(&page1), ["a/one/./default/", "a/one/./prod/"]);
    let cursor = page1["next_cursor"].as_str().expect("a next page");
    let (_, page2) = s
        .get(&format!("/api/v1/locks?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(keys(&page2), ["b/two/./default/"]);
    assert!(page2.get("next_cursor").is_none());

    let (_, by_repo) = s.get("/api/v1/locks?repo=a/one").await;
    assert_eq!(keys(&by_repo), ["a/one/./default/", "a/one/./prod/"]);
    let (_, by_user) = s.get("/api/v1/locks?user=alice").await;
    assert_eq!(keys(&by_user), ["a/one/./default/", "b/two/./default/"]);
    let (_, by_owner) = s.get("/api/v1/locks?owner=a/one%232").await;
    assert_eq!(keys(&by_owner), ["a/one/./prod/"]);
    s.shutdown().await;
}

async fn atlantis_list_has_atlantis_field_names(store: Store) {
    let s = TestServer::start(store).await;
    let (status, empty) = s.get("/api/locks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty, json!({"Locks": []}));
    let (status, b) = s
        .post(
            "/api/v1/locks/acquire",
            json!({"resource": {"repo": "myorg/myrepo", "path": "infra", "workspace": "prod",
                                "project_name": "net"},
                   "owner": "myorg/myrepo#7", "user": {"username": "carol"},
                   "pull": {"num": 7, "url": "https://git.example/myorg/myrepo/pull/7"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let (status, body) = s.get("/api/locks").await;
    assert_eq!(status, StatusCode::OK);
    let l = &body["Locks"][0];
    assert_eq!(l["Name"], "myorg/myrepo/infra/prod/net");
    assert_eq!(l["ProjectName"], "net");
    assert_eq!(l["ProjectRepo"], "myorg/myrepo");
    assert_eq!(l["ProjectRepoPath"], "infra");
    assert_eq!(l["PullID"], "7", "Atlantis sends PullID as a string");
    assert_eq!(l["PullURL"], "https://git.example/myorg/myrepo/pull/7");
    assert_eq!(l["User"], "carol");
    assert_eq!(l["Workspace"], "prod");
    assert_eq!(l["Time"], b["lock"]["acquired_at"]);
    s.shutdown().await;
}

crate::on_both_backends!(
    acquire_list_get_release_round_trip,
    a_held_lock_is_reported_without_its_lease_id,
    release_by_a_stranger_or_of_a_free_lock_is_refused,
    refresh_extends_and_an_expired_lease_is_lost,
    transfer_hands_a_new_lease_and_token_to_the_new_owner,
    force_release_and_force_transfer_need_no_lease,
    release_pull_releases_exactly_that_pull,
    listing_filters_and_pages_in_key_order,
    atlantis_list_has_atlantis_field_names,
);
