//! What listing held locks costs: fills a fresh standalone redis-server with N held
//! locks, then pages through all of them (pages of 1,000) and through a filtered
//! listing (one repository of ten), checking that each listing is complete and
//! ordered.
//!
//! ```text
//! cargo run --release -p tflock-redis --example list_cost [N]
//! ```

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tflock_core::{Backend, LockFilter, LockRequest, LockSettings, Resource, SystemClock};
use tflock_redis::{BackendOptions, RedisBackend, RedisConfig};
use tflock_testkit::{RedisOptions, RedisServer};

async fn page_all(b: &RedisBackend, repo: Option<String>, limit: usize) -> (usize, usize) {
    let mut cursor = None;
    let (mut n, mut pages) = (0, 0);
    let mut prev: Option<String> = None;
    loop {
        let page = b
            .list_locks(LockFilter {
                repo: repo.clone(),
                cursor: cursor.clone(),
                limit: Some(limit),
                ..LockFilter::default()
            })
            .await
            .unwrap();
        pages += 1;
        for l in &page.locks {
            let sk = l.resource.storage_key();
            assert!(prev.as_ref().is_none_or(|p| *p < sk), "out of order");
            prev = Some(sk);
        }
        n += page.locks.len();
        match page.next_cursor {
            Some(c) => {
                assert_eq!(page.locks.len(), limit, "a page before the last is short");
                cursor = Some(c);
            }
            None => break,
        }
    }
    (n, pages)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let server = tokio::task::spawn_blocking(|| RedisServer::start(RedisOptions::default()))
        .await
        .unwrap();
    let config = RedisConfig::standalone(server.addr().to_string());
    let b = RedisBackend::connect_with(
        config,
        LockSettings::default(),
        Arc::new(SystemClock),
        BackendOptions::default(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let b = &*b;
            async move {
                let r = Resource::new(format!("o/r{}", i % 10), format!("d{i}"), "default", "")
                    .unwrap();
                let l = b.try_lock(LockRequest::new(r, "x")).await.unwrap();
                assert!(l.lock.is_some());
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    println!("filled {n} locks in {:.2?}", t.elapsed());
    let t = Instant::now();
    let (got, pages) = page_all(&b, None, 1000).await;
    assert_eq!(got, n);
    println!(
        "listed all {got} locks, {pages} pages of 1000: {:.2?}",
        t.elapsed()
    );
    let t = Instant::now();
    let (got, pages) = page_all(&b, Some("o/r3".into()), 1000).await;
    assert_eq!(got, n / 10);
    println!(
        "listed repo o/r3: {got} locks, {pages} pages of 1000: {:.2?}",
        t.elapsed()
    );
    let t = Instant::now();
    let (got, pages) = page_all(&b, None, 7).await;
    assert_eq!(got, n);
    println!(
        "listed all {got} locks, {pages} pages of 7: {:.2?}",
        t.elapsed()
    );
}
