//! The contract's conformance suite, unchanged, on one standalone Redis.
mod common;
tflock_conformance::conformance_tests!(common::RedisHarness::new(common::standalone));
