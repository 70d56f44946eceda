//! Four `terraform apply -lock-timeout=5m` on one state, started 400 ms apart so the
//! order they ask for the lock is known: all succeed, they hold the lock one at a time,
//! in the order they asked (read from the server's event stream: the first event of
//! each lock ID's owner is its arrival, its `lock.acquired` / `queue.granted` its
//! grant), and every apply's write lands (the serial goes up by 4).
//!
//! With Terraform >= 1.4 each apply takes ~2 s (a `terraform_data` with a `local-exec`
//! `sleep 2`, builtin: nothing is downloaded); older versions have no builtin resource,
//! so their applies change outputs only and are short; they start 60 ms apart so that
//! they still overlap (the order is still asserted, against arrival by event).
//!
//! Terraform before 1.2.4 cannot queue at all: its http backend took a 423 as a plain
//! error and ignored `-lock-timeout` (hashicorp/terraform#31256), so with such a
//! version the four applies run one after another (each starts when the previous one
//! ended) and the test says so; the fair queue is then not exercised.

use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    API_TOKEN, Config, Env, Events, Workdir, ok, server, stored, terraform, wait_for,
};

const STATE: &str = "team/app/queue";
const APPLIES: usize = 4;
/// Between two starts: 400 ms with ~2 s applies; 60 ms when applies are outputs only
/// (Terraform < 1.4, well under a second each), so that they still overlap and queue.
fn stagger() -> Duration {
    if terraform().has_terraform_data() {
        Duration::from_millis(400)
    } else {
        Duration::from_millis(60)
    }
}

fn serial(env: &Env) -> u64 {
    let v: Value = serde_json::from_slice(&stored(env, STATE).expect("a stored state")).unwrap();
    v["serial"].as_u64().unwrap()
}

fn concurrent_applies(env: Env, store: &str) {
    let env = server(env, "");
    let tf = terraform();
    let config = Config { sleep_s: 2 };
    if !tf.has_terraform_data() {
        println!(
            "terraform {} has no builtin terraform_data: the applies change outputs only",
            tf.version_string()
        );
    }
    let events = Events::subscribe(&env);

    // One client per apply (each its own data dir), initialised in parallel.
    let dirs: Vec<Workdir> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..=APPLIES)
            .map(|_| s.spawn(|| Workdir::init(&env, STATE, API_TOKEN, config)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let apply_args = |n: usize| {
        vec![
            "apply".to_string(),
            "-auto-approve".into(),
            "-input=false".into(),
            "-no-color".into(),
            "-lock-timeout=5m".into(),
            "-var".into(),
            format!("n={n}"),
        ]
    };
    // The state exists before the race (apply 0), so each of the four adds one serial.
    let a0: Vec<String> = apply_args(0);
    ok(
        "the first apply",
        &dirs[0].run(&a0.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    let serial0 = serial(&env);
    let mark = events.of(STATE).len();

    let t0 = Instant::now();
    let outputs: Vec<(usize, Duration, Output, Duration)> = if tf.waits_for_locks() {
        let mut children = Vec::new();
        for (i, dir) in dirs.iter().enumerate().skip(1) {
            if i > 1 {
                std::thread::sleep(stagger());
            }
            let args = apply_args(i);
            let child = dir
                .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            children.push((i, t0.elapsed(), child));
        }
        // Each waited for on its own thread, so its end time is its own.
        children
            .into_iter()
            .map(|(i, started, c)| {
                std::thread::spawn(move || {
                    let out = c.wait_with_output().unwrap();
                    (i, started, out, t0.elapsed())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    } else {
        println!(
            "[{store}] terraform {} does not wait for a held lock over http \
             (hashicorp/terraform#31256, fixed in 1.2.4): the applies run one after another",
            tf.version_string()
        );
        dirs.iter()
            .enumerate()
            .skip(1)
            .map(|(i, dir)| {
                let started = t0.elapsed();
                let args = apply_args(i);
                let out = dir.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
                (i, started, out, t0.elapsed())
            })
            .collect()
    };
    for (i, started, out, ended) in &outputs {
        ok(&format!("apply n={i}"), out);
        println!("[{store}] apply n={i}: started at {started:?}, finished at {ended:?}");
    }
    // The last release may still be on its way to the stream.
    wait_for(
        "the last lock.released event",
        Duration::from_secs(10),
        || {
            events.of(STATE)[mark..]
                .iter()
                .filter(|e| e.name == "lock.released")
                .count()
                >= APPLIES
        },
    );
    let mut race: Vec<_> = events.of(STATE).split_off(mark);
    // In the order they happened (`at`, the store's clock; one step's events share it and
    // keep the stream's order): a server may relay two steps' events in either order.
    race.sort_by(|a, b| {
        let at = |e: &crate::common::Event| e.data["at"].as_str().unwrap_or_default().to_string();
        at(a).cmp(&at(b))
    });

    // Arrival: the first event of each owner. Grant: its lock.acquired/queue.granted.
    let mut arrival: Vec<String> = Vec::new();
    let mut grants: Vec<(String, Instant, u64)> = Vec::new();
    let mut releases: Vec<(String, Instant)> = Vec::new();
    let mut holder: Option<String> = None;
    for e in &race {
        let owner = e.owner().to_string();
        if !arrival.contains(&owner) {
            arrival.push(owner.clone());
        }
        match e.name.as_str() {
            // A grant to a queued client is both (same instant, same token).
            "lock.acquired" | "queue.granted" if holder.as_deref() == Some(owner.as_str()) => {}
            "lock.acquired" | "queue.granted" => {
                assert!(
                    holder.is_none(),
                    "{owner} was granted the lock while {holder:?} held it: {race:#?}"
                );
                holder = Some(owner.clone());
                grants.push((owner, e.seen, e.data["fencing_token"].as_u64().unwrap_or(0)));
            }
            "lock.released" | "lock.expired" => {
                assert_eq!(
                    holder.as_deref(),
                    Some(owner.as_str()),
                    "a release by a non-holder: {race:#?}"
                );
                holder = None;
                releases.push((owner, e.seen));
            }
            _ => {}
        }
    }
    let number: HashMap<&str, usize> = arrival
        .iter()
        .enumerate()
        .map(|(k, o)| (o.as_str(), k + 1))
        .collect();
    let granted: Vec<usize> = grants.iter().map(|(o, _, _)| number[o.as_str()]).collect();
    let gaps: Vec<Duration> = releases
        .iter()
        .zip(grants.iter().skip(1))
        .map(|((_, r), (_, g, _))| g.saturating_duration_since(*r))
        .collect();
    println!("[{store}] arrival order (by first event): {arrival:?}");
    println!(
        "[{store}] grant order against arrival order: {granted:?} (fencing tokens {:?}); \
         release->grant gaps seen by the test: {gaps:?}",
        grants.iter().map(|g| g.2).collect::<Vec<_>>()
    );
    assert_eq!(arrival.len(), APPLIES, "four lock owners: {race:#?}");
    assert_eq!(grants.len(), APPLIES, "one grant each: {race:#?}");
    assert_eq!(
        granted,
        (1..=APPLIES).collect::<Vec<_>>(),
        "the applies held the lock in the order they asked: {race:#?}"
    );
    assert!(
        grants.windows(2).all(|w| w[0].2 < w[1].2),
        "fencing tokens go up"
    );

    let last = serial(&env);
    println!("[{store}] serial {serial0} -> {last}");
    assert_eq!(last, serial0 + APPLIES as u64, "every apply's write landed");
    let state: Value = serde_json::from_slice(&stored(&env, STATE).unwrap()).unwrap();
    println!(
        "[{store}] final output n = {} (the apply started last: n={APPLIES})",
        state["outputs"]["n"]["value"]
    );
}

#[test]
fn concurrent_applies_embedded() {
    concurrent_applies(Env::embedded(), "embedded");
}

#[test]
fn concurrent_applies_redis() {
    concurrent_applies(Env::redis(), "redis");
}
