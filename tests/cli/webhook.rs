//! `tflock server` with `server.github_webhook_secret`: a correctly signed GitHub
//! "pull request closed" event releases that pull's locks; a wrongly signed one is
//! refused with 401 and releases nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::common::*;

fn post(port: u16, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut s =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))
            .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn a_signed_github_close_event_releases_the_pulls_locks_and_a_bad_signature_is_401() {
    let mut env = Env::embedded();
    let secret = "gh-webhook-secret";
    env.start_server(
        &[],
        &[(
            "ATLANTIS_ENHANCED_LOCKING_SERVER_GITHUB_WEBHOOK_SECRET",
            secret,
        )],
    );
    assert!(
        !env.server_log().contains(secret),
        "the secret is never logged"
    );
    for (ws, owner) in [
        ("default", "myorg/myrepo#42"),
        ("staging", "myorg/myrepo#42"),
        ("prod", "myorg/myrepo#7"),
    ] {
        let (code, out, err) = output(env.client().args([
            "locks",
            "acquire",
            "--project=myorg/myrepo",
            &format!("--workspace={ws}"),
            "--owner",
            owner,
            "--pull",
            owner.rsplit('#').next().unwrap(),
        ]));
        assert_eq!(code, 0, "{out}{err}");
    }
    let body = r#"{"action":"closed","number":42,"pull_request":{"number":42,"merged":true},"repository":{"full_name":"myorg/myrepo"}}"#;

    // Wrong secret: refused, nothing released.
    let (status, answer) = post(
        env.port,
        "/api/vcs/github",
        &[
            ("X-GitHub-Event", "pull_request".into()),
            ("X-Hub-Signature-256", sign("wrong", body)),
        ],
        body,
    );
    assert_eq!(status, 401, "{answer}");
    let listed = env.json(&["locks", "list", "--json", "--server", &env.base()]);
    assert_eq!(
        listed["locks"].as_array().map(|a| a.len()),
        Some(3),
        "{listed}"
    );

    // Right secret: #42's two locks go, #7's stays.
    let (status, answer) = post(
        env.port,
        "/api/vcs/github",
        &[
            ("X-GitHub-Event", "pull_request".into()),
            ("X-Hub-Signature-256", sign(secret, body)),
        ],
        body,
    );
    assert_eq!(status, 200, "{answer}");
    let listed = env.json(&["locks", "list", "--json", "--server", &env.base()]);
    let owners: Vec<&str> = listed["locks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["owner"].as_str())
        .collect();
    assert_eq!(owners, ["myorg/myrepo#7"], "{listed}");
}
