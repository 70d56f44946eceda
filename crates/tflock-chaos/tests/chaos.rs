//! The bounded chaos runs CI does: each topology with a fixed seed, real `tflock server`
//! processes, real Redis, client processes and every fault kind the topology allows.
//! Each asserts the checker found nothing and that the run really exercised the
//! system: enough operations, grants, reservations, lease checks and faults of every
//! kind. The runs go one at a time (a two-core machine: their faults and timings must
//! not fight each other). `scripts/chaos` runs longer ones.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tflock_chaos::harness::Topology;
use tflock_chaos::nemesis::Fault;
use tflock_chaos::run::{RunOptions, run};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn chaos(topology: Topology, seed: u64, secs: u64, servers: usize) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let o = RunOptions {
        topology,
        seed,
        duration: Duration::from_secs(secs),
        ops: u64::MAX,
        clients: 5,
        servers,
        resources: 3,
        ttl_ms: 2500,
        faults: Vec::new(),
        dir: None,
        chaos_exe: PathBuf::from(env!("CARGO_BIN_EXE_tflock-chaos")),
    };
    let out = run(&o).expect("the run completes");
    let r = &out.report;
    println!(
        "{topology} seed {seed} ({:.0?}):\n{}",
        started.elapsed(),
        r.text()
    );
    assert_eq!(
        r.violation_count(),
        0,
        "{topology} seed {seed}: violations (history kept in {}):\n{}",
        out.dir.display(),
        r.text()
    );
    let want_ops = secs * 10;
    assert!(
        r.operations >= want_ops,
        "only {} operations (want {want_ops})",
        r.operations
    );
    assert!(r.grants >= secs, "only {} grants", r.grants);
    assert!(
        r.reservations.acknowledged >= 3,
        "reservations: {:?}",
        r.reservations
    );
    assert!(
        r.reservations.granted + r.reservations.cancelled >= 1,
        "no reservation was granted or cancelled: {:?}",
        r.reservations
    );
    assert!(r.lease_checks >= 10, "only {} lease checks", r.lease_checks);
    for kind in [
        "acquire",
        "acquire_wait",
        "reserve",
        "collect",
        "refresh",
        "transfer",
        "release",
        "read",
    ] {
        let ok: u64 = r.by_kind.get(kind).map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("ok"))
                .map(|(_, v)| v)
                .sum()
        });
        assert!(ok > 0, "no successful {kind}: {:?}", r.by_kind);
    }
    let wanted: BTreeSet<&str> = Fault::for_topology(topology)
        .iter()
        .map(|f| f.name())
        .collect();
    let seen: BTreeSet<&str> = r.faults.keys().map(String::as_str).collect();
    assert_eq!(seen, wanted, "fault kinds injected");
    assert_eq!(out.faults_injected, r.faults.values().sum::<u64>());
}

#[test]
fn chaos_standalone_aof() {
    chaos(Topology::Standalone, 16001, 45, 3);
}

#[test]
fn chaos_sentinel() {
    chaos(Topology::Sentinel, 16002, 45, 3);
}

#[test]
fn chaos_cluster() {
    chaos(Topology::Cluster, 16003, 45, 3);
}

#[test]
fn chaos_embedded() {
    chaos(Topology::Embedded, 16004, 20, 1);
}
