//! The locking contract (`docs/contract.md`) as named tests, generic
//! over the backend.
//!
//! A backend crate implements [`Harness`] in its own `tests/` and calls
//! [`conformance_tests!`], which expands to one `#[tokio::test]` per contract case, so
//! a failure names the case that broke:
//!
//! ```text
//! // crates/tflock-embedded/tests/conformance.rs
//! tflock_conformance::conformance_tests!(EmbeddedHarness::new());
//! ```
//!
//! Time: every case runs on a [`ManualClock`]; cases that need time to pass call
//! [`ManualClock::advance`] instead of sleeping. Background work of a backend (expiry
//! sweeping, hand-off) that is triggered by the clock is awaited with a generous
//! real-time bound ([`EVENTUALLY`]), never asserted on speed.
//!
//! # Layout
//!
//! - [`cases`]: one `pub async fn` per rule of the contract, each taking a [`Harness`].
//! - [`support`]: the [`support::Fixture`] the cases build on, bounded waits and
//!   expectations with clear failure messages.
//! - [`CASES`]: the names of every case, in the order [`conformance_tests!`] lists them.

use std::time::Duration;

use async_trait::async_trait;
use tflock_core::{LockSettings, ManualClock, SharedBackend};

pub mod cases;
pub mod support;

/// Upper bound for "the backend does this by itself soon" (sweeps, hand-offs).
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// Upper bound for one whole case, so a backend call that hangs fails the case that
/// made it instead of stalling the run.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates stores for the suite.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A fresh, empty store with these settings, whose backend reads `clock`.
    async fn create(&self, settings: LockSettings, clock: ManualClock) -> Box<dyn Store>;
}

/// One store under test.
#[async_trait]
pub trait Store: Send + Sync {
    /// The backend to call.
    fn backend(&self) -> SharedBackend;
    /// Closes the backend and opens the same data again (same settings and clock):
    /// what a process restart does.
    async fn reopen(&mut self);
}

/// What the exported macros need, reachable through `$crate` so a backend's test crate
/// does not have to depend on tokio itself.
#[doc(hidden)]
pub mod __private {
    pub use tokio;
}

/// Calls `$callback!` with the list of every case. The one place the list is written,
/// so [`conformance_tests!`] and [`CASES`] cannot disagree; a unit test checks that
/// every `pub async fn` under `cases` is in it.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($callback:ident ! ( $($args:tt)* )) => {
        $crate::$callback! { ( $($args)* ) [
            // TryLock, rule by rule
            try_lock_grants_a_free_resource,
            try_lock_with_wait_or_reserve_on_a_free_resource_is_granted_at_once,
            try_lock_normalises_the_resource_path,
            try_lock_strips_credentials_from_pull_urls,
            relock_by_the_same_owner_keeps_lease_and_token,
            try_lock_on_a_held_resource_answers_held_without_queueing,
            waiter_is_granted_when_the_holder_unlocks,
            waiter_times_out_at_its_deadline,
            waiter_wait_is_clamped_to_max_timeout,
            dropped_waiter_leaves_the_queue,
            reservation_returns_at_once_with_its_place,
            reservation_is_granted_with_its_full_ttl_on_release,
            reservation_expires_at_its_deadline,
            reservation_retry_renews_its_deadline,
            reservation_under_another_request_id_renews_it,
            reservation_renewal_raises_its_grant_ttl,
            queue_full_at_max_queue_size,
            without_queue_wait_retries_until_released,
            without_queue_wait_times_out_at_its_deadline,
            without_queue_wait_is_refused_when_retries_are_off,
            // Hand-off and queue order
            queue_order_is_priority_then_fifo,
            hand_off_goes_to_waiters_in_grant_order,
            newcomer_cannot_barge_past_the_queue,
            starved_low_entry_overtakes_newer_high_entry,
            critical_newcomer_beats_starved_entry,
            unconfirmed_claim_passes_to_next_entry_after_claim_timeout,
            retry_with_request_id_claims_an_unconfirmed_grant,
            request_id_retry_gets_the_first_answer,
            request_id_retry_of_a_held_answer_is_evaluated_again,
            // Unlock
            unlock_by_holder_frees_the_resource,
            unlock_with_a_wrong_lease_is_not_owner,
            unlock_of_a_free_resource_is_not_found,
            force_unlock_releases_any_holder,
            force_unlock_of_a_free_resource_is_not_found,
            unlock_by_pull_releases_exactly_that_pull,
            unlock_by_pull_handles_gitlab_subgroups,
            // Leases
            refresh_extends_expiry_to_now_plus_ttl,
            refresh_with_a_foreign_lease_is_lease_lost,
            transfer_gives_a_new_lease_and_a_greater_token,
            admin_transfer_works,
            transfer_of_a_free_resource_is_not_found,
            expired_lease_is_lost_and_never_reported,
            expiry_hands_off_to_a_waiter_by_itself,
            expiry_hands_off_to_a_reservation_by_itself,
            fencing_tokens_strictly_increase,
            fencing_tokens_are_floored_at_the_clock,
            locks_survive_reopen,
            // Queries and queue management
            list_locks_filters_by_repo_owner_and_user,
            list_locks_pages_through_a_thousand_locks,
            list_locks_rejects_bad_paging,
            user_queue_lists_entries_across_resources,
            cancel_removes_a_reservation,
            cancelled_waiter_returns_cancelled,
            cancel_of_an_unknown_entry_is_not_found,
            // Bad input
            invalid_try_lock_is_rejected_and_changes_nothing,
            other_operations_reject_invalid_input,
            // Events, health, metrics, close
            lock_events_carry_resource_owner_and_token,
            queue_events_follow_an_entry,
            health_check_reports_healthy,
            metrics_count_locks_queue_handoffs_and_expiries,
            close_answers_waiters_and_later_calls_with_backend_unavailable,
            // Export and import
            export_import_round_trip_is_lossless_and_idempotent,
            import_never_lowers_a_token,
            import_reports_conflicts_and_dry_run_changes_nothing,
            // Safety (owner is no credential, replays answer from the present, lease
            // ids checked, admin actions on what the admin saw, request ids secret)
            empty_or_malformed_lease_never_forces,
            force_unlock_checks_expected_token,
            cancel_checks_expected_resource,
            replay_of_an_ended_lease_is_lease_lost,
            replay_after_force_unlock_expiry_or_pull_unlock_is_lease_lost,
            replay_of_a_reservation_answers_its_entry_now,
            relock_needs_the_lease_or_the_grants_request_id,
            owner_string_alone_can_neither_release_nor_transfer,
            request_ids_are_never_shown,
            replay_of_live_grant_returns_it,
            relock_with_grant_request_id_extends,
            relock_with_lease_id_extends,
            replay_of_waiting_waiter_keeps_one_entry,
            replay_of_timed_out_or_cancelled_waiter_grants_nothing,
            force_unlock_with_expected_token_after_hand_off_is_changed,
            malformed_lease_id_is_invalid,
            request_id_never_in_views,
            waiter_dropped_at_its_grant_frees_the_lock_within_claim_timeout,
        ] }
    };
}

/// Expands to one test per contract case. Use it once, in a backend crate's
/// `tests/conformance.rs`, with an expression that makes a [`Harness`]:
///
/// ```text
/// tflock_conformance::conformance_tests!(EmbeddedHarness::new());
/// ```
///
/// Each test is `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`, named
/// after its case, and runs `tflock_conformance::cases::<case>(&harness)` bounded by
/// [`CASE_TIMEOUT`].
#[macro_export]
macro_rules! conformance_tests {
    ($make_harness:expr $(,)?) => {
        $crate::__with_cases!(__conformance_test_fns!($make_harness));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    (($make_harness:expr) [ $($case:ident),* $(,)? ]) => {
        $(
            #[$crate::__private::tokio::test(
                flavor = "multi_thread",
                worker_threads = 2,
                crate = "tflock_conformance::__private::tokio"
            )]
            async fn $case() {
                let harness = $make_harness;
                $crate::support::run_case(stringify!($case), $crate::cases::$case(&harness)).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_names {
    (() [ $($case:ident),* $(,)? ]) => {
        /// The name of every case, in the order [`conformance_tests!`] lists them.
        pub const CASES: &[&str] = &[$(stringify!($case)),*];
    };
}

__with_cases!(__case_names!());

#[cfg(test)]
mod tests {
    /// Every `pub async fn` under `src/cases/` must be listed in `__with_cases!`, or
    /// a backend would never run it.
    #[test]
    fn every_case_is_listed_once() {
        let sources = [
            include_str!("cases/try_lock.rs"),
            include_str!("cases/queue.rs"),
            include_str!("cases/unlock.rs"),
            include_str!("cases/lease.rs"),
            include_str!("cases/query.rs"),
            include_str!("cases/validation.rs"),
            include_str!("cases/events.rs"),
            include_str!("cases/snapshot.rs"),
            include_str!("cases/safety.rs"),
            include_str!("cases/safety_more.rs"),
        ];
        let mut defined: Vec<&str> = sources
            .iter()
            .flat_map(|s| s.lines())
            .filter_map(|l| l.trim_start().strip_prefix("pub async fn "))
            .map(|l| l.split(['<', '(']).next().unwrap_or(l))
            .collect();
        defined.sort_unstable();
        let mut listed = super::CASES.to_vec();
        listed.sort_unstable();
        assert_eq!(defined, listed, "cases defined vs listed in __with_cases!");
    }
}
