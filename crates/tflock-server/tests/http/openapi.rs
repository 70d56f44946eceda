//! `GET /api/openapi.json`: every route of the router is in the document and every
//! documented operation is served; security schemes and error answers are there; the
//! served document drops the security a server without tokens does not enforce.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, Options, Store, TestServer};

/// `(METHOD, path)` of every operation in a document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                ops.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

fn routed() -> BTreeSet<(String, String)> {
    tflock_server::routes()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p.to_string()))
        .collect()
}

#[test]
fn every_route_is_documented_and_every_operation_is_a_route() {
    let doc = serde_json::to_value(tflock_server::openapi::openapi()).expect("json");
    let documented = documented(&doc);
    let routed = routed();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
    assert_eq!(routed.len(), 23, "{routed:?}");
}

/// Every documented operation reaches a handler of the running server: neither the
/// unknown-route 404 nor a 405.
#[tokio::test]
async fn every_documented_operation_is_served() {
    let s = TestServer::start_with(Store::Embedded, Options::with_tokens()).await;
    let (status, doc) = s.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for (method, path) in documented(&doc) {
        let concrete = path
            .replace("{username}", "alice")
            .replace("{entry_id}", "e1");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = s
            .client
            .request(method.clone(), s.url(&concrete))
            .bearer_auth(ADMIN_TOKEN);
        if method == Method::POST {
            req = req.json(&json!({}));
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        if concrete == "/api/events" {
            assert_eq!(status, StatusCode::OK);
            continue;
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {body}"
        );
        let unrouted = status == StatusCode::NOT_FOUND
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route"));
        assert!(!unrouted, "{method} {path} is not served: {body}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_document_has_bearer_schemes_and_every_error_answer() {
    let s = TestServer::start_with(Store::Embedded, Options::with_tokens()).await;
    let resp = s
        .client
        .get(s.url("/api/openapi.json"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        serde_json::to_value(tflock_server::openapi::openapi()).expect("json"),
        "a server with both tokens serves the whole document"
    );
    let schemes = &doc["components"]["securitySchemes"];
    for name in ["api_token", "admin_token"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }

    let op = |method: &str, path: &str| doc["paths"][path][method].clone();
    let error_ref = json!({"$ref": "#/components/schemas/ErrorBody"});
    let acquire = op("post", "/api/v1/locks/acquire");
    assert_eq!(
        acquire["security"],
        json!([{"api_token": []}, {"admin_token": []}])
    );
    for status in ["400", "401", "413", "429", "431", "500", "503"] {
        assert_eq!(
            acquire["responses"][status]["content"]["application/json"]["schema"], error_ref,
            "acquire {status}"
        );
    }
    assert!(
        acquire["responses"]["503"]["headers"]["Retry-After"].is_object(),
        "{acquire}"
    );
    assert!(
        acquire["responses"]["401"]["headers"]["WWW-Authenticate"].is_object(),
        "{acquire}"
    );
    for status in ["404", "409"] {
        assert!(op("post", "/api/v1/locks/release")["responses"][status].is_object());
    }
    for (method, path) in [
        ("post", "/api/v1/locks/release-pull"),
        ("get", "/api/v1/admin/export"),
        ("post", "/api/v1/admin/import"),
    ] {
        let o = op(method, path);
        assert_eq!(o["security"], json!([{"admin_token": []}]), "{path}");
        assert!(o["responses"]["403"].is_object(), "{path}");
    }
    let import = op("post", "/api/v1/admin/import");
    let params: Vec<_> = import["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| {
            (
                p["name"].clone(),
                p["in"].clone(),
                p["schema"]["type"].clone(),
            )
        })
        .collect();
    for name in ["dry_run", "overwrite"] {
        assert!(
            params.contains(&(json!(name), json!("query"), json!("boolean"))),
            "{params:?}"
        );
    }
    assert_eq!(
        import["requestBody"]["content"]["application/json"]["schema"],
        json!({"$ref": "#/components/schemas/Snapshot"})
    );
    // Reads carry no security requirement.
    assert!(op("get", "/api/v1/locks")["security"].is_null());
    assert!(op("get", "/api/v1/locks")["responses"]["401"].is_null());
    // The health report's 503 is the report itself, not the error body.
    assert_eq!(
        op("get", "/api/health/locking")["responses"]["503"]["content"]["application/json"]["schema"],
        json!({"$ref": "#/components/schemas/LockingHealth"})
    );
    assert_eq!(
        op("get", "/api/events")["responses"]["200"]["content"]["text/event-stream"]["schema"],
        json!({"$ref": "#/components/schemas/LockEvent"})
    );
    let cluster = &doc["components"]["schemas"]["ClusterView"];
    assert!(cluster["properties"]["nodes"].is_object(), "{cluster}");
    assert!(cluster["properties"]["leader"].is_object(), "{cluster}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_server_without_tokens_documents_no_security() {
    let s = TestServer::start(Store::Embedded).await;
    let (_, doc) = s.get("/api/openapi.json").await;
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_ascii_lowercase()];
        assert!(op["security"].is_null(), "{method} {path}: {op}");
        assert!(op["responses"]["401"].is_null(), "{method} {path}");
    }
    s.shutdown().await;

    // Only an admin token: mutating calls are open, admin calls are not.
    let s = TestServer::start_with(
        Store::Embedded,
        Options {
            tokens: tflock_server::Tokens {
                api: None,
                admin: tflock_server::Secret::new(ADMIN_TOKEN),
            },
            ..Options::default()
        },
    )
    .await;
    let (_, doc) = s.get("/api/openapi.json").await;
    assert!(doc["paths"]["/api/v1/locks/acquire"]["post"]["security"].is_null());
    assert_eq!(
        doc["paths"]["/api/v1/admin/export"]["get"]["security"],
        json!([{"admin_token": []}])
    );
    s.shutdown().await;
}
