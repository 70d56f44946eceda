//! Bearer-token checks for mutating and admin calls.
//!
//! Reads are open. A mutating call takes the [`Mutator`] extractor, which refuses it
//! (401) before the body is even read when the API token is set and missing or wrong.
//! An admin call then asks [`Mutator::require_admin`], because whether a call is an
//! admin one can depend on its body (`force: true`).
//!
//! The token comes as `Authorization: Bearer <token>`, or as the password of HTTP basic
//! auth (the user name is ignored), which is how Terraform's http backend sends its
//! `password`. Tokens are compared in constant time and never logged or echoed.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use tflock_core::lease::constant_time_eq;

use crate::error::ApiError;
use crate::state::{AppState, Secret};

/// Who is calling, as proven by the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No token sent (allowed only where no token is required).
    Anonymous,
    /// The API token.
    Api,
    /// The admin token.
    Admin,
}

/// A caller allowed to make mutating calls.
#[derive(Debug, Clone)]
pub struct Mutator {
    role: Role,
    state: AppState,
}

impl Mutator {
    /// The caller's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Admits admin calls: the admin token when one is set; anybody when no token at
    /// all is set; nobody when only the API token is set.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        let tokens = self.state.tokens();
        match (&tokens.admin, self.role) {
            (Some(_), Role::Admin) => Ok(()),
            (Some(_), Role::Anonymous) => Err(ApiError::unauthorized(
                "this is an admin call: send 'Authorization: Bearer <admin token>'",
            )),
            (Some(_), Role::Api) => Err(ApiError::forbidden(
                "this is an admin call: the API token is not enough, send the admin token",
            )),
            (None, _) if tokens.api.is_none() => Ok(()),
            (None, _) => Err(ApiError::forbidden(
                "admin calls are disabled: the server has no admin token configured",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Mutator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let role = role_of(parts, state)?;
        if role == Role::Anonymous && state.tokens().api.is_some() {
            return Err(ApiError::unauthorized(
                "this call changes locks: send 'Authorization: Bearer <api token>'",
            ));
        }
        Ok(Mutator {
            role,
            state: state.clone(),
        })
    }
}

/// The role the `Authorization` header proves. A header that is present but proves
/// nothing (wrong token, other scheme) is refused outright when any token is set,
/// rather than treated as anonymous: a misconfigured client should hear about it.
pub(crate) fn role_of(parts: &Parts, state: &AppState) -> Result<Role, ApiError> {
    let tokens = state.tokens();
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(Role::Anonymous);
    };
    if !tokens.any() {
        return Ok(Role::Anonymous);
    }
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            if scheme.eq_ignore_ascii_case("bearer") {
                Some(token.trim().to_string())
            } else if scheme.eq_ignore_ascii_case("basic") {
                basic_password(token.trim())
            } else {
                None
            }
        })
        .ok_or_else(|| {
            ApiError::unauthorized(
                "the Authorization header must be 'Bearer <token>' (or basic auth with the token as the password)",
            )
        })?;
    let presented = presented.as_str();
    // Compare against both tokens every time so the time taken does not tell which
    // one (if any) nearly matched.
    let is_admin = matches_secret(tokens.admin.as_ref(), presented);
    let is_api = matches_secret(tokens.api.as_ref(), presented);
    if is_admin {
        Ok(Role::Admin)
    } else if is_api {
        Ok(Role::Api)
    } else {
        Err(ApiError::unauthorized("the bearer token is not valid"))
    }
}

/// The password of HTTP basic credentials (`base64(user:password)`): Terraform's http
/// backend sends its `username`/`password` this way, and the password is the token.
fn basic_password(credentials: &str) -> Option<String> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

fn matches_secret(secret: Option<&Secret>, presented: &str) -> bool {
    secret.is_some_and(|s| constant_time_eq(s.expose(), presented))
}

/// A caller allowed to make admin calls; checked before the body is read.
#[derive(Debug, Clone)]
pub struct Admin(pub Mutator);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Mutator::from_request_parts(parts, state).await?;
        caller.require_admin()?;
        Ok(Admin(caller))
    }
}
