//! One module per command group.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod health;
pub mod locks;
pub mod run;
pub mod selftest;
pub mod server;
pub mod snapshot;
pub mod state;
