//! Crash safety: a child process grants locks as fast as it can and is SIGKILLed at a
//! random point, 20 times in a row on the same file. After each kill the file must
//! open cleanly, every grant the child acknowledged must be there, and no fencing
//! token may go back.
//!
//! The child is this test binary itself, re-run with `TFLOCK_CRASH_CHILD` set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tflock_core::{Backend, LockRequest, LockSettings, Resource, SystemClock};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};

const KILLS: usize = 20;

fn settings() -> LockSettings {
    LockSettings {
        default_ttl: Duration::from_secs(24 * 3600),
        ..LockSettings::default()
    }
}

/// The child: grants forever, printing `ACK <kind> <n> <token>` after each answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(path) = std::env::var("TFLOCK_CRASH_CHILD") else {
        return;
    };
    let start: u64 = std::env::var("TFLOCK_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let backend = EmbeddedBackend::open(
        EmbeddedConfig {
            path: path.into(),
            settings: settings(),
        },
        Arc::new(SystemClock),
    )
    .await
    .expect("child opens the store");
    println!("READY");
    let hot = Resource::new("org/hot", ".", "default", "").unwrap();
    let mut tasks = Vec::new();
    // Four concurrent streams so that group commit batches several grants.
    for stream in 0..4u64 {
        let backend = backend.clone();
        let hot = hot.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = start + stream * 1_000_000;
            loop {
                n += 1;
                // A grant that is never released: it must survive every crash.
                let r = Resource::new("org/kept", format!("s{n}"), "default", "").unwrap();
                let resp = backend
                    .try_lock(LockRequest::new(r, "child"))
                    .await
                    .unwrap();
                println!("ACK kept {n} {}", resp.lock.unwrap().fencing_token.0);
                // A grant and release on one hot resource: its token must only go up.
                let resp = backend
                    .try_lock(
                        LockRequest::new(hot.clone(), format!("child{stream}"))
                            .with_wait(Duration::from_secs(60)),
                    )
                    .await
                    .unwrap();
                let lock = resp.lock.unwrap();
                println!("ACK hot {n} {}", lock.fencing_token.0);
                backend
                    .unlock(&hot, lock.lease_id.as_ref().unwrap())
                    .await
                    .unwrap();
            }
        }));
    }
    // The streams run until the parent kills this process.
    futures::future::join_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_grants_survive_sigkill_20_times() {
    if std::env::var("TFLOCK_CRASH_CHILD").is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks.redb");
    let exe = std::env::current_exe().unwrap();
    let mut kept: HashMap<u64, u64> = HashMap::new();
    let mut hot_max = 0u64;
    let mut rng = rand::rng();
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("TFLOCK_CRASH_CHILD", &path)
            .env(
                "TFLOCK_CRASH_START",
                ((round as u64 + 1) * 10_000_000).to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = rng.random_range(1..400usize);
        let pid = child.id() as i32;
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut acks = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ACK ") {
                    acks += 1;
                    lines.push(line);
                    if acks == kill_after {
                        // Kill while the child is in full flight.
                        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                } else if line.ends_with("READY") {
                    lines.push(line);
                }
            }
            lines
        });
        let lines = reader.join().unwrap();
        let status = child.wait().unwrap();
        assert!(
            lines.iter().any(|l| l.ends_with("READY")),
            "round {round}: child never opened the store"
        );
        assert!(
            !status.success(),
            "round {round}: the child ended by itself"
        );
        let mut acked = 0;
        for line in lines.iter().filter(|l| l.starts_with("ACK ")) {
            let parts: Vec<&str> = line.split(' ').collect();
            let (n, token): (u64, u64) = (parts[2].parse().unwrap(), parts[3].parse().unwrap());
            match parts[1] {
                "kept" => {
                    kept.insert(n, token);
                }
                "hot" => {
                    assert!(token > 0);
                    hot_max = hot_max.max(token);
                }
                other => panic!("bad line {other}"),
            }
            acked += 1;
        }
        // Reopen in this process: the file opens cleanly and holds every acknowledged grant.
        let backend = EmbeddedBackend::open(
            EmbeddedConfig {
                path: path.clone(),
                settings: settings(),
            },
            Arc::new(SystemClock),
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: the store does not reopen after SIGKILL: {e}"));
        for (n, token) in &kept {
            let r = Resource::new("org/kept", format!("s{n}"), "default", "").unwrap();
            let lock = backend.get_lock(&r).await.unwrap();
            let lock =
                lock.unwrap_or_else(|| panic!("round {round}: acknowledged grant s{n} is gone"));
            assert_eq!(
                lock.fencing_token.0, *token,
                "round {round}: s{n} token changed"
            );
        }
        let hot = Resource::new("org/hot", ".", "default", "").unwrap();
        // The hot lock may be held by a grant the child made but never acknowledged; a
        // new grant after it must still be above every acknowledged token.
        if let Some(l) = backend.get_lock(&hot).await.unwrap() {
            assert!(l.fencing_token.0 > 0);
            backend.force_unlock(&hot, None).await.unwrap();
        }
        let resp = backend
            .try_lock(LockRequest::new(hot.clone(), "verifier"))
            .await
            .unwrap();
        let verifier = resp.lock.unwrap();
        let t = verifier.fencing_token.0;
        assert!(
            t > hot_max,
            "round {round}: token {t} after acknowledged {hot_max}"
        );
        hot_max = t;
        // The verifier's own lease (an owner string alone does not re-lock).
        backend
            .unlock(&hot, &verifier.lease_id.unwrap())
            .await
            .unwrap();
        backend.close().await;
        eprintln!(
            "round {round}: killed after {acked} acknowledgements; {} kept grants verified",
            kept.len()
        );
    }
    assert!(!kept.is_empty());
}
