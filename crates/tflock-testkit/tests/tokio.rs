//! The harness from async tests: setup called directly, and a pause driven from
//! `spawn_blocking` while async code waits on the server.

use std::sync::Arc;
use std::time::Duration;

use tflock_testkit::{RedisOptions, RedisServer};

#[tokio::test]
async fn start_directly_and_pause_from_spawn_blocking() {
    // Blocking the runtime thread briefly for setup is fine.
    let redis = Arc::new(RedisServer::start(RedisOptions::default()));
    assert_eq!(redis.redis_cli(["SET", "k", "v"]), "OK");

    let paused = Arc::clone(&redis);
    tokio::task::spawn_blocking(move || paused.pause())
        .await
        .unwrap();
    // An async client with a deadline sees no answer while paused.
    let addr = redis.addr();
    let ping = tokio::time::timeout(Duration::from_millis(300), async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"PING\r\n").await.unwrap();
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply).await.unwrap();
        reply
    })
    .await;
    assert!(ping.is_err(), "a paused server answered: {ping:?}");

    let resumed = Arc::clone(&redis);
    tokio::task::spawn_blocking(move || resumed.resume())
        .await
        .unwrap();
    let redis_for_get = Arc::clone(&redis);
    let value = tokio::task::spawn_blocking(move || redis_for_get.redis_cli(["GET", "k"]))
        .await
        .unwrap();
    assert_eq!(value, "v");
}
