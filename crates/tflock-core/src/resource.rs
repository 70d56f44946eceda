//! What is locked: a Terraform project and workspace, identified the way Atlantis does.
//!
//! The four parts are stored and compared as they are; the Atlantis lock key
//! (`{repo}/{path}/{workspace}/{project_name}`) is only ever *built* from them, never
//! parsed back, because a GitLab repository such as `group/sub/repo` holds several
//! slashes and the key would be ambiguous.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidRequest;

/// Longest allowed part, in bytes.
pub const MAX_PART_BYTES: usize = 255;

/// Separator of [`Resource::storage_key`]: a control character, which no valid part can
/// hold, so the storage key is unambiguous where the Atlantis key is not.
pub const STORAGE_KEY_SEPARATOR: char = '\u{1f}';

/// A lockable Terraform project in one workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resource {
    /// Full repository name, e.g. `myorg/myrepo` or `group/sub/repo`.
    #[cfg_attr(
        feature = "openapi",
        schema(
            example = "myorg/myrepo",
            max_length = 255,
            pattern = r"^[^/\u0000-\u001f\u007f]+(/[^/\u0000-\u001f\u007f]+)+$"
        )
    )]
    pub repo: String,
    /// Project directory relative to the repository root; `.` for the root.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(
            example = ".",
            max_length = 255,
            pattern = r"^[^\u0000-\u001f\u007f]*$"
        )
    )]
    pub path: String,
    /// Terraform workspace.
    #[cfg_attr(
        feature = "openapi",
        schema(
            example = "default",
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u001f\u007f]+$"
        )
    )]
    pub workspace: String,
    /// Atlantis project name; empty when the project has none.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 255, pattern = r"^[^\u0000-\u001f\u007f]*$")
    )]
    pub project_name: String,
}

impl Resource {
    /// A resource from its parts, validated and normalised (see [`Resource::validate`]).
    pub fn new(
        repo: impl Into<String>,
        path: impl Into<String>,
        workspace: impl Into<String>,
        project_name: impl Into<String>,
    ) -> Result<Self, InvalidRequest> {
        Resource {
            repo: repo.into(),
            path: path.into(),
            workspace: workspace.into(),
            project_name: project_name.into(),
        }
        .validate("resource")
    }

    /// Checks every part and returns the normalised resource: `path` `""` becomes `.`,
    /// `./a/` becomes `a`. `field` prefixes the field named in the error
    /// (e.g. `resource` gives `resource.path`).
    pub fn validate(self, field: &str) -> Result<Self, InvalidRequest> {
        let f = |name: &str| {
            if field.is_empty() {
                name.to_string()
            } else {
                format!("{field}.{name}")
            }
        };
        check_part(&f("repo"), &self.repo)?;
        check_part(&f("path"), &self.path)?;
        check_part(&f("workspace"), &self.workspace)?;
        check_part(&f("project_name"), &self.project_name)?;
        let repo = self.repo;
        if !repo.contains('/') {
            return Err(InvalidRequest::new(
                f("repo"),
                format!("'{repo}' is not a full repository name (expected owner/name)"),
            ));
        }
        if repo.starts_with('/') || repo.ends_with('/') || repo.contains("//") {
            return Err(InvalidRequest::new(
                f("repo"),
                format!("'{repo}' has an empty owner or name segment"),
            ));
        }
        if self.workspace.is_empty() {
            return Err(InvalidRequest::new(f("workspace"), "must not be empty"));
        }
        let path = normalise_path(&self.path).map_err(|m| InvalidRequest::new(f("path"), m))?;
        Ok(Resource {
            repo,
            path,
            workspace: self.workspace,
            project_name: self.project_name,
        })
    }

    /// The key Atlantis builds (`GenerateLockKey`): `{repo}/{path}/{workspace}/{project_name}`.
    /// For display and for Atlantis compatibility only; see [`Resource::storage_key`].
    pub fn lock_key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.repo, self.path, self.workspace, self.project_name
        )
    }

    /// An unambiguous key: the four parts joined by [`STORAGE_KEY_SEPARATOR`]. Sorting
    /// by it sorts by (repo, path, workspace, project_name), which is the listing order.
    pub fn storage_key(&self) -> String {
        let s = STORAGE_KEY_SEPARATOR;
        format!(
            "{}{s}{}{s}{}{s}{}",
            self.repo, self.path, self.workspace, self.project_name
        )
    }

    /// The inverse of [`Resource::storage_key`] (the separator cannot occur in a part).
    pub fn from_storage_key(key: &str) -> Option<Self> {
        let mut it = key.split(STORAGE_KEY_SEPARATOR);
        let r = Resource {
            repo: it.next()?.to_string(),
            path: it.next()?.to_string(),
            workspace: it.next()?.to_string(),
            project_name: it.next()?.to_string(),
        };
        it.next().is_none().then_some(r)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lock_key())
    }
}

fn check_part(field: &str, value: &str) -> Result<(), InvalidRequest> {
    if value.len() > MAX_PART_BYTES {
        return Err(InvalidRequest::new(
            field,
            format!(
                "is {} bytes long; at most {MAX_PART_BYTES} are allowed",
                value.len()
            ),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_ascii_control()) {
        return Err(InvalidRequest::new(
            field,
            format!("holds the control character {:?}", c),
        ));
    }
    Ok(())
}

/// `""` and `./` become `.`; leading `./` and trailing `/` are dropped; `.` segments
/// inside are removed. Absolute paths and `..` segments are refused.
fn normalise_path(path: &str) -> Result<String, String> {
    if path.starts_with('/') {
        return Err(format!(
            "'{path}' is absolute; give it relative to the repository root"
        ));
    }
    let mut segments = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("'..' segments are not allowed".to_string()),
            s => segments.push(s),
        }
    }
    if segments.is_empty() {
        Ok(".".to_string())
    } else {
        Ok(segments.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atlantis_key_with_empty_project_ends_in_slash() {
        let r = Resource::new("myorg/myrepo", "", "default", "").unwrap();
        assert_eq!(r.lock_key(), "myorg/myrepo/./default/");
    }

    #[test]
    fn paths_are_normalised() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("./", "."),
            ("./a/b/", "a/b"),
            ("a//b", "a/b"),
        ] {
            assert_eq!(
                Resource::new("o/r", input, "w", "").unwrap().path,
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_parts_name_their_field() {
        let cases = [
            (("norepo", ".", "w", ""), "resource.repo"),
            (("o/r", "../x", "w", ""), "resource.path"),
            (("o/r", "/abs", "w", ""), "resource.path"),
            (("o/r", ".", "", ""), "resource.workspace"),
            (("o/r", ".", "w", "a\nb"), "resource.project_name"),
            (("o//r", ".", "w", ""), "resource.repo"),
        ];
        for ((repo, path, ws, pn), field) in cases {
            let err = Resource::new(repo, path, ws, pn).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let long = "x".repeat(256);
        assert_eq!(
            Resource::new("o/r", ".", long, "").unwrap_err().field,
            "resource.workspace"
        );
    }

    #[test]
    fn gitlab_subgroups_are_kept_whole() {
        let r = Resource::new("group/sub/repo", "infra", "prod", "net").unwrap();
        assert_eq!(
            Resource::from_storage_key(&r.storage_key()),
            Some(r.clone())
        );
        assert_eq!(r.lock_key(), "group/sub/repo/infra/prod/net");
    }
}
