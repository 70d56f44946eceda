//! Who holds or waits for a lock, with the descriptive metadata Atlantis shows.
//!
//! The owner string is opaque (`myorg/myrepo#42` for a pull request). Nothing here may
//! carry a credential: [`Owner::validate`] strips `user:token@` from URLs because
//! Atlantis keeps clone URLs with tokens in its locks.

use serde::{Deserialize, Serialize};

use crate::error::InvalidRequest;

/// Longest owner string or note, in bytes.
pub const MAX_OWNER_BYTES: usize = 1024;
/// Longest note, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// The VCS user behind a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserInfo {
    pub username: String,
    #[serde(default)]
    pub teams: Vec<String>,
}

/// The pull request a lock is for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullInfo {
    #[cfg_attr(
        feature = "openapi",
        schema(maximum = 9_007_199_254_740_991_u64, example = 42)
    )]
    pub num: u64,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub head_commit: String,
    #[serde(default)]
    pub head_branch: String,
    #[serde(default)]
    pub base_branch: String,
}

/// A holder or waiter: the opaque owner string plus what to show about it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Owner {
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 1024,
            example = "myorg/myrepo#42",
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
        )
    )]
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullInfo>,
    #[serde(default)]
    pub note: String,
}

impl Owner {
    /// An owner with no metadata.
    pub fn named(owner: impl Into<String>) -> Self {
        Owner {
            owner: owner.into(),
            ..Owner::default()
        }
    }

    /// Checks the fields (naming them under `field`) and strips credentials from URLs.
    pub fn validate(mut self, field: &str) -> Result<Self, InvalidRequest> {
        let name = |n: &str| {
            if field.is_empty() {
                n.to_string()
            } else {
                format!("{field}.{n}")
            }
        };
        if self.owner.is_empty() {
            return Err(InvalidRequest::new(name("owner"), "must not be empty"));
        }
        if self.owner.len() > MAX_OWNER_BYTES {
            return Err(InvalidRequest::new(
                name("owner"),
                format!("is longer than {MAX_OWNER_BYTES} bytes"),
            ));
        }
        if self.owner.chars().any(|c| c.is_control()) {
            return Err(InvalidRequest::new(
                name("owner"),
                "holds a control character",
            ));
        }
        if self.note.len() > MAX_NOTE_BYTES {
            return Err(InvalidRequest::new(
                name("note"),
                format!("is longer than {MAX_NOTE_BYTES} bytes"),
            ));
        }
        if let Some(user) = &self.user {
            if user.username.len() > MAX_OWNER_BYTES
                || user.username.chars().any(|c| c.is_control())
            {
                return Err(InvalidRequest::new(
                    name("user.username"),
                    "is too long or holds a control character",
                ));
            }
            if user.teams.len() > 256 {
                return Err(InvalidRequest::new(
                    name("user.teams"),
                    "more than 256 teams",
                ));
            }
        }
        if let Some(pull) = &mut self.pull {
            pull.url = strip_credentials(&pull.url);
            for (n, v) in [
                ("pull.url", &pull.url),
                ("pull.author", &pull.author),
                ("pull.head_commit", &pull.head_commit),
                ("pull.head_branch", &pull.head_branch),
                ("pull.base_branch", &pull.base_branch),
            ] {
                if v.len() > MAX_NOTE_BYTES {
                    return Err(InvalidRequest::new(name(n), "is too long"));
                }
            }
        }
        Ok(self)
    }

    /// The username, when a user is given.
    pub fn username(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.username.as_str())
    }
}

/// Removes `user[:password]@` from a URL's authority, e.g.
/// `https://x-token:abc@github.com/o/r` becomes `https://github.com/o/r`.
pub fn strip_credentials(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => format!(
            "{}{}{}",
            &url[..scheme_end + 3],
            &authority[at + 1..],
            &rest[authority_end..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_urls() {
        assert_eq!(
            strip_credentials("https://x-access-token:ghs_abc@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            strip_credentials("https://github.com/o/r/pull/1"),
            "https://github.com/o/r/pull/1"
        );
        assert_eq!(strip_credentials("https://u@h/p@q"), "https://h/p@q");
        assert_eq!(strip_credentials("not a url"), "not a url");
    }

    #[test]
    fn empty_owner_is_refused() {
        let err = Owner::named("").validate("").unwrap_err();
        assert_eq!(err.field, "owner");
    }
}
