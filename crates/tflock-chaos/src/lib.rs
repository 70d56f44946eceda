//! tflock's chaos suite: real `tflock server` processes on real Redis (standalone with
//! AOF, Sentinel, Cluster) or the embedded store, client processes doing random lock
//! operations through random servers, a nemesis injecting process, Redis and network
//! faults, and a checker reading the whole history (`docs/reliability.md`).
//!
//! # Layout
//!
//! - `clock`: the one monotonic clock every process writes its history with.
//! - `history`: the record format (JSON lines) and its reading and writing.
//! - `client`: one client process (`tflock-chaos client`).
//! - `harness`: the deployment: Redis topologies (testkit) and `tflock server` processes.
//! - `nemesis`: the faults, their schedule and their records.
//! - `checker`: the rules and the search for violations.
//! - `report`: counts, recovery times and violations, without secrets.
//! - `run`: one run end to end.

pub mod checker;
pub mod client;
pub mod clock;
pub mod harness;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod run;
