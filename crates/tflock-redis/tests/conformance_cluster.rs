//! The contract's conformance suite, unchanged, on a Redis Cluster of three primaries
//! with one replica each.
mod common;
tflock_conformance::conformance_tests!(common::RedisHarness::new(common::cluster));
