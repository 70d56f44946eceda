//! Atlantis's stored lock records, as Go's `encoding/json` writes them.
//!
//! The structs mirror `models.ProjectLock` (server/events/models) with Go's field
//! names. Every field defaults, so records from every Atlantis version read: before
//! project names (0.16 and older) there is no `Project.ProjectName` and no
//! `User.Teams`; unknown fields (newer versions add some) are ignored.

use serde::Deserialize;
use tflock_core::Timestamp;

/// `models.ProjectLock`: one project and workspace locked by one pull request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ProjectLock {
    pub project: Project,
    pub pull: PullRequest,
    pub user: User,
    pub workspace: String,
    /// RFC 3339 with nanoseconds and the writer's offset (`time.Time`'s JSON form).
    pub time: String,
}

/// `models.Project`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Project {
    pub project_name: String,
    pub repo_full_name: String,
    pub path: String,
}

/// `models.PullRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct PullRequest {
    pub num: u64,
    pub head_commit: String,
    #[serde(rename = "URL")]
    pub url: String,
    pub head_branch: String,
    pub base_branch: String,
    pub author: String,
    /// 0 open, 1 closed.
    pub state: i64,
    pub base_repo: Repo,
}

/// `models.Repo`. `CloneURL` holds the VCS token; it is read only so that nothing
/// else of it is ever carried over.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Repo {
    pub full_name: String,
    pub owner: String,
    pub name: String,
    #[serde(rename = "CloneURL")]
    pub clone_url: String,
    #[serde(rename = "VCSHost")]
    pub vcs_host: VcsHost,
}

/// `models.VCSHost`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct VcsHost {
    pub hostname: String,
    /// 0 GitHub, 1 GitLab, 2 Bitbucket Cloud, 3 Bitbucket Server, 4 Azure DevOps, ...
    #[serde(rename = "Type")]
    pub kind: i64,
}

/// `models.User`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct User {
    pub username: String,
    /// Absent before Atlantis 0.22; Go writes `null` for an empty list.
    #[serde(deserialize_with = "null_as_empty")]
    pub teams: Vec<String>,
}

/// `command.Lock`: the global apply lock (`atlantis apply` disabled for everyone).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CommandLock {
    pub lock_metadata: LockMetadata,
    /// `command.Name`: 0 is apply.
    pub command_name: i64,
}

/// `command.LockMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct LockMetadata {
    pub unix_time: i64,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Parses Go's `time.Time` JSON form (`2006-01-02T15:04:05.999999999Z07:00`). `None`
/// for Go's zero time, anything before 1970, and anything malformed.
pub fn parse_go_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    let (body, offset_secs) = if let Some(b) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (b, 0i64)
    } else {
        let at = s.len().checked_sub(6)?;
        if !s.is_char_boundary(at) {
            return None;
        }
        let (b, off) = s.split_at(at);
        if !off.is_ascii() {
            return None;
        }
        let sign = match off.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        if off.as_bytes()[3] != b':' {
            return None;
        }
        let h: i64 = digits(&off[1..3])?;
        let m: i64 = digits(&off[4..6])?;
        (b, sign * (h * 3600 + m * 60))
    };
    if body.len() < 19 || !body.is_ascii() {
        return None;
    }
    let (dt, frac) = body.split_at(19);
    let b = dt.as_bytes();
    if b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year: i64 = digits(&dt[0..4])?;
    let month: i64 = digits(&dt[5..7])?;
    let day: i64 = digits(&dt[8..10])?;
    let hour: i64 = digits(&dt[11..13])?;
    let min: i64 = digits(&dt[14..16])?;
    let sec: i64 = digits(&dt[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        let f = frac.strip_prefix('.')?;
        if f.is_empty() || f.len() > 9 {
            return None;
        }
        let n: i64 = digits(f)?;
        n * 10i64.pow(9 - f.len() as u32) / 1000
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    if secs < 0 {
        return None;
    }
    u64::try_from(secs * 1_000_000 + micros).ok().map(Timestamp)
}

fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.bytes().all(|c| c.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_times_parse_with_offsets_and_nanoseconds() {
        let utc = parse_go_time("2026-03-01T09:30:00.123456789Z").unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-03-01T09:30:00.123456Z");
        let cest = parse_go_time("2026-03-01T11:45:30+02:00").unwrap();
        assert_eq!(cest.to_rfc3339(), "2026-03-01T09:45:30.000000Z");
        let west = parse_go_time("2026-03-01T04:45:30.5-05:00").unwrap();
        assert_eq!(west.to_rfc3339(), "2026-03-01T09:45:30.500000Z");
        assert_eq!(parse_go_time("1970-01-01T00:00:00Z"), Some(Timestamp(0)));
        assert_eq!(parse_go_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_go_time("yesterday"), None);
        assert_eq!(parse_go_time("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_go_time(""), None);
    }

    #[test]
    fn old_and_new_records_read() {
        let old = r#"{"Project":{"RepoFullName":"o/r","Path":"."},"Pull":{"Num":5,"URL":"u"},
            "User":{"Username":"erin"},"Workspace":"default","Time":"2025-12-24T18:00:00Z"}"#;
        let l: ProjectLock = serde_json::from_str(old).unwrap();
        assert_eq!(l.project.project_name, "");
        assert_eq!(l.pull.num, 5);
        assert!(l.user.teams.is_empty());
        let new = r#"{"Project":{"ProjectName":"p q","RepoFullName":"g/s/r","Path":"a"},
            "Pull":{"Num":7,"BaseRepo":{"CloneURL":"https://t:s@h/g/s/r.git"}},
            "User":{"Username":"d","Teams":null},"Workspace":"w","Time":"x","Extra":1}"#;
        let l: ProjectLock = serde_json::from_str(new).unwrap();
        assert_eq!(l.project.project_name, "p q");
        assert_eq!(l.pull.base_repo.clone_url, "https://t:s@h/g/s/r.git");
    }
}
