//! TLS servers: client certificates, plain TCP refused, and both directions of "wrong CA".

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use tflock_testkit::{AclUser, RedisOptions, RedisServer, TlsClientAuth, TlsMaterial};

fn tls_server(client_auth: TlsClientAuth) -> (Arc<TlsMaterial>, RedisServer) {
    let material = Arc::new(TlsMaterial::generate());
    let server =
        RedisServer::start(RedisOptions::default().tls(Arc::clone(&material), client_auth));
    (material, server)
}

#[test]
fn client_certificate_works() {
    let (_material, redis) = tls_server(TlsClientAuth::Required);
    assert_eq!(redis.url(), format!("rediss://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.redis_cli(["SET", "k", "v"]), "OK");
    assert_eq!(redis.redis_cli(["GET", "k"]), "v");
    assert_eq!(redis.redis_cli(["CONFIG", "GET", "port"]), "port\n0");
}

#[test]
fn plain_tcp_to_the_tls_port_fails() {
    let (_material, redis) = tls_server(TlsClientAuth::Required);
    let out = redis
        .cli()
        .no_tls()
        .timeout(Duration::from_secs(5))
        .run(["PING"]);
    assert!(
        !out.stdout.contains("PONG"),
        "plain TCP got an answer: {out}"
    );

    // Below redis-cli: a raw RESP PING gets no PONG, only a closed connection.
    let mut stream = TcpStream::connect(redis.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(
        !String::from_utf8_lossy(&reply).contains("PONG"),
        "got {reply:?}"
    );
}

#[test]
fn required_client_certificate_is_enforced() {
    let (material, redis) = tls_server(TlsClientAuth::Required);
    let no_cert = redis.cli().tls(material.ca_cert()).run(["PING"]);
    assert!(!no_cert.stdout.contains("PONG"), "{no_cert}");
    let stranger = redis
        .cli()
        .tls(material.ca_cert())
        .client_cert(material.other_client_cert(), material.other_client_key())
        .run(["PING"]);
    assert!(!stranger.stdout.contains("PONG"), "{stranger}");
}

#[test]
fn client_trusting_another_ca_rejects_the_server() {
    let (material, redis) = tls_server(TlsClientAuth::NotRequested);
    let out = redis.cli().tls(material.other_ca_cert()).run(["PING"]);
    assert!(!out.success() && !out.stdout.contains("PONG"), "{out}");
    assert!(
        out.stderr.contains("certificate verify failed") || out.stdout.contains("certificate"),
        "{out}"
    );
}

#[test]
fn without_client_auth_a_ca_is_enough() {
    let (material, redis) = tls_server(TlsClientAuth::NotRequested);
    assert_eq!(redis.cli().tls(material.ca_cert()).query(["PING"]), "PONG");
}

#[test]
fn tls_with_an_acl_user() {
    let material = Arc::new(TlsMaterial::generate());
    let redis = RedisServer::start(
        RedisOptions::default()
            .tls(Arc::clone(&material), TlsClientAuth::Required)
            .acl_user(AclUser::new("atlantis", "secret", "+@all ~atlantis:* &*"))
            .default_user_off(),
    );
    assert_eq!(
        redis.url(),
        format!("rediss://atlantis:secret@127.0.0.1:{}", redis.port())
    );
    assert_eq!(redis.redis_cli(["ACL", "WHOAMI"]), "atlantis");
}
