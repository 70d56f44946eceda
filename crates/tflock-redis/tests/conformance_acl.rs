//! The contract's conformance suite, unchanged, as the ACL user `atlantis` with
//! exactly `+@all ~atlantis:enhanced:lock:* &*` and a password (default user off).
mod common;
tflock_conformance::conformance_tests!(common::RedisHarness::new(common::acl));
