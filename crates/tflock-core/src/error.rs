//! Errors: one type per operation, each mapping to a stable [`ErrorCode`].
//!
//! Callers match narrowly on an operation's error (e.g. [`UnlockError::NotOwner`]) or
//! turn any of them into the umbrella [`Error`] with `?`. Every code has one HTTP status,
//! as `docs/contract.md` lists them.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Stable machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    NotOwner,
    LeaseLost,
    QueueFull,
    BackendUnavailable,
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::NotOwner | ErrorCode::LeaseLost => 409,
            ErrorCode::QueueFull => 429,
            ErrorCode::BackendUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::BackendUnavailable => "backend_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that breaks a rule; `field` names the offending field (e.g.
/// `resource.path`). A rejected request changes no state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InvalidRequest {
    pub field: String,
    pub message: String,
}

impl InvalidRequest {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidRequest {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The store could not be used. Fail closed: no grant is reported with this error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Unreachable, timed out, circuit open, or refused the write.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The store answered something that breaks an invariant.
    #[error("internal backend error: {0}")]
    Internal(String),
}

impl BackendError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::Unavailable(_) => ErrorCode::BackendUnavailable,
            BackendError::Internal(_) => ErrorCode::Internal,
        }
    }
}

macro_rules! operation_error {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident $({ $($field:ident : $fty:ty),* })? => $code:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Error)]
        #[non_exhaustive]
        pub enum $name {
            #[error(transparent)]
            Invalid(#[from] InvalidRequest),
            #[error(transparent)]
            Backend(#[from] BackendError),
            $($(#[$vmeta])* $variant $({ $($field: $fty),* })?,)*
        }

        impl $name {
            /// The stable code of this error.
            pub fn code(&self) -> ErrorCode {
                match self {
                    $name::Invalid(_) => ErrorCode::InvalidRequest,
                    $name::Backend(e) => e.code(),
                    $($name::$variant { .. } => ErrorCode::$code,)*
                }
            }

            /// The request field at fault, for `invalid_request`.
            pub fn field(&self) -> Option<&str> {
                match self {
                    $name::Invalid(e) => Some(&e.field),
                    _ => None,
                }
            }
        }

        impl From<$name> for Error {
            fn from(e: $name) -> Error {
                Error { code: e.code(), field: e.field().map(str::to_string), message: e.to_string() }
            }
        }
    };
}

operation_error! {
    /// Errors of TryLock. Not acquiring a held lock is not an error.
    TryLockError {
        #[error("the queue of this resource is full ({max} entries)")]
        QueueFull { max: usize } => QueueFull,
    }
}

operation_error! {
    /// Errors of Unlock and ForceUnlock.
    UnlockError {
        #[error("the resource is not locked")]
        NotFound => NotFound,
        #[error("the lock is held under another lease")]
        NotOwner => NotOwner,
        /// A force unlock named the lease it meant (`expected_token`) and the lock is
        /// now held under another one: nothing was released.
        #[error("the lock changed hands: it is held with fencing token {current}, not the expected {expected}")]
        Changed { expected: crate::lease::FencingToken, current: crate::lease::FencingToken } => NotOwner,
    }
}

operation_error! {
    /// Errors of RefreshLock.
    RefreshError {
        #[error("the lease has expired or is not the current lease of this resource")]
        LeaseLost => LeaseLost,
    }
}

operation_error! {
    /// Errors of TransferLock.
    TransferError {
        #[error("the resource is not locked")]
        NotFound => NotFound,
        #[error("the lease has expired or is not the current lease of this resource")]
        LeaseLost => LeaseLost,
    }
}

operation_error! {
    /// Errors of CancelQueueEntry.
    CancelError {
        #[error("no queue entry with that id")]
        NotFound => NotFound,
    }
}

operation_error! {
    /// Errors of Import.
    ImportError {
        #[error("snapshot format version {found} is not one this tflock reads")]
        Version { found: u32 } => InvalidRequest,
    }
}

operation_error! {
    /// Errors of read-only operations (GetLock, ListLocks, queue status, user queue).
    QueryError {}
}

/// Any tflock error: a code, a message and, for invalid requests, the field.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<InvalidRequest> for Error {
    fn from(e: InvalidRequest) -> Error {
        Error {
            code: ErrorCode::InvalidRequest,
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Error {
        Error::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_contract_statuses() {
        let want = [
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::NotOwner, 409),
            (ErrorCode::LeaseLost, 409),
            (ErrorCode::QueueFull, 429),
            (ErrorCode::BackendUnavailable, 503),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in want {
            assert_eq!(code.http_status(), status, "{code}");
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn operation_errors_convert_with_field() {
        let e: Error = UnlockError::Invalid(InvalidRequest::new("resource.path", "bad")).into();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.field.as_deref(), Some("resource.path"));
        let e: Error = TryLockError::QueueFull { max: 3 }.into();
        assert_eq!(e.code, ErrorCode::QueueFull);
    }
}
