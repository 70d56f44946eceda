//! The queue's order as the scripts count it (issue #18: positions from `ZCOUNT`s on
//! the four lanes, not from reading the queue) against `tflock_core::queue`'s
//! `grant_order`, and the owner index `owners:<key>` that finds a request id's or
//! an owner's entry, including its lazy rebuild on a store written before it.
//!
//! On a real redis-server with a `ManualClock` (its instant travels in `ARGV[1]`).
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tflock_core::queue::{QueueEntry, StarvationPolicy, grant_order};
use tflock_core::{
    Clock, LockRequest, LockSettings, ManualClock, Priority, Resource, SharedBackend,
};
use tflock_redis::{RedisBackend, RedisConfig};

const THRESHOLD: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(10 * 3600);

fn settings(boost: u8, retention: Duration) -> LockSettings {
    LockSettings {
        max_queue_size: 1000,
        starvation_threshold: THRESHOLD,
        max_priority_boost: boost,
        max_timeout: LONG,
        default_ttl: Duration::from_secs(3600),
        request_id_retention: retention,
        ..LockSettings::default()
    }
}

async fn open(settings: &LockSettings) -> (RedisConfig, ManualClock, SharedBackend) {
    let config = common::config_for(common::standalone).await;
    let clock = ManualClock::starting_now();
    let backend: SharedBackend =
        RedisBackend::connect(config.clone(), settings.clone(), Arc::new(clock.clone()))
            .await
            .expect("connect to Redis");
    (config, clock, backend)
}

fn resource() -> Resource {
    Resource::new("order/queue", "stack", "default", "").unwrap()
}

/// A reservation of `owner` under `rid` (or none), living long past the test.
fn reserve(r: &Resource, owner: &str, rid: Option<&str>, prio: Priority) -> LockRequest {
    let mut q = LockRequest::new(r.clone(), owner)
        .with_ttl(Duration::from_secs(3600))
        .with_wait(LONG)
        .with_priority(prio)
        .reserving();
    if let Some(rid) = rid {
        q = q.with_request_id(rid);
    }
    q
}

async fn take_holder(b: &SharedBackend, r: &Resource) {
    let held = b
        .try_lock(LockRequest::new(r.clone(), "order/holder").with_ttl(LONG))
        .await
        .unwrap();
    assert!(held.acquired);
}

/// The raw keys of the store's owner indexes (`P{b:NN}:owners:<resource key>`),
/// counted or deleted by a script of its own, as an older build's store would lack
/// them.
fn ix_keys(config: &RedisConfig, delete: bool) -> usize {
    let script = "local ks = redis.call('KEYS', ARGV[1]) \
                  if ARGV[2] == '1' then for _, k in ipairs(ks) do redis.call('DEL', k) end end \
                  return #ks";
    let pattern = format!("{}*owners:*", config.key_prefix);
    let out = common::standalone_server().redis_cli([
        "EVAL",
        script,
        "0",
        &pattern,
        if delete { "1" } else { "0" },
    ]);
    out.trim()
        .trim_start_matches("(integer) ")
        .parse()
        .unwrap_or_else(|_| panic!("EVAL answered {out:?}"))
}

/// Every entry's place as the backend answers it (`get_queue_status`, and a retry of
/// each reservation) against `grant_order` of the same entries at the clock's now.
async fn check_positions(
    b: &SharedBackend,
    clock: &ManualClock,
    policy: &StarvationPolicy,
    r: &Resource,
    owners: &[(String, String, Priority)],
    alt: bool,
    label: &str,
) {
    let status = b.get_queue_status(r).await.unwrap();
    assert_eq!(status.entries.len(), owners.len(), "{label}: queue length");
    let entries: Vec<QueueEntry> = status.entries.iter().map(|v| v.entry.clone()).collect();
    let want: HashMap<String, usize> = grant_order(&entries, clock.now(), policy)
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e.entry_id, i + 1))
        .collect();
    for v in &status.entries {
        assert_eq!(
            v.position, want[&v.entry.entry_id],
            "{label}: status of {}",
            v.entry.entry_id
        );
    }
    let by_owner: HashMap<&str, &str> = entries
        .iter()
        .map(|e| (e.owner.owner.as_str(), e.entry_id.as_str()))
        .collect();
    for (owner, rid, prio) in owners {
        // The retry with the reservation's own request id (its answer kept, or
        // forgotten past request_id_retention: then the index finds the entry), or
        // another request id of the same owner (the place held, by the owner index).
        let rid = if alt {
            format!("{rid}-again")
        } else {
            rid.clone()
        };
        let a = b
            .try_lock(reserve(r, owner, Some(&rid), *prio))
            .await
            .unwrap();
        assert!(!a.acquired, "{label}: {owner} acquired");
        let q = a
            .queue
            .clone()
            .unwrap_or_else(|| panic!("{label}: {owner} has no place: {a:?}"));
        assert_eq!(
            q.entry_id,
            by_owner[owner.as_str()],
            "{label}: {owner}'s entry"
        );
        assert_eq!(
            q.position, want[&q.entry_id],
            "{label}: {owner}'s position (entry {}, prio {prio:?})",
            q.entry_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_match_grant_order() {
    let runs = [
        (18u64, 1u8, true),
        (19, 2, true),
        (20, 3, true),
        (21, 0, true),
    ];
    let runs = runs
        .into_iter()
        .chain([(22, 1, false), (23, 2, false), (24, 3, false)]);
    for (seed, boost, grid) in runs {
        // Answers are forgotten after 60 s, so the early entries' retries find their
        // entry through the index, the later ones through their kept answer.
        let s = settings(boost, Duration::from_secs(60));
        let policy = StarvationPolicy {
            starvation_threshold: s.starvation_threshold,
            max_priority_boost: s.max_priority_boost,
        };
        let (_config, clock, b) = open(&s).await;
        let r = resource();
        take_holder(&b, &r).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut owners = Vec::new();
        for i in 0..200 {
            // Same instants (ties by entry id), and either whole half-seconds (so that
            // at the checks below, themselves half-seconds apart, entries fall exactly
            // on threshold boundaries) or arbitrary µs.
            let step = match (rng.random_range(0..4), grid) {
                (0, _) => Duration::ZERO,
                (_, true) => Duration::from_millis(500 * rng.random_range(1..5)),
                (_, false) => Duration::from_micros(rng.random_range(1..3_000_000)),
            };
            clock.advance(step);
            let prio = Priority::from_rank(rng.random_range(0..4));
            let owner = format!("order/o{i}");
            let rid = format!("rid-{i}");
            let a = b
                .try_lock(reserve(&r, &owner, Some(&rid), prio))
                .await
                .unwrap();
            assert!(a.queue.is_some(), "seed {seed}: {owner} queued: {a:?}");
            owners.push((owner, rid, prio));
        }
        for (k, later) in [0u64, 3_500, 10_000, 25_000, 47_500, 120_000]
            .into_iter()
            .enumerate()
        {
            clock.advance(Duration::from_millis(later));
            let label = format!("seed {seed}, boost {boost}, grid {grid}, instant {k}");
            check_positions(&b, &clock, &policy, &r, &owners, k % 2 == 1, &label).await;
        }
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_the_owner_index_gets_it_rebuilt() {
    let s = settings(3, Duration::from_secs(5));
    let (config, clock, b) = open(&s).await;
    let r = resource();
    take_holder(&b, &r).await;
    let mut first = HashMap::new();
    for (i, owner) in ["order/a", "order/b", "order/c"].into_iter().enumerate() {
        clock.advance(Duration::from_secs(1));
        let prio = Priority::from_rank(i as u64);
        let a = b
            .try_lock(reserve(&r, owner, Some(&format!("{owner}-1")), prio))
            .await
            .unwrap();
        first.insert(owner, a.queue.unwrap().entry_id);
    }
    // A waiter too (its own call blocks; it only needs to be in the queue).
    let waiter = {
        let b = b.clone();
        let r = r.clone();
        tokio::spawn(async move {
            b.try_lock(
                LockRequest::new(r, "order/w")
                    .with_request_id("order/w-1")
                    .with_wait(Duration::from_secs(3600)),
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + tflock_testkit::DEFAULT_TIMEOUT;
    while b.get_queue_status(&r).await.unwrap().entries.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = b.get_queue_status(&r).await.unwrap();
    // The kept answers are forgotten: a retry must find its entry by the index.
    clock.advance(Duration::from_secs(10));
    // The store as a build before the index wrote it.
    assert_eq!(ix_keys(&config, true), 1, "the index existed");
    assert_eq!(ix_keys(&config, false), 0);

    // A retry with the first request id joins the same entry, at its place.
    let a = b
        .try_lock(reserve(&r, "order/a", Some("order/a-1"), Priority::Low))
        .await
        .unwrap();
    let q = a.queue.expect("a's place");
    assert_eq!(q.entry_id, first["order/a"]);
    assert_eq!(ix_keys(&config, false), 1, "rebuilt by the retry");
    // Positions move with time (boosts): compare with the status at this instant.
    let now_status = b.get_queue_status(&r).await.unwrap();
    let pos_now = |id: &str| {
        now_status
            .entries
            .iter()
            .find(|v| v.entry.entry_id == id)
            .map(|v| v.position)
            .unwrap()
    };
    assert_eq!(q.position, pos_now(&first["order/a"]));

    // Reserving again under another request id of the same owner: the place held.
    ix_keys(&config, true);
    let bb = b
        .try_lock(reserve(&r, "order/b", Some("order/b-2"), Priority::Normal))
        .await
        .unwrap();
    let q = bb.queue.expect("b's place");
    assert_eq!(
        q.entry_id, first["order/b"],
        "the place held, not a second entry"
    );
    assert_eq!(q.position, pos_now(&first["order/b"]));
    // And without a request id.
    ix_keys(&config, true);
    let c = b
        .try_lock(reserve(&r, "order/c", None, Priority::High))
        .await
        .unwrap();
    assert_eq!(c.queue.unwrap().entry_id, first["order/c"]);
    assert_eq!(
        b.get_queue_status(&r).await.unwrap().entries.len(),
        4,
        "no new entry"
    );

    // The waiter's retry (no kept answer, the index gone) waits on its entry: a
    // retry without wait answers its place.
    ix_keys(&config, true);
    let w = b
        .try_lock(LockRequest::new(r.clone(), "order/w").with_request_id("order/w-1"))
        .await
        .unwrap();
    let wid = before
        .entries
        .iter()
        .find(|v| v.entry.owner.owner == "order/w")
        .unwrap();
    assert_eq!(w.queue.expect("w's place").entry_id, wid.entry.entry_id);

    // The rebuilt index is kept up to date: a's entry cancelled, a new reservation
    // of a is a new entry; the last entry gone, the index goes with it.
    b.cancel_queue_entry(&first["order/a"], Some(&r))
        .await
        .unwrap();
    let again = b
        .try_lock(reserve(&r, "order/a", Some("order/a-3"), Priority::Low))
        .await
        .unwrap();
    let again = again.queue.unwrap().entry_id;
    assert_ne!(again, first["order/a"]);
    assert_eq!(b.get_queue_status(&r).await.unwrap().entries.len(), 4);
    for v in b.get_queue_status(&r).await.unwrap().entries {
        b.cancel_queue_entry(&v.entry.entry_id, Some(&r))
            .await
            .unwrap();
    }
    let ended = waiter.await.unwrap().unwrap();
    assert!(!ended.acquired);
    assert_eq!(
        ix_keys(&config, false),
        0,
        "the index goes with the last entry"
    );
    b.close().await;
}
