//! Exit codes and the one error type commands return.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | error (not found, not owner, lease lost, an internal error, a failed self-test) |
//! | 2 | usage or configuration (bad flags, bad config, an invalid request, a missing or wrong token) |
//! | 3 | not acquired or timed out (also a full queue) |
//! | 4 | backend unavailable (Redis or the server unreachable, circuit open) |

use std::fmt;
use std::process::ExitCode;

use tflock_core::ErrorCode;

/// A documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Error = 1,
    Usage = 2,
    NotAcquired = 3,
    Unavailable = 4,
}

impl Exit {
    /// The exit code of an operation error with `code`.
    pub fn of(code: ErrorCode) -> Exit {
        match code {
            ErrorCode::InvalidRequest | ErrorCode::Unauthorized | ErrorCode::Forbidden => {
                Exit::Usage
            }
            ErrorCode::QueueFull => Exit::NotAcquired,
            ErrorCode::BackendUnavailable => Exit::Unavailable,
            ErrorCode::NotFound
            | ErrorCode::NotOwner
            | ErrorCode::LeaseLost
            | ErrorCode::Internal => Exit::Error,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Why a command stopped: what to print and which code to exit with.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// The contract's code, when the failure is an operation error (for `--json`).
    pub code: Option<ErrorCode>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
            code: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Failure::new(Exit::Error, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Failure::new(Exit::Usage, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure::new(Exit::Unavailable, message)
    }

    /// Adds context in front of the message.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<tflock_core::Error> for Failure {
    fn from(e: tflock_core::Error) -> Self {
        let hint = match (e.code, e.field.as_deref()) {
            (_, Some("authorization")) => {
                " (give the token with --token or TFLOCK_TOKEN; admin commands need the admin token)"
            }
            (ErrorCode::BackendUnavailable, _) => " (retry later, or check `tflock health`)",
            _ => "",
        };
        Failure {
            exit: Exit::of(e.code),
            message: format!("{}{hint}", e.message),
            code: Some(e.code),
        }
    }
}

/// Every operation error converts through the umbrella error, keeping its code.
macro_rules! from_operation_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                tflock_core::Error::from(e).into()
            }
        }
    )*};
}

from_operation_error!(
    tflock_core::TryLockError,
    tflock_core::UnlockError,
    tflock_core::RefreshError,
    tflock_core::TransferError,
    tflock_core::CancelError,
    tflock_core::QueryError,
    tflock_core::ImportError,
    tflock_core::BackendError,
    tflock_core::InvalidRequest
);

impl From<tflock_config::ConfigError> for Failure {
    fn from(e: tflock_config::ConfigError) -> Self {
        Failure::usage(e.to_string())
    }
}

pub type CliResult<T> = Result<T, Failure>;
