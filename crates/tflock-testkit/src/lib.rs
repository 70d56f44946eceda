//! Real `redis-server` processes for tests: standalone (optionally with AOF, a password,
//! ACL users or TLS), Redis Cluster and Redis Sentinel, each on free loopback ports in its
//! own temporary directory.
//!
//! Every other crate's Redis tests use this one harness, so there is one place that knows
//! how to start, break and clean up Redis. Nothing here ever targets a host other than
//! `127.0.0.1`.
//!
//! # Layout
//!
//! - `server`: [`RedisServer`] and [`RedisOptions`]. One process: its port, its data
//!   directory, its log, and the signals tests send it (stop, kill, pause, resume,
//!   restart on the same port and data). Sentinel nodes are `RedisServer`s too.
//! - `tls`: [`TlsMaterial`], a throwaway CA with server and client certificates, plus a
//!   second, unrelated CA for "wrong CA" tests. Generated in-process with `rcgen`.
//! - `cluster`: [`RedisCluster`], N primaries with replicas, formed with
//!   `redis-cli --cluster create`, plus failover helpers.
//! - `sentinel`: [`RedisSentinel`], a primary, a replica and three sentinels, plus
//!   failover helpers.
//! - `cli`: [`RedisCli`], a `redis-cli` invocation with a deadline, preconfigured by each
//!   server with its address, credentials and TLS files.
//! - `proxy`: [`FaultProxy`], a TCP proxy in front of a server that can cut a
//!   connection right after a request was written (the reply is lost), delay, cut
//!   everything and refuse, or pause traffic, at runtime.
//! - `ports`: free ports, leased through lock files so that parallel tests, in this
//!   process or in other test binaries, never pick the same one.
//! - `process`: spawning children that die with the test process, and signals.
//! - `wait`: the one polling loop; every wait has a deadline and panics with context.
//!   [`wait_until`] offers it to tests for conditions of their own.
//!
//! # Using it
//!
//! The API is synchronous and every type is `Send + Sync`, with `&self` methods. In a
//! `#[tokio::test]` call it directly for setup (starting takes well under a second for a
//! standalone server), or wrap it in `tokio::task::spawn_blocking`, e.g. to pause a
//! server while async code runs:
//!
//! ```no_run
//! use tflock_testkit::{RedisOptions, RedisServer};
//!
//! let redis = RedisServer::start(RedisOptions::default().appendonly());
//! assert_eq!(redis.redis_cli(["SET", "k", "v"]), "OK");
//! redis.kill();
//! redis.restart(); // same port, same data directory: the AOF is replayed
//! assert_eq!(redis.redis_cli(["GET", "k"]), "v");
//! ```
//!
//! Processes are killed when their owner is dropped, and also when the test process dies
//! by any means (they are started with a parent-death signal), so an aborted test run
//! leaves no Redis behind. Set `TFLOCK_TESTKIT_KEEP=1` to keep temporary directories
//! (configs, logs, data) for inspection; their paths are printed on drop.
//!
//! The programs are `redis-server`, `redis-sentinel` and `redis-cli` from `PATH`, or the
//! paths in `TFLOCK_REDIS_SERVER`, `TFLOCK_REDIS_SENTINEL` and `TFLOCK_REDIS_CLI`.

// Modules are private; the re-exports below are the whole public API.
mod cli;
mod cluster;
mod ports;
mod process;
mod proxy;
mod sentinel;
mod server;
mod tls;
mod wait;

pub use cli::{Auth, CliOutput, RedisCli};
pub use cluster::{ClusterOptions, RedisCluster};
pub use proxy::FaultProxy;
pub use sentinel::{RedisSentinel, SentinelOptions};
pub use server::{AclUser, RedisOptions, RedisServer, TlsClientAuth};
pub use tls::TlsMaterial;
pub use wait::{DEFAULT_TIMEOUT, wait_until};

/// A free loopback port leased for as long as the returned guard lives (see `ports`),
/// for programs the testkit does not start itself, e.g. a `tflock server` that must
/// come back on the same port after a restart.
pub fn lease_port() -> PortLease {
    ports::lease()
}

pub use ports::PortLease;

/// Spawns `command` with the testkit's guarantees: on Linux it gets SIGKILL when the
/// test process dies (parent-death signal, set from a thread that lives as long as the
/// process). The caller still owns the child and must kill it on drop.
pub fn spawn_child(command: std::process::Command) -> std::io::Result<std::process::Child> {
    process::spawn(command)
}
