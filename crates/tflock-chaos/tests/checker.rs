//! The checker on hand-made histories: one that keeps every rule, and one per rule that
//! breaks it (each must be caught, and only by that rule).

use tflock_chaos::checker::{Rule, check};
use tflock_chaos::history::{Args, NEMESIS, Op, Outcome, Record, Status};

const MS: u64 = 1_000_000;
const TTL: u64 = 1000; // ms

fn rec(
    process: &str,
    op: Op,
    invoke_ms: u64,
    complete_ms: u64,
    args: Args,
    result: Outcome,
) -> Record {
    Record {
        process: process.into(),
        op,
        args,
        invoke: invoke_ms * MS,
        complete: complete_ms * MS,
        result,
    }
}

fn args(res: &str) -> Args {
    Args {
        resource: Some(res.into()),
        ttl_ms: Some(TTL),
        server: Some(0),
        ..Args::default()
    }
}

fn granted(token: u64, lease: &str, owner: &str) -> Outcome {
    Outcome {
        status: Status::Ok,
        http: Some(200),
        acquired: Some(true),
        token: Some(token),
        lease_id: Some(lease.into()),
        owner: Some(owner.into()),
        ..Outcome::default()
    }
}

fn ok() -> Outcome {
    Outcome {
        status: Status::Ok,
        http: Some(200),
        ..Outcome::default()
    }
}

fn fail(code: &str, http: u16) -> Outcome {
    Outcome {
        status: Status::Fail,
        http: Some(http),
        code: Some(code.into()),
        ..Outcome::default()
    }
}

fn acquire(p: &str, at: u64, done: u64, token: u64, lease: &str) -> Record {
    rec(
        p,
        Op::Acquire,
        at,
        done,
        args("w0"),
        granted(token, lease, p),
    )
}

fn release(p: &str, at: u64, done: u64, lease: &str) -> Record {
    let mut a = args("w0");
    a.lease_id = Some(lease.into());
    rec(p, Op::Release, at, done, a, ok())
}

fn read(p: &str, at: u64, done: u64, result: Outcome) -> Record {
    rec(p, Op::Read, at, done, args("w0"), result)
}

fn shown(token: u64, owner: &str) -> Outcome {
    Outcome {
        token: Some(token),
        owner: Some(owner.into()),
        ..ok()
    }
}

fn reserve(p: &str, at: u64, done: u64, rid: &str, entry: &str) -> Record {
    let mut a = args("w0");
    a.request_id = Some(rid.into());
    a.wait_ms = Some(5000);
    rec(
        p,
        Op::Reserve,
        at,
        done,
        a,
        Outcome {
            acquired: Some(false),
            code: Some("held".into()),
            entry_id: Some(entry.into()),
            ..ok()
        },
    )
}

fn collect(p: &str, at: u64, done: u64, rid: &str, origin: u64, result: Outcome) -> Record {
    let mut a = args("w0");
    a.request_id = Some(rid.into());
    a.wait_ms = Some(5000);
    a.reserve = true;
    a.origin_invoke = Some(origin * MS);
    rec(p, Op::Collect, at, done, a, result)
}

fn fault(kind: &str, at: u64, done: u64) -> Record {
    rec(
        NEMESIS,
        Op::Fault,
        at,
        done,
        Args {
            fault: Some(kind.into()),
            ..Args::default()
        },
        Outcome::default(),
    )
}

fn sorted(mut h: Vec<Record>) -> Vec<Record> {
    h.sort_by_key(|r| r.invoke);
    h
}

fn rules(h: &[Record]) -> Vec<Rule> {
    check(h).violations.into_iter().map(|v| v.rule).collect()
}

/// c0 holds, releases; c1 gets it after; a refresh extends c1's window; a reservation by
/// c2 is granted and collected after c1 releases; a Redis restart in the middle and a
/// read after it that still shows c1.
fn clean() -> Vec<Record> {
    let mut refresh = args("w0");
    refresh.lease_id = Some("L1".into());
    sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        read("c0", 20, 30, shown(5, "c0")),
        release("c0", 100, 110, "L0"),
        reserve("c2", 50, 60, "R2", "E2"),
        acquire("c1", 105, 120, 9, "L1"),
        fault("redis_kill", 130, 300),
        read("c1", 310, 320, shown(9, "c1")),
        rec("c1", Op::Refresh, 800, 810, refresh, shown(9, "c1")),
        read("c1", 1500, 1510, shown(9, "c1")),
        release("c1", 1600, 1610, "L1"),
        collect("c2", 1700, 1710, "R2", 50, granted(12, "L2", "c2")),
        release("c2", 1800, 1810, "L2"),
    ])
}

#[test]
fn a_clean_history_has_no_violation() {
    let h = clean();
    let f = check(&h);
    assert!(f.violations.is_empty(), "{:#?}", f.violations);
    assert_eq!(f.windows.len(), 3);
    assert_eq!(f.reservations.acknowledged, 1);
    assert_eq!(f.reservations.granted, 1);
    assert_eq!(f.reservations.lost, 0);
    assert_eq!(f.reads_across_redis_faults, 2);
    // c1's window: from its reply to the refresh's invoke + TTL, capped by its release.
    let w1 = f.windows.iter().find(|w| w.process == "c1").unwrap();
    assert_eq!((w1.start, w1.end), (120 * MS, 1600 * MS));
    // c2's collected grant: the window ends at the reservation's invoke + TTL.
    let w2 = f.windows.iter().find(|w| w.process == "c2").unwrap();
    assert_eq!((w2.start, w2.end), (1710 * MS, 1050 * MS));
}

#[test]
fn overlapping_windows_are_caught() {
    // c1 is granted while c0's window (0..1000 ms by TTL) is still open.
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        acquire("c1", 400, 420, 6, "L1"),
        release("c1", 600, 610, "L1"),
    ]);
    assert_eq!(rules(&h), vec![Rule::Overlap]);
}

#[test]
fn an_expired_lease_does_not_overlap() {
    // c0 never releases; c1 is granted after c0's request + TTL: no overlap.
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        acquire("c1", 1000, 1020, 6, "L1"),
    ]);
    assert!(rules(&h).is_empty());
}

#[test]
fn tokens_going_down_are_caught() {
    let h = sorted(vec![
        acquire("c0", 0, 10, 7, "L0"),
        release("c0", 100, 110, "L0"),
        acquire("c1", 200, 210, 6, "L1"),
    ]);
    assert_eq!(rules(&h), vec![Rule::TokenOrder]);
}

#[test]
fn a_repeated_token_is_caught() {
    let h = sorted(vec![
        acquire("c0", 0, 10, 7, "L0"),
        release("c0", 100, 110, "L0"),
        acquire("c1", 200, 210, 7, "L1"),
    ]);
    let r = rules(&h);
    assert!(r.contains(&Rule::TokenRepeat), "{r:?}");
    assert!(
        r.iter()
            .all(|r| matches!(r, Rule::TokenRepeat | Rule::TokenOrder)),
        "{r:?}"
    );
}

#[test]
fn a_reservation_silently_gone_is_caught() {
    let lost = Outcome {
        acquired: Some(false),
        code: Some("lease_lost".into()),
        ..ok()
    };
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        reserve("c2", 50, 60, "R2", "E2"),
        collect("c2", 300, 310, "R2", 50, lost.clone()),
    ]);
    assert_eq!(rules(&h), vec![Rule::ReservationLost]);

    // The same answer after a cancel that may have run is a cancellation, not a loss.
    let mut cancel = args("w0");
    cancel.entry_id = Some("E2".into());
    let unknown = Outcome {
        status: Status::Unknown,
        http: Some(503),
        ..Outcome::default()
    };
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        reserve("c2", 50, 60, "R2", "E2"),
        rec("c2", Op::Cancel, 100, 150, cancel, unknown),
        collect("c2", 300, 310, "R2", 50, lost.clone()),
    ]);
    assert!(rules(&h).is_empty());

    // And after its TTL bound, an unseen grant may have expired: timed out, no loss.
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        reserve("c2", 50, 60, "R2", "E2"),
        collect("c2", 1100, 1110, "R2", 50, lost),
    ]);
    let f = check(&h);
    assert!(f.violations.is_empty());
    assert_eq!(f.reservations.timed_out, 1);
}

#[test]
fn a_lock_lost_in_a_redis_restart_is_caught() {
    // c0 holds token 5; Redis restarts; a read inside c0's window finds nobody.
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        fault("redis_kill", 100, 300),
        read("c0", 400, 410, fail("not_found", 404)),
    ]);
    assert_eq!(rules(&h), vec![Rule::LockLost]);

    // A refresh refused as lost inside the window is the same loss.
    let mut a = args("w0");
    a.lease_id = Some("L0".into());
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        fault("redis_kill", 100, 300),
        rec("c0", Op::Refresh, 400, 410, a, fail("lease_lost", 409)),
    ]);
    assert_eq!(rules(&h), vec![Rule::LockLost]);

    // Another holder with another token shown inside the window: lost too.
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        read("c0", 400, 410, shown(6, "c9")),
    ]);
    assert_eq!(rules(&h), vec![Rule::LockLost]);

    // After the window (request + TTL) the same read is no evidence.
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        read("c0", 1000, 1010, fail("not_found", 404)),
    ]);
    assert!(rules(&h).is_empty());
}

#[test]
fn unknown_outcomes_end_windows_conservatively() {
    // c0's release timed out (it may have run): c1's later grant is no overlap.
    let mut a = args("w0");
    a.lease_id = Some("L0".into());
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        rec(
            "c0",
            Op::Release,
            100,
            400,
            a,
            Outcome {
                status: Status::Unknown,
                code: Some("timeout".into()),
                ..Outcome::default()
            },
        ),
        acquire("c1", 200, 210, 6, "L1"),
    ]);
    assert!(rules(&h).is_empty());
}

#[test]
fn a_transfer_opens_a_new_window_with_the_new_token() {
    let mut t = args("w0");
    t.lease_id = Some("L0".into());
    let h = sorted(vec![
        acquire("c0", 0, 10, 5, "L0"),
        rec("c0", Op::Transfer, 100, 110, t, granted(6, "L0b", "c0/t1")),
        read("c0", 200, 210, shown(6, "c0/t1")),
        release("c0", 300, 310, "L0b"),
        acquire("c1", 305, 320, 7, "L1"),
    ]);
    let f = check(&h);
    assert!(f.violations.is_empty(), "{:#?}", f.violations);
    assert_eq!(f.windows.len(), 3);
}
