//! The tflock HTTP API over real HTTP: a server on an ephemeral loopback port over a
//! real backend (the embedded store in a temporary directory, or Redis on a real
//! `redis-server`), called with reqwest (and with a raw TCP socket where the test must
//! control the connection itself). Most tests run on both backends
//! (`<module>::embedded::<test>` and `<module>::redis::<test>`).
//!
//! One test binary with modules, so the workspace links it once.

mod admin;
mod auth;
mod common;
mod errors;
mod health;
mod limits;
mod locks;
mod observability;
mod openapi;
mod queue;
mod safety;
mod terraform;
mod webhooks;
