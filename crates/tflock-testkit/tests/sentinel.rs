//! Redis Sentinel: killing the primary makes the sentinels promote the replica.

use std::time::Instant;

use tflock_testkit::RedisSentinel;

#[test]
fn killing_the_primary_promotes_the_replica() {
    let started = Instant::now();
    let sentinel = RedisSentinel::start();
    eprintln!("sentinel deployment ready in {:?}", started.elapsed());
    assert_eq!(sentinel.master_name(), "mymaster");
    assert_eq!(sentinel.sentinel_addrs().len(), 3);
    let original_primary = sentinel.data_nodes()[0].addr();
    let original_replica = sentinel.data_nodes()[1].addr();
    assert_eq!(sentinel.master_addr(), original_primary);
    assert_eq!(sentinel.primary().addr(), original_primary);
    assert_eq!(sentinel.replica().addr(), original_replica);

    assert_eq!(sentinel.primary().redis_cli(["SET", "k", "v"]), "OK");
    // Replication is asynchronous: make sure the replica has the key before the kill.
    tflock_testkit::wait_until(tflock_testkit::DEFAULT_TIMEOUT, "k on the replica", || {
        match sentinel.replica().redis_cli(["GET", "k"]).as_str() {
            "v" => Ok(()),
            other => Err(other.to_owned()),
        }
    });

    let killed_at = Instant::now();
    assert_eq!(sentinel.kill_primary(), original_primary);
    let new_primary = sentinel.wait_for_failover();
    eprintln!("failover took {:?}", killed_at.elapsed());
    assert_eq!(new_primary, original_replica);
    assert_eq!(sentinel.master_addr(), original_replica);
    assert_eq!(sentinel.primary().addr(), original_replica);
    assert_eq!(sentinel.primary().redis_cli(["GET", "k"]), "v");
    assert_eq!(sentinel.primary().redis_cli(["SET", "k", "w"]), "OK");
}
