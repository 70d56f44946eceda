//! Who is calling the page: anonymous, or the administrator.
//!
//! The administrator proves it with the admin token, either once through the login
//! form, which sets a session cookie, or on every request through HTTP basic auth
//! (any user name, the admin token as password).
//!
//! **The session cookie** is `Secure; HttpOnly; SameSite=Strict; Path=/` and holds
//! `v1.{expiry}.{nonce}.{mac}`, where `mac` is HMAC-SHA256 over the expiry and the
//! nonce keyed by the admin token. Nothing is stored on the server, so every replica
//! that shares the admin token accepts it, and changing the token ends every session.
//! Logging out also remembers the nonce until it expires on the replica that served
//! the logout.
//!
//! **CSRF.** `SameSite=Strict` already keeps the cookie off cross-site requests, but
//! a browser sends cached basic credentials everywhere, so every form that changes
//! something also carries a CSRF token: HMAC over the session's nonce (or the word
//! `basic`), keyed by the admin token, which only a page served to the administrator
//! contains. Posts are also refused when the browser says they come from another site
//! (`Sec-Fetch-Site`, `Origin`).
//!
//! Tokens are compared in constant time and never logged: [`AdminKey`]'s `Debug` is
//! redacted and no handler logs a form or a header.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tflock_core::lease::constant_time_eq;

/// The session cookie's name. The `__Host-` prefix makes browsers refuse it unless it
/// is `Secure`, has `Path=/` and no `Domain`, so a sibling subdomain cannot plant one.
pub const SESSION_COOKIE: &str = "__Host-tflock_admin";

/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The realm browsers show when they ask for basic credentials.
pub const BASIC_REALM: &str = "tflock admin";

type HmacSha256 = Hmac<Sha256>;

/// The admin token, as the key of the session and CSRF MACs. `Debug` is redacted.
pub struct AdminKey {
    token: String,
    /// Nonces of sessions logged out on this replica, with their expiry (unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

/// How the administrator proved itself on this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The session cookie; the nonce names the session.
    Session { nonce: String },
    /// HTTP basic auth on this very request.
    Basic,
}

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Admin {
        via: Via,
        /// The CSRF token the caller's forms must carry.
        csrf: String,
    },
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin { .. })
    }

    /// The CSRF token to put in forms, for the administrator.
    pub fn csrf(&self) -> Option<&str> {
        match self {
            Caller::Admin { csrf, .. } => Some(csrf),
            Caller::Anonymous => None,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl AdminKey {
    /// The key for `token`; `None` for an empty token, which would let anybody in.
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| AdminKey {
            token: token.to_string(),
            revoked: Mutex::new(HashMap::new()),
        })
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut mac =
            HmacSha256::new_from_slice(self.token.as_bytes()).expect("HMAC takes keys of any size");
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"|");
            }
            mac.update(p.as_bytes());
        }
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `presented` is the admin token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(&self.token, presented)
    }

    /// A new session cookie value, valid for [`SESSION_LIFETIME`].
    pub fn new_session(&self) -> String {
        let expiry = (now_secs() + SESSION_LIFETIME.as_secs()).to_string();
        let nonce = tflock_core::random_hex(16);
        let mac = self.mac(&["tflock-web session v1", &expiry, &nonce]);
        format!("v1.{expiry}.{nonce}.{mac}")
    }

    /// The nonce of a valid, unexpired, not logged-out session cookie value.
    pub fn check_session(&self, value: &str) -> Option<String> {
        let mut it = value.split('.');
        let (Some("v1"), Some(expiry), Some(nonce), Some(mac), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return None;
        };
        let want = self.mac(&["tflock-web session v1", expiry, nonce]);
        if !constant_time_eq(&want, mac) {
            return None;
        }
        let now = now_secs();
        if expiry.parse::<u64>().ok()? <= now {
            return None;
        }
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, exp| *exp > now);
        (!revoked.contains_key(nonce)).then(|| nonce.to_string())
    }

    /// Ends a session on this replica (the browser is also told to drop the cookie).
    pub fn revoke(&self, nonce: &str) {
        let expiry = now_secs() + SESSION_LIFETIME.as_secs();
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(nonce.to_string(), expiry);
    }

    /// The CSRF token of a caller who proved itself `via`.
    pub fn csrf_for(&self, via: &Via) -> String {
        let subject = match via {
            Via::Session { nonce } => nonce.as_str(),
            Via::Basic => "basic",
        };
        self.mac(&["tflock-web csrf v1", subject])
    }

    /// Who sent `headers`: basic credentials first (they are on this very request),
    /// then the session cookie.
    pub fn caller(&self, headers: &HeaderMap) -> Caller {
        let via = if basic_password(headers).is_some_and(|p| self.matches(&p)) {
            Some(Via::Basic)
        } else {
            cookie(headers, SESSION_COOKIE)
                .and_then(|v| self.check_session(v))
                .map(|nonce| Via::Session { nonce })
        };
        match via {
            Some(via) => Caller::Admin {
                csrf: self.csrf_for(&via),
                via,
            },
            None => Caller::Anonymous,
        }
    }
}

/// The caller of a request on a server with `key` (anonymous without a key).
pub fn caller(key: Option<&AdminKey>, headers: &HeaderMap) -> Caller {
    key.map_or(Caller::Anonymous, |k| k.caller(headers))
}

/// The `Set-Cookie` value that installs a session.
pub fn session_cookie(value: &str) -> String {
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Strict",
        SESSION_LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session.
pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict")
}

/// The value of cookie `name`, from every `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The password of an `Authorization: Basic` header.
pub fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_user, password) = decoded.split_once(':')?;
    Some(password.to_string())
}

/// Refuses a post the browser marks as coming from another site. Browsers send
/// `Sec-Fetch-Site` and `Origin` on form posts; a client that sends neither (curl)
/// is judged by the CSRF token alone.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err("the request came from another site");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        let hosts = [header::HOST.as_str(), "x-forwarded-host"];
        let same = hosts.iter().any(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|host| {
                    !origin_host.is_empty() && host.eq_ignore_ascii_case(origin_host)
                })
        });
        if !same {
            return Err("the request's Origin is not this server");
        }
    }
    Ok(())
}

/// Whether a `Secure` cookie set in answer to this request will be kept: the page is
/// served over HTTPS (as a TLS proxy reports with `X-Forwarded-Proto`), or the host is
/// a loopback name, which browsers treat as a secure context.
pub fn secure_context(headers: &HeaderMap) -> bool {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    https
        || headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_loopback_host)
}

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A local path to go back to after login; anything else (another host, `//x`,
/// `/\x`) becomes `/`, so the login form cannot be used as an open redirect.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn sessions_round_trip_and_resist_tampering() {
        let key = AdminKey::new("s3cret").unwrap();
        let v = key.new_session();
        let nonce = key.check_session(&v).expect("a fresh session is valid");
        // Another token does not accept it.
        assert!(AdminKey::new("other").unwrap().check_session(&v).is_none());
        // A pushed expiry breaks the MAC.
        let parts: Vec<&str> = v.split('.').collect();
        let later = format!("v1.{}.{}.{}", u64::MAX, parts[2], parts[3]);
        assert!(key.check_session(&later).is_none());
        // Expired sessions are refused even with a good MAC.
        let old = "1";
        let mac = key.mac(&["tflock-web session v1", old, parts[2]]);
        assert!(
            key.check_session(&format!("v1.{old}.{}.{mac}", parts[2]))
                .is_none()
        );
        // Logout revokes.
        key.revoke(&nonce);
        assert!(key.check_session(&v).is_none());
        assert!(key.check_session("garbage").is_none());
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_token() {
        let key = AdminKey::new("s3cret").unwrap();
        let a = key.csrf_for(&Via::Session { nonce: "a".into() });
        let b = key.csrf_for(&Via::Session { nonce: "b".into() });
        let basic = key.csrf_for(&Via::Basic);
        assert_ne!(a, b);
        assert_ne!(a, basic);
        assert_ne!(basic, AdminKey::new("other").unwrap().csrf_for(&Via::Basic));
    }

    #[test]
    fn callers_are_recognised_by_cookie_or_basic_auth() {
        let key = AdminKey::new("s3cret").unwrap();
        assert_eq!(key.caller(&HeaderMap::new()), Caller::Anonymous);
        let cookie = format!("a=b; {SESSION_COOKIE}={}", key.new_session());
        assert!(key.caller(&headers(&[("cookie", &cookie)])).is_admin());
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        let c = key.caller(&headers(&[("authorization", &format!("Basic {basic}"))]));
        assert_eq!(c.csrf(), Some(key.csrf_for(&Via::Basic).as_str()));
        let wrong = base64::engine::general_purpose::STANDARD.encode("anyone:nope");
        assert_eq!(
            key.caller(&headers(&[("authorization", &format!("Basic {wrong}"))])),
            Caller::Anonymous
        );
        assert!(AdminKey::new("").is_none());
        assert_eq!(format!("{key:?}"), "AdminKey(<redacted>)");
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(check_same_origin(&headers(&[])).is_ok());
        assert!(
            check_same_origin(&headers(&[
                ("host", "127.0.0.1:4141"),
                ("origin", "http://127.0.0.1:4141"),
                ("sec-fetch-site", "same-origin"),
            ]))
            .is_ok()
        );
        assert!(
            check_same_origin(&headers(&[
                ("host", "127.0.0.1:4141"),
                ("origin", "https://evil.example"),
            ]))
            .is_err()
        );
        assert!(check_same_origin(&headers(&[("host", "h"), ("origin", "null")])).is_err());
        assert!(check_same_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(
            check_same_origin(&headers(&[
                ("host", "10.0.0.1:4141"),
                ("x-forwarded-host", "locks.example"),
                ("origin", "https://locks.example"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn secure_contexts() {
        assert!(secure_context(&headers(&[("host", "127.0.0.1:4141")])));
        assert!(secure_context(&headers(&[("host", "localhost:4141")])));
        assert!(secure_context(&headers(&[("host", "[::1]:4141")])));
        assert!(!secure_context(&headers(&[("host", "locks.example")])));
        assert!(secure_context(&headers(&[
            ("host", "locks.example"),
            ("x-forwarded-proto", "https")
        ])));
    }

    #[test]
    fn next_is_a_local_path() {
        assert_eq!(
            safe_next(Some("/ui/lock?repo=a%2Fb")),
            "/ui/lock?repo=a%2Fb"
        );
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "x"] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
