//! End-to-end tests of the `tflock` binary: every command, its exit codes and its JSON
//! output against real servers on both backends, the spec's Operations and Migration
//! Guide command lines as written (`atlantis` read as `tflock`), `tflock run`, export
//! and import, and configuration errors.

mod admin;
mod common;
mod config;
mod locks;
mod run;
mod snapshot;
mod spec;
mod state;
mod webhook;
