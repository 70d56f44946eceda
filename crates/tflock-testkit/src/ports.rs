//! Free loopback ports, leased so that concurrent tests never collide.
//!
//! Binding `127.0.0.1:0` and closing the socket finds a free port but does not keep it:
//! another test may take it before `redis-server` binds it. So a port is *leased*: we hold
//! an exclusive `flock` on `$TMPDIR/tflock-testkit-ports/<port>.lock` for as long as the
//! server exists (including while it is stopped, so a restart gets its port back). Locks
//! are per open file, so they exclude other threads of this process and other test
//! binaries alike, and the kernel drops them when a process dies: no stale leases.
//! Programs outside the testkit can still take a port, which is why servers retry on a
//! new port when `redis-server` reports "Address already in use".

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};

/// Redis Cluster listens on `port + 10000` for its bus (the default `cluster-port`).
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// Leased ports lie in `12000..22000`, so bus ports lie in `22000..32000`: the two ranges
/// never overlap (a bus port is never leased as a client port), and both stay below
/// Linux's default ephemeral range (32768..), which the kernel draws from for every
/// outgoing connection (each `redis-cli`, each replication link) and which could
/// otherwise occupy a port between our check and Redis's bind.
const FIRST_PORT: u16 = 12_000;
const PORT_COUNT: u16 = 10_000;

/// A port (and its cluster bus port) reserved for one server until dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    /// Holds the lock; never read.
    _lock: File,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Leases a random free port `p` such that `p` and `p + 10000` can both be bound.
pub(crate) fn lease() -> PortLease {
    let dir = std::env::temp_dir().join("tflock-testkit-ports");
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create port lease directory {}: {e}", dir.display()));
    for _ in 0..1000 {
        let port = random_port();
        let path = dir.join(format!("{port}.lock"));
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // leased by another server
        }
        if bindable(port) && bindable(port + CLUSTER_BUS_OFFSET) {
            return PortLease { port, _lock: file };
        }
    }
    panic!(
        "no free port pair (p, p+{CLUSTER_BUS_OFFSET}) found in {FIRST_PORT}..{} after 1000 tries",
        FIRST_PORT + PORT_COUNT
    );
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A random port in the leased range. Random rather than sequential so that test
/// binaries starting at the same moment do not all probe the same ports first.
fn random_port() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the OS per thread, so this differs across processes.
    let hash = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    let offset = u16::try_from(hash % u64::from(PORT_COUNT)).expect("below PORT_COUNT");
    FIRST_PORT + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_while_held() {
        let leases: Vec<PortLease> = (0..50).map(|_| lease()).collect();
        let mut ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), leases.len(), "a port was leased twice");
        for p in &ports {
            assert!((FIRST_PORT..FIRST_PORT + PORT_COUNT).contains(p));
        }
    }
}
