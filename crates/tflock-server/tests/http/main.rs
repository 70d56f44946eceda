//! The tflock HTTP API over real HTTP: a server on an ephemeral loopback port over the
//! real embedded backend in a temporary directory, called with reqwest (and with a raw
//! TCP socket where the test must control the connection itself).
//!
//! One test binary with modules, so the workspace links it once.

mod auth;
mod common;
mod errors;
mod locks;
mod observability;
mod queue;
