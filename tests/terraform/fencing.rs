//! Fenced state writes: a write under a lock ID whose lock ended, under a lock ID that
//! does not hold the lock while another does, and a write whose serial goes backwards
//! are each refused (409 or 423), and the stored state is byte for byte what it was.

use crate::common::{Env, lock_info, server, state_doc, state_lock, stored, tf};

const STATE: &str = "team/app/fencing";
const LINEAGE: &str = "5f1c2a9e-tflock-fencing";

fn fenced_writes(env: Env) {
    let env = server(env, "");
    let first = tf(&env, "POST", STATE, "", &state_doc(5, LINEAGE, 8));
    assert_eq!(first.status, 200, "{}", first.text());
    let before = stored(&env, STATE).unwrap();

    // A stale ID: locked, unlocked, then a write under it.
    let lock = tf(&env, "LOCK", STATE, "", &lock_info("stale-id-1"));
    assert_eq!(lock.status, 200, "{}", lock.text());
    let unlock = tf(&env, "UNLOCK", STATE, "", &lock_info("stale-id-1"));
    assert_eq!(unlock.status, 200, "{}", unlock.text());
    let stale = tf(
        &env,
        "POST",
        STATE,
        "ID=stale-id-1",
        &state_doc(6, LINEAGE, 8),
    );
    println!("stale ID: {} {}", stale.status, stale.text());
    assert_eq!(stale.status, 409, "{}", stale.text());
    assert_eq!(stale.json()["error"]["code"], "lease_lost");
    assert_eq!(
        stored(&env, STATE).unwrap(),
        before,
        "the stale write changed the state"
    );

    // A foreign ID while another ID holds the lock.
    let holder = tf(&env, "LOCK", STATE, "", &lock_info("holder-id-2"));
    assert_eq!(holder.status, 200, "{}", holder.text());
    let foreign = tf(
        &env,
        "POST",
        STATE,
        "ID=foreign-id-3",
        &state_doc(6, LINEAGE, 8),
    );
    println!("foreign ID: {} {}", foreign.status, foreign.text());
    assert_eq!(foreign.status, 423, "{}", foreign.text());
    assert!(
        foreign.text().contains("does not hold the lock"),
        "{}",
        foreign.text()
    );
    assert_eq!(
        stored(&env, STATE).unwrap(),
        before,
        "the foreign write changed the state"
    );
    // Nor without any ID while the state is locked; nor under the stale ID.
    let no_id = tf(&env, "POST", STATE, "", &state_doc(6, LINEAGE, 8));
    assert_eq!(no_id.status, 423, "{}", no_id.text());
    let stale_again = tf(
        &env,
        "POST",
        STATE,
        "ID=stale-id-1",
        &state_doc(6, LINEAGE, 8),
    );
    assert_eq!(stale_again.status, 423, "{}", stale_again.text());
    assert_eq!(stored(&env, STATE).unwrap(), before);

    // A lower serial, by the holder itself.
    let backwards = tf(
        &env,
        "POST",
        STATE,
        "ID=holder-id-2",
        &state_doc(4, LINEAGE, 8),
    );
    println!("lower serial: {} {}", backwards.status, backwards.text());
    assert_eq!(backwards.status, 409, "{}", backwards.text());
    assert!(backwards.text().contains("serial"), "{}", backwards.text());
    assert_eq!(
        stored(&env, STATE).unwrap(),
        before,
        "the backwards write changed the state"
    );
    // Another lineage, too.
    let lineage = tf(
        &env,
        "POST",
        STATE,
        "ID=holder-id-2",
        &state_doc(7, "other-lineage", 8),
    );
    assert_eq!(lineage.status, 409, "{}", lineage.text());
    assert_eq!(stored(&env, STATE).unwrap(), before);

    // The holder's own write lands: the refusals were the fence's, not a broken store.
    let good = tf(
        &env,
        "POST",
        STATE,
        "ID=holder-id-2",
        &state_doc(6, LINEAGE, 9),
    );
    assert_eq!(good.status, 200, "{}", good.text());
    assert_eq!(stored(&env, STATE).unwrap(), state_doc(6, LINEAGE, 9));
    let done = tf(&env, "UNLOCK", STATE, "", &lock_info("holder-id-2"));
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(state_lock(&env, STATE).is_none());
}

#[test]
fn fenced_writes_embedded() {
    fenced_writes(Env::embedded());
}

#[test]
fn fenced_writes_redis() {
    fenced_writes(Env::redis());
}
