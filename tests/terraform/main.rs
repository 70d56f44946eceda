//! End-to-end tests of the Terraform `http` state backend (`/tf/{state name}`): the real
//! `tflock server` binary and the real `terraform` (from `TFLOCK_TEST_TERRAFORM` or
//! `PATH`; a run without one fails, `scripts/test` installs one), on the embedded store
//! and on Redis standalone.
//!
//! - `workflow`: init, plan, apply, state pull, force-unlock with the admin token (and
//!   refused with the API token); a one-time LOCK (`-lock-timeout=0`) that gave up
//!   leaves no reservation to be granted the lock later.
//! - `queue`: four concurrent applies on one state hold the lock one at a time, in the
//!   order they asked.
//! - `fencing`: writes with a stale ID, a foreign ID or a lower serial are refused and
//!   leave the stored state byte for byte as it was.
//! - `input`: malformed LockInfo, wrong Content-MD5, an oversized state and an UNLOCK
//!   of an unknown state are refused with the field named, changing nothing.

// The server harness of the CLI tests (a real `tflock server` on a free port over a
// temporary embedded store or a testkit Redis); not every helper is used here.
#[path = "../cli/common.rs"]
#[allow(dead_code)]
mod harness;

#[allow(dead_code)]
mod common;
mod fencing;
mod input;
mod queue;
mod workflow;
