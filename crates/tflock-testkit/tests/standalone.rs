//! Standalone servers: basic commands, AOF durability across crash and restart, signals,
//! passwords, ACL users, and many servers started at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tflock_testkit::{AclUser, Auth, RedisOptions, RedisServer};

#[test]
fn ping_set_get() {
    let redis = RedisServer::start(RedisOptions::default());
    assert_eq!(redis.redis_cli(["PING"]), "PONG");
    assert_eq!(redis.redis_cli(["SET", "greeting", "hello"]), "OK");
    assert_eq!(redis.redis_cli(["GET", "greeting"]), "hello");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.addr().ip().to_string(), "127.0.0.1");
    assert!(redis.log_path().exists());
    // The memory-only default really is memory-only.
    assert_eq!(redis.redis_cli(["CONFIG", "GET", "save"]), "save");
    assert_eq!(
        redis.redis_cli(["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );
}

#[test]
fn aof_survives_sigkill_and_restart_on_the_same_port() {
    let redis = RedisServer::start(RedisOptions::default().appendonly());
    let port = redis.port();
    assert_eq!(redis.redis_cli(["SET", "fencing", "41"]), "OK");
    assert_eq!(redis.redis_cli(["INCR", "fencing"]), "42");

    // SIGKILL: only what `appendfsync always` put on disk survives.
    redis.kill();
    assert!(!redis.is_running());
    assert!(
        redis
            .cli()
            .run(["PING"])
            .stderr
            .contains("Connection refused")
    );
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.redis_cli(["GET", "fencing"]), "42");

    // And a clean stop, then restart.
    assert_eq!(redis.redis_cli(["SET", "after", "restart"]), "OK");
    redis.stop();
    redis.restart();
    assert_eq!(redis.redis_cli(["GET", "after"]), "restart");
    assert_eq!(redis.redis_cli(["GET", "fencing"]), "42");
}

#[test]
fn without_aof_a_restart_starts_empty() {
    let redis = RedisServer::start(RedisOptions::default());
    assert_eq!(redis.redis_cli(["SET", "k", "v"]), "OK");
    redis.restart();
    assert_eq!(redis.redis_cli(["EXISTS", "k"]), "0");
}

#[test]
fn paused_server_answers_nothing_until_resumed() {
    let redis = RedisServer::start(RedisOptions::default());
    redis.pause();
    assert!(redis.is_paused());
    let out = redis
        .cli()
        .timeout(Duration::from_millis(500))
        .run(["PING"]);
    assert!(out.timed_out, "a SIGSTOPped server answered: {out}");
    redis.resume();
    assert!(!redis.is_paused());
    assert_eq!(redis.redis_cli(["PING"]), "PONG");
}

#[test]
fn pause_from_another_thread_while_the_test_holds_a_reference() {
    let redis = Arc::new(RedisServer::start(RedisOptions::default()));
    let remote = Arc::clone(&redis);
    thread::spawn(move || remote.pause()).join().unwrap();
    assert!(redis.is_paused());
    redis.resume();
    assert_eq!(redis.redis_cli(["PING"]), "PONG");
}

#[test]
fn password_protects_the_default_user() {
    let redis = RedisServer::start(RedisOptions::default().password("s3cret"));
    assert_eq!(
        redis.url(),
        format!("redis://:s3cret@127.0.0.1:{}", redis.port())
    );
    assert_eq!(redis.redis_cli(["PING"]), "PONG");
    let anonymous = redis.cli().no_auth().query(["PING"]);
    assert!(anonymous.starts_with("NOAUTH"), "{anonymous}");
    let wrong = redis.cli().auth(Auth::password("nope")).run(["PING"]);
    assert!(
        format!("{}{}", wrong.stdout, wrong.stderr).contains("WRONGPASS"),
        "{wrong}"
    );
}

#[test]
fn acl_user_may_write_lock_keys_only() {
    let redis = RedisServer::start(
        RedisOptions::default()
            .acl_user(AclUser::new(
                "atlantis",
                "secret",
                "+@all ~atlantis:enhanced:lock:* &*",
            ))
            .default_user_off(),
    );
    assert_eq!(
        redis.url(),
        format!("redis://atlantis:secret@127.0.0.1:{}", redis.port())
    );
    assert_eq!(redis.redis_cli(["ACL", "WHOAMI"]), "atlantis");
    assert_eq!(
        redis.redis_cli(["SET", "atlantis:enhanced:lock:x", "1"]),
        "OK"
    );
    assert_eq!(redis.redis_cli(["GET", "atlantis:enhanced:lock:x"]), "1");
    let denied = redis.redis_cli(["SET", "other:x", "1"]);
    assert!(denied.starts_with("NOPERM"), "{denied}");

    // With the default user off, no credentials means no access.
    let anonymous = redis
        .cli()
        .no_auth()
        .query(["GET", "atlantis:enhanced:lock:x"]);
    assert!(anonymous.starts_with("NOAUTH"), "{anonymous}");
}

#[test]
fn many_servers_start_in_parallel_on_distinct_ports() {
    let servers: Vec<RedisServer> = thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| RedisServer::start(RedisOptions::default())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ports: HashSet<u16> = servers.iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), servers.len());
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(server.redis_cli(["SET", "me", &i.to_string()]), "OK");
    }
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(server.redis_cli(["GET", "me"]), i.to_string());
    }
}

#[test]
fn drop_kills_the_process_and_removes_the_directory() {
    let redis = RedisServer::start(RedisOptions::default());
    let pid = redis.pid().expect("running");
    let dir = redis.dir().to_owned();
    drop(redis);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
}

#[test]
fn extra_config_directives_apply() {
    let redis = RedisServer::start(RedisOptions::default().config("maxmemory 10mb"));
    assert_eq!(
        redis.redis_cli(["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n10485760"
    );
}

#[test]
fn server_outlives_the_thread_that_started_it() {
    // Children die with the *thread* that spawned them (PR_SET_PDEATHSIG), so the
    // harness spawns from one long-lived thread; a server started on a short-lived
    // thread must keep running after that thread ends.
    let redis = thread::spawn(|| RedisServer::start(RedisOptions::default()))
        .join()
        .unwrap();
    thread::sleep(Duration::from_millis(100)); // give a wrongly delivered SIGKILL time to land
    assert!(redis.is_running());
    assert_eq!(redis.redis_cli(["PING"]), "PONG");
}

#[test]
fn servers_are_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<RedisServer>();
    shareable::<tflock_testkit::RedisCluster>();
    shareable::<tflock_testkit::RedisSentinel>();
    shareable::<tflock_testkit::TlsMaterial>();
}
