//! The Redis backend beyond the contract suite, each test on its own redis-server:
//! TLS, start-up errors that name the setting, `FUNCTION FLUSH`, AOF restarts, a hung
//! server, `min_replicas_ack`, and two backends sharing one Redis.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tflock_core::{
    Backend, BackendError, LockRequest, LockSettings, ManualClock, Resource, SharedClock,
    SystemClock, TryLockError,
};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_testkit::{RedisOptions, RedisServer, TlsClientAuth, TlsMaterial};

fn resource(repo: &str) -> Resource {
    Resource::new(repo, ".", "default", "").unwrap()
}

fn settings() -> LockSettings {
    LockSettings {
        min_retry_backoff: Duration::from_millis(1),
        max_retry_backoff: Duration::from_millis(10),
        ..LockSettings::default()
    }
}

fn config_for(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        key_prefix: common::fresh_prefix(),
        ..common::with_test_timeouts(RedisConfig::standalone(server.addr().to_string()))
    }
}

async fn start(options: RedisOptions) -> Arc<RedisServer> {
    tokio::task::spawn_blocking(move || Arc::new(RedisServer::start(options)))
        .await
        .unwrap()
}

async fn connect(config: RedisConfig, clock: SharedClock) -> Arc<RedisBackend> {
    RedisBackend::connect(config, settings(), clock)
        .await
        .expect("connect")
}

async fn grant(b: &RedisBackend, req: LockRequest) -> tflock_core::Lock {
    let r = b.try_lock(req).await.expect("try_lock");
    assert!(r.acquired, "expected a grant: {r:?}");
    r.lock.unwrap()
}

/// Retries `f` until it succeeds (the backend reconnects by itself), bounded.
async fn eventually<T, E: std::fmt::Debug, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    start.elapsed() < limit,
                    "{what}: still failing after {limit:?}: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificate_and_verified_ca() {
    let tls = Arc::new(TlsMaterial::generate());
    let server = start(RedisOptions::default().tls(tls.clone(), TlsClientAuth::Required)).await;
    let config = RedisConfig {
        tls_enabled: true,
        tls_ca_file: Some(tls.ca_cert().to_path_buf()),
        tls_cert_file: Some(tls.client_cert().to_path_buf()),
        tls_key_file: Some(tls.client_key().to_path_buf()),
        ..config_for(&server)
    };
    let b = connect(config.clone(), Arc::new(SystemClock)).await;
    let r = resource("o/tls");
    let lock = grant(&b, LockRequest::new(r.clone(), "a")).await;
    let (waiter, _) = {
        let b2 = b.clone();
        let req = LockRequest::new(r.clone(), "b").with_wait(Duration::from_secs(20));
        (tokio::spawn(async move { b2.try_lock(req).await }), ())
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.unlock(&r, lock.lease_id.as_ref().unwrap()).await.unwrap();
    let w = waiter.await.unwrap().unwrap();
    assert!(
        w.acquired,
        "a waiter over TLS (its BLPOP connection too): {w:?}"
    );
    assert_eq!(b.health_check().await.unwrap().details["tls"], true);

    // Without the client certificate the server (tls-auth-clients yes) refuses.
    let no_cert = RedisConfig {
        tls_cert_file: None,
        tls_key_file: None,
        ..config
    };
    let err = RedisBackend::connect(no_cert, settings(), Arc::new(SystemClock))
        .await
        .expect_err("connecting without a client certificate");
    assert!(
        err.setting.starts_with("redis."),
        "the error names a setting: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_wrong_ca_names_tls_ca_file() {
    let tls = Arc::new(TlsMaterial::generate());
    let server = start(RedisOptions::default().tls(tls.clone(), TlsClientAuth::Optional)).await;
    let config = RedisConfig {
        tls_enabled: true,
        tls_ca_file: Some(tls.other_ca_cert().to_path_buf()),
        ..config_for(&server)
    };
    let err = RedisBackend::connect(config.clone(), settings(), Arc::new(SystemClock))
        .await
        .expect_err("a server certificate from another CA must be refused");
    assert_eq!(err.setting, "redis.tls_ca_file", "{err}");

    let missing = RedisConfig {
        tls_ca_file: Some("/nonexistent/ca.pem".into()),
        ..config
    };
    let err = RedisBackend::connect(missing, settings(), Arc::new(SystemClock))
        .await
        .expect_err("a CA file that does not exist");
    assert_eq!(err.setting, "redis.tls_ca_file", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_name_the_setting() {
    let server = start(RedisOptions::default().password("right-password")).await;
    let wrong = RedisConfig {
        password: Some("wrong-password".into()),
        ..config_for(&server)
    };
    let err = RedisBackend::connect(wrong, settings(), Arc::new(SystemClock))
        .await
        .expect_err("wrong password");
    assert_eq!(err.setting, "redis.password", "{err}");
    let none = config_for(&server);
    let err = RedisBackend::connect(none, settings(), Arc::new(SystemClock))
        .await
        .expect_err("no password");
    assert_eq!(err.setting, "redis.password", "{err}");
    let right = RedisConfig {
        password: Some("right-password".into()),
        ..config_for(&server)
    };
    connect(right, Arc::new(SystemClock)).await;

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = RedisBackend::connect(
        common::with_test_timeouts(RedisConfig::standalone(format!("127.0.0.1:{port}"))),
        settings(),
        Arc::new(SystemClock),
    )
    .await
    .expect_err("nothing listens there");
    assert_eq!(err.setting, "redis.addresses", "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let bad_prefix = RedisConfig {
        key_prefix: "a{b}:".into(),
        ..RedisConfig::standalone("127.0.0.1:1")
    };
    let err = RedisBackend::connect(bad_prefix, settings(), Arc::new(SystemClock))
        .await
        .expect_err("braces in the prefix");
    assert_eq!(err.setting, "redis.key_prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_outside_its_key_pattern_names_key_prefix() {
    let config = tokio::task::spawn_blocking(common::acl).await.unwrap();
    let outside = RedisConfig {
        key_prefix: "elsewhere:".into(),
        ..config
    };
    let err = RedisBackend::connect(outside, settings(), Arc::new(SystemClock))
        .await
        .expect_err("the ACL user may not touch keys outside its pattern");
    assert_eq!(err.setting, "redis.key_prefix", "{err}");
}

/// The backend's scripts are a function library: a node that loses it (`FUNCTION
/// FLUSH`, a restart without data) gets it again from the next call, which then
/// runs (`SCRIPT FLUSH`, which drops plain scripts, leaves functions alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_and_script_flush_between_calls_are_recovered() {
    let server = start(RedisOptions::default()).await;
    let b = connect(config_for(&server), Arc::new(SystemClock)).await;
    let r = resource("o/flush");
    let lock = grant(&b, LockRequest::new(r.clone(), "a")).await;
    for flush in [["FUNCTION", "FLUSH"], ["SCRIPT", "FLUSH"]] {
        assert_eq!(server.redis_cli(flush), "OK");
        let held = b.get_lock(&r).await.unwrap().expect("held");
        assert_eq!(held.fencing_token, lock.fencing_token);
    }
    assert_eq!(server.redis_cli(["FUNCTION", "FLUSH"]), "OK");
    b.unlock(&r, lock.lease_id.as_ref().unwrap()).await.unwrap();
    assert_eq!(server.redis_cli(["FUNCTION", "FLUSH"]), "OK");
    let again = grant(&b, LockRequest::new(r.clone(), "b")).await;
    assert!(again.fencing_token > lock.fencing_token);
    // One library of this build's version is loaded.
    let libs = server.redis_cli(["FUNCTION", "LIST"]);
    assert!(libs.contains("tflock_"), "{libs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_restart_keeps_leases_queue_and_tokens() {
    let server = start(RedisOptions::default().appendonly()).await;
    let clock = ManualClock::starting_now();
    let b = connect(config_for(&server), Arc::new(clock.clone())).await;
    let (r1, r2) = (resource("o/aof1"), resource("o/aof2"));
    let held = grant(&b, LockRequest::new(r1.clone(), "a")).await;
    let reserved = b
        .try_lock(LockRequest::new(r1.clone(), "b").reserving())
        .await
        .unwrap()
        .queue
        .expect("queued");
    let gone = grant(&b, LockRequest::new(r2.clone(), "c")).await;
    b.unlock(&r2, gone.lease_id.as_ref().unwrap())
        .await
        .unwrap();

    // kill -9 and restart on the same port and data: the AOF is replayed.
    let s = server.clone();
    tokio::task::spawn_blocking(move || {
        s.kill();
        s.restart();
    })
    .await
    .unwrap();

    // The same backend reconnects by itself.
    let after = eventually(
        "get_lock after the restart",
        Duration::from_secs(10),
        || b.get_lock(&r1),
    )
    .await;
    assert_eq!(after, Some(held.public()), "the lease survived");
    let queue = b.get_queue_status(&r1).await.unwrap().entries;
    let ids: Vec<_> = queue.iter().map(|e| e.entry.entry_id.as_str()).collect();
    assert_eq!(ids, [reserved.entry_id.as_str()], "the queue survived");
    let refreshed = b
        .refresh_lock(
            &r1,
            held.lease_id.as_ref().unwrap(),
            Duration::from_secs(60),
        )
        .await
        .expect("the lease id still works");
    assert_eq!(refreshed.fencing_token, held.fencing_token);
    let next = grant(&b, LockRequest::new(r2.clone(), "d")).await;
    assert!(
        next.fencing_token > gone.fencing_token,
        "the token counter survived"
    );
    let unlocked = b
        .unlock(&r1, held.lease_id.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        unlocked.granted_to.map(|e| e.entry.entry_id),
        Some(reserved.entry_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_is_unavailable_within_read_timeout() {
    let server = start(RedisOptions::default()).await;
    let read_timeout = Duration::from_secs(1);
    let config = RedisConfig {
        read_timeout,
        connection_timeout: read_timeout,
        dial_timeout: read_timeout,
        ..config_for(&server)
    };
    let b = connect(config, Arc::new(SystemClock)).await;
    let r = resource("o/hung");
    let lock = grant(&b, LockRequest::new(r.clone(), "a")).await;

    let s = server.clone();
    tokio::task::spawn_blocking(move || s.pause())
        .await
        .unwrap();
    for attempt in 0..3 {
        let started = Instant::now();
        let answer = b.try_lock(LockRequest::new(resource("o/other"), "b")).await;
        let took = started.elapsed();
        assert!(
            matches!(
                answer,
                Err(TryLockError::Backend(BackendError::Unavailable(_)))
            ),
            "attempt {attempt}: expected backend_unavailable, got {answer:?}"
        );
        assert!(
            took < read_timeout + Duration::from_millis(500),
            "attempt {attempt}: answered after {took:?}, read_timeout is {read_timeout:?}"
        );
    }
    let started = Instant::now();
    assert!(b.get_lock(&r).await.is_err());
    assert!(started.elapsed() < read_timeout + Duration::from_millis(500));

    let s = server.clone();
    tokio::task::spawn_blocking(move || s.resume())
        .await
        .unwrap();
    let held = eventually("get_lock after resume", Duration::from_secs(10), || {
        b.get_lock(&r)
    })
    .await;
    assert_eq!(held.map(|l| l.fencing_token), Some(lock.fencing_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_ack_confirms_or_rolls_back() {
    let (primary, replica) = common::primary_and_replica().await;

    let one = RedisConfig {
        min_replicas_ack: 1,
        ..config_for(&primary)
    };
    let b = connect(one, Arc::new(SystemClock)).await;
    let r = resource("o/acked");
    let lock = grant(&b, LockRequest::new(r.clone(), "a")).await;
    assert_eq!(
        b.get_lock(&r).await.unwrap().map(|l| l.fencing_token),
        Some(lock.fencing_token)
    );

    // Two replicas required, one exists: the grant is rolled back and reported.
    let two = RedisConfig {
        min_replicas_ack: 2,
        write_timeout: Duration::from_millis(200),
        ..config_for(&primary)
    };
    let b2 = connect(two, Arc::new(SystemClock)).await;
    let r2 = resource("o/unacked");
    let answer = b2.try_lock(LockRequest::new(r2.clone(), "a")).await;
    assert!(
        matches!(
            answer,
            Err(TryLockError::Backend(BackendError::Unavailable(_)))
        ),
        "an unconfirmed grant: {answer:?}"
    );
    assert_eq!(b2.get_lock(&r2).await.unwrap(), None, "rolled back");
    drop(replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_on_one_server_is_granted_by_an_unlock_on_another() {
    let server = start(RedisOptions::default()).await;
    let config = config_for(&server);
    let a = connect(config.clone(), Arc::new(SystemClock)).await;
    let b = connect(config, Arc::new(SystemClock)).await;
    let r = resource("o/shared");
    let lock = grant(&a, LockRequest::new(r.clone(), "holder")).await;
    let waiter = {
        let b = b.clone();
        let req = LockRequest::new(r.clone(), "waiter").with_wait(Duration::from_secs(20));
        tokio::spawn(async move { b.try_lock(req).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let unlocked = a.unlock(&r, lock.lease_id.as_ref().unwrap()).await.unwrap();
    assert!(unlocked.granted_to.is_some());
    let got = waiter.await.unwrap().unwrap();
    assert!(
        got.acquired && !got.lock.as_ref().unwrap().claim_pending,
        "{got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "woken by its BLPOP, not the 1 s fallback: {:?}",
        started.elapsed()
    );
    assert_eq!(
        a.get_lock(&r).await.unwrap().map(|l| l.owner.owner),
        Some("waiter".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_handed_on_within_a_second_on_the_system_clock() {
    let server = start(RedisOptions::default()).await;
    let b = connect(config_for(&server), Arc::new(SystemClock)).await;
    let r = resource("o/expiry");
    grant(
        &b,
        LockRequest::new(r.clone(), "short").with_ttl(Duration::from_millis(300)),
    )
    .await;
    let placement = b
        .try_lock(
            LockRequest::new(r.clone(), "next")
                .with_ttl(Duration::from_secs(60))
                .reserving(),
        )
        .await
        .unwrap()
        .queue
        .unwrap();
    let mut events = b.subscribe();
    let granted = tokio::time::timeout(Duration::from_millis(2500), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.event == tflock_core::EventKind::QueueGranted {
                return e;
            }
        }
    })
    .await
    .expect("the sweeper hands the expired lease on by itself within a second");
    assert_eq!(granted.entry_id, Some(placement.entry_id));
    assert_eq!(
        b.get_lock(&r).await.unwrap().map(|l| l.owner.owner),
        Some("next".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_of_a_waiter_whose_server_died_is_dropped_by_the_sweeper() {
    let server = start(RedisOptions::default()).await;
    let clock = ManualClock::starting_now();
    let config = config_for(&server);
    let dead = connect(config.clone(), Arc::new(clock.clone())).await;
    let alive = connect(config, Arc::new(clock.clone())).await;
    let r = resource("o/dead-waiter");
    grant(&alive, LockRequest::new(r.clone(), "holder")).await;

    // A waiting call that vanishes without running its drop guard, as when its
    // process is killed: its entry stays in Redis.
    let wait = Duration::from_secs(30);
    let mut call = Box::pin({
        let dead = dead.clone();
        let req = LockRequest::new(r.clone(), "ghost").with_wait(wait);
        async move { dead.try_lock(req).await }
    });
    let started = Instant::now();
    while alive.get_queue_status(&r).await.unwrap().entries.is_empty() {
        assert!(futures::poll!(&mut call).is_pending());
        assert!(started.elapsed() < Duration::from_secs(10), "never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::forget(call);
    tflock_core::Backend::close(&*dead).await;

    // Past its deadline the entry stays while a live waiter could still answer for
    // itself; once the grace after it has passed, the other server's sweeper drops it.
    clock.advance(wait + Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(alive.get_queue_status(&r).await.unwrap().entries.len(), 1);
    clock.advance(settings().claim_timeout + Duration::from_secs(60));
    let started = Instant::now();
    while !alive.get_queue_status(&r).await.unwrap().entries.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the sweeper did not drop the dead waiter's entry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
