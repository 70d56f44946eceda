//! The one error type every handler returns, and its JSON form.
//!
//! Every failure leaves the server as `{"error": {"code", "message", "field"?}}` with
//! the contract's status for its code (`ErrorCode::http_status`), so a client can match
//! on `code` without parsing prose. Two statuses are the HTTP layer's own and keep the
//! closest contract code: an oversized body is 413 `invalid_request`, an unknown method
//! on a known path is 405 `invalid_request`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tflock_core::{
    BackendError, CancelError, ErrorCode, ImportError, InvalidRequest, QueryError, RefreshError,
    TransferError, TryLockError, UnlockError,
};

/// Seconds a client is told to wait before retrying a `backend_unavailable` answer
/// when no circuit breaker knows better.
///
/// Short on purpose: the usual causes (a server restarting, one slow call) clear
/// within seconds, and lock callers are waiting on CI.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The `Retry-After` of a 503 now: while the backend's breaker is open, the seconds
/// until it lets a call through again (rounded up); else [`RETRY_AFTER_SECS`].
pub fn retry_after_secs(state: &crate::state::AppState) -> u64 {
    state
        .health()
        .and_then(|h| h.retry_after())
        .map_or(RETRY_AFTER_SECS, |d| {
            d.as_secs() + u64::from(d.subsec_nanos() > 0)
        })
        .max(1)
}

/// An error on its way to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault (`resource.path`, `priority`, ...), when known.
    pub field: Option<String>,
    /// Overrides the code's status (413, 405); `None` uses `code.http_status()`.
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
            status: None,
        }
    }

    /// `invalid_request` naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..ApiError::new(ErrorCode::InvalidRequest, message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BackendUnavailable, message)
    }

    /// The same error sent with another HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        })
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a tflock_core::Error,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if self.code == ErrorCode::Internal {
            tracing::error!(message = %self.message, "internal error");
        }
        let unavailable = self.code == ErrorCode::BackendUnavailable;
        let unauthorized = self.code == ErrorCode::Unauthorized;
        let error = tflock_core::Error {
            code: self.code,
            message: self.message,
            field: self.field,
        };
        let mut response = (status, axum::Json(Body { error: &error })).into_response();
        let headers = response.headers_mut();
        if unavailable {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tflock\""),
            );
        }
        response
    }
}

impl From<tflock_core::Error> for ApiError {
    fn from(e: tflock_core::Error) -> Self {
        ApiError {
            code: e.code,
            message: e.message,
            field: e.field,
            status: None,
        }
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        tflock_core::Error::from(e).into()
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        tflock_core::Error::from(e).into()
    }
}

/// Every operation error converts through the umbrella `tflock_core::Error`, which
/// keeps the code and the field.
macro_rules! from_operation_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                tflock_core::Error::from(e).into()
            }
        }
    )*};
}

from_operation_error!(
    TryLockError,
    UnlockError,
    RefreshError,
    TransferError,
    CancelError,
    QueryError,
    ImportError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_retry_after() {
        let r = ApiError::unavailable("down").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn status_override_keeps_code() {
        let e = ApiError::new(ErrorCode::InvalidRequest, "too big")
            .with_status(StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            ApiError::from(UnlockError::NotOwner).status(),
            StatusCode::CONFLICT
        );
    }
}
