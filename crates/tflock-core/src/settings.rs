//! The contract's tunables, shared by every backend.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::InvalidRequest;
use crate::queue::StarvationPolicy;
use crate::request::WaitSpec;

/// Settings that shape lock behaviour (the spec's `enhanced_locking` keys that are not
/// about connections).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockSettings {
    /// TTL of a lease when the request names none (spec: `redis.default_ttl`).
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest TTL a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Wait used for `wait: "default"`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Longest a request is held open waiting; longer waits are clamped to it.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Most entries one resource's queue may hold.
    pub max_queue_size: usize,
    /// Waiting this long raises an entry's effective priority by one level.
    #[serde(with = "humantime_serde")]
    pub starvation_threshold: Duration,
    /// The most levels waiting can add.
    pub max_priority_boost: u8,
    /// With `false` there is no queue: waits retry with back-off or are refused.
    pub enable_priority_queue: bool,
    /// Without a queue, whether `wait` retries with back-off.
    pub enable_retries: bool,
    /// How long a waiter's grant waits for its server to confirm it.
    #[serde(with = "humantime_serde")]
    pub claim_timeout: Duration,
    /// First back-off of the retry loop (spec: `min_retry_backoff`).
    #[serde(with = "humantime_serde")]
    pub min_retry_backoff: Duration,
    /// Longest back-off of the retry loop (spec: `max_retry_backoff`).
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
    /// How long the answer to a request with a `request_id` is kept for its retries.
    #[serde(with = "humantime_serde")]
    pub request_id_retention: Duration,
    /// After the store is found to have lost data, nothing is granted for this long
    /// (Consul's session `lock-delay`, Chubby's lock-delay): a holder whose record
    /// was lost still believes it holds the lock, and gets this long to finish or
    /// notice before anyone else is granted it. `0` disables the delay (the loss is
    /// still detected and reported).
    #[serde(default = "default_lock_delay", with = "humantime_serde")]
    pub lock_delay: Duration,
}

/// The default [`LockSettings::lock_delay`]: Consul's default lock-delay. Longer
/// than a typical storage write and a holder's lease refresh interval, short enough
/// that a loss is a brief pause in granting, not an outage.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// The longest [`LockSettings::lock_delay`]: past an hour a data loss would be an
/// outage, and a holder that has not noticed by then never will.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(3600);

fn default_lock_delay() -> Duration {
    DEFAULT_LOCK_DELAY
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_queue_size: 1000,
            starvation_threshold: Duration::from_secs(120),
            max_priority_boost: 3,
            enable_priority_queue: true,
            enable_retries: true,
            claim_timeout: Duration::from_secs(10),
            min_retry_backoff: Duration::from_millis(8),
            max_retry_backoff: Duration::from_millis(512),
            request_id_retention: Duration::from_secs(600),
            lock_delay: DEFAULT_LOCK_DELAY,
        }
    }
}

impl LockSettings {
    /// Checks the settings together; the field names the offending key.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let positive = [
            ("default_ttl", self.default_ttl),
            ("max_ttl", self.max_ttl),
            ("starvation_threshold", self.starvation_threshold),
            ("claim_timeout", self.claim_timeout),
            ("min_retry_backoff", self.min_retry_backoff),
            ("request_id_retention", self.request_id_retention),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(InvalidRequest::new(name, "must be greater than zero"));
            }
        }
        if self.max_timeout < self.default_timeout {
            return Err(InvalidRequest::new(
                "max_timeout",
                format!(
                    "{} is below default_timeout {}",
                    humantime::format_duration(self.max_timeout),
                    humantime::format_duration(self.default_timeout)
                ),
            ));
        }
        if self.max_ttl < self.default_ttl {
            return Err(InvalidRequest::new("max_ttl", "is below default_ttl"));
        }
        if self.max_retry_backoff < self.min_retry_backoff {
            return Err(InvalidRequest::new(
                "max_retry_backoff",
                "is below min_retry_backoff",
            ));
        }
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(InvalidRequest::new(
                "lock_delay",
                format!(
                    "{} is above the most, {} (0s disables the delay)",
                    humantime::format_duration(self.lock_delay),
                    humantime::format_duration(MAX_LOCK_DELAY)
                ),
            ));
        }
        if self.max_queue_size == 0 {
            return Err(InvalidRequest::new("max_queue_size", "must be at least 1"));
        }
        if self.max_priority_boost > 3 {
            return Err(InvalidRequest::new(
                "max_priority_boost",
                "at most 3 (low can rise to critical, no further)",
            ));
        }
        Ok(())
    }

    /// The anti-starvation knobs.
    pub fn starvation_policy(&self) -> StarvationPolicy {
        StarvationPolicy {
            starvation_threshold: self.starvation_threshold,
            max_priority_boost: self.max_priority_boost,
        }
    }

    /// The TTL a request gets: its own (1 ms to `max_ttl`) or `default_ttl`.
    pub fn resolve_ttl(&self, ttl: Option<Duration>) -> Result<Duration, InvalidRequest> {
        match ttl {
            None => Ok(self.default_ttl),
            Some(d) if d < Duration::from_millis(1) => {
                Err(InvalidRequest::new("ttl", "must be at least 1ms"))
            }
            Some(d) if d > self.max_ttl => Err(InvalidRequest::new(
                "ttl",
                format!(
                    "is above max_ttl ({})",
                    humantime::format_duration(self.max_ttl)
                ),
            )),
            Some(d) => Ok(d),
        }
    }

    /// How long a waiting request is held open: `default` is `default_timeout`, anything
    /// longer than `max_timeout` is clamped to it.
    pub fn resolve_wait(&self, wait: WaitSpec) -> Duration {
        match wait {
            WaitSpec::Default => self.default_timeout,
            WaitSpec::For(d) => d.min(self.max_timeout),
        }
    }

    /// How long a reservation stays in line: its `wait` if given (not clamped by
    /// `max_timeout`, which bounds open requests only), else `default_ttl`.
    pub fn resolve_reservation(&self, wait: Option<WaitSpec>) -> Duration {
        match wait {
            None | Some(WaitSpec::Default) => self.default_ttl,
            Some(WaitSpec::For(d)) => d.min(self.max_ttl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        LockSettings::default().validate().unwrap();
    }

    #[test]
    fn max_timeout_below_default_is_named() {
        let s = LockSettings {
            max_timeout: Duration::from_secs(1),
            ..LockSettings::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "max_timeout");
    }

    #[test]
    fn waits_are_clamped() {
        let s = LockSettings::default();
        assert_eq!(
            s.resolve_wait(WaitSpec::For(Duration::from_secs(9999))),
            s.max_timeout
        );
        assert_eq!(s.resolve_wait(WaitSpec::Default), s.default_timeout);
    }
}
