//! Request extractors whose every rejection is a JSON `invalid_request` naming the field.
//!
//! axum's own `Json` and `Query` answer bad input with plain text and statuses outside
//! the contract (415, 422). These read the same input but report, e.g.,
//! `{"code": "invalid_request", "field": "priority", "message": "unknown variant ..."}`.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::limits::check_json_depth;
use crate::state::AppState;

/// A JSON body of type `T`, at most [`crate::Limits::max_body_bytes`] long and
/// [`crate::Limits::max_json_depth`] deep.
///
/// The `Content-Type` must be JSON: a browser can send a form or `text/plain` POST to
/// `127.0.0.1` from any web page without a CORS preflight, but not a JSON one, so this
/// keeps a loopback server without tokens safe from cross-site requests.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limits = state.limits();
        read_json(req, limits.max_body_bytes, limits.max_json_depth)
            .await
            .map(ApiJson)
    }
}

/// The body of `POST /api/v1/admin/import`: like [`ApiJson`] but up to
/// [`crate::Limits::max_import_bytes`].
#[derive(Debug)]
pub struct ImportJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ImportJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limits = state.limits();
        read_json(req, limits.max_import_bytes, limits.max_json_depth)
            .await
            .map(ImportJson)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        tflock_core::ErrorCode::InvalidRequest,
        format!("the request body is larger than {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Reads a JSON body of at most `limit` bytes (refused from its `Content-Length`
/// before reading when that is already too big) and `depth` levels.
async fn read_json<T: DeserializeOwned>(
    req: Request,
    limit: usize,
    depth: usize,
) -> Result<T, ApiError> {
    if !is_json(req.headers().get(header::CONTENT_TYPE)) {
        return Err(ApiError::invalid(
            "content-type",
            "the body must be JSON, sent with 'Content-Type: application/json'",
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = read_limited(&parts.headers, body, limit, too_large(limit)).await?;
    check_json_depth(&bytes, depth)?;
    parse_json(&bytes)
}

/// Reads a body of at most `limit` bytes, refused as `too_large` from its
/// `Content-Length` before reading when that is already too big, or as soon as more
/// arrives.
pub(crate) async fn read_limited(
    headers: &header::HeaderMap,
    body: Body,
    limit: usize,
    too_large: ApiError,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    Ok(Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large
            } else {
                ApiError::new(
                    tflock_core::ErrorCode::InvalidRequest,
                    format!("could not read the request body: {e}"),
                )
            }
        })?
        .to_bytes())
}

/// Whether a `Content-Type` is JSON (`application/json` or `application/*+json`).
pub(crate) fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses `bytes` as one JSON value of type `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if inner.is_syntax() || inner.is_eof() {
            None
        } else {
            field_of(&path, &inner.to_string())
        };
        ApiError {
            field,
            ..ApiError::new(
                tflock_core::ErrorCode::InvalidRequest,
                format!("invalid JSON body: {inner}"),
            )
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            tflock_core::ErrorCode::InvalidRequest,
            format!("invalid JSON body: {e}"),
        )
    })?;
    Ok(value)
}

/// The query string as `T`; every field of a query type is a string or an option of
/// one, so the only failures are unknown or duplicated parameters.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| {
                let message = e.to_string();
                ApiError {
                    field: field_of("", &message),
                    ..ApiError::new(
                        tflock_core::ErrorCode::InvalidRequest,
                        format!("invalid query string: {message}"),
                    )
                }
            })
    }
}

/// The field an error is about: serde's path, extended by the field a "missing field"
/// or "unknown field" message names (serde reports those at the enclosing object).
fn field_of(path: &str, message: &str) -> Option<String> {
    let path = if path == "." { "" } else { path };
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| {
            let rest = message.strip_prefix(prefix)?;
            rest.split('`').next()
        });
    match (path, named) {
        ("", None) => None,
        ("", Some(n)) => Some(n.to_string()),
        (p, None) => Some(p.to_string()),
        // serde_path_to_error already ends the path with an unknown field's name.
        (p, Some(n)) if p == n || p.ends_with(&format!(".{n}")) => Some(p.to_string()),
        (p, Some(n)) => Some(format!("{p}.{n}")),
    }
}

/// Parses an optional decimal query parameter.
pub fn parse_number<T: std::str::FromStr>(
    field: &str,
    value: Option<&str>,
) -> Result<Option<T>, ApiError> {
    value
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| ApiError::invalid(field, format!("'{v}' is not a whole number")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u32,
        b: tflock_core::Priority,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        #[serde(default)]
        x: Option<String>,
    }

    fn field(json: &str) -> Option<String> {
        parse_json::<Outer>(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn fields_are_named() {
        assert_eq!(field(r#"{"x":"y"}"#).as_deref(), Some("inner"));
        assert_eq!(field(r#"{"inner":{"a":1}}"#).as_deref(), Some("inner.b"));
        assert_eq!(
            field(r#"{"inner":{"a":1,"b":"urgent"}}"#).as_deref(),
            Some("inner.b")
        );
        assert_eq!(
            field(r#"{"inner":{"a":1,"b":"low","c":2}}"#).as_deref(),
            Some("inner.c")
        );
        assert_eq!(
            field(r#"{"inner":{"a":"one","b":"low"}}"#).as_deref(),
            Some("inner.a")
        );
        assert_eq!(field(r#"{"inner": "#), None);
        assert!(parse_json::<Outer>(br#"{"inner":{"a":1,"b":"low"}} trailing"#).is_err());
    }

    #[test]
    fn json_content_types() {
        let v = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("application/json; charset=utf-8"))));
        assert!(is_json(Some(&v("application/merge-patch+json"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(Some(&v("application/x-www-form-urlencoded"))));
        assert!(!is_json(None));
    }
}
