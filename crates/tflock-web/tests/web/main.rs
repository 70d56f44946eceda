//! The web page against the real server (the API server's router, which merges the
//! page) on the real embedded store: over plain HTTP (`pages`) and in a real headless
//! Chromium (`browser`). One test binary, so the workspace links it once.

mod browser;
mod common;
mod pages;
