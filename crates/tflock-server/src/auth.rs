//! Bearer-token checks for mutating and admin calls.
//!
//! Reads are open. A mutating call takes the [`Mutator`] extractor, which refuses it
//! (401) before the body is even read when the API token is set and missing or wrong.
//! An admin call then asks [`Mutator::require_admin`], because whether a call is an
//! admin one can depend on its body (`force: true`).
//!
//! Tokens are compared in constant time and never logged or echoed.

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
fn role_of(parts: &Parts, state: &AppState) -> Result<Role, ApiError> {
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
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be 'Bearer <token>'")
        })?;
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
