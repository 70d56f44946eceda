//! The contract's conformance suite, unchanged, through Redis Sentinel.
mod common;
tflock_conformance::conformance_tests!(common::RedisHarness::new(common::sentinel));
